// Package server is the server role: it joins the cluster through the
// scheduler, keeps the membership the scheduler pushes, talks to its peers
// over gnet and serves devices over fasthttp.
package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/iteration"
	"github.com/fedcluster/fedcluster/node/membership"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/flmsg"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// StartedLine is the line MindSpore's docs tell users to grep for.
const StartedLine = "Server started successfully."

// Server is one running server. Close stops everything it started.
type Server struct {
	cfg    *config.Config
	log    *zap.Logger  // every line carries node_id and the current rank
	rankID atomic.Int64 // the rank the log lines carry
	nodeID string

	tr      *transport.Transport
	http    *fasthttp.Server
	httpLn  net.Listener
	plane   *plane
	metrics *metrics
	uploads *uploads
	// startCache and getCache hold the heads of the answers every device
	// gets, blocks the model they carry; heldCache the whole startFLJob
	// answer to a device that holds the model (flmsg.HeaderHeldModel).
	startCache respCache
	getCache   respCache
	heldCache  respCache
	blocks     blockCache
	// warned limits the warnings a device request may trigger.
	warned requestWarnings

	mu         sync.Mutex
	rank       int
	membership ctl.Membership
	// membershipFrom is the scheduler link the membership came on.
	membershipFrom *transport.Conn
	sched          *transport.Conn
	started        bool
	scaledIn       bool
	// registered is set once a registration succeeded: later ones are
	// rejoins (ctl.Register.Rejoin).
	registered atomic.Bool

	// ScaledIn is closed when the scheduler scales this server in.
	scaledInCh chan struct{}

	// faultAllReduceDelay (env FEDCLUSTER_FAULT_ALLREDUCE_DELAY, a Go
	// duration) holds every all-reduce before it starts, so that tests can
	// crash a server in the middle of one; with
	// FEDCLUSTER_FAULT_ALLREDUCE_UNTIL=N only those of iterations up to N.
	// Unset in production.
	faultAllReduceDelay time.Duration
	faultAllReduceUntil uint64
	// faultRegisterDelay (env FEDCLUSTER_FAULT_REGISTER_DELAY) holds a
	// registration after the scheduler's reply, as a slow catch-up from a
	// peer does, so that tests can order an aggregation meanwhile.
	faultRegisterDelay time.Duration

	stop chan struct{}
	wg   sync.WaitGroup
}

// New prepares a server; Start opens its ports and joins the cluster.
func New(cfg *config.Config, nodeID string, log *zap.Logger) *Server {
	s := &Server{cfg: cfg, nodeID: nodeID, rank: -1, stop: make(chan struct{}), scaledInCh: make(chan struct{})}
	s.warned.init(warnEvery)
	s.rankID.Store(-1)
	s.log = withIdentity(log.Named("server"), nodeID, &s.rankID)
	s.faultAllReduceDelay, _ = time.ParseDuration(os.Getenv("FEDCLUSTER_FAULT_ALLREDUCE_DELAY"))
	s.faultAllReduceUntil, _ = strconv.ParseUint(os.Getenv("FEDCLUSTER_FAULT_ALLREDUCE_UNTIL"), 10, 64)
	s.faultRegisterDelay, _ = time.ParseDuration(os.Getenv("FEDCLUSTER_FAULT_REGISTER_DELAY"))
	return s
}

// setRank records a new rank (under s.mu) for the state and the logs.
func (s *Server) setRank(r int) {
	s.rank = r
	s.rankID.Store(int64(r))
}

// Logger is the server's logger: every line carries its node id and rank.
func (s *Server) Logger() *zap.Logger { return s.log }

