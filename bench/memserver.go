package bench

import (
	"bytes"
	"strconv"
	"sync"
)

// MemStore is a tiny in-memory memcached for the in-memory transport: the
// text protocol subset the clients under test send (get, gets, gat, set,
// add, replace, append, prepend, cas, delete, incr, decr, touch, mn,
// version, flush_all). It keeps each item's VALUE lines precomputed, and
// rewrites items in place, so that answering allocates nothing in steady
// state: allocations the runner measures stay the client's own.
type MemStore struct {
	mu    sync.RWMutex
	items map[string]*memItem
	cas   uint64
}

type memItem struct {
	flags uint32
	cas   uint64
	data  []byte
	// The VALUE lines get and gets answer with, CRLF included; the data
	// and its CRLF follow them.
	hget, hgets []byte
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{items: make(map[string]*memItem)} }

func (it *memItem) render(key []byte) {
	hdr := func(dst []byte, cas bool) []byte {
		dst = append(dst, "VALUE "...)
		dst = append(dst, key...)
		dst = append(dst, ' ')
		dst = strconv.AppendUint(dst, uint64(it.flags), 10)
		dst = append(dst, ' ')
		dst = strconv.AppendInt(dst, int64(len(it.data)), 10)
		if cas {
			dst = append(dst, ' ')
			dst = strconv.AppendUint(dst, it.cas, 10)
		}
		return append(dst, "\r\n"...)
	}
	it.hget = hdr(it.hget[:0], false)
	it.hgets = hdr(it.hgets[:0], true)
}

// appendValue appends the item's VALUE block to out.
func (it *memItem) appendValue(out []byte, withCAS bool) []byte {
	if withCAS {
		out = append(out, it.hgets...)
	} else {
		out = append(out, it.hget...)
	}
	out = append(out, it.data...)
	return append(out, "\r\n"...)
}

// responder parses requests for one connection and appends the replies.
type responder struct {
	s  *MemStore
	in []byte // bytes received and not yet a complete command
}

// feed takes received bytes and appends the replies to every command they
// complete to out.
func (r *responder) feed(p []byte, out []byte) []byte {
	r.in = append(r.in, p...)
	pos := 0
	for {
		n, reply := r.s.exec(r.in[pos:], out)
		if n == 0 {
			break
		}
		out = reply
		pos += n
	}
	switch {
	case pos == len(r.in):
		r.in = r.in[:0]
	case pos > 0:
		r.in = r.in[:copy(r.in, r.in[pos:])]
	}
	return out
}

var (
	rEnd       = []byte("END\r\n")
	rStored    = []byte("STORED\r\n")
	rNotStored = []byte("NOT_STORED\r\n")
	rExists    = []byte("EXISTS\r\n")
	rNotFound  = []byte("NOT_FOUND\r\n")
	rDeleted   = []byte("DELETED\r\n")
	rTouched   = []byte("TOUCHED\r\n")
	rOK        = []byte("OK\r\n")
	rMN        = []byte("MN\r\n")
	rError     = []byte("ERROR\r\n")
	rVersion   = []byte("VERSION 1.6.0-ermcbench-mem\r\n")
	rBadChunk  = []byte("CLIENT_ERROR bad data chunk\r\n")
	rNonNum    = []byte("CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
	sNoreply   = []byte("noreply")
)

// nextField returns the first space-separated field of b and the rest.
func nextField(b []byte) (field, rest []byte) {
	for len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return b, nil
	}
	return b[:i], b[i:]
}

