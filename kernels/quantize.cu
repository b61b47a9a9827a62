// quantize.cu: transform (encode) and inverse_transform (decode) kernels of every scheme family.
//
// The per-element math lives in quant_math.cuh (shared with the host test library), the codecs
// that apply it to a task's values in codecs.cuh; this file only moves data. Layout: X is a
// C-contiguous (n, d) matrix of T (float, __half or double), the codes a C-contiguous (n, rc)
// matrix of code units (bytes, or 16-bit words for fp16/bf16), where rc = code units per row (d,
// ceil(d/2) for nibbles, ceil(d/8) for bits).
//
// Work split (encode_rows / decode_rows, walks.cuh): a task is (row, chunk of CPT code units: 4 values, or 8
// for binary). Consecutive threads take consecutive tasks, so warp accesses are contiguous; a
// grid-stride loop walks the tasks (the grid is a few blocks per SM, chosen by the caller), each
// thread loading UNROLL tasks before converting them. A task whose input lies inside the row and is
// aligned is loaded with one vector load (a float4 for 4 floats); its codes are stored with one
// store when aligned; row tails, odd d and unaligned views take the scalar path. Absmax gives each
// row (or block) a group of lanes (see LaneGroup) that holds it in registers when it fits: a max|x|
// reduction, then the encode; segments of up to 4096 values are held by several warps of a block
// (absmax_encode_block); longer or unaligned segments are re-read from L1/L2 instead.
//
// Input conversion: float16 widens exactly; float64 is rounded to float32 (nearest even, subnormal
// results kept) before any scheme math, as the reference does.

#include "walks.cuh"

// ===== kernels ================================================================================
// Kernels run 256 threads per block and are compiled for 4 resident blocks per SM (at most 64
// registers), the occupancy the grid of the launchers assumes.
// A kernel whose arguments select a mode (rounding, bits, format, saturation) switches on them once,
// before any loop, and calls its path function `<kernel>_path<..., modes>` with its own arguments:
// every mode gets a loop of its own with the mode folded in at compile time. bench/sass_report.py
// compiles each path function on its own (a kernel of the same arguments and launch bounds) to
// count the instructions of the loop that path runs; its FLAT (WALK) argument picks the walk that
// the kernels (-1) choose at run time, once, before the loop (1: encode_flat/decode_flat).

// The walk a scalar path takes, `rc` code units a row (WALK >= 0: that one): flat for 8-bit codes
// of one range on arrays flat_ok accepts, columns for per-dimension ranges when the threads cover
// a row's tasks (columns_fit), else rows. Encode and decode choose alike.
template <int WALK, typename Codec, typename A, typename B>
__device__ __forceinline__ int scalar_walk(int per_dim, const A* a, const B* b, long long rc) {
    return WALK >= 0 ? WALK : Codec::EPC == 1 && !per_dim && flat_ok(a, b) ? 1
                            : per_dim && columns_fit((rc + Codec::CPT - 1) / Codec::CPT) ? 2 : 0;
}

template <typename T, int R, int EPC, int WALK = -1>  // WALK: 0 rows, 1 flat, 2 columns, -1 chosen here
__device__ __forceinline__ void scalar_encode_path(const T* __restrict__ x, unsigned char* __restrict__ out,
                                                   long long n, long long d, const gq::ScalarParams* params,
                                                   int per_dim, int rounding, int, int is_signed, int high_first) {
    const ScalarCodec<EPC, R> enc{params, per_dim, rounding, is_signed, high_first, d, params[0]};
    const long long rc = EPC == 1 ? d : (d + 1) / 2;
    const int walk = scalar_walk<WALK, ScalarCodec<EPC, R>>(per_dim, x, out, rc);
    if (walk == 1) {
        encode_flat(enc.one_range(), x, out, n * d);
    } else if (walk == 2) {
        encode_columns(enc, x, out, n, d, rc);
    } else {
        encode_rows(enc, x, out, n, d, rc);
    }
}

