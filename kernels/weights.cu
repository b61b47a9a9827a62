// weights.cu: the kernels of the weight-checkpoint families "gguf" (llama.cpp Q8_0 / Q4_0 blocks) and
// "scaled_fp8" (compressed-tensors FP8 with a float32 scale per output channel or per tensor). The
// formulas are those of gpuquant/schemes/gguf.py and scaled_fp8.py, bit for bit; every float operation
// goes through quant_math.cuh (no -ftz, no contraction), fp16 through its integer converters, fp8 codes
// by their bits (fp8_value) and by a saturating conversion (fp8_saturated_word: the paired hardware one
// on sm_89+, checked on a GPU against the reference; quant_math.cuh's integer one, which the host tests
// check, elsewhere).
//
// gguf: one thread per block of 32 values: 8 float4 loads (128 bytes in flight, no shuffle), the
// block's scale and its inverse by exact division (two per block, none per value), its 34 or 18 bytes
// written by that thread in 32-bit stores; decode reads them back alike and stores float4s.
// scaled_fp8: scaled_fp8_scales (one warp per row: max |w|, the row's scale, the refusal of non-finite
// rows) then scaled_fp8_encode (a warp per row, float4 by float4, the row's divisor made once) and
// scaled_fp8_decode (float4 by float4, a row's scale loaded once per float4: walks.cuh).
// A row holding NaN or ±Inf is refused: its index goes to bad_row by atomicMin (the launcher raises);
// the codes of such a launch are not used.

#include "device_io.cuh"
#include "walks.cuh"

namespace gq {

constexpr int GGUF_QK = 32;

// Bytes of one block: fp16 scale + 32 int8 codes (Q8_0) or 16 bytes of nibbles (Q4_0).
__device__ constexpr int gguf_block_bytes(bool q4) { return q4 ? 2 + GGUF_QK / 2 : 2 + GGUF_QK; }

// id = d ? f32(1 / d) : 0 (its bits matter: exact division).
__device__ __forceinline__ float gguf_inverse(float dscale) {
    return is_zero(dscale) ? 0.0f : div_exact(1.0f, dscale);
}

// Q8_0 code of v (roundf(f32(v * id))), for a finite id (the codes of a block whose id overflowed are 0).
__device__ __forceinline__ unsigned gguf_q8_code(float v, float id) {
    return (unsigned)int_of(round_half_away_f32(mul_f32(v, id))) & 0xffu;
}

// Q4_0 level of v (min(15, trunc(f32(v * id) + 8.5))), for a finite id (else the levels are 0). The
// sum is in [0, 16.5).
__device__ __forceinline__ unsigned gguf_q4_level(float v, float id) {
    const int t = int_of(trunc_f32(add_f32(mul_f32(v, id), 8.5f)));
    return (unsigned)(t < 15 ? t : 15);
}

// a * b with the NaN the reference's float32 product has on x86-64 (SSE): a NaN operand comes back
// quietened (a's first), Inf * 0 gives the default NaN 0xffc00000; the GPU's own NaN would be
// 0x7fffffff. Only the decoders' products of arbitrary code bytes can be NaN.
// Selects, no branch: the NaN is chosen before it is known whether r is one.
__device__ __forceinline__ float mul_as_host(float a, float b) {
    const gq_u32 nan = is_nan(a) ? bits_of(a) | 0x00400000u : is_nan(b) ? bits_of(b) | 0x00400000u : 0xffc00000u;
    const float r = mul_f32(a, b);
    return is_nan(r) ? float_of(nan) : r;
}

// gq::float_decode(c, F) of an fp8 code (F = E4M3 or E5M2) in fewer operations: the code's exponent and
// mantissa bits placed at the top of a float32's (shifted by 23 - mbits) are the value times
// 2^(bias - 127), normal and subnormal codes alike, so one exact product by 2^(127 - bias) rescales
// them; the sign is the code's top bit. Codes with all exponent bits set (e4m3fn: also all mantissa
// bits) give NaN 0x7fc00000 with the code's sign, e5m2's mantissa 0 gives ±Inf.
template <int F>
__device__ __forceinline__ float fp8_value(gq_u32 c) {
    const gq_u32 mag = c & 0x7fu, sign = (c & 0x80u) << 24;
    const gq_u32 special = F == E4M3 ? (mag == 0x7fu ? 0x7fc00000u : 0u)
                                     : (mag >= 0x7cu ? (mag == 0x7cu ? 0x7f800000u : 0x7fc00000u) : 0u);
    const float unit = float_of(F == E4M3 ? 0x7b800000u : 0x77800000u);  // 2^120, 2^112
    const float scaled = mul_f32(float_of(mag << (F == E4M3 ? 20 : 21)), unit);
    return float_of(sign | (special ? special : bits_of(scaled)));
}

}  // namespace gq

