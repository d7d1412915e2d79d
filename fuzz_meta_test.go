package ermc

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
)

// Fuzz target of the meta protocol codec. Seeds: testdata/fuzz/FuzzMetaReply,
// including replies captured from memcached 1.6.18 by TestCaptureMetaSeeds
// (fuzz_meta_seeds_test.go).

// metaFuzzOpaque is the opaque token of the target's requests: a
// multi-get's second key wraps around to token 0.
const metaFuzzOpaque = math.MaxUint32

// metaFuzzRequest is the request each fuzz op byte stands for, as in
// textFuzzRequest (opGetBatch, built by a lane from queued gets, is
// modelled by the multi-get).
func metaFuzzRequest(op uint8) *request {
	r := textFuzzRequest(op)
	r.opaque = metaFuzzOpaque
	return r
}

// FuzzMetaReply feeds arbitrary bytes to the meta parser as the reply to
// each kind of request. It must never panic, use bytes it was not given,
// or buffer more than one value; feeding the bytes in small chunks must
// give the same outcome as feeding them at once; whatever it delivers
// must be what the reference framer below reads in the same bytes for
// that request's opaque token; and a reply a healthy memcached could send
// must be read without error.
func FuzzMetaReply(f *testing.F) {
	f.Add(uint8(opGet), uint8(3), []byte("VA 5 f0 O4294967295\r\nhello\r\n"))
	f.Add(uint8(opGets), uint8(1), []byte("VA 2 O4294967295 c77 f3\r\nhi\r\n"))
	f.Add(uint8(opGet), uint8(2), []byte("EN O4294967295\r\n"))
	f.Add(uint8(opGetMulti), uint8(5), []byte("VA 1 f0 O4294967295\r\nA\r\nVA 4 f8 O0\r\n\x00\x00\x00\x00\r\nMN\r\n"))
	f.Add(uint8(opIncr), uint8(2), []byte("VA 20 O4294967295\r\n18446744073709551615\r\n"))
	f.Add(uint8(opFence), uint8(4), []byte("NS O4294967295\r\nSERVER_ERROR out of memory\r\nMN\r\n"))
	f.Add(uint8(opGet), uint8(4), []byte("VA 4294967295 f0 O4294967295\r\n"))
	f.Add(uint8(opGetMulti), uint8(31), []byte("VA 1000 f0 O4294967295\r\n"+strings.Repeat("a", 1000)+"\r\nVA 3000 f0 O0\r\n"+strings.Repeat("b", 3000)+"\r\nMN\r\n"))
	f.Fuzz(func(t *testing.T, op, chunk uint8, reply []byte) {
		const scratchLimit = fuzzMaxValue + 2 // one value and its CRLF
		r := metaFuzzRequest(op)
		whole, err := feedReply(t, parseMetaReply, r, reply, len(reply)+1, scratchLimit)
		split, _ := feedReply(t, parseMetaReply, metaFuzzRequest(op), reply, int(chunk%32)+1, scratchLimit)
		if fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Fatalf("outcome depends on how the bytes arrive:\nwhole %+v\nsplit %+v", whole, split)
		}
		if whole.failed && !errors.Is(err, ErrProtocol) {
			t.Fatalf("a refused stream must be ErrProtocol: %v", err)
		}
		if err := checkMetaOutcome(r, whole, reply); err != nil {
			t.Fatalf("%v\nop %d reply %q", err, r.op, reply)
		}
	})
}

