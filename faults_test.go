package ermc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault tolerance of the wire drivers against the scripted fake server:
// every fault is reported, a broken connection is never reused, and the
// next request gets its own reply on a fresh connection. Most tests run on
// every wire driver; faults_drivers_test.go has the driver-specific ones.

// newFaultClient is newTestClient with one connection for Ultra (instead
// of one per core), so that a request after a fault would reuse the faulty
// connection if the driver kept it.
func newFaultClient(t *testing.T, addr string, proto Protocol, opts Options) *Client {
	t.Helper()
	c := newTestClient(t, addr, proto, opts)
	if u, ok := c.drv.(*pipeDriver); ok {
		u.lanes = u.lanes[:1]
	}
	return c
}

// textDrivers speak the text protocol, so the same malformed bytes apply.
var textDrivers = []Protocol{Text, Ultra}

// guarded runs fn and fails the test if it does not return within the hang
// guard. It asserts nothing about timing otherwise.
func guarded[T any](t *testing.T, fn func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- fn() }()
	// Stopped on return: the fuzz targets call this thousands of times a
	// second, and pending timers pile up in the runtime's timer heap.
	guard := time.NewTimer(hangGuard)
	defer guard.Stop()
	select {
	case v := <-ch:
		return v
	case <-guard.C:
		t.Fatalf("call did not return within %v", hangGuard)
		panic("unreachable")
	}
}

type getResult struct {
	v   string
	err error
}

func guardedGet(t *testing.T, c *Client, ctx context.Context, key string) getResult {
	t.Helper()
	return guarded(t, func() getResult {
		v, err := c.Get(ctx, key, nil)
		return getResult{string(v), err}
	})
}

// fresh is what the fake's healthy connections serve.
var fresh = map[string]string{"k": "fresh", "other": "other-value"}

// afterFault is the check every fault test ends with: the faulty
// connection was closed by the client, and the next request goes over a
// new connection and gets its own value.
func afterFault(t *testing.T, srv *fakeServer, c *Client) {
	t.Helper()
	srv.WaitPeerClosed(0)
	res, tries := getAfterBusyTimeouts(t, c, "k")
	require.NoError(t, res.err, "the request after a fault")
	assert.Equal(t, "fresh", res.v, "the request after a fault gets its own reply")
	assert.Equal(t, 1+tries, srv.Accepted(), "the request after a fault uses a new connection")
}

// getAfterBusyTimeouts gets key, and gets it again, on a new connection,
// while that times out, at most three times in all. Tests of a stall give
// their client a Timeout short enough to wait out, and on a busy machine
// even a healthy reply can come later than that; the connection is then
// discarded like any timed-out one. It returns the last result and how
// many gets it made.
func getAfterBusyTimeouts(t *testing.T, c *Client, key string) (res getResult, tries int) {
	t.Helper()
	for tries = 1; ; tries++ {
		res = guardedGet(t, c, bg, key)
		if !isTimeout(res.err) || tries == 3 {
			return res, tries
		}
		t.Logf("get %s %d timed out (a busy machine): %v", key, tries, res.err)
	}
}

func TestFaultMalformedReplies(t *testing.T) {
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) { testFaultMalformedReplies(t, proto) })
	}
}

func testFaultMalformedReplies(t *testing.T, proto Protocol) {
	cases := []struct{ name, reply string }{
		{"bad VALUE line", "VALUE k 0 abc\r\nxyz\r\nEND\r\n"},
		{"VALUE with negative length", "VALUE k 0 -5\r\nwrong\r\nEND\r\n"},
		{"VALUE with non-numeric flags", "VALUE k x 5\r\nwrong\r\nEND\r\n"},
		{"VALUE length 2^64", "VALUE k 0 18446744073709551616\r\n"},
		{"VALUE for another key", "VALUE other 0 5\r\nwrong\r\nEND\r\n"},
		{"second VALUE for the key", "VALUE k 0 5\r\nfirst\r\nVALUE k 0 5\r\nagain\r\nEND\r\n"},
		{"unknown reply line", "HELLO\r\n"},
		{"reply of another command", "STORED\r\n"},
		{"huge VALUE length", "VALUE k 0 4294967295\r\n"},
		{"VALUE length 2^63", "VALUE k 0 9223372036854775808\r\n"},
		{"VALUE over MaxValueLength, header only", "VALUE k 0 1000001\r\n"},
		{"data block not followed by CRLF", "VALUE k 0 5\r\nwrongXY\r\nEND\r\n"},
		{"line ended by LF only", "END\n"},
		{"line longer than maxTextLine", strings.Repeat("x", 3*maxTextLine)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, replyFirstThenServe(tc.reply))
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			res := guardedGet(t, c, bg, "k")
			require.Error(t, res.err)
			assert.ErrorIs(t, res.err, ErrProtocol)
			assert.Empty(t, res.v)
			afterFault(t, srv, c)
		})
	}
}

