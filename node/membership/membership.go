// Package membership is the scheduler's view of the cluster as a state
// machine without I/O: registrations, heartbeats and the clock go in, the
// cluster state and a versioned member list come out. The scheduler feeds it
// from its connections and broadcasts View whenever Version changes.
package membership

import (
	"fmt"
	"sort"
	"time"

	"github.com/fedcluster/fedcluster/wire/ctl"
)

// Cluster states, with MindSpore's names.
const (
	ClusterStarting  = "CLUSTER_STARTING"
	ClusterReady     = "CLUSTER_READY"
	ClusterExit      = "CLUSTER_EXIT"
	NodeTimeout      = "NODE_TIMEOUT"
	ClusterScaleOut  = "CLUSTER_SCALE_OUT"
	ClusterScaleIn   = "CLUSTER_SCALE_IN"
	ClusterDisableFL = "CLUSTER_DISABLE_FLS"
)

// Node is one registered server.
type Node struct {
	ID        string
	Rank      int
	PeerAddr  string
	HTTPAddr  string
	PID       int
	Alive     bool
	Connected bool
	ScaledIn  bool
	LastSeen  time.Time
}

// Registration is what a server announces.
type Registration struct {
	ID       string
	PeerAddr string
	HTTPAddr string
	PID      int
}

// Machine tracks membership. It is not safe for concurrent use; the
// scheduler serialises calls.
type Machine struct {
	serverNum int
	timeout   time.Duration
	nodes     map[string]*Node
	state     string
	wasReady  bool
	version   uint64
	// scaleOutTarget is the server count a pending scale-out waits for.
	scaleOutTarget int
}

// New returns a machine waiting for serverNum servers, declaring a server
// dead after timeout without heartbeat.
func New(serverNum int, timeout time.Duration) *Machine {
	return &Machine{serverNum: serverNum, timeout: timeout, nodes: make(map[string]*Node), state: ClusterStarting, version: 1}
}

// State is the cluster state.
func (m *Machine) State() string { return m.state }

// Version changes whenever View changes.
func (m *Machine) Version() uint64 { return m.version }

// ServerNum is the number of servers the cluster is made of.
func (m *Machine) ServerNum() int { return m.serverNum }

// Node returns a copy of the node with id.
func (m *Machine) Node(id string) (Node, bool) {
	n, ok := m.nodes[id]
	if !ok {
		return Node{}, false
	}
	return *n, true
}

// Register admits a server. A known id gets its old rank back (a restarted
// server); a new id gets the lowest free rank. It fails for an id that is
// still connected from elsewhere and for a new id when all ranks are taken.
func (m *Machine) Register(now time.Time, r Registration) (int, error) {
	if r.ID == "" {
		return 0, fmt.Errorf("cannot register: empty node id")
	}
	if n, ok := m.nodes[r.ID]; ok {
		if n.ScaledIn {
			return 0, fmt.Errorf("cannot register node %s: it was scaled in; start it with a new node id", r.ID)
		}
		if n.Connected && n.Alive && n.PeerAddr != r.PeerAddr {
			return 0, fmt.Errorf("cannot register node %s: the id is in use by a live server at %s", r.ID, n.PeerAddr)
		}
		n.PeerAddr, n.HTTPAddr, n.PID = r.PeerAddr, r.HTTPAddr, r.PID
		n.Alive, n.Connected, n.LastSeen = true, true, now
		m.changed()
		return n.Rank, nil
	}
	rank, ok := m.freeRank()
	if !ok {
		return 0, fmt.Errorf("cannot register node %s: the cluster already has its %d servers; scale out first or reuse a node id", r.ID, m.serverNum)
	}
	m.nodes[r.ID] = &Node{ID: r.ID, Rank: rank, PeerAddr: r.PeerAddr, HTTPAddr: r.HTTPAddr, PID: r.PID, Alive: true, Connected: true, LastSeen: now}
	m.changed()
	return rank, nil
}

func (m *Machine) freeRank() (int, bool) {
	taken := make(map[int]bool, len(m.nodes))
	for _, n := range m.nodes {
		if !n.ScaledIn {
			taken[n.Rank] = true
		}
	}
	for r := 0; r < m.serverNum; r++ {
		if !taken[r] {
			return r, true
		}
	}
	return 0, false
}

// Heartbeat records a sign of life. It reports false for an unknown id (the
// server must register again, e.g. after a scheduler restart).
func (m *Machine) Heartbeat(now time.Time, id string) bool {
	n, ok := m.nodes[id]
	if !ok {
		return false
	}
	if n.ScaledIn {
		return true // it waits for SIGTERM, connected but out of the cluster
	}
	n.LastSeen = now
	if !n.Alive {
		n.Alive = true
		m.changed()
	}
	return true
}

// Disconnected records that a server's connection closed. It stays alive
// until its heartbeat timeout, as a short link failure is not a crash.
func (m *Machine) Disconnected(id string) {
	if n, ok := m.nodes[id]; ok {
		n.Connected = false
	}
}

// Tick declares servers silent for longer than the timeout dead.
func (m *Machine) Tick(now time.Time) {
	for _, n := range m.nodes {
		if n.Alive && now.Sub(n.LastSeen) > m.timeout {
			n.Alive = false
			m.changed()
		}
	}
}

// NextDeadline is when Tick may next change something.
func (m *Machine) NextDeadline() (time.Time, bool) {
	var next time.Time
	for _, n := range m.nodes {
		if n.Alive {
			d := n.LastSeen.Add(m.timeout)
			if next.IsZero() || d.Before(next) {
				next = d
			}
		}
	}
	return next, !next.IsZero()
}

