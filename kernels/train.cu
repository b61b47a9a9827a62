// train.cu: device training passes (gpuquant/backends/cupy_train.py drives them).
//
// * to_float32: the input as float32 (float64 rounded to nearest even, subnormals kept), for the
//   paths that sort (CuPy's sort compares bit patterns, so subnormals are ordered exactly).
// * minmax_global / minmax_columns: one read pass; min and max as order-preserving uint32 keys
//   (gq::order_key) with integer atomics, so NaN (keys outside +-Inf) is detected for free.
// * column_sums: per-column float64 sums (atomicAdd of per-thread partial sums).
// * radix_histogram<T, PASS> + radix_pick<PASS>: exact order statistics of all values (two ranks at
//   once) by radix select on the uint32 keys, digits of 13 + 11 + 8 bits (Radix<PASS>). Each pass
//   counts one digit of the keys that carry the prefix found so far, in block histograms in shared
//   memory (one for both targets in pass 0, one per target after) added into global memory; a
//   one-block pick kernel between passes finds the digit holding each rank by a block scan. Lanes of
//   a warp read consecutive vectors of 4 values (coalesced 16-byte loads for float32), RADIX_UNROLL
//   vectors a lane in flight. Pass 1 also appends the values whose 13-bit prefix is a target's (the
//   candidates) to a buffer of `cap` values; pass 2 reads those instead of the input when they all
//   fit. Reads of the input: 2 (float32: 2 x 4 bytes a value, plus 4 bytes a candidate twice), or 3
//   when a 13-bit bucket holds more than `cap` values. The state (prefix and remaining rank per
//   target) stays on the device, so no host synchronisation happens until the caller reads the keys.

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

// Radix select. sel (device, 6 x u64): sel[t] = key prefix found so far for target t (t = 0, 1),
// sel[2 + t] = the target's rank among all values, sel[4 + t] = its rank among the keys with that
// prefix. hist: RADIX_HIST_TOTAL u64 counts, zero on entry and on exit (each pick clears its pass's
// histograms), pass p's at Radix<p>::OFFSET. Pass 0 sets the candidate count to zero. So the six
// launches can run again on the same buffers (a benchmark replays them) and select the same values
// (the NaN count adds up).
// Keys below order_key(-Inf) or above order_key(+Inf) are NaN.
constexpr unsigned RADIX_KEY_NEG_INF = 0x007fffffu, RADIX_KEY_POS_INF = 0xff800000u;
constexpr int RADIX_UNROLL = 4;  // vectors (or single values) in flight per lane

template <int PASS>
struct Radix {
    static constexpr int BITS = PASS == 0 ? 13 : (PASS == 1 ? 11 : 8);  // digit: bits SHIFT + BITS - 1 .. SHIFT
    static constexpr int SHIFT = PASS == 0 ? 19 : (PASS == 1 ? 8 : 0);
    static constexpr unsigned FOUND = PASS == 0 ? 0u : (PASS == 1 ? 0xfff80000u : 0xffffff00u);  // prefix bits
    static constexpr int BINS = 1 << BITS;
    static constexpr int HISTS = PASS == 0 ? 1 : 2;  // pass 0: one histogram serves both targets
    static constexpr int OFFSET = PASS == 0 ? 0 : (PASS == 1 ? 8192 : 8192 + 2 * 2048);
};
constexpr int RADIX_HIST_TOTAL = 8192 + 2 * 2048 + 2 * 256;  // cupy_train.RADIX_HIST_BINS
static_assert(Radix<1>::OFFSET == Radix<0>::HISTS * Radix<0>::BINS &&
                  Radix<2>::OFFSET == Radix<1>::OFFSET + Radix<1>::HISTS * Radix<1>::BINS &&
                  RADIX_HIST_TOTAL == Radix<2>::OFFSET + Radix<2>::HISTS * Radix<2>::BINS,
              "the passes' histograms lie end to end in hist");

