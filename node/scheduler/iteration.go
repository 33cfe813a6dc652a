package scheduler

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/iteration"
	"github.com/fedcluster/fedcluster/node/logging"
	"github.com/fedcluster/fedcluster/node/record"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// iterationConfig maps the FL section onto the iteration machine's config.
func iterationConfig(c *config.Config) iteration.Config {
	ic := iteration.DefaultConfig()
	ic.Params = c.FL.Params()
	return ic
}

func planOf(p iteration.Params) *ctl.Plan {
	return &ctl.Plan{FLIterationNum: p.FLIterationNum, ClientEpochNum: p.ClientEpochNum, ClientBatchSize: p.ClientBatchSize, ClientLearningRate: p.ClientLearningRate}
}

// iterStateLocked is what a (re)registering server needs to answer devices.
func (s *Scheduler) iterStateLocked() ctl.IterationState {
	st := s.iter.Status()
	return ctl.IterationState{Iteration: st.Iteration, Instance: st.Instance.String(), NextReqTime: st.NextReqTime, Plan: planOf(s.iter.Query())}
}

func answer(r iteration.Reply) ctl.Answer {
	a := ctl.Answer{Reason: r.Reason, Iteration: r.Iteration, NextReqTime: r.NextReqTime, DataSize: r.DataSize}
	switch r.Code {
	case iteration.CodeSucceed:
		a.Code = ctl.AnswerSucceed
	case iteration.CodeOutOfTime:
		a.Code = ctl.AnswerOutOfTime
	case iteration.CodeDisabled:
		a.Code = ctl.AnswerDisabled
	default:
		a.Code = ctl.AnswerSafemode
	}
	return a
}

