// Package ermcotel records ermc's operations as OpenTelemetry spans and
// metrics, under OpenTelemetry's semantic conventions for database
// clients. It is a module of its own, so that ermc itself does not depend
// on OpenTelemetry.
//
//	c, err := ermc.New(addr, ermc.Options{Tracer: ermcotel.NewTracer(ermcotel.Config{})})
//
// Every operation is one span of kind client, named "{db.operation.name}
// {server.address}:{server.port}" ("get 10.0.0.7:11211"), with
// db.system.name "memcached", db.operation.name (the ermc.OpInfo name:
// "get", "set", "get_multi", ...), server.address and server.port. Keys
// are left out unless Config.RecordKeys asks for them (db.query.text
// "get user:42"): keys can hold personal data.
//
// An outcome that memcached reports as a status, not a failure, is
// db.response.status_code: NOT_FOUND (a miss; a delete, incr, decr or
// touch of a missing key), NOT_STORED, EXISTS (a CAS conflict). A failure
// sets error.type, and the span's status to Error with error.type as its
// description (an error's message can quote a key):
//
//	timeout          the Timeout option or the context's deadline
//	canceled         the context was cancelled
//	dial             connecting failed (refused, unreachable, no such
//	                 host, timed out; or failed at once while dialing
//	                 backs off after such a failure)
//	tls              the TLS handshake failed
//	auth             the server refused the credentials
//	connection       the connection failed while in use (reset, closed)
//	SERVER_ERROR     memcached's SERVER_ERROR reply
//	CLIENT_ERROR     memcached's CLIENT_ERROR reply
//	0xNN             a binary-protocol status code without a name here
//	malformed_key, value_too_large, non_numeric, corrupt_value,
//	protocol_error, not_supported, client_closed
//	                 ermc's errors of those names
//	_OTHER           anything else
//
// A fault that ErrorAsMiss turns into a miss is recorded as the failure it
// was, not as a miss.
//
// Metrics, with db.system.name, db.operation.name, server.address and
// server.port:
//
//	db.client.operation.duration  histogram, s: every operation, with
//	                              error.type and db.response.status_code
//	                              as on the span
//	ermc.client.errors            counter: failed operations, by error.type
//	ermc.client.hits              counter: get, gets and gat that found the key
//	ermc.client.misses            counter: get, gets and gat that did not
//
// A multi-get is one operation whose hits and misses the Tracer does not
// see, so it is not counted in ermc.client.hits or misses.
package ermcotel

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ermc-go/ermc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/dbconv"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the spans and metrics.
const ScopeName = "github.com/ermc-go/ermc/otel"

// Config configures NewTracer. The zero value is valid.
type Config struct {
	TracerProvider trace.TracerProvider // default: the global one (otel.GetTracerProvider)
	MeterProvider  metric.MeterProvider // default: the global one (otel.GetMeterProvider)
	// RecordKeys puts the operation and its key (the first, for a
	// multi-key operation) in db.query.text. Off by default: keys can
	// hold personal data.
	RecordKeys bool
}

// durationBuckets are the semantic conventions' bucket boundaries for
// db.client.operation.duration, in seconds.
var durationBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}

// NewTracer returns an ermc.Tracer that records every operation as a span
// and in the metrics the package comment lists. Its methods do not block.
func NewTracer(cfg Config) ermc.Tracer {
	tp, mp := cfg.TracerProvider, cfg.MeterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t := &tracer{
		tr:         tp.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		recordKeys: cfg.RecordKeys,
	}
	m := mp.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	d := dbconv.ClientOperationDuration{}
	// Errors making an instrument leave a working no-op instrument in
	// its place; they are reported to OpenTelemetry's error handler.
	var err error
	t.duration, err = m.Float64Histogram(d.Name(), metric.WithUnit(d.Unit()), metric.WithDescription(d.Description()),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	report(err)
	t.errors, err = m.Int64Counter("ermc.client.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Operations that failed, by error.type."))
	report(err)
	t.hits, err = m.Int64Counter("ermc.client.hits", metric.WithUnit("{hit}"),
		metric.WithDescription("Single-key reads (get, gets, gat) that found their key."))
	report(err)
	t.misses, err = m.Int64Counter("ermc.client.misses", metric.WithUnit("{miss}"),
		metric.WithDescription("Single-key reads (get, gets, gat) that did not find their key."))
	report(err)
	empty := map[string]*server{}
	t.servers.Store(&empty)
	return t
}

func report(err error) {
	if err != nil {
		otel.Handle(err)
	}
}

type tracer struct {
	tr                   trace.Tracer
	duration             metric.Float64Histogram
	errors, hits, misses metric.Int64Counter
	recordKeys           bool

	// What each server address and operation name always records, made
	// once: copy-on-write maps, read without a lock.
	servers atomic.Pointer[map[string]*server]
	mu      sync.Mutex // serialises the copies
}

// opKey finds an operation's opCtx in the context OpStart returned.
type opKey struct{}

// opCtx is the context OpStart returns: the span's context, with what
// OpEnd needs.
type opCtx struct {
	context.Context
	span  trace.Span
	start time.Time // zero when the span keeps its own times
	attrs *opAttrs
}

// spanTimes is a span that knows when it started and ended (the SDK's), so
// the duration needs no clock reads of its own.
type spanTimes interface {
	StartTime() time.Time
	EndTime() time.Time
}

