"""Optimizer updates, in place, one thread per weight element.

Each kernel performs the arithmetic of :mod:`fastcnn.optimizers` in the same order (the
NumPy code there works in the weight dtype: Python-float hyper-parameters are weak
scalars), so a device update equals the host one up to rounding (a GPU may fuse a
multiply-add). Slots that an optimizer does not use are passed as the weight array and
never touched (a kernel's argument list is fixed).
"""
from __future__ import annotations

import math

from numba import cuda

from ._jit import kernel


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}, {t}, boolean, boolean)")
def sgd_update(T):
    def sgd_update(w, g, m, lr, mu, has_momentum, nesterov):
        i = cuda.grid(1)
        if i >= w.size:
            return
        step = g[i] * lr
        if not has_momentum:
            w[i] -= step
            return
        v = m[i] * mu - step
        m[i] = v
        if nesterov:
            w[i] = (w[i] - step) + v * mu
        else:
            w[i] += v
    return sgd_update


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}[::1], {t}[::1], "
        "{t}, {t}, {t}, {t}, boolean)")
def adam_update(T):
    def adam_update(w, g, m, v, v_hat, alpha, one_minus_b1, one_minus_b2, eps, amsgrad):
        i = cuda.grid(1)
        if i >= w.size:
            return
        gi = g[i]
        mi = m[i] + (gi - m[i]) * one_minus_b1
        m[i] = mi
        vi = v[i] + (gi * gi - v[i]) * one_minus_b2
        v[i] = vi
        if amsgrad:
            # np.maximum(v_hat, v), NaN included: a NaN on either side wins.
            vh = v_hat[i]
            if vh == vh and not (vh >= vi):
                v_hat[i] = vi
            vi = v_hat[i]
        w[i] -= mi / (math.sqrt(vi) + eps) * alpha
    return adam_update


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}[::1], {t}[::1], "
        "{t}, {t}, {t}, {t}, {t}, boolean, boolean)")
def rmsprop_update(T):
    def rmsprop_update(w, g, vel, avg, mom, lr, rho, one_minus_rho, eps, mu, centered,
                       has_momentum):
        i = cuda.grid(1)
        if i >= w.size:
            return
        gi = g[i]
        vi = vel[i] * rho + (gi * gi) * one_minus_rho
        vel[i] = vi
        if centered:
            ai = avg[i] * rho + gi * one_minus_rho
            avg[i] = ai
            d = (vi - ai * ai) + eps
        else:
            d = vi + eps
        step = gi / math.sqrt(d) * lr
        if has_momentum:
            mi = mom[i] * mu + step
            mom[i] = mi
            w[i] -= mi
        else:
            w[i] -= step
    return rmsprop_update
