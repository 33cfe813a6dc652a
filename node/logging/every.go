package logging

import (
	"sync"
	"time"
)

// Every lets a repeated log line through once per Period and counts the
// occurrences it held back, so that a condition every request meets (a
// server cut off from its scheduler refuses them all) costs the log a line
// every Period, with the count, instead of a line per request: a thousand
// devices retrying wrote 390,000 lines in 14 minutes.
type Every struct {
	Period time.Duration

	mu   sync.Mutex
	next time.Time // when the next occurrence is logged
	held int       // occurrences held back since the last logged one
}

// Allow reports whether the occurrence at now is logged and, if it is, how
// many were held back since the last one logged.
func (e *Every) Allow(now time.Time) (log bool, held int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Before(e.next) {
		e.held++
		return false, 0
	}
	held, e.held, e.next = e.held, 0, now.Add(e.Period)
	return true, held
}
