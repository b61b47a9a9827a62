// walks.cuh: how the kernels of quantize.cu move data: the grid-stride walks over tasks
// (encode_rows, encode_columns, encode_flat; decode_rows, decode_columns, decode_flat), a task's
// vector loads and stores, and the tasks each thread keeps in flight. The codecs (codecs.cuh) say
// what a task's values become; quantize.cu picks a walk per kernel path.

#pragma once

#include "codecs.cuh"
#include "device_io.cuh"
#include "quant_math.cuh"

namespace {

using gq::aligned;
using gq::load_vec;
using gq::thread_count;
using gq::thread_index;
using gq::to_f32;

// Each task covers Codec::CPT code units of one row (4 values: one float4 read, 4 int8 / fp8 codes
// or 2 nibble bytes written; 8 values for binary). Consecutive threads take consecutive tasks, so a
// warp's loads and stores are contiguous (coalesced), and each thread keeps UNROLL tasks in flight:
// it loads all of them before converting any.
constexpr int UNROLL = 4;

// The word type that moves N bytes at once (N = 1, 2, 4, 8 or 16).
template <int N> struct Word;
template <> struct Word<1> { typedef unsigned char type; };
template <> struct Word<2> { typedef unsigned short type; };
template <> struct Word<4> { typedef unsigned type; };
template <> struct Word<8> { typedef uint2 type; };
template <> struct Word<16> { typedef uint4 type; };

// N bytes between global memory (aligned to N) and a local array, in one move.
template <int N>
__device__ __forceinline__ void move_out(void* p, const void* local) {
    gq::store_raw<typename Word<N>::type>(p, local);
}
template <int N>
__device__ __forceinline__ void move_in(void* local, const void* p) {
    gq::load_raw<typename Word<N>::type>(p, local);
}

// The grid-stride walk over tasks (row, chunk): one division per thread at the start, then an
// increment per step (a 64-bit division per task would cost more than the math of a task).
// (Also walks absmax segments: task = segment, chunk = block of the row, from a warp's own start.)
struct TaskWalk {
    long long tasks, per_row, row, chunk, task, step_rows, step_chunks, step;
    __device__ TaskWalk(long long n, long long per_row_, long long start = thread_index(),
                        long long step_ = thread_count())
        : tasks(n * per_row_), per_row(per_row_), task(start), step(step_) {
        row = task / per_row;
        chunk = task - row * per_row;
        step_rows = step / per_row;
        step_chunks = step - step_rows * per_row;
    }
    __device__ __forceinline__ bool more() const { return task < tasks; }
    __device__ __forceinline__ void next() {
        task += step;
        row += step_rows;
        chunk += step_chunks;
        if (chunk >= per_row) {
            chunk -= per_row;
            ++row;
        }
    }
};

// One encode task: its EPT input values (columns col0.., zeros past d; a vector load when inside the
// row and aligned), and its CPT codes stored (one store when aligned, else code by code).
template <typename T, int EPT>
__device__ __forceinline__ void load_task(const T* src, long long col0, long long d, float* v) {
    constexpr int IN_BYTES = EPT * (int)sizeof(T);
    if (col0 + EPT <= d && aligned(src, IN_BYTES < 16 ? IN_BYTES : 16)) {
        load_vec<T, EPT>(src, v);
    } else {
#pragma unroll
        for (int t = 0; t < EPT; ++t) v[t] = (col0 + t < d) ? to_f32(src[t]) : 0.0f;
    }
}
template <typename Enc>
__device__ __forceinline__ void store_task(const Enc& enc, const float* v, typename Enc::code_t* dst, long long col0,
                                           long long left, long long d) {
    typedef typename Enc::code_t C;
    constexpr int CPT = Enc::CPT, OUT_BYTES = CPT * (int)sizeof(C);
    __align__(16) C codes[CPT];
#pragma unroll
    for (int k = 0; k < CPT; ++k) codes[k] = enc.pack(v + k * Enc::EPC, col0 + k * Enc::EPC, d);
    if (left >= CPT && aligned(dst, OUT_BYTES)) {
        move_out<OUT_BYTES>(dst, codes);
    } else {
        for (int k = 0; k < CPT && k < left; ++k) dst[k] = codes[k];
    }
}

// Tasks in flight per thread: UNROLL, or fewer for tasks of more than 16 bytes (binary: 32), so
// that a thread keeps 64 bytes in flight within 64 registers.
template <typename T, typename Enc>
constexpr int TASKS_IN_FLIGHT =
    Enc::CPT * Enc::EPC * (int)sizeof(T) > 16 ? UNROLL * 16 / (Enc::CPT * Enc::EPC * (int)sizeof(T)) : UNROLL;

// Encode skeleton. Enc::pack(v, col, d) turns Enc::EPC values (columns col.., pads past d) into a
// code unit.
template <typename T, typename Enc>
__device__ void encode_rows(const Enc& enc, const T* __restrict__ x, typename Enc::code_t* __restrict__ out,
                            long long n, long long d, long long rc) {
    constexpr int CPT = Enc::CPT, EPT = CPT * Enc::EPC, U = TASKS_IN_FLIGHT<T, Enc>;
    for (TaskWalk w(n, (rc + CPT - 1) / CPT); w.more();) {
        long long row[U], chunk[U];
        float v[U][EPT];
        int count = 0;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (w.more()) {
                row[u] = w.row;
                chunk[u] = w.chunk;
                count = u + 1;
                load_task<T, EPT>(x + w.row * d + w.chunk * EPT, w.chunk * EPT, d, v[u]);
                w.next();
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (u < count) {
                store_task(enc, v[u], out + row[u] * rc + chunk[u] * CPT, chunk[u] * EPT, rc - chunk[u] * CPT, d);
            }
        }
    }
}

// Column walk, for codecs whose constants depend on the column (per-dimension ranges), on a grid
// of at least one thread per task of a row (columns_fit): thread t keeps the task t % per_row of
// every row it visits, rows t / per_row + k * R (R = threads / per_row; the last threads % per_row
// threads idle), so the constants of its columns are loaded once, before the loop, and each step
// is a pointer increment. Whether its tasks are whole aligned vectors is the same in every row
// (columns_vectors): decided once, it picks the loop (VEC), so the loop tests nothing per task.
__device__ __forceinline__ bool columns_fit(long long per_row) { return thread_count() >= per_row; }

template <typename T, typename C, int EPT, int CPT>
__device__ __forceinline__ bool columns_vectors(const T* src, const C* dst, long long src_step, long long dst_step,
                                                long long col0, long long left, long long d) {
    constexpr int IN_BYTES = EPT * (int)sizeof(T) < 16 ? EPT * (int)sizeof(T) : 16, OUT_BYTES = CPT * (int)sizeof(C);
    return col0 + EPT <= d && left >= CPT && aligned(src, IN_BYTES) && aligned(dst, OUT_BYTES) &&
           (src_step * (long long)sizeof(T)) % IN_BYTES == 0 && (dst_step * (long long)sizeof(C)) % OUT_BYTES == 0;
}

// One column task: VEC, a vector load and one store of its CPT codes (inside the row, aligned);
// else load_task / store_task, which test both.
template <bool VEC, typename T, typename Enc>
__device__ __forceinline__ void column_load(const T* src, long long col0, long long d, float* v) {
    constexpr int EPT = Enc::CPT * Enc::EPC;
    if (VEC) {
        load_vec<T, EPT>(src, v);
    } else {
        load_task<T, EPT>(src, col0, d, v);
    }
}
template <bool VEC, typename Enc>
__device__ __forceinline__ void column_store(const Enc& enc, const float* v, typename Enc::code_t* dst, long long col0,
                                             long long left, long long d) {
    typedef typename Enc::code_t C;
    constexpr int CPT = Enc::CPT, EPT = CPT * Enc::EPC;
    if (VEC) {
        __align__(16) C codes[CPT];
#pragma unroll
        for (int k = 0; k < CPT; ++k) codes[k] = enc.pack(v + k * Enc::EPC, col0 + k * Enc::EPC, col0 + EPT);
        move_out<CPT * (int)sizeof(C)>(dst, codes);
    } else {
        store_task(enc, v, dst, col0, left, d);
    }
}

template <bool VEC, typename T, typename Enc>
__device__ void encode_column_rows(const Enc& fixed, const T* __restrict__ src, typename Enc::code_t* __restrict__ dst,
                                   long long r, long long n, long long d, long long step, long long src_step,
                                   long long dst_step, long long col0, long long left) {
    constexpr int EPT = Enc::CPT * Enc::EPC, U = TASKS_IN_FLIGHT<T, Enc>;
    for (; r + (U - 1) * step < n; r += U * step) {  // U rows at once, every one present
        float v[U][EPT];
#pragma unroll
        for (int u = 0; u < U; ++u) column_load<VEC, T, Enc>(src + u * src_step, col0, d, v[u]);
#pragma unroll
        for (int u = 0; u < U; ++u) column_store<VEC>(fixed, v[u], dst + u * dst_step, col0, left, d);
        src += U * src_step;
        dst += U * dst_step;
    }
    for (; r < n; r += step, src += src_step, dst += dst_step) {  // the last rows, one by one
        float v[EPT];
        column_load<VEC, T, Enc>(src, col0, d, v);
        column_store<VEC>(fixed, v, dst, col0, left, d);
    }
}

template <typename T, typename Enc>
__device__ void encode_columns(const Enc& enc, const T* __restrict__ x, typename Enc::code_t* __restrict__ out,
                               long long n, long long d, long long rc) {
    constexpr int CPT = Enc::CPT, EPT = CPT * Enc::EPC;
    const long long per_row = (rc + CPT - 1) / CPT, rows_per_step = thread_count() / per_row;
    const long long t = thread_index(), chunk = t % per_row, col0 = chunk * EPT, left = rc - chunk * CPT;
    if (t >= rows_per_step * per_row) return;
    const T* src = x + (t / per_row) * d + col0;
    typename Enc::code_t* dst = out + (t / per_row) * rc + chunk * CPT;
    const long long src_step = rows_per_step * d, dst_step = rows_per_step * rc;
    const auto fixed = enc.template fixed_columns<EPT>(col0, d);
    if (columns_vectors<T, typename Enc::code_t, EPT, CPT>(src, dst, src_step, dst_step, col0, left, d)) {
        encode_column_rows<true>(fixed, src, dst, t / per_row, n, d, rows_per_step, src_step, dst_step, col0, left);
    } else {
        encode_column_rows<false>(fixed, src, dst, t / per_row, n, d, rows_per_step, src_step, dst_step, col0, left);
    }
}

// Flat walk for codecs whose code i belongs to value i and whose math does not depend on the
// column (float casts, per-tensor 8-bit ranges): the C-contiguous matrix is one array of `total`
// values, 4 per task (one vector load, one 4-code store), UNROLL tasks in flight per thread, no
// per-row index math. Needs x aligned to 4 * sizeof(T) and out to 4 * sizeof(C); one thread
// converts the last total % 4 values.
template <typename T, typename Enc>
__device__ void encode_flat(const Enc& enc, const T* __restrict__ x, typename Enc::code_t* __restrict__ out,
                            long long total) {
    typedef typename Enc::code_t C;
    const long long quads = total / 4, step = thread_count();
    for (long long q0 = thread_index(); q0 < quads; q0 += step * UNROLL) {
        float v[UNROLL][4];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (q0 + u * step < quads) load_vec<T, 4>(x + 4 * (q0 + u * step), v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (q0 + u * step < quads) {
                __align__(8) C c[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) c[k] = enc.pack(&v[u][k], 0, 1);
                move_out<4 * (int)sizeof(C)>(out + 4 * (q0 + u * step), c);
            }
        }
    }
    if (thread_index() == 0) {
        for (long long i = 4 * quads; i < total; ++i) {
            const float f = to_f32(x[i]);
            out[i] = enc.pack(&f, 0, 1);
        }
    }
}

template <typename Dec>
__device__ void decode_flat(const Dec& dec, const typename Dec::code_t* __restrict__ codes, float* __restrict__ out,
                            long long total) {
    typedef typename Dec::code_t C;
    const long long quads = total / 4, step = thread_count();
    for (long long q0 = thread_index(); q0 < quads; q0 += step * UNROLL) {
        __align__(8) C c[UNROLL][4];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (q0 + u * step < quads) move_in<4 * (int)sizeof(C)>(c[u], codes + 4 * (q0 + u * step));
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (q0 + u * step < quads) {
                __align__(16) float v[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) dec.unpack(c[u][k], 0, 0, v + k);
                gq::store_raw<float4>(out + 4 * (q0 + u * step), v);
            }
        }
    }
    if (thread_index() == 0) {
        for (long long i = 4 * quads; i < total; ++i) dec.unpack(codes[i], 0, 0, out + i);
    }
}

