package ermc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Fetch within one client, on every wire driver: one load per key at a
// time, its value handed to every caller that waited, errors and contexts.
// The cross-process half (Meta) is in fetch_meta_test.go.

// testLoader counts its loads and can hold them until released.
type testLoader struct {
	value   string
	loads   atomic.Int32
	started chan struct{} // receives once per load, when it starts (if not nil)
	release chan struct{} // a load waits for it (if not nil)
	err     error         // returned instead of a value
}

func (l *testLoader) load(ctx context.Context, dst []byte) ([]byte, error) {
	l.loads.Add(1)
	if l.started != nil {
		l.started <- struct{}{}
	}
	if l.release != nil {
		select {
		case <-l.release:
		case <-ctx.Done():
			return dst, ctx.Err()
		}
	}
	if l.err != nil {
		return dst, l.err
	}
	return append(dst, l.value...), nil
}

// awaitLoad waits until one of l's loads has started, within the hang
// guard.
func awaitLoad(t *testing.T, l *testLoader) {
	t.Helper()
	await(t, l.started)
}

// awaitWaiters waits until n callers of c wait for key's load, failing
// after 10s. Callers are counted by the table, not guessed from time.
func awaitWaiters(t *testing.T, c *Client, key string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); c.fetches.waiting(key) != n; time.Sleep(time.Millisecond) {
		require.False(t, time.Now().After(deadline), "%d callers wait for %q, want %d", c.fetches.waiting(key), key, n)
	}
}

// fetchResult is what one concurrent Fetch returned.
type fetchResult struct {
	value string
	err   error
}

// requireFetched waits for a Fetch started by fetchAsync and requires
// that it returned want.
func requireFetched(t *testing.T, ch <-chan fetchResult, want string) {
	t.Helper()
	r := await(t, ch)
	require.NoError(t, r.err)
	require.Equal(t, want, r.value)
}

// requireFetchFailed waits for a Fetch started by fetchAsync and requires
// that it failed with target and returned no value.
func requireFetchFailed(t *testing.T, ch <-chan fetchResult, target error) {
	t.Helper()
	r := await(t, ch)
	require.ErrorIs(t, r.err, target)
	require.Empty(t, r.value)
}

// fetchAsync runs Fetch in a goroutine; its result arrives on the channel.
func fetchAsync(ctx context.Context, c *Client, key string, opts FetchOptions, load func(context.Context, []byte) ([]byte, error)) <-chan fetchResult {
	out := make(chan fetchResult, 1)
	go func() {
		v, err := c.Fetch(ctx, key, []byte("dst:"), opts, load)
		if err == nil && !strings.HasPrefix(string(v), "dst:") {
			err = fmt.Errorf("value %q does not extend dst", v)
		}
		out <- fetchResult{strings.TrimPrefix(string(v), "dst:"), err}
	}()
	return out
}

func TestFetchMissLoadsStoresAndHits(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		l := &testLoader{value: "loaded"}
		v, err := c.Fetch(bg, "f:k", []byte("x"), FetchOptions{TTL: time.Hour}, l.load)
		require.NoError(t, err)
		require.Equal(t, "xloaded", string(v))
		require.EqualValues(t, 1, l.loads.Load())

		got, err := c.Get(bg, "f:k", nil)
		require.NoError(t, err)
		require.Equal(t, "loaded", string(got), "the loaded value is stored")

		v, err = c.Fetch(bg, "f:k", nil, FetchOptions{}, l.load)
		require.NoError(t, err)
		require.Equal(t, "loaded", string(v))
		require.EqualValues(t, 1, l.loads.Load(), "a hit does not load")
		require.Zero(t, c.fetches.size())
	})
}

