package device_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"

	"github.com/fedcluster/fedcluster/node/device"
	"github.com/fedcluster/fedcluster/node/device/lenet"
	"github.com/fedcluster/fedcluster/node/device/mnist"
	"github.com/fedcluster/fedcluster/node/model"
)

// A device that trains LeNet-5 on 600 MNIST images, against the servers
// on ports 6668 to 6671, one iteration after another until the job ends.
func Example() {
	servers, err := device.ParseServers("127.0.0.1:6668-6671")
	if err != nil {
		log.Fatal(err)
	}
	o := device.DefaultOptions()
	o.FLID = "phone-42"
	o.Servers = servers
	o.DataSize = 600 // weighs this device's update in FedAvg
	o.Layout = model.LeNet5Layout()
	c, err := device.New(o)
	if err != nil {
		log.Fatal(err)
	}

	shard := mnist.Train().Range(0, 600)
	trainer := lenet.NewTrainer()
	rng := rand.New(rand.NewPCG(42, 42))
	train := device.TrainerFunc(func(ctx context.Context, job *device.Job) (float32, error) {
		epochs, batch, lr := 1, 32, float32(0.05)
		if job.HasPlan { // the server's FLPlan
			epochs, batch, lr = int(job.Plan.Epochs), int(job.Plan.MiniBatch), job.Plan.LR
		}
		loss, err := trainer.Train(job.Model, shard, epochs, batch, lr, rng)
		return float32(loss), err
	})

	ctx := context.Background()
	for {
		res, err := c.RunIteration(ctx, train)
		if errors.Is(err, device.ErrJobFinished) {
			return // disabled or finished: Client.Status tells which
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("iteration %d: training loss %.4f\n", res.Iteration, res.Loss)
	}
}
