package main

import (
	"runtime"
	"testing"

	"go.uber.org/zap"
)

// TestReserveProcs: each event loop gets a P of its own, unless the user
// set GOMAXPROCS.
func TestReserveProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	t.Setenv("GOMAXPROCS", "")
	reserveProcs(zap.NewNop(), 3)
	if got := runtime.GOMAXPROCS(0); got != before+3 {
		t.Fatalf("GOMAXPROCS %d after reserving 3 event loops on %d", got, before)
	}
	runtime.GOMAXPROCS(before)
	t.Setenv("GOMAXPROCS", "1")
	reserveProcs(zap.NewNop(), 3)
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Fatalf("GOMAXPROCS %d with the variable set, want %d untouched", got, before)
	}
}
