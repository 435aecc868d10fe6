/* A 3x3, stride-1 convolution fused with a 2x2, stride-2 max pool, by Winograd's minimal
 * filtering F(2x2, 3x3) (Lavin & Gray, 2016): each 2x2 output tile - exactly one pool
 * window - is computed from a 4x4 input tile with 16 multiplies per (channel, filter)
 * instead of 36, then reduced to its maximum, with the bias, in registers.
 *
 *   V = B^T d B (input tile, per channel),  U = G g G^T (kernel, per channel and filter:
 *   computed once, when the plan is compiled), M = sum_c U . V (16 small GEMMs),
 *   Y = A^T M A (the 2x2 outputs), then the window's maximum (first maximum wins, a NaN
 *   propagates: simd.h's max-pool rule) plus the bias.
 *
 * Compiled once per instruction set (included by wino.h under target pragmas, like
 * simd_isa.h) with FP_ISA (the name suffix), FP_VL (floats per vector) and FP_WMR (tiles
 * per register block). No include guard, on purpose.
 *
 * wino_conv_range is the same conv without the pool (every 2x2 tile stored: the training
 * backend's dx of a 3x3 stride-1 conv, dy correlated with the flipped kernel).
 *
 * g describes the job as for simd.h's fused kernel: src (n_img, hs, ws, cs); the output
 * (n_img, ho, wo, co) is the POOLED grid; tile (u, v) reads the input rows by0 + 2u + (0..3)
 * and columns bx0 + 2v + (0..3) (zero outside src). w is U laid out (16, cs, co_pad), bias
 * co_pad values or NULL. scratch holds 16 * FP_WMR * (cs + 4 * FP_VL) floats. g->arg, when
 * set, gets the winners' positions (shape of out; conv_wo: the conv image's width).
 */

#define FP_CAT_(a, b) a##_##b
#define FP_CAT(a, b) FP_CAT_(a, b)
#define FP_FN(name) FP_CAT(fp_##name, FP_ISA)

typedef float FP_FN(vec) __attribute__((vector_size(4 * FP_VL)));
typedef int FP_FN(ivec) __attribute__((vector_size(4 * FP_VL)));
#define FP_VEC FP_FN(vec)
#define FP_IVEC FP_FN(ivec)

static inline __attribute__((always_inline)) FP_VEC FP_FN(ld)(const float *p)
{
    FP_VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* V[p][i][c] (p = 4k + l) of the tiles q0 .. q0 + mr - 1 (a tile past the last valid one
 * repeats it). */
static void FP_FN(wino_input)(const fc_gather *g, ptrdiff_t q0, int mr, ptrdiff_t nvalid,
                              float *V)
{
    const ptrdiff_t cs = g->cs, per_img = g->grid_u * g->grid_v;
    for (int i = 0; i < mr; i++) {
        const ptrdiff_t q = q0 + (i < nvalid ? i : nvalid - 1);
        const ptrdiff_t n = q / per_img, r = q - n * per_img;
        const ptrdiff_t u = r / g->grid_v, v = r - u * g->grid_v;
        const float *row[4][4];
        for (int a = 0; a < 4; a++) {
            const ptrdiff_t y = g->by0 + 2 * u + a;
            for (int b = 0; b < 4; b++) {
                const ptrdiff_t x = g->bx0 + 2 * v + b;
                row[a][b] = (y >= 0 && y < g->hs && x >= 0 && x < g->ws)
                                ? g->src + ((n * g->hs + y) * g->ws + x) * cs
                                : g->zeros;
            }
        }
        float *dst = V + (ptrdiff_t)i * cs;
        const ptrdiff_t ps = (ptrdiff_t)mr * cs;   /* stride between positions p */
        ptrdiff_t c = 0;
        /* Whole vectors of channels (the same additions as the scalar loop below, in the
         * same order: the same bits; GCC left that loop scalar, 26% of a 32 -> 64 conv). */
        for (; c + FP_VL <= cs; c += FP_VL) {
            FP_VEC d[4][4], t[4][4];
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++)
                    d[a][b] = FP_FN(ld)(row[a][b] + c);
            for (int b = 0; b < 4; b++) {
                t[0][b] = d[0][b] - d[2][b];
                t[1][b] = d[1][b] + d[2][b];
                t[2][b] = d[2][b] - d[1][b];
                t[3][b] = d[1][b] - d[3][b];
            }
            for (int k = 0; k < 4; k++) {
                const FP_VEC v0 = t[k][0] - t[k][2], v1 = t[k][1] + t[k][2];
                const FP_VEC v2 = t[k][2] - t[k][1], v3 = t[k][1] - t[k][3];
                memcpy(dst + (4 * k + 0) * ps + c, &v0, sizeof v0);
                memcpy(dst + (4 * k + 1) * ps + c, &v1, sizeof v1);
                memcpy(dst + (4 * k + 2) * ps + c, &v2, sizeof v2);
                memcpy(dst + (4 * k + 3) * ps + c, &v3, sizeof v3);
            }
        }
        for (; c < cs; c++) {
            float d[4][4], t[4][4];
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++)
                    d[a][b] = row[a][b][c];
            for (int b = 0; b < 4; b++) {   /* t = B^T d */
                t[0][b] = d[0][b] - d[2][b];
                t[1][b] = d[1][b] + d[2][b];
                t[2][b] = d[2][b] - d[1][b];
                t[3][b] = d[1][b] - d[3][b];
            }
            for (int k = 0; k < 4; k++) {   /* V = t B */
                dst[(4 * k + 0) * ps + c] = t[k][0] - t[k][2];
                dst[(4 * k + 1) * ps + c] = t[k][1] + t[k][2];
                dst[(4 * k + 2) * ps + c] = t[k][2] - t[k][1];
                dst[(4 * k + 3) * ps + c] = t[k][1] - t[k][3];
            }
        }
    }
}

