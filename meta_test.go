package ermc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The Meta driver end to end: what it shares with the other drivers
// (values, flags, compression, typed values, CAS ids), its own key rule
// against the real server, and the opaque check against a scripted one.
// The conformance suite and the fault tests run on Meta as well.

// A value written on Meta reads back identically on Text, Binary and
// Ultra, and the reverse: same bytes and flags on the server, same value
// through every driver, compressed or not, typed or not.
func TestMetaValuesInteroperate(t *testing.T) {
	srv := startMemcached(t)
	packable := bytes.Repeat([]byte("compressible text, "), 40)
	for _, other := range []Protocol{Text, Binary, Ultra} {
		for _, dir := range []struct {
			name           string
			writer, reader Protocol
		}{{"meta to " + other.String(), Meta, other}, {other.String() + " to meta", other, Meta}} {
			t.Run(dir.name, func(t *testing.T) {
				w := newTestClient(t, srv.Addr, dir.writer, Options{CompressThreshold: 100})
				r := newTestClient(t, srv.Addr, dir.reader, Options{})
				k := func(s string) string { return strings.ReplaceAll(dir.name, " ", "-") + ":" + s }

				raw := []byte("\x00\r\nEND\r\nMN\r\nVA 1 f0 O1\r\n\xff")
				require.NoError(t, w.Set(bg, k("raw"), raw, 0))
				require.NoError(t, w.Set(bg, k("empty"), nil, 0))
				require.NoError(t, w.Set(bg, k("packed"), packable, 0))
				require.NoError(t, w.SetInt(bg, k("int"), -42, 0))
				require.NoError(t, w.SetObject(bg, k("obj"), map[string]int{"a": 1}, 0))
				require.NoError(t, w.Set(bg, k("ttl"), []byte("v"), 100*time.Second))

				flags, data, found := rawGet(t, srv.Addr, k("packed"))
				require.True(t, found)
				assert.Equal(t, FlagCompressed, flags, "stored lz4-compressed")
				assert.Less(t, len(data), len(packable))
				flags, _, _ = rawGet(t, srv.Addr, k("int"))
				assert.Equal(t, FlagInteger, flags)
				flags, _, _ = rawGet(t, srv.Addr, k("obj"))
				assert.Equal(t, FlagEncoded, flags)
				requireTTL(t, srv.Addr, k("ttl"), 100)

				for key, want := range map[string][]byte{"raw": raw, "empty": nil, "packed": packable} {
					v, err := r.Get(bg, k(key), nil)
					require.NoError(t, err, key)
					assert.Equal(t, string(want), string(v), key)
				}
				n, err := r.GetInt(bg, k("int"))
				require.NoError(t, err)
				assert.Equal(t, int64(-42), n)
				var obj map[string]int
				require.NoError(t, r.GetObject(bg, k("obj"), &obj))
				assert.Equal(t, map[string]int{"a": 1}, obj)
				got, err := r.GetMultiMap(bg, []string{k("raw"), k("missing"), k("packed")})
				require.NoError(t, err)
				assert.Equal(t, map[string][]byte{k("raw"): raw, k("packed"): packable}, got)

				// CAS ids are the server's: one read on either side is
				// good on the other.
				_, cas, err := w.Gets(bg, k("raw"), nil)
				require.NoError(t, err)
				_, cas2, err := r.Gets(bg, k("raw"), nil)
				require.NoError(t, err)
				assert.Equal(t, cas, cas2)
				require.NoError(t, r.CompareAndSwap(bg, k("raw"), []byte("swapped"), cas, 0))
				require.ErrorIs(t, w.CompareAndSwap(bg, k("raw"), []byte("again"), cas, 0), ErrCASConflict)

				// Counters and append, across.
				require.NoError(t, w.Set(bg, k("n"), []byte("10"), 0))
				v, err := r.Incr(bg, k("n"), 5)
				require.NoError(t, err)
				assert.Equal(t, uint64(15), v)
				require.NoError(t, r.Append(bg, k("n"), []byte("0")))
				v, err = w.Decr(bg, k("n"), 1)
				require.NoError(t, err)
				assert.Equal(t, uint64(149), v)
			})
		}
	}
}

