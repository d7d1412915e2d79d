package ermc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
)

// Binary protocol (memcached's binary protocol, as the Internet-Draft
// draft-stone-memcache-binary-01 "Memcache Binary Protocol" specifies it;
// section numbers in the tests are the draft's): the 24-byte frame
// header, opcodes, status codes, request encoders and a resumable reply
// parser. Everything here is pure: bytes in, bytes or results out, no I/O,
// and no allocation on the success paths.

const binHeaderLen = 24

// Magic bytes: the first byte of every frame says its direction.
const (
	binMagicRequest  uint8 = 0x80
	binMagicResponse uint8 = 0x81
)

// Opcodes. Names ending in Q are the quiet variants: the server sends no
// response for the uninteresting outcome (a miss for gets, success for
// mutations) and answers errors only. TOUCH, GAT and the SASL commands
// postdate the draft spec; their values are memcached's.
const (
	binGet      uint8 = 0x00
	binSet      uint8 = 0x01
	binAdd      uint8 = 0x02
	binReplace  uint8 = 0x03
	binDelete   uint8 = 0x04
	binIncr     uint8 = 0x05
	binDecr     uint8 = 0x06
	binQuit     uint8 = 0x07
	binFlush    uint8 = 0x08
	binGetQ     uint8 = 0x09
	binNoop     uint8 = 0x0a
	binVersion  uint8 = 0x0b
	binGetK     uint8 = 0x0c
	binGetKQ    uint8 = 0x0d
	binAppend   uint8 = 0x0e
	binPrepend  uint8 = 0x0f
	binStat     uint8 = 0x10
	binSetQ     uint8 = 0x11
	binAddQ     uint8 = 0x12
	binReplaceQ uint8 = 0x13
	binDeleteQ  uint8 = 0x14
	binIncrQ    uint8 = 0x15
	binDecrQ    uint8 = 0x16
	binQuitQ    uint8 = 0x17
	binFlushQ   uint8 = 0x18
	binAppendQ  uint8 = 0x19
	binPrependQ uint8 = 0x1a
	binTouch    uint8 = 0x1c
	binGAT      uint8 = 0x1d
	binGATQ     uint8 = 0x1e
	binSASLList uint8 = 0x20
	binSASLAuth uint8 = 0x21
	binSASLStep uint8 = 0x22
	binGATK     uint8 = 0x23
	binGATKQ    uint8 = 0x24
)

// Response status codes.
const (
	binStatusOK             uint16 = 0x00
	binStatusKeyNotFound    uint16 = 0x01
	binStatusKeyExists      uint16 = 0x02
	binStatusTooLarge       uint16 = 0x03
	binStatusInvalidArgs    uint16 = 0x04
	binStatusNotStored      uint16 = 0x05
	binStatusNonNumeric     uint16 = 0x06
	binStatusNotMyVBucket   uint16 = 0x07
	binStatusAuthError      uint16 = 0x20
	binStatusAuthContinue   uint16 = 0x21
	binStatusUnknownCommand uint16 = 0x81
	binStatusOutOfMemory    uint16 = 0x82
	binStatusNotSupported   uint16 = 0x83
	binStatusInternalError  uint16 = 0x84
	binStatusBusy           uint16 = 0x85
	binStatusTempFailure    uint16 = 0x86
)

// binHeader is a decoded frame header. In requests, status is the
// reserved (vbucket) field and is sent as zero.
type binHeader struct {
	magic    uint8
	opcode   uint8
	keyLen   uint16
	extLen   uint8
	dataType uint8
	status   uint16
	bodyLen  uint32
	opaque   uint32
	cas      uint64
}

// appendBinHeader appends the 24 header bytes of h.
func appendBinHeader(dst []byte, h binHeader) []byte {
	dst = append(dst, h.magic, h.opcode)
	dst = binary.BigEndian.AppendUint16(dst, h.keyLen)
	dst = append(dst, h.extLen, h.dataType)
	dst = binary.BigEndian.AppendUint16(dst, h.status)
	dst = binary.BigEndian.AppendUint32(dst, h.bodyLen)
	dst = binary.BigEndian.AppendUint32(dst, h.opaque)
	return binary.BigEndian.AppendUint64(dst, h.cas)
}

