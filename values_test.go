package ermc

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The value layer: lz4 in python-lz4's block format, TTLs and keys.

var updatePyLZ4 = flag.Bool("update-pylz4", false, "rewrite testdata/pylz4/go_*.lz4 with appendCompressed output")

// lcgText mirrors lcg_text in testdata/pylz4/gen.py: pseudo-random but
// compressible bytes from a fixed seed.
func lcgText(n int, seed uint64) []byte {
	words := []string{"alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta ", "eta\n", "theta, "}
	x := seed
	out := make([]byte, 0, n+16)
	for i := 1; len(out) < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
		out = append(out, words[x>>61]...)
		if i%16 == 0 {
			out = append(out, byte(x>>33))
		}
	}
	return out[:n]
}

func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func TestCompressRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 2, 3, 4, 5, 12, 15, 16, 17, 64, 100, 1000, 4096, 15 << 10, 16 << 10, 64 << 10, 1_000_000}
	kinds := []struct {
		name string
		gen  func(n int) []byte
		// compressible: appendCompressed must accept sizes from this on.
		compressibleFrom int
	}{
		{"random", func(n int) []byte { return randomBytes(n, int64(n)) }, -1},
		{"zeros", func(n int) []byte { return make([]byte, n) }, 32},
		{"repetitive", func(n int) []byte { return []byte(strings.Repeat("0123456789abcdef", n/16+1)[:n]) }, 64},
		{"lcg text", func(n int) []byte { return lcgText(n, 7) }, 4096},
	}
	for _, k := range kinds {
		for _, n := range sizes {
			value := k.gen(n)
			prefix := []byte("keep")
			packed, ok := appendCompressed(append([]byte(nil), prefix...), value)
			require.Equal(t, prefix, packed[:len(prefix)], "%s/%d: prefix kept", k.name, n)
			if !ok {
				assert.Len(t, packed, len(prefix), "%s/%d: refused compression leaves dst unchanged", k.name, n)
				assert.False(t, k.compressibleFrom >= 0 && n >= k.compressibleFrom, "%s/%d: compressible value not compressed", k.name, n)
				continue
			}
			frame := packed[len(prefix):]
			assert.Less(t, len(frame), n, "%s/%d: kept only if smaller", k.name, n)
			assert.Equal(t, uint32(n), binary.LittleEndian.Uint32(frame), "%s/%d: little-endian length prefix", k.name, n)

			out, err := appendDecompressed([]byte("dst:"), frame, n)
			require.NoError(t, err, "%s/%d", k.name, n)
			assert.True(t, bytes.Equal(value, out[4:]), "%s/%d: round trip", k.name, n)
			assert.Equal(t, "dst:", string(out[:4]))

			// The frame is also a plain lz4 block after its 4 bytes, as
			// python-lz4 reads it.
			plain := make([]byte, n)
			m, err := lz4.UncompressBlock(frame[4:], plain)
			require.NoError(t, err)
			assert.Equal(t, n, m)
		}
	}
}

func TestAppendCompressedRefusesWhenNotSmaller(t *testing.T) {
	for _, n := range []int{0, 1, 8, 100, 15 << 10, 1 << 20} {
		value := randomBytes(n, 99)
		dst := make([]byte, 3, 8)
		copy(dst, "abc")
		out, ok := appendCompressed(dst, value)
		assert.False(t, ok, "random %d bytes do not compress", n)
		assert.Equal(t, "abc", string(out), "dst unchanged")
	}
	// Just at the edge: a frame the same size as the value is refused.
	for n := 1; n < 64; n++ {
		value := bytes.Repeat([]byte{'z'}, n)
		out, ok := appendCompressed(nil, value)
		if ok {
			assert.Less(t, len(out), n, "%d bytes: a kept frame is strictly smaller", n)
		}
	}
}

