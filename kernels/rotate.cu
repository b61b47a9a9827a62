// rotate.cu: the pre-transforms' products on the device (gpuquant/transforms.py, bit for bit).
//
// row_product: out[i, c] = f32(sum_j (f64(x[i, j]) - f64(shift[j])) * f64(M[j, c])), the float64 sum
// taken for j = 0, 1, ... in order from +0 and rounded once (the reference's row_product), then, when
// `offset` is given, f32(f64(that) + f64(offset[c])) (pca_inverse). Blocks stride over rows, a
// block's threads over the output columns (M's row j is read coalesced, x[i, j] is a broadcast).
//
// The randomised Walsh-Hadamard transform as three kernels over a float64 scratch `a` (n, p):
// hadamard_load a[i, k] = f64(x[i, k]) (0 for k >= d) times signs[k] (when given); hadamard_stage,
// launched for h = 1, 2, 4, ... < p, the butterflies (a[i0], a[i0 + h]) <- (lo + hi, lo - hi) of
// every pair i0 = 2h * (q / h) + q % h, one thread per pair, as the reference's _fwht; hadamard_store
// out[i, k] = f32(a[i, k] / root) (times signs[k] when given) for the first d columns. Every
// operation is IEEE float64 through quant_math.cuh (no contraction), as numpy's.

#include "device_io.cuh"

__global__ void __launch_bounds__(256, 4)
row_product(const float* __restrict__ x, const float* __restrict__ m, const float* __restrict__ shift,
            const float* __restrict__ offset, float* __restrict__ out, long long n, long long rows,
            long long cols) {
    for (long long i = blockIdx.x; i < n; i += gridDim.x) {
        const float* xr = x + i * rows;
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            double acc = 0.0;
            for (long long j = 0; j < rows; ++j) {
                double v = gq::f32_to_f64(xr[j]);
                if (shift != nullptr) v = gq::sub_f64(v, gq::f32_to_f64(shift[j]));
                acc = gq::add_f64(acc, gq::mul_f64(v, gq::f32_to_f64(m[j * cols + c])));
            }
            float r = gq::f64_to_f32(acc);
            if (offset != nullptr) r = gq::f64_to_f32(gq::add_f64(gq::f32_to_f64(r), gq::f32_to_f64(offset[c])));
            out[i * cols + c] = r;
        }
    }
}

__global__ void __launch_bounds__(256, 4)
hadamard_load(const float* __restrict__ x, const double* __restrict__ signs, double* __restrict__ a, long long n,
              long long d, long long p) {
    for (long long i = blockIdx.x; i < n; i += gridDim.x) {
        for (long long k = threadIdx.x; k < p; k += blockDim.x) {
            const double v = k < d ? gq::f32_to_f64(x[i * d + k]) : 0.0;
            a[i * p + k] = signs != nullptr ? gq::mul_f64(v, signs[k]) : v;
        }
    }
}

__global__ void __launch_bounds__(256, 4)
hadamard_stage(double* __restrict__ a, long long n, long long p, long long h) {
    for (long long i = blockIdx.x; i < n; i += gridDim.x) {
        double* row = a + i * p;
        for (long long q = threadIdx.x; q < p / 2; q += blockDim.x) {
            const long long t = q & (h - 1);
            const long long i0 = ((q - t) << 1) + t;
            const double lo = row[i0], hi = row[i0 + h];
            row[i0] = gq::add_f64(lo, hi);
            row[i0 + h] = gq::sub_f64(lo, hi);
        }
    }
}

__global__ void __launch_bounds__(256, 4)
hadamard_store(const double* __restrict__ a, const double* __restrict__ signs, float* __restrict__ out,
               long long n, long long p, long long d, double root) {
    for (long long i = blockIdx.x; i < n; i += gridDim.x) {
        for (long long k = threadIdx.x; k < d; k += blockDim.x) {
            double v = gq::div_f64(a[i * p + k], root);
            if (signs != nullptr) v = gq::mul_f64(v, signs[k]);
            out[i * d + k] = gq::f64_to_f32(v);
        }
    }
}
