package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs `fedcluster demo` as a user would, shortened: it must train,
// end with the accuracy line, and leave no process behind.
func TestDemo(t *testing.T) {
	cmd := exec.Command(binary, "demo", "--devices=4", "--fl_iteration_num=3", "--shard_size=800")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := lines[len(lines)-1]
	v, ok := strings.CutPrefix(last, "final test accuracy: ")
	if !ok {
		t.Fatalf("last line %q\n%s", last, out.String())
	}
	acc, err := strconv.ParseFloat(v, 64)
	if err != nil || acc < 0.6 {
		t.Fatalf("accuracy %q after 3 short iterations (want ≥ 0.6)\n%s", v, out.String())
	}
	if !strings.Contains(out.String(), "iteration   3  test accuracy") {
		t.Fatalf("no per-iteration line:\n%s", out.String())
	}
	if pids := running(binary); len(pids) > 0 {
		t.Fatalf("processes left behind: %v", pids)
	}
}

// TestDemoInterrupted: Ctrl-C during the demo stops every process.
func TestDemoInterrupted(t *testing.T) {
	cmd := exec.Command(binary, "demo", "--devices=2", "--fl_iteration_num=50")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(out.String(), "training LeNet-5") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("demo never started training:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond) // waiting on another process's output
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("demo ignored Ctrl-C:\n%s", out.String())
	}
	if pids := running(binary); len(pids) > 0 {
		t.Fatalf("processes left behind after Ctrl-C: %v\n%s", pids, out.String())
	}
}

// running lists live processes executing the binary at path.
func running(path string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && strings.TrimSuffix(exe, " (deleted)") == path && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestDemoBadFlags: an unusable flag is a usage error naming it, before
// any process starts.
func TestDemoBadFlags(t *testing.T) {
	for _, bad := range []struct{ flag, want string }{
		{"--devices=0", "--devices must be from 1"},
		{"--servers=-1", "--servers must be from 1"},
		{"--fl_iteration_num=0", "--fl_iteration_num must be from 1"},
		{"--shard_size=-1", "--shard_size must be from 1"},
		{"--client_batch_size=0", "--client_batch_size must be from 1"},
		{"--client_learning_rate=0", "--client_learning_rate must be a positive number"},
		{"--client_learning_rate=NaN", "--client_learning_rate must be a positive number"},
	} {
		cmd := exec.Command(binary, "demo", bad.flag)
		cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), bad.want) || strings.Contains(string(out), "starting") {
			t.Errorf("demo %s: %v, want exit 2 and %q before anything starts\n%s", bad.flag, err, bad.want, out)
		}
	}
}
