/* The SIMD kernels of fastcnn._ext_simd (csrc/simd.pyx), float32, NHWC activations and
 * HWIO weights: a direct convolution (conv_kernels.h) and max pooling (pool_kernels.h).
 *
 * Instruction sets: every kernel file is compiled three times (simd_isa.h), for AVX-512
 * (x86-64-v4 class), AVX2 + FMA and the compiler's baseline (SSE2 on x86-64, NEON on
 * arm64), and fc_get_isa() picks the best one the CPU supports at run time, so the
 * extension is built once (no -march=native) and runs on any machine. That matters: the
 * Cython modules are compiled for the baseline only, where gcc's vectorised loops use
 * 4-float SSE2 registers.
 *
 * The direct convolution. Why C and not Cython or Numba: the micro-kernel keeps a block of
 * MR pixels x NV vectors of output channels in registers (6 x 4 of the 32 zmm registers on
 * AVX-512: 6 pixels x 64 channels) for the whole reduction over kh*kw*C taps, and adds to
 * it with outer products: per tap channel c, NV vector loads of the weight row
 * w[tap, c, f0:...] and MR broadcasts of x[pixel, tap, c] feed MR*NV fused multiply-adds.
 * No horizontal sums, no packed copy of the input, no im2col matrix: the NHWC input rows
 * ARE the operand. Neither Numba nor Cython can pin such a block in registers (a local
 * array lives in memory); GNU C vector extensions can, for any vector width. Two kernels,
 * each split in ranges that a caller runs on its threads:
 *
 * - fc_gather_range: out[pixel, f] = bias[f] + sum_k tap_k(pixel) * w[k, f] over a
 *   GRID of output pixels. The forward conv is one grid; the input gradient dx is the
 *   same kernel run on dy with the flipped, transposed kernel, once per stride phase
 *   (fastcnn/backends/_conv_phases.py has the geometry).
 * - fc_dw_range: dw[(a, b, c), f] = sum over output pixels of x[tap (a, b) of the pixel, c]
 *   * dy[pixel, f]. The block is MR rows of dw (consecutive channels of one tap, or of one
 *   kernel row where no window crosses the image's side) x NV vectors of output channels;
 *   its accumulators live in registers across a tile of pixels, whose dy rows stay in L1/L2
 *   while every block of the range passes over them.
 *
 * Determinism: every output element is computed by one call, in an order fixed by the
 * shapes (taps, then channels; pixel tiles in order), never split between threads. The
 * result is bitwise the same for any thread count. It differs in the last bits between
 * instruction sets (FMA contracts a multiply-add into one rounding, SSE2 does not).
 */
#ifndef FASTCNN_SIMD_H
#define FASTCNN_SIMD_H

#include <stddef.h>
#include <string.h>

#if !defined(__GNUC__)
#error "fastcnn's SIMD kernels need GCC or Clang (GNU C vector extensions)"
#endif

/* One gather job: grid point (n, u, v) writes output pixel
 * out[n, oy0 + u*osy, ox0 + v*osx, :] from the taps src[n, by0 + u*bsy + ti,
 * bx0 + v*bsx + tj, :] (ti < nth, tj < ntw; zero outside src). w is (nth*ntw*cs, co_pad)
 * with co_pad a multiple of 16 (zero columns past co); bias has co_pad entries or is NULL.
 * run is cs, or ntw*cs when every window of the grid lies inside src horizontally (a
 * kernel row is then one run of consecutive floats); zeros holds run zeros (what taps
 * outside src read). */
typedef struct {
    const float *src;
    ptrdiff_t n_img, hs, ws, cs;
    const float *w;
    const float *bias;
    const float *zeros;
    ptrdiff_t run;
    ptrdiff_t nth, ntw, co, co_pad;
    float *out;
    ptrdiff_t ho, wo;
    ptrdiff_t grid_u, grid_v;
    ptrdiff_t by0, bsy, bx0, bsx;
    ptrdiff_t oy0, osy, ox0, osx;
    /* Fused 2x2 max pool (fc_gather_pool_range only): the grid is the pooled output
     * (out and arg of shape (n_img, ho, wo, co)); conv output pixel (cy, cx) reads the
     * taps from (by0 + cy*bsy, bx0 + cx*bsx); arg gets cy*conv_wo + cx of the winner. */
    int *arg;
    ptrdiff_t conv_wo;
    /* FC_ACT_*: applied in gather's epilogue, with the bias, before the only store of y
     * (fc_gather_range only: the pooled and Winograd kernels ignore it). */
    int act;
} fc_gather;

/* The activations gather applies itself: ReLU (v <= 0 -> 0, a NaN kept, as
 * elementwise.pyx's relu) and ReLU6 (then v > 6 -> 6). */
