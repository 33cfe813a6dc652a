package lenet

import (
	"math"

	"github.com/fedcluster/fedcluster/node/model"
)

// Shapes of MindSpore's LeNet-5 on 1×32×32 inputs.
const (
	InputSide = 32
	InputLen  = InputSide * InputSide
	Classes   = 10

	ksz   = 5 // convolution kernel side
	kk    = ksz * ksz
	c1    = 6       // conv1 channels
	o1    = 28      // conv1 output side
	o1sq  = o1 * o1 // 784
	q1    = 14      // pool1 output side
	q1sq  = q1 * q1 // 196
	c2    = 16      // conv2 channels
	k2    = c1 * kk // conv2 patch length, 150
	o2    = 10      // conv2 output side
	o2sq  = o2 * o2 // 100
	q2    = 5       // pool2 output side
	q2sq  = q2 * q2 // 25
	flat  = c2 * q2sq
	hid1  = 120
	hid2  = 84
	nParm = c1*kk + c2*k2 + hid1*flat + hid1 + hid2*hid1 + hid2 + Classes*hid2 + Classes
)

// Offsets of the parameters in the flat model, in MindSpore's order.
var (
	layout                     = model.LeNet5Layout()
	offW1, offW2, offW3, offB3 = off("conv1.weight"), off("conv2.weight"), off("fc1.weight"), off("fc1.bias")
	offW4, offB4, offW5, offB5 = off("fc2.weight"), off("fc2.bias"), off("fc3.weight"), off("fc3.bias")
	_                          [nParm - 61684]struct{} // nParm is LeNet5Layout's size
)

func off(name string) int {
	p, ok := layout.Lookup(name)
	if !ok {
		panic("BUG: LeNet5Layout has no " + name)
	}
	return p.Offset
}

// params are views of the flat parameter (or gradient) vector.
type params[T float] struct {
	w1, w2, w3, b3, w4, b4, w5, b5 []T
}

func view[T float](p []T) params[T] {
	return params[T]{
		w1: p[offW1 : offW1+c1*kk],
		w2: p[offW2 : offW2+c2*k2],
		w3: p[offW3 : offW3+hid1*flat],
		b3: p[offB3 : offB3+hid1],
		w4: p[offW4 : offW4+hid2*hid1],
		b4: p[offB4 : offB4+hid2],
		w5: p[offW5 : offW5+Classes*hid2],
		b5: p[offB5 : offB5+Classes],
	}
}

// net is the workspace of one forward/backward pass over batches of up to
// cap images. Convolution activations are kept channel-major over the whole
// batch ([channel][image][row][col]), so that each convolution is one GEMM
// of the weights with an im2col matrix whose rows are batch-wide.
type net[T float] struct {
	cap   int
	train bool

	x      []T     // [B][32][32] inputs
	labels []int   // [B]
	col1   []T     // [25][B·784] im2col of x
	out1   []T     // [6][B·784] conv1 output
	arg1   []int32 // [6][B·196] index in out1 of each pool1 maximum
	p1     []T     // [6][B·196] relu(maxpool(out1))
	col2   []T     // [150][B·100] im2col of p1
	out2   []T     // [16][B·100] conv2 output
	arg2   []int32 // [16][B·25]
	p2     []T     // [16][B·25]
	f0     []T     // [B][400] flattened p2, PyTorch/MindSpore order c·25+y·5+x
	h1     []T     // [B][120]
	h2     []T     // [B][84]
	prob   []T     // [B][10] softmax

	// backward only
	grad  []T // like the flat model
	dlog  []T // [B][10]
	dh2   []T // [B][84]
	dh1   []T // [B][120]
	df0   []T // [B][400]
	dout2 []T // [16][B·100]
	dcol2 []T // [150][B·100]
	dp1   []T // [6][B·196]
	dout1 []T // [6][B·784]
	// tr holds a transposed operand: gonum's Aᵀ·B kernel sweeps all rows
	// of C for every k, while A·B finishes one row of C (kept in L1) at a
	// time and skips zero entries of A, which relu makes common.
	tr []T
}

func newNet[T float](capacity int, train bool) *net[T] {
	b := capacity
	n := &net[T]{
		cap: b, train: train,
		x: make([]T, b*InputLen), labels: make([]int, b),
		col1: make([]T, kk*b*o1sq), out1: make([]T, c1*b*o1sq),
		arg1: make([]int32, c1*b*q1sq), p1: make([]T, c1*b*q1sq),
		col2: make([]T, k2*b*o2sq), out2: make([]T, c2*b*o2sq),
		arg2: make([]int32, c2*b*q2sq), p2: make([]T, c2*b*q2sq),
		f0: make([]T, b*flat), h1: make([]T, b*hid1), h2: make([]T, b*hid2),
		prob: make([]T, b*Classes),
	}
	if train {
		n.grad = make([]T, nParm)
		n.dlog = make([]T, b*Classes)
		n.dh2 = make([]T, b*hid2)
		n.dh1 = make([]T, b*hid1)
		n.df0 = make([]T, b*flat)
		n.dout2 = make([]T, c2*b*o2sq)
		n.dcol2 = make([]T, k2*b*o2sq)
		n.dp1 = make([]T, c1*b*q1sq)
		n.dout1 = make([]T, c1*b*o1sq)
		n.tr = make([]T, max(b*hid1, k2*c2))
	}
	return n
}

