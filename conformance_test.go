package ermc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The conformance suite: every public operation and every error mapping of
// the README, run unchanged on every wire driver. Nothing here looks at which
// driver runs: a case that passes on Text must pass on Binary and Ultra.
//
// One memcached per driver serves the table's cases; each case works under
// its own key prefix, so cases do not see each other's items. Cases that need
// a server of their own (FlushAll, a small item size) start one.

// confEnv is what a conformance case works with.
type confEnv struct {
	t      *testing.T
	proto  Protocol
	srv    *testServer
	c      *Client // a client of the case's options on srv
	prefix string
}

// key names an item of this case.
func (e *confEnv) key(name string) string { return e.prefix + name }

// client makes another client of the same driver on the same server.
func (e *confEnv) client(opts Options) *Client {
	return newTestClient(e.t, e.srv.Addr, e.proto, opts)
}

// countingClient makes a client whose dials are counted, to prove that a
// refused request never reached the network.
func (e *confEnv) countingClient(opts Options) (*Client, *atomic.Int32) {
	var dials atomic.Int32
	opts.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return e.client(opts), &dials
}

// malformedKeys are keys proto refuses before sending anything. Meta
// carries spaces and control bytes base64-encoded, in keys of at most
// maxBase64Key bytes.
func malformedKeys(proto Protocol) map[string]string {
	if proto == Meta {
		return map[string]string{
			"empty":       "",
			"251":         strings.Repeat("k", 251),
			"space, 187":  strings.Repeat(" ", 187),
			"nul, 187":    "\x00" + strings.Repeat("k", 186),
			"trailer 250": strings.Repeat("k", 248) + "\r\n",
		}
	}
	return map[string]string{
		"empty":   "",
		"251":     strings.Repeat("k", 251),
		"space":   "a b",
		"newline": "a\nb",
		"cr":      "a\rb",
		"tab":     "a\tb",
		"nul":     "a\x00b",
		"del":     "a\x7fb",
		"trailer": "ab\r\n",
	}
}

// aMalformedKey is a key proto refuses, holding a space.
func aMalformedKey(proto Protocol) string {
	if proto == Meta {
		return strings.Repeat("bad key ", 24) // 192 bytes
	}
	return "bad key"
}

type confCase struct {
	name string // also the key prefix: no spaces
	opts Options
	run  func(t *testing.T, e *confEnv)
}

func TestConformance(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startMemcached(t)
			for _, tc := range conformanceCases {
				t.Run(tc.name, func(t *testing.T) {
					e := &confEnv{t: t, proto: proto, srv: srv, prefix: tc.name + ":"}
					e.c = e.client(tc.opts)
					tc.run(t, e)
				})
			}
		})
	}
}

// eventuallyMiss polls key until it is gone, failing if it is still there
// after within. Expiry is checked by outcome, never by timing: memcached's
// clock ticks in whole seconds.
func eventuallyMiss(t *testing.T, c *Client, key string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, err := c.Get(bg, key, nil)
		if errors.Is(err, ErrCacheMiss) {
			return
		}
		require.NoError(t, err, "Get %q while waiting for expiry", key)
		require.False(t, time.Now().After(deadline), "%q still present after %v", key, within)
		time.Sleep(100 * time.Millisecond)
	}
}

// rawGet reads key with a plain text protocol connection, bypassing the
// client, to see how an item is really stored.
func rawGet(t *testing.T, addr, key string) (flags uint32, data []byte, found bool) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 3*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = fmt.Fprintf(nc, "get %s\r\n", key)
	require.NoError(t, err)
	br := bufio.NewReader(nc)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	line = strings.TrimSuffix(line, "\r\n")
	if line == "END" {
		return 0, nil, false
	}
	fields := strings.Fields(line)
	require.Len(t, fields, 4, "VALUE line %q", line)
	require.Equal(t, "VALUE", fields[0])
	f, err := strconv.ParseUint(fields[2], 10, 32)
	require.NoError(t, err)
	n, err := strconv.Atoi(fields[3])
	require.NoError(t, err)
	data = make([]byte, n+2)
	_, err = io.ReadFull(br, data)
	require.NoError(t, err)
	require.Equal(t, "\r\n", string(data[n:]))
	end, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "END\r\n", end)
	return uint32(f), data[:n], true
}

// requireTTL asserts the remaining TTL of key in seconds, as memcached's
// meta get reports it (-1: no expiry). Positive TTLs may be a few seconds
// off: the check runs a moment after the store, on memcached's coarse clock.
func requireTTL(t *testing.T, addr, key string, want int64) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 3*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = fmt.Fprintf(nc, "mg %s t\r\n", key)
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	ttlField, ok := strings.CutPrefix(strings.TrimSuffix(line, "\r\n"), "HD t")
	require.True(t, ok, "mg %s t: %q", key, line)
	got, err := strconv.ParseInt(ttlField, 10, 64)
	require.NoError(t, err, "mg %s t: %q", key, line)
	if want < 0 {
		require.Equal(t, want, got, "TTL of %q", key)
		return
	}
	require.True(t, got >= want-5 && got <= want+2, "TTL of %q is %d, want about %d", key, got, want)
}

// rawSet stores an item with chosen flags through a plain text protocol
// connection, as another client (a Python service, say) would.
func rawSet(t *testing.T, addr, key string, flags uint32, data []byte) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 3*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(5*time.Second)))
	var req bytes.Buffer
	fmt.Fprintf(&req, "set %s %d 0 %d\r\n", key, flags, len(data))
	req.Write(data)
	req.WriteString("\r\n")
	_, err = nc.Write(req.Bytes())
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "STORED\r\n", line)
}

// pythonLZ4 frames value as python-lz4's lz4.block.compress does: the
// original length, little-endian, then one raw LZ4 block.
func pythonLZ4(t *testing.T, value []byte) []byte {
	t.Helper()
	out := make([]byte, 4+lz4.CompressBlockBound(len(value)))
	binary.LittleEndian.PutUint32(out, uint32(len(value)))
	var c lz4.Compressor
	n, err := c.CompressBlock(value, out[4:])
	require.NoError(t, err)
	require.NotZero(t, n, "value did not compress")
	return out[:4+n]
}

// slowAbortConn is a connection on which setting a deadline in the past
// (how a driver interrupts blocked I/O when a context ends) takes a while, as
// it does when the interrupting goroutine is scheduled late.
type slowAbortConn struct{ net.Conn }

func (c slowAbortConn) SetDeadline(t time.Time) error {
	if !t.IsZero() && t.Before(time.Now()) {
		time.Sleep(50 * time.Millisecond)
	}
	return c.Conn.SetDeadline(t)
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
}

