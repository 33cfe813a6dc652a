package modelstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/safetensors"
)

const dir = "/ckpt"

// next returns a model derived from m with every weight shifted by d.
func next(m *model.Model, d float32) *model.Model {
	c := m.Clone()
	for i := range c.Data {
		c.Data[i] += d
	}
	return c
}

func open(t *testing.T, fsys FS, mod func(*Options)) *Store {
	t.Helper()
	o := Options{Dir: dir, FLName: "lenet", FS: fsys, Logger: zaptest.NewLogger(t), Seed: 1}
	if mod != nil {
		mod(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkpoints lists the checkpoint files, without the spare a store keeps
// under a temporary name.
func checkpoints(t *testing.T, fsys FS) string {
	t.Helper()
	var cs []string
	for _, n := range strings.Fields(names(t, fsys)) {
		if strings.HasSuffix(n, ckptSuffix) {
			cs = append(cs, n)
		}
	}
	return strings.Join(cs, " ")
}

func names(t *testing.T, fsys FS) string {
	t.Helper()
	ns, err := fsys.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(ns, " ")
}

func TestOptionsValidate(t *testing.T) {
	f := func(o Options, want string) {
		t.Helper()
		err := o.Validate()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Fatalf("%+v: got %v, want %q", o, err, want)
		}
	}
	f(Options{FLName: "lenet"}, "")
	f(Options{}, "FLName is empty")
	f(Options{FLName: "a/b"}, "plain file name")
	f(Options{FLName: ".."}, "plain file name")
	f(Options{FLName: "x", Keep: -1}, "Keep")
}

func TestPutGetEvict(t *testing.T) {
	fsys := NewMemFS()
	s := open(t, fsys, nil)
	it, m0 := s.Latest()
	if it != 0 || m0.SHA256() != model.InitLeNet5(1).SHA256() {
		t.Fatalf("initial: iteration %d", it)
	}
	if got := names(t, fsys); got != "lenet_iteration_0.safetensors" {
		t.Fatalf("files %q", got)
	}
	m := m0
	for i := uint64(1); i <= 5; i++ {
		m = next(m, 1)
		if err := s.Put(i, m); err != nil {
			t.Fatal(err)
		}
		if it, got := s.Latest(); it != i || got != m {
			t.Fatalf("latest %d", it)
		}
		if sum, ok := s.Sum(i); !ok || sum != m.SHA256() {
			t.Fatalf("sum of %d", i)
		}
		if it, got, sum := s.LatestSum(); it != i || got != m || sum != m.SHA256() {
			t.Fatalf("LatestSum: %d %q", it, sum)
		}
		if got, sum, ok := s.GetSum(i); !ok || got != m || sum != m.SHA256() {
			t.Fatalf("GetSum(%d): %v %q", i, ok, sum)
		}
	}
	if _, _, ok := s.GetSum(2); ok {
		t.Fatal("GetSum of an evicted iteration")
	}
	if got := checkpoints(t, fsys); got != "lenet_iteration_3.safetensors lenet_iteration_4.safetensors lenet_iteration_5.safetensors" {
		t.Fatalf("files %q", got)
	}
	if got := s.Iterations(); len(got) != 4 || got[0] != 0 || got[1] != 3 || got[3] != 5 {
		t.Fatalf("kept %v", got)
	}
	if !s.Has(0) || s.Has(2) || !s.Has(3) {
		t.Fatal("Has")
	}
	if err := s.Put(5, m); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("got %v", err)
	}
	other := model.New(mustLayout(t))
	if err := s.Put(6, other); !errors.Is(err, ErrLayout) {
		t.Fatalf("got %v", err)
	}
	if err := s.Put(6, &model.Model{Layout: m.Layout, Data: m.Data[:3]}); err == nil {
		t.Fatal("short model accepted")
	}
	// Checkpoints decode to what was put, with metadata.
	b, _ := fsys.ReadFile(filepath.Join(dir, "lenet_iteration_5.safetensors"))
	got, meta, err := Decode(b, s.Layout())
	if err != nil || got.SHA256() != m.SHA256() || meta != (Meta{FLName: "lenet", Iteration: 5, SHA256: m.SHA256()}) {
		t.Fatalf("checkpoint: %v %+v", err, meta)
	}
	enc, ok, err := s.Encoded(5)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if got, _, err := Decode(enc, nil); err != nil || got.SHA256() != m.SHA256() {
		t.Fatal(err)
	}
	if _, ok, _ := s.Encoded(1); ok {
		t.Fatal("evicted iteration encoded")
	}
}

func mustLayout(t *testing.T) *model.Layout {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{3}}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestKeep(t *testing.T) {
	fsys := NewMemFS()
	s := open(t, fsys, func(o *Options) { o.Keep = 1 })
	_, m := s.Latest()
	for i := uint64(1); i <= 3; i++ {
		if err := s.Put(i, next(m, float32(i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := checkpoints(t, fsys); got != "lenet_iteration_3.safetensors" {
		t.Fatalf("files %q", got)
	}
	if got := s.Iterations(); len(got) != 2 || got[0] != 0 || got[1] != 3 {
		t.Fatalf("kept %v", got)
	}
}

// TestCommitDoesNotListTheDirectory: the store knows its checkpoint files
// from Open on, so a commit retires old ones without listing the
// directory, and a Truncate removes the right ones.
func TestCommitDoesNotListTheDirectory(t *testing.T) {
	mem := NewMemFS()
	var opened atomic.Bool
	efs := NewErrorFS(mem, func(op Op, p string) error {
		if op == OpReadDir && opened.Load() {
			return ErrInjected
		}
		return nil
	})
	s := open(t, efs, func(o *Options) { o.Keep = 2 })
	opened.Store(true)
	_, m := s.Latest()
	for i := uint64(1); i <= 4; i++ {
		if err := s.Put(i, next(m, float32(i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := checkpoints(t, mem); got != "lenet_iteration_3.safetensors lenet_iteration_4.safetensors" {
		t.Fatalf("files %q", got)
	}
	if _, err := s.Truncate(4); err != nil {
		t.Fatal(err)
	}
	if got := checkpoints(t, mem); got != "lenet_iteration_3.safetensors" {
		t.Fatalf("files after Truncate(4) %q", got)
	}
	if err := s.Put(4, next(m, 5)); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(5, next(m, 6)); err != nil {
		t.Fatal(err)
	}
	if got := checkpoints(t, mem); got != "lenet_iteration_4.safetensors lenet_iteration_5.safetensors" {
		t.Fatalf("files %q", got)
	}
}

func TestMemoryOnly(t *testing.T) {
	s := open(t, NewMemFS(), func(o *Options) { o.Dir = "" })
	_, m := s.Latest()
	if err := s.Put(1, next(m, 1)); err != nil || !s.Has(1) {
		t.Fatal(err)
	}
}

func TestRecover(t *testing.T) {
	fsys := NewMemFS()
	s := open(t, fsys, nil)
	_, m := s.Latest()
	want := map[uint64]string{}
	for i := uint64(1); i <= 5; i++ {
		m = next(m, 0.5)
		want[i] = m.SHA256()
		if err := s.Put(i, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, fs := range []*MemFS{fsys, fsys.CrashClone()} {
		r := open(t, fs, nil)
		it, got := r.Latest()
		if it != 5 || got.SHA256() != want[5] {
			t.Fatalf("recovered iteration %d", it)
		}
		for i := uint64(3); i <= 5; i++ {
			if g, ok := r.Get(i); !ok || g.SHA256() != want[i] || g.Layout != r.Layout() {
				t.Fatalf("iteration %d not recovered", i)
			}
			if sum, _ := r.Sum(i); sum != want[i] {
				t.Fatalf("sum of %d", i)
			}
		}
		// Iteration 0's file is gone: rebuilt from the seed.
		if g, ok := r.Get(0); !ok || g.SHA256() != model.InitLeNet5(1).SHA256() {
			t.Fatal("iteration 0")
		}
		if err := r.Put(5, m); !errors.Is(err, ErrOutOfOrder) {
			t.Fatalf("got %v", err)
		}
	}
}

func TestRecoverSkipsCorrupt(t *testing.T) {
	fsys := NewMemFS()
	s := open(t, fsys, nil)
	_, m0 := s.Latest()
	m1 := next(m0, 1)
	if err := s.Put(1, m1); err != nil {
		t.Fatal(err)
	}
	good, _ := fsys.ReadFile(filepath.Join(dir, "lenet_iteration_1.safetensors"))
	flip := append([]byte(nil), good...)
	flip[len(flip)-1] ^= 1
	wrongName, _ := Encode(next(m0, 2), Meta{FLName: "other", Iteration: 6})
	wrongIter, _ := Encode(next(m0, 2), Meta{FLName: "lenet", Iteration: 9})
	noSum, _ := safetensors.AppendEncode(nil, m1, map[string]string{"fl_name": "lenet", "iteration": "8"})
	put := func(name string, b []byte) { fsys.WriteFile(filepath.Join(dir, name), b) }
	put("lenet_iteration_2.safetensors", good[:len(good)/2]) // truncated
	put("lenet_iteration_3.safetensors", flip)               // bit flip: checksum
	put("lenet_iteration_4.safetensors", []byte("garbage"))
	put("lenet_iteration_5.safetensors", nil)
	put("lenet_iteration_6.safetensors", wrongName)
	put("lenet_iteration_7.safetensors", wrongIter)
	put("lenet_iteration_8.safetensors", noSum)
	put("lenet_iteration_9.safetensors.tmp3", good) // leftover temporary
	put("lenet_iteration_010.safetensors", good)    // not canonical: ignored
	put("other_iteration_1.safetensors", good)      // another job: ignored
	put("notes.txt", []byte("x"))

	r := open(t, fsys, nil)
	if it, got := r.Latest(); it != 1 || got.SHA256() != m1.SHA256() {
		t.Fatalf("latest %d", it)
	}
	want := "lenet_iteration_0.safetensors lenet_iteration_010.safetensors lenet_iteration_1.safetensors " +
		"lenet_iteration_2.safetensors.corrupt lenet_iteration_3.safetensors.corrupt lenet_iteration_4.safetensors.corrupt " +
		"lenet_iteration_5.safetensors.corrupt lenet_iteration_6.safetensors.corrupt lenet_iteration_7.safetensors.corrupt " +
		"lenet_iteration_8.safetensors.corrupt notes.txt other_iteration_1.safetensors"
	if got := names(t, fsys); got != want {
		t.Fatalf("files\n%s\nwant\n%s", got, want)
	}
	// A new iteration 2 can be written over the set-aside corrupt one.
	if err := r.Put(2, next(m1, 1)); err != nil {
		t.Fatal(err)
	}
}

func TestInitialModelSources(t *testing.T) {
	fsys := NewMemFS()
	l := mustLayout(t)
	init := &model.Model{Layout: l, Data: []float32{1, 2, 3}}
	b, _ := Encode(init, Meta{})
	fsys.WriteFile("/init.safetensors", b)
	s := open(t, fsys, func(o *Options) { o.InitFile = "/init.safetensors"; o.Dir = "" })
	if _, m := s.Latest(); m.SHA256() != init.SHA256() {
		t.Fatal("init file not used")
	}
	s = open(t, fsys, func(o *Options) { o.Initial = init; o.Dir = "" })
	if _, m := s.Latest(); m != init {
		t.Fatal("Initial not used")
	}
	f := func(mod func(*Options), want string) {
		t.Helper()
		o := Options{FLName: "x", FS: fsys}
		mod(&o)
		_, err := Open(o)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want %q", err, want)
		}
	}
	f(func(o *Options) { o.InitFile = "/missing" }, "cannot load initial model")
	f(func(o *Options) { o.Initial = &model.Model{Layout: l} }, "do not match")
	// A checkpoint dir holding another architecture is an error naming the
	// file, not something to set aside silently: the operator changed the
	// model or pointed at the wrong folder.
	open(t, fsys, func(o *Options) { o.Initial = init })
	if _, err := Open(Options{Dir: "/ckpt", FLName: "lenet", FS: fsys}); err == nil || !strings.Contains(err.Error(), "layout mismatch") {
		t.Fatalf("a foreign layout: %v", err)
	}
	// A storage error is not a corrupt file either: the checkpoint stays.
	efs := NewErrorFS(fsys, OnOp(OpOpen, func(p string) bool { return strings.HasSuffix(p, ".safetensors") }))
	if _, err := Open(Options{Dir: "/ckpt", FLName: "lenet", FS: efs, Initial: init}); err == nil {
		t.Fatal("Open succeeded while checkpoints could not be opened")
	}
	if _, err := Open(Options{Dir: "/ckpt", FLName: "lenet", FS: fsys, Initial: init}); err != nil {
		t.Fatalf("the checkpoint was set aside after a storage error: %v", err)
	}
}

// armedOnIndex wraps mem in an ErrorFS that fails the n-th operation
// counted while armed is set, and only that one: the set-up before arming
// runs untouched.
func armedOnIndex(mem *MemFS, n int64) (*ErrorFS, *atomic.Bool, *atomic.Int64) {
	armed := new(atomic.Bool)
	inj, count := OnIndex(n)
	return NewErrorFS(mem, func(op Op, p string) error {
		if !armed.Load() {
			return nil
		}
		return inj(op, p)
	}), armed, count
}

// TestPutFaults fails each file-system operation of a Put in turn, then
// simulates a crash: a failed Put publishes nothing and leaves the previous
// model recoverable; a successful one survives the crash.
func TestPutFaults(t *testing.T) {
	for n := int64(0); ; n++ {
		mem := NewMemFS()
		efs, armed, count := armedOnIndex(mem, n)
		s := open(t, efs, func(o *Options) { o.Logger = zap.NewNop() })
		_, m0 := s.Latest()
		m1 := next(m0, 1)
		if err := s.Put(1, m1); err != nil {
			t.Fatal(err)
		}
		m2 := next(m1, 1)
		armed.Store(true)
		err := s.Put(2, m2)
		armed.Store(false)
		hit := count.Load() > n
		if !hit {
			if err != nil {
				t.Fatal(err)
			}
			if n < 5 {
				t.Fatalf("only %d operations in a Put", n)
			}
			t.Logf("covered %d fault points", n)
			return
		}
		wantIter, want := uint64(2), m2
		if err != nil {
			if !errors.Is(err, ErrInjected) {
				t.Fatalf("fault %d: %v", n, err)
			}
			if s.Has(2) {
				t.Fatalf("fault %d: failed Put published the model", n)
			}
			wantIter, want = 1, m1
		}
		if it, m := s.Latest(); it != wantIter || m != want {
			t.Fatalf("fault %d: latest %d", n, it)
		}
		r := open(t, mem.CrashClone(), func(o *Options) { o.Logger = zap.NewNop() })
		if it, m := r.Latest(); it != wantIter || m.SHA256() != want.SHA256() {
			t.Fatalf("fault %d (err %v): recovered iteration %d, want %d", n, err, it, wantIter)
		}
		if strings.Contains(names(t, r.fs), "tmp") {
			t.Fatalf("fault %d: temporary file left after recovery: %s", n, names(t, r.fs))
		}
	}
}

func TestOpenFaults(t *testing.T) {
	f := func(op Op) {
		t.Helper()
		_, err := Open(Options{Dir: dir, FLName: "x", FS: NewErrorFS(NewMemFS(), OnOp(op, nil))})
		if !errors.Is(err, ErrInjected) {
			t.Fatalf("%v: got %v", op, err)
		}
	}
	f(OpMkdirAll)
	f(OpReadDir)
	f(OpCreate)
	f(OpWrite)
	f(OpSync)
	f(OpRename)
	f(OpSyncDir)
}

func TestConcurrentReaders(t *testing.T) {
	s := open(t, NewMemFS(), func(o *Options) { o.Logger = zap.NewNop() })
	_, m := s.Latest()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				it, lm := s.Latest()
				if lm == nil || lm.Data[0] != m.Data[0]+float32(it) {
					t.Errorf("iteration %d: wrong model", it)
					return
				}
				s.Get(it - 1)
				s.Iterations()
			}
		}()
	}
	for i := uint64(1); i <= 20; i++ {
		if err := s.Put(i, next(m, float32(i))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestOSFS(t *testing.T) {
	d := t.TempDir()
	s, err := Open(Options{Dir: d, FLName: "lenet", Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	_, m := s.Latest()
	for i := uint64(1); i <= 3; i++ {
		m = next(m, 1)
		if err := s.Put(i, m); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(d, "lenet_iteration_4.safetensors.tmp1"), []byte("partial"), 0o644)
	es, _ := os.ReadDir(d)
	if len(es) != 4 { // 2 checkpoints, the spare, the partial file

		t.Fatalf("%d files", len(es))
	}
	b, err := os.ReadFile(filepath.Join(d, "lenet_iteration_3.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := safetensors.Decode(b, nil); err != nil || got.SHA256() != m.SHA256() {
		t.Fatal(err)
	}
	r, err := Open(Options{Dir: d, FLName: "lenet", Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	if it, got := r.Latest(); it != 3 || got.SHA256() != m.SHA256() {
		t.Fatalf("recovered %d", it)
	}
	if es, _ := os.ReadDir(d); len(es) != 2 {
		t.Fatalf("%d files after recovery", len(es))
	}
}

func TestDecodeChecksum(t *testing.T) {
	m := model.InitLeNet5(3)
	b, err := Encode(m, Meta{FLName: "x", Iteration: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, meta, err := Decode(b, model.LeNet5Layout()); err != nil || meta.SHA256 != m.SHA256() || meta.Iteration != 2 {
		t.Fatal(err)
	}
	b[len(b)-2] ^= 0x10
	if _, _, err := Decode(b, nil); !errors.Is(err, ErrChecksum) {
		t.Fatalf("got %v", err)
	}
	bad, _ := safetensors.AppendEncode(nil, m, map[string]string{"iteration": "x"})
	if _, _, err := Decode(bad, nil); err == nil {
		t.Fatal("bad iteration accepted")
	}
}

func TestTruncate(t *testing.T) {
	fs := NewMemFS()
	s, err := Open(Options{Dir: "/ck", FLName: "LeNet", FS: fs, Keep: 5})
	if err != nil {
		t.Fatal(err)
	}
	_, m0 := s.Latest()
	for it := uint64(1); it <= 4; it++ {
		if err := s.Put(it, m0.Clone()); err != nil {
			t.Fatal(err)
		}
	}
	gone, err := s.Truncate(3)
	if err != nil || len(gone) != 2 || gone[0] != 3 || gone[1] != 4 {
		t.Fatalf("Truncate(3) = %v, %v", gone, err)
	}
	if it, _ := s.Latest(); it != 2 || s.Has(3) || !s.Has(0) {
		t.Fatalf("after truncate latest %d has3 %v", it, s.Has(3))
	}
	// The removed iterations can be put again, and a reopened store does
	// not bring them back.
	if err := s.Put(3, m0.Clone()); err != nil {
		t.Fatal(err)
	}
	r, err := Open(Options{Dir: "/ck", FLName: "LeNet", FS: fs, Keep: 5})
	if err != nil {
		t.Fatal(err)
	}
	if it, _ := r.Latest(); it != 3 || r.Has(4) {
		t.Fatalf("reopened latest %d has4 %v", it, r.Has(4))
	}
}

// TestStage: a staged checkpoint is durable under a temporary name before
// Commit, invisible until then, dropped by Discard, refused by Commit once a
// newer iteration is stored, and a crash before Commit leaves the previous
// iteration as the newest on recovery.
func TestStage(t *testing.T) {
	fsys := NewMemFS()
	s := open(t, fsys, nil)
	_, m0 := s.Latest()
	m1 := next(m0, 1)
	st := s.Stage(1, m1, "")
	if st.Iteration() != 1 || s.Has(1) {
		t.Fatal("a staged model is visible before Commit")
	}
	if got := names(t, fsys); !strings.Contains(got, "lenet_iteration_1.safetensors.tmp") {
		t.Fatalf("files %q: no temporary checkpoint", got)
	}
	// A crash now: recovery does not publish the temporary file.
	r := open(t, fsys.CrashClone(), nil)
	if it, _ := r.Latest(); it != 0 {
		t.Fatalf("recovered iteration %d from a staged checkpoint", it)
	}
	if err := st.Commit(); err != nil {
		t.Fatal(err)
	}
	if g, ok := s.Get(1); !ok || g.SHA256() != m1.SHA256() {
		t.Fatal("committed model not served")
	}
	if got := names(t, fsys); got != "lenet_iteration_0.safetensors lenet_iteration_1.safetensors" {
		t.Fatalf("files %q", got)
	}

	// Discard leaves nothing behind.
	st = s.Stage(2, next(m1, 1), "")
	st.Discard()
	if got := names(t, fsys); got != "lenet_iteration_0.safetensors lenet_iteration_1.safetensors" {
		t.Fatalf("files after Discard %q", got)
	}

	// Two stagings of one iteration (a retried all-reduce): the first
	// committed wins, the other is refused and removed.
	a, b := s.Stage(2, next(m1, 2), ""), s.Stage(2, next(m1, 3), "")
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); !errors.Is(err, ErrOutOfOrder) {
		t.Fatalf("second commit of iteration 2: %v", err)
	}
	if got := names(t, fsys); strings.Contains(got, ".tmp") {
		t.Fatalf("temporary file left: %q", got)
	}
	if sum, _ := s.Sum(2); sum != next(m1, 2).SHA256() {
		t.Fatal("iteration 2 is not the first committed model")
	}

	// A model of another shape fails at Stage and Commit reports it.
	if err := s.Stage(3, model.New(mustLayout(t)), "").Commit(); !errors.Is(err, ErrLayout) {
		t.Fatalf("another layout: %v", err)
	}
	if err := s.Stage(3, &model.Model{}, "").Commit(); err == nil {
		t.Fatal("a model without layout was committed")
	}
	if it, _ := s.Latest(); it != 2 {
		t.Fatalf("latest %d after refused commits", it)
	}
}

// TestCommitLeftover: a server that staged an iteration's checkpoint and
// was killed before committing it leaves the file under its temporary
// name (a killed process loses none of what it wrote). The next store
// keeps it, unpublished, and publishes it when asked for that iteration
// with its checksum, as a commit would; asked for anything else, it does
// not. DropLeftover removes it; a partial one is removed at Open.
func TestCommitLeftover(t *testing.T) {
	fsys := NewMemFS()
	s := open(t, fsys, nil)
	_, m0 := s.Latest()
	m1 := next(m0, 1)
	if err := s.Put(1, m1); err != nil {
		t.Fatal(err)
	}
	m2 := next(m1, 1)
	st := s.Stage(2, m2, "")
	if err := <-st.synced; err != nil {
		t.Fatal(err)
	}
	tmp := st.tmp // s dies here

	r := open(t, fsys, nil)
	if it, _ := r.Latest(); it != 1 {
		t.Fatalf("latest %d after a restart with iteration 2 staged", it)
	}
	for _, c := range []struct {
		iter uint64
		sum  string
	}{{2, m1.SHA256()}, {3, m2.SHA256()}, {1, m2.SHA256()}} {
		if ok, err := r.CommitLeftover(c.iter, c.sum); ok || err != nil {
			t.Fatalf("CommitLeftover(%d, %.8s) of iteration 2's checkpoint: %t, %v", c.iter, c.sum, ok, err)
		}
	}
	if ok, err := r.CommitLeftover(2, m2.SHA256()); !ok || err != nil {
		t.Fatalf("CommitLeftover(2) of iteration 2's checkpoint: %t, %v", ok, err)
	}
	if g, ok := r.Get(2); !ok || g.SHA256() != m2.SHA256() {
		t.Fatal("the leftover iteration 2 is not served")
	}
	if got := names(t, fsys); got != "lenet_iteration_0.safetensors lenet_iteration_1.safetensors lenet_iteration_2.safetensors" {
		t.Fatalf("files %q", got)
	}
	if ok, _ := r.CommitLeftover(2, m2.SHA256()); ok {
		t.Fatal("a leftover was published twice")
	}
	if it, _ := open(t, fsys.CrashClone(), nil).Latest(); it != 2 {
		t.Fatalf("iteration %d recovered after the leftover's commit, want 2 (not durable?)", it)
	}

	// Not claimed: dropped.
	m3 := next(m2, 1)
	st = r.Stage(3, m3, "")
	if err := <-st.synced; err != nil {
		t.Fatal(err)
	}
	r = open(t, fsys, nil)
	r.DropLeftover()
	if got := names(t, fsys); strings.Contains(got, ".tmp") {
		t.Fatalf("files after DropLeftover: %q", got)
	}

	// Partial: removed at Open.
	b, err := Encode(m3, Meta{FLName: "lenet", Iteration: 3, SHA256: m3.SHA256()})
	if err != nil {
		t.Fatal(err)
	}
	fsys.WriteFile(tmp, b[:len(b)-4])
	r = open(t, fsys, nil)
	if ok, _ := r.CommitLeftover(3, m3.SHA256()); ok {
		t.Fatal("a partial leftover was published")
	}
	if got := names(t, fsys); strings.Contains(got, ".tmp") {
		t.Fatalf("files after opening with a partial leftover: %q", got)
	}
}

// TestMemKeep: fewer models in memory than checkpoints on disk; the disk
// keeps Keep files, memory only the newest MemKeep (iteration 0 included),
// and a reopened store keeps no more than that.
func TestMemKeep(t *testing.T) {
	fsys := NewMemFS()
	s := open(t, fsys, func(o *Options) { o.Keep, o.MemKeep = 3, 1 })
	_, m := s.Latest()
	for i := uint64(1); i <= 4; i++ {
		m = next(m, 1)
		if err := s.Put(i, m); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Iterations(); len(got) != 1 || got[0] != 4 {
		t.Fatalf("in memory: %v, want [4]", got)
	}
	if got := checkpoints(t, fsys); got != "lenet_iteration_2.safetensors lenet_iteration_3.safetensors lenet_iteration_4.safetensors" {
		t.Fatalf("on disk: %q", got)
	}
	r := open(t, fsys, func(o *Options) { o.Keep, o.MemKeep = 3, 1 })
	if got := r.Iterations(); len(got) != 1 || got[0] != 4 {
		t.Fatalf("reopened in memory: %v", got)
	}
	// Truncating every kept iteration derives iteration 0 again.
	if _, err := r.Truncate(1); err != nil {
		t.Fatal(err)
	}
	if it, m0 := r.Latest(); it != 0 || m0 == nil || m0.SHA256() != model.InitLeNet5(1).SHA256() {
		t.Fatalf("after Truncate(1): latest %d", it)
	}
	// Without a checkpoint dir memory is the only copy: MemKeep is ignored.
	mem := open(t, NewMemFS(), func(o *Options) { o.Dir, o.Keep, o.MemKeep = "", 2, 1 })
	_, m = mem.Latest()
	for i := uint64(1); i <= 3; i++ {
		m = next(m, 1)
		if err := mem.Put(i, m); err != nil {
			t.Fatal(err)
		}
	}
	if got := mem.Iterations(); len(got) != 3 {
		t.Fatalf("memory-only store kept %v", got)
	}
	// SetMemKeep after Open evicts at once.
	s2 := open(t, NewMemFS(), func(o *Options) { o.Keep = 3 })
	_, m = s2.Latest()
	for i := uint64(1); i <= 3; i++ {
		m = next(m, 1)
		if err := s2.Put(i, m); err != nil {
			t.Fatal(err)
		}
	}
	s2.SetMemKeep(1)
	if got := s2.Iterations(); len(got) != 1 || got[0] != 3 {
		t.Fatalf("after SetMemKeep(1): %v", got)
	}
	if err := (&Options{FLName: "x", MemKeep: -1}).Validate(); err == nil {
		t.Fatal("negative MemKeep accepted")
	}
}

// TestCheckpointFilesAreRecycled: once Keep checkpoints exist, a Put
// overwrites the spare file the previous commit set aside instead of
// creating one, every checkpoint still reads back as its own model, and
// at most one spare sits beside the Keep checkpoints.
func TestCheckpointFilesAreRecycled(t *testing.T) {
	mem := NewMemFS()
	var creates atomic.Int64
	efs := NewErrorFS(mem, func(op Op, _ string) error {
		if op == OpCreate {
			creates.Add(1)
		}
		return nil
	})
	s := open(t, efs, func(o *Options) { o.Keep = 2 })
	_, m := s.Latest()
	models := map[uint64]*model.Model{0: m}
	for i := uint64(1); i <= 8; i++ {
		m = next(m, 1)
		models[i] = m
		before := creates.Load()
		if err := s.Put(i, m); err != nil {
			t.Fatal(err)
		}
		// Iteration 0's file is evicted by Put(2) and reused by Put(3).
		if i >= 3 && creates.Load() != before {
			t.Fatalf("Put(%d) created a file instead of reusing the spare", i)
		}
		ns := strings.Fields(names(t, mem))
		if len(ns) > 3 {
			t.Fatalf("after Put(%d): %v", i, ns)
		}
		for _, n := range ns {
			it, ckpt, _ := s.parseName(n)
			if !ckpt {
				continue
			}
			got, meta, err := read(mem, filepath.Join(dir, n), s.layout)
			if err != nil || meta.Iteration != it || got.SHA256() != models[it].SHA256() {
				t.Fatalf("after Put(%d): %s holds iteration %d (%v)", i, n, meta.Iteration, err)
			}
		}
	}
	// A clean stop leaves the Keep checkpoints and no spare.
	s.Close()
	if got, want := names(t, mem), CheckpointName("lenet", 7)+" "+CheckpointName("lenet", 8); got != want {
		t.Fatalf("after Close: %q, want %q", got, want)
	}
}

// TestRecycledFileIsCutToItsContent: a spare longer than the checkpoint
// written over it is truncated, so no stale tail follows the new model.
func TestRecycledFileIsCutToItsContent(t *testing.T) {
	mem := NewMemFS()
	s := open(t, mem, nil)
	spare := filepath.Join(dir, "lenet_iteration_9.safetensors.tmp99")
	mem.WriteFile(spare, make([]byte, 2<<20)) // longer than a LeNet checkpoint
	s.spare = spare
	_, m := s.Latest()
	m = next(m, 1)
	if err := s.Put(1, m); err != nil {
		t.Fatal(err)
	}
	b, ok := mem.ReadFile(filepath.Join(dir, "lenet_iteration_1.safetensors"))
	if !ok {
		t.Fatal("no checkpoint")
	}
	if got, _, err := safetensors.Decode(b, nil); err != nil || got.SHA256() != m.SHA256() {
		t.Fatalf("checkpoint of %d bytes does not decode to the model: %v", len(b), err)
	}
	if _, ok := mem.ReadFile(spare); ok {
		t.Fatal("the spare is still there under its own name")
	}
}

// TestRecycleFaults fails each file-system operation of a Put that reuses
// a spare (the retirement of the oldest included) in turn, then recovers
// from what a crash would leave: the store holds the new or the previous
// model, never one under another's number, and recovery leaves no
// temporary file but a complete one of the next iteration, until dropped.
func TestRecycleFaults(t *testing.T) {
	for n := int64(0); ; n++ {
		mem := NewMemFS()
		efs, armed, count := armedOnIndex(mem, n)
		s := open(t, efs, func(o *Options) { o.Keep, o.Logger = 1, zap.NewNop() })
		_, m := s.Latest()
		for i := uint64(1); i <= 2; i++ { // leaves a spare
			m = next(m, 1)
			if err := s.Put(i, m); err != nil {
				t.Fatal(err)
			}
		}
		if s.spare == "" {
			t.Fatal("no spare after two Puts with Keep 1")
		}
		m3 := next(m, 1)
		armed.Store(true)
		err := s.Put(3, m3)
		armed.Store(false)
		if count.Load() <= n {
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("covered %d fault points", n)
			return
		}
		wantIter, want := uint64(3), m3
		if err != nil {
			if !errors.Is(err, ErrInjected) {
				t.Fatalf("fault %d: %v", n, err)
			}
			wantIter, want = 2, m
		}
		for _, c := range []*MemFS{mem, mem.CrashClone()} {
			// Every file under a checkpoint's name holds that iteration.
			for _, name := range strings.Fields(names(t, c)) {
				if it, ckpt, _ := s.parseName(name); ckpt {
					if _, meta, err := read(c, filepath.Join(dir, name), s.layout); err != nil || meta.Iteration != it {
						t.Fatalf("fault %d: %s holds iteration %d (%v)", n, name, meta.Iteration, err)
					}
				}
			}
			r := open(t, c, func(o *Options) { o.Keep, o.Logger = 1, zap.NewNop() })
			if it, got := r.Latest(); it != wantIter || got.SHA256() != want.SHA256() {
				t.Fatalf("fault %d (err %v): recovered iteration %d, want %d", n, err, it, wantIter)
			}
			// A complete checkpoint of iteration 3 under a temporary name is
			// kept for CommitLeftover until dropped.
			if lo := r.leftover.Load(); lo != nil && (lo.iter != 3 || lo.sum != m3.SHA256()) {
				t.Fatalf("fault %d: leftover of iteration %d (%.8s) kept", n, lo.iter, lo.sum)
			}
			r.DropLeftover()
			if ns := names(t, c); strings.Contains(ns, "tmp") || strings.Contains(ns, corruptSuffix) {
				t.Fatalf("fault %d: temporary or corrupt file after recovery: %s", n, ns)
			}
		}
	}
}

// dirSyncSignal tells when a SyncDir has returned.
type dirSyncSignal struct {
	FS
	synced chan struct{}
}

func (d dirSyncSignal) SyncDir(dir string) error {
	err := d.FS.SyncDir(dir)
	d.synced <- struct{}{}
	return err
}

// TestCommitOverlapsTheFileSync: Commit renames a staged checkpoint and
// syncs the directory while the file's own sync still runs, and publishes
// only once both are done. A crash in between finds the new name on
// weights that are not on disk: recovery sets it aside and serves the
// previous model, which is all a device could have been served.
func TestCommitOverlapsTheFileSync(t *testing.T) {
	mem := NewMemFS()
	release := make(chan struct{})
	var hold atomic.Bool
	efs := NewErrorFS(mem, func(op Op, p string) error {
		if op == OpSync && hold.Load() {
			<-release
		}
		return nil
	})
	fsys := dirSyncSignal{FS: efs, synced: make(chan struct{}, 1)}
	s := open(t, fsys, func(o *Options) { o.Logger = zap.NewNop() })
	<-fsys.synced // Open's own checkpoint of iteration 0
	_, m0 := s.Latest()
	m1 := next(m0, 1)

	hold.Store(true)
	committed := make(chan error, 1)
	go func() { committed <- s.Stage(1, m1, "").Commit() }()
	select {
	case <-fsys.synced: // renamed, directory synced, the file's sync held
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("Commit waited for the file's sync before renaming and syncing the directory")
	}
	if got := checkpoints(t, mem); got != "lenet_iteration_0.safetensors lenet_iteration_1.safetensors" {
		t.Fatalf("checkpoints while the file syncs: %q", got)
	}
	if s.Has(1) {
		t.Fatal("iteration 1 published before its file was synced")
	}
	r := open(t, mem.CrashClone(), func(o *Options) { o.Logger = zap.NewNop() })
	if it, m := r.Latest(); it != 0 || m.SHA256() != m0.SHA256() {
		t.Fatalf("a crash before the file's sync recovered iteration %d", it)
	}

	close(release)
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	if g, ok := s.Get(1); !ok || g.SHA256() != m1.SHA256() {
		t.Fatal("committed model not served")
	}
	r = open(t, mem.CrashClone(), func(o *Options) { o.Logger = zap.NewNop() })
	if it, m := r.Latest(); it != 1 || m.SHA256() != m1.SHA256() {
		t.Fatalf("a crash after Commit recovered iteration %d", it)
	}
}
