package ermc

import (
	"context"
	"time"
)

// The pipelined drivers' read side. One goroutine at a time holds a lane's
// reader role and parses replies, completing requests strictly in write
// order. The role belongs to the lane's reader goroutine, except for a
// lone request: a caller that wrote its own request onto an idle
// connection reads its reply itself, as on the Text driver, with no
// handoff between goroutines. As soon as its reply is in, or anything
// else is in flight, the role passes to the reader goroutine.

// startReader runs the lane's reader goroutine, once.
func (ln *lane) startReader() {
	if ln.readerStarted {
		return
	}
	ln.readerStarted = true
	ln.readerUp = make(chan struct{}, 1)
	go ln.readerLoop()
}

// readerLoop serves the reader role whenever it is handed over, until the
// client is closed and nothing is left to read.
func (ln *lane) readerLoop() {
	for range ln.readerUp {
		ln.serve(context.Background(), nil)
		ln.releaseRole()
		ln.mu.Lock()
		exit := ln.u.closed.Load() && !ln.reading
		ln.mu.Unlock()
		if exit {
			return
		}
	}
}

// wakeReader hands the role to the reader goroutine. A direct holder that
// had not read its reply yet will now wait for a wake-up like any other
// caller. Called with mu held.
func (ln *lane) wakeReader() {
	if ln.direct != nil {
		ln.direct.selfRead = false
		ln.direct = nil
	}
	select {
	case ln.readerUp <- struct{}{}:
	default: // already due to run
	}
}

// assignRole gives the reader role out after publish put requests in
// flight: to own, when it went alone onto an idle connection, else to the
// reader goroutine. own's caller is the writer: if it holds the role but is
// still writing more batches, it cannot read meanwhile, so the role moves
// on. Called with mu held.
func (ln *lane) assignRole(own *request, wasIdle bool, wire []*request) {
	switch {
	case !ln.reading:
		ln.reading = true
		if wasIdle && len(wire) == 1 && wire[0] == own {
			ln.direct = own
			own.selfRead = true
			return
		}
		ln.wakeReader()
	case ln.direct != nil && ln.direct == own:
		ln.wakeReader()
	}
}

// releaseRole gives the role up, or passes it to the reader goroutine when
// replies are still due. Once the client is closed, the last reply in
// closes the connection.
func (ln *lane) releaseRole() {
	ln.mu.Lock()
	if ln.flight.len() > 0 && ln.cn != nil {
		ln.wakeReader()
	} else {
		ln.reading, ln.direct = false, nil
		if ln.u.closed.Load() {
			if ln.cn != nil {
				ln.closeConn()
			}
			ln.wakeReader() // so that it sees the client closed and exits
		}
	}
	ln.mu.Unlock()
}

// readDirect is a lone request's caller reading its own reply. Its
// context is polled while it waits (netConn.read): it leaves when the
// context ends before the reply starts.
func (ln *lane) readDirect(ctx context.Context, own *request) error {
	abandoned := ln.serve(ctx, own)
	ln.releaseRole()
	if abandoned {
		return ctxFault(ctx, ln.u.d.addr)
	}
	return nil // own is complete: complete does not signal a self-reader
}

// serve holds the reader role until its work is done: for the reader
// goroutine (own == nil) until nothing is in flight, for a direct reader
// until own completes. It reports whether own was abandoned because ctx
// ended before its reply started.
func (ln *lane) serve(ctx context.Context, own *request) (abandoned bool) {
	for {
		ln.parseBuffered()
		switch ln.readMore(ctx, own) {
		case readAbandoned:
			return true
		case readDone:
			return false
		}
	}
}

// parseBuffered parses every complete reply in the read buffer, in order,
// and the reply being parsed as far as its bytes go. A reply that does not
// parse fails the connection.
func (ln *lane) parseBuffered() {
	cn, cur := ln.readCn, ln.parsing
	if cn == nil || (cn.rpos == cn.rend && (cur == nil || len(cur.parse.want) > 0)) {
		return
	}
	if cur == nil {
		cur = ln.startParse()
	}
	parse := ln.u.d.codec.parseReply
	for {
		if cur == nil {
			if cn.rpos < cn.rend {
				ln.fail(cn, protocolError("bytes with no request in flight", cn.buffered()))
			}
			return
		}
		done, err := cn.parseBuffered(parse, cur)
		if err != nil && err != errDiscardConn {
			ln.fail(cn, err)
			return
		}
		if !done {
			ln.parsing = cur
			return
		}
		ln.parsing = nil
		if err == errDiscardConn {
			// The reply is valid but ends the connection (CLIENT_ERROR,
			// ERROR): take the connection out of service before waking
			// the caller, whose next request must not be written to it.
			ln.mu.Lock()
			ln.flight.pop()
			cur.setWhere(atCaller)
			ln.mu.Unlock()
			ln.failAnswered(cn, nil, cur)
			return
		}
		if cur = ln.finishParse(cur, cn.rpos < cn.rend); cur == nil && cn.rpos == cn.rend {
			return
		}
	}
}

// Outcomes of readMore.
const (
	readProgress  = iota
	readAbandoned // own left: its context ended before its reply started
	readDone      // nothing (more) to read for: own complete, or nothing in flight
)

