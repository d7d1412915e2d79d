package bench

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
)

var serverAddr string

func TestMain(m *testing.M) {
	serverAddr = os.Getenv("ERMC_BENCH_ADDR")
	if serverAddr == "" {
		addr, stop, err := StartMemcached()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		serverAddr = addr
		code := m.Run()
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func forEachClient(b *testing.B, fn func(b *testing.B, c Client)) {
	for _, mk := range Makers() {
		b.Run(mk.Name, func(b *testing.B) {
			c, err := mk.New(serverAddr)
			if err != nil {
				b.Skip(err)
			}
			defer c.Close()
			fn(b, c)
		})
	}
}

// parallel runs op on goroutines goroutines (rounded to a multiple of
// GOMAXPROCS, as testing.B's SetParallelism does).
func parallel(b *testing.B, goroutines int, op func(i int) error) {
	b.ReportAllocs()
	if goroutines == 1 {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := op(i); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(max(1, goroutines/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if err := op(i); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

var value100 = []byte(strings.Repeat("v", 100))

func benchGet(b *testing.B, goroutines int, value []byte) {
	forEachClient(b, func(b *testing.B, c Client) {
		key := fmt.Sprintf("get-%d", len(value))
		if err := c.Set(key, value); err != nil {
			b.Fatal(err)
		}
		parallel(b, goroutines, func(int) error {
			var buf [128]byte
			v, err := c.Get(key, buf[:0])
			if err == nil && len(v) != len(value) {
				err = fmt.Errorf("got %d bytes", len(v))
			}
			return err
		})
	})
}

func BenchmarkGet100B_1(b *testing.B)  { benchGet(b, 1, value100) }
func BenchmarkGet100B_64(b *testing.B) { benchGet(b, 64, value100) }

func benchSet(b *testing.B, goroutines int) {
	forEachClient(b, func(b *testing.B, c Client) {
		parallel(b, goroutines, func(i int) error { return c.Set("set-100", value100) })
	})
}

func BenchmarkSet100B_1(b *testing.B)  { benchSet(b, 1) }
func BenchmarkSet100B_64(b *testing.B) { benchSet(b, 64) }

func BenchmarkGetMulti100(b *testing.B) {
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("multi-%03d", i)
	}
	forEachClient(b, func(b *testing.B, c Client) {
		for _, k := range keys {
			if err := c.Set(k, value100); err != nil {
				b.Fatal(err)
			}
		}
		parallel(b, 1, func(int) error {
			n, err := c.GetMulti(keys)
			if err == nil && n != len(keys) {
				err = fmt.Errorf("%d hits", n)
			}
			return err
		})
	})
}