// The scalar kernels' switch: rounding R and 8-bit (EPC 1) or 4-bit (EPC 2) codes.
#define GQ_SCALAR_SWITCH(PATH, ...)                                                               \
    switch (rounding * 2 + (bits == 8 ? 0 : 1)) {                                                 \
    case gq::HALF_AWAY * 2: PATH<__VA_ARGS__ gq::HALF_AWAY, 1>(GQ_SCALAR_ARGS); break;            \
    case gq::HALF_AWAY * 2 + 1: PATH<__VA_ARGS__ gq::HALF_AWAY, 2>(GQ_SCALAR_ARGS); break;        \
    case gq::FLOOR * 2: PATH<__VA_ARGS__ gq::FLOOR, 1>(GQ_SCALAR_ARGS); break;                    \
    case gq::FLOOR * 2 + 1: PATH<__VA_ARGS__ gq::FLOOR, 2>(GQ_SCALAR_ARGS); break;                \
    case gq::TRUNC * 2: PATH<__VA_ARGS__ gq::TRUNC, 1>(GQ_SCALAR_ARGS); break;                    \
    case gq::TRUNC * 2 + 1: PATH<__VA_ARGS__ gq::TRUNC, 2>(GQ_SCALAR_ARGS); break;                \
    case gq::HALF_EVEN * 2: PATH<__VA_ARGS__ gq::HALF_EVEN, 1>(GQ_SCALAR_ARGS); break;            \
    case gq::HALF_EVEN * 2 + 1: PATH<__VA_ARGS__ gq::HALF_EVEN, 2>(GQ_SCALAR_ARGS); break;        \
    }

template <typename T>
__global__ void __launch_bounds__(256, 4)
    scalar_encode(const T* __restrict__ x, unsigned char* __restrict__ out, long long n,
                              long long d, const gq::ScalarParams* params, int per_dim, int rounding,
                              int bits, int is_signed, int high_first) {
#define GQ_SCALAR_ARGS x, out, n, d, params, per_dim, rounding, bits, is_signed, high_first
    GQ_SCALAR_SWITCH(scalar_encode_path, T,)
#undef GQ_SCALAR_ARGS
}

template <int R, int EPC, int WALK = -1>  // WALK: 0 rows, 1 flat, 2 columns, -1 chosen here
__device__ __forceinline__ void scalar_decode_path(const unsigned char* __restrict__ codes, float* __restrict__ out,
                                                   long long n, long long d, const gq::ScalarParams* params,
                                                   int per_dim, int rounding, int, int is_signed, int high_first) {
    const ScalarCodec<EPC, R> dec{params, per_dim, rounding, is_signed, high_first, d, params[0]};
    const long long rc = EPC == 1 ? d : (d + 1) / 2;
    const int walk = scalar_walk<WALK, ScalarCodec<EPC, R>>(per_dim, out, codes, rc);
    if (walk == 1) {
        if constexpr (EPC == 1) {
            __shared__ float table[256];
            for (int c = threadIdx.x; c < 256; c += blockDim.x) {
                dec.one_range().unpack((unsigned char)c, 0, 0, table + c);
            }
            __syncthreads();
            decode_flat(TableDecoder{table}, codes, out, n * d);
        }
    } else if (walk == 2) {
        decode_columns(dec, codes, out, n, d, rc);
    } else {
        decode_rows(dec, codes, out, n, d, rc);
    }
}

__global__ void __launch_bounds__(256, 4)
    scalar_decode(const unsigned char* __restrict__ codes, float* __restrict__ out, long long n,
                              long long d, const gq::ScalarParams* params, int per_dim, int rounding,
                              int bits, int is_signed, int high_first) {
#define GQ_SCALAR_ARGS codes, out, n, d, params, per_dim, rounding, bits, is_signed, high_first
    GQ_SCALAR_SWITCH(scalar_decode_path, )
#undef GQ_SCALAR_ARGS
}
#undef GQ_SCALAR_SWITCH

template <typename T>
__global__ void __launch_bounds__(256, 4)
    binary_encode(const T* __restrict__ x, unsigned char* __restrict__ out, long long n,
                              long long d, const float* thresholds, int big, int is_signed) {
    BinaryCodec enc{thresholds, big, is_signed};
    encode_rows(enc, x, out, n, d, (d + 7) / 8);
}

__global__ void __launch_bounds__(256, 4)
    binary_decode(const unsigned char* __restrict__ codes, float* __restrict__ out, long long n,
                              long long d, int big, int is_signed) {
    BinaryCodec dec{nullptr, big, is_signed};
    decode_rows(dec, codes, out, n, d, (d + 7) / 8);
}

