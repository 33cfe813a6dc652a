package server

import (
	"math"
	"slices"
	"sync"
	"time"

	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
	"github.com/fedcluster/fedcluster/wire/ctl"
)

// stripe is how many elements one fold lock covers: devices folding
// different parts of the model proceed in parallel, and a fold into one
// stripe never waits for more than one other device's stripe.
const stripe = 64 << 10

// partial is one iteration's local partial sum: Σ w·n per weight (devices
// upload weight × data_size) and Σ n. Updates are folded into it as they
// are decoded, so memory is one accumulator whatever the device count.
type partial struct {
	iteration uint64
	acc       agg.Accumulator
	locks     []sync.Mutex // one per stripe

	mu       sync.Mutex
	idle     *sync.Cond         // signalled when inflight drops to 0
	inflight int                // updates between count request and fold
	n        float64            // Σ data_size of folded updates
	updates  []ctl.FoldedUpdate // the folded updates (their count is the fold count)
	bytes    int64
	// lossSum and losses: the training loss devices reported with their
	// updates (≈r1.7 upload_loss), for the iteration's record.
	lossSum  float64
	losses   int
	foldTime time.Duration

	// Aggregation result, kept until NextIteration says it is valid, and
	// its checkpoint being written meanwhile.
	result *model.Model
	sha    string
	staged *staging

	// running counts all-reduces reading acc; a partial dropped while one
	// runs is released by the last of them (released says it happened).
	running  int
	dropped  bool
	released func(agg.Accumulator)
}

// acquire marks an all-reduce reading acc; it fails once the partial has
// been dropped.
func (p *partial) acquire() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dropped {
		return false
	}
	p.running++
	return true
}

// release ends acquire; the last all-reduce of a dropped partial hands its
// accumulator back.
func (p *partial) release() {
	p.mu.Lock()
	p.running--
	give := p.dropped && p.running == 0
	p.mu.Unlock()
	if give {
		p.released(p.acc)
	}
}

// drop retires the partial once no update is in flight: its accumulator
// goes to give now, or when the last all-reduce reading it ends. Only the
// first call does anything.
func (p *partial) drop(give func(agg.Accumulator)) {
	p.waitIdle()
	p.mu.Lock()
	if p.dropped {
		p.mu.Unlock()
		return
	}
	p.dropped, p.released = true, give
	now := p.running == 0
	staged := p.staged
	p.staged = nil
	p.mu.Unlock()
	staged.discard()
	if now {
		give(p.acc)
	}
}

// setResult records an all-reduce's result and starts writing its
// checkpoint; the result of an earlier attempt is replaced. A partial
// dropped meanwhile (its iteration ended without this all-reduce) takes
// nothing, and says so: no one would commit or remove the checkpoint.
func (p *partial) setResult(m *model.Model, sha string, stage func() *staging) bool {
	p.mu.Lock()
	if p.dropped {
		p.mu.Unlock()
		return false
	}
	old := p.staged
	p.result, p.sha, p.staged = m, sha, stage()
	p.mu.Unlock()
	old.discard()
	return true
}

// takeResult returns the result if its checksum is sum, with its staged
// checkpoint (nil if none), which the caller then owns.
func (p *partial) takeResult(sum string) (*model.Model, *staging) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.result == nil || p.sha != sum {
		return nil, nil
	}
	st := p.staged
	p.staged = nil
	return p.result, st
}

// forgetResult drops the result once the store holds it.
func (p *partial) forgetResult() {
	p.mu.Lock()
	p.result = nil
	p.mu.Unlock()
}

// discardStaged drops a staged checkpoint no one took.
func (p *partial) discardStaged() {
	p.mu.Lock()
	st := p.staged
	p.staged = nil
	p.mu.Unlock()
	st.discard()
}

// staging is an aggregate's checkpoint written and synced in the
// background while the scheduler collects the servers' checksums, so that
// storing the model at NextIteration is only a rename.
type staging struct {
	done chan struct{}
	st   *modelstore.Staged
}

// wait returns the staged checkpoint once written.
func (g *staging) wait() *modelstore.Staged {
	<-g.done
	return g.st
}

// discard removes the checkpoint once written; nil does nothing.
func (g *staging) discard() {
	if g != nil {
		g.wait().Discard()
	}
}

func newPartial(iteration uint64, acc agg.Accumulator) *partial {
	p := &partial{iteration: iteration, acc: acc, locks: make([]sync.Mutex, (acc.Len()+stripe-1)/stripe)}
	p.idle = sync.NewCond(&p.mu)
	return p
}

// begin marks an update in flight: the aggregation of this iteration waits
// for it, so an update counted by the scheduler is always folded first.
func (p *partial) begin() {
	p.mu.Lock()
	p.inflight++
	p.mu.Unlock()
}

// foldedUpdate describes an update folded into a partial sum.
type foldedUpdate struct {
	flID     string
	dataSize int // its weight in the average
	bytes    int64
	took     time.Duration
	loss     float32 // upload_loss
}

// end closes begin; folded says whether the update went into the sum.
func (p *partial) end(folded bool, u foldedUpdate) {
	p.mu.Lock()
	if folded {
		p.n += float64(u.dataSize)
		p.updates = append(p.updates, ctl.FoldedUpdate{FLID: u.flID, DataSize: u.dataSize})
		p.bytes += u.bytes
		p.foldTime += u.took
		if loss := u.loss; loss != 0 && !math.IsNaN(float64(loss)) && !math.IsInf(float64(loss), 0) {
			p.lossSum += float64(loss)
			p.losses++
		}
	}
	p.inflight--
	if p.inflight == 0 {
		p.idle.Broadcast()
	}
	p.mu.Unlock()
}

// foldedUpdates waits until no update is in flight and returns the
// updates folded.
func (p *partial) foldedUpdates() []ctl.FoldedUpdate {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waitIdleLocked()
	return slices.Clone(p.updates)
}

// waitIdle waits until no update is in flight and returns the totals.
func (p *partial) waitIdle() (n float64, folded int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waitIdleLocked()
	return p.n, len(p.updates)
}

func (p *partial) waitIdleLocked() {
	for p.inflight > 0 {
		p.idle.Wait()
	}
}

// foldMBps is the update bytes folded per second of fold time.
func (p *partial) foldMBps() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.foldTime <= 0 {
		return 0
	}
	return float64(p.bytes) / p.foldTime.Seconds() / 1e6
}

// fold adds x (weight w) at element off, stripe by stripe.
func (p *partial) fold(off int, x []float32, w float32) {
	for len(x) > 0 {
		s := off / stripe
		n := min(len(x), (s+1)*stripe-off)
		p.locks[s].Lock()
		p.acc.Fold(off, x[:n], w)
		p.locks[s].Unlock()
		off += n
		x = x[n:]
	}
}
