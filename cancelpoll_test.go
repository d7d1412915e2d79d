package ermc

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A cancellable context is polled while a reply is awaited: the read
// deadline is at most cancelPoll ahead, and each time it runs out the
// driver looks at the context and reads on. These tests make replies
// arrive slower than that, in pieces, so that reads time out mid-reply,
// mid-value and (over TLS) mid-record, and require every reply intact.

// startPausingProxy forwards loopback connections to backend; what the
// backend sends back is cut in two and each half held for pause, so that
// a reply arrives in pieces, each later than the client's polling slice.
func startPausingProxy(t *testing.T, backend string, pause time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					for _, half := range [][]byte{buf[:n/2], buf[n/2 : n]} {
						select {
						case <-time.After(pause):
						case <-done:
							return
						}
						if _, werr := c.Write(half); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestCancelPollSlowReplies(t *testing.T) {
	s := startMemcached(t)
	addr := startPausingProxy(t, s.Addr, 3*cancelPoll)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestClient(t, addr, proto, Options{})
			checkSlowReplies(t, c, "poll:"+proto.String())
		})
	}
}

func TestCancelPollSlowRepliesTLS(t *testing.T) {
	ca := newTestCA(t, "ermc test CA")
	s := startMemcachedTLS(t, ca.issue(t, false, "127.0.0.1"))
	addr := startPausingProxy(t, s.Addr, 3*cancelPoll)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			cfg := &tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1"}
			c := newTestClient(t, addr, proto, Options{TLSConfig: cfg})
			checkSlowReplies(t, c, "polltls:"+proto.String())
		})
	}
}

// checkSlowReplies stores a small and a large value and reads them back
// with a cancellable context (never cancelled) and with a deadline far
// off: both must poll through the pauses and return the values intact.
func checkSlowReplies(t *testing.T, c *Client, prefix string) {
	small := []byte("a small value")
	large := make([]byte, 100<<10) // read straight into dst, across pauses
	for i := range large {
		large[i] = byte(i*31 + i>>9)
	}
	require.NoError(t, c.Set(bg, prefix+":small", small, 0))
	require.NoError(t, c.Set(bg, prefix+":large", large, 0))
	cancellable, cancel := context.WithCancel(bg)
	defer cancel()
	far, cancelFar := context.WithTimeout(bg, time.Hour)
	defer cancelFar()
	for _, ctx := range []context.Context{cancellable, far} {
		for i := 0; i < 2; i++ {
			v, err := c.Get(ctx, prefix+":small", nil)
			require.NoError(t, err)
			require.Equal(t, small, v)
			buf := make([]byte, 0, 8)
			v, err = c.Get(ctx, prefix+":large", buf)
			require.NoError(t, err)
			require.Equal(t, large, v)
			m := map[int]int{}
			require.NoError(t, c.GetMulti(ctx, []string{prefix + ":small", prefix + ":large"}, func(i int, v []byte) { m[i] = len(v) }))
			require.Equal(t, map[int]int{0: len(small), 1: len(large)}, m)
		}
	}
	st, err := c.Stats(bg)
	require.NoError(t, err)
	require.NotEmpty(t, st["pid"])
}

// deadlineRecorder is a connection whose first reads time out at once; it
// records the read deadline in effect at each read, and when the read
// began.
type deadlineRecorder struct {
	net.Conn
	cur   time.Time
	set   []time.Time
	at    []time.Time
	reads int
}

func (d *deadlineRecorder) SetReadDeadline(t time.Time) error {
	d.cur = t
	return nil
}

func (d *deadlineRecorder) Read(p []byte) (int, error) {
	d.reads++
	d.set, d.at = append(d.set, d.cur), append(d.at, time.Now())
	if d.reads == 4 {
		return copy(p, "x"), nil
	}
	return 0, os.ErrDeadlineExceeded
}

// The README's "a cancelled request waiting on a silent server returns
// within about 5 ms": while it waits for a cancellable context, a read
// never gets a deadline more than cancelPoll (and the rounding grain)
// ahead, and each time one runs out the context is looked at.
func TestCancelPollDeadlines(t *testing.T) {
	for _, ctxKind := range []string{"cancel", "deadline"} {
		rec := &deadlineRecorder{}
		c := newNetConn(rec, "test")
		ctx, cancel := context.WithCancel(bg)
		if ctxKind == "deadline" {
			ctx, cancel = context.WithTimeout(bg, time.Hour)
		}
		n, err := c.read(ctx, make([]byte, 8), deadlineAfter(time.Minute))
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Len(t, rec.set, 4, "%s: reads", ctxKind)
		for i, dl := range rec.set {
			require.LessOrEqual(t, dl.Sub(rec.at[i]), cancelPoll+deadlineGrain, "%s: read %d's deadline", ctxKind, i)
		}
		cancel()
		rec.reads = 0
		_, err = c.read(ctx, make([]byte, 8), deadlineAfter(time.Minute))
		require.Equal(t, errCtxDone, err, "%s: a read for an ended context stops at the first slice", ctxKind)
		require.Equal(t, 1, rec.reads)
	}
	// With a context that cannot end, the read waits for the request's
	// own deadline only.
	rec := &deadlineRecorder{}
	due := deadlineAfter(time.Minute)
	_, err := newNetConn(rec, "test").read(bg, make([]byte, 8), due)
	require.NoError(t, err)
	for _, dl := range rec.set {
		require.True(t, dl.Equal(due), "deadline %v, want the request's %v", dl, due)
	}
}
