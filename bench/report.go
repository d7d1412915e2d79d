package bench

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/ermc-go/ermc"
)

// Machine describes where a report was produced.
type Machine struct {
	NumCPU     int // what nproc says, for this process
	GOMAXPROCS int
	CPUModel   string
	GoVersion  string
	OSArch     string
	Kernel     string
	Memcached  string // version the server reports; "" when none was used
	LoadAvg    string // /proc/loadavg's 1, 5 and 15 minute averages when described
}

// DescribeMachine gathers Machine; addr, when set, is asked for its
// memcached version.
func DescribeMachine(addr string) Machine {
	m := Machine{
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		CPUModel:   cpuModel(),
		GoVersion:  runtime.Version(),
		OSArch:     runtime.GOOS + "/" + runtime.GOARCH,
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadAvg = LoadAvg()
	if addr != "" {
		if c, err := ermc.New(addr, ermc.Options{}); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if v, err := c.Version(ctx); err == nil {
				m.Memcached = v
			}
			cancel()
			c.Close()
		}
	}
	return m
}

// LoadAvg returns the 1, 5 and 15 minute load averages, or "".
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// String is the one-line description used in reports.
func (m Machine) String() string {
	s := fmt.Sprintf("%d CPUs (nproc), GOMAXPROCS %d, %s, %s %s", m.NumCPU, m.GOMAXPROCS, m.CPUModel, m.GoVersion, m.OSArch)
	if m.Kernel != "" {
		s += ", Linux " + m.Kernel
	}
	if m.Memcached != "" {
		s += ", memcached " + m.Memcached
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// TransportTitle names a transport in reports.
func TransportTitle(tr string) string {
	switch tr {
	case TCP:
		return "Loopback TCP to memcached"
	case Mem:
		return "In-memory responder (no network, no kernel)"
	}
	return tr
}

func fmtAllocs(x float64) string {
	switch {
	case math.IsNaN(x):
		return "-"
	case x < 0.005:
		return "0"
	case x < 10:
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

func fmtNum(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.0f", x)
}

func fmtRatio(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.2f×", x)
}

// spread is the lowest and highest ops/s of the samples.
func spread(samples []Sample) string {
	if len(samples) == 0 {
		return "-"
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range samples {
		x := 0.0
		if s.Ops > 0 {
			x = s.OpsPerSec()
		}
		lo, hi = min(lo, x), max(hi, x)
	}
	if len(samples) == 1 {
		return Human(lo)
	}
	return Human(lo) + " – " + Human(hi)
}

// Table writes the markdown table of one transport's medians.
func (rep *Report) Table(tr string) string {
	var b strings.Builder
	b.WriteString("| workload | client | ops/s | ns/op | allocs/op | B/op | ops/s vs gomemcache | ops/s range over rounds |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|\n")
	last := ""
	for _, r := range rep.Results {
		if r.Transport != tr {
			continue
		}
		wl := r.Workload
		if wl == last {
			wl = ""
		} else {
			last = wl
		}
		client := r.Client
		if r.Errors > 0 {
			client += fmt.Sprintf(" (%d errors)", r.Errors)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", wl, client,
			Human(r.OpsPerSec), fmtNum(r.NsPerOp), fmtAllocs(r.AllocsPerOp), fmtNum(r.BytesPerOp), fmtRatio(r.Ratio), spread(r.Samples))
	}
	return b.String()
}

// reportHeader is the report's title, how and where it was produced.
// took and loadAfter may be unknown (zero, empty) when it is written.
func reportHeader(m Machine, command string, started time.Time, took time.Duration, loadAfter string) string {
	var b strings.Builder
	b.WriteString("# ermc vs gomemcache\n\n")
	fmt.Fprintf(&b, "Produced by `%s` on %s", command, started.UTC().Format("2006-01-02 15:04 MST"))
	if took > 0 {
		fmt.Fprintf(&b, " in %s", took.Round(time.Second))
	}
	fmt.Fprintf(&b, ".\n\nMachine: %s.", m)
	if m.LoadAvg != "" {
		fmt.Fprintf(&b, " Load average (1, 5, 15 min) at the start: %s", m.LoadAvg)
		if loadAfter != "" {
			fmt.Fprintf(&b, "; at the end: %s", loadAfter)
		}
		b.WriteString(".")
	}
	b.WriteString("\n\n")
	return b.String()
}

// LatencyHeader heads a report of latency runs alone.
func LatencyHeader(m Machine, command string) string {
	return reportHeader(m, command, time.Now(), 0, "")
}

// Markdown is the whole report: how it was made, one table per transport,
// what each workload's op is, and any errors.
func (rep *Report) Markdown(m Machine, command, chart string) string {
	o := rep.Options
	var b strings.Builder
	b.WriteString(reportHeader(m, command, rep.Started, rep.Took, rep.LoadAfter))
	fmt.Fprintf(&b, "Medians over %s; in each round every client runs each workload once for %v (after a %v warm-up), "+
		"clients in an order rotated every round. allocs/op and B/op are runtime.MemStats deltas (Mallocs, TotalAlloc) over the "+
		"measurement divided by its ops. \"vs gomemcache\" is the median of the per-round ratios of ops/s; the range shows how much the rounds disagreed. "+
		"lz4 workloads use a compression threshold of %d bytes; the in-memory transport runs in %q mode. "+
		"Method and fairness notes: bench/README.md.\n\n",
		plural(o.Rounds, "round"), o.Duration, o.Warmup, o.CompressThreshold, o.MemMode)
	if chart != "" {
		fmt.Fprintf(&b, "![ops/s per client and workload](%s)\n\n", chart)
	}
	for _, tr := range o.Transports {
		fmt.Fprintf(&b, "## %s\n\n", TransportTitle(tr))
		b.WriteString(rep.Table(tr))
		b.WriteString("\n")
	}
	if rep.Stampede != nil {
		b.WriteString(rep.Stampede.Markdown())
		b.WriteString("\n")
	}
	b.WriteString("## Workloads\n\n")
	for _, name := range o.Workloads {
		if w, ok := WorkloadByName(name); ok {
			fmt.Fprintf(&b, "- `%s`: one op is a %s.\n", w.Name, w.OpsNote)
		}
	}
	var errs []string
	for _, r := range rep.Results {
		if r.Errors > 0 {
			errs = append(errs, fmt.Sprintf("- %s %s %s: %d errors, first: %v", r.Transport, r.Workload, r.Client, r.Errors, r.FirstErr))
		}
	}
	if len(errs) > 0 {
		b.WriteString("\n## Errors\n\n")
		b.WriteString(strings.Join(errs, "\n"))
		b.WriteString("\n")
	}
	return b.String()
}
