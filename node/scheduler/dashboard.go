package scheduler

import (
	_ "embed"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// dashboardHTML is a single page that draws the cluster and the
// per-iteration records from /state, /members and /records.
//
//go:embed dashboard.html
var dashboardHTML []byte

func serveDashboard(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(dashboardHTML)
}

// newMetricsHandler exposes the scheduler's Prometheus series on its own
// registry.
func (s *Scheduler) newMetricsHandler() fasthttp.RequestHandler {
	reg := prometheus.NewRegistry()
	labels := prometheus.Labels{"node_id": s.nodeID}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return f()
		})
	}
	reg.MustRegister(
		gauge("fedcluster_iteration", "Current iteration.", func() float64 { return float64(s.iter.Iteration()) }),
		gauge("fedcluster_iteration_admitted", "Devices admitted in the current iteration.", func() float64 { return float64(s.iter.Status().Admitted) }),
		gauge("fedcluster_iteration_updated", "Updates counted in the current iteration.", func() float64 { return float64(s.iter.Status().Updated) }),
		gauge("fedcluster_servers", "Servers of the cluster.", func() float64 { return float64(s.members.ServerNum()) }),
		gauge("fedcluster_servers_alive", "Servers alive.", func() float64 {
			n := 0
			for _, m := range s.members.Members() {
				if m.Alive {
					n++
				}
			}
			return float64(n)
		}),
		gauge("fedcluster_cluster_ready", "1 when the cluster state is CLUSTER_READY.", func() float64 {
			if s.clusterStateLocked() == "CLUSTER_READY" {
				return 1
			}
			return 0
		}),
		s.iterationsTotal, s.updatesLost,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}
