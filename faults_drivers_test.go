package ermc

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
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
			refusal := "more values than keys"
			switch proto {
			case Binary:
				value = binResp(binGetKQ, 0, 0, 1, be32(0), "a", "stale")
			case Meta:
				value = []byte("VA 5 f0 O$\r\nstale\r\n") // a's token, again and again
				refusal = "out of order or repeated"
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					switch proto {
					case Binary:
						fc.NextBinary() // GETKQ a
						fc.NextBinary() // GETKQ b
						fc.NextBinary() // NOOP
					case Meta:
						a, _ := fc.Next()            // mg a
						fc.Next()                    // mg b
						if _, ok := fc.Next(); !ok { // mn
							return
						}
						value = []byte(echoOpaque(a, string(value)))
					default:
						if _, ok := fc.Next(); !ok {
							return
						}
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
			assert.Contains(t, err.Error(), refusal)
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

// memcached over its connection limit (-c) answers a new connection with
// a text line, whatever protocol the client speaks, and closes it. Every
// driver reports the server's line as a *ServerError and discards the
// connection; the next request gets its own value on a fresh one. (The
// fake waits for the request before answering, so that Ultra has it in
// flight; faults_server_test.go has the real server's timing.)
func TestFaultTooManyConnections(t *testing.T) {
	const line = "ERROR Too many open connections\r\n"
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.NextAs(proto); ok {
						fc.Send(line)
						_, _ = io.Copy(io.Discard, fc) // until the client hangs up
					}
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute})
			res := guardedGet(t, c, bg, "k")
			var se *ServerError
			require.ErrorAs(t, res.err, &se)
			assert.Contains(t, se.Message, "Too many open connections")
			assert.NotErrorIs(t, res.err, ErrCacheMiss)
			afterFault(t, srv, c)
		})
	}
}

// Binary frames that do not answer the request, or whose lengths do not
// add up, are protocol errors: nothing of them is delivered, and the
// connection is discarded.
func TestFaultBinaryMalformedFrames(t *testing.T) {
	ok := binResp(binGet, 0, binOpaque, 1, be32(0), "", "stale")
	patch := func(off int, v ...byte) []byte {
		b := append([]byte(nil), ok...)
		copy(b[off:], v)
		return b
	}
	cases := []struct {
		name  string
		reply []byte
	}{
		{"bad magic", patch(0, 0x80)},
		{"text instead of a frame", []byte("VALUE k 0 5\r\nstale\r\nEND\r\n")},
		{"wrong opcode", patch(1, binGetK)},
		{"wrong opaque", patch(12, 0, 0, 0, 1)},
		{"body shorter than extras and key", patch(2, 0, 9)}, // keylen 9 + extlen 4 > bodylen 9
		{"huge body length", patch(8, 0xff, 0xff, 0xff, 0xff)},
		{"body over MaxValueLength", patch(8, 0x00, 0x10, 0x00, 0x00)},
		{"key longer than memcached allows", binResp(binGet, 0, binOpaque, 1, be32(0), strings.Repeat("k", 251), "stale")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.NextBinary(); !ok {
						return
					}
					fc.Send(string(tc.reply))
				}
				fc.ServeAs(Binary, fresh)
			})
			c := newFaultClient(t, srv.Addr, Binary, Options{Timeout: time.Minute})
			res := guardedGet(t, c, bg, "k")
			require.ErrorIs(t, res.err, ErrProtocol)
			assert.Empty(t, res.v)
			afterFault(t, srv, c)
		})
	}
}

// A response header announcing a key longer than memcached's is refused
// before any of its body is buffered: with a small MaxValueLength, a
// 64 KiB key would otherwise be the largest allocation a reply can cause.
func TestBinaryLongReplyKeyRefusedAtHeader(t *testing.T) {
	for _, op := range []opcode{opGet, opGetMulti, opStats} {
		r := &request{op: op, key: "k", keys: []string{"k"}, maxValue: 4096}
		opcode, opaque := binOpcodes[op], binOpaque
		if op == opGetMulti {
			opaque = 0
		}
		hdr := appendBinHeader(nil, binHeader{magic: binMagicResponse, opcode: opcode, keyLen: 0xffff,
			extLen: 4, bodyLen: 4 + 0xffff + 1, opaque: opaque})
		n, done, err := parseBinaryReply(r, hdr)
		assert.ErrorIs(t, err, ErrProtocol, "op %d", op)
		assert.False(t, done)
		assert.Zero(t, n, "op %d: header bytes used", op)
		assert.Zero(t, cap(r.parse.scratch), "op %d: bytes buffered for the body", op)
	}
}

// A reply line that never ends (no newline, ever) is refused once it is
// longer than any valid line: the client neither waits for the deadline
// nor buffers the stream. Binary meets it as a text error line that never
// ends.
func TestFaultEndlessLine(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			start := "VALUE k 0 5"
			if proto == Binary {
				start = "ERROR "
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.NextAs(proto); !ok {
						return
					}
					fc.Send(start)
					sendForever(fc, []byte(strings.Repeat("x", 1000)))
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute})
			res := guardedGet(t, c, bg, "k")
			require.ErrorIs(t, res.err, ErrProtocol)
			assert.Contains(t, res.err.Error(), "too long")
			afterFault(t, srv, c)
		})
	}
}

