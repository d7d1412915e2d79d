package ermc

import "context"

// Tracer observes every operation (Options.Tracer; nil: none). Its methods
// run on the caller's goroutine and must not block. With a Tracer that
// does nothing, operations still allocate nothing.
//
// One public call is one operation, named after the memcached command it
// sends: "get", "gets", "gat", "get_multi", "set", "add", "replace",
// "append", "prepend", "cas", "incr", "decr", "delete", "touch",
// "flush_all", "stats", "version". A multi-get is one operation, whatever
// its number of keys. The typed helpers are the operation they send:
// SetInt and SetObject are a "set", GetInt and GetObject a "get" (their
// decoding error, if any, is the error OpEnd sees); the *Noreply calls
// are their command; CAS is a "cas" when it sends a remembered id and a
// "set" otherwise; GetMultiMap is its "get_multi". Fetch is one "fetch",
// whatever it sends and however long its load takes; Invalidate is a
// "delete".
type Tracer interface {
	// OpStart is called before anything is checked or sent. The context
	// it returns goes to OpEnd; the operation itself runs with the
	// caller's.
	OpStart(ctx context.Context, op OpInfo) context.Context
	// OpEnd is called once the operation is over, with exactly the error
	// its caller gets: nil, ErrCacheMiss, ... (under ErrorAsMiss, a fault
	// as the miss or not-stored it reads as).
	OpEnd(ctx context.Context, op OpInfo, err error)
}

// OpInfo describes one operation to a Tracer.
type OpInfo struct {
	Name     string // "get", "gets", "get_multi", "set", ... (lower case, memcached's names)
	Key      string // the key, or the first key of a multi-key operation
	Keys     int    // number of keys
	Protocol Protocol
	Addr     string // the server address given to New
}

// traced is one operation under way for the Tracer, carried by value on
// the caller's stack: what OpEnd needs.
type traced struct {
	t    Tracer
	ctx  context.Context
	info OpInfo
}

// trace starts tracing an operation; with no Tracer it does nothing (and
// is inlined: a nil check). Adding an operation is one trace call and one
// end, with its name.
func (c *Client) trace(ctx context.Context, name, key string, keys int) traced {
	if c.opts.Tracer == nil {
		return traced{}
	}
	return c.startTrace(ctx, name, key, keys)
}

func (c *Client) startTrace(ctx context.Context, name, key string, keys int) traced {
	info := OpInfo{Name: name, Key: key, Keys: keys, Protocol: c.opts.Protocol, Addr: c.addr}
	return traced{t: c.opts.Tracer, ctx: c.opts.Tracer.OpStart(ctx, info), info: info}
}

// end reports err, the operation's outcome as its caller gets it, and
// returns it.
func (op *traced) end(err error) error {
	if op.t != nil {
		op.t.OpEnd(op.ctx, op.info, err)
	}
	return err
}

// firstKey is what OpInfo.Key holds for a multi-key operation.
func firstKey(keys []string) string {
	if len(keys) == 0 {
		return ""
	}
	return keys[0]
}
