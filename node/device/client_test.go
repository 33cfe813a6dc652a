package device

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

func TestRunIterationScript(t *testing.T) {
	// f runs one RunIteration against one server playing script and checks
	// the requests it saw ("startFLJob updateModel ..."), the error
	// (nil, a sentinel for errors.Is, or a *RetcodeError's code) and the
	// time it took (at least minDur, at most 3 s).
	f := func(script []step, wantReqs string, wantErr error, wantCode int32, minDur time.Duration) {
		t.Helper()
		fc := newFakeCluster(t, 1, script...)
		c, err := New(fastOptions(fc.urls))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		res, err := c.RunIteration(context.Background(), addOne)
		took := time.Since(start)
		var got []string
		for _, r := range fc.requests() {
			got = append(got, r.ep)
		}
		if g := strings.Join(got, " "); g != wantReqs {
			t.Errorf("requests:\n got %s\nwant %s", g, wantReqs)
		}
		var rerr *RetcodeError
		switch {
		case wantCode != 0:
			if !errors.As(err, &rerr) || rerr.Retcode != wantCode {
				t.Errorf("error %v, want a RetcodeError %d", err, wantCode)
			}
		case wantErr == nil && err != nil:
			t.Errorf("unexpected error %v", err)
		case wantErr != nil && !errors.Is(err, wantErr):
			t.Errorf("error %v, want %v", err, wantErr)
		}
		if took < minDur || took > 3*time.Second {
			t.Errorf("took %s, want between %s and 3s", took, minDur)
		}
		if err == nil {
			if res.Iteration != 1 || res.ServerIteration != 2 || res.Model == nil || res.Model.Data[0] != 102 {
				t.Errorf("result %+v, want iteration 1, server iteration 2, model of iteration 2", res)
			}
		}
	}
	const (
		S = "startFLJob"
		U = "updateModel"
		G = "getModel"
	)
	seq := func(eps ...string) string { return strings.Join(eps, " ") }
	happy := []step{startOK(1), updateOK(), getOK(2)}
	then := func(first []step, rest ...step) []step { return append(append([]step{}, first...), rest...) }

	// The happy path and getModel polling.
	f(happy, seq(S, U, G), nil, 0, 0)
	f([]step{startOK(1), updateOK(), getNotReady(1), getNotReady(1), getOK(2)}, seq(S, U, G, G, G), nil, 0, 0)

	// OutOfTime: wait for next_req_time, then start again.
	f(then([]step{startCode(flmsg.OutOfTime, 40*time.Millisecond)}, happy...), seq(S, S, U, G), nil, 0, 30*time.Millisecond)
	f(then([]step{startOK(1), updateCode(flmsg.OutOfTime, 30*time.Millisecond)}, happy...), seq(S, U, S, U, G), nil, 0, 20*time.Millisecond)
	f(then([]step{startOK(1), updateOK(), getCode(flmsg.OutOfTime, 1)}, happy...), seq(S, U, G, S, U, G), nil, 0, 0)
	// next_req_time in the past still waits a little; missing is the same.
	f(then([]step{startCode(flmsg.OutOfTime, -time.Hour)}, happy...), seq(S, S, U, G), nil, 0, time.Millisecond)

	// RequestError and SystemError are reported.
	f([]step{startCode(flmsg.RequestError, 0)}, seq(S), nil, flmsg.RequestError, 0)
	f([]step{startCode(flmsg.SystemError, 0)}, seq(S), nil, flmsg.SystemError, 0)
	f([]step{startOK(1), updateCode(flmsg.RequestError, 0)}, seq(S, U), nil, flmsg.RequestError, 0)
	f([]step{startOK(1), updateCode(flmsg.SystemError, 0)}, seq(S, U), nil, flmsg.SystemError, 0)
	f([]step{startOK(1), updateOK(), getCode(flmsg.RequestError, 1)}, seq(S, U, G), nil, flmsg.RequestError, 0)
	f([]step{startOK(1), updateOK(), getCode(flmsg.SystemError, 1)}, seq(S, U, G), nil, flmsg.SystemError, 0)
	f([]step{startCode(77, 0)}, seq(S), nil, 77, 0)

	// Plain-text refusals: safemode and not ready retry the same request.
	f(then([]step{textStep(S, flmsg.BodySafemode)}, happy...), seq(S, S, U, G), nil, 0, time.Millisecond)
	f(then([]step{textStep(S, flmsg.BodyJobNotReady)}, happy...), seq(S, S, U, G), nil, 0, time.Millisecond)
	f([]step{startOK(1), textStep(U, flmsg.BodySafemode), updateOK(), textStep(G, flmsg.BodySafemode), getOK(2)},
		seq(S, U, U, G, G), nil, 0, 0)
	// Disabled or finished ends the job, at any round.
	f([]step{textStep(S, flmsg.BodyJobDisabled)}, seq(S), ErrJobFinished, 0, 0)
	f([]step{startOK(1), textStep(U, flmsg.BodyJobDisabled)}, seq(S, U), ErrJobFinished, 0, 0)
	// Another text is not trusted.
	f([]step{textStep(S, "The output of the round startFLJob is empty.")}, seq(S), flmsg.ErrRefused, 0, 0)

	// Broken answers are reported, not used.
	f([]step{truncated(startOK(1))}, seq(S), flmsg.ErrInvalidSchema, 0, 0)
	f([]step{corrupted(startOK(1))}, seq(S), ErrBadResponse, 0, 0)
	f([]step{startOK(1), truncated(updateOK())}, seq(S, U), ErrBadResponse, 0, 0)
	f([]step{startOK(1), updateOK(), corrupted(getOK(2))}, seq(S, U, G), flmsg.ErrInvalidSchema, 0, 0)

	// Lost answers are retried (one server here, so on the same one).
	f(then([]step{{ep: S, hangup: true}}, happy...), seq(S, S, U, G), nil, 0, 0)
	f(then([]step{{ep: S, status: http.StatusServiceUnavailable, body: text("gone")}}, happy...), seq(S, S, U, G), nil, 0, 0)
}

