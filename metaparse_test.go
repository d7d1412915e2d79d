package ermc

import (
	"encoding/base64"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Byte-level tests of the meta protocol codec: exact request bytes, every
// reply shape, opaque checks, and resumability at every split point.

func TestAppendMetaRequest(t *testing.T) {
	spaced := strings.Repeat(" ", maxBase64Key)
	cases := []struct {
		name string
		r    request
		want string
	}{
		{"get", request{op: opGet, key: "foo", opaque: 7}, "mg foo v f O7\r\n"},
		{"gets", request{op: opGets, key: "foo", opaque: 7}, "mg foo v f c O7\r\n"},
		{"gat", request{op: opGat, key: "foo", exptime: 100, opaque: 7}, "mg foo v f T100 O7\r\n"},
		{"gat expired", request{op: opGat, key: "foo", exptime: -1, opaque: 7}, "mg foo v f T-1 O7\r\n"},
		{"touch", request{op: opTouch, key: "foo", exptime: 60, opaque: 7}, "mg foo T60 O7\r\n"},
		{"touch no expiry", request{op: opTouch, key: "foo", opaque: 7}, "mg foo T0 O7\r\n"},
		{"touch noreply", request{op: opTouch, key: "foo", exptime: 60, opaque: 7, noreply: true}, "mg foo T60 q O7\r\n"},
		{"opaque 0", request{op: opGet, key: "foo"}, "mg foo v f O0\r\n"},
		{"opaque max", request{op: opGet, key: "foo", opaque: math.MaxUint32}, "mg foo v f O4294967295\r\n"},
		{"get multi", request{op: opGetMulti, keys: []string{"a", "bb", "a"}, opaque: 7},
			"mg a v f q O7\r\nmg bb v f q O8\r\nmg a v f q O9\r\nmn\r\n"},
		{"get multi opaque wraps", request{op: opGetMulti, keys: []string{"a", "b", "c"}, opaque: math.MaxUint32},
			"mg a v f q O4294967295\r\nmg b v f q O0\r\nmg c v f q O1\r\nmn\r\n"},
		{"get multi base64 key", request{op: opGetMulti, keys: []string{"a", "a b"}, opaque: 1},
			"mg a v f q O1\r\nmg YSBi b v f q O2\r\nmn\r\n"},
		{"get batch", request{op: opGetBatch, members: []*request{{key: "x"}, {key: "y"}}, opaque: 3},
			"mg x v f q O3\r\nmg y v f q O4\r\nmn\r\n"},
		{"set", request{op: opSet, key: "foo", value: []byte("bar"), flags: 5, exptime: 100, opaque: 7}, "ms foo 3 F5 T100 O7\r\nbar\r\n"},
		{"set flags and TTL 0", request{op: opSet, key: "k", opaque: 7}, "ms k 0 O7\r\n\r\n"},
		{"set max flags, expired", request{op: opSet, key: "k", value: []byte("v"), flags: math.MaxUint32, exptime: -1, opaque: 7},
			"ms k 1 F4294967295 T-1 O7\r\nv\r\n"},
		{"set absolute exptime", request{op: opSet, key: "k", value: []byte("v"), exptime: 1900000000, opaque: 7}, "ms k 1 T1900000000 O7\r\nv\r\n"},
		{"set value holding protocol text", request{op: opSet, key: "k", value: []byte("a\r\nMN\r\n\x00"), opaque: 7}, "ms k 8 O7\r\na\r\nMN\r\n\x00\r\n"},
		{"set noreply", request{op: opSet, key: "foo", value: []byte("bar"), noreply: true, opaque: 7}, "ms foo 3 q O7\r\nbar\r\n"},
		{"add", request{op: opAdd, key: "foo", value: []byte("bar"), exptime: 9, opaque: 7}, "ms foo 3 T9 ME O7\r\nbar\r\n"},
		{"add noreply", request{op: opAdd, key: "foo", value: []byte("bar"), noreply: true, opaque: 7}, "ms foo 3 ME q O7\r\nbar\r\n"},
		{"replace", request{op: opReplace, key: "foo", value: []byte("bar"), flags: 2, opaque: 7}, "ms foo 3 F2 MR O7\r\nbar\r\n"},
		{"append ignores flags and TTL", request{op: opAppend, key: "foo", value: []byte("xy"), flags: 8, exptime: 5, opaque: 7}, "ms foo 2 MA O7\r\nxy\r\n"},
		{"prepend", request{op: opPrepend, key: "foo", value: []byte("xy"), opaque: 7}, "ms foo 2 MP O7\r\nxy\r\n"},
		{"prepend noreply", request{op: opPrepend, key: "foo", value: []byte("xy"), noreply: true, opaque: 7}, "ms foo 2 MP q O7\r\nxy\r\n"},
		{"cas", request{op: opCAS, key: "foo", value: []byte("bar"), flags: 8, exptime: 60, cas: 12345, opaque: 7}, "ms foo 3 F8 T60 C12345 O7\r\nbar\r\n"},
		{"cas max id", request{op: opCAS, key: "foo", value: []byte("bar"), cas: math.MaxUint64, opaque: 7}, "ms foo 3 C18446744073709551615 O7\r\nbar\r\n"},
		{"cas noreply", request{op: opCAS, key: "foo", value: []byte("bar"), cas: 1, noreply: true, opaque: 7}, "ms foo 3 C1 q O7\r\nbar\r\n"},
		{"cas invalidate", request{op: opCAS, key: "foo", value: []byte("bar"), cas: 1, opaque: 7, meta: metaFields{invalidate: true}}, "ms foo 3 C1 I O7\r\nbar\r\n"},
		{"set base64 key", request{op: opSet, key: "a b", value: []byte("v"), flags: 1, opaque: 7}, "ms YSBi 1 b F1 O7\r\nv\r\n"},
		{"incr", request{op: opIncr, key: "n", delta: 7, opaque: 7}, "ma n v D7 O7\r\n"},
		{"incr max delta", request{op: opIncr, key: "n", delta: math.MaxUint64, opaque: 7}, "ma n v D18446744073709551615 O7\r\n"},
		{"incr noreply", request{op: opIncr, key: "n", delta: 7, noreply: true, opaque: 7}, "ma n D7 q O7\r\n"},
		{"decr", request{op: opDecr, key: "n", opaque: 7}, "ma n v MD D0 O7\r\n"},
		{"decr noreply", request{op: opDecr, key: "n", delta: 3, noreply: true, opaque: 7}, "ma n MD D3 q O7\r\n"},
		{"delete", request{op: opDelete, key: "foo", opaque: 7}, "md foo O7\r\n"},
		{"delete noreply", request{op: opDelete, key: "foo", noreply: true, opaque: 7}, "md foo q O7\r\n"},
		{"delete base64 key", request{op: opDelete, key: "\x00", opaque: 7}, "md AA== b O7\r\n"},
		{"invalidate", request{op: opDelete, key: "foo", exptime: 30, opaque: 7, meta: metaFields{invalidate: true}}, "md foo I T30 O7\r\n"},
		{"invalidate keeping the TTL", request{op: opDelete, key: "foo", opaque: 7, meta: metaFields{invalidate: true}}, "md foo I O7\r\n"},
		{"delete if the CAS id matches", request{op: opDelete, key: "foo", cas: 42, opaque: 7}, "md foo C42 O7\r\n"},
		{"invalidate if the CAS id matches", request{op: opDelete, key: "foo", cas: math.MaxUint64, opaque: 7, meta: metaFields{invalidate: true}}, "md foo I C18446744073709551615 O7\r\n"},
		{"get with stampede flags", request{op: opGets, key: "k", opaque: 7, meta: metaFields{vivify: 10, recache: 30, wantTTL: true}}, "mg k v f c N10 R30 t O7\r\n"},
		{"fence", request{op: opFence, opaque: 7}, "mn\r\n"},
		{"flush_all", request{op: opFlushAll, opaque: 7}, "flush_all\r\n"},
		{"stats", request{op: opStats, opaque: 7}, "stats\r\n"},
		{"version", request{op: opVersion, opaque: 7}, "version\r\n"},
		{"auth", request{op: opAuth, user: "user", pass: "secret", opaque: 7}, "set _ 0 -1 11\r\nuser secret\r\n"},
		{"key of 250 bytes", request{op: opGet, key: strings.Repeat("k", 250), opaque: 1}, "mg " + strings.Repeat("k", 250) + " v f O1\r\n"},
		{"key of 186 spaces", request{op: opGet, key: spaced, opaque: 1}, "mg " + strings.Repeat("ICAg", 62) + " b v f O1\r\n"},
		{"key of control bytes and DEL", request{op: opGet, key: "\t\r\n\x7f", opaque: 1}, "mg CQ0Kfw== b v f O1\r\n"},
		{"UTF-8 key as it is", request{op: opGet, key: "ключ", opaque: 1}, "mg ключ v f O1\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			assert.Equal(t, tc.want, string(appendMetaRequest(nil, &r)))
			prefix := []byte("PREFIX")
			assert.Equal(t, "PREFIX"+tc.want, string(appendMetaRequest(prefix, &r)), "the encoder appends")
		})
	}
}

