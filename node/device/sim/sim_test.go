package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// flServer is a minimal federated-learning cluster: every server of it
// shares one state. Each iteration admits threshold devices, folds their
// updates (weights × data size) and publishes the average; after
// iterations iterations startFLJob answers "job finished". Every
// safemodeEvery-th request (0: none) is refused with safemode.
type flServer struct {
	t             *testing.T
	mu            sync.Mutex
	threshold     int
	iterations    int32
	safemodeEvery int
	// turnAwayFor is the next_req_time of a startFLJob refused because
	// the iteration is full. With holdForTurnAway no iteration ends
	// before a device has been turned away, however late the last device
	// starts.
	turnAwayFor     time.Duration
	holdForTurnAway bool
	turnedAway      int
	changed         *sync.Cond // on mu: turnedAway or closing changed
	closing         bool
	// statusLag is how many GET /status after the job finished still say
	// "running", as a server the scheduler's decision has not reached.
	statusLag int

	// After iteration disableAt (0: never) startFLJob answers "disabled or
	// finished" until it has done so enableAfter times; afterEnable then
	// records the devices that ask again.
	disableAt   int32
	enableAfter int
	refused     int
	afterEnable map[string]bool

	// base is the iteration before the first one (fedcluster's numbers
	// keep growing over /newInstance); noStatus makes GET /status a 404,
	// as on a MindSpore server.
	base     int32
	noStatus bool

	// failAt (0: never) is an iteration that fails when its updates are
	// in: the previous model is stored again, as fedcluster's servers do.
	failAt int32

	// reuse makes the server give the checksum of the models it serves
	// and leave out of startFLJob the one a device names;
	// leftOut counts those answers.
	reuse   bool
	leftOut int

	requests  int
	iter      int32
	admitted  map[string]int32
	updated   map[string]bool
	sum       []float64
	dsum      float64
	models    map[int32]*model.Model
	cur       *model.Model
	finished  bool
	urls      []string
	servers   []*httptest.Server
	hitServer []int
}

func newFLServer(t *testing.T, servers, threshold int, iterations int32, initial *model.Model) *flServer {
	fs := &flServer{
		t: t, threshold: threshold, iterations: iterations, iter: 1,
		admitted: map[string]int32{}, updated: map[string]bool{}, models: map[int32]*model.Model{},
		cur: initial, sum: make([]float64, len(initial.Data)), hitServer: make([]int, servers), turnAwayFor: 5 * time.Millisecond,
		afterEnable: map[string]bool{},
	}
	fs.changed = sync.NewCond(&fs.mu)
	for i := range servers {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fs.serve(i, w, r) }))
		fs.servers = append(fs.servers, s)
		fs.urls = append(fs.urls, s.URL)
	}
	t.Cleanup(func() {
		fs.mu.Lock()
		fs.closing = true // a held update gives up: Close waits for its handler
		fs.changed.Broadcast()
		fs.mu.Unlock()
		for _, s := range fs.servers {
			s.CloseClientConnections()
			s.Close()
		}
	})
	return fs
}

func (fs *flServer) next(d time.Duration) string {
	return strconv.FormatInt(time.Now().Add(d).UnixMilli(), 10)
}

func (fs *flServer) disabledLocked() bool {
	return fs.disableAt > 0 && fs.iter > fs.disableAt && fs.refused < fs.enableAfter
}

