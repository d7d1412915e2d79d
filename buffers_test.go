package ermc

import "testing"

// TestBufferClasses: a buffer always has room for what was asked, and goes
// back to a class it fills completely, so a class never hands out less
// than its size.
func TestBufferClasses(t *testing.T) {
	for _, n := range []int{0, 1, 1023, 1024, 1025, 4096, 15 << 10, 1 << 21, 1<<21 + 1} {
		b := getBuffer(n)
		if cap(b.B) < n || len(b.B) != 0 {
			t.Fatalf("getBuffer(%d): len %d cap %d", n, len(b.B), cap(b.B))
		}
		b.B = append(b.B, make([]byte, n)...)
		putBuffer(b)
	}
	for c := 0; c < bufferClasses; c++ {
		size := 1 << (c + minBufferShift)
		if got := classFor(size); got != c {
			t.Fatalf("classFor(%d) = %d, want %d", size, got, c)
		}
		if got := classFor(size + 1); got != c+1 && !(c+1 == bufferClasses && got == -1) {
			t.Fatalf("classFor(%d) = %d", size+1, got)
		}
	}
	odd := &buffer{B: make([]byte, 0, 3000)} // fills the 2 KiB class, not the 4 KiB one
	putBuffer(odd)
	for i := 0; i < 4; i++ {
		if b := getBuffer(4096); cap(b.B) < 4096 {
			t.Fatalf("a 4 KiB request got %d bytes", cap(b.B))
		}
	}
}
