package ermc

import (
	"bytes"
	"encoding/base64"
	"math"
	"strconv"
)

// Meta protocol (memcached >= 1.6.10): request encoders and a resumable
// reply parser. Pure, like textparse.go, whose line cutting, value blocks
// and error lines it shares.
//
// Every meta command carries an opaque token, O<r.opaque>, which the
// server echoes in its reply (error lines and MN excepted). A reply
// carrying another token, or none, is refused: a stream out of step is
// found out before anything reaches the wrong request. The commands that
// have no meta form (flush_all, stats, version, ASCII auth) go out as text
// commands on the same connection.

// metaCodec is the meta protocol for the pipelined lanes. Plain gets are
// not combined: each mg is already one short line in a pipelined write.
// (The codec can encode a combined batch, as quiet gets under the tokens
// opaque+i like a multi-get's keys; a lane that combined gets would have
// to reserve those tokens.)
var metaCodec = codec{appendRequest: appendMetaRequest, parseReply: parseMetaReply}

// metaFields are a request's meta protocol extras: the stampede protection
// flags it sends, and the flags its reply returned.
type metaFields struct {
	// Sent with mg.
	vivify  int64 // N<exptime>: a miss creates an empty item living this long, and this caller wins its load; 0: off
	recache int64 // R<secs>: a hit with less TTL left than this wins a reload for one caller; 0: off
	wantTTL bool  // t: return the item's remaining TTL
	// Sent with md (I, and T<exptime> when the request's exptime is not 0:
	// mark the item stale, for that long, instead of deleting it) and with
	// ms (I: a CAS id older than the item's marks it stale instead of
	// failing).
	invalidate bool

	// Returned.
	win      bool  // W: this caller must load the value and store it
	winTaken bool  // Z: another caller has already won that load
	stale    bool  // X: the item was invalidated; its value is stale
	hasTTL   bool  // t came back
	ttl      int64 // t: seconds left, -1 for no expiry
}

// maxMetaKeyToken is the longest key token memcached 1.6.18 accepts. For a
// base64 key it is the encoding that counts.
const maxMetaKeyToken = 250

// maxBase64Key is the longest key that can go out base64-encoded: 186
// bytes encode to 248, 187 to 252.
const maxBase64Key = maxMetaKeyToken / 4 * 3

// validMetaKey is the Meta driver's key rule: 1..max bytes; a key the text
// protocol cannot carry (a space, a control byte, DEL) goes out
// base64-encoded, so it may have at most maxBase64Key bytes.
func validMetaKey(key string, max int) bool {
	if len(key) == 0 || len(key) > max {
		return false
	}
	return len(key) <= maxBase64Key || textSafeKey(key)
}

// appendMetaKey appends key as a key token: as it is, or base64-encoded
// when the text protocol cannot carry it; b64 then says the command must
// carry the b flag.
func appendMetaKey(dst []byte, key string) (out []byte, b64 bool) {
	if textSafeKey(key) {
		return append(dst, key...), false
	}
	// The conversion does not copy: the encoder neither keeps nor
	// changes its source.
	return base64.StdEncoding.AppendEncode(dst, []byte(key)), true
}

// appendMetaCmd appends a command name and its key token, with the b flag
// when the key went out base64-encoded.
func appendMetaCmd(dst []byte, cmd, key string) []byte {
	dst = append(dst, cmd...)
	dst, b64 := appendMetaKey(dst, key)
	if b64 {
		dst = append(dst, " b"...)
	}
	return dst
}

// appendMetaFlag appends a flag token with a numeric argument.
func appendMetaFlag(dst []byte, flag string, v int64) []byte {
	dst = append(dst, flag...)
	return strconv.AppendInt(dst, v, 10)
}

func appendMetaOpaque(dst []byte, opaque uint32) []byte {
	dst = append(dst, " O"...)
	return strconv.AppendUint(dst, uint64(opaque), 10)
}

// metaStoreMode is each storage opcode's ms mode flag; set, with or
// without a CAS id, is the default mode.
var metaStoreMode = [...]string{
	opSet:     "",
	opAdd:     " ME",
	opReplace: " MR",
	opAppend:  " MA",
	opPrepend: " MP",
	opCAS:     "",
}

