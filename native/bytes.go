package native

import (
	"encoding/binary"
	"math"
	"unsafe"
)

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// f64Bytes views p as its in-memory bytes.
func f64Bytes(p []float64) []byte {
	if len(p) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&p[0])), 8*len(p))
}

// AppendF64 appends the elements of p to dst as little-endian float64s.
func AppendF64(dst []byte, p []float64) []byte {
	if littleEndian {
		return append(dst, f64Bytes(p)...)
	}
	for _, v := range p {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
	}
	return dst
}