// Start binds the device HTTP port and the peer port, then joins the
// cluster in the background (retrying until the scheduler answers).
func (s *Server) Start() error {
	bind := s.cfg.Server.BindIP
	if bind == "" {
		bind = s.cfg.Server.ServerIP
	}
	httpAddr := net.JoinHostPort(bind, strconv.Itoa(s.cfg.Server.FLServerPort))
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return fmt.Errorf("cannot listen on fl_server_port %s: %w", httpAddr, err)
	}
	if s.plane, err = newPlane(s); err != nil {
		ln.Close()
		return err
	}
	dl := deviceListener{Listener: ln}
	if s.plane.large {
		dl.sendBuffer = largeModelSendBuffer
		// Answers of a large model send its stored weights as they are.
		// A small model keeps a serialized copy: its answers then go out
		// in one write each, where a frame's would take several.
		s.blocks.frame = flmsg.NewBlockFrame(s.plane.layout)
		s.blocks.backing = s.plane.store.Backing
	}
	ln = dl
	s.httpLn = ln
	returnMemory := s.plane.large && os.Getenv("GOGC") == ""
	if returnMemory {
		// A large model's heap is a few model-sized buffers without
		// pointers: collections are cheap, and the default 100 % growth
		// would let the resident size reach twice the live heap.
		debug.SetGCPercent(10)
	}
	s.metrics = newMetrics(s)
	s.uploads = newUploads(uploadSlots(s.plane.responseSize(), int(s.cfg.Server.UploadMemory)))
	s.uploads.collect = s.plane.large
	tr, err := transport.New(transport.Options{MaxFrame: int(s.cfg.Cluster.MaxFrameSize), Logger: s.Logger(), Handler: s,
		Inline: inlineKinds})
	if err != nil {
		ln.Close()
		s.plane.close()
		return err
	}
	s.tr = tr
	if err := tr.Listen(net.JoinHostPort(bind, "0"), false); err != nil {
		ln.Close()
		tr.Close()
		s.plane.close()
		return err
	}
	s.Logger().Info("[Server start]: 1. Listening.", zap.String("http_addr", ln.Addr().String()), zap.String("peer_addr", tr.Addr()))
	s.http = s.newHTTP()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.http.Serve(ln); err != nil {
			s.Logger().Error("device HTTP server stopped", zap.Error(err))
		}
	}()
	go func() {
		defer s.wg.Done()
		s.schedulerLoop()
	}()
	if returnMemory {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.returnFreeMemory(time.Second)
		}()
	}
	return nil
}

// returnFreeMemory collects garbage and gives the heap's free pages back to
// the system every period. A large model's server drops a model-sized
// buffer every iteration; left to the collector's pacing and the runtime's
// background scavenger, that memory stayed resident: with 1,024 devices of
// a 10M model, twice the model. A forced collection of a heap made of a
// few pointer-free buffers takes a few milliseconds.
func (s *Server) returnFreeMemory(period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			debug.FreeOSMemory()
		}
	}
}

// HTTPAddr is the device HTTP address as devices reach it.
func (s *Server) HTTPAddr() string { return s.advertise(s.httpLn.Addr().String()) }

// PeerAddr is the cluster TCP address as peers reach it.
func (s *Server) PeerAddr() string { return s.advertise(s.tr.Addr()) }

// advertise puts server_ip in front of a bound address's port.
func (s *Server) advertise(bound string) string {
	_, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	return net.JoinHostPort(s.cfg.Server.ServerIP, port)
}

// ScaledIn is closed once the scheduler has scaled this server in.
func (s *Server) ScaledIn() <-chan struct{} { return s.scaledInCh }

// ReservedProcs is how many Ps the process should add to GOMAXPROCS for
// the started server's gnet event loops, which hold theirs while they wait:
// one per loop, and none for a large model, whose collector runs almost all
// the time (GOGC 10) with a quarter of every P as mark workers. With the
// extra Ps, 4 servers of a 10M model on 2 cores measured 6 % slower and 4 %
// larger (ABBA); LeNet's servers, which make little garbage, gained 20-30 %.
func (s *Server) ReservedProcs() int {
	if s.plane.large {
		return 0
	}
	return s.tr.EventLoops()
}

// Close leaves the cluster and stops every listener and goroutine.
func (s *Server) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	var errs []error
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, s.http.ShutdownWithContext(ctx))
		cancel()
	}
	if s.tr != nil {
		errs = append(errs, s.tr.Close())
	}
	if s.plane != nil {
		s.plane.rounds.drop(math.MaxUint64) // wake an all-reduce waiting for peers
	}
	s.wg.Wait()
	if s.plane != nil {
		s.plane.close()
	}
	return errors.Join(errs...)
}

