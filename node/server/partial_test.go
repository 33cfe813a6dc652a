package server

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
	"github.com/fedcluster/fedcluster/wire/peer"
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
	pb.drop(func(agg.Accumulator) { t.Fatal("a second drop gave the accumulator again") })
	if n := temps(); n != 0 {
		t.Fatalf("%d temporary checkpoints left after drop", n)
	}
	if st.Has(2) {
		t.Fatal("a dropped result was stored")
	}
	// An all-reduce that ends after its partial was dropped stages nothing.
	took := pb.setResult(b, b.SHA256(), func() *staging {
		t.Fatal("a dropped partial staged a checkpoint")
		return nil
	})
	if took {
		t.Fatal("a dropped partial took a result")
	}
	if _, g := pb.takeResult(b.SHA256()); g != nil {
		t.Fatal("a dropped partial handed out a staged checkpoint")
	}
}

// TestConsumePieces: pieces of a running all-reduce are summed or copied
// where their header says, acknowledged only for paced shares, and a piece
// outside this server's chunk, beyond its sender's share or with another
// data size sum fails the attempt without touching the sum.
func TestConsumePieces(t *testing.T) {
	e, err := agg.New("purego")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const size, parts, me = 30, 3, 1 // chunks [0,10) [10,20) [20,30)
	off, cnt := peer.Split(size, parts, me)
	newRun := func() (*plane, *inbox) {
		var p plane
		p.rounds.init()
		ib := p.rounds.get(roundKey{1, 1})
		sum, err := e.NewAccumulator(cnt)
		if err != nil {
			t.Fatal(err)
		}
		l, _ := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{size}}})
		ib.run = &arRun{me: me, parts: parts, size: size, off: off, cnt: cnt, sum: sum, out: &heapOut{m: model.New(l)}}
		return &p, ib
	}
	f64 := func(vals ...float64) []byte {
		b := make([]byte, 0, 8*len(vals))
		for _, v := range vals {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
		return b
	}
	ones := func(n int) []byte {
		v := make([]float64, n)
		for i := range v {
			v[i] = 1
		}
		return f64(v...)
	}

	p, ib := newRun()
	h := peer.Header{Iteration: 1, Attempt: 1, From: 0, Chunk: me, Offset: uint64(off), Count: 4, N: 5}
	if ack := p.consumeLocked(ib, ctl.KindPartial, h, ones(4)); ack || ib.err != nil {
		t.Fatalf("small share: ack %v, err %v", ack, ib.err)
	}
	h.Offset, h.Count = uint64(off+4), uint64(cnt-4)
	p.consumeLocked(ib, ctl.KindPartial, h, ones(cnt-4))
	if ib.gotP[0] != cnt || ib.nByFrom[0] != 5 {
		t.Fatalf("received %d elements, n %v", ib.gotP[0], ib.nByFrom[0])
	}
	got := make([]float32, cnt)
	ib.run.sum.Result(got, 0, 1)
	for i, v := range got {
		if v != 1 {
			t.Fatalf("sum[%d] = %v after one sender's share of ones", i, v)
		}
	}
	// A reduced piece of participant 2's chunk lands in the model.
	r := peer.Header{Iteration: 1, Attempt: 1, From: 2, Chunk: 2, Offset: 20, Count: 2, N: 9}
	raw := append(binary.LittleEndian.AppendUint32(nil, math.Float32bits(0.5)), binary.LittleEndian.AppendUint32(nil, math.Float32bits(-2))...)
	p.consumeLocked(ib, ctl.KindReduced, r, raw)
	if d := ib.run.out.(*heapOut).m.Data; d[20] != 0.5 || d[21] != -2 || ib.gotR[2] != 2 || ib.total != 9 {
		t.Fatalf("reduced piece: %v %v, got %d, total %v", d[20], d[21], ib.gotR[2], ib.total)
	}

	bad := []struct {
		name string
		kind frame.Kind
		h    peer.Header
		data []byte
	}{
		{"another owner's chunk", ctl.KindPartial, peer.Header{From: 2, Chunk: 2, Offset: 20, Count: 1}, ones(1)},
		{"outside this chunk", ctl.KindPartial, peer.Header{From: 2, Chunk: me, Offset: uint64(off + cnt - 1), Count: 2}, ones(2)},
		{"beyond the share", ctl.KindPartial, peer.Header{From: 0, Chunk: me, Offset: uint64(off), Count: 1}, ones(1)},
		{"from itself", ctl.KindPartial, peer.Header{From: me, Chunk: me, Offset: uint64(off), Count: 1}, ones(1)},
		{"not a participant", ctl.KindPartial, peer.Header{From: 7, Chunk: me, Offset: uint64(off), Count: 1}, ones(1)},
		{"reduced piece of another chunk", ctl.KindReduced, peer.Header{From: 0, Chunk: 2, Offset: 20, Count: 1, N: 9}, raw[:4]},
		{"another data size sum", ctl.KindReduced, peer.Header{From: 0, Chunk: 0, Offset: 0, Count: 1, N: 8}, raw[:4]},
	}
	for _, c := range bad {
		p, ib := newRun()
		ib.total = 9
		ib.gotP[0] = cnt // sender 0's share is complete
		before := make([]float32, cnt)
		ib.run.sum.Result(before, 0, 1)
		if ack := p.consumeLocked(ib, c.kind, c.h, c.data); ack || ib.err == nil {
			t.Fatalf("%s: accepted (ack %v)", c.name, ack)
		}
		after := make([]float32, cnt)
		ib.run.sum.Result(after, 0, 1)
		if !equal32(before, after) {
			t.Fatalf("%s: the sum changed", c.name)
		}
		if err := ib.wait(time.Now().Add(time.Second), func() bool { return false }); err == nil || !strings.Contains(err.Error(), "bad all-reduce piece") {
			t.Fatalf("%s: waiters see %v", c.name, err)
		}
	}

	// A reduced piece after this server's all-reduce ended reaches no
	// output (a draft may be closed by then).
	p, ib = newRun()
	out := ib.run.out.(*heapOut)
	ib.run.out = nil
	if ack := p.consumeLocked(ib, ctl.KindReduced, r, raw); ack || ib.err == nil {
		t.Fatal("a reduced piece was taken after the all-reduce ended")
	}
	if out.m.Data[20] != 0 || out.m.Data[21] != 0 || ib.gotR[2] != 0 {
		t.Fatal("a reduced piece after the all-reduce ended was written")
	}

	// A paced share is acknowledged.
	p, ib = newRun()
	ib.run.cnt = window*partialPiece + 1
	h = peer.Header{From: 0, Chunk: me, Offset: uint64(off), Count: 1}
	if !p.consumeLocked(ib, ctl.KindPartial, h, ones(1)) {
		t.Fatal("a piece of a paced share was not acknowledged")
	}
}

func equal32(a, b []float32) bool {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return len(a) == len(b)
}
