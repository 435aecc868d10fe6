/* The C runner of fastcnn's inference plans (fastcnn/inference_plan.py, csrc/plan.pyx):
 * a model's whole forward as an array of step descriptors, run from C in one call.
 *
 * Returns 0, or -1 when a scratch allocation failed.
 *
 * Each step reads and writes regions of one float arena (offsets in floats; a negative
 * offset -1-k names the plan's input k). The kernels are simd.h's (the direct conv, the
 * conv fused with a 2x2 max pool, max pooling: compiled per instruction set, picked at run
 * time) and, here, what those do not cover: a row-vector x matrix product for dense layers
 * on fewer rows than the conv kernel's block (batch 1), and the element-wise epilogues
 * (bias is the conv kernel's own epilogue; ReLU, ReLU6, sigmoid, tanh and softmax run on
 * the step's output while it is still in cache).
 *
 * Threads: a step with enough work splits its ranges over OpenMP threads (as simd.pyx
 * does); results do not depend on the thread count (every output element is computed by
 * one range, in an order fixed by the shapes).
 */
#ifndef FASTCNN_PLAN_H
#define FASTCNN_PLAN_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* simd.h's kernels this runner does not call (dW, pool backward) are static: unused here. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "simd.h"
#pragma GCC diagnostic pop

enum {
    FP_CONV = 1,       /* fc_gather over the output grid, then the activation */
    FP_CONV_POOL = 2,  /* fc_gather_pool (conv + 2x2 max pool), then the activation */
    FP_DENSE = 3,      /* rows x k times k x f (padded to f_pad), bias, activation */
    FP_MAXPOOL = 4,    /* fc_maxpool_rows */
    FP_ACT = 5,        /* out = act(in) */
    FP_ADD = 6,        /* out = in0 + in1 */
    FP_AFFINE = 7,     /* out[r, c] = in[r, c] * w[c] + b[c] */
    FP_GAP = 8,        /* out[n, c] = mean over hw of in[n, :, c] */
    FP_AVGPOOL = 9,    /* average over each window's real (unpadded) elements: pool.pyx's */
    FP_WINO_POOL = 10, /* 3x3 stride-1 conv + 2x2 max pool by Winograd F(2x2, 3x3): plan_wino.h */
    FP_WINO_CONV = 11  /* 3x3 stride-1 conv by Winograd F(m x m, 3x3), m = wino_m: wino.h */
};

enum { FP_LINEAR = 0, FP_RELU = 1, FP_SIGMOID = 2, FP_TANH = 3, FP_RELU6 = 4, FP_SOFTMAX = 5 };

typedef struct {
    int op, act;
    int wino_m;                /* FP_WINO_CONV: the output tile, 2 or 4 */
    ptrdiff_t in0, in1, out;   /* arena offsets (floats), or -1-k for input k */
    ptrdiff_t rows, cols;      /* the output as rows x cols (the activation's view) */
    fc_gather g;               /* FP_CONV / FP_CONV_POOL / FP_DENSE on >= FP_GEMV_ROWS rows */
    fc_pool p;                 /* FP_MAXPOOL */
    const float *w, *b;        /* FP_DENSE: w (k, f_pad), b (f_pad) or NULL; FP_AFFINE */
    ptrdiff_t k, f, f_pad;     /* FP_DENSE */
    ptrdiff_t hw;              /* FP_GAP: pixels per image */
    ptrdiff_t work;            /* multiply-adds (or values) of the step: the thread choice */
    ptrdiff_t units;           /* FP_CONV*: grid points; FP_MAXPOOL: output rows */
} fp_step;

/* A dense layer on fewer rows than this runs fp_gemv (row by row); on more, the conv
 * kernel as a 1x1 convolution (6 rows x 64 columns register blocks). */
#define FP_GEMV_ROWS 6
/* Below this many multiply-adds a step runs on one thread. Waking a worker that spins
 * (fastcnn's GOMP_SPINCOUNT, fastcnn/_runtime.py) costs ~2 us here, about the time a
 * thread saves on 128k multiply-adds; a sleeping one costs ~50 us on a VM (a batch-1
 * predict after an idle pause pays that once per call). */
#define FP_PARALLEL_MIN_MACS (1 << 17)
#define FP_RANGE_QUANTUM 24

/* --- y[0..f) = b + x[0..k) . w (k rows of ld floats; f_pad columns, a multiple of the
 * vector length, are computed and f stored), per instruction set ------------------------
 * All f_pad / VL accumulators of a row stay in registers for the columns' blocks of up
 * to 8 vectors; the weight rows stream once per block. A thread's share of the columns
 * is the same call on w + f0, b + f0, y + f0 with the layer's ld. */
