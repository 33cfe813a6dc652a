package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/node/device/sim"
	"github.com/fedcluster/fedcluster/node/local"
	"github.com/fedcluster/fedcluster/node/model"
)

// heavyEnv enables the device-cycle cases a 2-core machine needs minutes
// for: the 10M-parameter model and 1,024 devices.
const heavyEnv = "FEDCLUSTER_BENCH_HEAVY"

// fullModelsEnv set to 1 turns the devices' ReuseModel off.
const fullModelsEnv = "FEDCLUSTER_BENCH_FULL_MODELS"

type cycleModel struct {
	name   string
	floats int // 0: the servers' built-in LeNet-5
}

// BenchmarkDeviceCycle runs a real cluster (a scheduler and 1 or 4 servers
// as processes of the fedcluster binary) and M simulated devices in load
// mode (node/device/sim) doing startFLJob → updateModel → getModel over
// HTTP on loopback, with start_fl_job_threshold = M and
// update_model_ratio = 1: one op is one federated iteration in which all M
// devices complete a device-iteration. The job runs b.N + 1 iterations; the
// first warms up (connections, first model download) and is not timed.
//
// Reported: device-iterations/s and updates/s and upload MB/s over the timed
// iterations, p50/p99 latency per endpoint (every exchange, SucNotReady
// polls of getModel included), iteration-switch time as the devices see it
// (last updateModel answered → first startFLJob of the next iteration
// admitted) and as the scheduler records it (iterationSwitchMs: last
// updateModel counted → NextIteration pushed), the servers' peak RSS
// (VmHWM) and its ratio to the model's float32 size, and the failed
// requests (anything but SUCCEED, SucNotReady, OutOfTime and the
// plain-text not-ready/safemode refusals), of which busy are HTTP 503
// answers of a server whose upload buffers stayed taken.
//
// The 10M-parameter model and 1,024 devices run only with
// FEDCLUSTER_BENCH_HEAVY=1.
func BenchmarkDeviceCycle(b *testing.B) {
	heavy := os.Getenv(heavyEnv) == "1"
	for _, m := range []cycleModel{{"lenet", 0}, {"10M", 10_000_000}} {
		b.Run(m.name, func(b *testing.B) {
			for _, servers := range []int{1, 4} {
				b.Run(fmt.Sprintf("%dsrv", servers), func(b *testing.B) {
					for _, devices := range []int{8, 32, 256, 1024} {
						b.Run(fmt.Sprintf("%ddev", devices), func(b *testing.B) {
							if (m.floats > 1_000_000 || devices > 256) && !heavy {
								b.Skipf("heavy case: set %s=1", heavyEnv)
							}
							runDeviceCycle(b, m, servers, devices)
						})
					}
				})
			}
		})
	}
}

// cycleEvents follows the devices' progress to time the steady state and
// the iteration switches.
type cycleEvents struct {
	b *testing.B

	mu            sync.Mutex
	timing        bool
	timedFrom     time.Duration // first admission of iteration 2
	firstAdmit    map[int32]time.Duration
	lastUpload    map[int32]time.Duration
	lastDone      time.Duration
	timedUpdates  int
	timedDevIters int
}

func (e *cycleEvents) on(ev sim.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch ev.Kind {
	case sim.EventAdmitted:
		if _, ok := e.firstAdmit[ev.Iteration]; !ok {
			e.firstAdmit[ev.Iteration] = ev.Elapsed
		}
		if ev.Iteration >= 2 && !e.timing {
			// Run is blocked in sim.Run on the benchmark goroutine and
			// returns only after this goroutine ends.
			e.timing, e.timedFrom = true, ev.Elapsed
			e.b.StartTimer()
		}
	case sim.EventUploaded:
		e.lastUpload[ev.Iteration] = max(e.lastUpload[ev.Iteration], ev.Elapsed)
		if ev.Iteration >= 2 {
			e.timedUpdates++
		}
	case sim.EventDeviceDone:
		e.lastDone = max(e.lastDone, ev.Elapsed)
		if ev.Iteration >= 2 {
			e.timedDevIters++
		}
	}
}

// switches returns, per iteration k with a successor, first admission of
// k+1 minus the last accepted upload of k.
func (e *cycleEvents) switches() []time.Duration {
	var out []time.Duration
	for k, up := range e.lastUpload {
		if next, ok := e.firstAdmit[k+1]; ok {
			out = append(out, max(next-up, 0))
		}
	}
	return out
}