func (fs *flServer) serve(server int, w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	b := flatbuffers.NewBuilder(0)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.requests++
	fs.hitServer[server]++
	if fs.safemodeEvery > 0 && fs.requests%fs.safemodeEvery == 0 {
		w.Write([]byte(flmsg.BodySafemode))
		return
	}
	switch r.URL.Path {
	case "/status":
		if fs.noStatus {
			http.NotFound(w, r)
			return
		}
		instance := device.InstanceRunning
		if fs.disabledLocked() {
			instance = device.InstanceDisabled
		} else if fs.finished && fs.statusLag > 0 {
			fs.statusLag--
		} else if fs.finished {
			instance = device.InstanceFinished
		}
		fmt.Fprintf(w, `{"node_id":"fake","iteration":%d,"instance":%q}`, fs.iter, instance)
	case "/startFLJob":
		q, err := flmsg.DecodeRequestFLJob(body)
		if err != nil {
			fs.t.Errorf("bad startFLJob: %s", err)
			return
		}
		id := string(q.FLID)
		if fs.disabledLocked() {
			fs.refused++
			w.Write([]byte(flmsg.BodyJobDisabled))
			return
		}
		if fs.disableAt > 0 && fs.refused == fs.enableAfter {
			fs.afterEnable[id] = true
		}
		if fs.finished {
			w.Write([]byte(flmsg.BodyJobDisabled))
			return
		}
		if _, dup := fs.admitted[id]; dup || len(fs.admitted) >= fs.threshold {
			fs.turnedAway++
			fs.changed.Broadcast()
			w.Write(flmsg.BuildResponseFLJob(b, &flmsg.FLJobReply{Retcode: flmsg.OutOfTime, Reason: "threshold", NextReqTime: fs.next(fs.turnAwayFor)}))
			return
		}
		fs.admitted[id] = q.DataSize
		served := fs.cur
		if fs.reuse {
			sum := served.SHA256()
			w.Header().Set(flmsg.HeaderModelSHA256, sum)
			if r.Header.Get(flmsg.HeaderHeldModel) == sum {
				fs.leftOut++
				served = nil
			}
		}
		w.Write(flmsg.BuildResponseFLJob(b, &flmsg.FLJobReply{
			Retcode: flmsg.Succeed, Reason: flmsg.ReasonStartFLJobSuccess, Iteration: fs.iter, IsSelected: true,
			NextReqTime: fs.next(time.Second), Model: served,
			Plan: &flmsg.Plan{ServerMode: "FEDERATED_LEARNING", FLName: "lenet", Iterations: fs.iterations, Epochs: 1, MiniBatch: 16, LR: 0.05},
		}))
	case "/updateModel":
		q, err := flmsg.DecodeRequestUpdateModel(body)
		if err != nil {
			fs.t.Errorf("bad updateModel: %s", err)
			return
		}
		id := string(q.FLID)
		ds, ok := fs.admitted[id]
		if !ok || fs.updated[id] || q.Iteration != fs.iter {
			w.Write(flmsg.BuildResponseUpdateModel(b, &flmsg.UpdateModelReply{Retcode: flmsg.OutOfTime, Reason: "late", NextReqTime: fs.next(5 * time.Millisecond)}))
			return
		}
		up := model.New(fs.cur.Layout)
		if n, err := q.FeatureMaps.CopyTo(up); err != nil || n != len(up.Layout.Params) {
			fs.t.Errorf("bad update: %d tensors, %v", n, err)
		}
		for i, v := range up.Data {
			fs.sum[i] += float64(v)
		}
		fs.dsum += float64(ds)
		fs.updated[id] = true
		if len(fs.updated) == fs.threshold {
			for fs.holdForTurnAway && fs.turnedAway == 0 && !fs.closing {
				fs.changed.Wait()
			}
			m := model.New(fs.cur.Layout)
			for i := range m.Data {
				m.Data[i] = float32(fs.sum[i] / fs.dsum)
				fs.sum[i] = 0
			}
			if fs.iter == fs.failAt {
				m = fs.cur
			}
			fs.dsum = 0
			fs.models[fs.iter] = m
			fs.cur = m
			fs.iter++
			clear(fs.admitted)
			clear(fs.updated)
			fs.finished = fs.iter > fs.base+fs.iterations
		}
		w.Write(flmsg.BuildResponseUpdateModel(b, &flmsg.UpdateModelReply{Retcode: flmsg.Succeed, Reason: flmsg.ReasonUpdateModelSuccess, NextReqTime: fs.next(time.Second)}))
	case "/getModel":
		q, err := flmsg.DecodeRequestGetModel(body)
		if err != nil {
			fs.t.Errorf("bad getModel: %s", err)
			return
		}
		m, ok := fs.models[q.Iteration]
		if !ok {
			if q.Iteration == fs.iter {
				w.Write(flmsg.BuildResponseGetModel(b, &flmsg.GetModelReply{Retcode: flmsg.SucNotReady, Reason: "not ready", Iteration: fs.iter, Timestamp: fs.next(time.Second)}))
				return
			}
			m = fs.cur
		}
		if fs.reuse {
			w.Header().Set(flmsg.HeaderModelSHA256, m.SHA256())
		}
		w.Write(flmsg.BuildResponseGetModel(b, &flmsg.GetModelReply{Retcode: flmsg.Succeed, Reason: "Get model", Iteration: fs.iter, Model: m, Timestamp: fs.next(time.Second)}))
	default:
		fs.t.Errorf("unexpected path %s", r.URL.Path)
	}
}

