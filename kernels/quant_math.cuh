// quant_math.cuh: the per-element math of every gpuquant scheme, shared by the CUDA kernels
// (kernels/quantize.cu) and the host test library (tests/host_check.cpp).
//
// The formulas are those of gpuquant/schemes/*.py (the numpy reference, bit for bit).
//
// Floating point and -ftz (a deliberate decision): CuPy always compiles RawModules with
// -ftz=true, which makes plain C++ float arithmetic and comparisons flush subnormal inputs and
// results to zero. The reference never flushes. So every float operation whose inputs or result can
// be subnormal is written here as inline PTX *without* the .ftz modifier (add.rn.f32, div.rn.f32,
// setp.gt.f32, cvt.rni.f32.f32, cvt.rn.f32.f64, ...): IEEE round-to-nearest-even, no flushing, and
// never contracted into an FMA, whatever the compiler flags. Tests for zero and finiteness use the
// integer bit pattern. The narrow float formats (fp8 e4m3fn / e5m2, fp16, bf16) are converted with
// integer code only, so they too are independent of flags and architecture. On the host the same
// functions are plain C++ (build with -ffp-contract=off, no -ffast-math; x86-64 SSE is IEEE).

#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GQ_HD __host__ __device__ __forceinline__
#else
#include <cstdint>
#include <cstring>
#define GQ_HD inline
#endif

#if defined(__CUDACC_RTC__)
typedef unsigned int gq_u32;
typedef unsigned long long gq_u64;
#else
typedef uint32_t gq_u32;
typedef uint64_t gq_u64;
#endif

namespace gq {

// ---------------------------------------------------------------------------------------------
// Bit casts and IEEE operations (no FTZ, no FMA).
// ---------------------------------------------------------------------------------------------
GQ_HD gq_u32 bits_of(float x) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(x);
#else
    gq_u32 u;
    std::memcpy(&u, &x, 4);
    return u;
#endif
}

GQ_HD float float_of(gq_u32 u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float x;
    std::memcpy(&x, &u, 4);
    return x;
#endif
}

GQ_HD bool is_zero(float x) { return (bits_of(x) & 0x7fffffffu) == 0u; }
GQ_HD bool is_nan(float x) { return (bits_of(x) & 0x7fffffffu) > 0x7f800000u; }
GQ_HD bool is_finite(float x) { return (bits_of(x) & 0x7f800000u) != 0x7f800000u; }
GQ_HD float abs_f(float x) { return float_of(bits_of(x) & 0x7fffffffu); }

// add/sub/mul/div, round to nearest even; max/min (of a NaN and a number: the number). T is float or
// double, C its asm constraint ("f"/"d"), HOST the host's expression of a and b.
#ifdef __CUDA_ARCH__
#define GQ_BINOP(NAME, T, C, PTX, HOST)                                          \
    GQ_HD T NAME(T a, T b) {                                                     \
        T r;                                                                     \
        asm(PTX " %0, %1, %2;" : "=" C(r) : C(a), C(b));                         \
        return r;                                                                \
    }
#else
#define GQ_BINOP(NAME, T, C, PTX, HOST)                                          \
    GQ_HD T NAME(T a, T b) { return HOST; }
#endif
GQ_BINOP(add_f32, float, "f", "add.rn.f32", a + b)
GQ_BINOP(sub_f32, float, "f", "sub.rn.f32", a - b)
GQ_BINOP(mul_f32, float, "f", "mul.rn.f32", a * b)
GQ_BINOP(div_f32, float, "f", "div.rn.f32", a / b)
GQ_BINOP(max_f32, float, "f", "max.f32", __builtin_fmaxf(a, b))
GQ_BINOP(min_f32, float, "f", "min.f32", __builtin_fminf(a, b))
GQ_BINOP(add_f64, double, "d", "add.rn.f64", a + b)
GQ_BINOP(sub_f64, double, "d", "sub.rn.f64", a - b)
GQ_BINOP(mul_f64, double, "d", "mul.rn.f64", a * b)
GQ_BINOP(div_f64, double, "d", "div.rn.f64", a / b)
#undef GQ_BINOP

// min(max(x, 0), 1); NaN gives 0.
GQ_HD float clamp01_f32(float x) { return min_f32(max_f32(x, 0.0f), 1.0f); }

