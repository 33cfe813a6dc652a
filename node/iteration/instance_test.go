package iteration

import (
	"testing"
	"time"
)

// instanceMachine is a one-server machine with threshold 1: one Admit and
// one CountUpdate take an iteration to aggregating.
func instanceMachine(t *testing.T) (*Machine, time.Time) {
	t.Helper()
	now := time.UnixMilli(1_000_000)
	cfg := DefaultConfig()
	cfg.FLIterationNum = 100
	m, err := NewMachine(cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	m.ServerJoined(now, "s")
	return m, now
}

func (m *Machine) toAggregating(t *testing.T, now time.Time, dev string) {
	t.Helper()
	if r := m.Admit(now, "s", dev, 1); r.Code != CodeSucceed {
		t.Fatalf("Admit: %+v", r)
	}
	if r := m.CountUpdate(now, "s", dev, m.Iteration()); r.Code != CodeSucceed {
		t.Fatalf("CountUpdate: %+v", r)
	}
	if m.Status().Phase != PhaseAggregating {
		t.Fatalf("phase %s", m.Status().Phase)
	}
}

// A disable that comes after a deferred new instance is not undone when the
// new instance starts at the iteration boundary.
func TestDisableAfterDeferredNewInstance(t *testing.T) {
	m, now := instanceMachine(t)
	if r := m.Admit(now, "s", "a", 1); r.Code != CodeSucceed {
		t.Fatalf("Admit: %+v", r)
	}
	p := m.Query()
	p.ClientLearningRate = 0.5
	if err := m.NewInstance(now, p); err != nil {
		t.Fatal(err)
	}
	if _, pending := m.Pending(); !pending {
		t.Fatal("new instance not deferred while collecting")
	}
	if err := m.Disable(now); err != nil { // ends the iteration as failed
		t.Fatal(err)
	}
	if st := m.Status(); st.Instance != InstanceDisabled {
		t.Fatalf("after the boundary the instance is %s, want disable", st.Instance)
	}
	if m.Query().ClientLearningRate != 0.5 {
		t.Fatal("the new instance's parameters were not applied at the boundary")
	}
}

// A new instance asked for while disabled and aggregating starts after the
// aggregation, not during it, and enables the instance then.
func TestNewInstanceWhileDisabledAndAggregating(t *testing.T) {
	m, now := instanceMachine(t)
	m.toAggregating(t, now, "a")
	it := m.Iteration()
	if err := m.Disable(now); err != nil {
		t.Fatal(err)
	}
	p := m.Query()
	p.FLIterationNum = 1
	if err := m.NewInstance(now, p); err != nil {
		t.Fatal(err)
	}
	if m.Query().FLIterationNum == 1 || m.Status().Instance != InstanceDisabled {
		t.Fatalf("the new instance started during the aggregation: %+v", m.Status())
	}
	if err := m.AggregationDone(now, "s", it, m.Status().Attempt, "abc", 1); err != nil {
		t.Fatal(err)
	}
	st := m.Status()
	if st.Iteration != it+1 || st.Instance != InstanceRunning || m.Query().FLIterationNum != 1 {
		t.Fatalf("after the aggregation: %+v, params %+v", st, m.Query())
	}
	// Its one iteration is still to run.
	m.toAggregating(t, now, "b")
}
