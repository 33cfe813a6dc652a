// Package scheduler is the scheduler role: it registers servers and gives
// them ranks, watches their heartbeats, pushes every membership change to
// all of them, and serves the management REST API. The membership logic
// lives in package membership; this package is the I/O around it.
package scheduler

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/iteration"
	"github.com/fedcluster/fedcluster/node/membership"
	"github.com/fedcluster/fedcluster/node/record"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// Scheduler is one running scheduler. Close stops everything it started.
type Scheduler struct {
	cfg    *config.Config
	log    *zap.Logger
	nodeID string
	now    func() time.Time

	tr   *transport.Transport
	rest *fasthttp.Server
	ln   net.Listener

	mu      sync.Mutex
	members *membership.Machine
	conns   map[string]*transport.Conn // node id → its live connection
	sent    uint64                     // membership version last broadcast
	// lastState and announced drive the state-change log lines.
	lastState string
	announced bool
	// pushPending is set while a membership push is scheduled.
	pushPending bool

	iter   *iteration.Machine
	joined map[string]bool // servers the iteration machine counts as members
	// awaited are restored members that have not registered again since
	// the restart: they stay in the iteration, with what they counted,
	// until they register or the membership declares them dead.
	awaited map[string]bool
	// uncertainRestore is set when the restored state may lack the last
	// counts of the scheduler that saved it (it did not stop cleanly): a
	// restored member that does not come back with its partial sum then
	// fails the restored iteration (Machine.PartialGone).
	uncertainRestore bool
	// closing marks Close's final save: nothing is counted after it.
	closing bool
	// pushedState is the IterationState body last pushed to every server.
	pushedState []byte
	records     *record.Writer
	engines     map[uint64]string  // engine reported per iteration, for its record
	foldMBps    map[uint64]float64 // fold throughput reported per iteration
	// losses are the training losses each server reported per iteration
	// (its last report counts: a new attempt reports again).
	losses  map[uint64]map[string]lossReport
	dirty   bool // control state changed since the last persist
	metrics fasthttp.RequestHandler
	// iterationsTotal and updatesLost count ended iterations by result and
	// the acknowledged updates that died with their server.
	iterationsTotal *prometheus.CounterVec
	updatesLost     prometheus.Counter
	savedAt         time.Time // last persist
	// stateFile holds the persisted control state; nil when recovery is
	// off (restore opens it).
	stateFile *stateFile
	// unlockState releases the recovery state's lock file; nil without
	// recovery.
	unlockState func()
	// adoptRounds is set when the scheduler was given no round parameters
	// (they equal the defaults): it takes those of the first server that
	// registers, as the seed passes them to the servers only.
	adoptRounds bool
	// leaving are servers scaled in while an iteration runs: they stop
	// admitting devices and leave at the iteration's end, so the updates
	// they folded still reach the aggregate.
	leaving map[string]bool
	// lastNext and lastRecord are the end of the last iteration that
	// ended, as the servers are told and as metrics.json records it, and
	// prevNext the end of the one before; all are saved with the state.
	lastNext, prevNext *ctl.NextIteration
	lastRecord         *record.Record
	// faultExitAfterSave (env FEDCLUSTER_FAULT_EXIT_AFTER_SAVE, an
	// iteration) makes the process exit right after it saved the end of
	// that iteration, before telling anyone, as a crash there would. Unset
	// in production.
	faultExitAfterSave uint64

	stop chan struct{}
	wg   sync.WaitGroup
}

