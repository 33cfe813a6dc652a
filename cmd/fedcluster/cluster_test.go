package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/local"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
	"github.com/fedcluster/fedcluster/wire/rest"
)

func nodes(t *testing.T, c *local.Cluster) map[string]rest.NodeInfo {
	t.Helper()
	var n rest.Nodes
	if err := local.GetJSON(context.Background(), c.ManageURL()+"/nodes", &n); err != nil {
		t.Fatal(err)
	}
	if n.Code != 0 || n.Message != "Get nodes info successful." {
		t.Fatalf("/nodes header %+v", n)
	}
	out := map[string]rest.NodeInfo{}
	for _, e := range n.NodeIDs {
		out[e.Role+"/"+e.NodeID] = e
	}
	return out
}

func waitNode(t *testing.T, c *local.Cluster, id, alive, rank string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := local.Poll(ctx, func() (bool, error) {
		e, ok := nodes(t, c)["SERVER/"+id]
		return ok && e.Alive == alive && e.RankID == rank, nil
	})
	if err != nil {
		t.Fatalf("server %s never became alive=%s rank=%s: %v (nodes %v)", id, alive, rank, err, nodes(t, c))
	}
}

func TestClusterMembership(t *testing.T) {
	c := startCluster(t, 4, "--heartbeat_interval=100ms", "--heartbeat_timeout=1s")
	got := nodes(t, c)
	if len(got) != 5 {
		t.Fatalf("/nodes lists %d entries, want 4 servers and the scheduler: %v", len(got), got)
	}
	ranks := map[string]bool{}
	for i := 0; i < 4; i++ {
		e, ok := got["SERVER/"+strconv.Itoa(i)]
		if !ok || e.Alive != "true" {
			t.Fatalf("server %d missing or dead: %v", i, got)
		}
		ranks[e.RankID] = true
	}
	if len(ranks) != 4 || !ranks["0"] || !ranks["3"] {
		t.Fatalf("ranks are not 0..3: %v", got)
	}
	if s := got["SCHEDULER/20"]; s.Alive != "true" || s.RankID != "0" {
		t.Fatalf("scheduler entry %+v", s)
	}

	// Every server answers /status with its identity.
	var st struct {
		NodeID       string `json:"node_id"`
		Rank         int    `json:"rank"`
		ClusterState string `json:"cluster_state"`
	}
	if err := local.GetJSON(context.Background(), c.ServerURL(1)+"/status", &st); err != nil {
		t.Fatal(err)
	}
	if st.NodeID != "1" || strconv.Itoa(st.Rank) != got["SERVER/1"].RankID || st.ClusterState != "CLUSTER_READY" {
		t.Fatalf("/status %+v", st)
	}

	// kill -9 a server: dead after the heartbeat timeout, NODE_TIMEOUT.
	rank := got["SERVER/2"].RankID
	if err := c.Kill("2", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNode(t, c, "2", "false", rank)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitState(ctx, "NODE_TIMEOUT"); err != nil {
		t.Fatal(err)
	}
	// Restarted with the same node id: alive again with its old rank.
	if err := c.StartServer("2", c.ServerPorts[2]); err != nil {
		t.Fatal(err)
	}
	waitNode(t, c, "2", "true", rank)
	if err := c.WaitState(ctx, "CLUSTER_READY"); err != nil {
		t.Fatal(err)
	}
}

// A scale-out whose servers do not all come is rolled back with the ones
// that did, and a server gone for good is scaled in while the cluster waits
// for it (NODE_TIMEOUT): the cluster is ready again either way.
func TestScaleOutRollbackAndDeadServerScaleIn(t *testing.T) {
	c := startCluster(t, 2, "--heartbeat_interval=100ms", "--heartbeat_timeout=1s")
	post := func(path, body, want string) {
		t.Helper()
		resp, err := http.Post(c.ManageURL()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m rest.Message
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 || m.Code != 0 || m.Message != want {
			t.Fatalf("POST %s: %d %+v %v, want %q", path, resp.StatusCode, m, err, want)
		}
	}
	waitReady := func(servers int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var st rest.State
		err := local.Poll(ctx, func() (bool, error) {
			err := local.GetJSON(ctx, c.ManageURL()+"/state", &st)
			return err == nil && st.ClusterState == "CLUSTER_READY" && st.ServerNum == servers, nil
		})
		if err != nil {
			t.Fatalf("never ready with %d servers: %v (last /state %+v)", servers, err, st)
		}
	}

	post("/scaleout", `{"worker_num":0,"server_num":2}`, "Cluster begin to scale out.")
	port, err := local.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StartServer("new", port[0], "--server_num=4"); err != nil {
		t.Fatal(err)
	}
	waitNode(t, c, "new", "true", "2")
	var st rest.State
	if err := local.GetJSON(context.Background(), c.ManageURL()+"/state", &st); err != nil || st.ClusterState != "CLUSTER_SCALE_OUT" {
		t.Fatalf("one of two new servers registered: %+v, %v", st, err)
	}
	post("/scaleoutRollback", "", "Cluster scale out rollback success.")
	waitReady(3)

	if err := c.Kill("1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitState(ctx, "NODE_TIMEOUT"); err != nil {
		t.Fatal(err)
	}
	post("/scalein", `{"node_ids":["1"]}`, "Cluster begin to scale in.")
	waitReady(2)
	got := nodes(t, c)
	if got["SERVER/0"].RankID != "0" || got["SERVER/new"].RankID != "1" || got["SERVER/new"].Alive != "true" {
		t.Fatalf("after scaling in the dead server /nodes lists %v", got)
	}
}

func TestRESTErrors(t *testing.T) {
	c := startCluster(t, 1)
	f := func(method, path, body string, wantStatus int, wantMsg string) {
		t.Helper()
		req, _ := http.NewRequest(method, c.ManageURL()+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e rest.Error
		json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode != wantStatus || e.Code != 1 || !strings.Contains(e.ErrorMessage, wantMsg) {
			t.Fatalf("%s %s %q: %d %+v, want %d with %q", method, path, body, resp.StatusCode, e, wantStatus, wantMsg)
		}
	}
	f("GET", "/nope", "", 404, "no such endpoint")
	f("DELETE", "/nodes", "", 405, "not allowed")
	f("GET", "/scaleout", "", 405, "not allowed")
	f("POST", "/scaleout", "not json", 400, "Illegal JSON format")
	f("POST", "/scaleout", `{"worker_num":0}`, 400, "The json is not contain the key:server_num")
	f("POST", "/scaleout", `{"worker_num":0,"server_num":"2"}`, 400, "server_num")
	f("POST", "/scaleout", `{"worker_num":0,"server_num":2,"extra":1}`, 400, "unknown field")
	f("POST", "/scaleout", `{"worker_num":1,"server_num":2}`, 400, "The Worker does not currently support scale out.")
	f("POST", "/scaleout", `{"worker_num":0,"server_num":-1}`, 400, "The value should not be less than 0.")
	f("POST", "/scaleout", `{"worker_num":0,"server_num":99999999999}`, 400, "from 1 to over 4096 servers")
	f("POST", "/scaleout", `{"worker_num":0,"server_num":4096}`, 400, "from 1 to over 4096 servers")
	f("GET", "/records?n=abc", "", 400, "n must be a positive integer")
	f("GET", "/records?n=-5", "", 400, "n must be a positive integer")
	f("GET", "/records?n=0", "", 400, "n must be a positive integer")
	f("POST", "/scalein", `{"node_ids":[]}`, 400, "The node ids should not be empty.")
	f("POST", "/scalein", `{"node_ids":["x"]}`, 400, "The node id:x is illegal.")
	f("POST", "/scaleoutRollback", "", 400, "The cluster state is not CLUSTER_SCALE_OUT, does not need to rollback.")
}

// TestLaunchAndStop drives the seed's workflow: launch the scheduler, launch
// the servers on a port range, see them ready, stop everything.
func TestLaunchAndStop(t *testing.T) {
	ports, err := local.FreePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	// Servers need 4 consecutive ports: find a free run above the first one.
	base := ports[2]
	for {
		free, err := local.FreePorts(1)
		if err != nil {
			t.Fatal(err)
		}
		if consecutiveFree(base, 4) {
			break
		}
		base = free[0]
	}
	dir := t.TempDir()
	env := append(os.Environ(), "FEDCLUSTER_RUN_DIR="+filepath.Join(dir, "run"))
	common := []string{"--scheduler_ip=127.0.0.1", "--scheduler_port=" + strconv.Itoa(ports[0]),
		"--scheduler_manage_port=" + strconv.Itoa(ports[1]), "--server_num=4", "--heartbeat_interval=200ms", "--heartbeat_timeout=2s"}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("fedcluster %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			run("stop", "--scheduler_port="+strconv.Itoa(ports[0]))
		}
	})
	run(append([]string{"launch", "scheduler"}, common...)...)
	out := run(append([]string{"launch", "server", "--fl_server_port=" + strconv.Itoa(base), "--start_fl_job_threshold=8"}, common...)...)
	if n := strings.Count(out, "launched server"); n != 4 {
		t.Fatalf("launch started %d servers:\n%s", n, out)
	}
	c := &local.Cluster{ManagePort: ports[1]}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitState(ctx, "CLUSTER_READY"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		// A server logs the start line once the scheduler's ready view
		// reaches it, which can be a moment after /state says ready.
		var log []byte
		err := local.Poll(ctx, func() (bool, error) {
			b, err := os.ReadFile(filepath.Join(dir, "server_"+strconv.Itoa(i), "server.log"))
			log = b[:bytes.LastIndexByte(b, '\n')+1] // complete lines
			return bytes.Contains(log, []byte("Server started successfully.")), err
		})
		if err != nil {
			t.Fatalf("server_%d/server.log lacks the start line (%v):\n%s", i, err, log)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(log)), "\n") {
			if !strings.Contains(line, `"node_id": "`+strconv.Itoa(i)+`"`) || !strings.Contains(line, `"rank": `) {
				t.Fatalf("server_%d log line without its node id and rank: %s", i, line)
			}
		}
	}
	// A server that died comes back by launching its node id alone, on
	// its port: the same rank, and the same log folder.
	rank := nodes(t, c)["SERVER/2"].RankID
	var pid2 int
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 3 && strings.HasPrefix(line, "launched server node_id=2 ") {
			pid2, _ = strconv.Atoi(strings.TrimPrefix(f[3], "pid="))
		}
	}
	if pid2 == 0 || syscall.Kill(pid2, syscall.SIGKILL) != nil {
		t.Fatalf("cannot kill server 2 (pid %d) from the launch output:\n%s", pid2, out)
	}
	waitNode(t, c, "2", "false", rank)
	out = run(append([]string{"launch", "server", "--fl_server_port=" + strconv.Itoa(base+2), "--start_fl_job_threshold=8", "--node_id=2", "--local_server_num=1"}, common...)...)
	if !strings.Contains(out, "launched server node_id=2 ") || !strings.Contains(out, "log=server_2/server.log") {
		t.Fatalf("relaunch:\n%s", out)
	}
	waitNode(t, c, "2", "true", rank)
	out = run("stop", "--scheduler_port="+strconv.Itoa(ports[0]))
	stopped = true
	var pids []int
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "killed "); ok {
			pid, err := strconv.Atoi(p)
			if err != nil {
				t.Fatalf("bad line %q", sc.Text())
			}
			pids = append(pids, pid)
		}
	}
	if len(pids) != 5 || !strings.HasSuffix(strings.TrimSpace(out), "The services are stopped successfully.") {
		t.Fatalf("stop output:\n%s", out)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Fatalf("process %d still runs after stop", pid)
		}
	}
	// Stopping again finds nothing and says where it looked.
	out = run("stop", "--scheduler_port="+strconv.Itoa(ports[0]))
	if strings.Contains(out, "killed ") || !strings.Contains(out, "no running process is registered for scheduler port "+strconv.Itoa(ports[0])) {
		t.Fatalf("second stop's output:\n%s", out)
	}
}

