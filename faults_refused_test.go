package ermc

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A server that cannot be reached or turns the connection away: dial
// refused or timed out, a host name that does not resolve, memcached over
// its connection limit. Each ends with a typed error naming the address.

// dialErrors runs a get, a set and a Connect on a client that cannot
// dial, requires each to fail with a *ConnError of the dial naming addr,
// and returns the errors by operation for the caller's checks of the cause.
func dialErrors(t *testing.T, c *Client, addr string) map[string]error {
	t.Helper()
	errs := map[string]error{}
	for name, op := range map[string]func() error{
		"get":     func() error { _, err := c.Get(bg, "k", nil); return err },
		"set":     func() error { return c.Set(bg, "k", []byte("v"), 0) },
		"connect": func() error { return c.Connect(bg) },
	} {
		err := guarded(t, op)
		var ce *ConnError
		require.ErrorAs(t, err, &ce, name)
		assert.Equal(t, "dial", ce.Op, name)
		assert.Equal(t, addr, ce.Addr, name)
		errs[name] = err
	}
	return errs
}

func TestFaultDialRefused(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t)) // closed again: nothing listens
	c := newTestClient(t, addr, Text, Options{ConnectTimeout: 2 * time.Second})
	for name, err := range dialErrors(t, c, addr) {
		assert.ErrorIs(t, err, syscall.ECONNREFUSED, name)
	}
}

// ConnectTimeout bounds every dial, on every driver; on the pooled drivers
// a caller's shorter deadline bounds the dial itself. (On Ultra the dial
// serves every queued request and outlives a caller that leaves:
// TestUltraDialOutlivesLeavingCaller; the caller's own wait is bounded on
// every driver: TestFaultDialBoundedByCallerContext.)
func TestFaultDialTimeout(t *testing.T) {
	const connectTimeout = 100 * time.Millisecond
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			// Each dial's deadline, and how far ahead it was when the dial
			// began: time only shortens that, so "at most" is exact.
			type dialSeen struct {
				has   bool
				ahead time.Duration
			}
			var mu sync.Mutex
			var seen []dialSeen
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				dl, ok := ctx.Deadline()
				mu.Lock()
				seen = append(seen, dialSeen{ok, time.Until(dl)})
				mu.Unlock()
				<-ctx.Done()
				return nil, ctx.Err()
			}
			dialsSeen := func() []dialSeen {
				mu.Lock()
				defer mu.Unlock()
				return append([]dialSeen(nil), seen...)
			}
			c := newTestClient(t, "127.0.0.1:1", proto, Options{ConnectTimeout: connectTimeout, Timeout: time.Minute, DialContext: dial})
			for name, err := range dialErrors(t, c, "127.0.0.1:1") {
				assert.ErrorIs(t, err, context.DeadlineExceeded, name)
				var ce *ConnError
				require.ErrorAs(t, err, &ce, name)
				assert.True(t, ce.Timeout(), name)
			}
			// A call right after a failed dial fails at once with that
			// dial's error (dial backoff), so the three calls made one
			// dial at least and one each at most.
			dials := dialsSeen()
			require.NotEmpty(t, dials)
			require.LessOrEqual(t, len(dials), 3)
			for i, d := range dials {
				assert.True(t, d.has, "dial %d had no deadline", i)
				assert.LessOrEqual(t, d.ahead, connectTimeout, "dial %d is bounded by ConnectTimeout", i)
			}
			if c.pipelined {
				return
			}

			c2 := newTestClient(t, "127.0.0.1:1", proto, Options{ConnectTimeout: time.Minute, Timeout: time.Minute, DialContext: dial})
			for timeout := 50 * time.Millisecond; ; timeout *= 2 {
				ctx, cancel := context.WithTimeout(bg, timeout)
				res := guardedGet(t, c2, ctx, "k")
				cancel()
				var ce *ConnError
				require.ErrorAs(t, res.err, &ce)
				assert.ErrorIs(t, res.err, context.DeadlineExceeded)
				before := len(dials)
				dials = dialsSeen()
				if ce.Op != "dial" {
					// The deadline passed before the dial began (a busy
					// machine): nothing was dialled; again with more time.
					require.Len(t, dials, before, "no dial without a dial error")
					require.Less(t, timeout, hangGuard/4, "the dial never began in time: %v", res.err)
					continue
				}
				require.Len(t, dials, before+1)
				assert.True(t, dials[before].has, "the dial had no deadline")
				assert.LessOrEqual(t, dials[before].ahead, timeout, "the dial is bounded by the caller's deadline")
				break
			}
		})
	}
}

