package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// TestBadInputIsHarmless sends every kind of hostile request and checks
// each gets its protocol answer, nothing crashes, and a well-behaved device
// afterwards completes the iteration with exactly its own update.
func TestBadInputIsHarmless(t *testing.T) {
	c := startCluster(t, 1, "--start_fl_job_threshold=2", "--fl_iteration_num=1", "--max_body_size=1MiB")
	b := flatbuffers.NewBuilder(0)
	d := &testDevice{t: t, c: c, layout: model.LeNet5Layout(), id: "good", size: 3, rng: rand.New(rand.NewPCG(1, 2)), b: flatbuffers.NewBuilder(0)}

	startJob := func(id string, size int32, ts string) flmsg.ResponseFLJob {
		t.Helper()
		r, err := flmsg.DecodeResponseFLJob(d.post("/startFLJob", flmsg.BuildRequestFLJob(b, &flmsg.FLJobArgs{FLName: "LeNet", FLID: id, DataSize: size, Timestamp: ts})))
		if err != nil {
			t.Fatalf("startFLJob(%s): %v", id, err)
		}
		return r
	}
	update := func(id string, it int32, m *model.Model, tensors []flmsg.Tensor) flmsg.ResponseUpdateModel {
		t.Helper()
		r, err := flmsg.DecodeResponseUpdateModel(d.post("/updateModel", flmsg.BuildRequestUpdateModel(b, &flmsg.UpdateModelArgs{FLName: "LeNet", FLID: id, Iteration: it, Timestamp: now(), Model: m, Tensors: tensors})))
		if err != nil {
			t.Fatalf("updateModel(%s): %v", id, err)
		}
		return r
	}
	expect := func(what string, code int32, reason string, gotCode int32, gotReason string) {
		t.Helper()
		if gotCode != code || !strings.Contains(gotReason, reason) {
			t.Fatalf("%s: got %d %q, want %d containing %q", what, gotCode, gotReason, code, reason)
		}
	}

	// Malformed bodies on every endpoint.
	for _, ep := range []struct{ path, table string }{{"/startFLJob", "RequestFLJob"}, {"/updateModel", "RequestUpdateModel"}, {"/getModel", "RequestGetModel"}} {
		for _, body := range [][]byte{nil, {1, 2, 3}, bytes.Repeat([]byte{0xff}, 64)} {
			out := d.post(ep.path, body)
			var code int32
			var reason string
			switch ep.path {
			case "/startFLJob":
				r, err := flmsg.DecodeResponseFLJob(out)
				if err != nil {
					t.Fatal(err)
				}
				code, reason = r.Retcode, r.Reason
			case "/updateModel":
				r, err := flmsg.DecodeResponseUpdateModel(out)
				if err != nil {
					t.Fatal(err)
				}
				code, reason = r.Retcode, r.Reason
			default:
				r, err := flmsg.DecodeResponseGetModel(out)
				if err != nil {
					t.Fatal(err)
				}
				code, reason = r.Retcode, r.Reason
			}
			expect(ep.path+" garbage", flmsg.RequestError, "The schema of "+ep.table+" is invalid.", code, reason)
		}
	}
	// Another method than POST on the device routes: 405, with Allow.
	for _, path := range []string{"/startFLJob", "/updateModel", "/getModel"} {
		resp, err := http.Get(c.ServerURL(0) + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" || !strings.Contains(string(body), "use POST") {
			t.Fatalf("GET %s: %d Allow %q %s, want 405 with Allow POST", path, resp.StatusCode, resp.Header.Get("Allow"), body)
		}
	}

	// Admission refusals.
	r := startJob("skewed", 1, "1000")
	expect("skewed timestamp", flmsg.RequestError, "replay_attack_time_diff", r.Retcode, r.Reason)
	r = startJob("legacy", 1, "2020/11/16/19/18")
	expect("r1.5 timestamp", flmsg.RequestError, "not epoch milliseconds", r.Retcode, r.Reason)
	r = startJob("empty", 0, now())
	expect("data_size 0", flmsg.OutOfTime, "FL job data size is not enough.", r.Retcode, r.Reason)
	r = startJob("huge", math.MaxInt32, now())
	expect("data_size huge", flmsg.RequestError, "larger than the limit", r.Retcode, r.Reason)

	// An update from a device that never started the job.
	m := model.InitLeNet5(9)
	u := update("stranger", 1, m, nil)
	expect("foreign fl_id", flmsg.OutOfTime, "devices_meta for stranger is not set", u.Retcode, u.Reason)

	// Admit the good device, then send it bad updates: none may count.
	r = startJob("good", 3, now())
	expect("good startFLJob", flmsg.Succeed, "success", r.Retcode, r.Reason)
	r = startJob("good", 3, now())
	expect("duplicate startFLJob", flmsg.OutOfTime, "Updating device metadata failed", r.Retcode, r.Reason)
	served := model.New(model.LeNet5Layout())
	r2, _ := flmsg.DecodeResponseFLJob(d.post("/startFLJob", flmsg.BuildRequestFLJob(b, &flmsg.FLJobArgs{FLName: "LeNet", FLID: "other", DataSize: 1, Timestamp: now()})))
	r2.FeatureMaps.CopyTo(served)

	bad := func(mut func([]flmsg.Tensor) []flmsg.Tensor, reason string) {
		t.Helper()
		var ts []flmsg.Tensor
		for _, p := range m.Layout.Params {
			ts = append(ts, flmsg.Tensor{Name: p.Name, Data: append([]float32(nil), m.Data[p.Offset:p.Offset+p.Len]...)})
		}
		u := update("good", 1, nil, mut(ts))
		expect("bad update "+reason, flmsg.RequestError, reason, u.Retcode, u.Reason)
	}
	bad(func(ts []flmsg.Tensor) []flmsg.Tensor { ts[0].Name = "conv9.weight"; return ts }, "Unknown weight name")
	bad(func(ts []flmsg.Tensor) []flmsg.Tensor { ts[2].Data = ts[2].Data[:10]; return ts }, "has 10 values")
	bad(func(ts []flmsg.Tensor) []flmsg.Tensor { ts[3].Data[5] = float32(math.NaN()); return ts }, "NaN or Inf")
	bad(func(ts []flmsg.Tensor) []flmsg.Tensor { ts[4].Data[0] = float32(math.Inf(-1)); return ts }, "NaN or Inf")
	bad(func(ts []flmsg.Tensor) []flmsg.Tensor { return ts[:3] }, "feature maps")
	bad(func(ts []flmsg.Tensor) []flmsg.Tensor { ts[1] = ts[0]; return ts }, "appears twice")
	bad(func(ts []flmsg.Tensor) []flmsg.Tensor { return nil }, "Feature map is empty.")
	u = update("good", 7, m, nil)
	expect("wrong iteration", flmsg.OutOfTime, "iteration number is invalid", u.Retcode, u.Reason)

	// An oversized body gets 413 and the server lives on. The request is
	// written by hand: the answer comes once the headers announce too much
	// and the first bytes of the body are in, long before the whole body (a
	// client still sending it all would see its connection reset).
	conn, err := net.Dial("tcp", strings.TrimPrefix(c.ServerURL(0), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /updateModel HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 2<<20)
	conn.Write(make([]byte, 16<<10))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	status, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 413") {
		t.Fatalf("oversized body: %q %v, want HTTP 413", status, err)
	}
	// startFLJob and getModel take small bodies: their limit is named.
	conn, err = net.Dial("tcp", strings.TrimPrefix(c.ServerURL(0), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /startFLJob HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 100<<10)
	conn.Write(make([]byte, 16<<10))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("oversized startFLJob: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	conn.Close()
	if resp.StatusCode != 413 || !strings.Contains(string(body), "at most 65536 bytes") {
		t.Fatalf("oversized startFLJob: HTTP %d %s, want 413 naming the limit", resp.StatusCode, body)
	}

	// The two admitted devices upload; the model is exactly their average.
	for i := range m.Data {
		m.Data[i] *= 3
	}
	u = update("good", 1, m, nil)
	expect("good update", flmsg.Succeed, "success not ready", u.Retcode, u.Reason)
	u = update("good", 1, m, nil)
	expect("duplicate update", flmsg.OutOfTime, "", u.Retcode, u.Reason)
	other := served.Clone()
	u = update("other", 1, other, nil)
	expect("second update", flmsg.Succeed, "success not ready", u.Retcode, u.Reason)
	got := d.getModel(1)
	for i := range got {
		want := (float64(m.Data[i]) + float64(other.Data[i])) / 4
		if math.Abs(float64(got[i])-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Fatalf("element %d: %v, want %v: a refused update leaked into the model", i, got[i], want)
		}
	}
}
