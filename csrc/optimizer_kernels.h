/* Optimizer updates in one pass, vectorised (restrict pointers: w, g, m, v never overlap).
 *
 * Each is the NumPy definition in fastcnn/optimizers.py operation for operation, every
 * intermediate rounded to the data type as NumPy rounds it (the scalars are passed already
 * rounded), and no contraction into FMAs: the build has no -march and no -ffast-math, and
 * sqrt and division are IEEE-exact in SIMD too. So the result is bitwise NumPy's. */
#ifndef FASTCNN_OPTIMIZER_KERNELS_H
#define FASTCNN_OPTIMIZER_KERNELS_H

#include <math.h>
#include <stddef.h>

#include "cpu_isa.h"

/* Each kernel is compiled for the baseline and, on x86, for AVX2 and AVX-512 (run-time
 * dispatch on cpu_isa.h's level): the baseline build's SSE2 passes were bound by sqrt and
 * division (Adam on the from-scratch CNN's 13.5k weights: 7.8 us). The wider builds keep
 * every operation as it is: no FMA contraction (fp-contract=off), and vector sqrt and
 * division are exact, so all builds give the same bits. */
#if defined(__x86_64__) || defined(__i386__)
#define FASTCNN_OPT_X86 1
#define FASTCNN_OPT_AVX2 __attribute__((target("avx2,fma"), optimize("fp-contract=off")))
#define FASTCNN_OPT_AVX512                                                                \
    __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"),                  \
                   optimize("fp-contract=off")))
#endif

static int fastcnn_opt_level(void)
{
    static int level = -1;   /* a benign race: every thread stores the same value */
    if (level < 0)
        level = fastcnn_cpu_supports(2) ? 2 : fastcnn_cpu_supports(1) ? 1 : 0;
    return level;
}

/* setup.py compiles with -fno-math-errno: a sqrt that may set errno is never vectorised. */
#define FASTCNN_ADAM_BODY(T, SQRT)                                                         \
    {                                                                                     \
        _Pragma("omp simd")                                                               \
        for (ptrdiff_t i = 0; i < n; i++) {                                               \
            T gi = g[i];                                                                  \
            T mi = m[i] + (gi - m[i]) * c1;                                               \
            T vi = v[i] + (gi * gi - v[i]) * c2;                                          \
            m[i] = mi;                                                                    \
            v[i] = vi;                                                                    \
            w[i] = w[i] - (mi * alpha) / (SQRT(vi) + eps);                                \
        }                                                                                 \
    }
#define FASTCNN_ADAM_ARGS(T)                                                               \
    (T *restrict w, const T *restrict g, T *restrict m, T *restrict v, ptrdiff_t n, T c1, \
     T c2, T eps, T alpha)

/* RMSprop without momentum, not centered (Keras's default): v = rho v + (1 - rho) g^2,
 * w -= lr g / sqrt(v + eps). */
#define FASTCNN_RMSPROP_BODY(T, SQRT)                                                      \
    {                                                                                     \
        _Pragma("omp simd")                                                               \
        for (ptrdiff_t i = 0; i < n; i++) {                                               \
            T gi = g[i];                                                                  \
            T vi = v[i] * rho + (gi * gi) * c;                                            \
            v[i] = vi;                                                                    \
            w[i] = w[i] - (gi * lr) / SQRT(vi + eps);                                     \
        }                                                                                 \
    }
#define FASTCNN_RMSPROP_ARGS(T)                                                            \
    (T *restrict w, const T *restrict g, T *restrict v, ptrdiff_t n, T rho, T c, T eps, T lr)

#ifdef FASTCNN_OPT_X86
#define FASTCNN_OPT_KERNEL(NAME, ARGS, BODY, CALL)                                         \
    static void NAME##_generic ARGS BODY                                                  \
    FASTCNN_OPT_AVX2 static void NAME##_avx2 ARGS BODY                                    \
    FASTCNN_OPT_AVX512 static void NAME##_avx512 ARGS BODY                                \
    static void NAME ARGS                                                                 \
    {                                                                                     \
        const int level = fastcnn_opt_level();                                            \
        if (level == 2)                                                                   \
            NAME##_avx512 CALL;                                                           \
        else if (level == 1)                                                              \
            NAME##_avx2 CALL;                                                             \
        else                                                                              \
            NAME##_generic CALL;                                                          \
    }
#else
#define FASTCNN_OPT_KERNEL(NAME, ARGS, BODY, CALL) static void NAME ARGS BODY
#endif

#define FASTCNN_ADAM_CALL (w, g, m, v, n, c1, c2, eps, alpha)
#define FASTCNN_RMSPROP_CALL (w, g, v, n, rho, c, eps, lr)

FASTCNN_OPT_KERNEL(fastcnn_adam_f32, FASTCNN_ADAM_ARGS(float), FASTCNN_ADAM_BODY(float, sqrtf),
                   FASTCNN_ADAM_CALL)
FASTCNN_OPT_KERNEL(fastcnn_adam_f64, FASTCNN_ADAM_ARGS(double), FASTCNN_ADAM_BODY(double, sqrt),
                   FASTCNN_ADAM_CALL)
FASTCNN_OPT_KERNEL(fastcnn_rmsprop_f32, FASTCNN_RMSPROP_ARGS(float),
                   FASTCNN_RMSPROP_BODY(float, sqrtf), FASTCNN_RMSPROP_CALL)
FASTCNN_OPT_KERNEL(fastcnn_rmsprop_f64, FASTCNN_RMSPROP_ARGS(double),
                   FASTCNN_RMSPROP_BODY(double, sqrt), FASTCNN_RMSPROP_CALL)

#endif
