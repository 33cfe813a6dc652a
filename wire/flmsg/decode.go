package flmsg

import "fmt"

// RequestFLJob is a decoded startFLJob request. Byte fields are views into
// the request buffer: copy what must outlive it (string(r.FLID)).
type RequestFLJob struct {
	FLName    []byte
	FLID      []byte
	Iteration int32
	DataSize  int32
	Timestamp []byte
	// ≈r1.7 (absent from r1.5 clients).
	SignData              []byte
	DownloadCompressTypes []byte // CompressType values
}

// RequestUpdateModel is a decoded updateModel request, a view into the
// request buffer: FeatureMaps reads the tensors in place.
type RequestUpdateModel struct {
	FLName      []byte
	FLID        []byte
	Iteration   int32
	FeatureMaps FeatureMaps
	Timestamp   []byte
	// ≈r1.7 (zero from r1.5 clients).
	Signature          []byte
	UploadLoss         float32
	Sign               int32
	CompressFeatureMap int // number of CompressFeatureMap entries (compressed upload)
	UploadCompressType int8
	UploadSparseRate   float32
}

// RequestGetModel is a decoded getModel request (views into the buffer).
type RequestGetModel struct {
	FLName    []byte
	Iteration int32
	Timestamp []byte
	// ≈r1.7.
	DownloadCompressTypes []byte
}

// check verifies buf as a root table of t and turns any failure into a
// *SchemaError.
func check(buf []byte, t *tableSpec) error {
	if err := verify(buf, t); err != nil {
		return &SchemaError{Table: t.name, Err: err}
	}
	return nil
}

// backstop turns a panic while reading into a *SchemaError. The verifier
// should make it unreachable; it is there so that a verifier bug is a
// rejected request, not a dead server.
func backstop(t *tableSpec, err *error) {
	if r := recover(); r != nil {
		*err = &SchemaError{Table: t.name, Err: fmt.Errorf("BUG: reader panicked on a verified buffer: %v", r)}
	}
}

// DecodeRequestFLJob verifies and decodes a startFLJob body.
func DecodeRequestFLJob(buf []byte) (r RequestFLJob, err error) {
	defer backstop(requestFLJobSpec, &err)
	if err := check(buf, requestFLJobSpec); err != nil {
		return RequestFLJob{}, err
	}
	t := rootTable(buf)
	return RequestFLJob{
		FLName:                t.bytes(slotReqFLJobFLName),
		FLID:                  t.bytes(slotReqFLJobFLID),
		Iteration:             t.int32(slotReqFLJobIteration),
		DataSize:              t.int32(slotReqFLJobDataSize),
		Timestamp:             t.bytes(slotReqFLJobTimestamp),
		SignData:              t.byteVector(slotReqFLJobSignData),
		DownloadCompressTypes: t.byteVector(slotReqFLJobDownloadCompressTypes),
	}, nil
}

// DecodeRequestUpdateModel verifies and decodes an updateModel body without
// copying the tensors: r.FeatureMaps.At(i).Floats() views the body's bytes.
// It allocates nothing when buf is valid.
func DecodeRequestUpdateModel(buf []byte) (r RequestUpdateModel, err error) {
	defer backstop(requestUpdateModelSpec, &err)
	if err := check(buf, requestUpdateModelSpec); err != nil {
		return RequestUpdateModel{}, err
	}
	t := rootTable(buf)
	_, ncfm := t.vector(slotReqUpdateCompressFeatureMap)
	return RequestUpdateModel{
		FLName:             t.bytes(slotReqUpdateFLName),
		FLID:               t.bytes(slotReqUpdateFLID),
		Iteration:          t.int32(slotReqUpdateIteration),
		FeatureMaps:        t.featureMaps(slotReqUpdateFeatureMap),
		Timestamp:          t.bytes(slotReqUpdateTimestamp),
		Signature:          t.byteVector(slotReqUpdateSignature),
		UploadLoss:         t.float32(slotReqUpdateUploadLoss),
		Sign:               t.int32(slotReqUpdateSign),
		CompressFeatureMap: ncfm,
		UploadCompressType: t.int8(slotReqUpdateUploadCompressType),
		UploadSparseRate:   t.float32(slotReqUpdateUploadSparseRate),
	}, nil
}

// DecodeRequestGetModel verifies and decodes a getModel body.
func DecodeRequestGetModel(buf []byte) (r RequestGetModel, err error) {
	defer backstop(requestGetModelSpec, &err)
	if err := check(buf, requestGetModelSpec); err != nil {
		return RequestGetModel{}, err
	}
	t := rootTable(buf)
	return RequestGetModel{
		FLName:                t.bytes(slotReqGetFLName),
		Iteration:             t.int32(slotReqGetIteration),
		Timestamp:             t.bytes(slotReqGetTimestamp),
		DownloadCompressTypes: t.byteVector(slotReqGetDownloadCompressTypes),
	}, nil
}
