package lenet

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/fedcluster/fedcluster/node/device/mnist"
	"github.com/fedcluster/fedcluster/node/model"
)

// recipe is a federated training run simulated in-process: every round,
// each device trains a copy of the global model on its own shard and the
// server averages the copies weighted by shard size, as MindSpore's FedAvg
// does with uploads of weight × data_size.
type recipe struct {
	devices   int
	rounds    int
	shardSize int // images per device (0: all of the device's shard)
	iid       bool
	epochs    int
	batch     int
	lr        float32
	momentum  float32
	seed      uint64
	testSize  int // test images evaluated after each round (0: all 10,000)
}

type roundResult struct {
	trainLoss, loss, accuracy float64
	elapsed                   time.Duration // since the start, evaluation included
}

func (rc recipe) run(tb testing.TB, onRound func(r int, res roundResult)) []roundResult {
	tb.Helper()
	shards := make([]*mnist.Subset, rc.devices)
	for i := range shards {
		sh, err := mnist.Shard(rc.devices, i, rc.seed, rc.iid)
		if err != nil {
			tb.Fatal(err)
		}
		shards[i] = sh.Take(rc.shardSize)
	}
	test := mnist.Test().All()
	if rc.testSize > 0 {
		test = mnist.Test().Range(0, rc.testSize)
	}
	global := model.InitLeNet5(rc.seed)
	trainers := make([]*Trainer, rc.devices)
	locals := make([]*model.Model, rc.devices)
	rngs := make([]*rand.Rand, rc.devices)
	for i := range trainers {
		trainers[i] = NewTrainer()
		trainers[i].Momentum = rc.momentum
		locals[i] = model.New(global.Layout)
		rngs[i] = rand.New(rand.NewPCG(rc.seed, uint64(100+i)))
	}
	losses := make([]float64, rc.devices)
	errs := make([]error, rc.devices)
	sum := make([]float64, len(global.Data))
	var out []roundResult
	start := time.Now()
	for r := range rc.rounds {
		// Devices train concurrently, as the simulator's goroutines do.
		var wg sync.WaitGroup
		for i := range trainers {
			copy(locals[i].Data, global.Data)
			wg.Go(func() {
				losses[i], errs[i] = trainers[i].Train(locals[i], shards[i], rc.epochs, rc.batch, rc.lr, rngs[i])
			})
		}
		wg.Wait()
		clear(sum)
		var total, trainLoss float64
		for i, m := range locals {
			if errs[i] != nil {
				tb.Fatal(errs[i])
			}
			k := float64(shards[i].Len())
			for j, v := range m.Data {
				sum[j] += k * float64(v)
			}
			total += k
			trainLoss += k * losses[i]
		}
		for j := range sum {
			global.Data[j] = float32(sum[j] / total)
		}
		loss, acc, err := Evaluate(global, test)
		if err != nil {
			tb.Fatal(err)
		}
		res := roundResult{trainLoss / total, loss, acc, time.Since(start)}
		out = append(out, res)
		if onRound != nil {
			onRound(r, res)
		}
	}
	return out
}

// TestFedAvgLearns is the short training run: 2 devices with IID
// shards of 1,000 images, 3 FedAvg rounds of 1 epoch (batch 16, lr 0.1,
// plain SGD): accuracy on 1,000 test images must exceed 0.8 (seed 1 reaches
// 0.909; the run is deterministic) and rise from the first round to the
// last.
func TestFedAvgLearns(t *testing.T) {
	rc := recipe{devices: 2, rounds: 3, shardSize: 1000, iid: true, epochs: 1, batch: 16, lr: 0.1, seed: 1, testSize: 1000}
	res := rc.run(t, func(r int, res roundResult) {
		t.Logf("round %d: train loss %.4f, test loss %.4f, accuracy %.4f", r+1, res.trainLoss, res.loss, res.accuracy)
	})
	first, last := res[0], res[len(res)-1]
	if last.accuracy <= 0.8 {
		t.Fatalf("accuracy after %d rounds %.4f, want > 0.8", rc.rounds, last.accuracy)
	}
	if last.accuracy <= first.accuracy || last.loss >= first.loss {
		t.Fatalf("did not improve: round 1 %.4f/%.4f, round %d %.4f/%.4f", first.accuracy, first.loss, rc.rounds, last.accuracy, last.loss)
	}
}
