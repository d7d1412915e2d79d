package ermc

import (
	"bytes"
	"strconv"
)

// textCodec is the text protocol for the pooled driver.
var textCodec = codec{appendRequest: appendTextRequest, parseReply: parseTextReply, combineGets: true}

// Text protocol: request encoders and a resumable reply parser.
// Everything here is pure: bytes in, bytes or results out, no I/O.

// maxTextLine bounds a reply line. The longest legitimate line is a VALUE
// header (a 250-byte key and four numbers) or a STAT line; anything longer
// without a newline is a broken or hostile server.
const maxTextLine = 2048

var crlf = []byte("\r\n")

// storageVerb is the command name of each storage opcode.
var storageVerb = [...]string{
	opSet:     "set ",
	opAdd:     "add ",
	opReplace: "replace ",
	opAppend:  "append ",
	opPrepend: "prepend ",
	opCAS:     "cas ",
}

// appendTextRequest encodes r as a text protocol command.
func appendTextRequest(dst []byte, r *request) []byte {
	switch r.op {
	case opGet:
		dst = append(dst, "get "...)
		dst = append(dst, r.key...)
	case opGets:
		dst = append(dst, "gets "...)
		dst = append(dst, r.key...)
	case opGat:
		dst = append(dst, "gat "...)
		dst = strconv.AppendInt(dst, r.exptime, 10)
		dst = append(dst, ' ')
		dst = append(dst, r.key...)
	case opGetMulti:
		dst = append(dst, "get"...)
		for _, k := range r.keys {
			dst = append(dst, ' ')
			dst = append(dst, k...)
		}
	case opGetBatch:
		dst = append(dst, "get"...)
		for _, m := range r.members {
			dst = append(dst, ' ')
			dst = append(dst, m.key...)
		}
	case opSet, opAdd, opReplace, opAppend, opPrepend, opCAS:
		dst = append(dst, storageVerb[r.op]...)
		dst = append(dst, r.key...)
		dst = append(dst, ' ')
		dst = strconv.AppendUint(dst, uint64(r.flags), 10)
		dst = append(dst, ' ')
		dst = appendStorageExptime(dst, r.exptime)
		dst = append(dst, ' ')
		dst = strconv.AppendInt(dst, int64(len(r.value)), 10)
		if r.op == opCAS {
			dst = append(dst, ' ')
			dst = strconv.AppendUint(dst, r.cas, 10)
		}
		dst = appendNoreply(dst, r.noreply)
		dst = append(dst, crlf...)
		dst = append(dst, r.value...)
	case opIncr, opDecr:
		if r.op == opIncr {
			dst = append(dst, "incr "...)
		} else {
			dst = append(dst, "decr "...)
		}
		dst = append(dst, r.key...)
		dst = append(dst, ' ')
		dst = strconv.AppendUint(dst, r.delta, 10)
		dst = appendNoreply(dst, r.noreply)
	case opDelete:
		dst = append(dst, "delete "...)
		dst = append(dst, r.key...)
		dst = appendNoreply(dst, r.noreply)
	case opTouch:
		dst = append(dst, "touch "...)
		dst = append(dst, r.key...)
		dst = append(dst, ' ')
		dst = strconv.AppendInt(dst, r.exptime, 10)
		dst = appendNoreply(dst, r.noreply)
	case opFlushAll:
		dst = append(dst, "flush_all"...)
	case opStats:
		dst = append(dst, "stats"...)
	case opVersion:
		dst = append(dst, "version"...)
	case opFence:
		// Not the meta no-op "mn": twemproxy does not know it and closes
		// the connection. Every memcached and twemproxy 0.5 answer
		// version, with one line that no noreply command's error starts
		// with.
		dst = append(dst, "version"...)
	case opAuth:
		// memcached's ASCII auth (-Y): a set of any key whose data is
		// "username password". The exptime is -1: a server without -Y,
		// which takes this for an ordinary set, stores an item that has
		// already expired, so the credentials are never readable from
		// it; and twemproxy, which refuses negative exptimes, closes the
		// connection instead of storing them on a backend.
		dst = append(dst, "set _ 0 -1 "...)
		dst = strconv.AppendInt(dst, int64(len(r.user)+1+len(r.pass)), 10)
		dst = append(dst, crlf...)
		dst = append(dst, r.user...)
		dst = append(dst, ' ')
		dst = append(dst, r.pass...)
	}
	return append(dst, crlf...)
}

