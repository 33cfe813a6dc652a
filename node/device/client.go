package device

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"hash/maphash"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
	"unsafe"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/valyala/fasthttp"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// noCopy makes go vet report copies of a Client.
type noCopy struct{}

func (*noCopy) Lock()   {}
func (*noCopy) Unlock() {}

// Client is one device. Its methods are used by one goroutine at a time;
// run many devices with many Clients sharing one fasthttp.Client.
type Client struct {
	_ noCopy

	o    Options
	http *fasthttp.Client
	urls [][NumEndpoints]string
	rng  *rand.Rand

	b     *flatbuffers.Builder
	req   fasthttp.Request
	resp  fasthttp.Response
	ts    []byte
	timer *time.Timer

	// With LoadBlock: the request body being sent (head and block) and
	// the first bytes of the last answer.
	send flmsg.Joined
	head []byte

	// What the next build writes: sending's weights are uploaded
	// × DataSize.
	iteration int32
	sending   *model.Model
	loss      float32

	// The last model a server served (startFLJob or getModel).
	model *model.Model
	// held is the checksum (flmsg.HeaderModelSHA256) of the last model a
	// server served, heldHash the hash of model's bytes right after: a
	// model changed since (trained, scaled) no longer matches it and is
	// not named (Options.ReuseModel). named is what the startFLJob being
	// sent names.
	held     string
	heldHash uint64
	named    string

	// avoidUntil[i] is when server i, which failed in transport or answered
	// safemode, may be picked again while others are available: a load
	// balancer's health check, so a dead or cut-off server costs one
	// request, not one in every len(Servers).
	avoidUntil []time.Time

	obs Observation
}

// New returns a device client; o is validated.
func New(o Options) (*Client, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	c := &Client{o: o, http: o.HTTP}
	if c.http == nil {
		c.http = NewHTTPClient(1)
	}
	for _, s := range o.Servers {
		var u [NumEndpoints]string
		for e := range NumEndpoints {
			u[e] = s + o.URLPrefix + "/" + e.String()
		}
		c.urls = append(c.urls, u)
	}
	seed := o.Seed
	if seed == 0 {
		h := fnv.New64a()
		h.Write([]byte(o.FLID))
		seed = h.Sum64()
	}
	c.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	c.b = flatbuffers.NewBuilder(1024)
	c.req.Header.SetMethod(fasthttp.MethodPost)
	c.req.Header.SetContentType("application/octet-stream")
	if o.Layout != nil {
		c.model = model.New(o.Layout)
	}
	return c, nil
}

// Options returns the client's options.
func (c *Client) Options() Options { return c.o }

// Model is the last model a server served this device (nil before the
// first). The Client owns it and overwrites it on the next startFLJob or
// getModel.
func (c *Client) Model() *model.Model { return c.model }

// StartResult is a decoded startFLJob answer.
type StartResult struct {
	Retcode     int32
	Reason      string
	Iteration   int32
	IsSelected  bool
	NextReqTime time.Time // zero when absent or unparsable
	HasPlan     bool
	Plan        flmsg.Plan
}