/* M[p][i][f0 .. f0 + NV*VL) = V[p][i][:] . U[p][:][f0 ..] for the 16 positions. */
static inline __attribute__((always_inline)) void FP_FN(wino_gemm)(
    const fc_gather *g, const float *V, float *M, ptrdiff_t f0, const int MR, const int NV)
{
    const ptrdiff_t cs = g->cs, co_pad = g->co_pad;
    for (int p = 0; p < 16; p++) {
        FP_VEC acc[FP_WMR][4];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NV; j++)
                acc[i][j] = (FP_VEC){0};
        const float *vp = V + (ptrdiff_t)p * MR * cs;
        const float *up = g->w + (ptrdiff_t)p * cs * co_pad + f0;
        for (ptrdiff_t c = 0; c < cs; c++, up += co_pad) {
            FP_VEC wv[4];
            for (int j = 0; j < NV; j++)
                wv[j] = FP_FN(ld)(up + FP_VL * j);
            for (int i = 0; i < MR; i++) {
                const float s = vp[i * cs + c];
                for (int j = 0; j < NV; j++)
                    acc[i][j] += s * wv[j];
            }
        }
        float *mp = M + (ptrdiff_t)p * MR * 4 * FP_VL;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NV; j++)
                memcpy(mp + (i * 4 + j) * FP_VL, &acc[i][j], sizeof(FP_VEC));
    }
}

/* The lanes where z replaces best as the window's maximum: greater, or the first NaN. */
static inline __attribute__((always_inline)) FP_IVEC FP_FN(wins)(FP_VEC z, FP_VEC best)
{
    return (z > best) | ((z != z) & (best == best));
}

static inline __attribute__((always_inline)) FP_VEC FP_FN(pick)(FP_VEC z, FP_VEC best)
{
    const FP_IVEC take = FP_FN(wins)(z, best);
    return (FP_VEC)(((FP_IVEC)z & take) | ((FP_IVEC)best & ~take));
}

/* pick, and the winner's position: pos where z wins, else win. */
static inline __attribute__((always_inline)) FP_VEC FP_FN(pick_arg)(FP_VEC z, FP_VEC best,
                                                                    int pos, FP_IVEC *win)
{
    const FP_IVEC take = FP_FN(wins)(z, best);
    *win = (*win & ~take) | (((FP_IVEC){0} + pos) & take);
    return (FP_VEC)(((FP_IVEC)z & take) | ((FP_IVEC)best & ~take));
}

/* Y = A^T M A plus the bias, the whole 2x2 tile stored (no pool): outputs (2u + a, 2v + b)
 * of out (n_img, ho, wo, co), those past its bottom or right side dropped. */