template <typename T, typename C, int F, int S, int FLAT = -1>
__device__ __forceinline__ void float_encode_path(const T* __restrict__ x, C* __restrict__ out, long long n,
                                                  long long d, int format, int saturate) {
    if (FLAT >= 0 ? FLAT == 1 : flat_ok(x, out)) {
        encode_flat(FloatCodec<C, F, S>{format, saturate}, x, out, n * d);
    } else {
        encode_rows(FloatCodec<C, F, S>{format, saturate}, x, out, n, d, d);
    }
}

template <typename T, typename C>
__global__ void __launch_bounds__(256, 4)
    float_encode(const T* __restrict__ x, C* __restrict__ out, long long n, long long d,
                             int format, int saturate) {
    // Only the formats whose codes have C's width are reachable for a given C.
    switch (format * 2 + (saturate ? 1 : 0)) {
#define GQ_FLOAT_CASE(F, S) \
    case F * 2 + S: float_encode_path<T, C, F, S>(x, out, n, d, format, saturate); break;
        GQ_FLOAT_CASE(gq::E4M3, 0) GQ_FLOAT_CASE(gq::E4M3, 1) GQ_FLOAT_CASE(gq::E5M2, 0)
        GQ_FLOAT_CASE(gq::E5M2, 1) GQ_FLOAT_CASE(gq::FP16, 0) GQ_FLOAT_CASE(gq::FP16, 1)
        GQ_FLOAT_CASE(gq::BF16, 0) GQ_FLOAT_CASE(gq::BF16, 1)
#undef GQ_FLOAT_CASE
    }
}

template <typename C, int F, int FLAT = -1>
__device__ __forceinline__ void float_decode_path(const C* __restrict__ codes, float* __restrict__ out, long long n,
                                                  long long d, int format) {
    const FloatCodec<C, F> dec{format, 0};
    if (FLAT >= 0 ? FLAT == 1 : flat_ok(out, codes)) {
        decode_flat(dec, codes, out, n * d);
    } else {
        decode_rows(dec, codes, out, n, d, d);
    }
}

template <typename C>
__global__ void __launch_bounds__(256, 4)
    float_decode(const C* __restrict__ codes, float* __restrict__ out, long long n, long long d,
                             int format) {
    switch (format) {
#define GQ_FLOAT_CASE(F) \
    case F: float_decode_path<C, F>(codes, out, n, d, format); break;
        GQ_FLOAT_CASE(gq::E4M3) GQ_FLOAT_CASE(gq::E5M2) GQ_FLOAT_CASE(gq::FP16) GQ_FLOAT_CASE(gq::BF16)
#undef GQ_FLOAT_CASE
    }
}

// Lanes of a warp share segments in groups of W lanes, so that a warp works on 32 / W segments at
// once: W = seg_len / 16 for blocks of 16..512 values that split a warp evenly (every lane holds
// ABSMAX_V4 float4 = 16 values: the fixed cost of a segment, its reduction and scale, is paid once
// per 16 values), else W = seg_len / 4 for blocks of 4..124 values (a float4 per lane), else 32.
// A group reduces with its own lane mask.
struct LaneGroup {
    int width, index, lane;  // lanes per segment, group index in the warp, lane in the group
    unsigned mask;
    __device__ LaneGroup(long long seg_len, int warp_lane) {
        const long long quads = seg_len / 4, sixteens = seg_len / 16;
        if (seg_len % 16 == 0 && sixteens <= 32 && 32 % sixteens == 0) {
            width = (int)sixteens;
        } else {
            width = (seg_len % 4 == 0 && seg_len < 128 && 32 % quads == 0) ? (int)quads : 32;
        }
        index = warp_lane / width;
        lane = warp_lane % width;
        mask = width == 32 ? 0xffffffffu : ((1u << width) - 1u) << (index * width);
    }
};

// Segments of up to 4 * W * ABSMAX_V4 values (a multiple of 4) stay in registers: one read of the
// input, 4 values per lane per step, 4 int8 codes (or 4 nibbles) stored per lane per step.
constexpr int ABSMAX_V4 = 4;

