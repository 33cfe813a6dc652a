// Package modelstore is a server's model store: the global model of the
// newest iterations in memory, each one checkpointed to disk as safetensors
// before anyone can read it.
//
// # Retention (following MindSpore's ModelStore)
//
// MindSpore keeps at most 3 models in memory plus iteration 0, the initial
// model (fl/server/model_store.cc, Initialize(max_count = 3)), and ≈r1.7
// deletes older checkpoint files after writing a new one. Here Keep (default
// 3) models are kept in memory plus iteration 0, which is never evicted; on
// disk the newest Keep checkpoint files are kept, iteration 0 included only
// while it is among the newest.
//
// # Durability (DESIGN promise 3)
//
// Put writes <Dir>/<FLName>_iteration_<N>.safetensors to a temporary name in
// the same directory, fsyncs the file, renames it and fsyncs the directory;
// only then is the model visible to Get and Latest. A failed write publishes
// nothing and returns the error: the caller fails the iteration. Stage does
// the slow half (write and fsync under the temporary name) ahead of time, so
// that Commit at the iteration switch is only the rename and the directory
// fsync; a crash between them leaves a temporary file that recovery removes
// (or, complete, keeps for CommitLeftover).
// The file's fsync runs in the background from Stage on, and Commit renames
// without waiting for it: the two syncs overlap, and Commit publishes only
// once both are done. A crash before that may leave the new name on weights
// not yet on disk; recovery's checksum sets such a file aside, and nothing
// was served from it.
// The same directory fsync retires the checkpoints beyond Keep, one of
// them renamed to a temporary name as the spare that the next checkpoint
// overwrites in place, so a steady job allocates no inode and no blocks
// and syncs the directory once per checkpoint. Each
// checkpoint carries fl_name, iteration and the sha256 of its weights in the
// safetensors metadata; recovery checks all three.
//
// # Recovery
//
// Open lists Dir, loads the newest Keep valid checkpoints, and renames
// corrupt or partial ones to <name>.corrupt (logged) so that they never
// count as "newest". It removes leftover temporary files of this FLName,
// but one holding a complete checkpoint of the next iteration, which
// CommitLeftover can publish (a server that died with the cluster between
// writing an iteration's aggregate and storing it). When no
// checkpoint loads, the initial model becomes iteration 0 and is written.
// A checkpoint directory belongs to one server process: give each server its
// own (as MindSpore's example scripts do with server_<rank>/).
//
// # Concurrency and ownership
//
// All methods are safe for concurrent use: Puts are serialized, and readers
// never wait for a checkpoint write. Models are immutable snapshots: Put takes
// ownership of the model it is given (the caller must not write to it after)
// and Get/Latest return the stored model itself, which callers must not
// modify.
package modelstore

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/safetensors"
)

// DefaultKeep is MindSpore's ModelStore max_count.
const DefaultKeep = 3

// Sentinel errors.
var (
	// ErrOutOfOrder is returned by Put for an iteration not after the latest.
	ErrOutOfOrder = errors.New("iteration not after the latest stored one")
	// ErrLayout is returned by Put for a model of another architecture.
	ErrLayout = errors.New("model layout differs from the store's")
)

// Options configure a Store.
type Options struct {
	// Dir is the checkpoint directory (checkpoint_dir); created if missing.
	// Empty keeps models in memory only, with no checkpoints.
	Dir string
	// FLName (fl_name) prefixes checkpoint files; required, no path
	// separators.
	FLName string
	// Keep is how many newest models stay in memory (plus iteration 0) and
	// how many newest checkpoint files stay on disk; 0 means DefaultKeep.
	Keep int
	// MemKeep, when in 1..Keep and Dir is set, keeps fewer of the newest
	// models in memory than on disk, iteration 0 not kept apart: for large
	// models, whose older iterations are then answered with the newest, as
	// for any iteration no longer kept.
	MemKeep int
	// FS is the file system; nil means OSFS.
	FS FS
	// Logger receives recovery and cleanup messages; nil means none.
	Logger *zap.Logger
	// InitFile (model.init_file) is a safetensors file holding the initial
	// model. It is read through FS.
	InitFile string
	// Initial is the initial model when InitFile is empty; the store takes
	// ownership. When both are empty, model.InitLeNet5(Seed) is used.
	Initial *model.Model
	// Seed seeds model.InitLeNet5 when neither InitFile nor Initial is set.
	Seed uint64
}

