//go:build generate

// Command gen writes native's AVX2+FMA and AVX-512 kernels with avo.
//
// Every kernel works on whole blocks (16 elements for AVX2, 32 for AVX-512);
// the Go callers in package native slice the block-aligned prefix and fold
// the tail with the pure-Go loop, so the assembly has no scalar tail.
// Accumulators are float64: each float32 input is widened with VCVTPS2PD and
// folded with a double-precision FMA. The product of two float32 values is
// exact in float64, so FMA and the Go loop's multiply-then-add round the same
// way and every level gives bit-identical results.
package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// isa describes one vector width.
type isa struct {
	name  string            // suffix of the kernel names
	lanes int               // float64 lanes per register
	vec   func() VecVirtual // a fresh register of the width
	half  func() VecVirtual // a register holding lanes float32s
	cvt   func(m, d Op)     // float64 vector -> float32 half vector
	and   func(m, a, d Op)  // 32-bit lane AND (VPAND has no EVEX form)
}

const unroll = 4

var isas = []isa{
	{name: "AVX2", lanes: 4, vec: YMM, half: XMM, cvt: func(m, d Op) { VCVTPD2PSY(m, d) }, and: func(m, a, d Op) { VPAND(m, a, d) }},
	{name: "AVX512", lanes: 8, vec: ZMM, half: YMM, cvt: func(m, d Op) { VCVTPD2PS(m, d) }, and: func(m, a, d Op) { VPANDD(m, a, d) }},
}

func main() {
	ConstraintExpr("amd64,!purego")
	for _, a := range isas {
		fold(a)
		for k := 2; k <= 8; k++ {
			foldK(a, k)
		}
		add(a)
		scale(a)
		maxExponent(a)
	}
	Generate()
}

func block(a isa) int { return a.lanes * unroll }

// fold: acc[i] += w*float64(x[i]) for len(acc) elements, a multiple of the block.
func fold(a isa) {
	name := "fold" + a.name
	TEXT(name, NOSPLIT, "func(acc []float64, x []float32, w float64)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s folds x into acc with weight w; len(acc) is a multiple of %d and len(x) >= len(acc).", name, block(a)))
	accP := Load(Param("acc").Base(), GP64())
	xP := Load(Param("x").Base(), GP64())
	n := Load(Param("acc").Len(), GP64())
	wx := Load(Param("w"), XMM())
	w := a.vec()
	VBROADCASTSD(wx, w)
	i := GP64()
	XORQ(i, i)
	Label("loop")
	CMPQ(i, n)
	JAE(LabelRef("done"))
	var acc [unroll]VecVirtual
	for j := range acc {
		acc[j] = a.vec()
		VMOVUPD(Mem{Base: accP, Index: i, Scale: 8, Disp: 8 * a.lanes * j}, acc[j])
	}
	for j := range acc {
		t := a.vec()
		VCVTPS2PD(Mem{Base: xP, Index: i, Scale: 4, Disp: 4 * a.lanes * j}, t)
		VFMADD231PD(t, w, acc[j])
	}
	for j := range acc {
		VMOVUPD(acc[j], Mem{Base: accP, Index: i, Scale: 8, Disp: 8 * a.lanes * j})
	}
	ADDQ(U32(block(a)), i)
	JMP(LabelRef("loop"))
	Label("done")
	VZEROUPPER()
	RET()
}

// foldK: acc[i] += Σ_k ws[k]*float64(xs[k][i]), reading and writing acc once.
func foldK(a isa, k int) {
	name := fmt.Sprintf("foldK%d%s", k, a.name)
	TEXT(name, NOSPLIT, "func(acc []float64, xs [][]float32, ws []float64)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s folds %d updates into acc; len(acc) is a multiple of %d, len(xs) = len(ws) = %d, len(xs[k]) >= len(acc).", name, k, block(a), k))
	accP := Load(Param("acc").Base(), GP64())
	n := Load(Param("acc").Len(), GP64())
	xsP := Load(Param("xs").Base(), GP64())
	wsP := Load(Param("ws").Base(), GP64())
	ps := make([]GPVirtual, k)
	ws := make([]VecVirtual, k)
	for j := 0; j < k; j++ {
		ps[j] = GP64()
		MOVQ(Mem{Base: xsP, Disp: 24 * j}, ps[j])
		ws[j] = a.vec()
		VBROADCASTSD(Mem{Base: wsP, Disp: 8 * j}, ws[j])
	}
	i := GP64()
	XORQ(i, i)
	Label("loop")
	CMPQ(i, n)
	JAE(LabelRef("done"))
	var acc [unroll]VecVirtual
	for j := range acc {
		acc[j] = a.vec()
		VMOVUPD(Mem{Base: accP, Index: i, Scale: 8, Disp: 8 * a.lanes * j}, acc[j])
	}
	// k outer, j inner: unroll independent FMA chains hide the FMA latency.
	for kk := 0; kk < k; kk++ {
		for j := range acc {
			t := a.vec()
			VCVTPS2PD(Mem{Base: ps[kk], Index: i, Scale: 4, Disp: 4 * a.lanes * j}, t)
			VFMADD231PD(t, ws[kk], acc[j])
		}
	}
	for j := range acc {
		VMOVUPD(acc[j], Mem{Base: accP, Index: i, Scale: 8, Disp: 8 * a.lanes * j})
	}
	ADDQ(U32(block(a)), i)
	JMP(LabelRef("loop"))
	Label("done")
	VZEROUPPER()
	RET()
}

