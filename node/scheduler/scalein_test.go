package scheduler_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/fedcluster/fedcluster/wire/ctl"
)

// TestScaledInServerLeavesWithItsIteration: a scale-in asked for during an
// iteration takes effect at its end. From the next iteration on, the
// servers scaled in must not admit or count: an update they counted would
// be lost when they leave.
func TestScaledInServerLeavesWithItsIteration(t *testing.T) {
	s := startScheduler(t, 2, 1)
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
