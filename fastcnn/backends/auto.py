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
from . import _specs, available, get

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


def _pick(family: str, kind: str = "any", op: str | None = None):
    """The first backend of the table's row that is available here and implements the op
    (spec name ``op``, default the family's own name; for a pair both its forward and
    backward, for a fused op the pairs that take its contexts). Resolved once per process.

    A row may name a backend that does not (yet) implement an op of its family: that
    backend is passed over for that op, and ``choices()`` (``fastcnn info``) shows the pick.
    """
    key = (family, kind, op)
    backend = _resolved.get(key)
    if backend is None:
        spec = _specs.SPECS.get(op or family)
        requires = spec.requires if spec is not None else ()
        try:
            row = PREFERENCES[family, kind]
        except KeyError:
            raise RuntimeError(
                f"auto backend: no PREFERENCES row for {(family, kind)} (op {op or family!r}); "
                f"add one to fastcnn/backends/auto.py") from None
        names = available()
        for name in row:
            if name in names and all(get(name).implements(o) for o in requires):
                backend = get(name)
                break
        else:  # im2col is pure NumPy and always loads; reaching here is a table bug
            raise RuntimeError(
                f"auto backend: none of {row} is available and implements {list(requires)} "
                f"(row {(family, kind)})")
        _resolved[key] = backend
    return backend


def choices() -> dict:
    """``{"conv2d/deep": "numba", ...}``: what 'auto' runs on this machine, per row of the
    table; where the ops of one family resolve differently (a backend of the row lacks one
    of them), one entry per op: ``{"relu_general/any relu6": "cython", ...}``."""
    out = {}
    for family, kind in PREFERENCES:
        names = [s.name for s in _specs.SPECS.values() if s.routing_family == family] or [None]
        picks = {}
        for name in names:
            try:
                picks[name] = _pick(family, kind, name).name
            except RuntimeError as exc:
                picks[name] = f"none ({exc})"
        if len(set(picks.values())) == 1:
            out[f"{family}/{kind}"] = next(iter(picks.values()))
        else:
            out.update({f"{family}/{kind} {name}": pick for name, pick in picks.items()})
    return out


# -- conv ----------------------------------------------------------------------------------

def conv_kind(x_shape, w_shape, stride, pad) -> str:
    """Which PREFERENCES row a conv belongs to: 'few_channels', 'small' or 'deep'."""
    kh, kw, c_in, c_out = w_shape
    if c_in <= FEW_CHANNELS and c_out < FEW_FILTERS:
        return "few_channels"
    ho, wo = shapes.padded_output_shape(x_shape[1:3], (kh, kw), stride, pad)
    return "small" if ho * wo * kh * kw * c_in * c_out < SMALL_CONV_MACS else "deep"


def _conv2d_kind(x, w, b, stride, pad, *fused_args):
    return conv_kind(x.shape, w.shape, stride, pad)


#: family -> its kind function (called with the forward's arguments): the families whose
#: PREFERENCES rows differ by kind of shape. The others have one row, kind "any".
KINDS = {"conv2d": _conv2d_kind}


# -- the routed ops, generated from the specs (fastcnn/backends/_specs.py) -------------------
#
# A pair's forward runs on the backend the table picks and returns ``(y, (backend, ctx))``,
# so that its backward always goes to the backend that made ``ctx``. A fused forward's
# contexts each go back the same way (to that backend's backwards of the fused pairs); a
# single op (a loss) just runs on the pick.

def _route(spec):
    family, name = spec.routing_family, spec.name
    kind_of = KINDS.get(family)
    forward_op, backward_op = spec.forward_op, spec.backward_op
    any_key = (family, "any", name)

    def pick(args, kwargs):
        if kind_of is None:
            backend = _resolved.get(any_key)
            return backend if backend is not None else _pick(family, "any", name)
        return _pick(family, kind_of(*args, **kwargs), name)

    if spec.fused:
        def forward(*args, **kwargs):
            backend = pick(args, kwargs)
            out = getattr(backend, forward_op)(*args, **kwargs)
            if out is None:
                return None
            return (out[0], *((backend, ctx) for ctx in out[1:]))
    elif spec.is_pair:
        def forward(*args, **kwargs):
            backend = pick(args, kwargs)
            y, ctx = getattr(backend, forward_op)(*args, **kwargs)
            return y, (backend, ctx)
    else:
        def forward(*args, **kwargs):
            return getattr(pick(args, kwargs), forward_op)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = forward_op
    forward.__signature__ = spec.signature()
    forward.__doc__ = f"``{forward_op}`` on the backend the table picks for {family}."
    if not spec.is_pair:
        return {forward_op: forward}

    def backward(dy, ctx, *args, **kwargs):
        backend, inner = ctx
        return getattr(backend, backward_op)(dy, inner, *args, **kwargs)

    backward.__name__ = backward.__qualname__ = backward_op
    backward.__signature__ = spec.signature(backward=True)
    backward.__doc__ = f"``{backward_op}`` on the backend that ran the forward."
    return {forward_op: forward, backward_op: backward}


_GENERATED: set = set()


def _install():
    """(Re)generates this module's op functions from the specs (fastcnn.backends.add_op
    calls it again)."""
    module = globals()
    for op in _GENERATED:
        module.pop(op, None)
    _GENERATED.clear()
    for spec in _specs.SPECS.values():
        functions = _route(spec)
        module.update(functions)
        _GENERATED.update(functions)


_install()