// New prepares a scheduler; Start opens its ports.
func New(cfg *config.Config, nodeID string, log *zap.Logger) (*Scheduler, error) {
	s := &Scheduler{
		cfg:      cfg,
		log:      log.Named("scheduler").With(zap.String("node_id", nodeID)),
		nodeID:   nodeID,
		now:      time.Now,
		members:  membership.New(cfg.Cluster.ServerNum, time.Duration(cfg.Cluster.HeartbeatTimeout)),
		conns:    make(map[string]*transport.Conn),
		joined:   make(map[string]bool),
		awaited:  make(map[string]bool),
		engines:  make(map[uint64]string),
		foldMBps: make(map[uint64]float64),
		losses:   make(map[uint64]map[string]lossReport),
		leaving:  make(map[string]bool),
		stop:     make(chan struct{}),
	}
	s.iterationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedcluster_iterations_total", Help: "Ended iterations by result.",
		ConstLabels: prometheus.Labels{"node_id": nodeID}}, []string{"result"})
	s.updatesLost = prometheus.NewCounter(prometheus.CounterOpts{Name: "fedcluster_updates_lost_total", Help: "Acknowledged updates missing from their aggregate (their server died, or a restarted scheduler could not take them back).",
		ConstLabels: prometheus.Labels{"node_id": nodeID}})
	s.metrics = s.newMetricsHandler()
	s.faultExitAfterSave, _ = strconv.ParseUint(os.Getenv("FEDCLUSTER_FAULT_EXIT_AFTER_SAVE"), 10, 64)
	it, err := iteration.NewMachine(iterationConfig(cfg), s.now())
	if err != nil {
		return nil, fmt.Errorf("invalid iteration parameters: %w", err)
	}
	s.iter = it
	s.adoptRounds = cfg.FL.Params() == config.Default().FL.Params()
	if err := s.restore(); err != nil {
		s.releaseState()
		return nil, err
	}
	var ropts record.Options
	if cfg.Metrics.Enabled() {
		ropts.Path = cfg.Metrics.StorageFilePath
	}
	if s.records, err = record.Open(ropts); err != nil {
		s.releaseState()
		return nil, fmt.Errorf("cannot open metrics file: %w", err)
	}
	s.resumeRecords()
	return s, nil
}

// releaseState closes the recovery state's slots and drops its lock.
func (s *Scheduler) releaseState() error {
	var err error
	if s.stateFile != nil {
		err = s.stateFile.close()
	}
	if s.unlockState != nil {
		s.unlockState()
		s.unlockState = nil
	}
	return err
}

// inlineCalls are the requests served on the event loop: a device's
// admission and its update's count, two per device-iteration on every
// request's path. They apply the iteration machine under s.mu and leave
// the round's recovery state to the tick loop; the iteration's end
// (records, the forced save) comes with KindAggregated, which keeps to the
// connection's goroutine.
func inlineCalls(k frame.Kind) bool { return k == ctl.KindAdmit || k == ctl.KindCountUpdate }

// Start listens on the cluster port and the management port.
func (s *Scheduler) Start() error {
	cl := s.cfg.Cluster
	tr, err := transport.New(transport.Options{MaxFrame: int(cl.MaxFrameSize), Logger: s.log, Handler: s, InlineCalls: inlineCalls})
	if err != nil {
		return err
	}
	s.tr = tr
	addr := net.JoinHostPort(cl.SchedulerIP, strconv.Itoa(cl.SchedulerPort))
	if err := tr.Listen(addr, true); err != nil {
		tr.Close()
		return err
	}
	s.log.Info("[Scheduler start]: 1. Cluster TCP listening.", zap.String("addr", tr.Addr()))
	manage := net.JoinHostPort(cl.ManageIP, strconv.Itoa(cl.SchedulerManagePort))
	ln, err := net.Listen("tcp", manage)
	if err != nil {
		tr.Close()
		return fmt.Errorf("cannot listen on scheduler_manage_port %s: %w", manage, err)
	}
	s.ln = ln
	s.rest = s.newREST()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := s.rest.Serve(ln); err != nil {
			s.log.Error("management API stopped", zap.Error(err))
		}
	}()
	go func() {
		defer s.wg.Done()
		s.tickLoop()
	}()
	s.log.Info("[Scheduler start]: 2. Management REST API listening.", zap.String("addr", ln.Addr().String()))
	s.log.Info("[Scheduler start]: 3. Waiting for servers to register.", zap.Int("server_num", cl.ServerNum))
	return nil
}

// Addr is the cluster TCP address.
func (s *Scheduler) Addr() string { return s.tr.Addr() }

// EventLoops is the number of gnet event loops the started scheduler runs.
func (s *Scheduler) EventLoops() int { return s.tr.EventLoops() }

// ManageAddr is the REST address.
func (s *Scheduler) ManageAddr() string { return s.ln.Addr().String() }

// Close stops the scheduler.
func (s *Scheduler) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	var errs []error
	if s.rest != nil {
		errs = append(errs, s.rest.Shutdown())
	}
	if s.tr != nil {
		errs = append(errs, s.tr.Close())
	}
	s.wg.Wait()
	s.mu.Lock()
	s.dirty, s.closing = true, true
	s.saveLocked(true)
	errs = append(errs, s.releaseState())
	s.mu.Unlock()
	errs = append(errs, s.records.Close())
	return errors.Join(errs...)
}

