package ermc

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCapturedSeedOps: every entry fuzz/capture wrote for the reply
// targets (testdata/fuzz/<Target>/mc<version>-<op>-...) carries the op
// byte of the operation its name says, as the target decodes it. Op
// bytes are opcodes (parser targets) or fuzzOps indexes (client
// targets); when either moves without capturing again, the entries
// feed one operation's reply to another, and this fails.
func TestCapturedSeedOps(t *testing.T) {
	byName := map[string]opcode{"get": opGet, "gets": opGets, "gat": opGat, "multi": opGetMulti,
		"incr": opIncr, "set": opSet, "delete": opDelete, "stats": opStats, "version": opVersion}
	noop, err := New("", Options{Protocol: Noop})
	if err != nil {
		t.Fatal(err)
	}
	clientOp := func(op uint8) opcode { return fuzzOps[int(op)%len(fuzzOps)](noop, "a").op }
	decode := map[string]func(op uint8) opcode{
		"FuzzTextReply":    func(op uint8) opcode { return textFuzzRequest(op).op },
		"FuzzBinaryReply":  func(op uint8) opcode { return binFuzzRequest(op).op },
		"FuzzClientText":   clientOp,
		"FuzzClientBinary": clientOp,
		"FuzzClientUltra":  clientOp,
	}
	for target, opOf := range decode {
		paths, err := filepath.Glob(filepath.Join("testdata", "fuzz", target, "mc*-*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(paths) == 0 {
			t.Errorf("%s: no captured entries", target)
		}
		for _, p := range paths {
			name := filepath.Base(p)
			_, rest, _ := strings.Cut(name, "-") // after mc<version>
			opName, _, _ := strings.Cut(rest, "-")
			want, ok := byName[opName]
			if !ok {
				t.Errorf("%s/%s: no operation %q", target, name, opName)
				continue
			}
			b, err := seedOpByte(p)
			if err != nil {
				t.Errorf("%s/%s: %v", target, name, err)
				continue
			}
			if got := opOf(b); got != want {
				t.Errorf("%s/%s: op byte %d is %v for the target, want %v", target, name, b, got, want)
			}
		}
	}
}

// seedOpByte reads the first value of a corpus entry, a byte.
func seedOpByte(path string) (uint8, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	lines := strings.Split(string(data), "\n")
	if len(lines) < 2 || lines[0] != "go test fuzz v1" ||
		!strings.HasPrefix(lines[1], "byte(") || !strings.HasSuffix(lines[1], ")") {
		return 0, strconv.ErrSyntax
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "byte("), ")"))
	if err != nil {
		return 0, err
	}
	r, _ := utf8.DecodeRuneInString(s)
	if r > 255 {
		return 0, strconv.ErrRange
	}
	return uint8(r), nil
}
