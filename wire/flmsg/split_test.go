package flmsg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/fbs"
	"github.com/fedcluster/fedcluster/wire/fbs/r15"
)

// join is a split message as it goes on the wire, in a buffer of its own
// starting at an address ≡ shift (mod 8).
func join(head []byte, mb *ModelBlock, shift int) []byte {
	return copyAt(append(append([]byte(nil), head...), bytes.Join(mb.Pieces(), nil)...), shift)
}

// blocksOf are m's two kinds of block: serialized by Set, and its layout's
// frame around m's own data.
func blocksOf(m *model.Model) []*ModelBlock {
	set := new(ModelBlock)
	set.Set(m)
	return []*ModelBlock{set, NewBlockFrame(m.Layout).Block(m)}
}

// A frame's block is Set's bytes, in pieces whose float data is the
// model's own memory, for every model of the layout.
func TestBlockFrameHasSetsBytes(t *testing.T) {
	for _, m := range splitModels() {
		frame := NewBlockFrame(m.Layout)
		for _, x := range []*model.Model{m, randomModel(9, m.Layout.Specs()), model.New(m.Layout)} {
			x.Layout = m.Layout
			var set ModelBlock
			set.Set(x)
			got := frame.Block(x)
			if !bytes.Equal(bytes.Join(got.Pieces(), nil), set.Tail()) || got.Size() != set.Size() || got.off != set.off {
				t.Fatalf("frame's block differs from Set's (%d bytes against %d)", got.Size(), set.Size())
			}
			if len(got.Pieces()) != 2*len(m.Layout.Params)+1 {
				t.Fatalf("%d pieces for %d parameters", len(got.Pieces()), len(m.Layout.Params))
			}
			// the weights are sent from the model, not from a copy
			x.Data[len(x.Data)-1] = 12345
			set.Set(x)
			if !bytes.Equal(bytes.Join(got.Pieces(), nil), set.Tail()) {
				t.Fatal("the frame's block holds a copy of the weights")
			}
		}
	}
	other := model.InitLeNet5(1)
	defer func() {
		if recover() == nil {
			t.Fatal("a frame made a block for a model of another layout")
		}
	}()
	NewBlockFrame(smallModel().Layout).Block(other)
}

func splitModels() []*model.Model {
	return []*model.Model{
		smallModel(),
		model.InitLeNet5(3),
		randomModel(2, []model.Spec{{Name: "odd", Shape: []int{1}}, {Name: "name-of-odd-length", Shape: []int{3}}}),
	}
}

// A split startFLJob answer, joined, is read by our decoder and by the
// generated ≈r1.7 and r1.5 readers exactly as the spliced one is, and its
// head alone decodes to the same fields.
func TestSplitResponseFLJob(t *testing.T) {
	plan := &Plan{ServerMode: "FEDERATED_LEARNING", FLName: "lenet", Iterations: 25, Epochs: 1, MiniBatch: 32, LR: 0.01}
	for _, m := range splitModels() {
		for _, block := range blocksOf(m) {
			checkSplitResponseFLJob(t, plan, m, block)
		}
	}
}

