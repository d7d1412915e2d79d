package ermc

import (
	"context"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The pooled drivers' pool against a real memcached: which connection a
// request gets, how many are opened, who waits and who is served. No
// timings: every wait is for an event, bounded by hangGuard.

// trackedConns dials real connections and records, per connection, the
// requests written on it and whether it is open.
type trackedConns struct {
	mu     sync.Mutex
	conns  []*trackedConn
	open   int
	peak   int
	writes map[*trackedConn]int
}

type trackedConn struct {
	net.Conn
	t      *trackedConns
	closed atomic.Bool
}

func (tc *trackedConn) Write(b []byte) (int, error) {
	tc.t.mu.Lock()
	tc.t.writes[tc]++
	tc.t.mu.Unlock()
	return tc.Conn.Write(b)
}

func (tc *trackedConn) Close() error {
	if !tc.closed.Swap(true) {
		tc.t.mu.Lock()
		tc.t.open--
		tc.t.mu.Unlock()
	}
	return tc.Conn.Close()
}

func (t *trackedConns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: nc, t: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.conns = append(t.conns, tc)
	t.open++
	t.peak = max(t.peak, t.open)
	return tc, nil
}

// counts returns the dials so far, the connections open now and at most.
func (t *trackedConns) counts() (dials, open, peak int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns), t.open, t.peak
}

func (t *trackedConns) writesOn(i int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.writes[t.conns[i]]
}

// testPool is a pool of driver proto to a fresh memcached, its
// connections tracked.
func testPool(t *testing.T, proto Protocol, maxConns int) (*connPool, *trackedConns) {
	t.Helper()
	srv := startMemcached(t)
	tr := &trackedConns{writes: map[*trackedConn]int{}}
	opts := &Options{Protocol: proto, MaxConns: maxConns, DialContext: tr.dial}
	opts.applyDefaults()
	cd := textCodec
	if proto == Binary {
		cd = binaryCodec
	}
	p := newConnPool("tcp", srv.Addr, opts, cd, new(poolCounters))
	t.Cleanup(func() { p.close() })
	return p, tr
}

func poolGet(t *testing.T, p *connPool, key string) error {
	t.Helper()
	r := getRequest()
	defer putRequest(r)
	r.op, r.key = opGet, key
	return guarded(t, func() error { return p.do(bg, r) })
}

// mustHold takes n connections from the pool, dialling each.
func mustHold(t *testing.T, p *connPool, n int) []*conn {
	t.Helper()
	var held []*conn
	for i := 0; i < n; i++ {
		cn, reused, err := p.get(bg)
		require.NoError(t, err)
		require.False(t, reused, "connection %d: the pool had nothing idle, it dials", i)
		held = append(held, cn)
	}
	return held
}

