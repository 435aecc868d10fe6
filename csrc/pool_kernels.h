/* Max pooling over NHWC tensors (float32), compiled once per instruction set through
 * simd_isa.h. No include guard, on purpose.
 *
 * The semantics are pool.pyx's (and the reference's): windows are clipped to the image
 * (padding acts as -inf), the FIRST maximum in row-major window order wins ties, a NaN
 * beats any number and the first NaN stays. arg holds the winner's flat position h*W + w
 * inside its image (-1 for a window wholly in the padding, which fastcnn's shapes never
 * make). The vector axis is the channel axis: a window tap is one contiguous run of c
 * floats, so the compares and blends run FC_VLEN channels at a time (the scalar tail
 * handles c % FC_VLEN).
 */

/* The step of the scan for one scalar (FC_FN(wins) is the vector one). */
#define FC_WINS(v, best) (((v) > (best)) | (((v) != (v)) & ((best) == (best))))

/* The window of output index i along an axis, clipped to the image: [*lo, *hi). */
FC_INLINE void FC_FN(clip)(ptrdiff_t i, ptrdiff_t stride, ptrdiff_t pad, ptrdiff_t size,
                           ptrdiff_t limit, ptrdiff_t *lo, ptrdiff_t *hi)
{
    const ptrdiff_t start = i * stride - pad;
    *lo = start > 0 ? start : 0;
    *hi = start + size < limit ? start + size : limit;
}

/* One window (output row r = (n, i), column j; image rows [h0, h1)) of the scan below. */
FC_INLINE void FC_FN(maxpool_window)(const fc_pool *g, ptrdiff_t r, ptrdiff_t n, ptrdiff_t h0,
                                     ptrdiff_t h1, ptrdiff_t j)
{
    const ptrdiff_t c = g->c, cv = c - c % FC_VLEN;
    ptrdiff_t w0, w1;
    FC_FN(clip)(j, g->sw, g->pl, g->pw, g->w, &w0, &w1);
    float *y = g->y + (r * g->wo + j) * c;
    int *arg = g->arg + (r * g->wo + j) * c;
    if (h0 >= h1 || w0 >= w1) {
        for (ptrdiff_t cc = 0; cc < c; cc++) {
            y[cc] = -__builtin_inff();
            arg[cc] = -1;
        }
        return;
    }
    const float *img = g->x + n * g->h * g->w * c;
    const int pos0 = (int)(h0 * g->w + w0);
    /* Seeded with the window's first real tap; every later tap is compared. */
    for (ptrdiff_t cc = 0; cc < cv; cc += FC_VLEN) {
        FC_VEC best = FC_FN(load)(img + pos0 * c + cc);
        FC_IVEC win = (FC_IVEC){0} + pos0;
        for (ptrdiff_t hi = h0; hi < h1; hi++) {
            for (ptrdiff_t wi = (hi == h0 ? w0 + 1 : w0); wi < w1; wi++) {
                const int pos = (int)(hi * g->w + wi);
                const FC_VEC v = FC_FN(load)(img + pos * c + cc);
                const FC_IVEC take = FC_FN(wins)(v, best);
                best = FC_FN(select)(take, v, best);
                win = (win & ~take) | (((FC_IVEC){0} + pos) & take);
            }
        }
        FC_FN(store)(y + cc, best);
        FC_FN(store_int)(arg + cc, win);
    }
    for (ptrdiff_t cc = cv; cc < c; cc++) {
        float best = img[pos0 * c + cc];
        int win = pos0;
        for (ptrdiff_t hi = h0; hi < h1; hi++) {
            for (ptrdiff_t wi = (hi == h0 ? w0 + 1 : w0); wi < w1; wi++) {
                const int pos = (int)(hi * g->w + wi);
                const float v = img[pos * c + cc];
                if (FC_WINS(v, best)) {
                    best = v;
                    win = pos;
                }
            }
        }
        y[cc] = best;
        arg[cc] = win;
    }
}

/* The columns of a row that the unrolled 2x2 path takes: 2x2 windows, stride 2, no
 * padding, whole vectors of channels, the window's two image rows inside the image (0
 * where it does not apply). The rest go through the general loops. On the from-scratch
 * CNN's 64x26x26x8 the loops' bookkeeping per tap cost more than the tap (one vector). */
FC_INLINE ptrdiff_t FC_FN(pool2_columns)(const fc_pool *g, ptrdiff_t h0, ptrdiff_t h1)
{
    if (g->ph != 2 || g->pw != 2 || g->sh != 2 || g->sw != 2 || g->pt != 0 || g->pl != 0
            || g->c % FC_VLEN != 0 || h1 - h0 != 2)
        return 0;
    return g->w / 2 < g->wo ? g->w / 2 : g->wo;
}

