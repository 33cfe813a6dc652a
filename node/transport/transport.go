// Package transport carries cluster frames over gnet event loops: a
// listener (scheduler, server peer port), whose loops also carry the
// connections it dials (server to scheduler and to peers), and a dialler
// without a listener share one connection type with request/reply calls.
//
// gnet callbacks must not block, so the event loop only splits the byte
// stream into frames and copies them out; each connection hands its frames,
// in order, to its own goroutine, which runs the Handler. Replies to Call
// are routed to the waiting caller directly from the event loop, and the
// quick kinds named in Options are served on it. Frames are written by the
// goroutine that sends them, straight into the socket, and through the
// event loop only when the socket is full (see Conn.write).
package transport

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/pool/byteslice"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// Handler serves the frames a connection receives. Serve runs on the
// connection's own goroutine, one frame at a time in arrival order; for a
// request (f.ID != 0) its return value is sent back as the reply, so a
// handler that must wait for other work should do it in a goroutine of its
// own and reply with Conn.Reply. f.Body is the handler's to keep.
type Handler interface {
	Serve(c *Conn, f frame.Frame) (reply []byte, err error)
	Closed(c *Conn, err error)
}

// ErrNoReply is returned by Serve when it will reply later with Conn.Reply.
var ErrNoReply = errors.New("reply sent later")

// ErrClosed is returned for calls on a closed connection.
var ErrClosed = errors.New("connection closed")

// Options configure a Transport.
type Options struct {
	// MaxFrame is the largest frame body accepted; a peer announcing a
	// larger one is disconnected before its body is read.
	MaxFrame int
	// Logger receives connection events.
	Logger *zap.Logger
	// Handler serves inbound frames on every connection.
	Handler Handler
	// Inline, when set, says which frame kinds (pushes, never requests) the
	// handler serves right on the event loop instead of the connection's
	// goroutine: their handler must be quick and never block. It saves a
	// goroutine hand-off on latency-critical traffic (the all-reduce). An
	// inline frame's Body is the event loop's read buffer, valid only
	// during the call: a handler that keeps it must copy it.
	Inline func(frame.Kind) bool
	// InlineCalls, when set, says which request kinds the handler serves
	// on the event loop, replying straight into the socket, whenever the
	// connection's goroutine has no frame queued or in hand (so requests
	// are still served in arrival order). Their handler must be quick: it
	// may take a lock briefly, never wait for the network. It saves a
	// thread wake-up per call (the connection's goroutine) on the hottest
	// calls (the scheduler's admissions and counts). The Body rule of
	// Inline applies.
	InlineCalls func(frame.Kind) bool
}

// Transport owns a gnet engine once it listens, whose event loops also
// carry the connections it dials, and otherwise a gnet client started by
// its first Dial. Close stops them and every connection's goroutine.
type Transport struct {
	opts   Options
	log    *zap.Logger
	cli    *gnet.Client // nil until a transport that does not listen dials
	events *events

	mu       sync.Mutex
	loops    int // gnet event loops running (EventLoops)
	engine   gnet.Engine
	listenOn string
	boundTo  string
	runErr   chan error
	closed   bool
	conns    map[*Conn]struct{}
	wg       sync.WaitGroup
}

