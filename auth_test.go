package ermc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ASCII authentication (memcached -Y) on the text drivers, and what the
// binary driver does against such a server. SASL on Binary is tested in
// binary_test.go; the secrets tests in secrets_test.go cover every driver.

// startMemcachedAuth runs memcached with ASCII authentication (-Y) over an
// auth file of "user:password" lines.
func startMemcachedAuth(t *testing.T, lines ...string) *testServer {
	t.Helper()
	return startMemcached(t, "-Y", writeAuthFile(t, lines...))
}

func writeAuthFile(t *testing.T, lines ...string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "authfile")
	require.NoError(t, os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	return file
}

// asciiAuthDrivers are the drivers that authenticate with ASCII auth.
var asciiAuthDrivers = []Protocol{Text, Ultra, Meta}

// firstWrites wraps connections so that the first bytes each one sends are
// recorded.
type firstWrites struct {
	mu    sync.Mutex
	first []string
}

func (f *firstWrites) wrap(nc net.Conn) net.Conn {
	f.mu.Lock()
	i := len(f.first)
	f.first = append(f.first, "")
	f.mu.Unlock()
	return &recordFirst{Conn: nc, f: f, i: i}
}

func (f *firstWrites) all() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.first...)
}

type recordFirst struct {
	net.Conn
	f    *firstWrites
	i    int
	once sync.Once
}

func (c *recordFirst) Write(p []byte) (int, error) {
	c.once.Do(func() {
		c.f.mu.Lock()
		c.f.first[c.i] = string(p)
		c.f.mu.Unlock()
	})
	return c.Conn.Write(p)
}

// requireAuthRefused: err is ErrAuth, never a miss or a not-stored.
func requireAuthRefused(t *testing.T, err error, what string) {
	t.Helper()
	requireHardFault(t, err, what)
	assert.ErrorIs(t, err, ErrAuth, what)
}