// A segment held in registers by `width` lanes: lane `lane` loads the float4 at values
// 4 * (lane + width * i) (i < ABSMAX_V4, those inside the segment) and returns its integer max |x|.
// VECS > 0: every lane holds exactly VECS float4 of the segment (seg_len = 4 * width * VECS), so no
// float4 needs a test; 0: those inside the segment.
template <int VECS, typename T>
__device__ __forceinline__ gq_u32 absmax_load(const T* src, bool live, int lane, int width, long long seg_len,
                                              float (&v)[ABSMAX_V4][4]) {
    gq_u32 m = 0;
#pragma unroll
    for (int i = 0; i < ABSMAX_V4; ++i) {
        const long long j = 4 * (lane + (long long)width * i);
        if (live && (VECS ? i < VECS : j < seg_len)) {
            load_vec<T, 4>(src + j, v[i]);  // src + j aligned to 4 * sizeof(T)
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const gq_u32 a = gq::bits_of(v[i][t]) & 0x7fffffffu;  // integer max == max |x|
                m = a > m ? a : m;
            }
        }
    }
    return m;
}

// The codes of the values absmax_load loaded, divided by D (absmax_record's): 4 int8 codes (one
// 32-bit store) or 4 nibbles (one 16-bit store) per float4. TS: D is the tensor scale's.
template <int TS, int BITS, int VECS>
__device__ __forceinline__ void absmax_store(const float (&v)[ABSMAX_V4][4], const gq::Divisor& D, unsigned char* dst,
                                             bool live, int lane, int width, long long seg_len, int high_first) {
    constexpr int qmax = BITS == 8 ? 127 : 7;
#pragma unroll
    for (int i = 0; i < ABSMAX_V4; ++i) {
        const long long j = 4 * (lane + (long long)width * i);
        if (live && (VECS ? i < VECS : j < seg_len)) {
            unsigned q[4];
#pragma unroll
            for (int t = 0; t < 4; ++t) q[t] = (unsigned)gq::absmax_code<!TS>(v[i][t], D, qmax);
            if (BITS == 8) {
                const unsigned word = (q[0] & 0xffu) | ((q[1] & 0xffu) << 8) | ((q[2] & 0xffu) << 16) | (q[3] << 24);
                gq::store_raw<unsigned>(dst + j, &word);
            } else {
                const unsigned short pair =
                    (unsigned short)(gq::pack_nibbles(q[0] & 0xfu, q[1] & 0xfu, high_first) |
                                     (gq::pack_nibbles(q[2] & 0xfu, q[3] & 0xfu, high_first) << 8));
                gq::store_raw<unsigned short>(dst + j / 2, &pair);
            }
        }
    }
}

// The divisor of a segment's codes, from its integer max |x| m: that of its own scale
// f32(f32(m + eps) / qmax), which the writer lane records, or (TS) the tensor scale's. The writer
// also records the row when the segment holds NaN or Inf (m + eps, and so the own scale, not finite).
template <int TS>
__device__ __forceinline__ gq::Divisor absmax_record(gq_u32 m, bool writer, float* scales, unsigned long long* bad_row,
                                                     long long seg, long long row, int qmax, float eps,
                                                     const gq::Divisor& tensor) {
    if (TS) {
        if (writer && !gq::is_finite(gq::add_f32(gq::float_of(m), eps))) atomicMin(bad_row, (unsigned long long)row);
        return tensor;
    }
    const float s = gq::absmax_scale(gq::float_of(m), eps, gq::qmax_divisor(qmax));
    if (writer) {
        scales[seg] = s;
        if (!gq::is_finite(s)) atomicMin(bad_row, (unsigned long long)row);
    }
    return gq::absmax_divisor(s);
}

// The tensor scale's divisor (TS), loaded and built once per thread; else unused.
template <int TS>
__device__ __forceinline__ gq::Divisor absmax_tensor_divisor(const float* tensor_scale) {
    return TS ? gq::absmax_divisor(tensor_scale[0]) : gq::Divisor{};
}

