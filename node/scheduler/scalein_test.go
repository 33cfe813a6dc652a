package scheduler_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/scheduler"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// fakeServer is a registered server link that calls the scheduler as a
// server would.
type fakeServer struct {
	t *testing.T
	c *transport.Conn
}

func connectServer(t *testing.T, s *scheduler.Scheduler, id string, port int) *fakeServer {
	t.Helper()
	tr, err := transport.New(transport.Options{Logger: zap.NewNop(), Handler: &pushes{more: make(chan struct{}, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c, err := tr.Dial(s.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, c: c}
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

// TestScaledInServerLeavesWithItsIteration: a scale-in asked for during an
// iteration takes effect at its end. From the next iteration on, the
// servers scaled in must not admit or count: an update they counted would
// be lost when they leave.
func TestScaledInServerLeavesWithItsIteration(t *testing.T) {
	cfg := config.Default()
	cfg.Cluster.SchedulerPort = 0
	cfg.Cluster.SchedulerManagePort = 0
	cfg.Cluster.ServerNum = 2
	cfg.FL.StartFLJobThreshold = 1
	cfg.FL.UpdateModelRatio = 1
	s, err := scheduler.New(&cfg, "sched", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stay := connectServer(t, s, "srv-0", 20000)
	leave := connectServer(t, s, "srv-1", 20001)

	a := stay.call(ctl.KindAdmit, ctl.Admit{FLID: "dev-a", DataSize: 10})
	if a.Code != ctl.AnswerSucceed {
		t.Fatalf("admission answered %+v", a)
	}
	resp, err := http.Post("http://"+s.ManageAddr()+"/scalein", "application/json", strings.NewReader(`{"node_ids":["srv-1"]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scalein: HTTP %d", resp.StatusCode)
	}
	if c := stay.call(ctl.KindCountUpdate, ctl.CountUpdate{FLID: "dev-a", Iteration: a.Iteration}); c.Code != ctl.AnswerSucceed {
		t.Fatalf("count answered %+v", c)
	}
	// Both servers all-reduce the iteration; the last report ends it and
	// applies the scale-in.
	stay.call(ctl.KindAggregated, ctl.Aggregated{Iteration: a.Iteration, Attempt: 1, SHA256: "sum", Folded: 1})
	leave.call(ctl.KindAggregated, ctl.Aggregated{Iteration: a.Iteration, Attempt: 1, SHA256: "sum", Folded: 0})

	if got := leave.call(ctl.KindAdmit, ctl.Admit{FLID: "dev-b", DataSize: 10}); got.Code != ctl.AnswerSafemode {
		t.Fatalf("a scaled-in server's admission in the next iteration answered %+v, want safemode", got)
	}
	if got := stay.call(ctl.KindAdmit, ctl.Admit{FLID: "dev-b", DataSize: 10}); got.Code != ctl.AnswerSucceed || got.Iteration != a.Iteration+1 {
		t.Fatalf("the remaining server's admission answered %+v, want success in iteration %d", got, a.Iteration+1)
	}
}