// readMore reads from the connection once, unless the role's work is done
// (own complete, or nothing in flight). The read fails the connection
// when the head of the flight queue is overdue; a direct reader whose own
// reply has not started also stops when its context ends, and leaves.
func (ln *lane) readMore(ctx context.Context, own *request) int {
	ln.mu.Lock()
	cn, head := ln.cn, ln.flight.peek()
	if cn == nil || head == nil || (own != nil && own.where == atCaller) {
		ln.mu.Unlock()
		return readDone
	}
	ownWaiting := own != nil && own.where == atFlight
	sent := head.sentAt // read under mu: the head's caller may leave and recycle it
	ln.mu.Unlock()
	if cn != ln.readCn {
		ln.readCn, ln.parsing = cn, nil
	}
	due := time.Time{}
	if t := ln.u.d.opts.Timeout; t > 0 {
		due = deadlineFrom(sent, t)
	}
	if !ownWaiting {
		// The reader goroutine, or own already being parsed: only the
		// lane's deadline counts.
		ctx = context.Background()
	}
	switch err := cn.readFor(ctx, ln.parsing, due); {
	case err == nil:
		return readProgress
	case err == errCtxDone:
		if ln.abandon(own) {
			return readAbandoned
		}
		return readProgress // own's reply started meanwhile: read it
	default:
		ln.fail(cn, err)
		return readDone
	}
}

// abandon takes a direct reader's own request out of flight, if its reply
// has not started, leaving a sink to read that reply.
func (ln *lane) abandon(own *request) bool {
	if own == nil {
		return false
	}
	ln.mu.Lock()
	defer ln.mu.Unlock()
	if own.where != atFlight || !ln.flight.replace(own, newSink(own)) {
		return false
	}
	own.where = atCaller
	return true
}

// startParse returns the head of the flight queue, marked as being parsed:
// from here its caller can no longer leave before the parse ends.
func (ln *lane) startParse() *request {
	ln.mu.Lock()
	r := ln.flight.peek()
	if r != nil {
		r.setWhere(atParse)
	}
	ln.answered, ln.staleRisk = true, false
	ln.mu.Unlock()
	return r
}

// finishParse pops the parsed request and completes it. When more reply
// bytes are buffered (more), it also takes the next head for parsing, in
// the same critical section: one lock per reply, not two; with nothing
// left in flight, those bytes take the connection out of service.
func (ln *lane) finishParse(r *request, more bool) (next *request) {
	ln.mu.Lock()
	ln.flight.pop()
	r.setWhere(atCaller)
	ln.inflightBytes -= r.wireLen
	if ln.spaceWanted && ln.inflightBytes <= maxInflightBytes {
		ln.spaceWanted = false
		ln.signalSpace()
	}
	if more {
		if next = ln.flight.peek(); next != nil {
			next.setWhere(atParse)
		} else if ln.cn == ln.readCn {
			// Bytes past the last reply: the stream is out of step. The
			// connection leaves service now, before r's caller wakes and
			// writes its next request to it; parseBuffered then fails it.
			ln.cn = nil
		}
	}
	ln.mu.Unlock()
	ln.complete(r, nil)
	return next
}

// signalSpace wakes a writer waiting for in-flight bytes to drain.
func (ln *lane) signalSpace() {
	select {
	case ln.space <- struct{}{}:
	default:
	}
}

// complete finishes r with a transport fault (nil on success) and wakes its
// caller, unless the caller is reading r's reply itself; sinks and fences
// go back to the pool. The caller of complete has
// already set r.where = atCaller under mu, so a cancelled waiter knows to
// wait for this wake-up instead of leaving.
func (ln *lane) complete(r *request, fault error) {
	if r.op == opGetBatch {
		ln.completeMembers(r, fault)
		putRequest(r)
		return
	}
	if r.sink {
		putRequest(r)
		return
	}
	r.fault = fault
	if !r.selfRead {
		r.wake <- struct{}{}
	}
}

// completeMembers completes the gets a batch carried: each gets the
// batch's fault or error, else a miss if no VALUE named it.
func (ln *lane) completeMembers(b *request, fault error) {
	for _, m := range b.members {
		if fault == nil && m.err == nil {
			switch {
			case b.err != nil:
				m.err = b.err
			case !m.found:
				m.err = ErrCacheMiss
			}
		}
		ln.complete(m, fault)
	}
}

// fail tears the lane's connection down: every request in flight (the one
// whose reply was cut included) completes with err, so no later reply can
// reach the wrong request. Queued requests stay queued for a fresh
// connection. Only the reader role calls it.
func (ln *lane) fail(cn *netConn, err error) { ln.failAnswered(cn, err, nil) }

// failAnswered is fail for a connection whose last reply, to answered, was
// read in full: answered completes without a fault once the lane has let
// go of cn. The requests in flight behind it fail with
// errConnEndedByServer (the server ends the connection after such a
// reply).
func (ln *lane) failAnswered(cn *netConn, err error, answered *request) {
	if err == nil {
		err = &ConnError{Op: "read", Addr: ln.u.d.addr, Err: errConnEndedByServer}
	}
	ln.readCn, ln.parsing = nil, nil
	ln.mu.Lock()
	var failed []*request
	staleIdle := false
	if ln.cn == cn {
		staleIdle, ln.staleRisk = ln.staleRisk, false
		// Detach before closing: a writer whose write fails because of
		// this close finds cn out of service and does not record "use of
		// closed network connection" as the cause.
		ln.cn = nil
		if ln.closeCause != nil {
			err, ln.closeCause = ln.closeCause, nil
		}
		ln.u.d.stats.discard(err)
		failed = takeAll(nil, &ln.flight)
		ln.inflightBytes = 0
	}
	ln.mu.Unlock()
	cn.close()
	ln.signalSpace()
	if answered != nil {
		ln.complete(answered, nil)
	}
	for _, r := range failed {
		if staleIdle {
			r.markStaleIdle()
		}
		ln.complete(r, err)
	}
}

// takeAll empties q into dst, marking each request as back with its
// caller. Called with mu held.
func takeAll(dst []*request, q *ring) []*request {
	for r := q.pop(); r != nil; r = q.pop() {
		r.setWhere(atCaller)
		dst = append(dst, r)
	}
	return dst
}
