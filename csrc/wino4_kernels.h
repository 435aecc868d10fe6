/* Winograd F(4x4, 3x3) (Lavin & Gray, 2016) for the training backend: each 4x4 output
 * tile is computed from a 6x6 input tile with 36 multiplies per (channel, filter) instead
 * of 144 (F(2x2, 3x3): 64), then either stored (no pool) or reduced to its four 2x2
 * windows' maxima (and their positions) with the bias.
 *
 *   V = B^T d B, U = G g G^T (fastcnn/backends/_winograd.py transform_kernel(w, 4)),
 *   M = sum_c U . V (36 small GEMMs), Y = A^T M A.
 *
 * Compiled once per instruction set by wino.h with FQ_ISA, FQ_VL (floats per vector) and
 * FQ_WMR (tiles per register block). No include guard, on purpose.
 *
 * g as for plan_wino.h, but tile (u, v) of the grid (grid_u x grid_v) covers conv pixels
 * (4u + 0..3, 4v + 0..3), reading input rows by0 + 4u + (0..5) and columns
 * bx0 + 4v + (0..5) (zero outside src). Pooled: out (n_img, ho, wo, co) is the pooled
 * output, the tile's windows (2u + a, 2v + b) past ho or wo dropped; arg (or NULL) gets
 * the winners' cy * conv_wo + cx. Not pooled: out's pixels past ho, wo dropped. w is U
 * laid out (36, cs, co_pad). scratch: 36 * FQ_WMR * (cs + 4 * FQ_VL) floats.
 */

#define FQ_CAT_(a, b) a##_##b
#define FQ_CAT(a, b) FQ_CAT_(a, b)
#define FQ_FN(name) FQ_CAT(fq_##name, FQ_ISA)

typedef float FQ_FN(vec) __attribute__((vector_size(4 * FQ_VL)));
typedef int FQ_FN(ivec) __attribute__((vector_size(4 * FQ_VL)));
#define FQ_VEC FQ_FN(vec)
#define FQ_IVEC FQ_FN(ivec)

static inline __attribute__((always_inline)) FQ_VEC FQ_FN(ld)(const float *p)
{
    FQ_VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The 6-point input transform of one row or column: B^T x. */
#define FQ_BT(T, x, r)                                                                      \
    do {                                                                                    \
        const T x0 = (x)[0], x1 = (x)[1], x2 = (x)[2], x3 = (x)[3], x4 = (x)[4], x5 = (x)[5]; \
        (r)[0] = 4.0f * x0 - 5.0f * x2 + x4;                                                \
        (r)[1] = -4.0f * (x1 + x2) + (x3 + x4);                                             \
        (r)[2] = 4.0f * (x1 - x2) + (x4 - x3);                                              \
        (r)[3] = 2.0f * (x3 - x1) + (x4 - x2);                                              \
        (r)[4] = 2.0f * (x1 - x3) + (x4 - x2);                                              \
        (r)[5] = 4.0f * x1 - 5.0f * x3 + x5;                                                \
    } while (0)

/* V[p][i][c] (p = 6k + l) of the tiles q0 .. q0 + mr - 1 (a tile past the last valid one
 * repeats it). */
static void FQ_FN(input)(const fc_gather *g, ptrdiff_t q0, int mr, ptrdiff_t nvalid, float *V)
{
    const ptrdiff_t cs = g->cs, per_img = g->grid_u * g->grid_v;
    const ptrdiff_t ps = (ptrdiff_t)mr * cs;   /* stride between positions p */
    for (int i = 0; i < mr; i++) {
        const ptrdiff_t q = q0 + (i < nvalid ? i : nvalid - 1);
        const ptrdiff_t n = q / per_img, r = q - n * per_img;
        const ptrdiff_t u = r / g->grid_v, v = r - u * g->grid_v;
        const float *row[6][6];
        for (int a = 0; a < 6; a++) {
            const ptrdiff_t y = g->by0 + 4 * u + a;
            for (int b = 0; b < 6; b++) {
                const ptrdiff_t x = g->bx0 + 4 * v + b;
                row[a][b] = (y >= 0 && y < g->hs && x >= 0 && x < g->ws)
                                ? g->src + ((n * g->hs + y) * g->ws + x) * cs
                                : g->zeros;
            }
        }
        float *dst = V + (ptrdiff_t)i * cs;
        ptrdiff_t c = 0;
        for (; c + FQ_VL <= cs; c += FQ_VL) {
            FQ_VEC t[6][6];
            for (int b = 0; b < 6; b++) {   /* column b: t[.][b] = B^T d[.][b] */
                FQ_VEC col[6], res[6];
                for (int a = 0; a < 6; a++)
                    col[a] = FQ_FN(ld)(row[a][b] + c);
                FQ_BT(FQ_VEC, col, res);
                for (int a = 0; a < 6; a++)
                    t[a][b] = res[a];
            }
            for (int k = 0; k < 6; k++) {   /* row k: V[k][.] = t[k][.] B */
                FQ_VEC res[6];
                FQ_BT(FQ_VEC, t[k], res);
                for (int l = 0; l < 6; l++)
                    memcpy(dst + (6 * k + l) * ps + c, &res[l], sizeof(FQ_VEC));
            }
        }
        for (; c < cs; c++) {
            float t[6][6];
            for (int b = 0; b < 6; b++) {
                float col[6], res[6];
                for (int a = 0; a < 6; a++)
                    col[a] = row[a][b][c];
                FQ_BT(float, col, res);
                for (int a = 0; a < 6; a++)
                    t[a][b] = res[a];
            }
            for (int k = 0; k < 6; k++) {
                float res[6];
                FQ_BT(float, t[k], res);
                for (int l = 0; l < 6; l++)
                    dst[(6 * k + l) * ps + c] = res[l];
            }
        }
    }
}

/* M[p][i][f0 .. f0 + NV*VL) = V[p][i][:] . U[p][:][f0 ..] for the 36 positions. */
static inline __attribute__((always_inline)) void FQ_FN(gemm)(
    const fc_gather *g, const float *V, float *M, ptrdiff_t f0, const int MR, const int NV)
{
    const ptrdiff_t cs = g->cs, co_pad = g->co_pad;
    for (int p = 0; p < 36; p++) {
        FQ_VEC acc[FQ_WMR][4];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NV; j++)
                acc[i][j] = (FQ_VEC){0};
        const float *vp = V + (ptrdiff_t)p * MR * cs;
        const float *up = g->w + (ptrdiff_t)p * cs * co_pad + f0;
        for (ptrdiff_t c = 0; c < cs; c++, up += co_pad) {
            FQ_VEC wv[4];
            for (int j = 0; j < NV; j++)
                wv[j] = FQ_FN(ld)(up + FQ_VL * j);
            for (int i = 0; i < MR; i++) {
                const float s = vp[i * cs + c];
                for (int j = 0; j < NV; j++)
                    acc[i][j] += s * wv[j];
            }
        }
        float *mp = M + (ptrdiff_t)p * MR * 4 * FQ_VL;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NV; j++)
                memcpy(mp + (i * 4 + j) * FQ_VL, &acc[i][j], sizeof(FQ_VEC));
    }
}

