//go:build !linux

package bench

import "time"

// sleepUntil sleeps until clock() reaches t, never returning early.
func sleepUntil(clock func() time.Duration, t time.Duration) {
	for d := t - clock(); d > 0; d = t - clock() {
		time.Sleep(d)
	}
}