// A caller's context bounds its wait for a dial on every driver. On Ultra
// the dial goes on without the caller (it serves every queued request:
// TestUltraDialOutlivesLeavingCaller), but the caller returns when its
// context ends. ConnectTimeout here is longer than the hang guard, so a
// caller that waited for the dial would trip the guard.
func TestFaultDialBoundedByCallerContext(t *testing.T) {
	for _, proto := range wireDrivers {
		for _, how := range []string{"deadline", "cancel"} {
			t.Run(proto.String()+"/"+how, func(t *testing.T) {
				started := make(chan struct{}, 1)
				dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
					select {
					case started <- struct{}{}:
					default:
					}
					<-ctx.Done()
					return nil, ctx.Err()
				}
				c := newTestClient(t, "127.0.0.1:1", proto, Options{ConnectTimeout: 2 * hangGuard, Timeout: time.Minute, DialContext: dial})
				var ctx context.Context
				var cancel context.CancelFunc
				want := context.DeadlineExceeded
				if how == "deadline" {
					ctx, cancel = context.WithTimeout(bg, 50*time.Millisecond)
				} else {
					ctx, cancel = context.WithCancel(bg)
					want = context.Canceled
					go func() {
						<-started
						cancel()
					}()
				}
				defer cancel()
				res := guardedGet(t, c, ctx, "k")
				var ce *ConnError
				require.ErrorAs(t, res.err, &ce)
				assert.ErrorIs(t, res.err, want)
			})
		}
	}
}

// startNXDomainServer answers every DNS query with "no such name" and
// counts the queries.
func startNXDomainServer(t *testing.T) (addr string, queries *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	queries = new(atomic.Int32)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply := nxdomainReply(buf[:n]); reply != nil {
				queries.Add(1)
				pc.WriteTo(reply, from)
			}
		}
	}()
	return pc.LocalAddr().String(), queries
}

// nxdomainReply answers a DNS query (RFC 1035 4.1) with its own ID and
// question, RCODE 3 and no records; nil for a packet that is not a query
// with one question.
func nxdomainReply(query []byte) []byte {
	const headerLen = 12
	if len(query) < headerLen || query[2]&0x80 != 0 || binary.BigEndian.Uint16(query[4:]) != 1 {
		return nil
	}
	end := headerLen // the question: labels up to the root, then type and class
	for end < len(query) && query[end] != 0 {
		end += 1 + int(query[end])
	}
	end += 1 + 4
	if end > len(query) {
		return nil
	}
	reply := append([]byte(nil), query[:end]...)
	reply[2] = 0x80 | query[2]&0x01 // QR, and RD as asked
	reply[3] = 0x80 | 3             // RA, RCODE NXDOMAIN
	binary.BigEndian.PutUint16(reply[6:], 0)
	binary.BigEndian.PutUint16(reply[8:], 0)
	binary.BigEndian.PutUint16(reply[10:], 0)
	return reply
}

func TestFaultUnresolvableHost(t *testing.T) {
	dnsAddr, queries := startNXDomainServer(t)
	resolver := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", dnsAddr)
		},
	}
	dialer := &net.Dialer{Resolver: resolver}
	const addr = "no-such-memcached.invalid:11211"
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			before := queries.Load()
			c := newTestClient(t, addr, proto, Options{
				ConnectTimeout: 5 * time.Second,
				Timeout:        5 * time.Second,
				DialContext:    dialer.DialContext,
			})
			for name, err := range dialErrors(t, c, addr) {
				var dnsErr *net.DNSError
				require.ErrorAs(t, err, &dnsErr, name)
				assert.True(t, dnsErr.IsNotFound, "%s: %v", name, err)
				assert.False(t, errors.Is(err, context.DeadlineExceeded), "%s: failed by the answer, not a timeout", name)
			}
			assert.Greater(t, queries.Load(), before, "the name was looked up on the scripted server")
		})
	}
}

// memcached over its connection limit (-c) answers a new connection with
// a text line, whatever protocol the client speaks, and closes it. Every
// driver reports the server's line as a *ServerError and discards the
// connection; the next request gets its own value on a fresh one. (The
// fake waits for the request before answering, so that Ultra has it in
// flight; TestServerConnectionLimit has the real server's timing.)
func TestFaultTooManyConnections(t *testing.T) {
	const line = "ERROR Too many open connections\r\n"
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				if fc.N == 0 {
					if _, ok := fc.NextAs(proto); ok {
						fc.Send(line)
						_, _ = io.Copy(io.Discard, fc) // until the client hangs up
					}
					return
				}
				fc.ServeAs(proto, fresh)
			})
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: time.Minute})
			res := guardedGet(t, c, bg, "k")
			var se *ServerError
			require.ErrorAs(t, res.err, &se)
			assert.Contains(t, se.Message, "Too many open connections")
			assert.NotErrorIs(t, res.err, ErrCacheMiss)
			afterFault(t, srv, c)
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
	require.Fail(t, "memcached accepted 1000 connections despite -c")
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
				require.Fail(t, "at the connection limit: want the server's line as a *ServerError", "%v (%T)", res.err, res.err)
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
