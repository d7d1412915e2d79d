package bench

import (
	"container/heap"
	"sync"
	"time"
)

// alarms wakes the open loop's workers at their due times from one
// timer (precisesleep_linux.go says why not time.Sleep). One timer for
// all workers, not one each: with a timer per worker (set, then read,
// for every request) the harness alone had a p99 of 3.7-4.4 ms at 160k
// requests/s, under every client's. The timer is re-armed only when the
// earliest wake-up moves earlier, and fires at most once per
// alarmQuantum, so at high rates one firing wakes every worker then due.
type alarms struct {
	clock func() time.Duration
	timer *hwTimer
	wakes chan chan struct{} // one wake channel per sleeping worker, reused

	mu    sync.Mutex
	queue alarmQueue
	armed time.Duration // when the timer fires; 0: not armed
	fired time.Duration // when it last fired
	done  chan struct{} // closed when the firing loop has returned
}

// alarmQuantum is the least time between two firings of the timer: a
// wake-up at most this late, in exchange for a bounded cost.
const alarmQuantum = 20 * time.Microsecond

func newAlarms(clock func() time.Duration, workers int) (*alarms, error) {
	t, err := newHWTimer()
	if err != nil {
		return nil, err
	}
	a := &alarms{clock: clock, timer: t, wakes: make(chan chan struct{}, workers), done: make(chan struct{})}
	for range workers {
		a.wakes <- make(chan struct{}, 1)
	}
	go a.fire()
	return a, nil
}

// sleepUntil returns once clock() >= t, never before.
func (a *alarms) sleepUntil(t time.Duration) {
	if t <= a.clock() {
		return
	}
	wake := <-a.wakes
	a.mu.Lock()
	heap.Push(&a.queue, alarm{at: t, wake: wake})
	if at := a.firingFor(t); a.armed == 0 || at < a.armed {
		a.armLocked(at)
	}
	a.mu.Unlock()
	<-wake
	a.wakes <- wake
}

// firingFor is when the timer should fire for a wake-up at t: then, or
// alarmQuantum after the last firing if that is later. Called with mu held.
func (a *alarms) firingFor(t time.Duration) time.Duration {
	return max(t, a.fired+alarmQuantum)
}

// armLocked sets the timer for at. Arming an open timerfd cannot fail
// but by a bug here, and a timer left unarmed would hang every sleeper:
// say so at once.
func (a *alarms) armLocked(at time.Duration) {
	a.armed = at
	if err := a.timer.arm(at - a.clock()); err != nil {
		panic(err)
	}
}

// fire is the loop that wakes the workers whose time has come.
func (a *alarms) fire() {
	defer close(a.done)
	for a.timer.wait() == nil {
		a.mu.Lock()
		now := a.clock()
		a.fired = now
		for len(a.queue) > 0 && a.queue[0].at <= now {
			heap.Pop(&a.queue).(alarm).wake <- struct{}{}
		}
		a.armed = 0
		if len(a.queue) > 0 {
			a.armLocked(a.firingFor(a.queue[0].at))
		}
		a.mu.Unlock()
	}
}

// close stops the timer. Every sleeper has returned: runOpenLoop waits
// for its workers first.
func (a *alarms) close() {
	a.timer.close()
	<-a.done
}

type alarm struct {
	at   time.Duration
	wake chan struct{}
}

// alarmQueue is a min-heap of alarms by time.
type alarmQueue []alarm

func (q alarmQueue) Len() int           { return len(q) }
func (q alarmQueue) Less(i, j int) bool { return q[i].at < q[j].at }
func (q alarmQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *alarmQueue) Push(x any)        { *q = append(*q, x.(alarm)) }
func (q *alarmQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}
