//go:build cuda

package cuda

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/fedcluster/fedcluster/native"
	"gorgonia.org/cu"
)

// These tests need a GPU: build them with scripts/gpu-check.sh build and
// run them on the GPU machine with scripts/gpu-check.sh run.

var seedFlag = flag.Uint64("gpu.seed", 0, "random seed; 0 takes one from the clock (fresh data every run)")

func seed(t testing.TB) uint64 {
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -gpu.seed %d)", s, s)
	return s
}

func newEngine(t testing.TB) *Engine {
	t.Helper()
	e, err := New()
	if err != nil {
		t.Fatalf("cannot start engine: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("cannot close engine: %v", err)
		}
	})
	return e
}

func randF32(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

func decode(raw []byte) []float64 {
	v := make([]float64, len(raw)/8)
	for i := range v {
		v[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
	}
	return v
}

// compare checks got against the float64 reference: the pad around
// [off,off+n) must still be zero (stray stores), the rest within 1e-12
// relative; it returns how many elements differ in any bit.
func compare(t *testing.T, what string, got, ref []float64, off, n int) int {
	t.Helper()
	diff := 0
	for i := range ref {
		if i < off || i >= off+n {
			if got[i] != 0 {
				t.Fatalf("%s: canary element %d outside [%d,%d) is %v", what, i, off, off+n, got[i])
			}
			continue
		}
		if math.Float64bits(got[i]) != math.Float64bits(ref[i]) {
			diff++
		}
		if math.Abs(got[i]-ref[i]) > 1e-12*math.Abs(ref[i])+1e-300 {
			t.Fatalf("%s: element %d = %v, float64 reference %v", what, i, got[i], ref[i])
		}
	}
	return diff
}

// TestGPUKernels runs every kernel through the accumulator API on fresh
// random data, odd lengths and odd offsets (the unaligned kernel path)
// included, against native's float64 loops.
func TestGPUKernels(t *testing.T) {
	e := newEngine(t)
	t.Logf("device %s", e.Device())
	rng := rand.New(rand.NewPCG(seed(t), 1))
	const pad = 32
	totalDiff := 0
	for _, n := range []int{0, 1, 7, 31, 32, 33, 63, 64, 65, 4099, 1<<20 + 3, 3<<20 + 5} {
		for _, off := range []int{pad, pad + 1} {
			what := fmt.Sprintf("n=%d off=%d", n, off)
			size := n + 2*pad
			a, err := e.NewAccumulator(size)
			if err != nil {
				t.Fatal(err)
			}
			ref := make([]float64, size)
			r := ref[off : off+n]
			// Fold.
			x, w := randF32(rng, n), float32(rng.Float64()*100)
			a.Fold(off, x, w)
			native.Generic.Fold(r, x, w)
			// FoldK, every K.
			for k := 2; k <= MaxK; k++ {
				xs := make([][]float32, k)
				ws := make([]float32, k)
				for j := range xs {
					xs[j], ws[j] = randF32(rng, n), float32(rng.Float64()*100)
				}
				a.FoldK(off, xs, ws)
				native.Generic.FoldK(r, xs, ws)
			}
			// FoldPinned.
			p, err := e.NewPinned(n)
			if err != nil {
				t.Fatal(err)
			}
			copy(p.Floats(), randF32(rng, n))
			a.FoldPinned(off, p, n, 3)
			native.Generic.Fold(r, p.Floats(), 3)
			if err := p.Free(); err != nil {
				t.Fatal(err)
			}
			// AddPartial from a peer's bytes.
			part := make([]float64, n)
			for i := range part {
				part[i] = rng.NormFloat64()
			}
			raw := native.AppendF64(nil, part)
			if err := a.AddPartial(off, raw); err != nil {
				t.Fatal(err)
			}
			native.Generic.Add(r, part)
			// Merge another accumulator.
			b, err := e.NewAccumulator(size)
			if err != nil {
				t.Fatal(err)
			}
			y := randF32(rng, n)
			b.Fold(off, y, 0.5)
			a.Merge(b)
			native.Generic.Fold(r, y, 0.5)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			// Read back the whole accumulator, pad included.
			got := decode(a.AppendPartial(nil, 0, size))
			totalDiff += compare(t, what, got, ref, off, n)
			// Result.
			dst := make([]float32, n+1)
			dst[n] = -7
			s := 1 / (1 + rng.Float64())
			a.Result(dst[:n], off, s)
			for i := range n {
				if want := float32(ref[off+i] * s); math.Abs(float64(dst[i]-want)) > 1e-6*math.Abs(float64(want)) {
					t.Fatalf("%s: result %d = %v, want %v", what, i, dst[i], want)
				}
			}
			if dst[n] != -7 {
				t.Fatalf("%s: Result wrote past dst", what)
			}
			a.Reset()
			if got := decode(a.AppendPartial(nil, 0, size)); compare(t, what+" after Reset", got, make([]float64, size), 0, size) != 0 {
				t.Fatalf("%s: Reset left data", what)
			}
			if err := a.Close(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}
	t.Logf("elements not bit-identical to the CPU engines: %d", totalDiff)
}

// TestGPUFoldSegments folds updates made of many segments (odd lengths,
// odd offsets, segments larger than a staging buffer and segments split
// across two) in one call each, on an engine with small staging buffers.
func TestGPUFoldSegments(t *testing.T) {
	old := ChunkElems
	ChunkElems = 1000 // stages of 8,000 float32s
	e := newEngine(t)
	ChunkElems = old
	rng := rand.New(rand.NewPCG(seed(t), 2))
	const size = 100_000
	a, err := e.NewAccumulator(size)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ref := make([]float64, size)
	for round := range 20 {
		var offs []int
		var xs [][]float32
		for at := rng.IntN(3); ; {
			n := []int{0, 1, 7, 33, 4099, 7999, 8001, 20_003}[rng.IntN(8)]
			if at+n > size {
				break
			}
			offs, xs = append(offs, at), append(xs, randF32(rng, n))
			at += n + rng.IntN(3) // gaps of 0-2: odd offsets, adjacent segments
		}
		rng.Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i]; xs[i], xs[j] = xs[j], xs[i] })
		w := float32(1 + rng.IntN(600))
		a.FoldSegments(offs, xs, w)
		for i, x := range xs {
			native.Generic.Fold(ref[offs[i]:offs[i]+len(x)], x, w)
		}
		got := decode(a.AppendPartial(nil, 0, size))
		if d := compare(t, fmt.Sprintf("round %d, %d segments", round, len(xs)), got, ref, 0, size); d != 0 {
			t.Fatalf("round %d: %d elements differ from the CPU engines' bits", round, d)
		}
	}
	if err := a.Err(); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if r, _ := recover().(string); !strings.HasPrefix(r, "BUG:") {
				t.Fatalf("overlapping segments: want BUG panic, got %q", r)
			}
		}()
		a.FoldSegments([]int{10, 5}, [][]float32{make([]float32, 3), make([]float32, 6)}, 1)
	}()
}

