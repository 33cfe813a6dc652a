package device

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// step is one scripted answer of the fake server.
type step struct {
	ep     string        // the endpoint expected ("" accepts any)
	status int           // HTTP status; 0 means 200
	body   func() []byte // built when served
	hangup bool          // close the connection without answering
	header map[string]string
}

// request is what the fake server saw.
type request struct {
	server   int
	ep       string
	flID     string
	dataSize int32
	iter     int32
	ts       string
	first    float32 // first uploaded float (updateModel)
	held     string  // flmsg.HeaderHeldModel
}

// fakeCluster is a set of HTTP servers sharing one script: each request,
// whatever server it reaches, takes the next step. Past the end of the
// script every request is answered "job finished".
type fakeCluster struct {
	t       *testing.T
	mu      sync.Mutex
	script  []step
	reqs    []request
	servers []*httptest.Server
	urls    []string
	// hangupServer, when >= 0, closes every connection to that server.
	hangupServer int
}

func newFakeCluster(t *testing.T, n int, script ...step) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{t: t, script: script, hangupServer: -1}
	for i := range n {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fc.serve(i, w, r) }))
		fc.servers = append(fc.servers, s)
		fc.urls = append(fc.urls, s.URL)
	}
	t.Cleanup(func() {
		for _, s := range fc.servers {
			s.CloseClientConnections()
			s.Close()
		}
	})
	return fc
}

func (fc *fakeCluster) serve(server int, w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		fc.t.Errorf("cannot read request: %s", err)
		return
	}
	ep := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	rq := request{server: server, ep: ep, held: r.Header.Get(flmsg.HeaderHeldModel)}
	switch ep {
	case "startFLJob":
		q, err := flmsg.DecodeRequestFLJob(body)
		if err != nil {
			fc.t.Errorf("bad startFLJob request: %s", err)
		}
		rq.flID, rq.dataSize, rq.iter, rq.ts = string(q.FLID), q.DataSize, q.Iteration, string(q.Timestamp)
	case "updateModel":
		q, err := flmsg.DecodeRequestUpdateModel(body)
		if err != nil {
			fc.t.Errorf("bad updateModel request: %s", err)
		}
		rq.flID, rq.iter, rq.ts = string(q.FLID), q.Iteration, string(q.Timestamp)
		if q.FeatureMaps.Len() > 0 {
			rq.first = q.FeatureMaps.At(0).Data(nil)[0]
		}
	case "getModel":
		q, err := flmsg.DecodeRequestGetModel(body)
		if err != nil {
			fc.t.Errorf("bad getModel request: %s", err)
		}
		rq.iter, rq.ts = q.Iteration, string(q.Timestamp)
	default:
		fc.t.Errorf("unexpected path %q", r.URL.Path)
	}

	fc.mu.Lock()
	fc.reqs = append(fc.reqs, rq)
	hangup := server == fc.hangupServer
	var st step
	if !hangup {
		if len(fc.script) == 0 {
			st = step{body: text(flmsg.BodyJobDisabled)}
		} else {
			st, fc.script = fc.script[0], fc.script[1:]
		}
	}
	fc.mu.Unlock()

	if hangup || st.hangup {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			fc.t.Errorf("cannot hijack: %s", err)
			return
		}
		conn.Close()
		return
	}
	if st.ep != "" && st.ep != ep {
		fc.t.Errorf("request %d: got %s, the script expects %s", len(fc.reqs), ep, st.ep)
	}
	for k, v := range st.header {
		w.Header()[k] = []string{v} // as spelled
	}
	if st.status != 0 {
		w.WriteHeader(st.status)
	}
	w.Write(st.body())
}

// endpoints lists the requests as "server:endpoint".
func (fc *fakeCluster) endpoints() string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var b strings.Builder
	for i, r := range fc.reqs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(r.server) + ":" + r.ep)
	}
	return b.String()
}

func (fc *fakeCluster) requests() []request {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append([]request(nil), fc.reqs...)
}

// The model the fake server serves: two tensors.
var testLayout = func() *model.Layout {
	l, err := model.NewLayout([]model.Spec{{Name: "fc.weight", Shape: []int{2, 3}}, {Name: "fc.bias", Shape: []int{2}}})
	if err != nil {
		panic(err)
	}
	return l
}()

var testLayoutOther = func() *model.Layout {
	l, err := model.NewLayout([]model.Spec{{Name: "fc.weight", Shape: []int{3, 3}}, {Name: "fc.bias", Shape: []int{2}}})
	if err != nil {
		panic(err)
	}
	return l
}()

func testModel(v float32) *model.Model {
	m := model.New(testLayout)
	for i := range m.Data {
		m.Data[i] = v + float32(i)
	}
	return m
}

func millisFromNow(d time.Duration) string {
	return strconv.FormatInt(time.Now().Add(d).UnixMilli(), 10)
}