#define FP_GEMV_BODY(VEC, VL)                                                               \
    {                                                                                       \
        for (ptrdiff_t f0 = 0; f0 < f_pad; f0 += 8 * VL) {                                  \
            const int nv = (int)((f_pad - f0) / VL < 8 ? (f_pad - f0) / VL : 8);            \
            VEC acc[8];                                                                     \
            for (int j = 0; j < 8; j++)                                                     \
                acc[j] = (VEC){0};                                                          \
            const float *wr = w + f0;                                                       \
            if (nv == 8) {                                                                  \
                for (ptrdiff_t c = 0; c < k; c++, wr += ld) {                               \
                    const float s = x[c];                                                   \
                    for (int j = 0; j < 8; j++) {                                           \
                        VEC wv;                                                             \
                        memcpy(&wv, wr + VL * j, sizeof wv);                                \
                        acc[j] += s * wv;                                                   \
                    }                                                                       \
                }                                                                           \
            } else {                                                                        \
                for (ptrdiff_t c = 0; c < k; c++, wr += ld) {                               \
                    const float s = x[c];                                                   \
                    for (int j = 0; j < nv; j++) {                                          \
                        VEC wv;                                                             \
                        memcpy(&wv, wr + VL * j, sizeof wv);                                \
                        acc[j] += s * wv;                                                   \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
            for (int j = 0; j < nv; j++) {                                                  \
                const ptrdiff_t fj = f0 + VL * j;                                           \
                VEC v = acc[j];                                                             \
                if (b) {                                                                    \
                    VEC bv;                                                                 \
                    memcpy(&bv, b + fj, sizeof bv);                                         \
                    v += bv;                                                                \
                }                                                                           \
                const ptrdiff_t lanes = f - fj < VL ? f - fj : VL;                          \
                if (lanes > 0)                                                              \
                    memcpy(y + fj, &v, (size_t)lanes * sizeof(float));                      \
            }                                                                               \
        }                                                                                   \
    }

typedef float fp_v4 __attribute__((vector_size(16)));
static void fp_gemv_generic(const float *x, const float *w, const float *b, float *y,
                            ptrdiff_t k, ptrdiff_t f, ptrdiff_t f_pad, ptrdiff_t ld)
FP_GEMV_BODY(fp_v4, 4)

#if FC_HAVE_X86
typedef float fp_v8 __attribute__((vector_size(32)));
typedef float fp_v16 __attribute__((vector_size(64)));
__attribute__((target("avx2,fma")))
static void fp_gemv_avx2(const float *x, const float *w, const float *b, float *y,
                         ptrdiff_t k, ptrdiff_t f, ptrdiff_t f_pad, ptrdiff_t ld)
FP_GEMV_BODY(fp_v8, 8)

__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
static void fp_gemv_avx512(const float *x, const float *w, const float *b, float *y,
                           ptrdiff_t k, ptrdiff_t f, ptrdiff_t f_pad, ptrdiff_t ld)
FP_GEMV_BODY(fp_v16, 16)
#endif

static void fp_gemv(const float *x, const float *w, const float *b, float *y, ptrdiff_t k,
                    ptrdiff_t f, ptrdiff_t f_pad, ptrdiff_t ld)
{
    FC_DISPATCH(fp_gemv, x, w, b, y, k, f, f_pad, ld)
}

/* --- Winograd F(2x2, 3x3) conv + 2x2 max pool, per instruction set: wino.h ------------- */

#include "wino.h"

/* --- element-wise epilogues -------------------------------------------------------------- */

static void fp_activate(float *y, ptrdiff_t rows, ptrdiff_t cols, int act)
{
    const ptrdiff_t n = rows * cols;
    switch (act) {
    case FP_RELU:
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] = y[i] <= 0.0f ? 0.0f : y[i];   /* a NaN propagates (elementwise.pyx) */
        break;
    case FP_RELU6:
        for (ptrdiff_t i = 0; i < n; i++) {
            const float v = y[i] <= 0.0f ? 0.0f : y[i];
            y[i] = v > 6.0f ? 6.0f : v;
        }
        break;
    case FP_SIGMOID:
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] = 1.0f / (1.0f + expf(-y[i]));
        break;
    case FP_TANH:
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] = tanhf(y[i]);
        break;
    case FP_SOFTMAX:
        for (ptrdiff_t r = 0; r < rows; r++) {
            float *row = y + r * cols, m = row[0];
            double s = 0.0;   /* summed in double, as elementwise.pyx's softmax */
            for (ptrdiff_t c = 1; c < cols; c++)
                m = row[c] > m ? row[c] : m;
            for (ptrdiff_t c = 0; c < cols; c++) {
                row[c] = expf(row[c] - m);
                s += row[c];
            }
            const float inv = (float)(1.0 / s);
            for (ptrdiff_t c = 0; c < cols; c++)
                row[c] *= inv;
        }
        break;
    default:
        break;
    }
}

