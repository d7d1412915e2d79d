//go:build !race

package ermc

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Zero allocations on the hot path (README). Each steady-state operation
// of every wire driver against a real memcached must allocate nothing with
// context.Background(). (The race detector allocates, hence the build tag.)

// allocCase is one measured operation, on items allocCases stored first.
type allocCase struct {
	name string
	run  func(ctx context.Context) error
}

func allocCases(t *testing.T, c *Client) []allocCase {
	t.Helper()
	for i := 0; i < 10; i++ {
		mustSet(t, c, "alloc:m"+strconv.Itoa(i), "multi value "+strconv.Itoa(i))
	}
	mustSet(t, c, "alloc:get", "a value of a typical size, a few dozen bytes long")
	mustSet(t, c, "alloc:touch", "t")
	mustSet(t, c, "alloc:n", "0")
	mustSet(t, c, "alloc:present", "p")

	buf := make([]byte, 0, 256)
	value := []byte("a value of a typical size, a few dozen bytes long")
	keys := make([]string, 10)
	for i := range keys {
		keys[i] = "alloc:m" + strconv.Itoa(i)
	}
	hits := 0
	onValue := func(i int, v []byte) { hits++ } // made once, outside the measured calls

	return []allocCase{
		{"Get", func(ctx context.Context) error { _, err := c.Get(ctx, "alloc:get", buf[:0]); return err }},
		{"GetMiss", func(ctx context.Context) error {
			if _, err := c.Get(ctx, "alloc:absent", buf[:0]); err != ErrCacheMiss {
				return err
			}
			return nil
		}},
		{"Gets", func(ctx context.Context) error { _, _, err := c.Gets(ctx, "alloc:get", buf[:0]); return err }},
		{"Set", func(ctx context.Context) error { return c.Set(ctx, "alloc:set", value, 0) }},
		{"DeleteMissing", func(ctx context.Context) error {
			if err := c.Delete(ctx, "alloc:absent"); err != ErrCacheMiss {
				return err
			}
			return nil
		}},
		{"SetDelete", func(ctx context.Context) error {
			if err := c.Set(ctx, "alloc:del", value, 0); err != nil {
				return err
			}
			return c.Delete(ctx, "alloc:del")
		}},
		{"Incr", func(ctx context.Context) error { _, err := c.Incr(ctx, "alloc:n", 1); return err }},
		{"Touch", func(ctx context.Context) error { return c.Touch(ctx, "alloc:touch", time.Hour) }},
		{"GetMulti10", func(ctx context.Context) error {
			hits = 0
			if err := c.GetMulti(ctx, keys, onValue); err != nil {
				return err
			}
			if hits != len(keys) {
				return ErrCacheMiss
			}
			return nil
		}},
	}
}

func TestAllocs(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			testAllocs(t, newTestClient(t, s.Addr, proto, Options{}))
		})
	}
}

// TestAllocsCacheCAS: with CacheCAS, Gets of a key whose id is already
// remembered allocates nothing either.
func TestAllocsCacheCAS(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestClient(t, s.Addr, proto, Options{CacheCAS: true})
			mustSet(t, c, "alloc:gets", "v")
			buf := make([]byte, 0, 64)
			var err error
			allocs := testing.AllocsPerRun(200, func() {
				if _, _, e := c.Gets(bg, "alloc:gets", buf[:0]); e != nil && err == nil {
					err = e
				}
			})
			require.NoError(t, err)
			assert.Zero(t, allocs, "Gets with CacheCAS: allocs per op")
		})
	}
}

func testAllocs(t *testing.T, c *Client) {
	for _, ac := range allocCases(t, c) {
		t.Run(ac.name, func(t *testing.T) {
			var err error
			allocs := testing.AllocsPerRun(200, func() {
				if e := ac.run(bg); e != nil && err == nil {
					err = e
				}
			})
			require.NoError(t, err, ac.name)
			t.Logf("%s: %v allocs/op with context.Background()", ac.name, allocs)
			assert.Zero(t, allocs, "%s: allocs per op", ac.name)
		})
	}
}

