package ermc

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// FuzzValidKey: a key is accepted exactly when the documented rule says
// (1 to MaxKeyLength bytes, none a space, a control character or DEL; on
// Meta such bytes are allowed in keys of at most 186 bytes); an accepted
// key cannot change the shape of a text command (one line, the key one
// field) or of a meta command (one token standing for the key); and
// through the public API a refused key is ErrMalformedKey on every driver
// before anything is dialed or sent.
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
	f.Add(strings.Repeat(" ", 186), uint8(255))
	f.Add(strings.Repeat(" ", 187), uint8(255))
	f.Fuzz(func(t *testing.T, key string, limit uint8) {
		maxLen := int(limit) + 1 // 1..256
		inRange := len(key) >= 1 && len(key) <= maxLen
		textSafe := true
		for i := 0; i < len(key); i++ {
			if key[i] <= 0x20 || key[i] == 0x7f {
				textSafe = false
			}
		}
		want := inRange && textSafe
		if got := validKey(key, maxLen); got != want {
			t.Fatalf("validKey(%q, %d) = %v, want %v", key, maxLen, got, want)
		}
		// Meta: other keys go base64-encoded, at most 186 bytes of them.
		metaWant := inRange && (textSafe || len(key) <= 186)
		if got := validMetaKey(key, maxLen); got != metaWant {
			t.Fatalf("validMetaKey(%q, %d) = %v, want %v", key, maxLen, got, metaWant)
		}
		if metaWant {
			checkMetaKeyToken(t, key)
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
		dialed := false
		for _, c := range clients {
			valid := validKey(key, 40)
			if c.opts.Protocol == Meta {
				valid = validMetaKey(key, 40)
			}
			_, err := c.Get(bg, key, nil)
			if malformed := errors.Is(err, ErrMalformedKey); malformed != !valid {
				t.Fatalf("%v: Get(%q): %v", c.opts.Protocol, key, err)
			}
			dialed = dialed || valid
		}
		if !dialed && dials.Load() != before {
			t.Fatalf("a malformed key %q was dialed for", key)
		}
	})
}

// checkMetaKeyToken checks that a key Meta accepts is one token of a meta
// command (b flagged when base64-encoded, then at most 250 bytes) that
// stands for exactly that key.
func checkMetaKeyToken(t *testing.T, key string) {
	t.Helper()
	line := appendMetaRequest(nil, &request{op: opGet, key: key})
	fields := strings.Split(strings.TrimSuffix(string(line), "\r\n"), " ")
	if bytes.Count(line, []byte("\n")) != 1 || len(fields) < 2 || fields[0] != "mg" {
		t.Fatalf("key %q changes the command: %q", key, line)
	}
	tok := fields[1]
	if !slices.Contains(fields[2:], "b") {
		if tok != key {
			t.Fatalf("key %q goes out as %q", key, tok)
		}
		return
	}
	dec, err := base64.StdEncoding.DecodeString(tok)
	if err != nil || string(dec) != key || len(tok) > 250 {
		t.Fatalf("key %q goes out as %q (%d bytes), which decodes to %q (%v)", key, tok, len(tok), dec, err)
	}
}
