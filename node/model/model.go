// Package model holds a federated model as one flat float32 vector with a
// layout of named parameters. Every other package (the wire codecs, the
// aggregation engines, the model store, the device trainer) works on this
// flat form, so a whole model is folded, reduced and hashed in one pass.
package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"unsafe"
)

// HostLittleEndian is whether float32 in memory has the little-endian
// byte order of the wire and of safetensors, so that floats can be sent,
// written and mapped as raw memory.
var HostLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// Spec names one parameter and its shape, in the model's canonical order.
type Spec struct {
	Name  string
	Shape []int
}

// Param is a Spec placed in the flat vector.
type Param struct {
	Name   string
	Shape  []int
	Offset int
	Len    int
}

// Layout is the ordered list of parameters of a model. It is immutable after
// NewLayout and shared by every Model of the same architecture.
type Layout struct {
	Params []Param
	Size   int
	byName map[string]int
}

// NewLayout places specs one after another. Names must be unique and shapes
// non-empty with positive dimensions.
func NewLayout(specs []Spec) (*Layout, error) {
	l := &Layout{byName: make(map[string]int, len(specs))}
	for _, s := range specs {
		if s.Name == "" {
			return nil, fmt.Errorf("cannot build layout: empty parameter name")
		}
		if _, dup := l.byName[s.Name]; dup {
			return nil, fmt.Errorf("cannot build layout: duplicate parameter %q", s.Name)
		}
		n := 1
		for _, d := range s.Shape {
			if d <= 0 {
				return nil, fmt.Errorf("cannot build layout: parameter %q has shape %v", s.Name, s.Shape)
			}
			n *= d
		}
		if len(s.Shape) == 0 {
			return nil, fmt.Errorf("cannot build layout: parameter %q has no shape", s.Name)
		}
		l.byName[s.Name] = len(l.Params)
		l.Params = append(l.Params, Param{Name: s.Name, Shape: append([]int(nil), s.Shape...), Offset: l.Size, Len: n})
		l.Size += n
	}
	return l, nil
}

// Lookup finds a parameter by name.
func (l *Layout) Lookup(name string) (Param, bool) {
	i, ok := l.byName[name]
	if !ok {
		return Param{}, false
	}
	return l.Params[i], true
}

// Specs returns the layout's parameters as specs.
func (l *Layout) Specs() []Spec {
	out := make([]Spec, len(l.Params))
	for i, p := range l.Params {
		out[i] = Spec{Name: p.Name, Shape: p.Shape}
	}
	return out
}

// Equal reports whether two layouts have the same names, shapes and order.
func (l *Layout) Equal(o *Layout) bool {
	if l == o {
		return true
	}
	if len(l.Params) != len(o.Params) {
		return false
	}
	for i, p := range l.Params {
		q := o.Params[i]
		if p.Name != q.Name || len(p.Shape) != len(q.Shape) {
			return false
		}
		for j := range p.Shape {
			if p.Shape[j] != q.Shape[j] {
				return false
			}
		}
	}
	return true
}

// Model is a layout and its weights.
type Model struct {
	Layout *Layout
	Data   []float32
}

// New returns a zeroed model of the layout.
func New(l *Layout) *Model {
	return &Model{Layout: l, Data: make([]float32, l.Size)}
}

// Tensor returns the slice of Data holding the named parameter, or nil.
func (m *Model) Tensor(name string) []float32 {
	p, ok := m.Layout.Lookup(name)
	if !ok {
		return nil
	}
	return m.Data[p.Offset : p.Offset+p.Len]
}

// Clone returns a deep copy of the weights sharing the layout.
func (m *Model) Clone() *Model {
	return &Model{Layout: m.Layout, Data: append([]float32(nil), m.Data...)}
}

// FloatBytes views f's memory as its bytes, in host byte order (which is
// little-endian, the wire's and the checkpoints' order, on every host that
// sends them as they are).
func FloatBytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

// SHA256 is the hex digest of the weights as little-endian float32 bytes, the
// checksum servers compare to prove they hold one model.
func (m *Model) SHA256() string {
	h := sha256.New()
	if HostLittleEndian && len(m.Data) > 0 {
		// The in-memory bytes are the little-endian bytes: hash them in place.
		h.Write(FloatBytes(m.Data))
		return hex.EncodeToString(h.Sum(nil))
	}
	var buf [4096]byte
	for i := 0; i < len(m.Data); {
		n := 0
		for ; n+4 <= len(buf) && i < len(m.Data); i++ {
			binary.LittleEndian.PutUint32(buf[n:], math.Float32bits(m.Data[i]))
			n += 4
		}
		h.Write(buf[:n])
	}
	return hex.EncodeToString(h.Sum(nil))
}
