package modelstore

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/safetensors"
)

// Metadata keys stored in every checkpoint's "__metadata__".
const (
	MetaFLName    = "fl_name"
	MetaIteration = "iteration"
	MetaSHA256    = "sha256"
)

// ErrChecksum is wrapped when a model's weights do not match the sha256 its
// metadata claims.
var ErrChecksum = errors.New("model checksum mismatch")

// errStorage marks a failure of the file system, not of a file's content:
// such a checkpoint is not corrupt and must not be set aside.
var errStorage = errors.New("storage error")

// Meta is what a checkpoint says about itself.
type Meta struct {
	FLName    string
	Iteration uint64
	SHA256    string // hex digest of the weights, model.Model.SHA256
}

// Map is the safetensors metadata form of m.
func (m Meta) Map() map[string]string {
	return map[string]string{MetaFLName: m.FLName, MetaIteration: strconv.FormatUint(m.Iteration, 10), MetaSHA256: m.SHA256}
}

func parseMeta(mm map[string]string) (Meta, error) {
	var m Meta
	m.FLName = mm[MetaFLName]
	m.SHA256 = mm[MetaSHA256]
	if s, ok := mm[MetaIteration]; ok {
		it, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return m, fmt.Errorf("cannot parse metadata %s=%q: %w", MetaIteration, s, err)
		}
		m.Iteration = it
	}
	return m, nil
}

// Encode serializes m as safetensors with meta (SHA256 is filled in from the
// weights when empty): the bytes a server ships to a restarted peer.
func Encode(m *model.Model, meta Meta) ([]byte, error) {
	if m == nil {
		return nil, fmt.Errorf("cannot encode model: nil model")
	}
	if meta.SHA256 == "" {
		meta.SHA256 = m.SHA256()
	}
	b, err := safetensors.AppendEncode(nil, m, meta.Map())
	if err != nil {
		return nil, fmt.Errorf("cannot encode model: %w", err)
	}
	return b, nil
}

// Decode parses bytes from Encode (or any F32 safetensors file). With a
// non-nil layout the file must match it. NaN and Inf are refused, and when
// the metadata carries a sha256 the weights must match it.
func Decode(b []byte, layout *model.Layout) (*model.Model, Meta, error) {
	m, mm, err := safetensors.Decode(b, &safetensors.Options{Layout: layout, RejectNonFinite: true})
	if err != nil {
		return nil, Meta{}, fmt.Errorf("cannot decode model: %w", err)
	}
	return checkMeta(m, mm)
}

func read(fsys FS, path string, layout *model.Layout) (*model.Model, Meta, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return nil, Meta{}, fmt.Errorf("%w: cannot open %s: %w", errStorage, path, err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, Meta{}, fmt.Errorf("%w: cannot stat %s: %w", errStorage, path, err)
	}
	// Read via a buffer-free stream: safetensors.Read fills the weights
	// straight from the file.
	m, mm, err := safetensors.Read(f, size, &safetensors.Options{Layout: layout, RejectNonFinite: true})
	if err != nil {
		return nil, Meta{}, fmt.Errorf("cannot read %s: %w", path, err)
	}
	m2, meta, err := checkMeta(m, mm)
	if err != nil {
		return nil, Meta{}, fmt.Errorf("cannot read %s: %w", path, err)
	}
	return m2, meta, nil
}

func checkMeta(m *model.Model, mm map[string]string) (*model.Model, Meta, error) {
	meta, err := parseMeta(mm)
	if err != nil {
		return nil, Meta{}, err
	}
	if meta.SHA256 != "" {
		if got := m.SHA256(); got != meta.SHA256 {
			return nil, Meta{}, fmt.Errorf("%w: weights hash to %s, metadata says %s", ErrChecksum, got, meta.SHA256)
		}
	}
	return m, meta, nil
}

// encodeTo streams m as safetensors to w and returns the bytes written.
func encodeTo(w interface{ Write([]byte) (int, error) }, m *model.Model, meta Meta) (int64, error) {
	return safetensors.Encode(w, m, meta.Map())
}