// Validate reports the first invalid field.
func (o *Options) Validate() error {
	if o.FLName == "" {
		return fmt.Errorf("invalid modelstore options: FLName is empty")
	}
	if strings.ContainsAny(o.FLName, "/\\\x00") || o.FLName == "." || o.FLName == ".." {
		return fmt.Errorf("invalid modelstore options: FLName %q must be a plain file name part", o.FLName)
	}
	if o.Keep < 0 {
		return fmt.Errorf("invalid modelstore options: Keep is %d, want >= 0", o.Keep)
	}
	if o.MemKeep < 0 {
		return fmt.Errorf("invalid modelstore options: MemKeep is %d, want >= 0", o.MemKeep)
	}
	return nil
}

// Store holds the newest models. See the package documentation.
type Store struct {
	opts   Options
	fs     FS
	log    *zap.Logger
	layout *model.Layout
	tmpSeq atomic.Uint64

	writeMu sync.Mutex // serializes Put
	// ckpts are the iterations whose checkpoint files are in Dir,
	// ascending: kept as files are renamed and removed, so that a commit
	// retires old checkpoints without listing the directory. Guarded by
	// writeMu (Open fills it before the store is shared).
	ckpts []uint64

	spareMu sync.Mutex
	spare   string // an evicted checkpoint's file under a temporary name, for the next writeTemp; "" if none

	// leftover is a checkpoint Open found complete under a temporary name
	// (CommitLeftover); nil if none.
	leftover atomic.Pointer[leftover]

	mu           sync.RWMutex
	models       map[uint64]*model.Model
	sums         map[uint64]string // hex SHA-256 of each kept model
	latest       uint64
	mapCommitted bool // SetMapCommitted
}

