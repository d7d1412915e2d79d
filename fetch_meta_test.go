package ermc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Fetch across processes, on Meta: several clients on one memcached stand
// in for processes. Who loads is counted by the loaders; who got which
// value, by the values returned. Nothing here measures time: a caller that
// must not wait is shown not to wait by returning while the load it would
// wait for is still held back.

// metaClients makes n Meta clients of s, each with its own connections.
func metaClients(t *testing.T, s *testServer, n int) []*Client {
	clients := make([]*Client, n)
	for i := range clients {
		clients[i] = newTestClient(t, s.Addr, Meta, Options{})
	}
	return clients
}

// inFetch counts the callers the clients' tables know for key: the
// waiters, and each client's one caller obtaining it.
func inFetch(clients []*Client, key string) (callers, leaders int) {
	for _, c := range clients {
		if w := c.fetches.waiting(key); w >= 0 {
			callers += w + 1
			leaders++
		}
	}
	return callers, leaders
}

// TestFetchMetaOneLoadAcrossClients: many concurrent Fetches of a missing
// key in 4 clients run exactly one load; the other clients wait for it on
// the server and all return its value.
func TestFetchMetaOneLoadAcrossClients(t *testing.T) {
	s := startMemcached(t)
	const procs, perClient = 4, 8
	clients := metaClients(t, s, procs)
	l := &testLoader{value: "once", started: make(chan struct{}, procs*perClient), release: make(chan struct{})}
	opts := FetchOptions{LeaseTTL: time.Hour} // no second load because a lease ran out
	var results []<-chan fetchResult
	for g := 0; g < perClient; g++ {
		for _, c := range clients {
			results = append(results, fetchAsync(bg, c, "fm:one", opts, l.load))
		}
	}
	awaitLoad(t, l)
	// Every caller but the loader is waiting: in its client, or as its
	// client's one reader of the server (the loader may have found one
	// there already, and then is in no table).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		callers, leaders := inFetch(clients, "fm:one")
		if callers >= procs*perClient-1 && leaders == procs {
			break
		}
		require.False(t, time.Now().After(deadline), "%d callers in %d clients' tables, want %d in %d", callers, leaders, procs*perClient-1, procs)
	}
	close(l.release)
	for _, ch := range results {
		requireFetched(t, ch, "once")
	}
	require.EqualValues(t, 1, l.loads.Load(), "loads by %d callers in %d clients", procs*perClient, procs)
	for _, c := range clients {
		require.Zero(t, c.fetches.size())
	}
}

// TestFetchMetaStaleWhileReload: after Invalidate one caller reloads while
// every other caller, in its client or another, gets the stale value at
// once; then everyone gets the new value.
func TestFetchMetaStaleWhileReload(t *testing.T) {
	s := startMemcached(t)
	clients := metaClients(t, s, 3)
	a := clients[0]
	mustSet(t, a, "fm:stale", "v1")
	require.NoError(t, a.Invalidate(bg, "fm:stale", time.Minute))

	l := &testLoader{value: "v2", started: make(chan struct{}, 4), release: make(chan struct{})}
	opts := FetchOptions{LeaseTTL: time.Hour}
	reload := fetchAsync(bg, a, "fm:stale", opts, l.load)
	awaitLoad(t, l)
	for _, c := range clients { // a too: a second caller of the reloading client
		for i := 0; i < 3; i++ {
			requireFetched(t, fetchAsync(bg, c, "fm:stale", opts, l.load), "v1") // returns while the reload is held
		}
		v, err := c.Get(bg, "fm:stale", nil)
		require.NoError(t, err)
		require.Equal(t, "v1", string(v), "an invalidated item stays readable")
	}
	close(l.release)
	requireFetched(t, reload, "v2")
	for _, c := range clients {
		v, err := c.Fetch(bg, "fm:stale", nil, opts, l.load)
		require.NoError(t, err)
		require.Equal(t, "v2", string(v))
	}
	require.EqualValues(t, 1, l.loads.Load())
}

