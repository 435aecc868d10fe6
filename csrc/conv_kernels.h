/* The direct-convolution kernels (design: simd.h), compiled once per instruction set
 * through simd_isa.h, which defines the vector type and helpers and, per instruction set,
 *
 *   FC_NV_MAX         the widest block in vectors,
 *   FC_MR             the pixels (gather) or dW rows of a block (at most FC_MR_LIMIT),
 *   FC_BLOCKS_OF_ISA  X(MR, NV) for every block shape those two can ask for,
 *   FC_POOL_NV_MAX    the widest block (in vectors) of the conv fused with a 2x2 max pool,
 *   FC_POOL_BLOCKS_OF_ISA  X(NV) for each width that can ask for.
 *
 * No include guard, on purpose.
 */

/* --- gather: forward conv, and dx per stride phase --------------------------------------
 * The reduction of one block: MR output pixels, pixel i taking its taps from image img[i]
 * at rows ty[i] + ti, columns tx[i] + tj, into acc[i][0..NV) (zeroed here), for the NV
 * vectors of output channels from f0. */

FC_INLINE void FC_FN(accumulate)(const fc_gather *g, const ptrdiff_t *img, const ptrdiff_t *ty,
                                 const ptrdiff_t *tx, ptrdiff_t f0, FC_VEC acc[][4],
                                 const int MR, const int NV)
{
    const float *p[FC_MR_LIMIT];
    const ptrdiff_t cs = g->cs, co_pad = g->co_pad;
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NV; j++)
            acc[i][j] = (FC_VEC){0};
    /* Taps come in groups of g->run floats that are consecutive in src: one tap's cs
     * channels, or a whole kernel row of ntw taps when no window of the grid crosses the
     * side of the image (fewer, longer reductions for few channels). A block whose own
     * windows all lie inside the image's columns takes whole rows even where some other
     * window crosses a side (a 'same' conv: all but its edge blocks): the same taps in the
     * same order, so the same bits. g->zeros holds ntw * cs zeros. 3x3 'same' forwards,
     * 1 thread, old and new builds alternating in one process: MobileNetV2's stem
     * (8x224x224x3 -> 32, stride 2) 2.92 -> 2.40 ms, VGG16's first conv (-> 64) 24.0 ->
     * 18.1, 8x150x150x3 -> 32 4.97 -> 3.87, 64x28x28x1 -> 32 0.93 -> 0.83, 8x112x112x16
     * -> 32 5.91 -> 5.74. */
    ptrdiff_t run = g->run;
    if (run == cs && g->ntw > 1) {
        int inside = 1;
        for (int i = 0; i < MR; i++)
            inside &= tx[i] >= 0 && tx[i] + g->ntw <= g->ws;
        if (inside)
            run = g->ntw * cs;
    }
    const ptrdiff_t groups_w = run == cs ? g->ntw : 1;
    for (ptrdiff_t ti = 0; ti < g->nth; ti++) {
        for (ptrdiff_t tj = 0; tj < groups_w; tj++) {
            /* A tap outside the image reads the zero row; a tap outside for every pixel
             * of the block (a padded border row) is skipped. */
            int live = 0;
            for (int i = 0; i < MR; i++) {
                ptrdiff_t y = ty[i] + ti, x = tx[i] + tj;
                if (y >= 0 && y < g->hs && x >= 0 && x < g->ws) {
                    p[i] = g->src + ((img[i] * g->hs + y) * g->ws + x) * cs;
                    live = 1;
                } else {
                    p[i] = g->zeros;
                }
            }
            if (!live)
                continue;
            const float *wt = g->w + (ti * g->ntw + tj) * cs * co_pad + f0;
            for (ptrdiff_t c = 0; c < run; c++) {
                FC_VEC wv[4];
                for (int j = 0; j < NV; j++)
                    wv[j] = FC_FN(load)(wt + FC_VLEN * j);
                for (int i = 0; i < MR; i++) {
                    const float s = p[i][c];
                    for (int j = 0; j < NV; j++)
                        acc[i][j] += s * wv[j];
                }
                wt += co_pad;
            }
        }
    }
}

