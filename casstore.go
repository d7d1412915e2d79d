package ermc

import "sync"

// casStore remembers the CAS id Gets read for each key (CacheCAS), for
// CAS to send back. It holds at most max ids (0: no limit), so a client
// that reads ever new keys keeps bounded memory. A new key beyond max
// takes the place of the oldest one not read again since the clock hand
// last passed it (CLOCK, second chance): keys are forgotten oldest first,
// and a key read again recently keeps its id. Safe for concurrent use.
type casStore struct {
	mu   sync.RWMutex
	max  int
	ids  map[string]casEntry
	keys []string // with a limit: the ring of keys, in order of arrival
	used []bool   // used[i]: keys[i] was read again since the hand passed it
	hand int      // next slot of the ring to consider for eviction
}

type casEntry struct {
	id   uint64
	slot int // index in keys
}

func (s *casStore) put(key string, id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.ids[key]; ok {
		s.ids[key] = casEntry{id: id, slot: e.slot}
		if s.max > 0 {
			s.used[e.slot] = true
		}
		return
	}
	if s.ids == nil {
		s.ids = make(map[string]casEntry)
	}
	slot := 0
	switch {
	case s.max <= 0:
	case len(s.keys) < s.max:
		slot = len(s.keys)
		s.keys = append(s.keys, key)
		s.used = append(s.used, false)
	default:
		slot = s.evict()
		s.keys[slot] = key
	}
	s.ids[key] = casEntry{id: id, slot: slot}
}

// evict forgets the oldest key not read again since the hand last passed
// it, giving the others a second chance, and returns the slot it freed.
// The ring is full.
func (s *casStore) evict() int {
	for s.used[s.hand] {
		s.used[s.hand] = false
		s.hand = (s.hand + 1) % len(s.keys)
	}
	slot := s.hand
	delete(s.ids, s.keys[slot])
	s.hand = (slot + 1) % len(s.keys)
	return slot
}

func (s *casStore) get(key string) (uint64, bool) {
	s.mu.RLock()
	e, ok := s.ids[key]
	s.mu.RUnlock()
	return e.id, ok
}

func (s *casStore) reset() {
	s.mu.Lock()
	s.ids, s.keys, s.used, s.hand = nil, nil, nil, 0
	s.mu.Unlock()
}