// forward runs the first bs images of n.x through the network with
// parameters p, leaving the softmax in n.prob. It returns the summed
// cross-entropy loss against n.labels and the number of correct argmaxes.
func (n *net[T]) forward(flatParams []T, bs int) (loss float64, correct int) {
	if bs > n.cap || bs <= 0 {
		panic("BUG: lenet batch size out of range")
	}
	p := view(flatParams)

	// conv1: out1[6][B·784] = W1[6][25] · col1[25][B·784].
	n1 := bs * o1sq
	im2col(n.col1, n.x, 1, bs, InputSide, o1)
	gemm(false, false, c1, n1, kk, p.w1, kk, n.col1, n1, 0, n.out1, n1)
	pool(n.p1, n.arg1, n.out1, c1*bs, o1)

	// conv2: out2[16][B·100] = W2[16][150] · col2[150][B·100].
	n2 := bs * o2sq
	im2col(n.col2, n.p1, c1, bs, q1, o2)
	gemm(false, false, c2, n2, k2, p.w2, k2, n.col2, n2, 0, n.out2, n2)
	pool(n.p2, n.arg2, n.out2, c2*bs, o2)

	// flatten [16][B][25] to [B][400].
	for c := range c2 {
		for b := range bs {
			copy(n.f0[b*flat+c*q2sq:b*flat+(c+1)*q2sq], n.p2[(c*bs+b)*q2sq:(c*bs+b+1)*q2sq])
		}
	}

	// dense layers: h = x·Wᵀ + b.
	gemm(false, true, bs, hid1, flat, n.f0, flat, p.w3, flat, 0, n.h1, hid1)
	biasRelu(n.h1[:bs*hid1], p.b3, true)
	gemm(false, true, bs, hid2, hid1, n.h1, hid1, p.w4, hid1, 0, n.h2, hid2)
	biasRelu(n.h2[:bs*hid2], p.b4, true)
	gemm(false, true, bs, Classes, hid2, n.h2, hid2, p.w5, hid2, 0, n.prob, Classes)
	biasRelu(n.prob[:bs*Classes], p.b5, false)

	// softmax cross-entropy.
	for b := range bs {
		z := n.prob[b*Classes : (b+1)*Classes]
		best := 0
		for j, v := range z {
			if v > z[best] {
				best = j
			}
		}
		y := n.labels[b]
		zmax, zy := float64(z[best]), float64(z[y])
		var sum float64
		for j, v := range z {
			e := math.Exp(float64(v) - zmax)
			sum += e
			z[j] = T(e)
		}
		loss += math.Log(sum) - (zy - zmax)
		for j := range z {
			z[j] = T(float64(z[j]) / sum)
		}
		if best == y {
			correct++
		}
	}
	return loss, correct
}

// backward computes n.grad, the gradient of the batch's mean loss, after
// forward over the same bs images.
func (n *net[T]) backward(flatParams []T, bs int) {
	p, g := view(flatParams), view(n.grad)
	inv := 1 / T(bs)

	// d loss / d logits = (softmax − onehot) / B.
	for b := range bs {
		for j := range Classes {
			v := n.prob[b*Classes+j]
			if j == n.labels[b] {
				v--
			}
			n.dlog[b*Classes+j] = v * inv
		}
	}

	// fc3, fc2, fc1: dW = dYᵀ·X, db = Σ dY, dX = dY·W masked by relu.
	dense(g.w5, g.b5, n.dh2, n.dlog, n.h2, p.w5, n.tr, bs, Classes, hid2)
	dense(g.w4, g.b4, n.dh1, n.dh2, n.h1, p.w4, n.tr, bs, hid2, hid1)
	dense(g.w3, g.b3, n.df0, n.dh1, n.f0, p.w3, n.tr, bs, hid1, flat)

	// unflatten and unpool into dout2 (relu is folded in the pool: a
	// maximum of zero passes no gradient).
	n2 := bs * o2sq
	dout2 := n.dout2[:c2*n2]
	clear(dout2)
	for c := range c2 {
		for b := range bs {
			j0 := (c*bs + b) * q2sq
			src := n.df0[b*flat+c*q2sq : b*flat+(c+1)*q2sq]
			for s, d := range src {
				if n.p2[j0+s] > 0 {
					dout2[n.arg2[j0+s]] = d
				}
			}
		}
	}
	// conv2: dW2 = dout2 · col2ᵀ, dcol2 = W2ᵀ · dout2.
	gemm(false, true, c2, k2, n2, dout2, n2, n.col2, n2, 0, g.w2, k2)
	w2t := transpose(n.tr, p.w2, c2, k2)
	gemm(false, false, k2, n2, c2, w2t, c2, dout2, n2, 0, n.dcol2, n2)
	dp1 := n.dp1[:c1*bs*q1sq]
	clear(dp1)
	col2im(dp1, n.dcol2, c1, bs, q1, o2)

	n1 := bs * o1sq
	dout1 := n.dout1[:c1*n1]
	clear(dout1)
	for j, d := range dp1 {
		if n.p1[j] > 0 {
			dout1[n.arg1[j]] = d
		}
	}
	// conv1: dW1 = dout1 · col1ᵀ (the input needs no gradient).
	gemm(false, true, c1, kk, n1, dout1, n1, n.col1, n1, 0, g.w1, kk)
}

