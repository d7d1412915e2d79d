package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
	"time"
)

// Latency chart geometry, in SVG pixels.
const (
	latPanelW = 640 // one panel per workload, as wide as the throughput chart's
	latPlotL  = 70  // left margin of a panel: the y labels
	latPlotW  = 530
	latPlotH  = 320
	latTop    = 120
)

// logRange is a log scale from lo to hi, both positive.
type logRange struct{ lo, hi float64 }

// at maps x to [0, 1]: 0 at lo, 1 at hi.
func (r logRange) at(x float64) float64 {
	if r.hi <= r.lo {
		return 0.5
	}
	return math.Log(x/r.lo) / math.Log(r.hi/r.lo)
}

// decades is the smallest range of whole powers of ten around lo..hi.
func decades(lo, hi float64) logRange {
	return logRange{math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))}
}

// Chart draws the median p99 against the offered rate: one panel per
// workload, one line per client, both axes logarithmic (the rates span
// more than a decade, the latencies several).
func (rep *LatencyReport) Chart(m Machine) []byte {
	o := rep.Options
	colors, legend := colorsOf(o.Clients)

	// One y scale for every panel, so panels compare.
	lo, hi := math.Inf(1), 0.0
	for _, r := range rep.Results {
		if p := float64(r.P99); p > 0 {
			lo, hi = min(lo, p), max(hi, p)
		}
	}
	if hi == 0 {
		lo, hi = float64(time.Millisecond), float64(time.Millisecond)
	}
	ys := decades(lo, hi)
	xs := logRange{o.Loads[0], o.Loads[0]}
	for _, l := range o.Loads {
		xs.lo, xs.hi = min(xs.lo, l), max(xs.hi, l)
	}

	width := latPanelW*len(o.Workloads) + 20
	height := latTop + latPlotH + 70
	b := newSVG(width, height)
	b.header("ermc vs gomemcache: p99 latency at a fixed offered rate (lower is better)",
		machineLine(fmt.Sprintf("open loop, %s × %v per client and rate, clients alternated", plural(o.Rounds, "round"), o.Duration), m),
		"Median over rounds of the 99th percentile, measured from each request's due time. Both axes logarithmic.",
		"Offered rate: a fraction of gomemcache's own closed-loop ops/s on the same workload in the same run (100%, dashed).")
	b.legend(latTop-34, legend, colors)

	for pi, wl := range o.Workloads {
		x0, y0 := 10+pi*latPanelW+latPlotL, latTop+10
		px := func(load float64) float64 { return float64(x0) + xs.at(load)*latPlotW }
		py := func(d time.Duration) float64 { return float64(y0+latPlotH) - ys.at(float64(d))*latPlotH }
		b.text(x0, y0-6, 14, "start", "bold", fmt.Sprintf("%s (capacity %s/s)", wl, Human(o.Capacity[wl])))
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", x0, y0, latPlotW, latPlotH)
		for d := ys.lo; d <= ys.hi*1.0001; d *= 10 {
			y := py(time.Duration(d))
			fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x0+latPlotW, y)
			b.text(x0-6, int(y)+4, 11, "end", "normal", fmtLatency(time.Duration(d)))
		}
		for _, load := range o.Loads {
			x := px(load)
			dash := ""
			if load == 1 {
				dash = ` stroke-dasharray="4 3"`
			}
			fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"%s/>`+"\n", x, y0, x, y0+latPlotH, dash)
			b.text(int(x), y0+latPlotH+16, 11, "middle", "normal", fmt.Sprintf("%.0f%%", load*100))
			b.text(int(x), y0+latPlotH+30, 10, "middle", "normal", Human(load*o.Capacity[wl])+"/s")
		}
		b.text(x0+latPlotW/2, y0+latPlotH+48, 11, "middle", "normal", "offered rate")
		for _, c := range o.Clients {
			var pts []string
			for _, load := range o.Loads {
				r := rep.Result(wl, load, c)
				if r == nil || r.P99 <= 0 {
					continue
				}
				x, y := px(load), py(r.P99)
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
				fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s</title></circle>`+"\n", x, y, colors[c],
					html.EscapeString(fmt.Sprintf("%s %s at %s: p99 %s (p50 %s, p99.9 %s), %s/s done", wl, c, fmtLoad(load, r.Offered),
						fmtLatency(r.P99), fmtLatency(r.P50), fmtLatency(r.P999), Human(r.Achieved))))
			}
			if len(pts) > 1 {
				fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), colors[c])
			}
		}
	}
	return b.bytes()
}
