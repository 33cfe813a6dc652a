package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
)

// plane is the server's data plane: the iteration it serves, the stored
// models, this iteration's partial sum and the all-reduce with its peers.
type plane struct {
	s      *Server
	engine agg.Engine
	sums   agg.Engine // for the all-reduce's share sums (agg.ForHostSums)
	store  *modelstore.Store
	// unlockDir releases the checkpoint folder (modelstore.LockDir).
	unlockDir func()
	layout    *model.Layout
	index     map[string]int // parameter name → position in layout
	large     bool           // the model's float32 size is largeModel or more

	mu          sync.Mutex
	changed     *sync.Cond // signalled when the iteration or state moves
	ready       bool       // joined a ready cluster and knows its iteration
	iteration   uint64
	instance    string
	nextReqTime int64
	plan        ctl.Plan
	partials    map[uint64]*partial
	free        []agg.Accumulator // accumulators of finished iterations, for reuse

	rounds    roundTable // all-reduce message inboxes
	peers     peerConns
	chunkSums accPool // the all-reduce's chunk accumulators
}

func newPlane(s *Server) (*plane, error) {
	unlock, err := modelstore.LockDir(s.cfg.Model.CheckpointDir)
	if err != nil {
		return nil, err
	}
	e, err := agg.New(s.cfg.Aggregation.Engine)
	if err != nil {
		unlock()
		return nil, err
	}
	sums, err := agg.ForHostSums(e)
	if err != nil {
		e.Close()
		unlock()
		return nil, err
	}
	st, err := modelstore.Open(modelstore.Options{
		Dir:      s.cfg.Model.CheckpointDir,
		FLName:   s.cfg.FL.FLName,
		Keep:     s.cfg.Model.CheckpointKeep,
		Logger:   s.Logger(),
		InitFile: s.cfg.Model.InitFile,
		Seed:     s.cfg.Model.InitSeed,
	})
	if err != nil {
		e.Close()
		sums.Close()
		unlock()
		return nil, fmt.Errorf("cannot open model store: %w", err)
	}
	p := &plane{
		s: s, engine: e, sums: sums, store: st, unlockDir: unlock, layout: st.Layout(),
		instance: "running",
		plan: ctl.Plan{FLIterationNum: s.cfg.FL.FLIterationNum, ClientEpochNum: s.cfg.FL.ClientEpochNum,
			ClientBatchSize: s.cfg.FL.ClientBatchSize, ClientLearningRate: s.cfg.FL.ClientLearningRate},
		partials: make(map[uint64]*partial),
	}
	p.index = make(map[string]int, len(p.layout.Params))
	for i, q := range p.layout.Params {
		p.index[q.Name] = i
	}
	p.large = 4*p.layout.Size >= largeModel
	if p.large {
		// Older iterations of a large model (iteration 0 too) are
		// answered with the newest rather than held in memory; their
		// checkpoints stay on disk. The newest is served from its
		// checkpoint's pages, not from the heap.
		st.SetMemKeep(1)
		st.SetMapCommitted(true)
	}
	p.changed = sync.NewCond(&p.mu)
	p.rounds.init()
	p.peers.init(s)
	latest, _ := st.Latest()
	p.iteration = latest + 1
	return p, nil
}

func (p *plane) close() {
	p.mu.Lock()
	for _, pa := range p.partials {
		pa.discardStaged()
		pa.acc.Close()
	}
	for _, a := range p.free {
		a.Close()
	}
	p.partials = map[uint64]*partial{}
	p.free = nil
	p.mu.Unlock()
	p.chunkSums.close()
	p.engine.Close()
	if p.sums != p.engine {
		p.sums.Close()
	}
	p.store.Close()
	p.unlockDir()
}

// partialFor returns iteration it's partial sum, creating it.
func (p *plane) partialFor(it uint64) (*partial, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.partialForLocked(it)
}

