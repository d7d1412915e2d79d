package ermc

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A server that stops answering, or stops reading: the request's Timeout,
// its context's deadline or cancellation ends it (also while it waits for
// a pool connection), the connection is discarded (on Ultra a cancelled
// request leaves a sink behind), and nothing of a late reply is read.

func TestFaultStallTimesOut(t *testing.T) {
	forEachProto(t, wireDrivers, testFaultStallTimesOut)
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
	srv, _ := startStalledServer(t, Text, stallPoint{"no reply yet", "", "END\r\n"})
	c := newTestClient(t, srv.Addr, Text, Options{Timeout: 100 * time.Millisecond, ErrorAsMiss: true})
	res := guardedGet(t, c, bg, "k")
	assert.ErrorIs(t, res.err, ErrCacheMiss, "ErrorAsMiss reads a timeout as a miss")
	var ce *ConnError
	assert.ErrorAs(t, res.err, &ce, "the fault stays reachable")
	assert.ErrorIs(t, res.err, os.ErrDeadlineExceeded)
}

// TestFaultContextCanceledMidRequest: on the pooled drivers a
// cancellation interrupts the request wherever it is and costs the
// connection. (Ultra keeps the connection: TestUltraCanceledMidRequest.)
func TestFaultContextCanceledMidRequest(t *testing.T) {
	forEachProto(t, []Protocol{Text, Binary}, testFaultContextCanceledMidRequest)
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
				if srv.awaitRequest() { // else the Get's own hang guard fails
					cancel()
				}
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
						if !srv.awaitRequest() {
							return // the Get's own hang guard fails
						}
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
	srv := startSilentServer(t) // reads every request: a reused connection shows

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

func TestFaultMaxConns(t *testing.T) {
	srv := startSilentServer(t)
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

	release()
	guarded(t, func() struct{} { wg.Wait(); return struct{}{} })
	for i, err := range held {
		assert.ErrorIs(t, err, context.Canceled, "held request %d", i)
	}
	srv.WaitPeerClosed(0)
	srv.WaitPeerClosed(1)
	assert.Equal(t, 2, srv.Accepted())
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
					fc.Started() // the request has started, and nothing more is read
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
