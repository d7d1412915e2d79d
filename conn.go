package ermc

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// readBufferSize is each connection's read buffer. Values that fit in it
// (with their header) are handed over without a copy; larger ones are
// gathered in the request's scratch buffer.
const readBufferSize = 16 << 10

// maxRetainedWriteBuffer bounds the write buffer a connection keeps after a
// large Set, so one big value does not pin memory for the pool's lifetime.
const maxRetainedWriteBuffer = 256 << 10

// errDiscardConn is returned by a parser when the reply was understood (the
// outcome is in the request) but the connection must not be reused.
var errDiscardConn = errors.New("ermc: discard connection")

// codec is the wire format of a pooled driver: one request, one reply.
type codec struct {
	appendRequest func(dst []byte, r *request) []byte
	parseReply    func(r *request, buf []byte) (n int, done bool, err error)
}

// dialer opens authenticated connections to one server.
type dialer struct {
	network, addr string
	opts          *Options
	codec         codec
}

// splitAddr turns a user address into a network and address: a path (or
// "unix:" prefix) is a unix socket, anything else TCP host:port.
func splitAddr(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", path
	}
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "./") {
		return "unix", addr
	}
	return "tcp", addr
}

// dialRaw opens the transport (TCP, unix, TLS or the user's dialer) within
// ConnectTimeout and the context, and sets Nagle as configured.
func (d *dialer) dialRaw(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.ConnectTimeout)
	defer cancel()
	var nc net.Conn
	var err error
	if d.opts.DialContext != nil {
		nc, err = d.opts.DialContext(ctx, d.network, d.addr)
	} else {
		var nd net.Dialer
		nc, err = nd.DialContext(ctx, d.network, d.addr)
	}
	if err != nil {
		return nil, &ConnError{Op: "dial", Addr: d.addr, Err: err}
	}
	if tcp, ok := nc.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(!d.opts.Nagle)
	}
	if d.opts.TLSConfig != nil {
		cfg := d.opts.TLSConfig
		if cfg.ServerName == "" && d.network == "tcp" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(d.addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, &ConnError{Op: "tls handshake", Addr: d.addr, Err: err}
		}
		nc = tc
	}
	return nc, nil
}

// dial opens a connection ready for requests: transport, then
// authentication when a username is configured, all within
// ConnectTimeout (the auth exchange also within Timeout, like any
// request).
func (d *dialer) dial(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.ConnectTimeout)
	defer cancel()
	nc, err := d.dialRaw(ctx)
	if err != nil {
		return nil, err
	}
	cn := newConn(nc, d)
	if d.opts.Username != "" {
		if err := cn.authenticate(ctx); err != nil {
			cn.close()
			return nil, err
		}
	}
	return cn, nil
}

// conn is one connection of a pooled driver: at most one request in flight.
type conn struct {
	nc         net.Conn
	d          *dialer
	rbuf       []byte
	rpos, rend int
	wbuf       []byte
	interrupt  func() // method value made once: context.AfterFunc callback
	// deadlineSet is the deadline last given to nc, so that a request whose
	// deadline did not move (same coarse clock tick) skips the call.
	deadlineSet time.Time
	got         int // reply bytes read in the current round trip
}

func newConn(nc net.Conn, d *dialer) *conn {
	cn := &conn{nc: nc, d: d, rbuf: make([]byte, readBufferSize), wbuf: make([]byte, 0, 1024)}
	cn.interrupt = cn.abortIO
	return cn
}

// abortIO runs when a request's context is cancelled: it makes the blocked
// read or write return at once. The connection is discarded afterwards.
func (cn *conn) abortIO() {
	_ = cn.nc.SetDeadline(time.Unix(1, 0))
}

func (cn *conn) close() { _ = cn.nc.Close() }

// authenticate runs the auth exchange on a new connection. The password
// never reaches the caller inside an error: a server that echoes the
// credentials back (a misconfigured or hostile endpoint) gets its message
// masked.
func (cn *conn) authenticate(ctx context.Context) error {
	return redactSecret(cn.authExchange(ctx), cn.d.opts.Password)
}

func (cn *conn) authExchange(ctx context.Context) error {
	r := getRequest()
	defer putRequest(r)
	r.op = opAuth
	r.user, r.pass = cn.d.opts.Username, cn.d.opts.Password
	err := cn.roundTrip(ctx, r)
	if err == errDiscardConn && r.err == nil {
		// Authenticated, but the context fired during the exchange and
		// its interrupt may still touch the connection: not usable.
		return &ConnError{Op: "auth", Addr: cn.d.addr, Err: ctx.Err()}
	}
	if err != nil && err != errDiscardConn {
		return err
	}
	if r.err != nil {
		return authError(r.err)
	}
	return nil
}

// authError wraps a refusal of credentials so it matches ErrAuth while the
// server's own message stays reachable.
func authError(err error) error {
	if errors.Is(err, ErrAuth) {
		return err
	}
	return &faultError{as: ErrAuth, fault: err}
}

// deadline is the sooner of the per-request Timeout (on the coarse clock)
// and the context's.
func (cn *conn) deadline(ctx context.Context) time.Time {
	dl := deadlineAfter(cn.d.opts.Timeout)
	if cd, ok := ctx.Deadline(); ok && (dl.IsZero() || cd.Before(dl)) {
		dl = cd
	}
	return dl
}

