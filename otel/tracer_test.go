package ermcotel

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/ermc-go/ermc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// The OpenTelemetry SDK itself records: spans in its in-memory recorder,
// metrics through a manual reader.

var bg = context.Background()

type sdk struct {
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
}

func newSDK(t *testing.T) *sdk {
	s := &sdk{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	s.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.spans))
	s.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	t.Cleanup(func() { _ = s.tp.Shutdown(bg); _ = s.mp.Shutdown(bg) })
	return s
}

func (s *sdk) tracer(recordKeys bool) ermc.Tracer {
	return NewTracer(Config{TracerProvider: s.tp, MeterProvider: s.mp, RecordKeys: recordKeys})
}

// metric returns the named metric of this package's scope; ok is false
// when nothing was recorded in it.
func (s *sdk) metric(t *testing.T, name string) (m metricdata.Metrics, ok bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, s.reader.Collect(bg, &rm))
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// counts returns a counter's values by the attribute key's value.
func (s *sdk) counts(t *testing.T, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	m, ok := s.metric(t, name)
	if !ok {
		return out
	}
	assert.True(t, m.Data.(metricdata.Sum[int64]).IsMonotonic, name)
	for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
		v, _ := dp.Attributes.Value(key)
		out[v.Emit()] += dp.Value
	}
	return out
}

// durations returns the duration histogram's counts by operation and
// outcome ("get", "get NOT_FOUND", "get error malformed_key").
func (s *sdk) durations(t *testing.T) map[string]uint64 {
	t.Helper()
	m, ok := s.metric(t, "db.client.operation.duration")
	require.True(t, ok, "no durations recorded")
	assert.Equal(t, "s", m.Unit)
	out := map[string]uint64{}
	for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
		assert.Equal(t, durationBuckets, dp.Bounds)
		assert.Positive(t, dp.Sum, "operations take time")
		sys, _ := dp.Attributes.Value("db.system.name")
		assert.Equal(t, "memcached", sys.Emit())
		k := attr(dp.Attributes, "db.operation.name")
		if st := attr(dp.Attributes, "db.response.status_code"); st != "" {
			k += " " + st
		}
		if et := attr(dp.Attributes, "error.type"); et != "" {
			k += " error " + et
		}
		out[k] += dp.Count
	}
	return out
}

func attr(set attribute.Set, key attribute.Key) string {
	v, ok := set.Value(key)
	if !ok {
		return ""
	}
	return v.Emit()
}

func spanAttrs(s sdktrace.ReadOnlySpan) map[string]string {
	out := map[string]string{}
	for _, kv := range s.Attributes() {
		out[string(kv.Key)] = kv.Value.Emit()
	}
	return out
}

const secretKey = "user:secret-42"

func TestSpansAndMetrics(t *testing.T) {
	addr := startMemcached(t)
	_, port, _ := net.SplitHostPort(addr)
	for _, proto := range []ermc.Protocol{ermc.Text, ermc.Binary, ermc.Ultra} {
		t.Run(proto.String(), func(t *testing.T) {
			s := newSDK(t)
			c, err := ermc.New(addr, ermc.Options{Protocol: proto, Tracer: s.tracer(false)})
			require.NoError(t, err)
			defer c.Close()

			require.NoError(t, c.Set(bg, secretKey, []byte("v"), 0))
			_, err = c.Get(bg, secretKey, nil)
			require.NoError(t, err)
			_, err = c.Get(bg, secretKey+"-absent", nil)
			require.ErrorIs(t, err, ermc.ErrCacheMiss)
			require.ErrorIs(t, c.Add(bg, secretKey, []byte("v"), 0), ermc.ErrNotStored)
			_, err = c.Get(bg, "bad key secret", nil)
			require.ErrorIs(t, err, ermc.ErrMalformedKey)
			require.NoError(t, c.GetMulti(bg, []string{secretKey, "absent"}, func(int, []byte) {}))

			type want struct {
				name, status, errorType string
				code                    codes.Code
			}
			wants := []want{
				{"set", "", "", codes.Unset},
				{"get", "", "", codes.Unset},
				{"get", "NOT_FOUND", "", codes.Unset},
				{"add", "NOT_STORED", "", codes.Unset},
				{"get", "", "malformed_key", codes.Error},
				{"get_multi", "", "", codes.Unset},
			}
			spans := s.spans.Ended()
			require.Len(t, spans, len(wants))
			for i, w := range wants {
				sp := spans[i]
				a := spanAttrs(sp)
				assert.Equal(t, w.name+" "+addr, sp.Name(), "span %d", i)
				assert.Equal(t, trace.SpanKindClient, sp.SpanKind())
				assert.Equal(t, "memcached", a["db.system.name"])
				assert.Equal(t, w.name, a["db.operation.name"])
				assert.Equal(t, "127.0.0.1", a["server.address"])
				assert.Equal(t, port, a["server.port"])
				assert.Equal(t, w.status, a["db.response.status_code"], "span %d", i)
				assert.Equal(t, w.errorType, a["error.type"], "span %d", i)
				assert.Equal(t, w.code, sp.Status().Code, "span %d", i)
				assert.Equal(t, w.errorType, sp.Status().Description, "span %d", i)
				assert.NotContains(t, a, "db.query.text")
				for k, v := range a {
					assert.NotContains(t, v, "secret", "span %d attribute %s: no keys unless asked for", i, k)
				}
				assert.Empty(t, sp.Events(), "no error events: messages can quote keys")
				assert.Equal(t, ScopeName, sp.InstrumentationScope().Name)
			}

			assert.Equal(t, map[string]uint64{
				"set": 1, "get": 1, "get NOT_FOUND": 1, "add NOT_STORED": 1,
				"get error malformed_key": 1, "get_multi": 1,
			}, s.durations(t))
			assert.Equal(t, map[string]int64{"malformed_key": 1}, s.counts(t, "ermc.client.errors", "error.type"))
			assert.Equal(t, map[string]int64{"get": 1}, s.counts(t, "ermc.client.hits", "db.operation.name"))
			assert.Equal(t, map[string]int64{"get": 1}, s.counts(t, "ermc.client.misses", "db.operation.name"))
		})
	}
}

