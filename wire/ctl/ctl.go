// Package ctl defines the control messages carried in cluster frames
// between the scheduler and the servers. Bodies are JSON: most control
// traffic is small and infrequent next to device traffic, and JSON keeps it
// readable in logs and captures. The messages of every device request
// (Admit, CountUpdate, Answer) are the exception: they have a compact
// binary form (compact.go). Bulk tensors (the all-reduce) use the binary
// bodies of package wire/peer.
package ctl

import (
	"encoding/json"
	"fmt"

	"github.com/fedcluster/fedcluster/wire/frame"
)

// Frame kinds. Requests carry a non-zero id and are answered by Reply or
// Error with the same id.
const (
	KindReply frame.Kind = iota + 1
	KindError
	KindRegister      // server → scheduler: Register, answered by RegisterReply
	KindHeartbeat     // server → scheduler: Heartbeat, answered by HeartbeatReply
	KindMembership    // scheduler → server: Membership (push)
	KindAdmit         // server → scheduler: Admit (startFLJob), answered by AdmitReply
	KindCountUpdate   // server → scheduler: CountUpdate (updateModel), answered by CountReply
	KindAggregate     // scheduler → server: Aggregate (push)
	KindAggregated    // server → scheduler: Aggregated
	KindNextIteration // scheduler → server: NextIteration (push)
	KindInstance      // scheduler → server: Instance parameters (push)
	KindPeerHello     // server → server: PeerHello, names the dialling server
	KindPartial       // server → server: a partial-sum chunk (binary, wire/peer)
	KindReduced       // server → server: a reduced chunk (binary, wire/peer)
	KindFetchModel    // server → server: FetchModel, answered by safetensors bytes
	KindScaleIn       // scheduler → server: ScaleIn (push)
	KindIterState     // scheduler → server: IterationState (push)
	KindPieceAck      // server → server: an all-reduce piece was taken (binary, wire/peer header)
)

// Role names as MindSpore prints them.
const (
	RoleServer    = "SERVER"
	RoleScheduler = "SCHEDULER"
)

// Register is a server's hello to the scheduler.
type Register struct {
	NodeID   string `json:"node_id"`
	PeerAddr string `json:"peer_addr"` // host:port of the server's cluster TCP listener
	HTTPAddr string `json:"http_addr"` // host:port of the device HTTP listener
	PID      int    `json:"pid"`
	// Iteration and ModelSHA say what the server holds, so a restarted
	// scheduler can check it against its persisted state.
	Iteration uint64 `json:"iteration"`
	ModelSHA  string `json:"model_sha256,omitempty"`
	// Folded is how many updates the server acknowledged and folded into
	// its partial sum of iteration Iteration, and Updates which: a
	// scheduler restored from a state saved before some of them counts
	// them then (or, when it cannot, records them as lost).
	Folded  int            `json:"folded,omitempty"`
	Updates []FoldedUpdate `json:"updates,omitempty"`
	// Attempt is the latest aggregation attempt of Iteration the server
	// has seen: a restored scheduler numbers its attempts past it.
	Attempt int `json:"attempt,omitempty"`
	// Rejoin is set by a process that registered before (its link broke,
	// or the scheduler restarted). A new process has nothing it
	// acknowledged before it started: a restarted scheduler cannot learn
	// what that was.
	Rejoin bool `json:"rejoin,omitempty"`
	// Rounds are the round parameters the server was started with: the
	// seed gives start_fl_job_threshold and friends to the servers only, so
	// a scheduler started without them adopts the servers'.
	Rounds *RoundParams `json:"rounds,omitempty"`
}

// FoldedUpdate is an update in a server's partial sum: the device and the
// data size it was weighted with.
type FoldedUpdate struct {
	FLID     string `json:"fl_id"`
	DataSize int    `json:"data_size"`
}

// RoundParams are MindSpore's round and plan hyper-parameters.
type RoundParams struct {
	StartFLJobThreshold       int     `json:"start_fl_job_threshold"`
	StartFLJobTimeWindow      int64   `json:"start_fl_job_time_window"`
	UpdateModelRatio          float64 `json:"update_model_ratio"`
	UpdateModelTimeWindow     int64   `json:"update_model_time_window"`
	GlobalIterationTimeWindow int64   `json:"global_iteration_time_window"`
	FLIterationNum            int     `json:"fl_iteration_num"`
	ClientEpochNum            int     `json:"client_epoch_num"`
	ClientBatchSize           int     `json:"client_batch_size"`
	ClientLearningRate        float64 `json:"client_learning_rate"`
}

// RegisterReply gives the server its rank and the membership.
type RegisterReply struct {
	Rank       int            `json:"rank"`
	Membership Membership     `json:"membership"`
	Iteration  IterationState `json:"iteration"`
	// KeepPartial, when not 0, is the iteration whose partial sum the
	// server keeps: the scheduler counts exactly the updates folded in it
	// (Register.Updates). Every other partial sum is dropped.
	KeepPartial uint64 `json:"keep_partial,omitempty"`
	// LastIterations are the ends of the last two iterations that ended,
	// oldest first, as NextIteration told them: a server that missed them
	// (the scheduler died before sending them, or the link broke) stores
	// their models. Two: a restarted scheduler may fail the iteration it
	// restored before any server stored the one before it.
	LastIterations []NextIteration `json:"last_iterations,omitempty"`
}

