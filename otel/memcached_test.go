package ermcotel

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// startMemcached runs memcached on a free loopback port until t ends. A
// missing binary fails the test under CI and skips it elsewhere (make test
// installs memcached).
func startMemcached(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("memcached")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("memcached is not installed")
		}
		t.Skip("memcached is not installed")
	}
	for attempt := 0; attempt < 5; attempt++ {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		args := []string{"-l", "127.0.0.1", "-p", port, "-U", "0", "-t", "1"}
		if os.Geteuid() == 0 {
			args = append(args, "-u", "root")
		}
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				nc.Close()
				t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
				return addr
			}
			select {
			case <-exited:
			default:
				continue
			}
			break // it exited (the port was taken): try another
		}
		_ = cmd.Process.Kill()
		<-exited
	}
	t.Fatal("memcached did not start")
	return ""
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
