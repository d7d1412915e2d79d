package ermc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault tests that pin each handling down where a looser one would pass
// the tests in faults_test.go (a lax number parser, a CRLF check that
// other checks mask), and the fault cases on the drivers those tests do
// not run (Ultra's idle connections and dials, binary multi-get keys). They reuse the fake server and
// helpers of faults_test.go, faults_drivers_test.go and faults_server_test.go.

// A VALUE length that is not a plain decimal number is refused as such,
// even when a lax reading of it (C's atoi, strtoul's leading digits, a
// wrap at 2^32 or 2^64) would frame the reply correctly. The malformed
// cases of TestFaultMalformedReplies are also refused for another reason
// (their data block is not followed by CRLF under a lax reading), so they
// pass with a length parser that reads "abc" or "-5" as 0.
func TestFaultValueLengthNotReadLaxly(t *testing.T) {
	cases := []struct{ name, reply string }{
		{"non-numeric length, atoi reads 0", "VALUE k 0 abc\r\n\r\nEND\r\n"},
		{"negative length, atoi reads 0", "VALUE k 0 -5\r\n\r\nEND\r\n"},
		{"digits then letters, strtoul reads 5", "VALUE k 0 5abc\r\nwrong\r\nEND\r\n"},
		{"2^32+5, 5 in 32 bits", "VALUE k 0 4294967301\r\nwrong\r\nEND\r\n"},
		{"2^64+5, 5 in 64 bits", "VALUE k 0 18446744073709551621\r\nwrong\r\nEND\r\n"},
	}
	assertGetRefused(t, cases, "malformed VALUE line")
}

// assertGetRefused answers a get with each reply on the text drivers and
// expects a protocol error naming why, no value, and a fresh connection
// for the next request.
func assertGetRefused(t *testing.T, cases []struct{ name, reply string }, why string) {
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					srv := startFakeServer(t, replyFirstThenServe(tc.reply))
					c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
					res := guardedGet(t, c, bg, "k")
					require.ErrorIs(t, res.err, ErrProtocol)
					assert.Contains(t, res.err.Error(), why)
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
func TestFaultDataBlockCRLFChecked(t *testing.T) {
	big := strings.Repeat("s", 40_000) // over the 16 KiB read buffer
	cases := []struct{ name, reply string }{
		{"other bytes", "VALUE k 0 5\r\nwrong!!END\r\n"},
		{"LF CR", "VALUE k 0 5\r\nwrong\n\rEND\r\n"},
		{"other bytes after a block that spans reads", "VALUE k 0 40000\r\n" + big + "!!END\r\n"},
		{"LF CR after a block that spans reads", "VALUE k 0 40000\r\n" + big + "\n\rEND\r\n"},
	}
	assertGetRefused(t, cases, "data block not followed by CRLF")
}

// A multi-get reply carrying a value for a key that was not asked is a
// protocol error on every driver, and the value never reaches the
// callback. (TestFaultMalformedReplies has the single-key get on the text
// drivers; the binary and multi-key cases were parser tests only.)
func TestFaultMultiGetValueForKeyNotAsked(t *testing.T) {
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
			refusal := "not requested"
			if proto == Meta {
				// a's value, then one under the token after b's
				reply, refusal = "VA 1 f0 O$\r\nA\r\nVA 5 f0 O%d\r\nwrong\r\nMN\r\n", "not sent"
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					reqs := 1
					if proto == Binary || proto == Meta {
						reqs = 3 // GETKQ a, GETKQ b, NOOP; mg a, mg b, mn
					}
					var first fakeRequest
					for i := 0; i < reqs; i++ {
						req, ok := fc.NextAs(proto)
						if !ok {
							return
						}
						if i == 0 {
							first = req
						}
					}
					if proto == Meta {
						tok, _ := strconv.ParseUint(metaOpaque(first), 10, 32)
						reply = echoOpaque(first, fmt.Sprintf(reply, uint32(tok)+2))
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
			assert.Contains(t, err.Error(), refusal)
			mu.Lock()
			for _, g := range got {
				assert.NotContains(t, g, "wrong", "the unasked key's value reached the callback")
			}
			mu.Unlock()
			afterFault(t, srv, c)
		})
	}
}

