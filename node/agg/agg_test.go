package agg

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/fedcluster/fedcluster/native"
)

func cpuNames() []string {
	var names []string
	for _, l := range native.Levels() {
		names = append(names, l.String())
	}
	return names
}

func randF32(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

func TestNew(t *testing.T) {
	f := func(name, want, wantErr string) {
		t.Helper()
		e, err := New(name)
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("New(%q): err %v, want one containing %q", name, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("New(%q): %v", name, err)
		}
		if e.Name() != want {
			t.Fatalf("New(%q).Name() = %q, want %q", name, e.Name(), want)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
	f("auto", native.Best.String(), "")
	f("purego", "purego", "")
	f("nope", "", "unknown aggregation engine")
	if !cudaBuilt {
		f("cuda", "", "built without CUDA")
		if _, err := New("cuda"); !errors.Is(err, ErrNoCUDA) {
			t.Fatalf("cuda: %v is not ErrNoCUDA", err)
		}
	}
	for _, l := range []native.Level{native.AVX2, native.AVX512} {
		if l.Supported() {
			f(l.String(), l.String(), "")
		} else {
			f(l.String(), "", "lacks "+l.String())
		}
	}
	for _, n := range Names() {
		if _, ok := engines[n]; !ok && n != "auto" {
			t.Fatalf("Names lists %q, New does not know it", n)
		}
	}
}

// TestAccumulator runs one FedAvg round through each CPU engine, folding
// from several goroutines on disjoint ranges, merging, exchanging partials
// and scaling, and compares with a float64 reference.
func TestAccumulator(t *testing.T) {
	const n, updates = 10007, 21
	rng := rand.New(rand.NewPCG(3, 4))
	xs := make([][]float32, updates)
	ws := make([]float32, updates)
	ref := make([]float64, n)
	var wsum float64
	for k := range xs {
		xs[k], ws[k] = randF32(rng, n), float32(1+rng.IntN(100))
		wsum += float64(ws[k])
		for i := range ref {
			ref[i] += float64(ws[k]) * float64(xs[k][i])
		}
	}
	var results [][]float32
	for _, name := range cpuNames() {
		e, err := New(name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := e.NewAccumulator(n)
		b, _ := e.NewAccumulator(n)
		peer, _ := e.NewAccumulator(n)
		if a.Len() != n {
			t.Fatalf("%s: Len %d", name, a.Len())
		}
		// Dirty state that Reset must clear.
		a.Fold(0, xs[0], 99)
		a.Reset()
		// a: updates 0..9 one by one in 3 parallel ranges; b: 10..17 fused;
		// peer: the rest, shipped as a partial sum.
		var wg sync.WaitGroup
		for _, r := range [][2]int{{0, 3000}, {3000, 3001}, {3001, n}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < 10; k++ {
					a.Fold(r[0], xs[k][r[0]:r[1]], ws[k])
				}
			}()
		}
		wg.Wait()
		b.FoldK(0, xs[10:18], ws[10:18])
		for k := 18; k < updates; k++ {
			peer.Fold(0, xs[k], ws[k])
		}
		a.Merge(b)
		raw := peer.AppendPartial(nil, 0, 5000)
		raw = peer.AppendPartial(raw, 5000, n-5000)
		if err := a.AddPartial(0, raw[:8*5000]); err != nil {
			t.Fatal(err)
		}
		if err := a.AddPartial(5000, raw[8*5000:]); err != nil {
			t.Fatal(err)
		}
		if err := a.AddPartial(0, raw[:13]); err == nil {
			t.Fatalf("%s: AddPartial took 13 bytes", name)
		}
		if err := a.AddPartial(n-1, raw[:16]); err == nil {
			t.Fatalf("%s: AddPartial ran past the end", name)
		}
		got := make([]float32, n)
		a.Result(got[:100], 0, 1/wsum)
		a.Result(got[100:], 100, 1/wsum)
		for i := range got {
			want := ref[i] / wsum
			if math.Abs(float64(got[i])-want) > 1e-6*math.Abs(want)+1e-30 {
				t.Fatalf("%s: got[%d] = %v, want %v", name, i, got[i], want)
			}
		}
		results = append(results, got)
		for _, c := range []interface{ Close() error }{a, b, peer, e} {
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Same calls, same bits, whichever CPU engine ran them.
	for i := 1; i < len(results); i++ {
		for j := range results[0] {
			if math.Float32bits(results[i][j]) != math.Float32bits(results[0][j]) {
				t.Fatalf("engine %s differs from %s at %d", cpuNames()[i], cpuNames()[0], j)
			}
		}
	}
}

func TestBadUsePanics(t *testing.T) {
	f := func(name string, call func()) {
		t.Helper()
		defer func() {
			if r, _ := recover().(string); !strings.HasPrefix(r, "BUG:") {
				t.Fatalf("%s: want a BUG: panic, got %q", name, r)
			}
		}()
		call()
	}
	e, _ := New("purego")
	a, _ := e.NewAccumulator(10)
	b, _ := e.NewAccumulator(11)
	f("fold past end", func() { a.Fold(5, make([]float32, 6), 1) })
	f("merge length", func() { a.Merge(b) })
	f("result past end", func() { a.Result(make([]float32, 3), 8, 1) })
	if _, err := e.NewAccumulator(-1); err == nil {
		t.Fatal("negative length accepted")
	}
}

func TestZeroAllocs(t *testing.T) {
	e, _ := New("auto")
	a, _ := e.NewAccumulator(4096)
	x := make([]float32, 4096)
	xs := [][]float32{x, x, x}
	ws := []float32{1, 2, 3}
	dst := make([]float32, 4096)
	buf := make([]byte, 0, 8*4096)
	if n := testing.AllocsPerRun(100, func() {
		a.Fold(0, x, 1)
		a.FoldK(0, xs, ws)
		buf = a.AppendPartial(buf[:0], 0, 4096)
		_ = a.AddPartial(0, buf)
		a.Result(dst, 0, 0.5)
	}); n != 0 {
		t.Fatalf("%v allocations per fold round", n)
	}
}

// TestForHostSums: a CPU engine adds the all-reduce's shares itself.
func TestForHostSums(t *testing.T) {
	for _, name := range []string{"auto", "purego"} {
		e, err := New(name)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ForHostSums(e)
		if err != nil || s != e {
			t.Fatalf("%s: ForHostSums gave %v, %v; want the engine itself", name, s, err)
		}
	}
}
