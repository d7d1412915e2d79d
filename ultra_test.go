package ermc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stressTimeout is long: a stall detected in the stress test must be a lost
// reply or reader, not a loaded machine.
var stressTimeout = 60 * time.Second

// valueFor makes a value that names its key, so a reader can tell whose
// value it got.
func valueFor(key string, size int) []byte {
	v := []byte(key + "|")
	for len(v) < size {
		v = append(v, byte('a'+len(v)%26))
	}
	return v
}

// TestUltraStressOwnership: many goroutines, random operations, some with
// deadlines far too short or cancelled mid-flight. Every value any of them
// reads must belong to the key it asked for.
func TestUltraStressOwnership(t *testing.T) {
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			s := startMemcached(t)
			c := newTestClient(t, s.Addr, proto, Options{Timeout: stressTimeout})
			const keys = 50
			for i := 0; i < keys; i++ {
				k := fmt.Sprintf("own-%d", i)
				require.NoError(t, c.Set(bg, k, valueFor(k, 10+i*300), 0))
			}
			var completed, abandoned atomic.Int64
			var wg sync.WaitGroup
			for g := 0; g < 48; g++ {
				wg.Add(1)
				go func(seed int64) {
					defer wg.Done()
					rng := rand.New(rand.NewSource(seed))
					buf := make([]byte, 0, 32<<10)
					for i := 0; i < 300; i++ {
						k := fmt.Sprintf("own-%d", rng.Intn(keys))
						ctx, cancel := context.Background(), context.CancelFunc(func() {})
						switch rng.Intn(4) {
						case 0:
							ctx, cancel = context.WithTimeout(bg, time.Duration(rng.Intn(200))*time.Microsecond)
						case 1:
							ctx, cancel = context.WithCancel(bg)
							go func(d time.Duration) { time.Sleep(d); cancel() }(time.Duration(rng.Intn(300)) * time.Microsecond)
						}
						err := randomOwnedOp(ctx, c, rng, k, keys, buf)
						cancel()
						switch {
						case err == nil || errors.Is(err, ErrCacheMiss):
							completed.Add(1)
						case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
							abandoned.Add(1)
						default:
							assert.NoError(t, err, k)
							return
						}
					}
				}(int64(g))
			}
			wg.Wait()
			t.Logf("completed %d, abandoned %d", completed.Load(), abandoned.Load())
			require.NotZero(t, completed.Load(), "the stress mix must complete requests")
			require.NotZero(t, abandoned.Load(), "the stress mix must abandon requests")
			// After all that, the connections still answer correctly.
			for i := 0; i < keys; i++ {
				k := fmt.Sprintf("own-%d", i)
				v, err := c.Get(bg, k, nil)
				if errors.Is(err, ErrCacheMiss) {
					continue // every Set of it was abandoned
				}
				require.NoError(t, err, k)
				require.True(t, bytes.HasPrefix(v, []byte(k+"|")), "%s: got value of %q", k, v[:min(len(v), 20)])
			}
		})
	}
}

// randomOwnedOp runs one random operation on key and checks that any value
// it reads names the key it was read for.
func randomOwnedOp(ctx context.Context, c *Client, rng *rand.Rand, k string, keys int, buf []byte) error {
	switch rng.Intn(5) {
	case 0:
		return c.Set(ctx, k, valueFor(k, 10+rng.Intn(20000)), 0)
	case 1:
		multi := make([]string, 1+rng.Intn(8))
		for j := range multi {
			multi[j] = fmt.Sprintf("own-%d", rng.Intn(keys))
		}
		var bad error
		err := c.GetMulti(ctx, multi, func(i int, v []byte) {
			if !bytes.HasPrefix(v, []byte(multi[i]+"|")) && bad == nil {
				bad = fmt.Errorf("multi-get of %s returned a value of %q", multi[i], v[:min(len(v), 20)])
			}
		})
		if bad != nil {
			return bad
		}
		return err
	case 2:
		return c.SetNoreply(ctx, k, valueFor(k, 10+rng.Intn(500)), 0)
	default:
		v, err := c.Get(ctx, k, buf[:0])
		if err == nil && !bytes.HasPrefix(v, []byte(k+"|")) {
			return fmt.Errorf("get of %s returned a value of %q", k, v[:min(len(v), 20)])
		}
		return err
	}
}

