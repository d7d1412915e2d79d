package ermc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Faults a real memcached produces: idle connections it closes, memory
// it runs out of, connections it refuses, and a protocol the client does
// not speak. (Item size limits, incr overflow and decr flooring are in
// the conformance suite: ServerErrors, IncrDecrBounds.)

// countingClient makes a client of proto for addr whose dials are counted.
func countingClient(t *testing.T, addr string, proto Protocol, opts Options) (*Client, *atomic.Int32) {
	t.Helper()
	dials := new(atomic.Int32)
	opts.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return newFaultClient(t, addr, proto, opts), dials
}

// rawStat reads one general statistic over a connection of its own, so
// that polling does not keep the clients' connections busy.
func rawStat(t *testing.T, addr, name string) int64 {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, hangGuard)
	require.NoError(t, err)
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(hangGuard))
	_, err = nc.Write([]byte("stats\r\n"))
	require.NoError(t, err)
	sc := bufio.NewScanner(nc)
	for sc.Scan() {
		line := sc.Text()
		if line == "END" {
			break
		}
		if v, ok := strings.CutPrefix(line, "STAT "+name+" "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("stat %s not found: %v", name, sc.Err())
	return 0
}

// waitStat polls a statistic until it reaches want. The bound is a hang
// guard, not a timing assertion.
func waitStat(t *testing.T, addr, name string, want int64, guard time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(guard); ; time.Sleep(50 * time.Millisecond) {
		if rawStat(t, addr, name) >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stat %s did not reach %d within %v", name, want, guard)
		}
	}
}

// memcached with idle_timeout closes a pooled connection that sat idle.
// The next read is retried on a fresh connection and succeeds; a write or
// incr on such a connection reaches the dead socket (the write itself
// succeeds, the read fails) and is reported, not sent again.
func TestServerIdleTimeout(t *testing.T) {
	srv := startMemcached(t, "-o", "idle_timeout=1")
	type idleCase struct {
		proto      Protocol
		op         string
		c          *Client
		dials      *atomic.Int32
		key, value string
	}
	var cases []*idleCase
	for _, proto := range []Protocol{Text, Binary} {
		for _, op := range []string{"get", "set", "incr"} {
			c, dials := countingClient(t, srv.Addr, proto, Options{MaxConns: 1, Timeout: 2 * time.Second})
			tc := &idleCase{proto: proto, op: op, c: c, dials: dials, key: proto.String() + "-" + op, value: "7"}
			mustSet(t, c, tc.key, tc.value) // one pooled connection, now idle
			cases = append(cases, tc)
		}
	}
	// Every client's connection idles past the timeout at once: one wait.
	waitStat(t, srv.Addr, "idle_kicks", int64(len(cases)), 15*time.Second)

	for _, tc := range cases {
		t.Run(tc.proto.String()+"/"+tc.op, func(t *testing.T) {
			var err error
			switch tc.op {
			case "get":
				var v []byte
				v, err = tc.c.Get(bg, tc.key, nil)
				require.NoError(t, err, "a get on a connection the server closed is retried")
				assert.Equal(t, tc.value, string(v))
				assert.EqualValues(t, 2, tc.dials.Load(), "the retry dialed a fresh connection")
				return
			case "set":
				err = tc.c.Set(bg, tc.key, []byte("8"), 0)
			case "incr":
				_, err = tc.c.Incr(bg, tc.key, 1)
			}
			var ce *ConnError
			require.ErrorAs(t, err, &ce, "%s on a closed idle connection reports the fault", tc.op)
			assert.EqualValues(t, 1, tc.dials.Load(), "%s was not sent again", tc.op)
			// It was not carried out either: the server had closed the
			// connection before the command arrived.
			v, err := tc.c.Get(bg, tc.key, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.value, string(v))
			assert.EqualValues(t, 2, tc.dials.Load())
		})
	}
}

