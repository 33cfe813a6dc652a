package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fedcluster/fedcluster/node/local"
)

// runDemo starts a local cluster of real processes on free ports in a
// temporary folder, shows it working and stops it, also on Ctrl-C.
func runDemo(name string, args []string) int {
	fs := flag.NewFlagSet("fedcluster demo", flag.ContinueOnError)
	servers := fs.Int("servers", 4, "servers to start")
	keep := fs.Bool("keep", false, "keep the working folder (logs, checkpoints)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
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
	if !*keep {
		defer os.RemoveAll(dir)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	startCtx, cancelStart := context.WithTimeout(ctx, 60*time.Second)
	defer cancelStart()
	fmt.Printf("starting a scheduler and %d servers in %s\n", *servers, dir)
	c, err := local.Start(startCtx, local.Options{Binary: self, Dir: dir, Servers: *servers, Args: []string{"--heartbeat_interval=500ms", "--heartbeat_timeout=5s"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster demo: cannot start the cluster:", err)
		return 1
	}
	defer func() {
		c.Stop()
		fmt.Println("cluster stopped")
	}()
	var nodes json.RawMessage
	if err := local.GetJSON(ctx, c.ManageURL()+"/nodes", &nodes); err != nil {
		fmt.Fprintln(os.Stderr, "fedcluster demo:", err)
		return 1
	}
	var pretty map[string]any
	_ = json.Unmarshal(nodes, &pretty)
	out, _ := json.MarshalIndent(pretty, "", "  ")
	fmt.Printf("cluster ready; GET %s/nodes:\n%s\n", c.ManageURL(), out)
	return 0
}
