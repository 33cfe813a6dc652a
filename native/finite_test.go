package native

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
)

// finiteReference is the obvious check, written apart from the kernels.
func finiteReference(raw []byte) bool {
	for i := 0; i+4 <= len(raw); i += 4 {
		v := float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

func TestFinite(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	bad := []uint32{
		0x7fc00000, // quiet NaN
		0x7f800001, // signalling NaN
		0xffffffff, // negative NaN, all bits
		0x7f800000, // +Inf
		0xff800000, // -Inf
	}
	good := []uint32{0, 0x80000000, 0x7f7fffff, 0xff7fffff, 1, 0x007fffff, 0x3f800000}
	forLevels(t, func(t *testing.T, l Level) {
		for _, n := range []int{0, 1, 7, 31, 32, 33, 63, 64, 65, 127, 4099, 1<<18 + 3} {
			raw := make([]byte, 4*n+3) // 3 bytes of a partial float, ignored
			for i := 0; i < n; i++ {
				v := good[rng.IntN(len(good))] ^ uint32(rng.IntN(1<<23)) // any mantissa
				if rng.IntN(2) == 0 {
					v = math.Float32bits(float32(rng.NormFloat64()))
				}
				binary.LittleEndian.PutUint32(raw[4*i:], v)
			}
			raw[len(raw)-3], raw[len(raw)-2], raw[len(raw)-1] = 0xff, 0xff, 0xff
			if !l.Finite(raw) {
				t.Fatalf("n=%d: finite floats reported as NaN or Inf", n)
			}
			// One bad float at each place a kernel splits the work:
			// first, last, block edges, the scalar tail.
			for _, pos := range []int{0, n - 1, n / 2, 31, 32, 63, 64, 65, n - 33} {
				if pos < 0 || pos >= n {
					continue
				}
				for _, b := range bad {
					keep := binary.LittleEndian.Uint32(raw[4*pos:])
					binary.LittleEndian.PutUint32(raw[4*pos:], b)
					if l.Finite(raw) {
						t.Fatalf("n=%d: %#08x at %d not found", n, b, pos)
					}
					binary.LittleEndian.PutUint32(raw[4*pos:], keep)
				}
			}
		}
	})
}

// FuzzFinite checks every level against the reference on arbitrary bytes,
// at every offset of the first few (so each kernel sees misaligned input).
func FuzzFinite(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0x7f, 1, 2, 3, 4})
	f.Add(make([]byte, 1031))
	f.Fuzz(func(t *testing.T, raw []byte) {
		for off := 0; off < min(4, len(raw)); off++ {
			want := finiteReference(raw[off:])
			for _, l := range Levels() {
				if got := l.Finite(raw[off:]); got != want {
					t.Fatalf("%v: Finite = %v at offset %d, want %v", l, got, off, want)
				}
			}
		}
	})
}

// f32Bytes returns the bytes of p as it lies in memory (little-endian on
// every platform the benchmarks run).
func f32Bytes(p []float32) []byte {
	raw := make([]byte, 4*len(p))
	for i, v := range p {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return raw
}
