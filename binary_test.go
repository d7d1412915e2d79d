package ermc

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The binary driver against a real memcached: every status mapping, the
// multi-get, stats, version, flush, touch, gat and SASL.

// newBinaryClient starts a memcached with extra flags and returns a
// binary-protocol client for it with one connection, and a count of the
// connections the client has dialed, so that tests can tell whether an
// error reply cost the connection.
func newBinaryClient(t *testing.T, opts Options, extra ...string) (*Client, *atomic.Int32) {
	t.Helper()
	s := startMemcached(t, extra...)
	dials := new(atomic.Int32)
	opts.MaxConns = 1
	opts.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return newTestClient(t, s.Addr, Binary, opts), dials
}

// wantStatus fails the test unless err carries a *StatusError of status.
func wantStatus(t *testing.T, err error, status uint16) *StatusError {
	t.Helper()
	var se *StatusError
	require.ErrorAs(t, err, &se, "want a *StatusError with status %#x", status)
	require.Equal(t, status, se.Status, "status of %v", err)
	return se
}

func TestBinaryReadWrite(t *testing.T) {
	c, _ := newBinaryClient(t, Options{})

	mustSet(t, c, "k", "hello")
	got, err := c.Get(bg, "k", []byte("prefix:"))
	require.NoError(t, err, "get")
	require.Equal(t, "prefix:hello", string(got), "get")
	v, cas, err := c.Gets(bg, "k", nil)
	require.NoError(t, err, "gets")
	require.Equal(t, "hello", string(v), "gets")
	require.NotZero(t, cas, "gets: CAS id")
	require.NoError(t, c.CompareAndSwap(bg, "k", []byte("swapped"), cas, 0), "cas with the current id")
	requireValue(t, c, "k", "swapped")
	_, cas2, err := c.Gets(bg, "k", nil)
	require.NoError(t, err, "gets after cas")
	assert.NotEqual(t, cas, cas2, "CAS id unchanged by a write")

	require.NoError(t, c.Add(bg, "new", []byte("added"), 0), "add")
	require.NoError(t, c.Replace(bg, "new", []byte("replaced"), 0), "replace")
	require.NoError(t, c.Append(bg, "new", []byte(">")), "append")
	require.NoError(t, c.Prepend(bg, "new", []byte("<")), "prepend")
	requireValue(t, c, "new", "<replaced>")

	mustSet(t, c, "empty", "")
	requireValue(t, c, "empty", "")

	require.NoError(t, c.Delete(bg, "new"), "delete")
	requireMiss(t, c, "new")

	// Flags travel in the extras: typed values come back typed.
	require.NoError(t, c.SetInt(bg, "int", -42, 0), "setint")
	n, err := c.GetInt(bg, "int")
	require.NoError(t, err, "getint")
	require.Equal(t, int64(-42), n, "getint")
	require.NoError(t, c.SetObject(bg, "obj", map[string]int{"a": 1}, 0), "setobject")
	var obj map[string]int
	require.NoError(t, c.GetObject(bg, "obj", &obj), "getobject")
	require.Equal(t, 1, obj["a"], "getobject: %v", obj)
	_, flags, _, err := c.get(bg, opGet, "int", 0, nil)
	require.NoError(t, err)
	require.Equal(t, FlagInteger, flags, "flags of an int")
}

func TestBinaryCompression(t *testing.T) {
	c, _ := newBinaryClient(t, Options{CompressThreshold: 64})
	value := strings.Repeat("compressible ", 1000)
	mustSet(t, c, "z", value)
	requireValue(t, c, "z", value)
	_, flags, _, err := c.get(bg, opGet, "z", 0, nil)
	require.NoError(t, err)
	require.NotZero(t, flags&FlagCompressed, "flags %d: value was not stored compressed", flags)
	m, err := c.GetMultiMap(bg, []string{"z", "nothing"})
	require.NoError(t, err, "multi-get of a compressed value")
	require.Len(t, m, 1, "multi-get of a compressed value")
	require.Equal(t, value, string(m["z"]), "multi-get of a compressed value")
}