// keyedOps are every public operation that takes a key, as closures over a
// client, for checks that must hold for all of them.
var keyedOps = []struct {
	name string
	op   func(c *Client, key string) error
}{
	{"Get", func(c *Client, k string) error { _, err := c.Get(bg, k, nil); return err }},
	{"Gets", func(c *Client, k string) error { _, _, err := c.Gets(bg, k, nil); return err }},
	{"GetAndTouch", func(c *Client, k string) error { _, err := c.GetAndTouch(bg, k, time.Hour, nil); return err }},
	{"GetMulti", func(c *Client, k string) error { return c.GetMulti(bg, []string{k}, func(int, []byte) {}) }},
	{"GetMultiMap", func(c *Client, k string) error { _, err := c.GetMultiMap(bg, []string{k}); return err }},
	{"Set", func(c *Client, k string) error { return c.Set(bg, k, []byte("v"), 0) }},
	{"Add", func(c *Client, k string) error { return c.Add(bg, k, []byte("v"), 0) }},
	{"Replace", func(c *Client, k string) error { return c.Replace(bg, k, []byte("v"), 0) }},
	{"Append", func(c *Client, k string) error { return c.Append(bg, k, []byte("v")) }},
	{"Prepend", func(c *Client, k string) error { return c.Prepend(bg, k, []byte("v")) }},
	{"CompareAndSwap", func(c *Client, k string) error { return c.CompareAndSwap(bg, k, []byte("v"), 1, 0) }},
	{"CAS", func(c *Client, k string) error { return c.CAS(bg, k, []byte("v"), 0) }},
	{"Incr", func(c *Client, k string) error { _, err := c.Incr(bg, k, 1); return err }},
	{"Decr", func(c *Client, k string) error { _, err := c.Decr(bg, k, 1); return err }},
	{"Delete", func(c *Client, k string) error { return c.Delete(bg, k) }},
	{"Touch", func(c *Client, k string) error { return c.Touch(bg, k, time.Hour) }},
	{"SetInt", func(c *Client, k string) error { return c.SetInt(bg, k, 1, 0) }},
	{"GetInt", func(c *Client, k string) error { _, err := c.GetInt(bg, k); return err }},
	{"SetObject", func(c *Client, k string) error { return c.SetObject(bg, k, []int{1}, 0) }},
	{"GetObject", func(c *Client, k string) error { var v []int; return c.GetObject(bg, k, &v) }},
}

// storeOps are the operations that send a value.
var storeOps = []struct {
	name string
	op   func(c *Client, key string, value []byte) error
}{
	{"Set", func(c *Client, k string, v []byte) error { return c.Set(bg, k, v, 0) }},
	{"Add", func(c *Client, k string, v []byte) error { return c.Add(bg, k, v, 0) }},
	{"Replace", func(c *Client, k string, v []byte) error { return c.Replace(bg, k, v, 0) }},
	{"Append", func(c *Client, k string, v []byte) error { return c.Append(bg, k, v) }},
	{"Prepend", func(c *Client, k string, v []byte) error { return c.Prepend(bg, k, v) }},
	{"CompareAndSwap", func(c *Client, k string, v []byte) error { return c.CompareAndSwap(bg, k, v, 1, 0) }},
	{"CAS", func(c *Client, k string, v []byte) error { return c.CAS(bg, k, v, 0) }},
}

