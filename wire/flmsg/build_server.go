package flmsg

import (
	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/fbs"
)

// Plan is the FLPlan a startFLJob response carries (the fields MindSpore
// sets; early_stop, shuffle, aggregation, metrics and cipher stay unset).
type Plan struct {
	ServerMode string // e.g. "FEDERATED_LEARNING"
	FLName     string
	Iterations int32 // fl_iteration_num
	Epochs     int32 // client_epoch_num
	MiniBatch  int32 // client_batch_size
	LR         float32
}

// FLJobReply is what BuildResponseFLJob writes.
type FLJobReply struct {
	Retcode     int32
	Reason      string
	Iteration   int32
	IsSelected  bool
	NextReqTime string // epoch milliseconds as decimal text
	Plan        *Plan  // nil: fl_plan_config absent
	// The feature_map: Block if set, else Model, else absent.
	Block *ModelBlock
	Model *model.Model
	// Split, with Block, builds only the message's head: the message is
	// the result followed by the bytes of Block.Pieces() (split.go).
	Split bool
	// Timestamp is written only when non-empty (MindSpore never sets it).
	Timestamp string
}

// UpdateModelReply is what BuildResponseUpdateModel writes.
type UpdateModelReply struct {
	Retcode     int32
	Reason      string
	NextReqTime string
	Timestamp   string // written only when non-empty
}

// GetModelReply is what BuildResponseGetModel writes.
type GetModelReply struct {
	Retcode   int32
	Reason    string
	Iteration int32
	// The feature_map: Block if set, else Model, else absent.
	Block *ModelBlock
	Model *model.Model
	// Split, with Block, builds only the message's head: the message is
	// the result followed by the bytes of Block.Pieces() (split.go).
	Split bool
	// Timestamp carries the next-request time (epoch ms), as MindSpore does.
	Timestamp string
}

// BuildResponseFLJob resets b and writes a ResponseFLJob. The result aliases
// b's buffer: it is valid until b is used again. Strings are always written
// (clients read reason and next_req_time without checking for absence).
func BuildResponseFLJob(b *flatbuffers.Builder, r *FLJobReply) []byte {
	b.Reset()
	var fm featureMap
	fm.begin(b, r.Block, r.Split, func() flatbuffers.UOffsetT {
		if r.Model == nil {
			return 0
		}
		return modelFeatureMaps(b, r.Model, 1)
	})
	var plan flatbuffers.UOffsetT
	if p := r.Plan; p != nil {
		mode := b.CreateString(p.ServerMode)
		name := b.CreateString(p.FLName)
		fbs.FLPlanStart(b)
		fbs.FLPlanAddServerMode(b, mode)
		fbs.FLPlanAddFlName(b, name)
		fbs.FLPlanAddIterations(b, p.Iterations)
		fbs.FLPlanAddEpochs(b, p.Epochs)
		fbs.FLPlanAddMiniBatch(b, p.MiniBatch)
		fbs.FLPlanAddLr(b, p.LR)
		plan = fbs.FLPlanEnd(b)
	}
	reason := b.CreateString(r.Reason)
	next := b.CreateString(r.NextReqTime)
	var ts flatbuffers.UOffsetT
	if r.Timestamp != "" {
		ts = b.CreateString(r.Timestamp)
	}
	fbs.ResponseFLJobStart(b)
	fbs.ResponseFLJobAddRetcode(b, r.Retcode)
	fbs.ResponseFLJobAddReason(b, reason)
	fbs.ResponseFLJobAddIteration(b, r.Iteration)
	fbs.ResponseFLJobAddIsSelected(b, r.IsSelected)
	fbs.ResponseFLJobAddNextReqTime(b, next)
	if plan != 0 {
		fbs.ResponseFLJobAddFlPlanConfig(b, plan)
	}
	fm.add(b, slotRspFLJobFeatureMap)
	if ts != 0 {
		fbs.ResponseFLJobAddTimestamp(b, ts)
	}
	b.Finish(fbs.ResponseFLJobEnd(b))
	return fm.finish(b)
}

// BuildResponseUpdateModel resets b and writes a ResponseUpdateModel (its
// feature_map is never set). The result aliases b's buffer.
func BuildResponseUpdateModel(b *flatbuffers.Builder, r *UpdateModelReply) []byte {
	b.Reset()
	reason := b.CreateString(r.Reason)
	next := b.CreateString(r.NextReqTime)
	var ts flatbuffers.UOffsetT
	if r.Timestamp != "" {
		ts = b.CreateString(r.Timestamp)
	}
	fbs.ResponseUpdateModelStart(b)
	fbs.ResponseUpdateModelAddRetcode(b, r.Retcode)
	fbs.ResponseUpdateModelAddReason(b, reason)
	fbs.ResponseUpdateModelAddNextReqTime(b, next)
	if ts != 0 {
		fbs.ResponseUpdateModelAddTimestamp(b, ts)
	}
	b.Finish(fbs.ResponseUpdateModelEnd(b))
	return b.FinishedBytes()
}

// BuildResponseGetModel resets b and writes a ResponseGetModel. The result
// aliases b's buffer. For a model of n floats it costs one n×4-byte memmove
// (Block) or one per tensor (Model). Every device asking for the same stored
// model between two iteration switches gets identical bytes, so a server may
// also keep one built response per (iteration, next request time) and serve
// it as is.
func BuildResponseGetModel(b *flatbuffers.Builder, r *GetModelReply) []byte {
	b.Reset()
	var fm featureMap
	fm.begin(b, r.Block, r.Split, func() flatbuffers.UOffsetT {
		if r.Model == nil {
			return 0
		}
		return modelFeatureMaps(b, r.Model, 1)
	})
	reason := b.CreateString(r.Reason)
	ts := b.CreateString(r.Timestamp)
	fbs.ResponseGetModelStart(b)
	fbs.ResponseGetModelAddRetcode(b, r.Retcode)
	fbs.ResponseGetModelAddReason(b, reason)
	fbs.ResponseGetModelAddIteration(b, r.Iteration)
	fm.add(b, slotRspGetFeatureMap)
	fbs.ResponseGetModelAddTimestamp(b, ts)
	b.Finish(fbs.ResponseGetModelEnd(b))
	return fm.finish(b)
}
