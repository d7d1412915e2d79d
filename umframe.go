package ermc

import (
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The Ultra driver: the text protocol through a pipelined framer, after
// pyermc's ultramemcache driver. Requests from every goroutine are queued
// on a few shared connections ("lanes"). Whoever finds a lane's writer idle
// becomes its writer and sends everything queued in one write; a reader
// goroutine per connection parses replies and completes requests strictly
// in the order they were written.
//
// A request that gives up (context done) while still queued or in flight
// is taken out of the lane and, if its reply is still due, replaced by a
// sink request that reads and drops that reply; the caller's memory is
// never touched after it returns. A request whose reply is being parsed
// cannot leave: the caller waits for that parse, which the connection's
// deadline bounds.

const (
	// maxBatchBytes bounds one coalesced write.
	maxBatchBytes = 1 << 20
	// maxInflightBytes bounds the request bytes written to a lane and not
	// yet answered, so a slow server cannot make the client buffer without
	// limit (replies are bounded by the same requests).
	maxInflightBytes = 4 << 20
)

// Where a request is, as far as its lane knows (guarded by lane.mu).
const (
	atCaller  uint8 = iota // not queued, or completed
	atPending              // queued, not yet taken by a writer
	atWriter               // being encoded by the writer
	atFlight               // written, waiting for its reply
	atParse                // its reply is being parsed
)

type ultraDriver struct {
	d      dialer
	lanes  []*lane
	next   atomic.Uint32
	closed atomic.Bool
}

// defaultUltraLanes: one shared connection per core is enough to keep the
// server busy; more only splits batches.
func defaultUltraLanes() int { return max(1, min(runtime.GOMAXPROCS(0), 8)) }

func newUltraDriver(network, addr string, opts *Options, lanes int) *ultraDriver {
	u := &ultraDriver{d: dialer{network: network, addr: addr, opts: opts, codec: textCodec}}
	u.lanes = make([]*lane, lanes)
	for i := range u.lanes {
		u.lanes[i] = &lane{u: u, space: make(chan struct{}, 1)}
	}
	return u
}

func (u *ultraDriver) pick() *lane {
	if len(u.lanes) == 1 {
		return u.lanes[0]
	}
	return u.lanes[u.next.Add(1)%uint32(len(u.lanes))]
}

func (u *ultraDriver) connect(ctx context.Context) error {
	for _, ln := range u.lanes {
		ln.mu.Lock()
		err := ln.ensureConn(ctx)
		ln.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func (u *ultraDriver) close() error {
	u.closed.Store(true)
	for _, ln := range u.lanes {
		ln.mu.Lock()
		pending := ln.takePending(nil)
		if ln.nc != nil {
			ln.closeCause = ErrClosed
			ln.nc.Close() // the reader fails what is in flight
		}
		ln.mu.Unlock()
		for _, r := range pending {
			ln.complete(r, ErrClosed)
		}
	}
	return nil
}

// do queues r, writes it (itself, or through the current writer) and waits
// for its reply.
func (u *ultraDriver) do(ctx context.Context, r *request) error {
	if u.closed.Load() {
		return ErrClosed
	}
	if r.wake == nil {
		r.wake = make(chan struct{}, 1)
	}
	if r.op == opGetMulti {
		r.deferValues = true // the callback runs here, not on the reader
	}
	ln := u.pick()
	ln.mu.Lock()
	r.where = atPending
	ln.pending = append(ln.pending, r)
	becomeWriter := !ln.writing
	ln.writing = true
	ln.mu.Unlock()
	if becomeWriter {
		ln.writeLoop(ctx)
	}
	if err := ln.wait(ctx, r); err != nil {
		return err
	}
	if r.fault != nil {
		return r.fault
	}
	if r.deferValues {
		r.replayValues()
	}
	return nil
}

// lane is one shared connection and its queues.
type lane struct {
	u *ultraDriver

	mu            sync.Mutex
	nc            net.Conn // nil while disconnected
	pending       []*request
	writing       bool // a goroutine holds the writer role
	flight        ring // written, awaiting replies, in write order
	inflightBytes int
	readDeadline  time.Time
	closeCause    error // why nc was closed by a writer or Close, for the reader to report

	space chan struct{} // the reader signals freed in-flight bytes
	// Owned by the writer role.
	wbuf  []byte
	taken []*request // the batch being written
	wire  []*request // the batch in wire order, fences included
}

// writeLoop is run by the goroutine holding the writer role: it sends what
// is queued until the queue is empty, then gives the role up.
func (ln *lane) writeLoop(ctx context.Context) {
	for {
		ln.mu.Lock()
		if len(ln.pending) == 0 {
			ln.writing = false
			ln.mu.Unlock()
			return
		}
		if err := ln.ensureConn(ctx); err != nil {
			failed := ln.takePending(ln.taken[:0])
			ln.mu.Unlock()
			for _, r := range failed {
				ln.complete(r, err)
			}
			clear(failed)
			continue
		}
		if ln.inflightBytes > maxInflightBytes {
			ln.mu.Unlock()
			<-ln.space // the reader frees space or fails the connection
			continue
		}
		batch := ln.takeBatch()
		nc := ln.nc
		ln.mu.Unlock()

		var wire []*request
		ln.wbuf, wire = ln.encodeBatch(ln.wbuf[:0], batch)
		if ln.publish(nc, wire) {
			_ = nc.SetWriteDeadline(deadlineAfter(ln.u.d.opts.Timeout))
			if _, err := nc.Write(ln.wbuf); err != nil {
				ln.closeWith(nc, &ConnError{Op: "write", Addr: ln.u.d.addr, Err: err})
			}
		}
		clear(batch)
		clear(wire)
		if cap(ln.wbuf) > 2*maxBatchBytes {
			ln.wbuf = nil
		}
	}
}

// closeWith closes nc after a fault seen outside the reader; the reader
// then fails everything in flight with that fault rather than with the
// "use of closed connection" the close makes it see.
func (ln *lane) closeWith(nc net.Conn, fault error) {
	ln.mu.Lock()
	if ln.nc == nc && ln.closeCause == nil {
		ln.closeCause = fault
	}
	ln.mu.Unlock()
	nc.Close()
}

// takeBatch moves the head of the queue, up to about maxBatchBytes of
// requests, to the writer. Called with mu held.
func (ln *lane) takeBatch() []*request {
	n, size := 0, 0
	for n < len(ln.pending) && (n == 0 || size < maxBatchBytes) {
		r := ln.pending[n]
		size += len(r.key) + len(r.value) + 64
		r.where = atWriter
		n++
	}
	ln.taken = append(ln.taken[:0], ln.pending[:n]...)
	rest := copy(ln.pending, ln.pending[n:])
	clear(ln.pending[rest:])
	ln.pending = ln.pending[:rest]
	return ln.taken
}

// encodeBatch encodes batch into dst, adding a fence after each run of
// noreply commands so that an error the server still sends for one cannot
// be taken as a later request's reply. It returns the requests in wire
// order, fences included.
func (ln *lane) encodeBatch(dst []byte, batch []*request) ([]byte, []*request) {
	wire := ln.wire[:0]
	fenced := true
	for _, r := range batch {
		if !r.noreply && !fenced {
			dst, wire = appendFence(dst, wire)
			fenced = true
		}
		start := len(dst)
		dst = appendTextRequest(dst, r)
		r.wireLen = len(dst) - start
		wire = append(wire, r)
		fenced = fenced && !r.noreply
	}
	if !fenced {
		dst, wire = appendFence(dst, wire)
	}
	ln.wire = wire
	return dst, wire
}

func appendFence(dst []byte, wire []*request) ([]byte, []*request) {
	f := getRequest()
	f.op, f.sink = opFence, true
	start := len(dst)
	dst = appendTextRequest(dst, f)
	f.wireLen = len(dst) - start
	return dst, append(wire, f)
}

// publish puts the encoded requests in flight, in wire order, and lets
// noreply callers go: their memory has been copied into the write buffer.
// If nc failed meanwhile, nothing was sent: the requests fail instead, and
// publish reports false.
func (ln *lane) publish(nc net.Conn, wire []*request) bool {
	now := time.Now()
	ln.mu.Lock()
	if ln.nc != nc {
		for _, r := range wire {
			r.where = atCaller
		}
		ln.mu.Unlock()
		fault := &ConnError{Op: "write", Addr: ln.u.d.addr, Err: net.ErrClosed}
		for _, r := range wire {
			ln.complete(r, fault)
		}
		return false
	}
	wasIdle := ln.flight.len() == 0
	for _, r := range wire {
		if r.noreply {
			r.where = atCaller
			r.wake <- struct{}{}
			continue
		}
		r.sentAt = now
		r.where = atFlight
		ln.inflightBytes += r.wireLen
		ln.flight.push(r)
	}
	if wasIdle {
		ln.setReadDeadline(ln.flight.peekSent())
	}
	ln.mu.Unlock()
	return true
}

// setReadDeadline arms the stall detector for the request at the head of
// the flight queue, sent at sent. Called with mu held.
func (ln *lane) setReadDeadline(sent time.Time) {
	dl := time.Time{}
	if t := ln.u.d.opts.Timeout; t > 0 && !sent.IsZero() {
		dl = sent.Add(t)
	}
	if dl != ln.readDeadline && ln.nc != nil {
		ln.readDeadline = dl
		_ = ln.nc.SetReadDeadline(dl)
	}
}

func deadlineAfter(t time.Duration) time.Time {
	if t <= 0 {
		return time.Time{}
	}
	return time.Now().Add(t)
}

// ensureConn dials when the lane has no connection and starts its reader.
// Called with mu held; the lock is released while dialing. The dial does
// not inherit the caller's cancellation: it serves every queued request.
func (ln *lane) ensureConn(ctx context.Context) error {
	if ln.nc != nil {
		return nil
	}
	ln.mu.Unlock()
	cn, err := ln.u.d.dial(context.WithoutCancel(ctx))
	ln.mu.Lock()
	if err != nil {
		return err
	}
	if ln.u.closed.Load() {
		cn.close()
		return ErrClosed
	}
	ln.nc = cn.nc
	ln.readDeadline = time.Time{}
	ln.inflightBytes = 0
	go ln.readLoop(cn.nc, cn.rbuf)
	return nil
}

// wait blocks until r completes, or gives up when ctx is done: a request
// still queued or in flight is taken out of the lane at once.
func (ln *lane) wait(ctx context.Context, r *request) error {
	select {
	case <-r.wake:
		return nil
	case <-ctx.Done():
	}
	ln.mu.Lock()
	switch r.where {
	case atPending:
		ln.removePending(r)
		r.where = atCaller
		ln.mu.Unlock()
		return ctxFault(ctx, ln.u.d.addr)
	case atFlight:
		if ln.flight.replace(r, newSink(r)) {
			r.where = atCaller
			ln.mu.Unlock()
			return ctxFault(ctx, ln.u.d.addr)
		}
	}
	ln.mu.Unlock()
	<-r.wake // being encoded or parsed: bounded by the connection deadline
	return nil
}

func ctxFault(ctx context.Context, addr string) error {
	return &ConnError{Op: "wait for reply", Addr: addr, Err: ctx.Err()}
}

func (ln *lane) removePending(r *request) {
	for i, p := range ln.pending {
		if p == r {
			ln.pending = append(ln.pending[:i], ln.pending[i+1:]...)
			return
		}
	}
}

// newSink makes a request that stands in for an abandoned one: it parses
// the same reply (same op and keys, so key checks still hold) into memory
// of its own, and is recycled by the reader.
func newSink(r *request) *request {
	s := getRequest()
	s.op, s.key, s.maxValue, s.sentAt, s.wireLen = r.op, r.key, r.maxValue, r.sentAt, r.wireLen
	s.keys = append([]string(nil), r.keys...)
	s.sink, s.deferValues, s.where = true, true, atFlight
	return s
}

// complete finishes r with a transport fault (nil on success) and wakes its
// caller; sinks and fences go back to the pool. The caller of complete has
// already set r.where = atCaller under mu, so a cancelled waiter knows to
// wait for this wake-up instead of leaving.
func (ln *lane) complete(r *request, fault error) {
	if r.sink {
		putRequest(r)
		return
	}
	r.fault = fault
	r.wake <- struct{}{}
}

// takeAll empties q into dst, marking each request as back with its
// caller. Called with mu held.
func takeAll(dst []*request, q *ring) []*request {
	for r := q.pop(); r != nil; r = q.pop() {
		r.where = atCaller
		dst = append(dst, r)
	}
	return dst
}

// takePending empties the queue of unwritten requests into dst. Called
// with mu held.
func (ln *lane) takePending(dst []*request) []*request {
	for _, r := range ln.pending {
		r.where = atCaller
		dst = append(dst, r)
	}
	clear(ln.pending)
	ln.pending = ln.pending[:0]
	return dst
}

// readLoop parses replies from nc for the requests in flight, in order,
// until the connection fails or is closed.
func (ln *lane) readLoop(nc net.Conn, buf []byte) {
	var rpos, rend int
	var cur *request
	for {
		for rpos < rend {
			if cur == nil {
				if cur = ln.startParse(); cur == nil {
					ln.fail(nc, protocolError("bytes with no request in flight", buf[rpos:rend]))
					return
				}
			}
			n, done, err := parseTextReply(cur, buf[rpos:rend])
			rpos += n
			if err != nil && err != errDiscardConn {
				ln.fail(nc, err)
				return
			}
			if !done {
				break
			}
			ln.finishParse(cur)
			if err == errDiscardConn {
				ln.fail(nc, nil)
				return
			}
			cur = nil
		}
		if rpos == rend {
			rpos, rend = 0, 0
		} else if rend == len(buf) {
			if rpos == 0 {
				ln.fail(nc, protocolError("reply element larger than the read buffer", buf[:64]))
				return
			}
			rend = copy(buf, buf[rpos:rend])
			rpos = 0
		}
		n, err := nc.Read(buf[rend:])
		rend += n
		if err != nil && n == 0 {
			ln.fail(nc, &ConnError{Op: "read", Addr: ln.u.d.addr, Err: err})
			return
		}
	}
}

// startParse takes the head of the flight queue for parsing: from here
// its caller can no longer leave before the parse ends.
func (ln *lane) startParse() *request {
	ln.mu.Lock()
	r := ln.flight.peek()
	if r != nil {
		r.where = atParse
	}
	ln.mu.Unlock()
	return r
}

// finishParse pops the parsed request, re-arms the stall detector for the
// next one, and completes it.
func (ln *lane) finishParse(r *request) {
	ln.mu.Lock()
	ln.flight.pop()
	r.where = atCaller
	ln.inflightBytes -= r.wireLen
	ln.setReadDeadline(ln.flight.peekSent())
	ln.mu.Unlock()
	select {
	case ln.space <- struct{}{}:
	default:
	}
	ln.complete(r, nil)
}

// fail tears the lane's connection down: every request in flight (the
// one whose reply was cut included) completes with err, so no later reply can reach the
// wrong request. Queued requests stay queued for a fresh connection.
func (ln *lane) fail(nc net.Conn, err error) {
	if err == nil {
		err = &ConnError{Op: "read", Addr: ln.u.d.addr, Err: errDiscardConn}
	}
	ln.mu.Lock()
	if ln.nc != nc {
		ln.mu.Unlock() // closed by Close before it was installed
		nc.Close()
		return
	}
	ln.nc = nil
	if ln.closeCause != nil {
		err, ln.closeCause = ln.closeCause, nil
	}
	failed := takeAll(nil, &ln.flight)
	ln.inflightBytes = 0
	restart := !ln.writing && len(ln.pending) > 0
	if restart {
		ln.writing = true
	}
	ln.mu.Unlock()
	// Closed only once the lane has let go of nc: a write blocked on it
	// then fails, and closeWith must not take that failure for the cause.
	nc.Close()
	select {
	case ln.space <- struct{}{}:
	default:
	}
	for _, r := range failed {
		ln.complete(r, err)
	}
	if restart {
		ln.writeLoop(context.Background())
	}
}

// replayValues runs the multi-get callback in the caller's goroutine over
// the values the reader collected: [index u32][len u32][bytes]...
func (r *request) replayValues() {
	b := r.collected
	for len(b) >= 8 {
		i := int(binary.LittleEndian.Uint32(b))
		n := int(binary.LittleEndian.Uint32(b[4:]))
		r.onValue(i, b[8:8+n])
		b = b[8+n:]
	}
}

// collectValue keeps a multi-get value for replayValues.
func (r *request) collectValue(index int, v []byte) {
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(index))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(v)))
	r.collected = append(append(r.collected, hdr[:]...), v...)
}

// ring is a growable FIFO of requests.
type ring struct {
	buf        []*request
	head, size int
}

func (q *ring) len() int { return q.size }

func (q *ring) push(r *request) {
	if q.size == len(q.buf) {
		nb := make([]*request, max(16, 2*len(q.buf)))
		for i := 0; i < q.size; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.size)%len(q.buf)] = r
	q.size++
}

func (q *ring) peek() *request {
	if q.size == 0 {
		return nil
	}
	return q.buf[q.head]
}

// peekSent is when the head was written; zero when the queue is empty.
func (q *ring) peekSent() time.Time {
	if r := q.peek(); r != nil {
		return r.sentAt
	}
	return time.Time{}
}

func (q *ring) pop() *request {
	if q.size == 0 {
		return nil
	}
	r := q.buf[q.head]
	q.buf[q.head] = nil
	q.head = (q.head + 1) % len(q.buf)
	q.size--
	return r
}

// replace swaps old for new in the queue; false if old is not there.
func (q *ring) replace(old, new *request) bool {
	for i := 0; i < q.size; i++ {
		j := (q.head + i) % len(q.buf)
		if q.buf[j] == old {
			q.buf[j] = new
			return true
		}
	}
	return false
}
