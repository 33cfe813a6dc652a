//go:build !amd64 || purego

package native

const (
	hasAVX2   = false
	hasAVX512 = false
)

// Without assembly only Generic is supported, and Level.block keeps these
// from being called; reaching one means the dispatch is broken.

func foldAsm(Level, []float64, [][]float32, []float64) {
	panic("BUG: native: assembly fold called in a build without assembly")
}

func addAsm(Level, []float64, []byte) {
	panic("BUG: native: assembly add called in a build without assembly")
}

func scaleAsm(Level, []float32, []float64, float64) {
	panic("BUG: native: assembly scale called in a build without assembly")
}

func finiteAsm(Level, []byte) bool {
	panic("BUG: native: assembly finite check called in a build without assembly")
}
