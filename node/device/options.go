package device

import (
	"fmt"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// Options configure one device Client. Start from DefaultOptions and set
// at least FLID and Servers.
type Options struct {
	// FLName is the job name sent in every request (MindSpore ignores it).
	FLName string
	// FLID identifies the device; it must be unique among the devices of
	// an iteration.
	FLID string
	// DataSize is the device's number of training samples, sent with
	// startFLJob; it weighs the device's update in FedAvg. At least 1.
	DataSize int32

	// Servers are the base URLs of the servers ("http://127.0.0.1:6668",
	// see ParseServers). Every request goes to one picked at random, as
	// MindSpore clients do in ELB mode; a request that fails in transport
	// is retried on another one.
	Servers []string
	// URLPrefix goes between the base URL and the round name (≈r1.7
	// http_url_prefix): "" or a path starting with "/" and not ending with
	// one.
	URLPrefix string

	// HTTP is the fasthttp client to send with. Devices of one process
	// should share one (it keeps the connections per server); nil makes
	// the Client build its own with NewHTTPClient(1).
	HTTP *fasthttp.Client
	// RequestTimeout bounds one HTTP exchange (connect, write, read). It
	// is also how long a cancelled ctx may wait for a request in flight.
	RequestTimeout time.Duration

	// MaxAttempts bounds the attempts of one request that fail in
	// transport (refused, reset, timed out, HTTP 502/503/504); each retry
	// goes to another server when there is one, after a jittered back-off
	// growing from RetryMinDelay to RetryMaxDelay.
	MaxAttempts   int
	RetryMinDelay time.Duration
	RetryMaxDelay time.Duration

	// RefusalDelay is the wait after the plain-text refusals "The cluster
	// is in safemode." and "The server's training job is not ready."
	// before the same request is sent again (MindSpore clients wait 500
	// ms); MaxRefusals bounds how many such refusals one request accepts.
	RefusalDelay time.Duration
	MaxRefusals  int

	// PollMinDelay and PollMaxDelay bound the back-off between getModel
	// polls answered SucNotReady: it starts at PollMinDelay and doubles up
	// to PollMaxDelay (MindSpore's clients poll every 500 ms), never past
	// the next-request time the server announces. MaxPolls and MaxPollTime
	// bound the polling of one iteration.
	PollMinDelay time.Duration
	PollMaxDelay time.Duration
	MaxPolls     int
	MaxPollTime  time.Duration

	// OutOfTimeMinWait and OutOfTimeMaxWait bound the wait for the
	// next_req_time of an OutOfTime answer before the device starts the
	// iteration again at startFLJob: a next_req_time in the past (or
	// missing) still waits the minimum, one further ahead than the
	// maximum waits only the maximum. MaxRestarts bounds the restarts of
	// one RunIteration.
	OutOfTimeMinWait time.Duration
	OutOfTimeMaxWait time.Duration
	MaxRestarts      int

	// Layout is the model's layout. When set, served models must match
	// it (names and sizes); when nil it is taken from the first served
	// model, each tensor flat.
	Layout *model.Layout

	// LoadBlock makes the Client a load generator: every updateModel
	// uploads these bytes (a FeatureMap block already scaled by DataSize,
	// which any number of Clients may share) after a head of its own, and
	// served models are read and dropped: only the fields before the
	// model are decoded, from the answer's first flmsg.HeadSize bytes.
	// Model() stays nil and a Trainer gets a nil Job.Model.
	LoadBlock *flmsg.ModelBlock

	// ReuseModel makes startFLJob name the model the device holds
	// (flmsg.HeaderHeldModel), the one the last getModel or startFLJob
	// served it, unchanged since: a server that would serve that very
	// model leaves it out of its answer, and the device trains the one it
	// holds. A device that takes part in consecutive iterations then
	// downloads the model once per iteration instead of twice. A load
	// generator names the last model served. Off, every startFLJob
	// answer carries the model, as with MindSpore's clients.
	ReuseModel bool

	// Observe, when set, is called after every HTTP exchange (including
	// failed attempts) from the goroutine that made it. It must be cheap
	// and safe for concurrent use when devices share it.
	Observe func(Observation)

	// Seed seeds the device's random numbers (server choice, jitter);
	// 0 derives one from FLID.
	Seed uint64
}

// DefaultOptions returns the options MindSpore's clients behave like, with
// bounds on every retry, and ReuseModel on.
func DefaultOptions() Options {
	return Options{
		ReuseModel:       true,
		FLName:           "fl_test_job",
		DataSize:         32,
		RequestTimeout:   30 * time.Second,
		MaxAttempts:      6,
		RetryMinDelay:    20 * time.Millisecond,
		RetryMaxDelay:    time.Second,
		RefusalDelay:     500 * time.Millisecond,
		MaxRefusals:      240,
		PollMinDelay:     5 * time.Millisecond,
		PollMaxDelay:     500 * time.Millisecond,
		MaxPolls:         10000,
		MaxPollTime:      10 * time.Minute,
		OutOfTimeMinWait: 10 * time.Millisecond,
		OutOfTimeMaxWait: time.Minute,
		MaxRestarts:      1000,
	}
}

// Validate reports the first option that is unusable, by name.
func (o *Options) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("invalid device option %s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case o.FLID == "":
		return bad("FLID", "must not be empty")
	case o.DataSize < 1:
		return bad("DataSize", "must be at least 1, got %d", o.DataSize)
	case len(o.Servers) == 0:
		return bad("Servers", "no server given")
	case o.URLPrefix != "" && (o.URLPrefix[0] != '/' || o.URLPrefix[len(o.URLPrefix)-1] == '/'):
		return bad("URLPrefix", "must start with / and not end with /, got %q", o.URLPrefix)
	case o.RequestTimeout <= 0:
		return bad("RequestTimeout", "must be positive")
	case o.MaxAttempts < 1:
		return bad("MaxAttempts", "must be at least 1")
	case o.RetryMinDelay <= 0 || o.RetryMaxDelay < o.RetryMinDelay:
		return bad("RetryMinDelay", "need 0 < RetryMinDelay <= RetryMaxDelay")
	case o.RefusalDelay <= 0:
		return bad("RefusalDelay", "must be positive")
	case o.MaxRefusals < 0:
		return bad("MaxRefusals", "must not be negative")
	case o.PollMinDelay <= 0 || o.PollMaxDelay < o.PollMinDelay:
		return bad("PollMinDelay", "need 0 < PollMinDelay <= PollMaxDelay")
	case o.MaxPolls < 1:
		return bad("MaxPolls", "must be at least 1")
	case o.MaxPollTime <= 0:
		return bad("MaxPollTime", "must be positive")
	case o.OutOfTimeMinWait <= 0 || o.OutOfTimeMaxWait < o.OutOfTimeMinWait:
		return bad("OutOfTimeMinWait", "need 0 < OutOfTimeMinWait <= OutOfTimeMaxWait")
	case o.MaxRestarts < 0:
		return bad("MaxRestarts", "must not be negative")
	case o.LoadBlock != nil && o.LoadBlock.Size() == 0:
		return bad("LoadBlock", "holds no model (ModelBlock.Set was not called)")
	}
	for i, s := range o.Servers {
		if len(s) < len("http://x") || (s[:7] != "http://" && (len(s) < 8 || s[:8] != "https://")) {
			return bad("Servers", "[%d] %q is not an http(s) base URL", i, s)
		}
	}
	return nil
}

// NewHTTPClient returns a fasthttp client for devices devices sharing it:
// enough connections per server for all of them, idle connections kept
// for reuse, no automatic retries (the device retries itself).
func NewHTTPClient(devices int) *fasthttp.Client {
	if devices < 1 {
		devices = 1
	}
	return &fasthttp.Client{
		Name:                          "fedcluster-device",
		MaxConnsPerHost:               devices + 16,
		MaxIdleConnDuration:           30 * time.Second,
		MaxConnWaitTimeout:            10 * time.Second,
		ReadBufferSize:                16 << 10,
		WriteBufferSize:               16 << 10,
		MaxResponseBodySize:           1 << 30,
		DisableHeaderNamesNormalizing: true,
		RetryIfErr:                    func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
		MaxIdemponentCallAttempts:     1,
	}
}
