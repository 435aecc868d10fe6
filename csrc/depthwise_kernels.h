/* The depthwise convolution kernels (design: depthwise.h), included once per element type
 * and instruction set with
 *
 *   DW_T       float or double,
 *   DW_SFX     the suffix of every function name (f32_avx512, f64_generic, ...),
 *   DW_VBYTES  bytes per vector register (16, 32 or 64),
 *
 * which are undefined at the end for the next inclusion. No include guard, on purpose.
 */

#define DW_CAT_(a, b) a##_##b
#define DW_CAT(a, b) DW_CAT_(a, b)
#define DW_FN(name) DW_CAT(dwc_##name, DW_SFX)
#define DW_VL ((ptrdiff_t)(DW_VBYTES / sizeof(DW_T)))

typedef DW_T DW_FN(vec) __attribute__((vector_size(DW_VBYTES)));
#define DW_VEC DW_FN(vec)

DWC_INLINE DW_VEC DW_FN(load)(const DW_T *p)
{
    DW_VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

DWC_INLINE void DW_FN(store)(DW_T *p, DW_VEC v) { memcpy(p, &v, sizeof v); }

/* Masked lanes (bit i: lane i). load_m: the lanes in m, the others zero (not read, so a
 * lane past an array's end is safe); store_m: the lanes in m stored, the others untouched
 * (AVX-512: one masked load / store). */
#define DW_ALL ((1u << DW_VL) - 1u)

DWC_INLINE DW_VEC DW_FN(load_m)(const DW_T *p, unsigned m)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    if (sizeof(DW_T) == 4)
        return (DW_VEC)_mm512_maskz_loadu_ps((__mmask16)m, p);
    return (DW_VEC)_mm512_maskz_loadu_pd((__mmask8)m, p);
#else
    DW_VEC v = {0};
    for (int i = 0; i < (int)DW_VL; i++)
        if (m >> i & 1)
            v[i] = p[i];
    return v;
#endif
}

DWC_INLINE void DW_FN(store_m)(DW_T *p, DW_VEC v, unsigned m)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    if (sizeof(DW_T) == 4)
        _mm512_mask_storeu_ps(p, (__mmask16)m, (__m512)v);
    else
        _mm512_mask_storeu_pd(p, (__mmask8)m, (__m512d)v);
#else
    for (int i = 0; i < (int)DW_VL; i++)
        if (m >> i & 1)
            p[i] = v[i];
#endif
}

/* The first k < DW_VL lanes (the ragged end of a row of channels), the others zero. */
DWC_INLINE DW_VEC DW_FN(load_part)(const DW_T *p, ptrdiff_t k)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    return DW_FN(load_m)(p, (1u << k) - 1u);
#else
    DW_VEC v = {0};
    memcpy(&v, p, (size_t)k * sizeof(DW_T));
    return v;
#endif
}

DWC_INLINE void DW_FN(store_part)(DW_T *p, DW_VEC v, ptrdiff_t k)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    DW_FN(store_m)(p, v, (1u << k) - 1u);
#else
    memcpy(p, &v, (size_t)k * sizeof(DW_T));
#endif
}

/* For a WRAPPED channel chunk (k3_wrap): fma_m: acc + x * w in the lanes of m (one
 * rounding, as the contracted acc += x * w), acc elsewhere; add_m likewise; load_wrap:
 * lanes of lo from p + cm, the others from p (a wrapped chunk's weights: the last channels
 * of one pixel, then the first of the next). */
DWC_INLINE DW_VEC DW_FN(fma_m)(DW_VEC acc, DW_VEC x, DW_VEC w, unsigned m)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    if (sizeof(DW_T) == 4)
        return (DW_VEC)_mm512_mask3_fmadd_ps((__m512)x, (__m512)w, (__m512)acc, (__mmask16)m);
    return (DW_VEC)_mm512_mask3_fmadd_pd((__m512d)x, (__m512d)w, (__m512d)acc, (__mmask8)m);
#else
    DW_VEC r = acc + x * w;
    for (int i = 0; i < (int)DW_VL; i++)
        if (!(m >> i & 1))
            r[i] = acc[i];
    return r;
#endif
}

DWC_INLINE DW_VEC DW_FN(add_m)(DW_VEC acc, DW_VEC x, unsigned m)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    if (sizeof(DW_T) == 4)
        return (DW_VEC)_mm512_mask_add_ps((__m512)acc, (__mmask16)m, (__m512)acc, (__m512)x);
    return (DW_VEC)_mm512_mask_add_pd((__m512d)acc, (__mmask8)m, (__m512d)acc, (__m512d)x);
#else
    DW_VEC r = acc + x;
    for (int i = 0; i < (int)DW_VL; i++)
        if (!(m >> i & 1))
            r[i] = acc[i];
    return r;
#endif
}

DWC_INLINE DW_VEC DW_FN(load_wrap)(const DW_T *p, ptrdiff_t cm, unsigned lo)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    const DW_VEC v = DW_FN(load_m)(p + cm, lo);
    if (sizeof(DW_T) == 4)
        return (DW_VEC)_mm512_mask_loadu_ps((__m512)v, (__mmask16)(DW_ALL & ~lo), p);
    return (DW_VEC)_mm512_mask_loadu_pd((__m512d)v, (__mmask8)(DW_ALL & ~lo), p);
#else
    DW_VEC v;
    for (int i = 0; i < (int)DW_VL; i++)
        v[i] = lo >> i & 1 ? p[cm + i] : p[i];
    return v;
#endif
}

/* A row job's taps: out[q] (+)= sum_k row[k][(q*ssx + d[k])*cm ..] * wt[k][..]. */
typedef struct {
    int n;        /* taps listed */
    int passes;   /* row passes already stored (the next one adds to them) */
    const DW_T *row[DWC_MAX_TAPS];
    ptrdiff_t d[DWC_MAX_TAPS];
    const DW_T *wt[DWC_MAX_TAPS];
} DW_FN(taps);

/* Pixels per interior block: accumulators + the weight vector in registers (AVX-512 has
 * 32 vector registers, the others 16). */
#define DW_NP (DW_VBYTES == 64 ? 8 : 4)

/* NP output pixels q .. q+NP-1, channels [o, o + lanes) (lanes == DW_VL: whole vectors),
 * from the taps' first-pixel pointers pk[k] (interior pixels: every tap inside its row).
 * ACC: add to out (a later pass of a long tap list) instead of starting from the bias. */
DWC_INLINE void DW_FN(pixels)(const DW_FN(taps) *t, const DW_T *const *pk, ptrdiff_t step,
                              const DW_T *bias, DW_T *out, ptrdiff_t ostep, ptrdiff_t o,
                              ptrdiff_t lanes, const int NP, const int ACC)
{
    const int full = lanes == DW_VL;
    DW_VEC acc[8];
    for (int i = 0; i < NP; i++) {
        DW_T *dst = out + i * ostep + o;
        if (ACC)
            acc[i] = full ? DW_FN(load)(dst) : DW_FN(load_part)(dst, lanes);
        else if (bias)
            acc[i] = full ? DW_FN(load)(bias + o) : DW_FN(load_part)(bias + o, lanes);
        else
            acc[i] = (DW_VEC){0};
    }
    const int nt = t->n;
    for (int k = 0; k < nt; k++) {
        const DW_VEC wv = full ? DW_FN(load)(t->wt[k] + o) : DW_FN(load_part)(t->wt[k] + o, lanes);
        const DW_T *p = pk[k] + o;
        for (int i = 0; i < NP; i++)
            acc[i] += (full ? DW_FN(load)(p + i * step) : DW_FN(load_part)(p + i * step, lanes)) * wv;
    }
    for (int i = 0; i < NP; i++) {
        DW_T *dst = out + i * ostep + o;
        if (full)
            DW_FN(store)(dst, acc[i]);
        else
            DW_FN(store_part)(dst, acc[i], lanes);
    }
}

/* Every channel of NP interior pixels from q. */
DWC_INLINE void DW_FN(pixels_all)(const DW_FN(taps) *t, ptrdiff_t ssx, ptrdiff_t cm,
                                  const DW_T *bias, DW_T *out, ptrdiff_t osx, ptrdiff_t q,
                                  const int NP, const int ACC)
{
    const DW_T *pk[DWC_MAX_TAPS];
    for (int k = 0; k < t->n; k++)
        pk[k] = t->row[k] + (q * ssx + t->d[k]) * cm;
    DW_T *dst = out + q * osx * cm;
    const ptrdiff_t step = ssx * cm, ostep = osx * cm;
    ptrdiff_t o = 0;
    for (; o + DW_VL <= cm; o += DW_VL)
        DW_FN(pixels)(t, pk, step, bias, dst, ostep, o, DW_VL, NP, ACC);
    if (o < cm)
        DW_FN(pixels)(t, pk, step, bias, dst, ostep, o, cm - o, NP, ACC);
}

/* One border pixel q: the taps whose column lies inside [0, ws) only. */
static void DW_FN(border_pixel)(const DW_FN(taps) *t, ptrdiff_t ws, ptrdiff_t ssx,
                                ptrdiff_t cm, const DW_T *bias, DW_T *out, ptrdiff_t osx,
                                ptrdiff_t q, int acc_in)
{
    DW_FN(taps) in;
    in.n = 0;
    in.passes = 0;
    for (int k = 0; k < t->n; k++) {
        const ptrdiff_t col = q * ssx + t->d[k];
        if (col >= 0 && col < ws) {
            in.row[in.n] = t->row[k];
            in.d[in.n] = t->d[k];
            in.wt[in.n] = t->wt[k];
            in.n++;
        }
    }
    if (acc_in)
        DW_FN(pixels_all)(&in, ssx, cm, bias, out, osx, q, 1, 1);
    else
        DW_FN(pixels_all)(&in, ssx, cm, bias, out, osx, q, 1, 0);
}

/* One pass of the row kernel over output pixels [0, nq) (out: pixel 0, pixels osx apart). */
static void DW_FN(row_pass)(const DW_FN(taps) *t, ptrdiff_t ws, ptrdiff_t ssx, ptrdiff_t cm,
                            const DW_T *bias, DW_T *out, ptrdiff_t osx, ptrdiff_t nq, int acc_in,
                            const DW_T *pf, ptrdiff_t pf_len)
{
    /* The interior [q_lo, q_hi): every tap's column inside [0, ws). */
    ptrdiff_t dmin = 0, dmax = 0;
    for (int k = 0; k < t->n; k++) {
        if (k == 0 || t->d[k] < dmin)
            dmin = t->d[k];
        if (k == 0 || t->d[k] > dmax)
            dmax = t->d[k];
    }
    ptrdiff_t q_lo = dmin >= 0 ? 0 : (-dmin + ssx - 1) / ssx;
    ptrdiff_t q_hi = ws - 1 - dmax < 0 ? 0 : (ws - 1 - dmax) / ssx + 1;
    if (q_hi > nq)
        q_hi = nq;
    if (q_lo > nq)
        q_lo = nq;
    if (q_hi < q_lo)
        q_hi = q_lo;
    for (ptrdiff_t q = 0; q < q_lo; q++)
        DW_FN(border_pixel)(t, ws, ssx, cm, bias, out, osx, q, acc_in);
    ptrdiff_t q = q_lo;
    /* The next row job's new source rows come from memory: their lines are prefetched a
     * block at a time, as far along as this row has got (pf_len elements in nq steps). */
    const ptrdiff_t pf_step = pf ? (pf_len + nq - 1) / nq * DW_NP : 0;
    const char *pf_at = (const char *)pf, *pf_end = pf ? (const char *)(pf + pf_len) : NULL;
    if (acc_in) {
        for (; q + DW_NP <= q_hi; q += DW_NP)
            DW_FN(pixels_all)(t, ssx, cm, bias, out, osx, q, DW_NP, 1);
        if (DW_NP > 4 && q + 4 <= q_hi) {
            DW_FN(pixels_all)(t, ssx, cm, bias, out, osx, q, 4, 1);
            q += 4;
        }
        for (; q < q_hi; q++)
            DW_FN(pixels_all)(t, ssx, cm, bias, out, osx, q, 1, 1);
    } else {
        for (; q + DW_NP <= q_hi; q += DW_NP) {
            if (pf_at) {
                const char *stop = pf_at + pf_step * (ptrdiff_t)sizeof(DW_T);
                if (stop > pf_end)
                    stop = pf_end;
                for (; pf_at < stop; pf_at += 64)
                    __builtin_prefetch(pf_at, 0, 2);
            }
            DW_FN(pixels_all)(t, ssx, cm, bias, out, osx, q, DW_NP, 0);
        }
        if (DW_NP > 4 && q + 4 <= q_hi) {
            DW_FN(pixels_all)(t, ssx, cm, bias, out, osx, q, 4, 0);
            q += 4;
        }
        for (; q < q_hi; q++)
            DW_FN(pixels_all)(t, ssx, cm, bias, out, osx, q, 1, 0);
    }
    for (q = q_hi; q < nq; q++)
        DW_FN(border_pixel)(t, ws, ssx, cm, bias, out, osx, q, acc_in);
}

/* The row job's geometry, shared by the passes of one row. */
typedef struct {
    ptrdiff_t ws, ssx, cm, osx, nq;
    const DW_T *bias;
    DW_T *out;
    const DW_T *pf; /* the source rows the NEXT row job reads first (or NULL): prefetched */
    ptrdiff_t pf_len; /* their length in elements (consecutive rows of one image) */
} DW_FN(rowgeo);

/* Runs the listed taps (a full list mid-row, or the last ones) and empties the list. */
static void DW_FN(flush)(DW_FN(taps) *t, const DW_FN(rowgeo) *r)
{
    DW_FN(row_pass)(t, r->ws, r->ssx, r->cm, t->passes ? NULL : r->bias, r->out, r->osx,
                    r->nq, t->passes > 0, t->passes ? NULL : r->pf, r->pf_len);
    t->passes++;
    t->n = 0;
}

DWC_INLINE void DW_FN(add_tap)(DW_FN(taps) *t, const DW_FN(rowgeo) *r, const DW_T *row,
                               ptrdiff_t d, const DW_T *wt)
{
    if (t->n == DWC_MAX_TAPS)
        DW_FN(flush)(t, r);
    t->row[t->n] = row;
    t->d[t->n] = d;
    t->wt[t->n] = wt;
    t->n++;
}

/* Ends a row job: runs what is left (or writes bias / zeros when no tap was listed). */
DWC_INLINE void DW_FN(finish)(DW_FN(taps) *t, const DW_FN(rowgeo) *r)
{
    if (t->n > 0 || t->passes == 0)
        DW_FN(flush)(t, r);
}

/* x row (n, yy) with every channel repeated m times: (w, c*m) into buf. */
DWC_INLINE void DW_FN(expand_row)(const dwc_job *g, ptrdiff_t n, ptrdiff_t yy, DW_T *buf)
{
    const DW_T *src = (const DW_T *)g->x + (n * g->h + yy) * g->w * g->c;
    const ptrdiff_t c = g->c, m = g->m;
    for (ptrdiff_t px = 0; px < g->w; px++)
        for (ptrdiff_t ch = 0; ch < c; ch++) {
            const DW_T v = src[px * c + ch];
            for (ptrdiff_t k = 0; k < m; k++)
                buf[(px * c + ch) * m + k] = v;
        }
}

/* --- 3x3 kernels, depth multiplier 1, column stride 1 or 2 (MobileNet's depthwise layers) --
 * Rows are taken in BANDS sized to stay in L2 (their source rows and outputs); a band runs
 * one channel vector at a time over all its rows, with the 9 weight vectors (and the bias)
 * in registers for the whole band and, along each row, a sliding window of the source
 * columns in registers: each source vector is loaded from L2 once per row that reads it
 * (the other rows of the band find it in L1), so an output vector costs one load per
 * source row (stride 1), 9 FMAs and a store. Taps are added in the general row kernel's
 * order (kernel rows, then columns, ascending, from the bias), so the forward is bitwise
 * the same as that kernel's. The source rows the next band reads first are prefetched
 * into L2 a slice per (vector, row) step, where the source comes from memory
 * (depthwise.h's dwc_k3_prefetch).
 *
 * MASK: which of the 3 kernel rows fall inside the image (bit a); SW: the column stride. */

/* One pass: output = bias + sum of taps (a, b) over source rows src[a] (channel o already
 * added) at column q*sw - pl + b. */
typedef struct {
    const DW_T *src;   /* (n, hs, ws, cm) */
    DW_T *out;         /* (n, ho, wo, cm) */
    const DW_T *bias;  /* (cm,) or NULL */
    const DW_T *wk[9]; /* tap (a, b): its weight row (cm,) */
    ptrdiff_t hs, ws, cm, ho, wo, sh, sw, pt, pl;
    int nt;            /* a large output: stream it past the caches (bands) */
    int pf;            /* a large source: prefetch the next band (dwc_k3_prefetch) */
    int act;           /* DWC_ACT_*: applied to each band (row) of the output once stored */
} DW_FN(k3geo);