// syncMembersLocked tells the iteration machine which servers take part:
// alive members join, dead or scaled-in ones are lost. A member restored
// from the saved state counts as alive until it registers again or the
// heartbeat timeout declares it dead.
func (s *Scheduler) syncMembersLocked() {
	now := s.now()
	live := map[string]bool{}
	for _, n := range s.members.Members() {
		if n.Alive && (s.conns[n.ID] != nil || s.awaited[n.ID]) {
			live[n.ID] = true
		}
	}
	for id := range s.joined {
		if !live[id] {
			delete(s.joined, id)
			s.iter.ServerLost(now, id)
			s.log.Info("server left the iteration", zap.String("node", id))
			if s.awaited[id] {
				// Declared dead before it registered again.
				delete(s.awaited, id)
				s.partialGoneLocked(id)
			}
		}
	}
	var ids []string
	for id := range live {
		if !s.joined[id] {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		s.joined[id] = true
		s.iter.ServerJoined(now, id)
	}
}

// runActionsLocked carries out what the iteration machine asked for, in order.
func (s *Scheduler) runActionsLocked() {
	actions := s.iter.Ready()
	force := false
	for _, a := range actions {
		switch a.(type) {
		case iteration.NextIteration, iteration.ParamsChanged, iteration.InstanceChanged:
			force = true
		}
	}
	// An iteration's end is saved with the state before the servers are
	// told and its record is written.
	var records []record.Record
	for _, a := range actions {
		switch a := a.(type) {
		case iteration.NextIteration:
			st := s.iter.Status()
			s.prevNext, s.lastNext = s.lastNext, &ctl.NextIteration{Iteration: a.Iteration, Completed: a.Completed, Valid: a.Valid, Reason: a.Reason, SHA256: a.Sha256, Instance: a.Instance.String(), NextReqTime: st.NextReqTime}
		case iteration.Record:
			records = append(records, s.recordOf(a))
			s.lastRecord = &records[len(records)-1]
		}
	}
	if force {
		// Save before telling the servers, so that a scheduler that dies
		// right after never restores a state older than theirs.
		s.dirty = true
		s.saveLocked(true)
		s.faultExitLocked(actions)
	}
	for _, a := range actions {
		switch a := a.(type) {
		case iteration.RoundEvent:
			s.pushStateLocked(false)
		case iteration.StartAggregation:
			s.startAggregationLocked(a)
		case iteration.NextIteration:
			s.sendAllLocked(ctl.KindNextIteration, ctl.Encode(s.lastNext))
			s.applyScaleInLocked()
			if a.Valid {
				s.log.Info("iteration completed", zap.Uint64("iteration", a.Completed), zap.String("model_sha256", a.Sha256), zap.String("instance", a.Instance.String()))
			} else {
				s.log.Warn("iteration failed", zap.Uint64("iteration", a.Completed), zap.String("reason", a.Reason))
			}
		case iteration.ParamsChanged, iteration.InstanceChanged:
			s.pushStateLocked(true)
			if ic, ok := a.(iteration.InstanceChanged); ok {
				s.log.Info("instance state", zap.String("state", ic.State.String()), zap.String("reason", ic.Reason))
			}
		case iteration.Record:
			s.writeRecordLocked(a, &records[0])
			records = records[1:]
		}
	}
	if !force {
		// Round events: saved by the tick loop, at most every
		// persistEvery, so that the calls served on the event loop
		// (admissions and counts, see inlineCalls) never wait for a disk.
		s.dirty = true
		return
	}
	// Saved above; again only if an action changed the state (a scale-in
	// applied at the iteration's end).
	s.saveLocked(true)
}

func (s *Scheduler) startAggregationLocked(a iteration.StartAggregation) {
	parts := make([]ctl.Participant, 0, len(a.Servers))
	for _, id := range a.Servers {
		n, _ := s.members.Node(id)
		parts = append(parts, ctl.Participant{NodeID: id, PeerAddr: n.PeerAddr})
	}
	for _, id := range a.Servers {
		c := s.conns[id]
		if c == nil {
			continue // it will be declared lost and the attempt redone
		}
		body := ctl.Encode(ctl.Aggregate{Iteration: a.Iteration, Attempt: a.Attempt, Participants: parts, Expected: a.Expected[id], DeadlineMs: a.Deadline.UnixMilli()})
		if err := c.Send(ctl.KindAggregate, body); err != nil {
			s.log.Warn("cannot start aggregation", zap.String("on", id), zap.Error(err))
		}
	}
	// Logged once the servers are on their way.
	s.log.Info("aggregating", zap.Uint64("iteration", a.Iteration), zap.Int("attempt", a.Attempt), zap.Strings("servers", a.Servers), zap.Int("updates", a.Total))
}

// pushStateLocked pushes the iteration state to every server; unless
// forced, only when it differs from the last push. Of a round's first and
// last counts only the iteration's first admission changes what servers
// hold (next_req_time); the other three pushes per iteration each woke
// every server's event loop and its waiting getModel requests for nothing,
// the last one as the aggregation began.
func (s *Scheduler) pushStateLocked(force bool) {
	body := ctl.Encode(s.iterStateLocked())
	if !force && bytes.Equal(body, s.pushedState) {
		return
	}
	s.pushedState = body
	s.sendAllLocked(ctl.KindIterState, body)
}

func (s *Scheduler) sendAllLocked(kind frame.Kind, body []byte) {
	for id, c := range s.conns {
		if err := c.Send(kind, body); err != nil {
			s.log.Warn("cannot push to server", zap.String("to", id), zap.Error(err))
		}
	}
}

// recordOf is r's line in metrics.json.
func (s *Scheduler) recordOf(r iteration.Record) record.Record {
	res := record.ResultSuccess
	if !r.Valid {
		res = record.ResultFail
	}
	rec := record.Record{
		FLName:                 s.cfg.FL.FLName,
		InstanceStatus:         r.Instance.String(),
		FLIterationNum:         uint64(r.FLIterationNum),
		CurrentIteration:       r.Iteration,
		IterationExecutionTime: uint64(r.ExecutionTime.Milliseconds()),
		IterationResult:        res,
		Admitted:               uint64(r.Admitted),
		Updated:                uint64(max(r.Updated-(r.Lost-r.Uncounted), 0)),
		Lost:                   uint64(r.Lost),
		FailReason:             r.Reason,
		IterationSwitchMs:      float64(r.SwitchTime.Microseconds()) / 1000,
		ModelSHA256:            r.Sha256,
		Engine:                 s.engines[r.Iteration],
		FoldThroughputMBps:     s.foldMBps[r.Iteration],
		RoundDurationsMs: &record.RoundDurations{
			StartFLJob:  float64(r.StartFLJobDuration.Microseconds()) / 1000,
			UpdateModel: float64(r.UpdateModelDuration.Microseconds()) / 1000,
			Aggregation: float64(r.SwitchTime.Microseconds()) / 1000,
		},
		ClientVisitedInfo: record.ClientVisitedInfo{
			StartFLJobAcceptClientNum:  uint64(r.Admitted),
			UpdateModelAcceptClientNum: uint64(r.Updated),
		},
	}
	var rejected uint64
	if len(r.Rejected) > 0 {
		rec.RejectedByReason = make(map[string]uint64, len(r.Rejected))
		for k, v := range r.Rejected {
			rec.RejectedByReason[k] = uint64(v)
			rejected += uint64(v)
		}
	}
	rejectedUpd := min(uint64(r.RejectedUpdates), rejected) // a subset, even from a restored state
	rec.ClientVisitedInfo.StartFLJobTotalClientNum = uint64(r.Admitted) + rejected - rejectedUpd
	rec.ClientVisitedInfo.StartFLJobRejectClientNum = rejected - rejectedUpd
	rec.ClientVisitedInfo.UpdateModelTotalClientNum = uint64(r.Updated) + rejectedUpd
	rec.ClientVisitedInfo.UpdateModelRejectClientNum = rejectedUpd
	var lossSum float64
	var losses int
	for _, l := range s.losses[r.Iteration] {
		lossSum, losses = lossSum+l.sum, losses+l.n
	}
	if losses > 0 && r.Valid {
		mean := lossSum / float64(losses)
		rec.Loss = &mean
		// MindSpore's metricsLoss: Σ upload_loss ÷ the updateModel threshold.
		rec.MetricsLoss = lossSum / float64(max(r.UpdateThreshold, 1))
	}
	return rec
}

// writeRecordLocked appends rec, r's record, to metrics.json and forgets
// what was kept for it.
func (s *Scheduler) writeRecordLocked(r iteration.Record, rec *record.Record) {
	delete(s.losses, r.Iteration)
	s.iterationsTotal.WithLabelValues(rec.IterationResult).Inc()
	s.updatesLost.Add(float64(r.Lost))
	delete(s.engines, r.Iteration)
	delete(s.foldMBps, r.Iteration)
	if err := s.records.Append(rec); err != nil {
		s.log.Error("cannot write metrics record", zap.Error(err))
	}
	s.log.Info("iteration record", zap.Uint64("iteration", r.Iteration), zap.String("result", rec.IterationResult), zap.Int("admitted", r.Admitted), zap.Int("updated", r.Updated), zap.Int("lost", r.Lost),
		zap.Duration("execution", r.ExecutionTime), zap.Duration("switch", r.SwitchTime), zap.String("reason", r.Reason))
}

// serveIteration handles the iteration frames of a registered server.
func (s *Scheduler) serveIteration(nodeID string, c *transport.Conn, kind frame.Kind, body []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[nodeID] != c {
		return nil, fmt.Errorf("node %s has registered again on another connection", nodeID)
	}
	now := s.now()
	if s.leaving[nodeID] && (kind == ctl.KindAdmit || kind == ctl.KindCountUpdate) {
		// A server being scaled in sends its devices elsewhere.
		return ctl.Encode(ctl.Answer{Code: ctl.AnswerSafemode, Iteration: s.iter.Iteration()}), nil
	}
	switch kind {
	case ctl.KindAdmit:
		var r ctl.Admit
		if err := ctl.Decode(body, &r); err != nil {
			return nil, err
		}
		a := answer(s.iter.Admit(now, nodeID, r.FLID, r.DataSize))
		s.runActionsLocked()
		return ctl.Encode(a), nil
	case ctl.KindCountUpdate:
		var r ctl.CountUpdate
		if err := ctl.Decode(body, &r); err != nil {
			return nil, err
		}
		a := answer(s.iter.CountUpdate(now, nodeID, r.FLID, r.Iteration))
		s.runActionsLocked()
		return ctl.Encode(a), nil
	case ctl.KindAggregated:
		var r ctl.Aggregated
		if err := ctl.Decode(body, &r); err != nil {
			return nil, err
		}
		if r.Iteration == s.iter.Iteration() {
			// Noted before AggregationDone, whose actions write the record;
			// a stale report (an earlier iteration) leaves nothing behind.
			s.engines[r.Iteration] = r.Engine
			if s.losses[r.Iteration] == nil {
				s.losses[r.Iteration] = make(map[string]lossReport)
			}
			s.losses[r.Iteration][nodeID] = lossReport{sum: r.LossSum, n: r.Losses}
			if r.FoldMBps > 0 {
				s.foldMBps[r.Iteration] = max(s.foldMBps[r.Iteration], r.FoldMBps)
			}
		}
		err := s.iter.AggregationDone(now, nodeID, r.Iteration, r.Attempt, r.SHA256, r.Folded)
		s.runActionsLocked()
		if err != nil {
			s.log.Warn("aggregation report refused", zap.String("from", nodeID), zap.Uint64("iteration", r.Iteration), zap.Int("attempt", r.Attempt), zap.Error(err))
		}
		return nil, err
	}
	return nil, fmt.Errorf("unexpected frame kind %d", kind)
}

// tickIterationLocked fires the iteration machine's timers.
func (s *Scheduler) tickIterationLocked(now time.Time) {
	s.iter.Tick(now)
	s.runActionsLocked()
}

// scaleInLocked removes servers now when no device is in the iteration,
// else at its end.
func (s *Scheduler) scaleInLocked(ids []string) error {
	if _, err := s.members.CheckScaleIn(ids); err != nil {
		return err
	}
	for _, id := range ids {
		s.leaving[id] = true
	}
	s.dirty = true
	if st := s.iter.Status(); st.Phase == iteration.PhaseWaiting {
		s.applyScaleInLocked()
	}
	return nil
}

// applyScaleInLocked takes the leaving servers out of the cluster: ranks are
// repacked, the iteration stops counting on them, and they are told.
func (s *Scheduler) applyScaleInLocked() {
	if len(s.leaving) == 0 {
		return
	}
	ids := make([]string, 0, len(s.leaving))
	for id := range s.leaving {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	clear(s.leaving)
	if err := s.members.ScaleIn(ids); err != nil {
		s.log.Error("cannot scale in", zap.Strings("node_ids", ids), zap.Error(err))
		return
	}
	s.log.Info("servers scaled in", zap.Strings("node_ids", ids), zap.Int("server_num", s.members.ServerNum()))
	// Out of the iteration now, not at the next push of the membership:
	// an update one of them counted in the iteration that has just begun
	// would be lost when it leaves.
	s.syncMembersLocked()
	for _, id := range ids {
		if c := s.conns[id]; c != nil {
			_ = c.Send(ctl.KindScaleIn, nil)
		}
	}
	s.dirty = true
}

// clusterStateLocked is the state /state reports: a pending scale-in and a
// disabled instance show through the membership's state.
func (s *Scheduler) clusterStateLocked() string {
	switch {
	case len(s.leaving) > 0:
		return "CLUSTER_SCALE_IN"
	case s.iter.Status().Instance == iteration.InstanceDisabled:
		return "CLUSTER_DISABLE_FLS"
	}
	return s.members.State()
}

// lossReport is one server's sum of reported training losses.
type lossReport struct {
	sum float64
	n   int
}

// faultExitLocked ends the process after the save of the iteration
// faultExitAfterSave names (fault injection for recovery tests).
func (s *Scheduler) faultExitLocked(actions []iteration.Action) {
	for _, a := range actions {
		if ni, ok := a.(iteration.NextIteration); ok && s.faultExitAfterSave != 0 && ni.Completed == s.faultExitAfterSave {
			s.log.Warn("fault injection: exiting after saving the end of the iteration", zap.Uint64("iteration", ni.Completed))
			logging.Sync(s.log)
			os.Exit(3)
		}
	}
}
