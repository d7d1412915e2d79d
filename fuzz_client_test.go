package ermc

import (
	"encoding/binary"
	"fmt"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"
)

// The whole client under fuzzing: a real Client of each driver whose
// connections are in-memory (fuzz_conn_test.go) and answer with the fuzz
// input. Properties, not just "no panic":
//   - no hang: the in-memory server never stalls, so no request may end in
//     a timeout, and a hang guard bounds every call;
//   - bounded memory: an operation allocates within a small bound set by
//     MaxValueLength (4096 here), whatever lengths the input announces;
//   - a value returned is exactly what the input framed for that key
//     (the reference framers of fuzz_ref_test.go);
//   - after a fault the connection is not reused: the next request is
//     not sent on it, and gets its own value.

// fuzzResult is what one operation returned.
type fuzzResult struct {
	op     opcode
	key    string
	keys   []string
	value  []byte
	cas    uint64
	calls  []textCall
	number uint64
	err    error
}

// fuzzOps are the operations the client targets drive, on key (and, for
// a multi-get, key and key+"2").
var fuzzOps = []func(c *Client, key string) fuzzResult{
	func(c *Client, key string) fuzzResult {
		v, err := c.Get(bg, key, nil)
		return fuzzResult{op: opGet, key: key, value: v, err: err}
	},
	func(c *Client, key string) fuzzResult {
		v, cas, err := c.Gets(bg, key, nil)
		return fuzzResult{op: opGets, key: key, value: v, cas: cas, err: err}
	},
	func(c *Client, key string) fuzzResult {
		v, err := c.GetAndTouch(bg, key, time.Minute, nil)
		return fuzzResult{op: opGat, key: key, value: v, err: err}
	},
	func(c *Client, key string) fuzzResult {
		res := fuzzResult{op: opGetMulti, key: key, keys: []string{key, key + "2"}}
		res.err = c.GetMulti(bg, res.keys, func(i int, v []byte) {
			res.calls = append(res.calls, textCall{i, string(v)})
		})
		return res
	},
	func(c *Client, key string) fuzzResult {
		n, err := c.Incr(bg, key, 1)
		return fuzzResult{op: opIncr, key: key, number: n, err: err}
	},
	func(c *Client, key string) fuzzResult {
		return fuzzResult{op: opSet, key: key, err: c.Set(bg, key, []byte("v"), 0)}
	},
	func(c *Client, key string) fuzzResult {
		return fuzzResult{op: opDelete, key: key, err: c.Delete(bg, key)}
	},
	func(c *Client, key string) fuzzResult {
		_, err := c.Stats(bg)
		return fuzzResult{op: opStats, err: err}
	},
	func(c *Client, key string) fuzzResult {
		_, err := c.Version(bg)
		return fuzzResult{op: opVersion, err: err}
	},
}

// fuzzClient makes a client of proto on srv: small MaxValueLength, one
// connection (one Ultra lane), short timeouts as hang guards only.
func fuzzClient(t *testing.T, proto Protocol, srv *fuzzServer) *Client {
	t.Helper()
	c, err := New("fuzz:11211", Options{Protocol: proto, MaxValueLength: fuzzMaxValue, MaxConns: 1,
		Timeout: 2 * time.Second, ConnectTimeout: 2 * time.Second, DialContext: srv.dial})
	if err != nil {
		t.Fatal(err)
	}
	if u, ok := c.drv.(*pipeDriver); ok {
		u.lanes = u.lanes[:1]
		srv.waiting = ultraWaiting(c)
	}
	return c
}

// measureAllocs runs fn and reports a heap allocation over 32 KiB
// (runtime/metrics' largest size bucket), or more than a small multiple
// of the reply's n bytes allocated in all. The largest buffer a client
// needs is a connection's 16 KiB read buffer; values are bounded by
// MaxValueLength, 4096 bytes here: a length announced by the reply that
// the client believed would stand out.
func measureAllocs(n int, fn func()) error {
	total0, large0 := heapAllocs()
	fn()
	total1, large1 := heapAllocs()
	if large1 != large0 {
		return fmt.Errorf("%d allocations over 32 KiB for a %d-byte reply", large1-large0, n)
	}
	if bound := uint64(256<<10 + 16*n); total1-total0 > bound {
		return fmt.Errorf("%d bytes allocated for a %d-byte reply, bound %d", total1-total0, n, bound)
	}
	return nil
}

