package ermc

import (
	"bytes"
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Review tests for e174848 (Ultra: the lane's dial on its own goroutine,
// and the retry of a read that failed on a connection gone stale while
// idle). Each pins one suspected fault.

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
	ln := c.drv.(*ultraDriver).lanes[0]
	ln.mu.Lock()
	defer ln.mu.Unlock()
	return ln.flight.len(), ln.nc != nil
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
// (after publish, before Write returns). dialFor then resets
// ln.writeDeadline under ln.mu, while the writer touches it without the
// lock (writeLoop, umframe.go:239-241): a data race, which the race
// detector reports. Run with -race.
func TestReviewConnectDialRacesWriterDeadline(t *testing.T) {
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
		res := awaitGet(t, ch)
		if res.err != nil {
			assert.ErrorIs(t, res.err, ErrCacheMiss)
		}
	}
}

// Close while a lane is dialing. close() takes every queued request and
// completes it with ErrClosed, so a caller queued behind the writer
// returns at once. The writer's own caller has had its request completed
// too, but it is still in ensureConn waiting for the dial (its context
// never ends), so it returns only when the dial does: with
// ConnectTimeout a minute, a minute after Close. The dial goroutine
// (dialFor) likewise outlives Close.
func TestReviewCloseDuringDialReleasesWriter(t *testing.T) {
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
	res := awaitGet(t, second)
	require.ErrorIs(t, res.err, ErrClosed, "the queued caller")
	res = awaitGet(t, first)
	require.ErrorIs(t, res.err, ErrClosed, "the writer's caller")
}

// The retry of a stale idle read does not look at whether the client was
// closed: ultraDriver.do checks u.closed once, before the first attempt.
// Here Close runs just as the reader fails the stale connection (from
// that connection's Close, so the order is fixed): the retry then starts
// a dial after Close, opening (and, with a Username, authenticating) a
// connection to the server only for dialFor to close it.
func TestReviewRetryAfterCloseDoesNotDial(t *testing.T) {
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
	t.Logf("Get on the stale connection, Close meanwhile: %v", res.err)
	require.True(t, closed.Load(), "Close ran as the stale connection was failed")
	assert.EqualValues(t, 0, dialsAfterClose.Load(), "a dial after Close (dials in all: %d)", dials.Load())
}
