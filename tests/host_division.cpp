// host_division.cpp: the division primitives of kernels/quant_math.cuh (Divisor, the exact
// reciprocal, quotient_for_rounding, div_exact) against the host's IEEE division (x86-64 SSE, no
// FTZ), for tests/test_kernels_division.py. Each check returns its number of failures and writes
// the first failing operands to `bad` (two floats) so that the test can show them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "quant_math.cuh"

namespace {

using gq::bits_of;
using gq::float_of;

bool same(float a, float b) { return bits_of(a) == bits_of(b) || (std::isnan(a) && std::isnan(b)); }

// The rounding functions quotient_for_rounding is for, on a quotient q: floor then clip to [0, 255],
// trunc of clip(q, 0, 1) times 255, rint then clip to +-127, and rint(q + zp) then clip for a zp.
long long code_of(float q, int which, float zp) {
    if (std::isnan(q)) return -1000;  // every caller maps NaN to one code
    switch (which) {
    case 0: return (long long)std::fmin(std::fmax(std::floor(q), 0.0f), 255.0f);
    case 1: return (long long)(255.0f * std::fmin(std::fmax(q, 0.0f), 1.0f));
    case 2: return (long long)std::fmin(std::fmax(std::nearbyint(q), -127.0f), 127.0f);
    default: return (long long)std::fmin(std::fmax(std::nearbyint(q + zp), 0.0f), 255.0f);
    }
}

// One (x, s) pair: in band, the quotient's bits; outside it, the sign, the magnitude class and every
// rounding function above (zp over its allowed range) agree with IEEE's x / s. bounded_quotient
// (|x * p2| <= 2^60): the quotient's bits in band, a magnitude under 2^-35 below it.
bool quotient_ok(float x, float s, const float* zps, int nzp, long long* in_band) {
    const gq::Divisor D = gq::make_divisor(s);
    const float q = gq::quotient_for_rounding(x, D), want = x / s, a = gq::mul_f32(x, D.p2);
    const bool special = gq::is_zero(s) || !gq::is_finite(s);
    if (!special && std::fabs(a) <= 0x1p60f) {  // bounded_quotient: the quotient, or under 2^-35 below the band
        const float b = gq::bounded_quotient(x, D);
        if (gq::in_band(a) ? !same(b, want) : !(std::fabs(b) < 0x1p-35f)) return false;
    }
    if (gq::in_band(a) || special) {
        *in_band += !special;
        return same(q, want);
    }
    if (std::isnan(q) != std::isnan(want)) return false;
    if (std::isnan(want)) return true;
    if ((bits_of(q) ^ bits_of(want)) >> 31) return false;
    if (std::fabs(want) < 0x1p-36f && !(std::fabs(q) < 0x1p-35f)) return false;
    if (std::fabs(want) > 0x1p59f && !(std::fabs(q) > 0x1p58f)) return false;
    if (!(std::fabs(want) < 0x1p-36f || std::fabs(want) > 0x1p59f)) return false;
    for (int w = 0; w < 3; ++w) {
        if (code_of(q, w, 0.0f) != code_of(want, w, 0.0f)) return false;
    }
    for (int k = 0; k < nzp; ++k) {
        if (code_of(q, 3, zps[k]) != code_of(want, 3, zps[k])) return false;
    }
    return true;
}

float random_bits(std::mt19937_64& g) { return float_of((gq_u32)g()); }

// A float of random sign, significand and exponent in [lo, hi] (unbiased; -127 gives subnormals).
float random_exp(std::mt19937_64& g, int lo, int hi) {
    const int e = lo + (int)(g() % (gq_u64)(hi - lo + 1));
    const gq_u32 sign = (gq_u32)(g() & 1u) << 31, f = (gq_u32)g() & 0x007fffffu;
    return float_of(sign | ((gq_u32)(e + 127) << 23) | f);
}

// Counts a failure; the first one's operands go to bad[0], bad[1].
void fail(long long& failures, float* bad, float a, float b) {
    if (failures++ == 0) {
        bad[0] = a;
        bad[1] = b;
    }
}

// Failures of ok(a, b) over `count` pairs: random bit patterns (random_bits) or make(g, i, a, b).
template <typename Make, typename Ok>
long long check_pairs(gq_u64 seed, long long count, bool random_bits_only, Make make, Ok ok, float* bad) {
    std::mt19937_64 g(seed);
    long long failures = 0;
    for (long long i = 0; i < count; ++i) {
        float a, b;
        if (random_bits_only) {
            a = random_bits(g);
            b = random_bits(g);
        } else {
            make(g, i, a, b);
        }
        if (!ok(a, b)) fail(failures, bad, a, b);
    }
    return failures;
}

}  // namespace