// With -M memcached answers a full cache with SERVER_ERROR out of memory
// instead of evicting: a *ServerError carrying the message, never a miss or
// not-stored, and the connection stays in use. (Binary: TestBinaryOutOfMemory.)
func TestServerOutOfMemory(t *testing.T) {
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startMemcached(t, "-M", "-m", "2")
			c, dials := countingClient(t, srv.Addr, proto, Options{})
			value := make([]byte, 500_000)
			var err error
			for i := 0; i < 50 && err == nil; i++ {
				err = c.Set(bg, fmt.Sprintf("fill-%d", i), value, 0)
			}
			var se *ServerError
			require.ErrorAs(t, err, &se)
			assert.Contains(t, strings.ToLower(se.Message), "out of memory")
			assert.NotErrorIs(t, err, ErrNotStored)
			assert.NotErrorIs(t, err, ErrCacheMiss)
			v, err := c.Get(bg, "fill-0", nil)
			require.NoError(t, err, "the client is still in step")
			assert.Len(t, v, len(value))
			assert.EqualValues(t, 1, dials.Load(), "the out-of-memory reply cost the connection")
		})
	}
}

// fillConnections opens connections to memcached until it refuses one,
// and returns those it kept. memcached 1.6.18 over its -c limit accepts a
// connection, writes "ERROR Too many open connections" and closes it.
func fillConnections(t *testing.T, addr string) []net.Conn {
	t.Helper()
	var held []net.Conn
	t.Cleanup(func() {
		for _, nc := range held {
			nc.Close()
		}
	})
	for len(held) < 1000 {
		nc, err := net.DialTimeout("tcp", addr, hangGuard)
		require.NoError(t, err)
		_ = nc.SetDeadline(time.Now().Add(hangGuard))
		_, _ = nc.Write([]byte("version\r\n"))
		line, _ := bufio.NewReader(nc).ReadString('\n')
		_ = nc.SetDeadline(time.Time{})
		if strings.HasPrefix(line, "VERSION ") {
			held = append(held, nc)
			continue
		}
		nc.Close()
		require.Equal(t, "ERROR Too many open connections\r\n", line)
		return held
	}
	t.Fatal("memcached accepted 1000 connections despite -c")
	return nil
}

// At memcached's connection limit a request fails with the server's
// message, never a hang or a miss; once a connection is free, the next
// request succeeds on a new connection. The pooled drivers read the line
// as the reply to their request. Ultra's reader may see it before the
// first request is in flight, and then reports bytes nobody asked for
// (ErrProtocol) or the connection they closed (a *ConnError).
func TestServerConnectionLimit(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startMemcached(t, "-c", "20")
			setter := newTestClient(t, srv.Addr, Text, Options{MaxConns: 1})
			mustSet(t, setter, "k", "v") // holds one of the connections
			held := fillConnections(t, srv.Addr)
			require.NotEmpty(t, held)

			c, dials := countingClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			res := guardedGet(t, c, bg, "k")
			require.Error(t, res.err)
			t.Logf("at the limit: %v", res.err)
			assert.NotErrorIs(t, res.err, ErrCacheMiss)
			var se *ServerError
			var ce *ConnError
			switch {
			case errors.As(res.err, &se):
				assert.Contains(t, se.Message, "Too many open connections")
			case proto == Ultra && (errors.As(res.err, &ce) || errors.Is(res.err, ErrProtocol)):
			default:
				t.Fatalf("at the connection limit: %v (%T), want the server's line as a *ServerError", res.err, res.err)
			}

			held[0].Close()
			for attempt := 1; ; attempt++ {
				res = guardedGet(t, c, bg, "k")
				if res.err == nil || attempt == 100 {
					break
				}
				time.Sleep(20 * time.Millisecond) // memcached frees the slot asynchronously
			}
			require.NoError(t, res.err, "a free connection slot is used")
			assert.Equal(t, "v", res.v)
			assert.Greater(t, dials.Load(), int32(1), "the refused connection was not reused")
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
				if !errors.As(err, &ce) && !errors.Is(err, ErrProtocol) {
					t.Errorf("%s: %v (%T), want a *ConnError or ErrProtocol", name, err, err)
				}
				assert.NotErrorIs(t, err, ErrCacheMiss, name)
			}
		})
	}
}