// absmax_record of a segment from its lanes' integer max |x| (by lane 0 of the group).
template <int TS>
__device__ __forceinline__ gq::Divisor absmax_segment_divisor(gq_u32 m, const LaneGroup& grp, bool live, float* scales,
                                                              unsigned long long* bad_row, long long seg, long long row,
                                                              int qmax, float eps, const gq::Divisor& tensor) {
    return absmax_record<TS>(__reduce_max_sync(grp.mask, m), live && grp.lane == 0, scales, bad_row, seg, row, qmax,
                             eps, tensor);
}

// The parameters of both absmax encode kernels, and their names.
#define GQ_ABSMAX_ENCODE_PARAMS                                                                          \
    const T *__restrict__ x, unsigned char *__restrict__ codes, float *__restrict__ scales,              \
        unsigned long long *bad_row, long long n, long long d, long long seg_len, long long groups, int bits, \
        int high_first, float eps, const float *__restrict__ tensor_scale, int use_tensor_scale
#define GQ_ABSMAX_ENCODE_ARGS                                                                            \
    x, codes, scales, bad_row, n, d, seg_len, groups, bits, high_first, eps, tensor_scale, use_tensor_scale
// Segments longer than a warp holds (512 values) and up to 4096 (the rows of int8-row and every
// per-row scale at common embedding sizes) stay in the registers of K warps of a block (K = 2, 4
// or 8, the fewest that hold the segment, 16 values per lane): a block takes warps / K segments
// per step; each warp reduces its max, the K warps of a segment combine theirs through shared
// memory (double buffered: one barrier per step). Every thread of a block runs the same steps (the
// barrier needs them all); a segment past the last computes and writes nothing.
constexpr int ABSMAX_MAX_WARPS = 8;  // warps per block the shared buffer holds (256 threads)

__device__ __forceinline__ int absmax_block_warps(long long seg_len) {  // K, or 0: not this path
    const long long per_warp = 4LL * 32 * ABSMAX_V4;
    if (seg_len <= per_warp || seg_len % 4 != 0 || blockDim.x % 32 != 0 || blockDim.x > 32 * ABSMAX_MAX_WARPS) return 0;
    for (int k = 2; k <= (int)blockDim.x / 32; k *= 2) {
        if (seg_len <= per_warp * k) return k;
    }
    return 0;
}

template <typename T, int K, int TS, int BITS>
__device__ void absmax_encode_block(const T* __restrict__ x, unsigned char* __restrict__ codes,
                                    float* __restrict__ scales, unsigned long long* bad_row, long long n, long long d,
                                    long long seg_len, long long groups, int, int high_first, float eps,
                                    const float* __restrict__ tensor_scale, int) {
    __shared__ gq_u32 warp_max[2][ABSMAX_MAX_WARPS];
    const int warp = (int)threadIdx.x / 32, part = warp % K, width = 32 * K;
    const int lane = part * 32 + (int)(threadIdx.x & 31), qmax = BITS == 8 ? 127 : 7;
    const long long per_block = (long long)(blockDim.x / 32) / K, rc = BITS == 8 ? d : (d + 1) / 2;
    const long long segments = n * groups, first = (long long)blockIdx.x * per_block;
    const long long stride = (long long)gridDim.x * per_block;
    TaskWalk w(n, groups, first + warp / K, stride);
    const gq::Divisor tensor_div = absmax_tensor_divisor<TS>(tensor_scale);
    int buf = 0;
    for (long long base = first; base < segments; base += stride, w.next(), buf ^= 1) {
        const bool live = w.more();
        const long long row = live ? w.row : n - 1, g = live ? w.chunk : groups - 1;
        const T* src = x + row * d + g * seg_len;
        unsigned char* dst = codes + row * rc + (BITS == 8 ? g * seg_len : g * seg_len / 2);
        float v[ABSMAX_V4][4];
        gq_u32 m = __reduce_max_sync(0xffffffffu, absmax_load<0>(src, live, lane, width, seg_len, v));
        if ((threadIdx.x & 31) == 0) warp_max[buf][warp] = m;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const gq_u32 o = warp_max[buf][warp - part + k];
            m = o > m ? o : m;
        }
        const gq::Divisor D = absmax_record<TS>(m, live && lane == 0, scales, bad_row, w.task, row, qmax, eps, tensor_div);
        absmax_store<TS, BITS, 0>(v, D, dst, live, lane, width, seg_len, high_first);
    }
}

