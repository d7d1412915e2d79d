package ermc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Scale-out through twemproxy (nutcracker): one client, one proxy address,
// keys spread over several memcached by consistent hashing. The tests start
// two memcached and one nutcracker on loopback and check, per driver, what
// works through the proxy and what fails (quickly, with an error).

// twemproxyConfig is the nutcracker pool the tests run (and the README
// shows): ketama over fnv1a_64, no ejection, so a dead backend shows up as
// errors for its keys instead of keys moving silently to another backend.
const twemproxyConfig = `ermc:
  listen: %s
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  auto_eject_hosts: false
  server_retry_timeout: 2000
  server_failure_limit: 1
  servers:
%s`

// startTwemproxy runs nutcracker in front of backends (host:port each,
// weight 1) on a free loopback port and stops it when tb ends. The config,
// log and pid files live in a temp dir; the stats port is a free loopback
// port too, so parallel tests do not collide on nutcracker's default.
func startTwemproxy(tb testing.TB, backends ...string) *testServer {
	tb.Helper()
	bin := requireBinary(tb, "nutcracker")
	dir := tb.TempDir()
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "   - %s:1\n", b)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb)))
		conf := filepath.Join(dir, fmt.Sprintf("nutcracker-%d.yml", attempt))
		require.NoError(tb, os.WriteFile(conf, []byte(fmt.Sprintf(twemproxyConfig, addr, servers.String())), 0o600))
		out, err := exec.Command(bin, "-t", "-c", conf).CombinedOutput()
		require.NoError(tb, err, "nutcracker -t rejects the config: %s", out)
		args := []string{
			"-c", conf,
			"-o", filepath.Join(dir, "nutcracker.log"),
			"-p", filepath.Join(dir, fmt.Sprintf("nutcracker-%d.pid", attempt)),
			"-s", strconv.Itoa(freePort(tb)), "-a", "127.0.0.1",
		}
		s, err := startProcess(tb, bin, args, "tcp", addr, nil)
		if err == nil {
			return s
		}
		lastErr = err
	}
	require.Fail(tb, "nutcracker did not start", "%v", lastErr)
	return nil
}

// twemproxySetup is two memcached behind one nutcracker.
type twemproxySetup struct {
	proxy    *testServer
	backends []*testServer
}

func startTwemproxySetup(t *testing.T) *twemproxySetup {
	t.Helper()
	a, b := startMemcached(t), startMemcached(t)
	return &twemproxySetup{proxy: startTwemproxy(t, a.Addr, b.Addr), backends: []*testServer{a, b}}
}

// owner returns the index of the backend that holds key, read directly
// from the backends; it fails the test unless exactly one holds it.
func (s *twemproxySetup) owner(t *testing.T, key string) int {
	t.Helper()
	owner := -1
	for i, b := range s.backends {
		if _, _, found := rawGet(t, b.Addr, key); found {
			require.Equal(t, -1, owner, "key %q is on more than one backend", key)
			owner = i
		}
	}
	require.NotEqual(t, -1, owner, "key %q is on no backend", key)
	return owner
}

// spread stores n keys through c and returns them grouped by the backend
// that holds each, requiring that both backends got some.
//
// The keys are shaped "prefix:N:item". twemproxy computes fnv1a_64 in 32
// bits, and keys that differ only in a trailing counter ("tw-1", "tw-2",
// ... or "session-00000001", ...) can all hash into one arc of the ketama
// ring: measured, 200 such keys all on one of two backends.
func (s *twemproxySetup) spread(t *testing.T, c *Client, prefix string, n int) [][]string {
	t.Helper()
	byBackend := make([][]string, len(s.backends))
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("%s:%d:item", prefix, i)
		mustSet(t, c, k, "v-"+k)
		o := s.owner(t, k)
		byBackend[o] = append(byBackend[o], k)
	}
	for i, keys := range byBackend {
		require.NotEmpty(t, keys, "no key of %d landed on backend %d: is the proxy hashing?", n, i)
	}
	return byBackend
}

// proxyDrivers are the drivers that speak the text protocol, the only one
// twemproxy proxies for memcached (Binary and Meta: TestTwemproxyUnsupported).
var proxyDrivers = []Protocol{Text, Ultra}

