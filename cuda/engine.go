//go:build cuda

package cuda

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"unsafe"

	"github.com/fedcluster/fedcluster/kernels"
	"gorgonia.org/cu"
)

// MaxK is the largest number of updates FoldK fuses.
const MaxK = 8

// ChunkElems is the number of elements per update that one staging buffer
// carries: 1 Mi float32s (4 MiB), 8 of them for a fused fold. A buffer also
// carries ChunkElems·MaxK/2 float64s for partial sums.
var ChunkElems = 1 << 20

const threads = 256

var errClosed = errors.New("cuda engine closed")

// stage is one pinned host buffer and its device twin, used by one stream.
type stage struct {
	host   unsafe.Pointer
	dev    cu.DevicePtr
	stream cu.Stream
}

// Engine owns the GPU. Every method may be called from any goroutine.
type Engine struct {
	work chan func()
	quit chan struct{}

	dev    cu.Device
	name   string
	major  int
	minor  int
	mod    cu.Module
	fFold  cu.Function
	fFoldK cu.Function
	fAdd   cu.Function
	fScale cu.Function
	stages [2]stage
	chunk  int // ChunkElems at New
	bytes  int // of each stage buffer
	closed bool
}

// New starts the engine on device 0.
func New() (*Engine, error) {
	e := &Engine{work: make(chan func()), quit: make(chan struct{})}
	errc := make(chan error, 1)
	go e.loop(errc)
	if err := <-errc; err != nil {
		return nil, err
	}
	return e, nil
}

// loop is the GPU goroutine: it sets up the context and runs the closures.
func (e *Engine) loop(started chan<- error) {
	runtime.LockOSThread()
	if err := e.setup(); err != nil {
		e.teardown()
		started <- err
		return
	}
	started <- nil
	for {
		select {
		case fn := <-e.work:
			fn()
		case <-e.quit:
			return
		}
	}
}

func (e *Engine) setup() error {
	n, err := cu.NumDevices()
	if err != nil || n == 0 {
		return fmt.Errorf("cannot find a CUDA device: %d devices, %v", n, err)
	}
	e.dev = cu.Device(0)
	if e.name, err = e.dev.Name(); err != nil {
		return fmt.Errorf("cannot read device name: %w", err)
	}
	if e.major, e.minor, err = e.dev.ComputeCapability(); err != nil {
		return fmt.Errorf("cannot read compute capability: %w", err)
	}
	// The primary context avoids cuCtxCreate, whose signature CUDA 13 changed.
	ctx, err := e.dev.RetainPrimaryCtx()
	if err != nil {
		return fmt.Errorf("cannot retain primary context: %w", err)
	}
	if err := cu.SetCurrentContext(ctx); err != nil {
		return fmt.Errorf("cannot make context current: %w", err)
	}
	if e.mod, err = cu.LoadData(kernels.PTX(e.major, e.minor)); err != nil {
		return fmt.Errorf("cannot load PTX for sm_%d%d: %w", e.major, e.minor, err)
	}
	for _, f := range []struct {
		fn   *cu.Function
		name string
	}{{&e.fFold, kernels.Fold}, {&e.fFoldK, kernels.FoldK}, {&e.fAdd, kernels.AddPartial}, {&e.fScale, kernels.Scale}} {
		if *f.fn, err = e.mod.Function(f.name); err != nil {
			return fmt.Errorf("cannot find kernel %s: %w", f.name, err)
		}
	}
	e.chunk = ChunkElems
	e.bytes = 4 * MaxK * e.chunk
	for i := range e.stages {
		s := &e.stages[i]
		if s.stream, err = cu.MakeStream(cu.NonBlocking); err != nil {
			return fmt.Errorf("cannot create stream: %w", err)
		}
		if s.host, err = hostAlloc(e.bytes); err != nil {
			return err
		}
		if s.dev, err = cu.MemAlloc(int64(e.bytes)); err != nil {
			return fmt.Errorf("cannot allocate %d device bytes: %w", e.bytes, err)
		}
	}
	return nil
}

