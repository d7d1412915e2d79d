package bench

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

// TestRunnerOneRound runs the whole harness for one tiny round against a
// real memcached and the in-memory responder, and checks that every client
// ran every workload without errors and that the report, the table and
// the chart show them all.
func TestRunnerOneRound(t *testing.T) {
	needServer(t)
	var progress bytes.Buffer
	rep, err := Run(Options{
		Addr:     serverAddr,
		Rounds:   1,
		Duration: 20 * time.Millisecond,
		Warmup:   5 * time.Millisecond,
		Progress: &progress,
	})
	if err != nil {
		t.Fatal(err)
	}
	clients := DefaultClients()
	workloads := Workloads()
	if want := len(workloads) * (len(clients[TCP]) + len(clients[Mem])); len(rep.Results) != want {
		t.Fatalf("%d results, want %d", len(rep.Results), want)
	}
	md := rep.Markdown(DescribeMachine(serverAddr), "go test", "chart.svg")
	for _, tr := range []string{TCP, Mem} {
		table := rep.Table(tr)
		for _, wl := range workloads {
			if !strings.Contains(table, "| "+wl.Name+" |") {
				t.Errorf("%s table has no row for %s", tr, wl.Name)
			}
			for _, c := range clients[tr] {
				r := rep.Result(tr, wl.Name, c)
				switch {
				case r == nil:
					t.Errorf("%s %s %s: no result", tr, wl.Name, c)
					continue
				case r.Errors > 0:
					t.Errorf("%s %s %s: %d errors, first: %v", tr, wl.Name, c, r.Errors, r.FirstErr)
				case len(r.Samples) != 1 || r.OpsPerSec <= 0 || math.IsNaN(r.NsPerOp):
					t.Errorf("%s %s %s: %d samples, %v ops/s", tr, wl.Name, c, len(r.Samples), r.OpsPerSec)
				}
				if c == "gomemcache" && r.Ratio != 1 {
					t.Errorf("%s %s: gomemcache's ratio to itself is %v", tr, wl.Name, r.Ratio)
				}
				if !strings.Contains(progress.String(), "round 1/1 "+tr+" "+wl.Name+" "+c+" ") {
					t.Errorf("no progress line for %s %s %s", tr, wl.Name, c)
				}
			}
		}
		if n := strings.Count(table, "\n"); n != 2+len(workloads)*len(clients[tr]) {
			t.Errorf("%s table has %d lines:\n%s", tr, n, table)
		}
		if !strings.Contains(md, table) {
			t.Errorf("report lacks the %s table", tr)
		}
	}
	svg := string(rep.Chart(DescribeMachine("")))
	if !strings.HasPrefix(svg, "<svg") || !strings.HasSuffix(svg, "</svg>\n") {
		t.Errorf("chart is not an SVG document")
	}
	if n, want := strings.Count(svg, "<rect x="), len(workloads)*(len(clients[TCP])+len(clients[Mem]))+len(clients[TCP]); n != want {
		t.Errorf("chart has %d rects (bars and legend), want %d", n, want)
	}
	t.Logf("one tiny round in %v\n%s", rep.Took, md)
}

func TestMedianAndHuman(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd: %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median even: %v", m)
	}
	for x, want := range map[float64]string{0: "0", 950: "950", 999.6: "1.00k", 81234: "81.2k", 812000: "812k", 1234567: "1.23M", math.NaN(): "-"} {
		if got := Human(x); got != want {
			t.Errorf("Human(%v) = %q, want %q", x, got, want)
		}
	}
}
