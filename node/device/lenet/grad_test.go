package lenet

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fedcluster/fedcluster/node/device/mnist"
	"github.com/fedcluster/fedcluster/node/model"
)

// gradBatch loads bs test images into a float64 and a float32 network.
func gradBatch(t *testing.T, bs int) (*net[float64], *net[float32]) {
	t.Helper()
	n64, n32 := newNet[float64](bs, true), newNet[float32](bs, true)
	data := mnist.Test()
	if err := load(n32, data, func(b int) int { return 7 * b }, bs); err != nil {
		t.Fatal(err)
	}
	for i, v := range n32.x[:bs*InputLen] {
		n64.x[i] = float64(v)
	}
	copy(n64.labels, n32.labels)
	return n64, n32
}

// testModel is an initialised LeNet whose biases are non-zero, so that their
// gradients flow through every path.
func testModel() *model.Model {
	m := model.InitLeNet5(3)
	r := rand.New(rand.NewPCG(3, 4))
	for _, name := range []string{"fc1.bias", "fc2.bias", "fc3.bias"} {
		for i, b := 0, m.Tensor(name); i < len(b); i++ {
			b[i] = float32(r.NormFloat64() * 0.05)
		}
	}
	return m
}

// TestGradient checks backward against central finite differences of the
// float64 network's mean loss over a batch of 3 MNIST images:
//   - every entry of conv1.weight, fc3.weight and of all three biases;
//   - 150 random entries (30 under -race) of each of conv2.weight,
//     fc1.weight and fc2.weight;
//   - for each tensor, the directional derivative along a random direction
//     over all of its entries (so every parameter takes part in a check).
//
// With eps = 1e-6 in float64 the differences agree with the analytic
// gradient to |num−ana| ≤ 1e-7 + 1e-4·|ana| (observed errors are ~1e-9).
func TestGradient(t *testing.T) {
	const bs, eps, atol, rtol = 3, 1e-6, 1e-7, 1e-4
	n, _ := gradBatch(t, bs)
	m := testModel()
	w := make([]float64, nParm)
	for i, v := range m.Data {
		w[i] = float64(v)
	}
	n.forward(w, bs)
	n.backward(w, bs)
	ana := n.grad
	lossAt := func(w []float64) float64 {
		l, _ := n.forward(w, bs)
		return l / bs
	}
	r := rand.New(rand.NewPCG(1, 2))
	var worst float64
	check := func(what string, num, a float64) {
		t.Helper()
		d := math.Abs(num - a)
		if d > atol+rtol*math.Abs(a) {
			t.Fatalf("%s: numeric %.10g, analytic %.10g", what, num, a)
		}
		worst = max(worst, d)
	}
	sampled := 150
	if raceEnabled {
		sampled = 30
	}
	full := map[string]bool{"conv1.weight": true, "fc3.weight": true, "fc1.bias": true, "fc2.bias": true, "fc3.bias": true}
	nonzero := 0
	for _, p := range m.Layout.Params {
		var idx []int
		if full[p.Name] {
			for i := range p.Len {
				idx = append(idx, i)
			}
		} else {
			idx = r.Perm(p.Len)[:sampled]
		}
		for _, i := range idx {
			j := p.Offset + i
			old := w[j]
			w[j] = old + eps
			lp := lossAt(w)
			w[j] = old - eps
			lm := lossAt(w)
			w[j] = old
			check(p.Name, (lp-lm)/(2*eps), ana[j])
			if ana[j] != 0 {
				nonzero++
			}
		}
		// Directional derivative over the whole tensor.
		v := make([]float64, p.Len)
		var dot float64
		for i := range v {
			v[i] = r.NormFloat64()
			dot += v[i] * ana[p.Offset+i]
		}
		wp := append([]float64(nil), w...)
		wm := append([]float64(nil), w...)
		for i := range v {
			wp[p.Offset+i] += eps * v[i]
			wm[p.Offset+i] -= eps * v[i]
		}
		check(p.Name+" (direction)", (lossAt(wp)-lossAt(wm))/(2*eps), dot)
	}
	if nonzero < 700 {
		t.Fatalf("only %d checked gradients are non-zero", nonzero)
	}
	t.Logf("worst |numeric−analytic| = %.3g over the checked entries", worst)
}

// TestFloat32MatchesFloat64 runs the training precision against the float64
// reference on the same batch.
func TestFloat32MatchesFloat64(t *testing.T) {
	const bs = 5
	n64, n32 := gradBatch(t, bs)
	m := testModel()
	w := make([]float64, nParm)
	for i, v := range m.Data {
		w[i] = float64(v)
	}
	l64, c64 := n64.forward(w, bs)
	n64.backward(w, bs)
	l32, c32 := n32.forward(m.Data, bs)
	n32.backward(m.Data, bs)
	if c64 != c32 || math.Abs(l64-l32) > 1e-4*math.Abs(l64) {
		t.Fatalf("loss %v/%v, correct %d/%d", l32, l64, c32, c64)
	}
	var num, den float64
	for i, g := range n64.grad {
		d := float64(n32.grad[i]) - g
		num += d * d
		den += g * g
	}
	if rel := math.Sqrt(num / den); rel > 1e-4 {
		t.Fatalf("float32 gradient differs by %.3g (relative L2)", rel)
	}
}
