// Package ermc is a memcache client for latency-sensitive services: zero
// heap allocations on the hot path, selectable wire drivers (text, binary,
// pipelined text, pipelined meta), lz4 compression, and faults that are
// reported, never swallowed.
package ermc

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// Protocol selects a driver.
type Protocol int

const (
	// Text speaks memcached's text protocol over pooled connections, one
	// request in flight per connection. The default.
	Text Protocol = iota
	// Binary speaks memcached's binary protocol over pooled connections.
	Binary
	// Ultra speaks the text protocol through a pipelined framer: requests
	// from concurrent goroutines share a few connections.
	Ultra
	// Noop talks to no server: gets miss, writes succeed.
	Noop
	// Meta speaks memcached's meta protocol (memcached 1.6.10 or later)
	// through the same pipelined framer as Ultra, with every reply matched
	// to its request by an opaque token. Keys the text protocol cannot
	// carry (spaces, control bytes) go out base64-encoded, up to 186 bytes.
	Meta
)

func (p Protocol) String() string {
	switch p {
	case Text:
		return "text"
	case Binary:
		return "binary"
	case Ultra:
		return "ultra"
	case Noop:
		return "noop"
	case Meta:
		return "meta"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// Options configures a Client. The zero value is valid: every field has a
// default.
type Options struct {
	Protocol          Protocol      // Text (default), Binary, Ultra, Noop, Meta
	ConnectTimeout    time.Duration // dial, TLS handshake and auth; default 3s
	Timeout           time.Duration // per request I/O; default 3s; negative: none
	MaxKeyLength      int           // default 250
	MaxValueLength    int           // default 1_000_000
	CompressThreshold int           // 0: never; else lz4 values longer than this, kept only if smaller
	Nagle             bool          // default false: TCP_NODELAY on
	CacheCAS          bool          // Gets remembers CAS ids; CAS uses them
	CASCacheSize      int           // ids CacheCAS keeps, oldest unused forgotten first; default 100_000; negative: no limit
	ErrorAsMiss       bool          // connectivity faults read as misses / not-stored
	MaxConns          int           // connections per client; default 8
	DialContext       func(ctx context.Context, network, addr string) (net.Conn, error)
	TLSConfig         *tls.Config
	Username          string // SASL PLAIN (binary), ASCII auth (text)
	Password          string
	// Codec encodes the values of SetObject and GetObject; default JSON.
	Codec Codec
	// Tracer observes every operation; nil: none.
	Tracer Tracer
}

// Defaults.
const (
	DefaultTimeout        = 3 * time.Second
	DefaultMaxKeyLength   = 250
	DefaultMaxValueLength = 1_000_000
	DefaultMaxConns       = 8
	DefaultCASCacheSize   = 100_000
)

func (o *Options) applyDefaults() {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultTimeout
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxKeyLength <= 0 {
		o.MaxKeyLength = DefaultMaxKeyLength
	}
	if o.MaxValueLength <= 0 {
		o.MaxValueLength = DefaultMaxValueLength
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.CASCacheSize == 0 {
		o.CASCacheSize = DefaultCASCacheSize
	}
	if o.Codec == nil {
		o.Codec = JSONCodec{}
	}
}

// driver is what a Protocol plugs in: it carries one request to the server
// and its reply back into the request.
type driver interface {
	do(ctx context.Context, r *request) error
	connect(ctx context.Context) error
	close() error
	conns() (open, idle int) // connections now (PoolStats)
}

// Client is a memcache client for one server address. It is safe for
// concurrent use by multiple goroutines.
type Client struct {
	opts Options
	addr string
	drv  driver
	// pipelined drivers can send noreply commands; the others carry one
	// request per connection, so their *Noreply calls wait for the reply.
	pipelined bool
	cas       casStore
	closed    atomic.Bool
	stats     poolCounters // PoolStats; the driver and its dialer share it
	fetches   fetchTable   // keys being loaded by Fetch
}

// New makes a client for addr ("host:port", a unix socket path, or
// "unix:path"). It does no I/O: connections open on first use or Connect.
func New(addr string, opts Options) (*Client, error) {
	opts.applyDefaults()
	c := &Client{opts: opts, addr: addr}
	c.cas.max = max(opts.CASCacheSize, 0)
	if opts.Protocol != Noop && addr == "" {
		return nil, fmt.Errorf("ermc: empty server address")
	}
	network, address := splitAddr(addr)
	switch opts.Protocol {
	case Text:
		c.drv = newConnPool(network, address, &c.opts, textCodec, &c.stats)
	case Binary:
		c.drv = newConnPool(network, address, &c.opts, binaryCodec, &c.stats)
	case Ultra:
		c.drv = newPipeDriver(network, address, &c.opts, textCodec, defaultLanes(), &c.stats)
		c.pipelined = true
	case Noop:
		c.drv = noopDriver{}
	case Meta:
		c.drv = newPipeDriver(network, address, &c.opts, metaCodec, defaultLanes(), &c.stats)
		c.pipelined = true
	default:
		return nil, fmt.Errorf("%w: protocol %v", ErrNotSupported, opts.Protocol)
	}
	return c, nil
}

// Connect opens (and authenticates) a connection now instead of on first
// use, so configuration and connectivity faults show up early. It dials
// even while requests fail at once after a failed dial (dial backoff).
func (c *Client) Connect(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	return c.drv.connect(ctx)
}

// Close makes every later call fail with ErrClosed and closes the
// client's connections: on Text and Binary idle ones at once and busy ones
// when their request is done; on Ultra all at once, failing with ErrClosed
// the requests queued but not yet written. ErrClosed always means the
// request was not sent: a request already written ends with its real
// outcome, or with a *ConnError when Close cut its reply short. Close
// returns nil; calling it again does nothing.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.drv.close()
}

// do runs r on the driver, mapping the two layers of failure into one
// error: a transport fault, else the operation's outcome.
func (c *Client) do(ctx context.Context, r *request) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		// Not sent: a driver's cancellation interrupt could lose the race
		// with a fast reply and report success for a cancelled request.
		return c.stats.fault(&ConnError{Op: "send", Addr: c.addr, Err: err})
	}
	r.maxValue = c.opts.MaxValueLength
	if err := c.drv.do(ctx, r); err != nil {
		return c.stats.fault(err)
	}
	return r.err
}