// StartFLJob asks to join the current iteration. On SUCCEED the served
// model is in Model(). Other retcodes are returned as they are, with a nil
// error; errors are transport failures past the bound, ErrJobFinished, bad
// answers and the context's.
func (c *Client) StartFLJob(ctx context.Context) (StartResult, error) {
	body, size, err := c.exchange(ctx, EndpointStartFLJob)
	if err != nil {
		return StartResult{}, err
	}
	var r flmsg.ResponseFLJob
	if c.o.LoadBlock != nil {
		r, err = flmsg.DecodeResponseFLJobHead(body, size)
	} else {
		r, err = flmsg.DecodeResponseFLJob(body)
	}
	if err != nil {
		return StartResult{}, c.badAnswer(err)
	}
	if r.Retcode == flmsg.Succeed {
		sum := c.modelSum()
		switch {
		case c.o.LoadBlock != nil:
			c.remember(sum)
		case r.FeatureMaps.Len() == 0 && c.named != "" && string(sum) == c.named:
			// Left out: the device holds the model, unchanged, and
			// still names it.
		default:
			if err := c.adopt(r.FeatureMaps); err != nil {
				return StartResult{}, c.badAnswer(err)
			}
			c.remember(sum)
		}
	}
	res := StartResult{
		Retcode:     r.Retcode,
		Reason:      r.Reason,
		Iteration:   r.Iteration,
		IsSelected:  r.IsSelected,
		NextReqTime: parseMillis(r.NextReqTime),
		HasPlan:     r.HasPlan,
		Plan:        r.Plan,
	}
	c.obs.Iteration = r.Iteration
	c.emit(r.Retcode, r.Reason, res.NextReqTime)
	return res, nil
}

// UpdateResult is a decoded updateModel answer.
type UpdateResult struct {
	Retcode     int32
	Reason      string
	NextReqTime time.Time
}

// UpdateModel uploads m's weights × DataSize for iteration, as MindSpore
// clients do (the server divides the sum by the sum of data sizes), with
// loss as upload_loss (written when non-zero). m is only read. A load
// generator (Options.LoadBlock) uploads its block instead.
func (c *Client) UpdateModel(ctx context.Context, iteration int32, m *model.Model, loss float32) (UpdateResult, error) {
	return c.sendUpdate(ctx, iteration, m, loss)
}

// updateServed uploads the served model after training (RunIteration
// trains it in place).
func (c *Client) updateServed(ctx context.Context, iteration int32, loss float32) (UpdateResult, error) {
	return c.sendUpdate(ctx, iteration, c.model, loss)
}

// sendUpdate uploads m × DataSize: the request builder scales the weights
// as it copies them, so m is not modified and no scaled copy is made.
func (c *Client) sendUpdate(ctx context.Context, iteration int32, m *model.Model, loss float32) (UpdateResult, error) {
	c.iteration, c.loss, c.sending = iteration, loss, m
	defer func() { c.sending = nil }()
	body, _, err := c.exchange(ctx, EndpointUpdateModel)
	if err != nil {
		return UpdateResult{}, err
	}
	r, err := flmsg.DecodeResponseUpdateModel(body)
	if err != nil {
		return UpdateResult{}, c.badAnswer(err)
	}
	res := UpdateResult{Retcode: r.Retcode, Reason: r.Reason, NextReqTime: parseMillis(r.NextReqTime)}
	c.emit(r.Retcode, r.Reason, res.NextReqTime)
	return res, nil
}

// GetResult is a decoded getModel answer.
type GetResult struct {
	Retcode int32
	Reason  string
	// Iteration is the server's current iteration.
	Iteration int32
	// NextReqTime is the answer's timestamp, which carries the
	// next-request time.
	NextReqTime time.Time
}

// GetModel asks once (with transport and refusal retries) for the model
// of iteration. On SUCCEED the model is in Model().
func (c *Client) GetModel(ctx context.Context, iteration int32) (GetResult, error) {
	c.iteration = iteration
	body, size, err := c.exchange(ctx, EndpointGetModel)
	if err != nil {
		return GetResult{}, err
	}
	var r flmsg.ResponseGetModel
	if c.o.LoadBlock != nil {
		r, err = flmsg.DecodeResponseGetModelHead(body, size)
	} else {
		r, err = flmsg.DecodeResponseGetModel(body)
	}
	if err != nil {
		return GetResult{}, c.badAnswer(err)
	}
	if r.Retcode == flmsg.Succeed {
		if c.o.LoadBlock == nil {
			if err := c.adopt(r.FeatureMaps); err != nil {
				return GetResult{}, c.badAnswer(err)
			}
		}
		c.remember(c.modelSum())
	}
	res := GetResult{Retcode: r.Retcode, Reason: r.Reason, Iteration: r.Iteration, NextReqTime: parseMillis(r.Timestamp)}
	c.emit(r.Retcode, r.Reason, res.NextReqTime)
	return res, nil
}

