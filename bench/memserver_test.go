package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/ermc-go/ermc"
)

var memModes = []string{MemInline, MemGoroutine, MemPipe}

// TestMemResponderScript checks the responder's replies byte for byte,
// whatever the split of the input.
func TestMemResponderScript(t *testing.T) {
	in := "set a 5 0 3\r\nabc\r\nget a\r\ngets a b\r\nadd a 0 0 1\r\nx\r\nadd b 0 0 1 noreply\r\ny\r\n" +
		"get a b\r\nappend a 0 0 2\r\nde\r\nprepend a 0 0 1\r\nz\r\nget a\r\nincr a 1\r\nset n 2 0 2\r\n41\r\n" +
		"incr n 1\r\ndecr n 100\r\ntouch n 10\r\ntouch zz 10\r\ndelete n\r\ndelete n\r\nmn\r\nbogus\r\n" +
		"cas a 0 0 1 999\r\nq\r\ngat 10 b\r\nreplace zz 0 0 1\r\nq\r\n"
	want := "STORED\r\nVALUE a 5 3\r\nabc\r\nEND\r\nVALUE a 5 3 1\r\nabc\r\nEND\r\nNOT_STORED\r\n" +
		"VALUE a 5 3\r\nabc\r\nVALUE b 0 1\r\ny\r\nEND\r\nSTORED\r\nSTORED\r\nVALUE a 5 6\r\nzabcde\r\nEND\r\n" +
		string(rNonNum) + "STORED\r\n42\r\n0\r\nTOUCHED\r\nNOT_FOUND\r\nDELETED\r\nNOT_FOUND\r\nMN\r\nERROR\r\n" +
		"EXISTS\r\nVALUE b 0 1\r\ny\r\nEND\r\nNOT_STORED\r\n"
	for _, chunk := range []int{1, 2, 7, len(in)} {
		r := responder{s: NewMemStore()}
		var out []byte
		for i := 0; i < len(in); i += chunk {
			out = r.feed([]byte(in[i:min(i+chunk, len(in))]), out)
		}
		if string(out) != want {
			t.Errorf("chunk %d:\n got %q\nwant %q", chunk, out, want)
		}
	}
}

// TestMemResponderAllocs: answering get and set of existing items
// allocates nothing, so the runner's allocs/op on the in-memory transport
// are the client's.
func TestMemResponderAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race")
	}
	r := responder{s: NewMemStore()}
	out := r.feed([]byte("set k 0 0 100\r\n"+string(value100)+"\r\nset j 0 0 100\r\n"+string(value100)+"\r\n"), nil)
	req := []byte("get k\r\ngets k j\r\nset k 0 0 100\r\n" + string(value100) + "\r\nincr n 1\r\ndelete zz\r\nmn\r\n")
	allocs := testing.AllocsPerRun(1000, func() { out = r.feed(req, out[:0]) })
	if allocs != 0 {
		t.Errorf("responder: %v allocs per run", allocs)
	}
}

// TestMemClients runs the operations the workloads use, and a few more,
// through every in-memory mode on every client the mem transport compares.
func TestMemClients(t *testing.T) {
	for _, mode := range memModes {
		for _, name := range DefaultClients()[Mem] {
			t.Run(mode+"/"+name, func(t *testing.T) {
				mk, _ := MakerByName(name)
				tr := NewMemTransport(mode)
				for _, threshold := range []int{0, 100} {
					c, err := mk.New(Config{Addr: MemAddr, DialContext: tr.DialContext, CompressThreshold: threshold})
					if err != nil {
						t.Fatal(err)
					}
					checkWorker(t, c.NewWorker(), fmt.Sprintf("%s:%d:", name, threshold))
					c.Close()
				}
			})
		}
	}
}

func checkWorker(t *testing.T, w Worker, prefix string) {
	t.Helper()
	for _, v := range [][]byte{someValue, value100, longString, value64KiB} {
		if err := w.Set(prefix+"k", v); err != nil {
			t.Fatal(err)
		}
		got, err := w.Get(prefix + "k")
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Get: %d bytes, %v; want %d bytes", len(got), err, len(v))
		}
	}
	if _, err := w.Get(prefix + "missing"); err == nil {
		t.Fatal("Get of a missing key: no error")
	}
	keys := []string{prefix + "k", prefix + "missing", prefix + "k2"}
	if err := w.Set(keys[2], value100); err != nil {
		t.Fatal(err)
	}
	if n, err := w.GetMulti(keys); err != nil || n != 2 {
		t.Fatalf("GetMulti: %d hits, %v", n, err)
	}
	if err := w.SetInt(prefix+"n", -42); err != nil {
		t.Fatal(err)
	}
	if n, err := w.GetInt(prefix + "n"); err != nil || n != -42 {
		t.Fatalf("GetInt: %d, %v", n, err)
	}
	if err := w.SetObject(prefix+"o", &testObject); err != nil {
		t.Fatal(err)
	}
	var o TestObject
	if err := w.GetObject(prefix+"o", &o); err != nil || o != testObject {
		t.Fatalf("GetObject: %+v, %v", o, err)
	}
}