// TestFetchStoresOrdinaryValues: Fetch stores what Set would, compressed
// above CompressThreshold, so every client reads it.
func TestFetchStoresOrdinaryValues(t *testing.T) {
	s := startMemcached(t)
	big := strings.Repeat("compressible ", 100)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestClient(t, s.Addr, proto, Options{CompressThreshold: 100})
			key := "f:z:" + proto.String()
			l := &testLoader{value: big}
			v, err := c.Fetch(bg, key, nil, FetchOptions{}, l.load)
			require.NoError(t, err)
			require.Equal(t, big, string(v))
			flags, raw, found := rawGet(t, s.Addr, key)
			require.True(t, found)
			require.Equal(t, FlagCompressed, flags, "stored compressed")
			require.Less(t, len(raw), len(big))
			for _, reader := range wireDrivers {
				got, err := newTestClient(t, s.Addr, reader, Options{}).Get(bg, key, nil)
				require.NoError(t, err, "Get on %v", reader)
				require.Equal(t, big, string(got), "Get on %v", reader)
			}
		})
	}
}

// TestFetchSharesOneLoad: concurrent Fetches of a key in one client run
// one load; every caller gets its value in its own dst.
func TestFetchSharesOneLoad(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		const n = 20
		l := &testLoader{value: "shared", started: make(chan struct{}, n), release: make(chan struct{})}
		results := []<-chan fetchResult{fetchAsync(bg, c, "f:one", FetchOptions{}, l.load)}
		awaitLoad(t, l)
		for i := 1; i < n; i++ {
			results = append(results, fetchAsync(bg, c, "f:one", FetchOptions{}, l.load))
		}
		awaitWaiters(t, c, "f:one", n-1)
		close(l.release)
		for _, ch := range results {
			requireFetched(t, ch, "shared")
		}
		require.EqualValues(t, 1, l.loads.Load())
		require.Zero(t, c.fetches.size(), "no entry outlives its load")
	})
}

// TestFetchLoadError: a load error goes to the caller that ran it and to
// its waiters; nothing is stored, and the next Fetch loads at once.
func TestFetchLoadError(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		boom := errors.New("backend down")
		l := &testLoader{err: boom, started: make(chan struct{}, 4), release: make(chan struct{})}
		first := fetchAsync(bg, c, "f:err", FetchOptions{}, l.load)
		awaitLoad(t, l)
		second := fetchAsync(bg, c, "f:err", FetchOptions{}, l.load)
		awaitWaiters(t, c, "f:err", 1)
		close(l.release)
		require.ErrorIs(t, await(t, first).err, boom)
		require.ErrorIs(t, await(t, second).err, boom)
		require.EqualValues(t, 1, l.loads.Load())
		requireMiss(t, c, "f:err")
		require.Zero(t, c.fetches.size())

		ok := &testLoader{value: "recovered"}
		v, err := c.Fetch(bg, "f:err", nil, FetchOptions{}, ok.load)
		require.NoError(t, err)
		require.Equal(t, "recovered", string(v))
		require.EqualValues(t, 1, ok.loads.Load())
	})
}

// TestFetchWaiterContext: a waiter whose context ends returns its
// context's error, never a value; the load goes on for the others.
func TestFetchWaiterContext(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		l := &testLoader{value: "late", started: make(chan struct{}, 4), release: make(chan struct{})}
		leader := fetchAsync(bg, c, "f:ctx", FetchOptions{}, l.load)
		awaitLoad(t, l)
		ctx, cancel := context.WithCancel(bg)
		waiter := fetchAsync(ctx, c, "f:ctx", FetchOptions{}, l.load)
		awaitWaiters(t, c, "f:ctx", 1)
		cancel()
		requireFetchFailed(t, waiter, context.Canceled)

		timeout, cancelTimeout := context.WithTimeout(bg, 50*time.Millisecond)
		defer cancelTimeout()
		requireFetchFailed(t, fetchAsync(timeout, c, "f:ctx", FetchOptions{}, l.load), context.DeadlineExceeded)

		close(l.release)
		requireFetched(t, leader, "late")
		require.EqualValues(t, 1, l.loads.Load())
		require.Zero(t, c.fetches.size())
	})
}

