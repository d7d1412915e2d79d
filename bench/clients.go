// Package bench compares ermc's drivers with github.com/bradfitz/gomemcache
// on the same memcached. It is its own module so that gomemcache never
// enters the library's go.mod.
package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/ermc-go/ermc"
	"github.com/pierrec/lz4/v4"
)

// Client is one configured memcache client under test. A workload runs on
// one Worker per goroutine, so the adapters keep per-goroutine scratch
// (buffers, counters) there and allocate nothing the library does not.
type Client interface {
	NewWorker() Worker
	Close()
}

// Worker is the part of a client's API the workloads use, bound to one
// goroutine. Slices it returns are valid until its next call.
type Worker interface {
	Get(key string) ([]byte, error)
	Set(key string, value []byte) error
	GetMulti(keys []string) (hits int, err error)
	SetInt(key string, n int64) error
	GetInt(key string) (int64, error)
	SetObject(key string, v any) error
	GetObject(key string, v any) error
}

// Config is what a Maker needs to build a client.
type Config struct {
	Addr string
	// CompressThreshold: 0 never compresses; else values longer than it
	// are lz4-compressed (python-lz4 block format), kept only if smaller.
	CompressThreshold int
	// DialContext replaces the TCP dialer (the in-memory transport).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Conns overrides the constant Conns when positive.
	Conns int
}

func (cfg Config) conns() int {
	if cfg.Conns > 0 {
		return cfg.Conns
	}
	return Conns
}

// Maker builds a fresh client.
type Maker struct {
	Name string
	New  func(cfg Config) (Client, error)
}

// Timeout is the I/O timeout every client is configured with.
const Timeout = 3 * time.Second

// Makers lists the clients under comparison: gomemcache first, as the
// baseline every ratio is taken against.
func Makers() []Maker {
	return []Maker{
		{"gomemcache", newGomemcache},
		{"ermc-text", ermcMaker(ermc.Text)},
		{"ermc-binary", ermcMaker(ermc.Binary)},
		{"ermc-ultra", ermcMaker(ermc.Ultra)},
		{"ermc-meta", ermcMaker(ermc.Meta)},
	}
}

// MakerByName returns the maker called name: one of Makers, the
// Tracer's (tracer.go) or the harness alone (harnessclient.go). "name@n" is that client with n connections
// instead of Conns (for comparisons by hand, e.g. ermc-text@8).
func MakerByName(name string) (Maker, bool) {
	base, conns, ok := strings.Cut(name, "@")
	n := 0
	if ok {
		var err error
		if n, err = strconv.Atoi(conns); err != nil || n <= 0 {
			return Maker{}, false
		}
	}
	for _, m := range append(Makers(), tracerMaker, harnessMaker) {
		if m.Name != base {
			continue
		}
		if n > 0 {
			mk := m.New
			m.Name, m.New = name, func(cfg Config) (Client, error) { cfg.Conns = n; return mk(cfg) }
		}
		return m, true
	}
	return Maker{}, false
}

// Conns is the connections each pooled client may keep: gomemcache's
// MaxIdleConns and ermc's MaxConns.
const Conns = 64

// ---- ermc ----

var bg = context.Background()

type ermcClient struct{ c *ermc.Client }

func ermcMaker(p ermc.Protocol) func(Config) (Client, error) {
	return func(cfg Config) (Client, error) {
		c, err := ermc.New(cfg.Addr, ermc.Options{
			Protocol: p,
			// As many connections as gomemcache keeps idle, so the pooled
			// drivers are compared at equal footing (Ultra and Meta share
			// one connection whatever this says).
			MaxConns:          cfg.conns(),
			Timeout:           Timeout,
			ConnectTimeout:    Timeout,
			CompressThreshold: cfg.CompressThreshold,
			DialContext:       cfg.DialContext,
		})
		if err != nil {
			return nil, err
		}
		return ermcClient{c}, nil
	}
}

func (e ermcClient) Close() { _ = e.c.Close() }

func (e ermcClient) NewWorker() Worker {
	w := &ermcWorker{c: e.c, buf: make([]byte, 0, 256)}
	w.onHit = w.countHit // one method value per worker, not one closure per call
	return w
}

type ermcWorker struct {
	c     *ermc.Client
	buf   []byte // Get's dst, reused; keeps whatever capacity Get grew it to
	hits  int
	onHit func(int, []byte)
}

func (w *ermcWorker) countHit(int, []byte) { w.hits++ }

func (w *ermcWorker) Get(key string) ([]byte, error) {
	v, err := w.c.Get(bg, key, w.buf[:0])
	if err != nil {
		return nil, err
	}
	w.buf = v[:0]
	return v, nil
}

func (w *ermcWorker) Set(key string, value []byte) error { return w.c.Set(bg, key, value, 0) }

func (w *ermcWorker) GetMulti(keys []string) (int, error) {
	w.hits = 0
	err := w.c.GetMulti(bg, keys, w.onHit)
	return w.hits, err
}

func (w *ermcWorker) SetInt(key string, n int64) error { return w.c.SetInt(bg, key, n, 0) }

func (w *ermcWorker) GetInt(key string) (int64, error) { return w.c.GetInt(bg, key) }

func (w *ermcWorker) SetObject(key string, v any) error { return w.c.SetObject(bg, key, v, 0) }

func (w *ermcWorker) GetObject(key string, v any) error { return w.c.GetObject(bg, key, v) }

// ---- gomemcache ----

