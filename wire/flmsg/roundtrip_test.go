package flmsg

import (
	"errors"
	"math"
	"strings"
	"testing"
	"unsafe"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/fbs"
	"github.com/fedcluster/fedcluster/wire/fbs/r15"
)

func TestRequestFLJobR15(t *testing.T) {
	f := func(name, id string, iter, size int32, stamp string) {
		t.Helper()
		r, err := DecodeRequestFLJob(r15RequestFLJob(name, id, iter, size, stamp))
		if err != nil {
			t.Fatalf("cannot decode: %s", err)
		}
		if string(r.FLName) != name || string(r.FLID) != id || r.Iteration != iter || r.DataSize != size || string(r.Timestamp) != stamp {
			t.Fatalf("got %+v", r)
		}
		if r.SignData != nil || r.DownloadCompressTypes != nil {
			t.Fatalf("r1.5 request has ≈r1.7 fields: %+v", r)
		}
	}
	f("lenet", "f1", 1, 32, "2020/11/16/19/18")
	f("", "", 0, 0, "")
	f("lenet", "ü-id", -1, math.MaxInt32, "1700000000000")
}

func TestRequestFLJobOurs(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	f := func(a FLJobArgs) {
		t.Helper()
		r, err := DecodeRequestFLJob(BuildRequestFLJob(b, &a))
		if err != nil {
			t.Fatalf("cannot decode: %s", err)
		}
		if string(r.FLName) != a.FLName || string(r.FLID) != a.FLID || r.Iteration != a.Iteration || r.DataSize != a.DataSize || string(r.Timestamp) != a.Timestamp {
			t.Fatalf("got %+v, want %+v", r, a)
		}
	}
	f(FLJobArgs{FLName: "lenet", FLID: "dev-1", Iteration: 3, DataSize: 100, Timestamp: "1700000000000"})
	f(FLJobArgs{})
}

// A ≈r1.7 client fills the appended fields; the server reads them.
func TestRequestFLJobR17Fields(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	sign := b.CreateByteVector([]byte{1, 2, 3})
	fbs.RequestFLJobStartDownloadCompressTypesVector(b, 2)
	b.PrependInt8(int8(fbs.CompressTypeQUANT))
	b.PrependInt8(int8(fbs.CompressTypeNO_COMPRESS))
	dct := b.EndVector(2)
	att, name, id := b.CreateString("attestation"), b.CreateString("lenet"), b.CreateString("x")
	fbs.RequestFLJobStart(b)
	fbs.RequestFLJobAddFlName(b, name)
	fbs.RequestFLJobAddFlId(b, id)
	fbs.RequestFLJobAddDataSize(b, 9)
	fbs.RequestFLJobAddSignData(b, sign)
	fbs.RequestFLJobAddKeyAttestation(b, att)
	fbs.RequestFLJobAddDownloadCompressTypes(b, dct)
	b.Finish(fbs.RequestFLJobEnd(b))
	r, err := DecodeRequestFLJob(b.FinishedBytes())
	if err != nil {
		t.Fatalf("cannot decode: %s", err)
	}
	if string(r.SignData) != "\x01\x02\x03" || string(r.DownloadCompressTypes) != "\x00\x02" || r.DataSize != 9 || r.Timestamp != nil {
		t.Fatalf("got %+v", r)
	}
}

func TestRequestUpdateModelR15(t *testing.T) {
	f := func(ts []Tensor) {
		t.Helper()
		buf := r15RequestUpdateModel("lenet", "f7", 4, ts, "2020/11/16/19/18")
		for shift := 0; shift < 4; shift++ { // every memory alignment of the body
			r, err := DecodeRequestUpdateModel(copyAt(buf, shift))
			if err != nil {
				t.Fatalf("cannot decode: %s", err)
			}
			if string(r.FLName) != "lenet" || string(r.FLID) != "f7" || r.Iteration != 4 || string(r.Timestamp) != "2020/11/16/19/18" || r.UploadLoss != 0 {
				t.Fatalf("got %+v", r)
			}
			checkFeatureMaps(t, r.FeatureMaps, ts)
		}
	}
	f(nil)
	f([]Tensor{{Name: "empty"}})
	f([]Tensor{{Name: "x", Data: []float32{1}}})
	f([]Tensor{{Name: "nan", Data: []float32{float32(math.NaN()), float32(math.Inf(-1)), -0, math.MaxFloat32}}, {Name: "b", Data: []float32{5, 6, 7}}})
	f(modelTensors(smallModel()))
	f(modelTensors(model.InitLeNet5(3)))
}

