package iteration

import (
	"strconv"
	"testing"
	"time"
)

// benchIteration runs one whole iteration of n devices over 4 servers.
func benchIteration(m *Machine, now time.Time, ids []string, servers []string) {
	it := m.Iteration()
	for i, id := range ids {
		m.Admit(now, servers[i%len(servers)], id, 32)
	}
	for i, id := range ids {
		m.CountUpdate(now, servers[(i+1)%len(servers)], id, it)
	}
	for _, s := range servers {
		n := 0
		for i := range ids {
			if (i+1)%len(servers) == servers2idx(servers, s) {
				n++
			}
		}
		_ = m.AggregationDone(now, s, it, 1, "sha", n)
	}
	m.Ready()
}

func servers2idx(servers []string, s string) int {
	for i, x := range servers {
		if x == s {
			return i
		}
	}
	return -1
}

func newBenchMachine(tb testing.TB, n int) (*Machine, []string, []string) {
	cfg := DefaultConfig()
	cfg.StartFLJobThreshold = n
	cfg.FLIterationNum = MaxCount
	m, err := NewMachine(cfg, time.UnixMilli(0))
	if err != nil {
		tb.Fatal(err)
	}
	servers := []string{"s0", "s1", "s2", "s3"}
	for _, s := range servers {
		m.ServerJoined(time.UnixMilli(0), s)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "device-" + strconv.Itoa(i)
	}
	return m, ids, servers
}

// BenchmarkAdmitCount measures Admit + CountUpdate per device-iteration, in
// iterations of 1000 devices (the per-iteration aggregation and record
// amortised over them).
func BenchmarkAdmitCount(b *testing.B) {
	const n = 1000
	m, ids, servers := newBenchMachine(b, n)
	now := time.UnixMilli(0)
	b.ReportAllocs()
	b.ResetTimer()
	done := 0
	for done < b.N {
		it := m.Iteration()
		k := min(n, b.N-done)
		for i := range k {
			m.Admit(now, servers[i%4], ids[i], 32)
		}
		for i := range k {
			m.CountUpdate(now, servers[(i+1)%4], ids[i], it)
		}
		done += k
		if k < n {
			now = now.Add(2 * time.Hour) // fails on the global window
			m.Tick(now)
		} else {
			for j, s := range servers {
				_ = m.AggregationDone(now, s, it, 1, "sha", n/4+boolInt(j < n%4))
			}
		}
		if m.Iteration() == it {
			b.Fatalf("iteration %d did not end", it)
		}
		m.Ready()
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestAdmitCountAllocs: in steady state the device path allocates nothing
// (maps and slices keep their capacity across iterations).
func TestAdmitCountAllocs(t *testing.T) {
	const n = 64
	m, ids, servers := newBenchMachine(t, n)
	now := time.UnixMilli(0)
	benchIteration(m, now, ids, servers) // warm the maps
	if m.Iteration() != 2 {
		t.Fatalf("iteration did not complete: %+v", m.Status())
	}
	benchIteration(m, now, ids, servers)
	it := m.Iteration()
	i := 0
	allocs := testing.AllocsPerRun(n-2, func() {
		m.Admit(now, servers[i%4], ids[i], 32)
		i++
	})
	if allocs != 0 {
		t.Fatalf("Admit allocates %v per call", allocs)
	}
	m.Admit(now, servers[0], ids[n-2], 32)
	m.Admit(now, servers[0], ids[n-1], 32)
	m.Ready()
	i = 1 // skip the first count (it emits a RoundEvent)
	m.CountUpdate(now, servers[0], ids[0], it)
	allocs = testing.AllocsPerRun(n-3, func() {
		m.CountUpdate(now, servers[i%4], ids[i], it)
		i++
	})
	if allocs != 0 {
		t.Fatalf("CountUpdate allocates %v per call", allocs)
	}
}