static inline __attribute__((always_inline)) void FP_FN(wino_output_tile)(
    const fc_gather *g, const float *M, ptrdiff_t n, ptrdiff_t u, ptrdiff_t v, ptrdiff_t f0,
    int i, const int MR, const int NV)
{
    const ptrdiff_t oy = 2 * u, ox = 2 * v;
    const int rows = oy + 1 < g->ho ? 2 : 1, cols = ox + 1 < g->wo ? 2 : 1;
    float *out = g->out + ((n * g->ho + oy) * g->wo + ox) * g->co;
    const ptrdiff_t down = g->wo * g->co;
    for (int j = 0; j < NV; j++) {
        FP_VEC m[16];
        for (int p = 0; p < 16; p++)
            m[p] = FP_FN(ld)(M + ((ptrdiff_t)p * MR * 4 + i * 4 + j) * FP_VL);
        FP_VEC s0[4], s1[4];
        for (int b = 0; b < 4; b++) {
            s0[b] = m[0 + b] + m[4 + b] + m[8 + b];
            s1[b] = m[4 + b] - m[8 + b] - m[12 + b];
        }
        const ptrdiff_t f = f0 + FP_VL * j;
        const FP_VEC bias = g->bias ? FP_FN(ld)(g->bias + f) : (FP_VEC){0};
        FP_VEC y[2][2];
        y[0][0] = s0[0] + s0[1] + s0[2] + bias;
        y[0][1] = s0[1] - s0[2] - s0[3] + bias;
        y[1][0] = s1[0] + s1[1] + s1[2] + bias;
        y[1][1] = s1[1] - s1[2] - s1[3] + bias;
        const ptrdiff_t lanes = g->co - f < FP_VL ? g->co - f : FP_VL;
        if (lanes <= 0)
            continue;
        for (int a = 0; a < rows; a++)
            for (int b = 0; b < cols; b++)
                memcpy(out + a * down + b * g->co + f, &y[a][b], (size_t)lanes * sizeof(float));
    }
}

/* Y = A^T M A, the window's maximum, the bias; stored to the pooled output, and with
 * g->arg set the winner's flat position in the conv image, cy * conv_wo + cx, to arg (the
 * order and rule of simd.h's fused kernel: (0,0), (0,1), (1,0), (1,1), first maximum
 * wins, a NaN propagates). */
static inline __attribute__((always_inline)) void FP_FN(wino_output)(
    const fc_gather *g, const float *M, ptrdiff_t q0, ptrdiff_t nvalid, ptrdiff_t f0,
    const int MR, const int NV, const int POOL)
{
    const ptrdiff_t per_img = g->grid_u * g->grid_v;
    for (int i = 0; i < MR && i < nvalid; i++) {
        const ptrdiff_t q = q0 + i;
        const ptrdiff_t n = q / per_img, r = q - n * per_img;
        const ptrdiff_t u = r / g->grid_v, v = r - u * g->grid_v;
        if (!POOL) {
            FP_FN(wino_output_tile)(g, M, n, u, v, f0, i, MR, NV);
            continue;
        }
        float *out = g->out + ((n * g->ho + u) * g->wo + v) * g->co;
        for (int j = 0; j < NV; j++) {
            FP_VEC m[16];
            for (int p = 0; p < 16; p++)
                m[p] = FP_FN(ld)(M + ((ptrdiff_t)p * MR * 4 + i * 4 + j) * FP_VL);
            /* s = A^T m (rows), then the two columns of s A */
            FP_VEC s0[4], s1[4];
            for (int b = 0; b < 4; b++) {
                s0[b] = m[0 + b] + m[4 + b] + m[8 + b];
                s1[b] = m[4 + b] - m[8 + b] - m[12 + b];
            }
            const FP_VEC y00 = s0[0] + s0[1] + s0[2], y01 = s0[1] - s0[2] - s0[3];
            const FP_VEC y10 = s1[0] + s1[1] + s1[2], y11 = s1[1] - s1[2] - s1[3];
            const ptrdiff_t f = f0 + FP_VL * j;
            const FP_VEC bias = g->bias ? FP_FN(ld)(g->bias + f) : (FP_VEC){0};
            const ptrdiff_t lanes = g->co - f < FP_VL ? g->co - f : FP_VL;
            FP_VEC best = y00 + bias;
            if (g->arg == NULL) {
                best = FP_FN(pick)(y01 + bias, best);
                best = FP_FN(pick)(y10 + bias, best);
                best = FP_FN(pick)(y11 + bias, best);
                if (lanes > 0)
                    memcpy(out + f, &best, (size_t)lanes * sizeof(float));
            } else {
                const int pos = (int)(2 * u * g->conv_wo + 2 * v);
                FP_IVEC win = (FP_IVEC){0} + pos;
                best = FP_FN(pick_arg)(y01 + bias, best, pos + 1, &win);
                best = FP_FN(pick_arg)(y10 + bias, best, pos + (int)g->conv_wo, &win);
                best = FP_FN(pick_arg)(y11 + bias, best, pos + (int)g->conv_wo + 1, &win);
                if (lanes > 0) {
                    memcpy(out + f, &best, (size_t)lanes * sizeof(float));
                    memcpy(g->arg + (out - g->out) + f, &win, (size_t)lanes * sizeof(int));
                }
            }
        }
    }
}

