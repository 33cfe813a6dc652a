package native

import (
	"fmt"
)

// Level names one implementation of the kernels.
type Level uint8

const (
	Generic Level = iota // pure Go, every platform
	AVX2                 // AVX2+FMA assembly, amd64
	AVX512               // AVX-512F assembly, amd64
)

// MaxK is the largest number of updates FoldK fuses in one pass.
const MaxK = 8

// Best is the fastest level this CPU supports, chosen once at start-up.
// Tests set it to run the package-level functions on another level.
var Best = detect()

func detect() Level {
	switch {
	case hasAVX512:
		return AVX512
	case hasAVX2:
		return AVX2
	}
	return Generic
}

// String returns the engine name: "purego", "avx2" or "avx512".
func (l Level) String() string {
	switch l {
	case Generic:
		return "purego"
	case AVX2:
		return "avx2"
	case AVX512:
		return "avx512"
	}
	return fmt.Sprintf("Level(%d)", uint8(l))
}

// Supported reports whether this binary on this CPU can run l.
func (l Level) Supported() bool {
	switch l {
	case Generic:
		return true
	case AVX2:
		return hasAVX2
	case AVX512:
		return hasAVX512
	}
	return false
}

// Levels lists the supported levels, slowest first.
func Levels() []Level {
	var ls []Level
	for _, l := range []Level{Generic, AVX2, AVX512} {
		if l.Supported() {
			ls = append(ls, l)
		}
	}
	return ls
}

func (l Level) block() int {
	switch l {
	case AVX2:
		return 16
	case AVX512:
		return 32
	}
	return 1
}

// finiteBlock is how many bytes one pass of the level's finite check reads.
func (l Level) finiteBlock() int {
	switch l {
	case AVX2:
		return 128
	case AVX512:
		return 256
	}
	return 1
}

// expMask selects a float32's exponent bits: all ones only in NaN and ±Inf.
const expMask = 0x7f800000

func (l Level) check() {
	if !l.Supported() {
		panic("BUG: native: level " + l.String() + " used on a CPU or build without it")
	}
}

// Fold adds w·x[i] to acc[i] for every i < len(x); len(acc) >= len(x).
func (l Level) Fold(acc []float64, x []float32, w float32) {
	acc = acc[:len(x)]
	l.check()
	run(opFold, l, acc, [MaxK][]float32{x}, [MaxK]float64{float64(w)}, 1, nil, nil)
}

// FoldK adds Σ_k ws[k]·xs[k][i] to acc[i], reading and writing acc once.
// len(xs) = len(ws) <= MaxK, every xs[k] as long as xs[0], len(acc) >= that.
func (l Level) FoldK(acc []float64, xs [][]float32, ws []float32) {
	if len(xs) != len(ws) || len(xs) > MaxK {
		panic(fmt.Sprintf("BUG: native: FoldK with %d updates and %d weights (max %d)", len(xs), len(ws), MaxK))
	}
	if len(xs) == 0 {
		return
	}
	n := len(xs[0])
	acc = acc[:n]
	l.check()
	var xa [MaxK][]float32
	var wa [MaxK]float64
	for k, x := range xs {
		if len(x) != n {
			panic(fmt.Sprintf("BUG: native: FoldK update %d has %d elements, update 0 has %d", k, len(x), n))
		}
		xa[k], wa[k] = x, float64(ws[k])
	}
	run(opFold, l, acc, xa, wa, len(xs), nil, nil)
}

// FoldMany adds Σ_k ws[k]·xs[k][i] to acc[i] for any number of updates of
// equal length. It walks acc in cache-sized tiles and folds every update
// into a tile, MaxK at a time, before moving on, so the accumulator crosses
// the memory bus once whatever the number of updates; tiles are spread over
// the cores. Sums are bit-identical to FoldK over groups of MaxK.
func (l Level) FoldMany(acc []float64, xs [][]float32, ws []float32) {
	if len(xs) != len(ws) {
		panic(fmt.Sprintf("BUG: native: FoldMany with %d updates and %d weights", len(xs), len(ws)))
	}
	if len(xs) == 0 {
		return
	}
	n := len(xs[0])
	acc = acc[:n]
	l.check()
	for k, x := range xs {
		if len(x) != n {
			panic(fmt.Sprintf("BUG: native: FoldMany update %d has %d elements, update 0 has %d", k, len(x), n))
		}
	}
	runJob(job{op: opMany, l: l, hi: n, acc: acc, manyX: xs, manyW: ws})
}

// Add adds p to acc element-wise; len(acc) >= len(p).
func (l Level) Add(acc, p []float64) {
	acc = acc[:len(p)]
	if !littleEndian {
		for i, v := range p {
			acc[i] += v
		}
		return
	}
	l.Raw(acc, f64Bytes(p))
}

// Raw adds the little-endian float64s in raw to acc[0:len(raw)/8]; len(raw)
// is a multiple of 8 and len(acc) >= len(raw)/8.
func (l Level) Raw(acc []float64, raw []byte) {
	if len(raw)%8 != 0 {
		panic(fmt.Sprintf("BUG: native: %d raw bytes are not whole float64s", len(raw)))
	}
	acc = acc[:len(raw)/8]
	l.check()
	if !littleEndian {
		addGeneric(acc, raw)
		return
	}
	run(opAdd, l, acc, [MaxK][]float32{}, [MaxK]float64{}, 0, raw, nil)
}

// Scale writes float32(acc[i]·s) to dst[i] for every i < len(dst).
func (l Level) Scale(dst []float32, acc []float64, s float64) {
	acc = acc[:len(dst)]
	l.check()
	run(opScale, l, acc, [MaxK][]float32{}, [MaxK]float64{s}, 0, nil, dst)
}

// Finite reports whether none of the little-endian float32s in raw is a NaN
// or an Inf; a trailing partial float is ignored. It reads raw once,
// without converting it, so an update can be checked in place before any of
// it is folded.
func (l Level) Finite(raw []byte) bool {
	raw = raw[:len(raw)/4*4]
	l.check()
	m := 0
	if l != Generic {
		m = len(raw) / l.finiteBlock() * l.finiteBlock()
	}
	if m > 0 && !finiteAsm(l, raw[:m]) {
		return false
	}
	return finiteGeneric(raw[m:])
}

// Fold, FoldK, Add, Raw, Scale and Finite run the kernels of [Best].
func Fold(acc []float64, x []float32, w float32)        { Best.Fold(acc, x, w) }
func FoldK(acc []float64, xs [][]float32, ws []float32) { Best.FoldK(acc, xs, ws) }

// FoldMany runs [Level.FoldMany] on [Best].
func FoldMany(acc []float64, xs [][]float32, ws []float32) { Best.FoldMany(acc, xs, ws) }
func Add(acc, p []float64)                                 { Best.Add(acc, p) }
func Raw(acc []float64, raw []byte)                        { Best.Raw(acc, raw) }
func Scale(dst []float32, acc []float64, s float64)        { Best.Scale(dst, acc, s) }
func Finite(raw []byte) bool                               { return Best.Finite(raw) }
