// Package kernels holds the CUDA C sources of the aggregation kernels and
// the PTX generated from them, embedded so that the cuda engine is one
// self-contained binary and machines without nvcc can build it.
//
// Regenerate with `go generate ./kernels` (needs nvcc 11.8); CI checks that
// the committed PTX matches.
package kernels

import _ "embed"

//go:generate ./gen.sh

// Source is fold.cu, for reference and for tools that compile it afresh.
//
//go:embed fold.cu
var Source string

// PTX90 is fold.cu compiled for compute_90 (Hopper).
//
//go:embed fold_compute90.ptx
var PTX90 string

// PTX70 is fold.cu compiled for compute_70, JIT-compiled by the driver on
// any GPU from Volta on.
//
//go:embed fold_compute70.ptx
var PTX70 string

// Names of the kernels in the PTX.
const (
	Fold       = "fold"
	FoldK      = "foldK"
	AddPartial = "addPartial"
	Scale      = "scale"
)

// PTX returns the best PTX for a device of compute capability major.minor.
func PTX(major, minor int) string {
	if major >= 9 {
		return PTX90
	}
	return PTX70
}
