package bench

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

func TestScheduleMath(t *testing.T) {
	s := newSchedule(1000)
	for i, want := range map[int64]time.Duration{0: 0, 1: time.Millisecond, 250: 250 * time.Millisecond} {
		if got := s.due(i); got != want {
			t.Errorf("rate 1000: due(%d) = %v, want %v", i, got, want)
		}
	}
	for _, c := range []struct {
		rate   float64
		window time.Duration
		want   int64
	}{
		{1000, time.Second, 1000},
		{1000, time.Second + time.Nanosecond, 1001},
		{3, time.Second, 3},   // due at 0, 1/3 s, 2/3 s
		{2.5, time.Second, 3}, // due at 0, 0.4 s, 0.8 s
		{1e6, 0, 0},
		{30_000, 200 * time.Millisecond, 6000},
	} {
		if got := newSchedule(c.rate).count(c.window); got != c.want {
			t.Errorf("rate %v: count(%v) = %d, want %d", c.rate, c.window, got, c.want)
		}
	}
	// count is exact on awkward rates too: every request it counts is due
	// inside the window, the next one is not.
	for _, rate := range []float64{7, 1234.5, 26_213.7, 98_765.4, 312_000.9} {
		s := newSchedule(rate)
		for _, w := range []time.Duration{time.Millisecond, 333 * time.Millisecond, time.Second} {
			n := s.count(w)
			if n < 1 || s.due(n-1) >= w || s.due(n) < w {
				t.Errorf("rate %v window %v: count %d, due(n-1) %v, due(n) %v", rate, w, n, s.due(n-1), s.due(n))
			}
		}
	}
}

// fakeClock is the scheduler's time for one worker: sleeping jumps to the
// wake-up time, an operation advances the clock by what it takes.
type fakeClock struct{ t time.Duration }

func (c *fakeClock) now() time.Duration { return c.t }

func (c *fakeClock) sleepUntil(t time.Duration) { c.t = max(c.t, t) }

// stallingOp takes no time except the first call, which takes stall.
func stallingOp(clk *fakeClock, stall time.Duration) (op func(int) error, calls *int) {
	calls = new(int)
	return func(int) error {
		if *calls == 0 {
			clk.t += stall
		}
		*calls++
		return nil
	}, calls
}

func histCount(h *hdrhistogram.Histogram, atLeast time.Duration) int64 {
	var n int64
	for _, bar := range h.Distribution() {
		if bar.To >= atLeast.Microseconds() { // the bucket holding atLeast, and those above
			n += bar.Count
		}
	}
	return n
}

// TestOpenLoopStallCounts pins coordinated-omission correctness: requests
// due while the client is stalled are sent late, and their latency runs
// from when they were due, so the stall shows in a hundred latencies, not
// in the one request that stalled.
func TestOpenLoopStallCounts(t *testing.T) {
	clk := &fakeClock{}
	op, calls := stallingOp(clk, 100*time.Millisecond)
	hists := newWorkerHists(1)
	h := hists[0].latency
	// 1000/s for 200ms: requests due every 1ms; request 0 takes 100ms, so
	// request i < 100 is sent at 100ms and waits 100-i ms.
	res := runOpenLoop(clk, newSchedule(1000), 200*time.Millisecond, 1, op, hists)
	if res.sent != 200 || res.unsent != 0 || *calls != 200 {
		t.Fatalf("sent %d, unsent %d, calls %d; want 200, 0, 200", res.sent, res.unsent, *calls)
	}
	if h.TotalCount() != 200 {
		t.Fatalf("%d latencies recorded, want 200", h.TotalCount())
	}
	// Latencies of 50ms or more: request 0 (100ms) and 1..50 (99..50ms).
	// Timed from the send, only request 0 would be there.
	if n := histCount(h, 50*time.Millisecond); n != 51 {
		t.Errorf("%d latencies of 50ms or more, want 51", n)
	}
	// Started late: requests 1..99 by 99..1ms; request 0 started on time,
	// its own 100ms is latency, not lateness.
	lag := hists[0].startLag
	if n := histCount(lag, 50*time.Millisecond); lag.TotalCount() != 200 || n != 50 || !near(time.Duration(lag.Max())*time.Microsecond, 99*time.Millisecond) {
		t.Errorf("start lags: %d recorded, %d of 50ms or more, max %dµs; want 200, 50, 99ms", lag.TotalCount(), n, lag.Max())
	}
	var s LatencySample
	s.percentiles(h)
	// Sorted: 100 zeros (requests 100..199 are on time), then 1..100ms.
	// p99 is the 198th value: 98ms; p50 the 100th: 0.
	if s.P50 != 0 || !near(s.P99, 98*time.Millisecond) || !near(s.Max, 100*time.Millisecond) {
		t.Errorf("p50 %v, p99 %v, max %v; want 0, 98ms, 100ms", s.P50, s.P99, s.Max)
	}
}