// teardown frees what setup made; it runs on the GPU goroutine.
func (e *Engine) teardown() error {
	var errs []error
	for i := range e.stages {
		s := &e.stages[i]
		if s.dev != 0 {
			errs = append(errs, cu.MemFree(s.dev))
		}
		if s.host != nil {
			errs = append(errs, hostFree(s.host))
		}
		if s.stream != (cu.Stream{}) {
			errs = append(errs, s.stream.Destroy())
		}
	}
	if e.mod != (cu.Module{}) {
		errs = append(errs, e.mod.Unload())
	}
	errs = append(errs, e.dev.ReleasePrimaryCtx())
	return errors.Join(errs...)
}

// do runs fn on the GPU goroutine and returns its error.
func (e *Engine) do(fn func() error) error {
	errc := make(chan error, 1)
	select {
	case e.work <- func() { errc <- fn() }:
	case <-e.quit:
		return errClosed
	}
	return <-errc
}

// Name is "cuda", the engine name the config uses.
func (e *Engine) Name() string { return "cuda" }

// Device describes the GPU, e.g. "NVIDIA H200 (sm_90)".
func (e *Engine) Device() string { return fmt.Sprintf("%s (sm_%d%d)", e.name, e.major, e.minor) }

// Close frees the engine's buffers and stops its goroutine. Close every
// accumulator first.
func (e *Engine) Close() error {
	var err error
	derr := e.do(func() error {
		if e.closed {
			return errClosed
		}
		e.closed = true
		err = e.teardown()
		close(e.quit)
		return nil
	})
	if errors.Is(derr, errClosed) {
		return nil
	}
	return err
}

// launch runs kernel f over n work items on stream s. Every argument is
// backed by 8 bytes: cu copies 8 bytes from each parameter.
func launch(f cu.Function, n int, s cu.Stream, args ...unsafe.Pointer) error {
	if n <= 0 {
		return nil
	}
	blocks := min((n+threads-1)/threads, 1<<16) // grid-stride beyond
	return f.Launch(blocks, 1, 1, threads, 1, 1, 0, s, args)
}

func (e *Engine) syncAll() error {
	var errs []error
	for i := range e.stages {
		errs = append(errs, e.stages[i].stream.Synchronize())
	}
	return errors.Join(errs...)
}

// Acc is a float64 accumulator resident on the GPU.
type Acc struct {
	e   *Engine
	n   int
	acc cu.DevicePtr
	err error // sticky: the first failed GPU call
}

