"""Activation names -> backend op pairs: the ONE place activation names are known.

Layers store the canonical name and call :func:`forward` / :func:`backward` with the
backend they resolved at call time, so the same activation runs on any backend.
"""
from __future__ import annotations

# name -> (forward op, backward op); None means identity ('linear').
_OPS = {
    "relu": ("relu_forward", "relu_backward"),
    "sigmoid": ("sigmoid_forward", "sigmoid_backward"),
    "tanh": ("tanh_forward", "tanh_backward"),
    "softmax": ("softmax_forward", "softmax_backward"),
    "linear": None,
}

KNOWN = tuple(_OPS)


def get(identifier):
    """Canonical activation name for ``identifier`` (a name or None -> 'linear').

    Raises ValueError listing the known names for anything else (callables included:
    an activation must have a backend kernel pair to run on every backend).
    """
    if identifier is None:
        return "linear"
    if isinstance(identifier, str) and identifier.lower() in _OPS:
        return identifier.lower()
    raise ValueError(
        f"activation must be one of {list(KNOWN)} or None, got {identifier!r}"
    )


def is_identity(name: str) -> bool:
    return _OPS[name] is None


def forward(backend, name: str, x):
    """``(y, ctx)``; ctx is None for 'linear' (y is x itself, nothing is copied)."""
    ops = _OPS[name]
    if ops is None:
        return x, None
    if name == "softmax" and x.ndim != 2:
        # The kernels define softmax on (N, K); any rank reduces to that with a free view.
        # shape[ndim - 1], not shape[-1]: the CUDA simulator's arrays refuse negative indices
        y, ctx = getattr(backend, ops[0])(x.reshape(-1, x.shape[x.ndim - 1]))
        return y.reshape(x.shape), (ctx, x.shape)
    return getattr(backend, ops[0])(x)


def backward(backend, name: str, dy, ctx):
    """Gradient with respect to the activation's input."""
    ops = _OPS[name]
    if ops is None:
        return dy
    if name == "softmax" and dy.ndim != 2:
        inner, shape = ctx
        return getattr(backend, ops[1])(dy.reshape(-1, shape[len(shape) - 1]),
                                        inner).reshape(shape)
    return getattr(backend, ops[1])(dy, ctx)