// loadConfig is a run of devices in load mode against urls, with
// fastDevice's retries.
func loadConfig(devices int, urls []string) Config {
	cfg := DefaultConfig(devices, urls)
	cfg.Mode, cfg.Device = ModeLoad, fastDevice()
	return cfg
}

// runBounded runs cfg for at most 20 s.
func runBounded(cfg Config) (*Summary, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return Run(ctx, cfg)
}

func fastDevice() device.Options {
	o := device.DefaultOptions()
	o.RequestTimeout = 5 * time.Second
	o.RetryMinDelay, o.RetryMaxDelay = time.Millisecond, 10*time.Millisecond
	o.RefusalDelay = 2 * time.Millisecond
	o.PollMinDelay, o.PollMaxDelay = time.Millisecond, 5*time.Millisecond
	o.OutOfTimeMinWait, o.OutOfTimeMaxWait = time.Millisecond, 50*time.Millisecond
	return o
}

func TestRunLoad(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10, 20}}, {Name: "b", Shape: []int{10}}})
	if err != nil {
		t.Fatal(err)
	}
	const devices, iterations = 6, 4
	fs := newFLServer(t, 2, devices, iterations, model.New(l))
	fs.safemodeEvery = 7
	cfg := loadConfig(devices, fs.urls)
	var evMu sync.Mutex
	kinds := map[EventKind]int{}
	cfg.OnEvent = func(ev Event) {
		evMu.Lock()
		kinds[ev.Kind]++
		evMu.Unlock()
		if ev.Round == "" || ev.Active < 0 || ev.Active > devices {
			t.Errorf("event %+v", ev)
		}
	}
	s, err := runBounded(cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(s.Iterations) != iterations {
		t.Fatalf("%d iterations in the summary, want %d: %+v", len(s.Iterations), iterations, s.Iterations)
	}
	for i, it := range s.Iterations {
		if it.Iteration != int32(i+1) || it.Done != devices || it.Uploaded != devices || it.Admitted != devices || it.Evaluated {
			t.Errorf("row %d: %+v", i, it)
		}
	}
	if s.DeviceIterations != devices*iterations || s.Updates != devices*iterations || s.Finished != devices || len(s.DeviceErrors) != 0 {
		t.Errorf("summary %+v", s)
	}
	st := s.Endpoints[device.EndpointStartFLJob]
	if st.Classes[ClassJobFinished] != devices || st.Classes[ClassSucceed] != devices*iterations || st.P50 <= 0 || st.P99 < st.P50 {
		t.Errorf("startFLJob stats %+v", st)
	}
	var safemode int64
	for _, e := range s.Endpoints {
		safemode += e.Classes[ClassSafemode]
		if e.Classes[ClassTransport]+e.Classes[ClassBusy]+e.Classes[ClassCorrupt]+e.Classes[ClassHTTP] != 0 {
			t.Errorf("failures at %s: %+v", e.Endpoint, e)
		}
	}
	if safemode == 0 {
		t.Errorf("no safemode refusal was counted")
	}
	// 210 floats × 4 bytes × data size... at least the floats per update.
	if s.UploadBytes < devices*iterations*210*4 || s.UpdatesPerSec() <= 0 || s.UploadMBPerSec() <= 0 {
		t.Errorf("upload %d bytes, %.1f updates/s", s.UploadBytes, s.UpdatesPerSec())
	}
	// Two models per device-iteration (this server leaves none out).
	if s.DownloadBytes < 2*devices*iterations*210*4 || s.DownloadMBPerSec() <= 0 {
		t.Errorf("download %d bytes", s.DownloadBytes)
	}
	// The average of equal random weights is those weights (×32/32).
	if fs.cur.Data[0] == 0 {
		t.Errorf("the global model did not move")
	}
	if fs.hitServer[0] == 0 || fs.hitServer[1] == 0 {
		t.Errorf("requests per server %v: not spread", fs.hitServer)
	}
	evMu.Lock()
	if kinds[EventAdmitted] < devices*iterations || kinds[EventDeviceDone] != devices*iterations || kinds[EventDeviceStopped] != devices {
		t.Errorf("events %v", kinds)
	}
	evMu.Unlock()
	var out strings.Builder
	if err := s.WriteText(&out); err != nil || !strings.Contains(out.String(), "updates/s") {
		t.Errorf("WriteText: %v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
}

// TestRunStopsTurnedAwayDevicesAtTheEnd: a device turned away with an
// OutOfTime whose next_req_time lies an hour ahead does not keep the run
// going once the job finished; it counts as finished.
func TestRunStopsTurnedAwayDevicesAtTheEnd(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10}}})
	if err != nil {
		t.Fatal(err)
	}
	const devices, iterations = 4, 3
	fs := newFLServer(t, 1, devices-1, iterations, model.New(l))
	fs.turnAwayFor = time.Hour
	fs.holdForTurnAway = true // else the job may end before the last device starts
	cfg := loadConfig(devices, fs.urls)
	cfg.Device.OutOfTimeMaxWait = 2 * time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := s.Endpoints[device.EndpointStartFLJob].Classes[ClassOutOfTime]; n == 0 {
		t.Fatalf("no device was turned away: %+v", s.Endpoints[device.EndpointStartFLJob])
	}
	if s.Finished != devices || len(s.DeviceErrors) != 0 || s.DeviceIterations != (devices-1)*iterations {
		t.Errorf("summary %+v", s)
	}
}