// hideFault applies ErrorAsMiss: a connectivity fault reads as the given
// outcome (ErrCacheMiss or ErrNotStored) while staying reachable by
// errors.As.
func (c *Client) hideFault(err, as error) error {
	if err != nil && c.opts.ErrorAsMiss && isConnFault(err) {
		return &faultError{as: as, fault: err}
	}
	return err
}

func (c *Client) checkKey(key string) error {
	valid := validKey
	if c.opts.Protocol == Meta {
		valid = validMetaKey
	}
	if valid(key, c.opts.MaxKeyLength) {
		return nil
	}
	return fmt.Errorf("%w: %s (%d bytes)", ErrMalformedKey, quoteBounded([]byte(key)), len(key))
}

// Get appends the value of key to dst and returns it. A miss is
// ErrCacheMiss; on any error dst is returned unchanged.
func (c *Client) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	op := c.trace(ctx, "get", key, 1)
	v, _, _, err := c.get(ctx, opGet, key, 0, dst)
	return v, op.end(err)
}

// Gets is Get that also returns the item's CAS id. With CacheCAS the id is
// remembered for CAS.
func (c *Client) Gets(ctx context.Context, key string, dst []byte) ([]byte, uint64, error) {
	op := c.trace(ctx, "gets", key, 1)
	v, _, cas, err := c.get(ctx, opGets, key, 0, dst)
	if err == nil && c.opts.CacheCAS {
		c.cas.put(key, cas)
	}
	return v, cas, op.end(err)
}

// GetAndTouch is Get that also sets the item's TTL (memcached gat).
func (c *Client) GetAndTouch(ctx context.Context, key string, ttl time.Duration, dst []byte) ([]byte, error) {
	op := c.trace(ctx, "gat", key, 1)
	v, _, _, err := c.get(ctx, opGat, key, exptime(ttl), dst)
	return v, op.end(err)
}

func (c *Client) get(ctx context.Context, op opcode, key string, exp int64, dst []byte) ([]byte, uint32, uint64, error) {
	if err := c.checkKey(key); err != nil {
		return dst, 0, 0, err
	}
	r := getRequest()
	r.op, r.key, r.exptime, r.dst = op, key, exp, dst
	err := c.do(ctx, r)
	value, flags, cas := r.dst, r.resFlags, r.resCAS
	putRequest(r)
	if err != nil {
		return dst, 0, 0, c.hideFault(err, ErrCacheMiss)
	}
	return value, flags, cas, nil
}

// GetMulti fetches keys in one round trip and calls fn for each hit with
// the index of its key in keys; misses are not reported. value is only
// valid during the call. Every key is validated before anything is sent.
func (c *Client) GetMulti(ctx context.Context, keys []string, fn func(i int, value []byte)) error {
	op := c.trace(ctx, "get_multi", firstKey(keys), len(keys))
	return op.end(c.getMulti(ctx, keys, fn))
}

