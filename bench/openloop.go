package bench

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// The open-loop scheduler: requests fall due at a fixed rate whatever the
// client does, and a request's latency runs from when it was due, not
// from when it was sent. A client that stalls delays every request due
// during the stall, and those requests count their wait (no coordinated
// omission: the load generator does not slow down with the client).

// schedule is the due times of one run: request i is due at i/rate
// seconds after the start.
type schedule struct {
	interval float64 // nanoseconds between due times
}

func newSchedule(rate float64) schedule { return schedule{interval: 1e9 / rate} }

// due is when request i falls due, from the start.
func (s schedule) due(i int64) time.Duration {
	return time.Duration(float64(i) * s.interval)
}

// count is the number of requests due within window: the smallest n with
// due(n) >= window.
func (s schedule) count(window time.Duration) int64 {
	if window <= 0 {
		return 0
	}
	n := int64(float64(window) / s.interval)
	for s.due(n) < window {
		n++
	}
	for n > 0 && s.due(n-1) >= window {
		n--
	}
	return n
}

// schedClock is the time the scheduler runs on; tests drive a fake one.
type schedClock interface {
	now() time.Duration // since the start of the run
	sleepUntil(t time.Duration)
}

// realClock is the wall clock from start; workers sleep on its alarms.
type realClock struct {
	start  time.Time
	alarms *alarms
}

func newRealClock(workers int) (*realClock, error) {
	c := &realClock{start: time.Now()}
	a, err := newAlarms(c.now, workers)
	if err != nil {
		return nil, err
	}
	c.alarms = a
	return c, nil
}

func (c *realClock) now() time.Duration { return time.Since(c.start) }

// sleepUntil returns once now() >= t, never before.
func (c *realClock) sleepUntil(t time.Duration) { c.alarms.sleepUntil(t) }

func (c *realClock) close() { c.alarms.close() }

// Latencies are recorded in microseconds, from 1µs to a minute, to three
// significant digits.
const (
	histMaxMicros = 60_000_000
	histDigits    = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, histMaxMicros, histDigits) }

// workerHists is one worker's histograms: each request's latency from its
// due time, and how late the worker started it. The start lag is the load
// generator's and the process's own delay (a worker woken late, or busy
// with the request before), inside the latency, not added to it.
type workerHists struct{ latency, startLag *hdrhistogram.Histogram }

func newWorkerHists(n int) []workerHists {
	hs := make([]workerHists, n)
	for i := range hs {
		hs[i] = workerHists{newHist(), newHist()}
	}
	return hs
}

// record adds one latency, clamped to the histogram's range.
func record(h *hdrhistogram.Histogram, d time.Duration) {
	us := min(max(d.Microseconds(), 0), histMaxMicros)
	_ = h.RecordValue(us) // in range by construction
}

// openLoopResult is what runOpenLoop saw, per run.
type openLoopResult struct {
	sent, errors int64
	unsent       int64         // due within the window but never sent
	lastDone     time.Duration // when the last sent request finished
	firstErr     error
}

// runOpenLoop sends the requests due within window on workers goroutines
// (the cap on requests outstanding): each takes the next request, waits
// for its due time if it is early, runs op and records now minus the due
// time, and how late it started op, into its own histograms hists[g]. A
// worker that finds the window over stops. The requests due within the
// window but never sent are recorded too, with the wait they had when the
// window closed (a lower bound of their latency), so an overloaded client
// is not flattered by the requests it never got to. hists may be nil (a
// warm-up).
func runOpenLoop(clk schedClock, sch schedule, window time.Duration, workers int,
	op func(g int) error, hists []workerHists) openLoopResult {
	n := sch.count(window)
	var (
		next     atomic.Int64
		mu       sync.Mutex
		res      openLoopResult
		wg       sync.WaitGroup
		abandons = make([]int64, workers) // a request taken after the window closed, or -1
	)
	for g := 0; g < workers; g++ {
		abandons[g] = -1
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			var sent, errs int64
			var firstErr error
			var last time.Duration
			for {
				i := next.Add(1) - 1
				if i >= n {
					break
				}
				due := sch.due(i)
				if clk.now() >= window {
					abandons[g] = i
					break
				}
				clk.sleepUntil(due)
				start := clk.now()
				err := op(g)
				done := clk.now()
				if hists != nil {
					record(hists[g].latency, done-due)
					record(hists[g].startLag, start-due)
				}
				sent++
				last = done
				if err != nil {
					if errs == 0 {
						firstErr = err
					}
					errs++
				}
			}
			mu.Lock()
			res.sent += sent
			res.errors += errs
			res.lastDone = max(res.lastDone, last)
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
			mu.Unlock()
		}(g)
	}
	wg.Wait()

	// Requests never sent: the abandoned ones, and all from the first
	// never taken to the end of the window.
	taken := min(next.Load(), n)
	unsent := func(i int64) {
		res.unsent++
		if hists != nil {
			record(hists[0].latency, window-sch.due(i))
		}
	}
	for _, i := range abandons {
		if i >= 0 {
			unsent(i)
		}
	}
	for i := taken; i < n; i++ {
		unsent(i)
	}
	return res
}