// One group of lanes per segment (a row, or a block of seg_len values of a row; groups segments
// per row). scales[seg] = f32(f32(max|x| + eps) / qmax); codes int8 (bits 8) or nibbles (bits 4,
// rows of ceil(d/2) bytes). A non-finite own scale (NaN/Inf in the segment) lowers *bad_row to the
// row index. use_tensor_scale: encode with tensor_scale[0] (granularity "tensor"), write no scales.
// VECS > 0: every segment is VECS float4 a lane and aligned (absmax_encode_warps), so each step
// loads, reduces and stores without a test.
template <typename T, int TS, int BITS, int VECS>
__device__ void absmax_warps_walk(GQ_ABSMAX_ENCODE_PARAMS) {
    const LaneGroup grp(seg_len, threadIdx.x & 31);
    const int qmax = BITS == 8 ? 127 : 7, W = grp.width, per_warp = 32 / W;
    const long long rc = BITS == 8 ? d : (d + 1) / 2;
    const long long warps = thread_count() / 32, segments = n * groups;
    // Every lane of a warp runs the same number of steps (the group reductions need their lanes);
    // a group past the last segment computes nothing and writes nothing.
    // The segment's row and block follow by increments (no 64-bit division per segment).
    const long long first = (thread_index() / 32) * per_warp;
    TaskWalk w(n, groups, first + grp.index, warps * per_warp);
    const gq::Divisor tensor_div = absmax_tensor_divisor<TS>(tensor_scale);
    for (long long base = first; base < segments; base += warps * per_warp, w.next()) {
        const bool live = w.more();  // this group's segment exists
        const long long seg = live ? w.task : segments - 1;
        const long long row = live ? w.row : n - 1, g = live ? w.chunk : groups - 1;
        const T* src = x + row * d + g * seg_len;
        unsigned char* dst = codes + row * rc + (BITS == 8 ? g * seg_len : g * seg_len / 2);
        const bool in_registers = VECS > 0 || (seg_len % 4 == 0 && d % 4 == 0 && seg_len <= 4 * (long long)W * ABSMAX_V4 &&
                                           aligned(src, 4 * sizeof(T)) && aligned(dst, BITS == 8 ? 4 : 2));
        gq_u32 m = 0;
        if (in_registers) {
            float v[ABSMAX_V4][4];
            m = absmax_load<VECS>(src, live, grp.lane, W, seg_len, v);
            const gq::Divisor D = absmax_segment_divisor<TS>(m, grp, live, scales, bad_row, seg, row, qmax, eps, tensor_div);
            absmax_store<TS, BITS, VECS>(v, D, dst, live, grp.lane, W, seg_len, high_first);
            continue;
        }
        // Long or unaligned segments: a max pass, then an encode pass re-reading from L1/L2.
#pragma unroll 4
        for (long long i = grp.lane; live && i < seg_len; i += W) {
            const gq_u32 a = gq::bits_of(to_f32(src[i])) & 0x7fffffffu;
            m = a > m ? a : m;
        }
        const gq::Divisor D = absmax_segment_divisor<TS>(m, grp, live, scales, bad_row, seg, row, qmax, eps, tensor_div);
        if (!live) continue;
        if (BITS == 8) {
#pragma unroll 4
            for (long long i = grp.lane; i < seg_len; i += W) {
                dst[i] = (unsigned char)(gq::absmax_code<!TS>(to_f32(src[i]), D, qmax) & 0xff);
            }
        } else {
            const long long nbytes = (seg_len + 1) / 2;
            for (long long b = grp.lane; b < nbytes; b += W) {
                const unsigned lo = (unsigned)gq::absmax_code<!TS>(to_f32(src[2 * b]), D, qmax) & 0xfu;
                const unsigned hi =
                    (2 * b + 1 < seg_len) ? (unsigned)gq::absmax_code<!TS>(to_f32(src[2 * b + 1]), D, qmax) & 0xfu : 0u;
                dst[b] = gq::pack_nibbles(lo, hi, high_first);
            }
        }
    }
}

