//go:build race

package device

// raceEnabled: the race detector drops sync.Pool items at random, so
// allocation checks do not hold.
const raceEnabled = true
