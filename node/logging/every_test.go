package logging

import (
	"testing"
	"time"
)

func TestEveryLogsOncePerPeriodWithTheCount(t *testing.T) {
	e := Every{Period: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	step := func(at time.Duration, wantLog bool, wantHeld int) {
		t.Helper()
		log, held := e.Allow(t0.Add(at))
		if log != wantLog || held != wantHeld {
			t.Fatalf("at %v: Allow = %v, %d; want %v, %d", at, log, held, wantLog, wantHeld)
		}
	}
	step(0, true, 0) // the first occurrence is logged
	for i := 1; i <= 5; i++ {
		step(time.Duration(i)*time.Second, false, 0)
	}
	step(9999*time.Millisecond, false, 0)
	step(10*time.Second, true, 6) // a period later, with what was held back
	step(11*time.Second, false, 0)
	step(time.Hour, true, 1)
	step(time.Hour, false, 0)
}