// TestAllocsWithContext: a request's context, with a deadline or only a
// cancel func, costs nothing either: the drivers poll it instead of
// arming an interrupt (netConn.read).
func TestAllocsWithContext(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			testAllocsWithContext(t, newTestClient(t, s.Addr, proto, Options{}))
		})
	}
}

func testAllocsWithContext(t *testing.T, c *Client) {
	timeout, cancelTimeout := context.WithTimeout(bg, time.Hour)
	defer cancelTimeout()
	cancellable, cancel := context.WithCancel(bg)
	defer cancel()
	for _, ac := range allocCases(t, c) {
		for _, ctx := range []struct {
			name string
			ctx  context.Context
		}{{"WithTimeout", timeout}, {"WithCancel", cancellable}} {
			var err error
			allocs := testing.AllocsPerRun(200, func() {
				if e := ac.run(ctx.ctx); e != nil && err == nil {
					err = e
				}
			})
			require.NoError(t, err, "%s with %s", ac.name, ctx.name)
			assert.Zero(t, allocs, "%s with %s: allocs per op", ac.name, ctx.name)
		}
	}
}

// TestAllocsCompressedAndTyped: the lz4 path (a compressible value over
// CompressThreshold, read into a buffer with room) and the integer helpers
// allocate nothing in steady state either.
func TestAllocsCompressedAndTyped(t *testing.T) {
	s := startMemcached(t)
	value := []byte(strings.Repeat("pyermc benchmark string ", 640)) // 15 KiB, compressible
	dst := make([]byte, 0, 32<<10)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestClient(t, s.Addr, proto, Options{CompressThreshold: 100})
			var err error
			keep := func(e error) {
				if e != nil && err == nil {
					err = e
				}
			}
			for _, ac := range []allocCase{
				{"SetCompressed", func(ctx context.Context) error { return c.Set(ctx, "alloc:z", value, 0) }},
				{"GetCompressed", func(ctx context.Context) error {
					v, err := c.Get(ctx, "alloc:z", dst[:0])
					if err == nil && len(v) != len(value) {
						return ErrCorruptValue
					}
					return err
				}},
				{"SetInt", func(ctx context.Context) error { return c.SetInt(ctx, "alloc:i", 12345, 0) }},
				{"GetInt", func(ctx context.Context) error {
					n, err := c.GetInt(ctx, "alloc:i")
					if err == nil && n != 12345 {
						return ErrCorruptValue
					}
					return err
				}},
			} {
				allocs := testing.AllocsPerRun(100, func() { keep(ac.run(bg)) })
				require.NoError(t, err, ac.name)
				assert.Zero(t, allocs, "%s: allocs per op", ac.name)
			}
		})
	}
}

// TestAllocsAfterPoolCalibration: a process that mostly stores small
// values (tens of thousands of SetInt) must still compress a 15 KiB value
// without allocating: pooled buffers are kept by size class, not dropped
// for being larger than what is typical.
func TestAllocsAfterPoolCalibration(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Text, Options{CompressThreshold: 100})
	for i := 0; i < 60000; i++ { // past any warm-up a pool may calibrate on
		mustSetInt(t, c, "alloc:small", int64(i))
	}
	value := []byte(strings.Repeat("pyermc benchmark string ", 640))
	var err error
	allocs := testing.AllocsPerRun(200, func() {
		if e := c.Set(bg, "alloc:big", value, 0); e != nil && err == nil {
			err = e
		}
		for j := 0; j < 20 && err == nil; j++ {
			err = c.SetInt(bg, "alloc:small", int64(j), 0)
		}
	})
	require.NoError(t, err)
	assert.Zero(t, allocs, "a compressed Set among small ones: allocs per op")
}

func mustSetInt(t *testing.T, c *Client, key string, n int64) {
	t.Helper()
	require.NoError(t, c.SetInt(bg, key, n, 0))
}

