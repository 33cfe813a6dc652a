package flmsg

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/wire/fbs"
)

// validUpdate is a small valid updateModel request built by a generated
// (per-element) builder.
func validUpdate() []byte {
	return r15RequestUpdateModel("lenet", "dev", 1, modelTensors(smallModel()), "1700000000000")
}

// positions of interesting bytes in a verified RequestUpdateModel.
type updatePos struct {
	root, vt         int // root table, its vtable
	fmVec            int // the feature_map vector's length word
	fm0              int // first FeatureMap table
	fm0Name, fm0Data int // its string's and data vector's length words
}

func locate(buf []byte) updatePos {
	t := rootTable(buf)
	var p updatePos
	p.root, p.vt = t.pos, t.vt
	p.fmVec = t.deref(slotReqUpdateFeatureMap)
	fm := openTable(buf, p.fmVec+4+int(binary.LittleEndian.Uint32(buf[p.fmVec+4:])))
	p.fm0 = fm.pos
	p.fm0Name = fm.deref(slotFeatureMapName)
	p.fm0Data = fm.deref(slotFeatureMapData)
	return p
}

func put32(buf []byte, pos int, v uint32) { binary.LittleEndian.PutUint32(buf[pos:], v) }
func put16(buf []byte, pos int, v uint16) { binary.LittleEndian.PutUint16(buf[pos:], v) }

func TestVerifyCorrupted(t *testing.T) {
	valid := validUpdate()
	p := locate(valid)
	f := func(mutate func(b []byte) []byte, want string) {
		t.Helper()
		buf := mutate(append([]byte(nil), valid...))
		_, err := DecodeRequestUpdateModel(buf)
		if err == nil {
			t.Fatalf("no error, want %q", want)
		}
		if !errors.Is(err, ErrInvalidSchema) || Reason(err) != "The schema of RequestUpdateModel is invalid." {
			t.Fatalf("error %v: not a schema error with MindSpore's reason", err)
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not contain %q", err, want)
		}
	}
	f(func(b []byte) []byte { return nil }, "shorter than a root offset")
	f(func(b []byte) []byte { return b[:7] }, "shorter than a root offset")
	f(func(b []byte) []byte { put32(b, 0, 0); return b }, "root: offset at 0 is 0")
	f(func(b []byte) []byte { put32(b, 0, 0xffffffff); return b }, "negative as a signed 32-bit offset")
	f(func(b []byte) []byte { put32(b, 0, uint32(len(b))); return b }, "points past the end")
	f(func(b []byte) []byte { put32(b, 0, uint32(p.root+2)); return b }, "not 4-byte aligned")
	// vtable
	f(func(b []byte) []byte { put32(b, p.root, 0x7fffffff); return b }, "outside the")
	f(func(b []byte) []byte { put32(b, p.root, 0x80000000); return b }, "outside the")
	f(func(b []byte) []byte { put32(b, p.root, 0); return b }, "invalid size 0") // a table that is its own vtable
	f(func(b []byte) []byte { put16(b, p.vt, 5); return b }, "invalid size 5")
	f(func(b []byte) []byte { put16(b, p.vt, 0xfffe); return b }, "runs past the end")
	f(func(b []byte) []byte { put16(b, p.vt+2, 0xffff); return b }, "of 65535 bytes runs past the end")
	// fields: slot 2 (iteration, int32) and slot 3 (feature_map offset)
	f(func(b []byte) []byte { put16(b, p.vt+4+2*2, binary.LittleEndian.Uint16(b[p.vt+2:])); return b }, "RequestUpdateModel: iteration: field at table offset")
	f(func(b []byte) []byte { put16(b, p.vt+4+2*2, 2); return b }, "iteration: field at table offset 2")
	f(func(b []byte) []byte { put16(b, p.vt+4+2*2, binary.LittleEndian.Uint16(b[p.vt+4+2*2:])+1); return b }, "iteration: field at")
	f(func(b []byte) []byte {
		fp := p.root + int(binary.LittleEndian.Uint16(b[p.vt+4+2*3:]))
		put32(b, fp, 0)
		return b
	}, "feature_map: offset at")
	// the feature_map vector and its elements
	f(func(b []byte) []byte { put32(b, p.fmVec, 0xffffffff); return b }, "feature_map: vector of 4294967295 × 4 bytes")
	f(func(b []byte) []byte { put32(b, p.fmVec+4, 0); return b }, "feature_map: [0]: offset at")
	// FeatureMap.data and weight_fullname
	f(func(b []byte) []byte { put32(b, p.fm0Data, 0xffffffff); return b }, "feature_map: [0]: FeatureMap: data: vector of 4294967295 × 4 bytes")
	f(func(b []byte) []byte { put32(b, p.fm0Data, uint32(len(b))); return b }, "runs past the end")
	f(func(b []byte) []byte { put32(b, p.fm0Name, 0xffffffff); return b }, "weight_fullname: string of 4294967295 bytes")
	f(func(b []byte) []byte {
		n := binary.LittleEndian.Uint32(b[p.fm0Name:])
		b[p.fm0Name+4+int(n)] = 'x'
		return b
	}, "not NUL-terminated")
	f(func(b []byte) []byte { return b[:len(b)-8] }, "past the end")
}

