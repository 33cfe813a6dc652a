package flmsg

import (
	"errors"
	"reflect"
	"testing"
	"unsafe"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
)

// Seeds: valid messages from our builders and the generated r1.5 builders,
// plus plain-text refusals for the device decoders. Run one target with
// e.g. `go test -run '^$' -fuzz FuzzDecodeRequestUpdateModel -fuzztime 20s ./wire/flmsg`.

// checkDecodeErr fails on an error that is neither a schema error nor (for
// device decoders) a refusal.
func checkDecodeErr(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, ErrInvalidSchema) && !errors.Is(err, ErrRefused) {
		t.Fatalf("unexpected error type %T: %v", err, err)
	}
	var se *SchemaError
	if errors.As(err, &se) && len(se.Err.Error()) >= 4 && se.Err.Error()[:4] == "BUG:" {
		t.Fatalf("reader panicked on a verified buffer: %v", err)
	}
}

// checkFeatureMapBounds reads every tensor and checks that the views lie
// inside buf (they may overlap: FlatBuffers lets tables share strings and
// vectors).
func checkFeatureMapBounds(t *testing.T, buf []byte, v FeatureMaps) {
	t.Helper()
	inside := func(s []byte) bool {
		if len(s) == 0 {
			return true
		}
		lo, hi := uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(unsafe.Pointer(unsafe.SliceData(buf)))+uintptr(len(buf))
		p := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
		return p >= lo && p+uintptr(len(s)) <= hi
	}
	for i := 0; i < v.Len(); i++ {
		fm := v.At(i)
		if !inside(fm.Name) || !inside(fm.Raw) {
			t.Fatalf("feature map %d: view outside the buffer", i)
		}
		touch(FeatureMaps{buf: v.buf, pos: v.pos + 4*i, n: 1})
	}
}

func FuzzDecodeRequestFLJob(f *testing.F) {
	b := flatbuffers.NewBuilder(0)
	f.Add(r15RequestFLJob("lenet", "f1", 1, 32, "2020/11/16/19/18"))
	f.Add(append([]byte(nil), BuildRequestFLJob(b, &FLJobArgs{FLName: "lenet", FLID: "d", Iteration: 2, DataSize: 9, Timestamp: "1700000000000"})...))
	f.Add([]byte(BodySafemode))
	f.Fuzz(func(t *testing.T, buf []byte) {
		r, err := DecodeRequestFLJob(buf)
		checkDecodeErr(t, err)
		if err == nil && len(r.FLName)+len(r.FLID)+len(r.Timestamp)+len(r.SignData) > len(buf) {
			t.Fatalf("views larger than the buffer")
		}
	})
}

func FuzzDecodeRequestUpdateModel(f *testing.F) {
	b := flatbuffers.NewBuilder(0)
	f.Add(validUpdate())
	f.Add(r15RequestUpdateModel("lenet", "d", 1, []Tensor{{Name: "a", Data: []float32{1, 2}}, {Name: "b"}}, "1"))
	f.Add(append([]byte(nil), BuildRequestUpdateModel(b, &UpdateModelArgs{FLName: "n", FLID: "i", Iteration: 3, UploadLoss: 0.5, Model: smallModel()})...))
	f.Fuzz(func(t *testing.T, buf []byte) {
		r, err := DecodeRequestUpdateModel(buf)
		checkDecodeErr(t, err)
		if err == nil {
			checkFeatureMapBounds(t, buf, r.FeatureMaps)
			readAllGenerated(t, buf)
		}
	})
}

func FuzzDecodeRequestGetModel(f *testing.F) {
	b := flatbuffers.NewBuilder(0)
	f.Add(r15RequestGetModel("lenet", 1, "2020/11/16/19/18"))
	f.Add(append([]byte(nil), BuildRequestGetModel(b, &GetModelArgs{FLName: "lenet", Iteration: 4, Timestamp: "1"})...))
	f.Fuzz(func(t *testing.T, buf []byte) {
		_, err := DecodeRequestGetModel(buf)
		checkDecodeErr(t, err)
	})
}

