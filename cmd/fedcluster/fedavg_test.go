package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/local"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
	"github.com/fedcluster/fedcluster/wire/flmsg"
	"github.com/fedcluster/fedcluster/wire/safetensors"
)

// testDevice is a minimal device written against the wire package only, so
// the test does not share code with the SDK it could otherwise hide bugs in.
type testDevice struct {
	t      *testing.T
	c      *local.Cluster
	layout *model.Layout
	id     string
	size   int32
	rng    *rand.Rand
	b      *flatbuffers.Builder
	// pinned sends every request to server; else each goes to a random one.
	pinned bool
	server int
	// held, when set, is sent with startFLJob as the checksum of the
	// model the device holds (flmsg.HeaderHeldModel), heldModel's.
	held      string
	heldModel []float32
}

// lenetDevice is one LeNet device with 10 samples.
func lenetDevice(t *testing.T, c *local.Cluster, id string) *testDevice {
	return &testDevice{t: t, c: c, layout: model.LeNet5Layout(), id: id, size: 10, rng: rand.New(rand.NewPCG(1, 1)), b: flatbuffers.NewBuilder(0)}
}

func (d *testDevice) post(path string, body []byte) []byte {
	out, _ := d.postHeld(path, body, "")
	return out
}

// postHeld posts body with held as flmsg.HeaderHeldModel (when set) and
// returns the answer and its flmsg.HeaderModelSHA256.
func (d *testDevice) postHeld(path string, body []byte, held string) ([]byte, string) {
	server := d.server
	if !d.pinned {
		server = d.rng.IntN(len(d.c.ServerPorts))
	}
	req, err := http.NewRequest(http.MethodPost, d.c.ServerURL(server)+path, bytes.NewReader(body))
	if err != nil {
		d.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if held != "" {
		req.Header.Set(flmsg.HeaderHeldModel, held)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Errorf("device %s: POST %s: %v", d.id, path, err)
		return nil, ""
	}
	defer resp.Body.Close()
	out, _ := readBody(resp)
	if resp.StatusCode != 200 {
		d.t.Errorf("device %s: POST %s: HTTP %d %s", d.id, path, resp.StatusCode, out)
		return nil, ""
	}
	return out, resp.Header.Get(flmsg.HeaderModelSHA256)
}

// readBody reads an answer into one buffer of its Content-Length when
// given: under the race detector io.ReadAll's growing copies of a 17 MB
// model made TestFedAvgLargeModel take a third longer.
func readBody(resp *http.Response) ([]byte, error) {
	if n := resp.ContentLength; n > 0 && n <= 1<<30 {
		out := make([]byte, n)
		_, err := io.ReadFull(resp.Body, out)
		return out, err
	}
	return io.ReadAll(resp.Body)
}

func now() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// round runs startFLJob and updateModel for iteration it and returns the
// model it received and the values it uploaded.
func (d *testDevice) round(it int32) (got, upload []float32) {
	body, sum := d.postHeld("/startFLJob", flmsg.BuildRequestFLJob(d.b, &flmsg.FLJobArgs{FLName: "LeNet", FLID: d.id, DataSize: d.size, Timestamp: now()}), d.held)
	r, err := flmsg.DecodeResponseFLJob(body)
	if err != nil || r.Retcode != flmsg.Succeed || r.Iteration != it || !r.IsSelected {
		d.t.Errorf("device %s: startFLJob in iteration %d: %+v %v", d.id, it, r, err)
		return nil, nil
	}
	m := model.New(d.layout)
	switch {
	case r.FeatureMaps.Len() == 0 && d.heldModel != nil && sum == d.held:
		copy(m.Data, d.heldModel)
	case d.heldModel != nil:
		d.t.Errorf("device %s: startFLJob in iteration %d sent the model (%d tensors, checksum %q) the device holds (%q)", d.id, it, r.FeatureMaps.Len(), sum, d.held)
		return nil, nil
	default:
		if n, err := r.FeatureMaps.CopyTo(m); err != nil || n != len(m.Layout.Params) {
			d.t.Errorf("device %s: served model has %d params: %v", d.id, n, err)
			return nil, nil
		}
		if sum != m.SHA256() {
			d.t.Errorf("device %s: startFLJob's model checksum %q, want %q", d.id, sum, m.SHA256())
		}
	}
	got = append([]float32(nil), m.Data...)
	// "Train": move every weight a little, then upload weight × data_size.
	for i := range m.Data {
		m.Data[i] = (m.Data[i] + float32(d.rng.NormFloat64()*0.01)) * float32(d.size)
	}
	body = d.post("/updateModel", flmsg.BuildRequestUpdateModel(d.b, &flmsg.UpdateModelArgs{FLName: "LeNet", FLID: d.id, Iteration: it, Timestamp: now(), Model: m}))
	u, err := flmsg.DecodeResponseUpdateModel(body)
	if err != nil || u.Retcode != flmsg.Succeed || u.Reason != "success not ready" {
		d.t.Errorf("device %s: updateModel in iteration %d: %+v %v", d.id, it, u, err)
		return nil, nil
	}
	return got, m.Data
}

// getModel polls until the model of iteration it is served, for at most
// 30 s (a server holds each poll up to get_model_wait).
func (d *testDevice) getModel(it int32) []float32 {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		body, sum := d.postHeld("/getModel", flmsg.BuildRequestGetModel(d.b, &flmsg.GetModelArgs{FLName: "LeNet", Iteration: it, Timestamp: now()}), "")
		r, err := flmsg.DecodeResponseGetModel(body)
		if err != nil {
			d.t.Errorf("getModel: %v", err)
			return nil
		}
		if r.Retcode == flmsg.SucNotReady {
			time.Sleep(10 * time.Millisecond) // the device protocol's own polling
			continue
		}
		if r.Retcode != flmsg.Succeed || r.Reason != fmt.Sprintf("Get model for iteration %d", it) {
			d.t.Errorf("getModel(%d): %+v", it, r)
			return nil
		}
		m := model.New(d.layout)
		r.FeatureMaps.CopyTo(m)
		if sum != m.SHA256() {
			d.t.Errorf("getModel(%d): model checksum %q, want %q", it, sum, m.SHA256())
		}
		return m.Data
	}
	d.t.Errorf("getModel(%d) never ready", it)
	return nil
}