/* The scan step of the unrolled path: the same operations, in the same order. */
#define FC_POOL2_TAP(p)                                                                 \
    {                                                                                   \
        const FC_VEC v_ = FC_FN(load)(img + (ptrdiff_t)(p) * c + cc);                   \
        const FC_IVEC take_ = FC_FN(wins)(v_, best);                                    \
        best = FC_FN(select)(take_, v_, best);                                          \
        win = (win & ~take_) | (((FC_IVEC){0} + (p)) & take_);                          \
    }

/* Output rows [r_lo, r_hi) of the flattened (n, i) axis. */
static void FC_FN(maxpool_rows)(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    const ptrdiff_t c = g->c;
    for (ptrdiff_t r = r_lo; r < r_hi; r++) {
        const ptrdiff_t n = r / g->ho, i = r - n * g->ho;
        ptrdiff_t h0, h1;
        FC_FN(clip)(i, g->sh, g->pt, g->ph, g->h, &h0, &h1);
        const ptrdiff_t jn = FC_FN(pool2_columns)(g, h0, h1);
        const float *img = g->x + n * g->h * g->w * c;
        for (ptrdiff_t j = 0; j < jn; j++) {
            const int p00 = (int)(h0 * g->w + 2 * j), p10 = p00 + (int)g->w;
            float *y = g->y + (r * g->wo + j) * c;
            int *arg = g->arg + (r * g->wo + j) * c;
            for (ptrdiff_t cc = 0; cc < c; cc += FC_VLEN) {
                FC_VEC best = FC_FN(load)(img + (ptrdiff_t)p00 * c + cc);
                FC_IVEC win = (FC_IVEC){0} + p00;
                FC_POOL2_TAP(p00 + 1)
                FC_POOL2_TAP(p10)
                FC_POOL2_TAP(p10 + 1)
                FC_FN(store)(y + cc, best);
                FC_FN(store_int)(arg + cc, win);
            }
        }
        for (ptrdiff_t j = jn; j < g->wo; j++)
            FC_FN(maxpool_window)(g, r, n, h0, h1, j);
    }
}

#undef FC_POOL2_TAP

/* The backward of pools whose windows do not overlap (stride >= pool size along both
 * axes): output row r owns the image rows of its windows, and writes every element of
 * them once, dy where the element won and 0 elsewhere (columns between or after windows
 * included), so dx needs no zero fill and no scatter. Image rows outside every window
 * are the caller's to zero. */
static void FC_FN(maxpool_backward_rows)(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    const ptrdiff_t c = g->c, cv = c - c % FC_VLEN;
    for (ptrdiff_t r = r_lo; r < r_hi; r++) {
        const ptrdiff_t n = r / g->ho, i = r - n * g->ho;
        ptrdiff_t h0, h1, w0, w1;
        FC_FN(clip)(i, g->sh, g->pt, g->ph, g->h, &h0, &h1);
        const ptrdiff_t jn = FC_FN(pool2_columns)(g, h0, h1);
        for (ptrdiff_t hi = h0; hi < h1; hi++) {
            float *dx = g->dx + (n * g->h + hi) * g->w * c;
            /* the unrolled 2x2 windows first: columns [0, 2*jn), each written once */
            for (ptrdiff_t j = 0; j < jn; j++) {
                const int pos = (int)(hi * g->w + 2 * j);
                const float *dy = g->dy + (r * g->wo + j) * c;
                const int *arg = g->arg + (r * g->wo + j) * c;
                float *d = dx + 2 * j * c;
                for (ptrdiff_t cc = 0; cc < c; cc += FC_VLEN) {
                    FC_IVEC a;
                    memcpy(&a, arg + cc, sizeof a);
                    const FC_IVEC v = (FC_IVEC)FC_FN(load)(dy + cc);
                    FC_FN(store)(d + cc, (FC_VEC)(v & (a == ((FC_IVEC){0} + pos))));
                    FC_FN(store)(d + c + cc, (FC_VEC)(v & (a == ((FC_IVEC){0} + (pos + 1)))));
                }
            }
            ptrdiff_t done = 2 * jn; /* columns of this dx row written so far */
            for (ptrdiff_t j = jn; j < g->wo; j++) {
                FC_FN(clip)(j, g->sw, g->pl, g->pw, g->w, &w0, &w1);
                const float *dy = g->dy + (r * g->wo + j) * c;
                const int *arg = g->arg + (r * g->wo + j) * c;
                if (w0 > done)
                    memset(dx + done * c, 0, (size_t)((w0 - done) * c) * sizeof(float));
                for (ptrdiff_t wi = w0; wi < w1; wi++) {
                    const int pos = (int)(hi * g->w + wi);
                    float *d = dx + wi * c;
                    for (ptrdiff_t cc = 0; cc < cv; cc += FC_VLEN) {
                        FC_IVEC a;
                        memcpy(&a, arg + cc, sizeof a);
                        const FC_IVEC won = a == ((FC_IVEC){0} + pos);
                        FC_FN(store)(d + cc, (FC_VEC)((FC_IVEC)FC_FN(load)(dy + cc) & won));
                    }
                    for (ptrdiff_t cc = cv; cc < c; cc++)
                        d[cc] = arg[cc] == pos ? dy[cc] : 0.0f;
                }
                done = w1 > done ? w1 : done;
            }
            if (g->w > done)
                memset(dx + done * c, 0, (size_t)((g->w - done) * c) * sizeof(float));
        }
    }
}