func FuzzDecodeResponseFLJob(f *testing.F) {
	b := flatbuffers.NewBuilder(0)
	m := smallModel()
	f.Add(append([]byte(nil), BuildResponseFLJob(b, &FLJobReply{Retcode: Succeed, Reason: "success", Iteration: 1, IsSelected: true,
		NextReqTime: "1700000000000", Plan: &Plan{ServerMode: "FEDERATED_LEARNING", FLName: "lenet", Iterations: 5, Epochs: 1, MiniBatch: 32, LR: 0.01}, Model: m})...))
	f.Add(append([]byte(nil), BuildResponseFLJob(b, &FLJobReply{Retcode: OutOfTime, Reason: "late", NextReqTime: "1"})...))
	f.Add([]byte(BodySafemode))
	f.Add([]byte(BodyJobDisabled))
	f.Fuzz(func(t *testing.T, buf []byte) {
		r, err := DecodeResponseFLJob(buf)
		checkDecodeErr(t, err)
		if err == nil {
			checkFeatureMapBounds(t, buf, r.FeatureMaps)
		}
	})
}

func FuzzDecodeResponseUpdateModel(f *testing.F) {
	b := flatbuffers.NewBuilder(0)
	f.Add(append([]byte(nil), BuildResponseUpdateModel(b, &UpdateModelReply{Retcode: Succeed, Reason: ReasonUpdateModelSuccess, NextReqTime: "1700000000000"})...))
	f.Add([]byte(BodyJobNotReady))
	f.Fuzz(func(t *testing.T, buf []byte) {
		r, err := DecodeResponseUpdateModel(buf)
		checkDecodeErr(t, err)
		if err == nil {
			checkFeatureMapBounds(t, buf, r.FeatureMaps)
		}
	})
}

func FuzzDecodeResponseGetModel(f *testing.F) {
	b := flatbuffers.NewBuilder(0)
	m := smallModel()
	var block ModelBlock
	block.Set(m)
	f.Add(append([]byte(nil), BuildResponseGetModel(b, &GetModelReply{Retcode: Succeed, Reason: "Get model for iteration 1", Iteration: 1, Model: m, Timestamp: "1"})...))
	f.Add(append([]byte(nil), BuildResponseGetModel(b, &GetModelReply{Retcode: Succeed, Reason: "x", Iteration: 2, Block: &block, Timestamp: "2"})...))
	f.Add([]byte(BodySafemode))
	f.Fuzz(func(t *testing.T, buf []byte) {
		r, err := DecodeResponseGetModel(buf)
		checkDecodeErr(t, err)
		if err == nil {
			checkFeatureMapBounds(t, buf, r.FeatureMaps)
			dst := model.New(m.Layout)
			_, _ = r.FeatureMaps.CopyTo(dst)
		}
	})
}

// FuzzDecodeResponseHeads feeds the first cut bytes of buf, claimed to be
// the start of a message of len(buf)+extra bytes, to both head decoders;
// a message the full decoder accepts must give its head decoder the same
// fields.
func FuzzDecodeResponseHeads(f *testing.F) {
	m := smallModel()
	var block ModelBlock
	block.Set(m)
	b := flatbuffers.NewBuilder(0)
	head := append([]byte(nil), BuildResponseGetModel(b, &GetModelReply{Retcode: Succeed, Reason: "r", Iteration: 1, Block: &block, Timestamp: "1", Split: true})...)
	f.Add(append(head, block.Tail()...), uint32(len(head)), uint32(0))
	head = append([]byte(nil), BuildResponseFLJob(b, &FLJobReply{Retcode: Succeed, Reason: ReasonStartFLJobSuccess, Iteration: 2, NextReqTime: "2",
		Plan: &Plan{FLName: "n", Iterations: 3}, Block: &block, Split: true})...)
	f.Add(append(head, block.Tail()...), uint32(len(head)), uint32(0))
	f.Add([]byte(BodyJobDisabled), uint32(len(BodyJobDisabled)), uint32(0))
	f.Fuzz(func(t *testing.T, buf []byte, cut, extra uint32) {
		h := buf[:min(int(cut), len(buf))]
		size := len(buf) + int(extra%(1<<20))
		_, err := DecodeResponseFLJobHead(h, size)
		checkDecodeErr(t, err)
		_, err = DecodeResponseGetModelHead(h, size)
		checkDecodeErr(t, err)
		if r, err := DecodeResponseFLJob(buf); err == nil {
			got, err := DecodeResponseFLJobHead(buf, len(buf))
			r.FeatureMaps = FeatureMaps{}
			if err != nil || !reflect.DeepEqual(got, r) {
				t.Fatalf("head decoder: %+v, %v; full decoder: %+v", got, err, r)
			}
		}
		if r, err := DecodeResponseGetModel(buf); err == nil {
			got, err := DecodeResponseGetModelHead(buf, len(buf))
			r.FeatureMaps = FeatureMaps{}
			if err != nil || !reflect.DeepEqual(got, r) {
				t.Fatalf("head decoder: %+v, %v; full decoder: %+v", got, err, r)
			}
		}
	})
}
