package ermc

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The schedule: 50ms after the first failure, doubling per failure up to
// one second, each interval jittered to between half and all of itself.
func TestBackoffDelaySchedule(t *testing.T) {
	wantMax := []time.Duration{50, 100, 200, 400, 800, 1000, 1000, 1000}
	for i, ms := range wantMax {
		failures := i + 1
		hi := ms * time.Millisecond
		assert.Equal(t, hi/2, backoffDelay(failures, 0), "failures %d, no jitter", failures)
		assert.Equal(t, hi, backoffDelay(failures, 1), "failures %d, full jitter", failures)
		for _, j := range []float64{0.1, 0.5, 0.999} {
			d := backoffDelay(failures, j)
			assert.GreaterOrEqual(t, d, hi/2, "failures %d jitter %v", failures, j)
			assert.Less(t, d, hi, "failures %d jitter %v", failures, j)
		}
		if failures > 1 {
			assert.Equal(t, min(2*backoffDelay(failures-1, 0.5), backoffDelay(failures, 0.5)), backoffDelay(failures, 0.5), "grows by doubling, then stays")
		}
	}
	for _, failures := range []int{15, 16, 17, 63, 64, 65, 1000, 1 << 30} {
		d := backoffDelay(failures, 0.999)
		assert.Greater(t, d, backoffMax/2, "failures %d", failures)
		assert.LessOrEqual(t, d, backoffMax, "failures %d: capped, no overflow", failures)
	}
}

// countedDial dials through net.Dialer and counts the attempts.
func countedDial(n *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

// requireDialRefused: err is a dial fault naming addr whose cause, the
// refused connect, is reachable.
func requireDialRefused(t *testing.T, err error, addr string) {
	t.Helper()
	var ce *ConnError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "dial", ce.Op)
	assert.Equal(t, addr, ce.Addr)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	var ne net.Error
	assert.ErrorAs(t, err, &ne, "the net error is reachable")
}

// With nothing listening, 64 goroutines calling Get for a second make a
// handful of dials, not one per call; every call fails with the dial's
// error, most of them at once.
func TestDialBackoffDeadServer(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t)) // closed again: nothing listens
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			var dials atomic.Int64
			c := newTestClient(t, addr, proto, Options{ConnectTimeout: 2 * time.Second, DialContext: countedDial(&dials)})
			var calls, backedOff atomic.Int64
			var wg sync.WaitGroup
			var mu sync.Mutex
			var firstErr error
			stop := time.Now().Add(time.Second)
			for g := 0; g < 64; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 1_000_000 && time.Now().Before(stop); i++ {
						_, err := c.Get(bg, "k", nil)
						calls.Add(1)
						var ce *ConnError
						if !errors.As(err, &ce) || ce.Op != "dial" || !errors.Is(err, syscall.ECONNREFUSED) {
							mu.Lock()
							if firstErr == nil {
								firstErr = err
							}
							mu.Unlock()
							return
						}
						if isBackoff(ce) {
							backedOff.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			require.NoError(t, firstErr, "every call fails with the refused dial")
			st := c.PoolStats()
			t.Logf("%d calls, %d dials, %d failed at once", calls.Load(), dials.Load(), backedOff.Load())
			assert.Less(t, dials.Load(), int64(100), "dials in one second")
			assert.EqualValues(t, dials.Load(), st.Dials, "PoolStats counts the dials")
			assert.EqualValues(t, dials.Load(), st.DialErrors)
			assert.Zero(t, st.Timeouts, "a refused dial is no timeout")
			if !isPipelined(proto) { // on Ultra, the requests queued on a lane share its dial's error
				assert.EqualValues(t, calls.Load()-dials.Load(), backedOff.Load(), "a call that did not dial was failed by the backoff")
			}
		})
	}
}

// A call that the backoff fails carries the last dial's error; Connect
// dials all the same, and so probes the server.
func TestDialBackoffFailsWithLastError(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			var dials atomic.Int64
			c := newTestClient(t, addr, proto, Options{ConnectTimeout: 2 * time.Second, DialContext: countedDial(&dials)})
			var fast error
			for i := 0; i < 1000 && fast == nil; i++ {
				_, err := c.Get(bg, "k", nil)
				requireDialRefused(t, err, addr)
				var ce *ConnError
				if errors.As(err, &ce) && isBackoff(ce) {
					fast = err
				}
			}
			require.Error(t, fast, "no call was failed by the backoff")
			assert.Contains(t, fast.Error(), "not dialing for now")
			assert.Contains(t, fast.Error(), "connection refused")
			assert.True(t, isConnFault(fast), "ErrorAsMiss can hide it like any dial fault")

			before := dials.Load()
			err := guarded(t, func() error { return c.Connect(bg) })
			requireDialRefused(t, err, addr)
			assert.Equal(t, before+1, dials.Load(), "Connect dialed")
			var ce *ConnError
			require.ErrorAs(t, err, &ce)
			assert.False(t, isBackoff(ce), "Connect's error is its own dial's")
		})
	}
}