// stallScript makes connection 0 answer its first request with partial,
// then stall until release is closed, then send late (the rest of the
// reply, which the client must never read), then behave. Every other
// connection serves fresh values. Requests and replies are in proto's
// wire format.
func stallScript(proto Protocol, partial, late string, release <-chan struct{}) func(fc *fakeConn) {
	return func(fc *fakeConn) {
		if fc.N == 0 {
			req, ok := fc.NextAs(proto)
			if !ok {
				return
			}
			fc.Send(echoOpaque(req, partial))
			if !fc.Wait(release) {
				return
			}
			fc.Send(echoOpaque(req, late))
		}
		fc.ServeAs(proto, fresh)
	}
}

type stallPoint struct{ name, partial, late string }

// startStalledServer runs a fake server that sends sp.partial of the reply
// and stalls; release sends the rest (sp.late). Releasing twice is fine,
// and the test's end releases it anyway.
func startStalledServer(t *testing.T, proto Protocol, sp stallPoint) (*fakeServer, func()) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(ch) }) }
	srv := startFakeServer(t, stallScript(proto, sp.partial, sp.late, ch))
	t.Cleanup(release)
	return srv, release
}

// stallPointsFor are places in a reply to a get of "k" in proto's wire
// format where the fake stops sending. Joined, each pair is a valid reply
// with a value other than "fresh".
func stallPointsFor(proto Protocol) []stallPoint {
	switch proto {
	case Binary:
		return binaryStallPoints
	case Meta:
		return metaStallPoints
	}
	return stallPoints
}

// metaStallPoints: the same places in a meta reply; O$ stands for the
// request's opaque token (echoOpaque).
var metaStallPoints = func() []stallPoint {
	big := strings.Repeat("s", 40_000)
	return []stallPoint{
		{"before the first byte", "", "VA 5 f0 O$\r\nstale\r\n"},
		{"in the VA line", "VA 5 f0", " O$\r\nstale\r\n"},
		{"between CR and LF", "VA 5 f0 O$\r", "\nstale\r\n"},
		{"in the value", "VA 5 f0 O$\r\nst", "ale\r\n"},
		{"before the data CRLF", "VA 5 f0 O$\r\nstale", "\r\n"},
		{"in a 40 KB value", "VA 40000 f0 O$\r\n" + big[:20_000], big[20_000:] + "\r\n"},
	}
}()

// binaryStallPoints: the same places in a binary GET response.
var binaryStallPoints = func() []stallPoint {
	small := string(binResp(binGet, 0, binOpaque, 1, be32(0), "", "stale"))
	big := string(binResp(binGet, 0, binOpaque, 1, be32(0), "", strings.Repeat("s", 40_000)))
	return []stallPoint{
		{"before the first byte", "", small},
		{"in the header", small[:10], small[10:]},
		{"after the header", small[:binHeaderLen], small[binHeaderLen:]},
		{"in the value", small[:binHeaderLen+6], small[binHeaderLen+6:]},
		{"in a 40 KB value", big[:20_000], big[20_000:]},
	}
}()

var stallPoints = func() []stallPoint {
	big := strings.Repeat("s", 40_000) // larger than the read buffer: the scratch-buffer path
	return []stallPoint{
		{"before the first byte", "", "VALUE k 0 5\r\nstale\r\nEND\r\n"},
		{"in the VALUE line", "VALUE k 0", " 5\r\nstale\r\nEND\r\n"},
		{"between CR and LF", "VALUE k 0 5\r", "\nstale\r\nEND\r\n"},
		{"in the value", "VALUE k 0 5\r\nst", "ale\r\nEND\r\n"},
		{"before the data CRLF", "VALUE k 0 5\r\nstale", "\r\nEND\r\n"},
		{"before END", "VALUE k 0 5\r\nstale\r\n", "END\r\n"},
		{"in a 40 KB value", "VALUE k 0 40000\r\n" + big[:20_000], big[20_000:] + "\r\nEND\r\n"},
	}
}()

