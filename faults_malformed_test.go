package ermc

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Replies that break the protocol: garbage, numbers read laxly, a data
// block without its CRLF, a value for a key not asked, extra bytes after
// a reply, lines and replies without end, a server of the other
// protocol; and keys too malformed to send. Nothing of such a reply is
// delivered, and the connection is discarded.

func TestFaultMalformedReplies(t *testing.T) {
	forEachProto(t, textDrivers, testFaultMalformedReplies)
}

func testFaultMalformedReplies(t *testing.T, proto Protocol) {
	cases := []struct{ name, reply string }{
		{"bad VALUE line", "VALUE k 0 abc\r\nxyz\r\nEND\r\n"},
		{"VALUE with negative length", "VALUE k 0 -5\r\nwrong\r\nEND\r\n"},
		{"VALUE with non-numeric flags", "VALUE k x 5\r\nwrong\r\nEND\r\n"},
		{"VALUE length 2^64", "VALUE k 0 18446744073709551616\r\n"},
		{"VALUE for another key", "VALUE other 0 5\r\nwrong\r\nEND\r\n"},
		{"second VALUE for the key", "VALUE k 0 5\r\nfirst\r\nVALUE k 0 5\r\nagain\r\nEND\r\n"},
		{"unknown reply line", "HELLO\r\n"},
		{"reply of another command", "STORED\r\n"},
		{"huge VALUE length", "VALUE k 0 4294967295\r\n"},
		{"VALUE length 2^63", "VALUE k 0 9223372036854775808\r\n"},
		{"VALUE over MaxValueLength, header only", "VALUE k 0 1000001\r\n"},
		{"data block not followed by CRLF", "VALUE k 0 5\r\nwrongXY\r\nEND\r\n"},
		{"line ended by LF only", "END\n"},
		{"line longer than maxTextLine", strings.Repeat("x", 3*maxTextLine)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, replyFirstThenServe(proto, tc.reply))
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			res := guardedGet(t, c, bg, "k")
			require.Error(t, res.err)
			assert.ErrorIs(t, res.err, ErrProtocol)
			assert.Empty(t, res.v)
			afterFault(t, srv, c)
		})
	}
}

// A VALUE length that is not a plain decimal number is refused as such,
// even when a lax reading of it (C's atoi, strtoul's leading digits, a
// wrap at 2^32 or 2^64) would frame the reply correctly. The malformed
// cases of TestFaultMalformedReplies are also refused for another reason
// (their data block is not followed by CRLF under a lax reading), so they
// pass with a length parser that reads "abc" or "-5" as 0.
func TestFaultValueLengthNotReadLaxly(t *testing.T) {
	cases := []struct{ name, reply string }{
		{"non-numeric length, atoi reads 0", "VALUE k 0 abc\r\n\r\nEND\r\n"},
		{"negative length, atoi reads 0", "VALUE k 0 -5\r\n\r\nEND\r\n"},
		{"digits then letters, strtoul reads 5", "VALUE k 0 5abc\r\nwrong\r\nEND\r\n"},
		{"2^32+5, 5 in 32 bits", "VALUE k 0 4294967301\r\nwrong\r\nEND\r\n"},
		{"2^64+5, 5 in 64 bits", "VALUE k 0 18446744073709551621\r\nwrong\r\nEND\r\n"},
	}
	assertGetRefused(t, cases, "malformed VALUE line")
}

// assertGetRefused answers a get with each reply on the text drivers and
// expects a protocol error naming why, no value, and a fresh connection
// for the next request.
func assertGetRefused(t *testing.T, cases []struct{ name, reply string }, why string) {
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					srv := startFakeServer(t, replyFirstThenServe(proto, tc.reply))
					c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
					res := guardedGet(t, c, bg, "k")
					require.ErrorIs(t, res.err, ErrProtocol)
					assert.Contains(t, res.err.Error(), why)
					assert.Empty(t, res.v)
					afterFault(t, srv, c)
				})
			}
		})
	}
}