func TestRequestUpdateModelOurs(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	m := model.InitLeNet5(5)
	f := func(a UpdateModelArgs, want []Tensor) {
		t.Helper()
		r, err := DecodeRequestUpdateModel(BuildRequestUpdateModel(b, &a))
		if err != nil {
			t.Fatalf("cannot decode: %s", err)
		}
		if string(r.FLName) != a.FLName || string(r.FLID) != a.FLID || r.Iteration != a.Iteration || string(r.Timestamp) != a.Timestamp || r.UploadLoss != a.UploadLoss {
			t.Fatalf("got %+v", r)
		}
		checkFeatureMaps(t, r.FeatureMaps, want)
		// the generated ≈r1.7 and r1.5 readers agree
		g := fbs.GetRootAsRequestUpdateModel(b.FinishedBytes(), 0)
		o := r15.GetRootAsRequestUpdateModel(b.FinishedBytes(), 0)
		if g.FeatureMapLength() != len(want) || o.FeatureMapLength() != len(want) || g.UploadLoss() != a.UploadLoss {
			t.Fatalf("generated readers disagree")
		}
		var gf fbs.FeatureMap
		for i, w := range want {
			g.FeatureMap(&gf, i)
			if string(gf.WeightFullname()) != w.Name || gf.DataLength() != len(w.Data) {
				t.Fatalf("generated reader: feature map %d is %q of %d", i, gf.WeightFullname(), gf.DataLength())
			}
			for j, x := range w.Data {
				if gf.Data(j) != x {
					t.Fatalf("generated reader: %q[%d] = %v, want %v", w.Name, j, gf.Data(j), x)
				}
			}
		}
	}
	f(UpdateModelArgs{FLName: "lenet", FLID: "d", Iteration: 2, Timestamp: "1700000000000", UploadLoss: 0.25, Model: m}, modelTensors(m))
	ts := []Tensor{{Name: "a", Data: []float32{1, 2, 3}}, {Name: "z"}}
	f(UpdateModelArgs{FLName: "x", Tensors: ts}, ts)
	f(UpdateModelArgs{}, nil)
	// Scale multiplies as it writes, leaving the model alone.
	scaled := model.InitLeNet5(5)
	for i := range scaled.Data {
		scaled.Data[i] *= 32
	}
	f(UpdateModelArgs{FLName: "lenet", Model: m, Scale: 32}, modelTensors(scaled))
	if m.SHA256() != model.InitLeNet5(5).SHA256() {
		t.Fatal("Scale modified the model it wrote")
	}
	f(UpdateModelArgs{Tensors: ts, Scale: -0.5}, []Tensor{{Name: "a", Data: []float32{-0.5, -1, -1.5}}, {Name: "z"}})
}

// scaleFloats gives the same bits through the aligned view and the
// byte-wise path.
func TestScaleFloats(t *testing.T) {
	vals := []float32{0, 1, -2.5, 3e38, 1e-45, float32(math.Inf(1)), 7}
	for shift := 0; shift < 4; shift++ {
		raw := make([]byte, shift+4*len(vals))[shift:]
		for i, v := range vals {
			putF32(raw[4*i:], v)
		}
		scaleFloats(raw, 3)
		for i, v := range vals {
			if got := getF32(raw[4*i:]); math.Float32bits(got) != math.Float32bits(v*3) {
				t.Fatalf("offset %d: value %d scaled to %v, want %v", shift, i, got, v*3)
			}
		}
	}
	scaleFloats(nil, 2) // nothing to do, no panic
}

func putF32(b []byte, v float32) {
	u := math.Float32bits(v)
	b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
}

