package server

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	flatbuffers "github.com/google/flatbuffers/go"
	"github.com/valyala/fasthttp"

	"github.com/fedcluster/fedcluster/node/agg"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/flmsg"
	"github.com/fedcluster/fedcluster/wire/frame"
)

func TestCheckTimestamp(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	f := func(ts string, legacy bool, want string) {
		t.Helper()
		got := checkTimestamp([]byte(ts), now, time.Minute, legacy)
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Fatalf("checkTimestamp(%q, %v) = %q, want %q", ts, legacy, got, want)
		}
	}
	f(strconv.FormatInt(now.UnixMilli(), 10), false, "")
	f(strconv.FormatInt(now.Add(-59*time.Second).UnixMilli(), 10), false, "")
	f(strconv.FormatInt(now.Add(61*time.Second).UnixMilli(), 10), false, "replay_attack_time_diff")
	f(strconv.FormatInt(now.Add(-61*time.Second).UnixMilli(), 10), false, "differs from the server's clock by 61000 ms")
	f("2020/11/16/19/18", false, "not epoch milliseconds")
	f("2020/11/16/19/18", true, "")
	f("", false, "no timestamp")
	f("99999999999999999999999", false, "not epoch milliseconds")
	f("99999999999999", false, "replay_attack_time_diff")       // year 5138: a Duration would overflow
	f("-9223372036854775808", false, "replay_attack_time_diff") // the most negative stamp
}

// TestPartialConcurrentFolds: many goroutines fold into one partial sum at
// once; the result is exact and waitIdle waits for all of them.
func TestPartialConcurrentFolds(t *testing.T) {
	e, err := agg.New("purego")
	if err != nil {
		t.Fatal(err)
	}
	const n = 3*stripe + 17
	acc, err := e.NewAccumulator(n)
	if err != nil {
		t.Fatal(err)
	}
	p := newPartial(1, acc)
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%7) + 0.5
	}
	const devices = 16
	var wg sync.WaitGroup
	for d := 0; d < devices; d++ {
		p.begin()
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.fold(0, x, 1)
			p.end(true, foldedUpdate{flID: "d", dataSize: 2, bytes: int64(4 * n), took: time.Millisecond, loss: 0.5})
		}()
	}
	total, folded := p.waitIdle()
	if total != 2*devices || folded != devices {
		t.Fatalf("waitIdle = %v, %d", total, folded)
	}
	wg.Wait()
	got := make([]float32, n)
	acc.Result(got, 0, 1.0/devices)
	for i := range got {
		if got[i] != x[i] {
			t.Fatalf("element %d = %v, want %v", i, got[i], x[i])
		}
	}
}

func TestRespCacheBuildsOncePerKey(t *testing.T) {
	var c respCache
	builds := 0
	build := func(b *flatbuffers.Builder) []byte { builds++; return []byte{byte(builds)} }
	block := new(flmsg.ModelBlock)
	a := c.get(respKey{kind: 1, iteration: 1}, block, build)
	b := c.get(respKey{kind: 1, iteration: 1}, block, build)
	if builds != 1 || &a[0] != &b[0] {
		t.Fatalf("same key built %d times", builds)
	}
	c.get(respKey{kind: 1, iteration: 1, nextReqTime: 5}, block, build)
	if builds != 2 {
		t.Fatalf("a changed key was not rebuilt")
	}
	c.get(respKey{kind: 1, iteration: 1, nextReqTime: 5}, new(flmsg.ModelBlock), build)
	if builds != 3 {
		t.Fatalf("a head was reused for another block")
	}
}