// A data block whose CRLF is missing or wrong is refused even when the
// line after it would parse: TestFaultMalformedReplies' case fails for
// other reasons (the leftover bytes make an empty line) when the CRLF
// check is removed. Also when the block spans reads (the scratch path).
func TestFaultDataBlockCRLFChecked(t *testing.T) {
	big := strings.Repeat("s", 40_000) // over the 16 KiB read buffer
	cases := []struct{ name, reply string }{
		{"other bytes", "VALUE k 0 5\r\nwrong!!END\r\n"},
		{"LF CR", "VALUE k 0 5\r\nwrong\n\rEND\r\n"},
		{"other bytes after a block that spans reads", "VALUE k 0 40000\r\n" + big + "!!END\r\n"},
		{"LF CR after a block that spans reads", "VALUE k 0 40000\r\n" + big + "\n\rEND\r\n"},
	}
	assertGetRefused(t, cases, "data block not followed by CRLF")
}

func TestFaultExtraBytesAfterReply(t *testing.T) {
	cases := []struct {
		name  string
		reply string
		op    func(c *Client) error
	}{
		{"STORED twice", "STORED\r\nSTORED\r\n", func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }},
		{"END then a value", "END\r\nVALUE k 0 5\r\nstale\r\nEND\r\n", func(c *Client) error { _, err := c.Get(bg, "k", nil); return err }},
		{"a value then garbage", "VALUE k 0 5\r\nstale\r\nEND\r\nX", func(c *Client) error { _, err := c.Get(bg, "k", nil); return err }},
		{"DELETED and a newline", "DELETED\r\n\r\n", func(c *Client) error { return c.Delete(bg, "k") }},
		{"SERVER_ERROR twice", "SERVER_ERROR a\r\nSERVER_ERROR b\r\n", func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// One write: the extra bytes arrive with the reply.
			srv := startFakeServer(t, replyFirstThenServe(Text, tc.reply))
			c := newTestClient(t, srv.Addr, Text, Options{Timeout: 2 * time.Second})
			err := guarded(t, func() error { return tc.op(c) })
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrProtocol)
			afterFault(t, srv, c)
		})
	}
}

// A multi-get reply carrying a value for a key that was not asked is a
// protocol error on every driver, and the value never reaches the
// callback. (TestFaultMalformedReplies has the single-key get on the text
// drivers; the binary and multi-key cases were parser tests only.)
func TestFaultMultiGetValueForKeyNotAsked(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			reply := "VALUE a 0 1\r\nA\r\nVALUE c 0 5\r\nwrong\r\nEND\r\n"
			if proto == Binary {
				reply = string(join(
					binResp(binGetKQ, 0, 0, 1, be32(0), "a", "A"),
					binResp(binGetKQ, 0, 1, 1, be32(0), "c", "wrong"), // b's opaque, another key
					binResp(binNoop, 0, 2, 0, "", "", ""),
				))
			}
			refusal := "not requested"
			if proto == Meta {
				// a's value, then one under the token after b's
				reply, refusal = "VA 1 f0 O$\r\nA\r\nVA 5 f0 O%d\r\nwrong\r\nMN\r\n", "not sent"
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					reqs := 1
					if proto == Binary || proto == Meta {
						reqs = 3 // GETKQ a, GETKQ b, NOOP; mg a, mg b, mn
					}
					var first fakeRequest
					for i := 0; i < reqs; i++ {
						req, ok := fc.NextAs(proto)
						if !ok {
							return
						}
						if i == 0 {
							first = req
						}
					}
					if proto == Meta {
						tok, _ := strconv.ParseUint(metaOpaque(first), 10, 32)
						reply = echoOpaque(first, fmt.Sprintf(reply, uint32(tok)+2))
					}
					fc.Send(reply)
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			var mu sync.Mutex
			var got []string
			err := guarded(t, func() error {
				return c.GetMulti(bg, []string{"a", "b"}, func(i int, v []byte) {
					mu.Lock()
					got = append(got, fmt.Sprintf("%d=%s", i, v))
					mu.Unlock()
				})
			})
			require.ErrorIs(t, err, ErrProtocol)
			assert.Contains(t, err.Error(), refusal)
			mu.Lock()
			for _, g := range got {
				assert.NotContains(t, g, "wrong", "the unasked key's value reached the callback")
			}
			mu.Unlock()
			afterFault(t, srv, c)
		})
	}
}

