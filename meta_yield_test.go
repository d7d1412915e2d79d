package ermc

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memcached serves at most -R commands of one connection per event
// (default 20) and sends what it has at each pause ("conn_yields" in its
// stats). A Meta multi-get is one quiet mg per key, so 100 keys pause the
// connection four or five times; Text's one "get k1 … k100" is a single
// command and never does. The README's note on Meta multi-gets rests on
// this; with -R 200 the same multi-get is served in one event.
func TestMetaMultiGetYieldsEvery20Keys(t *testing.T) {
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("yield-%d", i)
	}
	for _, c := range []struct {
		name       string
		proto      Protocol
		extra      []string
		yieldsFrom int // at least this many pauses per multi-get
		yieldsTo   int // at most
	}{
		{"meta, -R 20 (default)", Meta, nil, 4, 5},
		{"text, -R 20 (default)", Text, nil, 0, 0},
		{"meta, -R 200", Meta, []string{"-R", "200"}, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := startMemcached(t, c.extra...)
			cl := newTestClient(t, srv.Addr, c.proto, Options{})
			for _, k := range keys {
				require.NoError(t, cl.Set(bg, k, []byte("v"), 0), "Set %s", k)
			}
			before := statInt(t, cl, "conn_yields")
			const rounds = 10
			for r := 0; r < rounds; r++ {
				hits := 0
				require.NoError(t, cl.GetMulti(bg, keys, func(int, []byte) { hits++ }), "GetMulti")
				require.Equal(t, len(keys), hits, "GetMulti: hits")
			}
			got := statInt(t, cl, "conn_yields") - before
			assert.True(t, got >= int64(c.yieldsFrom*rounds) && got <= int64(c.yieldsTo*rounds),
				"%d multi-gets of %d keys: conn_yields grew by %d, want %d to %d",
				rounds, len(keys), got, c.yieldsFrom*rounds, c.yieldsTo*rounds)
		})
	}
}
