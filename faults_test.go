package ermc

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Helpers of the fault tests (faults_*_test.go): a client with one Ultra
// lane, the check every fault test ends with, and the places in a reply
// where the fake server stalls or hangs up. Every fault is reported, a
// broken connection is never reused, and the next request gets its own
// reply on a fresh connection.

// newFaultClient is newTestClient with one connection for Ultra (instead
// of one per core), so that a request after a fault would reuse the faulty
// connection if the driver kept it.
func newFaultClient(t *testing.T, addr string, proto Protocol, opts Options) *Client {
	t.Helper()
	c := newTestClient(t, addr, proto, opts)
	if u, ok := c.drv.(*pipeDriver); ok {
		u.lanes = u.lanes[:1]
	}
	return c
}

// textDrivers speak the text protocol, so the same malformed bytes apply.
var textDrivers = []Protocol{Text, Ultra}

// await receives from ch, failing the test if nothing comes within the
// hang guard. It asserts nothing about timing otherwise.
func await[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	// Stopped on return: the fuzz targets call this thousands of times a
	// second, and pending timers pile up in the runtime's timer heap.
	guard := time.NewTimer(hangGuard)
	defer guard.Stop()
	select {
	case v := <-ch:
		return v
	case <-guard.C:
		require.Fail(t, "call did not return", "within %v", hangGuard)
		panic("unreachable")
	}
}

// guarded runs fn and returns its result, within the hang guard (await).
func guarded[T any](t *testing.T, fn func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- fn() }()
	return await(t, ch)
}

type getResult struct {
	v   string
	err error
}

// goGet runs a Get on its own goroutine; await collects its result.
func goGet(c *Client, ctx context.Context, key string) <-chan getResult {
	ch := make(chan getResult, 1)
	go func() {
		v, err := c.Get(ctx, key, nil)
		ch <- getResult{string(v), err}
	}()
	return ch
}

// guardedGet is a Get within the hang guard.
func guardedGet(t *testing.T, c *Client, ctx context.Context, key string) getResult {
	t.Helper()
	return await(t, goGet(c, ctx, key))
}

// fresh is what the fake's healthy connections serve.
var fresh = map[string]string{"k": "fresh", "other": "other-value"}

// afterFault is the check every fault test ends with: the faulty
// connection was closed by the client, and the next request goes over a
// new connection and gets its own value.
func afterFault(t *testing.T, srv *fakeServer, c *Client) {
	t.Helper()
	srv.WaitPeerClosed(0)
	res, tries := getAfterBusyTimeouts(t, c, "k")
	require.NoError(t, res.err, "the request after a fault")
	assert.Equal(t, "fresh", res.v, "the request after a fault gets its own reply")
	assert.Equal(t, 1+tries, srv.Accepted(), "the request after a fault uses a new connection")
}

// getAfterBusyTimeouts gets key, and gets it again, on a new connection,
// while that times out, at most three times in all. Tests of a stall give
// their client a Timeout short enough to wait out, and on a busy machine
// even a healthy reply can come later than that; the connection is then
// discarded like any timed-out one. It returns the last result and how
// many gets it made.
func getAfterBusyTimeouts(t *testing.T, c *Client, key string) (res getResult, tries int) {
	t.Helper()
	for tries = 1; ; tries++ {
		res = guardedGet(t, c, bg, key)
		if !isTimeout(res.err) || tries == 3 {
			return res, tries
		}
		t.Logf("get %s %d timed out (a busy machine): %v", key, tries, res.err)
	}
}

// stallScript makes connection 0 answer its first request with partial,
// then stall until release is closed, then send late (the rest of the
// reply, which the client must never read), then behave. Every other
// connection serves fresh values. Requests and replies are in proto's
// wire format.
func stallScript(proto Protocol, partial, late string, release <-chan struct{}) func(fc *fakeConn) {
	return func(fc *fakeConn) {
		if fc.N == 0 {
			req, ok := fc.NextAs(proto)
			if !ok {
				return
			}
			fc.Send(echoOpaque(req, partial))
			if !fc.Wait(release) {
				return
			}
			fc.Send(echoOpaque(req, late))
		}
		fc.ServeAs(proto, fresh)
	}
}

type stallPoint struct{ name, partial, late string }

// startStalledServer runs a fake server that sends sp.partial of the reply
// and stalls; release sends the rest (sp.late). Releasing twice is fine,
// and the test's end releases it anyway.
func startStalledServer(t *testing.T, proto Protocol, sp stallPoint) (*fakeServer, func()) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(ch) }) }
	srv := startFakeServer(t, stallScript(proto, sp.partial, sp.late, ch))
	t.Cleanup(release)
	return srv, release
}

// stallPointsFor are places in a reply to a get of "k" in proto's wire
// format where the fake stops sending. Joined, each pair is a valid reply
// with a value other than "fresh".
func stallPointsFor(proto Protocol) []stallPoint {
	switch proto {
	case Binary:
		return binaryStallPoints
	case Meta:
		return metaStallPoints
	}
	return stallPoints
}

// metaStallPoints: the same places in a meta reply; O$ stands for the
// request's opaque token (echoOpaque).
var metaStallPoints = func() []stallPoint {
	big := strings.Repeat("s", 40_000)
	return []stallPoint{
		{"before the first byte", "", "VA 5 f0 O$\r\nstale\r\n"},
		{"in the VA line", "VA 5 f0", " O$\r\nstale\r\n"},
		{"between CR and LF", "VA 5 f0 O$\r", "\nstale\r\n"},
		{"in the value", "VA 5 f0 O$\r\nst", "ale\r\n"},
		{"before the data CRLF", "VA 5 f0 O$\r\nstale", "\r\n"},
		{"in a 40 KB value", "VA 40000 f0 O$\r\n" + big[:20_000], big[20_000:] + "\r\n"},
	}
}()

// binaryStallPoints: the same places in a binary GET response.
var binaryStallPoints = func() []stallPoint {
	small := string(binResp(binGet, 0, binOpaque, 1, be32(0), "", "stale"))
	big := string(binResp(binGet, 0, binOpaque, 1, be32(0), "", strings.Repeat("s", 40_000)))
	return []stallPoint{
		{"before the first byte", "", small},
		{"in the header", small[:10], small[10:]},
		{"after the header", small[:binHeaderLen], small[binHeaderLen:]},
		{"in the value", small[:binHeaderLen+6], small[binHeaderLen+6:]},
		{"in a 40 KB value", big[:20_000], big[20_000:]},
	}
}()

var stallPoints = func() []stallPoint {
	big := strings.Repeat("s", 40_000) // larger than the read buffer: the scratch-buffer path
	return []stallPoint{
		{"before the first byte", "", "VALUE k 0 5\r\nstale\r\nEND\r\n"},
		{"in the VALUE line", "VALUE k 0", " 5\r\nstale\r\nEND\r\n"},
		{"between CR and LF", "VALUE k 0 5\r", "\nstale\r\nEND\r\n"},
		{"in the value", "VALUE k 0 5\r\nst", "ale\r\nEND\r\n"},
		{"before the data CRLF", "VALUE k 0 5\r\nstale", "\r\nEND\r\n"},
		{"before END", "VALUE k 0 5\r\nstale\r\n", "END\r\n"},
		{"in a 40 KB value", "VALUE k 0 40000\r\n" + big[:20_000], big[20_000:] + "\r\nEND\r\n"},
	}
}()

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