// Every command twemproxy supports works through it, on both text drivers.
func TestTwemproxySupported(t *testing.T) {
	for _, proto := range proxyDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			s := startTwemproxySetup(t)
			c := newTestClient(t, s.proxy.Addr, proto, Options{})
			ctx := bg

			// set, and the keys landed on both backends.
			byBackend := s.spread(t, c, "tw", 40)
			var all []string
			for _, keys := range byBackend {
				all = append(all, keys...)
			}

			// get and gets of keys on each backend.
			for _, keys := range byBackend {
				k := keys[0]
				requireValue(t, c, k, "v-"+k)
				v, cas, err := c.Gets(ctx, k, nil)
				require.NoError(t, err)
				assert.Equal(t, "v-"+k, string(v))
				assert.NotZero(t, cas)
			}
			requireMiss(t, c, "tw-absent")

			// One multi-get over keys of both backends, plus misses.
			keys := append(append([]string{}, all...), "tw-absent-1", "tw-absent-2")
			got := map[string]string{}
			require.NoError(t, c.GetMulti(ctx, keys, func(i int, v []byte) {
				got[keys[i]] = string(v)
			}))
			require.Len(t, got, len(all))
			for _, k := range all {
				assert.Equal(t, "v-"+k, got[k])
			}

			// add, replace, append, prepend.
			k0, k1 := byBackend[0][0], byBackend[1][0]
			assert.ErrorIs(t, c.Add(ctx, k0, []byte("x"), 0), ErrNotStored)
			require.NoError(t, c.Add(ctx, "tw-added", []byte("added"), 0))
			requireValue(t, c, "tw-added", "added")
			require.NoError(t, c.Replace(ctx, k1, []byte("replaced"), 0))
			assert.ErrorIs(t, c.Replace(ctx, "tw-absent", []byte("x"), 0), ErrNotStored)
			require.NoError(t, c.Append(ctx, k1, []byte(">")))
			require.NoError(t, c.Prepend(ctx, k1, []byte("<")))
			requireValue(t, c, k1, "<replaced>")
			assert.ErrorIs(t, c.Append(ctx, "tw-absent", []byte("x")), ErrNotStored)

			// CompareAndSwap with an id from Gets; a stale id conflicts.
			_, cas, err := c.Gets(ctx, k0, nil)
			require.NoError(t, err)
			require.NoError(t, c.CompareAndSwap(ctx, k0, []byte("swapped"), cas, 0))
			assert.ErrorIs(t, c.CompareAndSwap(ctx, k0, []byte("stale"), cas, 0), ErrCASConflict)
			assert.ErrorIs(t, c.CompareAndSwap(ctx, "tw-absent", []byte("x"), cas, 0), ErrCacheMiss)
			requireValue(t, c, k0, "swapped")

			// CAS with CacheCAS, as in the walkthrough.
			cc := newTestClient(t, s.proxy.Addr, proto, Options{CacheCAS: true})
			_, _, err = cc.Gets(ctx, k1, nil)
			require.NoError(t, err)
			require.NoError(t, cc.CAS(ctx, k1, []byte("cas-1"), 0))
			assert.ErrorIs(t, cc.CAS(ctx, k1, []byte("cas-2"), 0), ErrCASConflict)
			requireValue(t, c, k1, "cas-1")

			// incr, decr, and the non-numeric refusal.
			for _, k := range []string{"tw-counter", byBackend[1][1]} {
				require.NoError(t, c.SetInt(ctx, k, 10, 0))
				n, err := c.Incr(ctx, k, 5)
				require.NoError(t, err)
				assert.Equal(t, uint64(15), n)
				n, err = c.Decr(ctx, k, 20)
				require.NoError(t, err)
				assert.Equal(t, uint64(0), n)
			}
			gotN, err := c.GetInt(ctx, "tw-counter")
			require.NoError(t, err)
			assert.Equal(t, int64(0), gotN)
			require.NoError(t, c.SetObject(ctx, "tw-object", map[string]int{"a": 1}, 0))
			var obj map[string]int
			require.NoError(t, c.GetObject(ctx, "tw-object", &obj))
			assert.Equal(t, map[string]int{"a": 1}, obj)
			_, err = c.Incr(ctx, "tw-absent", 1)
			assert.ErrorIs(t, err, ErrCacheMiss)
			_, err = c.Incr(ctx, k1, 1)
			assert.ErrorIs(t, err, ErrNonNumeric)

			// touch, delete.
			require.NoError(t, c.Touch(ctx, k0, time.Hour))
			assert.ErrorIs(t, c.Touch(ctx, "tw-absent", time.Hour), ErrCacheMiss)
			require.NoError(t, c.Delete(ctx, k0))
			requireMiss(t, c, k0)
			assert.ErrorIs(t, c.Delete(ctx, k0), ErrCacheMiss)

			// A negative TTL stores an already expired item.
			require.NoError(t, c.Set(ctx, byBackend[0][1], []byte("gone"), -time.Second))
			requireMiss(t, c, byBackend[0][1])

			// version (twemproxy 0.5 forwards it to a backend).
			v, err := c.Version(ctx)
			require.NoError(t, err)
			assert.NotEmpty(t, v)

			// Fire-and-forget: on Ultra with noreply and a fence, on Text
			// ordinary calls. Either way they land, on both backends, in
			// order (a touch with a negative TTL expires the item). On
			// Ultra only requests on one connection are ordered: one lane.
			nr := newTestClient(t, s.proxy.Addr, proto, Options{MaxValueLength: 2 << 20})
			if u, ok := nr.drv.(*pipeDriver); ok {
				u.lanes = u.lanes[:1]
			}
			for _, keys := range byBackend {
				k := keys[2]
				require.NoError(t, nr.SetNoreply(ctx, k, []byte("noreply"), 0))
				requireValue(t, nr, k, "noreply")
				require.NoError(t, nr.TouchNoreply(ctx, k, -time.Second))
				requireMiss(t, nr, k)
				require.NoError(t, nr.SetNoreply(ctx, k, []byte("noreply"), 0))
				require.NoError(t, nr.DeleteNoreply(ctx, k))
				requireMiss(t, nr, k)
			}
			// A noreply run that the server refuses (too large for the
			// backend's item size) is fenced: the next reply is the next
			// request's own.
			err = nr.SetNoreply(ctx, k1, make([]byte, 1100<<10), 0)
			if proto == Ultra {
				require.NoError(t, err)
			} else {
				var se *ServerError
				require.ErrorAs(t, err, &se)
			}
			other := byBackend[1][3]
			requireValue(t, nr, other, "v-"+other)
			// memcached drops the old value when it refuses a set.
			requireMiss(t, nr, k1)
			require.NoError(t, nr.SetNoreply(ctx, k1, []byte("after"), 0))
			requireValue(t, nr, k1, "after")

			// Concurrent traffic over keys of both backends.
			done := make(chan error, 8)
			for g := 0; g < 8; g++ {
				go func(g int) {
					for i := 0; i < 50; i++ {
						k := all[(g*7+i)%len(all)]
						if err := c.Set(ctx, k, []byte(k), 0); err != nil {
							done <- err
							return
						}
						v, err := c.Get(ctx, k, nil)
						if err != nil || string(v) != k {
							done <- fmt.Errorf("get %s = %q, %v", k, v, err)
							return
						}
					}
					done <- nil
				}(g)
			}
			for g := 0; g < 8; g++ {
				require.NoError(t, <-done)
			}
		})
	}
}