// schedulerLoop keeps the server registered: connect, register, heartbeat,
// and start again whenever the link breaks (scheduler restart, partition).
func (s *Server) schedulerLoop() {
	addr := net.JoinHostPort(config.DialableIP(s.cfg.Cluster.SchedulerIP), strconv.Itoa(s.cfg.Cluster.SchedulerPort))
	interval := time.Duration(s.cfg.Cluster.HeartbeatInterval)
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		c, err := s.tr.Dial(addr, 3*time.Second)
		if err == nil {
			err = s.registerOn(c)
			if err == nil {
				backoff = 100 * time.Millisecond
				err = s.heartbeat(c, interval, time.Duration(s.cfg.Cluster.HeartbeatTimeout))
			}
			c.Close()
		}
		select {
		case <-s.stop:
			return
		default:
		}
		s.Logger().Warn("scheduler link down, retrying", zap.String("scheduler", addr), zap.Duration("in", backoff), zap.Error(err))
		select {
		case <-s.stop:
			return
		case <-time.After(backoff):
		}
		if backoff *= 2; backoff > 3*time.Second {
			backoff = 3 * time.Second
		}
	}
}

// inlineKinds are served on the event loop: the all-reduce's chunks, and
// the order to start one, which must not wait behind the previous
// iteration's checkpoint write on the scheduler link.
func inlineKinds(k frame.Kind) bool {
	return k == ctl.KindPartial || k == ctl.KindReduced || k == ctl.KindPieceAck || k == ctl.KindAggregate
}

func (s *Server) registerOn(c *transport.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	it := s.plane.state().iteration
	folded := s.plane.folded(it)
	stale := s.plane.partialIterations()
	body, err := c.Call(ctx, ctl.KindRegister, ctl.Encode(ctl.Register{
		NodeID:    s.nodeID,
		PeerAddr:  s.PeerAddr(),
		HTTPAddr:  s.HTTPAddr(),
		PID:       os.Getpid(),
		Iteration: it,
		Folded:    len(folded),
		Updates:   folded,
		Attempt:   int(s.plane.rounds.latest(it)),
		Rejoin:    s.registered.Load(),
		Rounds:    roundParams(s.cfg.FL.Params()),
	}))
	if err != nil {
		return fmt.Errorf("cannot register: %w", err)
	}
	var r ctl.RegisterReply
	if err := ctl.Decode(body, &r); err != nil {
		return err
	}
	for _, ni := range r.LastIterations {
		s.plane.missedNextIteration(ni)
	}
	// A checkpoint left by this server's previous process that the
	// scheduler did not confirm is of no use any more.
	s.plane.store.DropLeftover()
	// Updates folded before this registration were written off by the
	// scheduler when the old link went, and must not reach an aggregate,
	// unless it counts exactly those of the partial sum it says to keep.
	s.plane.resetPartials(r.KeepPartial, stale)
	// Model and iteration first, then the link and the membership: once the
	// membership says the cluster is ready (and "Server started
	// successfully." is logged), the server can answer devices.
	s.plane.align(r.Iteration.Iteration)
	if d := s.faultRegisterDelay; d > 0 {
		time.Sleep(d) // fault injection: a slow catch-up
	}
	s.plane.catchUp(r.Iteration.Iteration, r.Membership.Members)
	s.plane.setState(r.Iteration, true)
	s.mu.Lock()
	s.sched = c
	s.setRank(r.Rank)
	s.mu.Unlock()
	s.Logger().Info("[Server start]: 2. Registered with the scheduler.", zap.String("scheduler", c.Remote()), zap.Uint64("iteration", r.Iteration.Iteration))
	s.applyMembership(r.Membership, c)
	s.registered.Store(true)
	s.metrics.registrations.Inc()
	return nil
}

// heartbeat reports every interval until the link fails or the server
// stops. A reply may take up to timeout (heartbeat_timeout, what the
// scheduler allows the server): a busy scheduler or server is not a broken
// link, and dropping the link loses every admission and count in flight.
func (s *Server) heartbeat(c *transport.Conn, interval, timeout time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return nil
		case <-c.Done():
			return transport.ErrClosed
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		body, err := c.Call(ctx, ctl.KindHeartbeat, ctl.Encode(ctl.Heartbeat{NodeID: s.nodeID}))
		cancel()
		if err != nil {
			return fmt.Errorf("heartbeat failed: %w", err)
		}
		var r ctl.HeartbeatReply
		if err := ctl.Decode(body, &r); err != nil {
			return err
		}
	}
}

