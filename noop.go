package ermc

import "context"

// noopDriver answers without a server: every read misses, every write
// succeeds. For tests, and as a kill switch that keeps callers running.
type noopDriver struct{}

func (noopDriver) do(_ context.Context, r *request) error {
	switch r.op {
	case opGet, opGets, opGat, opIncr, opDecr, opDelete, opTouch:
		r.err = ErrCacheMiss
	case opVersion:
		r.text = "noop"
	}
	return nil
}

func (noopDriver) connect(context.Context) error { return nil }
func (noopDriver) close() error                  { return nil }
func (noopDriver) conns() (open, idle int)       { return 0, 0 }