// Segments of 4 * W * k values (k float4 a lane) in aligned arrays take a walk without tests: k = 4
// (the blocks of 16 * W values LaneGroup makes) and, where THREE, k = 3 (rows of 384 on a warp).
template <typename T, int TS, int BITS, bool THREE>
__device__ __forceinline__ void absmax_encode_warps(GQ_ABSMAX_ENCODE_PARAMS) {
    const long long quad = 4LL * LaneGroup(seg_len, 0).width;
    const bool aligned_all = d % 4 == 0 && aligned(x, 4 * sizeof(T)) && aligned(codes, BITS == 8 ? 4 : 2);
    if (aligned_all && seg_len == ABSMAX_V4 * quad) {
        absmax_warps_walk<T, TS, BITS, ABSMAX_V4>(GQ_ABSMAX_ENCODE_ARGS);
    } else if (THREE && aligned_all && seg_len == 3 * quad) {
        absmax_warps_walk<T, TS, BITS, THREE ? 3 : 0>(GQ_ABSMAX_ENCODE_ARGS);
    } else {
        absmax_warps_walk<T, TS, BITS, 0>(GQ_ABSMAX_ENCODE_ARGS);
    }
}

// The absmax encode kernels' switch: tensor scale or not (TS), 8- or 4-bit codes.
#define GQ_ABSMAX_MODES(PATH)                                                                  \
    switch (use_tensor_scale * 2 + (bits == 8 ? 1 : 0)) {                                      \
    case 0: PATH<T, 0, 4>(GQ_ABSMAX_ENCODE_ARGS); break;                                       \
    case 1: PATH<T, 0, 8>(GQ_ABSMAX_ENCODE_ARGS); break;                                       \
    case 2: PATH<T, 1, 4>(GQ_ABSMAX_ENCODE_ARGS); break;                                       \
    default: PATH<T, 1, 8>(GQ_ABSMAX_ENCODE_ARGS); break;                                      \
    }

// VECS >= 0: that walk of absmax_warps_walk (bench/sass_report.py); -1: chosen here.
template <typename T, int TS, int BITS, int VECS = -1>
__device__ __forceinline__ void absmax_encode_path(GQ_ABSMAX_ENCODE_PARAMS) {
    if constexpr (VECS >= 0) {
        absmax_warps_walk<T, TS, BITS, VECS>(GQ_ABSMAX_ENCODE_ARGS);
    } else {
        absmax_encode_warps<T, TS, BITS, BITS == 8>(GQ_ABSMAX_ENCODE_ARGS);  // int8 rows of 384: k = 3
    }
}

// (The kernels spell their parameters out: bench/sass_report.py reads them to build its probes.)
template <typename T>
__global__ void __launch_bounds__(256, 4)
    absmax_encode(const T* __restrict__ x, unsigned char* __restrict__ codes, float* __restrict__ scales,
                  unsigned long long* bad_row, long long n, long long d, long long seg_len, long long groups, int bits,
                  int high_first, float eps, const float* __restrict__ tensor_scale, int use_tensor_scale) {
    GQ_ABSMAX_MODES(absmax_encode_path)
}

// absmax_encode for segments of 513..4096 values, held by several warps (absmax_encode_block), a
// kernel of its own so that the other segment lengths keep absmax_encode's registers and code. The
// launcher picks it for such segments when d % 4 == 0 and x and codes are aligned; any other
// arguments take absmax_encode's path here too.
// WARPS > 0: absmax_encode_block with that many warps a segment (bench/sass_report.py); -1: chosen here.
template <typename T, int TS, int BITS, int WARPS = -1>
__device__ __forceinline__ void absmax_encode_rows_path(GQ_ABSMAX_ENCODE_PARAMS) {
    const int K = WARPS > 0 ? WARPS
                            : d % 4 == 0 && aligned(x, 4 * sizeof(T)) && aligned(codes, BITS == 8 ? 4 : 2)
                                  ? absmax_block_warps(seg_len) : 0;
    switch (K) {
    case 2: absmax_encode_block<T, 2, TS, BITS>(GQ_ABSMAX_ENCODE_ARGS); break;
    case 4: absmax_encode_block<T, 4, TS, BITS>(GQ_ABSMAX_ENCODE_ARGS); break;
    case 8: absmax_encode_block<T, 8, TS, BITS>(GQ_ABSMAX_ENCODE_ARGS); break;
    default: absmax_encode_warps<T, TS, BITS, false>(GQ_ABSMAX_ENCODE_ARGS);
    }
}