// TestFetchLeaderGivesUp: when the context of the caller running the load
// ends, its waiters do not inherit that error: one of them loads.
func TestFetchLeaderGivesUp(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		l := &testLoader{value: "second try", started: make(chan struct{}, 4), release: make(chan struct{})}
		ctx, cancel := context.WithCancel(bg)
		leader := fetchAsync(ctx, c, "f:quit", FetchOptions{}, l.load)
		awaitLoad(t, l)
		waiter := fetchAsync(bg, c, "f:quit", FetchOptions{}, l.load)
		awaitWaiters(t, c, "f:quit", 1)
		cancel()
		require.ErrorIs(t, await(t, leader).err, context.Canceled)
		awaitLoad(t, l) // the waiter's own load
		close(l.release)
		requireFetched(t, waiter, "second try")
		require.EqualValues(t, 2, l.loads.Load())
		require.Zero(t, c.fetches.size())
	})
}

// TestFetchLoaderPanics: a panicking loader panics in its caller; its
// waiters get an error and the key is free again.
func TestFetchLoaderPanics(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Text, Options{})
	started, release := make(chan struct{}), make(chan struct{})
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = c.Fetch(bg, "f:panic", nil, FetchOptions{}, func(context.Context, []byte) ([]byte, error) {
			close(started)
			<-release
			panic("loader bug")
		})
	}()
	<-started
	l := &testLoader{value: "v"}
	waiter := fetchAsync(bg, c, "f:panic", FetchOptions{}, l.load)
	awaitWaiters(t, c, "f:panic", 1)
	close(release)
	require.Equal(t, "loader bug", <-panicked)
	require.ErrorIs(t, await(t, waiter).err, errLoadPanicked)
	require.Zero(t, c.fetches.size())
	v, err := c.Fetch(bg, "f:panic", nil, FetchOptions{}, l.load)
	require.NoError(t, err)
	require.Equal(t, "v", string(v))
}

// TestFetchKeepsNewerValue: a value stored while the load ran is not
// overwritten by the load's; the loading caller still gets what it loaded.
func TestFetchKeepsNewerValue(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		l := &testLoader{value: "old", started: make(chan struct{}, 1), release: make(chan struct{})}
		r := fetchAsync(bg, c, "f:race", FetchOptions{}, l.load)
		awaitLoad(t, l)
		mustSet(t, c, "f:race", "newer")
		close(l.release)
		got := await(t, r)
		require.NoError(t, got.err)
		require.Equal(t, "old", got.value)
		v, err := c.Get(bg, "f:race", nil)
		require.NoError(t, err)
		require.Equal(t, "newer", string(v))
	})
}

// TestFetchFaults: a read fault is returned without loading, unless
// ErrorAsMiss reads it as a miss; a value that cannot be stored is
// returned with the store's error.
func TestFetchFaults(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			s := startMemcached(t)
			c := newTestClient(t, s.Addr, proto, Options{MaxValueLength: 10})
			l := &testLoader{value: "more than ten bytes"}
			v, err := c.Fetch(bg, "f:big", []byte("d"), FetchOptions{}, l.load)
			require.ErrorIs(t, err, ErrValueTooLarge)
			require.Equal(t, "dmore than ten bytes", string(v), "the loaded value comes with the store's error")

			_, err = c.Fetch(bg, "", nil, FetchOptions{}, l.load)
			require.ErrorIs(t, err, ErrMalformedKey)
			require.EqualValues(t, 1, l.loads.Load())

			strict := newTestClient(t, s.Addr, proto, Options{})
			lenient := newTestClient(t, s.Addr, proto, Options{ErrorAsMiss: true})
			s.Stop()
			_, err = strict.Fetch(bg, "f:down", nil, FetchOptions{}, l.load)
			var ce *ConnError
			require.ErrorAs(t, err, &ce)
			require.EqualValues(t, 1, l.loads.Load(), "no load on a read fault")
			v, err = lenient.Fetch(bg, "f:down", nil, FetchOptions{}, l.load)
			require.NoError(t, err, "ErrorAsMiss: the read and the store fault are hidden")
			require.Equal(t, "more than ten bytes", string(v))
			require.EqualValues(t, 2, l.loads.Load())
		})
	}
}