func TestRunIterationHTTPError(t *testing.T) {
	fc := newFakeCluster(t, 1, step{status: http.StatusInternalServerError, body: text(`{"error_message":"boom","code":"1"}`)})
	c, err := New(fastOptions(fc.urls))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RunIteration(context.Background(), addOne)
	var herr *HTTPError
	if !errors.As(err, &herr) || herr.Status != 500 || !strings.Contains(herr.Body, "boom") {
		t.Fatalf("error %v, want an HTTPError 500 with the body", err)
	}
}

func TestRunIterationBounds(t *testing.T) {
	// f runs RunIteration against a server that repeats one answer and
	// checks that the device gives up with ErrGaveUp after exactly
	// wantReqs requests, within 2 s.
	f := func(prefix []step, repeat step, wantReqs int) {
		t.Helper()
		script := append([]step{}, prefix...)
		for range 200 {
			script = append(script, repeat)
		}
		fc := newFakeCluster(t, 1, script...)
		start := time.Now()
		c, err := New(fastOptions(fc.urls))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.RunIteration(context.Background(), addOne)
		if !errors.Is(err, ErrGaveUp) {
			t.Errorf("error %v, want ErrGaveUp", err)
		}
		if n := len(fc.requests()); n != wantReqs {
			t.Errorf("%d requests, want %d: %s", n, wantReqs, fc.endpoints())
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("took %s", took)
		}
	}
	o := fastOptions(nil)
	// getModel always SucNotReady: MaxPolls polls.
	f([]step{startOK(1), updateOK()}, getNotReady(1), 2+o.MaxPolls)
	// Always safemode: the first try and MaxRefusals retries.
	f(nil, textStep("startFLJob", flmsg.BodySafemode), 1+o.MaxRefusals)
	// Always OutOfTime: the first try and MaxRestarts restarts.
	f(nil, startCode(flmsg.OutOfTime, time.Millisecond), 1+o.MaxRestarts)
	// Always hanging up: MaxAttempts.
	f(nil, step{hangup: true}, o.MaxAttempts)
	f(nil, step{status: http.StatusBadGateway, body: text("bad gateway")}, o.MaxAttempts)
}

