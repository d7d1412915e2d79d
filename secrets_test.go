package ermc

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Secrets never appear in errors, and keys, values and server messages
// appear only as a bounded, escaped excerpt.

const (
	// secretPassword is a password no error message could contain by
	// chance.
	secretPassword = "zQ9-never-print-me-7x"
	// maxErrorLen bounds every error message these tests provoke.
	maxErrorLen = 512
)

// requireNoSecret checks every rendering of err for the password.
func requireNoSecret(t *testing.T, err error, what string) {
	t.Helper()
	require.Error(t, err, what)
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		s := fmt.Sprintf(format, err)
		assert.NotContains(t, s, secretPassword, "%s: the password is in the %s rendering of the error", what, format)
	}
	assert.NotContains(t, err.Error(), secretPassword, what)
}

// authFailure is one way an authentication can go wrong, on one driver.
type authFailure struct {
	name  string
	addr  func(t *testing.T) string
	opts  Options
	check func(t *testing.T, err error) // what the error must be, beyond not leaking
}

func isAuth(t *testing.T, err error) {
	t.Helper()
	assert.ErrorIs(t, err, ErrAuth)
	assert.NotErrorIs(t, err, ErrCacheMiss)
}

// echoText is a fake text server that answers the auth exchange with the
// given reply, in which %s is the auth data it received (user and
// password).
func echoText(reply string) func(t *testing.T) string {
	return func(t *testing.T) string {
		return startFakeServer(t, func(fc *fakeConn) {
			for {
				req, ok := fc.Next()
				if !ok {
					return
				}
				fc.Send(strings.ReplaceAll(reply, "%s", string(req.Data)))
			}
		}).Addr
	}
}

// echoBinary is a fake binary server that answers every request with
// status, echoing the request's body (for SASL_AUTH: the mechanism and
// "\x00user\x00password") as the value.
func echoBinary(status uint16) func(t *testing.T) string {
	return func(t *testing.T) string {
		return startFakeServer(t, func(fc *fakeConn) {
			for {
				req, ok := fc.NextBinary()
				if !ok {
					return
				}
				body := req.Key + string(req.Data) // SASL frames have no extras
				fc.Send(string(binResp(req.Bin.opcode, status, req.Bin.opaque, 0, "", "", body)))
			}
		}).Addr
	}
}

func stalling(t *testing.T) string {
	return startFakeServer(t, func(fc *fakeConn) { fc.Stall() }).Addr
}

func hangingUp(t *testing.T) string {
	return startFakeServer(t, func(fc *fakeConn) {
		buf := make([]byte, 64)
		_, _ = fc.Read(buf) // part of the auth exchange, then hang up
	}).Addr
}