// New starts a transport that can dial; call Listen to accept too.
func New(opts Options) (*Transport, error) {
	if opts.MaxFrame <= 0 {
		opts.MaxFrame = 256 << 20
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	t := &Transport{opts: opts, log: opts.Logger, conns: make(map[*Conn]struct{})}
	t.events = &events{t: t, booted: make(chan gnet.Engine, 1), started: make(chan struct{}, 1)}
	return t, nil
}

// client returns the gnet client that carries the connections of a
// transport without a listener, starting it at the first call.
func (t *Transport) client() (*gnet.Client, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	if t.cli != nil {
		return t.cli, nil
	}
	cli, err := gnet.NewClient(&events{t: t}, t.loopOptions(gnet.WithNumEventLoop(1))...)
	if err != nil {
		return nil, fmt.Errorf("cannot create gnet client: %w", err)
	}
	if err := cli.Start(); err != nil {
		return nil, fmt.Errorf("cannot start gnet client: %w", err)
	}
	t.cli = cli
	t.loops++
	return cli, nil
}

const keepAlive = 30 * time.Second

// loopOptions are the options of every event loop the transport runs,
// then more.
func (t *Transport) loopOptions(more ...gnet.Option) []gnet.Option {
	return append([]gnet.Option{
		gnet.WithLogger(t.log.Named("gnet").Sugar()),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithTCPKeepAlive(keepAlive),
		gnet.WithReadBufferCap(256 << 10),
	}, more...)
}

// EventLoops is the number of gnet event loops the transport runs: a
// listener's loops (see Listen), with the main reactor that accepts when
// there is one, or the client's one. Each waits for events in
// epoll_wait, an ordinary system call that keeps its goroutine's P until
// the runtime's sysmon takes it back.
func (t *Transport) EventLoops() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loops
}

// maxListenLoops bounds a multicore listener's event loops: a few carry
// the control traffic of hundreds of servers, and every idle loop holds a
// P (see EventLoops).
const maxListenLoops = 4

// Listen accepts connections on addr (host:port; port 0 picks a free one)
// and returns once the listener is up; call it before Dial, which then
// uses the listener's event loops too. Its connections are served by one
// event loop, or with multicore one per CPU up to maxListenLoops.
//
// gnet accepts in a main reactor of its own unless the socket has
// SO_REUSEPORT, which would let a second process bind the same port
// unnoticed. A single loop on a free port the kernel picks (a server's
// peer port) takes the option and accepts itself. With the links it dials
// on the same loop, a server runs one event loop instead of three: four
// LeNet servers on two cores spent a fifth less CPU per device-iteration.
func (t *Transport) Listen(addr string, multicore bool) error {
	t.mu.Lock()
	if t.listenOn != "" {
		t.mu.Unlock()
		return errors.New("cannot listen twice")
	}
	if t.cli != nil {
		t.mu.Unlock()
		return errors.New("cannot listen after dialling")
	}
	t.listenOn = addr
	t.runErr = make(chan error, 1)
	t.mu.Unlock()
	loops := 1
	if multicore {
		loops = min(runtime.NumCPU(), maxListenLoops)
	}
	_, port, _ := net.SplitHostPort(addr)
	ownAccept := loops == 1 && port == "0"
	go func() {
		t.runErr <- gnet.Run(t.events, "tcp://"+addr, t.loopOptions(
			gnet.WithNumEventLoop(loops),
			gnet.WithReusePort(ownAccept),
			// Dial registers connections from other goroutines, which
			// the default round robin does not allow.
			gnet.WithLoadBalancing(gnet.LeastConnections),
			gnet.WithReuseAddr(true),
			gnet.WithTicker(true), // for started
		)...)
	}()
	select {
	case eng := <-t.events.booted:
		// gnet calls OnBoot before it registers the event loops that
		// Dial hands connections to; the first OnTick comes after.
		select {
		case <-t.events.started:
		case err := <-t.runErr:
			return fmt.Errorf("cannot listen on %s: %w", addr, err)
		}
		bound, err := boundAddr(eng)
		if err != nil {
			_ = eng.Stop(context.Background())
			return fmt.Errorf("cannot find bound address of %s: %w", addr, err)
		}
		t.mu.Lock()
		t.engine, t.boundTo = eng, bound
		t.loops += loops
		if !ownAccept {
			t.loops++ // the main reactor
		}
		t.mu.Unlock()
		return nil
	case err := <-t.runErr:
		return fmt.Errorf("cannot listen on %s: %w", addr, err)
	}
}

// Addr is the address the listener is bound to.
func (t *Transport) Addr() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.boundTo
}

func boundAddr(eng gnet.Engine) (string, error) {
	fd, err := eng.Dup()
	if err != nil {
		return "", err
	}
	defer syscall.Close(fd)
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return "", err
	}
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	case *syscall.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	}
	return "", fmt.Errorf("unexpected socket address %T", sa)
}

