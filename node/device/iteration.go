package device

import (
	"context"
	"fmt"
	"time"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// Job is what a Trainer gets for one iteration.
type Job struct {
	// Iteration is the server's iteration the device was admitted to.
	Iteration int32
	// Plan is the FLPlan of the startFLJob answer (epochs, mini-batch,
	// learning rate); HasPlan is false when the answer had none.
	Plan    flmsg.Plan
	HasPlan bool
	// Model is the served global model. The trainer trains it in place;
	// its weights after Train are uploaded (scaled in place by DataSize,
	// so after a RunIteration that fails past updateModel, Client.Model
	// holds no usable model until the next one is served). The Client
	// owns it: do not keep it past Train.
	Model *model.Model
}

// Trainer trains a device's model for one iteration and returns the
// training loss (0 when unknown; it is sent as upload_loss).
type Trainer interface {
	Train(ctx context.Context, job *Job) (loss float32, err error)
}

// TrainerFunc adapts a function to Trainer.
type TrainerFunc func(ctx context.Context, job *Job) (float32, error)

// Train calls f.
func (f TrainerFunc) Train(ctx context.Context, job *Job) (float32, error) { return f(ctx, job) }

// IterationResult is what one RunIteration did.
type IterationResult struct {
	// Iteration is the iteration the device trained for and uploaded to.
	Iteration int32
	// ServerIteration is the server's current iteration in the getModel
	// answer (normally Iteration+1).
	ServerIteration int32
	// Restarts counts the OutOfTime answers that sent the device back to
	// startFLJob.
	Restarts int
	// Loss is the trainer's loss.
	Loss float32
	// Model is the global model getModel served: Client.Model(), valid
	// until the Client's next request.
	Model *model.Model
	// Duration is the wall time of the whole call.
	Duration time.Duration
}

// RunIteration takes part in one iteration: startFLJob, train, updateModel
// (weights × DataSize), then getModel until the iteration's model is
// served. It reacts to the answers as MindSpore's clients do:
//
//   - SucNotReady from getModel: poll again (PollModel's bounds).
//   - OutOfTime from any round: wait until next_req_time (bounded by
//     OutOfTimeMinWait and OutOfTimeMaxWait) and start again at startFLJob,
//     at most MaxRestarts times.
//   - RequestError, SystemError or an unknown code: a *RetcodeError.
//   - "The server's training job is disabled or finished.": ErrJobFinished.
//   - safemode or not ready: the same request again after RefusalDelay.
//   - no answer: the same request on another server (MaxAttempts).
//   - an answer that fails verification: an error wrapping ErrBadResponse.
func (c *Client) RunIteration(ctx context.Context, t Trainer) (IterationResult, error) {
	began := time.Now()
	res := IterationResult{Iteration: -1}
	done := func(err error) (IterationResult, error) {
		res.Duration = time.Since(began)
		return res, err
	}
	for {
		st, err := c.StartFLJob(ctx)
		if err != nil {
			return done(err)
		}
		if st.Retcode == flmsg.OutOfTime {
			if err := c.restart(ctx, &res, EndpointStartFLJob, st.Reason, st.NextReqTime); err != nil {
				return done(err)
			}
			continue
		}
		if st.Retcode != flmsg.Succeed {
			return done(&RetcodeError{Endpoint: EndpointStartFLJob, Retcode: st.Retcode, Reason: st.Reason})
		}
		res.Iteration = st.Iteration

		job := Job{Iteration: st.Iteration, Plan: st.Plan, HasPlan: st.HasPlan, Model: c.model}
		loss, err := t.Train(ctx, &job)
		if err != nil {
			return done(fmt.Errorf("cannot train for iteration %d: %w", st.Iteration, err))
		}
		res.Loss = loss

		up, err := c.updateServed(ctx, st.Iteration, loss)
		if err != nil {
			return done(err)
		}
		if up.Retcode == flmsg.OutOfTime {
			if err := c.restart(ctx, &res, EndpointUpdateModel, up.Reason, up.NextReqTime); err != nil {
				return done(err)
			}
			continue
		}
		if up.Retcode != flmsg.Succeed {
			return done(&RetcodeError{Endpoint: EndpointUpdateModel, Retcode: up.Retcode, Reason: up.Reason})
		}

		gm, err := c.PollModel(ctx, st.Iteration)
		if err != nil {
			return done(err)
		}
		if gm.Retcode == flmsg.OutOfTime {
			if err := c.restart(ctx, &res, EndpointGetModel, gm.Reason, gm.NextReqTime); err != nil {
				return done(err)
			}
			continue
		}
		if gm.Retcode != flmsg.Succeed {
			return done(&RetcodeError{Endpoint: EndpointGetModel, Retcode: gm.Retcode, Reason: gm.Reason})
		}
		res.ServerIteration = gm.Iteration
		res.Model = c.model
		return done(nil)
	}
}

// restart waits for next (bounded) before the device starts the
// iteration again, or returns an error past MaxRestarts.
func (c *Client) restart(ctx context.Context, res *IterationResult, ep Endpoint, reason string, next time.Time) error {
	res.Restarts++
	if res.Restarts > c.o.MaxRestarts {
		return fmt.Errorf("cannot take part in an iteration: %d OutOfTime answers, the last from %s: %q: %w",
			res.Restarts, ep, reason, ErrGaveUp)
	}
	return c.sleep(ctx, c.outOfTimeWait(next))
}

// outOfTimeWait is how long to wait for next: until it, within
// [OutOfTimeMinWait, OutOfTimeMaxWait], plus up to 10% (at most 50 ms) of
// jitter so that the devices turned away together do not come back in
// the same millisecond.
func (c *Client) outOfTimeWait(next time.Time) time.Duration {
	d := c.o.OutOfTimeMinWait
	if !next.IsZero() {
		d = min(max(time.Until(next), d), c.o.OutOfTimeMaxWait)
	}
	j := min(d/10, 50*time.Millisecond)
	return d + time.Duration(c.rng.Int64N(int64(j)+1))
}
