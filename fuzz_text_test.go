package ermc

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// Fuzz targets of the text protocol codec. Seeds: testdata/fuzz/<Target>/,
// including replies captured from memcached 1.6.18 (fuzz/capture).

// fuzzMaxValue is MaxValueLength in the fuzz targets: small, so that an
// allocation driven by a hostile length stands out.
const fuzzMaxValue = 4096

// textCall is one multi-get callback.
type textCall struct {
	index int
	value string
}

// parseOutcome is what parsing one reply produced.
type parseOutcome struct {
	done, failed bool // complete; the stream was refused (connection discarded)
	used         int
	opErr        string // the operation's outcome (r.err)
	dst, text    string
	cas          uint64
	flags        uint32
	number       uint64
	calls        []textCall
}

// feedReply runs parse over reply delivered step bytes at a time
// (feedChunks) and sums up what it produced. It checks what every parser
// must do whatever the bytes: deliver values only for the request's keys,
// and buffer no more than one value.
func feedReply(t *testing.T, parse replyParser, r *request, reply []byte, step, scratchLimit int) (parseOutcome, error) {
	t.Helper()
	var out parseOutcome
	r.onValue = func(i int, v []byte) {
		if i < 0 || i >= len(r.keys) {
			t.Fatalf("value for index %d of %d keys", i, len(r.keys))
		}
		out.calls = append(out.calls, textCall{i, string(v)})
	}
	f := feedChunks(t, parse, r, inSteps(reply, step))
	out.done, out.used = f.done, f.used
	err := f.err
	if c := cap(r.parse.scratch); c > scratchLimit {
		t.Fatalf("scratch buffer of %d bytes, limit %d", c, scratchLimit)
	}
	if c := cap(r.decoded); c > r.maxValue {
		t.Fatalf("decompression buffer of %d bytes, MaxValueLength %d", c, r.maxValue)
	}
	out.failed = err != nil && err != errDiscardConn
	if out.failed {
		out.used = 0 // how far a refused stream was read does not matter: it is discarded
	}
	out.opErr = fmt.Sprint(r.err)
	out.dst, out.text, out.cas, out.flags, out.number = string(r.dst), r.text, r.resCAS, r.resFlags, r.number
	return out, err
}

// fuzzKeys are the keys of the parser targets' requests: "a", or for a
// multi-get "a" and "a2", as in the client targets (fuzzOps).
var fuzzKeys = []string{"a", "a2"}

// textFuzzRequest is the request each fuzz op byte stands for: the op
// byte is an opcode (opGet = 0, ..., see request.go).
//
// opGetBatch is left out: the Ultra lane builds it from queued gets (with
// members to deliver to), never from an op byte, and the reference model
// here has no members; TestCombinedGets (ultra_test.go) tests its parsing.
func textFuzzRequest(op uint8) *request {
	o := opcode(op % uint8(opFence+1))
	if o == opGetBatch {
		o = opGetMulti
	}
	return &request{op: o, key: "a", keys: fuzzKeys, maxValue: fuzzMaxValue}
}

// FuzzTextReply feeds arbitrary bytes to the text parser as the reply to
// each kind of request. It must never panic, use bytes it was not given,
// or buffer more than one value; feeding the bytes in small chunks must
// give the same outcome as feeding them at once; and whatever it delivers
// must be what the reference framer reads in the same bytes.
func FuzzTextReply(f *testing.F) {
	f.Add(uint8(opGet), uint8(3), []byte("VALUE a 0 5\r\nhello\r\nEND\r\n"))
	f.Add(uint8(opGets), uint8(1), []byte("VALUE a 3 2 77\r\nhi\r\nEND\r\n"))
	f.Add(uint8(opGetMulti), uint8(5), []byte("VALUE a2 0 1\r\nB\r\nVALUE a 8 4\r\n\x00\x00\x00\x00\r\nEND\r\n"))
	f.Add(uint8(opIncr), uint8(2), []byte("18446744073709551615\r\n"))
	f.Add(uint8(opStats), uint8(7), []byte("STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n"))
	f.Add(uint8(opGet), uint8(4), []byte("VALUE a 0 4294967295\r\n"))
	// Two values that span reads: the second reuses the first one's scratch.
	f.Add(uint8(opGetMulti), uint8(31), []byte("VALUE a 0 1000\r\n"+strings.Repeat("a", 1000)+"\r\nVALUE a2 0 3000\r\n"+strings.Repeat("b", 3000)+"\r\nEND\r\n"))
	f.Fuzz(func(t *testing.T, op, chunk uint8, reply []byte) {
		const scratchLimit = fuzzMaxValue + 2 // one value and its CRLF
		r := textFuzzRequest(op)
		whole, err := feedReply(t, parseTextReply, r, reply, len(reply)+1, scratchLimit)
		split, _ := feedReply(t, parseTextReply, textFuzzRequest(op), reply, int(chunk%32)+1, scratchLimit)
		if fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Fatalf("outcome depends on how the bytes arrive:\nwhole %+v\nsplit %+v", whole, split)
		}
		if whole.failed && !errors.Is(err, ErrProtocol) {
			t.Fatalf("a refused stream must be ErrProtocol: %v", err)
		}
		checkTextOutcome(t, r, whole, reply)
	})
}

