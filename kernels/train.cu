// train.cu: device training passes (gpuquant/backends/cupy_train.py drives them).
//
// * to_float32: the input as float32 (float64 rounded to nearest even, subnormals kept), for the
//   paths that sort (CuPy's sort compares bit patterns, so subnormals are ordered exactly).
// * minmax_global / minmax_columns: one read pass; min and max as order-preserving uint32 keys
//   (gq::order_key) with integer atomics, so NaN (keys outside +-Inf) is detected for free.
// * column_sums: per-column float64 sums (atomicAdd of per-thread partial sums).
// * radix_histogram + radix_pick: exact order statistics of all values (two ranks at once) by
//   radix select on the uint32 keys, digits of 11 + 11 + 10 bits: three read passes, histograms in
//   shared memory flushed to global memory, a one-block pick kernel between passes that finds the
//   digit holding each rank. The state (prefix and remaining rank per target) stays on the device,
//   so no host synchronisation happens until the caller reads the two keys.

#include "device_io.cuh"
#include "quant_math.cuh"

using gq::thread_count;
using gq::thread_index;
using gq::to_f32;

template <typename T>
__global__ void to_float32(const T* __restrict__ x, float* __restrict__ y, long long count) {
    for (long long i = thread_index(); i < count; i += thread_count()) y[i] = to_f32(x[i]);
}

template <typename T>
__global__ void minmax_global(const T* __restrict__ x, long long count, unsigned* kmin, unsigned* kmax) {
    unsigned lo = 0xffffffffu, hi = 0u;
    for (long long i = thread_index(); i < count; i += thread_count()) {
        const unsigned k = gq::order_key(to_f32(x[i]));
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    lo = __reduce_min_sync(0xffffffffu, lo);
    hi = __reduce_max_sync(0xffffffffu, hi);
    if ((threadIdx.x & 31) == 0) {
        atomicMin(kmin, lo);
        atomicMax(kmax, hi);
    }
}

// Thread = column (blockIdx.x * blockDim.x + threadIdx.x), rows blockIdx.y, += gridDim.y.
template <typename T>
__global__ void minmax_columns(const T* __restrict__ x, long long n, long long d, unsigned* kmin, unsigned* kmax) {
    const long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    unsigned lo = 0xffffffffu, hi = 0u;
    for (long long r = blockIdx.y; r < n; r += gridDim.y) {
        const unsigned k = gq::order_key(to_f32(x[r * d + col]));
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    atomicMin(kmin + col, lo);
    atomicMax(kmax + col, hi);
}

template <typename T>
__global__ void column_sums(const T* __restrict__ x, long long n, long long d, double* sums) {
    const long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    double s = 0.0;
    for (long long r = blockIdx.y; r < n; r += gridDim.y) s = gq::add_f64(s, gq::f32_to_f64(to_f32(x[r * d + col])));
    atomicAdd(sums + col, s);
}

// Radix select. sel (device, 4 x u64): sel[t] = key prefix found so far for target t (t = 0, 1),
// sel[2 + t] = rank of the target among the values with that prefix. hist: 2 x 2048 u64 counts
// (zero on entry; radix_pick clears them). Pass p looks at digit p: bits 31..21, 20..10, 9..0.
__device__ __forceinline__ int radix_shift(int pass) { return pass == 0 ? 21 : (pass == 1 ? 10 : 0); }
__device__ __forceinline__ unsigned radix_mask(int pass) { return pass == 2 ? 0x3ffu : 0x7ffu; }
__device__ __forceinline__ unsigned prefix_mask(int pass) {
    return pass == 0 ? 0u : (pass == 1 ? 0xffe00000u : 0xfffffc00u);
}

template <typename T>
__global__ void radix_histogram(const T* __restrict__ x, long long count, int pass,
                                const unsigned long long* __restrict__ sel, unsigned long long* hist,
                                unsigned long long* nan_count) {
    __shared__ unsigned sh[2][2048];
    for (int b = threadIdx.x; b < 2 * 2048; b += blockDim.x) sh[b / 2048][b % 2048] = 0u;
    __syncthreads();
    const unsigned p0 = (unsigned)sel[0], p1 = (unsigned)sel[1];
    const bool two = pass > 0 && p0 != p1;  // in pass 0, or with equal prefixes, one histogram serves both
    const unsigned pmask = prefix_mask(pass), dmask = radix_mask(pass);
    const int shift = radix_shift(pass);
    unsigned nans = 0;
    for (long long i = thread_index(); i < count; i += thread_count()) {
        const float v = to_f32(x[i]);
        const unsigned k = gq::order_key(v);
        const unsigned digit = (k >> shift) & dmask;
        if ((k & pmask) == p0) atomicAdd(&sh[0][digit], 1u);
        if (two && (k & pmask) == p1) atomicAdd(&sh[1][digit], 1u);
        if (pass == 0) nans += gq::is_nan(v) ? 1u : 0u;
    }
    if (pass == 0) {
        nans = __reduce_add_sync(0xffffffffu, nans);
        if ((threadIdx.x & 31) == 0 && nans) atomicAdd(nan_count, (unsigned long long)nans);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 2 * 2048; b += blockDim.x) {
        const unsigned c = sh[b / 2048][b % 2048];
        if (c) atomicAdd(hist + b, (unsigned long long)c);
    }
}

// One block of 64 threads: warp t finds the digit holding the rank of target t, then both clear.
__global__ void radix_pick(int pass, unsigned long long* sel, unsigned long long* hist) {
    const int t = threadIdx.x / 32, lane = threadIdx.x & 31;
    const unsigned p0 = (unsigned)sel[0], p1 = (unsigned)sel[1];
    const unsigned long long* h = hist + ((pass > 0 && p0 != p1) ? t * 2048 : 0);
    const unsigned long long k = sel[2 + t];
    __syncthreads();  // every thread has read sel before warp 0 or 1 updates it
    unsigned long long mine = 0;
    for (int b = lane * 64; b < lane * 64 + 64; ++b) mine += h[b];
    unsigned long long incl = mine;  // inclusive prefix sum over lanes
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned long long up = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += up;
    }
    const unsigned owner = __ffs(__ballot_sync(0xffffffffu, incl > k)) - 1;  // k < total: some lane
    if ((unsigned)lane == owner) {
        unsigned long long below = incl - mine;
        int digit = lane * 64;
        while (below + h[digit] <= k) below += h[digit++];
        sel[t] = (unsigned long long)((t ? p1 : p0) | ((unsigned)digit << radix_shift(pass)));
        sel[2 + t] = k - below;
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 2 * 2048; b += blockDim.x) hist[b] = 0ull;
}
