package ermc

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A scripted fake memcached for what a real server cannot be made to do:
// malformed replies, stalls, mid-reply disconnects. It listens on
// 127.0.0.1:0; every accepted connection runs the script with its own
// fakeConn. Everything the server reads is recorded.

type fakeServer struct {
	t      testing.TB
	ln     net.Listener
	Addr   string
	script func(fc *fakeConn)

	done     chan struct{} // closed when the server stops
	requests chan fakeRequest
	wg       sync.WaitGroup

	mu       sync.Mutex
	conns    []*fakeConn
	received bytes.Buffer // every byte read, from all connections
}

// fakeRequest is one command the fake read.
type fakeRequest struct {
	Conn   int      // index of the connection, in accept order
	Line   string   // the command line without CRLF; binary: "bin <opcode> <key>"
	Fields []string // Line split on spaces
	Data   []byte   // a storage command's data block, without CRLF; binary: the value
	Bin    *binHeader
	Key    string // the (first) key
}

// fakeConn is the server side of one accepted connection.
type fakeConn struct {
	N          int // accept order, from 0
	srv        *fakeServer
	nc         net.Conn
	in         []byte        // read from the client, not yet cut into requests
	peerClosed chan struct{} // closed when a read sees EOF or an error
	ended      chan struct{} // closed when the script returned and the fake hung up
	closeOnce  sync.Once
	maxRead    atomic.Int32 // when > 0, each read takes at most this many bytes
}

// startFakeServer starts a fake whose connections run script. It stops
// when t ends: the listener and every connection are closed and the
// scripts are waited for.
func startFakeServer(t testing.TB, script func(fc *fakeConn)) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fake server: %v", err)
	}
	s := &fakeServer{
		t: t, ln: ln, Addr: ln.Addr().String(), script: script,
		done: make(chan struct{}), requests: make(chan fakeRequest, 1024),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(s.stop)
	return s
}

func (s *fakeServer) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		fc := &fakeConn{N: len(s.conns), srv: s, nc: nc, peerClosed: make(chan struct{}), ended: make(chan struct{})}
		s.conns = append(s.conns, fc)
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				fc.nc.Close()
				close(fc.ended)
			}()
			s.script(fc)
		}()
	}
}

func (s *fakeServer) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	s.ln.Close()
	s.mu.Lock()
	for _, fc := range s.conns {
		fc.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Accepted is how many connections the fake has accepted.
func (s *fakeServer) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Received is every byte the fake has read so far.
func (s *fakeServer) Received() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received.String()
}

// Conn returns the i-th accepted connection.
func (s *fakeServer) Conn(i int) *fakeConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.conns) {
		s.t.Fatalf("fake server: connection %d was never accepted (%d were)", i, len(s.conns))
	}
	return s.conns[i]
}

// awaitRequest is WaitRequest for a goroutine other than the test's,
// which must not fail the test: it reports whether a request came within
// the hang guard.
func (s *fakeServer) awaitRequest() bool {
	select {
	case <-s.requests:
		return true
	case <-time.After(hangGuard):
		return false
	}
}

// WaitRequest returns the next request any connection read, failing the
// test if none comes within a generous hang guard.
func (s *fakeServer) WaitRequest() fakeRequest {
	s.t.Helper()
	select {
	case r := <-s.requests:
		return r
	case <-time.After(hangGuard):
		s.t.Fatalf("fake server: no request within %v", hangGuard)
		return fakeRequest{}
	}
}

// WaitPeerClosed fails the test unless the client closes connection i
// within the hang guard: the client discarded it.
func (s *fakeServer) WaitPeerClosed(i int) {
	s.t.Helper()
	select {
	case <-s.Conn(i).peerClosed:
	case <-time.After(hangGuard):
		s.t.Fatalf("fake server: the client did not close connection %d within %v", i, hangGuard)
	}
}

