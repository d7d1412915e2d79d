package ermc

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Fetch: a read-through cache that runs one load at a time per key. Within
// a client, callers of a key that is being loaded wait for that load
// (fetchtable.go). It runs above the driver interface: each step is an
// ordinary request.

// DefaultLeaseTTL is FetchOptions.LeaseTTL's default.
const DefaultLeaseTTL = 10 * time.Second

// FetchOptions tunes Fetch.
type FetchOptions struct {
	TTL           time.Duration // lifetime of a loaded value; 0: no expiry
	RefreshBefore time.Duration // Meta: a hit with less TTL left than this makes one caller reload while the others keep the current value; 0: reload only on a miss
	LeaseTTL      time.Duration // how long one caller may take to load before another may try; default 10s
}

// fetchState is what one read of Fetch found.
type fetchState uint8

const (
	fetchHit  fetchState = iota // a value to return
	fetchMiss                   // no value: load, then store it unless one appeared meanwhile
)

// lease is what a read that makes its caller the loader holds: the CAS id
// to store with.
type lease struct {
	cas uint64
}

// Fetch returns the value of key appended to dst, loading it with load when
// it is missing (or due for refresh) so that one caller at a time runs load
// for a key: within the process on every driver (concurrent callers of one
// key share one load and its result), and across every process on Meta
// (memcached's lease: mg N/R flags, W/Z/X return flags). A hit allocates
// nothing.
//
// load appends the value to its dst and returns the result, as append
// does; it runs with the context of the caller that runs it. Its value is
// returned to that caller and, copied, to every caller of this client that
// waited for it, and is stored with opts.TTL as Set would store it
// (compressed above CompressThreshold), unless another value was stored
// meanwhile. A load error is returned to the caller that ran it and to its
// waiters, and nothing is stored. A waiter whose context ends returns its
// context's error; a caller whose context ends while it runs load lets a
// waiter load instead. If the value was loaded but storing it failed,
// Fetch returns the value and the store's error.
//
// A read fault is returned without loading (loading on every fault would
// pass an outage on to the backend), unless ErrorAsMiss reads it as a miss.
func (c *Client) Fetch(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(ctx context.Context, dst []byte) ([]byte, error)) ([]byte, error) {
	if err := c.checkKey(key); err != nil {
		return dst, err
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	v, st, ls, err := c.fetchRead(ctx, key, dst, opts)
	if err != nil || st == fetchHit {
		return v, err
	}
	return c.fetchSlow(ctx, key, dst, opts, load, st, ls)
}

// fetchRead reads key once, appending a value to return to dst.
func (c *Client) fetchRead(ctx context.Context, key string, dst []byte, opts FetchOptions) ([]byte, fetchState, lease, error) {
	r := getRequest()
	r.op, r.key, r.dst = opGet, key, dst
	err := c.do(ctx, r)
	v := r.dst
	putRequest(r)
	if err != nil {
		if err = c.hideFault(err, ErrCacheMiss); errors.Is(err, ErrCacheMiss) {
			return dst, fetchMiss, lease{}, nil
		}
		return dst, fetchHit, lease{}, err
	}
	return v, fetchHit, lease{}, nil
}

// fetchSlow obtains a value the first read did not return: one caller of
// this client leads, reading again and loading; the others wait for it.
func (c *Client) fetchSlow(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(context.Context, []byte) ([]byte, error), st fetchState, ls lease) ([]byte, error) {
	for {
		f, leader := c.fetches.join(key)
		if leader {
			return c.fetchLead(ctx, key, dst, opts, load, f)
		}
		v, again, err := c.fetches.wait(ctx, key, f, dst)
		if !again {
			return v, err
		}
		// The leader gave up (its context ended): read again, and
		// perhaps lead. Each round waited for a leader, so this loop
		// ends with ctx at the latest.
		if v, st, ls, err = c.fetchRead(ctx, key, dst, opts); err != nil || st == fetchHit {
			return v, err
		}
	}
}

// fetchLead obtains key for the callers waiting on f: it reads again,
// since a load may have been stored since this caller's first read (a
// leader that just finished), and loads when it still has to.
func (c *Client) fetchLead(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(context.Context, []byte) ([]byte, error), f *fetchCall) ([]byte, error) {
	v, st, ls, err := c.fetchRead(ctx, key, dst, opts)
	switch {
	case err != nil:
		c.fetches.finish(key, f, nil, err, ctxEnded(ctx))
		return dst, err
	case st == fetchHit:
		c.fetches.finish(key, f, v[len(dst):], nil, false)
		return v, nil
	}
	return c.fetchLoad(ctx, key, dst, opts, load, f, st, ls)
}

// fetchLoad runs load, stores its value, and finishes f (nil: no one can
// wait for this load).
func (c *Client) fetchLoad(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(context.Context, []byte) ([]byte, error), f *fetchCall, st fetchState, ls lease) ([]byte, error) {
	loaded := false
	defer func() {
		if !loaded { // load panicked: release the key, then panic on
			c.fetches.finish(key, f, nil, errLoadPanicked, false)
		}
	}()
	v, err := load(ctx, dst)
	loaded = true
	if err == nil && len(v) < len(dst) {
		err = fmt.Errorf("ermc: fetch %s: the loader returned %d bytes, less than the %d of dst it must append to", quoteBounded([]byte(key)), len(v), len(dst))
	}
	if err != nil {
		c.fetches.finish(key, f, nil, err, ctxEnded(ctx))
		return dst, err
	}
	value := v[len(dst):]
	err = c.fetchStore(ctx, key, value, opts, st, ls)
	c.fetches.finish(key, f, value, nil, false)
	return v, err
}

// fetchStore stores a loaded value unless another was stored since the
// read that made this caller load: an add after a miss. Losing that race
// is no error: the caller still gets the value it loaded.
func (c *Client) fetchStore(ctx context.Context, key string, value []byte, opts FetchOptions, st fetchState, ls lease) error {
	err := c.store(ctx, opAdd, key, value, 0, opts.TTL, 0)
	if errors.Is(err, ErrNotStored) || errors.Is(err, ErrCASConflict) || errors.Is(err, ErrCacheMiss) {
		return nil
	}
	return err
}

// Invalidate marks key stale. On Meta (md I T) the item stays readable: the
// next Fetch reloads it while every other Fetch keeps getting the stale
// value, for at most staleTTL. On the other drivers it deletes key.
// ErrCacheMiss if absent.
func (c *Client) Invalidate(ctx context.Context, key string, staleTTL time.Duration) error {
	return c.Delete(ctx, key)
}