func (p *plane) partialForLocked(it uint64) (*partial, error) {
	if pa := p.partials[it]; pa != nil {
		return pa, nil
	}
	var acc agg.Accumulator
	if n := len(p.free); n > 0 {
		acc, p.free = p.free[n-1], p.free[:n-1]
		acc.Reset()
	} else {
		var err error
		if acc, err = p.engine.NewAccumulator(p.layout.Size); err != nil {
			return nil, fmt.Errorf("cannot allocate accumulator: %w", err)
		}
	}
	pa := newPartial(it, acc)
	p.partials[it] = pa
	return pa, nil
}

// responseSize is a model response's size: the floats, and per parameter
// its table, name and vector headers.
func (p *plane) responseSize() int {
	n := 4*p.layout.Size + 512
	for _, q := range p.layout.Params {
		n += 64 + len(q.Name)
	}
	return n
}

// largeModel is the float32 size from which a server keeps only the newest
// model in memory, serves it without a serialized copy and collects
// garbage more often.
const largeModel = 16 << 20

// folded is the updates folded into iteration it's partial sum, once
// none is in flight.
func (p *plane) folded(it uint64) []ctl.FoldedUpdate {
	p.mu.Lock()
	pa := p.partials[it]
	p.mu.Unlock()
	if pa == nil {
		return nil
	}
	return pa.foldedUpdates()
}

// dropPartials retires the partial sums of iterations up to upTo, once
// the updates still being folded into them are done, and recycles their
// accumulators (one is kept for the next iteration).
func (p *plane) dropPartials(upTo uint64) {
	p.mu.Lock()
	var gone []*partial
	for it, pa := range p.partials {
		if it <= upTo {
			delete(p.partials, it)
			gone = append(gone, pa)
		}
	}
	p.mu.Unlock()
	p.rounds.drop(upTo)
	for _, pa := range gone {
		pa.drop(p.recycle)
	}
}

// recycle takes back an accumulator no one uses any more. One is kept
// for the next iteration whatever its size: a large model's server would
// otherwise allocate a new one while the old one awaits the collector,
// and hold both at its peak.
func (p *plane) recycle(acc agg.Accumulator) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) == 0 {
		p.free = append(p.free, acc)
		return
	}
	acc.Close()
}

// setState installs the iteration state the scheduler announced. Pushes
// only move the iteration forward; a registration reply (authoritative)
// sets it whatever it was, as the scheduler's word is the truth.
func (p *plane) setState(st ctl.IterationState, authoritative bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st.Iteration >= p.iteration || !p.ready || authoritative {
		p.iteration = st.Iteration
		p.instance = st.Instance
		p.nextReqTime = st.NextReqTime
	}
	if st.Plan != nil {
		p.plan = *st.Plan
	}
	p.ready = true
	p.changed.Broadcast()
}

// snapshot is the state a request is answered with.
type snapshot struct {
	ready       bool
	iteration   uint64
	instance    string
	nextReqTime int64
	plan        ctl.Plan
}

func (p *plane) state() snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return snapshot{p.ready, p.iteration, p.instance, p.nextReqTime, p.plan}
}

// waitIteration waits (bounded) until the server has switched to it: the
// scheduler may admit a device for the next iteration while this server is
// still storing the previous one.
func (p *plane) waitIteration(it uint64, d time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return waitFor(p.changed, time.Now().Add(d), func() bool { return p.iteration >= it })
}

// waitStored waits (bounded) until model it is stored: getModel holds a
// device's poll until the aggregate is ready instead of answering
// SucNotReady at once, so the device learns the new model within the
// switch time rather than its next poll.
func (p *plane) waitStored(it uint64, d time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Stop waiting too once the server has moved past it with a newer
	// model (it missed that iteration, and the device will be served the
	// latest). A server that moved past it without a model that new
	// (catching up after a restart or a partition) has yet to fetch it.
	waitFor(p.changed, time.Now().Add(d), func() bool {
		latest, _ := p.store.Latest()
		return p.store.Has(it) || p.iteration > it && latest > it
	})
	return p.store.Has(it)
}

