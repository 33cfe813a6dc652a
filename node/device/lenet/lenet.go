// Package lenet trains and evaluates MindSpore's LeNet-5 on the CPU.
//
// The network is model_zoo's lenet for 1×32×32 inputs and 10 classes:
//
//	conv1 5×5 valid 1→6 (no bias) → relu → maxpool 2×2
//	conv2 5×5 valid 6→16 (no bias) → relu → maxpool 2×2
//	flatten 400 → fc1 120 → relu → fc2 84 → relu → fc3 10
//	softmax cross-entropy
//
// Its parameters live in a *model.Model of model.LeNet5Layout(), with
// MindSpore's names and shapes (conv weights [out][in][kh][kw], dense weights
// [out][in]), so a trained model goes on the wire as is.
//
// Convolutions are im2col + GEMM over the whole batch and dense layers are
// batched GEMMs, all through gonum's BLAS (float32 for training, float64 for
// the gradient check). Workspaces belong to a Trainer and are reused across
// batches; nothing is shared between Trainers, so devices may train
// different models concurrently.
package lenet

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/fedcluster/fedcluster/node/model"
)

// Dataset is a set of labelled 1×32×32 images, such as an mnist.Subset. It
// must be safe for concurrent reads.
type Dataset interface {
	// Len is the number of images.
	Len() int
	// Input writes image i (InputLen float32, row-major) into dst and
	// returns its label in [0, Classes).
	Input(i int, dst []float32) int
}

// Sentinel errors.
var (
	ErrLayout = errors.New("model is not LeNet-5")
	ErrEmpty  = errors.New("dataset is empty")
	ErrLabel  = errors.New("label out of range")
	// ErrDiverged reports a training loss that became NaN or infinite (a
	// learning rate far too large); the model's weights are then garbage.
	ErrDiverged = errors.New("training diverged")
)

// DefaultMomentum is the momentum NewTrainer sets: none, plain SGD, so that
// an FLPlan's client_learning_rate means what it says. Momentum 0.9 with a
// fifth of the learning rate trains about as well on this model (the
// effective step builds up to lr/(1−0.9)).
const DefaultMomentum = 0

// evalBatch is the batch size of Evaluate.
const evalBatch = 64

// Trainer trains and evaluates LeNet-5 models with buffers it keeps between
// calls. A Trainer is used by one goroutine at a time; use one per device.
type Trainer struct {
	// Momentum of SGD, in [0, 1); 0 is plain SGD. The velocity starts at
	// zero on every Train call, since each call starts from a fresh global
	// model.
	Momentum float32

	net   *net[float32]
	vel   []float32
	order []int
}

// NewTrainer returns a Trainer with DefaultMomentum. Buffers are sized on
// first use.
func NewTrainer() *Trainer { return &Trainer{Momentum: DefaultMomentum} }

func checkModel(m *model.Model) error {
	if m == nil || !m.Layout.Equal(layout) || len(m.Data) != nParm {
		return fmt.Errorf("cannot use model: %w", ErrLayout)
	}
	return nil
}

// ensure sizes the workspace for batches of b images.
func (t *Trainer) ensure(b int, train bool) {
	if t.net == nil || t.net.cap < b || (train && !t.net.train) {
		t.net = newNet[float32](b, train)
	}
}

// load fills the first bs inputs of n from data at the given indices.
func load(n *net[float32], data Dataset, idx func(int) int, bs int) error {
	for b := range bs {
		l := data.Input(idx(b), n.x[b*InputLen:(b+1)*InputLen])
		if l < 0 || l >= Classes {
			return fmt.Errorf("cannot load image %d: %w: %d", idx(b), ErrLabel, l)
		}
		n.labels[b] = l
	}
	return nil
}

