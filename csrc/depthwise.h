/* The depthwise convolution of fastcnn._ext_depthwise (csrc/depthwise.pyx): NHWC
 * activations, Keras's depthwise kernel (kh, kw, C, M) seen as (kh*kw, C*M), float32 and
 * float64, compiled for AVX-512, AVX2 + FMA and the baseline (SSE2 / NEON) as simd.h does
 * for the dense convolution, with a run-time choice of instruction set.
 *
 * Why this shape of kernel. A depthwise conv does kh*kw multiply-adds per output value
 * (a dense conv kh*kw*C), so it is bound by memory, not by FLOPs: the aim is to read x and
 * write y once, at the machine's copy bandwidth. NHWC keeps the channels of a pixel
 * contiguous, and output channel o = c*M + m only ever reads input channel c, so the vector
 * axis is the C*M output channels: one output vector is kh*kw vector loads of the input,
 * kh*kw loads of the weight rows w[tap, o..] (L1-resident) and kh*kw fused multiply-adds,
 * with the bias as the accumulator's start and a single store. No im2col, no padded copy:
 *
 * - ROW KERNEL (depthwise_kernels.h, row): out[q] = bias + sum_k src_k[q*ssx + d_k] * w_k
 *   over a list of taps k, each a source row, a column shift d_k and a weight row. Columns
 *   q whose every tap lies inside the source row (the interior) run 4 pixels at a time
 *   with no bounds test at all (each weight vector is loaded once for the 4); only the few
 *   border columns test each tap. Image rows outside the input are simply not in the list.
 * - FORWARD: one row job per output row (n, i): the taps (a, b) of the rows a that are
 *   inside the image, d = b - left pad, ssx = the column stride.
 * - dx, a GATHER (no scatter, no zero fill): one row job per stride phase p of each dx row
 *   (n, y): dx columns p, p + sw, ... take the taps (a, b) with (y + top - a) divisible by
 *   sh and b = p + left - sw*d, i.e. the correlation of dy with the flipped kernel, and
 *   every dx element is written exactly once. With M > 1 the row is formed in C*M channel
 *   space in a thread-private buffer and summed over m.
 * - dW and db: the (n, i) rows are cut into FIXED blocks (their count depends on the
 *   shape only); each block sums its rows into its own partial (kh*kw + 1, C*M) array (per
 *   row, per tap, a register reduction over the row's pixels), and the caller adds the
 *   partials in block order. So the result is the same for any thread count.
 * - 3x3, M = 1, column stride 1 or 2 (every MobileNet depthwise layer): the k3_* kernels
 *   instead. On rows of <= 24 pixels at stride 1 with pads of 1 ('same'), STREAMED rows
 *   (float32 AVX-512, dwc_k3_scheme, k3_forward_stream): a strip of <= 7 output columns of one
 *   channel vector walks down the image with the three output rows a source row feeds in
 *   registers, so each source vector is loaded exactly once and no reuse is left to L1
 *   (8 images, NumPy-placed x, one process, old and new builds alternating: forward
 *   14x14x384 -22%, 7x7x960 -28%, 14x14x480 -12%, 16x16x384 -21%, 7x7x160 -38%; the
 *   stride-1 dx within the fused backward -6 to -14%; at 28x28 even, at 56x56 +26%: the
 *   bands stay there). Otherwise, forward (and dx of stride 1: the forward over dy with the kernel flipped) keeps
 *   the source vectors a span of outputs reads in registers, each loaded once per row
 *   instead of once per tap: in BANDS of rows sized for L2, one channel vector at a time
 *   over the band with the 9 weights in registers and two output rows per step (AVX-512;
 *   dwc_k3_bands: unless a pixel takes > 576 bytes and a row is one pixel block, or a
 *   pixel pitch of 2048 / 4096 bytes crowds a band's lines into 2 / 1 L1 sets), else
 *   row by row in blocks of 8 / 4 pixels, two output rows at once where both have every
 *   kernel row inside (k3_block2: each source vector loaded once for both; blocks at a
 *   border skip the taps outside; a row of <= 8 pixels is one block). Same tap
 *   order as the row kernel (the same bits). dW: per band and channel vector the 9 sums
 *   (and db's) in registers over the band's rows, two dy rows per step where both have
 *   every kernel row inside (AVX-512, a pixel of <= 256 or > 576 bytes: each x vector
 *   loaded once for both), added to the block's partial once per band (bands are fixed
 *   by the shape: thread-count independent; depthwise.pyx adds the partials in block
 *   order); the next band's x and dy rows are prefetched while one runs (x and dy of
 *   >= 8 MiB: dwc_k3_prefetch). A band's rows' geometry (source rows, mask, pairing) is
 *   worked out once, not per channel chunk (k3_band_geometry: on 7-pixel rows the
 *   divisions cost as much as the row's multiply-adds; 8x7x7x960 dW 0.109 -> 0.097 ms
 *   with the pairs). dx of stride (2, 2):
 *   blocks of 8 dx pixels load the 5 dy columns they read once per kernel row (k3_dx2).
 *   With both streamed arrays at the same offset from a 64-byte line, a short first
 *   channel chunk makes the other vector accesses line-aligned (k3_head; the backend
 *   places outputs where dwc_output_offset says: at their source's line offset for this,
 *   three lines past its lines in the page), and at column stride 1 that chunk and the
 *   short last one are ONE pass of a WRAPPED chunk (k3_wrap: the last channels of pixel
 *   q - 1 and the first of pixel q are one aligned vector at position q, each lane group
 *   given its own pixel's taps at the row's ends by masked multiply-adds: the same bits),
 *   from 2 vectors a pixel (dwc_k3_realign_vectors; forward, stride-1 dx and dW; x 16
 *   bytes past a line, old and new builds alternating in one process: forward 28x28x192
 *   -7%, 56x56x128 -10 to -15%, 112x112x32 -3 to -10%, 14x14x384 -3%; dW alone in the C
 *   harness at 2 images 112x112x32 0.197 -> 0.140 ms, 56x56x128 0.251 -> 0.156); AVX-512
 *   ragged chunks are masked loads / stores. An output of >= 8 MiB in bands is written with streaming stores
 *   (no read of the lines before the write; a short first chunk realigns from >= 8
 *   vectors a pixel): 8x56x56x144 forward 2.5 -> 2.1 ms in the C harness; k3_dx2 too
 *   (from >= 4 vectors: 8x112x112x96 dx 5.3 -> 4.7 ms).
 * - FUSED BACKWARD (dwc_bwd_blocks, depthwise.pyx's backward; 3x3, M = 1, column stride
 *   <= 2): dW's blocks as above and, after each k3_dw band, dx_rows on the dx rows whose
 *   LAST dy row (floor((y + pt) / sh), clipped) is in the band (dx_row_of: those ranges
 *   tile dx), while the band's dy rows are still in L2: dy comes from memory once instead
 *   of twice. The same kernels on the same rows, so dW's partials and dx are the bits of
 *   the two passes (and thread-count independent: the blocks are fixed). 1 thread,
 *   min of 150: 8x28x28x192 2.00 -> 1.72 ms, 8x14x14x576 s2 0.240 -> 0.233.
 * - M > 1: the input rows a job reads are first expanded to C*M channels (x[.., c]
 *   repeated M times) in a thread-private buffer, then the M = 1 code runs. MobileNet's
 *   depthwise layers (M = 1) never take this path.
 *
 * Determinism: every output element is written by one call, in an order fixed by the
 * shapes; results are bitwise equal for any thread count (they differ in the last bits
 * between instruction sets: FMA contracts a multiply-add into one rounding).
 */
