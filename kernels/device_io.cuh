// device_io.cuh: device-only helpers shared by the kernels: input conversion to float32, aligned
// vector loads, grid-stride indices. (The per-element math is in quant_math.cuh.)
//
// GQ_HOST_EMULATION is defined only by tests/host_emulation.h (for tests/host_emulation*.cpp), which
// compile the kernels with the host compiler and supply __half and the vector types.

#pragma once

#ifndef GQ_HOST_EMULATION
#include <cuda_fp16.h>
#endif

#include "quant_math.cuh"

namespace gq {

// Input values as float32: float16 widens exactly (a NaN keeps its sign and payload, as numpy's
// conversion does; the hardware conversion would return the canonical NaN); float64 rounds to
// nearest even (subnormal results kept: cvt.rn.f32.f64 without .ftz).
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) {
    const unsigned b = __half_as_ushort(x);
    if ((b & 0x7fffu) > 0x7c00u) return float_of(((b & 0x8000u) << 16) | 0x7f800000u | ((b & 0x3ffu) << 13));
    return __half2float(x);
}
__device__ __forceinline__ float to_f32(double x) { return f64_to_f32(x); }

__device__ __forceinline__ bool aligned(const void* p, unsigned bytes) {
    return (reinterpret_cast<unsigned long long>(p) & (bytes - 1)) == 0;
}

// Vector moves between global memory (p aligned to the vector size) and local arrays. The local
// side goes through memcpy (register moves after compilation): no type punning of local objects.
template <typename V>
__device__ __forceinline__ void load_raw(const void* p, void* local) {
    const V w = *reinterpret_cast<const V*>(p);
    memcpy(local, &w, sizeof(V));
}
template <typename V>
__device__ __forceinline__ void store_raw(void* p, const void* local) {
    V w;
    memcpy(&w, local, sizeof(V));
    *reinterpret_cast<V*>(p) = w;
}

// K consecutive values of T (K * sizeof(T) a multiple of 8, p aligned to min(16, K * sizeof(T)))
// as float32, in 16-byte (or 8-byte) loads.
template <typename T, int K>
__device__ __forceinline__ void load_vec(const T* p, float* v) {
    static_assert((K * sizeof(T)) % 8 == 0, "vector load needs whole 8-byte words");
    constexpr int WORD = (K * sizeof(T)) % 16 == 0 ? 16 : 8;
    constexpr int PER = WORD / sizeof(T);
#pragma unroll
    for (int i = 0; i < K / PER; ++i) {
        T t[PER];
        if (WORD == 16) {
            load_raw<uint4>(p + i * PER, t);
        } else {
            load_raw<uint2>(p + i * PER, t);
        }
#pragma unroll
        for (int j = 0; j < PER; ++j) v[i * PER + j] = to_f32(t[j]);
    }
}

// x / s for 32-bit unsigned x and a divisor s (1 <= s < 2^32) fixed for a whole kernel, in five
// integer instructions instead of a division sequence per value (Granlund and Montgomery's
// round-up method): with l = ceil(log2 s), m = floor(2^32 (2^l - s) / s) + 1 (< 2^32) and
// t = umulhi(m, x): x / s = (t + ((x - t) >> min(l, 1))) >> max(l - 1, 0), exact for every x.
struct DivU32 {
    unsigned m;
    int sh1, sh2;
    __device__ explicit DivU32(unsigned long long s) {
        int l = 0;
        while (l < 32 && (1ull << l) < s) ++l;
        m = (unsigned)((((1ull << l) - s) << 32) / s + 1);
        sh1 = l < 1 ? l : 1;
        sh2 = l > 1 ? l - 1 : 0;
    }
    __device__ __forceinline__ unsigned operator()(unsigned x) const {
        const unsigned t = (unsigned)(((unsigned long long)m * x) >> 32);
        return (t + ((x - t) >> sh1)) >> sh2;
    }
};

__device__ __forceinline__ long long thread_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long thread_count() { return (long long)gridDim.x * blockDim.x; }

}  // namespace gq