/* v through act (FC_ACT_*): lane-wise selects on comparison masks, so a NaN stays NaN and
 * -0.0 becomes 0.0, the bits of elementwise.pyx's relu and plan.h's fp_activate. */
FC_INLINE FC_VEC FC_FN(activate)(FC_VEC v, int act)
{
    if (act == FC_ACT_LINEAR)
        return v;
    const FC_VEC zero = (FC_VEC){0}, six = zero + 6.0f;
    v = FC_FN(select)((FC_IVEC)(v <= zero), zero, v);
    return act == FC_ACT_RELU6 ? FC_FN(select)((FC_IVEC)(v > six), six, v) : v;
}

/* One block: MR consecutive grid points from q0 (a block past q_end repeats its last
 * point, computed again but not stored) x NV vectors of output channels from f0. */
FC_INLINE void FC_FN(gather_block)(const fc_gather *g, ptrdiff_t q0, ptrdiff_t q_end,
                                   ptrdiff_t f0, const int MR, const int NV)
{
    FC_VEC acc[FC_MR_LIMIT][4];
    ptrdiff_t img[FC_MR_LIMIT], ty[FC_MR_LIMIT], tx[FC_MR_LIMIT], dst[FC_MR_LIMIT];
    const ptrdiff_t per_img = g->grid_u * g->grid_v;
    const ptrdiff_t nvalid = q_end - q0 < MR ? q_end - q0 : MR;

    for (int i = 0; i < MR; i++) {
        ptrdiff_t q = q0 + (i < nvalid ? i : nvalid - 1);
        ptrdiff_t n = q / per_img, r = q - n * per_img;
        ptrdiff_t u = r / g->grid_v, v = r - u * g->grid_v;
        img[i] = n;
        ty[i] = g->by0 + u * g->bsy;
        tx[i] = g->bx0 + v * g->bsx;
        dst[i] = ((n * g->ho + g->oy0 + u * g->osy) * g->wo + g->ox0 + v * g->osx) * g->co;
    }
    FC_FN(accumulate)(g, img, ty, tx, f0, acc, MR, NV);
    /* The epilogue: the bias and the activation in registers, then the only write of y. */
    for (int j = 0; j < NV; j++) {
        const ptrdiff_t f = f0 + FC_VLEN * j, lanes = g->co - f < FC_VLEN ? g->co - f : FC_VLEN;
        const FC_VEC b = g->bias ? FC_FN(load)(g->bias + f) : (FC_VEC){0};
        for (int i = 0; i < nvalid; i++) {
            const FC_VEC v = FC_FN(activate)(acc[i][j] + b, g->act);
            if (lanes == FC_VLEN)
                FC_FN(store)(g->out + dst[i] + f, v);
            else if (lanes > 0)
                FC_FN(store_part)(g->out + dst[i] + f, v, lanes);
        }
    }
}

/* --- the forward conv fused with a 2x2, stride-2 max pool -------------------------------
 * The grid is the POOLED output; a block is the 4 conv pixels of one window, (2u + a,
 * 2v + b) in row-major order, so the conv output never reaches memory: its values meet the
 * bias in registers and only each window's maximum (first maximum wins, NaN propagates,
 * exactly as maxpool_rows on the stored conv output) and the winner's flat position in the
 * conv output image (pool_kernels.h's argmax format) are written. Conv rows and columns
 * that no window covers (the 11th of 11 under a 2x2 pool) are not computed at all. */

