package ermc

import (
	"context"
	"testing"
)

func TestSmoke(t *testing.T) {
	s := startMemcached(t)
	c, err := New(s.Addr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Set(ctx, "a", []byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	v, err := c.Get(ctx, "a", nil)
	t.Logf("%q %v", v, err)
	_, err = c.Get(ctx, "nope", nil)
	t.Logf("%v", err)
	n, err := c.Incr(ctx, "a", 1)
	t.Logf("%d %v", n, err)
	_, err = c.Get(ctx, "a", nil)
	t.Logf("%v", err)
	st, err := c.Stats(ctx)
	t.Logf("%d %v %s", len(st), err, st["version"])
	ver, err := c.Version(ctx)
	t.Logf("%s %v", ver, err)
	err = c.GetMulti(ctx, []string{"a", "b", "a"}, func(i int, v []byte) { t.Logf("multi %d %q", i, v) })
	t.Log(err)
}
