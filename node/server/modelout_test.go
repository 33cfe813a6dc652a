package server

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
)

// TestModelOut: a large model's all-reduce across servers writes into a
// checkpoint draft, anything else into a heap model; both make the same
// model from the same sums and pieces, a draft that is not staged leaves
// no file, and a staged one commits as the store's mapped model.
func TestModelOut(t *testing.T) {
	dir := t.TempDir()
	st, err := modelstore.Open(modelstore.Options{Dir: dir, FLName: "lenet", Keep: 2, MemKeep: 1, Logger: zaptest.NewLogger(t), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	st.SetMapCommitted(true)
	_, m0 := st.Latest()
	L := m0.Layout.Size
	e, err := agg.New("purego")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	acc, err := e.NewAccumulator(L)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	acc.Fold(0, m0.Data, 4) // scaled by 1/4 below: m0 again
	temps := func() int {
		es, _ := os.ReadDir(dir)
		n := 0
		for _, e := range es {
			if strings.Contains(e.Name(), ".tmp") {
				n++
			}
		}
		return n
	}

	p := &plane{store: st, layout: m0.Layout}
	// fill writes the model as an all-reduce over two servers would: our
	// half reduced from the sum, the peer's half as a raw piece, and
	// reads our half back as the all-gather sends it.
	fill := func(out modelOut) (*model.Model, string) {
		t.Helper()
		half := L / 2
		if err := out.reduce(acc, 0, 0, half, 0.25); err != nil {
			t.Fatal(err)
		}
		if err := out.put(half, model.FloatBytes(m0.Data[half:])); err != nil {
			t.Fatal(err)
		}
		b, err := out.appendFloats([]byte("hdr"), 10, 5)
		if err != nil || !bytes.Equal(b[3:], model.FloatBytes(m0.Data[10:15])) {
			t.Fatalf("appendFloats read back %x (err %v)", b, err)
		}
		m, sha, err := out.finish()
		if err != nil || sha != m0.SHA256() || m.SHA256() != sha {
			t.Fatalf("the output hashes to %s, want %s (err %v)", sha, m0.SHA256(), err)
		}
		return m, sha
	}

	for _, c := range []struct {
		large bool
		parts int
		draft bool
	}{{false, 2, false}, {true, 1, false}, {true, 2, true}} {
		p.large = c.large
		out, err := p.newOut(1, c.parts)
		if err != nil {
			t.Fatal(err)
		}
		if _, isDraft := out.(*draftOut); isDraft != c.draft {
			t.Fatalf("large %v, %d servers: a draft %v, want %v", c.large, c.parts, isDraft, c.draft)
		}
		fill(out)
		out.abort()
		if n := temps(); n != 0 {
			t.Fatalf("large %v, %d servers: %d temporary files after abort", c.large, c.parts, n)
		}
	}

	out, err := p.newOut(1, 2)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := fill(out)
	if err := out.stage().Commit(); err != nil {
		t.Fatal(err)
	}
	if it, got := st.Latest(); it != 1 || got != m {
		t.Fatalf("latest is iteration %d, not the draft's model", it)
	} else if _, ok := st.Backing(got); !ok {
		t.Fatal("the committed draft is not mapped")
	}
	if n := temps(); n != 0 {
		t.Fatalf("%d temporary files after the commit", n)
	}
}
