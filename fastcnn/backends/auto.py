"""'auto': per op, the backend the benchmark suite measured fastest for that kind of shape.

This is the default backend. It owns no kernels: each op is routed to one of the other
backends by the small table :data:`PREFERENCES` below, which is refreshed by hand from
``benchmarks/`` runs (see benchmarks/README.md for the figures behind it). Each entry lists
backends fastest first; the first one that is available on this machine is used, so a
machine without a C compiler or without Numba still gets the best of what it has.
``fastcnn info`` prints the resolved choice.

A forward returns ``(y, (backend, ctx))`` so that its backward always goes to the backend
that made ``ctx``, whatever the table says for the backward's shape.
"""
from __future__ import annotations

from .. import shapes
from . import get, available

# Kinds of shape that rank backends differently. Figures: benchmarks/README.md; ms at 1
# thread on the 2-core AMD EPYC (Zen 4) of 2026-12-04 unless dated otherwise.
# - conv "deep" and "small": everything but "few_channels". Cython's direct convolution
#   (C micro-kernels, csrc/conv_kernels.h: 6 pixels x 64 filters of outer products in
#   AVX-512 registers, no column matrix) runs at 90-110% of the SGEMM rate; numba's
#   gather (4x4 dot products, horizontal sums) at 55-90%, im2col + GEMM at 50-75%.
#   fwd / dW / dx: shape B cython 5.2 / 5.6 / 6.6, numba 6.7 / 9.9 / 9.6; shape D 68 / 71 /
#   67 against 82 / 136 / 81; LeNet-5's conv2 (14x14x6 -> 16, 5x5) 0.39 / 0.31 / 1.19
#   against 0.82 / 0.79 / 1.49.
# - conv "few_channels": a first layer on 1-4 input channels with fewer than 16 filters
#   (LeNet-5's 1 -> 6, the from-scratch CNN's 1 -> 8). Numba's few-channel kernels
#   vectorise over pixels and keep nothing but x for the backward: LeNet-5 conv1 at batch
#   64 fwd / dW 0.41 / 0.43 against the direct kernel's 2.2 / 2.3 (16-filter blocks 6/16
#   full) and cython's im2col 1.3 / 0.6 (2026-11-26). With 16 or more filters the direct
#   kernel wins (shape A 1.0 / 0.9 against numba's 2.2 / 2.8; cats-vs-dogs conv1 19 / 18
#   against 34 / 29), so such convs are "small" or "deep".
# - pools are memory-bound single passes. Max pooling: cython's float32 SIMD kernels
#   (AVX-512 over the channels; a non-overlapping backward writes dx once, no zero fill)
#   against numba's, fwd / bwd at 1 thread: Fashion-MNIST's 64x26x26x64 0.62 / 0.38 vs
#   0.79 / 0.64, at batch 128 1.78 / 0.87 vs 2.06 / 2.31; the from-scratch CNN's
#   64x26x26x8 (a narrower vector build for few channels) 0.08 / 0.17 vs 0.27 / 0.24; and
#   in a model the conv before it usually computes it (conv2d_maxpool2d_forward, fused:
#   the conv output is never stored). Average pooling stays on numba
#   (fwd+bwd 1.95 against cython's 9.52 on the Fashion-MNIST shape, 2026-11-25).
# - activations on a 64x26x26x64 tensor: relu numba 0.22/0.56 (cython 0.26/11.3, NumPy
#   0.79/10.1); sigmoid numba 6.5/0.6 (NumPy 12.8/0.8); tanh NumPy 0.44/3.3 against numba's
#   scalar libm tanh 37/0.5: a forward and its backward must run on one backend, so the sum
#   decides (2026-11-25).
# - dense is one BLAS GEMM everywhere (equal within noise); softmax and the fused losses
#   on (128, 10) logits take 5-20 us, the compiled ones slightly less except sigmoid CE.
PREFERENCES = {
    ("conv2d", "few_channels"): ("numba", "cython", "im2col"),
    ("conv2d", "deep"): ("cython", "numba", "im2col"),
    # "small": under SMALL_CONV_MACS multiply-adds per image (LeNet-5's second conv has
    # 240k, the digits model's 4x4x16 -> 32 3x3 74k), where per-call overheads weigh more;
    # the direct kernel leads there too (2026-11-25 before it: cython's im2col).
    ("conv2d", "small"): ("cython", "numba", "im2col"),
    # Depthwise convs (MobileNetV2's): a first ordering, to be measured (issue 14).
    ("depthwise_conv2d", "any"): ("numba", "im2col"),
    ("maxpool2d", "any"): ("cython", "numba", "im2col"),
    ("avgpool2d", "any"): ("numba", "cython", "im2col"),
    ("dense", "any"): ("cython", "im2col"),
    ("relu", "any"): ("numba", "cython", "im2col"),
    ("sigmoid", "any"): ("numba", "im2col"),
    ("tanh", "any"): ("im2col",),
    ("softmax", "any"): ("cython", "im2col"),
    # The ReLU family (relu_general, relu6, leaky_relu: one parametrised kernel each), the
    # hard activations and exact gelu are compiled single passes in numba and cython; on
    # 64x26x26x64 float32 at 1 thread leaky_relu fwd/bwd numba 0.45/1.0 ms, cython
    # 0.68/1.0, NumPy 2.9/7.4; hard_silu numba 0.47/1.4, NumPy 1.4/11; gelu (erfc) numba
    # 27/33, NumPy's per-element math.erfc 260/261 (2026-12-06).
    ("relu_general", "any"): ("numba", "cython", "im2col"),
    ("hard_sigmoid", "any"): ("numba", "cython", "im2col"),
    ("hard_silu", "any"): ("numba", "cython", "im2col"),
    ("gelu", "any"): ("numba", "cython", "im2col"),
    # The exp / tanh / log1p based ones are the same NumPy code on every CPU backend
    # (fastcnn/backends/_activations.py): NumPy's SIMD math beats numba's scalar libm.
    ("numpy_activation", "any"): ("im2col",),
    ("softmax_cross_entropy", "any"): ("cython", "im2col"),
    ("sparse_softmax_cross_entropy", "any"): ("cython", "im2col"),
    ("sigmoid_cross_entropy", "any"): ("im2col",),
}