func TestAppendMetaRequestDoesNotAllocateWithRoom(t *testing.T) {
	for _, r := range []*request{
		{op: opCAS, key: "foo", value: []byte("bar"), flags: 5, exptime: 100, cas: 9, opaque: 77},
		{op: opSet, key: strings.Repeat("a b", 62), value: []byte("bar"), opaque: 77},
		{op: opGetMulti, keys: []string{"a", "b c", strings.Repeat("\x00", 100)}, opaque: 77},
	} {
		buf := make([]byte, 0, 1024)
		allocs := testing.AllocsPerRun(100, func() {
			buf = appendMetaRequest(buf[:0], r)
		})
		assert.Zero(t, allocs, "op %d", r.op)
	}
}

func TestMetaKeyBase64IsTheKeysBytes(t *testing.T) {
	for _, key := range []string{"a b", "\x00", strings.Repeat("\xff ", 93), "tab\there"} {
		got, b64 := appendMetaKey(nil, key)
		require.True(t, b64)
		dec, err := base64.StdEncoding.DecodeString(string(got))
		require.NoError(t, err)
		assert.Equal(t, key, string(dec))
		assert.LessOrEqual(t, len(got), maxMetaKeyToken)
	}
}

func TestValidMetaKey(t *testing.T) {
	cases := []struct {
		key  string
		max  int
		want bool
	}{
		{"", 250, false},
		{"k", 250, true},
		{strings.Repeat("k", 250), 250, true},
		{strings.Repeat("k", 251), 250, false},
		{strings.Repeat("k", 100), 99, false},
		{"a b", 250, true},
		{"\x00", 250, true},
		{"\x7f", 250, true},
		{strings.Repeat(" ", 186), 250, true},
		{strings.Repeat(" ", 187), 250, false},
		{strings.Repeat("k", 186) + "\n", 250, false},
		{strings.Repeat("k", 185) + "\n", 250, true},
		{"a b", 2, false}, // MaxKeyLength counts the key's own bytes
		{strings.Repeat("ключ", 31), 250, true},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, validMetaKey(tc.key, tc.max), "%q (%d bytes), max %d", tc.key, len(tc.key), tc.max)
	}
	// The boundary is memcached's: 186 bytes encode to 248, 187 to 252.
	assert.Equal(t, 248, base64.StdEncoding.EncodedLen(maxBase64Key))
	assert.Greater(t, base64.StdEncoding.EncodedLen(maxBase64Key+1), maxMetaKeyToken)
}