/* The 6 -> 4 output transform of one row or column: A^T x. */
#define FQ_AT(x, r)                                                                         \
    do {                                                                                    \
        const FQ_VEC s12 = (x)[1] + (x)[2], d12 = (x)[1] - (x)[2];                          \
        const FQ_VEC s34 = (x)[3] + (x)[4], d34 = (x)[3] - (x)[4];                          \
        (r)[0] = (x)[0] + s12 + s34;                                                        \
        (r)[1] = d12 + 2.0f * d34;                                                          \
        (r)[2] = s12 + 4.0f * s34;                                                          \
        (r)[3] = d12 + 8.0f * d34 + (x)[5];                                                 \
    } while (0)

static inline __attribute__((always_inline)) FQ_IVEC FQ_FN(wins)(FQ_VEC z, FQ_VEC best)
{
    return (z > best) | ((z != z) & (best == best));
}

/* Y = A^T M A (+ bias) of tile i of the block, then stored whole or pooled. */
static inline __attribute__((always_inline)) void FQ_FN(output)(
    const fc_gather *g, const float *M, ptrdiff_t q0, ptrdiff_t nvalid, ptrdiff_t f0,
    const int MR, const int NV, const int POOL)
{
    const ptrdiff_t per_img = g->grid_u * g->grid_v;
    for (int i = 0; i < MR && i < nvalid; i++) {
        const ptrdiff_t q = q0 + i;
        const ptrdiff_t n = q / per_img, r = q - n * per_img;
        const ptrdiff_t u = r / g->grid_v, v = r - u * g->grid_v;
        for (int j = 0; j < NV; j++) {
            const ptrdiff_t f = f0 + FQ_VL * j;
            const ptrdiff_t lanes = g->co - f < FQ_VL ? g->co - f : FQ_VL;
            if (lanes <= 0)
                continue;
            FQ_VEC t[4][6], y[4][4];
            for (int b = 0; b < 6; b++) {   /* column b: t[.][b] = A^T m[.][b] */
                FQ_VEC col[6], res[4];
                for (int a = 0; a < 6; a++)
                    col[a] = FQ_FN(ld)(M + ((ptrdiff_t)(6 * a + b) * MR * 4 + i * 4 + j) * FQ_VL);
                FQ_AT(col, res);
                for (int a = 0; a < 4; a++)
                    t[a][b] = res[a];
            }
            const FQ_VEC bias = g->bias ? FQ_FN(ld)(g->bias + f) : (FQ_VEC){0};
            for (int a = 0; a < 4; a++) {
                FQ_VEC res[4];
                FQ_AT(t[a], res);
                for (int b = 0; b < 4; b++)
                    y[a][b] = res[b] + bias;
            }
            if (!POOL) {
                const ptrdiff_t oy = 4 * u, ox = 4 * v;
                const int rows = g->ho - oy < 4 ? (int)(g->ho - oy) : 4;
                const int cols = g->wo - ox < 4 ? (int)(g->wo - ox) : 4;
                float *out = g->out + ((n * g->ho + oy) * g->wo + ox) * g->co + f;
                for (int a = 0; a < rows; a++)
                    for (int b = 0; b < cols; b++)
                        memcpy(out + (a * g->wo + b) * g->co, &y[a][b],
                               (size_t)lanes * sizeof(float));
                continue;
            }
            for (int wy = 0; wy < 2; wy++) {
                const ptrdiff_t py = 2 * u + wy;
                if (py >= g->ho)
                    break;
                for (int wx = 0; wx < 2; wx++) {
                    const ptrdiff_t px = 2 * v + wx;
                    if (px >= g->wo)
                        break;
                    const ptrdiff_t dst = ((n * g->ho + py) * g->wo + px) * g->co + f;
                    const int pos = (int)((2 * py) * g->conv_wo + 2 * px);
                    const int ofs[4] = {0, 1, (int)g->conv_wo, (int)g->conv_wo + 1};
                    FQ_VEC best = y[2 * wy][2 * wx];
                    FQ_IVEC win = (FQ_IVEC){0} + pos;
                    for (int k = 1; k < 4; k++) {
                        const FQ_VEC z = y[2 * wy + (k >> 1)][2 * wx + (k & 1)];
                        const FQ_IVEC take = FQ_FN(wins)(z, best);
                        best = (FQ_VEC)(((FQ_IVEC)z & take) | ((FQ_IVEC)best & ~take));
                        win = (win & ~take) | (((FQ_IVEC){0} + (pos + ofs[k])) & take);
                    }
                    memcpy(g->out + dst, &best, (size_t)lanes * sizeof(float));
                    if (g->arg)
                        memcpy(g->arg + dst, &win, (size_t)lanes * sizeof(int));
                }
            }
        }
    }
}