// Dial connects to addr and completes the hello within timeout.
func (t *Transport) Dial(addr string, timeout time.Duration) (*Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: keepAlive} // Go sets TCP_NODELAY
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := t.newConn(false, addr)
	if err := t.enroll(nc, c); err != nil {
		nc.Close()
		c.Close()
		return nil, fmt.Errorf("cannot enroll connection to %s: %w", addr, err)
	}
	select {
	case <-c.ready:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("cannot connect to %s: %w", addr, c.closeErr())
	case <-time.After(timeout):
		c.Close()
		return nil, fmt.Errorf("cannot connect to %s: no hello within %s", addr, timeout)
	}
}

// enroll hands nc to an event loop, with c as its context: the
// listener's when there is one, else the client's. The event loop works
// on a duplicate of nc's descriptor and closes nc.
func (t *Transport) enroll(nc net.Conn, c *Conn) error {
	t.mu.Lock()
	eng, listening := t.engine, t.boundTo != ""
	t.mu.Unlock()
	if !listening {
		cli, err := t.client()
		if err != nil {
			return err
		}
		_, err = cli.EnrollContext(nc, c)
		return err
	}
	ctx := gnet.NewContext(gnet.NewNetConnContext(context.Background(), nc), c)
	res, err := eng.Register(ctx)
	if err != nil {
		return err
	}
	if r, ok := <-res; !ok {
		return ErrClosed
	} else if r.Err != nil {
		return r.Err
	}
	return nil
}

// Close stops the listener, the client and all connections.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	eng, listening, cli := t.engine, t.listenOn != "", t.cli
	conns := make([]*Conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	var errs []error
	if listening && eng.Validate() == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, eng.Stop(ctx))
		cancel()
		<-t.runErr
	}
	if cli != nil {
		errs = append(errs, cli.Stop())
	}
	t.wg.Wait()
	return errors.Join(errs...)
}

