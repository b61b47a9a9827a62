// rabitq.cu: RaBitQ encode and decode (gpuquant/schemes/rabitq.py, bit for bit).
//
// rabitq_encode1: one thread per row. The reference's three sums are plain left-to-right float32 loops
// (each product rounded, then added), an order that no split over lanes reproduces, so a row is summed
// by one thread in that order. With r = x - c: sign bit j = r[j] > 0, LSB first; running sums |r|^2,
// |x|^2, sum |r|; then the factors or_minus_c_l2sqr (|r|^2, or |r|^2 - |x|^2 for inner product) and
// dp_multiplier, as little-endian float32 after the ceil(d/8) sign bytes, and for bits > 1 the error
// factor after them (rows of code_size bytes). Rows of a multiple of 4
// values (x aligned to min(16, 4 * sizeof(T)), the center to 16 bytes) are read 8 values a step: two
// vectors of x and two float4 of the center, one sign byte stored (a last step of 4 values when d % 8
// is 4); other rows value by value. Every float operation goes through quant_math.cuh (IEEE, no
// flushing, no contraction). Finiteness is read from |x|^2: it is finite exactly when every value of
// the row is (a NaN or an infinity makes it NaN or +Inf, and it never comes back), so only a row whose
// |x|^2 is not finite is read again to tell a nonfinite value from an overflow. One flag holds the
// first refused row as the reference names it, nonfinite rows first: a row holding NaN or +-Inf lowers
// it to its index, another row whose |x|^2 or |r|^2 overflows to n + its index (so one error a call).
//
// rabitq_encode_ex (bits > 1): the extra bits and their two factors, after rabitq_encode1 has written
// the head of each row; see its comment.
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

// The error factor of bits > 1: with h = s / 2, ratio = (|r|^2 * (d * 1/4)) / (h * h) and
// e = (sqrt|r|^2 * 1.9) * sqrt((ratio - 1) / max(d - 1, 1)) where |h| > eps and ratio > 1 (else 0),
// times 2 for l2.
__device__ __forceinline__ float rabitq_error_factor(const gq::RabitqSums& acc, float sqrt_norm, long long d,
                                                     int inner_product) {
    const float half = gq::mul_f32(0.5f, acc.abs_sum);
    const float ratio = gq::div_f32(gq::mul_f32(acc.norm_sq, gq::mul_f32((float)d, 0.25f)), gq::mul_f32(half, half));
    if (!gq::gt_f32(gq::abs_f(half), gq::rabitq_eps()) || !gq::gt_f32(ratio, 1.0f)) return 0.0f;
    const float spread = gq::sqrt_f32(gq::div_f32(gq::sub_f32(ratio, 1.0f), (float)(d > 1 ? d - 1 : 1)));
    const float error = gq::mul_f32(gq::mul_f32(sqrt_norm, gq::float_of(0x3ff33333u)), spread);  // 1.9f
    return inner_product ? error : gq::mul_f32(error, 2.0f);
}

template <typename T, bool VEC>
__device__ __forceinline__ void rabitq_encode1_path(const T* __restrict__ x, const float* __restrict__ center,
                                                    unsigned char* __restrict__ codes,
                                                    unsigned long long* __restrict__ refused, long long n,
                                                    long long d, long long code_size, int inner_product,
                                                    int error_factor) {
    const long long head = (d + 7) / 8;
    const float inv_sqrt_d = gq::rabitq_inv_sqrt_d(d);
    const float eps = gq::rabitq_eps();
    for (long long row = gq::thread_index(); row < n; row += gq::thread_count()) {
        unsigned char* out = codes + row * code_size;
        const gq::RabitqSums acc = rabitq_scan<T, VEC>(x + row * d, center, out, d);
        if (!gq::is_finite(acc.x_sq) && !rabitq_row_finite(x + row * d, d)) {
            atomicMin(refused, (unsigned long long)row);
        } else if (!gq::is_finite(acc.norm_sq) || !gq::is_finite(acc.x_sq)) {
            atomicMin(refused, (unsigned long long)(n + row));
        }
        const float sqrt_norm = gq::sqrt_f32(acc.norm_sq);
        const float inv_norm = gq::lt_f32(acc.norm_sq, eps) ? 1.0f : gq::div_f32(1.0f, sqrt_norm);
        const float dp = gq::mul_f32(gq::mul_f32(acc.abs_sum, inv_norm), inv_sqrt_d);
        const float inv_dp = gq::lt_f32(gq::abs_f(dp), eps) ? 1.0f : gq::div_f32(1.0f, dp);
        gq::store_f32_le(out + head, inner_product ? gq::sub_f32(acc.norm_sq, acc.x_sq) : acc.norm_sq);
        gq::store_f32_le(out + head + 4, gq::mul_f32(inv_dp, sqrt_norm));
        if (error_factor) gq::store_f32_le(out + head + 8, rabitq_error_factor(acc, sqrt_norm, d, inner_product));
    }
}

