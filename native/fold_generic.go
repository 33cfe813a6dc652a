package native

import (
	"encoding/binary"
	"math"
)

// The pure-Go kernels. They define the results: the assembly must match them
// bit for bit. Callers check lengths; the loops index len(acc) or len(dst).

func foldGeneric(acc []float64, x []float32, w float64) {
	x = x[:len(acc)]
	for i := range acc {
		acc[i] += w * float64(x[i])
	}
}

// foldKGeneric adds the updates in order k = 0, 1, ... per element, the
// order the assembly uses, so the roundings agree.
func foldKGeneric(acc []float64, xs [][]float32, ws []float64) {
	switch len(xs) {
	case 0:
	case 1:
		foldGeneric(acc, xs[0], ws[0])
	default:
		// Two updates per pass halves the accumulator traffic of the
		// plain loop while keeping the per-element order.
		k := 0
		for ; k+1 < len(xs); k += 2 {
			a, b := xs[k][:len(acc)], xs[k+1][:len(acc)]
			wa, wb := ws[k], ws[k+1]
			for i := range acc {
				acc[i] = acc[i] + wa*float64(a[i]) + wb*float64(b[i])
			}
		}
		if k < len(xs) {
			foldGeneric(acc, xs[k], ws[k])
		}
	}
}

func addGeneric(acc []float64, p []byte) {
	p = p[:8*len(acc)]
	for i := range acc {
		acc[i] += math.Float64frombits(binary.LittleEndian.Uint64(p[8*i:]))
	}
}

func scaleGeneric(dst []float32, acc []float64, s float64) {
	acc = acc[:len(dst)]
	for i := range dst {
		dst[i] = float32(acc[i] * s)
	}
}

// finiteGeneric reports whether no little-endian float32 in raw is a NaN or
// an Inf, whose exponent bits are all ones; two floats per step.
func finiteGeneric(raw []byte) bool {
	i := 0
	for ; i+8 <= len(raw); i += 8 {
		v := binary.LittleEndian.Uint64(raw[i:])
		if v&expMask == expMask || v&(expMask<<32) == expMask<<32 {
			return false
		}
	}
	for ; i+4 <= len(raw); i += 4 {
		if binary.LittleEndian.Uint32(raw[i:])&expMask == expMask {
			return false
		}
	}
	return true
}