enum { FC_ACT_LINEAR = 0, FC_ACT_RELU = 1, FC_ACT_RELU6 = 2 };

/* One weight-gradient job: x (n_img, h, w, c), dy (n_img, ho, wo, f), dw (kh*kw*c, f).
 * When f is not a multiple of 16, each tile of dy is copied with its rows padded to
 * f_pad into the caller's scratch (fc_dw_scratch_floats() floats per thread). */
typedef struct {
    const float *x;
    ptrdiff_t n_img, h, w, c;
    const float *dy;
    ptrdiff_t ho, wo, f, f_pad;
    ptrdiff_t kh, kw, sh, sw, pt, pl;
    float *dw;
    ptrdiff_t run;          /* rows of dw per group: c (one tap) or kw*c (a kernel row) */
    ptrdiff_t block_rows;   /* MR: rows of dw per block (fc_dw_block_rows) */
    ptrdiff_t tile_rows;    /* output rows (n, i) per pixel tile */
} fc_dw;

/* One max-pooling job: x (n_img, h, w, c) -> y, arg (n_img, ho, wo, c); the backward
 * reads dy and arg and writes dx (x's shape). */
typedef struct {
    const float *x;
    ptrdiff_t n_img, h, w, c;
    float *y;
    int *arg;
    ptrdiff_t ho, wo, ph, pw, sh, sw, pt, pl;
    const float *dy;
    float *dx;
} fc_pool;

enum { FC_ISA_GENERIC = 0, FC_ISA_AVX2 = 1, FC_ISA_AVX512 = 2 };

/* Pixels per dW tile: its dy rows (tile x f floats, 64 KiB at f = 64) stay in L2 while
 * every block of a thread's range passes over them. */
#define FC_DW_TILE_PIXELS 256

#define FC_INLINE static inline __attribute__((always_inline))

/* The tallest block of any build (the size of the kernels' per-block arrays). */
#define FC_MR_LIMIT 6

/* The kernels pass and return vectors only between always-inline functions, so GCC's
 * note that a wide vector's calling convention differs between targets is moot. */
#pragma GCC diagnostic ignored "-Wpsabi"

/* --- the three compilations of the kernels ------------------------------------------- */

/* Baseline: SSE2 (or NEON) registers of 4 floats; 3 pixels x 4 vectors keep 12 of the 16
 * registers as accumulators. Padded channel counts are multiples of 16, so every chunk is
 * 4 vectors wide. */
#define FC_ISA generic
#define FC_VLEN 4
#define FC_MR 3
#define FC_NV_MAX 4
#define FC_BLOCKS_OF_ISA(X) X(3, 4)
#define FC_POOL_NV_MAX 2
#define FC_POOL_BLOCKS_OF_ISA(X) X(2)
#include "simd_isa.h"

#if defined(__x86_64__) || defined(__i386__)
#define FC_HAVE_X86 1

/* AVX2 + FMA: ymm registers of 8 floats; 6 pixels x 2 vectors use 12 of the 16. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FC_ISA avx2
#define FC_VLEN 8
#define FC_MR 6
#define FC_NV_MAX 2
#define FC_BLOCKS_OF_ISA(X) X(6, 2)
#define FC_POOL_NV_MAX 2
#define FC_POOL_BLOCKS_OF_ISA(X) X(2)
#include "simd_isa.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

/* AVX-512: 32 zmm registers, up to 24 accumulators: 6 pixels x 4 vectors (64 channels),
 * the tail of the channels 6 x 1..3. Taller blocks for 16-32 channels (12 x 2, 12 x 1)
 * were measured slower (LeNet-5's 14x14x6 -> 16 conv: 48 against 75 GFLOP/s with 6 x 1):
 * twice the broadcasts and pointer set-ups per weight load. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#endif
#define FC_ISA avx512
#define FC_VLEN 16
#define FC_MR 6
#define FC_NV_MAX 4
#define FC_BLOCKS_OF_ISA(X) X(6, 4) X(6, 3) X(6, 2) X(6, 1)
#define FC_POOL_NV_MAX 4
#define FC_POOL_BLOCKS_OF_ISA(X) X(4) X(3) X(2) X(1)
#include "simd_isa.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
#define FC_HAVE_X86 0
#endif

/* --- run-time dispatch ----------------------------------------------------------------- */

#include "cpu_isa.h"

static int fc_isa = -1;

static int fc_isa_supported(int isa)
{
    /* The ISA codes are cpu_isa.h's levels; an ISA this build has no kernels for is not. */
    return (FC_HAVE_X86 || isa == FC_ISA_GENERIC) && fastcnn_cpu_supports(isa);
}