template <typename T>
__global__ void __launch_bounds__(256, 4)
rabitq_encode1(const T* __restrict__ x, const float* __restrict__ center, unsigned char* __restrict__ codes,
               unsigned long long* __restrict__ refused, long long n, long long d, long long code_size,
               int inner_product, int error_factor) {
    constexpr unsigned ALIGN = 4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16;
    if (d % 4 == 0 && gq::aligned(x, ALIGN) && gq::aligned(center, 16)) {
        rabitq_encode1_path<T, true>(x, center, codes, refused, n, d, code_size, inner_product, error_factor);
    } else {
        rabitq_encode1_path<T, false>(x, center, codes, refused, n, d, code_size, inner_product, error_factor);
    }
}

// rabitq_encode_ex: the extra bits of bits > 1 (B = bits - 1, M = 2^B - 1) and their factors f_add_ex,
// f_rescale_ex, at head + 12 of each row of code_size bytes, as the reference's _extra_bits. One thread
// per row: no preset uses bits > 1, so this path has no SASS budget, and the division of the score's
// step is the IEEE routine (gq::div_f32, a CALL). With r = x - c (float32): n = sqrt(lane_dot(r, r))
// in FAISS's 16-lane order; a row with n < 1e-10 (or n not finite, where the reference's integer
// conversions are undefined) gets zero bits and factors. Else o[j] = |r[j] / n|, recomputed from x
// when needed (no per-row array). The scale search visits every step (t, dimension) the reference
// keeps, in increasing t (ties: lower dimension first), as a k-way merge: a binary min-heap of one
// 64-bit key per dimension, (bits of t) << 32 | dimension (t > 0, so its bits order as its value),
// the dimension's next step pushed once its key is taken. A dimension's steps are the
// levels cur + 1 .. max(cur + 1, min(M, floor(t_end * o) + 2)) while t = f32(level) * (1 / o) < t_end;
// t grows with the level, so they are taken in level order. The running float32 sums (denominator,
// numerator, the product of the steps) are added in the order the steps are taken, as the
// reference's cumulative sums; the first largest score wins. The heap lives in heap[pos * stride +
// thread] and each dimension's next level in levels[dim * stride + thread] (d of each a thread of the
// grid, stride = the grid's threads: coalesced), so d has no bound but the scratch the launcher
// allocates (d < 2^32 for the key).
namespace gq {

// FAISS's tight_start[B] (the reference's float32 table), t_start = t_end * it.
__device__ __forceinline__ float rabitq_tight_start(int ex_bits) {
    const gq_u32 table[9] = {0u,          0x3e19999au, 0x3e4ccccdu, 0x3f051eb8u, 0x3f170a3du,
                             0x3f35c28fu, 0x3f400000u, 0x3f451eb8u, 0x3f4f5c29u};
    return float_of(table[ex_bits]);
}

// trunc(f64(a * b) + 1e-5) for a * b >= 0: a level as the reference rounds it (float32 product).
__device__ __forceinline__ long long rabitq_level(float a, float b) {
    return (long long)add_f64(f32_to_f64(mul_f32(a, b)), 1e-5);
}

// One row of the extra-bit encode: r[j], o[j] and the lane-order dot products.
template <typename T>
struct RabitqRow {
    const T* x;
    const float* c;
    long long d;
    float norm = 0.0f;

