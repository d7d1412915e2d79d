package ermc

import (
	"context"
	"testing"
)

// nopBenchTracer does nothing, as a Tracer switched off would.
type nopBenchTracer struct{}

func (nopBenchTracer) OpStart(ctx context.Context, _ OpInfo) context.Context { return ctx }
func (nopBenchTracer) OpEnd(context.Context, OpInfo, error)                  {}

// BenchmarkTraceWrapping is a Get on the Noop driver, the cheapest
// operation there is, with no Tracer and with one that does nothing: what
// the wrapping of tracer.go costs an operation. "none" is the bare
// wrapping, trace and end with no operation between them.
func BenchmarkTraceWrapping(b *testing.B) {
	for _, tc := range []struct {
		name   string
		tracer Tracer
	}{{"nil", nil}, {"nop", nopBenchTracer{}}} {
		c, err := New("", Options{Protocol: Noop, Tracer: tc.tracer})
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 0, 64)
		b.Run("NoopGet/"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = c.Get(bg, "key", buf)
			}
		})
		b.Run("none/"+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				op := c.trace(bg, "get", "key", 1)
				_ = op.end(nil)
			}
		})
	}
}