func runDeviceCycle(b *testing.B, m cycleModel, servers, devices int) {
	b.StopTimer()
	bin := fedclusterBinary(b)
	dir := b.TempDir()
	floats := m.floats
	if floats == 0 {
		floats = model.LeNet5Layout().Size
	}
	metricsPath := filepath.Join(dir, "metrics.json")
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, []byte(`{"metrics":{"storage_type":1,"storage_file_path":`+strconv.Quote(metricsPath)+`}}`), 0o644); err != nil {
		b.Fatal(err)
	}
	iterations := b.N + 1
	args := []string{
		"--config_file_path=" + cfgPath,
		"--start_fl_job_threshold=" + strconv.Itoa(devices),
		"--update_model_ratio=1",
		"--fl_iteration_num=" + strconv.Itoa(iterations),
		"--start_fl_job_time_window=600000",
		"--update_model_time_window=600000",
		"--global_iteration_time_window=3600000",
		"--heartbeat_interval=1s",
		"--heartbeat_timeout=60s",
		"--checkpoint_keep=2",
	}
	if m.floats != 0 {
		args = append(args, "--init_file="+modelFile(b, m.floats))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	c, err := local.Start(ctx, local.Options{Binary: bin, Dir: dir, Servers: servers, Args: args})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		c.Stop()
		for _, r := range c.Reports() {
			b.Errorf("a cluster process reported:\n%s", r)
		}
	}()
	urls := make([]string, servers)
	for i := range urls {
		urls[i] = c.ServerURL(i)
	}
	cfg := sim.DefaultConfig(devices, urls)
	cfg.Mode = sim.ModeLoad
	cfg.Evaluate = false
	cfg.DataSize = 32
	// Measure the cluster, not the devices' courtesy waits: poll getModel
	// from 1 ms (doubling to 50 ms) instead of MindSpore's 500 ms, and
	// retry a not-ready refusal after 5 ms.
	cfg.Device.PollMinDelay = time.Millisecond
	cfg.Device.PollMaxDelay = 50 * time.Millisecond
	cfg.Device.RefusalDelay = 5 * time.Millisecond
	cfg.Device.OutOfTimeMinWait = time.Millisecond
	// An OutOfTime answer sends a device back to startFLJob after
	// next_req_time, which the scheduler puts at the end of the round
	// window (here minutes away); wait at most 20 ms instead, so that a
	// stray OutOfTime (they are counted in the log line) costs the
	// iteration milliseconds, not the device's MindSpore-like minute.
	cfg.Device.OutOfTimeMaxWait = 20 * time.Millisecond
	cfg.Device.RequestTimeout = 2 * time.Minute
	// A server whose upload buffers stay taken for 2 minutes turns an
	// upload away (HTTP 503, counted as busy); the device retries.
	// Hundreds of 40 MB uploads at once take minutes to read on 2 cores:
	// let a device be turned away many times before it gives up.
	cfg.Device.MaxAttempts = 100
	// The SDK's devices name the model their getModel brought, and the
	// servers leave it out of startFLJob; FEDCLUSTER_BENCH_FULL_MODELS=1
	// measures MindSpore's clients' cycle, which downloads it twice.
	cfg.Device.ReuseModel = os.Getenv(fullModelsEnv) != "1"
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	devCPU0 := time.Duration(ru0.Utime.Nano() + ru0.Stime.Nano())
	ev := &cycleEvents{b: b, firstAdmit: map[int32]time.Duration{}, lastUpload: map[int32]time.Duration{}}
	cfg.OnEvent = ev.on
	runCtx, cancelRun := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancelRun()
	keys := []string{"scheduler"}
	for i := 0; i < servers; i++ {
		keys = append(keys, strconv.Itoa(i))
	}
	stopWatch := watchCluster(c, keys, cancelRun)
	sum, err := sim.Run(runCtx, cfg)
	b.StopTimer()
	if gone := stopWatch(); gone != "" {
		if gone != "scheduler" {
			gone = "server " + gone
		}
		b.Fatalf("the cluster's %s exited during the run (devices: %v)", gone, err)
	}
	if err != nil {
		b.Fatalf("devices: %v", err)
	}
	if len(sum.DeviceErrors) > 0 {
		b.Errorf("%d devices stopped on errors, the first: %v", len(sum.DeviceErrors), sum.DeviceErrors[0])
	}

	// Peak RSS and CPU time of the servers, read before Stop.
	var rssMax float64
	var srvCPU time.Duration
	for i := 0; i < servers; i++ {
		pid := c.PID(strconv.Itoa(i))
		kb, err := vmHWM(pid)
		if err != nil {
			b.Fatal(err)
		}
		rssMax = max(rssMax, float64(kb)/1024)
		cpu, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		srvCPU += cpu
	}
	schedCPU, _ := procCPU(c.PID("scheduler"))
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	devCPU := time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) - devCPU0

	ev.mu.Lock()
	timed := ev.lastDone - ev.timedFrom
	devIters, updates := ev.timedDevIters, ev.timedUpdates
	switches := ev.switches()
	ev.mu.Unlock()
	if devIters != devices*b.N {
		b.Errorf("%d device-iterations in the timed iterations, want %d × %d", devIters, devices, b.N)
	}
	modelMB := float64(4*floats) / (1 << 20)
	if timed > 0 {
		sec := timed.Seconds()
		b.ReportMetric(float64(devIters)/sec, "devIter/s")
		b.ReportMetric(float64(updates)/sec, "updates/s")
		if sum.Updates > 0 {
			perUpdate := float64(sum.UploadBytes) / float64(sum.Updates)
			b.ReportMetric(float64(updates)*perUpdate/sec/1e6, "upMB/s")
		}
	}
	for _, e := range []device.Endpoint{device.EndpointStartFLJob, device.EndpointUpdateModel, device.EndpointGetModel} {
		st := sum.Endpoints[e]
		name := endpointShort(e)
		b.ReportMetric(ms(st.P50), name+"-p50-ms")
		b.ReportMetric(ms(st.P99), name+"-p99-ms")
	}
	b.ReportMetric(ms(quantile(switches, 0.5)), "switch-dev-p50-ms")
	if sched, err := schedulerSwitches(metricsPath); err != nil {
		b.Logf("no scheduler records: %v", err)
	} else {
		b.ReportMetric(quantile(sched, 0.5).Seconds()*1000, "switch-sched-p50-ms")
	}
	b.ReportMetric(rssMax, "srvRSS-MB")
	b.ReportMetric(rssMax/modelMB, "RSS/model")
	b.ReportMetric(float64(failedRequests(sum)), "failed")
	var busy int64
	for _, st := range sum.Endpoints {
		busy += st.Classes[sim.ClassBusy]
	}
	b.ReportMetric(float64(busy), "busy")
	// CPU per device-iteration over the whole run (warm-up included): where
	// the 2 cores went, servers against the devices' own process.
	if n := sum.DeviceIterations; n > 0 {
		b.ReportMetric(float64(srvCPU.Microseconds())/float64(n), "srvCPU-us/devIter")
		b.ReportMetric(float64(schedCPU.Microseconds())/float64(n), "schedCPU-us/devIter")
		b.ReportMetric(float64(devCPU.Microseconds())/float64(n), "devCPU-us/devIter")
	}
	b.Logf("%d servers, %d devices, %d floats: %d iterations (1 warm-up), %s timed; requests: %s",
		servers, devices, floats, iterations, timed.Round(time.Millisecond), classCounts(sum))
}