func checkSplitResponseFLJob(t *testing.T, plan *Plan, m *model.Model, block *ModelBlock) {
	t.Helper()
	{
		rep := FLJobReply{Retcode: Succeed, Reason: ReasonStartFLJobSuccess, Iteration: 7, IsSelected: true,
			NextReqTime: "1700000000000", Plan: plan, Block: block, Timestamp: "ts"}
		whole := append([]byte(nil), BuildResponseFLJob(flatbuffers.NewBuilder(0), &rep)...)
		want, err := DecodeResponseFLJob(whole)
		if err != nil {
			t.Fatal(err)
		}
		rep.Split = true
		head := BuildResponseFLJob(flatbuffers.NewBuilder(0), &rep)
		if len(head) > 512 {
			t.Fatalf("head of %d bytes: the model was copied into it", len(head))
		}
		for shift := 0; shift < 8; shift += 4 {
			buf := join(head, block, shift)
			r, err := DecodeResponseFLJob(buf)
			if err != nil {
				t.Fatalf("cannot decode the joined message: %s", err)
			}
			checkFeatureMaps(t, r.FeatureMaps, modelTensors(m))
			r.FeatureMaps, want.FeatureMaps = FeatureMaps{}, FeatureMaps{}
			if !reflect.DeepEqual(r, want) {
				t.Fatalf("joined: %+v, spliced: %+v", r, want)
			}
			g, o := fbs.GetRootAsResponseFLJob(buf, 0), r15.GetRootAsResponseFLJob(buf, 0)
			if g.Iteration() != 7 || o.Iteration() != 7 || string(o.NextReqTime()) != rep.NextReqTime ||
				g.FeatureMapLength() != len(m.Layout.Params) || o.FeatureMapLength() != len(m.Layout.Params) ||
				g.FlPlanConfig(nil).Lr() != plan.LR {
				t.Fatalf("generated readers disagree")
			}
			var fm r15.FeatureMap
			for i, p := range m.Layout.Params {
				o.FeatureMap(&fm, i)
				if string(fm.WeightFullname()) != p.Name || fm.DataLength() != p.Len || fm.Data(p.Len-1) != m.Data[p.Offset+p.Len-1] {
					t.Fatalf("r1.5 reader: bad feature map %d", i)
				}
			}
			h, err := DecodeResponseFLJobHead(buf[:len(head)], len(buf))
			if err != nil || !reflect.DeepEqual(h, want) {
				t.Fatalf("head: %+v, %v; want %+v", h, err, want)
			}
		}
	}
}

func TestSplitResponseGetModel(t *testing.T) {
	for _, m := range splitModels() {
		for _, block := range blocksOf(m) {
			checkSplitResponseGetModel(t, m, block)
		}
	}
}

func checkSplitResponseGetModel(t *testing.T, m *model.Model, block *ModelBlock) {
	t.Helper()
	{
		rep := GetModelReply{Retcode: Succeed, Reason: "Get model for iteration 3", Iteration: 4, Block: block, Timestamp: "17", Split: true}
		head := append([]byte(nil), BuildResponseGetModel(flatbuffers.NewBuilder(0), &rep)...)
		buf := join(head, block, 4)
		r, err := DecodeResponseGetModel(buf)
		if err != nil {
			t.Fatalf("cannot decode the joined message: %s", err)
		}
		checkFeatureMaps(t, r.FeatureMaps, modelTensors(m))
		dst := model.New(m.Layout)
		if n, err := r.FeatureMaps.CopyTo(dst); err != nil || n != len(m.Layout.Params) || dst.SHA256() != m.SHA256() {
			t.Fatalf("CopyTo: %d, %v", n, err)
		}
		if o := fbs.GetRootAsResponseGetModel(buf, 0); o.Iteration() != 4 || string(o.Timestamp()) != "17" || o.FeatureMapLength() != len(m.Layout.Params) {
			t.Fatalf("generated reader disagrees")
		}
		h, err := DecodeResponseGetModelHead(buf[:len(head)], len(buf))
		r.FeatureMaps = FeatureMaps{}
		if err != nil || !reflect.DeepEqual(h, r) {
			t.Fatalf("head: %+v, %v; want %+v", h, err, r)
		}
	}
}

// A split update is what the server's decoder reads: the block's weights,
// as they are (already scaled), and the head's fields.
func TestSplitRequestUpdateModel(t *testing.T) {
	for _, m := range splitModels() {
		var block ModelBlock
		block.Set(m)
		args := UpdateModelArgs{FLName: "lenet", FLID: "device-1", Iteration: 9, Timestamp: "1700000000000", UploadLoss: 0.5,
			Block: &block, Split: true, Scale: 32}
		head := append([]byte(nil), BuildRequestUpdateModel(flatbuffers.NewBuilder(0), &args)...)
		r, err := DecodeRequestUpdateModel(join(head, &block, 0))
		if err != nil {
			t.Fatalf("cannot decode the joined update: %s", err)
		}
		if string(r.FLName) != "lenet" || string(r.FLID) != "device-1" || r.Iteration != 9 || string(r.Timestamp) != args.Timestamp || r.UploadLoss != 0.5 {
			t.Fatalf("got %+v", r)
		}
		checkFeatureMaps(t, r.FeatureMaps, modelTensors(m))

		// spliced, the same update
		args.Split = false
		r, err = DecodeRequestUpdateModel(BuildRequestUpdateModel(flatbuffers.NewBuilder(0), &args))
		if err != nil {
			t.Fatalf("cannot decode the spliced update: %s", err)
		}
		checkFeatureMaps(t, r.FeatureMaps, modelTensors(m))
	}
}

