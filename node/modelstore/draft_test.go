package modelstore

import (
	"errors"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/fedcluster/fedcluster/node/model"
)

// A draft filled piece by piece, out of order or in order, hashes and
// maps to the model written, seals into a checkpoint that commits as the mapped model
// itself and recovers like any other; a draft aborted or abandoned leaves
// no file behind.
func TestDraft(t *testing.T) {
	d := t.TempDir()
	s, err := Open(Options{Dir: d, FLName: "lenet", Keep: 2, MemKeep: 1, Logger: zaptest.NewLogger(t), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Draft(1); !errors.Is(err, ErrNoDraft) {
		t.Fatalf("a draft without mapped checkpoints: %v", err)
	}
	s.SetMapCommitted(true)
	_, m0 := s.Latest()
	want := next(m0, 1)
	dr, err := s.Draft(1)
	if err != nil {
		t.Fatal(err)
	}
	const piece = 10_000
	for off := (len(want.Data) - 1) / piece * piece; off >= 0; off -= piece {
		if err := dr.WriteFloats(off, want.Data[off:min(off+piece, len(want.Data))]); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []struct{ off, n int }{{-1, 4}, {len(want.Data), 4}, {len(want.Data) - 1, 8}, {0, 3}} {
		if err := dr.WriteAt(bad.off, make([]byte, bad.n)); err == nil {
			t.Fatalf("%d bytes at element %d written", bad.n, bad.off)
		}
	}
	raw := make([]byte, 8)
	if err := dr.ReadAt(len(want.Data)-2, raw); err != nil || string(raw) != string(model.FloatBytes(want.Data[len(want.Data)-2:])) {
		t.Fatalf("read back %x (err %v)", raw, err)
	}
	m, sum, err := dr.Model()
	if err != nil || sum != want.SHA256() || m.SHA256() != sum {
		t.Fatalf("draft model hashes to %s, want %s (err %v)", sum, want.SHA256(), err)
	}
	// Before the seal the file's header is a placeholder: a peer fetching
	// the model still gets its true checkpoint bytes.
	enc, err := s.EncodeModel(m, 1, sum)
	if wantEnc, _ := Encode(want, Meta{FLName: "lenet", Iteration: 1, SHA256: sum}); err != nil || string(enc) != string(wantEnc) {
		t.Fatalf("EncodeModel of a draft's model differs from Encode (err %v)", err)
	}
	if err := dr.Seal().Commit(); err != nil {
		t.Fatal(err)
	}
	it, got := s.Latest()
	if b, ok := s.Backing(got); it != 1 || got != m || !ok || b.File == nil {
		t.Fatalf("latest %d is not the draft's mapped model (mapped %v)", it, ok)
	}

	// Written in order, the weights are hashed as they come.
	want2 := next(want, 1)
	dr, err = s.Draft(2)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(want2.Data); off += piece {
		if err := dr.WriteFloats(off, want2.Data[off:min(off+piece, len(want2.Data))]); err != nil {
			t.Fatal(err)
		}
	}
	if _, sum, err := dr.Model(); err != nil || sum != want2.SHA256() {
		t.Fatalf("in-order draft hashes to %s, want %s (err %v)", sum, want2.SHA256(), err)
	}
	if err := dr.Seal().Commit(); err != nil {
		t.Fatal(err)
	}
	want = want2

	abort, err := s.Draft(3)
	if err != nil {
		t.Fatal(err)
	}
	abort.Abort()
	if _, err := s.Draft(4); err != nil { // abandoned: a crash before the seal
		t.Fatal(err)
	}
	r, err := Open(Options{Dir: d, FLName: "lenet", Keep: 2, Seed: 1, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if it, got := r.Latest(); it != 2 || got.SHA256() != want.SHA256() {
		t.Fatalf("recovered iteration %d", it)
	}
	es, _ := os.ReadDir(d)
	for _, e := range es {
		if strings.Contains(e.Name(), tmpMarker) {
			t.Fatalf("a draft's file %s is left", e.Name())
		}
	}
}