// Square root, round to nearest even, no flushing (sqrt.rn.f32 without .ftz; IEEE on the host).
GQ_HD float sqrt_f32(float x) {
#ifdef __CUDA_ARCH__
    float r;
    asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return __builtin_sqrtf(x);
#endif
}

// a * b + c with one rounding (nearest even, subnormals kept).
GQ_HD float fma_f32(float a, float b, float c) {
#ifdef __CUDA_ARCH__
    float r;
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
    return r;
#else
    return __builtin_fmaf(a, b, c);
#endif
}

// c - a * b with one rounding. The sign is flipped by bits (C++'s -a compiles to a flushing negate
// under -ftz=true); ptxas folds it into the FMA.
GQ_HD float fnma_f32(float a, float b, float c) { return fma_f32(float_of(bits_of(a) ^ 0x80000000u), b, c); }

// a < b and a > b, IEEE (false when either is NaN; subnormals compared exactly).
GQ_HD bool lt_f32(float a, float b) {
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("{ .reg .pred p; setp.lt.f32 p, %1, %2; selp.u32 %0, 1, 0, p; }" : "=r"(r) : "f"(a), "f"(b));
    return r != 0u;
#else
    return a < b;
#endif
}
GQ_HD bool gt_f32(float a, float b) { return lt_f32(b, a); }

// Exact widening, and round-to-nearest-even narrowing (subnormal results kept).
GQ_HD double f32_to_f64(float x) {
#ifdef __CUDA_ARCH__
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(x));
    return r;
#else
    return (double)x;
#endif
}
GQ_HD float f64_to_f32(double x) {
#ifdef __CUDA_ARCH__
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(x));
    return r;
#else
    return (float)x;
#endif
}

// ---------------------------------------------------------------------------------------------
// Division without the division routine (div.rn.f32 compiles to FFMAs and a CALL to a slow path).
// Divisor {p2, sp, r} of s, built once: x / s == (x * p2) / sp, p2 a power of two, sp = s * p2 exact,
// r = RN(1 / sp). s normal, biased exponent e: p2 = 2^(127 - e) (2^-127, subnormal, for e = 254),
// |sp| in [1, 2); s subnormal: p2 = 2^127, |sp| in [2^-22, 2); s = +-0: p2 = +Inf, sp = r = +-1;
// s = +-Inf: p2 = 0, sp = r = +-1; s NaN: p2 = NaN, sp = r = 1.
// quotient_for_rounding(x, D): a = x * p2, q0 = a * r, two corrections q += fma(-q, sp, a) * r. For
// |a| in [2^-59, 2^60] (one unsigned compare; NaN is outside) a is exact, |a / sp| in [2^-60, 2^83],
// nothing under- or overflows; q0 is within 1.5 ulp and its remainder, rounded once (not always
// exact), still makes q1 faithful, so q1's remainder is exact and q2 is RN(x / s) (Markstein: r
// within 1/2 ulp of 1 / sp, q1 within 1 ulp, exact remainder). Outside, q0
// is equivalent for rounding: |x / s| < 2^-36 gives |q0| < 2^-35, |x / s| > 2^59 gives |q0| > 2^58
// (or Inf), with the quotient's sign; NaN gives NaN, the special divisors IEEE's +-Inf / NaN / +-0.
// So f(q) == f(RN(x / s)) for every f constant on (0, 2^-35) and (2^58, Inf] per sign: floor or
// trunc then clip, rint then clip, rint(q + zp) then clip when |zp| <= 2^50.
// The reciprocal: rcp.approx.f32 (within 1 ulp) of the significand m in [1, 2), two Newton steps
// r += r * fma(-m, r, 1) and one fix-up, the exponent put back by bits; the host tests prove the
// result is RN(1 / m) for every m and every start within 3 ulp of it.
// div_exact(a, b): RN(a / b) bit for bit (subnormals kept), for a quotient whose bits matter (a
// scale): the significands' quotient in (1/2, 2) by the in-band sequence, the exponent by integers,
// a subnormal result rounded once from the kept bits and the exact remainder's sign. NaN operands
// give a NaN. exact_divisor / div_exact_bits split it for one divisor used many times.
// ---------------------------------------------------------------------------------------------
struct Divisor { float p2, sp, r; };

// 1 / m with a start within a few ulp: r0 from the hardware (device) or the IEEE quotient (host).
GQ_HD float recip_start(float m) {
#ifdef __CUDA_ARCH__
    float r;
    asm("rcp.approx.f32 %0, %1;" : "=f"(r) : "f"(m));  // no .ftz, as everywhere here (m is normal)
    return r;
#else
    return 1.0f / m;
#endif
}

