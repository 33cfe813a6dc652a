package sim

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/fedcluster/fedcluster/node/device"
)

// IterationRow is one line of the per-iteration table.
type IterationRow struct {
	Iteration int32
	// Admitted, Uploaded and Done count this run's devices that passed
	// startFLJob, updateModel and getModel in the iteration.
	Admitted, Uploaded, Done int
	// Duration is from the first admission to the first device getting
	// the iteration's model (as seen by the devices).
	Duration time.Duration
	// Evaluated tells whether Loss and Accuracy were measured.
	Evaluated      bool
	Loss, Accuracy float64
	// Unchanged: the evaluated model is the one the iteration started
	// from (the previous iteration's, or the initial model), bit for
	// bit. Servers store the previous model again when an iteration fails
	// (disabled, timed out, a server lost); the cluster's records say why.
	Unchanged bool
}

// EndpointStats are the requests of one endpoint.
type EndpointStats struct {
	Endpoint device.Endpoint
	// Requests is the number of HTTP exchanges, Classes how they ended.
	Requests int64
	Classes  [NumClasses]int64
	P50, P99 time.Duration
	// FirstError is the first failed exchange's error ("" if none), an
	// example of what the failure classes counted.
	FirstError string
}

// Summary is what a run did.
type Summary struct {
	Mode    Mode
	Devices int
	Elapsed time.Duration
	// Iterations has one row per iteration a device completed, in order.
	Iterations []IterationRow
	Endpoints  [device.NumEndpoints]EndpointStats
	// DeviceIterations counts completed RunIterations, Updates the
	// updateModel answers SUCCEED, UploadBytes the bytes of answered
	// updateModel requests, DownloadBytes those of every answer with a
	// retcode (the served models, once per iteration where startFLJob
	// leaves out the model the device holds).
	DeviceIterations int64
	Updates          int64
	UploadBytes      int64
	DownloadBytes    int64
	// Finished counts the devices that stopped because the job finished:
	// told so, or stopped by the run once another one was. DeviceErrors
	// lists why the others stopped (context ends excluded).
	Finished     int
	DeviceErrors []error
}

func perSec(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// DeviceIterationsPerSec is DeviceIterations over the run's wall time.
func (s *Summary) DeviceIterationsPerSec() float64 { return perSec(s.DeviceIterations, s.Elapsed) }

// UpdatesPerSec is Updates over the run's wall time.
func (s *Summary) UpdatesPerSec() float64 { return perSec(s.Updates, s.Elapsed) }

// UploadMBPerSec is UploadBytes (in 10^6 bytes) over the run's wall time.
func (s *Summary) UploadMBPerSec() float64 { return perSec(s.UploadBytes, s.Elapsed) / 1e6 }

// DownloadMBPerSec is DownloadBytes (in 10^6 bytes) over the run's wall
// time.
func (s *Summary) DownloadMBPerSec() float64 { return perSec(s.DownloadBytes, s.Elapsed) / 1e6 }

// Final returns the last evaluated iteration's row.
func (s *Summary) Final() (IterationRow, bool) {
	for i := len(s.Iterations) - 1; i >= 0; i-- {
		if s.Iterations[i].Evaluated {
			return s.Iterations[i], true
		}
	}
	return IterationRow{}, false
}

func (r *run) summary() *Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &Summary{
		Mode:             r.cfg.Mode,
		Devices:          r.cfg.Devices,
		Elapsed:          time.Since(r.start),
		DeviceIterations: r.devIters,
		UploadBytes:      r.cnt.uploaded.Load(),
		DownloadBytes:    r.cnt.downloaded.Load(),
		Finished:         r.finished,
		DeviceErrors:     slices.Clone(r.devErrs),
	}
	for it, st := range r.iters {
		if st.done == 0 {
			continue
		}
		s.Iterations = append(s.Iterations, IterationRow{
			Iteration: it, Admitted: st.admitted, Uploaded: st.uploaded, Done: st.done,
			Duration: st.firstDone.Sub(st.firstAdmit), Evaluated: st.evaluated, Loss: st.loss, Accuracy: st.accuracy, Unchanged: st.unchanged,
		})
	}
	slices.SortFunc(s.Iterations, func(a, b IterationRow) int { return int(a.Iteration) - int(b.Iteration) })
	for ep := range device.NumEndpoints {
		e := &s.Endpoints[ep]
		e.Endpoint = ep
		for c := range NumClasses {
			n := r.cnt.classes[ep][c].Load()
			e.Classes[c] = n
			e.Requests += n
		}
		e.P50 = r.cnt.latency[ep].quantile(0.50)
		e.P99 = r.cnt.latency[ep].quantile(0.99)
		if msg := r.cnt.firstErr[ep].Load(); msg != nil {
			e.FirstError = *msg
		}
	}
	s.Updates = s.Endpoints[device.EndpointUpdateModel].Classes[ClassSucceed]
	return s
}

// UnchangedNote marks an iteration whose global model is the one it
// started from in the tables and progress lines.
const UnchangedNote = "model unchanged"

// WriteText writes the summary as plain-text tables.
func (s *Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%d devices, %s mode, %s\n\n", s.Devices, s.Mode, s.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "%9s  %8s  %8s  %8s  %7s  %10s\n", "iteration", "accuracy", "loss", "devices", "updates", "duration")
	for _, it := range s.Iterations {
		acc, loss := "-", "-"
		if it.Evaluated {
			acc, loss = fmt.Sprintf("%.4f", it.Accuracy), fmt.Sprintf("%.4f", it.Loss)
		}
		note := ""
		if it.Unchanged {
			note = "  " + UnchangedNote
		}
		fmt.Fprintf(&b, "%9d  %8s  %8s  %8d  %7d  %10s%s\n", it.Iteration, acc, loss, it.Done, it.Uploaded, it.Duration.Round(time.Microsecond), note)
	}
	fmt.Fprintf(&b, "\n%-12s %9s %10s %10s  %s\n", "endpoint", "requests", "p50", "p99", "outcomes")
	for _, e := range s.Endpoints {
		var parts []string
		for c, n := range e.Classes {
			if n > 0 {
				parts = append(parts, fmt.Sprintf("%s=%d", Class(c), n))
			}
		}
		fmt.Fprintf(&b, "%-12s %9d %10s %10s  %s\n", e.Endpoint, e.Requests, e.P50.Round(time.Microsecond), e.P99.Round(time.Microsecond), strings.Join(parts, " "))
	}
	for _, e := range s.Endpoints {
		if e.FirstError != "" {
			fmt.Fprintf(&b, "first %s failure: %s\n", e.Endpoint, e.FirstError)
		}
	}
	fmt.Fprintf(&b, "\ndevice-iterations/s %.1f, updates/s %.1f, uploaded %.2f MB/s, downloaded %.2f MB/s\n",
		s.DeviceIterationsPerSec(), s.UpdatesPerSec(), s.UploadMBPerSec(), s.DownloadMBPerSec())
	if len(s.DeviceErrors) > 0 {
		fmt.Fprintf(&b, "%d devices stopped on errors, the first: %v\n", len(s.DeviceErrors), s.DeviceErrors[0])
	}
	_, err := io.WriteString(w, b.String())
	return err
}
