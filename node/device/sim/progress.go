package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/node/device/lenet"
	"github.com/fedcluster/fedcluster/node/device/mnist"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// stat returns the iteration's stat, creating it; r.mu is held.
func (r *run) stat(it int32) *iterStat {
	st := r.iters[it]
	if st == nil {
		st = &iterStat{}
		r.iters[it] = st
	}
	return st
}

// observe counts (and traces) one exchange and notices accepted updates.
func (r *run) observe(d *simDevice, ob device.Observation) {
	r.cnt.observe(ob)
	if r.trace != nil {
		r.trace.record(d, &ob)
	}
	// Sequentially consistent with deviceStopped's Swap and Load: one of
	// the two sees the other's store.
	away := ob.Outcome == device.OutcomeRetcode && ob.Retcode == flmsg.OutOfTime
	d.turnedAway.Store(away)
	if away && r.jobDone.Load() {
		d.stop(errJobFinishedElsewhere)
	}
	if ob.Endpoint == device.EndpointUpdateModel && ob.Outcome == device.OutcomeRetcode && ob.Retcode == flmsg.Succeed {
		r.mu.Lock()
		r.stat(d.iter).uploaded++
		r.emit(Event{Kind: EventUploaded, Device: d.i, Iteration: d.iter})
		r.mu.Unlock()
	}
}

// admitted counts a device admitted to iteration it with the model m it
// starts from, which the first one keeps for the evaluator.
func (r *run) admitted(d *simDevice, it int32, m *model.Model) {
	r.mu.Lock()
	st := r.stat(it)
	st.admitted++
	first := st.firstAdmit.IsZero()
	if first {
		st.firstAdmit = time.Now()
	}
	r.newest = max(r.newest, it)
	r.emit(Event{Kind: EventAdmitted, Device: d.i, Iteration: it})
	r.mu.Unlock()
	if !first || r.cfg.Mode != ModeTrain || !r.cfg.Evaluate || m == nil {
		return
	}
	start := m.Clone() // before training changes it, outside the lock
	r.mu.Lock()
	r.stat(it).start = start
	r.mu.Unlock()
}

func (r *run) deviceDone(d *simDevice, res device.IterationResult) {
	r.mu.Lock()
	st := r.stat(res.Iteration)
	first := st.done == 0
	st.done++
	r.devIters++
	if first {
		st.firstDone = time.Now()
	}
	queue := first && r.cfg.Mode == ModeTrain && r.cfg.Evaluate
	r.emit(Event{Kind: EventDeviceDone, Device: d.i, Iteration: res.Iteration})
	r.mu.Unlock()
	if !queue {
		return
	}
	// Only the first device of an iteration gets here: clone outside the
	// lock, then queue.
	m := res.Model.Clone()
	r.mu.Lock()
	r.evalQ = append(r.evalQ, evalJob{iteration: res.Iteration, m: m})
	r.mu.Unlock()
	r.wakeEvaluator()
}

// errJobFinishedElsewhere stops a device turned away with OutOfTime once
// another one was told the job finished.
var errJobFinishedElsewhere = fmt.Errorf("stopped: another device was told that %w", device.ErrJobFinished)

func (r *run) deviceStopped(d *simDevice, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active--
	switch {
	case errors.Is(err, device.ErrJobFinished):
		r.finished++
		if !r.jobDone.Swap(true) {
			for _, o := range r.devs {
				if o.turnedAway.Load() {
					o.stop(errJobFinishedElsewhere)
				}
			}
		}
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
	default:
		r.devErrs = append(r.devErrs, err)
		if r.cfg.Logger != nil {
			r.cfg.Logger.Error("device stopped", zap.Int("device", d.i), zap.Error(err))
		}
	}
	r.emit(Event{Kind: EventDeviceStopped, Device: d.i, Iteration: d.iter, Err: err})
}

// emit fills ev's counts and hands it to OnEvent; r.mu is held, so events
// go out one at a time.
func (r *run) emit(ev Event) {
	if r.cfg.OnEvent == nil {
		return
	}
	st := r.stat(ev.Iteration)
	ev.Admitted, ev.Uploaded, ev.Done = st.admitted, st.uploaded, st.done
	ev.Active = r.active
	ev.Elapsed = time.Since(r.start)
	switch {
	case st.done > 0 || (st.uploaded > 0 && st.uploaded >= st.admitted):
		ev.Round = device.EndpointGetModel.String()
	case st.uploaded > 0:
		ev.Round = device.EndpointUpdateModel.String()
	default:
		ev.Round = device.EndpointStartFLJob.String()
	}
	r.cfg.OnEvent(ev)
}

func (r *run) wakeEvaluator() {
	select {
	case r.evalWake <- struct{}{}:
	default:
	}
}

// evaluator evaluates queued global models until the end marker or ctx.
func (r *run) evaluator(ctx context.Context, test *mnist.Subset) {
	for {
		r.mu.Lock()
		q := r.evalQ
		r.evalQ = nil
		r.mu.Unlock()
		for _, job := range q {
			if job.iteration == -1 && job.m == nil {
				return
			}
			if ctx.Err() != nil {
				return
			}
			loss, acc, err := lenet.Evaluate(job.m, test)
			r.mu.Lock()
			if err != nil {
				if r.cfg.Logger != nil {
					r.cfg.Logger.Error("cannot evaluate the global model", zap.Int32("iteration", job.iteration), zap.Error(err))
				}
				r.mu.Unlock()
				continue
			}
			st := r.stat(job.iteration)
			unchanged := st.start != nil && slices.Equal(st.start.Data, job.m.Data)
			st.evaluated, st.unchanged, st.loss, st.accuracy = true, unchanged, loss, acc
			st.start = nil
			r.emit(Event{Kind: EventEvaluated, Iteration: job.iteration, Loss: loss, Accuracy: acc, Unchanged: unchanged})
			r.mu.Unlock()
			if r.cfg.Logger != nil {
				r.cfg.Logger.Info("global model evaluated", zap.Int32("iteration", job.iteration),
					zap.Float64("loss", loss), zap.Float64("accuracy", acc))
			}
		}
		select {
		case <-r.evalWake:
		case <-ctx.Done():
			return
		}
	}
}
