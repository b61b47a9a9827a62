// codecs.cuh: the codecs of kernels/quantize.cu, one per scheme family and direction. An encoder's
// pack(v, col, d) turns EPC float32 values (columns col.., pads past d) into one code unit; a
// decoder's unpack(code, row, col, v) writes the EPC values of one code unit; CPT code units make
// one task of the walks in quantize.cu. The per-element math is quant_math.cuh's.

#pragma once

#include "device_io.cuh"
#include "quant_math.cuh"
#if !defined(GQ_HOST_EMULATION)
#include <cuda_fp8.h>
#endif

namespace {

// ----- scalar ---------------------------------------------------------------------------------
// params: one gq::ScalarParams per range (1 for granularity "tensor", d for "dimension").
// R >= 0 fixes the rounding at compile time (the kernels instantiate all four, so the per-element
// switch folds away); R = -1 reads it at run time. PD = 0 fixes one range for every column (the
// flat walks), -1 reads per_dim at run time.
template <int EPC_, int R = -1, int PD = -1>
struct ScalarCodec {
    typedef unsigned char code_t;
    static constexpr int EPC = EPC_;  // 1: one byte per value (8 bits); 2: nibbles
    static constexpr int CPT = 4 / EPC_;
    const gq::ScalarParams* params;
    int per_dim, rounding, is_signed, high_first;
    long long dcols;          // d
    gq::ScalarParams tensor;  // params[0], loaded once per thread (granularity "tensor")

    __device__ __forceinline__ gq::ScalarParams at(long long col) const {
        return (PD >= 0 ? PD : per_dim) ? params[col] : tensor;
    }
    __device__ __forceinline__ ScalarCodec<EPC_, R, 0> one_range() const {
        return {params, 0, rounding, is_signed, high_first, dcols, tensor};
    }
    __device__ __forceinline__ int mode() const { return R >= 0 ? R : rounding; }

    __device__ __forceinline__ code_t pack(const float* v, long long col, long long d) const {
        return pack_ranges(v, at(col), EPC == 2 && col + 1 < d ? at(col + 1) : tensor, col + 1 < d);
    }
    // The code unit of v under range a (and b for a second nibble, present when `second`).
    __device__ __forceinline__ code_t pack_ranges(const float* v, const gq::ScalarParams& a, const gq::ScalarParams& b,
                                                  bool second) const {
        if (EPC == 1) return gq::level_to_byte(gq::scalar_level(v[0], mode(), 8, a), is_signed);
        const unsigned lo = gq::nibble_of_level(gq::scalar_level(v[0], mode(), 4, a), is_signed);
        const unsigned hi = second ? gq::nibble_of_level(gq::scalar_level(v[1], mode(), 4, b), is_signed) : 0u;
        return gq::pack_nibbles(lo, hi, high_first);
    }

    // This codec on the N columns col0.. of one thread (encode_columns, decode_columns), their ranges
    // loaded once into registers (columns past d take range 0; their codes and values are not stored).
    template <int N>
    struct Fixed {
        typedef unsigned char code_t;
        static constexpr int EPC = EPC_, CPT = 4 / EPC_;
        const ScalarCodec& codec;
        long long col0;
        gq::ScalarParams p[N];
        __device__ __forceinline__ code_t pack(const float* v, long long col, long long d) const {
            const int k = (int)(col - col0);  // a constant once the task's loop is unrolled
            return codec.pack_ranges(v, p[k], p[EPC == 2 ? k + 1 : k], col + 1 < d);
        }
        __device__ __forceinline__ void unpack(code_t c, long long, long long col, float* v) const {
            const int k = (int)(col - col0);
            codec.unpack_ranges(c, p[k], p[EPC == 2 ? k + 1 : k], v);
        }
    };
    template <int N>
    __device__ __forceinline__ Fixed<N> fixed_columns(long long col0, long long d) const {
        Fixed<N> f{*this, col0, {}};
#pragma unroll
        for (int k = 0; k < N; ++k) f.p[k] = at(col0 + k < d ? col0 + k : 0);
        return f;
    }

