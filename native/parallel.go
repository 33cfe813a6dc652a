package native

import (
	"runtime"
	"sync"
)

type op uint8

const (
	opFold op = iota
	opAdd
	opScale
)

// job is one chunk [lo, hi) of a kernel call, passed by value to a worker.
type job struct {
	op     op
	l      Level
	k      int
	lo, hi int
	acc    []float64
	xs     [MaxK][]float32
	ws     [MaxK]float64
	raw    []byte
	dst    []float32
	done   *sync.WaitGroup
}

// ParallelMin is the element count from which a call is split across cores.
// Below it a goroutine hand-off costs more than it saves. Tests lower it.
var ParallelMin = 1 << 16

// chunkAlign keeps chunk edges on whole AVX-512 blocks and cache lines.
const chunkAlign = 64

var (
	workersOnce sync.Once
	jobs        chan job
	nworkers    int
	wgPool      = sync.Pool{New: func() any { return new(sync.WaitGroup) }}
)

func startWorkers() {
	nworkers = runtime.GOMAXPROCS(0) - 1
	jobs = make(chan job)
	for range nworkers {
		go func() {
			for j := range jobs {
				j.serial()
				j.done.Done()
			}
		}()
	}
}

// run executes one kernel call, in parallel chunks when it is large.
func run(o op, l Level, acc []float64, xs [MaxK][]float32, ws [MaxK]float64, k int, raw []byte, dst []float32) {
	j := job{op: o, l: l, k: k, hi: len(acc), acc: acc, xs: xs, ws: ws, raw: raw, dst: dst}
	n := len(acc)
	if n < ParallelMin {
		j.serial()
		return
	}
	workersOnce.Do(startWorkers)
	if nworkers == 0 {
		j.serial()
		return
	}
	parts := nworkers + 1
	size := (n/parts + chunkAlign - 1) &^ (chunkAlign - 1)
	wg := wgPool.Get().(*sync.WaitGroup)
	j.done = wg
	lo := 0
	for lo+size < n {
		c := j
		c.lo, c.hi = lo, lo+size
		wg.Add(1)
		select {
		case jobs <- c:
		default: // every worker busy (another caller): do it here
			c.serial()
			wg.Done()
		}
		lo += size
	}
	j.lo = lo
	j.serial()
	wg.Wait()
	wgPool.Put(wg)
}

// serial runs the chunk on this goroutine: the level's assembly on the
// block-aligned prefix, the Go loop on the tail.
func (j *job) serial() {
	lo, hi := j.lo, j.hi
	mid := lo // Generic: no assembly prefix
	if b := j.l.block(); b > 1 {
		mid = lo + (hi-lo)/b*b
	}
	var xs [MaxK][]float32
	for k := 0; k < j.k; k++ {
		xs[k] = j.xs[k][lo:hi]
	}
	acc := j.acc[lo:hi]
	m := mid - lo
	switch j.op {
	case opFold:
		if m > 0 {
			foldAsm(j.l, acc[:m], xs[:j.k], j.ws[:j.k])
		}
		for k := 0; k < j.k; k++ {
			xs[k] = xs[k][m:]
		}
		foldKGeneric(acc[m:], xs[:j.k], j.ws[:j.k])
	case opAdd:
		raw := j.raw[8*lo : 8*hi]
		if m > 0 {
			addAsm(j.l, acc[:m], raw)
		}
		addGeneric(acc[m:], raw[8*m:])
	case opScale:
		dst := j.dst[lo:hi]
		if m > 0 {
			scaleAsm(j.l, dst[:m], acc, j.ws[0])
		}
		scaleGeneric(dst[m:], acc[m:], j.ws[0])
	}
}
