package ermc

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An unresolvable host name must end the request with a typed dial error
// on every driver, not hang or retry forever. Tests may use only loopback,
// so the name is looked up against a scripted DNS server on loopback UDP
// that answers every question with NXDOMAIN, through the user's dialer
// (Options.DialContext with its own resolver), as a service would.

// startNXDomainServer answers every DNS query with "no such name" and
// counts the queries.
func startNXDomainServer(t *testing.T) (addr string, queries *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	queries = new(atomic.Int32)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply := nxdomainReply(buf[:n]); reply != nil {
				queries.Add(1)
				pc.WriteTo(reply, from)
			}
		}
	}()
	return pc.LocalAddr().String(), queries
}

// nxdomainReply answers a DNS query (RFC 1035 4.1) with its own ID and
// question, RCODE 3 and no records; nil for a packet that is not a query
// with one question.
func nxdomainReply(query []byte) []byte {
	const headerLen = 12
	if len(query) < headerLen || query[2]&0x80 != 0 || binary.BigEndian.Uint16(query[4:]) != 1 {
		return nil
	}
	end := headerLen // the question: labels up to the root, then type and class
	for end < len(query) && query[end] != 0 {
		end += 1 + int(query[end])
	}
	end += 1 + 4
	if end > len(query) {
		return nil
	}
	reply := append([]byte(nil), query[:end]...)
	reply[2] = 0x80 | query[2]&0x01 // QR, and RD as asked
	reply[3] = 0x80 | 3             // RA, RCODE NXDOMAIN
	binary.BigEndian.PutUint16(reply[6:], 0)
	binary.BigEndian.PutUint16(reply[8:], 0)
	binary.BigEndian.PutUint16(reply[10:], 0)
	return reply
}

func TestFaultUnresolvableHost(t *testing.T) {
	dnsAddr, queries := startNXDomainServer(t)
	resolver := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "udp", dnsAddr)
		},
	}
	dialer := &net.Dialer{Resolver: resolver}
	const addr = "no-such-memcached.invalid:11211"
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			before := queries.Load()
			c := newTestClient(t, addr, proto, Options{
				ConnectTimeout: 5 * time.Second,
				Timeout:        5 * time.Second,
				DialContext:    dialer.DialContext,
			})
			for name, err := range dialErrors(t, c, addr) {
				var dnsErr *net.DNSError
				require.ErrorAs(t, err, &dnsErr, name)
				assert.True(t, dnsErr.IsNotFound, "%s: %v", name, err)
				assert.False(t, errors.Is(err, context.DeadlineExceeded), "%s: failed by the answer, not a timeout", name)
			}
			assert.Greater(t, queries.Load(), before, "the name was looked up on the scripted server")
		})
	}
}