func TestFaultStallTimesOut(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) { testFaultStallTimesOut(t, proto) })
	}
}

func testFaultStallTimesOut(t *testing.T, proto Protocol) {
	for _, sp := range stallPointsFor(proto) {
		t.Run(sp.name, func(t *testing.T) {
			// The Timeout is short, so that the stall is waited out
			// quickly; on a busy machine it can pass before the request
			// is written, which says nothing of the stall: then again.
			for attempt := 1; ; attempt++ {
				srv, release := startStalledServer(t, proto, sp)
				c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 200 * time.Millisecond})
				res := guardedGet(t, c, bg, "k")
				var ce *ConnError
				require.ErrorAs(t, res.err, &ce)
				if ce.Op != "read" && attempt < 3 {
					t.Logf("attempt %d: the Timeout passed before the read (a busy machine): %v", attempt, res.err)
					continue
				}
				assert.Empty(t, res.v, "nothing of the stalled reply is returned")
				assert.Equal(t, "read", ce.Op)
				assert.True(t, ce.Timeout(), "Timeout() reports the deadline: %v", res.err)
				assert.ErrorIs(t, res.err, os.ErrDeadlineExceeded)
				var ne net.Error
				require.ErrorAs(t, res.err, &ne)
				assert.True(t, ne.Timeout())

				// The late rest of the stalled reply goes to the old
				// connection; a client that reused it would read "stale".
				release()
				afterFault(t, srv, c)
				return
			}
		})
	}
}

func TestFaultStallWithErrorAsMiss(t *testing.T) {
	release := make(chan struct{})
	srv := startFakeServer(t, stallScript(Text, "", "END\r\n", release))
	defer close(release)
	c := newTestClient(t, srv.Addr, Text, Options{Timeout: 100 * time.Millisecond, ErrorAsMiss: true})
	res := guardedGet(t, c, bg, "k")
	assert.ErrorIs(t, res.err, ErrCacheMiss, "ErrorAsMiss reads a timeout as a miss")
	var ce *ConnError
	assert.ErrorAs(t, res.err, &ce, "the fault stays reachable")
	assert.ErrorIs(t, res.err, os.ErrDeadlineExceeded)
}

func TestFaultEOFMidReply(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) { testFaultEOFMidReply(t, proto) })
	}
}

func testFaultEOFMidReply(t *testing.T, proto Protocol) {
	for _, sp := range stallPointsFor(proto) {
		t.Run(sp.name, func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if req, ok := fc.NextAs(proto); ok {
						fc.Send(echoOpaque(req, sp.partial))
					}
					return // hang up
				}
				fc.ServeAs(proto, fresh)
			})
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
		if proto == Binary {
			partial = string(binResp(binSet, 0, binOpaque, 2, "", "", ""))[:5]
		}
		srv := startFakeServer(t, func(fc *fakeConn) {
			if fc.N == 0 {
				if _, ok := fc.NextAs(proto); ok {
					fc.Send(partial)
				}
				return
			}
			fc.ServeAs(proto, fresh)
		})
		c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
		err := guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) })
		var ce *ConnError
		require.ErrorAs(t, err, &ce)
		assert.ErrorIs(t, err, io.EOF)
		require.NoError(t, guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) }))
		assert.Equal(t, 2, srv.Accepted())
	})
}

// TestFaultContextCanceledMidRequest: on the pooled drivers a
// cancellation interrupts the request wherever it is and costs the
// connection. (Ultra keeps the connection: TestUltraCanceledMidRequest.)
func TestFaultContextCanceledMidRequest(t *testing.T) {
	for _, proto := range []Protocol{Text, Binary} {
		t.Run(proto.String(), func(t *testing.T) { testFaultContextCanceledMidRequest(t, proto) })
	}
}

