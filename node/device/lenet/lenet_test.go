package lenet

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/fedcluster/fedcluster/node/device/mnist"
	"github.com/fedcluster/fedcluster/node/model"
)

// badLabels is a dataset whose labels are out of range.
type badLabels struct{}

func (badLabels) Len() int                 { return 3 }
func (badLabels) Input(int, []float32) int { return Classes }

func TestTrainErrors(t *testing.T) {
	data := mnist.Test().Range(0, 10)
	other, err := model.NewLayout([]model.Spec{{Name: "w", Shape: []int{3}}})
	if err != nil {
		t.Fatal(err)
	}
	lr := float32(0.1)
	f := func(m *model.Model, data Dataset, epochs, batch int, momentum float32, want error) {
		t.Helper()
		tr := NewTrainer()
		tr.Momentum = momentum
		_, err := tr.Train(m, data, epochs, batch, lr, rand.New(rand.NewPCG(1, 1)))
		if err == nil || (want != nil && !errors.Is(err, want)) {
			t.Fatalf("got %v, want %v", err, want)
		}
	}
	f(nil, data, 1, 8, 0, ErrLayout)
	f(model.New(other), data, 1, 8, 0, ErrLayout)
	f(model.InitLeNet5(1), mnist.Test().Range(0, 0), 1, 8, 0, ErrEmpty)
	f(model.InitLeNet5(1), badLabels{}, 1, 8, 0, ErrLabel)
	f(model.InitLeNet5(1), data, 0, 8, 0, nil)
	f(model.InitLeNet5(1), data, 1, 0, 0, nil)
	f(model.InitLeNet5(1), data, 1, 8, 1, nil)
	f(model.InitLeNet5(1), data, 1, 8, -0.5, nil)
	for _, lr = range []float32{-1, float32(math.NaN()), float32(math.Inf(1))} {
		f(model.InitLeNet5(1), data, 1, 8, 0, nil)
	}
	lr = 1e30
	f(model.InitLeNet5(1), data, 1, 2, 0, ErrDiverged)

	if _, _, err := Evaluate(model.New(other), data); !errors.Is(err, ErrLayout) {
		t.Fatalf("Evaluate: %v", err)
	}
	if _, _, err := Evaluate(model.InitLeNet5(1), badLabels{}); !errors.Is(err, ErrLabel) {
		t.Fatalf("Evaluate: %v", err)
	}
	if _, _, err := NewTrainer().Evaluate(model.InitLeNet5(1), mnist.Test().Range(0, 0)); !errors.Is(err, ErrEmpty) {
		t.Fatalf("Trainer.Evaluate: %v", err)
	}
}

// TestTrainDeterministic: the same model, data and rng seed give the same
// weights, whichever Trainer runs them and whatever it ran before.
func TestTrainDeterministic(t *testing.T) {
	data := mnist.Train().Range(0, 200)
	run := func(tr *Trainer, momentum float32) *model.Model {
		m := model.InitLeNet5(7)
		tr.Momentum = momentum
		if _, err := tr.Train(m, data, 2, 16, 0.05, rand.New(rand.NewPCG(9, 9))); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, mom := range []float32{0, 0.9} {
		used := NewTrainer()
		run(used, 0.5)
		a, b := run(NewTrainer(), mom), run(used, mom)
		if !slices.Equal(a.Data, b.Data) {
			t.Fatalf("momentum %v: trainers disagree", mom)
		}
		if slices.Equal(a.Data, model.InitLeNet5(7).Data) {
			t.Fatal("Train did not change the model")
		}
	}
}

func TestEvaluateAgrees(t *testing.T) {
	m := model.InitLeNet5(2)
	tr := NewTrainer()
	data := mnist.Train().Range(0, 300)
	if _, err := tr.Train(m, data, 1, 32, 0.1, rand.New(rand.NewPCG(1, 1))); err != nil {
		t.Fatal(err)
	}
	test := mnist.Test().Range(0, 1000)
	l1, a1, err := Evaluate(m, test)
	if err != nil {
		t.Fatal(err)
	}
	l2, a2, err := tr.Evaluate(m, test) // with the training workspace (batch 32)
	if err != nil {
		t.Fatal(err)
	}
	l3, a3, _ := NewTrainer().Evaluate(m, test) // forward-only workspace
	if a1 != a2 || a1 != a3 || math.Abs(l1-l2) > 1e-9*l1 || math.Abs(l1-l3) > 1e-9*l1 {
		t.Fatalf("Evaluate %v/%v, Trainer.Evaluate %v/%v and %v/%v", l1, a1, l2, a2, l3, a3)
	}
	if a1 <= 0.1 || a1 > 1 || l1 <= 0 {
		t.Fatalf("implausible accuracy %v, loss %v", a1, l1)
	}
}

// TestTrainAllocs: after the first call sized its buffers, training
// allocates nothing, per batch or per call.
func TestTrainAllocs(t *testing.T) {
	m := model.InitLeNet5(1)
	data := mnist.Train().Range(0, 64)
	tr := NewTrainer()
	tr.Momentum = 0.9
	rng := rand.New(rand.NewPCG(1, 1))
	if _, err := tr.Train(m, data, 1, 16, 0.01, rng); err != nil {
		t.Fatal(err)
	}
	if a := testing.AllocsPerRun(3, func() {
		if _, err := tr.Train(m, data, 1, 16, 0.01, rng); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("%v allocations per Train", a)
	}
}