// PollModel calls GetModel until it answers something else than
// SucNotReady, backing off from PollMinDelay to PollMaxDelay (never past
// the announced next-request time), for at most MaxPolls requests and
// MaxPollTime; past either bound it returns an error wrapping ErrGaveUp.
func (c *Client) PollModel(ctx context.Context, iteration int32) (GetResult, error) {
	start := time.Now()
	delay := c.o.PollMinDelay
	for polls := 1; ; polls++ {
		r, err := c.GetModel(ctx, iteration)
		if err != nil || r.Retcode != flmsg.SucNotReady {
			return r, err
		}
		left := c.o.MaxPollTime - time.Since(start)
		if polls >= c.o.MaxPolls || left <= 0 {
			return r, fmt.Errorf("cannot get the model of iteration %d: still not ready after %d polls in %s: %w",
				iteration, polls, time.Since(start).Round(time.Millisecond), ErrGaveUp)
		}
		d := c.jitter(delay)
		if !r.NextReqTime.IsZero() {
			if u := time.Until(r.NextReqTime); u > 0 && u < d {
				d = max(u, c.o.PollMinDelay)
			}
		}
		if err := c.sleep(ctx, min(d, left)); err != nil {
			return r, err
		}
		delay = min(2*delay, c.o.PollMaxDelay)
	}
}

// exchange sends the request of ep, built afresh for each attempt, and
// returns the body of an HTTP 200 answer that is not a retryable
// plain-text refusal, with the body's size: a load generator's answers
// carrying a model are only read in part (their first flmsg.HeadSize
// bytes). The body is valid until the next exchange. For an answer it
// returns, c.obs is filled and waits for emit or badAnswer.
func (c *Client) exchange(ctx context.Context, ep Endpoint) ([]byte, int, error) {
	server := c.pick(-1)
	attempts, refusals := 0, 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		body, tail := c.build(ep)
		status, err := c.do(ctx, server, ep, body, tail)
		c.obs = Observation{Endpoint: ep, Server: server, Latency: c.obs.Latency, Status: status, Sent: len(body) + tail.Size()}
		if ep != EndpointStartFLJob {
			c.obs.Iteration = c.iteration
		}
		var answer []byte
		var size int
		if err == nil {
			answer, size, err = c.answer(ep)
			c.obs.Received = size
		}
		if err == nil && (status == fasthttp.StatusBadGateway || status == fasthttp.StatusServiceUnavailable || status == fasthttp.StatusGatewayTimeout) {
			err = &HTTPError{Endpoint: ep, Server: c.o.Servers[server], Status: status, Body: clip(answer)}
		}
		if err != nil {
			c.obs.Outcome, c.obs.Err = OutcomeTransport, err
			c.observe()
			attempts++
			if attempts >= c.o.MaxAttempts {
				return nil, 0, fmt.Errorf("cannot send %s: %d attempts failed, the last to %s: %w: %w",
					ep, attempts, c.o.Servers[server], ErrGaveUp, err)
			}
			c.suspend(server)
			if err := c.sleep(ctx, c.backoff(attempts)); err != nil {
				return nil, 0, err
			}
			server = c.pick(server)
			continue
		}
		if status != fasthttp.StatusOK {
			herr := &HTTPError{Endpoint: ep, Server: c.o.Servers[server], Status: status, Body: clip(answer)}
			c.obs.Outcome, c.obs.Err = OutcomeHTTP, herr
			c.observe()
			return nil, 0, herr
		}
		text, ok := "", false
		if size == len(answer) {
			text, ok = flmsg.PlainRefusal(answer)
		}
		if !ok {
			return answer, size, nil
		}
		c.obs.Outcome, c.obs.Refusal = OutcomeRefusal, text
		c.observe()
		if text == flmsg.BodyJobDisabled {
			return nil, 0, fmt.Errorf("%s at %s: %w", ep, c.o.Servers[server], ErrJobFinished)
		}
		// Safemode or not ready: the same request again after a while.
		refusals++
		if refusals > c.o.MaxRefusals {
			return nil, 0, fmt.Errorf("cannot send %s: refused %d times, last %q: %w", ep, refusals, text, ErrGaveUp)
		}
		if text == flmsg.BodySafemode {
			c.suspend(server) // cut off from the scheduler, or scaled in
		}
		if err := c.sleep(ctx, c.jitter(c.o.RefusalDelay)); err != nil {
			return nil, 0, err
		}
		server = c.pick(-1)
	}
}

