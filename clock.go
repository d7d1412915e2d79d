package ermc

import "time"

// Deadlines come from the real clock, rounded up to the next
// deadlineGrain (or a hundredth of the timeout, if that is less): a
// connection's deadline then moves at most once per grain, so the requests
// within one skip the SetDeadline call (netConn caches what it set last),
// and no deadline is ever earlier than asked, nor later by more than 1%.
// (A coarse clock advanced by a goroutine is cheaper to read, but it lags
// whenever the process has more runnable goroutines than CPUs, and a
// lagging clock makes every deadline early: timeouts that did not happen.)
const deadlineGrain = time.Millisecond

// deadlineAfter is the deadline d from now; zero (no deadline) when d is
// not positive.
func deadlineAfter(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return deadlineFrom(time.Now(), d)
}

// deadlineFrom is the deadline d after t, rounded up to the grain.
func deadlineFrom(t time.Time, d time.Duration) time.Time {
	grain := min(deadlineGrain, d/100)
	if grain <= 0 {
		return t.Add(d)
	}
	return t.Add(d + grain - 1).Truncate(grain)
}
