package device

import "time"

// Endpoint is a device round.
type Endpoint uint8

// The rounds of the NOT_ENCRYPT device protocol.
const (
	EndpointStartFLJob Endpoint = iota
	EndpointUpdateModel
	EndpointGetModel
	NumEndpoints
)

var endpointNames = [NumEndpoints]string{"startFLJob", "updateModel", "getModel"}

// String is the round's URL name, e.g. "startFLJob".
func (e Endpoint) String() string {
	if e < NumEndpoints {
		return endpointNames[e]
	}
	return "unknown"
}

// Outcome classifies one HTTP exchange.
type Outcome uint8

const (
	// OutcomeRetcode: a verified FlatBuffers answer; Observation.Retcode
	// holds its retcode.
	OutcomeRetcode Outcome = iota
	// OutcomeRefusal: a plain-text refusal; Observation.Refusal holds it.
	OutcomeRefusal
	// OutcomeTransport: no answer (refused, reset, timed out) or HTTP
	// 502/503/504; the request is retried on another server.
	OutcomeTransport
	// OutcomeHTTP: another HTTP status than 200.
	OutcomeHTTP
	// OutcomeCorrupt: a 200 answer that failed verification or did not fit
	// the model.
	OutcomeCorrupt
	NumOutcomes
)

var outcomeNames = [NumOutcomes]string{"retcode", "refusal", "transport", "http", "corrupt"}

func (o Outcome) String() string {
	if o < NumOutcomes {
		return outcomeNames[o]
	}
	return "unknown"
}

// Observation describes one HTTP exchange of a device, for metrics and
// load benchmarks.
type Observation struct {
	Endpoint Endpoint
	// Server is the index of the server in Options.Servers.
	Server  int
	Latency time.Duration
	Outcome Outcome
	// Status is the HTTP status (0 without an answer).
	Status int
	// Retcode is the answer's retcode when Outcome is OutcomeRetcode;
	// Reason and NextReqTime are that answer's (empty and zero when it
	// has none).
	Retcode     int32
	Reason      string
	NextReqTime time.Time
	// Iteration is the iteration the request named (updateModel,
	// getModel) or, for startFLJob, the one its answer named; 0 when
	// unknown.
	Iteration int32
	// Refusal is the plain-text body when Outcome is OutcomeRefusal.
	Refusal string
	// Err is the error when Outcome is OutcomeTransport, OutcomeHTTP or
	// OutcomeCorrupt.
	Err error
	// Sent and Received are the body sizes in bytes.
	Sent, Received int
}
