package flmsg

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/fedcluster/fedcluster/node/model"
)

// hostLittleEndian is whether float32 in memory has the wire's byte order,
// which the zero-copy views and bulk copies need.
var hostLittleEndian = model.HostLittleEndian

// FeatureMaps is a verified [FeatureMap] vector inside a decoded message: a
// view, valid while the message's buffer is neither reused nor modified.
// The zero value is an empty vector.
type FeatureMaps struct {
	buf []byte
	pos int // first element's offset word
	n   int
}

// Len is the number of feature maps.
func (v FeatureMaps) Len() int { return v.n }

// At returns feature map i (0 ≤ i < Len()); it panics on an index out of
// range, like a slice.
func (v FeatureMaps) At(i int) FeatureMap {
	if uint(i) >= uint(v.n) {
		panic(fmt.Sprintf("flmsg: feature map index %d out of range [0:%d]", i, v.n))
	}
	p := v.pos + 4*i
	t := openTable(v.buf, p+int(binary.LittleEndian.Uint32(v.buf[p:])))
	var raw []byte
	if dp, n := t.vector(slotFeatureMapData); dp != 0 {
		raw = v.buf[dp : dp+4*n : dp+4*n]
	}
	return FeatureMap{Name: t.bytes(slotFeatureMapName), Raw: raw}
}

// NumFloats returns the total number of float32 values in all feature maps.
func (v FeatureMaps) NumFloats() int {
	total := 0
	for i := 0; i < v.n; i++ {
		total += v.At(i).Len()
	}
	return total
}

// CopyTo copies every feature map whose name is a parameter of m into m,
// with one bulk copy per tensor. A known name with the wrong element count,
// or given twice, is an error (m may then be partly written); unknown names
// are skipped.
// It returns how many parameters were written.
func (v FeatureMaps) CopyTo(m *model.Model) (int, error) {
	copied := 0
	seen := make(map[int]bool, len(m.Layout.Params)) // by offset: one entry per parameter
	for i := 0; i < v.n; i++ {
		fm := v.At(i)
		p, ok := m.Layout.Lookup(string(fm.Name))
		if !ok {
			continue
		}
		if seen[p.Offset] {
			return copied, fmt.Errorf("cannot copy feature map %q: it appears twice", fm.Name)
		}
		seen[p.Offset] = true
		if fm.Len() != p.Len {
			return copied, fmt.Errorf("cannot copy feature map %q: %d values, the model's parameter has %d", fm.Name, fm.Len(), p.Len)
		}
		fm.CopyTo(m.Data[p.Offset : p.Offset+p.Len])
		copied++
	}
	return copied, nil
}

// FeatureMap is one named tensor of a decoded message. Name and Raw are views
// into the message's buffer.
type FeatureMap struct {
	// Name is weight_fullname (MindSpore's Parameter full name).
	Name []byte
	// Raw is the data vector's bytes: Len() little-endian float32 values,
	// 4-byte aligned relative to the message start (the verifier checks it)
	// but not necessarily in memory.
	Raw []byte
}

// Len is the number of float32 values.
func (f FeatureMap) Len() int { return len(f.Raw) / 4 }

// Floats returns the data as a []float32 that aliases the message buffer:
// no copy, no allocation. ok is false when the data is not 4-byte aligned in
// memory (the buffer itself starts at an address that is not a multiple of
// 4) or the host is big-endian; use Data then.
func (f FeatureMap) Floats() (data []float32, ok bool) {
	if len(f.Raw) == 0 {
		return nil, true
	}
	p := unsafe.Pointer(unsafe.SliceData(f.Raw))
	if !hostLittleEndian || uintptr(p)%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(p), len(f.Raw)/4), true
}

// Data returns the data as []float32: the zero-copy view of Floats when the
// data is aligned in memory, else a copy into scratch (grown if it is too
// short, so pass a reused scratch to avoid allocating). Either way it never
// converts element by element on a little-endian host.
func (f FeatureMap) Data(scratch []float32) []float32 {
	if v, ok := f.Floats(); ok {
		return v
	}
	n := f.Len()
	if cap(scratch) < n {
		scratch = make([]float32, n)
	}
	scratch = scratch[:n]
	f.CopyTo(scratch)
	return scratch
}

// CopyTo copies min(len(dst), Len()) values into dst with one memmove and
// returns how many it copied.
func (f FeatureMap) CopyTo(dst []float32) int {
	n := min(len(dst), f.Len())
	if n == 0 {
		return 0
	}
	if hostLittleEndian {
		copy(model.FloatBytes(dst[:n]), f.Raw)
		return n
	}
	for i := range dst[:n] {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(f.Raw[4*i:]))
	}
	return n
}
