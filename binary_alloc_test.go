//go:build !race

// The race detector allocates on its own; allocation counts are only
// meaningful without it.

package ermc

import (
	"testing"
)

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
