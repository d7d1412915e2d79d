package ermc

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The server answers with an error line (ERROR, CLIENT_ERROR,
// SERVER_ERROR): a typed error that is not a connection fault; the
// connection is kept unless the server's state after the line is unknown.

// serverErrorSaying checks that err is a *ServerError with message msg.
func serverErrorSaying(msg string) func(t *testing.T, err error) {
	return func(t *testing.T, err error) {
		var se *ServerError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, msg, se.Message)
	}
}

func TestFaultErrorReplies(t *testing.T) {
	forEachProto(t, textDrivers, testFaultErrorReplies)
}

func testFaultErrorReplies(t *testing.T, proto Protocol) {
	cases := []struct {
		name     string
		reply    string
		op       func(c *Client) error
		check    func(t *testing.T, err error)
		accepted int // connections after the follow-up request
	}{
		{"SERVER_ERROR keeps the connection", "SERVER_ERROR out of memory storing object\r\n",
			func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) },
			serverErrorSaying("out of memory storing object"), 1},
		{"SERVER_ERROR to a get keeps the connection", "SERVER_ERROR temporary failure\r\n",
			func(c *Client) error { _, err := c.Get(bg, "k", nil); return err },
			serverErrorSaying("temporary failure"), 1},
		{"CLIENT_ERROR discards the connection", "CLIENT_ERROR bad data chunk\r\n",
			func(c *Client) error { return c.Set(bg, "k", []byte("v"), 0) },
			func(t *testing.T, err error) {
				var ce *ClientError
				require.ErrorAs(t, err, &ce)
				assert.Equal(t, "bad data chunk", ce.Message)
			}, 2},
		{"CLIENT_ERROR non-numeric discards the connection", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
			func(c *Client) error { _, err := c.Incr(bg, "k", 1); return err },
			func(t *testing.T, err error) {
				assert.ErrorIs(t, err, ErrNonNumeric)
			}, 2},
		{"ERROR discards the connection", "ERROR\r\n",
			func(c *Client) error { return c.Touch(bg, "k", time.Second) },
			serverErrorSaying("ERROR"), 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := startFakeServer(t, replyFirstThenServe(proto, tc.reply))
			c := newFaultClient(t, srv.Addr, proto, Options{Timeout: 2 * time.Second})
			err := guarded(t, func() error { return tc.op(c) })
			require.Error(t, err)
			tc.check(t, err)
			var ce *ConnError
			assert.False(t, errors.As(err, &ce), "a server's answer is not a connection fault")
			assert.NotErrorIs(t, err, ErrProtocol)
			if tc.accepted == 2 {
				srv.WaitPeerClosed(0)
			}
			res := guardedGet(t, c, bg, "k")
			require.NoError(t, res.err)
			assert.Equal(t, "fresh", res.v)
			assert.Equal(t, tc.accepted, srv.Accepted())
		})
	}
}

// memcached answers a storage command whose key it refuses (over 250
// bytes; MaxKeyLength lets the client send it) with CLIENT_ERROR and then
// an ERROR for the data line it reads as a command. The client reports
// the CLIENT_ERROR (binary: status 0x04, after which memcached closes the
// connection), discards the connection, and the next request gets its own
// reply instead of that ERROR. TestFaultErrorReplies has the fake's
// version, without the extra ERROR. On Ultra the ERROR comes in the same
// read as the CLIENT_ERROR and is refused as bytes with no request in
// flight, so this test passes there even when CLIENT_ERROR keeps the
// connection; TestFaultErrorReplies is the one that pins it on Ultra.
func TestFaultClientErrorAfterStorageRealServer(t *testing.T) {
	srv := startMemcached(t)
	long := strings.Repeat("k", 260)
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c, dials := countingClient(t, srv.Addr, proto, Options{MaxKeyLength: 300, Timeout: 2 * time.Second})
			key := "cerr-" + proto.String()
			mustSet(t, c, key, "own")
			err := guarded(t, func() error { return c.Set(bg, long, []byte("value"), 0) })
			require.Error(t, err)
			var ce *ConnError
			assert.False(t, errors.As(err, &ce), "the server's answer is not a connection fault: %v", err)
			if proto == Binary {
				var se *StatusError
				require.ErrorAs(t, err, &se)
				assert.EqualValues(t, binStatusInvalidArgs, se.Status)
			} else {
				var cle *ClientError
				require.ErrorAs(t, err, &cle)
				assert.Equal(t, "bad command line format", cle.Message)
			}
			// A set first: a get on a kept connection that the server
			// closed would be retried and hide it.
			err = guarded(t, func() error { return c.Set(bg, key, []byte("own2"), 0) })
			require.NoError(t, err, "the request after the CLIENT_ERROR")
			for i := 0; i < 3; i++ {
				res := guardedGet(t, c, bg, key)
				require.NoError(t, res.err, "request %d after the CLIENT_ERROR", i)
				require.Equal(t, "own2", res.v, "request %d after the CLIENT_ERROR", i)
			}
			assert.EqualValues(t, 2, dials.Load(), "the connection was discarded, once")
		})
	}
}

// With -M memcached answers a full cache with SERVER_ERROR out of memory
// instead of evicting: a *ServerError carrying the message, never a miss or
// not-stored, and the connection stays in use. (Binary: TestBinaryOutOfMemory.)
func TestServerOutOfMemory(t *testing.T) {
	for _, proto := range textDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			srv := startMemcached(t, "-M", "-m", "2")
			c, dials := countingClient(t, srv.Addr, proto, Options{})
			value := make([]byte, 500_000)
			var err error
			for i := 0; i < 50 && err == nil; i++ {
				err = c.Set(bg, fmt.Sprintf("fill-%d", i), value, 0)
			}
			var se *ServerError
			require.ErrorAs(t, err, &se)
			assert.Contains(t, strings.ToLower(se.Message), "out of memory")
			assert.NotErrorIs(t, err, ErrNotStored)
			assert.NotErrorIs(t, err, ErrCacheMiss)
			v, err := c.Get(bg, "fill-0", nil)
			require.NoError(t, err, "the client is still in step")
			assert.Len(t, v, len(value))
			assert.EqualValues(t, 1, dials.Load(), "the out-of-memory reply cost the connection")
		})
	}
}