// fakeReplyAll is fakeReply with answers for the counters, touch and
// flush_all, so that a command sent on a fresh connection succeeds.
func fakeReplyAll(proto Protocol, req fakeRequest) string {
	if proto == Binary {
		return fakeReplyAs(proto, req, fresh)
	}
	switch req.Fields[0] {
	case "incr", "decr":
		return "1\r\n"
	case "touch":
		return "TOUCHED\r\n"
	case "flush_all":
		return "OK\r\n"
	}
	return fakeReply(req, fresh)
}

// Binary frames that do not answer the request, or whose lengths do not
// add up, are protocol errors: nothing of them is delivered, and the
// connection is discarded.
func TestFaultBinaryMalformedFrames(t *testing.T) {
	ok := binResp(binGet, 0, binOpaque, 1, be32(0), "", "stale")
	patch := func(off int, v ...byte) []byte {
		b := append([]byte(nil), ok...)
		copy(b[off:], v)
		return b
	}
	cases := []struct {
		name  string
		reply []byte
	}{
		{"bad magic", patch(0, 0x80)},
		{"text instead of a frame", []byte("VALUE k 0 5\r\nstale\r\nEND\r\n")},
		{"wrong opcode", patch(1, binGetK)},
		{"wrong opaque", patch(12, 0, 0, 0, 1)},
		{"body shorter than extras and key", patch(2, 0, 9)}, // keylen 9 + extlen 4 > bodylen 9
		{"huge body length", patch(8, 0xff, 0xff, 0xff, 0xff)},
		{"body over MaxValueLength", patch(8, 0x00, 0x10, 0x00, 0x00)},
		{"key longer than memcached allows", binResp(binGet, 0, binOpaque, 1, be32(0), strings.Repeat("k", 251), "stale")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, replyFirstThenServe(Binary, string(tc.reply)))
			c := newFaultClient(t, srv.Addr, Binary, Options{Timeout: time.Minute})
			res := guardedGet(t, c, bg, "k")
			require.ErrorIs(t, res.err, ErrProtocol)
			assert.Empty(t, res.v)
			afterFault(t, srv, c)
		})
	}
}

// A response header announcing a key longer than memcached's is refused
// before any of its body is buffered: with a small MaxValueLength, a
// 64 KiB key would otherwise be the largest allocation a reply can cause.
func TestBinaryLongReplyKeyRefusedAtHeader(t *testing.T) {
	for _, op := range []opcode{opGet, opGetMulti, opStats} {
		r := &request{op: op, key: "k", keys: []string{"k"}, maxValue: 4096}
		opcode, opaque := binOpcodes[op], binOpaque
		if op == opGetMulti {
			opaque = 0
		}
		hdr := appendBinHeader(nil, binHeader{magic: binMagicResponse, opcode: opcode, keyLen: 0xffff,
			extLen: 4, bodyLen: 4 + 0xffff + 1, opaque: opaque})
		n, done, err := parseBinaryReply(r, hdr)
		assert.ErrorIs(t, err, ErrProtocol, "op %d", op)
		assert.False(t, done)
		assert.Zero(t, n, "op %d: header bytes used", op)
		assert.Zero(t, cap(r.parse.scratch), "op %d: bytes buffered for the body", op)
	}
}