func TestRecordKeys(t *testing.T) {
	addr := startMemcached(t)
	s := newSDK(t)
	c, err := ermc.New(addr, ermc.Options{Tracer: s.tracer(true)})
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Get(bg, secretKey, nil)
	require.NoError(t, c.GetMulti(bg, []string{"a", "b"}, func(int, []byte) {}))
	_, err = c.Version(bg)
	require.NoError(t, err)
	spans := s.spans.Ended()
	require.Len(t, spans, 3)
	assert.Equal(t, "get "+secretKey, spanAttrs(spans[0])["db.query.text"])
	assert.Equal(t, "get_multi a ...", spanAttrs(spans[1])["db.query.text"])
	assert.NotContains(t, spanAttrs(spans[2]), "db.query.text", "no key, no text")
}

// Faults: a stall past Timeout is a timeout; a fault that ErrorAsMiss
// hides is recorded as the failure it was, not as a miss.
func TestFaults(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, nc := range held {
				nc.Close()
			}
		}()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, nc)
		}
	}()
	s := newSDK(t)
	c, err := ermc.New(ln.Addr().String(), ermc.Options{Tracer: s.tracer(false), Timeout: 100 * time.Millisecond})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Get(bg, "k", nil)
	var ce *ermc.ConnError
	require.ErrorAs(t, err, &ce)

	dead := freeAddr(t)
	hidden, err := ermc.New(dead, ermc.Options{Tracer: s.tracer(false), ErrorAsMiss: true})
	require.NoError(t, err)
	defer hidden.Close()
	_, err = hidden.Get(bg, "k", nil)
	require.ErrorIs(t, err, ermc.ErrCacheMiss)

	ctx, cancel := context.WithCancel(bg)
	cancel()
	_, err = c.Get(ctx, "k", nil)
	require.ErrorIs(t, err, context.Canceled)

	spans := s.spans.Ended()
	require.Len(t, spans, 3)
	assert.Equal(t, "timeout", spanAttrs(spans[0])["error.type"])
	assert.Equal(t, "dial", spanAttrs(spans[1])["error.type"])
	assert.Equal(t, "canceled", spanAttrs(spans[2])["error.type"])
	assert.Equal(t, map[string]int64{"timeout": 1, "dial": 1, "canceled": 1}, s.counts(t, "ermc.client.errors", "error.type"))
	assert.Empty(t, s.counts(t, "ermc.client.misses", "db.operation.name"), "a hidden fault is no miss")
}

