package native

import (
	"fmt"
	"testing"
)

// Sizes are update bytes: issue 4's 16KiB, 1MiB and 256MiB, and two more
// because the float64 accumulator triples the bytes a fold touches. 64KiB
// (192 KiB touched) is in L2 on both development machines (AMD EPYC: 32 KiB
// L1d, 512 KiB L2; Intel Xeon: 48 KiB L1d, 2 MiB L2); 256KiB (768 KiB
// touched) is in the Intel's L2 only; 16KiB (48 KiB touched) is in L1 on
// the Intel and spills to L2 on the AMD; 1MiB (3 MiB) spills both L2s.
var benchSizes = []struct {
	name  string
	bytes int
}{{"16KiB", 16 << 10}, {"64KiB", 64 << 10}, {"256KiB", 256 << 10}, {"1MiB", 1 << 20}, {"256MiB", 256 << 20}}

// Sink keeps results alive.
var Sink float64

// filled returns n non-zero float32s: untouched pages would be read from
// the kernel's shared zero page and flatter the figures.
func filled(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%1021) + 0.5
	}
	return x
}

func filled64(n int) []float64 {
	a := make([]float64, n)
	for i := range a {
		a[i] = float64(i%509) + 0.25
	}
	return a
}

func benchFold(b *testing.B, l Level, bytes int) {
	if !l.Supported() {
		b.Skipf("%v not supported", l)
	}
	n := bytes / 4
	acc, x := filled64(n), filled(n)
	b.SetBytes(int64(bytes))
	b.ReportAllocs()
	for b.Loop() {
		l.Fold(acc, x, 0.5)
	}
	Sink += acc[n-1]
}

// BenchmarkFold: one update into the accumulator with the start-up level.
func BenchmarkFold(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) { benchFold(b, Best, s.bytes) })
	}
}

// BenchmarkFoldPureGo is the baseline: the same fold with the Go loop.
func BenchmarkFoldPureGo(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) { benchFold(b, Generic, s.bytes) })
	}
}

// BenchmarkFoldAVX2 is there to judge whether AVX-512 earns its place.
func BenchmarkFoldAVX2(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) { benchFold(b, AVX2, s.bytes) })
	}
}

// BenchmarkFoldSerial is Fold on one core: what the parallel split adds.
func BenchmarkFoldSerial(b *testing.B) {
	old := ParallelMin
	ParallelMin = 1 << 62
	defer func() { ParallelMin = old }()
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) { benchFold(b, Best, s.bytes) })
	}
}

// BenchmarkFoldK: K updates fused; SetBytes counts all K updates.
func BenchmarkFoldK(b *testing.B) {
	for _, k := range []int{2, 4, 8} {
		for _, s := range benchSizes {
			b.Run(fmt.Sprintf("%d/%s", k, s.name), func(b *testing.B) {
				n := s.bytes / 4
				acc := filled64(n)
				xs := make([][]float32, k)
				ws := make([]float32, k)
				for j := range xs {
					xs[j], ws[j] = filled(n), float32(j+1)
				}
				b.SetBytes(int64(k * s.bytes))
				b.ReportAllocs()
				for b.Loop() {
					FoldK(acc, xs, ws)
				}
				Sink += acc[n-1]
			})
		}
	}
}

// BenchmarkMemmove is the roofline: Go's copy of the same bytes.
func BenchmarkMemmove(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) {
			src := filled(s.bytes / 4)
			dst := filled(s.bytes / 4)
			b.SetBytes(int64(s.bytes))
			b.ReportAllocs()
			for b.Loop() {
				copy(dst, src)
			}
			Sink += float64(dst[len(dst)-1])
		})
	}
}

func fedAvgInputs() ([][]float32, []float32, []float64, []float32) {
	const k, n = 100, 1 << 20
	xs := make([][]float32, k)
	ws := make([]float32, k)
	for j := range xs {
		xs[j] = filled(n)
		xs[j][j] = float32(j)
		ws[j] = float32(100 + j)
	}
	return xs, ws, make([]float64, n), make([]float32, n)
}

// BenchmarkFedAvg100x1M: the weighted average of 100 updates of 1M float32
// (fold + scale), as Flower's aggregate and numpy do it (PERF.md).
func BenchmarkFedAvg100x1M(b *testing.B) {
	xs, ws, acc, out := fedAvgInputs()
	var wsum float64
	for _, w := range ws {
		wsum += float64(w)
	}
	b.SetBytes(int64(len(xs) * len(out) * 4))
	b.ReportAllocs()
	for b.Loop() {
		clear(acc)
		FoldMany(acc, xs, ws)
		Scale(out, acc, 1/wsum)
	}
	Sink += float64(out[0])
}

// BenchmarkFedAvg100x1MStreamed folds the same updates in 13 FoldK sweeps
// over the whole accumulator, as a server folding batches as they arrive.
func BenchmarkFedAvg100x1MStreamed(b *testing.B) {
	xs, ws, acc, out := fedAvgInputs()
	var wsum float64
	for _, w := range ws {
		wsum += float64(w)
	}
	b.SetBytes(int64(len(xs) * len(out) * 4))
	b.ReportAllocs()
	for b.Loop() {
		clear(acc)
		for g := 0; g < len(xs); g += MaxK {
			e := min(g+MaxK, len(xs))
			FoldK(acc, xs[g:e], ws[g:e])
		}
		Scale(out, acc, 1/wsum)
	}
	Sink += float64(out[0])
}

func benchFinite(b *testing.B, l Level, bytes int) {
	if !l.Supported() {
		b.Skipf("%v not supported", l)
	}
	raw := f32Bytes(filled(bytes / 4))
	b.SetBytes(int64(bytes))
	b.ReportAllocs()
	for b.Loop() {
		if !l.Finite(raw) {
			b.Fatal("finite data reported as NaN or Inf")
		}
	}
}

// BenchmarkFinite: the NaN/Inf check every update passes before it is
// folded, with the start-up level; BenchmarkFinitePureGo is its baseline.
func BenchmarkFinite(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) { benchFinite(b, Best, s.bytes) })
	}
}

func BenchmarkFinitePureGo(b *testing.B) {
	for _, s := range benchSizes {
		b.Run(s.name, func(b *testing.B) { benchFinite(b, Generic, s.bytes) })
	}
}
