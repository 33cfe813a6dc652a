package iteration

import "time"

// Action is something the scheduler must do after a call into the Machine:
// broadcast to servers, persist, log, write a record. Drain them with
// Machine.Ready; they come in the order the Machine produced them, and the
// scheduler must carry them out in that order.
type Action interface{ isAction() }

// Round names a counted round.
type Round string

// The counted rounds of a NOT_ENCRYPT iteration.
const (
	RoundStartFLJob  Round = "startFLJob"
	RoundUpdateModel Round = "updateModel"
)

// CountKind says which edge of a round's count an event reports.
type CountKind uint8

const (
	// FirstCount is the round's first accepted request of the iteration: its
	// window timer starts.
	FirstCount CountKind = iota + 1
	// LastCount is the request that brought the round to its threshold: its
	// timer stops.
	LastCount
)

func (k CountKind) String() string {
	switch k {
	case FirstCount:
		return "first"
	case LastCount:
		return "last"
	}
	return "unknown"
}

// RoundEvent reports a round's first or last count (MindSpore's FIRST_CNT /
// LAST_CNT events). Servers may use the startFLJob first count to learn the
// iteration's NextReqTime; nothing requires them to act on it.
type RoundEvent struct {
	Iteration uint64
	Round     Round
	Kind      CountKind
	At        time.Time
	// NextReqTime is the iteration's next-request time (epoch ms) after the
	// event.
	NextReqTime int64
}

// StartAggregation tells the servers in Servers to all-reduce their partial
// sums of Iteration among exactly themselves and report with
// AggregationDone(…, Iteration, Attempt, sha256, folded). A later attempt of
// the same iteration (after a member was lost) supersedes earlier ones:
// servers keep their partial sums until NextIteration and redo the
// all-reduce among the new Servers.
type StartAggregation struct {
	Iteration uint64
	Attempt   int
	// Servers are the live members taking part, sorted. A member that
	// counted no update contributes zeros.
	Servers []string
	// Expected is the number of updates each server counted (and must have
	// folded); every member of Servers has an entry, possibly 0.
	Expected map[string]int
	// Total is the sum of Expected.
	Total int
	// Deadline is when the attempt fails if not every server reported.
	Deadline time.Time
}

// NextIteration moves every server to Iteration. If Valid, each server
// stores the aggregated model (checksum Sha256) under Completed; otherwise
// it drops its partial sums and stores a copy of its latest model under
// Completed.
type NextIteration struct {
	Iteration uint64
	Completed uint64
	Valid     bool
	Reason    string
	Sha256    string
	// Instance is the instance state from Iteration on.
	Instance InstanceState
}

// ParamsChanged carries the hyper-parameters in force from Iteration on
// (FLPlan fields, thresholds). When it precedes a NextIteration they belong
// to that new iteration.
type ParamsChanged struct {
	Iteration uint64
	Params    Params
}

// InstanceChanged reports a change of instance state (enable, disable,
// finish, new instance).
type InstanceChanged struct {
	Iteration uint64
	State     InstanceState
	Reason    string
}

func (RoundEvent) isAction()       {}
func (StartAggregation) isAction() {}
func (NextIteration) isAction()    {}
func (ParamsChanged) isAction()    {}
func (InstanceChanged) isAction()  {}
func (Record) isAction()           {}
