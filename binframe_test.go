package ermc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Byte-level tests of the binary codec: no server, no sockets.

// binFrame is one decoded frame, for assertions.
type binFrame struct {
	h                  binHeader
	extras, key, value string
}

// splitBinFrames decodes a stream of frames, failing the test on a frame
// whose lengths do not add up.
func splitBinFrames(t *testing.T, b []byte) []binFrame {
	t.Helper()
	var out []binFrame
	for len(b) > 0 {
		require.GreaterOrEqual(t, len(b), binHeaderLen, "bytes left, less than a header")
		h := decodeBinHeader(b)
		size := binHeaderLen + int(h.bodyLen)
		require.True(t, len(b) >= size && int(h.extLen)+int(h.keyLen) <= int(h.bodyLen),
			"frame lengths do not add up: %+v with %d bytes", h, len(b))
		body := b[binHeaderLen:size]
		out = append(out, binFrame{
			h:      h,
			extras: string(body[:h.extLen]),
			key:    string(body[h.extLen : int(h.extLen)+int(h.keyLen)]),
			value:  string(body[int(h.extLen)+int(h.keyLen):]),
		})
		b = b[size:]
	}
	return out
}

// binResp builds one response frame.
func binResp(opcode uint8, status uint16, opaque uint32, cas uint64, extras, key, value string) []byte {
	b := appendBinHeader(nil, binHeader{
		magic:   binMagicResponse,
		opcode:  opcode,
		keyLen:  uint16(len(key)),
		extLen:  uint8(len(extras)),
		status:  status,
		bodyLen: uint32(len(extras) + len(key) + len(value)),
		opaque:  opaque,
		cas:     cas,
	})
	return append(append(append(b, extras...), key...), value...)
}

// be32 and be64 are big-endian extras fields as strings.
func be32(v uint32) string { return string(binary.BigEndian.AppendUint32(nil, v)) }
func be64(v uint64) string { return string(binary.BigEndian.AppendUint64(nil, v)) }

