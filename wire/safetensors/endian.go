package safetensors

import "unsafe"

// littleEndian is true on little-endian hosts, where float32 slices are
// written and read as raw memory. Tests flip it to exercise the portable path.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// floatBytes views s as its raw bytes (host byte order).
func floatBytes(s []float32) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 4*len(s))
}