// checkMetaOutcome compares what the parser made of reply with the
// reference framing.
func checkMetaOutcome(r *request, out parseOutcome, reply []byte) error {
	ok := out.done && !out.failed && r.err == nil
	miss := out.done && !out.failed && r.err == ErrCacheMiss
	want := strconv.FormatUint(uint64(r.opaque), 10)
	switch r.op {
	case opGet, opGets, opGat:
		rep, repOK := refMetaSingle(reply, uint64(r.maxValue))
		if canonical := refCanonicalMetaSingle(rep, repOK, r.op == opGets, want, r.maxValue); canonical && !ok && !miss {
			return fmt.Errorf("a reply memcached could send was not read: %+v, outcome %v", out, r.err)
		}
		switch {
		case miss:
			if !repOK || rep.code != "EN" || rep.flags["O"] != want {
				return fmt.Errorf("a miss; the reference reads %+v, %v", rep, repOK)
			}
		case ok:
			if !repOK || rep.code != "VA" || rep.flags["O"] != want || !rep.hasFlags || r.op == opGets && !rep.item.hasCAS {
				return fmt.Errorf("value %q; the reference reads %+v, %v", out.dst, rep, repOK)
			}
			v, vOK := refValue(rep.item, r.maxValue)
			switch {
			case !vOK || string(v) != out.dst:
				return fmt.Errorf("value %q; the reference frames %q (decodes %v)", out.dst, v, vOK)
			case out.flags != rep.item.flags:
				return fmt.Errorf("flags %d; the reference frames %d", out.flags, rep.item.flags)
			case rep.item.hasCAS && out.cas != rep.item.cas:
				return fmt.Errorf("cas %d; the reference frames %d", out.cas, rep.item.cas)
			}
		}
	case opGetMulti:
		rep, repOK := refMetaMulti(reply, r.opaque, len(r.keys))
		if refCanonicalMetaMulti(rep, repOK, r.maxValue) && !ok {
			return fmt.Errorf("a multi-get reply memcached could send was not read: %+v, outcome %v", out, r.err)
		}
		var good []refMetaValue
		for _, it := range rep.values {
			if _, vOK := refValue(it.item, r.maxValue); vOK && len(it.item.data) <= r.maxValue {
				good = append(good, it)
			}
		}
		if len(out.calls) > len(good) {
			return fmt.Errorf("%d callbacks; the reference frames %d values", len(out.calls), len(good))
		}
		for j, c := range out.calls {
			v, _ := refValue(good[j].item, r.maxValue)
			if c.index != good[j].index || c.value != string(v) {
				return fmt.Errorf("callback %d: index %d value %q; reference index %d value %q", j, c.index, c.value, good[j].index, v)
			}
		}
		if ok && (!repOK || rep.end != "MN" || len(out.calls) != len(rep.values)) {
			return fmt.Errorf("multi-get succeeded with %d values; reference %+v, %v", len(out.calls), rep, repOK)
		}
	case opIncr, opDecr:
		rep, repOK := refMetaSingle(reply, maxMetaNumber)
		if ok {
			n, err := strconv.ParseUint(string(rep.item.data), 10, 64)
			if !repOK || rep.code != "VA" || rep.flags["O"] != want || err != nil || n != out.number {
				return fmt.Errorf("incr/decr read %d; the reference reads %+v, %v", out.number, rep, repOK)
			}
		}
	case opSet, opAdd, opReplace, opAppend, opPrepend, opCAS, opDelete, opTouch:
		rep, repOK := refMetaSingle(reply, 0)
		if ok && (!repOK || rep.code != "HD" || rep.flags["O"] != want) {
			return fmt.Errorf("success; the reference reads %+v, %v", rep, repOK)
		}
	case opFence:
		if out.done && !out.failed && !refMetaFenced(reply) {
			return fmt.Errorf("fence passed; the reference finds no MN after reply lines only")
		}
	}
	return nil
}

// The reference framer of the meta protocol: like fuzz_ref_test.go's, a
// tiny independent reading that shares no code with the parser.

// refMetaLine is a meta reply line: its code, a VA's size, and its
// returned flags by letter.
type refMetaLine struct {
	code     string
	size     uint64
	flags    map[string]string
	tokens   []string
	hasFlags bool // f came back
	item     refItem
}

// refMetaParseLine reads "<code>[ <size>][ <flag>]*".
func refMetaParseLine(line string) (l refMetaLine, ok bool) {
	f := strings.Split(line, " ")
	l.code, l.flags = f[0], map[string]string{}
	f = f[1:]
	if l.code == "VA" {
		if len(f) == 0 {
			return l, false
		}
		var err error
		if l.size, err = strconv.ParseUint(f[0], 10, 32); err != nil {
			return l, false
		}
		f = f[1:]
	}
	for _, tok := range f {
		if tok == "" {
			return l, false
		}
		l.flags[tok[:1]] = tok[1:]
	}
	l.tokens = f
	fl, hasF := l.flags["f"]
	l.hasFlags = hasF
	flags, err := strconv.ParseUint(fl, 10, 32)
	l.item.flags = uint32(flags)
	if hasF && err != nil {
		return l, false
	}
	if c, hasC := l.flags["c"]; hasC {
		l.item.hasCAS = true
		if l.item.cas, err = strconv.ParseUint(c, 10, 64); err != nil {
			return l, false
		}
	}
	return l, true
}

// refMetaLineAt returns the CRLF-ended line at the start of b.
func refMetaLineAt(b []byte) (line string, size int, ok bool) {
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 || bytes.IndexByte(b[:i], '\n') >= 0 {
		return "", 0, false
	}
	return string(b[:i]), i + 2, true
}