// appendMetaRequest encodes r as meta commands; the commands with no meta
// form go out as text commands.
func appendMetaRequest(dst []byte, r *request) []byte {
	switch r.op {
	case opGet, opGets, opGat, opTouch:
		dst = appendMetaCmd(dst, "mg ", r.key)
		if r.op != opTouch {
			dst = append(dst, " v f"...)
		}
		if r.op == opGets {
			dst = append(dst, " c"...)
		}
		if r.op == opGat || r.op == opTouch {
			dst = appendMetaFlag(dst, " T", r.exptime)
		}
		dst = appendStampedeFlags(dst, &r.meta)
	case opGetMulti:
		for i, k := range r.keys {
			dst = appendQuietGet(dst, k, r.opaque+uint32(i))
		}
		return append(dst, "mn\r\n"...)
	case opGetBatch:
		for i, m := range r.members {
			dst = appendQuietGet(dst, m.key, r.opaque+uint32(i))
		}
		return append(dst, "mn\r\n"...)
	case opSet, opAdd, opReplace, opAppend, opPrepend, opCAS:
		var b64 bool
		dst = append(dst, "ms "...)
		dst, b64 = appendMetaKey(dst, r.key)
		dst = appendMetaFlag(dst, " ", int64(len(r.value)))
		if b64 {
			dst = append(dst, " b"...)
		}
		// memcached ignores flags and TTL on append and prepend (in the
		// text protocol too); absent, both are 0 as in the text form.
		if r.op != opAppend && r.op != opPrepend {
			if r.flags != 0 {
				dst = appendMetaFlag(dst, " F", int64(r.flags))
			}
			if r.exptime != 0 {
				dst = appendMetaFlag(dst, " T", r.exptime)
			}
		}
		dst = append(dst, metaStoreMode[r.op]...)
		if r.op == opCAS {
			dst = append(dst, " C"...)
			dst = strconv.AppendUint(dst, r.cas, 10)
		}
		if r.meta.invalidate {
			dst = append(dst, " I"...)
		}
	case opIncr, opDecr:
		dst = appendMetaCmd(dst, "ma ", r.key)
		if !r.noreply {
			dst = append(dst, " v"...)
		}
		if r.op == opDecr {
			dst = append(dst, " MD"...) // increment is the default mode
		}
		dst = append(dst, " D"...)
		dst = strconv.AppendUint(dst, r.delta, 10)
	case opDelete:
		dst = appendMetaCmd(dst, "md ", r.key)
		if r.meta.invalidate {
			dst = append(dst, " I"...)
			if r.exptime != 0 {
				dst = appendMetaFlag(dst, " T", r.exptime)
			}
		}
		if r.cas != 0 {
			// Only while the item's CAS id is still this one (EX
			// otherwise): Fetch releasing its own lease and no newer item.
			dst = append(dst, " C"...)
			dst = strconv.AppendUint(dst, r.cas, 10)
		}
	case opFence:
		// Answered once every command before it has answered, with a
		// line that no quiet command's reply starts with.
		return append(dst, "mn\r\n"...)
	default: // flush_all, stats, version, auth
		return appendTextRequest(dst, r)
	}
	if r.noreply {
		// Quiet mode: a success is not answered (but a hit of mg is: a
		// quiet touch that hits answers HD); failures and errors are, and
		// the fence that follows quiet commands drops them.
		dst = append(dst, " q"...)
	}
	dst = appendMetaOpaque(dst, r.opaque)
	dst = append(dst, crlf...)
	if r.op.isStorage() {
		dst = append(dst, r.value...)
		dst = append(dst, crlf...)
	}
	return dst
}

// appendQuietGet appends one key of a multi-get: a hit answers with the
// value under opaque, a miss answers nothing.
func appendQuietGet(dst []byte, key string, opaque uint32) []byte {
	dst = appendMetaCmd(dst, "mg ", key)
	dst = append(dst, " v f q"...)
	dst = appendMetaOpaque(dst, opaque)
	return append(dst, crlf...)
}

func appendStampedeFlags(dst []byte, m *metaFields) []byte {
	if m.vivify != 0 {
		dst = appendMetaFlag(dst, " N", m.vivify)
	}
	if m.recache != 0 {
		dst = appendMetaFlag(dst, " R", m.recache)
	}
	if m.wantTTL {
		dst = append(dst, " t"...)
	}
	return dst
}

// Meta reply codes.
const (
	metaVA uint8 = iota + 1 // a value follows
	metaHD                  // done, no value
	metaEN                  // miss
	metaNS                  // not stored
	metaEX                  // CAS id mismatch
	metaNF                  // not found
	metaMN                  // end of a quiet pipeline (mn)
)

// Returned flags a reply line carried (metaReply.has).
const (
	retO uint8 = 1 << iota
	retF
	retC
	retT
	retW
	retZ
	retX
)

// metaReply is one meta reply line: its code and its returned flags,
// which may come in any order.
type metaReply struct {
	code   uint8
	has    uint8 // ret* bits
	size   int   // VA: the value's length
	opaque uint32
	flags  uint32
	cas    uint64
	ttl    int64
}