// Train runs epochs of minibatch SGD over data on m's weights, in place:
// each epoch visits the images in an order shuffled by rng, in batches of
// batch images (the last one may be smaller), and steps by lr times the
// gradient of the batch's mean loss. It returns the mean training loss of
// the last epoch (measured before each step). On error m's weights may be
// partly trained and must not be used.
func (t *Trainer) Train(m *model.Model, data Dataset, epochs, batch int, lr float32, rng *rand.Rand) (float64, error) {
	if err := checkModel(m); err != nil {
		return 0, err
	}
	if epochs < 1 || batch < 1 {
		return 0, fmt.Errorf("cannot train: epochs %d and batch size %d must be positive", epochs, batch)
	}
	if !(lr >= 0) || math.IsInf(float64(lr), 0) {
		return 0, fmt.Errorf("cannot train: learning rate %v", lr)
	}
	if t.Momentum < 0 || t.Momentum >= 1 {
		return 0, fmt.Errorf("cannot train: momentum %v is not in [0, 1)", t.Momentum)
	}
	n := data.Len()
	if n == 0 {
		return 0, fmt.Errorf("cannot train: %w", ErrEmpty)
	}
	batch = min(batch, n)
	t.ensure(batch, true)
	if cap(t.order) < n {
		t.order = make([]int, n)
	}
	order := t.order[:n]
	for i := range order {
		order[i] = i
	}
	if t.Momentum > 0 {
		if t.vel == nil {
			t.vel = make([]float32, nParm)
		}
		clear(t.vel)
	}
	w, g := m.Data, t.net.grad
	var loss float64
	for range epochs {
		rng.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
		loss = 0
		for lo := 0; lo < n; lo += batch {
			bs := min(batch, n-lo)
			if err := load(t.net, data, func(b int) int { return order[lo+b] }, bs); err != nil {
				return 0, err
			}
			l, _ := t.net.forward(w, bs)
			loss += l
			t.net.backward(w, bs)
			if t.Momentum > 0 {
				v := t.vel
				mu := t.Momentum
				for i, gi := range g {
					v[i] = mu*v[i] + gi
				}
				axpy(-lr, v, w)
			} else {
				axpy(-lr, g, w)
			}
		}
		loss /= float64(n)
		if math.IsNaN(loss) || math.IsInf(loss, 0) {
			return 0, fmt.Errorf("cannot train: loss %v: %w", loss, ErrDiverged)
		}
	}
	return loss, nil
}

// Evaluate returns m's mean cross-entropy loss and accuracy on data, in one
// goroutine with the Trainer's buffers.
func (t *Trainer) Evaluate(m *model.Model, data Dataset) (loss, accuracy float64, err error) {
	if err := checkModel(m); err != nil {
		return 0, 0, err
	}
	n := data.Len()
	if n == 0 {
		return 0, 0, fmt.Errorf("cannot evaluate: %w", ErrEmpty)
	}
	if t.net == nil {
		t.ensure(min(evalBatch, n), false)
	}
	step := t.net.cap // any workspace serves for a forward pass
	var correct int
	for lo := 0; lo < n; lo += step {
		bs := min(step, n-lo)
		if err := load(t.net, data, func(b int) int { return lo + b }, bs); err != nil {
			return 0, 0, err
		}
		l, c := t.net.forward(m.Data, bs)
		loss += l
		correct += c
	}
	return loss / float64(n), float64(correct) / float64(n), nil
}

// Train is Trainer.Train with a fresh Trainer.
func Train(m *model.Model, data Dataset, epochs, batch int, lr float32, rng *rand.Rand) (float64, error) {
	return NewTrainer().Train(m, data, epochs, batch, lr, rng)
}

// evalNets keeps forward-only workspaces between Evaluate calls.
var evalNets = sync.Pool{New: func() any { return newNet[float32](evalBatch, false) }}

// Evaluate returns m's mean cross-entropy loss and accuracy on data, spread
// over GOMAXPROCS goroutines (m is only read).
func Evaluate(m *model.Model, data Dataset) (loss, accuracy float64, err error) {
	if err := checkModel(m); err != nil {
		return 0, 0, err
	}
	n := data.Len()
	if n == 0 {
		return 0, 0, fmt.Errorf("cannot evaluate: %w", ErrEmpty)
	}
	batches := (n + evalBatch - 1) / evalBatch
	workers := min(runtime.GOMAXPROCS(0), batches)
	var (
		next     atomic.Int64
		mu       sync.Mutex
		correct  int
		firstErr error
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			nt := evalNets.Get().(*net[float32])
			defer evalNets.Put(nt)
			var l float64
			var c int
			for {
				k := int(next.Add(1) - 1)
				if k >= batches {
					break
				}
				lo := k * evalBatch
				bs := min(evalBatch, n-lo)
				if err := load(nt, data, func(b int) int { return lo + b }, bs); err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, err)
					mu.Unlock()
					return
				}
				bl, bc := nt.forward(m.Data, bs)
				l += bl
				c += bc
			}
			mu.Lock()
			loss += l
			correct += c
			mu.Unlock()
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return loss / float64(n), float64(correct) / float64(n), nil
}

func cmpErr(old, err error) error {
	if old != nil {
		return old
	}
	return err
}
