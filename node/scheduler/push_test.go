package scheduler_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/scheduler"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// pushes records the frames the scheduler pushes to one server.
type pushes struct {
	mu     sync.Mutex
	states []ctl.IterationState
	aggs   int
	more   chan struct{} // signalled after each recorded frame
}

func (p *pushes) Serve(_ *transport.Conn, f frame.Frame) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch f.Kind {
	case ctl.KindIterState:
		var st ctl.IterationState
		if err := ctl.Decode(f.Body, &st); err != nil {
			return nil, err
		}
		p.states = append(p.states, st)
	case ctl.KindAggregate:
		p.aggs++
	}
	select {
	case p.more <- struct{}{}:
	default:
	}
	return nil, nil
}

func (p *pushes) Closed(*transport.Conn, error) {}

func (p *pushes) seen() ([]ctl.IterationState, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]ctl.IterationState(nil), p.states...), p.aggs
}

// await returns the states pushed so far once done holds for them and the
// count of Aggregate pushes.
func (p *pushes) await(t *testing.T, what string, done func(states []ctl.IterationState, aggs int) bool) []ctl.IterationState {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		states, aggs := p.seen()
		if done(states, aggs) {
			return states
		}
		select {
		case <-p.more:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// startScheduler starts a scheduler on free ports for servers servers,
// with a startFLJob threshold and an updateModel ratio of 1.
func startScheduler(t *testing.T, servers, threshold int) *scheduler.Scheduler {
	t.Helper()
	cfg := config.Default()
	cfg.Cluster.SchedulerPort = 0
	cfg.Cluster.SchedulerManagePort = 0
	cfg.Cluster.ServerNum = servers
	cfg.FL.StartFLJobThreshold = threshold
	cfg.FL.UpdateModelRatio = 1
	s, err := scheduler.New(&cfg, "sched", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fakeServer is a registered server link that calls the scheduler as a
// server would and records what the scheduler pushes to it.
type fakeServer struct {
	t      *testing.T
	c      *transport.Conn
	pushes *pushes
}

func connectServer(t *testing.T, s *scheduler.Scheduler, id string, port int) *fakeServer {
	t.Helper()
	seen := &pushes{more: make(chan struct{}, 1)}
	tr, err := transport.New(transport.Options{Logger: zap.NewNop(), Handler: seen})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c, err := tr.Dial(s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, c: c, pushes: seen}
	f.call(ctl.KindRegister, ctl.Register{NodeID: id, PeerAddr: "127.0.0.1:" + strconv.Itoa(port), HTTPAddr: "127.0.0.1:" + strconv.Itoa(port+1000), PID: port})
	return f
}

func (f *fakeServer) call(kind frame.Kind, v any) ctl.Answer {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := f.c.Call(ctx, kind, ctl.Encode(v))
	if err != nil {
		f.t.Fatalf("call %d: %v", kind, err)
	}
	var a ctl.Answer
	if kind == ctl.KindAdmit || kind == ctl.KindCountUpdate {
		if err := ctl.Decode(out, &a); err != nil {
			f.t.Fatal(err)
		}
	}
	return a
}

// TestRoundEventsPushOnlyChanges runs one iteration of two devices through
// a real scheduler and one registered server: of the four round events
// (first and last admission, first and last update) only the first changes
// the iteration state (its next_req_time), so only it is pushed.
func TestRoundEventsPushOnlyChanges(t *testing.T) {
	s := startScheduler(t, 1, 2)
	srv := connectServer(t, s, "srv-0", 20000)
	seen, call := srv.pushes, srv.call
	first := call(ctl.KindAdmit, ctl.Admit{FLID: "dev-a", DataSize: 10})
	if first.Code != ctl.AnswerSucceed {
		t.Fatalf("the first admission answered %+v", first)
	}
	// Its push (next_req_time now counts from this admission) arrives
	// after the answer, which the scheduler writes first.
	before := seen.await(t, "the first admission's push", func(st []ctl.IterationState, _ int) bool { return len(st) > 0 })
	if got := before[len(before)-1].NextReqTime; got != first.NextReqTime {
		t.Fatalf("pushed next_req_time %d, the admission answered %d", got, first.NextReqTime)
	}
	for _, step := range []struct {
		kind frame.Kind
		msg  any
	}{
		{ctl.KindAdmit, ctl.Admit{FLID: "dev-b", DataSize: 20}},
		{ctl.KindCountUpdate, ctl.CountUpdate{FLID: "dev-a", Iteration: first.Iteration}},
		{ctl.KindCountUpdate, ctl.CountUpdate{FLID: "dev-b", Iteration: first.Iteration}},
	} {
		if a := call(step.kind, step.msg); a.Code != ctl.AnswerSucceed {
			t.Fatalf("%+v answered %+v", step.msg, a)
		}
	}
	// The last count starts the aggregation: the Aggregate push follows
	// every push the updates caused on this link, and the handler serves
	// them in order.
	after := seen.await(t, "the Aggregate push", func(_ []ctl.IterationState, aggs int) bool { return aggs > 0 })
	if len(after) != len(before) {
		t.Errorf("%d iteration states pushed after the first admission, want 0 (nothing changed): %+v", len(after)-len(before), after[len(before):])
	}
}
