// Package procs keeps a registry of the cluster processes running on this
// host, one small file per process under a folder named after the
// cluster's scheduler port, so that `fedcluster stop` finds exactly its own
// processes (not any command line that happens to contain a string) and
// never signals a recycled pid.
package procs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Entry describes one registered process.
type Entry struct {
	PID       int    `json:"pid"`
	Role      string `json:"role"`
	NodeID    string `json:"node_id"`
	StartTime uint64 `json:"start_time"` // /proc/<pid>/stat field 22, guards against pid reuse
	Path      string `json:"-"`
}

// Dir is the registry folder of the cluster whose scheduler listens on port.
// FEDCLUSTER_RUN_DIR overrides the base folder (tests, several users).
func Dir(port int) string {
	base := os.Getenv("FEDCLUSTER_RUN_DIR")
	if base == "" {
		base = filepath.Join(os.TempDir(), fmt.Sprintf("fedcluster-%d", os.Getuid()))
	}
	return filepath.Join(base, "port-"+strconv.Itoa(port))
}

// Register records the calling process and returns a func that removes the
// record.
func Register(port int, role, nodeID string) (func(), error) {
	dir := Dir(port)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create process registry: %w", err)
	}
	pid := os.Getpid()
	st, err := startTime(pid)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(Entry{PID: pid, Role: role, NodeID: nodeID, StartTime: st})
	path := filepath.Join(dir, strconv.Itoa(pid)+".json")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, fmt.Errorf("cannot register process: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("cannot register process: %w", err)
	}
	return func() { os.Remove(path) }, nil
}

// List returns the live registered processes of the cluster on port and
// removes stale records (dead or recycled pids).
func List(port int) ([]Entry, error) {
	dir := Dir(port)
	files, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".json") {
			continue
		}
		p := filepath.Join(dir, f.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var e Entry
		if json.Unmarshal(b, &e) != nil || e.PID <= 0 {
			os.Remove(p)
			continue
		}
		e.Path = p
		if !e.Alive() {
			os.Remove(p)
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// Alive reports whether the recorded process still runs (same pid and the
// same start time).
func (e Entry) Alive() bool {
	st, err := startTime(e.PID)
	return err == nil && st == e.StartTime && !zombie(e.PID)
}

// Stop sends SIGTERM to every entry, waits up to grace for them to exit,
// then SIGKILLs the rest. It calls killed for each process it stopped.
func Stop(entries []Entry, grace time.Duration, killed func(Entry)) {
	for _, e := range entries {
		_ = syscall.Kill(e.PID, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	pending := entries
	for len(pending) > 0 && time.Now().Before(deadline) {
		var still []Entry
		for _, e := range pending {
			if e.Alive() {
				still = append(still, e)
			} else {
				os.Remove(e.Path)
				killed(e)
			}
		}
		pending = still
		if len(pending) > 0 {
			time.Sleep(50 * time.Millisecond) // polling the kernel: no event tells us another process exited
		}
	}
	for _, e := range pending {
		_ = syscall.Kill(e.PID, syscall.SIGKILL)
		os.Remove(e.Path)
		killed(e)
	}
}

func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may hold spaces and parentheses: split after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

func startTime(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 20 {
		return 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 overall
}

func zombie(pid int) bool {
	f, err := statFields(pid)
	return err != nil || len(f) == 0 || f[0] == "Z" || f[0] == "X"
}