// A reply line that never ends (no newline, ever) is refused once it is
// longer than any valid line: the client neither waits for the deadline
// nor buffers the stream. Binary meets it as a text error line that never
// ends.
func TestFaultEndlessLine(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			start := "VALUE k 0 5"
			if proto == Binary {
				start = "ERROR "
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.NextAs(proto); !ok {
						return
					}
					fc.Send(start)
					sendForever(fc, []byte(strings.Repeat("x", 1000)))
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute})
			res := guardedGet(t, c, bg, "k")
			require.ErrorIs(t, res.err, ErrProtocol)
			assert.Contains(t, res.err.Error(), "too long")
			afterFault(t, srv, c)
		})
	}
}

// A reply line over the line bound is refused however it arrives: whole
// in one read, or in pieces.
func TestTextLongLineRefusedWholeOrSplit(t *testing.T) {
	reply := []byte(strings.Repeat("x", maxTextLine+1) + "\r\nMN\r\n")
	for _, step := range []int{len(reply), 100, 1} {
		r := &request{op: opFence, maxValue: fuzzMaxValue}
		_, err := feedReply(t, parseTextReply, r, reply, step, fuzzMaxValue+2)
		assert.ErrorIs(t, err, ErrProtocol, "in %d-byte pieces", step)
	}
}

// sendForever writes chunk until the client hangs up or the server stops,
// then reads until EOF, so that WaitPeerClosed sees the hang-up.
func sendForever(fc *fakeConn, chunk []byte) {
	for {
		select {
		case <-fc.srv.done:
			return
		default:
		}
		if _, err := fc.nc.Write(chunk); err != nil {
			break
		}
	}
	_, _ = io.Copy(io.Discard, fc)
}

// A multi-get reply with more values than keys asked is a protocol error:
// a server repeating a value forever must not make the client call back
// (or, on Ultra, buffer values) without end.
func TestFaultMultiGetEndlessValues(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			value := []byte("VALUE a 0 5\r\nstale\r\n")
			refusal := "more values than keys"
			switch proto {
			case Binary:
				value = binResp(binGetKQ, 0, 0, 1, be32(0), "a", "stale")
			case Meta:
				value = []byte("VA 5 f0 O$\r\nstale\r\n") // a's token, again and again
				refusal = "out of order or repeated"
			}
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					switch proto {
					case Binary:
						fc.NextBinary() // GETKQ a
						fc.NextBinary() // GETKQ b
						fc.NextBinary() // NOOP
					case Meta:
						a, _ := fc.Next()            // mg a
						fc.Next()                    // mg b
						if _, ok := fc.Next(); !ok { // mn
							return
						}
						value = []byte(echoOpaque(a, string(value)))
					default:
						if _, ok := fc.Next(); !ok {
							return
						}
					}
					sendForever(fc, value)
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			calls := 0
			err := guarded(t, func() error {
				return c.GetMulti(bg, []string{"a", "b"}, func(i int, v []byte) { calls++ })
			})
			require.ErrorIs(t, err, ErrProtocol)
			assert.Contains(t, err.Error(), refusal)
			assert.LessOrEqual(t, calls, 2, "at most one value per key reaches the callback")
			afterFault(t, srv, c)
		})
	}
}

// A stats reply that never ends (distinct names, forever) is refused
// after a bounded number of entries instead of growing the map until the
// deadline.
func TestFaultStatsEndless(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.NextAs(proto); !ok {
						return
					}
					var b []byte
					for i := 0; i < 2*maxStats; i++ {
						name := "s" + strconv.Itoa(i)
						if proto == Binary {
							b = append(b, binResp(binStat, 0, binOpaque, 0, "", name, "1")...)
						} else {
							b = append(b, "STAT "+name+" 1\r\n"...)
						}
					}
					sendForever(fc, b) // never the closing END / empty frame
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute})
			err := guarded(t, func() error { _, err := c.Stats(bg); return err })
			require.ErrorIs(t, err, ErrProtocol)
			afterFault(t, srv, c)
		})
	}
}