// Head decoding takes only what it can verify: a head cut short, a message
// too short for the offset into the model, a misaligned model offset, a
// plain-text refusal.
func TestDecodeHeadRefusesWhatItCannotVerify(t *testing.T) {
	m := model.InitLeNet5(1)
	var block ModelBlock
	block.Set(m)
	head := append([]byte(nil), BuildResponseGetModel(flatbuffers.NewBuilder(0),
		&GetModelReply{Retcode: Succeed, Reason: "Get model for iteration 1", Iteration: 1, Block: &block, Timestamp: "17", Split: true})...)
	size := len(head) + block.Size()
	if _, err := DecodeResponseGetModelHead(head, size); err != nil {
		t.Fatalf("valid head: %s", err)
	}
	for _, cut := range []int{0, 7, 8, len(head) / 2, len(head) - 4} { // the last 3 bytes: NUL and padding
		if _, err := DecodeResponseGetModelHead(head[:cut], size); err == nil {
			t.Fatalf("a head cut at %d bytes of %d decoded", cut, len(head))
		}
	}
	// The model's vector lies len(tail)-off bytes past the head: a message
	// that ends before it is refused.
	if _, err := DecodeResponseGetModelHead(head, len(head)+block.Size()-int(block.off)); err == nil {
		t.Fatal("a message ending at the model's vector decoded")
	}
	if _, err := DecodeResponseGetModelHead(head, len(head)-1); err == nil {
		t.Fatal("a head longer than its message decoded")
	}
	// The model's offset moved by 2 bytes: misaligned.
	bad := append([]byte(nil), head...)
	fp := rootTable(bad).field(slotRspGetFeatureMap)
	binary.LittleEndian.PutUint32(bad[fp:], binary.LittleEndian.Uint32(bad[fp:])+2)
	if _, err := DecodeResponseGetModelHead(bad, size); err == nil {
		t.Fatal("a misaligned model offset decoded")
	}
	// What of the model lies in the head's bytes is verified against the
	// message's length: a message cut short is refused, whole it is not.
	full := append([]byte(nil), BuildResponseGetModel(flatbuffers.NewBuilder(0),
		&GetModelReply{Retcode: Succeed, Reason: "r", Iteration: 1, Model: m, Timestamp: "17"})...)
	if _, err := DecodeResponseGetModelHead(full[:HeadSize], len(full)); err != nil {
		t.Fatalf("the first HeadSize bytes of a whole answer: %s", err)
	}
	half := full[:len(full)/2]
	if _, err := DecodeResponseGetModelHead(half[:HeadSize], len(half)); err == nil {
		t.Fatal("the first bytes of half an answer decoded")
	}
	if _, err := DecodeResponseGetModelHead([]byte(BodySafemode), len(BodySafemode)); err == nil || !errors.Is(err, ErrRefused) {
		t.Fatalf("plain refusal: %v", err)
	}
	// A refusal's text is the whole body: a prefix of a longer one is not.
	if _, err := DecodeResponseGetModelHead([]byte(BodySafemode), len(BodySafemode)+10); err == nil || errors.Is(err, ErrRefused) {
		t.Fatalf("prefix of a longer body: %v", err)
	}
}