#ifndef FASTCNN_DEPTHWISE_H
#define FASTCNN_DEPTHWISE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !defined(__GNUC__)
#error "fastcnn's SIMD kernels need GCC or Clang (GNU C vector extensions)"
#endif

/* One depthwise job (pointers are float or double, the instantiation's type). */
typedef struct {
    const void *x;     /* (n, h, w, c) */
    const void *wt;    /* (kh*kw, cm): the kernel (kh, kw, c, m), reshaped */
    const void *bias;  /* (cm,) or NULL */
    const void *dy;    /* (n, ho, wo, cm) */
    void *y;           /* (n, ho, wo, cm) */
    void *dx;          /* (n, h, w, c) */
    void *part;        /* dW partials: (nblocks, kh*kw + 1, cm); the last row is db's */
    ptrdiff_t n, h, w, c, m, cm, ho, wo, kh, kw, sh, sw, pt, pl;
    ptrdiff_t block_rows; /* dW: (n, i) rows per partial block */
    int with_db;
    int act;           /* the forward's activation on y: DWC_ACT_NONE, _RELU or _RELU6 */
} dwc_job;

/* The activations the forward applies to what it stores (an inference plan's depthwise
 * with its ReLU / ReLU6 merged in): each block of rows is clamped while still in L1 or
 * L2, instead of a pass of its own over y. */
