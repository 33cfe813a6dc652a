// Package record writes one record per federated iteration: MindSpore's
// metrics.json (the ≈r1.7 form: one JSON object per line, appended) with its
// keys unchanged, plus fedcluster's own keys, and keeps the last N records in
// memory for the REST API and the dashboard.
//
// MindSpore's leader server writes metrics.json at the end of every
// iteration when the config's "metrics" section asks for it
// (fl/server/iteration_metrics.cc). Tools that read MindSpore's file read
// ours: every MindSpore key is always present, with MindSpore's name and
// type; our keys come after and are omitted when unknown.
package record

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
)

// Instance states (instanceStatus).
const (
	StatusRunning = "running"
	StatusDisable = "disable"
	StatusFinish  = "finish"
)

// Iteration results (iterationResult).
const (
	ResultSuccess = "success"
	ResultFail    = "fail"
)

// ClientVisitedInfo is MindSpore r1.7's per-round request counts, summed
// over all servers.
type ClientVisitedInfo struct {
	StartFLJobTotalClientNum   uint64 `json:"startFLJobTotalClientNum"`
	StartFLJobAcceptClientNum  uint64 `json:"startFLJobAcceptClientNum"`
	StartFLJobRejectClientNum  uint64 `json:"startFLJobRejectClientNum"`
	UpdateModelTotalClientNum  uint64 `json:"updateModelTotalClientNum"`
	UpdateModelAcceptClientNum uint64 `json:"updateModelAcceptClientNum"`
	UpdateModelRejectClientNum uint64 `json:"updateModelRejectClientNum"`
	GetModelTotalClientNum     uint64 `json:"getModelTotalClientNum"`
	GetModelAcceptClientNum    uint64 `json:"getModelAcceptClientNum"`
	GetModelRejectClientNum    uint64 `json:"getModelRejectClientNum"`
}

// RoundDurations are the wall times of an iteration's phases in
// milliseconds: from the round's first count to its last (or its timeout).
type RoundDurations struct {
	StartFLJob  float64 `json:"startFLJob"`
	UpdateModel float64 `json:"updateModel"`
	Aggregation float64 `json:"aggregation"`
}

// Record is one iteration's line in metrics.json.
type Record struct {
	// MindSpore r1.7 keys, always written.

	FLName         string `json:"flName"`
	InstanceStatus string `json:"instanceStatus"` // StatusRunning, StatusDisable, StatusFinish
	FLIterationNum uint64 `json:"flIterationNum"`
	// CurrentIteration is the iteration this record describes.
	CurrentIteration uint64 `json:"currentIteration"`
	// MetricsAuc and MetricsLoss are MindSpore's; in cross-device mode
	// metricsLoss is Σ upload_loss of accepted updates ÷ the updateModel
	// threshold, metricsAuc is 0 unless someone pushes it.
	MetricsAuc  float64 `json:"metricsAuc"`
	MetricsLoss float64 `json:"metricsLoss"`
	// IterationExecutionTime is the ms from the first startFLJob to the
	// iteration's end.
	IterationExecutionTime uint64            `json:"iterationExecutionTime"`
	ClientVisitedInfo      ClientVisitedInfo `json:"clientVisitedInfo"`
	IterationResult        string            `json:"iterationResult"` // ResultSuccess, ResultFail

	// fedcluster keys.

	// Admitted devices (startFLJob accepted) and Updated (updateModel
	// accepted and folded into the aggregate).
	Admitted uint64 `json:"admitted"`
	Updated  uint64 `json:"updated"`
	// RejectedByReason counts refused requests by reason string.
	RejectedByReason map[string]uint64 `json:"rejectedByReason,omitempty"`
	// Lost counts updates acknowledged with SUCCEED but missing from the
	// aggregate (DESIGN promise 3): should be 0.
	Lost uint64 `json:"lost"`
	// FailReason says why a failed iteration failed.
	FailReason         string          `json:"failReason,omitempty"`
	RoundDurationsMs   *RoundDurations `json:"roundDurationsMs,omitempty"`
	FoldThroughputMBps float64         `json:"foldThroughputMBps,omitempty"`
	// IterationSwitchMs is the time from the last updateModel answered to
	// the next iteration accepting startFLJob.
	IterationSwitchMs float64 `json:"iterationSwitchMs,omitempty"`
	// ModelSHA256 is the checksum of the iteration's stored model.
	ModelSHA256 string `json:"modelSha256,omitempty"`
	// Engine is the aggregation engine (purego, avx2, cuda, ...).
	Engine string `json:"engine,omitempty"`
	// Accuracy and Loss of the model on an evaluation set, if known.
	Accuracy *float64 `json:"accuracy,omitempty"`
	Loss     *float64 `json:"loss,omitempty"`
}

// Options configure a Writer.
type Options struct {
	// Path is metrics.json (metrics.storage_file_path); relative paths
	// resolve against the working directory, as in MindSpore. Empty keeps
	// records in memory only.
	Path string
	// Fsync syncs the file after every record.
	Fsync bool
	// Ring is how many recent records stay in memory; 0 means 1000.
	Ring int
}

// DefaultRing is the default number of records kept in memory.
const DefaultRing = 1000

// Writer appends records to a file and keeps the last ones in memory. It is
// safe for concurrent use.
type Writer struct {
	opts Options

	mu   sync.Mutex
	f    file
	ring []Record
	next int // ring index of the next record
	n    int // records in ring
	line []byte
	// midLine says the file ends inside a line (a write cut short by a
	// full disk, or a crash during one): the next record starts with a
	// newline, so that the cut line stays alone and the record whole.
	midLine bool
}

