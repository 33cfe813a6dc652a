package modelstore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"strings"
	"sync"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/safetensors"
)

// Drafts. A large model's all-reduce makes the new weights a piece at a
// time: its own chunk as it is reduced, the others' as they arrive. Kept
// in a heap model until its checkpoint was written, they were one model
// more in the server's memory at its peak, since the accumulators are
// still live then. A Draft is the checkpoint's file filled in place
// instead: pieces go to the page cache with pwrite, the checksum is taken
// as they come in order and from the file for the rest, and the model it
// yields is a read-only mapping of the file, which stays out of the
// server's resident memory unless read (see SetMapCommitted). Drafts need
// mapped checkpoints.

// ErrNoDraft is returned by Store.Draft where checkpoints are not mapped.
var ErrNoDraft = errors.New("checkpoints are not mapped: no draft in place")

// sumPlaceholder holds the checksum's place in a draft's header until it
// is known: a SHA-256 hex digest has this length whatever its value, so
// the header, and where the weights start, do not change.
var sumPlaceholder = strings.Repeat("0", sha256.Size*2)

// Draft is iteration iter's checkpoint being filled in place. Write the
// weights with WriteAt or WriteFloats (concurrently if the pieces do not
// overlap), then call Model, then Seal or Abort. A draft neither sealed
// nor aborted leaves a temporary file that the next Open removes.
type Draft struct {
	s       *Store
	iter    uint64
	tmp     string
	f       *os.File // read-write, until Seal or Abort
	dataOff int64
	size    int // floats

	// The weights written in order from the start are hashed as they
	// come (a model written front to back costs no read back), the rest
	// read back by Model.
	hmu    sync.Mutex
	h      hash.Hash
	hashed int // floats hashed

	m   *model.Model // set by Model
	sum string
}

// Draft creates iteration iter's checkpoint file, of the model's full size
// (unwritten weights read as zeros), under a temporary name.
func (s *Store) Draft(iter uint64) (*Draft, error) {
	s.mu.RLock()
	on := s.mapCommitted
	s.mu.RUnlock()
	if !on {
		return nil, ErrNoDraft
	}
	pre, err := s.prefix(iter, sumPlaceholder)
	if err != nil {
		return nil, err
	}
	tmp := s.tempName(iter)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot create checkpoint %s: %w", tmp, err)
	}
	d := &Draft{s: s, iter: iter, tmp: tmp, f: f, dataOff: int64(len(pre)), size: s.layout.Size, h: sha256.New()}
	if err := f.Truncate(d.dataOff + 4*int64(d.size)); err != nil {
		d.Abort()
		return nil, fmt.Errorf("cannot size checkpoint %s: %w", tmp, err)
	}
	return d, nil
}

// prefix is the bytes before the weights of iteration iter's checkpoint.
func (s *Store) prefix(iter uint64, sum string) ([]byte, error) {
	return safetensors.Prefix(s.layout, Meta{FLName: s.opts.FLName, Iteration: iter, SHA256: sum}.Map())
}

// span checks that n bytes of floats at element off lie in the weights and
// returns their file offset.
func (d *Draft) span(off, n int) (int64, error) {
	if off < 0 || n%4 != 0 || off+n/4 > d.size {
		return 0, fmt.Errorf("checkpoint draft: %d bytes at element %d do not fit %d floats", n, off, d.size)
	}
	return d.dataOff + 4*int64(off), nil
}

// WriteAt writes raw, little-endian float32s, at element off.
func (d *Draft) WriteAt(off int, raw []byte) error {
	at, err := d.span(off, len(raw))
	if err != nil {
		return err
	}
	if _, err := d.f.WriteAt(raw, at); err != nil {
		return err
	}
	d.hmu.Lock()
	if off == d.hashed {
		d.h.Write(raw)
		d.hashed += len(raw) / 4
	}
	d.hmu.Unlock()
	return nil
}

// WriteFloats writes x at element off.
func (d *Draft) WriteFloats(off int, x []float32) error {
	return d.WriteAt(off, model.FloatBytes(x)) // drafts exist on little-endian hosts only
}