func getF32(b []byte) float32 {
	return math.Float32frombits(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
}

// The zero-copy view aliases the request body.
func TestRequestUpdateModelZeroCopy(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	buf := BuildRequestUpdateModel(b, &UpdateModelArgs{Tensors: []Tensor{{Name: "a", Data: []float32{1, 2, 3}}}})
	buf = copyAt(buf, 0)
	r, err := DecodeRequestUpdateModel(buf)
	if err != nil {
		t.Fatalf("cannot decode: %s", err)
	}
	v, ok := r.FeatureMaps.At(0).Floats()
	if !ok {
		t.Fatalf("no view of an 8-byte aligned body")
	}
	start, end := uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&buf[0]))+uintptr(len(buf))
	if p := uintptr(unsafe.Pointer(&v[0])); p < start || p >= end {
		t.Fatalf("view does not alias the body")
	}
	// a misaligned body: no view, Data copies into the scratch
	buf = copyAt(buf, 1)
	r, _ = DecodeRequestUpdateModel(buf)
	if _, ok := r.FeatureMaps.At(0).Floats(); ok {
		t.Fatalf("view of misaligned data")
	}
	scratch := make([]float32, 0, 8)
	d := r.FeatureMaps.At(0).Data(scratch)
	if &d[0] != &scratch[:1][0] || d[2] != 3 {
		t.Fatalf("Data did not use the scratch: %v", d)
	}
}

func TestRequestGetModel(t *testing.T) {
	r, err := DecodeRequestGetModel(r15RequestGetModel("lenet", 7, "2020/11/16/19/18"))
	if err != nil || string(r.FLName) != "lenet" || r.Iteration != 7 || string(r.Timestamp) != "2020/11/16/19/18" {
		t.Fatalf("r1.5: got %+v, %v", r, err)
	}
	b := flatbuffers.NewBuilder(0)
	r, err = DecodeRequestGetModel(BuildRequestGetModel(b, &GetModelArgs{FLName: "n", Iteration: 1, Timestamp: "5"}))
	if err != nil || string(r.FLName) != "n" || r.Iteration != 1 || string(r.Timestamp) != "5" {
		t.Fatalf("ours: got %+v, %v", r, err)
	}
}

// Responses built by ours: read by our device decoders, by the generated
// ≈r1.7 readers and by the generated r1.5 readers.
func TestResponseFLJob(t *testing.T) {
	m := model.InitLeNet5(9)
	var block ModelBlock
	block.Set(m)
	plan := &Plan{ServerMode: "FEDERATED_LEARNING", FLName: "lenet", Iterations: 25, Epochs: 1, MiniBatch: 32, LR: 0.01}
	b := flatbuffers.NewBuilder(0)
	f := func(rep FLJobReply, want []Tensor) {
		t.Helper()
		buf := BuildResponseFLJob(b, &rep)
		r, err := DecodeResponseFLJob(buf)
		if err != nil {
			t.Fatalf("cannot decode: %s", err)
		}
		if r.Retcode != rep.Retcode || r.Reason != rep.Reason || r.Iteration != rep.Iteration || r.IsSelected != rep.IsSelected ||
			r.NextReqTime != rep.NextReqTime || r.Timestamp != rep.Timestamp || r.HasPlan != (rep.Plan != nil) || r.HasCipher {
			t.Fatalf("got %+v", r)
		}
		if rep.Plan != nil && r.Plan != *rep.Plan {
			t.Fatalf("plan %+v, want %+v", r.Plan, *rep.Plan)
		}
		checkFeatureMaps(t, r.FeatureMaps, want)

		g := fbs.GetRootAsResponseFLJob(buf, 0)
		o := r15.GetRootAsResponseFLJob(buf, 0)
		if g.Retcode() != rep.Retcode || o.Retcode() != rep.Retcode || string(o.Reason()) != rep.Reason ||
			o.Iteration() != rep.Iteration || o.IsSelected() != rep.IsSelected || string(o.NextReqTime()) != rep.NextReqTime ||
			o.FeatureMapLength() != len(want) || g.FeatureMapLength() != len(want) {
			t.Fatalf("generated readers disagree")
		}
		if rep.Plan != nil {
			p := o.FlPlanConfig(nil)
			gp := g.FlPlanConfig(nil)
			if p == nil || gp == nil || string(p.ServerMode()) != plan.ServerMode || string(p.FlName()) != plan.FLName ||
				p.Iterations() != plan.Iterations || p.Epochs() != plan.Epochs || p.MiniBatch() != plan.MiniBatch || p.Lr() != plan.LR ||
				p.Cipher(nil) != nil || gp.Cipher(nil) != nil || gp.Lr() != plan.LR {
				t.Fatalf("r1.5 reader: bad plan")
			}
		}
		var fm r15.FeatureMap
		for i, w := range want {
			o.FeatureMap(&fm, i)
			if string(fm.WeightFullname()) != w.Name || fm.DataLength() != len(w.Data) ||
				(len(w.Data) > 0 && (fm.Data(0) != w.Data[0] || fm.Data(len(w.Data)-1) != w.Data[len(w.Data)-1])) {
				t.Fatalf("r1.5 reader: bad feature map %d", i)
			}
		}
	}
	f(FLJobReply{Retcode: Succeed, Reason: ReasonStartFLJobSuccess, Iteration: 3, IsSelected: true, NextReqTime: "1700000000000", Plan: plan, Model: m}, modelTensors(m))
	f(FLJobReply{Retcode: Succeed, Reason: ReasonStartFLJobSuccess, Iteration: 3, IsSelected: true, NextReqTime: "1700000000000", Plan: plan, Block: &block}, modelTensors(m))
	f(FLJobReply{Retcode: OutOfTime, Reason: "Current amount for startFLJob has reached the threshold. Please startFLJob later.", Iteration: 3, NextReqTime: "1"}, nil)
	f(FLJobReply{Retcode: RequestError, Reason: SchemaReason("RequestFLJob"), Timestamp: "t"}, nil)
}