// dense back-propagates through y = relu?(x·Wᵀ + b) for a layer with out
// outputs and in inputs: gw = dyᵀ·x, gb = Σ_rows dy, and dx = dy·W, masked
// where x (the previous layer's relu output) is zero. tr is scratch for dyᵀ.
func dense[T float](gw, gb, dx, dy, x, w, tr []T, bs, out, in int) {
	dyT := transpose(tr, dy, bs, out)
	gemm(false, false, out, in, bs, dyT, bs, x, in, 0, gw, in)
	clear(gb)
	for b := range bs {
		for j, v := range dy[b*out : (b+1)*out] {
			gb[j] += v
		}
	}
	gemm(false, false, bs, in, out, dy, out, w, in, 0, dx, in)
	for i, v := range x[:bs*in] {
		if v <= 0 {
			dx[i] = 0
		}
	}
}

// im2col lays the 5×5 patches of src ([ch][B][side][side]) out as
// dst[ch·25][B·out·out], row (c, ky, kx), column (b, y, x).
func im2col[T float](dst, src []T, ch, bs, side, out int) {
	nc := bs * out * out
	for c := range ch {
		for ky := range ksz {
			for kx := range ksz {
				row := dst[((c*ksz+ky)*ksz+kx)*nc:]
				for b := range bs {
					img := src[(c*bs+b)*side*side:]
					o := row[b*out*out:]
					for y := range out {
						s := img[(y+ky)*side+kx:]
						copy(o[y*out:(y+1)*out], s[:out])
					}
				}
			}
		}
	}
}

// col2im accumulates dcol ([ch·25][B·out·out]) back onto dst
// ([ch][B][side][side]), the adjoint of im2col.
func col2im[T float](dst, dcol []T, ch, bs, side, out int) {
	nc := bs * out * out
	for c := range ch {
		for ky := range ksz {
			for kx := range ksz {
				row := dcol[((c*ksz+ky)*ksz+kx)*nc:]
				for b := range bs {
					img := dst[(c*bs+b)*side*side:]
					o := row[b*out*out:]
					for y := range out {
						d := img[(y+ky)*side+kx:]
						d = d[:out]
						for x, v := range o[y*out : (y+1)*out] {
							d[x] += v
						}
					}
				}
			}
		}
	}
}

// pool takes relu(max) over 2×2 windows of planes side×side ones in src,
// writing planes·(side/2)² values to dst and the source index of each
// maximum to arg.
func pool[T float](dst []T, arg []int32, src []T, planes, side int) {
	h := side / 2
	for pl := range planes {
		s := src[pl*side*side : (pl+1)*side*side]
		base := int32(pl * side * side)
		d := dst[pl*h*h : (pl+1)*h*h]
		a := arg[pl*h*h : (pl+1)*h*h]
		for y := range h {
			r0 := s[2*y*side : (2*y+1)*side]
			r1 := s[(2*y+1)*side : (2*y+2)*side]
			for x := range h {
				i := 2 * x
				m, mi := r0[i], 2*y*side+i
				if v := r0[i+1]; v > m {
					m, mi = v, 2*y*side+i+1
				}
				if v := r1[i]; v > m {
					m, mi = v, (2*y+1)*side+i
				}
				if v := r1[i+1]; v > m {
					m, mi = v, (2*y+1)*side+i+1
				}
				d[y*h+x] = max(m, 0)
				a[y*h+x] = base + int32(mi)
			}
		}
	}
}

// biasRelu adds the bias to every row of y and applies relu if asked.
func biasRelu[T float](y, bias []T, relu bool) {
	n := len(bias)
	for r := 0; r < len(y); r += n {
		row := y[r : r+n]
		for j, b := range bias {
			v := row[j] + b
			if relu && v < 0 {
				v = 0
			}
			row[j] = v
		}
	}
}

// transpose writes the r×c matrix a as c×r into dst and returns it.
func transpose[T float](dst, a []T, r, c int) []T {
	dst = dst[:r*c]
	for i := range r {
		for j, v := range a[i*c : (i+1)*c] {
			dst[j*r+i] = v
		}
	}
	return dst
}
