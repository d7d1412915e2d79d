package ermc

import (
	"context"
	"errors"
	"net"
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