func (s *Scheduler) tickLoop() {
	every := time.Duration(s.cfg.Cluster.HeartbeatInterval) / 4
	if every > 250*time.Millisecond {
		every = 250 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			now := s.now()
			s.members.Tick(now)
			s.broadcastLocked()
			s.tickIterationLocked(now)
			s.saveLocked(false)
			s.mu.Unlock()
		}
	}
}

// broadcastLocked pushes the membership to every connected server when it
// changed since the last push.
func (s *Scheduler) broadcastLocked() {
	v := s.members.Version()
	if v == s.sent {
		return
	}
	prev := s.sent
	s.sent = v
	s.syncMembersLocked()
	s.runActionsLocked()
	s.dirty = true
	s.saveLocked(true)
	view := s.members.View()
	if !s.pushPending {
		// Coalesce the pushes of a burst of changes (100 servers registering
		// at once would otherwise cost 100×100 pushes).
		s.pushPending = true
		time.AfterFunc(pushDelay, s.pushMembership)
	}
	if prev == 0 || view.ClusterState != s.lastState {
		s.log.Info("cluster state", zap.String("cluster_state", view.ClusterState), zap.Int("servers", len(view.Members)), zap.Uint64("version", v))
		if view.ClusterState == membership.ClusterReady && !s.announced {
			s.announced = true
			s.log.Info(fmt.Sprintf("[Scheduler start]: 4. Successfully start scheduler, there are 0 workers and %d servers registered.", view.ServerNum))
		}
	}
	s.lastState = view.ClusterState
}

// pushDelay is how long membership changes gather before one push.
const pushDelay = time.Millisecond

// pushMembership sends the current membership to every connected server.
func (s *Scheduler) pushMembership() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pushPending = false
	select {
	case <-s.stop:
		return
	default:
	}
	s.sendAllLocked(ctl.KindMembership, ctl.Encode(s.members.View()))
}

// Serve handles the frames servers send.
func (s *Scheduler) Serve(c *transport.Conn, f frame.Frame) ([]byte, error) {
	switch f.Kind {
	case ctl.KindRegister:
		var r ctl.Register
		if err := ctl.Decode(f.Body, &r); err != nil {
			return nil, err
		}
		return s.register(c, r)
	case ctl.KindHeartbeat:
		var h ctl.Heartbeat
		if err := ctl.Decode(f.Body, &h); err != nil {
			return nil, err
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if owner, _ := c.Value.Load().(string); owner != h.NodeID || s.conns[h.NodeID] != c {
			return nil, fmt.Errorf("heartbeat for node %s on a connection of node %q: register first", h.NodeID, owner)
		}
		if !s.members.Heartbeat(s.now(), h.NodeID) {
			return nil, fmt.Errorf("node %s is not registered", h.NodeID)
		}
		s.broadcastLocked()
		return ctl.Encode(ctl.HeartbeatReply{Version: s.members.Version(), ClusterState: s.members.State()}), nil
	case ctl.KindAdmit, ctl.KindCountUpdate, ctl.KindAggregated:
		id, _ := c.Value.Load().(string)
		if id == "" {
			return nil, fmt.Errorf("frame kind %d before registration", f.Kind)
		}
		return s.serveIteration(id, c, f.Kind, f.Body)
	}
	return nil, fmt.Errorf("unexpected frame kind %d", f.Kind)
}

func (s *Scheduler) register(c *transport.Conn, r ctl.Register) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.conns[r.NodeID]; ok && old != c {
		select {
		case <-old.Done():
		default:
			if n, ok := s.members.Node(r.NodeID); ok && n.Alive {
				s.log.Warn("refusing duplicate node id", zap.String("node", r.NodeID), zap.String("from", c.Remote()), zap.String("live_at", old.Remote()))
				return nil, fmt.Errorf("node id %s is already registered from %s", r.NodeID, old.Remote())
			}
			// A dead node's old link (a paused process): it must not speak
			// for the node any more.
			old.Close()
		}
		s.members.Disconnected(r.NodeID)
	}
	restored := s.awaited[r.NodeID]
	delete(s.awaited, r.NodeID)
	s.iter.AttemptSeen(r.Iteration, r.Attempt)
	var keep uint64
	if s.joined[r.NodeID] {
		ups := make([]iteration.Folded, len(r.Updates))
		for i, u := range r.Updates {
			ups[i] = iteration.Folded{FLID: u.FLID, DataSize: u.DataSize}
		}
		if s.iter.Rejoined(s.now(), r.NodeID, r.Iteration, ups) {
			// Its partial sum can stay: it stays a member and keeps the
			// sum, whose updates a restored state never counted are
			// counted now.
			keep = r.Iteration
		} else {
			// A server that registers again has lost its partial sums (it
			// restarted) or may have: the iteration treats it as a new
			// member.
			delete(s.joined, r.NodeID)
			s.iter.ServerLost(s.now(), r.NodeID)
		}
	}
	// A new process: what it acknowledged before the restart is gone. The
	// iteration's end must be known before the reply (LastIterations).
	if restored && !r.Rejoin && s.partialGoneLocked(r.NodeID) {
		s.runActionsLocked()
	}
	rank, err := s.members.Register(s.now(), membership.Registration{ID: r.NodeID, PeerAddr: r.PeerAddr, HTTPAddr: r.HTTPAddr, PID: r.PID})
	if err != nil {
		s.log.Warn("refusing registration", zap.String("node", r.NodeID), zap.String("from", c.Remote()), zap.Error(err))
		return nil, err
	}
	s.conns[r.NodeID] = c
	c.Value.Store(r.NodeID)
	if keep != 0 {
		// A new aggregation attempt, if one was running, goes out on the
		// new link too.
		s.runActionsLocked()
	}
	if r.Folded > 0 && keep == 0 {
		// Updates this server acknowledged that the iteration machine never
		// counted (it was restored from a state saved before them) are
		// dropped with the server's partial sum. Accounted for once the
		// link is known, so that this server, too, is told if the
		// iteration fails for them.
		current := r.Iteration == s.iter.Iteration()
		if n := s.iter.UncountedLost(s.now(), r.NodeID, r.Iteration, r.Folded); n > 0 {
			s.log.Warn("updates acknowledged before the scheduler's restart are lost", zap.String("node", r.NodeID),
				zap.Uint64("iteration", r.Iteration), zap.Int("updates", n))
			if !current {
				// The iteration failed for another server's: its record
				// is out without these.
				s.updatesLost.Add(float64(n))
			}
			s.runActionsLocked()
		}
	}
	s.adoptRoundsLocked(r)
	s.log.Info("server registered", zap.String("node", r.NodeID), zap.Int("rank", rank), zap.String("peer_addr", r.PeerAddr), zap.String("http_addr", r.HTTPAddr))
	reply := ctl.RegisterReply{Rank: rank, Membership: s.members.View(), Iteration: s.iterStateLocked(), KeepPartial: keep}
	for _, ni := range []*ctl.NextIteration{s.prevNext, s.lastNext} {
		if ni != nil {
			reply.LastIterations = append(reply.LastIterations, *ni)
		}
	}
	s.broadcastLocked()
	return ctl.Encode(reply), nil
}