// smallBufferDial dials with a small socket send buffer, so that a large
// request leaves the client in several partial writes.
func smallBufferDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return nc, err
}

// A server that reads slowly, a few bytes at a time, takes a large value
// in many partial writes: the request completes within its Timeout, the
// server receives exactly the value, and the connection stays in step.
func TestFaultSlowReader(t *testing.T) {
	value := valueFor("big", 200_000)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			got := make(chan []byte, 1)
			srv := startFakeServer(t, func(fc *fakeConn) {
				fc.ReadSlowly(7)
				req, ok := fc.NextAs(proto)
				if !ok {
					return
				}
				got <- req.Data
				fc.Send(fakeReplyAs(proto, req, fresh))
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute, DialContext: smallBufferDial})
			require.NoError(t, guarded(t, func() error { return c.Set(bg, "big", value, 0) }))
			assert.Equal(t, value, <-got, "the server received the value intact")
			res := guardedGet(t, c, bg, "k")
			require.NoError(t, res.err)
			assert.Equal(t, "fresh", res.v)
			assert.Equal(t, 1, srv.Accepted())
		})
	}
}

// A server that stops reading in the middle of a large request: the
// client's write blocks until Timeout, the fault is a timeout, and the
// next request goes over a fresh connection.
func TestFaultStalledWrite(t *testing.T) {
	value := make([]byte, 900_000)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			release := make(chan struct{})
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					fc.ReadSlowly(1 << 10)
					fc.r.Peek(1) // the request has started, and nothing more is read
					if fc.Wait(release) {
						_, _ = io.Copy(io.Discard, fc) // until the client hangs up
					}
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 200 * time.Millisecond, DialContext: smallBufferDial})
			err := guarded(t, func() error { return c.Set(bg, "big", value, 0) })
			close(release)
			var ce *ConnError
			require.ErrorAs(t, err, &ce)
			assert.True(t, ce.Timeout(), "%v", err)
			afterFault(t, srv, c)
		})
	}
}

// On Ultra a cancelled request gives its place in the pipeline to a sink
// that reads and drops its reply, so the connection is kept and the next
// request gets its own value. A request whose reply is already being
// parsed cannot leave mid-parse: it ends when the reply does or when the
// connection's Timeout fails the connection, never with a value.
func TestUltraCanceledMidRequest(t *testing.T) {
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for _, sp := range stallPointsFor(proto) {
				t.Run(sp.name, func(t *testing.T) {
					srv, release := startStalledServer(t, proto, sp)
					waiting := sp.partial == "" // no reply byte yet: not being parsed
					timeout := time.Minute      // only the cancellation can end the request in time
					if !waiting {
						timeout = 200 * time.Millisecond
					}
					c := newFaultClient(t, srv.Addr, proto, Options{Timeout: timeout})
					ctx, cancel := context.WithCancel(bg)
					defer cancel()
					go func() {
						srv.WaitRequest()
						if !waiting {
							waitUltraParsing(c)
						}
						cancel()
					}()
					res := guardedGet(t, c, ctx, "k")
					require.Error(t, res.err)
					assert.Empty(t, res.v)
					if !waiting {
						var ce *ConnError
						require.ErrorAs(t, res.err, &ce)
						assert.True(t, ce.Timeout(), "%v", res.err)
						release()
						afterFault(t, srv, c)
						return
					}
					assert.ErrorIs(t, res.err, context.Canceled)
					release() // the stale reply now reaches the sink
					res = guardedGet(t, c, bg, "k")
					require.NoError(t, res.err)
					assert.Equal(t, "fresh", res.v, "the sink took the stale reply")
					assert.Equal(t, 1, srv.Accepted(), "the connection was kept")
				})
			}
		})
	}
}

// waitUltraParsing waits until c's (single) lane has started parsing the
// reply of the request at the head of its pipeline.
func waitUltraParsing(c *Client) {
	ln := c.drv.(*pipeDriver).lanes[0]
	for deadline := time.Now().Add(hangGuard); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		ln.mu.Lock()
		r := ln.flight.peek()
		parsing := r != nil && r.where == atParse
		ln.mu.Unlock()
		if parsing {
			return
		}
	}
}

// A reply line over the line bound is refused however it arrives: whole
// in one read, or in pieces.
func TestTextLongLineRefusedWholeOrSplit(t *testing.T) {
	reply := []byte(strings.Repeat("x", maxTextLine+1) + "\r\nMN\r\n")
	for _, step := range []int{len(reply), 100, 1} {
		r := &request{op: opFence, maxValue: fuzzMaxValue}
		_, err := feedReply(t, parseTextReply, r, reply, step, fuzzMaxValue+2)
		assert.ErrorIs(t, err, ErrProtocol, "in %d-byte pieces", step)
	}
}
