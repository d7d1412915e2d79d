package ermc

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Fetch: a read-through cache that runs one load at a time per key. Within
// a client, callers of a key that is being loaded wait for that load
// (fetchtable.go). Across processes, on Meta, memcached hands out the
// right to load (a lease): a read with N<lease TTL> that misses creates an
// empty placeholder item and returns W to this caller alone, Z to the
// others; an item marked stale (md I) or near its end (R<secs>) returns W
// once and Z X (or Z) with its value to the others. Fetch runs above the
// driver interface: each step is an ordinary request, its flags in
// request.meta.

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
	fetchHit  fetchState = iota // a value to return: current, or stale while another caller reloads it
	fetchMiss                   // no value and no lease: load, then store it unless one appeared meanwhile
	fetchWon                    // Meta: this caller holds the lease: load, then store with its CAS id
	fetchWait                   // Meta: another caller holds the lease on a missing value
)

// lease is what a read that made its caller the loader holds (Meta): the
// CAS id to store with, and whether it is on an empty placeholder the miss
// created, rather than on a stale or expiring value.
type lease struct {
	cas         uint64
	placeholder bool
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
	op := c.trace(ctx, "fetch", key, 1)
	v, err := c.fetch(ctx, key, dst, opts, load)
	return v, op.end(err)
}