static inline __attribute__((always_inline)) void FQ_FN(block)(
    const fc_gather *g, ptrdiff_t q0, ptrdiff_t nvalid, float *V, float *M, const int MR,
    const int POOL)
{
    FQ_FN(input)(g, q0, MR, nvalid, V);
    for (ptrdiff_t f0 = 0; f0 < g->co_pad; f0 += 4 * FQ_VL) {
        const ptrdiff_t left = (g->co_pad - f0) / FQ_VL;
        if (left >= 4) {
            FQ_FN(gemm)(g, V, M, f0, MR, 4);
            FQ_FN(output)(g, M, q0, nvalid, f0, MR, 4, POOL);
        } else if (left == 3) {
            FQ_FN(gemm)(g, V, M, f0, MR, 3);
            FQ_FN(output)(g, M, q0, nvalid, f0, MR, 3, POOL);
        } else if (left == 2) {
            FQ_FN(gemm)(g, V, M, f0, MR, 2);
            FQ_FN(output)(g, M, q0, nvalid, f0, MR, 2, POOL);
        } else {
            FQ_FN(gemm)(g, V, M, f0, MR, 1);
            FQ_FN(output)(g, M, q0, nvalid, f0, MR, 1, POOL);
        }
    }
}

static inline __attribute__((always_inline)) void FQ_FN(range)(
    const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi, float *scratch, const int POOL)
{
    float *V = scratch, *M = scratch + 36 * FQ_WMR * g->cs;
    ptrdiff_t q0 = q_lo;
    for (; q0 + FQ_WMR <= q_hi; q0 += FQ_WMR)
        FQ_FN(block)(g, q0, FQ_WMR, V, M, FQ_WMR, POOL);
    switch (q_hi - q0) {
    case 1: FQ_FN(block)(g, q0, 1, V, M, 1, POOL); break;
    case 2: FQ_FN(block)(g, q0, 2, V, M, 2, POOL); break;
#if FQ_WMR > 3
    case 3: FQ_FN(block)(g, q0, 3, V, M, 3, POOL); break;
    case 4: FQ_FN(block)(g, q0, 4, V, M, 4, POOL); break;
    case 5: FQ_FN(block)(g, q0, 5, V, M, 5, POOL); break;
#endif
    default: break;
    }
}

static void FQ_FN(pool_range)(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi, float *scratch)
{
    FQ_FN(range)(g, q_lo, q_hi, scratch, 1);
}

static void FQ_FN(conv_range)(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi, float *scratch)
{
    FQ_FN(range)(g, q_lo, q_hi, scratch, 0);
}

#undef FQ_BT
#undef FQ_AT
#undef FQ_VEC
#undef FQ_IVEC
#undef FQ_FN
#undef FQ_CAT
#undef FQ_CAT_
#undef FQ_ISA
#undef FQ_VL
#undef FQ_WMR