// Keys the text protocol cannot carry go out base64-encoded, and the
// server stores the key's own bytes: a raw "mg <base64> b v" on a plain
// socket finds what Meta stored, and text-safe keys stay as they are, so
// Text reads them.
func TestMetaBase64KeysOnServer(t *testing.T) {
	srv := startMemcached(t)
	c := newTestClient(t, srv.Addr, Meta, Options{})
	txt := newTestClient(t, srv.Addr, Text, Options{})
	keys := []string{"a b", "tab\there", "\x00\x01\x02", "line\r\nbreak", "del\x7f", "ключ с пробелом", strings.Repeat(" ", maxBase64Key)}
	for i, key := range keys {
		value := fmt.Sprintf("value %d", i)
		require.NoError(t, c.Set(bg, key, []byte(value), 0), "%q", key)
		requireValue(t, c, key, value)
		enc := base64.StdEncoding.EncodeToString([]byte(key))
		assert.Equal(t, value, rawMetaGet(t, srv.Addr, enc+" b"), "%q stored under its own bytes", key)
		require.NoError(t, c.Touch(bg, key, time.Hour))
		require.NoError(t, c.Delete(bg, key))
		assert.Equal(t, "", rawMetaGet(t, srv.Addr, enc+" b"), "%q deleted", key)
	}
	// A multi-get mixing both kinds of key.
	require.NoError(t, c.Set(bg, "plain", []byte("P"), 0))
	require.NoError(t, c.Set(bg, "with space", []byte("S"), 0))
	got, err := c.GetMultiMap(bg, []string{"with space", "plain", "absent key"})
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{"with space": []byte("S"), "plain": []byte("P")}, got)

	// Text-safe keys, UTF-8 included, are not encoded: Text sees them.
	for _, key := range []string{"plain", "ключ", strings.Repeat("k", 250)} {
		require.NoError(t, c.Set(bg, key, []byte("same"), 0))
		requireValue(t, txt, key, "same")
		assert.Equal(t, "same", rawMetaGet(t, srv.Addr, key))
	}
}

// rawMetaGet sends "mg <token> v" on a plain socket and returns the value,
// or "" for a miss.
func rawMetaGet(t *testing.T, addr, token string) string {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 3*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = fmt.Fprintf(nc, "mg %s v\r\n", token)
	require.NoError(t, err)
	br := bufio.NewReader(nc)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	if line == "EN\r\n" {
		return ""
	}
	size, ok := strings.CutPrefix(strings.TrimSuffix(line, "\r\n"), "VA ")
	require.True(t, ok, "mg %s v: %q", token, line)
	n, err := strconv.Atoi(size)
	require.NoError(t, err)
	data := make([]byte, n+2)
	_, err = io.ReadFull(br, data)
	require.NoError(t, err)
	return string(data[:n])
}

