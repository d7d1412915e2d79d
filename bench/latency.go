package bench

import (
	"fmt"
	"io"
	"runtime"
	"time"
)

// LatencyOptions configures RunLatency: every client at several offered
// rates, open loop, over loopback TCP.
type LatencyOptions struct {
	Addr    string
	Clients []string // default: every Maker
	// Workloads run open loop; default Get100B/64g and Set100B/64g. Their
	// goroutine count is the number of workers, the cap on requests
	// outstanding.
	Workloads []string
	// Loads are the offered rates as fractions of gomemcache's closed-loop
	// ops/s on the same workload (its capacity); default DefaultLoads.
	Loads []float64
	// Capacity is gomemcache's closed-loop ops/s per workload, measured in
	// the same run; workloads missing here are measured first.
	Capacity map[string]float64
	// CapacityGiven says Capacity was set by hand (ermcbench
	// -latency-capacity), not measured; the report says so.
	CapacityGiven bool
	// CapacityTime is the closed-loop measurement per round of a capacity
	// not given; default 500ms, as the throughput table's.
	CapacityTime time.Duration
	Rounds       int           // default 3
	Duration     time.Duration // measured per client, rate and round; default 1s
	Warmup       time.Duration // unmeasured, at the same rate, before each (ermcbench: 200ms)
	Progress     io.Writer
}

// LatencyWorkloads returns names, or the default latency workloads when
// it is empty.
func LatencyWorkloads(names []string) []string {
	if len(names) == 0 {
		return []string{"Get100B/64g", "Set100B/64g"}
	}
	return names
}

// DefaultLoads are the offered rates, as fractions of gomemcache's own
// closed-loop capacity: well below it, at it, and beyond it.
var DefaultLoads = []float64{0.25, 0.5, 0.8, 1, 1.5, 3}

