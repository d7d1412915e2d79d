package ermc

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// An in-memory memcached for the client fuzz targets. Its first connection
// answers the first `scripted` requests with the fuzz input, as one byte
// stream delivered chunk bytes per read once all of them are written; any
// later request, on any connection, gets a clean reply from a tiny server
// over cleanValues. It never stalls: when it has nothing left to send to a
// client that waits for more, it hangs up (io.EOF), so no iteration waits
// for a timeout.

// cleanValues are what the clean replies serve: values that no fuzz input
// frames, so a value taken from the wrong stream shows.
var cleanValues = map[string]string{"a": "clean:a", "b": "clean:b", "c": "clean:c", "after": "clean:after"}

type fuzzServer struct {
	proto    Protocol
	script   []byte
	chunk    int
	scripted int
	// waiting reports whether the client still waits for reply bytes.
	// nil: it does whenever it reads (pooled drivers read only then).
	waiting func() bool

	mu    sync.Mutex
	conns []*fuzzConn
	wrote chan struct{} // a request was written
}

// newFuzzServer serves script, chunk bytes per read, as the replies to
// the first `scripted` requests.
func newFuzzServer(proto Protocol, script []byte, chunk, scripted int) *fuzzServer {
	return &fuzzServer{proto: proto, script: script, chunk: chunk, scripted: scripted, wrote: make(chan struct{}, 1)}
}

// dial is the client's DialContext.
func (s *fuzzServer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &fuzzConn{srv: s, idle: make(chan struct{})}
	c.cond.L = &c.mu
	if len(s.conns) == 0 {
		c.script, c.scripted = s.script, s.scripted
	} else {
		c.later = true // no script: a dry read waits for the next request
	}
	s.conns = append(s.conns, c)
	return c, nil
}

// conn returns the i-th connection dialed, or nil.
func (s *fuzzServer) conn(i int) *fuzzConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < len(s.conns) {
		return s.conns[i]
	}
	return nil
}

func (s *fuzzServer) dials() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// fuzzConn is the client's end of one in-memory connection.
type fuzzConn struct {
	srv      *fuzzServer
	mu       sync.Mutex
	cond     sync.Cond
	script   []byte
	scripted int
	requests int          // complete requests written (a binary multi-get is one)
	written  atomic.Int32 // requests, readable without mu
	keys     []string     // the key of each request frame, in order
	in       []byte       // written bytes not yet a whole request
	clean    []byte       // clean replies not yet read
	closed   bool         // closed by the client
	later    bool         // past the scripted exchange: a dry read waits
	deadline time.Time
	timer    *time.Timer
	gen      int           // counts changes of state, for a reader that let go of mu
	idle     chan struct{} // closed when a read waits with nothing to send, or on close
	idleOnce sync.Once
}

func (c *fuzzConn) Write(p []byte) (int, error) {
	defer func() {
		select {
		case c.srv.wrote <- struct{}{}:
		default:
		}
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	c.in = append(c.in, p...)
	for {
		req, n := splitRequest(c.srv.proto, c.in)
		if n == 0 {
			break
		}
		c.in = c.in[n:]
		c.keys = append(c.keys, req.Key)
		index := c.requests
		if req.Bin == nil || req.Bin.opcode != binGetKQ {
			c.requests++
			c.written.Store(int32(c.requests))
		}
		if index >= c.scripted {
			c.script = nil // a reply the client never read is not served to a later request
			c.clean = append(c.clean, fakeReplyAs(c.srv.proto, req, cleanValues)...)
		}
	}
	c.changed()
	return len(p), nil
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.closed:
			return 0, net.ErrClosed
		case !c.deadline.IsZero() && !time.Now().Before(c.deadline):
			return 0, os.ErrDeadlineExceeded
		case c.requests < c.scripted:
			// The script answers requests not all written yet: wait.
		case len(c.script) > 0:
			n := copy(p[:min(len(p), c.srv.chunk)], c.script)
			c.script = c.script[n:]
			return n, nil
		case len(c.clean) > 0:
			n := copy(p, c.clean)
			c.clean = c.clean[n:]
			return n, nil
		default:
			// Nothing to send: hang up on a client that waits for more
			// (unless past the scripted exchange), else wait.
			gen := c.gen
			waiting := !c.later && c.clientWaiting()
			if c.gen != gen {
				continue // something happened while we asked: look again
			}
			if waiting {
				return 0, io.EOF
			}
			c.idleOnce.Do(func() { close(c.idle) })
		}
		c.cond.Wait()
	}
}

// clientWaiting asks the client, without holding c.mu: the Ultra lane
// calls into the connection under its own lock.
func (c *fuzzConn) clientWaiting() bool {
	if c.srv.waiting == nil {
		return true
	}
	c.mu.Unlock()
	defer c.mu.Lock()
	return c.srv.waiting()
}

// changed wakes readers after a change of state. Called with mu held.
func (c *fuzzConn) changed() {
	c.gen++
	c.cond.Broadcast()
}

// setLater ends the scripted exchange: from now a dry read waits for the
// next request instead of hanging up.
func (c *fuzzConn) setLater() {
	c.mu.Lock()
	c.later = true
	c.changed()
	c.mu.Unlock()
}

func (c *fuzzConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// sawKey reports whether the client sent a request for key here.
func (c *fuzzConn) sawKey(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.keys {
		if k == key {
			return true
		}
	}
	return false
}

func (c *fuzzConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.idleOnce.Do(func() { close(c.idle) })
	c.changed()
	return nil
}

func (c *fuzzConn) SetDeadline(t time.Time) error      { return c.SetReadDeadline(t) }
func (c *fuzzConn) SetWriteDeadline(t time.Time) error { return nil } // writes never block
func (c *fuzzConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if !t.IsZero() {
		c.timer = time.AfterFunc(time.Until(t), func() {
			c.mu.Lock()
			c.changed()
			c.mu.Unlock()
		})
	}
	return nil
}

func (c *fuzzConn) LocalAddr() net.Addr  { return fuzzAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr { return fuzzAddr{} }

type fuzzAddr struct{}

func (fuzzAddr) Network() string { return "fuzz" }
func (fuzzAddr) String() string  { return "fuzz" }

// isFault reports whether err says the connection broke or fell out of
// step (as opposed to an answer from the server).
func isFault(err error) bool {
	var ce *ConnError
	return errors.As(err, &ce) || errors.Is(err, ErrProtocol)
}

// isTimeout reports whether err is a timeout. The in-memory server never
// stalls, so in the fuzz targets a timeout means the client waited for
// nothing: a hang.
func isTimeout(err error) bool {
	var ce *ConnError
	return errors.As(err, &ce) && ce.Timeout()
}

// ultraWaiting reports whether the client's (single) Ultra lane has
// requests waiting for replies.
func ultraWaiting(c *Client) func() bool {
	ln := c.drv.(*pipeDriver).lanes[0]
	return func() bool {
		ln.mu.Lock()
		defer ln.mu.Unlock()
		return ln.flight.len() > 0
	}
}

// waitWritten waits until the first connection has n whole requests
// written, failing t after the hang guard.
func (s *fuzzServer) waitWritten(t *testing.T, n int) {
	t.Helper()
	guard := time.NewTimer(hangGuard)
	defer guard.Stop()
	for {
		if c := s.conn(0); c != nil && int(c.written.Load()) >= n {
			return
		}
		select {
		case <-s.wrote:
		case <-guard.C:
			t.Fatalf("the client did not write request %d within %v", n, hangGuard)
		}
	}
}