static int fp_threads(ptrdiff_t work, ptrdiff_t units)
{
#ifdef _OPENMP
    int nt = omp_get_max_threads();
    if (work < FP_PARALLEL_MIN_MACS || nt <= 1)
        return 1;
    return units < nt ? (int)(units > 1 ? units : 1) : nt;
#else
    (void)work;
    (void)units;
    return 1;
#endif
}

static void fp_gather(const fc_gather *g, ptrdiff_t total, int pooled, ptrdiff_t work)
{
    const int nt = fp_threads(work, total / FP_RANGE_QUANTUM);
    if (nt == 1) {
        if (pooled)
            fc_gather_pool_range(g, 0, total);
        else
            fc_gather_range(g, 0, total);
        return;
    }
    /* About 4 ranges per thread, each a whole number of blocks (as simd.pyx). */
    ptrdiff_t step = (total + 4 * nt - 1) / (4 * nt);
    step = (step + FP_RANGE_QUANTUM - 1) / FP_RANGE_QUANTUM * FP_RANGE_QUANTUM;
    const ptrdiff_t nranges = (total + step - 1) / step;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) num_threads(nt)
#endif
    for (ptrdiff_t r = 0; r < nranges; r++) {
        const ptrdiff_t hi = (r + 1) * step < total ? (r + 1) * step : total;
        if (pooled)
            fc_gather_pool_range(g, r * step, hi);
        else
            fc_gather_range(g, r * step, hi);
    }
}