// Every auth failure path on every driver: the password is in no error.
func TestSecretsNeverInAuthErrors(t *testing.T) {
	asciiServer := startMemcachedAuth(t, "alice:the-right-one")
	saslServer := startMemcachedSASL(t, "alice", "the-right-one")
	plainServer := startMemcached(t)
	ca := newTestCA(t, "ermc test CA")
	tlsServer := startMemcachedTLS(t, ca.issue(t, false, "127.0.0.1"))
	fixed := func(s *testServer) func(t *testing.T) string { return func(*testing.T) string { return s.Addr } }
	creds := Options{Username: "alice", Password: secretPassword, Timeout: 300 * time.Millisecond, ConnectTimeout: 300 * time.Millisecond}
	with := func(mod func(o *Options)) Options { o := creds; mod(&o); return o }
	hardFault := func(t *testing.T, err error) { requireHardFault(t, err, "auth") }

	common := []authFailure{
		{"server hangs up during auth", hangingUp, creds, hardFault},
		{"server stalls during auth", stalling, creds, func(t *testing.T, err error) {
			var ce *ConnError
			assert.True(t, errors.As(err, &ce) && ce.Timeout(), "%v is not a timeout", err)
		}},
		{"plaintext auth on a TLS port", fixed(tlsServer), creds, hardFault},
		{"TLS handshake refused", fixed(tlsServer), with(func(o *Options) { o.TLSConfig = &tls.Config{RootCAs: newTestCA(t, "other").pool} }), hardFault},
		{"server hangs up, ErrorAsMiss", hangingUp, with(func(o *Options) { o.ErrorAsMiss = true }), func(*testing.T, error) {}},
	}
	text := append([]authFailure{
		{"wrong password", fixed(asciiServer), creds, isAuth},
		{"wrong password, ErrorAsMiss", fixed(asciiServer), with(func(o *Options) { o.ErrorAsMiss = true }), isAuth},
		{"unknown user", fixed(asciiServer), with(func(o *Options) { o.Username = "mallory" }), isAuth},
		{"server echoes the credentials in CLIENT_ERROR", echoText("CLIENT_ERROR %s\r\n"), creds, isAuth},
		{"server echoes the credentials in SERVER_ERROR", echoText("SERVER_ERROR %s\r\n"), creds, hardFault},
		{"server echoes the credentials in ERROR", echoText("ERROR %s\r\n"), creds, hardFault},
		{"server echoes the credentials as a reply line", echoText("%s\r\n"), creds, func(t *testing.T, err error) {
			assert.ErrorIs(t, err, ErrProtocol)
		}},
		{"server echoes the credentials without a line end", echoText("%s" + strings.Repeat("x", 3*maxTextLine)), creds, func(t *testing.T, err error) {
			assert.ErrorIs(t, err, ErrProtocol)
		}},
	}, common...)
	bin := append([]authFailure{
		{"wrong password", fixed(saslServer), creds, isAuth},
		{"wrong password, ErrorAsMiss", fixed(saslServer), with(func(o *Options) { o.ErrorAsMiss = true }), isAuth},
		{"unknown user", fixed(saslServer), with(func(o *Options) { o.Username = "mallory" }), isAuth},
		{"server without SASL", fixed(plainServer), creds, isAuth},
		{"server echoes the credentials in an auth error", echoBinary(binStatusAuthError), creds, isAuth},
		{"server echoes the credentials in another error", echoBinary(binStatusInternalError), creds, isAuth},
	}, common...)

	for _, proto := range wireDrivers {
		cases := text
		if proto == Binary {
			cases = bin
		}
		t.Run(proto.String(), func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					c := newTestClient(t, tc.addr(t), proto, tc.opts)
					err := guarded(t, func() error { return c.Connect(bg) })
					requireNoSecret(t, err, "connect")
					tc.check(t, err)
					err = guardedGet(t, c, bg, "k").err
					requireNoSecret(t, err, "get")
					tc.check(t, err)
					err = guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) })
					requireNoSecret(t, err, "set")
				})
			}
		})
	}
}

// A server without authentication takes the text auth exchange for a set:
// the credentials must not become readable there. Through twemproxy
// (which refuses the exchange) they fail without reaching a backend.
func TestSecretsNotStoredWithoutAuthServer(t *testing.T) {
	s := startMemcached(t)
	for _, proto := range asciiAuthDrivers {
		c := newTestClient(t, s.Addr, proto, Options{Username: "alice", Password: secretPassword})
		mustSet(t, c, "k", "v")
		requireMiss(t, c, "_")
	}
	_, data, found := rawGet(t, s.Addr, "_")
	assert.False(t, found, "the credentials are readable: %q", data)

	tw := startTwemproxySetup(t)
	for _, proto := range asciiAuthDrivers {
		c := newTestClient(t, tw.proxy.Addr, proto, Options{Username: "alice", Password: secretPassword})
		err := guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) })
		requireNoSecret(t, err, "set through twemproxy with credentials")
		requireHardFault(t, err, "set through twemproxy with credentials")
		var ce *ConnError
		assert.True(t, errors.As(err, &ce), "%v is not a *ConnError (twemproxy closes the connection)", err)
	}
	for _, b := range tw.backends {
		_, data, found := rawGet(t, b.Addr, "_")
		assert.False(t, found, "a backend holds the credentials: %q", data)
	}
}

