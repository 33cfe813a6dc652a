package flmsg

import (
	"encoding/binary"
	"fmt"
)

// Limits of the verifier. They match the C++ flatbuffers::Verifier defaults
// where it has one.
const (
	// MaxBufferSize is the largest message the verifier accepts
	// (FLATBUFFERS_MAX_BUFFER_SIZE: offsets are signed 32-bit).
	MaxBufferSize = 1<<31 - 1
	// maxDepth bounds table nesting (C++ max_depth = 64).
	maxDepth = 64
	// maxTables bounds the number of tables visited in one message
	// (C++ max_tables = 1,000,000), so that a vector of offsets all pointing
	// at one table cannot make verification cost more than the buffer size.
	maxTables = 1_000_000
)

// kind is the wire shape of a field.
type kind uint8

const (
	kScalar       kind = iota // inline scalar of fieldSpec.size bytes
	kString                   // offset to a NUL-terminated string
	kVector                   // offset to a vector of fieldSpec.size-byte scalars
	kStringVector             // offset to a vector of offsets to strings
	kTable                    // offset to a table of type fieldSpec.sub
	kTableVector              // offset to a vector of offsets to tables of type fieldSpec.sub
)

// fieldSpec describes one vtable slot.
type fieldSpec struct {
	name string
	kind kind
	size int        // scalar or vector element size in bytes
	sub  *tableSpec // for kTable and kTableVector
	// detached: verifyHead checks what it read of the field's subtree and
	// that the rest lies inside the message.
	detached bool
}

// tableSpec describes a table: fields[i] is vtable slot i. Slots past the
// end of fields (written by a newer schema) are ignored, as FlatBuffers
// readers do.
type tableSpec struct {
	name   string
	fields []fieldSpec
}

func scalar(name string, size int) fieldSpec { return fieldSpec{name: name, kind: kScalar, size: size} }
func str(name string) fieldSpec              { return fieldSpec{name: name, kind: kString} }
func vec(name string, elem int) fieldSpec    { return fieldSpec{name: name, kind: kVector, size: elem} }
func strVec(name string) fieldSpec           { return fieldSpec{name: name, kind: kStringVector} }
func tbl(name string, t *tableSpec) fieldSpec {
	return fieldSpec{name: name, kind: kTable, sub: t}
}
func tblVec(name string, t *tableSpec) fieldSpec {
	return fieldSpec{name: name, kind: kTableVector, sub: t}
}

// verifier checks that every offset and length reachable from the root of a
// message stays inside the buffer, the way flatbuffers::Verifier does in C++,
// so that the readers in this package can then index the buffer without
// further checks. It allocates nothing unless it fails.
type verifier struct {
	buf    []byte
	size   int  // the whole message's length: len(buf), or more in verifyHead
	inTail bool // verifying a detached field's subtree
	depth  int
	tables int
}

// verify checks buf as a root table of type t, finished without file
// identifier or size prefix, as MindSpore sends it.
func verify(buf []byte, t *tableSpec) error {
	return verifyHead(buf, len(buf), t)
}

// verifyHead checks the first bytes, buf, of a message of size bytes:
// every field of t must lie in buf, except detached ones, of which what
// lies in buf is verified and what does not must lie inside the message.
func verifyHead(buf []byte, size int, t *tableSpec) error {
	if size > MaxBufferSize {
		return fmt.Errorf("buffer of %d bytes exceeds the %d-byte FlatBuffers limit", size, MaxBufferSize)
	}
	if len(buf) > size {
		return fmt.Errorf("head of %d bytes is longer than its %d-byte message", len(buf), size)
	}
	if len(buf) < 8 {
		return fmt.Errorf("buffer of %d bytes is shorter than a root offset and a table (8 bytes)", len(buf))
	}
	v := verifier{buf: buf, size: size}
	root, err := v.offset(0)
	if err != nil {
		return fmt.Errorf("root: %w", err)
	}
	return v.table(root, t)
}

