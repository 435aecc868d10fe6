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

/* setup.py compiles with -fno-math-errno: a sqrt that may set errno is never vectorised. */
#define FASTCNN_ADAM(NAME, T, SQRT)                                                        \
static void NAME(T *restrict w, const T *restrict g, T *restrict m, T *restrict v, \
                        ptrdiff_t n, T c1, T c2, T eps, T alpha)                          \
{                                                                                         \
    _Pragma("omp simd")                                                                   \
    for (ptrdiff_t i = 0; i < n; i++) {                                                   \
        T gi = g[i];                                                                      \
        T mi = m[i] + (gi - m[i]) * c1;                                                   \
        T vi = v[i] + (gi * gi - v[i]) * c2;                                              \
        m[i] = mi;                                                                        \
        v[i] = vi;                                                                        \
        w[i] = w[i] - (mi * alpha) / (SQRT(vi) + eps);                                    \
    }                                                                                     \
}

FASTCNN_ADAM(fastcnn_adam_f32, float, sqrtf)
FASTCNN_ADAM(fastcnn_adam_f64, double, sqrt)

/* RMSprop without momentum, not centered (Keras's default): v = rho v + (1 - rho) g^2,
 * w -= lr g / sqrt(v + eps). */
#define FASTCNN_RMSPROP(NAME, T, SQRT)                                                     \
static void NAME(T *restrict w, const T *restrict g, T *restrict v, ptrdiff_t n,          \
                 T rho, T c, T eps, T lr)                                                 \
{                                                                                         \
    _Pragma("omp simd")                                                                   \
    for (ptrdiff_t i = 0; i < n; i++) {                                                   \
        T gi = g[i];                                                                      \
        T vi = v[i] * rho + (gi * gi) * c;                                                \
        v[i] = vi;                                                                        \
        w[i] = w[i] - (gi * lr) / SQRT(vi + eps);                                         \
    }                                                                                     \
}

FASTCNN_RMSPROP(fastcnn_rmsprop_f32, float, sqrtf)
FASTCNN_RMSPROP(fastcnn_rmsprop_f64, double, sqrt)

#endif
