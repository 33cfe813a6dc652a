package flmsg

import (
	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/fbs"
)

// The device (SDK) side: request builders and verified response decoders.

// FLJobArgs is what BuildRequestFLJob writes.
type FLJobArgs struct {
	FLName    string
	FLID      string
	Iteration int32
	DataSize  int32
	Timestamp string // epoch milliseconds as decimal text
}

// UpdateModelArgs is what BuildRequestUpdateModel writes. The feature maps
// come from Block if set, else Model if set, else Tensors.
type UpdateModelArgs struct {
	FLName     string
	FLID       string
	Iteration  int32
	Timestamp  string
	UploadLoss float32 // ≈r1.7; written only when non-zero
	Model      *model.Model
	Tensors    []Tensor
	// Scale multiplies every weight of Model or Tensors as it is written
	// (devices upload weight × data_size); 0 means 1.
	Scale float32
	// Block is sent as it is (already scaled). With Split only the
	// message's head is built: the message is the result followed by
	// the bytes of Block.Pieces() (split.go).
	Block *ModelBlock
	Split bool
}

// GetModelArgs is what BuildRequestGetModel writes.
type GetModelArgs struct {
	FLName    string
	Iteration int32
	Timestamp string
}

// BuildRequestFLJob resets b and writes a RequestFLJob. The result aliases
// b's buffer until b is used again.
func BuildRequestFLJob(b *flatbuffers.Builder, a *FLJobArgs) []byte {
	b.Reset()
	name := b.CreateString(a.FLName)
	id := b.CreateString(a.FLID)
	ts := b.CreateString(a.Timestamp)
	fbs.RequestFLJobStart(b)
	fbs.RequestFLJobAddFlName(b, name)
	fbs.RequestFLJobAddFlId(b, id)
	fbs.RequestFLJobAddIteration(b, a.Iteration)
	fbs.RequestFLJobAddDataSize(b, a.DataSize)
	fbs.RequestFLJobAddTimestamp(b, ts)
	b.Finish(fbs.RequestFLJobEnd(b))
	return b.FinishedBytes()
}

// BuildRequestUpdateModel resets b and writes a RequestUpdateModel, each
// tensor with one bulk copy. The result aliases b's buffer.
func BuildRequestUpdateModel(b *flatbuffers.Builder, a *UpdateModelArgs) []byte {
	b.Reset()
	scale := a.Scale
	if scale == 0 {
		scale = 1
	}
	var fm featureMap
	fm.begin(b, a.Block, a.Split, func() flatbuffers.UOffsetT {
		if a.Model != nil {
			return modelFeatureMaps(b, a.Model, scale)
		}
		return tensorFeatureMaps(b, a.Tensors, scale)
	})
	name := b.CreateString(a.FLName)
	id := b.CreateString(a.FLID)
	ts := b.CreateString(a.Timestamp)
	fbs.RequestUpdateModelStart(b)
	fbs.RequestUpdateModelAddFlName(b, name)
	fbs.RequestUpdateModelAddFlId(b, id)
	fbs.RequestUpdateModelAddIteration(b, a.Iteration)
	fm.add(b, slotReqUpdateFeatureMap)
	fbs.RequestUpdateModelAddTimestamp(b, ts)
	fbs.RequestUpdateModelAddUploadLoss(b, a.UploadLoss)
	b.Finish(fbs.RequestUpdateModelEnd(b))
	return fm.finish(b)
}

// BuildRequestGetModel resets b and writes a RequestGetModel.
func BuildRequestGetModel(b *flatbuffers.Builder, a *GetModelArgs) []byte {
	b.Reset()
	name := b.CreateString(a.FLName)
	ts := b.CreateString(a.Timestamp)
	fbs.RequestGetModelStart(b)
	fbs.RequestGetModelAddFlName(b, name)
	fbs.RequestGetModelAddIteration(b, a.Iteration)
	fbs.RequestGetModelAddTimestamp(b, ts)
	b.Finish(fbs.RequestGetModelEnd(b))
	return b.FinishedBytes()
}

// ResponseFLJob is a decoded startFLJob response. Strings are copies;
// FeatureMaps is a view into the response buffer.
type ResponseFLJob struct {
	Retcode     int32
	Reason      string
	Iteration   int32
	IsSelected  bool
	NextReqTime string
	HasPlan     bool
	Plan        Plan
	// HasCipher reports an FLPlan.cipher (secure aggregation parameters,
	// which this package does not decode further).
	HasCipher   bool
	FeatureMaps FeatureMaps
	Timestamp   string
}

// ResponseUpdateModel is a decoded updateModel response.
type ResponseUpdateModel struct {
	Retcode     int32
	Reason      string
	FeatureMaps FeatureMaps
	NextReqTime string
	Timestamp   string
}

// ResponseGetModel is a decoded getModel response. FeatureMaps is a view
// into the response buffer.
type ResponseGetModel struct {
	Retcode     int32
	Reason      string
	Iteration   int32
	FeatureMaps FeatureMaps
	Timestamp   string // the next-request time (epoch ms)
}

// checkResponse verifies a response body; a plain-text body becomes a
// *RefusalError instead of a *SchemaError.
func checkResponse(body []byte, t *tableSpec) error {
	if s, ok := PlainRefusal(body); ok {
		return &RefusalError{Body: s}
	}
	if err := check(body, t); err != nil {
		if rerr := refusal(body); rerr != nil {
			return rerr
		}
		return err
	}
	return nil
}

// HeadSize is how much of a served model's answer DecodeResponseFLJobHead
// and DecodeResponseGetModelHead need at most: fedcluster and MindSpore
// servers write every other field before the model.
const HeadSize = 64 << 10

