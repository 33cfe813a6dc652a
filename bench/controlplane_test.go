package bench

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/scheduler"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// controlServers is the number of simulated servers of BenchmarkControlPlane
// (issue 2: "registers 100 servers with one scheduler").
const controlServers = 100

// pushWatch is the servers' side of the control plane: it serves the
// scheduler's pushes and remembers when each server saw each membership
// version.
type pushWatch struct {
	mu   sync.Mutex
	seen map[*transport.Conn][]versionAt
}

type versionAt struct {
	version uint64
	at      time.Time
}

func (w *pushWatch) Serve(c *transport.Conn, f frame.Frame) ([]byte, error) {
	if f.Kind != ctl.KindMembership {
		return nil, nil // iteration pushes: nothing to answer
	}
	at := time.Now()
	v, err := peekVersion(f.Body)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.seen[c] = append(w.seen[c], versionAt{v, at})
	w.mu.Unlock()
	return nil, nil
}

// peekVersion reads the version of a ctl.Membership body, which
// encoding/json writes first, without decoding the member list: 100
// watchers decoding every push in full would measure this process's JSON
// decoder on the benchmark's 2 cores instead of the scheduler.
func peekVersion(body []byte) (uint64, error) {
	const prefix = `{"version":`
	if !bytes.HasPrefix(body, []byte(prefix)) {
		var m ctl.Membership
		if err := ctl.Decode(body, &m); err != nil {
			return 0, err
		}
		return m.Version, nil
	}
	rest := body[len(prefix):]
	end := bytes.IndexByte(rest, ',')
	if end < 0 {
		return 0, fmt.Errorf("cannot read membership version in %.60q", body)
	}
	return strconv.ParseUint(string(rest[:end]), 10, 64)
}

func (w *pushWatch) Closed(*transport.Conn, error) {}

// arrival is when c first held a membership of at least version v.
func (w *pushWatch) arrival(c *transport.Conn, v uint64) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.seen[c] {
		if s.version >= v {
			return s.at, true
		}
	}
	return time.Time{}, false
}

// controlCluster is one in-process scheduler and controlServers gnet
// connections registered with it, one per simulated server.
type controlCluster struct {
	sched *scheduler.Scheduler
	tr    *transport.Transport
	watch *pushWatch
	conns []*transport.Conn
	ids   []string
	// register holds each registration's round trip; final is the
	// membership version after the last one and broadcast the time from
	// sending the last registration to every server holding that version.
	register  []time.Duration
	final     uint64
	broadcast time.Duration
}