func testFaultContextCanceledMidRequest(t *testing.T, proto Protocol) {
	for _, sp := range stallPointsFor(proto) {
		t.Run(sp.name, func(t *testing.T) {
			srv, release := startStalledServer(t, proto, sp)
			// The I/O timeout is far beyond the hang guard: only the
			// cancellation can end the request in time.
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute})
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			go func() {
				srv.WaitRequest()
				cancel()
			}()
			res := guardedGet(t, c, ctx, "k")
			require.Error(t, res.err)
			assert.Empty(t, res.v)
			assert.ErrorIs(t, res.err, context.Canceled)
			var ce *ConnError
			assert.ErrorAs(t, res.err, &ce)

			release()
			afterFault(t, srv, c)
		})
	}
}

func TestFaultContextAlreadyCanceled(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) { fc.Serve(fresh) })
	c := newTestClient(t, srv.Addr, Text, Options{})
	// Warm the pool so that an idle connection is at hand.
	res := guardedGet(t, c, bg, "k")
	require.NoError(t, res.err)
	before := srv.Received()

	ctx, cancel := context.WithCancel(bg)
	cancel()
	for i := 0; i < 20; i++ {
		res := guardedGet(t, c, ctx, "other")
		assert.ErrorIs(t, res.err, context.Canceled, "attempt %d", i)
		err := guarded(t, func() error { return c.Set(ctx, "k", []byte("v"), 0) })
		assert.ErrorIs(t, err, context.Canceled, "attempt %d", i)
	}
	assert.Equal(t, before, srv.Received(), "a cancelled request is never sent")
}

func TestFaultContextDeadlineShorterThanTimeout(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) {
		if _, ok := fc.Next(); ok {
			fc.Stall()
		}
	})
	c := newTestClient(t, srv.Addr, Text, Options{Timeout: time.Minute})
	// The socket deadline and the context's timer expire at the same
	// instant; whichever fires first, the error must say DeadlineExceeded.
	// Several rounds, because the order is up to the scheduler. A round
	// whose deadline passed before its request was sent (a busy machine)
	// checks only the error and is run again with twice the time.
	const rounds = 30
	timeout := 20 * time.Millisecond
	seen := map[int]bool{} // connections that got a request
	for i := 1; i <= rounds; {
		ctx, cancel := context.WithTimeout(bg, timeout)
		res := guardedGet(t, c, ctx, "k")
		cancel()
		require.ErrorIs(t, res.err, context.DeadlineExceeded, "round %d", i)
		var ce *ConnError
		if !errors.As(res.err, &ce) || ce.Op != "read" {
			require.Less(t, timeout, hangGuard/4, "round %d: the request was never sent in time: %v", i, res.err)
			t.Logf("round %d: the deadline passed before the read (%v); again with %v", i, res.err, 2*timeout)
			timeout *= 2
			continue
		}
		assert.True(t, ce.Timeout())
		req := srv.WaitRequest()
		assert.False(t, seen[req.Conn], "round %d: every timed-out connection is discarded", i)
		seen[req.Conn] = true
		i++
	}
}

func TestFaultErrorReplies(t *testing.T) {
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) { testFaultErrorReplies(t, proto) })
	}
}

