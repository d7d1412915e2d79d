package ermc

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A connection that ends: mid-reply (EOF), or while it sat idle in the
// pool (fake and real memcached -o idle_timeout). A read on a connection
// that went stale while idle is retried once on a fresh one; a command
// that may have been carried out is not.

func TestFaultEOFMidReply(t *testing.T) {
	forEachProto(t, wireDrivers, testFaultEOFMidReply)
}

func testFaultEOFMidReply(t *testing.T, proto Protocol) {
	for _, sp := range stallPointsFor(proto) {
		t.Run(sp.name, func(t *testing.T) {
			srv := startFakeServer(t, partialThenHangUp(proto, sp.partial))
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			res := guardedGet(t, c, bg, "k")
			require.Error(t, res.err)
			assert.Empty(t, res.v)
			var ce *ConnError
			require.ErrorAs(t, res.err, &ce)
			assert.Equal(t, "read", ce.Op)
			assert.ErrorIs(t, res.err, io.EOF)
			assert.False(t, ce.Timeout())
			res = guardedGet(t, c, bg, "k")
			require.NoError(t, res.err)
			assert.Equal(t, "fresh", res.v)
			assert.Equal(t, 2, srv.Accepted())
		})
	}
	t.Run("storage command", func(t *testing.T) {
		partial := "STOR"
		switch proto {
		case Binary:
			partial = string(binResp(binSet, 0, binOpaque, 2, "", "", ""))[:5]
		case Meta:
			partial = "H" // of "HD"
		}
		srv := startFakeServer(t, partialThenHangUp(proto, partial))
		c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
		err := guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) })
		var ce *ConnError
		require.ErrorAs(t, err, &ce)
		assert.ErrorIs(t, err, io.EOF)
		require.NoError(t, guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) }))
		assert.Equal(t, 2, srv.Accepted())
	})
}

// partialThenHangUp is a script: the first connection answers its first
// request with partial (a meta reply's "O$" filled with the request's
// opaque token) and hangs up; every other connection serves fresh values.
func partialThenHangUp(proto Protocol, partial string) func(fc *fakeConn) {
	return func(fc *fakeConn) {
		if fc.N == 0 {
			if req, ok := fc.NextAs(proto); ok {
				fc.Send(echoOpaque(req, partial))
			}
			return
		}
		fc.ServeAs(proto, fresh)
	}
}

// serveOneThenHangUp answers the first request of every connection, then
// closes it, as a server does with a connection that sits idle too long.
func serveOneThenHangUp(proto Protocol) func(fc *fakeConn) {
	return func(fc *fakeConn) {
		for {
			req, ok := fc.NextAs(proto)
			if !ok {
				return
			}
			fc.Send(fakeReplyAs(proto, req, fresh))
			if req.Bin == nil || req.Bin.opcode != binGetKQ {
				return // a binary multi-get ends with its NOOP
			}
		}
	}
}

