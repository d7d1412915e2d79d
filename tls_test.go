package ermc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TLS on every wire driver through Options.TLSConfig, against memcached
// started with -Z. The certificates are made here: a throwaway CA per test
// and certificates it signs, ECDSA P-256, written to the test's temp dir.

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
}

func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pool: pool}
}

// issued is a certificate the CA signed, as PEM files and as a tls.Certificate.
type issued struct {
	certFile, keyFile string
	pair              tls.Certificate
}

// issue signs a certificate for the given names (IP addresses go into IP
// SANs, the rest into DNS SANs); client makes it a client certificate.
func (ca *testCA) issue(t *testing.T, client bool, names ...string) issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: "ermc test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	dir := t.TempDir()
	out := issued{certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem")}
	require.NoError(t, os.WriteFile(out.certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(out.keyFile, keyPEM, 0o600))
	out.pair, err = tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	return out
}

// startMemcachedTLS runs memcached with TLS on its port (-Z) and the
// given server certificate.
func startMemcachedTLS(t *testing.T, server issued, extra ...string) *testServer {
	t.Helper()
	opt := fmt.Sprintf("ssl_chain_cert=%s,ssl_key=%s", server.certFile, server.keyFile)
	for _, e := range extra {
		opt += "," + e
	}
	return startMemcached(t, "-Z", "-o", opt)
}

// tlsOpts bound every failure here, within the hang guard: a refusal the
// handshake reports must come well before them even on a busy machine,
// where a handshake under the race detector can take a good part of a
// second. A server that never answers the handshake is waited out with
// the short timeouts of stalledTLSOpts.
func tlsOpts(cfg *tls.Config) Options {
	return Options{TLSConfig: cfg, Timeout: hangGuard / 4, ConnectTimeout: hangGuard / 4}
}

func stalledTLSOpts(cfg *tls.Config) Options {
	return Options{TLSConfig: cfg, Timeout: 500 * time.Millisecond, ConnectTimeout: 500 * time.Millisecond}
}

// requireFailsEverywhere runs a read, a write and a multi-get on c and
// requires each to end in an error that is neither a miss nor a not-stored,
// within the hang guard. It returns the read's error.
func requireFailsEverywhere(t *testing.T, c *Client) error {
	t.Helper()
	getErr := guarded(t, func() error { _, err := c.Get(bg, "k", nil); return err })
	requireHardFault(t, getErr, "get")
	requireHardFault(t, guarded(t, func() error { return c.Set(bg, "k", []byte("v"), 0) }), "set")
	requireHardFault(t, guarded(t, func() error {
		return c.GetMulti(bg, []string{"k", "j"}, func(int, []byte) { assert.Fail(t, "a value over a failed connection") })
	}), "multi-get")
	return getErr
}

func TestTLS(t *testing.T) {
	ca := newTestCA(t, "ermc test CA")
	otherCA := newTestCA(t, "some other CA")
	byIP := startMemcachedTLS(t, ca.issue(t, false, "127.0.0.1"))
	byName := startMemcachedTLS(t, ca.issue(t, false, "memcached.test"))
	plain := startMemcached(t)

	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			t.Run("trusted", func(t *testing.T) {
				// No ServerName: the client takes the host of the
				// address, an IP, and checks it against the IP SANs.
				c := newTestClient(t, byIP.Addr, proto, Options{TLSConfig: &tls.Config{RootCAs: ca.pool}})
				require.NoError(t, c.Connect(bg))
				mustSet(t, c, "k", "over tls")
				requireValue(t, c, "k", "over tls")
				big := make([]byte, 300<<10) // many TLS records per value
				for i := range big {
					big[i] = byte(i * 7)
				}
				require.NoError(t, c.Set(bg, "big", big, 0))
				v, err := c.Get(bg, "big", nil)
				require.NoError(t, err)
				assert.Equal(t, big, v)
				m, err := c.GetMultiMap(bg, []string{"k", "big", "absent"})
				require.NoError(t, err)
				assert.Equal(t, "over tls", string(m["k"]))
				assert.Equal(t, big, m["big"])
				assert.Len(t, m, 2)
				ver, err := c.Version(bg)
				require.NoError(t, err)
				assert.NotEmpty(t, ver)
				// Concurrent requests over several TLS connections.
				errs := make(chan error, 8)
				for g := 0; g < 8; g++ {
					go func(g int) {
						k := fmt.Sprintf("g%d", g)
						for i := 0; i < 30; i++ {
							if err := c.Set(bg, k, []byte(k), 0); err != nil {
								errs <- err
								return
							}
							if v, err := c.Get(bg, k, nil); err != nil || string(v) != k {
								errs <- fmt.Errorf("get %s = %q, %v", k, v, err)
								return
							}
						}
						errs <- nil
					}(g)
				}
				for g := 0; g < 8; g++ {
					require.NoError(t, <-errs)
				}
			})

			t.Run("server name", func(t *testing.T) {
				// A certificate for a DNS name, reached by IP: the
				// client's own ServerName is what it is checked against.
				c := newTestClient(t, byName.Addr, proto, Options{TLSConfig: &tls.Config{RootCAs: ca.pool, ServerName: "memcached.test"}})
				mustSet(t, c, "k", "by name")
				requireValue(t, c, "k", "by name")

				wrong := newTestClient(t, byName.Addr, proto, tlsOpts(&tls.Config{RootCAs: ca.pool}))
				err := requireFailsEverywhere(t, wrong)
				var he x509.HostnameError
				assert.True(t, errors.As(err, &he), "%v does not wrap an x509.HostnameError", err)
			})

			t.Run("untrusted", func(t *testing.T) {
				c := newTestClient(t, byIP.Addr, proto, tlsOpts(&tls.Config{RootCAs: otherCA.pool}))
				err := c.Connect(bg)
				require.Error(t, err)
				var ce *ConnError
				require.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
				assert.Equal(t, "tls handshake", ce.Op)
				var ua x509.UnknownAuthorityError
				assert.True(t, errors.As(err, &ua), "%v does not wrap an x509.UnknownAuthorityError", err)

				err = requireFailsEverywhere(t, c)
				assert.True(t, errors.As(err, &ce) && ce.Op == "tls handshake", "get: %v", err)
				assert.True(t, errors.As(err, &ua), "get: %v does not wrap an x509.UnknownAuthorityError", err)
			})

			t.Run("plaintext client, TLS server", func(t *testing.T) {
				c := newTestClient(t, byIP.Addr, proto, tlsOpts(nil))
				err := requireFailsEverywhere(t, c)
				var ce *ConnError
				assert.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
			})

			t.Run("TLS client, plaintext server", func(t *testing.T) {
				c := newTestClient(t, plain.Addr, proto, stalledTLSOpts(&tls.Config{RootCAs: ca.pool}))
				err := requireFailsEverywhere(t, c)
				var ce *ConnError
				require.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
				assert.Equal(t, "tls handshake", ce.Op)
			})
		})
	}
}

// Mutual TLS: memcached requiring a client certificate signed by the CA
// (ssl_verify_mode=2, ssl_ca_cert) takes one from TLSConfig.Certificates.
func TestTLSClientCertificate(t *testing.T) {
	ca := newTestCA(t, "ermc test CA")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, ca.pem, 0o600))
	s := startMemcachedTLS(t, ca.issue(t, false, "127.0.0.1"), "ssl_verify_mode=2", "ssl_ca_cert="+caFile)
	clientCert := ca.issue(t, true, "ermc client")
	for _, proto := range wireDrivers {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestClient(t, s.Addr, proto, Options{TLSConfig: &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{clientCert.pair}}})
			mustSet(t, c, "k", "mutual")
			requireValue(t, c, "k", "mutual")

			// Without a certificate the server refuses: with TLS 1.3 the
			// client's handshake completes first and the refusal arrives
			// as an alert on the first read. An error either way.
			anon := newTestClient(t, s.Addr, proto, tlsOpts(&tls.Config{RootCAs: ca.pool}))
			err := requireFailsEverywhere(t, anon)
			var ce *ConnError
			assert.True(t, errors.As(err, &ce), "%v is not a *ConnError", err)
		})
	}
}
