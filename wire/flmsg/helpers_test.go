package flmsg

import (
	"math/rand/v2"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/fbs"
	"github.com/fedcluster/fedcluster/wire/fbs/r15"
)

// Independent builders: the flatc-generated writers with per-element
// PrependFloat32, as an r1.5 or ≈r1.7 client would build its requests.

func r15FeatureMaps(b *flatbuffers.Builder, ts []Tensor) flatbuffers.UOffsetT {
	offs := make([]flatbuffers.UOffsetT, len(ts))
	for i, t := range ts {
		name := b.CreateString(t.Name)
		r15.FeatureMapStartDataVector(b, len(t.Data))
		for j := len(t.Data) - 1; j >= 0; j-- {
			b.PrependFloat32(t.Data[j])
		}
		data := b.EndVector(len(t.Data))
		r15.FeatureMapStart(b)
		r15.FeatureMapAddWeightFullname(b, name)
		r15.FeatureMapAddData(b, data)
		offs[i] = r15.FeatureMapEnd(b)
	}
	r15.RequestUpdateModelStartFeatureMapVector(b, len(offs))
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

func r17FeatureMaps(b *flatbuffers.Builder, ts []Tensor) flatbuffers.UOffsetT {
	offs := make([]flatbuffers.UOffsetT, len(ts))
	for i, t := range ts {
		name := b.CreateString(t.Name)
		fbs.FeatureMapStartDataVector(b, len(t.Data))
		for j := len(t.Data) - 1; j >= 0; j-- {
			b.PrependFloat32(t.Data[j])
		}
		data := b.EndVector(len(t.Data))
		fbs.FeatureMapStart(b)
		fbs.FeatureMapAddWeightFullname(b, name)
		fbs.FeatureMapAddData(b, data)
		offs[i] = fbs.FeatureMapEnd(b)
	}
	fbs.RequestUpdateModelStartFeatureMapVector(b, len(offs))
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

func r15RequestUpdateModel(flName, flID string, iter int32, ts []Tensor, stamp string) []byte {
	b := flatbuffers.NewBuilder(0)
	fm := r15FeatureMaps(b, ts)
	n, id, st := b.CreateString(flName), b.CreateString(flID), b.CreateString(stamp)
	r15.RequestUpdateModelStart(b)
	r15.RequestUpdateModelAddFlName(b, n)
	r15.RequestUpdateModelAddFlId(b, id)
	r15.RequestUpdateModelAddIteration(b, iter)
	r15.RequestUpdateModelAddFeatureMap(b, fm)
	r15.RequestUpdateModelAddTimestamp(b, st)
	b.Finish(r15.RequestUpdateModelEnd(b))
	return b.FinishedBytes()
}

func r15RequestFLJob(flName, flID string, iter, dataSize int32, stamp string) []byte {
	b := flatbuffers.NewBuilder(0)
	n, id, st := b.CreateString(flName), b.CreateString(flID), b.CreateString(stamp)
	r15.RequestFLJobStart(b)
	r15.RequestFLJobAddFlName(b, n)
	r15.RequestFLJobAddFlId(b, id)
	r15.RequestFLJobAddIteration(b, iter)
	r15.RequestFLJobAddDataSize(b, dataSize)
	r15.RequestFLJobAddTimestamp(b, st)
	b.Finish(r15.RequestFLJobEnd(b))
	return b.FinishedBytes()
}

func r15RequestGetModel(flName string, iter int32, stamp string) []byte {
	b := flatbuffers.NewBuilder(0)
	n, st := b.CreateString(flName), b.CreateString(stamp)
	r15.RequestGetModelStart(b)
	r15.RequestGetModelAddFlName(b, n)
	r15.RequestGetModelAddIteration(b, iter)
	r15.RequestGetModelAddTimestamp(b, st)
	b.Finish(r15.RequestGetModelEnd(b))
	return b.FinishedBytes()
}

// modelTensors returns m's parameters as tensors (views of m.Data).
func modelTensors(m *model.Model) []Tensor {
	ts := make([]Tensor, len(m.Layout.Params))
	for i, p := range m.Layout.Params {
		ts[i] = Tensor{Name: p.Name, Data: m.Data[p.Offset : p.Offset+p.Len]}
	}
	return ts
}

func randomModel(seed uint64, specs []model.Spec) *model.Model {
	l, err := model.NewLayout(specs)
	if err != nil {
		panic(err)
	}
	m := model.New(l)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range m.Data {
		m.Data[i] = r.Float32()*2 - 1
	}
	return m
}

func smallModel() *model.Model {
	return randomModel(1, []model.Spec{{Name: "w", Shape: []int{3, 2}}, {Name: "b", Shape: []int{3}}, {Name: "one", Shape: []int{1}}})
}

// checkFeatureMaps asserts that v holds exactly ts, in order, bit for bit.
func checkFeatureMaps(t *testing.T, v FeatureMaps, ts []Tensor) {
	t.Helper()
	if v.Len() != len(ts) {
		t.Fatalf("feature maps: got %d, want %d", v.Len(), len(ts))
	}
	for i, want := range ts {
		fm := v.At(i)
		if string(fm.Name) != want.Name {
			t.Fatalf("feature map %d: name %q, want %q", i, fm.Name, want.Name)
		}
		got := fm.Data(nil)
		if len(got) != len(want.Data) {
			t.Fatalf("feature map %q: %d values, want %d", want.Name, len(got), len(want.Data))
		}
		for j := range got {
			if got[j] != want.Data[j] && !(got[j] != got[j] && want.Data[j] != want.Data[j]) {
				t.Fatalf("feature map %q[%d] = %v, want %v", want.Name, j, got[j], want.Data[j])
			}
		}
	}
}

// copyAt returns a copy of buf starting at an address ≡ shift (mod 8).
func copyAt(buf []byte, shift int) []byte {
	backing := make([]byte, len(buf)+16)
	return append(backing[shift:shift], buf...)
}
