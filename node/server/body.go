package server

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/valyala/fasthttp"

	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
	"github.com/fedcluster/fedcluster/wire/flmsg"
)

// Request bodies are streamed (fasthttp's StreamRequestBody) and read into
// buffers the server owns, so memory does not grow with the number of
// devices uploading at once: at most uploadSlots updates are held in
// memory (see uploadSlots: up to 8 MiB of small bodies, else cores + 1,
// fewer for a large model or one too large for upload_memory), each in a
// reused buffer allocated on first use; further uploads wait in their
// TCP connections. Small requests (startFLJob, getModel) use small pooled
// buffers.

// smallBodyLimit bounds startFLJob and getModel bodies.
const smallBodyLimit = 64 << 10

var errBodyTooLarge = errors.New("request body too large")

// uploads lends the buffers updateModel bodies are read into.
type uploads struct {
	slots chan []byte
	wait  time.Duration // slotWait
	// collect runs the collector before a slot gets a new buffer (large
	// models): the model the last switch replaced is then garbage, and
	// the buffer takes its memory instead of new pages.
	collect bool
}

// uploadSlots is how many update bodies of size bytes may be held at once,
// within memory. A slot is held from the body's read through the
// scheduler's count to the fold, so one per core leaves the cores idle
// while counts are on the way: small bodies get as many slots as
// countingBytes of them hold (33 for LeNet; with 32 devices on 2 cores,
// 3,440-3,650 device-iterations/s against 2,920-3,060 with cores + 1).
// Others get one per core and one more being read while they fold. A
// large model gets one per core at most (reading a large body takes longer
// than folding it: a spare would only be memory), and no more than fit
// in the bound we hold a server's memory to, (cores + 3) × the model
// (issue 3), beside the float64 accumulator (2×) and largeReserve for the
// binary, the stacks and a thousand device connections. With a 10M model
// on 2 cores that is one buffer: 4.3-4.9× the model resident with 1,024
// devices instead of 5.2×, for about 10 % fewer updates/s. upload_memory
// can only lower it.
func uploadSlots(size, memory int) int {
	size = max(size, 1)
	cores := runtime.GOMAXPROCS(0)
	n := cores + 1
	if size >= largeModel {
		n = min(cores, ((cores+1)*size-largeReserve)/size)
	}
	n = max(n, min(countingBytes/size, maxSlots))
	return max(1, min(n, memory/size))
}

// largeReserve is what a large model's server holds besides the
// accumulator and the upload buffers: measured 45 MiB with 1,024 devices
// of a 10M model (the binary's pages 11, goroutine stacks 10, the
// connections' buffers and contexts 14, the runtime's own).
const largeReserve = 64 << 20

// countingBytes is what small bodies may hold in slots beyond one per core
// (see uploadSlots), and maxSlots bounds the slots of tiny models.
const (
	countingBytes = 8 << 20
	maxSlots      = 256
)

func newUploads(n int) *uploads {
	u := &uploads{slots: make(chan []byte, n), wait: slotWait}
	for i := 0; i < n; i++ {
		u.slots <- nil
	}
	return u
}

// shed drops the buffers of the slots no upload holds, keeping the slots,
// and says how many it dropped. An upload that takes a shed slot allocates
// its buffer again.
func (u *uploads) shed() int {
	idle, dropped := 0, 0
drain:
	for idle < cap(u.slots) {
		select {
		case b := <-u.slots:
			idle++
			if b != nil {
				dropped++
			}
		default:
			break drain
		}
	}
	for ; idle > 0; idle-- {
		u.slots <- nil // never blocks: the slots taken out are free
	}
	return dropped
}

// slotWait bounds the wait for an upload buffer: past it the device is
// told to come back (HTTP 503, which clients retry on another server). A
// waiting upload holds only its connection, whose kernel buffer is bounded
// (deviceRecvBuffer), so devices queue in arrival order rather than retry:
// with a 5 s wait, 256 devices of a 10M model on one server were turned
// away 765 times in three iterations, each time after sending megabytes
// of a body that was then dropped.
const slotWait = 2 * time.Minute

// httpReadTimeout bounds reading a request, and again reading an update's
// body once it has a buffer (the wait for one is not counted).
const httpReadTimeout = 60 * time.Second

var errBusy = errors.New("all upload buffers are busy; retry")

// read waits for a slot, reads the whole body into it and returns it with
// the function that gives the slot back.
func (u *uploads) read(ctx *fasthttp.RequestCtx, max int) ([]byte, func(), error) {
	var buf []byte
	t := time.NewTimer(u.wait)
	select {
	case buf = <-u.slots:
		t.Stop()
	case <-t.C:
		return nil, nil, errBusy
	}
	if c := ctx.Conn(); c != nil {
		_ = c.SetReadDeadline(time.Now().Add(httpReadTimeout))
	}
	if buf == nil && u.collect {
		runtime.GC()
	}
	body, err := readBody(ctx, buf[:0], max)
	release := func() { u.slots <- body[:0] }
	if err != nil {
		u.slots <- buf[:0]
		return nil, nil, err
	}
	return body, release, nil
}

