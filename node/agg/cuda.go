//go:build cuda

package agg

import (
	"fmt"

	"github.com/fedcluster/fedcluster/cuda"
)

const cudaBuilt = true

func init() {
	engines["cuda"] = func() (Engine, error) {
		e, err := cuda.New()
		if err != nil {
			return nil, err
		}
		return cudaEngine{e}, nil
	}
}

// cudaEngine adapts *cuda.Engine, which cannot import this package.
type cudaEngine struct{ *cuda.Engine }

func (e cudaEngine) NewAccumulator(n int) (Accumulator, error) {
	a, err := e.Engine.NewAccumulator(n)
	if err != nil {
		return nil, err
	}
	return cudaAcc{a}, nil
}

type cudaAcc struct{ *cuda.Acc }

func (a cudaAcc) Merge(o Accumulator) {
	b, ok := o.(cudaAcc)
	if !ok {
		panic(fmt.Sprintf("BUG: agg: merging %T into a cuda accumulator", o))
	}
	a.Acc.Merge(b.Acc)
}