func startControlCluster(tb testing.TB) *controlCluster {
	cfg := config.Default()
	cfg.Cluster.SchedulerPort = 0
	cfg.Cluster.SchedulerManagePort = 0
	cfg.Cluster.ServerNum = controlServers
	// Long enough that no server is declared dead while the benchmark
	// holds the CPU; the tick loop still runs every 250 ms.
	cfg.Cluster.HeartbeatInterval = config.Duration(3 * time.Second)
	cfg.Cluster.HeartbeatTimeout = config.Duration(5 * time.Minute)
	s, err := scheduler.New(&cfg, "sched", zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Start(); err != nil {
		tb.Fatal(err)
	}
	cc := &controlCluster{sched: s, watch: &pushWatch{seen: make(map[*transport.Conn][]versionAt)}}
	cc.tr, err = transport.New(transport.Options{Logger: zap.NewNop(), Handler: cc.watch})
	if err != nil {
		s.Close()
		tb.Fatal(err)
	}
	// Connect every server first, so that the registrations measure the
	// control plane rather than TCP and gnet connection set-up.
	for i := 0; i < controlServers; i++ {
		c, err := cc.tr.Dial(s.Addr(), 5*time.Second)
		if err != nil {
			cc.close()
			tb.Fatal(err)
		}
		cc.conns = append(cc.conns, c)
		cc.ids = append(cc.ids, "srv-"+strconv.Itoa(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last time.Time
	for i, c := range cc.conns {
		body := ctl.Encode(ctl.Register{NodeID: cc.ids[i], PeerAddr: fmt.Sprintf("127.0.0.1:%d", 20000+i), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", 30000+i), PID: 1000 + i})
		start := time.Now()
		out, err := c.Call(ctx, ctl.KindRegister, body)
		cc.register = append(cc.register, time.Since(start))
		if err != nil {
			cc.close()
			tb.Fatalf("register %s: %v", cc.ids[i], err)
		}
		if i == len(cc.conns)-1 {
			var r ctl.RegisterReply
			if err := ctl.Decode(out, &r); err != nil {
				cc.close()
				tb.Fatal(err)
			}
			cc.final, last = r.Membership.Version, start
			if r.Membership.ClusterState != "CLUSTER_READY" || len(r.Membership.Members) != controlServers {
				cc.close()
				tb.Fatalf("after %d registrations: state %s with %d members", controlServers, r.Membership.ClusterState, len(r.Membership.Members))
			}
		}
	}
	// Wait for the final membership to reach every server.
	deadline := time.Now().Add(10 * time.Second)
	var latest time.Time
	for _, c := range cc.conns {
		for {
			at, ok := cc.watch.arrival(c, cc.final)
			if ok {
				if at.After(latest) {
					latest = at
				}
				break
			}
			if time.Now().After(deadline) {
				cc.close()
				tb.Fatalf("membership version %d never reached a server", cc.final)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	cc.broadcast = latest.Sub(last)
	return cc
}

func (cc *controlCluster) close() {
	cc.tr.Close()
	cc.sched.Close()
}

// heartbeat makes one heartbeat round trip for server i.
func (cc *controlCluster) heartbeat(ctx context.Context, i int, body []byte) (time.Duration, error) {
	start := time.Now()
	out, err := cc.conns[i].Call(ctx, ctl.KindHeartbeat, body)
	d := time.Since(start)
	if err != nil {
		return d, err
	}
	var r ctl.HeartbeatReply
	if err := ctl.Decode(out, &r); err != nil {
		return d, err
	}
	if r.Version < cc.final {
		return d, fmt.Errorf("heartbeat reply has membership version %d, want >= %d", r.Version, cc.final)
	}
	return d, nil
}

func (cc *controlCluster) heartbeatBodies() [][]byte {
	bodies := make([][]byte, len(cc.ids))
	for i, id := range cc.ids {
		bodies[i] = ctl.Encode(ctl.Heartbeat{NodeID: id})
	}
	return bodies
}

// BenchmarkControlPlane measures one in-process scheduler with 100
// simulated servers talking to it over real gnet TCP on loopback.
//
//   - register100: one op is a whole cluster assembly (scheduler start, 100
//     connections, 100 registrations); reports the registration round trip
//     and the membership broadcast latency: from sending the 100th
//     registration to every server holding the final membership version.
//   - heartbeat/serial: one heartbeat in flight at a time, round robin over
//     the 100 servers (the real load: 100 servers every 3 s).
//   - heartbeat/concurrent: all 100 servers heartbeat back to back at once
//     (a stress case: the scheduler serialises on its lock).
//
// Goal (issue 2): control-message latency under 1 ms median.
func BenchmarkControlPlane(b *testing.B) {
	b.Run("register100", func(b *testing.B) {
		var reg, bcast []time.Duration
		for b.Loop() {
			cc := startControlCluster(b)
			b.StopTimer()
			reg = append(reg, cc.register...)
			bcast = append(bcast, cc.broadcast)
			cc.close()
			b.StartTimer()
		}
		b.ReportMetric(ms(quantile(reg, 0.5)), "register-p50-ms")
		b.ReportMetric(ms(quantile(reg, 0.99)), "register-p99-ms")
		b.ReportMetric(ms(quantile(bcast, 0.5)), "broadcast-p50-ms")
		b.ReportMetric(ms(quantile(bcast, 1)), "broadcast-max-ms")
	})
	b.Run("heartbeat", func(b *testing.B) {
		cc := startControlCluster(b)
		defer cc.close()
		bodies := cc.heartbeatBodies()
		ctx := context.Background()
		b.Run("serial", func(b *testing.B) {
			b.ReportAllocs()
			lat := make([]time.Duration, 0, 1<<16)
			i := 0
			for b.Loop() {
				d, err := cc.heartbeat(ctx, i, bodies[i])
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, d)
				i = (i + 1) % controlServers
			}
			b.ReportMetric(ms(quantile(lat, 0.5)), "hb-p50-ms")
			b.ReportMetric(ms(quantile(lat, 0.99)), "hb-p99-ms")
		})
		b.Run("concurrent", func(b *testing.B) {
			b.ReportAllocs()
			var all latencies
			var next atomic.Int64
			var failed atomic.Pointer[error]
			total := int64(b.N)
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := 0; i < controlServers; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var lat []time.Duration
					for next.Add(1) <= total {
						d, err := cc.heartbeat(ctx, i, bodies[i])
						if err != nil {
							failed.Store(&err)
							return
						}
						lat = append(lat, d)
					}
					all.addAll(lat)
				}()
			}
			wg.Wait()
			b.StopTimer()
			if err := failed.Load(); err != nil {
				b.Fatal(*err)
			}
			b.ReportMetric(ms(quantile(all.d, 0.5)), "hb-p50-ms")
			b.ReportMetric(ms(quantile(all.d, 0.99)), "hb-p99-ms")
		})
	})
}
