package safetensors

import (
	"bytes"
	"io"
	"testing"

	"github.com/fedcluster/fedcluster/node/model"
)

var benchSink int

func benchModel(b *testing.B) *model.Model {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10_000, 1_000}}})
	if err != nil {
		b.Fatal(err)
	}
	return model.New(l)
}

func BenchmarkEncode10M(b *testing.B) {
	m := benchModel(b)
	b.SetBytes(int64(4 * len(m.Data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n, err := Encode(io.Discard, m, map[string]string{"fl_name": "x"})
		if err != nil {
			b.Fatal(err)
		}
		benchSink += int(n)
	}
}

func BenchmarkDecode10M(b *testing.B) {
	m := benchModel(b)
	buf, _ := AppendEncode(nil, m, nil)
	b.SetBytes(int64(4 * len(m.Data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got, _, err := Read(bytes.NewReader(buf), int64(len(buf)), &Options{Layout: m.Layout})
		if err != nil {
			b.Fatal(err)
		}
		benchSink += len(got.Data)
	}
}