func atou(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// exec runs the first command in in, if it is complete, appending its
// reply to out. n is the number of bytes it consumed: 0 when the command
// is not complete yet.
func (s *MemStore) exec(in []byte, out []byte) (n int, reply []byte) {
	eol := bytes.IndexByte(in, '\n')
	if eol < 0 {
		return 0, out
	}
	line := in[:eol]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	n = eol + 1
	cmd, args := nextField(line)
	switch string(cmd) {
	case "get", "gets":
		return n, s.retrieve(out, args, string(cmd) == "gets")
	case "gat", "gats":
		_, args = nextField(args) // exptime: the store keeps no TTLs
		return n, s.retrieve(out, args, string(cmd) == "gats")
	case "set", "add", "replace", "append", "prepend", "cas":
		key, rest := nextField(args)
		f, rest := nextField(rest)
		_, rest = nextField(rest) // exptime
		sz, rest := nextField(rest)
		flags, ok1 := atou(f)
		size, ok2 := atou(sz)
		var casID uint64
		if string(cmd) == "cas" {
			var c []byte
			c, rest = nextField(rest)
			casID, _ = atou(c)
		}
		nr, _ := nextField(rest)
		noreply := bytes.Equal(nr, sNoreply)
		if !ok1 || !ok2 || len(key) == 0 {
			return n, append(out, rError...)
		}
		end := n + int(size) + 2
		if len(in) < end {
			return 0, out // data block not all here yet
		}
		data := in[n : n+int(size)]
		if in[end-2] != '\r' || in[end-1] != '\n' {
			return end, append(out, rBadChunk...)
		}
		res := s.store(storeOp(cmd), key, data, uint32(flags), casID)
		if noreply {
			return end, out
		}
		return end, append(out, res...)
	case "delete":
		key, rest := nextField(args)
		nr, _ := nextField(rest)
		s.mu.Lock()
		_, ok := s.items[string(key)]
		delete(s.items, string(key))
		s.mu.Unlock()
		if bytes.Equal(nr, sNoreply) {
			return n, out
		}
		if ok {
			return n, append(out, rDeleted...)
		}
		return n, append(out, rNotFound...)
	case "incr", "decr":
		key, rest := nextField(args)
		d, rest := nextField(rest)
		nr, _ := nextField(rest)
		delta, ok := atou(d)
		if !ok {
			return n, append(out, rError...)
		}
		res := s.arith(out, key, delta, string(cmd) == "incr")
		if bytes.Equal(nr, sNoreply) {
			return n, out
		}
		return n, res
	case "touch":
		key, rest := nextField(args)
		_, rest = nextField(rest)
		nr, _ := nextField(rest)
		s.mu.RLock()
		_, ok := s.items[string(key)]
		s.mu.RUnlock()
		if bytes.Equal(nr, sNoreply) {
			return n, out
		}
		if ok {
			return n, append(out, rTouched...)
		}
		return n, append(out, rNotFound...)
	case "mn":
		return n, append(out, rMN...)
	case "version":
		return n, append(out, rVersion...)
	case "flush_all":
		s.mu.Lock()
		clear(s.items)
		s.mu.Unlock()
		return n, append(out, rOK...)
	}
	return n, append(out, rError...)
}

func (s *MemStore) retrieve(out, keys []byte, withCAS bool) []byte {
	s.mu.RLock()
	for {
		var key []byte
		key, keys = nextField(keys)
		if len(key) == 0 {
			break
		}
		if it, ok := s.items[string(key)]; ok {
			out = it.appendValue(out, withCAS)
		}
	}
	s.mu.RUnlock()
	return append(out, rEnd...)
}

type storeKind uint8

const (
	kSet storeKind = iota
	kAdd
	kReplace
	kAppend
	kPrepend
	kCAS
)

func storeOp(cmd []byte) storeKind {
	switch string(cmd) {
	case "add":
		return kAdd
	case "replace":
		return kReplace
	case "append":
		return kAppend
	case "prepend":
		return kPrepend
	case "cas":
		return kCAS
	}
	return kSet
}

// store applies a storage command and returns its reply.
func (s *MemStore) store(cmd storeKind, key, data []byte, flags uint32, casID uint64) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[string(key)]
	switch cmd {
	case kAdd:
		if ok {
			return rNotStored
		}
	case kReplace, kAppend, kPrepend:
		if !ok {
			return rNotStored
		}
	case kCAS:
		if !ok {
			return rNotFound
		}
		if it.cas != casID {
			return rExists
		}
	}
	if !ok {
		it = &memItem{}
		s.items[string(key)] = it
	}
	switch cmd {
	case kAppend:
		it.data = append(it.data, data...)
	case kPrepend:
		it.data = append(it.data, data...)
		copy(it.data[len(data):], it.data[:len(it.data)-len(data)])
		copy(it.data, data)
	default:
		it.data = append(it.data[:0], data...)
		it.flags = flags
	}
	s.cas++
	it.cas = s.cas
	it.render(key)
	return rStored
}

func (s *MemStore) arith(out, key []byte, delta uint64, incr bool) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.items[string(key)]
	if !ok {
		return append(out, rNotFound...)
	}
	v, ok := atou(bytes.TrimRight(it.data, " "))
	if !ok {
		return append(out, rNonNum...)
	}
	switch {
	case incr:
		v += delta
	case delta > v:
		v = 0
	default:
		v -= delta
	}
	it.data = strconv.AppendUint(it.data[:0], v, 10)
	s.cas++
	it.cas = s.cas
	it.render(key)
	out = append(out, it.data...)
	return append(out, "\r\n"...)
}
