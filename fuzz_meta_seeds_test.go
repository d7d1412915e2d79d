package ermc

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var captureMeta = flag.Bool("capture-meta", false, "write the replies of TestMetaSeedsFromMemcached as FuzzMetaReply seeds (testdata/fuzz/FuzzMetaReply/mc<version>-*)")

// metaSeed is one exchange with a real memcached whose reply is a seed of
// FuzzMetaReply: after setup, the fuzz target's request for op (key "a",
// or keys "a" and "a2"; opaque metaFuzzOpaque) is sent, or line when set
// (the same request with its flags in another order, or with flags the
// target does not send, which the reply echoes in that order), and the
// reply is recorded.
type metaSeed struct {
	name   string
	server string // "", "small" (-I 1k), "full" (-M -m 2)
	setup  []*request
	op     opcode
	line   string
	want   string // what the parsed outcome's message holds; "" for success
}

// fuzzTok is the fuzz target's opaque token, for hand-written lines.
var fuzzTok = strconv.FormatUint(metaFuzzOpaque, 10)

func metaSet(key, value string, flags uint32) *request {
	return &request{op: opSet, key: key, value: []byte(value), flags: flags}
}

func metaSeeds() []metaSeed {
	compressed, _ := appendCompressed(nil, []byte(strings.Repeat("compressible text, ", 20)))
	del := func(keys ...string) []*request {
		var rs []*request
		for _, k := range keys {
			rs = append(rs, &request{op: opDelete, key: k})
		}
		return rs
	}
	return []metaSeed{
		{name: "get-hit", setup: []*request{metaSet("a", "hello", 0)}, op: opGet},
		{name: "get-miss", setup: del("a"), op: opGet, want: "cache miss"},
		{name: "get-empty-value", setup: []*request{metaSet("a", "", 3)}, op: opGet},
		{name: "get-binary-value", setup: []*request{metaSet("a", "\r\nMN\r\n\x00\x81\xff VA 1 f0 O"+fuzzTok+"\r\n", 0)}, op: opGet},
		{name: "get-3000-bytes", setup: []*request{metaSet("a", strings.Repeat("0123456789", 300), 0)}, op: opGet},
		{name: "get-over-fuzz-max", setup: []*request{metaSet("a", strings.Repeat("x", 6000), 0)}, op: opGet},
		{name: "get-compressed", setup: []*request{metaSet("a", string(compressed), FlagCompressed)}, op: opGet},
		{name: "get-after-decr", setup: []*request{metaSet("a", "10", 0), {op: opDecr, key: "a", delta: 1}}, op: opGet},
		{name: "get-flags-first", setup: []*request{metaSet("a", "hello", 5)}, op: opGet, line: "mg a O" + fuzzTok + " f v"},
		{name: "get-unasked-flags", setup: []*request{metaSet("a", "hello", 5)}, op: opGet, line: "mg a s v k h l f O" + fuzzTok},
		{name: "get-base64-key", setup: []*request{metaSet("a b", "spaced", 1)}, op: opGet, line: "mg YSBi b k v f O" + fuzzTok},
		{name: "gets-hit", setup: []*request{metaSet("a", "hello", 0)}, op: opGets},
		{name: "gets-reversed", setup: []*request{metaSet("a", "hello", 2)}, op: opGets, line: "mg a O" + fuzzTok + " c f v"},
		{name: "gets-miss", setup: del("a"), op: opGets, want: "cache miss"},
		{name: "gets-vivify-win", setup: del("a"), op: opGets, line: "mg a v f c t N30 O" + fuzzTok},
		{name: "gets-vivify-taken", setup: append(del("a"), &request{op: opGets, key: "a", meta: metaFields{vivify: 30}}), op: opGets, line: "mg a v f c t N30 O" + fuzzTok},
		{name: "gets-stale-win", setup: []*request{metaSet("a", "old", 0), {op: opDelete, key: "a", exptime: 30, meta: metaFields{invalidate: true}}}, op: opGets, line: "mg a v f c t O" + fuzzTok},
		{name: "gets-stale-taken", setup: []*request{metaSet("a", "old", 0), {op: opDelete, key: "a", exptime: 30, meta: metaFields{invalidate: true}}, {op: opGets, key: "a"}}, op: opGets, line: "mg a t c f v O" + fuzzTok},
		{name: "get-recache-win", setup: []*request{{op: opSet, key: "a", value: []byte("v"), exptime: 100}}, op: opGet, line: "mg a v f t R200 O" + fuzzTok},
		{name: "gat-hit", setup: []*request{metaSet("a", "hello", 0)}, op: opGat},
		{name: "gat-miss", setup: del("a"), op: opGat, want: "cache miss"},
		{name: "touch-hit", setup: []*request{metaSet("a", "hello", 0)}, op: opTouch},
		{name: "touch-miss", setup: del("a"), op: opTouch, want: "cache miss"},
		{name: "multi-both", setup: []*request{metaSet("a", "A", 0), metaSet("a2", "A2", 4)}, op: opGetMulti},
		{name: "multi-second", setup: append(del("a"), metaSet("a2", "A2", 0)), op: opGetMulti},
		{name: "multi-first", setup: append(del("a2"), metaSet("a", "A", 0)), op: opGetMulti},
		{name: "multi-none", setup: del("a", "a2"), op: opGetMulti},
		{name: "multi-compressed", setup: []*request{metaSet("a", "A", 0), metaSet("a2", string(compressed), FlagCompressed)}, op: opGetMulti},
		{name: "incr-hit", setup: []*request{metaSet("a", "41", 0)}, op: opIncr},
		{name: "incr-miss", setup: del("a"), op: opIncr, want: "cache miss"},
		{name: "incr-wraps", setup: []*request{metaSet("a", "18446744073709551615", 0)}, op: opIncr},
		{name: "incr-non-numeric", setup: []*request{metaSet("a", "abc", 0)}, op: opIncr, want: "non-numeric"},
		{name: "decr-floor", setup: []*request{metaSet("a", "3", 0)}, op: opDecr, line: "ma a v MD D100 O" + fuzzTok},
		{name: "set-stored", setup: del("a"), op: opSet},
		{name: "add-not-stored", setup: []*request{metaSet("a", "x", 0)}, op: opAdd, want: "not stored"},
		{name: "replace-not-stored", setup: del("a"), op: opReplace, want: "not stored"},
		{name: "append-stored", setup: []*request{metaSet("a", "x", 0)}, op: opAppend},
		{name: "prepend-not-stored", setup: del("a"), op: opPrepend, want: "not stored"},
		{name: "cas-exists", setup: []*request{metaSet("a", "x", 0)}, op: opCAS, line: "ms a 1 C1 O" + fuzzTok + "\r\nv", want: "compare-and-swap conflict"},
		{name: "cas-not-found", setup: del("a"), op: opCAS, line: "ms a 1 C1 O" + fuzzTok + "\r\nv", want: "cache miss"},
		{name: "cas-invalidate-older", setup: []*request{metaSet("a", "x", 0)}, op: opCAS, line: "ms a 1 C1 I O" + fuzzTok + "\r\nv"},
		{name: "delete-hit", setup: []*request{metaSet("a", "x", 0)}, op: opDelete},
		{name: "delete-miss", setup: del("a"), op: opDelete, want: "cache miss"},
		{name: "invalidate", setup: []*request{metaSet("a", "x", 0)}, op: opDelete, line: "md a I T30 O" + fuzzTok},
		{name: "fence-after-quiet-failures", setup: []*request{metaSet("a", "x", 0)}, op: opFence,
			line: "ms nope 1 MR q O1\r\nx\r\nmd nope q O2\r\nmg a T30 q O3\r\nma nope q O4\r\nms a 1 C1 q O5\r\nx\r\nmn"},
		{name: "fence-after-quiet-successes", op: opFence, line: "ms a 1 q O1\r\nx\r\nmd a q O2\r\nmn"},
		{name: "fence-after-too-large", server: "small", op: opFence, line: "ms a 4000 q O1\r\n" + strings.Repeat("x", 4000) + "\r\nmn"},
		{name: "set-too-large", server: "small", op: opSet, line: "ms a 4000 O" + fuzzTok + "\r\n" + strings.Repeat("x", 4000), want: "object too large"},
		{name: "set-out-of-memory", server: "full", op: opSet, line: "ms a 500000 O" + fuzzTok + "\r\n" + strings.Repeat("x", 500000), want: "out of memory"},
		{name: "set-bad-command-line", op: opSet, line: "ms " + strings.Repeat("k", 251) + " 1 O" + fuzzTok + "\r\nv", want: "bad command line format"},
		{name: "get-bad-base64", op: opGet, line: "mg !!!! b v f O" + fuzzTok, want: "error decoding key"},
		{name: "get-opaque-too-long", op: opGet, line: "mg a v f O" + strings.Repeat("1", 32), want: "opaque token too long"},
		{name: "get-invalid-flag", op: opGet, line: "mg a v f E5 O" + fuzzTok, want: "invalid flag"},
		{name: "version", op: opVersion},
		{name: "flush-all", op: opFlushAll},
		{name: "stats", op: opStats},
	}
}

