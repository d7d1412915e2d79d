package ermc

import "github.com/valyala/bytebufferpool"

// Pooled byte buffers for transient encodings (compressed values, encoded
// objects). bytebufferpool calibrates its default size to the sizes in use
// and drops outsized buffers, so a rare huge value does not pin memory.

func getBuffer() *bytebufferpool.ByteBuffer { return bytebufferpool.Get() }

func putBuffer(b *bytebufferpool.ByteBuffer) { bytebufferpool.Put(b) }
