package ermc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Match them with errors.Is: the client may wrap them with
// more context.
var (
	// ErrCacheMiss: a get missed, or delete, incr, decr or touch found no key.
	ErrCacheMiss = errors.New("ermc: cache miss")
	// ErrNotStored: add found the key present, or replace, append or prepend
	// found it missing.
	ErrNotStored = errors.New("ermc: item not stored")
	// ErrCASConflict: the item was modified since its CAS id was read.
	ErrCASConflict = errors.New("ermc: compare-and-swap conflict")
	// ErrMalformedKey: the key is empty, longer than MaxKeyLength, or holds
	// a space or control character (on Meta, which sends such keys
	// base64-encoded: only one longer than 186 bytes). Such a key never
	// reaches the wire.
	ErrMalformedKey = errors.New("ermc: malformed key")
	// ErrValueTooLarge: a value is longer than MaxValueLength, on the way out
	// (checked before sending) or on the way in (refused before allocating).
	ErrValueTooLarge = errors.New("ermc: value too large")
	// ErrClosed: the client was closed, and the request was not sent.
	// A request already written when Close ran never ends with ErrClosed.
	ErrClosed = errors.New("ermc: client closed")
	// ErrNonNumeric: incr or decr on a value that is not a decimal number.
	ErrNonNumeric = errors.New("ermc: incr/decr on non-numeric value")
	// ErrAuth: the server refused the credentials, or cannot authenticate.
	ErrAuth = errors.New("ermc: authentication failed")
	// ErrCorruptValue: a stored value cannot be decoded (bad compression
	// framing, wrong type flags for a typed getter, unparsable number).
	ErrCorruptValue = errors.New("ermc: corrupt value")
	// ErrProtocol: the server sent bytes that are not a valid reply to the
	// request. The connection is discarded.
	ErrProtocol = errors.New("ermc: protocol error")
	// ErrNotSupported: New was given a Protocol this package does not
	// have.
	ErrNotSupported = errors.New("ermc: operation not supported")
)

// maxMessageInError bounds how much of a server message or key an error
// carries, so a hostile server cannot grow error strings without bound.
const maxMessageInError = 128

// ServerError is a SERVER_ERROR reply, or an ERROR reply (a command the
// server does not know, or memcached's "ERROR Too many open connections"):
// the server did not carry out the command. After SERVER_ERROR the
// connection is kept, unless it cut a multi-get short; after ERROR it is
// discarded. On Binary, such a text line is an ErrProtocol that wraps a
// ServerError.
type ServerError struct {
	Message string
}

func (e *ServerError) Error() string { return "ermc: server error: " + e.Message }

// ClientError is a CLIENT_ERROR reply: the server found the request
// malformed. The connection is discarded, because after a storage command
// the server may still be reading (and answering) the data line.
type ClientError struct {
	Message string
}

func (e *ClientError) Error() string { return "ermc: client error: " + e.Message }

// Is lets errors.Is(err, ErrNonNumeric) match the text protocol's incr
// error, and errors.Is(err, ErrAuth) match memcached's refusals under ASCII
// authentication (-Y): "authentication failure" for bad credentials, and
// on a connection that has not authenticated, "unauthenticated" for most
// commands and "bad authentication token format" for a set (which such a
// connection takes for an auth attempt).
func (e *ClientError) Is(target error) bool {
	switch target {
	case ErrNonNumeric:
		return e.Message == "cannot increment or decrement non-numeric value"
	case ErrAuth:
		switch e.Message {
		case "unauthenticated", "authentication failure", "bad authentication token format":
			return true
		}
	}
	return false
}

// StatusError is a binary-protocol reply whose status code has no sentinel
// of its own. Status is the code from the response header.
type StatusError struct {
	Status  uint16
	Message string
}

func (e *StatusError) Error() string {
	return "ermc: server status 0x" + strconv.FormatUint(uint64(e.Status), 16) + ": " + e.Message
}