// waitFor waits on c, whose lock the caller holds, until done reports true
// or the deadline passes, and returns done's last answer. A sync.Cond has
// no timeout, so a timer wakes the waiters at the deadline.
func waitFor(c *sync.Cond, deadline time.Time, done func() bool) bool {
	if done() {
		return true
	}
	timer := time.AfterFunc(time.Until(deadline), func() {
		c.L.Lock()
		c.Broadcast()
		c.L.Unlock()
	})
	defer timer.Stop()
	for !done() {
		if !time.Now().Before(deadline) {
			return false
		}
		c.Wait()
	}
	return true
}

// nextIteration stores the completed iteration's model (the aggregate, or
// a copy of the latest when the iteration failed) and moves on. A valid
// iteration's model is only ever the one the cluster agreed on: a server
// without it (it joined after the all-reduce began) fetches it from a peer,
// and if none can give it leaves the iteration unstored rather than store
// another model under its number.
func (p *plane) nextIteration(ni ctl.NextIteration) {
	log := p.s.Logger()
	p.mu.Lock()
	pa := p.partials[ni.Completed]
	p.mu.Unlock()
	if latest, _ := p.store.Latest(); latest < ni.Completed {
		var (
			m   *model.Model
			sum string
			st  *staging
		)
		if ni.Valid {
			sum = ni.SHA256
			if pa != nil {
				pa.waitIdle()
				m, st = pa.takeResult(ni.SHA256)
			}
			if m == nil {
				var err error
				if m, err = p.fetchAggregate(ni.Completed, ni.SHA256); err != nil {
					log.Error("cannot get the aggregated model from any peer; this iteration stays unstored here", zap.Uint64("iteration", ni.Completed), zap.Error(err))
				}
			}
		} else {
			_, m = p.store.Latest()
		}
		if pa != nil {
			// The partial sum is spent (its result is taken, if any): its
			// accumulator goes back before the commit, which for a large
			// model waits for the checkpoint's fdatasync. Devices that
			// faster servers have switched already upload the next
			// iteration here meanwhile, and would get a second one: two
			// float64 models at once. Peers still fetch the result.
			pa.drop(p.recycle)
		}
		var err error
		switch {
		case m == nil:
		case st != nil:
			err = st.wait().Commit()
		default:
			err = p.store.Stage(ni.Completed, m, sum).Commit()
		}
		if err == nil && pa != nil {
			// Stored: peers now get it from the store. A large model's
			// store maps its checkpoint, and the heap copy must be
			// garbage before the next iteration's uploads allocate.
			pa.forgetResult()
		}
		// Logged once the devices waiting for the model are on their
		// way: a line written to a file costs tens of microseconds.
		defer func() {
			switch {
			case m == nil:
			case err != nil:
				log.Error("cannot store model", zap.Uint64("iteration", ni.Completed), zap.Error(err))
			case ni.Valid:
				log.Info("model stored", zap.Uint64("iteration", ni.Completed), zap.String("model_sha256", ni.SHA256))
			default:
				log.Info("iteration failed; previous model stored again", zap.Uint64("iteration", ni.Completed), zap.String("reason", ni.Reason))
			}
		}()
	}
	p.mu.Lock()
	if ni.Iteration >= p.iteration {
		p.iteration, p.instance, p.nextReqTime = ni.Iteration, ni.Instance, ni.NextReqTime
	}
	p.changed.Broadcast()
	p.mu.Unlock()
	p.dropPartials(ni.Completed)
}

