// Aggregation kernels for the cuda engine. Accumulators are double: every
// float update is widened and folded with a double FMA. The product of two
// floats is exact in double, so results match the CPU engines bit for bit.
//
// Every kernel takes only 8-byte arguments (pointers, long long, double):
// gorgonia.org/cu copies 8 bytes from each kernel parameter.
//
// Launch: 1-D grid, any size; kernels loop grid-stride over pairs of
// elements, with a scalar head/tail when a pointer is not 16-byte aligned.

extern "C" {

// acc[i] += w * x[i], i < n.
__global__ void fold(double *acc, const float *x, double w, long long n)
{
	long long stride = (long long)gridDim.x * blockDim.x;
	long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
	if ((((unsigned long long)acc) & 15) == 0 && (((unsigned long long)x) & 7) == 0) {
		// Vector path: float2 in, double2 in/out.
		long long pairs = n / 2;
		const float2 *x2 = (const float2 *)x;
		double2 *a2 = (double2 *)acc;
		for (long long i = t; i < pairs; i += stride) {
			float2 v = x2[i];
			double2 a = a2[i];
			a.x = fma(w, (double)v.x, a.x);
			a.y = fma(w, (double)v.y, a.y);
			a2[i] = a;
		}
		if (t == 0 && (n & 1)) {
			acc[n - 1] = fma(w, (double)x[n - 1], acc[n - 1]);
		}
		return;
	}
	for (long long i = t; i < n; i += stride) {
		acc[i] = fma(w, (double)x[i], acc[i]);
	}
}

// acc[i] += sum_k w_k * xs[k*ld + i] for k < K, in order k = 0, 1, ...
// (the CPU engines' order). Unused weights are ignored.
__global__ void foldK(double *acc, const float *xs, long long ld, long long n, long long K,
	double w0, double w1, double w2, double w3, double w4, double w5, double w6, double w7)
{
	double w[8] = {w0, w1, w2, w3, w4, w5, w6, w7};
	long long stride = (long long)gridDim.x * blockDim.x;
	for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
		double a = acc[i];
#pragma unroll
		for (int k = 0; k < 8; k++) {
			if (k < K) {
				a = fma(w[k], (double)xs[k * ld + i], a);
			}
		}
		acc[i] = a;
	}
}

// acc[i] += p[i], i < n.
__global__ void addPartial(double *acc, const double *p, long long n)
{
	long long stride = (long long)gridDim.x * blockDim.x;
	for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
		acc[i] += p[i];
	}
}

// dst[i] = (float)(acc[i] * s), i < n.
__global__ void scale(float *dst, const double *acc, double s, long long n)
{
	long long stride = (long long)gridDim.x * blockDim.x;
	for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
		dst[i] = (float)(acc[i] * s);
	}
}

}
