package membership

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1700000000, 0)

func reg(id string) Registration {
	return Registration{ID: id, PeerAddr: "127.0.0.1:1" + id, HTTPAddr: "127.0.0.1:2" + id}
}

func TestLifecycle(t *testing.T) {
	m := New(3, 30*time.Second)
	now := t0
	register := func(id string, wantRank int) {
		t.Helper()
		rank, err := m.Register(now, reg(id))
		if err != nil {
			t.Fatalf("Register(%s): %v", id, err)
		}
		if rank != wantRank {
			t.Fatalf("Register(%s) rank %d, want %d", id, rank, wantRank)
		}
	}
	state := func(want string) {
		t.Helper()
		if m.State() != want {
			t.Fatalf("state %s, want %s", m.State(), want)
		}
	}
	state(ClusterStarting)
	register("a", 0)
	register("b", 1)
	state(ClusterStarting)
	register("c", 2)
	state(ClusterReady)

	if _, err := m.Register(now, reg("d")); err == nil || !strings.Contains(err.Error(), "already has its 3 servers") {
		t.Fatalf("a 4th server was admitted: %v", err)
	}
	// A duplicate id from another address while the first is connected.
	dup := reg("b")
	dup.PeerAddr = "10.0.0.9:1"
	if _, err := m.Register(now, dup); err == nil {
		t.Fatal("duplicate live node id admitted")
	}

	// Heartbeats keep a and c alive; b goes silent and dies.
	v := m.Version()
	for i := 0; i < 4; i++ {
		now = now.Add(10 * time.Second)
		m.Heartbeat(now, "a")
		m.Heartbeat(now, "c")
		m.Tick(now)
	}
	state(NodeTimeout)
	if n, _ := m.Node("b"); n.Alive {
		t.Fatal("silent node still alive")
	}
	if m.Version() == v {
		t.Fatal("version unchanged after a death")
	}
	// b restarts (new address, old connection gone) and gets rank 1 back.
	m.Disconnected("b")
	dup.PeerAddr = "127.0.0.1:9999"
	rank, err := m.Register(now, dup)
	if err != nil || rank != 1 {
		t.Fatalf("restart: rank %d err %v, want rank 1", rank, err)
	}
	state(ClusterReady)
	// A heartbeat from an unknown id asks for re-registration.
	if m.Heartbeat(now, "zz") {
		t.Fatal("unknown node accepted a heartbeat")
	}
}

func TestScaleOutAndIn(t *testing.T) {
	m := New(2, time.Minute)
	for _, id := range []string{"a", "b"} {
		if _, err := m.Register(t0, reg(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.ScaleOut(2); err != nil {
		t.Fatal(err)
	}
	if m.State() != ClusterScaleOut {
		t.Fatalf("state %s during scale-out", m.State())
	}
	for i, id := range []string{"c", "d"} {
		rank, err := m.Register(t0, reg(id))
		if err != nil || rank != 2+i {
			t.Fatalf("scale-out register %s: rank %d err %v", id, rank, err)
		}
	}
	if m.State() != ClusterReady {
		t.Fatalf("state %s after scale-out", m.State())
	}
	// Scale in rank 0 and rank 2: the rest are packed to 0, 1.
	if err := m.ScaleIn([]string{"a", "c"}); err != nil {
		t.Fatal(err)
	}
	got := ""
	for _, n := range m.Members() {
		got += n.ID
	}
	if got != "bd" || m.Members()[0].Rank != 0 || m.Members()[1].Rank != 1 {
		t.Fatalf("members after scale-in %v", m.Members())
	}
	if m.State() != ClusterReady || m.ServerNum() != 2 {
		t.Fatalf("state %s server_num %d", m.State(), m.ServerNum())
	}
	if err := m.ScaleIn([]string{"nope"}); err == nil || err.Error() != "The node id:nope is illegal." {
		t.Fatalf("unknown id: %v", err)
	}
	if _, err := m.Register(t0, reg("a")); err == nil {
		t.Fatal("a scaled-in id registered again")
	}
}

// A rolled-back scale-out keeps the servers that came and stops waiting for
// the others; a late one is then turned away as for any full cluster.
func TestRollbackScaleOut(t *testing.T) {
	m := New(2, time.Minute)
	m.Register(t0, reg("a"))
	m.Register(t0, reg("b"))
	if _, err := m.RollbackScaleOut(); err == nil {
		t.Fatal("rolled back a scale-out that was never asked for")
	}
	if err := m.ScaleOut(3); err != nil {
		t.Fatal(err)
	}
	if rank, err := m.Register(t0, reg("c")); err != nil || rank != 2 {
		t.Fatalf("scale-out register: rank %d, %v", rank, err)
	}
	v := m.Version()
	dropped, err := m.RollbackScaleOut()
	if err != nil || dropped != 2 {
		t.Fatalf("rollback: %d dropped, %v", dropped, err)
	}
	if m.State() != ClusterReady || m.ServerNum() != 3 || m.Version() == v {
		t.Fatalf("after rollback: state %s, server_num %d, version %d (was %d)", m.State(), m.ServerNum(), m.Version(), v)
	}
	if _, err := m.Register(t0, reg("d")); err == nil || !strings.Contains(err.Error(), "already has its 3 servers") {
		t.Fatalf("a server of the abandoned scale-out registered: %v", err)
	}
	if _, err := m.RollbackScaleOut(); err == nil {
		t.Fatal("rolled back twice")
	}
	// A scale-out during which an old server died rolls back to a cluster
	// that waits for that server.
	m.ScaleOut(1)
	m.Tick(t0.Add(2 * time.Minute))
	if _, err := m.RollbackScaleOut(); err != nil || m.State() != NodeTimeout || m.ServerNum() != 3 {
		t.Fatalf("rollback with dead servers: %v, state %s, server_num %d", err, m.State(), m.ServerNum())
	}
}

func TestSnapshotRestore(t *testing.T) {
	m := New(2, time.Minute)
	m.Register(t0, reg("a"))
	m.Register(t0, reg("b"))
	r := Restore(m.Snapshot(), time.Minute, t0.Add(time.Hour))
	if r.State() != ClusterReady {
		t.Fatalf("restored state %s", r.State())
	}
	if n, _ := r.Node("b"); n.Rank != 1 || n.Connected {
		t.Fatalf("restored node %+v", n)
	}
	// Nobody comes back: both die after the timeout.
	r.Tick(t0.Add(time.Hour + 2*time.Minute))
	if r.State() != NodeTimeout {
		t.Fatalf("state %s after silence", r.State())
	}
	rank, err := r.Register(t0.Add(2*time.Hour), reg("b"))
	if err != nil || rank != 1 {
		t.Fatalf("re-register after restore: %d %v", rank, err)
	}
}