// TestFetchMetaRefreshBefore: a hit with less TTL left than RefreshBefore
// makes one caller reload while the others keep the current value; with
// more left, or RefreshBefore 0, nobody reloads.
func TestFetchMetaRefreshBefore(t *testing.T) {
	s := startMemcached(t)
	clients := metaClients(t, s, 2)
	a, b := clients[0], clients[1]
	require.NoError(t, a.Set(bg, "fm:r", []byte("v1"), 100*time.Second))
	l := &testLoader{value: "v2", started: make(chan struct{}, 4), release: make(chan struct{})}
	for _, opts := range []FetchOptions{{}, {RefreshBefore: 50 * time.Second}} {
		v, err := b.Fetch(bg, "fm:r", nil, opts, l.load)
		require.NoError(t, err)
		require.Equal(t, "v1", string(v))
	}
	require.Zero(t, l.loads.Load(), "100s left: no refresh")

	opts := FetchOptions{TTL: time.Hour, RefreshBefore: 200 * time.Second, LeaseTTL: time.Hour}
	refresh := fetchAsync(bg, a, "fm:r", opts, l.load)
	awaitLoad(t, l)
	for _, c := range clients {
		requireFetched(t, fetchAsync(bg, c, "fm:r", opts, l.load), "v1") // returns while the refresh is held
	}
	close(l.release)
	requireFetched(t, refresh, "v2")
	v, err := b.Fetch(bg, "fm:r", nil, opts, l.load)
	require.NoError(t, err)
	require.Equal(t, "v2", string(v), "stored with TTL 1h: no refresh due")
	require.EqualValues(t, 1, l.loads.Load())
}

// TestFetchMetaLoadErrorReleases: a failed load gives its lease up at
// once, whatever the lease was on, so the next Fetch in another client
// loads. With LeaseTTL an hour, a lease not given up would leave that
// Fetch waiting (miss) or returning the old value (stale, refresh).
func TestFetchMetaLoadErrorReleases(t *testing.T) {
	boom := errors.New("backend down")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, c *Client, key string)
		opts  FetchOptions
	}{
		{"miss", func(*testing.T, *Client, string) {}, FetchOptions{}},
		{"stale", func(t *testing.T, c *Client, key string) {
			mustSet(t, c, key, "old")
			require.NoError(t, c.Invalidate(bg, key, time.Hour))
		}, FetchOptions{}},
		{"refresh", func(t *testing.T, c *Client, key string) {
			require.NoError(t, c.Set(bg, key, []byte("old"), 100*time.Second))
		}, FetchOptions{RefreshBefore: 200 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startMemcached(t)
			clients := metaClients(t, s, 2)
			a, b := clients[0], clients[1]
			key := "fm:err:" + tc.name
			tc.setup(t, a, key)
			opts := tc.opts
			opts.LeaseTTL = time.Hour

			failing := &testLoader{err: boom}
			_, err := a.Fetch(bg, key, nil, opts, failing.load)
			require.ErrorIs(t, err, boom)
			require.EqualValues(t, 1, failing.loads.Load())
			if tc.name == "miss" {
				requireMiss(t, b, key) // the placeholder is gone, not read as an empty value
			}

			ctx, cancel := context.WithTimeout(bg, 10*time.Second) // a bound, not a measurement
			defer cancel()
			ok := &testLoader{value: "new"}
			v, err := b.Fetch(ctx, key, nil, opts, ok.load)
			require.NoError(t, err)
			require.Equal(t, "new", string(v))
			require.EqualValues(t, 1, ok.loads.Load(), "the next Fetch in another client loads")
		})
	}
}

// TestFetchMetaLeaseExpires: a lease whose holder never stores ends after
// LeaseTTL, and a caller of another client that waited for it loads.
func TestFetchMetaLeaseExpires(t *testing.T) {
	s := startMemcached(t)
	clients := metaClients(t, s, 2)
	a, b := clients[0], clients[1]
	opts := FetchOptions{LeaseTTL: time.Second}
	stuck := &testLoader{value: "late", started: make(chan struct{}, 1), release: make(chan struct{})}
	holder := fetchAsync(bg, a, "fm:lease", opts, stuck.load)
	awaitLoad(t, stuck)

	ctx, cancel := context.WithTimeout(bg, 10*time.Second) // memcached expires the lease within about 2s
	defer cancel()
	l := &testLoader{value: "after the lease"}
	v, err := b.Fetch(ctx, "fm:lease", nil, opts, l.load)
	require.NoError(t, err)
	require.Equal(t, "after the lease", string(v))
	require.EqualValues(t, 1, l.loads.Load())

	close(stuck.release) // the old holder's value, stored under its lease, must not replace the newer one
	requireFetched(t, holder, "late")
	got, err := b.Get(bg, "fm:lease", nil)
	require.NoError(t, err)
	require.Equal(t, "after the lease", string(got))
}