/* Applies act (DWC_ACT_*) to p[0 .. n) in place: v <= 0 -> 0, then for ReLU6 v > 6 -> 6;
 * a NaN stays NaN (the bits of elementwise.pyx's relu and simd.h's FC_ACT_*). */
static void DW_FN(activate)(DW_T *p, ptrdiff_t n, int act)
{
    if (act == DWC_ACT_RELU) {
        for (ptrdiff_t i = 0; i < n; i++)
            p[i] = p[i] <= 0 ? (DW_T)0 : p[i];
    } else if (act == DWC_ACT_RELU6) {
        for (ptrdiff_t i = 0; i < n; i++)
            p[i] = p[i] <= 0 ? (DW_T)0 : p[i] > 6 ? (DW_T)6 : p[i];
    }
}

/* Output columns [*q_lo, *q_hi) of [0, nq) whose taps q*sw - pl + {0, 1, 2} lie inside
 * [0, ws). */
DWC_INLINE void DW_FN(k3_interior)(ptrdiff_t ws, ptrdiff_t nq, ptrdiff_t pl, ptrdiff_t sw,
                                   ptrdiff_t *q_lo, ptrdiff_t *q_hi)
{
    ptrdiff_t lo = pl <= 0 ? 0 : (pl + sw - 1) / sw;
    ptrdiff_t hi = ws - 3 + pl >= 0 ? (ws - 3 + pl) / sw + 1 : 0;
    lo = lo > nq ? nq : lo;
    hi = hi > nq ? nq : hi;
    *q_lo = lo;
    *q_hi = hi < lo ? lo : hi;
}

/* Lanes of the first channel chunk: with a pixel of >= min_vec whole vectors whose two
 * arrays sit at the same offset from a 64-byte line (NumPy's large arrays: 16 bytes past
 * one), a short first chunk makes every later vector load and store line-aligned (one L1
 * access instead of two; 8x14x14x384 forward 0.30 -> 0.25 ms in the C harness; min_vec:
 * depthwise.h's dwc_k3_realign_vectors). 0: none. */
DWC_INLINE ptrdiff_t DW_FN(k3_head)(const void *a, const void *b, ptrdiff_t cm,
                                    ptrdiff_t min_vec)
{
    const uintptr_t ra = (uintptr_t)a % 64, rb = (uintptr_t)b % 64;
    if (DW_VBYTES != 64 || cm < min_vec * DW_VL || (cm * (ptrdiff_t)sizeof(DW_T)) % 64 != 0
        || ra != rb || ra % sizeof(DW_T) != 0)
        return 0;
    return ra ? (ptrdiff_t)((64 - ra) / sizeof(DW_T)) : 0;
}

/* WRAPPED chunks (column stride 1, source and output at one pitch of whole lines a
 * pixel): with a head, the tail of pixel q - 1 and the head of pixel q are ONE line-aligned
 * vector at position q (lanes below DW_VL - head, the mask k3_wrap returns, are pixel
 * q - 1's), so a pass over the row's wo + 1 positions replaces the head's and the tail's
 * passes over its wo pixels, each with short, line-straddling vectors: the chunks are
 * (head - DW_VL, DW_VL) wrapped, then the whole vectors. Interior positions (both pixels'
 * taps inside the row) run the plain code at channel offset head - DW_VL; the others
 * give each lane group its own taps (k3_wrap_pixel), in the same order: the same bits. */
DWC_INLINE unsigned DW_FN(k3_wrap)(ptrdiff_t head, ptrdiff_t sw)
{
    return head && sw == 1 ? (1u << (DW_VL - head)) - 1u : 0u;
}

/* The channel chunks (o, lanes): the head (if any), whole vectors, the tail; with WLO
 * (k3_wrap) the tail and the head as one wrapped chunk at o = head - DW_VL first. */
#define DW_CHUNKS_W(o, lanes, head, wlo, cm)                                                  \
    for (ptrdiff_t o = (wlo) ? (head) - DW_VL : 0,                                            \
                   lanes = (wlo) ? DW_VL : (head) ? (head) : ((cm) < DW_VL ? (cm) : DW_VL);   \
         o < (cm) - ((wlo) ? DW_VL - (head) : 0);                                             \
         o += lanes, lanes = (cm) - o < DW_VL ? (cm) - o : DW_VL)

/* A wrapped chunk's lanes whose pixel has its source column inside [0, ws), the vector at
 * column col (the lanes of WLO: the pixel before, column col - 1). */
DWC_INLINE unsigned DW_FN(wrap_cols)(ptrdiff_t col, ptrdiff_t ws, unsigned wlo)
{
    return (col >= 1 && col <= ws ? wlo : 0u) | (col >= 0 && col < ws ? DW_ALL & ~wlo : 0u);
}

/* A wrapped chunk's lanes at position q that hold one of the row's nq pixels. */
DWC_INLINE unsigned DW_FN(wrap_pixels)(ptrdiff_t q, ptrdiff_t nq, unsigned wlo)
{
    return (q >= 1 && q <= nq ? wlo : 0u) | (q >= 0 && q < nq ? DW_ALL & ~wlo : 0u);
}

/* A wrapped chunk's position q of one output row (s[a], d at the chunk's channel offset):
 * lanes WLO pixel q - 1's (none at q = 0), the others pixel q's (none at q = nq); each
 * group's taps inside the row in k3_fspan's order, as masked multiply-adds (the other
 * lanes untouched). Column stride 1. */
DWC_INLINE void DW_FN(k3_wrap_pixel)(const DW_T *const *s, const DW_VEC *w, DW_VEC bv,
                                     DW_T *d, ptrdiff_t cm, ptrdiff_t ws, ptrdiff_t nq,
                                     ptrdiff_t pl, ptrdiff_t q, unsigned wlo, const int MASK)
{
    const unsigned here = DW_FN(wrap_pixels)(q, nq, wlo);
    DW_VEC acc = bv;
    for (int a = 0; a < 3; a++) {
        if (!(MASK >> a & 1))
            continue;
        for (int b = 0; b < 3; b++) {
            const ptrdiff_t col = q - pl + b;   /* pixel q's; pixel q - 1's is col - 1 */
            const unsigned m = DW_FN(wrap_cols)(col, ws, wlo) & here;
            if (m)
                acc = DW_FN(fma_m)(acc, DW_FN(load_m)(s[a] + col * cm, m), w[3 * a + b], m);
        }
    }
    DW_FN(store_m)(d + q * cm, acc, here);
}

/* Rows per band: its source rows and output rows take about 384 KiB. */
DWC_INLINE ptrdiff_t DW_FN(k3_band_rows)(ptrdiff_t sh, ptrdiff_t ws, ptrdiff_t wo, ptrdiff_t cm)
{
    const ptrdiff_t per_row = (sh * ws + wo) * cm * (ptrdiff_t)sizeof(DW_T);
    ptrdiff_t rows = per_row > 0 ? (ptrdiff_t)(384 * 1024) / per_row : 64;
    return rows < 2 ? 2 : rows > 64 ? 64 : rows;
}

#ifndef DW_K3_PD
#define DW_K3_PD 4
#endif
#define DW_LD(p) (full ? DW_FN(load)(p) : DW_FN(load_part)((p), lanes))

/* A whole-vector store to a 64-byte aligned p, past the caches when nt (AVX-512). */
DWC_INLINE void DW_FN(store_nt)(DW_T *p, DW_VEC v, int nt)
{
#if DW_VBYTES == 64 && DWC_X86_INTRINSICS
    if (nt) {
        if (sizeof(DW_T) == 4)
            _mm512_stream_ps((float *)p, (__m512)v);
        else
            _mm512_stream_pd((double *)p, (__m512d)v);
        return;
    }
#endif
    (void)nt;
    DW_FN(store)(p, v);
}

/* One output row's channel vector: s[a] = source row a (+ o) for a in MASK. */
DWC_INLINE void DW_FN(k3_fspan)(const DW_T *const *s, const DW_VEC *w, DW_VEC bv, DW_T *d,
                                ptrdiff_t cm, ptrdiff_t ws, ptrdiff_t nq, ptrdiff_t q_lo,
                                ptrdiff_t q_hi, ptrdiff_t pl, ptrdiff_t lanes, int nt,
                                unsigned wlo, const int MASK, const int SW, const int INNER)
{
    const int full = lanes == DW_VL;
    if (SW == 1 && wlo) {
        /* A wrapped chunk: positions 0 .. nq, the interior ones those whose two pixels are
         * inside (from q_lo + 1). */
        const ptrdiff_t qa = q_lo + 1, qb = q_hi > qa ? q_hi : qa;
        for (ptrdiff_t q = 0; q <= nq; q++) {
            if (q == qa)
                q = qb;
            if (q > nq)
                break;
            DW_FN(k3_wrap_pixel)(s, w, bv, d, cm, ws, nq, pl, q, wlo, MASK);
        }
        q_lo = qa;
    } else {
        /* Border columns: each tap inside the row on its own. */
        for (ptrdiff_t q = 0; q < nq; q++) {
            if (q == q_lo)
                q = q_hi;
            if (q >= nq)
                break;
            DW_VEC acc = bv;
            for (int a = 0; a < 3; a++) {
                if (!(MASK >> a & 1))
                    continue;
                for (int b = 0; b < 3; b++) {
                    const ptrdiff_t col = q * SW - pl + b;
                    if (col >= 0 && col < ws)
                        acc += DW_LD(s[a] + col * cm) * w[3 * a + b];
                }
            }
            if (full)
                DW_FN(store)(d + q * cm, acc);
            else
                DW_FN(store_part)(d + q * cm, acc, lanes);
        }
    }
    if (!INNER || q_lo >= q_hi)
        return;
    DW_VEC x0[3], x1[3], x2[3];
    const DW_T *p[3];
    for (int a = 0; a < 3; a++) {
        if (!(MASK >> a & 1))
            continue;
        p[a] = s[a] + (q_lo * SW - pl) * cm;
        x0[a] = DW_LD(p[a]);
        if (SW == 1)
            x1[a] = DW_LD(p[a] + cm);
    }
    DW_T *dp = d + q_lo * cm;
    for (ptrdiff_t q = q_lo; q < q_hi; q++) {
        DW_VEC acc = bv;
        for (int a = 0; a < 3; a++) {
            if (!(MASK >> a & 1))
                continue;
            __builtin_prefetch(p[a] + (2 + DW_K3_PD * SW) * cm, 0, 3);
            if (SW != 1)
                x1[a] = DW_LD(p[a] + cm);
            x2[a] = DW_LD(p[a] + 2 * cm);
            acc += x0[a] * w[3 * a];
            acc += x1[a] * w[3 * a + 1];
            acc += x2[a] * w[3 * a + 2];
        }
        if (full)
            DW_FN(store_nt)(dp, acc, nt);
        else
            DW_FN(store_part)(dp, acc, lanes);
        for (int a = 0; a < 3; a++) {
            if (!(MASK >> a & 1))
                continue;
            if (SW == 1) {
                x0[a] = x1[a];
                x1[a] = x2[a];
            } else {
                x0[a] = x2[a];
            }
            p[a] += SW * cm;
        }
        dp += cm;
    }
}

/* Two output rows' border pixel at OFF from the pair step's window: taps b in [B0, B1) (the
 * others fall outside the row), tap b's source vectors in Vb (row 0's kernel row a at
 * Vb[a], row 1's at Vb[a + SH]); k3_fspan's tap order. */
#define DW_K3_PAIR_PIXEL(V0, V1, V2, B0, B1, OFF)                                           \
    {                                                                                       \
        DW_VEC acc0 = bv, acc1 = bv;                                                        \
        for (int a = 0; a < 3; a++)                                                         \
            for (int b = (B0); b < (B1); b++) {                                             \
                const DW_VEC *xs = b == 0 ? (V0) : b == 1 ? (V1) : (V2);                    \
                acc0 += xs[a] * w[3 * a + b];                                               \
                acc1 += xs[a + SH] * w[3 * a + b];                                          \
            }                                                                               \
        if (full) {                                                                         \
            DW_FN(store)(d0 + (OFF), acc0);                                                 \
            DW_FN(store)(d1 + (OFF), acc1);                                                 \
        } else {                                                                            \
            DW_FN(store_part)(d0 + (OFF), acc0, lanes);                                     \
            DW_FN(store_part)(d1 + (OFF), acc1, lanes);                                     \
        }                                                                                   \
    }

/* A wrapped chunk's position at OFF in two output rows (k3_fpair's peel): tap b's source
 * vectors in Vb, its lanes in Mb (DW_ALL: all; a masked multiply-add otherwise, the other
 * lanes untouched), the lanes SM stored. */
#define DW_K3_WRAP_PIXEL(V0, V1, V2, M0, M1, M2, SM, OFF)                                   \
    {                                                                                       \
        DW_VEC acc0 = bv, acc1 = bv;                                                        \
        for (int a = 0; a < 3; a++)                                                         \
            for (int b = 0; b < 3; b++) {                                                   \
                const DW_VEC *xs = b == 0 ? (V0) : b == 1 ? (V1) : (V2);                    \
                const unsigned m = b == 0 ? (M0) : b == 1 ? (M1) : (M2);                    \
                if (m == DW_ALL) {                                                          \
                    acc0 += xs[a] * w[3 * a + b];                                           \
                    acc1 += xs[a + SH] * w[3 * a + b];                                      \
                } else if (m) {                                                             \
                    acc0 = DW_FN(fma_m)(acc0, xs[a], w[3 * a + b], m);                      \
                    acc1 = DW_FN(fma_m)(acc1, xs[a + SH], w[3 * a + b], m);                 \
                }                                                                           \
            }                                                                               \
        if ((SM) == DW_ALL) {                                                               \
            DW_FN(store)(d0 + (OFF), acc0);                                                 \
            DW_FN(store)(d1 + (OFF), acc1);                                                 \
        } else {                                                                            \
            DW_FN(store_m)(d0 + (OFF), acc0, (SM));                                         \
            DW_FN(store_m)(d1 + (OFF), acc1, (SM));                                         \
        }                                                                                   \
    }

/* Two output rows' interior at once (both with all 3 kernel rows inside): source rows
 * s[0 .. SH+2], output row 0 reads s[0..2], row 1 s[SH .. SH+2]; each source vector is
 * loaded once for both. Same tap order as k3_fspan. PEEL (column stride 1, 'same' pads of
 * 1: q_lo 1, q_hi the last pixel): the two border pixels from the window too. */
DWC_INLINE void DW_FN(k3_fpair)(const DW_T *const *s, const DW_VEC *w, DW_VEC bv, DW_T *d0,
                                DW_T *d1, ptrdiff_t cm, ptrdiff_t q_lo, ptrdiff_t q_hi,
                                ptrdiff_t pl, ptrdiff_t lanes, int nt, int peel, unsigned wlo,
                                const int SH, const int SW)
{
    const int full = lanes == DW_VL;
    const int NRW = SH + 3;
    const unsigned whi = DW_ALL & ~wlo;
    DW_VEC x0[5], x1[5], x2[5], xe[5] = {{0}};
    const DW_T *p[5];
    /* A wrapped chunk (peel: positions 0 .. q_hi + 1, the row's every pixel): positions 0
     * and 1 read column 0's vector, whose lanes below the head are the pixel before the
     * row (not loaded), positions q_hi and q_hi + 1 column q_hi + 1's, whose others are
     * past the row; the window runs from position 2. */
    if (SW == 1 && peel && wlo) {
        for (int a = 0; a < NRW; a++)
            xe[a] = DW_FN(load_m)(s[a], whi);
        q_lo++;
    }
    for (int a = 0; a < NRW; a++) {
        p[a] = s[a] + (q_lo * SW - pl) * cm;
        x0[a] = DW_LD(p[a]);
        if (SW == 1)
            x1[a] = DW_LD(p[a] + cm);
    }
    ptrdiff_t off = q_lo * cm;
    if (SW == 1 && peel && wlo) {   /* columns 0 = xe, 1 = x0, 2 = x1 */
        DW_K3_WRAP_PIXEL(xe, xe, x0, 0u, DW_ALL, DW_ALL, whi, off - 2 * cm)
        DW_K3_WRAP_PIXEL(xe, x0, x1, whi, DW_ALL, DW_ALL, DW_ALL, off - cm)
    } else if (SW == 1 && peel) {   /* pixel q_lo - 1 = 0: columns -1 (outside), 0 = x0, 1 = x1 */
        DW_K3_PAIR_PIXEL(x0, x0, x1, 1, 3, off - cm)
    }
    for (ptrdiff_t q = q_lo; q < q_hi; q++) {
        for (int a = 0; a < NRW; a++) {
            __builtin_prefetch(p[a] + (2 + DW_K3_PD * SW) * cm, 0, 3);
            if (SW != 1)
                x1[a] = DW_LD(p[a] + cm);
            x2[a] = DW_LD(p[a] + 2 * cm);
        }
        DW_VEC acc0 = bv, acc1 = bv;
        for (int a = 0; a < 3; a++) {
            acc0 += x0[a] * w[3 * a];
            acc0 += x1[a] * w[3 * a + 1];
            acc0 += x2[a] * w[3 * a + 2];
            acc1 += x0[a + SH] * w[3 * a];
            acc1 += x1[a + SH] * w[3 * a + 1];
            acc1 += x2[a + SH] * w[3 * a + 2];
        }
        if (full) {
            DW_FN(store_nt)(d0 + off, acc0, nt);
            DW_FN(store_nt)(d1 + off, acc1, nt);
        } else {
            DW_FN(store_part)(d0 + off, acc0, lanes);
            DW_FN(store_part)(d1 + off, acc1, lanes);
        }
        for (int a = 0; a < NRW; a++) {
            if (SW == 1) {
                x0[a] = x1[a];
                x1[a] = x2[a];
            } else {
                x0[a] = x2[a];
            }
            p[a] += SW * cm;
        }
        off += cm;
    }
    if (SW == 1 && peel && wlo) {   /* columns q_hi - 1 = x0, q_hi = x1, q_hi + 1 = xe */
        for (int a = 0; a < NRW; a++)
            xe[a] = DW_FN(load_m)(p[a] + 2 * cm, wlo);
        DW_K3_WRAP_PIXEL(x0, x1, xe, DW_ALL, DW_ALL, wlo, DW_ALL, off)
        DW_K3_WRAP_PIXEL(x1, xe, xe, DW_ALL, DW_ALL, 0u, wlo, off + cm)
    } else if (SW == 1 && peel) {   /* pixel q_hi: columns q_hi - 1 = x0, q_hi = x1, q_hi + 1 out */
        DW_K3_PAIR_PIXEL(x0, x1, x1, 0, 2, off)
    }
}
#undef DW_K3_WRAP_PIXEL
#undef DW_K3_PAIR_PIXEL

