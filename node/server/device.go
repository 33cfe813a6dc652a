package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/native"
	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/logging"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/flmsg"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// maxDataSize bounds the data_size a device may claim: larger values are
// not a phone's training set but an attempt to dominate the average.
const maxDataSize = 100_000_000

// rpcTimeout bounds a round trip to the scheduler on the request path. A
// scheduler that is gone is noticed sooner (the connection drops, and the
// server answers safemode at once); this bounds a slow one, generously: an
// admission whose answer is lost is a device the iteration waits for in
// vain (the scheduler counted it, and refuses its second startFLJob as
// MindSpore does).
const rpcTimeout = 30 * time.Second

// admitWait bounds how long a device admitted for the next iteration waits
// for this server to switch to it: the scheduler opens the iteration as
// soon as the servers agree on the aggregate, while each server still
// commits its checkpoint (seconds, for a large model under load). Turning
// the device away would strand its admission, as above.
const admitWait = 30 * time.Second

var builders = sync.Pool{New: func() any { return flatbuffers.NewBuilder(1 << 10) }}

func (s *Server) nextReq(ms int64) string { return strconv.FormatInt(ms, 10) }

// requestWarnings are the warnings of conditions every device request may
// meet while they last, each logged once per warnEvery with the number
// held back; fedcluster_device_requests_total counts every refusal.
type requestWarnings struct {
	admit, count, notReached, noModel logging.Every
}

const warnEvery = 10 * time.Second

func (w *requestWarnings) init(period time.Duration) {
	for _, e := range []*logging.Every{&w.admit, &w.count, &w.notReached, &w.noModel} {
		e.Period = period
	}
}

// warn logs msg if e lets it through.
func (s *Server) warn(e *logging.Every, msg string, fields ...zap.Field) {
	if ok, held := e.Allow(time.Now()); ok {
		if held > 0 {
			fields = append(fields, zap.Int("held_back", held))
		}
		s.Logger().Warn(msg, fields...)
	}
}

// refuse answers with one of MindSpore's plain-text refusals and counts
// it under outcome.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, endpoint, outcome, body string) {
	s.count(endpoint, outcome)
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetBodyString(body)
}

// ask sends an admission or count request to the scheduler. A server that
// cannot reach the scheduler cannot admit devices: it answers safemode.
func (s *Server) ask(kind frame.Kind, v any) (ctl.Answer, error) {
	s.mu.Lock()
	c := s.sched
	s.mu.Unlock()
	if c == nil {
		return ctl.Answer{}, errors.New("not connected to the scheduler")
	}
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	body, err := c.Call(ctx, kind, ctl.Encode(v))
	if err != nil {
		return ctl.Answer{}, err
	}
	var a ctl.Answer
	return a, ctl.Decode(body, &a)
}

// linked reports whether the link to the scheduler is up.
func (s *Server) linked() bool {
	s.mu.Lock()
	c := s.sched
	s.mu.Unlock()
	if c == nil {
		return false
	}
	select {
	case <-c.Done():
		return false
	default:
		return true
	}
}

func (s *Server) checkTime(ts []byte) string {
	return checkTimestamp(ts, time.Now(), time.Duration(s.cfg.FL.ReplayAttackTimeDiff)*time.Millisecond, s.cfg.FL.LegacyTimestamps == "accept")
}

