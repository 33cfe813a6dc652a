package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fedcluster/fedcluster/node/local"
)

// binary is the fedcluster executable the integration tests run.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fedcluster-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "fedcluster")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot build fedcluster: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startCluster starts a local cluster of real processes, stopped at cleanup.
func startCluster(t *testing.T, servers int, args ...string) *local.Cluster {
	t.Helper()
	return startClusterEnv(t, servers, nil, args...)
}

// startClusterEnv is startCluster with extra environment for every process.
func startClusterEnv(t *testing.T, servers int, env []string, args ...string) *local.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := local.Start(ctx, local.Options{Binary: binary, Dir: t.TempDir(), Servers: servers, Args: args, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		for _, r := range c.Reports() {
			t.Errorf("a cluster process reported:\n%s", r)
		}
	})
	return c
}
