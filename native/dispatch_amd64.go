//go:build amd64 && !purego

package native

import "golang.org/x/sys/cpu"

var (
	hasAVX2   = cpu.X86.HasAVX2 && cpu.X86.HasFMA
	hasAVX512 = cpu.X86.HasAVX512F
)

// foldAsm calls the level's kernel for k = len(xs) updates; len(acc) is a
// multiple of the level's block.
func foldAsm(l Level, acc []float64, xs [][]float32, ws []float64) {
	if l == AVX512 {
		switch len(xs) {
		case 1:
			foldAVX512(acc, xs[0], ws[0])
		case 2:
			foldK2AVX512(acc, xs, ws)
		case 3:
			foldK3AVX512(acc, xs, ws)
		case 4:
			foldK4AVX512(acc, xs, ws)
		case 5:
			foldK5AVX512(acc, xs, ws)
		case 6:
			foldK6AVX512(acc, xs, ws)
		case 7:
			foldK7AVX512(acc, xs, ws)
		case 8:
			foldK8AVX512(acc, xs, ws)
		}
		return
	}
	switch len(xs) {
	case 1:
		foldAVX2(acc, xs[0], ws[0])
	case 2:
		foldK2AVX2(acc, xs, ws)
	case 3:
		foldK3AVX2(acc, xs, ws)
	case 4:
		foldK4AVX2(acc, xs, ws)
	case 5:
		foldK5AVX2(acc, xs, ws)
	case 6:
		foldK6AVX2(acc, xs, ws)
	case 7:
		foldK7AVX2(acc, xs, ws)
	case 8:
		foldK8AVX2(acc, xs, ws)
	}
}

func addAsm(l Level, acc []float64, raw []byte) {
	if l == AVX512 {
		addAVX512(acc, raw)
		return
	}
	addAVX2(acc, raw)
}

func scaleAsm(l Level, dst []float32, acc []float64, s float64) {
	if l == AVX512 {
		scaleAVX512(dst, acc, s)
		return
	}
	scaleAVX2(dst, acc, s)
}

// finiteAsm reports whether raw holds no NaN or Inf; len(raw) is a multiple
// of the level's finiteBlock.
func finiteAsm(l Level, raw []byte) bool {
	if l == AVX512 {
		return maxExponentAVX512(raw) != expMask
	}
	return maxExponentAVX2(raw) != expMask
}