// Open builds the store: the initial model, then the newest valid
// checkpoints found in Dir.
func Open(opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Keep == 0 {
		opts.Keep = DefaultKeep
	}
	s := &Store{opts: opts, fs: opts.FS, log: opts.Logger, models: map[uint64]*model.Model{}, sums: map[uint64]string{}}
	if s.fs == nil {
		s.fs = OSFS
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.log = s.log.Named("modelstore")

	initial, err := s.initialModel()
	if err != nil {
		return nil, err
	}
	s.layout = initial.Layout
	s.models[0] = initial
	s.sums[0] = initial.SHA256()
	if opts.Dir == "" {
		return s, nil
	}
	if err := s.fs.MkdirAll(opts.Dir); err != nil {
		return nil, fmt.Errorf("cannot create checkpoint dir %s: %w", opts.Dir, err)
	}
	loaded, err := s.recover()
	if err != nil {
		return nil, err
	}
	s.evictLocked() // no lock needed yet: s is not shared
	if loaded == 0 {
		tmp, synced, err := s.writeTemp(0, initial, s.sums[0])
		if err == nil {
			err = s.rename(tmp, 0, synced)
		}
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Store) initialModel() (*model.Model, error) {
	switch {
	case s.opts.InitFile != "":
		m, _, err := read(s.fs, s.opts.InitFile, nil)
		if err != nil {
			return nil, fmt.Errorf("cannot load initial model: %w", err)
		}
		return m, nil
	case s.opts.Initial != nil:
		m := s.opts.Initial
		if m.Layout == nil || len(m.Data) != m.Layout.Size {
			return nil, fmt.Errorf("cannot use initial model: weights do not match the layout")
		}
		return m, nil
	default:
		return model.InitLeNet5(s.opts.Seed), nil
	}
}

// CheckpointName is the file name of iteration iter's checkpoint.
func CheckpointName(flName string, iter uint64) string {
	return flName + "_iteration_" + strconv.FormatUint(iter, 10) + ".safetensors"
}

const (
	ckptSuffix    = ".safetensors"
	tmpMarker     = ".safetensors.tmp"
	corruptSuffix = ".corrupt"
)

// parseName classifies a directory entry: a checkpoint of iteration iter, a
// leftover temporary file, or neither.
func (s *Store) parseName(name string) (iter uint64, ckpt, tmp bool) {
	prefix := s.opts.FLName + "_iteration_"
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false, false
	}
	if i := strings.Index(rest, tmpMarker); i > 0 {
		_, err := strconv.ParseUint(rest[:i], 10, 64)
		return 0, false, err == nil
	}
	num, ok := strings.CutSuffix(rest, ckptSuffix)
	if !ok {
		return 0, false, false
	}
	it, err := strconv.ParseUint(num, 10, 64)
	if err != nil || CheckpointName(s.opts.FLName, it) != name {
		return 0, false, false
	}
	return it, true, false
}

// recover loads the newest valid checkpoints and returns how many loaded.
func (s *Store) recover() (int, error) {
	names, err := s.fs.ReadDir(s.opts.Dir)
	if err != nil {
		return 0, fmt.Errorf("cannot list checkpoint dir %s: %w", s.opts.Dir, err)
	}
	var iters []uint64
	var temps []string
	for _, name := range names {
		it, ckpt, tmp := s.parseName(name)
		switch {
		case tmp:
			temps = append(temps, filepath.Join(s.opts.Dir, name))
		case ckpt:
			iters = append(iters, it)
		}
	}
	sort.Slice(iters, func(i, j int) bool { return iters[i] > iters[j] })
	setAside := map[uint64]bool{}
	defer func() {
		slices.Reverse(iters)
		s.ckpts = slices.DeleteFunc(iters, func(it uint64) bool { return setAside[it] })
		s.keepLeftover(temps)
	}()
	loaded := 0
	for _, it := range iters { // newest first
		if loaded >= s.memKeep() && it != 0 {
			continue // older than the newest kept in memory; iteration 0 is always tried
		}
		p := filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, it))
		m, meta, err := read(s.fs, p, s.layout)
		if err == nil && (meta.FLName != s.opts.FLName || meta.Iteration != it || meta.SHA256 == "") {
			err = fmt.Errorf("metadata %+v does not match fl_name %q iteration %d", meta, s.opts.FLName, it)
		}
		if errors.Is(err, errStorage) || errors.Is(err, safetensors.ErrLayout) {
			// Not a corrupt file: a disk problem, or a checkpoint of another
			// model (init_file changed). Stop rather than set it aside and
			// restart from an older iteration.
			return 0, fmt.Errorf("cannot recover checkpoint %s: %w", p, err)
		}
		if err != nil {
			setAside[it] = s.quarantine(p, err)
			continue
		}
		s.models[it] = m
		s.sums[it] = meta.SHA256
		s.latest = max(s.latest, it)
		loaded++
		s.log.Info("recovered checkpoint", zap.String("path", p), zap.Uint64("iteration", it), zap.String("sha256", meta.SHA256))
	}
	return loaded, nil
}

// leftover is a checkpoint found complete under a temporary name at Open.
type leftover struct {
	path string
	iter uint64
	sum  string
	m    *model.Model
}

// keepLeftover keeps, of the temporary files recovery found, the one
// holding a complete checkpoint of the iteration after the newest
// recovered (its weights match the checksum in its header), and removes
// the others. A server writes the aggregate there before it reports its
// checksum, and renames it when the scheduler says the iteration ended: a
// server that died in between (with the whole cluster: the scheduler
// saved the iteration's end and no server lived to store it) still has
// the model on disk, and CommitLeftover publishes it once the scheduler
// confirms its checksum.
func (s *Store) keepLeftover(temps []string) {
	for _, p := range temps {
		if s.leftover.Load() == nil {
			m, meta, err := read(s.fs, p, s.layout)
			if err == nil && meta.FLName == s.opts.FLName && meta.Iteration == s.latest+1 && meta.SHA256 != "" {
				s.leftover.Store(&leftover{path: p, iter: meta.Iteration, sum: meta.SHA256, m: m})
				s.log.Info("kept a complete checkpoint left under a temporary name, until the scheduler confirms it",
					zap.String("path", p), zap.Uint64("iteration", meta.Iteration), zap.String("sha256", meta.SHA256))
				continue
			}
		}
		if err := s.fs.Remove(p); err != nil {
			s.log.Warn("cannot remove leftover temporary checkpoint", zap.String("path", p), zap.Error(err))
		} else {
			s.log.Info("removed leftover temporary checkpoint", zap.String("path", p))
		}
	}
}