func TestPollTimeBound(t *testing.T) {
	script := []step{startOK(1), updateOK()}
	for range 1000 {
		script = append(script, getNotReady(1))
	}
	fc := newFakeCluster(t, 1, script...)
	o := fastOptions(fc.urls)
	o.MaxPolls = 1000
	o.MaxPollTime = 100 * time.Millisecond
	o.PollMinDelay, o.PollMaxDelay = 5*time.Millisecond, 20*time.Millisecond
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = c.RunIteration(context.Background(), addOne)
	took := time.Since(start)
	if !errors.Is(err, ErrGaveUp) {
		t.Fatalf("error %v, want ErrGaveUp", err)
	}
	// 100 ms with delays of at least 3.75 ms: no spinning.
	if n := len(fc.requests()); n > 2+100/3 {
		t.Errorf("%d requests in %s: the client spins", n, took)
	}
	if took < 100*time.Millisecond || took > time.Second {
		t.Errorf("took %s, want about 100ms", took)
	}
}

func TestContextCancelStopsWaiting(t *testing.T) {
	fc := newFakeCluster(t, 1, startCode(flmsg.OutOfTime, time.Hour))
	o := fastOptions(fc.urls)
	o.OutOfTimeMaxWait = time.Hour
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.RunIteration(ctx, addOne)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the context's", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %s after the context ended", took)
	}
}

func TestRequestsContent(t *testing.T) {
	fc := newFakeCluster(t, 1, startOK(3), updateOK(), getNotReady(3), getOK(4))
	o := fastOptions(fc.urls)
	o.DataSize = 10
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	var plan *Job
	res, err := c.RunIteration(context.Background(), TrainerFunc(func(ctx context.Context, job *Job) (float32, error) {
		j := *job
		plan = &j
		return addOne(ctx, job)
	}))
	if err != nil {
		t.Fatal(err)
	}
	if plan == nil || !plan.HasPlan || plan.Plan != testPlan || plan.Iteration != 3 {
		t.Fatalf("trainer got %+v, want the plan of iteration 3", plan)
	}
	reqs := fc.requests()
	now := time.Now().UnixMilli()
	for i, r := range reqs {
		ms, err := strconv.ParseInt(r.ts, 10, 64)
		if err != nil || ms > now || ms < now-5000 {
			t.Errorf("request %d: timestamp %q is not a recent epoch-ms", i, r.ts)
		}
	}
	if r := reqs[0]; r.flID != "fl_lenet_0" || r.dataSize != 10 {
		t.Errorf("startFLJob %+v", r)
	}
	// Served weight 3 (iteration 3), trained +1, uploaded × data size.
	if r := reqs[1]; r.flID != "fl_lenet_0" || r.iter != 3 || r.first != (3+1)*10 {
		t.Errorf("updateModel %+v, want iteration 3 and first weight 40", r)
	}
	if reqs[2].iter != 3 || reqs[3].iter != 3 {
		t.Errorf("getModel iterations %d %d, want 3", reqs[2].iter, reqs[3].iter)
	}
	if res.Iteration != 3 || res.ServerIteration != 4 || res.Loss != 0.5 || res.Model.Data[0] != 104 {
		t.Errorf("result %+v", res)
	}
	if got := res.Model.Layout.Params[0].Name; got != "fc.weight" {
		t.Errorf("layout from the served model: %q", got)
	}
}

func TestLayoutMismatch(t *testing.T) {
	fc := newFakeCluster(t, 1, startOK(1))
	o := fastOptions(fc.urls)
	o.Layout = testLayoutOther
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RunIteration(context.Background(), addOne)
	if !errors.Is(err, ErrBadResponse) {
		t.Fatalf("error %v, want ErrBadResponse", err)
	}
}