// checkTextOutcome compares what the parser delivered with the reference
// framing of reply.
func checkTextOutcome(t *testing.T, r *request, out parseOutcome, reply []byte) {
	t.Helper()
	ok := out.done && !out.failed && r.err == nil
	switch {
	case r.op.isRetrieval():
		rep, repOK := refTextRetrieval(reply)
		res := retrievalResult{op: r.op, key: r.key, keys: r.keys, value: []byte(out.dst), cas: out.cas, calls: out.calls,
			ok: ok, miss: out.done && !out.failed && r.err == ErrCacheMiss}
		if err := checkRetrieval(res, rep, repOK, r.maxValue); err != nil {
			t.Fatalf("%v\nreply %q", err, reply)
		}
		if ok && r.op != opGetMulti && out.flags != rep.items[0].flags {
			t.Fatalf("flags %d, reference %d", out.flags, rep.items[0].flags)
		}
	case (r.op == opIncr || r.op == opDecr) && ok:
		rep, repOK := refTextArith(reply)
		if !repOK || rep.line == "NOT_FOUND" || refIsErrorLine(rep.line) || rep.number != out.number {
			t.Fatalf("incr/decr read %d; reference %+v, %v", out.number, rep, repOK)
		}
	case r.op == opVersion && ok:
		line, _, lineOK := refTextLine(reply)
		if !lineOK || line != "VERSION "+out.text {
			t.Fatalf("version %q; reference line %q", out.text, line)
		}
	}
}

// retrievalResult is what a client returned for one get, gets, gat or
// multi-get.
type retrievalResult struct {
	op    opcode
	key   string
	keys  []string
	value []byte
	cas   uint64
	calls []textCall
	ok    bool // succeeded: value (or calls) delivered, no error
	miss  bool // failed with ErrCacheMiss alone
}

// checkRetrieval checks a retrieval's result against the reference
// framing of its reply: a value delivered is exactly the (decompressed)
// bytes the reply framed for that key, a miss is a reply with no values,
// and multi-get callbacks are the reply's values in order.
func checkRetrieval(res retrievalResult, rep refReply, repOK bool, maxValue int) error {
	if res.op == opGetMulti {
		var good []refItem
		for _, it := range rep.items {
			if _, ok := refValue(it, maxValue); ok && len(it.data) <= maxValue {
				good = append(good, it)
			}
		}
		if len(res.calls) > len(good) {
			return fmt.Errorf("%d callbacks; the reference frames %d values: %+v", len(res.calls), len(good), res.calls)
		}
		for j, c := range res.calls {
			v, _ := refValue(good[j], maxValue)
			if res.keys[c.index] != good[j].key || c.value != string(v) {
				return fmt.Errorf("callback %d: key %q value %q; reference key %q value %q", j, res.keys[c.index], c.value, good[j].key, v)
			}
		}
		if res.ok && (!repOK || rep.line != "END" && rep.line != "" || len(res.calls) != len(rep.items) || len(rep.items) > len(res.keys)) {
			return fmt.Errorf("multi-get succeeded with %d values; reference %+v, %v", len(res.calls), rep, repOK)
		}
		return nil
	}
	switch {
	case res.miss:
		if !repOK || len(rep.items) != 0 || rep.line != "END" && rep.status != binStatusKeyNotFound {
			return fmt.Errorf("a miss; the reference reads %+v, %v", rep, repOK)
		}
	case res.ok:
		if !repOK || len(rep.items) != 1 || rep.line != "END" && rep.line != "" {
			return fmt.Errorf("value %q; the reference reads %+v, %v", res.value, rep, repOK)
		}
		it := rep.items[0]
		v, vOK := refValue(it, maxValue)
		switch {
		case it.key != res.key:
			return fmt.Errorf("value for %q delivered as the value of %q", it.key, res.key)
		case !vOK || !bytes.Equal(v, res.value):
			return fmt.Errorf("value %q; the reference frames %q (decodes %v)", res.value, v, vOK)
		case res.op == opGets && (!it.hasCAS || it.cas != res.cas):
			return fmt.Errorf("cas %d; the reference frames %d (%v)", res.cas, it.cas, it.hasCAS)
		}
	}
	return nil
}