func testFaultErrorReplies(t *testing.T, proto Protocol) {
	cases := []struct {
		name     string
		reply    string
		op       func(c *Client) error
		check    func(t *testing.T, err error)
		accepted int // connections after the follow-up request
	}{
		{"SERVER_ERROR keeps the connection", "SERVER_ERROR out of memory storing object\r\n",
			func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) },
			func(t *testing.T, err error) {
				var se *ServerError
				require.ErrorAs(t, err, &se)
				assert.Equal(t, "out of memory storing object", se.Message)
			}, 1},
		{"SERVER_ERROR to a get keeps the connection", "SERVER_ERROR temporary failure\r\n",
			func(c *Client) error { _, err := c.Get(bg, "k", nil); return err },
			func(t *testing.T, err error) {
				var se *ServerError
				require.ErrorAs(t, err, &se)
				assert.Equal(t, "temporary failure", se.Message)
			}, 1},
		{"CLIENT_ERROR discards the connection", "CLIENT_ERROR bad data chunk\r\n",
			func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) },
			func(t *testing.T, err error) {
				var ce *ClientError
				require.ErrorAs(t, err, &ce)
				assert.Equal(t, "bad data chunk", ce.Message)
			}, 2},
		{"CLIENT_ERROR non-numeric discards the connection", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
			func(c *Client) error { _, err := c.Incr(bg, "k", 1); return err },
			func(t *testing.T, err error) {
				assert.ErrorIs(t, err, ErrNonNumeric)
			}, 2},
		{"ERROR discards the connection", "ERROR\r\n",
			func(c *Client) error { return c.Touch(bg, "k", time.Second) },
			func(t *testing.T, err error) {
				var se *ServerError
				require.ErrorAs(t, err, &se)
				assert.Equal(t, "ERROR", se.Message)
			}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, replyFirstThenServe(tc.reply))
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			err := guarded(t, func() error { return tc.op(c) })
			require.Error(t, err)
			tc.check(t, err)
			var ce *ConnError
			assert.False(t, errors.As(err, &ce), "a server's answer is not a connection fault")
			assert.NotErrorIs(t, err, ErrProtocol)
			if tc.accepted == 2 {
				srv.WaitPeerClosed(0)
			}
			res := guardedGet(t, c, bg, "k")
			require.NoError(t, res.err)
			assert.Equal(t, "fresh", res.v)
			assert.Equal(t, tc.accepted, srv.Accepted())
		})
	}
}

func TestFaultMalformedKeyNeverSent(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) { fc.Serve(fresh) })
	c := newTestClient(t, srv.Addr, Text, Options{MaxValueLength: 100})
	long := strings.Repeat("k", 251)
	ops := map[string]func() error{
		"get with space":        func() error { _, err := c.Get(bg, "a b", nil); return err },
		"get empty":             func() error { _, err := c.Get(bg, "", nil); return err },
		"gets with newline":     func() error { _, _, err := c.Gets(bg, "a\r\nflush_all", nil); return err },
		"gat with NUL":          func() error { _, err := c.GetAndTouch(bg, "a\x00", time.Second, nil); return err },
		"get multi one bad key": func() error { return c.GetMulti(bg, []string{"k", "bad key"}, func(int, []byte) {}) },
		"set too long":          func() error { return c.Set(bg, long, []byte("v"), 0) },
		"add with tab":          func() error { return c.Add(bg, "a\tb", []byte("v"), 0) },
		"replace with DEL":      func() error { return c.Replace(bg, "a\x7f", []byte("v"), 0) },
		"append empty":          func() error { return c.Append(bg, "", []byte("v")) },
		"prepend with space":    func() error { return c.Prepend(bg, " ", []byte("v")) },
		"cas with space":        func() error { return c.CompareAndSwap(bg, "a b", []byte("v"), 1, 0) },
		"cached cas with space": func() error { return c.CAS(bg, "a b", []byte("v"), 0) },
		"incr with space":       func() error { _, err := c.Incr(bg, "a b", 1); return err },
		"decr with CR":          func() error { _, err := c.Decr(bg, "a\r", 1); return err },
		"delete with LF":        func() error { return c.Delete(bg, "a\nb") },
		"touch too long":        func() error { return c.Touch(bg, long, time.Second) },
		"set int bad key":       func() error { return c.SetInt(bg, "a b", 1, 0) },
		"set object bad key":    func() error { return c.SetObject(bg, "a b", 1, 0) },
	}
	for name, op := range ops {
		err := guarded(t, op)
		assert.ErrorIs(t, err, ErrMalformedKey, name)
	}
	err := guarded(t, func() error { return c.Set(bg, "k", make([]byte, 101), 0) })
	assert.ErrorIs(t, err, ErrValueTooLarge, "an oversized value is refused before sending")

	assert.Empty(t, srv.Received(), "nothing reached the wire")
	assert.Zero(t, srv.Accepted(), "not even a connection")

	// The recording works: a valid request is seen as sent.
	res := guardedGet(t, c, bg, "k")
	require.NoError(t, res.err)
	assert.Equal(t, "fresh", res.v)
	assert.Equal(t, "get k\r\n", srv.Received())
}