// requireBoundedError: err's message is short and holds no raw control or
// non-ASCII bytes, whatever key, value or server message caused it.
func requireBoundedError(t *testing.T, err error, what string) {
	t.Helper()
	require.Error(t, err, what)
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err)} {
		assert.Less(t, len(s), maxErrorLen, "%s: error message of %d bytes: %.200q...", what, len(s), s)
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < ' ' || c >= 0x7f {
				assert.Fail(t, "raw byte in the error message", "%s: %#x at %d in %.300q", what, c, i, s)
				break
			}
		}
	}
}

// hostileKey is a 250-byte key with control characters and a terminal
// escape: malformed, and it must come out escaped.
var hostileKey = strings.Repeat("k", 239) + "\x00\x01\r\n\x1b[2J\x07\x7f\xff"

func TestErrorsBoundedAndEscaped(t *testing.T) {
	require.Len(t, hostileKey, 250)
	longKey := strings.Repeat("x", 10000)
	bigValue := bytes.Repeat([]byte("v\x00\x1b\n"), 250_000) // 1 MB, control bytes throughout
	require.Len(t, bigValue, 1_000_000)

	forEachDriver(t, Options{MaxValueLength: 4 << 20}, func(t *testing.T, c *Client) {
		// Malformed keys never reach the wire; the error quotes a
		// bounded, escaped prefix.
		for name, key := range map[string]string{"control characters": hostileKey, "10000 bytes": longKey} {
			_, err := c.Get(bg, key, nil)
			assert.ErrorIs(t, err, ErrMalformedKey)
			requireBoundedError(t, err, "get, key with "+name)
			requireBoundedError(t, c.Set(bg, key, bigValue, 0), "set, key with "+name)
			requireBoundedError(t, c.Delete(bg, key), "delete, key with "+name)
			requireBoundedError(t, c.GetMulti(bg, []string{"ok", key}, func(int, []byte) {}), "multi-get, key with "+name)
			_, err = c.Incr(bg, key, 1)
			requireBoundedError(t, err, "incr, key with "+name)
		}

		// A value over MaxValueLength is refused before sending.
		small := newTestClient(t, "127.0.0.1:1", c.opts.Protocol, Options{MaxValueLength: 1000})
		err := small.Set(bg, "k", bigValue, 0)
		assert.ErrorIs(t, err, ErrValueTooLarge)
		requireBoundedError(t, err, "set over MaxValueLength")

		// A value over the server's item size: the server's refusal.
		huge := append(bytes.Repeat([]byte{0x1b}, 1500_000), bigValue...)
		err = c.Set(bg, strings.Repeat("h", 250), huge, 0)
		requireHardFault(t, err, "set over the server's item size")
		requireBoundedError(t, err, "set over the server's item size")

		// A 1 MB value read back through typed getters that reject it.
		key := strings.Repeat("b", 250)
		require.NoError(t, c.Set(bg, key, bigValue, 0))
		_, err = c.GetInt(bg, key)
		assert.ErrorIs(t, err, ErrCorruptValue)
		requireBoundedError(t, err, "GetInt of a 1 MB non-number")
		var obj map[string]any
		err = c.GetObject(bg, key, &obj)
		requireBoundedError(t, err, "GetObject of a 1 MB value that is no object")
		_, err = c.Incr(bg, key, 1)
		requireBoundedError(t, err, "incr of a 1 MB non-number")
	})
}