func consecutiveFree(base, n int) bool {
	for p := base; p < base+n; p++ {
		l, err := (&net_listener{}).listen(p)
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// TestObservability: the scheduler serves Prometheus metrics and its
// dashboard, every server its own metrics.
func TestObservability(t *testing.T) {
	c := startCluster(t, 1)
	f := func(url, want string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("GET %s: %d, body lacks %q:\n%.500s", url, resp.StatusCode, want, b)
		}
	}
	f(c.ManageURL()+"/metrics", `fedcluster_cluster_ready{node_id="20"} 1`)
	f(c.ManageURL()+"/", "<title>fedcluster</title>")
	f(c.ManageURL()+"/records", "[")
	f(c.ServerURL(0)+"/metrics", "fedcluster_iteration{node_id=\"0\"} 1")
}

// TestSchedulerAdoptsServerRounds: the seed passes start_fl_job_threshold
// and friends to run_server only; a scheduler started without them takes
// the servers'.
func TestSchedulerAdoptsServerRounds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := local.Start(ctx, local.Options{Binary: binary, Dir: t.TempDir(), Servers: 2,
		ServerArgs: func(int) []string {
			return []string{"--start_fl_job_threshold=8", "--fl_iteration_num=7", "--client_learning_rate=0.05"}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	var q struct {
		Code   int `json:"code"`
		Result struct {
			Threshold  int     `json:"start_fl_job_threshold"`
			Iterations int     `json:"fl_iteration_num"`
			LR         float64 `json:"client_learning_rate"`
		} `json:"result"`
	}
	if err := local.GetJSON(ctx, c.ManageURL()+"/queryInstance", &q); err != nil {
		t.Fatal(err)
	}
	if q.Code != 0 || q.Result.Threshold != 8 || q.Result.Iterations != 7 || q.Result.LR != 0.05 {
		t.Fatalf("/queryInstance %+v: the scheduler did not adopt the servers' round parameters", q)
	}
}

// TestInstanceCommands: disable refuses devices until enabled, and a new
// instance's hyper-parameters show in /queryInstance.
func TestInstanceCommands(t *testing.T) {
	c := startCluster(t, 2, "--start_fl_job_threshold=2", "--fl_iteration_num=3")
	post := func(path, body string, want int) string {
		t.Helper()
		resp, err := http.Post(c.ManageURL()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("POST %s: %d %s, want %d", path, resp.StatusCode, b, want)
		}
		return string(b)
	}
	state := func() rest.State {
		var st rest.State
		local.GetJSON(context.Background(), c.ManageURL()+"/state", &st)
		return st
	}
	d := &testDevice{t: t, c: c, layout: model.LeNet5Layout(), id: "d", size: 1, rng: rand.New(rand.NewPCG(1, 1)), b: flatbuffers.NewBuilder(0)}
	startJob := func() string {
		return string(d.post("/startFLJob", flmsg.BuildRequestFLJob(d.b, &flmsg.FLJobArgs{FLName: "LeNet", FLID: "d", DataSize: 1, Timestamp: now()})))
	}
	post("/enableFLS", "", 400) // not disabled
	post("/disableFLS", "", 200)
	post("/disableFLS", "", 400)
	if st := state(); st.ClusterState != "CLUSTER_DISABLE_FLS" || st.Instance != "disable" {
		t.Fatalf("after /disableFLS: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Every server learns it: a device is refused with the plain text.
	if err := local.Poll(ctx, func() (bool, error) { return startJob() == flmsg.BodyJobDisabled, nil }); err != nil {
		t.Fatalf("devices still admitted while disabled: %v", err)
	}
	post("/enableFLS", "", 200)
	if err := local.Poll(ctx, func() (bool, error) {
		r, err := flmsg.DecodeResponseFLJob([]byte(startJob()))
		return err == nil && r.Retcode == flmsg.Succeed, nil
	}); err != nil {
		t.Fatalf("devices not admitted after /enableFLS: %v", err)
	}
	if !strings.Contains(post("/newInstance", `{"fl_iteration_num": 9, "client_learning_rate": 0.2}`, 200), "Start new instance successful.") {
		t.Fatal("newInstance message")
	}
	post("/newInstance", `{"update_model_ratio": 2}`, 400)
	post("/newInstance", `{"no_such_key": 1}`, 400)
	var q struct {
		Result struct {
			Iterations int     `json:"fl_iteration_num"`
			LR         float64 `json:"client_learning_rate"`
		} `json:"result"`
	}
	if err := local.GetJSON(ctx, c.ManageURL()+"/queryInstance", &q); err != nil {
		t.Fatal(err)
	}
	// An iteration is running (one device admitted): the new values apply
	// from the next one; /queryInstance shows the ones in force.
	if q.Result.Iterations != 3 {
		t.Fatalf("/queryInstance during the iteration: %+v", q.Result)
	}
}

// TestServerJoiningDuringAnAggregationReports: the scheduler counts a new
// server in as soon as it registers, so the server can be ordered to
// aggregate while it still catches up (fetching the current model from a
// peer). Its report must reach the scheduler all the same, or the
// iteration waits for the aggregation timeout (30 s) and fails.
func TestServerJoiningDuringAnAggregationReports(t *testing.T) {
	c := startCluster(t, 1, "--start_fl_job_threshold=1", "--fl_iteration_num=10",
		"--heartbeat_interval=200ms", "--heartbeat_timeout=5s")
	d := lenetDevice(t, c, "dev-0")
	resp, err := http.Post(c.ManageURL()+"/scaleout", "application/json", strings.NewReader(`{"worker_num":0,"server_num":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	port, err := local.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FEDCLUSTER_FAULT_REGISTER_DELAY", "2s") // for the new server only
	if err := c.StartServer("new", port[0], "--server_num=2"); err != nil {
		t.Fatal(err)
	}
	waitNode(t, c, "new", "true", "1")
	// The new server is registered with the scheduler and still busy with
	// its catch-up: the iteration's one update starts an aggregation of
	// both servers.
	served, _ := d.round(1)
	if served == nil {
		t.FailNow()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st rest.State
	err = local.Poll(ctx, func() (bool, error) {
		err := local.GetJSON(ctx, c.ManageURL()+"/state", &st)
		return err == nil && st.Iteration >= 2, nil
	})
	if err != nil {
		t.Fatalf("iteration 1 did not end: %v (last /state %+v)", err, st)
	}
	// Valid, not failed: the model is the update's, not iteration 0's again.
	if m := d.getModel(1); m == nil || equal(m, served) {
		t.Fatal("iteration 1 stored the model it started from: it failed")
	}
}

// TestStartReportsAnExitedProcess: a cluster whose processes refuse their
// configuration fails local.Start with the reason they printed, not with a
// timeout.
func TestStartReportsAnExitedProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := local.Start(ctx, local.Options{Binary: binary, Dir: t.TempDir(), Servers: 1, Args: []string{"--start_fl_job_threshold=0"}})
	if err == nil {
		c.Stop()
		t.Fatal("a cluster with start_fl_job_threshold = 0 started")
	}
	if !strings.Contains(err.Error(), "exited during start") || !strings.Contains(err.Error(), "start_fl_job_threshold = 0") {
		t.Fatalf("Start: %v, want the process's exit and its reason", err)
	}
	t.Log(err)
}

// TestServersCannotShareACheckpointDir: a second server given the first's
// checkpoint_dir exits at start and says which key to change, instead of
// removing the first one's checkpoints as it retires its own.
func TestServersCannotShareACheckpointDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	shared := filepath.Join(dir, "checkpoints")
	c, err := local.Start(ctx, local.Options{Binary: binary, Dir: dir, Servers: 2,
		ServerArgs: func(int) []string { return []string{"--checkpoint_dir=" + shared} }})
	if err == nil {
		c.Stop()
		t.Fatal("two servers started on one checkpoint_dir")
	}
	if !strings.Contains(err.Error(), "exited during start") {
		t.Fatalf("Start: %v, want a server's exit", err)
	}
	// Whichever came second logged why.
	var logs string
	for _, id := range []string{"0", "1"} {
		b, _ := os.ReadFile(filepath.Join(dir, "server_"+id, "server.log"))
		logs += string(b)
	}
	if !strings.Contains(logs, "is in use by another process") || !strings.Contains(logs, "give each server its own checkpoint_dir") {
		t.Fatalf("Start: %v; no server logged the shared checkpoint_dir:\n%s", err, logs)
	}
}
