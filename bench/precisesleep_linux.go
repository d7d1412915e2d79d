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

// hwTimer is a timerfd: arm sets when it fires, wait blocks until it has.
type hwTimer struct {
	f   *os.File // non-blocking, so reads park on the runtime's poller
	buf [8]byte  // the expiry count a read returns
}

func newHWTimer() (*hwTimer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("timerfd_create", err)
	}
	return &hwTimer{f: os.NewFile(uintptr(fd), "timerfd")}, nil
}

// arm makes the timer fire in d (> 0), replacing any earlier setting.
func (t *hwTimer) arm(d time.Duration) error {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(max(d, 1)))}
	return os.NewSyscallError("timerfd_settime", unix.TimerfdSettime(int(t.f.Fd()), 0, &spec, nil))
}

// wait returns when the timer has fired, or an error once it is closed.
func (t *hwTimer) wait() error {
	_, err := t.f.Read(t.buf[:])
	return err
}

func (t *hwTimer) close() { t.f.Close() }
