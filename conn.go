package ermc

import (
	"context"
	"errors"
	"net"
	"os"
	"time"
)

// The socket layer every driver shares. A netConn owns one socket: its
// read buffer (fill, compaction), writes, deadlines and cancellation. The
// pooled drivers wrap it in a conn (one request at a time, below); the
// pipelined drivers' lanes (umframe.go) hold one each.

// readBufferSize is each connection's read buffer. Replies that fit are
// parsed in place; a value larger than that is read from the socket
// straight into its destination (see parseState.want).
const readBufferSize = 16 << 10

// maxRetainedWriteBuffer bounds the write buffer a connection keeps after a
// large Set, so one big value does not pin memory for the pool's lifetime.
const maxRetainedWriteBuffer = 256 << 10

// cancelPoll is how often a read on behalf of a cancellable context wakes
// to look at it. Polling (a read deadline at most this far ahead) costs no
// allocation, where arming context.AfterFunc per request costs two; a reply
// that comes within the slice, as nearly all do, costs nothing at all. A
// cancelled request waiting on a silent server leaves within this time.
const cancelPoll = 5 * time.Millisecond

// largeWrite is the write size from which a cancellable context arms an
// interrupt (context.AfterFunc, two allocations): smaller writes go into
// the socket buffer at once and cannot block on a stalled server.
const largeWrite = 64 << 10

// directReadMin is the smallest remainder of a value read from the socket
// straight into its destination; a smaller one comes through the read
// buffer, together with what follows it, in one read.
const directReadMin = 8 << 10

// errDiscardConn is returned by a parser when the reply was understood (the
// outcome is in the request) but the connection must not be reused.
var errDiscardConn = errors.New("ermc: discard connection")

// errConnEndedByServer is the fault of requests pipelined behind a reply
// after which the server ends the connection (CLIENT_ERROR, ERROR).
var errConnEndedByServer = errors.New("connection ended by the server's error reply to an earlier request")

// errCtxDone is netConn.read's report that it stopped because the caller's
// context ended (cancelled, or its deadline reached): the connection is
// intact, and the caller decides what that means for it.
var errCtxDone = errors.New("ermc: context done")

// parseFunc is a resumable reply parser (textparse.go, binframe.go): it
// consumes what it can of buf for r and reports whether the reply is
// complete. It never needs bytes it already consumed.
type parseFunc func(r *request, buf []byte) (n int, done bool, err error)

// codec is a wire format: how a request is encoded and its reply parsed.
type codec struct {
	appendRequest func(dst []byte, r *request) []byte
	parseReply    parseFunc
	// combineGets: plain gets queued together by a pipelined lane may go
	// out as one multi-key request (the text protocol's "get k1 k2 ...").
	combineGets bool
}

// netConn is one socket and its buffers.
type netConn struct {
	nc         net.Conn
	addr       string
	rbuf       []byte
	rpos, rend int
	got        int // bytes read since the last resetGot
	wbuf       []byte
	// The deadlines last given to nc: a request whose deadline did not
	// move (same deadlineGrain) skips the call.
	readDL, writeDL time.Time
	abort           func() // method value made once: interrupts a large write
}

func newNetConn(nc net.Conn, addr string) *netConn {
	c := &netConn{nc: nc, addr: addr, rbuf: make([]byte, readBufferSize), wbuf: make([]byte, 0, 1024)}
	c.abort = c.abortIO
	return c
}

func (c *netConn) close() { _ = c.nc.Close() }

// abortIO makes blocked I/O return at once; the connection is discarded
// afterwards.
func (c *netConn) abortIO() { _ = c.nc.SetDeadline(time.Unix(1, 0)) }

func (c *netConn) buffered() []byte { return c.rbuf[c.rpos:c.rend] }

func (c *netConn) consume(n int) {
	c.rpos += n
	if c.rpos == c.rend {
		c.rpos, c.rend = 0, 0
	}
}

func (c *netConn) setReadDeadline(dl time.Time) error {
	if dl.Equal(c.readDL) && !dl.IsZero() {
		return nil
	}
	c.readDL = dl
	return c.nc.SetReadDeadline(dl)
}

func (c *netConn) setWriteDeadline(dl time.Time) error {
	if dl.Equal(c.writeDL) && !dl.IsZero() {
		return nil
	}
	c.writeDL = dl
	return c.nc.SetWriteDeadline(dl)
}

// write sends b, all of it, by due (zero: no deadline). A write large
// enough to block is interrupted when a cancellable ctx ends.
func (c *netConn) write(ctx context.Context, b []byte, due time.Time) error {
	if err := c.setWriteDeadline(soonest(due, ctx)); err != nil {
		return &ConnError{Op: "write", Addr: c.addr, Err: err}
	}
	if len(b) >= largeWrite && ctx.Done() != nil {
		stop := context.AfterFunc(ctx, c.abort)
		defer stop()
	}
	if _, err := c.nc.Write(b); err != nil {
		if ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		return &ConnError{Op: "write", Addr: c.addr, Err: err}
	}
	return nil
}

// soonest is the sooner of due and ctx's deadline (zero: none).
func soonest(due time.Time, ctx context.Context) time.Time {
	if cd, ok := ctx.Deadline(); ok && (due.IsZero() || cd.Before(due)) {
		return cd
	}
	return due
}

