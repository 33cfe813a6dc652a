package scheduler

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/flock"
	"github.com/fedcluster/fedcluster/node/iteration"
	"github.com/fedcluster/fedcluster/node/membership"
	"github.com/fedcluster/fedcluster/node/record"
	"github.com/fedcluster/fedcluster/wire/ctl"
)

// persisted is the scheduler's control state as saved for recovery: a
// restarted scheduler reloads it and the servers, reconnecting with their
// node ids, find their ranks, the iteration and the instance as they were.
type persisted struct {
	Membership membership.Snapshot `json:"membership"`
	Iteration  iteration.Snapshot  `json:"iteration"`
	Leaving    []string            `json:"leaving,omitempty"`
	SavedAt    time.Time           `json:"saved_at"`
	// LastNext and LastRecord are the end of the last iteration that
	// ended, saved before the servers are told and the record is written:
	// a scheduler that died in between tells the servers as they register
	// and writes the record at restart. PrevNext is the end before it.
	LastNext   *ctl.NextIteration `json:"last_next_iteration,omitempty"`
	PrevNext   *ctl.NextIteration `json:"prev_next_iteration,omitempty"`
	LastRecord *record.Record     `json:"last_record,omitempty"`
	// Closed marks the state a scheduler saved as it stopped: nothing was
	// counted after it.
	Closed bool `json:"closed,omitempty"`
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
	// Two schedulers saving into one state (a second one started on
	// another port, or a restart racing the old process's last save)
	// would overwrite each other's slots.
	unlock, err := flock.Lock(path + ".lock")
	if held := (*flock.HeldError)(nil); errors.As(err, &held) {
		return fmt.Errorf("recovery state %s is in use by another scheduler (pid %s): give each scheduler its own recovery.storage_file_path", path, held.PID)
	}
	if err != nil {
		return fmt.Errorf("cannot lock recovery.storage_file_path %s: %w", path, err)
	}
	s.unlockState = unlock
	s.stateFile = newStateFile(path)
	b, from, err := s.stateFile.load()
	if err != nil {
		return err
	}
	if b == nil {
		return nil
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return fmt.Errorf("cannot parse recovery state %s: %w", from, err)
	}
	now := s.now()
	it, err := iteration.Restore(p.Iteration, iterationConfig(s.cfg), now)
	if err != nil {
		return fmt.Errorf("cannot restore iteration state from %s: %w", from, err)
	}
	s.iter = it
	s.members = membership.Restore(p.Membership, time.Duration(s.cfg.Cluster.HeartbeatTimeout), now)
	for _, id := range p.Leaving {
		s.leaving[id] = true
	}
	s.lastNext, s.prevNext, s.lastRecord = p.LastNext, p.PrevNext, p.LastRecord
	// The restored machine counts the saved members as joined. None is
	// connected yet: each keeps its place, and the updates the state
	// counts for it, until it registers again with its partial sum
	// (Machine.Rejoined) or is declared dead.
	for _, id := range it.Status().Members {
		s.joined[id] = true
		s.awaited[id] = true
	}
	s.uncertainRestore = !p.Closed
	if p.Closed {
		// Saved again at once without the mark: if this scheduler dies,
		// its restart must not take the state for a clean stop's.
		s.dirty = true
		s.saveLocked(true)
	}
	s.log.Info("[Scheduler start]: recovered control state", zap.String("from", from), zap.Uint64("iteration", it.Iteration()),
		zap.Int("servers", len(p.Membership.Nodes)), zap.Time("saved_at", p.SavedAt), zap.Bool("clean_stop", p.Closed))
	return nil
}

// partialGoneLocked is called when a restored member will not register
// again with its partial sum: it restarted, or it was declared dead first.
// Unless the state was saved by a clean stop, updates the server
// acknowledged after the last save may be lost with the sum, and the
// restored iteration fails if their devices could be left waiting. It
// reports whether it did; the caller runs the actions.
func (s *Scheduler) partialGoneLocked(id string) bool {
	if !s.uncertainRestore || !s.iter.PartialGone(s.now(), id) {
		return false
	}
	s.log.Warn("a server of the restored iteration lost its partial sum: the iteration fails, since updates acknowledged after the last save may be lost",
		zap.String("node", id))
	return true
}

// saveLocked writes the control state when it changed: at once when
// forced (iteration ends, membership and instance changes), else at most
// every persistEvery.
func (s *Scheduler) saveLocked(force bool) {
	if s.stateFile == nil || !s.dirty {
		return // recovery off (restore opens the file when on), or saved
	}
	now := s.now()
	if !force && now.Sub(s.savedAt) < persistEvery {
		return
	}
	p := persisted{Membership: s.members.Snapshot(), Iteration: s.iter.Snapshot(), SavedAt: now, LastNext: s.lastNext, PrevNext: s.prevNext,
		LastRecord: s.lastRecord, Closed: s.closing}
	for id := range s.leaving {
		p.Leaving = append(p.Leaving, id)
	}
	b, err := json.Marshal(p)
	if err != nil {
		s.log.Error("cannot encode recovery state", zap.Error(err))
		return
	}
	if err := s.stateFile.save(b); err != nil {
		s.log.Error("cannot write recovery state", zap.String("path", s.stateFile.path), zap.Error(err))
		return
	}
	s.dirty, s.savedAt = false, now
}

// resumeRecords goes on with the records of the job whose state was
// restored: /records and the dashboard get metrics.json's last ones back,
// and the saved record of the last iteration that ended is appended unless
// metrics.json ends with it (the scheduler died after saving that
// iteration's end, before writing its record). A state saved before any
// iteration ended has none: metrics.json may hold another job's.
func (s *Scheduler) resumeRecords() {
	rec := s.lastRecord
	if rec == nil {
		return
	}
	if err := s.records.Reload(); err != nil {
		s.log.Warn("cannot read back the job's records", zap.Error(err))
	}
	last, ok, err := s.records.LastWritten()
	if err != nil {
		s.log.Warn("cannot tell whether the last iteration's record was written; not writing it again", zap.Uint64("iteration", rec.CurrentIteration), zap.Error(err))
		return
	}
	if ok && last >= rec.CurrentIteration {
		return
	}
	if err := s.records.Append(rec); err != nil {
		s.log.Error("cannot write metrics record", zap.Error(err))
		return
	}
	s.log.Info("wrote the record of an iteration that ended before the restart", zap.Uint64("iteration", rec.CurrentIteration))
}