// setDeadline sets the connection's deadline when it moved: on the coarse
// clock it moves once per tick, not once per request.
func (cn *conn) setDeadline(dl time.Time) error {
	if dl.Equal(cn.deadlineSet) && !cn.deadlineSet.IsZero() {
		return nil
	}
	cn.deadlineSet = dl
	return cn.nc.SetDeadline(dl)
}

// roundTrip sends r and reads its reply. A nil error means the connection
// is in step and may be reused; r.err holds the operation's outcome. Any
// other error (I/O, timeout, cancellation, protocol) means the connection
// must be closed; errDiscardConn means the outcome in r.err is valid but the
// connection must still be closed.
func (cn *conn) roundTrip(ctx context.Context, r *request) error {
	if err := cn.setDeadline(cn.deadline(ctx)); err != nil {
		return &ConnError{Op: "write", Addr: cn.d.addr, Err: err}
	}
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, cn.interrupt)
	}
	err := cn.exchange(r)
	if stop != nil && !stop() {
		// The interrupt ran or is running: the deadline is poisoned, and
		// it may still touch this conn, so the conn cannot be reused.
		if err == nil || err == errDiscardConn {
			return errDiscardConn
		}
	}
	if err != nil && err != errDiscardConn {
		err = cn.annotate(ctx, err)
	}
	return err
}

// annotate makes an I/O error say what the context said: a cancelled or
// expired context is matched by errors.Is as well as the net error.
func (cn *conn) annotate(ctx context.Context, err error) error {
	var ce *ConnError
	if !errors.As(err, &ce) {
		return err
	}
	cerr := ctx.Err()
	if cerr == nil && ce.Timeout() {
		// The socket deadline was the context's own and fired before the
		// context's timer did: the context has expired all the same.
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
			cerr = context.DeadlineExceeded
		}
	}
	if cerr != nil && !errors.Is(err, cerr) {
		ce.Err = errors.Join(cerr, ce.Err)
	}
	return err
}

// exchange writes r and parses its reply from the connection.
func (cn *conn) exchange(r *request) error {
	cn.got = 0
	cn.wbuf = cn.d.codec.appendRequest(cn.wbuf[:0], r)
	_, err := cn.nc.Write(cn.wbuf)
	if cap(cn.wbuf) > maxRetainedWriteBuffer {
		cn.wbuf = make([]byte, 0, 1024)
	}
	if err != nil {
		return &ConnError{Op: "write", Addr: cn.d.addr, Err: err}
	}
	return cn.readReply(r)
}

// readReply feeds the parser from the read buffer, reading more from the
// socket until the reply is complete.
func (cn *conn) readReply(r *request) error {
	parse := cn.d.codec.parseReply
	for {
		if cn.rpos < cn.rend {
			n, done, err := parse(r, cn.rbuf[cn.rpos:cn.rend])
			cn.rpos += n
			if done && err == nil && cn.rpos != cn.rend {
				// One request in flight: bytes past its reply mean the
				// stream is out of step.
				return protocolError("unexpected bytes after reply", cn.rbuf[cn.rpos:cn.rend])
			}
			if done || err != nil {
				return err
			}
		}
		if err := cn.fill(); err != nil {
			return err
		}
	}
}

// fill reads more bytes into the buffer, first moving any unparsed tail to
// its front.
func (cn *conn) fill() error {
	if cn.rpos == cn.rend {
		cn.rpos, cn.rend = 0, 0
	} else if cn.rend == len(cn.rbuf) {
		if cn.rpos == 0 {
			return protocolError("reply element larger than the read buffer", cn.rbuf[:64])
		}
		cn.rend = copy(cn.rbuf, cn.rbuf[cn.rpos:cn.rend])
		cn.rpos = 0
	}
	n, err := cn.nc.Read(cn.rbuf[cn.rend:])
	cn.rend += n
	cn.got += n
	if err != nil && n == 0 {
		return &ConnError{Op: "read", Addr: cn.d.addr, Err: err}
	}
	return nil
}

// connPool is the pooled drivers' (Text, Binary) bounded set of
// connections. A token in tokens stands for one open connection, idle or
// busy, so at most MaxConns exist.
type connPool struct {
	d      dialer
	idle   chan *conn
	tokens chan struct{}
	closed atomic.Bool
}

func newConnPool(network, addr string, opts *Options, c codec) *connPool {
	return &connPool{
		d:      dialer{network: network, addr: addr, opts: opts, codec: c},
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
	case cn := <-p.idle:
		return cn, true, nil
	case p.tokens <- struct{}{}:
		cn, err := p.d.dial(ctx)
		if err != nil {
			<-p.tokens
			return nil, false, err
		}
		return cn, false, nil
	case <-ctx.Done():
		return nil, false, &ConnError{Op: "wait for connection", Addr: p.d.addr, Err: ctx.Err()}
	}
}

// put returns a healthy connection to the pool, or closes a broken one.
func (p *connPool) put(cn *conn, healthy bool) {
	if !healthy {
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
	cn, err := p.d.dial(ctx)
	if err != nil {
		<-p.tokens
		return nil, err
	}
	return cn, nil
}

// connect makes sure one connection can be opened and authenticated.
func (p *connPool) connect(ctx context.Context) error {
	cn, _, err := p.get(ctx)
	if err != nil {
		return err
	}
	p.put(cn, true)
	return nil
}

func (p *connPool) close() error {
	p.closed.Store(true)
	p.drain()
	return nil
}