// RN(1 / m) for m in [1, 2), from r0 within 3 ulp of it: two Newton steps (exact residuals). The
// one m they miss is 2 - 2^-23 (the known exception: they give 1/2, RN is 1/2 + 2^-24), set by bits.
GQ_HD float refine_recip(float m, float r0) {
    const float r1 = fma_f32(r0, fnma_f32(m, r0, 1.0f), r0);
    const float r2 = fma_f32(r1, fnma_f32(m, r1, 1.0f), r1);
    return bits_of(m) == 0x3fffffffu ? float_of(0x3f000001u) : r2;
}

// RN(1 / sp) for |sp| in [2^-22, 2): the reciprocal of its significand, the exponent put back by bits.
GQ_HD float recip_f32(float sp) {
    const gq_u32 u = bits_of(sp), sign = u & 0x80000000u;
    const gq_u32 k = 127u - ((u >> 23) & 0xffu);  // sp = m * 2^-k, k in [0, 22]
    const float m = float_of((u & 0x007fffffu) | 0x3f800000u);
    return float_of((bits_of(refine_recip(m, recip_start(m))) + (k << 23)) | sign);
}

// The Divisor of a finite nonzero s, straight-line code (another s gives some Divisor).
GQ_HD Divisor finite_divisor(float s) {
    const gq_u32 e = (bits_of(s) >> 23) & 0xffu;
    const float p2 = float_of(e == 0u ? 0x7f000000u : e == 254u ? 0x00400000u : (254u - e) << 23);
    const float sp = mul_f32(s, p2);
    return {p2, sp, recip_f32(sp)};
}

GQ_HD Divisor make_divisor(float s) {
    const gq_u32 one = (bits_of(s) & 0x80000000u) | 0x3f800000u;
    if (is_nan(s)) return {s, 1.0f, 1.0f};
    if (!is_finite(s)) return {0.0f, float_of(one), float_of(one)};
    if (is_zero(s)) return {float_of(0x7f800000u), float_of(one), float_of(one)};
    return finite_divisor(s);
}

// |a| in [2^-59, 2^60] (the bits of 2^-59 and 2^60); false for NaN.
GQ_HD bool in_band(float a) { return (bits_of(a) & 0x7fffffffu) - 0x22000000u <= 0x5d800000u - 0x22000000u; }

// q2 of the sequence: RN(a / sp) for a in band; for |a| < 2^-59 a value of magnitude under 2^-35
// (every step stays that small; its sign is not kept); needs |a| <= 2^60 (nothing overflows).
GQ_HD float corrected_q2(float a, float sp, float r) {
    const float q0 = mul_f32(a, r);
    const float q1 = fma_f32(fnma_f32(q0, sp, a), r, q0);
    return fma_f32(fnma_f32(q1, sp, a), r, q1);
}

// RN(a / sp) when a is in band (a and sp finite, q within 2 ulp), else q0 itself.
GQ_HD float corrected_quotient(float a, float sp, float r) {
    return in_band(a) ? corrected_q2(a, sp, r) : mul_f32(a, r);
}

GQ_HD float quotient_for_rounding(float x, const Divisor& D) { return corrected_quotient(mul_f32(x, D.p2), D.sp, D.r); }

// quotient_for_rounding without the band test, for |x / s| known to be small (|x * p2| <= 2^60):
// RN(x / s) in band, a value under 2^-35 in magnitude below it; so rint of it is RN's.
GQ_HD float bounded_quotient(float x, const Divisor& D) { return corrected_q2(mul_f32(x, D.p2), D.sp, D.r); }

// Significand in [1, 2) and unbiased exponent of a finite nonzero |x| (its bits a; subnormals
// normalised by the count of leading zeros). Selects, no branch.
GQ_HD float significand(gq_u32 a, int& exponent) {
    const gq_u32 e = a >> 23, f = a & 0x007fffffu;
#ifdef __CUDA_ARCH__
    const int lz = __clz(f);
#else
    const int lz = f ? __builtin_clz(f) : 32;
#endif
    const int shift = e == 0u ? lz - 8 : 0;
    exponent = e == 0u ? -126 - shift : (int)e - 127;
    return float_of(((f << (shift & 31)) & 0x007fffffu) | 0x3f800000u);
}