// waitWaiters blocks until n callers wait in the pool.
func waitWaiters(t *testing.T, p *connPool, n int) {
	t.Helper()
	guarded(t, func() struct{} {
		for {
			p.mu.Lock()
			k := len(p.waiters)
			p.mu.Unlock()
			if k >= n {
				return struct{}{}
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// TestPoolReusesLastConnection: an idle connection is taken last in,
// first out, so sequential requests after a burst run on one connection
// rather than cycling through every connection the burst opened.
func TestPoolReusesLastConnection(t *testing.T) {
	for _, proto := range []Protocol{Text, Binary} {
		t.Run(proto.String(), func(t *testing.T) {
			p, tr := testPool(t, proto, 4)
			held := mustHold(t, p, 4) // a burst: four connections open
			for _, cn := range held {
				p.put(cn, true)
			}
			cn, reused, err := p.get(bg)
			require.NoError(t, err)
			assert.True(t, reused)
			assert.Same(t, held[3], cn, "the connection put back last is taken first")
			cn2, _, err := p.get(bg)
			require.NoError(t, err)
			assert.Same(t, held[2], cn2, "then the one before it")
			p.put(cn2, true)
			p.put(cn, true)

			for i := 0; i < 50; i++ {
				require.NoError(t, poolGet(t, p, "k"+strconv.Itoa(i%3)))
			}
			assert.Equal(t, 50, tr.writesOn(3), "every sequential request ran on the connection used last")
			for i := 0; i < 3; i++ {
				assert.Zero(t, tr.writesOn(i), "connection %d stayed idle", i)
			}
			dials, open, _ := tr.counts()
			assert.Equal(t, 4, dials)
			assert.Equal(t, 4, open, "idle connections stay open")
		})
	}
}

// TestPoolMaxConns: many goroutines on a few connections: never more than
// MaxConns open, none dialled again (nothing failed), every request served.
func TestPoolMaxConns(t *testing.T) {
	for _, proto := range []Protocol{Text, Binary} {
		t.Run(proto.String(), func(t *testing.T) {
			const maxConns, goroutines, each = 3, 24, 40
			p, tr := testPool(t, proto, maxConns)
			var wg sync.WaitGroup
			errs := make([]error, goroutines)
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for i := 0; i < each && errs[g] == nil; i++ {
						r := getRequest()
						r.op, r.key = opGet, "k"+strconv.Itoa(g)
						errs[g] = p.do(bg, r)
						putRequest(r)
					}
				}(g)
			}
			guarded(t, func() struct{} { wg.Wait(); return struct{}{} })
			for g, err := range errs {
				assert.NoError(t, err, "goroutine %d", g)
			}
			dials, open, peak := tr.counts()
			assert.LessOrEqual(t, peak, maxConns, "connections open at once")
			assert.LessOrEqual(t, dials, maxConns, "dials: none failed, none redialled")
			assert.Equal(t, dials, open)
			p.mu.Lock()
			assert.Equal(t, open, p.open)
			assert.Len(t, p.idle, open, "all idle again")
			assert.Empty(t, p.waiters)
			p.mu.Unlock()
		})
	}
}

// TestPoolWaitersServedInOrder: with every connection busy, callers wait;
// each connection put back goes to the caller that has waited longest.
func TestPoolWaitersServedInOrder(t *testing.T) {
	p, tr := testPool(t, Text, 1)
	held := mustHold(t, p, 1)[0]

	const waiters = 5
	order := make(chan int, waiters)
	var wg sync.WaitGroup
	for i := 0; i < waiters; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cn, reused, err := p.get(bg)
			if !assert.NoError(t, err, "waiter %d", i) {
				return
			}
			assert.True(t, reused, "waiter %d gets the connection put back", i)
			order <- i
			p.put(cn, true)
		}(i)
		waitWaiters(t, p, i+1) // queued before the next one starts
	}
	p.put(held, true)
	guarded(t, func() struct{} { wg.Wait(); return struct{}{} })
	close(order)
	want := 0
	for i := range order {
		assert.Equal(t, want, i, "served in the order they came")
		want++
	}
	assert.Equal(t, waiters, want, "every waiter served")
	dials, _, _ := tr.counts()
	assert.Equal(t, 1, dials)
}

// TestPoolWaiterDialsForDiscarded: a broken connection closed while a
// caller waits frees its place: the waiter dials a new one.
func TestPoolWaiterDialsForDiscarded(t *testing.T) {
	p, tr := testPool(t, Text, 1)
	held := mustHold(t, p, 1)[0]
	got := make(chan error, 1)
	go func() {
		cn, reused, err := p.get(bg)
		if err == nil {
			assert.False(t, reused, "a new connection")
			p.put(cn, true)
		}
		got <- err
	}()
	waitWaiters(t, p, 1)
	p.put(held, false)
	require.NoError(t, guarded(t, func() error { return <-got }))
	dials, open, peak := tr.counts()
	assert.Equal(t, 2, dials)
	assert.Equal(t, 1, open)
	assert.Equal(t, 1, peak, "the broken one was closed before the new one was dialled")
	require.NoError(t, poolGet(t, p, "k"))
}

// TestPoolWaitCancelled: a waiter whose context ends leaves the queue
// without a connection; the connection put back later is not lost.
func TestPoolWaitCancelled(t *testing.T) {
	p, tr := testPool(t, Text, 1)
	held := mustHold(t, p, 1)[0]
	ctx, cancel := context.WithCancel(bg)
	got := make(chan error, 1)
	go func() {
		_, _, err := p.get(ctx)
		got <- err
	}()
	waitWaiters(t, p, 1)
	cancel()
	err := guarded(t, func() error { return <-got })
	assert.ErrorIs(t, err, context.Canceled)
	var ce *ConnError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "wait for connection", ce.Op)

	p.put(held, true)
	cn, reused, err := p.get(bg)
	require.NoError(t, err)
	assert.True(t, reused)
	assert.Same(t, held, cn, "the connection went back to the pool, not to the cancelled waiter")
	p.put(cn, true)
	dials, _, _ := tr.counts()
	assert.Equal(t, 1, dials)
}

