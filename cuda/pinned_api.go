//go:build cuda

package cuda

import (
	"fmt"
	"unsafe"

	"gorgonia.org/cu"
)

// Pinned is page-locked host memory the engine copies from directly: a
// receive buffer for updates that skips the staging copy.
type Pinned struct {
	e *Engine
	p unsafe.Pointer
	n int
}

// NewPinned allocates n pinned float32s.
func (e *Engine) NewPinned(n int) (*Pinned, error) {
	p := &Pinned{e: e, n: n}
	err := e.do(func() error {
		var err error
		p.p, err = hostAlloc(4 * max(n, 1))
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Floats is the buffer as a Go slice; valid until Free.
func (p *Pinned) Floats() []float32 { return unsafe.Slice((*float32)(p.p), p.n) }

// Free releases the buffer.
func (p *Pinned) Free() error {
	if p.p == nil {
		return nil
	}
	err := p.e.do(func() error { return hostFree(p.p) })
	p.p = nil
	return err
}

// FoldPinned adds w·x to acc[off:off+n] for x = p.Floats()[:n], copying
// chunks straight from p on alternating streams.
func (a *Acc) FoldPinned(off int, p *Pinned, n int, w float32) {
	if n > p.n {
		panic(fmt.Sprintf("BUG: cuda: folding %d elements from a pinned buffer of %d", n, p.n))
	}
	a.check(off, n)
	a.run(func() error {
		e := a.e
		ws := [MaxK]float64{float64(w)}
		for c, lo := 0, 0; lo < n; c, lo = c+1, lo+e.chunk {
			m := min(e.chunk, n-lo)
			s := &e.stages[c%2]
			if err := s.stream.Synchronize(); err != nil {
				return err
			}
			if err := cu.MemcpyHtoDAsync(s.dev, unsafe.Add(p.p, 4*lo), int64(4*m), s.stream); err != nil {
				return fmt.Errorf("cannot copy update to GPU: %w", err)
			}
			if err := a.foldStaged(s.dev, off+lo, m, 1, ws[:], s.stream); err != nil {
				return err
			}
		}
		return e.syncAll()
	})
}
