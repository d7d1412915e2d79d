package ermc

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An Ultra lane dials for every request queued on it, so a caller whose
// context ends while the dial is under way leaves at once and the dial goes
// on for the others: they are written when it succeeds and fail with its
// error when it does not.

// heldDial dials addr only once release is closed (or fails with failWith),
// reporting on started when a dial begins.
func heldDial(addr string, release <-chan struct{}, failWith error) (dial func(context.Context, string, string) (net.Conn, error), started chan struct{}) {
	started = make(chan struct{}, 8)
	dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if failWith != nil {
			return nil, failWith
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return dial, started
}

// waitPending waits until n requests are queued on the client's only lane.
func waitPending(t *testing.T, c *Client, n int) {
	t.Helper()
	ln := c.drv.(*pipeDriver).lanes[0]
	deadline := time.Now().Add(hangGuard)
	for {
		ln.mu.Lock()
		queued := len(ln.pending)
		ln.mu.Unlock()
		if queued == n {
			return
		}
		require.True(t, time.Now().Before(deadline), "%d requests queued, want %d", queued, n)
		time.Sleep(time.Millisecond)
	}
}

func TestUltraDialOutlivesLeavingCaller(t *testing.T) {
	errRefused := errors.New("scripted dial failure")
	for _, tc := range []struct {
		name     string
		failWith error
	}{{"dial succeeds", nil}, {"dial fails", errRefused}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startMemcached(t)
			mustSet(t, newTestClient(t, srv.Addr, Text, Options{}), "k", "v")

			release := make(chan struct{})
			dial, started := heldDial(srv.Addr, release, tc.failWith)
			c := newFaultClient(t, srv.Addr, Ultra, Options{ConnectTimeout: time.Minute, DialContext: dial})

			// The first caller becomes the lane's writer and waits for the dial.
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			first := goGet(c, ctx, "k")
			<-started
			// A second caller queues behind it.
			second := goGet(c, bg, "k")
			waitPending(t, c, 2)

			cancel()
			res := await(t, first)
			require.ErrorIs(t, res.err, context.Canceled, "the first caller left while the dial went on")
			var ce *ConnError
			require.ErrorAs(t, res.err, &ce)

			close(release)
			res = await(t, second)
			if tc.failWith == nil {
				require.NoError(t, res.err)
				assert.Equal(t, "v", res.v, "the dial wrote the queued request")
			} else {
				require.ErrorIs(t, res.err, tc.failWith, "the queued request gets the dial's error")
				require.ErrorAs(t, res.err, &ce)
				assert.Equal(t, "dial", ce.Op)
			}
			assert.Len(t, started, 0, "one dial served both callers")
		})
	}
}

// Connect returns when its context ends; the dial it started still gives
// the lane its connection.
func TestUltraConnectLeavesDialRunning(t *testing.T) {
	srv := startMemcached(t)
	release := make(chan struct{})
	dial, started := heldDial(srv.Addr, release, nil)
	c := newFaultClient(t, srv.Addr, Ultra, Options{ConnectTimeout: time.Minute, DialContext: dial})

	ctx, cancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancel()
	err := guarded(t, func() error { return c.Connect(ctx) })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	<-started

	close(release)
	require.NoError(t, guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) }))
	assert.Len(t, started, 0, "the request used the connection the first dial made")
}