// Every outcome the text driver reports has the same error on the binary
// driver, and none of them costs the connection.
func TestBinaryErrorMapping(t *testing.T) {
	c, dials := newBinaryClient(t, Options{CacheCAS: true})

	mustSet(t, c, "present", "v")
	mustSet(t, c, "text", "not a number")
	_, staleCAS, err := c.Gets(bg, "present", nil)
	require.NoError(t, err)
	mustSet(t, c, "present", "v2") // staleCAS is now stale

	for _, s := range []struct {
		name string
		do   func() error
		want error
	}{
		{"get miss", func() error { _, err := c.Get(bg, "absent", nil); return err }, ErrCacheMiss},
		{"gets miss", func() error { _, _, err := c.Gets(bg, "absent", nil); return err }, ErrCacheMiss},
		{"gat miss", func() error { _, err := c.GetAndTouch(bg, "absent", time.Hour, nil); return err }, ErrCacheMiss},
		{"add existing", func() error { return c.Add(bg, "present", []byte("x"), 0) }, ErrNotStored},
		{"replace missing", func() error { return c.Replace(bg, "absent", []byte("x"), 0) }, ErrNotStored},
		{"append missing", func() error { return c.Append(bg, "absent", []byte("x")) }, ErrNotStored},
		{"prepend missing", func() error { return c.Prepend(bg, "absent", []byte("x")) }, ErrNotStored},
		{"cas mismatch", func() error { return c.CompareAndSwap(bg, "present", []byte("x"), staleCAS, 0) }, ErrCASConflict},
		{"cas missing", func() error { return c.CompareAndSwap(bg, "absent", []byte("x"), staleCAS, 0) }, ErrCacheMiss},
		{"delete missing", func() error { return c.Delete(bg, "absent") }, ErrCacheMiss},
		{"touch missing", func() error { return c.Touch(bg, "absent", time.Hour) }, ErrCacheMiss},
		{"incr missing", func() error { _, err := c.Incr(bg, "absent", 1); return err }, ErrCacheMiss},
		{"decr missing", func() error { _, err := c.Decr(bg, "absent", 1); return err }, ErrCacheMiss},
		{"incr non-numeric", func() error { _, err := c.Incr(bg, "text", 1); return err }, ErrNonNumeric},
		{"decr non-numeric", func() error { _, err := c.Decr(bg, "text", 1); return err }, ErrNonNumeric},
	} {
		err := s.do()
		assert.ErrorIs(t, err, s.want, s.name)
		if s.want == ErrNonNumeric {
			wantStatus(t, err, binStatusNonNumeric)
		}
	}
	// The misses above created nothing: incr/decr ask memcached not to
	// seed a missing counter.
	requireMiss(t, c, "absent")
	requireValue(t, c, "present", "v2")
	requireValue(t, c, "text", "not a number")

	assert.EqualValues(t, 1, dials.Load(), "connections dialed: an error reply cost the connection")
}

// CompareAndSwap with id 0 never stores: the text protocol compares 0 like
// any other id, and the binary driver must not read it as "no check".
func TestBinaryCASZeroIDMatchesText(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range []Protocol{Text, Binary} {
		c := newTestClient(t, s.Addr, proto, Options{})
		key := "zero-" + proto.String()
		assert.ErrorIs(t, c.CompareAndSwap(bg, key, []byte("x"), 0, 0), ErrCacheMiss, "%v: cas 0 on a missing key", proto)
		requireMiss(t, c, key)
		mustSet(t, c, key, "v")
		assert.ErrorIs(t, c.CompareAndSwap(bg, key, []byte("x"), 0, 0), ErrCASConflict, "%v: cas 0 on a present key", proto)
		requireValue(t, c, key, "v")
	}
}

func TestBinaryIncrDecr(t *testing.T) {
	c, _ := newBinaryClient(t, Options{})
	require.NoError(t, c.SetInt(bg, "n", 10, 0))
	for _, s := range []struct {
		incr  bool
		delta uint64
		want  uint64
	}{
		{true, 5, 15},
		{false, 3, 12},
		{false, 100, 0}, // decr stops at 0
		{true, math.MaxUint64, math.MaxUint64},
		{true, 2, 1}, // incr wraps at 2^64
	} {
		var got uint64
		var err error
		if s.incr {
			got, err = c.Incr(bg, "n", s.delta)
		} else {
			got, err = c.Decr(bg, "n", s.delta)
		}
		require.NoError(t, err, "incr=%v %d", s.incr, s.delta)
		require.Equal(t, s.want, got, "incr=%v %d", s.incr, s.delta)
	}
	n, err := c.GetInt(bg, "n")
	require.NoError(t, err, "stored counter")
	require.Equal(t, int64(1), n, "stored counter")
}