// Without providers in Config, the global ones record.
func TestGlobalProviders(t *testing.T) {
	addr := startMemcached(t)
	s := newSDK(t)
	prevTP, prevMP := otel.GetTracerProvider(), otel.GetMeterProvider()
	otel.SetTracerProvider(s.tp)
	otel.SetMeterProvider(s.mp)
	defer func() { otel.SetTracerProvider(prevTP); otel.SetMeterProvider(prevMP) }()

	c, err := ermc.New(addr, ermc.Options{Tracer: NewTracer(Config{})})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Get(bg, "k", nil)
	require.ErrorIs(t, err, ermc.ErrCacheMiss)
	require.Len(t, s.spans.Ended(), 1)
	assert.Equal(t, map[string]uint64{"get NOT_FOUND": 1}, s.durations(t))
}

// Every error type of the package comment, from the errors ermc returns.
func TestClassify(t *testing.T) {
	conn := func(op string, err error) error { return &ermc.ConnError{Op: op, Addr: "a", Err: err} }
	cases := []struct {
		err             error
		kind            int
		status, errType string
	}{
		{nil, outOK, "", ""},
		{ermc.ErrCacheMiss, outMiss, "NOT_FOUND", ""},
		{ermc.ErrNotStored, outNotStored, "NOT_STORED", ""},
		{ermc.ErrCASConflict, outExists, "EXISTS", ""},
		{errors.Join(ermc.ErrCacheMiss), outMiss, "NOT_FOUND", ""},
		{conn("read", context.DeadlineExceeded), outOK, "", "timeout"},
		{conn("read", errors.Join(context.Canceled, context.DeadlineExceeded)), outOK, "", "canceled"},
		{conn("dial", context.DeadlineExceeded), outOK, "", "dial"},
		{conn("tls handshake", errors.New("bad certificate")), outOK, "", "tls"},
		{conn("auth", errors.New("eof")), outOK, "", "auth"},
		{conn("read", net.ErrClosed), outOK, "", "connection"},
		{errors.Join(ermc.ErrCacheMiss, conn("dial", errors.New("refused"))), outOK, "", "dial"},
		{&ermc.ServerError{Message: "out of memory"}, outOK, "SERVER_ERROR", "SERVER_ERROR"},
		{&ermc.ClientError{Message: "bad data chunk"}, outOK, "CLIENT_ERROR", "CLIENT_ERROR"},
		{&ermc.ClientError{Message: "cannot increment or decrement non-numeric value"}, outOK, "", "non_numeric"},
		{&ermc.StatusError{Status: 0x84, Message: "x"}, outOK, "0x84", "0x84"},
		{ermc.ErrAuth, outOK, "", "auth"},
		{ermc.ErrMalformedKey, outOK, "", "malformed_key"},
		{ermc.ErrValueTooLarge, outOK, "", "value_too_large"},
		{ermc.ErrCorruptValue, outOK, "", "corrupt_value"},
		{ermc.ErrProtocol, outOK, "", "protocol_error"},
		{ermc.ErrNotSupported, outOK, "", "not_supported"},
		{ermc.ErrClosed, outOK, "", "client_closed"},
		{ermc.ErrNonNumeric, outOK, "", "non_numeric"},
		{errors.New("something else"), outOK, "", "_OTHER"},
	}
	for i, tc := range cases {
		got := classify(tc.err)
		assert.Equal(t, outcome{tc.kind, tc.status, tc.errType}, got, "case %d: %v", i, tc.err)
	}
}

// A context this Tracer did not make is ignored at OpEnd.
func TestForeignContext(t *testing.T) {
	s := newSDK(t)
	tr := s.tracer(false)
	tr.OpEnd(bg, ermc.OpInfo{Name: "get"}, nil)
	assert.Empty(t, s.spans.Ended())
}

// Addresses: host and port, a unix socket's path.
func TestServerAttributes(t *testing.T) {
	for addr, want := range map[string][]string{
		"10.1.2.3:11211":      {"10.1.2.3", "11211", "get 10.1.2.3:11211"},
		"[::1]:11212":         {"::1", "11212", "get [::1]:11212"},
		"/run/memcached.sock": {"/run/memcached.sock", "", "get /run/memcached.sock"},
		"unix:/tmp/mc.sock":   {"/tmp/mc.sock", "", "get /tmp/mc.sock"},
		"cache.internal:1":    {"cache.internal", "1", "get cache.internal:1"},
	} {
		s := newServer(addr)
		a := s.newOp("get")
		got := map[string]string{}
		for _, kv := range a.base {
			got[string(kv.Key)] = kv.Value.Emit()
		}
		assert.Equal(t, want[0], got["server.address"], addr)
		if want[1] == "" {
			assert.NotContains(t, got, "server.port", addr)
		} else {
			assert.Equal(t, want[1], got["server.port"], addr)
		}
		assert.Equal(t, want[2], a.spanName, addr)
	}
}