// Joined sends head then tail's pieces, through WriteTo or Read, and a
// write that fails part way resumes where it stopped.
func TestJoined(t *testing.T) {
	head, tail := []byte("head-"), [][]byte{[]byte("and-"), nil, []byte("the-"), []byte("tail")}
	var w bytes.Buffer
	j := &Joined{Head: head, Tail: tail}
	if j.Len() != 17 {
		t.Fatalf("Len %d", j.Len())
	}
	if n, err := j.WriteTo(&w); err != nil || n != 17 || w.String() != "head-and-the-tail" || j.Len() != 0 {
		t.Fatalf("WriteTo: %d, %v, %q", n, err, w.String())
	}
	if string(tail[0]) != "and-" || string(tail[3]) != "tail" {
		t.Fatal("Joined modified its pieces")
	}
	for _, size := range []int{1, 3, 100} {
		got, err := readIn(&Joined{Head: head, Tail: tail}, size)
		if err != nil || string(got) != "head-and-the-tail" {
			t.Fatalf("Read in %d: %q, %v", size, got, err)
		}
	}
	for cut := 0; cut <= 17; cut++ {
		j := &Joined{Head: head, Tail: tail}
		w := &failingWriter{left: cut}
		n, err := j.WriteTo(w)
		if int(n) != cut || (cut < 17) != (err != nil) || j.Len() != 17-cut {
			t.Fatalf("write failing after %d bytes: %d, %v, %d left", cut, n, err, j.Len())
		}
		w.left = 100
		if _, err := j.WriteTo(w); err != nil || w.got.String() != "head-and-the-tail" {
			t.Fatalf("resumed after %d bytes: %q, %v", cut, w.got.String(), err)
		}
	}
}

// readIn reads r to its end in reads of at most n bytes.
func readIn(r io.Reader, n int) ([]byte, error) {
	var out []byte
	buf := make([]byte, n)
	for {
		k, err := r.Read(buf)
		out = append(out, buf[:k]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// failingWriter takes left bytes, then fails.
type failingWriter struct {
	left int
	got  bytes.Buffer
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) <= w.left {
		w.left -= len(p)
		return w.got.Write(p)
	}
	n := w.left
	w.got.Write(p[:n])
	w.left = 0
	return n, errors.New("connection reset")
}

// A file block's answer sends the floats from the file, not from the
// model's memory, where the writer can take a file (a TCP connection, as
// fasthttp's writer passes it on, and Read); the file's bytes here differ
// from the model's to tell the two apart. A writer that cannot take a file
// gets the memory, which for a mapped checkpoint is the same bytes.
func TestFileBlockSendsFromTheFile(t *testing.T) {
	m := model.InitLeNet5(3)
	inFile := randomModel(5, m.Layout.Specs())
	inFile.Layout = m.Layout
	const dataOffset = 24
	f, err := os.CreateTemp(t.TempDir(), "ckpt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(make([]byte, dataOffset), model.FloatBytes(inFile.Data)...)); err != nil {
		t.Fatal(err)
	}
	frame := NewBlockFrame(m.Layout)
	head := []byte("head----")
	want := append(append([]byte(nil), head...), bytes.Join(frame.Block(inFile).Pieces(), nil)...)
	fromMemory := append(append([]byte(nil), head...), bytes.Join(frame.Block(m).Pieces(), nil)...)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	j := frame.FileBlock(m, f, dataOffset).Joined(head)
	if j.Len() != len(want) {
		t.Fatalf("Len %d, want %d", j.Len(), len(want))
	}
	n, err := j.WriteTo(c)
	c.Close()
	if err != nil || int(n) != len(want) {
		t.Fatalf("WriteTo: %d, %v", n, err)
	}
	if !bytes.Equal(<-got, want) {
		t.Fatal("a TCP connection did not get the file's floats")
	}
	if j.own != nil {
		t.Fatal("the message's own file is still open after WriteTo")
	}
	for _, size := range []int{7, 1 << 20} {
		if b, err := readIn(frame.FileBlock(m, f, dataOffset).Joined(head), size); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("Read in %d: %v, the file's floats %v", size, err, bytes.Equal(b, want))
		}
	}
	w := &failingWriter{left: len(want) + 1}
	if _, err := frame.FileBlock(m, f, dataOffset).Joined(head).WriteTo(w); err != nil || !bytes.Equal(w.got.Bytes(), fromMemory) {
		t.Fatalf("a writer without ReadFrom: %v", err)
	}
}