func (t *Transport) newConn(inbound bool, remote string) *Conn {
	c := &Conn{
		t:       t,
		inbound: inbound,
		remote:  remote,
		wfd:     -1,
		ready:   make(chan struct{}),
		done:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		pending: make(map[uint64]chan reply),
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.fail(ErrClosed)
		return c
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	go c.run()
	return c
}

func (t *Transport) forget(c *Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

type reply struct {
	body []byte
	err  error
}

// Conn is one cluster link. Send, Call and Reply are safe for concurrent use.
type Conn struct {
	t       *Transport
	inbound bool
	gc      atomic.Pointer[gnet.Conn]
	remote  string

	ready     chan struct{} // closed once the peer's hello arrived
	helloSeen bool          // event-loop only
	answers   [][]byte      // event-loop only: replies not yet written
	done      chan struct{} // closed when the connection is gone
	closeOnce sync.Once
	err       error

	// Frames go into the socket from the goroutine that writes them,
	// through a duplicate of gnet's descriptor: handing them to the event
	// loop (AsyncWrite) costs an eventfd write and a thread wake-up per
	// frame, which on a busy two-core host lengthen every admission and
	// count. A frame the socket cannot take at once goes to AsyncWrite,
	// and so do the frames after it until gnet has written them all, so
	// that frames keep their order.
	wmu      sync.Mutex
	wfd      int  // the duplicate; -1 until the hellos are through and once closed
	queuedGn int  // AsyncWrites not called back yet
	buffered bool // gnet held unwritten bytes at the last callback
	// writing says a goroutine is writing into wfd; the frames others
	// send meanwhile wait in pend for it, in order.
	writing    bool
	pend       [][]byte
	spare      [][]byte // a drained pend, reused
	closeAfter bool     // closeDirect came while writing

	mu      sync.Mutex
	inbox   []frame.Frame
	queued  int // frames in inbox or being served by run
	wake    chan struct{}
	nextID  uint64
	pending map[uint64]chan reply

	// Value is free for the owner of the connection (e.g. the node it
	// belongs to once registered).
	Value atomic.Value
}

// Remote is the peer's address.
func (c *Conn) Remote() string { return c.remote }

// Done is closed when the connection is closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) closeErr() error {
	<-c.done
	return c.err
}

// frames recycles the buffers frames of up to maxPooledFrame bytes are
// built in. An all-reduce sends a model's worth of pieces per iteration;
// allocated afresh they were a LeNet server's largest source of garbage.
// gnet is done with a buffer once the AsyncWrite callback has run: what it
// cannot write at once it copies. A large model's megabyte pieces are left
// to the collector (which such a server runs at 10 % heap growth): pooled,
// they raised a 10M-parameter server's peak resident memory by a quarter.
var frames byteslice.Pool

const maxPooledFrame = 256 << 10

// newFrame returns an empty buffer for a frame of an n-byte body.
func newFrame(n int) []byte {
	size := frame.Size(n)
	if size <= maxPooledFrame {
		return frames.Get(size)[:0]
	}
	return make([]byte, 0, size)
}

// recycle returns a written frame's buffer to frames if it is small.
func recycle(b []byte) {
	if cap(b) <= maxPooledFrame {
		frames.Put(b)
	}
}

// Send writes a frame that expects no reply.
func (c *Conn) Send(kind frame.Kind, body []byte) error {
	return c.write(frame.AppendFrame(newFrame(len(body)), kind, 0, body))
}

// SendBuilt sends a frame whose body build appends to its argument, so a
// large body is written once, in place, instead of built and then copied
// by Send. n is the body size, a capacity hint.
func (c *Conn) SendBuilt(kind frame.Kind, n int, build func(dst []byte) []byte) error {
	b := build(frame.AppendHeader(newFrame(n), kind, 0))
	frame.FinishFrame(b)
	return c.write(b)
}

// Reply answers request id.
func (c *Conn) Reply(id uint64, body []byte, err error) error {
	if err != nil {
		return c.write(frame.AppendFrame(nil, ctl.KindError, id, ctl.Encode(ctl.Error{Message: err.Error()})))
	}
	return c.write(frame.AppendFrame(newFrame(len(body)), ctl.KindReply, id, body))
}

// RemoteError is an error returned by the peer's handler.
type RemoteError struct{ Message string }

func (e *RemoteError) Error() string { return e.Message }

// Call sends a request and waits for its reply until ctx ends.
func (c *Conn) Call(ctx context.Context, kind frame.Kind, body []byte) ([]byte, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	if err := c.write(frame.AppendFrame(newFrame(len(body)), kind, id, body)); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r.body, r.err
	case <-c.done:
		return nil, fmt.Errorf("cannot complete call to %s: %w", c.remote, c.closeErr())
	case <-ctx.Done():
		return nil, fmt.Errorf("cannot complete call to %s: %w", c.remote, ctx.Err())
	}
}

// write sends the frame in b, which it recycles once written. The
// goroutine that finds the socket free writes its frame and then, in one
// writev each time, the frames others queued meanwhile: under many
// concurrent senders a frame costs less than a system call.
func (c *Conn) write(b []byte) error {
	return c.writeAll([][]byte{b})
}

// writeAll sends the frames of bs in order, as write sends one; it keeps
// the frames, not bs.
func (c *Conn) writeAll(bs [][]byte) error {
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	gc := c.gc.Load()
	if gc == nil {
		return ErrClosed
	}
	c.wmu.Lock()
	switch {
	case c.writing:
		c.pend = append(c.pend, bs...) // the writing goroutine takes them along
		c.wmu.Unlock()
		return nil
	case c.wfd < 0 || c.queuedGn > 0 || c.buffered:
		return c.writeLater(*gc, slices.Clone(bs), 0) // unlocks wmu
	}
	c.writing = true
	c.pend = append(c.pend, bs...)
	fd := c.wfd // stays open while writing (closeDirect waits)
	for len(c.pend) > 0 {
		batch := c.pend
		c.pend, c.spare = c.spare, nil
		c.wmu.Unlock()
		done, sent, err := writeFrames(fd, batch)
		for _, f := range batch[:done] {
			recycle(f)
		}
		c.wmu.Lock()
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			// The link is broken: what was queued goes with it, as
			// frames gnet still held went when it closed a link.
			clear(c.pend)
			c.pend = c.pend[:0]
			c.stopWriting()
			c.wmu.Unlock()
			_ = (*gc).Close()
			return fmt.Errorf("cannot write to %s: %w", c.remote, err)
		}
		var rest [][]byte
		if done < len(batch) {
			// The socket is full: gnet writes the rest, and what was
			// queued behind it, once the socket takes them.
			rest = make([][]byte, 0, len(batch)-done+len(c.pend))
			rest = append(append(rest, batch[done:]...), c.pend...)
			clear(c.pend)
			c.pend = c.pend[:0]
		}
		clear(batch)
		c.spare = batch[:0]
		if rest != nil {
			c.stopWriting()
			return c.writeLater(*gc, rest, sent) // unlocks wmu
		}
	}
	c.stopWriting()
	c.wmu.Unlock()
	return nil
}

