package ermc

import (
	"strconv"
	"testing"
)

// FuzzUltraReplies: the Ultra driver's reply matching. Three requests for
// different keys are pipelined on one connection, in a known order; the
// fuzz input is the server's byte stream for all three. Every request
// that completes must have exactly what the input framed for its key, in
// its place in the stream (never a neighbour's value); once one request
// meets a fault, every request behind it fails too; a stream a healthy
// memcached could send is read without error; and the request after them
// gets its own value, never over a connection that faulted.
func FuzzUltraReplies(f *testing.F) {
	f.Add(uint8(0), uint8(63), []byte("VALUE a 0 1\r\nA\r\nEND\r\nVALUE b 0 1\r\nB\r\nEND\r\nEND\r\n"))
	f.Add(uint8(0b01_10_01), uint8(3), []byte("VALUE a 0 1 5\r\nA\r\nEND\r\nVALUE b2 0 2\r\nB2\r\nVALUE b 0 1\r\nB\r\nEND\r\nVALUE c 0 1 7\r\nC\r\nEND\r\n"))
	f.Add(uint8(0b11_00_11), uint8(9), []byte("1\r\nVALUE b 0 1\r\nB\r\nEND\r\nNOT_FOUND\r\n"))
	f.Add(uint8(0), uint8(5), []byte("VALUE b 0 1\r\nB\r\nEND\r\nVALUE a 0 1\r\nA\r\nEND\r\nEND\r\n"))
	f.Add(uint8(0), uint8(5), []byte("SERVER_ERROR busy\r\nVALUE b 0 1\r\nB\r\nEND\r\nERROR\r\n"))
	f.Fuzz(func(t *testing.T, ops, chunk uint8, reply []byte) {
		confirmAllocs(t, func() error { return pipelined(t, ops, chunk, reply) })
	})
}

func pipelined(t *testing.T, ops, chunk uint8, reply []byte) error {
	srv := newFuzzServer(Ultra, reply, int(chunk%64)+1, 3)
	c := fuzzClient(t, Ultra, srv)
	defer c.Close()
	kinds := []uint8{ops & 3, ops >> 2 & 3, ops >> 4 & 3}
	var results []fuzzResult
	allocErr := measureAllocs(len(reply), func() { results = runPipelined(t, c, srv, kinds) })
	faulted := checkPipelined(t, results, reply)
	checkNextRequest(t, srv, c, Ultra, faulted)
	return allocErr
}

// ultraKinds are the operations a request of FuzzUltraReplies can be.
var ultraKinds = []func(c *Client, key string) fuzzResult{fuzzOps[0], fuzzOps[1], fuzzOps[3], fuzzOps[4]}

// runPipelined starts one request per kind, for keys "a", "b", "c", each
// only once the previous one is written, so that the wire order is
// known; the server answers once all three are written.
func runPipelined(t *testing.T, c *Client, srv *fuzzServer, kinds []uint8) []fuzzResult {
	t.Helper()
	results := make([]fuzzResult, len(kinds))
	done := make(chan struct{}, len(kinds))
	for i, kind := range kinds {
		key := string(rune('a' + i))
		go func() {
			results[i] = ultraKinds[kind](c, key)
			done <- struct{}{}
		}()
		srv.waitWritten(t, i+1)
	}
	for range kinds {
		guarded(t, func() struct{} { <-done; return struct{}{} })
	}
	return results
}

// checkPipelined checks each result against the reference framing of its
// reply, in wire order, and reports whether any request met a fault.
func checkPipelined(t *testing.T, results []fuzzResult, reply []byte) (faulted bool) {
	t.Helper()
	pos, framing, canonical := 0, true, true
	for i, res := range results {
		if isTimeout(res.err) {
			t.Fatalf("request %d timed out, but the server never stalls: %v", i, res.err)
		}
		var rep refReply
		ok := false
		if framing {
			rep, ok = refFirstReply(Ultra, res, reply[pos:])
			framing = ok
			pos += rep.size
			canonical = canonical && ok && refCanonical(res, rep)
		}
		if err := checkResult(Ultra, res, rep, ok); err != nil {
			t.Fatalf("request %d (%v %s): %v\nstream %q", i, res.op, res.key, err, reply)
		}
		if !ok && res.err == nil {
			t.Fatalf("request %d (%v %s) succeeded past the end of what the stream frames\nstream %q", i, res.op, res.key, reply)
		}
		if faulted && !isFault(res.err) {
			t.Fatalf("request %d (%v) behind a fault: %v", i, res.op, res.err)
		}
		faulted = faulted || isFault(res.err)
	}
	if canonical && pos == len(reply) {
		for i, res := range results {
			if res.err != nil && res.err != ErrCacheMiss {
				t.Fatalf("request %d (%v %s) failed on a stream a healthy server could send: %v\nstream %q", i, res.op, res.key, res.err, reply)
			}
		}
	}
	return faulted
}

// refCanonical reports whether a reply is one a healthy memcached sends.
func refCanonical(res fuzzResult, rep refReply) bool {
	if res.op == opIncr {
		n, err := strconv.ParseUint(rep.line, 10, 64)
		return rep.line == "NOT_FOUND" || err == nil && rep.line == strconv.FormatUint(n, 10)
	}
	keys := res.keys
	if keys == nil {
		keys = []string{res.key}
	}
	return refCanonicalText(rep, keys, res.op == opGets, fuzzMaxValue)
}