// TestFetchNoop: with no server every Fetch loads.
func TestFetchNoop(t *testing.T) {
	c, err := New("", Options{Protocol: Noop})
	require.NoError(t, err)
	l := &testLoader{value: "v"}
	for i := 1; i <= 2; i++ {
		v, err := c.Fetch(bg, "k", nil, FetchOptions{}, l.load)
		require.NoError(t, err)
		require.Equal(t, "v", string(v))
		require.EqualValues(t, i, l.loads.Load())
	}
}

// TestInvalidateDeletes: on the drivers without leases, Invalidate
// deletes, and the next Fetch loads.
func TestInvalidateDeletes(t *testing.T) {
	for _, proto := range wireDrivers {
		if proto == Meta {
			continue // TestFetchMetaInvalidate
		}
		t.Run(proto.String(), func(t *testing.T) {
			s := startMemcached(t)
			c := newTestClient(t, s.Addr, proto, Options{})
			require.ErrorIs(t, c.Invalidate(bg, "f:inv", time.Minute), ErrCacheMiss)
			mustSet(t, c, "f:inv", "v1")
			require.NoError(t, c.Invalidate(bg, "f:inv", time.Minute))
			requireMiss(t, c, "f:inv")
			l := &testLoader{value: "v2"}
			v, err := c.Fetch(bg, "f:inv", nil, FetchOptions{}, l.load)
			require.NoError(t, err)
			require.Equal(t, "v2", string(v))
		})
	}
}

// TestFetchManyKeysConcurrently: goroutines fetching a few keys at once
// each get their key's value, with at most one load per key at a time in
// this client, and no entry left behind. Run it under -race.
func TestFetchManyKeysConcurrently(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		const keys, goroutines, rounds = 4, 16, 50
		var running [keys]atomic.Int32
		var overlap atomic.Bool
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				buf := make([]byte, 0, 64)
				for i := 0; i < rounds; i++ {
					k := (g + i) % keys
					key := fmt.Sprintf("f:many:%d", k)
					if i%10 == 0 && g == 0 {
						_ = c.Delete(bg, key)
					}
					v, err := c.Fetch(bg, key, buf[:0], FetchOptions{}, func(ctx context.Context, dst []byte) ([]byte, error) {
						if running[k].Add(1) > 1 {
							overlap.Store(true)
						}
						defer running[k].Add(-1)
						return append(dst, key...), nil
					})
					if err == nil && string(v) != key {
						err = fmt.Errorf("Fetch %s returned %q", key, v)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}(g)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.False(t, overlap.Load(), "two loads of one key ran at once in one client")
		require.Zero(t, c.fetches.size())
	})
}

// TestFetchTraced: a Fetch is one "fetch" operation for the Tracer, hit or
// load, with the caller's error; Invalidate is a "delete".
func TestFetchTraced(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			rt := &recordTracer{}
			c := newTestClient(t, s.Addr, proto, Options{Tracer: rt})
			key := "f:trace:" + proto.String()
			boom := errors.New("boom")
			for i, tc := range []struct {
				name string
				call func() error
			}{
				{"fetch", func() error {
					_, err := c.Fetch(bg, key, nil, FetchOptions{}, (&testLoader{err: boom}).load)
					return err
				}},
				{"fetch", func() error {
					_, err := c.Fetch(bg, key, nil, FetchOptions{}, (&testLoader{value: "v"}).load)
					return err
				}},
				{"fetch", func() error {
					_, err := c.Fetch(bg, key, nil, FetchOptions{}, (&testLoader{value: "w"}).load)
					return err
				}},
				{"delete", func() error { return c.Invalidate(bg, key, time.Minute) }},
				{"delete", func() error { return c.Invalidate(bg, key+":absent", time.Minute) }},
			} {
				err := tc.call()
				starts, ends := rt.take()
				require.Len(t, starts, 1, "case %d: OpStart calls", i)
				require.Len(t, ends, 1, "case %d: OpEnd calls", i)
				require.Equal(t, tc.name, starts[0].Name, "case %d", i)
				require.Equal(t, key, starts[0].Key[:len(key)], "case %d", i)
				require.True(t, err == ends[0].err, "case %d: OpEnd got %v, the caller %v", i, ends[0].err, err)
			}
		})
	}
}
