// Command capture records what a real memcached sends and writes it as
// seed corpus entries ("go test fuzz v1") for ermc's fuzz targets. The
// committed corpora were captured from memcached 1.6.18. From the
// repository root:
//
//	go run ./fuzz/capture                  # writes testdata/fuzz/<Target>/mc<version>-*
//	go run ./fuzz/capture -memcached /path/to/memcached -out testdata/fuzz -src .
//
// It starts its own memcached servers on free loopback ports (a default
// one, one with a 1 KiB item size, one with 2 MB and no eviction, one with
// a connection limit), prepares items with an ermc client, then runs the
// operation to capture with a second ermc client whose connections record
// every byte the server sends. The replies therefore answer exactly the
// requests ermc sends (keys, binary opaques), which is what the fuzz
// targets replay. Pipelined Ultra streams are captured over a raw
// connection.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ermc-go/ermc"
)

// ops are the operations of the client fuzz targets, by index: they must
// match fuzzOps in fuzz_client_test.go. parserOp names the same
// operation's opcode constant in request.go, the op byte of the parser
// targets; its value is read from the source (opcodes.go).
var ops = []struct {
	name     string
	parserOp string
	run      func(c *ermc.Client) error
}{
	{"get", "opGet", func(c *ermc.Client) error { _, err := c.Get(ctx, "a", nil); return err }},
	{"gets", "opGets", func(c *ermc.Client) error { _, _, err := c.Gets(ctx, "a", nil); return err }},
	{"gat", "opGat", func(c *ermc.Client) error { _, err := c.GetAndTouch(ctx, "a", time.Minute, nil); return err }},
	{"multi", "opGetMulti", func(c *ermc.Client) error {
		return c.GetMulti(ctx, []string{"a", "a2"}, func(int, []byte) {})
	}},
	{"incr", "opIncr", func(c *ermc.Client) error { _, err := c.Incr(ctx, "a", 1); return err }},
	{"set", "opSet", func(c *ermc.Client) error { return c.Set(ctx, "a", []byte("v"), 0) }},
	{"delete", "opDelete", func(c *ermc.Client) error { return c.Delete(ctx, "a") }},
	{"stats", "opStats", func(c *ermc.Client) error { _, err := c.Stats(ctx); return err }},
	{"version", "opVersion", func(c *ermc.Client) error { _, err := c.Version(ctx); return err }},
}

// parserOps resolves the parserOp of every op in the package source in dir.
func parserOps(dir string) ([]uint8, error) {
	consts, err := opcodes(dir)
	if err != nil {
		return nil, err
	}
	out := make([]uint8, len(ops))
	for i, op := range ops {
		b, ok := consts[op.parserOp]
		if !ok {
			return nil, fmt.Errorf("op %s: no opcode %s in %s", op.name, op.parserOp, dir)
		}
		out[i] = b
	}
	return out, nil
}

var ctx = context.Background()

// capture is one reply to record: on which server, after which setup,
// for which operation (an index in ops, or a custom run).
type capture struct {
	name     string
	server   string // "", "small" (-I 1k), "full" (-M -m 2), "limit" (-c 20)
	compress bool   // setup stores values lz4-compressed (python-lz4 format, flag 8)
	setup    func(c *ermc.Client) error
	op       int
	run      func(c *ermc.Client) error // instead of ops[op].run
}

func set(kv ...string) func(c *ermc.Client) error {
	return func(c *ermc.Client) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := c.Set(ctx, kv[i], []byte(kv[i+1]), 0); err != nil {
				return err
			}
		}
		return nil
	}
}

func del(keys ...string) func(c *ermc.Client) error {
	return func(c *ermc.Client) error {
		for _, k := range keys {
			if err := c.Delete(ctx, k); err != nil && !errors.Is(err, ermc.ErrCacheMiss) {
				return err
			}
		}
		return nil
	}
}

