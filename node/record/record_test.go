package record

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestAppendLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "metrics.json")
	os.WriteFile(p, []byte(`{"old":1}`+"\n"), 0o644) // append mode keeps it
	w, err := Open(Options{Path: p, Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	acc := 0.9
	w.Append(&Record{FLName: "lenet", InstanceStatus: StatusRunning, FLIterationNum: 5, CurrentIteration: 1,
		IterationResult: ResultSuccess, ClientVisitedInfo: ClientVisitedInfo{StartFLJobTotalClientNum: 3},
		RejectedByReason: map[string]uint64{"duplicate": 2}, RoundDurationsMs: &RoundDurations{UpdateModel: 12.5},
		ModelSHA256: "ab", Engine: "purego", Accuracy: &acc})
	w.Append(&Record{FLName: "lenet", InstanceStatus: StatusFinish, CurrentIteration: 2, IterationResult: ResultFail, FailReason: "updateModel timeout"})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(p)
	defer f.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines", len(lines))
	}
	f1 := func(line int, key string, want any) {
		t.Helper()
		got, ok := lines[line][key]
		if want == nil {
			if ok {
				t.Fatalf("line %d: %s present: %v", line, key, got)
			}
			return
		}
		if b, _ := json.Marshal(got); string(b) != want {
			t.Fatalf("line %d: %s = %s, want %s", line, key, b, want)
		}
	}
	// MindSpore keys always present, with MindSpore's names.
	for _, k := range []string{"flName", "instanceStatus", "flIterationNum", "currentIteration", "metricsAuc", "metricsLoss", "iterationExecutionTime", "clientVisitedInfo", "iterationResult"} {
		for _, l := range []int{1, 2} {
			if _, ok := lines[l][k]; !ok {
				t.Fatalf("line %d lacks %s", l, k)
			}
		}
	}
	f1(1, "instanceStatus", `"running"`)
	f1(1, "rejectedByReason", `{"duplicate":2}`)
	f1(1, "roundDurationsMs", `{"aggregation":0,"startFLJob":0,"updateModel":12.5}`)
	f1(1, "accuracy", `0.9`)
	f1(1, "loss", nil)
	f1(1, "engine", `"purego"`)
	f1(1, "modelSha256", `"ab"`)
	f1(2, "iterationResult", `"fail"`)
	f1(2, "failReason", `"updateModel timeout"`)
	f1(2, "rejectedByReason", nil)
	f1(2, "clientVisitedInfo", `{"getModelAcceptClientNum":0,"getModelRejectClientNum":0,"getModelTotalClientNum":0,"startFLJobAcceptClientNum":0,"startFLJobRejectClientNum":0,"startFLJobTotalClientNum":0,"updateModelAcceptClientNum":0,"updateModelRejectClientNum":0,"updateModelTotalClientNum":0}`)
	if got := w.Last(0); len(got) != 2 || got[0].CurrentIteration != 1 {
		t.Fatalf("ring after close: %+v", got)
	}
}

func TestRing(t *testing.T) {
	w, err := Open(Options{Ring: 3})
	if err != nil {
		t.Fatal(err)
	}
	f := func(n int, want string) {
		t.Helper()
		var got []string
		for _, r := range w.Last(n) {
			got = append(got, string(rune('0'+r.CurrentIteration)))
		}
		if s := strings.Join(got, ""); s != want {
			t.Fatalf("Last(%d) = %q, want %q", n, s, want)
		}
	}
	f(0, "")
	w.Append(&Record{CurrentIteration: 1})
	f(0, "1")
	f(5, "1")
	w.Append(&Record{CurrentIteration: 2})
	f(1, "2")
	for i := uint64(3); i <= 5; i++ {
		w.Append(&Record{CurrentIteration: i})
	}
	f(0, "345")
	f(2, "45")
	f(-1, "345")
	if _, err := Open(Options{Ring: -1}); err == nil {
		t.Fatal("negative ring accepted")
	}
	if _, err := Open(Options{Path: filepath.Join(t.TempDir(), "no", "such", "dir", "m.json")}); err == nil {
		t.Fatal("bad path accepted")
	}
}

// The ring holds copies: a caller reusing its Record does not rewrite history.
func TestAppendCopies(t *testing.T) {
	w, _ := Open(Options{})
	r := Record{RejectedByReason: map[string]uint64{"a": 1}, RoundDurationsMs: &RoundDurations{StartFLJob: 1}}
	w.Append(&r)
	r.RejectedByReason["a"] = 9
	r.RoundDurationsMs.StartFLJob = 9
	got := w.Last(1)[0]
	if got.RejectedByReason["a"] != 1 || got.RoundDurationsMs.StartFLJob != 1 {
		t.Fatalf("ring aliased the caller's record: %+v", got)
	}
}