var smallBodies = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// readSmall reads a small body into a pooled buffer; put it back with
// releaseSmall.
func readSmall(ctx *fasthttp.RequestCtx) ([]byte, *[]byte, error) {
	p := smallBodies.Get().(*[]byte)
	body, err := readBody(ctx, (*p)[:0], smallBodyLimit)
	*p = body[:0]
	return body, p, err
}

func releaseSmall(p *[]byte) {
	if cap(*p) <= smallBodyLimit {
		smallBodies.Put(p)
	}
}

// tooLarge says which limit a body passed: max_body_size for updateModel,
// smallBodyLimit for the small requests.
func tooLarge(max int) error {
	return fmt.Errorf("%w: this endpoint takes at most %d bytes", errBodyTooLarge, max)
}

// readBody appends the request body to dst, refusing more than max bytes.
func readBody(ctx *fasthttp.RequestCtx, dst []byte, max int) ([]byte, error) {
	r := ctx.RequestBodyStream()
	if r == nil { // not streamed (e.g. an in-memory test server)
		b := ctx.PostBody()
		if len(b) > max {
			return dst, tooLarge(max)
		}
		return append(dst, b...), nil
	}
	if n := ctx.Request.Header.ContentLength(); n > 0 {
		if n > max {
			return dst, tooLarge(max)
		}
		if cap(dst) < n {
			dst = make([]byte, 0, n)
		}
		dst = dst[:n]
		if _, err := io.ReadFull(r, dst); err != nil {
			return dst[:0], fmt.Errorf("cannot read request body: %w", err)
		}
		return dst, nil
	}
	// Chunked or unknown length: read until EOF, bounded.
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := r.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if len(dst) > max {
			return dst[:0], tooLarge(max)
		}
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst[:0], fmt.Errorf("cannot read request body: %w", err)
		}
	}
}

// respKey identifies a response that is the same for every device asking
// while the key holds.
type respKey struct {
	kind        uint8 // 1 startFLJob, 2 getModel, 3 startFLJob without the model
	iteration   uint64
	modelIter   uint64
	nextReqTime int64
	plan        [4]float64
}

// respCache keeps the head of the last built answer of one kind: between
// two changes of its key (an iteration switch, a round's first count)
// every device gets the same head followed by the same model block, and
// neither is copied (flmsg's split messages).
type respCache struct {
	mu    sync.Mutex
	key   respKey
	block *flmsg.ModelBlock
	head  []byte
}

func (c *respCache) get(key respKey, block *flmsg.ModelBlock, build func(b *flatbuffers.Builder) []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.head == nil || c.key != key || c.block != block {
		// Answers still being written keep the old head: never reuse it.
		c.head = append([]byte(nil), build(flatbuffers.NewBuilder(512))...)
		c.key, c.block = key, block
	}
	return c.head
}

// blockCache serializes the model being served once, for every answer of
// both kinds that carries it. It keeps one: a second would double the
// memory of a large model, and only stragglers ask for an older one. With
// a frame (large models), a block is the frame around the model's own
// data: nothing is serialized and the model is not held twice.
type blockCache struct {
	mu    sync.Mutex
	frame *flmsg.BlockFrame
	// backing says where a mapped model's floats lie in its checkpoint
	// (modelstore.SetMapCommitted): its answers send them from the file.
	backing func(*model.Model) (modelstore.Backing, bool)
	m       *model.Model
	block   *flmsg.ModelBlock
}

func (c *blockCache) get(m *model.Model) *flmsg.ModelBlock {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m != m {
		// A new block each time: answers being written keep the old one.
		switch b, mapped := c.lookup(m); {
		case mapped:
			c.block = c.frame.FileBlock(m, b.File, b.DataOffset)
		case c.frame != nil:
			c.block = c.frame.Block(m)
		default:
			c.block = new(flmsg.ModelBlock)
			c.block.Set(m)
		}
		c.m = m
	}
	return c.block
}

// lookup is c.backing's answer for m, if c has a frame and a backing.
func (c *blockCache) lookup(m *model.Model) (modelstore.Backing, bool) {
	if c.frame == nil || c.backing == nil {
		return modelstore.Backing{}, false
	}
	return c.backing(m)
}

// serveSplit answers with head followed by block's bytes, neither copied.
func serveSplit(ctx *fasthttp.RequestCtx, head []byte, block *flmsg.ModelBlock) {
	j := block.Joined(head)
	ctx.Response.SetBodyStream(j, j.Len())
}