// TestOpenLoopUnsentCount: a stall longer than the window leaves the
// requests due after it unsent; they count with the wait they had when
// the window closed, not as if they had never been due.
func TestOpenLoopUnsentCount(t *testing.T) {
	clk := &fakeClock{}
	op, calls := stallingOp(clk, 500*time.Millisecond)
	hists := newWorkerHists(1)
	h := hists[0].latency
	res := runOpenLoop(clk, newSchedule(1000), 200*time.Millisecond, 1, op, hists)
	if res.sent != 1 || res.unsent != 199 || *calls != 1 {
		t.Fatalf("sent %d, unsent %d, calls %d; want 1, 199, 1", res.sent, res.unsent, *calls)
	}
	if h.TotalCount() != 200 {
		t.Fatalf("%d latencies recorded, want 200", h.TotalCount())
	}
	// Request i (1..199) had waited 200-i ms when the window closed.
	if n := histCount(h, 100*time.Millisecond); n != 101 {
		t.Errorf("%d latencies of 100ms or more, want 101 (request 0 and 1..100)", n)
	}
	var s LatencySample
	s.percentiles(h)
	if !near(s.Max, 500*time.Millisecond) || !near(s.P50, 100*time.Millisecond) {
		t.Errorf("p50 %v, max %v; want 100ms, 500ms", s.P50, s.Max)
	}
}

// TestOpenLoopOnTime: a client that keeps up sends every request on its
// due time and records zero waits; a nil histogram list is a warm-up.
func TestOpenLoopOnTime(t *testing.T) {
	clk := &fakeClock{}
	errBoom := errors.New("boom")
	n := 0
	op := func(int) error {
		n++
		clk.t += 100 * time.Microsecond
		if n%10 == 0 {
			return errBoom
		}
		return nil
	}
	hists := newWorkerHists(1)
	h := hists[0].latency
	res := runOpenLoop(clk, newSchedule(2000), 100*time.Millisecond, 1, op, hists)
	if res.sent != 200 || res.unsent != 0 || res.errors != 20 || res.firstErr != errBoom {
		t.Fatalf("sent %d, unsent %d, errors %d (%v); want 200, 0, 20", res.sent, res.unsent, res.errors, res.firstErr)
	}
	if res.lastDone != 99_600*time.Microsecond {
		t.Errorf("last request done at %v, want 99.6ms", res.lastDone)
	}
	if h.TotalCount() != 200 || h.Max() != 100 || h.Min() != 100 {
		t.Errorf("latencies: %d from %dµs to %dµs, want 200 of 100µs", h.TotalCount(), h.Min(), h.Max())
	}
	if lag := hists[0].startLag; lag.TotalCount() != 200 || lag.Max() != 0 {
		t.Errorf("start lags: %d, the largest %dµs; want 200, all 0", lag.TotalCount(), lag.Max())
	}
	if res := runOpenLoop(&fakeClock{}, newSchedule(2000), 100*time.Millisecond, 1, func(int) error { return nil }, nil); res.sent != 200 {
		t.Errorf("warm-up sent %d, want 200", res.sent)
	}
}