enum { DWC_ACT_NONE = 0, DWC_ACT_RELU = 1, DWC_ACT_RELU6 = 2 };

/* Taps per row job; a longer list (kernels above 8x8) runs in several passes, the later
 * ones adding to what the first stored. */
#define DWC_MAX_TAPS 64

enum { DWC_ISA_GENERIC = 0, DWC_ISA_AVX2 = 1, DWC_ISA_AVX512 = 2 };

#define DWC_INLINE static inline __attribute__((always_inline))

#pragma GCC diagnostic ignored "-Wpsabi"

/* --- the 3x3 kernels' layout rules (the kernels and dwc_output_offset share them) ------- */

/* BANDS (one channel vector at a time over a band of rows: k3_forward_bands) unless a pixel
 * takes more than 576 bytes and an output row is a single pixel block (at most 8 pixels),
 * or a pixel takes 2048 bytes and a row 12-20 pixels or 4096 and 9-14 (dwc_k3_few_sets),
 * where the row-by-row blocks are faster: a band walks a 7-pixel row as 2 border columns
 * and 5 inner ones, a block takes it in one (AVX-512; 8 images, line-aligned, outputs three
 * lines past their source, C harness: 28x28x192 0.258 -> 0.221 ms, 28x28x256 0.468 ->
 * 0.327, 14x14x512 0.294 -> 0.259, 28x28x192 stride 2 0.117 -> 0.094, 14x14x384 0.121 ->
 * 0.118; the blocks keep 7x7x960 0.074 against bands' 0.085, 14x14x576 stride 2 0.076
 * against 0.079). Both add the taps in one order: the same bits either way. */
static inline int dwc_k3_few_sets(ptrdiff_t pixel_bytes, ptrdiff_t wo)
{
    /* A band walks one channel vector of every pixel, and with a pixel pitch of 2048
     * (4096) bytes and a row pitch of a multiple of 4096 those lines fall into 2 (1) of
     * L1's 64 sets, which the pass's loads (and the hardware's prefetches) then fight
     * over (benchmarks/depthwise_l1_sets.c, the pair step alone in C, no stores, 14x14:
     * 512 channels 3.0-3.2 ns a vector, 480 channels 1.4-1.8; 512 with the rows padded by
     * 64 bytes (their lines in 8 sets) 1.4-1.7 ns, by 1024 bytes (4 sets) 2.3, by 2048 (2
     * sets) 3.1. It is not the reuse distance: walking 4- to 10-pixel strips of the rows
     * does not help, 3.3-4.0 ns). The row-by-row blocks take every channel of a few
     * pixels, lines in every set. One process, builds alternating, 8 images, three runs
     * (the L2 sets a run's pages take vary): forward 12x12x512 -5 to -33%, 14x14x512 -17
     * to -38%, 16x16x512 -31 to -40%, 20x20x512 -11 to -35%, 10x10x1024 -22%, 12x12x1024
     * -32 to -37%, 14x14x1024 -17 to -30%; the backward (its stride-1 dx) -2 to -20%. The
     * bands stay faster where the rows still fit (10x10x512: +2 to +11% in rows), where
     * the arrays come from memory (20x20x1024 +15%, 24x24x512 +21%, 28x28x512 +22 to
     * +41%; 16x16x1024 even) and for 8192-byte pixels (14x14x2048 +5%). */
    return (pixel_bytes == 2048 && wo >= 12 && wo <= 20)
           || (pixel_bytes == 4096 && wo >= 9 && wo <= 14);
}