func TestFaultMaxConns(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) {
		for {
			if _, ok := fc.Next(); !ok {
				return
			}
			// Stall: never answer.
		}
	})
	c := newTestClient(t, srv.Addr, Text, Options{MaxConns: 2, Timeout: time.Minute})

	holdCtx, release := context.WithCancel(bg)
	defer release()
	var wg sync.WaitGroup
	held := make([]error, 2)
	for i := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, held[i] = c.Get(holdCtx, "k"+strconv.Itoa(i), nil)
		}()
	}
	// Both connections are busy once the fake has both requests.
	srv.WaitRequest()
	srv.WaitRequest()
	require.Equal(t, 2, srv.Accepted())

	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	res := guardedGet(t, c, ctx, "third")
	require.Error(t, res.err)
	assert.ErrorIs(t, res.err, context.DeadlineExceeded, "the third request waits, bounded by its context")
	var ce *ConnError
	assert.ErrorAs(t, res.err, &ce)
	assert.NotContains(t, srv.Received(), "third", "the third request was never sent")
	assert.Equal(t, 2, srv.Accepted())
	assert.LessOrEqual(t, srv.MaxOpen(), 2)

	release()
	guarded(t, func() struct{} { wg.Wait(); return struct{}{} })
	for i, err := range held {
		assert.ErrorIs(t, err, context.Canceled, "held request %d", i)
	}
	srv.WaitPeerClosed(0)
	srv.WaitPeerClosed(1)
	assert.Equal(t, 2, srv.Accepted())
	assert.LessOrEqual(t, srv.MaxOpen(), 2)
}

// dialErrors runs a get, a set and a Connect on a client that cannot
// dial, requires each to fail with a *ConnError of the dial naming addr,
// and returns the errors by operation for the caller's checks of the cause.
func dialErrors(t *testing.T, c *Client, addr string) map[string]error {
	t.Helper()
	errs := map[string]error{}
	for name, op := range map[string]func() error{
		"get":     func() error { _, err := c.Get(bg, "k", nil); return err },
		"set":     func() error { return c.Set(bg, "k", []byte("v"), 0) },
		"connect": func() error { return c.Connect(bg) },
	} {
		err := guarded(t, op)
		var ce *ConnError
		require.ErrorAs(t, err, &ce, name)
		assert.Equal(t, "dial", ce.Op, name)
		assert.Equal(t, addr, ce.Addr, name)
		errs[name] = err
	}
	return errs
}

func TestFaultDialRefused(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t)) // closed again: nothing listens
	c := newTestClient(t, addr, Text, Options{ConnectTimeout: 2 * time.Second})
	for name, err := range dialErrors(t, c, addr) {
		assert.ErrorIs(t, err, syscall.ECONNREFUSED, name)
	}
}

// ConnectTimeout bounds every dial, on every driver; on the pooled drivers
// a caller's shorter deadline bounds the dial itself. (On Ultra the dial
// serves every queued request and outlives a caller that leaves:
// TestUltraDialOutlivesLeavingCaller; the caller's own wait is bounded on
// every driver: TestFaultDialBoundedByCallerContext.)
func TestFaultDialTimeout(t *testing.T) {
	const connectTimeout = 100 * time.Millisecond
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			var mu sync.Mutex
			var ahead []time.Duration // how far ahead each dial's deadline was
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				dl, ok := ctx.Deadline()
				mu.Lock()
				if ok {
					ahead = append(ahead, time.Until(dl))
				} else {
					ahead = append(ahead, -1)
				}
				mu.Unlock()
				<-ctx.Done()
				return nil, ctx.Err()
			}
			dialsAhead := func() []time.Duration {
				mu.Lock()
				defer mu.Unlock()
				return append([]time.Duration(nil), ahead...)
			}
			c := newTestClient(t, "127.0.0.1:1", proto, Options{ConnectTimeout: connectTimeout, Timeout: time.Minute, DialContext: dial})
			for name, err := range dialErrors(t, c, "127.0.0.1:1") {
				assert.ErrorIs(t, err, context.DeadlineExceeded, name)
				var ce *ConnError
				require.ErrorAs(t, err, &ce, name)
				assert.True(t, ce.Timeout(), name)
			}
			// A call right after a failed dial fails at once with that
			// dial's error (dial backoff), so the three calls made one
			// dial at least and one each at most.
			dials := dialsAhead()
			require.NotEmpty(t, dials)
			require.LessOrEqual(t, len(dials), 3)
			for i, d := range dials {
				assert.Positive(t, d, "dial %d had no deadline", i)
				assert.LessOrEqual(t, d, connectTimeout, "dial %d is bounded by ConnectTimeout", i)
			}
			if c.pipelined {
				return
			}

			c2 := newTestClient(t, "127.0.0.1:1", proto, Options{ConnectTimeout: time.Minute, Timeout: time.Minute, DialContext: dial})
			ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
			defer cancel()
			res := guardedGet(t, c2, ctx, "k")
			var ce *ConnError
			require.ErrorAs(t, res.err, &ce)
			assert.Equal(t, "dial", ce.Op)
			assert.ErrorIs(t, res.err, context.DeadlineExceeded)
			before := len(dials)
			dials = dialsAhead()
			require.Len(t, dials, before+1)
			assert.Positive(t, dials[before])
			assert.LessOrEqual(t, dials[before], 50*time.Millisecond, "the dial is bounded by the caller's deadline")
		})
	}
}