// ConnError is an I/O fault: dialing, writing or reading failed, timed out
// or was cancelled. The underlying error (a net.Error, context.Canceled,
// context.DeadlineExceeded, ...) is reachable through errors.Is and errors.As.
type ConnError struct {
	// Op is the step that failed:
	//   - "dial", "tls handshake", "auth": opening a connection;
	//   - "write", "read": the request's own I/O;
	//   - "send": the context had ended before the request was handed to
	//     a driver (nothing sent);
	//   - "wait for connection" (Text, Binary): no connection came free
	//     before the context ended (nothing sent);
	//   - "wait for reply" (Ultra): the context ended while the request
	//     was queued or its reply awaited.
	Op   string
	Addr string
	Err  error
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("ermc: %s %s: %v", e.Op, e.Addr, e.Err)
}

func (e *ConnError) Unwrap() error { return e.Err }

// Timeout reports whether the fault was a deadline, so a ConnError also
// satisfies net.Error-style checks.
func (e *ConnError) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.As(e.Err, &t) && t.Timeout()
}

// protocolError builds an ErrProtocol with a bounded, escaped excerpt of
// the offending bytes.
func protocolError(what string, got []byte) error {
	return fmt.Errorf("%w: %s: %s", ErrProtocol, what, quoteBounded(got))
}

// incomingTooLarge refuses a reply that announces a value over
// MaxValueLength. It matches ErrValueTooLarge (what the caller asked about)
// and ErrProtocol (the unread block leaves the connection unusable).
func incomingTooLarge(size int64, limit int) error {
	return fmt.Errorf("%w: %w: reply announces %d bytes, MaxValueLength is %d", ErrValueTooLarge, ErrProtocol, size, limit)
}

// quoteBounded quotes at most maxMessageInError bytes of b for an error
// message; control characters and non-ASCII bytes are escaped.
func quoteBounded(b []byte) string {
	if len(b) > maxMessageInError {
		return strconv.QuoteToASCII(string(b[:maxMessageInError])) + "..."
	}
	return strconv.QuoteToASCII(string(b))
}

// boundedMessage turns a server's message into a string of at most
// maxMessageInError bytes. Printable ASCII is kept as it is; control
// characters, DEL and non-ASCII bytes are escaped as \xNN, so a message
// cannot smuggle terminal escapes or line breaks into a log.
func boundedMessage(b []byte) string {
	clean := true
	for _, c := range b {
		if c < ' ' || c >= 0x7f || c == '\\' {
			clean = false
			break
		}
	}
	if clean {
		if len(b) > maxMessageInError {
			b = b[:maxMessageInError]
		}
		return string(b)
	}
	const hex = "0123456789abcdef"
	out := make([]byte, 0, min(len(b), maxMessageInError))
	for _, c := range b {
		if c >= ' ' && c < 0x7f && c != '\\' {
			if len(out)+1 > maxMessageInError {
				break
			}
			out = append(out, c)
			continue
		}
		if len(out)+4 > maxMessageInError {
			break
		}
		out = append(out, '\\', 'x', hex[c>>4], hex[c&0xf])
	}
	return string(out)
}

// faultError marks a connectivity fault that ErrorAsMiss turned into a miss
// or a not-stored: errors.Is matches the sentinel, errors.As still reaches the
// fault.
type faultError struct {
	as    error
	fault error
}

func (e *faultError) Error() string { return e.as.Error() + " (" + e.fault.Error() + ")" }

func (e *faultError) Unwrap() []error { return []error{e.as, e.fault} }

// isConnFault reports whether err is a connectivity fault that ErrorAsMiss
// may hide.
func isConnFault(err error) bool {
	var ce *ConnError
	return errors.As(err, &ce)
}

// redactSecret keeps secret out of err's message. When the message holds
// it (a server echoed the credentials into a reply, say), err is replaced
// by an error whose message has every occurrence masked. errors.Is still
// matches whatever err matched (ErrAuth, ErrProtocol, a net error...);
// errors.As no longer reaches err's parts, since those carry the secret.
func redactSecret(err error, secret string) error {
	if err == nil || secret == "" {
		return err
	}
	msg := err.Error()
	if !strings.Contains(msg, secret) {
		return err
	}
	return &redactedError{msg: strings.ReplaceAll(msg, secret, "[redacted]"), orig: err}
}

// redactedError is an error whose message had a secret masked.
type redactedError struct {
	msg  string
	orig error
}

func (e *redactedError) Error() string { return e.msg }

// Is matches what the original error matched, without exposing it.
func (e *redactedError) Is(target error) bool { return errors.Is(e.orig, target) }
