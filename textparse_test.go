package ermc

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Byte-level tests of the text protocol codec: exact request bytes, every
// reply kind, and resumability of the parser at every split point.

func TestAppendTextRequest(t *testing.T) {
	cases := []struct {
		name string
		r    request
		want string
	}{
		{"get", request{op: opGet, key: "foo"}, "get foo\r\n"},
		{"gets", request{op: opGets, key: "foo"}, "gets foo\r\n"},
		{"gat", request{op: opGat, key: "foo", exptime: 100}, "gat 100 foo\r\n"},
		{"gat expired", request{op: opGat, key: "foo", exptime: -1}, "gat -1 foo\r\n"},
		{"get multi", request{op: opGetMulti, keys: []string{"a", "bb", "a", "ccc"}}, "get a bb a ccc\r\n"},
		{"get multi one key", request{op: opGetMulti, keys: []string{"a"}}, "get a\r\n"},
		{"set", request{op: opSet, key: "foo", value: []byte("bar"), flags: 5, exptime: 100}, "set foo 5 100 3\r\nbar\r\n"},
		{"set noreply", request{op: opSet, key: "foo", value: []byte("bar"), flags: 5, exptime: 100, noreply: true}, "set foo 5 100 3 noreply\r\nbar\r\n"},
		{"set empty value", request{op: opSet, key: "k", value: nil}, "set k 0 0 0\r\n\r\n"},
		{"set max flags, negative exptime", request{op: opSet, key: "k", value: []byte("v"), flags: math.MaxUint32, exptime: -1}, "set k 4294967295 2592001 1\r\nv\r\n"},
		{"set binary value with CRLF inside", request{op: opSet, key: "k", value: []byte("a\r\nEND\r\n\x00")}, "set k 0 0 9\r\na\r\nEND\r\n\x00\r\n"},
		{"set absolute exptime", request{op: opSet, key: "k", value: []byte("v"), exptime: 1900000000}, "set k 0 1900000000 1\r\nv\r\n"},
		{"add", request{op: opAdd, key: "foo", value: []byte("bar")}, "add foo 0 0 3\r\nbar\r\n"},
		{"add noreply", request{op: opAdd, key: "foo", value: []byte("bar"), noreply: true}, "add foo 0 0 3 noreply\r\nbar\r\n"},
		{"replace", request{op: opReplace, key: "foo", value: []byte("bar"), exptime: 7}, "replace foo 0 7 3\r\nbar\r\n"},
		{"replace noreply", request{op: opReplace, key: "foo", value: []byte("bar"), noreply: true}, "replace foo 0 0 3 noreply\r\nbar\r\n"},
		{"append", request{op: opAppend, key: "foo", value: []byte("xy")}, "append foo 0 0 2\r\nxy\r\n"},
		{"append noreply", request{op: opAppend, key: "foo", value: []byte("xy"), noreply: true}, "append foo 0 0 2 noreply\r\nxy\r\n"},
		{"prepend", request{op: opPrepend, key: "foo", value: []byte("xy")}, "prepend foo 0 0 2\r\nxy\r\n"},
		{"prepend noreply", request{op: opPrepend, key: "foo", value: []byte("xy"), noreply: true}, "prepend foo 0 0 2 noreply\r\nxy\r\n"},
		{"cas", request{op: opCAS, key: "foo", value: []byte("bar"), flags: 8, exptime: 60, cas: 12345}, "cas foo 8 60 3 12345\r\nbar\r\n"},
		{"cas max id", request{op: opCAS, key: "foo", value: []byte("bar"), cas: math.MaxUint64}, "cas foo 0 0 3 18446744073709551615\r\nbar\r\n"},
		{"cas noreply", request{op: opCAS, key: "foo", value: []byte("bar"), cas: 1, noreply: true}, "cas foo 0 0 3 1 noreply\r\nbar\r\n"},
		{"incr", request{op: opIncr, key: "n", delta: 7}, "incr n 7\r\n"},
		{"incr max delta", request{op: opIncr, key: "n", delta: math.MaxUint64}, "incr n 18446744073709551615\r\n"},
		{"incr noreply", request{op: opIncr, key: "n", delta: 7, noreply: true}, "incr n 7 noreply\r\n"},
		{"decr", request{op: opDecr, key: "n", delta: 0}, "decr n 0\r\n"},
		{"decr noreply", request{op: opDecr, key: "n", delta: 3, noreply: true}, "decr n 3 noreply\r\n"},
		{"delete", request{op: opDelete, key: "foo"}, "delete foo\r\n"},
		{"delete noreply", request{op: opDelete, key: "foo", noreply: true}, "delete foo noreply\r\n"},
		{"touch", request{op: opTouch, key: "foo", exptime: 60}, "touch foo 60\r\n"},
		{"touch noreply", request{op: opTouch, key: "foo", exptime: 0, noreply: true}, "touch foo 0 noreply\r\n"},
		{"flush_all", request{op: opFlushAll}, "flush_all\r\n"},
		{"stats", request{op: opStats}, "stats\r\n"},
		{"version", request{op: opVersion}, "version\r\n"},
		{"auth", request{op: opAuth, user: "user", pass: "secret"}, "set _ 0 -1 11\r\nuser secret\r\n"},
		{"auth password with spaces", request{op: opAuth, user: "u", pass: "p w"}, "set _ 0 -1 5\r\nu p w\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			assert.Equal(t, tc.want, string(appendTextRequest(nil, &r)))
			// The encoder appends: an existing prefix is kept.
			prefix := []byte("PREFIX")
			got := appendTextRequest(prefix, &r)
			assert.Equal(t, "PREFIX"+tc.want, string(got))
		})
	}
}