// ScaleOut raises the server count by k; the cluster is CLUSTER_SCALE_OUT
// until the new servers have registered.
func (m *Machine) ScaleOut(k int) error {
	if k < 1 {
		return fmt.Errorf("cannot scale out by %d servers", k)
	}
	m.serverNum += k
	m.scaleOutTarget = m.serverNum
	m.changed()
	return nil
}

// RollbackScaleOut ends a pending scale-out with the servers registered so
// far: the ones that never came are no longer expected, and those that did
// stay (they already take part in iterations). It returns how many servers
// it stopped waiting for.
func (m *Machine) RollbackScaleOut() (int, error) {
	if m.scaleOutTarget == 0 {
		//lint:ignore ST1005 worded like MindSpore's REST messages
		return 0, fmt.Errorf("The cluster state is not CLUSTER_SCALE_OUT, does not need to rollback.")
	}
	registered := 0
	for _, n := range m.nodes {
		if !n.ScaledIn {
			registered++
		}
	}
	dropped := m.serverNum - registered
	m.serverNum, m.scaleOutTarget = registered, 0
	m.changed()
	return dropped, nil
}

// CheckScaleIn validates a scale-in request without applying it.
func (m *Machine) CheckScaleIn(ids []string) (map[string]bool, error) {
	if len(ids) == 0 {
		//lint:ignore ST1005 MindSpore's exact REST message
		return nil, fmt.Errorf("The node ids should not be empty.")
	}
	remove := make(map[string]bool, len(ids))
	for _, id := range ids {
		n, ok := m.nodes[id]
		if !ok || n.ScaledIn {
			//lint:ignore ST1005 MindSpore's exact REST message
			return nil, fmt.Errorf("The node id:%s is illegal.", id)
		}
		remove[id] = true
	}
	if m.serverNum-len(remove) < 1 {
		return nil, fmt.Errorf("cannot scale in every server: at least one must remain")
	}
	return remove, nil
}

// ScaleIn removes the servers with ids; the remaining ranks are packed so
// they stay dense (0..n-1) in their old order.
func (m *Machine) ScaleIn(ids []string) error {
	remove, err := m.CheckScaleIn(ids)
	if err != nil {
		return err
	}
	var keep []*Node
	for _, n := range m.nodes {
		if remove[n.ID] {
			n.ScaledIn, n.Rank = true, -1
		} else if !n.ScaledIn {
			keep = append(keep, n)
		}
	}
	sort.Slice(keep, func(i, j int) bool { return keep[i].Rank < keep[j].Rank })
	for i, n := range keep {
		n.Rank = i
	}
	m.serverNum -= len(remove)
	m.changed()
	return nil
}

// Forget drops a scaled-in server once it has gone.
func (m *Machine) Forget(id string) {
	if n, ok := m.nodes[id]; ok && n.ScaledIn {
		delete(m.nodes, id)
		m.changed()
	}
}

// Members are the servers of the cluster (scaled-in ones excluded), by rank.
func (m *Machine) Members() []Node {
	var out []Node
	for _, n := range m.nodes {
		if !n.ScaledIn {
			out = append(out, *n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rank < out[j].Rank })
	return out
}

// All is every known server, scaled-in ones last.
func (m *Machine) All() []Node {
	out := m.Members()
	var gone []Node
	for _, n := range m.nodes {
		if n.ScaledIn {
			gone = append(gone, *n)
		}
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].ID < gone[j].ID })
	return append(out, gone...)
}

// View is the membership pushed to servers.
func (m *Machine) View() ctl.Membership {
	v := ctl.Membership{Version: m.version, ClusterState: m.state, ServerNum: m.serverNum}
	for _, n := range m.All() {
		v.Members = append(v.Members, ctl.Member{NodeID: n.ID, Rank: n.Rank, PeerAddr: n.PeerAddr, HTTPAddr: n.HTTPAddr, Alive: n.Alive, PID: n.PID, ScaledIn: n.ScaledIn})
	}
	return v
}

// changed bumps the version and recomputes the cluster state.
func (m *Machine) changed() {
	m.version++
	alive, registered := 0, 0
	for _, n := range m.nodes {
		if n.ScaledIn {
			continue
		}
		registered++
		if n.Alive {
			alive++
		}
	}
	switch {
	case m.scaleOutTarget > 0 && registered < m.scaleOutTarget:
		m.state = ClusterScaleOut
	case alive == m.serverNum && registered == m.serverNum:
		m.scaleOutTarget = 0
		m.state, m.wasReady = ClusterReady, true
	case !m.wasReady:
		m.state = ClusterStarting
	default:
		m.state = NodeTimeout
	}
}

// Snapshot is the persisted membership (scheduler recovery).
type Snapshot struct {
	ServerNum      int    `json:"server_num"`
	Version        uint64 `json:"version"`
	WasReady       bool   `json:"was_ready"`
	ScaleOutTarget int    `json:"scale_out_target,omitempty"`
	Nodes          []Node `json:"nodes"`
}

// Snapshot returns the state to persist.
func (m *Machine) Snapshot() Snapshot {
	return Snapshot{ServerNum: m.serverNum, Version: m.version, WasReady: m.wasReady, ScaleOutTarget: m.scaleOutTarget, Nodes: m.All()}
}

// Restore rebuilds a machine from a snapshot. Every server starts as alive
// but disconnected with now as its last heartbeat: one that does not come
// back within the timeout is declared dead as usual.
func Restore(s Snapshot, timeout time.Duration, now time.Time) *Machine {
	m := New(s.ServerNum, timeout)
	m.wasReady, m.scaleOutTarget = s.WasReady, s.ScaleOutTarget
	for _, n := range s.Nodes {
		n := n
		n.Alive, n.Connected, n.LastSeen = !n.ScaledIn, false, now
		m.nodes[n.ID] = &n
	}
	m.version = s.Version
	m.changed()
	return m
}