func (c *opCtx) Value(key any) any {
	if key == (opKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func (t *tracer) OpStart(ctx context.Context, op ermc.OpInfo) context.Context {
	a := t.attrs(op.Addr, op.Name)
	opts := a.start
	if t.recordKeys && op.Keys > 0 {
		opts = append(opts[:len(opts):len(opts)], trace.WithAttributes(semconv.DBQueryText(queryText(op))))
	}
	ctx, span := t.tr.Start(ctx, a.spanName, opts...)
	oc := &opCtx{Context: ctx, span: span, attrs: a}
	if _, ok := span.(spanTimes); !ok || !span.IsRecording() {
		oc.start = time.Now()
	}
	return oc
}

// end ends oc's span and returns the operation's duration in seconds.
func (oc *opCtx) end() float64 {
	oc.span.End()
	if oc.start.IsZero() {
		st := oc.span.(spanTimes)
		return st.EndTime().Sub(st.StartTime()).Seconds()
	}
	return time.Since(oc.start).Seconds()
}

func (t *tracer) OpEnd(ctx context.Context, op ermc.OpInfo, err error) {
	oc, ok := ctx.Value(opKey{}).(*opCtx)
	if !ok {
		return // a context this Tracer did not make
	}
	ctx = oc.Context // the span's: metrics take exemplars from it
	a := oc.attrs
	o := classify(err)
	if o.errorType == "" {
		if o.status != "" {
			oc.span.SetAttributes(semconv.DBResponseStatusCode(o.status))
		}
		t.duration.Record(ctx, oc.end(), a.outcome[o.kind]...)
		if a.read {
			switch o.kind {
			case outOK:
				t.hits.Add(ctx, 1, a.counted...)
			case outMiss:
				t.misses.Add(ctx, 1, a.counted...)
			}
		}
		return
	}
	kv := []attribute.KeyValue{semconv.ErrorTypeKey.String(o.errorType)}
	if o.status != "" {
		kv = append(kv, semconv.DBResponseStatusCode(o.status))
	}
	oc.span.SetAttributes(kv...)
	oc.span.SetStatus(codes.Error, o.errorType)
	failed := metric.WithAttributeSet(attribute.NewSet(append(kv, a.base...)...))
	t.duration.Record(ctx, oc.end(), failed)
	t.errors.Add(ctx, 1, failed)
}

// queryText is db.query.text for op: its name and key.
func queryText(op ermc.OpInfo) string {
	if op.Keys > 1 {
		return op.Name + " " + op.Key + " ..."
	}
	return op.Name + " " + op.Key
}

// server is what every operation on one address records.
type server struct {
	address []attribute.KeyValue // server.address, server.port
	target  string               // server.address:server.port, for span names
	ops     atomic.Pointer[map[string]*opAttrs]
}

// opAttrs is what one operation on one server records, made once.
type opAttrs struct {
	spanName string
	start    []trace.SpanStartOption
	base     []attribute.KeyValue            // system, operation, server
	outcome  [outKinds][]metric.RecordOption // the duration's options by outcome
	counted  []metric.AddOption              // hits and misses
	read     bool                            // a single-key read: counts hits and misses
}

// knownOps are made with the server; others (operations added later) on
// first use.
var knownOps = []string{"get", "gets", "gat", "get_multi", "set", "add", "replace", "append", "prepend",
	"cas", "incr", "decr", "delete", "touch", "flush_all", "stats", "version"}

// attrs returns the attributes of operation name on addr, making them the
// first time.
func (t *tracer) attrs(addr, name string) *opAttrs {
	if s := (*t.servers.Load())[addr]; s != nil {
		if a := (*s.ops.Load())[name]; a != nil {
			return a
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	servers := *t.servers.Load()
	s := servers[addr]
	if s == nil {
		s = newServer(addr)
		next := make(map[string]*server, len(servers)+1)
		for k, v := range servers {
			next[k] = v
		}
		next[addr] = s
		t.servers.Store(&next)
	}
	ops := *s.ops.Load()
	if a := ops[name]; a != nil {
		return a
	}
	a := s.newOp(name)
	next := make(map[string]*opAttrs, len(ops)+1)
	for k, v := range ops {
		next[k] = v
	}
	next[name] = a
	s.ops.Store(&next)
	return a
}

// newServer makes the attributes of addr: host and port, or a unix
// socket's path.
func newServer(addr string) *server {
	s := &server{}
	path, unix := strings.CutPrefix(addr, "unix:")
	if !unix && (strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "./")) {
		path, unix = addr, true
	}
	host, port, err := net.SplitHostPort(addr)
	pn, perr := strconv.Atoi(port)
	switch {
	case unix:
		s.address = []attribute.KeyValue{semconv.ServerAddress(path)}
		s.target = path
	case err == nil && perr == nil:
		s.address = []attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(pn)}
		s.target = net.JoinHostPort(host, port)
	default:
		s.address = []attribute.KeyValue{semconv.ServerAddress(addr)}
		s.target = addr
	}
	ops := make(map[string]*opAttrs, len(knownOps))
	for _, name := range knownOps {
		ops[name] = s.newOp(name)
	}
	s.ops.Store(&ops)
	return s
}

func (s *server) newOp(name string) *opAttrs {
	base := append([]attribute.KeyValue{semconv.DBSystemNameMemcached, semconv.DBOperationName(name)}, s.address...)
	a := &opAttrs{
		spanName: name + " " + s.target,
		start:    []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(base...)},
		base:     base,
		read:     name == "get" || name == "gets" || name == "gat",
	}
	set := attribute.NewSet(base...)
	a.counted = []metric.AddOption{metric.WithAttributeSet(set)}
	a.outcome[outOK] = []metric.RecordOption{metric.WithAttributeSet(set)}
	for kind, status := range statusOf {
		if status != "" {
			st := attribute.NewSet(append(base[:len(base):len(base)], semconv.DBResponseStatusCode(status))...)
			a.outcome[kind] = []metric.RecordOption{metric.WithAttributeSet(st)}
		}
	}
	return a
}