// Flag bits shared with ermc and python-memcached, so both clients store
// the same bytes.
const (
	flagEncoded    = 1
	flagInteger    = 2
	flagCompressed = 8
)

type gomemcacheClient struct {
	c         *memcache.Client
	threshold int
}

func newGomemcache(cfg Config) (Client, error) {
	c := memcache.New(cfg.Addr)
	// Its best configuration for many goroutines: enough idle connections
	// that it does not redial under load, and the same timeout as ermc.
	c.MaxIdleConns = cfg.conns()
	c.Timeout = Timeout
	c.DialContext = cfg.DialContext
	return gomemcacheClient{c, cfg.CompressThreshold}, nil
}

func (g gomemcacheClient) Close() { _ = g.c.Close() }

func (g gomemcacheClient) NewWorker() Worker {
	return &gomemcacheWorker{c: g.c, threshold: g.threshold}
}

// gomemcacheWorker gives gomemcache what ermc has built in, done the way a
// careful user would: lz4 in python-lz4 block format above the threshold
// (with a reused compressor and buffers), flag bits for typed values.
type gomemcacheWorker struct {
	c         *memcache.Client
	threshold int
	item      memcache.Item // reused: gomemcache does not keep it
	zbuf      []byte        // compressed value on Set
	dbuf      []byte        // decompressed value on Get
	num       [24]byte
	lz        lz4.Compressor
}

func (w *gomemcacheWorker) set(key string, value []byte, flags uint32) error {
	if w.threshold > 0 && len(value) > w.threshold {
		if packed, ok := w.compress(value); ok {
			value, flags = packed, flags|flagCompressed
		}
	}
	w.item = memcache.Item{Key: key, Value: value, Flags: flags}
	err := w.c.Set(&w.item)
	w.item.Value = nil
	return err
}

// compress writes value in python-lz4 block format (4-byte little-endian
// original length, then one raw LZ4 block) into zbuf; ok is false when
// that is not smaller than value (then the value is stored raw, as ermc does).
func (w *gomemcacheWorker) compress(value []byte) ([]byte, bool) {
	need := 4 + lz4.CompressBlockBound(len(value))
	if cap(w.zbuf) < need {
		w.zbuf = make([]byte, need)
	}
	buf := w.zbuf[:need]
	binary.LittleEndian.PutUint32(buf, uint32(len(value)))
	n, err := w.lz.CompressBlock(value, buf[4:])
	if err != nil || n == 0 || 4+n >= len(value) {
		return nil, false
	}
	return buf[:4+n], true
}

func (w *gomemcacheWorker) get(key string) ([]byte, uint32, error) {
	it, err := w.c.Get(key)
	if err != nil {
		return nil, 0, err
	}
	if it.Flags&flagCompressed == 0 {
		return it.Value, it.Flags, nil
	}
	if len(it.Value) < 4 {
		return nil, 0, errors.New("compressed value without length prefix")
	}
	size := int(binary.LittleEndian.Uint32(it.Value))
	if size > 1_000_000 {
		return nil, 0, fmt.Errorf("compressed value declares %d bytes", size)
	}
	if cap(w.dbuf) < size {
		w.dbuf = make([]byte, size)
	}
	n, err := lz4.UncompressBlock(it.Value[4:], w.dbuf[:size])
	if err != nil || n != size {
		return nil, 0, fmt.Errorf("lz4 block does not decode to %d bytes: %v", size, err)
	}
	return w.dbuf[:size], it.Flags, nil
}

func (w *gomemcacheWorker) Get(key string) ([]byte, error) {
	v, _, err := w.get(key)
	return v, err
}

func (w *gomemcacheWorker) Set(key string, value []byte) error { return w.set(key, value, 0) }

func (w *gomemcacheWorker) GetMulti(keys []string) (int, error) {
	m, err := w.c.GetMulti(keys)
	return len(m), err
}

func (w *gomemcacheWorker) SetInt(key string, n int64) error {
	return w.set(key, appendInt(w.num[:0], n), flagInteger)
}

func (w *gomemcacheWorker) GetInt(key string) (int64, error) {
	v, _, err := w.get(key)
	if err != nil {
		return 0, err
	}
	return parseInt(v)
}

func (w *gomemcacheWorker) SetObject(key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.set(key, data, flagEncoded)
}

func (w *gomemcacheWorker) GetObject(key string, v any) error {
	data, flags, err := w.get(key)
	if err != nil {
		return err
	}
	if flags&flagEncoded == 0 {
		return fmt.Errorf("%s: not an encoded object (flags %d)", key, flags)
	}
	return json.Unmarshal(data, v)
}

// appendInt and parseInt are the decimal conversions for the gomemcache
// side, written so that they never allocate (strconv.ParseInt(string(b))
// would, for the string), keeping the adapter's own cost out of the numbers.
func appendInt(dst []byte, n int64) []byte {
	var tmp [20]byte
	i := len(tmp)
	u := uint64(n)
	if n < 0 {
		u = uint64(-n)
	}
	for {
		i--
		tmp[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	if n < 0 {
		dst = append(dst, '-')
	}
	return append(dst, tmp[i:]...)
}

var errNotInteger = errors.New("value is not an integer")

func parseInt(b []byte) (int64, error) {
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	u, ok := atou(b)
	if !ok || u > 1<<63-1 {
		return 0, errNotInteger
	}
	if neg {
		return -int64(u), nil
	}
	return int64(u), nil
}