// join concatenates frames into one reply stream.
func join(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// chunkSizes covers one byte at a time, splits inside and at the edges of
// the header, and the whole reply at once.
var chunkSizes = []int{1, 2, 7, 23, 24, 25, 31, 1 << 20}

func TestBinaryHeaderRoundTrip(t *testing.T) {
	h := binHeader{
		magic: 0x81, opcode: 0x1d, keyLen: 0x0102, extLen: 0x04, dataType: 0x00,
		status: 0x0304, bodyLen: 0x05060708, opaque: 0x090a0b0c, cas: 0x0d0e0f1011121314,
	}
	b := appendBinHeader([]byte("prefix"), h)
	want := []byte("prefix\x81\x1d\x01\x02\x04\x00\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14")
	require.Equal(t, want, b, "encoded")
	require.Equal(t, h, decodeBinHeader(b[len("prefix"):]), "decoded")
}

// The examples of the spec (draft-stone-memcache-binary-01), byte for byte.
func TestBinarySpecExamples(t *testing.T) {
	// 4.2.1: get request for "Hello".
	get := appendBinRequestHeader(nil, binGet, 0, 5, 0, 0, 0)
	get = append(get, "Hello"...)
	wantGet := "\x80\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x05" + strings.Repeat("\x00", 12) + "Hello"
	assert.Equal(t, []byte(wantGet), get, "get request")
	// 4.3.1: add "Hello" = "World", flags 0xdeadbeef, expiry two hours.
	add := appendBinaryRequest(nil, &request{op: opAdd, key: "Hello", value: []byte("World"), flags: 0xdeadbeef, exptime: 7200})
	wantAdd := "\x80\x02\x00\x05\x08\x00\x00\x00\x00\x00\x00\x12" + be32(binOpaque) + strings.Repeat("\x00", 8) +
		"\xde\xad\xbe\xef\x00\x00\x1c\x20HelloWorld"
	assert.Equal(t, []byte(wantAdd), add, "add request")
	// 4.2.1: getk response, flags 0xdeadbeef, CAS 1.
	resp := []byte("\x81\x00\x00\x05\x04\x00\x00\x00\x00\x00\x00\x0e\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\xde\xad\xbe\xefHelloWorld")
	h := decodeBinHeader(resp)
	want := binHeader{magic: 0x81, opcode: binGet, keyLen: 5, extLen: 4, bodyLen: 14, cas: 1}
	assert.Equal(t, want, h, "decoded")
	assert.NoError(t, checkBinResponse(h, resp, 5), "valid response refused")
}

func TestBinaryExptime(t *testing.T) {
	for _, c := range []struct {
		in   int64
		want uint32
	}{
		{0, 0},
		{1, 1},
		{2592000, 2592000},
		{-1, 2592001}, // absolute and long past: expired at once
		{-1 << 40, 2592001},
		{math.MaxUint32, math.MaxUint32},
		{math.MaxUint32 + 1, math.MaxUint32},
	} {
		assert.Equal(t, c.want, binExptime(c.in), "binExptime(%d)", c.in)
	}
}

func TestBinaryRequestEncoding(t *testing.T) {
	type want struct {
		opcode             uint8
		opaque             uint32
		cas                uint64
		extras, key, value string
	}
	exp := be32(300)
	for _, c := range []struct {
		name string
		r    request
		want []want
	}{
		{"get", request{op: opGet, key: "k1"}, []want{{binGet, binOpaque, 0, "", "k1", ""}}},
		{"gets", request{op: opGets, key: "k1"}, []want{{binGet, binOpaque, 0, "", "k1", ""}}},
		{"gat", request{op: opGat, key: "k1", exptime: 300}, []want{{binGAT, binOpaque, 0, exp, "k1", ""}}},
		{"set", request{op: opSet, key: "k1", value: []byte("v1"), flags: 8, exptime: 300},
			[]want{{binSet, binOpaque, 0, be32(8) + exp, "k1", "v1"}}},
		{"set expired", request{op: opSet, key: "k1", value: []byte("v1"), exptime: -1},
			[]want{{binSet, binOpaque, 0, be32(0) + be32(2592001), "k1", "v1"}}},
		{"add", request{op: opAdd, key: "k1", value: []byte("v1"), flags: 2},
			[]want{{binAdd, binOpaque, 0, be32(2) + be32(0), "k1", "v1"}}},
		{"replace", request{op: opReplace, key: "k1", value: []byte("v1")},
			[]want{{binReplace, binOpaque, 0, be32(0) + be32(0), "k1", "v1"}}},
		{"cas", request{op: opCAS, key: "k1", value: []byte("v1"), cas: 0x1122334455667788, exptime: 300},
			[]want{{binSet, binOpaque, 0x1122334455667788, be32(0) + exp, "k1", "v1"}}},
		{"cas with id 0", request{op: opCAS, key: "k1", value: []byte("v1")},
			[]want{{binSet, binOpaque, math.MaxUint64, be32(0) + be32(0), "k1", "v1"}}},
		{"set ignores cas", request{op: opSet, key: "k1", value: []byte("v1"), cas: 5},
			[]want{{binSet, binOpaque, 0, be32(0) + be32(0), "k1", "v1"}}},
		{"append", request{op: opAppend, key: "k1", value: []byte("v1")}, []want{{binAppend, binOpaque, 0, "", "k1", "v1"}}},
		{"prepend", request{op: opPrepend, key: "k1", value: []byte("v1")}, []want{{binPrepend, binOpaque, 0, "", "k1", "v1"}}},
		{"empty value", request{op: opSet, key: "k1"}, []want{{binSet, binOpaque, 0, be32(0) + be32(0), "k1", ""}}},
		{"incr", request{op: opIncr, key: "n", delta: 7},
			[]want{{binIncr, binOpaque, 0, be64(7) + be64(0) + be32(0xffffffff), "n", ""}}},
		{"decr", request{op: opDecr, key: "n", delta: math.MaxUint64},
			[]want{{binDecr, binOpaque, 0, be64(math.MaxUint64) + be64(0) + be32(0xffffffff), "n", ""}}},
		{"delete", request{op: opDelete, key: "k1"}, []want{{binDelete, binOpaque, 0, "", "k1", ""}}},
		{"touch", request{op: opTouch, key: "k1", exptime: 300}, []want{{binTouch, binOpaque, 0, exp, "k1", ""}}},
		{"flush", request{op: opFlushAll}, []want{{binFlush, binOpaque, 0, "", "", ""}}},
		{"stats", request{op: opStats}, []want{{binStat, binOpaque, 0, "", "", ""}}},
		{"version", request{op: opVersion}, []want{{binVersion, binOpaque, 0, "", "", ""}}},
		{"auth", request{op: opAuth, user: "alice", pass: "s3cret"},
			[]want{{binSASLAuth, binOpaque, 0, "", "PLAIN", "\x00alice\x00s3cret"}}},
		{"multi-get", request{op: opGetMulti, keys: []string{"a", "bb", "a"}}, []want{
			{binGetKQ, 0, 0, "", "a", ""},
			{binGetKQ, 1, 0, "", "bb", ""},
			{binGetKQ, 2, 0, "", "a", ""},
			{binNoop, 3, 0, "", "", ""},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := appendBinaryRequest([]byte("keep"), &c.r)
			require.Equal(t, "keep", string(b[:4]), "dst prefix overwritten")
			frames := splitBinFrames(t, b[4:])
			require.Len(t, frames, len(c.want), "frames")
			for i, f := range frames {
				w := c.want[i]
				assert.Equal(t, uint8(binMagicRequest), f.h.magic, "frame %d: magic", i)
				assert.Zero(t, f.h.dataType, "frame %d: data type", i)
				assert.Zero(t, f.h.status, "frame %d: reserved", i)
				assert.Equal(t, w, want{f.h.opcode, f.h.opaque, f.h.cas, f.extras, f.key, f.value}, "frame %d", i)
			}
		})
	}
}

// newBinReq makes a request as Client.do would hand it to the codec.
func newBinReq(op opcode) *request {
	return &request{op: op, key: "k1", maxValue: DefaultMaxValueLength}
}

func TestBinaryReplySuccess(t *testing.T) {
	compressed, ok := appendCompressed(nil, bytes.Repeat([]byte("abcd"), 100))
	require.True(t, ok, "test value did not compress")
	type multiHit struct {
		i int
		v string
	}
	for _, c := range []struct {
		name  string
		setup func(r *request) // optional
		op    opcode
		reply []byte
		check func(t *testing.T, r *request)
	}{
		{name: "get hit", op: opGet,
			setup: func(r *request) { r.dst = []byte("prefix:") },
			reply: binResp(binGet, 0, binOpaque, 9, be32(5), "", "hello"),
			check: func(t *testing.T, r *request) {
				assert.Equal(t, "prefix:hello", string(r.dst), "dst")
				assert.True(t, r.found, "found")
				assert.Equal(t, uint32(5), r.resFlags, "flags")
				assert.Equal(t, uint64(9), r.resCAS, "cas")
			}},
		{name: "get hit with key", op: opGet,
			reply: binResp(binGet, 0, binOpaque, 1, be32(0), "k1", "v"),
			check: func(t *testing.T, r *request) {
				assert.Equal(t, "v", string(r.dst), "dst")
			}},
		{name: "get empty value", op: opGet,
			reply: binResp(binGet, 0, binOpaque, 1, be32(3), "", ""),
			check: func(t *testing.T, r *request) {
				assert.Empty(t, r.dst, "dst")
				assert.True(t, r.found, "found")
				assert.Equal(t, uint32(3), r.resFlags, "flags")
			}},
		{name: "gets", op: opGets,
			reply: binResp(binGet, 0, binOpaque, 0xfedcba9876543210, be32(0), "", "v"),
			check: func(t *testing.T, r *request) {
				assert.Equal(t, uint64(0xfedcba9876543210), r.resCAS, "cas")
			}},
		{name: "gat", op: opGat,
			reply: binResp(binGAT, 0, binOpaque, 4, be32(1), "", "obj"),
			check: func(t *testing.T, r *request) {
				assert.Equal(t, "obj", string(r.dst), "dst")
				assert.Equal(t, uint32(1), r.resFlags, "flags")
				assert.Equal(t, uint64(4), r.resCAS, "cas")
			}},
		{name: "get compressed", op: opGet,
			reply: binResp(binGet, 0, binOpaque, 1, be32(FlagCompressed), "", string(compressed)),
			check: func(t *testing.T, r *request) {
				assert.Equal(t, strings.Repeat("abcd", 100), string(r.dst), "dst")
			}},
		{name: "incr", op: opIncr,
			reply: binResp(binIncr, 0, binOpaque, 3, "", "", be64(math.MaxUint64)),
			check: func(t *testing.T, r *request) {
				assert.Equal(t, uint64(math.MaxUint64), r.number, "number")
			}},
		{name: "decr", op: opDecr,
			reply: binResp(binDecr, 0, binOpaque, 3, "", "", be64(0)),
			check: func(t *testing.T, r *request) {
				assert.Zero(t, r.number, "number")
			}},
		{name: "set", op: opSet, reply: binResp(binSet, 0, binOpaque, 12, "", "", "")},
		{name: "cas", op: opCAS, reply: binResp(binSet, 0, binOpaque, 13, "", "", "")},
		{name: "add", op: opAdd, reply: binResp(binAdd, 0, binOpaque, 12, "", "", "")},
		{name: "replace", op: opReplace, reply: binResp(binReplace, 0, binOpaque, 12, "", "", "")},
		{name: "append", op: opAppend, reply: binResp(binAppend, 0, binOpaque, 12, "", "", "")},
		{name: "prepend", op: opPrepend, reply: binResp(binPrepend, 0, binOpaque, 12, "", "", "")},
		{name: "delete", op: opDelete, reply: binResp(binDelete, 0, binOpaque, 0, "", "", "")},
		// memcached 1.6 answers TOUCH with the item's flags as extras,
		// which the spec does not describe.
		{name: "touch", op: opTouch, reply: binResp(binTouch, 0, binOpaque, 5, be32(7), "", "")},
		{name: "flush", op: opFlushAll, reply: binResp(binFlush, 0, binOpaque, 0, "", "", "")},
		{name: "auth", op: opAuth, reply: binResp(binSASLAuth, 0, binOpaque, 0, "", "", "Authenticated")},
		{name: "version", op: opVersion,
			reply: binResp(binVersion, 0, binOpaque, 0, "", "", "1.6.18"),
			check: func(t *testing.T, r *request) {
				assert.Equal(t, "1.6.18", r.text, "text")
			}},
		{name: "stats", op: opStats,
			reply: join(
				binResp(binStat, 0, binOpaque, 0, "", "pid", "3078"),
				binResp(binStat, 0, binOpaque, 0, "", "version", "1.6.18"),
				binResp(binStat, 0, binOpaque, 0, "", "empty", ""),
				binResp(binStat, 0, binOpaque, 0, "", "", ""),
			),
			check: func(t *testing.T, r *request) {
				want := map[string]string{"pid": "3078", "version": "1.6.18", "empty": ""}
				assert.Equal(t, fmt.Sprint(want), fmt.Sprint(r.stats), "stats")
			}},
	} {
		for _, chunk := range chunkSizes {
			t.Run(fmt.Sprintf("%s/chunk%d", c.name, chunk), func(t *testing.T) {
				r := newBinReq(c.op)
				if c.setup != nil {
					c.setup(r)
				}
				require.NoError(t, feedWhole(t, parseBinaryReply, r, c.reply, chunk), "parse")
				require.NoError(t, r.err, "outcome")
				if c.check != nil {
					c.check(t, r)
				}
			})
		}
	}

	// Multi-get: hits arrive in any order, misses are absent, duplicate
	// keys are answered per index, and the NOOP ends the reply.
	keys := []string{"a", "miss", "a", "c"}
	reply := join(
		binResp(binGetKQ, 0, 0, 1, be32(0), "a", "A"),
		binResp(binGetKQ, 0, 3, 2, be32(FlagCompressed), "c", string(compressed)),
		binResp(binGetKQ, 0, 2, 1, be32(0), "a", "A"),
		binResp(binNoop, 0, 4, 0, "", "", ""),
	)
	for _, chunk := range chunkSizes {
		t.Run(fmt.Sprintf("multi-get/chunk%d", chunk), func(t *testing.T) {
			r := newBinReq(opGetMulti)
			var got []multiHit
			r.keys = keys
			r.onValue = func(i int, v []byte) { got = append(got, multiHit{i, string(v)}) }
			require.NoError(t, feedWhole(t, parseBinaryReply, r, reply, chunk), "parse")
			require.NoError(t, r.err, "outcome")
			want := []multiHit{{0, "A"}, {3, strings.Repeat("abcd", 100)}, {2, "A"}}
			assert.Equal(t, fmt.Sprint(want), fmt.Sprint(got), "hits")
		})
	}
}

func TestBinaryReplyErrors(t *testing.T) {
	long := strings.Repeat("m", 1000)
	for _, c := range []struct {
		name    string
		op      opcode
		status  uint16
		msg     string
		is      error  // sentinel errors.Is must match
		status2 uint16 // when non-zero, a *StatusError with this status must be reachable
		discard bool   // the connection must be dropped
	}{
		{name: "get miss", op: opGet, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "gets miss", op: opGets, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "gat miss", op: opGat, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "add existing", op: opAdd, status: 0x02, msg: "Data exists for key.", is: ErrNotStored},
		{name: "replace missing", op: opReplace, status: 0x01, msg: "Not found", is: ErrNotStored},
		{name: "append missing", op: opAppend, status: 0x05, msg: "Not stored.", is: ErrNotStored},
		{name: "prepend missing", op: opPrepend, status: 0x05, msg: "Not stored.", is: ErrNotStored},
		{name: "cas mismatch", op: opCAS, status: 0x02, msg: "Data exists for key.", is: ErrCASConflict},
		{name: "cas missing", op: opCAS, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "delete missing", op: opDelete, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "touch missing", op: opTouch, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "incr missing", op: opIncr, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "decr missing", op: opDecr, status: 0x01, msg: "Not found", is: ErrCacheMiss},
		{name: "incr non-numeric", op: opIncr, status: 0x06, msg: "Non-numeric server-side value for incr or decr",
			is: ErrNonNumeric, status2: 0x06},
		{name: "set too large", op: opSet, status: 0x03, msg: "Too large.", is: ErrValueTooLarge, status2: 0x03},
		{name: "invalid arguments", op: opGet, status: 0x04, msg: "Invalid arguments", status2: 0x04, discard: true},
		{name: "not my vbucket", op: opSet, status: 0x07, msg: "x", status2: 0x07},
		{name: "0x08", op: opSet, status: 0x08, msg: "x", status2: 0x08},
		{name: "0x09", op: opSet, status: 0x09, msg: "x", status2: 0x09},
		{name: "auth error on get", op: opGet, status: 0x20, msg: "Auth failure.", is: ErrAuth, status2: 0x20, discard: true},
		{name: "auth continue on get", op: opGet, status: 0x21, msg: "x", status2: 0x21},
		{name: "unknown command", op: opTouch, status: 0x81, msg: "Unknown command", status2: 0x81},
		{name: "out of memory", op: opSet, status: 0x82, msg: "Out of memory allocating item", status2: 0x82},
		{name: "not supported", op: opSet, status: 0x83, msg: "x", status2: 0x83},
		{name: "internal", op: opSet, status: 0x84, msg: "x", status2: 0x84},
		{name: "busy", op: opSet, status: 0x85, msg: "x", status2: 0x85},
		{name: "temporary failure", op: opSet, status: 0x86, msg: "x", status2: 0x86},
		{name: "unknown status", op: opDelete, status: 0x1234, msg: long, status2: 0x1234},
		{name: "miss on version", op: opVersion, status: 0x01, msg: "Not found", status2: 0x01},
		{name: "miss on flush", op: opFlushAll, status: 0x01, msg: "Not found", status2: 0x01},
		{name: "auth refused", op: opAuth, status: 0x20, msg: "Auth failure.", is: ErrAuth, status2: 0x20},
		{name: "auth unsupported", op: opAuth, status: 0x81, msg: "Unknown command", is: ErrAuth, status2: 0x81},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newBinReq(c.op)
			r.dst = []byte("untouched")
			reply := binResp(binOpcodes[c.op], c.status, binOpaque, 0, "", "", c.msg)
			n, done, err := parseBinaryReply(r, reply)
			require.Equal(t, len(reply), n, "bytes used (err %v)", err)
			require.True(t, done, "done (err %v)", err)
			if c.discard {
				require.Equal(t, errDiscardConn, err, "err")
			} else {
				require.NoError(t, err, "a well-formed error frame must keep the connection")
			}
			require.Error(t, r.err, "no outcome recorded")
			if c.is != nil {
				assert.ErrorIs(t, r.err, c.is, "outcome")
			}
			var se *StatusError
			if c.status2 != 0 {
				require.ErrorAs(t, r.err, &se, "outcome")
				require.Equal(t, c.status2, se.Status, "status")
				assert.LessOrEqual(t, len(se.Message), maxMessageInError, "message length")
				assert.Contains(t, se.Message, c.msg[:min(len(c.msg), 20)], "message does not carry the server's")
			} else {
				assert.False(t, errors.As(r.err, &se), "outcome %v is a StatusError, want the plain sentinel %v", r.err, c.is)
			}
			assert.Equal(t, "untouched", string(r.dst), "error body treated as a value: dst")
			assert.False(t, r.found, "error body treated as a value: found")
		})
	}
	t.Run("auth unsupported message", func(t *testing.T) {
		r := newBinReq(opAuth)
		_, _, _ = parseBinaryReply(r, binResp(binSASLAuth, 0x81, binOpaque, 0, "", "", "Unknown command"))
		assert.ErrorContains(t, r.err, "does not support SASL", "outcome")
	})
}