// appendStorageExptime writes a storage command's exptime. A negative one
// ("already expired") goes out as an absolute time long past, which is
// what memcached turns a negative exptime into itself (REALTIME_MAXDELTA
// + 1): twemproxy refuses negative exptimes in storage commands and
// closes the connection.
func appendStorageExptime(dst []byte, exptime int64) []byte {
	if exptime < 0 {
		exptime = int64(binExpiredLongAgo)
	}
	return strconv.AppendInt(dst, exptime, 10)
}

func appendNoreply(dst []byte, noreply bool) []byte {
	if noreply {
		return append(dst, " noreply"...)
	}
	return dst
}

// Parser phases.
const (
	phaseLine    uint8 = iota // expecting a reply line
	phaseData                 // inside a VALUE data block that spans reads
	phaseTrailer              // expecting the CRLF after such a block
)

// parseTextReply consumes the reply to r from buf. It returns how many
// bytes it used and whether the reply is complete. It may be called again
// with more bytes when it returns done == false: it never needs bytes it
// already consumed. The operation's outcome (miss, not stored, server
// error) goes to r.err; a returned error means the stream can no longer be
// trusted and the connection must be discarded.
func parseTextReply(r *request, buf []byte) (n int, done bool, err error) {
	for {
		if r.parse.phase != phaseLine {
			used, complete, err := continueData(r, buf[n:])
			n += used
			if err != nil || !complete {
				return n, false, err
			}
			continue
		}
		line, size, err := cutLine(buf[n:])
		if size == 0 || err != nil {
			return n, false, err
		}
		rest := buf[n+size:]
		n += size
		if bytes.HasPrefix(line, valuePrefix) && r.op.isRetrieval() {
			used, err := startValue(r, line, rest)
			n += used
			if err != nil {
				return n, false, err
			}
			continue
		}
		if done, err := finishLine(r, line); done || err != nil {
			return n, done, err
		}
	}
}

// cutLine returns the reply line at the start of buf without its CRLF,
// and its size with the CRLF; size is 0 while the line is incomplete.
func cutLine(buf []byte) (line []byte, size int, err error) {
	i := bytes.IndexByte(buf, '\n')
	if i < 0 && len(buf) <= maxTextLine {
		return nil, 0, nil
	}
	if i < 0 || i > maxTextLine {
		// Refused whether or not its end has arrived, so that the
		// outcome does not depend on how the bytes were split.
		return nil, 0, protocolError("reply line too long", buf[:64])
	}
	if i == 0 || buf[i-1] != '\r' {
		return nil, 0, protocolError("reply line not ended by CRLF", buf[:i+1])
	}
	return buf[:i-1], i + 1, nil
}

var (
	valuePrefix = []byte("VALUE ")
	statPrefix  = []byte("STAT ")
)

// startValue handles a VALUE header line and as much of its data block as
// rest holds. It returns the bytes of rest it consumed.
func startValue(r *request, line, rest []byte) (int, error) {
	key, flags, size, cas, ok := parseValueHeader(line[len(valuePrefix):], r.op == opGets)
	if !ok {
		return 0, protocolError("malformed VALUE line", line)
	}
	if err := r.countValue(key); err != nil {
		return 0, err
	}
	index, ok := r.matchKey(key)
	if !ok {
		return 0, protocolError("VALUE for a key that was not requested", key)
	}
	return startBlock(r, index, flags, cas, size, rest)
}

// startBlock starts the data block of a value whose header announced
// size bytes, and consumes as much of it as rest holds (the text and meta
// parsers share it). It returns the bytes of rest it consumed.
func startBlock(r *request, index int, flags uint32, cas uint64, size int, rest []byte) (int, error) {
	if size > r.maxValue {
		// Refused before allocating. The block is left unread, so the
		// connection is discarded.
		return 0, incomingTooLarge(int64(size), r.maxValue)
	}
	r.parse.index, r.parse.vflags, r.parse.vcas, r.parse.vlen = index, flags, cas, size
	if len(rest) >= size+2 {
		// Whole block in the buffer: no copy.
		if rest[size] != '\r' || rest[size+1] != '\n' {
			return 0, protocolError("data block not followed by CRLF", rest[size:size+2])
		}
		r.keepFirstErr(r.deliverValue(index, flags, cas, rest[:size]))
		return size + 2, nil
	}
	r.parse.phase = phaseData
	if r.op.isSingleGet() && flags&FlagCompressed == 0 {
		// Straight into the caller's buffer: no copy of the value but the
		// one the socket makes.
		r.dst = grow(r.dst, size)
		r.parse.want, r.parse.intoDst = r.dst[len(r.dst):len(r.dst)+size], true
	} else {
		r.parse.scratch = grow(r.parse.scratch[:0], size)
		r.parse.want = r.parse.scratch[:size]
	}
	used, _, err := continueData(r, rest)
	return used, err
}

