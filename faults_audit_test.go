package ermc

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault tests added by the audit of issue 6's fault-tolerance list, for
// items whose existing tests passed with the handling removed, or that did
// not run on every driver they apply to. They reuse the fake server and
// helpers of faults_test.go, faults_drivers_test.go and faults_server_test.go.

// A VALUE length that is not a plain decimal number is refused as such,
// even when a lax reading of it (C's atoi, strtoul's leading digits, a
// wrap at 2^32 or 2^64) would frame the reply correctly. The malformed
// cases of TestFaultMalformedReplies are also refused for another reason
// (their data block is not followed by CRLF under a lax reading), so they
// pass with a length parser that reads "abc" or "-5" as 0.
func TestAuditValueLengthNotReadLaxly(t *testing.T) {
	cases := []struct{ name, reply string }{
		{"non-numeric length, atoi reads 0", "VALUE k 0 abc\r\n\r\nEND\r\n"},
		{"negative length, atoi reads 0", "VALUE k 0 -5\r\n\r\nEND\r\n"},
		{"digits then letters, strtoul reads 5", "VALUE k 0 5abc\r\nwrong\r\nEND\r\n"},
		{"2^32+5, 5 in 32 bits", "VALUE k 0 4294967301\r\nwrong\r\nEND\r\n"},
		{"2^64+5, 5 in 64 bits", "VALUE k 0 18446744073709551621\r\nwrong\r\nEND\r\n"},
	}
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					srv := startFakeServer(t, replyFirstThenServe(tc.reply))
					c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
					res := guardedGet(t, c, bg, "k")
					require.ErrorIs(t, res.err, ErrProtocol)
					assert.Contains(t, res.err.Error(), "malformed VALUE line")
					assert.Empty(t, res.v)
					afterFault(t, srv, c)
				})
			}
		})
	}
}

// A data block whose CRLF is missing or wrong is refused even when the
// line after it would parse: TestFaultMalformedReplies' case fails for
// other reasons (the leftover bytes make an empty line) when the CRLF
// check is removed. Also when the block spans reads (the scratch path).
func TestAuditDataBlockCRLFChecked(t *testing.T) {
	big := strings.Repeat("s", 40_000) // over the 16 KiB read buffer
	cases := []struct{ name, reply string }{
		{"other bytes", "VALUE k 0 5\r\nwrong!!END\r\n"},
		{"LF CR", "VALUE k 0 5\r\nwrong\n\rEND\r\n"},
		{"other bytes after a block that spans reads", "VALUE k 0 40000\r\n" + big + "!!END\r\n"},
		{"LF CR after a block that spans reads", "VALUE k 0 40000\r\n" + big + "\n\rEND\r\n"},
	}
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					srv := startFakeServer(t, replyFirstThenServe(tc.reply))
					c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
					res := guardedGet(t, c, bg, "k")
					require.ErrorIs(t, res.err, ErrProtocol)
					assert.Contains(t, res.err.Error(), "data block not followed by CRLF")
					assert.Empty(t, res.v)
					afterFault(t, srv, c)
				})
			}
		})
	}
}

// A multi-get reply carrying a value for a key that was not asked is a
// protocol error on every driver, and the value never reaches the
// callback. (TestFaultMalformedReplies has the single-key get on the text
// drivers; the binary and multi-key cases were parser tests only.)
func TestAuditMultiGetValueForKeyNotAsked(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			reply := "VALUE a 0 1\r\nA\r\nVALUE c 0 5\r\nwrong\r\nEND\r\n"
			if proto == Binary {
				reply = string(join(
					binResp(binGetKQ, 0, 0, 1, be32(0), "a", "A"),
					binResp(binGetKQ, 0, 1, 1, be32(0), "c", "wrong"), // b's opaque, another key
					binResp(binNoop, 0, 2, 0, "", "", ""),
				))
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					reqs := 1
					if proto == Binary {
						reqs = 3 // GETKQ a, GETKQ b, NOOP
					}
					for i := 0; i < reqs; i++ {
						if _, ok := fc.NextAs(proto); !ok {
							return
						}
					}
					fc.Send(reply)
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			var mu sync.Mutex
			var got []string
			err := guarded(t, func() error {
				return c.GetMulti(bg, []string{"a", "b"}, func(i int, v []byte) {
					mu.Lock()
					got = append(got, fmt.Sprintf("%d=%s", i, v))
					mu.Unlock()
				})
			})
			require.ErrorIs(t, err, ErrProtocol)
			assert.Contains(t, err.Error(), "not requested")
			mu.Lock()
			for _, g := range got {
				assert.NotContains(t, g, "wrong", "the unasked key's value reached the callback")
			}
			mu.Unlock()
			afterFault(t, srv, c)
		})
	}
}
