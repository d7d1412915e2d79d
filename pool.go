package ermc

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// connPool is the pooled drivers' (Text, Binary) bounded set of
// connections. A token in tokens stands for one open connection, idle or
// busy, so at most MaxConns exist.
type connPool struct {
	d      dialer
	idle   chan *conn
	tokens chan struct{}
	open   atomic.Int64 // connections dialed and not closed yet (PoolStats)
	closed atomic.Bool
}

func newConnPool(network, addr string, opts *Options, c codec, stats *poolCounters) *connPool {
	return &connPool{
		d:      dialer{network: network, addr: addr, opts: opts, codec: c, stats: stats},
		idle:   make(chan *conn, opts.MaxConns),
		tokens: make(chan struct{}, opts.MaxConns),
	}
}

// get returns an idle connection, or dials one while under MaxConns, or
// waits for one to come back, whichever is first; the context bounds the
// wait. reused tells an idle connection from a new one.
func (p *connPool) get(ctx context.Context) (cn *conn, reused bool, err error) {
	if p.closed.Load() {
		return nil, false, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		// Already cancelled or expired: send nothing.
		return nil, false, &ConnError{Op: "wait for connection", Addr: p.d.addr, Err: err}
	}
	select {
	case cn := <-p.idle:
		return cn, true, nil
	default:
	}
	select {
	case p.tokens <- struct{}{}:
		return p.dial(ctx)
	default:
	}
	// All MaxConns connections are busy: wait (PoolStats counts the wait,
	// and a dial when the wait ends with a connection closed).
	defer p.d.stats.waited(time.Now())
	select {
	case cn := <-p.idle:
		return cn, true, nil
	case p.tokens <- struct{}{}:
		return p.dial(ctx)
	case <-ctx.Done():
		return nil, false, &ConnError{Op: "wait for connection", Addr: p.d.addr, Err: ctx.Err()}
	}
}

// dial opens a connection under a token just taken, giving the token back
// if it fails.
func (p *connPool) dial(ctx context.Context) (*conn, bool, error) {
	c, err := p.d.dial(ctx)
	if err != nil {
		<-p.tokens
		return nil, false, err
	}
	p.open.Add(1)
	return &conn{netConn: c, d: &p.d}, false, nil
}

// put returns a healthy connection to the pool, or closes a broken one.
func (p *connPool) put(cn *conn, healthy bool) {
	if !healthy {
		p.d.stats.discarded.Add(1)
		p.discard(cn)
		return
	}
	p.idle <- cn // never blocks: at most MaxConns connections exist
	if p.closed.Load() {
		p.drain()
	}
}

func (p *connPool) discard(cn *conn) {
	cn.close()
	p.open.Add(-1)
	<-p.tokens
}

func (p *connPool) drain() {
	for {
		select {
		case cn := <-p.idle:
			p.discard(cn)
		default:
			return
		}
	}
}

// do runs one request on a pooled connection.
func (p *connPool) do(ctx context.Context, r *request) error {
	cn, reused, err := p.get(ctx)
	if err != nil {
		return err
	}
	err = cn.roundTrip(ctx, r)
	if reused && retryOnFresh(ctx, r, cn, err) {
		p.d.stats.retries.Add(1)
		cn, err = p.replace(ctx, cn)
		if err != nil {
			return err
		}
		err = cn.roundTrip(ctx, r)
	}
	p.put(cn, err == nil)
	if err == errDiscardConn {
		return nil
	}
	return err
}

// retryOnFresh reports whether a request that failed with err on a reused
// idle connection may be sent again on a new one. A server closes idle
// connections (memcached's idle_timeout, a restart, a proxy), and the
// client only finds out when it uses one: the write succeeds, the read
// sees EOF or a reset. That is safe to retry only for a read that changes
// nothing and only when no reply byte came back.
func retryOnFresh(ctx context.Context, r *request, cn *conn, err error) bool {
	return cn.got == 0 && retryableRead(ctx, r, err)
}

// retryableRead reports whether r, which failed with err on a connection
// that had sat idle before any byte of its reply came back, may be sent
// once more. gat is included: touching twice sets the same TTL. Writes,
// incr/decr, delete, touch and flush_all are never retried: the server may
// have carried the command out before the connection broke.
func retryableRead(ctx context.Context, r *request, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	switch r.op {
	case opGet, opGets, opGat, opGetMulti, opVersion, opStats:
	default:
		return false
	}
	var ce *ConnError // declared here: it escapes, and the success path must not allocate
	return errors.As(err, &ce) && !ce.Timeout()
}

// replace closes a broken connection and dials its replacement under the
// same token, so the retry never waits for another request to finish.
func (p *connPool) replace(ctx context.Context, old *conn) (*conn, error) {
	old.close()
	p.open.Add(-1)
	p.d.stats.discarded.Add(1)
	cn, _, err := p.dial(ctx)
	return cn, err
}

// connect makes sure one connection can be opened and authenticated.
func (p *connPool) connect(ctx context.Context) error {
	p.d.backoff.allowProbe()
	cn, _, err := p.get(ctx)
	if err != nil {
		return err
	}
	p.put(cn, true)
	return nil
}

func (p *connPool) conns() (open, idle int) {
	return int(p.open.Load()), len(p.idle)
}

func (p *connPool) close() error {
	p.closed.Store(true)
	p.drain()
	return nil
}
