"""Argument checks shared by the NumPy-level backends: the ONE place their messages live.

Backends validate what reaches them (a kernel called directly, as the tests and a user's own
layer do, gets a clear error instead of a wrong answer); layers validate user input earlier
with user-facing argument names.
"""
from __future__ import annotations

import numpy as np

from ..shapes import padded_output_shape


def output_shape(spatial, window, stride, pad, what):
    ho, wo = padded_output_shape(spatial, window, stride, pad)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{what} {tuple(window)} does not fit the padded input: input {tuple(spatial)}, "
            f"pad {pad}, stride {tuple(stride)} give an output of {(ho, wo)}"
        )
    return ho, wo


def check_pool_windows_touch_input(spatial, window, stride, pad, out):
    # A window made only of padding has no maximum (it would be -inf) and no mean (0/0).
    # shapes.py never produces such padding; explicit padding from elsewhere might.
    for length, k, s, (before, _), o, axis in zip(spatial, window, stride, pad, out, "HW"):
        if before >= k or (o - 1) * s >= before + length:
            raise ValueError(
                f"pad {pad} makes a pooling window of size {tuple(window)} lie entirely in "
                f"the padding along {axis} (input {tuple(spatial)}, stride {tuple(stride)})"
            )


def _got(a) -> str:
    if isinstance(a, np.ndarray):
        return str(a.dtype)
    if hasattr(a, "copy_to_host"):  # a numba CUDA device array (real or simulated)
        return (f"a CUDA device array ({type(a).__name__}); the cuda backend's arrays stay "
                f"on the device: copy it with .copy_to_host(), or run this op on 'cuda'")
    return type(a).__name__


def check_float(name, a):
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 numpy array, got {_got(a)}")


def check_same_dtype(name, a, like):
    if not isinstance(a, np.ndarray) or a.dtype != like.dtype:
        raise TypeError(f"{name} must be a numpy array of dtype {like.dtype}, got {_got(a)}")


def check_rank(name, a, ndim, layout):
    if a.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} {layout}, got shape {a.shape}")


def check_labels(labels, logits_shape):
    n, k = logits_shape
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer numpy array of shape ({n},), got {got}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        bad = labels[(labels < 0) | (labels >= k)][0]
        raise ValueError(f"labels must lie in [0, {k}) for {k} classes, got label {bad}")


def check_conv_args(x, w, b):
    """x (N, H, W, C) and w (kh, kw, C, F) of one float dtype; b None or (F,)."""
    check_float("x", x)
    check_same_dtype("w", w, x)
    check_rank("x", x, 4, "(N, H, W, C)")
    check_rank("w", w, 4, "(kh, kw, C_in, C_out)")
    if w.shape[2] != x.shape[3]:
        raise ValueError(
            f"w has {w.shape[2]} input channels (shape {w.shape}) but x has {x.shape[3]} "
            f"(shape {x.shape}); expected w of shape (kh, kw, {x.shape[3]}, C_out)"
        )
    check_bias(b, w.shape[3], x)


def check_depthwise_args(x, w, b):
    """x (N, H, W, C) and w (kh, kw, C, M) of one float dtype; b None or (C*M,)."""
    check_float("x", x)
    check_same_dtype("w", w, x)
    check_rank("x", x, 4, "(N, H, W, C)")
    check_rank("w", w, 4, "(kh, kw, C, depth_multiplier)")
    if w.shape[2] != x.shape[3]:
        raise ValueError(
            f"w has {w.shape[2]} input channels (shape {w.shape}) but x has {x.shape[3]} "
            f"(shape {x.shape}); expected a depthwise kernel of shape "
            f"(kh, kw, {x.shape[3]}, depth_multiplier)"
        )
    check_bias(b, w.shape[2] * w.shape[3], x)


def check_dense_args(x, w, b):
    """x (N, D) and w (D, U) of one float dtype; b None or (U,)."""
    check_float("x", x)
    check_same_dtype("w", w, x)
    check_rank("x", x, 2, "(N, D)")
    check_rank("w", w, 2, "(D, U)")
    if w.shape[0] != x.shape[1]:
        raise ValueError(
            f"w has shape {w.shape} but x has {x.shape[1]} features (shape {x.shape}); "
            f"expected w of shape ({x.shape[1]}, U)"
        )
    check_bias(b, w.shape[1], x)


def check_bias(b, n_out, like):
    if b is not None:
        check_same_dtype("b", b, like)
        if b.shape != (n_out,):
            raise ValueError(f"b must have shape ({n_out},), got {b.shape}")



def check_batchnorm_args(x, gamma, beta, mean, var):
    """x (..., C) of rank >= 2; gamma, beta (None allowed), mean, var (C,) of x's dtype."""
    check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have rank >= 2 (batch, ..., channels), got shape {x.shape}")
    c = x.shape[-1]
    for name, a in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if a is None and name in ("gamma", "beta"):
            continue
        check_same_dtype(name, a, x)
        if a.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) (one value per channel of x, "
                             f"shape {x.shape}), got {a.shape}")
