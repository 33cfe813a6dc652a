package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/fedcluster/fedcluster/node/model"
)

func mustLayout(t testing.TB, specs ...model.Spec) *model.Layout {
	t.Helper()
	l, err := model.NewLayout(specs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// file builds a safetensors file from a raw header and data.
func file(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func TestRoundTripLeNet(t *testing.T) {
	m := model.InitLeNet5(7)
	meta := map[string]string{"fl_name": "lenet", "iteration": "3", "sha256": m.SHA256()}
	var buf bytes.Buffer
	n, err := Encode(&buf, m, meta)
	if err != nil {
		t.Fatal(err)
	}
	size, _ := EncodedSize(m, meta)
	if n != int64(buf.Len()) || n != size {
		t.Fatalf("wrote %d, buffer %d, EncodedSize %d", n, buf.Len(), size)
	}
	app, err := AppendEncode([]byte("x"), m, meta)
	if err != nil || !bytes.Equal(app[1:], buf.Bytes()) {
		t.Fatalf("AppendEncode differs from Encode (err %v)", err)
	}
	hlen := binary.LittleEndian.Uint64(buf.Bytes())
	if hlen%8 != 0 {
		t.Fatalf("header length %d not 8-aligned", hlen)
	}
	pre, err := Prefix(m.Layout, meta)
	if err != nil || !bytes.Equal(pre, buf.Bytes()[:8+hlen]) {
		t.Fatalf("Prefix is not what Encode writes before the weights (err %v)", err)
	}
	check := func(got *model.Model, gotMeta map[string]string, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if !got.Layout.Equal(m.Layout) || got.SHA256() != m.SHA256() {
			t.Fatalf("round trip changed the model")
		}
		if len(gotMeta) != 3 || gotMeta["sha256"] != m.SHA256() || gotMeta["iteration"] != "3" {
			t.Fatalf("metadata %v", gotMeta)
		}
	}
	got, gm, err := Decode(buf.Bytes(), nil)
	check(got, gm, err)
	got, gm, err = Decode(buf.Bytes(), &Options{Layout: m.Layout, RejectNonFinite: true})
	check(got, gm, err)
	if got.Layout != m.Layout {
		t.Fatalf("expected layout pointer not shared")
	}
	got, gm, err = Read(bytes.NewReader(buf.Bytes()), int64(buf.Len()), nil)
	check(got, gm, err)
	got, gm, err = Read(bytes.NewReader(buf.Bytes()), -1, &Options{Layout: m.Layout})
	check(got, gm, err)

	// Portable (big-endian style) path produces the same bytes.
	littleEndian = false
	defer func() { littleEndian = true }()
	var buf2 bytes.Buffer
	if _, err := Encode(&buf2, m, meta); err != nil || !bytes.Equal(buf2.Bytes(), buf.Bytes()) {
		t.Fatalf("portable encoder differs (err %v)", err)
	}
	app, _ = AppendEncode(nil, m, meta)
	if !bytes.Equal(app, buf.Bytes()) {
		t.Fatalf("portable AppendEncode differs")
	}
	got, gm, err = Decode(buf.Bytes(), nil)
	check(got, gm, err)
	got, gm, err = Read(bytes.NewReader(buf.Bytes()), -1, nil)
	check(got, gm, err)
}

// TestGolden pins the exact bytes the reference serializer writes for a file
// whose tensors are already in name order (the reference sorts by dtype then
// name; for one dtype and sorted names our layout order is the same).
func TestGolden(t *testing.T) {
	l := mustLayout(t, model.Spec{Name: "a", Shape: []int{2}}, model.Spec{Name: "b", Shape: []int{1, 1}})
	m := &model.Model{Layout: l, Data: []float32{1, -2, 0.5}}
	var buf bytes.Buffer
	if _, err := Encode(&buf, m, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	hdr := `{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]}}`
	for len(hdr)%8 != 0 {
		hdr += " "
	}
	want := file(hdr, []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0, 0, 0, 0, 0x3f})
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("got\n%q\nwant\n%q", buf.Bytes(), want)
	}
	// Without metadata the reference omits the key.
	buf.Reset()
	Encode(&buf, m, nil)
	if !bytes.HasPrefix(buf.Bytes()[8:], []byte(`{"a":`)) {
		t.Fatalf("header %q", buf.Bytes()[8:])
	}
}

func TestDecodeValid(t *testing.T) {
	f := func(name, header string, data []byte, wantNames string, wantData []float32) {
		t.Helper()
		m, _, err := Decode(file(header, data), nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var names []string
		for _, p := range m.Layout.Params {
			names = append(names, p.Name)
		}
		if strings.Join(names, ",") != wantNames {
			t.Fatalf("%s: names %v, want %s", name, names, wantNames)
		}
		for i := range wantData {
			if m.Data[i] != wantData[i] {
				t.Fatalf("%s: data %v, want %v", name, m.Data, wantData)
			}
		}
	}
	one := []byte{0, 0, 0x80, 0x3f}
	two := []byte{0, 0, 0, 0x40}
	f("offset order beats header order", `{"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`,
		append(append([]byte{}, one...), two...), "x,y", []float32{1, 2})
	f("whitespace and tab padding", "{ \"x\" : {\"shape\":[1],\"dtype\":\"F32\",\"data_offsets\":[0,4]} }\n\t  ", one, "x", []float32{1})
	f("empty file", `{}      `, nil, "", nil)
	f("metadata only", `{"__metadata__":{}}`, nil, "", nil)
}

func TestDecodeExpectedLayout(t *testing.T) {
	l := mustLayout(t, model.Spec{Name: "y", Shape: []int{1}}, model.Spec{Name: "x", Shape: []int{2}})
	// File order x then y; layout order y then x.
	b := file(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`,
		[]byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40})
	m, _, err := Decode(b, &Options{Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if m.Data[0] != 3 || m.Data[1] != 1 || m.Data[2] != 2 {
		t.Fatalf("data %v", m.Data)
	}
	m, _, err = Read(bytes.NewReader(b), -1, &Options{Layout: l})
	if err != nil || m.Data[0] != 3 || m.Data[1] != 1 || m.Data[2] != 2 {
		t.Fatalf("Read: %v %v", m, err)
	}

	f := func(specs []model.Spec, want string) {
		t.Helper()
		_, _, err := Decode(b, &Options{Layout: mustLayout(t, specs...)})
		if !errors.Is(err, ErrLayout) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want ErrLayout containing %q", err, want)
		}
	}
	f([]model.Spec{{Name: "x", Shape: []int{2}}}, "2 tensors")
	f([]model.Spec{{Name: "x", Shape: []int{2}}, {Name: "z", Shape: []int{1}}}, `unexpected tensor "y"`)
	f([]model.Spec{{Name: "x", Shape: []int{1, 2}}, {Name: "y", Shape: []int{1}}}, "shape")
}

func TestDecodeInvalid(t *testing.T) {
	four := []byte{0, 0, 0x80, 0x3f}
	f := func(b []byte, want string) {
		t.Helper()
		_, _, err := Decode(b, &Options{RejectNonFinite: true})
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Decode: got %v, want error containing %q", err, want)
		}
		_, _, err = Read(bytes.NewReader(b), int64(len(b)), &Options{RejectNonFinite: true})
		if err == nil || !errors.Is(err, ErrInvalid) {
			t.Fatalf("Read(size): got %v, want error", err)
		}
		_, _, err = Read(bytes.NewReader(b), -1, &Options{RejectNonFinite: true})
		if err == nil || !errors.Is(err, ErrInvalid) {
			t.Fatalf("Read(-1): got %v, want error", err)
		}
	}
	tensor := func(dtype, shape, offs string) string {
		return `{"t":{"dtype":"` + dtype + `","shape":` + shape + `,"data_offsets":` + offs + `}}`
	}
	f(nil, "shorter than")
	f([]byte{1, 2, 3}, "shorter than")
	f(binary.LittleEndian.AppendUint64(nil, MaxHeaderBytes+1), "exceeds the limit")
	f(binary.LittleEndian.AppendUint64(nil, math.MaxUint64), "exceeds the limit")
	f(binary.LittleEndian.AppendUint64(nil, 16), "runs past the end")
	f(file("\xff{}", nil), "UTF-8")
	f(file(" {}", nil), "start with")
	f(file("[]", nil), "start with")
	f(file("{", nil), "malformed")
	f(file(`{"a":}`, nil), "malformed")
	f(file(`{"a":1}`, nil), "not an object")
	f(file(`{} x`, nil), "trailing")
	f(file(`{}{}`, nil), "trailing")
	f(file(`{}`+"\x00", nil), "trailing")
	f(file(tensor("F16", "[2]", "[0,4]"), four), `dtype "F16"`)
	f(file(tensor("BF16", "[2]", "[0,4]"), four), `only F32`)
	f(file(tensor("F64", "[1]", "[0,8]"), make([]byte, 8)), `dtype "F64"`)
	f(file(`{"t":{"dtype":3,"shape":[1],"data_offsets":[0,4]}}`, four), "dtype is not a string")
	f(file(tensor("F32", "[]", "[0,4]"), four), "scalar")
	f(file(tensor("F32", "[0]", "[0,0]"), nil), "zero dimension")
	f(file(tensor("F32", "[-1]", "[0,4]"), four), "shape is not")
	f(file(tensor("F32", "[1.5]", "[0,4]"), four), "shape is not")
	f(file(tensor("F32", "null", "[0,4]"), four), "shape is not")
	f(file(tensor("F32", "[65536,65536]", "[0,4]"), four), "too large")
	f(file(tensor("F32", "[1]", "[0]"), four), "data_offsets")
	f(file(tensor("F32", "[1]", "[0,4,8]"), four), "data_offsets")
	f(file(tensor("F32", "[1]", "[-4,0]"), four), "data_offsets")
	f(file(tensor("F32", "[1]", "[0,18446744073709551615]"), four), "out of range")
	f(file(tensor("F32", "[1]", "[4,0]"), four), "gap")
	f(file(tensor("F32", "[1]", "[0,8]"), make([]byte, 8)), "needs 4")
	f(file(tensor("F32", "[2]", "[0,4]"), four), "needs 8")
	f(file(tensor("F32", "[1]", "[4,8]"), make([]byte, 8)), "gap")
	f(file(tensor("F32", "[1]", "[0,4]"), nil), "data section has 0")
	f(file(tensor("F32", "[1]", "[0,4]"), make([]byte, 8)), "data section has 8")
	f(file(`{"t":{"dtype":"F32","shape":[1]}}`, four), "needs dtype")
	f(file(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, four), `unknown key "x"`)
	f(file(`{"t":{"DTYPE":"F32","shape":[1],"data_offsets":[0,4]}}`, four), `unknown key "DTYPE"`)
	f(file(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, four), "duplicate header key")
	f(file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 8)), "overlaps")
	f(file(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), "overlaps")
	f(file(`{"__metadata__":[]}`, nil), "__metadata__ must be")
	f(file(`{"__metadata__":{"a":1}}`, nil), "not a string")
	f(file(`{"__metadata__":{"a":{}}}`, nil), "not a string")
	f(file(`{"__metadata__":{"a":"1","a":"2"}}`, nil), "duplicate __metadata__")
	f(file(`{"__metadata__":{},"__metadata__":{}}`, nil), "duplicate header key")
	f(file(`{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, four), "empty parameter name")
	f(file(tensor("F32", "[1]", "[0,4]"), []byte{0, 0, 0xc0, 0x7f}), "NaN")
	f(file(tensor("F32", "[1]", "[0,4]"), []byte{0, 0, 0x80, 0xff}), "-Inf")
}

func TestNonFiniteAllowedByDefault(t *testing.T) {
	b := file(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, []byte{0, 0, 0xc0, 0x7f})
	m, _, err := Decode(b, nil)
	if err != nil || !math.IsNaN(float64(m.Data[0])) {
		t.Fatalf("got %v, %v", m, err)
	}
	_, _, err = Decode(b, &Options{RejectNonFinite: true})
	if !errors.Is(err, ErrNonFinite) {
		t.Fatalf("got %v", err)
	}
}

func TestHeaderLimitOption(t *testing.T) {
	b := file(`{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4))
	if _, _, err := Decode(b, &Options{MaxHeaderBytes: 16}); err == nil || !strings.Contains(err.Error(), "exceeds the limit 16") {
		t.Fatalf("got %v", err)
	}
	if _, _, err := Read(bytes.NewReader(b), -1, &Options{MaxDataBytes: 2}); err == nil || !strings.Contains(err.Error(), "exceeds the limit 2") {
		t.Fatalf("got %v", err)
	}
}

// A stream claiming a huge header but holding little must not allocate it.
func TestReadShortStreamDoesNotAllocate(t *testing.T) {
	b := binary.LittleEndian.AppendUint64(nil, MaxHeaderBytes)
	b = append(b, `{"t":`...)
	before := memAlloc()
	if _, _, err := Read(bytes.NewReader(b), -1, nil); err == nil {
		t.Fatal("no error")
	}
	if got := memAlloc() - before; got > 1<<20 {
		t.Fatalf("allocated %.0f bytes for a %d-byte input", got, len(b))
	}
}

func TestEncodeErrors(t *testing.T) {
	l := mustLayout(t, model.Spec{Name: "t", Shape: []int{2}})
	if _, err := Encode(&bytes.Buffer{}, &model.Model{Layout: l, Data: make([]float32, 3)}, nil); err == nil {
		t.Fatal("size mismatch accepted")
	}
	if _, err := Encode(&bytes.Buffer{}, nil, nil); err == nil {
		t.Fatal("nil model accepted")
	}
	bad := mustLayout(t, model.Spec{Name: MetadataKey, Shape: []int{1}})
	if _, err := Encode(&bytes.Buffer{}, model.New(bad), nil); err == nil {
		t.Fatal("reserved name accepted")
	}
	w := &failWriter{after: 10}
	if _, err := Encode(w, model.New(l), nil); err == nil {
		t.Fatal("write error lost")
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.after {
		n := w.after
		w.after = 0
		return n, errors.New("disk full")
	}
	w.after -= len(p)
	return len(p), nil
}

// Metadata keys and tensor names with characters JSON must escape survive.
func TestEscaping(t *testing.T) {
	l := mustLayout(t, model.Spec{Name: "a\"b\\c\n<é>", Shape: []int{1}})
	m := &model.Model{Layout: l, Data: []float32{4}}
	meta := map[string]string{"k\"": "v\u2028\x01"}
	b, err := AppendEncode(nil, m, meta)
	if err != nil {
		t.Fatal(err)
	}
	got, gm, err := Decode(b, nil)
	if err != nil || got.Layout.Params[0].Name != l.Params[0].Name || gm["k\""] != "v\u2028\x01" {
		t.Fatalf("got %v %v %v", got, gm, err)
	}
}
