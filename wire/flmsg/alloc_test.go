package flmsg

import (
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
)

// sizedModel is a LeNet-shaped model scaled k times in its first tensor.
func sizedModel(k int) *model.Model {
	specs := model.LeNet5Specs()
	specs[2].Shape = []int{120 * k, 400} // fc1.weight
	return randomModel(uint64(k), specs)
}

// Decoding an updateModel request and viewing all its tensors allocates
// nothing, whatever the model size (LeNet-5: 61,684 floats in 8 tensors).
func TestDecodeUpdateModelAllocs(t *testing.T) {
	f := func(m *model.Model) {
		t.Helper()
		b := flatbuffers.NewBuilder(0)
		buf := copyAt(BuildRequestUpdateModel(b, &UpdateModelArgs{FLName: "lenet", FLID: "d", Iteration: 1, Timestamp: "1", Model: m}), 0)
		var total int
		allocs := testing.AllocsPerRun(50, func() {
			r, err := DecodeRequestUpdateModel(buf)
			if err != nil {
				t.Fatal(err)
			}
			total = 0
			for i := 0; i < r.FeatureMaps.Len(); i++ {
				v, ok := r.FeatureMaps.At(i).Floats()
				if !ok {
					t.Fatal("no zero-copy view")
				}
				total += len(v)
			}
		})
		if total != m.Layout.Size {
			t.Fatalf("viewed %d floats, want %d", total, m.Layout.Size)
		}
		if allocs != 0 {
			t.Fatalf("%v allocations per decode of %d floats, want 0", allocs, m.Layout.Size)
		}
	}
	f(model.InitLeNet5(1))
	if model.LeNet5Layout().Size != 61684 || len(model.LeNet5Layout().Params) != 8 {
		t.Fatalf("LeNet-5 layout changed")
	}
	f(sizedModel(10))
}

// The server's response builders allocate nothing once the caller's builder
// has grown to the response size.
func TestBuildResponsesAllocs(t *testing.T) {
	m := model.InitLeNet5(1)
	var block ModelBlock
	block.Set(m)
	b := flatbuffers.NewBuilder(0)
	plan := &Plan{ServerMode: "FEDERATED_LEARNING", FLName: "lenet", Iterations: 5, Epochs: 1, MiniBatch: 32, LR: 0.01}
	f := func(name string, build func()) {
		t.Helper()
		build() // grow the builder
		if a := testing.AllocsPerRun(20, build); a != 0 {
			t.Fatalf("%s: %v allocations per response, want 0", name, a)
		}
	}
	f("getModel/model", func() {
		BuildResponseGetModel(b, &GetModelReply{Retcode: Succeed, Reason: "r", Iteration: 1, Model: m, Timestamp: "1"})
	})
	f("getModel/block", func() {
		BuildResponseGetModel(b, &GetModelReply{Retcode: Succeed, Reason: "r", Iteration: 1, Block: &block, Timestamp: "1"})
	})
	f("startFLJob/block", func() {
		BuildResponseFLJob(b, &FLJobReply{Retcode: Succeed, Reason: "success", IsSelected: true, Plan: plan, Block: &block, NextReqTime: "1"})
	})
	f("updateModel", func() {
		BuildResponseUpdateModel(b, &UpdateModelReply{Retcode: Succeed, Reason: "success not ready", NextReqTime: "1"})
	})
	f("request/updateModel", func() { BuildRequestUpdateModel(b, &UpdateModelArgs{FLName: "l", FLID: "d", Model: m}) })
}
