package iteration

import "time"

// Record summarises one ended iteration (an Action). node/record maps it to
// metrics.json: Valid → iterationResult "success"/"fail", Instance →
// instanceStatus, ExecutionTime → iterationExecutionTime.
type Record struct {
	Iteration uint64
	Valid     bool
	// Reason is empty for a valid iteration, else why it failed.
	Reason string
	// Instance is the instance state after the iteration ended.
	Instance       InstanceState
	FLIterationNum int
	// Threshold and UpdateThreshold are the round thresholds that applied.
	Threshold       int
	UpdateThreshold int
	// Admitted is the number of devices admitted by startFLJob.
	Admitted int
	// Updated is the number of updateModel requests counted (acknowledged).
	Updated int
	// Lost is how many counted updates are not in the aggregate because the
	// server that folded them died (or reported fewer folds than counted);
	// LostByServer breaks it down. (A failed iteration drops its whole
	// aggregate anyway; Lost still says what died with servers.)
	Lost         int
	LostByServer map[string]int
	// Uncounted is the part of Lost that Updated does not include:
	// acknowledged updates a restored machine had never counted.
	Uncounted int
	// Rejected counts refusals by kind (Reject.String()), of both rounds;
	// RejectedUpdates is how many of them refused updateModel.
	Rejected        map[string]int
	RejectedUpdates int
	// Servers are the servers of the last aggregation attempt.
	Servers  []string
	Attempts int
	Sha256   string

	StartedAt time.Time // first accepted startFLJob
	EndedAt   time.Time // the NextIteration moment
	// StartFLJobDuration runs from the first startFLJob to its threshold (or
	// to the end when not reached); UpdateModelDuration likewise.
	StartFLJobDuration  time.Duration
	UpdateModelDuration time.Duration
	// SwitchTime runs from the last counted updateModel to NextIteration:
	// the aggregation and the switch as the scheduler sees them. Zero for an
	// iteration that never reached its updateModel threshold.
	SwitchTime time.Duration
	// ExecutionTime runs from StartedAt to EndedAt.
	ExecutionTime time.Duration
}

// Reject classifies a refusal for the per-iteration record.
type Reject uint8

// Refusal kinds; String gives the record's key.
const (
	RejectNone Reject = iota
	RejectSafemode
	RejectDisabled
	RejectAggregating
	RejectStartThreshold
	RejectDataSize
	RejectDuplicateAdmit
	RejectUpdateThreshold
	RejectWrongIteration
	RejectNotAdmitted
	RejectDuplicateUpdate
	numRejects
)

var rejectNames = [numRejects]string{
	RejectNone:            "none",
	RejectSafemode:        "safemode",
	RejectDisabled:        "disabled_or_finished",
	RejectAggregating:     "aggregating",
	RejectStartThreshold:  "start_fl_job_threshold",
	RejectDataSize:        "data_size",
	RejectDuplicateAdmit:  "duplicate_start_fl_job",
	RejectUpdateThreshold: "update_model_threshold",
	RejectWrongIteration:  "wrong_iteration",
	RejectNotAdmitted:     "not_admitted",
	RejectDuplicateUpdate: "duplicate_update_model",
}

func (r Reject) String() string {
	if r < numRejects {
		return rejectNames[r]
	}
	return "unknown"
}