// missedNextIteration applies the end of an iteration this server has not
// stored (the scheduler died before telling it, or the link broke) when it
// can do so alone: it holds the iteration's aggregate (or its process
// before a restart wrote it to disk), or the iteration failed and it holds
// the model before it, which is stored again. Any other server (one that
// took no part, a new one) fetches the model from a peer when it catches
// up.
func (p *plane) missedNextIteration(ni ctl.NextIteration) {
	latest, _ := p.store.Latest()
	if latest >= ni.Completed {
		return
	}
	p.mu.Lock()
	pa := p.partials[ni.Completed]
	p.mu.Unlock()
	if ni.Valid && pa == nil && latest+1 == ni.Completed {
		// This process has no aggregate, but the one before it may have
		// written it to disk before it died with the cluster.
		switch ok, err := p.store.CommitLeftover(ni.Completed, ni.SHA256); {
		case err != nil:
			p.s.Logger().Error("cannot store the model of an iteration whose end was not received", zap.Uint64("iteration", ni.Completed), zap.Error(err))
			return
		case ok:
			p.s.Logger().Info("stored the model of an iteration whose end was not received, from the checkpoint written before the restart",
				zap.Uint64("iteration", ni.Completed), zap.String("model_sha256", ni.SHA256))
			return
		}
	}
	if ni.Valid && pa == nil || !ni.Valid && latest+1 != ni.Completed {
		return
	}
	p.s.Logger().Info("storing the model of an iteration whose end was not received", zap.Uint64("iteration", ni.Completed), zap.Bool("valid", ni.Valid))
	p.nextIteration(ni)
}

// partialIterations lists the iterations that have a partial sum.
func (p *plane) partialIterations() []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	its := make([]uint64, 0, len(p.partials))
	for it := range p.partials {
		its = append(its, it)
	}
	return its
}

// resetPartials drops the partial sums of iterations stale, those a
// server held when it registered again, but keep's (0: none): the
// scheduler counts the updates in them as lost, unless it took keep's
// back. A partial sum begun since, by an aggregation the scheduler ordered
// on the new link before its reply was read, stays with its all-reduce.
func (p *plane) resetPartials(keep uint64, stale []uint64) {
	var gone []*partial
	p.mu.Lock()
	for _, it := range stale {
		if pa := p.partials[it]; pa != nil && it != keep {
			delete(p.partials, it)
			gone = append(gone, pa)
		}
	}
	p.mu.Unlock()
	for _, pa := range gone {
		p.rounds.dropIteration(pa.iteration)
		pa.drop(p.recycle)
	}
}

// fetchAggregate gets iteration it's agreed model from a peer, retrying
// for a short while: the peers receive the same NextIteration at the same
// moment and may still be storing it.
func (p *plane) fetchAggregate(it uint64, sha string) (*model.Model, error) {
	var err error
	for delay := 5 * time.Millisecond; delay < 2*time.Second; delay *= 2 {
		var m *model.Model
		if m, err = p.fetchFromPeers(it, sha, p.s.members()); err == nil {
			return m, nil
		}
		select {
		case <-p.s.stop:
			return nil, err
		case <-time.After(delay):
		}
	}
	return nil, err
}

var errNoPeer = errors.New("no live peer to fetch from")

// catchUpTries bounds catchUp's fetches of a model no peer could give.
const catchUpTries = 4