// adoptRoundsLocked takes the round parameters of the first server to
// register when the scheduler was started without any, before the first
// iteration has started; later differences are logged.
func (s *Scheduler) adoptRoundsLocked(r ctl.Register) {
	if r.Rounds == nil {
		return
	}
	p := iteration.Params(*r.Rounds)
	if p == s.iter.Query() {
		return
	}
	if !s.adoptRounds || s.iter.Iteration() != 1 || s.iter.Status().Phase != iteration.PhaseWaiting {
		s.log.Warn("server started with other round parameters than the scheduler's; the scheduler's apply",
			zap.String("node", r.NodeID), zap.Any("server", p), zap.Any("scheduler", s.iter.Query()))
		return
	}
	if err := s.iter.NewInstance(s.now(), p); err != nil {
		s.log.Warn("cannot adopt the server's round parameters", zap.String("node", r.NodeID), zap.Error(err))
		return
	}
	s.adoptRounds = false
	s.log.Info("adopted the round parameters the servers were started with", zap.String("node", r.NodeID), zap.Any("params", p))
	s.runActionsLocked()
}

// Closed forgets a server's connection; its heartbeat timeout decides
// whether it is dead.
func (s *Scheduler) Closed(c *transport.Conn, err error) {
	id, _ := c.Value.Load().(string)
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[id] == c {
		delete(s.conns, id)
		s.members.Disconnected(id)
		s.log.Info("server disconnected", zap.String("node", id), zap.Error(err))
		// Its partial sums may be gone with it: the iteration stops
		// counting on it now rather than after the heartbeat timeout.
		s.syncMembersLocked()
		s.runActionsLocked()
		if n, ok := s.members.Node(id); ok && n.ScaledIn {
			s.members.Forget(id)
		}
		s.broadcastLocked()
	}
}

// Members returns the current view (tests, REST).
func (s *Scheduler) Members() ctl.Membership {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.members.View()
}
