package ermc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// Fuzz targets of the value layer: the python-lz4 block format.

// A scratch buffer reused for a larger value (b[:0]) is sized for that
// value alone: what a reply can make the client buffer stays within
// MaxValueLength however the values before it were sized.
func TestGrowReusedScratchIsExact(t *testing.T) {
	b := grow(nil, 1002)
	b = append(b, make([]byte, 1002)...)
	if b = grow(b[:0], 3002); cap(b) != 3002 {
		t.Fatalf("reused scratch grew to %d bytes for a 3002-byte value", cap(b))
	}
	// Appending still grows geometrically.
	b = grow(make([]byte, 100), 1)
	if cap(b) < 200 {
		t.Fatalf("append growth: capacity %d after 100 bytes", cap(b))
	}
}

// A compressed value declaring 0 bytes is decoded into a nil dst (Get
// with no buffer): it must be refused or read as empty, not crash the
// process. pierrec/lz4's decoder, given a nil destination, follows a
// match offset to a wild address.
func TestDecompressEmptyIntoNil(t *testing.T) {
	hostile := []byte("\x00\x00\x00\x00\x00\r\nEND\r\n\x00\x81\xff VALUE a 0 1")
	if out, err := appendDecompressed(nil, hostile, 100); !errors.Is(err, ErrCorruptValue) || len(out) != 0 {
		t.Fatalf("zero-length value with a block: %q, %v", out, err)
	}
	for _, empty := range [][]byte{{0, 0, 0, 0}, {0, 0, 0, 0, 0}} { // python-lz4 writes the second
		if out, err := appendDecompressed(nil, empty, 100); err != nil || len(out) != 0 {
			t.Fatalf("empty value %x: %q, %v", empty, out, err)
		}
	}
}

// FuzzDecompress feeds arbitrary bytes to the compressed-value decoder.
// It appends to dst and never changes what dst held; it allocates no more
// than maxLen for the value whatever length the bytes declare; a failure
// is ErrCorruptValue with dst returned as it was; and a success is what
// the reference decoder reads.
func FuzzDecompress(f *testing.F) {
	f.Add(uint16(4096), []byte("pre"), []byte{5, 0, 0, 0, 0x50, 'h', 'e', 'l', 'l', 'o'})
	f.Add(uint16(10), []byte(nil), []byte{0xff, 0xff, 0xff, 0xff, 0})
	f.Add(uint16(0), []byte("x"), []byte{0, 0, 0, 0})
	f.Add(uint16(100), []byte(nil), []byte{1, 0})
	f.Fuzz(func(t *testing.T, maxLen uint16, prefix, src []byte) {
		var dst []byte // nil, as Get(ctx, key, nil) passes it
		if len(prefix) > 0 {
			dst = append(make([]byte, 0, len(prefix)), prefix...)
		}
		out, err := appendDecompressed(dst, src, int(maxLen))
		if !bytes.Equal(out[:min(len(out), len(prefix))], prefix) || len(out) < len(prefix) {
			t.Fatalf("dst %q became %q", prefix, out)
		}
		if c := cap(out); c > 2*len(prefix)+int(maxLen) {
			t.Fatalf("%d bytes allocated for a value of at most %d after %d bytes", c, maxLen, len(prefix))
		}
		want, ok := refValue(refItem{flags: FlagCompressed, data: src}, int(maxLen))
		switch {
		case err != nil:
			if !errors.Is(err, ErrCorruptValue) || len(out) != len(prefix) {
				t.Fatalf("failure %v, out %q", err, out)
			}
			if ok {
				t.Fatalf("refused %x, which the reference decodes to %q: %v", src, want, err)
			}
		case !ok || !bytes.Equal(out[len(prefix):], want):
			t.Fatalf("decoded %q; the reference: %q, %v", out[len(prefix):], want, ok)
		}
	})
}

// FuzzCompressRoundTrip: a value compressed in the python-lz4 format
// decompresses to itself, both with the client's decoder and with a plain
// LZ4 block decoder; compression is kept only when smaller; and the
// result is appended to dst without changing what dst held.
func FuzzCompressRoundTrip(f *testing.F) {
	f.Add([]byte("pre"), bytes.Repeat([]byte("abcd"), 50))
	f.Add([]byte(nil), []byte("short"))
	f.Add([]byte("x"), []byte{})
	f.Fuzz(func(t *testing.T, prefix, value []byte) {
		dst := append(make([]byte, 0, len(prefix)), prefix...)
		out, ok := appendCompressed(dst, value)
		if len(out) < len(prefix) || !bytes.Equal(out[:len(prefix)], prefix) {
			t.Fatalf("dst %q became %q", prefix, out)
		}
		packed := out[len(prefix):]
		if !ok {
			if len(packed) != 0 {
				t.Fatalf("refused compression left %d bytes", len(packed))
			}
			block := make([]byte, lz4.CompressBlockBound(len(value)))
			var c lz4.Compressor
			if n, err := c.CompressBlock(value, block); err == nil && n > 0 && 4+n < len(value) {
				t.Fatalf("refused to compress %d bytes into %d", len(value), 4+n)
			}
			return
		}
		if len(packed) >= len(value) || binary.LittleEndian.Uint32(packed) != uint32(len(value)) {
			t.Fatalf("%d bytes compressed to %d with header %x", len(value), len(packed), packed[:4])
		}
		got, err := appendDecompressed(nil, packed, len(value))
		if err != nil || !bytes.Equal(got, value) {
			t.Fatalf("round trip: %q, %v", got, err)
		}
		if ref, ok := refValue(refItem{flags: FlagCompressed, data: packed}, len(value)); !ok || !bytes.Equal(ref, value) {
			t.Fatalf("the reference decoder reads %q, %v", ref, ok)
		}
	})
}
