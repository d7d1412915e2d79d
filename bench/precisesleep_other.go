//go:build !linux

package bench

import "time"

// sleeper falls back on time.Sleep where there is no timerfd.
type sleeper struct{}

func newSleeper() (*sleeper, error) { return &sleeper{}, nil }

func (*sleeper) sleep(d time.Duration) { time.Sleep(d) }

func (*sleeper) close() {}
