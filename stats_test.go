package ermc

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// PoolStats counts what happened to a client's connections. These tests
// pin each counter against a real memcached, or against the fake server
// where only a stall or a hang-up makes the fault happen. Ultra clients
// get one lane (newFaultClient), so their counts are exact too.

func TestPoolStatsOpenIdleDials(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newFaultClient(t, s.Addr, proto, Options{})
			assert.Equal(t, PoolStats{}, c.PoolStats(), "no I/O before the first request")
			mustSet(t, c, "k", "v")
			_, err := c.Get(bg, "k", nil)
			require.NoError(t, err)
			assert.Equal(t, PoolStats{Open: 1, Idle: 1, Dials: 1}, c.PoolStats())
			require.NoError(t, c.Close())
			assert.Equal(t, PoolStats{Dials: 1}, c.PoolStats(), "Close closed the connection; counters stay")
		})
	}
	t.Run("Noop", func(t *testing.T) {
		c := newTestClient(t, "", Noop, Options{})
		_, _ = c.Get(bg, "k", nil)
		require.NoError(t, c.Set(bg, "k", []byte("v"), 0))
		assert.Equal(t, PoolStats{}, c.PoolStats())
	})
}

func TestPoolStatsDialErrors(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t)) // closed again: nothing listens
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newFaultClient(t, addr, proto, Options{ConnectTimeout: 2 * time.Second})
			res := guardedGet(t, c, bg, "k")
			var ce *ConnError
			require.ErrorAs(t, res.err, &ce)
			assert.Equal(t, PoolStats{Dials: 1, DialErrors: 1}, c.PoolStats())
		})
	}
}

// Discarded counts connections closed because of a fault. A request that
// times out or is cancelled costs its connection on Text and Binary; on
// Ultra a cancelled request leaves a sink to read its late reply and the
// shared connection stays, while a stall past Timeout fails it.
func TestPoolStatsDiscards(t *testing.T) {
	stall := func(proto Protocol) func(fc *fakeConn) {
		return func(fc *fakeConn) {
			if _, ok := fc.NextAs(proto); ok {
				fc.Stall()
			}
		}
	}
	hangUp := func(proto Protocol) func(fc *fakeConn) {
		return func(fc *fakeConn) {
			if _, ok := fc.NextAs(proto); ok {
				fc.Close()
			}
		}
	}
	for _, proto := range wireDrivers {
		pooled := !isPipelined(proto)
		cases := []struct {
			name               string
			script             func(fc *fakeConn)
			opts               Options
			ctx                func(srv *fakeServer) (context.Context, context.CancelFunc)
			discarded, timeout bool
		}{
			{"Timeout", stall(proto), Options{Timeout: 100 * time.Millisecond}, nil, true, true},
			{"context deadline", stall(proto), Options{Timeout: time.Minute}, func(*fakeServer) (context.Context, context.CancelFunc) {
				return context.WithTimeout(bg, 100*time.Millisecond)
			}, pooled, true},
			{"cancel", stall(proto), Options{Timeout: time.Minute}, func(srv *fakeServer) (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(bg)
				go func() {
					if srv.awaitRequest() { // else the Get's own hang guard fails
						cancel()
					}
				}()
				return ctx, cancel
			}, pooled, false},
			{"server hangs up", hangUp(proto), Options{Timeout: time.Minute}, nil, true, false},
		}
		for _, tc := range cases {
			t.Run(proto.String()+"/"+tc.name, func(t *testing.T) {
				srv := startFakeServer(t, tc.script)
				c := newFaultClient(t, srv.Addr, proto, tc.opts)
				ctx := bg
				if tc.ctx != nil {
					var cancel context.CancelFunc
					ctx, cancel = tc.ctx(srv)
					defer cancel()
				}
				res := guardedGet(t, c, ctx, "k")
				var ce *ConnError
				require.ErrorAs(t, res.err, &ce)
				want := PoolStats{Dials: 1, Open: 1}
				if tc.discarded {
					want.Discarded, want.Open = 1, 0
				}
				if tc.timeout {
					want.Timeouts = 1
				}
				got := c.PoolStats()
				got.Idle = 0 // an Ultra lane with a sink in flight is open, not idle
				assert.Equal(t, want, got)
			})
		}
	}
}

// Retries counts reads sent again because the idle connection they went
// out on had been closed by the server (memcached's idle_timeout).
func TestPoolStatsRetries(t *testing.T) {
	srv := startMemcached(t, "-o", "idle_timeout=1")
	clients := map[Protocol]*Client{}
	for _, proto := range wireDrivers {
		c := newFaultClient(t, srv.Addr, proto, Options{MaxConns: 1, Timeout: 2 * time.Second})
		mustSet(t, c, "k", "v") // one connection, now idle
		clients[proto] = c
	}
	waitStat(t, srv.Addr, "idle_kicks", int64(len(clients)), 15*time.Second)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := clients[proto]
			res := guardedGet(t, c, bg, "k")
			require.NoError(t, res.err)
			assert.Equal(t, PoolStats{Open: 1, Idle: 1, Dials: 2, Discarded: 1, Retries: 1}, c.PoolStats())
		})
	}
}

// Waits counts requests that found every connection busy (MaxConns 1, the
// one connection stalled) and waited; Ultra queues them on the shared
// connection instead.
func TestPoolStatsWaits(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if _, ok := fc.NextAs(proto); ok {
					fc.Stall()
				}
			})
			c := newFaultClient(t, srv.Addr, proto, Options{MaxConns: 1, Timeout: time.Minute})
			holdCtx, release := context.WithCancel(bg)
			held := make(chan error, 1)
			go func() {
				_, err := c.Get(holdCtx, "held", nil)
				held <- err
			}()
			srv.WaitRequest() // the one connection is busy

			ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
			defer cancel()
			res := guardedGet(t, c, ctx, "waiting")
			require.ErrorIs(t, res.err, context.DeadlineExceeded)
			st := c.PoolStats()
			assert.EqualValues(t, 1, st.Timeouts)
			if isPipelined(proto) {
				assert.Zero(t, st.Waits)
				assert.Zero(t, st.WaitTime)
			} else {
				assert.EqualValues(t, 1, st.Waits)
				assert.Positive(t, st.WaitTime)
				assert.LessOrEqual(t, st.WaitTime, hangGuard)
			}
			release()
			assert.ErrorIs(t, guarded(t, func() error { return <-held }), context.Canceled)
		})
	}
}