// TestUltraNoreplyErrorFenced: a noreply set the server refuses still gets
// an error reply; the fence keeps it from being read as the next request's
// reply.
func TestUltraNoreplyErrorFenced(t *testing.T) {
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			s := startMemcached(t, "-I", "1k", "-o", "slab_chunk_max=512")
			c := newTestClient(t, s.Addr, proto, Options{})
			require.NoError(t, c.Set(bg, "fenced", []byte("mine"), 0))
			for i := 0; i < 20; i++ {
				require.NoError(t, c.SetNoreply(bg, "too-big", bytes.Repeat([]byte("x"), 4000), 0))
				v, err := c.Get(bg, "fenced", nil)
				require.NoError(t, err, "after a refused noreply set")
				require.Equal(t, "mine", string(v), "after a refused noreply set")
			}
			_, err := c.Get(bg, "too-big", nil)
			require.ErrorIs(t, err, ErrCacheMiss, "the refused value must not be stored")
		})
	}
}

// TestUltraNoreplyStores: fire-and-forget writes land, in order, before
// a later request on the same lane is answered.
func TestUltraNoreplyStores(t *testing.T) {
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			s := startMemcached(t)
			c := newFaultClient(t, s.Addr, proto, Options{}) // one lane: ordering is defined
			for i := 0; i < 100; i++ {
				require.NoError(t, c.SetNoreply(bg, "nr", []byte(fmt.Sprint(i)), 0))
			}
			v, err := c.Get(bg, "nr", nil)
			require.NoError(t, err, "get after 100 noreply sets")
			require.Equal(t, "99", string(v), "get after 100 noreply sets")
			require.NoError(t, c.DeleteNoreply(bg, "nr"))
			_, err = c.Get(bg, "nr", nil)
			require.ErrorIs(t, err, ErrCacheMiss, "after DeleteNoreply")
		})
	}
}

// TestUltraDeepPipeline: more request bytes than the in-flight bound, from
// many goroutines at once, must neither deadlock against the server nor
// mix values up.
func TestUltraDeepPipeline(t *testing.T) {
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			s := startMemcached(t)
			c := newTestClient(t, s.Addr, proto, Options{})
			var wg sync.WaitGroup
			for g := 0; g < 32; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for i := 0; i < 8; i++ {
						k := fmt.Sprintf("deep-%d-%d", g, i)
						if !assert.NoError(t, c.Set(bg, k, valueFor(k, 200_000), 0), k) {
							return
						}
						v, err := c.Get(bg, k, nil)
						if !assert.NoError(t, err, k) || !assert.Equal(t, 200_000, len(v), k) || !assert.True(t, bytes.HasPrefix(v, []byte(k+"|")), k) {
							return
						}
					}
				}(g)
			}
			wg.Wait()
		})
	}
}

// TestUltraStalledServer: a server that accepts and never answers. Every
// request fails with a timeout within Timeout; none hangs, and the
// connection is replaced.
func TestUltraStalledServer(t *testing.T) {
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startSilentServer(t)
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 100 * time.Millisecond})
			var wg sync.WaitGroup
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := c.Get(bg, "stalled", nil)
					var ce *ConnError
					if assert.ErrorAs(t, err, &ce, "want a timeout ConnError") {
						assert.True(t, ce.Timeout(), "want a timeout ConnError, got %v", err)
					}
				}()
			}
			wg.Wait()
			_, err := c.Get(bg, "stalled", nil) // on the replacement, as silent
			var ce *ConnError
			require.ErrorAs(t, err, &ce, "want a timeout ConnError")
			assert.True(t, ce.Timeout(), "want a timeout ConnError, got %v", err)
			require.GreaterOrEqual(t, srv.Accepted(), 2, "a timed-out connection must be replaced: accepted")
		})
	}
}

