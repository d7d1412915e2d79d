package ermc

import (
	"fmt"
	"sync"
	"testing"
)

func TestUltraSmoke(t *testing.T) {
	s := startMemcached(t)
	c := newTestClient(t, s.Addr, Ultra, Options{})
	if err := c.Set(bg, "a", []byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	v, err := c.Get(bg, "a", nil)
	if string(v) != "hello" || err != nil {
		t.Fatalf("%q %v", v, err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				k := fmt.Sprintf("k%d-%d", g, i%7)
				val := []byte(fmt.Sprintf("v%d-%d", g, i))
				if err := c.Set(bg, k, val, 0); err != nil {
					t.Error(err)
					return
				}
				got, err := c.Get(bg, k, nil)
				if err != nil || string(got) != string(val) {
					t.Errorf("%s: %q %v want %q", k, got, err, val)
					return
				}
			}
		}()
	}
	wg.Wait()
	n := 0
	err = c.GetMulti(bg, []string{"a", "zz", "a"}, func(i int, v []byte) { n++ })
	if err != nil || n != 2 {
		t.Fatal(n, err)
	}
}