func TestAppendDecompressedRejects(t *testing.T) {
	value := []byte(strings.Repeat("hello lz4 ", 100))
	frame, ok := appendCompressed(nil, value)
	require.True(t, ok)

	withLen := func(n uint32) []byte {
		f := append([]byte(nil), frame...)
		binary.LittleEndian.PutUint32(f, n)
		return f
	}
	cases := []struct {
		name   string
		src    []byte
		max    int
		target error
	}{
		{"empty", nil, 1 << 20, ErrCorruptValue},
		{"1 byte", []byte{1}, 1 << 20, ErrCorruptValue},
		{"3 bytes", []byte{1, 0, 0}, 1 << 20, ErrCorruptValue},
		{"header only, nonzero length", []byte{3, 0, 0, 0}, 1 << 20, ErrCorruptValue},
		{"truncated block", frame[:len(frame)-3], 1 << 20, ErrCorruptValue},
		{"half a block", frame[:len(frame)/2], 1 << 20, ErrCorruptValue},
		{"declared one byte more", withLen(uint32(len(value) + 1)), 1 << 20, ErrCorruptValue},
		{"declared one byte less", withLen(uint32(len(value) - 1)), 1 << 20, ErrCorruptValue},
		{"declared zero", withLen(0), 1 << 20, ErrCorruptValue},
		{"declared half", withLen(uint32(len(value) / 2)), 1 << 20, ErrCorruptValue},
		// token: 1 literal, match of 4; offset 5 points before the output.
		{"offset before the start", []byte{10, 0, 0, 0, 0x10, 'a', 5, 0}, 1 << 20, ErrCorruptValue},
		{"zero offset", []byte{10, 0, 0, 0, 0x10, 'a', 0, 0}, 1 << 20, ErrCorruptValue},
		{"literal run past the input", []byte{10, 0, 0, 0, 0xA0, 'a', 'b'}, 1 << 20, ErrCorruptValue},
		{"declared over max", withLen(1001), 1000, ErrValueTooLarge},
		{"declared 2^32-1 over max", withLen(0xffffffff), 1 << 20, ErrValueTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte("prefix")
			out, err := appendDecompressed(dst, tc.src, tc.max)
			require.Error(t, err)
			assert.ErrorIs(t, err, tc.target)
			assert.ErrorIs(t, err, ErrCorruptValue, "every undecodable stored value is a corrupt value")
			assert.Equal(t, "prefix", string(out), "dst is returned unchanged")
		})
	}
}

func TestAppendDecompressedOverMaxDoesNotAllocate(t *testing.T) {
	const max = 8 << 20
	src := []byte{0, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(src, max+1)

	out, err := appendDecompressed(nil, src, max)
	require.ErrorIs(t, err, ErrValueTooLarge)
	assert.Zero(t, cap(out), "no buffer was made for the declared length")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const runs = 20
	for i := 0; i < runs; i++ {
		_, _ = appendDecompressed(nil, src, max)
	}
	runtime.ReadMemStats(&after)
	// One buffer of the declared size would be 8 MiB per run; the error
	// message is a few hundred bytes.
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "bytes allocated over %d refusals", runs)

	if !raceEnabled {
		allocs := testing.AllocsPerRun(20, func() { _, _ = appendDecompressed(nil, src, max) })
		assert.LessOrEqual(t, allocs, 8.0, "only the error is allocated")
	}
}

func TestAppendDecompressedAtMax(t *testing.T) {
	value := bytes.Repeat([]byte("x"), 1000)
	frame, ok := appendCompressed(nil, value)
	require.True(t, ok)
	out, err := appendDecompressed(nil, frame, 1000)
	require.NoError(t, err)
	assert.Equal(t, value, out)
	_, err = appendDecompressed(nil, frame, 999)
	assert.ErrorIs(t, err, ErrValueTooLarge)
}

func TestAppendDecompressedMutationsNeverMisdecode(t *testing.T) {
	// Whatever a corrupted frame holds, the result is either an error or
	// exactly the declared number of bytes; never a panic, never more.
	value := lcgText(20_000, 3)
	frame, ok := appendCompressed(nil, value)
	require.True(t, ok)
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 3000; i++ {
		f := append([]byte(nil), frame...)
		for j := rng.Intn(4); j >= 0; j-- {
			pos := 4 + rng.Intn(len(f)-4)
			f[pos] ^= byte(1 + rng.Intn(255))
		}
		if rng.Intn(4) == 0 {
			f = f[:4+rng.Intn(len(f)-4)]
		}
		out, err := appendDecompressed(nil, f, 1<<20)
		if err != nil {
			assert.ErrorIs(t, err, ErrCorruptValue)
			assert.Empty(t, out)
			continue
		}
		assert.Len(t, out, len(value))
	}
}

// pyFixtureOriginals mirrors ORIGINALS in testdata/pylz4/gen.py, with the
// sha256 gen.py printed for each.
var pyFixtureOriginals = []struct {
	name   string
	data   []byte
	sha256 string
}{
	{"empty", []byte{}, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	{"text200", []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 5)[:200]), "3271f5cd2dac066cb860eab460cc718626e93068c4aa1a15044720de48859e58"},
	{"repeat15k", []byte(strings.Repeat("0123456789abcdef", 960)), "2785b914af5278cb9fc3e796710a93d458115cce3b470d6a57d7df2e973cf99d"},
	{"lcg100k", lcgText(100_000, 42), "3f8f073c83c16b455332cc8e0f1de4bb319bc513ec5ce358b6aff189e11f6795"},
}

