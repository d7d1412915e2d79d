package ermc

import (
	"strings"
	"testing"
)

// Benchmarks of each wire driver alone against a memcached started for
// them; the comparison with gomemcache lives in bench/.

func benchClient(b *testing.B, proto Protocol) *Client {
	s := startMemcached(b)
	return newTestClient(b, s.Addr, proto, Options{})
}

var benchValue = []byte(strings.Repeat("v", 100))

func benchDrivers(b *testing.B, goroutines int, op func(c *Client, buf []byte) error) {
	for _, proto := range wireDrivers {
		b.Run(proto.String(), func(b *testing.B) {
			c := benchClient(b, proto)
			if err := c.Set(bg, "bench", benchValue, 0); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(max(1, goroutines/2))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 0, 256)
				for pb.Next() {
					if err := op(c, buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkDriverGet64(b *testing.B) {
	benchDrivers(b, 64, func(c *Client, buf []byte) error { _, err := c.Get(bg, "bench", buf); return err })
}

func BenchmarkDriverSet64(b *testing.B) {
	benchDrivers(b, 64, func(c *Client, _ []byte) error { return c.Set(bg, "bench", benchValue, 0) })
}

func BenchmarkDriverGet1(b *testing.B) {
	benchDrivers(b, 1, func(c *Client, buf []byte) error { _, err := c.Get(bg, "bench", buf); return err })
}

func BenchmarkDriverGetMulti100(b *testing.B) {
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = "multi-" + strings.Repeat("k", 3) + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	for _, proto := range wireDrivers {
		b.Run(proto.String(), func(b *testing.B) {
			c := benchClient(b, proto)
			for _, k := range keys {
				if err := c.Set(bg, k, benchValue, 0); err != nil {
					b.Fatal(err)
				}
			}
			hits := 0
			count := func(int, []byte) { hits++ }
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.GetMulti(bg, keys, count); err != nil {
					b.Fatal(err)
				}
			}
			if hits != b.N*len(keys) {
				b.Fatalf("%d hits in %d calls", hits, b.N)
			}
		})
	}
}
