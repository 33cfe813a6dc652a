// Package rest defines the JSON bodies of the scheduler's management API,
// in the seed's format: numeric "code" (0 success, 1 error), camelCase node
// lists with string values, errors as {"code":1,"error_message":...}.
package rest

// Codes of the "code" key.
const (
	CodeOK    = 0
	CodeError = 1
)

// Error is the body of every 4xx answer.
type Error struct {
	Code         int    `json:"code"`
	ErrorMessage string `json:"error_message"`
}

// Message is a success answer without data.
type Message struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// NodeInfo is one entry of /nodes; keys in the seed's (alphabetical) order.
type NodeInfo struct {
	Alive  string `json:"alive"`
	NodeID string `json:"nodeId"`
	RankID string `json:"rankId"`
	Role   string `json:"role"`
}

// Nodes is the answer of GET /nodes.
type Nodes struct {
	Code    int        `json:"code"`
	Message string     `json:"message"`
	NodeIDs []NodeInfo `json:"nodeIds"`
}

// State is the answer of GET /state.
type State struct {
	Code         int    `json:"code"`
	Message      string `json:"message"`
	ClusterState string `json:"cluster_state"`
	// fedcluster's additions: the iteration the cluster is in.
	Iteration uint64 `json:"iteration"`
	Instance  string `json:"instance_state"`
	Phase     string `json:"phase"`
	ServerNum int    `json:"server_num"`
	Admitted  int    `json:"admitted"`
	Updated   int    `json:"updated"`
}

// ScaleOut is the body of POST /scaleout; both counts are increments.
type ScaleOut struct {
	WorkerNum *int `json:"worker_num"`
	ServerNum *int `json:"server_num"`
}

// ScaleIn is the body of POST /scalein.
type ScaleIn struct {
	NodeIDs []string `json:"node_ids"`
}

// Instance is the answer of the instance commands.
type Instance struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Result  any    `json:"result"`
}