/* One block of MR tiles from q0 (nvalid of them real): the input transform, then per
 * 4 vectors of filters the 16 GEMMs and the output transform. */
static inline __attribute__((always_inline)) void FP_FN(wino_block)(
    const fc_gather *g, ptrdiff_t q0, ptrdiff_t nvalid, float *V, float *M, const int MR,
    const int POOL)
{
    FP_FN(wino_input)(g, q0, MR, nvalid, V);
    for (ptrdiff_t f0 = 0; f0 < g->co_pad; f0 += 4 * FP_VL) {
        const ptrdiff_t left = (g->co_pad - f0) / FP_VL;
        if (left >= 4) {
            FP_FN(wino_gemm)(g, V, M, f0, MR, 4);
            FP_FN(wino_output)(g, M, q0, nvalid, f0, MR, 4, POOL);
        } else if (left == 3) {
            FP_FN(wino_gemm)(g, V, M, f0, MR, 3);
            FP_FN(wino_output)(g, M, q0, nvalid, f0, MR, 3, POOL);
        } else if (left == 2) {
            FP_FN(wino_gemm)(g, V, M, f0, MR, 2);
            FP_FN(wino_output)(g, M, q0, nvalid, f0, MR, 2, POOL);
        } else {
            FP_FN(wino_gemm)(g, V, M, f0, MR, 1);
            FP_FN(wino_output)(g, M, q0, nvalid, f0, MR, 1, POOL);
        }
    }
}

/* Grid points [q_lo, q_hi): blocks of FP_WMR tiles, then one block of the rest (no tile
 * computed twice: at batch 1 the 25 tiles of a 5x5 pool were 30 slots). */
static inline __attribute__((always_inline)) void FP_FN(wino_range)(
    const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi, float *scratch, const int POOL)
{
    float *V = scratch, *M = scratch + 16 * FP_WMR * g->cs;
    ptrdiff_t q0 = q_lo;
    for (; q0 + FP_WMR <= q_hi; q0 += FP_WMR)
        FP_FN(wino_block)(g, q0, FP_WMR, V, M, FP_WMR, POOL);
    switch (q_hi - q0) {
    case 1: FP_FN(wino_block)(g, q0, 1, V, M, 1, POOL); break;
    case 2: FP_FN(wino_block)(g, q0, 2, V, M, 2, POOL); break;
#if FP_WMR > 3
    case 3: FP_FN(wino_block)(g, q0, 3, V, M, 3, POOL); break;
    case 4: FP_FN(wino_block)(g, q0, 4, V, M, 4, POOL); break;
    case 5: FP_FN(wino_block)(g, q0, 5, V, M, 5, POOL); break;
#endif
    default: break;
    }
}

/* The pooled grid (out is (n_img, grid_u, grid_v, co)). */
static void FP_FN(wino_pool_range)(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi,
                                   float *scratch)
{
    FP_FN(wino_range)(g, q_lo, q_hi, scratch, 1);
}

/* No pool: tile (u, v) writes out's pixels (2u + a, 2v + b) that exist (out is (n_img, ho,
 * wo, co), grid_u = ceil(ho / 2), grid_v = ceil(wo / 2)); g->arg is not read. */
static void FP_FN(wino_conv_range)(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi,
                                   float *scratch)
{
    FP_FN(wino_range)(g, q_lo, q_hi, scratch, 0);
}

#undef FP_VEC
#undef FP_IVEC
#undef FP_FN
#undef FP_CAT
#undef FP_CAT_
#undef FP_ISA
#undef FP_VL
#undef FP_WMR
