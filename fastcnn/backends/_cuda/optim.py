"""Optimizer updates, in place, one thread per weight element.

Each kernel performs the arithmetic of :mod:`fastcnn.optimizers` in the same order (the
NumPy code there works in the weight dtype: Python-float hyper-parameters are weak
scalars; both follow Keras's order of operations), so a device update equals the host one
up to rounding (a GPU may fuse a multiply-add). Slots that an optimizer does not use are passed as the weight array and
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
            w[i] += v * mu - step
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
        w[i] -= (mi * alpha) / (math.sqrt(vi) + eps)
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
        step = (gi * lr) / math.sqrt(d)
        if has_momentum:
            mi = mom[i] * mu + step
            mom[i] = mi
            w[i] -= mi
        else:
            w[i] -= step
    return rmsprop_update


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}, {t})")
def adagrad_update(T):
    def adagrad_update(w, g, acc, lr, eps):
        i = cuda.grid(1)
        if i >= w.size:
            return
        gi = g[i]
        a = acc[i] + gi * gi
        acc[i] = a
        w[i] -= (gi * lr) / math.sqrt(a + eps)
    return adagrad_update


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}[::1], {t}, {t}, {t}, {t})")
def adadelta_update(T):
    def adadelta_update(w, g, eg, ed, lr, rho, one_minus_rho, eps):
        i = cuda.grid(1)
        if i >= w.size:
            return
        gi = g[i]
        egi = eg[i] * rho + (gi * gi) * one_minus_rho
        eg[i] = egi
        delta = -((math.sqrt(ed[i] + eps) * gi) / math.sqrt(egi + eps))
        ed[i] = ed[i] * rho + (delta * delta) * one_minus_rho
        w[i] += delta * lr
    return adadelta_update


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}[::1], {t}, {t}, {t}, {t}, {t})")
def adamax_update(T):
    def adamax_update(w, g, m, u, lr, one_minus_b1, b2, eps, bias1):
        i = cuda.grid(1)
        if i >= w.size:
            return
        gi = g[i]
        mi = m[i] + (gi - m[i]) * one_minus_b1
        m[i] = mi
        ui = u[i] * b2
        ag = abs(gi)
        if not (ui >= ag):   # np.maximum: the larger, a NaN wins
            ui = ag if ui == ui else ui
        u[i] = ui
        w[i] -= (mi * lr) / ((ui + eps) * bias1)
    return adamax_update


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}[::1], {t}, {t}, {t}, {t}, {t}, {t}, {t}, {t}, "
        "{t})")
def nadam_update(T):
    def nadam_update(w, g, m, v, lr, one_minus_b1, one_minus_b2, eps, u_next, d_next, c_g,
                     d_now, bias2):
        i = cuda.grid(1)
        if i >= w.size:
            return
        gi = g[i]
        mi = m[i] + (gi - m[i]) * one_minus_b1
        m[i] = mi
        vi = v[i] + (gi * gi - v[i]) * one_minus_b2
        v[i] = vi
        m_hat = (u_next * mi) / d_next + (c_g * gi) / d_now
        w[i] -= (m_hat * lr) / (math.sqrt(vi / bias2) + eps)
    return nadam_update


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}, {t}, {t}, {t}, {t})")
def lion_update(T):
    def lion_update(w, g, m, lr, b1, one_minus_b1, b2, one_minus_b2):
        i = cuda.grid(1)
        if i >= w.size:
            return
        gi = g[i]
        c = m[i] * b1 + gi * one_minus_b1
        if c > T(0):
            w[i] -= lr
        elif c < T(0):
            w[i] += lr
        elif c != c:
            w[i] = c         # NaN, as w - lr * sign(NaN)
        m[i] = m[i] * b2 + gi * one_minus_b2
    return lion_update


@kernel("void({t}[::1], {t}, {t})")
def weight_decay_update(T):
    def weight_decay_update(w, wd, lr):
        i = cuda.grid(1)
        if i >= w.size:
            return
        w[i] -= (w[i] * wd) * lr
    return weight_decay_update


@kernel("void({t}[::1], {t}[::1], {t}, {t}, boolean)")
def ema_update(T):
    def ema_update(avg, w, momentum, one_minus_momentum, overwrite):
        i = cuda.grid(1)
        if i >= w.size:
            return
        a = avg[i] * momentum + w[i] * one_minus_momentum
        avg[i] = a
        if overwrite:
            w[i] = a
    return ema_update


@kernel("void({t}[::1], {t}, {t}, {t}[::1])")
def scale_gradient(T):
    def scale_gradient(g, a, b, out):
        i = cuda.grid(1)
        if i >= g.size:
            return
        out[i] = (g[i] * a) / b
    return scale_gradient


@kernel("void({t}[::1], {t}, {t}[::1])")
def clip_gradient(T):
    def clip_gradient(g, v, out):
        i = cuda.grid(1)
        if i >= g.size:
            return
        x = g[i]
        if x > v:
            x = v
        elif x < -v:
            x = -v
        out[i] = x
    return clip_gradient