func TestAppendTextRequestDoesNotAllocateWithRoom(t *testing.T) {
	r := &request{op: opSet, key: "foo", value: []byte("bar"), flags: 5, exptime: 100, cas: 9}
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(100, func() {
		buf = appendTextRequest(buf[:0], r)
	})
	assert.Zero(t, allocs)
}

// hit is one multi-get callback.
type hit struct {
	I int
	V string
}

// outcome is everything a parse produced, for comparing parses.
type outcome struct {
	N      int  // bytes consumed in total
	Done   bool // reply complete
	Err    string
	RErr   string
	Found  bool
	Dst    string
	Flags  uint32
	CAS    uint64
	Number uint64
	Text   string
	Stats  map[string]string
	Hits   []hit
	err    error // the returned error, for errors.Is
	rerr   error // r.err, for errors.Is
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// feed runs the text parser over reply delivered in the given chunks
// (feedChunks) and sums up what it produced.
func feed(t testing.TB, r *request, chunks ...[]byte) outcome {
	t.Helper()
	return feedOutcome(t, parseTextReply, r, chunks...)
}

// feedOutcome is feed for any reply parser.
func feedOutcome(t testing.TB, parse replyParser, r *request, chunks ...[]byte) outcome {
	t.Helper()
	var o outcome
	if r.op == opGetMulti && r.onValue == nil {
		r.onValue = func(i int, v []byte) { o.Hits = append(o.Hits, hit{i, string(v)}) }
	}
	f := feedChunks(t, parse, r, chunks)
	o.N, o.Done, o.err = f.used, f.done, f.err
	o.Err, o.rerr, o.RErr = errString(o.err), r.err, errString(r.err)
	o.Found, o.Dst, o.Flags, o.CAS = r.found, string(r.dst), r.resFlags, r.resCAS
	o.Number, o.Text, o.Stats = r.number, r.text, r.stats
	return o
}

func newReq(op opcode, key string) func() *request {
	return func() *request { return &request{op: op, key: key, maxValue: 1 << 20} }
}

func newMulti(keys ...string) func() *request {
	return func() *request { return &request{op: opGetMulti, keys: keys, maxValue: 1 << 20} }
}

// outcomeCheck is a check of one parsed reply, shared by the text and
// meta parser tables.
type outcomeCheck func(t *testing.T, o outcome)

// checkOK: the reply is complete and clean.
func checkOK(t *testing.T, o outcome) {
	t.Helper()
	assert.True(t, o.Done, "reply should be complete")
	assert.NoError(t, o.err)
	assert.NoError(t, o.rerr)
}

// checkOutcomeIs: the reply is complete, the stream in step, and the
// operation's outcome is target.
func checkOutcomeIs(target error) outcomeCheck {
	return func(t *testing.T, o outcome) {
		t.Helper()
		assert.True(t, o.Done, "reply should be complete")
		assert.NoError(t, o.err, "the stream is in step")
		assert.ErrorIs(t, o.rerr, target)
	}
}

// checkProtocol: the stream is out of step.
func checkProtocol(t *testing.T, o outcome) {
	t.Helper()
	assert.False(t, o.Done)
	assert.ErrorIs(t, o.err, ErrProtocol)
}

func TestParseTextReplyKinds(t *testing.T) {
	type check = outcomeCheck
	ok, outcomeIs, protocol := checkOK, checkOutcomeIs, checkProtocol
	cases := []struct {
		name  string
		req   func() *request
		reply string
		check check
	}{
		// Retrieval.
		{"get hit", newReq(opGet, "foo"), "VALUE foo 5 3\r\nbar\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.True(t, o.Found)
			assert.Equal(t, "bar", o.Dst)
			assert.Equal(t, uint32(5), o.Flags)
		}},
		{"get hit empty value", newReq(opGet, "foo"), "VALUE foo 0 0\r\n\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.True(t, o.Found)
			assert.Equal(t, "", o.Dst)
		}},
		{"get hit value holding CRLF and END", newReq(opGet, "foo"), "VALUE foo 0 7\r\nEND\r\n\r\n\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, "END\r\n\r\n", o.Dst)
		}},
		{"get hit max flags but compressed", newReq(opGet, "foo"), "VALUE foo 4294967287 1\r\nx\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, uint32(math.MaxUint32&^FlagCompressed), o.Flags)
		}},
		{"get hit with a cas field", newReq(opGet, "foo"), "VALUE foo 0 1 99\r\nx\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, "x", o.Dst)
		}},
		{"get miss", newReq(opGet, "foo"), "END\r\n", func(t *testing.T, o outcome) {
			outcomeIs(ErrCacheMiss)(t, o)
			assert.False(t, o.Found)
		}},
		{"gets hit", newReq(opGets, "foo"), "VALUE foo 0 3 42\r\nbar\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, "bar", o.Dst)
			assert.Equal(t, uint64(42), o.CAS)
		}},
		{"gets hit max cas", newReq(opGets, "foo"), "VALUE foo 0 3 18446744073709551615\r\nbar\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, uint64(math.MaxUint64), o.CAS)
		}},
		{"gets miss", newReq(opGets, "foo"), "END\r\n", outcomeIs(ErrCacheMiss)},
		{"gets without cas field", newReq(opGets, "foo"), "VALUE foo 0 3\r\nbar\r\nEND\r\n", protocol},
		{"gets cas overflow", newReq(opGets, "foo"), "VALUE foo 0 3 18446744073709551616\r\nbar\r\nEND\r\n", protocol},
		{"gat hit", newReq(opGat, "foo"), "VALUE foo 1 2\r\nhi\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, "hi", o.Dst)
			assert.Equal(t, uint32(1), o.Flags)
		}},
		{"gat miss", newReq(opGat, "foo"), "END\r\n", outcomeIs(ErrCacheMiss)},
		{"get SERVER_ERROR", newReq(opGet, "foo"), "SERVER_ERROR out of memory\r\n", func(t *testing.T, o outcome) {
			assert.True(t, o.Done)
			assert.NoError(t, o.err)
			var se *ServerError
			require.ErrorAs(t, o.rerr, &se)
			assert.Equal(t, "out of memory", se.Message)
		}},

		// Storage.
		{"set STORED", newReq(opSet, "foo"), "STORED\r\n", ok},
		{"set NOT_STORED", newReq(opSet, "foo"), "NOT_STORED\r\n", outcomeIs(ErrNotStored)},
		{"add NOT_STORED", newReq(opAdd, "foo"), "NOT_STORED\r\n", outcomeIs(ErrNotStored)},
		{"replace NOT_STORED", newReq(opReplace, "foo"), "NOT_STORED\r\n", outcomeIs(ErrNotStored)},
		{"append STORED", newReq(opAppend, "foo"), "STORED\r\n", ok},
		{"prepend NOT_STORED", newReq(opPrepend, "foo"), "NOT_STORED\r\n", outcomeIs(ErrNotStored)},
		{"cas STORED", newReq(opCAS, "foo"), "STORED\r\n", ok},
		{"cas EXISTS", newReq(opCAS, "foo"), "EXISTS\r\n", outcomeIs(ErrCASConflict)},
		{"cas NOT_FOUND", newReq(opCAS, "foo"), "NOT_FOUND\r\n", outcomeIs(ErrCacheMiss)},
		{"set EXISTS is not a set reply", newReq(opSet, "foo"), "EXISTS\r\n", protocol},
		{"set NOT_FOUND is not a set reply", newReq(opSet, "foo"), "NOT_FOUND\r\n", protocol},
		{"set DELETED is not a set reply", newReq(opSet, "foo"), "DELETED\r\n", protocol},
		{"set END is not a set reply", newReq(opSet, "foo"), "END\r\n", protocol},
		{"set VALUE is not a set reply", newReq(opSet, "foo"), "VALUE foo 0 1\r\nx\r\nEND\r\n", protocol},
		{"set SERVER_ERROR", newReq(opSet, "foo"), "SERVER_ERROR object too large for cache\r\n", func(t *testing.T, o outcome) {
			assert.True(t, o.Done)
			assert.NoError(t, o.err, "SERVER_ERROR leaves the stream in step")
			var se *ServerError
			require.ErrorAs(t, o.rerr, &se)
			assert.Equal(t, "object too large for cache", se.Message)
		}},
		{"set CLIENT_ERROR", newReq(opSet, "foo"), "CLIENT_ERROR bad data chunk\r\n", func(t *testing.T, o outcome) {
			assert.True(t, o.Done)
			assert.Equal(t, errDiscardConn, o.err, "CLIENT_ERROR discards the connection")
			var ce *ClientError
			require.ErrorAs(t, o.rerr, &ce)
			assert.Equal(t, "bad data chunk", ce.Message)
		}},
		{"auth STORED", newReq(opAuth, ""), "STORED\r\n", ok},
		{"auth CLIENT_ERROR", newReq(opAuth, ""), "CLIENT_ERROR authentication failure\r\n", func(t *testing.T, o outcome) {
			assert.True(t, o.Done)
			assert.Equal(t, errDiscardConn, o.err)
			assert.ErrorIs(t, o.rerr, ErrAuth)
			var ce *ClientError
			require.ErrorAs(t, o.rerr, &ce)
			assert.Equal(t, "authentication failure", ce.Message)
		}},

		// Arithmetic.
		{"incr number", newReq(opIncr, "n"), "42\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, uint64(42), o.Number)
		}},
		{"decr zero", newReq(opDecr, "n"), "0\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, uint64(0), o.Number)
		}},
		{"incr max uint64", newReq(opIncr, "n"), "18446744073709551615\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, uint64(math.MaxUint64), o.Number)
		}},
		{"incr overflowing number", newReq(opIncr, "n"), "18446744073709551616\r\n", protocol},
		{"incr negative number", newReq(opIncr, "n"), "-1\r\n", protocol},
		{"incr number with space", newReq(opIncr, "n"), "4 2\r\n", protocol},
		{"incr NOT_FOUND", newReq(opIncr, "n"), "NOT_FOUND\r\n", outcomeIs(ErrCacheMiss)},
		{"decr NOT_FOUND", newReq(opDecr, "n"), "NOT_FOUND\r\n", outcomeIs(ErrCacheMiss)},
		{"incr non-numeric", newReq(opIncr, "n"), "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n", func(t *testing.T, o outcome) {
			assert.True(t, o.Done)
			assert.Equal(t, errDiscardConn, o.err)
			assert.ErrorIs(t, o.rerr, ErrNonNumeric)
		}},
		{"incr STORED is not an incr reply", newReq(opIncr, "n"), "STORED\r\n", protocol},

		// Delete, touch.
		{"delete DELETED", newReq(opDelete, "foo"), "DELETED\r\n", ok},
		{"delete NOT_FOUND", newReq(opDelete, "foo"), "NOT_FOUND\r\n", outcomeIs(ErrCacheMiss)},
		{"delete TOUCHED is not a delete reply", newReq(opDelete, "foo"), "TOUCHED\r\n", protocol},
		{"touch TOUCHED", newReq(opTouch, "foo"), "TOUCHED\r\n", ok},
		{"touch NOT_FOUND", newReq(opTouch, "foo"), "NOT_FOUND\r\n", outcomeIs(ErrCacheMiss)},
		{"touch DELETED is not a touch reply", newReq(opTouch, "foo"), "DELETED\r\n", protocol},

		// Server-wide commands.
		{"flush_all OK", newReq(opFlushAll, ""), "OK\r\n", ok},
		{"flush_all STORED", newReq(opFlushAll, ""), "STORED\r\n", protocol},
		{"version", newReq(opVersion, ""), "VERSION 1.6.21\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, "1.6.21", o.Text)
		}},
		{"version without a version", newReq(opVersion, ""), "VERSION\r\n", protocol},
		{"stats", newReq(opStats, ""), "STAT pid 1234\r\nSTAT version 1.6.21\r\nSTAT rusage_user 0.012345\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, map[string]string{"pid": "1234", "version": "1.6.21", "rusage_user": "0.012345"}, o.Stats)
		}},
		{"stats value with spaces", newReq(opStats, ""), "STAT libevent 2.1 stable\r\nEND\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Equal(t, map[string]string{"libevent": "2.1 stable"}, o.Stats)
		}},
		{"stats empty", newReq(opStats, ""), "END\r\n", func(t *testing.T, o outcome) {
			ok(t, o)
			assert.Empty(t, o.Stats)
		}},
		{"STAT to a get", newReq(opGet, "foo"), "STAT pid 1\r\nEND\r\n", protocol},

		// Errors.
		{"ERROR", newReq(opGet, "foo"), "ERROR\r\n", func(t *testing.T, o outcome) {
			assert.True(t, o.Done)
			assert.Equal(t, errDiscardConn, o.err, "ERROR discards the connection")
			var se *ServerError
			require.ErrorAs(t, o.rerr, &se)
			assert.Equal(t, "ERROR", se.Message)
		}},
		{"ERROR with message", newReq(opSet, "foo"), "ERROR unknown command\r\n", func(t *testing.T, o outcome) {
			assert.True(t, o.Done)
			assert.Equal(t, errDiscardConn, o.err)
			var se *ServerError
			require.ErrorAs(t, o.rerr, &se)
			assert.Contains(t, se.Message, "unknown command")
		}},
		{"SERVER_ERROR message is bounded", newReq(opSet, "foo"), "SERVER_ERROR " + strings.Repeat("m", 1000) + "\r\n", func(t *testing.T, o outcome) {
			var se *ServerError
			require.ErrorAs(t, o.rerr, &se)
			assert.Len(t, se.Message, maxMessageInError)
		}},
		{"unknown reply line", newReq(opSet, "foo"), "WHATEVER\r\n", protocol},
		{"empty reply line", newReq(opSet, "foo"), "\r\n", protocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := feed(t, tc.req(), []byte(tc.reply))
			tc.check(t, o)
			if o.Done {
				assert.Equal(t, len(tc.reply), o.N, "a complete reply is consumed exactly")
			}
		})
	}
}

