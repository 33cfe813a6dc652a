package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/node/device/sim"
)

// runDevices runs simulated devices against a cluster until its job ends.
func runDevices(name string, args []string) int {
	fs := flag.NewFlagSet("fedcluster devices", flag.ContinueOnError)
	n := fs.Int("devices", 8, "number of simulated devices")
	servers := fs.String("servers", "127.0.0.1:6668", "servers: host:port, host:first-last port range, or a comma-separated list")
	train := fs.Bool("train", false, "train LeNet-5 on MNIST shards (the default unless --load)")
	load := fs.Bool("load", false, "send random updates of the served model's shapes, no training")
	nonIID := fs.Bool("non_iid", false, "shard MNIST by label instead of uniformly")
	seed := fs.Uint64("seed", 1, "seed of the shards and the devices")
	shard := fs.Int("shard_size", 0, "training images per device (0: 60000/devices)")
	evalSize := fs.Int("eval_size", 0, "test images evaluated per iteration (0: all 10000)")
	dataSize := fs.Int("data_size", 32, "data_size each device reports in --load mode")
	prefix := fs.String("http_url_prefix", "", "the servers' http_url_prefix")
	timeout := fs.Duration("timeout", 0, "give up after this long (0: never)")
	tracePath := fs.String("trace", "", "write one JSON line per HTTP exchange of every device to this file")
	fullModels := fs.Bool("full_models", false, "download the model in every startFLJob answer, as MindSpore's clients do, instead of reusing the one getModel brought")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if msg := checkDeviceFlags(*train, *load, *n, *dataSize, *shard, *evalSize); msg != "" {
		fmt.Fprintln(os.Stderr, "fedcluster devices:", msg)
		return 2
	}
	urls, err := device.ParseServers(*servers)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster devices:", err)
		return 2
	}
	cfg := sim.DefaultConfig(*n, urls)
	if *load {
		cfg.Mode = sim.ModeLoad
	}
	cfg.IID, cfg.Seed, cfg.ShardSize, cfg.EvalSize, cfg.DataSize, cfg.URLPrefix = !*nonIID, *seed, *shard, *evalSize, int32(*dataSize), *prefix
	cfg.Device.ReuseModel = !*fullModels
	var trace *os.File
	if *tracePath != "" {
		if trace, err = os.Create(*tracePath); err != nil {
			fmt.Fprintln(os.Stderr, "fedcluster devices: --trace:", err)
			return 2
		}
		cfg.Trace = trace
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if *timeout > 0 {
		var c context.CancelFunc
		ctx, c = context.WithTimeout(ctx, *timeout)
		defer c()
	}
	summary, err := runSim(ctx, cfg, os.Stdout)
	if trace != nil {
		if cerr := trace.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("cannot write the trace: %w", cerr)
		}
	}
	if summary != nil {
		fmt.Println()
		summary.WriteText(os.Stdout)
		if f, ok := summary.Final(); ok && f.Evaluated {
			fmt.Printf("final test accuracy: %.4f\n", f.Accuracy)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster devices:", err)
		return 1
	}
	return 0
}

// checkDeviceFlags returns what is wrong with the flags, naming the flag,
// or "".
func checkDeviceFlags(train, load bool, devices, dataSize, shard, evalSize int) string {
	switch {
	case train && load:
		return "--train and --load exclude each other"
	case devices < 1:
		return fmt.Sprintf("--devices must be at least 1, got %d", devices)
	case dataSize < 1 || dataSize > math.MaxInt32:
		return fmt.Sprintf("--data_size must be from 1 to %d, got %d", math.MaxInt32, dataSize)
	case shard < 0:
		return fmt.Sprintf("--shard_size must not be negative, got %d", shard)
	case evalSize < 0:
		return fmt.Sprintf("--eval_size must not be negative, got %d", evalSize)
	}
	return ""
}

// runSim runs the devices with a progress display: a line redrawn in place
// on a terminal, plain lines (one per evaluated iteration) otherwise.
func runSim(ctx context.Context, cfg sim.Config, out io.Writer) (*sim.Summary, error) {
	cfg.Device.RequestTimeout = 10 * time.Second // so Ctrl-C is prompt
	p := &progress{out: out, live: isTerminal(out), start: time.Now()}
	cfg.OnEvent = p.event
	s, err := sim.Run(ctx, cfg)
	p.finish()
	return s, err
}

type progress struct {
	out   io.Writer
	live  bool
	start time.Time

	mu       sync.Mutex
	last     time.Time
	acc      float64
	haveAcc  bool
	drawn    bool
	lastEval int32
}

func (p *progress) event(ev sim.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch ev.Kind {
	case sim.EventEvaluated:
		p.acc, p.haveAcc = ev.Accuracy, true
		if ev.Iteration > p.lastEval {
			p.lastEval = ev.Iteration
			p.clear()
			note := ""
			if ev.Unchanged {
				note = "  " + sim.UnchangedNote
			}
			fmt.Fprintf(p.out, "iteration %3d  test accuracy %.4f  loss %.4f  (%s)%s\n", ev.Iteration, ev.Accuracy, ev.Loss, time.Since(p.start).Round(100*time.Millisecond), note)
		}
	case sim.EventDeviceStopped:
		if ev.Err != nil && !errors.Is(ev.Err, device.ErrJobFinished) {
			p.clear()
			fmt.Fprintf(p.out, "device %d stopped: %v\n", ev.Device, ev.Err)
		}
	}
	if !p.live || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	acc := "-"
	if p.haveAcc {
		acc = fmt.Sprintf("%.4f", p.acc)
	}
	fmt.Fprintf(p.out, "\r\033[Kiteration %d  round %-11s  admitted %d  uploaded %d  done %d  devices %d  accuracy %s  %s",
		ev.Iteration, ev.Round, ev.Admitted, ev.Uploaded, ev.Done, ev.Active, acc, time.Since(p.start).Round(100*time.Millisecond))
	p.drawn = true
}

func (p *progress) clear() {
	if p.drawn {
		fmt.Fprint(p.out, "\r\033[K")
		p.drawn = false
	}
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clear()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
