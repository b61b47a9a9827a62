// host_emulation.cpp: kernels/quantize.cu, rabitq.cu, rotate.cu and weights.cu compiled for the host, its
// threads run one after another, so tests/test_kernels_host.py can check the kernels' own loops (row/chunk tasks, 16-byte vector
// paths, unaligned views, row tails, packing) against the numpy reference without a GPU.
// Kernels whose threads cooperate (absmax_encode, scalar_decode's shared table) cannot run this
// way: tests/host_emulation_warps.cpp runs them.

#include "host_emulation.h"

#include <vector>

struct Dim { unsigned x; };
static Dim threadIdx{0}, blockIdx{0}, blockDim{1}, gridDim{1};

#define __shared__ static
inline void __syncthreads() { __builtin_trap(); }  // no kernel run here waits for its block
inline unsigned __reduce_max_sync(unsigned, unsigned v) { return v; }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    const unsigned long long old = *p;
    *p = v < old ? v : old;
    return old;
}

#include "quantize.cu"
#include "rabitq.cu"
#include "rotate.cu"
#include "weights.cu"

// Run `launch` as a grid of `blocks` x `threads`, one thread at a time.
template <typename F>
static void run_grid(int blocks, int threads, F launch) {
    gridDim.x = (unsigned)blocks;
    blockDim.x = (unsigned)threads;
    for (int b = 0; b < blocks; ++b) {
        for (int t = 0; t < threads; ++t) {
            blockIdx.x = (unsigned)b;
            threadIdx.x = (unsigned)t;
            launch();
        }
    }
}

// Failures of FloatCodec<_, F, S>::fp8_fixed_up (the fix-up of the fp8 encoder's sm_89+ path) around
// the host model of the hardware's saturating conversion, gq::float_encode(v, F, true), against the
// reference gq::float_encode(x, F, S): every float32 with bits hi << 16 | lows[k], every hi (each sign,
// exponent and leading significand: every class, each threshold's neighbours when lows holds 0, 1 and
// 0xffff). The model maps a NaN to a wrong code (0x55): the fix-up must never pass one to it.
template <int F, int S>
static long long fp8_fixup_failures(const unsigned* lows, int nlow, unsigned* bad) {
    const FloatCodec<unsigned char, F, S> codec{F, S};
    const auto model = [](float v) { return gq::is_nan(v) ? 0x55u : gq::float_encode(v, F, true); };
    long long failures = 0;
    for (unsigned hi = 0; hi < 0x10000u; ++hi) {
        for (int k = 0; k < nlow; ++k) {
            const unsigned u = (hi << 16) | (lows[k] & 0xffffu);
            const float x = gq::float_of(u);
            if (codec.fp8_fixed_up(x, model) != gq::float_encode(x, F, S != 0) && failures++ == 0) *bad = u;
        }
    }
    return failures;
}