// decodeBinHeader reads a header from the first binHeaderLen bytes of b.
func decodeBinHeader(b []byte) binHeader {
	_ = b[binHeaderLen-1]
	return binHeader{
		magic:    b[0],
		opcode:   b[1],
		keyLen:   binary.BigEndian.Uint16(b[2:]),
		extLen:   b[4],
		dataType: b[5],
		status:   binary.BigEndian.Uint16(b[6:]),
		bodyLen:  binary.BigEndian.Uint32(b[8:]),
		opaque:   binary.BigEndian.Uint32(b[12:]),
		cas:      binary.BigEndian.Uint64(b[16:]),
	}
}

// valueLen is the length of the frame's value: the body after extras and
// key (negative for a malformed header). In int64, so that no body length
// wraps around on 32-bit platforms.
func (h binHeader) valueLen() int64 {
	return int64(h.bodyLen) - int64(h.extLen) - int64(h.keyLen)
}

// appendBinRequestHeader appends the header of a request whose body is
// extLen bytes of extras, keyLen bytes of key and valueLen bytes of value.
func appendBinRequestHeader(dst []byte, opcode uint8, extLen, keyLen, valueLen int, opaque uint32, cas uint64) []byte {
	return appendBinHeader(dst, binHeader{
		magic:   binMagicRequest,
		opcode:  opcode,
		keyLen:  uint16(keyLen),
		extLen:  uint8(extLen),
		bodyLen: uint32(extLen + keyLen + valueLen),
		opaque:  opaque,
		cas:     cas,
	})
}

// maxReplyKey is memcached's longest key (KEY_MAX_LENGTH). A response
// carries the key asked for, or a stat name: nothing longer.
const maxReplyKey = 250

// checkBinResponse validates the response header h, decoded from hdr,
// before any of its body is read or buffered: the magic, the data type
// (raw bytes is the only one defined), extras and key that fit in the
// body, a key no longer than memcached's, and a value no longer than
// maxValue, so that a hostile length cannot make the client allocate.
func checkBinResponse(h binHeader, hdr []byte, maxValue int) error {
	hdr = hdr[:binHeaderLen]
	switch {
	case h.magic != binMagicResponse:
		return protocolError("bad magic in response header", hdr)
	case h.dataType != 0:
		return protocolError("unknown data type in response header", hdr)
	case h.valueLen() < 0:
		return protocolError("extras and key longer than the body", hdr)
	case h.keyLen > maxReplyKey:
		return protocolError("key longer than memcached allows in response header", hdr)
	case h.valueLen() > int64(maxValue):
		return incomingTooLarge(h.valueLen(), maxValue)
	}
	return nil
}

// binOpaque tags single requests ("ermc"); the server echoes it, so a
// reply to anything else is caught. Multi-gets tag each GETKQ with its key
// index and the closing NOOP with the number of keys.
const binOpaque uint32 = 0x65726d63

// binExpiredLongAgo encodes a negative exptime ("already expired"): over
// 30 days, so memcached reads it as an absolute Unix time, and long past,
// so the item expires at once. The extras field has no negative numbers.
const binExpiredLongAgo uint32 = 2592001

// binNoCreate in the expiration of incr/decr makes a missing counter a
// miss (NOT_FOUND) instead of seeding it with the initial value, as the
// text protocol does.
const binNoCreate uint32 = 0xffffffff

// binMinReplyLimit is the body allowance for replies that carry no user
// value (error messages, stats, version, SASL), so they fit even when
// MaxValueLength is tiny or unset (the auth request carries none).
const binMinReplyLimit = 4096

// binOpcodes is the opcode each operation sends.
var binOpcodes = [...]uint8{
	opGet:      binGet,
	opGets:     binGet,
	opGat:      binGAT,
	opGetMulti: binGetKQ,
	opSet:      binSet,
	opAdd:      binAdd,
	opReplace:  binReplace,
	opAppend:   binAppend,
	opPrepend:  binPrepend,
	opCAS:      binSet,
	opIncr:     binIncr,
	opDecr:     binDecr,
	opDelete:   binDelete,
	opTouch:    binTouch,
	opFlushAll: binFlush,
	opStats:    binStat,
	opVersion:  binVersion,
	opAuth:     binSASLAuth,
}

// binUnmatchableCAS stands for a zero CAS id in a CAS request. The text
// protocol compares 0 like any id, and no item has it, so the answer is
// EXISTS or NOT_FOUND; in the binary protocol 0 means "no check", which
// would turn CompareAndSwap into a plain set. No item reaches this id.
const binUnmatchableCAS uint64 = math.MaxUint64

