package safetensors

import "unsafe"

// littleEndian is true on little-endian hosts, where float32 slices are
// written and read as raw memory. Tests flip it to exercise the portable path.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()