func then(fns ...func(c *ermc.Client) error) func(c *ermc.Client) error {
	return func(c *ermc.Client) error {
		for _, fn := range fns {
			if err := fn(c); err != nil {
				return err
			}
		}
		return nil
	}
}

var compressible = strings.Repeat("compressible text, ", 20)

var captures = []capture{
	{name: "get-hit", setup: set("a", "hello"), op: 0},
	{name: "get-miss", setup: del("a"), op: 0},
	{name: "get-empty-value", setup: set("a", ""), op: 0},
	{name: "get-binary-value", setup: set("a", "\r\nEND\r\n\x00\x81\xff VALUE a 0 1"), op: 0},
	{name: "get-3000-bytes", setup: set("a", strings.Repeat("0123456789", 300)), op: 0},
	{name: "get-over-fuzz-max", setup: set("a", strings.Repeat("x", 6000)), op: 0},
	{name: "get-compressed", compress: true, setup: set("a", compressible), op: 0},
	{name: "multi-compressed", compress: true, setup: set("a", "A", "a2", compressible), op: 3},
	{name: "get-after-decr-padding", setup: then(set("a", "10"), func(c *ermc.Client) error {
		_, err := c.Decr(ctx, "a", 1)
		return err
	}), op: 0},
	{name: "gets-hit", setup: set("a", "hello"), op: 1},
	{name: "gets-miss", setup: del("a"), op: 1},
	{name: "gat-hit", setup: set("a", "hello"), op: 2},
	{name: "gat-miss", setup: del("a"), op: 2},
	{name: "multi-both", setup: set("a", "A", "a2", "A2"), op: 3},
	{name: "multi-second", setup: then(del("a"), set("a2", "A2")), op: 3},
	{name: "multi-none", setup: del("a", "a2"), op: 3},
	{name: "incr-hit", setup: set("a", "41"), op: 4},
	{name: "incr-miss", setup: del("a"), op: 4},
	{name: "incr-wraps", setup: set("a", "18446744073709551615"), op: 4},
	{name: "incr-non-numeric", setup: set("a", "abc"), op: 4},
	{name: "set-stored", setup: del("a"), op: 5},
	{name: "delete-hit", setup: set("a", "hello"), op: 6},
	{name: "delete-miss", setup: del("a"), op: 6},
	{name: "stats", op: 7},
	{name: "version", op: 8},
	{name: "set-too-large", server: "small", op: 5, run: func(c *ermc.Client) error {
		return c.Set(ctx, "a", make([]byte, 4000), 0)
	}},
	{name: "set-out-of-memory", server: "full", op: 5, setup: func(c *ermc.Client) error {
		for i := 0; i < 50; i++ {
			if err := c.Set(ctx, fmt.Sprintf("fill-%d", i), make([]byte, 500_000), 0); err != nil {
				return nil // full: the captured set fails the same way
			}
		}
		return errors.New("memcached -M -m 2 never ran out of memory")
	}, run: func(c *ermc.Client) error { return c.Set(ctx, "a", make([]byte, 500_000), 0) }},
	{name: "get-connection-limit", server: "limit", op: 0},
}

// ultraStreams are pipelined exchanges for FuzzUltraReplies: three
// requests of the given kinds (0 get, 1 gets, 2 multi-get of k and k2,
// 3 incr by 1) for keys a, b and c, written at once.
var ultraStreams = []struct {
	name  string
	kinds [3]int
	setup func(c *ermc.Client) error
}{
	{"get-gets-multi", [3]int{0, 1, 2}, set("a", "A", "b", "B", "c", "C", "c2", "C2")},
	{"all-miss", [3]int{0, 0, 0}, del("a", "b", "c")},
	{"incr-get-incr", [3]int{3, 0, 3}, then(set("a", "41", "b", "B"), del("c"))},
	{"multi-multi-gets", [3]int{2, 2, 1}, then(set("a2", "A2", "b", "B", "b2", "B2", "c", "C"), del("a"))},
	{"incr-non-numeric-between", [3]int{0, 3, 0}, set("a", "A", "b", "not a number", "c", "C")},
}

