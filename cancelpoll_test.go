package ermc

import (
	"context"
	"crypto/tls"
	"io"
	"net"
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
