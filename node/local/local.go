// Package local runs a whole cluster (a scheduler and N servers) as real
// processes of the fedcluster binary on free loopback ports, for the demo,
// the integration tests and the load benchmarks. Every process it starts is
// a child in its own process group, stopped by Stop (and killed by the
// kernel's parent-death signal if the owner dies without calling it).
package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options describe the cluster to start.
type Options struct {
	// Binary is the fedcluster executable.
	Binary string
	// Dir is the working folder: logs, checkpoints, recovery files.
	Dir string
	// Servers is the number of servers.
	Servers int
	// Args are extra flags given to the scheduler and every server.
	Args []string
	// Env is extra environment for every process.
	Env []string
	// Stdout, when set, receives every process's output instead of log files.
	Stdout io.Writer
	// ServerArgs, when set, gives server i extra flags (they win over Args).
	ServerArgs func(i int) []string
	// OnPorts, when set, learns the chosen ports before any process starts.
	OnPorts func(scheduler, manage int, servers []int)
}

// Cluster is a running local cluster.
type Cluster struct {
	opts          Options
	SchedulerPort int
	ManagePort    int
	ServerPorts   []int

	mu    sync.Mutex
	procs map[string]*proc // "scheduler" or the server's node id
}

type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1, below the
// kernel's ephemeral range when it can: a port is free when checked but
// bound by its process only later, and in between any outgoing connection
// could take an ephemeral one as its source port.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	lo, hi := belowEphemeral()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		addr := "127.0.0.1:0"
		if hi > lo && tries < 50*n {
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+rand.IntN(hi-lo)))
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			if addr != "127.0.0.1:0" {
				continue // taken: try another
			}
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// belowEphemeral is the port range [lo, hi) FreePorts picks from: from
// 10000 up to the start of the ephemeral range (Linux's
// ip_local_port_range), or none where that is unknown or too low.
func belowEphemeral() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	var first, last int
	if _, err := fmt.Sscan(string(b), &first, &last); err != nil || first <= 11000 {
		return 0, 0
	}
	return 10000, first
}

// Start starts the scheduler and the servers and waits until the cluster
// is CLUSTER_READY. A process that exits meanwhile (a configuration error,
// a port taken) fails Start at once with what it printed last.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	ports, err := FreePorts(2 + opts.Servers)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: opts, SchedulerPort: ports[0], ManagePort: ports[1], ServerPorts: ports[2:], procs: make(map[string]*proc)}
	if opts.OnPorts != nil {
		opts.OnPorts(c.SchedulerPort, c.ManagePort, c.ServerPorts)
	}
	if err := c.StartScheduler(); err != nil {
		return nil, err
	}
	for i := range c.ServerPorts {
		var extra []string
		if opts.ServerArgs != nil {
			extra = opts.ServerArgs(i)
		}
		if err := c.StartServer(strconv.Itoa(i), c.ServerPorts[i], extra...); err != nil {
			c.Stop()
			return nil, err
		}
	}
	// The scheduler is ready once all have registered; each server is once
	// it has its iteration and membership.
	urls := []string{c.ManageURL() + "/state"}
	for i := range c.ServerPorts {
		urls = append(urls, c.ServerURL(i)+"/status")
	}
	for _, url := range urls {
		err := Poll(ctx, func() (bool, error) {
			if err := c.startFailure(); err != nil {
				return false, err
			}
			return stateIs(ctx, url, "CLUSTER_READY"), nil
		})
		if err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// startFailure returns an error for a process that has exited, with the
// last lines it printed.
func (c *Cluster) startFailure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, p := range c.procs {
		select {
		case <-p.exited:
		default:
			continue
		}
		name := key
		if key != "scheduler" {
			name = "server " + key
		}
		err := fmt.Errorf("the %s exited during start: %v", name, p.err)
		if c.opts.Stdout == nil {
			if b, rerr := os.ReadFile(filepath.Join(c.opts.Dir, key+".out")); rerr == nil && len(bytes.TrimSpace(b)) > 0 {
				err = fmt.Errorf("%w:\n%s", err, lastLines(b, 5))
			}
		}
		return err
	}
	return nil
}

// lastLines returns the last n lines of b.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// WaitServerReady polls server i's /status until it reports a ready cluster.
func (c *Cluster) WaitServerReady(ctx context.Context, i int) error {
	return Poll(ctx, func() (bool, error) { return stateIs(ctx, c.ServerURL(i)+"/status", "CLUSTER_READY"), nil })
}