func feedMeta(t testing.TB, r *request, chunks ...[]byte) outcome {
	t.Helper()
	return feedOutcome(t, parseMetaReply, r, chunks...)
}

func newMetaReq(op opcode, key string, opaque uint32) func() *request {
	return func() *request { return &request{op: op, key: key, opaque: opaque, maxValue: 1 << 20} }
}

func newMetaMulti(opaque uint32, keys ...string) func() *request {
	return func() *request { return &request{op: opGetMulti, keys: keys, opaque: opaque, maxValue: 1 << 20} }
}

func TestParseMetaReplyKinds(t *testing.T) {
	type check = outcomeCheck
	ok, outcomeIs, protocol := checkOK, checkOutcomeIs, checkProtocol
	value := func(v string, flags uint32, cas uint64) check {
		return func(t *testing.T, o outcome) {
			t.Helper()
			ok(t, o)
			assert.True(t, o.Found)
			assert.Equal(t, v, o.Dst)
			assert.Equal(t, flags, o.Flags)
			assert.Equal(t, cas, o.CAS)
		}
	}
	number := func(n uint64) check {
		return func(t *testing.T, o outcome) {
			t.Helper()
			ok(t, o)
			assert.Equal(t, n, o.Number)
		}
	}
	discarded := func(target error) check {
		return func(t *testing.T, o outcome) {
			t.Helper()
			assert.True(t, o.Done)
			assert.Equal(t, errDiscardConn, o.err)
			assert.ErrorIs(t, o.rerr, target)
		}
	}
	var se *ServerError
	var ce *ClientError
	errorAs := func(target any, discard bool) check {
		return func(t *testing.T, o outcome) {
			t.Helper()
			assert.True(t, o.Done)
			if discard {
				assert.Equal(t, errDiscardConn, o.err)
			} else {
				assert.NoError(t, o.err, "the stream is in step")
			}
			assert.ErrorAs(t, o.rerr, target)
		}
	}
	get, gets := newMetaReq(opGet, "foo", 7), newMetaReq(opGets, "foo", 7)
	cases := []struct {
		name  string
		req   func() *request
		reply string
		check check
	}{
		// Retrieval: returned flags come back in any order.
		{"get hit", get, "VA 3 f5 O7\r\nbar\r\n", value("bar", 5, 0)},
		{"get hit, flags after the opaque", get, "VA 3 O7 f5\r\nbar\r\n", value("bar", 5, 0)},
		{"get hit empty value", get, "VA 0 f0 O7\r\n\r\n", value("", 0, 0)},
		{"get hit value holding protocol text", get, "VA 9 f0 O7\r\nEN O7\r\nMN\r\n", value("EN O7\r\nMN", 0, 0)},
		{"get hit max flags", get, "VA 1 f4294967287 O7\r\nx\r\n", value("x", math.MaxUint32&^FlagCompressed, 0)},
		{"get hit with flags not asked for", get, "VA 1 f0 O7 s1 h0 l3 kfoo b\r\nx\r\n", value("x", 0, 0)},
		{"get miss", get, "EN O7\r\n", outcomeIs(ErrCacheMiss)},
		{"gets hit", gets, "VA 3 f0 c42 O7\r\nbar\r\n", value("bar", 0, 42)},
		{"gets hit, flags reversed", gets, "VA 3 O7 c18446744073709551615 f1\r\nbar\r\n", value("bar", 1, math.MaxUint64)},
		{"gets miss", gets, "EN O7\r\n", outcomeIs(ErrCacheMiss)},
		{"gat hit", newMetaReq(opGat, "foo", 7), "VA 2 f1 O7\r\nhi\r\n", value("hi", 1, 0)},
		{"gat miss", newMetaReq(opGat, "foo", 7), "EN O7\r\n", outcomeIs(ErrCacheMiss)},
		{"get SERVER_ERROR", get, "SERVER_ERROR out of memory\r\n", errorAs(&se, false)},
		{"get CLIENT_ERROR", get, "CLIENT_ERROR bad command line format\r\n", errorAs(&ce, true)},
		{"get ERROR", get, "ERROR\r\n", errorAs(&se, true)},

		// The opaque token.
		{"get hit, another opaque", get, "VA 3 f5 O8\r\nbar\r\n", protocol},
		{"get hit, no opaque", get, "VA 3 f5\r\nbar\r\n", protocol},
		{"get miss, another opaque", get, "EN O70\r\n", protocol},
		{"get miss, no opaque", get, "EN\r\n", protocol},
		{"get, opaque twice", get, "EN O7 O7\r\n", protocol},
		{"get, opaque not a number", get, "EN Oabc\r\n", protocol},
		{"get, opaque over 32 bits", get, "EN O4294967303\r\n", protocol},
		{"get, opaque with a leading zero", get, "EN O07\r\n", protocol},
		{"stored, another opaque", newMetaReq(opSet, "foo", 7), "HD O6\r\n", protocol},
		{"number, another opaque", newMetaReq(opIncr, "n", 7), "VA 1 O1\r\n5\r\n", protocol},

		// Malformed lines.
		{"get hit without flags", get, "VA 3 O7\r\nbar\r\n", protocol},
		{"gets hit without cas", gets, "VA 3 f0 O7\r\nbar\r\n", protocol},
		{"get hit, flags twice", get, "VA 3 f0 f1 O7\r\nbar\r\n", protocol},
		{"get hit, flags over 32 bits", get, "VA 3 f4294967296 O7\r\nbar\r\n", protocol},
		{"get hit, negative size", get, "VA -3 f0 O7\r\nbar\r\n", protocol},
		{"get hit, no size", get, "VA\r\n", protocol},
		{"get hit, two spaces", get, "VA 3  f0 O7\r\nbar\r\n", protocol},
		{"get miss, trailing space", get, "EN O7 \r\n", protocol},
		{"get, W with an argument", get, "EN O7 W1\r\n", protocol},
		{"get, flag that is not a letter", get, "EN O7 9\r\n", protocol},
		{"get, unknown code", get, "OK O7\r\n", protocol},
		{"get, code glued to a flag", get, "ENO7\r\n", protocol},
		{"get, text reply", get, "END\r\n", protocol},
		{"get HD", get, "HD O7\r\n", protocol},
		{"get MN", get, "MN\r\n", protocol},
		{"get misframed block", get, "VA 3 f0 O7\r\nbarXY\r\n", protocol},

		// Touch: mg without a value.
		{"touch HD", newMetaReq(opTouch, "foo", 7), "HD O7\r\n", ok},
		{"touch EN", newMetaReq(opTouch, "foo", 7), "EN O7\r\n", outcomeIs(ErrCacheMiss)},
		{"touch VA", newMetaReq(opTouch, "foo", 7), "VA 1 f0 O7\r\nx\r\n", protocol},

		// Storage.
		{"set HD", newMetaReq(opSet, "foo", 7), "HD O7\r\n", ok},
		{"set NS", newMetaReq(opSet, "foo", 7), "NS O7\r\n", outcomeIs(ErrNotStored)},
		{"add NS", newMetaReq(opAdd, "foo", 7), "NS O7\r\n", outcomeIs(ErrNotStored)},
		{"replace NS", newMetaReq(opReplace, "foo", 7), "NS O7\r\n", outcomeIs(ErrNotStored)},
		{"append HD", newMetaReq(opAppend, "foo", 7), "HD O7\r\n", ok},
		{"prepend NS", newMetaReq(opPrepend, "foo", 7), "NS O7\r\n", outcomeIs(ErrNotStored)},
		{"cas HD", newMetaReq(opCAS, "foo", 7), "HD O7\r\n", ok},
		{"cas EX", newMetaReq(opCAS, "foo", 7), "EX O7\r\n", outcomeIs(ErrCASConflict)},
		{"cas NF", newMetaReq(opCAS, "foo", 7), "NF O7\r\n", outcomeIs(ErrCacheMiss)},
		{"set EX is not a set reply", newMetaReq(opSet, "foo", 7), "EX O7\r\n", protocol},
		{"set NF is not a set reply", newMetaReq(opSet, "foo", 7), "NF O7\r\n", protocol},
		{"set EN is not a set reply", newMetaReq(opSet, "foo", 7), "EN O7\r\n", protocol},
		{"set VA is not a set reply", newMetaReq(opSet, "foo", 7), "VA 1 f0 O7\r\nx\r\n", protocol},
		{"set text STORED", newMetaReq(opSet, "foo", 7), "STORED\r\n", protocol},
		{"set SERVER_ERROR", newMetaReq(opSet, "foo", 7), "SERVER_ERROR object too large for cache\r\n", errorAs(&se, false)},
		{"set CLIENT_ERROR", newMetaReq(opSet, "foo", 7), "CLIENT_ERROR bad data chunk\r\n", errorAs(&ce, true)},

		// Arithmetic.
		{"incr VA", newMetaReq(opIncr, "n", 7), "VA 2 O7\r\n42\r\n", number(42)},
		{"decr VA zero", newMetaReq(opDecr, "n", 7), "VA 1 O7\r\n0\r\n", number(0)},
		{"incr max", newMetaReq(opIncr, "n", 7), "VA 20 O7\r\n18446744073709551615\r\n", number(math.MaxUint64)},
		{"incr NF", newMetaReq(opIncr, "n", 7), "NF O7\r\n", outcomeIs(ErrCacheMiss)},
		{"decr NF", newMetaReq(opDecr, "n", 7), "NF O7\r\n", outcomeIs(ErrCacheMiss)},
		{"incr non-numeric", newMetaReq(opIncr, "n", 7), "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n", discarded(ErrNonNumeric)},
		{"incr overflowing number", newMetaReq(opIncr, "n", 7), "VA 20 O7\r\n18446744073709551616\r\n", protocol},
		{"incr number too long", newMetaReq(opIncr, "n", 7), "VA 21 O7\r\n000000000000000000001\r\n", protocol},
		{"incr number with space", newMetaReq(opIncr, "n", 7), "VA 3 O7\r\n4 2\r\n", protocol},
		{"incr empty number", newMetaReq(opIncr, "n", 7), "VA 0 O7\r\n\r\n", protocol},
		{"incr number misframed", newMetaReq(opIncr, "n", 7), "VA 1 O7\r\n42\r\n", protocol},
		{"incr HD", newMetaReq(opIncr, "n", 7), "HD O7\r\n", protocol},
		{"incr EN", newMetaReq(opIncr, "n", 7), "EN O7\r\n", protocol},

		// Delete.
		{"delete HD", newMetaReq(opDelete, "foo", 7), "HD O7\r\n", ok},
		{"delete NF", newMetaReq(opDelete, "foo", 7), "NF O7\r\n", outcomeIs(ErrCacheMiss)},
		{"delete EN", newMetaReq(opDelete, "foo", 7), "EN O7\r\n", protocol},
		{"delete NS", newMetaReq(opDelete, "foo", 7), "NS O7\r\n", protocol},
		{"delete EX without a CAS id", newMetaReq(opDelete, "foo", 7), "EX O7\r\n", protocol},
		{"delete with a CAS id EX", func() *request { r := newMetaReq(opDelete, "foo", 7)(); r.cas = 42; return r }, "EX O7\r\n", outcomeIs(ErrCASConflict)},
		{"delete with a CAS id HD", func() *request { r := newMetaReq(opDelete, "foo", 7)(); r.cas = 42; return r }, "HD O7\r\n", ok},

		// Text commands on the same connection.
		{"flush_all OK", newMetaReq(opFlushAll, "", 7), "OK\r\n", ok},
		{"version", newMetaReq(opVersion, "", 7), "VERSION 1.6.18\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, "1.6.18", o.Text)
		}},
		{"stats", newMetaReq(opStats, "", 7), "STAT pid 1\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, map[string]string{"pid": "1"}, o.Stats)
		}},
		{"auth refused", newMetaReq(opAuth, "", 7), "CLIENT_ERROR authentication failure\r\n", discarded(ErrAuth)},
		{"version HD", newMetaReq(opVersion, "", 7), "HD O7\r\n", protocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, feedMeta(t, tc.req(), []byte(tc.reply)))
		})
	}
}