func (s *Server) startFLJob(ctx *fasthttp.RequestCtx) {
	st := s.plane.state()
	b := builders.Get().(*flatbuffers.Builder)
	defer builders.Put(b)
	reply := func(code int32, reason string, it uint64, next int64) {
		nr := ""
		if next > 0 {
			nr = s.nextReq(next)
		}
		ctx.SetBody(flmsg.BuildResponseFLJob(b, &flmsg.FLJobReply{Retcode: code, Reason: reason, Iteration: int32(it), NextReqTime: nr}))
	}
	body, buf, err := readSmall(ctx)
	defer releaseSmall(buf)
	if err != nil {
		s.bodyError(ctx, err)
		return
	}
	req, err := flmsg.DecodeRequestFLJob(body)
	if err != nil {
		s.count("startFLJob", "schema")
		reply(flmsg.RequestError, flmsg.Reason(err), st.iteration, 0)
		return
	}
	if !st.ready {
		s.refuse(ctx, "startFLJob", "not_ready", flmsg.BodyJobNotReady)
		return
	}
	if reason := s.checkTime(req.Timestamp); reason != "" {
		s.count("startFLJob", "timestamp")
		reply(flmsg.RequestError, reason, st.iteration, st.nextReqTime)
		return
	}
	if st.instance != "running" {
		s.refuse(ctx, "startFLJob", "disabled", flmsg.BodyJobDisabled)
		return
	}
	if len(req.FLID) == 0 || len(req.FLID) > 256 {
		reply(flmsg.RequestError, "fl_id must be 1 to 256 bytes.", st.iteration, st.nextReqTime)
		return
	}
	if req.DataSize > maxDataSize {
		reply(flmsg.RequestError, fmt.Sprintf("FL job data size %d is larger than the limit %d.", req.DataSize, maxDataSize), st.iteration, st.nextReqTime)
		return
	}
	if latest, _ := s.plane.store.Latest(); latest+1 < st.iteration {
		// Without the model this iteration starts from (it could not fetch
		// it), turn the device away before the scheduler admits it: the
		// admission would count toward the threshold, its update never.
		s.warn(&s.warned.noModel, "this server lacks the model the iteration starts from; devices are turned away",
			zap.Uint64("iteration", st.iteration), zap.Uint64("latest", latest))
		s.refuse(ctx, "startFLJob", "safemode", flmsg.BodySafemode)
		return
	}
	a, err := s.ask(ctl.KindAdmit, ctl.Admit{FLID: string(req.FLID), DataSize: int(req.DataSize)})
	if err != nil {
		s.warn(&s.warned.admit, "cannot admit device", zap.Error(err))
		s.refuse(ctx, "startFLJob", "safemode", flmsg.BodySafemode)
		return
	}
	switch a.Code {
	case ctl.AnswerDisabled:
		s.refuse(ctx, "startFLJob", "disabled", flmsg.BodyJobDisabled)
		return
	case ctl.AnswerSafemode:
		s.refuse(ctx, "startFLJob", "safemode", flmsg.BodySafemode)
		return
	case ctl.AnswerOutOfTime:
		s.count("startFLJob", "out_of_time")
		reply(flmsg.OutOfTime, a.Reason, a.Iteration, a.NextReqTime)
		return
	}
	// Admitted for a.Iteration: serve the model of the iteration before it.
	if !s.plane.waitIteration(a.Iteration, admitWait) {
		s.warn(&s.warned.notReached, "a device admitted for an iteration this server has not reached is turned away; the iteration will miss its update",
			zap.Uint64("iteration", a.Iteration), zap.ByteString("fl_id", req.FLID))
		s.refuse(ctx, "startFLJob", "safemode", flmsg.BodySafemode)
		return
	}
	it, m, sum := s.plane.store.LatestSum()
	if it+1 < a.Iteration {
		// This server lacks the model the iteration starts from (it could
		// not fetch it): the device is better served elsewhere.
		s.warn(&s.warned.noModel, "a device admitted for an iteration whose starting model this server lacks is turned away; the iteration will miss its update",
			zap.Uint64("iteration", a.Iteration), zap.Uint64("latest", it), zap.ByteString("fl_id", req.FLID))
		s.refuse(ctx, "startFLJob", "safemode", flmsg.BodySafemode)
		return
	}
	st = s.plane.state()
	s.count("startFLJob", "succeed")
	pl := st.plan
	key := respKey{kind: 1, iteration: a.Iteration, modelIter: it, nextReqTime: a.NextReqTime,
		plan: [4]float64{float64(pl.FLIterationNum), float64(pl.ClientEpochNum), float64(pl.ClientBatchSize), pl.ClientLearningRate}}
	build := func(block *flmsg.ModelBlock) func(b *flatbuffers.Builder) []byte {
		return func(b *flatbuffers.Builder) []byte {
			return flmsg.BuildResponseFLJob(b, &flmsg.FLJobReply{
				Retcode:     flmsg.Succeed,
				Reason:      flmsg.ReasonStartFLJobSuccess,
				Iteration:   int32(a.Iteration),
				IsSelected:  true,
				NextReqTime: s.nextReq(a.NextReqTime),
				Plan: &flmsg.Plan{ServerMode: s.cfg.FL.ServerMode, FLName: s.cfg.FL.FLName, Iterations: int32(pl.FLIterationNum),
					Epochs: int32(pl.ClientEpochNum), MiniBatch: int32(pl.ClientBatchSize), LR: float32(pl.ClientLearningRate)},
				Block: block,
				Split: block != nil,
			})
		}
	}
	if sum != "" {
		ctx.Response.Header.Set(flmsg.HeaderModelSHA256, sum)
		if held := ctx.Request.Header.Peek(flmsg.HeaderHeldModel); string(held) == sum {
			// The device holds this very model (most often from its
			// getModel of the last iteration): the answer leaves it out.
			s.metrics.modelsHeld.Inc()
			key.kind = 3
			ctx.Response.SetBodyRaw(s.heldCache.get(key, nil, build(nil)))
			return
		}
	}
	block := s.blocks.get(m)
	serveSplit(ctx, s.startCache.get(key, block, build(block)), block)
}

