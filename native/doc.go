// Package native holds the CPU aggregation kernels: float32 updates folded
// with a weight into float64 accumulators, fused folds of up to 8 updates,
// addition of partial sums received as little-endian float64 bytes, the
// final scale back to float32, and the NaN/Inf check an update passes
// before it is folded.
//
// Three levels implement every kernel: the pure-Go loop ([Generic], always
// built and tested), AVX2+FMA and AVX-512 assembly generated with avo from
// _gen/ (amd64 without the purego tag). [Best] is chosen once at start-up
// from the CPU's features; tests flip it to run the suite on every level.
//
// Why float64 accumulators: a float32 sum of 1,000 updates loses about
// log2(1000) bits and misses the 1e-6 relative error budget; widening each
// float32 with VCVTPS2PD and folding with a double FMA keeps the error at
// the float32 rounding of the final result. The product of two float32s is
// exact in float64, so FMA and the Go loop's multiply-then-add give the same
// bits: every level returns bit-identical sums, and servers on different
// CPUs agree on the model.
//
// Large slices are split into chunks folded in parallel on a small pool of
// worker goroutines (one per extra core); a chunk runs inline when no worker
// is free, so concurrent callers never wait for each other.
package native

//go:generate go run -C _gen -tags=generate . -out ../fold_amd64.s -stubs ../fold_amd64.go -pkg native