func TestBinaryMultiGetErrors(t *testing.T) {
	keys := []string{"a", "b"}
	multi := func() *request {
		r := newBinReq(opGetMulti)
		r.keys = keys
		r.onValue = func(int, []byte) {}
		return r
	}
	t.Run("error frame then noop", func(t *testing.T) {
		r := multi()
		reply := join(
			binResp(binGetKQ, 0x82, 1, 0, "", "", "Out of memory"),
			binResp(binGetKQ, 0x01, 0, 0, "", "", "Not found"), // a miss, even if not quiet, is no error
			binResp(binNoop, 0, 2, 0, "", "", ""),
		)
		require.NoError(t, feedWhole(t, parseBinaryReply, r, reply, 5), "parse")
		var se *StatusError
		if assert.ErrorAs(t, r.err, &se, "outcome") {
			assert.Equal(t, uint16(0x82), se.Status, "status")
		}
	})
	t.Run("auth error ends the reply", func(t *testing.T) {
		// memcached -S closes the connection after refusing the first
		// GETKQ: no NOOP follows.
		r := multi()
		reply := binResp(binGetKQ, 0x20, 0, 0, "", "", "Auth failure.")
		n, done, err := parseBinaryReply(r, reply)
		require.Equal(t, len(reply), n, "bytes used")
		require.True(t, done, "done")
		require.Equal(t, errDiscardConn, err, "err")
		var se *StatusError
		if assert.ErrorAs(t, r.err, &se, "outcome") {
			assert.Equal(t, uint16(0x20), se.Status, "status")
		}
	})
	t.Run("error on noop", func(t *testing.T) {
		r := multi()
		require.NoError(t, feedWhole(t, parseBinaryReply, r, binResp(binNoop, 0x84, 2, 0, "", "", "boom"), 100), "parse")
		var se *StatusError
		if assert.ErrorAs(t, r.err, &se, "outcome") {
			assert.Equal(t, uint16(0x84), se.Status, "status")
		}
	})
}

