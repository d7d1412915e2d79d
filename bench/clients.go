// Package bench compares ermc's drivers with github.com/bradfitz/gomemcache
// on the same memcached. It is its own module so that gomemcache never
// enters the library's go.mod.
package bench

import (
	"context"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/ermc-go/ermc"
)

// Client is the part of a memcache client the workloads use, so every
// workload is written once and run on every client alike.
type Client interface {
	Get(key string, dst []byte) ([]byte, error)
	Set(key string, value []byte) error
	GetMulti(keys []string) (hits int, err error)
	Close()
}

// Maker builds a fresh client for a server address.
type Maker struct {
	Name string
	New  func(addr string) (Client, error)
}

// Makers lists the clients under comparison: gomemcache first, as the
// baseline every ratio is taken against.
func Makers() []Maker {
	return []Maker{
		{"gomemcache", newGomemcache},
		{"ermc-text", ermcMaker(ermc.Text)},
		{"ermc-binary", ermcMaker(ermc.Binary)},
		{"ermc-ultra", ermcMaker(ermc.Ultra)},
	}
}

type gomemcacheClient struct{ c *memcache.Client }

func newGomemcache(addr string) (Client, error) {
	c := memcache.New(addr)
	// Its best configuration for many goroutines: enough idle connections
	// that it does not redial under load, and the same timeout as ermc.
	c.MaxIdleConns = 64
	c.Timeout = 3 * time.Second
	return gomemcacheClient{c}, nil
}

func (g gomemcacheClient) Get(key string, dst []byte) ([]byte, error) {
	it, err := g.c.Get(key)
	if err != nil {
		return dst, err
	}
	return append(dst, it.Value...), nil
}

func (g gomemcacheClient) Set(key string, value []byte) error {
	return g.c.Set(&memcache.Item{Key: key, Value: value})
}

func (g gomemcacheClient) GetMulti(keys []string) (int, error) {
	m, err := g.c.GetMulti(keys)
	return len(m), err
}

func (g gomemcacheClient) Close() { _ = g.c.Close() }

type ermcClient struct{ c *ermc.Client }

var bg = context.Background()

func ermcMaker(p ermc.Protocol) func(string) (Client, error) {
	return func(addr string) (Client, error) {
		c, err := ermc.New(addr, ermc.Options{Protocol: p})
		if err != nil {
			return nil, err
		}
		return ermcClient{c}, nil
	}
}

func (e ermcClient) Get(key string, dst []byte) ([]byte, error) { return e.c.Get(bg, key, dst) }

func (e ermcClient) Set(key string, value []byte) error { return e.c.Set(bg, key, value, 0) }

func (e ermcClient) GetMulti(keys []string) (int, error) {
	hits := 0
	err := e.c.GetMulti(bg, keys, func(int, []byte) { hits++ })
	return hits, err
}

func (e ermcClient) Close() { _ = e.c.Close() }