// Whether the flat walk applies: both buffers aligned for its vector moves.
template <typename T, typename C>
__device__ __forceinline__ bool flat_ok(const T* x, const C* c) {
    return aligned(x, 4 * sizeof(T)) && aligned(c, 4 * sizeof(C));
}

// One decode task's CPT code units (one load when inside the row and aligned, zeros past rc) and
// its EPT values stored (float4 stores when inside the row and aligned, else value by value).
template <typename C, int CPT>
__device__ __forceinline__ void load_codes(const C* src, long long left, C* c) {
    constexpr int IN_BYTES = CPT * (int)sizeof(C);
    if (left >= CPT && aligned(src, IN_BYTES)) {
        move_in<IN_BYTES>(c, src);
    } else {
#pragma unroll
        for (int k = 0; k < CPT; ++k) c[k] = (k < left) ? src[k] : C(0);
    }
}
template <typename Dec, typename F>
__device__ __forceinline__ void store_values(const F& dec, const typename Dec::code_t* c, float* dst, long long row,
                                             long long col0, long long d) {
    constexpr int CPT = Dec::CPT, EPT = CPT * Dec::EPC;
    __align__(16) float v[EPT];
#pragma unroll
    for (int k = 0; k < CPT; ++k) dec.unpack(c[k], row, col0 + k * Dec::EPC, v + k * Dec::EPC);
    if (col0 + EPT <= d && aligned(dst, 16)) {
#pragma unroll
        for (int i = 0; i < EPT / 4; ++i) gq::store_raw<float4>(dst + 4 * i, v + 4 * i);
    } else {
        for (int t = 0; t < EPT && col0 + t < d; ++t) dst[t] = v[t];
    }
}