// Every truncation of a valid message of each kind is rejected, and every
// random corruption is rejected or read without a panic.
func TestVerifyTruncatedAndFlipped(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	m := smallModel()
	msgs := map[string]func([]byte) error{}
	add := func(buf []byte, dec func([]byte) error) {
		c := append([]byte(nil), buf...)
		msgs[string(c)] = dec
	}
	decUpd := func(x []byte) error { r, err := DecodeRequestUpdateModel(x); touch(r.FeatureMaps); return err }
	add(validUpdate(), decUpd)
	add(BuildRequestUpdateModel(b, &UpdateModelArgs{FLName: "n", FLID: "i", Iteration: 1, UploadLoss: 1, Model: m}), decUpd)
	add(r15RequestFLJob("n", "id", 1, 2, "ts"), func(x []byte) error { _, err := DecodeRequestFLJob(x); return err })
	add(r15RequestGetModel("n", 1, "ts"), func(x []byte) error { _, err := DecodeRequestGetModel(x); return err })
	add(BuildResponseFLJob(b, &FLJobReply{Retcode: 200, Reason: "success", Plan: &Plan{FLName: "x", LR: 1}, Model: m, NextReqTime: "1"}),
		func(x []byte) error { r, err := DecodeResponseFLJob(x); touch(r.FeatureMaps); return err })
	add(BuildResponseUpdateModel(b, &UpdateModelReply{Retcode: 200, Reason: "ok", NextReqTime: "1"}),
		func(x []byte) error { _, err := DecodeResponseUpdateModel(x); return err })
	add(BuildResponseGetModel(b, &GetModelReply{Retcode: 200, Reason: "ok", Model: m, Timestamp: "1"}),
		func(x []byte) error { r, err := DecodeResponseGetModel(x); touch(r.FeatureMaps); return err })

	rng := rand.New(rand.NewPCG(1, 2))
	for valid, dec := range msgs {
		buf := []byte(valid)
		if err := dec(buf); err != nil {
			t.Fatalf("valid message rejected: %s", err)
		}
		for n := 0; n < len(buf); n++ {
			// only alignment padding may be cut off
			if err := dec(append([]byte(nil), buf[:n]...)); err == nil && strings.Trim(string(buf[n:]), "\x00") != "" {
				t.Fatalf("message of %d bytes truncated to %d accepted", len(buf), n)
			}
		}
		for i := 0; i < 3000; i++ {
			c := append([]byte(nil), buf...)
			for k := 1 + rng.IntN(4); k > 0; k-- {
				pos := rng.IntN(len(c))
				switch rng.IntN(3) {
				case 0:
					c[pos] ^= 1 << rng.IntN(8)
				case 1:
					c[pos] = 0xff
				default:
					c[pos] = byte(rng.IntN(256))
				}
			}
			_ = dec(c) // must not panic; the backstop would turn a panic into an error
		}
	}
}

// touch reads every byte the views expose, as a consumer would.
func touch(v FeatureMaps) {
	var scratch []float32
	for i := 0; i < v.Len(); i++ {
		fm := v.At(i)
		_ = string(fm.Name)
		d := fm.Data(scratch)
		for _, x := range d {
			sinkF32 += x
		}
	}
}

var sinkF32 float32

// The backstop is not what makes corrupted input safe: the verifier is. This
// test runs the verifier directly on flipped messages and then the
// generated (unchecked) readers, which panic on anything out of range.
func TestVerifierGuardsGeneratedReaders(t *testing.T) {
	valid := validUpdate()
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 20000; i++ {
		c := append([]byte(nil), valid...)
		for k := 1 + rng.IntN(3); k > 0; k-- {
			c[rng.IntN(len(c))] = byte(rng.IntN(256))
		}
		if verify(c, requestUpdateModelSpec) != nil {
			continue
		}
		readAllGenerated(t, c)
	}
}