// maxIovecs bounds the frames of one writev (the kernel's IOV_MAX).
const maxIovecs = 1024

// writeFrames writes the frames of batch in order until the socket takes
// no more or fails. It returns how many went whole, and how many bytes of
// the next one went.
func writeFrames(fd int, batch [][]byte) (done, sent int, err error) {
	for done < len(batch) {
		iov := batch[done:min(len(batch), done+maxIovecs)]
		var n int
		if len(iov) == 1 {
			n, err = unix.Write(fd, iov[0])
		} else {
			n, err = unix.Writev(fd, iov)
		}
		n = max(n, 0)
		for _, f := range iov {
			if n < len(f) {
				return done, n, err
			}
			n -= len(f)
			done++
		}
		if err != nil {
			return done, 0, err
		}
	}
	return done, 0, nil
}

// stopWriting ends a goroutine's turn at writing, closing the descriptor
// if closeDirect asked meanwhile; called with wmu held.
func (c *Conn) stopWriting() {
	c.writing = false
	if c.closeAfter {
		c.closeAfter = false
		_ = unix.Close(c.wfd)
		c.wfd = -1
	}
}

// writeLater hands frames to gnet, which writes them when the socket
// takes them, less the first sent bytes already written; called with wmu
// held, which it releases.
func (c *Conn) writeLater(gc gnet.Conn, frames [][]byte, sent int) error {
	c.queuedGn++
	c.wmu.Unlock()
	// On an error the write may still be queued: the frames are left to
	// the collector rather than recycled.
	done := func(gc gnet.Conn, _ error) error {
		c.wmu.Lock()
		c.queuedGn--
		c.buffered = gc.OutboundBuffered() > 0
		c.wmu.Unlock()
		for _, f := range frames {
			recycle(f)
		}
		return nil
	}
	var err error
	if len(frames) == 1 {
		err = gc.AsyncWrite(frames[0][sent:], done)
	} else {
		bufs := slices.Clone(frames)
		bufs[0] = bufs[0][sent:]
		err = gc.AsyncWritev(bufs, done)
	}
	if err != nil {
		return fmt.Errorf("cannot write to %s: %w", c.remote, err)
	}
	return nil
}

// openDirect lets write use the socket directly; called on the event loop
// once the peer's hello arrived, long after gnet wrote ours.
func (c *Conn) openDirect(gc gnet.Conn) {
	fd, err := gc.Dup()
	if err != nil {
		c.t.log.Warn("cannot duplicate a connection's descriptor; its frames go through the event loop", zap.String("remote", c.remote), zap.Error(err))
		return
	}
	c.wmu.Lock()
	select {
	case <-c.done:
		_ = unix.Close(fd)
	default:
		c.wfd = fd
	}
	c.wmu.Unlock()
}

// closeDirect closes the duplicate descriptor: until then the socket
// stays open whatever gnet does with its own.
func (c *Conn) closeDirect() {
	c.wmu.Lock()
	if c.writing {
		c.closeAfter = true // the writing goroutine closes it when done
	} else if c.wfd >= 0 {
		_ = unix.Close(c.wfd)
		c.wfd = -1
	}
	c.wmu.Unlock()
}