func TestParseMetaReplyConsumesExactlyOneReply(t *testing.T) {
	for _, tc := range []struct {
		req   func() *request
		reply string
	}{
		{newMetaReq(opGet, "foo", 7), "VA 3 f5 O7\r\nbar\r\n"},
		{newMetaReq(opGet, "foo", 7), "EN O7\r\n"},
		{newMetaReq(opIncr, "n", 7), "VA 2 O7\r\n42\r\n"},
		{newMetaReq(opSet, "n", 7), "HD O7\r\n"},
		{newMetaMulti(7, "a", "b"), "VA 1 f0 O8\r\nb\r\nMN\r\n"},
		{newMetaReq(opFence, "", 0), "NS O3\r\nMN\r\n"},
	} {
		next := "HD O8\r\n"
		o := feedMeta(t, tc.req(), []byte(tc.reply+next))
		require.NoError(t, o.err, tc.reply)
		assert.True(t, o.Done, tc.reply)
		assert.Equal(t, len(tc.reply), o.N, "the next reply is left for the next request: %q", tc.reply)
	}
}

func TestParseMetaReplyStampedeFlags(t *testing.T) {
	// Shapes memcached 1.6.18 sends: W, Z and X come after the flags
	// asked for, t may be -1.
	cases := []struct {
		reply                string
		win, winTaken, stale bool
		ttl                  int64
		hasTTL, found        bool
		value                string
		miss                 bool
		op                   opcode
		meta                 metaFields
	}{
		{reply: "VA 0 f0 c28 t-1 O7 W\r\n\r\n", win: true, ttl: -1, hasTTL: true, found: true, op: opGets},
		{reply: "VA 0 f0 c28 t30 O7 Z\r\n\r\n", winTaken: true, ttl: 30, hasTTL: true, found: true, op: opGets},
		{reply: "VA 2 f0 c30 t30 O7 X W\r\nhi\r\n", win: true, stale: true, ttl: 30, hasTTL: true, found: true, value: "hi", op: opGets},
		{reply: "VA 2 f0 c30 t30 O7 Z X\r\nhi\r\n", winTaken: true, stale: true, ttl: 30, hasTTL: true, found: true, value: "hi", op: opGets},
		{reply: "VA 2 f0 O7\r\nhi\r\n", found: true, value: "hi", op: opGet},
		{reply: "EN O7\r\n", miss: true, op: opGet},
		{reply: "HD t100 O7 W\r\n", win: true, ttl: 100, hasTTL: true, op: opTouch},
	}
	for _, tc := range cases {
		r := &request{op: tc.op, key: "k", opaque: 7, maxValue: 100}
		r.meta.win, r.meta.stale = true, true // set beforehand: record replaces every returned flag
		o := feedMeta(t, r, []byte(tc.reply))
		require.NoError(t, o.err, tc.reply)
		require.True(t, o.Done, tc.reply)
		assert.Equal(t, tc.found, o.Found, tc.reply)
		assert.Equal(t, tc.value, o.Dst, tc.reply)
		assert.Equal(t, tc.miss, o.rerr == ErrCacheMiss, tc.reply)
		got := metaFields{win: r.meta.win, winTaken: r.meta.winTaken, stale: r.meta.stale, ttl: r.meta.ttl, hasTTL: r.meta.hasTTL}
		want := metaFields{win: tc.win, winTaken: tc.winTaken, stale: tc.stale, ttl: tc.ttl, hasTTL: tc.hasTTL}
		assert.Equal(t, want, got, tc.reply)
	}
	for _, bad := range []string{"EN O7 W W\r\n", "EN O7 t\r\n", "EN O7 t-2\r\n", "EN O7 t+1\r\n", "EN O7 t9223372036854775808\r\n", "EN O7 Zz\r\n"} {
		o := feedMeta(t, &request{op: opGet, key: "k", opaque: 7, maxValue: 100}, []byte(bad))
		assert.ErrorIs(t, o.err, ErrProtocol, bad)
	}
}

