package ermc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Connections cut at random moments, under many goroutines: mid-request,
// mid-reply, while idle, while dialing. Every request must end (no hang),
// with its own value or a typed error, never a neighbour's value and never
// a protocol error (the bytes are cut, not corrupted); once the cutting
// stops the client serves every key correctly again.

// cuttingProxy forwards loopback connections to a backend and closes
// them (both sides) when told to.
type cuttingProxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	live    []net.Conn // client side of each forwarded pair
	peer    map[net.Conn]net.Conn
	cuts    atomic.Int64
}

func startCuttingProxy(t *testing.T, backend string) *cuttingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cuttingProxy{ln: ln, backend: backend, peer: map[net.Conn]net.Conn{}}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for c, s := range p.peer {
			c.Close()
			s.Close()
		}
	})
	go p.accept()
	return p
}

func (p *cuttingProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.backend)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.live = append(p.live, c)
		p.peer[c] = s
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); s.Close() }()
		go func() { _, _ = io.Copy(c, s); c.Close() }()
	}
}

// cutOne closes a random forwarded connection, abruptly (RST) or not.
func (p *cuttingProxy) cutOne(rng *rand.Rand) {
	p.mu.Lock()
	if len(p.live) == 0 {
		p.mu.Unlock()
		return
	}
	i := rng.Intn(len(p.live))
	c := p.live[i]
	s := p.peer[c]
	p.live = append(p.live[:i], p.live[i+1:]...)
	delete(p.peer, c)
	p.mu.Unlock()
	if tc, ok := c.(*net.TCPConn); ok && rng.Intn(2) == 0 {
		_ = tc.SetLinger(0)
	}
	c.Close()
	s.Close()
	p.cuts.Add(1)
}

func TestChaosCutConnections(t *testing.T) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startMemcached(t)
			proxy := startCuttingProxy(t, srv.Addr)
			c := newTestClient(t, proxy.ln.Addr().String(), proto, Options{Timeout: stressTimeout, MaxConns: 8})
			const keys = 40
			key := func(i int) string { return fmt.Sprintf("own-%d", i) } // randomOwnedOp's keys
			direct := newTestClient(t, srv.Addr, Text, Options{})
			for i := 0; i < keys; i++ {
				require.NoError(t, direct.Set(bg, key(i), valueFor(key(i), 10+i*400), 0))
			}

			stop := make(chan struct{})
			chaosDone := make(chan struct{})
			go func() {
				defer close(chaosDone)
				rng := rand.New(rand.NewSource(1))
				for {
					select {
					case <-stop:
						return
					case <-time.After(time.Duration(200+rng.Intn(2000)) * time.Microsecond):
						proxy.cutOne(rng)
					}
				}
			}()

			var completed, cut atomic.Int64
			var wg sync.WaitGroup
			for g := 0; g < 24; g++ {
				wg.Add(1)
				go func(seed int64) {
					defer wg.Done()
					rng := rand.New(rand.NewSource(seed))
					buf := make([]byte, 0, 32<<10)
					for i := 0; i < 200; i++ {
						ctx, cancel := context.Background(), context.CancelFunc(func() {})
						if rng.Intn(4) == 0 {
							ctx, cancel = context.WithTimeout(bg, time.Duration(rng.Intn(500))*time.Microsecond)
						}
						err := randomOwnedOp(ctx, c, rng, key(rng.Intn(keys)), keys, buf)
						cancel()
						var ce *ConnError
						switch {
						case err == nil || errors.Is(err, ErrCacheMiss):
							completed.Add(1)
						case errors.As(err, &ce):
							cut.Add(1) // a cut connection, or a context that ended
						default:
							assert.NoError(t, err)
							return
						}
					}
				}(int64(g))
			}
			finished := make(chan struct{})
			go func() { wg.Wait(); close(finished) }()
			select {
			case <-finished:
			case <-time.After(stressTimeout):
				require.Fail(t, "requests still waiting: a request was lost")
			}
			close(stop)
			<-chaosDone
			t.Logf("%d connections cut; %d requests completed, %d failed with a connection error", proxy.cuts.Load(), completed.Load(), cut.Load())
			require.Positive(t, proxy.cuts.Load())
			require.Positive(t, completed.Load())
			require.Positive(t, cut.Load(), "the cuts must reach requests")

			// The cutting has stopped: every key reads back as itself. A
			// connection cut while idle may still fail a request, and the
			// dials that failed during the cuts leave the client backing
			// off (up to about a second) before it dials again.
			for i := 0; i < keys; i++ {
				v, err := c.Get(bg, key(i), nil)
				var ce *ConnError
				for deadline := time.Now().Add(hangGuard); errors.As(err, &ce) && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
					v, err = c.Get(bg, key(i), nil)
				}
				require.NoError(t, err, key(i))
				require.True(t, bytes.HasPrefix(v, []byte(key(i)+"|")), "%s: got a value of %q", key(i), v[:min(len(v), 20)])
			}
		})
	}
}