func TestResponseUpdateModel(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	f := func(rep UpdateModelReply) {
		t.Helper()
		buf := BuildResponseUpdateModel(b, &rep)
		r, err := DecodeResponseUpdateModel(buf)
		if err != nil {
			t.Fatalf("cannot decode: %s", err)
		}
		if r.Retcode != rep.Retcode || r.Reason != rep.Reason || r.NextReqTime != rep.NextReqTime || r.Timestamp != rep.Timestamp || r.FeatureMaps.Len() != 0 {
			t.Fatalf("got %+v", r)
		}
		o := r15.GetRootAsResponseUpdateModel(buf, 0)
		g := fbs.GetRootAsResponseUpdateModel(buf, 0)
		if o.Retcode() != rep.Retcode || string(o.Reason()) != rep.Reason || string(o.NextReqTime()) != rep.NextReqTime || string(g.NextReqTime()) != rep.NextReqTime {
			t.Fatalf("generated readers disagree")
		}
	}
	f(UpdateModelReply{Retcode: Succeed, Reason: ReasonUpdateModelSuccess, NextReqTime: "1700000000000"})
	f(UpdateModelReply{Retcode: OutOfTime, Reason: "UpdateModel iteration number is invalid:1, current iteration:2. Retry later.", NextReqTime: "9", Timestamp: "x"})
	f(UpdateModelReply{})
}

func TestResponseGetModel(t *testing.T) {
	m := randomModel(4, []model.Spec{{Name: "a", Shape: []int{5}}, {Name: "b", Shape: []int{2, 2}}})
	var block ModelBlock
	block.Set(m)
	b := flatbuffers.NewBuilder(0)
	f := func(rep GetModelReply, want []Tensor) {
		t.Helper()
		buf := BuildResponseGetModel(b, &rep)
		r, err := DecodeResponseGetModel(buf)
		if err != nil {
			t.Fatalf("cannot decode: %s", err)
		}
		if r.Retcode != rep.Retcode || r.Reason != rep.Reason || r.Iteration != rep.Iteration || r.Timestamp != rep.Timestamp {
			t.Fatalf("got %+v", r)
		}
		checkFeatureMaps(t, r.FeatureMaps, want)
		for _, read := range []func() (int32, string, int){
			func() (int32, string, int) {
				o := r15.GetRootAsResponseGetModel(buf, 0)
				return o.Iteration(), string(o.Timestamp()), o.FeatureMapLength()
			},
			func() (int32, string, int) {
				o := fbs.GetRootAsResponseGetModel(buf, 0)
				return o.Iteration(), string(o.Timestamp()), o.FeatureMapLength()
			},
		} {
			if it, ts, n := read(); it != rep.Iteration || ts != rep.Timestamp || n != len(want) {
				t.Fatalf("generated reader: iteration %d, timestamp %q, %d feature maps", it, ts, n)
			}
		}
		// the device copies the weights into its model
		if len(want) > 0 {
			dst := model.New(m.Layout)
			if n, err := r.FeatureMaps.CopyTo(dst); err != nil || n != len(want) || dst.SHA256() != m.SHA256() {
				t.Fatalf("CopyTo: %d, %v", n, err)
			}
		}
	}
	f(GetModelReply{Retcode: Succeed, Reason: "Get model for iteration 3", Iteration: 3, Model: m, Timestamp: "1700000000000"}, modelTensors(m))
	f(GetModelReply{Retcode: Succeed, Reason: "Get model for iteration 3", Iteration: 3, Block: &block, Timestamp: "1700000000000"}, modelTensors(m))
	f(GetModelReply{Retcode: SucNotReady, Reason: "The model is not ready yet for iteration 4.", Iteration: 4, Timestamp: "17"}, nil)
	// the block survives reuse of the builder for other messages
	f(GetModelReply{Retcode: Succeed, Block: &block, Timestamp: ""}, modelTensors(m))
}

