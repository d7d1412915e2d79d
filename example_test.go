package ermc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/doc"
	"go/parser"
	"go/token"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The pyermc README walkthrough, in Go. walkthrough runs it on a client made
// with CacheCAS (as the README's client is) and prints each call and its
// result the way the Python prompt shows them, so the transcript reads like
// the README.

// walkthroughTranscript is what the README's session prints.
const walkthroughTranscript = `>>> c.set('test', 'test string')
True
>>> c.get('test')
'test string'
>>> c.set('something', '1')
True
>>> c.incr('something')
2
>>> c.incr('something')
3
>>> c.decr('something')
2
>>> c.delete('something')
True
>>> c.set('testcas', 1)
True
>>> c.gets('testcas')
1
>>> c.cas('testcas', 21)
True
>>> c.cas('testcas', 21)
False
>>> c.add('testadd', 'a')
True
>>> c.get('testadd')
'a'
>>> c.add('testadd', 'b')
False
>>> c.replace('testreplace', 'c')
False
>>> c.set('testreplace', 'yes')
True
>>> c.get('testreplace')
'yes'
>>> c.replace('testreplace', 'no')
True
>>> c.get('testreplace')
'no'
>>> c.set('foo', 'a')
True
>>> c.append('foo', 'b')
True
>>> c.append('foo', 'c')
True
>>> c.get('foo')
'abc'
`

// walkthrough runs the README session on c (which must have CacheCAS) and
// writes the transcript to w. A refused write prints False, as pyermc
// returns it; any other error stops the walkthrough.
func walkthrough(ctx context.Context, c *Client, w io.Writer) error {
	if err := c.Connect(ctx); err != nil { // optional, as in the README
		return err
	}
	var failed error
	call := func(format string, args ...any) {
		fmt.Fprintf(w, ">>> c."+format+"\n", args...)
	}
	// stored prints a storage command's outcome as pyermc's True/False.
	stored := func(err error) {
		switch {
		case failed != nil:
		case err == nil:
			fmt.Fprintln(w, "True")
		case errors.Is(err, ErrNotStored), errors.Is(err, ErrCASConflict):
			fmt.Fprintln(w, "False")
		default:
			failed = err
		}
	}
	get := func(key string) {
		v, err := c.Get(ctx, key, nil)
		if err != nil {
			failed = err
			return
		}
		fmt.Fprintf(w, "'%s'\n", v)
	}
	number := func(n uint64, err error) {
		if err != nil {
			failed = err
			return
		}
		fmt.Fprintln(w, n)
	}
	steps := []func(){
		// example set/get
		func() { call("set('test', 'test string')"); stored(c.Set(ctx, "test", []byte("test string"), 0)) },
		func() { call("get('test')"); get("test") },
		// incr/decr example
		func() { call("set('something', '1')"); stored(c.Set(ctx, "something", []byte("1"), 0)) },
		func() { call("incr('something')"); number(c.Incr(ctx, "something", 1)) },
		func() { call("incr('something')"); number(c.Incr(ctx, "something", 1)) },
		func() { call("decr('something')"); number(c.Decr(ctx, "something", 1)) },
		func() { call("delete('something')"); stored(c.Delete(ctx, "something")) },
		// check-and-set (cas) example: Gets remembers the CAS id
		func() { call("set('testcas', 1)"); stored(c.SetInt(ctx, "testcas", 1, 0)) },
		func() {
			call("gets('testcas')")
			v, _, err := c.Gets(ctx, "testcas", nil)
			if err != nil {
				failed = err
				return
			}
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				failed = err
				return
			}
			fmt.Fprintln(w, n)
		},
		func() { call("cas('testcas', 21)"); stored(c.CAS(ctx, "testcas", []byte("21"), 0)) },
		// the remembered id is stale now: the second cas fails
		func() { call("cas('testcas', 21)"); stored(c.CAS(ctx, "testcas", []byte("21"), 0)) },
		// add example
		func() { call("add('testadd', 'a')"); stored(c.Add(ctx, "testadd", []byte("a"), 0)) },
		func() { call("get('testadd')"); get("testadd") },
		func() { call("add('testadd', 'b')"); stored(c.Add(ctx, "testadd", []byte("b"), 0)) },
		// replace example
		func() { call("replace('testreplace', 'c')"); stored(c.Replace(ctx, "testreplace", []byte("c"), 0)) },
		func() { call("set('testreplace', 'yes')"); stored(c.Set(ctx, "testreplace", []byte("yes"), 0)) },
		func() { call("get('testreplace')"); get("testreplace") },
		func() { call("replace('testreplace', 'no')"); stored(c.Replace(ctx, "testreplace", []byte("no"), 0)) },
		func() { call("get('testreplace')"); get("testreplace") },
		// append example
		func() { call("set('foo', 'a')"); stored(c.Set(ctx, "foo", []byte("a"), 0)) },
		func() { call("append('foo', 'b')"); stored(c.Append(ctx, "foo", []byte("b"))) },
		func() { call("append('foo', 'c')"); stored(c.Append(ctx, "foo", []byte("c"))) },
		func() { call("get('foo')"); get("foo") },
	}
	for _, step := range steps {
		step()
		if failed != nil {
			return failed
		}
	}
	return nil
}