// read reads once into p. It fails with a *ConnError when due passes (a
// stall: the connection is done for) or the socket fails, and with
// errCtxDone when ctx ends first: a cancellable context is looked at every
// cancelPoll while the read waits.
func (c *netConn) read(ctx context.Context, p []byte, due time.Time) (int, error) {
	ctxDL, hasCtxDL := ctx.Deadline()
	poll := ctx.Done() != nil
	var now time.Time
	if poll {
		now = time.Now()
	}
	for {
		dl := due
		if hasCtxDL && (dl.IsZero() || ctxDL.Before(dl)) {
			dl = ctxDL
		}
		if poll {
			if slice := deadlineFrom(now, cancelPoll); dl.IsZero() || slice.Before(dl) {
				dl = slice
			}
		}
		if err := c.setReadDeadline(dl); err != nil {
			return 0, &ConnError{Op: "read", Addr: c.addr, Err: err}
		}
		n, err := c.nc.Read(p)
		c.got += n
		if n > 0 || err == nil {
			return n, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, &ConnError{Op: "read", Addr: c.addr, Err: err}
		}
		now = time.Now()
		if ctx.Err() != nil || (hasCtxDL && !now.Before(ctxDL)) {
			return 0, errCtxDone
		}
		if !due.IsZero() && !now.Before(due) {
			return 0, &ConnError{Op: "read", Addr: c.addr, Err: err}
		}
		// A polling slice ran out: read on.
	}
}

// readFor reads more of r's reply (r may be nil: a reply not started):
// straight into the destination its parser asked for (parseState.want)
// when much of it is missing, else into the read buffer, first moving any
// unparsed tail to its front.
func (c *netConn) readFor(ctx context.Context, r *request, due time.Time) error {
	if r != nil && len(r.parse.want) >= directReadMin && c.rpos == c.rend {
		want := r.parse.want
		n, err := c.read(ctx, want, due)
		r.parse.want = want[n:]
		return err
	}
	if c.rpos == c.rend {
		c.rpos, c.rend = 0, 0
	} else if c.rend == len(c.rbuf) {
		if c.rpos == 0 {
			return protocolError("reply element larger than the read buffer", c.rbuf[:64])
		}
		c.rend = copy(c.rbuf, c.rbuf[c.rpos:c.rend])
		c.rpos = 0
	}
	n, err := c.read(ctx, c.rbuf[c.rend:], due)
	c.rend += n
	return err
}

// parseBuffered feeds the buffered bytes to parse for r.
func (c *netConn) parseBuffered(parse parseFunc, r *request) (done bool, err error) {
	n, done, err := parse(r, c.rbuf[c.rpos:c.rend])
	c.consume(n)
	return done, err
}

// ctxDoneError is the fault reported for a request whose context ended
// while it waited for I/O: it matches the context's error (and, for a
// deadline, os.ErrDeadlineExceeded, as a socket timeout would).
func ctxDoneError(ctx context.Context, op, addr string) error {
	err := ctx.Err()
	if err == nil || err == context.DeadlineExceeded {
		err = errors.Join(context.DeadlineExceeded, os.ErrDeadlineExceeded)
	}
	return &ConnError{Op: op, Addr: addr, Err: err}
}

// conn is one connection of a pooled driver: at most one request in flight.
type conn struct {
	*netConn
	d *dialer
}

func newConn(nc net.Conn, d *dialer) *conn {
	return &conn{netConn: newNetConn(nc, d.addr), d: d}
}

// deadline is when the request now starting must be done by: Timeout
// from now (zero: none).
func (cn *conn) deadline() time.Time { return deadlineAfter(cn.d.opts.Timeout) }

// roundTrip sends r and reads its reply. A nil error means the connection
// is in step and may be reused; r.err holds the operation's outcome. Any
// other error (I/O, timeout, cancellation, protocol) means the connection
// must be closed; errDiscardConn means the outcome in r.err is valid but the
// connection must still be closed.
func (cn *conn) roundTrip(ctx context.Context, r *request) error {
	due := cn.deadline()
	cn.got = 0
	cn.wbuf = cn.d.codec.appendRequest(cn.wbuf[:0], r)
	err := cn.write(ctx, cn.wbuf, due)
	if cap(cn.wbuf) > maxRetainedWriteBuffer {
		cn.wbuf = make([]byte, 0, 1024)
	}
	if err == nil {
		err = cn.readReply(ctx, r, due)
	}
	switch {
	case err == errCtxDone:
		return ctxDoneError(ctx, "read", cn.addr)
	case err != nil && err != errDiscardConn:
		return annotate(ctx, err)
	}
	return err
}

// annotate makes an I/O error say what the context said: a cancelled or
// expired context is matched by errors.Is as well as the net error.
func annotate(ctx context.Context, err error) error {
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

// readReply feeds the parser from the read buffer, reading more from the
// socket until the reply is complete.
func (cn *conn) readReply(ctx context.Context, r *request, due time.Time) error {
	parse := cn.d.codec.parseReply
	for {
		if cn.rpos < cn.rend || len(r.parse.want) == 0 {
			done, err := cn.parseBuffered(parse, r)
			if done && err == nil && cn.rpos != cn.rend {
				// One request in flight: bytes past its reply mean the
				// stream is out of step.
				return protocolError("unexpected bytes after reply", cn.buffered())
			}
			if done || err != nil {
				return err
			}
		}
		if err := cn.readFor(ctx, r, due); err != nil {
			return err
		}
	}
}