func main() {
	bin := flag.String("memcached", "memcached", "memcached binary")
	out := flag.String("out", "testdata/fuzz", "corpus root (testdata/fuzz of the ermc package)")
	src := flag.String("src", ".", "source directory of the ermc package, for its opcodes")
	flag.Parse()
	parserOp, err := parserOps(*src)
	if err != nil {
		log.Fatal(err)
	}

	servers := map[string]*server{}
	for name, args := range map[string][]string{
		"":      nil,
		"small": {"-I", "1k", "-o", "slab_chunk_max=512"},
		"full":  {"-M", "-m", "2"},
		"limit": {"-c", "20"},
	} {
		s, err := startMemcached(*bin, args...)
		if err != nil {
			log.Fatal(err)
		}
		defer s.stop()
		servers[name] = s
	}
	version, err := serverVersion(servers[""].addr)
	if err != nil {
		log.Fatal(err)
	}
	prefix := "mc" + version + "-"
	w := &writer{root: *out, parserOp: parserOp}

	for _, proto := range []ermc.Protocol{ermc.Text, ermc.Binary} {
		for _, cp := range captures {
			srv := servers[cp.server]
			if cp.server == "limit" {
				release := srv.fill()
				reply := record(srv.addr, proto, false, nil, ops[cp.op].run)
				release()
				w.reply(proto, prefix+cp.name, cp.op, reply)
				continue
			}
			run := ops[cp.op].run
			if cp.run != nil {
				run = cp.run
			}
			reply := record(srv.addr, proto, cp.compress, cp.setup, run)
			w.reply(proto, prefix+cp.name, cp.op, reply)
		}
	}
	for _, us := range ultraStreams {
		stream := pipelined(servers[""].addr, us.kinds, us.setup)
		ops := us.kinds[0] | us.kinds[1]<<2 | us.kinds[2]<<4
		w.write("FuzzUltraReplies", prefix+us.name, ops, 7, stream)
	}
	w.pylz4("testdata/pylz4")
	log.Printf("wrote %d corpus entries under %s", w.n, *out)
}

