package bench

import (
	"strings"
	"testing"
	"time"
)

// TestStampedeShort runs the stampede scenario briefly on every client and
// checks what the report relies on: reads without errors, loads grouped
// into expiries, Fetch loading at most once per client and expiry, and the
// table and the chart showing every client.
func TestStampedeShort(t *testing.T) {
	needServer(t)
	const processes = 2
	st, err := RunStampede(StampedeOptions{Addr: serverAddr, Processes: processes, Goroutines: 4, Duration: 300 * time.Millisecond, Load: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Results) != len(StampedeClients()) {
		t.Fatalf("%d results for %d clients", len(st.Results), len(StampedeClients()))
	}
	md := st.Markdown()
	for _, r := range st.Results {
		switch {
		case r.Errors > 0:
			t.Errorf("%s: %d errors, first: %v", r.Client, r.Errors, r.FirstErr)
		case r.Reads == 0 || r.Loads == 0 || r.Expiries == 0 || r.P50 <= 0 || r.P99 < r.P50 || r.Max < r.P99:
			t.Errorf("%s: %+v", r.Client, r)
		case strings.HasPrefix(r.Client, "ermc") && r.MaxLoads > processes:
			t.Errorf("%s: %d loads of one expiry by %d clients", r.Client, r.MaxLoads, processes)
		}
		if !strings.Contains(md, "| "+r.Client+" |") {
			t.Errorf("no table row for %s:\n%s", r.Client, md)
		}
	}
	rep := &Report{Options: Options{Transports: []string{TCP}, Clients: map[string][]string{TCP: nil}}, Stampede: st}
	svg := string(rep.Chart(Machine{}))
	if n, want := strings.Count(svg, "<rect x="), 2*len(st.Results); n != want {
		t.Errorf("chart has %d bars, want %d", n, want)
	}
	t.Log(md)
}

func TestLoadBursts(t *testing.T) {
	t0 := time.Now()
	at := func(ms ...int) []time.Time {
		var ts []time.Time
		for _, m := range ms {
			ts = append(ts, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return ts
	}
	for _, c := range []struct {
		starts          []time.Time
		bursts, maxLoad int
	}{
		{nil, 0, 0},
		{at(0), 1, 1},
		{at(0, 10, 20, 1000, 1010, 2000), 3, 3},
		{at(0, 200, 400, 600), 1, 4}, // gaps under the threshold chain into one
	} {
		if b, m := loadBursts(c.starts, stampedeGap); b != c.bursts || m != c.maxLoad {
			t.Errorf("loadBursts(%d starts) = %d, %d; want %d, %d", len(c.starts), b, m, c.bursts, c.maxLoad)
		}
	}
}