// What twemproxy does not support fails with an error, quickly: nutcracker
// closes the client connection on a command it does not know, and the
// client reports that as a connection fault. The next request works on a
// new connection.
func TestTwemproxyUnsupported(t *testing.T) {
	s := startTwemproxySetup(t)
	opts := Options{Timeout: 2 * time.Second, ConnectTimeout: 2 * time.Second}
	unsupported := []struct {
		name string
		call func(c *Client) error
	}{
		{"flush_all", func(c *Client) error { return c.FlushAll(bg) }},
		{"stats", func(c *Client) error { _, err := c.Stats(bg); return err }},
		{"gat", func(c *Client) error { _, err := c.GetAndTouch(bg, "k", time.Hour, nil); return err }},
	}
	for _, proto := range proxyDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestClient(t, s.proxy.Addr, proto, opts)
			mustSet(t, c, "k", "v")
			for _, u := range unsupported {
				err := guarded(t, func() error { return u.call(c) })
				requireHardFault(t, err, u.name)
				var ce *ConnError
				assert.True(t, errors.As(err, &ce), "%s: %v is not a *ConnError (twemproxy closes the connection)", u.name, err)
				// The connection it closed is not reused.
				requireValue(t, c, "k", "v")
			}
		})
	}
	t.Run("binary", func(t *testing.T) {
		// twemproxy speaks only the text protocol to memcache clients.
		c := newTestClient(t, s.proxy.Addr, Binary, opts)
		for name, call := range map[string]func() error{
			"get":     func() error { _, err := c.Get(bg, "k", nil); return err },
			"set":     func() error { return c.Set(bg, "k", []byte("v"), 0) },
			"version": func() error { _, err := c.Version(bg); return err },
		} {
			err := guarded(t, call)
			requireHardFault(t, err, name)
			var ce *ConnError
			assert.True(t, errors.As(err, &ce), "%s: %v is not a *ConnError", name, err)
		}
	})
	t.Run("meta", func(t *testing.T) {
		// nutcracker 0.5 knows no meta command: it closes the connection
		// on the first one, and every operation fails at once with the
		// fault, on a new connection each time.
		c := newTestClient(t, s.proxy.Addr, Meta, Options{Timeout: 2 * time.Second, ConnectTimeout: 2 * time.Second, CacheCAS: true})
		calls := map[string]func() error{
			"Stats":    func() error { _, err := c.Stats(bg); return err },
			"FlushAll": func() error { return c.FlushAll(bg) },
			"negative TTL": func() error {
				return c.Set(bg, "k", []byte("v"), -time.Second)
			},
		}
		for _, op := range keyedOps {
			calls[op.name] = func() error { return op.op(c, "k") }
		}
		for name, call := range calls {
			err := guarded(t, call)
			requireHardFault(t, err, name)
			var ce *ConnError
			assert.True(t, errors.As(err, &ce), "%s: %v is not a *ConnError", name, err)
		}
		// version is a text command on Meta too: twemproxy answers it.
		v, err := c.Version(bg)
		require.NoError(t, err)
		assert.NotEmpty(t, v)
		// A fire-and-forget write is not reported: twemproxy drops it
		// with the connection, and nothing reaches a backend.
		require.NoError(t, c.SetNoreply(bg, "nr", []byte("v"), 0))
		for _, b := range s.backends {
			_, _, found := rawGet(t, b.Addr, "nr")
			assert.False(t, found, "a meta set reached a backend")
		}
	})
}