func TestParseMetaReplyMultiGet(t *testing.T) {
	cases := []struct {
		name   string
		opaque uint32
		keys   []string
		reply  string
		hits   []hit
	}{
		{"none", 7, []string{"a", "b"}, "MN\r\n", nil},
		{"all", 7, []string{"a", "b"}, "VA 1 f0 O7\r\nA\r\nVA 2 f3 O8\r\nBB\r\nMN\r\n", []hit{{0, "A"}, {1, "BB"}}},
		{"second only", 7, []string{"a", "b"}, "VA 1 O8 f0\r\nB\r\nMN\r\n", []hit{{1, "B"}}},
		{"repeated key, both", 7, []string{"a", "b", "a"}, "VA 1 f0 O7\r\nA\r\nVA 1 f0 O9\r\nA\r\nMN\r\n", []hit{{0, "A"}, {2, "A"}}},
		{"opaque wraps", math.MaxUint32, []string{"a", "b", "c"}, "VA 1 f0 O4294967295\r\nA\r\nVA 1 f0 O1\r\nC\r\nMN\r\n", []hit{{0, "A"}, {2, "C"}}},
		{"value holding MN", 7, []string{"a"}, "VA 4 f0 O7\r\nMN\r\n\r\nMN\r\n", []hit{{0, "MN\r\n"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := feedMeta(t, newMetaMulti(tc.opaque, tc.keys...)(), []byte(tc.reply))
			require.NoError(t, o.err)
			require.NoError(t, o.rerr)
			assert.True(t, o.Done)
			assert.Equal(t, len(tc.reply), o.N)
			assert.Equal(t, tc.hits, o.Hits)
		})
	}

	refused := []struct{ name, reply string }{
		{"out of order", "VA 1 f0 O8\r\nB\r\nVA 1 f0 O7\r\nA\r\nMN\r\n"},
		{"repeated", "VA 1 f0 O7\r\nA\r\nVA 1 f0 O7\r\nA\r\nMN\r\n"},
		{"unknown opaque above", "VA 1 f0 O9\r\nC\r\nMN\r\n"},
		{"unknown opaque below", "VA 1 f0 O6\r\nC\r\nMN\r\n"},
		{"no opaque", "VA 1 f0\r\nA\r\nMN\r\n"},
		{"no flags", "VA 1 O7\r\nA\r\nMN\r\n"},
		{"a miss it asked not to hear", "EN O7\r\nMN\r\n"},
		{"HD", "HD O7\r\nMN\r\n"},
		{"text END", "END\r\n"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			o := feedMeta(t, newMetaMulti(7, "a", "b")(), []byte(tc.reply))
			assert.ErrorIs(t, o.err, ErrProtocol)
			assert.False(t, o.Done)
		})
	}

	t.Run("error lines discard the connection", func(t *testing.T) {
		for _, line := range []string{"SERVER_ERROR out of memory", "CLIENT_ERROR bad command line format", "ERROR"} {
			o := feedMeta(t, newMetaMulti(7, "a", "b")(), []byte("VA 1 f0 O7\r\nA\r\n"+line+"\r\nMN\r\n"))
			assert.True(t, o.Done, line)
			assert.Equal(t, errDiscardConn, o.err, "the gets after it still answer: %s", line)
			assert.Error(t, o.rerr)
			assert.Equal(t, []hit{{0, "A"}}, o.Hits)
		}
	})
}