// A divisor b (finite, nonzero; its sign is not kept) prepared for div_exact: its significand m in
// [1, 2), r = RN(1 / m) and its exponent e. Built once for dividing by b many times.
struct ExactDivisor { float m, r; int e; };
GQ_HD ExactDivisor exact_divisor(float b) {
    int e;
    const float m = significand(bits_of(b) & 0x7fffffffu, e);
    return {m, recip_f32(m), e};
}

// The bits of RN(|a| / |b|) for a finite nonzero |a| (bits ua) and b given by B; straight-line code.
// Normal result: qm's bits with the exponent moved. Subnormal result: the significand M of qm
// shifted right by sh, rounded to nearest even from v = 2 * (dropped bits) + sign(ma - qm * m) in
// half units of the last dropped bit (the exact remainder's sign says on which side of qm the
// quotient lies, so a dropped half is a tie only when the remainder is 0: no double rounding).
GQ_HD gq_u32 div_exact_bits(gq_u32 ua, const ExactDivisor& B) {
    int ea;
    const float ma = significand(ua, ea);
    const float qm = corrected_q2(ma, B.m, B.r);  // ma in [1, 2): in band, RN(ma / m) in (1/2, 2)
    const gq_u32 uq = bits_of(qm);
    const int k = ea - B.e, e = (int)(uq >> 23) - 127 + k;  // the result's exponent
    const int sh = -126 - e < 1 ? 1 : (-126 - e > 25 ? 25 : -126 - e);
    const gq_u32 M = (uq & 0x007fffffu) | 0x00800000u, kept = M >> sh;
    const gq_u32 rem = bits_of(fnma_f32(qm, B.m, ma));  // exact; an exact 0 is +0
    const int sign = ((int)rem >> 31) | (rem != 0u ? 1 : 0);  // -1, 0 or 1
    const int v = 2 * (int)(M & ((1u << sh) - 1u)) + sign;
    const gq_u32 subnormal = kept + (gq_u32)((v + (1 << sh) - 1 + (int)(kept & 1u)) >> (sh + 1));
    return e > 127 ? 0x7f800000u : (e >= -126 ? uq + ((gq_u32)k << 23) : subnormal);
}

GQ_HD float div_exact(float a, float b) {
    const gq_u32 ua = bits_of(a) & 0x7fffffffu, ub = bits_of(b) & 0x7fffffffu;
    const gq_u32 sign = (bits_of(a) ^ bits_of(b)) & 0x80000000u;
    if (ua > 0x7f800000u || ub > 0x7f800000u || (ua == ub && (ua == 0u || ua == 0x7f800000u))) {
        return float_of(0x7fffffffu);  // NaN operand, 0 / 0, Inf / Inf
    }
    if (ua == 0x7f800000u || ub == 0u) return float_of(sign | 0x7f800000u);
    if (ua == 0u || ub == 0x7f800000u) return float_of(sign);
    return float_of(sign | div_exact_bits(ua, exact_divisor(b)));
}

// Conversions of a float: to an integral float (half to even as numpy rint, floor, toward zero), or
// to an int toward zero (an integral x, |x| < 2**31), by floor or to nearest even as PTX cvt.rmi /
// cvt.rni.s32.f32 do it (NaN gives 0, values beyond the int range saturate), or to nearest even
// saturated to the int8 range (cvt.rni.s8.f32). R is the result type,
// C its asm constraint, HOST the host's function.
#ifdef __CUDA_ARCH__
#define GQ_CONVERT(NAME, R, C, PTX, HOST)                                        \
    GQ_HD R NAME(float x) {                                                      \
        R r;                                                                     \
        asm(PTX " %0, %1;" : "=" C(r) : "f"(x));                                 \
        return r;                                                                \
    }
#else
#define GQ_CONVERT(NAME, R, C, PTX, HOST)                                        \
    GQ_HD R NAME(float x) { return HOST(x); }
#endif
GQ_HD float host_rint(float x);
GQ_HD float host_floor(float x);
GQ_HD float host_trunc(float x);
GQ_HD int host_rint_int(float x);
GQ_HD int host_floor_int(float x);
GQ_HD int host_rint_s8(float x);
GQ_CONVERT(rint_f32, float, "f", "cvt.rni.f32.f32", host_rint)
GQ_CONVERT(floor_f32, float, "f", "cvt.rmi.f32.f32", host_floor)
GQ_CONVERT(trunc_f32, float, "f", "cvt.rzi.f32.f32", host_trunc)
GQ_CONVERT(int_of, int, "r", "cvt.rzi.s32.f32", (int))
GQ_CONVERT(floor_to_int, int, "r", "cvt.rmi.s32.f32", host_floor_int)
GQ_CONVERT(rint_to_int, int, "r", "cvt.rni.s32.f32", host_rint_int)
GQ_CONVERT(rint_to_s8, int, "r", "cvt.rni.s8.f32", host_rint_s8)  // saturates to [-128, 127], sign-extended
#undef GQ_CONVERT