#undef FC_WINS

/* Average pooling, forward: each window's mean over its REAL (unpadded) taps, summed from 0
 * in row-major window order and divided by their count: pool.pyx's _avg_row, bitwise
 * (pool.pyx keeps float64), with the sums in registers (pool.pyx's loop, summing through
 * y, took 1.1 ns per input value on 64x28x28x6). A window wholly in the padding is 0. */
static void FC_FN(avgpool_rows)(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    const ptrdiff_t c = g->c, cv = c - c % FC_VLEN;
    for (ptrdiff_t r = r_lo; r < r_hi; r++) {
        const ptrdiff_t n = r / g->ho, i = r - n * g->ho;
        ptrdiff_t h0, h1, w0, w1;
        FC_FN(clip)(i, g->sh, g->pt, g->ph, g->h, &h0, &h1);
        const float *img = g->x + n * g->h * g->w * c;
        for (ptrdiff_t j = 0; j < g->wo; j++) {
            FC_FN(clip)(j, g->sw, g->pl, g->pw, g->w, &w0, &w1);
            float *y = g->y + (r * g->wo + j) * c;
            if (h0 >= h1 || w0 >= w1) {
                memset(y, 0, (size_t)c * sizeof(float));
                continue;
            }
            const float count = (float)((h1 - h0) * (w1 - w0));
            for (ptrdiff_t cc = 0; cc < cv; cc += FC_VLEN) {
                FC_VEC acc = (FC_VEC){0};
                for (ptrdiff_t hi = h0; hi < h1; hi++)
                    for (ptrdiff_t wi = w0; wi < w1; wi++)
                        acc += FC_FN(load)(img + (hi * g->w + wi) * c + cc);
                FC_FN(store)(y + cc, acc / count);
            }
            for (ptrdiff_t cc = cv; cc < c; cc++) {
                float acc = 0.0f;
                for (ptrdiff_t hi = h0; hi < h1; hi++)
                    for (ptrdiff_t wi = w0; wi < w1; wi++)
                        acc += img[(hi * g->w + wi) * c + cc];
                y[cc] = acc / count;
            }
        }
    }
}

/* Average pooling, backward, for windows that do not overlap (stride >= pool size along
 * both axes): output row r owns the image rows of its windows and writes every element of
 * them once, dy / count inside a window and 0 elsewhere (pool.pyx adds dy / count into a
 * zeroed dx: the same values). Image rows outside every window are the caller's to zero. */
static void FC_FN(avgpool_backward_rows)(const fc_pool *g, ptrdiff_t r_lo, ptrdiff_t r_hi)
{
    const ptrdiff_t c = g->c, cv = c - c % FC_VLEN;
    for (ptrdiff_t r = r_lo; r < r_hi; r++) {
        const ptrdiff_t n = r / g->ho, i = r - n * g->ho;
        ptrdiff_t h0, h1, w0, w1;
        FC_FN(clip)(i, g->sh, g->pt, g->ph, g->h, &h0, &h1);
        for (ptrdiff_t hi = h0; hi < h1; hi++) {
            float *dx = g->dx + (n * g->h + hi) * g->w * c;
            ptrdiff_t done = 0; /* columns of this dx row written so far */
            for (ptrdiff_t j = 0; j < g->wo; j++) {
                FC_FN(clip)(j, g->sw, g->pl, g->pw, g->w, &w0, &w1);
                if (w0 > done)
                    memset(dx + done * c, 0, (size_t)((w0 - done) * c) * sizeof(float));
                if (w0 < w1) {
                    /* one quotient per window column block, stored to each of its taps */
                    const float count = (float)((h1 - h0) * (w1 - w0));
                    const float *dy = g->dy + (r * g->wo + j) * c;
                    float *d = dx + w0 * c;
                    for (ptrdiff_t cc = 0; cc < cv; cc += FC_VLEN) {
                        const FC_VEC q = FC_FN(load)(dy + cc) / count;
                        for (ptrdiff_t wi = 0; wi < w1 - w0; wi++)
                            FC_FN(store)(d + wi * c + cc, q);
                    }
                    for (ptrdiff_t cc = cv; cc < c; cc++) {
                        const float q = dy[cc] / count;
                        for (ptrdiff_t wi = 0; wi < w1 - w0; wi++)
                            d[wi * c + cc] = q;
                    }
                }
                done = w1 > done ? w1 : done;
            }
            if (g->w > done)
                memset(dx + done * c, 0, (size_t)((g->w - done) * c) * sizeof(float));
        }
    }
}