func (c *Client) fetch(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(context.Context, []byte) ([]byte, error)) ([]byte, error) {
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

// fetchRead reads key once, appending a value to return to dst. On Meta
// it asks for a lease: N (a miss creates a placeholder and wins) and R
// (a hit with less TTL left than RefreshBefore wins a reload).
func (c *Client) fetchRead(ctx context.Context, key string, dst []byte, opts FetchOptions) ([]byte, fetchState, lease, error) {
	r := getRequest()
	r.op, r.key, r.dst = opGet, key, dst
	leases := c.opts.Protocol == Meta
	if leases {
		r.op = opGets // the CAS id to store with
		r.meta.vivify = exptime(opts.LeaseTTL)
		if opts.RefreshBefore > 0 {
			r.meta.recache = exptime(opts.RefreshBefore)
		}
	}
	err := c.do(ctx, r)
	v, flags, ls, m := r.dst, r.resFlags, lease{cas: r.resCAS}, r.meta
	putRequest(r)
	if err != nil {
		if err = c.hideFault(err, ErrCacheMiss); errors.Is(err, ErrCacheMiss) {
			return dst, fetchMiss, lease{}, nil
		}
		return dst, fetchHit, lease{}, err
	}
	// memcached's placeholder is an empty value with flags 0. A stored
	// empty value looks the same: while its reload is out, its other
	// readers wait for the reload instead of returning it at once.
	ls.placeholder = len(v) == len(dst) && flags == 0
	switch {
	case !leases:
		return v, fetchHit, lease{}, nil
	case m.win:
		return dst, fetchWon, ls, nil
	case m.winTaken && ls.placeholder:
		return dst, fetchWait, lease{}, nil
	}
	return v, fetchHit, lease{}, nil
}

// fetchSlow obtains a value the first read did not return: one caller of
// this client leads, reading again and loading; the others wait for it.
func (c *Client) fetchSlow(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(context.Context, []byte) ([]byte, error), st fetchState, ls lease) ([]byte, error) {
	for {
		if st == fetchWon {
			// This caller loads whatever else happens in the client;
			// its callers wait for it unless one already waits on the
			// server, which will read what this load stores.
			return c.fetchLoad(ctx, key, dst, opts, load, c.fetches.lead(key), st, ls)
		}
		f, leader := c.fetches.join(key)
		if leader {
			return c.fetchLead(ctx, key, dst, opts, load, f, st)
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

// fetchLead obtains key for the callers waiting on f. After a miss it
// reads again at once, since a load may have been stored since this
// caller's first read (a leader that just finished); while another
// process holds the lease it reads again at a growing pace (fetchPoll)
// until the value is there, or the lease ends and this caller wins one.
func (c *Client) fetchLead(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(context.Context, []byte) ([]byte, error), f *fetchCall, st fetchState) ([]byte, error) {
	var poll fetchPoll
	defer poll.stop()
	for {
		if st == fetchWait {
			if err := poll.sleep(ctx); err != nil {
				err = fetchWaitError(key, err)
				c.fetches.finish(key, f, nil, err, true)
				return dst, err
			}
		}
		v, next, ls, err := c.fetchRead(ctx, key, dst, opts)
		switch {
		case err != nil:
			c.fetches.finish(key, f, nil, err, ctxEnded(ctx))
			return dst, err
		case next == fetchHit:
			c.fetches.finish(key, f, v[len(dst):], nil, false)
			return v, nil
		case next == fetchWait:
			st = next
			continue
		}
		return c.fetchLoad(ctx, key, dst, opts, load, f, next, ls)
	}
}

// fetchLoad runs load, stores its value, and finishes f (nil: no one can
// wait for this load). A lease it cannot store under is released at once.
func (c *Client) fetchLoad(ctx context.Context, key string, dst []byte, opts FetchOptions,
	load func(context.Context, []byte) ([]byte, error), f *fetchCall, st fetchState, ls lease) ([]byte, error) {
	loaded := false
	defer func() {
		if !loaded { // load panicked: release the key, then panic on
			c.fetchRelease(ctx, key, st, ls)
			c.fetches.finish(key, f, nil, errLoadPanicked, false)
		}
	}()
	v, err := load(ctx, dst)
	loaded = true
	if err == nil && len(v) < len(dst) {
		err = fmt.Errorf("ermc: fetch %s: the loader returned %d bytes, less than the %d of dst it must append to", quoteBounded([]byte(key)), len(v), len(dst))
	}
	if err != nil {
		c.fetchRelease(ctx, key, st, ls)
		c.fetches.finish(key, f, nil, err, ctxEnded(ctx))
		return dst, err
	}
	value := v[len(dst):]
	if err = c.fetchStore(ctx, key, value, opts, st, ls); err != nil {
		c.fetchRelease(ctx, key, st, ls)
	}
	c.fetches.finish(key, f, value, nil, false)
	return v, err
}

// fetchStore stores a loaded value unless another was stored since the
// read that made this caller load: with the lease's CAS id (Meta), else
// an add after a miss. Losing that race is no error: the caller still gets
// the value it loaded.
func (c *Client) fetchStore(ctx context.Context, key string, value []byte, opts FetchOptions, st fetchState, ls lease) error {
	var err error
	if st == fetchWon {
		err = c.store(ctx, opCAS, key, value, 0, opts.TTL, ls.cas)
	} else {
		err = c.store(ctx, opAdd, key, value, 0, opts.TTL, 0)
	}
	if errors.Is(err, ErrNotStored) || errors.Is(err, ErrCASConflict) || errors.Is(err, ErrCacheMiss) {
		return nil
	}
	return err
}

// fetchRelease gives up a lease without storing, so that the next Fetch
// in any process wins it at once instead of after LeaseTTL: a placeholder
// is deleted, a stale or expiring value marked stale again (readers keep
// it, the next one reloads). Each only while the item's CAS id is still
// the lease's, so nothing stored since is touched. Best effort, even when
// ctx has ended: if it fails, the lease ends with its TTL.
func (c *Client) fetchRelease(ctx context.Context, key string, st fetchState, ls lease) {
	if st != fetchWon {
		return
	}
	r := getRequest()
	r.op, r.key, r.cas = opDelete, key, ls.cas
	r.meta.invalidate = !ls.placeholder
	_ = c.do(context.WithoutCancel(ctx), r)
	putRequest(r)
}

// Invalidate marks key stale. On Meta (md I T) the item stays readable: the
// next Fetch reloads it while every other Fetch keeps getting the stale
// value, for at most staleTTL. On the other drivers it deletes key.
// ErrCacheMiss if absent.
//
// staleTTL 0 keeps the item's remaining TTL. If the Fetch that reloads an
// invalidated key never stores (its process dies), the stale value is
// served until staleTTL ends; then the next Fetch loads.
func (c *Client) Invalidate(ctx context.Context, key string, staleTTL time.Duration) error {
	if c.opts.Protocol != Meta {
		return c.Delete(ctx, key)
	}
	op := c.trace(ctx, "delete", key, 1)
	if err := c.checkKey(key); err != nil {
		return op.end(err)
	}
	r := getRequest()
	r.op, r.key, r.exptime = opDelete, key, exptime(staleTTL)
	r.meta.invalidate = true
	err := c.do(ctx, r)
	putRequest(r)
	return op.end(c.hideFault(err, ErrCacheMiss))
}