// The 32 values of a block as float32: 16-byte loads when src is aligned to 16 bytes.
template <typename T>
__device__ __forceinline__ void gguf_load(const T* src, float (&v)[gq::GGUF_QK]) {
    if (gq::aligned(src, 16)) {
        gq::load_vec<T, gq::GGUF_QK>(src, v);
    } else {
#pragma unroll
        for (int i = 0; i < gq::GGUF_QK; ++i) v[i] = gq::to_f32(src[i]);
    }
}

// A block's bytes at dst: its fp16 scale `half`, then the W code words (4 code bytes each, the first
// in the low byte). dst 2 mod 4: a 16-bit store, then one 32-bit store per word; dst 0 mod 4: 32-bit
// stores of the words shifted by two bytes (the scale in the first), then a 16-bit tail; odd: bytes.
template <int W>
__device__ __forceinline__ void gguf_store(unsigned char* dst, gq_u32 half, const gq_u32 (&word)[W]) {
    const unsigned misalign = (unsigned)(reinterpret_cast<unsigned long long>(dst) & 3u);
    if (misalign == 2u) {
        const unsigned short head = (unsigned short)half;
        gq::store_raw<unsigned short>(dst, &head);
#pragma unroll
        for (int i = 0; i < W; ++i) gq::store_raw<gq_u32>(dst + 2 + 4 * i, &word[i]);
    } else if (misalign == 0u) {
        gq_u32 carry = half;  // the two bytes before word i's last two
#pragma unroll
        for (int i = 0; i < W; ++i) {
            const gq_u32 out = (carry & 0xffffu) | (word[i] << 16);
            gq::store_raw<gq_u32>(dst + 4 * i, &out);
            carry = word[i] >> 16;
        }
        const unsigned short tail = (unsigned short)carry;
        gq::store_raw<unsigned short>(dst + 4 * W, &tail);
    } else {
        dst[0] = (unsigned char)(half & 0xffu);
        dst[1] = (unsigned char)(half >> 8);
#pragma unroll
        for (int k = 0; k < 4 * W; ++k) dst[2 + k] = (unsigned char)(word[k / 4] >> (8 * (k % 4)));
    }
}

// Q4: 0 Q8_0, 1 Q4_0. Blocks are walked as (row, block of the row) by increments (TaskWalk): the row
// of a refused block needs no division.
template <typename T, int Q4>
__device__ __forceinline__ void gguf_encode_path(const T* __restrict__ x, unsigned char* __restrict__ codes,
                                                 long long n, long long d, int, unsigned long long* bad_row) {
    constexpr int BYTES = gq::gguf_block_bytes(Q4), W = (BYTES - 2) / 4;
    for (TaskWalk w(n, d / gq::GGUF_QK); w.more(); w.next()) {
        float v[gq::GGUF_QK];
        gguf_load(x + w.task * gq::GGUF_QK, v);  // rows are d = 32 * blocks values: block b starts at 32 b
        // max |v| as the largest bit pattern of |v| (non-finite patterns are above every finite one) and,
        // for Q4_0, the first value of that magnitude (numpy's argmax; llama.cpp's scan starts from +0
        // instead, which differs only for a block of zeros whose first one is -0)
        gq_u32 m = 0u;
        float mx = v[0];
#pragma unroll
        for (int i = 0; i < gq::GGUF_QK; ++i) {
            const gq_u32 a = gq::bits_of(v[i]) & 0x7fffffffu;
            if (Q4) mx = a > m ? v[i] : mx;  // strict: the first of equal magnitudes keeps its sign
            m = a > m ? a : m;
        }
        if (m >= 0x7f800000u) {
            atomicMin(bad_row, (unsigned long long)w.row);
            continue;
        }
        const float dscale = Q4 ? gq::div_exact(mx, -8.0f) : gq::div_exact(gq::float_of(m), 127.0f);
        const float id = gq::gguf_inverse(dscale);
        gq_u32 word[W] = {};  // a block whose id overflowed (tiny values) has codes 0 (Q8_0) and nibbles 0 (Q4_0)
        if (gq::is_finite(id)) {
#pragma unroll
            for (int i = 0; i < W; ++i) {
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const int j = 4 * i + k;
                    const gq_u32 byte = Q4 ? gq::gguf_q4_level(v[j], id) |
                                                 (gq::gguf_q4_level(v[j + gq::GGUF_QK / 2], id) << 4)
                                           : gq::gguf_q8_code(v[j], id);
                    word[i] |= byte << (8 * k);
                }
            }
        }
        gguf_store(codes + w.task * BYTES, gq::float_encode(dscale, gq::FP16, false), word);
    }
}

