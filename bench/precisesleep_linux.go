package bench

import (
	"time"

	"golang.org/x/sys/unix"
)

// Go's timers wake a process whose threads are all idle on a 1 ms grid
// (the scheduler's poller waits in whole milliseconds), and the kernel
// adds up to 50 µs of timer slack on top. At a low offered rate the
// process idles between requests, so a worker sleeping with time.Sleep
// sent its request 0.5 ms late on average (1.1 ms at p99, measured at
// 12.8k/s with no client call at all): the same lag for every client,
// large enough to hide their differences. The last stretch of a wait
// is therefore slept by the thread itself, with no timer slack.

// coarseLead is how much of a wait is left to the precise sleep: more
// than the 1 ms grid, so time.Sleep never overshoots the due time.
const coarseLead = 1500 * time.Microsecond

// sleepUntil sleeps until clock() reaches t, never returning early.
func sleepUntil(clock func() time.Duration, t time.Duration) {
	if d := t - clock(); d > 2*coarseLead {
		time.Sleep(d - coarseLead)
	}
	for {
		d := t - clock()
		if d <= 0 {
			return
		}
		// Timer slack is per thread, and the goroutine may be on another
		// thread after each wake: set it every time (one cheap syscall).
		_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
		ts := unix.NsecToTimespec(int64(d))
		_ = unix.Nanosleep(&ts, nil) // EINTR (the runtime's signals): loop
	}
}
