package flmsg

import (
	"fmt"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
)

var (
	sinkInt   int
	sinkBytes []byte
)

// benchModels: LeNet-5 (61,684 floats) and a 10M-float model.
func benchModels() []struct {
	name string
	m    *model.Model
} {
	big := randomModel(10, []model.Spec{{Name: "embedding", Shape: []int{10_000, 1000}}})
	return []struct {
		name string
		m    *model.Model
	}{{"lenet", model.InitLeNet5(1)}, {"10M", big}}
}

// Baseline: the memmove a consumer of the decoded floats or a response writer
// cannot avoid.
func BenchmarkMemmove(b *testing.B) {
	for _, bm := range benchModels() {
		b.Run(bm.name, func(b *testing.B) {
			src := make([]byte, 4*bm.m.Layout.Size)
			dst := make([]byte, len(src))
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			for b.Loop() {
				copy(dst, src)
			}
			sinkBytes = dst
		})
	}
}

// Verify + decode + view every tensor: independent of the model size apart
// from the number of tensors.
func BenchmarkDecodeUpdateModel(b *testing.B) {
	for _, bm := range benchModels() {
		b.Run(bm.name, func(b *testing.B) {
			fb := flatbuffers.NewBuilder(0)
			buf := copyAt(BuildRequestUpdateModel(fb, &UpdateModelArgs{FLName: "lenet", FLID: "device-1", Iteration: 1, Timestamp: "1700000000000", Model: bm.m}), 0)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				r, err := DecodeRequestUpdateModel(buf)
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for i := 0; i < r.FeatureMaps.Len(); i++ {
					v, _ := r.FeatureMaps.At(i).Floats()
					n += len(v)
				}
				sinkInt = n
			}
		})
	}
}

// The getModel response: from the model (one memmove per tensor plus its
// table), from a prebuilt ModelBlock (one memmove of the whole block), and
// for contrast the per-element Prepend the generated code would use.
func BenchmarkBuildGetModel(b *testing.B) {
	for _, bm := range benchModels() {
		var block ModelBlock
		block.Set(bm.m)
		fb := flatbuffers.NewBuilder(0)
		for _, c := range []struct {
			name string
			rep  GetModelReply
		}{
			{"model", GetModelReply{Retcode: Succeed, Reason: "Get model for iteration 7", Iteration: 7, Model: bm.m, Timestamp: "1700000000000"}},
			{"block", GetModelReply{Retcode: Succeed, Reason: "Get model for iteration 7", Iteration: 7, Block: &block, Timestamp: "1700000000000"}},
		} {
			b.Run(fmt.Sprintf("%s/%s", bm.name, c.name), func(b *testing.B) {
				out := BuildResponseGetModel(fb, &c.rep)
				b.SetBytes(int64(len(out)))
				b.ReportAllocs()
				for b.Loop() {
					sinkBytes = BuildResponseGetModel(fb, &c.rep)
				}
			})
		}
		b.Run(bm.name+"/prepend", func(b *testing.B) {
			ts := modelTensors(bm.m)
			b.SetBytes(int64(4 * bm.m.Layout.Size))
			b.ReportAllocs()
			for b.Loop() {
				fb.Reset()
				fb.Finish(r17FeatureMaps(fb, ts))
				sinkBytes = fb.FinishedBytes()
			}
		})
	}
}