/* A pooling's output rows [0, units), on threads when the work pays for waking them. */
static void fp_pool(void (*rows)(const fc_pool *, ptrdiff_t, ptrdiff_t), const fc_pool *p,
                    ptrdiff_t units, ptrdiff_t work)
{
    const int nt = fp_threads(work, units);
    if (nt == 1) {
        rows(p, 0, units);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (ptrdiff_t r = 0; r < units; r++)
        rows(p, r, r + 1);
}

/* A dense step on fewer than FP_GEMV_ROWS rows: fp_gemv per row; with enough weights to
 * stream, each thread takes a slice of the columns (whole 16-float blocks, the padding
 * quantum), so each streams only its part of w. */
static void fp_gemv_rows(const fp_step *st, const float *x, float *y)
{
    const ptrdiff_t blocks = st->f_pad / 16;
    const int nt = fp_threads(st->work, blocks);
    if (nt == 1) {
        for (ptrdiff_t r = 0; r < st->rows; r++)
            fp_gemv(x + r * st->k, st->w, st->b, y + r * st->f, st->k, st->f, st->f_pad,
                    st->f_pad);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
    for (int t = 0; t < nt; t++) {
        const ptrdiff_t lo = blocks * t / nt * 16, hi = blocks * (t + 1) / nt * 16;
        const ptrdiff_t real = (hi < st->f ? hi : st->f) - lo;
        if (real <= 0)
            continue;
        for (ptrdiff_t r = 0; r < st->rows; r++)
            fp_gemv(x + r * st->k, st->w + lo, st->b ? st->b + lo : NULL, y + r * st->f + lo,
                    st->k, real, hi - lo, st->f_pad);
    }
}

#define FP_PTR(off) ((off) >= 0 ? arena + (off) : (float *)inputs[-1 - (off)])

/* Runs the steps in order. arena: the values; inputs: the plan's inputs; iscratch: the
 * argmax scratch of the max pools (never read); zeros: what taps outside an image read. */
static int fp_run(const fp_step *steps, ptrdiff_t nsteps, float *arena,
                  const float *const *inputs, int *iscratch, const float *zeros)
{
    for (ptrdiff_t s = 0; s < nsteps; s++) {
        const fp_step *st = steps + s;
        const float *in0 = FP_PTR(st->in0);
        float *out = FP_PTR(st->out);
        switch (st->op) {
        case FP_CONV:
        case FP_CONV_POOL: {
            fc_gather g = st->g;
            g.src = in0;
            g.out = out;
            g.zeros = zeros;
            g.arg = st->op == FP_CONV_POOL ? iscratch : NULL;
            fp_gather(&g, st->units, st->op == FP_CONV_POOL, st->work);
            fp_activate(out, st->rows, st->cols, st->act);
            break;
        }
        case FP_WINO_POOL:
        case FP_WINO_CONV: {
            fc_gather g = st->g;
            g.src = in0;
            g.out = out;
            g.zeros = zeros;
            g.arg = NULL;
            /* The pooled F(2x2) tiles, or the plain conv's F(2x2) / F(4x4) ones (every
             * output stored: the training backend's wino_conv). */
            void (*range)(const fc_gather *, ptrdiff_t, ptrdiff_t, float *) =
                st->op == FP_WINO_POOL ? fp_wino_pool_range
                : st->wino_m == 4      ? fq_wino4_conv_range
                                       : fp_wino_conv_range;
            /* Ranges of whole register blocks of tiles (FP_WMR_MAX, a multiple of every
             * ISA's block): a batch-1 5x5 pool's 25 tiles split 13 / 12 over 2 threads. */
            const ptrdiff_t total = st->units;
            const ptrdiff_t per = st->op == FP_WINO_CONV && st->wino_m == 4
                                      ? fq_wino4_scratch_floats(g.cs)
                                      : fp_wino_scratch_floats(g.cs);
            const int nt = fp_threads(st->work, total / FP_WMR_MAX);
            float *scratch = (float *)malloc((size_t)(nt * per) * sizeof(float));
            if (scratch == NULL)
                return -1;
            if (nt == 1) {
                range(&g, 0, total, scratch);
            } else {
                ptrdiff_t step = (total + 4 * nt - 1) / (4 * nt);
                step = (step + FP_WMR_MAX - 1) / FP_WMR_MAX * FP_WMR_MAX;
                const ptrdiff_t nranges = (total + step - 1) / step;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) num_threads(nt)
#endif
                for (ptrdiff_t r = 0; r < nranges; r++) {
                    float *mine = scratch;
#ifdef _OPENMP
                    mine += omp_get_thread_num() * per;
#endif
                    range(&g, r * step, (r + 1) * step < total ? (r + 1) * step : total, mine);
                }
            }
            free(scratch);
            fp_activate(out, st->rows, st->cols, st->act);
            break;
        }
        case FP_DENSE:
            if (st->rows < FP_GEMV_ROWS) {
                fp_gemv_rows(st, in0, out);
            } else {
                fc_gather g = st->g;
                g.src = in0;
                g.out = out;
                g.zeros = zeros;
                g.arg = NULL;
                fp_gather(&g, st->units, 0, st->work);
            }
            fp_activate(out, st->rows, st->cols, st->act);
            break;
        case FP_MAXPOOL:
        case FP_AVGPOOL: {
            fc_pool p = st->p;
            p.x = in0;
            p.y = out;
            p.arg = iscratch;   /* max pooling's argmax scratch (average pooling ignores it) */
            fp_pool(st->op == FP_MAXPOOL ? fc_maxpool_rows : fc_avgpool_rows, &p, st->units,
                    st->work);
            break;
        }
        case FP_ACT:
            if (out != in0)
                memcpy(out, in0, (size_t)(st->rows * st->cols) * sizeof(float));
            fp_activate(out, st->rows, st->cols, st->act);
            break;
        case FP_ADD: {
            const float *in1 = FP_PTR(st->in1);
            const ptrdiff_t n = st->rows * st->cols;
            for (ptrdiff_t i = 0; i < n; i++)
                out[i] = in0[i] + in1[i];
            fp_activate(out, st->rows, st->cols, st->act);
            break;
        }
        case FP_AFFINE:
            for (ptrdiff_t r = 0; r < st->rows; r++)
                for (ptrdiff_t c = 0; c < st->cols; c++)
                    out[r * st->cols + c] = in0[r * st->cols + c] * st->w[c] + st->b[c];
            fp_activate(out, st->rows, st->cols, st->act);
            break;
        case FP_GAP: {
            const ptrdiff_t c = st->cols, hw = st->hw;
            for (ptrdiff_t r = 0; r < st->rows; r++) {
                float *o = out + r * c;
                for (ptrdiff_t j = 0; j < c; j++)
                    o[j] = 0.0f;
                for (ptrdiff_t p = 0; p < hw; p++)
                    for (ptrdiff_t j = 0; j < c; j++)
                        o[j] += in0[(r * hw + p) * c + j];
                for (ptrdiff_t j = 0; j < c; j++)
                    o[j] /= (float)hw;
            }
            break;
        }
        default:
            break;
        }
    }
    return 0;
}

#undef FP_PTR

#endif /* FASTCNN_PLAN_H */