func TestParseMetaReplyGetBatch(t *testing.T) {
	// Plain gets of several callers sent as quiet gets: each value goes
	// to the member whose opaque it carries.
	members := []*request{{op: opGet, key: "x", maxValue: 100}, {op: opGet, key: "y", maxValue: 100}, {op: opGet, key: "x", maxValue: 100}}
	b := &request{op: opGetBatch, members: members, opaque: 40, maxValue: 100}
	o := feedMeta(t, b, bytewise([]byte("VA 1 f0 O40\r\nX\r\nVA 2 f1 O42\r\nX2\r\nMN\r\n"))...)
	require.NoError(t, o.err)
	assert.True(t, o.Done)
	assert.True(t, members[0].found)
	assert.Equal(t, "X", string(members[0].dst))
	assert.False(t, members[1].found)
	assert.True(t, members[2].found)
	assert.Equal(t, "X2", string(members[2].dst))
	assert.Equal(t, uint32(1), members[2].resFlags)

	b = &request{op: opGetBatch, members: []*request{{op: opGet, key: "x"}}, opaque: 40, maxValue: 100}
	o = feedMeta(t, b, []byte("VA 1 f0 O41\r\nX\r\nMN\r\n"))
	assert.ErrorIs(t, o.err, ErrProtocol)
}

