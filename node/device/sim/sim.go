// Package sim runs many simulated devices against a fedcluster (or
// MindSpore) cluster until its job finishes: the engine of the `fedcluster
// devices` command, the demo and the load benchmarks.
//
// Each device is a device.Client in its own goroutine, all sharing one
// fasthttp client. In ModeTrain a device trains LeNet-5 on its own MNIST
// shard (IID or non-IID, seeded) with the FLPlan's epochs, mini-batch and
// learning rate, and reports its shard size as data_size; at most
// GOMAXPROCS devices train at once. In ModeLoad the devices are load
// generators (device.Options.LoadBlock): each uploads the same random
// weights, in the shapes of the model the servers serve (learned from one
// getModel before the devices start) and serialized once, with a fixed
// data_size, never trains and keeps no model, so the servers are the
// bottleneck and a thousand devices of a large model fit in memory.
//
// When a device is first to get the global model of an iteration from
// getModel, the host clones it and one evaluator goroutine computes its
// loss and accuracy on the MNIST test set (ModeTrain; once per iteration,
// not per device). Progress goes out as Events; Run returns a Summary with
// the per-iteration table, the requests per endpoint and outcome, latency
// percentiles and throughput.
//
// Run owns every goroutine it starts and returns only after all of them
// have stopped: when every device has stopped (the job finished, or a
// device gave up after MaxDeviceErrors errors in a row) or when ctx ends.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/node/device/lenet"
	"github.com/fedcluster/fedcluster/node/device/mnist"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// Mode is what simulated devices do between startFLJob and updateModel.
type Mode uint8

const (
	// ModeLoad uploads random weights of the served shapes, no training.
	ModeLoad Mode = iota
	// ModeTrain trains LeNet-5 on an MNIST shard.
	ModeTrain
)

func (m Mode) String() string {
	if m == ModeTrain {
		return "train"
	}
	return "load"
}

// Config configures a run.
type Config struct {
	// Devices is the number of simulated devices (at least 1).
	Devices int
	// Servers are the servers' base URLs (device.ParseServers).
	Servers []string
	// URLPrefix is the servers' http_url_prefix.
	URLPrefix string
	// Mode is ModeLoad or ModeTrain.
	Mode Mode
	// IID splits MNIST uniformly at random; false splits it by label
	// (two label chunks per device). ModeTrain only.
	IID bool
	// Seed seeds the shards, the devices' randomness and the load
	// weights.
	Seed uint64
	// ShardSize caps each device's training images (0: its whole shard,
	// 60000/Devices). ModeTrain only.
	ShardSize int
	// EvalSize caps the test images evaluated per iteration (0: all
	// 10000). Evaluate turns evaluation off when false.
	EvalSize int
	Evaluate bool
	// DataSize is every device's data_size in ModeLoad (ModeTrain sends
	// its shard size).
	DataSize int32
	// FLIDPrefix names the devices FLIDPrefix + index.
	FLIDPrefix string
	// Device holds the device options every device starts from
	// (timeouts, retry bounds); FLID, DataSize, Servers, URLPrefix, HTTP,
	// Observe, Seed and Layout are set per device.
	Device device.Options
	// MaxDeviceErrors stops a device after this many failed iterations in
	// a row (errors other than the job finishing); it waits
	// ErrorBackoff × (errors in a row) between them.
	MaxDeviceErrors int
	ErrorBackoff    time.Duration
	// OnEvent, when set, receives progress events, one at a time, from
	// the run's goroutines. It must return quickly.
	OnEvent func(Event)
	// Logger gets a line per iteration and per stopped device; nil logs
	// nothing.
	Logger *zap.Logger
	// Trace, when set, gets one JSON line (TraceLine) per HTTP exchange
	// of every device: what each device asked, where, and what it was
	// answered, for finding out why a device or a round was held up.
	Trace io.Writer
}

// DefaultConfig returns a config for n training devices on servers.
func DefaultConfig(n int, servers []string) Config {
	return Config{
		Devices:         n,
		Servers:         servers,
		Mode:            ModeTrain,
		IID:             true,
		Seed:            1,
		Evaluate:        true,
		DataSize:        32,
		FLIDPrefix:      "fl_device_",
		Device:          device.DefaultOptions(),
		MaxDeviceErrors: 5,
		ErrorBackoff:    200 * time.Millisecond,
	}
}

