package ermc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Map of the tests. Against a real memcached, per driver (wireDrivers):
//   conformance_test.go   every command's outcomes; drivers_test.go: the
//                         client helpers (newTestClient, forEachDriver,
//                         mustSet, requireValue, requireMiss, requireHardFault)
//   meta_, binary_, ultra_*, lanes_, pool_, fetch_*, stats_, tracer_test.go: one
//                         feature or driver each; auth_, tls_, secrets_,
//                         twemproxy_, chaos_test.go: setups around the server
// Faults, by what the server or network does wrong (faults_test.go holds
// their helpers: newFaultClient, afterFault, guarded/await/goGet/guardedGet,
// the stall points):
//   faults_malformed_test.go  garbage, lax numbers, endless or oversized replies
//   faults_stall_test.go      no answer: Timeout, context deadline, cancellation
//   faults_cut_test.go        connection ended mid-reply or while idle
//   faults_refused_test.go    dial refused or timed out, DNS, connection limit
//   faults_errors_test.go     ERROR, CLIENT_ERROR, SERVER_ERROR replies
// Codecs on bytes: textparse_, metaparse_, binframe_, values_test.go; all
// feed replies to the parsers through parsefeed_test.go (feedChunks, and
// on it feed/feedMeta for the tables, feedWhole, the fuzz feedReply). fuzz_*
// are the fuzz targets (fuzz_conn_test.go: the in-memory server they use).
// Allocation counts: *alloc_test.go, built only without -race.
// Servers: this file starts memcached and nutcracker (startMemcached,
// startTwemproxy in twemproxy_test.go); fakeserver_test.go is the scripted
// fake for what a real server cannot be made to do; its splitRequest cuts
// one request out of the bytes a client sent, for the fake and for the fuzz
// in-memory conn. hangGuard (there) bounds every wait: a hang fails,
// nothing is asserted on time.
// Assertions: testify, require where the test cannot go on, assert
// otherwise. t.Fatalf/t.Errorf stay only in code measured by
// testing.AllocsPerRun (testify's arguments allocate) and in
// fakeserver_test.go's own failures; each fuzz_* file keeps one style, most
// t.Fatalf, whose messages print the failing input.

// The test harness starts real servers (memcached, nutcracker) on free
// loopback ports and stops them when the test ends. Under CI=true a missing
// server binary fails the test; elsewhere it skips.

// requireBinary returns the path of a server binary, failing under CI and
// skipping elsewhere when it is not installed.
func requireBinary(tb testing.TB, name string) string {
	tb.Helper()
	for _, p := range []string{name, "/usr/bin/" + name, "/usr/sbin/" + name, "/usr/local/bin/" + name} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	require.Empty(tb, os.Getenv("CI"), "%s is not installed (CI requires it: run make test, which installs it)", name)
	tb.Skipf("%s is not installed", name)
	return ""
}

// freePort asks the kernel for a free loopback TCP port.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err, "no free port")
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testServer is a server process the harness started.
type testServer struct {
	Addr string // host:port, or socket path for unix servers
	stop sync.Once
	proc *os.Process
	done chan struct{} // closed when the process has exited
}

// Stop kills the server and waits until it has exited. Idempotent.
func (s *testServer) Stop() {
	s.stop.Do(func() { _ = s.proc.Kill() })
	<-s.done
}

// startMemcached runs memcached on a free loopback port with extra flags
// and stops it when tb ends.
func startMemcached(tb testing.TB, extra ...string) *testServer {
	tb.Helper()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		s, err := startMemcachedOn(tb, freePort(tb), extra...)
		if err == nil {
			return s
		}
		lastErr = err
	}
	require.Fail(tb, "memcached did not start", "%v", lastErr)
	return nil
}

// startMemcachedOn runs memcached on the given loopback port.
func startMemcachedOn(tb testing.TB, port int, extra ...string) (*testServer, error) {
	tb.Helper()
	bin := requireBinary(tb, "memcached")
	args := append([]string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "0", "-t", "2"}, extra...)
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	return startProcess(tb, bin, args, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil)
}

// startMemcachedUnix runs memcached on a unix socket in a temp dir.
func startMemcachedUnix(tb testing.TB, extra ...string) *testServer {
	tb.Helper()
	bin := requireBinary(tb, "memcached")
	path := filepath.Join(tb.TempDir(), "mc.sock")
	args := append([]string{"-s", path, "-t", "2"}, extra...)
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	s, err := startProcess(tb, bin, args, "unix", path, nil)
	require.NoError(tb, err, "memcached (unix) did not start")
	return s
}

// startProcess starts bin and waits until network/addr accepts a
// connection; it registers a cleanup that stops the process.
func startProcess(tb testing.TB, bin string, args []string, network, addr string, env []string) (*testServer, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &testServer{Addr: addr, proc: cmd.Process, done: make(chan struct{})}
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return nil, fmt.Errorf("%s exited: %v: %s", filepath.Base(bin), waitErr, out.String())
		default:
		}
		if c, err := net.DialTimeout(network, addr, 200*time.Millisecond); err == nil {
			c.Close()
			tb.Cleanup(s.Stop)
			return s, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	return nil, fmt.Errorf("%s did not accept connections on %s: %s", filepath.Base(bin), addr, out.String())
}

// lockedBuffer collects a process's output for error messages.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) < 64<<10 {
		b.buf = append(b.buf, p...)
	}
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
