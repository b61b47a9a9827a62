// rabitq.cu: RaBitQ sign-bit encode and decode (gpuquant/schemes/rabitq.py, bit for bit).
//
// rabitq_encode1: one thread per row. The reference's three sums are plain left-to-right float32 loops
// (each product rounded, then added), an order that no split over lanes reproduces, so a row is summed
// by one thread in that order. With r = x - c: sign bit j = r[j] > 0, LSB first; running sums |r|^2,
// |x|^2, sum |r|; then the factors or_minus_c_l2sqr (|r|^2, or |r|^2 - |x|^2 for inner product) and
// dp_multiplier, as little-endian float32 after the ceil(d/8) sign bytes. Rows of a multiple of 4
// values (x aligned to min(16, 4 * sizeof(T)), the center to 16 bytes) are read 8 values a step: two
// vectors of x and two float4 of the center, one sign byte stored (a last step of 4 values when d % 8
// is 4); other rows value by value. Every float operation goes through quant_math.cuh (IEEE, no
// flushing, no contraction). Finiteness is read from |x|^2: it is finite exactly when every value of
// the row is (a NaN or an infinity makes it NaN or +Inf, and it never comes back), so only a row whose
// |x|^2 is not finite is read again to tell a nonfinite value from an overflow. A row holding NaN or
// +-Inf lowers bad[0] to its index, another row whose |x|^2 or |r|^2 overflows lowers bad[1]; the
// launcher raises for the lowest such row, nonfinite rows first, as the reference does.
//
// rabitq_decode: FAISS's sa_decode from the sign bits and dp_multiplier alone (any bits; code_size
// bytes per row): x'[j] = (((bit - 1/2) * dp_multiplier) * 2) * (1 / sqrt d) + c[j].

#include "device_io.cuh"

namespace gq {

// 2^-23 (float32 machine epsilon), the reference's EPS.
__device__ __forceinline__ float rabitq_eps() { return float_of(0x34000000u); }

__device__ __forceinline__ float rabitq_inv_sqrt_d(long long d) { return div_f32(1.0f, sqrt_f32((float)d)); }

__device__ __forceinline__ void store_f32_le(unsigned char* p, float v) {
    const gq_u32 b = bits_of(v);
    p[0] = (unsigned char)b;
    p[1] = (unsigned char)(b >> 8);
    p[2] = (unsigned char)(b >> 16);
    p[3] = (unsigned char)(b >> 24);
}

__device__ __forceinline__ float load_f32_le(const unsigned char* p) {
    return float_of((gq_u32)p[0] | ((gq_u32)p[1] << 8) | ((gq_u32)p[2] << 16) | ((gq_u32)p[3] << 24));
}

// One row's running sums, one value at a time in the reference's order; step returns r > 0.
struct RabitqSums {
    float norm_sq = 0.0f, x_sq = 0.0f, abs_sum = 0.0f;

    __device__ __forceinline__ unsigned step(float v, float c) {
        const float r = sub_f32(v, c);
        norm_sq = add_f32(norm_sq, mul_f32(r, r));
        x_sq = add_f32(x_sq, mul_f32(v, v));
        abs_sum = add_f32(abs_sum, abs_f(r));
        return gt_f32(r, 0.0f) ? 1u : 0u;
    }
};

}  // namespace gq

// K (4 or 8) values of a row and of the center, 4 at a time by vector loads: their sign bits, LSB first.
template <typename T, int K>
__device__ __forceinline__ unsigned rabitq_vec_bits(gq::RabitqSums& acc, const T* __restrict__ xr,
                                                    const float* __restrict__ c) {
    unsigned byte = 0u;
#pragma unroll
    for (int g = 0; g < K; g += 4) {
        float v[4], cv[4];
        gq::load_vec<T, 4>(xr + g, v);
        gq::load_vec<float, 4>(c + g, cv);
#pragma unroll
        for (int u = 0; u < 4; ++u) byte |= acc.step(v[u], cv[u]) << (g + u);
    }
    return byte;
}

