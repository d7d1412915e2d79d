//go:build !race

package ermc

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// nopTracer is a Tracer that does nothing: operations traced by it must
// still allocate nothing.
type nopTracer struct{}

func (nopTracer) OpStart(ctx context.Context, _ OpInfo) context.Context { return ctx }
func (nopTracer) OpEnd(context.Context, OpInfo, error)                  {}

// countTracer counts calls through a pointer, as a real Tracer would keep
// its state.
type countTracer struct{ starts, ends int }

func (t *countTracer) OpStart(ctx context.Context, _ OpInfo) context.Context {
	t.starts++
	return ctx
}
func (t *countTracer) OpEnd(context.Context, OpInfo, error) { t.ends++ }

func TestAllocsWithTracer(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String()+"/nop", func(t *testing.T) {
			testAllocs(t, newTestClient(t, s.Addr, proto, Options{Tracer: nopTracer{}}))
		})
		t.Run(proto.String()+"/counting", func(t *testing.T) {
			ct := &countTracer{}
			testAllocs(t, newTestClient(t, s.Addr, proto, Options{Tracer: ct}))
			assert.NotZero(t, ct.starts, "OpStart calls")
			assert.Equal(t, ct.starts, ct.ends, "OpEnd calls, one per OpStart")
		})
	}
	t.Run("typed", func(t *testing.T) {
		c := newTestClient(t, s.Addr, Text, Options{Tracer: nopTracer{}})
		var err error
		allocs := testing.AllocsPerRun(200, func() {
			if e := c.SetInt(bg, "alloc:i", 7, 0); e != nil && err == nil {
				err = e
			}
			if _, e := c.GetInt(bg, "alloc:i"); e != nil && err == nil {
				err = e
			}
		})
		require.NoError(t, err)
		assert.Zero(t, allocs, "SetInt+GetInt with a Tracer: allocs/op")
	})
}