    __device__ float r(long long j) const { return sub_f32(to_f32(x[j]), c[j]); }
    __device__ float o(long long j) const { return abs_f(div_f32(r(j), norm)); }

    // sum(r[j] * (with_center ? c[j] : r[j])) in FAISS's 16-lane order (float_order.lane_dot).
    __device__ float lane_dot(bool with_center) const {
        float acc[16];
        for (int l = 0; l < 16; ++l) acc[l] = 0.0f;
        const long long whole = d / 16 * 16;
        for (long long i = 0; i < whole; i += 16) {
            for (int l = 0; l < 16; ++l) acc[l] = term(i + l, with_center, acc[l]);
        }
        for (int l = 0; l < 8; ++l) acc[l] = add_f32(acc[l], acc[l + 8]);
        long long start = whole;
        if (d - whole >= 8) {
            for (int l = 0; l < 8; ++l) acc[l] = term(whole + l, with_center, acc[l]);
            start = whole + 8;
        }
        for (int h = 4; h >= 1; h /= 2) {
            for (int l = 0; l < h; ++l) acc[l] = add_f32(acc[l], acc[l + h]);
        }
        float total = acc[0];
        for (long long i = start; i < d; ++i) total = term(i, with_center, total);
        return total;
    }

    __device__ float term(long long j, bool with_center, float acc) const {
        const float v = r(j);
        return fma_f32(v, with_center ? c[j] : v, acc);
    }
};

// A binary min-heap of 64-bit keys at a[i * stride], and the level of dimension j's key at levels[j * stride].
struct RabitqHeap {
    unsigned long long* a;
    unsigned short* levels;
    long long stride;
    long long size = 0;

    __device__ unsigned long long& at(long long i) { return a[i * stride]; }

    __device__ void push(unsigned long long key) {
        long long i = size++;
        while (i > 0 && at((i - 1) / 2) > key) {
            at(i) = at((i - 1) / 2);
            i = (i - 1) / 2;
        }
        at(i) = key;
    }

    __device__ unsigned long long pop() {
        const unsigned long long top = at(0), key = at(--size);
        long long i = 0;
        for (long long child = 1; child < size; child = 2 * i + 1) {
            if (child + 1 < size && at(child + 1) < at(child)) ++child;
            if (at(child) >= key) break;
            at(i) = at(child);
            i = child;
        }
        if (size > 0) at(i) = key;
        return top;
    }
};

// The scale search of the reference's _best_scale for one live row (see the comment above).
template <typename T>
struct RabitqScale {
    const RabitqRow<T>& row;
    int max_code;
    float t_end = 0.0f;

    // Push dimension j's step at `level` if the reference keeps it (level <= last, t < t_end).
    __device__ void offer(RabitqHeap& heap, long long j, long long level, bool first, float o) const {
        const long long bound = (long long)mul_f64(f32_to_f64(t_end), f32_to_f64(o)) + 2;  // floor: >= 0
        if (!first && level > (bound < max_code ? bound : max_code)) return;
        const float t = mul_f32((float)level, div_f32(1.0f, o));
        if (!lt_f32(t, t_end)) return;
        heap.levels[j * heap.stride] = (unsigned short)level;  // level <= max(M, cur + 1) <= 255
        heap.push(((unsigned long long)bits_of(t) << 32) | (unsigned long long)j);
    }