// Host versions by integer arithmetic (independent of the FPU rounding mode).
GQ_HD float host_trunc(float x) {
    gq_u32 u = bits_of(x);
    int e = (int)((u >> 23) & 0xffu) - 127;
    if (e >= 23) return x;                        // already integral, Inf or NaN
    if (e < 0) return float_of(u & 0x80000000u);  // |x| < 1: signed zero
    return float_of(u & ~(0x007fffffu >> e));
}
GQ_HD float host_floor(float x) {
    float t = host_trunc(x);
    return (x < t) ? t - 1.0f : t;  // x < t only for negative non-integers; t - 1 is exact
}
GQ_HD float host_rint(float x) {
    float t = host_trunc(x);
    float frac = abs_f(x - t);  // exact
    if (frac > 0.5f || (frac == 0.5f && (((gq_u32)(int)abs_f(t)) & 1u))) {
        return (bits_of(x) >> 31) ? t - 1.0f : t + 1.0f;
    }
    return t;
}
GQ_HD int host_to_int(float t) {  // an integral float, NaN or +-Inf, as cvt.s32 converts it
    if (is_nan(t)) return 0;
    if (!lt_f32(t, 2147483648.0f)) return 2147483647;
    return lt_f32(t, -2147483648.0f) ? (-2147483647 - 1) : (int)t;
}
GQ_HD int host_rint_int(float x) { return host_to_int(host_rint(x)); }
GQ_HD int host_floor_int(float x) { return host_to_int(host_floor(x)); }

// v clipped to [lo, hi] (integer min and max).
GQ_HD int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
GQ_HD int host_rint_s8(float x) { return clamp_int(host_rint_int(x), -128, 127); }

// (int)(f64(t) * 15) for t in [0, 1] (or -0) without float64: x = (int)(t * 2^28), then (15 * x) >> 28
// = umulhi(x, 240). For t >= 2^-5 the product t * 2^28 is an integer (t's last bit weighs at least
// 2^-28), so x is exact and the shift truncates 15 * t exactly; below, 15 * x / 2^28 <= 15 * t < 1
// and both give 0. The host tests check every t in [0, 1].
GQ_HD int times15_trunc(float t) {
    const gq_u32 x = (gq_u32)int_of(mul_f32(t, 268435456.0f));
    return (int)(((gq_u64)x * 240u) >> 32);
}

// lroundf: round half away from zero (|x| < 2**31).
GQ_HD float round_half_away_f32(float x) {
    const float t = trunc_f32(x);
    const float frac = abs_f(sub_f32(x, t));  // exact
    return lt_f32(frac, 0.5f) ? t : add_f32(t, float_of((bits_of(x) & 0x80000000u) | 0x3f800000u));  // a select
}

// ---------------------------------------------------------------------------------------------
// Family "scalar". Per-range constants (computed once by the backend, in numpy, as the reference):
//   HALF_AWAY: away = {scale, offset} (f64), f0 = lo, f1 = hi
//   FLOOR:     div = Divisor(step), f0 = lo, f1 = step
//   TRUNC:     div = Divisor(vdiff), Divisor(+Inf) where vdiff = 0 (t = +-0 or NaN: level 0),
//              f0 = lo, f1 = vdiff
//   HALF_EVEN: div = Divisor(scale), f0 = scale, f1 = zp. rint(q + zp) needs |zp| <= 2^50 from
//              quotient_for_rounding, or scale = 1 (then q0 = x exactly): the backend's ranges always
//              meet one of them (gpuquant/backends/cupy_families/scalar.py, scalar_params).
// ---------------------------------------------------------------------------------------------
enum Rounding { HALF_AWAY = 0, FLOOR = 1, TRUNC = 2, HALF_EVEN = 3 };

struct ScalarParams {
    union {
        struct {
            double scale, offset;
        } away;
        Divisor div;
    };
    float f0, f1;
};

