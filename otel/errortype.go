package ermcotel

import (
	"context"
	"errors"
	"strconv"

	"github.com/ermc-go/ermc"
)

// Outcomes of an operation that are not failures: memcached answers them
// with a status of their own.
const (
	outOK        = iota
	outMiss      // NOT_FOUND
	outNotStored // NOT_STORED
	outExists    // EXISTS
	outKinds
)

// statusOf is db.response.status_code of each outcome.
var statusOf = [outKinds]string{outMiss: "NOT_FOUND", outNotStored: "NOT_STORED", outExists: "EXISTS"}

// outcome is how an operation ended, as the span and metrics record it.
type outcome struct {
	kind      int    // when it did not fail
	status    string // db.response.status_code, if any
	errorType string // error.type; empty unless it failed
}

// classify maps err, as the caller of an operation got it, to its
// outcome. The package comment lists the error types.
func classify(err error) outcome {
	switch err {
	case nil:
		return outcome{}
	case ermc.ErrCacheMiss: // the usual misses come as the sentinel itself: no allocation
		return outcome{kind: outMiss, status: statusOf[outMiss]}
	case ermc.ErrNotStored:
		return outcome{kind: outNotStored, status: statusOf[outNotStored]}
	case ermc.ErrCASConflict:
		return outcome{kind: outExists, status: statusOf[outExists]}
	}
	// A fault first: under ErrorAsMiss it also matches ErrCacheMiss or
	// ErrNotStored, and it is a failure all the same.
	var ce *ermc.ConnError
	if errors.As(err, &ce) {
		return outcome{errorType: connErrorType(err, ce)}
	}
	var se *ermc.ServerError
	var ke *ermc.ClientError
	var st *ermc.StatusError
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			if s.kind != outOK {
				return outcome{kind: s.kind, status: statusOf[s.kind]}
			}
			return outcome{errorType: s.errorType}
		}
	}
	switch {
	case errors.As(err, &se):
		return outcome{errorType: "SERVER_ERROR", status: "SERVER_ERROR"}
	case errors.As(err, &ke):
		return outcome{errorType: "CLIENT_ERROR", status: "CLIENT_ERROR"}
	case errors.As(err, &st):
		code := "0x" + strconv.FormatUint(uint64(st.Status), 16)
		return outcome{errorType: code, status: code}
	}
	return outcome{errorType: "_OTHER"}
}

// sentinels are ermc's errors in the order they are tried: the outcomes
// first, then failures whose type names the error.
var sentinels = []struct {
	err       error
	kind      int
	errorType string
}{
	{ermc.ErrCacheMiss, outMiss, ""},
	{ermc.ErrNotStored, outNotStored, ""},
	{ermc.ErrCASConflict, outExists, ""},
	{ermc.ErrAuth, outOK, "auth"},
	{ermc.ErrNonNumeric, outOK, "non_numeric"},
	{ermc.ErrMalformedKey, outOK, "malformed_key"},
	{ermc.ErrValueTooLarge, outOK, "value_too_large"},
	{ermc.ErrCorruptValue, outOK, "corrupt_value"},
	{ermc.ErrProtocol, outOK, "protocol_error"},
	{ermc.ErrNotSupported, outOK, "not_supported"},
	{ermc.ErrClosed, outOK, "client_closed"},
}

// connErrorType is error.type of an I/O fault.
func connErrorType(err error, ce *ermc.ConnError) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled" // before the timeout: a cancellation interrupts I/O with a deadline
	case ce.Op == "dial":
		return "dial" // refused, unreachable or timed out alike: no connection
	case ce.Op == "tls handshake":
		return "tls"
	case ce.Timeout():
		return "timeout"
	case ce.Op == "auth" || errors.Is(err, ermc.ErrAuth):
		return "auth"
	}
	return "connection"
}
