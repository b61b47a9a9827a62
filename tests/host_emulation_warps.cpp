// host_emulation_warps.cpp: the warp- and block-cooperative kernels (absmax_encode, absmax_encode_rows and scalar_decode
// in kernels/quantize.cu, everything in kernels/train.cu, scaled_fp8_scales in kernels/weights.cu) compiled for
// the host. Each block runs its threads as std::threads; __syncthreads and the warp intrinsics (__reduce_*_sync, __ballot_sync,
// __shfl_up_sync) meet at barriers; atomics are std::atomic_ref; blocks run one after another, so
// __shared__ can be a function-local static. Built by tests/test_kernels_host.py (-std=c++20).

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "host_emulation.h"

#define __shared__ static

struct Dim { unsigned x, y; };
static thread_local Dim threadIdx{0, 0}, blockIdx{0, 0};
static Dim blockDim{1, 1}, gridDim{1, 1};

struct Warp {
    std::unique_ptr<std::barrier<>> bar;
    unsigned long long vals[32];
};
static std::unique_ptr<std::barrier<>> g_block_barrier;
static std::vector<Warp> g_warps;

inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }

// Every lane publishes v; f(values) is computed by each lane after all have published.
template <typename F>
inline unsigned long long warp_exchange(unsigned long long v, F f) {
    Warp& w = g_warps[threadIdx.x / 32];
    w.vals[threadIdx.x % 32] = v;
    w.bar->arrive_and_wait();
    const unsigned long long r = f(w.vals, threadIdx.x % 32);
    w.bar->arrive_and_wait();
    return r;
}
// The lanes named in mask reduce together (lanes of other masks reduce among themselves).
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
    return (unsigned)warp_exchange(v, [mask](const unsigned long long* a, int) {
        unsigned long long m = 0;
        for (int i = 0; i < 32; ++i) m = ((mask >> i) & 1u) && a[i] > m ? a[i] : m;
        return m;
    });
}
inline unsigned __reduce_min_sync(unsigned, unsigned v) {
    return (unsigned)warp_exchange(v, [](const unsigned long long* a, int) {
        unsigned long long m = ~0ull;
        for (int i = 0; i < 32; ++i) m = a[i] < m ? a[i] : m;
        return m;
    });
}
inline unsigned __reduce_add_sync(unsigned, unsigned v) {
    return (unsigned)warp_exchange(v, [](const unsigned long long* a, int) {
        unsigned long long s = 0;
        for (int i = 0; i < 32; ++i) s += a[i];
        return s & 0xffffffffull;
    });
}
inline unsigned __ballot_sync(unsigned, int pred) {
    return (unsigned)warp_exchange(pred ? 1 : 0, [](const unsigned long long* a, int) {
        unsigned long long b = 0;
        for (int i = 0; i < 32; ++i) b |= a[i] << i;
        return b;
    });
}
inline unsigned long long __shfl_up_sync(unsigned, unsigned long long v, int off) {
    return warp_exchange(v, [off](const unsigned long long* a, int lane) { return lane >= off ? a[lane - off] : a[lane]; });
}
inline unsigned long long __shfl_sync(unsigned, unsigned long long v, int src) {
    return warp_exchange(v, [src](const unsigned long long* a, int) { return a[src]; });
}
inline bool __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0u; }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <typename T>
inline T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (v > old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <typename T>
inline T atomicAdd(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (!a.compare_exchange_weak(old, old + v)) {
    }
    return old;
}

#include "quantize.cu"
#include "train.cu"
#include "weights.cu"

// Run `kernel` on a (gx, gy) grid of `threads`-thread blocks (threads a multiple of 32 when the
// kernel uses warp intrinsics).
template <typename F>
static void launch(unsigned gx, unsigned gy, unsigned threads, F kernel) {
    gridDim = {gx, gy};
    blockDim = {threads, 1};
    for (unsigned by = 0; by < gy; ++by) {
        for (unsigned bx = 0; bx < gx; ++bx) {
            g_block_barrier = std::make_unique<std::barrier<>>(threads);
            g_warps = std::vector<Warp>(threads / 32);
            for (auto& w : g_warps) w.bar = std::make_unique<std::barrier<>>(32);
            std::vector<std::thread> pool;
            for (unsigned t = 0; t < threads; ++t) {
                pool.emplace_back([=] {
                    threadIdx = {t, 0};
                    blockIdx = {bx, by};
                    kernel();
                });
            }
            for (auto& th : pool) th.join();
        }
    }
}

extern "C" {

// rows: 0 absmax_encode, 1 absmax_encode_rows (segments held by several warps).
void emu_absmax_encode(int blocks, int threads, int dtype, const void* x, unsigned char* codes, float* scales,
                       unsigned long long* bad_row, long long n, long long d, long long seg_len, long long groups,
                       int bits, int high_first, float eps, const float* tensor_scale, int use_tensor_scale,
                       int rows) {
    GQ_DISPATCH(dtype, launch(blocks, 1, threads, [=] {
        (rows ? absmax_encode_rows<T> : absmax_encode<T>)((const T*)x, codes, scales, bad_row, n, d, seg_len, groups,
                                                          bits, high_first, eps, tensor_scale, use_tensor_scale);
    }))
}

void emu_scalar_decode(int blocks, int threads, const unsigned char* codes, float* out, long long n, long long d,
                       const gq::ScalarParams* params, int per_dim, int rounding, int bits, int is_signed,
                       int high_first) {
    launch(blocks, 1, threads, [=] {
        scalar_decode(codes, out, n, d, params, per_dim, rounding, bits, is_signed, high_first);
    });
}

void emu_scaled_fp8_scales(int blocks, int threads, int dtype, const void* x, float* scales, long long n,
                           long long d, float max_finite, int per_row, unsigned long long* bad_row) {
    GQ_DISPATCH(dtype, launch(blocks, 1, threads, [=] {
        scaled_fp8_scales<T>((const T*)x, scales, n, d, max_finite, per_row, bad_row);
    }))
}

void emu_to_float32(int blocks, int threads, int dtype, const void* x, float* y, long long count) {
    GQ_DISPATCH(dtype, launch(blocks, 1, threads, [=] { to_float32<T>((const T*)x, y, count); }))
}

void emu_minmax_global(int blocks, int threads, int dtype, const void* x, long long count, unsigned* kmin,
                       unsigned* kmax) {
    GQ_DISPATCH(dtype, launch(blocks, 1, threads, [=] { minmax_global<T>((const T*)x, count, kmin, kmax); }))
}

void emu_minmax_columns(int gx, int gy, int threads, int dtype, const void* x, long long n, long long d,
                        unsigned* kmin, unsigned* kmax) {
    GQ_DISPATCH(dtype, launch(gx, gy, threads, [=] { minmax_columns<T>((const T*)x, n, d, kmin, kmax); }))
}

void emu_column_sums(int gx, int gy, int threads, int dtype, const void* x, long long n, long long d, double* sums) {
    GQ_DISPATCH(dtype, launch(gx, gy, threads, [=] { column_sums<T>((const T*)x, n, d, sums); }))
}

// The three radix-select passes as cupy_train.select_values launches them (cand: cap floats;
// counters: NaN count, candidate count).
void emu_select(int blocks, int threads, int dtype, const void* x, long long count, unsigned long long* sel,
                unsigned long long* hist, unsigned long long* counters, float* cand, long long cap) {
    GQ_DISPATCH(dtype, {
        const T* xt = (const T*)x;
        launch(blocks, 1, threads, [=] { radix_histogram<T, 0>(xt, count, sel, hist, counters, cand, counters + 1, cap); });
        launch(1, 1, 512, [=] { radix_pick<0>(sel, hist); });
        launch(blocks, 1, threads, [=] { radix_histogram<T, 1>(xt, count, sel, hist, counters, cand, counters + 1, cap); });
        launch(1, 1, 512, [=] { radix_pick<1>(sel, hist); });
        launch(blocks, 1, threads, [=] { radix_histogram<T, 2>(xt, count, sel, hist, counters, cand, counters + 1, cap); });
        launch(1, 1, 512, [=] { radix_pick<2>(sel, hist); });
    })
}

}  // extern "C"
