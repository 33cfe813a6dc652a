package flmsg

import (
	"bytes"
	"errors"

	"github.com/fedcluster/fedcluster/wire/fbs"
)

// Return codes (ResponseCode) the server produces.
const (
	Succeed      = int32(fbs.ResponseCodeSUCCEED)      // 200: proceed
	SucNotReady  = int32(fbs.ResponseCodeSucNotReady)  // 201: retry the same call later
	OutOfTime    = int32(fbs.ResponseCodeOutOfTime)    // 300: wait for next_req_time, restart at startFLJob
	RequestError = int32(fbs.ResponseCodeRequestError) // 400: malformed request; give up this request
	SystemError  = int32(fbs.ResponseCodeSystemError)  // 500: server-side failure
)

// Plain-text bodies sent instead of a FlatBuffers response when the server
// refuses before looking at the request. Clients compare the whole body with
// these strings before parsing it.
const (
	BodySafemode    = "The cluster is in safemode."
	BodyJobDisabled = "The server's training job is disabled or finished."
	BodyJobNotReady = "The server's training job is not ready." // ≈r1.7
)

// HTTP headers of fedcluster's one extension to the protocol, which spares
// a device that took part in the previous iteration a second download of
// the model it already holds. Every SUCCEED answer of startFLJob and
// getModel carries HeaderModelSHA256: the hex SHA-256 of the model's
// weights as little-endian float32s (the checksum /status and the
// checkpoints show). A startFLJob request that carries HeaderHeldModel
// with the checksum of the model the server would serve gets its answer
// without feature_map, and that checksum in HeaderModelSHA256: the device
// trains the model it holds, bit for bit the one it would have been sent.
// Clients that send no such header (MindSpore's) always get the model.
const (
	HeaderModelSHA256 = "Fedcluster-Model-Sha256"
	HeaderHeldModel   = "Fedcluster-Held-Model-Sha256"
)

// Literal success reasons of the rounds.
const (
	ReasonStartFLJobSuccess  = "success"
	ReasonUpdateModelSuccess = "success not ready"
)

// PlainRefusal reports whether body is one of the plain-text refusals and
// returns it as the constant string (no allocation).
func PlainRefusal(body []byte) (string, bool) {
	for _, s := range [...]string{BodySafemode, BodyJobDisabled, BodyJobNotReady} {
		if string(body) == s {
			return s, true
		}
	}
	return "", false
}

// ErrRefused matches (errors.Is) every *RefusalError.
var ErrRefused = errors.New("server refused the request with a plain-text body")

// RefusalError is what the device-side decoders return for a plain-text
// body: one of the Body* constants or another text reply of MindSpore's
// (e.g. "The output of the round X is empty.").
type RefusalError struct {
	Body string
}

func (e *RefusalError) Error() string { return "server refused the request: " + e.Body }

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusalError) Is(target error) bool { return target == ErrRefused }

// refusal classifies a body a device decoder could not verify: a known
// refusal, or printable text, becomes a *RefusalError.
func refusal(body []byte) error {
	if s, ok := PlainRefusal(body); ok {
		return &RefusalError{Body: s}
	}
	if len(body) == 0 || len(body) > 1024 {
		return nil
	}
	for _, c := range body {
		if c < 0x20 || c > 0x7e {
			return nil
		}
	}
	if bytes.HasSuffix(body, []byte(".")) {
		return &RefusalError{Body: string(body)}
	}
	return nil
}

// ErrInvalidSchema matches (errors.Is) every *SchemaError.
var ErrInvalidSchema = errors.New("invalid FlatBuffers message")

// SchemaError is returned by every decoder for a buffer that fails
// verification (or, as a backstop, panics while being read).
type SchemaError struct {
	// Table is the root table expected, e.g. "RequestUpdateModel".
	Table string
	// Err says what is wrong, with the path to the bad field.
	Err error
}

func (e *SchemaError) Error() string { return "cannot decode " + e.Table + ": " + e.Err.Error() }
func (e *SchemaError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalidSchema) true.
func (e *SchemaError) Is(target error) bool { return target == ErrInvalidSchema }

// Reason is MindSpore's RequestError reason for the failure:
// "The schema of <Table> is invalid.".
func (e *SchemaError) Reason() string { return SchemaReason(e.Table) }

// SchemaReason is MindSpore's RequestError reason for a request of the
// table that fails verification.
func SchemaReason(table string) string { return "The schema of " + table + " is invalid." }

// Reason returns the RequestError reason for a decode error, or "" when err
// is not a *SchemaError.
func Reason(err error) string {
	var se *SchemaError
	if errors.As(err, &se) {
		return se.Reason()
	}
	return ""
}