// TestFedAvgAcrossServers: 16 devices that pick a random server for every
// request train 5 iterations through 4 servers; each iteration's model is
// the float64 FedAvg of what was uploaded, identical on every server, and
// checkpointed. Every answer carrying a model gives its checksum; half the
// devices name the model their getModel brought, and whatever server they
// ask leaves it out of startFLJob; one names a model no server has and
// gets it.
func TestFedAvgAcrossServers(t *testing.T) {
	fedAvgRun(t, 4, 16, 5, model.LeNet5Layout(), "")
}

// TestFedAvgLargeModel: the same with a model whose all-reduce shares span
// several pieces and wait for acknowledgements (4.2M floats over 2 servers:
// 2.1M elements per share, 17 partial pieces and 9 reduced ones), and which
// is over 16 MiB, so servers take their large-model paths (answers sent
// from the stored weights through a block frame, one model in memory).
func TestFedAvgLargeModel(t *testing.T) {
	l, err := model.NewLayout([]model.Spec{{Name: "dense1.weight", Shape: []int{2100, 1000}}, {Name: "dense2.weight", Shape: []int{2_100_003}}})
	if err != nil {
		t.Fatal(err)
	}
	m := model.New(l)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range m.Data {
		m.Data[i] = float32(rng.NormFloat64() * 0.1)
	}
	b, err := safetensors.AppendEncode(nil, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	init := filepath.Join(t.TempDir(), "init.safetensors")
	if err := os.WriteFile(init, b, 0o644); err != nil {
		t.Fatal(err)
	}
	fedAvgRun(t, 2, 4, 3, l, init)
}

func fedAvgRun(t *testing.T, servers, devices, iterations int, layout *model.Layout, initFile string) {
	args := []string{"--start_fl_job_threshold=" + strconv.Itoa(devices), "--fl_iteration_num=" + strconv.Itoa(iterations),
		"--heartbeat_interval=200ms", "--heartbeat_timeout=10s", "--start_fl_job_time_window=60000", "--update_model_time_window=60000"}
	if initFile != "" {
		args = append(args, "--init_file="+initFile)
	}
	c := startCluster(t, servers, args...)
	devs := make([]*testDevice, devices)
	for i := range devs {
		devs[i] = &testDevice{t: t, c: c, layout: layout, id: fmt.Sprintf("dev-%d", i), size: int32(10 + 7*i), rng: rand.New(rand.NewPCG(uint64(i), 42)), b: flatbuffers.NewBuilder(0)}
	}
	// Odd devices hold the model their getModel brings; device 0 names a
	// model no server has.
	devs[0].held = strings.Repeat("0", 64)
	var prev []float32
	for it := int32(1); it <= int32(iterations); it++ {
		uploads := make([][]float32, devices)
		served := make([][]float32, devices)
		var wg sync.WaitGroup
		for i, d := range devs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				served[i], uploads[i] = d.round(it)
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		for i := range served {
			if prev != nil && !equal(served[i], prev) {
				t.Fatalf("iteration %d: device %d was served a model other than iteration %d's", it, i, it-1)
			}
		}
		got := devs[0].getModel(it)
		if rel := fedAvgError(got, uploads, devs); rel > 1e-6 || math.IsNaN(rel) {
			t.Fatalf("iteration %d: model differs from the float64 FedAvg by %g (relative)", it, rel)
		}
		if it < int32(iterations) {
			for i := 1; i < len(devs); i += 2 {
				devs[i].heldModel = devs[i].getModel(it)
				devs[i].held = (&model.Model{Layout: layout, Data: devs[i].heldModel}).SHA256()
			}
		}
		prev = got
	}
	// All servers hold the same model and say so.
	var shas []string
	for i := range c.ServerPorts {
		var st struct {
			Iteration      uint64 `json:"iteration"`
			ModelIteration uint64 `json:"model_iteration"`
			ModelSHA256    string `json:"model_sha256"`
			Engine         string `json:"engine"`
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := local.Poll(ctx, func() (bool, error) {
			if err := local.GetJSON(ctx, c.ServerURL(i)+"/status", &st); err != nil {
				return false, err
			}
			return st.ModelIteration == uint64(iterations), nil
		})
		cancel()
		if err != nil {
			t.Fatalf("server %d status %+v: %v", i, st, err)
		}
		shas = append(shas, st.ModelSHA256)
		if st.Engine == "" {
			t.Fatalf("server %d reports no engine", i)
		}
		// The checkpoint loads back and matches.
		b, err := os.ReadFile(filepath.Join(c.Dir(), "server_"+strconv.Itoa(i), "checkpoints", fmt.Sprintf("LeNet_iteration_%d.safetensors", iterations)))
		if err != nil {
			t.Fatal(err)
		}
		m, meta, err := modelstore.Decode(b, layout)
		if err != nil || !equal(m.Data, prev) || meta.SHA256 != st.ModelSHA256 {
			t.Fatalf("server %d checkpoint: %v (sha %s vs %s)", i, err, meta.SHA256, st.ModelSHA256)
		}
	}
	for _, s := range shas[1:] {
		if s != shas[0] {
			t.Fatalf("servers hold different models: %v", shas)
		}
	}
	// The job is finished: startFLJob refused with the plain text, getModel still served.
	body := devs[0].post("/startFLJob", flmsg.BuildRequestFLJob(devs[0].b, &flmsg.FLJobArgs{FLName: "LeNet", FLID: "late", DataSize: 1, Timestamp: now()}))
	if string(body) != flmsg.BodyJobDisabled {
		t.Fatalf("startFLJob after the last iteration: %q", body)
	}
	if got := devs[0].getModel(int32(iterations)); !equal(got, prev) {
		t.Fatal("getModel after the job differs")
	}
	// A clean stop leaves the newest checkpoint_keep (3) checkpoints and
	// no temporary file (the spare a server overwrites in place).
	c.Stop()
	var want []string
	for it := iterations - 2; it <= iterations; it++ {
		want = append(want, fmt.Sprintf("LeNet_iteration_%d.safetensors", it))
	}
	for i := range c.ServerPorts {
		es, err := os.ReadDir(filepath.Join(c.Dir(), "server_"+strconv.Itoa(i), "checkpoints"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			got = append(got, e.Name())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("server %d left %v in its checkpoint folder, want %v", i, got, want)
		}
	}
}

func equal(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// fedAvgError is the relative L2 distance of got from the float64 FedAvg
// of uploads (weight × data_size, as devices upload them), uploads[i] from
// devs[i].
func fedAvgError(got []float32, uploads [][]float32, devs []*testDevice) float64 {
	want := make([]float64, len(uploads[0]))
	if len(got) != len(want) {
		return math.NaN()
	}
	var n float64
	for i, u := range uploads {
		for j, v := range u {
			want[j] += float64(v)
		}
		n += float64(devs[i].size)
	}
	var errNorm, refNorm float64
	for j := range want {
		want[j] /= n
		errNorm += (float64(got[j]) - want[j]) * (float64(got[j]) - want[j])
		refNorm += want[j] * want[j]
	}
	return math.Sqrt(errNorm / refNorm)
}