// confirmAllocs runs an iteration, which returns the allocation excess it
// measured, and fails t if a second run measures one too. The counters
// are process-wide, and under -fuzz the engine allocates in the same
// process; a client that believes a hostile length does it every time.
func confirmAllocs(t *testing.T, iteration func() error) {
	t.Helper()
	if err := iteration(); err != nil {
		if err := iteration(); err != nil {
			t.Fatal(err)
		}
	}
}

// heapAllocs reads the bytes allocated so far and the count of
// allocations over 32 KiB.
func heapAllocs() (total, large uint64) {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/allocs-by-size:bytes"}}
	metrics.Read(s)
	h := s[1].Value.Float64Histogram()
	for i, c := range h.Counts {
		if h.Buckets[i] > 32<<10 {
			large += c
		}
	}
	return s[0].Value.Uint64(), large
}

// fuzzOneRequest runs one operation whose reply is the fuzz input, then a
// get whose reply is clean, and checks both.
func fuzzOneRequest(t *testing.T, proto Protocol, op, chunk uint8, reply []byte) {
	confirmAllocs(t, func() error { return oneRequest(t, proto, op, chunk, reply) })
}

func oneRequest(t *testing.T, proto Protocol, op, chunk uint8, reply []byte) error {
	srv := newFuzzServer(proto, reply, int(chunk%64)+1, 1)
	c := fuzzClient(t, proto, srv)
	defer c.Close()
	run := fuzzOps[int(op)%len(fuzzOps)]

	var res fuzzResult
	allocErr := measureAllocs(len(reply), func() { res = guarded(t, func() fuzzResult { return run(c, "a") }) })
	if isTimeout(res.err) {
		t.Fatalf("%v timed out, but the server never stalls: %v", res.op, res.err)
	}
	rep, ok := refFirstReply(proto, res, reply)
	if err := checkResult(proto, res, rep, ok); err != nil {
		t.Fatalf("%v: %v\nreply %q", res.op, err, reply)
	}
	checkNextRequest(t, srv, c, proto, isFault(res.err))
	return allocErr
}

// checkNextRequest gets a key whose reply is clean: it must succeed with
// its own value, and after a fault it must not have gone over the faulty
// connection.
func checkNextRequest(t *testing.T, srv *fuzzServer, c *Client, proto Protocol, faulted bool) {
	t.Helper()
	first := srv.conn(0)
	// No wait for a reader to drain the connection first: a lone request
	// on Ultra is read by its own caller, as on Text, and nobody reads an
	// idle connection on either driver. Trailing bytes that came with the
	// reply fail the connection; the fake drops bytes never read once the
	// next request is written, for every driver alike.
	if proto == Ultra && first != nil {
		first.setLater()
	}
	got := guarded(t, func() getResult {
		v, err := c.Get(bg, "after", nil)
		return getResult{string(v), err}
	})
	if got.err != nil || got.v != cleanValues["after"] {
		t.Fatalf("the request after: %q, %v (dials %d)", got.v, got.err, srv.dials())
	}
	if faulted && first != nil && (first.sawKey("after") || !first.isClosed()) {
		t.Fatalf("the connection was reused after a fault (closed %v)", first.isClosed())
	}
}

// refFirstReply frames the reply to res at the start of b.
func refFirstReply(proto Protocol, res fuzzResult, b []byte) (refReply, bool) {
	if proto == Binary {
		switch res.op {
		case opGet, opGets:
			return refBinGet(b, binGet, binOpaque, res.key)
		case opGat:
			return refBinGet(b, binGAT, binOpaque, res.key)
		case opGetMulti:
			return refBinMulti(b, res.keys)
		case opIncr:
			f, ok := refBinNext(b)
			rep := refReply{size: f.size, status: f.status}
			if ok && f.status == 0 && len(f.value) == 8 {
				rep.number = binary.BigEndian.Uint64(f.value)
			}
			return rep, ok && f.opcode == binIncr && f.opaque == binOpaque
		}
		f, ok := refBinNext(b)
		return refReply{size: f.size, status: f.status}, ok
	}
	switch {
	case res.op.isRetrieval():
		return refTextRetrieval(b)
	case res.op == opIncr:
		return refTextArith(b)
	}
	line, n, ok := refTextLine(b)
	return refReply{line: line, size: n}, ok
}

