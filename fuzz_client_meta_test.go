package ermc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzClientMeta: the whole client on the Meta driver, with the
// properties of FuzzClientText and the others (fuzz_client_test.go), and
// one of its own: a reply under an opaque token other than its request's
// is never delivered; it is ErrProtocol, and the connection is replaced.
//
// An input means what it means to FuzzMetaReply: op is an opcode
// (metaFuzzRequest), and the lane's tokens start at metaFuzzOpaque, so the
// request goes out with O4294967295 (a multi-get's keys with 4294967295
// and 0; the request after it gets the next token). The reply is served
// as it is, so the input picks the right token or another, and every
// FuzzMetaReply entry is a seed here as well. The opcodes that are no
// client call of their own run a quiet command: opFence SetNoreply,
// opAuth DeleteNoreply (each followed by the lane's fence, mn).
func FuzzClientMeta(f *testing.F) {
	tok := "O" + fuzzTok
	f.Add(uint8(opGet), uint8(5), []byte("VA 5 f0 "+tok+"\r\nhello\r\n"))
	f.Add(uint8(opGets), uint8(63), []byte("VA 2 c77 f3 "+tok+"\r\nhi\r\n"))
	f.Add(uint8(opGet), uint8(63), []byte("EN "+tok+"\r\n"))
	f.Add(uint8(opAdd), uint8(3), []byte("NS "+tok+"\r\n"))
	f.Add(uint8(opCAS), uint8(63), []byte("EX "+tok+"\r\n"))
	f.Add(uint8(opDelete), uint8(2), []byte("NF "+tok+"\r\n"))
	f.Add(uint8(opIncr), uint8(3), []byte("VA 2 "+tok+"\r\n42\r\n"))
	f.Add(uint8(opSet), uint8(7), []byte("CLIENT_ERROR bad data chunk\r\n"))
	f.Add(uint8(opGet), uint8(7), []byte("SERVER_ERROR out of memory\r\n"))
	// The wrong token: 0 is the one the request after this one gets.
	f.Add(uint8(opGet), uint8(63), []byte("VA 5 f0 O0\r\nhello\r\n"))
	f.Add(uint8(opSet), uint8(63), []byte("HD O1\r\n"))
	// A multi-get whose first key misses (quietly) and second hits.
	f.Add(uint8(opGetMulti), uint8(4), []byte("VA 1 f0 O0\r\nB\r\nMN\r\n"))
	f.Add(uint8(opGetMulti), uint8(63), []byte("VA 1 f0 O1\r\nB\r\nMN\r\n")) // O1: no key's token
	// Trailing bytes under the token of the request after.
	f.Add(uint8(opGet), uint8(63), []byte("EN "+tok+"\r\nVA 5 f0 O0\r\nstale\r\n"))
	f.Add(uint8(opFence), uint8(9), []byte("NS "+tok+"\r\nMN\r\n"))
	f.Add(uint8(opFence), uint8(63), []byte("VA 1 f0 O0\r\nx\r\nMN\r\n"))
	f.Add(uint8(opAuth), uint8(5), []byte("NF "+tok+"\r\nMN\r\n"))
	f.Add(uint8(opGet), uint8(63), []byte("VA 100000 f0 "+tok+"\r\n"+strings.Repeat("x", 100_000)+"\r\n"))
	addEntriesOf(f, "FuzzMetaReply")
	f.Fuzz(func(t *testing.T, op, chunk uint8, reply []byte) {
		confirmAllocs(t, func() error { return oneMetaRequest(t, op, chunk, reply) })
	})
}

// metaClientOp is the client call an opcode stands for.
type metaClientOp struct {
	wire  string // what it writes (its tokens aside): the in-memory server counts its requests in it
	quiet bool   // it returns once sent; the lane's fence (mn) reads the reply
	call  func(c *Client, key string) fuzzResult
}

