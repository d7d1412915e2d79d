package ermc

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/pierrec/lz4/v4"
)

// Reference framers for the fuzz targets: tiny, independent readings of
// the protocols that say what a reply stream frames for each key. They
// share no code with the client's parsers; where the two disagree about a
// value, the fuzz targets fail.

// refItem is one value as a reply stream frames it, before decompression.
type refItem struct {
	key    string
	flags  uint32
	cas    uint64
	hasCAS bool
	data   []byte
}

// refReply is one reply as a reference framer reads it.
type refReply struct {
	items  []refItem
	line   string // text: the closing line (END or an error line); binary: "" unless an error frame ended it
	status uint16 // binary: the status of the frame that ended the reply
	number uint64 // incr/decr
	size   int    // bytes of the stream the reply took
}

// refValue decodes an item's data as the client must deliver it: raw, or
// for the compressed flag the python-lz4 block (a 4-byte little-endian
// length, then one LZ4 block that decodes to exactly that length, at most
// maxLen). ok is false for a value that does not decode.
func refValue(it refItem, maxLen int) (v []byte, ok bool) {
	if it.flags&8 == 0 {
		return it.data, true
	}
	if len(it.data) < 4 {
		return nil, false
	}
	size := binary.LittleEndian.Uint32(it.data)
	if uint64(size) > uint64(maxLen) {
		return nil, false
	}
	out := make([]byte, size)
	n, err := lz4.UncompressBlock(it.data[4:], out)
	if err != nil || n != int(size) {
		return nil, false
	}
	return out, true
}

// refTextLine returns the first line of b: up to the first LF, which
// must follow a CR. (A CR elsewhere is part of the line.)
func refTextLine(b []byte) (line string, size int, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return "", 0, false
	}
	return string(b[:i-1]), i + 1, true
}

// refIsErrorLine reports whether line is one of memcached's error replies.
func refIsErrorLine(line string) bool {
	return line == "ERROR" || strings.HasPrefix(line, "ERROR ") ||
		strings.HasPrefix(line, "SERVER_ERROR") || strings.HasPrefix(line, "CLIENT_ERROR")
}

// refTextRetrieval frames one reply to get, gets, gat or a multi-get:
// VALUE blocks ended by END, or an error line (which may also follow some
// values). ok is false when b does not begin with such a reply; the items
// framed before the fault are still returned.
func refTextRetrieval(b []byte) (rep refReply, ok bool) {
	for {
		line, n, ok := refTextLine(b[rep.size:])
		if !ok {
			return rep, false
		}
		rep.size += n
		if line == "END" || refIsErrorLine(line) {
			rep.line = line
			return rep, true
		}
		f := strings.Split(line, " ")
		if f[0] != "VALUE" || len(f) < 4 || len(f) > 5 || f[1] == "" {
			return rep, false
		}
		flags, err1 := strconv.ParseUint(f[2], 10, 32)
		size, err2 := strconv.ParseUint(f[3], 10, 31)
		it := refItem{key: f[1], flags: uint32(flags), hasCAS: len(f) == 5}
		var err3 error
		if it.hasCAS {
			it.cas, err3 = strconv.ParseUint(f[4], 10, 64)
		}
		if err1 != nil || err2 != nil || err3 != nil {
			return rep, false
		}
		block := b[rep.size:]
		if uint64(len(block)) < size+2 || string(block[size:size+2]) != "\r\n" {
			return rep, false
		}
		it.data = block[:size]
		rep.size += int(size) + 2
		rep.items = append(rep.items, it)
	}
}

// refTextArith frames the one-line reply to incr or decr.
func refTextArith(b []byte) (rep refReply, ok bool) {
	line, n, ok := refTextLine(b)
	if !ok {
		return rep, false
	}
	rep.size, rep.line = n, line
	if v, err := strconv.ParseUint(line, 10, 64); err == nil && line[0] != '+' {
		rep.number = v
		return rep, true
	}
	return rep, line == "NOT_FOUND" || refIsErrorLine(line)
}

