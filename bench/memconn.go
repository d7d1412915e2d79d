package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// MemAddr is the address clients are given on the in-memory transport. No
// socket is ever opened: the transport's DialContext ignores it.
const MemAddr = "127.0.0.1:11211"

// Transport modes of the in-memory connection (BenchmarkMemTransport
// measures them against each other):
//
//   - MemInline: the connection is the server. Write parses the request
//     and appends the reply to the connection's read buffer before it
//     returns; Read takes from that buffer and blocks only when it is
//     empty (Ultra's reader between batches). No goroutine handoff, so
//     what is measured is the client's CPU cost plus a small, equal
//     parsing cost.
//   - MemGoroutine: the same buffers, but a responder goroutine per
//     connection parses and answers, as a server process would: every
//     request costs two goroutine wake-ups.
//   - MemPipe: net.Pipe with a responder goroutine on the far end; net.Pipe
//     is synchronous (every Write waits for a Read), which is slowest.
const (
	MemInline    = "inline"
	MemGoroutine = "goroutine"
	MemPipe      = "pipe"
)

// MemTransport dials in-process connections to one MemStore.
type MemTransport struct {
	Store *MemStore
	Mode  string // MemInline (default), MemGoroutine or MemPipe
}

// NewMemTransport returns a transport of the given mode over a fresh store.
func NewMemTransport(mode string) *MemTransport {
	return &MemTransport{Store: NewMemStore(), Mode: mode}
}

// DialContext has the signature ermc.Options.DialContext and
// memcache.Client.DialContext expect.
func (t *MemTransport) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch t.Mode {
	case "", MemInline:
		return newMemConn(t.Store, false), nil
	case MemGoroutine:
		return newMemConn(t.Store, true), nil
	case MemPipe:
		cli, srv := net.Pipe()
		go servePipe(srv, t.Store)
		return cli, nil
	}
	return nil, fmt.Errorf("unknown in-memory transport mode %q", t.Mode)
}

func servePipe(nc net.Conn, s *MemStore) {
	defer nc.Close()
	r := responder{s: s}
	buf := make([]byte, 16<<10)
	var out []byte
	for {
		n, err := nc.Read(buf)
		if n > 0 {
			out = r.feed(buf[:n], out[:0])
			if len(out) > 0 {
				if _, werr := nc.Write(out); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

// memConn is a full-duplex in-memory net.Conn whose far end is a
// responder over a MemStore. Writes never block; reads block only while
// there is nothing to read. Deadlines are honoured by blocked reads
// (Ultra's stall detector, ermc's cancellation interrupt).
type memConn struct {
	mu      sync.Mutex
	resp    responder
	out     []byte // reply bytes not yet read, from off
	off     int
	closed  bool
	waiting bool // a Read is blocked on ready
	rdl     time.Time
	ready   chan struct{} // cap 1: something changed for a blocked Read
	timer   *time.Timer   // made on the first blocked Read with a deadline

	// goroutine mode
	async   bool
	pending []byte
	work    chan struct{}
}

func newMemConn(s *MemStore, async bool) *memConn {
	c := &memConn{resp: responder{s: s}, ready: make(chan struct{}, 1), async: async}
	if async {
		c.work = make(chan struct{}, 1)
		go c.serve()
	}
	return c
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if c.async {
		c.pending = append(c.pending, p...)
		signal(c.work) // under mu: Close closes work under mu
		c.mu.Unlock()
		return len(p), nil
	}
	c.out = c.resp.feed(p, c.out)
	wake := c.waiting && len(c.out) > c.off
	c.mu.Unlock()
	if wake {
		signal(c.ready)
	}
	return len(p), nil
}

// serve is the responder goroutine of the goroutine mode.
func (c *memConn) serve() {
	for range c.work {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		c.out = c.resp.feed(c.pending, c.out)
		c.pending = c.pending[:0]
		wake := c.waiting && len(c.out) > c.off
		c.mu.Unlock()
		if wake {
			signal(c.ready)
		}
	}
}

func (c *memConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	for {
		if c.off < len(c.out) {
			n := copy(p, c.out[c.off:])
			c.off += n
			if c.off == len(c.out) {
				c.out, c.off = c.out[:0], 0
			}
			c.mu.Unlock()
			return n, nil
		}
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		dl := c.rdl
		if !dl.IsZero() && !time.Now().Before(dl) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		c.waiting = true
		c.mu.Unlock()
		c.wait(dl)
		c.mu.Lock()
		c.waiting = false
	}
}

// wait blocks until ready is signalled or the deadline dl passes.
func (c *memConn) wait(dl time.Time) {
	if dl.IsZero() {
		<-c.ready
		return
	}
	if c.timer == nil {
		c.timer = time.NewTimer(time.Until(dl))
	} else {
		c.timer.Reset(time.Until(dl))
	}
	select {
	case <-c.ready:
	case <-c.timer.C:
	}
	if !c.timer.Stop() {
		select { // drain a value the old timer semantics may have left
		case <-c.timer.C:
		default:
		}
	}
}

func (c *memConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	if c.async {
		close(c.work)
	}
	c.mu.Unlock()
	signal(c.ready)
	return nil
}

func (c *memConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) } // writes never block

func (c *memConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	wake := c.waiting
	c.mu.Unlock()
	if wake {
		signal(c.ready) // a blocked Read re-reads its deadline
	}
	return nil
}

func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
func (c *memConn) LocalAddr() net.Addr              { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr{} }