// LatencySample is one open-loop measurement: one client at one offered
// rate in one round. Latencies are from each request's due time.
type LatencySample struct {
	Offered             float64 // requests due per second
	Achieved            float64 // requests completed per second
	Sent                int64   // requests sent within the window
	Unsent              int64   // due within the window, never sent (counted in the percentiles with their wait at the end)
	Errors              int64
	FirstErr            error
	P50, P99, P999, Max time.Duration
	StartLagP99         time.Duration // p99 of how late the requests sent were started
}

// percentiles fills s from a histogram of microseconds.
func (s *LatencySample) percentiles(h *hdrhistogram.Histogram) {
	s.P50, s.P99, s.P999 = histQuantile(h, 50), histQuantile(h, 99), histQuantile(h, 99.9)
	s.Max = time.Duration(h.Max()) * time.Microsecond
}

// histQuantile is the q-th percentile of a histogram of microseconds.
func histQuantile(h *hdrhistogram.Histogram, q float64) time.Duration {
	return time.Duration(h.ValueAtQuantile(q)) * time.Microsecond
}

// openLoop runs op at rate for warmup (not recorded) and then window, on
// workers goroutines, and returns the measurement. hists are the
// workers' histograms, reset here and reused between measurements.
func openLoop(op func(g int) error, rate float64, workers int, warmup, window time.Duration, hists []workerHists) (LatencySample, error) {
	sch := newSchedule(rate)
	if warmup > 0 {
		if _, err := runOnRealClock(sch, warmup, workers, op, nil); err != nil {
			return LatencySample{}, err
		}
	}
	for _, h := range hists {
		h.latency.Reset()
		h.startLag.Reset()
	}
	res, err := runOnRealClock(sch, window, workers, op, hists)
	if err != nil {
		return LatencySample{}, err
	}
	total, lag := newHist(), newHist()
	for _, h := range hists {
		total.Merge(h.latency)
		lag.Merge(h.startLag)
	}
	s := LatencySample{Offered: rate, Sent: res.sent, Unsent: res.unsent, Errors: res.errors, FirstErr: res.firstErr}
	if elapsed := max(window, res.lastDone); elapsed > 0 {
		s.Achieved = float64(res.sent) / elapsed.Seconds()
	}
	s.percentiles(total)
	s.StartLagP99 = histQuantile(lag, 99)
	return s, nil
}

// runOnRealClock is runOpenLoop on a real clock that starts now.
func runOnRealClock(sch schedule, window time.Duration, workers int, op func(g int) error, hists []workerHists) (openLoopResult, error) {
	c, err := newRealClock(workers)
	if err != nil {
		return openLoopResult{}, err
	}
	defer c.close()
	return runOpenLoop(c, sch, window, workers, op, hists), nil
}

// fmtLatency formats a duration to two or three significant digits:
// 85µs, 1.9ms, 38ms, 1.3s.
func fmtLatency(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	x, unit := float64(d), "ns"
	switch {
	case d >= 999500*time.Microsecond:
		x, unit = x/1e9, "s"
	case d >= 999500*time.Nanosecond:
		x, unit = x/1e6, "ms"
	case d >= time.Microsecond:
		x, unit = x/1e3, "µs"
	}
	if x >= 9.95 {
		return fmt.Sprintf("%.0f%s", x, unit)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", x), ".0") + unit
}
