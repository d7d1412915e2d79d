package bench

import (
	"fmt"
	"strings"
	"time"
)

// fmtLoad is an offered rate as its fraction of the capacity and per
// second: "80% (84.0k/s)".
func fmtLoad(load, offered float64) string {
	return fmt.Sprintf("%.0f%% (%s/s)", load*100, Human(offered))
}

// latencySpread is the lowest and highest p99 of the samples.
func latencySpread(samples []LatencySample) string {
	if len(samples) == 0 {
		return "-"
	}
	lo, hi := samples[0].P99, samples[0].P99
	for _, s := range samples[1:] {
		lo, hi = min(lo, s.P99), max(hi, s.P99)
	}
	if len(samples) == 1 {
		return fmtLatency(lo)
	}
	return fmtLatency(lo) + " – " + fmtLatency(hi)
}

// roundsAtOrBelowBaseline says in how many rounds r's p99 was at or below
// gomemcache's in the same round ("4 of 5"): the clients ran in each
// round one after the other, on the same machine in the same state, so a
// pairwise count shows an edge (or its absence) that the medians of a few
// noisy rounds may hide. "-" for gomemcache itself and the harness.
func (rep *LatencyReport) roundsAtOrBelowBaseline(r *LatencyResult) string {
	base := rep.Result(r.Workload, r.Load, "gomemcache")
	if base == nil || r.Client == base.Client || r.Client == HarnessClient {
		return "-"
	}
	n := min(len(r.Samples), len(base.Samples)) // sample i is round i for both
	k := 0
	for i := range n {
		if r.Samples[i].P99 <= base.Samples[i].P99 {
			k++
		}
	}
	return fmt.Sprintf("%d of %d", k, n)
}

// LatencyTable is the markdown table of one workload's medians: a row per
// offered rate and client.
func (rep *LatencyReport) LatencyTable(workload string) string {
	var b strings.Builder
	b.WriteString("| offered | client | done/s | p50 | p99 | p99.9 | max | started late, p99 | rounds with p99 ≤ gomemcache's | p99 range over rounds |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, load := range rep.Options.Loads {
		first := true
		for _, c := range rep.Options.Clients {
			r := rep.Result(workload, load, c)
			if r == nil {
				continue
			}
			offered := ""
			if first {
				offered, first = fmtLoad(load, r.Offered), false
			}
			client := c
			if r.Errors > 0 {
				client += fmt.Sprintf(" (%d errors)", r.Errors)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", offered, client, Human(r.Achieved),
				fmtLatency(r.P50), fmtLatency(r.P99), fmtLatency(r.P999), fmtLatency(r.Max),
				fmtLatency(r.StartLagP99), rep.roundsAtOrBelowBaseline(r), latencySpread(r.Samples))
		}
	}
	return b.String()
}