// Validate reports the first unusable field by name.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("invalid sim config %s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Devices < 1:
		return bad("Devices", "must be at least 1, got %d", c.Devices)
	case len(c.Servers) == 0:
		return bad("Servers", "no server given")
	case c.Mode != ModeLoad && c.Mode != ModeTrain:
		return bad("Mode", "unknown mode %d", c.Mode)
	case c.Mode == ModeLoad && c.DataSize < 1:
		return bad("DataSize", "must be at least 1, got %d", c.DataSize)
	case c.ShardSize < 0:
		return bad("ShardSize", "must not be negative")
	case c.EvalSize < 0:
		return bad("EvalSize", "must not be negative")
	case c.MaxDeviceErrors < 1:
		return bad("MaxDeviceErrors", "must be at least 1")
	case c.ErrorBackoff <= 0:
		return bad("ErrorBackoff", "must be positive")
	}
	return nil
}

// EventKind says what an Event reports.
type EventKind uint8

const (
	// EventAdmitted: a device was admitted to Iteration (startFLJob).
	EventAdmitted EventKind = iota
	// EventUploaded: a device's update was accepted (updateModel).
	EventUploaded
	// EventDeviceDone: a device got the global model of Iteration.
	EventDeviceDone
	// EventEvaluated: the global model of Iteration was evaluated; Loss
	// and Accuracy are set.
	EventEvaluated
	// EventDeviceStopped: a device stopped; Err says why (ErrJobFinished
	// when the job finished).
	EventDeviceStopped
)

var eventNames = [...]string{"admitted", "uploaded", "device-done", "evaluated", "device-stopped"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// Event is a progress report. The counts are those of Iteration at the
// time of the event.
type Event struct {
	Kind      EventKind
	Device    int
	Iteration int32
	// Round is the round the newest iteration is in: "startFLJob",
	// "updateModel" or "getModel" (devices done with it).
	Round string
	// Admitted, Uploaded and Done count the devices of Iteration that
	// passed each round.
	Admitted, Uploaded, Done int
	// Active is the number of devices still running.
	Active int
	// Loss and Accuracy (EventEvaluated) are of the global model of
	// Iteration on the test set.
	Loss, Accuracy float64
	// Unchanged (EventEvaluated): that model is the one the iteration
	// started from (the previous iteration's, or the initial model), bit
	// for bit, as servers store it again when an iteration fails.
	Unchanged bool
	Err       error
	Elapsed   time.Duration
}

// iterStat is what the run knows about one iteration.
type iterStat struct {
	admitted, uploaded, done int
	firstAdmit, firstDone    time.Time
	evaluated, unchanged     bool
	loss, accuracy           float64
	// start is the model the iteration started from, kept until its
	// global model is evaluated (training runs that evaluate only).
	start *model.Model
}

// run is the state of one Run.
type run struct {
	cfg   Config
	start time.Time
	cnt   counters
	trace *tracer // nil without Config.Trace
	devs  []*simDevice

	// jobDone is set once a device was told the job finished: the devices
	// turned away with OutOfTime then stop instead of sleeping up to
	// OutOfTimeMaxWait to be told the same.
	jobDone atomic.Bool

	trainSem chan struct{}

	// planIters is the job's fl_iteration_num from the last FLPlan any
	// device of the run received (0 if none yet): it tells a finished job
	// from a disabled one, also to a device never admitted itself.
	planIters atomic.Int32

	mu       sync.Mutex
	iters    map[int32]*iterStat
	newest   int32
	active   int
	finished int
	devErrs  []error
	devIters int64
	evalQ    []evalJob
	evalWake chan struct{}
	evalNext int32 // iterations below it were queued for evaluation
}

type evalJob struct {
	iteration int32
	m         *model.Model
}

// Run runs cfg.Devices devices until every one has stopped or ctx ends,
// and returns the summary. The error is nil when the job finished (at
// least one device was told so), ctx's error when it ended first, and an
// error naming the first device error when every device stopped on
// errors, or the trace's write error (Config.Trace) when there was no
// other. The summary is returned in every case.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &run{
		cfg:      cfg,
		start:    time.Now(),
		trainSem: make(chan struct{}, runtime.GOMAXPROCS(0)),
		iters:    map[int32]*iterStat{},
		active:   cfg.Devices,
		evalWake: make(chan struct{}, 1),
		evalNext: -1 << 31,
	}
	if cfg.Trace != nil {
		r.trace = newTracer(cfg.Trace)
	}

	// Build the devices before starting any goroutine, so a bad option
	// fails the whole run.
	devs := make([]*simDevice, cfg.Devices)
	httpc := device.NewHTTPClient(cfg.Devices)
	defer httpc.CloseIdleConnections()
	var test *mnist.Subset
	if cfg.Mode == ModeTrain && cfg.Evaluate {
		test = mnist.Test().All().Take(cfg.EvalSize)
	}
	var block *flmsg.ModelBlock
	if cfg.Mode == ModeLoad {
		var err error
		if block, err = r.loadBlock(ctx, httpc); err != nil {
			return nil, err
		}
	}
	for i := range devs {
		d, err := r.newDevice(i, httpc, block)
		if err != nil {
			return nil, err
		}
		devs[i] = d
	}

	var evalWG, devWG sync.WaitGroup
	evalCtx, stopEval := context.WithCancel(ctx)
	defer stopEval()
	if test != nil {
		evalWG.Add(1)
		go func() {
			defer evalWG.Done()
			r.evaluator(evalCtx, test)
		}()
	}
	r.devs = devs
	devWG.Add(len(devs))
	for _, d := range devs {
		dctx, stop := context.WithCancelCause(ctx)
		d.stop = stop
		go func() {
			defer devWG.Done()
			defer stop(nil)
			d.loop(dctx)
		}()
	}
	devWG.Wait()
	// Let the evaluator finish the queued iterations unless ctx ended.
	r.mu.Lock()
	r.evalQ = append(r.evalQ, evalJob{iteration: -1}) // end marker
	r.mu.Unlock()
	r.wakeEvaluator()
	evalWG.Wait()

	s := r.summary()
	var err error
	switch {
	case ctx.Err() != nil:
		err = ctx.Err()
	case r.finished > 0:
	case len(r.devErrs) > 0:
		err = fmt.Errorf("all %d devices stopped on errors, the first: %w", cfg.Devices, r.devErrs[0])
	default:
		err = errors.New("BUG: devices stopped without a reason")
	}
	if r.trace != nil {
		if terr := r.trace.close(); err == nil {
			err = terr
		}
	}
	return s, err
}