// CommitLeftover publishes the checkpoint Open found complete under a
// temporary name if it is iteration iter's with checksum sum, as Commit
// does a staged one. It reports whether it did. iter must follow the
// latest stored iteration.
func (s *Store) CommitLeftover(iter uint64, sum string) (bool, error) {
	lo := s.leftover.Load()
	if lo == nil || lo.iter != iter || lo.sum != sum || !s.leftover.CompareAndSwap(lo, nil) {
		return false, nil
	}
	// Its bytes may not be on disk yet: the process that wrote them died.
	f, err := s.fs.OpenWrite(lo.path)
	if err != nil {
		s.removeTemp(lo.path)
		return false, fmt.Errorf("cannot put iteration %d: cannot reopen %s: %w", iter, lo.path, err)
	}
	st := &Staged{s: s, iter: iter, m: lo.m, sum: sum, tmp: lo.path, synced: syncInBackground(f, lo.path)}
	if err := st.Commit(); err != nil {
		return false, err
	}
	return true, nil
}

// DropLeftover removes the checkpoint Open found under a temporary name,
// once nothing can claim it.
func (s *Store) DropLeftover() {
	if lo := s.leftover.Swap(nil); lo != nil {
		s.removeTemp(lo.path)
	}
}

// quarantine renames a corrupt checkpoint to <name>.corrupt and says
// whether it did.
func (s *Store) quarantine(p string, cause error) bool {
	s.log.Warn("skipping corrupt checkpoint", zap.String("path", p), zap.Error(cause))
	if err := s.fs.Rename(p, p+corruptSuffix); err != nil {
		s.log.Warn("cannot set corrupt checkpoint aside", zap.String("path", p), zap.Error(err))
		return false
	}
	return true
}

// Staged is an iteration's model with its checkpoint already written under
// a temporary name and its sync under way: the slow part of Put, done ahead
// (while the cluster still agrees on the model) so that publishing it at
// the iteration switch is a rename and the directory's sync. Commit
// publishes it, Discard drops it; exactly one of them must be called.
type Staged struct {
	s    *Store
	iter uint64
	m    *model.Model
	sum  string
	tmp  string // the temporary file; "" without a checkpoint dir
	err  error
	// synced delivers the outcome of tmp's background fsync; nil without
	// tmp, and once Commit or Discard has taken it.
	synced <-chan error
}

// syncInBackground fsyncs and closes f, which holds path, and delivers the
// outcome. The goroutine belongs to the Staged that holds the channel: its
// Commit (through rename) or Discard waits for it.
func syncInBackground(f File, path string) <-chan error {
	done := make(chan error, 1)
	go func() {
		err := f.Sync()
		if err != nil {
			err = fmt.Errorf("cannot sync checkpoint %s: %w", path, err)
		}
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("cannot close checkpoint %s: %w", path, cerr)
		}
		done <- err
	}()
	return done
}

// Stage validates m and, when the store has a checkpoint dir, writes its
// checkpoint under a temporary name and starts its fsync. It may run
// concurrently with anything else on the store; the store takes ownership
// of m. An empty sum is computed. A mapped model (a failed iteration's,
// stored again) is copied from its checkpoint file, not read through its
// mapping, which would bring the whole model into the server's memory.
func (s *Store) Stage(iter uint64, m *model.Model, sum string) *Staged {
	st := &Staged{s: s, iter: iter, m: m, sum: sum}
	switch {
	case m == nil || m.Layout == nil || len(m.Data) != m.Layout.Size:
		st.err = fmt.Errorf("cannot put iteration %d: model weights do not match its layout", iter)
		return st
	case !m.Layout.Equal(s.layout):
		st.err = fmt.Errorf("cannot put iteration %d: %w", iter, ErrLayout)
		return st
	}
	if b, ok := s.Backing(m); ok {
		if st := s.stageCopy(iter, b, sum); !errors.Is(st.err, ErrNoDraft) {
			return st
		}
	}
	if st.sum == "" {
		st.sum = m.SHA256()
	}
	if s.opts.Dir != "" {
		st.tmp, st.synced, st.err = s.writeTemp(iter, m, st.sum)
		if st.err != nil {
			st.err = fmt.Errorf("cannot put iteration %d: %w", iter, st.err)
		}
	}
	return st
}

