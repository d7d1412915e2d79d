package ermc

import (
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// wireDrivers are the drivers that talk to a server. The conformance suite
// and the walkthrough run on each of them.
var wireDrivers = []Protocol{Text, Binary, Ultra, Meta}

// pipelinedDrivers share the lanes of umframe.go.
var pipelinedDrivers = []Protocol{Ultra, Meta}

// isPipelined reports whether proto is one of pipelinedDrivers.
func isPipelined(proto Protocol) bool { return slices.Contains(pipelinedDrivers, proto) }

// newTestClient makes a client of proto for addr, closed when t ends.
func newTestClient(t testing.TB, addr string, proto Protocol, opts Options) *Client {
	t.Helper()
	opts.Protocol = proto
	c, err := New(addr, opts)
	require.NoError(t, err, "New(%q, %v)", addr, proto)
	t.Cleanup(func() { c.Close() })
	return c
}

// forEachProto runs test as a subtest per protocol of protos.
func forEachProto(t *testing.T, protos []Protocol, test func(*testing.T, Protocol)) {
	for _, proto := range protos {
		t.Run(proto.String(), func(t *testing.T) { test(t, proto) })
	}
}

// forEachDriver runs fn as a subtest per wire driver, each with a fresh
// memcached and a client of that driver.
func forEachDriver(t *testing.T, opts Options, fn func(t *testing.T, c *Client)) {
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			s := startMemcached(t)
			fn(t, newTestClient(t, s.Addr, proto, opts))
		})
	}
}

var bg = context.Background()

// mustSet stores value under key or fails the test.
func mustSet(t *testing.T, c *Client, key, value string) {
	t.Helper()
	require.NoError(t, c.Set(bg, key, []byte(value), 0), "Set %q", key)
}

// requireValue asserts that key holds want.
func requireValue(t *testing.T, c *Client, key, want string) {
	t.Helper()
	v, err := c.Get(bg, key, nil)
	require.NoError(t, err, "Get %q", key)
	require.Equal(t, want, string(v), "value of %q", key)
}

// requireMiss asserts that key is absent.
func requireMiss(t *testing.T, c *Client, key string) {
	t.Helper()
	v, err := c.Get(bg, key, nil)
	require.ErrorIs(t, err, ErrCacheMiss, "Get %q returned %q", key, v)
}

// requireHardFault: err is an error that is neither a miss nor a
// not-stored, so no caller can mistake it for an answer.
func requireHardFault(t *testing.T, err error, what string) {
	t.Helper()
	require.Error(t, err, what)
	assert.NotErrorIs(t, err, ErrCacheMiss, "%s: %v", what, err)
	assert.NotErrorIs(t, err, ErrNotStored, "%s: %v", what, err)
}