// TestMemMoreOps covers the rest of the subset through real client calls.
func TestMemMoreOps(t *testing.T) {
	ctx := context.Background()
	for _, mode := range memModes {
		tr := NewMemTransport(mode)
		for _, p := range []ermc.Protocol{ermc.Text, ermc.Ultra} {
			c, err := ermc.New(MemAddr, ermc.Options{Protocol: p, DialContext: tr.DialContext})
			if err != nil {
				t.Fatal(err)
			}
			k := fmt.Sprintf("%s-%v", mode, p)
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatalf("%s: %v", k, err)
				}
			}
			must(c.Set(ctx, k, []byte("10"), time.Minute))
			n, err := c.Incr(ctx, k, 5)
			must(err)
			if n != 15 {
				t.Fatalf("%s: incr: %d", k, n)
			}
			_, cas, err := c.Gets(ctx, k, nil)
			must(err)
			must(c.CompareAndSwap(ctx, k, []byte("x"), cas, 0))
			if err := c.CompareAndSwap(ctx, k, []byte("y"), cas, 0); !errors.Is(err, ermc.ErrCASConflict) {
				t.Fatalf("%s: stale CAS: %v", k, err)
			}
			must(c.Touch(ctx, k, time.Minute))
			must(c.Delete(ctx, k))
			if err := c.Delete(ctx, k); !errors.Is(err, ermc.ErrCacheMiss) {
				t.Fatalf("%s: second delete: %v", k, err)
			}
			must(c.SetNoreply(ctx, k, []byte("z"), 0))
			// Ultra may send the Get on another connection than the
			// noreply Set: it may miss for a moment.
			v, err := c.Get(ctx, k, nil)
			for i := 0; i < 100 && errors.Is(err, ermc.ErrCacheMiss); i++ {
				time.Sleep(time.Millisecond)
				v, err = c.Get(ctx, k, nil)
			}
			must(err)
			if string(v) != "z" {
				t.Fatalf("%s: after noreply set: %q", k, v)
			}
			ver, err := c.Version(ctx)
			must(err)
			if ver == "" {
				t.Fatalf("%s: empty version", k)
			}
			c.Close()
		}
		g := memcache.New(MemAddr)
		g.DialContext = tr.DialContext
		if err := g.Set(&memcache.Item{Key: "g", Value: []byte("1")}); err != nil {
			t.Fatal(err)
		}
		if n, err := g.Increment("g", 2); err != nil || n != 3 {
			t.Fatalf("gomemcache incr: %d %v", n, err)
		}
		if err := g.Touch("g", 10); err != nil {
			t.Fatal(err)
		}
		if err := g.Delete("g"); err != nil {
			t.Fatal(err)
		}
		if err := g.Ping(); err != nil {
			t.Fatal(err)
		}
		g.Close()
	}
}

// TestMemConnDeadline: a Read blocked on a connection with nothing to read
// ends at its deadline, also when the deadline is set while it waits.
func TestMemConnDeadline(t *testing.T) {
	for _, async := range []bool{false, true} {
		c := newMemConn(NewMemStore(), async)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 10))
			errc <- err
		}()
		time.Sleep(20 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		select {
		case err := <-errc:
			var ne interface{ Timeout() bool }
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("blocked read: %v, want a timeout", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("blocked read did not time out")
		}
		c.Close()
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("read after close: no error")
		}
	}
}

// TestMemTransportAllocs: ermc-text's Get and Set, which allocate nothing
// on TCP, allocate nothing on the in-memory transport either: the
// transport adds no allocations of its own.
func TestMemTransportAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race")
	}
	tr := NewMemTransport(MemInline)
	for _, name := range []string{"ermc-text", "ermc-ultra"} {
		mk, _ := MakerByName(name)
		c, err := mk.New(Config{Addr: MemAddr, DialContext: tr.DialContext})
		if err != nil {
			t.Fatal(err)
		}
		w := c.NewWorker()
		if err := w.Set("a", value100); err != nil {
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(500, func() {
			if _, err := w.Get("a"); err != nil {
				t.Fatal(err)
			}
			if err := w.Set("a", value100); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s Get+Set over the in-memory transport: %v allocs", name, allocs)
		}
		c.Close()
	}
}

// BenchmarkMemTransport compares the in-memory transport's modes on the
// same client and workload, to choose the fastest for the runner: the
// transport's own cost is overhead on every client alike.
func BenchmarkMemTransport(b *testing.B) {
	for _, mode := range []string{MemInline, MemGoroutine, MemPipe} {
		for _, client := range []string{"gomemcache", "ermc-text", "ermc-ultra"} {
			for _, wlName := range []string{"Get100B/1g", "Get100B/64g"} {
				b.Run(fmt.Sprintf("%s/%s/%s", mode, client, wlName), func(b *testing.B) {
					mk, _ := MakerByName(client)
					wl, _ := WorkloadByName(wlName)
					tr := NewMemTransport(mode)
					c, err := mk.New(Config{Addr: MemAddr, DialContext: tr.DialContext})
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					runWorkload(b, c, wl, "k")
				})
			}
		}
	}
}
