// Package agg is the server's aggregation engine: it folds device updates
// into an accumulator, combines partial sums from peers and scales the
// result back to a float32 model.
//
// Engines: "avx512", "avx2" and "purego" run on the CPU kernels of package
// native; "cuda" runs on the GPU and exists only in binaries built with
// -tags cuda. "auto" picks the best CPU engine, never the GPU: a GPU pays
// off only when updates stay resident or the rule is compute-heavy (see
// PERF.md), so it must be asked for by name in the config.
//
// Precision: accumulators are float64 in every engine. Each float32 update
// is widened and folded with a double FMA, so sums of 1,000 updates keep a
// relative error near 1e-15 (a float32 accumulator measured 1.8e-6, over the
// 1e-6 budget; see native.TestAccuracy1000). The CPU engines give
// bit-identical results for the same sequence of calls, so servers on
// different CPUs agree bit for bit. A float64 accumulator is twice the model
// size, within the (cores+3) × model memory budget for one shared
// accumulator per server.
package agg

import (
	"errors"
	"fmt"
	"strings"
)

// Engine folds device updates into accumulators.
type Engine interface {
	Name() string // "avx2", "avx512", "purego" or "cuda"
	NewAccumulator(n int) (Accumulator, error)
	Close() error
}

// Accumulator holds Σ w·x over n elements in the engine's own precision.
// Calls on disjoint element ranges may run concurrently (the server folds
// different parameters from different goroutines); calls on overlapping
// ranges are serialised by the caller.
type Accumulator interface {
	Len() int
	Fold(off int, x []float32, w float32)         // acc[off:off+len(x)] += w·x
	FoldK(off int, xs [][]float32, ws []float32)  // += Σ_k ws[k]·xs[k], K = len(xs) ≤ 8, equal lengths
	Merge(o Accumulator)                          // acc += o (same engine, same length)
	AppendPartial(dst []byte, off, n int) []byte  // elements [off,off+n) as little-endian float64, for the all-reduce
	AddPartial(off int, raw []byte) error         // acc[off:] += decoded little-endian float64s (error on bad length)
	Result(dst []float32, off int, scale float64) // dst[i] = float32(acc[off+i]·scale)
	Reset()
	Close() error
}

// ForHostSums returns the engine for sums of partial sums that arrive in
// host memory (the all-reduce's shares): e itself on the CPU, else the
// fastest CPU engine, since on a GPU every piece added would be a copy and
// a synchronisation. Both add and scale in float64 with the same bits.
func ForHostSums(e Engine) (Engine, error) {
	if e.Name() != "cuda" {
		return e, nil
	}
	return New("auto")
}

// SegmentFolder is an Accumulator that folds all of one update's
// parameters in one call, safe alongside any other call, so the server
// needs no stripe locks for it. The cuda engine implements it: each of its
// calls is a hop to the GPU goroutine and a stream synchronisation, which
// per parameter cost more than a small parameter's fold.
type SegmentFolder interface {
	FoldSegments(offs []int, xs [][]float32, w float32) // acc[offs[i]:] += w·xs[i]; segments must not overlap
}

// MaxK is the largest K that FoldK accepts.
const MaxK = 8

// ErrNoCUDA is returned for the "cuda" engine in a build without it.
var ErrNoCUDA = errors.New("this binary was built without CUDA (rebuild with -tags cuda)")

// ErrUnknown is wrapped when New gets a name outside Names.
var ErrUnknown = errors.New("unknown aggregation engine")

// engines maps the names other than "auto" to their constructors; cuda.go
// replaces the "cuda" entry in -tags cuda builds.
var engines = map[string]func() (Engine, error){
	"purego": func() (Engine, error) { return newCPU(levelGeneric) },
	"avx2":   func() (Engine, error) { return newCPU(levelAVX2) },
	"avx512": func() (Engine, error) { return newCPU(levelAVX512) },
	"cuda":   func() (Engine, error) { return nil, ErrNoCUDA },
}

// Names lists the accepted engine names, for config validation messages.
func Names() []string { return []string{"auto", "avx512", "avx2", "purego", "cuda"} }

// New returns the named engine; "auto" is the fastest CPU engine.
func New(name string) (Engine, error) {
	if name == "auto" {
		return newCPU(bestLevel())
	}
	mk, ok := engines[name]
	if !ok {
		return nil, fmt.Errorf("cannot create engine %q: %w (want one of %s)", name, ErrUnknown, strings.Join(Names(), ", "))
	}
	e, err := mk()
	if err != nil {
		return nil, fmt.Errorf("cannot create engine %q: %w", name, err)
	}
	return e, nil
}