func TestGPUErrors(t *testing.T) {
	e := newEngine(t)
	a, err := e.NewAccumulator(10)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddPartial(0, make([]byte, 9)); err == nil {
		t.Fatal("9 bytes accepted")
	}
	if err := a.AddPartial(5, make([]byte, 48)); err == nil {
		t.Fatal("partial past the end accepted")
	}
	func() {
		defer func() {
			if r, _ := recover().(string); !strings.HasPrefix(r, "BUG:") {
				t.Fatalf("want BUG panic, got %q", r)
			}
		}()
		a.Fold(8, make([]float32, 3), 1)
	}()
}

// timing is one row of the table.
type timing struct {
	what   string
	bytes  float64 // counted bytes per run
	count  string  // what bytes counts
	millis float64
}

func (r timing) gbps() float64 { return r.bytes / r.millis / 1e6 }

// eventTime times fn on stream s with CUDA events: 3 warm-up runs, then the
// best of reps. It runs on the engine goroutine, so it returns errors
// instead of failing the test.
func eventTime(s cu.Stream, reps int, fn func() error) (float64, error) {
	start, err := cu.MakeEvent(cu.DefaultEvent)
	if err != nil {
		return 0, err
	}
	defer cu.DestroyEvent(&start)
	end, err := cu.MakeEvent(cu.DefaultEvent)
	if err != nil {
		return 0, err
	}
	defer cu.DestroyEvent(&end)
	best := math.Inf(1)
	for i := range reps + 3 {
		if err := errors.Join(start.Record(s), fn(), end.Record(s), end.Synchronize()); err != nil {
			return 0, err
		}
		ms, err := start.Elapsed(end)
		if err != nil {
			return 0, err
		}
		if i >= 3 {
			best = min(best, ms)
		}
	}
	return best, nil
}