static inline int dwc_k3_bands(ptrdiff_t pixel_bytes, ptrdiff_t wo)
{
    return (pixel_bytes <= 576 || wo > 8) && !dwc_k3_few_sets(pixel_bytes, wo);
}

/* STREAMED rows (k3_forward_stream) for 3x3 stride-1 'same' passes (pads of 1) on rows
 * of at most DWC_K3_STREAM_MAX_W pixels, except at the crowded pitches; float32 only (item
 * 4: float64, for gradient checks, keeps the bands and rows, and the strips' 95
 * instantiations are compiled once, not twice). */
#ifndef DWC_K3_STREAM_MAX_W
#define DWC_K3_STREAM_MAX_W 24
#endif
enum { DWC_K3_ROWS = 0, DWC_K3_BANDS = 1, DWC_K3_STREAM = 2 };

static inline int dwc_k3_scheme(ptrdiff_t pixel_bytes, ptrdiff_t item, ptrdiff_t hs,
                                ptrdiff_t ws, ptrdiff_t ho, ptrdiff_t wo, ptrdiff_t sh,
                                ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl)
{
    if (item == 4 && sh == 1 && sw == 1 && pt == 1 && pl == 1 && ho == hs && wo == ws
        && wo <= DWC_K3_STREAM_MAX_W && pixel_bytes % 4096 != 0
        && !dwc_k3_few_sets(pixel_bytes, wo))
        return DWC_K3_STREAM;
    return dwc_k3_bands(pixel_bytes, wo) ? DWC_K3_BANDS : DWC_K3_ROWS;
}

/* An output this large is written with streaming stores past the caches (the bands,
 * k3_dx2): it would only evict the source. */
static inline int dwc_k3_streams(ptrdiff_t out_bytes)
{
    return out_bytes >= ((ptrdiff_t)8 << 20);
}

/* Whether the 3x3 kernels prefetch the next band's (the row blocks: the next row's)
 * source rows into L2 while one runs: for a source of >= 8 MiB, which comes from memory;
 * one that stays in L3 between layers (the previous layer just wrote it) the hardware
 * fetches as fast, and the prefetches compete with the kernel's own loads. AVX-512 Zen 5,
 * 1 thread, 8 images, builds with and without alternating in one process: forward
 * 28x28x192 (4.8 MB) -10% without, 14x14x384 -8%, 14x14x576 s2 (rows) -7%, 7x7x960 (rows)
 * -4%; the fused backward (dW's x and dy prefetch too, for x and dy of >= 8 MiB
 * together) 14x14x576 s2 -6 to -9%, 7x7x960 -3%, 14x14x384 -3%; 56x56x144 (14.5 MB,
 * from memory) +8-12% without, 28x28x256's backward (x and dy 12.8 MB) +4%. */
static inline int dwc_k3_prefetch(ptrdiff_t src_bytes)
{
    return src_bytes >= ((ptrdiff_t)8 << 20);
}

/* The fewest whole vectors a pixel must hold for the forward kernels (and stride-1 dx) to
 * realign a source and an output at one offset from a line (k3_head): the bands of column
 * stride 1 take the head and the tail as one wrapped chunk (k3_wrap), from 2 vectors
 * (AVX-512, x 16 bytes past a line, 8 images: 56x56x144 0.376 -> 0.337 ms realigned,
 * 56x56x128 0.360 -> 0.297, 112x112x32 0.367 -> 0.300, each within 2% of line-aligned
 * arrays; C harness); the streamed rows a short head and tail, each a pass, from 4 (2:
 * the same within noise on 7x7 and 14x14 rows of 2-8 vectors); the others likewise from
 * 12 (8 where the output is streamed: its aligned streaming stores). */
