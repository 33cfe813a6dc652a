package scheduler

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/iteration"
	"github.com/fedcluster/fedcluster/node/membership"
)

// persisted is the scheduler's control state as saved for recovery: a
// restarted scheduler reloads it and the servers, reconnecting with their
// node ids, find their ranks, the iteration and the instance as they were.
type persisted struct {
	Membership membership.Snapshot `json:"membership"`
	Iteration  iteration.Snapshot  `json:"iteration"`
	Leaving    []string            `json:"leaving,omitempty"`
	SavedAt    time.Time           `json:"saved_at"`
}

// persistEvery bounds how often the state is written while it changes
// (each admission changes it); iteration ends and membership changes are
// written at once.
const persistEvery = 200 * time.Millisecond

func (s *Scheduler) recoveryPath() string {
	if !s.cfg.Recovery.Enabled() {
		return ""
	}
	return s.cfg.Recovery.StorageFilePath
}

// restore loads the persisted state, if recovery is on and a file exists.
func (s *Scheduler) restore() error {
	path := s.recoveryPath()
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot read recovery state: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("cannot parse recovery state %s: %w", path, err)
	}
	now := s.now()
	it, err := iteration.Restore(p.Iteration, iterationConfig(s.cfg), now)
	if err != nil {
		return fmt.Errorf("cannot restore iteration state from %s: %w", path, err)
	}
	s.iter = it
	s.members = membership.Restore(p.Membership, time.Duration(s.cfg.Cluster.HeartbeatTimeout), now)
	for _, id := range p.Leaving {
		s.leaving[id] = true
	}
	// The restored machine counts the saved members as joined; none is
	// connected yet, so they are lost until they register again.
	for _, id := range it.Status().Members {
		s.joined[id] = true
	}
	s.log.Info("[Scheduler start]: recovered control state", zap.String("from", path), zap.Uint64("iteration", it.Iteration()),
		zap.Int("servers", len(p.Membership.Nodes)), zap.Time("saved_at", p.SavedAt))
	return nil
}

// saveLocked writes the control state when it changed: at once when
// forced (iteration ends, membership and instance changes), else at most
// every persistEvery.
func (s *Scheduler) saveLocked(force bool) {
	path := s.recoveryPath()
	if path == "" || !s.dirty {
		return
	}
	now := s.now()
	if !force && now.Sub(s.savedAt) < persistEvery {
		return
	}
	p := persisted{Membership: s.members.Snapshot(), Iteration: s.iter.Snapshot(), SavedAt: now}
	for id := range s.leaving {
		p.Leaving = append(p.Leaving, id)
	}
	b, err := json.Marshal(p)
	if err != nil {
		s.log.Error("cannot encode recovery state", zap.Error(err))
		return
	}
	if err := writeAtomic(path, b); err != nil {
		s.log.Error("cannot write recovery state", zap.String("path", path), zap.Error(err))
		return
	}
	s.dirty, s.savedAt = false, now
}

// writeAtomic replaces path with b: temporary file, fsync, rename, fsync dir.
func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