func TestBinaryExpiry(t *testing.T) {
	c, _ := newBinaryClient(t, Options{})

	// A negative TTL stores an item that is already expired.
	require.NoError(t, c.Set(bg, "gone", []byte("v"), -time.Second))
	requireMiss(t, c, "gone")

	mustSet(t, c, "t", "v")
	require.NoError(t, c.Touch(bg, "t", time.Hour), "touch")
	requireValue(t, c, "t", "v")
	require.NoError(t, c.Touch(bg, "t", -time.Second), "touch to expire")
	requireMiss(t, c, "t")

	// A TTL over 30 days is sent as an absolute time and keeps the item.
	require.NoError(t, c.Set(bg, "long", []byte("v"), 40*24*time.Hour))
	requireValue(t, c, "long", "v")

	mustSet(t, c, "g", "gat value")
	v, err := c.GetAndTouch(bg, "g", time.Hour, []byte("dst:"))
	require.NoError(t, err, "gat")
	require.Equal(t, "dst:gat value", string(v), "gat")
	// gat returns the item and then applies the new, expired, TTL.
	v, err = c.GetAndTouch(bg, "g", -time.Second, nil)
	require.NoError(t, err, "gat to expire")
	require.Equal(t, "gat value", string(v), "gat to expire")
	requireMiss(t, c, "g")
}

func TestBinaryCacheCAS(t *testing.T) {
	c, _ := newBinaryClient(t, Options{CacheCAS: true})
	mustSet(t, c, "k", "v0")
	_, _, err := c.Gets(bg, "k", nil)
	require.NoError(t, err)
	require.NoError(t, c.CAS(bg, "k", []byte("v1"), 0), "first CAS")
	require.ErrorIs(t, c.CAS(bg, "k", []byte("v2"), 0), ErrCASConflict, "second CAS with the same id")
	requireValue(t, c, "k", "v1")
}

func TestBinaryMultiGet(t *testing.T) {
	c, _ := newBinaryClient(t, Options{})

	// 100 keys, the even ones stored, plus duplicates and a repeated miss.
	keys := make([]string, 0, 104)
	for i := 0; i < 100; i++ {
		keys = append(keys, fmt.Sprintf("key-%03d", i))
		if i%2 == 0 {
			mustSet(t, c, keys[i], fmt.Sprintf("value of %d", i))
		}
	}
	keys = append(keys, "key-000", "key-001", "key-098", "key-000")
	got := map[int]string{}
	err := c.GetMulti(bg, keys, func(i int, v []byte) {
		assert.NotContains(t, got, i, "index delivered twice")
		got[i] = string(v)
	})
	require.NoError(t, err, "getmulti")
	for i, k := range keys {
		n, _ := strconv.Atoi(strings.TrimPrefix(k, "key-"))
		v, hit := got[i]
		switch {
		case n%2 == 0:
			assert.True(t, hit, "keys[%d] = %s: a miss", i, k)
			assert.Equal(t, fmt.Sprintf("value of %d", n), v, "keys[%d] = %s", i, k)
		default:
			assert.False(t, hit, "keys[%d] = %s is a miss, got %q", i, k, v)
		}
	}
	assert.Len(t, got, 50+3, "hits")

	// All misses: only the NOOP answers.
	err = c.GetMulti(bg, []string{"none-1", "none-2"}, func(i int, v []byte) {
		assert.Fail(t, "miss delivered", "%d %q", i, v)
	})
	require.NoError(t, err, "getmulti of misses")

	// Values larger than the read buffer, so that frames span reads.
	big := make([]string, 20)
	for i := range big {
		big[i] = fmt.Sprintf("big-%d", i)
		mustSet(t, c, big[i], strings.Repeat(string(rune('a'+i)), 20_000+i))
	}
	m, err := c.GetMultiMap(bg, big)
	require.NoError(t, err, "getmulti of big values")
	require.Len(t, m, len(big), "getmulti of big values: hits")
	for i, k := range big {
		want := strings.Repeat(string(rune('a'+i)), 20_000+i)
		assert.True(t, string(m[k]) == want, "%s: %d bytes, want %d", k, len(m[k]), len(want))
	}
}

// A value much larger than the read buffer is gathered across reads.
func TestBinaryLargeValue(t *testing.T) {
	c, _ := newBinaryClient(t, Options{})
	value := bytes.Repeat([]byte("0123456789"), 90_000) // 900 KB, under memcached's 1 MB items
	require.NoError(t, c.Set(bg, "big", value, 0), "set")
	got, err := c.Get(bg, "big", nil)
	require.NoError(t, err, "get")
	require.True(t, bytes.Equal(got, value), "get: %d bytes, want %d", len(got), len(value))

	// The client refuses a value over MaxValueLength before storing it
	// anywhere, and the connection stays in step.
	small, _ := newBinaryClient(t, Options{MaxValueLength: 1000})
	mustSet(t, small, "k", strings.Repeat("x", 1000))
	requireValue(t, small, "k", strings.Repeat("x", 1000))
}

