package sim

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/fedcluster/fedcluster/node/device"
)

// TraceLine is one line of a run's trace (Config.Trace): one HTTP
// exchange of one device, written as JSON when it ended.
type TraceLine struct {
	// Time is when the answer (or the failure) came, UTC.
	Time     time.Time `json:"time"`
	Device   int       `json:"device"`
	FLID     string    `json:"fl_id"`
	Endpoint string    `json:"endpoint"`
	Server   string    `json:"server"`
	// Iteration is the iteration the request named (updateModel,
	// getModel) or startFLJob's answer named; 0 when unknown.
	Iteration int32 `json:"iteration,omitempty"`
	// Class is what the exchange ended as: a retcode's name (SUCCEED,
	// OutOfTime, ...), a refusal (safemode, job-finished, ...) or a
	// failure (transport-error, busy, http-error, corrupt).
	Class       string     `json:"class"`
	Retcode     int32      `json:"retcode,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	NextReqTime *time.Time `json:"next_req_time,omitempty"`
	Status      int        `json:"status,omitempty"`
	Error       string     `json:"error,omitempty"`
	LatencyMS   float64    `json:"latency_ms"`
	Sent        int        `json:"sent"`
	Received    int        `json:"received"`
}

// tracer writes the trace lines of a run's devices, one at a time. After a
// write error it writes nothing more and keeps the error for Run.
type tracer struct {
	mu  sync.Mutex
	w   *bufio.Writer
	enc *json.Encoder
	err error
}

func newTracer(w io.Writer) *tracer {
	bw := bufio.NewWriterSize(w, 64<<10)
	return &tracer{w: bw, enc: json.NewEncoder(bw)}
}

func (t *tracer) record(d *simDevice, ob *device.Observation) {
	l := TraceLine{
		Time:      time.Now().UTC(),
		Device:    d.i,
		FLID:      d.flid,
		Endpoint:  ob.Endpoint.String(),
		Iteration: ob.Iteration,
		Class:     classify(ob).String(),
		Status:    ob.Status,
		LatencyMS: float64(ob.Latency) / float64(time.Millisecond),
		Sent:      ob.Sent,
		Received:  ob.Received,
	}
	if servers := d.r.cfg.Servers; ob.Server >= 0 && ob.Server < len(servers) {
		l.Server = servers[ob.Server]
	}
	switch ob.Outcome {
	case device.OutcomeRetcode:
		l.Retcode, l.Reason = ob.Retcode, ob.Reason
		if !ob.NextReqTime.IsZero() {
			next := ob.NextReqTime.UTC()
			l.NextReqTime = &next
		}
	case device.OutcomeRefusal:
		l.Reason = ob.Refusal
	}
	if ob.Err != nil {
		l.Error = ob.Err.Error()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = t.enc.Encode(&l)
	}
}

// close flushes the trace and returns the first write error.
func (t *tracer) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = t.w.Flush()
	}
	if t.err != nil {
		return fmt.Errorf("cannot write the trace: %w", t.err)
	}
	return nil
}
