package ermc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// Fuzz targets of the binary protocol codec.

// binScratchLimit is the most a binary reply may make the parser buffer:
// one frame, whose value is within limit and whose extras and key are as
// long as a response's can be.
func binScratchLimit(maxValue int) int {
	return binHeaderLen + 255 + maxReplyKey + max(maxValue, binMinReplyLimit)
}

// binFuzzRequest is the request each op byte of FuzzBinaryReply stands
// for: an opcode, as in textFuzzRequest, up to opAuth.
func binFuzzRequest(op uint8) *request {
	o := opcode(op % uint8(opAuth+1))
	if o == opGetBatch { // Ultra-only: see textFuzzRequest
		o = opGetMulti
	}
	return &request{op: o, key: "a", keys: fuzzKeys, maxValue: 1 << 16}
}

// FuzzBinaryReply feeds arbitrary bytes to the parser as the reply to each
// kind of request: it must never panic, use bytes it was not given, or
// buffer more than one frame; feeding the same bytes in small chunks must
// give the same outcome as feeding them at once; and a value it delivers
// must be what the reference framer reads in the same bytes.
func FuzzBinaryReply(f *testing.F) {
	f.Add(uint8(opGet), uint8(3), binResp(binGet, 0, binOpaque, 1, be32(5), "", "hello"))
	f.Add(uint8(opGet), uint8(1), binResp(binGet, 1, binOpaque, 0, "", "", "Not found"))
	f.Add(uint8(opGetMulti), uint8(5), join(
		binResp(binGetKQ, 0, 1, 1, be32(0), "a2", "B"),
		binResp(binNoop, 0, 2, 0, "", "", "")))
	f.Add(uint8(opStats), uint8(7), join(
		binResp(binStat, 0, binOpaque, 0, "", "pid", "1"),
		binResp(binStat, 0, binOpaque, 0, "", "", "")))
	f.Add(uint8(opIncr), uint8(2), binResp(binIncr, 0, binOpaque, 0, "", "", be64(7)))
	f.Add(uint8(opAuth), uint8(9), binResp(binSASLAuth, 0x20, binOpaque, 0, "", "", "Auth failure."))
	f.Add(uint8(opGet), uint8(4), []byte("ERROR Too many open connections\r\n"))
	f.Fuzz(func(t *testing.T, op, chunk uint8, reply []byte) {
		limit := binScratchLimit(1 << 16)
		r := binFuzzRequest(op)
		whole, err := feedReply(t, parseBinaryReply, r, reply, len(reply)+1, limit)
		split, _ := feedReply(t, parseBinaryReply, binFuzzRequest(op), reply, int(chunk%32)+1, limit)
		if fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Fatalf("outcome depends on how the bytes arrive:\nwhole %+v\nsplit %+v", whole, split)
		}
		if whole.failed && !errors.Is(err, ErrProtocol) {
			t.Fatalf("a refused stream must be ErrProtocol: %v", err)
		}
		checkBinaryOutcome(t, r, whole, reply)
	})
}

// checkBinaryOutcome compares what the parser delivered with the
// reference framing of reply.
func checkBinaryOutcome(t *testing.T, r *request, out parseOutcome, reply []byte) {
	t.Helper()
	ok := out.done && !out.failed && r.err == nil
	var rep refReply
	var repOK bool
	switch r.op {
	case opGet, opGets:
		rep, repOK = refBinGet(reply, binGet, binOpaque, r.key)
	case opGat:
		rep, repOK = refBinGet(reply, binGAT, binOpaque, r.key)
	case opGetMulti:
		rep, repOK = refBinMulti(reply, r.keys)
	case opIncr, opDecr:
		fr, frOK := refBinNext(reply)
		if ok && (!frOK || fr.status != 0 || len(fr.value) != 8 || binary.BigEndian.Uint64(fr.value) != out.number) {
			t.Fatalf("incr/decr read %d; reference frame %+v, %v", out.number, fr, frOK)
		}
		return
	default:
		return
	}
	res := retrievalResult{op: r.op, key: r.key, keys: r.keys, value: []byte(out.dst), cas: out.cas, calls: out.calls,
		ok: ok, miss: out.done && !out.failed && r.err == ErrCacheMiss}
	if err := checkRetrieval(res, rep, repOK, r.maxValue); err != nil {
		t.Fatalf("%v\nreply %q", err, reply)
	}
	if ok && r.op != opGetMulti && (out.flags != rep.items[0].flags || out.cas != rep.items[0].cas) {
		t.Fatalf("flags %d cas %d; reference %+v", out.flags, out.cas, rep.items[0])
	}
}

