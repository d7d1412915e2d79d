package bench

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
)

// serverAddr is the memcached the tests and benchmarks use: ERMC_BENCH_ADDR,
// or one started by TestMain; empty when memcached is not installed (the
// tests that need it skip).
var (
	serverAddr string
	serverErr  error
)

func TestMain(m *testing.M) {
	serverAddr = os.Getenv("ERMC_BENCH_ADDR")
	if serverAddr == "" {
		addr, stop, err := StartMemcached()
		if err != nil {
			serverErr = err
		} else {
			serverAddr = addr
			code := m.Run()
			stop()
			os.Exit(code)
		}
	}
	os.Exit(m.Run())
}

func needServer(tb testing.TB) {
	tb.Helper()
	if serverAddr == "" {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("no memcached: %v", serverErr)
		}
		tb.Skipf("no memcached: %v", serverErr)
	}
}

// benchWorkload runs one workload of the runner as a testing.B benchmark
// on every client over loopback TCP: b.N ops spread over the workload's
// goroutines, each with its own Worker.
func benchWorkload(b *testing.B, name string) {
	needServer(b)
	wl, ok := WorkloadByName(name)
	if !ok {
		b.Fatalf("no workload %q", name)
	}
	for _, mk := range Makers() {
		b.Run(mk.Name, func(b *testing.B) {
			cfg := Config{Addr: serverAddr}
			if wl.Compress {
				cfg.CompressThreshold = 100
			}
			c, err := mk.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			runWorkload(b, c, wl, "gotest:"+mk.Name+":"+wl.Name+":")
		})
	}
}

func runWorkload(b *testing.B, c Client, wl Workload, prefix string) {
	inst := wl.New(prefix, wl.Goroutines)
	workers := make([]Worker, wl.Goroutines)
	for i := range workers {
		workers[i] = c.NewWorker()
	}
	if err := inst.Prepare(workers[0]); err != nil {
		b.Fatal(err)
	}
	// One untimed op per worker: connections dialled, buffers grown.
	for g, w := range workers {
		if err := inst.Op(w, g); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	if wl.Goroutines == 1 {
		for i := 0; i < b.N; i++ {
			if err := inst.Op(workers[0], 0); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	// RunParallel starts GOMAXPROCS*p goroutines: ask for at least
	// wl.Goroutines and hand each its own worker.
	p := (wl.Goroutines + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	for len(workers) < p*runtime.GOMAXPROCS(0) {
		workers = append(workers, c.NewWorker())
	}
	b.SetParallelism(p)
	var next atomic.Int32
	b.RunParallel(func(pb *testing.PB) {
		g := int(next.Add(1)-1) % wl.Goroutines
		w := workers[g]
		for pb.Next() {
			if err := inst.Op(w, g); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGet100B_1(b *testing.B)   { benchWorkload(b, "Get100B/1g") }
func BenchmarkGet100B_64(b *testing.B)  { benchWorkload(b, "Get100B/64g") }
func BenchmarkSet100B_1(b *testing.B)   { benchWorkload(b, "Set100B/1g") }
func BenchmarkSet100B_64(b *testing.B)  { benchWorkload(b, "Set100B/64g") }
func BenchmarkGetMulti100(b *testing.B) { benchWorkload(b, "GetMulti100/1g") }
func BenchmarkGet64KiB(b *testing.B)    { benchWorkload(b, "Get64KiB/1g") }

// BenchmarkPyermc runs pyermc's benchmark workloads (Set then Get).
func BenchmarkPyermc(b *testing.B) {
	for _, wl := range Workloads() {
		if wl.Goroutines != 1 || !isSetGet(wl.Name) {
			continue
		}
		b.Run(wl.Name, func(b *testing.B) { benchWorkload(b, wl.Name) })
	}
}

func isSetGet(name string) bool {
	return len(name) > 7 && name[len(name)-7:] == "/SetGet"
}
