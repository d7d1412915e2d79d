package ermc

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Dial backoff. Against a server that is down, dialing once per request
// costs every caller a connect (up to ConnectTimeout) and floods the
// network with attempts. Once a dial has failed, requests fail at once
// with the last dial error, while one dial at a time probes the server,
// at a growing, jittered interval. The first dial that succeeds ends it.
// Every driver dials through the dialer, so this is the one gate.

const (
	backoffBase = 50 * time.Millisecond // interval after the first failure
	backoffMax  = time.Second           // longest interval: how soon a server back up is used again
)

// backoffDelay is how long to wait before probing again after failures
// consecutive failed dials (failures >= 1): backoffBase doubled per
// failure up to backoffMax, scaled by jitter in [0, 1) to between half and
// all of that, so that clients that failed together do not probe in step.
func backoffDelay(failures int, jitter float64) time.Duration {
	d := backoffMax
	if failures < 16 {
		d = min(backoffBase<<(failures-1), backoffMax)
	}
	return d/2 + time.Duration(jitter*float64(d/2))
}

// dialBackoff is the dialer's gate. Reading it is lock-free (requests
// check it while the server is down); recording an outcome takes the lock.
type dialBackoff struct {
	failing atomic.Bool  // the last dial that counts failed
	next    atomic.Int64 // Unix nanoseconds: no probe before
	probing atomic.Bool  // a probe is under way
	last    atomic.Pointer[dialFailure]

	mu       sync.Mutex
	failures int // consecutive failed probes, the first failure included
}

type dialFailure struct{ err error }

// admit reports whether a dial may go out now, and whether it is the
// probe; when it may not, err is why: the last dial's error.
func (b *dialBackoff) admit() (probe bool, err error) {
	if !b.failing.Load() {
		return false, nil
	}
	if time.Now().UnixNano() < b.next.Load() || !b.probing.CompareAndSwap(false, true) {
		if f := b.last.Load(); f != nil {
			return false, &backoffError{last: f.err}
		}
		return false, nil // a success reset it meanwhile
	}
	return true, nil
}

// record takes the outcome of a dial made under ctx: err is its error,
// nil on success.
func (b *dialBackoff) record(ctx context.Context, probe bool, err error) {
	if err == nil && !probe && !b.failing.Load() {
		return // the usual case: nothing to do, no lock
	}
	cause, down := serverDown(ctx, err)
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing.Store(false)
	}
	switch {
	case err == nil: // the server answers: back to dialing freely
		b.failures = 0
		b.failing.Store(false)
	case !down: // says nothing of the server: the next request probes
	case probe || !b.failing.Load():
		b.failures++
		b.last.Store(&dialFailure{cause})
		b.next.Store(time.Now().Add(backoffDelay(b.failures, rand.Float64())).UnixNano())
		b.failing.Store(true)
	default: // a dial that started before the backoff: only its error is news
		b.last.Store(&dialFailure{cause})
	}
}

// serverDown reports whether err, a dial's error under ctx, says the
// server cannot be reached: the connect itself failed (refused,
// unreachable, no such host, ConnectTimeout), and not because the
// caller's context ended. A failed TLS handshake or login means a server
// is there. cause is what the connect said.
func serverDown(ctx context.Context, err error) (cause error, down bool) {
	ce, ok := err.(*ConnError)
	if !ok || ce.Op != "dial" || ctx.Err() != nil {
		return nil, false
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		// The connect's deadline was the context's own, and fired
		// before the context's timer did.
		return nil, false
	}
	return ce.Err, true
}

// allowProbe lets the next dial go out at once (Connect: a caller who
// asks to connect gets a dial, not the last one's error).
func (b *dialBackoff) allowProbe() {
	if b.failing.Load() {
		b.next.Store(0)
	}
}

// backoffError is why a request was failed without a dial: the last dial
// failed and the server is not probed again yet. It unwraps to that
// dial's error, so errors.Is and errors.As reach the net error.
type backoffError struct{ last error }

func (e *backoffError) Error() string {
	return "not dialing for now, the last dial failed: " + e.last.Error()
}

func (e *backoffError) Unwrap() error { return e.last }

// isBackoff reports whether ce was a request failed by the backoff,
// without a dial.
func isBackoff(ce *ConnError) bool {
	_, ok := ce.Err.(*backoffError)
	return ok
}