    __device__ __forceinline__ void unpack(code_t c, long long, long long col, float* v) const {
        // a pad nibble (past d) decodes with any range
        unpack_ranges(c, at(col), at(EPC == 2 && col + 1 < dcols ? col + 1 : col), v);
    }
    // The EPC values of code unit c under range a (and b for the second nibble).
    __device__ __forceinline__ void unpack_ranges(code_t c, const gq::ScalarParams& a, const gq::ScalarParams& b,
                                                  float* v) const {
        if (EPC == 1) {
            v[0] = gq::scalar_value(gq::byte_to_level(c, is_signed), mode(), 8, a);
            return;
        }
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int u = gq::level_of_nibble(gq::unpack_nibble(c, k, high_first), is_signed);
            v[k] = gq::scalar_value(u, mode(), 4, k ? b : a);
        }
    }
};

// 8-bit codes with one range decode through a table of the 256 values: filled by the block with the
// codec's own unpack (so bit for bit the same), then one shared-memory load per value instead of the
// per-value math (a float64 division for half_away).
struct TableDecoder {
    typedef unsigned char code_t;
    static constexpr int EPC = 1;
    static constexpr int CPT = 4;
    const float* table;
    __device__ __forceinline__ void unpack(code_t c, long long, long long, float* v) const { v[0] = table[c]; }
};

// ----- binary ---------------------------------------------------------------------------------
// is_signed: the stored byte is the packed byte with its top bit flipped (offset encoding, b - 128).
struct BinaryCodec {
    typedef unsigned char code_t;
    static constexpr int EPC = 8;
    static constexpr int CPT = 1;  // 8 values in, one byte out per task
    const float* thresholds;  // d values, or null for zero thresholds
    int big, is_signed;

    __device__ __forceinline__ code_t pack(const float* v, long long col, long long d) const {
        unsigned b = 0;
        if (col + 8 <= d) {  // a whole byte inside the row
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                const float thr = thresholds ? thresholds[col + t] : 0.0f;
                b |= gq::gt_f32(v[t], thr) ? gq::bit_mask(t, big) : 0u;
            }
        } else {
            for (int t = 0; t < 8 && col + t < d; ++t) {
                const float thr = thresholds ? thresholds[col + t] : 0.0f;
                b |= gq::gt_f32(v[t], thr) ? gq::bit_mask(t, big) : 0u;
            }
        }
        return (code_t)(is_signed ? (b ^ 0x80u) : b);
    }

    __device__ __forceinline__ void unpack(code_t c, long long, long long, float* v) const {
        const unsigned b = is_signed ? (c ^ 0x80u) : c;
#pragma unroll
        for (int t = 0; t < 8; ++t) v[t] = (b & gq::bit_mask(t, big)) ? 1.0f : -1.0f;
    }
};

// ----- float casts ----------------------------------------------------------------------------
// F, S >= 0 fix the format and saturation at compile time (the encode kernels instantiate every
// combination, so the integer conversion folds its constants); -1 reads them at run time.
template <typename C, int F = -1, int S = -1>
struct FloatCodec {
    typedef C code_t;
    static constexpr int EPC = 1;
    static constexpr int CPT = 4;
    int format, saturate;

