package ermc

import (
	"math/bits"
	"sync"
)

// Pooled byte buffers for transient encodings (compressed values, typed
// values). Pools are kept by size class, powers of two from 1 KiB, so a
// 16 KiB compression buffer is reused however many small buffers the
// process also uses (TestAllocsAfterPoolCalibration).

const (
	minBufferShift = 10 // smallest class: 1 KiB
	bufferClasses  = 12 // largest class: 2 MiB; larger buffers are not kept
)

// buffer is what the pools hold: a pointer, so Get and Put do not allocate.
type buffer struct{ B []byte }

var bufferPools [bufferClasses]sync.Pool

// classFor is the smallest class whose buffers hold n bytes, or -1.
func classFor(n int) int {
	c := 0
	if n > 1<<minBufferShift {
		c = bits.Len(uint(n-1)) - minBufferShift
	}
	if c >= bufferClasses {
		return -1
	}
	return c
}

// getBuffer returns an empty buffer with room for at least n bytes.
func getBuffer(n int) *buffer {
	c := classFor(n)
	if c < 0 {
		return &buffer{B: make([]byte, 0, n)}
	}
	if b, ok := bufferPools[c].Get().(*buffer); ok {
		return b
	}
	return &buffer{B: make([]byte, 0, 1<<(c+minBufferShift))}
}

// putBuffer returns b to the class its capacity fills, whatever it grew
// to while in use.
func putBuffer(b *buffer) {
	n := cap(b.B)
	if n < 1<<minBufferShift {
		return
	}
	c := bits.Len(uint(n)) - 1 - minBufferShift // the class n fills completely
	if c >= bufferClasses {
		return
	}
	b.B = b.B[:0]
	bufferPools[c].Put(b)
}