template <typename T>
__global__ void __launch_bounds__(256, 4)
    gguf_encode(const T* __restrict__ x, unsigned char* __restrict__ codes, long long n, long long d, int q4,
                unsigned long long* bad_row) {
    if (q4) {
        gguf_encode_path<T, 1>(x, codes, n, d, q4, bad_row);
    } else {
        gguf_encode_path<T, 0>(x, codes, n, d, q4, bad_row);
    }
}

// The block bytes gguf_store writes, read back the same way: the fp16 scale into half, the code words.
template <int W>
__device__ __forceinline__ void gguf_block_load(const unsigned char* src, gq_u32& half, gq_u32 (&word)[W]) {
    const unsigned misalign = (unsigned)(reinterpret_cast<unsigned long long>(src) & 3u);
    if (misalign == 2u) {
        unsigned short head;
        gq::load_raw<unsigned short>(src, &head);
        half = head;
#pragma unroll
        for (int i = 0; i < W; ++i) gq::load_raw<gq_u32>(src + 2 + 4 * i, &word[i]);
    } else if (misalign == 0u) {
        gq_u32 in[W];
#pragma unroll
        for (int i = 0; i < W; ++i) gq::load_raw<gq_u32>(src + 4 * i, &in[i]);
        unsigned short tail;
        gq::load_raw<unsigned short>(src + 4 * W, &tail);
        half = in[0] & 0xffffu;
#pragma unroll
        for (int i = 0; i < W; ++i) word[i] = (in[i] >> 16) | ((i + 1 < W ? in[i + 1] : (gq_u32)tail) << 16);
    } else {
        half = (gq_u32)src[0] | ((gq_u32)src[1] << 8);
#pragma unroll
        for (int i = 0; i < W; ++i) {
            word[i] = (gq_u32)src[2 + 4 * i] | ((gq_u32)src[3 + 4 * i] << 8) | ((gq_u32)src[4 + 4 * i] << 16) |
                      ((gq_u32)src[5 + 4 * i] << 24);
        }
    }
}

// x' = f32(f32(fp16 d) * q): one thread per block, its bytes in 32-bit loads, its 32 values in float4
// stores (value by value when y is not aligned to 16 bytes). Q4: 0 Q8_0, 1 Q4_0.
template <int Q4>
__device__ __forceinline__ void gguf_decode_path(const unsigned char* __restrict__ codes, float* __restrict__ y,
                                                 long long n, long long d, int) {
    constexpr int BYTES = gq::gguf_block_bytes(Q4), W = (BYTES - 2) / 4;
    const long long blocks = n * (d / gq::GGUF_QK);
    for (long long b = gq::thread_index(); b < blocks; b += gq::thread_count()) {
        gq_u32 half, word[W];
        gguf_block_load(codes + b * BYTES, half, word);
        const float dscale = gq::float_decode(half, gq::FP16);
        __align__(16) float v[gq::GGUF_QK];
#pragma unroll
        for (int j = 0; j < gq::GGUF_QK; ++j) {
            const int k = Q4 ? j % (gq::GGUF_QK / 2) : j;  // Q4_0: byte j holds values j (low) and j + 16 (high)
            const gq_u32 byte = (word[k / 4] >> (8 * (k % 4))) & 0xffu;
            const int q = Q4 ? (int)((j < gq::GGUF_QK / 2 ? byte : byte >> 4) & 0xfu) - 8 : (int)(signed char)byte;
            v[j] = gq::mul_as_host(dscale, (float)q);
        }
        float* dst = y + b * gq::GGUF_QK;  // rows are d = 32 * blocks values: block b starts at 32 b
        if (gq::aligned(dst, 16)) {
#pragma unroll
            for (int i = 0; i < gq::GGUF_QK / 4; ++i) gq::store_raw<float4>(dst + 4 * i, v + 4 * i);
        } else {
#pragma unroll
            for (int j = 0; j < gq::GGUF_QK; ++j) dst[j] = v[j];
        }
    }
}