func TestFailover(t *testing.T) {
	// f runs three iterations with server 0 broken by breakIt and checks
	// that every request reaching it is followed by one to server 1 and
	// that server 1 answered the whole script.
	f := func(breakIt func(fc *fakeCluster)) {
		t.Helper()
		var script []step
		for it := int32(1); it <= 3; it++ {
			script = append(script, startOK(it), updateOK(), getOK(it+1))
		}
		fc := newFakeCluster(t, 2, script...)
		breakIt(fc)
		var obs []Observation
		o := fastOptions(fc.urls)
		o.Observe = func(ob Observation) { obs = append(obs, ob) }
		c, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		for it := int32(1); it <= 3; it++ {
			res, err := c.RunIteration(context.Background(), addOne)
			if err != nil || res.Iteration != it {
				t.Fatalf("iteration %d: %+v, %v", it, res, err)
			}
		}
		_, err = c.RunIteration(context.Background(), addOne)
		if !errors.Is(err, ErrJobFinished) {
			t.Fatalf("after the script: %v, want ErrJobFinished", err)
		}
		failed := 0
		for i, ob := range obs {
			if ob.Server == 0 {
				failed++
				if ob.Outcome != OutcomeTransport {
					t.Errorf("observation %d: %+v, want a transport failure", i, ob)
				}
				if i+1 >= len(obs) || obs[i+1].Server != 1 {
					t.Errorf("observation %d: the retry did not go to server 1", i)
				}
			} else if ob.Outcome == OutcomeTransport {
				t.Errorf("observation %d: %+v", i, ob)
			}
		}
		if failed == 0 {
			t.Errorf("no request reached server 0 (seed): %+v", obs)
		}
	}
	// A server that closes every connection.
	f(func(fc *fakeCluster) { fc.hangupServer = 0 })
	// A server that is gone (connection refused).
	f(func(fc *fakeCluster) { fc.servers[0].Close(); fc.urls[0] = listenerGone(t) })
}

func TestParseServers(t *testing.T) {
	f := func(spec, want string) {
		t.Helper()
		got, err := ParseServers(spec)
		if err != nil {
			got = []string{"error"}
		}
		if g := strings.Join(got, ","); g != want {
			t.Errorf("ParseServers(%q) = %s (%v), want %s", spec, g, err, want)
		}
	}
	f("127.0.0.1:6668", "http://127.0.0.1:6668")
	f("127.0.0.1:6668-6671", "http://127.0.0.1:6668,http://127.0.0.1:6669,http://127.0.0.1:6670,http://127.0.0.1:6671")
	f("a:1, b:2,,a:1", "http://a:1,http://b:2")
	f(":7000", "http://127.0.0.1:7000")
	f("https://h:443/", "https://h:443")
	f("http://h:1-2", "http://h:1,http://h:2")
	f("[::1]:80", "http://[::1]:80")
	f("", "error")
	f("host", "error")
	f("h:0", "error")
	f("h:70000", "error")
	f("h:9-8", "error")
	f("h:1-65535", "error")
	f("ftp://h:1", "error")
	f("h/x:80", "error")
	f("u@h:1", "error")
	f("h h:1", "error")
	f("[fe80::1%eth0]:80", "error")
	f("fedcluster_server_1:6668", "http://fedcluster_server_1:6668")
}

func TestValidate(t *testing.T) {
	f := func(change func(o *Options), field string) {
		t.Helper()
		o := fastOptions([]string{"http://127.0.0.1:1"})
		change(&o)
		err := o.Validate()
		if field == "" {
			if err != nil {
				t.Errorf("unexpected error %v", err)
			}
			return
		}
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("error %v, want one naming %s", err, field)
		}
	}
	f(func(*Options) {}, "")
	f(func(o *Options) { o.FLID = "" }, "FLID")
	f(func(o *Options) { o.DataSize = 0 }, "DataSize")
	f(func(o *Options) { o.Servers = nil }, "Servers")
	f(func(o *Options) { o.Servers = []string{"127.0.0.1:1"} }, "Servers")
	f(func(o *Options) { o.URLPrefix = "fl" }, "URLPrefix")
	f(func(o *Options) { o.URLPrefix = "/fl/" }, "URLPrefix")
	f(func(o *Options) { o.URLPrefix = "/fl" }, "")
	f(func(o *Options) { o.MaxAttempts = 0 }, "MaxAttempts")
	f(func(o *Options) { o.PollMaxDelay = 0 }, "PollMinDelay")
	f(func(o *Options) { o.MaxPolls = 0 }, "MaxPolls")
	f(func(o *Options) { o.OutOfTimeMaxWait = 0 }, "OutOfTimeMinWait")
}

func TestURLPrefix(t *testing.T) {
	fc := newFakeCluster(t, 1, startOK(1), updateOK(), getOK(2))
	var paths []string
	fc.servers[0].Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.Path)
		fc.serve(0, w, r)
	})
	o := fastOptions(fc.urls)
	o.URLPrefix = "/fl/v1"
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RunIteration(context.Background(), addOne); err != nil {
		t.Fatal(err)
	}
	if g := strings.Join(paths, " "); g != "/fl/v1/startFLJob /fl/v1/updateModel /fl/v1/getModel" {
		t.Fatalf("paths %s", g)
	}
}

