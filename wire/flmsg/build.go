package flmsg

import (
	"encoding/binary"
	"math"
	"unsafe"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/fbs"
)

// Tensor is a named float32 tensor to send as a FeatureMap.
type Tensor struct {
	Name string
	Data []float32
}

// floatVector writes data as a [float] vector with one bulk copy: the
// builder's byte-vector path places the bytes with the alignment a float
// vector needs (4), and the length word is then patched from a byte count
// to an element count. Unless scale is 1, every value is multiplied by it
// in the builder's copy, while it is still in cache (devices upload
// weight × data_size without scaling a copy of their model first).
func floatVector(b *flatbuffers.Builder, data []float32, scale float32) flatbuffers.UOffsetT {
	if !hostLittleEndian {
		b.StartVector(4, len(data), 4)
		for i := len(data) - 1; i >= 0; i-- {
			v := data[i]
			if scale != 1 {
				v *= scale
			}
			b.PrependFloat32(v)
		}
		return b.EndVector(len(data))
	}
	var raw []byte
	if len(data) > 0 {
		raw = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(data))), 4*len(data))
	}
	off := b.CreateByteVector(raw)
	at := len(b.Bytes) - int(off)
	binary.LittleEndian.PutUint32(b.Bytes[at:], uint32(len(data)))
	if scale != 1 {
		scaleFloats(b.Bytes[at+4:at+4+len(raw)], scale)
	}
	return off
}

// scaleFloats multiplies the little-endian float32s in raw by s, through a
// []float32 view when raw is aligned for one.
func scaleFloats(raw []byte, s float32) {
	if len(raw) == 0 {
		return
	}
	if uintptr(unsafe.Pointer(unsafe.SliceData(raw)))%4 == 0 {
		f := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(raw))), len(raw)/4)
		for i := range f {
			f[i] *= s
		}
		return
	}
	for i := 0; i+4 <= len(raw); i += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(raw[i:]))
		binary.LittleEndian.PutUint32(raw[i:], math.Float32bits(v*s))
	}
}

// featureMapVector writes n FeatureMaps, tensor i given by at(i), and the
// vector of them. It allocates only for models of more than 64 tensors.
func featureMapVector(b *flatbuffers.Builder, n int, scale float32, at func(i int) (string, []float32)) flatbuffers.UOffsetT {
	var stack [64]flatbuffers.UOffsetT
	offs := stack[:0]
	for i := 0; i < n; i++ {
		name, data := at(i)
		nameOff := b.CreateString(name)
		dataOff := floatVector(b, data, scale)
		fbs.FeatureMapStart(b)
		fbs.FeatureMapAddWeightFullname(b, nameOff)
		fbs.FeatureMapAddData(b, dataOff)
		offs = append(offs, fbs.FeatureMapEnd(b))
	}
	b.StartVector(4, n, 4)
	for i := n - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(n)
}

func modelFeatureMaps(b *flatbuffers.Builder, m *model.Model, scale float32) flatbuffers.UOffsetT {
	ps := m.Layout.Params
	return featureMapVector(b, len(ps), scale, func(i int) (string, []float32) {
		p := &ps[i]
		return p.Name, m.Data[p.Offset : p.Offset+p.Len]
	})
}

func tensorFeatureMaps(b *flatbuffers.Builder, ts []Tensor, scale float32) flatbuffers.UOffsetT {
	return featureMapVector(b, len(ts), scale, func(i int) (string, []float32) {
		return ts[i].Name, ts[i].Data
	})
}

// ModelBlock is a model serialized once as a [FeatureMap] vector, ready to
// be spliced into any number of responses with one memmove each, instead of
// rebuilding its FeatureMap tables per response.
//
// FlatBuffers offsets are relative and a builder aligns from the end of its
// buffer, so the bytes a builder wrote for the vector (with its strings and
// float data) are position-independent as long as they end the message: a
// response builder that starts by copying the block to its end can refer
// to the vector at the block's own offset.
//
// Set is not safe to call concurrently with responses being built from the
// block; between calls to Set any number of goroutines may use it.
type ModelBlock struct {
	b      *flatbuffers.Builder
	tail   []byte               // b's written bytes: the vector and its children
	off    flatbuffers.UOffsetT // the vector's offset from the end of tail
	floats int
}

// Set serializes m into the block, reusing the block's memory.
func (mb *ModelBlock) Set(m *model.Model) {
	if mb.b == nil {
		mb.b = flatbuffers.NewBuilder(4*m.Layout.Size + 64*len(m.Layout.Params) + 64)
	}
	mb.b.Reset()
	mb.off = modelFeatureMaps(mb.b, m, 1)
	mb.tail = mb.b.Bytes[mb.b.Head():]
	mb.floats = m.Layout.Size
}

// Size is the block's size in bytes (0 before Set).
func (mb *ModelBlock) Size() int { return len(mb.tail) }

// splice copies the block to the end of b, which must be empty (just
// Reset), and returns the offset of its [FeatureMap] vector in b.
func (mb *ModelBlock) splice(b *flatbuffers.Builder) flatbuffers.UOffsetT {
	if b.Offset() != 0 {
		panic("BUG: ModelBlock spliced into a non-empty builder")
	}
	if mb.tail == nil {
		panic("BUG: ModelBlock used before Set")
	}
	// len(tail) is a multiple of 4 (it ends with a vector's length word), so
	// the byte vector puts tail at the very end with no padding; its own
	// 4-byte length word in front of it is never referenced.
	b.CreateByteVector(mb.tail)
	if int(b.Offset()) != len(mb.tail)+4 {
		panic("BUG: ModelBlock was not placed at the end of the builder")
	}
	return mb.off
}