// NewAccumulator allocates n zeroed float64s on the GPU.
func (e *Engine) NewAccumulator(n int) (*Acc, error) {
	if n < 0 {
		return nil, fmt.Errorf("cannot create accumulator: negative length %d", n)
	}
	a := &Acc{e: e, n: n}
	err := e.do(func() error {
		if n == 0 {
			return nil
		}
		var err error
		if a.acc, err = cu.MemAlloc(int64(8 * n)); err != nil {
			return fmt.Errorf("cannot allocate accumulator of %d: %w", n, err)
		}
		return zero(a.acc, n)
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// zero clears n float64s. The memset runs on the legacy stream, which our
// non-blocking streams do not wait for, so wait for it here.
func zero(p cu.DevicePtr, n int) error {
	if err := cu.MemsetD32(p, 0, int64(2*n)); err != nil {
		return fmt.Errorf("cannot clear accumulator: %w", err)
	}
	return cu.Synchronize()
}

// Len is the number of elements.
func (a *Acc) Len() int { return a.n }

// Err returns the first GPU failure; after one, the accumulator's content
// is undefined and Result writes NaNs.
func (a *Acc) Err() error { return a.err }

func (a *Acc) check(off, n int) {
	if off < 0 || n < 0 || off+n > a.n {
		panic(fmt.Sprintf("BUG: cuda: elements [%d,%d) outside an accumulator of %d", off, off+n, a.n))
	}
}

func (a *Acc) run(fn func() error) {
	if a.err != nil {
		return
	}
	if err := a.e.do(fn); err != nil {
		a.err = err
	}
}

func (a *Acc) at(i int) cu.DevicePtr { return a.acc + cu.DevicePtr(8*i) }

// Fold adds w·x to acc[off:off+len(x)].
func (a *Acc) Fold(off int, x []float32, w float32) {
	a.FoldK(off, [][]float32{x}, []float32{w})
}

// FoldK adds Σ_k ws[k]·xs[k] to acc[off:], K = len(xs) ≤ MaxK.
func (a *Acc) FoldK(off int, xs [][]float32, ws []float32) {
	if len(xs) != len(ws) || len(xs) > MaxK {
		panic(fmt.Sprintf("BUG: cuda: FoldK with %d updates and %d weights (max %d)", len(xs), len(ws), MaxK))
	}
	if len(xs) == 0 {
		return
	}
	n := len(xs[0])
	for k, x := range xs {
		if len(x) != n {
			panic(fmt.Sprintf("BUG: cuda: FoldK update %d has %d elements, update 0 has %d", k, len(x), n))
		}
	}
	a.check(off, n)
	a.run(func() error {
		return a.foldChunks(off, n, len(xs), ws, func(dst []float32, k, lo int) { copy(dst, xs[k][lo:]) })
	})
}

// FoldSegments adds w·xs[i] to acc[offs[i]:offs[i]+len(xs[i])] for every
// i, in one call: the segments are packed back to back into the staging
// buffers, one copy per buffer and one launch per segment. An update of many
// small parameters (LeNet has ten) then costs one hop to the GPU goroutine
// and one synchronisation instead of one per parameter. Segments must not
// overlap: two of them may be folded on different streams at once.
func (a *Acc) FoldSegments(offs []int, xs [][]float32, w float32) {
	if len(offs) != len(xs) {
		panic(fmt.Sprintf("BUG: cuda: FoldSegments with %d offsets and %d segments", len(offs), len(xs)))
	}
	spans := make([][2]int, 0, len(xs))
	for i, x := range xs {
		a.check(offs[i], len(x))
		if len(x) > 0 {
			spans = append(spans, [2]int{offs[i], offs[i] + len(x)})
		}
	}
	slices.SortFunc(spans, func(p, q [2]int) int { return cmp.Compare(p[0], q[0]) })
	for i := 1; i < len(spans); i++ {
		if spans[i][0] < spans[i-1][1] {
			panic(fmt.Sprintf("BUG: cuda: FoldSegments with overlapping segments [%d,%d) and [%d,%d)", spans[i-1][0], spans[i-1][1], spans[i][0], spans[i][1]))
		}
	}
	a.run(func() error { return a.foldPacked(offs, xs, float64(w)) })
}

// foldPacked fills a stage with as many segments (or pieces of one) as it
// holds, copies it and launches a fold per piece, then moves to the other
// stage while the GPU works on this one.
func (a *Acc) foldPacked(offs []int, xs [][]float32, w float64) error {
	e := a.e
	capacity := e.bytes / 4
	type piece struct{ at, pos, n int }
	var pieces []piece
	ws := [MaxK]float64{w}
	c, pos := 0, 0
	s := &e.stages[0]
	if err := s.stream.Synchronize(); err != nil {
		return fmt.Errorf("cannot fold: %w", err)
	}
	flush := func() error {
		if pos == 0 {
			return nil
		}
		if err := cu.MemcpyHtoDAsync(s.dev, s.host, int64(4*pos), s.stream); err != nil {
			return fmt.Errorf("cannot copy update to GPU: %w", err)
		}
		for _, p := range pieces {
			if err := a.foldStaged(s.dev+cu.DevicePtr(4*p.pos), p.at, p.n, 1, ws[:], s.stream); err != nil {
				return err
			}
		}
		pieces, pos = pieces[:0], 0
		c++
		s = &e.stages[c%2]
		if err := s.stream.Synchronize(); err != nil { // its previous pieces are done
			return fmt.Errorf("cannot fold: %w", err)
		}
		return nil
	}
	for i, x := range xs {
		at := offs[i]
		for len(x) > 0 {
			pos = (pos + 1) &^ 1 // even, for the kernel's float2 path
			if pos >= capacity {
				if err := flush(); err != nil {
					return err
				}
			}
			m := min(len(x), capacity-pos)
			copy(unsafe.Slice((*float32)(unsafe.Add(s.host, 4*pos)), m), x[:m])
			pieces = append(pieces, piece{at, pos, m})
			pos, at, x = pos+m, at+m, x[m:]
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return e.syncAll()
}

// foldChunks stages the updates chunk by chunk through fill, alternating
// the two stages so that the copy of chunk c+1 overlaps the fold of chunk c.
func (a *Acc) foldChunks(off, n, k int, ws []float32, fill func(dst []float32, k, lo int)) error {
	e := a.e
	var w [MaxK]float64
	for i := range k {
		w[i] = float64(ws[i])
	}
	for c, lo := 0, 0; lo < n; c, lo = c+1, lo+e.chunk {
		m := min(e.chunk, n-lo)
		s := &e.stages[c%2]
		if err := s.stream.Synchronize(); err != nil { // its previous chunk is done
			return fmt.Errorf("cannot fold: %w", err)
		}
		host := unsafe.Slice((*float32)(s.host), k*m)
		for i := range k {
			fill(host[i*m:(i+1)*m], i, lo)
		}
		if err := cu.MemcpyHtoDAsync(s.dev, s.host, int64(4*k*m), s.stream); err != nil {
			return fmt.Errorf("cannot copy update to GPU: %w", err)
		}
		if err := a.foldStaged(s.dev, off+lo, m, k, w[:], s.stream); err != nil {
			return err
		}
	}
	return e.syncAll()
}

// foldStaged launches the fold of k staged updates (ld = m) into acc[at:at+m].
func (a *Acc) foldStaged(x cu.DevicePtr, at, m, k int, w []float64, s cu.Stream) error {
	accP, n64 := a.at(at), int64(m)
	var err error
	if k == 1 {
		err = launch(a.e.fFold, (m+1)/2, s, unsafe.Pointer(&accP), unsafe.Pointer(&x), unsafe.Pointer(&w[0]), unsafe.Pointer(&n64))
	} else {
		k64 := int64(k)
		err = launch(a.e.fFoldK, m, s, unsafe.Pointer(&accP), unsafe.Pointer(&x), unsafe.Pointer(&n64), unsafe.Pointer(&n64), unsafe.Pointer(&k64),
			unsafe.Pointer(&w[0]), unsafe.Pointer(&w[1]), unsafe.Pointer(&w[2]), unsafe.Pointer(&w[3]),
			unsafe.Pointer(&w[4]), unsafe.Pointer(&w[5]), unsafe.Pointer(&w[6]), unsafe.Pointer(&w[7]))
	}
	if err != nil {
		return fmt.Errorf("cannot launch fold: %w", err)
	}
	return nil
}

// Merge adds o (an accumulator of the same engine and length) to a, on the GPU.
func (a *Acc) Merge(o *Acc) {
	if o.e != a.e || o.n != a.n {
		panic(fmt.Sprintf("BUG: cuda: merging an accumulator of %d into one of %d or across engines", o.n, a.n))
	}
	if o.err != nil && a.err == nil {
		a.err = o.err
	}
	a.run(func() error {
		s := a.e.stages[0].stream
		accP, p, n64 := a.acc, o.acc, int64(a.n)
		if err := launch(a.e.fAdd, a.n, s, unsafe.Pointer(&accP), unsafe.Pointer(&p), unsafe.Pointer(&n64)); err != nil {
			return fmt.Errorf("cannot launch merge: %w", err)
		}
		return s.Synchronize()
	})
}

// f64PerStage is how many float64s a stage buffer carries.
func (e *Engine) f64PerStage() int { return e.bytes / 8 }

// AppendPartial appends acc[off:off+n] to dst as little-endian float64s.
func (a *Acc) AppendPartial(dst []byte, off, n int) []byte {
	a.check(off, n)
	start := len(dst)
	dst = append(dst, make([]byte, 8*n)...)
	out := dst[start:]
	a.run(func() error {
		e := a.e
		s := &e.stages[0]
		for lo := 0; lo < n; lo += e.f64PerStage() {
			m := min(e.f64PerStage(), n-lo)
			if err := cu.MemcpyDtoHAsync(s.host, a.at(off+lo), int64(8*m), s.stream); err != nil {
				return fmt.Errorf("cannot copy partial sum from GPU: %w", err)
			}
			if err := s.stream.Synchronize(); err != nil {
				return err
			}
			src := unsafe.Slice((*byte)(s.host), 8*m)
			if littleEndian {
				copy(out[8*lo:], src)
			} else {
				for i := range m {
					v := *(*float64)(unsafe.Pointer(&src[8*i]))
					binary.LittleEndian.PutUint64(out[8*(lo+i):], math.Float64bits(v))
				}
			}
		}
		return nil
	})
	return dst
}

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// AddPartial adds the little-endian float64s in raw to acc[off:].
func (a *Acc) AddPartial(off int, raw []byte) error {
	if len(raw)%8 != 0 {
		return fmt.Errorf("cannot add partial sum: %d bytes are not whole float64s", len(raw))
	}
	n := len(raw) / 8
	if off < 0 || off+n > a.n {
		return fmt.Errorf("cannot add partial sum: elements [%d,%d) outside an accumulator of %d", off, off+n, a.n)
	}
	a.run(func() error {
		e := a.e
		for c, lo := 0, 0; lo < n; c, lo = c+1, lo+e.f64PerStage() {
			m := min(e.f64PerStage(), n-lo)
			s := &e.stages[c%2]
			if err := s.stream.Synchronize(); err != nil {
				return err
			}
			host := unsafe.Slice((*byte)(s.host), 8*m)
			if littleEndian {
				copy(host, raw[8*lo:8*(lo+m)])
			} else {
				for i := range m {
					*(*float64)(unsafe.Pointer(&host[8*i])) = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*(lo+i):]))
				}
			}
			if err := cu.MemcpyHtoDAsync(s.dev, s.host, int64(8*m), s.stream); err != nil {
				return fmt.Errorf("cannot copy partial sum to GPU: %w", err)
			}
			accP, p, m64 := a.at(off+lo), s.dev, int64(m)
			if err := launch(e.fAdd, m, s.stream, unsafe.Pointer(&accP), unsafe.Pointer(&p), unsafe.Pointer(&m64)); err != nil {
				return fmt.Errorf("cannot launch add: %w", err)
			}
		}
		return e.syncAll()
	})
	return a.err
}

// Result writes float32(acc[off+i]·scale) to dst[i].
func (a *Acc) Result(dst []float32, off int, scale float64) {
	a.check(off, len(dst))
	a.run(func() error {
		e := a.e
		s := &e.stages[0]
		per := e.bytes / 4
		for lo := 0; lo < len(dst); lo += per {
			m := min(per, len(dst)-lo)
			d, accP, sc, m64 := s.dev, a.at(off+lo), scale, int64(m)
			if err := launch(e.fScale, m, s.stream, unsafe.Pointer(&d), unsafe.Pointer(&accP), unsafe.Pointer(&sc), unsafe.Pointer(&m64)); err != nil {
				return fmt.Errorf("cannot launch scale: %w", err)
			}
			if err := cu.MemcpyDtoHAsync(s.host, s.dev, int64(4*m), s.stream); err != nil {
				return fmt.Errorf("cannot copy result from GPU: %w", err)
			}
			if err := s.stream.Synchronize(); err != nil {
				return err
			}
			copy(dst[lo:lo+m], unsafe.Slice((*float32)(s.host), m))
		}
		return nil
	})
	if a.err != nil {
		nan := float32(math.NaN())
		for i := range dst {
			dst[i] = nan
		}
	}
}

// Reset zeroes the accumulator.
func (a *Acc) Reset() {
	a.err = nil
	a.run(func() error {
		if a.n == 0 {
			return nil
		}
		return zero(a.acc, a.n)
	})
}

// Close frees the accumulator's GPU memory and returns its sticky error.
func (a *Acc) Close() error {
	err := a.err
	if a.acc != 0 {
		if ferr := a.e.do(func() error { return cu.MemFree(a.acc) }); ferr != nil && err == nil {
			err = ferr
		}
		a.acc = 0
	}
	return err
}