// watchCluster cancels the run when a process of c exits: the devices
// would otherwise retry the survivors' refusals until the run's timeout,
// half an hour. stop ends the watch and names the process that exited.
func watchCluster(c *local.Cluster, keys []string, cancel func()) (stop func() string) {
	done := make(chan struct{})
	gone := make(chan string, 1)
	go func() {
		defer close(gone)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, k := range keys {
				if c.Exited(k) {
					gone <- k
					cancel()
					return
				}
			}
		}
	}()
	return func() string {
		close(done)
		return <-gone // "" once closed without a name
	}
}

func endpointShort(e device.Endpoint) string {
	switch e {
	case device.EndpointStartFLJob:
		return "start"
	case device.EndpointUpdateModel:
		return "update"
	case device.EndpointGetModel:
		return "get"
	}
	return "other"
}

// failedRequests counts the exchanges that ended in anything but the
// protocol's normal answers.
func failedRequests(s *sim.Summary) int64 {
	var n int64
	for _, st := range s.Endpoints {
		for cl, k := range st.Classes {
			switch sim.Class(cl) {
			case sim.ClassSucceed, sim.ClassSucNotReady, sim.ClassOutOfTime, sim.ClassNotReadyText, sim.ClassSafemode, sim.ClassJobFinished:
			default:
				n += k
			}
		}
	}
	return n
}

func classCounts(s *sim.Summary) string {
	var buf bytes.Buffer
	for _, st := range s.Endpoints {
		if st.Requests == 0 {
			continue
		}
		fmt.Fprintf(&buf, "%s %d [", endpointShort(st.Endpoint), st.Requests)
		for cl, k := range st.Classes {
			if k > 0 {
				fmt.Fprintf(&buf, " %s=%d", sim.Class(cl), k)
			}
		}
		buf.WriteString(" ] ")
		if st.FirstError != "" {
			fmt.Fprintf(&buf, "(first failure: %s) ", st.FirstError)
		}
	}
	return buf.String()
}

// vmHWM reads a process's peak resident set size in KiB.
func vmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("cannot read peak RSS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := bytes.CutPrefix([]byte(line), []byte("VmHWM:")); ok {
			fields := bytes.Fields(v)
			if len(fields) >= 1 {
				return strconv.ParseInt(string(fields[0]), 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// procCPU reads a process's user + system CPU time from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cannot read CPU time: %w", err)
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	st, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// schedulerSwitches reads iterationSwitchMs of every successful iteration
// from the scheduler's metrics.json.
func schedulerSwitches(path string) ([]time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r struct {
			Result   string  `json:"iterationResult"`
			SwitchMs float64 `json:"iterationSwitchMs"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("cannot decode %s: %w", path, err)
		}
		if r.Result == "success" {
			out = append(out, time.Duration(r.SwitchMs*float64(time.Millisecond)))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no successful iteration in %s", path)
	}
	return out, nil
}
