//go:build !race

package ermc

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAllocsFetchHit: a Fetch hit allocates nothing on any driver, even
// with the loader written inline as a closure that captures and changes
// locals (Fetch never keeps it), with context.Background() and with a
// request context, and with a Tracer that does nothing.
func TestAllocsFetchHit(t *testing.T) {
	s := startMemcached(t)
	timeout, cancel := context.WithTimeout(bg, time.Hour)
	defer cancel()
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			testAllocsFetchHit(t, newTestClient(t, s.Addr, proto, Options{}), timeout)
		})
		t.Run(proto.String()+"/tracer", func(t *testing.T) {
			testAllocsFetchHit(t, newTestClient(t, s.Addr, proto, Options{Tracer: nopTracer{}}), timeout)
		})
	}
}

func testAllocsFetchHit(t *testing.T, c *Client, timeout context.Context) {
	mustSet(t, c, "alloc:fetch", "a value of a typical size, a few dozen bytes long")
	buf := make([]byte, 0, 256)
	opts := FetchOptions{TTL: time.Hour, RefreshBefore: time.Second}
	for _, ctx := range []context.Context{bg, timeout} {
		var err error
		loads := 0
		allocs := testing.AllocsPerRun(200, func() {
			suffix := "loaded"
			v, e := c.Fetch(ctx, "alloc:fetch", buf[:0], opts, func(ctx context.Context, dst []byte) ([]byte, error) {
				loads++
				return append(dst, suffix...), nil
			})
			if e == nil && len(v) == 0 {
				e = ErrCacheMiss
			}
			if e != nil && err == nil {
				err = e
			}
		})
		require.NoError(t, err)
		require.Zero(t, loads, "loads on a hit")
		assert.Zero(t, allocs, "Fetch hit: allocs/op")
	}
}