func readAllGenerated(t *testing.T, buf []byte) {
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("generated reader panicked on a verified buffer %x: %v", buf, r)
		}
	}()
	r := fbs.GetRootAsRequestUpdateModel(buf, 0)
	_, _, _, _, _ = r.FlName(), r.FlId(), r.Iteration(), r.Timestamp(), r.UploadLoss()
	_, _, _ = r.SignatureBytes(), r.Sign(), r.UploadSparseRate()
	var fm fbs.FeatureMap
	for i := 0; i < r.FeatureMapLength(); i++ {
		r.FeatureMap(&fm, i)
		_ = fm.WeightFullname()
		for j := 0; j < fm.DataLength(); j++ {
			sinkF32 += fm.Data(j)
		}
	}
	for i := 0; i < r.NameVecLength(); i++ {
		_ = r.NameVec(i)
	}
	for i := 0; i < r.IndexArrayLength(); i++ {
		_ = r.IndexArray(i)
	}
}

// Nesting deeper than the limit is an error, whatever the schema allows;
// offsets only point forward, so a reference cycle cannot be written, and an
// offset of 0 (the smallest cycle) is rejected.
func TestVerifyDepthAndCycles(t *testing.T) {
	node := &tableSpec{name: "Node"}
	node.fields = []fieldSpec{tbl("child", node)}
	nested := func(depth int) []byte {
		b := flatbuffers.NewBuilder(0)
		var child flatbuffers.UOffsetT
		for i := 0; i < depth; i++ {
			b.StartObject(1)
			b.PrependUOffsetTSlot(0, child, 0)
			child = b.EndObject()
		}
		b.Finish(child)
		return b.FinishedBytes()
	}
	f := func(depth int, want string) {
		t.Helper()
		err := verify(nested(depth), node)
		if want == "" {
			if err != nil {
				t.Fatalf("depth %d: %s", depth, err)
			}
			return
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("depth %d: error %v, want %q", depth, err, want)
		}
	}
	f(1, "")
	f(maxDepth, "")
	f(maxDepth+1, "nested deeper than 64")
	f(1000, "nested deeper than 64")

	// a child offset of 0: the table would contain itself
	buf := nested(2)
	rt := rootTable(buf)
	put32(buf, rt.field(0), 0)
	if err := verify(buf, node); err == nil || !strings.Contains(err.Error(), "points at itself") {
		t.Fatalf("self reference: %v", err)
	}
}

// A vector of a million offsets to one table exceeds the table budget
// instead of costing a million table checks per kilobyte.
func TestVerifyTableBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 4 MB message")
	}
	b := flatbuffers.NewBuilder(5 << 20)
	name := b.CreateString("w")
	fbs.FeatureMapStart(b)
	fbs.FeatureMapAddWeightFullname(b, name)
	fm := fbs.FeatureMapEnd(b)
	n := maxTables + 1
	b.StartVector(4, n, 4)
	for i := 0; i < n; i++ {
		b.PrependUOffsetT(fm)
	}
	vec := b.EndVector(n)
	fbs.RequestUpdateModelStart(b)
	fbs.RequestUpdateModelAddFeatureMap(b, vec)
	b.Finish(fbs.RequestUpdateModelEnd(b))
	_, err := DecodeRequestUpdateModel(b.FinishedBytes())
	if err == nil || !strings.Contains(err.Error(), "more than 1000000 tables") {
		t.Fatalf("got %v", err)
	}
}

// Fields appended by a newer schema (more vtable slots than we know) are
// ignored, as a FlatBuffers reader does.
func TestVerifyIgnoresUnknownSlots(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	name := b.CreateString("lenet")
	b.StartObject(20)
	b.PrependUOffsetTSlot(0, name, 0)
	b.PrependInt32Slot(1, 7, 0)
	b.PrependInt32Slot(19, 99, 0) // unknown slot
	b.Finish(b.EndObject())
	r, err := DecodeRequestGetModel(b.FinishedBytes())
	if err != nil || string(r.FLName) != "lenet" || r.Iteration != 7 {
		t.Fatalf("got %+v, %v", r, err)
	}
}
