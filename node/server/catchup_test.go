package server

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"go.uber.org/zap"

	"github.com/fedcluster/fedcluster/node/config"
	"github.com/fedcluster/fedcluster/node/model"
	"github.com/fedcluster/fedcluster/node/modelstore"
	"github.com/fedcluster/fedcluster/node/transport"
	"github.com/fedcluster/fedcluster/wire/ctl"
	"github.com/fedcluster/fedcluster/wire/frame"
)

// lateStoringPeer answers model fetches as a peer that stores iteration
// 2's model only after refusals fetches: the NextIteration that stores it
// there crossed the asking server's registration.
type lateStoringPeer struct {
	refusals int
	body     []byte // iteration 2's encoded checkpoint

	mu    sync.Mutex
	calls int
}

func (p *lateStoringPeer) Serve(c *transport.Conn, f frame.Frame) ([]byte, error) {
	if f.Kind != ctl.KindFetchModel {
		return nil, errors.New("unexpected frame")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.calls <= p.refusals {
		return nil, errors.New("iteration 2 is not stored here")
	}
	return p.body, nil
}

func (*lateStoringPeer) Closed(*transport.Conn, error) {}

func (p *lateStoringPeer) fetches() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// A server that registers at iteration 3 holding only iteration 0 fetches
// iteration 2's model from a peer, and tries again while the peer has not
// stored it yet: a bounded number of times, then it gives up and serves
// nothing newer than it has.
func TestCatchUpRetriesAPeerStoringLate(t *testing.T) {
	layout := model.LeNet5Layout()
	enc, err := modelstore.Open(modelstore.Options{Dir: "/d", FLName: "lenet", FS: modelstore.NewMemFS(), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := model.New(layout)
	for i := range want.Data {
		want.Data[i] = float32(i%97) / 97
	}
	body, err := enc.EncodeModel(want, 2, want.SHA256())
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name      string
		refusals  int
		wantCalls int
		stored    bool
	}{
		{"stored at once", 0, 1, true},
		{"stored after two refusals", 2, 3, true},
		{"never stored", 1 << 30, catchUpTries, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer := &lateStoringPeer{refusals: tc.refusals, body: body}
			ptr, err := transport.New(transport.Options{Handler: peer})
			if err != nil {
				t.Fatal(err)
			}
			defer ptr.Close()
			if err := ptr.Listen("127.0.0.1:0", false); err != nil {
				t.Fatal(err)
			}

			s := newTestServer(t, true)

			members := []ctl.Member{
				{NodeID: "1", PeerAddr: "127.0.0.1:1", Alive: true}, // itself: never asked
				{NodeID: "0", PeerAddr: ptr.Addr(), Alive: true},
			}
			s.plane.catchUp(3, members)

			if got := peer.fetches(); got != tc.wantCalls {
				t.Errorf("%d fetches from the peer, want %d", got, tc.wantCalls)
			}
			latest, m := s.plane.store.Latest()
			switch {
			case tc.stored && latest != 2:
				t.Fatalf("latest stored iteration %d, want 2", latest)
			case tc.stored && m.SHA256() != want.SHA256():
				t.Fatal("the stored model is not the peer's")
			case !tc.stored && latest != 0:
				t.Fatalf("latest stored iteration %d after the peer never had it, want 0", latest)
			}
		})
	}

	// No live peer: nothing to wait for.
	s := newTestServer(t, false)
	s.plane.catchUp(3, []ctl.Member{{NodeID: "0", PeerAddr: "127.0.0.1:1", Alive: false}})
	if latest, _ := s.plane.store.Latest(); latest != 0 {
		t.Fatalf("latest stored iteration %d with no live peer, want 0", latest)
	}
}

// A NextIteration a server missed is applied on registration only when the
// server can do it alone; a server that cannot (a new one, one that took
// no part) must fetch the model, not store its own under that number.
func TestMissedNextIteration(t *testing.T) {
	newTestPlane := func(t *testing.T, stored uint64) *plane {
		t.Helper()
		s := newTestServer(t, false)
		_, m := s.plane.store.Latest()
		for it := uint64(1); it <= stored; it++ {
			if err := s.plane.store.Put(it, m); err != nil {
				t.Fatal(err)
			}
		}
		return s.plane
	}
	for _, tc := range []struct {
		name   string
		stored uint64
		ni     ctl.NextIteration
		want   uint64
	}{
		{"failed, the model before it held", 4, ctl.NextIteration{Iteration: 6, Completed: 5}, 5},
		{"failed, a new server", 0, ctl.NextIteration{Iteration: 6, Completed: 5}, 0},
		{"valid, no aggregate held", 4, ctl.NextIteration{Iteration: 6, Completed: 5, Valid: true, SHA256: "ab"}, 4},
		{"already stored", 5, ctl.NextIteration{Iteration: 6, Completed: 5}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPlane(t, tc.stored)
			p.missedNextIteration(tc.ni)
			if latest, _ := p.store.Latest(); latest != tc.want {
				t.Fatalf("latest stored iteration %d, want %d", latest, tc.want)
			}
		})
	}
}

// A registration drops the partial sums held before it, but the one kept,
// and not one an aggregation on the new link began meanwhile.
func TestResetPartials(t *testing.T) {
	p := newTestServer(t, false).plane
	for _, it := range []uint64{3, 4} {
		if _, err := p.partialFor(it); err != nil {
			t.Fatal(err)
		}
	}
	stale := p.partialIterations()
	later, err := p.partialFor(5) // an Aggregate read before the reply
	if err != nil {
		t.Fatal(err)
	}
	ib := p.rounds.get(roundKey{5, 1})
	p.resetPartials(4, stale)
	got := p.partialIterations()
	slices.Sort(got)
	if !slices.Equal(got, []uint64{4, 5}) {
		t.Fatalf("partial sums left: %v, want [4 5]", got)
	}
	if pa, _ := p.partialFor(5); pa != later {
		t.Fatal("the partial sum begun after the registration was replaced")
	}
	ib.mu.Lock()
	closed := ib.closed
	ib.mu.Unlock()
	if closed {
		t.Fatal("the all-reduce begun after the registration was stopped")
	}

	// Nothing kept (a server that restarted, or whose sums the scheduler
	// wrote off): only the sums from before the registration go.
	p.resetPartials(0, []uint64{4})
	if got := p.partialIterations(); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("partial sums left: %v, want [5]", got)
	}
	ib.mu.Lock()
	closed = ib.closed
	ib.mu.Unlock()
	if closed {
		t.Fatal("the all-reduce begun after the registration was stopped")
	}
}

// newTestServer is a server with node id 1, its plane on a fresh
// checkpoint folder and, with link, a cluster transport; none is started.
func newTestServer(t *testing.T, link bool) *Server {
	t.Helper()
	cfg := config.Default()
	cfg.Model.CheckpointDir = t.TempDir()
	s := New(&cfg, "1", zap.NewNop())
	var err error
	if link {
		if s.tr, err = transport.New(transport.Options{Handler: s}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.tr.Close() })
	}
	if s.plane, err = newPlane(s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.plane.close)
	return s
}