// A backend that goes down shows up as a server error for its keys (the
// proxy answers SERVER_ERROR), never as a miss, even with ErrorAsMiss; the
// other backend's keys keep working.
func TestTwemproxyBackendDown(t *testing.T) {
	for _, proto := range proxyDrivers {
		for _, asMiss := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/ErrorAsMiss=%v", proto, asMiss), func(t *testing.T) {
				s := startTwemproxySetup(t)
				c := newTestClient(t, s.proxy.Addr, proto, Options{ErrorAsMiss: asMiss})
				byBackend := s.spread(t, c, "down", 30)
				up, down := byBackend[0], byBackend[1]
				s.backends[1].Stop()

				wantServerError := func(err error, what string) {
					t.Helper()
					requireHardFault(t, err, what)
					var se *ServerError
					assert.True(t, errors.As(err, &se), "%s: %v is not a *ServerError", what, err)
				}
				for i := 0; i < 3; i++ {
					_, err := c.Get(bg, down[i], nil)
					wantServerError(err, "get of a key on the dead backend")
					requireValue(t, c, up[i], "v-"+up[i])
				}
				wantServerError(c.Set(bg, down[0], []byte("x"), 0), "set on the dead backend")
				wantServerError(c.Delete(bg, down[0]), "delete on the dead backend")
				_, err := c.Incr(bg, down[0], 1)
				wantServerError(err, "incr on the dead backend")
				err = c.GetMulti(bg, []string{up[0], down[0], up[1]}, func(int, []byte) {})
				wantServerError(err, "multi-get touching the dead backend")

				// The live backend's keys still work, one by one and
				// together, after all those errors.
				for _, k := range up {
					requireValue(t, c, k, "v-"+k)
				}
				m, err := c.GetMultiMap(bg, up)
				require.NoError(t, err)
				assert.Len(t, m, len(up))
				mustSet(t, c, up[0], "still up")
				requireValue(t, c, up[0], "still up")
			})
		}
	}
}

// The fence ending a run of noreply commands is version: it drops the
// error lines of the noreply commands before it and ends on VERSION.
func TestUltraFenceIsVersion(t *testing.T) {
	f := &request{op: opFence}
	assert.Equal(t, "version\r\n", string(appendTextRequest(nil, f)))
	reply := "SERVER_ERROR object too large for cache\r\nCLIENT_ERROR bad data chunk\r\nVERSION 1.6.18\r\n"
	n, done, err := parseTextReply(f, []byte(reply+"END\r\n"))
	require.NoError(t, err)
	assert.True(t, done)
	assert.Equal(t, len(reply), n, "the fence stops at its VERSION line")
	assert.NoError(t, f.err, "a noreply command's error is dropped, not reported")
}
