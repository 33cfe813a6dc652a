package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// metrics are the server's Prometheus series, on its own registry (no
// global state), served on the device port at /metrics.
type metrics struct {
	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	registrations prometheus.Counter
	modelsHeld    prometheus.Counter
	handler       fasthttp.RequestHandler
}

func newMetrics(s *Server) *metrics {
	reg := prometheus.NewRegistry()
	labels := prometheus.Labels{"node_id": s.nodeID}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedcluster_device_requests_total", Help: "Device requests by endpoint and outcome.", ConstLabels: labels}, []string{"endpoint", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fedcluster_device_request_seconds", Help: "Device request latency by endpoint.", ConstLabels: labels,
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18)}, []string{"endpoint"}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedcluster_registrations_total",
			Help: "Registrations with the scheduler; each after the first follows a lost link (scheduler restart, partition).", ConstLabels: labels}),
		modelsHeld: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedcluster_start_model_held_total",
			Help: "startFLJob answers sent without the model because the device holds it (Fedcluster-Held-Model-Sha256).", ConstLabels: labels}),
	}
	iteration := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedcluster_iteration", Help: "Iteration the server serves.", ConstLabels: labels},
		func() float64 { return float64(s.plane.state().iteration) })
	modelIter := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedcluster_model_iteration", Help: "Iteration of the latest stored model.", ConstLabels: labels},
		func() float64 { it, _ := s.plane.store.Latest(); return float64(it) })
	reg.MustRegister(m.requests, m.latency, m.registrations, m.modelsHeld, iteration, modelIter, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return m
}

func (m *metrics) serve(ctx *fasthttp.RequestCtx) { m.handler(ctx) }

// count records a device request's outcome.
func (s *Server) count(endpoint, outcome string) {
	s.metrics.requests.WithLabelValues(endpoint, outcome).Inc()
}

// timed runs a device handler and records its latency.
func (s *Server) timed(endpoint string, ctx *fasthttp.RequestCtx, h func(*fasthttp.RequestCtx)) {
	start := time.Now()
	h(ctx)
	s.metrics.latency.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
}
