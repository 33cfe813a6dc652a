package server

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
	"github.com/fedcluster/fedcluster/wire/peer"
)

// The all-reduce is a direct reduce-scatter + all-gather: with P servers
// the model is cut into P chunks; server i sends chunk j of its partial
// sum to server j, sums the P partials of its own chunk, divides by the
// total data size, and sends the finished chunk to every other server. Two
// message steps whatever P, each server sending and receiving (P−1)/P of
// the model twice; and since every chunk is computed once, by its owner,
// all servers end with bit-identical weights.

// partialPiece is how many elements of our own partial sum are converted
// at a time into the chunk we reduce.
const partialPiece = 32 << 10

type roundKey struct {
	iteration uint64
	attempt   uint32
}

// inbox collects the chunks of one all-reduce attempt; chunks may arrive
// before this server has been told to aggregate.
type inbox struct {
	mu       sync.Mutex
	arrived  *sync.Cond
	partials map[uint32][]byte // by sender, for this server's chunk
	nByFrom  map[uint32]float64
	reduced  map[uint32][]byte // by chunk
	total    float64
	closed   bool
}

type roundTable struct {
	mu     sync.Mutex
	rounds map[roundKey]*inbox
}

func (t *roundTable) init() { t.rounds = make(map[roundKey]*inbox) }

func (t *roundTable) get(k roundKey) *inbox {
	t.mu.Lock()
	defer t.mu.Unlock()
	ib := t.rounds[k]
	if ib == nil {
		ib = &inbox{partials: map[uint32][]byte{}, nByFrom: map[uint32]float64{}, reduced: map[uint32][]byte{}}
		ib.arrived = sync.NewCond(&ib.mu)
		t.rounds[k] = ib
	}
	return ib
}

// drop closes and forgets the inboxes of iterations up to upTo, waking any
// all-reduce still waiting on them.
func (t *roundTable) drop(upTo uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, ib := range t.rounds {
		if k.iteration <= upTo {
			ib.close()
			delete(t.rounds, k)
		}
	}
}

// supersede closes the earlier attempts of an iteration.
func (t *roundTable) supersede(it uint64, attempt uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, ib := range t.rounds {
		if k.iteration == it && k.attempt < attempt {
			ib.close()
			delete(t.rounds, k)
		}
	}
}

func (ib *inbox) close() {
	ib.mu.Lock()
	ib.closed = true
	ib.arrived.Broadcast()
	ib.mu.Unlock()
}

// wait blocks until cond holds, the inbox closes or the deadline passes.
func (ib *inbox) wait(deadline time.Time, cond func() bool) error {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	switch {
	case waitFor(ib.arrived, deadline, func() bool { return ib.closed || cond() }) && !ib.closed:
		return nil
	case ib.closed:
		return fmt.Errorf("all-reduce attempt superseded")
	}
	return fmt.Errorf("all-reduce timed out")
}

// peerConns caches the links to other servers.
type peerConns struct {
	s     *Server
	mu    sync.Mutex
	conns map[string]*transport.Conn
}

func (pc *peerConns) init(s *Server) { pc.s, pc.conns = s, make(map[string]*transport.Conn) }