var conformanceCases = []confCase{
	{name: "GetHit", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "hello")
		v, err := c.Get(bg, k, nil)
		require.NoError(t, err)
		assert.Equal(t, "hello", string(v))

		// The value is appended to dst, in dst's array when it has room.
		dst := make([]byte, 3, 64)
		copy(dst, "abc")
		v, err = c.Get(bg, k, dst)
		require.NoError(t, err)
		assert.Equal(t, "abchello", string(v))
		assert.Same(t, &dst[0], &v[0], "value not appended in place to a dst with room")

		// A dst without room grows; its prefix is kept.
		v, err = c.Get(bg, k, []byte("prefix-"))
		require.NoError(t, err)
		assert.Equal(t, "prefix-hello", string(v))
	}},
	{name: "GetMiss", run: func(t *testing.T, e *confEnv) {
		c := e.c
		dst := []byte("keep")
		v, err := c.Get(bg, e.key("absent"), dst)
		require.ErrorIs(t, err, ErrCacheMiss)
		assert.Equal(t, "keep", string(v), "dst must come back unchanged on a miss")
		assert.Len(t, v, 4)
		v, err = c.Get(bg, e.key("absent"), nil)
		require.ErrorIs(t, err, ErrCacheMiss)
		assert.Empty(t, v)
	}},
	{name: "GetValueShapes", run: func(t *testing.T, e *confEnv) {
		c := e.c
		// Empty value, protocol delimiters inside a value, every byte
		// value, and a value larger than any read buffer.
		all := make([]byte, 256)
		for i := range all {
			all[i] = byte(i)
		}
		big := make([]byte, 700_000)
		rand.New(rand.NewSource(1)).Read(big)
		for name, value := range map[string][]byte{
			"empty":  {},
			"crlf":   []byte("a\r\nEND\r\nVALUE x 0 1\r\n"),
			"bytes":  all,
			"big":    big,
			"utf8-é": []byte("héllo wörld"),
		} {
			k := e.key(name)
			require.NoError(t, c.Set(bg, k, value, 0), name)
			v, err := c.Get(bg, k, nil)
			require.NoError(t, err, name)
			require.True(t, bytes.Equal(value, v), "%s: value changed in round trip (len %d, got %d)", name, len(value), len(v))
		}
	}},
	{name: "Gets", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "one")
		v, cas1, err := c.Gets(bg, k, []byte("x"))
		require.NoError(t, err)
		assert.Equal(t, "xone", string(v))
		assert.NotZero(t, cas1, "CAS id")

		_, again, err := c.Gets(bg, k, nil)
		require.NoError(t, err)
		assert.Equal(t, cas1, again, "CAS id changed without a write")

		mustSet(t, c, k, "two")
		v, cas2, err := c.Gets(bg, k, nil)
		require.NoError(t, err)
		assert.Equal(t, "two", string(v))
		assert.NotZero(t, cas2)
		assert.NotEqual(t, cas1, cas2, "CAS id must change after a set")

		dst := []byte("keep")
		v, cas, err := c.Gets(bg, e.key("absent"), dst)
		require.ErrorIs(t, err, ErrCacheMiss)
		assert.Equal(t, "keep", string(v))
		assert.Zero(t, cas)
	}},
	{name: "GetAndTouch", run: func(t *testing.T, e *confEnv) {
		c := e.c
		// A hit returns the value and sets the TTL: an item stored without
		// expiry expires after a 1s GetAndTouch.
		k := e.key("k")
		mustSet(t, c, k, "value")
		v, err := c.GetAndTouch(bg, k, time.Second, []byte("pre:"))
		require.NoError(t, err)
		assert.Equal(t, "pre:value", string(v))
		eventuallyMiss(t, c, k, 5*time.Second)

		// A negative TTL expires the item at once.
		k2 := e.key("k2")
		mustSet(t, c, k2, "value")
		v, err = c.GetAndTouch(bg, k2, -time.Second, nil)
		require.NoError(t, err)
		assert.Equal(t, "value", string(v))
		requireMiss(t, c, k2)

		// TTL 0 makes an expiring item permanent; a TTL replaces the old
		// one (checked with memcached's meta get, which reports it).
		k3 := e.key("k3")
		require.NoError(t, c.Set(bg, k3, []byte("v3"), time.Hour))
		v, err = c.GetAndTouch(bg, k3, 0, nil)
		require.NoError(t, err)
		assert.Equal(t, "v3", string(v))
		requireTTL(t, e.srv.Addr, k3, -1)
		_, err = c.GetAndTouch(bg, k3, 2*time.Hour, nil)
		require.NoError(t, err)
		requireTTL(t, e.srv.Addr, k3, 7200)

		dst := []byte("keep")
		v, err = c.GetAndTouch(bg, e.key("absent"), time.Hour, dst)
		require.ErrorIs(t, err, ErrCacheMiss)
		assert.Equal(t, "keep", string(v))
	}},
	{name: "GetMulti", run: func(t *testing.T, e *confEnv) {
		c := e.c
		keys := make([]string, 5)
		for i := range keys {
			keys[i] = e.key("k" + strconv.Itoa(i))
			if i%2 == 0 {
				mustSet(t, c, keys[i], "v"+strconv.Itoa(i))
			}
		}
		got := map[int]string{}
		err := c.GetMulti(bg, keys, func(i int, v []byte) {
			_, dup := got[i]
			assert.False(t, dup, "index %d reported twice", i)
			got[i] = string(v)
		})
		require.NoError(t, err)
		assert.Equal(t, map[int]string{0: "v0", 2: "v2", 4: "v4"}, got)

		// All misses: no call, no error.
		calls := 0
		require.NoError(t, c.GetMulti(bg, []string{keys[1], keys[3]}, func(int, []byte) { calls++ }))
		assert.Zero(t, calls)
	}},
	{name: "GetMultiDuplicates", run: func(t *testing.T, e *confEnv) {
		// A key asked for twice is reported at each of its indexes.
		c, a, b := e.c, e.key("a"), e.key("b")
		mustSet(t, c, a, "A")
		mustSet(t, c, b, "B")
		got := map[int]string{}
		err := c.GetMulti(bg, []string{a, b, a, e.key("miss"), a}, func(i int, v []byte) {
			_, dup := got[i]
			assert.False(t, dup, "index %d reported twice", i)
			got[i] = string(v)
		})
		require.NoError(t, err)
		assert.Equal(t, map[int]string{0: "A", 1: "B", 2: "A", 4: "A"}, got)
	}},
	{name: "GetMulti100", run: func(t *testing.T, e *confEnv) {
		c := e.c
		keys := make([]string, 100)
		for i := range keys {
			keys[i] = e.key(fmt.Sprintf("k%03d", i))
			mustSet(t, c, keys[i], strings.Repeat(strconv.Itoa(i), i%7+1))
		}
		got := map[int]string{}
		require.NoError(t, c.GetMulti(bg, keys, func(i int, v []byte) {
			require.True(t, i >= 0 && i < len(keys), "index %d out of range", i)
			got[i] = string(v)
		}))
		require.Len(t, got, 100)
		for i := range keys {
			assert.Equal(t, strings.Repeat(strconv.Itoa(i), i%7+1), got[i], "index %d", i)
		}
	}},
	{name: "GetMultiEmpty", run: func(t *testing.T, e *confEnv) {
		c, dials := e.countingClient(Options{})
		calls := 0
		require.NoError(t, c.GetMulti(bg, nil, func(int, []byte) { calls++ }))
		require.NoError(t, c.GetMulti(bg, []string{}, func(int, []byte) { calls++ }))
		assert.Zero(t, calls)
		m, err := c.GetMultiMap(bg, nil)
		require.NoError(t, err)
		assert.Empty(t, m)
		assert.Zero(t, dials.Load(), "an empty multi-get must not touch the network")
	}},
	{name: "GetMultiMalformed", run: func(t *testing.T, e *confEnv) {
		good := e.key("good")
		mustSet(t, e.c, good, "v")
		keys := []string{good, e.key(aMalformedKey(e.proto)), good}

		// Nothing is sent: a fresh client never dials...
		c, dials := e.countingClient(Options{})
		calls := 0
		err := c.GetMulti(bg, keys, func(int, []byte) { calls++ })
		require.ErrorIs(t, err, ErrMalformedKey)
		assert.Zero(t, calls)
		_, err = c.GetMultiMap(bg, keys)
		require.ErrorIs(t, err, ErrMalformedKey)
		assert.Zero(t, dials.Load(), "a multi-get with a malformed key reached the network")

		// ...and a connected one sends no get: the server counts none.
		before := statInt(t, e.c, "cmd_get")
		err = e.c.GetMulti(bg, keys, func(int, []byte) { calls++ })
		require.ErrorIs(t, err, ErrMalformedKey)
		assert.Zero(t, calls)
		assert.Equal(t, before, statInt(t, e.c, "cmd_get"), "server saw a get")
	}},
	{name: "GetMultiMap", run: func(t *testing.T, e *confEnv) {
		c, a, b := e.c, e.key("a"), e.key("b")
		mustSet(t, c, a, "A")
		mustSet(t, c, b, "B")
		m, err := c.GetMultiMap(bg, []string{a, e.key("miss"), b})
		require.NoError(t, err)
		assert.Equal(t, map[string][]byte{a: []byte("A"), b: []byte("B")}, m)

		// The map holds copies that later calls do not overwrite.
		mustSet(t, c, a, "changed")
		m2, err := c.GetMultiMap(bg, []string{a, b})
		require.NoError(t, err)
		assert.Equal(t, "A", string(m[a]))
		assert.Equal(t, "changed", string(m2[a]))
	}},
	{name: "Set", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "one")
		requireValue(t, c, k, "one")
		mustSet(t, c, k, "two")
		requireValue(t, c, k, "two")
		// Set does not keep the caller's slice.
		buf := []byte("three")
		require.NoError(t, c.Set(bg, k, buf, 0))
		copy(buf, "XXXXX")
		requireValue(t, c, k, "three")
	}},
	{name: "Add", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		require.NoError(t, c.Add(bg, k, []byte("first"), 0))
		requireValue(t, c, k, "first")
		require.ErrorIs(t, c.Add(bg, k, []byte("second"), 0), ErrNotStored, "add on a present key")
		requireValue(t, c, k, "first")
	}},
	{name: "Replace", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		require.ErrorIs(t, c.Replace(bg, k, []byte("x"), 0), ErrNotStored, "replace on a missing key")
		requireMiss(t, c, k)
		mustSet(t, c, k, "yes")
		require.NoError(t, c.Replace(bg, k, []byte("no"), 0))
		requireValue(t, c, k, "no")
	}},
	{name: "AppendPrepend", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		require.ErrorIs(t, c.Append(bg, k, []byte("x")), ErrNotStored, "append on a missing key")
		require.ErrorIs(t, c.Prepend(bg, k, []byte("x")), ErrNotStored, "prepend on a missing key")
		requireMiss(t, c, k)
		mustSet(t, c, k, "a")
		require.NoError(t, c.Append(bg, k, []byte("b")))
		require.NoError(t, c.Append(bg, k, []byte("c")))
		requireValue(t, c, k, "abc")
		require.NoError(t, c.Prepend(bg, k, []byte("<")))
		requireValue(t, c, k, "<abc")
	}},
	{name: "CompareAndSwap", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "v1")
		_, id, err := c.Gets(bg, k, nil)
		require.NoError(t, err)
		require.NoError(t, c.CompareAndSwap(bg, k, []byte("v2"), id, 0))
		requireValue(t, c, k, "v2")

		// The swap changed the id: the old one is stale.
		require.ErrorIs(t, c.CompareAndSwap(bg, k, []byte("v3"), id, 0), ErrCASConflict)
		requireValue(t, c, k, "v2")

		// A modification by anyone else makes a read id stale.
		_, id, err = c.Gets(bg, k, nil)
		require.NoError(t, err)
		other := e.client(Options{})
		mustSet(t, other, k, "other")
		require.ErrorIs(t, c.CompareAndSwap(bg, k, []byte("v4"), id, 0), ErrCASConflict)
		requireValue(t, c, k, "other")

		// A deleted key is a miss.
		_, id, err = c.Gets(bg, k, nil)
		require.NoError(t, err)
		require.NoError(t, c.Delete(bg, k))
		require.ErrorIs(t, c.CompareAndSwap(bg, k, []byte("v5"), id, 0), ErrCacheMiss)
		requireMiss(t, c, k)
	}},
	{name: "CacheCAS", opts: Options{CacheCAS: true}, run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "1")
		_, _, err := c.Gets(bg, k, nil)
		require.NoError(t, err)
		// The walkthrough: the first CAS after Gets succeeds, the second
		// with the same remembered id conflicts.
		require.NoError(t, c.CAS(bg, k, []byte("21"), 0))
		requireValue(t, c, k, "21")
		require.ErrorIs(t, c.CAS(bg, k, []byte("22"), 0), ErrCASConflict)
		requireValue(t, c, k, "21")

		// Gets again refreshes the id.
		_, _, err = c.Gets(bg, k, nil)
		require.NoError(t, err)
		require.NoError(t, c.CAS(bg, k, []byte("23"), 0))
		requireValue(t, c, k, "23")

		// A change by another client is detected.
		_, _, err = c.Gets(bg, k, nil)
		require.NoError(t, err)
		mustSet(t, e.client(Options{}), k, "theirs")
		require.ErrorIs(t, c.CAS(bg, k, []byte("mine"), 0), ErrCASConflict)
		requireValue(t, c, k, "theirs")

		// No id remembered: CAS is a plain set, every time.
		k2 := e.key("never-read")
		require.NoError(t, c.CAS(bg, k2, []byte("a"), 0))
		require.NoError(t, c.CAS(bg, k2, []byte("b"), 0))
		requireValue(t, c, k2, "b")

		// ResetCAS forgets: a stale id is no longer sent.
		_, _, err = c.Gets(bg, k, nil)
		require.NoError(t, err)
		mustSet(t, e.client(Options{}), k, "theirs again")
		c.ResetCAS()
		require.NoError(t, c.CAS(bg, k, []byte("after reset"), 0))
		requireValue(t, c, k, "after reset")

		// A remembered id for a key that is gone: a miss.
		_, _, err = c.Gets(bg, k, nil)
		require.NoError(t, err)
		require.NoError(t, c.Delete(bg, k))
		require.ErrorIs(t, c.CAS(bg, k, []byte("x"), 0), ErrCacheMiss)
	}},
	{name: "CASWithoutCacheCAS", run: func(t *testing.T, e *confEnv) {
		// Without CacheCAS, Gets remembers nothing and CAS is a plain set.
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "1")
		_, _, err := c.Gets(bg, k, nil)
		require.NoError(t, err)
		mustSet(t, e.client(Options{}), k, "theirs")
		require.NoError(t, c.CAS(bg, k, []byte("mine"), 0))
		require.NoError(t, c.CAS(bg, k, []byte("mine2"), 0))
		requireValue(t, c, k, "mine2")
	}},
	{name: "IncrDecr", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("n")
		mustSet(t, c, k, "1")
		for _, step := range []struct {
			incr  bool
			delta uint64
			want  uint64
		}{{true, 1, 2}, {true, 1, 3}, {false, 1, 2}, {true, 100, 102}, {false, 2, 100}, {true, 0, 100}} {
			var n uint64
			var err error
			if step.incr {
				n, err = c.Incr(bg, k, step.delta)
			} else {
				n, err = c.Decr(bg, k, step.delta)
			}
			require.NoError(t, err)
			require.Equal(t, step.want, n, "incr=%v delta=%d", step.incr, step.delta)
		}
		requireValue(t, c, k, "100")

		_, err := c.Incr(bg, e.key("absent"), 1)
		require.ErrorIs(t, err, ErrCacheMiss)
		_, err = c.Decr(bg, e.key("absent"), 1)
		require.ErrorIs(t, err, ErrCacheMiss)
		requireMiss(t, c, e.key("absent"))
	}},
	{name: "IncrDecrBounds", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("n")
		// Decr stops at 0.
		mustSet(t, c, k, "5")
		n, err := c.Decr(bg, k, 10)
		require.NoError(t, err)
		assert.Equal(t, uint64(0), n)
		n, err = c.Decr(bg, k, 1)
		require.NoError(t, err)
		assert.Equal(t, uint64(0), n)

		// Incr wraps at 2^64.
		mustSet(t, c, k, "18446744073709551615")
		n, err = c.Incr(bg, k, 1)
		require.NoError(t, err)
		assert.Equal(t, uint64(0), n)
		mustSet(t, c, k, "18446744073709551610")
		n, err = c.Incr(bg, k, 10)
		require.NoError(t, err)
		assert.Equal(t, uint64(4), n)
		mustSet(t, c, k, "1")
		n, err = c.Incr(bg, k, 1<<64-1)
		require.NoError(t, err)
		assert.Equal(t, uint64(0), n)

		// Decr from 10 to 9 leaves memcached's space padding in the item;
		// GetInt reads through it.
		mustSet(t, c, k, "10")
		n, err = c.Decr(bg, k, 1)
		require.NoError(t, err)
		assert.Equal(t, uint64(9), n)
		i, err := c.GetInt(bg, k)
		require.NoError(t, err)
		assert.Equal(t, int64(9), i)
		n, err = c.Incr(bg, k, 1)
		require.NoError(t, err)
		assert.Equal(t, uint64(10), n)
	}},
	{name: "IncrNonNumeric", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("s")
		mustSet(t, c, k, "abc")
		_, err := c.Incr(bg, k, 1)
		require.ErrorIs(t, err, ErrNonNumeric)
		assert.NotErrorIs(t, err, ErrCacheMiss)
		_, err = c.Decr(bg, k, 1)
		require.ErrorIs(t, err, ErrNonNumeric)
		requireValue(t, c, k, "abc")
		// The client is still in step with the server afterwards.
		n := e.key("n")
		mustSet(t, c, n, "41")
		v, err := c.Incr(bg, n, 1)
		require.NoError(t, err)
		assert.Equal(t, uint64(42), v)
	}},
	{name: "Delete", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "v")
		require.NoError(t, c.Delete(bg, k))
		requireMiss(t, c, k)
		require.ErrorIs(t, c.Delete(bg, k), ErrCacheMiss)
	}},
	{name: "Touch", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "v")
		require.NoError(t, c.Touch(bg, k, 2*time.Hour))
		requireTTL(t, e.srv.Addr, k, 7200)
		require.NoError(t, c.Touch(bg, k, 0))
		requireTTL(t, e.srv.Addr, k, -1)
		require.NoError(t, c.Touch(bg, k, time.Second))
		eventuallyMiss(t, c, k, 5*time.Second)
		require.ErrorIs(t, c.Touch(bg, k, time.Hour), ErrCacheMiss)
		require.ErrorIs(t, c.Touch(bg, e.key("never"), time.Hour), ErrCacheMiss)

		// A negative TTL expires at once.
		mustSet(t, c, k, "v")
		require.NoError(t, c.Touch(bg, k, -time.Second))
		requireMiss(t, c, k)
	}},
	{name: "TTL", run: func(t *testing.T, e *confEnv) {
		c := e.c
		// 1s expires.
		k1 := e.key("1s")
		require.NoError(t, c.Set(bg, k1, []byte("v"), time.Second))
		eventuallyMiss(t, c, k1, 5*time.Second)

		// A sub-second TTL rounds up to 1s, not down to 0 (no expiry).
		kms := e.key("10ms")
		require.NoError(t, c.Set(bg, kms, []byte("v"), 10*time.Millisecond))
		eventuallyMiss(t, c, kms, 5*time.Second)

		// 0 never expires; an hour is readable now.
		k0, kh := e.key("0"), e.key("1h")
		require.NoError(t, c.Set(bg, k0, []byte("v0"), 0))
		require.NoError(t, c.Set(bg, kh, []byte("vh"), time.Hour))
		requireValue(t, c, k0, "v0")
		requireValue(t, c, kh, "vh")
		requireTTL(t, e.srv.Addr, k0, -1)
		requireTTL(t, e.srv.Addr, kh, 3600)

		// Over 30 days memcached reads an absolute time: the client must
		// convert, or the item would be stored already expired.
		for _, ttl := range []time.Duration{30 * 24 * time.Hour, 30*24*time.Hour + time.Second, 31 * 24 * time.Hour, 365 * 24 * time.Hour} {
			k := e.key("long" + strconv.Itoa(int(ttl/time.Second)))
			require.NoError(t, c.Set(bg, k, []byte("long"), ttl), "ttl %v", ttl)
			requireValue(t, c, k, "long")
			requireTTL(t, e.srv.Addr, k, int64(ttl/time.Second))
			require.NoError(t, c.Touch(bg, k, time.Hour))
			require.NoError(t, c.Touch(bg, k, ttl), "touch ttl %v", ttl)
			requireValue(t, c, k, "long")
			requireTTL(t, e.srv.Addr, k, int64(ttl/time.Second))
		}

		// A negative TTL stores an already expired item: it replaces
		// what was there and reads as a miss.
		kn := e.key("neg")
		mustSet(t, c, kn, "old")
		require.NoError(t, c.Set(bg, kn, []byte("new"), -time.Second))
		requireMiss(t, c, kn)
	}},
	{name: "Stats", run: func(t *testing.T, e *confEnv) {
		st, err := e.c.Stats(bg)
		require.NoError(t, err)
		for _, name := range []string{"pid", "version", "uptime", "curr_connections", "cmd_get"} {
			assert.Contains(t, st, name)
		}
		pid, err := strconv.Atoi(st["pid"])
		require.NoError(t, err, "pid %q", st["pid"])
		assert.Positive(t, pid)
		assert.Regexp(t, regexp.MustCompile(`^\d+\.\d+\.\d+`), st["version"])

		// The counters are live.
		before := statInt(t, e.c, "cmd_get")
		_, _ = e.c.Get(bg, e.key("x"), nil)
		assert.Equal(t, before+1, statInt(t, e.c, "cmd_get"))
	}},
	{name: "Version", run: func(t *testing.T, e *confEnv) {
		v, err := e.c.Version(bg)
		require.NoError(t, err)
		assert.Regexp(t, regexp.MustCompile(`^\d+\.\d+\.\d+`), v)
		st, err := e.c.Stats(bg)
		require.NoError(t, err)
		assert.Equal(t, st["version"], v)
	}},
	{name: "MalformedKeys", run: func(t *testing.T, e *confEnv) {
		bad := malformedKeys(e.proto)
		c, dials := e.countingClient(Options{})
		for _, op := range keyedOps {
			for name, key := range bad {
				err := op.op(c, key)
				assert.ErrorIs(t, err, ErrMalformedKey, "%s with %s key", op.name, name)
			}
		}
		assert.Zero(t, dials.Load(), "a malformed key reached the network")

		// The longest valid key works everywhere.
		k := e.key(strings.Repeat("k", 250-len(e.prefix)))
		require.Len(t, k, 250)
		mustSet(t, e.c, k, "v")
		requireValue(t, e.c, k, "v")
		require.NoError(t, e.c.Touch(bg, k, time.Hour))
		require.NoError(t, e.c.Delete(bg, k))
	}},
	{name: "KeyBytes", run: func(t *testing.T, e *confEnv) {
		// Only spaces and control characters are refused: punctuation
		// and UTF-8 are keys like any other.
		for _, suffix := range []string{"é", "日本", "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "\xff\x80"} {
			k := e.key(suffix)
			mustSet(t, e.c, k, suffix)
			requireValue(t, e.c, k, suffix)
		}
	}},
	{name: "MaxKeyLength", opts: Options{MaxKeyLength: 20}, run: func(t *testing.T, e *confEnv) {
		k20 := e.key(strings.Repeat("x", 20-len(e.prefix)))
		require.Len(t, k20, 20)
		mustSet(t, e.c, k20, "v")
		requireValue(t, e.c, k20, "v")
		k21 := k20 + "x"
		for _, op := range keyedOps {
			assert.ErrorIs(t, op.op(e.c, k21), ErrMalformedKey, "%s with a 21-byte key, MaxKeyLength 20", op.name)
		}
	}},
	{name: "ValueTooLarge", opts: Options{MaxValueLength: 1000}, run: func(t *testing.T, e *confEnv) {
		k := e.key("k")
		exact := bytes.Repeat([]byte("v"), 1000)
		over := bytes.Repeat([]byte("v"), 1001)

		// Over the limit: refused before anything is sent.
		c, dials := e.countingClient(Options{MaxValueLength: 1000})
		for _, op := range storeOps {
			assert.ErrorIs(t, op.op(c, k, over), ErrValueTooLarge, op.name)
		}
		assert.ErrorIs(t, c.SetObject(bg, k, string(over), 0), ErrValueTooLarge, "SetObject")
		assert.Zero(t, dials.Load(), "an oversized value reached the network")

		// Exactly the limit is accepted.
		require.NoError(t, e.c.Set(bg, k, exact, 0))
		v, err := e.c.Get(bg, k, nil)
		require.NoError(t, err)
		assert.Equal(t, exact, v)
	}},
	{name: "ValueTooLargeIncoming", opts: Options{MaxValueLength: 1000}, run: func(t *testing.T, e *confEnv) {
		// A stored value over the reader's limit is refused, and the
		// client goes on working.
		big, small := e.key("big"), e.key("small")
		writer := e.client(Options{})
		require.NoError(t, writer.Set(bg, big, bytes.Repeat([]byte("v"), 5000), 0))
		mustSet(t, writer, small, "ok")
		dst := []byte("keep")
		v, err := e.c.Get(bg, big, dst)
		require.ErrorIs(t, err, ErrValueTooLarge)
		assert.Equal(t, "keep", string(v))
		requireValue(t, e.c, small, "ok")
	}},
	{name: "Compression", opts: Options{CompressThreshold: 100}, run: func(t *testing.T, e *confEnv) {
		c := e.c
		plain := e.client(Options{}) // no threshold: reads still decompress
		value := bytes.Repeat([]byte("compressible "), 400)

		k := e.key("big")
		require.NoError(t, c.Set(bg, k, value, 0))
		flags, stored, found := rawGet(t, e.srv.Addr, k)
		require.True(t, found)
		assert.Equal(t, FlagCompressed, flags, "a compressible value over the threshold is stored compressed")
		assert.Less(t, len(stored), len(value))
		// The stored form is python-lz4's block format.
		require.GreaterOrEqual(t, len(stored), 4)
		require.Equal(t, uint32(len(value)), binary.LittleEndian.Uint32(stored))
		orig := make([]byte, len(value))
		n, err := lz4.UncompressBlock(stored[4:], orig)
		require.NoError(t, err)
		assert.Equal(t, value, orig[:n])

		// Every read decompresses, with or without a threshold.
		for _, r := range []*Client{c, plain} {
			v, err := r.Get(bg, k, []byte("p:"))
			require.NoError(t, err)
			assert.Equal(t, append([]byte("p:"), value...), v)
			v, _, err = r.Gets(bg, k, nil)
			require.NoError(t, err)
			assert.Equal(t, value, v)
			v, err = r.GetAndTouch(bg, k, time.Hour, nil)
			require.NoError(t, err)
			assert.Equal(t, value, v)
			m, err := r.GetMultiMap(bg, []string{e.key("miss"), k, k})
			require.NoError(t, err)
			assert.Equal(t, value, m[k])
		}

		// Add, Replace and CAS compress too.
		ka := e.key("add")
		require.NoError(t, c.Add(bg, ka, value, 0))
		flags, _, _ = rawGet(t, e.srv.Addr, ka)
		assert.Equal(t, FlagCompressed, flags, "Add")
		require.NoError(t, c.Replace(bg, ka, value, 0))
		flags, _, _ = rawGet(t, e.srv.Addr, ka)
		assert.Equal(t, FlagCompressed, flags, "Replace")
		_, id, err := c.Gets(bg, ka, nil)
		require.NoError(t, err)
		require.NoError(t, c.CompareAndSwap(bg, ka, value, id, 0))
		flags, _, _ = rawGet(t, e.srv.Addr, ka)
		assert.Equal(t, FlagCompressed, flags, "CompareAndSwap")
		requireValue(t, plain, ka, string(value))

		// An incompressible value stays raw.
		random := make([]byte, 1000)
		rand.New(rand.NewSource(2)).Read(random)
		kr := e.key("random")
		require.NoError(t, c.Set(bg, kr, random, 0))
		flags, stored, _ = rawGet(t, e.srv.Addr, kr)
		assert.Equal(t, uint32(0), flags)
		assert.Equal(t, random, stored)

		// At or under the threshold nothing is compressed.
		ks := e.key("small")
		require.NoError(t, c.Set(bg, ks, bytes.Repeat([]byte("a"), 100), 0))
		flags, stored, _ = rawGet(t, e.srv.Addr, ks)
		assert.Equal(t, uint32(0), flags)
		assert.Len(t, stored, 100)
		require.NoError(t, c.Set(bg, ks, bytes.Repeat([]byte("a"), 101), 0))
		flags, _, _ = rawGet(t, e.srv.Addr, ks)
		assert.Equal(t, FlagCompressed, flags, "101 bytes, threshold 100")

		// Without a threshold nothing is compressed.
		kp := e.key("plain")
		require.NoError(t, plain.Set(bg, kp, value, 0))
		flags, stored, _ = rawGet(t, e.srv.Addr, kp)
		assert.Equal(t, uint32(0), flags)
		assert.Equal(t, value, stored)
	}},
	{name: "CompressedFromPython", run: func(t *testing.T, e *confEnv) {
		// A value compressed by another client (python-lz4's format) reads
		// back transparently, one-key and multi-key.
		value := bytes.Repeat([]byte("written by python "), 100)
		k := e.key("py")
		rawSet(t, e.srv.Addr, k, FlagCompressed, pythonLZ4(t, value))
		requireValue(t, e.c, k, string(value))
		got := map[int]string{}
		require.NoError(t, e.c.GetMulti(bg, []string{k, e.key("miss"), k}, func(i int, v []byte) { got[i] = string(v) }))
		assert.Equal(t, map[int]string{0: string(value), 2: string(value)}, got)
	}},
	{name: "CompressedCorrupt", opts: Options{MaxValueLength: 10_000}, run: func(t *testing.T, e *confEnv) {
		c := e.c
		// Garbage behind the compressed flag.
		kg := e.key("garbage")
		rawSet(t, e.srv.Addr, kg, FlagCompressed, []byte{10, 0, 0, 0, 0xff, 0xff, 0xff})
		dst := []byte("keep")
		v, err := c.Get(bg, kg, dst)
		require.ErrorIs(t, err, ErrCorruptValue)
		assert.Equal(t, "keep", string(v))

		// Too short for the length prefix.
		ks := e.key("short")
		rawSet(t, e.srv.Addr, ks, FlagCompressed, []byte{1, 2})
		_, err = c.Get(bg, ks, nil)
		require.ErrorIs(t, err, ErrCorruptValue)

		// A declared length over MaxValueLength is a corrupt value, never
		// an allocation of that length.
		kl := e.key("huge")
		rawSet(t, e.srv.Addr, kl, FlagCompressed, []byte{0xff, 0xff, 0xff, 0x7f, 0x00})
		_, err = c.Get(bg, kl, nil)
		require.ErrorIs(t, err, ErrCorruptValue)

		// A multi-get reports it too, and still delivers the good values.
		good := e.key("good")
		mustSet(t, c, good, "fine")
		got := map[int]string{}
		err = c.GetMulti(bg, []string{kg, good}, func(i int, v []byte) { got[i] = string(v) })
		require.ErrorIs(t, err, ErrCorruptValue)
		assert.Equal(t, "fine", got[1])
		requireValue(t, c, good, "fine")
	}},
	{name: "TypedInt", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("n")
		for _, n := range []int64{0, 1, -42, 1<<63 - 1, -1 << 63} {
			require.NoError(t, c.SetInt(bg, k, n, 0))
			got, err := c.GetInt(bg, k)
			require.NoError(t, err)
			assert.Equal(t, n, got)
		}
		// Stored the way python-memcached stores an int.
		require.NoError(t, c.SetInt(bg, k, 41, 0))
		flags, data, _ := rawGet(t, e.srv.Addr, k)
		assert.Equal(t, FlagInteger, flags)
		assert.Equal(t, "41", string(data))
		v, err := c.Incr(bg, k, 1)
		require.NoError(t, err)
		assert.Equal(t, uint64(42), v)
		got, err := c.GetInt(bg, k)
		require.NoError(t, err)
		assert.Equal(t, int64(42), got)

		_, err = c.GetInt(bg, e.key("absent"))
		require.ErrorIs(t, err, ErrCacheMiss)
		mustSet(t, c, e.key("text"), "forty-two")
		_, err = c.GetInt(bg, e.key("text"))
		require.ErrorIs(t, err, ErrCorruptValue)
	}},
	{name: "TypedObject", opts: Options{CompressThreshold: 200}, run: func(t *testing.T, e *confEnv) {
		type thing struct {
			Name string
			N    int
			Tags []string
			Sub  map[string]float64
		}
		c, k := e.c, e.key("obj")
		in := thing{Name: "widget", N: 7, Tags: []string{"a", "b"}, Sub: map[string]float64{"x": 1.5}}
		require.NoError(t, c.SetObject(bg, k, in, 0))
		var out thing
		require.NoError(t, c.GetObject(bg, k, &out))
		assert.Equal(t, in, out)
		flags, _, _ := rawGet(t, e.srv.Addr, k)
		assert.Equal(t, FlagEncoded, flags)

		// A large object is compressed and still decodes.
		in.Tags = make([]string, 200)
		for i := range in.Tags {
			in.Tags[i] = "tag"
		}
		require.NoError(t, c.SetObject(bg, k, in, 0))
		flags, _, _ = rawGet(t, e.srv.Addr, k)
		assert.Equal(t, FlagEncoded|FlagCompressed, flags)
		out = thing{}
		require.NoError(t, e.client(Options{}).GetObject(bg, k, &out))
		assert.Equal(t, in, out)

		// A value not stored as an object is not guessed at.
		kb := e.key("bytes")
		mustSet(t, c, kb, `{"Name":"x"}`)
		require.ErrorIs(t, c.GetObject(bg, kb, &out), ErrCorruptValue)
		// Undecodable data behind the flag.
		rawSet(t, e.srv.Addr, kb, FlagEncoded, []byte("{not json"))
		require.ErrorIs(t, c.GetObject(bg, kb, &out), ErrCorruptValue)
		require.ErrorIs(t, c.GetObject(bg, e.key("absent"), &out), ErrCacheMiss)
		// A value the codec cannot encode is an error, not a store.
		require.Error(t, c.SetObject(bg, e.key("bad"), make(chan int), 0))
		requireMiss(t, c, e.key("bad"))
	}},
	{name: "ServerErrors", run: func(t *testing.T, e *confEnv) {
		// memcached refuses items over its item size (-I 1k): the reply
		// is a typed error carrying the server's message, and the client
		// stays in step.
		srv := startMemcached(t, "-I", "1k", "-o", "slab_chunk_max=512")
		c := newTestClient(t, srv.Addr, e.proto, Options{})
		k := e.key("big")
		err := c.Set(bg, k, bytes.Repeat([]byte("v"), 4000), 0)
		require.Error(t, err)
		var se *ServerError
		var st *StatusError
		switch {
		case errors.As(err, &se):
			assert.NotEmpty(t, se.Message)
		case errors.As(err, &st):
			assert.NotEmpty(t, st.Message)
		default:
			require.Fail(t, "oversized item is neither a *ServerError nor a *StatusError", "%v (%T)", err, err)
		}
		// (A driver may also match ErrValueTooLarge here: the server's
		// limit, not MaxValueLength, refused it.)
		for _, sentinel := range []error{ErrCacheMiss, ErrNotStored, ErrCASConflict} {
			assert.NotErrorIs(t, err, sentinel)
		}
		mustSet(t, c, k, "small")
		requireValue(t, c, k, "small")
	}},
	{name: "Closed", run: func(t *testing.T, e *confEnv) {
		k := e.key("k")
		for _, warm := range []bool{false, true} {
			c, err := New(e.srv.Addr, Options{Protocol: e.proto})
			require.NoError(t, err)
			if warm {
				mustSet(t, c, k, "v")
			}
			require.NoError(t, c.Close())
			require.NoError(t, c.Close(), "a second Close")
			for _, op := range keyedOps {
				assert.ErrorIs(t, op.op(c, k), ErrClosed, "%s after Close (warm=%v)", op.name, warm)
			}
			assert.ErrorIs(t, c.Connect(bg), ErrClosed)
			assert.ErrorIs(t, c.FlushAll(bg), ErrClosed)
			_, err = c.Stats(bg)
			assert.ErrorIs(t, err, ErrClosed)
			_, err = c.Version(bg)
			assert.ErrorIs(t, err, ErrClosed)
			c.ResetCAS() // harmless
		}
		// Closing one client does not disturb the server for others.
		requireValue(t, e.c, k, "v")
	}},
	{name: "ErrorAsMiss", run: func(t *testing.T, e *confEnv) {
		addr := closedAddr(t)
		faulty := newTestClient(t, addr, e.proto, Options{ConnectTimeout: time.Second})
		hiding := newTestClient(t, addr, e.proto, Options{ConnectTimeout: time.Second, ErrorAsMiss: true})
		k := e.key("k")

		// Without ErrorAsMiss the fault is reported, never a miss.
		for _, op := range keyedOps {
			err := op.op(faulty, k)
			var ce *ConnError
			assert.True(t, errors.As(err, &ce), "%s: %v is not a *ConnError", op.name, err)
			assert.NotErrorIs(t, err, ErrCacheMiss, op.name)
			assert.NotErrorIs(t, err, ErrNotStored, op.name)
		}
		_, err := faulty.Get(bg, k, nil)
		var ce *ConnError
		require.True(t, errors.As(err, &ce), "%v", err)
		require.ErrorIs(t, err, syscall.ECONNREFUSED)

		// With it, reads miss and writes are not stored, and the fault is
		// still reachable.
		asMiss := []string{"Get", "Gets", "GetAndTouch", "GetMulti", "GetMultiMap", "Incr", "Decr", "Delete", "Touch", "GetInt", "GetObject"}
		asNotStored := []string{"Set", "Add", "Replace", "Append", "Prepend", "CompareAndSwap", "CAS", "SetInt", "SetObject"}
		want := map[string]error{}
		for _, n := range asMiss {
			want[n] = ErrCacheMiss
		}
		for _, n := range asNotStored {
			want[n] = ErrNotStored
		}
		for _, op := range keyedOps {
			sentinel, ok := want[op.name]
			require.True(t, ok, "no expectation for %s", op.name)
			err := op.op(hiding, k)
			assert.ErrorIs(t, err, sentinel, op.name)
			var ce *ConnError
			assert.True(t, errors.As(err, &ce), "%s: fault not reachable from %v", op.name, err)
		}
		dst := []byte("keep")
		v, err := hiding.Get(bg, k, dst)
		require.ErrorIs(t, err, ErrCacheMiss)
		assert.Equal(t, "keep", string(v))
		require.ErrorIs(t, err, syscall.ECONNREFUSED)

		// Operations with no miss to stand for still report the fault.
		var ce2 *ConnError
		assert.True(t, errors.As(hiding.Connect(bg), &ce2), "Connect")
		assert.True(t, errors.As(hiding.FlushAll(bg), &ce2), "FlushAll")
		_, err = hiding.Stats(bg)
		assert.True(t, errors.As(err, &ce2), "Stats")
		_, err = hiding.Version(bg)
		assert.True(t, errors.As(err, &ce2), "Version")

		// ErrorAsMiss hides only faults: real outcomes and refusals stay.
		live := e.client(Options{ErrorAsMiss: true})
		mustSet(t, live, k, "abc")
		require.ErrorIs(t, live.Add(bg, k, []byte("x"), 0), ErrNotStored)
		_, err = live.Incr(bg, k, 1)
		require.ErrorIs(t, err, ErrNonNumeric)
		require.ErrorIs(t, live.Set(bg, aMalformedKey(e.proto), []byte("x"), 0), ErrMalformedKey)
		requireValue(t, live, k, "abc")
	}},
	{name: "Connect", run: func(t *testing.T, e *confEnv) {
		require.NoError(t, e.c.Connect(bg))
		require.NoError(t, e.c.Connect(bg), "a second Connect")
		mustSet(t, e.c, e.key("k"), "v")

		c := newTestClient(t, closedAddr(t), e.proto, Options{ConnectTimeout: time.Second})
		err := c.Connect(bg)
		require.Error(t, err)
		var ce *ConnError
		require.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
		var oe *net.OpError
		require.True(t, errors.As(err, &oe), "the net error is not reachable from %v", err)
		require.ErrorIs(t, err, syscall.ECONNREFUSED)
	}},
	{name: "ContextDeadline", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "v") // warm: a connection is idle in the pool
		ctx, cancel := context.WithDeadline(bg, time.Now().Add(-time.Second))
		defer cancel()
		_, err := c.Get(ctx, k, nil)
		require.Error(t, err)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		var ce *ConnError
		require.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
		assert.True(t, ce.Timeout())
		assert.NotErrorIs(t, err, ErrCacheMiss)
		// The client recovers.
		requireValue(t, c, k, "v")
	}},
	{name: "IOTimeout", run: func(t *testing.T, e *confEnv) {
		// A request that runs out of time is an I/O fault whose net error
		// stays reachable; ErrorAsMiss turns it into a miss.
		k := e.key("k")
		mustSet(t, e.c, k, "v")
		for _, hide := range []bool{false, true} {
			c := e.client(Options{Timeout: time.Nanosecond, ErrorAsMiss: hide})
			_, err := c.Get(bg, k, nil)
			require.Error(t, err)
			var ce *ConnError
			require.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
			assert.True(t, ce.Timeout(), "ConnError.Timeout() for %v", err)
			var ne net.Error
			require.True(t, errors.As(err, &ne), "no net.Error reachable from %v", err)
			assert.True(t, ne.Timeout())
			assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
			if hide {
				assert.ErrorIs(t, err, ErrCacheMiss)
				assert.ErrorIs(t, c.Set(bg, k, []byte("x"), 0), ErrNotStored)
			} else {
				assert.NotErrorIs(t, err, ErrCacheMiss)
			}
		}
		requireValue(t, e.c, k, "v")
	}},
	{name: "ContextCanceled", run: func(t *testing.T, e *confEnv) {
		c, k := e.c, e.key("k")
		mustSet(t, c, k, "v")
		ctx, cancel := context.WithCancel(bg)
		cancel()
		for i := 0; i < 20; i++ {
			_, err := c.Get(ctx, k, nil)
			require.ErrorIs(t, err, context.Canceled, "Get with a cancelled context, try %d", i)
			err = c.Set(ctx, k, []byte("changed"), 0)
			require.ErrorIs(t, err, context.Canceled, "Set with a cancelled context, try %d", i)
		}
		requireValue(t, c, k, "v")

		// Deterministically: even when the driver's cancellation
		// interrupt comes late (here, a connection whose deadline is
		// slow to poison), a request with a cancelled context is not
		// carried out.
		slow := e.client(Options{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return slowAbortConn{nc}, nil
		}})
		require.NoError(t, slow.Connect(bg))
		err := slow.Set(ctx, k, []byte("written with a cancelled context"), 0)
		require.ErrorIs(t, err, context.Canceled)
		var ce *ConnError
		require.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
		requireValue(t, c, k, "v")
	}},
	{name: "Concurrency", run: func(t *testing.T, e *confEnv) {
		c := e.c
		counter := e.key("counter")
		mustSet(t, c, counter, "0")
		const workers, rounds = 50, 20
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				k := e.key("w" + strconv.Itoa(w))
				var buf []byte
				for r := 0; r < rounds; r++ {
					want := fmt.Sprintf("worker %d round %d %s", w, r, strings.Repeat("x", (w*r)%300))
					if err := c.Set(bg, k, []byte(want), 0); err != nil {
						errs <- fmt.Errorf("worker %d: Set: %w", w, err)
						return
					}
					v, err := c.Get(bg, k, buf[:0])
					if err != nil {
						errs <- fmt.Errorf("worker %d: Get: %w", w, err)
						return
					}
					if string(v) != want {
						errs <- fmt.Errorf("worker %d round %d: read %q, wrote %q", w, r, v, want)
						return
					}
					buf = v
					if _, err := c.Incr(bg, counter, 1); err != nil {
						errs <- fmt.Errorf("worker %d: Incr: %w", w, err)
						return
					}
				}
			}(w)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			assert.NoError(t, err)
		}
		n, err := c.GetInt(bg, counter)
		require.NoError(t, err)
		assert.Equal(t, int64(workers*rounds), n)
	}},
}