FC_INLINE void FC_FN(gather_pool_block)(const fc_gather *g, ptrdiff_t q, ptrdiff_t f0,
                                        const int NV)
{
    FC_VEC acc[4][4];
    ptrdiff_t img[4], ty[4], tx[4];
    int pos[4];
    const ptrdiff_t per_img = g->grid_u * g->grid_v;
    const ptrdiff_t n = q / per_img, r = q - n * per_img;
    const ptrdiff_t u = r / g->grid_v, v = r - u * g->grid_v;
    for (int k = 0; k < 4; k++) {
        const ptrdiff_t cy = 2 * u + (k >> 1), cx = 2 * v + (k & 1);
        img[k] = n;
        ty[k] = g->by0 + cy * g->bsy;
        tx[k] = g->bx0 + cx * g->bsx;
        pos[k] = (int)(cy * g->conv_wo + cx);
    }
    FC_FN(accumulate)(g, img, ty, tx, f0, acc, 4, NV);
    const ptrdiff_t dst = ((n * g->ho + u) * g->wo + v) * g->co;
    for (int j = 0; j < NV; j++) {
        const ptrdiff_t f = f0 + FC_VLEN * j, lanes = g->co - f < FC_VLEN ? g->co - f : FC_VLEN;
        const FC_VEC b = g->bias ? FC_FN(load)(g->bias + f) : (FC_VEC){0};
        FC_VEC best = acc[0][j] + b;
        FC_IVEC win = (FC_IVEC){0} + pos[0];
        for (int k = 1; k < 4; k++) {
            const FC_VEC z = acc[k][j] + b;
            const FC_IVEC take = FC_FN(wins)(z, best);
            best = FC_FN(select)(take, z, best);
            win = (win & ~take) | (((FC_IVEC){0} + pos[k]) & take);
        }
        if (lanes == FC_VLEN) {
            FC_FN(store)(g->out + dst + f, best);
            FC_FN(store_int)(g->arg + dst + f, win);
        } else if (lanes > 0) {
            FC_FN(store_part)(g->out + dst + f, best, lanes);
            memcpy(g->arg + dst + f, &win, (size_t)lanes * sizeof(int));
        }
    }
}

/* --- dW -----------------------------------------------------------------------------------
 * dW's rows are (a, b, c) in HWIO order. They come in GROUPS of g->run consecutive rows
 * whose x values are consecutive floats of one input row: a tap (a, b) with its c channels
 * (run = c), or, when no output pixel's window crosses the left or right edge of the
 * image, a whole kernel row a (run = kw*c: taps b and b + 1 are neighbouring pixels of x).
 * One block: rows c0 .. c0+MR-1 of group `group` x NV vectors of output channels, over
 * the pixels of output rows [r0, r1) (rows of the flattened (n, i) axis). dyt is that tile
 * of dy, rows dys floats apart. FULL says c0 + MR <= run: the row offsets are then
 * constants; a ragged last block repeats its last row and stores only its own rows. */

