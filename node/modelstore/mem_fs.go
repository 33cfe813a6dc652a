package modelstore

import (
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"sync"
)

// MemFS is an in-memory FS that remembers what has been made durable: file
// contents as of their last Sync, and a directory's entries as of its last
// SyncDir. CrashClone returns the file system a machine would find after a
// power loss, like pebble's strict MemFS. Directories are durable once made.
type MemFS struct {
	mu      sync.Mutex
	dirs    map[string]bool
	files   map[string]*memNode // current namespace, by clean path
	durable map[string]*memNode // namespace as of the last SyncDir of each dir
}

type memNode struct {
	mu     sync.Mutex
	data   []byte
	synced []byte
}

// NewMemFS returns an empty in-memory file system.
func NewMemFS() *MemFS {
	return &MemFS{dirs: map[string]bool{".": true, "/": true}, files: map[string]*memNode{}, durable: map[string]*memNode{}}
}

// CrashClone returns a new MemFS holding only what was durable in m.
func (m *MemFS) CrashClone() *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := NewMemFS()
	for d := range m.dirs {
		c.dirs[d] = true
	}
	for p, n := range m.durable {
		n.mu.Lock()
		nn := &memNode{data: append([]byte(nil), n.synced...)}
		n.mu.Unlock()
		nn.synced = append([]byte(nil), nn.data...)
		c.files[p] = nn
		c.durable[p] = nn
	}
	return c
}

// WriteFile sets name's contents, durably (a test helper).
func (m *MemFS) WriteFile(name string, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := filepath.Clean(name)
	n := &memNode{data: append([]byte(nil), data...), synced: append([]byte(nil), data...)}
	m.files[p] = n
	m.durable[p] = n
}

// ReadFile returns name's current contents (a test helper).
func (m *MemFS) ReadFile(name string) ([]byte, bool) {
	m.mu.Lock()
	n, ok := m.files[filepath.Clean(name)]
	m.mu.Unlock()
	if !ok {
		return nil, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]byte(nil), n.data...), true
}

func (m *MemFS) checkDir(p string) error {
	if !m.dirs[filepath.Dir(p)] {
		return fs.ErrNotExist
	}
	return nil
}

// Create implements FS.
func (m *MemFS) Create(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := filepath.Clean(name)
	if err := m.checkDir(p); err != nil {
		return nil, &fs.PathError{Op: "create", Path: name, Err: err}
	}
	n := &memNode{}
	m.files[p] = n
	return &memFile{n: n, write: true}, nil
}

// OpenWrite implements FS.
func (m *MemFS) OpenWrite(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.files[filepath.Clean(name)]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &memFile{n: n, write: true}, nil
}

// Open implements FS.
func (m *MemFS) Open(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.files[filepath.Clean(name)]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &memFile{n: n}, nil
}

// Rename implements FS.
func (m *MemFS) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	op, np := filepath.Clean(oldname), filepath.Clean(newname)
	n, ok := m.files[op]
	if !ok {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	if err := m.checkDir(np); err != nil {
		return &fs.PathError{Op: "rename", Path: newname, Err: err}
	}
	delete(m.files, op)
	m.files[np] = n
	return nil
}

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := filepath.Clean(name)
	if _, ok := m.files[p]; !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(m.files, p)
	return nil
}

// ReadDir implements FS.
func (m *MemFS) ReadDir(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := filepath.Clean(dir)
	if !m.dirs[d] {
		return nil, &fs.PathError{Op: "readdir", Path: dir, Err: fs.ErrNotExist}
	}
	var names []string
	for p := range m.files {
		if filepath.Dir(p) == d {
			names = append(names, filepath.Base(p))
		}
	}
	sort.Strings(names)
	return names, nil
}

// MkdirAll implements FS.
func (m *MemFS) MkdirAll(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d := filepath.Clean(dir); !m.dirs[d]; d = filepath.Dir(d) {
		m.dirs[d] = true
	}
	return nil
}

// SyncDir implements FS.
func (m *MemFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := filepath.Clean(dir)
	if !m.dirs[d] {
		return &fs.PathError{Op: "syncdir", Path: dir, Err: fs.ErrNotExist}
	}
	for p := range m.durable {
		if filepath.Dir(p) == d {
			delete(m.durable, p)
		}
	}
	for p, n := range m.files {
		if filepath.Dir(p) == d {
			m.durable[p] = n
		}
	}
	return nil
}

type memFile struct {
	n      *memNode
	off    int
	write  bool
	closed bool
}

func (f *memFile) Read(p []byte) (int, error) {
	if f.closed {
		return 0, fs.ErrClosed
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	if f.off >= len(f.n.data) {
		return 0, io.EOF
	}
	k := copy(p, f.n.data[f.off:])
	f.off += k
	return k, nil
}

func (f *memFile) Write(p []byte) (int, error) {
	if f.closed {
		return 0, fs.ErrClosed
	}
	if !f.write {
		return 0, fs.ErrPermission
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	// Overwrite from the offset, growing the file past its end.
	k := copy(f.n.data[min(f.off, len(f.n.data)):], p)
	f.n.data = append(f.n.data, p[k:]...)
	f.off += len(p)
	return len(p), nil
}

func (f *memFile) Truncate(size int64) error {
	if f.closed {
		return fs.ErrClosed
	}
	if !f.write {
		return fs.ErrPermission
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	if int(size) <= len(f.n.data) {
		f.n.data = f.n.data[:size]
	} else {
		f.n.data = append(f.n.data, make([]byte, int(size)-len(f.n.data))...)
	}
	return nil
}

func (f *memFile) Sync() error {
	if f.closed {
		return fs.ErrClosed
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	f.n.synced = append(f.n.synced[:0], f.n.data...)
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	return int64(len(f.n.data)), nil
}

func (f *memFile) Close() error {
	if f.closed {
		return fs.ErrClosed
	}
	f.closed = true
	return nil
}
