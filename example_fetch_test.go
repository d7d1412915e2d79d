package ermc_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ermc-go/ermc"
)

// Fetch reads through the cache: on a miss it runs the loader, stores the
// value and returns it; concurrent Fetches of the key share that one load
// (on Meta, across processes too). This example runs on the Noop driver,
// which stores nothing, so every Fetch loads; against a memcached, make the
// client with ermc.New("127.0.0.1:11211", ermc.Options{Protocol: ermc.Meta})
// and a second Fetch of user:42 hits.
func ExampleClient_Fetch() {
	c, err := ermc.New("", ermc.Options{Protocol: ermc.Noop})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx := context.Background()

	loads := 0
	loadUser := func(ctx context.Context, dst []byte) ([]byte, error) {
		loads++ // the expensive query
		return append(dst, `{"id":42,"name":"Ada"}`...), nil
	}
	opts := ermc.FetchOptions{TTL: time.Hour, RefreshBefore: time.Minute}
	buf := make([]byte, 0, 256)
	v, err := c.Fetch(ctx, "user:42", buf[:0], opts, loadUser)
	fmt.Printf("%s %v loads=%d\n", v, err, loads)

	// A load error is returned, and nothing is stored.
	_, err = c.Fetch(ctx, "user:43", buf[:0], opts, func(ctx context.Context, dst []byte) ([]byte, error) {
		return dst, errors.New("database unavailable")
	})
	fmt.Println(err)

	// After user 42 changed: on Meta the next Fetch reloads while the
	// others keep the stale value; on the other drivers the key is
	// deleted. Noop holds nothing, so here it is a miss.
	err = c.Invalidate(ctx, "user:42", time.Minute)
	fmt.Println(errors.Is(err, ermc.ErrCacheMiss))
	// Output:
	// {"id":42,"name":"Ada"} <nil> loads=1
	// database unavailable
	// true
}