// WaitEnded waits until connection i's script has returned and the fake
// has closed it.
func (s *fakeServer) WaitEnded(i int) {
	s.t.Helper()
	select {
	case <-s.Conn(i).ended:
	case <-time.After(hangGuard):
		s.t.Fatalf("fake server: connection %d still open after %v", i, hangGuard)
	}
}

// hangGuard bounds every wait in these tests. It is not a timing
// assertion: it only turns a hang into a failure.
const hangGuard = 5 * time.Second

// Read records what the client sent and notices when it hangs up.
func (fc *fakeConn) Read(p []byte) (int, error) {
	if m := int(fc.maxRead.Load()); m > 0 && len(p) > m {
		p = p[:m]
	}
	n, err := fc.nc.Read(p)
	if n > 0 {
		fc.srv.mu.Lock()
		fc.srv.received.Write(p[:n])
		fc.srv.mu.Unlock()
	}
	if err != nil {
		fc.closeOnce.Do(func() { close(fc.peerClosed) })
	}
	return n, err
}

// Next reads one text or meta command (and its data block, for storage
// commands). It returns false when the client hung up or the server is
// stopping.
func (fc *fakeConn) Next() (fakeRequest, bool) { return fc.NextAs(Text) }

// Send writes s in one write. Errors are ignored: the client may be gone.
func (fc *fakeConn) Send(s string) {
	_, _ = fc.nc.Write([]byte(s))
}

// Wait blocks until ch is closed or the server stops; it reports whether
// ch was closed.
func (fc *fakeConn) Wait(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-fc.srv.done:
		return false
	}
}

// Stall blocks until the server stops, without reading: the client's
// request hangs.
func (fc *fakeConn) Stall() { <-fc.srv.done }

// Close hangs up.
func (fc *fakeConn) Close() { fc.nc.Close() }

// Serve answers requests like a tiny memcached over a fixed set of values
// until the client hangs up.
func (fc *fakeConn) Serve(values map[string]string) {
	for {
		req, ok := fc.Next()
		if !ok {
			return
		}
		fc.Send(fakeReply(req, values))
	}
}

// fakeReply is a plausible memcached answer to req over values.
func fakeReply(req fakeRequest, values map[string]string) string {
	var b strings.Builder
	switch req.Fields[0] {
	case "get", "gets", "gat":
		keys := req.Fields[1:]
		if req.Fields[0] == "gat" {
			keys = keys[1:] // after the exptime
		}
		for _, k := range keys {
			if v, ok := values[k]; ok {
				fmt.Fprintf(&b, "VALUE %s 0 %d", k, len(v))
				if req.Fields[0] == "gets" {
					b.WriteString(" 1")
				}
				fmt.Fprintf(&b, "\r\n%s\r\n", v)
			}
		}
		b.WriteString("END\r\n")
	case "set", "add", "replace", "append", "prepend", "cas":
		b.WriteString("STORED\r\n")
	case "delete":
		if _, ok := values[req.Fields[1]]; ok {
			b.WriteString("DELETED\r\n")
		} else {
			b.WriteString("NOT_FOUND\r\n")
		}
	case "mg", "ms", "md", "ma", "mn":
		b.WriteString(fakeMetaReply(req, values))
	case "version":
		b.WriteString("VERSION fake\r\n")
	case "stats":
		b.WriteString("STAT pid 1\r\nEND\r\n")
	default:
		b.WriteString("ERROR\r\n")
	}
	return b.String()
}

