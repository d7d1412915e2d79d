package ermc

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// PoolStats is a snapshot of the client's connections and their faults
// since New.
type PoolStats struct {
	Open, Idle        int           // connections now
	Dials, DialErrors uint64        // attempts, and those that failed
	Discarded         uint64        // connections closed because of a fault, timeout or cancellation
	Timeouts          uint64        // operations that ended in a timeout
	Retries           uint64        // idempotent reads sent again on a fresh connection
	Waits             uint64        // operations that waited for a connection (pooled drivers)
	WaitTime          time.Duration // total time spent waiting for one
}

// PoolStats returns the client's connection counts now and its counters
// since New. Dials counts attempts to open a connection (TCP or unix
// connect, TLS handshake, authentication), DialErrors those that failed; a
// request refused at once while dialing backs off is neither. Timeouts
// counts operations that returned a timeout: the Timeout option's or the
// context's deadline. On Ultra, requests share connections and never wait
// for one, so Waits stays 0; Noop reports zeros.
func (c *Client) PoolStats() PoolStats {
	open, idle := c.drv.conns()
	s := &c.stats
	return PoolStats{
		Open: open, Idle: idle,
		Dials: s.dials.Load(), DialErrors: s.dialErrors.Load(),
		Discarded: s.discarded.Load(),
		Timeouts:  s.timeouts.Load(),
		Retries:   s.retries.Load(),
		Waits:     s.waits.Load(), WaitTime: time.Duration(s.waitNanos.Load()),
	}
}

// poolCounters are the cumulative PoolStats counters, shared by a client's
// dialer and driver. Atomic: they are bumped on the request path.
type poolCounters struct {
	dials, dialErrors atomic.Uint64
	discarded         atomic.Uint64
	timeouts          atomic.Uint64
	retries           atomic.Uint64
	waits             atomic.Uint64
	waitNanos         atomic.Int64
}

// waited records an operation that waited for a connection since start.
func (s *poolCounters) waited(start time.Time) {
	s.waits.Add(1)
	s.waitNanos.Add(int64(time.Since(start)))
}

// discard counts a connection closed because of err, unless Close closed
// it.
func (s *poolCounters) discard(err error) {
	if err != ErrClosed {
		s.discarded.Add(1)
	}
}

// fault counts err, a transport fault that ends an operation, when it is a
// timeout, and returns it. A cancellation interrupts I/O with a deadline
// too: that is not a timeout; nor is a request the dial backoff failed at
// once, whatever the last dial said.
func (s *poolCounters) fault(err error) error {
	var ce *ConnError // only reached on faults: its allocation is off the hot path
	if errors.As(err, &ce) && ce.Timeout() && !errors.Is(err, context.Canceled) && !isBackoff(ce) {
		s.timeouts.Add(1)
	}
	return err
}