__global__ void __launch_bounds__(256, 4)
    gguf_decode(const unsigned char* __restrict__ codes, float* __restrict__ y, long long n, long long d, int q4) {
    if (q4) {
        gguf_decode_path<1>(codes, y, n, d, q4);
    } else {
        gguf_decode_path<0>(codes, y, n, d, q4);
    }
}

// 1 + the bits of the largest float32 x >= 0 with x / s <= 2^-150, i.e. RN(x / s) = 0, for s > 0 (+Inf:
// every finite x; NaN: none, 0): the bits of RD(s * 2^-150), exact by integers (s of biased exponent e
// >= 151: its bits less 150 exponents; below: its significand shifted into the subnormal range, 0 from
// a shift of 24 on). Selects, no branch.
__device__ __forceinline__ gq_u32 zero_quotient_limit(float s) {
    const gq_u32 u = gq::bits_of(s) & 0x7fffffffu, e = u >> 23, shift = 151u - e;
    const gq_u32 below = shift < 24u ? ((u & 0x007fffffu) | 0x00800000u) >> shift : 0u;
    const gq_u32 limit = (e >= 151u ? u - (150u << 23) : below) + 1u;
    return u > 0x7f800000u ? 0u : u == 0x7f800000u ? 0x7f800000u : limit;
}

// Per row, one warp a row (blockDim a multiple of 32): max |w| as the largest bit pattern of |w| (the
// order of non-negative floats; Inf and NaN patterns are above every finite one, so the row is finite
// iff that maximum is below 0x7f800000, and it is refused then) and, when the scale is per row,
// f32(amax / M) (exact division: its bits are stored) with FLT_EPSILON for a zero scale, into scales[row].
template <typename T>
__global__ void scaled_fp8_scales(const T* __restrict__ x, float* __restrict__ scales, long long n, long long d,
                                  float max_finite, int per_row, unsigned long long* bad_row) {
    const long long lane = (long long)(threadIdx.x & 31u);
    const long long warps = gq::thread_count() / 32;
    for (long long row = gq::thread_index() / 32; row < n; row += warps) {  // the same rows for a whole warp
        const T* src = x + row * d;
        gq_u32 m = 0u;
        for (long long i = lane; i < d; i += 32) {
            const gq_u32 a = gq::bits_of(gq::to_f32(src[i])) & 0x7fffffffu;
            m = a > m ? a : m;
        }
        m = __reduce_max_sync(0xffffffffu, m);
        if (lane != 0) continue;
        if (m >= 0x7f800000u) {
            atomicMin(bad_row, (unsigned long long)row);
        } else if (per_row) {
            const float s = gq::div_exact(gq::float_of(m), max_finite);
            scales[row] = gq::is_zero(s) ? gq::float_of(0x34000000u) : s;  // FLT_EPSILON = 2**-23
        }
    }
}

// A scale s as the encode divides by it: its Divisor {p2, sp, r} and zero_quotient_limit(s); FINITE: s is
// finite and nonzero (a row's scale: straight-line code), else any s (a tensor scale).
struct Fp8Divisor {
    gq::Divisor D;
    gq_u32 zero_limit;
};
template <bool FINITE>
__device__ __forceinline__ Fp8Divisor fp8_divisor(float s) {
    return {FINITE ? gq::finite_divisor(s) : gq::make_divisor(s), zero_quotient_limit(s)};
}

