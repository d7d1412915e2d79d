//go:build !race

package ermc

const raceEnabled = false