// statInt reads one numeric server statistic.
func statInt(t *testing.T, c *Client, name string) int64 {
	t.Helper()
	st, err := c.Stats(bg)
	require.NoError(t, err)
	n, err := strconv.ParseInt(st[name], 10, 64)
	require.NoError(t, err, "stat %s = %q", name, st[name])
	return n
}

func TestConformanceFlushAll(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		for _, k := range []string{"a", "b", "c"} {
			mustSet(t, c, k, k)
		}
		require.NoError(t, c.FlushAll(bg))
		for _, k := range []string{"a", "b", "c"} {
			requireMiss(t, c, k)
		}
		m, err := c.GetMultiMap(bg, []string{"a", "b", "c"})
		require.NoError(t, err)
		assert.Empty(t, m)
		// The server still takes writes.
		mustSet(t, c, "a", "again")
		requireValue(t, c, "a", "again")
		require.NoError(t, c.FlushAll(bg), "flushing an empty cache")
	})
}

func TestConformanceUnixSocket(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startMemcachedUnix(t)
			require.True(t, strings.HasPrefix(srv.Addr, "/"), "socket path %q", srv.Addr)
			byPath := newTestClient(t, srv.Addr, proto, Options{})
			byScheme := newTestClient(t, "unix:"+srv.Addr, proto, Options{})
			require.NoError(t, byPath.Connect(bg))
			require.NoError(t, byScheme.Connect(bg))
			mustSet(t, byPath, "k", "via path")
			requireValue(t, byScheme, "k", "via path")
			mustSet(t, byScheme, "k", "via unix:")
			requireValue(t, byPath, "k", "via unix:")
			v, err := byPath.Version(bg)
			require.NoError(t, err)
			assert.NotEmpty(t, v)

			// A socket that is not there is a connection fault.
			gone := newTestClient(t, srv.Addr+".missing", proto, Options{ConnectTimeout: time.Second})
			_, err = gone.Get(bg, "k", nil)
			var ce *ConnError
			require.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
		})
	}
}