    __device__ __forceinline__ code_t pack(const float* v, long long, long long) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
        if (F == gq::E4M3 || F == gq::E5M2) return fp8_by_hardware(v[0]);
#endif
        return (code_t)gq::float_encode(v[0], F >= 0 ? F : format, S >= 0 ? S != 0 : saturate != 0);
    }
    __device__ __forceinline__ void unpack(code_t c, long long, long long, float* v) const {
        v[0] = gq::float_decode(c, F >= 0 ? F : format);
    }

    // The fp8 code of x from `satfinite`, a conversion that is exact for every non-NaN x: round to nearest
    // even, clamped to the largest finite code (on sm_89+ the hardware's cvt.rn.satfinite.e4m3x2/e5m2x2.f32
    // in fp8_by_hardware; the host tests pass gq::float_encode with saturation, and compare with
    // gq::float_encode over every class of float32). The cases where gq::float_encode differs are fixed
    // first: NaN becomes the canonical NaN with its sign, and without saturation the values that round
    // past the largest finite code become NaN (e4m3fn: |x| > 464) or Inf (e5m2: |x| >= 61440), as
    // ml_dtypes does.
    template <typename Satfinite>
    __device__ __forceinline__ code_t fp8_fixed_up(float x, Satfinite satfinite) const {
        const gq_u32 u = gq::bits_of(x), a = u & 0x7fffffffu, sign = (u >> 24) & 0x80u;
        const gq::FormatInfo f = gq::format_info(F);
        if (a > 0x7f800000u) return (code_t)(sign | f.nan_bits);
        if (S == 0) {
            const gq_u32 overflow = F == gq::E4M3 ? 0x43e80000u : 0x47700000u;  // 464 (exclusive), 61440
            if (F == gq::E4M3 ? a > overflow : a >= overflow) return (code_t)(sign | (F == gq::E4M3 ? 0x7fu : 0x7cu));
        }
        return (code_t)satfinite(x);
    }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    __device__ __forceinline__ code_t fp8_by_hardware(float x) const {
        return fp8_fixed_up(x, [](float v) {
            return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, F == gq::E4M3 ? __NV_E4M3 : __NV_E5M2);
        });
    }
#endif
};

// ----- absmax (decode side; encode is the warp kernel below) ---------------------------------
// Where the scale of a value comes from, fixed per launch: one scale for the tensor, one per row
// (groups == 1), or one per block of seg_len values, the block found by gq::DivU32 (multiply and
// shifts) when every column index fits in 32 bits, else by a 64-bit division. SEGMENT_QUADS: any of
// these whose segments are whole float4s, decoded as one flat array (segment_quads_decode, walks.cuh).
enum ScaleLayout { TENSOR_SCALE = 0, ROW_SCALE = 1, BLOCK_SCALE = 2, BLOCK_SCALE_WIDE = 3, SEGMENT_QUADS = 4 };

template <int EPC_, int LAYOUT>
struct AbsmaxDecoder {
    typedef unsigned char code_t;
    static constexpr int EPC = EPC_;
    static constexpr int CPT = 4 / EPC_;
    const float* scales;  // (n, groups), or one scale for every value (tensor)
    long long groups, seg_len;
    int high_first;
    gq::DivU32 block_of;  // col / seg_len (BLOCK_SCALE)

    __device__ __forceinline__ float scale(long long row, long long col) const {
        if (LAYOUT == TENSOR_SCALE) return scales[0];
        if (LAYOUT == ROW_SCALE) return scales[row];
        return scales[row * groups + (LAYOUT == BLOCK_SCALE ? (long long)block_of((unsigned)col) : col / seg_len)];
    }
    __device__ __forceinline__ void unpack(code_t c, long long row, long long col, float* v) const {
        if (EPC == 1) {
            v[0] = gq::absmax_value((int)(signed char)c, scale(row, col));
            return;
        }
        const float s0 = scale(row, col);
        const bool own = LAYOUT >= BLOCK_SCALE && col + 1 < groups * seg_len;  // the pair may span two blocks
        const float s1 = own ? scale(row, col + 1) : s0;
        v[0] = gq::absmax_value(gq::sign_extend4(gq::unpack_nibble(c, 0, high_first)), s0);
        v[1] = gq::absmax_value(gq::sign_extend4(gq::unpack_nibble(c, 1, high_first)), s1);
    }
};

}  // namespace
