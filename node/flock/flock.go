// Package flock takes exclusive advisory locks (flock(2)) on lock files,
// so that two processes never share state meant for one: a server's
// checkpoint folder, the scheduler's recovery state. The kernel drops a
// lock when its process ends, however it ends, so a crashed process's
// restart always gets it back.
package flock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// HeldError is Lock's error when another open file holds the lock.
type HeldError struct {
	Path string
	PID  string // the holder's process id as it wrote it, or "unknown"
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("%s is locked by another process (pid %s)", e.Path, e.PID)
}

// Lock creates the file at path (and its folder) if needed and takes an
// exclusive lock on it without waiting, then writes this process's id
// into it for the next one's error. release (idempotent) removes the
// file and drops the lock; after a crash the file stays, unlocked, and
// is taken over. On a file system without flock it returns a no-op
// release and no error: the state is then used unlocked, as before.
//
// flock locks belong to open files, not processes, so a second Lock of
// one path fails within a process too.
func Lock(path string) (release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the folder of %s: %w", path, err)
	}
	// A holder removes the file as it releases it, so the file locked
	// here may already be gone from path; then another process may
	// hold a new one, and the lock is taken again on that.
	for range 100 {
		fd, err := lockOnce(path)
		switch {
		case err != nil:
			return nil, err
		case fd < 0:
			return func() {}, nil
		}
		if names(path, fd) {
			pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
			if unix.Ftruncate(fd, 0) == nil {
				_, _ = unix.Pwrite(fd, pid, 0)
			}
			var once sync.Once // a second release must not close a reused fd
			return func() {
				once.Do(func() {
					_ = unix.Unlink(path) // while still locked: see above
					unix.Close(fd)
				})
			}, nil
		}
		unix.Close(fd)
	}
	return nil, fmt.Errorf("cannot lock %s: it keeps being replaced", path)
}

// testHookBeforeFlock, when set by a test, runs between lockOnce's open
// and its flock: where a holder letting go makes the opened file stale.
var testHookBeforeFlock func()

// names reports whether path still names the file open as fd.
func names(path string, fd int) bool {
	var open, named unix.Stat_t
	return unix.Fstat(fd, &open) == nil && unix.Stat(path, &named) == nil && open.Dev == named.Dev && open.Ino == named.Ino
}

// lockOnce opens path and locks it: the locked descriptor, or -1 and no
// error on a file system without flock.
func lockOnce(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if testHookBeforeFlock != nil {
		testHookBeforeFlock()
	}
	switch err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); {
	case err == nil:
		return fd, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		unix.Close(fd)
		held := &HeldError{Path: path, PID: "unknown"}
		if b, _ := os.ReadFile(path); len(strings.TrimSpace(string(b))) > 0 {
			held.PID = strings.TrimSpace(string(b))
		}
		return -1, held
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOLCK):
		unix.Close(fd)
		return -1, nil
	default:
		unix.Close(fd)
		return -1, &os.PathError{Op: "flock", Path: path, Err: err}
	}
}
