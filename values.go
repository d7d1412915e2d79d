package ermc

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/pierrec/lz4/v4"
)

// Flag bits, as pyermc and python-memcached set them.
const (
	FlagEncoded    uint32 = 1 // an object encoded by a Codec (pickle in Python)
	FlagInteger    uint32 = 2 // a decimal integer
	FlagLong       uint32 = 4 // a decimal integer (Python 2 long)
	FlagCompressed uint32 = 8 // lz4 block with a 4-byte little-endian length prefix
)

// compressedHeader is the length prefix python-lz4's lz4.block.compress
// writes before the block: the original size, little-endian.
const compressedHeader = 4

var compressorPool = sync.Pool{New: func() any { return new(lz4.Compressor) }}

// compressedSize is the most appendCompressed may need for n bytes.
func compressedSize(n int) int { return compressedHeader + lz4.CompressBlockBound(n) }

// appendCompressed appends value in the python-lz4 block format to dst.
// ok is false when the result would not be smaller than value, in which
// case dst is returned unchanged and the value should be stored raw.
func appendCompressed(dst, value []byte) (out []byte, ok bool) {
	start := len(dst)
	bound := lz4.CompressBlockBound(len(value))
	dst = grow(dst, compressedHeader+bound)
	frame := dst[start : start+compressedHeader+bound]
	binary.LittleEndian.PutUint32(frame, uint32(len(value)))
	c := compressorPool.Get().(*lz4.Compressor)
	n, err := c.CompressBlock(value, frame[compressedHeader:])
	compressorPool.Put(c)
	if err != nil || n == 0 || compressedHeader+n >= len(value) {
		return dst[:start], false // dst keeps its grown capacity for next time
	}
	return dst[:start+compressedHeader+n], true
}

// appendDecompressed appends the value framed by src (python-lz4 block
// format) to dst. A declared length over maxLen is refused before any
// allocation, and the block must decode to exactly the declared length.
func appendDecompressed(dst, src []byte, maxLen int) ([]byte, error) {
	if len(src) < compressedHeader {
		return dst, fmt.Errorf("%w: compressed value of %d bytes has no length prefix", ErrCorruptValue, len(src))
	}
	size := int(binary.LittleEndian.Uint32(src))
	if size > maxLen {
		// A corrupt value, never an allocation of what a stored value
		// claims; it also matches ErrValueTooLarge, the limit it exceeds.
		return dst, fmt.Errorf("%w: %w: compressed value declares %d bytes, limit %d", ErrCorruptValue, ErrValueTooLarge, size, maxLen)
	}
	if size == 0 {
		// An empty value: nothing to decode, and the decoder must not be
		// given a destination that may be nil (pierrec/lz4's assembly
		// then follows a match offset to a wild address). The blocks
		// that decode to nothing: none, or a lone zero token.
		if block := src[compressedHeader:]; len(block) > 1 || len(block) == 1 && block[0] != 0 {
			return dst, fmt.Errorf("%w: lz4 block does not decode to its declared 0 bytes", ErrCorruptValue)
		}
		return dst, nil
	}
	start := len(dst)
	dst = grow(dst, size)
	n, err := lz4.UncompressBlock(src[compressedHeader:], dst[start:start+size])
	if err != nil || n != size {
		return dst[:start], fmt.Errorf("%w: lz4 block does not decode to its declared %d bytes", ErrCorruptValue, size)
	}
	return dst[:start+size], nil
}

// grow makes room for n more bytes after len(b), keeping len(b). The new
// capacity doubles what is kept, not the old capacity: a scratch buffer
// reused as b[:0] gets exactly n, so no more than one value is buffered.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), 2*len(b)+n)
	copy(nb, b)
	return nb
}

// deliverValue hands one complete value, as stored on the server, to the
// request: appended (decompressed) to dst for single-key reads, or passed
// to the multi-get callback with the key's index. data is only valid during
// the call.
func (r *request) deliverValue(index int, flags uint32, cas uint64, data []byte) error {
	if r.op == opGetBatch {
		m := r.members[index] // its maxValue was set when it was queued
		m.keepFirstErr(m.deliverValue(0, flags, cas, data))
		return nil
	}
	if r.op == opGetMulti {
		v := data
		if flags&FlagCompressed != 0 {
			var err error
			if r.decoded, err = appendDecompressed(r.decoded[:0], data, r.maxValue); err != nil {
				return err
			}
			v = r.decoded
		}
		if r.deferValues {
			r.collectValue(index, v)
		} else {
			r.onValue(index, v)
		}
		return nil
	}
	r.foundValue(flags, cas)
	if flags&FlagCompressed != 0 {
		var err error
		r.dst, err = appendDecompressed(r.dst, data, r.maxValue)
		return err
	}
	r.dst = append(r.dst, data...)
	return nil
}

// foundValue records a single-key read's hit.
func (r *request) foundValue(flags uint32, cas uint64) {
	r.found, r.resFlags, r.resCAS = true, flags, cas
}

// replayValues runs the multi-get callback in the caller's goroutine over
// the values the reader collected: [index u32][len u32][bytes]...
func (r *request) replayValues() {
	b := r.collected
	for len(b) >= 8 {
		i := int(binary.LittleEndian.Uint32(b))
		n := int(binary.LittleEndian.Uint32(b[4:]))
		r.onValue(i, b[8:8+n])
		b = b[8+n:]
	}
}

// collectValue keeps a multi-get value for replayValues.
func (r *request) collectValue(index int, v []byte) {
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(index))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(v)))
	r.collected = append(append(r.collected, hdr[:]...), v...)
}
