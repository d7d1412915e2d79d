package ermc

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordTracer records every call; OpStart tags the context it returns so
// the test can check that OpEnd gets that context.
type recordTracer struct {
	mu     sync.Mutex
	starts []OpInfo
	ends   []tracedEnd
	seq    int
}

type tracedEnd struct {
	info OpInfo
	tag  any // the tag OpStart put in the context
	err  error
}

type traceTag struct{}

func (t *recordTracer) OpStart(ctx context.Context, op OpInfo) context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.starts = append(t.starts, op)
	t.seq++
	return context.WithValue(ctx, traceTag{}, t.seq)
}

func (t *recordTracer) OpEnd(ctx context.Context, op OpInfo, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ends = append(t.ends, tracedEnd{op, ctx.Value(traceTag{}), err})
}

// take returns what was recorded since the last take and forgets it.
func (t *recordTracer) take() ([]OpInfo, []tracedEnd) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, e := t.starts, t.ends
	t.starts, t.ends = nil, nil
	return s, e
}

// Every public operation is one OpStart and one OpEnd, with its
// memcached name, its keys, the client's protocol and address, the
// context OpStart returned, and exactly the error the caller got.
func TestTracerEveryOperation(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			rt := &recordTracer{}
			c := newTestClient(t, s.Addr, proto, Options{Tracer: rt, CacheCAS: true})
			p := proto.String() + ":"
			k := p + "k"
			mustSet(t, c, p+"a", "1")
			mustSet(t, c, p+"b", "2")
			rt.take()
			var obj struct{ N int }
			cases := []struct {
				name string // OpInfo.Name wanted
				key  string
				keys int
				call func() error
			}{
				{"set", k, 1, func() error { return c.Set(bg, k, []byte("v"), 0) }},
				{"get", k, 1, func() error { _, err := c.Get(bg, k, nil); return err }},
				{"get", p + "absent", 1, func() error { _, err := c.Get(bg, p+"absent", nil); return err }},
				{"gets", k, 1, func() error { _, _, err := c.Gets(bg, k, nil); return err }},
				{"gat", k, 1, func() error { _, err := c.GetAndTouch(bg, k, time.Hour, nil); return err }},
				{"get_multi", p + "a", 3, func() error {
					return c.GetMulti(bg, []string{p + "a", p + "b", p + "absent"}, func(int, []byte) {})
				}},
				{"get_multi", p + "a", 2, func() error { _, err := c.GetMultiMap(bg, []string{p + "a", p + "b"}); return err }},
				{"add", k, 1, func() error { return c.Add(bg, k, []byte("v"), 0) }},
				{"replace", k, 1, func() error { return c.Replace(bg, k, []byte("v"), 0) }},
				{"append", k, 1, func() error { return c.Append(bg, k, []byte("w")) }},
				{"prepend", k, 1, func() error { return c.Prepend(bg, k, []byte("u")) }},
				{"cas", k, 1, func() error { return c.CompareAndSwap(bg, k, []byte("v"), 1, 0) }},
				{"cas", k, 1, func() error { return c.CAS(bg, k, []byte("v"), 0) }}, // the id Gets remembered
				{"set", p + "new", 1, func() error { return c.CAS(bg, p+"new", []byte("v"), 0) }},
				{"set", k, 1, func() error { return c.SetNoreply(bg, k, []byte("v"), 0) }},
				{"touch", k, 1, func() error { return c.TouchNoreply(bg, k, time.Hour) }},
				{"delete", p + "absent", 1, func() error { return c.DeleteNoreply(bg, p+"absent") }},
				{"set", p + "n", 1, func() error { return c.SetInt(bg, p+"n", 5, 0) }},
				{"get", p + "n", 1, func() error { _, err := c.GetInt(bg, p+"n"); return err }},
				{"get", k, 1, func() error { _, err := c.GetInt(bg, k); return err }}, // not a number
				{"incr", p + "n", 1, func() error { _, err := c.Incr(bg, p+"n", 2); return err }},
				{"decr", p + "n", 1, func() error { _, err := c.Decr(bg, p+"n", 1); return err }},
				{"set", p + "o", 1, func() error { return c.SetObject(bg, p+"o", obj, 0) }},
				{"get", p + "o", 1, func() error { return c.GetObject(bg, p+"o", &obj) }},
				{"touch", k, 1, func() error { return c.Touch(bg, k, time.Hour) }},
				{"delete", k, 1, func() error { return c.Delete(bg, k) }},
				{"delete", k, 1, func() error { return c.Delete(bg, k) }}, // a miss now
				{"get", "bad key", 1, func() error { _, err := c.Get(bg, "bad key", nil); return err }},
				{"stats", "", 0, func() error { _, err := c.Stats(bg); return err }},
				{"version", "", 0, func() error { _, err := c.Version(bg); return err }},
				{"flush_all", "", 0, func() error { return c.FlushAll(bg) }},
			}
			for i, tc := range cases {
				err := tc.call()
				starts, ends := rt.take()
				require.Len(t, starts, 1, "case %d (%s): OpStart calls", i, tc.name)
				require.Len(t, ends, 1, "case %d (%s): OpEnd has run when the call returns", i, tc.name)
				want := OpInfo{Name: tc.name, Key: tc.key, Keys: tc.keys, Protocol: proto, Addr: s.Addr}
				assert.Equal(t, want, starts[0], "case %d", i)
				assert.Equal(t, want, ends[0].info, "case %d", i)
				assert.NotNil(t, ends[0].tag, "case %d: OpEnd gets the context OpStart returned", i)
				assert.True(t, err == ends[0].err, "case %d (%s): OpEnd got %v, the caller %v", i, tc.name, ends[0].err, err)
			}
		})
	}
}

