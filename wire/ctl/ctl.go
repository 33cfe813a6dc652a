// Package ctl defines the control messages carried in cluster frames
// between the scheduler and the servers. Bodies are JSON: control traffic is
// small and infrequent next to device traffic, and JSON keeps it readable in
// logs and captures. Bulk tensors (the all-reduce) use the binary bodies of
// package wire/peer instead.
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
}

// RegisterReply gives the server its rank and the membership.
type RegisterReply struct {
	Rank       int        `json:"rank"`
	Membership Membership `json:"membership"`
	Iteration  Iteration  `json:"iteration"`
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

// Iteration is the control state a server needs to answer devices.
type Iteration struct {
	Iteration   uint64 `json:"iteration"`
	Instance    string `json:"instance"` // "running", "disable", "finish"
	NextReqTime int64  `json:"next_req_time"`
}

// Error is the body of a KindError reply.
type Error struct {
	Message string `json:"error"`
}

// Encode marshals a control message.
func Encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode %T: %v", v, err))
	}
	return b
}

// Decode unmarshals a control message body into v.
func Decode(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("cannot decode %T: %w", v, err)
	}
	return nil
}
