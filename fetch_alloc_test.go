//go:build !race

package ermc

import (
	"context"
	"testing"
	"time"
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
		if err != nil {
			t.Fatal(err)
		}
		if loads != 0 {
			t.Fatalf("%d loads on a hit", loads)
		}
		if allocs != 0 {
			t.Errorf("Fetch hit: %v allocs/op, want 0", allocs)
		}
	}
}