func TestASCIIAuth(t *testing.T) {
	// The password holds a colon: memcached splits the auth file line at
	// the first colon. (It splits the auth data at spaces, so neither
	// name nor password can hold one.)
	const user, pass = "alice", "p:ss!w0rd"
	s := startMemcachedAuth(t, user+":"+pass, "bob:hunter2")

	for _, proto := range asciiAuthDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			t.Run("right password", func(t *testing.T) {
				c := newTestClient(t, s.Addr, proto, Options{Username: user, Password: pass})
				require.NoError(t, c.Connect(bg))
				mustSet(t, c, "k", "authenticated")
				requireValue(t, c, "k", "authenticated")
				m, err := c.GetMultiMap(bg, []string{"k", "absent"})
				require.NoError(t, err)
				assert.Equal(t, map[string][]byte{"k": []byte("authenticated")}, m)
				require.NoError(t, c.SetInt(bg, "n", 1, 0))
				n, err := c.Incr(bg, "n", 2)
				require.NoError(t, err)
				assert.Equal(t, uint64(3), n)
				require.NoError(t, c.Delete(bg, "n"))
				v, err := c.Version(bg)
				require.NoError(t, err)
				assert.NotEmpty(t, v)
				_, err = c.Stats(bg)
				require.NoError(t, err)
				// The auth exchange stored nothing under its key.
				requireMiss(t, c, "_")

				other := newTestClient(t, s.Addr, proto, Options{Username: "bob", Password: "hunter2"})
				requireValue(t, other, "k", "authenticated")
			})

			t.Run("every new connection authenticates first", func(t *testing.T) {
				// Three requests at once force three connections: the
				// dialer holds each dial until all three have started.
				const conns = 3
				var dials atomic.Int32
				allDialing := make(chan struct{})
				rec := &firstWrites{}
				opts := Options{Username: user, Password: pass, MaxConns: conns}
				opts.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
					if dials.Add(1) == conns {
						close(allDialing)
					}
					select {
					case <-allDialing:
					case <-time.After(hangGuard): // the count check below fails
					}
					var d net.Dialer
					nc, err := d.DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					return rec.wrap(nc), nil
				}
				c := newTestClient(t, s.Addr, proto, opts)
				if c.pipelined {
					// One shared connection per lane: three lanes, each
					// taking one caller before the next spills over.
					u := newPipeDriver("tcp", s.Addr, &c.opts, c.drv.(*pipeDriver).d.codec, conns, &c.stats)
					u.spillAt = 1
					c.drv = u
				}
				var wg sync.WaitGroup
				errs := make(chan error, 4*conns)
				for g := 0; g < 4*conns; g++ {
					wg.Add(1)
					go func(g int) {
						defer wg.Done()
						k := fmt.Sprintf("conn-%d", g)
						for i := 0; i < 20; i++ {
							if err := c.Set(bg, k, []byte(k), 0); err != nil {
								errs <- err
								return
							}
							if v, err := c.Get(bg, k, nil); err != nil || string(v) != k {
								errs <- fmt.Errorf("get %s = %q, %v", k, v, err)
								return
							}
						}
					}(g)
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					require.NoError(t, err)
				}
				assert.Equal(t, int32(conns), dials.Load(), "connections dialed")
				first := rec.all()
				require.Len(t, first, conns)
				wantAuth := fmt.Sprintf("set _ 0 -1 %d\r\n%s %s\r\n", len(user)+1+len(pass), user, pass)
				for i, w := range first {
					assert.True(t, strings.HasPrefix(w, wantAuth), "connection %d began with %q, not the auth exchange", i, w)
				}
			})

			for _, asMiss := range []bool{false, true} {
				// ErrorAsMiss hides connectivity faults only: a refusal
				// of credentials is never a miss.
				name := fmt.Sprintf("ErrorAsMiss=%v", asMiss)
				t.Run("wrong password/"+name, func(t *testing.T) {
					c := newTestClient(t, s.Addr, proto, Options{Username: user, Password: "wrong", ErrorAsMiss: asMiss})
					err := c.Connect(bg)
					requireAuthRefused(t, err, "connect")
					var ce *ClientError
					require.True(t, errors.As(err, &ce), "%v: the server's reply is not reachable", err)
					assert.Equal(t, "authentication failure", ce.Message)
					_, err = c.Get(bg, "k", nil)
					requireAuthRefused(t, err, "get")
					requireAuthRefused(t, c.Set(bg, "k", []byte("v"), 0), "set")
					requireAuthRefused(t, c.GetMulti(bg, []string{"k", "j"}, func(int, []byte) {}), "multi-get")
				})

				t.Run("unknown user/"+name, func(t *testing.T) {
					c := newTestClient(t, s.Addr, proto, Options{Username: "mallory", Password: pass, ErrorAsMiss: asMiss})
					requireAuthRefused(t, c.Connect(bg), "connect")
					_, err := c.Get(bg, "k", nil)
					requireAuthRefused(t, err, "get")
				})

				t.Run("no credentials/"+name, func(t *testing.T) {
					// memcached answers every command of an
					// unauthenticated connection with CLIENT_ERROR
					// unauthenticated.
					c := newTestClient(t, s.Addr, proto, Options{ErrorAsMiss: asMiss})
					_, err := c.Get(bg, "k", nil)
					requireAuthRefused(t, err, "get")
					var ce *ClientError
					require.True(t, errors.As(err, &ce), "%v is not a *ClientError", err)
					assert.Equal(t, "unauthenticated", ce.Message)
					requireAuthRefused(t, c.Set(bg, "k", []byte("v"), 0), "set")
					requireAuthRefused(t, c.Add(bg, "k", []byte("v"), 0), "add")
					requireAuthRefused(t, c.GetMulti(bg, []string{"k", "j"}, func(int, []byte) { assert.Fail(t, "a value without auth") }), "multi-get")
					requireAuthRefused(t, c.Delete(bg, "k"), "delete")
					requireAuthRefused(t, c.Touch(bg, "k", time.Hour), "touch")
					_, err = c.Incr(bg, "k", 1)
					requireAuthRefused(t, err, "incr")
					_, err = c.Version(bg)
					requireAuthRefused(t, err, "version")
				})
			}
		})
	}

	t.Run("binary", func(t *testing.T) {
		// The binary protocol has no ASCII auth, and memcached 1.6.18
		// with -Y does not answer binary requests at all (measured):
		// with or without credentials the client times out. An error,
		// never a miss.
		for name, opts := range map[string]Options{
			"no credentials":   {},
			"with credentials": {Username: user, Password: pass},
		} {
			t.Run(name, func(t *testing.T) {
				opts.Timeout, opts.ConnectTimeout = 300*time.Millisecond, 300*time.Millisecond
				c := newTestClient(t, s.Addr, Binary, opts)
				err := guardedGet(t, c, bg, "k").err
				requireHardFault(t, err, "get")
				var ce *ConnError
				assert.True(t, errors.As(err, &ce) && ce.Timeout(), "%v is not a timeout *ConnError", err)
			})
		}
	})
}