// A client speaking the other protocol (memcached -B pins one) gets a
// typed error within its Timeout, not a hang: memcached waits for a
// complete command in its own protocol, so the request times out (or, for
// a longer request, memcached finds bad framing and hangs up).
func TestServerProtocolMismatch(t *testing.T) {
	cases := []struct {
		proto  Protocol
		server string
	}{
		{Text, "binary"},
		{Ultra, "binary"},
		{Binary, "ascii"},
	}
	for _, tc := range cases {
		t.Run(tc.proto.String()+"-vs-"+tc.server, func(t *testing.T) {
			srv := startMemcached(t, "-B", tc.server)
			c := newFaultClient(t, srv.Addr, tc.proto, Options{Timeout: 300 * time.Millisecond})
			ops := map[string]func() error{
				"get": func() error { _, err := c.Get(bg, "k", nil); return err },
				"set": func() error { return c.Set(bg, "key-of-some-length", make([]byte, 100), 0) },
			}
			for name, op := range ops {
				err := guarded(t, op)
				t.Logf("%s: %v", name, err)
				var ce *ConnError
				assert.True(t, errors.As(err, &ce) || errors.Is(err, ErrProtocol), "%s: %v (%T), want a *ConnError or ErrProtocol", name, err, err)
				assert.NotErrorIs(t, err, ErrCacheMiss, name)
			}
		})
	}
}

func TestFaultMalformedKeyNeverSent(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) { fc.Serve(fresh) })
	c := newTestClient(t, srv.Addr, Text, Options{MaxValueLength: 100})
	long := strings.Repeat("k", 251)
	ops := map[string]func() error{
		"get with space":        func() error { _, err := c.Get(bg, "a b", nil); return err },
		"get empty":             func() error { _, err := c.Get(bg, "", nil); return err },
		"gets with newline":     func() error { _, _, err := c.Gets(bg, "a\r\nflush_all", nil); return err },
		"gat with NUL":          func() error { _, err := c.GetAndTouch(bg, "a\x00", time.Second, nil); return err },
		"get multi one bad key": func() error { return c.GetMulti(bg, []string{"k", "bad key"}, func(int, []byte) {}) },
		"set too long":          func() error { return c.Set(bg, long, []byte("v"), 0) },
		"add with tab":          func() error { return c.Add(bg, "a\tb", []byte("v"), 0) },
		"replace with DEL":      func() error { return c.Replace(bg, "a\x7f", []byte("v"), 0) },
		"append empty":          func() error { return c.Append(bg, "", []byte("v")) },
		"prepend with space":    func() error { return c.Prepend(bg, " ", []byte("v")) },
		"cas with space":        func() error { return c.CompareAndSwap(bg, "a b", []byte("v"), 1, 0) },
		"cached cas with space": func() error { return c.CAS(bg, "a b", []byte("v"), 0) },
		"incr with space":       func() error { _, err := c.Incr(bg, "a b", 1); return err },
		"decr with CR":          func() error { _, err := c.Decr(bg, "a\r", 1); return err },
		"delete with LF":        func() error { return c.Delete(bg, "a\nb") },
		"touch too long":        func() error { return c.Touch(bg, long, time.Second) },
		"set int bad key":       func() error { return c.SetInt(bg, "a b", 1, 0) },
		"set object bad key":    func() error { return c.SetObject(bg, "a b", 1, 0) },
	}
	for name, op := range ops {
		err := guarded(t, op)
		assert.ErrorIs(t, err, ErrMalformedKey, name)
	}
	err := guarded(t, func() error { return c.Set(bg, "k", make([]byte, 101), 0) })
	assert.ErrorIs(t, err, ErrValueTooLarge, "an oversized value is refused before sending")

	assert.Empty(t, srv.Received(), "nothing reached the wire")
	assert.Zero(t, srv.Accepted(), "not even a connection")

	// The recording works: a valid request is seen as sent.
	res := guardedGet(t, c, bg, "k")
	require.NoError(t, res.err)
	assert.Equal(t, "fresh", res.v)
	assert.Equal(t, "get k\r\n", srv.Received())
}