func TestParseMetaReplyFence(t *testing.T) {
	// What earlier quiet commands still answer is dropped; MN ends it.
	dropped := "NS O1\r\nEX O2\r\nNF O3\r\nEN O4\r\nHD O5\r\nSERVER_ERROR object too large for cache\r\nCLIENT_ERROR bad data chunk\r\nERROR\r\n"
	o := feedMeta(t, &request{op: opFence, sink: true}, []byte(dropped+"MN\r\n"))
	require.NoError(t, o.err)
	require.NoError(t, o.rerr)
	assert.True(t, o.Done)
	assert.Equal(t, len(dropped)+4, o.N)

	for _, bad := range []string{"VA 1 f0 O1\r\nx\r\nMN\r\n", "VERSION 1.6.18\r\n", "STORED\r\n"} {
		o := feedMeta(t, &request{op: opFence, sink: true}, []byte(bad))
		assert.ErrorIs(t, o.err, ErrProtocol, bad)
	}
}

func TestParseMetaReplyValueOverMaxValue(t *testing.T) {
	for _, size := range []string{"5", "4294967295", "2147483648"} {
		r := &request{op: opGet, key: "foo", opaque: 7, maxValue: 4}
		o := feedMeta(t, r, []byte("VA "+size+" f0 O7\r\n"))
		assert.False(t, o.Done)
		if size == "4294967295" {
			assert.ErrorIs(t, o.err, ErrProtocol, "a size no value can have")
		} else {
			assert.ErrorIs(t, o.err, ErrValueTooLarge, "refused before reading the block")
			assert.ErrorIs(t, o.err, ErrProtocol, "the unread block leaves the stream unusable")
		}
		assert.Zero(t, cap(r.parse.scratch), "nothing allocated for it")
	}
	r := &request{op: opGetMulti, keys: []string{"a", "b"}, opaque: 7, maxValue: 4}
	o := feedMeta(t, r, []byte("VA 4 f0 O7\r\nabcd\r\nVA 5 f0 O8\r\n"))
	assert.ErrorIs(t, o.err, ErrValueTooLarge)
	assert.Equal(t, []hit{{0, "abcd"}}, o.Hits)
}

func TestParseMetaReplyCompressedValue(t *testing.T) {
	plain := []byte(strings.Repeat("compressible ", 200))
	packed, ok := appendCompressed(nil, plain)
	require.True(t, ok)
	reply := fmt.Appendf(nil, "VA %d f%d O7\r\n%s\r\n", len(packed), FlagCompressed, packed)
	o := feedMeta(t, newMetaReq(opGet, "foo", 7)(), reply)
	require.NoError(t, o.err)
	require.NoError(t, o.rerr)
	assert.Equal(t, string(plain), o.Dst)
	assert.Equal(t, FlagCompressed, o.Flags)

	bad := append([]byte(nil), packed...)
	bad[0]++
	reply = fmt.Appendf(nil, "VA %d f8 O7\r\n%s\r\nVA %d f8 O8\r\n%s\r\nMN\r\n", len(bad), bad, len(packed), packed)
	o = feedMeta(t, newMetaMulti(7, "a", "b")(), reply)
	assert.True(t, o.Done)
	assert.NoError(t, o.err, "a corrupt value leaves the stream in step")
	assert.ErrorIs(t, o.rerr, ErrCorruptValue)
	assert.Equal(t, []hit{{1, string(plain)}}, o.Hits)
}

// metaResumableReplies are parsed one-shot and split at every position;
// both must agree.
func metaResumableReplies() []struct {
	name  string
	req   func() *request
	reply []byte
} {
	big := make([]byte, 3000)
	for i := range big {
		big[i] = "ab\r\nMN\r\nVA 1 "[i%13]
	}
	packed, _ := appendCompressed(nil, []byte(strings.Repeat("0123456789", 300)))
	return []struct {
		name  string
		req   func() *request
		reply []byte
	}{
		{"get hit", newMetaReq(opGet, "foo", 7), []byte("VA 3 f5 O7\r\nbar\r\n")},
		{"get miss", newMetaReq(opGet, "foo", 7), []byte("EN O7\r\n")},
		{"gets hit", newMetaReq(opGets, "foo", 7), []byte("VA 3 O7 c18446744073709551615 f0\r\nbar\r\n")},
		{"get 3000-byte value holding protocol text", newMetaReq(opGet, "foo", 7), fmt.Appendf(nil, "VA %d f0 O7\r\n%s\r\n", len(big), big)},
		{"get compressed", newMetaReq(opGet, "foo", 7), fmt.Appendf(nil, "VA %d f8 O7\r\n%s\r\n", len(packed), packed)},
		{"multi-get", newMetaMulti(7, "a", "b", "c", "a"), []byte("VA 1 f0 O7\r\n\n\r\nVA 2 f1 O9\r\ncc\r\nVA 3 f0 O10\r\nMN\n\r\nMN\r\n")},
		{"multi-get big and compressed", newMetaMulti(7, "x", "y"), fmt.Appendf(nil, "VA %d f8 O7\r\n%s\r\nVA %d f0 O8\r\n%s\r\nMN\r\n", len(packed), packed, len(big), big)},
		{"stats", newMetaReq(opStats, "", 7), []byte("STAT pid 1\r\nSTAT uptime 22\r\nEND\r\n")},
		{"stored", newMetaReq(opSet, "foo", 7), []byte("HD O7\r\n")},
		{"incr", newMetaReq(opIncr, "foo", 7), []byte("VA 20 O7\r\n18446744073709551615\r\n")},
		{"version", newMetaReq(opVersion, "", 7), []byte("VERSION 1.6.18\r\n")},
		{"server error", newMetaReq(opGet, "foo", 7), []byte("SERVER_ERROR out of memory\r\n")},
		{"client error", newMetaReq(opSet, "foo", 7), []byte("CLIENT_ERROR bad data chunk\r\n")},
		{"cas exists", newMetaReq(opCAS, "foo", 7), []byte("EX O7\r\n")},
		{"fence", newMetaReq(opFence, "", 0), []byte("NS O1\r\nSERVER_ERROR out of memory\r\nMN\r\n")},
		{"misframed block", newMetaReq(opGet, "foo", 7), []byte("VA 3 f0 O7\r\nbarXY\r\n")},
		{"wrong opaque", newMetaReq(opGet, "foo", 7), []byte("VA 3 f0 O6\r\nbar\r\n")},
		{"multi-get out of order", newMetaMulti(7, "a", "b"), []byte("VA 1 f0 O8\r\nb\r\nVA 1 f0 O7\r\na\r\nMN\r\n")},
		{"number misframed", newMetaReq(opIncr, "foo", 7), []byte("VA 2 O7\r\n123\r\n")},
		{"over max", func() *request { return &request{op: opGet, key: "foo", opaque: 7, maxValue: 2} }, []byte("VA 3 f0 O7\r\nbar\r\n")},
	}
}