func TestModelBlockMatchesModel(t *testing.T) {
	f := func(m *model.Model) {
		t.Helper()
		var block ModelBlock
		block.Set(m)
		b1, b2 := flatbuffers.NewBuilder(0), flatbuffers.NewBuilder(0)
		x := BuildResponseGetModel(b1, &GetModelReply{Retcode: Succeed, Reason: "r", Iteration: 1, Model: m, Timestamp: "t"})
		y := BuildResponseGetModel(b2, &GetModelReply{Retcode: Succeed, Reason: "r", Iteration: 1, Block: &block, Timestamp: "t"})
		if len(y) != len(x)+4 { // the block's unreferenced length word
			t.Fatalf("block response is %d bytes, model response %d", len(y), len(x))
		}
		r, err := DecodeResponseGetModel(y)
		if err != nil {
			t.Fatalf("cannot decode: %s", err)
		}
		checkFeatureMaps(t, r.FeatureMaps, modelTensors(m))
	}
	f(smallModel())
	f(model.InitLeNet5(1))
	f(randomModel(2, []model.Spec{{Name: "odd", Shape: []int{1}}, {Name: "name-of-odd-length", Shape: []int{3}}}))
}

func TestPlainRefusal(t *testing.T) {
	f := func(body string, want string, ok bool) {
		t.Helper()
		got, gotOK := PlainRefusal([]byte(body))
		if got != want || gotOK != ok {
			t.Fatalf("PlainRefusal(%q) = %q, %v; want %q, %v", body, got, gotOK, want, ok)
		}
	}
	f("The cluster is in safemode.", BodySafemode, true)
	f("The server's training job is disabled or finished.", BodyJobDisabled, true)
	f("The server's training job is not ready.", BodyJobNotReady, true)
	f("The cluster is in safemode", "", false)
	f("", "", false)
}

func TestDeviceDecodersRefusal(t *testing.T) {
	f := func(body string, refused bool) {
		t.Helper()
		for name, dec := range map[string]func([]byte) error{
			"FLJob":       func(b []byte) error { _, err := DecodeResponseFLJob(b); return err },
			"UpdateModel": func(b []byte) error { _, err := DecodeResponseUpdateModel(b); return err },
			"GetModel":    func(b []byte) error { _, err := DecodeResponseGetModel(b); return err },
		} {
			err := dec([]byte(body))
			var re *RefusalError
			if refused != errors.As(err, &re) || refused != errors.Is(err, ErrRefused) {
				t.Fatalf("%s(%q): %v", name, body, err)
			}
			if refused && re.Body != body {
				t.Fatalf("%s(%q): body %q", name, body, re.Body)
			}
			if !refused && !errors.Is(err, ErrInvalidSchema) {
				t.Fatalf("%s(%q): %v is not a schema error", name, body, err)
			}
		}
	}
	f(BodySafemode, true)
	f(BodyJobDisabled, true)
	f(BodyJobNotReady, true)
	f("The output of the round getModel is empty.", true)
	f("garbage\x00\x01\x02\x03\x04\x05\x06", false)
	f("", false)
}

func TestCopyToRefusesRepeatedNames(t *testing.T) {
	m := model.InitLeNet5(1)
	p := m.Layout.Params[0]
	data := m.Data[p.Offset : p.Offset+p.Len]
	b := flatbuffers.NewBuilder(0)
	buf := BuildRequestUpdateModel(b, &UpdateModelArgs{FLName: "x", FLID: "d", Tensors: []Tensor{{Name: p.Name, Data: data}, {Name: p.Name, Data: data}}})
	r, err := DecodeRequestUpdateModel(buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.FeatureMaps.CopyTo(model.New(m.Layout)); err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Fatalf("CopyTo of a repeated name: %v", err)
	}
}
