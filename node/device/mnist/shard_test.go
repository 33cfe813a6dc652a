package mnist

import (
	"slices"
	"sort"
	"testing"
)

func TestShardDisjointDeterministic(t *testing.T) {
	s := Train()
	f := func(n int, seed uint64, iid bool) {
		t.Helper()
		seen := make([]bool, s.Len())
		total := 0
		for i := range n {
			a, err := s.Shard(n, i, seed, iid)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := s.Shard(n, i, seed, iid)
			if !slices.Equal(a.Index, b.Index) {
				t.Fatalf("n=%d iid=%v: shard %d differs between calls", n, iid, i)
			}
			want := s.Len() / n
			if !iid {
				want = 2 * (s.Len() / (2 * n))
			}
			if a.Len() != want {
				t.Fatalf("n=%d iid=%v: shard %d has %d images, want %d", n, iid, i, a.Len(), want)
			}
			for _, j := range a.Index {
				if seen[j] {
					t.Fatalf("n=%d iid=%v: image %d in two shards", n, iid, j)
				}
				seen[j] = true
			}
			total += a.Len()
		}
		if s.Len()-total >= 2*n {
			t.Fatalf("n=%d iid=%v: %d images left out", n, iid, s.Len()-total)
		}
	}
	f(1, 1, true)
	f(2, 1, true)
	f(8, 7, true)
	f(7, 7, true)
	f(2, 1, false)
	f(8, 7, false)
	f(10, 3, false)

	// Another seed gives another split.
	a, _ := s.Shard(8, 0, 1, true)
	b, _ := s.Shard(8, 0, 2, true)
	if slices.Equal(a.Index, b.Index) {
		t.Fatal("seed does not change the split")
	}
}

// top2 is the share of a shard's two most frequent labels.
func top2(h [Classes]int) float64 {
	c := h[:]
	sort.Sort(sort.Reverse(sort.IntSlice(c)))
	n := 0
	for _, v := range c {
		n += v
	}
	return float64(c[0]+c[1]) / float64(n)
}

func TestShardSkew(t *testing.T) {
	s := Train()
	for _, n := range []int{5, 8, 10} {
		var mean float64
		for i := range n {
			sh, _ := s.Shard(n, i, 11, false)
			h := sh.Histogram()
			labels := 0
			for _, v := range h {
				if v > 0 {
					labels++
				}
			}
			if labels > 4 {
				t.Fatalf("n=%d: non-IID shard %d has %d labels: %v", n, i, labels, h)
			}
			// Two chunks, each mostly one label: at least half is two labels.
			if p := top2(h); p < 0.5 {
				t.Fatalf("n=%d: non-IID shard %d top-2 share %.2f: %v", n, i, p, h)
			}
			mean += top2(h) / float64(n)

			iid, _ := s.Shard(n, i, 11, true)
			hi := iid.Histogram()
			for l, v := range hi {
				if v == 0 {
					t.Fatalf("n=%d: IID shard %d has no %d", n, i, l)
				}
			}
			if p := top2(hi); p > 0.3 {
				t.Fatalf("n=%d: IID shard %d top-2 share %.2f: %v", n, i, p, hi)
			}
		}
		if mean < 0.8 {
			t.Fatalf("n=%d: mean non-IID top-2 share %.2f, want >= 0.8", n, mean)
		}
	}
}

func TestShardTake(t *testing.T) {
	sh, _ := Shard(2, 0, 5, false)
	a := sh.Take(1000)
	if a.Len() != 1000 || !slices.Equal(a.Index, sh.Index[:1000]) {
		t.Fatal("Take(1000)")
	}
	// The shard is shuffled: a prefix of a non-IID shard still mixes its labels.
	h := a.Histogram()
	full := sh.Histogram()
	for l := range Classes {
		if full[l] > sh.Len()/5 && h[l] == 0 {
			t.Fatalf("prefix misses label %d: %v of %v", l, h, full)
		}
	}
	if sh.Take(0) != sh || sh.Take(sh.Len()+1) != sh {
		t.Fatal("Take of everything should return the shard")
	}
	if _, err := Shard(0, 0, 1, true); err == nil {
		t.Fatal("n=0 accepted")
	}
	if _, err := Shard(3, 3, 1, true); err == nil {
		t.Fatal("i=n accepted")
	}
	if _, err := Shard(3, -1, 1, true); err == nil {
		t.Fatal("i<0 accepted")
	}
}