// writeTemp writes iteration iter's checkpoint under a temporary name,
// which it returns, and starts its fsync.
func (s *Store) writeTemp(iter uint64, m *model.Model, sum string) (tmp string, synced <-chan error, err error) {
	f, tmp, err := s.tempFile(iter)
	if err != nil {
		return "", nil, err
	}
	defer func() {
		if err != nil {
			s.removeTemp(tmp)
		}
	}()
	n, err := encodeTo(f, m, Meta{FLName: s.opts.FLName, Iteration: iter, SHA256: sum})
	if err == nil {
		err = f.Truncate(n) // a recycled file may have been longer
	}
	if err != nil {
		f.Close()
		return "", nil, fmt.Errorf("cannot write checkpoint %s: %w", tmp, err)
	}
	return tmp, syncInBackground(f, tmp), nil
}

// tempName is a fresh temporary name for iteration iter's checkpoint.
func (s *Store) tempName(iter uint64) string {
	final := filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, iter))
	return final + ".tmp" + strconv.FormatUint(s.tmpSeq.Add(1), 10)
}

// tempFile opens the file a checkpoint is written in: the spare a commit
// set aside, overwritten in place, or else a new one. Overwriting allocates
// no inode and no blocks: with a checkpoint every few milliseconds,
// creating and deleting files cost a server more CPU than hashing the
// model, and as long again in the checkpoint's write and fsync.
func (s *Store) tempFile(iter uint64) (File, string, error) {
	if spare := s.takeSpare(); spare != "" {
		f, err := s.fs.OpenWrite(spare)
		if err == nil {
			return f, spare, nil
		}
		s.log.Warn("cannot reuse a spare checkpoint file; creating one", zap.String("path", spare), zap.Error(err))
		_ = s.fs.Remove(spare)
	}
	tmp := s.tempName(iter)
	f, err := s.fs.Create(tmp)
	if err != nil {
		return nil, "", fmt.Errorf("cannot create checkpoint %s: %w", tmp, err)
	}
	return f, tmp, nil
}

// rename gives a staged checkpoint its final name, retires the
// checkpoints beyond the newest Keep and fsyncs the directory while the
// file's own fsync, whose outcome synced delivers, may still run. On
// failure no file is left under either name, and the retired checkpoint
// is back.
func (s *Store) rename(tmp string, iter uint64, synced <-chan error) error {
	final := filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, iter))
	if err := s.fs.Rename(tmp, final); err != nil {
		<-synced
		s.removeTemp(tmp)
		return fmt.Errorf("cannot rename checkpoint to %s: %w", final, err)
	}
	r := s.retire(iter)
	dirErr := s.fs.SyncDir(s.opts.Dir)
	err := <-synced
	if dirErr != nil {
		err = fmt.Errorf("cannot sync checkpoint dir %s: %w", s.opts.Dir, dirErr)
	}
	if err != nil {
		// The file may be visible but not durable: do not publish it.
		s.removeTemp(final)
		r.undo(s)
		if dirErr == nil {
			// The new name is durable: so must its removal be, or a
			// crash would bring back what this commit did not publish.
			if err := s.fs.SyncDir(s.opts.Dir); err != nil {
				s.log.Warn("cannot sync checkpoint dir after a failed commit", zap.String("dir", s.opts.Dir), zap.Error(err))
			}
		}
		return err
	}
	s.ckpts = withIteration(s.ckpts, iter)
	r.finish(s)
	return nil
}

func (s *Store) removeTemp(path string) {
	if err := s.fs.Remove(path); err != nil {
		s.log.Warn("cannot remove temporary checkpoint", zap.String("path", path), zap.Error(err))
	}
}

