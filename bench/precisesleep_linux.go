package bench

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Go's timers wake a process whose threads are all idle on a 1 ms grid
// (the runtime's poller waits in whole milliseconds), and the kernel
// adds up to 50 µs of timer slack: at a low offered rate the process
// idles between requests, so a worker sleeping with time.Sleep sends
// its request up to a millisecond late, the same lag for every client
// and as large as their differences. A timerfd wakes the poller when it
// fires, to the microsecond, and the goroutine waiting on it holds no
// thread and no P meanwhile (a thread asleep in nanosleep would hold a
// P until the runtime's monitor takes it back, milliseconds later on an
// idle process).

// sleeper is one worker's timerfd.
type sleeper struct {
	f   *os.File // non-blocking, so reads park on the runtime's poller
	buf [8]byte  // the expiry count a read returns
}

func newSleeper() (*sleeper, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("timerfd_create", err)
	}
	return &sleeper{f: os.NewFile(uintptr(fd), "timerfd")}, nil
}

// sleep waits d (> 0), or returns at once if the timer cannot be used;
// the caller checks the clock again.
func (s *sleeper) sleep(d time.Duration) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(int(s.f.Fd()), 0, &spec, nil); err != nil {
		time.Sleep(d)
		return
	}
	_, _ = s.f.Read(s.buf[:])
}

func (s *sleeper) close() { s.f.Close() }