// TestRunStatusLagsTheRefusal: devices refused with "disabled or
// finished" by a server whose /status still says running ask again, and
// stop once it says finished.
func TestRunStatusLagsTheRefusal(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10}}})
	if err != nil {
		t.Fatal(err)
	}
	const devices, iterations, lag = 3, 2, 4
	fs := newFLServer(t, 1, devices, iterations, model.New(l))
	fs.statusLag = lag
	cfg := loadConfig(devices, fs.urls)
	s, err := runBounded(cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	fs.mu.Lock()
	left := fs.statusLag
	fs.mu.Unlock()
	refused := s.Endpoints[device.EndpointStartFLJob].Classes[ClassJobFinished]
	if left != 0 || refused != devices+lag || s.Finished != devices || s.DeviceIterations != devices*iterations {
		t.Errorf("%d lagging statuses left, %d refusals (want %d), summary %+v", left, refused, devices+lag, s)
	}
}

// TestAfterJobRefusal: the wait after a "disabled or finished" refusal
// follows the server's /status: none when finished, disabledWait when
// disabled, and from staleWait doubling up to disabledWait while it says
// running.
func TestAfterJobRefusal(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{10}}})
	if err != nil {
		t.Fatal(err)
	}
	fs := newFLServer(t, 1, 1, 3, model.New(l))
	r := &run{cfg: DefaultConfig(1, fs.urls)}
	r.cfg.Mode, r.cfg.Device = ModeLoad, fastDevice()
	d, err := r.newDevice(0, device.NewHTTPClient(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := []time.Duration{20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000, 1000, 1000, 1000}
	for stale, w := range want {
		if wait, finished := d.afterJobRefusal(ctx, stale); finished || wait != w*time.Millisecond {
			t.Errorf("running, %d stale: wait %s, finished %v; want %s", stale, wait, finished, w*time.Millisecond)
		}
	}
	fs.mu.Lock()
	fs.disableAt, fs.iter, fs.enableAfter = 1, 2, 1
	fs.mu.Unlock()
	if wait, finished := d.afterJobRefusal(ctx, 3); finished || wait != disabledWait {
		t.Errorf("disabled: wait %s, finished %v", wait, finished)
	}
	fs.mu.Lock()
	fs.disableAt, fs.finished = 0, true
	fs.mu.Unlock()
	if _, finished := d.afterJobRefusal(ctx, 0); !finished {
		t.Errorf("finished: not finished")
	}
}

// TestRunWaitsOutADisabledJob: a job disabled after its first iteration
// answers startFLJob with "disabled or finished" while iterations remain.
// Every device waits for it to be enabled again, also one that was never
// admitted and so never had an FLPlan of its own.
func TestRunWaitsOutADisabledJob(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{4}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		base     int32
		noStatus bool
	}{
		// A server without GET /status: told apart by iteration numbers.
		{name: "numbered from 1", noStatus: true},
		// After a fedcluster /newInstance the numbers have passed the
		// plan's count: only the server's /status tells.
		{name: "after a new instance", base: 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const devices = 2
			fs := newFLServer(t, 1, 1, 3, model.New(l)) // one device per iteration
			fs.base, fs.iter, fs.noStatus = tc.base, tc.base+1, tc.noStatus
			fs.disableAt, fs.enableAfter = tc.base+1, devices // each device refused once (or one twice)
			cfg := loadConfig(devices, fs.urls)
			s, err := runBounded(cfg)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			fs.mu.Lock()
			defer fs.mu.Unlock()
			if len(fs.afterEnable) != devices || s.Finished != devices || fs.iter != tc.base+4 {
				t.Fatalf("%d of %d devices came back after the job was enabled again (%d told it finished, at iteration %d)",
					len(fs.afterEnable), devices, s.Finished, fs.iter)
			}
		})
	}
}