func (c *Client) getMulti(ctx context.Context, keys []string, fn func(i int, value []byte)) error {
	if len(keys) == 0 {
		return nil
	}
	for _, k := range keys {
		if err := c.checkKey(k); err != nil {
			return err
		}
	}
	r := getRequest()
	r.op, r.keys, r.onValue = opGetMulti, keys, fn
	err := c.do(ctx, r)
	putRequest(r)
	return c.hideFault(err, ErrCacheMiss)
}

// GetMultiMap is GetMulti returning a map from key to a copy of its value.
func (c *Client) GetMultiMap(ctx context.Context, keys []string) (map[string][]byte, error) {
	m := make(map[string][]byte, len(keys))
	err := c.GetMulti(ctx, keys, func(i int, v []byte) {
		m[keys[i]] = append([]byte(nil), v...)
	})
	return m, err
}

// Set stores value under key.
func (c *Client) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	op := c.trace(ctx, "set", key, 1)
	return op.end(c.store(ctx, opSet, key, value, 0, ttl, 0))
}

// Add stores value only if key is absent; otherwise ErrNotStored.
func (c *Client) Add(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	op := c.trace(ctx, "add", key, 1)
	return op.end(c.store(ctx, opAdd, key, value, 0, ttl, 0))
}

// Replace stores value only if key is present; otherwise ErrNotStored.
func (c *Client) Replace(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	op := c.trace(ctx, "replace", key, 1)
	return op.end(c.store(ctx, opReplace, key, value, 0, ttl, 0))
}

// Append adds value after the existing value of key; ErrNotStored if key
// is absent. Appended bytes are never compressed.
func (c *Client) Append(ctx context.Context, key string, value []byte) error {
	op := c.trace(ctx, "append", key, 1)
	return op.end(c.store(ctx, opAppend, key, value, 0, 0, 0))
}

// Prepend adds value before the existing value of key; ErrNotStored if key
// is absent. Prepended bytes are never compressed.
func (c *Client) Prepend(ctx context.Context, key string, value []byte) error {
	op := c.trace(ctx, "prepend", key, 1)
	return op.end(c.store(ctx, opPrepend, key, value, 0, 0, 0))
}

// CompareAndSwap stores value only if the item's CAS id is still cas:
// ErrCASConflict if it changed, ErrCacheMiss if the key is gone.
func (c *Client) CompareAndSwap(ctx context.Context, key string, value []byte, cas uint64, ttl time.Duration) error {
	op := c.trace(ctx, "cas", key, 1)
	return op.end(c.store(ctx, opCAS, key, value, 0, ttl, cas))
}

// CAS is CompareAndSwap with the id that Gets remembered for key (with
// CacheCAS). The id is kept, so a second CAS with it fails with
// ErrCASConflict. With no id remembered (never read, reset, or forgotten
// beyond CASCacheSize), CAS is a plain Set.
func (c *Client) CAS(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if id, ok := c.cas.get(key); ok {
		op := c.trace(ctx, "cas", key, 1)
		return op.end(c.store(ctx, opCAS, key, value, 0, ttl, id))
	}
	op := c.trace(ctx, "set", key, 1)
	return op.end(c.store(ctx, opSet, key, value, 0, ttl, 0))
}

// ResetCAS forgets every remembered CAS id.
func (c *Client) ResetCAS() { c.cas.reset() }

// SetNoreply is fire-and-forget Set (memcached noreply, or quiet mode on
// Meta; ultramemcache's async=True). On the pipelined drivers (Ultra,
// Meta) it returns once the command is encoded for sending: a write that
// fails, or a server that refuses it, goes unreported, and a following
// Get may not see it yet. On Text and Binary, whose connections carry one
// request at a time, it is an ordinary Set. Key and size checks still
// apply before anything is queued.
func (c *Client) SetNoreply(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	op := c.trace(ctx, "set", key, 1)
	return op.end(c.storeMode(ctx, opSet, key, value, 0, ttl, 0, c.pipelined))
}

// DeleteNoreply is fire-and-forget Delete, with SetNoreply's caveats.
func (c *Client) DeleteNoreply(ctx context.Context, key string) error {
	op := c.trace(ctx, "delete", key, 1)
	return op.end(c.keyOpMode(ctx, opDelete, key, 0, c.pipelined))
}

// TouchNoreply is fire-and-forget Touch, with SetNoreply's caveats.
func (c *Client) TouchNoreply(ctx context.Context, key string, ttl time.Duration) error {
	op := c.trace(ctx, "touch", key, 1)
	return op.end(c.keyOpMode(ctx, opTouch, key, exptime(ttl), c.pipelined))
}

