package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/ermc-go/ermc"
)

// The stampede scenario: several clients (standing in for processes), each
// with many goroutines, read one hot key whose value expires every second
// and takes a slow load to rebuild. It counts how many loads each expiry
// sets off and how long the reads take, for gomemcache used the usual way
// (get; on a miss load and set) and for ermc's Fetch.

// StampedeOptions configures RunStampede; zero fields take the defaults.
type StampedeOptions struct {
	Addr       string
	Clients    []string      // default: StampedeClients()
	Processes  int           // clients per system, each its own connections; default 4
	Goroutines int           // per client; default 64
	Duration   time.Duration // per system; default 3s
	Load       time.Duration // how long one load takes; default 20ms
	TTL        time.Duration // lifetime of a loaded value; default 1s
	Progress   io.Writer
}

func (o *StampedeOptions) fill() {
	if len(o.Clients) == 0 {
		o.Clients = StampedeClients()
	}
	if o.Processes <= 0 {
		o.Processes = 4
	}
	if o.Goroutines <= 0 {
		o.Goroutines = 64
	}
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.Load <= 0 {
		o.Load = 20 * time.Millisecond
	}
	if o.TTL <= 0 {
		o.TTL = time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// stampedeClient is one way of reading through the cache.
type stampedeClient struct {
	name string
	what string // for the report
	// open makes one process's client; read is one goroutine's read of
	// key through it, calling load on a miss.
	open func(addr string) (read func(key string, ttl time.Duration, load func([]byte) []byte) error, close func(), err error)
}

var stampedeClients = []stampedeClient{
	{"gomemcache", "Get; on ErrCacheMiss load, then Set", openGomemcacheStampede},
	{"ermc-text", "Fetch on the Text driver", openErmcStampede(ermc.Text)},
	{"ermc-ultra", "Fetch on the Ultra driver (pipelined, like Meta; no leases)", openErmcStampede(ermc.Ultra)},
	{"ermc-meta", "Fetch on the Meta driver", openErmcStampede(ermc.Meta)},
}

// StampedeClients names the clients the scenario compares.
func StampedeClients() []string {
	var names []string
	for _, c := range stampedeClients {
		names = append(names, c.name)
	}
	return names
}

func openGomemcacheStampede(addr string) (func(string, time.Duration, func([]byte) []byte) error, func(), error) {
	mc := memcache.New(addr)
	mc.MaxIdleConns, mc.Timeout = Conns, Timeout
	read := func(key string, ttl time.Duration, load func([]byte) []byte) error {
		_, err := mc.Get(key)
		if err != memcache.ErrCacheMiss {
			return err
		}
		return mc.Set(&memcache.Item{Key: key, Value: load(nil), Expiration: int32(ttl / time.Second)})
	}
	return read, func() { _ = mc.Close() }, nil
}

func openErmcStampede(p ermc.Protocol) func(string) (func(string, time.Duration, func([]byte) []byte) error, func(), error) {
	return func(addr string) (func(string, time.Duration, func([]byte) []byte) error, func(), error) {
		c, err := ermc.New(addr, ermc.Options{Protocol: p, MaxConns: Conns, Timeout: Timeout, ConnectTimeout: Timeout})
		if err != nil {
			return nil, nil, err
		}
		read := func(key string, ttl time.Duration, load func([]byte) []byte) error {
			_, err := c.Fetch(bg, key, nil, ermc.FetchOptions{TTL: ttl}, func(_ context.Context, dst []byte) ([]byte, error) {
				return load(dst), nil
			})
			return err
		}
		return read, func() { _ = c.Close() }, nil
	}
}

// StampedeResult is one client's run of the scenario.
type StampedeResult struct {
	Client, What  string
	Reads, Errors int64
	FirstErr      error
	Loads         int
	Expiries      int           // bursts of loads (loads more than stampedeGap apart start a new one)
	MaxLoads      int           // the most loads of one expiry
	P50, P99, Max time.Duration // read latency, loads and waits included
}

// LoadsPerExpiry is the mean number of loads one expiry set off.
func (r StampedeResult) LoadsPerExpiry() float64 {
	if r.Expiries == 0 {
		return math.NaN()
	}
	return float64(r.Loads) / float64(r.Expiries)
}

// StampedeReport is the outcome of RunStampede.
type StampedeReport struct {
	Options StampedeOptions
	Results []StampedeResult
}

// stampedeGap separates the loads of one expiry from the next: a value
// lives about a second, its reloads start within a few loads' time.
const stampedeGap = 250 * time.Millisecond

// RunStampede runs the scenario for each client in turn, each on a key of
// its own.
func RunStampede(opts StampedeOptions) (*StampedeReport, error) {
	opts.fill()
	rep := &StampedeReport{Options: opts}
	for _, name := range opts.Clients {
		i := slices.IndexFunc(stampedeClients, func(c stampedeClient) bool { return c.name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown stampede client %q", name)
		}
		res, err := runStampede(opts, stampedeClients[i])
		if err != nil {
			return nil, fmt.Errorf("stampede %s: %w", name, err)
		}
		fmt.Fprintf(opts.Progress, "stampede %s: %d loads in %d expiries (%.1f per expiry), p50 %v p99 %v\n",
			name, res.Loads, res.Expiries, res.LoadsPerExpiry(), res.P50, res.P99)
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}

func runStampede(opts StampedeOptions, sc stampedeClient) (StampedeResult, error) {
	key := "eb:stampede:" + sc.name
	value := bytes.Repeat([]byte("v"), 100)
	var (
		mu     sync.Mutex
		starts []time.Time
	)
	load := func(dst []byte) []byte {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		time.Sleep(opts.Load)
		return append(dst, value...)
	}

	type proc struct {
		read  func(string, time.Duration, func([]byte) []byte) error
		close func()
	}
	var procs []proc
	defer func() {
		for _, p := range procs {
			p.close()
		}
	}()
	for i := 0; i < opts.Processes; i++ {
		read, closeFn, err := sc.open(opts.Addr)
		if err != nil {
			return StampedeResult{}, err
		}
		procs = append(procs, proc{read, closeFn})
	}
	if err := alignToExpiry(opts.Addr, key, opts.TTL); err != nil {
		return StampedeResult{}, err
	}

	var (
		stop      atomic.Bool
		wg        sync.WaitGroup
		latencies = make([][]time.Duration, opts.Processes*opts.Goroutines)
		errs      = make([]int64, len(latencies))
		firsts    = make([]error, len(latencies))
	)
	for g := range latencies {
		wg.Add(1)
		go func(g int, read func(string, time.Duration, func([]byte) []byte) error) {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			for !stop.Load() {
				t0 := time.Now()
				err := read(key, opts.TTL, load)
				lat = append(lat, time.Since(t0))
				if err != nil {
					if errs[g] == 0 {
						firsts[g] = err
					}
					if errs[g]++; errs[g] >= maxErrors {
						break
					}
				}
			}
			latencies[g] = lat
		}(g, procs[g%opts.Processes].read)
	}
	time.Sleep(opts.Duration)
	stop.Store(true)
	wg.Wait()

	res := StampedeResult{Client: sc.name, What: sc.what, Loads: len(starts)}
	var all []time.Duration
	for g, lat := range latencies {
		all = append(all, lat...)
		res.Errors += errs[g]
		if res.FirstErr == nil {
			res.FirstErr = firsts[g]
		}
	}
	res.Reads = int64(len(all))
	slices.Sort(all)
	res.P50, res.P99 = quantile(all, 0.50), quantile(all, 0.99)
	if len(all) > 0 {
		res.Max = all[len(all)-1]
	}
	res.Expiries, res.MaxLoads = loadBursts(starts, stampedeGap)
	return res, nil
}

// alignToExpiry starts the run from a miss just after memcached's clock
// ticked. memcached counts TTLs in whole seconds of its own clock, so a
// value stored late in one of its seconds with a TTL of 1s lives only until
// the next tick: without this, the first value could expire at once and
// its reload join the first expiry's burst. So it stores key with ttl and
// waits (at most 3s) until it has expired.
func alignToExpiry(addr, key string, ttl time.Duration) error {
	c, err := ermc.New(addr, ermc.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Set(bg, key, []byte("x"), ttl); err != nil {
		return err
	}
	for deadline := time.Now().Add(ttl + 2*time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if _, err := c.Get(bg, key, nil); errors.Is(err, ermc.ErrCacheMiss) {
			return nil
		} else if err != nil {
			return err
		}
	}
	return fmt.Errorf("%s did not expire within %v", key, ttl+2*time.Second)
}

// loadBursts groups load start times (in order) into bursts separated by
// more than gap: one burst per expiry.
func loadBursts(starts []time.Time, gap time.Duration) (bursts, maxLoads int) {
	n := 0
	for i, t := range starts {
		if i == 0 || t.Sub(starts[i-1]) > gap {
			bursts++
			n = 0
		}
		n++
		maxLoads = max(maxLoads, n)
	}
	return bursts, maxLoads
}

// quantile of sorted durations, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// Markdown is the scenario's section of the report.
func (s *StampedeReport) Markdown() string {
	o := s.Options
	var b strings.Builder
	b.WriteString("## Stampede: one hot key expiring every second\n\n")
	fmt.Fprintf(&b, "%d clients (standing in for processes) × %d goroutines read one key in a loop for %v per client library; "+
		"its value (100 bytes) is stored with a TTL of %v and takes %v to load. A read is timed from call to return, "+
		"loads and waits included. Loads are grouped into expiries by start times more than %v apart.\n\n",
		o.Processes, o.Goroutines, o.Duration, o.TTL, o.Load, stampedeGap)
	b.WriteString("| client | reads through the cache with | loads | expiries | loads per expiry (mean, max) | reads | p50 | p99 | max |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range s.Results {
		name := r.Client
		if r.Errors > 0 {
			name += fmt.Sprintf(" (%d errors, first: %v)", r.Errors, r.FirstErr)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %.1f, %d | %d | %s | %s | %s |\n", name, r.What, r.Loads, r.Expiries,
			r.LoadsPerExpiry(), r.MaxLoads, r.Reads, fmtLatency(r.P50), fmtLatency(r.P99), fmtLatency(r.Max))
	}
	return b.String()
}

// Chart geometry of the stampede panel.
const (
	stampedeRowH = 18
	stampedeBarW = 220
)

// svgHeight is the height svg draws.
func (s *StampedeReport) svgHeight() int { return 22 + 8 + len(s.Results)*stampedeRowH + 20 }

// svg draws the scenario into d at (x, y), two bar groups side by side:
// loads per expiry and p99 latency, one bar per client (linear, the
// largest fills the width), each client in its colour of the chart.
func (s *StampedeReport) svg(d *svgDoc, x, y int, colors map[string]string) {
	o := s.Options
	d.text(x, y, 14, "start", "bold", fmt.Sprintf("Stampede: %d clients × %d goroutines read one key that expires every %v and takes %v to load (lower is better)",
		o.Processes, o.Goroutines, o.TTL, o.Load))
	y += 22
	groups := []struct {
		title string
		value func(StampedeResult) float64
		label func(StampedeResult) string
	}{
		{"loads per expiry", StampedeResult.LoadsPerExpiry, func(r StampedeResult) string {
			return fmt.Sprintf("%.1f (max %d)", r.LoadsPerExpiry(), r.MaxLoads)
		}},
		{"p99 read latency", func(r StampedeResult) float64 { return float64(r.P99) }, func(r StampedeResult) string {
			return "p99 " + fmtLatency(r.P99) + ", p50 " + fmtLatency(r.P50)
		}},
	}
	for gi, g := range groups {
		x0 := x + gi*chartPanelW
		d.text(x0+chartLabelW, y, 12, "start", "bold", g.title)
		top := 0.0
		for _, r := range s.Results {
			if v := g.value(r); !math.IsNaN(v) {
				top = max(top, v)
			}
		}
		for i, r := range s.Results {
			ry := y + 8 + i*stampedeRowH
			col := colors[r.Client]
			if col == "" {
				col = clientColor[r.Client]
			}
			if col == "" {
				col = fallbackColors[i%len(fallbackColors)]
			}
			w := 0
			if v := g.value(r); top > 0 && !math.IsNaN(v) {
				w = int(math.Round(v / top * stampedeBarW))
			}
			d.text(x0+chartLabelW-8, ry+chartBarH-2, 12, "end", "normal", r.Client)
			fmt.Fprintf(d, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", x0+chartLabelW, ry, w, chartBarH, col)
			d.text(x0+chartLabelW+w+4, ry+chartBarH-2, 10, "start", "normal", g.label(r))
		}
	}
}