// memcached refuses an item over its -I limit with status 0x03 and swallows
// the value: the connection is kept.
func TestBinaryServerValueTooLarge(t *testing.T) {
	c, dials := newBinaryClient(t, Options{MaxValueLength: 4 << 20})
	err := c.Set(bg, "huge", make([]byte, 1_500_000), 0)
	require.ErrorIs(t, err, ErrValueTooLarge)
	assert.Contains(t, wantStatus(t, err, binStatusTooLarge).Message, "Too large", "the message carries the server's")
	requireMiss(t, c, "huge")
	assert.EqualValues(t, 1, dials.Load(), "connections dialed: the too-large reply cost the connection")
}

// With -M memcached answers a full cache with status 0x82 instead of
// evicting: a StatusError, not a miss or not-stored, and the connection
// is kept.
func TestBinaryOutOfMemory(t *testing.T) {
	c, dials := newBinaryClient(t, Options{}, "-M", "-m", "2")
	value := make([]byte, 500_000)
	var err error
	for i := 0; i < 50 && err == nil; i++ {
		err = c.Set(bg, fmt.Sprintf("fill-%d", i), value, 0)
	}
	se := wantStatus(t, err, binStatusOutOfMemory)
	assert.Contains(t, strings.ToLower(se.Message), "out of memory", "message")
	assert.NotErrorIs(t, err, ErrNotStored, "out of memory")
	assert.NotErrorIs(t, err, ErrCacheMiss, "out of memory")
	assert.EqualValues(t, 1, dials.Load(), "connections dialed: the out-of-memory reply cost the connection")
}

// memcached answers a key over 250 bytes with status 0x04 and closes the
// connection: the client reports the status and opens a new connection.
func TestBinaryInvalidArgumentsDropsConnection(t *testing.T) {
	c, dials := newBinaryClient(t, Options{MaxKeyLength: 300})
	mustSet(t, c, "before", "ok")
	_, err := c.Get(bg, strings.Repeat("k", 260), nil)
	wantStatus(t, err, binStatusInvalidArgs)
	mustSet(t, c, "after", "ok")
	requireValue(t, c, "after", "ok")
	assert.EqualValues(t, 2, dials.Load(), "connections dialed: the closed one and its replacement")
}

func TestBinaryStatsVersionFlush(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Binary, Options{})
	v, err := c.Version(bg)
	require.NoError(t, err, "version")
	require.NotEmpty(t, v, "version")
	st, err := c.Stats(bg)
	require.NoError(t, err, "stats")
	assert.Equal(t, v, st["version"], "stats version")
	assert.Equal(t, strconv.Itoa(s.proc.Pid), st["pid"], "stats pid: the server's")
	assert.GreaterOrEqual(t, len(st), 20, "stats: %v", st)

	for _, k := range []string{"a", "b", "c"} {
		mustSet(t, c, k, "v")
	}
	require.NoError(t, c.FlushAll(bg), "flush_all")
	for _, k := range []string{"a", "b", "c"} {
		requireMiss(t, c, k)
	}
}

// startMemcachedSASL runs memcached with SASL PLAIN (-S) for one user and
// stops it when t ends.
//
// On Debian's memcached 1.6.18 (Cyrus SASL 2.1) nothing beyond the obvious
// is needed: the sasldb is written with saslpasswd2 under application name
// "memcached", memcached.conf in SASL_CONF_PATH names the mechanism and the
// sasldb, and -S turns authentication on. The user is stored in the realm
// saslpasswd2 takes from the host name, which is the realm memcached uses
// when it looks the user up, so plain "user" works on the same host.
func startMemcachedSASL(t *testing.T, user, pass string) *testServer {
	t.Helper()
	bin := requireBinary(t, "memcached")
	saslpasswd := requireBinary(t, "saslpasswd2")
	dir := t.TempDir()
	db := filepath.Join(dir, "sasldb2")
	cmd := exec.Command(saslpasswd, "-a", "memcached", "-c", "-p", "-f", db, user)
	cmd.Stdin = strings.NewReader(pass)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "saslpasswd2: %s", out)
	conf := fmt.Sprintf("mech_list: plain\nsasldb_path: %s\n", db)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "memcached.conf"), []byte(conf), 0o600))
	env := []string{"SASL_CONF_PATH=" + dir}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := strconv.Itoa(freePort(t))
		args := []string{"-S", "-l", "127.0.0.1", "-p", port, "-U", "0", "-t", "2"}
		if os.Geteuid() == 0 {
			args = append(args, "-u", "root")
		}
		s, err := startProcess(t, bin, args, "tcp", net.JoinHostPort("127.0.0.1", port), env)
		if err == nil {
			return s
		}
		lastErr = err
	}
	require.FailNow(t, "memcached -S did not start", "%v", lastErr)
	return nil
}