// A caller whose context ends the dial says nothing about the server: the
// next call dials again rather than failing with the cancellation.
func TestDialBackoffIgnoresCallerContext(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			var dials atomic.Int64
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				<-ctx.Done()
				return nil, ctx.Err()
			}
			c := newTestClient(t, "127.0.0.1:1", proto, Options{ConnectTimeout: time.Minute, DialContext: dial})
			if isPipelined(proto) {
				// The lane's dial outlives its caller (it serves every
				// queued request) and ends with ConnectTimeout: a
				// pooled-driver property.
				t.Skip("Ultra dials on a context of its own")
			}
			for i := 0; i < 3; i++ {
				ctx, cancel := context.WithCancel(bg)
				go func() {
					for dials.Load() <= int64(i) {
						time.Sleep(time.Millisecond)
					}
					cancel()
				}()
				res := guardedGet(t, c, ctx, "k")
				cancel()
				require.ErrorIs(t, res.err, context.Canceled)
			}
			assert.EqualValues(t, 3, dials.Load(), "each call dialed")
		})
	}
}

// When the server comes back, requests succeed again within the backoff's
// longest interval. The wait is bounded by a generous guard, not timed.
func TestDialBackoffRecovery(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			var lastErr error
			for attempt := 0; attempt < 5; attempt++ {
				port := freePort(t)
				addr := "127.0.0.1:" + strconv.Itoa(port)
				var dials atomic.Int64
				c := newTestClient(t, addr, proto, Options{ConnectTimeout: 2 * time.Second, DialContext: countedDial(&dials)})
				// Fail long enough to reach the longest interval.
				for stop := time.Now().Add(1500 * time.Millisecond); time.Now().Before(stop); time.Sleep(5 * time.Millisecond) {
					_, err := c.Get(bg, "k", nil)
					requireDialRefused(t, err, addr)
				}
				srv, err := startMemcachedOn(t, port)
				if err != nil { // someone took the port meanwhile
					lastErr = err
					continue
				}
				var got error
				for guard := time.Now().Add(3 * hangGuard); time.Now().Before(guard); time.Sleep(5 * time.Millisecond) {
					if got = c.Set(bg, "k", []byte("v"), 0); got == nil {
						break
					}
					var ce *ConnError
					require.ErrorAs(t, got, &ce)
					require.Equal(t, "dial", ce.Op, "only dials fail")
				}
				require.NoError(t, got, "requests succeed again once memcached listens")
				res := guardedGet(t, c, bg, "k")
				require.NoError(t, res.err)
				assert.Equal(t, "v", res.v)
				st := c.PoolStats()
				assert.EqualValues(t, dials.Load(), st.Dials)
				assert.Less(t, st.DialErrors, st.Dials, "the last dials succeeded")
				srv.Stop()
				return
			}
			require.Fail(t, "memcached did not start on a reserved port", "%v", lastErr)
		})
	}
}

// Ultra's lanes dial on goroutines of their own: they go through the same
// gate, so with several lanes one probe at a time goes out too.
func TestDialBackoffUltraLanes(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	var dials atomic.Int64
	c := newTestClient(t, addr, Ultra, Options{ConnectTimeout: 2 * time.Second, DialContext: countedDial(&dials)})
	u := newPipeDriver("tcp", addr, &c.opts, textCodec, 8, &c.stats)
	u.spillAt = 0 // every lane full: calls go to the 8 lanes in turn
	c.drv = u
	calls := 0
	for stop := time.Now().Add(300 * time.Millisecond); time.Now().Before(stop) && calls < 100_000; calls++ {
		_, err := c.Get(bg, "k", nil)
		requireDialRefused(t, err, addr)
	}
	assert.Less(t, dials.Load(), int64(20), "%d calls over 8 lanes", calls)
}