// fp8(clip(f32(w / s) + 0, -M, M)) needs, for D = fp8_divisor(s), the quotient of quotient_for_rounding
// cast with saturation (M is the format's largest finite value), except that a quotient which rounds to
// ±0 gives +0 (the + 0), found exactly by |w| against D's limit. Out of its band q is equivalent: |w / s|
// < 2^-36 casts to ±0 with the quotient's sign (a nonzero quotient keeps it through the + 0, and q0 has it
// even when it underflows), |w / s| > 2^59 clips to ±M. (The + 0 cannot be applied to q itself: the q0 of
// a quotient that rounds to -0 may be nonzero.) NaN cannot occur: non-finite rows are refused, s > 0.
__device__ __forceinline__ float scaled_fp8_quotient(float w, const Fp8Divisor& D) {
    const float q = gq::quotient_for_rounding(w, D.D);
    return (gq::bits_of(w) & 0x7fffffffu) < D.zero_limit ? 0.0f : q;
}

// The saturating fp8 codes (format F) of 4 non-NaN floats as one little-endian word: on sm_89+ two paired
// conversions (cvt.rn.satfinite.e4m3x2/e5m2x2.f32: nearest even, clamped to ±M, as gq::float_encode with
// saturation, which the host build uses).
template <int F>
__device__ __forceinline__ gq_u32 fp8_saturated_word(const float (&q)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    const __nv_fp8_interpretation_t kind = F == gq::E4M3 ? __NV_E4M3 : __NV_E5M2;
    const gq_u32 lo = __nv_cvt_float2_to_fp8x2(make_float2(q[0], q[1]), __NV_SATFINITE, kind);
    const gq_u32 hi = __nv_cvt_float2_to_fp8x2(make_float2(q[2], q[3]), __NV_SATFINITE, kind);
    return lo | (hi << 16);
#else
    gq_u32 word = 0u;
#pragma unroll
    for (int k = 0; k < 4; ++k) word |= gq::float_encode(q[k], F, true) << (8 * k);
    return word;
#endif
}

// A tensor scale's encoder for the walks of walks.cuh (encode_flat, encode_rows).
template <int F>
struct ScaledFp8Encoder {
    typedef unsigned char code_t;
    static constexpr int EPC = 1, CPT = 4;
    Fp8Divisor D;
    __device__ __forceinline__ code_t pack(const float* v, long long, long long) const {
        const float q = scaled_fp8_quotient(v[0], D);
        return FloatCodec<code_t, F, 1>{F, 1}.pack(&q, 0, 1);
    }
};

// Row scales, rows of whole float4s (x and codes aligned, d / 4 below 2^31: 32-bit indices in a row):
// groups of G lanes per row (G = 32, or every thread of a grid of fewer or of a non-multiple of 32),
// the row's divisor made once per lane, then the lanes on consecutive float4s of the row, UNROLL in
// flight, 4 codes stored at once.
template <typename T, int F>
__device__ void scaled_fp8_encode_warps(const T* __restrict__ x, unsigned char* __restrict__ codes,
                                        const float* __restrict__ scales, long long n, long long d) {
    const unsigned G = thread_count() % 32 == 0 ? 32u : (unsigned)thread_count(), quads = (unsigned)(d / 4);
    const unsigned lane = (unsigned)(thread_index() % G);
    for (long long row = thread_index() / G; row < n; row += thread_count() / G) {
        const Fp8Divisor D = fp8_divisor<true>(scales[row]);
        const T* src = x + row * d;
        unsigned char* dst = codes + row * d;
        for (unsigned j0 = lane; j0 < quads; j0 += G * UNROLL) {
            float v[UNROLL][4];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (j0 + u * G < quads) load_vec<T, 4>(src + 4 * (j0 + u * G), v[u]);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (j0 + u * G < quads) {
                    float t[4];
#pragma unroll
                    for (int k = 0; k < 4; ++k) t[k] = scaled_fp8_quotient(v[u][k], D);
                    const gq_u32 word = fp8_saturated_word<F>(t);
                    move_out<4>(dst + 4 * (j0 + u * G), &word);
                }
            }
        }
    }
}