// TestRunTrain trains 2 devices for 2 iterations against a server that
// leaves out of startFLJob the model a device holds: each device
// downloads 3 models, not 4.
func TestRunTrain(t *testing.T) {
	if testing.Short() {
		t.Skip("trains LeNet")
	}
	const devices, iterations = 2, 2
	fs := newFLServer(t, 1, devices, iterations, model.InitLeNet5(1))
	fs.reuse = true
	s := runTrain(t, trainConfig(devices, fs.urls), iterations)
	for _, it := range s.Iterations {
		if !it.Evaluated || it.Accuracy < 0 || it.Accuracy > 1 || !(it.Loss > 0) {
			t.Errorf("row %+v", it)
		}
	}
	if f, ok := s.Final(); !ok || f.Iteration != iterations {
		t.Errorf("final %+v", f)
	}
	modelBytes := int64(4 * model.LeNet5Layout().Size)
	if fs.leftOut != devices*(iterations-1) || s.DownloadBytes < 3*devices*modelBytes || s.DownloadBytes > 3*devices*modelBytes+devices*modelBytes/2 {
		t.Errorf("%d startFLJob answers left the model out, %d bytes downloaded: want %d and 3 models (%d bytes) per device",
			fs.leftOut, s.DownloadBytes, devices*(iterations-1), modelBytes)
	}
}

// trainConfig is a training run of devices against urls: small shards,
// 200 test images, fastDevice's retries.
func trainConfig(devices int, urls []string) Config {
	cfg := DefaultConfig(devices, urls)
	cfg.Device = fastDevice()
	cfg.ShardSize = 64
	cfg.EvalSize = 200
	return cfg
}

