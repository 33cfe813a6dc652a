package model

import (
	"math"
	"math/rand/v2"
)

// LeNet5Specs are the trainable parameters of MindSpore's LeNet-5
// (model_zoo lenet, num_class=10, 1×32×32 input, conv layers without bias),
// with MindSpore's parameter names, in MindSpore's order.
func LeNet5Specs() []Spec {
	return []Spec{
		{"conv1.weight", []int{6, 1, 5, 5}},
		{"conv2.weight", []int{16, 6, 5, 5}},
		{"fc1.weight", []int{120, 400}},
		{"fc1.bias", []int{120}},
		{"fc2.weight", []int{84, 120}},
		{"fc2.bias", []int{84}},
		{"fc3.weight", []int{10, 84}},
		{"fc3.bias", []int{10}},
	}
}

// LeNet5Layout is the layout of LeNet5Specs (61,684 float32).
func LeNet5Layout() *Layout {
	l, err := NewLayout(LeNet5Specs())
	if err != nil {
		panic("BUG: " + err.Error())
	}
	return l
}

// InitLeNet5 returns a LeNet-5 with weights drawn uniformly from
// ±1/√fan_in and zero biases, seeded so that every server built from the same
// seed starts from the same model. MindSpore's default normal(0.01) init
// leaves plain SGD stalled for several epochs; this one trains at once.
func InitLeNet5(seed uint64) *Model {
	m := New(LeNet5Layout())
	r := rand.New(rand.NewPCG(seed, 0x1e7e75))
	for _, p := range m.Layout.Params {
		if len(p.Shape) == 1 {
			continue // bias
		}
		fanIn := p.Len / p.Shape[0]
		bound := 1 / math.Sqrt(float64(fanIn))
		w := m.Data[p.Offset : p.Offset+p.Len]
		for i := range w {
			w[i] = float32((r.Float64()*2 - 1) * bound)
		}
	}
	return m
}
