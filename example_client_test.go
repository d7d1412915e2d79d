package ermc_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ermc-go/ermc"
)

// These examples run on the Noop driver, which needs no server: every read
// misses and every write succeeds (ermc's kill switch). With a memcached,
// make the client with ermc.New("127.0.0.1:11211", ermc.Options{}) and the
// same code reads what was stored.

// Get appends the value to a buffer the caller owns, so that a read in a
// loop allocates nothing. A miss is ErrCacheMiss; any other error is a
// fault worth reporting, and a malformed key is refused before sending.
func ExampleClient_Get() {
	c, err := ermc.New("", ermc.Options{Protocol: ermc.Noop})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx := context.Background()

	if err := c.Set(ctx, "greeting", []byte("hello"), time.Minute); err != nil {
		fmt.Println("set:", err)
		return
	}
	buf := make([]byte, 0, 64)
	for _, key := range []string{"greeting", "no spaces allowed"} {
		v, err := c.Get(ctx, key, buf[:0])
		switch {
		case err == nil:
			fmt.Printf("%s: %s\n", key, v)
		case errors.Is(err, ermc.ErrCacheMiss):
			fmt.Printf("%s: miss\n", key)
		case errors.Is(err, ermc.ErrMalformedKey):
			fmt.Printf("%s: malformed key, not sent\n", key)
		default:
			fmt.Printf("%s: fault: %v\n", key, err)
		}
	}
	// Output:
	// greeting: miss
	// no spaces allowed: malformed key, not sent
}

// GetMulti fetches several keys in one round trip. The callback gets the
// index of each key found (misses are not reported) and a value that is
// only valid during the call: copy it to keep it. Every key is checked
// before anything is sent.
func ExampleClient_GetMulti() {
	c, err := ermc.New("", ermc.Options{Protocol: ermc.Noop})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx := context.Background()

	keys := []string{"user:1", "user:2", "user:3"}
	values := make([][]byte, len(keys))
	err = c.GetMulti(ctx, keys, func(i int, v []byte) {
		values[i] = append(make([]byte, 0, len(v)), v...) // not nil, even if empty
	})
	if err != nil {
		fmt.Println("get multi:", err)
		return
	}
	for i, key := range keys {
		if values[i] == nil {
			fmt.Printf("%s: miss\n", key)
			continue
		}
		fmt.Printf("%s: %s\n", key, values[i])
	}

	err = c.GetMulti(ctx, []string{"user:4", "user 5"}, func(int, []byte) {})
	fmt.Println("with a malformed key:", errors.Is(err, ermc.ErrMalformedKey))
	// Output:
	// user:1: miss
	// user:2: miss
	// user:3: miss
	// with a malformed key: true
}