func TestFaultExtraBytesAfterReply(t *testing.T) {
	cases := []struct {
		name  string
		reply string
		op    func(c *Client) error
	}{
		{"STORED twice", "STORED\r\nSTORED\r\n", func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }},
		{"END then a value", "END\r\nVALUE k 0 5\r\nstale\r\nEND\r\n", func(c *Client) error { _, err := c.Get(bg, "k", nil); return err }},
		{"a value then garbage", "VALUE k 0 5\r\nstale\r\nEND\r\nX", func(c *Client) error { _, err := c.Get(bg, "k", nil); return err }},
		{"DELETED and a newline", "DELETED\r\n\r\n", func(c *Client) error { return c.Delete(bg, "k") }},
		{"SERVER_ERROR twice", "SERVER_ERROR a\r\nSERVER_ERROR b\r\n", func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.Next(); !ok {
						return
					}
					fc.Send(tc.reply) // one write: the extra bytes arrive with the reply
				}
				fc.Serve(fresh)
			})
			c := newTestClient(t, srv.Addr, Text, Options{Timeout: 2 * time.Second})
			err := guarded(t, func() error { return tc.op(c) })
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrProtocol)
			afterFault(t, srv, c)
		})
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
		name   string
		retry  bool
		op     func(c *Client) error
		expect string // the reply's value, for the retried reads
	}{
		{"get", true, func(c *Client) error { return wantGet(c.Get(bg, "k", nil)) }, ""},
		{"gets", true, func(c *Client) error { v, _, err := c.Gets(bg, "k", nil); return wantGet(v, err) }, ""},
		{"gat", true, func(c *Client) error { return wantGet(c.GetAndTouch(bg, "k", time.Hour, nil)) }, ""},
		{"get multi", true, func(c *Client) error {
			m, err := c.GetMultiMap(bg, []string{"k", "other"})
			if err == nil && (string(m["k"]) != "fresh" || string(m["other"]) != "other-value") {
				err = fmt.Errorf("values %q", m)
			}
			return err
		}, ""},
		{"version", true, func(c *Client) error { _, err := c.Version(bg); return err }, ""},
		{"stats", true, func(c *Client) error { _, err := c.Stats(bg); return err }, ""},
		{"set", false, func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }, ""},
		{"add", false, func(c *Client) error { return c.Add(bg, "k", []byte("v"), 0) }, ""},
		{"replace", false, func(c *Client) error { return c.Replace(bg, "k", []byte("v"), 0) }, ""},
		{"append", false, func(c *Client) error { return c.Append(bg, "k", []byte("v")) }, ""},
		{"prepend", false, func(c *Client) error { return c.Prepend(bg, "k", []byte("v")) }, ""},
		{"cas", false, func(c *Client) error { return c.CompareAndSwap(bg, "k", []byte("v"), 1, 0) }, ""},
		{"incr", false, func(c *Client) error { _, err := c.Incr(bg, "k", 1); return err }, ""},
		{"decr", false, func(c *Client) error { _, err := c.Decr(bg, "k", 1); return err }, ""},
		{"delete", false, func(c *Client) error { return c.Delete(bg, "k") }, ""},
		{"touch", false, func(c *Client) error { return c.Touch(bg, "k", time.Hour) }, ""},
		{"flush_all", false, func(c *Client) error { return c.FlushAll(bg) }, ""},
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
