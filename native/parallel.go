package native

import (
	"runtime"
	"sync"
	"sync/atomic"
)

type op uint8

const (
	opFold op = iota
	opAdd
	opScale
	opMany
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
	manyX  [][]float32 // opMany: all the updates
	manyW  []float32
	done   *split
}

// ParallelMin is the element count from which a call is split across cores.
// Below it (2 MiB of float32 updates) the data sits in cache, where a
// goroutine hand-off and a busy second core cost more than the split saves.
// Tests lower it.
var ParallelMin = 1 << 19

// chunkAlign keeps chunk edges on whole AVX-512 blocks and cache lines.
const chunkAlign = 64

var (
	workersOnce sync.Once
	jobs        chan job
	nworkers    int
	splitPool   = sync.Pool{New: func() any { return new(split) }}
)

// split is the shared state of one parallel call: chunks are claimed from
// next, so a goroutine whose core is busy with other work (a shared CI
// machine, another caller) simply claims fewer chunks instead of making
// the whole call wait for its fixed half.
type split struct {
	wg    sync.WaitGroup
	next  atomic.Int64
	chunk int
}

// cores is GOMAXPROCS as the process started: the CPUs it may use. A
// server raises GOMAXPROCS afterwards for Ps its network event loops hold
// while they wait, which are no CPUs to fold on.
var cores = runtime.GOMAXPROCS(0)

func startWorkers() {
	nworkers = cores - 1
	jobs = make(chan job)
	for range nworkers {
		go func() {
			for j := range jobs {
				j.claim()
				j.done.wg.Done()
			}
		}()
	}
}

// run executes one kernel call, in parallel chunks when it is large.
func run(o op, l Level, acc []float64, xs [MaxK][]float32, ws [MaxK]float64, k int, raw []byte, dst []float32) {
	runJob(job{op: o, l: l, k: k, hi: len(acc), acc: acc, xs: xs, ws: ws, raw: raw, dst: dst})
}

// chunksPerCore balances load: enough chunks that a slow core costs
// little, few enough that claiming them costs nothing.
const chunksPerCore = 8

func runJob(j job) {
	n := len(j.acc)
	if n < ParallelMin {
		j.serial()
		return
	}
	workersOnce.Do(startWorkers)
	if nworkers == 0 {
		j.serial()
		return
	}
	align := chunkAlign
	if j.op == opMany {
		align = manyTile
	}
	sp := splitPool.Get().(*split)
	sp.chunk = max(align, (n/(chunksPerCore*(nworkers+1))+align-1)/align*align)
	sp.next.Store(0)
	j.done = sp
	for range nworkers {
		sp.wg.Add(1)
		select {
		case jobs <- j:
		default: // every worker busy (another caller): claim alone
			sp.wg.Done()
		}
	}
	j.claim()
	sp.wg.Wait()
	j.done = nil
	splitPool.Put(sp)
}

// claim runs chunks of [0, len(acc)) until none is left.
func (j job) claim() {
	sp, n := j.done, int64(len(j.acc))
	for {
		lo := sp.next.Add(int64(sp.chunk)) - int64(sp.chunk)
		if lo >= n {
			return
		}
		j.lo, j.hi = int(lo), int(min(lo+int64(sp.chunk), n))
		j.serial()
	}
}

// serial runs the chunk on this goroutine: the level's assembly on the
// block-aligned prefix, the Go loop on the tail.
func (j *job) serial() {
	if j.op == opMany {
		j.many()
		return
	}
	lo, hi := j.lo, j.hi
	mid := lo + asmLen(j.l, hi-lo)
	acc := j.acc[lo:hi]
	m := mid - lo
	switch j.op {
	case opFold:
		var xs [MaxK][]float32
		for k := 0; k < j.k; k++ {
			xs[k] = j.xs[k][lo:hi]
		}
		foldRange(j.l, acc, xs[:j.k], j.ws[:j.k])
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

// manyTile is the accumulator tile FoldMany keeps in cache while every
// update streams past it: 16 Ki float64s = 128 KiB, well inside L2.
const manyTile = 16 << 10

func (j *job) many() {
	var xs [MaxK][]float32
	var ws [MaxK]float64
	for lo := j.lo; lo < j.hi; lo += manyTile {
		hi := min(lo+manyTile, j.hi)
		for g := 0; g < len(j.manyX); g += MaxK {
			k := min(MaxK, len(j.manyX)-g)
			for i := range k {
				xs[i], ws[i] = j.manyX[g+i][lo:hi], float64(j.manyW[g+i])
			}
			foldRange(j.l, j.acc[lo:hi], xs[:k], ws[:k])
		}
	}
}

// asmLen is how many of n elements the level's assembly takes: whole blocks.
func asmLen(l Level, n int) int {
	if b := l.block(); b > 1 {
		return n / b * b
	}
	return 0 // Generic: no assembly
}

// foldRange folds len(xs) updates into acc: assembly on the whole blocks,
// the Go loop on the tail.
func foldRange(l Level, acc []float64, xs [][]float32, ws []float64) {
	m := asmLen(l, len(acc))
	if m > 0 {
		foldAsm(l, acc[:m], xs, ws)
	}
	var tail [MaxK][]float32
	for k, x := range xs {
		tail[k] = x[m:]
	}
	foldKGeneric(acc[m:], tail[:len(xs)], ws)
}