// Level u in [0, L] of x (L = 2**bits - 1, H = 2**(bits - 1)).
GQ_HD int scalar_level(float x, int rounding, int bits, const ScalarParams& p) {
    const int L = (1 << bits) - 1, H = 1 << (bits - 1);
    switch (rounding) {
    case HALF_AWAY: {  // cuVS: x <= lo or NaN -> 0, x >= hi -> L, else lroundf(f32(scale*x + offset)) + H
        // (the level selected before the conversion, so that it sees an in-range value only)
        float t = round_half_away_f32(f64_to_f32(add_f64(mul_f64(f32_to_f64(x), p.away.scale), p.away.offset)));
        t = lt_f32(x, p.f1) ? t : (float)(L - H);
        t = lt_f32(p.f0, x) ? t : (float)-H;
        return int_of(t) + H;
    }
    case FLOOR:  // sentence-transformers: clip(floor(f32(f32(x - lo) / step)), 0, L) (NaN: 0)
        return clamp_int(floor_to_int(quotient_for_rounding(sub_f32(x, p.f0), p.div)), 0, L);
    case TRUNC: {  // FAISS: t = clamp(f32(x - lo) / vdiff, 0, 1) (NaN: 0); u = (int)(255 * t) or (int)(f64(t) * 15)
        const float t = clamp01_f32(quotient_for_rounding(sub_f32(x, p.f0), p.div));
        return bits == 8 ? int_of(mul_f32(255.0f, t)) : times15_trunc(t);  // int_of truncates
    }
    default:  // HALF_EVEN, affine: clip(rint(f32(x / scale) + zp), 0, L) (NaN: 0)
        return clamp_int(rint_to_int(add_f32(quotient_for_rounding(x, p.div), p.f1)), 0, L);
    }
}

// f32((u + 0.5) / L) for L = 255 or 15 without a division: y = a * r with r = f32(1 / L), then one
// correction y + f32(a - L * y) * r (both by fma). Equal to the correctly rounded quotient for every
// u in [0, L] (for these two L; the host tests decode every level).
GQ_HD float level_center(int u, int L) {
    const float a = add_f32((float)u, 0.5f);
    const float r = float_of(L == 255 ? 0x3b808081u : 0x3d888889u);  // f32(1/255), f32(1/15)
    const float y = mul_f32(a, r);
    return fma_f32(fma_f32(-(float)L, y, a), r, y);
}

// Reconstruction of level u.
GQ_HD float scalar_value(int u, int rounding, int bits, const ScalarParams& p) {
    const int L = (1 << bits) - 1, H = 1 << (bits - 1);
    switch (rounding) {
    case HALF_AWAY:  // f32((f64(u - H) - offset) / scale)
        return f64_to_f32(div_f64(sub_f64((double)(u - H), p.away.offset), p.away.scale));
    case FLOOR:  // f32(f64(u) * f64(step) + f64(lo))
        return f64_to_f32(add_f64(mul_f64((double)u, f32_to_f64(p.f1)), f32_to_f64(p.f0)));
    case TRUNC:  // lo + f32((u + 0.5f) / L) * vdiff, float32
        return add_f32(p.f0, mul_f32(level_center(u, L), p.f1));
    default:  // f32((u - zp) * scale)
        return mul_f32(sub_f32((float)u, p.f1), p.f0);
    }
}

// Stored 8-bit code of a level (uint8 u, or int8 u - 128 as its byte), and back.
GQ_HD unsigned char level_to_byte(int u, bool is_signed) {
    return (unsigned char)((is_signed ? u - 128 : u) & 0xff);
}
GQ_HD int byte_to_level(unsigned char b, bool is_signed) { return is_signed ? (int)(b ^ 0x80u) : (int)b; }

// 4-bit: nibble of a level u in [0, 15] (two's complement of u - 8 when signed: u ^ 8), and back.
GQ_HD unsigned nibble_of_level(int u, bool is_signed) { return (unsigned)(u ^ (is_signed ? 8 : 0)); }
GQ_HD int level_of_nibble(unsigned nib, bool is_signed) {
    return is_signed ? (int)((nib ^ 8u)) : (int)nib;  // sign-extend(nib) + 8 == nib ^ 8
}

