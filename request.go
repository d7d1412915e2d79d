package ermc

import (
	"sync"
	"time"
)

// opcode names one client operation, independent of the wire protocol.
type opcode uint8

const (
	opGet opcode = iota
	opGets
	opGat
	opGetMulti
	opGetBatch // Ultra: plain gets of several callers sent as one "get k1 k2 ..."
	opSet
	opAdd
	opReplace
	opAppend
	opPrepend
	opCAS
	opIncr
	opDecr
	opDelete
	opTouch
	opFlushAll
	opStats
	opVersion
	opAuth
	opFence // Ultra: "version", answered after every earlier reply
)

// isStorage reports whether op sends a data block.
func (op opcode) isStorage() bool { return op >= opSet && op <= opCAS }

// isSingleGet reports whether op reads one key's value into dst.
func (op opcode) isSingleGet() bool { return op == opGet || op == opGets || op == opGat }

// isRetrieval reports whether op answers with VALUE blocks.
func (op opcode) isRetrieval() bool { return op <= opGetBatch }

// request is one operation in flight: what to send, where results go, and
// the parser's progress through the reply. Requests come from a sync.Pool,
// so a steady state operation allocates nothing.
type request struct {
	op      opcode
	noreply bool
	key     string
	keys    []string   // opGetMulti
	members []*request // opGetBatch: the gets it carries, in key order
	value   []byte     // storage data, as it goes on the wire
	flags   uint32
	exptime int64 // memcached exptime, see exptime()
	cas     uint64
	delta   uint64
	user    string // opAuth
	pass    string // opAuth
	opaque  uint32 // token a pipelined codec sends and checks in the reply (a multi-get uses opaque+i for key i)

	meta metaFields // meta protocol flags sent and returned (metaparse.go)

	// Results.
	found    bool
	dst      []byte // single get: the value is appended here (decompressed)
	resFlags uint32
	resCAS   uint64
	number   uint64
	text     string                // version
	stats    map[string]string     // stats
	onValue  func(i int, v []byte) // multi-get callback
	decoded  []byte                // multi-get scratch for decompression
	maxValue int                   // MaxValueLength, for decompression bounds
	err      error

	// Pipelining (Ultra driver).
	deferValues bool          // collect multi-get values for replayValues instead of calling onValue
	collected   []byte        // the collected values
	wake        chan struct{} // completion signal, made once per pooled request
	where       uint8         // at the caller, queued, in flight, being parsed (lane.mu)
	sink        bool          // stands in for an abandoned request; recycled by the lane
	selfRead    bool          // its caller reads its reply (lane.direct): no wake-up
	fault       error         // transport fault that ended the request
	sentAt      time.Time     // when it was written: its reply is due by sentAt+Timeout
	wireLen     int           // encoded size, for the in-flight byte bound
	staleIdle   bool          // failed on a connection that went stale while idle, before its reply started

	// Parser progress, reset per request.
	parse parseState
}

// parseState is the resumable parsers' position inside one reply.
type parseState struct {
	phase   uint8
	index   int    // which key of keys the current value belongs to
	cursor  int    // where the next multi-get key search starts
	values  int    // multi-get values seen so far: at most one per key asked
	vflags  uint32 // flags of the value being read
	vcas    uint64 // CAS id of the value being read
	vlen    int    // length of the value being read
	scratch []byte // an element that spans reads, when it cannot go to dst
	// want is where the rest of the element being read goes: the unread
	// part of dst (a single value, as stored) or of scratch. The parser
	// copies buffered bytes into it; a reader may instead fill it straight
	// from the socket (netConn.readFor), sparing the copy.
	want    []byte
	intoDst bool // the value being read goes straight into dst
}

// take copies what it can of buf into want, and reports whether want is
// now full.
func (p *parseState) take(buf []byte) (used int, complete bool) {
	used = copy(p.want, buf)
	p.want = p.want[used:]
	return used, len(p.want) == 0
}

// reset clears a request for reuse, keeping the scratch capacity.
func (r *request) reset() {
	scratch, decoded, collected, wake := r.parse.scratch[:0], r.decoded[:0], r.collected[:0], r.wake
	clear(r.members)
	members := r.members[:0]
	*r = request{}
	r.parse.scratch, r.decoded, r.collected, r.wake, r.members = scratch, decoded, collected, wake, members
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

func getRequest() *request { return requestPool.Get().(*request) }

// putRequest returns r to the pool, dropping references to caller memory
// and any scratch buffer that grew past what is worth keeping.
func putRequest(r *request) {
	r.reset()
	if cap(r.parse.scratch) > maxRetainedScratch {
		r.parse.scratch = nil
	}
	if cap(r.decoded) > maxRetainedScratch {
		r.decoded = nil
	}
	if cap(r.collected) > maxRetainedScratch {
		r.collected = nil
	}
	requestPool.Put(r)
}

// maxRetainedScratch is the largest scratch buffer a pooled object keeps.
const maxRetainedScratch = 256 << 10

// maxRelativeTTL is the longest exptime memcached reads as relative seconds;
// larger values are absolute Unix times.
const maxRelativeTTL = 30 * 24 * time.Hour

// exptime converts a TTL into memcached's exptime: 0 never expires, a
// negative TTL stores an already expired item, sub-second TTLs round up to
// one second, and TTLs over 30 days become absolute Unix times.
func exptime(ttl time.Duration) int64 {
	switch {
	case ttl == 0:
		return 0
	case ttl < 0:
		return -1
	}
	secs := int64(ttl / time.Second)
	if ttl%time.Second != 0 {
		secs++
	}
	if ttl > maxRelativeTTL {
		return time.Now().Unix() + secs
	}
	return secs
}

// validKey reports whether key may be sent: 1..max bytes, no spaces or
// control characters (the text protocol's delimiters). The same rule holds
// for the binary protocol so that keys mean the same on every driver.
func validKey(key string, max int) bool {
	return len(key) > 0 && len(key) <= max && textSafeKey(key)
}

// textSafeKey reports whether key holds none of the bytes the text
// protocol cannot carry in a key: spaces, control characters and DEL.
func textSafeKey(key string) bool {
	for i := 0; i < len(key); i++ {
		if c := key[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// maxStats bounds the entries of a stats reply. memcached sends about a
// hundred; a server streaming distinct names must not grow the map until
// the request deadline.
const maxStats = 4096

// addStat records one stats entry.
func (r *request) addStat(name, value []byte) error {
	if r.stats == nil {
		r.stats = make(map[string]string)
	}
	if len(r.stats) == maxStats {
		return protocolError("stats reply with too many entries", name)
	}
	r.stats[string(name)] = string(value)
	return nil
}