// binCAS is the CAS id r sends: its own for opCAS, none for other stores.
func binCAS(r *request) uint64 {
	switch {
	case r.op != opCAS:
		return 0
	case r.cas == 0:
		return binUnmatchableCAS
	}
	return r.cas
}

// binExptime fits a memcached exptime in the 32-bit extras field.
func binExptime(e int64) uint32 {
	switch {
	case e < 0:
		return binExpiredLongAgo
	case e > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(e)
}

// binaryCodec is the binary protocol for the pooled driver.
var binaryCodec = codec{appendRequest: appendBinaryRequest, parseReply: parseBinaryReply}

// appendBinaryRequest encodes r as binary protocol frames. The pooled
// driver waits for every reply, so r.noreply is not used: a quiet
// mutation would leave nothing to wait for.
func appendBinaryRequest(dst []byte, r *request) []byte {
	op := binOpcodes[r.op]
	switch r.op {
	case opGetMulti:
		for i, k := range r.keys {
			dst = appendBinRequestHeader(dst, binGetKQ, 0, len(k), 0, uint32(i), 0)
			dst = append(dst, k...)
		}
		return appendBinRequestHeader(dst, binNoop, 0, 0, 0, uint32(len(r.keys)), 0)
	case opSet, opAdd, opReplace, opCAS:
		dst = appendBinRequestHeader(dst, op, 8, len(r.key), len(r.value), binOpaque, binCAS(r))
		dst = binary.BigEndian.AppendUint32(dst, r.flags)
		dst = binary.BigEndian.AppendUint32(dst, binExptime(r.exptime))
		dst = append(dst, r.key...)
		return append(dst, r.value...)
	case opAppend, opPrepend:
		dst = appendBinRequestHeader(dst, op, 0, len(r.key), len(r.value), binOpaque, 0)
		dst = append(dst, r.key...)
		return append(dst, r.value...)
	case opGat, opTouch:
		dst = appendBinRequestHeader(dst, op, 4, len(r.key), 0, binOpaque, 0)
		dst = binary.BigEndian.AppendUint32(dst, binExptime(r.exptime))
		return append(dst, r.key...)
	case opIncr, opDecr:
		dst = appendBinRequestHeader(dst, op, 20, len(r.key), 0, binOpaque, 0)
		dst = binary.BigEndian.AppendUint64(dst, r.delta)
		dst = binary.BigEndian.AppendUint64(dst, 0) // initial value, unused
		dst = binary.BigEndian.AppendUint32(dst, binNoCreate)
		return append(dst, r.key...)
	case opAuth:
		// SASL PLAIN: the mechanism is the key, the value is
		// authzid NUL authcid NUL password with an empty authzid.
		const mech = "PLAIN"
		dst = appendBinRequestHeader(dst, op, 0, len(mech), 2+len(r.user)+len(r.pass), binOpaque, 0)
		dst = append(dst, mech...)
		dst = append(dst, 0)
		dst = append(dst, r.user...)
		dst = append(dst, 0)
		return append(dst, r.pass...)
	case opFlushAll, opStats, opVersion:
		return appendBinRequestHeader(dst, op, 0, 0, 0, binOpaque, 0)
	}
	// opGet, opGets, opDelete: the key alone.
	dst = appendBinRequestHeader(dst, op, 0, len(r.key), 0, binOpaque, 0)
	return append(dst, r.key...)
}

// Binary parser phases.
const (
	binPhaseHeader uint8 = iota // expecting a response header
	binPhaseBody                // gathering a frame that spans reads
)

// parseBinaryReply consumes the reply to r from buf. It returns how many
// bytes it used and whether the reply is complete. It may be called again
// with more bytes when it returns done == false: it never needs bytes it
// already consumed. The operation's outcome (miss, not stored, a status
// error) goes to r.err; a returned error means the stream can no longer be
// trusted and the connection must be discarded, and errDiscardConn means
// the outcome is valid but the server is closing the connection.
func parseBinaryReply(r *request, buf []byte) (n int, done bool, err error) {
	for {
		frame, used, err := nextBinFrame(r, buf[n:])
		n += used
		if err != nil || frame == nil {
			return n, false, err
		}
		if done, err := handleBinFrame(r, frame); done || err != nil {
			return n, done, err
		}
	}
}

// nextBinFrame returns the next whole frame from buf, or nil when more
// bytes are needed. A frame that is whole in buf is returned in place; one
// that spans reads is gathered in r.parse.scratch, once its header has
// been validated.
func nextBinFrame(r *request, buf []byte) (frame []byte, used int, err error) {
	if r.parse.phase == binPhaseBody {
		take, complete := r.parse.take(buf)
		if !complete {
			return nil, take, nil
		}
		r.parse.phase = binPhaseHeader
		return r.parse.scratch, take, nil
	}
	if len(buf) < binHeaderLen {
		return nil, 0, nil
	}
	if isText, err := binTextError(buf); isText {
		return nil, 0, err
	}
	h := decodeBinHeader(buf)
	if err := checkBinResponse(h, buf, binReplyLimit(r, h)); err != nil {
		return nil, 0, err
	}
	if !binBelongs(r, h) {
		return nil, 0, protocolError("response does not answer the request", buf[:binHeaderLen])
	}
	size := binHeaderLen + int(h.bodyLen)
	if len(buf) >= size {
		return buf[:size], size, nil
	}
	r.parse.scratch = append(grow(r.parse.scratch[:0], size), buf...)[:size]
	r.parse.want = r.parse.scratch[len(buf):]
	r.parse.phase = binPhaseBody
	return nil, len(buf), nil
}

// textErrorPrefixes start the lines memcached sends in text before it
// knows a connection's protocol, as when it refuses a connection over its
// limit: "ERROR Too many open connections".
var textErrorPrefixes = [][]byte{[]byte("ERROR"), []byte("SERVER_ERROR"), []byte("CLIENT_ERROR")}

// binTextError recognizes a text error line where a response header was
// expected. Once the line is complete it returns an error matching both
// ErrProtocol (the connection is not in step) and *ServerError carrying
// the line; before that, a nil error: more bytes are needed.
func binTextError(buf []byte) (isText bool, err error) {
	if buf[0] == binMagicResponse {
		return false, nil
	}
	for _, p := range textErrorPrefixes {
		if bytes.HasPrefix(buf, p) {
			isText = true
			break
		}
	}
	if !isText {
		return false, nil
	}
	line, _, complete := bytes.Cut(buf, []byte{'\n'})
	switch {
	case complete:
		se := &ServerError{Message: boundedMessage(bytes.TrimSuffix(line, []byte{'\r'}))}
		return true, fmt.Errorf("%w: text reply to a binary request: %w", ErrProtocol, se)
	case len(buf) > maxTextLine:
		return true, protocolError("text reply line too long", buf[:64])
	}
	return true, nil
}

// binReplyLimit is the longest value the response h to r may carry:
// MaxValueLength for a value of a successful get, and at least
// binMinReplyLimit for anything else.
func binReplyLimit(r *request, h binHeader) int {
	if h.status == binStatusOK && r.op.isRetrieval() {
		return r.maxValue
	}
	return max(r.maxValue, binMinReplyLimit)
}

// binBelongs reports whether a response's opcode and opaque answer r.
func binBelongs(r *request, h binHeader) bool {
	if r.op == opGetMulti {
		n := uint32(len(r.keys))
		return h.opcode == binGetKQ && h.opaque < n || h.opcode == binNoop && h.opaque == n
	}
	return h.opcode == binOpcodes[r.op] && h.opaque == binOpaque
}

// handleBinFrame applies one whole, validated frame to r and reports
// whether the reply is complete.
func handleBinFrame(r *request, frame []byte) (done bool, err error) {
	h := decodeBinHeader(frame)
	body := frame[binHeaderLen:]
	extras := body[:h.extLen]
	key := body[h.extLen : int(h.extLen)+int(h.keyLen)]
	value := body[int(h.extLen)+int(h.keyLen):]
	if h.status != binStatusOK {
		return binErrorFrame(r, h, value)
	}
	switch r.op {
	case opGet, opGets, opGat:
		return true, binValue(r, 0, h, extras, key, value, frame)
	case opGetMulti:
		if h.opcode == binNoop {
			return true, nil
		}
		return false, binValue(r, int(h.opaque), h, extras, key, value, frame)
	case opIncr, opDecr:
		if len(value) != 8 {
			return false, protocolError("incr/decr reply is not a 64-bit number", frame)
		}
		r.number = binary.BigEndian.Uint64(value)
	case opStats:
		if len(key) == 0 && len(value) == 0 {
			return true, nil
		}
		return false, r.addStat(key, value)
	case opVersion:
		r.text = string(value)
	}
	return true, nil
}

// binValue delivers the value of a successful get. The extras are the
// item's flags; a key, when the server sends one, must be the one asked
// for at that index.
func binValue(r *request, index int, h binHeader, extras, key, value, frame []byte) error {
	if len(extras) != 4 {
		return protocolError("value reply without 4 bytes of flags", frame[:binHeaderLen])
	}
	want := r.key
	if r.op == opGetMulti {
		want = r.keys[index]
		if len(key) == 0 {
			return protocolError("GETKQ reply without its key", frame[:binHeaderLen])
		}
		if err := r.countValue(key); err != nil {
			return err
		}
	}
	if len(key) > 0 && string(key) != want {
		return protocolError("value for a key that was not requested", key)
	}
	r.keepFirstErr(r.deliverValue(index, binary.BigEndian.Uint32(extras), h.cas, value))
	return nil
}

// binErrorFrame records the outcome of a response with a non-zero status.
// The connection stays in step (the server answered the whole request),
// except after statuses on which memcached closes the connection.
func binErrorFrame(r *request, h binHeader, msg []byte) (done bool, err error) {
	if r.op == opGetMulti {
		if h.status != binStatusKeyNotFound {
			r.keepFirstErr(binStatusError(r.op, h.status, msg))
		}
		done = h.opcode == binNoop
	} else {
		r.err = binStatusError(r.op, h.status, msg)
		done = true
	}
	if binClosesConn(r.op, h.status) {
		// Nothing more will come: not even the NOOP closing a multi-get.
		return true, errDiscardConn
	}
	return done, nil
}

// binClosesConn reports whether memcached 1.6 closes the connection after
// sending this status: after Invalid arguments (a request it could not
// parse, such as a key over 250 bytes), and after an Auth error for any
// command but the SASL exchange itself (a server with -S refusing an
// unauthenticated connection).
func binClosesConn(op opcode, status uint16) bool {
	return status == binStatusInvalidArgs || status == binStatusAuthError && op != opAuth
}

// binStatusError maps a non-zero status to the error the text driver
// gives for the same outcome; statuses without a sentinel become a
// *StatusError carrying the server's (bounded) message.
func binStatusError(op opcode, status uint16, msg []byte) error {
	if op == opAuth {
		return binAuthError(status, msg)
	}
	switch status {
	case binStatusKeyNotFound:
		switch {
		case op.isStorage() && op != opCAS:
			return ErrNotStored // replace (and append/prepend) of a missing key
		case op != opFlushAll && op != opStats && op != opVersion:
			return ErrCacheMiss
		}
	case binStatusKeyExists:
		switch {
		case op == opCAS:
			return ErrCASConflict
		case op.isStorage():
			return ErrNotStored // add of an existing key
		}
	case binStatusNotStored:
		if op.isStorage() {
			return ErrNotStored
		}
	case binStatusTooLarge:
		return wrapStatus(ErrValueTooLarge, status, msg)
	case binStatusNonNumeric:
		return wrapStatus(ErrNonNumeric, status, msg)
	case binStatusAuthError:
		// A server with -S refusing a connection that has not
		// authenticated: credentials are missing (or were refused).
		return wrapStatus(ErrAuth, status, msg)
	}
	return &StatusError{Status: status, Message: boundedMessage(msg)}
}

// binAuthError maps the reply to SASL_AUTH: every refusal matches ErrAuth.
// Unknown command means the server was started without SASL (-S).
func binAuthError(status uint16, msg []byte) error {
	m := boundedMessage(msg)
	if status == binStatusUnknownCommand {
		m = "server does not support SASL authentication (memcached without -S?): " + m
	}
	return authError(&StatusError{Status: status, Message: m})
}

// statusWrapper is a status error that also matches a sentinel, so both
// errors.Is(err, sentinel) and errors.As(err, **StatusError) work.
type statusWrapper struct {
	sentinel error
	status   *StatusError
}

func wrapStatus(sentinel error, status uint16, msg []byte) error {
	return &statusWrapper{sentinel: sentinel, status: &StatusError{Status: status, Message: boundedMessage(msg)}}
}

func (e *statusWrapper) Error() string   { return e.sentinel.Error() + " (" + e.status.Error() + ")" }
func (e *statusWrapper) Unwrap() []error { return []error{e.sentinel, e.status} }
