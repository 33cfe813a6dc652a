package main

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fedcluster/fedcluster/node/local"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/record"
	"github.com/fedcluster/fedcluster/wire/flmsg"
	"github.com/fedcluster/fedcluster/wire/rest"
)

// TestServerWithoutTheModelAdmitsNoDevice: a server that restarted without
// its checkpoints and could not fetch the current model (its only peer is
// itself) must turn devices away before the scheduler admits them: an
// admission counts toward the startFLJob threshold, and a device it then
// cannot serve never sends the update the round waits for. Asked for the
// model it lacks, it must not answer with an older one.
func TestServerWithoutTheModelAdmitsNoDevice(t *testing.T) {
	c := startCluster(t, 1, "--start_fl_job_threshold=1", "--fl_iteration_num=10",
		"--heartbeat_interval=200ms", "--heartbeat_timeout=2s")
	d := lenetDevice(t, c, "dev-0")
	for it := int32(1); it <= 2; it++ {
		if got, _ := d.round(it); got == nil {
			t.FailNow()
		}
		if d.getModel(it) == nil {
			t.FailNow()
		}
	}
	if err := c.Kill("0", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(c.Dir(), "server_0", "checkpoints")); err != nil {
		t.Fatal(err)
	}
	if err := c.StartServer("0", c.ServerPorts[0]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitServerReady(ctx, 0); err != nil {
		t.Fatal(err)
	}
	body := d.post("/startFLJob", flmsg.BuildRequestFLJob(d.b, &flmsg.FLJobArgs{FLName: "LeNet", FLID: "dev-1", DataSize: 10, Timestamp: now()}))
	if string(body) != flmsg.BodySafemode {
		t.Fatalf("startFLJob on a server without iteration 2's model answered %q, want %q", body, flmsg.BodySafemode)
	}
	var st rest.State
	if err := local.GetJSON(ctx, c.ManageURL()+"/state", &st); err != nil {
		t.Fatal(err)
	}
	if st.Iteration != 3 || st.Admitted != 0 {
		t.Fatalf("the scheduler is at iteration %d with %d admitted, want iteration 3 with none", st.Iteration, st.Admitted)
	}
	// Nor does it serve an older model for iteration 2's: the device is
	// told to ask again (elsewhere).
	body = d.post("/getModel", flmsg.BuildRequestGetModel(d.b, &flmsg.GetModelArgs{FLName: "LeNet", Iteration: 2, Timestamp: now()}))
	if r, err := flmsg.DecodeResponseGetModel(body); err != nil || r.Retcode != flmsg.SucNotReady {
		t.Fatalf("getModel(2) on a server holding iteration 0's model only: retcode %d %q, %v; want SucNotReady", r.Retcode, r.Reason, err)
	}
}

// TestServerWithoutSchedulerRefusesUpdates: a server cut off from the
// scheduler cannot count an update, and its iteration may be behind the
// cluster's. An update for an iteration it has not reached gets safemode,
// so that the device tries another server, not OutOfTime from the stale
// iteration, which would make the device sit out the iteration.
func TestServerWithoutSchedulerRefusesUpdates(t *testing.T) {
	c := startCluster(t, 1, "--start_fl_job_threshold=1", "--fl_iteration_num=10",
		"--heartbeat_interval=200ms", "--heartbeat_timeout=2s")
	d := lenetDevice(t, c, "dev-0")
	if got, _ := d.round(1); got == nil {
		t.FailNow()
	}
	if d.getModel(1) == nil {
		t.FailNow()
	}
	if err := c.Kill("scheduler", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	up := model.New(d.layout)
	for _, it := range []int32{2, 4} { // the server's iteration, and one it has not reached
		body := d.post("/updateModel", flmsg.BuildRequestUpdateModel(d.b, &flmsg.UpdateModelArgs{FLName: "LeNet", FLID: "dev-1", Iteration: it, Timestamp: now(), Model: up}))
		if string(body) != flmsg.BodySafemode {
			r, err := flmsg.DecodeResponseUpdateModel(body)
			t.Fatalf("updateModel for iteration %d without a scheduler answered %d %q %v, want %q", it, r.Retcode, r.Reason, err, flmsg.BodySafemode)
		}
	}
}

// TestSchedulerRestartKeepsAcknowledgedUpdates: a scheduler restarts from
// a state saved before or after devices' updates (its counts reach the
// disk at most every 200 ms). The servers that folded them register again
// with their partial sums and the updates in them: the restored state
// counts those it lacks, the servers keep the sums, and the iteration goes
// on. Its model averages the updates from before the restart with those
// after it, none lost. Restarted while aggregating, the scheduler starts a
// new attempt as the servers register again.
func TestSchedulerRestartKeepsAcknowledgedUpdates(t *testing.T) {
	for _, tc := range []struct {
		name      string
		threshold int // devices in the round
		before    int // how many of them update before the restart
		env       []string
		saved     string // what the state the scheduler restarts from holds; "" the ready cluster's
	}{
		{name: "uncounted, one server's", threshold: 2, before: 1},
		{name: "uncounted, two servers'", threshold: 3, before: 2},
		{name: "counted while collecting", threshold: 3, before: 2, saved: `"phase":"collecting"`},
		// The servers' all-reduce held up while the scheduler goes.
		{name: "counted while aggregating", threshold: 2, before: 2, env: []string{"FEDCLUSTER_FAULT_ALLREDUCE_DELAY=2s"}, saved: `"phase":"aggregating"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, recovery, metrics := startRecoveryCluster(t, 2, tc.threshold, tc.env)
			// The ready cluster's state is saved (membership changes are
			// saved at once).
			restoreReady := keepSavedState(t, recovery)
			devs := pinnedDevices(t, c, tc.threshold)
			uploads := make([][]float32, tc.threshold)
			for i := range tc.before {
				if _, uploads[i] = devs[i].round(1); uploads[i] == nil {
					t.FailNow()
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if tc.saved != "" {
				if err := local.Poll(ctx, func() (bool, error) {
					for _, p := range []string{recovery, recovery + ".1"} {
						b, err := os.ReadFile(p)
						if err == nil && strings.Count(string(b), `"updated_by":`) == tc.before && strings.Contains(string(b), tc.saved) {
							return true, nil
						}
					}
					return false, nil
				}); err != nil {
					t.Fatalf("no saved state counts the %d updates with %s: %v", tc.before, tc.saved, err)
				}
			}
			if err := c.Kill("scheduler", syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if tc.saved == "" {
				restoreReady()
			}
			if err := c.StartScheduler(); err != nil {
				t.Fatal(err)
			}
			for i := range c.ServerPorts {
				waitRegistrations(ctx, t, c, i, 2)
			}
			for i := tc.before; i < tc.threshold; i++ {
				if _, uploads[i] = devs[i].round(1); uploads[i] == nil {
					t.FailNow()
				}
			}
			for _, d := range devs {
				got := d.getModel(1)
				if rel := fedAvgError(got, uploads, devs); rel > 1e-6 || math.IsNaN(rel) {
					t.Fatalf("device %s got an iteration-1 model %g (relative) from the FedAvg of all %d updates", d.id, rel, tc.threshold)
				}
			}
			rec := awaitRecords(t, metrics, 1)[1]
			if rec.IterationResult != record.ResultSuccess || rec.Lost != 0 || rec.Updated != uint64(tc.threshold) {
				t.Fatalf("iteration 1's record: %+v", rec)
			}
		})
	}
}

// startRecoveryCluster starts servers and a scheduler that saves its state
// in recovery and its records in metrics, with round windows longer than
// any test and a 2 s heartbeat timeout.
func startRecoveryCluster(t *testing.T, servers, threshold int, env []string) (c *local.Cluster, recovery, metrics string) {
	t.Helper()
	dir := t.TempDir()
	recovery = filepath.Join(dir, "recovery.json")
	metrics = filepath.Join(dir, "metrics.json")
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(`{"recovery": {"storage_type": 1, "storage_file_path": "`+recovery+`"},
		"metrics": {"storage_type": 1, "storage_file_path": "`+metrics+`"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c = startClusterEnv(t, servers, env, "--config_file_path="+cfg, "--start_fl_job_threshold="+strconv.Itoa(threshold), "--fl_iteration_num=3",
		"--start_fl_job_time_window=600000", "--update_model_time_window=600000", "--global_iteration_time_window=3600000",
		"--heartbeat_interval=200ms", "--heartbeat_timeout=2s")
	return c, recovery, metrics
}

// waitRegistrations waits until server i has registered n times.
func waitRegistrations(ctx context.Context, t *testing.T, c *local.Cluster, i, n int) {
	t.Helper()
	want := `fedcluster_registrations_total{node_id="` + strconv.Itoa(i) + `"} ` + strconv.Itoa(n) + "\n"
	if err := local.Poll(ctx, func() (bool, error) {
		resp, err := http.Get(c.ServerURL(i) + "/metrics")
		if err != nil {
			return false, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), want), nil
	}); err != nil {
		t.Fatalf("server %d never registered %d times: %v", i, n, err)
	}
}

// TestSchedulerRestartWithoutAServer: a server that died with the
// scheduler stays in the restored iteration only until the heartbeat
// timeout declares it dead; the iteration then aggregates without it.
func TestSchedulerRestartWithoutAServer(t *testing.T) {
	c, _, metrics := startRecoveryCluster(t, 2, 1, nil)
	// The host of the scheduler and server 1 goes down.
	if err := c.Kill("scheduler", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill("1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.StartScheduler(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitRegistrations(ctx, t, c, 0, 2)
	d := lenetDevice(t, c, "dev-0")
	d.pinned, d.server = true, 0
	_, upload := d.round(1)
	if upload == nil {
		t.FailNow()
	}
	got := d.getModel(1)
	if rel := fedAvgError(got, [][]float32{upload}, []*testDevice{d}); rel > 1e-6 || math.IsNaN(rel) {
		t.Fatalf("iteration 1's model is %g (relative) from the device's update", rel)
	}
	rec := awaitRecords(t, metrics, 1)[1]
	if rec.IterationResult != record.ResultSuccess || rec.Lost != 0 || rec.Updated != 1 {
		t.Fatalf("iteration 1's record: %+v", rec)
	}
}

// TestSchedulerRestartAfterSavingAnIterationsEnd: a scheduler that dies
// after saving an iteration's end but before telling the servers (or
// writing its record) restarts in the next iteration. The servers, which
// hold that iteration's aggregate unstored, store it and serve it;
// metrics.json has one record per iteration, and /records all of them.
// If the servers died too (the whole cluster went down in that window),
// their new processes find the aggregate in the checkpoint they had
// written, unpublished, and store it when the scheduler confirms its
// checksum; the restored iteration fails, as any does that a server
// comes back to without its partial sum.
func TestSchedulerRestartAfterSavingAnIterationsEnd(t *testing.T) {
	for _, tc := range []struct {
		servers     int
		withServers bool
	}{{1, false}, {2, false}, {1, true}, {2, true}} {
		name := strconv.Itoa(tc.servers) + " servers"
		if tc.withServers {
			name += ", killed too"
		}
		t.Run(name, func(t *testing.T) {
			// The scheduler exits right after saving iteration 2's end.
			c, _, metrics := startRecoveryCluster(t, tc.servers, 1, []string{"FEDCLUSTER_FAULT_EXIT_AFTER_SAVE=2"})
			d := lenetDevice(t, c, "dev-0")
			d.pinned = true
			var uploads [][]float32
			for it := int32(1); it <= 2; it++ {
				_, up := d.round(it)
				if up == nil {
					t.FailNow()
				}
				uploads = append(uploads, up)
				if it == 1 && d.getModel(1) == nil {
					t.FailNow()
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := local.Poll(ctx, func() (bool, error) { return c.Exited("scheduler"), nil }); err != nil {
				t.Fatalf("the scheduler did not exit after saving iteration 2's end: %v", err)
			}
			if tc.withServers {
				for i := range c.ServerPorts {
					if err := c.Kill(strconv.Itoa(i), syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := c.StartScheduler(); err != nil {
				t.Fatal(err)
			}
			if tc.withServers {
				for i, port := range c.ServerPorts {
					if err := c.StartServer(strconv.Itoa(i), port); err != nil {
						t.Fatal(err)
					}
					if err := c.WaitServerReady(ctx, i); err != nil {
						t.Fatal(err)
					}
				}
			}
			got := d.getModel(2)
			if rel := fedAvgError(got, uploads[1:], []*testDevice{d}); rel > 1e-6 || math.IsNaN(rel) {
				t.Fatalf("iteration 2's model is %g (relative) from the device's update", rel)
			}
			if tc.withServers {
				// Iteration 3, the job's last, failed: its model is 2's.
				if !slices.Equal(d.getModel(3), got) {
					t.Fatal("the failed iteration 3's model is not iteration 2's")
				}
				if r := awaitRecords(t, metrics, 3)[3]; r.IterationResult == record.ResultSuccess || !strings.Contains(r.FailReason, "did not come back") {
					t.Fatalf("iteration 3's record: %+v", r)
				}
			} else {
				if _, up := d.round(3); up == nil {
					t.FailNow()
				}
				if d.getModel(3) == nil {
					t.FailNow()
				}
			}
			want := []uint64{1, 2, 3}
			awaitRecords(t, metrics, want...)
			b, err := os.ReadFile(metrics)
			if err != nil {
				t.Fatal(err)
			}
			var its []uint64
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				var r record.Record
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatalf("metrics.json line %q: %v", line, err)
				}
				its = append(its, r.CurrentIteration)
			}
			if !slices.Equal(its, want) {
				t.Fatalf("metrics.json records iterations %v, want %v", its, want)
			}
			// The restarted scheduler's /records (the dashboard's source)
			// goes on with the job's history.
			var rs []record.Record
			if err := local.GetJSON(ctx, c.ManageURL()+"/records", &rs); err != nil {
				t.Fatal(err)
			}
			its = its[:0]
			for _, r := range rs {
				its = append(its, r.CurrentIteration)
			}
			if !slices.Equal(its, want) {
				t.Fatalf("/records after the restart: iterations %v, want %v", its, want)
			}
		})
	}
}

// TestWholeClusterRestart: the scheduler and both servers go down
// together in the middle of a round, as when a host reboots, and start
// again. Two devices were told SUCCEED for updates that, at the moment
// the processes died, the saved state counted (a clean stop's save) or
// did not (the last periodic save came before them).
//   - Uncounted, nobody can count them again, and their devices wait for
//     the round's model without sending again: the restarted cluster fails
//     the round at once, and they get its model, the previous one, as for
//     any failed iteration.
//   - Counted, they are known lost with the servers' partial sums: they
//     stay counted, the third device fills the round, and the model is its
//     update alone.
//
// Either way, the next round runs with every device.
func TestWholeClusterRestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		clean bool // the scheduler stops cleanly (SIGTERM) and saves as it goes
	}{
		{name: "after the last periodic save"},
		{name: "after a clean stop", clean: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, recovery, metrics := startRecoveryCluster(t, 2, 3, nil)
			restoreReady := keepSavedState(t, recovery)
			devs := pinnedDevices(t, c, 3)
			served := make([][]float32, 2)
			uploads := make([][]float32, 3)
			for i := range 2 {
				if served[i], uploads[i] = devs[i].round(1); served[i] == nil {
					t.FailNow()
				}
			}
			for _, id := range []string{"0", "1"} {
				if err := c.Kill(id, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			if tc.clean {
				if err := c.Kill("scheduler", syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			} else {
				if err := c.Kill("scheduler", syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				restoreReady()
			}
			if err := c.StartScheduler(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i, port := range c.ServerPorts {
				if err := c.StartServer(strconv.Itoa(i), port); err != nil {
					t.Fatal(err)
				}
				if err := c.WaitServerReady(ctx, i); err != nil {
					t.Fatal(err)
				}
			}
			if tc.clean {
				if _, uploads[2] = devs[2].round(1); uploads[2] == nil {
					t.FailNow()
				}
				for _, d := range devs {
					got := d.getModel(1)
					if rel := fedAvgError(got, uploads[2:], devs[2:]); rel > 1e-6 || math.IsNaN(rel) {
						t.Fatalf("device %s got an iteration-1 model %g (relative) from the surviving update", d.id, rel)
					}
				}
				if rec := awaitRecords(t, metrics, 1)[1]; rec.IterationResult != record.ResultSuccess || rec.Lost != 2 || rec.Updated != 1 {
					t.Fatalf("iteration 1's record: %+v", rec)
				}
			} else {
				for i, d := range devs[:2] {
					if got := d.getModel(1); !slices.Equal(got, served[i]) {
						t.Fatalf("device %s: the failed iteration 1's model is not the one it trained on", d.id)
					}
				}
				if rec := awaitRecords(t, metrics, 1)[1]; rec.IterationResult == record.ResultSuccess || !strings.Contains(rec.FailReason, "did not come back") {
					t.Fatalf("iteration 1's record: %+v", rec)
				}
			}
			for i, d := range devs {
				if _, uploads[i] = d.round(2); uploads[i] == nil {
					t.FailNow()
				}
			}
			for _, d := range devs {
				if rel := fedAvgError(d.getModel(2), uploads, devs); rel > 1e-6 || math.IsNaN(rel) {
					t.Fatalf("device %s got an iteration-2 model %g (relative) from the FedAvg of all 3 updates", d.id, rel)
				}
			}
			if rec := awaitRecords(t, metrics, 2)[2]; rec.IterationResult != record.ResultSuccess || rec.Lost != 0 || rec.Updated != 3 {
				t.Fatalf("iteration 2's record: %+v", rec)
			}
		})
	}
}

// pinnedDevices returns n LeNet devices of different data sizes and
// seeds, device i pinned to server i mod the cluster's servers.
func pinnedDevices(t *testing.T, c *local.Cluster, n int) []*testDevice {
	devs := make([]*testDevice, n)
	for i := range devs {
		devs[i] = lenetDevice(t, c, "dev-"+strconv.Itoa(i))
		devs[i].size = int32(10 + 7*i)
		devs[i].rng = rand.New(rand.NewPCG(uint64(i), 7))
		devs[i].pinned, devs[i].server = true, i%len(c.ServerPorts)
	}
	return devs
}

// keepSavedState copies the scheduler's saved state (both generations)
// and returns a function that puts the copy back, as if the scheduler had
// died before saving anything since.
func keepSavedState(t *testing.T, recovery string) (restore func()) {
	t.Helper()
	saved := map[string][]byte{}
	for _, p := range []string{recovery, recovery + ".1"} {
		if b, err := os.ReadFile(p); err == nil {
			saved[p] = b
		}
	}
	if len(saved) == 0 {
		t.Fatal("no recovery file written")
	}
	return func() {
		t.Helper()
		for _, p := range []string{recovery, recovery + ".1"} {
			os.Remove(p)
			if b, ok := saved[p]; ok {
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}