func TestParseMetaReplyResumable(t *testing.T) {
	feed := func(t *testing.T, r *request, chunks ...[]byte) outcome {
		t.Helper()
		o := feedMeta(t, r, chunks...)
		if o.err != nil && o.err != errDiscardConn {
			o.N = 0 // how far a refused stream was read does not matter
		}
		return o
	}
	for _, tc := range metaResumableReplies() {
		t.Run(tc.name, func(t *testing.T) {
			want := feed(t, tc.req(), tc.reply)
			require.True(t, want.Done || want.err != nil, "the one-shot parse must finish: %+v", want)
			for cut := 0; cut <= len(tc.reply); cut++ {
				if got := feed(t, tc.req(), splits(tc.reply, cut)...); !assert.Equal(t, want, got, "split at %d", cut) {
					return
				}
			}
			assert.Equal(t, want, feed(t, tc.req(), bytewise(tc.reply)...), "one byte at a time")
			if len(tc.reply) <= 80 {
				for a := 1; a < len(tc.reply); a++ {
					for b := a; b < len(tc.reply); b++ {
						if got := feed(t, tc.req(), splits(tc.reply, a, b)...); !assert.Equal(t, want, got, "split at %d and %d", a, b) {
							return
						}
					}
				}
			}
		})
	}
}

func TestParseMetaReplyScratchBounded(t *testing.T) {
	// A multi-get value that spans reads is gathered in the scratch
	// buffer, sized once from the declared length.
	value := strings.Repeat("v", 5000)
	reply := []byte("VA 5000 f0 O7\r\n" + value + "\r\nMN\r\n")
	r := newMetaMulti(7, "foo")()
	o := feedMeta(t, r, bytewise(reply)...)
	require.NoError(t, o.err)
	assert.Equal(t, []hit{{0, value}}, o.Hits)
	assert.GreaterOrEqual(t, cap(r.parse.scratch), 5000)
	assert.Less(t, cap(r.parse.scratch), 2*5000+64, "sized from the declared length")
}

// A single get's value that spans reads goes straight into dst, as on
// the text protocol.
func TestParseMetaReplyIntoDst(t *testing.T) {
	value := strings.Repeat("v", 5000)
	reply := []byte("VA 5000 f3 O7\r\n" + value + "\r\n")
	r := newMetaReq(opGet, "foo", 7)()
	r.dst = append(make([]byte, 0, 8), "pre"...)
	o := feedMeta(t, r, splits(reply, 100, 2000, 4000, len(reply)-2, len(reply)-1)...)
	require.NoError(t, o.err)
	require.True(t, o.Done)
	assert.Equal(t, "pre"+value, o.Dst)
	assert.Equal(t, uint32(3), o.Flags)
	assert.Zero(t, cap(r.parse.scratch), "nothing gathered in scratch")

	// A reader that fills want itself (netConn.readFor) leaves the parser
	// only the trailer to check; the reply is then complete.
	r = newMetaReq(opGet, "foo", 7)()
	head := len("VA 5000 f3 O7\r\n")
	n, done, err := parseMetaReply(r, reply[:head+10])
	require.NoError(t, err)
	require.False(t, done)
	require.Equal(t, head+10, n)
	require.Len(t, r.parse.want, 4990)
	r.parse.want = r.parse.want[copy(r.parse.want, value[10:]):]
	n, done, err = parseMetaReply(r, reply[head+5000:])
	require.NoError(t, err)
	require.True(t, done)
	assert.Equal(t, 2, n)
	assert.Equal(t, value, string(r.dst))

	bad := []byte("VA 5000 f0 O7\r\n" + value + "\n\r")
	o = feedMeta(t, newMetaReq(opGet, "foo", 7)(), splits(bad, 100)...)
	assert.ErrorIs(t, o.err, ErrProtocol, "the block's CRLF is checked")
}
