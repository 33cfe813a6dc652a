package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/local"
	"github.com/fedcluster/fedcluster/node/procs"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/rest"
)

// runLaunch is the seed's run_sched.py / run_server.py: it starts the
// scheduler, or local_server_num servers on fl_server_port.., as background
// processes, each logging into its own folder, and returns once they listen.
func runLaunch(name string, args []string) int {
	role := "server"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		role, args = args[0], args[1:]
	}
	if role != "server" && role != "scheduler" {
		fmt.Fprintf(os.Stderr, "fedcluster launch: role must be scheduler or server, got %q\n", role)
		return 2
	}
	c, code := loadConfig(name+" "+role, config.RoleLaunch, args)
	if c == nil {
		return code
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "fedcluster launch: %v\n", err)
		return 1
	}
	var plans []launchPlan
	if role == "scheduler" {
		id := c.Cluster.NodeID
		if id == "" {
			id = "20" // the seed's run_mobile_sched.py sets MS_NODE_ID=20
		}
		plans = append(plans, launchPlan{role: "scheduler", nodeID: id, dir: "scheduler",
			ready: net.JoinHostPort(config.DialableIP(c.Cluster.ManageIP), strconv.Itoa(c.Cluster.SchedulerManagePort))})
	} else {
		n := c.Server.LocalCount(c.Cluster.ServerNum)
		for i := 0; i < n; i++ {
			id := strconv.Itoa(i)
			if c.Cluster.NodeID != "" {
				id = c.Cluster.NodeID
				if n > 1 {
					id += "_" + strconv.Itoa(i)
				}
			}
			port := c.Server.FLServerPort + i
			plans = append(plans, launchPlan{role: "server", nodeID: id, dir: "server_" + id, port: port,
				ready: net.JoinHostPort(config.DialableIP(c.Server.ServerIP), strconv.Itoa(port)), checkpoints: c.Model.CheckpointDir})
		}
	}
	for _, p := range plans {
		pid, err := p.start(self, args)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fedcluster launch: %v\n", err)
			return 1
		}
		fmt.Printf("launched %s node_id=%s pid=%d listening=%s log=%s\n", p.role, p.nodeID, pid, p.ready, filepath.Join(p.dir, p.role+".log"))
	}
	return 0
}

type launchPlan struct {
	role   string
	nodeID string
	dir    string
	port   int
	ready  string // address whose HTTP port answers once the process is up
	// checkpoints is the group's checkpoint_dir; each server writes into
	// its own folder below it.
	checkpoints string
}

// start runs the process detached (its own session, so it outlives the
// launcher and a terminal's Ctrl-C) and waits until it listens.
func (p launchPlan) start(self string, args []string) (int, error) {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return 0, fmt.Errorf("cannot create %s: %w", p.dir, err)
	}
	out, err := os.OpenFile(filepath.Join(p.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	// Later flags win, so these override what the user passed for the group.
	full := append([]string{p.role}, args...)
	full = append(full, "--node_id="+p.nodeID, "--log_dir="+p.dir)
	if p.role == "server" {
		full = append(full, "--fl_server_port="+strconv.Itoa(p.port), "--local_server_num=1",
			"--checkpoint_dir="+filepath.Join(p.checkpoints, p.dir))
	}
	cmd := exec.Command(self, full...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = withoutEnv(os.Environ(), "MS_NODE_ID")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("cannot start %s %s: %w", p.role, p.nodeID, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitUp(ctx, p, exited); err != nil {
		_ = cmd.Process.Kill()
		return 0, fmt.Errorf("%s %s did not start: %w (see %s)", p.role, p.nodeID, err, p.dir)
	}
	return cmd.Process.Pid, nil
}

// waitUp polls the process's HTTP port until it answers as the node that
// was started (another process may hold the port: then the new one exits),
// the process exits, or ctx ends. Polling is the only way to learn that
// another process is up.
func waitUp(ctx context.Context, p launchPlan, exited <-chan error) error {
	url := "http://" + p.ready + "/status"
	if p.role == "scheduler" {
		url = "http://" + p.ready + "/nodes"
	}
	err := local.Poll(ctx, func() (bool, error) {
		select {
		case err := <-exited:
			return false, fmt.Errorf("exited: %v", err)
		default:
		}
		var status struct {
			NodeID string          `json:"node_id"`
			Nodes  []rest.NodeInfo `json:"nodeIds"`
		}
		try, cancel := context.WithTimeout(ctx, time.Second) // a foreign listener may never answer
		defer cancel()
		if local.GetJSON(try, url, &status) != nil {
			return false, nil
		}
		for _, n := range status.Nodes {
			if n.Role == ctl.RoleScheduler {
				status.NodeID = n.NodeID
			}
		}
		return status.NodeID == p.nodeID, nil
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("no answer from %s: %w", url, err)
	}
	return err
}

func withoutEnv(env []string, key string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// runStop is the seed's finish_mobile.py.
func runStop(name string, args []string) int {
	c, code := loadConfig(name, config.RoleStop, args)
	if c == nil {
		return code
	}
	entries, err := procs.List(c.Cluster.SchedulerPort)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fedcluster stop: %v\n", err)
		return 1
	}
	if len(entries) == 0 {
		// Nothing to stop here; a cluster launched with another
		// FEDCLUSTER_RUN_DIR or TMPDIR registered elsewhere and still runs.
		fmt.Fprintf(os.Stderr, "fedcluster stop: no running process is registered for scheduler port %d in %s (launched with another FEDCLUSTER_RUN_DIR or TMPDIR?)\n",
			c.Cluster.SchedulerPort, procs.Dir(c.Cluster.SchedulerPort))
	}
	procs.Stop(entries, 10*time.Second, func(e procs.Entry) {
		fmt.Printf("killed %d\n", e.PID)
	})
	fmt.Println("The services are stopped successfully.")
	return 0
}
