package ermc

import (
	"context"
	"slices"
	"testing"
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
	if err != nil {
		t.Fatalf("New(%q, %v): %v", addr, proto, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
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
	if err := c.Set(bg, key, []byte(value), 0); err != nil {
		t.Fatalf("set %s: %v", key, err)
	}
}