func TestBinaryReplyMalformed(t *testing.T) {
	ok := binResp(binGet, 0, binOpaque, 1, be32(0), "", "v")
	patch := func(b []byte, off int, v ...byte) []byte {
		b = append([]byte(nil), b...)
		copy(b[off:], v)
		return b
	}
	multiKeys := []string{"a", "b"}
	for _, c := range []struct {
		name     string
		op       opcode
		reply    []byte
		atHeader bool // refused from the header alone, before any body byte is used
	}{
		{"request magic", opGet, patch(ok, 0, 0x80), true},
		{"zero magic", opGet, patch(ok, 0, 0x00), true},
		{"text reply", opGet, []byte("SERVER_ERROR out of memory storing object\r\n"), true},
		{"data type", opGet, patch(ok, 5, 0x01), true},
		{"other opcode", opGet, patch(ok, 1, binSet), true},
		{"getk for get", opGet, patch(ok, 1, binGetK), true},
		{"other opaque", opGet, patch(ok, 12, 0, 0, 0, 0), true},
		{"extras past body", opGet, patch(ok, 4, 6), true},
		{"key past body", opGet, patch(ok, 2, 0, 2), true},
		{"extras and key past body", opGet, patch(ok, 2, 0, 4, 4), true},
		{"value over limit", opGet, patch(binResp(binGet, 0, binOpaque, 1, be32(0), "", ""), 8, 0x7f, 0xff, 0xff, 0xff), true},
		{"message over limit", opDelete, binResp(binDelete, 1, binOpaque, 0, "", "", strings.Repeat("x", DefaultMaxValueLength+1)), true},
		{"get without flags", opGet, binResp(binGet, 0, binOpaque, 1, "", "", "v"), false},
		{"get with 8 bytes of extras", opGet, binResp(binGet, 0, binOpaque, 1, be64(0), "", "v"), false},
		{"get for another key", opGet, binResp(binGet, 0, binOpaque, 1, be32(0), "k2", "v"), false},
		{"incr not 64 bits", opIncr, binResp(binIncr, 0, binOpaque, 1, "", "", be32(1)), false},
		{"multi: opaque past keys", opGetMulti, binResp(binGetKQ, 0, 3, 1, be32(0), "a", "v"), true},
		{"multi: getkq with noop's opaque", opGetMulti, binResp(binGetKQ, 0, 2, 1, be32(0), "a", "v"), true},
		{"multi: noop with getkq's opaque", opGetMulti, binResp(binNoop, 0, 1, 0, "", "", ""), true},
		{"multi: get opcode", opGetMulti, binResp(binGet, 0, 0, 1, be32(0), "a", "v"), true},
		{"multi: key of another index", opGetMulti, binResp(binGetKQ, 0, 0, 1, be32(0), "b", "v"), false},
		{"multi: no key", opGetMulti, binResp(binGetKQ, 0, 0, 1, be32(0), "", "v"), false},
		{"stats: other opcode", opStats, binResp(binVersion, 0, binOpaque, 0, "", "", "1.6"), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newBinReq(c.op)
			r.keys = multiKeys
			r.onValue = func(int, []byte) { assert.Fail(t, "value delivered from a malformed frame") }
			n, _, err := parseBinaryReply(r, c.reply)
			require.ErrorIs(t, err, ErrProtocol, "err")
			if c.atHeader {
				assert.Zero(t, n, "bytes used before refusing the header")
				assert.Zero(t, cap(r.parse.scratch), "bytes buffered before refusing the header")
			}
			assert.False(t, r.found, "value delivered from a malformed frame")
			assert.Empty(t, r.dst, "value delivered from a malformed frame")
		})
	}
}

