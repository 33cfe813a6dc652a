package kernels

import (
	"strings"
	"testing"
)

// TestPTX checks the embedded PTX: right target, every kernel present, and
// generated from the fold.cu beside it (same entry points).
func TestPTX(t *testing.T) {
	f := func(name, ptx, target string) {
		t.Helper()
		if !strings.Contains(ptx, ".target "+target+"\n") {
			t.Fatalf("%s: no .target %s", name, target)
		}
		for _, k := range []string{Fold, FoldK, AddPartial, Scale} {
			if !strings.Contains(ptx, ".visible .entry "+k+"(") {
				t.Fatalf("%s: kernel %s missing", name, k)
			}
			if !strings.Contains(Source, "__global__ void "+k+"(") {
				t.Fatalf("fold.cu: kernel %s missing", k)
			}
		}
	}
	f("PTX90", PTX90, "sm_90")
	f("PTX70", PTX70, "sm_70")
	if PTX(9, 0) != PTX90 || PTX(8, 6) != PTX70 || PTX(10, 0) != PTX90 {
		t.Fatal("PTX picks the wrong target")
	}
}