func TestBinarySASL(t *testing.T) {
	s := startMemcachedSASL(t, "alice", "s3cret pass")

	t.Run("right password", func(t *testing.T) {
		c := newTestClient(t, s.Addr, Binary, Options{Username: "alice", Password: "s3cret pass"})
		require.NoError(t, c.Connect(bg), "connect")
		mustSet(t, c, "k", "authenticated")
		requireValue(t, c, "k", "authenticated")
		m, err := c.GetMultiMap(bg, []string{"k", "other"})
		require.NoError(t, err, "getmulti")
		require.Equal(t, map[string][]byte{"k": []byte("authenticated")}, m, "getmulti")
	})

	t.Run("wrong password", func(t *testing.T) {
		// ErrorAsMiss must not hide a refusal: it is no connectivity fault.
		c := newTestClient(t, s.Addr, Binary, Options{Username: "alice", Password: "wrong", ErrorAsMiss: true})
		require.ErrorIs(t, c.Connect(bg), ErrAuth, "connect")
		_, err := c.Get(bg, "k", nil)
		require.ErrorIs(t, err, ErrAuth, "get")
		require.NotErrorIs(t, err, ErrCacheMiss, "get")
		wantStatus(t, err, binStatusAuthError)
	})

	t.Run("unknown user", func(t *testing.T) {
		c := newTestClient(t, s.Addr, Binary, Options{Username: "mallory", Password: "s3cret pass"})
		require.ErrorIs(t, c.Connect(bg), ErrAuth, "connect")
	})

	t.Run("no credentials", func(t *testing.T) {
		// The server refuses every command of an unauthenticated
		// connection with 0x20, then closes it.
		c := newTestClient(t, s.Addr, Binary, Options{})
		_, err := c.Get(bg, "k", nil)
		wantStatus(t, err, binStatusAuthError)
		require.NotErrorIs(t, err, ErrCacheMiss, "refusal reads as a miss")
		err = c.GetMulti(bg, []string{"k", "j"}, func(int, []byte) { assert.Fail(t, "value without auth") })
		wantStatus(t, err, binStatusAuthError)
	})
}

// Username against a server without SASL: memcached answers SASL_AUTH
// with Unknown command. That is an authentication failure that says why,
// never a miss.
func TestBinarySASLUnsupported(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Binary, Options{Username: "alice", Password: "pw", ErrorAsMiss: true})
	err := c.Connect(bg)
	require.ErrorIs(t, err, ErrAuth, "connect")
	require.ErrorContains(t, err, "does not support SASL", "connect")
	wantStatus(t, err, binStatusUnknownCommand)
	_, err = c.Get(bg, "k", nil)
	require.ErrorIs(t, err, ErrAuth, "get")
	require.NotErrorIs(t, err, ErrCacheMiss, "get")
}

// cancelOnRead is a connection whose first read cancels the request's
// context once the reply has arrived: the reply is then complete, and the
// context ended during it.
type cancelOnRead struct {
	net.Conn
	cancel context.CancelFunc
	once   sync.Once
}

func (c *cancelOnRead) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.once.Do(c.cancel)
	return n, err
}

// A context cancelled while the SASL reply is read fails the dial: the
// connection is not handed out as authenticated, and the next request
// dials a new one.
func TestBinaryAuthInterruptedConnIsDiscarded(t *testing.T) {
	s := startMemcachedSASL(t, "alice", "pw")
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	var dials atomic.Int32
	opts := Options{Username: "alice", Password: "pw", MaxConns: 1}
	opts.DialContext = func(dctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(dctx, network, addr)
		if err != nil || dials.Add(1) > 1 {
			return nc, err
		}
		return &cancelOnRead{Conn: nc, cancel: cancel}, nil
	}
	c := newTestClient(t, s.Addr, Binary, opts)
	require.ErrorIs(t, c.Connect(ctx), context.Canceled, "connect with a context cancelled during auth")
	mustSet(t, c, "k", "v")
	assert.EqualValues(t, 2, dials.Load(), "dials: the interrupted connection must be replaced")
}