    __device__ float search(RabitqHeap& heap, int ex_bits) {
        const long long d = row.d;
        float max_o = 0.0f;
        for (long long j = 0; j < d; ++j) max_o = max_f32(max_o, row.o(j));
        t_end = div_f32((float)(max_code + 10), max_o);
        const float t_start = mul_f32(t_end, rabitq_tight_start(ex_bits));
        float denom = mul_f32((float)d, 0.25f), numer = 0.0f;
        for (long long j = 0; j < d; ++j) {
            const float o = row.o(j);
            const long long cur = rabitq_level(t_start, o);
            denom = add_f32(denom, (float)(cur * cur + cur));
            numer = add_f32(numer, mul_f32(add_f32((float)cur, 0.5f), o));
            offer(heap, j, cur + 1, true, o);
        }
        float inv_sqrt = div_f32(1.0f, sqrt_f32(denom)), best = 0.0f, best_t = 0.0f;
        bool any = false;
        while (heap.size > 0) {
            const unsigned long long key = heap.pop();
            const long long j = (long long)(key & 0xffffffffu), level = heap.levels[j * heap.stride];
            const float o = row.o(j), delta = mul_f32(2.0f, (float)level);
            denom = add_f32(denom, delta);
            numer = add_f32(numer, o);
            const float old = sub_f32(denom, delta);
            const float step = sub_f32(1.0f, div_f32(mul_f32(0.5f, delta), add_f32(old, mul_f32(delta, 0.5f))));
            inv_sqrt = mul_f32(inv_sqrt, step);
            const float score = mul_f32(numer, inv_sqrt);
            if (!any || (!is_nan(best) && (is_nan(score) || gt_f32(score, best)))) {  // numpy's argmax
                best = score;
                best_t = float_of((gq_u32)(key >> 32));
                any = true;
            }
            offer(heap, j, level + 1, false, o);
        }
        return any && gt_f32(best, 0.0f) ? best_t : 0.0f;
    }
};

}  // namespace gq

// The extra bits of one row at `out` (ceil(d * B / 8) bytes, B bits a dimension, LSB first) and the
// factors f_add_ex, f_rescale_ex after them.
template <typename T>
__device__ void rabitq_extra_row(const gq::RabitqRow<T>& row, gq::RabitqHeap& heap, unsigned char* __restrict__ out,
                                 int ex_bits, int inner_product) {
    const long long d = row.d;
    const int max_code = (1 << ex_bits) - 1;
    const bool live = gq::is_finite(row.norm) && !gq::lt_f32(row.norm, gq::float_of(0x2edbe6ffu));  // 1e-10f
    const float t = live ? gq::RabitqScale<T>{row, max_code}.search(heap, ex_bits) : 0.0f;
    double ip = 0.0;
    unsigned acc = 0u;
    int filled = 0;
    for (long long j = 0; j < d; ++j) {
        long long level = 0;
        if (live) {
            const float o = row.o(j);
            level = gq::rabitq_level(t, o);
            level = level < max_code ? level : max_code;
            const double term = gq::mul_f64(gq::add_f64((double)level, 0.5), gq::f32_to_f64(o));
            ip = j == 0 ? term : gq::add_f64(ip, term);
            if (gq::lt_f32(row.r(j), 0.0f)) level = max_code - level;
        }
        acc |= (unsigned)level << filled;
        for (filled += ex_bits; filled >= 8; filled -= 8, acc >>= 8) *out++ = (unsigned char)acc;
    }
    if (filled > 0) *out++ = (unsigned char)acc;
    float add = 0.0f, rescale = 0.0f;
    if (live) {
        float inv_ip = gq::f64_to_f32(gq::div_f64(1.0, ip));
        const gq_u32 e = gq::bits_of(inv_ip) & 0x7f800000u;
        inv_ip = (e == 0u || e == 0x7f800000u) ? 1.0f : inv_ip;  // not normal: 1
        add = inner_product ? row.lane_dot(true) : gq::mul_f32(row.norm, row.norm);
        rescale = gq::mul_f32(inner_product ? inv_ip : gq::mul_f32(inv_ip, -2.0f), row.norm);
    }
    gq::store_f32_le(out, add);
    gq::store_f32_le(out + 4, rescale);
}

template <typename T>
__global__ void __launch_bounds__(128)
rabitq_encode_ex(const T* __restrict__ x, const float* __restrict__ center, unsigned char* __restrict__ codes,
                 unsigned long long* __restrict__ heap_keys, unsigned short* __restrict__ levels, long long n,
                 long long d, long long code_size, int ex_bits, int inner_product) {
    const long long head = (d + 7) / 8 + 12;
    gq::RabitqHeap heap{heap_keys + gq::thread_index(), levels + gq::thread_index(), gq::thread_count()};
    for (long long i = gq::thread_index(); i < n; i += gq::thread_count()) {
        gq::RabitqRow<T> row{x + i * d, center, d};
        row.norm = gq::sqrt_f32(row.lane_dot(false));
        rabitq_extra_row(row, heap, codes + i * code_size + head, ex_bits, inner_product);
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
