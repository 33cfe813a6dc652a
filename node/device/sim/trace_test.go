package sim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// TestRunTrace: the trace has one line per exchange, and its lines add
// up to the summary's request counts; each names its device, server,
// iteration and answer.
func TestRunTrace(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10, 20}}})
	if err != nil {
		t.Fatal(err)
	}
	const devices, iterations = 4, 3
	fs := newFLServer(t, 2, devices-1, iterations, model.New(l)) // one device is turned away each iteration
	fs.safemodeEvery = 5
	cfg := loadConfig(devices, fs.urls)
	var trace bytes.Buffer
	cfg.Trace = &trace
	began := time.Now()
	s, err := runBounded(cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	ended := time.Now()

	var counts [device.NumEndpoints][NumClasses]int64
	endpoints := map[string]device.Endpoint{}
	for e := range device.NumEndpoints {
		endpoints[e.String()] = e
	}
	classes := map[string]Class{}
	for c := range NumClasses {
		classes[c.String()] = c
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(&trace)
	for sc.Scan() {
		var tl TraceLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&tl); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		ep, ok := endpoints[tl.Endpoint]
		cl, okc := classes[tl.Class]
		if !ok || !okc {
			t.Fatalf("line %q: unknown endpoint or class", sc.Text())
		}
		counts[ep][cl]++
		if tl.Device < 0 || tl.Device >= devices || tl.FLID != fmt.Sprintf("%s%d", cfg.FLIDPrefix, tl.Device) ||
			!slices.Contains(fs.urls, tl.Server) || tl.Time.Before(began) || tl.Time.After(ended) || tl.LatencyMS <= 0 {
			t.Errorf("line %q", sc.Text())
		}
		switch cl {
		case ClassSucceed, ClassSucNotReady, ClassOutOfTime:
			if tl.Retcode == 0 || tl.Reason == "" || tl.NextReqTime == nil || tl.Status != 200 || tl.Received == 0 {
				t.Errorf("retcode line %q", sc.Text())
			}
		case ClassSafemode:
			if tl.Reason != flmsg.BodySafemode || tl.Retcode != 0 {
				t.Errorf("refusal line %q", sc.Text())
			}
		}
		if cl == ClassSucceed && ep != device.EndpointStartFLJob || ep == device.EndpointUpdateModel {
			if tl.Iteration < 1 || tl.Iteration > iterations {
				t.Errorf("line %q: iteration out of the job", sc.Text())
			}
		}
		if ep == device.EndpointUpdateModel && cl == ClassSucceed {
			if key := fmt.Sprint(tl.Device, "/", tl.Iteration); seen[key] {
				t.Errorf("two accepted updates of %s", key)
			} else {
				seen[key] = true
			}
		}
		seen[tl.Class] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for ep, st := range s.Endpoints {
		if counts[ep] != st.Classes {
			t.Errorf("%s: trace counts %v, summary %v", st.Endpoint, counts[ep], st.Classes)
		}
	}
	// OutOfTime (the device turned away) comes in most runs, not all: a
	// device held up by safemode may come back to the next iteration.
	for _, c := range []Class{ClassSucceed, ClassSucNotReady, ClassSafemode, ClassJobFinished} {
		if !seen[c.String()] {
			t.Errorf("no %s line in the trace", c)
		}
	}
	if n := counts[device.EndpointUpdateModel][ClassSucceed]; n != int64(s.Updates) || n != (devices-1)*iterations {
		t.Errorf("%d accepted updates traced, summary %d", n, s.Updates)
	}
}

// failingWriter fails every write after the first n bytes.
type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		n := w.n
		w.n = 0
		return n, errors.New("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

// TestRunTraceWriteError: a trace that cannot be written does not stop
// the devices; Run finishes the job and then reports the error.
func TestRunTraceWriteError(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10, 20}}})
	if err != nil {
		t.Fatal(err)
	}
	const devices, iterations = 3, 3
	fs := newFLServer(t, 1, devices, iterations, model.New(l))
	cfg := loadConfig(devices, fs.urls)
	cfg.Trace = &failingWriter{n: 100}
	s, err := runBounded(cfg)
	if err == nil || !strings.Contains(err.Error(), "cannot write the trace: disk full") {
		t.Fatalf("Run: %v, want the trace's write error", err)
	}
	if s == nil || s.Finished != devices || s.DeviceIterations != devices*iterations {
		t.Errorf("summary %+v: the job did not finish", s)
	}
}