// fakeMetaReply is a plausible memcached answer to a meta command over
// values. It reads the flags v, c, q, b (a base64 key) and O (echoed);
// a counter it is asked to change becomes 1.
func fakeMetaReply(req fakeRequest, values map[string]string) string {
	if req.Fields[0] == "mn" {
		return "MN\r\n"
	}
	if len(req.Fields) < 2 {
		return "CLIENT_ERROR bad command line format\r\n"
	}
	key, flags := req.Fields[1], map[byte]string{}
	for _, f := range req.Fields[2:] {
		if f != "" {
			flags[f[0]] = f[1:]
		}
	}
	if _, b64 := flags['b']; b64 {
		dec, err := base64.StdEncoding.DecodeString(key)
		if err != nil {
			return "CLIENT_ERROR error decoding key\r\n"
		}
		key = string(dec)
	}
	has := func(f byte) bool { _, ok := flags[f]; return ok }
	line := func(c string) string { // the code, the opaque token echoed, CRLF
		if o, ok := flags['O']; ok {
			c += " O" + o
		}
		return c + "\r\n"
	}
	v, hit := values[key]
	switch req.Fields[0] {
	case "mg":
		switch {
		case !hit && has('q'):
			return ""
		case !hit:
			return line("EN")
		case !has('v'):
			return line("HD")
		}
		head := "VA " + strconv.Itoa(len(v)) + " f0"
		if has('c') {
			head += " c1"
		}
		return line(head) + v + "\r\n"
	case "ms":
		if has('q') {
			return ""
		}
		return line("HD")
	case "md":
		switch {
		case !hit:
			return line("NF")
		case has('q'):
			return ""
		}
		return line("HD")
	case "ma":
		if !has('v') {
			return line("HD")
		}
		return line("VA 1") + "1\r\n"
	}
	return "ERROR\r\n"
}

// metaOpaque is the opaque token of a meta request ("" if none).
func metaOpaque(req fakeRequest) string {
	for _, f := range req.Fields[min(2, len(req.Fields)):] {
		if strings.HasPrefix(f, "O") {
			return f[1:]
		}
	}
	return ""
}

// echoOpaque fills the placeholder "O$" in a scripted meta reply with the
// opaque token of req, the request it answers.
func echoOpaque(req fakeRequest, reply string) string {
	if tok := metaOpaque(req); tok != "" {
		return strings.ReplaceAll(reply, "O$", "O"+tok)
	}
	return reply
}

// ReadSlowly makes the fake read at most n bytes at a time from now on,
// with a small socket receive buffer, so a client's large write is
// accepted by the kernel a little at a time. (Smaller buffers make TCP
// wait for delayed acknowledgements and the tests slow.)
func (fc *fakeConn) ReadSlowly(n int) {
	if tc, ok := fc.nc.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(16 << 10)
	}
	fc.maxRead.Store(int32(n))
}

// NextBinary reads one binary protocol request frame. It returns false
// when the client hung up or the server is stopping.
func (fc *fakeConn) NextBinary() (fakeRequest, bool) { return fc.NextAs(Binary) }

// NextAs reads one request in the wire format of proto: it reads until
// splitRequest finds a whole one in what the client sent.
func (fc *fakeConn) NextAs(proto Protocol) (fakeRequest, bool) {
	var err error
	for {
		if req, n := splitRequest(proto, fc.in); n > 0 {
			fc.in = fc.in[n:]
			req.Conn, req.Data = fc.N, bytes.Clone(req.Data)
			select {
			case fc.srv.requests <- req:
			default:
			}
			return req, true
		}
		if err != nil {
			return fakeRequest{}, false
		}
		err = fc.fill()
	}
}

// fill reads what the client sent next into fc.in, for NextAs.
func (fc *fakeConn) fill() error {
	fc.in = slices.Grow(fc.in, 64<<10)
	n, err := fc.Read(fc.in[len(fc.in):cap(fc.in)])
	fc.in = fc.in[:len(fc.in)+n]
	return err
}

// Started blocks until the client has sent something (kept for NextAs),
// without reading more.
func (fc *fakeConn) Started() {
	for len(fc.in) == 0 && fc.fill() == nil {
	}
}