// A model is serialized once for every answer carrying it, and a new
// model gets a new block: answers still being sent keep theirs intact.
// With a frame (large models) the block is the model's own data.
func TestBlockCache(t *testing.T) {
	m1, m2 := model.InitLeNet5(1), model.InitLeNet5(2)
	for _, frame := range []*flmsg.BlockFrame{nil, flmsg.NewBlockFrame(m1.Layout)} {
		c := blockCache{frame: frame}
		b1 := c.get(m1)
		if c.get(m1) != b1 {
			t.Fatal("the same model was serialized twice")
		}
		tail := bytes.Join(b1.Pieces(), nil)
		b2 := c.get(m2)
		if b2 == b1 || !bytes.Equal(bytes.Join(b1.Pieces(), nil), tail) || bytes.Equal(bytes.Join(b2.Pieces(), nil), tail) {
			t.Fatal("a new model overwrote the block of the old one")
		}
		var set flmsg.ModelBlock
		set.Set(m2)
		if !bytes.Equal(bytes.Join(b2.Pieces(), nil), set.Tail()) {
			t.Fatal("the cached block is not the model's")
		}
		if framed := len(b2.Pieces()) > 1; framed != (frame != nil) {
			t.Fatalf("block in %d pieces with frame %v", len(b2.Pieces()), frame != nil)
		}
	}
}

// TestUploadSlots: small bodies get 8 MiB of upload buffers, others one
// per core and one more (not a large model), fewer when they would not fit
// upload_memory, never none.
func TestUploadSlots(t *testing.T) {
	cores := runtime.GOMAXPROCS(0)
	f := func(size, memory, want int) {
		t.Helper()
		if got := uploadSlots(size, memory); got != want {
			t.Fatalf("uploadSlots(%d, %d) = %d, want %d", size, memory, got, want)
		}
	}
	f(246_736, 256<<20, max(cores+1, 33))       // LeNet
	f(246_736, 2<<20, 8)                        // LeNet within a small upload_memory
	f(4<<20, 256<<20, cores+1)                  // a 1M-parameter model
	f(40<<20, 256<<20, max(1, min(cores-1, 6))) // 10M: cores + 3 models hold the accumulator (2) and largeReserve
	f(400<<20, 4<<30, min(cores, 10))           // 100M: one per core, within upload_memory
	f(400<<20, 256<<20, 1)                      // larger than the budget: one at a time
	f(0, 1<<20, 256)                            // tiny: bounded
}

// Shedding drops the buffers of idle slots only and keeps every slot: an
// upload in progress keeps its buffer, and the shed slots serve uploads
// again.
func TestUploadsShedIdleBuffers(t *testing.T) {
	u := newUploads(2)
	req := func(body string) *fasthttp.RequestCtx {
		var ctx fasthttp.RequestCtx
		ctx.Request.SetBodyString(body)
		return &ctx
	}
	one, releaseOne, err := u.read(req("one"), 100)
	if err != nil {
		t.Fatal(err)
	}
	two, releaseTwo, err := u.read(req("two"), 100)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.shed(); got != 0 || len(u.slots) != 0 {
		t.Fatalf("shed %d buffers while both uploads are read (%d slots free)", got, len(u.slots))
	}
	releaseOne()
	if got := u.shed(); got != 1 || len(u.slots) != 1 {
		t.Fatalf("shed %d buffers with one idle (%d slots free)", got, len(u.slots))
	}
	if string(two) != "two" || string(one) != "one" {
		t.Fatalf("shedding touched the buffers: %q, %q", one, two)
	}
	releaseTwo()
	if got := u.shed(); got != 1 || len(u.slots) != 2 {
		t.Fatalf("shed %d buffers after the second went back (%d slots free)", got, len(u.slots))
	}
	if got := u.shed(); got != 0 || len(u.slots) != 2 {
		t.Fatalf("shed %d buffers twice (%d slots free)", got, len(u.slots))
	}
	for _, body := range []string{"a", "b"} {
		if b, _, err := u.read(req(body), 100); err != nil || string(b) != body {
			t.Fatalf("upload into a shed slot: %q, %v", b, err)
		}
	}
}