FC_INLINE void FC_FN(dw_block)(const fc_dw *g, ptrdiff_t r0, ptrdiff_t r1, const float *dyt,
                               ptrdiff_t dys, ptrdiff_t group, ptrdiff_t c0, ptrdiff_t f0,
                               int first, const int MR, const int NV, const int FULL)
{
    FC_VEC acc[FC_MR_LIMIT][4];
    ptrdiff_t off[FC_MR_LIMIT];
    const ptrdiff_t c = g->c, f = g->f, run = g->run;
    const ptrdiff_t a = run == c ? group / g->kw : group;
    const ptrdiff_t b = run == c ? group - a * g->kw : 0;
    const ptrdiff_t nrows = run - c0 < MR ? run - c0 : MR;
    float *dw = g->dw + (group * run + c0) * f + f0;

    for (int i = 0; i < MR; i++)
        off[i] = FULL ? i : (i < nrows ? i : nrows - 1);
    for (int j = 0; j < NV; j++) {
        const ptrdiff_t fj = f0 + FC_VLEN * j, lanes = f - fj < FC_VLEN ? f - fj : FC_VLEN;
        for (int i = 0; i < MR; i++) {
            if (first || i >= nrows || lanes <= 0)
                acc[i][j] = (FC_VEC){0};
            else if (lanes == FC_VLEN)
                acc[i][j] = FC_FN(load)(dw + i * f + FC_VLEN * j);
            else
                acc[i][j] = FC_FN(load_part)(dw + i * f + FC_VLEN * j, lanes);
        }
    }
    /* Output pixel j of a row reads input column j*sw - pl + b: the columns inside the
     * image are one contiguous range [jlo, jhi), so the inner loop has no branch. */
    const ptrdiff_t shift = g->pl - b;
    const ptrdiff_t jlo = shift > 0 ? (shift + g->sw - 1) / g->sw : 0;
    ptrdiff_t jhi = g->w - 1 + shift >= 0 ? (g->w - 1 + shift) / g->sw + 1 : 0;
    if (jhi > g->wo)
        jhi = g->wo;
    const ptrdiff_t xstep = g->sw * c;
    for (ptrdiff_t r = r0; r < r1 && jlo < jhi; r++) {
        const ptrdiff_t n = r / g->ho, i = r - n * g->ho;
        const ptrdiff_t iy = i * g->sh - g->pt + a;
        if (iy < 0 || iy >= g->h)
            continue;
        const float *xp = g->x + ((n * g->h + iy) * g->w + jlo * g->sw - shift) * c + c0;
        const float *dp = dyt + ((r - r0) * g->wo + jlo) * dys + f0;
        for (ptrdiff_t jj = jlo; jj < jhi; jj++) {
            FC_VEC d[4];
            for (int j = 0; j < NV; j++)
                d[j] = FC_FN(load)(dp + FC_VLEN * j);
            for (int i = 0; i < MR; i++) {
                const float s = xp[off[i]];
                for (int j = 0; j < NV; j++)
                    acc[i][j] += s * d[j];
            }
            xp += xstep;
            dp += dys;
        }
    }
    for (int j = 0; j < NV; j++) {
        const ptrdiff_t fj = f0 + FC_VLEN * j, lanes = f - fj < FC_VLEN ? f - fj : FC_VLEN;
        for (int i = 0; i < nrows; i++) {
            if (lanes == FC_VLEN)
                FC_FN(store)(dw + i * f + FC_VLEN * j, acc[i][j]);
            else if (lanes > 0)
                FC_FN(store_part)(dw + i * f + FC_VLEN * j, acc[i][j], lanes);
        }
    }
}

/* --- one function per block shape, then the ranges that pick them -------------------- */

#define FC_DEFINE_BLOCKS(MR_, NV_)                                                          \
    static void FC_FN(gather_chunk_##MR_##x##NV_)(const fc_gather *g, ptrdiff_t q_lo,       \
                                                  ptrdiff_t q_hi, ptrdiff_t f0)             \
    {                                                                                       \
        for (ptrdiff_t q = q_lo; q < q_hi; q += MR_)                                        \
            FC_FN(gather_block)(g, q, q_hi, f0, MR_, NV_);                                  \
    }                                                                                       \
    static void FC_FN(dw_chunk_##MR_##x##NV_)(const fc_dw *g, ptrdiff_t r0, ptrdiff_t r1,   \
                                              const float *dyt, ptrdiff_t dys,              \
                                              ptrdiff_t group, ptrdiff_t c0, ptrdiff_t f0,  \
                                              int first)                                    \
    {                                                                                       \
        if (c0 + MR_ <= g->run)                                                             \
            FC_FN(dw_block)(g, r0, r1, dyt, dys, group, c0, f0, first, MR_, NV_, 1);        \
        else                                                                                \
            FC_FN(dw_block)(g, r0, r1, dyt, dys, group, c0, f0, first, MR_, NV_, 0);        \
    }