// store sends a storage command, compressing value above
// CompressThreshold when that makes it smaller.
func (c *Client) store(ctx context.Context, op opcode, key string, value []byte, flags uint32, ttl time.Duration, cas uint64) error {
	return c.storeMode(ctx, op, key, value, flags, ttl, cas, false)
}

func (c *Client) storeMode(ctx context.Context, op opcode, key string, value []byte, flags uint32, ttl time.Duration, cas uint64, noreply bool) error {
	if err := c.checkKey(key); err != nil {
		return err
	}
	if len(value) > c.opts.MaxValueLength {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrValueTooLarge, len(value), c.opts.MaxValueLength)
	}
	r := getRequest()
	r.op, r.key, r.value, r.flags, r.exptime, r.cas, r.noreply = op, key, value, flags, exptime(ttl), cas, noreply
	var buf *buffer // compressed copy of value, if smaller
	if t := c.opts.CompressThreshold; t > 0 && len(value) > t && op != opAppend && op != opPrepend {
		buf = getBuffer(compressedSize(len(value)))
		packed, ok := appendCompressed(buf.B[:0], value)
		buf.B = packed // keep the capacity, used or not
		if ok {
			r.value, r.flags = packed, flags|FlagCompressed
		}
	}
	err := c.do(ctx, r)
	putRequest(r)
	if buf != nil {
		putBuffer(buf)
	}
	return c.hideFault(err, ErrNotStored)
}

// Incr adds delta to the decimal number stored at key and returns the new
// value; it wraps at 2^64. ErrCacheMiss if key is absent, ErrNonNumeric if
// the value is not a number.
func (c *Client) Incr(ctx context.Context, key string, delta uint64) (uint64, error) {
	op := c.trace(ctx, "incr", key, 1)
	n, err := c.arith(ctx, opIncr, key, delta)
	return n, op.end(err)
}

// Decr subtracts delta from the number stored at key, stopping at 0.
func (c *Client) Decr(ctx context.Context, key string, delta uint64) (uint64, error) {
	op := c.trace(ctx, "decr", key, 1)
	n, err := c.arith(ctx, opDecr, key, delta)
	return n, op.end(err)
}

func (c *Client) arith(ctx context.Context, op opcode, key string, delta uint64) (uint64, error) {
	if err := c.checkKey(key); err != nil {
		return 0, err
	}
	r := getRequest()
	r.op, r.key, r.delta = op, key, delta
	err := c.do(ctx, r)
	n := r.number
	putRequest(r)
	if err != nil {
		return 0, c.hideFault(err, ErrCacheMiss)
	}
	return n, nil
}

// Delete removes key; ErrCacheMiss if it was absent.
func (c *Client) Delete(ctx context.Context, key string) error {
	op := c.trace(ctx, "delete", key, 1)
	return op.end(c.keyOp(ctx, opDelete, key, 0))
}

// Touch sets a new TTL on key; ErrCacheMiss if it is absent.
func (c *Client) Touch(ctx context.Context, key string, ttl time.Duration) error {
	op := c.trace(ctx, "touch", key, 1)
	return op.end(c.keyOp(ctx, opTouch, key, exptime(ttl)))
}

func (c *Client) keyOp(ctx context.Context, op opcode, key string, exp int64) error {
	return c.keyOpMode(ctx, op, key, exp, false)
}

func (c *Client) keyOpMode(ctx context.Context, op opcode, key string, exp int64, noreply bool) error {
	if err := c.checkKey(key); err != nil {
		return err
	}
	r := getRequest()
	r.op, r.key, r.exptime, r.noreply = op, key, exp, noreply
	err := c.do(ctx, r)
	putRequest(r)
	return c.hideFault(err, ErrCacheMiss)
}

// FlushAll invalidates every item on the server.
func (c *Client) FlushAll(ctx context.Context) error {
	op := c.trace(ctx, "flush_all", "", 0)
	r := getRequest()
	r.op = opFlushAll
	err := c.do(ctx, r)
	putRequest(r)
	return op.end(err)
}

// Stats returns the server's general statistics.
func (c *Client) Stats(ctx context.Context) (map[string]string, error) {
	op := c.trace(ctx, "stats", "", 0)
	r := getRequest()
	r.op = opStats
	err := c.do(ctx, r)
	stats := r.stats
	putRequest(r)
	if stats == nil {
		stats = map[string]string{}
	}
	return stats, op.end(err)
}

// Version returns the server's version string.
func (c *Client) Version(ctx context.Context) (string, error) {
	op := c.trace(ctx, "version", "", 0)
	r := getRequest()
	r.op = opVersion
	err := c.do(ctx, r)
	v := r.text
	putRequest(r)
	return v, op.end(err)
}