// An upload waits for a free buffer, and past the wait is turned away
// (errBusy, HTTP 503) without its body being read; a buffer given back
// serves the next one.
func TestUploadsWaitForABuffer(t *testing.T) {
	u := newUploads(1)
	u.wait = 20 * time.Millisecond
	req := func(body string) *fasthttp.RequestCtx {
		var ctx fasthttp.RequestCtx
		ctx.Request.SetBodyString(body)
		return &ctx
	}
	first, release, err := u.read(req("first"), 100)
	if err != nil || string(first) != "first" {
		t.Fatalf("first upload: %q, %v", first, err)
	}
	if _, _, err := u.read(req("second"), 100); !errors.Is(err, errBusy) {
		t.Fatalf("second upload while the buffer is taken: %v, want errBusy", err)
	}
	done := make(chan error, 1)
	go func() {
		b, rel, err := u.read(req("third"), 100)
		if err == nil {
			if string(b) != "third" {
				err = fmt.Errorf("read %q", b)
			}
			rel()
		}
		done <- err
	}()
	release()
	if err := <-done; err != nil {
		t.Fatalf("an upload waiting for the buffer: %v", err)
	}
	if _, _, err := u.read(req("too long"), 3); !errors.Is(err, errBodyTooLarge) {
		t.Fatalf("a body over the limit: %v", err)
	}
	if _, rel, err := u.read(req("after"), 100); err != nil {
		t.Fatalf("the buffer was not given back after a refused body: %v", err)
	} else {
		rel()
	}
}

// Device connections get bounded kernel buffers (the send buffer for
// large models only), whatever the system's autotuning would give them.
func TestDeviceListenerBoundsTheBuffers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dl := deviceListener{Listener: ln, sendBuffer: largeModelSendBuffer}
	defer dl.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := dl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct {
		opt  int
		want int
	}{{syscall.SO_RCVBUF, deviceRecvBuffer}, {syscall.SO_SNDBUF, largeModelSendBuffer}} {
		var size int
		var serr error
		if err := raw.Control(func(fd uintptr) { size, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, b.opt) }); err != nil || serr != nil {
			t.Fatal(err, serr)
		}
		// Linux reports twice the size asked for (its bookkeeping overhead).
		if size < b.want || size > 2*b.want {
			t.Fatalf("socket option %d: %d bytes, want %d (or twice that)", b.opt, size, b.want)
		}
	}
}

// slowScheduler answers heartbeats after delay.
type slowScheduler struct{ delay time.Duration }

func (s slowScheduler) Serve(c *transport.Conn, f frame.Frame) ([]byte, error) {
	time.Sleep(s.delay)
	return ctl.Encode(ctl.HeartbeatReply{}), nil
}
func (slowScheduler) Closed(*transport.Conn, error) {}

// A heartbeat answered late, but within heartbeat_timeout, keeps the link:
// dropping it would lose every admission and count in flight on it.
func TestHeartbeatToleratesASlowScheduler(t *testing.T) {
	sched, err := transport.New(transport.Options{Handler: slowScheduler{delay: 60 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer sched.Close()
	if err := sched.Listen("127.0.0.1:0", false); err != nil {
		t.Fatal(err)
	}
	cli, err := transport.New(transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	c, err := cli.Dial(sched.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{stop: make(chan struct{}), nodeID: "0"}
	done := make(chan error, 1)
	go func() { done <- s.heartbeat(c, 10*time.Millisecond, time.Second) }()
	select {
	case err := <-done:
		t.Fatalf("heartbeats 6 intervals late ended the link: %v", err)
	case <-time.After(300 * time.Millisecond): // several late heartbeats
	}
	close(s.stop)
	if err := <-done; err != nil {
		t.Fatalf("heartbeat after stop: %v", err)
	}

	// Later than heartbeat_timeout: the link is given up.
	s2 := &Server{stop: make(chan struct{}), nodeID: "0"}
	defer close(s2.stop)
	go func() { done <- s2.heartbeat(c, 10*time.Millisecond, 20*time.Millisecond) }()
	if err := <-done; err == nil {
		t.Fatal("a heartbeat later than the timeout kept the link")
	}
}