// Close closes the connection.
func (c *Conn) Close() {
	if gc := c.gc.Load(); gc != nil {
		_ = (*gc).Close()
	}
	c.fail(ErrClosed)
}

// fail marks the connection gone; the first error wins.
func (c *Conn) fail(err error) {
	c.closeOnce.Do(func() {
		c.err = err
		close(c.done)
	})
	c.closeDirect()
}

// deliver is called from the event loop with a frame it has copied.
func (c *Conn) deliver(f frame.Frame) {
	if f.Kind == ctl.KindReply || f.Kind == ctl.KindError {
		c.mu.Lock()
		ch := c.pending[f.ID]
		c.mu.Unlock()
		if ch == nil {
			return // the caller gave up
		}
		r := reply{body: f.Body}
		if f.Kind == ctl.KindError {
			var e ctl.Error
			if err := ctl.Decode(f.Body, &e); err != nil {
				e.Message = err.Error()
			}
			r = reply{err: &RemoteError{Message: e.Message}}
		}
		select {
		case ch <- r:
		default: // a duplicate reply: the event loop must not block on it
		}
		return
	}
	c.mu.Lock()
	c.inbox = append(c.inbox, f)
	c.queued++
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// inline says whether f is served on the event loop.
func (c *Conn) inline(f frame.Frame) bool {
	in := c.t.opts.Inline
	return in != nil && f.ID == 0 && f.Kind != ctl.KindReply && f.Kind != ctl.KindError && in(f.Kind)
}

// serveInline serves an inline frame on the event loop.
func (c *Conn) serveInline(f frame.Frame) {
	if _, err := c.serve(c.t.opts.Handler, f); err != nil {
		c.t.log.Warn("cannot serve frame", zap.Uint8("kind", uint8(f.Kind)), zap.String("remote", c.remote), zap.Error(err))
	}
}

// inlineCall says whether request f is served on the event loop: its kind
// is an inline call and no earlier frame waits for the connection's
// goroutine. Only the event loop adds frames, so none can slip in before
// f once this holds.
func (c *Conn) inlineCall(f frame.Frame) bool {
	in := c.t.opts.InlineCalls
	if in == nil || f.ID == 0 || f.Kind == ctl.KindReply || f.Kind == ctl.KindError || !in(f.Kind) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued == 0
}

// serveCallInline serves request f on the event loop and queues its
// reply in c.answers, which OnTraffic writes once it has served what it
// read: requests that arrived together are answered in one system call.
func (c *Conn) serveCallInline(f frame.Frame) {
	out, err := c.serve(c.t.opts.Handler, f)
	if errors.Is(err, ErrNoReply) {
		return
	}
	var b []byte
	if err != nil {
		b = frame.AppendFrame(nil, ctl.KindError, f.ID, ctl.Encode(ctl.Error{Message: err.Error()}))
	} else {
		b = frame.AppendFrame(newFrame(len(out)), ctl.KindReply, f.ID, out)
	}
	c.answers = append(c.answers, b)
}

// writeAnswers writes the replies serveCallInline queued (what the socket
// does not take goes through gnet); a failed write closes the connection.
func (c *Conn) writeAnswers(act gnet.Action) gnet.Action {
	if len(c.answers) == 0 {
		return act
	}
	err := c.writeAll(c.answers)
	clear(c.answers)
	c.answers = c.answers[:0]
	if err != nil {
		return gnet.Close // the replies could not be written: the link is gone
	}
	return act
}

// run serves the inbox in order until the connection closes.
func (c *Conn) run() {
	defer c.t.wg.Done()
	defer c.t.forget(c)
	h := c.t.opts.Handler
	for {
		c.mu.Lock()
		batch := c.inbox
		c.inbox = nil
		c.mu.Unlock()
		for _, f := range batch {
			out, err := c.serve(h, f)
			if f.ID != 0 && !errors.Is(err, ErrNoReply) {
				_ = c.Reply(f.ID, out, err)
			}
			c.mu.Lock()
			c.queued--
			c.mu.Unlock()
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-c.wake:
		case <-c.done:
			if h != nil {
				h.Closed(c, c.err)
			}
			return
		}
	}
}

func (c *Conn) serve(h Handler, f frame.Frame) (out []byte, err error) {
	if h == nil {
		return nil, fmt.Errorf("no handler for frame kind %d", f.Kind)
	}
	defer func() {
		if r := recover(); r != nil {
			c.t.log.Error("handler panicked", zap.Any("panic", r), zap.Uint8("kind", uint8(f.Kind)), zap.String("remote", c.remote))
			err = fmt.Errorf("internal error serving frame kind %d", f.Kind)
		}
	}()
	return h.Serve(c, f)
}

// events adapts gnet's callbacks; it runs on the event loops.
type events struct {
	gnet.BuiltinEventEngine
	t      *Transport
	booted chan gnet.Engine // nil for the client
	// started receives once the listener's event loops are registered.
	started chan struct{}
}

// OnTick runs once, on the ticker gnet starts after the listener's event
// loops, and never again.
func (e *events) OnTick() (time.Duration, gnet.Action) {
	select {
	case e.started <- struct{}{}:
	default:
	}
	return math.MaxInt64, gnet.None
}

func (e *events) OnBoot(eng gnet.Engine) gnet.Action {
	if e.booted != nil { // the listener's engine, not the client's
		e.booted <- eng
	}
	return gnet.None
}

func (e *events) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	c, _ := gc.Context().(*Conn)
	if c == nil { // accepted by the listener
		remote := ""
		if addr := gc.RemoteAddr(); addr != nil {
			remote = addr.String()
		}
		c = e.t.newConn(true, remote)
		gc.SetContext(c)
	}
	c.gc.Store(&gc)
	return frame.AppendHello(nil), gnet.None
}