extern "C" {

// Failures of refine_recip over every m in [1, 2) and every start within `spread` ulp of RN(1 / m).
long long recip_exhaustive(int spread, float* bad) {
    long long failures = 0;
    for (gq_u32 u = 0x3f800000u; u < 0x40000000u; ++u) {
        const float m = float_of(u), want = 1.0f / m;
        for (int k = -spread; k <= spread; ++k) {
            if (bits_of(gq::refine_recip(m, float_of(bits_of(want) + (gq_u32)k))) != bits_of(want)) {
                fail(failures, bad, m, (float)k);
            }
        }
    }
    return failures;
}

// quotient_for_rounding of every x in [1, 2) (every significand, so every x in band up to scaling)
// by each of the `count` divisors in [1, 2) whose RN(1 / s) is farthest from 1 / s (relative to its
// ulp): where the first product a * r is worst.
long long quotient_worst_divisors(int count, float* bad) {
    std::vector<std::pair<double, gq_u32>> err;
    for (gq_u32 u = 0x3f800000u; u < 0x40000000u; ++u) {
        const float s = float_of(u), r = 1.0f / s;
        err.emplace_back(-std::fabs((double)r - 1.0 / s) / (double)(float_of(bits_of(r) + 1u) - r), u);
    }
    std::partial_sort(err.begin(), err.begin() + count, err.end());
    long long failures = 0;
    for (int i = 0; i < count; ++i) {
        const float s = float_of(err[i].second);
        const gq::Divisor D = gq::make_divisor(s);
        for (gq_u32 u = 0x3f800000u; u < 0x40000000u; ++u) {
            const float x = float_of(u);
            if (bits_of(gq::quotient_for_rounding(x, D)) != bits_of(x / s)) fail(failures, bad, x, s);
        }
    }
    return failures;
}

// The steps of corrected_q2 on `count` random in-band pairs (x of any significand and an exponent in
// [-59, 59], s of random bits: normal or subnormal divisors), against exact remainders (double fma:
// a - q * sp fits in 53 bits here). counts[0]: pairs where q0's remainder, rounded once, is not exact
// (allowed); counts[1]: failures of the proof's claims (q1 within 1 ulp of a / sp, q1's remainder
// exact, the steps' q2 equal to corrected_q2's).
void markstein_steps(gq_u64 seed, long long count, long long* counts, float* bad) {
    std::mt19937_64 g(seed);
    counts[0] = counts[1] = 0;
    for (long long i = 0; i < count; ++i) {
        const float x = std::fabs(random_exp(g, -59, 59)), s = std::fabs(random_bits(g));
        if (!std::isfinite(s) || s == 0.0f) continue;
        const gq::Divisor D = gq::make_divisor(s);
        const float a = gq::mul_f32(x, D.p2), sp = D.sp, r = D.r;
        if (!gq::in_band(a)) continue;
        const auto rem = [&](float q) { return std::fma(-(double)q, (double)sp, (double)a); };
        const float q0 = gq::mul_f32(a, r), r0 = gq::fnma_f32(q0, sp, a);
        const float q1 = gq::fma_f32(r0, r, q0), r1 = gq::fnma_f32(q1, sp, a);
        const float q2 = gq::fma_f32(r1, r, q1);
        counts[0] += (double)r0 != rem(q0);
        const bool faithful = rem(std::nextafter(q1, 0.0f)) > 0.0 && rem(std::nextafter(q1, INFINITY)) < 0.0;
        if (!faithful || (double)r1 != rem(q1) || gq::bits_of(q2) != gq::bits_of(gq::corrected_q2(a, sp, r))) {
            fail(counts[1], bad, x, s);
        }
    }
}

// Failures of times15_trunc against (int)(f64(t) * 15) over every float32 t with bits in
// [lo_bits, hi_bits] (0 .. 0x3f800000: every t in [0, 1]), and -0.
long long times15_exhaustive(gq_u32 lo_bits, gq_u32 hi_bits, float* bad) {
    long long failures = 0;
    for (gq_u64 u = lo_bits; u <= hi_bits; ++u) {
        const float t = float_of((gq_u32)u);
        if (gq::times15_trunc(t) != (int)((double)t * 15.0)) fail(failures, bad, t, 0.0f);
    }
    if (gq::times15_trunc(-0.0f) != 0) fail(failures, bad, -0.0f, 0.0f);
    return failures;
}

// Whether qmax_divisor(q) equals exact_divisor(q) (the reciprocal computed) for q = 127 and 7.
int qmax_divisors_ok() {
    for (int q : {127, 7}) {
        const gq::ExactDivisor a = gq::qmax_divisor(q), b = gq::exact_divisor((float)q);
        if (bits_of(a.m) != bits_of(b.m) || bits_of(a.r) != bits_of(b.r) || a.e != b.e) return 0;
    }
    return 1;
}

// make_divisor of each s (p2, sp, r per s), for the backend's numpy builder.
void make_divisors(const float* s, long long n, float* out) {
    for (long long i = 0; i < n; ++i) {
        const gq::Divisor D = gq::make_divisor(s[i]);
        out[3 * i] = D.p2;
        out[3 * i + 1] = D.sp;
        out[3 * i + 2] = D.r;
    }
}

// quotient_for_rounding on `count` pairs of kind `kind`: 0 random bit patterns, 1 random exponents
// (subnormal to huge, so across the band's edges), 2 quotients next to midpoints (x = RN(q_mid * s),
// q_mid half way between two floats), 3 exact quotients (x = q * s), 4 special divisors.
// counts[0] = pairs in band.
long long quotient_check(gq_u64 seed, long long count, int kind, long long* counts, float* bad) {
    const float zps[] = {0.0f, 0x1p-12f, -0x1p-12f, 0x1p-11f, 0.5f, -3.25f, 127.0f, 1e6f, -0x1p50f, 0x1p50f};
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN};
    auto make = [&](std::mt19937_64& g, long long i, float& x, float& s) {
        if (kind == 1) {
            s = random_exp(g, -127, 127);
            x = random_exp(g, -127, 127);
        } else if (kind == 2 || kind == 3) {
            s = random_exp(g, -127, 127);
            const float q = random_exp(g, -70, 90);
            const double mid = kind == 2 ? ((double)q + (double)std::nextafter(q, INFINITY)) * 0.5 : (double)q;
            x = (float)(mid * (double)s);  // exact in double; x / s next to a midpoint, or exactly q
        } else {
            x = (i % 7 == 0) ? specials[g() % 6] : random_bits(g);
            s = specials[g() % 6];
        }
    };
    auto ok = [&](float x, float s) { return quotient_ok(x, s, zps, 10, counts); };
    return check_pairs(seed, count, kind == 0, make, ok, bad);
}

