package ermc

import (
	"bytes"
	"encoding/base64"
	"errors"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The meta codec against the real memcached, below any driver: requests
// encoded by appendMetaRequest are written together on one raw
// connection, and their replies parsed in order by parseMetaReply, as a
// pipelined lane does. This pins what memcached 1.6.18 accepts and
// answers (opaque tokens on every reply, returned flags, quiet mode).

// metaConn is a raw connection speaking the meta codec.
type metaConn struct {
	t      *testing.T
	nc     net.Conn
	buf    []byte
	opaque uint32
}

func dialMeta(t *testing.T, addr string) *metaConn {
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return &metaConn{t: t, nc: nc, opaque: 1000}
}

// do sends reqs in one write, each with an opaque token of its own, and
// parses the reply of each that expects one. It fails the test on a
// stream error unless the last request is the one that ends the stream.
func (c *metaConn) do(reqs ...*request) {
	c.t.Helper()
	var out []byte
	for _, r := range reqs {
		if r.maxValue == 0 {
			r.maxValue = DefaultMaxValueLength
		}
		if r.op == opGetMulti && r.onValue == nil {
			r.onValue = func(int, []byte) {}
		}
		r.opaque = c.opaque
		c.opaque += uint32(max(1, len(r.keys)))
		out = appendMetaRequest(out, r)
	}
	require.NoError(c.t, c.nc.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := c.nc.Write(out)
	require.NoError(c.t, err)
	for _, r := range reqs {
		if r.noreply {
			continue
		}
		err := c.read(r)
		require.True(c.t, err == nil || err == errDiscardConn, "op %d: %v", r.op, err)
	}
}

// read parses one reply, reading more bytes as needed.
func (c *metaConn) read(r *request) error {
	tmp := make([]byte, 64<<10)
	for {
		n, done, err := parseMetaReply(r, c.buf)
		c.buf = c.buf[n:]
		if done || err != nil {
			return err
		}
		m, rerr := c.nc.Read(tmp)
		if m == 0 && rerr != nil {
			return rerr
		}
		c.buf = append(c.buf, tmp[:m]...)
	}
}

func mreq(op opcode, key string) *request { return &request{op: op, key: key} }

func mstore(op opcode, key, value string, flags uint32, exptime int64) *request {
	return &request{op: op, key: key, value: []byte(value), flags: flags, exptime: exptime}
}

func TestMetaCodecOnMemcached(t *testing.T) {
	srv := startMemcached(t)
	c := dialMeta(t, srv.Addr)

	// Every command of the API, pipelined in one write, with the outcomes
	// the text protocol gives for the same sequence. want is r.err, and
	// check (if any) looks at the rest of the result.
	type step struct {
		r     *request
		want  error
		check func(t *testing.T, r *request)
	}
	value := func(v string, flags uint32) func(t *testing.T, r *request) {
		return func(t *testing.T, r *request) {
			assert.Equal(t, v, string(r.dst))
			assert.Equal(t, flags, r.resFlags)
		}
	}
	number := func(n uint64) func(t *testing.T, r *request) {
		return func(t *testing.T, r *request) { assert.Equal(t, n, r.number) }
	}
	steps := []step{
		{r: mreq(opGet, "k"), want: ErrCacheMiss},
		{r: mstore(opSet, "k", "hello", 7, 0)},
		{r: mreq(opGet, "k"), check: value("hello", 7)},
		{r: mreq(opGets, "k"), check: func(t *testing.T, r *request) { assert.NotZero(t, r.resCAS) }},
		{r: &request{op: opGat, key: "k", exptime: 100}, check: value("hello", 7)},
		{r: &request{op: opTouch, key: "k", exptime: 50}},
		{r: &request{op: opTouch, key: "nope", exptime: 5}, want: ErrCacheMiss},
		{r: mstore(opAdd, "k", "x", 0, 0), want: ErrNotStored},
		{r: mstore(opAdd, "k2", "y", 0, 0)},
		{r: mstore(opReplace, "nope", "x", 0, 0), want: ErrNotStored},
		{r: mstore(opReplace, "k2", "yy", 3, 0)},
		{r: mstore(opAppend, "k", "!", 99, 99)},
		{r: mstore(opPrepend, "k", "<", 0, 0)},
		{r: mstore(opAppend, "nope", "x", 0, 0), want: ErrNotStored},
		{r: mstore(opPrepend, "nope", "x", 0, 0), want: ErrNotStored},
		{r: mreq(opGet, "k"), check: value("<hello!", 7)}, // append and prepend keep the flags
		{r: mreq(opGet, "k2"), check: value("yy", 3)},
		{r: &request{op: opIncr, key: "n", delta: 1}, want: ErrCacheMiss},
		{r: &request{op: opDecr, key: "n", delta: 1}, want: ErrCacheMiss},
		{r: mstore(opSet, "n", "18446744073709551614", 0, 0)},
		{r: &request{op: opIncr, key: "n", delta: 1}, check: number(math.MaxUint64)},
		{r: &request{op: opDecr, key: "n", delta: 5}, check: number(math.MaxUint64 - 5)},
		{r: &request{op: opIncr, key: "n", delta: 10}, check: number(4)},  // wraps at 2^64
		{r: &request{op: opDecr, key: "n", delta: 100}, check: number(0)}, // stops at 0
		{r: mreq(opDelete, "k2")},
		{r: mreq(opDelete, "k2"), want: ErrCacheMiss},
		{r: mreq(opGet, "k2"), want: ErrCacheMiss},
		{r: mreq(opVersion, ""), check: func(t *testing.T, r *request) { assert.True(t, strings.HasPrefix(r.text, "1."), r.text) }},
		{r: mreq(opStats, ""), check: func(t *testing.T, r *request) { assert.NotEmpty(t, r.stats["pid"]) }},
		{r: &request{op: opSet, key: "gone", value: []byte("v"), exptime: -1}},
		{r: mreq(opGet, "gone"), want: ErrCacheMiss}, // a negative TTL stores an expired item
	}
	reqs := make([]*request, len(steps))
	for i, s := range steps {
		reqs[i] = s.r
	}
	c.do(reqs...)
	for i, s := range steps {
		if s.want != nil {
			assert.ErrorIs(t, s.r.err, s.want, "step %d", i)
		} else if assert.NoError(t, s.r.err, "step %d", i) && s.check != nil {
			s.check(t, s.r)
		}
	}

	// CAS: the id gets read, then a stale one.
	gets := mreq(opGets, "k")
	c.do(gets)
	ok, stale, missing := &request{op: opCAS, key: "k", value: []byte("v2"), cas: gets.resCAS}, &request{op: opCAS, key: "k", value: []byte("v3"), cas: gets.resCAS}, &request{op: opCAS, key: "nope", value: []byte("v"), cas: 1}
	c.do(ok, stale, missing)
	assert.NoError(t, ok.err)
	assert.ErrorIs(t, stale.err, ErrCASConflict)
	assert.ErrorIs(t, missing.err, ErrCacheMiss)

	// Non-numeric incr: memcached's CLIENT_ERROR, matched as ErrNonNumeric.
	nn := &request{op: opIncr, key: "k", delta: 1}
	c.do(nn)
	assert.ErrorIs(t, nn.err, ErrNonNumeric)
}

func TestMetaCodecMultiGetOnMemcached(t *testing.T) {
	srv := startMemcached(t)
	c := dialMeta(t, srv.Addr)
	c.do(mstore(opSet, "a", "A", 0, 0), mstore(opSet, "c", "C", 5, 0), mstore(opSet, "sp ace", "S", 0, 0))
	for _, start := range []uint32{7, math.MaxUint32 - 1} { // the tokens wrap in the second
		var hits []hit
		keys := []string{"a", "b", "c", "a", "sp ace", "zz"}
		r := &request{op: opGetMulti, keys: keys, onValue: func(i int, v []byte) { hits = append(hits, hit{i, string(v)}) }}
		c.opaque = start
		c.do(r, mreq(opVersion, ""))
		require.NoError(t, r.err)
		assert.Equal(t, []hit{{0, "A"}, {2, "C"}, {3, "A"}, {4, "S"}}, hits, "from opaque %d", start)
	}
}

func TestMetaCodecQuietWritesOnMemcached(t *testing.T) {
	srv := startMemcached(t, "-I", "1k", "-o", "slab_chunk_max=512")
	c := dialMeta(t, srv.Addr)
	quiet := func(r *request) *request { r.noreply = true; return r }
	// Successes answer nothing; failures and errors answer before MN, and
	// the fence drops them; the get after it gets its own reply.
	get := mreq(opGet, "k")
	c.do(
		quiet(mstore(opSet, "k", "v", 0, 0)),
		quiet(mstore(opReplace, "nope", "v", 0, 0)),                  // NS
		quiet(mreq(opDelete, "nope")),                                // NF
		quiet(&request{op: opTouch, key: "k", exptime: 60}),          // HD: mg answers a hit even when quiet
		quiet(mstore(opSet, "big", strings.Repeat("x", 4000), 0, 0)), // SERVER_ERROR
		quiet(&request{op: opIncr, key: "nope", delta: 1}),           // NF
		&request{op: opFence},
		get,
	)
	require.NoError(t, get.err)
	assert.Equal(t, "v", string(get.dst))
	assert.Empty(t, c.buf, "nothing left over")
}

func TestMetaCodecBase64KeysOnMemcached(t *testing.T) {
	srv := startMemcached(t)
	c := dialMeta(t, srv.Addr)
	for _, key := range []string{"a b", "\x00\x01", "tab\tand\r\nCRLF\x7f", strings.Repeat(" ", maxBase64Key)} {
		require.True(t, validMetaKey(key, DefaultMaxKeyLength))
		set, get := mstore(opSet, key, "v:"+key, 3, 0), mreq(opGets, key)
		c.do(set, get)
		require.NoError(t, set.err)
		require.NoError(t, get.err, "%q", key)
		assert.Equal(t, "v:"+key, string(get.dst))

		// The server stores the key's own bytes: a raw mg of the encoding
		// with b finds the item, and k returns the same encoding.
		enc := base64.StdEncoding.EncodeToString([]byte(key))
		line := rawExchange(t, c, "mg "+enc+" b k v\r\n")
		assert.True(t, strings.HasPrefix(line, "VA "+strconv.Itoa(len("v:"+key))+" k"+enc+" b\r\nv:"), "%q", line)
	}
	// One byte more than maxBase64Key is refused by memcached itself.
	enc := base64.StdEncoding.EncodeToString([]byte(strings.Repeat(" ", maxBase64Key+1)))
	assert.Equal(t, "CLIENT_ERROR bad command line format\r\n", rawExchange(t, c, "mg "+enc+" b v\r\n"))
}

// rawExchange writes line on c's connection and returns what memcached
// answers to it and an mn behind it, without the MN.
func rawExchange(t *testing.T, c *metaConn, line string) string {
	t.Helper()
	_, err := c.nc.Write([]byte(line + "mn\r\n"))
	require.NoError(t, err)
	tmp := make([]byte, 4096)
	for !bytes.HasSuffix(c.buf, []byte("MN\r\n")) {
		n, err := c.nc.Read(tmp)
		require.NoError(t, err)
		c.buf = append(c.buf, tmp[:n]...)
	}
	out := string(c.buf[:len(c.buf)-4])
	c.buf = c.buf[:0]
	return out
}

func TestMetaCodecStampedeFlagsOnMemcached(t *testing.T) {
	srv := startMemcached(t)
	c := dialMeta(t, srv.Addr)
	lease := func() *request {
		return &request{op: opGets, key: "s", meta: metaFields{vivify: 30, wantTTL: true}}
	}
	// A miss with vivify: the first caller wins the load, the next is told
	// a win is out.
	first, second := lease(), lease()
	c.do(first, second)
	require.NoError(t, first.err)
	assert.True(t, first.meta.win)
	assert.False(t, first.meta.winTaken)
	assert.True(t, first.found)
	assert.Empty(t, first.dst)
	require.NoError(t, second.err)
	assert.False(t, second.meta.win)
	assert.True(t, second.meta.winTaken)

	// The winner stores with the CAS id of the empty item.
	store := &request{op: opCAS, key: "s", value: []byte("loaded"), cas: first.resCAS, exptime: 100}
	c.do(store)
	require.NoError(t, store.err)

	// Invalidate: the item stays readable, stale; one reader wins the reload.
	inv := &request{op: opDelete, key: "s", exptime: 30, meta: metaFields{invalidate: true}}
	r1, r2 := lease(), lease()
	c.do(inv, r1, r2)
	require.NoError(t, inv.err)
	assert.Equal(t, "loaded", string(r1.dst))
	assert.True(t, r1.meta.stale)
	assert.True(t, r1.meta.win)
	assert.True(t, r1.meta.hasTTL)
	assert.Equal(t, int64(30), r1.meta.ttl)
	assert.True(t, r2.meta.stale)
	assert.True(t, r2.meta.winTaken)
	assert.False(t, r2.meta.win)

	// Early refresh: with less TTL left than R, one reader wins.
	set := mstore(opSet, "r", "v", 0, 100)
	e1, e2 := &request{op: opGet, key: "r", meta: metaFields{recache: 200}}, &request{op: opGet, key: "r", meta: metaFields{recache: 200}}
	c.do(set, e1, e2)
	assert.True(t, e1.meta.win)
	assert.True(t, e2.meta.winTaken)
	assert.Equal(t, "v", string(e2.dst))

	// A missing key: md I answers NF.
	gone := &request{op: opDelete, key: "nope", meta: metaFields{invalidate: true}}
	c.do(gone)
	assert.True(t, errors.Is(gone.err, ErrCacheMiss))
}