// A block's counts of one pass (sh: Radix<PASS>::HISTS histograms in shared memory).
template <int PASS>
struct RadixCount {
    using R = Radix<PASS>;
    unsigned* sh;
    unsigned p0, p1;
    bool two;  // the targets' prefixes differ: one histogram each
    unsigned nans;

    // Counts key k; true when k carries a target's prefix (a candidate for the next pass).
    __device__ __forceinline__ bool add(unsigned k) {
        const unsigned digit = (k >> R::SHIFT) & (R::BINS - 1u);
        if constexpr (PASS == 0) {
            atomicAdd(sh + digit, 1u);
            nans += (k < RADIX_KEY_NEG_INF || k > RADIX_KEY_POS_INF) ? 1u : 0u;
            return false;
        }
        const bool m0 = (k & R::FOUND) == p0, m1 = two && (k & R::FOUND) == p1;  // never both
        if (m0 || m1) atomicAdd(sh + (m1 ? R::BINS : 0) + digit, 1u);
        return m0 || m1;
    }
};

// Appends the values v[j] whose bit j of hits is set to cand (cap values; cand_count counts them
// all, kept or not), one global atomic per warp: every lane of the warp calls it.
template <int N>
__device__ __forceinline__ void radix_append(const float* v, unsigned hits, float* __restrict__ cand,
                                             unsigned long long* cand_count, long long cap) {
    if (!__any_sync(0xffffffffu, hits != 0u)) return;
    const int lane = threadIdx.x & 31;
    const unsigned mine = __popc(hits);
    unsigned incl = mine;  // inclusive prefix sum over lanes
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned up = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += up;
    }
    unsigned long long at = 0;
    if (lane == 31) at = atomicAdd(cand_count, (unsigned long long)incl);
    at = __shfl_sync(0xffffffffu, at, 31) + (incl - mine);
#pragma unroll
    for (int j = 0; j < N; ++j) {
        if ((hits >> j) & 1u) {
            if (at < (unsigned long long)cap) cand[at] = v[j];
            ++at;
        }
    }
}

// Counts the keys of `items` items of x (W = 4: vectors of 4 values, x aligned; W = 1: single
// values): lane l of a warp takes items base + 32 u + l (u < RADIX_UNROLL), and every lane of a warp
// takes the same number of steps (pass 1 appends its candidates warp by warp).
template <typename T, int W, int PASS>
__device__ __forceinline__ void radix_scan(const T* __restrict__ x, long long items, RadixCount<PASS>& c,
                                           float* __restrict__ cand, unsigned long long* cand_count, long long cap) {
    const long long warp = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const long long step = (long long)gridDim.x * (blockDim.x / 32) * 32 * RADIX_UNROLL;
    const int lane = threadIdx.x & 31;
    for (long long base = warp * 32 * RADIX_UNROLL; base < items; base += step) {
        float v[RADIX_UNROLL * W];
        bool live[RADIX_UNROLL];
#pragma unroll
        for (int u = 0; u < RADIX_UNROLL; ++u) {
            const long long i = base + 32 * u + lane;
            live[u] = i < items;
            if constexpr (W == 4) {
                if (live[u]) gq::load_vec<T, 4>(x + 4 * i, v + 4 * u);
            } else {
                if (live[u]) v[u] = to_f32(x[i]);
            }
        }
        unsigned hits = 0u;
#pragma unroll
        for (int j = 0; j < RADIX_UNROLL * W; ++j) {
            if (live[j / W] && c.add(gq::order_key(v[j]))) hits |= 1u << j;
        }
        if constexpr (PASS == 1) radix_append<RADIX_UNROLL * W>(v, hits, cand, cand_count, cap);
    }
}