// TestUltraCloseInFlight: Close while requests wait on a silent server
// lets them finish: each ends with its own outcome, here the Timeout's
// *ConnError, never ErrClosed (they were sent); later calls fail with
// ErrClosed.
func TestUltraCloseInFlight(t *testing.T) {
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startSilentServer(t)
			c, err := New(srv.Addr, Options{Protocol: proto, Timeout: 300 * time.Millisecond})
			require.NoError(t, err)
			errs := make(chan error, 16)
			for g := 0; g < 16; g++ {
				go func() {
					_, err := c.Get(bg, "k", nil)
					errs <- err
				}()
			}
			// Close once every request was sent (the timeouts may be
			// failing the first ones meanwhile: they were sent all the same).
			for deadline := time.Now().Add(hangGuard); countKeys(srv, "k") < 16; time.Sleep(time.Millisecond) {
				require.False(t, time.Now().After(deadline), "the server read %d of the 16 requests", countKeys(srv, "k"))
			}
			c.Close()
			for g := 0; g < 16; g++ {
				err := await(t, errs)
				var ce *ConnError
				require.ErrorAs(t, err, &ce, "a request sent before Close: want the Timeout's *ConnError")
				require.True(t, ce.Timeout(), "a request sent before Close: %v, want the Timeout's *ConnError", err)
				require.NotErrorIs(t, err, ErrClosed, "a request sent before Close")
			}
			_, err = c.Get(bg, "k", nil)
			require.ErrorIs(t, err, ErrClosed, "after Close")
		})
	}
}

// TestUltraNoreplyOnTextIsPlain: on the pooled text driver the *Noreply
// calls wait and report like the plain calls.
func TestUltraNoreplyOnTextIsPlain(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Text, Options{})
	require.NoError(t, c.SetNoreply(bg, "p", []byte("v"), 0))
	require.ErrorIs(t, c.DeleteNoreply(bg, "absent"), ErrCacheMiss, "DeleteNoreply on text reports the outcome")
	require.Contains(t, fmt.Sprint(c.TouchNoreply(bg, "absent", time.Second)), "miss", "TouchNoreply on text reports the miss")
}

// waitDirectRead waits until the lane's caller holds the reader role,
// reading its own reply: true once it does, false when the Get returned
// first (its Timeout passed before the poll saw the read).
func waitDirectRead(t *testing.T, c *Client, done chan error) bool {
	t.Helper()
	ln := c.drv.(*pipeDriver).lanes[0]
	deadline := time.Now().Add(hangGuard)
	for {
		ln.mu.Lock()
		direct := ln.direct != nil
		ln.mu.Unlock()
		switch {
		case direct:
			return true
		case len(done) > 0:
			<-done
			return false
		}
		require.True(t, time.Now().Before(deadline), "the Get neither read nor returned")
		time.Sleep(time.Millisecond)
	}
}

// TestUltraCloseStopsReaders: Close while a lone request's caller is
// reading its own reply (the server never answers) lets that read run to
// its Timeout (the request was sent: not ErrClosed), and no reader
// goroutine is left behind.
func TestUltraCloseStopsReaders(t *testing.T) {
	srv := startSilentServer(t)
	before := runtime.NumGoroutine()
	for i, missed := 0, 0; i < 10; i++ {
		c := newFaultClient(t, srv.Addr, Ultra, Options{Timeout: 200 * time.Millisecond})
		done := make(chan error, 1)
		go func() { _, err := c.Get(bg, "k", nil); done <- err }()
		if !waitDirectRead(t, c, done) {
			// The read timed out before the poll saw it (a busy machine):
			// that says nothing of Close; again.
			c.Close()
			missed++
			require.Less(t, missed, 10, "the direct read was never seen before its Timeout")
			i--
			continue
		}
		c.Close()
		err := await(t, done)
		var ce *ConnError
		require.ErrorAs(t, err, &ce, "a read in flight at Close: want the Timeout's *ConnError")
		require.True(t, ce.Timeout(), "a read in flight at Close: %v, want the Timeout's *ConnError", err)
		require.NotErrorIs(t, err, ErrClosed, "a read in flight at Close")
	}
	deadline := time.Now().Add(10 * time.Second) // hang guard only
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	require.LessOrEqual(t, runtime.NumGoroutine(), before+2, "goroutines after closing 10 clients, %d before", before)
}