// fakeReplyAll is fakeReply with answers for the counters, touch and
// flush_all, so that a command sent on a fresh connection succeeds.
func fakeReplyAll(proto Protocol, req fakeRequest) string {
	if proto == Binary {
		return fakeReplyAs(proto, req, fresh)
	}
	switch req.Fields[0] {
	case "incr", "decr":
		return "1\r\n"
	case "touch":
		return "TOUCHED\r\n"
	case "flush_all":
		return "OK\r\n"
	}
	return fakeReply(req, fresh)
}

// A command that changes data, written to a reused idle connection that
// the server then closes without a reply byte, is never sent again: the
// server may have carried it out. Here the fake does read the command
// before hanging up, so a resend would apply it twice. Every driver,
// Ultra included (TestFaultIdleConnectionClosedByServer runs Text and
// Binary only).
func TestFaultIdleConnectionCommandNotResent(t *testing.T) {
	ops := []struct {
		name string
		op   func(c *Client) error
	}{
		{"set", func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }},
		{"add", func(c *Client) error { return c.Add(bg, "k", []byte("v"), 0) }},
		{"replace", func(c *Client) error { return c.Replace(bg, "k", []byte("v"), 0) }},
		{"append", func(c *Client) error { return c.Append(bg, "k", []byte("v")) }},
		{"prepend", func(c *Client) error { return c.Prepend(bg, "k", []byte("v")) }},
		{"cas", func(c *Client) error { return c.CompareAndSwap(bg, "k", []byte("v"), 1, 0) }},
		{"incr", func(c *Client) error { _, err := c.Incr(bg, "k", 1); return err }},
		{"decr", func(c *Client) error { _, err := c.Decr(bg, "k", 1); return err }},
		{"delete", func(c *Client) error { return c.Delete(bg, "k") }},
		{"touch", func(c *Client) error { return c.Touch(bg, "k", time.Hour) }},
		{"flush_all", func(c *Client) error { return c.FlushAll(bg) }},
	}
	for _, proto := range wireDrivers {
		for _, tc := range ops {
			t.Run(proto.String()+"/"+tc.name, func(t *testing.T) {
				var mu sync.Mutex
				var later []string // requests read on connections after the first
				srv := startFakeServer(t, func(fc *fakeConn) {
					if fc.N == 0 {
						req, ok := fc.NextAs(proto) // the warm-up get
						if !ok {
							return
						}
						fc.Send(fakeReplyAs(proto, req, fresh))
						_, _ = fc.NextAs(proto) // the command, read and never answered
						return                  // hang up
					}
					for {
						req, ok := fc.NextAs(proto)
						if !ok {
							return
						}
						mu.Lock()
						later = append(later, req.Line)
						mu.Unlock()
						fc.Send(fakeReplyAll(proto, req))
					}
				})
				c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second, MaxConns: 1})
				res := guardedGet(t, c, bg, "k")
				require.NoError(t, res.err)
				require.Equal(t, "fresh", res.v)

				err := guarded(t, func() error { return tc.op(c) })
				var ce *ConnError
				require.ErrorAs(t, err, &ce, "the fault is reported")
				srv.WaitEnded(0)

				res = guardedGet(t, c, bg, "k")
				require.NoError(t, res.err, "the request after it reconnects")
				assert.Equal(t, "fresh", res.v)
				getLine := "get k"
				if proto == Binary {
					getLine = fmt.Sprintf("bin %d k", binGet)
				}
				mu.Lock()
				defer mu.Unlock()
				if proto == Meta && len(later) == 1 && strings.HasPrefix(later[0], "mg k v f O") {
					later[0] = getLine // its opaque token varies
				}
				assert.Equal(t, []string{getLine}, later, "%s was sent again on a new connection", tc.name)
			})
		}
	}
}

