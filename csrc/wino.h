/* Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution kernels (csrc/plan_wino.h,
 * csrc/wino4_kernels.h), compiled once per instruction set and dispatched at run time like
 * simd.h's kernels. One header for every caller: the inference plan's C runner (plan.h,
 * F(2x2) only) and the training backend (simd.pyx).
 *
 * fp_wino_pool_range: a 3x3, stride-1 conv fused with a 2x2, stride-2 max pool over the
 * pooled grid points [q_lo, q_hi) of g (see plan_wino.h); with g->arg set it also writes
 * each winner's flat position cy*conv_wo + cx in the conv image (simd.h's gather_maxpool
 * format). fp_wino_conv_range: the same conv without the pool, every output stored (the
 * grid is ceil(ho/2) x ceil(wo/2) tiles). scratch holds fp_wino_scratch_floats(g->cs)
 * floats (one thread's).
 *
 * Determinism: every pooled value is computed from its own tile only, in an order fixed
 * by the shapes, so ranges (and thread counts) do not change a bit of the result.
 */
#ifndef FASTCNN_WINO_H
#define FASTCNN_WINO_H

#include <stddef.h>
#include <string.h>

#include "simd.h"

/* The tallest tile block of any build (plan_wino.h's FP_WMR). */
#define FP_WMR_MAX 6

#define FP_ISA generic
#define FP_VL 4
#define FP_WMR 3
#include "plan_wino.h"
#if FC_HAVE_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FP_ISA avx2
#define FP_VL 8
#define FP_WMR 3
#include "plan_wino.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#define FP_ISA avx512
#define FP_VL 16
#define FP_WMR 6
#include "plan_wino.h"
#pragma GCC pop_options
#endif

/* F(4x4, 3x3) (wino4_kernels.h): the training backend's tiles where they pay. */
#define FQ_ISA generic
#define FQ_VL 4
#define FQ_WMR 3
#include "wino4_kernels.h"
#if FC_HAVE_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FQ_ISA avx2
#define FQ_VL 8
#define FQ_WMR 3
#include "wino4_kernels.h"
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#define FQ_ISA avx512
#define FQ_VL 16
#define FQ_WMR 6
#include "wino4_kernels.h"
#pragma GCC pop_options
#endif

/* Floats of scratch one thread of fp_wino_pool_range needs. */
static ptrdiff_t fp_wino_scratch_floats(ptrdiff_t cs)
{
    return 16 * FP_WMR_MAX * (cs + 4 * 16);
}

static void fp_wino_pool_range(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi,
                               float *scratch)
{
    FC_DISPATCH(fp_wino_pool_range, g, q_lo, q_hi, scratch)
}

static void fp_wino_conv_range(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi,
                               float *scratch)
{
    FC_DISPATCH(fp_wino_conv_range, g, q_lo, q_hi, scratch)
}

/* F(4x4, 3x3): the same jobs on 4x4 output tiles (wino4_kernels.h; the grid counts
 * 4x4 tiles, i.e. pairs of pool windows); scratch: fq_wino4_scratch_floats(cs) floats. */
static ptrdiff_t fq_wino4_scratch_floats(ptrdiff_t cs)
{
    return 36 * FP_WMR_MAX * (cs + 4 * 16);
}

__attribute__((unused))
static void fq_wino4_pool_range(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi,
                                float *scratch)
{
    FC_DISPATCH(fq_pool_range, g, q_lo, q_hi, scratch)
}

static void fq_wino4_conv_range(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi,
                                float *scratch)
{
    FC_DISPATCH(fq_conv_range, g, q_lo, q_hi, scratch)
}

#endif /* FASTCNN_WINO_H */
