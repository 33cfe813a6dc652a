package native

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

var noasm = flag.Bool("noasm", false, "run the package-level functions on the pure-Go kernels")

func TestMain(m *testing.M) {
	flag.Parse()
	if *noasm {
		Best = Generic
	}
	os.Exit(m.Run())
}

// lengths covers empty, sub-block, block edges and a tensor past ParallelMin.
var lengths = []int{0, 1, 7, 31, 32, 33, 63, 64, 65, 4099, 1<<20 + 3}

const canaries = 5

var canary = math.Float64frombits(0x7ff8_dead_beef_0001)

// accWithCanary returns n float64s followed by canaries past the end.
func accWithCanary(rng *rand.Rand, n int) []float64 {
	buf := make([]float64, n+canaries)
	for i := range n {
		buf[i] = rng.NormFloat64()
	}
	for i := n; i < len(buf); i++ {
		buf[i] = canary
	}
	return buf[:n]
}

func checkCanary(t *testing.T, acc []float64) {
	t.Helper()
	for i, v := range acc[len(acc) : len(acc)+canaries] {
		if math.Float64bits(v) != math.Float64bits(canary) {
			t.Fatalf("canary %d past element %d overwritten: %v", i, len(acc), v)
		}
	}
}

func randF32(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

// forLevels runs f on every supported level, and again on the assembly
// levels with chunking forced, so the parallel split and its tails are hit
// at every length.
func forLevels(t *testing.T, f func(t *testing.T, l Level)) {
	for _, l := range Levels() {
		t.Run(l.String(), func(t *testing.T) { f(t, l) })
	}
	t.Run("chunked", func(t *testing.T) {
		old := ParallelMin
		ParallelMin = 100
		defer func() { ParallelMin = old }()
		for _, l := range Levels() {
			t.Run(l.String(), func(t *testing.T) { f(t, l) })
		}
	})
}

func sameBits(a, b float64) bool {
	return math.Float64bits(a) == math.Float64bits(b) || (math.IsNaN(a) && math.IsNaN(b))
}

func TestFold(t *testing.T) {
	forLevels(t, func(t *testing.T, l Level) {
		f := func(n int) {
			t.Helper()
			rng := rand.New(rand.NewPCG(uint64(n), 1))
			acc := accWithCanary(rng, n)
			x := randF32(rng, n)
			w := float32(rng.Float64())
			want := append([]float64(nil), acc...)
			gen := append([]float64(nil), acc...)
			for i := range want {
				want[i] = want[i] + float64(w)*float64(x[i]) // float64 reference
			}
			foldGeneric(gen, x, float64(w))
			l.Fold(acc, x, w)
			checkCanary(t, acc)
			for i := range acc {
				if !sameBits(acc[i], gen[i]) || !sameBits(acc[i], want[i]) {
					t.Fatalf("n=%d: acc[%d] = %v, pure Go %v, reference %v", n, i, acc[i], gen[i], want[i])
				}
			}
		}
		for _, n := range lengths {
			f(n)
		}
	})
}

func TestFoldK(t *testing.T) {
	forLevels(t, func(t *testing.T, l Level) {
		f := func(n, k int) {
			t.Helper()
			rng := rand.New(rand.NewPCG(uint64(n), uint64(k)))
			acc := accWithCanary(rng, n)
			xs := make([][]float32, k)
			ws := make([]float32, k)
			for j := range xs {
				xs[j], ws[j] = randF32(rng, n), float32(rng.Float64())
			}
			want := append([]float64(nil), acc...)
			gen := append([]float64(nil), acc...)
			for j := range xs {
				foldGeneric(gen, xs[j], float64(ws[j]))
				for i := range want {
					want[i] += float64(ws[j]) * float64(xs[j][i])
				}
			}
			l.FoldK(acc, xs, ws)
			checkCanary(t, acc)
			for i := range acc {
				if !sameBits(acc[i], gen[i]) || !sameBits(acc[i], want[i]) {
					t.Fatalf("n=%d k=%d: acc[%d] = %v, pure Go %v, reference %v", n, k, i, acc[i], gen[i], want[i])
				}
			}
		}
		for _, n := range lengths {
			for k := 0; k <= MaxK; k++ {
				if n > 1<<16 && k != MaxK && k != 3 {
					continue // the big length only needs a fused and an odd K
				}
				f(n, k)
			}
		}
	})
}

func TestAddRaw(t *testing.T) {
	forLevels(t, func(t *testing.T, l Level) {
		f := func(n, shift int) {
			t.Helper()
			rng := rand.New(rand.NewPCG(uint64(n), uint64(shift)))
			acc := accWithCanary(rng, n)
			p := make([]float64, n)
			for i := range p {
				p[i] = rng.NormFloat64()
			}
			want := append([]float64(nil), acc...)
			for i := range want {
				want[i] += p[i]
			}
			// An unaligned copy of the bytes, as a frame off the network.
			raw := AppendF64(make([]byte, shift), p)[shift:]
			got := append([]float64(nil), acc...)
			l.Raw(acc, raw)
			l.Add(got, p)
			checkCanary(t, acc)
			for i := range acc {
				if !sameBits(acc[i], want[i]) || !sameBits(got[i], want[i]) {
					t.Fatalf("n=%d shift=%d: Raw %v, Add %v, reference %v at %d", n, shift, acc[i], got[i], want[i], i)
				}
			}
		}
		for _, n := range lengths {
			f(n, 0)
			f(n, 3)
		}
	})
}

func TestScale(t *testing.T) {
	forLevels(t, func(t *testing.T, l Level) {
		f := func(n int) {
			t.Helper()
			rng := rand.New(rand.NewPCG(uint64(n), 7))
			acc := accWithCanary(rng, n)
			buf := make([]float32, n+canaries)
			for i := range buf {
				buf[i] = -1
			}
			dst := buf[:n]
			s := 1 / (1 + rng.Float64())
			l.Scale(dst, acc, s)
			for i := range dst {
				if want := float32(acc[i] * s); math.Float32bits(dst[i]) != math.Float32bits(want) {
					t.Fatalf("n=%d: dst[%d] = %v, want %v", n, i, dst[i], want)
				}
			}
			for i, v := range buf[n:] {
				if v != -1 {
					t.Fatalf("n=%d: canary %d past dst overwritten: %v", n, i, v)
				}
			}
		}
		for _, n := range lengths {
			f(n)
		}
	})
}

// TestAccuracy1000 folds 1,000 weighted updates, one at a time and eight at
// a time, and checks the float64 accumulator and the float32 average against
// a compensated (Neumaier) float64 reference: relative error under 1e-6. It
// also measures a plain float32 accumulator to show why we do not use one.
func TestAccuracy1000(t *testing.T) {
	const n, updates = 4099, 1000
	rng := rand.New(rand.NewPCG(1000, 1))
	xs := make([][]float32, updates)
	ws := make([]float32, updates)
	var wsum float64
	for k := range xs {
		xs[k] = randF32(rng, n)
		for i := range xs[k] {
			xs[k][i] += 0.5 // a common signal, as in real updates
		}
		ws[k] = float32(1 + 600*rng.Float64()) // data sizes, normalised by the caller or not
		wsum += float64(ws[k])
	}
	ref := make([]float64, n)
	for i := range ref {
		var s, c float64
		for k := range xs {
			v := float64(ws[k]) * float64(xs[k][i])
			u := s + v
			if math.Abs(s) >= math.Abs(v) {
				c += (s - u) + v
			} else {
				c += (v - u) + s
			}
			s = u
		}
		ref[i] = s + c
	}
	relErr := func(got, want float64) float64 { return math.Abs(got-want) / math.Abs(want) }
	forLevels(t, func(t *testing.T, l Level) {
		one := make([]float64, n)
		fused := make([]float64, n)
		for k := range xs {
			l.Fold(one, xs[k], ws[k])
		}
		for k := 0; k < updates; k += MaxK {
			e := min(k+MaxK, updates)
			l.FoldK(fused, xs[k:e], ws[k:e])
		}
		avg := make([]float32, n)
		l.Scale(avg, fused, 1/wsum)
		var worst, worstAvg float64
		for i := range ref {
			worst = max(worst, relErr(one[i], ref[i]), relErr(fused[i], ref[i]))
			worstAvg = max(worstAvg, relErr(float64(avg[i]), ref[i]/wsum))
		}
		if worst >= 1e-6 || worstAvg >= 1e-6 {
			t.Fatalf("relative error: sum %.3g, average %.3g, want < 1e-6", worst, worstAvg)
		}
		t.Logf("worst relative error: float64 sum %.3g, float32 average %.3g", worst, worstAvg)
	})
	var worst32 float64
	for i := range ref {
		var s float32
		for k := range xs {
			s += ws[k] * xs[k][i]
		}
		worst32 = max(worst32, relErr(float64(s), ref[i]))
	}
	t.Logf("a float32 accumulator would reach relative error %.3g", worst32)
}

func TestBestDrivesPackageFuncs(t *testing.T) {
	old := Best
	defer func() { Best = old }()
	for _, l := range Levels() {
		Best = l
		acc := make([]float64, 100)
		x := randF32(rand.New(rand.NewPCG(1, 2)), 100)
		Fold(acc, x, 2)
		FoldK(acc, [][]float32{x, x}, []float32{1, 1})
		Add(acc, acc[:50])
		dst := make([]float32, 100)
		Scale(dst, acc, 0.5)
		for i := range dst {
			want := float64(2*x[i]) + float64(x[i]) + float64(x[i])
			if i < 50 {
				want *= 2
			}
			if dst[i] != float32(want*0.5) {
				t.Fatalf("%v: dst[%d] = %v, want %v", l, i, dst[i], float32(want*0.5))
			}
		}
	}
}

func TestLevelNames(t *testing.T) {
	f := func(l Level, want string) {
		t.Helper()
		if got := l.String(); got != want {
			t.Fatalf("%d: got %q, want %q", l, got, want)
		}
	}
	f(Generic, "purego")
	f(AVX2, "avx2")
	f(AVX512, "avx512")
	f(Level(9), "Level(9)")
	if !Best.Supported() || Levels()[0] != Generic {
		t.Fatalf("Best %v, levels %v", Best, Levels())
	}
}

func TestBadCallsPanic(t *testing.T) {
	f := func(name string, call func()) {
		t.Helper()
		defer func() {
			if r := recover(); r == nil || fmt.Sprint(r)[:4] != "BUG:" {
				t.Fatalf("%s: recovered %v, want a BUG: panic", name, r)
			}
		}()
		call()
	}
	acc := make([]float64, 8)
	x := make([]float32, 8)
	f("too many updates", func() { FoldK(acc, make([][]float32, 9), make([]float32, 9)) })
	f("weights mismatch", func() { FoldK(acc, [][]float32{x}, nil) })
	f("ragged updates", func() { FoldK(acc, [][]float32{x, x[:3]}, []float32{1, 1}) })
	f("partial float64", func() { Raw(acc, make([]byte, 9)) })
	for _, l := range []Level{AVX2, AVX512} {
		if !l.Supported() {
			f("unsupported "+l.String(), func() { l.Fold(acc, x, 1) })
		}
	}
}

func TestFoldMany(t *testing.T) {
	forLevels(t, func(t *testing.T, l Level) {
		f := func(n, k int) {
			t.Helper()
			rng := rand.New(rand.NewPCG(uint64(n), uint64(k)))
			acc := accWithCanary(rng, n)
			xs := make([][]float32, k)
			ws := make([]float32, k)
			for j := range xs {
				xs[j], ws[j] = randF32(rng, n), float32(rng.Float64())
			}
			want := append([]float64(nil), acc...)
			for g := 0; g < k; g += MaxK {
				Generic.FoldK(want, xs[g:min(g+MaxK, k)], ws[g:min(g+MaxK, k)])
			}
			l.FoldMany(acc, xs, ws)
			checkCanary(t, acc)
			for i := range acc {
				if !sameBits(acc[i], want[i]) {
					t.Fatalf("n=%d k=%d: acc[%d] = %v, FoldK groups %v", n, k, i, acc[i], want[i])
				}
			}
		}
		for _, n := range []int{0, 1, 33, 4099, manyTile + 65, 1<<18 + 3} {
			for _, k := range []int{0, 1, 5, 8, 13} {
				f(n, k)
			}
		}
	})
}