// simDevice is one device of a run.
type simDevice struct {
	r     *run
	i     int
	flid  string
	stop  context.CancelCauseFunc // ends the device's context
	c     *device.Client
	iter  int32 // the iteration it was last admitted to
	rng   *rand.Rand
	shard *mnist.Subset
	tr    *lenet.Trainer

	// turnedAway is set while the device's last answer was OutOfTime: it
	// waits to start again at startFLJob.
	turnedAway atomic.Bool
}

// loadBlock builds the update every load device sends: random weights in
// the shapes of the model a server serves, × DataSize (devices upload
// weight × data_size), serialized once.
func (r *run) loadBlock(ctx context.Context, httpc *fasthttp.Client) (*flmsg.ModelBlock, error) {
	o := r.cfg.Device
	o.FLID = r.cfg.FLIDPrefix + "shapes"
	o.Servers, o.URLPrefix, o.HTTP, o.DataSize = r.cfg.Servers, r.cfg.URLPrefix, httpc, r.cfg.DataSize
	o.Layout, o.LoadBlock, o.Observe = nil, nil, nil
	c, err := device.New(o)
	if err != nil {
		return nil, fmt.Errorf("cannot create the device that learns the model's shapes: %w", err)
	}
	g, err := c.PollModel(ctx, 0)
	if err == nil && g.Retcode != flmsg.Succeed {
		err = &device.RetcodeError{Endpoint: device.EndpointGetModel, Retcode: g.Retcode, Reason: g.Reason}
	}
	if err != nil {
		return nil, fmt.Errorf("cannot learn the served model's shapes: %w", err)
	}
	m := c.Model() // the Client is dropped: its model becomes the update
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 0x10ad))
	scale := float64(r.cfg.DataSize)
	for i := range m.Data {
		m.Data[i] = float32(rng.NormFloat64() * 0.05 * scale)
	}
	block := new(flmsg.ModelBlock)
	block.Set(m)
	return block, nil
}

func (r *run) newDevice(i int, httpc *fasthttp.Client, block *flmsg.ModelBlock) (*simDevice, error) {
	cfg := &r.cfg
	d := &simDevice{r: r, i: i, rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1))}
	o := cfg.Device
	o.FLID = fmt.Sprintf("%s%d", cfg.FLIDPrefix, i)
	d.flid = o.FLID
	o.Servers = cfg.Servers
	o.URLPrefix = cfg.URLPrefix
	o.Seed = cfg.Seed*1_000_003 + uint64(i) + 1
	o.DataSize = cfg.DataSize
	o.Layout = nil
	o.LoadBlock = block
	if cfg.Mode == ModeTrain {
		shard, err := mnist.Shard(cfg.Devices, i, cfg.Seed, cfg.IID)
		if err != nil {
			return nil, fmt.Errorf("cannot shard MNIST for device %d: %w", i, err)
		}
		d.shard = shard.Take(cfg.ShardSize)
		d.tr = lenet.NewTrainer()
		o.DataSize = int32(d.shard.Len())
		o.Layout = model.LeNet5Layout()
	}
	o.Observe = func(ob device.Observation) { r.observe(d, ob) }
	o.HTTP = httpc
	c, err := device.New(o)
	if err != nil {
		return nil, fmt.Errorf("cannot create device %d: %w", i, err)
	}
	d.c = c
	return d, nil
}

