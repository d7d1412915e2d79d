//go:build !race

// The race detector allocates on its own; allocation counts are only
// meaningful without it.

package ermc

import (
	"testing"
	"time"
)

// The binary driver's steady state allocates nothing: one pooled request,
// one pooled connection, values appended to the caller's buffer.
func TestBinaryAllocs(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Binary, Options{MaxConns: 1})
	mustSet(t, c, "k", "a value of a few bytes")
	mustSet(t, c, "k2", "another value")
	if err := c.SetInt(bg, "n", 0, 0); err != nil {
		t.Fatal(err)
	}
	value := []byte("a value of a few bytes")
	dst := make([]byte, 0, 256)
	keys := []string{"k", "missing", "k2"}
	hits := 0
	onValue := func(i int, v []byte) { hits++ }

	var failed error
	check := func(err error) {
		if err != nil && failed == nil {
			failed = err
		}
	}
	for _, tc := range []struct {
		name string
		op   func()
	}{
		{"Get", func() { _, err := c.Get(bg, "k", dst[:0]); check(err) }},
		{"Gets", func() { _, _, err := c.Gets(bg, "k", dst[:0]); check(err) }},
		{"Set", func() { check(c.Set(bg, "k", value, 0)) }},
		{"Set+Delete", func() { check(c.Set(bg, "d", value, 0)); check(c.Delete(bg, "d")) }},
		{"Delete miss", func() {
			if err := c.Delete(bg, "missing"); err != ErrCacheMiss {
				check(err)
			}
		}},
		{"Incr", func() { _, err := c.Incr(bg, "n", 1); check(err) }},
		{"Touch", func() { check(c.Touch(bg, "k", time.Hour)) }},
		{"GetMulti", func() { check(c.GetMulti(bg, keys, onValue)) }},
	} {
		allocs := testing.AllocsPerRun(200, tc.op)
		if failed != nil {
			t.Fatalf("%s: %v", tc.name, failed)
		}
		t.Logf("%s: %v allocs/op", tc.name, allocs)
		if allocs != 0 {
			t.Errorf("%s: %v allocs/op, want 0", tc.name, allocs)
		}
	}
	if hits != 2*201 {
		t.Errorf("GetMulti delivered %d values in 201 calls, want 2 each", hits)
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
	if !ok {
		t.Fatal("codec round trip failed")
	}
	if allocs != 0 {
		t.Errorf("%v allocs/op, want 0", allocs)
	}
}