// parseMetaLine splits a meta reply line: "<code>[ <size>][ <flag>]*".
// Flags this client never asks for are skipped; a flag it reads must
// appear at most once and hold a valid number.
func parseMetaLine(line []byte, rep *metaReply) bool {
	if len(line) < 2 || len(line) > 2 && line[2] != ' ' {
		return false
	}
	switch string(line[:2]) {
	case "VA":
		rep.code = metaVA
	case "HD":
		rep.code = metaHD
	case "EN":
		rep.code = metaEN
	case "NS":
		rep.code = metaNS
	case "EX":
		rep.code = metaEX
	case "NF":
		rep.code = metaNF
	case "MN":
		rep.code = metaMN
	default:
		return false
	}
	b := line[2:] // empty, or a space before each token
	sized := rep.code != metaVA
	for len(b) > 0 {
		end := bytes.IndexByte(b[1:], ' ') + 1
		if end == 0 {
			end = len(b)
		}
		tok := b[1:end]
		b = b[end:]
		switch {
		case len(tok) == 0: // two spaces, or one at the end
			return false
		case !sized:
			v, ok := parseUint(tok)
			if !ok || v > 1<<31 {
				return false
			}
			rep.size, sized = int(v), true
		case !rep.returnedFlag(tok):
			return false
		}
	}
	return sized
}

// returnedFlag records one returned flag token.
func (rep *metaReply) returnedFlag(tok []byte) bool {
	var bit uint8
	arg := tok[1:]
	switch tok[0] {
	case 'O':
		// The token comes back as it was sent: canonical decimal.
		v, ok := parseUint(arg)
		if !ok || v > math.MaxUint32 || len(arg) > 1 && arg[0] == '0' {
			return false
		}
		bit, rep.opaque = retO, uint32(v)
	case 'f':
		v, ok := parseUint(arg)
		if !ok || v > math.MaxUint32 {
			return false
		}
		bit, rep.flags = retF, uint32(v)
	case 'c':
		v, ok := parseUint(arg)
		if !ok {
			return false
		}
		bit, rep.cas = retC, v
	case 't':
		if string(arg) == "-1" {
			rep.ttl = -1
		} else if v, ok := parseUint(arg); ok && v <= math.MaxInt64 {
			rep.ttl = int64(v)
		} else {
			return false
		}
		bit = retT
	case 'W':
		bit = retW
	case 'Z':
		bit = retZ
	case 'X':
		bit = retX
	default:
		c := tok[0]
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' // asked for by no one: skipped
	}
	if bit >= retW && len(arg) != 0 || rep.has&bit != 0 {
		return false
	}
	rep.has |= bit
	return true
}

// metaMulti reports whether r is answered by quiet mg values closed by MN.
func (r *request) metaMulti() bool { return r.op == opGetMulti || r.op == opGetBatch }

// parseMetaReply consumes the reply to r from buf, with parseTextReply's
// contract: it returns how many bytes it used and whether the reply is
// complete, and may be called again with more bytes when it is not. The
// operation's outcome goes to r.err; a returned error means the
// connection must be discarded (errDiscardConn: the outcome is valid).
func parseMetaReply(r *request, buf []byte) (n int, done bool, err error) {
	switch r.op {
	case opFlushAll, opStats, opVersion, opAuth:
		return parseTextReply(r, buf)
	}
	for {
		if r.parse.phase != phaseLine {
			used, complete, err := continueData(r, buf[n:])
			n += used
			if err != nil || !complete {
				return n, false, err
			}
			if !r.metaMulti() {
				return n, true, nil
			}
			continue
		}
		line, size, err := cutLine(buf[n:])
		if size == 0 || err != nil {
			return n, false, err
		}
		rest := buf[n+size:]
		if r.op == opFence {
			n += size
			if done, err := metaFenceLine(r, line); done || err != nil {
				return n, done, err
			}
			continue
		}
		if isErr, err := errorReply(r, line); isErr {
			if r.metaMulti() {
				// The other quiet gets still answer, then MN: the
				// stream is out of step with the requests.
				err = errDiscardConn
			}
			return n + size, true, err
		}
		var rep metaReply
		if !parseMetaLine(line, &rep) {
			return n, false, protocolError("malformed meta reply", line)
		}
		if r.metaMulti() {
			if rep.code == metaMN {
				return n + size, true, nil
			}
			index, err := r.multiIndex(&rep, line)
			if err != nil {
				return n, false, err
			}
			used, err := startBlock(r, index, rep.flags, 0, rep.size, rest)
			n += size + used
			if err != nil {
				return n, false, err
			}
			continue
		}
		if rep.has&retO == 0 || rep.opaque != r.opaque {
			return n, false, protocolError("reply without the request's opaque token", line)
		}
		switch {
		case rep.code == metaVA && (r.op == opIncr || r.op == opDecr):
			used, err := metaNumber(r, &rep, line, rest)
			if used == 0 || err != nil {
				return n, false, err // the number's block has not fully arrived
			}
			return n + size + used, true, nil
		case rep.code == metaVA && r.op.isRetrieval() && r.op != opTouch:
			if rep.has&retF == 0 || r.op == opGets && rep.has&retC == 0 {
				return n, false, protocolError("value without the flags asked for", line)
			}
			r.meta.record(&rep)
			used, err := startBlock(r, 0, rep.flags, rep.cas, rep.size, rest)
			n += size + used
			if err != nil || r.parse.phase != phaseLine {
				return n, false, err
			}
			return n, true, nil
		}
		if !metaOutcome(r, &rep) {
			return n, false, protocolError("unexpected reply", line)
		}
		r.meta.record(&rep)
		return n + size, true, nil
	}
}

