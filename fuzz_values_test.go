package ermc

import (
	"testing"
)

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