// do sends body (followed by tail's bytes, when not nil) to server's ep and waits
// for the answer, at most RequestTimeout and not past ctx's deadline. The
// answer's body is then read by answer.
func (c *Client) do(ctx context.Context, server int, ep Endpoint, body []byte, tail *flmsg.ModelBlock) (int, error) {
	c.req.SetRequestURI(c.urls[server][ep])
	if tail != nil {
		c.send = flmsg.Joined{Head: body, Tail: tail.Pieces()}
		c.req.SetBodyStream(&c.send, c.send.Len())
	} else {
		c.req.SetBodyRaw(body)
	}
	c.resp.Reset()
	// A load generator streams the answers that carry a model, to read
	// their head and drop the rest.
	c.resp.StreamBody = c.o.LoadBlock != nil && ep != EndpointUpdateModel
	start := time.Now()
	deadline := start.Add(c.o.RequestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	err := c.http.DoDeadline(&c.req, &c.resp, deadline)
	c.obs.Latency = time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("cannot %s at %s: %w", ep, c.o.Servers[server], err)
	}
	return c.resp.StatusCode(), nil
}

// answer returns the body of the answer do received, and its size. A
// streamed body (a load generator's) is read in part: its first
// flmsg.HeadSize bytes are returned, the rest is read and dropped.
func (c *Client) answer(ep Endpoint) ([]byte, int, error) {
	var s io.Reader
	if c.resp.StreamBody {
		s = c.resp.BodyStream()
	}
	if s == nil { // not streamed, or fasthttp read it whole
		b := c.resp.Body()
		return b, len(b), nil
	}
	defer c.resp.CloseBodyStream()
	if c.head == nil {
		c.head = make([]byte, flmsg.HeadSize)
	}
	n, err := io.ReadFull(s, c.head)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return c.head[:n], n, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read the %s answer: %w", ep, err)
	}
	rest, err := discard(s)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read the %s answer: %w", ep, err)
	}
	return c.head[:n], n + rest, nil
}

