package ermc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An Ultra lane's connection life cycle where it meets the other roles: a
// dial while the writer still writes on the old connection, Close during
// a dial or between a fault and a retry, a batch encoded for a
// connection that failed before it was written, and a connection the
// lane discarded (a reply that ends it, a timeout) never used again.

// gateConn holds a Write whose bytes contain gateOn until gate is closed.
// It signals nothing to the test on purpose: a channel send from the
// writer would order the writer's memory accesses before the test's, and
// hide from the race detector what the test looks for.
type gateConn struct {
	net.Conn
	gateOn  []byte
	gate    <-chan struct{}
	onClose func()
}

func (g *gateConn) Write(b []byte) (int, error) {
	if g.gateOn != nil && bytes.Contains(b, g.gateOn) {
		<-g.gate
	}
	return g.Conn.Write(b)
}

func (g *gateConn) Close() error {
	if g.onClose != nil {
		g.onClose()
	}
	return g.Conn.Close()
}

// laneState reads, under the lane's lock, how many requests are in flight
// and whether the lane has a connection.
func laneState(c *Client) (inFlight int, connected bool) {
	ln := c.drv.(*pipeDriver).lanes[0]
	ln.mu.Lock()
	defer ln.mu.Unlock()
	return ln.flight.len(), ln.cn != nil
}

// waitLane polls laneState until cond holds, within the hang guard.
func waitLane(t *testing.T, c *Client, what string, cond func(inFlight int, connected bool) bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond(laneState(c)) {
		require.True(t, time.Now().Before(deadline), "lane never reached: %s", what)
		time.Sleep(time.Millisecond)
	}
}

// Connect dials a lane whose connection the reader has just failed while
// the writer is still in the middle of its write on that old connection
// (after publish, before Write returns). The dial must not touch the
// writer's state (its write deadline cache): under -race a data race
// fails the test.
func TestUltraConnectDuringWriteNoRace(t *testing.T) {
	if !raceEnabled {
		t.Skip("shows a data race: run with -race")
	}
	hangup := make(chan struct{})
	srv := startFakeServer(t, func(fc *fakeConn) {
		if fc.N > 0 {
			fc.Serve(fresh)
			return
		}
		req, ok := fc.Next() // the warm-up get
		if !ok {
			return
		}
		fc.Send(fakeReply(req, fresh))
		if _, ok := fc.Next(); !ok { // "get p": never answered
			return
		}
		fc.Wait(hangup) // then the server hangs up
	})
	gate := make(chan struct{})
	var dials atomic.Int32
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil || dials.Add(1) > 1 {
			return nc, err
		}
		return &gateConn{Conn: nc, gateOn: []byte("get w\r\n"), gate: gate}, nil
	}
	c := newFaultClient(t, srv.Addr, Ultra, Options{Timeout: 2 * time.Second, DialContext: dial})
	defer func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	}()

	require.NoError(t, guardedGet(t, c, bg, "k").err)
	// p goes alone onto the idle connection: its caller reads its reply.
	p := goGet(c, bg, "p")
	waitLane(t, c, "p in flight", func(n int, _ bool) bool { return n == 1 })
	// w is written behind it by w's caller, whose Write is held.
	w := goGet(c, bg, "w")
	waitLane(t, c, "w in flight", func(n int, _ bool) bool { return n == 2 })

	close(hangup) // p's reader sees EOF and fails the connection
	waitLane(t, c, "the connection failed", func(_ int, up bool) bool { return !up })
	require.NoError(t, guarded(t, func() error { return c.Connect(bg) }))
	close(gate)

	for _, ch := range []<-chan getResult{p, w} {
		assert.ErrorIs(t, await(t, ch).err, ErrCacheMiss, "absent keys, retried on the new connection")
	}
}

// Close while a lane is dialing: every caller returns ErrClosed at once,
// the writer's own caller (waiting for the dial, its context never ends)
// included, not when the dial ends (ConnectTimeout is a minute here).
func TestUltraCloseDuringDialReleasesWriter(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) { fc.Serve(fresh) })
	release := make(chan struct{})
	defer close(release)
	dial, started := heldDial(srv.Addr, release, nil)
	c := newFaultClient(t, srv.Addr, Ultra, Options{ConnectTimeout: time.Minute, DialContext: dial})

	first := goGet(c, bg, "k") // the writer, waiting for the dial
	<-started
	second := goGet(c, bg, "k") // queued behind it
	waitPending(t, c, 2)

	require.NoError(t, c.Close())
	res := await(t, second)
	require.ErrorIs(t, res.err, ErrClosed, "the queued caller")
	res = await(t, first)
	require.ErrorIs(t, res.err, ErrClosed, "the writer's caller")
}