// A pooled connection the server closed while it sat idle fails the next
// request with no reply byte read. A read that changes nothing is then
// sent again on a fresh connection and succeeds; any other command is not
// (it may have been carried out) and reports the fault.
func TestFaultIdleConnectionClosedByServer(t *testing.T) {
	ops := []struct {
		name  string
		retry bool
		op    func(c *Client) error
	}{
		{"get", true, func(c *Client) error { return wantGet(c.Get(bg, "k", nil)) }},
		{"gets", true, func(c *Client) error { v, _, err := c.Gets(bg, "k", nil); return wantGet(v, err) }},
		{"gat", true, func(c *Client) error { return wantGet(c.GetAndTouch(bg, "k", time.Hour, nil)) }},
		{"get multi", true, func(c *Client) error {
			m, err := c.GetMultiMap(bg, []string{"k", "other"})
			if err == nil && (string(m["k"]) != "fresh" || string(m["other"]) != "other-value") {
				err = fmt.Errorf("values %q", m)
			}
			return err
		}},
		{"version", true, func(c *Client) error { _, err := c.Version(bg); return err }},
		{"stats", true, func(c *Client) error { _, err := c.Stats(bg); return err }},
		{"set", false, func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }},
		{"add", false, func(c *Client) error { return c.Add(bg, "k", []byte("v"), 0) }},
		{"replace", false, func(c *Client) error { return c.Replace(bg, "k", []byte("v"), 0) }},
		{"append", false, func(c *Client) error { return c.Append(bg, "k", []byte("v")) }},
		{"prepend", false, func(c *Client) error { return c.Prepend(bg, "k", []byte("v")) }},
		{"cas", false, func(c *Client) error { return c.CompareAndSwap(bg, "k", []byte("v"), 1, 0) }},
		{"incr", false, func(c *Client) error { _, err := c.Incr(bg, "k", 1); return err }},
		{"decr", false, func(c *Client) error { _, err := c.Decr(bg, "k", 1); return err }},
		{"delete", false, func(c *Client) error { return c.Delete(bg, "k") }},
		{"touch", false, func(c *Client) error { return c.Touch(bg, "k", time.Hour) }},
		{"flush_all", false, func(c *Client) error { return c.FlushAll(bg) }},
	}
	for _, proto := range []Protocol{Text, Binary} {
		for _, tc := range ops {
			t.Run(proto.String()+"/"+tc.name, func(t *testing.T) {
				srv := startFakeServer(t, serveOneThenHangUp(proto))
				c := newTestClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second, MaxConns: 1})
				res := guardedGet(t, c, bg, "k")
				require.NoError(t, res.err)
				srv.WaitEnded(0) // the pooled connection is now closed by the server

				err := guarded(t, func() error { return tc.op(c) })
				if tc.retry {
					require.NoError(t, err, "a read on a stale idle connection is retried")
					assert.Equal(t, 2, srv.Accepted(), "the retry uses a fresh connection")
					return
				}
				var ce *ConnError
				require.ErrorAs(t, err, &ce, "the fault is reported")
				assert.Equal(t, 1, srv.Accepted(), "a command that may have been carried out is not sent again")
				res = guardedGet(t, c, bg, "k")
				require.NoError(t, res.err, "the request after it reconnects")
				assert.Equal(t, "fresh", res.v)
			})
		}
	}
}

// wantGet turns a get's result into an error unless it is "fresh".
func wantGet(v []byte, err error) error {
	if err == nil && string(v) != "fresh" {
		return fmt.Errorf("value %q, want %q", v, "fresh")
	}
	return err
}

// The retry is only for a connection that sat idle in the pool and broke
// before any reply byte: not for a fresh connection, not once part of the
// reply has come, not after a timeout.
func TestFaultNoRetryUnlessStaleIdle(t *testing.T) {
	cases := []struct {
		name   string
		warm   bool   // a request first, so the failing one reuses an idle connection
		reply  string // what connection 0 sends to the failing request before hanging up
		stall  bool   // stall instead of hanging up
		reason string
	}{
		{"fresh connection", false, "", false, "the connection was not idle: the server hung up on the request"},
		{"part of the reply read", true, "VALUE k 0 5\r\nst", false, "the server answered part of the request"},
		{"timeout", true, "", true, "a stalled server is not retried: the caller would wait twice"},
	}
	for _, proto := range wireDrivers {
		for _, tc := range cases {
			t.Run(proto.String()+"/"+tc.name, func(t *testing.T) {
				reply := tc.reply
				if proto == Binary && reply != "" {
					reply = string(binResp(binGet, 0, binOpaque, 1, be32(0), "", "stale"))[:binHeaderLen+6]
				}
				if proto == Meta && reply != "" {
					reply = "VA 5 f0 O$\r\nst"
				}
				script := func(fc *fakeConn) {
					if fc.N > 0 {
						fc.ServeAs(proto, fresh)
						return
					}
					if tc.warm {
						req, ok := fc.NextAs(proto)
						if !ok {
							return
						}
						fc.Send(fakeReplyAs(proto, req, fresh))
					}
					req, ok := fc.NextAs(proto)
					if !ok {
						return
					}
					fc.Send(echoOpaque(req, reply))
					if tc.stall {
						fc.Stall()
					}
				}
				for attempt := 1; ; attempt++ {
					srv := startFakeServer(t, script)
					c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 200 * time.Millisecond, MaxConns: 1})
					if tc.warm {
						// The short Timeout (the stall's) can pass before even
						// a healthy reply on a busy machine: then again.
						err := guardedGet(t, c, bg, "k").err
						if isTimeout(err) && attempt < 3 {
							t.Logf("attempt %d: the warm-up get timed out (a busy machine): %v", attempt, err)
							continue
						}
						require.NoError(t, err)
					}
					res := guardedGet(t, c, bg, "k")
					require.Error(t, res.err, tc.reason)
					assert.Equal(t, 1, srv.Accepted(), tc.reason)
					return
				}
			})
		}
	}
}

