package ermc

import (
	"errors"
	"testing"
)

// newGet makes a plain get as Client.get would, with a wake channel as the
// Ultra driver gives it.
func newGet(key string) *request {
	r := &request{op: opGet, key: key, maxValue: 1 << 20, wake: make(chan struct{}, 1)}
	return r
}

// TestCombinedGets: plain gets queued together go out as one multi-key
// get; each VALUE goes to the member that asked for its key (a key asked
// twice is answered twice, in order), members with no VALUE miss, and
// other requests in the batch keep their own commands.
func TestCombinedGets(t *testing.T) {
	a, b, a2, c := newGet("a"), newGet("b"), newGet("a"), newGet("c")
	set := &request{op: opSet, key: "s", value: []byte("v"), wake: make(chan struct{}, 1)}
	ln := &lane{u: &pipeDriver{d: dialer{codec: textCodec}}}
	wire, reqs := ln.encodeBatch(nil, []*request{a, b, a2, set, c})
	if string(wire) != "get a b a\r\nset s 0 0 1\r\nv\r\nget c\r\n" {
		t.Fatalf("wire = %q", wire)
	}
	if len(reqs) != 3 || reqs[0].op != opGetBatch || reqs[1] != set || reqs[2] != c {
		t.Fatalf("wire order: %d requests, first op %d", len(reqs), reqs[0].op)
	}
	batch := reqs[0]
	reply := []byte("VALUE a 0 2\r\nA1\r\nVALUE a 0 2\r\nA2\r\nEND\r\n")
	n, done, err := parseTextReply(batch, reply)
	if err != nil || !done || n != len(reply) {
		t.Fatalf("parse: n=%d done=%v err=%v", n, done, err)
	}
	ln.completeMembers(batch, nil)
	if string(a.dst) != "A1" || a.err != nil || string(a2.dst) != "A2" || a2.err != nil {
		t.Fatalf("a=%q %v, a2=%q %v", a.dst, a.err, a2.dst, a2.err)
	}
	if !errors.Is(b.err, ErrCacheMiss) || len(b.dst) != 0 {
		t.Fatalf("b: %q %v, want a miss", b.dst, b.err)
	}
	for _, m := range []*request{a, b, a2} {
		select {
		case <-m.wake:
		default:
			t.Fatalf("member %s not woken", m.key)
		}
	}
}

// TestCombinedGetsServerError: an error reply to the combined command is
// every member's error; a VALUE for a key no member asked for is a
// protocol error.
func TestCombinedGetsServerError(t *testing.T) {
	x, y := newGet("x"), newGet("y")
	batch := combineGets([]*request{x, y})
	if _, done, err := parseTextReply(batch, []byte("SERVER_ERROR out of memory\r\n")); err != nil || !done {
		t.Fatalf("done=%v err=%v", done, err)
	}
	(&lane{}).completeMembers(batch, nil)
	var se *ServerError
	if !errors.As(x.err, &se) || !errors.As(y.err, &se) {
		t.Fatalf("x: %v, y: %v", x.err, y.err)
	}
	other := combineGets([]*request{newGet("p"), newGet("q")})
	if _, _, err := parseTextReply(other, []byte("VALUE z 0 1\r\nZ\r\nEND\r\n")); !errors.Is(err, ErrProtocol) {
		t.Fatalf("VALUE for an unasked key: %v", err)
	}
}

// TestCombinedGetLeaves: a member whose caller gives up is replaced inside
// its batch by a sink, so the batch's reply still parses and never
// touches the caller's memory.
func TestCombinedGetLeaves(t *testing.T) {
	m1, m2 := newGet("k1"), newGet("k2")
	m1.dst = make([]byte, 0, 8)
	batch := combineGets([]*request{m1, m2})
	var q ring
	q.push(batch)
	if !q.replace(m1, newSink(m1)) {
		t.Fatal("a member in a queued batch cannot be replaced")
	}
	reply := []byte("VALUE k1 0 3\r\nONE\r\nVALUE k2 0 3\r\nTWO\r\nEND\r\n")
	if _, done, err := parseTextReply(batch, reply); err != nil || !done {
		t.Fatalf("done=%v err=%v", done, err)
	}
	if len(m1.dst) != 0 || string(m1.dst[:3]) == "ONE" {
		t.Fatalf("the departed caller's buffer was written: %q", m1.dst[:3])
	}
	(&lane{}).completeMembers(batch, nil)
	if string(m2.dst) != "TWO" {
		t.Fatalf("m2 = %q", m2.dst)
	}
}
