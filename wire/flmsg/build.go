package flmsg

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"slices"
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
	raw := model.FloatBytes(data)
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
// When dataOffs is not nil, dataOffs[i] receives the offset of tensor i's
// float vector.
func featureMapVector(b *flatbuffers.Builder, n int, scale float32, at func(i int) (string, []float32), dataOffs []flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	var stack [64]flatbuffers.UOffsetT
	offs := stack[:0]
	for i := 0; i < n; i++ {
		name, data := at(i)
		nameOff := b.CreateString(name)
		dataOff := floatVector(b, data, scale)
		if dataOffs != nil {
			dataOffs[i] = dataOff
		}
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
	}, nil)
}

func tensorFeatureMaps(b *flatbuffers.Builder, ts []Tensor, scale float32) flatbuffers.UOffsetT {
	return featureMapVector(b, len(ts), scale, func(i int) (string, []float32) {
		return ts[i].Name, ts[i].Data
	}, nil)
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
// A block is one run of bytes (Set), or a [BlockFrame]'s bytes around a
// model's own float data (BlockFrame.Block), which copies nothing.
//
// Set is not safe to call concurrently with responses being built from the
// block; between calls to Set any number of goroutines may use it.
type ModelBlock struct {
	b      *flatbuffers.Builder
	tail   []byte               // b's written bytes: the vector and its children (Set)
	pieces [][]byte             // the block's bytes in order, never modified
	off    flatbuffers.UOffsetT // the vector's offset from the end of the block
	size   int

	// A file block's floats are also in file, piece k at fileOffs[k] (-1
	// for the frame's own bytes); model keeps a mapped model, and with it
	// the file, alive while the block is used.
	file     *os.File
	fileOffs []int64
	model    *model.Model
}

// Set serializes m into the block, reusing the block's memory.
func (mb *ModelBlock) Set(m *model.Model) {
	if mb.b == nil {
		mb.b = flatbuffers.NewBuilder(4*m.Layout.Size + 64*len(m.Layout.Params) + 64)
	}
	mb.b.Reset()
	mb.off = modelFeatureMaps(mb.b, m, 1)
	mb.tail = mb.b.Bytes[mb.b.Head():]
	mb.pieces = [][]byte{mb.tail}
	mb.size = len(mb.tail)
}

// Size is the block's size in bytes (0 before Set or for a nil block).
func (mb *ModelBlock) Size() int {
	if mb == nil {
		return 0
	}
	return mb.size
}

// Pieces are the block's bytes in order. They must not be modified.
func (mb *ModelBlock) Pieces() [][]byte { return mb.pieces }

// BlockFrame is what every block of one layout shares: the serialized
// [FeatureMap] vector's names, tables, offsets and length words, which
// depend only on the parameters' names and sizes. A block made from a
// frame is the frame's bytes around the model's float data, so a large
// model is served from its own memory instead of a serialized copy, and a
// new model costs no serialization at all.
type BlockFrame struct {
	layout *model.Layout
	segs   [][]byte // segs[k] comes before region k's floats, the last after all
	params []int    // region k holds the data of parameter params[k]
	off    flatbuffers.UOffsetT
	size   int
}

// NewBlockFrame serializes a zero model of l once and keeps the bytes
// between its float vectors.
func NewBlockFrame(l *model.Layout) *BlockFrame {
	zero := model.New(l)
	b := flatbuffers.NewBuilder(4*l.Size + 64*len(l.Params) + 64)
	dataOffs := make([]flatbuffers.UOffsetT, len(l.Params))
	off := featureMapVector(b, len(l.Params), 1, func(i int) (string, []float32) {
		p := &l.Params[i]
		return p.Name, zero.Data[p.Offset : p.Offset+p.Len]
	}, dataOffs)
	tail := b.Bytes[b.Head():]
	f := &BlockFrame{layout: l, off: off, size: len(tail), params: make([]int, len(l.Params))}
	// A vector's offset points at its length word; its floats follow. The
	// builder writes the first parameter last in the buffer.
	start := func(i int) int { return len(tail) - int(dataOffs[i]) + 4 }
	for k := range f.params {
		f.params[k] = k
	}
	slices.SortFunc(f.params, func(a, b int) int { return start(a) - start(b) })
	at := 0
	for _, i := range f.params {
		f.segs = append(f.segs, append([]byte(nil), tail[at:start(i)]...))
		at = start(i) + 4*l.Params[i].Len
	}
	f.segs = append(f.segs, append([]byte(nil), tail[at:]...))
	return f
}

// Block returns m's block: the frame's bytes with m's float data between
// them, m's memory not copied. m must not change while the block is used.
func (f *BlockFrame) Block(m *model.Model) *ModelBlock {
	if !m.Layout.Equal(f.layout) {
		panic("BUG: BlockFrame used for a model of another layout")
	}
	if !hostLittleEndian {
		mb := new(ModelBlock)
		mb.Set(m)
		return mb
	}
	mb := &ModelBlock{off: f.off, size: f.size, pieces: make([][]byte, 0, 2*len(f.params)+1)}
	for k, i := range f.params {
		p := &f.layout.Params[i]
		mb.pieces = append(mb.pieces, f.segs[k], model.FloatBytes(m.Data[p.Offset:p.Offset+p.Len]))
	}
	mb.pieces = append(mb.pieces, f.segs[len(f.params)])
	return mb
}

// FileBlock is Block for a model whose floats also lie in f, parameter p's
// at dataOffset + 4*p.Offset (modelstore's mapped checkpoints): a Joined
// answer of it sends them from the file, without reading m's memory.
func (f *BlockFrame) FileBlock(m *model.Model, file *os.File, dataOffset int64) *ModelBlock {
	mb := f.Block(m)
	if len(mb.pieces) != 2*len(f.params)+1 {
		return mb // a serialized block (big-endian host)
	}
	mb.file, mb.model = file, m
	mb.fileOffs = make([]int64, len(mb.pieces))
	for k := range mb.fileOffs {
		mb.fileOffs[k] = -1
	}
	for k, i := range f.params {
		mb.fileOffs[2*k+1] = dataOffset + 4*int64(f.layout.Params[i].Offset)
	}
	return mb
}

// Joined is head followed by the block's bytes, to send as one message.
func (mb *ModelBlock) Joined(head []byte) *Joined {
	return &Joined{Head: head, Tail: mb.pieces, file: mb.file, fileOffs: mb.fileOffs, keep: mb.model}
}

// splice copies the block to the end of b, which must be empty (just
// Reset), and returns the offset of its [FeatureMap] vector in b.
func (mb *ModelBlock) splice(b *flatbuffers.Builder) flatbuffers.UOffsetT {
	if b.Offset() != 0 {
		panic("BUG: ModelBlock spliced into a non-empty builder")
	}
	if mb.pieces == nil {
		panic("BUG: ModelBlock used before Set")
	}
	// The size is a multiple of 4 (the block ends with a vector's length
	// word), so the byte vector puts the block at the very end with no
	// padding; its own 4-byte length word in front of it is never referenced.
	tail := mb.tail
	if len(mb.pieces) > 1 {
		tail = bytes.Join(mb.pieces, nil)
	}
	b.CreateByteVector(tail)
	if int(b.Offset()) != mb.size+4 {
		panic("BUG: ModelBlock was not placed at the end of the builder")
	}
	return mb.off
}