// bodyError answers a body that could not be read.
func (s *Server) bodyError(ctx *fasthttp.RequestCtx, err error) {
	// The rest of the body is not read: answer and close the connection.
	ctx.SetConnectionClose()
	if errors.Is(err, errBusy) {
		writeJSON(ctx, fasthttp.StatusServiceUnavailable, map[string]any{"code": 1, "error_message": err.Error()})
		return
	}
	if errors.Is(err, errBodyTooLarge) {
		writeJSON(ctx, fasthttp.StatusRequestEntityTooLarge, map[string]any{"code": 1, "error_message": err.Error()})
		return
	}
	writeJSON(ctx, fasthttp.StatusBadRequest, map[string]any{"code": 1, "error_message": err.Error()})
}

func (s *Server) updateModel(ctx *fasthttp.RequestCtx) {
	st := s.plane.state()
	b := builders.Get().(*flatbuffers.Builder)
	defer builders.Put(b)
	reply := func(code int32, reason string, next int64) {
		nr := ""
		if next > 0 {
			nr = s.nextReq(next)
		}
		ctx.SetBody(flmsg.BuildResponseUpdateModel(b, &flmsg.UpdateModelReply{Retcode: code, Reason: reason, NextReqTime: nr}))
	}
	body, release, err := s.uploads.read(ctx, int(s.cfg.Server.MaxBodySize))
	if err != nil {
		s.bodyError(ctx, err)
		return
	}
	defer release()
	req, err := flmsg.DecodeRequestUpdateModel(body)
	if err != nil {
		s.count("updateModel", "schema")
		reply(flmsg.RequestError, flmsg.Reason(err), 0)
		return
	}
	if !st.ready {
		s.refuse(ctx, "updateModel", "not_ready", flmsg.BodyJobNotReady)
		return
	}
	if !s.linked() {
		// Cut off from the scheduler, this server can count nothing and its
		// iteration may be behind the cluster's: OutOfTime from that view
		// would make the device sit the iteration out; safemode sends it
		// to another server.
		s.refuse(ctx, "updateModel", "safemode", flmsg.BodySafemode)
		return
	}
	if reason := s.checkTime(req.Timestamp); reason != "" {
		s.count("updateModel", "timestamp")
		reply(flmsg.RequestError, reason, st.nextReqTime)
		return
	}
	if st.instance != "running" {
		s.refuse(ctx, "updateModel", "disabled", flmsg.BodyJobDisabled)
		return
	}
	if reason := s.validateUpdate(req.FeatureMaps); reason != "" {
		s.count("updateModel", "invalid")
		reply(flmsg.RequestError, reason, st.nextReqTime)
		return
	}
	it := uint64(max(req.Iteration, 0))
	if req.Iteration < 0 || it+1 < st.iteration || it > st.iteration+1 {
		s.count("updateModel", "out_of_time")
		reply(flmsg.OutOfTime, fmt.Sprintf("UpdateModel iteration number is invalid:%d, current iteration:%d. Retry later.", req.Iteration, st.iteration), st.nextReqTime)
		return
	}
	if it+1 == st.iteration {
		s.lateUpdate(ctx, string(req.FLID), it, reply)
		return
	}
	pa, err := s.plane.partialFor(it)
	if err != nil {
		reply(flmsg.SystemError, err.Error(), st.nextReqTime)
		return
	}
	// In flight from before the count until after the fold: the all-reduce
	// of this iteration waits for it.
	pa.begin()
	a, err := s.ask(ctl.KindCountUpdate, ctl.CountUpdate{FLID: string(req.FLID), Iteration: it})
	if err != nil || a.Code != ctl.AnswerSucceed {
		pa.end(false, foldedUpdate{})
		s.countRefused(ctx, a, err, reply)
		return
	}
	start := time.Now()
	folded := false
	defer func() { // also when a fold panics: the all-reduce waits for end
		pa.end(folded, foldedUpdate{flID: string(req.FLID), dataSize: a.DataSize, bytes: int64(4 * s.plane.layout.Size), took: time.Since(start), loss: req.UploadLoss})
	}()
	s.foldUpdate(pa, req.FeatureMaps)
	folded = true
	s.count("updateModel", "succeed")
	reply(flmsg.Succeed, flmsg.ReasonUpdateModelSuccess, a.NextReqTime)
}