// Decode skeleton. Dec::unpack(code, row, col, v) writes Dec::EPC floats (columns col..).
template <typename Dec>
__device__ void decode_rows(const Dec& dec, const typename Dec::code_t* __restrict__ codes,
                            float* __restrict__ out, long long n, long long d, long long rc) {
    typedef typename Dec::code_t C;
    constexpr int CPT = Dec::CPT, EPT = CPT * Dec::EPC;
    for (TaskWalk w(n, (rc + CPT - 1) / CPT); w.more();) {
        long long row[UNROLL], chunk[UNROLL];
        __align__(16) C c[UNROLL][CPT];
        int count = 0;
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (w.more()) {
                row[u] = w.row;
                chunk[u] = w.chunk;
                count = u + 1;
                load_codes<C, CPT>(codes + w.row * rc + w.chunk * CPT, rc - w.chunk * CPT, c[u]);
                w.next();
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (u < count) store_values<Dec>(dec, c[u], out + row[u] * d + chunk[u] * EPT, row[u], chunk[u] * EPT, d);
        }
    }
}

// The column walk of encode_columns for decoders with per-column constants (Dec::fixed_columns):
// thread t on task t % per_row of the rows t / per_row + k * R, its columns' constants in registers.
template <typename Dec>
__device__ void decode_columns(const Dec& dec, const typename Dec::code_t* __restrict__ codes,
                               float* __restrict__ out, long long n, long long d, long long rc) {
    typedef typename Dec::code_t C;
    constexpr int CPT = Dec::CPT, EPT = CPT * Dec::EPC;
    const long long per_row = (rc + CPT - 1) / CPT, rows_per_step = thread_count() / per_row;
    const long long t = thread_index(), chunk = t % per_row, col0 = chunk * EPT, left = rc - chunk * CPT;
    if (t >= rows_per_step * per_row) return;
    const C* src = codes + (t / per_row) * rc + chunk * CPT;
    float* dst = out + (t / per_row) * d + col0;
    const long long src_step = rows_per_step * rc, dst_step = rows_per_step * d;
    const auto fixed = dec.template fixed_columns<EPT>(col0, d);
    for (long long r = t / per_row; r < n; r += rows_per_step * UNROLL) {
        __align__(16) C c[UNROLL][CPT];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (r + u * rows_per_step < n) load_codes<C, CPT>(src + u * src_step, left, c[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (r + u * rows_per_step < n) store_values<Dec>(fixed, c[u], dst + u * dst_step, r + u * rows_per_step, col0, d);
        }
        src += UNROLL * src_step;
        dst += UNROLL * dst_step;
    }
}

// Flat walk for decoders with one scale per segment of seg_len values, every segment whole float4s
// (seg_len % 4 == 0) and the segments one after another in the codes and the output (a row's scale, a
// block's, or one segment of every value for a tensor scale): quad q (Dec::CODE_BYTES code bytes in,
// one float4 out) has scale scales[q / (seg_len / 4)], that index by gq::DivU32 in 32-bit arithmetic
// (segment_quads_fit: every quad index below 2^32), so no division per value and no row walk; UNROLL
// quads in flight per thread. Dec::quad(c, s, v) writes the 4 values of code bytes c under scale s.
// Needs codes aligned to Dec::CODE_BYTES and out to 16 bytes.
__device__ __forceinline__ bool segment_quads_fit(long long values, long long seg_len) {
    return values > 0 && seg_len > 0 && seg_len % 4 == 0 && values % seg_len == 0 &&
           values / 4 + (long long)UNROLL * thread_count() <= 0xffffffffLL;
}

template <typename Dec>
__device__ void segment_quads_decode(const Dec& dec, const unsigned char* __restrict__ codes,
                                     const float* __restrict__ scales, float* __restrict__ out, long long values,
                                     long long seg_len) {
    constexpr int CB = Dec::CODE_BYTES;
    const unsigned quads = (unsigned)(values / 4), step = (unsigned)thread_count();
    const gq::DivU32 segment_of((unsigned long long)seg_len / 4);
    for (unsigned q0 = (unsigned)thread_index(); q0 < quads; q0 += step * UNROLL) {
        __align__(4) unsigned char c[UNROLL][4];
        float s[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const unsigned q = q0 + u * step;
            if (q < quads) {
                move_in<CB>(c[u], codes + (unsigned long long)q * CB);
                s[u] = scales[segment_of(q)];
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const unsigned q = q0 + u * step;
            if (q < quads) {
                __align__(16) float v[4];
                dec.quad(c[u], s[u], v);
                gq::store_raw<float4>(out + 4 * (unsigned long long)q, v);
            }
        }
    }
}

}  // namespace
