package modelstore

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"unsafe"
	"weak"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fedcluster/fedcluster/node/model"
)

// Mapped checkpoints. A large model's server holds its newest model only to
// serve it, and serving needs the bytes of its checkpoint, which the
// commit has just written: the page cache already holds them. With
// SetMapCommitted a committed model's weights are a read-only mapping of
// its checkpoint file instead of heap memory, and Backing tells a server
// where they lie in the file, so that answers send them with sendfile(2)
// and never touch the mapping. The pages stay the kernel's cache, which it
// may drop and read again, instead of the server's resident memory: the
// heap then holds the accumulator and the uploads, not the model too.
//
// A mapped model reads like any other, and touching it faults its pages
// in, so the store's own copies of a mapped model (Stage of a failed
// iteration's model, EncodeModel for a peer) read its file instead. Writing to
// it faults the process, as Store's contract already forbids.
// A checkpoint that a mapped model lies in is never recycled as the spare
// (overwritten in place): answers still sending it would change under the
// devices. Removing it is safe: the open file keeps its blocks.

// Backing is where a mapped model's weights lie: File, read-only, holds
// parameter p's floats at DataOffset + 4*p.Offset, little-endian. File
// stays open while the model is reachable: keep the model with the file.
type Backing struct {
	File       *os.File
	DataOffset int64
}

// SetMapCommitted makes committed models, and the newest model now kept
// if its checkpoint is on disk, mappings of their checkpoint files. It
// needs a checkpoint dir on the operating system's file system and a
// little-endian host; elsewhere models stay in memory.
func (s *Store) SetMapCommitted(on bool) {
	if _, onOS := s.fs.(osFS); !onOS || s.opts.Dir == "" || !model.HostLittleEndian {
		return
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	s.mapCommitted = on
	latest, m := s.latest, s.models[s.latest]
	s.mu.Unlock()
	_, mapped := s.Backing(m)
	if !on || m == nil || mapped {
		return
	}
	mm, err := mapCheckpoint(filepath.Join(s.opts.Dir, CheckpointName(s.opts.FLName, latest)), s.layout)
	if err != nil {
		s.log.Warn("cannot map the newest checkpoint; it stays in memory", zap.Uint64("iteration", latest), zap.Error(err))
		return
	}
	s.mu.Lock()
	if s.latest == latest && s.models[latest] == m {
		s.models[latest] = mm
	}
	s.mu.Unlock()
}

// Backing says where m's weights lie in its checkpoint file, if m is a
// mapped model, kept or not: a handler may hold a model the store dropped
// a moment ago, and must still send it from the file.
func (s *Store) Backing(m *model.Model) (Backing, bool) {
	if m == nil {
		return Backing{}, false
	}
	v, ok := mappedModels.Load(weak.Make(m))
	if !ok {
		return Backing{}, false
	}
	return v.(Backing), true
}

// mappedModels holds every live mapped model's Backing, by a weak pointer
// to the model: an entry goes with its mapping, once the model is
// unreachable.
var mappedModels sync.Map

// mapping is what a mapped model's cleanup releases.
type mapping struct {
	f   *os.File
	mem []byte
	key weak.Pointer[model.Model]
}

// mapCheckpoint maps the weights of the checkpoint at path, which must
// hold a model of layout l, as a model whose memory is the file's. The
// mapping and the file are released once the model is unreachable.
func mapCheckpoint(path string, l *model.Layout) (*model.Model, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var pre [8]byte
	st, err := f.Stat()
	if err == nil {
		_, err = f.ReadAt(pre[:], 0) // read, not mapped: the header's page stays out of the mapping
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot read checkpoint %s: %w", path, err)
	}
	hl := binary.LittleEndian.Uint64(pre[:])
	data := 8 + int64(hl)
	if hl%8 != 0 || hl > uint64(st.Size()) || data+4*int64(l.Size) != st.Size() {
		f.Close()
		return nil, fmt.Errorf("cannot map checkpoint %s: %d bytes with a %d-byte header do not hold %d floats", path, st.Size(), hl, l.Size)
	}
	m, err := mapWeights(f, data, l)
	if err != nil {
		return nil, fmt.Errorf("cannot map checkpoint %s: %w", path, err)
	}
	return m, nil
}

// mapWeights maps the floats of layout l at offset data of f as a model,
// whose Backing the store then knows; the mapping owns f, which is closed
// on failure or once the model is unreachable.
func mapWeights(f *os.File, data int64, l *model.Layout) (*model.Model, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(data+4*int64(l.Size)), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, err
	}
	m := &model.Model{Layout: l, Data: unsafe.Slice((*float32)(unsafe.Pointer(&mem[data])), l.Size)}
	b := Backing{File: f, DataOffset: data}
	key := weak.Make(m)
	mappedModels.Store(key, b)
	runtime.AddCleanup(m, func(mp mapping) {
		mappedModels.Delete(mp.key)
		_ = unix.Munmap(mp.mem)
		_ = mp.f.Close()
	}, mapping{f: f, mem: mem, key: key})
	return m, nil
}