// The key limits against memcached 1.6.18: a key that needs base64 may
// have 186 bytes (248 encoded) and works with every operation; one more
// byte is ErrMalformedKey before anything is sent, as memcached would
// refuse its 252-byte token. Text-safe keys go up to MaxKeyLength.
func TestMetaKeyBoundary(t *testing.T) {
	srv := startMemcached(t)
	c, dials := countingClient(t, srv.Addr, Meta, Options{})
	for _, key := range []string{strings.Repeat(" ", 186), strings.Repeat("\x00", 186), strings.Repeat("k", 250)} {
		for _, op := range keyedOps {
			err := op.op(c, key)
			assert.NotErrorIs(t, err, ErrMalformedKey, "%s, %d-byte key", op.name, len(key))
			var ce *ClientError
			if errors.As(err, &ce) { // the one refusal allowed: incr of the "v" a set stored
				assert.ErrorIs(t, err, ErrNonNumeric, "%s: memcached refused the %d-byte key", op.name, len(key))
			}
			assert.NotErrorIs(t, err, ErrProtocol, op.name)
		}
		require.NoError(t, c.Set(bg, key, []byte("v"), 0))
		requireValue(t, c, key, "v")
	}
	before := dials.Load()
	for _, key := range []string{strings.Repeat(" ", 187), "\x00" + strings.Repeat("k", 186), strings.Repeat("k", 251)} {
		for _, op := range keyedOps {
			assert.ErrorIs(t, op.op(c, key), ErrMalformedKey, "%s, %d-byte key", op.name, len(key))
		}
	}
	assert.Equal(t, before, dials.Load(), "a refused key dialed")
	// What the client spares: memcached's own answer to the 187-byte key.
	enc := base64.StdEncoding.EncodeToString([]byte(strings.Repeat(" ", 187)))
	nc, err := net.Dial("tcp", srv.Addr)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = fmt.Fprintf(nc, "mg %s b v\r\n", enc)
	require.NoError(t, err)
	line, err := bufio.NewReader(nc).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "CLIENT_ERROR bad command line format\r\n", line)
}

// A multi-get's misses cost nothing on the wire: quiet gets answer hits
// only, and MN closes the reply.
func TestMetaMultiGetMissesAreSilent(t *testing.T) {
	srv := startMemcached(t)
	var mu sync.Mutex
	var got bytes.Buffer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &readRecorder{Conn: nc, mu: &mu, buf: &got}, nil
	}
	c := newFaultClient(t, srv.Addr, Meta, Options{DialContext: dial})
	require.NoError(t, c.Set(bg, "hit", []byte("H"), 0))
	mu.Lock()
	got.Reset()
	mu.Unlock()
	keys := make([]string, 20)
	for i := range keys {
		keys[i] = "miss-" + strconv.Itoa(i)
	}
	keys[7] = "hit"
	m, err := c.GetMultiMap(bg, keys)
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{"hit": []byte("H")}, m)
	mu.Lock()
	defer mu.Unlock()
	assert.Regexp(t, `^VA 1 f0 O\d+\r\nH\r\nMN\r\n$`, got.String(), "the server's whole reply")
}

// readRecorder keeps a copy of what a connection reads.
type readRecorder struct {
	net.Conn
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (r *readRecorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// A quiet touch that hits is still answered (HD): the fence after it
// drops that reply, so requests behind it get their own.
func TestMetaTouchNoreplyFenced(t *testing.T) {
	srv := startMemcached(t)
	c := newFaultClient(t, srv.Addr, Meta, Options{})
	require.NoError(t, c.Set(bg, "t", []byte("v"), 0))
	for i := 0; i < 20; i++ {
		require.NoError(t, c.TouchNoreply(bg, "t", 100*time.Second))
		require.NoError(t, c.TouchNoreply(bg, "absent", time.Second)) // EN, quiet: nothing
		requireValue(t, c, "t", "v")
	}
	requireTTL(t, srv.Addr, "t", 100)
	require.NoError(t, c.DeleteNoreply(bg, "t"))
	require.NoError(t, c.DeleteNoreply(bg, "absent")) // NF, dropped by the fence
	requireMiss(t, c, "t")
}

// A reply whose opaque token is not the request's is never delivered: the
// call fails with ErrProtocol, the connection is discarded, and the next
// request works on a fresh one.
func TestMetaOpaqueMismatch(t *testing.T) {
	cases := []struct {
		name  string
		reply string // to the first request; O+ is its token plus one
		op    func(c *Client) error
	}{
		{"value under the next token", "VA 5 f0 O+\r\nstale\r\n", func(c *Client) error { _, err := c.Get(bg, "k", nil); return err }},
		{"miss under the next token", "EN O+\r\n", func(c *Client) error { _, err := c.Get(bg, "k", nil); return err }},
		{"stored without a token", "HD\r\n", func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }},
		{"deleted under the next token", "HD O+\r\n", func(c *Client) error { return c.Delete(bg, "k") }},
		{"number under the next token", "VA 1 O+\r\n7\r\n", func(c *Client) error { _, err := c.Incr(bg, "k", 1); return err }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					req, ok := fc.Next()
					if !ok {
						return
					}
					tok, err := strconv.ParseUint(metaOpaque(req), 10, 32)
					if err != nil {
						return
					}
					fc.Send(strings.ReplaceAll(tc.reply, "O+", "O"+strconv.FormatUint(uint64(uint32(tok)+1), 10)))
				}
				fc.Serve(fresh)
			})
			c := newFaultClient(t, srv.Addr, Meta, Options{Timeout: 2 * time.Second})
			err := guarded(t, func() error { return tc.op(c) })
			require.ErrorIs(t, err, ErrProtocol)
			afterFault(t, srv, c)
		})
	}
}