// runTrain runs cfg for at most 40 s and checks that it ends well with one
// row per iteration.
func runTrain(t *testing.T, cfg Config, iterations int) *Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	s, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(s.Iterations) != iterations {
		t.Fatalf("iterations %+v", s.Iterations)
	}
	return s
}

// TestRunTrainMarksAnUnchangedModel: an iteration whose global model is
// the one it started from (it failed; the first one included, whose
// model is the initial one) is marked in the summary, its table and the
// evaluation event; the others are not.
func TestRunTrainMarksAnUnchangedModel(t *testing.T) {
	if testing.Short() {
		t.Skip("trains LeNet")
	}
	for _, failAt := range []int32{1, 2} {
		t.Run(fmt.Sprintf("fails%d", failAt), func(t *testing.T) {
			const devices, iterations = 2, 3
			fs := newFLServer(t, 1, devices, iterations, model.InitLeNet5(1))
			fs.failAt = failAt
			cfg := trainConfig(devices, fs.urls)
			var mu sync.Mutex
			marked := map[int32]bool{}
			cfg.OnEvent = func(ev Event) {
				if ev.Kind == EventEvaluated {
					mu.Lock()
					marked[ev.Iteration] = ev.Unchanged
					mu.Unlock()
				}
			}
			s := runTrain(t, cfg, iterations)
			for _, it := range s.Iterations {
				want := it.Iteration == failAt
				if !it.Evaluated || it.Unchanged != want || marked[it.Iteration] != want {
					t.Errorf("iteration %d: row %+v, event said unchanged=%v; want unchanged=%v", it.Iteration, it, marked[it.Iteration], want)
				}
			}
			if failAt > 1 {
				prev, failed := s.Iterations[failAt-2], s.Iterations[failAt-1]
				if failed.Accuracy != prev.Accuracy || failed.Loss != prev.Loss {
					t.Errorf("the same model evaluated differently: %+v, %+v", prev, failed)
				}
			}
			var b strings.Builder
			if err := s.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(b.String(), UnchangedNote); n != 1 {
				t.Errorf("the table marks %d rows, want 1:\n%s", n, b.String())
			}
		})
	}
}

func TestRunContextEnds(t *testing.T) {
	l, _ := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{4}}})
	// A threshold no run reaches: devices wait in getModel.
	fs := newFLServer(t, 1, 100, 3, model.New(l))
	cfg := loadConfig(4, fs.urls)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v, want the context's error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Run returned %s after start", took)
	}
}

func TestRunDeviceErrors(t *testing.T) {
	// A server that answers startFLJob with RequestError (and serves its
	// model, from which load devices learn its shapes): each device stops
	// after MaxDeviceErrors iterations, Run reports it.
	l, _ := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{4}}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/getModel") {
			w.Write(flmsg.BuildResponseGetModel(flatbuffers.NewBuilder(0), &flmsg.GetModelReply{Retcode: flmsg.Succeed, Model: model.New(l)}))
			return
		}
		w.Write(flmsg.BuildResponseFLJob(flatbuffers.NewBuilder(0), &flmsg.FLJobReply{Retcode: flmsg.RequestError, Reason: "no"}))
	}))
	defer srv.Close()
	cfg := loadConfig(3, []string{srv.URL})
	cfg.MaxDeviceErrors = 2
	cfg.ErrorBackoff = time.Millisecond
	s, err := Run(context.Background(), cfg)
	var rerr *device.RetcodeError
	if !errors.As(err, &rerr) || rerr.Retcode != flmsg.RequestError {
		t.Fatalf("Run: %v, want the RequestError", err)
	}
	if len(s.DeviceErrors) != 3 || s.Endpoints[device.EndpointStartFLJob].Classes[ClassRequestError] != 6 {
		t.Fatalf("summary %+v", s)
	}
}

