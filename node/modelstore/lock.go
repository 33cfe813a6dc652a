package modelstore

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/fedcluster/fedcluster/node/flock"
)

// LockName is the file in a checkpoint folder whose lock LockDir takes.
const LockName = "fedcluster.lock"

// LockDir locks dir (creating it if needed) for one store, so that two
// servers never share a checkpoint folder: each retires and recycles its
// old checkpoints by name, and would remove or rename the other's.
// release drops the lock and removes the file; the kernel drops the lock
// when the process ends, however it ends.
func LockDir(dir string) (release func(), err error) {
	release, err = flock.Lock(filepath.Join(dir, LockName))
	if held := (*flock.HeldError)(nil); errors.As(err, &held) {
		return nil, fmt.Errorf("checkpoint dir %s is in use by another process (pid %s): give each server its own checkpoint_dir", dir, held.PID)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot lock checkpoint_dir %s: %w", dir, err)
	}
	return release, nil
}
