// Package cuda is the GPU aggregation engine, built only with -tags cuda on
// gorgonia.org/cu (the driver API; CUDA 11.8 headers, any newer driver).
//
// One goroutine, locked to an OS thread, owns the device's primary context
// and makes every driver call; the other goroutines hand it closures. The
// accumulator (float64, like the CPU engines) stays on the GPU for the whole
// iteration. Updates go through two pinned host buffers (cuMemHostAlloc,
// which cu does not bind) and two device staging buffers, chunk by chunk on
// two streams, so the copy of one chunk overlaps the fold of the previous
// one. Kernels come from package kernels as embedded PTX.
//
// gorgonia.org/cu exits the process at start-up when no GPU is present, so
// nothing in the default build imports this package's GPU half: without
// the tag, New returns ErrNoCUDA.
package cuda

import "errors"

// ErrNoCUDA is returned by New in a binary built without -tags cuda.
var ErrNoCUDA = errors.New("this binary was built without CUDA (rebuild with -tags cuda)")