static inline ptrdiff_t dwc_k3_realign_vectors(int scheme, ptrdiff_t sw, int streamed)
{
    if (scheme == DWC_K3_BANDS && sw == 1)
        return 2;
    return scheme == DWC_K3_STREAM ? 4 : streamed ? 8 : 12;
}

/* --- the compilations: two types x three instruction sets ----------------------------- */

#define DW_T float
#define DW_SFX f32_generic
#define DW_VBYTES 16
#include "depthwise_kernels.h"
#define DW_T double
#define DW_SFX f64_generic
#define DW_VBYTES 16
#include "depthwise_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define DWC_HAVE_X86 1
#include <immintrin.h>
#define DWC_X86_INTRINSICS 1

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define DW_T float
#define DW_SFX f32_avx2
#define DW_VBYTES 32
#include "depthwise_kernels.h"
#define DW_T double
#define DW_SFX f64_avx2
#define DW_VBYTES 32
#include "depthwise_kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#endif
#define DW_T float
#define DW_SFX f32_avx512
#define DW_VBYTES 64
#define DW_STREAMED_ROWS 1
#include "depthwise_kernels.h"
#define DW_T double
#define DW_SFX f64_avx512
#define DW_VBYTES 64
#include "depthwise_kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
#define DWC_HAVE_X86 0
#endif

/* --- run-time dispatch (as simd.h's, with its own state: set_isa is per module) -------- */

#include "cpu_isa.h"

static int dwc_isa = -1;

static int dwc_isa_supported(int isa)
{
    /* The ISA codes are cpu_isa.h's levels; an ISA this build has no kernels for is not. */
    return (DWC_HAVE_X86 || isa == DWC_ISA_GENERIC) && fastcnn_cpu_supports(isa);
}

/* Not thread-safe: called with the GIL held, never while a kernel runs (depthwise.pyx
 * calls dwc_get_isa() once at import, so kernels only read dwc_isa). */
static void dwc_set_isa(int isa) { dwc_isa = isa; }

static int dwc_get_isa(void)
{
    if (dwc_isa < 0) {
        if (dwc_isa_supported(DWC_ISA_AVX512))
            dwc_isa = DWC_ISA_AVX512;
        else if (dwc_isa_supported(DWC_ISA_AVX2))
            dwc_isa = DWC_ISA_AVX2;
        else
            dwc_isa = DWC_ISA_GENERIC;
    }
    return dwc_isa;
}

/* The vector axis is the cm output channels: with fewer than a wide register holds (or
 * a ragged tail that would be a large share of the work) a narrower build runs, as
 * simd.h's pools do. vl is the AVX-512 build's lanes for the type (16 or 8). */
#if DWC_HAVE_X86
#define DWC_DISPATCH(name, ty, vl, ...)                                                     \
    {                                                                                       \
        const int isa_ = dwc_get_isa();                                                     \
        const ptrdiff_t cm_ = g->cm;                                                        \
        if (isa_ == DWC_ISA_AVX512 && (cm_ % (vl) == 0 || cm_ >= 3 * (vl)))                 \
            name##_##ty##_avx512(__VA_ARGS__);                                              \
        else if (isa_ >= DWC_ISA_AVX2 && cm_ >= (vl) / 2)                                   \
            name##_##ty##_avx2(__VA_ARGS__);                                                \
        else                                                                                \
            name##_##ty##_generic(__VA_ARGS__);                                             \
    }
#else
#define DWC_DISPATCH(name, ty, vl, ...) name##_##ty##_generic(__VA_ARGS__);
#endif

#define DWC_ENTRY(name, ty, vl)                                                             \
    static void name##_##ty(const dwc_job *g, ptrdiff_t lo, ptrdiff_t hi, void *scratch)     \
    {                                                                                       \
        DWC_DISPATCH(name, ty, vl, g, lo, hi, scratch)                                      \
    }