#define FC_GATHER_CASE(MR_, NV_)                                                            \
    if (mr == MR_ && nv == NV_) {                                                           \
        FC_FN(gather_chunk_##MR_##x##NV_)(g, q_lo, q_hi, f0);                               \
        continue;                                                                           \
    }

#define FC_DW_CASE(MR_, NV_)                                                                \
    if (mr == MR_ && nv == NV_) {                                                           \
        FC_FN(dw_chunk_##MR_##x##NV_)(g, r0, r1, dyt, dys, group, c0, f0, r0 == 0);         \
        continue;                                                                           \
    }

FC_INLINE int FC_FN(nv_max)(ptrdiff_t nv)
{
    return nv < FC_NV_MAX ? (int)nv : FC_NV_MAX;
}

/* Rows of dw per block (the same for every channel count). */
static ptrdiff_t FC_FN(dw_block_rows)(void) { return FC_MR; }

FC_BLOCKS_OF_ISA(FC_DEFINE_BLOCKS)

#define FC_DEFINE_POOL_BLOCKS(NV_)                                                          \
    static void FC_FN(gather_pool_chunk_##NV_)(const fc_gather *g, ptrdiff_t q_lo,          \
                                               ptrdiff_t q_hi, ptrdiff_t f0)                \
    {                                                                                       \
        for (ptrdiff_t q = q_lo; q < q_hi; q++)                                             \
            FC_FN(gather_pool_block)(g, q, f0, NV_);                                        \
    }
#define FC_POOL_CASE(NV_)                                                                   \
    if (nv == NV_) {                                                                        \
        FC_FN(gather_pool_chunk_##NV_)(g, q_lo, q_hi, f0);                                  \
        continue;                                                                           \
    }

FC_POOL_BLOCKS_OF_ISA(FC_DEFINE_POOL_BLOCKS)

/* Pooled grid points [q_lo, q_hi) of a fused conv + 2x2 max pool. */
static void FC_FN(gather_pool_range)(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi)
{
    for (ptrdiff_t f0 = 0, nv; f0 < g->co_pad; f0 += FC_VLEN * nv) {
        nv = (g->co_pad - f0) / FC_VLEN < FC_POOL_NV_MAX ? (g->co_pad - f0) / FC_VLEN
                                                          : FC_POOL_NV_MAX;
        FC_POOL_BLOCKS_OF_ISA(FC_POOL_CASE)
    }
}

static void FC_FN(gather_range)(const fc_gather *g, ptrdiff_t q_lo, ptrdiff_t q_hi)
{
    const int mr = FC_MR;
    for (ptrdiff_t f0 = 0, nv; f0 < g->co_pad; f0 += FC_VLEN * nv) {
        nv = FC_FN(nv_max)((g->co_pad - f0) / FC_VLEN);
        FC_BLOCKS_OF_ISA(FC_GATHER_CASE)
    }
}

static void FC_FN(dw_range)(const fc_dw *g, ptrdiff_t unit_lo, ptrdiff_t unit_hi,
                            float *scratch)
{
    const ptrdiff_t rows = g->n_img * g->ho, mr = g->block_rows;
    const ptrdiff_t cblocks = (g->run + mr - 1) / mr;
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += g->tile_rows) {
        const ptrdiff_t r1 = r0 + g->tile_rows < rows ? r0 + g->tile_rows : rows;
        const float *dyt = g->dy + r0 * g->wo * g->f;
        ptrdiff_t dys = g->f;
        if (g->f % 16 != 0) {
            /* Rows padded to f_pad so that every block reads whole vectors. */
            for (ptrdiff_t p = 0; p < (r1 - r0) * g->wo; p++) {
                memcpy(scratch + p * g->f_pad, dyt + p * g->f, (size_t)g->f * sizeof(float));
                memset(scratch + p * g->f_pad + g->f, 0,
                       (size_t)(g->f_pad - g->f) * sizeof(float));
            }
            dyt = scratch;
            dys = g->f_pad;
        }
        for (ptrdiff_t unit = unit_lo; unit < unit_hi; unit++) {
            const ptrdiff_t group = unit / cblocks, c0 = (unit - group * cblocks) * mr;
            for (ptrdiff_t f0 = 0, nv; f0 < g->f_pad; f0 += FC_VLEN * nv) {
                nv = FC_FN(nv_max)((g->f_pad - f0) / FC_VLEN);
                FC_BLOCKS_OF_ISA(FC_DW_CASE)
            }
        }
    }
}

#undef FC_DEFINE_BLOCKS
#undef FC_DEFINE_POOL_BLOCKS
#undef FC_POOL_CASE
#undef FC_GATHER_CASE
#undef FC_DW_CASE