func (o *LatencyOptions) fill() {
	if len(o.Clients) == 0 {
		o.Clients = []string{HarnessClient}
		for _, m := range Makers() {
			o.Clients = append(o.Clients, m.Name)
		}
	}
	o.Workloads = LatencyWorkloads(o.Workloads)
	if len(o.Loads) == 0 {
		o.Loads = DefaultLoads
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Duration <= 0 {
		o.Duration = time.Second
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.CapacityTime <= 0 {
		o.CapacityTime = 500 * time.Millisecond
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// LatencyResult is one client on one workload at one offered rate.
type LatencyResult struct {
	Workload, Client string
	Load             float64 // fraction of the capacity
	Offered          float64 // requests due per second
	Samples          []LatencySample
	// Medians over rounds, each taken separately.
	Achieved            float64
	P50, P99, P999, Max time.Duration
	StartLagP99         time.Duration
	Errors              int64
	FirstErr            error
}

// LatencyReport is the outcome of RunLatency.
type LatencyReport struct {
	Options LatencyOptions
	Results []LatencyResult // workload, load, client order
	Started time.Time
	Took    time.Duration
}

// Result returns one client's result on a workload at a load, or nil.
func (rep *LatencyReport) Result(workload string, load float64, client string) *LatencyResult {
	for i := range rep.Results {
		r := &rep.Results[i]
		if r.Workload == workload && r.Load == load && r.Client == client {
			return r
		}
	}
	return nil
}

// Capacities measures gomemcache's closed-loop ops/s on each workload
// (the median over rounds, as the throughput table has it).
func Capacities(addr string, workloads []string, rounds int, d time.Duration, progress io.Writer) (map[string]float64, error) {
	rep, err := Run(Options{
		Addr:       addr,
		Transports: []string{TCP},
		Clients:    map[string][]string{TCP: {"gomemcache"}},
		Workloads:  workloads,
		Rounds:     rounds,
		Duration:   d,
		Warmup:     50 * time.Millisecond,
		Progress:   progress,
	})
	if err != nil {
		return nil, err
	}
	return rep.Capacities(), nil
}

// Capacities returns gomemcache's median ops/s over loopback TCP per
// workload in the report.
func (rep *Report) Capacities() map[string]float64 {
	caps := map[string]float64{}
	for _, r := range rep.Results {
		if r.Transport == TCP && r.Client == "gomemcache" && r.OpsPerSec > 0 {
			caps[r.Workload] = r.OpsPerSec
		}
	}
	return caps
}

// latencyCell is one client on one workload: its workers and keys, made
// once and reused over rates and rounds.
type latencyCell struct {
	inst    Instance
	workers []Worker
	op      func(g int) error
}

// RunLatency measures every client on every workload at every offered
// rate, round by round: in round r, for each workload and rate, every
// client runs once, in an order rotated by r, the workload and the rate.
func RunLatency(opts LatencyOptions) (*LatencyReport, error) {
	opts.fill()
	rep := &LatencyReport{Started: time.Now()}
	if opts.Addr == "" {
		return nil, fmt.Errorf("latency runs need a memcached address")
	}
	var missing []string
	for _, w := range opts.Workloads {
		if _, ok := opts.Capacity[w]; !ok {
			missing = append(missing, w)
		}
	}
	caps := map[string]float64{}
	for w, c := range opts.Capacity {
		caps[w] = c
	}
	if len(missing) > 0 {
		measured, err := Capacities(opts.Addr, missing, opts.Rounds, opts.CapacityTime, opts.Progress)
		if err != nil {
			return nil, err
		}
		for w, c := range measured {
			caps[w] = c
		}
	}
	opts.Capacity = caps
	rep.Options = opts

	var workloads []Workload
	for _, name := range opts.Workloads {
		w, ok := WorkloadByName(name)
		if !ok {
			return nil, fmt.Errorf("unknown workload %q", name)
		}
		if caps[name] <= 0 {
			return nil, fmt.Errorf("%s: no capacity measured for gomemcache", name)
		}
		workloads = append(workloads, w)
	}

	clients := map[string]Client{}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	cells := map[[2]string]*latencyCell{}
	cellFor := func(wl Workload, name string) (*latencyCell, error) {
		k := [2]string{wl.Name, name}
		if c, ok := cells[k]; ok {
			return c, nil
		}
		cl, ok := clients[name]
		if !ok {
			mk, ok := MakerByName(name)
			if !ok {
				return nil, fmt.Errorf("unknown client %q", name)
			}
			var err error
			if cl, err = mk.New(Config{Addr: opts.Addr}); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			clients[name] = cl
		}
		c := &latencyCell{inst: wl.New(fmt.Sprintf("el:%s:%s:", name, wl.Name), wl.Goroutines)}
		for g := 0; g < wl.Goroutines; g++ {
			c.workers = append(c.workers, cl.NewWorker())
		}
		if err := c.inst.Prepare(c.workers[0]); err != nil {
			return nil, fmt.Errorf("%s %s: prepare: %w", wl.Name, name, err)
		}
		c.op = func(g int) error { return c.inst.Op(c.workers[g], g) }
		cells[k] = c
		return c, nil
	}

	for _, wl := range workloads {
		for _, load := range opts.Loads {
			for _, cl := range opts.Clients {
				rep.Results = append(rep.Results, LatencyResult{Workload: wl.Name, Client: cl, Load: load, Offered: load * caps[wl.Name]})
			}
		}
	}
	maxWorkers := 0
	for _, wl := range workloads {
		maxWorkers = max(maxWorkers, wl.Goroutines)
	}
	hists := newWorkerHists(maxWorkers)

	for round := 0; round < opts.Rounds; round++ {
		for wi, wl := range workloads {
			for li, load := range opts.Loads {
				for j := range opts.Clients {
					name := opts.Clients[(j+round+wi+li)%len(opts.Clients)]
					c, err := cellFor(wl, name)
					if err != nil {
						return nil, err
					}
					r := rep.Result(wl.Name, load, name)
					runtime.GC()
					s, err := openLoop(c.op, r.Offered, wl.Goroutines, opts.Warmup, opts.Duration, hists[:wl.Goroutines])
					if err != nil {
						return nil, fmt.Errorf("%s %s: %w", wl.Name, name, err)
					}
					r.Samples = append(r.Samples, s)
					line := fmt.Sprintf("latency round %d/%d %s %s/s (%.0f%%) %s: %s/s done, p50 %s p99 %s p99.9 %s max %s",
						round+1, opts.Rounds, wl.Name, Human(r.Offered), load*100, name, Human(s.Achieved),
						fmtLatency(s.P50), fmtLatency(s.P99), fmtLatency(s.P999), fmtLatency(s.Max))
					if s.Errors > 0 {
						line += fmt.Sprintf(" (%d errors, first: %v)", s.Errors, s.FirstErr)
					}
					fmt.Fprintln(opts.Progress, line)
				}
			}
		}
	}
	rep.summarize()
	rep.Took = time.Since(rep.Started)
	return rep, nil
}

func (rep *LatencyReport) summarize() {
	for i := range rep.Results {
		r := &rep.Results[i]
		var ach []float64
		var p50, p99, p999, mx, lag []time.Duration
		for _, s := range r.Samples {
			r.Errors += s.Errors
			if r.FirstErr == nil {
				r.FirstErr = s.FirstErr
			}
			ach = append(ach, s.Achieved)
			p50, p99, p999, mx = append(p50, s.P50), append(p99, s.P99), append(p999, s.P999), append(mx, s.Max)
			lag = append(lag, s.StartLagP99)
		}
		r.Achieved = median(ach)
		r.P50, r.P99, r.P999, r.Max = medianDuration(p50), medianDuration(p99), medianDuration(p999), medianDuration(mx)
		r.StartLagP99 = medianDuration(lag)
	}
}

// medianDuration is median for durations; -1 when there are none.
func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}
