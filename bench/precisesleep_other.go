//go:build !linux

package bench

import (
	"errors"
	"time"
)

// hwTimer falls back on a Go timer where there is no timerfd.
type hwTimer struct {
	t    *time.Timer
	done chan struct{}
}

func newHWTimer() (*hwTimer, error) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &hwTimer{t: t, done: make(chan struct{})}, nil
}

func (t *hwTimer) arm(d time.Duration) error { t.t.Reset(d); return nil }

func (t *hwTimer) wait() error {
	select {
	case <-t.t.C:
		return nil
	case <-t.done:
		return errors.New("timer closed")
	}
}

func (t *hwTimer) close() { t.t.Stop(); close(t.done) }