// Every value of x (count values) through radix_scan: vectors when x is aligned, then the last
// count % 4 values by one thread.
template <typename T, int PASS>
__device__ void radix_values(const T* __restrict__ x, long long count, RadixCount<PASS>& c,
                             float* __restrict__ cand, unsigned long long* cand_count, long long cap) {
    constexpr unsigned ALIGN = 4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16;
    if (!gq::aligned(x, ALIGN)) {
        radix_scan<T, 1, PASS>(x, count, c, cand, cand_count, cap);
        return;
    }
    radix_scan<T, 4, PASS>(x, count / 4, c, cand, cand_count, cap);
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    for (long long i = count / 4 * 4; i < count; ++i) {
        const float v = to_f32(x[i]);
        if (c.add(gq::order_key(v)) && PASS == 1) {
            const unsigned long long at = atomicAdd(cand_count, 1ull);
            if (at < (unsigned long long)cap) cand[at] = v;
        }
    }
}

// Pass PASS over the count values of x (pass 2: over the candidates instead when pass 1 kept them
// all). nan_count: NaN values (pass 0); cand, cand_count, cap: the candidates (see radix_append).
template <typename T, int PASS>
__global__ void __launch_bounds__(256)
radix_histogram(const T* __restrict__ x, long long count, const unsigned long long* __restrict__ sel,
                unsigned long long* hist, unsigned long long* nan_count, float* __restrict__ cand,
                unsigned long long* cand_count, long long cap) {
    using R = Radix<PASS>;
    __shared__ unsigned sh[R::HISTS * R::BINS];
    for (int b = threadIdx.x; b < R::HISTS * R::BINS; b += blockDim.x) sh[b] = 0u;
    __syncthreads();
    if (PASS == 0 && blockIdx.x == 0 && threadIdx.x == 0) *cand_count = 0ull;  // pass 1 appends from here
    RadixCount<PASS> c{sh, (unsigned)sel[0], (unsigned)sel[1], PASS > 0 && sel[0] != sel[1], 0u};
    if (PASS == 2 && *cand_count <= (unsigned long long)cap) {
        radix_values<float, PASS>(cand, (long long)*cand_count, c, nullptr, cand_count, cap);
    } else {
        radix_values<T, PASS>(x, count, c, cand, cand_count, cap);
    }
    if (PASS == 0) {
        const unsigned nans = __reduce_add_sync(0xffffffffu, c.nans);
        if ((threadIdx.x & 31) == 0 && nans) atomicAdd(nan_count, (unsigned long long)nans);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < R::HISTS * R::BINS; b += blockDim.x) {
        if (sh[b]) atomicAdd(hist + R::OFFSET + b, (unsigned long long)sh[b]);
    }
}

// One block of 2 x 256 threads: half t finds the digit holding target t's rank, a block scan over
// the histogram (each thread sums BINS / 256 bins, then walks its own if the rank falls in them);
// then the block clears the pass's histograms.
template <int PASS>
__global__ void __launch_bounds__(512) radix_pick(unsigned long long* sel, unsigned long long* hist) {
    using R = Radix<PASS>;
    constexpr int PER = R::BINS / 256;
    __shared__ unsigned long long warp_total[16];
    const int t = threadIdx.x / 256, lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const unsigned prefix = PASS == 0 ? 0u : (unsigned)sel[t];
    const unsigned long long k = sel[(PASS == 0 ? 2 : 4) + t];
    const bool two = PASS > 0 && sel[0] != sel[1];
    const int first = (threadIdx.x % 256) * PER;
    const unsigned long long* h = hist + R::OFFSET + (two ? t * R::BINS : 0) + first;
    unsigned long long mine = 0;
    for (int b = 0; b < PER; ++b) mine += h[b];
    unsigned long long incl = mine;  // inclusive prefix sum over the lanes, then over the half's warps
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned long long up = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += up;
    }
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();  // also: every thread has read sel before one of each half writes it
    for (int w = t * 8; w < warp; ++w) incl += warp_total[w];
    unsigned long long below = incl - mine;
    if (below <= k && k < incl) {  // one thread of each half (k < the histogram's total)
        int b = 0;
        while (below + h[b] <= k) below += h[b++];
        sel[t] = prefix | ((unsigned)(first + b) << R::SHIFT);
        sel[4 + t] = k - below;
    }
    __syncthreads();
    for (int b = threadIdx.x; b < R::HISTS * R::BINS; b += blockDim.x) hist[R::OFFSET + b] = 0ull;
}