// disabledWait is how long a device waits before asking again whether a
// disabled job was enabled; staleWait is the first wait after a refusal
// that a server's status contradicts, doubled each time in a row.
const (
	disabledWait = time.Second
	staleWait    = 20 * time.Millisecond
)

// afterJobRefusal tells a disabled (or since re-enabled) job from a
// finished one after the plain-text "disabled or finished", and returns
// how long to wait before asking again, or finished. A fedcluster server
// says which in its GET /status; one that says "running" answered after
// the refusal (the job was enabled, or the scheduler's decision that the
// job finished has not reached that server yet), so the device asks again
// soon, stale times in a row. Other servers (MindSpore's) are judged by
// their current iteration (from getModel, served in both cases) against
// the plan's last one, which holds only while iterations number from 1:
// after a MindSpore newInstance they restart at 1, while fedcluster's keep
// growing.
func (d *simDevice) afterJobRefusal(ctx context.Context, stale int) (wait time.Duration, finished bool) {
	for range min(len(d.r.cfg.Servers), 3) { // a dead server is passed over next time
		if st, err := d.c.Status(ctx); err == nil {
			switch st.Instance {
			case device.InstanceFinished:
				return 0, true
			case device.InstanceRunning:
				return min(staleWait<<min(stale, 10), disabledWait), false
			}
			return disabledWait, false
		}
	}
	plan := d.r.planIters.Load()
	if plan == 0 {
		return 0, true
	}
	r, err := d.c.GetModel(ctx, d.iter)
	return disabledWait, !(err == nil && r.Iteration <= plan)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// loop runs iterations until the job finishes, ctx ends or too many
// errors in a row.
func (d *simDevice) loop(ctx context.Context) {
	r := d.r
	errs, stale := 0, 0
	for {
		res, err := d.c.RunIteration(ctx, d)
		if err == nil {
			errs, stale = 0, 0
			r.deviceDone(d, res)
			continue
		}
		if errors.Is(err, device.ErrJobFinished) {
			// "disabled or finished" while the job is not finished: it is
			// disabled (/disableFLS), or a server's state lags; ask again.
			if wait, finished := d.afterJobRefusal(ctx, stale); !finished {
				stale++
				if sleep(ctx, wait) != nil {
					r.deviceStopped(d, context.Cause(ctx))
					return
				}
				continue
			}
		}
		if errors.Is(err, device.ErrJobFinished) || ctx.Err() != nil {
			if !errors.Is(err, device.ErrJobFinished) {
				err = context.Cause(ctx) // errJobFinishedElsewhere when so
			}
			r.deviceStopped(d, err)
			return
		}
		errs++
		if errs >= r.cfg.MaxDeviceErrors {
			r.deviceStopped(d, fmt.Errorf("device %d stopped after %d failed iterations in a row: %w", d.i, errs, err))
			return
		}
		if r.cfg.Logger != nil {
			r.cfg.Logger.Warn("device iteration failed", zap.Int("device", d.i), zap.Error(err))
		}
		t := time.NewTimer(time.Duration(errs) * r.cfg.ErrorBackoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			r.deviceStopped(d, context.Cause(ctx))
			return
		}
	}
}

// Train is the device's Trainer.
func (d *simDevice) Train(ctx context.Context, job *device.Job) (float32, error) {
	d.iter = job.Iteration
	if job.HasPlan {
		d.r.planIters.Store(job.Plan.Iterations)
	}
	d.r.admitted(d, job.Iteration, job.Model)
	if d.r.cfg.Mode == ModeLoad {
		return 0, nil // the update is the run's shared block
	}
	select {
	case d.r.trainSem <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-d.r.trainSem }()
	epochs, batch, lr := 1, 32, float32(0.01)
	if job.HasPlan {
		epochs, batch, lr = int(job.Plan.Epochs), int(job.Plan.MiniBatch), job.Plan.LR
	}
	if epochs < 1 || batch < 1 || !(lr > 0) {
		return 0, fmt.Errorf("unusable FLPlan: epochs %d, mini-batch %d, lr %g", epochs, batch, lr)
	}
	loss, err := d.tr.Train(job.Model, d.shard, epochs, batch, lr, d.rng)
	return float32(loss), err
}
