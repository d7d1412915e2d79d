package ermc

import (
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// remembered lists which of keys s has an id for.
func remembered(s *casStore, keys ...string) []string {
	var in []string
	for _, k := range keys {
		if _, ok := s.get(k); ok {
			in = append(in, k)
		}
	}
	return in
}

func TestCASStoreBounded(t *testing.T) {
	s := &casStore{max: 100}
	for i := 0; i < 10*s.max+7; i++ {
		s.put("k"+strconv.Itoa(i), uint64(i))
		require.LessOrEqual(t, len(s.ids), s.max, "after %d puts", i+1)
		require.LessOrEqual(t, len(s.keys), s.max)
	}
	require.Len(t, s.ids, s.max)
	// Keys read once each are forgotten in the order they came: the last
	// max are exactly the ones kept, with their ids.
	for i := 0; i < 10*s.max+7; i++ {
		id, ok := s.get("k" + strconv.Itoa(i))
		require.Equal(t, i >= 9*s.max+7, ok, "k%d", i)
		if ok {
			require.Equal(t, uint64(i), id)
		}
	}
}

func TestCASStoreOldestFirst(t *testing.T) {
	s := &casStore{max: 3}
	s.put("a", 1)
	s.put("b", 2)
	s.put("c", 3)
	s.put("d", 4) // forgets a, the oldest
	require.Equal(t, []string{"b", "c", "d"}, remembered(s, "a", "b", "c", "d"))
	s.put("e", 5) // then b
	require.Equal(t, []string{"c", "d", "e"}, remembered(s, "a", "b", "c", "d", "e"))
}

func TestCASStoreKeepsKeysReadAgain(t *testing.T) {
	s := &casStore{max: 3}
	s.put("a", 1)
	s.put("b", 2)
	s.put("c", 3)
	s.put("a", 10) // read again: a is now recent
	s.put("d", 4)  // forgets b, the oldest not read again
	require.Equal(t, []string{"a", "c", "d"}, remembered(s, "a", "b", "c", "d"))
	id, _ := s.get("a")
	require.Equal(t, uint64(10), id, "the id of the last read")

	// A key read on every round outlives many new keys.
	for i := 0; i < 100; i++ {
		s.put("hot", uint64(i))
		s.put("cold"+strconv.Itoa(i), 0)
		id, ok := s.get("hot")
		require.True(t, ok, "round %d", i)
		require.Equal(t, uint64(i), id)
		require.LessOrEqual(t, len(s.ids), s.max)
	}
}

func TestCASStoreUnbounded(t *testing.T) {
	s := &casStore{}
	for i := 0; i < 1000; i++ {
		s.put("k"+strconv.Itoa(i), uint64(i))
	}
	require.Len(t, s.ids, 1000)
	require.Empty(t, s.keys, "no ring without a limit")
	s.reset()
	require.Empty(t, remembered(s, "k0", "k999"))
}

func TestCASStoreReset(t *testing.T) {
	s := &casStore{max: 2}
	s.put("a", 1)
	s.put("b", 2)
	s.reset()
	require.Empty(t, remembered(s, "a", "b"))
	s.put("c", 3)
	s.put("d", 4)
	s.put("e", 5)
	require.Equal(t, []string{"d", "e"}, remembered(s, "c", "d", "e"))
}

// Run with -race: concurrent Gets and CAS on one store.
func TestCASStoreConcurrent(t *testing.T) {
	s := &casStore{max: 50}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := "k" + strconv.Itoa((g*7+i)%120)
				s.put(k, uint64(i))
				s.get(k)
			}
		}()
	}
	wg.Wait()
	require.Len(t, s.ids, s.max)
	for k, e := range s.ids {
		require.Equal(t, k, s.keys[e.slot], "the ring and the map agree")
	}
}

func TestCASCacheSizeOption(t *testing.T) {
	for _, tc := range []struct{ size, max int }{{0, DefaultCASCacheSize}, {10, 10}, {-1, 0}} {
		c, err := New("", Options{Protocol: Noop, CacheCAS: true, CASCacheSize: tc.size})
		require.NoError(t, err)
		require.Equal(t, tc.max, c.cas.max, "CASCacheSize %d", tc.size)
	}
}

// Against memcached: an id forgotten beyond CASCacheSize turns CAS into a
// plain set, and an id kept still detects a change.
func TestCacheCASForgetsOldest(t *testing.T) {
	forEachDriver(t, Options{CacheCAS: true, CASCacheSize: 2}, func(t *testing.T, c *Client) {
		other := newTestClient(t, c.addr, c.opts.Protocol, Options{})
		for _, k := range []string{"a", "b", "c"} {
			mustSet(t, c, k, "1")
		}
		for _, k := range []string{"a", "b", "c"} { // a is forgotten
			_, _, err := c.Gets(bg, k, nil)
			require.NoError(t, err)
		}
		for _, k := range []string{"a", "c"} {
			mustSet(t, other, k, "theirs")
		}
		require.NoError(t, c.CAS(bg, "a", []byte("mine"), 0), "no id for a: a plain set")
		requireValue(t, c, "a", "mine")
		require.ErrorIs(t, c.CAS(bg, "c", []byte("mine"), 0), ErrCASConflict)
		requireValue(t, c, "c", "theirs")
	})
}