/* The MASK x SW instantiations, for a lanes that is DW_VL (constant) or not. */
#define DW_K3_SWITCH(CALL, LN)                                                               \
    switch (mask * 2 + (k->sw != 1)) {                                                       \
    case 2: CALL(1, 1, LN); break;                                                           \
    case 3: CALL(1, 2, LN); break;                                                           \
    case 4: CALL(2, 1, LN); break;                                                           \
    case 5: CALL(2, 2, LN); break;                                                           \
    case 6: CALL(3, 1, LN); break;                                                           \
    case 7: CALL(3, 2, LN); break;                                                           \
    case 8: CALL(4, 1, LN); break;                                                           \
    case 9: CALL(4, 2, LN); break;                                                           \
    case 10: CALL(5, 1, LN); break;                                                          \
    case 11: CALL(5, 2, LN); break;                                                          \
    case 12: CALL(6, 1, LN); break;                                                          \
    case 13: CALL(6, 2, LN); break;                                                          \
    case 14: CALL(7, 1, LN); break;                                                          \
    case 15: CALL(7, 2, LN); break;                                                          \
    default: CALL(0, 1, LN); break;                                                          \
    }

/* A pair step's instantiations: the two rows' borders one row at a time (CALLB(SW, LN)),
 * the interior as a pair (CALLP(SH, SW, LN)), for a lanes that is DW_VL or not. */
#define DW_K3_PAIR(CALLB, CALLP)                                                             \
    if (lanes == DW_VL) {                                                                    \
        if (k->sw == 1) CALLB(1, DW_VL) else CALLB(2, DW_VL)                                 \
        if (k->sh == 1) {                                                                    \
            if (k->sw == 1) CALLP(1, 1, DW_VL); else CALLP(1, 2, DW_VL);                     \
        } else {                                                                             \
            if (k->sw == 1) CALLP(2, 1, DW_VL); else CALLP(2, 2, DW_VL);                     \
        }                                                                                    \
    } else {                                                                                 \
        if (k->sw == 1) CALLB(1, lanes) else CALLB(2, lanes)                                 \
        if (k->sh == 1) {                                                                    \
            if (k->sw == 1) CALLP(1, 1, lanes); else CALLP(1, 2, lanes);                     \
        } else {                                                                             \
            if (k->sw == 1) CALLP(2, 1, lanes); else CALLP(2, 2, lanes);                     \
        }                                                                                    \
    }

/* The source rows of output row rr (at channel 0): the mask (bit a: row i*sh - pt + a
 * inside) returned, and s[a]. */
DWC_INLINE int DW_FN(k3_rows)(const DW_FN(k3geo) *k, ptrdiff_t rr, const DW_T **s)
{
    const ptrdiff_t n = rr / k->ho, i = rr - n * k->ho, y0 = i * k->sh - k->pt;
    int mask = 0;
    for (int a = 0; a < 3; a++) {
        s[a] = k->src;
        if (y0 + a >= 0 && y0 + a < k->hs) {
            mask |= 1 << a;
            s[a] = k->src + ((n * k->hs + y0 + a) * k->ws) * k->cm;
        }
    }
    return mask;
}

/* Flattened source rows [*f0, *f1) that output rows [r0, r1) read. */
DWC_INLINE void DW_FN(k3_src_span)(const DW_FN(k3geo) *k, ptrdiff_t r0, ptrdiff_t r1,
                                   ptrdiff_t *f0, ptrdiff_t *f1)
{
    const ptrdiff_t n0 = r0 / k->ho, i0 = r0 - n0 * k->ho;
    const ptrdiff_t n1 = (r1 - 1) / k->ho, i1 = r1 - 1 - n1 * k->ho;
    ptrdiff_t y0 = i0 * k->sh - k->pt, y1 = i1 * k->sh - k->pt + 3;
    y0 = y0 < 0 ? 0 : y0 > k->hs ? k->hs : y0;
    y1 = y1 < 0 ? 0 : y1 > k->hs ? k->hs : y1;
    *f0 = n0 * k->hs + y0;
    *f1 = n1 * k->hs + y1;
}

/* An output row's geometry, computed once per band (not per channel chunk: the divisions
 * by the image height cost as much as a 7-pixel row's 63 multiply-adds): the source rows
 * its kernel rows read (at channel 0), which are inside (mask), and whether it pairs with
 * the next row (PAIRS, both with every kernel row inside, in one image, in the band). */
typedef struct {
    const DW_T *s[3];
    int mask, pair;
} DW_FN(k3row);

DWC_INLINE void DW_FN(k3_band_geometry)(const DW_FN(k3geo) *k, ptrdiff_t b0, ptrdiff_t b1,
                                        int pairs, DW_FN(k3row) *rows)
{
    for (ptrdiff_t rr = b0; rr < b1; rr++) {
        DW_FN(k3row) *r = &rows[rr - b0];
        const ptrdiff_t i1 = rr + 1 - (rr + 1) / k->ho * k->ho;  /* the next row's i */
        r->mask = DW_FN(k3_rows)(k, rr, r->s);
        r->pair = pairs && r->mask == 7 && rr + 1 < b1 && i1 != 0 && k->sh <= 2
                  && i1 * k->sh - k->pt + 2 < k->hs;
    }
}

/* Whether the pair steps take their two border pixels from their own window (k3_fpair,
 * k3_dwpair) instead of one row at a time through k3_fspan's / k3_dwspan's border loop (a
 * load and a bounds check per tap): rows 'same' with pads of 1 at column stride 1, with an
 * interior. One process, old and new builds alternating, NumPy-placed arrays, 8 images:
 * forward 14x14x384 -10%, 28x28x192 -7%, 56x56x144 -3%; the same bits. */
DWC_INLINE int DW_FN(k3_peels)(const DW_FN(k3geo) *k, ptrdiff_t q_lo, ptrdiff_t q_hi)
{
    return k->sw == 1 && k->pl == 1 && k->wo == k->ws && q_lo == 1 && q_hi == k->wo - 1
           && q_hi > q_lo;
}

/* One channel chunk (o, lanes; WLO: a wrapped chunk's mask, k3_wrap) of a band's rows
 * [b0, b1) (geometry rows[]), spreading the next band's prefetch (*pf up to pf_end) over
 * its row steps. */
DWC_INLINE void DW_FN(k3_band_chunk)(const DW_FN(k3geo) *k, const DW_FN(k3row) *rows,
                                     ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t o, ptrdiff_t lanes,
                                     unsigned wlo, ptrdiff_t q_lo, ptrdiff_t q_hi, int peel,
                                     const char **pfp, const char *pf_end, ptrdiff_t pf_step)
{
    const ptrdiff_t cm = k->cm;
    /* Streaming stores need every whole vector of the pass on a line. */
    const int nt = k->nt && (uintptr_t)(k->out + o) % 64 == 0
                   && (cm * (ptrdiff_t)sizeof(DW_T)) % 64 == 0;
    const char *pf = *pfp;
    DW_VEC w[9], bv = {0};
    for (int t = 0; t < 9; t++)
        w[t] = wlo ? DW_FN(load_wrap)(k->wk[t] + o, cm, wlo)
                   : DW_FN(load_part)(k->wk[t] + o, lanes);
    if (k->bias)
        bv = wlo ? DW_FN(load_wrap)(k->bias + o, cm, wlo) : DW_FN(load_part)(k->bias + o, lanes);
    for (ptrdiff_t rr = b0; rr < b1; rr++) {
        const DW_FN(k3row) *r = &rows[rr - b0];
        const int mask = r->mask;
        const DW_T *s[3] = {r->s[0] + o, r->s[1] + o, r->s[2] + o};
        DW_T *d = k->out + rr * k->wo * cm + o;
        if (pf) {
            const char *stop = pf + pf_step < pf_end ? pf + pf_step : pf_end;
            for (; pf < stop; pf += 64)
                __builtin_prefetch(pf, 0, 2);
        }
        if (r->pair) {
            /* Rows rr and rr + 1 (same image, every kernel row inside): their borders one
             * row at a time, the interior as a pair (a wrapped chunk's positions whose two
             * pixels are inside: from q_lo + 1). */
            const DW_T *s2[5];
            for (int a = 0; a < 3 + (int)k->sh; a++)
                s2[a] = s[0] + a * k->ws * cm;
            DW_T *d1 = d + k->wo * cm;
            const DW_T *t[3] = {s2[k->sh], s2[k->sh + 1], s2[k->sh + 2]};
#define DW_CALLB(S, LN)                                                                     \
    {                                                                                       \
        if (!(S == 1 && peel)) {                                                            \
            DW_FN(k3_fspan)(s, w, bv, d, cm, k->ws, k->wo, q_lo, q_hi, k->pl, LN, nt, wlo,  \
                            7, S, 0);                                                       \
            DW_FN(k3_fspan)(t, w, bv, d1, cm, k->ws, k->wo, q_lo, q_hi, k->pl, LN, nt, wlo, \
                            7, S, 0);                                                       \
        }                                                                                   \
    }
#define DW_CALLP(SH, S, LN)                                                                 \
    do {                                                                                    \
        if (!wlo || (S == 1 && peel))                                                       \
            DW_FN(k3_fpair)(s2, w, bv, d, d1, cm, q_lo, q_hi, k->pl, LN, nt, peel, wlo, SH, \
                            S);                                                             \
        else if (q_lo + 1 < q_hi)                                                           \
            DW_FN(k3_fpair)(s2, w, bv, d, d1, cm, q_lo + 1, q_hi, k->pl, LN, nt, 0, 0u, SH, \
                            S);                                                             \
    } while (0)
            DW_K3_PAIR(DW_CALLB, DW_CALLP)
#undef DW_CALLP
#undef DW_CALLB
            rr++;
            continue;
        }
#define DW_CALL(M, S, LN) DW_FN(k3_fspan)(s, w, bv, d, cm, k->ws, k->wo, q_lo, q_hi, k->pl, LN, nt, wlo, M, S, 1)
        if (lanes == DW_VL) {
            DW_K3_SWITCH(DW_CALL, DW_VL)
        } else {
            DW_K3_SWITCH(DW_CALL, lanes)
        }
#undef DW_CALL
    }
    *pfp = pf;
}

/* A wrapped chunk, compiled apart: inlined beside the others, its masked border code cost
 * the unwrapped chunks 3-4% (8x56x56x144, 8x112x112x32 forward; old and new builds
 * alternating in one process). */
static __attribute__((noinline)) void DW_FN(k3_band_wrapped)(
    const DW_FN(k3geo) *k, const DW_FN(k3row) *rows, ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t o,
    unsigned wlo, ptrdiff_t q_lo, ptrdiff_t q_hi, int peel, const char **pfp,
    const char *pf_end, ptrdiff_t pf_step)
{
    DW_FN(k3_band_chunk)(k, rows, b0, b1, o, DW_VL, wlo, q_lo, q_hi, peel, pfp, pf_end, pf_step);
}

/* Output rows [r0, r1) of the flattened (n, i) axis, band by band. */
static void DW_FN(k3_forward_bands)(const DW_FN(k3geo) *k, ptrdiff_t r0, ptrdiff_t r1)
{
    const ptrdiff_t cm = k->cm, band = DW_FN(k3_band_rows)(k->sh, k->ws, k->wo, cm);
    const ptrdiff_t row_bytes = k->ws * cm * (ptrdiff_t)sizeof(DW_T);
    const ptrdiff_t head = DW_FN(k3_head)(k->src, k->out, cm,
                                          dwc_k3_realign_vectors(1, k->sw, k->nt));
    const unsigned wrap = DW_FN(k3_wrap)(head, k->sw);
    const ptrdiff_t nvec = wrap ? cm / DW_VL : (cm - head + DW_VL - 1) / DW_VL + (head > 0);
    ptrdiff_t q_lo, q_hi;
    DW_FN(k3_interior)(k->ws, k->wo, k->pl, k->sw, &q_lo, &q_hi);
    const int peel = DW_FN(k3_peels)(k, q_lo, q_hi);
    for (ptrdiff_t b0 = r0; b0 < r1; b0 += band) {
        const ptrdiff_t b1 = b0 + band < r1 ? b0 + band : r1;
        /* The next band's source rows beyond this band's: into L2 while this one runs
         * (k->pf: a source from memory). */
        const char *pf = NULL, *pf_end = NULL;
        ptrdiff_t pf_step = 0;
        if (k->pf && b1 < r1) {
            ptrdiff_t f0, f1, g0, g1;
            DW_FN(k3_src_span)(k, b0, b1, &f0, &f1);
            DW_FN(k3_src_span)(k, b1, b1 + band < r1 ? b1 + band : r1, &g0, &g1);
            g0 = g0 > f1 ? g0 : f1;
            if (g0 < g1) {
                pf = (const char *)k->src + g0 * row_bytes;
                pf_end = (const char *)k->src + g1 * row_bytes;
                const ptrdiff_t steps = nvec * (b1 - b0);
                pf_step = ((pf_end - pf) / 64 + steps - 1) / steps * 64;
            }
        }
        DW_FN(k3row) rows[64];   /* k3_band_rows: at most 64 */
        DW_FN(k3_band_geometry)(k, b0, b1, 1, rows);
        DW_CHUNKS_W(o, lanes, head, wrap, cm) {
            if (o < 0)
                DW_FN(k3_band_wrapped)(k, rows, b0, b1, o, wrap, q_lo, q_hi, peel, &pf, pf_end,
                                       pf_step);
            else
                DW_FN(k3_band_chunk)(k, rows, b0, b1, o, lanes, 0u, q_lo, q_hi, peel, &pf,
                                     pf_end, pf_step);
        }
        if (k->act)   /* the band's outputs, still in L2 */
            DW_FN(activate)(k->out + b0 * k->wo * cm, (b1 - b0) * k->wo * cm, k->act);
    }
#if DWC_X86_INTRINSICS
    if (k->nt)
        _mm_sfence(); /* the streamed stores visible before the caller's next step */
#endif
}

/* NP interior output pixels from column q0, channels [o, o + lanes), of one output row:
 * source rows s[a] (a in mask), weight rows wk. For each kernel row the (NP-1)*SW + 3
 * source vectors the block reads are loaded once, each feeding the (up to 3) outputs it
 * is a tap of; taps are added per output in (a, b) order from the bias. */
