package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

const kindEcho frame.Kind = 100
const kindFail frame.Kind = 101
const kindPush frame.Kind = 102

type echo struct{ pushes chan []byte }

func (e *echo) Serve(c *Conn, f frame.Frame) ([]byte, error) {
	switch f.Kind {
	case kindEcho:
		return f.Body, nil
	case kindPush:
		e.pushes <- f.Body
		return nil, nil
	}
	return nil, errors.New("no such thing")
}

func (e *echo) Closed(*Conn, error) {}

func pair(t *testing.T, max int) (*Transport, *Transport, *echo) {
	t.Helper()
	h := &echo{pushes: make(chan []byte, 10)}
	srv, err := New(Options{MaxFrame: max, Logger: zaptest.NewLogger(t), Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if err := srv.Listen("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	}
	cli, err := New(Options{MaxFrame: max, Logger: zaptest.NewLogger(t), Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return srv, cli, h
}

// dialListener starts a listener with opts and returns a connection to it
// from a client whose handler echoes; both stop when the test ends.
func dialListener(t *testing.T, opts Options) *Conn {
	t.Helper()
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if err := srv.Listen("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	}
	cli, err := New(Options{MaxFrame: opts.MaxFrame, Handler: &echo{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	c, err := cli.Dial(srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCallAndPush(t *testing.T) {
	srv, cli, h := pair(t, 64<<20)
	c, err := cli.Dial(srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range []int{0, 1, 1000, 300 << 10, 9 << 20} {
		body := bytes.Repeat([]byte{byte(n)}, n)
		got, err := c.Call(ctx, kindEcho, body)
		if err != nil {
			t.Fatalf("Call(%d bytes): %v", n, err)
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("echo of %d bytes came back as %d bytes", n, len(got))
		}
	}
	_, err = c.Call(ctx, kindFail, nil)
	var re *RemoteError
	if !errors.As(err, &re) || re.Message != "no such thing" {
		t.Fatalf("want the remote error, got %v", err)
	}
	if err := c.Send(kindPush, []byte("p")); err != nil {
		t.Fatal(err)
	}
	if got := <-h.pushes; string(got) != "p" {
		t.Fatalf("push body %q", got)
	}
}

func TestRefusesBadPeers(t *testing.T) {
	srv, _, _ := pair(t, 1024)
	f := func(name string, send []byte) {
		t.Helper()
		nc, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.Write(send)
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		// The server sends its hello, then must close the connection.
		buf := make([]byte, 64)
		total := 0
		for {
			n, err := nc.Read(buf)
			total += n
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("%s: connection still open after bad input", name)
				}
				break
			}
		}
		if total != frame.HelloSize {
			t.Fatalf("%s: read %d bytes before close, want only the hello", name, total)
		}
	}
	f("garbage hello", []byte("GET / HTTP/1.1\r\n\r\n"))
	f("frame over limit", append(frame.AppendHello(nil), frame.AppendFrame(nil, kindEcho, 1, make([]byte, 2048))...))
	f("length under header", append(frame.AppendHello(nil), 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9))
	// The listener still serves well-behaved peers afterwards.
	cli, err := New(Options{MaxFrame: 1024, Handler: &echo{}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c, err := cli.Dial(srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Call(ctx, kindEcho, []byte("ok")); err != nil {
		t.Fatal(err)
	}
}

func TestCallFailsWhenPeerCloses(t *testing.T) {
	srv, cli, _ := pair(t, 1024)
	c, err := cli.Dial(srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed after the listener stopped")
	}
	if _, err := c.Call(context.Background(), kindEcho, nil); err == nil {
		t.Fatal("call on a closed connection succeeded")
	}
}

const kindSlow frame.Kind = 103
const kindFast frame.Kind = 104

type blocking struct {
	release chan struct{}
	fast    chan struct{}
}

func (b *blocking) Serve(c *Conn, f frame.Frame) ([]byte, error) {
	switch f.Kind {
	case kindSlow:
		<-b.release
	case kindFast:
		close(b.fast)
	}
	return nil, nil
}

func (b *blocking) Closed(*Conn, error) {}

// TestInlineKindsSkipTheQueue: a push of an inline kind is served while the
// connection's goroutine is still busy with an earlier frame.
func TestInlineKindsSkipTheQueue(t *testing.T) {
	h := &blocking{release: make(chan struct{}), fast: make(chan struct{})}
	c := dialListener(t, Options{Handler: h, Inline: func(k frame.Kind) bool { return k == kindFast }})
	t.Cleanup(func() { close(h.release) }) // before Close, which waits for the blocked handler
	c.Send(kindSlow, nil)
	c.Send(kindFast, nil)
	select {
	case <-h.fast:
	case <-time.After(10 * time.Second):
		t.Fatal("the inline push waited behind the blocked handler")
	}
}

// TestRecycledFramesKeepTheirBytes: frame buffers go back to a pool once
// gnet has written them. Many goroutines sending bodies of their own bytes
// and sizes at once, some larger than a socket write takes in one go, must
// each get their own bytes back: a buffer reused while gnet still held it
// would mix them (and -race would see it).
func TestRecycledFramesKeepTheirBytes(t *testing.T) {
	srv, cli, _ := pair(t, 64<<20)
	c, err := cli.Dial(srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				n := []int{1, 700, 5000, 70 << 10, 1 << 20}[(g+i)%5] + g
				body := bytes.Repeat([]byte{byte(g*31 + i)}, n)
				got, err := c.Call(ctx, kindEcho, body)
				if err == nil && !bytes.Equal(got, body) {
					err = fmt.Errorf("goroutine %d, call %d: %d bytes sent, %d came back, or other bytes", g, i, n, len(got))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestEventLoops counts the loops a transport runs: none until a
// transport without a listener dials (the client's), a listener's loop on
// a free port, which also carries what it dials, and a main reactor for a
// multicore listener or a fixed port.
func TestEventLoops(t *testing.T) {
	loops := func(tr *Transport, want int, what string) {
		t.Helper()
		if n := tr.EventLoops(); n != want {
			t.Fatalf("%s: %d event loops, want %d", what, n, want)
		}
	}
	echoCall := func(c *Conn) {
		t.Helper()
		got, err := c.Call(context.Background(), kindEcho, []byte("ping"))
		if err != nil || string(got) != "ping" {
			t.Fatalf("echo call: %q, %v", got, err)
		}
	}
	srv, cli, _ := pair(t, 0)
	loops(cli, 0, "new")
	loops(srv, 1, "listening on a free port")
	c, err := cli.Dial(srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	echoCall(c)
	loops(cli, 1, "dialling without a listener")
	if err := cli.Listen("127.0.0.1:0", false); err == nil {
		t.Fatal("Listen after Dial succeeded")
	}

	// A listener dials through its own loop: a server reaches the
	// scheduler and its peers without a client.
	back, err := srv.Dial(srv.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	echoCall(back)
	loops(srv, 1, "listening and dialling")

	multi, err := New(Options{Logger: zaptest.NewLogger(t), Handler: &echo{}})
	if err != nil {
		t.Fatal(err)
	}
	defer multi.Close()
	if err := multi.Listen("127.0.0.1:0", true); err != nil {
		t.Fatal(err)
	}
	if n := min(runtime.NumCPU(), maxListenLoops); n > 1 {
		loops(multi, n+1, "multicore")
	} else {
		loops(multi, 1, "multicore on one CPU")
	}

	// A fixed port keeps gnet's main reactor: without SO_REUSEPORT a
	// second process on the port fails instead of sharing it.
	_, port, _ := net.SplitHostPort(srv.Addr())
	srv.Close()
	fixed, err := New(Options{Logger: zaptest.NewLogger(t), Handler: &echo{}})
	if err != nil {
		t.Fatal(err)
	}
	defer fixed.Close()
	if err := fixed.Listen("127.0.0.1:"+port, false); err != nil {
		t.Fatal(err)
	}
	loops(fixed, 2, "fixed port")
	second, err := New(Options{Logger: zaptest.NewLogger(t), Handler: &echo{}})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := second.Listen("127.0.0.1:"+port, false); err == nil {
		t.Fatalf("a second listener on port %s succeeded", port)
	}
	c, err = fixed.Dial(fixed.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	echoCall(c)
}

const kindMark frame.Kind = 105

// loopProbe records the order its frames are served in, and whether each
// request ran on the event loop.
type loopProbe struct {
	mu      sync.Mutex
	order   []frame.Kind
	onLoop  []bool
	started chan struct{}
	release chan struct{}
	marked  chan struct{}
}

func (p *loopProbe) Serve(c *Conn, f frame.Frame) ([]byte, error) {
	switch f.Kind {
	case kindSlow:
		close(p.started)
		<-p.release
	case kindMark:
		close(p.marked)
		return nil, nil
	}
	buf := make([]byte, 64<<10)
	stack := string(buf[:runtime.Stack(buf, false)])
	p.mu.Lock()
	defer p.mu.Unlock()
	p.order = append(p.order, f.Kind)
	if f.Kind == kindEcho {
		p.onLoop = append(p.onLoop, bytes.Contains([]byte(stack), []byte("(*events).OnTraffic")))
		return append([]byte(nil), f.Body...), nil
	}
	return nil, nil
}

func (p *loopProbe) Closed(*Conn, error) {}

// TestInlineCallsKeepArrivalOrder: a request of an inline-call kind is
// served on the event loop when its connection is idle, and waits its turn
// behind a frame the connection's goroutine still holds.
func TestInlineCallsKeepArrivalOrder(t *testing.T) {
	p := &loopProbe{started: make(chan struct{}), release: make(chan struct{}), marked: make(chan struct{})}
	c := dialListener(t, Options{Handler: p, Logger: zaptest.NewLogger(t),
		Inline:      func(k frame.Kind) bool { return k == kindMark },
		InlineCalls: func(k frame.Kind) bool { return k == kindEcho }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := c.Call(ctx, kindEcho, []byte("idle")); err != nil || string(got) != "idle" {
		t.Fatalf("call on an idle connection: %q, %v", got, err)
	}

	// A slow push holds the connection's goroutine; a call, then an inline
	// push, follow it on the wire. Once the push is served the loop has
	// read the call: it must wait for the slow push.
	if err := c.Send(kindSlow, nil); err != nil {
		t.Fatal(err)
	}
	<-p.started
	ch := make(chan reply, 1)
	c.mu.Lock()
	c.pending[77] = ch
	c.mu.Unlock()
	if err := c.write(frame.AppendFrame(nil, kindEcho, 77, []byte("queued"))); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(kindMark, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.marked:
	case <-ctx.Done():
		t.Fatal("the inline push was not served")
	}
	close(p.release)
	select {
	case r := <-ch:
		if r.err != nil || string(r.body) != "queued" {
			t.Fatalf("queued call: %q, %v", r.body, r.err)
		}
	case <-ctx.Done():
		t.Fatal("the queued call was not answered")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	want := []frame.Kind{kindEcho, kindSlow, kindEcho}
	if fmt.Sprint(p.order) != fmt.Sprint(want) {
		t.Fatalf("served in order %v, want %v", p.order, want)
	}
	if !p.onLoop[0] || p.onLoop[1] {
		t.Fatalf("on the event loop: idle call %v, queued call %v; want true, false", p.onLoop[0], p.onLoop[1])
	}
}

// TestInlineCallsReadTogetherAreAnsweredTogether: requests of inline-call
// kinds that the event loop reads at once are all served, each answered
// under its own id (an error as an error), and the answers leave in one
// write: a peer that sent them in one segment reads them in one.
func TestInlineCallsReadTogetherAreAnsweredTogether(t *testing.T) {
	h := &echo{pushes: make(chan []byte, 1)}
	srv, err := New(Options{Handler: h, Logger: zaptest.NewLogger(t),
		InlineCalls: func(k frame.Kind) bool { return k == kindEcho || k == kindFail }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if err := srv.Listen("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const calls = 6
	out := frame.AppendHello(nil)
	for id := uint64(1); id <= calls; id++ {
		kind := kindEcho
		if id == 4 {
			kind = kindFail
		}
		out = frame.AppendFrame(out, kind, id, fmt.Appendf(nil, "call %d", id))
	}
	if _, err := nc.Write(out); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	hello := make([]byte, frame.HelloSize)
	if _, err := io.ReadFull(nc, hello); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	n, err := nc.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := buf[:n]
	for id := uint64(1); id <= calls; id++ {
		f, size, err := frame.Parse(got, 1<<20)
		if err != nil {
			t.Fatalf("answer %d of %d not in the first read (%d bytes): %v", id, calls, n, err)
		}
		got = got[size:]
		switch {
		case f.ID != id:
			t.Fatalf("answer %d has id %d", id, f.ID)
		case id == 4 && f.Kind != ctl.KindError:
			t.Fatalf("the failing call got a frame of kind %d, want an error", f.Kind)
		case id != 4 && (f.Kind != ctl.KindReply || string(f.Body) != fmt.Sprintf("call %d", id)):
			t.Fatalf("answer %d: kind %d, body %q", id, f.Kind, f.Body)
		}
	}
	if len(got) != 0 {
		t.Fatalf("%d bytes after the answers", len(got))
	}
}

// TestFramesKeepTheirOrderPastAFullSocket: frames are written straight
// into the socket until one does not fit; that one and the frames after
// it go through the event loop until it has written them all. Several
// goroutines sending frames some of which no socket takes at once must
// each see their frames arrive whole and in the order they sent them.
func TestFramesKeepTheirOrderPastAFullSocket(t *testing.T) {
	const senders, each = 4, 24
	h := &echo{pushes: make(chan []byte, senders*each)}
	c := dialListener(t, Options{MaxFrame: 8 << 20, Handler: h, Logger: zaptest.NewLogger(t)})
	body := func(g, i int) []byte {
		n := []int{9, 3 << 20, 100, 200 << 10, 1}[(g+i)%5]
		b := bytes.Repeat([]byte{byte(g*59 + i)}, n+2)
		b[0], b[1] = byte(g), byte(i)
		return b
	}
	var wg sync.WaitGroup
	for g := range senders {
		wg.Go(func() {
			for i := range each {
				if err := c.Send(kindPush, body(g, i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	next := make([]int, senders)
	for k := range senders * each {
		var b []byte
		select {
		case b = <-h.pushes:
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d frames arrived", k, senders*each)
		}
		g, i := int(b[0]), int(b[1])
		if g >= senders || i != next[g] {
			t.Fatalf("frame %d of sender %d arrived when %d was next", i, g, next[g])
		}
		if !bytes.Equal(b, body(g, i)) {
			t.Fatalf("frame %d of sender %d arrived with other bytes", i, g)
		}
		next[g]++
	}
	c.wmu.Lock()
	direct := c.wfd >= 0
	c.wmu.Unlock()
	if !direct {
		t.Fatal("the connection has no descriptor for direct writes")
	}
}
