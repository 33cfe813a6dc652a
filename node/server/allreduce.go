package server

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2/pkg/pool/byteslice"
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
//
// Both steps travel in pieces of 1 MiB. A chunk owner adds each partial
// piece into its chunk's sum as it arrives and copies each reduced piece
// into the model, so no server holds a peer's whole share; and a sender
// keeps at most window pieces per peer unacknowledged (gnet queues what
// the socket does not take, so without acknowledgements every share of a
// large model would sit in its buffers at once). Shares of window pieces
// or fewer (a LeNet-size model) are not acknowledged at all. The sum's
// order follows arrival, which only its owner sees. "The model" is a
// modelOut: a large model's pieces go straight into its checkpoint file.

const (
	partialPiece = 128 << 10 // float64 elements per partial piece
	reducedPiece = 256 << 10 // float32 elements per reduced piece
	window       = 4         // unacknowledged pieces per peer and step
)

// paced reports whether a share of n elements sent in pieces of piece
// elements waits for acknowledgements.
func paced(n, piece int) bool { return n > window*piece }

// Steps of an all-reduce, as acknowledgements name them (Header.Chunk).
const (
	stepPartial = 0
	stepReduced = 1
)

type roundKey struct {
	iteration uint64
	attempt   uint32
}

// inbox collects the pieces of one all-reduce attempt; pieces may arrive
// before this server has been told to aggregate, and wait in pending.
type inbox struct {
	mu      sync.Mutex
	arrived *sync.Cond
	closed  bool
	err     error // a piece that does not fit: the attempt fails

	run     *arRun // set when this server's all-reduce starts
	pending []pendingPiece

	gotP    map[uint32]int     // partial elements received, by sender
	nByFrom map[uint32]float64 // senders' Σ data_size
	gotR    map[uint32]int     // reduced elements received, by chunk
	total   float64            // the owners' reduced Σ data_size
	acked   [2]map[uint32]int  // pieces peers acknowledged, by step and peer
}

// arRun is what the receiving side needs of a running all-reduce.
type arRun struct {
	me       int
	parts    int
	size     int // model elements
	off, cnt int // this server's chunk
	sum      agg.Accumulator
	out      modelOut
}