// A hostile server's replies: long messages, control characters, the
// request's key echoed back, a megabyte without a line end.
func TestErrorsBoundedHostileServer(t *testing.T) {
	key := strings.Repeat("e", 250)
	junk := "\x1b[2J\x07\x00\xff" + strings.Repeat("m", 1500) // control bytes first: within any bound
	textReplies := map[string]string{
		"SERVER_ERROR":        "SERVER_ERROR " + junk + key + "\r\n",
		"CLIENT_ERROR":        "CLIENT_ERROR " + junk + key + "\r\n",
		"ERROR":               "ERROR " + junk + key + "\r\n",
		"unexpected line":     junk + key + "\r\n",
		"VALUE for other key": "VALUE " + strings.Repeat("o", 240) + "\x1b\x00 0 1\r\nx\r\nEND\r\n",
		"1 MB without CRLF":   strings.Repeat(junk+key, 600),
	}
	for _, proto := range asciiAuthDrivers {
		for name, reply := range textReplies {
			t.Run(proto.String()+"/"+name, func(t *testing.T) {
				srv := startFakeServer(t, func(fc *fakeConn) {
					for {
						if _, ok := fc.Next(); !ok {
							return
						}
						fc.Send(reply)
					}
				})
				c := newTestClient(t, srv.Addr, proto, Options{Timeout: time.Second})
				requireBoundedError(t, guardedGet(t, c, bg, key).err, "get")
				requireBoundedError(t, guarded(t, func() error { return c.Set(bg, key, make([]byte, 1<<20-1024), 0) }), "set")
			})
		}
	}
	binReplies := map[string]func(h binHeader) []byte{
		"status with a long message": func(h binHeader) []byte {
			return binResp(h.opcode, binStatusInternalError, h.opaque, 0, "", "", junk+key)
		},
		"too large with a long message": func(h binHeader) []byte {
			return binResp(h.opcode, binStatusTooLarge, h.opaque, 0, "", "", junk+key)
		},
		"bad magic": func(h binHeader) []byte {
			return append(binary.BigEndian.AppendUint16(nil, 0x1b00), []byte(key+junk)...)
		},
	}
	for name, reply := range binReplies {
		t.Run("binary/"+name, func(t *testing.T) {
			srv := startFakeServer(t, func(fc *fakeConn) {
				for {
					req, ok := fc.NextBinary()
					if !ok {
						return
					}
					fc.Send(string(reply(*req.Bin)))
				}
			})
			c := newTestClient(t, srv.Addr, Binary, Options{Timeout: time.Second})
			requireBoundedError(t, guardedGet(t, c, bg, key).err, "get")
			requireBoundedError(t, guarded(t, func() error { return c.Set(bg, key, make([]byte, 1<<20-1024), 0) }), "set")
		})
	}
}

func TestBoundedMessage(t *testing.T) {
	assert.Equal(t, "out of memory", boundedMessage([]byte("out of memory")))
	assert.Equal(t, `a\x1b[2J\x0d\x00\x5cb\xff`, boundedMessage([]byte("a\x1b[2J\r\x00\\b\xff")))
	assert.Len(t, boundedMessage(bytes.Repeat([]byte("m"), 1000)), maxMessageInError)
	long := boundedMessage(bytes.Repeat([]byte("\x00"), 1000))
	assert.LessOrEqual(t, len(long), maxMessageInError)
	assert.True(t, strings.HasPrefix(long, `\x00\x00`), long)
}

func TestRedactSecret(t *testing.T) {
	orig := &faultError{as: ErrAuth, fault: &ClientError{Message: "bad: alice " + secretPassword}}
	err := redactSecret(orig, secretPassword)
	assert.NotContains(t, err.Error(), secretPassword)
	assert.Contains(t, err.Error(), "[redacted]")
	assert.ErrorIs(t, err, ErrAuth, "still matches what the original matched")
	var ce *ClientError
	assert.False(t, errors.As(err, &ce), "the part holding the secret is not reachable")
	// Errors without the secret, and empty secrets, pass through.
	assert.Same(t, orig, redactSecret(orig, "something else"))
	assert.Same(t, orig, redactSecret(orig, ""))
	assert.NoError(t, redactSecret(nil, secretPassword))
}
