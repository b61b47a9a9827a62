// host_check.cpp: the per-element math of kernels/quant_math.cuh compiled for the host, with the
// same row layout and packing as kernels/quantize.cu, exposed as extern "C" array functions for
// tests/test_kernels_host.py (built there with g++ -O2 -std=c++17 -ffp-contract=off -fno-fast-math).

#include "quant_math.cuh"

using gq::ScalarParams;

extern "C" {

void scalar_encode(const float* x, long long n, long long d, const ScalarParams* params, int per_dim,
                   int rounding, int bits, int is_signed, int high_first, unsigned char* out) {
    const long long rc = bits == 8 ? d : (d + 1) / 2;
    for (long long i = 0; i < n; ++i) {
        const float* row = x + i * d;
        for (long long b = 0; b < rc; ++b) {
            if (bits == 8) {
                const int u = gq::scalar_level(row[b], rounding, 8, params[per_dim ? b : 0]);
                out[i * rc + b] = gq::level_to_byte(u, is_signed);
                continue;
            }
            const long long j = 2 * b;
            const unsigned a = gq::nibble_of_level(gq::scalar_level(row[j], rounding, 4, params[per_dim ? j : 0]), is_signed);
            const unsigned c = (j + 1 < d)
                ? gq::nibble_of_level(gq::scalar_level(row[j + 1], rounding, 4, params[per_dim ? j + 1 : 0]), is_signed)
                : 0u;
            out[i * rc + b] = gq::pack_nibbles(a, c, high_first);
        }
    }
}

void scalar_decode(const unsigned char* codes, long long n, long long d, const ScalarParams* params, int per_dim,
                   int rounding, int bits, int is_signed, int high_first, float* out) {
    const long long rc = bits == 8 ? d : (d + 1) / 2;
    for (long long i = 0; i < n; ++i) {
        for (long long j = 0; j < d; ++j) {
            const ScalarParams p = params[per_dim ? j : 0];
            int u;
            if (bits == 8) {
                u = gq::byte_to_level(codes[i * rc + j], is_signed);
            } else {
                u = gq::level_of_nibble(gq::unpack_nibble(codes[i * rc + j / 2], (int)(j & 1), high_first), is_signed);
            }
            out[i * d + j] = gq::scalar_value(u, rounding, bits, p);
        }
    }
}

void binary_encode(const float* x, long long n, long long d, const float* thresholds, int big, int is_signed,
                   unsigned char* out) {
    const long long rc = (d + 7) / 8;
    for (long long i = 0; i < n; ++i) {
        for (long long b = 0; b < rc; ++b) {
            unsigned byte = 0;
            for (int t = 0; t < 8 && 8 * b + t < d; ++t) {
                const long long j = 8 * b + t;
                if (gq::gt_f32(x[i * d + j], thresholds ? thresholds[j] : 0.0f)) byte |= gq::bit_mask(t, big);
            }
            out[i * rc + b] = (unsigned char)(is_signed ? byte ^ 0x80u : byte);
        }
    }
}

void float_encode(const float* x, long long count, int format, int saturate, unsigned short* out) {
    for (long long i = 0; i < count; ++i) out[i] = (unsigned short)gq::float_encode(x[i], format, saturate != 0);
}

void float_decode(const unsigned short* codes, long long count, int format, float* out) {
    for (long long i = 0; i < count; ++i) out[i] = gq::float_decode(codes[i], format);
}

// Returns the first row whose scale is not finite, or -1.
long long absmax_encode(const float* x, long long n, long long d, long long seg_len, long long groups, int bits,
                        int high_first, float eps, unsigned char* codes, float* scales) {
    const int qmax = bits == 8 ? 127 : 7;
    const long long rc = bits == 8 ? d : (d + 1) / 2;
    long long bad = -1;
    for (long long i = 0; i < n; ++i) {
        for (long long g = 0; g < groups; ++g) {
            const float* src = x + i * d + g * seg_len;
            gq_u32 m = 0;
            for (long long k = 0; k < seg_len; ++k) {
                const gq_u32 a = gq::bits_of(src[k]) & 0x7fffffffu;
                m = a > m ? a : m;
            }
            const float s = gq::absmax_scale(gq::float_of(m), eps, gq::qmax_divisor(qmax));
            scales[i * groups + g] = s;
            if (!gq::is_finite(s) && bad < 0) bad = i;
            const gq::Divisor D = gq::absmax_divisor(s);
            for (long long k = 0; k < seg_len; ++k) {
                const int q = gq::absmax_code<true>(src[k], D, qmax);
                if (bits == 8) {
                    codes[i * rc + g * seg_len + k] = (unsigned char)(q & 0xff);
                } else {
                    const long long j = g * seg_len + k;
                    unsigned char* byte = codes + i * rc + j / 2;
                    const unsigned nib = (unsigned)q & 0xfu;
                    const unsigned other = (j & 1) ? gq::unpack_nibble(*byte, 0, high_first) : 0u;
                    *byte = (j & 1) ? gq::pack_nibbles(other, nib, high_first) : gq::pack_nibbles(nib, 0u, high_first);
                }
            }
        }
    }
    return bad;
}

void absmax_decode(const unsigned char* codes, const float* scales, long long n, long long d, long long seg_len,
                   long long groups, int bits, int high_first, float* out) {
    const long long rc = bits == 8 ? d : (d + 1) / 2;
    for (long long i = 0; i < n; ++i) {
        for (long long j = 0; j < d; ++j) {
            const float s = scales[i * groups + j / seg_len];
            const int q = bits == 8 ? (int)(signed char)codes[i * rc + j]
                                    : gq::sign_extend4(gq::unpack_nibble(codes[i * rc + j / 2], (int)(j & 1), high_first));
            out[i * d + j] = gq::absmax_value(q, s);
        }
    }
}

void order_keys(const float* x, long long count, unsigned* out) {
    for (long long i = 0; i < count; ++i) out[i] = gq::order_key(x[i]);
}

void key_values(const unsigned* keys, long long count, float* out) {
    for (long long i = 0; i < count; ++i) out[i] = gq::key_value(keys[i]);
}

}  // extern "C"