// WARPS: 1 scaled_fp8_encode_warps (row scales, rows of whole float4s, aligned buffers); 0 a tensor scale
// by encode_flat (aligned) or encode_rows, row scales value by value; -1 chosen here. No division, and
// no buffer besides the scales (a CUDA graph can capture the launch).
template <typename T, int F, int WARPS = -1>
__device__ __forceinline__ void scaled_fp8_encode_path(const T* __restrict__ x, unsigned char* __restrict__ codes,
                                                       const float* __restrict__ scales, long long n, long long d,
                                                       int per_row, int) {
    if (WARPS >= 0 ? WARPS == 1 : per_row && d % 4 == 0 && d / 4 < (1LL << 31) && flat_ok(x, codes)) {
        scaled_fp8_encode_warps<T, F>(x, codes, scales, n, d);
    } else if (!per_row) {
        const ScaledFp8Encoder<F> enc{fp8_divisor<false>(scales[0])};
        if (flat_ok(x, codes)) {
            encode_flat(enc, x, codes, n * d);
        } else {
            encode_rows(enc, x, codes, n, d, d);
        }
    } else {
        for (TaskWalk w(n, d); w.more(); w.next()) {
            const float q = scaled_fp8_quotient(to_f32(x[w.task]), fp8_divisor<true>(scales[w.row]));
            codes[w.task] = (unsigned char)gq::float_encode(q, F, true);
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(256, 4)
    scaled_fp8_encode(const T* __restrict__ x, unsigned char* __restrict__ codes, const float* __restrict__ scales,
                      long long n, long long d, int per_row, int format) {
    if (format == gq::E4M3) {
        scaled_fp8_encode_path<T, gq::E4M3>(x, codes, scales, n, d, per_row, format);
    } else {
        scaled_fp8_encode_path<T, gq::E5M2>(x, codes, scales, n, d, per_row, format);
    }
}

// w' = f32(f32(q) * s) for fp8 codes of format F, s = scales[row] (per_row) or scales[0]: a decoder of
// the row walk (decode_rows) and of the flat walk over float4s (segment_quads_decode: a row, or every
// value for a tensor scale, is one segment).
template <int F>
struct ScaledFp8Decoder {
    typedef unsigned char code_t;
    static constexpr int EPC = 1, CPT = 4, CODE_BYTES = 4;
    const float* scales;
    int per_row;
    __device__ __forceinline__ void unpack(code_t c, long long row, long long, float* v) const {
        v[0] = gq::mul_as_host(gq::fp8_value<F>(c), scales[per_row ? row : 0]);
    }
    __device__ __forceinline__ void quad(const unsigned char* c, float s, float* v) const {
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = gq::mul_as_host(gq::fp8_value<F>(c[k]), s);
    }
};

// QUADS: 1 the flat walk, 0 the row walk (unaligned buffers, rows of d % 4 != 0), -1 chosen here.
template <int F, int QUADS = -1>
__device__ __forceinline__ void scaled_fp8_decode_path(const unsigned char* __restrict__ codes,
                                                       const float* __restrict__ scales, float* __restrict__ y,
                                                       long long n, long long d, int per_row, int) {
    const ScaledFp8Decoder<F> dec{scales, per_row};
    const long long seg_len = per_row ? d : n * d;
    if (QUADS >= 0 ? QUADS == 1 : segment_quads_fit(n * d, seg_len) && aligned(codes, 4) && aligned(y, 16)) {
        segment_quads_decode(dec, codes, scales, y, n * d, seg_len);
    } else {
        decode_rows(dec, codes, y, n, d, d);
    }
}

__global__ void __launch_bounds__(256, 4)
    scaled_fp8_decode(const unsigned char* __restrict__ codes, const float* __restrict__ scales,
                      float* __restrict__ y, long long n, long long d, int per_row, int format) {
    if (format == gq::E4M3) {
        scaled_fp8_decode_path<gq::E4M3>(codes, scales, y, n, d, per_row, format);
    } else {
        scaled_fp8_decode_path<gq::E5M2>(codes, scales, y, n, d, per_row, format);
    }
}