// P99Table is the compact table of one workload: median p99 per offered
// rate (rows) and client (columns). The README shows it.
func (rep *LatencyReport) P99Table(workload string) string {
	var b strings.Builder
	b.WriteString("| offered/s (of gomemcache's capacity) |")
	for _, c := range rep.Options.Clients {
		fmt.Fprintf(&b, " %s |", c)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(rep.Options.Clients)) + "\n")
	for _, load := range rep.Options.Loads {
		fmt.Fprintf(&b, "| %s/s (%.0f%%) |", Human(load*rep.Options.Capacity[workload]), load*100)
		for _, c := range rep.Options.Clients {
			cell := "-"
			if r := rep.Result(workload, load, c); r != nil {
				cell = fmtLatency(r.P99)
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// capacitySource says what the offered rates are fractions of.
func (rep *LatencyReport) capacitySource() string {
	if rep.Options.CapacityGiven {
		return "a capacity given by hand (-latency-capacity), not measured"
	}
	return fmt.Sprintf("gomemcache's own closed-loop ops/s at %d goroutines measured in the same run", workersOf(rep.Options.Workloads))
}

// Method is the paragraph saying how the latency was measured.
func (rep *LatencyReport) Method() string {
	o := rep.Options
	var caps []string
	for _, w := range o.Workloads {
		caps = append(caps, fmt.Sprintf("%s %s/s", w, Human(o.Capacity[w])))
	}
	workers := workersOf(o.Workloads)
	return fmt.Sprintf("Open loop over loopback TCP: %d goroutines (the cap on requests outstanding) send requests that fall due at a fixed total rate, "+
		"and each request's latency runs from when it was due, not from when it was sent, so requests due while a client is stalled count their wait. "+
		"Requests still unsent when the %v window closes count with the wait they had then. Latencies go into an HDR histogram (µs, 3 significant digits). "+
		"Offered rates are fractions of %s (%s). "+
		"Medians over %s of %v per client and rate (after a %v warm-up at that rate), clients in an order rotated every round; "+
		"done/s is the rate of requests completed; \"started late\" is how long after its due time a request was handed to the client "+
		"(part of its latency, not added to it): the load generator's and the process's own delay, which the client's load on the process raises; "+
		"the rounds column counts the rounds in which a client's p99 was at or below gomemcache's in the same round; "+
		"the last column shows how much the rounds disagreed.",
		workers, o.Duration, rep.capacitySource(), strings.Join(caps, ", "), plural(o.Rounds, "round"), o.Duration, o.Warmup) + rep.harnessNote()
}

// harnessNote explains the harness's own row, when the run has one.
func (rep *LatencyReport) harnessNote() string {
	for _, c := range rep.Options.Clients {
		if c == HarnessClient {
			return fmt.Sprintf(" %q is the same open loop with calls that return at once, no client and no server: "+
				"how late the load generator itself starts requests on this machine at that rate, a floor under every client's figures. "+
				"Workers sleep until a request falls due on one timerfd, since Go's timers wake an idle process on a 1 ms grid.",
				HarnessClient)
		}
	}
	return ""
}

// Markdown is the latency section of the report.
func (rep *LatencyReport) Markdown(chart string) string {
	var b strings.Builder
	b.WriteString("## Latency at a fixed offered rate (loopback TCP)\n\n")
	b.WriteString(rep.Method())
	fmt.Fprintf(&b, " Took %s.\n\n", rep.Took.Round(time.Second))
	if chart != "" {
		fmt.Fprintf(&b, "![p99 latency against offered rate](%s)\n\n", chart)
	}
	for _, w := range rep.Options.Workloads {
		fmt.Fprintf(&b, "### %s: p99\n\n", w)
		b.WriteString(rep.P99Table(w))
		b.WriteString("\n")
		fmt.Fprintf(&b, "### %s\n\n", w)
		b.WriteString(rep.LatencyTable(w))
		b.WriteString("\n")
	}
	var errs []string
	for _, r := range rep.Results {
		if r.Errors > 0 {
			errs = append(errs, fmt.Sprintf("- %s %s at %s: %d errors, first: %v", r.Workload, r.Client, fmtLoad(r.Load, r.Offered), r.Errors, r.FirstErr))
		}
	}
	if len(errs) > 0 {
		b.WriteString("### Errors\n\n")
		b.WriteString(strings.Join(errs, "\n"))
		b.WriteString("\n")
	}
	return b.String()
}

// README block markers: `make bench` replaces what lies between them in
// the repository's README with ReadmeBlock, so the README's latency table
// is always the one in bench/results.md.
const (
	ReadmeBegin = "<!-- latency: generated by make bench from bench/results.md -->"
	ReadmeEnd   = "<!-- end of latency -->"
)

// ReadmeBlock is the README's latency table: the p99 tables, the chart,
// and where they come from.
func (rep *LatencyReport) ReadmeBlock(m Machine, chart string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured on %s on %d CPUs (%s), %s, memcached %s",
		rep.Started.UTC().Format("2006-01-02"), m.NumCPU, m.CPUModel, m.GoVersion, m.Memcached)
	if m.LoadAvg != "" {
		fmt.Fprintf(&b, ", load average %s at the start of the run", strings.Fields(m.LoadAvg)[0])
	}
	fmt.Fprintf(&b, ". Median p99 over %s, open loop, latency from each request's due time; "+
		"offered rates are fractions of %s. "+
		"p50, p99.9, max and the spread over rounds: bench/results.md.\n\n", plural(rep.Options.Rounds, "round"), rep.capacitySource())
	for _, w := range rep.Options.Workloads {
		fmt.Fprintf(&b, "%s:\n\n", w)
		b.WriteString(rep.P99Table(w))
		b.WriteString("\n")
	}
	if chart != "" {
		fmt.Fprintf(&b, "![p99 latency against offered rate](%s)\n\n", chart)
	}
	return b.String()
}

func workersOf(workloads []string) int {
	if len(workloads) > 0 {
		if w, ok := WorkloadByName(workloads[0]); ok {
			return w.Goroutines
		}
	}
	return 0
}

// ReplaceBlock replaces what lies between the lines begin and end in doc
// with block; ok is false when doc lacks them.
func ReplaceBlock(doc, begin, end, block string) (string, bool) {
	i := strings.Index(doc, begin+"\n")
	if i < 0 {
		return doc, false
	}
	start := i + len(begin) + 1
	j := strings.Index(doc[start:], end)
	if j < 0 {
		return doc, false
	}
	return doc[:start] + block + doc[start+j:], true
}
