package bench

import (
	"testing"
	"time"
)

// The open loop's latencies run from due times, so a sleep that returned
// early would send a request before it fell due and flatter the client.
func TestSleepUntilNeverEarly(t *testing.T) {
	start := time.Now()
	clock := func() time.Duration { return time.Since(start) }
	for i := 0; i < 60; i++ {
		// Waits on both sides of the coarse/precise split, and none.
		wait := time.Duration(i%6) * 800 * time.Microsecond
		target := clock() + wait
		sleepUntil(clock, target)
		if now := clock(); now < target {
			t.Fatalf("wait %v: woke %v early", wait, target-now)
		}
	}
}