// lateUpdate answers an update of the iteration before this server's. The
// scheduler refuses it (its iteration is never behind a server's) and says
// when the device may come back: at once when its restart failed that
// iteration, which its devices could not help.
func (s *Server) lateUpdate(ctx *fasthttp.RequestCtx, flID string, it uint64, reply func(int32, string, int64)) {
	a, err := s.ask(ctl.KindCountUpdate, ctl.CountUpdate{FLID: flID, Iteration: it})
	if err == nil && a.Code == ctl.AnswerSucceed {
		// Counted for an iteration this server has left: nothing can fold
		// it. Cannot happen while servers learn iterations from the
		// scheduler; said loudly if it does.
		s.Logger().Error("the scheduler counted an update of an iteration this server has left", zap.String("fl_id", flID), zap.Uint64("iteration", it))
		reply(flmsg.SystemError, fmt.Sprintf("UpdateModel for iteration %d cannot be folded any more.", it), a.NextReqTime)
		return
	}
	s.countRefused(ctx, a, err, reply)
}

// countRefused answers an update the scheduler did not count (err: it
// could not be asked).
func (s *Server) countRefused(ctx *fasthttp.RequestCtx, a ctl.Answer, err error, reply func(int32, string, int64)) {
	switch {
	case err != nil:
		s.warn(&s.warned.count, "cannot count update", zap.Error(err))
		s.refuse(ctx, "updateModel", "safemode", flmsg.BodySafemode)
	case a.Code == ctl.AnswerDisabled:
		s.refuse(ctx, "updateModel", "disabled", flmsg.BodyJobDisabled)
	case a.Code == ctl.AnswerSafemode:
		s.refuse(ctx, "updateModel", "safemode", flmsg.BodySafemode)
	default:
		s.count("updateModel", "out_of_time")
		reply(flmsg.OutOfTime, a.Reason, a.NextReqTime)
	}
}

// validateUpdate checks an upload against the model before anything is
// counted or folded: every parameter exactly once, right sizes, finite
// values. It returns the refusal reason or "".
func (s *Server) validateUpdate(fms flmsg.FeatureMaps) string {
	l := s.plane.layout
	if fms.Len() == 0 {
		return "Feature map is empty."
	}
	if fms.Len() != len(l.Params) {
		return fmt.Sprintf("The update has %d feature maps, the model has %d parameters.", fms.Len(), len(l.Params))
	}
	seen := make([]bool, len(l.Params))
	for i := 0; i < fms.Len(); i++ {
		fm := fms.At(i)
		p, ok := l.Lookup(string(fm.Name))
		if !ok {
			return fmt.Sprintf("Unknown weight name %q.", truncate(fm.Name, 64))
		}
		j := s.plane.index[p.Name]
		if seen[j] {
			return fmt.Sprintf("Weight %q appears twice.", truncate(fm.Name, 64))
		}
		seen[j] = true
		if fm.Len() != p.Len {
			return fmt.Sprintf("Weight %q has %d values, the model's has %d.", p.Name, fm.Len(), p.Len)
		}
		if !native.Finite(fm.Raw) {
			return fmt.Sprintf("Weight %q holds NaN or Inf values.", p.Name)
		}
	}
	return ""
}