// TestMetaSeedsFromMemcached runs each seed exchange against memcached
// and checks that the parser reads the reply with the expected outcome;
// with -capture-meta it writes the replies as FuzzMetaReply seeds.
func TestMetaSeedsFromMemcached(t *testing.T) {
	servers := map[string]*testServer{"": startMemcached(t)}
	var version string
	for _, sd := range metaSeeds() {
		srv := servers[sd.server]
		if srv == nil {
			switch sd.server {
			case "small":
				srv = startMemcached(t, "-I", "1k", "-o", "slab_chunk_max=512")
			case "full":
				srv = startMemcached(t, "-M", "-m", "2")
				fillMemcached(t, srv.Addr)
			}
			servers[sd.server] = srv
		}
		c := dialMeta(t, srv.Addr)
		if version == "" {
			v := &request{op: opVersion}
			c.do(v)
			version = v.text
		}
		if len(sd.setup) > 0 {
			c.do(sd.setup...)
		}
		r := metaFuzzRequest(uint8(sd.op))
		r.maxValue = DefaultMaxValueLength // the whole reply is recorded; the target's own limit is smaller
		r.onValue = func(int, []byte) {}
		var out []byte
		if sd.line != "" {
			out = append([]byte(sd.line), crlf...)
		} else {
			out = appendMetaRequest(nil, r)
		}
		reply, err := captureReply(c, r, out)
		require.NoError(t, err, sd.name)
		if sd.want == "" {
			assert.NoError(t, r.err, sd.name)
		} else {
			assert.ErrorContains(t, r.err, sd.want, sd.name)
		}
		if *captureMeta {
			entry := fmt.Sprintf("go test fuzz v1\nbyte(%q)\nbyte(%q)\n[]byte(%s)\n", rune(sd.op), rune(7), strconv.Quote(string(reply)))
			dir := filepath.Join("testdata", "fuzz", "FuzzMetaReply")
			require.NoError(t, os.MkdirAll(dir, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "mc"+version+"-"+sd.name), []byte(entry), 0o644))
		}
	}
}

