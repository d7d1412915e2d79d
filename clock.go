package ermc

import (
	"sync/atomic"
	"time"
)

// A coarse wall clock for deadlines. Reading the system clock costs tens
// of nanoseconds, and setting a connection deadline reads it again; a
// request deadline needs millisecond precision, not two clock reads per
// request. One goroutine advances the clock every clockTick while it is in
// use and stops after clockIdle without a reader; the next reader starts
// it again.

const (
	clockTick = time.Millisecond
	clockIdle = time.Second
)

type coarseClock struct {
	nanos   atomic.Int64 // wall time in Unix nanoseconds; 0 while stopped
	used    atomic.Bool  // read since the last tick
	running atomic.Bool
}

var clock coarseClock

// now returns the time to within clockTick, never ahead of the real time.
func (c *coarseClock) now() time.Time {
	if !c.used.Load() {
		c.used.Store(true)
	}
	if n := c.nanos.Load(); n != 0 {
		return time.Unix(0, n)
	}
	c.start()
	return time.Now()
}

func (c *coarseClock) start() {
	if !c.running.CompareAndSwap(false, true) {
		return
	}
	c.nanos.Store(time.Now().UnixNano())
	go c.run()
}

func (c *coarseClock) run() {
	t := time.NewTicker(clockTick)
	defer t.Stop()
	idle := 0
	for range t.C {
		if c.used.Swap(false) {
			idle = 0
		} else if idle++; time.Duration(idle)*clockTick >= clockIdle {
			c.nanos.Store(0)
			c.running.Store(false)
			return
		}
		c.nanos.Store(time.Now().UnixNano())
	}
}

// deadlineAfter is the deadline d from now on the coarse clock; zero (no
// deadline) when d is not positive.
func deadlineAfter(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return clock.now().Add(d)
}
