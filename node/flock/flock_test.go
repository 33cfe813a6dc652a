package flock

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.lock")
	release, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	// A second open file stands for a second process.
	_, err = Lock(path)
	var held *HeldError
	if !errors.As(err, &held) || held.PID != strconv.Itoa(os.Getpid()) || held.Path != path {
		t.Fatalf("second lock: %v, want a HeldError naming pid %d", err, os.Getpid())
	}
	release()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("release left the lock file: %v", err)
	}
	again, err := Lock(path)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	// A second release of the first lock leaves the new holder alone.
	release()
	if _, err := Lock(path); !errors.As(err, &held) {
		t.Fatalf("a repeated release freed another holder's lock: %v", err)
	}
	again()
}

// TestLockTakesOverACrashedHoldersFile: the file a crashed process left
// behind holds no lock, and is taken over.
func TestLockTakesOverACrashedHoldersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	if err := os.WriteFile(path, []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	release, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if b, _ := os.ReadFile(path); string(b) != strconv.Itoa(os.Getpid())+"\n" {
		t.Fatalf("lock file holds %q, want this process's pid", b)
	}
}

// TestLockOnARemovedFile: a process that opened the lock file just before
// its holder removed it and let go, and a newcomer that then locked a new
// file at the path. The first one's flock succeeds on the removed file; it
// must see that and try again, and then find the newcomer's lock.
func TestLockOnARemovedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	holder, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	var newcomer func()
	testHookBeforeFlock = func() {
		testHookBeforeFlock = nil
		holder()
		if newcomer, err = Lock(path); err != nil {
			t.Errorf("the newcomer: %v", err)
		}
	}
	defer func() { testHookBeforeFlock = nil }()
	release, err := Lock(path)
	if newcomer != nil {
		defer newcomer()
	}
	var held *HeldError
	if !errors.As(err, &held) {
		if release != nil {
			release()
		}
		t.Fatalf("Lock after its file was replaced: %v, want the newcomer's HeldError", err)
	}
}

// TestLockExcludes: holders that take and release the lock in a loop
// (each release removing the file) are never two at once. A stress check
// under -race; TestLockOnARemovedFile covers the narrow window.
func TestLockExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	var holders, taken atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 300 {
				release, err := Lock(path)
				var held *HeldError
				if errors.As(err, &held) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if n := holders.Add(1); n != 1 {
					t.Errorf("%d holders at once", n)
				}
				taken.Add(1)
				holders.Add(-1)
				release()
			}
		}()
	}
	wg.Wait()
	if taken.Load() == 0 {
		t.Fatal("nobody got the lock")
	}
}

func TestLockReportsAnUnusablePath(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A folder that is a file: no lock, and not a HeldError.
	_, err := Lock(filepath.Join(dir, "file", "x.lock"))
	var held *HeldError
	if err == nil || errors.As(err, &held) {
		t.Fatalf("Lock under a file: %v", err)
	}
}
