package modelstore

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"go.uber.org/zap/zaptest"

	"github.com/fedcluster/fedcluster/node/model"
)

// With SetMapCommitted, the newest model (recovered, then each committed
// one) is a mapping of its checkpoint: Backing gives the file and offset
// its weights lie at, the weights read back equal to what was put, the
// heap copy is not what the store keeps, and no checkpoint file is
// recycled as a spare (answers may still be sending it). A model whose
// checkpoint was removed stays readable, and keeps its backing, while it
// is referenced.
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
	// Evicted but still held (an answer being written), it is still sent
	// from its file, which still holds it though its name is gone.
	b, ok := s.Backing(first)
	if !ok {
		t.Fatal("an evicted model still held has no backing")
	}
	raw := make([]byte, 4*len(m0.Data))
	if _, err := b.File.ReadAt(raw, b.DataOffset); err != nil || string(raw) != string(model.FloatBytes(m0.Data)) {
		t.Fatalf("the evicted model's file does not hold it (err %v)", err)
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

// A mapped model that is stored again (a failed iteration) or shipped to
// a peer is copied from its checkpoint file: the copies are what the
// model holds, and its mapping stays out of the process's memory.
func TestMappedCopiesLeaveTheMappingUntouched(t *testing.T) {
	d := t.TempDir()
	s, err := Open(Options{Dir: d, FLName: "lenet", Keep: 2, MemKeep: 1, Logger: zaptest.NewLogger(t), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	s.SetMapCommitted(true)
	_, m0 := s.Latest()
	heap := next(m0, 1) // computed before m0's pages could matter: m0 is read once here
	if err := s.Put(1, heap.Clone()); err != nil {
		t.Fatal(err)
	}
	_, mm := s.Latest()
	if _, ok := s.Backing(mm); !ok {
		t.Fatal("the latest model is not mapped")
	}
	if r := resident(t, mm); r != 0 {
		t.Fatalf("%d bytes of a fresh mapping resident", r)
	}

	enc, ok, err := s.Encoded(1)
	want, _ := Encode(heap, Meta{FLName: "lenet", Iteration: 1, SHA256: heap.SHA256()})
	if err != nil || !ok || string(enc) != string(want) {
		t.Fatalf("Encoded of a mapped model differs from Encode (err %v)", err)
	}
	if r := resident(t, mm); r != 0 {
		t.Fatalf("encoding the model brought %d bytes of its mapping into memory", r)
	}
	if err := s.Stage(2, mm, "").Commit(); err != nil {
		t.Fatal(err)
	}
	if sum, _ := s.Sum(2); sum != heap.SHA256() {
		t.Fatalf("iteration 2 stored as %s, want the copied %s", sum, heap.SHA256())
	}
	if r := resident(t, mm); r != 0 {
		t.Fatalf("copying the model brought %d bytes of its mapping into memory", r)
	}
	_, m2 := s.Latest()
	if err := s.Stage(3, m2, strings.Repeat("0", 64)).Commit(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("a copy whose checksum is not the one given: %v", err)
	}
	if es, _ := os.ReadDir(d); len(es) != 2 {
		t.Fatalf("%d files on disk, want the 2 kept checkpoints", len(es))
	}
	// The measure itself: reading the mapping makes it resident.
	if mm.SHA256() != heap.SHA256() || resident(t, mm) == 0 {
		t.Fatal("a read mapping is not resident: the check above proves nothing")
	}
}

// resident is the resident size of the mapping holding m's weights, from
// /proc/self/smaps.
func resident(t *testing.T, m *model.Model) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	addr := uint64(uintptr(unsafe.Pointer(&m.Data[0])))
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && l <= addr && addr < h
			continue
		}
		if in && f[0] == "Rss:" && len(f) >= 2 {
			kb, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no mapping holds the model")
	return 0
}