// VEC: rows read 8 values a step (see the file comment); else one value at a time.
template <typename T, bool VEC>
__device__ __forceinline__ gq::RabitqSums rabitq_scan(const T* __restrict__ xr, const float* __restrict__ center,
                                                      unsigned char* __restrict__ out, long long d) {
    gq::RabitqSums acc;
    if (VEC) {
        const T* const whole = xr + (d & ~7ll);
        for (; xr != whole; xr += 8, center += 8) *out++ = (unsigned char)rabitq_vec_bits<T, 8>(acc, xr, center);
        if (d & 4) *out = (unsigned char)rabitq_vec_bits<T, 4>(acc, xr, center);
    } else {
        unsigned byte = 0u;
        for (long long j = 0; j < d; ++j) {
            byte |= acc.step(gq::to_f32(xr[j]), center[j]) << (j & 7);
            if ((j & 7) == 7 || j == d - 1) {
                out[j >> 3] = (unsigned char)byte;
                byte = 0u;
            }
        }
    }
    return acc;
}

// Whether every value of a row is finite as float32 (read only for rows whose |x|^2 is not finite).
template <typename T>
__device__ bool rabitq_row_finite(const T* __restrict__ xr, long long d) {
    for (long long j = 0; j < d; ++j) {
        if (!gq::is_finite(gq::to_f32(xr[j]))) return false;
    }
    return true;
}

template <typename T, bool VEC>
__device__ __forceinline__ void rabitq_encode1_path(const T* __restrict__ x, const float* __restrict__ center,
                                                    unsigned char* __restrict__ codes,
                                                    unsigned long long* __restrict__ bad, long long n, long long d,
                                                    int inner_product) {
    const long long head = (d + 7) / 8;
    const float inv_sqrt_d = gq::rabitq_inv_sqrt_d(d);
    const float eps = gq::rabitq_eps();
    for (long long row = gq::thread_index(); row < n; row += gq::thread_count()) {
        unsigned char* out = codes + row * (head + 8);
        const gq::RabitqSums acc = rabitq_scan<T, VEC>(x + row * d, center, out, d);
        if (!gq::is_finite(acc.x_sq) && !rabitq_row_finite(x + row * d, d)) {
            atomicMin(bad, (unsigned long long)row);
        } else if (!gq::is_finite(acc.norm_sq) || !gq::is_finite(acc.x_sq)) {
            atomicMin(bad + 1, (unsigned long long)row);
        }
        const float sqrt_norm = gq::sqrt_f32(acc.norm_sq);
        const float inv_norm = gq::lt_f32(acc.norm_sq, eps) ? 1.0f : gq::div_f32(1.0f, sqrt_norm);
        const float dp = gq::mul_f32(gq::mul_f32(acc.abs_sum, inv_norm), inv_sqrt_d);
        const float inv_dp = gq::lt_f32(gq::abs_f(dp), eps) ? 1.0f : gq::div_f32(1.0f, dp);
        gq::store_f32_le(out + head, inner_product ? gq::sub_f32(acc.norm_sq, acc.x_sq) : acc.norm_sq);
        gq::store_f32_le(out + head + 4, gq::mul_f32(inv_dp, sqrt_norm));
    }
}

template <typename T>
__global__ void __launch_bounds__(256, 4)
rabitq_encode1(const T* __restrict__ x, const float* __restrict__ center, unsigned char* __restrict__ codes,
               unsigned long long* __restrict__ bad, long long n, long long d, int inner_product) {
    constexpr unsigned ALIGN = 4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16;
    if (d % 4 == 0 && gq::aligned(x, ALIGN) && gq::aligned(center, 16)) {
        rabitq_encode1_path<T, true>(x, center, codes, bad, n, d, inner_product);
    } else {
        rabitq_encode1_path<T, false>(x, center, codes, bad, n, d, inner_product);
    }
}

__global__ void __launch_bounds__(256, 4)
rabitq_decode(const unsigned char* __restrict__ codes, const float* __restrict__ center, float* __restrict__ y,
              long long n, long long d, long long code_size) {
    const long long head = (d + 7) / 8;
    const float inv_sqrt_d = gq::rabitq_inv_sqrt_d(d);
    for (long long row = gq::thread_index(); row < n; row += gq::thread_count()) {
        const unsigned char* c = codes + row * code_size;
        const float scale = gq::load_f32_le(c + head + 4);
        float* yr = y + row * d;
        for (long long j = 0; j < d; ++j) {
            const float half = ((c[j >> 3] >> (j & 7)) & 1u) ? 0.5f : -0.5f;
            const float v = gq::mul_f32(gq::mul_f32(gq::mul_f32(half, scale), 2.0f), inv_sqrt_d);
            yr[j] = gq::add_f32(v, center[j]);
        }
    }
}