// Two nibbles in one byte: element 2j in the low nibble (low_first) or the high one (high_first).
GQ_HD unsigned char pack_nibbles(unsigned first, unsigned second, bool high_first) {
    return (unsigned char)(high_first ? (second | (first << 4)) : (first | (second << 4)));
}
GQ_HD unsigned unpack_nibble(unsigned char b, int which, bool high_first) {
    const int shift = ((which == 1) != high_first) ? 4 : 0;
    return (b >> shift) & 0xfu;
}

// ---------------------------------------------------------------------------------------------
// Family "absmax": s = f32(f32(m + eps) / qmax) (div_exact: its bits are stored);
// q = clip(rint(f32(x / s)), -qmax, qmax) (quotient_for_rounding: rint then clip); x' = q*s.
// ---------------------------------------------------------------------------------------------
// exact_divisor(qmax) for qmax = 127 or 7, as constants: 127 = 1.984375 * 2^6, 7 = 1.75 * 2^2.
GQ_HD ExactDivisor qmax_divisor(int qmax) {
    return qmax == 127 ? ExactDivisor{1.984375f, float_of(0x3f010204u), 6} : ExactDivisor{1.75f, float_of(0x3f124925u), 2};
}

// s = RN(RN(m + eps) / qmax), Q = qmax_divisor(qmax). m + eps >= 0; Inf and NaN divide to themselves
// and 0 to 0 (div_exact_bits of 0: its significand 1 * 2^-150, the quotient rounds to 0).
GQ_HD float absmax_scale(float m, float eps, const ExactDivisor& Q) {
    const float a = add_f32(m, eps);
    return is_finite(a) ? float_of(div_exact_bits(bits_of(a), Q)) : a;
}

// The divisor of a segment's codes: its scale, 1 for a zero scale (every value is then 0). A
// non-finite scale (a refused row, whose codes are not used) gives some Divisor.
GQ_HD Divisor absmax_divisor(float s) { return finite_divisor(is_zero(s) ? 1.0f : s); }

// OWN: s is the segment's own scale, so |x| <= m and |x * p2| < 2^9 (bounded_quotient applies); else
// (a tensor scale fitted elsewhere) |x / s| is unbounded. Rows with NaN/Inf are refused.
// (qmax 127: the conversion saturates to [-128, 127], one max is left.)
template <bool OWN>
GQ_HD int absmax_code(float x, const Divisor& D, int qmax) {
    const float q = OWN ? bounded_quotient(x, D) : quotient_for_rounding(x, D);
    if (qmax == 127) {
        const int c = rint_to_s8(q);
        return c < -127 ? -127 : c;
    }
    return clamp_int(rint_to_int(q), -qmax, qmax);
}

GQ_HD float absmax_value(int q, float s) { return mul_f32((float)q, s); }

// 4-bit two's complement nibble to -8..7.
GQ_HD int sign_extend4(unsigned nib) { return (int)(nib ^ 8u) - 8; }

// ---------------------------------------------------------------------------------------------
// Family "float": float32 -> e4m3fn / e5m2 / fp16 / bf16, round to nearest even, by integer code.
// ---------------------------------------------------------------------------------------------
enum Format { E4M3 = 0, E5M2 = 1, FP16 = 2, BF16 = 3 };

struct FormatInfo {
    int ebits, mbits, width;  // exponent bits, mantissa bits, total bits
    gq_u32 max_bits;          // code of the largest finite value (no sign)
    gq_u32 nan_bits;          // canonical quiet NaN (no sign)
    gq_u32 max_f32;           // float32 bits of the largest finite value
    bool has_inf;             // IEEE-like (overflow -> Inf); e4m3fn overflows to NaN
};

GQ_HD FormatInfo format_info(int format) {
    switch (format) {
    case E4M3: return {4, 3, 8, 0x7eu, 0x7fu, 0x43e00000u, false};    // max 448
    case E5M2: return {5, 2, 8, 0x7bu, 0x7eu, 0x47600000u, true};     // max 57344
    case FP16: return {5, 10, 16, 0x7bffu, 0x7e00u, 0x477fe000u, true};  // max 65504
    default: return {8, 7, 16, 0x7f7fu, 0x7fc0u, 0x7f7f0000u, true};   // bf16, max 3.3895e38
    }
}

