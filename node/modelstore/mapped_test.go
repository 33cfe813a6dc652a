package modelstore

import (
	"encoding/binary"
	"math"
	"os"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

// With SetMapCommitted, the newest model (recovered, then each committed
// one) is a mapping of its checkpoint: Backing gives the file and offset
// its weights lie at, the weights read back equal to what was put, the
// heap copy is not what the store keeps, and no checkpoint file is
// recycled as a spare (answers may still be sending it). A model whose
// checkpoint was removed stays readable while it is referenced.
func TestMapCommitted(t *testing.T) {
	d := t.TempDir()
	s, err := Open(Options{Dir: d, FLName: "lenet", Keep: 2, MemKeep: 1, Logger: zaptest.NewLogger(t), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, m0 := s.Latest()
	want0 := m0.SHA256()
	s.SetMapCommitted(true)
	it, got := s.Latest()
	if _, ok := s.Backing(got); it != 0 || !ok || got == m0 || got.SHA256() != want0 {
		t.Fatalf("the recovered newest model is not mapped (iteration %d, mapped %v)", it, ok)
	}
	first := got // referenced: must stay readable after its file goes
	m := m0
	for i := uint64(1); i <= 4; i++ {
		m = next(m, 1)
		m.Data[len(m.Data)-1] = float32(i) * 1000
		put := m.Clone()
		if err := s.Put(i, put); err != nil {
			t.Fatal(err)
		}
		it, got := s.Latest()
		b, ok := s.Backing(got)
		if it != i || !ok || got == put {
			t.Fatalf("iteration %d: latest %d mapped %v", i, it, ok)
		}
		if got.SHA256() != m.SHA256() {
			t.Fatalf("iteration %d: the mapped model differs from the one put", i)
		}
		// The file holds the last weight where Backing says.
		var w [4]byte
		if _, err := b.File.ReadAt(w[:], b.DataOffset+4*int64(len(m.Data)-1)); err != nil {
			t.Fatal(err)
		}
		if v := math.Float32frombits(binary.LittleEndian.Uint32(w[:])); v != float32(i)*1000 {
			t.Fatalf("iteration %d: the file has %v at the last weight", i, v)
		}
		es, _ := os.ReadDir(d)
		for _, e := range es {
			if strings.Contains(e.Name(), tmpMarker) {
				t.Fatalf("iteration %d: a spare or temporary file %s beside mapped checkpoints", i, e.Name())
			}
		}
	}
	if _, ok := s.Backing(first); ok {
		t.Fatal("an evicted model still has a backing")
	}
	runtime.GC()
	if first.SHA256() != want0 {
		t.Fatal("a referenced model changed once its checkpoint was removed")
	}
	es, _ := os.ReadDir(d)
	if len(es) != 2 {
		t.Fatalf("%d files on disk, want the 2 kept checkpoints", len(es))
	}

	// Recovery reads mapped checkpoints like any other.
	r, err := Open(Options{Dir: d, FLName: "lenet", Keep: 2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if it, got := r.Latest(); it != 4 || got.SHA256() != m.SHA256() {
		t.Fatalf("recovered iteration %d", it)
	}
}

// Without a checkpoint dir on the operating system's file system there is
// nothing to map: models stay in memory.
func TestMapCommittedNeedsOSFiles(t *testing.T) {
	for _, o := range []Options{
		{Dir: dir, FLName: "lenet", FS: NewMemFS(), Seed: 1},
		{FLName: "lenet", Seed: 1},
	} {
		s, err := Open(o)
		if err != nil {
			t.Fatal(err)
		}
		s.SetMapCommitted(true)
		_, m := s.Latest()
		if err := s.Put(1, next(m, 1)); err != nil {
			t.Fatal(err)
		}
		if _, got := s.Latest(); got == nil {
			t.Fatal("no model")
		} else if _, ok := s.Backing(got); ok {
			t.Fatalf("%+v: a model was mapped", o)
		}
	}
}
