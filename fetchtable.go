package ermc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// fetchTable is Fetch's in-process half of stampede protection: for each
// key being obtained (loaded, or awaited from another process), the one
// call of this client that obtains it, and how many wait for its result.
// Entries exist only while a key is being obtained: a hit never looks here.
type fetchTable struct {
	mu    sync.Mutex
	calls map[string]*fetchCall
}

// fetchCall is one key being obtained by one caller, its leader.
type fetchCall struct {
	done    chan struct{} // closed when the result below is set
	waiters int           // callers waiting for it (under fetchTable.mu)
	value   []byte        // the value, a copy of the leader's (only when someone waits)
	err     error         // the leader's load error, for its waiters
	again   bool          // the leader gave up before a result: waiters read again
}

// join returns the call obtaining key, as a waiter, or makes a new one
// that the caller leads (leader true) and must finish.
func (t *fetchTable) join(key string) (f *fetchCall, leader bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.calls[key]; f != nil {
		f.waiters++
		return f, false
	}
	return t.add(key), true
}

// lead makes a call for key that the caller leads, or returns nil when
// another caller already obtains key.
func (t *fetchTable) lead(key string) *fetchCall {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.calls[key] != nil {
		return nil
	}
	return t.add(key)
}

func (t *fetchTable) add(key string) *fetchCall {
	if t.calls == nil {
		t.calls = make(map[string]*fetchCall)
	}
	f := &fetchCall{done: make(chan struct{})}
	t.calls[key] = f
	return f
}

// finish removes f, so later callers read the cache again, and hands its
// waiters the outcome: a copy of value (nil err), or err, or again (they
// read the key again themselves). A nil f (a load nobody could join) is
// ignored.
func (t *fetchTable) finish(key string, f *fetchCall, value []byte, err error, again bool) {
	if f == nil {
		return
	}
	t.mu.Lock()
	delete(t.calls, key)
	waiters := f.waiters // no one can join now
	t.mu.Unlock()
	if waiters > 0 && err == nil && !again {
		f.value = append(make([]byte, 0, len(value)), value...)
	}
	f.err, f.again = err, again
	close(f.done)
}

// wait waits for the leader of f, at most as long as ctx lasts, and
// appends its value to dst. again: the leader gave up, read again.
func (t *fetchTable) wait(ctx context.Context, key string, f *fetchCall, dst []byte) (v []byte, again bool, err error) {
	select {
	case <-f.done:
	case <-ctx.Done():
		t.mu.Lock()
		if t.calls[key] == f {
			f.waiters--
		}
		t.mu.Unlock()
		return dst, false, fetchWaitError(key, ctx.Err())
	}
	if f.again {
		return dst, true, nil
	}
	if f.err != nil {
		return dst, false, f.err
	}
	return append(dst, f.value...), false, nil
}

// waiting reports how many callers wait for key's leader (for tests).
func (t *fetchTable) waiting(key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.calls[key]; f != nil {
		return f.waiters
	}
	return -1
}

// size reports how many keys are being obtained (for tests: entries must
// not outlive their load).
func (t *fetchTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.calls)
}

// errLoadPanicked is what the waiters of a leader whose loader panicked
// get; the leader's goroutine panics on.
var errLoadPanicked = errors.New("ermc: fetch: the loader panicked in the caller running it")

// fetchWaitError reports a Fetch whose context ended while it waited for
// another caller's load.
func fetchWaitError(key string, err error) error {
	return fmt.Errorf("ermc: fetch %s: waiting for another caller's load: %w", quoteBounded([]byte(key)), err)
}

// Poll pacing for a caller waiting for another process's load: the first
// read after minPollPause, then pauses growing by half up to maxPollPause,
// each jittered by ±25% so waiting processes do not read in step.
const (
	minPollPause = 2 * time.Millisecond
	maxPollPause = 50 * time.Millisecond
)

// fetchPoll paces the reads of a caller waiting for another process's
// load. The zero value is ready; stop releases its timer.
type fetchPoll struct {
	pause time.Duration
	timer *time.Timer
}

// sleep pauses until the next read, or until ctx ends.
func (p *fetchPoll) sleep(ctx context.Context) error {
	if p.pause == 0 {
		p.pause = minPollPause
	} else {
		p.pause = min(p.pause*3/2, maxPollPause)
	}
	d := p.pause*3/4 + rand.N(p.pause/2+1)
	if p.timer == nil {
		p.timer = time.NewTimer(d)
	} else {
		p.timer.Reset(d) // it fired and was drained: sleep returns only then
	}
	select {
	case <-p.timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *fetchPoll) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

// ctxEnded reports whether ctx has ended or reached its deadline: whether
// a leader's failure is its own, so its waiters should read again. The
// deadline counts before ctx.Err says so: a read deadline taken from it
// can fire first.
func ctxEnded(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}