func TestPyLZ4Fixtures(t *testing.T) {
	dir := filepath.Join("testdata", "pylz4")
	for _, fx := range pyFixtureOriginals {
		t.Run(fx.name, func(t *testing.T) {
			sum := sha256.Sum256(fx.data)
			require.Equal(t, fx.sha256, hex.EncodeToString(sum[:]), "Go rebuilds the same original as gen.py")

			files := []string{"py_" + fx.name + ".lz4"}
			if fx.name == "lcg100k" {
				files = append(files, "py_lcg100k_hc.lz4")
			}
			for _, file := range files {
				packed, err := os.ReadFile(filepath.Join(dir, file))
				require.NoError(t, err)
				assert.Equal(t, uint32(len(fx.data)), binary.LittleEndian.Uint32(packed), "%s: python-lz4 length prefix", file)
				out, err := appendDecompressed(nil, packed, DefaultMaxValueLength)
				require.NoError(t, err, file)
				assert.True(t, bytes.Equal(fx.data, out), "%s decodes to the original", file)

				// And through a Get reply, as a value a Python service stored.
				reply := append([]byte("VALUE k 8 "+strconv.Itoa(len(packed))+"\r\n"), packed...)
				reply = append(reply, "\r\nEND\r\n"...)
				o := feed(t, &request{op: opGet, key: "k", maxValue: DefaultMaxValueLength}, reply)
				require.NoError(t, o.err)
				require.NoError(t, o.rerr)
				assert.True(t, o.Dst == string(fx.data), "%s through the parser", file)
			}

			goFile := filepath.Join(dir, "go_"+fx.name+".lz4")
			if *updatePyLZ4 {
				packed, ok := appendCompressed(nil, fx.data)
				if ok {
					require.NoError(t, os.WriteFile(goFile, packed, 0o644))
				} else {
					t.Logf("%s: appendCompressed keeps it raw; no go_ fixture", fx.name)
				}
			}
			packed, err := os.ReadFile(goFile)
			if os.IsNotExist(err) {
				_, ok := appendCompressed(nil, fx.data)
				require.False(t, ok, "%s compresses, so go_%s.lz4 should be committed", fx.name, fx.name)
				return
			}
			require.NoError(t, err)
			out, err := appendDecompressed(nil, packed, DefaultMaxValueLength)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(fx.data, out), "go_%s.lz4 decodes to the original", fx.name)
		})
	}
}

func TestExptime(t *testing.T) {
	cases := []struct {
		ttl  time.Duration
		want int64
	}{
		{0, 0},
		{-time.Nanosecond, -1},
		{-time.Second, -1},
		{-365 * 24 * time.Hour, -1},
		{time.Nanosecond, 1},
		{500 * time.Millisecond, 1},
		{time.Second, 1},
		{1500 * time.Millisecond, 2},
		{2 * time.Second, 2},
		{time.Hour, 3600},
		{30*24*time.Hour - time.Second, 2591999},
		{30*24*time.Hour - 500*time.Millisecond, 2592000},
		{30 * 24 * time.Hour, 2592000}, // exactly 30 days is still relative
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, exptime(tc.ttl), "exptime(%v)", tc.ttl)
	}

	for _, ttl := range []time.Duration{30*24*time.Hour + time.Nanosecond, 30*24*time.Hour + time.Second, 31 * 24 * time.Hour, 365 * 24 * time.Hour} {
		secs := int64((ttl + time.Second - 1) / time.Second)
		before := time.Now().Unix()
		got := exptime(ttl)
		after := time.Now().Unix()
		assert.GreaterOrEqual(t, got, before+secs, "exptime(%v) is absolute: now + ttl", ttl)
		assert.LessOrEqual(t, got, after+secs, "exptime(%v)", ttl)
		assert.Greater(t, got, int64(30*24*3600), "memcached must read it as a Unix time")
	}
}

func TestValidKey(t *testing.T) {
	valid := []string{"a", "foo", "foo:bar/baz", "!~", "ключ", "\x80\xff", strings.Repeat("k", 250)}
	for _, k := range valid {
		assert.True(t, validKey(k, 250), "%q", k)
	}
	invalid := []string{"", " ", "a b", "a\tb", "a\nb", "a\rb", "a\r\nb", "\x00", "a\x00", "\x7f", "a\x1f", strings.Repeat("k", 251)}
	for _, k := range invalid {
		assert.False(t, validKey(k, 250), "%q", k)
	}
	assert.True(t, validKey("abc", 3))
	assert.False(t, validKey("abcd", 3))
	assert.False(t, validKey("a", 0))
}