// Two requests in flight whose replies come swapped: with order alone to
// go by (Ultra), each incr would take the other's number; on Meta the
// first reply's token gives it away, neither number is delivered, and the
// connection is replaced.
func TestMetaSwappedRepliesNotDelivered(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) {
		if fc.N == 0 {
			ra, ok1 := fc.Next()
			rb, ok2 := fc.Next()
			if !ok1 || !ok2 {
				return
			}
			fc.Send("VA 2 O" + metaOpaque(rb) + "\r\n22\r\nVA 2 O" + metaOpaque(ra) + "\r\n11\r\n")
		}
		fc.Serve(fresh)
	})
	c := newFaultClient(t, srv.Addr, Meta, Options{Timeout: 2 * time.Second})
	type result struct {
		n   uint64
		err error
	}
	res := make(chan result, 2)
	incr := func(k string) {
		n, err := c.Incr(bg, k, 1)
		res <- result{n, err}
	}
	go incr("a")
	srv.WaitRequest() // a is in flight, unanswered
	go incr("b")
	protocolErrs := 0
	for i := 0; i < 2; i++ {
		select {
		case r := <-res:
			require.Error(t, r.err, "number %d delivered", r.n)
			if errors.Is(r.err, ErrProtocol) {
				protocolErrs++
			}
		case <-time.After(hangGuard):
			require.Fail(t, "an Incr did not return")
		}
	}
	assert.Equal(t, 2, protocolErrs, "both fail with the stream's fault")
	afterFault(t, srv, c)
}

// A request abandoned while its reply is due leaves a sink that reads the
// reply under the request's own opaque token, so the connection is kept.
// (The token is not the lane's first, 0, which a sink without one would
// match by chance.)
func TestMetaSinkKeepsOpaque(t *testing.T) {
	release := make(chan struct{})
	srv := startFakeServer(t, func(fc *fakeConn) {
		if fc.N == 0 {
			warm, ok := fc.Next()
			if !ok {
				return
			}
			fc.Send(fakeReply(warm, fresh))
			req, ok := fc.Next()
			if !ok || !fc.Wait(release) {
				return
			}
			fc.Send(echoOpaque(req, "VA 5 f0 O$\r\nstale\r\n"))
		}
		fc.Serve(fresh)
	})
	c := newFaultClient(t, srv.Addr, Meta, Options{Timeout: time.Minute})
	requireValue(t, c, "k", "fresh")
	ctx, cancel := context.WithCancel(bg)
	go func() {
		// The warm-up get, then the one to abandon; else the Get's own
		// hang guard fails.
		if srv.awaitRequest() && srv.awaitRequest() {
			cancel()
		}
	}()
	res := guardedGet(t, c, ctx, "k")
	require.ErrorIs(t, res.err, context.Canceled)
	close(release) // the stale reply now reaches the sink
	res = guardedGet(t, c, bg, "k")
	require.NoError(t, res.err)
	assert.Equal(t, "fresh", res.v, "the sink took the stale reply")
	assert.Equal(t, 1, srv.Accepted(), "the connection was kept")
}