// checkResponseHead is checkResponse for the first bytes, head, of a
// response of size bytes whose feature_map is not read.
func checkResponseHead(head []byte, size int, t *tableSpec) error {
	whole := len(head) == size
	if s, ok := PlainRefusal(head); ok && whole {
		return &RefusalError{Body: s}
	}
	if err := verifyHead(head, size, t); err != nil {
		if whole {
			if rerr := refusal(head); rerr != nil {
				return rerr
			}
		}
		return &SchemaError{Table: t.name, Err: err}
	}
	return nil
}

// detach is t with its model field, slot, detached (verifyHead).
func detach(t *tableSpec, slot int) *tableSpec {
	fields := append([]fieldSpec(nil), t.fields...)
	fields[slot].detached = true
	return &tableSpec{name: t.name, fields: fields}
}

var (
	responseFLJobHeadSpec    = detach(responseFLJobSpec, slotRspFLJobFeatureMap)
	responseGetModelHeadSpec = detach(responseGetModelSpec, slotRspGetFeatureMap)
)

// DecodeResponseFLJob verifies and decodes a startFLJob response body. A
// plain-text body gives a *RefusalError (errors.Is(err, ErrRefused)).
func DecodeResponseFLJob(body []byte) (r ResponseFLJob, err error) {
	defer backstop(responseFLJobSpec, &err)
	if err := checkResponse(body, responseFLJobSpec); err != nil {
		return ResponseFLJob{}, err
	}
	r = readResponseFLJob(body)
	r.FeatureMaps = rootTable(body).featureMaps(slotRspFLJobFeatureMap)
	return r, nil
}

// DecodeResponseFLJobHead decodes a startFLJob answer of size bytes from
// its first bytes, head (HeadSize of them are enough): every field but
// feature_map is verified and decoded as DecodeResponseFLJob does; of the
// feature_map, what lies in head is verified and the rest must lie inside
// the message; FeatureMaps stays empty. For load generators, which drop
// the model.
func DecodeResponseFLJobHead(head []byte, size int) (r ResponseFLJob, err error) {
	defer backstop(responseFLJobSpec, &err)
	if err := checkResponseHead(head, size, responseFLJobHeadSpec); err != nil {
		return ResponseFLJob{}, err
	}
	return readResponseFLJob(head), nil
}

// readResponseFLJob reads a verified ResponseFLJob, but its feature maps.
func readResponseFLJob(body []byte) (r ResponseFLJob) {
	t := rootTable(body)
	r = ResponseFLJob{
		Retcode:     t.int32(slotRspFLJobRetcode),
		Reason:      string(t.bytes(slotRspFLJobReason)),
		Iteration:   t.int32(slotRspFLJobIteration),
		IsSelected:  t.bool(slotRspFLJobIsSelected),
		NextReqTime: string(t.bytes(slotRspFLJobNextReqTime)),
		Timestamp:   string(t.bytes(slotRspFLJobTimestamp)),
	}
	if p, ok := t.sub(slotRspFLJobPlan); ok {
		r.HasPlan = true
		r.Plan = Plan{
			ServerMode: string(p.bytes(slotPlanServerMode)),
			FLName:     string(p.bytes(slotPlanFLName)),
			Iterations: p.int32(slotPlanIterations),
			Epochs:     p.int32(slotPlanEpochs),
			MiniBatch:  p.int32(slotPlanMiniBatch),
			LR:         p.float32(slotPlanLR),
		}
		r.HasCipher = p.field(slotPlanCipher) != 0
	}
	return r
}

// DecodeResponseUpdateModel verifies and decodes an updateModel response.
func DecodeResponseUpdateModel(body []byte) (r ResponseUpdateModel, err error) {
	defer backstop(responseUpdateModelSpec, &err)
	if err := checkResponse(body, responseUpdateModelSpec); err != nil {
		return ResponseUpdateModel{}, err
	}
	t := rootTable(body)
	return ResponseUpdateModel{
		Retcode:     t.int32(slotRspUpdateRetcode),
		Reason:      string(t.bytes(slotRspUpdateReason)),
		FeatureMaps: t.featureMaps(slotRspUpdateFeatureMap),
		NextReqTime: string(t.bytes(slotRspUpdateNextReqTime)),
		Timestamp:   string(t.bytes(slotRspUpdateTimestamp)),
	}, nil
}

// DecodeResponseGetModel verifies and decodes a getModel response.
func DecodeResponseGetModel(body []byte) (r ResponseGetModel, err error) {
	defer backstop(responseGetModelSpec, &err)
	if err := checkResponse(body, responseGetModelSpec); err != nil {
		return ResponseGetModel{}, err
	}
	r = readResponseGetModel(body)
	r.FeatureMaps = rootTable(body).featureMaps(slotRspGetFeatureMap)
	return r, nil
}

// DecodeResponseGetModelHead is DecodeResponseFLJobHead for a getModel
// answer.
func DecodeResponseGetModelHead(head []byte, size int) (r ResponseGetModel, err error) {
	defer backstop(responseGetModelSpec, &err)
	if err := checkResponseHead(head, size, responseGetModelHeadSpec); err != nil {
		return ResponseGetModel{}, err
	}
	return readResponseGetModel(head), nil
}

// readResponseGetModel reads a verified ResponseGetModel, but its feature
// maps.
func readResponseGetModel(body []byte) ResponseGetModel {
	t := rootTable(body)
	return ResponseGetModel{
		Retcode:   t.int32(slotRspGetRetcode),
		Reason:    string(t.bytes(slotRspGetReason)),
		Iteration: t.int32(slotRspGetIteration),
		Timestamp: string(t.bytes(slotRspGetTimestamp)),
	}
}
