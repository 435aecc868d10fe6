"""'auto': per op, the backend the benchmark suite measured fastest for that kind of shape.

This is the default backend. It owns no kernels: each op is routed to one of the other
backends by the small table :data:`PREFERENCES` below, which is refreshed by hand from
``benchmarks/`` runs (see benchmarks/README.md for the figures behind it). Each entry lists
backends fastest first; for each op of the row's family, the first one that is available on
this machine AND implements the op is used, so a machine without a C compiler or without
Numba still gets the best of what it has, and a row may name a backend before its kernels
for an op land. ``fastcnn info`` prints the resolved choices.

Which ops a family holds comes from the op specs (fastcnn/backends/_specs.py, ``family``);
this module's op functions are generated from them (bottom of the file). A new op joins an
existing family's row, or needs a row here (a test fails until it has one).

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
#   the conv output is never stored). Average pooling: cython's float32 kernels
#   (csrc/pool_kernels.h, sums in registers, one quotient per window) against numba's,
#   fwd+bwd us at 1 thread: LeNet-5's 64x28x28x6 2x2 264 vs 604, 64x10x10x16 31 vs 66,
#   64x26x26x64 2x2 504 vs 953, 3x3/2 'same' (overlapping: pool.pyx's backward) 1372 vs
#   2279; 4x9x9x40 10 vs 10 (2026-12-07; before, numba led: cython's pool.pyx summed
#   through memory, 9.52 vs 1.95 ms on the Fashion-MNIST shape).
# - activations on a 64x26x26x64 tensor: relu numba 0.22/0.56 (cython 0.26/11.3, NumPy
#   0.79/10.1); sigmoid numba 6.5/0.6 (NumPy 12.8/0.8); tanh NumPy 0.44/3.3 against numba's
#   scalar libm tanh 37/0.5: a forward and its backward must run on one backend, so the sum
#   decides (2026-11-25). cython's tanh is NumPy's forward and a vectorised, threaded
#   backward bitwise NumPy's (csrc/activation_kernels.h; 64x28x28x6 float32 92 -> 60 us at 1
#   thread), so it leads (2026-12-07).
# - dense is one BLAS GEMM everywhere (equal within noise); softmax and the fused losses
#   on (128, 10) logits take 5-20 us, the compiled ones slightly less except sigmoid CE.
PREFERENCES = {
    ("conv2d", "few_channels"): ("numba", "cython", "im2col"),
    ("conv2d", "deep"): ("cython", "numba", "im2col"),
    # "small": under SMALL_CONV_MACS multiply-adds per image (LeNet-5's second conv has
    # 240k, the digits model's 4x4x16 -> 32 3x3 74k), where per-call overheads weigh more;
    # the direct kernel leads there too (2026-11-25 before it: cython's im2col).
    ("conv2d", "small"): ("cython", "numba", "im2col"),
    # Depthwise convs (issue 14), MobileNetV2's six 3x3 'same' M=1 shapes at batch 8,
    # float32, 1 thread, process CPU time (min of 9; a shared 2-core AMD EPYC, AVX-512),
    # fwd / bwd ms, cython (csrc/depthwise.h) | numba | PyTorch conv2d(groups=C,
    # channels_last): 112x112x32 s1 2.41/5.33 | 3.82/10.25 | 2.24/6.07; 112x112x96 s2
    # 4.96/12.60 | 3.55/13.78 | 27.8/55.3; 56x56x144 3.63/8.29 | 3.59/8.97 | 4.72/11.12;
    # 28x28x192 0.61/2.12 | 0.86/3.10 | 1.14/3.75; 14x14x384 0.28/0.96 | 0.45/1.14 |
    # 0.23/1.08; 7x7x960 0.24/0.78 | 0.32/0.70 | 0.16/0.76. Sum fwd+bwd: cython 42.2,
    # numba 50.5, PyTorch 114 ms; against a copy of the same bytes cython's forward runs
    # at 15-38% of copy bandwidth, its backward at 9-32% (2026-12-06).
    ("depthwise_conv2d", "any"): ("cython", "numba", "im2col"),
    ("maxpool2d", "any"): ("cython", "numba", "im2col"),
    ("avgpool2d", "any"): ("cython", "numba", "im2col"),
    ("dense", "any"): ("cython", "im2col"),
    ("relu", "any"): ("numba", "cython", "im2col"),
    ("sigmoid", "any"): ("numba", "im2col"),
    ("tanh", "any"): ("cython", "im2col"),
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
    # Batch normalisation (batchnorm_statistics + the batchnorm pair): memory-bound passes
    # over (rows, C), the maths in fastcnn/backends/reference.py. Training fwd+bwd, float32,
    # 1 thread, the Fashion-MNIST ResNet's shapes at batch 128 (benchmarks/batchnorm.py,
    # medians of 20, ms): 28x28x16 NumPy 12.8 | numba 3.0 | cython 2.8; 14x14x32 3.7 |
    # 1.15 | 1.22; 7x7x64 1.40 | 0.49 | 0.62; sums 18.0 | 4.6 | 4.7: equal within noise,
    # cython first (no JIT on first use) (2026-12-07).
    ("batchnorm", "any"): ("cython", "numba", "reference"),
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


def backend_for(op: str, *args):
    """The backend that op ``op`` (a spec name) runs on for these forward arguments: what
    the routed function decides per call, for a caller whose shapes are fixed
    (fastcnn.train_plan binds the backend's own functions once)."""
    family = _specs.SPECS[op].routing_family
    kind = KINDS[family](*args) if family in KINDS else "any"
    return _pick(family, kind, op)


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
# single op (a loss) just runs on the pick. Each function is written out with its spec's
# own parameters (help() shows them; no *args packing: these run once per layer call), the
# pick being one dict lookup after the first call of its key.

_PICK = {
    False: """\
    backend = _resolved.get({any_key!r})
    if backend is None:
        backend = _pick({family!r}, "any", {name!r})
""",
    True: """\
    kind = KINDS[{family!r}]({call})
    backend = _resolved.get(({family!r}, kind, {name!r}))
    if backend is None:
        backend = _pick({family!r}, kind, {name!r})
""",
}

_BODY = {
    "pair": """\
    y, ctx = backend.{forward_op}({call})
    return y, (backend, ctx)
""",
    "single": """\
    return backend.{forward_op}({call})
""",
    "fused": """\
    out = backend.{forward_op}({call})
    if out is None:
        return None
    return (out[0], *((backend, ctx) for ctx in out[1:]))
""",
}

_BACKWARD = """\
def {backward_op}({backward}):
    backend, inner = ctx
    return backend.{backward_op}(dy, inner{rest})
"""


def _route(spec) -> str:
    """The source of the spec's routed function(s)."""
    family = spec.routing_family
    fields = dict(name=spec.name, family=family, any_key=(family, "any", spec.name),
                  forward_op=spec.forward_op, backward_op=spec.backward_op,
                  args=spec.args, backward=spec.backward,
                  call=", ".join(spec.signature().parameters))
    shape = "fused" if spec.fused else "pair" if spec.is_pair else "single"
    source = (f"def {spec.forward_op}({spec.args}):\n"
              f'    """``{spec.forward_op}`` on the backend the table picks for {family}."""\n'
              + _PICK[family in KINDS] + _BODY[shape]).format(**fields)
    if spec.is_pair:
        rest = "".join(f", {p}" for p in list(spec.signature(backward=True).parameters)[2:])
        source += "\n\n" + _BACKWARD.format(rest=rest, **fields)
    return source


_GENERATED: set = set()


def _install():
    """(Re)generates this module's op functions from the specs (fastcnn.backends.add_op
    calls it again)."""
    module = globals()
    for op in _GENERATED:
        module.pop(op, None)
    _GENERATED.clear()
    for spec in _specs.SPECS.values():
        namespace = {}
        exec(compile(_route(spec), f"<auto: {spec.name}>", "exec"), module, namespace)  # noqa: S102
        for fn in namespace.values():
            fn.__module__ = __name__
        module.update(namespace)
        _GENERATED.update(namespace)


_install()
