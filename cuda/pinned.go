//go:build cuda

package cuda

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>

// Page-locked, portable host memory: gorgonia.org/cu leaves cuMemHostAlloc
// unbound, and async copies from Go memory are neither async nor legal.
static CUresult hostAlloc(void **p, size_t n) {
	return cuMemHostAlloc(p, n, CU_MEMHOSTALLOC_PORTABLE);
}
static CUresult hostFree(void *p) { return cuMemFreeHost(p); }
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// hostAlloc returns n bytes of pinned host memory; the caller's context
// must be current (the engine goroutine).
func hostAlloc(n int) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	if r := C.hostAlloc(&p, C.size_t(n)); r != C.CUDA_SUCCESS {
		return nil, fmt.Errorf("cannot allocate %d pinned bytes: CUresult %d", n, int(r))
	}
	return p, nil
}

func hostFree(p unsafe.Pointer) error {
	if r := C.hostFree(p); r != C.CUDA_SUCCESS {
		return fmt.Errorf("cannot free pinned memory: CUresult %d", int(r))
	}
	return nil
}
