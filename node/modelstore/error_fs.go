package modelstore

import (
	"errors"
	"sync/atomic"
)

// Op names an FS or File operation for fault injection.
type Op int

// The operations an Injector sees.
const (
	OpCreate Op = iota
	OpOpen
	OpRead
	OpWrite
	OpSync
	OpClose
	OpRename
	OpRemove
	OpReadDir
	OpMkdirAll
	OpSyncDir
	OpOpenWrite
	OpTruncate
)

var opNames = [...]string{"create", "open", "read", "write", "sync", "close", "rename", "remove", "readdir", "mkdirall", "syncdir", "openwrite", "truncate"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "op?"
}

// ErrInjected is the error injectors return by default.
var ErrInjected = errors.New("injected error")

// Injector decides whether an operation on path fails, and with what.
type Injector func(op Op, path string) error

// OnOp fails every op of the kind on paths accepted by match (nil: all).
func OnOp(op Op, match func(path string) bool) Injector {
	return func(o Op, path string) error {
		if o == op && (match == nil || match(path)) {
			return ErrInjected
		}
		return nil
	}
}

// OnIndex fails the n-th operation (0-based) counted over all operations,
// and only that one: run a scenario with n = 0, 1, 2, ... until it passes
// without hitting the fault to cover every failure point (pebble's
// errorfs.OnIndex).
func OnIndex(n int64) (Injector, *atomic.Int64) {
	var count atomic.Int64
	return func(Op, string) error {
		if count.Add(1)-1 == n {
			return ErrInjected
		}
		return nil
	}, &count
}

// ErrorFS wraps an FS and fails the operations its Injector picks.
type ErrorFS struct {
	fs     FS
	inject Injector
}

// NewErrorFS wraps fs with inject.
func NewErrorFS(fs FS, inject Injector) *ErrorFS { return &ErrorFS{fs: fs, inject: inject} }

func (e *ErrorFS) check(op Op, path string) error {
	if e.inject == nil {
		return nil
	}
	return e.inject(op, path)
}

// Create implements FS.
func (e *ErrorFS) Create(name string) (File, error) {
	if err := e.check(OpCreate, name); err != nil {
		return nil, err
	}
	f, err := e.fs.Create(name)
	if err != nil {
		return nil, err
	}
	return &errorFile{File: f, e: e, path: name}, nil
}

// OpenWrite implements FS.
func (e *ErrorFS) OpenWrite(name string) (File, error) {
	if err := e.check(OpOpenWrite, name); err != nil {
		return nil, err
	}
	f, err := e.fs.OpenWrite(name)
	if err != nil {
		return nil, err
	}
	return &errorFile{File: f, e: e, path: name}, nil
}

// Open implements FS.
func (e *ErrorFS) Open(name string) (File, error) {
	if err := e.check(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := e.fs.Open(name)
	if err != nil {
		return nil, err
	}
	return &errorFile{File: f, e: e, path: name}, nil
}

// Rename implements FS.
func (e *ErrorFS) Rename(oldname, newname string) error {
	if err := e.check(OpRename, newname); err != nil {
		return err
	}
	return e.fs.Rename(oldname, newname)
}

// Remove implements FS.
func (e *ErrorFS) Remove(name string) error {
	if err := e.check(OpRemove, name); err != nil {
		return err
	}
	return e.fs.Remove(name)
}

// ReadDir implements FS.
func (e *ErrorFS) ReadDir(dir string) ([]string, error) {
	if err := e.check(OpReadDir, dir); err != nil {
		return nil, err
	}
	return e.fs.ReadDir(dir)
}

// MkdirAll implements FS.
func (e *ErrorFS) MkdirAll(dir string) error {
	if err := e.check(OpMkdirAll, dir); err != nil {
		return err
	}
	return e.fs.MkdirAll(dir)
}

// SyncDir implements FS.
func (e *ErrorFS) SyncDir(dir string) error {
	if err := e.check(OpSyncDir, dir); err != nil {
		return err
	}
	return e.fs.SyncDir(dir)
}

type errorFile struct {
	File
	e    *ErrorFS
	path string
}

func (f *errorFile) Read(p []byte) (int, error) {
	if err := f.e.check(OpRead, f.path); err != nil {
		return 0, err
	}
	return f.File.Read(p)
}

func (f *errorFile) Write(p []byte) (int, error) {
	if err := f.e.check(OpWrite, f.path); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *errorFile) Truncate(size int64) error {
	if err := f.e.check(OpTruncate, f.path); err != nil {
		return err
	}
	return f.File.Truncate(size)
}

func (f *errorFile) Sync() error {
	if err := f.e.check(OpSync, f.path); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *errorFile) Close() error {
	if err := f.e.check(OpClose, f.path); err != nil {
		f.File.Close()
		return err
	}
	return f.File.Close()
}
