package ermc

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBufferClasses: a buffer always has room for what was asked, and goes
// back to a class it fills completely, so a class never hands out less
// than its size.
func TestBufferClasses(t *testing.T) {
	for _, n := range []int{0, 1, 1023, 1024, 1025, 4096, 15 << 10, 1 << 21, 1<<21 + 1} {
		b := getBuffer(n)
		require.Empty(t, b.B, "getBuffer(%d): len", n)
		require.GreaterOrEqual(t, cap(b.B), n, "getBuffer(%d): cap", n)
		b.B = append(b.B, make([]byte, n)...)
		putBuffer(b)
	}
	for c := 0; c < bufferClasses; c++ {
		size := 1 << (c + minBufferShift)
		require.Equal(t, c, classFor(size), "classFor(%d)", size)
		got := classFor(size + 1)
		require.True(t, got == c+1 || (c+1 == bufferClasses && got == -1), "classFor(%d) = %d", size+1, got)
	}
	odd := &buffer{B: make([]byte, 0, 3000)} // fills the 2 KiB class, not the 4 KiB one
	putBuffer(odd)
	for i := 0; i < 4; i++ {
		b := getBuffer(4096)
		require.GreaterOrEqual(t, cap(b.B), 4096, "a 4 KiB request got too few bytes")
	}
}