// limit is where what is being verified must end: the end of buf, or of
// the whole message within a detached subtree.
func (v *verifier) limit() int {
	if v.inTail {
		return v.size
	}
	return len(v.buf)
}

// unread reports, within a detached subtree, that the k bytes at pos lie
// inside the message but not (all) in buf: they cannot be checked, and
// nothing reads them.
func (v *verifier) unread(pos, k int) bool {
	end := int64(pos) + int64(k)
	return v.inTail && pos >= 0 && end > int64(len(v.buf)) && end <= int64(v.size)
}

func (v *verifier) u16(pos int) int    { return int(binary.LittleEndian.Uint16(v.buf[pos:])) }
func (v *verifier) u32(pos int) uint32 { return binary.LittleEndian.Uint32(v.buf[pos:]) }

// offset follows the uoffset stored at pos (already bounds-checked, 4-aligned)
// and returns the absolute position it points to.
func (v *verifier) offset(pos int) (int, error) {
	// Compare in 64 bits: the code must stay correct where int is 32 bits.
	o := v.u32(pos)
	if o == 0 {
		return 0, fmt.Errorf("offset at %d is 0 (points at itself)", pos)
	}
	if o > MaxBufferSize {
		return 0, fmt.Errorf("offset %d at %d is negative as a signed 32-bit offset", o, pos)
	}
	if uint64(o) >= uint64(v.limit()-pos) {
		return 0, fmt.Errorf("offset %d at %d points past the end of the %d-byte buffer", o, pos, v.limit())
	}
	return pos + int(o), nil
}

// table verifies the table at pos against t.
func (v *verifier) table(pos int, t *tableSpec) error {
	v.depth++
	v.tables++
	err := v.tableFields(pos, t)
	v.depth--
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	return nil
}

