package ermc

import (
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