var metaClientOps = [...]metaClientOp{
	opGet:      {wire: "mg a v f O1\r\n", call: fuzzOps[0]},
	opGets:     {wire: "mg a v f c O1\r\n", call: fuzzOps[1]},
	opGat:      {wire: "mg a v f T60 O1\r\n", call: fuzzOps[2]},
	opGetMulti: {wire: "mg a v f q O1\r\nmg a2 v f q O2\r\nmn\r\n", call: fuzzOps[3]},
	opSet:      {wire: "ms a 1 O1\r\nv\r\n", call: fuzzOps[5]},
	opAdd:      {wire: "ms a 1 ME O1\r\nv\r\n", call: metaCall(opAdd, func(c *Client, k string) error { return c.Add(bg, k, []byte("v"), 0) })},
	opReplace:  {wire: "ms a 1 MR O1\r\nv\r\n", call: metaCall(opReplace, func(c *Client, k string) error { return c.Replace(bg, k, []byte("v"), 0) })},
	opAppend:   {wire: "ms a 1 MA O1\r\nv\r\n", call: metaCall(opAppend, func(c *Client, k string) error { return c.Append(bg, k, []byte("v")) })},
	opPrepend:  {wire: "ms a 1 MP O1\r\nv\r\n", call: metaCall(opPrepend, func(c *Client, k string) error { return c.Prepend(bg, k, []byte("v")) })},
	opCAS: {wire: "ms a 1 C1 O1\r\nv\r\n", call: metaCall(opCAS, func(c *Client, k string) error {
		return c.CompareAndSwap(bg, k, []byte("v"), 1, 0)
	})},
	opIncr: {wire: "ma a v D1 O1\r\n", call: fuzzOps[4]},
	opDecr: {wire: "ma a v MD D1 O1\r\n", call: func(c *Client, key string) fuzzResult {
		n, err := c.Decr(bg, key, 1)
		return fuzzResult{op: opDecr, key: key, number: n, err: err}
	}},
	opDelete:   {wire: "md a O1\r\n", call: fuzzOps[6]},
	opTouch:    {wire: "mg a T60 O1\r\n", call: metaCall(opTouch, func(c *Client, k string) error { return c.Touch(bg, k, time.Minute) })},
	opFlushAll: {wire: "flush_all\r\n", call: metaCall(opFlushAll, func(c *Client, _ string) error { return c.FlushAll(bg) })},
	opStats:    {wire: "stats\r\n", call: fuzzOps[7]},
	opVersion:  {wire: "version\r\n", call: fuzzOps[8]},
	opAuth: {wire: "md a q O1\r\nmn\r\n", quiet: true, call: metaCall(opAuth, func(c *Client, k string) error {
		return c.DeleteNoreply(bg, k)
	})},
	opFence: {wire: "ms a 1 q O1\r\nv\r\nmn\r\n", quiet: true, call: metaCall(opFence, func(c *Client, k string) error {
		return c.SetNoreply(bg, k, []byte("v"), 0)
	})},
}

// fuzzRequests counts the requests the in-memory server finds in wire.
func fuzzRequests(wire []byte) int {
	n := 0
	for {
		_, size := splitRequest(Meta, wire)
		if size == 0 {
			return n
		}
		wire, n = wire[size:], n+1
	}
}

// metaCall makes a client call that returns only an error into a fuzz op.
func metaCall(op opcode, call func(c *Client, key string) error) func(c *Client, key string) fuzzResult {
	return func(c *Client, key string) fuzzResult { return fuzzResult{op: op, key: key, err: call(c, key)} }
}

func oneMetaRequest(t *testing.T, op, chunk uint8, reply []byte) error {
	r := metaFuzzRequest(op)
	m := metaClientOps[r.op]
	srv := newFuzzServer(Meta, reply, int(chunk%64)+1, fuzzRequests([]byte(m.wire)))
	c := fuzzClient(t, Meta, srv)
	defer c.Close()
	ln := c.drv.(*pipeDriver).lanes[0]
	ln.mu.Lock()
	ln.seq = metaFuzzOpaque
	ln.mu.Unlock()

	var res fuzzResult
	allocErr := measureAllocs(len(reply), func() {
		res = guarded(t, func() fuzzResult { return m.call(c, "a") })
		if m.quiet {
			waitLaneIdle(t, ln)
		}
	})
	if isTimeout(res.err) {
		t.Fatalf("%v timed out, but the server never stalls: %v", res.op, res.err)
	}
	faulted := isFault(res.err)
	if m.quiet {
		// The fence ends the reply: a stream that is not reply lines
		// (no value among them) closed by MN fails the connection.
		faulted = !refMetaFenced(reply)
	} else if err := checkMetaClient(r, res, reply); err != nil {
		t.Fatalf("%v: %v\nreply %q", res.op, err, reply)
	}
	// As on Ultra: from now a dry read waits for the next request, which
	// a reader may try before the request is written.
	if first := srv.conn(0); first != nil {
		first.setLater()
	}
	checkNextRequest(t, srv, c, Meta, faulted)
	return allocErr
}

// waitLaneIdle waits until the lane has nothing queued, written or being
// read: a quiet command's fence has had its reply (or its connection
// failed). The in-memory server never stalls, so this is soon; the hang
// guard bounds it.
func waitLaneIdle(t *testing.T, ln *lane) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		ln.mu.Lock()
		idle := len(ln.pending) == 0 && !ln.writing && ln.flight.len() == 0 && !ln.reading
		ln.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lane did not go idle within %v", hangGuard)
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// checkMetaClient compares what the client returned with the reference
// framing of fuzz_meta_test.go, for the request r stands for.
func checkMetaClient(r *request, res fuzzResult, reply []byte) error {
	r.err = res.err
	out := parseOutcome{done: !isFault(res.err), failed: isFault(res.err), dst: string(res.value), cas: res.cas,
		number: res.number, calls: res.calls}
	if r.op.isSingleGet() {
		// The client returns no flags (they show in the value, which is
		// decompressed by them and compared), and a CAS id only from Gets.
		rep, _ := refMetaSingle(reply, uint64(r.maxValue))
		out.flags = rep.item.flags
		if r.op != opGets {
			out.cas = rep.item.cas
		}
	}
	if err := checkMetaOutcome(r, out, reply); err != nil {
		return err
	}
	switch r.op {
	case opFlushAll, opStats, opVersion:
		return nil // text commands: FuzzClientText covers their replies
	}
	if err := checkMetaCode(r, res.err, reply); err != nil {
		return err
	}
	return checkMetaToken(r, res.err, reply)
}

