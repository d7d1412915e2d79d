package ermc

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The pipelined drivers: Ultra (the text protocol, after pyermc's
// ultramemcache driver) and Meta (memcached's meta protocol) share this
// machinery, parameterised by the wire codec. Requests from every
// goroutine are queued on a few shared connections ("lanes"). Whoever finds a lane's writer idle
// becomes its writer and sends everything queued in one write (while the
// lane dials, a writer that leaves hands the role to the dial); the reader
// role (umread.go) parses replies and completes requests strictly in the
// order they were written.
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

// pipeDriver is a pipelined driver: a few lanes speaking d.codec.
type pipeDriver struct {
	d       dialer
	lanes   []*lane
	spillAt int32 // defaultSpillAt; tests lower it to spread callers
	next    atomic.Uint32
	closed  atomic.Bool
	done    chan struct{} // closed by close: callers waiting for a dial leave
}

// defaultLanes: at most one shared connection per core; more would only
// split batches.
func defaultLanes() int { return max(1, min(runtime.GOMAXPROCS(0), 8)) }

// defaultSpillAt is how many callers a lane serves at once before the
// next caller goes to another lane. Requests fill the first lane, and a
// lane spills over only when it is that busy: each write and read of a
// lane carries a whole batch, and two lanes write and read twice as often
// for the same requests (on 2 cores with 64 goroutines, filling the first
// lane gave 18-88% more Gets and Sets per second than taking two lanes in
// turn, 41% in the median, over three interleaved runs). That many callers waiting on one lane
// means its server thread is falling behind them; then more connections
// put more of the server's threads to work.
const defaultSpillAt = 256

func newPipeDriver(network, addr string, opts *Options, c codec, lanes int, stats *poolCounters) *pipeDriver {
	u := &pipeDriver{d: dialer{network: network, addr: addr, opts: opts, codec: c, stats: stats}, spillAt: defaultSpillAt, done: make(chan struct{})}
	u.lanes = make([]*lane, lanes)
	for i := range u.lanes {
		u.lanes[i] = &lane{u: u, space: make(chan struct{}, 1)}
	}
	return u
}

// pick returns the first lane serving fewer than spillAt callers, or,
// when every lane is that busy, the lanes in turn.
func (u *pipeDriver) pick() *lane {
	for _, ln := range u.lanes {
		if ln.callers.Load() < u.spillAt {
			return ln
		}
	}
	return u.lanes[u.next.Add(1)%uint32(len(u.lanes))]
}

func (u *pipeDriver) connect(ctx context.Context) error {
	u.d.backoff.allowProbe()
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

// conns counts the lanes connected, and those with nothing queued or in
// flight.
func (u *pipeDriver) conns() (open, idle int) {
	for _, ln := range u.lanes {
		ln.mu.Lock()
		if ln.cn != nil {
			open++
			if !ln.writing && len(ln.pending) == 0 && ln.flight.len() == 0 {
				idle++
			}
		}
		ln.mu.Unlock()
	}
	return open, idle
}

// close fails what is still queued with ErrClosed (it was not sent) and
// lets what is in flight finish with its real outcome: a lane's
// connection closes once its last reply is in (releaseRole), or at once
// when nothing is in flight. A request being encoded when close comes is
// not written (publish).
func (u *pipeDriver) close() error {
	u.closed.Store(true)
	close(u.done) // Client.Close calls this once
	for _, ln := range u.lanes {
		ln.mu.Lock()
		pending := ln.takePending(nil)
		if ln.cn != nil && ln.flight.len() == 0 {
			ln.closeConn()
		}
		if ln.readerStarted && !ln.reading {
			ln.wakeReader() // to exit
		}
		ln.mu.Unlock()
		for _, r := range pending {
			ln.complete(r, ErrClosed)
		}
	}
	return nil
}

// closeConn takes the lane's connection out of service and closes it.
// Called with mu held.
func (ln *lane) closeConn() {
	ln.cn.close()
	ln.cn = nil
}

// do runs r on a lane. A read that failed only because the lane's
// connection had gone stale while idle (closed by the server, found out
// when used) is sent once more on the same lane, which has dropped that
// connection: it goes out on a connection dialed after the fault.
func (u *pipeDriver) do(ctx context.Context, r *request) error {
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
	ln.callers.Add(1)
	err := ln.do(ctx, r)
	if err == nil && r.staleIdle && retryableRead(ctx, r, r.fault) {
		u.d.stats.retries.Add(1)
		r.fault, r.staleIdle, r.selfRead = nil, false, false
		err = ln.do(ctx, r)
	}
	ln.callers.Add(-1)
	if err != nil {
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

// do queues r, writes it (itself, or through the current writer) and waits
// for its reply.
func (ln *lane) do(ctx context.Context, r *request) error {
	ln.mu.Lock()
	r.where = atPending
	ln.pending = append(ln.pending, r)
	becomeWriter := !ln.writing
	ln.writing = true
	busy := ln.flight.len() > 0
	ln.mu.Unlock()
	direct := false
	if becomeWriter {
		if busy {
			// Let goroutines that are already runnable (typically callers
			// the reader just woke) queue first, so one write carries them.
			runtime.Gosched()
		}
		direct = ln.writeLoop(ctx, r)
	}
	if direct {
		return ln.readDirect(ctx, r)
	}
	return ln.wait(ctx, r)
}

// lane is one shared connection and its queues.
type lane struct {
	u       *pipeDriver
	callers atomic.Int32 // callers in pipeDriver.do on this lane (pick)

	mu            sync.Mutex
	cn            *netConn // nil while disconnected
	pending       []*request
	writing       bool // a goroutine holds the writer role
	flight        ring // written, awaiting replies, in write order
	inflightBytes int
	seq           uint32   // the next opaque token
	closeCause    error    // why cn was closed by a writer, for the reader to report
	dial          *dialing // the dial under way, if any
	answered      bool     // a reply has started on cn: cn may since have gone stale idle
	staleRisk     bool     // cn was idle, had answered before, and no reply has started since
	reading       bool     // the reader role is held (umread.go)
	direct        *request // the lone request whose own caller holds the role

	readerStarted bool
	readerUp      chan struct{} // hands the role to the lane's reader goroutine
	space         chan struct{} // the reader signals freed in-flight bytes
	spaceWanted   bool          // a writer waits on space

	// Owned by whoever holds the reader role.
	readCn  *netConn // the connection being read
	parsing *request // the request whose reply is being parsed, if any
	// Owned by the writer role.
	taken []*request // the batch being written
	wire  []*request // the batch in wire order, fences included
}

// writeLoop is run by the goroutine holding the writer role: it sends what
// is queued until the queue is empty, then gives the role up; or, when its
// context ends (or the client closes) during a dial, it leaves the role to
// the dial's goroutine. It reports whether own's caller holds the reader
// role for its own reply.
func (ln *lane) writeLoop(ctx context.Context, own *request) (direct bool) {
	for {
		ln.mu.Lock()
		if len(ln.pending) == 0 {
			ln.writing = false
			direct = own != nil && ln.direct == own
			ln.mu.Unlock()
			return direct
		}
		if err := ln.ensureConn(ctx); err != nil {
			if ln.dial != nil {
				// A dial is under way (ours, whose wait our context or
				// Close ended, or a newer one after ours failed): it
				// takes the writer role over (dialFor). A queued own
				// leaves through wait when its context ends.
				ln.writing = false
				ln.mu.Unlock()
				return false
			}
			failed := ln.takePending(ln.taken[:0])
			ln.mu.Unlock()
			for _, r := range failed {
				ln.complete(r, err)
			}
			clear(failed)
			continue
		}
		if ln.inflightBytes > maxInflightBytes {
			if ln.direct != nil && ln.direct == own {
				ln.wakeReader() // a writer waiting here cannot read its own reply
			}
			ln.spaceWanted = true
			ln.mu.Unlock()
			<-ln.space // the reader frees space or fails the connection
			continue
		}
		batch := ln.takeBatch()
		cn := ln.cn
		ln.mu.Unlock()

		var wire []*request
		cn.wbuf, wire = ln.encodeBatch(cn.wbuf[:0], batch)
		// One clock reading per batch: when its replies are due, and the
		// write's deadline.
		now := time.Now()
		if ln.publish(cn, batch, wire, own, now) {
			due := time.Time{}
			if t := ln.u.d.opts.Timeout; t > 0 {
				due = deadlineFrom(now, t)
			}
			if err := cn.write(context.Background(), cn.wbuf, due); err != nil {
				ln.closeWith(cn, err)
			}
		}
		clear(batch)
		clear(wire)
		if cap(cn.wbuf) > 2*maxBatchBytes {
			cn.wbuf = nil
		}
	}
}

// closeWith closes cn after a fault seen outside the reader; the reader
// then fails everything in flight with that fault rather than with the
// "use of closed connection" the close makes it see.
func (ln *lane) closeWith(cn *netConn, fault error) {
	ln.mu.Lock()
	if ln.cn == cn && ln.closeCause == nil {
		ln.closeCause = fault
	}
	ln.mu.Unlock()
	cn.close()
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
	for i := 0; i < len(batch); i++ {
		r := batch[i]
		if !r.noreply && !fenced {
			dst, wire = ln.appendFence(dst, wire)
			fenced = true
		}
		if n := ln.getRun(batch[i:]); n > 1 {
			r = combineGets(batch[i : i+n])
			i += n - 1
		}
		dst, wire = ln.appendWire(dst, wire, r)
		fenced = fenced && !r.noreply
	}
	if !fenced {
		dst, wire = ln.appendFence(dst, wire)
	}
	ln.wire = wire
	return dst, wire
}

// appendWire encodes r with the next opaque token(s) (a multi-get takes
// one per key) and adds it to wire.
func (ln *lane) appendWire(dst []byte, wire []*request, r *request) ([]byte, []*request) {
	r.opaque = ln.seq
	ln.seq += uint32(max(1, len(r.keys)))
	start := len(dst)
	dst = ln.u.d.codec.appendRequest(dst, r)
	r.wireLen = len(dst) - start
	return dst, append(wire, r)
}

// maxCombinedGets bounds the keys of one combined get command.
const maxCombinedGets = 100

// getRun counts the plain gets at the start of batch, up to
// maxCombinedGets, when the codec combines gets.
func (ln *lane) getRun(batch []*request) int {
	if !ln.u.d.codec.combineGets {
		return 0
	}
	n := 0
	for n < len(batch) && n < maxCombinedGets && batch[n].op == opGet {
		n++
	}
	return n
}

// combineGets makes one "get k1 k2 ..." of plain gets queued together by
// different callers: the server parses one command and answers in one
// response, and each VALUE goes to the member whose key it names.
func combineGets(gets []*request) *request {
	b := getRequest()
	b.op, b.maxValue = opGetBatch, gets[0].maxValue
	b.members = append(b.members, gets...)
	return b
}

// appendFence adds a request whose reply comes after every earlier one.
func (ln *lane) appendFence(dst []byte, wire []*request) ([]byte, []*request) {
	f := getRequest()
	f.op, f.sink = opFence, true
	return ln.appendWire(dst, wire, f)
}

// publish puts the encoded requests in flight, in wire order, gives the
// reader role out if nobody holds it, and lets noreply callers go: their
// memory has been copied into the write buffer.
// If cn failed meanwhile, nothing was sent: the batch goes back to the
// head of the queue, for the next connection, and publish reports false;
// if the client closed, the requests fail.
func (ln *lane) publish(cn *netConn, batch, wire []*request, own *request, now time.Time) bool {
	ln.mu.Lock()
	if ln.u.closed.Load() {
		for _, r := range wire {
			r.setWhere(atCaller)
		}
		ln.mu.Unlock()
		for _, r := range wire {
			ln.complete(r, ErrClosed)
		}
		return false
	}
	if ln.cn != cn {
		ln.requeue(batch, wire)
		ln.mu.Unlock()
		return false
	}
	wasIdle := ln.flight.len() == 0
	if wasIdle {
		// The server may have closed cn while it sat idle; a fault before
		// any reply starts then lets idempotent reads be retried.
		ln.staleRisk = ln.answered
	}
	for _, r := range wire {
		if r.noreply {
			r.where = atCaller
			r.wake <- struct{}{}
			continue
		}
		r.sentAt = now
		r.setWhere(atFlight)
		ln.inflightBytes += r.wireLen
		ln.flight.push(r)
	}
	if ln.flight.len() > 0 {
		ln.assignRole(own, wasIdle, wire)
	}
	ln.mu.Unlock()
	return true
}

// requeue puts a batch that was encoded but not written back at the head
// of the queue, in order, and recycles what the encoder added (fences,
// combined gets). Called with mu held.
func (ln *lane) requeue(batch, wire []*request) {
	for _, r := range wire {
		if r.op == opFence || r.op == opGetBatch {
			putRequest(r)
		}
	}
	for _, r := range batch {
		r.where = atPending
	}
	ln.pending = slices.Insert(ln.pending, 0, batch...)
}

// ensureConn makes sure the lane has a connection, dialing when it has
// none. Called with mu held; the lock is released while waiting. The dial
// runs on a goroutine of its own and does not inherit the caller's
// cancellation, since it serves every queued request; the caller stops
// waiting when its context ends, and the dial goes on (bounded by
// ConnectTimeout). While a dial is under way, ln.dial is set.
func (ln *lane) ensureConn(ctx context.Context) error {
	if ln.cn != nil {
		return nil
	}
	if ln.u.closed.Load() {
		return ErrClosed // no dial after Close
	}
	dl := ln.dial
	if dl == nil {
		dl = &dialing{done: make(chan struct{})}
		ln.dial = dl
		go ln.dialFor(context.WithoutCancel(ctx), dl)
	}
	ln.mu.Unlock()
	select {
	case <-dl.done:
	case <-ctx.Done():
	case <-ln.u.done:
	}
	ln.mu.Lock()
	switch {
	case ln.cn != nil:
		return nil
	case ln.dial != dl:
		return dl.err
	case ln.u.closed.Load():
		return ErrClosed
	}
	return &ConnError{Op: "dial", Addr: ln.u.d.addr, Err: ctx.Err()}
}

// dialing is a lane's dial in progress; err is set before done closes.
type dialing struct {
	done chan struct{}
	err  error
}

// dialFor dials for the lane. A writer that left while waiting for it
// (its context ended, or the client closed) handed the writer role over to
// the dial: when no goroutine writes and requests are queued, the dial's
// goroutine writes them, or fails them if the dial failed.
func (ln *lane) dialFor(ctx context.Context, dl *dialing) {
	cn, err := ln.u.d.dial(ctx)
	ln.mu.Lock()
	ln.dial = nil
	if err == nil && ln.u.closed.Load() {
		cn.close()
		err = ErrClosed
	}
	if err == nil {
		ln.cn = cn
		ln.inflightBytes = 0
		ln.answered, ln.staleRisk = false, false
		ln.startReader()
	}
	dl.err = err
	close(dl.done)
	orphaned := !ln.writing && len(ln.pending) > 0
	var failed []*request
	if orphaned {
		if err != nil {
			failed = ln.takePending(nil)
		} else {
			ln.writing = true
		}
	}
	ln.mu.Unlock()
	for _, r := range failed {
		ln.complete(r, err)
	}
	if orphaned && err == nil {
		ln.writeLoop(ctx, nil)
	}
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
	<-r.wake // being encoded or parsed: its reply is due within Timeout
	return nil
}

func ctxFault(ctx context.Context, addr string) error {
	return ctxDoneError(ctx, "wait for reply", addr)
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
	s.op, s.key, s.maxValue, s.sentAt, s.wireLen, s.opaque = r.op, r.key, r.maxValue, r.sentAt, r.wireLen, r.opaque
	s.keys = append([]string(nil), r.keys...)
	s.sink, s.deferValues, s.where = true, true, atFlight
	return s
}

// markStaleIdle records that r, and the gets a batch carries, failed on a
// connection that had gone stale while idle, before any reply started.
func (r *request) markStaleIdle() {
	r.staleIdle = true
	for _, m := range r.members {
		m.staleIdle = true
	}
}

// setWhere records where r is, and so where the gets a batch carries are.
// Called with mu held.
func (r *request) setWhere(w uint8) {
	r.where = w
	for _, m := range r.members {
		m.where = w
	}
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
