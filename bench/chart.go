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
	"ermc-meta":   "#9467bd",
}

var fallbackColors = []string{"#d62728", "#17becf", "#bcbd22", "#e377c2"}

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

// svgDoc is a chart being drawn: the page, its title block and legend.
// Every chart of the report is drawn through it, so they look alike.
type svgDoc struct{ strings.Builder }

func newSVG(width, height int) *svgDoc {
	d := &svgDoc{}
	fmt.Fprintf(d, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n", width, height, width, height)
	fmt.Fprintf(d, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	return d
}

func (d *svgDoc) text(x, y int, size int, anchor, weight, s string) {
	fmt.Fprintf(d, `<text x="%d" y="%d" font-size="%d" text-anchor="%s" font-weight="%s">%s</text>`+"\n", x, y, size, anchor, weight, html.EscapeString(s))
}

// header writes the title, the line saying how the data was made, and
// notes on how to read the chart, from the top; it returns the y below.
func (d *svgDoc) header(title, sub string, notes ...string) int {
	d.text(10, 24, 18, "start", "bold", title)
	d.text(10, 44, 11, "start", "normal", sub)
	y := 60
	for _, n := range notes {
		d.text(10, y, 11, "start", "normal", n)
		y += 16
	}
	return y - 6
}

// legend writes a colour key of the clients in one row at y.
func (d *svgDoc) legend(y int, names []string, colors map[string]string) {
	x := 10
	for _, c := range names {
		fmt.Fprintf(d, `<rect x="%d" y="%d" width="14" height="14" fill="%s"/>`+"\n", x, y, colors[c])
		d.text(x+18, y+12, 12, "start", "normal", c)
		x += 30 + 8*len(c)
	}
}

func (d *svgDoc) bytes() []byte {
	d.WriteString("</svg>\n")
	return []byte(d.String())
}

// colorsOf gives each client its colour, the same in every chart, and
// lists the clients in order of first appearance.
func colorsOf(lists ...[]string) (map[string]string, []string) {
	colors := map[string]string{}
	var names []string
	for _, l := range lists {
		for _, c := range l {
			if _, ok := colors[c]; ok {
				continue
			}
			col, ok := clientColor[c]
			if !ok {
				col = fallbackColors[len(colors)%len(fallbackColors)]
			}
			colors[c] = col
			names = append(names, c)
		}
	}
	return colors, names
}

// machineLine says how the data of a chart was made and where.
func machineLine(how string, m Machine) string {
	s := how + "; " + m.String()
	if m.LoadAvg != "" {
		s += "; load average at start " + m.LoadAvg
	}
	return s
}

// Chart draws the report as an SVG: one panel per transport, side by side;
// in each, a group of horizontal bars per workload, one bar per client.
// Bar length is the client's median ops/s relative to the fastest client
// of that workload (linear, so a 20% difference looks like one); each bar
// is labelled with its ops/s and its ratio to gomemcache.
func (rep *Report) Chart(m Machine) []byte {
	o := rep.Options
	var lists [][]string
	for _, tr := range o.Transports {
		lists = append(lists, o.Clients[tr])
	}
	colors, legend := colorsOf(lists...)

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
	stampedeY := height - 10
	if rep.Stampede != nil { // below the panels, two panels wide
		height, width = height+rep.Stampede.svgHeight(), max(width, 2*chartPanelW+20)
	}

	b := newSVG(width, height)
	b.header("ermc vs gomemcache: median ops/s per client and workload (higher is better)",
		machineLine(fmt.Sprintf("%s × %v per measurement, clients alternated", plural(o.Rounds, "round"), o.Duration), m),
		"Bar length: median ops/s relative to the fastest client of the same workload (linear). Label: median ops/s, and the median over rounds of ops/s ÷ gomemcache's in the same round.")
	b.legend(70, legend, colors)

	for pi, tr := range o.Transports {
		x0 := 10 + pi*chartPanelW
		b.text(x0, chartTop-8, 14, "start", "bold", TransportTitle(tr))
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
			b.text(x0+chartLabelW-8, y+groupH/2+4, 12, "end", "normal", wl)
			fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#ccc"/>`+"\n", x0+chartLabelW, y-1, x0+chartLabelW, y+groupH-chartBarGap+1)
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
				fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
					x0+chartLabelW, y, w, chartBarH, colors[c], html.EscapeString(fmt.Sprintf("%s %s %s: %s", tr, wl, c, label)))
				b.text(x0+chartLabelW+w+4, y+chartBarH-2, 10, "start", "normal", label)
				y += chartBarH + chartBarGap
			}
			y += chartGroupG
		}
	}
	if rep.Stampede != nil {
		rep.Stampede.svg(b, 10, stampedeY, colors)
	}
	return b.bytes()
}