// refMetaBlock frames the data block of a VA line at the start of b.
func refMetaBlock(b []byte, size uint64) (data []byte, ok bool) {
	if uint64(len(b)) < size+2 || string(b[size:size+2]) != "\r\n" {
		return nil, false
	}
	return b[:size], true
}

// refMetaSingle frames the reply to a single-key command: one line, and
// for VA its block (not looked for above blockMax: the client refuses it).
func refMetaSingle(b []byte, blockMax uint64) (l refMetaLine, ok bool) {
	line, n, ok := refMetaLineAt(b)
	if !ok {
		return l, false
	}
	if l, ok = refMetaParseLine(line); !ok || l.code != "VA" {
		return l, ok
	}
	if l.size > blockMax {
		return l, false
	}
	l.item.data, ok = refMetaBlock(b[n:], l.size)
	return l, ok
}

// refCanonicalMetaSingle reports whether a single get's reply is one a
// healthy memcached sends: "EN O<token>", or "VA <n>" with exactly f, O
// (and c for gets) in canonical decimal, any order, no compressed flag,
// and a value within maxValue.
func refCanonicalMetaSingle(l refMetaLine, ok, gets bool, opaque string, maxValue int) bool {
	if !ok {
		return false
	}
	if l.code == "EN" {
		return len(l.tokens) == 1 && l.tokens[0] == "O"+opaque
	}
	want := 2
	if gets {
		want = 3
	}
	return l.code == "VA" && len(l.tokens) == want && l.flags["O"] == opaque && refCanonicalValueFlags(l, gets) &&
		l.size <= uint64(maxValue) && len(l.tokens) <= 3
}

// refCanonicalValueFlags: f (and c when asked) present, canonical, not
// compressed, and no letter twice.
func refCanonicalValueFlags(l refMetaLine, gets bool) bool {
	if len(l.flags) != len(l.tokens) || !l.hasFlags || l.item.flags&8 != 0 {
		return false
	}
	if strconv.FormatUint(uint64(l.item.flags), 10) != l.flags["f"] {
		return false
	}
	if gets {
		c, has := l.flags["c"]
		return has && strconv.FormatUint(l.item.cas, 10) == c
	}
	return true
}

// refMetaValue is one value of a multi-get reply and the index of its key.
type refMetaValue struct {
	index int
	item  refItem
	line  refMetaLine
}

// refMetaMultiReply is a multi-get reply as the reference reads it.
type refMetaMultiReply struct {
	values []refMetaValue
	end    string // MN, or the error line that ended it
}

// refMetaMulti frames quiet mg values (key i's token is opaque+i, mod
// 2^32) closed by MN, or cut by an error line.
func refMetaMulti(b []byte, opaque uint32, nkeys int) (rep refMetaMultiReply, ok bool) {
	for {
		line, n, ok := refMetaLineAt(b)
		if !ok {
			return rep, false
		}
		b = b[n:]
		if line == "MN" || refIsErrorLine(line) {
			rep.end = line
			return rep, true
		}
		l, ok := refMetaParseLine(line)
		if !ok || l.code != "VA" {
			return rep, false
		}
		o, err := strconv.ParseUint(l.flags["O"], 10, 32)
		if err != nil {
			return rep, false
		}
		idx := uint64(uint32(o) - opaque)
		if idx >= uint64(nkeys) {
			return rep, false
		}
		data, ok := refMetaBlock(b, l.size)
		if !ok {
			return rep, false
		}
		b = b[l.size+2:]
		l.item.data = data
		rep.values = append(rep.values, refMetaValue{index: int(idx), item: l.item, line: l})
	}
}

// refCanonicalMetaMulti reports whether a multi-get reply is one a healthy
// memcached sends: canonical values in increasing key order, then MN.
func refCanonicalMetaMulti(rep refMetaMultiReply, ok bool, maxValue int) bool {
	if !ok || rep.end != "MN" {
		return false
	}
	last := -1
	for _, v := range rep.values {
		l := v.line
		if v.index <= last || len(l.tokens) != 2 || !refCanonicalValueFlags(l, false) || l.size > uint64(maxValue) ||
			strconv.FormatUint(uint64(metaFuzzOpaque+uint32(v.index)), 10) != l.flags["O"] {
			return false
		}
		last = v.index
	}
	return true
}

// refMetaFenced reports whether b starts with reply lines that are no
// value (codes, error lines) ended by MN.
func refMetaFenced(b []byte) bool {
	for {
		line, n, ok := refMetaLineAt(b)
		if !ok {
			return false
		}
		b = b[n:]
		if line == "MN" {
			return true
		}
		if refIsErrorLine(line) {
			continue
		}
		if l, ok := refMetaParseLine(line); !ok || l.code == "VA" {
			return false
		}
	}
}
