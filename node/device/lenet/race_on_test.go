//go:build race

package lenet

// raceEnabled shrinks the slowest tests under the race detector, which
// slows the plain Go loops (im2col, pooling) tenfold; gonum's assembly
// kernels are not instrumented.
const raceEnabled = true
