package bench

import (
	"fmt"
	"strings"

	"github.com/ermc-go/ermc"
	ermcotel "github.com/ermc-go/ermc/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The cost of observing ermc with OpenTelemetry: ermc-text with and
// without the ermcotel Tracer over the in-memory responder, where the
// client's own work is most of an op, so the Tracer's share shows.

// TracerClient is ermc-text with the ermcotel Tracer on the OpenTelemetry
// SDK: a TracerProvider that samples and records every span and a
// MeterProvider whose reader is never collected. Nothing is exported, so
// what it adds is the instrumentation and the SDK's recording, not an
// exporter's work.
const TracerClient = "ermc-text+otel"

// TracerWorkloads are the workloads the Tracer's cost is measured on by
// default.
var TracerWorkloads = []string{"Get100B/1g", "Set100B/1g", "Get100B/64g"}

var tracerMaker = Maker{TracerClient, func(cfg Config) (Client, error) {
	tp := sdktrace.NewTracerProvider()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	c, err := ermc.New(cfg.Addr, ermc.Options{
		Protocol:          ermc.Text,
		MaxConns:          Conns,
		Timeout:           Timeout,
		ConnectTimeout:    Timeout,
		CompressThreshold: cfg.CompressThreshold,
		DialContext:       cfg.DialContext,
		Tracer:            ermcotel.NewTracer(ermcotel.Config{TracerProvider: tp, MeterProvider: mp}),
	})
	if err != nil {
		return nil, err
	}
	return ermcClient{c}, nil
}}

// RunTracerCost measures ermc-text and TracerClient, alternated round by
// round like Run, on opts.Workloads (default TracerWorkloads) over the
// in-memory transport.
func RunTracerCost(opts Options) (*Report, error) {
	opts.Transports = []string{Mem}
	opts.Clients = map[string][]string{Mem: {"ermc-text", TracerClient}}
	if len(opts.Workloads) == 0 {
		opts.Workloads = TracerWorkloads
	}
	return Run(opts)
}

// TracerTable is the markdown section of a RunTracerCost report: per
// workload, ermc-text's medians without and with the Tracer, and the
// difference.
func (rep *Report) TracerTable() string {
	var b strings.Builder
	b.WriteString("## Cost of the OpenTelemetry Tracer\n\n")
	fmt.Fprintf(&b, "`%s` is `ermc-text` with `Options.Tracer` set to `ermcotel.NewTracer` (the `otel/` module) on the "+
		"OpenTelemetry SDK: every span sampled and recorded, metrics aggregated by a reader that is never collected, nothing "+
		"exported. Both run over the in-memory responder, alternated round by round; medians over %s of %v each.\n\n",
		TracerClient, plural(rep.Options.Rounds, "round"), rep.Options.Duration)
	b.WriteString("| workload | ns/op without | ns/op with | added ns/op | allocs/op without | allocs/op with | B/op with |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	for _, wl := range rep.Options.Workloads {
		off, on := rep.Result(Mem, wl, "ermc-text"), rep.Result(Mem, wl, TracerClient)
		if off == nil || on == nil {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", wl, fmtNum(off.NsPerOp), fmtNum(on.NsPerOp),
			fmtNum(on.NsPerOp-off.NsPerOp), fmtAllocs(off.AllocsPerOp), fmtAllocs(on.AllocsPerOp), fmtNum(on.BytesPerOp))
	}
	for _, r := range rep.Results {
		if r.Errors > 0 {
			fmt.Fprintf(&b, "\n%s on %s: %d errors, the first: %v\n", r.Client, r.Workload, r.Errors, r.FirstErr)
		}
	}
	return b.String()
}
