package modelstore

import (
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// File is an open file of an FS: sequential reads or writes.
type File interface {
	io.Reader
	io.Writer
	io.Closer
	// Sync makes the file's contents durable.
	Sync() error
	// Size is the file's current length in bytes.
	Size() (int64, error)
	// Truncate sets the file's length.
	Truncate(size int64) error
}

// FS is the little of a file system the store needs, so that tests can run it
// on memory and inject faults (the pattern of pebble's vfs, vfs.MemFS and
// vfs/errorfs).
type FS interface {
	// Create creates or truncates name for writing.
	Create(name string) (File, error)
	// Open opens name for reading.
	Open(name string) (File, error)
	// OpenWrite opens the existing file name for writing from its start,
	// keeping its contents and blocks until overwritten (no truncation).
	OpenWrite(name string) (File, error)
	// Rename atomically replaces newname with oldname.
	Rename(oldname, newname string) error
	// Remove deletes name.
	Remove(name string) error
	// ReadDir lists the names (not paths) of the entries of dir.
	ReadDir(dir string) ([]string, error)
	// MkdirAll creates dir and its parents.
	MkdirAll(dir string) error
	// SyncDir makes dir's entries (creations, renames, removals) durable.
	SyncDir(dir string) error
}

// OSFS is the operating system's file system.
var OSFS FS = osFS{}

type osFS struct{}

type osFile struct{ *os.File }

// Sync is fdatasync: the contents and what reading them back needs (the
// length), not the timestamps. A recycled checkpoint of the same length
// then costs the disk its data alone, with no journal commit for mtime.
func (f osFile) Sync() error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fdatasync(int(fd)) }); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

func (f osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (osFS) Create(name string) (File, error) {
	return openFile(name, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC, 0o644)
}

func (osFS) OpenWrite(name string) (File, error) { return openFile(name, unix.O_WRONLY, 0) }

func (osFS) Open(name string) (File, error) { return openFile(name, unix.O_RDONLY, 0) }

// openFile opens a regular file with open(2) alone. os.OpenFile offers
// every file to the network poller, which refuses regular files, at four
// fcntl calls and an epoll_ctl per open: system calls a server pays for
// every checkpoint, and on some virtual machines each costs microseconds.
func openFile(name string, flags int, perm uint32) (File, error) {
	fd, err := unix.Open(name, flags|unix.O_CLOEXEC, perm)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return osFile{os.NewFile(uintptr(fd), name)}, nil
}

// Rename is rename(2) itself: os.Rename first stats newname, to refuse
// replacing a directory, which checkpoint names never are.
func (osFS) Rename(oldname, newname string) error {
	if err := unix.Rename(oldname, newname); err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	return nil
}

func (osFS) Remove(name string) error  { return os.Remove(name) }
func (osFS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o755) }

func (osFS) ReadDir(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(es))
	for i, e := range es {
		names[i] = e.Name()
	}
	return names, nil
}

// SyncDir opens, fsyncs and closes dir with a system call each, for
// openFile's reason.
func (osFS) SyncDir(dir string) error {
	dir = filepath.Clean(dir)
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	if err := unix.Fsync(fd); err != nil {
		_ = unix.Close(fd)
		return &os.PathError{Op: "fsync", Path: dir, Err: err}
	}
	if err := unix.Close(fd); err != nil {
		return &os.PathError{Op: "close", Path: dir, Err: err}
	}
	return nil
}