static int fc_best_isa(void)
{
    if (fc_isa_supported(FC_ISA_AVX512))
        return FC_ISA_AVX512;
    if (fc_isa_supported(FC_ISA_AVX2))
        return FC_ISA_AVX2;
    return FC_ISA_GENERIC;
}

/* Selects the instruction set (one the CPU supports; the caller checks). Not thread-safe:
 * called from Python with the GIL held, never while a kernel runs. simd.pyx calls
 * fc_get_isa() once at import, so the kernels' own calls never write fc_isa. */
static void fc_set_isa(int isa) { fc_isa = isa; }

static int fc_get_isa(void)
{
    if (fc_isa < 0)
        fc_isa = fc_best_isa();
    return fc_isa;
}

/* Calls name_<isa>(...) for the selected instruction set (FC_RETURN_DISPATCH returns its
 * value). */
#if FC_HAVE_X86
#define FC_DISPATCH(name, ...)                                                              \
    switch (fc_get_isa()) {                                                                 \
    case FC_ISA_AVX512: name##_avx512(__VA_ARGS__); break;                                  \
    case FC_ISA_AVX2: name##_avx2(__VA_ARGS__); break;                                      \
    default: name##_generic(__VA_ARGS__);                                                   \
    }
#define FC_RETURN_DISPATCH(name, ...)                                                       \
    switch (fc_get_isa()) {                                                                 \
    case FC_ISA_AVX512: return name##_avx512(__VA_ARGS__);                                  \
    case FC_ISA_AVX2: return name##_avx2(__VA_ARGS__);                                      \
    default: return name##_generic(__VA_ARGS__);                                            \
    }
#else
#define FC_DISPATCH(name, ...) name##_generic(__VA_ARGS__);
#define FC_RETURN_DISPATCH(name, ...) return name##_generic(__VA_ARGS__);
#endif

/* Rows of dw per block (input channels, or taps x channels): the unit of parallel work. */
static inline ptrdiff_t fc_dw_block_rows(void)
{
    FC_RETURN_DISPATCH(fc_dw_block_rows)
}

static inline void fc_gather_range(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi)
{
    FC_DISPATCH(fc_gather_range, g, q_lo, q_hi)
}

static inline void fc_gather_pool_range(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi)
{
    FC_DISPATCH(fc_gather_pool_range, g, q_lo, q_hi)
}

static inline void fc_dw_range(const fc_dw *g, ptrdiff_t unit_lo, ptrdiff_t unit_hi, float *scratch)
{
    FC_DISPATCH(fc_dw_range, g, unit_lo, unit_hi, scratch)
}

/* Pools vectorise over the channels: with fewer channels than a zmm register holds (8 in
 * the from-scratch CNN) the AVX-512 build would leave them all to the scalar tail, so a
 * narrower build runs them (measured on 64x26x26x8, 2x2: forward 0.39 -> 0.11 ms). */
#if FC_HAVE_X86
#define FC_POOL_DISPATCH(name, c, ...)                                                      \
    {                                                                                       \
        const int isa = fc_get_isa();                                                       \
        if (isa == FC_ISA_AVX512 && ((c) % 16 == 0 || (c) >= 48))                           \
            name##_avx512(__VA_ARGS__);                                                     \
        else if (isa >= FC_ISA_AVX2 && (c) >= 8)                                            \
            name##_avx2(__VA_ARGS__);                                                       \
        else                                                                                \
            name##_generic(__VA_ARGS__);                                                    \
    }
#else
#define FC_POOL_DISPATCH(name, c, ...) name##_generic(__VA_ARGS__);
#endif

static inline void fc_maxpool_rows(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    FC_POOL_DISPATCH(fc_maxpool_rows, g->c, g, r_lo, r_hi)
}

static inline void fc_maxpool_backward_rows(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    FC_POOL_DISPATCH(fc_maxpool_backward_rows, g->c, g, r_lo, r_hi)
}

static inline void fc_avgpool_rows(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    FC_POOL_DISPATCH(fc_avgpool_rows, g->c, g, r_lo, r_hi)
}

static inline void fc_avgpool_backward_rows(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    FC_POOL_DISPATCH(fc_avgpool_backward_rows, g->c, g, r_lo, r_hi)
}

/* Scratch floats one thread of fc_dw_range needs (0 when f is a multiple of 16). */
static inline ptrdiff_t fc_dw_scratch_floats(const fc_dw *g)
{
    return g->f % 16 == 0 ? 0 : g->tile_rows * g->wo * g->f_pad;
}

#endif /* FASTCNN_SIMD_H */