func TestBuildAllocs(t *testing.T) {
	c, err := New(fastOptions([]string{"http://127.0.0.1:1"}))
	if err != nil {
		t.Fatal(err)
	}
	m := testModel(1)
	c.sending = m
	c.build(EndpointUpdateModel) // grows the builder once
	for ep := range NumEndpoints {
		if n := testing.AllocsPerRun(100, func() { c.build(ep) }); n != 0 {
			t.Errorf("building %s allocates %.0f times", ep, n)
		}
	}
}

func TestRequestMemoryNotProportionalToModel(t *testing.T) {
	// A fasthttp server on an in-memory listener answers every round with
	// prebuilt LeNet-5 bodies; a device runs iterations against it and
	// must allocate far less per iteration than the model's size.
	if raceEnabled {
		t.Skip("the race detector empties sync.Pools at random")
	}
	m := model.InitLeNet5(1)
	plan := testPlan
	bodies := map[string][]byte{
		"/startFLJob": append([]byte(nil), flmsg.BuildResponseFLJob(flatbuffers.NewBuilder(0), &flmsg.FLJobReply{
			Retcode: flmsg.Succeed, Reason: "success", Iteration: 1, IsSelected: true, NextReqTime: "1", Plan: &plan, Model: m})...),
		"/updateModel": append([]byte(nil), flmsg.BuildResponseUpdateModel(flatbuffers.NewBuilder(0), &flmsg.UpdateModelReply{
			Retcode: flmsg.Succeed, Reason: flmsg.ReasonUpdateModelSuccess, NextReqTime: "1"})...),
		"/getModel": append([]byte(nil), flmsg.BuildResponseGetModel(flatbuffers.NewBuilder(0), &flmsg.GetModelReply{
			Retcode: flmsg.Succeed, Reason: "Get model for iteration 1", Iteration: 2, Model: m, Timestamp: "1"})...),
	}
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{MaxRequestBodySize: 1 << 24, Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetBody(bodies[string(ctx.Path())])
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(); ln.Close() })

	hc := NewHTTPClient(1)
	hc.Dial = func(string) (net.Conn, error) { return ln.Dial() }
	o := fastOptions([]string{"http://fake:1"})
	o.HTTP = hc
	o.Layout = model.LeNet5Layout()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	noop := TrainerFunc(func(context.Context, *Job) (float32, error) { return 0, nil })
	run := func() {
		if _, err := c.RunIteration(context.Background(), noop); err != nil {
			t.Fatal(err)
		}
	}
	run() // sizes the buffers
	var before, after runtime.MemStats
	const n = 50
	runtime.ReadMemStats(&before)
	for range n {
		run()
	}
	runtime.ReadMemStats(&after)
	perIter := (after.TotalAlloc - before.TotalAlloc) / n
	modelBytes := uint64(4 * len(m.Data))
	t.Logf("%d bytes allocated per iteration (client and server) for a %d-byte model", perIter, modelBytes)
	if perIter > modelBytes/4 {
		t.Errorf("%d bytes allocated per iteration, the model is %d bytes", perIter, modelBytes)
	}
}

func TestSingleRounds(t *testing.T) {
	fc := newFakeCluster(t, 1, startOK(5), updateOK(), getNotReady(5), getOK(6))
	c, err := New(fastOptions(fc.urls))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := c.StartFLJob(ctx)
	if err != nil || st.Retcode != flmsg.Succeed || st.Iteration != 5 || !st.HasPlan || st.NextReqTime.Before(time.Now()) {
		t.Fatalf("StartFLJob: %+v, %v", st, err)
	}
	m := testModel(2)
	up, err := c.UpdateModel(ctx, 5, m, 0)
	if err != nil || up.Retcode != flmsg.Succeed || up.Reason != flmsg.ReasonUpdateModelSuccess {
		t.Fatalf("UpdateModel: %+v, %v", up, err)
	}
	if m.Data[0] != 2 {
		t.Fatalf("UpdateModel changed its argument: %v", m.Data)
	}
	gm, err := c.PollModel(ctx, 5)
	if err != nil || gm.Retcode != flmsg.Succeed || gm.Iteration != 6 || c.Model().Data[0] != 106 {
		t.Fatalf("PollModel: %+v, %v", gm, err)
	}
	if r := fc.requests()[1]; r.first != 2*4 {
		t.Fatalf("uploaded %g, want weight × data size = 8", r.first)
	}
}