// ASCII auth over a unix socket (memcached -s -Y), both address forms.
func TestASCIIAuthUnixSocket(t *testing.T) {
	s := startMemcachedUnix(t, "-Y", writeAuthFile(t, "alice:pw"))
	for _, proto := range asciiAuthDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for _, addr := range []string{s.Addr, "unix:" + s.Addr} {
				c := newTestClient(t, addr, proto, Options{Username: "alice", Password: "pw"})
				mustSet(t, c, "k", addr)
				requireValue(t, c, "k", addr)
				wrong := newTestClient(t, addr, proto, Options{Username: "alice", Password: "nope"})
				_, err := wrong.Get(bg, "k", nil)
				requireAuthRefused(t, err, "get with a wrong password")
				anon := newTestClient(t, addr, proto, Options{})
				_, err = anon.Get(bg, "k", nil)
				requireAuthRefused(t, err, "get without credentials")
			}
		})
	}
}

// Binary's SASL refusals are the same typed ErrAuth as the text drivers':
// a wrong password, and a server with -S refusing an unauthenticated
// connection (status 0x20), never a miss, with or without ErrorAsMiss.
func TestBinarySASLRefusalsAreErrAuth(t *testing.T) {
	s := startMemcachedSASL(t, "alice", "right")
	for _, asMiss := range []bool{false, true} {
		t.Run(fmt.Sprintf("ErrorAsMiss=%v", asMiss), func(t *testing.T) {
			wrong := newTestClient(t, s.Addr, Binary, Options{Username: "alice", Password: "wrong", ErrorAsMiss: asMiss})
			requireAuthRefused(t, wrong.Connect(bg), "connect with a wrong password")
			_, err := wrong.Get(bg, "k", nil)
			requireAuthRefused(t, err, "get with a wrong password")

			anon := newTestClient(t, s.Addr, Binary, Options{ErrorAsMiss: asMiss})
			_, err = anon.Get(bg, "k", nil)
			requireAuthRefused(t, err, "get without credentials")
			wantStatus(t, err, binStatusAuthError)
			requireAuthRefused(t, anon.Set(bg, "k", []byte("v"), 0), "set without credentials")
			requireAuthRefused(t, anon.GetMulti(bg, []string{"k", "j"}, func(int, []byte) {}), "multi-get without credentials")
			requireAuthRefused(t, anon.Delete(bg, "k"), "delete without credentials")
		})
	}
}

// A server that accepts the connection and never answers the auth
// exchange: ConnectTimeout bounds the setup of a new connection, auth
// included, even with no per-request Timeout.
func TestAuthBoundedByConnectTimeout(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) { fc.Stall() })
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestClient(t, srv.Addr, proto, Options{Username: "alice", Password: "pw", ConnectTimeout: 200 * time.Millisecond, Timeout: -1})
			err := guarded(t, func() error { return c.Connect(bg) })
			requireHardFault(t, err, "connect")
			var ce *ConnError
			assert.True(t, errors.As(err, &ce) && ce.Timeout(), "%v is not a timeout *ConnError", err)
			requireHardFault(t, guardedGet(t, c, bg, "k").err, "get")
		})
	}
}
