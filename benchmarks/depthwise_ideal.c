/* What a 3x3 depthwise forward's FLOPs and bytes cost on this machine at best: the
 * fewest instructions its work needs (each output vector: one x vector loaded, 9
 * multiply-adds with the weights in registers, one store), with no neighbours, borders
 * or accumulators carried between rows, x and y walked in memory order (pixel after
 * pixel, every channel vector of each: the order the hardware prefetchers follow best).
 *
 * The results are not a convolution (every output takes its one x vector's 9 products):
 * only the times mean anything. Built and driven by benchmarks/depthwise_ideal.py:
 *
 *   gcc -O3 -march=x86-64-v4 -shared -fPIC -o /tmp/dwideal.so benchmarks/depthwise_ideal.c
 *
 * w holds 10 vectors: 9 taps, then the bias. */
#include <immintrin.h>
#include <stddef.h>

#define LOAD_W                                                                              \
    const __m512 bb = _mm512_loadu_ps(w + 144), w0 = _mm512_loadu_ps(w),                     \
                 w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32),                 \
                 w3 = _mm512_loadu_ps(w + 48), w4 = _mm512_loadu_ps(w + 64),                 \
                 w5 = _mm512_loadu_ps(w + 80), w6 = _mm512_loadu_ps(w + 96),                 \
                 w7 = _mm512_loadu_ps(w + 112), w8 = _mm512_loadu_ps(w + 128);
/* X's 9 taps into U sums, tap by tap (U independent chains hide the FMA latency). */
#define NINE_TAPS(U, A, X)                                                                  \
    _Pragma("GCC unroll 16") for (int u = 0; u < U; u++) A[u] = _mm512_fmadd_ps(X[u], w0, bb); \
    TAP(U, A, X, w1) TAP(U, A, X, w2) TAP(U, A, X, w3) TAP(U, A, X, w4)                     \
    TAP(U, A, X, w5) TAP(U, A, X, w6) TAP(U, A, X, w7) TAP(U, A, X, w8)
#define TAP(U, A, X, W)                                                                     \
    _Pragma("GCC unroll 16") for (int u = 0; u < U; u++) A[u] = _mm512_fmadd_ps(X[u], W, A[u]);

/* nvec output vectors, x and y in memory order. */
void ideal_sequential(const float *x, float *y, const float *w, ptrdiff_t nvec)
{
    LOAD_W
    enum { U = 10 };   /* 10 x + 10 sums + 10 weights and bias: 30 of the 32 registers */
    ptrdiff_t i = 0;
    for (; i + U <= nvec; i += U) {
        __m512 v[U], a[U];
#pragma GCC unroll 16
        for (int u = 0; u < U; u++)
            v[u] = _mm512_loadu_ps(x + (i + u) * 16);
        NINE_TAPS(U, a, v)
#pragma GCC unroll 16
        for (int u = 0; u < U; u++)
            _mm512_storeu_ps(y + (i + u) * 16, a[u]);
    }
    for (; i < nvec; i++) {
        __m512 v[1] = {_mm512_loadu_ps(x + i * 16)}, a[1];
        NINE_TAPS(1, a, v)
        _mm512_storeu_ps(y + i * 16, a[0]);
    }
}