var testPlan = flmsg.Plan{ServerMode: "FEDERATED_LEARNING", FLName: "fl_test_job", Iterations: 5, Epochs: 1, MiniBatch: 16, LR: 0.01}

func startOK(iter int32) step {
	return step{ep: "startFLJob", body: func() []byte {
		plan := testPlan
		return flmsg.BuildResponseFLJob(flatbuffers.NewBuilder(0), &flmsg.FLJobReply{
			Retcode: flmsg.Succeed, Reason: flmsg.ReasonStartFLJobSuccess, Iteration: iter, IsSelected: true,
			NextReqTime: millisFromNow(time.Second), Plan: &plan, Model: testModel(float32(iter)),
		})
	}}
}

func startCode(code int32, next time.Duration) step {
	return step{ep: "startFLJob", body: func() []byte {
		return flmsg.BuildResponseFLJob(flatbuffers.NewBuilder(0), &flmsg.FLJobReply{
			Retcode: code, Reason: "scripted " + RetcodeName(code), NextReqTime: millisFromNow(next),
		})
	}}
}

func updateCode(code int32, next time.Duration) step {
	return step{ep: "updateModel", body: func() []byte {
		return flmsg.BuildResponseUpdateModel(flatbuffers.NewBuilder(0), &flmsg.UpdateModelReply{
			Retcode: code, Reason: flmsg.ReasonUpdateModelSuccess, NextReqTime: millisFromNow(next),
		})
	}}
}

func updateOK() step { return updateCode(flmsg.Succeed, time.Second) }

func getCode(code int32, iter int32) step {
	return step{ep: "getModel", body: func() []byte {
		r := &flmsg.GetModelReply{Retcode: code, Reason: "scripted " + RetcodeName(code), Iteration: iter,
			Timestamp: millisFromNow(time.Second)}
		if code == flmsg.Succeed {
			r.Model = testModel(100 + float32(iter))
		}
		return flmsg.BuildResponseGetModel(flatbuffers.NewBuilder(0), r)
	}}
}

func getOK(iter int32) step       { return getCode(flmsg.Succeed, iter) }
func getNotReady(iter int32) step { return getCode(flmsg.SucNotReady, iter) }

// summed sends st with m's checksum, as fedcluster servers do.
func summed(st step, m *model.Model) step {
	st.header = map[string]string{flmsg.HeaderModelSHA256: m.SHA256()}
	return st
}

// startHeld answers startFLJob of iter without the model, confirming sum.
func startHeld(iter int32, sum string) step {
	return step{ep: "startFLJob", header: map[string]string{flmsg.HeaderModelSHA256: sum}, body: func() []byte {
		plan := testPlan
		return flmsg.BuildResponseFLJob(flatbuffers.NewBuilder(0), &flmsg.FLJobReply{
			Retcode: flmsg.Succeed, Reason: flmsg.ReasonStartFLJobSuccess, Iteration: iter, IsSelected: true,
			NextReqTime: millisFromNow(time.Second), Plan: &plan,
		})
	}}
}

func text(s string) func() []byte { return func() []byte { return []byte(s) } }

func textStep(ep, s string) step { return step{ep: ep, body: text(s)} }

// truncated serves the first half of st's body.
func truncated(st step) step {
	return step{ep: st.ep, body: func() []byte { b := st.body(); return b[:len(b)/2] }}
}

// corrupted serves st's body with its root offset pointing past the end.
func corrupted(st step) step {
	return step{ep: st.ep, body: func() []byte { b := st.body(); b[0], b[1], b[2], b[3] = 0xf0, 0xff, 0xff, 0x7f; return b }}
}

// fastOptions are options with millisecond delays and small bounds.
func fastOptions(servers []string) Options {
	o := DefaultOptions()
	o.FLID = "fl_lenet_0"
	o.DataSize = 4
	o.Servers = servers
	o.RequestTimeout = 2 * time.Second
	o.MaxAttempts = 3
	o.RetryMinDelay, o.RetryMaxDelay = time.Millisecond, 4*time.Millisecond
	o.RefusalDelay = 2 * time.Millisecond
	o.MaxRefusals = 4
	o.PollMinDelay, o.PollMaxDelay = time.Millisecond, 4*time.Millisecond
	o.MaxPolls = 20
	o.MaxPollTime = 5 * time.Second
	o.OutOfTimeMinWait, o.OutOfTimeMaxWait = time.Millisecond, 200*time.Millisecond
	o.MaxRestarts = 3
	o.Seed = 1
	return o
}

// addOne trains by adding 1 to every weight.
var addOne = TrainerFunc(func(_ context.Context, job *Job) (float32, error) {
	for i := range job.Model.Data {
		job.Model.Data[i]++
	}
	return 0.5, nil
})

// listenerGone returns the base URL of a port nothing listens on.
func listenerGone(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}