// checkResult compares an operation's result with the reference framing
// of its reply.
func checkResult(proto Protocol, res fuzzResult, rep refReply, ok bool) error {
	switch {
	case res.op.isRetrieval():
		return checkRetrieval(retrievalResult{op: res.op, key: res.key, keys: res.keys, value: res.value, cas: res.cas,
			calls: res.calls, ok: res.err == nil, miss: res.err == ErrCacheMiss}, rep, ok, fuzzMaxValue)
	case res.op == opIncr && res.err == nil:
		framed := proto == Binary && rep.status == 0 || proto != Binary && refIsNumber(rep.line)
		if !ok || !framed || rep.number != res.number {
			return fmt.Errorf("incr returned %d; the reference reads %+v, %v", res.number, rep, ok)
		}
	case res.op == opIncr && res.err == ErrCacheMiss:
		if !ok || proto == Binary && rep.status != binStatusKeyNotFound || proto != Binary && rep.line != "NOT_FOUND" {
			return fmt.Errorf("incr missed; the reference reads %+v, %v", rep, ok)
		}
	}
	return nil
}

// refIsNumber reports whether line is a decimal number.
func refIsNumber(line string) bool {
	_, err := strconv.ParseUint(line, 10, 64)
	return err == nil
}

func FuzzClientText(f *testing.F) {
	addClientSeeds(f, Text)
	f.Fuzz(func(t *testing.T, op, chunk uint8, reply []byte) { fuzzOneRequest(t, Text, op, chunk, reply) })
}

func FuzzClientBinary(f *testing.F) {
	addClientSeeds(f, Binary)
	f.Fuzz(func(t *testing.T, op, chunk uint8, reply []byte) { fuzzOneRequest(t, Binary, op, chunk, reply) })
}

func FuzzClientUltra(f *testing.F) {
	addClientSeeds(f, Ultra)
	f.Fuzz(func(t *testing.T, op, chunk uint8, reply []byte) { fuzzOneRequest(t, Ultra, op, chunk, reply) })
}

// addClientSeeds adds a few hand-written replies; the captured ones are
// in testdata/fuzz.
func addClientSeeds(f *testing.F, proto Protocol) {
	if proto == Binary {
		f.Add(uint8(0), uint8(5), binResp(binGet, 0, binOpaque, 1, be32(0), "", "hello"))
		f.Add(uint8(0), uint8(63), binResp(binGet, 1, binOpaque, 0, "", "", "Not found"))
		f.Add(uint8(3), uint8(2), join(binResp(binGetKQ, 0, 1, 1, be32(0), "a2", "B"), binResp(binNoop, 0, 2, 0, "", "", "")))
		f.Add(uint8(4), uint8(7), binResp(binIncr, 0, binOpaque, 0, "", "", be64(42)))
		f.Add(uint8(0), uint8(7), []byte("ERROR Too many open connections\r\n"))
		f.Add(uint8(0), uint8(63), binResp(binGet, 0, binOpaque, 1, be32(0), "", string(make([]byte, 100_000))))
		return
	}
	f.Add(uint8(0), uint8(63), []byte("VALUE a 0 100000\r\n"+string(make([]byte, 100_000))+"\r\nEND\r\n"))
	f.Add(uint8(0), uint8(5), []byte("VALUE a 0 5\r\nhello\r\nEND\r\n"))
	f.Add(uint8(1), uint8(63), []byte("VALUE a 0 5 9\r\nhello\r\nEND\r\n"))
	f.Add(uint8(3), uint8(1), []byte("VALUE a2 0 1\r\nB\r\nVALUE a 0 1\r\nA\r\nEND\r\n"))
	f.Add(uint8(4), uint8(9), []byte("42\r\n"))
	f.Add(uint8(0), uint8(7), []byte("VALUE a 0 4294967295\r\n"))
	f.Add(uint8(0), uint8(7), []byte("VALUE a 0 5\r\nhello\r\nEND\r\nVALUE after 0 5\r\nstale\r\nEND\r\n"))
}