// add: acc[i] += p[i], p given as the raw bytes of little-endian float64s.
func add(a isa) {
	name := "add" + a.name
	TEXT(name, NOSPLIT, "func(acc []float64, p []byte)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s adds the float64s in p to acc; len(acc) is a multiple of %d and len(p) >= 8*len(acc).", name, block(a)))
	accP := Load(Param("acc").Base(), GP64())
	pP := Load(Param("p").Base(), GP64())
	n := Load(Param("acc").Len(), GP64())
	i := GP64()
	XORQ(i, i)
	Label("loop")
	CMPQ(i, n)
	JAE(LabelRef("done"))
	var t [unroll]VecVirtual
	for j := range t {
		t[j] = a.vec()
		VMOVUPD(Mem{Base: pP, Index: i, Scale: 8, Disp: 8 * a.lanes * j}, t[j])
	}
	for j := range t {
		VADDPD(Mem{Base: accP, Index: i, Scale: 8, Disp: 8 * a.lanes * j}, t[j], t[j])
		VMOVUPD(t[j], Mem{Base: accP, Index: i, Scale: 8, Disp: 8 * a.lanes * j})
	}
	ADDQ(U32(block(a)), i)
	JMP(LabelRef("loop"))
	Label("done")
	VZEROUPPER()
	RET()
}

// scale: dst[i] = float32(acc[i]*s).
func scale(a isa) {
	name := "scale" + a.name
	TEXT(name, NOSPLIT, "func(dst []float32, acc []float64, s float64)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s writes float32(acc[i]*s) to dst; len(dst) is a multiple of %d and len(acc) >= len(dst).", name, block(a)))
	dP := Load(Param("dst").Base(), GP64())
	accP := Load(Param("acc").Base(), GP64())
	n := Load(Param("dst").Len(), GP64())
	sx := Load(Param("s"), XMM())
	s := a.vec()
	VBROADCASTSD(sx, s)
	i := GP64()
	XORQ(i, i)
	Label("loop")
	CMPQ(i, n)
	JAE(LabelRef("done"))
	var t [unroll]VecVirtual
	for j := range t {
		t[j] = a.vec()
		VMULPD(Mem{Base: accP, Index: i, Scale: 8, Disp: 8 * a.lanes * j}, s, t[j])
	}
	for j := range t {
		h := a.half()
		a.cvt(t[j], h)
		VMOVUPS(h, Mem{Base: dP, Index: i, Scale: 4, Disp: 4 * a.lanes * j})
	}
	ADDQ(U32(block(a)), i)
	JMP(LabelRef("loop"))
	Label("done")
	VZEROUPPER()
	RET()
}

// expMask selects a float32's exponent bits; they are all ones only in NaN
// and ±Inf.
const expMask = 0x7f800000

// maxExponent: the largest bits&expMask over the float32s in p, so p holds
// a NaN or an Inf exactly when the result is expMask. Unsigned max instead
// of a compare per vector: one instruction, and no mask registers on
// AVX-512.
func maxExponent(a isa) {
	name := "maxExponent" + a.name
	vbytes := 8 * a.lanes
	TEXT(name, NOSPLIT, "func(p []byte) uint32")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s returns the largest bits&0x7f800000 of the little-endian float32s in p; len(p) is a multiple of %d.", name, vbytes*unroll))
	pP := Load(Param("p").Base(), GP64())
	n := Load(Param("p").Len(), GP64())
	m32 := GP32()
	MOVL(U32(expMask), m32)
	mx := XMM()
	MOVD(m32, mx)
	mask := a.vec()
	VPBROADCASTD(mx, mask)
	var acc [unroll]VecVirtual
	for j := range acc {
		acc[j] = a.vec()
		if a.lanes == 8 {
			VPXORD(acc[j], acc[j], acc[j])
		} else {
			VPXOR(acc[j], acc[j], acc[j])
		}
	}
	i := GP64()
	XORQ(i, i)
	Label("loop")
	CMPQ(i, n)
	JAE(LabelRef("done"))
	for j := range acc {
		t := a.vec()
		a.and(Mem{Base: pP, Index: i, Scale: 1, Disp: vbytes * j}, mask, t)
		VPMAXUD(t, acc[j], acc[j])
	}
	ADDQ(U32(vbytes*unroll), i)
	JMP(LabelRef("loop"))
	Label("done")
	// Reduce the unrolled maxima, then the lanes, to one value.
	VPMAXUD(acc[1], acc[0], acc[0])
	VPMAXUD(acc[3], acc[2], acc[2])
	VPMAXUD(acc[2], acc[0], acc[0])
	y := acc[0].AsY()
	if a.lanes == 8 {
		hi := YMM()
		VEXTRACTI64X4(U8(1), acc[0], hi)
		VPMAXUD(hi, y, y)
	}
	x := acc[0].AsX()
	hx := XMM()
	VEXTRACTI128(U8(1), y, hx)
	VPMAXUD(hx, x, x)
	VPSHUFD(U8(0x4e), x, hx)
	VPMAXUD(hx, x, x)
	VPSHUFD(U8(0xb1), x, hx)
	VPMAXUD(hx, x, x)
	r := GP32()
	MOVD(x, r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()
}