// continueData reads a data block that spans reads into its destination,
// then its CRLF, and delivers the value.
func continueData(r *request, buf []byte) (int, bool, error) {
	n := 0
	if r.parse.phase == phaseData {
		used, complete := r.parse.take(buf)
		if n = used; !complete {
			return n, false, nil
		}
		r.parse.phase = phaseTrailer
	}
	trailer := buf[n:]
	if len(trailer) < 2 {
		return n, false, nil
	}
	if trailer[0] != '\r' || trailer[1] != '\n' {
		return n, false, protocolError("data block not followed by CRLF", trailer[:2])
	}
	r.parse.phase = phaseLine
	size := r.parse.vlen
	if r.parse.intoDst {
		r.parse.intoDst = false
		r.foundValue(r.parse.vflags, r.parse.vcas)
		r.dst = r.dst[:len(r.dst)+size]
		return n + 2, true, nil
	}
	r.keepFirstErr(r.deliverValue(r.parse.index, r.parse.vflags, r.parse.vcas, r.parse.scratch[:size]))
	return n + 2, true, nil
}

// keepFirstErr records the first per-value error (a corrupt compressed
// value, say) without stopping the parse: the stream itself is fine.
func (r *request) keepFirstErr(err error) {
	if err != nil && r.err == nil {
		r.err = err
	}
}

// countValue refuses a multi-get value beyond one per key asked: a server
// repeating values could otherwise call the callback (or, on the Ultra
// driver, buffer values) without end.
func (r *request) countValue(key []byte) error {
	if r.op != opGetMulti {
		return nil
	}
	if r.parse.values == len(r.keys) {
		return protocolError("more values than keys requested", key)
	}
	r.parse.values++
	return nil
}

// matchKey finds which requested key a VALUE line answers. memcached
// answers in request order, so the search starts after the previous match
// and the usual cost is one comparison per value.
func (r *request) matchKey(key []byte) (int, bool) {
	if r.op == opGetBatch {
		return r.matchMember(key)
	}
	if r.op != opGetMulti {
		if r.found || string(key) != r.key {
			return 0, false
		}
		return 0, true
	}
	n := len(r.keys)
	for j := 0; j < n; j++ {
		i := r.parse.cursor + j
		if i >= n {
			i -= n
		}
		if r.keys[i] == string(key) {
			r.parse.cursor = i + 1
			return i, true
		}
	}
	return 0, false
}

// matchMember is matchKey for a batch of gets: a member already answered
// cannot be answered again (memcached answers each occurrence of a key
// once, in order).
func (r *request) matchMember(key []byte) (int, bool) {
	n := len(r.members)
	for j := 0; j < n; j++ {
		i := r.parse.cursor + j
		if i >= n {
			i -= n
		}
		if m := r.members[i]; !m.found && m.key == string(key) {
			r.parse.cursor = i + 1
			return i, true
		}
	}
	return 0, false
}

// finishLine interprets a reply line that is not a VALUE header.
func finishLine(r *request, line []byte) (done bool, err error) {
	if r.op == opFence {
		// Everything before the VERSION line answers earlier noreply
		// commands, which asked for no reply: errors only, dropped here
		// so they cannot be taken for the next request's reply.
		return string(line) == "VERSION" || bytes.HasPrefix(line, []byte("VERSION ")), nil
	}
	if isErr, err := errorReply(r, line); isErr {
		return true, err
	}
	switch {
	case string(line) == "END":
		switch {
		case r.op == opStats:
		case r.op.isRetrieval():
			if r.op != opGetMulti && r.op != opGetBatch && !r.found && r.err == nil {
				r.err = ErrCacheMiss
			}
		default:
			return false, protocolError("unexpected reply", line)
		}
		return true, nil
	case bytes.HasPrefix(line, statPrefix) && r.op == opStats:
		name, value, _ := bytes.Cut(line[len(statPrefix):], []byte{' '})
		return false, r.addStat(name, value)
	}
	if err := expectedReply(r, line); err != nil {
		return false, err
	}
	return true, nil
}

