package mnist

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// Subset is a view of some images of a Set, in a given order. It shares the
// Set's memory; only the index list is its own.
type Subset struct {
	Set   *Set
	Index []int32
}

// Len is the number of images in the subset.
func (s *Subset) Len() int { return len(s.Index) }

// Label returns the digit of the subset's image i.
func (s *Subset) Label(i int) int { return int(s.Set.Labels[s.Index[i]]) }

// Input writes the subset's image i padded and normalised into dst (at least
// InputLen long) and returns its label.
func (s *Subset) Input(i int, dst []float32) int { return s.Set.Input(int(s.Index[i]), dst) }

// Take returns the first k images of the subset (all of them if k <= 0 or
// k >= Len). Shards are shuffled, so the first k are a random sample.
func (s *Subset) Take(k int) *Subset {
	if k <= 0 || k >= len(s.Index) {
		return s
	}
	return &Subset{Set: s.Set, Index: s.Index[:k:k]}
}

// Histogram counts the subset's images per label.
func (s *Subset) Histogram() [Classes]int {
	var h [Classes]int
	for _, j := range s.Index {
		h[s.Set.Labels[j]]++
	}
	return h
}

// Shard returns device i's shard of the training set when it is split among
// n devices; see Set.Shard.
func Shard(n, i int, seed uint64, iid bool) (*Subset, error) {
	return Train().Shard(n, i, seed, iid)
}

// Shard returns device i's part of the set when it is split among n devices.
// Every device of the same (n, seed, iid) computes the same split, so shards
// are disjoint, of equal size ⌊Len/n⌋ (non-IID: 2·⌊Len/2n⌋) and
// deterministic. The shard's own order is shuffled too, so Take(k) is a
// random sample of it.
//
// IID: a seeded random permutation of the set, cut into n parts.
//
// Non-IID, as in McMahan et al.'s FedAvg paper: the images are sorted by
// label, cut into 2n equal chunks, and each device gets two chunks chosen by
// a seeded permutation. With n ≥ 5 a chunk is smaller than a label's images,
// so it spans at most two labels and a device holds mostly two digits (at
// most four); with fewer devices the chunks are larger and cover more labels.
func (s *Set) Shard(n, i int, seed uint64, iid bool) (*Subset, error) {
	if n < 1 || n > s.Len() {
		return nil, fmt.Errorf("cannot shard %d images among %d devices", s.Len(), n)
	}
	if i < 0 || i >= n {
		return nil, fmt.Errorf("cannot shard: device %d is not in [0, %d)", i, n)
	}
	r := rand.New(rand.NewPCG(seed, 0x6d6e697374)) // "mnist"
	perm := make([]int32, s.Len())
	for j := range perm {
		perm[j] = int32(j)
	}
	shuffle(r, perm)
	var idx []int32
	if iid {
		per := s.Len() / n
		idx = slices.Clone(perm[i*per : (i+1)*per])
	} else {
		// Counting sort by label keeps the random order within each label.
		var start [Classes + 1]int
		for _, l := range s.Labels {
			start[l+1]++
		}
		for l := range Classes {
			start[l+1] += start[l]
		}
		sorted := make([]int32, len(perm))
		for _, j := range perm {
			l := s.Labels[j]
			sorted[start[l]] = j
			start[l]++
		}
		chunk := s.Len() / (2 * n)
		chunks := r.Perm(2 * n)
		for _, c := range chunks[2*i : 2*i+2] {
			idx = append(idx, sorted[c*chunk:(c+1)*chunk]...)
		}
	}
	shuffle(rand.New(rand.NewPCG(seed, uint64(i)+1)), idx)
	return &Subset{Set: s, Index: idx}, nil
}

// shuffle is a Fisher-Yates shuffle (rand.Shuffle without its closure).
func shuffle(r *rand.Rand, a []int32) {
	for i := len(a) - 1; i > 0; i-- {
		j := r.IntN(i + 1)
		a[i], a[j] = a[j], a[i]
	}
}
