package bench

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/safetensors"
)

// TestMain only removes what the benchmarks built: the fedcluster binary and
// the model files are made on first use, so `go test ./...` without -bench
// builds and writes nothing.
func TestMain(m *testing.M) {
	code := m.Run()
	if workDir != "" {
		os.RemoveAll(workDir)
	}
	os.Exit(code)
}

var (
	workOnce sync.Once
	workDir  string // holds the binary and the model files
	workErr  error

	binOnce sync.Once
	binPath string
	binErr  error
)

func benchWorkDir(b *testing.B) string {
	workOnce.Do(func() { workDir, workErr = os.MkdirTemp("", "fedcluster-bench-") })
	if workErr != nil {
		b.Fatal(workErr)
	}
	return workDir
}

// binEnv names a prebuilt fedcluster binary to benchmark instead of
// building one: for a compiled bench test run on a machine without Go.
const binEnv = "FEDCLUSTER_BIN"

// fedclusterBinary builds ./cmd/fedcluster once per test binary, or returns
// $FEDCLUSTER_BIN.
func fedclusterBinary(b *testing.B) string {
	if p := os.Getenv(binEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			b.Fatalf("%s: %v", binEnv, err)
		}
		return p
	}
	dir := benchWorkDir(b)
	binOnce.Do(func() {
		binPath = filepath.Join(dir, "fedcluster")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/fedcluster/fedcluster/cmd/fedcluster")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("cannot build fedcluster: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		b.Fatal(binErr)
	}
	return binPath
}

var modelFiles sync.Map // floats → path

// modelFile writes (once) a safetensors initial model of two float32
// tensors with n floats in all, filled with small non-zero values.
func modelFile(b *testing.B, n int) string {
	if p, ok := modelFiles.Load(n); ok {
		return p.(string)
	}
	half := n / 2
	l, err := model.NewLayout([]model.Spec{
		{Name: "dense1.weight", Shape: []int{half}},
		{Name: "dense2.weight", Shape: []int{n - half}},
	})
	if err != nil {
		b.Fatal(err)
	}
	m := model.New(l)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range m.Data {
		m.Data[i] = float32(rng.NormFloat64() * 0.01)
	}
	path := filepath.Join(benchWorkDir(b), fmt.Sprintf("model_%d.safetensors", n))
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := safetensors.Encode(f, m, nil); err != nil {
		f.Close()
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	modelFiles.Store(n, path)
	return path
}
