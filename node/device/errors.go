package device

import (
	"errors"
	"fmt"

	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// Sentinel errors of the SDK.
var (
	// ErrJobFinished: the server answered "The server's training job is
	// disabled or finished." The device should stop.
	ErrJobFinished = errors.New("the training job is disabled or finished")
	// ErrGaveUp: a retry bound (attempts, refusals, polls, restarts or
	// their time) was reached. The error wrapping it says which.
	ErrGaveUp = errors.New("device gave up after its retry bound")
	// ErrBadResponse: a response that failed verification or does not fit
	// the device's model. It is reported, never used.
	ErrBadResponse = errors.New("bad response from server")
)

// RetcodeError is a FlatBuffers answer whose retcode the device cannot
// go on from: RequestError, SystemError or an unknown code.
type RetcodeError struct {
	Endpoint Endpoint
	Retcode  int32
	Reason   string
}

func (e *RetcodeError) Error() string {
	return fmt.Sprintf("%s answered %s (%d): %q", e.Endpoint, RetcodeName(e.Retcode), e.Retcode, e.Reason)
}

// HTTPError is an HTTP status other than 200 that is not retried (502, 503
// and 504 are treated as a lost server and retried elsewhere).
type HTTPError struct {
	Endpoint Endpoint
	Server   string
	Status   int
	Body     string // at most 256 bytes of it
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("%s at %s answered HTTP %d: %q", e.Endpoint, e.Server, e.Status, e.Body)
}

// RetcodeName names a retcode as MindSpore's ResponseCode enum does.
func RetcodeName(c int32) string {
	switch c {
	case flmsg.Succeed:
		return "SUCCEED"
	case flmsg.SucNotReady:
		return "SucNotReady"
	case flmsg.OutOfTime:
		return "OutOfTime"
	case flmsg.RequestError:
		return "RequestError"
	case flmsg.SystemError:
		return "SystemError"
	}
	return "unknown"
}
