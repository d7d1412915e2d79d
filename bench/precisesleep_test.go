package bench

import (
	"testing"
	"time"
)

// The open loop's latencies run from due times, so a sleep that returned
// early would send a request before it fell due and flatter the client.
func TestRealClockNeverWakesEarly(t *testing.T) {
	clk, err := newRealClock(2)
	if err != nil {
		t.Fatal(err)
	}
	defer clk.close()
	for i := 0; i < 60; i++ {
		// From none to a few milliseconds, below and above Go's 1 ms grid.
		wait := time.Duration(i%6) * 800 * time.Microsecond
		target := clk.now() + wait
		clk.sleepUntil(target)
		if now := clk.now(); now < target {
			t.Fatalf("wait %v: woke %v early", wait, target-now)
		}
	}
}
