package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Transports.
const (
	TCP = "tcp" // loopback TCP to a real memcached
	Mem = "mem" // the in-memory responder (memconn.go)
)

// Options configures a Run.
type Options struct {
	Addr       string   // memcached for the tcp transport
	Transports []string // default: tcp (when Addr is set) and mem
	// Clients per transport; default: every Maker on tcp, gomemcache,
	// ermc-text and ermc-ultra on mem (the in-memory responder speaks the
	// text protocol only).
	Clients   map[string][]string
	Workloads []string // default: all
	Rounds    int      // default 3
	Duration  time.Duration
	Warmup    time.Duration
	// CompressThreshold of the clients the +lz4 workloads run on.
	CompressThreshold int
	MemMode           string    // in-memory transport mode, default MemInline
	Progress          io.Writer // one line per measurement; nil: none
}

// DefaultClients returns the clients each transport compares by default.
func DefaultClients() map[string][]string {
	var tcp []string
	for _, m := range Makers() {
		tcp = append(tcp, m.Name)
	}
	return map[string][]string{
		TCP: tcp,
		Mem: {"gomemcache", "ermc-text", "ermc-ultra"},
	}
}

func (o *Options) fill() {
	if len(o.Transports) == 0 {
		if o.Addr != "" {
			o.Transports = append(o.Transports, TCP)
		}
		o.Transports = append(o.Transports, Mem)
	}
	if o.Clients == nil {
		o.Clients = DefaultClients()
	}
	if len(o.Workloads) == 0 {
		for _, w := range Workloads() {
			o.Workloads = append(o.Workloads, w.Name)
		}
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Duration <= 0 {
		o.Duration = 500 * time.Millisecond
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.CompressThreshold <= 0 {
		o.CompressThreshold = 100
	}
	if o.MemMode == "" {
		o.MemMode = MemInline
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Sample is one measurement: one client, one workload, one round.
type Sample struct {
	Ops      int64
	Elapsed  time.Duration
	Mallocs  uint64 // runtime.MemStats.Mallocs delta
	Bytes    uint64 // runtime.MemStats.TotalAlloc delta
	Errors   int64
	FirstErr error
}

// OpsPerSec of the sample.
func (s Sample) OpsPerSec() float64 { return float64(s.Ops) / s.Elapsed.Seconds() }

// Result is one client on one workload: its samples and their medians.
type Result struct {
	Transport, Workload, Client string
	Samples                     []Sample
	OpsPerSec                   float64 // medians over rounds
	NsPerOp                     float64
	AllocsPerOp                 float64
	BytesPerOp                  float64
	// Ratio is the median over rounds of this client's ops/s divided by
	// gomemcache's in the same round; NaN when gomemcache did not run.
	Ratio    float64
	Errors   int64
	FirstErr error
}

// Report is the outcome of a Run.
type Report struct {
	Options Options
	Results []Result // transport, workload, client order
	Started time.Time
	Took    time.Duration
	// LoadAfter is the load average when the run ended.
	LoadAfter string
	Stampede  *StampedeReport // the stampede scenario (stampede.go), if it ran
}

// Result returns the result of one client on one workload, or nil.
func (r *Report) Result(transport, workload, client string) *Result {
	for i := range r.Results {
		x := &r.Results[i]
		if x.Transport == transport && x.Workload == workload && x.Client == client {
			return x
		}
	}
	return nil
}

// cell is what one client needs to run one workload, made once and reused
// across rounds so that every round after the first runs warm.
type cell struct {
	transport, client string
	wl                Workload
	inst              Instance
	workers           []Worker
	res               *Result
}

// Run measures every client on every workload, round by round: in round r,
// for each transport and workload, every client runs once, in an order
// rotated by r, so that drift of the machine hits them alike.
func Run(opts Options) (*Report, error) {
	opts.fill()
	rep := &Report{Options: opts, Started: time.Now()}
	var workloads []Workload
	for _, name := range opts.Workloads {
		w, ok := WorkloadByName(name)
		if !ok {
			return nil, fmt.Errorf("unknown workload %q", name)
		}
		workloads = append(workloads, w)
	}

	type clientKey struct {
		transport, client string
		compress          bool
	}
	clients := map[clientKey]Client{}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	mem := NewMemTransport(opts.MemMode)
	getClient := func(transport, name string, compress bool) (Client, error) {
		k := clientKey{transport, name, compress}
		if c, ok := clients[k]; ok {
			return c, nil
		}
		mk, ok := MakerByName(name)
		if !ok {
			return nil, fmt.Errorf("unknown client %q", name)
		}
		cfg := Config{Addr: opts.Addr}
		switch transport {
		case TCP:
			if opts.Addr == "" {
				return nil, errors.New("tcp transport needs a memcached address")
			}
		case Mem:
			cfg.Addr, cfg.DialContext = MemAddr, mem.DialContext
		default:
			return nil, fmt.Errorf("unknown transport %q", transport)
		}
		if compress {
			cfg.CompressThreshold = opts.CompressThreshold
		}
		c, err := mk.New(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		clients[k] = c
		return c, nil
	}

	// Results in report order; cells index them.
	cells := map[[3]string]*cell{}
	for _, tr := range opts.Transports {
		for _, wl := range workloads {
			for _, cl := range opts.Clients[tr] {
				rep.Results = append(rep.Results, Result{Transport: tr, Workload: wl.Name, Client: cl})
			}
		}
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		wl, _ := WorkloadByName(r.Workload)
		cells[[3]string{r.Transport, r.Workload, r.Client}] = &cell{transport: r.Transport, client: r.Client, wl: wl, res: r}
	}

	for round := 0; round < opts.Rounds; round++ {
		for _, tr := range opts.Transports {
			names := opts.Clients[tr]
			for wi, wl := range workloads {
				for j := range names {
					name := names[(j+round+wi)%len(names)]
					c := cells[[3]string{tr, wl.Name, name}]
					if c.inst == nil {
						cl, err := getClient(tr, name, wl.Compress)
						if err != nil {
							return nil, err
						}
						prefix := fmt.Sprintf("eb:%s:%s:", name, wl.Name)
						c.inst = wl.New(prefix, wl.Goroutines)
						for g := 0; g < wl.Goroutines; g++ {
							c.workers = append(c.workers, cl.NewWorker())
						}
					}
					if err := c.inst.Prepare(c.workers[0]); err != nil {
						return nil, fmt.Errorf("%s %s %s: prepare: %w", tr, wl.Name, name, err)
					}
					s := measure(c.inst, c.workers, opts.Warmup, opts.Duration)
					c.res.Samples = append(c.res.Samples, s)
					line := fmt.Sprintf("round %d/%d %s %s %s %s ops/s", round+1, opts.Rounds, tr, wl.Name, name, Human(s.OpsPerSec()))
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
	rep.LoadAfter = LoadAvg()
	return rep, nil
}

// measure runs inst on one goroutine per worker: a warm-up, then a timed
// run framed by runtime.ReadMemStats, whose Mallocs and TotalAlloc deltas
// divided by the ops give allocs/op and B/op. Everything else in the
// process is idle meanwhile, so the deltas are the clients' own (plus a
// constant few for starting the goroutines, which the op counts dwarf).
func measure(inst Instance, workers []Worker, warmup, d time.Duration) Sample {
	if warmup > 0 {
		runFor(inst, workers, warmup)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := runFor(inst, workers, d)
	runtime.ReadMemStats(&after)
	s.Mallocs = after.Mallocs - before.Mallocs
	s.Bytes = after.TotalAlloc - before.TotalAlloc
	return s
}

// maxErrors stops a goroutine that keeps failing: the sample is reported
// with its errors rather than spinning on a dead server.
const maxErrors = 1000

func runFor(inst Instance, workers []Worker, d time.Duration) Sample {
	var (
		stop   atomic.Bool
		start  = make(chan struct{})
		wg     sync.WaitGroup
		ops    = make([]int64, len(workers))
		errs   = make([]int64, len(workers))
		firsts = make([]error, len(workers))
	)
	for g := range workers {
		wg.Add(1)
		go func(g int, w Worker) {
			defer wg.Done()
			<-start
			var n, e int64
			for !stop.Load() {
				if err := inst.Op(w, g); err != nil {
					if e == 0 {
						firsts[g] = err
					}
					if e++; e >= maxErrors {
						break
					}
					continue
				}
				n++
			}
			ops[g], errs[g] = n, e
		}(g, workers[g])
	}
	t0 := time.Now()
	close(start)
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	s := Sample{Elapsed: time.Since(t0)}
	for g := range workers {
		s.Ops += ops[g]
		s.Errors += errs[g]
		if s.FirstErr == nil {
			s.FirstErr = firsts[g]
		}
	}
	return s
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (rep *Report) summarize() {
	for i := range rep.Results {
		r := &rep.Results[i]
		var ops, ns, allocs, bytes, ratios []float64
		base := rep.Result(r.Transport, r.Workload, "gomemcache")
		for k, s := range r.Samples {
			r.Errors += s.Errors
			if r.FirstErr == nil {
				r.FirstErr = s.FirstErr
			}
			if s.Ops == 0 {
				ops = append(ops, 0)
				continue
			}
			ops = append(ops, s.OpsPerSec())
			ns = append(ns, float64(s.Elapsed.Nanoseconds())/float64(s.Ops))
			allocs = append(allocs, float64(s.Mallocs)/float64(s.Ops))
			bytes = append(bytes, float64(s.Bytes)/float64(s.Ops))
			if base != nil && k < len(base.Samples) && base.Samples[k].Ops > 0 {
				ratios = append(ratios, s.OpsPerSec()/base.Samples[k].OpsPerSec())
			}
		}
		r.OpsPerSec = median(ops)
		r.NsPerOp = median(ns)
		r.AllocsPerOp = median(allocs)
		r.BytesPerOp = median(bytes)
		r.Ratio = median(ratios)
	}
}

// Human formats a rate with three significant digits: 950, 81.2k, 1.23M.
func Human(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	unit := ""
	switch {
	case x >= 999.5e3:
		x, unit = x/1e6, "M"
	case x >= 999.5:
		x, unit = x/1e3, "k"
	}
	switch {
	case x >= 99.95 || unit == "":
		return fmt.Sprintf("%.0f%s", x, unit)
	case x >= 9.995:
		return fmt.Sprintf("%.1f%s", x, unit)
	}
	return fmt.Sprintf("%.2f%s", x, unit)
}