// Close runs just as the reader fails a stale idle connection (from that
// connection's Close, so the order is fixed): the read's retry must not
// dial after Close (which would open, and with a Username authenticate, a
// connection only to close it); it returns ErrClosed.
func TestUltraRetryAfterCloseDoesNotDial(t *testing.T) {
	srv := startFakeServer(t, serveOneThenHangUp(Ultra))
	var c *Client
	var arm atomic.Bool
	var dials, dialsAfterClose atomic.Int32
	var closed atomic.Bool
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		if closed.Load() {
			dialsAfterClose.Add(1)
		}
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &gateConn{Conn: nc, onClose: func() {
			if arm.CompareAndSwap(true, false) {
				closed.Store(true)
				_ = c.Close()
			}
		}}, nil
	}
	c = newFaultClient(t, srv.Addr, Ultra, Options{Timeout: 2 * time.Second, DialContext: dial})
	require.NoError(t, guardedGet(t, c, bg, "k").err)
	srv.WaitEnded(0) // the idle connection is now closed by the server

	arm.Store(true)
	res := guardedGet(t, c, bg, "k")
	require.True(t, closed.Load(), "Close ran as the stale connection was failed")
	assert.ErrorIs(t, res.err, ErrClosed, "the read's retry after Close")
	assert.EqualValues(t, 0, dialsAfterClose.Load(), "a dial after Close (dials in all: %d)", dials.Load())
}

// staleReadConn is the first connection of TestUltraEncodedBatchResentOnFreshConn:
// once armed, a Read waits for gate, then until the lane's writer is
// encoding the next batch (taken off the queue, not yet published), and
// reports EOF, as a connection the server closed while it sat idle does.
type staleReadConn struct {
	gateConn
	armed    atomic.Bool
	encoding <-chan struct{}
}

func (s *staleReadConn) Read(b []byte) (int, error) {
	if !s.armed.Load() {
		return s.gateConn.Read(b)
	}
	<-s.gate
	select {
	case <-s.encoding:
	case <-time.After(hangGuard): // the test fails on its own hang guard
	}
	return 0, io.EOF
}

// A batch the writer took off the queue (takeBatch) just before the
// reader failed the connection (gone stale while idle) was never
// written: it goes out on the next connection, as the reads written onto
// the stale one are retried there. The window (the writer's encode) is
// held open by the test: the codec's encoder, wrapped, waits in the set's
// encoding until the reader has failed the connection.
func TestUltraEncodedBatchResentOnFreshConn(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) {
		if fc.N > 0 {
			fc.Serve(fresh)
			return
		}
		req, ok := fc.Next()
		if !ok {
			return
		}
		fc.Send(fakeReply(req, fresh))
		for {
			if _, ok := fc.Next(); !ok { // read, never answered
				return
			}
		}
	})
	gate := make(chan struct{})
	encoding := make(chan struct{})
	var first *staleReadConn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil || first != nil {
			return nc, err
		}
		first = &staleReadConn{gateConn: gateConn{Conn: nc, gateOn: []byte("get b\r\n"), gate: gate}, encoding: encoding}
		return first, nil
	}
	c := newFaultClient(t, srv.Addr, Ultra, Options{Timeout: 2 * time.Second, DialContext: dial})

	// Set before the first request, so that the lane's goroutines see it.
	u := c.drv.(*pipeDriver)
	encode := u.d.codec.appendRequest
	var holdSet atomic.Bool
	var failedWhileEncoding atomic.Bool
	u.d.codec.appendRequest = func(dst []byte, r *request) []byte {
		if r.key == "s" && holdSet.CompareAndSwap(true, false) {
			close(encoding)
			deadline := time.Now().Add(hangGuard)
			for time.Now().Before(deadline) {
				if _, connected := laneState(c); !connected {
					failedWhileEncoding.Store(true)
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		return encode(dst, r)
	}

	require.NoError(t, guardedGet(t, c, bg, "k").err)
	first.armed.Store(true)
	holdSet.Store(true)

	a := goGet(c, bg, "a") // alone on the idle connection: its caller reads
	waitLane(t, c, "a in flight", func(n int, _ bool) bool { return n == 1 })
	b := goGet(c, bg, "b") // written by b's caller, whose Write is held
	waitLane(t, c, "b in flight", func(n int, _ bool) bool { return n == 2 })
	set := make(chan error, 1)
	go func() { set <- c.Set(bg, "s", []byte("queued"), 0) }()
	waitPending(t, c, 1)
	g := goGet(c, bg, "g")
	waitPending(t, c, 2)

	close(gate)
	for _, ch := range []<-chan getResult{a, b} {
		res := await(t, ch)
		require.ErrorIs(t, res.err, ErrCacheMiss, "a read written onto the stale connection is retried")
	}
	res := await(t, g)
	serr := guarded(t, func() error { return <-set })
	require.True(t, failedWhileEncoding.Load(), "the reader failed the connection while the writer held the encoded batch")
	assert.NoError(t, serr, "set s, encoded with g and held, goes out on the fresh connection")
	assert.ErrorIs(t, res.err, ErrCacheMiss, "get g, never written, on the stale connection's failure")
}

// TestCloseOutcomesAreHonest: Close while Sets are in flight. A Set that
// returns ErrClosed was not sent, so its key must be absent; a Set that
// returns nil was stored; anything else is a *ConnError (outcome unknown).
// Every key is written once, so the server's state tells what happened.
func TestCloseOutcomesAreHonest(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for round := 0; round < 5; round++ {
				checkCloseOutcomes(t, s.Addr, proto, round)
			}
		})
	}
}