// div_exact against IEEE a / b on `count` pairs of kind `kind`: 0 random bit patterns, 1 both
// subnormal or tiny / huge (results under- and overflowing), 2 subnormal results at and next to ties
// (a = (k + 1/2) * 2^-149 * b, rounded, and exact ties with b a power of two times a small odd
// integer), 3 the overflow edge (|a / b| near 2^128), 4 every pair of a list of special values.
long long div_exact_check(gq_u64 seed, long long count, int kind, float* bad) {
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1.0f, -1.0f, 0x1p-149f, -0x1p-149f,
                              0x1p-126f, 0x1.fffffcp-127f, 3.4028235e38f, -3.4028235e38f, 0x1p127f, 0.5f, 3.0f};
    const int ns = (int)(sizeof(specials) / sizeof(specials[0]));
    auto make = [&](std::mt19937_64& g, long long i, float& a, float& b) {
        if (kind == 1) {
            const int pick = (int)(g() % 3);
            a = pick == 0 ? random_exp(g, -127, -127) : random_exp(g, -127, pick == 1 ? -100 : 127);
            b = pick == 0 ? random_exp(g, -127, -127) : random_exp(g, pick == 1 ? 0 : -127, 127);
        } else if (kind == 2) {
            const double t = std::ldexp((double)(g() % (1u << 24)) + 0.5, -149);
            const gq_u32 odd = (gq_u32)(2 * (g() % 8) + 1);
            b = (g() & 1) ? random_exp(g, -127, 127) : std::ldexp((float)odd, (int)(g() % 200) - 130);
            a = (float)(t * (double)b);  // exact when b = odd * 2^j and the product fits
            if (g() & 1) a = -a;
        } else if (kind == 3) {
            a = float_of((gq_u32)(0x7f000000u + (g() % 0x800000u)) | ((gq_u32)(g() & 1) << 31));
            b = float_of((gq_u32)(0x3e800000u + (g() % 0x1000000u)));
        } else {
            a = specials[(i / ns) % ns];
            b = specials[i % ns];
        }
    };
    return check_pairs(seed, count, kind == 0, make, [](float a, float b) { return same(gq::div_exact(a, b), a / b); },
                       bad);
}

}  // extern "C"