func (e *events) OnClose(gc gnet.Conn, err error) gnet.Action {
	if c, _ := gc.Context().(*Conn); c != nil {
		if err == nil {
			err = ErrClosed
		}
		c.fail(err)
	}
	return gnet.None
}

func (e *events) OnTraffic(gc gnet.Conn) gnet.Action {
	c, _ := gc.Context().(*Conn)
	if c == nil {
		return gnet.Close
	}
	return c.writeAnswers(e.traffic(gc, c))
}

// traffic serves the frames read on c's connection.
func (e *events) traffic(gc gnet.Conn, c *Conn) gnet.Action {
	if !c.helloSeen {
		b, err := gc.Peek(frame.HelloSize)
		if err != nil {
			return gnet.None // wait for the whole hello
		}
		if err := frame.CheckHello(b); err != nil {
			e.t.log.Warn("refusing connection", zap.String("remote", c.remote), zap.Error(err))
			c.fail(err)
			return gnet.Close
		}
		_, _ = gc.Discard(frame.HelloSize)
		c.helloSeen = true
		c.openDirect(gc)
		close(c.ready)
	}
	for {
		n := gc.InboundBuffered()
		if n < frame.HeaderSize {
			return gnet.None
		}
		hdr, _ := gc.Peek(4)
		size, err := frame.Peek(hdr, e.t.opts.MaxFrame)
		if err != nil {
			e.t.log.Warn("closing connection", zap.String("remote", c.remote), zap.Error(err))
			c.fail(err)
			return gnet.Close
		}
		if n < size {
			return gnet.None
		}
		buf, err := gc.Peek(size)
		if err != nil {
			return gnet.None
		}
		f, _, err := frame.Parse(buf, e.t.opts.MaxFrame)
		if err != nil {
			c.fail(err)
			return gnet.Close
		}
		if c.inline(f) {
			c.serveInline(f) // borrows the read buffer, before Discard
			_, _ = gc.Discard(size)
			continue
		}
		if c.inlineCall(f) {
			c.serveCallInline(f)    // borrows the read buffer too
			_, _ = gc.Discard(size) // served, answered or not: never twice
			continue
		}
		f.Body = append([]byte(nil), f.Body...) // the read buffer is reused after Discard
		_, _ = gc.Discard(size)
		c.deliver(f)
	}
}