// stateIs reports whether the JSON object at url has cluster_state want;
// no answer (a process not up yet) is false.
func stateIs(ctx context.Context, url, want string) bool {
	var st struct {
		ClusterState string `json:"cluster_state"`
	}
	return GetJSON(ctx, url, &st) == nil && st.ClusterState == want
}

func (c *Cluster) common() []string {
	return append([]string{
		"--scheduler_ip=127.0.0.1",
		"--scheduler_port=" + strconv.Itoa(c.SchedulerPort),
		"--scheduler_manage_port=" + strconv.Itoa(c.ManagePort),
		"--server_num=" + strconv.Itoa(len(c.ServerPorts)),
	}, c.opts.Args...)
}

// StartScheduler (re)starts the scheduler.
func (c *Cluster) StartScheduler() error {
	return c.spawn("scheduler", append([]string{"scheduler", "--node_id=20", "--log_dir=" + filepath.Join(c.opts.Dir, "scheduler")}, c.common()...))
}

// StartServer (re)starts the server with node id on port.
func (c *Cluster) StartServer(nodeID string, port int, extra ...string) error {
	args := append([]string{"server", "--node_id=" + nodeID, "--fl_server_port=" + strconv.Itoa(port),
		"--log_dir=" + filepath.Join(c.opts.Dir, "server_"+nodeID),
		"--checkpoint_dir=" + filepath.Join(c.opts.Dir, "server_"+nodeID, "checkpoints")}, c.common()...)
	return c.spawn(nodeID, append(args, extra...))
}

func (c *Cluster) spawn(key string, args []string) error {
	cmd := exec.Command(c.opts.Binary, args...)
	cmd.Dir = c.opts.Dir
	cmd.Env = append(append(os.Environ(), "FEDCLUSTER_RUN_DIR="+filepath.Join(c.opts.Dir, "run")), c.opts.Env...)
	cmd.Stdout, cmd.Stderr = c.opts.Stdout, c.opts.Stdout
	if c.opts.Stdout == nil {
		// Keep what the process prints (panics, race reports) beside its logs.
		f, err := os.OpenFile(filepath.Join(c.opts.Dir, key+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start %s: %w", key, err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	c.mu.Lock()
	c.procs[key] = p
	c.mu.Unlock()
	return nil
}

// PID returns the pid of a process ("scheduler" or a server's node id).
func (c *Cluster) PID(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.procs[key]; p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// Kill sends sig to a process and waits for it to exit.
func (c *Cluster) Kill(key string, sig syscall.Signal) error {
	c.mu.Lock()
	p := c.procs[key]
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no process %s", key)
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return nil
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s ignored %v for 15s and was killed", key, sig)
	}
}

// Exited reports whether a process has exited.
func (c *Cluster) Exited(key string) bool {
	c.mu.Lock()
	p := c.procs[key]
	c.mu.Unlock()
	if p == nil {
		return true
	}
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Stop terminates every process (SIGTERM, then SIGKILL after 10 s) and
// waits for them.
func (c *Cluster) Stop() {
	c.mu.Lock()
	ps := make([]*proc, 0, len(c.procs))
	for _, p := range c.procs {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	for _, p := range ps {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, p := range ps {
		select {
		case <-p.exited:
		case <-ctx.Done():
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
}

// ManageURL is the base URL of the REST API.
func (c *Cluster) ManageURL() string { return "http://127.0.0.1:" + strconv.Itoa(c.ManagePort) }

// ServerURL is the base URL of server i's device port.
func (c *Cluster) ServerURL(i int) string {
	return "http://127.0.0.1:" + strconv.Itoa(c.ServerPorts[i])
}

// GetJSON fetches url and decodes a JSON answer into v.
func GetJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// WaitState polls /state until the cluster reaches want or ctx ends; an
// HTTP API offers no way to be told.
func (c *Cluster) WaitState(ctx context.Context, want string) error {
	return Poll(ctx, func() (bool, error) { return stateIs(ctx, c.ManageURL()+"/state", want), nil })
}

// Poll calls cond every 20 ms until it reports true, fails, or ctx ends.
func Poll(ctx context.Context, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("timed out: " + ctx.Err().Error())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Dir is the cluster's working folder.
func (c *Cluster) Dir() string { return c.opts.Dir }

// Reports returns what the processes printed that signals a defect: data
// race reports and panics, for tests to fail on.
func (c *Cluster) Reports() []string {
	files, _ := filepath.Glob(filepath.Join(c.opts.Dir, "*.out"))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, marker := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
			if i := bytes.Index(b, []byte(marker)); i >= 0 {
				out = append(out, filepath.Base(f)+": "+string(b[i:min(len(b), i+2000)]))
			}
		}
	}
	return out
}