// errorReply maps memcached's error lines, the same in the text and meta
// protocols, to the request's outcome. isErr is false for any other line;
// err is errDiscardConn when the connection must not be reused.
func errorReply(r *request, line []byte) (isErr bool, err error) {
	switch {
	case bytes.HasPrefix(line, []byte("SERVER_ERROR")):
		r.err = &ServerError{Message: boundedMessage(bytes.TrimPrefix(line[len("SERVER_ERROR"):], []byte{' '}))}
		if r.op == opGetMulti {
			// A multi-get cut short by an error: twemproxy closes the
			// connection right after it (one key's server is down), and
			// memcached stops the reply without END. Either way the
			// connection is not worth keeping.
			return true, errDiscardConn
		}
		return true, nil
	case bytes.HasPrefix(line, []byte("CLIENT_ERROR")):
		r.err = &ClientError{Message: boundedMessage(bytes.TrimPrefix(line[len("CLIENT_ERROR"):], []byte{' '}))}
		if r.op == opAuth {
			r.err = authError(r.err)
		}
		// The server may still answer the rest of the command: the
		// connection cannot be trusted to be in step any more.
		return true, errDiscardConn
	case string(line) == "ERROR" || bytes.HasPrefix(line, []byte("ERROR ")):
		r.err = &ServerError{Message: boundedMessage(line)}
		return true, errDiscardConn
	}
	return false, nil
}

// expectedReply maps the one-line reply of a non-retrieval command to the
// request's outcome. An answer that does not belong to the command is a
// protocol error.
func expectedReply(r *request, line []byte) error {
	reply := string(line)
	switch r.op {
	case opSet, opAdd, opReplace, opAppend, opPrepend, opCAS, opAuth:
		switch reply {
		case "STORED":
			return nil
		case "NOT_STORED":
			r.err = ErrNotStored
			return nil
		case "EXISTS":
			if r.op == opCAS {
				r.err = ErrCASConflict
				return nil
			}
		case "NOT_FOUND":
			if r.op == opCAS {
				r.err = ErrCacheMiss
				return nil
			}
		}
	case opIncr, opDecr:
		if reply == "NOT_FOUND" {
			r.err = ErrCacheMiss
			return nil
		}
		if v, ok := parseUint(line); ok {
			r.number = v
			return nil
		}
	case opDelete:
		switch reply {
		case "DELETED":
			return nil
		case "NOT_FOUND":
			r.err = ErrCacheMiss
			return nil
		}
	case opTouch:
		switch reply {
		case "TOUCHED":
			return nil
		case "NOT_FOUND":
			r.err = ErrCacheMiss
			return nil
		}
	case opFlushAll:
		if reply == "OK" {
			return nil
		}
	case opVersion:
		if v, ok := bytes.CutPrefix(line, []byte("VERSION ")); ok {
			r.text = string(v)
			return nil
		}
	}
	return protocolError("unexpected reply", line)
}

// parseValueHeader splits "<key> <flags> <bytes>[ <cas>]".
func parseValueHeader(b []byte, wantCAS bool) (key []byte, flags uint32, size int, cas uint64, ok bool) {
	key, b, ok = nextField(b)
	if !ok {
		return
	}
	var f, s []byte
	if f, b, ok = nextField(b); !ok {
		return
	}
	if s, b, ok = nextField(b); !ok {
		return
	}
	fl, ok1 := parseUint(f)
	sz, ok2 := parseUint(s)
	if !ok1 || !ok2 || fl > 0xffffffff || sz > 1<<31 {
		return nil, 0, 0, 0, false
	}
	flags, size = uint32(fl), int(sz)
	if len(b) > 0 {
		var c []byte
		if c, b, ok = nextField(b); !ok {
			return
		}
		if cas, ok = parseUint(c); !ok || len(b) > 0 {
			return nil, 0, 0, 0, false
		}
	} else if wantCAS {
		return nil, 0, 0, 0, false
	}
	return key, flags, size, cas, true
}

// nextField returns the bytes up to the next single space and what
// follows it. Empty fields (double spaces) are malformed.
func nextField(b []byte) (field, rest []byte, ok bool) {
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return b, nil, len(b) > 0
	}
	if i == 0 || i == len(b)-1 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// parseUint parses a decimal uint64 with no sign, no spaces and no
// overflow. memcached may space-pad a decremented number in place; that
// padding is only ever seen in values read back, which callers trim.
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}