// A load generator uploads its shared block after a head of its own,
// reads the served models' answers in part and keeps no model; a broken
// answer is still reported, not used.
func TestLoadGenerator(t *testing.T) {
	up := testModel(7)
	var block flmsg.ModelBlock
	block.Set(up)
	bigLayout, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{100_000}}})
	if err != nil {
		t.Fatal(err)
	}
	big := model.New(bigLayout)
	bigBody := flmsg.BuildResponseGetModel(flatbuffers.NewBuilder(0), &flmsg.GetModelReply{
		Retcode: flmsg.Succeed, Reason: "big", Iteration: 2, Model: big, Timestamp: millisFromNow(time.Second)})
	if len(bigBody) <= flmsg.HeadSize {
		t.Fatal("the big answer must be longer than what a load generator reads")
	}
	getBig := step{ep: "getModel", body: func() []byte { return bigBody }}

	run := func(script ...step) (*Client, *fakeCluster, IterationResult, []Observation, error) {
		t.Helper()
		fc := newFakeCluster(t, 1, script...)
		o := fastOptions(fc.urls)
		o.LoadBlock = &block
		var mu sync.Mutex
		var obs []Observation
		o.Observe = func(ob Observation) { mu.Lock(); obs = append(obs, ob); mu.Unlock() }
		c, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.RunIteration(context.Background(), TrainerFunc(func(_ context.Context, job *Job) (float32, error) {
			if job.Model != nil {
				t.Error("a load generator's trainer got a model")
			}
			return 0.25, nil
		}))
		return c, fc, res, obs, err
	}

	c, fc, res, obs, err := run(startOK(1), updateOK(), getNotReady(1), getBig)
	if err != nil {
		t.Fatalf("RunIteration: %v", err)
	}
	if c.Model() != nil || res.Model != nil || res.Iteration != 1 || res.ServerIteration != 2 {
		t.Fatalf("result %+v, model %v", res, c.Model())
	}
	reqs := fc.requests()
	if len(reqs) != 4 || reqs[1].ep != "updateModel" || reqs[1].first != up.Data[0] || reqs[1].flID != "fl_lenet_0" || reqs[1].iter != 1 {
		t.Fatalf("requests %+v: the update is not the block", reqs)
	}
	last := obs[len(obs)-1]
	if last.Endpoint != EndpointGetModel || last.Received != len(bigBody) || last.Sent == 0 {
		t.Fatalf("last observation %+v: received %d, want %d", last, last.Received, len(bigBody))
	}
	if obs[1].Sent <= len(block.Tail()) {
		t.Fatalf("update observed as %d bytes, the block alone is %d", obs[1].Sent, len(block.Tail()))
	}

	// An answer cut short, or with a corrupted head, is reported.
	half := step{ep: "getModel", body: func() []byte { return bigBody[:len(bigBody)/2] }}
	if _, _, _, _, err := run(startOK(1), updateOK(), half); !errors.Is(err, ErrBadResponse) {
		t.Fatalf("half an answer: %v", err)
	}
	if _, _, _, _, err := run(corrupted(startOK(1))); !errors.Is(err, ErrBadResponse) {
		t.Fatalf("corrupted answer: %v", err)
	}
	// Plain-text refusals are still told apart.
	if _, _, _, _, err := run(textStep("startFLJob", flmsg.BodyJobDisabled)); !errors.Is(err, ErrJobFinished) {
		t.Fatalf("job finished: %v", err)
	}

	o := fastOptions([]string{"http://127.0.0.1:1"})
	o.LoadBlock = new(flmsg.ModelBlock)
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "LoadBlock") {
		t.Fatalf("an empty LoadBlock validated: %v", err)
	}
}

