package bench

import (
	"strings"
	"testing"
	"time"
)

// TestTracerCostOneRound runs the Tracer's cost section for one tiny round:
// both clients run without errors, the traced one visibly records (it
// allocates where ermc-text does not), and the table has its row.
func TestTracerCostOneRound(t *testing.T) {
	rep, err := RunTracerCost(Options{Workloads: []string{"Get100B/1g"}, Rounds: 1, Duration: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"ermc-text", TracerClient} {
		r := rep.Result(Mem, "Get100B/1g", c)
		if r == nil || r.Errors > 0 || r.OpsPerSec <= 0 {
			t.Fatalf("%s: %+v", c, r)
		}
	}
	if r := rep.Result(Mem, "Get100B/1g", TracerClient); r.AllocsPerOp < 1 {
		t.Errorf("the traced client allocates %v times per op: is the Tracer recording?", r.AllocsPerOp)
	}
	table := rep.TracerTable()
	if !strings.Contains(table, "| Get100B/1g |") {
		t.Errorf("no row in\n%s", table)
	}
	t.Logf("\n%s", table)
}