// refCanonicalText reports whether a retrieval reply is one a healthy
// memcached could send for keys: values for the keys in order, plain
// decimal numbers, no compressed flag, values within maxValue and lines
// within the line bound. The client must read such a reply successfully.
func refCanonicalText(rep refReply, keys []string, wantCAS bool, maxValue int) bool {
	if rep.line != "END" || len(rep.items) > len(keys) {
		return false
	}
	next := 0
	for _, it := range rep.items {
		for next < len(keys) && keys[next] != it.key {
			next++
		}
		if next == len(keys) || it.flags&8 != 0 || len(it.data) > maxValue || it.hasCAS != wantCAS {
			return false
		}
		next++
		header := "VALUE " + it.key + " " + strconv.FormatUint(uint64(it.flags), 10) + " " + strconv.Itoa(len(it.data))
		if len(header)+30 > maxTextLine {
			return false
		}
	}
	return true
}

// refBinFrame is one binary response frame.
type refBinFrame struct {
	opcode             uint8
	status             uint16
	opaque             uint32
	cas                uint64
	extras, key, value []byte
	size               int
}

// refBinNext frames one binary response from b: the magic of a response,
// raw data type, extras and key inside the body, the whole body present.
func refBinNext(b []byte) (f refBinFrame, ok bool) {
	if len(b) < 24 || b[0] != 0x81 || b[5] != 0 {
		return f, false
	}
	keyLen := int(binary.BigEndian.Uint16(b[2:]))
	extLen := int(b[4])
	bodyLen := uint64(binary.BigEndian.Uint32(b[8:]))
	if uint64(keyLen+extLen) > bodyLen || uint64(len(b)-24) < bodyLen {
		return f, false
	}
	body := b[24 : 24+bodyLen]
	f = refBinFrame{
		opcode: b[1],
		status: binary.BigEndian.Uint16(b[6:]),
		opaque: binary.BigEndian.Uint32(b[12:]),
		cas:    binary.BigEndian.Uint64(b[16:]),
		extras: body[:extLen],
		key:    body[extLen : extLen+keyLen],
		value:  body[extLen+keyLen:],
		size:   24 + int(bodyLen),
	}
	return f, true
}

// refBinGet frames the reply to a single-key get (opcode 0x00) or gat
// (0x1d) sent with opaque: one frame; a value needs 4 bytes of flags and
// no key or the key asked for.
func refBinGet(b []byte, opcode uint8, opaque uint32, key string) (rep refReply, ok bool) {
	f, ok := refBinNext(b)
	if !ok || f.opcode != opcode || f.opaque != opaque {
		return rep, false
	}
	rep.size, rep.status = f.size, f.status
	if f.status != 0 {
		return rep, true
	}
	if len(f.extras) != 4 || len(f.key) > 0 && string(f.key) != key {
		return rep, false
	}
	rep.items = []refItem{{key: key, flags: binary.BigEndian.Uint32(f.extras), cas: f.cas, hasCAS: true, data: f.value}}
	return rep, true
}

// refBinMulti frames the reply to a multi-get of keys: GETKQ frames (opaque
// the key's index, the key itself, 4 bytes of flags) closed by a NOOP whose
// opaque is the number of keys.
func refBinMulti(b []byte, keys []string) (rep refReply, ok bool) {
	for {
		f, ok := refBinNext(b[rep.size:])
		if !ok {
			return rep, false
		}
		rep.size += f.size
		switch {
		case f.opcode == 0x0a && f.opaque == uint32(len(keys)):
			rep.status = f.status
			return rep, true
		case f.opcode != 0x0d || f.opaque >= uint32(len(keys)):
			return rep, false
		case f.status != 0:
			continue // an error for one key: recorded, not a value
		case len(f.extras) != 4 || string(f.key) != keys[f.opaque]:
			return rep, false
		}
		rep.items = append(rep.items, refItem{key: string(f.key), flags: binary.BigEndian.Uint32(f.extras), cas: f.cas, hasCAS: true, data: f.value})
	}
}
