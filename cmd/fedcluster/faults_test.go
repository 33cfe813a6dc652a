package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/device/sim"
	"github.com/fedcluster/fedcluster/node/local"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
	"github.com/fedcluster/fedcluster/node/record"
	"github.com/fedcluster/fedcluster/wire/flmsg"
	"github.com/fedcluster/fedcluster/wire/rest"
)

const faultDevices = 32

// faultIterations is 20, or FEDCLUSTER_FAULT_ITERATIONS for soak runs.
var faultIterations = func() uint64 {
	if n, err := strconv.ParseUint(os.Getenv("FEDCLUSTER_FAULT_ITERATIONS"), 10, 32); err == nil && n > 0 {
		return n
	}
	return 20
}()

// faultRun is a load run of 32 devices for 20 iterations against a real
// cluster, with the checks every fault scenario ends with.
type faultRun struct {
	t       *testing.T
	c       *local.Cluster
	spare   []int // ports for servers started later
	summary *sim.Summary
	simErr  error
	done    chan struct{}
}

func startFaultRun(t *testing.T, servers, spare int, opts ...func(*local.Options)) *faultRun {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	os.WriteFile(cfg, []byte(`{"recovery": {"storage_type": 1, "storge_file_path": "`+filepath.Join(dir, "recovery.json")+`"},
		"metrics": {"storage_type": 1, "storage_file_path": "`+filepath.Join(dir, "metrics.json")+`"}}`), 0o644)
	o := local.Options{Binary: binary, Dir: dir, Servers: servers, Args: []string{
		"--config_file_path=" + cfg,
		"--start_fl_job_threshold=16", "--fl_iteration_num=" + strconv.FormatUint(faultIterations, 10),
		"--start_fl_job_time_window=3000", "--update_model_time_window=3000",
		"--heartbeat_interval=200ms", "--heartbeat_timeout=2s", "--checkpoint_keep=" + strconv.FormatUint(faultIterations, 10), // every iteration checked below
	}}
	for _, f := range opts {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := local.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	r := &faultRun{t: t, c: c, done: make(chan struct{})}
	if spare > 0 {
		if r.spare, err = local.FreePorts(spare); err != nil {
			t.Fatal(err)
		}
	}
	var urls []string
	for _, p := range append(append([]int(nil), c.ServerPorts...), r.spare...) {
		urls = append(urls, "http://127.0.0.1:"+strconv.Itoa(p))
	}
	scfg := sim.DefaultConfig(faultDevices, urls)
	scfg.Mode = sim.ModeLoad
	scfg.Evaluate = false
	// Every exchange of every device, kept with the logs
	// (FEDCLUSTER_KEEP_LOGS): why a round waited is in there.
	trace, err := os.Create(filepath.Join(dir, "devices.trace.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	scfg.Trace = trace
	runCtx, stopSim := context.WithTimeout(context.Background(), 3*time.Minute+time.Duration(faultIterations)*time.Second)
	go func() {
		defer close(r.done)
		r.summary, r.simErr = sim.Run(runCtx, scfg)
		if err := trace.Close(); err != nil && r.simErr == nil {
			r.simErr = err
		}
	}()
	t.Cleanup(func() {
		stopSim()
		<-r.done
		c.Stop()
		for _, rep := range c.Reports() {
			t.Errorf("a cluster process reported:\n%s", rep)
		}
		if keep := os.Getenv("FEDCLUSTER_KEEP_LOGS"); keep != "" {
			dst := filepath.Join(keep, t.Name())
			os.RemoveAll(dst)
			os.CopyFS(dst, os.DirFS(dir))
			t.Logf("logs kept in %s", dst)
		}
	})
	return r
}

func (r *faultRun) state() rest.State {
	var st rest.State
	local.GetJSON(context.Background(), r.c.ManageURL()+"/state", &st)
	return st
}

// waitFor polls the scheduler's /state until cond holds.
func (r *faultRun) waitFor(what string, cond func(rest.State) bool) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := local.Poll(ctx, func() (bool, error) { return cond(r.state()), nil }); err != nil {
		r.t.Fatalf("waiting for %s: %v (state %+v)", what, err, r.state())
	}
}

func (r *faultRun) nodes() []rest.NodeInfo {
	var n rest.Nodes
	local.GetJSON(context.Background(), r.c.ManageURL()+"/nodes", &n)
	return n.NodeIDs
}

func (r *faultRun) post(path, body string) {
	r.t.Helper()
	resp, err := http.Post(r.c.ManageURL()+path, "application/json", strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		r.t.Fatalf("POST %s %s: %d %s", path, body, resp.StatusCode, b)
	}
}

// serverOfRank returns the node id holding rank.
func (r *faultRun) serverOfRank(rank string) string {
	for _, n := range r.nodes() {
		if n.Role == "SERVER" && n.RankID == rank && n.Alive == "true" {
			return n.NodeID
		}
	}
	r.t.Fatalf("no live server has rank %s: %v", rank, r.nodes())
	return ""
}

// finish waits for the devices to finish the job and checks the run:
// every iteration accounted for, every acknowledged update aggregated or
// recorded lost, one model per iteration on every server that holds it.
func (r *faultRun) finish(live []string) (failed int) {
	t := r.t
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(3*time.Minute + time.Duration(faultIterations)*time.Second):
		t.Fatalf("devices did not finish; state %+v", r.state())
	}
	if r.simErr != nil {
		t.Fatalf("devices: %v", r.simErr)
	}
	recs := r.records()
	for it := uint64(1); it <= faultIterations; it++ {
		rec := recs[it]
		if rec.IterationResult != record.ResultSuccess {
			failed++
			if rec.FailReason == "" {
				t.Fatalf("iteration %d failed without a reason", it)
			}
			t.Logf("iteration %d failed: %s", it, rec.FailReason)
			continue
		}
		var acked int
		for _, row := range r.summary.Iterations {
			if uint64(row.Iteration) == it {
				acked = row.Uploaded
			}
		}
		if uint64(acked) > rec.Updated+rec.Lost {
			t.Fatalf("iteration %d: devices got SUCCEED for %d updates, the record has %d aggregated + %d lost", it, acked, rec.Updated, rec.Lost)
		}
		if rec.Lost > 0 {
			t.Logf("iteration %d: %d updates recorded lost", it, rec.Lost)
		}
		held := 0
		for _, id := range live {
			b, err := os.ReadFile(filepath.Join(r.c.Dir(), "server_"+id, "checkpoints", fmt.Sprintf("LeNet_iteration_%d.safetensors", it)))
			if err != nil {
				continue // a server that was down then holds no checkpoint of it
			}
			_, meta, err := modelstore.Decode(b, model.LeNet5Layout())
			if err != nil {
				t.Fatalf("server %s checkpoint %d: %v", id, it, err)
			}
			if meta.SHA256 != rec.ModelSHA256 {
				t.Fatalf("iteration %d: server %s holds model %s, the cluster agreed on %s", it, id, meta.SHA256, rec.ModelSHA256)
			}
			held++
		}
		if held == 0 {
			t.Fatalf("iteration %d: no live server holds its model", it)
		}
	}
	t.Logf("%d of %d iterations failed; %s", failed, faultIterations, r.summaryLine())
	return failed
}

func (r *faultRun) summaryLine() string {
	return fmt.Sprintf("%.0f device-iterations/s over %s", r.summary.DeviceIterationsPerSec(), r.summary.Elapsed.Round(time.Millisecond))
}

// records reads metrics.json once it holds a record of every iteration of
// the run, keeping the last record of each.
func (r *faultRun) records() map[uint64]record.Record {
	its := make([]uint64, faultIterations)
	for i := range its {
		its[i] = uint64(i + 1)
	}
	return awaitRecords(r.t, filepath.Join(r.c.Dir(), "metrics.json"), its...)
}

// awaitRecords reads metrics.json, keeping the last record of each
// iteration, once it holds a record of each of its: the scheduler writes
// an iteration's record right after telling the servers that it ended,
// so a device can hold the iteration's model a moment before the record
// is there.
func awaitRecords(t *testing.T, path string, its ...uint64) map[uint64]record.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out map[uint64]record.Record
	err := local.Poll(ctx, func() (bool, error) {
		var err error
		if out, err = readRecords(path); err != nil {
			return false, err
		}
		for _, it := range its {
			if _, ok := out[it]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("metrics.json, waiting for the records of iterations %v (it has %d): %v", its, len(out), err)
	}
	return out
}

// readRecords reads the complete lines of metrics.json: the last may be
// still being written.
func readRecords(path string) (map[uint64]record.Record, error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	out := map[uint64]record.Record{}
	for {
		line, rest, ok := bytes.Cut(b, []byte("\n"))
		if !ok {
			return out, nil
		}
		b = rest
		var rec record.Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return nil, fmt.Errorf("metrics.json line %q: %w", line, err)
		}
		out[rec.CurrentIteration] = rec
	}
}

func ids(n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

func TestScaleOutAndIn(t *testing.T) {
	r := startFaultRun(t, 4, 2)
	r.waitFor("iteration 3", func(s rest.State) bool { return s.Iteration >= 3 })
	r.post("/scaleout", `{"worker_num":0,"server_num":2}`)
	for i, port := range r.spare {
		if err := r.c.StartServer(strconv.Itoa(4+i), port, "--server_num=6"); err != nil {
			t.Fatal(err)
		}
	}
	r.waitFor("6 servers ready", func(s rest.State) bool { return s.ClusterState == "CLUSTER_READY" && s.ServerNum == 6 })
	at := r.state().Iteration
	r.waitFor("an iteration with 6 servers", func(s rest.State) bool { return s.Iteration >= at+2 })
	// Scale in rank 0 and two others: 3 servers remain, ranks packed.
	gone := []string{r.serverOfRank("0"), r.serverOfRank("2"), r.serverOfRank("4")}
	r.post("/scalein", `{"node_ids":["`+strings.Join(gone, `","`)+`"]}`)
	r.waitFor("3 servers ready", func(s rest.State) bool { return s.ClusterState == "CLUSTER_READY" && s.ServerNum == 3 })
	ranks := map[string]bool{}
	var live []string
	for _, n := range r.nodes() {
		if n.Role == "SERVER" {
			ranks[n.RankID] = true
			live = append(live, n.NodeID)
		}
	}
	if len(live) != 3 || !ranks["0"] || !ranks["1"] || !ranks["2"] {
		t.Fatalf("after scale-in /nodes lists %v", r.nodes())
	}
	for _, id := range gone {
		if r.c.Exited(id) {
			t.Fatalf("scaled-in server %s exited by itself; it must wait for SIGTERM", id)
		}
		// Its /status no longer claims the rank another server holds now.
		var st struct {
			Rank     int  `json:"rank"`
			ScaledIn bool `json:"scaled_in"`
		}
		i, _ := strconv.Atoi(id)
		port := append(append([]int(nil), r.c.ServerPorts...), r.spare...)[i]
		if err := local.GetJSON(context.Background(), "http://127.0.0.1:"+strconv.Itoa(port)+"/status", &st); err != nil || st.Rank != -1 || !st.ScaledIn {
			t.Fatalf("scaled-in server %s's /status: %+v %v", id, st, err)
		}
		if err := r.c.Kill(id, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	r.finish(live)
	// Scaling is graceful: a server leaves at an iteration's end, after
	// its aggregation, and takes no update of the next one with it.
	for it, rec := range r.records() {
		if rec.Lost > 0 {
			t.Errorf("iteration %d lost %d updates while the cluster scaled", it, rec.Lost)
		}
	}
}

func TestKillRankZeroDuringUpdates(t *testing.T) {
	r := startFaultRun(t, 4, 0)
	r.waitFor("updates counted in iteration 4", func(s rest.State) bool { return s.Iteration >= 4 && s.Updated > 0 && s.Phase == "collecting" })
	victim := r.serverOfRank("0")
	if err := r.c.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	at := r.state().Iteration
	r.waitFor("training to go on without it", func(s rest.State) bool { return s.Iteration >= at+1 })
	i, _ := strconv.Atoi(victim)
	if err := r.c.StartServer(victim, r.c.ServerPorts[i]); err != nil {
		t.Fatal(err)
	}
	r.waitFor("the restarted server back", func(s rest.State) bool { return s.ClusterState == "CLUSTER_READY" })
	if got := r.serverOfRank("0"); got != victim {
		t.Fatalf("restarted server %s did not get rank 0 back (rank 0 is %s)", victim, got)
	}
	// It serves the current model within 2 s of registering.
	r.waitFor("its model", func(rest.State) bool {
		var st struct {
			ModelIteration uint64 `json:"model_iteration"`
		}
		local.GetJSON(context.Background(), r.c.ServerURL(i)+"/status", &st)
		return st.ModelIteration+1 >= r.state().Iteration
	})
	r.finish(ids(4))
}

func TestKillServerDuringAllReduce(t *testing.T) {
	r := startFaultRun(t, 4, 0, func(o *local.Options) {
		// Held long enough to be caught aggregating in iterations 3-6;
		// the rest of the job runs at full speed.
		o.Env = append(o.Env, "FEDCLUSTER_FAULT_ALLREDUCE_DELAY=300ms", "FEDCLUSTER_FAULT_ALLREDUCE_UNTIL=6")
	})
	r.waitFor("aggregating iteration 3", func(s rest.State) bool { return s.Iteration >= 3 && s.Iteration <= 6 && s.Phase == "aggregating" })
	victim := r.serverOfRank("1")
	if err := r.c.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	i, _ := strconv.Atoi(victim)
	at := r.state().Iteration
	r.waitFor("the next iteration", func(s rest.State) bool { return s.Iteration > at })
	if err := r.c.StartServer(victim, r.c.ServerPorts[i]); err != nil {
		t.Fatal(err)
	}
	r.waitFor("the restarted server back", func(s rest.State) bool { return s.ClusterState == "CLUSTER_READY" })
	r.finish(ids(4))
}

func TestKillScheduler(t *testing.T) {
	r := startFaultRun(t, 4, 0)
	r.waitFor("iteration 5", func(s rest.State) bool { return s.Iteration >= 5 })
	if err := r.c.Kill("scheduler", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Servers keep answering what they can alone: getModel.
	var st struct {
		ModelIteration uint64 `json:"model_iteration"`
	}
	if err := local.GetJSON(context.Background(), r.c.ServerURL(0)+"/status", &st); err != nil || st.ModelIteration < 3 {
		t.Fatalf("server without scheduler: %+v %v", st, err)
	}
	// It cannot admit: every startFLJob is refused and counted, and the
	// warning is logged once per period with the count, not per request.
	checkRefusalsWithoutScheduler(t, r.c, 0, 40)
	if err := r.c.StartScheduler(); err != nil {
		t.Fatal(err)
	}
	r.waitFor("the cluster back", func(s rest.State) bool { return s.ClusterState == "CLUSTER_READY" && s.Iteration >= 5 })
	// The restart fails no iteration: the servers bring back the updates
	// the restored state had not counted, and devices it had not admitted
	// are sent back to startFLJob at once.
	if failed := r.finish(ids(4)); failed > 0 {
		t.Fatalf("%d iterations failed; a scheduler restart should cost none", failed)
	}
}

// TestKillWholeCluster: the scheduler and every server are killed
// together while devices train, as a host reboot would, and started
// again. The devices finish the job. The interrupted iteration may fail
// (updates acknowledged after the scheduler's last save are gone with the
// servers' partial sums, and their devices wait for its model), no other.
func TestKillWholeCluster(t *testing.T) {
	r := startFaultRun(t, 2, 0)
	r.waitFor("iteration 5", func(s rest.State) bool { return s.Iteration >= 5 })
	for _, p := range []string{"scheduler", "0", "1"} {
		if err := r.c.Kill(p, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.c.StartScheduler(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, port := range r.c.ServerPorts {
		if err := r.c.StartServer(strconv.Itoa(i), port); err != nil {
			t.Fatal(err)
		}
		if err := r.c.WaitServerReady(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	r.waitFor("the cluster back", func(s rest.State) bool { return s.ClusterState == "CLUSTER_READY" && s.Iteration >= 5 })
	if failed := r.finish(ids(2)); failed > 1 {
		t.Fatalf("%d iterations failed; a whole-cluster restart should cost one at most", failed)
	}
}

func TestPartitionedServer(t *testing.T) {
	var px *cutProxy
	r := startFaultRun(t, 4, 0, func(o *local.Options) {
		o.ServerArgs = func(i int) []string {
			if i != 3 {
				return nil
			}
			return []string{"--scheduler_port=" + strconv.Itoa(px.port())}
		}
		var sched atomic.Value
		o.OnPorts = func(scheduler, _ int, _ []int) { sched.Store("127.0.0.1:" + strconv.Itoa(scheduler)) }
		px = newCutProxy(t, func() string { return sched.Load().(string) })
	})
	r.waitFor("iteration 3", func(s rest.State) bool { return s.Iteration >= 3 })
	px.cut()
	r.waitFor("server 3 declared dead", func(rest.State) bool {
		for _, n := range r.nodes() {
			if n.NodeID == "3" {
				return n.Alive == "false"
			}
		}
		return false
	})
	at := r.state().Iteration
	r.waitFor("training to go on", func(s rest.State) bool { return s.Iteration >= at+2 })
	px.heal()
	r.waitFor("server 3 back", func(s rest.State) bool { return s.ClusterState == "CLUSTER_READY" })
	r.finish(ids(4))
}

// cutProxy forwards TCP to a target until cut: then it drops every
// connection and refuses new ones, as a network partition would.
type cutProxy struct {
	t      *testing.T
	ln     net.Listener
	target func() string
	mu     sync.Mutex
	isCut  bool
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newCutProxy(t *testing.T, target func() string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{t: t, ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut := p.isCut
		p.mu.Unlock()
		if cut {
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target())
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in], p.conns[out] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *cutProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.isCut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *cutProxy) heal() {
	p.mu.Lock()
	p.isCut = false
	p.mu.Unlock()
}

// checkRefusalsWithoutScheduler sends n startFLJob requests to server i of
// a cluster whose scheduler is gone: each gets the safemode refusal, the
// server's /metrics counts them, and its log has a line or two for them.
func checkRefusalsWithoutScheduler(t *testing.T, c *local.Cluster, i, n int) {
	t.Helper()
	for k := 0; k < n; k++ {
		req := flmsg.BuildRequestFLJob(flatbuffers.NewBuilder(0), &flmsg.FLJobArgs{FLName: "LeNet", FLID: "probe-" + strconv.Itoa(k), DataSize: 1, Timestamp: now()})
		resp, err := http.Post(c.ServerURL(i)+"/startFLJob", "application/octet-stream", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != flmsg.BodySafemode {
			t.Fatalf("startFLJob without a scheduler: HTTP %d %q, want %q", resp.StatusCode, body, flmsg.BodySafemode)
		}
	}
	resp, err := http.Get(c.ServerURL(i) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	counted := -1.0
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, "fedcluster_device_requests_total{") && strings.Contains(line, `endpoint="startFLJob"`) && strings.Contains(line, `outcome="safemode"`) {
			fields := strings.Fields(line)
			counted, _ = strconv.ParseFloat(fields[len(fields)-1], 64)
		}
	}
	if counted < float64(n) {
		t.Fatalf("server %d counted %v safemode refusals of startFLJob, want %d or more", i, counted, n)
	}
	log, err := os.ReadFile(filepath.Join(c.Dir(), "server_"+strconv.Itoa(i), "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(log), "cannot admit device"); lines < 1 || lines > 3 {
		t.Fatalf("server %d logged %d lines for %v refused admissions, want 1 to 3 (one per 10 s)", i, lines, counted)
	}
}