// Iteration is the iteration the staged model is for.
func (st *Staged) Iteration() uint64 { return st.iter }

// Commit renames the checkpoint to its final name, retires the checkpoint
// files beyond the newest Keep (one becomes the spare the next checkpoint
// overwrites), fsyncs the directory once for both, and makes the model
// visible to Get and Latest. The iteration must still be after the latest
// stored one.
func (st *Staged) Commit() error {
	s := st.s
	if st.err != nil {
		return st.err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.RLock()
	latest := s.latest
	s.mu.RUnlock()
	if st.iter <= latest {
		st.Discard()
		return fmt.Errorf("cannot put iteration %d (latest %d): %w", st.iter, latest, ErrOutOfOrder)
	}
	m := st.m
	if st.tmp != "" {
		tmp := st.tmp
		st.tmp = ""
		synced := st.synced
		st.synced = nil
		if err := s.rename(tmp, st.iter, synced); err != nil {
			return fmt.Errorf("cannot put iteration %d: %w", st.iter, err)
		}
		s.mu.RLock()
		mapping := s.mapCommitted
		s.mu.RUnlock()
		// A sealed draft's model is a mapping of the file already:
		// renamed, the file is the same.
		if _, mapped := s.Backing(m); mapping && !mapped {
			mm, err := mapCheckpoint(filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, st.iter)), s.layout)
			if err != nil {
				s.log.Warn("cannot map the new checkpoint; the model stays in memory", zap.Uint64("iteration", st.iter), zap.Error(err))
			} else {
				m = mm
			}
		}
	}
	s.mu.Lock()
	s.models[st.iter] = m
	s.sums[st.iter] = st.sum
	s.latest = st.iter
	s.evictLocked()
	s.mu.Unlock()
	return nil
}

// Discard removes a staged checkpoint that will not be committed.
func (st *Staged) Discard() {
	if st.synced != nil {
		<-st.synced // the file is ours to remove once its sync ended
		st.synced = nil
	}
	if st.tmp != "" {
		st.s.removeTemp(st.tmp)
		st.tmp = ""
	}
}

// Put stores m as iteration iter: checkpoint first (when Dir is set), then
// visible to Get and Latest, then older checkpoints and models beyond Keep
// are dropped. iter must be greater than the latest stored iteration. The
// store takes ownership of m: the caller must not modify it afterwards.
func (s *Store) Put(iter uint64, m *model.Model) error {
	return s.PutSum(iter, m, "")
}

// PutSum is Put for a caller that already knows m's SHA256 (sum); an empty
// sum is computed.
func (s *Store) PutSum(iter uint64, m *model.Model, sum string) error {
	return s.Stage(iter, m, sum).Commit()
}

// SetMemKeep changes Options.MemKeep (for a caller that learns the model's
// size from Open) and evicts what it no longer keeps.
func (s *Store) SetMemKeep(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.MemKeep = max(n, 0)
	s.evictLocked()
}

// memKeep is how many of the newest models stay in memory besides
// iteration 0.
func (s *Store) memKeep() int {
	if s.opts.Dir != "" && s.opts.MemKeep > 0 {
		return min(s.opts.MemKeep, s.opts.Keep)
	}
	return s.opts.Keep
}

// newestOnly says whether iteration 0 is evicted like any other (MemKeep).
func (s *Store) newestOnly() bool { return s.opts.Dir != "" && s.opts.MemKeep > 0 }

// evictLocked keeps the newest memKeep models and iteration 0 (unless
// newestOnly).
func (s *Store) evictLocked() {
	keep := s.memKeep()
	apart := 1
	if s.newestOnly() {
		apart = 0
	}
	if len(s.models) <= keep+apart {
		return
	}
	iters := make([]uint64, 0, len(s.models))
	for it := range s.models {
		if it != 0 || apart == 0 {
			iters = append(iters, it)
		}
	}
	sort.Slice(iters, func(i, j int) bool { return iters[i] > iters[j] })
	for _, it := range iters[min(keep, len(iters)):] {
		delete(s.models, it)
		delete(s.sums, it)
	}
}