// TestAllocsGetMultiInlineClosure pins what the README says about GetMulti
// callbacks: one written inline that captures a local escapes (the
// request keeps it while the reply is parsed), costing the caller what Go
// allocates for the closure and the variables it captures; one made once
// and reused costs nothing.
func TestAllocsGetMultiInlineClosure(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Text, Options{})
	keys := []string{"inline:a", "inline:b"}
	for _, k := range keys {
		mustSet(t, c, k, "v")
	}
	inline := testing.AllocsPerRun(200, func() {
		n := 0
		// Not testify: its arguments would be allocated in the measured closure.
		if err := c.GetMulti(bg, keys, func(i int, v []byte) { n += len(v) }); err != nil || n != 2 {
			t.Fatalf("GetMulti: %v, %d bytes", err, n)
		}
	})
	assert.Equal(t, 2.0, inline, "inline closure capturing a local: allocs per op (README says 2)")
	var n int
	onValue := func(i int, v []byte) { n += len(v) }
	reused := testing.AllocsPerRun(200, func() {
		n = 0
		if err := c.GetMulti(bg, keys, onValue); err != nil || n != 2 {
			t.Fatalf("GetMulti: %v, %d bytes", err, n)
		}
	})
	assert.Zero(t, reused, "closure made once: allocs per op (README says 0)")
}

// On Meta a key that goes out base64-encoded costs nothing either: it is
// encoded straight into the write buffer.
func TestAllocsMetaBase64Keys(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Meta, Options{})
	keys := []string{"alloc: a key with spaces", "alloc:\ttab\x00nul " + strings.Repeat("x", 150)}
	for _, k := range keys {
		mustSet(t, c, k, "v")
	}
	value, buf := []byte("v"), make([]byte, 0, 64)
	onValue := func(int, []byte) {} // made once, outside the measured calls
	for _, ac := range []allocCase{
		{"Get", func(ctx context.Context) error { _, err := c.Get(ctx, keys[1], buf[:0]); return err }},
		{"Set", func(ctx context.Context) error { return c.Set(ctx, keys[0], value, 0) }},
		{"GetMulti", func(ctx context.Context) error { return c.GetMulti(ctx, keys, onValue) }},
	} {
		var err error
		allocs := testing.AllocsPerRun(200, func() {
			if e := ac.run(bg); e != nil && err == nil {
				err = e
			}
		})
		require.NoError(t, err, ac.name)
		assert.Zero(t, allocs, "%s with base64 keys: allocs per op", ac.name)
	}
}

// The codec alone: encoding into a buffer with room and parsing a hit
// into a destination with room allocate nothing.
func TestBinaryCodecAllocs(t *testing.T) {
	reply := binResp(binGet, 0, binOpaque, 1, be32(0), "", "hello")
	multi := join(
		binResp(binGetKQ, 0, 0, 1, be32(0), "a", "A"),
		binResp(binGetKQ, 0, 1, 1, be32(0), "b", "B"),
		binResp(binNoop, 0, 2, 0, "", "", ""),
	)
	wbuf := make([]byte, 0, 1024)
	dst := make([]byte, 0, 64)
	value := []byte("value")
	keys := []string{"a", "b"}
	onValue := func(int, []byte) {}
	r := new(request)
	ok := true
	allocs := testing.AllocsPerRun(100, func() {
		r.reset()
		r.op, r.key, r.value, r.maxValue = opSet, "key", value, 1000
		wbuf = appendBinaryRequest(wbuf[:0], r)

		r.reset()
		r.op, r.key, r.dst, r.maxValue = opGet, "key", dst[:0], 1000
		wbuf = appendBinaryRequest(wbuf[:0], r)
		n, done, err := parseBinaryReply(r, reply)
		ok = ok && n == len(reply) && done && err == nil && string(r.dst) == "hello"

		r.reset()
		r.op, r.keys, r.onValue, r.maxValue = opGetMulti, keys, onValue, 1000
		wbuf = appendBinaryRequest(wbuf[:0], r)
		n, done, err = parseBinaryReply(r, multi)
		ok = ok && n == len(multi) && done && err == nil
	})
	require.True(t, ok, "codec round trip failed")
	assert.Zero(t, allocs, "allocs per op")
}