FEW_CHANNELS = 4
FEW_FILTERS = 16  # "few_channels" means fewer than this many filters too
SMALL_CONV_MACS = 300_000  # per image, forward

_resolved: dict = {}


def _pick(family: str, kind: str = "any"):
    """The first available backend of the table's entry (resolved once per process)."""
    key = (family, kind)
    backend = _resolved.get(key)
    if backend is None:
        names = available()
        for name in PREFERENCES[key]:
            if name in names:
                backend = get(name)
                break
        else:  # im2col is pure NumPy and always loads; reaching here is a table bug
            raise RuntimeError(f"auto backend: none of {PREFERENCES[key]} is available for {key}")
        _resolved[key] = backend
    return backend


def choices() -> dict:
    """``{"conv2d/deep": "numba", ...}``: what 'auto' runs on this machine."""
    return {f"{family}/{kind}": _pick(family, kind).name for family, kind in PREFERENCES}


# -- conv ----------------------------------------------------------------------------------

def conv_kind(x_shape, w_shape, stride, pad) -> str:
    """Which PREFERENCES row a conv belongs to: 'few_channels', 'small' or 'deep'."""
    kh, kw, c_in, c_out = w_shape
    if c_in <= FEW_CHANNELS and c_out < FEW_FILTERS:
        return "few_channels"
    ho, wo = shapes.padded_output_shape(x_shape[1:3], (kh, kw), stride, pad)
    return "small" if ho * wo * kh * kw * c_in * c_out < SMALL_CONV_MACS else "deep"


def conv2d_forward(x, w, b, stride, pad):
    kind = conv_kind(x.shape, w.shape, stride, pad)
    backend = _pick("conv2d", kind)
    y, ctx = backend.conv2d_forward(x, w, b, stride, pad)
    return y, (backend, ctx)


def conv2d_backward(dy, ctx, need_dx=True):
    backend, inner = ctx
    return backend.conv2d_backward(dy, inner, need_dx)