// retirement is what a commit does to the checkpoints beyond the newest
// Keep: one renamed to a temporary name to become the spare (when the
// store holds none), the others to remove once the commit is durable.
type retirement struct {
	from, spare string // the spare's checkpoint name and temporary name
	spareIter   uint64
	remove      []uint64 // iterations whose checkpoints go
}

// retire renames the oldest checkpoint beyond the newest Keep to a
// temporary name, unless the store holds a spare, and lists the rest for
// removal. The commit's directory sync makes that rename durable before
// the file is handed out as the spare: overwritten under its old name, a
// crash would leave that name on another iteration's model.
func (s *Store) retire(iter uint64) retirement {
	var r retirement
	iters := withIteration(slices.Clone(s.ckpts), iter)
	if len(iters) <= s.opts.Keep {
		return r
	}
	s.spareMu.Lock()
	haveSpare := s.spare != ""
	s.spareMu.Unlock()
	s.mu.RLock()
	if s.mapCommitted {
		haveSpare = true // never overwrite a file a mapped model may lie in
	}
	s.mu.RUnlock()
	for _, it := range iters[:len(iters)-s.opts.Keep] {
		p := filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, it))
		if !haveSpare && r.spare == "" {
			tmp := s.tempName(it)
			if err := s.fs.Rename(p, tmp); err == nil {
				r.from, r.spare, r.spareIter = p, tmp, it
				continue
			}
		}
		r.remove = append(r.remove, it)
	}
	return r
}

// withIteration adds iter to the ascending list its, unless there.
func withIteration(its []uint64, iter uint64) []uint64 {
	if i, found := slices.BinarySearch(its, iter); !found {
		its = slices.Insert(its, i, iter)
	}
	return its
}

// finish, once the commit is durable, keeps the spare and removes the
// other retired checkpoints. Failures are logged: the new checkpoint does
// not depend on them.
func (r retirement) finish(s *Store) {
	gone := r.remove[:0]
	for _, it := range r.remove {
		p := filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, it))
		if err := s.fs.Remove(p); err != nil {
			s.log.Warn("cannot remove old checkpoint", zap.String("path", p), zap.Error(err))
			continue // still there: the next commit tries again
		}
		gone = append(gone, it)
	}
	if r.spare != "" {
		gone = append(gone, r.spareIter)
	}
	s.ckpts = slices.DeleteFunc(s.ckpts, func(it uint64) bool { return slices.Contains(gone, it) })
	if r.spare == "" {
		return
	}
	s.spareMu.Lock()
	spare := r.spare
	if s.spare == "" {
		s.spare, spare = spare, ""
	}
	s.spareMu.Unlock()
	if spare != "" {
		s.removeTemp(spare)
	}
}

// undo puts the would-be spare back under its checkpoint name after a
// failed commit: the store still keeps what it kept before.
func (r retirement) undo(s *Store) {
	if r.spare == "" {
		return
	}
	if err := s.fs.Rename(r.spare, r.from); err != nil {
		s.log.Warn("cannot restore a retired checkpoint", zap.String("path", r.from), zap.Error(err))
		s.removeTemp(r.spare)
	}
}

// Close removes the spare checkpoint file set aside by a commit, so that a
// server stopped cleanly leaves only its checkpoints. Call it once nothing
// is written any more; models already in memory stay readable.
func (s *Store) Close() {
	if spare := s.takeSpare(); spare != "" {
		s.removeTemp(spare)
	}
}

// takeSpare hands over the spare file a commit set aside ("" if none).
func (s *Store) takeSpare() string {
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	spare := s.spare
	s.spare = ""
	return spare
}

// Get returns iteration iter's model if it is still kept. The model must not
// be modified.
func (s *Store) Get(iter uint64) (*model.Model, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.models[iter]
	return m, ok
}

// Has reports whether iteration iter is kept in memory.
func (s *Store) Has(iter uint64) bool {
	_, ok := s.Get(iter)
	return ok
}

// Latest returns the newest iteration and its model (iteration 0 and the
// initial model before any Put). The model must not be modified.
func (s *Store) Latest() (uint64, *model.Model) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.latest, s.models[s.latest]
}