// Heartbeat tells the scheduler a server is alive.
type Heartbeat struct {
	NodeID    string `json:"node_id"`
	Iteration uint64 `json:"iteration"`
}

// HeartbeatReply carries the membership version so a server that missed a
// push notices and asks again.
type HeartbeatReply struct {
	Version      uint64 `json:"version"`
	ClusterState string `json:"cluster_state"`
}

// Member is one server as the scheduler sees it.
type Member struct {
	NodeID   string `json:"node_id"`
	Rank     int    `json:"rank"`
	PeerAddr string `json:"peer_addr"`
	HTTPAddr string `json:"http_addr"`
	Alive    bool   `json:"alive"`
	PID      int    `json:"pid"`
	// ScaledIn marks a server removed by /scalein that still runs.
	ScaledIn bool `json:"scaled_in,omitempty"`
}

// Membership is the whole cluster view, pushed on every change.
type Membership struct {
	Version      uint64   `json:"version"`
	ClusterState string   `json:"cluster_state"`
	ServerNum    int      `json:"server_num"`
	Members      []Member `json:"members"`
}

// Error is the body of a KindError reply.
type Error struct {
	Message string `json:"error"`
}

// Encode marshals a control message: compactly if it has a compact form
// (see compact.go), else as JSON.
func Encode(v any) []byte {
	if c, ok := v.(compact); ok {
		return c.appendCompact(append(make([]byte, 0, 64), compactTag))
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode %T: %v", v, err))
	}
	return b
}

// Decode unmarshals a control message body into v, from either form.
func Decode(body []byte, v any) error {
	if len(body) > 0 && body[0] == compactTag {
		if c, ok := v.(compactDecoder); ok {
			return decodeCompact(body, c)
		}
		return fmt.Errorf("cannot decode %T: %w: it has no compact form", v, errCompact)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("cannot decode %T: %w", v, err)
	}
	return nil
}

// Admit asks the scheduler to admit a device (the global part of
// startFLJob, after the server has checked the request).
type Admit struct {
	FLID     string `json:"fl_id"`
	DataSize int    `json:"data_size"`
}

// CountUpdate asks the scheduler to count a device's update (the global part
// of updateModel, after the server has decoded and validated the tensors).
type CountUpdate struct {
	FLID      string `json:"fl_id"`
	Iteration uint64 `json:"iteration"`
}

// Answer codes of Admit and CountUpdate.
const (
	AnswerSucceed   = "succeed"
	AnswerOutOfTime = "out_of_time"
	AnswerDisabled  = "disabled" // the plain-text "disabled or finished" body
	AnswerSafemode  = "safemode" // the plain-text safemode body
)

// Answer is the scheduler's reply to Admit and CountUpdate.
type Answer struct {
	Code        string `json:"code"`
	Reason      string `json:"reason,omitempty"`
	Iteration   uint64 `json:"iteration"`
	NextReqTime int64  `json:"next_req_time"`
	DataSize    int    `json:"data_size,omitempty"`
}

// Participant is one server of an all-reduce, in reduction order.
type Participant struct {
	NodeID   string `json:"node_id"`
	PeerAddr string `json:"peer_addr"`
}

// Aggregate starts the all-reduce of an iteration among Participants.
type Aggregate struct {
	Iteration    uint64        `json:"iteration"`
	Attempt      int           `json:"attempt"`
	Participants []Participant `json:"participants"`
	// Expected is how many updates the receiving server must have folded.
	Expected int `json:"expected"`
	// DeadlineMs is the attempt's deadline in epoch ms.
	DeadlineMs int64 `json:"deadline_ms"`
}

// Aggregated reports a server's end of an all-reduce.
type Aggregated struct {
	Iteration uint64 `json:"iteration"`
	Attempt   int    `json:"attempt"`
	SHA256    string `json:"sha256"`
	Folded    int    `json:"folded"`
	// FoldMBps is the server's fold throughput this iteration (record).
	FoldMBps float64 `json:"fold_mbps,omitempty"`
	// Engine is the aggregation engine that folded (record).
	Engine string `json:"engine,omitempty"`
	// LossSum and Losses sum the training losses devices reported with
	// the updates this server folded (record).
	LossSum float64 `json:"loss_sum,omitempty"`
	Losses  int     `json:"losses,omitempty"`
}

// NextIteration moves servers to Iteration, storing Completed first: the
// aggregated model if Valid, else a copy of the latest one.
type NextIteration struct {
	Iteration   uint64 `json:"iteration"`
	Completed   uint64 `json:"completed"`
	Valid       bool   `json:"valid"`
	Reason      string `json:"reason,omitempty"`
	SHA256      string `json:"sha256,omitempty"`
	Instance    string `json:"instance"`
	NextReqTime int64  `json:"next_req_time"`
}

// Plan is the FLPlan part of the hyper-parameters servers hand to devices.
type Plan struct {
	FLIterationNum     int     `json:"fl_iteration_num"`
	ClientEpochNum     int     `json:"client_epoch_num"`
	ClientBatchSize    int     `json:"client_batch_size"`
	ClientLearningRate float64 `json:"client_learning_rate"`
}

// IterationState is pushed to servers when the iteration's shared state
// changes outside NextIteration (round events, instance commands, plans).
type IterationState struct {
	Iteration   uint64 `json:"iteration"`
	Instance    string `json:"instance"`
	NextReqTime int64  `json:"next_req_time"`
	Plan        *Plan  `json:"plan,omitempty"`
}