func (s *Server) getModel(ctx *fasthttp.RequestCtx) {
	st := s.plane.state()
	b := builders.Get().(*flatbuffers.Builder)
	defer builders.Put(b)
	body, buf, err := readSmall(ctx)
	defer releaseSmall(buf)
	if err != nil {
		s.bodyError(ctx, err)
		return
	}
	req, err := flmsg.DecodeRequestGetModel(body)
	if err != nil {
		s.count("getModel", "schema")
		ctx.SetBody(flmsg.BuildResponseGetModel(b, &flmsg.GetModelReply{Retcode: flmsg.RequestError, Reason: flmsg.Reason(err), Iteration: int32(st.iteration)}))
		return
	}
	if reason := s.checkTime(req.Timestamp); reason != "" {
		s.count("getModel", "timestamp")
		ctx.SetBody(flmsg.BuildResponseGetModel(b, &flmsg.GetModelReply{Retcode: flmsg.RequestError, Reason: reason, Iteration: int32(st.iteration), Timestamp: s.nextReq(st.nextReqTime)}))
		return
	}
	want := uint64(max(req.Iteration, 0))
	// The current iteration's model (or a later one's, asked of a server
	// still switching), or one newer than any this server holds (it is
	// catching up after a restart or a partition), is awaited for a
	// while, then SucNotReady: never an older model in its place. A server
	// cut off from the scheduler does not wait: nothing would tell it that
	// the iteration ended, and the device had better poll another.
	latest, _ := s.plane.store.Latest()
	wait := time.Duration(s.cfg.Server.GetModelWait)
	if want > latest && !s.linked() {
		wait = 0
	}
	if req.Iteration >= 0 && (want >= st.iteration || want > latest) && !s.plane.waitStored(want, wait) {
		st = s.plane.state()
		s.count("getModel", "not_ready")
		ctx.SetBody(flmsg.BuildResponseGetModel(b, &flmsg.GetModelReply{Retcode: flmsg.SucNotReady,
			Reason:    fmt.Sprintf("The model is not ready yet for iteration %d. Maybe this is because the iteration is still running or being aggregated.", want),
			Iteration: int32(st.iteration), Timestamp: s.nextReq(st.nextReqTime)}))
		return
	}
	it, m, sum := s.plane.store.LatestSum()
	if got, gotSum, ok := s.plane.store.GetSum(want); ok && req.Iteration >= 0 {
		it, m, sum = want, got, gotSum
	}
	s.count("getModel", "succeed")
	if sum != "" {
		ctx.Response.Header.Set(flmsg.HeaderModelSHA256, sum)
	}
	key := respKey{kind: 2, iteration: st.iteration, modelIter: it, nextReqTime: st.nextReqTime}
	block := s.blocks.get(m)
	serveSplit(ctx, s.getCache.get(key, block, func(b *flatbuffers.Builder) []byte {
		return flmsg.BuildResponseGetModel(b, &flmsg.GetModelReply{Retcode: flmsg.Succeed, Reason: "Get model for iteration " + strconv.FormatUint(it, 10),
			Iteration: int32(st.iteration), Block: block, Split: true, Timestamp: s.nextReq(st.nextReqTime)})
	}), block)
}

// foldUpdate folds a validated update's parameters into pa: all at once
// where the engine folds segments in one call (the GPU), else parameter by
// parameter under the stripe locks.
func (s *Server) foldUpdate(pa *partial, fms flmsg.FeatureMaps) {
	if sf, ok := pa.acc.(agg.SegmentFolder); ok {
		offs, xs := make([]int, fms.Len()), make([][]float32, fms.Len())
		for i := range offs {
			fm := fms.At(i)
			p, _ := s.plane.layout.Lookup(string(fm.Name))
			offs[i], xs[i] = p.Offset, fm.Data(nil)
		}
		sf.FoldSegments(offs, xs, 1)
		return
	}
	var scratch []float32
	for i := 0; i < fms.Len(); i++ {
		fm := fms.At(i)
		p, _ := s.plane.layout.Lookup(string(fm.Name))
		x := fm.Data(scratch)
		if _, ok := fm.Floats(); !ok {
			scratch = x
		}
		pa.fold(p.Offset, x, 1)
	}
}