// checkMetaCode: an outcome other than success is the reply the
// reference reads. A miss is EN (a get, touch) or NF (incr, decr, delete,
// cas), not stored NS, a CAS conflict EX, each under the request's token;
// a server's or client's error is an error line (for a multi-get, the one
// that ends its values).
func checkMetaCode(r *request, err error, reply []byte) error {
	var se *ServerError
	var ce *ClientError
	if errors.As(err, &se) || errors.As(err, &ce) {
		line, _, ok := refMetaLineAt(reply)
		if r.op == opGetMulti {
			rep, repOK := refMetaMulti(reply, r.opaque, len(r.keys))
			line, ok = rep.end, repOK
		}
		if !ok || !refIsErrorLine(line) {
			return fmt.Errorf("%v; the reference reads no error line", err)
		}
		return nil
	}
	want := ""
	switch {
	case err == ErrCacheMiss && (r.op.isSingleGet() || r.op == opTouch):
		want = "EN"
	case err == ErrCacheMiss:
		want = "NF"
	case err == ErrNotStored:
		want = "NS"
	case err == ErrCASConflict:
		want = "EX"
	default:
		return nil
	}
	l, ok := refMetaSingle(reply, 0)
	if !ok || l.code != want || l.flags["O"] != strconv.FormatUint(uint64(r.opaque), 10) {
		return fmt.Errorf("%v; the reference reads %+v, %v, want %s under the request's token", err, l, ok, want)
	}
	return nil
}

// checkMetaToken: a reply line under a token the request was not sent
// with is refused (ErrProtocol), whatever follows it. Error lines carry
// no token; MN closes a multi-get.
func checkMetaToken(r *request, err error, reply []byte) error {
	line, _, ok := refMetaLineAt(reply)
	if !ok || refIsErrorLine(line) {
		return nil
	}
	l, ok := refMetaParseLine(line)
	switch {
	case !ok:
		return nil // not a meta reply line: other checks judge it
	case r.op == opGetMulti:
		o, perr := strconv.ParseUint(l.flags["O"], 10, 32)
		if l.code == "MN" || perr == nil && uint32(o)-r.opaque < uint32(len(r.keys)) {
			return nil
		}
	case l.flags["O"] == strconv.FormatUint(uint64(r.opaque), 10):
		return nil
	}
	if !errors.Is(err, ErrProtocol) {
		return fmt.Errorf("a reply under another token than O%d came back as %v", r.opaque, err)
	}
	return nil
}

// addEntriesOf adds the corpus entries of another target whose inputs
// are (byte, byte, []byte) with the same meaning.
func addEntriesOf(f *testing.F, target string) {
	paths, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "*"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no corpus entries of %s: %v", target, err)
	}
	for _, p := range paths {
		op, chunk, reply, err := readReplyEntry(p)
		if err != nil {
			f.Fatalf("%s: %v", p, err)
		}
		f.Add(op, chunk, reply)
	}
}

// readReplyEntry reads a corpus entry of three values: byte, byte,
// []byte.
func readReplyEntry(path string) (op, chunk uint8, reply []byte, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, nil, err
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 4 || lines[0] != "go test fuzz v1" {
		return 0, 0, nil, strconv.ErrSyntax
	}
	var b [2]uint8
	for i, line := range lines[1:3] {
		s, ok := strings.CutPrefix(line, "byte(")
		if !ok {
			return 0, 0, nil, strconv.ErrSyntax
		}
		if b[i], err = unquoteByte(strings.TrimSuffix(s, ")")); err != nil {
			return 0, 0, nil, err
		}
	}
	s, ok := strings.CutPrefix(lines[3], "[]byte(")
	if !ok {
		return 0, 0, nil, strconv.ErrSyntax
	}
	v, err := strconv.Unquote(strings.TrimSuffix(s, ")"))
	return b[0], b[1], []byte(v), err
}

// unquoteByte reads a Go rune literal of a byte value: 'x', '\a', '\x85'.
func unquoteByte(lit string) (uint8, error) {
	v, _, tail, err := strconv.UnquoteChar(strings.TrimSuffix(strings.TrimPrefix(lit, "'"), "'"), '\'')
	if err != nil || tail != "" || v > 255 || len(lit) < 3 || lit[0] != '\'' || lit[len(lit)-1] != '\'' {
		return 0, strconv.ErrSyntax
	}
	return uint8(v), nil
}