func TestConcurrentAppend(t *testing.T) {
	p := filepath.Join(t.TempDir(), "metrics.json")
	w, err := Open(Options{Path: p, Ring: 16})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				w.Append(&Record{FLName: strings.Repeat("x", 100), CurrentIteration: uint64(i)})
				w.Last(4)
			}
		}()
	}
	wg.Wait()
	w.Close()
	b, _ := os.ReadFile(p)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 200 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Fatalf("torn line %q", l)
		}
	}
}

func TestLastWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.json")
	w, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if it, ok, err := w.LastWritten(); ok || err != nil {
		t.Fatalf("empty file: %d %v %v, want nothing", it, ok, err)
	}
	for it := uint64(1); it <= 3; it++ {
		if err := w.Append(&Record{CurrentIteration: it, IterationResult: ResultSuccess}); err != nil {
			t.Fatal(err)
		}
	}
	if it, ok, err := w.LastWritten(); it != 3 || !ok || err != nil {
		t.Fatalf("after 3 records: %d %v %v, want 3", it, ok, err)
	}
	// A last line cut short (a crash while writing it) is not a record.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"flName":"LeNet","currentItera`)
	f.Close()
	if _, ok, err := w.LastWritten(); ok || err == nil {
		t.Fatalf("a cut last line read as a record (ok %v, err %v)", ok, err)
	}

	mem, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	mem.Append(&Record{CurrentIteration: 7})
	if _, ok, err := mem.LastWritten(); ok || err != nil {
		t.Fatalf("records kept in memory only: ok %v, err %v; want nothing written", ok, err)
	}
}

func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.json")
	w, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for it := uint64(1); it <= 5; it++ {
		w.Append(&Record{CurrentIteration: it, IterationResult: ResultSuccess, RejectedByReason: map[string]uint64{"start_threshold": it}})
		if it == 3 {
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString("not a record\n")
			f.Close()
		}
	}
	w.Close()
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		ring int
		want []uint64
	}{{3, []uint64{4, 5}}, {10, []uint64{1, 2, 3, 4, 5}}} {
		// Ring 3 reads the last 3 lines: the bad one among them is skipped.
		if err := os.WriteFile(path, written, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Open(Options{Path: path, Ring: tc.ring})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Reload(); err != nil {
			t.Fatal(err)
		}
		got := iterationsOf(r.Last(0))
		if !slices.Equal(got, tc.want) {
			t.Errorf("ring %d: reloaded iterations %v, want %v", tc.ring, got, tc.want)
		}
		r.Append(&Record{CurrentIteration: 6})
		if last := r.Last(1); len(last) != 1 || last[0].CurrentIteration != 6 {
			t.Errorf("ring %d: after a reload, Append then Last(1) gave %+v", tc.ring, last)
		}
		r.Close()
	}
}

// A long file is read from its tail, whose first line may be cut.
func TestReloadTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.json")
	w, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for it := uint64(1); it <= 100; it++ {
		w.Append(&Record{CurrentIteration: it, FailReason: strings.Repeat("x", 100)})
	}
	w.Close()
	r, err := Open(Options{Path: path, Ring: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	got := iterationsOf(r.Last(0))
	if !slices.Equal(got, []uint64{99, 100}) {
		t.Fatalf("reloaded iterations %v, want [99 100]", got)
	}
}

// iterationsOf lists the records' iterations in order.
func iterationsOf(recs []Record) []uint64 {
	its := make([]uint64, 0, len(recs))
	for _, r := range recs {
		its = append(its, r.CurrentIteration)
	}
	return its
}

// TestAppendAfterCutLine: a record written after a cut line (a crash or a
// full disk while one was written) starts on a line of its own, so that it
// and the records after it stay readable.
func TestAppendAfterCutLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.json")
	cut := `{"flName":"LeNet","currentItera`
	if err := os.WriteFile(path, []byte(`{"currentIteration":1}`+"\n"+cut), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := Open(Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Append(&Record{CurrentIteration: 2}); err != nil {
		t.Fatal(err)
	}
	// A write cut short: the next record must not continue its line.
	disk := w.f
	w.f = &shortFile{file: disk, n: 10}
	if err := w.Append(&Record{CurrentIteration: 3}); err == nil {
		t.Fatal("a short write was not reported")
	}
	w.f = disk
	if err := w.Append(&Record{CurrentIteration: 4}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	var got []uint64
	for _, l := range lines {
		var r Record
		if json.Unmarshal([]byte(l), &r) == nil {
			got = append(got, r.CurrentIteration)
		}
	}
	if len(lines) != 5 || lines[1] != cut || !slices.Equal(got, []uint64{1, 2, 4}) {
		t.Fatalf("file holds records %v in lines\n%s", got, b)
	}
	if it, ok, err := w.LastWritten(); it != 4 || !ok || err != nil {
		t.Fatalf("LastWritten = %d %v %v, want 4", it, ok, err)
	}
}

// shortFile writes the first n bytes of a write, then fails.
type shortFile struct {
	file
	n int
}

func (s *shortFile) Write(p []byte) (int, error) {
	n, _ := s.file.Write(p[:min(s.n, len(p))])
	return n, errors.New("no space left on device")
}