// The error OpEnd sees is the caller's: a miss is ErrCacheMiss itself, a
// fault under ErrorAsMiss the miss it reads as, a bad key ErrMalformedKey.
func TestTracerErrors(t *testing.T) {
	s := startMemcached(t)
	rt := &recordTracer{}
	c := newTestClient(t, s.Addr, Text, Options{Tracer: rt})
	_, err := c.Get(bg, "absent", nil)
	require.Equal(t, ErrCacheMiss, err)
	_, ends := rt.take()
	assert.Equal(t, ErrCacheMiss, ends[0].err)

	_, err = c.Get(bg, strings.Repeat("k", 300), nil)
	require.ErrorIs(t, err, ErrMalformedKey)
	_, ends = rt.take()
	assert.ErrorIs(t, ends[0].err, ErrMalformedKey)

	addr := "127.0.0.1:" + strconv.Itoa(freePort(t)) // nothing listens
	for _, proto := range wireDrivers {
		rt := &recordTracer{}
		c := newTestClient(t, addr, proto, Options{Tracer: rt, ErrorAsMiss: true, ConnectTimeout: 2 * time.Second})
		res := guardedGet(t, c, bg, "k")
		require.ErrorIs(t, res.err, ErrCacheMiss, proto)
		var ce *ConnError
		require.ErrorAs(t, res.err, &ce, proto)
		_, ends := rt.take()
		require.Len(t, ends, 1)
		assert.Equal(t, res.err.Error(), ends[0].err.Error(), proto)
		assert.ErrorIs(t, ends[0].err, ErrCacheMiss, proto)
		assert.ErrorAs(t, ends[0].err, &ce, proto)
	}
}

// Concurrent operations each get their own pair, on their own goroutine's
// call: OpEnd has run before the call returns.
func TestTracerConcurrent(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			rt := &recordTracer{}
			c := newTestClient(t, s.Addr, proto, Options{Tracer: rt})
			var wg sync.WaitGroup
			const goroutines, ops = 8, 50
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					key := "c" + strconv.Itoa(g)
					for i := 0; i < ops; i++ {
						if !assert.NoError(t, c.Set(bg, key, []byte("v"), 0)) {
							return
						}
						if _, err := c.Get(bg, key, nil); !assert.NoError(t, err) {
							return
						}
					}
				}()
			}
			wg.Wait()
			starts, ends := rt.take()
			assert.Len(t, starts, goroutines*ops*2)
			assert.Len(t, ends, goroutines*ops*2)
			seen := map[any]bool{}
			for _, e := range ends {
				assert.NoError(t, e.err)
				assert.False(t, seen[e.tag], "one OpEnd per OpStart")
				seen[e.tag] = true
			}
		})
	}
}