// TestOpenLoopWorkersCap: with every worker blocked, no more requests are
// outstanding than workers, and the rest wait for them (real clock: the
// assertions are counts, and lower bounds a slow machine only raises).
func TestOpenLoopWorkersCap(t *testing.T) {
	const workers = 4
	release := make(chan struct{})
	var (
		mu                    sync.Mutex
		inFlight, peak, calls int
	)
	op := func(int) error {
		mu.Lock()
		calls++
		inFlight++
		peak = max(peak, inFlight)
		first := calls <= workers
		mu.Unlock()
		if first {
			<-release // the first requests stall until the window is nearly over
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		return nil
	}
	hists := newWorkerHists(workers)
	h := hists[0].latency
	clk, err := newRealClock(workers)
	if err != nil {
		t.Fatal(err)
	}
	defer clk.close()
	// Released at 150ms on the run's own clock, never before.
	go func() { time.Sleep(150*time.Millisecond - clk.now()); close(release) }()
	res := runOpenLoop(clk, newSchedule(1000), 200*time.Millisecond, workers, op, hists)
	if peak > workers {
		t.Errorf("%d requests outstanding at once, cap %d", peak, workers)
	}
	for _, x := range hists[1:] {
		h.Merge(x.latency)
	}
	if h.TotalCount() != res.sent+res.unsent || res.sent+res.unsent != 200 {
		t.Errorf("sent %d + unsent %d, %d recorded; want 200 recorded", res.sent, res.unsent, h.TotalCount())
	}
	// Requests due in the first 50ms waited for the stall to end at
	// 150ms or later: at least 100ms each.
	if n := histCount(h, 100*time.Millisecond); n < 50 {
		t.Errorf("%d latencies of 100ms or more, want at least 50", n)
	}
}

// near: within the histogram's precision (3 significant digits).
func near(got, want time.Duration) bool {
	d := got - want
	return d >= -want/500 && d <= want/500
}

func TestLatencyPercentiles(t *testing.T) {
	h := newHist()
	for ms := 1; ms <= 1000; ms++ {
		record(h, time.Duration(ms)*time.Millisecond)
	}
	record(h, -time.Second) // clamped to 0, not lost
	record(h, time.Hour)    // clamped to the histogram's top
	var s LatencySample
	s.percentiles(h)
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{
		{"p50", s.P50, 500 * time.Millisecond},
		{"p99", s.P99, 990 * time.Millisecond},
		{"p99.9", s.P999, 1000 * time.Millisecond},
		{"max", s.Max, time.Minute},
	} {
		if !near(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if h.TotalCount() != 1002 {
		t.Errorf("%d recorded, want 1002", h.TotalCount())
	}
}

func TestFmtLatency(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                            "0ns",
		850:                          "850ns",
		85 * time.Microsecond:        "85µs",
		1900 * time.Microsecond:      "1.9ms",
		2 * time.Millisecond:         "2ms",
		38 * time.Millisecond:        "38ms",
		999700 * time.Microsecond:    "1s",
		1300 * time.Millisecond:      "1.3s",
		-1:                           "-",
		9960 * time.Microsecond:      "10ms",
		123456 * time.Microsecond:    "123ms",
		2_500_000 * time.Microsecond: "2.5s",
	} {
		if got := fmtLatency(d); got != want {
			t.Errorf("fmtLatency(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestLatencyReport builds a report by hand: medians over rounds, the
// spread, the tables and the chart.
func TestLatencyReport(t *testing.T) {
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	clients := []string{"gomemcache", "ermc-text"}
	rep := &LatencyReport{Options: LatencyOptions{
		Clients: clients, Workloads: []string{"Get100B/64g"}, Loads: []float64{0.5, 1},
		Capacity: map[string]float64{"Get100B/64g": 100_000}, Rounds: 3, Duration: time.Second,
	}}
	for _, load := range rep.Options.Loads {
		for i, c := range clients {
			r := LatencyResult{Workload: "Get100B/64g", Client: c, Load: load, Offered: load * 100_000}
			for round, p99 := range []float64{3, 1, 2} {
				x := p99 * load * float64(i+1)
				r.Samples = append(r.Samples, LatencySample{Offered: r.Offered, Achieved: r.Offered - float64(round),
					P50: ms(x / 10), P99: ms(x), P999: ms(x * 2), Max: ms(x * 3), StartLagP99: ms(x / 20)})
			}
			rep.Results = append(rep.Results, r)
		}
	}
	rep.summarize()
	r := rep.Result("Get100B/64g", 1, "ermc-text")
	if r.P99 != ms(4) || r.P50 != ms(0.4) || r.Max != ms(12) || r.Achieved != 99_999 {
		t.Errorf("medians: p99 %v p50 %v max %v achieved %v; want 4ms 400µs 12ms 99999", r.P99, r.P50, r.Max, r.Achieved)
	}
	if got := latencySpread(r.Samples); got != "2ms – 6ms" {
		t.Errorf("spread %q, want 2ms – 6ms", got)
	}
	p99 := rep.P99Table("Get100B/64g")
	for _, want := range []string{"| gomemcache | ermc-text |", "| 50.0k/s (50%) | 1ms | 2ms |", "| 100k/s (100%) | 2ms | 4ms |"} {
		if !strings.Contains(p99, want) {
			t.Errorf("p99 table lacks %q:\n%s", want, p99)
		}
	}
	table := rep.LatencyTable("Get100B/64g")
	for _, want := range []string{"| 100% (100k/s) | gomemcache | 100k | 200µs | 2ms | 4ms | 6ms | 100µs | - | 1ms – 3ms |", "|  | ermc-text | 100k | 400µs | 4ms | 8ms | 12ms | 200µs | 0 of 3 | 2ms – 6ms |"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if n := strings.Count(table, "\n"); n != 2+4 {
		t.Errorf("table has %d lines, want 6", n)
	}
	md := rep.Markdown("latency.svg")
	for _, want := range []string{p99, table, "![p99 latency against offered rate](latency.svg)", "Get100B/64g 100k/s"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	block := rep.ReadmeBlock(Machine{NumCPU: 2, LoadAvg: "1.50 1.20 1.00"}, "bench/latency.svg")
	for _, want := range []string{p99, "load average 1.50 at the start", "over 3 rounds", "at 64 goroutines measured in the same run", "(bench/latency.svg)"} {
		if !strings.Contains(block, want) {
			t.Errorf("README block lacks %q:\n%s", want, block)
		}
	}
	svg := string(rep.Chart(Machine{}))
	if !strings.HasPrefix(svg, "<svg") || !strings.HasSuffix(svg, "</svg>\n") {
		t.Fatalf("chart is not an SVG document")
	}
	if n := strings.Count(svg, "<polyline"); n != len(clients) {
		t.Errorf("chart has %d lines, want one per client (%d)", n, len(clients))
	}
	if n := strings.Count(svg, "<circle"); n != len(clients)*2 {
		t.Errorf("chart has %d points, want %d", n, len(clients)*2)
	}
	// The y axis spans whole decades around the median p99s (1ms..4ms).
	for _, want := range []string{">1ms</text>", ">10ms</text>"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks the y label %s", want)
		}
	}
	if strings.Contains(svg, ">100µs</text>") || strings.Contains(svg, ">100ms</text>") {
		t.Errorf("chart's y axis goes beyond 1ms..10ms")
	}
}

// TestRoundsAtOrBelowBaseline: a client is compared with gomemcache round
// by round, ties counting for it, and neither gomemcache nor the harness
// is compared with itself.
func TestRoundsAtOrBelowBaseline(t *testing.T) {
	p99s := map[string][]time.Duration{
		"gomemcache":  {3, 1, 2, 5},
		"ermc-text":   {2, 4, 2, 6}, // below, above, tie, above
		HarnessClient: {0, 0, 0, 0},
	}
	rep := &LatencyReport{}
	for c, xs := range p99s {
		r := LatencyResult{Workload: "Get100B/64g", Client: c, Load: 0.5}
		for _, x := range xs {
			r.Samples = append(r.Samples, LatencySample{P99: x * time.Millisecond})
		}
		rep.Results = append(rep.Results, r)
	}
	for c, want := range map[string]string{"ermc-text": "2 of 4", "gomemcache": "-", HarnessClient: "-"} {
		if got := rep.roundsAtOrBelowBaseline(rep.Result("Get100B/64g", 0.5, c)); got != want {
			t.Errorf("%s: %q, want %q", c, got, want)
		}
	}
	alone := &LatencyReport{Results: []LatencyResult{rep.Results[0]}}
	alone.Results[0].Client = "ermc-binary"
	if got := alone.roundsAtOrBelowBaseline(&alone.Results[0]); got != "-" {
		t.Errorf("without gomemcache in the run: %q, want -", got)
	}
}

// TestRunLatencyOneRound runs the open-loop harness for one tiny round
// against a real memcached: every client, two rates, the capacity of one
// workload given and the other's measured.
func TestRunLatencyOneRound(t *testing.T) {
	needServer(t)
	var progress bytes.Buffer
	rep, err := RunLatency(LatencyOptions{
		Addr:         serverAddr,
		Loads:        []float64{0.05, 0.2},
		Capacity:     map[string]float64{"Get100B/64g": 20_000},
		CapacityTime: 20 * time.Millisecond,
		Rounds:       1,
		Duration:     50 * time.Millisecond,
		Warmup:       10 * time.Millisecond,
		Progress:     &progress,
	})
	if err != nil {
		t.Fatal(err)
	}
	if c := rep.Options.Capacity["Set100B/64g"]; c <= 0 {
		t.Errorf("Set100B/64g capacity %v: not measured", c)
	}
	// Every maker's client, and the harness alone first.
	if got, want := rep.Options.Clients[0], HarnessClient; got != want {
		t.Errorf("first client %q, want %q", got, want)
	}
	if want := 2 * 2 * (1 + len(Makers())); len(rep.Results) != want {
		t.Fatalf("%d results, want %d", len(rep.Results), want)
	}
	if md := rep.Markdown(""); !strings.Contains(md, "\""+HarnessClient+"\" is the same open loop") {
		t.Errorf("the report does not say what %q is", HarnessClient)
	}
	for _, r := range rep.Results {
		switch {
		case r.Errors > 0:
			t.Errorf("%s %s %v: %d errors, first: %v", r.Workload, r.Client, r.Load, r.Errors, r.FirstErr)
		case len(r.Samples) != 1 || r.Achieved <= 0 || r.Samples[0].Sent == 0 || r.P99 <= 0:
			t.Errorf("%s %s %v: %d samples, %v/s, p99 %v", r.Workload, r.Client, r.Load, len(r.Samples), r.Achieved, r.P99)
		}
		if !strings.Contains(progress.String(), r.Workload) || !strings.Contains(progress.String(), " "+r.Client+": ") {
			t.Errorf("no progress line for %s %s", r.Workload, r.Client)
		}
	}
	md := rep.Markdown("")
	for _, w := range rep.Options.Workloads {
		if !strings.Contains(md, rep.P99Table(w)) || !strings.Contains(md, rep.LatencyTable(w)) {
			t.Errorf("report lacks the %s tables", w)
		}
	}
	t.Logf("one tiny round in %v\n%s", rep.Took, md)
}

func TestReplaceBlock(t *testing.T) {
	doc := "# x\n\nbefore\n" + ReadmeBegin + "\nold table\nmore\n" + ReadmeEnd + "\nafter\n"
	got, ok := ReplaceBlock(doc, ReadmeBegin, ReadmeEnd, "new\n")
	if want := "# x\n\nbefore\n" + ReadmeBegin + "\nnew\n" + ReadmeEnd + "\nafter\n"; !ok || got != want {
		t.Errorf("ReplaceBlock = %q, %v; want %q", got, ok, want)
	}
	again, _ := ReplaceBlock(got, ReadmeBegin, ReadmeEnd, "new\n")
	if again != got {
		t.Errorf("replacing twice changed the document: %q", again)
	}
	for _, bad := range []string{"no markers\n", ReadmeBegin + "\nno end\n", ReadmeEnd + "\n" + ReadmeBegin} {
		if out, ok := ReplaceBlock(bad, ReadmeBegin, ReadmeEnd, "x"); ok || out != bad {
			t.Errorf("ReplaceBlock(%q) = %q, %v; want it unchanged", bad, out, ok)
		}
	}
}
