package modelstore

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestLockDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ckpt")
	release, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// flock conflicts between open files, so a second open in this
	// process stands for a second server.
	_, err = LockDir(dir)
	if err == nil {
		t.Fatal("a locked checkpoint dir was locked again")
	}
	if want := "pid " + strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "checkpoint_dir") {
		t.Fatalf("second lock: %v, want the holder's %s and the key to change", err, want)
	}
	release()
	again, err := LockDir(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	again()
	// A folder that cannot be made names the key to fix.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LockDir(filepath.Join(file, "ckpt")); err == nil || !strings.Contains(err.Error(), "checkpoint_dir") {
		t.Fatalf("LockDir under a file: %v, want an error naming checkpoint_dir", err)
	}
	// The lock file is not a checkpoint to a store opening the folder.
	s, err := Open(Options{Dir: dir, FLName: "lenet", Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if latest, _ := s.Latest(); latest != 0 {
		t.Fatalf("latest %d in a folder with only the lock file", latest)
	}
}
