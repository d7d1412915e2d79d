package ermcotel

import (
	"testing"

	"github.com/ermc-go/ermc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// BenchmarkTracer is one OpStart and OpEnd, what the Tracer adds to an
// operation: on the SDK recording every span (nothing exported), and with
// OpenTelemetry's no-op providers (instrumented, tracing switched off).
func BenchmarkTracer(b *testing.B) {
	op := ermc.OpInfo{Name: "get", Key: "k", Keys: 1, Protocol: ermc.Text, Addr: "127.0.0.1:11211"}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"sdk", Config{
			TracerProvider: sdktrace.NewTracerProvider(),
			MeterProvider:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())),
		}},
		{"noop", Config{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider()}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tr := NewTracer(tc.cfg)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				ctx := tr.OpStart(bg, op)
				tr.OpEnd(ctx, op, nil)
			}
		})
	}
}
