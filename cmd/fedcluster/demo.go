package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/fedcluster/fedcluster/node/device/sim"
	"github.com/fedcluster/fedcluster/node/local"
)

// runDemo is the main job on embedded defaults: a scheduler and 4 servers as
// real processes on free loopback ports, 8 devices training LeNet-5 on
// their MNIST shards through them, a live display, a table of accuracy and
// loss per iteration, and every process stopped at the end or on Ctrl-C.
func runDemo(name string, args []string) int {
	fs := flag.NewFlagSet("fedcluster demo", flag.ContinueOnError)
	servers := fs.Int("servers", 4, "servers to start")
	devices := fs.Int("devices", 8, "training devices")
	iterations := fs.Int("fl_iteration_num", 10, "federated iterations")
	shard := fs.Int("shard_size", 2000, "MNIST training images per device")
	epochs := fs.Int("client_epoch_num", 1, "local epochs per iteration")
	batch := fs.Int("client_batch_size", 32, "local batch size")
	lr := fs.Float64("client_learning_rate", 0.1, "local learning rate")
	keep := fs.Bool("keep", false, "keep the working folder (logs, checkpoints, metrics.json)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if msg := checkDemoFlags(*servers, *devices, *iterations, *shard, *epochs, *batch, *lr); msg != "" {
		fmt.Fprintln(os.Stderr, "fedcluster demo:", msg)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster demo:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "fedcluster-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster demo:", err)
		return 1
	}
	if *keep {
		fmt.Printf("working folder (kept): %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	startCtx, cancelStart := context.WithTimeout(ctx, 60*time.Second)
	defer cancelStart()
	metrics := dir + "/config.json"
	if err := os.WriteFile(metrics, []byte(`{"metrics": {"storage_type": 1, "storage_file_path": "`+dir+`/metrics.json"}}`), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster demo:", err)
		return 1
	}
	fmt.Printf("starting a scheduler and %d servers on loopback\n", *servers)
	c, err := local.Start(startCtx, local.Options{Binary: self, Dir: dir, Servers: *servers, Args: []string{
		"--config_file_path=" + metrics,
		"--heartbeat_interval=500ms", "--heartbeat_timeout=5s",
		"--start_fl_job_threshold=" + strconv.Itoa(*devices),
		"--fl_iteration_num=" + strconv.Itoa(*iterations),
		"--client_epoch_num=" + strconv.Itoa(*epochs),
		"--client_batch_size=" + strconv.Itoa(*batch),
		"--client_learning_rate=" + strconv.FormatFloat(*lr, 'g', -1, 64),
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster demo: cannot start the cluster:", err)
		return 1
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			c.Stop()
			fmt.Println("cluster stopped")
		}
	}
	defer stop()
	var nodes json.RawMessage
	if err := local.GetJSON(ctx, c.ManageURL()+"/nodes", &nodes); err == nil {
		fmt.Printf("cluster ready: GET %s/nodes → %s\n", c.ManageURL(), nodes)
	}
	var urls []string
	for i := range c.ServerPorts {
		urls = append(urls, c.ServerURL(i))
	}
	cfg := sim.DefaultConfig(*devices, urls)
	cfg.ShardSize = *shard
	fmt.Printf("%d devices training LeNet-5 on %d MNIST images each, %d iterations\n", *devices, *shard, *iterations)
	summary, err := runSim(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster demo:", err)
		return 1
	}
	fmt.Println()
	summary.WriteText(os.Stdout)
	f, ok := summary.Final()
	if !ok || !f.Evaluated {
		fmt.Fprintln(os.Stderr, "fedcluster demo: no iteration was evaluated")
		return 1
	}
	stop()
	fmt.Printf("final test accuracy: %.4f\n", f.Accuracy)
	return 0
}

// checkDemoFlags returns what is wrong with the demo's flags, naming the
// flag, or "": before any process starts, not as a server's complaint
// about the parameter a flag became.
func checkDemoFlags(servers, devices, iterations, shard, epochs, batch int, lr float64) string {
	for _, f := range []struct {
		name string
		v    int
	}{{"servers", servers}, {"devices", devices}, {"fl_iteration_num", iterations}, {"shard_size", shard}, {"client_epoch_num", epochs}, {"client_batch_size", batch}} {
		if f.v < 1 || f.v > math.MaxInt32 {
			return fmt.Sprintf("--%s must be from 1 to %d, got %d", f.name, math.MaxInt32, f.v)
		}
	}
	if !(lr > 0) || math.IsInf(lr, 0) {
		return fmt.Sprintf("--client_learning_rate must be a positive number, got %g", lr)
	}
	return ""
}