// TestFetchMetaWaiterContext: a caller waiting for another process's load
// returns its context's error when its context ends, never a value; a
// caller of its client waiting behind it then reads the server itself.
func TestFetchMetaWaiterContext(t *testing.T) {
	s := startMemcached(t)
	clients := metaClients(t, s, 2)
	a, b := clients[0], clients[1]
	opts := FetchOptions{LeaseTTL: time.Hour}
	l := &testLoader{value: "v", started: make(chan struct{}, 2), release: make(chan struct{})}
	holder := fetchAsync(bg, a, "fm:ctx", opts, l.load)
	awaitLoad(t, l)

	ctx, cancel := context.WithCancel(bg)
	poller := fetchAsync(ctx, b, "fm:ctx", opts, l.load)
	awaitWaiters(t, b, "fm:ctx", 0) // b's reader of the server
	patient := fetchAsync(bg, b, "fm:ctx", opts, l.load)
	awaitWaiters(t, b, "fm:ctx", 1)
	cancel()
	requireFetchFailed(t, poller, context.Canceled)

	timeout, cancelTimeout := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancelTimeout()
	requireFetchFailed(t, fetchAsync(timeout, b, "fm:ctx", opts, l.load), context.DeadlineExceeded)

	close(l.release)
	for _, ch := range []<-chan fetchResult{holder, patient} {
		requireFetched(t, ch, "v")
	}
	require.EqualValues(t, 1, l.loads.Load())
	require.Zero(t, b.fetches.size())
}

// TestFetchMetaInvalidate: Invalidate of a missing key is ErrCacheMiss;
// an invalidated item stays readable for staleTTL, then expires.
func TestFetchMetaInvalidate(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Meta, Options{})
	require.ErrorIs(t, c.Invalidate(bg, "fm:inv", time.Minute), ErrCacheMiss)
	require.ErrorIs(t, c.Invalidate(bg, "", time.Minute), ErrMalformedKey)
	mustSet(t, c, "fm:inv", "v1")
	require.NoError(t, c.Invalidate(bg, "fm:inv", time.Second))
	v, err := c.Get(bg, "fm:inv", nil)
	require.NoError(t, err)
	require.Equal(t, "v1", string(v))
	eventuallyMiss(t, c, "fm:inv", 5*time.Second)
}

// TestFetchMetaLeaseSideEffects pins the two consequences of memcached's
// leases the README states: Get reads a placeholder as an empty value, and
// a meta Get of an invalidated item takes its reload turn, so the Fetch
// after it returns the stale value without loading.
func TestFetchMetaLeaseSideEffects(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Meta, Options{})
	l := &testLoader{value: "v", started: make(chan struct{}, 2), release: make(chan struct{})}
	holder := fetchAsync(bg, c, "fm:placeholder", FetchOptions{}, l.load)
	awaitLoad(t, l)
	for _, proto := range []Protocol{Meta, Text} {
		v, err := newTestClient(t, s.Addr, proto, Options{}).Get(bg, "fm:placeholder", nil)
		require.NoError(t, err, proto.String())
		require.Empty(t, v, proto.String())
	}
	close(l.release)
	require.NoError(t, await(t, holder).err)

	mustSet(t, c, "fm:stolen", "old")
	require.NoError(t, c.Invalidate(bg, "fm:stolen", time.Minute))
	_, err := c.Get(bg, "fm:stolen", nil)
	require.NoError(t, err)
	v, err := c.Fetch(bg, "fm:stolen", nil, FetchOptions{}, l.load)
	require.NoError(t, err)
	require.Equal(t, "old", string(v))
	require.EqualValues(t, 1, l.loads.Load(), "the Get took the reload")
}