// TestWalkthrough runs the README session on every wire driver and
// compares the transcript with the README's.
func TestWalkthrough(t *testing.T) {
	forEachDriver(t, Options{CacheCAS: true}, func(t *testing.T, c *Client) {
		var out bytes.Buffer
		require.NoError(t, walkthrough(bg, c, &out), "walkthrough failed after:\n%s", out.String())
		require.Equal(t, walkthroughTranscript, out.String(), "transcript differs from the README")
	})
}

// TestWalkthroughNeedsCacheCAS shows why the README's client sets
// cache_cas: without it, Gets remembers nothing and both CAS calls are
// plain sets, so the second one succeeds too.
func TestWalkthroughNeedsCacheCAS(t *testing.T) {
	forEachDriver(t, Options{}, func(t *testing.T, c *Client) {
		var out bytes.Buffer
		require.NoError(t, walkthrough(bg, c, &out), "walkthrough")
		require.NotEqual(t, walkthroughTranscript, out.String(), "the second cas succeeded only with CacheCAS, but the transcript matched without it")
	})
}

// Example_walkthrough is the pyermc README session, on a memcached at
// 127.0.0.1:11211. It needs that server, so it has no Output comment: go
// test compiles it but does not run it. The session it prints is checked
// by TestWalkthrough, which runs the same walkthrough on every wire driver
// against a memcached the test harness starts (and skips when memcached is
// not installed), and TestWalkthroughExampleOutput keeps the transcript
// below the same text.
func Example_walkthrough() {
	// cache_cas=True in the README: Gets remembers CAS ids for CAS.
	c, err := New("127.0.0.1:11211", Options{Protocol: Text, CacheCAS: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	if err := walkthrough(context.Background(), c, os.Stdout); err != nil {
		fmt.Println("error:", err)
	}
	// Prints:
	// >>> c.set('test', 'test string')
	// True
	// >>> c.get('test')
	// 'test string'
	// >>> c.set('something', '1')
	// True
	// >>> c.incr('something')
	// 2
	// >>> c.incr('something')
	// 3
	// >>> c.decr('something')
	// 2
	// >>> c.delete('something')
	// True
	// >>> c.set('testcas', 1)
	// True
	// >>> c.gets('testcas')
	// 1
	// >>> c.cas('testcas', 21)
	// True
	// >>> c.cas('testcas', 21)
	// False
	// >>> c.add('testadd', 'a')
	// True
	// >>> c.get('testadd')
	// 'a'
	// >>> c.add('testadd', 'b')
	// False
	// >>> c.replace('testreplace', 'c')
	// False
	// >>> c.set('testreplace', 'yes')
	// True
	// >>> c.get('testreplace')
	// 'yes'
	// >>> c.replace('testreplace', 'no')
	// True
	// >>> c.get('testreplace')
	// 'no'
	// >>> c.set('foo', 'a')
	// True
	// >>> c.append('foo', 'b')
	// True
	// >>> c.append('foo', 'c')
	// True
	// >>> c.get('foo')
	// 'abc'
}

// TestWalkthroughExampleOutput keeps the transcript in Example_walkthrough
// ("Prints:") and walkthroughTranscript the same text, and makes sure the
// example stays unrun: an Output comment would make go test run it, and
// fail wherever no memcached listens on 127.0.0.1:11211.
func TestWalkthroughExampleOutput(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "example_test.go", nil, parser.ParseComments)
	require.NoError(t, err, "parse example_test.go")
	for _, ex := range doc.Examples(f) {
		if ex.Name != "_walkthrough" {
			continue
		}
		require.False(t, ex.Output != "" || ex.EmptyOutput, "Example_walkthrough has an Output comment: go test would run it")
		for _, cg := range ex.Comments {
			if text := cg.Text(); strings.HasPrefix(text, "Prints:\n") {
				require.Equal(t, walkthroughTranscript, strings.TrimPrefix(text, "Prints:\n"), "what Example_walkthrough says it prints")
				return
			}
		}
		require.Fail(t, "Example_walkthrough: no Prints: comment")
	}
	require.Fail(t, "Example_walkthrough not found")
}
