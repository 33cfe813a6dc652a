package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fedcluster/fedcluster/node/device/sim"
)

// TestDevicesCommand: `fedcluster devices --load` runs a job to its end
// against two servers, exits 0 with its summary, and --trace writes every
// exchange as a JSON line.
func TestDevicesCommand(t *testing.T) {
	const devices, iterations = 4, 3
	c := startCluster(t, 2, "--start_fl_job_threshold="+strconv.Itoa(devices), "--fl_iteration_num="+strconv.Itoa(iterations))
	trace := filepath.Join(t.TempDir(), "trace.jsonl")
	servers := fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", c.ServerPorts[0], c.ServerPorts[1])
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "devices", "--load", "--devices="+strconv.Itoa(devices),
		"--servers="+servers, "--trace="+trace, "--timeout=60s").CombinedOutput()
	if err != nil {
		t.Fatalf("devices: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "device-iterations/s") {
		t.Fatalf("no summary in the output:\n%s", out)
	}

	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	accepted := map[string]bool{}
	iters := map[int32]bool{}
	lines := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines++
		var l sim.TraceLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("trace line %q: %v", sc.Text(), err)
		}
		if l.Server != c.ServerURL(0) && l.Server != c.ServerURL(1) {
			t.Errorf("trace line %q: unknown server", sc.Text())
		}
		if l.Endpoint == "updateModel" && l.Class == "SUCCEED" {
			key := fmt.Sprint(l.FLID, "/", l.Iteration)
			if accepted[key] {
				t.Errorf("two accepted updates traced for %s", key)
			}
			accepted[key], iters[l.Iteration] = true, true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(accepted) != devices*iterations || len(iters) != iterations {
		t.Fatalf("%d lines, %d accepted updates in %d iterations traced, want %d in %d", lines, len(accepted), len(iters), devices*iterations, iterations)
	}

	// Unusable flags are usage errors (exit 2) naming the flag, before any
	// device starts.
	for _, bad := range []struct{ flag, want string }{
		{"--trace=" + filepath.Join(t.TempDir(), "missing", "trace.jsonl"), "--trace"},
		{"--devices=0", "--devices must be at least 1"},
		{"--data_size=0", "--data_size must be from 1"},
		{"--data_size=4294967296", "--data_size must be from 1"},
		{"--shard_size=-1", "--shard_size must not be negative"},
		{"--eval_size=-5", "--eval_size must not be negative"},
		{"--train --load", "exclude each other"},
	} {
		args := append([]string{"devices", "--load", "--servers=" + servers}, strings.Fields(bad.flag)...)
		out, err = exec.CommandContext(ctx, binary, args...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), bad.want) {
			t.Errorf("devices %s: %v, want exit 2 and %q\n%s", bad.flag, err, bad.want, out)
		}
	}
}
