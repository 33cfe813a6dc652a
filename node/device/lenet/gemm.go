package lenet

import (
	"unsafe"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// float is the element type of a network: float32 for training, float64 for
// the gradient check.
type float interface{ float32 | float64 }

var impl gonum.Implementation

// Tile sizes of one gonum GEMM call. gonum's [SD]gemm runs serially when C
// has fewer than 4 blocks of 64×64 and otherwise starts a goroutine per block
// (allocating, and fighting the devices that already run one per core). Tiles
// of at most 64×192 keep every call on the serial path, and 192-wide rows of C
// stay in L1 while the axpy kernels sweep over them.
const tileM, tileN = 64, 192

// gemm computes C = op(A)·op(B) + beta·C, where op(X) is Xᵀ if the flag is
// set, A is m×k, B is k×n and C is m×n after op, all row-major.
func gemm[T float](tA, tB bool, m, n, k int, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	ta, tb := blas.NoTrans, blas.NoTrans
	if tA {
		ta = blas.Trans
	}
	if tB {
		tb = blas.Trans
	}
	for i := 0; i < m; i += tileM {
		mi := min(tileM, m-i)
		var ai []T
		if tA {
			ai = a[i:]
		} else {
			ai = a[i*lda:]
		}
		for j := 0; j < n; j += tileN {
			nj := min(tileN, n-j)
			var bj []T
			if tB {
				bj = b[j*ldb:]
			} else {
				bj = b[j:]
			}
			cij := c[i*ldc+j:]
			if unsafe.Sizeof(T(0)) == 4 {
				impl.Sgemm(ta, tb, mi, nj, k, 1, f32(ai), lda, f32(bj), ldb, float32(beta), f32(cij), ldc)
			} else {
				impl.Dgemm(ta, tb, mi, nj, k, 1, f64(ai), lda, f64(bj), ldb, float64(beta), f64(cij), ldc)
			}
		}
	}
}

// axpy computes y += alpha·x.
func axpy[T float](alpha T, x, y []T) {
	if unsafe.Sizeof(T(0)) == 4 {
		impl.Saxpy(len(x), float32(alpha), f32(x), 1, f32(y), 1)
	} else {
		impl.Daxpy(len(x), float64(alpha), f64(x), 1, f64(y), 1)
	}
}

// f32 and f64 reinterpret a []T whose T is known to be float32 or float64.
// Converting through an interface would allocate on every call.
func f32[T float](s []T) []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}

func f64[T float](s []T) []float64 {
	return unsafe.Slice((*float64)(unsafe.Pointer(unsafe.SliceData(s))), len(s))
}