func (v *verifier) tableFields(pos int, t *tableSpec) error {
	if v.depth > maxDepth {
		return fmt.Errorf("tables nested deeper than %d", maxDepth)
	}
	if v.tables > maxTables {
		return fmt.Errorf("more than %d tables in the message", maxTables)
	}
	n := v.limit()
	if pos%4 != 0 {
		return fmt.Errorf("table at %d is not 4-byte aligned", pos)
	}
	if v.unread(pos, 4) {
		return nil
	}
	if pos > n-4 {
		return fmt.Errorf("table at %d runs past the end of the %d-byte buffer", pos, n)
	}
	vt64 := int64(pos) - int64(int32(v.u32(pos)))
	if vt64 < 0 || vt64 > int64(n-4) {
		return fmt.Errorf("vtable of the table at %d is at %d, outside the %d-byte buffer", pos, vt64, n)
	}
	vt := int(vt64)
	if vt%2 != 0 {
		return fmt.Errorf("vtable at %d is not 2-byte aligned", vt)
	}
	if v.unread(vt, 4) {
		return nil
	}
	vsize, tsize := v.u16(vt), v.u16(vt+2)
	if vsize < 4 || vsize%2 != 0 {
		return fmt.Errorf("vtable at %d has invalid size %d", vt, vsize)
	}
	if vsize > n-vt {
		return fmt.Errorf("vtable at %d of %d bytes runs past the end of the %d-byte buffer", vt, vsize, n)
	}
	if tsize < 4 || tsize > n-pos {
		return fmt.Errorf("table at %d of %d bytes runs past the end of the %d-byte buffer", pos, tsize, n)
	}
	if v.unread(vt, vsize) || v.unread(pos, tsize) {
		return nil
	}
	for i := range t.fields {
		vo := 4 + 2*i
		if vo+2 > vsize {
			break // absent: written by an older schema
		}
		fo := v.u16(vt + vo)
		if fo == 0 {
			continue // absent: default value
		}
		f := &t.fields[i]
		if err := v.field(pos, tsize, fo, f); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

// field verifies the field stored fo bytes into the table at pos.
func (v *verifier) field(pos, tsize, fo int, f *fieldSpec) error {
	inline := 4 // offsets
	if f.kind == kScalar {
		inline = f.size
	}
	if fo < 4 || fo > tsize-inline {
		return fmt.Errorf("field at table offset %d (%d bytes) lies outside the %d-byte table", fo, inline, tsize)
	}
	fp := pos + fo
	if fp%inline != 0 {
		return fmt.Errorf("field at %d is not %d-byte aligned", fp, inline)
	}
	if f.kind == kScalar {
		return nil
	}
	if f.detached && !v.inTail {
		v.inTail = true
		defer func() { v.inTail = false }()
	}
	tgt, err := v.offset(fp)
	if err != nil {
		return err
	}
	switch f.kind {
	case kString:
		return v.string(tgt)
	case kVector:
		_, err := v.vector(tgt, f.size)
		return err
	case kStringVector:
		cnt, err := v.vector(tgt, 4)
		if err != nil {
			return err
		}
		for j := 0; j < cnt && !v.unread(tgt+4+4*j, 4); j++ {
			s, err := v.offset(tgt + 4 + 4*j)
			if err == nil {
				err = v.string(s)
			}
			if err != nil {
				return fmt.Errorf("[%d]: %w", j, err)
			}
		}
		return nil
	case kTable:
		return v.table(tgt, f.sub)
	case kTableVector:
		cnt, err := v.vector(tgt, 4)
		if err != nil {
			return err
		}
		for j := 0; j < cnt && !v.unread(tgt+4+4*j, 4); j++ {
			s, err := v.offset(tgt + 4 + 4*j)
			if err == nil {
				err = v.table(s, f.sub)
			}
			if err != nil {
				return fmt.Errorf("[%d]: %w", j, err)
			}
		}
		return nil
	}
	panic("BUG: unknown field kind")
}

// vector checks the vector of elem-byte elements at pos and returns its
// length (0 for an unread one). The length word is 4-byte aligned, so
// elements of up to 4 bytes are aligned relative to the buffer start.
func (v *verifier) vector(pos, elem int) (int, error) {
	n := v.limit()
	if pos%4 != 0 {
		return 0, fmt.Errorf("vector at %d is not 4-byte aligned", pos)
	}
	if v.unread(pos, 4) {
		return 0, nil
	}
	if pos > n-4 {
		return 0, fmt.Errorf("vector at %d runs past the end of the %d-byte buffer", pos, n)
	}
	if elem > 4 && (pos+4)%elem != 0 {
		return 0, fmt.Errorf("vector data at %d is not %d-byte aligned", pos+4, elem)
	}
	cnt := v.u32(pos)
	if uint64(cnt) > uint64((n-pos-4)/elem) {
		return 0, fmt.Errorf("vector of %d × %d bytes at %d runs past the end of the %d-byte buffer", cnt, elem, pos, n)
	}
	return int(cnt), nil
}

// string checks the string at pos: length, bytes and the terminating NUL
// inside the buffer.
func (v *verifier) string(pos int) error {
	n := v.limit()
	if pos%4 != 0 {
		return fmt.Errorf("string at %d is not 4-byte aligned", pos)
	}
	if v.unread(pos, 4) {
		return nil
	}
	if pos > n-4 {
		return fmt.Errorf("string at %d runs past the end of the %d-byte buffer", pos, n)
	}
	l := v.u32(pos)
	if uint64(l) >= uint64(n-pos-4) {
		return fmt.Errorf("string of %d bytes at %d and its NUL run past the end of the %d-byte buffer", l, pos, n)
	}
	if v.unread(pos+4+int(l), 1) {
		return nil
	}
	if v.buf[pos+4+int(l)] != 0 {
		return fmt.Errorf("string of %d bytes at %d is not NUL-terminated", l, pos)
	}
	return nil
}