// captureReply writes out and reads until the parser has r's whole reply,
// which it returns. A stream error is returned after the bytes read.
func captureReply(c *metaConn, r *request, out []byte) ([]byte, error) {
	if err := c.nc.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := c.nc.Write(out); err != nil {
		return nil, err
	}
	var got []byte
	tmp := make([]byte, 64<<10)
	for {
		n, done, err := parseMetaReply(r, c.buf)
		got = append(got, c.buf[:n]...)
		c.buf = c.buf[n:]
		if err == errDiscardConn {
			return got, nil // what memcached sends after it is not r's reply
		}
		if done || err != nil {
			if len(c.buf) > 0 && err == nil {
				err = fmt.Errorf("bytes after the reply: %q", c.buf)
			}
			return got, err
		}
		m, rerr := c.nc.Read(tmp)
		if m == 0 && rerr != nil {
			return got, rerr
		}
		c.buf = append(c.buf, tmp[:m]...)
	}
}

// fillMemcached stores 500 KB items until memcached (-M) refuses one.
func fillMemcached(t *testing.T, addr string) {
	c := dialMeta(t, addr)
	for i := 0; i < 50; i++ {
		r := &request{op: opSet, key: "fill-" + strconv.Itoa(i), value: make([]byte, 500_000)}
		c.do(r)
		if r.err != nil {
			return
		}
	}
	require.Fail(t, "memcached -M -m 2 never ran out of memory")
}