template <typename T>
__global__ void __launch_bounds__(256, 4) absmax_encode_rows(const T* __restrict__ x, unsigned char* __restrict__ codes,
                                                             float* __restrict__ scales, unsigned long long* bad_row,
                                                             long long n, long long d, long long seg_len, long long groups,
                                                             int bits, int high_first, float eps,
                                                             const float* __restrict__ tensor_scale,
                                                             int use_tensor_scale) {
    // per mode: K warps a segment where absmax_block_warps allows it, else absmax_encode's path
    GQ_ABSMAX_MODES(absmax_encode_rows_path)
}
#undef GQ_ABSMAX_MODES
#undef GQ_ABSMAX_ENCODE_ARGS
#undef GQ_ABSMAX_ENCODE_PARAMS

// The quads of segment_quads_decode for absmax codes: 4 int8 codes or 2 nibble bytes.
template <int EPC>
struct AbsmaxQuad {
    static constexpr int CODE_BYTES = 4 / EPC;
    int high_first;
    __device__ __forceinline__ void quad(const unsigned char* c, float s, float* v) const {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int level = EPC == 1 ? (int)(signed char)c[k]
                                       : gq::sign_extend4(gq::unpack_nibble(c[k / 2], k % 2, high_first));
            v[k] = gq::absmax_value(level, s);
        }
    }
};

template <int EPC, int LAYOUT>
__device__ __forceinline__ void absmax_decode_path(const unsigned char* __restrict__ codes,
                                                   const float* __restrict__ scales, float* __restrict__ out,
                                                   long long n, long long d, long long seg_len, long long groups,
                                                   int, int high_first, int tensor) {
    if constexpr (LAYOUT == SEGMENT_QUADS) {
        segment_quads_decode(AbsmaxQuad<EPC>{high_first}, codes, scales, out, n * d, tensor ? n * d : seg_len);
    } else {
        const gq::DivU32 block_of(LAYOUT == BLOCK_SCALE ? seg_len : 1);
        const AbsmaxDecoder<EPC, LAYOUT> dec{scales, groups, seg_len, high_first, block_of};
        decode_rows(dec, codes, out, n, d, EPC == 1 ? d : (d + 1) / 2);
    }
}

// tensor: every value uses scales[0] (granularity "tensor"); else scales is (n, groups).
__global__ void __launch_bounds__(256, 4)
    absmax_decode(const unsigned char* __restrict__ codes, const float* __restrict__ scales,
                  float* __restrict__ out, long long n, long long d, long long seg_len, long long groups, int bits,
                  int high_first, int tensor) {
    // Segments of whole float4s (a tensor scale: one segment of every value) are one flat array.
    const bool quads = d % 4 == 0 && (tensor || groups * seg_len == d) &&
                       segment_quads_fit(n * d, tensor ? n * d : seg_len) && aligned(codes, bits == 8 ? 4 : 2) &&
                       aligned(out, 16);
    // BLOCK_SCALE needs every column index (and seg_len <= d) to fit in 32 bits.
    const int layout = quads ? SEGMENT_QUADS : tensor ? TENSOR_SCALE : groups == 1 ? ROW_SCALE
                                                    : d <= 0xffffffffLL ? BLOCK_SCALE : BLOCK_SCALE_WIDE;
    switch (layout * 2 + (bits == 8 ? 0 : 1)) {
#define GQ_ABSMAX_CASE(L)                                                                                     \
    case L * 2: absmax_decode_path<1, L>(codes, scales, out, n, d, seg_len, groups, bits, high_first, tensor); \
        break;                                                                                                \
    case L * 2 + 1: absmax_decode_path<2, L>(codes, scales, out, n, d, seg_len, groups, bits, high_first, tensor); \
        break;
        GQ_ABSMAX_CASE(TENSOR_SCALE) GQ_ABSMAX_CASE(ROW_SCALE) GQ_ABSMAX_CASE(BLOCK_SCALE)
        GQ_ABSMAX_CASE(BLOCK_SCALE_WIDE) GQ_ABSMAX_CASE(SEGMENT_QUADS)
#undef GQ_ABSMAX_CASE
    }
}
