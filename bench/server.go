package bench

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// StartMemcached runs a throwaway memcached on a free loopback port and
// returns its address and a stop function.
func StartMemcached(extra ...string) (addr string, stop func(), err error) {
	bin, err := exec.LookPath("memcached")
	if err != nil {
		return "", nil, fmt.Errorf("memcached not installed (make bench installs it): %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := append([]string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "0", "-m", "1024"}, extra...)
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("memcached did not start on %s", addr)
}