// Code (in the low `width` bits) of float32 x. saturate: clamp non-NaN values to +-max first.
GQ_HD gq_u32 float_encode(float x, int format, bool saturate) {
    const FormatInfo f = format_info(format);
    const gq_u32 u = bits_of(x);
    const gq_u32 sign = (u >> 31) << (f.width - 1);
    gq_u32 a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | f.nan_bits;
    if (saturate && a > f.max_f32) a = f.max_f32;
    if (format == BF16) {  // RNE on the top 16 bits; Inf stays Inf, overflow carries into Inf
        return sign | ((a + 0x7fffu + ((a >> 16) & 1u)) >> 16);
    }
    if (format == FP16) {  // the same rounding of the bits, exponent rebased by 15 - 127; 2^16 and up: Inf
        if (a >= 0x47800000u) return sign | 0x7c00u;
        // Below 2^-14 (fp16 subnormal or zero): 0.5 + |x| in float32 (no .ftz) rounds |x| to a multiple
        // of 2^-24, the fp16 subnormal step, nearest even; the bits past 0.5 are the code.
        if (a < 0x38800000u) return sign | (bits_of(add_f32(float_of(a), 0.5f)) - 0x3f000000u);
        return sign | ((a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13);
    }
    const gq_u32 inf_bits = ((1u << f.ebits) - 1u) << f.mbits;
    if (a == 0x7f800000u) return sign | (f.has_inf ? inf_bits : f.nan_bits);
    if (a < 0x00800000u) return sign;  // float32 subnormal: far below half the smallest code
    const int bias = (1 << (f.ebits - 1)) - 1;
    const int e = (int)(a >> 23) - 127;
    const int emin = 1 - bias;
    const gq_u32 m24 = (a & 0x007fffffu) | 0x00800000u;
    int shift = 23 - f.mbits + (e < emin ? emin - e : 0);
    if (shift > 25) shift = 25;  // result 0 from shift 25 on
    gq_u32 q = m24 >> shift;
    const gq_u32 rem = m24 & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q += 1u;
    // Normal: exponent field + mantissa, a mantissa carry bumps the exponent. Subnormal: q itself.
    const gq_u32 mag = (e < emin) ? q : ((gq_u32)(e + bias - 1) << f.mbits) + q;
    if (mag > f.max_bits) return sign | (f.has_inf ? inf_bits : f.nan_bits);
    return sign | mag;
}

// Exact float32 value of a code. NaN codes give 0x7fc00000 | sign for fp8 and keep the payload
// (shifted) for fp16 / bf16, as ml_dtypes and numpy do.
GQ_HD float float_decode(gq_u32 code, int format) {
    const FormatInfo f = format_info(format);
    const gq_u32 sign = ((code >> (f.width - 1)) & 1u) << 31;
    if (format == BF16) return float_of(code << 16);
    const gq_u32 emask = (1u << f.ebits) - 1u, mmask = (1u << f.mbits) - 1u;
    const gq_u32 e = (code >> f.mbits) & emask, m = code & mmask;
    const int bias = (1 << (f.ebits - 1)) - 1;
    if (f.has_inf && e == emask) {
        if (m == 0u) return float_of(sign | 0x7f800000u);
        if (format == FP16) return float_of(sign | 0x7f800000u | (m << 13));
        return float_of(sign | 0x7fc00000u);
    }
    if (!f.has_inf && e == emask && m == mmask) return float_of(sign | 0x7fc00000u);
    // Finite: the code's exponent and mantissa fields placed in a float32 (exponent field e,
    // subnormal when e = 0) are the value times 2^(bias - 127) for normal and subnormal codes alike;
    // one exact multiplication by 2^(127 - bias) (no .ftz: the float32 may be subnormal) rescales it.
    const float unscaled = float_of((e << 23) | (m << (23 - f.mbits)));
    return float_of(bits_of(mul_f32(unscaled, float_of((gq_u32)(254 - bias) << 23))) | sign);
}

// ---------------------------------------------------------------------------------------------
// Family "binary": bit = x > threshold (IEEE; NaN -> 0). Byte order of 8 bits b[0..7]:
// little: b[t] is 1 << t; big: b[t] is 0x80 >> t. signed: the byte ^ 0x80 (int8 = uint8 - 128).
// ---------------------------------------------------------------------------------------------
GQ_HD unsigned bit_mask(int t, bool big) { return big ? (0x80u >> t) : (1u << t); }

// Order-preserving uint32 key of a float32 (the unsigned order of keys is the order of floats,
// -0 < +0, NaNs outside +-Inf): used by training (min/max, radix select).
GQ_HD gq_u32 order_key(float x) {
    const gq_u32 u = bits_of(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
GQ_HD float key_value(gq_u32 k) { return float_of((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

}  // namespace gq
