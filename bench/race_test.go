//go:build race

package bench

// raceEnabled: the race detector changes allocation counts (sync.Pool drops
// items at random), so the allocation checks skip under it.
const raceEnabled = true