// file is what a Writer needs of metrics.json (an *os.File).
type file interface {
	io.Writer
	Sync() error
	Close() error
}

// Open opens (creating it if needed) the metrics file in append mode.
func Open(opts Options) (*Writer, error) {
	if opts.Ring < 0 {
		return nil, fmt.Errorf("invalid record options: Ring is %d, want >= 0", opts.Ring)
	}
	if opts.Ring == 0 {
		opts.Ring = DefaultRing
	}
	w := &Writer{opts: opts, ring: make([]Record, opts.Ring)}
	if opts.Path != "" {
		f, err := os.OpenFile(opts.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("cannot open metrics file: %w", err)
		}
		if w.midLine, err = endsMidLine(opts.Path); err != nil {
			f.Close()
			return nil, err
		}
		w.f = f
	}
	return w, nil
}

// endsMidLine reports whether the file at path is not empty and does not
// end with a newline.
func endsMidLine(path string) (bool, error) {
	b, _, err := readTail(path, 1)
	if err != nil {
		return false, err
	}
	return len(b) == 1 && b[0] != '\n', nil
}

// Append writes r as one line and remembers it. The record is kept in
// memory even if the file write fails; the error is returned.
func (w *Writer) Append(r *Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := *r
	if r.RejectedByReason != nil {
		c.RejectedByReason = make(map[string]uint64, len(r.RejectedByReason))
		for k, v := range r.RejectedByReason {
			c.RejectedByReason[k] = v
		}
	}
	if r.RoundDurationsMs != nil {
		d := *r.RoundDurationsMs
		c.RoundDurationsMs = &d
	}
	if r.Accuracy != nil {
		a := *r.Accuracy
		c.Accuracy = &a
	}
	if r.Loss != nil {
		l := *r.Loss
		c.Loss = &l
	}
	w.ring[w.next] = c
	w.next = (w.next + 1) % len(w.ring)
	w.n = min(w.n+1, len(w.ring))
	if w.f == nil {
		return nil
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return fmt.Errorf("cannot encode record: %w", err)
	}
	w.line = w.line[:0]
	if w.midLine {
		w.line = append(w.line, '\n')
	}
	w.line = append(append(w.line, b...), '\n')
	n, err := w.f.Write(w.line)
	if n > 0 {
		w.midLine = n < len(w.line)
	}
	if err != nil {
		return fmt.Errorf("cannot write metrics file: %w", err)
	}
	if w.opts.Fsync {
		if err := w.f.Sync(); err != nil {
			return fmt.Errorf("cannot sync metrics file: %w", err)
		}
	}
	return nil
}

// Reload puts the file's last records in memory, as Append had kept
// them: a scheduler restarted with its job's state goes on with the job's
// history. Lines that are not records are skipped.
func (w *Writer) Reload() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.opts.Path == "" {
		return nil
	}
	b, whole, err := readTail(w.opts.Path, int64(len(w.ring))*recordBytes)
	if err != nil {
		return err
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if !whole {
		lines = lines[1:] // the first may be cut
	}
	if len(lines) > len(w.ring) {
		lines = lines[len(lines)-len(w.ring):]
	}
	w.next, w.n = 0, 0
	for _, line := range lines {
		var r Record
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &r) != nil {
			continue
		}
		w.ring[w.next] = r
		w.next = (w.next + 1) % len(w.ring)
		w.n = min(w.n+1, len(w.ring))
	}
	return nil
}

// recordBytes is more than a record's line takes, its rejection reasons
// included.
const recordBytes = 2 << 10

// readTail reads at most n bytes from the end of the file at path; whole
// says whether that is the whole file.
func readTail(path string, n int64) (b []byte, whole bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, fmt.Errorf("cannot read metrics file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("cannot read metrics file: %w", err)
	}
	off := max(st.Size()-n, 0)
	b = make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, false, fmt.Errorf("cannot read metrics file: %w", err)
	}
	return b, off == 0, nil
}

// LastWritten is the iteration of the last record in the file (ok false
// when it holds none, or there is no file). Records are appended as the
// iterations end, so it is also the newest.
func (w *Writer) LastWritten() (iteration uint64, ok bool, err error) {
	if w.opts.Path == "" {
		return 0, false, nil
	}
	b, _, err := readTail(w.opts.Path, 64<<10)
	if err != nil {
		return 0, false, err
	}
	b = bytes.TrimRight(b, "\n")
	if len(b) == 0 {
		return 0, false, nil
	}
	line := b[bytes.LastIndexByte(b, '\n')+1:]
	var r struct {
		CurrentIteration *uint64 `json:"currentIteration"`
	}
	if err := json.Unmarshal(line, &r); err != nil || r.CurrentIteration == nil {
		return 0, false, fmt.Errorf("the last line of %s is not a record", w.opts.Path)
	}
	return *r.CurrentIteration, true, nil
}

// Last returns up to n of the most recent records, oldest first (n <= 0:
// all kept). The records are copies; maps and pointers inside are shared
// with the ring and must not be modified.
func (w *Writer) Last(n int) []Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n <= 0 || n > w.n {
		n = w.n
	}
	out := make([]Record, n)
	start := (w.next - n + len(w.ring)) % len(w.ring)
	for i := range out {
		out[i] = w.ring[(start+i)%len(w.ring)]
	}
	return out
}

// Close closes the file. Records stay readable with Last.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return fmt.Errorf("cannot close metrics file: %w", err)
	}
	return nil
}
