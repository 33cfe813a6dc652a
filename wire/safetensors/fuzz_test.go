package safetensors

import (
	"bytes"
	"runtime"
	"testing"

	"github.com/fedcluster/fedcluster/node/model"
)

func memAlloc() float64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.TotalAlloc)
}

func FuzzDecode(f *testing.F) {
	l, _ := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{2, 3}}, {Name: "b", Shape: []int{2}}})
	m := model.New(l)
	for i := range m.Data {
		m.Data[i] = float32(i) - 3.5
	}
	good, _ := AppendEncode(nil, m, map[string]string{"fl_name": "x", "iteration": "1"})
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(file(`{"t":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}`, make([]byte, 2)))
	f.Add(file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 8)))
	f.Add(file(`{}`, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		m1, meta1, err1 := Decode(b, nil)
		m2, _, err2 := Read(bytes.NewReader(b), int64(len(b)), nil)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("Decode err %v, Read err %v", err1, err2)
		}
		_, _, err3 := Decode(b, &Options{Layout: l})
		if err1 != nil {
			if err3 == nil {
				t.Fatalf("expected-layout decode accepted what plain decode refused: %v", err1)
			}
			return
		}
		if m1.SHA256() != m2.SHA256() || !m1.Layout.Equal(m2.Layout) {
			t.Fatal("Decode and Read disagree")
		}
		// Whatever decodes re-encodes and decodes to the same model.
		again, err := AppendEncode(nil, m1, meta1)
		if err != nil {
			t.Fatal(err)
		}
		m3, meta3, err := Decode(again, nil)
		if err != nil {
			t.Fatalf("re-encoded file refused: %v", err)
		}
		if m3.SHA256() != m1.SHA256() || !m3.Layout.Equal(m1.Layout) || len(meta3) != len(meta1) {
			t.Fatal("re-encode changed the model")
		}
	})
}
