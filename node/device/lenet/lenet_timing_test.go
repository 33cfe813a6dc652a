package lenet

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/fedcluster/fedcluster/node/device/mnist"
	"github.com/fedcluster/fedcluster/node/model"
)

var sinkLoss float64

// BenchmarkTrain measures single-goroutine training throughput (one epoch
// over 1,024 images per op); samples/s is the figure to size the demo with.
func BenchmarkTrain(b *testing.B) {
	for _, bs := range []int{16, 32, 64} {
		b.Run(fmt.Sprintf("batch=%d", bs), func(b *testing.B) {
			data := mnist.Train().Range(0, 1024)
			m := model.InitLeNet5(1)
			tr := NewTrainer()
			rng := rand.New(rand.NewPCG(1, 1))
			if _, err := tr.Train(m, data.Take(bs), 1, bs, 0.01, rng); err != nil { // size buffers
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				l, err := tr.Train(m, data, 1, bs, 0.01, rng)
				if err != nil {
					b.Fatal(err)
				}
				sinkLoss += l
			}
			b.ReportMetric(float64(b.N*data.Len())/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// BenchmarkEvaluate measures a full pass over the 10,000 test images, with
// Evaluate's GOMAXPROCS workers and with one goroutine.
func BenchmarkEvaluate(b *testing.B) {
	data := mnist.Test().All()
	m := model.InitLeNet5(1)
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l, _, err := Evaluate(m, data)
			if err != nil {
				b.Fatal(err)
			}
			sinkLoss += l
		}
		b.ReportMetric(float64(b.N*data.Len())/b.Elapsed().Seconds(), "samples/s")
	})
	b.Run("serial", func(b *testing.B) {
		tr := NewTrainer()
		b.ReportAllocs()
		for b.Loop() {
			l, _, err := tr.Evaluate(m, data)
			if err != nil {
				b.Fatal(err)
			}
			sinkLoss += l
		}
		b.ReportMetric(float64(b.N*data.Len())/b.Elapsed().Seconds(), "samples/s")
	})
}
