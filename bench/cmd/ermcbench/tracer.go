package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/ermc-go/ermc/bench"
)

var (
	tracerWorkloads = flag.String("tracer-workloads", env("BENCH_TRACER_WORKLOADS", strings.Join(bench.TracerWorkloads, ",")),
		"workloads of the OpenTelemetry Tracer's cost section; none: skip it (env BENCH_TRACER_WORKLOADS)")
	onlyTracer = flag.Bool("only-tracer", false, "measure the OpenTelemetry Tracer's cost only, no comparison")
)

// tracerSection measures what the ermcotel Tracer adds to ermc-text over
// the in-memory responder and returns the report's section on it, or ""
// when BENCH_TRACER_WORKLOADS is none.
func tracerSection() string {
	names := splitList(*tracerWorkloads)
	if len(names) == 0 || names[0] == "none" {
		return ""
	}
	opts := roundOptions()
	opts.Workloads = names
	rep, err := bench.RunTracerCost(opts)
	if err != nil {
		fatalf("tracer cost: %v", err)
	}
	return "\n" + rep.TracerTable()
}

// printTracerOnly is the -only-tracer run.
func printTracerOnly() {
	fmt.Print(strings.TrimPrefix(tracerSection(), "\n"))
}