// drainBuffers are what load generators read dropped answers into.
var drainBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// discard reads r to its end and returns how many bytes it read.
func discard(r io.Reader) (int, error) {
	p := drainBuffers.Get().(*[]byte)
	defer drainBuffers.Put(p)
	total := 0
	for {
		n, err := r.Read(*p)
		total += n
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// build writes the request of ep into c.b. A load generator's update is
// c.b's head followed by the block it returns.
func (c *Client) build(ep Endpoint) (body []byte, tail *flmsg.ModelBlock) {
	c.ts = strconv.AppendInt(c.ts[:0], time.Now().UnixMilli(), 10)
	// The builders copy the string at once, so it may alias c.ts.
	ts := unsafe.String(unsafe.SliceData(c.ts), len(c.ts))
	c.named = ""
	c.req.Header.Del(flmsg.HeaderHeldModel)
	switch ep {
	case EndpointStartFLJob:
		if c.named = c.heldSum(); c.named != "" {
			c.req.Header.Set(flmsg.HeaderHeldModel, c.named)
		}
		return flmsg.BuildRequestFLJob(c.b, &flmsg.FLJobArgs{
			FLName: c.o.FLName, FLID: c.o.FLID, Iteration: c.iteration, DataSize: c.o.DataSize, Timestamp: ts,
		}), nil
	case EndpointUpdateModel:
		if lb := c.o.LoadBlock; lb != nil {
			return flmsg.BuildRequestUpdateModel(c.b, &flmsg.UpdateModelArgs{
				FLName: c.o.FLName, FLID: c.o.FLID, Iteration: c.iteration, Timestamp: ts, UploadLoss: c.loss, Block: lb, Split: true,
			}), lb
		}
		return flmsg.BuildRequestUpdateModel(c.b, &flmsg.UpdateModelArgs{
			FLName: c.o.FLName, FLID: c.o.FLID, Iteration: c.iteration, Timestamp: ts, UploadLoss: c.loss, Model: c.sending,
			Scale: float32(c.o.DataSize),
		}), nil
	case EndpointGetModel:
		return flmsg.BuildRequestGetModel(c.b, &flmsg.GetModelArgs{
			FLName: c.o.FLName, Iteration: c.iteration, Timestamp: ts,
		}), nil
	}
	panic("BUG: unknown endpoint " + ep.String())
}

// heldSeed seeds the hashes that tell a held model unchanged.
var heldSeed = maphash.MakeSeed()

// remember notes sum, the checksum a server gave for the model it has just
// served (or left out as held), as held: an answer without a well-formed
// one forgets the held model.
func (c *Client) remember(sum []byte) {
	if !c.o.ReuseModel || !validSum(sum) {
		c.held = ""
		return
	}
	if string(sum) != c.held { // the same model again allocates nothing
		c.held = string(sum)
	}
	if c.o.LoadBlock == nil {
		c.heldHash = c.modelHash()
	}
}

// modelHash hashes the model's bytes, to tell it unchanged.
func (c *Client) modelHash() uint64 { return maphash.Bytes(heldSeed, model.FloatBytes(c.model.Data)) }

// heldSum is the checksum startFLJob names: held, while the model is what
// the server served. A load generator holds no model: it names the last
// one served.
func (c *Client) heldSum() string {
	if c.held == "" || c.o.LoadBlock == nil && c.modelHash() != c.heldHash {
		return ""
	}
	return c.held
}

// headerModelSHA256Lower is flmsg.HeaderModelSHA256 as a proxy speaking
// HTTP/2 to the server passes it on.
const headerModelSHA256Lower = "fedcluster-model-sha256"

// modelSum is the last answer's flmsg.HeaderModelSHA256: the client keeps
// header names as they come (NewHTTPClient), so both spellings are looked
// up.
func (c *Client) modelSum() []byte {
	if v := c.resp.Header.Peek(flmsg.HeaderModelSHA256); v != nil {
		return v
	}
	return c.resp.Header.Peek(headerModelSHA256Lower)
}

// validSum reports whether s is a hex SHA-256 as servers write it.
func validSum(s []byte) bool {
	if len(s) != 64 {
		return false
	}
	for _, b := range s {
		if (b < '0' || b > '9') && (b < 'a' || b > 'f') {
			return false
		}
	}
	return true
}

// adopt copies a served model into c.model, taking its layout from it when
// Options.Layout is nil.
func (c *Client) adopt(fms flmsg.FeatureMaps) error {
	if fms.Len() == 0 {
		return errors.New("the answer carries no model")
	}
	if c.o.Layout == nil && (c.model == nil || !sameLayout(c.model.Layout, fms)) {
		specs := make([]model.Spec, fms.Len())
		for i := range specs {
			fm := fms.At(i)
			specs[i] = model.Spec{Name: string(fm.Name), Shape: []int{fm.Len()}}
		}
		l, err := model.NewLayout(specs)
		if err != nil {
			return fmt.Errorf("cannot use the served model: %w", err)
		}
		c.model = model.New(l)
	}
	n, err := fms.CopyTo(c.model)
	if err != nil {
		return fmt.Errorf("cannot use the served model: %w", err)
	}
	if n != len(c.model.Layout.Params) {
		return fmt.Errorf("the served model has %d of the %d parameters", n, len(c.model.Layout.Params))
	}
	return nil
}

func sameLayout(l *model.Layout, fms flmsg.FeatureMaps) bool {
	if fms.Len() != len(l.Params) {
		return false
	}
	for i := range l.Params {
		fm := fms.At(i)
		if string(fm.Name) != l.Params[i].Name || fm.Len() != l.Params[i].Len {
			return false
		}
	}
	return true
}

// emit reports the pending observation of a verified answer.
func (c *Client) emit(retcode int32, reason string, next time.Time) {
	c.obs.Outcome, c.obs.Retcode, c.obs.Reason, c.obs.NextReqTime = OutcomeRetcode, retcode, reason, next
	c.observe()
}

// badAnswer reports the pending observation as corrupt and returns the
// error to give the caller.
func (c *Client) badAnswer(err error) error {
	err = fmt.Errorf("cannot use the %s answer of %s: %w: %w", c.obs.Endpoint, c.o.Servers[c.obs.Server], ErrBadResponse, err)
	c.obs.Outcome, c.obs.Err = OutcomeCorrupt, err
	c.observe()
	return err
}

func (c *Client) observe() {
	if c.o.Observe != nil {
		c.o.Observe(c.obs)
	}
}

// suspendFor is how long a failing server is passed over.
const suspendFor = 2 * time.Second

// suspend passes server over for a while.
func (c *Client) suspend(server int) {
	if c.avoidUntil == nil {
		c.avoidUntil = make([]time.Time, len(c.urls))
	}
	c.avoidUntil[server] = time.Now().Add(suspendFor)
}

// pick chooses a server at random, another one than avoid when there is
// one, preferring servers that have not failed recently.
func (c *Client) pick(avoid int) int {
	n := len(c.urls)
	if n == 1 {
		return 0
	}
	now := time.Now()
	healthy := 0
	for i := 0; i < n; i++ {
		if i != avoid && (c.avoidUntil == nil || !now.Before(c.avoidUntil[i])) {
			healthy++
		}
	}
	if healthy > 0 {
		k := c.rng.IntN(healthy)
		for i := 0; i < n; i++ {
			if i != avoid && (c.avoidUntil == nil || !now.Before(c.avoidUntil[i])) {
				if k == 0 {
					return i
				}
				k--
			}
		}
	}
	if avoid < 0 {
		return c.rng.IntN(n)
	}
	i := c.rng.IntN(n - 1)
	if i >= avoid {
		i++
	}
	return i
}

// backoff is the jittered wait before transport attempt attempts+1.
func (c *Client) backoff(attempts int) time.Duration {
	d := c.o.RetryMinDelay
	for i := 1; i < attempts && d < c.o.RetryMaxDelay; i++ {
		d *= 2
	}
	return c.jitter(min(d, c.o.RetryMaxDelay))
}

// jitter spreads d uniformly over [0.75d, 1.25d).
func (c *Client) jitter(d time.Duration) time.Duration {
	return d*3/4 + time.Duration(c.rng.Int64N(int64(d/2)+1))
}

// sleep waits d or until ctx ends.
func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	if c.timer == nil {
		c.timer = time.NewTimer(d)
	} else {
		c.timer.Reset(d)
	}
	select {
	case <-c.timer.C:
		return nil
	case <-ctx.Done():
		c.timer.Stop()
		return ctx.Err()
	}
}

// parseMillis reads a decimal epoch-milliseconds string; zero time when it
// is empty or not a number.
func parseMillis(s string) time.Time {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

func clip(b []byte) string {
	if len(b) > 256 {
		b = b[:256]
	}
	return string(b)
}
