package ermc

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Feeding a reply to a resumable parser (parseTextReply, parseMetaReply,
// parseBinaryReply) the way a connection does, for the parser tables, the
// binary frame tests and the fuzz targets alike.

// replyParser is the signature every reply parser shares.
type replyParser func(r *request, buf []byte) (n int, done bool, err error)

// fed is what feeding a reply produced.
type fed struct {
	used   int  // bytes the parser consumed in total
	done   bool // the reply is complete
	err    error
	unused int // bytes it was given but had not consumed when it stopped
	unread int // bytes of the chunks it was never given
}

// feedChunks runs parse over the chunks delivered one after another: bytes
// the parser did not consume stay in front of the next chunk. It stops at
// done or an error. Between calls the consumed bytes are scribbled over, so
// a parser that kept a reference to them produces a wrong value; a parser
// that claims bytes it was not given fails the test.
func feedChunks(t testing.TB, parse replyParser, r *request, chunks [][]byte) fed {
	t.Helper()
	var f fed
	var pending []byte
	for i, c := range chunks {
		pending = append(pending, c...)
		n, done, err := parse(r, pending)
		require.Truef(t, n >= 0 && n <= len(pending), "parser consumed %d of %d bytes", n, len(pending))
		f.used += n
		if done || err != nil {
			f.done, f.err, f.unused = done, err, len(pending)-n
			for _, c := range chunks[i+1:] {
				f.unread += len(c)
			}
			return f
		}
		rest := append([]byte(nil), pending[n:]...)
		for j := range pending {
			pending[j] = 0xEE
		}
		pending = rest
	}
	f.unused = len(pending)
	return f
}

// feedWhole feeds reply step bytes at a time and fails the test unless the
// parser finishes exactly at its end: it neither wants more after the whole
// reply nor leaves bytes over. It returns the parser's error.
func feedWhole(t testing.TB, parse replyParser, r *request, reply []byte, step int) error {
	t.Helper()
	f := feedChunks(t, parse, r, inSteps(reply, step))
	if f.err != nil {
		return f.err
	}
	require.Truef(t, f.done, "parser wants more bytes after the whole %d-byte reply (%d unused)", len(reply), f.unused)
	require.Truef(t, f.unused == 0 && f.unread == 0, "reply complete with %d bytes unused, %d unread", f.unused, f.unread)
	return nil
}

// inSteps cuts reply into chunks of step bytes (the last may be shorter);
// an empty reply is no chunk at all.
func inSteps(reply []byte, step int) [][]byte {
	var chunks [][]byte
	for off := 0; off < len(reply); off += step {
		chunks = append(chunks, reply[off:min(off+step, len(reply))])
	}
	return chunks
}

// splits returns reply cut into chunks at the given positions.
func splits(reply []byte, cuts ...int) [][]byte {
	var chunks [][]byte
	prev := 0
	for _, c := range cuts {
		chunks = append(chunks, reply[prev:c])
		prev = c
	}
	return append(chunks, reply[prev:])
}

// bytewise returns reply as one chunk per byte.
func bytewise(reply []byte) [][]byte { return inSteps(reply, 1) }