func TestHistogram(t *testing.T) {
	f := func(values []time.Duration, q float64, want time.Duration) {
		t.Helper()
		var h histogram
		for _, v := range values {
			h.add(v)
		}
		got := h.quantile(q)
		if diff := got - want; diff < -want/25 || diff > want/25 {
			t.Errorf("quantile(%g) = %s, want %s ± 4%%", q, got, want)
		}
	}
	us := time.Microsecond
	var ramp []time.Duration
	for i := 1; i <= 1000; i++ {
		ramp = append(ramp, time.Duration(i)*100*us)
	}
	f(nil, 0.5, 0)
	f([]time.Duration{10 * us}, 0.5, 10*us)
	f([]time.Duration{10 * us}, 0.99, 10*us)
	f(ramp, 0.5, 50*time.Millisecond)
	f(ramp, 0.99, 99*time.Millisecond)
	f([]time.Duration{time.Second, time.Second, time.Second, 3 * time.Second}, 0.5, time.Second)
	f([]time.Duration{time.Second, time.Second, time.Second, 3 * time.Second}, 0.99, 3*time.Second)
	var h histogram
	h.add(2 * time.Hour)
	if h.quantile(0.5) <= time.Hour/2 {
		t.Errorf("a 2 h latency reads %s", h.quantile(0.5))
	}
}

// Load devices take the served model's shapes from one getModel before
// they start: a cluster that cannot serve one fails the run, saying so.
func TestRunLoadNeedsTheModelsShapes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(flmsg.BuildResponseGetModel(flatbuffers.NewBuilder(0), &flmsg.GetModelReply{Retcode: flmsg.RequestError, Reason: "no model"}))
	}))
	defer srv.Close()
	cfg := loadConfig(3, []string{srv.URL})
	s, err := Run(context.Background(), cfg)
	var rerr *device.RetcodeError
	if s != nil || !errors.As(err, &rerr) || rerr.Retcode != flmsg.RequestError || !strings.Contains(err.Error(), "shapes") {
		t.Fatalf("Run: %v, %v; want the getModel RequestError", s, err)
	}
}

// A 503 (a server shedding load) is told apart from a lost connection.
func TestClassify(t *testing.T) {
	f := func(o device.Observation, want Class) {
		t.Helper()
		if got := classify(&o); got != want {
			t.Errorf("classify(%+v) = %s, want %s", o, got, want)
		}
	}
	f(device.Observation{Outcome: device.OutcomeTransport, Status: 503}, ClassBusy)
	f(device.Observation{Outcome: device.OutcomeTransport}, ClassTransport)
	f(device.Observation{Outcome: device.OutcomeTransport, Status: 502}, ClassTransport)
	f(device.Observation{Outcome: device.OutcomeHTTP, Status: 413}, ClassHTTP)
	f(device.Observation{Outcome: device.OutcomeRetcode, Retcode: flmsg.SucNotReady}, ClassSucNotReady)
	f(device.Observation{Outcome: device.OutcomeRefusal, Refusal: flmsg.BodySafemode}, ClassSafemode)
	if ClassBusy.String() != "busy" || ClassCorrupt.String() != "corrupt" {
		t.Errorf("class names out of step: %s, %s", ClassBusy, ClassCorrupt)
	}
}

// The first failure of each endpoint is kept as an example for the summary.
func TestFirstErrorIsKept(t *testing.T) {
	var c counters
	c.observe(device.Observation{Endpoint: device.EndpointUpdateModel, Outcome: device.OutcomeTransport, Err: errors.New("first")})
	c.observe(device.Observation{Endpoint: device.EndpointUpdateModel, Outcome: device.OutcomeTransport, Err: errors.New("second")})
	if got := c.firstErr[device.EndpointUpdateModel].Load(); got == nil || *got != "first" {
		t.Fatalf("first updateModel error %v", got)
	}
	if got := c.firstErr[device.EndpointGetModel].Load(); got != nil {
		t.Fatalf("getModel had no failure, kept %q", *got)
	}
}