func checkCloseOutcomes(t *testing.T, addr string, proto Protocol, round int) {
	c, err := New(addr, Options{Protocol: proto})
	require.NoError(t, err)
	const workers, perWorker = 32, 200
	type outcome struct {
		key string
		err error
	}
	results := make(chan outcome, workers*perWorker)
	var started atomic.Int32
	closeNow := make(chan struct{})
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func(w int) {
			defer func() { done <- struct{}{} }()
			for i := 0; i < perWorker; i++ {
				key := fmt.Sprintf("close:%v:%d:%d:%d", proto, round, w, i)
				if started.Add(1) == workers*20 {
					close(closeNow)
				}
				err := c.Set(bg, key, []byte("v"), 0)
				results <- outcome{key, err}
				if errors.Is(err, ErrClosed) {
					return
				}
			}
		}(w)
	}
	<-closeNow
	require.NoError(t, c.Close())
	for w := 0; w < workers; w++ {
		<-done
	}
	close(results)
	check := newTestClient(t, addr, Text, Options{})
	var closed, stored, unknown int
	for o := range results {
		_, gerr := check.Get(bg, o.key, nil)
		var ce *ConnError
		switch {
		case o.err == nil:
			stored++
			require.NoError(t, gerr, "%s: Set returned nil but the key is absent", o.key)
		case errors.Is(o.err, ErrClosed):
			closed++
			require.ErrorIs(t, gerr, ErrCacheMiss, "%s: Set returned ErrClosed but the server stored it", o.key)
		case errors.As(o.err, &ce):
			unknown++
		default:
			require.Fail(t, "Set: want nil, ErrClosed or a *ConnError", "%s: %v", o.key, o.err)
		}
	}
	require.NotZero(t, stored, "no Set completed before Close")
	t.Logf("round %d: %d stored, %d ErrClosed (absent), %d outcome unknown", round, stored, closed, unknown)
}

// A reply that ends its connection (CLIENT_ERROR, as memcached -Y sends
// for an unauthenticated request) must not leave the connection in
// service while its caller already has the outcome: the caller's next
// request goes over a fresh connection, every time.
func TestUltraDiscardedConnNotReused(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) {
		for {
			req, ok := fc.Next()
			if !ok {
				return
			}
			if req.Line == "get refused" {
				fc.Send("CLIENT_ERROR unauthenticated\r\n")
				continue
			}
			fc.Send(fakeReply(req, fresh))
		}
	})
	c := newFaultClient(t, srv.Addr, Ultra, Options{})
	for i := 0; i < 200; i++ {
		_, err := c.Get(bg, "refused", nil)
		var ce *ClientError
		require.True(t, errors.As(err, &ce), "round %d: %v", i, err)
		require.ErrorIs(t, err, ErrAuth)
		require.NoError(t, c.Set(bg, "k", []byte("v"), 0), "round %d: the request after a discarded connection", i)
	}
	require.Equal(t, 201, srv.Accepted(), "one connection per refusal, plus the last")
}

// A request that times out reports the timeout, not the "use of closed
// network connection" that the writer may see when the reader tears the
// connection down under it. (Deadlines are rounded up to deadlineGrain,
// so a server that never answers makes the timeout certain.)
func TestUltraTimeoutReportedAsTimeout(t *testing.T) {
	srv := startSilentServer(t)
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for i := 0; i < 100; i++ {
				c, err := New(srv.Addr, Options{Protocol: proto, Timeout: time.Nanosecond})
				require.NoError(t, err)
				_, err = c.Get(bg, "k", nil)
				c.Close()
				var ce *ConnError
				require.True(t, errors.As(err, &ce), "round %d: %v is not a *ConnError", i, err)
				require.True(t, ce.Timeout(), "round %d: %v is not a timeout", i, err)
			}
		})
	}
}
