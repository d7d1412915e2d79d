package ermc

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Which lane a pipelined request goes to: the first lane not yet serving
// spillAt callers, so that requests share as few connections (and as few
// writes and reads) as the load allows.

// withLanes gives c's pipelined driver n lanes spilling over at spillAt,
// whatever GOMAXPROCS is.
func withLanes(c *Client, n int, spillAt int32) *pipeDriver {
	old := c.drv.(*pipeDriver)
	u := newPipeDriver(old.d.network, old.d.addr, &c.opts, old.d.codec, n, &c.stats)
	u.spillAt = spillAt
	c.drv = u
	return u
}

func TestLanePickFillsTheFirstLaneFirst(t *testing.T) {
	u := newPipeDriver("tcp", "127.0.0.1:1", &Options{}, textCodec, 3, &poolCounters{})
	u.spillAt = 2
	set := func(counts ...int32) {
		for i, n := range counts {
			u.lanes[i].callers.Store(n)
		}
	}
	set(0, 0, 0)
	assert.Same(t, u.lanes[0], u.pick(), "an idle driver uses its first lane")
	set(1, 0, 0)
	assert.Same(t, u.lanes[0], u.pick(), "below spillAt the first lane takes more")
	set(2, 0, 0)
	assert.Same(t, u.lanes[1], u.pick(), "at spillAt the next lane takes over")
	set(2, 1, 0)
	assert.Same(t, u.lanes[1], u.pick())
	set(0, 2, 2)
	assert.Same(t, u.lanes[0], u.pick(), "a lane that calms down is first again")

	set(2, 2, 2) // every lane full: all three in turn
	seen := map[*lane]int{}
	for range 30 {
		seen[u.pick()]++
	}
	for i, ln := range u.lanes {
		assert.Equal(t, 10, seen[ln], "lane %d", i)
	}
}

// TestLanesShareOneConnectionBelowSpill: 64 goroutines at once on a
// driver with 4 lanes use one connection, which carries everything.
func TestLanesShareOneConnectionBelowSpill(t *testing.T) {
	forEachProto(t, []Protocol{Ultra, Meta}, func(t *testing.T, proto Protocol) {
		s := startMemcached(t)
		c := newTestClient(t, s.Addr, proto, Options{})
		withLanes(c, 4, defaultSpillAt)
		runConcurrentGets(t, c, 64, 50)
		st := c.PoolStats()
		assert.Equal(t, 1, st.Open, "connections open")
		assert.Equal(t, uint64(1), st.Dials, "connections dialled")
	})
}

// TestLanesSpillWhenBusy: callers beyond spillAt on the first lane go to
// the next, which opens a connection of its own.
func TestLanesSpillWhenBusy(t *testing.T) {
	forEachProto(t, []Protocol{Ultra, Meta}, func(t *testing.T, proto Protocol) {
		s := startMemcached(t)
		c := newTestClient(t, s.Addr, proto, Options{})
		withLanes(c, 4, 1) // one caller per lane before spilling
		runConcurrentGets(t, c, 64, 50)
		st := c.PoolStats()
		assert.Greater(t, st.Open, 1, "connections open")
		assert.LessOrEqual(t, st.Open, 4, "connections open")
	})
}

// runConcurrentGets stores a value per goroutine, then has goroutines
// goroutines read their own key n times at once, each read checked.
func runConcurrentGets(t *testing.T, c *Client, goroutines, n int) {
	t.Helper()
	for g := range goroutines {
		mustSet(t, c, fmt.Sprintf("lane-%d", g), fmt.Sprintf("value-%d", g))
	}
	start := make(chan struct{})
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key, want := fmt.Sprintf("lane-%d", g), fmt.Sprintf("value-%d", g)
			<-start
			for range n {
				v, err := c.Get(bg, key, nil)
				if err != nil || string(v) != want {
					errs <- fmt.Errorf("get %s = %q, %v", key, v, err)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}