DWC_ENTRY(dwc_forward_rows, f32, 16)
DWC_ENTRY(dwc_forward_rows, f64, 8)
DWC_ENTRY(dwc_dx_rows, f32, 16)
DWC_ENTRY(dwc_dx_rows, f64, 8)
DWC_ENTRY(dwc_dw_blocks, f32, 16)
DWC_ENTRY(dwc_dw_blocks, f64, 8)
DWC_ENTRY(dwc_bwd_blocks, f32, 16)
DWC_ENTRY(dwc_bwd_blocks, f64, 8)
#undef DWC_ENTRY

/* Where the output of a pass should start, in bytes past a 4096-byte page boundary, given
 * its source src (x for the forward, dy for dx; out_w the output's width, out_bytes its
 * size) and the element size. Two rules:
 * - Its lines three lines past the source's. The 3x3 kernels walk one channel vector of
 *   both arrays at a time, and with a pixel pitch of a multiple of 256 bytes those lines
 *   fall into a few of L1's 64 sets (4 for 1024-byte pixels): an output at the source's
 *   page offset competes with it for them (AVX-512, 8 images, bands, C harness: 28x28x256
 *   0.53 ms at x's page offset, 0.33 three lines past; 14x14x512 0.49 / 0.26).
 * - Within its line, the source's offset where the kernels realign a source and an output
 *   that share it (k3_head, from dwc_k3_realign_vectors whole vectors a pixel), except
 *   streamed outputs of column stride 2 (their short head and tail chunks each take a pass
 *   over the band; the aligned streaming stores want a line); elsewhere on a line. A source
 *   16 bytes past a line, 8 images, C harness: banded, stride 1, with the wrapped chunk,
 *   on a line / realigned: 28x28x192 0.236 / 0.214 ms, 56x56x144 (streamed) 0.77 / 0.67,
 *   16x28x28x192 (streamed) 0.48 / 0.43; the row-by-row kernels' 8x28x28x192: 0.384 / 0.332. */
static ptrdiff_t dwc_output_offset(const dwc_job *g, const void *src, ptrdiff_t item,
                                   ptrdiff_t out_w, ptrdiff_t out_bytes, int for_dx)
{
    const ptrdiff_t vl = 64 / item, bytes = g->cm * item;
    const uintptr_t at = (uintptr_t)src % 4096, line = at - at % 64;
    const int scheme = for_dx ? dwc_k3_scheme(bytes, item, g->ho, g->wo, g->h, out_w, g->sh,
                                              g->sw, 2 - g->pt, 2 - g->pl)
                              : dwc_k3_scheme(bytes, item, g->h, g->w, g->ho, out_w, g->sh,
                                              g->sw, g->pt, g->pl);
    const int bands = scheme == DWC_K3_BANDS, streamed = dwc_k3_streams(out_bytes);
    int realign = DWC_HAVE_X86 && dwc_get_isa() == DWC_ISA_AVX512 && g->m == 1 && g->kh == 3
                  && g->kw == 3 && g->sw <= 2 && !(for_dx && (g->sh != 1 || g->sw != 1));
    realign = realign && bytes % 64 == 0 && at % (uintptr_t)item == 0
              && g->cm >= dwc_k3_realign_vectors(scheme, g->sw, scheme != DWC_K3_ROWS && streamed) * vl
              && !(bands && streamed && g->sw != 1);
    return (ptrdiff_t)((line + 3 * 64 + (realign ? at % 64 : 0)) % 4096);
}

/* Scratch elements one thread needs (0 for M = 1): kh expanded input rows for the
 * forward and dW, one C*M-wide dx row for dx. */
static ptrdiff_t dwc_scratch_forward(const dwc_job *g)
{
    return g->m == 1 ? 0 : g->kh * g->w * g->cm;
}

static ptrdiff_t dwc_scratch_dx(const dwc_job *g)
{
    return g->m == 1 ? 0 : g->w * g->cm;
}

#endif /* FASTCNN_DEPTHWISE_H */