extern "C" {

void emu_scalar_encode(int blocks, int threads, int dtype, const void* x, unsigned char* out, long long n,
                       long long d, const gq::ScalarParams* params, int per_dim, int rounding, int bits,
                       int is_signed, int high_first) {
    GQ_DISPATCH(dtype, run_grid(blocks, threads, [&] {
        scalar_encode<T>((const T*)x, out, n, d, params, per_dim, rounding, bits, is_signed, high_first);
    }))
}

void emu_binary_encode(int blocks, int threads, int dtype, const void* x, unsigned char* out, long long n,
                       long long d, const float* thresholds, int big, int is_signed) {
    GQ_DISPATCH(dtype, run_grid(blocks, threads, [&] {
        binary_encode<T>((const T*)x, out, n, d, thresholds, big, is_signed);
    }))
}

void emu_binary_decode(int blocks, int threads, const unsigned char* codes, float* out, long long n, long long d,
                       int big, int is_signed) {
    run_grid(blocks, threads, [&] { binary_decode(codes, out, n, d, big, is_signed); });
}

void emu_float_encode(int blocks, int threads, int dtype, const void* x, void* out, long long n, long long d,
                      int format, int saturate) {
    const bool wide = format == gq::FP16 || format == gq::BF16;
    GQ_DISPATCH(dtype, run_grid(blocks, threads, [&] {
        if (wide) {
            float_encode<T, unsigned short>((const T*)x, (unsigned short*)out, n, d, format, saturate);
        } else {
            float_encode<T, unsigned char>((const T*)x, (unsigned char*)out, n, d, format, saturate);
        }
    }))
}

void emu_float_decode(int blocks, int threads, const void* codes, float* out, long long n, long long d, int format) {
    run_grid(blocks, threads, [&] {
        if (format == gq::FP16 || format == gq::BF16) {
            float_decode<unsigned short>((const unsigned short*)codes, out, n, d, format);
        } else {
            float_decode<unsigned char>((const unsigned char*)codes, out, n, d, format);
        }
    });
}

void emu_absmax_decode(int blocks, int threads, const unsigned char* codes, const float* scales, float* out,
                       long long n, long long d, long long seg_len, long long groups, int bits, int high_first,
                       int tensor) {
    run_grid(blocks, threads, [&] {
        absmax_decode(codes, scales, out, n, d, seg_len, groups, bits, high_first, tensor);
    });
}

// Block scales found by the 64-bit division per value (the path of rows of 2^32 values or more).
void emu_absmax_decode_wide(int blocks, int threads, const unsigned char* codes, const float* scales, float* out,
                            long long n, long long d, long long seg_len, long long groups, int bits, int high_first,
                            int tensor) {
    run_grid(blocks, threads, [&] {
#define GQ_ARGS codes, scales, out, n, d, seg_len, groups, bits, high_first, tensor
        if (bits == 8) {
            absmax_decode_path<1, BLOCK_SCALE_WIDE>(GQ_ARGS);
        } else {
            absmax_decode_path<2, BLOCK_SCALE_WIDE>(GQ_ARGS);
        }
#undef GQ_ARGS
    });
}

void emu_rabitq_encode1(int blocks, int threads, int dtype, const void* x, const float* center, unsigned char* codes,
                        unsigned long long* bad, long long n, long long d, long long code_size, int inner_product,
                        int error_factor) {
    GQ_DISPATCH(dtype, run_grid(blocks, threads, [&] {
        rabitq_encode1<T>((const T*)x, center, codes, bad, n, d, code_size, inner_product, error_factor);
    }))
}

// The extra bits, with the scratch the launcher allocates: d keys and d levels for each thread of the grid.
void emu_rabitq_encode_ex(int blocks, int threads, int dtype, const void* x, const float* center, unsigned char* codes,
                          long long n, long long d, long long code_size, int ex_bits, int inner_product) {
    std::vector<unsigned long long> keys((size_t)(blocks * threads * d) + 1);
    std::vector<unsigned short> levels(keys.size());
    GQ_DISPATCH(dtype, run_grid(blocks, threads, [&] {
        rabitq_encode_ex<T>((const T*)x, center, codes, keys.data(), levels.data(), n, d, code_size, ex_bits,
                            inner_product);
    }))
}

void emu_rabitq_decode(int blocks, int threads, const unsigned char* codes, const float* center, float* y, long long n,
                       long long d, long long code_size) {
    run_grid(blocks, threads, [&] { rabitq_decode(codes, center, y, n, d, code_size); });
}

void emu_row_product(int blocks, int threads, const float* x, const float* m, const float* shift,
                     const float* offset, float* out, long long n, long long rows, long long cols) {
    run_grid(blocks, threads, [&] { row_product(x, m, shift, offset, out, n, rows, cols); });
}

// The three Hadamard kernels in the launcher's order: load, one stage per h, store.
void emu_hadamard(int blocks, int threads, const float* x, const double* load_signs, const double* store_signs,
                  double* a, float* out, long long n, long long d_in, long long p, long long d_out, double root) {
    run_grid(blocks, threads, [&] { hadamard_load(x, load_signs, a, n, d_in, p); });
    for (long long h = 1; h < p; h *= 2) run_grid(blocks, threads, [&] { hadamard_stage(a, n, p, h); });
    run_grid(blocks, threads, [&] { hadamard_store(a, store_signs, out, n, p, d_out, root); });
}

// gq::DivU32(s) applied to count numerators.
void emu_div_u32(unsigned long long s, const unsigned* x, unsigned* q, long long count) {
    const gq::DivU32 div(s);
    for (long long i = 0; i < count; ++i) q[i] = div(x[i]);
}

void emu_gguf_encode(int blocks, int threads, int dtype, const void* x, unsigned char* codes, long long n,
                     long long d, int q4, unsigned long long* bad_row) {
    GQ_DISPATCH(dtype, run_grid(blocks, threads, [&] { gguf_encode<T>((const T*)x, codes, n, d, q4, bad_row); }))
}

void emu_gguf_decode(int blocks, int threads, const unsigned char* codes, float* out, long long n, long long d,
                     int q4) {
    run_grid(blocks, threads, [&] { gguf_decode(codes, out, n, d, q4); });
}

void emu_scaled_fp8_encode(int blocks, int threads, int dtype, const void* x, unsigned char* codes,
                           const float* scales, long long n, long long d, int per_row, int format) {
    GQ_DISPATCH(dtype, run_grid(blocks, threads, [&] {
        scaled_fp8_encode<T>((const T*)x, codes, scales, n, d, per_row, format);
    }))
}

void emu_scaled_fp8_decode(int blocks, int threads, const unsigned char* codes, const float* scales, float* out,
                           long long n, long long d, int per_row, int format) {
    run_grid(blocks, threads, [&] { scaled_fp8_decode(codes, scales, out, n, d, per_row, format); });
}

long long emu_fp8_fixup(int format, int saturate, const unsigned* lows, int nlow, unsigned* bad) {
    if (format == gq::E4M3) {
        return saturate ? fp8_fixup_failures<gq::E4M3, 1>(lows, nlow, bad) : fp8_fixup_failures<gq::E4M3, 0>(lows, nlow, bad);
    }
    return saturate ? fp8_fixup_failures<gq::E5M2, 1>(lows, nlow, bad) : fp8_fixup_failures<gq::E5M2, 0>(lows, nlow, bad);
}

}  // extern "C"
