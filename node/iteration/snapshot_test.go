package iteration

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

// busyMachine returns a machine mid-aggregation with a loss, a short report,
// rejections and a pending new instance.
func busyMachine(t *testing.T) *Machine {
	t.Helper()
	now := time.UnixMilli(1000)
	cfg := DefaultConfig()
	cfg.StartFLJobThreshold = 4
	m, err := NewMachine(cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"s1", "s2", "s3"} {
		m.ServerJoined(now, s)
	}
	for i, id := range []string{"a", "b", "c", "d"} {
		if r := m.Admit(now, []string{"s1", "s2", "s3", "s1"}[i], id, i+1); r.Code != CodeSucceed {
			t.Fatal(r)
		}
	}
	m.Admit(now, "s1", "late", 3)
	m.CountUpdate(now, "s1", "a", 1)
	m.ServerLost(now, "s1")
	m.CountUpdate(now, "s2", "b", 1)
	m.CountUpdate(now, "s3", "c", 1)
	if err := m.NewInstance(now, DefaultParams()); err != nil {
		t.Fatal(err)
	}
	m.ServerJoined(now, "s1")
	m.CountUpdate(now, "s1", "d", 1)
	if err := m.AggregationDone(now, "s2", 1, 1, "x", 0); err != nil {
		t.Fatal(err)
	}
	m.Ready()
	return m
}

func TestSnapshotRoundTrip(t *testing.T) {
	m := busyMachine(t)
	s := m.Snapshot()
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	// Restore while aggregating starts attempt 2; apart from that the state
	// is the same.
	r, err := Restore(back, DefaultConfig(), time.UnixMilli(1000))
	if err != nil {
		t.Fatal(err)
	}
	acts := r.Ready()
	if len(acts) != 1 {
		t.Fatalf("want one StartAggregation, got %v", acts)
	}
	sa, ok := acts[0].(StartAggregation)
	if !ok || sa.Attempt != 2 || sa.Total != 3 || !reflect.DeepEqual(sa.Servers, []string{"s1", "s2", "s3"}) {
		t.Fatalf("got %+v", acts[0])
	}
	got := r.Snapshot()
	want := s
	want.Attempts, want.Aggregation = 2, got.Aggregation
	want.Lost = 1 // the short report of attempt 1 is redone
	want.LostByServer = map[string]int{"s1": 1}
	if !reflect.DeepEqual(normalize(got), normalize(want)) {
		t.Fatalf("restored snapshot differs:\n got %+v\nwant %+v", got, want)
	}
}

func normalize(s Snapshot) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	f := func(mod func(s *Snapshot)) {
		t.Helper()
		s := busyMachine(t).Snapshot()
		mod(&s)
		if _, err := Restore(s, DefaultConfig(), time.UnixMilli(0)); err == nil {
			t.Fatalf("restore accepted a bad snapshot")
		}
	}
	f(func(s *Snapshot) { s.Version = 99 })
	f(func(s *Snapshot) { s.Iteration = 0 })
	f(func(s *Snapshot) { s.InstanceBase = s.Iteration })
	f(func(s *Snapshot) { s.Instance = "sleeping" })
	f(func(s *Snapshot) { s.Phase = "dancing" })
	f(func(s *Snapshot) { s.Params.UpdateModelRatio = 2 })
	f(func(s *Snapshot) { s.Pending.ClientBatchSize = 0 })
	f(func(s *Snapshot) { s.Aggregation = nil })
	f(func(s *Snapshot) { s.Devices = append(s.Devices, s.Devices[0]) })
	f(func(s *Snapshot) { s.Devices[0].DataSize = 0 })
	f(func(s *Snapshot) { s.Phase = "waiting" })
	c := DefaultConfig()
	c.AggregationTimeout = 0
	if _, err := Restore(busyMachine(t).Snapshot(), c, time.UnixMilli(0)); !errors.Is(err, ErrInvalidParam) {
		t.Fatalf("got %v", err)
	}
}
