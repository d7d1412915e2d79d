package ermc

import "sync"

// casStore remembers the CAS id Gets read for each key (CacheCAS), for
// CAS to send back. Safe for concurrent use.
type casStore struct {
	mu  sync.RWMutex
	ids map[string]uint64
}

func (s *casStore) put(key string, id uint64) {
	s.mu.Lock()
	if s.ids == nil {
		s.ids = make(map[string]uint64)
	}
	s.ids[key] = id
	s.mu.Unlock()
}

func (s *casStore) get(key string) (uint64, bool) {
	s.mu.RLock()
	id, ok := s.ids[key]
	s.mu.RUnlock()
	return id, ok
}

func (s *casStore) reset() {
	s.mu.Lock()
	s.ids = nil
	s.mu.Unlock()
}