// A header that announces a huge body is refused on its own, before the
// parser waits for or buffers any of the body.
func TestBinaryHugeBodyRefusedBeforeBuffering(t *testing.T) {
	hdr := appendBinHeader(nil, binHeader{magic: binMagicResponse, opcode: binGet, extLen: 4,
		bodyLen: math.MaxUint32, opaque: binOpaque})
	r := newBinReq(opGet)
	n, done, err := parseBinaryReply(r, hdr)
	require.ErrorIs(t, err, ErrProtocol, "header refused")
	require.Zero(t, n, "header refused: bytes used")
	require.False(t, done, "header refused: done")
	assert.Zero(t, cap(r.parse.scratch), "scratch grew")
	// A value exactly at MaxValueLength is fine.
	r = newBinReq(opGet)
	r.maxValue = 10
	assert.NoError(t, feedWhole(t, parseBinaryReply, r, binResp(binGet, 0, binOpaque, 1, be32(0), "", "0123456789"), 4), "value at the limit")
	assert.Equal(t, "0123456789", string(r.dst), "value at the limit")
	r = newBinReq(opGet)
	r.maxValue = 9
	assert.ErrorIs(t, feedWhole(t, parseBinaryReply, r, binResp(binGet, 0, binOpaque, 1, be32(0), "", "0123456789"), 4), ErrProtocol, "value over the limit: err")
	// Replies without a user value get a floor, so that the auth reply
	// (whose request carries no MaxValueLength) still fits.
	r = &request{op: opAuth}
	assert.NoError(t, feedWhole(t, parseBinaryReply, r, binResp(binSASLAuth, 0, binOpaque, 0, "", "", "Authenticated"), 4), "auth reply with no MaxValueLength")
	assert.NoError(t, r.err, "auth reply with no MaxValueLength: outcome")
}

// A frame whole in the buffer is used in place; one that spans reads is
// gathered in the request's scratch buffer, never beyond its own size.
func TestBinaryFrameBuffering(t *testing.T) {
	value := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB
	reply := binResp(binGet, 0, binOpaque, 1, be32(0), "", string(value))

	r := newBinReq(opGet)
	require.NoError(t, feedWhole(t, parseBinaryReply, r, reply, len(reply)), "whole frame")
	require.True(t, bytes.Equal(r.dst, value), "whole frame: value intact")
	assert.Zero(t, cap(r.parse.scratch), "a whole frame was copied to scratch")

	r = newBinReq(opGet)
	require.NoError(t, feedWhole(t, parseBinaryReply, r, reply, 16<<10), "split frame")
	require.True(t, bytes.Equal(r.dst, value), "split frame: value intact")
	c := cap(r.parse.scratch)
	assert.True(t, c >= len(reply) && c <= 2*len(reply), "scratch capacity %d for a %d-byte frame", c, len(reply))
}