// memcached -o idle_timeout=1 closes an Ultra client's idle connection
// too. A command that changes data is then reported (or, if the driver
// found the connection closed before writing, carried out once on a new
// one); it is never carried out twice, and a reported one is not carried
// out at all. TestServerIdleTimeout runs Text and Binary only. (Reads:
// TestFaultUltraIdleReadRetried.)
func TestFaultServerIdleTimeoutUltra(t *testing.T) {
	srv := startMemcached(t, "-o", "idle_timeout=1")
	type idleCase struct {
		name      string
		op        func(c *Client, key string, cas uint64) error
		applied   string // the value after the command ran once; "" for deleted
		c         *Client
		key       string
		cas       uint64
		dialsSeen func() int32
	}
	cases := []*idleCase{
		{name: "set", op: func(c *Client, k string, _ uint64) error { return c.Set(bg, k, []byte("8"), 0) }, applied: "8"},
		{name: "append", op: func(c *Client, k string, _ uint64) error { return c.Append(bg, k, []byte("x")) }, applied: "7x"},
		{name: "prepend", op: func(c *Client, k string, _ uint64) error { return c.Prepend(bg, k, []byte("x")) }, applied: "x7"},
		{name: "cas", op: func(c *Client, k string, cas uint64) error { return c.CompareAndSwap(bg, k, []byte("9"), cas, 0) }, applied: "9"},
		{name: "incr", op: func(c *Client, k string, _ uint64) error { _, err := c.Incr(bg, k, 1); return err }, applied: "8"},
		{name: "decr", op: func(c *Client, k string, _ uint64) error { _, err := c.Decr(bg, k, 1); return err }, applied: "6"},
		{name: "delete", op: func(c *Client, k string, _ uint64) error { return c.Delete(bg, k) }, applied: ""},
	}
	for _, tc := range cases {
		c, dials := countingClient(t, srv.Addr, Ultra, Options{Timeout: 2 * time.Second})
		tc.c, tc.key, tc.dialsSeen = c, "ultra-"+tc.name, dials.Load
		mustSet(t, c, tc.key, "7")
		_, cas, err := c.Gets(bg, tc.key, nil) // same connection, now idle
		require.NoError(t, err)
		tc.cas = cas
	}
	waitStat(t, srv.Addr, "idle_kicks", int64(len(cases)), 15*time.Second)

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := guarded(t, func() error { return tc.op(tc.c, tc.key, tc.cas) })
			_, data, found := rawGet(t, srv.Addr, tc.key)
			now := string(data)
			if !found {
				now = ""
			}
			if err != nil {
				var ce *ConnError
				require.ErrorAs(t, err, &ce, "%s on a closed idle connection", tc.name)
				assert.Equal(t, "7", now, "a reported %s was not carried out (nor sent again)", tc.name)
				assert.EqualValues(t, 1, tc.dialsSeen(), "%s was not sent again", tc.name)
			} else {
				assert.Equal(t, tc.applied, now, "%s carried out exactly once", tc.name)
			}
			// The client is usable afterwards.
			require.NoError(t, tc.c.Set(bg, tc.key, []byte("after"), 0))
			v, err := tc.c.Get(bg, tc.key, nil)
			require.NoError(t, err)
			assert.Equal(t, "after", string(v))
		})
	}
}

// memcached answers a storage command whose key it refuses (over 250
// bytes; MaxKeyLength lets the client send it) with CLIENT_ERROR and then
// an ERROR for the data line it reads as a command. The client reports
// the CLIENT_ERROR (binary: status 0x04, after which memcached closes the
// connection), discards the connection, and the next request gets its own
// reply instead of that ERROR. TestFaultErrorReplies has the fake's
// version, without the extra ERROR. On Ultra the ERROR comes in the same
// read as the CLIENT_ERROR and is refused as bytes with no request in
// flight, so this test passes there even when CLIENT_ERROR keeps the
// connection; TestFaultErrorReplies is the one that pins it on Ultra.
func TestFaultClientErrorAfterStorageRealServer(t *testing.T) {
	srv := startMemcached(t)
	long := strings.Repeat("k", 260)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c, dials := countingClient(t, srv.Addr, proto, Options{MaxKeyLength: 300, Timeout: 2 * time.Second})
			key := "cerr-" + proto.String()
			mustSet(t, c, key, "own")
			err := guarded(t, func() error { return c.Set(bg, long, []byte("value"), 0) })
			require.Error(t, err)
			var ce *ConnError
			assert.False(t, errors.As(err, &ce), "the server's answer is not a connection fault: %v", err)
			if proto == Binary {
				var se *StatusError
				require.ErrorAs(t, err, &se)
				assert.EqualValues(t, binStatusInvalidArgs, se.Status)
			} else {
				var cle *ClientError
				require.ErrorAs(t, err, &cle)
				assert.Equal(t, "bad command line format", cle.Message)
			}
			// A set first: a get on a kept connection that the server
			// closed would be retried and hide it.
			err = guarded(t, func() error { return c.Set(bg, key, []byte("own2"), 0) })
			require.NoError(t, err, "the request after the CLIENT_ERROR")
			for i := 0; i < 3; i++ {
				res := guardedGet(t, c, bg, key)
				require.NoError(t, res.err, "request %d after the CLIENT_ERROR", i)
				require.Equal(t, "own2", res.v, "request %d after the CLIENT_ERROR", i)
			}
			assert.EqualValues(t, 2, dials.Load(), "the connection was discarded, once")
		})
	}
}

