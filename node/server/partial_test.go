package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
)

// TestStagedResult: an aggregate's checkpoint written ahead is committed
// only for the agreed checksum; a retried attempt's result replaces the
// earlier one's file, and dropping the partial removes what no one took.
func TestStagedResult(t *testing.T) {
	dir := t.TempDir()
	st, err := modelstore.Open(modelstore.Options{Dir: dir, FLName: "lenet", Logger: zaptest.NewLogger(t), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, m0 := st.Latest()
	shifted := func(d float32) *model.Model {
		m := m0.Clone()
		for i := range m.Data {
			m.Data[i] += d
		}
		return m
	}
	stage := func(it uint64, m *model.Model, sha string) *staging {
		g := &staging{done: make(chan struct{})}
		go func() { defer close(g.done); g.st = st.Stage(it, m, sha) }()
		return g
	}
	temps := func() int {
		t.Helper()
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range es {
			if strings.Contains(e.Name(), ".tmp") {
				n++
			}
		}
		return n
	}
	e, err := agg.New("purego")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	newPA := func(it uint64) *partial {
		acc, err := e.NewAccumulator(m0.Layout.Size)
		if err != nil {
			t.Fatal(err)
		}
		return newPartial(it, acc)
	}

	pa := newPA(1)
	a1, a2 := shifted(1), shifted(2)
	pa.setResult(a1, a1.SHA256(), func() *staging { return stage(1, a1, a1.SHA256()) })
	pa.setResult(a2, a2.SHA256(), func() *staging { return stage(1, a2, a2.SHA256()) }) // attempt 2
	if m, g := pa.takeResult(a1.SHA256()); m != nil || g != nil {
		t.Fatal("the replaced attempt's result was handed out")
	}
	m, g := pa.takeResult(a2.SHA256())
	if m != a2 || g == nil {
		t.Fatal("the agreed result or its staged checkpoint is missing")
	}
	if err := g.wait().Commit(); err != nil {
		t.Fatal(err)
	}
	if sum, ok := st.Sum(1); !ok || sum != a2.SHA256() {
		t.Fatal("iteration 1 is not the agreed model")
	}
	if n := temps(); n != 0 {
		t.Fatalf("%d temporary checkpoints left after commit", n)
	}
	if _, err := os.Stat(filepath.Join(dir, modelstore.CheckpointName("lenet", 1))); err != nil {
		t.Fatal(err)
	}

	// A result no one agreed on (the iteration failed) goes with the partial.
	pb := newPA(2)
	b := shifted(3)
	pb.setResult(b, b.SHA256(), func() *staging { return stage(2, b, b.SHA256()) })
	pb.drop(func(a agg.Accumulator) { a.Close() })
	if n := temps(); n != 0 {
		t.Fatalf("%d temporary checkpoints left after drop", n)
	}
	if st.Has(2) {
		t.Fatal("a dropped result was stored")
	}
	// An all-reduce that ends after its partial was dropped stages nothing.
	pb.setResult(b, b.SHA256(), func() *staging {
		t.Fatal("a dropped partial staged a checkpoint")
		return nil
	})
	if _, g := pb.takeResult(b.SHA256()); g != nil {
		t.Fatal("a dropped partial handed out a staged checkpoint")
	}
}