// FuzzTextRoundTrip: what the encoders write, a reader gets back. A
// storage request encodes key, flags, exptime, value and cas so that the
// command line and data block split back into exactly them, and a VALUE
// reply built from (key, flags, value, cas) parses back to the same,
// compressed or not, however the bytes arrive.
func FuzzTextRoundTrip(f *testing.F) {
	f.Add("key", uint32(0), uint64(1), int64(0), []byte("hello"), uint8(1))
	f.Add("k", uint32(8), uint64(0), int64(-1), bytes.Repeat([]byte("abc"), 100), uint8(7))
	f.Add("\x80\xff", uint32(1<<31), uint64(1<<63), int64(2592001), []byte("\r\nEND\r\n"), uint8(0))
	f.Fuzz(func(t *testing.T, key string, flags uint32, cas uint64, exp int64, value []byte, chunk uint8) {
		if !validKey(key, DefaultMaxKeyLength) {
			return
		}
		for _, op := range []opcode{opSet, opCAS} {
			r := &request{op: op, key: key, flags: flags, exptime: exp, value: value, cas: cas}
			if err := checkStorageLine(appendTextRequest(nil, r), r); err != nil {
				t.Fatal(err)
			}
		}
		checkValueReply(t, key, flags&^FlagCompressed, cas, value, value, int(chunk))
		if packed, ok := appendCompressed(nil, value); ok {
			checkValueReply(t, key, flags|FlagCompressed, cas, packed, value, int(chunk))
		}
	})
}

// checkStorageLine splits an encoded storage command the way memcached
// does and compares it with r.
func checkStorageLine(b []byte, r *request) error {
	line, rest, ok := bytes.Cut(b, []byte("\r\n"))
	if !ok {
		return fmt.Errorf("no command line in %q", b)
	}
	exp := r.exptime
	if exp < 0 { // "already expired" goes out as a time long past (twemproxy refuses -1)
		exp = int64(binExpiredLongAgo)
	}
	want := []string{strings.TrimSpace(storageVerb[r.op]), r.key, strconv.FormatUint(uint64(r.flags), 10),
		strconv.FormatInt(exp, 10), strconv.Itoa(len(r.value))}
	if r.op == opCAS {
		want = append(want, strconv.FormatUint(r.cas, 10))
	}
	if got := strings.Split(string(line), " "); fmt.Sprint(got) != fmt.Sprint(want) || len(got) != len(want) {
		return fmt.Errorf("command line %q, want fields %q", line, want)
	}
	if string(rest) != string(r.value)+"\r\n" {
		return fmt.Errorf("data block %q, want %q and CRLF", rest, r.value)
	}
	return nil
}

// checkValueReply builds a gets reply for key carrying data, parses it in
// chunks and expects value, flags and cas back; or, for data over the
// fuzz MaxValueLength, ErrValueTooLarge.
func checkValueReply(t *testing.T, key string, flags uint32, cas uint64, data, value []byte, chunk int) {
	t.Helper()
	reply := fmt.Appendf(nil, "VALUE %s %d %d %d\r\n%s\r\nEND\r\n", key, flags, len(data), cas, data)
	r := &request{op: opGets, key: key, maxValue: fuzzMaxValue}
	out, err := feedReply(t, parseTextReply, r, reply, chunk%64+1, fuzzMaxValue+2)
	switch {
	case len(data) > fuzzMaxValue || len(value) > fuzzMaxValue:
		if !errors.Is(err, ErrValueTooLarge) && !errors.Is(r.err, ErrValueTooLarge) {
			t.Fatalf("%d-byte value over MaxValueLength: err %v, outcome %v", len(data), err, r.err)
		}
	case err != nil || r.err != nil || !out.done || out.used != len(reply):
		t.Fatalf("reply %q: err %v, outcome %v, %+v", reply, err, r.err, out)
	case out.dst != string(value) || out.flags != flags || out.cas != cas:
		t.Fatalf("round trip: value %q flags %d cas %d; want %q %d %d", out.dst, out.flags, out.cas, value, flags, cas)
	}
}
