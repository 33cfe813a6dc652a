package sim

import (
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// Class is what one exchange ended as, for the request counts.
type Class uint8

// The classes of an exchange: the five retcodes, another retcode, the
// plain-text refusals, and the failures.
const (
	ClassSucceed Class = iota
	ClassSucNotReady
	ClassOutOfTime
	ClassRequestError
	ClassSystemError
	ClassOtherRetcode
	ClassSafemode
	ClassJobFinished
	ClassNotReadyText
	ClassOtherText
	ClassTransport
	ClassBusy // HTTP 503: a server shedding load (retried like a transport error)
	ClassHTTP
	ClassCorrupt
	NumClasses
)

var classNames = [NumClasses]string{
	"SUCCEED", "SucNotReady", "OutOfTime", "RequestError", "SystemError", "other-retcode",
	"safemode", "job-finished", "not-ready", "other-text", "transport-error", "busy", "http-error", "corrupt",
}

func (c Class) String() string {
	if c < NumClasses {
		return classNames[c]
	}
	return "unknown"
}

// classify maps an observation to its class.
func classify(o *device.Observation) Class {
	switch o.Outcome {
	case device.OutcomeRetcode:
		switch o.Retcode {
		case flmsg.Succeed:
			return ClassSucceed
		case flmsg.SucNotReady:
			return ClassSucNotReady
		case flmsg.OutOfTime:
			return ClassOutOfTime
		case flmsg.RequestError:
			return ClassRequestError
		case flmsg.SystemError:
			return ClassSystemError
		}
		return ClassOtherRetcode
	case device.OutcomeRefusal:
		switch o.Refusal {
		case flmsg.BodySafemode:
			return ClassSafemode
		case flmsg.BodyJobDisabled:
			return ClassJobFinished
		case flmsg.BodyJobNotReady:
			return ClassNotReadyText
		}
		return ClassOtherText
	case device.OutcomeTransport:
		if o.Status == fasthttp.StatusServiceUnavailable {
			return ClassBusy
		}
		return ClassTransport
	case device.OutcomeHTTP:
		return ClassHTTP
	}
	return ClassCorrupt
}

// histogram is a lock-free latency histogram in microseconds with 32
// sub-buckets per power of two (about 3% resolution), up to about an hour.
type histogram struct {
	counts [histBuckets]atomic.Uint64
}

const histBuckets = 30 * 32

func histIndex(us uint64) int {
	if us < 64 {
		return int(us)
	}
	shift := bits.Len64(us) - 6
	i := (shift+1)*32 + int(us>>shift) - 32
	return min(i, histBuckets-1)
}

// histValue is the middle of bucket i, in microseconds.
func histValue(i int) float64 {
	if i < 64 {
		return float64(i)
	}
	shift := i/32 - 1
	lo := uint64(i%32+32) << shift
	return float64(lo) + float64(uint64(1)<<shift)/2
}

func (h *histogram) add(d time.Duration) {
	us := d.Microseconds()
	if us < 0 {
		us = 0
	}
	h.counts[histIndex(uint64(us))].Add(1)
}

// quantile returns the q-quantile (0 < q <= 1); 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	var total uint64
	for i := range h.counts {
		total += h.counts[i].Load()
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q*float64(total) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return time.Duration(histValue(i) * float64(time.Microsecond))
		}
	}
	return time.Duration(histValue(histBuckets-1) * float64(time.Microsecond))
}

// counters are the request statistics of a run, updated by every device.
type counters struct {
	classes [device.NumEndpoints][NumClasses]atomic.Int64
	latency [device.NumEndpoints]histogram
	// uploaded counts the request bytes of answered updateModel
	// requests, downloaded the bytes of every answer with a retcode.
	uploaded   atomic.Int64
	downloaded atomic.Int64
	// firstErr is the first failed exchange's error per endpoint: what
	// the failure classes counted looked like.
	firstErr [device.NumEndpoints]atomic.Pointer[string]
}

func (c *counters) observe(o device.Observation) {
	if o.Endpoint >= device.NumEndpoints {
		return
	}
	cl := classify(&o)
	c.classes[o.Endpoint][cl].Add(1)
	c.latency[o.Endpoint].add(o.Latency)
	if o.Err != nil && c.firstErr[o.Endpoint].Load() == nil {
		msg := o.Err.Error()
		c.firstErr[o.Endpoint].CompareAndSwap(nil, &msg)
	}
	if o.Outcome == device.OutcomeRetcode {
		c.downloaded.Add(int64(o.Received))
		if o.Endpoint == device.EndpointUpdateModel {
			c.uploaded.Add(int64(o.Sent))
		}
	}
}