// FuzzBinaryRoundTrip: what the encoders write, a reader gets back. The
// 24-byte header decodes to what was encoded and re-encodes to the same
// bytes; a storage request carries key, flags, exptime, value and cas at
// the offsets the spec gives; and a GET response built from (key, flags,
// value, cas) parses back to the same however the bytes arrive.
func FuzzBinaryRoundTrip(f *testing.F) {
	f.Add("key", uint32(0), uint64(1), int64(0), []byte("hello"), uint8(1), true)
	f.Add("k", uint32(8), uint64(0), int64(-1), bytes.Repeat([]byte("abc"), 100), uint8(7), false)
	f.Add("\x80\xff", uint32(1<<31), uint64(1<<63), int64(1<<40), []byte("\x81\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x09\x65\x72\x6d\x63\x00\x00\x00\x00\x00\x00\x00\x01"), uint8(0), true)
	f.Fuzz(func(t *testing.T, key string, flags uint32, cas uint64, exp int64, value []byte, chunk uint8, withKey bool) {
		if len(value) >= binHeaderLen {
			h := decodeBinHeader(value)
			if b := appendBinHeader(nil, h); !bytes.Equal(b, value[:binHeaderLen]) || decodeBinHeader(b) != h {
				t.Fatalf("header %x decodes to %+v, re-encodes to %x", value[:binHeaderLen], h, b)
			}
		}
		if !validKey(key, DefaultMaxKeyLength) {
			return
		}
		for _, op := range []opcode{opSet, opCAS} {
			r := &request{op: op, key: key, flags: flags, exptime: exp, value: value, cas: cas}
			if err := checkBinStorage(appendBinaryRequest(nil, r), r); err != nil {
				t.Fatal(err)
			}
		}
		respKey := ""
		if withKey {
			respKey = key
		}
		checkBinValueReply(t, key, respKey, flags&^FlagCompressed, cas, value, value, int(chunk))
		if packed, ok := appendCompressed(nil, value); ok {
			checkBinValueReply(t, key, respKey, flags|FlagCompressed, cas, packed, value, int(chunk))
		}
	})
}

// checkBinStorage reads a SET request frame field by field, by the spec's
// offsets, and compares it with r.
func checkBinStorage(b []byte, r *request) error {
	wantCAS := uint64(0)
	if r.op == opCAS {
		wantCAS = binCAS(r)
	}
	body := b[24:]
	switch {
	case b[0] != 0x80 || b[1] != 0x01:
		return fmt.Errorf("magic %#x opcode %#x", b[0], b[1])
	case int(binary.BigEndian.Uint16(b[2:])) != len(r.key) || b[4] != 8:
		return fmt.Errorf("key length %d, extras length %d", binary.BigEndian.Uint16(b[2:]), b[4])
	case int(binary.BigEndian.Uint32(b[8:])) != len(body) || len(body) != 8+len(r.key)+len(r.value):
		return fmt.Errorf("body length %d for %d body bytes", binary.BigEndian.Uint32(b[8:]), len(body))
	case binary.BigEndian.Uint64(b[16:]) != wantCAS:
		return fmt.Errorf("cas %d, want %d", binary.BigEndian.Uint64(b[16:]), wantCAS)
	case binary.BigEndian.Uint32(body) != r.flags || binary.BigEndian.Uint32(body[4:]) != binExptime(r.exptime):
		return fmt.Errorf("extras %x for flags %d exptime %d", body[:8], r.flags, r.exptime)
	case string(body[8:8+len(r.key)]) != r.key || !bytes.Equal(body[8+len(r.key):], r.value):
		return fmt.Errorf("key and value %q", body[8:])
	}
	return nil
}

// checkBinValueReply builds a GET response (by hand, not with the codec)
// carrying data, parses it in chunks and expects value, flags and cas
// back; or, for data over the fuzz MaxValueLength, ErrValueTooLarge.
func checkBinValueReply(t *testing.T, key, respKey string, flags uint32, cas uint64, data, value []byte, chunk int) {
	t.Helper()
	reply := []byte{0x81, 0x00, 0, 0, 4, 0, 0, 0}
	binary.BigEndian.PutUint16(reply[2:], uint16(len(respKey)))
	reply = binary.BigEndian.AppendUint32(reply, uint32(4+len(respKey)+len(data)))
	reply = binary.BigEndian.AppendUint32(reply, binOpaque)
	reply = binary.BigEndian.AppendUint64(reply, cas)
	reply = binary.BigEndian.AppendUint32(reply, flags)
	reply = append(append(reply, respKey...), data...)
	r := &request{op: opGets, key: key, maxValue: fuzzMaxValue}
	out, err := feedReply(t, parseBinaryReply, r, reply, chunk%64+1, binScratchLimit(fuzzMaxValue))
	switch {
	case len(data) > fuzzMaxValue || len(value) > fuzzMaxValue:
		if !errors.Is(err, ErrValueTooLarge) && !errors.Is(r.err, ErrValueTooLarge) {
			t.Fatalf("%d-byte value over MaxValueLength: err %v, outcome %v", len(data), err, r.err)
		}
	case err != nil || r.err != nil || !out.done || out.used != len(reply):
		t.Fatalf("reply %x: err %v, outcome %v, %+v", reply, err, r.err, out)
	case out.dst != string(value) || out.flags != flags || out.cas != cas:
		t.Fatalf("round trip: value %q flags %d cas %d; want %q %d %d", out.dst, out.flags, out.cas, value, flags, cas)
	}
}
