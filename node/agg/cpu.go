package agg

import (
	"fmt"

	"github.com/fedcluster/fedcluster/native"
)

const (
	levelGeneric = native.Generic
	levelAVX2    = native.AVX2
	levelAVX512  = native.AVX512
)

func bestLevel() native.Level { return native.Best }

// cpuEngine runs the native kernels of one level.
type cpuEngine struct{ l native.Level }

func newCPU(l native.Level) (Engine, error) {
	if !l.Supported() {
		return nil, fmt.Errorf("this CPU or build lacks %s (available: %v)", l, native.Levels())
	}
	return cpuEngine{l}, nil
}

func (e cpuEngine) Name() string { return e.l.String() }
func (e cpuEngine) Close() error { return nil }

func (e cpuEngine) NewAccumulator(n int) (Accumulator, error) {
	if n < 0 {
		return nil, fmt.Errorf("cannot create accumulator: negative length %d", n)
	}
	return &cpuAcc{l: e.l, acc: make([]float64, n)}, nil
}

// cpuAcc is a float64 accumulator in Go memory.
type cpuAcc struct {
	l   native.Level
	acc []float64
}

func (a *cpuAcc) Len() int { return len(a.acc) }

func (a *cpuAcc) span(off, n int) []float64 {
	if off < 0 || n < 0 || off+n > len(a.acc) {
		panic(fmt.Sprintf("BUG: agg: elements [%d,%d) outside an accumulator of %d", off, off+n, len(a.acc)))
	}
	return a.acc[off : off+n]
}

func (a *cpuAcc) Fold(off int, x []float32, w float32) {
	a.l.Fold(a.span(off, len(x)), x, w)
}

func (a *cpuAcc) FoldK(off int, xs [][]float32, ws []float32) {
	if len(xs) == 0 {
		return
	}
	a.l.FoldK(a.span(off, len(xs[0])), xs, ws)
}

func (a *cpuAcc) Merge(o Accumulator) {
	b, ok := o.(*cpuAcc)
	if !ok || len(b.acc) != len(a.acc) {
		panic(fmt.Sprintf("BUG: agg: merging %T of %d into %s accumulator of %d", o, o.Len(), a.l, len(a.acc)))
	}
	a.l.Add(a.acc, b.acc)
}

func (a *cpuAcc) AppendPartial(dst []byte, off, n int) []byte {
	return native.AppendF64(dst, a.span(off, n))
}

func (a *cpuAcc) AddPartial(off int, raw []byte) error {
	if len(raw)%8 != 0 {
		return fmt.Errorf("cannot add partial sum: %d bytes are not whole float64s", len(raw))
	}
	n := len(raw) / 8
	if off < 0 || off+n > len(a.acc) {
		return fmt.Errorf("cannot add partial sum: elements [%d,%d) outside an accumulator of %d", off, off+n, len(a.acc))
	}
	a.l.Raw(a.acc[off:off+n], raw)
	return nil
}

func (a *cpuAcc) Result(dst []float32, off int, scale float64) {
	a.l.Scale(dst, a.span(off, len(dst)), scale)
}

func (a *cpuAcc) Reset() { clear(a.acc) }

func (a *cpuAcc) Close() error {
	a.acc = nil
	return nil
}
