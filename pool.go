package ermc

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// connPool is the pooled drivers' (Text, Binary) bounded set of
// connections: at most MaxConns open, idle or busy.
//
// Idle connections are reused last in, first out: the connection just
// returned is the next one taken, so a light or bursty load runs on the
// few connections it needs and the others stay idle, however many a
// burst opened. (First in, first out spreads the requests over every open
// connection: each waits longest between uses, so its deadline moves on
// every request, and every memcached worker thread the connections are
// spread over wakes for its share of them.) Callers that find MaxConns
// connections busy wait first in, first out, and a connection put back
// goes straight to the longest waiter.
type connPool struct {
	d   dialer
	max int

	mu      sync.Mutex
	idle    []*conn   // a stack: the top is the connection used last
	open    int       // connections open or being dialled, idle or busy
	waiters []*waiter // oldest first
	spare   []*waiter // reused, so that waiting allocates nothing
	closed  bool
}

// waiter is a caller waiting for a connection; it receives one grant.
type waiter struct{ ch chan grant }

// grant is what a waiter receives: a connection, or the place of one that
// was closed (the waiter dials), or the news that the pool closed.
type grant struct {
	cn     *conn
	closed bool
}

func newConnPool(network, addr string, opts *Options, c codec, stats *poolCounters) *connPool {
	return &connPool{
		d:   dialer{network: network, addr: addr, opts: opts, codec: c, stats: stats},
		max: opts.MaxConns,
	}
}

// get returns an idle connection, or dials one while under MaxConns, or
// waits for one to come back, whichever is first; the context bounds the
// wait. reused tells an idle connection from a new one.
func (p *connPool) get(ctx context.Context) (cn *conn, reused bool, err error) {
	if err := ctx.Err(); err != nil {
		// Already cancelled or expired: send nothing.
		return nil, false, p.waitError(err)
	}
	p.mu.Lock()
	switch {
	case p.closed:
		p.mu.Unlock()
		return nil, false, ErrClosed
	case len(p.idle) > 0:
		cn := p.pop()
		p.mu.Unlock()
		return cn, true, nil
	case p.open < p.max:
		p.open++
		p.mu.Unlock()
		return p.dial(ctx)
	}
	w := p.enqueue()
	p.mu.Unlock()
	defer p.d.stats.waited(time.Now())

	select {
	case g := <-w.ch:
		p.recycle(w)
		if err := ctx.Err(); err != nil {
			// Granted as the context ended: pass the grant on, send nothing.
			p.pass(g)
			return nil, false, p.waitError(err)
		}
		switch {
		case g.closed:
			return nil, false, ErrClosed
		case g.cn != nil:
			return g.cn, true, nil
		}
		return p.dial(ctx)
	case <-ctx.Done():
	}
	p.mu.Lock()
	if p.dequeue(w) {
		p.spare = append(p.spare, w)
		p.mu.Unlock()
		return nil, false, p.waitError(ctx.Err())
	}
	p.mu.Unlock()
	// A grant was sent (under mu) before the context's end was seen: it
	// is in the channel; pass it on.
	g := <-w.ch
	p.recycle(w)
	p.pass(g)
	return nil, false, p.waitError(ctx.Err())
}

func (p *connPool) waitError(err error) error {
	return &ConnError{Op: "wait for connection", Addr: p.d.addr, Err: err}
}

// dial opens a connection in a place already counted in open.
func (p *connPool) dial(ctx context.Context) (*conn, bool, error) {
	c, err := p.d.dial(ctx)
	if err != nil {
		p.vacate()
		return nil, false, err
	}
	return &conn{netConn: c, d: &p.d}, false, nil
}

// pop takes the connection used last; mu held, idle not empty.
func (p *connPool) pop() *conn {
	n := len(p.idle) - 1
	cn := p.idle[n]
	p.idle[n] = nil
	p.idle = p.idle[:n]
	return cn
}

// enqueue adds a waiter at the back; mu held.
func (p *connPool) enqueue() *waiter {
	var w *waiter
	if n := len(p.spare); n > 0 {
		w = p.spare[n-1]
		p.spare = p.spare[:n-1]
	} else {
		w = &waiter{ch: make(chan grant, 1)}
	}
	p.waiters = append(p.waiters, w)
	return w
}

// dequeue removes w if it is still waiting; mu held.
func (p *connPool) dequeue(w *waiter) bool {
	i := slices.Index(p.waiters, w)
	if i < 0 {
		return false
	}
	p.waiters = slices.Delete(p.waiters, i, i+1)
	return true
}

// next removes and returns the longest waiter, or nil; mu held.
func (p *connPool) next() *waiter {
	if len(p.waiters) == 0 {
		return nil
	}
	w := p.waiters[0]
	p.waiters = slices.Delete(p.waiters, 0, 1)
	return w
}

// recycle keeps a waiter whose grant was received for the next wait.
func (p *connPool) recycle(w *waiter) {
	p.mu.Lock()
	p.spare = append(p.spare, w)
	p.mu.Unlock()
}

// pass hands on a grant its waiter will not use.
func (p *connPool) pass(g grant) {
	switch {
	case g.cn != nil:
		p.put(g.cn, true)
	case !g.closed:
		p.vacate()
	}
}

// put returns a healthy connection to the pool (to the longest waiter, or
// on top of the idle stack), or closes a broken one.
func (p *connPool) put(cn *conn, healthy bool) {
	if !healthy {
		p.d.stats.discarded.Add(1)
		cn.close()
		p.vacate()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.open--
		p.mu.Unlock()
		cn.close()
		return
	}
	if w := p.next(); w != nil {
		w.ch <- grant{cn: cn} // never blocks: one grant per wait, buffered
		p.mu.Unlock()
		return
	}
	p.idle = append(p.idle, cn)
	p.mu.Unlock()
}

// vacate frees the place of a connection that was closed or never opened:
// the longest waiter gets it and dials, else open shrinks.
func (p *connPool) vacate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w := p.next(); w != nil {
		w.ch <- grant{} // no waiter is left once the pool is closed
		return
	}
	p.open--
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

// replace closes a broken connection and dials its replacement in the
// same place, so the retry never waits for another request to finish.
func (p *connPool) replace(ctx context.Context, old *conn) (*conn, error) {
	p.d.stats.discarded.Add(1)
	old.close()
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

// conns counts the connections open (or being dialed) and idle.
func (p *connPool) conns() (open, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open, len(p.idle)
}

// close closes the idle connections and tells every waiter the pool is
// closed (they sent nothing); connections in use are closed when they
// come back.
func (p *connPool) close() error {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	for w := p.next(); w != nil; w = p.next() {
		w.ch <- grant{closed: true}
	}
	p.mu.Unlock()
	for _, cn := range idle {
		cn.close()
	}
	return nil
}