def conv2d_maxpool2d_forward(x, w, b, stride, pad, pool, pool_stride, pool_pad):
    """The conv's backend fuses it with the pool when it can; both contexts then go back
    to that backend (its conv2d_backward and maxpool2d_backward)."""
    backend = _pick("conv2d", conv_kind(x.shape, w.shape, stride, pad))
    out = backend.conv2d_maxpool2d_forward(x, w, b, stride, pad, pool, pool_stride, pool_pad)
    if out is None:
        return None
    y, conv_ctx, pool_ctx = out
    return y, (backend, conv_ctx), (backend, pool_ctx)


def depthwise_conv2d_forward(x, w, b, stride, pad):
    backend = _pick("depthwise_conv2d")
    y, ctx = backend.depthwise_conv2d_forward(x, w, b, stride, pad)
    return y, (backend, ctx)


def depthwise_conv2d_backward(dy, ctx, need_dx=True):
    backend, inner = ctx
    return backend.depthwise_conv2d_backward(dy, inner, need_dx)


# -- everything routed by op family alone ------------------------------------------------------

def _routed(family: str, forward_op: str, backward_op: str):
    def forward(*args, **kwargs):
        backend = _pick(family)
        y, ctx = getattr(backend, forward_op)(*args, **kwargs)
        return y, (backend, ctx)

    def backward(dy, ctx):
        backend, inner = ctx
        return getattr(backend, backward_op)(dy, inner)

    forward.__name__, backward.__name__ = forward_op, backward_op
    forward.__doc__ = f"``{forward_op}`` on the backend the table picks for {family}."
    backward.__doc__ = f"``{backward_op}`` on the backend that ran the forward."
    return forward, backward


maxpool2d_forward, maxpool2d_backward = _routed("maxpool2d", "maxpool2d_forward", "maxpool2d_backward")
avgpool2d_forward, avgpool2d_backward = _routed("avgpool2d", "avgpool2d_forward", "avgpool2d_backward")
dense_forward, dense_backward = _routed("dense", "dense_forward", "dense_backward")
relu_forward, relu_backward = _routed("relu", "relu_forward", "relu_backward")
sigmoid_forward, sigmoid_backward = _routed("sigmoid", "sigmoid_forward", "sigmoid_backward")
tanh_forward, tanh_backward = _routed("tanh", "tanh_forward", "tanh_backward")
softmax_forward, softmax_backward = _routed("softmax", "softmax_forward", "softmax_backward")


def _activation(family: str, name: str):
    return _routed(family, f"{name}_forward", f"{name}_backward")


relu_general_forward, relu_general_backward = _activation("relu_general", "relu_general")
relu6_forward, relu6_backward = _activation("relu_general", "relu6")
leaky_relu_forward, leaky_relu_backward = _activation("relu_general", "leaky_relu")
hard_sigmoid_forward, hard_sigmoid_backward = _activation("hard_sigmoid", "hard_sigmoid")
hard_silu_forward, hard_silu_backward = _activation("hard_silu", "hard_silu")
gelu_forward, gelu_backward = _activation("gelu", "gelu")
elu_forward, elu_backward = _activation("numpy_activation", "elu")
selu_forward, selu_backward = _activation("numpy_activation", "selu")
gelu_approximate_forward, gelu_approximate_backward = _activation("numpy_activation",
                                                                  "gelu_approximate")
silu_forward, silu_backward = _activation("numpy_activation", "silu")
softplus_forward, softplus_backward = _activation("numpy_activation", "softplus")
softsign_forward, softsign_backward = _activation("numpy_activation", "softsign")
exponential_forward, exponential_backward = _activation("numpy_activation", "exponential")
log_softmax_forward, log_softmax_backward = _activation("numpy_activation", "log_softmax")
prelu_forward, prelu_backward = _activation("numpy_activation", "prelu")


def softmax_cross_entropy(logits, targets):
    return _pick("softmax_cross_entropy").softmax_cross_entropy(logits, targets)


def sparse_softmax_cross_entropy(logits, labels):
    return _pick("sparse_softmax_cross_entropy").sparse_softmax_cross_entropy(logits, labels)


def sigmoid_cross_entropy(logits, targets):
    return _pick("sigmoid_cross_entropy").sigmoid_cross_entropy(logits, targets)
