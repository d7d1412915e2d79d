package bench

import (
	"sync"
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

// Many workers on the one timer: each wakes, none early, whatever the
// order their wake-ups were registered in.
func TestRealClockWakesEveryWorker(t *testing.T) {
	const workers, sleeps = 16, 40
	clk, err := newRealClock(workers)
	if err != nil {
		t.Fatal(err)
	}
	defer clk.close()
	early := make(chan time.Duration, workers*sleeps)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range sleeps {
				// Later and earlier wake-ups interleaved across workers.
				target := clk.now() + time.Duration((g*7+i*13)%23)*150*time.Microsecond
				clk.sleepUntil(target)
				if now := clk.now(); now < target {
					early <- target - now
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a worker never woke")
	}
	close(early)
	for d := range early {
		t.Errorf("a worker woke %v early", d)
	}
}
