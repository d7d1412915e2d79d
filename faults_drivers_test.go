package ermc

import (
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault tests that need a driver-specific script or expectation: binary
// frames, Ultra's pipelining, and hostile replies that would make a client
// allocate or call back without bound. faults_test.go has the faults every
// driver meets alike.

// sendForever writes chunk until the client hangs up or the server stops,
// then reads until EOF, so that WaitPeerClosed sees the hang-up.
func sendForever(fc *fakeConn, chunk []byte) {
	for {
		select {
		case <-fc.srv.done:
			return
		default:
		}
		if _, err := fc.nc.Write(chunk); err != nil {
			break
		}
	}
	_, _ = io.Copy(io.Discard, fc)
}

// A multi-get reply with more values than keys asked is a protocol error:
// a server repeating a value forever must not make the client call back
// (or, on Ultra, buffer values) without end.
func TestFaultMultiGetEndlessValues(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			value := []byte("VALUE a 0 5\r\nstale\r\n")
			if proto == Binary {
				value = binResp(binGetKQ, 0, 0, 1, be32(0), "a", "stale")
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if proto == Binary {
						fc.NextBinary() // GETKQ a
						fc.NextBinary() // GETKQ b
						fc.NextBinary() // NOOP
					} else if _, ok := fc.Next(); !ok {
						return
					}
					sendForever(fc, value)
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			calls := 0
			err := guarded(t, func() error {
				return c.GetMulti(bg, []string{"a", "b"}, func(i int, v []byte) { calls++ })
			})
			require.ErrorIs(t, err, ErrProtocol)
			assert.Contains(t, err.Error(), "more values than keys")
			assert.LessOrEqual(t, calls, 2, "at most one value per key reaches the callback")
			afterFault(t, srv, c)
		})
	}
}

// A stats reply that never ends (distinct names, forever) is refused
// after a bounded number of entries instead of growing the map until the
// deadline.
func TestFaultStatsEndless(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.NextAs(proto); !ok {
						return
					}
					var b []byte
					for i := 0; i < 2*maxStats; i++ {
						name := "s" + strconv.Itoa(i)
						if proto == Binary {
							b = append(b, binResp(binStat, 0, binOpaque, 0, "", name, "1")...)
						} else {
							b = append(b, "STAT "+name+" 1\r\n"...)
						}
					}
					sendForever(fc, b) // never the closing END / empty frame
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute})
			err := guarded(t, func() error { _, err := c.Stats(bg); return err })
			require.ErrorIs(t, err, ErrProtocol)
			afterFault(t, srv, c)
		})
	}
}