// TestPoolCancelRacesGrant: contexts ending while connections are handed
// over: whichever wins, no connection and no place is lost.
func TestPoolCancelRacesGrant(t *testing.T) {
	p, tr := testPool(t, Text, 2)
	held := mustHold(t, p, 2)
	for i := 0; i < 200; i++ {
		ctx, cancel := context.WithCancel(bg)
		got := make(chan *conn, 1)
		go func() {
			cn, _, err := p.get(ctx)
			if err != nil {
				cn = nil
			}
			got <- cn
		}()
		waitWaiters(t, p, 1)
		go cancel()
		var give *conn
		give, held = held[0], held[1:]
		if i%3 == 0 {
			p.put(give, false) // a broken one: the waiter may dial
		} else {
			p.put(give, true)
		}
		if cn := guarded(t, func() *conn { return <-got }); cn != nil {
			held = append(held, cn)
		} else {
			// The waiter gave up: its grant went back to the pool.
			cn, _, err := p.get(bg)
			require.NoError(t, err, "round %d", i)
			held = append(held, cn)
		}
		cancel()
		p.mu.Lock()
		require.Equal(t, 2, p.open, "round %d: connections counted", i)
		require.Empty(t, p.waiters, "round %d", i)
		require.Empty(t, p.idle, "round %d: both held again", i)
		p.mu.Unlock()
	}
	for _, cn := range held {
		p.put(cn, true)
	}
	_, open, peak := tr.counts()
	assert.Equal(t, 2, open)
	assert.LessOrEqual(t, peak, 3, "a broken connection may still be closing as its replacement dials")
}

// TestPoolClose: closing releases the waiters with ErrClosed (nothing
// sent) and refuses later calls; idle connections are closed at once,
// busy ones when they come back.
func TestPoolClose(t *testing.T) {
	t.Run("waiter", func(t *testing.T) {
		p, tr := testPool(t, Text, 2)
		held := mustHold(t, p, 2)
		got := make(chan error, 1)
		go func() {
			_, _, err := p.get(bg)
			got <- err
		}()
		waitWaiters(t, p, 1)
		require.NoError(t, p.close())
		assert.ErrorIs(t, guarded(t, func() error { return <-got }), ErrClosed, "the waiter is released")
		_, _, err := p.get(bg)
		assert.ErrorIs(t, err, ErrClosed)
		_, open, _ := tr.counts()
		assert.Equal(t, 2, open, "connections in use stay open")
		for _, cn := range held {
			p.put(cn, true)
		}
		_, open, _ = tr.counts()
		assert.Zero(t, open, "a connection coming back to a closed pool is closed")
	})
	t.Run("idle", func(t *testing.T) {
		p, tr := testPool(t, Text, 2)
		held := mustHold(t, p, 2)
		p.put(held[1], true)
		require.NoError(t, p.close())
		_, open, _ := tr.counts()
		assert.Equal(t, 1, open, "the idle connection is closed, the busy one not yet")
		assert.True(t, held[1].nc.(*trackedConn).closed.Load())
		p.put(held[0], true)
		_, open, _ = tr.counts()
		assert.Zero(t, open)
		p.mu.Lock()
		assert.Zero(t, p.open)
		p.mu.Unlock()
		require.NoError(t, p.close(), "closing twice is harmless")
	})
}

// TestPoolWaitAllocs: waiting for a connection and being handed one
// allocates nothing once the pool has had a waiter.
func TestPoolWaitAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	p, _ := testPool(t, Text, 1)
	held, stop := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // takes the connection, and gives it back once someone waits
		defer wg.Done()
		for {
			cn, _, err := p.get(bg)
			if err != nil {
				return
			}
			select {
			case held <- struct{}{}:
			case <-stop:
				p.put(cn, true)
				return
			}
			for {
				p.mu.Lock()
				n := len(p.waiters)
				p.mu.Unlock()
				if n > 0 {
					break
				}
				runtime.Gosched()
			}
			p.put(cn, true)
		}
	}()
	waited := func() {
		<-held
		cn, reused, err := p.get(bg) // waits for the helper's put
		// Not testify: its arguments would be allocated in the measured closure.
		if err != nil || !reused {
			t.Errorf("get: %v, reused %v", err, reused)
			return
		}
		p.put(cn, true)
	}
	allocs := testing.AllocsPerRun(200, waited)
	close(stop)
	guarded(t, func() struct{} { wg.Wait(); return struct{}{} })
	assert.Zero(t, allocs, "allocations per wait")
}