type pendingPiece struct {
	c    *transport.Conn
	kind frame.Kind
	h    peer.Header
	data []byte
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
		ib = &inbox{gotP: map[uint32]int{}, nByFrom: map[uint32]float64{}, gotR: map[uint32]int{},
			acked: [2]map[uint32]int{{}, {}}}
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

// dropIteration closes and forgets the inboxes of iteration it.
func (t *roundTable) dropIteration(it uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, ib := range t.rounds {
		if k.iteration == it {
			ib.close()
			delete(t.rounds, k)
		}
	}
}

// latest is the latest attempt of iteration it seen here (0: none).
func (t *roundTable) latest(it uint64) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n uint32
	for k := range t.rounds {
		if k.iteration == it {
			n = max(n, k.attempt)
		}
	}
	return n
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
	done := waitFor(ib.arrived, deadline, func() bool { return ib.closed || ib.err != nil || cond() })
	switch {
	case ib.err != nil:
		return ib.err
	case ib.closed:
		return fmt.Errorf("all-reduce attempt superseded")
	case done:
		return nil
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
func (p *plane) aggregate(from *transport.Conn, a ctl.Aggregate) {
	log := p.s.Logger().With(zap.Uint64("iteration", a.Iteration), zap.Int("attempt", a.Attempt))
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
	if p.large && p.s.uploads.shed() > 0 {
		// Every update of the iteration is folded: the idle upload
		// buffers' pages go back to the system before the all-reduce
		// allocates its chunk sum and pieces. Collected but kept, they
		// stayed resident beside them: sampled at their peaks, 10M
		// servers held 38 MB of free heap pages while the all-reduce's
		// allocations took fresh ones, and peaked at 4.5-5.1× the model
		// instead of 4.1×. Pages returned are faulted in again later:
		// on a paravirtualized VM that made a 10M switch 0.3 s longer
		// (1.6 s), the price of the memory bound.
		debug.FreeOSMemory()
	}
	if d, until := p.s.faultAllReduceDelay, p.s.faultAllReduceUntil; d > 0 && (until == 0 || a.Iteration <= until) {
		time.Sleep(d) // fault injection for crash-during-all-reduce tests
	}
	deadline := time.UnixMilli(a.DeadlineMs)
	out, err := p.newOut(a.Iteration, len(a.Participants))
	if err != nil {
		log.Warn("cannot aggregate", zap.Error(err))
		return
	}
	total, err := p.allReduce(a, me, attempt, pa, n, out, deadline)
	var (
		m   *model.Model
		sha string
	)
	if err == nil {
		m, sha, err = out.finish()
	}
	if err != nil {
		out.abort()
		log.Warn("all-reduce failed", zap.Error(err))
		return
	}
	if !pa.setResult(m, sha, func() *staging { return p.stage(out) }) {
		out.abort()
	}
	took := time.Since(start)
	pa.mu.Lock()
	lossSum, losses := pa.lossSum, pa.losses
	pa.mu.Unlock()
	p.s.report(from, ctl.KindAggregated, ctl.Aggregated{Iteration: a.Iteration, Attempt: a.Attempt, SHA256: sha, Folded: folded, FoldMBps: pa.foldMBps(), Engine: p.engine.Name(),
		LossSum: lossSum, Losses: losses})
	// Logged after the report, which the switch waits for.
	log.Info("all-reduce done", zap.Int("servers", len(a.Participants)), zap.Int("folded", folded), zap.Float64("data_size", total),
		zap.Duration("took", took), zap.String("model_sha256", sha))
}

// stage writes the checkpoint of out's model in the background.
func (p *plane) stage(out modelOut) *staging {
	g := &staging{done: make(chan struct{})}
	p.s.wg.Add(1)
	go func() {
		defer p.s.wg.Done()
		defer close(g.done)
		g.st = out.stage()
	}()
	return g
}

// allReduce averages the servers' partial sums into out and returns the
// total data size.
func (p *plane) allReduce(a ctl.Aggregate, me int, attempt uint32, pa *partial, n float64, out modelOut, deadline time.Time) (float64, error) {
	P := len(a.Participants)
	L := p.layout.Size
	off, cnt := peer.Split(L, P, me)
	if P == 1 {
		if n <= 0 {
			return 0, fmt.Errorf("no update in the aggregate (data size sum %v)", n)
		}
		return n, out.reduce(pa.acc, 0, 0, L, 1/n)
	}
	sum, err := p.chunkSums.get(p.sums, cnt)
	if err != nil {
		return 0, err
	}
	ib := p.rounds.get(roundKey{a.Iteration, attempt})
	run := &arRun{me: me, parts: P, size: L, off: off, cnt: cnt, sum: sum, out: out}
	if err := p.startRun(ib, run); err != nil {
		p.chunkSums.put(sum)
		return 0, err
	}
	defer func() {
		ib.mu.Lock()
		// Late or stray pieces must not reach a recycled accumulator, nor
		// an output the caller is about to finish or abort.
		run.sum, run.out = nil, nil
		ib.mu.Unlock()
		p.chunkSums.put(sum)
	}()

	// Reduce-scatter: every other owner gets its share of our partial sum.
	err = p.sendShares(a, me, attempt, ib, deadline, stepPartial, partialPiece, ctl.KindPartial, 8, n,
		func(b []byte, o, k int) ([]byte, error) { return pa.acc.AppendPartial(b, o, k), nil })
	if err != nil {
		return 0, err
	}
	// Our own partial, through a small recycled buffer, beside the peers'
	// pieces.
	pieceBuf := byteslice.Get(8 * min(partialPiece, cnt))
	defer byteslice.Put(pieceBuf)
	buf := pieceBuf[:0]
	for o := 0; o < cnt; o += partialPiece {
		k := min(partialPiece, cnt-o)
		buf = pa.acc.AppendPartial(buf[:0], off+o, k)
		ib.mu.Lock()
		err := sum.AddPartial(o, buf)
		ib.mu.Unlock()
		if err != nil {
			return 0, err
		}
	}
	err = ib.wait(deadline, func() bool { return peersDone(me, P, ib.gotP, func(int) int { return cnt }) })
	if err != nil {
		return 0, fmt.Errorf("waiting for partial sums: %w", err)
	}
	total := n
	ib.mu.Lock()
	for j := 0; j < P; j++ {
		if j != me {
			total += ib.nByFrom[uint32(j)]
		}
	}
	ib.mu.Unlock()
	if total <= 0 {
		return 0, fmt.Errorf("no update in the aggregate (data size sum %v)", total)
	}
	// The sum is complete: no piece adds to it any more.
	if err := out.reduce(sum, 0, off, cnt, 1/total); err != nil {
		return 0, err
	}

	// All-gather: every other server gets our finished chunk.
	err = p.sendShares(a, me, attempt, ib, deadline, stepReduced, reducedPiece, ctl.KindReduced, 4, total, out.appendFloats)
	if err != nil {
		return 0, err
	}
	err = ib.wait(deadline, func() bool {
		return peersDone(me, P, ib.gotR, func(j int) int { _, c := peer.Split(L, P, j); return c })
	})
	if err != nil {
		return 0, fmt.Errorf("waiting for reduced chunks: %w", err)
	}
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if ib.total != 0 && ib.total != total {
		return 0, fmt.Errorf("peers reduced with data size %v, this server %v", ib.total, total)
	}
	return total, nil
}

// peersDone reports whether every participant but me delivered want(j)
// elements, as counted in got.
func peersDone(me, parts int, got map[uint32]int, want func(j int) int) bool {
	for j := 0; j < parts; j++ {
		if j != me && got[uint32(j)] < want(j) {
			return false
		}
	}
	return true
}

// startRun hands the inbox the running all-reduce and consumes the pieces
// that came before it.
func (p *plane) startRun(ib *inbox, run *arRun) error {
	ib.mu.Lock()
	if ib.closed {
		ib.mu.Unlock()
		return fmt.Errorf("all-reduce attempt superseded")
	}
	ib.run = run
	pending := ib.pending
	ib.pending = nil
	var acks []pendingPiece
	for _, pc := range pending {
		if p.consumeLocked(ib, pc.kind, pc.h, pc.data) {
			acks = append(acks, pc)
		}
	}
	ib.mu.Unlock()
	for _, pc := range acks {
		p.ack(pc.c, pc.kind, pc.h, run.me)
	}
	return nil
}

// sendShares sends every other participant its share of one step in
// pieces, round robin over the peers, keeping at most window pieces per
// peer unacknowledged when the share is paced. piece appends the values of
// elements [o, o+k) (model positions) after the header.
func (p *plane) sendShares(a ctl.Aggregate, me int, attempt uint32, ib *inbox, deadline time.Time, step, pieceLen int,
	kind frame.Kind, elem int, n float64, piece func(b []byte, o, k int) ([]byte, error)) error {
	P := len(a.Participants)
	L := p.layout.Size
	for k := 0; ; k++ {
		sent := false
		for j, part := range a.Participants {
			if j == me {
				continue
			}
			chunk := j // partial pieces go to the chunk's owner
			if step == stepReduced {
				chunk = me // reduced pieces are of our own chunk
			}
			off, cnt := peer.Split(L, P, chunk)
			o := k * pieceLen
			if o >= cnt {
				continue
			}
			if paced(cnt, pieceLen) && k >= window {
				err := ib.wait(deadline, func() bool { return ib.acked[step][uint32(j)] > k-window })
				if err != nil {
					return fmt.Errorf("waiting for %s to take our pieces: %w", part.NodeID, err)
				}
			}
			c := min(pieceLen, cnt-o)
			h := peer.Header{Iteration: a.Iteration, Attempt: attempt, From: uint32(me), Chunk: uint32(chunk), Offset: uint64(off + o), Count: uint64(c), N: n}
			var perr error
			err := p.send(part, kind, peer.HeaderSize+elem*c, func(b []byte) []byte {
				b, perr = piece(peer.AppendHeader(b, h), off+o, c)
				return b
			})
			if err == nil {
				err = perr
			}
			if err != nil {
				return err
			}
			sent = true
		}
		if !sent {
			return nil
		}
	}
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

// receive takes a piece (or an acknowledgement) from a peer, on the event
// loop: a piece of a running all-reduce is consumed at once, an earlier
// one waits in its inbox.
func (p *plane) receive(c *transport.Conn, kind frame.Kind, body []byte) error {
	elem := 8
	switch kind {
	case ctl.KindReduced:
		elem = 4
	case ctl.KindPieceAck:
		elem = 0
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
	if ib.closed {
		ib.mu.Unlock()
		return nil
	}
	if kind == ctl.KindPieceAck {
		if h.Chunk == stepPartial || h.Chunk == stepReduced {
			ib.acked[h.Chunk][h.From]++
			ib.arrived.Broadcast()
		}
		ib.mu.Unlock()
		return nil
	}
	run := ib.run
	if run == nil {
		// body is the event loop's read buffer: keep a copy.
		ib.pending = append(ib.pending, pendingPiece{c: c, kind: kind, h: h, data: append([]byte(nil), data...)})
		ib.mu.Unlock()
		return nil
	}
	ack := p.consumeLocked(ib, kind, h, data)
	ib.mu.Unlock()
	if ack {
		p.ack(c, kind, h, run.me)
	}
	return nil
}

// consumeLocked adds a partial piece into the chunk's sum or copies a
// reduced piece into the model, and says whether to acknowledge it. A
// piece that does not fit the attempt fails it.
func (p *plane) consumeLocked(ib *inbox, kind frame.Kind, h peer.Header, data []byte) bool {
	r := ib.run
	fail := func(format string, args ...any) bool {
		if ib.err == nil {
			ib.err = fmt.Errorf("bad all-reduce piece from participant %d: "+format, append([]any{h.From}, args...)...)
		}
		ib.arrived.Broadcast()
		return false
	}
	if int(h.From) >= r.parts || int(h.From) == r.me {
		return fail("not a peer of %d participants", r.parts)
	}
	end := h.Offset + h.Count
	switch kind {
	case ctl.KindPartial:
		if int(h.Chunk) != r.me || h.Offset < uint64(r.off) || end > uint64(r.off+r.cnt) {
			return fail("elements [%d, %d) of chunk %d are not this server's to reduce", h.Offset, end, h.Chunk)
		}
		if r.sum == nil {
			return fail("it came after this server's all-reduce ended")
		}
		if ib.gotP[h.From]+int(h.Count) > r.cnt {
			return fail("more elements than its share")
		}
		if err := r.sum.AddPartial(int(h.Offset)-r.off, data); err != nil {
			return fail("%v", err)
		}
		ib.gotP[h.From] += int(h.Count)
		ib.nByFrom[h.From] = h.N
		ib.arrived.Broadcast()
		return paced(r.cnt, partialPiece)
	case ctl.KindReduced:
		off, cnt := peer.Split(r.size, r.parts, int(h.Chunk))
		if h.Chunk != h.From || h.Offset < uint64(off) || end > uint64(off+cnt) {
			return fail("elements [%d, %d) are not of its chunk", h.Offset, end)
		}
		if ib.gotR[h.Chunk]+int(h.Count) > cnt {
			return fail("more elements than its chunk")
		}
		if ib.total != 0 && ib.total != h.N {
			return fail("reduced with data size %v, another peer with %v", h.N, ib.total)
		}
		if r.out == nil {
			return fail("it came after this server's all-reduce ended")
		}
		if err := r.out.put(int(h.Offset), data); err != nil {
			if ib.err == nil {
				ib.err = err
			}
			ib.arrived.Broadcast()
			return false
		}
		ib.gotR[h.Chunk] += int(h.Count)
		ib.total = h.N
		ib.arrived.Broadcast()
		return paced(cnt, reducedPiece)
	}
	return false
}

// ack acknowledges a consumed piece on the link it came by.
func (p *plane) ack(c *transport.Conn, kind frame.Kind, h peer.Header, me int) {
	step := stepPartial
	if kind == ctl.KindReduced {
		step = stepReduced
	}
	a := peer.Header{Iteration: h.Iteration, Attempt: h.Attempt, From: uint32(me), Chunk: uint32(step)}
	err := c.SendBuilt(ctl.KindPieceAck, peer.HeaderSize, func(b []byte) []byte { return peer.AppendHeader(b, a) })
	if err != nil {
		p.s.Logger().Debug("cannot acknowledge an all-reduce piece", zap.Error(err))
	}
}

// report answers an order of the scheduler on the link it came by: a
// server ordered to aggregate while it still completes its registration
// (catching up from a peer) has no other link to the scheduler yet.
func (s *Server) report(c *transport.Conn, kind frame.Kind, v any) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, kind, ctl.Encode(v)); err != nil {
		s.Logger().Warn("scheduler refused report", zap.Error(err))
	}
}
