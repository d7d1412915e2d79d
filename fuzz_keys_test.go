package ermc

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// FuzzValidKey: a key is accepted exactly when the documented rule says
// (1 to MaxKeyLength bytes, none a space, a control character or DEL);
// an accepted key cannot change the shape of a text command (one line,
// the key one field); and through the public API a refused key is
// ErrMalformedKey on every driver before anything is dialed or sent.
func FuzzValidKey(f *testing.F) {
	var dials atomic.Int32
	refuse := errors.New("no server in this test")
	dial := func(context.Context, string, string) (net.Conn, error) {
		dials.Add(1)
		return nil, refuse
	}
	var clients []*Client
	for _, proto := range wireDrivers {
		c, err := New("127.0.0.1:1", Options{Protocol: proto, DialContext: dial, MaxKeyLength: 40})
		if err != nil {
			f.Fatal(err)
		}
		clients = append(clients, c)
		f.Cleanup(func() { c.Close() })
	}
	f.Add("key", uint8(249))
	f.Add("a b", uint8(10))
	f.Add("k\r\nflush_all", uint8(100))
	f.Add("\x7f", uint8(1))
	f.Add("\xc3\xa9t\xc3\xa9", uint8(4))
	f.Add(strings.Repeat("k", 251), uint8(249))
	f.Fuzz(func(t *testing.T, key string, limit uint8) {
		maxLen := int(limit) + 1 // 1..256
		want := len(key) >= 1 && len(key) <= maxLen
		for i := 0; i < len(key); i++ {
			if key[i] <= 0x20 || key[i] == 0x7f {
				want = false
			}
		}
		if got := validKey(key, maxLen); got != want {
			t.Fatalf("validKey(%q, %d) = %v, want %v", key, maxLen, got, want)
		}
		if want {
			// memcached splits a command on ASCII spaces and ends it at LF.
			line := appendTextRequest(nil, &request{op: opGetMulti, keys: []string{key, key}})
			fields := strings.Split(strings.TrimSuffix(string(line), "\r\n"), " ")
			if bytes.Count(line, []byte("\n")) != 1 || len(fields) != 3 || fields[1] != key || fields[2] != key {
				t.Fatalf("key %q changes the command: %q", key, line)
			}
		}
		before := dials.Load()
		for _, c := range clients {
			_, err := c.Get(bg, key, nil)
			if malformed := errors.Is(err, ErrMalformedKey); malformed != !validKey(key, 40) {
				t.Fatalf("%v: Get(%q): %v", c.opts.Protocol, key, err)
			}
		}
		if !validKey(key, 40) && dials.Load() != before {
			t.Fatalf("a malformed key %q was dialed for", key)
		}
	})
}