func TestParseTextReplyMultiGet(t *testing.T) {
	cases := []struct {
		name  string
		keys  []string
		reply string
		want  []hit
	}{
		{"all miss", []string{"a", "b"}, "END\r\n", nil},
		{"in order", []string{"a", "b", "c"}, "VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE c 0 1\r\n3\r\nEND\r\n",
			[]hit{{0, "1"}, {1, "2"}, {2, "3"}}},
		{"in order with misses", []string{"a", "b", "c"}, "VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n",
			[]hit{{0, "1"}, {2, "3"}}},
		{"out of order", []string{"a", "b", "c"}, "VALUE c 0 1\r\n3\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n",
			[]hit{{2, "3"}, {0, "1"}, {1, "2"}}},
		{"duplicate keys in order", []string{"a", "b", "a"}, "VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nEND\r\n",
			[]hit{{0, "1"}, {1, "2"}, {2, "1"}}},
		{"duplicate keys adjacent", []string{"a", "a"}, "VALUE a 0 1\r\n1\r\nVALUE a 0 1\r\n1\r\nEND\r\n",
			[]hit{{0, "1"}, {1, "1"}}},
		{"cas fields accepted", []string{"a", "b"}, "VALUE a 0 1 7\r\n1\r\nVALUE b 0 1 8\r\n2\r\nEND\r\n",
			[]hit{{0, "1"}, {1, "2"}}},
		{"values holding protocol text", []string{"a", "b"}, "VALUE a 0 13\r\nVALUE b 0 1\r\n\r\nVALUE b 0 5\r\nEND\r\n\r\nEND\r\n",
			[]hit{{0, "VALUE b 0 1\r\n"}, {1, "END\r\n"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := feed(t, newMulti(tc.keys...)(), []byte(tc.reply))
			require.True(t, o.Done)
			require.NoError(t, o.err)
			assert.NoError(t, o.rerr, "a multi-get miss is not an error")
			assert.Equal(t, tc.want, o.Hits)
			assert.Equal(t, len(tc.reply), o.N)
		})
	}
	t.Run("key not requested", func(t *testing.T) {
		o := feed(t, newMulti("a", "b")(), []byte("VALUE a 0 1\r\n1\r\nVALUE zz 0 1\r\n2\r\nEND\r\n"))
		assert.ErrorIs(t, o.err, ErrProtocol)
		assert.Equal(t, []hit{{0, "1"}}, o.Hits)
	})
	t.Run("key is a prefix of a requested key", func(t *testing.T) {
		o := feed(t, newMulti("ab")(), []byte("VALUE a 0 1\r\n1\r\nEND\r\n"))
		assert.ErrorIs(t, o.err, ErrProtocol)
	})
	t.Run("SERVER_ERROR after values", func(t *testing.T) {
		o := feed(t, newMulti("a", "b")(), []byte("VALUE a 0 1\r\n1\r\nSERVER_ERROR out of memory writing get response\r\n"))
		assert.True(t, o.Done)
		// The reply was cut short (twemproxy closes the connection after
		// it): outcome kept, connection discarded.
		assert.Equal(t, errDiscardConn, o.err)
		var se *ServerError
		assert.ErrorAs(t, o.rerr, &se)
		assert.Equal(t, []hit{{0, "1"}}, o.Hits)
	})
}

func TestParseTextReplySingleKeyMismatch(t *testing.T) {
	for _, op := range []opcode{opGet, opGets, opGat} {
		cas := ""
		if op == opGets {
			cas = " 1"
		}
		t.Run(fmt.Sprint("op", op), func(t *testing.T) {
			o := feed(t, newReq(op, "foo")(), []byte("VALUE bar 0 1"+cas+"\r\nx\r\nEND\r\n"))
			assert.ErrorIs(t, o.err, ErrProtocol, "VALUE for a key that was not requested")
			assert.False(t, o.Found)

			o = feed(t, newReq(op, "foo")(), []byte("VALUE fo 0 1"+cas+"\r\nx\r\nEND\r\n"))
			assert.ErrorIs(t, o.err, ErrProtocol, "VALUE for a prefix of the key")

			o = feed(t, newReq(op, "foo")(), []byte("VALUE foo 0 1"+cas+"\r\nx\r\nVALUE foo 0 1"+cas+"\r\ny\r\nEND\r\n"))
			assert.ErrorIs(t, o.err, ErrProtocol, "a second VALUE on a single-key get")
			assert.Equal(t, "x", o.Dst, "the first value was delivered, the second never")
		})
	}
}

func TestParseTextReplyMalformedValueLines(t *testing.T) {
	cases := []struct{ name, line string }{
		{"no fields", "VALUE \r\n"},
		{"key only", "VALUE foo\r\n"},
		{"no length", "VALUE foo 0\r\n"},
		{"trailing space", "VALUE foo 0 3 \r\n"},
		{"double space", "VALUE foo  0 3\r\n"},
		{"negative length", "VALUE foo 0 -1\r\n"},
		{"non-numeric length", "VALUE foo 0 abc\r\n"},
		{"hex length", "VALUE foo 0 0x10\r\n"},
		{"plus-signed length", "VALUE foo 0 +3\r\n"},
		{"length 2^32-1", "VALUE foo 0 4294967295\r\n"},
		{"length 2^32", "VALUE foo 0 4294967296\r\n"},
		{"length 2^63", "VALUE foo 0 9223372036854775808\r\n"},
		{"length 2^64", "VALUE foo 0 18446744073709551616\r\n"},
		{"negative flags", "VALUE foo -1 3\r\n"},
		{"flags 2^32", "VALUE foo 4294967296 3\r\n"},
		{"non-numeric cas", "VALUE foo 0 3 x\r\n"},
		{"extra field", "VALUE foo 0 3 1 2\r\n"},
	}
	for _, tc := range cases {
		for _, maxValue := range []int{1 << 20, math.MaxInt} {
			t.Run(fmt.Sprintf("%s/max=%d", tc.name, maxValue), func(t *testing.T) {
				r := &request{op: opGet, key: "foo", maxValue: maxValue}
				o := feed(t, r, []byte(tc.line+"bar\r\nEND\r\n"))
				assert.ErrorIs(t, o.err, ErrProtocol)
				assert.False(t, o.Found)
				assert.LessOrEqual(t, cap(r.parse.scratch), 64, "nothing allocated for a refused VALUE")
			})
		}
	}
}

func TestParseTextReplyValueOverMaxValue(t *testing.T) {
	for _, size := range []string{"1025", "1000001", "2147483648"} {
		t.Run(size, func(t *testing.T) {
			r := &request{op: opGet, key: "foo", maxValue: 1024}
			// Only the header arrives: a parser that allocated for the
			// declared length before checking it would show it here.
			o := feed(t, r, []byte("VALUE foo 0 "+size+"\r\n"))
			assert.ErrorIs(t, o.err, ErrProtocol)
			assert.Contains(t, o.Err, "MaxValueLength")
			assert.LessOrEqual(t, cap(r.parse.scratch), 64, "refused before allocating")
			assert.Empty(t, r.dst)
		})
	}
	t.Run("exactly max is accepted", func(t *testing.T) {
		r := &request{op: opGet, key: "foo", maxValue: 4}
		o := feed(t, r, []byte("VALUE foo 0 4\r\nabcd\r\nEND\r\n"))
		require.NoError(t, o.err)
		assert.Equal(t, "abcd", o.Dst)
	})
	t.Run("multi-get", func(t *testing.T) {
		r := &request{op: opGetMulti, keys: []string{"a", "b"}, maxValue: 4}
		o := feed(t, r, []byte("VALUE a 0 4\r\nabcd\r\nVALUE b 0 5\r\n"))
		assert.ErrorIs(t, o.err, ErrProtocol)
		assert.Equal(t, []hit{{0, "abcd"}}, o.Hits)
		assert.LessOrEqual(t, cap(r.parse.scratch), 64)
	})
}

func TestParseTextReplyFraming(t *testing.T) {
	t.Run("data block not followed by CRLF", func(t *testing.T) {
		for _, reply := range []string{
			"VALUE foo 0 3\r\nbarX\r\nEND\r\n",
			"VALUE foo 0 3\r\nbar\n\r\nEND\r\n",
			"VALUE foo 0 3\r\nbar\r\rEND\r\n",
			"VALUE foo 0 3\r\nba\r\nEND\r\n",
		} {
			whole := []byte(reply)
			o := feed(t, newReq(opGet, "foo")(), whole)
			assert.ErrorIs(t, o.err, ErrProtocol, "%q", reply)
			assert.Contains(t, o.Err, "data block not followed by CRLF")
			assert.False(t, o.Found, "a misframed value is not delivered")
			// Also when the block spans reads (the scratch-buffer path).
			for cut := 1; cut < len(whole); cut++ {
				o := feed(t, newReq(opGet, "foo")(), splits(whole, cut)...)
				assert.ErrorIs(t, o.err, ErrProtocol, "%q cut at %d", reply, cut)
				assert.False(t, o.Found, "%q cut at %d", reply, cut)
			}
		}
	})
	t.Run("line not ended by CRLF", func(t *testing.T) {
		for _, reply := range []string{"STORED\n", "\n", "ST\nORED\r\n", "STORED\n\r\n"} {
			o := feed(t, newReq(opSet, "foo")(), []byte(reply))
			assert.ErrorIs(t, o.err, ErrProtocol, "%q", reply)
			assert.Contains(t, o.Err, "CRLF")
		}
		o := feed(t, newReq(opGet, "foo")(), []byte("VALUE foo 0 3\nbar\r\nEND\r\n"))
		assert.ErrorIs(t, o.err, ErrProtocol)
		o = feed(t, newReq(opGet, "foo")(), []byte("VALUE foo 0 3\r\nbar\r\nEND\n"))
		assert.ErrorIs(t, o.err, ErrProtocol)
		assert.Equal(t, "bar", o.Dst)
	})
	t.Run("incomplete line waits", func(t *testing.T) {
		for _, reply := range []string{"", "S", "STORED", "STORED\r"} {
			o := feed(t, newReq(opSet, "foo")(), []byte(reply))
			assert.NoError(t, o.err, "%q", reply)
			assert.False(t, o.Done, "%q", reply)
			assert.Zero(t, o.N, "%q: an incomplete line is not consumed", reply)
		}
	})
	t.Run("line longer than maxTextLine", func(t *testing.T) {
		long := []byte(strings.Repeat("A", maxTextLine+1))
		o := feed(t, newReq(opSet, "foo")(), long)
		assert.ErrorIs(t, o.err, ErrProtocol)
		assert.Contains(t, o.Err, "too long")
		assert.LessOrEqual(t, len(o.Err), 2*maxMessageInError+100, "the error quotes a bounded excerpt")

		// Arriving in pieces.
		o = feed(t, newReq(opSet, "foo")(), long[:1000], long[1000:2000], long[2000:])
		assert.ErrorIs(t, o.err, ErrProtocol)

		// After a complete VALUE block, the next line is bounded too.
		r := newReq(opGet, "foo")()
		o = feed(t, r, []byte("VALUE foo 0 1\r\nx\r\n"), long)
		assert.ErrorIs(t, o.err, ErrProtocol)

		// At the limit the parser still waits for the newline.
		o = feed(t, newReq(opSet, "foo")(), long[:maxTextLine])
		assert.NoError(t, o.err)
		assert.False(t, o.Done)
	})
}

func TestParseTextReplyCompressedValue(t *testing.T) {
	plain := []byte(strings.Repeat("compressible ", 200))
	packed, ok := appendCompressed(nil, plain)
	require.True(t, ok)
	reply := fmt.Appendf(nil, "VALUE foo %d %d\r\n%s\r\nEND\r\n", FlagCompressed, len(packed), packed)

	o := feed(t, newReq(opGet, "foo")(), reply)
	require.NoError(t, o.err)
	require.NoError(t, o.rerr)
	assert.Equal(t, string(plain), o.Dst)
	assert.Equal(t, FlagCompressed, o.Flags)

	// Corrupt compressed data is the value's fault, not the stream's: the
	// reply is consumed and the connection stays in step.
	bad := append([]byte(nil), packed...)
	bad[0]++ // declared length off by one
	reply = fmt.Appendf(nil, "VALUE foo %d %d\r\n%s\r\nEND\r\n", FlagCompressed, len(bad), bad)
	o = feed(t, newReq(opGet, "foo")(), reply)
	assert.True(t, o.Done)
	assert.NoError(t, o.err)
	assert.ErrorIs(t, o.rerr, ErrCorruptValue)
	assert.Empty(t, o.Dst)

	// Multi-get: the good value is delivered, the corrupt one reported.
	reply = fmt.Appendf(nil, "VALUE a %d %d\r\n%s\r\nVALUE b %d %d\r\n%s\r\nEND\r\n",
		FlagCompressed, len(bad), bad, FlagCompressed, len(packed), packed)
	o = feed(t, newMulti("a", "b")(), reply)
	assert.True(t, o.Done)
	assert.NoError(t, o.err)
	assert.ErrorIs(t, o.rerr, ErrCorruptValue)
	assert.Equal(t, []hit{{1, string(plain)}}, o.Hits)
}

// resumableReplies are parsed one-shot and split at every position; both
// must agree. Error replies are included: the error must be the same
// however the bytes arrive.
func resumableReplies() []struct {
	name  string
	req   func() *request
	reply []byte
} {
	big := make([]byte, 3000)
	for i := range big {
		big[i] = "ab\r\nEND\r\nVALUE "[i%15]
	}
	packed, _ := appendCompressed(nil, []byte(strings.Repeat("0123456789", 300)))
	return []struct {
		name  string
		req   func() *request
		reply []byte
	}{
		{"get hit", newReq(opGet, "foo"), []byte("VALUE foo 5 3\r\nbar\r\nEND\r\n")},
		{"get miss", newReq(opGet, "foo"), []byte("END\r\n")},
		{"gets hit", newReq(opGets, "foo"), []byte("VALUE foo 0 3 18446744073709551615\r\nbar\r\nEND\r\n")},
		{"get empty value", newReq(opGet, "foo"), []byte("VALUE foo 0 0\r\n\r\nEND\r\n")},
		{"get 3000-byte value holding protocol text", newReq(opGet, "foo"), fmt.Appendf(nil, "VALUE foo 0 %d\r\n%s\r\nEND\r\n", len(big), big)},
		{"get compressed", newReq(opGet, "foo"), fmt.Appendf(nil, "VALUE foo 8 %d\r\n%s\r\nEND\r\n", len(packed), packed)},
		{"multi-get", newMulti("a", "b", "c", "a"), []byte("VALUE c 1 2\r\ncc\r\nVALUE a 0 1\r\n\n\r\nVALUE a 0 4\r\nEND\n\r\nEND\r\n")},
		{"multi-get compressed", newMulti("x", "y"), fmt.Appendf(nil, "VALUE x 8 %d\r\n%s\r\nVALUE y 0 1\r\ny\r\nEND\r\n", len(packed), packed)},
		{"stats", newReq(opStats, ""), []byte("STAT pid 1\r\nSTAT uptime 22\r\nSTAT version 1.6.21\r\nEND\r\n")},
		{"stored", newReq(opSet, "foo"), []byte("STORED\r\n")},
		{"incr", newReq(opIncr, "foo"), []byte("18446744073709551615\r\n")},
		{"version", newReq(opVersion, ""), []byte("VERSION 1.6.21\r\n")},
		{"server error", newReq(opGet, "foo"), []byte("SERVER_ERROR out of memory\r\n")},
		{"client error", newReq(opSet, "foo"), []byte("CLIENT_ERROR bad data chunk\r\n")},
		{"error", newReq(opSet, "foo"), []byte("ERROR\r\n")},
		{"cas exists", newReq(opCAS, "foo"), []byte("EXISTS\r\n")},
		{"misframed block", newReq(opGet, "foo"), []byte("VALUE foo 0 3\r\nbarXY\r\nEND\r\n")},
		{"second VALUE", newReq(opGet, "foo"), []byte("VALUE foo 0 1\r\na\r\nVALUE foo 0 1\r\nb\r\nEND\r\n")},
		{"unknown key in multi-get", newMulti("a"), []byte("VALUE a 0 1\r\na\r\nVALUE b 0 1\r\nb\r\nEND\r\n")},
		{"over max", func() *request { return &request{op: opGet, key: "foo", maxValue: 2} }, []byte("VALUE foo 0 3\r\nbar\r\nEND\r\n")},
		{"reply then trailing bytes", newReq(opDelete, "foo"), []byte("DELETED\r\nNOPE")},
	}
}

func TestParseTextReplyResumable(t *testing.T) {
	// How far a parser got before it found a stream error does not matter
	// (the connection is discarded), only the error does.
	feed := func(t *testing.T, r *request, chunks ...[]byte) outcome {
		t.Helper()
		o := feed(t, r, chunks...)
		if o.err != nil && o.err != errDiscardConn {
			o.N = 0
		}
		return o
	}
	for _, tc := range resumableReplies() {
		t.Run(tc.name, func(t *testing.T) {
			want := feed(t, tc.req(), tc.reply)
			require.True(t, want.Done || want.err != nil, "the one-shot parse must finish: %+v", want)

			for cut := 0; cut <= len(tc.reply); cut++ {
				got := feed(t, tc.req(), splits(tc.reply, cut)...)
				if !assert.Equal(t, want, got, "split at %d", cut) {
					return
				}
			}
			got := feed(t, tc.req(), bytewise(tc.reply)...)
			assert.Equal(t, want, got, "one byte at a time")

			if len(tc.reply) <= 200 {
				for a := 1; a < len(tc.reply); a++ {
					for b := a; b < len(tc.reply); b++ {
						got := feed(t, tc.req(), splits(tc.reply, a, b)...)
						if !assert.Equal(t, want, got, "split at %d and %d", a, b) {
							return
						}
					}
				}
			}
		})
	}
}

func TestParseTextReplyScratchBounded(t *testing.T) {
	// A multi-get value that spans reads is gathered in the scratch
	// buffer, sized once from the declared length.
	value := strings.Repeat("v", 5000)
	reply := []byte("VALUE foo 0 5000\r\n" + value + "\r\nEND\r\n")
	r := newMulti("foo")()
	o := feed(t, r, splits(reply, 100, 2000, 4000)...)
	require.NoError(t, o.err)
	assert.Equal(t, []hit{{0, value}}, o.Hits)
	assert.GreaterOrEqual(t, cap(r.parse.scratch), 5000)
	assert.Less(t, cap(r.parse.scratch), 2*5000+64, "sized from the declared length")
}

// A single get's value that spans reads goes straight into dst, which
// grows once, by the declared length: nothing is gathered elsewhere.
func TestParseTextReplyIntoDst(t *testing.T) {
	value := strings.Repeat("v", 5000)
	reply := []byte("VALUE foo 3 5000\r\n" + value + "\r\nEND\r\n")
	r := newReq(opGet, "foo")()
	r.dst = append(make([]byte, 0, 8), "pre"...)
	o := feed(t, r, splits(reply, 100, 2000, 4000, len(reply)-7, len(reply)-6)...)
	require.NoError(t, o.err)
	require.True(t, o.Done)
	assert.Equal(t, "pre"+value, o.Dst)
	assert.Equal(t, uint32(3), o.Flags)
	assert.Zero(t, cap(r.parse.scratch), "nothing gathered in scratch")
	assert.Less(t, cap(r.dst), 2*(5000+3)+64, "dst grown from the declared length")

	// A reader that fills want itself (as netConn.readFor does) leaves
	// the parser only the trailer to check.
	r = newReq(opGet, "foo")()
	head := len("VALUE foo 3 5000\r\n")
	n, done, err := parseTextReply(r, reply[:head+10])
	require.NoError(t, err)
	require.False(t, done)
	require.Equal(t, head+10, n)
	require.Len(t, r.parse.want, 4990)
	r.parse.want = r.parse.want[copy(r.parse.want, value[10:]):]
	n, done, err = parseTextReply(r, reply[head+5000:])
	require.NoError(t, err)
	require.True(t, done)
	assert.Equal(t, len(reply)-head-5000, n)
	assert.Equal(t, value, string(r.dst))

	// The block's CRLF is still checked when the value went to dst.
	bad := []byte("VALUE foo 0 5000\r\n" + value + "\n\rEND\r\n")
	o = feed(t, newReq(opGet, "foo")(), splits(bad, 100)...)
	assert.ErrorIs(t, o.err, ErrProtocol)
}

func TestParseTextReplyErrorsAreMatchable(t *testing.T) {
	o := feed(t, newReq(opSet, "foo")(), []byte("BOGUS\r\n"))
	require.Error(t, o.err)
	assert.True(t, errors.Is(o.err, ErrProtocol))
	assert.Contains(t, o.Err, "BOGUS", "the error quotes what the server sent")
}