// startSilentServer is a fake server that reads every request and never
// answers.
func startSilentServer(t *testing.T) *fakeServer {
	t.Helper()
	return startFakeServer(t, func(fc *fakeConn) {
		for {
			if _, ok := fc.Next(); !ok {
				return
			}
		}
	})
}

// countKeys counts the requests for key among the request lines the fake
// has read (a combined get counts once per key).
func countKeys(srv *fakeServer, key string) int {
	n := 0
	for _, line := range strings.Split(srv.Received(), "\r\n") {
		fields := strings.Fields(line)
		for i := 1; i < len(fields); i++ {
			if fields[i] == key {
				n++
			}
		}
	}
	return n
}

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
	require.Equal(t, "get a b a\r\nset s 0 0 1\r\nv\r\nget c\r\n", string(wire), "wire")
	require.Len(t, reqs, 3, "wire order")
	require.Equal(t, opGetBatch, reqs[0].op, "wire order: first op")
	require.Same(t, set, reqs[1], "wire order")
	require.Same(t, c, reqs[2], "wire order")
	batch := reqs[0]
	reply := []byte("VALUE a 0 2\r\nA1\r\nVALUE a 0 2\r\nA2\r\nEND\r\n")
	n, done, err := parseTextReply(batch, reply)
	require.NoError(t, err, "parse")
	require.True(t, done, "parse: done")
	require.Equal(t, len(reply), n, "parse: bytes used")
	ln.completeMembers(batch, nil)
	require.NoError(t, a.err, "a")
	require.Equal(t, "A1", string(a.dst), "a")
	require.NoError(t, a2.err, "a2")
	require.Equal(t, "A2", string(a2.dst), "a2")
	require.ErrorIs(t, b.err, ErrCacheMiss, "b: want a miss")
	require.Empty(t, b.dst, "b: want a miss")
	for _, m := range []*request{a, b, a2} {
		select {
		case <-m.wake:
		default:
			require.Fail(t, "member not woken", m.key)
		}
	}
}

// TestCombinedGetsServerError: an error reply to the combined command is
// every member's error; a VALUE for a key no member asked for is a
// protocol error.
func TestCombinedGetsServerError(t *testing.T) {
	x, y := newGet("x"), newGet("y")
	batch := combineGets([]*request{x, y})
	_, done, err := parseTextReply(batch, []byte("SERVER_ERROR out of memory\r\n"))
	require.NoError(t, err, "parse")
	require.True(t, done, "parse: done")
	(&lane{}).completeMembers(batch, nil)
	var se *ServerError
	require.ErrorAs(t, x.err, &se, "x")
	require.ErrorAs(t, y.err, &se, "y")
	other := combineGets([]*request{newGet("p"), newGet("q")})
	_, _, err = parseTextReply(other, []byte("VALUE z 0 1\r\nZ\r\nEND\r\n"))
	require.ErrorIs(t, err, ErrProtocol, "VALUE for an unasked key")
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
	require.True(t, q.replace(m1, newSink(m1)), "a member in a queued batch cannot be replaced")
	reply := []byte("VALUE k1 0 3\r\nONE\r\nVALUE k2 0 3\r\nTWO\r\nEND\r\n")
	_, done, err := parseTextReply(batch, reply)
	require.NoError(t, err, "parse")
	require.True(t, done, "parse: done")
	require.Empty(t, m1.dst, "the departed caller's buffer was written")
	require.NotEqual(t, "ONE", string(m1.dst[:3]), "the departed caller's buffer was written")
	(&lane{}).completeMembers(batch, nil)
	require.Equal(t, "TWO", string(m2.dst), "m2")
}
