/* The depthwise bands' pair step alone (depthwise_kernels.h's k3_fpair: four source rows
 * loaded at each column, two output rows of 9 multiply-adds each), over one channel
 * vector of every pixel at a time, as a band walks it: does the pixel pitch alone make it
 * slow? (The finding behind depthwise.h's dwc_k3_few_sets.)
 *
 *   gcc -O3 -march=x86-64-v4 -mprefer-vector-width=512 -o /tmp/dwsets benchmarks/depthwise_l1_sets.c
 *   taskset -c 1 /tmp/dwsets H C MODE PF W PIXPAD ROWPAD
 *
 * H x W pixels of C floats (pixel pitch C + PIXPAD floats, row pitch W * that + ROWPAD);
 * MODE 0 stores the outputs, 1 none (sums them), 2 into a small scratch, 3 loads two rows
 * a column ahead, 4 walks TWO channel vectors per pass (their weights from L1, no stores);
 * PF 1 prefetches 4 columns ahead as k3_fpair does. Prints the best of 40
 * timings and ns per output vector. Zen 5, 2026-12-07: 14x14, MODE 1: C 480 1.4-1.8 ns,
 * C 512 3.0-3.2 ns (every line the pass loads in 2 of L1's 64 sets), C 512 with ROWPAD
 * 16 or 64 1.4-1.7 ns (rows a line apart: 8 sets), ROWPAD 256 (4 sets) 2.3, 512 (2 sets) 3.1;
 * C 1024 4.8-6.1 ns, with ROWPAD 16 1.6 ns. Stores, prefetches and the load order make
 * no difference, nor does walking strips of 4-10 pixels of 14-pixel rows (W 4-10,
 * ROWPAD (14 - W) * C: 3.3-4.0 ns): the number of sets counts, not the reuse distance.
 * Two vectors a pass (MODE 4 against 1, H 40): 14x14x512 2.25 against 3.40 ns (480: 1.50
 * against 1.69), 28x28x256 2.13 against 2.82 (240: 1.73 / 1.69), 56x56x128 1.56 against
 * 2.21 (112: 1.73 / 1.67): twice the sets, most of the loss back, and no cost where the
 * sets were enough. In the kernel (k3_fpair over two vectors, with stores, borders and
 * the 32 registers' budget) it did not carry over: 18-39% slower at 28x28x192, 14x14x384
 * and 14x14x480, faster only at 56x56x128 and 28x28x256 stride 2 (benchmarks/README.md,
 * 2026-12-07 night); not landed. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
/* mode 0: full; 1: no stores (xor into sink); 2: stores to a small scratch; 3: no x loads of new rows (reuse same row) */
__attribute__((noinline)) void pass(const float *x, float *y, float *scr, int H, int W, int C, int mode, __m512 *sink, int pf, int RP, int PP)
{
    __m512 w[9]; _Pragma("GCC unroll 9") for (int t = 0; t < 9; t++) w[t] = _mm512_set1_ps(0.1f * t);
    __m512 s = _mm512_setzero_ps();
    if (mode == 4) {
        float wm[9 * 32] __attribute__((aligned(64)));
        for (int i = 0; i < 9 * 32; i++) wm[i] = 0.01f * i;
        for (int o = 0; o < C; o += 32) {
            for (int r = 0; r + 3 < H; r += 2) {
                const float *p[4]; for (int a = 0; a < 4; a++) p[a] = x + (r + a) * RP + o;
                __m512 x0[2][4], x1[2][4], x2[2][4];
                for (int h = 0; h < 2; h++)
                    for (int a = 0; a < 4; a++) { x0[h][a] = _mm512_load_ps(p[a] + 16 * h); x1[h][a] = _mm512_load_ps(p[a] + PP + 16 * h); }
                for (int q = 0; q + 2 < W; q++) {
                    for (int h = 0; h < 2; h++) {
                        for (int a = 0; a < 4; a++) x2[h][a] = _mm512_load_ps(p[a] + (q + 2) * PP + 16 * h);
                        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
                        for (int a = 0; a < 3; a++) {
                            a0 = _mm512_fmadd_ps(x0[h][a], _mm512_load_ps(wm + (3*a) * 32 + 16 * h), a0);
                            a0 = _mm512_fmadd_ps(x1[h][a], _mm512_load_ps(wm + (3*a+1) * 32 + 16 * h), a0);
                            a0 = _mm512_fmadd_ps(x2[h][a], _mm512_load_ps(wm + (3*a+2) * 32 + 16 * h), a0);
                            a1 = _mm512_fmadd_ps(x0[h][a+1], _mm512_load_ps(wm + (3*a) * 32 + 16 * h), a1);
                            a1 = _mm512_fmadd_ps(x1[h][a+1], _mm512_load_ps(wm + (3*a+1) * 32 + 16 * h), a1);
                            a1 = _mm512_fmadd_ps(x2[h][a+1], _mm512_load_ps(wm + (3*a+2) * 32 + 16 * h), a1);
                        }
                        s = _mm512_add_ps(s, _mm512_add_ps(a0, a1));
                        for (int a = 0; a < 4; a++) { x0[h][a] = x1[h][a]; x1[h][a] = x2[h][a]; }
                    }
                }
            }
        }
        *sink = _mm512_add_ps(*sink, s);
        return;
    }
    for (int o = 0; o < C; o += 16) {
        for (int r = 0; r + 3 < H; r += 2) {
            const float *p[4]; _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) p[a] = x + (r + a) * RP + o;
            float *d0 = y + (r + 1) * RP + PP + o, *d1 = d0 + RP;
            if (mode == 2) { d0 = scr + o; d1 = scr + 16 * 64 + o; }
            __m512 x0[4], x1[4], x2[4], xn[4];
            _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) { x0[a] = _mm512_load_ps(p[a]); x1[a] = _mm512_load_ps(p[a] + PP); xn[a] = _mm512_load_ps(p[a] + 2 * PP); }
            for (int q = 0; q + 2 < W; q++) {
                if (mode == 3) {
                    x2[0] = _mm512_load_ps(p[0] + (q + 2) * PP);
                    x2[2] = xn[2]; xn[2] = _mm512_load_ps(p[2] + (q + 3) * PP);
                    x2[1] = _mm512_load_ps(p[1] + (q + 2) * PP);
                    x2[3] = xn[3]; xn[3] = _mm512_load_ps(p[3] + (q + 3) * PP);
                } else
                _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) { if (pf) _mm_prefetch((const char*)(p[a] + (q + 6) * PP), _MM_HINT_T0); x2[a] = _mm512_load_ps(p[a] + (q + 2) * PP); }
                __m512 a0 = w[0], a1 = w[0];
                _Pragma("GCC unroll 4") for (int a = 0; a < 3; a++) {
                    a0 = _mm512_fmadd_ps(x0[a], w[3*a], a0); a0 = _mm512_fmadd_ps(x1[a], w[3*a+1], a0); a0 = _mm512_fmadd_ps(x2[a], w[3*a+2], a0);
                    a1 = _mm512_fmadd_ps(x0[a+1], w[3*a], a1); a1 = _mm512_fmadd_ps(x1[a+1], w[3*a+1], a1); a1 = _mm512_fmadd_ps(x2[a+1], w[3*a+2], a1);
                }
                if (mode == 1 || mode == 3) s = _mm512_add_ps(s, _mm512_add_ps(a0, a1));
                else if (mode == 2) { _mm512_store_ps(d0, a0); _mm512_store_ps(d1, a1); }
                else { _mm512_store_ps(d0 + q * PP, a0); _mm512_store_ps(d1 + q * PP, a1); }
                _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) { x0[a] = x1[a]; x1[a] = x2[a]; }
            }
        }
    }
    *sink = _mm512_add_ps(*sink, s);
}
int main(int argc, char **argv)
{
    int H = atoi(argv[1]), C = atoi(argv[2]), mode = atoi(argv[3]), pf = argc > 4 ? atoi(argv[4]) : 1; int W = argc > 5 ? atoi(argv[5]) : H; int PP = C + (argc > 6 ? atoi(argv[6]) : 0); int RP = W * PP + (argc > 7 ? atoi(argv[7]) : 0);
    size_t n = (size_t)H * RP;
    float *x = aligned_alloc(4096, n * 4 + 8192), *y0 = aligned_alloc(4096, n * 4 + 8192), *scr = aligned_alloc(4096, 65536);
    float *y = y0 + 48; /* three lines past */
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(i % 7);
    memset(y0, 0, n * 4 + 8192);
    __m512 sink = _mm512_setzero_ps();
    int reps = 2000000 / (int)n + 1; double best = 1e9;
    for (int k = 0; k < 40; k++) { double t0 = now(); for (int r = 0; r < reps; r++) pass(x, y, scr, H, W, C, mode, &sink, pf, RP, PP); double t = (now() - t0) / reps; if (t < best) best = t; }
    double outs = (double)(H - 2) * (W - 2) * C / 16;  /* roughly */
    float f[16]; _mm512_storeu_ps(f, sink);
    printf("H=%d W=%d C=%d PP=%d RP=%d mode=%d pf=%d: %.2f us, %.2f ns/vector %s\n", H, W, C, PP, RP, mode, pf, best * 1e6, best * 1e9 / outs, f[0] == 12345 ? "!" : "");
    return 0;
}
