package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// clientColor gives each client the same colour in every panel.
var clientColor = map[string]string{
	"gomemcache":  "#8c8c8c",
	"ermc-text":   "#1f77b4",
	"ermc-binary": "#ff7f0e",
	"ermc-ultra":  "#2ca02c",
}

var fallbackColors = []string{"#9467bd", "#d62728", "#17becf", "#bcbd22"}

// Chart geometry, in SVG pixels.
const (
	chartPanelW = 640
	chartLabelW = 150 // workload names
	chartBarMax = 300 // the fastest client of a workload
	chartBarH   = 13
	chartBarGap = 2
	chartGroupG = 12
	chartTop    = 110
)

// Chart draws the report as an SVG: one panel per transport, side by side;
// in each, a group of horizontal bars per workload, one bar per client.
// Bar length is the client's median ops/s relative to the fastest client
// of that workload (linear, so a 20% difference looks like one); each bar
// is labelled with its ops/s and its ratio to gomemcache.
func (rep *Report) Chart(m Machine) []byte {
	o := rep.Options
	colors := map[string]string{}
	var legend []string
	for _, tr := range o.Transports {
		for _, c := range o.Clients[tr] {
			if _, ok := colors[c]; ok {
				continue
			}
			col, ok := clientColor[c]
			if !ok {
				col = fallbackColors[len(colors)%len(fallbackColors)]
			}
			colors[c] = col
			legend = append(legend, c)
		}
	}

	panelH := func(tr string) int {
		n := len(o.Clients[tr])
		return len(o.Workloads) * (n*(chartBarH+chartBarGap) + chartGroupG)
	}
	height := 0
	for _, tr := range o.Transports {
		height = max(height, panelH(tr))
	}
	width := chartPanelW*len(o.Transports) + 20
	height += chartTop + 40
	stampede := ""
	if rep.Stampede != nil { // below the panels, two panels wide
		var h int
		stampede, h = rep.Stampede.svg(10, height-10, colors)
		height, width = height+h, max(width, 2*chartPanelW+20)
	}

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	text := func(x, y int, size int, anchor, weight, s string) {
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="%d" text-anchor="%s" font-weight="%s">%s</text>`+"\n", x, y, size, anchor, weight, html.EscapeString(s))
	}
	text(10, 24, 18, "start", "bold", "ermc vs gomemcache: median ops/s per client and workload (higher is better)")
	sub := fmt.Sprintf("%s × %v per measurement, clients alternated; %s", plural(o.Rounds, "round"), o.Duration, m)
	if m.LoadAvg != "" {
		sub += "; load average at start " + m.LoadAvg
	}
	text(10, 44, 11, "start", "normal", sub)
	text(10, 60, 11, "start", "normal", "Bar length: median ops/s relative to the fastest client of the same workload (linear). Label: median ops/s, and the median over rounds of ops/s ÷ gomemcache's in the same round.")
	x := 10
	for _, c := range legend {
		fmt.Fprintf(&b, `<rect x="%d" y="70" width="14" height="14" fill="%s"/>`+"\n", x, colors[c])
		text(x+18, 82, 12, "start", "normal", c)
		x += 30 + 8*len(c)
	}

	for pi, tr := range o.Transports {
		x0 := 10 + pi*chartPanelW
		text(x0, chartTop-8, 14, "start", "bold", TransportTitle(tr))
		y := chartTop
		for _, wl := range o.Workloads {
			var best float64
			for _, c := range o.Clients[tr] {
				if r := rep.Result(tr, wl, c); r != nil && !math.IsNaN(r.OpsPerSec) {
					best = max(best, r.OpsPerSec)
				}
			}
			n := len(o.Clients[tr])
			groupH := n * (chartBarH + chartBarGap)
			text(x0+chartLabelW-8, y+groupH/2+4, 12, "end", "normal", wl)
			fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ccc"/>`+"\n", x0+chartLabelW, y-1, x0+chartLabelW, y+groupH-chartBarGap+1)
			for _, c := range o.Clients[tr] {
				r := rep.Result(tr, wl, c)
				label := c + ": no result"
				w := 0
				if r != nil && best > 0 && !math.IsNaN(r.OpsPerSec) {
					w = int(math.Round(r.OpsPerSec / best * chartBarMax))
					label = Human(r.OpsPerSec)
					if c != "gomemcache" && !math.IsNaN(r.Ratio) {
						label += fmt.Sprintf("  %.2f×", r.Ratio)
					}
					if r.Errors > 0 {
						label += fmt.Sprintf("  (%d errors)", r.Errors)
					}
				}
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
					x0+chartLabelW, y, w, chartBarH, colors[c], html.EscapeString(fmt.Sprintf("%s %s %s: %s", tr, wl, c, label)))
				text(x0+chartLabelW+w+4, y+chartBarH-2, 10, "start", "normal", label)
				y += chartBarH + chartBarGap
			}
			y += chartGroupG
		}
	}
	b.WriteString(stampede)
	b.WriteString("</svg>\n")
	return []byte(b.String())
}