// record runs setup on a plain client, then run on a client whose
// connection records what the server sends, and returns that.
func record(addr string, proto ermc.Protocol, compress bool, setup, run func(c *ermc.Client) error) []byte {
	if setup != nil {
		opts := ermc.Options{Protocol: proto}
		if compress {
			opts.CompressThreshold = 10
		}
		c, err := ermc.New(addr, opts)
		if err != nil {
			log.Fatal(err)
		}
		if err := setup(c); err != nil {
			log.Fatalf("setup on %s: %v", addr, err)
		}
		c.Close()
	}
	var mu sync.Mutex
	var got bytes.Buffer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &recorder{Conn: nc, mu: &mu, buf: &got}, nil
	}
	c, err := ermc.New(addr, ermc.Options{Protocol: proto, MaxConns: 1, DialContext: dial, Timeout: 2 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	_ = run(c) // the reply is what matters, whatever it means
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	return append([]byte(nil), got.Bytes()...)
}

// recorder is a connection that keeps a copy of everything read.
type recorder struct {
	net.Conn
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.buf.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

// pipelined writes the three requests of kinds at once over a raw
// connection and returns everything memcached sends until it goes quiet.
func pipelined(addr string, kinds [3]int, setup func(c *ermc.Client) error) []byte {
	c, err := ermc.New(addr, ermc.Options{})
	if err != nil {
		log.Fatal(err)
	}
	if err := setup(c); err != nil {
		log.Fatal(err)
	}
	c.Close()
	var req bytes.Buffer
	for i, kind := range kinds {
		k := string(rune('a' + i))
		fmt.Fprintf(&req, "%s\r\n", []string{"get " + k, "gets " + k, "get " + k + " " + k + "2", "incr " + k + " 1"}[kind])
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write(req.Bytes()); err != nil {
		log.Fatal(err)
	}
	return readUntilQuiet(nc)
}

// readUntilQuiet reads until the peer sends nothing for a while.
func readUntilQuiet(nc net.Conn) []byte {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		_ = nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := nc.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out
		}
	}
}

// writer writes corpus entries.
type writer struct {
	root     string
	parserOp []uint8 // op byte of the parser targets for each of ops
	n        int
}

// reply writes a captured reply for the parser target and the client
// target(s) of proto.
func (w *writer) reply(proto ermc.Protocol, name string, op int, reply []byte) {
	if len(reply) == 0 {
		log.Fatalf("%s (%v): nothing captured", name, proto)
	}
	if proto == ermc.Binary {
		w.write("FuzzBinaryReply", name, int(w.parserOp[op]), 0, reply)
		w.write("FuzzClientBinary", name, op, 7, reply)
		return
	}
	w.write("FuzzTextReply", name, int(w.parserOp[op]), 0, reply)
	w.write("FuzzClientText", name, op, 7, reply)
	w.write("FuzzClientUltra", name, op, 7, reply)
}

// write writes one entry of a target taking (op uint8, chunk uint8, reply []byte).
func (w *writer) write(target, name string, op, chunk int, data []byte) {
	entry := fmt.Sprintf("go test fuzz v1\nbyte(%q)\nbyte(%q)\n[]byte(%s)\n", rune(op), rune(chunk), strconv.Quote(string(data)))
	w.file(target, name, entry)
}

func (w *writer) file(target, name, entry string) {
	dir := filepath.Join(w.root, target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(entry), 0o644); err != nil {
		log.Fatal(err)
	}
	w.n++
}

// pylz4 writes the small python-lz4 fixtures as FuzzDecompress entries
// (maxLen uint16, prefix []byte, src []byte): real python-lz4 output.
func (w *writer) pylz4(dir string) {
	for _, name := range []string{"py_empty.lz4", "py_text200.lz4", "py_repeat15k.lz4", "go_text200.lz4"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			log.Fatal(err)
		}
		entry := fmt.Sprintf("go test fuzz v1\nuint16(65535)\n[]byte(\"\")\n[]byte(%s)\n", strconv.Quote(string(data)))
		w.file("FuzzDecompress", "pylz4-"+strings.TrimSuffix(name, ".lz4"), entry)
	}
}

// server is a memcached this program started.
type server struct {
	addr string
	cmd  *exec.Cmd
}

func startMemcached(bin string, extra ...string) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	args := append([]string{"-l", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "0", "-t", "2"}, extra...)
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if nc, err := net.Dial("tcp", s.addr); err == nil {
			nc.Close()
			return s, nil
		}
	}
	s.stop()
	return nil, fmt.Errorf("memcached %v did not start", extra)
}

func (s *server) stop() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// fill holds connections until memcached refuses one; release closes them.
func (s *server) fill() (release func()) {
	var held []net.Conn
	for len(held) < 1000 {
		nc, err := net.Dial("tcp", s.addr)
		if err != nil {
			log.Fatal(err)
		}
		_ = nc.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprint(nc, "version\r\n")
		line, _ := bufio.NewReader(nc).ReadString('\n')
		_ = nc.SetDeadline(time.Time{})
		if !strings.HasPrefix(line, "VERSION") {
			nc.Close()
			break
		}
		held = append(held, nc)
	}
	return func() {
		for _, nc := range held {
			nc.Close()
		}
		time.Sleep(100 * time.Millisecond) // let memcached count them closed
	}
}

func serverVersion(addr string) (string, error) {
	c, err := ermc.New(addr, ermc.Options{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.Version(ctx)
}