// fetchFromPeers asks the other servers for stored model it, checking its
// checksum when want is set.
func (p *plane) fetchFromPeers(it uint64, want string, members []ctl.Member) (*model.Model, error) {
	var errs []error
	for _, mem := range members {
		if mem.NodeID == p.s.nodeID || !mem.Alive {
			continue
		}
		m, err := p.fetchFrom(mem, it, want)
		if err == nil {
			return m, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", mem.NodeID, err))
	}
	if len(errs) == 0 {
		return nil, errNoPeer
	}
	return nil, errors.Join(errs...)
}

func (p *plane) fetchFrom(mem ctl.Member, it uint64, want string) (*model.Model, error) {
	c, err := p.peers.get(mem.NodeID, mem.PeerAddr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body, err := c.Call(ctx, ctl.KindFetchModel, ctl.Encode(fetchModel{Iteration: it}))
	if err != nil {
		return nil, err
	}
	m, meta, err := modelstore.Decode(body, p.layout)
	if err != nil {
		return nil, err
	}
	if meta.Iteration != it && it != 0 {
		return nil, fmt.Errorf("peer sent iteration %d, want %d", meta.Iteration, it)
	}
	if want != "" && meta.SHA256 != want {
		return nil, fmt.Errorf("peer's model checksum %s, want %s", meta.SHA256, want)
	}
	return m, nil
}

// fetchModel asks a peer for a stored model; Iteration 0 means its latest.
type fetchModel struct {
	Iteration uint64 `json:"iteration"`
	Latest    bool   `json:"latest,omitempty"`
}

func (p *plane) serveFetch(body []byte) ([]byte, error) {
	var r fetchModel
	if err := ctl.Decode(body, &r); err != nil {
		return nil, err
	}
	it := r.Iteration
	if r.Latest {
		it, _ = p.store.Latest()
	}
	b, ok, err := p.store.Encoded(it)
	if err != nil {
		return nil, err
	}
	if ok {
		return b, nil
	}
	// An aggregate this server computed but has not stored yet: peers
	// store it before they serve it.
	p.mu.Lock()
	pa := p.partials[it]
	p.mu.Unlock()
	if pa != nil {
		pa.mu.Lock()
		m, sha := pa.result, pa.sha
		pa.mu.Unlock()
		if m != nil {
			return p.store.EncodeModel(m, it, sha)
		}
	}
	return nil, fmt.Errorf("iteration %d is not stored here", it)
}

// align drops stored models of iterations the cluster has not reached: the
// scheduler's iteration is the truth, and checkpoints past it belong to a
// run that was abandoned (a new job started over an old job's folder).
func (p *plane) align(current uint64) {
	if latest, _ := p.store.Latest(); current == 0 || latest < current {
		return
	}
	gone, err := p.store.Truncate(current)
	p.s.Logger().Warn("removed checkpoints of iterations the cluster has not reached: they belong to an earlier run",
		zap.Uint64("cluster_iteration", current), zap.Uint64s("removed", gone), zap.Error(err))
}

// catchUp makes a server that restarted or fell behind hold the model the
// cluster serves: if its newest checkpoint is older than the iteration
// before the current one, it fetches the latest model from a peer.
func (p *plane) catchUp(current uint64, members []ctl.Member) {
	latest, _ := p.store.Latest()
	if current == 0 || latest+1 >= current {
		return
	}
	want := current - 1
	var m *model.Model
	var err error
	// A peer may not have stored it yet (its NextIteration and this
	// registration crossed): a few tries, over less than a second.
	for try, wait := 1, 50*time.Millisecond; ; try, wait = try+1, 2*wait {
		m, err = p.fetchFromPeers(want, "", members)
		// A NextIteration the scheduler sent before its registration
		// reply may store the model meanwhile: then nothing is missing.
		if have, _ := p.store.Latest(); have >= want {
			return
		}
		if err == nil || errors.Is(err, errNoPeer) || try == catchUpTries {
			break
		}
		select {
		case <-time.After(wait):
		case <-p.s.stop:
			return
		}
	}
	if err != nil {
		p.s.Logger().Warn("cannot fetch the current model from a peer; devices asking for it are told it is not ready", zap.Uint64("want", want), zap.Uint64("have", latest), zap.Error(err))
		return
	}
	if err := p.store.Put(want, m); err != nil {
		if have, _ := p.store.Latest(); have >= want && errors.Is(err, modelstore.ErrOutOfOrder) {
			return
		}
		p.s.Logger().Error("cannot store fetched model", zap.Error(err))
		return
	}
	p.mu.Lock()
	p.changed.Broadcast() // getModel calls waiting for it
	p.mu.Unlock()
	p.s.Logger().Info("restored the current model from a peer", zap.Uint64("iteration", want))
}

var _ transport.Handler = (*Server)(nil)