// LatestSum is Latest with the model's checksum (Sum), read together: the
// checksum is the one of the model returned.
func (s *Store) LatestSum() (uint64, *model.Model, string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.latest, s.models[s.latest], s.sums[s.latest]
}

// GetSum is Get with the model's checksum (Sum), read together.
func (s *Store) GetSum(iter uint64) (*model.Model, string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m, ok := s.models[iter]
	return m, s.sums[iter], ok
}

// Sum returns the hex SHA-256 (model.Model.SHA256) of iteration iter's
// model, computed once by Put or verified at recovery: use it rather than
// hashing the model again (about 50 ms for 10M floats).
func (s *Store) Sum(iter uint64) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sum, ok := s.sums[iter]
	return sum, ok
}

// Iterations lists the kept iterations in increasing order.
func (s *Store) Iterations() []uint64 {
	s.mu.RLock()
	out := make([]uint64, 0, len(s.models))
	for it := range s.models {
		out = append(out, it)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Layout is the layout every stored model has.
func (s *Store) Layout() *model.Layout { return s.layout }

// Encoded returns iteration iter's model serialized with Encode, for
// shipping to a peer, or false if the iteration is not kept.
func (s *Store) Encoded(iter uint64) ([]byte, bool, error) {
	s.mu.RLock()
	m, ok := s.models[iter]
	sum := s.sums[iter]
	s.mu.RUnlock()
	if !ok {
		return nil, false, nil
	}
	b, err := s.EncodeModel(m, iter, sum)
	return b, true, err
}

// EncodeModel is Encode of m as iteration iter with checksum sum (computed
// when empty), for a model of this store's layout. A mapped model's
// weights are read from its file, not through its mapping, which would
// then stay in the server's memory.
func (s *Store) EncodeModel(m *model.Model, iter uint64, sum string) ([]byte, error) {
	bk, mapped := s.Backing(m)
	if !mapped || sum == "" || !m.Layout.Equal(s.layout) {
		return Encode(m, Meta{FLName: s.opts.FLName, Iteration: iter, SHA256: sum})
	}
	pre, err := s.prefix(iter, sum)
	if err != nil {
		return nil, fmt.Errorf("cannot encode model: %w", err)
	}
	b := make([]byte, len(pre)+4*len(m.Data))
	copy(b, pre)
	if _, err := bk.File.ReadAt(b[len(pre):], bk.DataOffset); err != nil {
		return nil, fmt.Errorf("cannot encode model: cannot read checkpoint %s: %w", bk.File.Name(), err)
	}
	return b, nil
}

// Truncate forgets the models of iterations from and later, in memory and
// on disk: a cluster whose control state restarted at an earlier iteration
// (a new job in a folder with an old job's checkpoints) must not serve or
// keep models of a timeline it abandoned. Iteration 0 is never removed.
// It returns the iterations removed.
func (s *Store) Truncate(from uint64) ([]uint64, error) {
	if from == 0 {
		from = 1
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	var gone []uint64
	for it := range s.models {
		if it >= from {
			gone = append(gone, it)
			delete(s.models, it)
			delete(s.sums, it)
		}
	}
	s.latest = 0
	for it := range s.models {
		s.latest = max(s.latest, it)
	}
	empty := len(s.models) == 0
	s.mu.Unlock()
	if empty { // iteration 0 was not kept in memory (MemKeep): derive it again
		m, err := s.initialModel()
		if err != nil {
			return gone, fmt.Errorf("cannot restore iteration 0: %w", err)
		}
		s.mu.Lock()
		s.models[0], s.sums[0], s.latest = m, m.SHA256(), 0
		s.mu.Unlock()
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i] < gone[j] })
	if s.opts.Dir == "" {
		return gone, nil
	}
	var errs []error
	s.ckpts = slices.DeleteFunc(s.ckpts, func(it uint64) bool {
		if it < from {
			return false
		}
		if err := s.fs.Remove(filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, it))); err != nil {
			errs = append(errs, err)
			return false
		}
		return true
	})
	if err := s.fs.SyncDir(s.opts.Dir); err != nil {
		errs = append(errs, err)
	}
	return gone, errors.Join(errs...)
}