// splitRequest cuts the first whole request from b, in the wire format of
// proto; n is 0 when b holds none yet. Req.Data aliases b.
func splitRequest(proto Protocol, b []byte) (req fakeRequest, n int) {
	if proto == Binary {
		if len(b) < binHeaderLen {
			return req, 0
		}
		h := decodeBinHeader(b)
		n = binHeaderLen + int(h.bodyLen)
		if len(b) < n {
			return req, 0
		}
		body := b[binHeaderLen:n]
		keyEnd := min(int(h.extLen)+int(h.keyLen), len(body))
		req = fakeRequest{Bin: &h, Key: string(body[min(int(h.extLen), keyEnd):keyEnd]), Data: body[keyEnd:]}
		req.Line = fmt.Sprintf("bin %d %s", h.opcode, req.Key)
		req.Fields = strings.Split(req.Line, " ")
		return req, n
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return req, 0
	}
	n = i + 1
	req.Line = strings.TrimSuffix(string(b[:n]), "\r\n")
	req.Fields = strings.Split(req.Line, " ")
	if len(req.Fields) > 1 {
		req.Key = req.Fields[1]
	}
	switch lenField := 4; req.Fields[0] {
	case "gat": // gat <exptime> <key>*
		if len(req.Fields) > 2 {
			req.Key = req.Fields[2]
		}
	case "ms": // meta: ms <key> <datalen> <flags>*
		lenField = 2
		fallthrough
	case "set", "add", "replace", "append", "prepend", "cas":
		if len(req.Fields) <= lenField {
			break
		}
		size, err := strconv.Atoi(req.Fields[lenField])
		if err != nil {
			break
		}
		if len(b) < n+size+2 {
			return fakeRequest{}, 0
		}
		req.Data = b[n : n+size]
		n += size + 2
	}
	return req, n
}

// ServeAs is Serve in the wire format of proto.
func (fc *fakeConn) ServeAs(proto Protocol, values map[string]string) {
	for {
		req, ok := fc.NextAs(proto)
		if !ok {
			return
		}
		fc.Send(fakeReplyAs(proto, req, values))
	}
}

// fakeReplyAs is fakeReply in the wire format of proto.
func fakeReplyAs(proto Protocol, req fakeRequest, values map[string]string) string {
	if proto != Binary {
		return fakeReply(req, values)
	}
	return string(fakeBinaryReply(req, values))
}

// fakeBinaryReply is a plausible memcached answer to a binary request.
func fakeBinaryReply(req fakeRequest, values map[string]string) []byte {
	h := req.Bin
	v, ok := values[req.Key]
	switch h.opcode {
	case binGet, binGetK, binGetKQ, binGAT:
		key := ""
		if h.opcode == binGetK || h.opcode == binGetKQ {
			key = req.Key
		}
		switch {
		case ok:
			return binResp(h.opcode, 0, h.opaque, 1, be32(0), key, v)
		case h.opcode == binGetKQ:
			return nil // quiet: a miss is not answered
		}
		return binResp(h.opcode, binStatusKeyNotFound, h.opaque, 0, "", "", "Not found")
	case binNoop:
		return binResp(binNoop, 0, h.opaque, 0, "", "", "")
	case binSet, binAdd, binReplace, binAppend, binPrepend:
		return binResp(h.opcode, 0, h.opaque, 2, "", "", "")
	case binDelete:
		if ok {
			return binResp(h.opcode, 0, h.opaque, 0, "", "", "")
		}
		return binResp(h.opcode, binStatusKeyNotFound, h.opaque, 0, "", "", "Not found")
	case binVersion:
		return binResp(h.opcode, 0, h.opaque, 0, "", "", "fake")
	case binStat:
		return join(binResp(binStat, 0, h.opaque, 0, "", "pid", "1"), binResp(binStat, 0, h.opaque, 0, "", "", ""))
	}
	return binResp(h.opcode, binStatusUnknownCommand, h.opaque, 0, "", "", "Unknown command")
}

// replyFirstThenServe is a script: the first connection answers its first
// request with reply, in one write; everything after that gets fresh,
// correct replies. Requests and replies are in proto's wire format.
func replyFirstThenServe(proto Protocol, reply string) func(*fakeConn) {
	return func(fc *fakeConn) {
		if fc.N == 0 {
			if _, ok := fc.NextAs(proto); !ok {
				return
			}
			fc.Send(reply)
		}
		fc.ServeAs(proto, fresh)
	}
}
