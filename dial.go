package ermc

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
)

// dialer opens authenticated connections to one server.
type dialer struct {
	network, addr string
	opts          *Options
	codec         codec
	stats         *poolCounters // the client's, shared with its driver
	backoff       dialBackoff   // after a failed dial
}

// splitAddr turns a user address into a network and address: a path (or
// "unix:" prefix) is a unix socket, anything else TCP host:port.
func splitAddr(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", path
	}
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "./") {
		return "unix", addr
	}
	return "tcp", addr
}

// dialRaw opens the transport (TCP, unix, TLS or the user's dialer) within
// ConnectTimeout and the context, and sets Nagle as configured.
func (d *dialer) dialRaw(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.ConnectTimeout)
	defer cancel()
	var nc net.Conn
	var err error
	if d.opts.DialContext != nil {
		nc, err = d.opts.DialContext(ctx, d.network, d.addr)
	} else {
		var nd net.Dialer
		nc, err = nd.DialContext(ctx, d.network, d.addr)
	}
	if err != nil {
		return nil, &ConnError{Op: "dial", Addr: d.addr, Err: err}
	}
	if tcp, ok := nc.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(!d.opts.Nagle)
	}
	if d.opts.TLSConfig != nil {
		cfg := d.opts.TLSConfig
		if cfg.ServerName == "" && d.network == "tcp" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(d.addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, &ConnError{Op: "tls handshake", Addr: d.addr, Err: err}
		}
		nc = tc
	}
	return nc, nil
}

// dial opens a connection ready for requests, counting the attempt for
// PoolStats. Every driver dials through it. After a failed dial it backs
// off (backoff.go): until the next probe is due, it fails at once with
// the last dial's error.
func (d *dialer) dial(ctx context.Context) (*netConn, error) {
	probe, err := d.backoff.admit()
	if err != nil {
		return nil, &ConnError{Op: "dial", Addr: d.addr, Err: err}
	}
	d.stats.dials.Add(1)
	cn, err := d.open(ctx)
	if err != nil {
		d.stats.dialErrors.Add(1)
	}
	d.backoff.record(ctx, probe, err)
	return cn, err
}

// open opens a connection: transport, then authentication when a username
// is configured, all within ConnectTimeout (the auth exchange also within
// Timeout, like any request). A context that ends meanwhile fails it.
func (d *dialer) open(ctx context.Context) (*netConn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.ConnectTimeout)
	defer cancel()
	nc, err := d.dialRaw(ctx)
	if err != nil {
		return nil, err
	}
	c := newNetConn(nc, d.addr)
	if d.opts.Username != "" {
		if err := (&conn{netConn: c, d: d}).authenticate(ctx); err != nil {
			c.close()
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			c.close()
			return nil, &ConnError{Op: "auth", Addr: d.addr, Err: err}
		}
	}
	return c, nil
}

// authenticate runs the auth exchange on a new connection. The password
// never reaches the caller inside an error: a server that echoes the
// credentials back (a misconfigured or hostile endpoint) gets its message
// masked.
func (cn *conn) authenticate(ctx context.Context) error {
	return redactSecret(cn.authExchange(ctx), cn.d.opts.Password)
}

var errUnusableAfterAuth = errors.New("server ended the connection after authenticating")

func (cn *conn) authExchange(ctx context.Context) error {
	r := getRequest()
	defer putRequest(r)
	r.op = opAuth
	r.user, r.pass = cn.d.opts.Username, cn.d.opts.Password
	err := cn.roundTrip(ctx, r)
	switch {
	case err != nil && err != errDiscardConn:
		return err
	case r.err != nil:
		return authError(r.err)
	case err == errDiscardConn:
		return &ConnError{Op: "auth", Addr: cn.d.addr, Err: errUnusableAfterAuth}
	}
	return nil
}

// authError wraps a refusal of credentials so it matches ErrAuth while the
// server's own message stays reachable.
func authError(err error) error {
	if errors.Is(err, ErrAuth) {
		return err
	}
	return &faultError{as: ErrAuth, fault: err}
}