// With ReuseModel, startFLJob names the model the last getModel served, a
// server may leave it out, and the device trains the one it holds; a
// model changed since is not named, and an answer without a model that
// does not confirm the named one is not trusted.
func TestReuseModel(t *testing.T) {
	held2 := testModel(102).SHA256() // getOK(2)'s model
	run := func(reuse bool, script ...step) (*fakeCluster, []float32, error) {
		t.Helper()
		fc := newFakeCluster(t, 1, script...)
		o := fastOptions(fc.urls)
		o.ReuseModel = reuse
		c, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		var trained []float32 // the first weight each iteration trained from
		trainer := TrainerFunc(func(ctx context.Context, job *Job) (float32, error) {
			trained = append(trained, job.Model.Data[0])
			return addOne(ctx, job)
		})
		for range 3 {
			if _, err := c.RunIteration(context.Background(), trainer); err != nil {
				return fc, trained, err
			}
		}
		return fc, trained, nil
	}
	helds := func(fc *fakeCluster) []string {
		var out []string
		for _, r := range fc.requests() {
			if r.ep == "startFLJob" {
				out = append(out, r.held)
			}
		}
		return out
	}

	// Iteration 2 leaves the model out; iteration 3's server sends it
	// anyway, as one ignoring the header would.
	fc, trained, err := run(true,
		summed(startOK(1), testModel(1)), updateOK(), summed(getOK(1), testModel(101)),
		startHeld(2, testModel(101).SHA256()), updateOK(), summed(getOK(2), testModel(102)),
		summed(startOK(3), testModel(3)), updateOK(), summed(getOK(3), testModel(103)))
	if err != nil {
		t.Fatal(err)
	}
	if got := helds(fc); !slices.Equal(got, []string{"", testModel(101).SHA256(), held2}) {
		t.Fatalf("startFLJob named %q", got)
	}
	if !slices.Equal(trained, []float32{1, 101, 3}) {
		t.Fatalf("trained from %v, want the served, the held, the served model", trained)
	}
	if r := fc.requests()[4]; r.ep != "updateModel" || r.first != (101+1)*4 {
		t.Fatalf("update of iteration 2: %+v, want the held model trained and × data size", r)
	}

	// A proxy lowercased the header names.
	lower := func(st step) step {
		for k, v := range st.header {
			st.header = map[string]string{strings.ToLower(k): v}
		}
		return st
	}
	fc, trained, err = run(true,
		lower(summed(startOK(1), testModel(1))), updateOK(), lower(summed(getOK(1), testModel(101))),
		lower(startHeld(2, testModel(101).SHA256())), updateOK(), lower(summed(getOK(2), testModel(102))))
	if got := helds(fc); !errors.Is(err, ErrJobFinished) || len(got) < 2 || got[1] != testModel(101).SHA256() || !slices.Equal(trained, []float32{1, 101}) {
		t.Fatalf("lowercased headers: named %q, trained from %v, %v", got, trained, err)
	}

	// Off, nothing is named.
	fc, _, err = run(false,
		summed(startOK(1), testModel(1)), updateOK(), summed(getOK(1), testModel(101)),
		summed(startOK(2), testModel(2)), updateOK(), summed(getOK(2), testModel(102)),
		summed(startOK(3), testModel(3)), updateOK(), summed(getOK(3), testModel(103)))
	if err != nil {
		t.Fatal(err)
	}
	if got := helds(fc); !slices.Equal(got, []string{"", "", ""}) {
		t.Fatalf("startFLJob named %q with ReuseModel off", got)
	}

	// Trained in place, then turned away: the changed model is not named.
	fc, _, _ = run(true, summed(startOK(1), testModel(1)), updateCode(flmsg.OutOfTime, time.Millisecond), summed(startOK(1), testModel(1)))
	if got := helds(fc); len(got) < 2 || got[1] != "" {
		t.Fatalf("startFLJob after training named %q", got)
	}

	// No model and no confirmation, or another checksum: a bad answer.
	for _, sum := range []string{"", held2} {
		_, _, err = run(true, summed(startOK(1), testModel(1)), updateOK(), summed(getOK(1), testModel(101)), startHeld(2, sum))
		if !errors.Is(err, ErrBadResponse) {
			t.Fatalf("an answer without the model confirming %q: %v, want ErrBadResponse", sum, err)
		}
	}
}