// Ultra retries a read once on a fresh connection when the shared
// connection was closed by the server while it sat idle and no reply byte
// came back, as Text and Binary do (TestFaultIdleConnectionClosedByServer,
// TestServerIdleTimeout). Ultra's reader only reads while a reply is due,
// so the close is found when the next request's reply is read.
func TestFaultUltraIdleReadRetried(t *testing.T) {
	reads := []struct {
		name string
		op   func(c *Client) error
	}{
		{"get", func(c *Client) error { return wantGet(c.Get(bg, "k", nil)) }},
		{"gets", func(c *Client) error { v, _, err := c.Gets(bg, "k", nil); return wantGet(v, err) }},
		{"gat", func(c *Client) error { return wantGet(c.GetAndTouch(bg, "k", time.Hour, nil)) }},
		{"get multi", func(c *Client) error {
			m, err := c.GetMultiMap(bg, []string{"k", "other"})
			if err == nil && (string(m["k"]) != "fresh" || string(m["other"]) != "other-value") {
				err = fmt.Errorf("values %q", m)
			}
			return err
		}},
		{"version", func(c *Client) error { _, err := c.Version(bg); return err }},
		{"stats", func(c *Client) error { _, err := c.Stats(bg); return err }},
	}
	for _, tc := range reads {
		t.Run("fake/"+tc.name, func(t *testing.T) {
			srv := startFakeServer(t, serveOneThenHangUp(Ultra))
			c := newFaultClient(t, srv.Addr, Ultra, Options{Timeout: 2 * time.Second})
			res := guardedGet(t, c, bg, "k")
			require.NoError(t, res.err)
			srv.WaitEnded(0) // the idle connection is now closed by the server

			err := guarded(t, func() error { return tc.op(c) })
			require.NoError(t, err, "a read on a stale idle connection is retried")
			assert.Equal(t, 2, srv.Accepted(), "the retry uses a fresh connection")
		})
	}
	t.Run("memcached idle_timeout", func(t *testing.T) {
		srv := startMemcached(t, "-o", "idle_timeout=1")
		c, dials := countingClient(t, srv.Addr, Ultra, Options{Timeout: 2 * time.Second})
		mustSet(t, c, "k", "v") // one connection, now idle
		waitStat(t, srv.Addr, "idle_kicks", 1, 15*time.Second)
		res := guardedGet(t, c, bg, "k")
		require.NoError(t, res.err, "a get on a connection the server closed is retried")
		assert.Equal(t, "v", res.v)
		assert.EqualValues(t, 2, dials.Load(), "the retry dialed a fresh connection")
	})
}

// A caller's context bounds its wait for a dial on every driver. On Ultra
// the dial goes on without the caller (it serves every queued request:
// TestUltraDialOutlivesLeavingCaller), but the caller returns when its
// context ends. ConnectTimeout here is longer than the hang guard, so a
// caller that waited for the dial would trip the guard.
func TestFaultDialBoundedByCallerContext(t *testing.T) {
	for _, proto := range wireDrivers {
		for _, how := range []string{"deadline", "cancel"} {
			t.Run(proto.String()+"/"+how, func(t *testing.T) {
				started := make(chan struct{}, 1)
				dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
					select {
					case started <- struct{}{}:
					default:
					}
					<-ctx.Done()
					return nil, ctx.Err()
				}
				c := newTestClient(t, "127.0.0.1:1", proto, Options{ConnectTimeout: 2 * hangGuard, Timeout: time.Minute, DialContext: dial})
				var ctx context.Context
				var cancel context.CancelFunc
				want := context.DeadlineExceeded
				if how == "deadline" {
					ctx, cancel = context.WithTimeout(bg, 50*time.Millisecond)
				} else {
					ctx, cancel = context.WithCancel(bg)
					want = context.Canceled
					go func() {
						<-started
						cancel()
					}()
				}
				defer cancel()
				res := guardedGet(t, c, ctx, "k")
				var ce *ConnError
				require.ErrorAs(t, res.err, &ce)
				assert.ErrorIs(t, res.err, want)
			})
		}
	}
}