func (pc *peerConns) get(nodeID, addr string) (*transport.Conn, error) {
	pc.mu.Lock()
	c := pc.conns[nodeID]
	pc.mu.Unlock()
	if c != nil {
		select {
		case <-c.Done():
		default:
			if c.Remote() == addr {
				return c, nil
			}
			c.Close()
		}
	}
	c, err := pc.s.tr.Dial(addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("cannot reach peer %s at %s: %w", nodeID, addr, err)
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if other := pc.conns[nodeID]; other != nil && other.Remote() == addr {
		select {
		case <-other.Done():
		default:
			c.Close() // another goroutine dialled first
			return other, nil
		}
	}
	pc.conns[nodeID] = c
	return c, nil
}

// aggregate runs one all-reduce attempt and reports to the scheduler.
func (p *plane) aggregate(a ctl.Aggregate) {
	log := p.s.logger().With(zap.Uint64("iteration", a.Iteration), zap.Int("attempt", a.Attempt))
	start := time.Now()
	me := -1
	for i, part := range a.Participants {
		if part.NodeID == p.s.nodeID {
			me = i
		}
	}
	if me < 0 {
		return
	}
	attempt := uint32(a.Attempt)
	p.rounds.supersede(a.Iteration, attempt)
	pa, err := p.partialFor(a.Iteration)
	if err != nil {
		log.Error("cannot aggregate", zap.Error(err))
		return
	}
	if !pa.acquire() {
		return // the iteration already ended here
	}
	defer pa.release()
	defer func() {
		if r := recover(); r != nil {
			log.Error("BUG: all-reduce panicked", zap.Any("panic", r))
		}
	}()
	n, folded := pa.waitIdle()
	if d := p.s.faultAllReduceDelay; d > 0 {
		time.Sleep(d) // fault injection for crash-during-all-reduce tests
	}
	deadline := time.UnixMilli(a.DeadlineMs)
	m, total, err := p.allReduce(a, me, attempt, pa, n, deadline)
	if err != nil {
		log.Warn("all-reduce failed", zap.Error(err))
		return
	}
	sha := m.SHA256()
	pa.setResult(m, sha, func() *staging { return p.stage(a.Iteration, m, sha) })
	log.Info("all-reduce done", zap.Int("servers", len(a.Participants)), zap.Int("folded", folded), zap.Float64("data_size", total),
		zap.Duration("took", time.Since(start)), zap.String("model_sha256", sha))
	pa.mu.Lock()
	lossSum, losses := pa.lossSum, pa.losses
	pa.mu.Unlock()
	p.s.report(ctl.KindAggregated, ctl.Aggregated{Iteration: a.Iteration, Attempt: a.Attempt, SHA256: sha, Folded: folded, FoldMBps: pa.foldMBps(), Engine: p.engine.Name(),
		LossSum: lossSum, Losses: losses})
}

// stage writes iteration it's checkpoint of m in the background.
func (p *plane) stage(it uint64, m *model.Model, sha string) *staging {
	g := &staging{done: make(chan struct{})}
	p.s.wg.Add(1)
	go func() {
		defer p.s.wg.Done()
		defer close(g.done)
		g.st = p.store.Stage(it, m, sha)
	}()
	return g
}

func (p *plane) allReduce(a ctl.Aggregate, me int, attempt uint32, pa *partial, n float64, deadline time.Time) (*model.Model, float64, error) {
	P := len(a.Participants)
	L := p.layout.Size
	ib := p.rounds.get(roundKey{a.Iteration, attempt})
	// Reduce-scatter: send every other owner its chunk of our partial sum.
	for j, part := range a.Participants {
		if j == me {
			continue
		}
		off, cnt := peer.Split(L, P, j)
		h := peer.Header{Iteration: a.Iteration, Attempt: attempt, From: uint32(me), Chunk: uint32(j), Offset: uint64(off), Count: uint64(cnt), N: n}
		err := p.send(part, ctl.KindPartial, peer.HeaderSize+8*cnt, func(b []byte) []byte {
			return pa.acc.AppendPartial(peer.AppendHeader(b, h), off, cnt)
		})
		if err != nil {
			return nil, 0, err
		}
	}
	off, cnt := peer.Split(L, P, me)
	if err := ib.wait(deadline, func() bool { return len(ib.partials) == P-1 }); err != nil {
		return nil, 0, fmt.Errorf("waiting for partial sums: %w", err)
	}
	out := model.New(p.layout)
	mine := out.Data[off : off+cnt]
	total := n
	if P == 1 {
		if total <= 0 {
			return nil, 0, fmt.Errorf("no update in the aggregate (data size sum %v)", total)
		}
		pa.acc.Result(mine, off, 1/total)
		return out, total, nil
	}
	sum, err := p.chunkSums.get(p.engine, cnt)
	if err != nil {
		return nil, 0, err
	}
	defer p.chunkSums.put(sum)
	// Our own partial first, through a small buffer, then the peers' in
	// sender order: one owner computes each chunk, so the order only has
	// to be fixed, not shared.
	buf := make([]byte, 0, 8*min(partialPiece, cnt))
	for o := 0; o < cnt; o += partialPiece {
		k := min(partialPiece, cnt-o)
		buf = pa.acc.AppendPartial(buf[:0], off+o, k)
		if err := sum.AddPartial(o, buf); err != nil {
			return nil, 0, err
		}
	}
	ib.mu.Lock()
	for from := 0; from < P; from++ {
		if from == me {
			continue
		}
		if err := sum.AddPartial(0, ib.partials[uint32(from)]); err != nil {
			ib.mu.Unlock()
			return nil, 0, err
		}
		total += ib.nByFrom[uint32(from)]
	}
	ib.mu.Unlock()
	if total <= 0 {
		return nil, 0, fmt.Errorf("no update in the aggregate (data size sum %v)", total)
	}
	sum.Result(mine, 0, 1/total)
	// All-gather: send our finished chunk to everyone.
	h := peer.Header{Iteration: a.Iteration, Attempt: attempt, From: uint32(me), Chunk: uint32(me), Offset: uint64(off), Count: uint64(cnt), N: total}
	for j, part := range a.Participants {
		if j != me {
			err := p.send(part, ctl.KindReduced, peer.HeaderSize+4*cnt, func(b []byte) []byte {
				return append(peer.AppendHeader(b, h), float32Bytes(mine)...)
			})
			if err != nil {
				return nil, 0, err
			}
		}
	}
	if err := ib.wait(deadline, func() bool { return len(ib.reduced) == P-1 }); err != nil {
		return nil, 0, fmt.Errorf("waiting for reduced chunks: %w", err)
	}
	ib.mu.Lock()
	defer ib.mu.Unlock()
	for j := 0; j < P; j++ {
		if j == me {
			continue
		}
		o, c := peer.Split(L, P, j)
		copyFloat32(out.Data[o:o+c], ib.reduced[uint32(j)])
	}
	if ib.total != 0 && ib.total != total {
		return nil, 0, fmt.Errorf("peers reduced with data size %v, this server %v", ib.total, total)
	}
	return out, total, nil
}

// send sends a peer a frame of n body bytes built in place by build.
func (p *plane) send(part ctl.Participant, kind frame.Kind, n int, build func([]byte) []byte) error {
	c, err := p.peers.get(part.NodeID, part.PeerAddr)
	if err != nil {
		return err
	}
	return c.SendBuilt(kind, n, build)
}

// accPool keeps the all-reduce's chunk accumulators between iterations:
// the chunk size only changes with the number of servers.
type accPool struct {
	mu   sync.Mutex
	free []agg.Accumulator
}

// get returns a zeroed accumulator of n elements.
func (ap *accPool) get(e agg.Engine, n int) (agg.Accumulator, error) {
	ap.mu.Lock()
	for i, a := range ap.free {
		if a.Len() == n {
			ap.free = append(ap.free[:i], ap.free[i+1:]...)
			ap.mu.Unlock()
			a.Reset()
			return a, nil
		}
	}
	ap.mu.Unlock()
	return e.NewAccumulator(n)
}

// put keeps a for reuse; one spare is enough (one all-reduce at a time,
// rarely two when an attempt is retried).
func (ap *accPool) put(a agg.Accumulator) {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	if len(ap.free) < 2 {
		ap.free = append(ap.free, a)
		return
	}
	a.Close()
}

// close frees the kept accumulators.
func (ap *accPool) close() {
	ap.mu.Lock()
	defer ap.mu.Unlock()
	for _, a := range ap.free {
		a.Close()
	}
	ap.free = nil
}

// receive files a chunk from a peer into its attempt's inbox.
func (p *plane) receive(kind frame.Kind, body []byte) error {
	elem := 8
	if kind == ctl.KindReduced {
		elem = 4
	}
	h, data, err := peer.Parse(body, elem, uint64(p.layout.Size))
	if err != nil {
		return err
	}
	p.mu.Lock()
	stale := h.Iteration < p.iteration
	p.mu.Unlock()
	if stale {
		return nil
	}
	ib := p.rounds.get(roundKey{h.Iteration, h.Attempt})
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if kind == ctl.KindPartial {
		ib.partials[h.From] = data
		ib.nByFrom[h.From] = h.N
	} else {
		ib.reduced[h.Chunk] = data
		ib.total = h.N
	}
	ib.arrived.Broadcast()
	return nil
}

func float32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}

func copyFloat32(dst []float32, raw []byte) {
	if len(dst) == 0 {
		return
	}
	copy(float32Bytes(dst), raw)
}

// report sends a message to the scheduler, if connected.
func (s *Server) report(kind frame.Kind, v any) {
	s.mu.Lock()
	c := s.sched
	s.mu.Unlock()
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, kind, ctl.Encode(v)); err != nil {
		s.logger().Warn("scheduler refused report", zap.Error(err))
	}
}