// multiIndex maps a multi-get value to its key: key i was sent with the
// request's opaque plus i. memcached answers the quiet gets in order, so
// the keys' values come in increasing order, at most one each.
func (r *request) multiIndex(rep *metaReply, line []byte) (int, error) {
	count := len(r.keys)
	if r.op == opGetBatch {
		count = len(r.members)
	}
	switch {
	case rep.code != metaVA:
		return 0, protocolError("unexpected reply to a multi-get", line)
	case rep.has&retO == 0:
		return 0, protocolError("value without an opaque token", line)
	case rep.has&retF == 0:
		return 0, protocolError("value without the flags asked for", line)
	}
	i := rep.opaque - r.opaque // wraps as the tokens did
	if uint64(i) >= uint64(count) {
		return 0, protocolError("value for an opaque token that was not sent", line)
	}
	if int(i) < r.parse.cursor {
		return 0, protocolError("multi-get value out of order or repeated", line)
	}
	r.parse.cursor = int(i) + 1
	return int(i), nil
}

// maxMetaNumber is the longest number ma returns: 2^64-1 has 20 digits.
const maxMetaNumber = 20

// metaNumber reads the number an ma answers with, whose block follows
// the VA line in rest. It uses nothing (used 0) until the whole block has
// arrived: the block is short, so the line is simply read again.
func metaNumber(r *request, rep *metaReply, line, rest []byte) (used int, err error) {
	if rep.size > maxMetaNumber {
		return 0, protocolError("incr/decr value longer than a number", line)
	}
	if len(rest) < rep.size+2 {
		return 0, nil
	}
	if rest[rep.size] != '\r' || rest[rep.size+1] != '\n' {
		return 0, protocolError("data block not followed by CRLF", rest[rep.size:rep.size+2])
	}
	v, ok := parseUint(rest[:rep.size])
	if !ok {
		return 0, protocolError("incr/decr value is not a number", rest[:rep.size])
	}
	r.number = v
	return rep.size + 2, nil
}

// metaOutcome maps a reply code with no value to the outcome of r. It
// reports false when the code does not answer r's command.
func metaOutcome(r *request, rep *metaReply) bool {
	switch rep.code {
	case metaHD:
		switch r.op {
		case opTouch, opDelete, opSet, opAdd, opReplace, opAppend, opPrepend, opCAS:
			return true
		}
	case metaEN:
		switch r.op {
		case opGet, opGets, opGat, opTouch:
			r.err = ErrCacheMiss
			return true
		}
	case metaNS:
		if r.op.isStorage() {
			r.err = ErrNotStored
			return true
		}
	case metaEX:
		if r.op == opCAS || r.op == opDelete && r.cas != 0 {
			r.err = ErrCASConflict
			return true
		}
	case metaNF:
		switch r.op {
		case opCAS, opIncr, opDecr, opDelete:
			r.err = ErrCacheMiss
			return true
		}
	}
	return false
}

// record keeps the stampede flags a reply returned.
func (m *metaFields) record(rep *metaReply) {
	m.win, m.winTaken, m.stale = rep.has&retW != 0, rep.has&retZ != 0, rep.has&retX != 0
	m.hasTTL, m.ttl = rep.has&retT != 0, rep.ttl
}

// metaFenceLine reads one line of the reply to a fence (mn). The lines
// before MN answer earlier quiet commands, which asked for no reply: their
// failures (NS, EX, NF, EN; HD from a quiet touch, which mg answers on a
// hit) and errors are dropped, so they cannot be taken for a later
// request's reply. A value cannot be among them.
func metaFenceLine(r *request, line []byte) (done bool, err error) {
	if isErr, _ := errorReply(r, line); isErr {
		r.err = nil // not the fence's outcome
		return false, nil
	}
	var rep metaReply
	if !parseMetaLine(line, &rep) || rep.code == metaVA {
		return false, protocolError("unexpected reply before MN", line)
	}
	return rep.code == metaMN, nil
}