// applyMembership installs a view from the scheduler link from: a newer
// one, or any from a new link (a restarted scheduler counts versions
// afresh), and logs the start line once the cluster is first ready.
func (s *Server) applyMembership(m ctl.Membership, from *transport.Conn) {
	s.mu.Lock()
	if m.Version >= s.membership.Version || s.membershipFrom != from {
		s.membership, s.membershipFrom = m, from
		for _, mem := range m.Members {
			if mem.NodeID == s.nodeID && mem.Rank != s.rank && !mem.ScaledIn {
				s.setRank(mem.Rank)
			}
		}
	}
	// Announce only once the iteration is known too: then devices can be
	// served. Checked on every view, kept or not: the ready view may have
	// arrived before the iteration did.
	announce := !s.started && s.membership.ClusterState == membership.ClusterReady && s.plane.state().ready
	if announce {
		s.started = true
	}
	s.mu.Unlock()
	if announce {
		s.Logger().Info("[Server start]: 3. Cluster is ready.", zap.Int("server_num", s.membershipServerNum()))
		s.Logger().Info(StartedLine)
	}
}

// Serve handles frames from the scheduler and peers.
func (s *Server) Serve(c *transport.Conn, f frame.Frame) ([]byte, error) {
	switch f.Kind {
	case ctl.KindMembership:
		var m ctl.Membership
		if err := ctl.Decode(f.Body, &m); err != nil {
			return nil, err
		}
		s.applyMembership(m, c)
		return nil, nil
	case ctl.KindIterState:
		var st ctl.IterationState
		if err := ctl.Decode(f.Body, &st); err != nil {
			return nil, err
		}
		s.plane.setState(st, false)
		return nil, nil
	case ctl.KindNextIteration:
		var ni ctl.NextIteration
		if err := ctl.Decode(f.Body, &ni); err != nil {
			return nil, err
		}
		s.plane.nextIteration(ni)
		return nil, nil
	case ctl.KindAggregate:
		var a ctl.Aggregate
		if err := ctl.Decode(f.Body, &a); err != nil {
			return nil, err
		}
		// The all-reduce waits on peers: run it beside this link's frames.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.plane.aggregate(c, a)
		}()
		return nil, nil
	case ctl.KindPartial, ctl.KindReduced, ctl.KindPieceAck:
		return nil, s.plane.receive(c, f.Kind, f.Body)
	case ctl.KindFetchModel:
		return s.plane.serveFetch(f.Body)
	case ctl.KindScaleIn:
		s.mu.Lock()
		first := !s.scaledIn
		s.scaledIn = true
		s.mu.Unlock()
		if first {
			s.Logger().Info("This server the one to be scaled in. Server need to wait SIGTERM to exit.")
			s.mu.Lock()
			s.setRank(-1) // its lines stop claiming a rank another server holds now
			s.mu.Unlock()
			close(s.scaledInCh)
		}
		return nil, nil
	}
	return nil, fmt.Errorf("unexpected frame kind %d", f.Kind)
}

// Closed is called when a scheduler or peer link closes.
func (s *Server) Closed(c *transport.Conn, err error) {}

// Status is the body of GET /status.
type Status struct {
	NodeID       string `json:"node_id"`
	Rank         int    `json:"rank"`
	ClusterState string `json:"cluster_state"`
	Iteration    uint64 `json:"iteration"`
	ModelSHA256  string `json:"model_sha256"`
	Engine       string `json:"engine"`
	// ModelIteration is the iteration whose model model_sha256 is: the
	// latest stored (iteration − 1 while an iteration runs).
	ModelIteration uint64 `json:"model_iteration"`
	Instance       string `json:"instance"`
	// ScaledIn: the scheduler scaled this server in; it admits and counts
	// no device any more and waits for SIGTERM. Its rank is then -1, as
	// in /members: the rank it had belongs to another server.
	ScaledIn bool `json:"scaled_in,omitempty"`
}

func (s *Server) status() Status {
	it, _ := s.plane.store.Latest()
	sum, _ := s.plane.store.Sum(it)
	st := s.plane.state()
	s.mu.Lock()
	defer s.mu.Unlock()
	state := s.membership.ClusterState
	if !s.started {
		state = membership.ClusterStarting // not serving devices yet
	}
	return Status{NodeID: s.nodeID, Rank: s.rank, ClusterState: state, Iteration: st.iteration, ModelSHA256: sum, ModelIteration: it, Engine: s.plane.engine.Name(), Instance: st.instance,
		ScaledIn: s.scaledIn}
}

// members returns the servers of the cluster as last pushed.
func (s *Server) members() []ctl.Member {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ctl.Member(nil), s.membership.Members...)
}

func roundParams(p iteration.Params) *ctl.RoundParams {
	r := ctl.RoundParams(p)
	return &r
}

func (s *Server) membershipServerNum() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.membership.ServerNum
}