DWC_INLINE void DW_FN(k3_block)(const DW_T *const *s, const DW_T *const *wk, int mask,
                                DW_VEC bv, DW_T *d, ptrdiff_t q0, ptrdiff_t cm, ptrdiff_t pl,
                                ptrdiff_t o, ptrdiff_t lanes, ptrdiff_t ws, ptrdiff_t nq,
                                unsigned wlo, const int NP, const int SW, const int EDGE)
{
    const int full = lanes == DW_VL;
    const int wrap = SW == 1 && EDGE && wlo;   /* positions q0 .. q0 + NP - 1 (k3_wrap) */
    DW_VEC acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < NP; i++)
        acc[i] = bv;
    for (int a = 0; a < 3; a++) {
        if (!(mask >> a & 1))
            continue;
        DW_VEC w0, w1, w2;
        if (wrap) {
            w0 = DW_FN(load_wrap)(wk[3 * a] + o, cm, wlo);
            w1 = DW_FN(load_wrap)(wk[3 * a + 1] + o, cm, wlo);
            w2 = DW_FN(load_wrap)(wk[3 * a + 2] + o, cm, wlo);
        } else {
            w0 = DW_LD(wk[3 * a] + o);
            w1 = DW_LD(wk[3 * a + 1] + o);
            w2 = DW_LD(wk[3 * a + 2] + o);
        }
        const DW_T *p = s[a] + o;
#pragma GCC unroll 32
        for (int c = 0; c < (NP - 1) * SW + 3; c++) {
            const ptrdiff_t col = q0 * SW - pl + c;
            const unsigned m = wrap ? DW_FN(wrap_cols)(col, ws, wlo) : DW_ALL;
            if (wrap ? !m : EDGE && (col < 0 || col >= ws))
                continue;
            const DW_VEC xv = wrap ? DW_FN(load_m)(p + col * cm, m) : DW_LD(p + col * cm);
#pragma GCC unroll 8
            for (int i = 0; i < NP; i++) {
                const int b = c - i * SW;
                if (b < 0 || b > 2)
                    continue;
                const DW_VEC wb = b == 0 ? w0 : b == 1 ? w1 : w2;
                if (m == DW_ALL)
                    acc[i] += xv * wb;
                else
                    acc[i] = DW_FN(fma_m)(acc[i], xv, wb, m);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NP; i++) {
        if (wrap) {
            const unsigned sm = DW_FN(wrap_pixels)(q0 + i, nq, wlo);
            if (!sm)
                break;
            DW_FN(store_m)(d + i * cm, acc[i], sm);
            continue;
        }
        if (EDGE && q0 + i >= nq)
            break;
        if (full)
            DW_FN(store)(d + i * cm, acc[i]);
        else
            DW_FN(store_part)(d + i * cm, acc[i], lanes);
    }
}

/* Every channel of NP pixels from q0 (EDGE: taps outside [0, ws) skipped, pixels from nq
 * on not stored). */
DWC_INLINE void DW_FN(k3_block_all)(const DW_T *const *s, const DW_T *const *wk, int mask,
                                    const DW_T *bias, DW_T *out, ptrdiff_t q0, ptrdiff_t cm,
                                    ptrdiff_t pl, ptrdiff_t head, unsigned wrap, ptrdiff_t ws,
                                    ptrdiff_t nq, const int NP, const int SW, const int EDGE)
{
    DW_T *d = out + q0 * cm;
    ptrdiff_t o = 0, end = cm;
    if (SW == 1 && wrap) {   /* the wrapped chunk: positions q0 .. q0 + NP - 1 */
        o = head - DW_VL;
        const DW_VEC bv = bias ? DW_FN(load_wrap)(bias + o, cm, wrap) : (DW_VEC){0};
        DW_FN(k3_block)(s, wk, mask, bv, d + o, q0, cm, pl, o, DW_VL, ws, nq, wrap, NP, SW, 1);
        o = head;
        end = cm - (DW_VL - head);
        if (q0 >= nq)   /* the block of position nq alone */
            return;
    } else if (head) {
        const DW_VEC bv = bias ? DW_FN(load_part)(bias, head) : (DW_VEC){0};
        DW_FN(k3_block)(s, wk, mask, bv, d, q0, cm, pl, 0, head, ws, nq, 0u, NP, SW, EDGE);
        o = head;
    }
    for (; o + DW_VL <= end; o += DW_VL) {
        const DW_VEC bv = bias ? DW_FN(load)(bias + o) : (DW_VEC){0};
        DW_FN(k3_block)(s, wk, mask, bv, d + o, q0, cm, pl, o, DW_VL, ws, nq, 0u, NP, SW, EDGE);
    }
    if (o < end) {
        const DW_VEC bv = bias ? DW_FN(load_part)(bias + o, cm - o) : (DW_VEC){0};
        DW_FN(k3_block)(s, wk, mask, bv, d + o, q0, cm, pl, o, cm - o, ws, nq, 0u, NP, SW, EDGE);
    }
}

/* Two output rows' NP pixels from column q0, channels [o, o + lanes), both with every
 * kernel row inside: source rows s[0 .. SH+2] (channel 0), output row 0 reads s[0..2],
 * row 1 s[SH .. SH+2]. Each source vector is loaded once for both rows (k3_block loads
 * the middle rows again for the next output row, from L2: the rows of a 28-pixel row of
 * 192 channels overflow L1), the 9 weights once per block. Taps per output in k3_block's
 * (a, b) order from the bias: the same bits. */
DWC_INLINE void DW_FN(k3_block2)(const DW_T *const *s, const DW_T *const *wk, DW_VEC bv,
                                 DW_T *d0, DW_T *d1, ptrdiff_t q0, ptrdiff_t cm, ptrdiff_t pl,
                                 ptrdiff_t o, ptrdiff_t lanes, ptrdiff_t ws, ptrdiff_t nq,
                                 unsigned wlo, const int NP, const int SH, const int SW,
                                 const int EDGE)
{
    const int full = lanes == DW_VL;
    const int wrap = SW == 1 && EDGE && wlo;   /* as k3_block's */
    DW_VEC acc0[8], acc1[8], w[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; t++)
        w[t] = wrap ? DW_FN(load_wrap)(wk[t] + o, cm, wlo) : DW_LD(wk[t] + o);
#pragma GCC unroll 8
    for (int i = 0; i < NP; i++)
        acc0[i] = acc1[i] = bv;
#pragma GCC unroll 5
    for (int r = 0; r < SH + 3; r++) {
        const DW_T *p = s[r] + o;
#pragma GCC unroll 32
        for (int c = 0; c < (NP - 1) * SW + 3; c++) {
            const ptrdiff_t col = q0 * SW - pl + c;
            const unsigned m = wrap ? DW_FN(wrap_cols)(col, ws, wlo) : DW_ALL;
            if (wrap ? !m : EDGE && (col < 0 || col >= ws))
                continue;
            const DW_VEC xv = wrap ? DW_FN(load_m)(p + col * cm, m) : DW_LD(p + col * cm);
#pragma GCC unroll 8
            for (int i = 0; i < NP; i++) {
                const int b = c - i * SW;
                if (b < 0 || b > 2)
                    continue;
                if (m == DW_ALL) {
                    if (r <= 2)
                        acc0[i] += xv * w[3 * r + b];
                    if (r >= SH && r - SH <= 2)
                        acc1[i] += xv * w[3 * (r - SH) + b];
                } else {
                    if (r <= 2)
                        acc0[i] = DW_FN(fma_m)(acc0[i], xv, w[3 * r + b], m);
                    if (r >= SH && r - SH <= 2)
                        acc1[i] = DW_FN(fma_m)(acc1[i], xv, w[3 * (r - SH) + b], m);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NP; i++) {
        if (wrap) {
            const unsigned sm = DW_FN(wrap_pixels)(q0 + i, nq, wlo);
            if (!sm)
                break;
            DW_FN(store_m)(d0 + i * cm, acc0[i], sm);
            DW_FN(store_m)(d1 + i * cm, acc1[i], sm);
            continue;
        }
        if (EDGE && q0 + i >= nq)
            break;
        if (full) {
            DW_FN(store)(d0 + i * cm, acc0[i]);
            DW_FN(store)(d1 + i * cm, acc1[i]);
        } else {
            DW_FN(store_part)(d0 + i * cm, acc0[i], lanes);
            DW_FN(store_part)(d1 + i * cm, acc1[i], lanes);
        }
    }
}

/* Every channel of two output rows' NP pixels from q0 (k3_block_all's twin). */
DWC_INLINE void DW_FN(k3_block2_all)(const DW_T *const *s, const DW_T *const *wk,
                                     const DW_T *bias, DW_T *out0, DW_T *out1, ptrdiff_t q0,
                                     ptrdiff_t cm, ptrdiff_t pl, ptrdiff_t head,
                                     unsigned wrap, ptrdiff_t ws, ptrdiff_t nq, const int NP,
                                     const int SH, const int SW, const int EDGE)
{
    DW_T *d0 = out0 + q0 * cm, *d1 = out1 + q0 * cm;
    ptrdiff_t o = 0, end = cm;
    if (SW == 1 && wrap) {
        o = head - DW_VL;
        const DW_VEC bv = bias ? DW_FN(load_wrap)(bias + o, cm, wrap) : (DW_VEC){0};
        DW_FN(k3_block2)(s, wk, bv, d0 + o, d1 + o, q0, cm, pl, o, DW_VL, ws, nq, wrap, NP, SH,
                         SW, 1);
        o = head;
        end = cm - (DW_VL - head);
        if (q0 >= nq)
            return;
    } else if (head) {
        const DW_VEC bv = bias ? DW_FN(load_part)(bias, head) : (DW_VEC){0};
        DW_FN(k3_block2)(s, wk, bv, d0, d1, q0, cm, pl, 0, head, ws, nq, 0u, NP, SH, SW, EDGE);
        o = head;
    }
    for (; o + DW_VL <= end; o += DW_VL) {
        const DW_VEC bv = bias ? DW_FN(load)(bias + o) : (DW_VEC){0};
        DW_FN(k3_block2)(s, wk, bv, d0 + o, d1 + o, q0, cm, pl, o, DW_VL, ws, nq, 0u, NP, SH,
                         SW, EDGE);
    }
    if (o < end) {
        const DW_VEC bv = bias ? DW_FN(load_part)(bias + o, cm - o) : (DW_VEC){0};
        DW_FN(k3_block2)(s, wk, bv, d0 + o, d1 + o, q0, cm, pl, o, cm - o, ws, nq, 0u, NP, SH,
                         SW, EDGE);
    }
}

/* Output rows [r0, r1) of the flattened (n, i) axis, row by row. */
static void DW_FN(k3_forward_rows)(const DW_FN(k3geo) *k, ptrdiff_t r0, ptrdiff_t r1)
{
    const ptrdiff_t cm = k->cm;
    const ptrdiff_t head = DW_FN(k3_head)(k->src, k->out, cm,
                                          dwc_k3_realign_vectors(0, k->sw, 0));
    const unsigned wrap = DW_FN(k3_wrap)(head, k->sw);
    const ptrdiff_t row_bytes = k->ws * cm * (ptrdiff_t)sizeof(DW_T), wo = k->wo;
    ptrdiff_t q_lo, q_hi;
    DW_FN(k3_interior)(k->ws, wo, k->pl, k->sw, &q_lo, &q_hi);
    const ptrdiff_t nblk = (wo + 3) / 4;
    for (ptrdiff_t rr = r0; rr < r1; rr++) {
        const DW_T *s[3];
        const int mask = DW_FN(k3_rows)(k, rr, s);
        DW_T *out = k->out + rr * wo * cm;
        /* Rows rr and rr + 1 as a pair (AVX-512: 16 accumulators and 9 weights in
         * registers) when both have every kernel row inside and are in one image: 8x7x7x960
         * forward 0.078 -> 0.071 ms, 14x14x576 s2 0.085 -> 0.075; stride-1 dx alike (C
         * harness, min of 3). */
        const ptrdiff_t i1 = (rr + 1) % k->ho;
        const int pair = DW_VBYTES == 64 && mask == 7 && rr + 1 < r1 && i1 != 0
                         && k->sh <= 2 && i1 * k->sh - k->pt + 2 < k->hs;
        const DW_T *s2[5];
        DW_T *out1 = out + wo * cm;
        if (pair)
            for (int a = 0; a < 3 + (int)k->sh; a++)
                s2[a] = s[0] + a * k->ws * cm;
        /* The next row's source rows beyond this row's: into L2 while this one runs
         * (k->pf: a source from memory). */
        const char *pf = NULL, *pf_end = NULL;
        ptrdiff_t pf_step = 0;
        if (k->pf && rr + 1 + pair < r1) {
            ptrdiff_t f0, f1, g0, g1;
            DW_FN(k3_src_span)(k, rr, rr + 1 + pair, &f0, &f1);
            DW_FN(k3_src_span)(k, rr + 1 + pair, rr + 2 + pair, &g0, &g1);
            g0 = g0 > f1 ? g0 : f1;
            if (g0 < g1) {
                pf = (const char *)k->src + g0 * row_bytes;
                pf_end = (const char *)k->src + g1 * row_bytes;
                pf_step = ((pf_end - pf) / 64 + nblk - 1) / nblk * 64;
            }
        }
        /* Blocks of DW_NP pixels (AVX-512 runs this only for rows of at most one block:
         * dwc_k3_bands); those with a tap outside the row (the borders, a short row) skip
         * it, and the last may end past the row (not stored). */
#define DW_BLK(NP, SW, EDGE)                                                                \
    DW_FN(k3_block_all)(s, k->wk, mask, k->bias, out, q, cm, k->pl, head, wrap, k->ws, wo,   \
                        NP, SW, EDGE)
#define DW_BLK2(NP, SH, SW, EDGE)                                                           \
    DW_FN(k3_block2_all)(s2, k->wk, k->bias, out, out1, q, cm, k->pl, head, wrap, k->ws, wo, \
                         NP, SH, SW, EDGE)
#define DW_BLK_SW(NP, EDGE)                                                                 \
    {                                                                                       \
        if (!pair) {                                                                        \
            if (k->sw == 1)                                                                 \
                DW_BLK(NP, 1, EDGE);                                                        \
            else                                                                            \
                DW_BLK(NP, 2, EDGE);                                                        \
        } else if (k->sh == 1) {                                                            \
            if (k->sw == 1)                                                                 \
                DW_BLK2(NP, 1, 1, EDGE);                                                    \
            else                                                                            \
                DW_BLK2(NP, 1, 2, EDGE);                                                    \
        } else {                                                                            \
            if (k->sw == 1)                                                                 \
                DW_BLK2(NP, 2, 1, EDGE);                                                    \
            else                                                                            \
                DW_BLK2(NP, 2, 2, EDGE);                                                    \
        }                                                                                   \
    }
        ptrdiff_t q = 0;
        /* A wrapped chunk's last position is wo: a block of its own when wo fills the
         * blocks before it. */
        while (q < wo + (wrap && wo % DW_NP == 0)) {
            if (pf) {
                const char *stop = pf + pf_step < pf_end ? pf + pf_step : pf_end;
                for (; pf < stop; pf += 64)
                    __builtin_prefetch(pf, 0, 2);
            }
            if (q >= q_lo && q + DW_NP <= q_hi)
                DW_BLK_SW(DW_NP, 0)
            else
                DW_BLK_SW(DW_NP, 1)
            q += DW_NP;
        }
#undef DW_BLK_SW
#undef DW_BLK2
#undef DW_BLK
        if (k->act)
            DW_FN(activate)(out, (1 + pair) * wo * cm, k->act);
        rr += pair;
    }
}

#if DW_VBYTES == 64 && defined(DW_STREAMED_ROWS)   /* float32 AVX-512 (depthwise.h) */
/* --- 3x3, stride 1, pads of 1 ('same'), short rows: STREAMED rows (k3_forward_stream) ----
 * The bands load each source vector once per output row that reads it (the pair step:
 * 4 loads and 2 stores a 18 multiply-adds) and count on L1 to keep a band's rows between
 * those reads; on 7- and 14-pixel rows a band's chunk is over in a few steps and the rows'
 * borders and set-up weigh. Here each source vector is loaded ONCE: a strip of Q <= 7
 * output columns of one channel vector walks down the image with the accumulators of the
 * three output rows a source row feeds in registers (3 x Q + the 9 weights: 30 of the 32
 * AVX-512 registers at Q = 7), a source row adding its kernel row a = 0 taps to output
 * row y + 1, a = 1 to row y and a = 2 to row y - 1, which is then complete and stored.
 * Each output still receives its taps in the row kernel's order (kernel rows, then
 * columns, ascending, from the bias: source rows and, within one, columns are walked in
 * ascending order), so the results are the same bits as the bands'. L, R: the strip
 * starts / ends the row (its outer column's taps outside skipped); rows whose kernel rows
 * fall outside the image are simply not walked. */

/* Applies act (DWC_ACT_*) in registers, as activate() does in memory (the same bits). */
DWC_INLINE DW_VEC DW_FN(act_vec)(DW_VEC v, int act)
{
    typedef __typeof__(v <= v) ivec;
    const DW_VEC zero = {0}, six = zero + 6;
    if (act == DWC_ACT_NONE)
        return v;
    v = (DW_VEC)((ivec)v & ~(v <= zero));
    if (act == DWC_ACT_RELU6) {
        const ivec big = v > six;
        v = (DW_VEC)(((ivec)v & ~big) | ((ivec)six & big));
    }
    return v;
}

/* acc + x * w in one rounding, spelled out: -ffp-contract is a heuristic (built for
 * float64 too, GCC left one product of a strip unfused: another rounding than the bands'
 * contracted sums). */
DWC_INLINE DW_VEC DW_FN(fma)(DW_VEC acc, DW_VEC x, DW_VEC w)
{
#if DWC_X86_INTRINSICS
    if (sizeof(DW_T) == 4)
        return (DW_VEC)_mm512_fmadd_ps((__m512)x, (__m512)w, (__m512)acc);
    return (DW_VEC)_mm512_fmadd_pd((__m512d)x, (__m512d)w, (__m512d)acc);
#else
    return acc + x * w;
#endif
}

/* One source row xr (at the strip's first column) into the output rows it feeds: Rn (row
 * y + 1, taps a = 0) if HN, Rc (row y, a = 1) if HC, Rp (row y - 1, a = 2) if HP. */
DWC_INLINE void DW_FN(k3s_row)(const DW_T *xr, const DW_VEC *w, DW_VEC *Rn, DW_VEC *Rc,
                               DW_VEC *Rp, ptrdiff_t cm, ptrdiff_t lanes, const int Q,
                               const int L, const int R, const int HN, const int HC,
                               const int HP)
{
    const int full = lanes == DW_VL;
    const DW_T *p = L ? xr : xr - cm;   /* a pointer walked by cm: no per-column offsets */
#pragma GCC unroll 16
    for (int c = -1; c <= Q; c++) {
        if ((c == -1 && L) || (c == Q && R))
            continue;
        const DW_VEC x = DW_LD(p);
        p += cm;
#pragma GCC unroll 3
        for (int b = 0; b < 3; b++) {   /* output column c + 1 - b takes tap b from c */
            const int q = c + 1 - b;
            if (q < 0 || q >= Q)
                continue;
            if (HN)
                Rn[q] = DW_FN(fma)(Rn[q], x, w[b]);
            if (HC)
                Rc[q] = DW_FN(fma)(Rc[q], x, w[3 + b]);
            if (HP)
                Rp[q] = DW_FN(fma)(Rp[q], x, w[6 + b]);
        }
    }
}

#define DW_S_INIT(A)                                                                        \
    _Pragma("GCC unroll 16") for (int i_ = 0; i_ < Q; i_++) A[i_] = bp ? DW_LD(bp) : zero;
#define DW_S_STORE(A)                                                                       \
    {                                                                                       \
        DW_T *d_ = yp;                                                                      \
        _Pragma("GCC unroll 16") for (int i_ = 0; i_ < Q; i_++) {                           \
            const DW_VEC v_ = MODE == 1 ? DW_FN(act_vec)(A[i_], act) : A[i_];               \
            if (!full)                                                                      \
                DW_FN(store_part)(d_, v_, lanes);                                           \
            else                                                                            \
                DW_FN(store_nt)(d_, v_, MODE == 2);                                         \
            d_ += cm;                                                                       \
        }                                                                                   \
        yp += xrow;                                                                         \
    }
#define DW_S_ROW(N, C, P, HN, HC, HP)                                                       \
    {                                                                                       \
        DW_FN(k3s_row)(xp, w, N, C, P, cm, lanes, Q, L, R, HN, HC, HP);                     \
        xp += xrow;                                                                         \
    }
/* Source row y (rows y - 1, y, y + 1 all the strip's): N (row y + 1) starts at the bias. */
#define DW_S_STEP(P, C, N)                                                                  \
    {                                                                                       \
        DW_S_INIT(N)                                                                        \
        DW_S_ROW(N, C, P, 1, 1, 1)                                                          \
        DW_S_STORE(P)                                                                       \
    }
/* The strip's last row y1 - 1 (C; P the row before), then source row y1 if inside. */
#define DW_S_LAST(P, C)                                                                     \
    {                                                                                       \
        DW_S_ROW(NULL, C, P, 0, 1, 1)                                                       \
        DW_S_STORE(P)                                                                       \
        if (y1 < H)                                                                         \
            DW_S_ROW(NULL, NULL, C, 0, 0, 1)                                                \
        DW_S_STORE(C)                                                                       \
    }

/* Output rows [y0, y1) of one image (H rows), columns [q0, q0 + Q) of one channel chunk:
 * xs / ys the image's row 0 at column q0 and the chunk, xrow the row pitch of both. */
DWC_INLINE void DW_FN(k3s_strip)(const DW_T *xs, DW_T *ys, const DW_T *const *wk, ptrdiff_t o,
                                 const DW_T *bp, ptrdiff_t H, ptrdiff_t y0, ptrdiff_t y1,
                                 ptrdiff_t xrow, ptrdiff_t cm, ptrdiff_t lanes, int act,
                                 const int MODE, const int Q, const int L, const int R)
{
    const int full = lanes == DW_VL;
    const DW_VEC zero = {0};
    DW_VEC w[9];
    for (int t = 0; t < 9; t++)
        w[t] = DW_LD(wk[t] + o);
    DW_VEC A[7], B[7], C[7];
    const DW_T *xp = xs + (y0 - 1) * xrow;   /* the next source row to walk */
    DW_T *yp = ys + y0 * xrow;               /* the next output row to store */
    DW_S_INIT(A)
    if (y0 > 0)
        DW_S_ROW(A, NULL, NULL, 1, 0, 0)
    else
        xp += xrow;
    if (y1 - y0 == 1) {
        DW_S_ROW(NULL, A, NULL, 0, 1, 0)
        if (y1 < H)
            DW_S_ROW(NULL, NULL, A, 0, 0, 1)
        DW_S_STORE(A)
        return;
    }
    DW_S_INIT(B)
    DW_S_ROW(B, A, NULL, 1, 1, 0)
    ptrdiff_t y = y0 + 1;   /* rows y - 1 = A, y = B in flight */
    for (; y + 3 < y1; y += 3) {
        DW_S_STEP(A, B, C)
        DW_S_STEP(B, C, A)
        DW_S_STEP(C, A, B)
    }
    switch (y1 - 1 - y) {
    case 0:
        DW_S_LAST(A, B)
        break;
    case 1:
        DW_S_STEP(A, B, C)
        DW_S_LAST(B, C)
        break;
    default:
        DW_S_STEP(A, B, C)
        DW_S_STEP(B, C, A)
        DW_S_LAST(C, A)
        break;
    }
}
#undef DW_S_LAST
#undef DW_S_STEP
#undef DW_S_ROW
#undef DW_S_STORE
#undef DW_S_INIT

/* Each strip's instantiation compiled apart (noinline: inlined into one driver, GCC took
 * the weights from the stack), chosen from a table: Q columns (1-7), its edges (L * 2 +
 * R), and the variant: MODE 0 plain, 1 activated, 2 streamed stores for whole vectors,
 * 3 plain and 4 activated for a head or tail chunk of fewer lanes. */
typedef void (*DW_FN(k3s_fn))(const DW_T *xs, DW_T *ys, const DW_T *const *wk, ptrdiff_t o,
                              const DW_T *bp, ptrdiff_t H, ptrdiff_t y0, ptrdiff_t y1,
                              ptrdiff_t xrow, ptrdiff_t cm, ptrdiff_t lanes, int act);
#define DW_S_DEF(QQ, LL, RR, MM, FF)                                                        \
    static __attribute__((noinline)) void DW_FN(k3s_##QQ##_##LL##RR##_##MM##FF)(            \
        const DW_T *xs, DW_T *ys, const DW_T *const *wk, ptrdiff_t o, const DW_T *bp,       \
        ptrdiff_t H, ptrdiff_t y0, ptrdiff_t y1, ptrdiff_t xrow, ptrdiff_t cm,              \
        ptrdiff_t lanes, int act)                                                           \
    {                                                                                       \
        DW_FN(k3s_strip)(xs, ys, wk, o, bp, H, y0, y1, xrow, cm, FF ? DW_VL : lanes, act,   \
                         MM, QQ, LL, RR);                                                   \
    }
#define DW_S_DEFS(QQ, LL, RR)                                                               \
    DW_S_DEF(QQ, LL, RR, 0, 1)                                                              \
    DW_S_DEF(QQ, LL, RR, 1, 1)                                                              \
    DW_S_DEF(QQ, LL, RR, 2, 1)                                                              \
    DW_S_DEF(QQ, LL, RR, 0, 0)                                                              \
    DW_S_DEF(QQ, LL, RR, 1, 0)
#define DW_S_VARIANTS(QQ, LL, RR)                                                           \
    {DW_FN(k3s_##QQ##_##LL##RR##_01), DW_FN(k3s_##QQ##_##LL##RR##_11),                      \
     DW_FN(k3s_##QQ##_##LL##RR##_21), DW_FN(k3s_##QQ##_##LL##RR##_00),                      \
     DW_FN(k3s_##QQ##_##LL##RR##_10)}
DW_S_DEFS(1, 1, 1)
DW_S_DEFS(2, 1, 1)
DW_S_DEFS(3, 1, 1)
DW_S_DEFS(4, 1, 1)
DW_S_DEFS(5, 1, 1)
DW_S_DEFS(6, 1, 1)
DW_S_DEFS(7, 1, 1)
DW_S_DEFS(4, 1, 0)
DW_S_DEFS(5, 1, 0)
DW_S_DEFS(6, 1, 0)
DW_S_DEFS(7, 1, 0)
DW_S_DEFS(4, 0, 1)
DW_S_DEFS(5, 0, 1)
DW_S_DEFS(6, 0, 1)
DW_S_DEFS(7, 0, 1)
DW_S_DEFS(4, 0, 0)
DW_S_DEFS(5, 0, 0)
DW_S_DEFS(6, 0, 0)
DW_S_DEFS(7, 0, 0)
static const DW_FN(k3s_fn) DW_FN(k3s_table)[8][4][5] = {
    [1][3] = DW_S_VARIANTS(1, 1, 1), [2][3] = DW_S_VARIANTS(2, 1, 1),
    [3][3] = DW_S_VARIANTS(3, 1, 1), [4][3] = DW_S_VARIANTS(4, 1, 1),
    [5][3] = DW_S_VARIANTS(5, 1, 1), [6][3] = DW_S_VARIANTS(6, 1, 1),
    [7][3] = DW_S_VARIANTS(7, 1, 1),
    [4][2] = DW_S_VARIANTS(4, 1, 0), [5][2] = DW_S_VARIANTS(5, 1, 0),
    [6][2] = DW_S_VARIANTS(6, 1, 0), [7][2] = DW_S_VARIANTS(7, 1, 0),
    [4][1] = DW_S_VARIANTS(4, 0, 1), [5][1] = DW_S_VARIANTS(5, 0, 1),
    [6][1] = DW_S_VARIANTS(6, 0, 1), [7][1] = DW_S_VARIANTS(7, 0, 1),
    [4][0] = DW_S_VARIANTS(4, 0, 0), [5][0] = DW_S_VARIANTS(5, 0, 0),
    [6][0] = DW_S_VARIANTS(6, 0, 0), [7][0] = DW_S_VARIANTS(7, 0, 0),
};
#undef DW_S_VARIANTS
#undef DW_S_DEFS
#undef DW_S_DEF

/* Output rows [r0, r1) of the flattened (n, i) axis, where depthwise.h's dwc_k3_scheme
 * says STREAM (3x3, stride 1, pads of 1, 'same' sizes, rows of at most
 * DWC_K3_STREAM_MAX_W pixels): per image's rows and channel chunk (a short head chunk
 * realigning the others, k3_head), strips of at most 7 columns, as even as they come
 * (14 = 7 + 7, 12 = 6 + 6, 10 = 5 + 5: rows of 8 or more pixels give strips of 4 to 7). */
static void DW_FN(k3_forward_stream)(const DW_FN(k3geo) *k, ptrdiff_t r0, ptrdiff_t r1)
{
    const ptrdiff_t H = k->ho, W = k->wo, cm = k->cm, xrow = W * cm;
    const ptrdiff_t head = DW_FN(k3_head)(k->src, k->out, cm,
                                          dwc_k3_realign_vectors(DWC_K3_STREAM, 1, k->nt));
    const ptrdiff_t strips = (W + 6) / 7, wide = W % strips, narrow = W / strips;
    for (ptrdiff_t rr = r0; rr < r1;) {
        const ptrdiff_t n = rr / H, y0 = rr - n * H;
        const ptrdiff_t y1 = H - y0 < r1 - rr ? H : y0 + (r1 - rr);
        const DW_T *xs = k->src + n * H * xrow;
        DW_T *ys = k->out + n * H * xrow;
        DW_CHUNKS_W(o, lanes, head, 0u, cm) {
            const DW_T *bp = k->bias ? k->bias + o : NULL;
            /* Streaming stores: whole vectors on a line. */
            const int nt = k->nt && lanes == DW_VL && (uintptr_t)(k->out + o) % 64 == 0
                           && (cm * (ptrdiff_t)sizeof(DW_T)) % 64 == 0;
            const int mode = k->act != DWC_ACT_NONE ? 1 : nt ? 2 : 0;
            const int variant = lanes == DW_VL ? mode : 3 + mode;
            ptrdiff_t q0 = 0;
            for (ptrdiff_t s = 0; s < strips; s++) {
                const ptrdiff_t Q = narrow + (s < wide);
                const int edges = (s == 0) * 2 + (s == strips - 1);
                DW_FN(k3s_table)[Q][edges][variant](xs + q0 * cm + o, ys + q0 * cm + o,
                                                     k->wk, o, bp, H, y0, y1, xrow, cm,
                                                     lanes, k->act);
                q0 += Q;
            }
        }
        rr += y1 - y0;
    }
#if DWC_X86_INTRINSICS
    if (k->nt)
        _mm_sfence();
#endif
}
#endif /* DW_VBYTES == 64 && DW_STREAMED_ROWS */

/* Bands where depthwise.h's dwc_k3_bands says (32 vector registers: AVX-512; with 16 the
 * two-row step spills and the row-by-row blocks are faster, 8x112x112x32 2.6 vs 2.0 ms),
 * else the row-by-row blocks: rows of at most one pixel block with pixels of > 576 bytes.
 * (The bands were once kept to pixels of <= 576 bytes, measured with outputs at their
 * source's page offset, where a large pitch crowds both arrays into the same few L1 sets:
 * dwc_output_offset now places outputs three lines away.) Both add the taps in the same
 * order: the results are the same bits. */
static void DW_FN(k3_forward)(const DW_FN(k3geo) *k, ptrdiff_t r0, ptrdiff_t r1)
{
    const int scheme = dwc_k3_scheme(k->cm * (ptrdiff_t)sizeof(DW_T), sizeof(DW_T), k->hs,
                                      k->ws, k->ho, k->wo, k->sh, k->sw, k->pt, k->pl);
#if DW_VBYTES == 64 && defined(DW_STREAMED_ROWS)
    if (scheme == DWC_K3_STREAM) {
        DW_FN(k3_forward_stream)(k, r0, r1);
        return;
    }
#endif
    if (DW_VBYTES == 64 && scheme != DWC_K3_ROWS)
        DW_FN(k3_forward_bands)(k, r0, r1);
    else
        DW_FN(k3_forward_rows)(k, r0, r1);
}

/* --- dx of a 3x3 kernel with stride (2, 2): dx[y, x] = sum over the taps (a, b) with
 * y + pt - a and x + pl - b even of dy[(y + pt - a) / 2, (x + pl - b) / 2] * w[a, b]
 * (dy positions outside dy skipped). A block of NP pixels from x0 (x0 + pl even) reads
 * dy columns j0 - 1 .. j0 + NP/2 - 1 (j0 = (x0 + pl) / 2) of each dy row once: the even
 * pixels x0 + 2t take columns j0 + t (tap b = 0) and j0 + t - 1 (b = 2), the odd ones
 * j0 + t (b = 1). Taps in (a, b) order; every dx element written once. */
DWC_INLINE void DW_FN(k3_dx2_block)(const DW_T *const *s, const ptrdiff_t *arow, int nr,
                                    const DW_T *wt, DW_T *d, ptrdiff_t j0, ptrdiff_t wo,
                                    ptrdiff_t cm, ptrdiff_t o, ptrdiff_t lanes, int nt,
                                    const int NP)
{
    const int full = lanes == DW_VL;
    DW_VEC acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < NP; i++)
        acc[i] = (DW_VEC){0};
    for (int r = 0; r < nr; r++) {
        const DW_T *wa = wt + arow[r] * 3 * cm + o;
        const DW_VEC w0 = DW_LD(wa), w1 = DW_LD(wa + cm), w2 = DW_LD(wa + 2 * cm);
        const DW_T *p = s[r] + o;
        DW_VEC prev = (DW_VEC){0};
        int have_prev = 0;
        if (j0 - 1 >= 0 && j0 - 1 < wo) {
            prev = DW_LD(p + (j0 - 1) * cm);
            have_prev = 1;
        }
#pragma GCC unroll 8
        for (int t = 0; t < NP / 2; t++) {
            const ptrdiff_t j = j0 + t;
            const int in = j >= 0 && j < wo;
            DW_VEC v = (DW_VEC){0};
            if (in) {
                v = DW_LD(p + j * cm);
                acc[2 * t] += v * w0;
            }
            if (have_prev)
                acc[2 * t] += prev * w2;
            if (in)
                acc[2 * t + 1] += v * w1;
            prev = v;
            have_prev = in;
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NP; i++) {
        if (full)
            DW_FN(store_nt)(d + i * cm + o, acc[i], nt);
        else
            DW_FN(store_part)(d + i * cm + o, acc[i], lanes);
    }
}

/* One dx pixel x (any parity), every channel. */
static void DW_FN(k3_dx2_pixel)(const DW_T *const *s, const ptrdiff_t *arow, int nr,
                                const DW_T *wt, DW_T *d, ptrdiff_t x, ptrdiff_t pl,
                                ptrdiff_t wo, ptrdiff_t cm, ptrdiff_t head)
{
    DW_CHUNKS_W(o, lanes, head, 0u, cm) {
        const int full = lanes == DW_VL;
        DW_VEC acc = (DW_VEC){0};
        for (int r = 0; r < nr; r++)
            for (int b = (x + pl) % 2; b < 3; b += 2) {
                const ptrdiff_t j = (x + pl - b) / 2;
                if (x + pl - b >= 0 && j < wo)
                    acc += DW_LD(s[r] + j * cm + o) * DW_LD(wt + (arow[r] * 3 + b) * cm + o);
            }
        if (full)
            DW_FN(store)(d + x * cm + o, acc);
        else
            DW_FN(store_part)(d + x * cm + o, acc, lanes);
    }
}

DWC_INLINE void DW_FN(k3_dx2_block_all)(const DW_T *const *s, const ptrdiff_t *arow, int nr,
                                        const DW_T *wt, DW_T *d, ptrdiff_t j0, ptrdiff_t wo,
                                        ptrdiff_t cm, ptrdiff_t head, int nt, const int NP)
{
    ptrdiff_t o = 0;
    if (head) {
        DW_FN(k3_dx2_block)(s, arow, nr, wt, d, j0, wo, cm, 0, head, 0, NP);
        o = head;
    }
    for (; o + DW_VL <= cm; o += DW_VL)
        DW_FN(k3_dx2_block)(s, arow, nr, wt, d, j0, wo, cm, o, DW_VL, nt, NP);
    if (o < cm)
        DW_FN(k3_dx2_block)(s, arow, nr, wt, d, j0, wo, cm, o, cm - o, 0, NP);
}

/* dx rows [lo, hi) of the flattened (n, y) axis. */
static void DW_FN(k3_dx2)(const dwc_job *g, ptrdiff_t lo, ptrdiff_t hi)
{
    const DW_T *dy = (const DW_T *)g->dy, *wt = (const DW_T *)g->wt;
    const ptrdiff_t cm = g->cm, w = g->w, wo = g->wo, pl = g->pl;
    /* A dx of >= 8 MiB is written with streaming stores when it starts on a line (the
     * backend allocates it so). No short first chunk here: in this kernel a partial chunk
     * rounds some sums differently from a whole vector (GCC contracts them differently),
     * so realigning by dy's and dx's offsets made dx depend on where NumPy put them. */
    const int big = dwc_k3_streams(g->n * g->h * w * cm * (ptrdiff_t)sizeof(DW_T));
    const ptrdiff_t head = 0;
    const int nt = big && (uintptr_t)((DW_T *)g->dx + head) % 64 == 0
                   && (cm * (ptrdiff_t)sizeof(DW_T)) % 64 == 0;
    for (ptrdiff_t rr = lo; rr < hi; rr++) {
        const ptrdiff_t n = rr / g->h, yy = rr - n * g->h;
        DW_T *d = (DW_T *)g->dx + rr * w * cm;
        const DW_T *s[3];
        ptrdiff_t arow[3];
        int nr = 0;
        for (ptrdiff_t a = 0; a < 3; a++) {
            const ptrdiff_t sy = yy + g->pt - a;
            if (sy < 0 || sy % 2 != 0 || sy / 2 >= g->ho)
                continue;
            s[nr] = dy + (n * g->ho + sy / 2) * wo * cm;
            arow[nr] = a;
            nr++;
        }
        if (rr + 1 < hi) {
            /* The dy row the next dx row reads first, if new. */
            const ptrdiff_t sy = yy + 1 + g->pt;
            if (yy + 1 < g->h && sy % 2 == 0 && sy / 2 < g->ho) {
                const char *p = (const char *)(dy + (n * g->ho + sy / 2) * wo * cm);
                const char *e = p + wo * cm * (ptrdiff_t)sizeof(DW_T);
                for (; p < e; p += 64)
                    __builtin_prefetch(p, 0, 2);
            }
        }
        ptrdiff_t x = 0;
        if (pl % 2 != 0 && x < w) {
            DW_FN(k3_dx2_pixel)(s, arow, nr, wt, d, x, pl, wo, cm, head);
            x++;
        }
        for (; x + 8 <= w; x += 8)
            DW_FN(k3_dx2_block_all)(s, arow, nr, wt, d + x * cm, (x + pl) / 2, wo, cm, head, nt, 8);
        for (; x + 2 <= w; x += 2)
            DW_FN(k3_dx2_block_all)(s, arow, nr, wt, d + x * cm, (x + pl) / 2, wo, cm, head, nt, 2);
        if (x < w)
            DW_FN(k3_dx2_pixel)(s, arow, nr, wt, d, x, pl, wo, cm, head);
    }
#if DWC_X86_INTRINSICS
    if (nt)
        _mm_sfence();
#endif
}

/* --- forward: output rows [lo, hi) of the flattened (n, i) axis -------------------------- */

static void DW_FN(forward_rows)(const dwc_job *g, ptrdiff_t lo, ptrdiff_t hi, void *scratch)
{
    if (g->m == 1 && g->kh == 3 && g->kw == 3 && g->sw <= 2) {
        DW_FN(k3geo) k3;
        k3.src = (const DW_T *)g->x;
        k3.out = (DW_T *)g->y;
        k3.bias = (const DW_T *)g->bias;
        for (int t = 0; t < 9; t++)
            k3.wk[t] = (const DW_T *)g->wt + t * g->cm;
        k3.hs = g->h;
        k3.ws = g->w;
        k3.cm = g->cm;
        k3.ho = g->ho;
        k3.wo = g->wo;
        k3.sh = g->sh;
        k3.sw = g->sw;
        k3.pt = g->pt;
        k3.pl = g->pl;
        /* An output past 8 MiB is streamed past the caches (it would only evict x),
         * unless it is to be activated: then each band is read back right away. */
        k3.nt = !g->act
                && dwc_k3_streams(g->n * g->ho * g->wo * g->cm * (ptrdiff_t)sizeof(DW_T));
        k3.act = g->act;
        k3.pf = dwc_k3_prefetch(g->n * g->h * g->w * g->cm * (ptrdiff_t)sizeof(DW_T));
        DW_FN(k3_forward)(&k3, lo, hi);
        return;
    }
    const DW_T *x = (const DW_T *)g->x, *wt = (const DW_T *)g->wt;
    const ptrdiff_t cm = g->cm;
    DW_FN(taps) t;
    DW_FN(rowgeo) r;
    r.ws = g->w;
    r.ssx = g->sw;
    r.cm = cm;
    r.osx = 1;
    r.nq = g->wo;
    r.bias = (const DW_T *)g->bias;
    for (ptrdiff_t rr = lo; rr < hi; rr++) {
        const ptrdiff_t n = rr / g->ho, i = rr - n * g->ho;
        r.out = (DW_T *)g->y + rr * g->wo * cm;
        r.pf = NULL;
        r.pf_len = 0;
        if (g->m == 1 && rr + 1 < hi) {
            /* The last sh kernel rows of the next output row: the ones no row job read
             * yet (clipped to the image; consecutive rows are consecutive in memory). */
            const ptrdiff_t n1 = (rr + 1) / g->ho, i1 = rr + 1 - n1 * g->ho;
            ptrdiff_t y1 = i1 * g->sh - g->pt + g->kh - 1;
            ptrdiff_t y0 = y1 - (g->sh < g->kh ? g->sh : g->kh) + 1;
            y0 = y0 < 0 ? 0 : y0;
            y1 = y1 >= g->h ? g->h - 1 : y1;
            if (y0 <= y1) {
                r.pf = x + (n1 * g->h + y0) * g->w * cm;
                r.pf_len = (y1 - y0 + 1) * g->w * cm;
            }
        }
        t.n = 0;
        t.passes = 0;
        for (ptrdiff_t a = 0; a < g->kh; a++) {
            const ptrdiff_t yy = i * g->sh - g->pt + a;
            if (yy < 0 || yy >= g->h)
                continue;
            const DW_T *row;
            if (g->m == 1) {
                row = x + (n * g->h + yy) * g->w * cm;
            } else {
                DW_T *buf = (DW_T *)scratch + a * g->w * cm;
                DW_FN(expand_row)(g, n, yy, buf);
                row = buf;
            }
            for (ptrdiff_t b = 0; b < g->kw; b++)
                DW_FN(add_tap)(&t, &r, row, b - g->pl, wt + (a * g->kw + b) * cm);
        }
        DW_FN(finish)(&t, &r);
        if (g->act)
            DW_FN(activate)(r.out, g->wo * cm, g->act);
    }
}

/* --- dx: dx rows [lo, hi) of the flattened (n, y) axis, one gather per stride phase ----- */

static void DW_FN(dx_rows)(const dwc_job *g, ptrdiff_t lo, ptrdiff_t hi, void *scratch)
{
    if (g->m == 1 && g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1) {
        /* Stride 1: dx is the forward over dy with the kernel flipped (tap (a, b) of dx
         * row y reads dy row y + pt - a, column q + pl - b) and pads 2 - pt, 2 - pl. */
        DW_FN(k3geo) k3;
        k3.src = (const DW_T *)g->dy;
        k3.out = (DW_T *)g->dx;
        k3.bias = NULL;
        for (int t = 0; t < 9; t++)
            k3.wk[t] = (const DW_T *)g->wt + (8 - t) * g->cm;
        k3.hs = g->ho;
        k3.ws = g->wo;
        k3.cm = g->cm;
        k3.ho = g->h;
        k3.wo = g->w;
        k3.sh = 1;
        k3.sw = 1;
        k3.pt = 2 - g->pt;
        k3.pl = 2 - g->pl;
        k3.nt = dwc_k3_streams(g->n * g->h * g->w * g->cm * (ptrdiff_t)sizeof(DW_T));
        k3.act = DWC_ACT_NONE;
        k3.pf = dwc_k3_prefetch(g->n * g->ho * g->wo * g->cm * (ptrdiff_t)sizeof(DW_T));
        DW_FN(k3_forward)(&k3, lo, hi);
        return;
    }
    if (g->m == 1 && g->kh == 3 && g->kw == 3 && g->sh == 2 && g->sw == 2) {
        DW_FN(k3_dx2)(g, lo, hi);
        return;
    }
    const DW_T *dy = (const DW_T *)g->dy, *wt = (const DW_T *)g->wt;
    const ptrdiff_t cm = g->cm, c = g->c, m = g->m, sw = g->sw;
    DW_FN(taps) t;
    DW_FN(rowgeo) r;
    r.ws = g->wo;
    r.ssx = 1;
    r.cm = cm;
    r.osx = sw;
    r.bias = NULL;
    for (ptrdiff_t rr = lo; rr < hi; rr++) {
        const ptrdiff_t n = rr / g->h, yy = rr - n * g->h;
        DW_T *dst = m == 1 ? (DW_T *)g->dx + rr * g->w * c : (DW_T *)scratch;
        for (ptrdiff_t p = 0; p < sw && p < g->w; p++) {
            /* dx column p + sw*q takes dy column q + (p + left - b)/sw through tap b, for
             * the b with p + left - b divisible by sw. */
            r.out = dst + p * cm;
            r.nq = (g->w - p + sw - 1) / sw;
            r.pf = NULL;
            r.pf_len = 0;
            if (p == 0 && rr + 1 < hi) {
                /* The dy row that dx row rr + 1 reads and this one does not. */
                const ptrdiff_t s1 = yy + 1 + g->pt;
                if (yy + 1 < g->h && s1 % g->sh == 0 && s1 / g->sh < g->ho) {
                    r.pf = dy + (n * g->ho + s1 / g->sh) * g->wo * cm;
                    r.pf_len = g->wo * cm;
                }
            }
            t.n = 0;
            t.passes = 0;
            for (ptrdiff_t a = 0; a < g->kh; a++) {
                const ptrdiff_t s = yy + g->pt - a;
                if (s < 0 || s % g->sh != 0 || s / g->sh >= g->ho)
                    continue;
                const DW_T *row = dy + (n * g->ho + s / g->sh) * g->wo * cm;
                ptrdiff_t b0 = (p + g->pl) % sw;
                for (ptrdiff_t b = b0; b < g->kw; b += sw)
                    DW_FN(add_tap)(&t, &r, row, (p + g->pl - b) / sw, wt + (a * g->kw + b) * cm);
            }
            DW_FN(finish)(&t, &r);
        }
        if (m != 1) {
            /* dx[.., ch] = sum over m of the row's C*M-channel gradient. */
            DW_T *out = (DW_T *)g->dx + rr * g->w * c;
            for (ptrdiff_t px = 0; px < g->w; px++)
                for (ptrdiff_t ch = 0; ch < c; ch++) {
                    const DW_T *s = dst + (px * c + ch) * m;
                    DW_T v = s[0];
                    for (ptrdiff_t k = 1; k < m; k++)
                        v += s[k];
                    out[px * c + ch] = v;
                }
        }
    }
}

/* --- dW and db: partial blocks [lo, hi) ----------------------------------------------------
 * sum over j in [0, count) of xs0[j*ss*cm + o..] * dy0[j*cm + o..], for one vector of
 * channels, in 4 independent accumulators (the FMA latency), added in a fixed order. */
DWC_INLINE DW_VEC DW_FN(dot_cols)(const DW_T *xs0, ptrdiff_t ss, const DW_T *dy0,
                                  ptrdiff_t cm, ptrdiff_t jhi, ptrdiff_t o, ptrdiff_t lanes)
{
    DW_VEC a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    const ptrdiff_t xs = ss * cm;
    const DW_T *xp = xs0 + o, *dp = dy0 + o;
    ptrdiff_t j = 0;
    if (lanes == DW_VL) {
        for (; j + 4 <= jhi; j += 4) {
            a0 += DW_FN(load)(xp) * DW_FN(load)(dp);
            a1 += DW_FN(load)(xp + xs) * DW_FN(load)(dp + cm);
            a2 += DW_FN(load)(xp + 2 * xs) * DW_FN(load)(dp + 2 * cm);
            a3 += DW_FN(load)(xp + 3 * xs) * DW_FN(load)(dp + 3 * cm);
            xp += 4 * xs;
            dp += 4 * cm;
        }
        for (; j < jhi; j++) {
            a0 += DW_FN(load)(xp) * DW_FN(load)(dp);
            xp += xs;
            dp += cm;
        }
    } else {
        for (; j < jhi; j++) {
            a0 += DW_FN(load_part)(xp, lanes) * DW_FN(load_part)(dp, lanes);
            xp += xs;
            dp += cm;
        }
    }
    return (a0 + a1) + (a2 + a3);
}

DWC_INLINE void DW_FN(add_to)(DW_T *p, DW_VEC v, ptrdiff_t lanes)
{
    if (lanes == DW_VL)
        DW_FN(store)(p, DW_FN(load)(p) + v);
    else
        DW_FN(store_part)(p, DW_FN(load_part)(p, lanes) + v, lanes);
}

/* Column range [*jlo, *jhi) of the output pixels whose tap b reads inside the row. */
DWC_INLINE void DW_FN(tap_cols)(const dwc_job *g, ptrdiff_t b, ptrdiff_t *jlo, ptrdiff_t *jhi)
{
    const ptrdiff_t shift = g->pl - b;
    *jlo = shift > 0 ? (shift + g->sw - 1) / g->sw : 0;
    ptrdiff_t hi = g->w - 1 + shift >= 0 ? (g->w - 1 + shift) / g->sw + 1 : 0;
    *jhi = hi > g->wo ? g->wo : hi;
}

/* dW rows of NB taps (a, b0 .. b0+NB-1) of one input row, channels [o, o + lanes): over
 * the pixels where all NB taps are inside the row, one dy load feeds NB multiply-adds
 * into accumulators held in registers for the whole row (two sets: the FMA latency); the
 * few border pixels of each tap follow, then the sums are added to the partial. */
DWC_INLINE void DW_FN(dw_taps)(const dwc_job *g, const DW_T *row, const DW_T *dyr,
                               ptrdiff_t b0, DW_T *pw, ptrdiff_t o, ptrdiff_t lanes,
                               const int NB)
{
    const ptrdiff_t cm = g->cm, xs = g->sw * cm;
    const int full = lanes == DW_VL;
    ptrdiff_t lo_t[4], hi_t[4], jlo = 0, jhi = g->wo;
    for (int t = 0; t < NB; t++) {
        DW_FN(tap_cols)(g, b0 + t, &lo_t[t], &hi_t[t]);
        jlo = lo_t[t] > jlo ? lo_t[t] : jlo;
        jhi = hi_t[t] < jhi ? hi_t[t] : jhi;
    }
    if (jhi < jlo)
        jhi = jlo;
    DW_VEC acc0[4], acc1[4];
    for (int t = 0; t < NB; t++)
        acc0[t] = acc1[t] = (DW_VEC){0};
    ptrdiff_t j = jlo;
    if (j < jhi) {
        const DW_T *xp = row + (jlo * g->sw - (g->pl - b0)) * cm + o, *dp = dyr + jlo * cm + o;
        for (; j + 2 <= jhi; j += 2) {
            const DW_VEC d0 = full ? DW_FN(load)(dp) : DW_FN(load_part)(dp, lanes);
            const DW_VEC d1 = full ? DW_FN(load)(dp + cm) : DW_FN(load_part)(dp + cm, lanes);
            for (int t = 0; t < NB; t++) {
                acc0[t] += (full ? DW_FN(load)(xp + t * cm) : DW_FN(load_part)(xp + t * cm, lanes)) * d0;
                acc1[t] += (full ? DW_FN(load)(xp + xs + t * cm)
                                 : DW_FN(load_part)(xp + xs + t * cm, lanes)) * d1;
            }
            xp += 2 * xs;
            dp += 2 * cm;
        }
        if (j < jhi) {
            const DW_VEC d0 = full ? DW_FN(load)(dp) : DW_FN(load_part)(dp, lanes);
            for (int t = 0; t < NB; t++)
                acc0[t] += (full ? DW_FN(load)(xp + t * cm) : DW_FN(load_part)(xp + t * cm, lanes)) * d0;
        }
    }
    for (int t = 0; t < NB; t++) {
        DW_VEC sum = acc0[t] + acc1[t];
        const ptrdiff_t shift = g->pl - b0 - t;
        /* Border pixels of this tap: [lo_t, jlo) and [jhi, hi_t) within its own range. */
        const ptrdiff_t e1 = jlo < hi_t[t] ? jlo : hi_t[t];
        if (lo_t[t] < e1)
            sum += DW_FN(dot_cols)(row + (lo_t[t] * g->sw - shift) * cm, g->sw,
                                   dyr + lo_t[t] * cm, cm, e1 - lo_t[t], o, lanes);
        const ptrdiff_t s2 = jhi > lo_t[t] ? jhi : lo_t[t];
        if (s2 < hi_t[t])
            sum += DW_FN(dot_cols)(row + (s2 * g->sw - shift) * cm, g->sw, dyr + s2 * cm, cm,
                                   hi_t[t] - s2, o, lanes);
        DW_FN(add_to)(pw + t * cm + o, sum, lanes);
    }
}

DWC_INLINE void DW_FN(dw_taps_all)(const dwc_job *g, const DW_T *row, const DW_T *dyr,
                                   ptrdiff_t b0, DW_T *pw, const int NB)
{
    const ptrdiff_t cm = g->cm;
    ptrdiff_t o = 0;
    for (; o + DW_VL <= cm; o += DW_VL)
        DW_FN(dw_taps)(g, row, dyr, b0, pw, o, DW_VL, NB);
    if (o < cm)
        DW_FN(dw_taps)(g, row, dyr, b0, pw, o, cm - o, NB);
}

/* dW (and db) of one row's channel vector: acc[3*a + b] += sum_q s[a][q*SW - pl + b] * dy[q],
 * dbacc += sum_q dy[q]; the interior with a sliding window of x in registers. */
/* dW and db of a wrapped chunk (k3_wrap; column stride 1): pixel P of one dy row, into the
 * lanes WLO from position P + 1 and the others from position P (each lane its own pixel's
 * sums, in k3_dwspan's order: db, then the taps inside by kernel row and column). */
DWC_INLINE void DW_FN(k3_dw_wrap_pixel)(const DW_T *const *s, const DW_T *dyr, DW_VEC *acc,
                                        DW_VEC *dbacc, ptrdiff_t cm, ptrdiff_t ws,
                                        ptrdiff_t pl, ptrdiff_t P, unsigned wlo, const int MASK)
{
    for (int g = 0; g < 2; g++) {
        const unsigned m = g ? wlo : DW_ALL & ~wlo;
        const ptrdiff_t pos = P + g;   /* the position holding pixel P in lanes m */
        const DW_VEC dv = DW_FN(load_m)(dyr + pos * cm, m);
        *dbacc = DW_FN(add_m)(*dbacc, dv, m);
        for (int a = 0; a < 3; a++) {
            if (!(MASK >> a & 1))
                continue;
            for (int b = 0; b < 3; b++) {
                const ptrdiff_t col = P - pl + b;
                if (col >= 0 && col < ws)
                    acc[3 * a + b] = DW_FN(fma_m)(acc[3 * a + b],
                                                  DW_FN(load_m)(s[a] + (col + g) * cm, m), dv, m);
            }
        }
    }
}

/* A wrapped chunk's interior position q of one dy row whose pixels are inside in the lanes
 * m only (the first position: pixel q_lo's; the last: pixel q_hi - 1's). */
DWC_INLINE void DW_FN(k3_dw_wrap_end)(const DW_T *const *s, const DW_T *dyr, DW_VEC *acc,
                                      DW_VEC *db, ptrdiff_t cm, ptrdiff_t pl, ptrdiff_t q,
                                      unsigned m, const int MASK)
{
    const DW_VEC dv = DW_FN(load_m)(dyr + q * cm, m);
    *db = DW_FN(add_m)(*db, dv, m);
    for (int a = 0; a < 3; a++) {
        if (!(MASK >> a & 1))
            continue;
        for (int b = 0; b < 3; b++)
            acc[3 * a + b] = DW_FN(fma_m)(acc[3 * a + b],
                                          DW_FN(load_m)(s[a] + (q - pl + b) * cm, m), dv, m);
    }
}

/* k3_dwspan's interior: pixels [q_lo, q_hi), every tap inside the row. */
DWC_INLINE void DW_FN(k3_dwspan_inner)(const DW_T *const *s, const DW_T *dyr, DW_VEC *acc,
                                       DW_VEC *dbacc, ptrdiff_t cm, ptrdiff_t q_lo,
                                       ptrdiff_t q_hi, ptrdiff_t pl, ptrdiff_t lanes,
                                       const int MASK, const int SW)
{
    const int full = lanes == DW_VL;
    DW_VEC x0[3], x1[3], x2[3], db = *dbacc;
    const DW_T *p[3];
    for (int a = 0; a < 3; a++) {
        if (!(MASK >> a & 1))
            continue;
        p[a] = s[a] + (q_lo * SW - pl) * cm;
        x0[a] = DW_LD(p[a]);
        if (SW == 1)
            x1[a] = DW_LD(p[a] + cm);
    }
    const DW_T *dp = dyr + q_lo * cm;
    for (ptrdiff_t q = q_lo; q < q_hi; q++) {
        const DW_VEC dv = DW_LD(dp);
        db += dv;
        for (int a = 0; a < 3; a++) {
            if (!(MASK >> a & 1))
                continue;
            if (SW != 1)
                x1[a] = DW_LD(p[a] + cm);
            x2[a] = DW_LD(p[a] + 2 * cm);
            acc[3 * a] += x0[a] * dv;
            acc[3 * a + 1] += x1[a] * dv;
            acc[3 * a + 2] += x2[a] * dv;
            if (SW == 1) {
                x0[a] = x1[a];
                x1[a] = x2[a];
            } else {
                x0[a] = x2[a];
            }
            p[a] += SW * cm;
        }
        dp += cm;
    }
    *dbacc = db;
}

/* dW and db of one dy row (channels of s[a] and dyr): the border pixels, each tap inside
 * the row on its own, then (INNER) the interior. A wrapped chunk (WLO, column stride 1):
 * each border pixel from its two positions, then the interior's positions q_lo (pixel
 * q_lo in the lanes above WLO), q_lo + 1 .. q_hi - 1 (whole vectors) and q_hi (pixel
 * q_hi - 1 in the lanes of WLO): every lane its pixels in the same order. */
DWC_INLINE void DW_FN(k3_dwspan)(const DW_T *const *s, const DW_T *dyr, DW_VEC *acc,
                                 DW_VEC *dbacc, ptrdiff_t cm, ptrdiff_t ws, ptrdiff_t nq,
                                 ptrdiff_t q_lo, ptrdiff_t q_hi, ptrdiff_t pl, ptrdiff_t lanes,
                                 unsigned wlo, const int MASK, const int SW, const int INNER)
{
    const int full = lanes == DW_VL;
    const int wrap = SW == 1 && wlo;
    for (ptrdiff_t q = 0; q < nq; q++) {
        if (q == q_lo)
            q = q_hi;
        if (q >= nq)
            break;
        if (wrap) {
            DW_FN(k3_dw_wrap_pixel)(s, dyr, acc, dbacc, cm, ws, pl, q, wlo, MASK);
            continue;
        }
        const DW_VEC dv = DW_LD(dyr + q * cm);
        *dbacc += dv;
        for (int a = 0; a < 3; a++) {
            if (!(MASK >> a & 1))
                continue;
            for (int b = 0; b < 3; b++) {
                const ptrdiff_t col = q * SW - pl + b;
                if (col >= 0 && col < ws)
                    acc[3 * a + b] += DW_LD(s[a] + col * cm) * dv;
            }
        }
    }
    if (!INNER || q_lo >= q_hi)
        return;
    if (wrap) {
        DW_FN(k3_dw_wrap_end)(s, dyr, acc, dbacc, cm, pl, q_lo, DW_ALL & ~wlo, MASK);
        DW_FN(k3_dwspan_inner)(s, dyr, acc, dbacc, cm, q_lo + 1, q_hi, pl, lanes, MASK, SW);
        DW_FN(k3_dw_wrap_end)(s, dyr, acc, dbacc, cm, pl, q_hi, wlo, MASK);
    } else {
        DW_FN(k3_dwspan_inner)(s, dyr, acc, dbacc, cm, q_lo, q_hi, pl, lanes, MASK, SW);
    }
}

/* dW and db of two dy rows' interior at once (both with all 3 kernel rows inside): x rows
 * s[0 .. SH+2], dy row 0 pairs with s[0..2], dy row 1 with s[SH .. SH+2]; each x vector is
 * loaded once for both (k3_dwspan, row by row, loads 3 x vectors and 1 dy vector per 9
 * multiply-adds; here SH + 3 x and 2 dy vectors per 18: 8x112x112x32 dW 0.256 -> 0.202 ms
 * at batch 2, 1.77 -> 1.37 at batch 8, C harness). Per pixel, row 0's products first. */
DWC_INLINE void DW_FN(k3_dwpair)(const DW_T *const *s, const DW_T *dy0, const DW_T *dy1,
                                 DW_VEC *acc, DW_VEC *dbacc, ptrdiff_t cm, ptrdiff_t q_lo,
                                 ptrdiff_t q_hi, ptrdiff_t pl, ptrdiff_t lanes, int peel,
                                 const int SH, const int SW)
{
    const int full = lanes == DW_VL;
    const int NRW = SH + 3;
    DW_VEC x0[5], x1[5], x2[5], db = *dbacc, a9[9];
    const DW_T *p[5];
    for (int t = 0; t < 9; t++)
        a9[t] = acc[t];
    for (int a = 0; a < NRW; a++) {
        p[a] = s[a] + (q_lo * SW - pl) * cm;
        x0[a] = DW_LD(p[a]);
        if (SW == 1)
            x1[a] = DW_LD(p[a] + cm);
    }
    ptrdiff_t off = q_lo * cm;
    if (SW == 1 && peel) {
        /* The border pixels 0 and q_hi of both rows, in k3_dwspan's order (row 0's left and
         * right, then row 1's; per pixel db, then the taps inside by kernel row and
         * column): pixel 0 reads columns 0 and 1 (x0, x1), pixel q_hi columns q_hi - 1
         * and q_hi. */
        const ptrdiff_t r_off = q_hi * cm;
        for (int row = 0; row < 2; row++) {
            const DW_T *dyr = row ? dy1 : dy0;
            const int base = row ? SH : 0;
            DW_VEC dv = DW_LD(dyr);
            db += dv;
            for (int a = 0; a < 3; a++) {
                a9[3 * a + 1] += x0[a + base] * dv;
                a9[3 * a + 2] += x1[a + base] * dv;
            }
            dv = DW_LD(dyr + r_off);
            db += dv;
            for (int a = 0; a < 3; a++) {
                const DW_T *xr = p[a + base] + (q_hi - 1) * cm;   /* p: column 0 */
                a9[3 * a] += DW_LD(xr) * dv;
                a9[3 * a + 1] += DW_LD(xr + cm) * dv;
            }
        }
    }
    for (ptrdiff_t q = q_lo; q < q_hi; q++) {
        const DW_VEC d0 = DW_LD(dy0 + off), d1 = DW_LD(dy1 + off);
        for (int a = 0; a < NRW; a++) {
            if (SW != 1)
                x1[a] = DW_LD(p[a] + cm);
            x2[a] = DW_LD(p[a] + 2 * cm);
        }
        db += d0;
        db += d1;
        for (int a = 0; a < 3; a++) {
            a9[3 * a] += x0[a] * d0;
            a9[3 * a + 1] += x1[a] * d0;
            a9[3 * a + 2] += x2[a] * d0;
            a9[3 * a] += x0[a + SH] * d1;
            a9[3 * a + 1] += x1[a + SH] * d1;
            a9[3 * a + 2] += x2[a + SH] * d1;
        }
        for (int a = 0; a < NRW; a++) {
            if (SW == 1) {
                x0[a] = x1[a];
                x1[a] = x2[a];
            } else {
                x0[a] = x2[a];
            }
            p[a] += SW * cm;
        }
        off += cm;
    }
    for (int t = 0; t < 9; t++)
        acc[t] = a9[t];
    *dbacc = db;
}

/* The first flattened dx row whose last dy row (dy row floor((y + pt) / sh), clipped to
 * the image's last) is >= flattened dy row r: the dx rows of dy rows [r0, r1) are
 * [dx_row_of(r0), dx_row_of(r1)), and these ranges tile dx as r runs over the dy rows. */
DWC_INLINE ptrdiff_t DW_FN(dx_row_of)(const dwc_job *g, ptrdiff_t r)
{
    const ptrdiff_t n = r / g->ho, i = r - n * g->ho;
    ptrdiff_t y = i * g->sh - g->pt;
    y = y < 0 ? 0 : y > g->h ? g->h : y;
    return n * g->h + y;
}

/* dW and db partial of output rows [r0, r1) (k->src is x, k->out unused): added to part
 * ((9 + 1) rows of cm), band by band, each band's sums added in a fixed order. With gx
 * (the FUSED backward), after each band the dx rows whose last dy row is in the band
 * (dx_row_of) run, by dx_rows, while the band's dy rows are still in L2: dy comes from
 * memory once for both. The same kernels on the same rows: dW and dx are the bits of
 * the separate passes (the dx kernels' results do not depend on the row range). */
/* dW and db of dy row r (and the next with it when r->pair: the return value is the rows
 * taken), channels [o, o + lanes), added into acc[9] and *dbacc. */
DWC_INLINE int DW_FN(k3_dw_step)(const DW_FN(k3geo) *k, const DW_FN(k3row) *r,
                                 const DW_T *dyr0, ptrdiff_t o, ptrdiff_t lanes, unsigned wlo,
                                 ptrdiff_t q_lo, ptrdiff_t q_hi, int peel, DW_VEC *acc,
                                 DW_VEC *dbacc)
{
    const ptrdiff_t cm = k->cm;
    const int mask = r->mask;
    const DW_T *s[3] = {r->s[0] + o, r->s[1] + o, r->s[2] + o};
    const DW_T *dyr = dyr0 + o;
    if (r->pair) {
        /* dy rows r and r + 1: their borders one row at a time, the interior as a pair. */
        const DW_T *s2[5];
        for (int a = 0; a < 3 + (int)k->sh; a++)
            s2[a] = s[0] + a * k->ws * cm;
        const DW_T *t[3] = {s2[k->sh], s2[k->sh + 1], s2[k->sh + 2]};
        const DW_T *dyr1 = dyr + k->wo * cm;
#define DW_CALLB(S, LN)                                                                     \
    {                                                                                       \
        if (!(S == 1 && peel) || wlo) {                                                     \
            DW_FN(k3_dwspan)(s, dyr, acc, dbacc, cm, k->ws, k->wo, q_lo, q_hi, k->pl, LN,    \
                             wlo, 7, S, 0);                                                 \
            DW_FN(k3_dwspan)(t, dyr1, acc, dbacc, cm, k->ws, k->wo, q_lo, q_hi, k->pl, LN,   \
                             wlo, 7, S, 0);                                                 \
        }                                                                                   \
    }
#define DW_CALLP(SH, S, LN)                                                                 \
    do {                                                                                    \
        if (!(S == 1 && wlo)) {                                                             \
            DW_FN(k3_dwpair)(s2, dyr, dyr1, acc, dbacc, cm, q_lo, q_hi, k->pl, LN, peel, SH, \
                             S);                                                            \
        } else if (q_lo < q_hi) {   /* k3_dwspan's wrapped interior, the two rows a pair */ \
            const unsigned whi_ = DW_ALL & ~wlo;                                            \
            DW_FN(k3_dw_wrap_end)(s, dyr, acc, dbacc, cm, k->pl, q_lo, whi_, 7);            \
            DW_FN(k3_dw_wrap_end)(t, dyr1, acc, dbacc, cm, k->pl, q_lo, whi_, 7);           \
            if (q_lo + 1 < q_hi)                                                            \
                DW_FN(k3_dwpair)(s2, dyr, dyr1, acc, dbacc, cm, q_lo + 1, q_hi, k->pl, LN,  \
                                 0, SH, S);                                                 \
            DW_FN(k3_dw_wrap_end)(s, dyr, acc, dbacc, cm, k->pl, q_hi, wlo, 7);             \
            DW_FN(k3_dw_wrap_end)(t, dyr1, acc, dbacc, cm, k->pl, q_hi, wlo, 7);            \
        }                                                                                   \
    } while (0)
        DW_K3_PAIR(DW_CALLB, DW_CALLP)
#undef DW_CALLP
#undef DW_CALLB
        return 2;
    }
#define DW_CALL(M, S, LN) DW_FN(k3_dwspan)(s, dyr, acc, dbacc, cm, k->ws, k->wo, q_lo, q_hi, k->pl, LN, wlo, M, S, 1)
    if (lanes == DW_VL) {
        DW_K3_SWITCH(DW_CALL, DW_VL)
    } else {
        DW_K3_SWITCH(DW_CALL, lanes)
    }
#undef DW_CALL
    return 1;
}

/* A prefetch queue: lines from p to end, step bytes per dy row taken. */
typedef struct {
    const char *p, *end;
    ptrdiff_t step;
} DW_FN(k3pf);

/* Adds v to p's lanes (a wrapped chunk's, WLO: those lanes at p + cm, the others at p). */
DWC_INLINE void DW_FN(add_to_wrap)(DW_T *p, DW_VEC v, ptrdiff_t cm, unsigned wlo)
{
    DW_FN(store_m)(p + cm, DW_FN(load_m)(p + cm, wlo) + v, wlo);
    DW_FN(store_m)(p, DW_FN(load_m)(p, DW_ALL & ~wlo) + v, DW_ALL & ~wlo);
}

/* One channel chunk (o, lanes; WLO: a wrapped chunk's mask, k3_wrap) of dW and db over a
 * band's dy rows [b0, b1), added to part; the two prefetch queues (x, dy) advanced. */
DWC_INLINE void DW_FN(k3_dw_chunk)(const DW_FN(k3geo) *k, const DW_FN(k3row) *rows,
                                   const DW_T *dy, DW_T *part, ptrdiff_t b0, ptrdiff_t b1,
                                   ptrdiff_t o, ptrdiff_t lanes, unsigned wlo, ptrdiff_t q_lo,
                                   ptrdiff_t q_hi, int peel, int with_db, DW_FN(k3pf) *pfs)
{
    const ptrdiff_t cm = k->cm;
    DW_VEC acc[9], dbacc = {0};
    for (int t = 0; t < 9; t++)
        acc[t] = (DW_VEC){0};
    for (ptrdiff_t rr = b0; rr < b1;) {
        const int took = DW_FN(k3_dw_step)(k, &rows[rr - b0], dy + rr * k->wo * cm, o, lanes,
                                           wlo, q_lo, q_hi, peel, acc, &dbacc);
        for (int i = 0; i < 2; i++) {
            DW_FN(k3pf) *q = &pfs[i];
            if (q->p) {
                const char *stop = q->p + took * q->step;
                stop = stop < q->end ? stop : q->end;
                for (; q->p < stop; q->p += 64)
                    __builtin_prefetch(q->p, 0, 2);
            }
        }
        rr += took;
    }
    for (int t = 0; t < 9; t++) {
        if (wlo)
            DW_FN(add_to_wrap)(part + t * cm + o, acc[t], cm, wlo);
        else
            DW_FN(add_to)(part + t * cm + o, acc[t], lanes);
    }
    if (with_db) {
        if (wlo)
            DW_FN(add_to_wrap)(part + 9 * cm + o, dbacc, cm, wlo);
        else
            DW_FN(add_to)(part + 9 * cm + o, dbacc, lanes);
    }
}

/* A wrapped chunk, compiled apart (as k3_band_wrapped). */
static __attribute__((noinline)) void DW_FN(k3_dw_wrapped)(
    const DW_FN(k3geo) *k, const DW_FN(k3row) *rows, const DW_T *dy, DW_T *part, ptrdiff_t b0,
    ptrdiff_t b1, ptrdiff_t o, unsigned wlo, ptrdiff_t q_lo, ptrdiff_t q_hi, int peel,
    int with_db, DW_FN(k3pf) *pfs)
{
    DW_FN(k3_dw_chunk)(k, rows, dy, part, b0, b1, o, DW_VL, wlo, q_lo, q_hi, peel, with_db,
                       pfs);
}

/* dW and db partial of output rows [r0, r1) (k->src is x, k->out unused): added to part
 * ((9 + 1) rows of cm), band by band, each band's sums added in a fixed order. With gx
 * (the FUSED backward), after each band the dx rows whose last dy row is in the band
 * (dx_row_of) run, by dx_rows, while the band's dy rows are still in L2: dy comes from
 * memory once for both. The same kernels on the same rows: dW and dx are the bits of
 * the separate passes (the dx kernels' results do not depend on the row range). */
static void DW_FN(k3_dw)(const DW_FN(k3geo) *k, const DW_T *dy, DW_T *part, ptrdiff_t r0,
                         ptrdiff_t r1, int with_db, const dwc_job *gx)
{
    const ptrdiff_t cm = k->cm, band = DW_FN(k3_band_rows)(k->sh, k->ws, k->wo, cm);
    const ptrdiff_t row_bytes = k->ws * cm * (ptrdiff_t)sizeof(DW_T);
    /* The short first chunk aligns x's loads (SH + 3 per step, against dy's 2), and dy's
     * too when dy shares x's offset: with x 16 and dy 48 bytes past a line (the head was
     * for equal offsets only), 8x28x28x192 dW 0.36 -> 0.28 ms, 14x14x384 0.173 -> 0.151,
     * 14x14x576 s2 0.123 -> 0.096, 7x7x960 0.124 -> 0.103 (C harness, min of 3
     * alternating runs). dW's sums are the same bits however the channels are chunked. */
    const ptrdiff_t head = DW_FN(k3_head)(k->src, k->src, cm,
                                          dwc_k3_realign_vectors(1, k->sw, 0));
    const unsigned wrap = DW_FN(k3_wrap)(head, k->sw);
    const ptrdiff_t nvec = wrap ? cm / DW_VL : (cm - head + DW_VL - 1) / DW_VL + (head > 0);
    /* (Pairs for a pixel of <= 256 or > 576 bytes: at batch 8, interleaved with the
     * row-by-row code, 112x112x32 (128 bytes) -12% backward, 112x112x96 s2 (384) the
     * same, 56x56x144 (576, streamed from memory) +5-8%; dW alone, C harness: 28x28x192
     * -4%, 14x14x384 -6%, 14x14x576 s2 -4%, 7x7x960 -6%.) */
    const ptrdiff_t pix = cm * (ptrdiff_t)sizeof(DW_T);
    const int pairs = DW_VBYTES == 64 && (pix <= 256 || pix > 576);
    ptrdiff_t q_lo, q_hi;
    DW_FN(k3_interior)(k->ws, k->wo, k->pl, k->sw, &q_lo, &q_hi);
    const int peel = DW_FN(k3_peels)(k, q_lo, q_hi);   /* k3_dwpair's border pixels */
    for (ptrdiff_t b0 = r0; b0 < r1; b0 += band) {
        const ptrdiff_t b1 = b0 + band < r1 ? b0 + band : r1;
        const char *pf = NULL, *pf_end = NULL, *dpf = NULL, *dpf_end = NULL;
        ptrdiff_t pf_step = 0, dpf_step = 0;
        if (k->pf && b1 < r1) {
            /* The next band's x rows beyond this band's, and its dy rows (k->pf: x and dy
             * from memory). */
            ptrdiff_t f0, f1, g0, g1;
            DW_FN(k3_src_span)(k, b0, b1, &f0, &f1);
            DW_FN(k3_src_span)(k, b1, b1 + band < r1 ? b1 + band : r1, &g0, &g1);
            g0 = g0 > f1 ? g0 : f1;
            if (g0 < g1) {
                pf = (const char *)k->src + g0 * row_bytes;
                pf_end = (const char *)k->src + g1 * row_bytes;
                const ptrdiff_t steps = nvec * (b1 - b0);
                pf_step = ((pf_end - pf) / 64 + steps - 1) / steps * 64;
            }
            const ptrdiff_t b2 = b1 + band < r1 ? b1 + band : r1;
            dpf = (const char *)(dy + b1 * k->wo * cm);
            dpf_end = (const char *)(dy + b2 * k->wo * cm);
            const ptrdiff_t steps = nvec * (b1 - b0);
            dpf_step = ((dpf_end - dpf) / 64 + steps - 1) / steps * 64;
        }
        DW_FN(k3row) rows[64];   /* k3_band_rows: at most 64 */
        DW_FN(k3_band_geometry)(k, b0, b1, pairs, rows);
        DW_FN(k3pf) pfs[2] = {{pf, pf_end, pf_step}, {dpf, dpf_end, dpf_step}};
        DW_CHUNKS_W(o, lanes, head, wrap, cm) {
            if (o < 0)
                DW_FN(k3_dw_wrapped)(k, rows, dy, part, b0, b1, o, wrap, q_lo, q_hi, peel,
                                     with_db, pfs);
            else
                DW_FN(k3_dw_chunk)(k, rows, dy, part, b0, b1, o, lanes, 0u, q_lo, q_hi, peel,
                                   with_db, pfs);
        }
        if (gx)
            DW_FN(dx_rows)(gx, DW_FN(dx_row_of)(gx, b0), DW_FN(dx_row_of)(gx, b1), NULL);
    }
}

#undef DW_K3_SWITCH
#undef DW_K3_PAIR
#undef DW_LD
#undef DW_CHUNKS_W

/* dW partial blocks [lo, hi); with fuse (3x3, M = 1, column stride <= 2 only: k3_dw),
 * dx too: the dx rows of each band of the blocks' dy rows, after the band's dW. */
DWC_INLINE void DW_FN(dw_blocks_impl)(const dwc_job *g, ptrdiff_t lo, ptrdiff_t hi,
                                      void *scratch, int fuse)
{
    const DW_T *x = (const DW_T *)g->x, *dy = (const DW_T *)g->dy;
    const ptrdiff_t cm = g->cm, rows = g->n * g->ho, ntap = g->kh * g->kw;
    for (ptrdiff_t blk = lo; blk < hi; blk++) {
        DW_T *part = (DW_T *)g->part + blk * (ntap + 1) * cm;
        memset(part, 0, (size_t)((ntap + 1) * cm) * sizeof(DW_T));
        const ptrdiff_t r1 = (blk + 1) * g->block_rows < rows ? (blk + 1) * g->block_rows : rows;
        if (g->m == 1 && g->kh == 3 && g->kw == 3 && g->sw <= 2) {
            DW_FN(k3geo) k3;
            k3.src = x;
            k3.out = NULL;
            k3.bias = NULL;
            for (int t = 0; t < 9; t++)
                k3.wk[t] = NULL;
            k3.hs = g->h;
            k3.ws = g->w;
            k3.cm = cm;
            k3.ho = g->ho;
            k3.wo = g->wo;
            k3.sh = g->sh;
            k3.sw = g->sw;
            k3.pt = g->pt;
            k3.pl = g->pl;
            k3.nt = 0;
            k3.act = DWC_ACT_NONE;
            k3.pf = dwc_k3_prefetch((g->h * g->w + g->ho * g->wo) * g->n * g->cm
                                    * (ptrdiff_t)sizeof(DW_T));   /* x and dy */
            DW_FN(k3_dw)(&k3, dy, part, blk * g->block_rows, r1, g->with_db, fuse ? g : NULL);
            continue;
        }
        for (ptrdiff_t rr = blk * g->block_rows; rr < r1; rr++) {
            const ptrdiff_t n = rr / g->ho, i = rr - n * g->ho;
            const DW_T *dyr = dy + rr * g->wo * cm;
            if (g->m == 1 && rr + 1 < r1) {
                /* The x row that output row rr + 1 reads first: prefetched now. */
                ptrdiff_t y1 = (i + 1 < g->ho ? i + 1 : 0) * g->sh - g->pt + g->kh - 1;
                ptrdiff_t y0 = y1 - (g->sh < g->kh ? g->sh : g->kh) + 1;
                const ptrdiff_t n1 = i + 1 < g->ho ? n : n + 1;
                y0 = y0 < 0 ? 0 : y0;
                y1 = y1 >= g->h ? g->h - 1 : y1;
                if (y0 <= y1) {
                    const char *p = (const char *)(x + (n1 * g->h + y0) * g->w * cm);
                    const char *e = (const char *)(x + (n1 * g->h + y1 + 1) * g->w * cm);
                    for (; p < e; p += 64)
                        __builtin_prefetch(p, 0, 2);
                }
            }
            if (g->with_db) {
                /* db: the row's dy summed. */
                for (ptrdiff_t o = 0; o < cm; o += DW_VL) {
                    const ptrdiff_t lanes = cm - o < DW_VL ? cm - o : DW_VL;
                    DW_VEC s = {0}, s1 = {0};
                    ptrdiff_t j = 0;
                    if (lanes == DW_VL) {
                        for (; j + 2 <= g->wo; j += 2) {
                            s += DW_FN(load)(dyr + j * cm + o);
                            s1 += DW_FN(load)(dyr + (j + 1) * cm + o);
                        }
                        for (; j < g->wo; j++)
                            s += DW_FN(load)(dyr + j * cm + o);
                    } else {
                        for (; j < g->wo; j++)
                            s += DW_FN(load_part)(dyr + j * cm + o, lanes);
                    }
                    DW_FN(add_to)(part + ntap * cm + o, s + s1, lanes);
                }
            }
            for (ptrdiff_t a = 0; a < g->kh; a++) {
                const ptrdiff_t yy = i * g->sh - g->pt + a;
                if (yy < 0 || yy >= g->h)
                    continue;
                const DW_T *row;
                if (g->m == 1) {
                    row = x + (n * g->h + yy) * g->w * cm;
                } else {
                    DW_T *buf = (DW_T *)scratch;
                    DW_FN(expand_row)(g, n, yy, buf);
                    row = buf;
                }
                DW_T *pa = part + a * g->kw * cm;
                /* The kernel row's taps in groups of up to 4 (kw = 3: one group of 3). */
                for (ptrdiff_t b0 = 0; b0 < g->kw; b0 += 4) {
                    const ptrdiff_t nb = g->kw - b0 < 4 ? g->kw - b0 : 4;
                    if (nb == 4)
                        DW_FN(dw_taps_all)(g, row, dyr, b0, pa + b0 * cm, 4);
                    else if (nb == 3)
                        DW_FN(dw_taps_all)(g, row, dyr, b0, pa + b0 * cm, 3);
                    else if (nb == 2)
                        DW_FN(dw_taps_all)(g, row, dyr, b0, pa + b0 * cm, 2);
                    else
                        DW_FN(dw_taps_all)(g, row, dyr, b0, pa + b0 * cm, 1);
                }
            }
        }
    }
}

static void DW_FN(dw_blocks)(const dwc_job *g, ptrdiff_t lo, ptrdiff_t hi, void *scratch)
{
    DW_FN(dw_blocks_impl)(g, lo, hi, scratch, 0);
}

/* The fused backward (3x3, M = 1, column stride <= 2): dW partial blocks [lo, hi) and
 * the dx rows of their dy rows. */
static void DW_FN(bwd_blocks)(const dwc_job *g, ptrdiff_t lo, ptrdiff_t hi, void *scratch)
{
    DW_FN(dw_blocks_impl)(g, lo, hi, scratch, 1);
}

#undef DW_ALL
#undef DW_VEC
#undef DW_NP
#undef DW_VL
#undef DW_FN
#undef DW_CAT
#undef DW_CAT_
#undef DW_T
#undef DW_SFX
#undef DW_VBYTES
#undef DW_STREAMED_ROWS
