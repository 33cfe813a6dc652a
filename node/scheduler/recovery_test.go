package scheduler

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
)

// TestCleanStopMarksTheSavedState: the state a scheduler saves as it stops
// holds every count, so a scheduler restored from it does not fail its
// iteration when servers come back without their partial sums. The mark
// must not outlive that restart: the restored scheduler saves at once
// without it, so that if it dies, the next one knows the state may lack
// its last counts.
func TestCleanStopMarksTheSavedState(t *testing.T) {
	cfg := config.Default()
	cfg.Cluster.SchedulerPort, cfg.Cluster.SchedulerManagePort = 0, 0
	cfg.Recovery.StorageType = 1
	cfg.Recovery.StorageFilePath = filepath.Join(t.TempDir(), "recovery.json")
	saved := func() persisted {
		t.Helper()
		b, _, err := newStateFile(cfg.Recovery.StorageFilePath).load()
		if err != nil || b == nil {
			t.Fatalf("no saved state: %v", err)
		}
		var p persisted
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}

	s, err := New(&cfg, "sched", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !saved().Closed {
		t.Fatal("the state saved by Close is not marked as a clean stop's")
	}

	s, err = New(&cfg, "sched", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.uncertainRestore {
		t.Error("a scheduler restored from a clean stop's state takes it for one that may lack counts")
	}
	if saved().Closed {
		t.Error("the restored scheduler left the clean stop's mark as the newest state")
	}
}

// TestOneSchedulerPerRecoveryState: a second scheduler on the same
// recovery state is refused while the first runs, naming the holder and
// the key to change, and starts once the first has stopped.
func TestOneSchedulerPerRecoveryState(t *testing.T) {
	cfg := config.Default()
	cfg.Cluster.SchedulerPort, cfg.Cluster.SchedulerManagePort = 0, 0
	cfg.Recovery.StorageType = 1
	cfg.Recovery.StorageFilePath = filepath.Join(t.TempDir(), "recovery.json")
	first, err := New(&cfg, "sched", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(&cfg, "sched", zap.NewNop())
	if want := fmt.Sprintf("in use by another scheduler (pid %d)", os.Getpid()); err == nil || !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), "recovery.storage_file_path") {
		t.Fatalf("second scheduler: %v, want %q and the key to change", err, want)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := New(&cfg, "sched", zap.NewNop())
	if err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	second.Close()
}
