package scheduler

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fedcluster/fedcluster/node/modelstore"
)

func saveAll(t *testing.T, f *stateFile, states ...string) {
	t.Helper()
	for _, s := range states {
		if err := f.save([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
}

func loadState(t *testing.T, path string) (string, *stateFile) {
	t.Helper()
	f := newStateFile(path)
	b, _, err := f.load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.close() })
	return string(b), f
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStateFileAlternatesSlots(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "recovery.json")
	f := newStateFile(path)
	saveAll(t, f, `{"n":1}`)
	if _, err := os.Stat(path + ".1"); !os.IsNotExist(err) {
		t.Fatalf("the first save should write the configured path only; %s.1: %v", path, err)
	}
	saveAll(t, f, `{"n":2}`, `{"n":3}`)
	f.close()
	if got, _ := loadState(t, path); got != `{"n":3}` {
		t.Fatalf("loaded %s, want the newest save", got)
	}
	if _, from, _ := newStateFile(path).load(); from != path {
		t.Fatalf("loaded from %s, want %s", from, path)
	}
	for i, want := range []string{`{"n":3}`, `{"n":2}`} {
		_, st, err := decodeStateSlot(readFile(t, newStateFile(path).slotPath(i)))
		if err != nil || string(st) != want {
			t.Errorf("slot %d holds %q (%v), want %s", i, st, err, want)
		}
	}
}

// loadThenSave loads path's state, which must be want, saves next, and
// checks that the save left the slot it loaded from as it was and that a
// restart loads next.
func loadThenSave(t *testing.T, path, want, next string) {
	t.Helper()
	f := newStateFile(path)
	got, from, err := f.load()
	if err != nil || string(got) != want {
		t.Fatalf("loaded %q (%v), want %s", got, err, want)
	}
	before := readFile(t, from)
	saveAll(t, f, next)
	f.close()
	if after := readFile(t, from); !bytes.Equal(before, after) {
		t.Fatalf("the save overwrote %s, the slot it loaded from", from)
	}
	if got, _ := loadState(t, path); got != next {
		t.Fatalf("loaded %s after the save, want %s", got, next)
	}
}

// A save cut short by a crash, or a slot whose bytes went bad, leaves the
// other slot's state, and the next save goes to the bad slot, not over the
// state just loaded.
func TestStateFileSurvivesABadSlot(t *testing.T) {
	for name, spoil := range map[string]func([]byte) []byte{
		"cut short":       func(b []byte) []byte { return b[:len(b)/2] },
		"flipped byte":    func(b []byte) []byte { b[len(b)-3] ^= 1; return b },
		"header only":     func(b []byte) []byte { return b[:bytes.IndexByte(b, '\n')+1] },
		"no header line":  func(b []byte) []byte { return b[:10] },
		"empty":           func([]byte) []byte { return nil },
		"foreign content": func([]byte) []byte { return []byte("hello\nworld\n") },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "recovery.json")
			f := newStateFile(path)
			saveAll(t, f, `{"n":1}`, `{"n":2}`)
			f.close()
			// The next save (n=3, slot 0) torn: slot 0 holds its spoiled bytes.
			if err := os.WriteFile(path, spoil(encodeStateSlot(3, []byte(`{"n":3,"more":"bytes"}`))), 0o644); err != nil {
				t.Fatal(err)
			}
			loadThenSave(t, path, `{"n":2}`, `{"n":4}`)
		})
	}
}

// Saves go to the slot that does not hold the newest state, whatever the
// sequence numbers' parity (files copied back from a backup, say).
func TestStateFileSavesBesideTheNewest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "recovery.json")
	os.WriteFile(path, encodeStateSlot(6, []byte(`{"n":6}`)), 0o644)
	os.WriteFile(path+".1", encodeStateSlot(3, []byte(`{"n":3}`)), 0o644)
	loadThenSave(t, path, `{"n":6}`, `{"n":7}`)
}

// A state file written before slots existed is bare JSON: it loads, and
// stays until a newer save is safely in the other slot.
func TestStateFileLoadsBareJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "recovery.json")
	if err := os.WriteFile(path, []byte(`{"old":true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	loadThenSave(t, path, `{"old":true}`, `{"new":1}`)
}

func TestStateFileTruncatesAShorterSave(t *testing.T) {
	path := filepath.Join(t.TempDir(), "recovery.json")
	f := newStateFile(path)
	long := `{"pad":"` + strings.Repeat("x", 500) + `"}`
	saveAll(t, f, long, long, `{"n":1}`, `{"n":2}`)
	f.close()
	for i, want := range []string{`{"n":1}`, `{"n":2}`} {
		p := newStateFile(path).slotPath(i)
		if b := readFile(t, p); !bytes.Equal(b, encodeStateSlot(uint64(i+3), []byte(want))) {
			t.Errorf("slot %d is %d bytes %q, want exactly the last save", i, len(b), b)
		}
	}
}

func TestStateFileLoadErrors(t *testing.T) {
	dir := t.TempDir()
	f := newStateFile(filepath.Join(dir, "none.json"))
	if b, _, err := f.load(); b != nil || err != nil {
		t.Fatalf("no files: got %q, %v; want nothing and no error", b, err)
	}
	path := filepath.Join(dir, "bad.json")
	os.WriteFile(path, []byte("garbage\n"), 0o644)
	os.WriteFile(path+".1", encodeStateSlot(3, []byte("{}"))[:12], 0o644)
	_, _, err := newStateFile(path).load()
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), path+".1") {
		t.Fatalf("two bad slots: got %v, want an error naming both", err)
	}
}

func FuzzDecodeStateSlot(f *testing.F) {
	f.Add(encodeStateSlot(7, []byte(`{"a":1}`)))
	f.Add([]byte(`{"bare":true}`))
	f.Add([]byte("fedcluster-recovery seq=1 len=99 crc32c=0\n{}"))
	f.Add([]byte("fedcluster-recovery seq=1 len=2 crc32c=zz\n{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, state, err := decodeStateSlot(b)
		if err != nil || (len(b) > 0 && b[0] == '{') {
			return
		}
		// A slot that decodes is its encoding, perhaps followed by
		// leftovers of a longer earlier save.
		enc := encodeStateSlot(seq, state)
		if !bytes.HasPrefix(b, enc[:len(enc)-1]) {
			t.Fatalf("decoded seq %d, %q from %q, which does not start with their encoding", seq, state, b)
		}
	})
}

func BenchmarkStateFileSave(b *testing.B) {
	state := []byte(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 3000)))
	b.Run("slots", func(b *testing.B) {
		f := newStateFile(filepath.Join(b.TempDir(), "recovery.json"))
		defer f.close()
		b.SetBytes(int64(len(state)))
		b.ReportAllocs()
		for b.Loop() {
			if err := f.save(state); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The previous way: a new file, its fsync, a rename, the folder's fsync.
	b.Run("replace", func(b *testing.B) {
		dir := b.TempDir()
		path := filepath.Join(dir, "recovery.json")
		b.SetBytes(int64(len(state)))
		b.ReportAllocs()
		for b.Loop() {
			tmp, err := os.CreateTemp(dir, ".recovery.json.tmp*")
			if err != nil {
				b.Fatal(err)
			}
			_, err = tmp.Write(state)
			if err == nil {
				err = tmp.Sync()
			}
			tmp.Close()
			if err == nil {
				err = os.Rename(tmp.Name(), path)
			}
			if err == nil {
				err = modelstore.OSFS.SyncDir(dir)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
