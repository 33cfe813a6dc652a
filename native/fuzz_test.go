package native

import (
	"encoding/binary"
	"math"
	"testing"
)

// FuzzFold checks every level against the pure-Go loops on arbitrary bit
// patterns (NaN, Inf, subnormals included) and lengths, with canaries.
func FuzzFold(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8}, float32(0.5), uint8(1), uint16(3))
	f.Add(make([]byte, 400), float32(-2), uint8(8), uint16(97))
	f.Fuzz(func(t *testing.T, data []byte, w float32, k uint8, n uint16) {
		k = k%MaxK + 1
		size := int(n) % 300
		word := func(i int) uint32 {
			if len(data) < 4 {
				return uint32(i) * 0x9e3779b9
			}
			j := (4 * i) % (len(data) - len(data)%4)
			return binary.LittleEndian.Uint32(data[j:]) ^ uint32(i)*0x9e3779b9
		}
		xs := make([][]float32, k)
		ws := make([]float32, k)
		for j := range xs {
			xs[j] = make([]float32, size)
			for i := range xs[j] {
				xs[j][i] = math.Float32frombits(word(j*size + i))
			}
			ws[j] = w * float32(j+1)
		}
		base := make([]float64, size+canaries)
		for i := range base {
			base[i] = float64(math.Float32frombits(word(i + 7)))
		}
		for i := size; i < len(base); i++ {
			base[i] = canary
		}
		want := append([]float64(nil), base[:size]...)
		for j := range xs {
			foldGeneric(want, xs[j], float64(ws[j]))
		}
		for _, l := range Levels() {
			acc := append([]float64(nil), base...)[:size]
			l.FoldK(acc, xs, ws)
			checkCanary(t, acc)
			for i := range acc {
				if !sameBits(acc[i], want[i]) {
					t.Fatalf("%v k=%d n=%d: acc[%d] = %v, pure Go %v", l, k, size, i, acc[i], want[i])
				}
			}
			one := append([]float64(nil), base...)[:size]
			l.Fold(one, xs[0], ws[0])
			checkCanary(t, one)
			dst := make([]float32, size)
			l.Scale(dst, one, float64(w))
			for i := range dst {
				if g, e := dst[i], float32(one[i]*float64(w)); math.Float32bits(g) != math.Float32bits(e) && !(g != g && e != e) {
					t.Fatalf("%v n=%d: scale[%d] = %v, want %v", l, size, i, g, e)
				}
			}
		}
	})
}