// wallTime times a synchronous fn: 2 warm-up runs, then the best of reps.
func wallTime(reps int, fn func()) float64 {
	best := math.Inf(1)
	for i := range reps + 2 {
		t0 := time.Now()
		fn()
		if i >= 2 {
			best = min(best, float64(time.Since(t0).Nanoseconds())/1e6)
		}
	}
	return best
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestGPUTiming measures the kernels against the memory and PCIe rooflines
// of the same run and prints the table last. Goals (issue 4): resident fold
// ≥ 80 % of device-to-device copy traffic; pinned host-to-GPU folding ≥ 80 %
// of pinned host-to-device bandwidth.
func TestGPUTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing skipped in -short")
	}
	const n = 64 << 20 // 256 MiB of float32 per update
	e := newEngine(t)
	rng := rand.New(rand.NewPCG(seed(t), 2))
	var rows []timing
	err := e.do(func() error {
		s := e.stages[0].stream
		var ptrs [4]cu.DevicePtr // acc, x, y, xs
		defer func() {
			for _, d := range ptrs {
				if d != 0 {
					cu.MemFree(d)
				}
			}
		}()
		for i, size := range []int64{8 * n, 4 * n, 4 * n, 4 * n} {
			var err error
			if ptrs[i], err = cu.MemAlloc(size); err != nil {
				return err
			}
		}
		acc, x, y, xs := ptrs[0], ptrs[1], ptrs[2], ptrs[3] // xs: 8 updates of n/8
		host, err := hostAlloc(4 * n)
		if err != nil {
			return err
		}
		defer hostFree(host)
		hx := unsafe.Slice((*float32)(host), n)
		for i := range hx {
			hx[i] = float32(rng.NormFloat64())
		}
		if err := errors.Join(zero(acc, n), cu.MemcpyHtoD(x, host, 4*n), cu.MemcpyHtoD(xs, host, 4*n), cu.Synchronize()); err != nil {
			return err
		}
		w := [MaxK]float64{0.5, 0.25, 0.125, 1, 2, 3, 4, 5}
		a := &Acc{e: e, n: n, acc: acc}
		for _, m := range []struct {
			what  string
			bytes float64
			count string
			fn    func() error
		}{
			{"device-to-device copy, 256 MiB", 8 * n, "traffic (2x copied)", func() error { return cu.MemcpyDtoDAsync(y, x, 4*n, s) }},
			{"resident fold, 256 MiB update", 20 * n, "traffic (x + acc r/w)", func() error { return a.foldStaged(x, 0, n, 1, w[:], s) }},
			{"resident foldK K=8, 8 x 32 MiB", 4*n + 16*(n/8), "traffic (xs + acc r/w)", func() error { return a.foldStaged(xs, 0, n/8, 8, w[:], s) }},
			{"pinned host-to-device copy, 256 MiB", 4 * n, "bytes copied", func() error { return cu.MemcpyHtoDAsync(x, host, 4*n, s) }},
		} {
			ms, err := eventTime(s, 20, m.fn)
			if err != nil {
				return fmt.Errorf("%s: %w", m.what, err)
			}
			rows = append(rows, timing{m.what, m.bytes, m.count, ms})
			if strings.HasPrefix(m.what, "resident") {
				rows = append(rows, timing{"  same, update bytes", 4 * n, "update bytes", ms})
			}
		}
		return nil
	})
	must(t, err)

	// End to end through the engine: wall time, both streams, chunked.
	p, err := e.NewPinned(n)
	must(t, err)
	defer p.Free()
	copy(p.Floats(), randF32(rng, n))
	a, err := e.NewAccumulator(n)
	must(t, err)
	defer a.Close()
	h2d := wallTime(5, func() {
		must(t, e.do(func() error {
			s := e.stages[0]
			if err := cu.MemcpyHtoDAsync(a.acc, p.p, 4*n, s.stream); err != nil {
				return err
			}
			return s.stream.Synchronize()
		}))
	})
	rows = append(rows, timing{"pinned host-to-device copy (wall)", 4 * n, "bytes copied", h2d})
	ms := wallTime(5, func() { a.FoldPinned(0, p, n, 0.5) })
	must(t, a.Err())
	rows = append(rows, timing{"pinned host -> GPU fold (wall)", 4 * n, "update bytes", ms})
	goX := p.Floats()
	ms = wallTime(3, func() { a.Fold(0, goX, 0.5) })
	must(t, a.Err())
	rows = append(rows, timing{"Go memory -> staged -> GPU fold (wall)", 4 * n, "update bytes", ms})
	xs := [][]float32{goX[:n/8], goX[n/8 : n/4], goX[n/4 : 3*n/8], goX[3*n/8 : n/2], goX[n/2 : 5*n/8], goX[5*n/8 : 3*n/4], goX[3*n/4 : 7*n/8], goX[7*n/8:]}
	ms = wallTime(3, func() { a.FoldK(0, xs, []float32{1, 1, 1, 1, 1, 1, 1, 1}) })
	must(t, a.Err())
	rows = append(rows, timing{"Go memory -> staged -> GPU foldK 8 (wall)", 4 * n, "update bytes", ms})

	var b strings.Builder
	fmt.Fprintf(&b, "\n=== GPU aggregation table: %s, %s ===\n", e.Device(), time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "%-44s %10s %10s  %s\n", "operation", "ms", "GB/s", "counting")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-44s %10.3f %10.1f  %s\n", r.what, r.millis, r.gbps(), r.count)
	}
	rate := func(prefix string) float64 {
		for _, r := range rows {
			if strings.HasPrefix(r.what, prefix) {
				return r.gbps()
			}
		}
		panic("BUG: no row " + prefix)
	}
	fold, copyD := rate("resident fold,"), rate("device-to-device")
	e2e, pin := rate("pinned host -> GPU fold"), rate("pinned host-to-device copy (wall)")
	fmt.Fprintf(&b, "resident fold / D2D copy traffic: %.2f (goal >= 0.80)\n", fold/copyD)
	fmt.Fprintf(&b, "pinned end-to-end fold / pinned H2D: %.2f (goal >= 0.80)\n", e2e/pin)
	fmt.Fprintf(&b, "=== end of table ===\n")
	fmt.Fprint(os.Stdout, b.String())
}
