package ermc

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A reply that ends its connection (CLIENT_ERROR, as memcached -Y sends
// for an unauthenticated request) must not leave the connection in
// service while its caller already has the outcome: the caller's next
// request goes over a fresh connection, every time.
func TestUltraDiscardedConnNotReused(t *testing.T) {
	srv := startFakeServer(t, func(fc *fakeConn) {
		for {
			req, ok := fc.Next()
			if !ok {
				return
			}
			if req.Line == "get refused" {
				fc.Send("CLIENT_ERROR unauthenticated\r\n")
				continue
			}
			fc.Send(fakeReply(req, fresh))
		}
	})
	c := newTestClient(t, srv.Addr, Ultra, Options{})
	c.drv.(*pipeDriver).lanes = c.drv.(*pipeDriver).lanes[:1]
	for i := 0; i < 200; i++ {
		_, err := c.Get(bg, "refused", nil)
		var ce *ClientError
		require.True(t, errors.As(err, &ce), "round %d: %v", i, err)
		require.ErrorIs(t, err, ErrAuth)
		require.NoError(t, c.Set(bg, "k", []byte("v"), 0), "round %d: the request after a discarded connection", i)
	}
	require.Equal(t, 201, srv.Accepted(), "one connection per refusal, plus the last")
}

// A request that times out reports the timeout, not the "use of closed
// network connection" that the writer may see when the reader tears the
// connection down under it. (Deadlines are rounded up to deadlineGrain,
// so a server that never answers makes the timeout certain.)
func TestUltraTimeoutReportedAsTimeout(t *testing.T) {
	srv := startSilentServer(t)
	for _, proto := range pipelinedDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			for i := 0; i < 100; i++ {
				c, err := New(srv.Addr, Options{Protocol: proto, Timeout: time.Nanosecond})
				require.NoError(t, err)
				_, err = c.Get(bg, "k", nil)
				c.Close()
				var ce *ConnError
				require.True(t, errors.As(err, &ce), "round %d: %v is not a *ConnError", i, err)
				require.True(t, ce.Timeout(), "round %d: %v is not a timeout", i, err)
			}
		})
	}
}
