// host_emulation.h: the prelude shared by tests/host_emulation.cpp and tests/host_emulation_warps.cpp,
// which compile the CUDA kernels with the host compiler: the CUDA keywords as no-op macros, the
// vector types and __half (its bits) the kernels use, kernels/quant_math.cuh, the __half helpers
// built on it, and GQ_DISPATCH. Each .cpp then defines its own thread indices (Dim), the warp
// intrinsics and atomics it emulates, and includes the kernel files. Include the standard headers
// a .cpp needs before this one (the macros below would rewrite them).

#pragma once

#include <cstdint>
#include <cstring>

#define GQ_HOST_EMULATION 1
#define __global__
#define __launch_bounds__(...)
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __align__(n) alignas(n)

struct uint2 { unsigned x, y; };
struct uint4 { unsigned x, y, z, w; };
struct float4 { float x, y, z, w; };
struct __half { unsigned short bits; };

#include "quant_math.cuh"

inline float __half2float(__half h) { return gq::float_decode(h.bits, gq::FP16); }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }

// dtype: 0 float, 1 float16 (bits), 2 double.
#define GQ_DISPATCH(dtype, CALL)                                                   \
    switch (dtype) {                                                               \
    case 0: { typedef float T; CALL; break; }                                      \
    case 1: { typedef __half T; CALL; break; }                                     \
    default: { typedef double T; CALL; break; }                                    \
    }
