package modelstore

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/fedcluster/fedcluster/node/model"
)

var benchSink int

func bigModel(b *testing.B) *model.Model {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10_000, 1_000}}})
	if err != nil {
		b.Fatal(err)
	}
	m := model.New(l)
	for i := range m.Data {
		m.Data[i] = float32(i%977) * 0.001
	}
	return m
}

// BenchmarkPut10M is a checkpointed Put of a 10M-float (40 MB) model on the
// OS file system: encode, write, fsync, rename, fsync dir, prune.
func BenchmarkPut10M(b *testing.B) {
	m := bigModel(b)
	s, err := Open(Options{Dir: b.TempDir(), FLName: "bench", Initial: m})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(4 * len(m.Data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Put(uint64(i+1), m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPut10MMemFS isolates the encoding and SHA-256 cost from the disk.
func BenchmarkPut10MMemFS(b *testing.B) {
	m := bigModel(b)
	s, err := Open(Options{Dir: "/d", FLName: "bench", Initial: m, FS: NewMemFS()})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(4 * len(m.Data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Put(uint64(i+1), m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteFileBaseline is the same bytes written with a plain
// os.WriteFile: no fsync, no rename, no checksum.
func BenchmarkWriteFileBaseline(b *testing.B) {
	m := bigModel(b)
	buf, err := Encode(m, Meta{FLName: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.SetBytes(int64(4 * len(m.Data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := filepath.Join(dir, "f"+strconv.Itoa(i%3))
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			b.Fatal(err)
		}
		benchSink += len(buf)
	}
}

// BenchmarkWriteFileSyncBaseline adds the fsync Put pays for durability.
func BenchmarkWriteFileSyncBaseline(b *testing.B) {
	m := bigModel(b)
	buf, _ := Encode(m, Meta{FLName: "bench"})
	dir := b.TempDir()
	b.SetBytes(int64(4 * len(m.Data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f, err := os.Create(filepath.Join(dir, "f"+strconv.Itoa(i%3)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

// BenchmarkSHA256_10M is the checksum Put computes for the metadata.
func BenchmarkSHA256_10M(b *testing.B) {
	m := bigModel(b)
	b.SetBytes(int64(4 * len(m.Data)))
	for i := 0; i < b.N; i++ {
		benchSink += len(m.SHA256())
	}
}