// A read is retried once: when the fresh connection fails the same way,
// the fault is reported, with no third connection.
func TestFaultIdleRetryOnlyOnce(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					serveOneThenHangUp(proto)(fc) // then idle, and closed
					return
				}
				fc.NextAs(proto) // the retry: hung up on before any reply byte
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second, MaxConns: 1})
			require.NoError(t, guardedGet(t, c, bg, "k").err)
			srv.WaitEnded(0)

			res := guardedGet(t, c, bg, "k")
			var ce *ConnError
			require.ErrorAs(t, res.err, &ce)
			assert.False(t, ce.Timeout(), "the server hung up: %v", res.err)
			assert.Equal(t, 2, srv.Accepted(), "the stale connection and one fresh one")
		})
	}
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

// memcached with idle_timeout closes a pooled connection that sat idle.
// The next read is retried on a fresh connection and succeeds; a write or
// incr on such a connection reaches the dead socket (the write itself
// succeeds, the read fails) and is reported, not sent again.
func TestServerIdleTimeout(t *testing.T) {
	srv := startMemcached(t, "-o", "idle_timeout=1")
	type idleCase struct {
		proto      Protocol
		op         string
		c          *Client
		dials      *atomic.Int32
		key, value string
	}
	var cases []*idleCase
	for _, proto := range []Protocol{Text, Binary} {
		for _, op := range []string{"get", "set", "incr"} {
			c, dials := countingClient(t, srv.Addr, proto, Options{MaxConns: 1, Timeout: 2 * time.Second})
			tc := &idleCase{proto: proto, op: op, c: c, dials: dials, key: proto.String() + "-" + op, value: "7"}
			mustSet(t, c, tc.key, tc.value) // one pooled connection, now idle
			cases = append(cases, tc)
		}
	}
	// Every client's connection idles past the timeout at once: one wait.
	waitStat(t, srv.Addr, "idle_kicks", int64(len(cases)), 15*time.Second)

	for _, tc := range cases {
		t.Run(tc.proto.String()+"/"+tc.op, func(t *testing.T) {
			var err error
			switch tc.op {
			case "get":
				var v []byte
				v, err = tc.c.Get(bg, tc.key, nil)
				require.NoError(t, err, "a get on a connection the server closed is retried")
				assert.Equal(t, tc.value, string(v))
				assert.EqualValues(t, 2, tc.dials.Load(), "the retry dialed a fresh connection")
				return
			case "set":
				err = tc.c.Set(bg, tc.key, []byte("8"), 0)
			case "incr":
				_, err = tc.c.Incr(bg, tc.key, 1)
			}
			var ce *ConnError
			require.ErrorAs(t, err, &ce, "%s on a closed idle connection reports the fault", tc.op)
			assert.EqualValues(t, 1, tc.dials.Load(), "%s was not sent again", tc.op)
			// It was not carried out either: the server had closed the
			// connection before the command arrived.
			v, err := tc.c.Get(bg, tc.key, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.value, string(v))
			assert.EqualValues(t, 2, tc.dials.Load())
		})
	}
}

// rawStat reads one general statistic over a connection of its own, so
// that polling does not keep the clients' connections busy.
func rawStat(t *testing.T, addr, name string) int64 {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, hangGuard)
	require.NoError(t, err)
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(hangGuard))
	_, err = nc.Write([]byte("stats\r\n"))
	require.NoError(t, err)
	sc := bufio.NewScanner(nc)
	for sc.Scan() {
		line := sc.Text()
		if line == "END" {
			break
		}
		if v, ok := strings.CutPrefix(line, "STAT "+name+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	require.Fail(t, "stat not found", "%s: %v", name, sc.Err())
	return 0
}

// waitStat polls a statistic until it reaches want. The bound is a hang
// guard, not a timing assertion.
func waitStat(t *testing.T, addr, name string, want int64, guard time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(guard); ; time.Sleep(50 * time.Millisecond) {
		if rawStat(t, addr, name) >= want {
			return
		}
		require.False(t, time.Now().After(deadline), "stat %s did not reach %d within %v", name, want, guard)
	}
}
