package flmsg

import (
	"encoding/binary"
	"math"
)

// table reads a table of a buffer that verify accepted. Its methods index the
// buffer without checks: only call them on verified messages.
type table struct {
	buf   []byte
	pos   int // the table's soffset
	vt    int // its vtable
	vsize int
}

func rootTable(buf []byte) table {
	return openTable(buf, int(binary.LittleEndian.Uint32(buf)))
}

func openTable(buf []byte, pos int) table {
	vt := pos - int(int32(binary.LittleEndian.Uint32(buf[pos:])))
	return table{buf: buf, pos: pos, vt: vt, vsize: int(binary.LittleEndian.Uint16(buf[vt:]))}
}

// field returns the absolute position of a slot's inline data, or 0 when
// the slot is absent.
func (t table) field(slot int) int {
	vo := 4 + 2*slot
	if vo+2 > t.vsize {
		return 0
	}
	fo := int(binary.LittleEndian.Uint16(t.buf[t.vt+vo:]))
	if fo == 0 {
		return 0
	}
	return t.pos + fo
}

func (t table) int32(slot int) int32 {
	if p := t.field(slot); p != 0 {
		return int32(binary.LittleEndian.Uint32(t.buf[p:]))
	}
	return 0
}

func (t table) float32(slot int) float32 {
	if p := t.field(slot); p != 0 {
		return math.Float32frombits(binary.LittleEndian.Uint32(t.buf[p:]))
	}
	return 0
}

func (t table) int8(slot int) int8 {
	if p := t.field(slot); p != 0 {
		return int8(t.buf[p])
	}
	return 0
}

func (t table) bool(slot int) bool {
	if p := t.field(slot); p != 0 {
		return t.buf[p] != 0
	}
	return false
}

// deref returns the position an offset field points to, or 0 when absent.
func (t table) deref(slot int) int {
	p := t.field(slot)
	if p == 0 {
		return 0
	}
	return p + int(binary.LittleEndian.Uint32(t.buf[p:]))
}

// bytes returns a string field's bytes as a view into the buffer (capacity
// clipped so that appending to it cannot overwrite the message), or nil.
func (t table) bytes(slot int) []byte {
	p := t.deref(slot)
	if p == 0 {
		return nil
	}
	n := int(binary.LittleEndian.Uint32(t.buf[p:]))
	return t.buf[p+4 : p+4+n : p+4+n]
}

// vector returns the position of a vector field's first element and its
// length, or (0, 0) when absent.
func (t table) vector(slot int) (pos, n int) {
	p := t.deref(slot)
	if p == 0 {
		return 0, 0
	}
	return p + 4, int(binary.LittleEndian.Uint32(t.buf[p:]))
}

// byteVector returns a [ubyte]/[byte] vector as a view, or nil.
func (t table) byteVector(slot int) []byte {
	p, n := t.vector(slot)
	if p == 0 {
		return nil
	}
	return t.buf[p : p+n : p+n]
}

// sub opens a table field; ok is false when absent.
func (t table) sub(slot int) (table, bool) {
	p := t.deref(slot)
	if p == 0 {
		return table{}, false
	}
	return openTable(t.buf, p), true
}

// featureMaps returns a [FeatureMap] field.
func (t table) featureMaps(slot int) FeatureMaps {
	p, n := t.vector(slot)
	return FeatureMaps{buf: t.buf, pos: p, n: n}
}