// ReadAt reads len(dst) bytes of little-endian float32s from element off.
func (d *Draft) ReadAt(off int, dst []byte) error {
	at, err := d.span(off, len(dst))
	if err == nil {
		_, err = d.f.ReadAt(dst, at)
	}
	return err
}

// Model hashes the weights written and maps them as a read-only model,
// which Seal then stores. Call it once every weight is written, and write
// none after.
func (d *Draft) Model() (*model.Model, string, error) {
	if d.m != nil {
		return d.m, d.sum, nil
	}
	d.hmu.Lock()
	defer d.hmu.Unlock()
	h := d.h
	buf := make([]byte, 1<<20)
	for off := d.hashed; off < d.size; {
		k := min(len(buf)/4, d.size-off)
		if err := d.ReadAt(off, buf[:4*k]); err != nil {
			return nil, "", fmt.Errorf("cannot read checkpoint draft %s back: %w", d.tmp, err)
		}
		h.Write(buf[:4*k])
		off += k
	}
	// The mapping gets its own descriptor: this one is closed at Seal.
	f, err := os.Open(d.tmp)
	if err != nil {
		return nil, "", fmt.Errorf("cannot map checkpoint draft: %w", err)
	}
	m, err := mapWeights(f, d.dataOff, d.s.layout)
	if err != nil {
		return nil, "", fmt.Errorf("cannot map checkpoint draft %s: %w", d.tmp, err)
	}
	d.m, d.sum = m, hex.EncodeToString(h.Sum(nil))
	return d.m, d.sum, nil
}

// Seal writes the header with the checksum and starts the file's fsync:
// the result commits like Stage's, as the mapped model. Model must have
// succeeded.
func (d *Draft) Seal() *Staged {
	st := &Staged{s: d.s, iter: d.iter, m: d.m, sum: d.sum}
	if d.m == nil {
		d.Abort()
		st.err = fmt.Errorf("cannot put iteration %d: checkpoint draft sealed before its model", d.iter)
		return st
	}
	pre, err := d.s.prefix(d.iter, d.sum)
	if err == nil && int64(len(pre)) != d.dataOff {
		err = fmt.Errorf("header of %d bytes where %d were reserved", len(pre), d.dataOff)
	}
	if err == nil {
		_, err = d.f.WriteAt(pre, 0)
	}
	f := d.f
	d.f = nil
	if err != nil {
		f.Close()
		d.s.removeTemp(d.tmp)
		st.err = fmt.Errorf("cannot put iteration %d: cannot seal checkpoint %s: %w", d.iter, d.tmp, err)
		return st
	}
	st.tmp, st.synced = d.tmp, syncInBackground(osFile{f}, d.tmp)
	return st
}

// Abort removes the draft; after Seal it does nothing.
func (d *Draft) Abort() {
	if d.f == nil {
		return
	}
	d.f.Close()
	d.f = nil
	d.s.removeTemp(d.tmp)
}

// stageCopy stages iteration iter as a copy of the mapped model whose
// weights b locates, through a draft: the floats go from file to file
// through a small buffer, hashed on the way. A non-empty sum must match.
func (s *Store) stageCopy(iter uint64, b Backing, sum string) *Staged {
	fail := func(err error) *Staged {
		return &Staged{s: s, iter: iter, err: fmt.Errorf("cannot put iteration %d: %w", iter, err)}
	}
	d, err := s.Draft(iter)
	if err != nil {
		return fail(err)
	}
	buf := make([]byte, 1<<20)
	for off := 0; off < d.size; {
		k := min(len(buf)/4, d.size-off)
		if _, err := b.File.ReadAt(buf[:4*k], b.DataOffset+4*int64(off)); err != nil {
			d.Abort()
			return fail(fmt.Errorf("cannot read checkpoint %s: %w", b.File.Name(), err))
		}
		if err := d.WriteAt(off, buf[:4*k]); err != nil {
			d.Abort()
			return fail(err)
		}
		off += k
	}
	_, got, err := d.Model()
	if err == nil && sum != "" && got != sum {
		err = fmt.Errorf("%w: the copied weights hash to %s, not %s", ErrChecksum, got, sum)
	}
	if err != nil {
		d.Abort()
		return fail(err)
	}
	return d.Seal()
}
