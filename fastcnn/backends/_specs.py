"""The kernel contract, one spec per op: the ONE place a kernel op is declared.

Everything that lists ops is derived from :data:`SPECS`: :data:`fastcnn.backends.OPS` and
``FUSED_OPS``, the contract table of :mod:`fastcnn.backends`' docstring, the ``auto``
backend's routing functions (:mod:`fastcnn.backends.auto`), the capability table and
``fastcnn info``, and the test matrices that need "every op" (tests/backends/).

Adding a kernel op is therefore: one :class:`OpSpec` below, the kernels themselves in the
backend modules (a backend without them reports the op as missing and raises
NotImplementedError naming op and backend when it is called), and, only for a new routing
family, its row of ``auto.PREFERENCES`` (the benchmark-ranked backends; a test fails while
a family has no row).

A spec names a *pair* ``<name>_forward`` / ``<name>_backward`` (the forward returns
``(y, ctx)``, the backward takes ``(dy, ctx, ...)``), or a *single* op called ``<name>``
(``backward=None``: the losses, which return ``(loss, dlogits)``), or a *fused* op
(``fused=(...)``, optional for a backend: see :mod:`fastcnn.backends`).
"""
from __future__ import annotations

import dataclasses
import inspect
import textwrap
from typing import Callable

import numpy as np

from . import _checks


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One op of the kernel contract.

    Attributes:
        name: the pair's stem (``"conv2d"``: ``conv2d_forward`` / ``conv2d_backward``), or
            the single / fused op's own name.
        args: the forward's parameters as its ``def`` writes them (``"x, w, b, stride,
            pad"``); every backend's function has this signature.
        returns: what the forward returns and means (rst text for the contract table).
        backward: the backward's parameters (``"dy, ctx"``; ``"dy, ctx, need_dx=True"`` for
            a backward that can skip dx); None for a single op.
        backward_returns: what the backward returns (contract table).
        family: the row family of ``auto.PREFERENCES`` that routes it (default ``name``);
            a family with shape kinds (conv2d's) has its kind function in ``auto.KINDS``.
        check: the argument check of the forward's arguments (:mod:`._checks`, where the
            messages live): ``check(*args)`` raises what every backend raises for them.
        fused: for a fused op, the pairs it computes in one pass (their backwards take its
            contexts, on the backend that made them); empty for the others.
        example: ``example(rng, dtype) -> args``: small valid forward arguments, for the test
            matrices that run every op on every backend.
    """

    name: str
    args: str
    returns: str
    backward: str | None = "dy, ctx"
    backward_returns: str = "``-> dx``"
    family: str | None = None
    check: Callable | None = None
    fused: tuple[str, ...] = ()
    example: Callable | None = None

    @property
    def routing_family(self) -> str:
        return self.family or self.name

    @property
    def is_pair(self) -> bool:
        return self.backward is not None and not self.fused

    @property
    def forward_op(self) -> str:
        return f"{self.name}_forward" if self.is_pair else self.name

    @property
    def backward_op(self) -> str | None:
        return f"{self.name}_backward" if self.is_pair else None

    @property
    def ops(self) -> tuple[str, ...]:
        return (self.forward_op, self.backward_op) if self.is_pair else (self.name,)

    @property
    def need_dx(self) -> bool:
        """Whether the backward takes ``need_dx`` (False: skip dx, a model's first layer)."""
        return self.is_pair and "need_dx" in self.backward

    @property
    def requires(self) -> tuple[str, ...]:
        """The ops a backend must implement for ``auto`` to route this op to it: the pair,
        or for a fused op the pairs whose backwards take its contexts."""
        if self.fused:
            return tuple(op for part in self.fused for op in SPECS[part].ops)
        return self.ops

    def signature(self, backward: bool = False) -> inspect.Signature:
        params = self.backward if backward else self.args
        return inspect.signature(eval(f"lambda {params}: None"))  # noqa: S307 - our own text


# -- argument checks of the forwards (messages: _checks.py) ------------------------------


def _x(x, *args, **kwargs):
    _checks.check_float("x", x)


def _nhwc(x, *args, **kwargs):
    _checks.check_float("x", x)
    _checks.check_rank("x", x, 4, "(N, H, W, C)")


def _conv(x, w, b, *args, **kwargs):
    _checks.check_conv_args(x, w, b)


def _depthwise(x, w, b, *args, **kwargs):
    _checks.check_depthwise_args(x, w, b)


def _dense(x, w, b):
    _checks.check_dense_args(x, w, b)


def _prelu(x, alpha):
    _checks.check_float("x", x)
    _checks.check_same_dtype("alpha", alpha, x)


def _probabilities(logits, targets):
    _checks.check_float("logits", logits)
    _checks.check_rank("logits", logits, 2, "(N, K)")
    _checks.check_same_dtype("targets", targets, logits)


def _labels(logits, labels):
    _checks.check_float("logits", logits)
    _checks.check_rank("logits", logits, 2, "(N, K)")
    _checks.check_labels(labels, logits.shape)


def _bn_statistics(x):
    _checks.check_float("x", x)


def _batchnorm(x, gamma, beta, mean, var, *args, **kwargs):
    _checks.check_batchnorm_args(x, gamma, beta, mean, var)


def _elementwise_logits(logits, targets):
    _checks.check_float("logits", logits)
    _checks.check_same_dtype("targets", targets, logits)


# -- examples: tiny valid forward arguments ----------------------------------------------

_NO_PAD = ((0, 0), (0, 0))
_SAME_3x3 = ((1, 1), (1, 1))


def _a(rng, dtype, *shape):
    return rng.standard_normal(shape).astype(dtype)


def _ex_conv(rng, dtype):
    return _a(rng, dtype, 2, 5, 4, 3), _a(rng, dtype, 3, 3, 3, 4), _a(rng, dtype, 4), (1, 1), _SAME_3x3


def _ex_depthwise(rng, dtype):
    return _a(rng, dtype, 2, 5, 4, 3), _a(rng, dtype, 3, 3, 3, 2), _a(rng, dtype, 6), (1, 1), _SAME_3x3


def _ex_pool(rng, dtype):
    return _a(rng, dtype, 2, 4, 6, 3), (2, 2), (2, 2), _NO_PAD


def _ex_dense(rng, dtype):
    return _a(rng, dtype, 3, 5), _a(rng, dtype, 5, 4), _a(rng, dtype, 4)


def _ex_x(rng, dtype):
    return (3 * _a(rng, dtype, 2, 3, 5),)


def _ex_prelu(rng, dtype):
    return 3 * _a(rng, dtype, 2, 3, 5), _a(rng, dtype, 3, 1)


def _ex_targets(rng, dtype):
    return _a(rng, dtype, 4, 3), rng.dirichlet(np.ones(3), 4).astype(dtype)


def _ex_labels(rng, dtype):
    return _a(rng, dtype, 4, 3), np.array([0, 2, 1, 2])


def _ex_binary(rng, dtype):
    return _a(rng, dtype, 4, 3), (rng.random((4, 3)) < 0.5).astype(dtype)


def _ex_bn_statistics(rng, dtype):
    return (2 + 3 * _a(rng, dtype, 2, 3, 4, 5),)


def _ex_batchnorm(rng, dtype):
    x = 2 + 3 * _a(rng, dtype, 2, 3, 4, 5)
    mean = x.reshape(-1, 5).mean(axis=0)
    var = ((x.reshape(-1, 5) - mean) ** 2).mean(axis=0)
    return x, _a(rng, dtype, 5), _a(rng, dtype, 5), mean, var, 1e-3, True


def _ex_conv_pool(rng, dtype):
    x = _a(rng, dtype, 2, 6, 6, 3)
    return (x, _a(rng, dtype, 3, 3, 3, 4), _a(rng, dtype, 4), (1, 1), _SAME_3x3,
            (2, 2), (2, 2), _NO_PAD)


# -- the contract ---------------------------------------------------------------------------

def _activation(name, args="x", returns=None, family="numpy_activation"):
    returns = "``-> (y, ctx)``; " + (returns or "the Keras 3 / TensorFlow formula "
                                      "(fastcnn/backends/_activations.py)")
    return OpSpec(name, args, returns,
                  family=family, check=_x, example=_ex_x)


_CONV_BACKWARD = ("``-> (dx, dw, db)``; db None if b was; dx None when need_dx is False "
                  "(a first layer: skip that work)")

SPEC_LIST = (
    OpSpec("conv2d", "x, w, b, stride, pad",
           "``-> (y, ctx)``; ``b`` may be None",
           backward="dy, ctx, need_dx=True", backward_returns=_CONV_BACKWARD,
           check=_conv, example=_ex_conv),
    OpSpec("depthwise_conv2d", "x, w, b, stride, pad",
           "``-> (y, ctx)``; w ``(kh, kw, C, M)`` (Keras's depthwise kernel, M the depth "
           "multiplier), y has ``C*M`` channels, output channel ``c*M + m`` is input "
           "channel c convolved with ``w[:, :, c, m]``; b ``(C*M,)`` or None",
           backward="dy, ctx, need_dx=True", backward_returns="``-> (dx, dw, db)`` as "
           "conv2d_backward", check=_depthwise, example=_ex_depthwise),
    OpSpec("maxpool2d", "x, pool, stride, pad",
           "``-> (y, ctx)``; pads with -inf; the FIRST max in row-major window order "
           "takes the gradient", check=_nhwc, example=_ex_pool),
    OpSpec("avgpool2d", "x, pool, stride, pad",
           "``-> (y, ctx)``; divides by the number of real (unpadded) elements",
           check=_nhwc, example=_ex_pool),
    OpSpec("dense", "x, w, b", "``-> (y, ctx)``; x (N, D), w (D, U)",
           backward="dy, ctx, need_dx=True",
           backward_returns="``-> (dx, dw, db)``; dx None when need_dx is False (the "
           "first trainable layer of a frozen base: skip ``dy @ w.T``)",
           check=_dense, example=_ex_dense),
    _activation("relu", returns="derivative 0 at x == 0", family="relu"),
    _activation("sigmoid", returns="``1 / (1 + exp(-x))``", family="sigmoid"),
    _activation("tanh", returns="``tanh(x)``", family="tanh"),
    _activation("softmax", returns="softmax over the last axis", family="softmax"),
    _activation("relu_general", "x, negative_slope=0.0, max_value=None, threshold=0.0",
                "Keras's ``relu`` with its arguments: ``x`` above ``threshold`` (else 0), "
                "clipped to ``[0, max_value]``, minus ``negative_slope * max(threshold - x, "
                "0)``; derivative ``negative_slope`` at and below the threshold",
                family="relu_general"),
    _activation("relu6", returns="``min(max(x, 0), 6)``", family="relu_general"),
    _activation("leaky_relu", "x, negative_slope=0.2",
                "``x`` if ``x > 0`` else ``slope * x``", family="relu_general"),
    _activation("elu", "x, alpha=1.0", "``alpha * (exp(x) - 1)`` for ``x <= 0``"),
    _activation("selu"),
    _activation("gelu", returns="erf form (Keras 3 / TensorFlow)", family="gelu"),
    _activation("gelu_approximate", returns="tanh form (Keras 3 / TensorFlow)"),
    _activation("silu"),
    _activation("softplus"),
    _activation("softsign"),
    _activation("hard_sigmoid", returns="``relu6(x + 3) / 6``", family="hard_sigmoid"),
    _activation("hard_silu", returns="``x * hard_sigmoid(x)``", family="hard_silu"),
    _activation("exponential"),
    _activation("log_softmax", returns="``x - logsumexp(x)`` over the last axis"),
    OpSpec("prelu", "x, alpha",
           "``x`` if ``x > 0`` else ``alpha * x``; alpha is x's shape without the batch, "
           "1 along shared axes", backward_returns="``-> (dx, dalpha)``; dalpha summed over "
           "the batch and the shared axes", family="numpy_activation", check=_prelu,
           example=_ex_prelu),
    # Batch normalisation over the last axis (any rank: rows = every other position). Two
    # ops of one routing family: the layer needs the batch statistics back to update its
    # moving ones, and a forward's ctx is opaque (auto wraps it), so training computes them
    # with the single op first and hands them to the pair.
    OpSpec("batchnorm_statistics", "x",
           "``-> (mean, var)`` per channel (the last axis) over all other axes; var biased "
           "(Keras); x of rank >= 2", backward=None, family="batchnorm",
           check=_bn_statistics, example=_ex_bn_statistics),
    OpSpec("batchnorm", "x, gamma, beta, mean, var, epsilon, training",
           "``-> (y, ctx)``; ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` per "
           "channel (last axis); gamma, beta (C,) or None; training: mean/var are x's "
           "batchnorm_statistics (the backward differentiates through them), else constants",
           backward="dy, ctx, need_dx=True", backward_returns="``-> (dx, dgamma, dbeta)``; "
           "dgamma / dbeta None where gamma / beta was; dx None when need_dx is False",
           check=_batchnorm, example=_ex_batchnorm),
    OpSpec("softmax_cross_entropy", "logits, targets",
           "``-> (loss, dlogits)``; targets (N, K) rows of probabilities; loss is the batch "
           "mean; dlogits = (softmax*sum(t) - t) / N", backward=None,
           check=_probabilities, example=_ex_targets),
    OpSpec("sparse_softmax_cross_entropy", "logits, labels",
           "same with int labels (N,)", backward=None, check=_labels, example=_ex_labels),
    OpSpec("sigmoid_cross_entropy", "logits, targets",
           "``-> (loss, dlogits)``; mean over all elements, stable for any logit",
           backward=None, check=_elementwise_logits, example=_ex_binary),
    OpSpec("conv2d_maxpool2d_forward", "x, w, b, stride, pad, pool, pool_stride, pool_pad",
           "``-> (y, conv_ctx, pool_ctx)`` or None: ``y`` is maxpool2d_forward's output on "
           "conv2d_forward's output, bitwise; the contexts go to this backend's "
           "conv2d_backward / maxpool2d_backward", family="conv2d",
           fused=("conv2d", "maxpool2d"), check=_conv, example=_ex_conv_pool),
)

#: name -> spec, in contract order (add_op in fastcnn.backends appends).
SPECS: dict[str, OpSpec] = {spec.name: spec for spec in SPEC_LIST}


def ops(fused: bool = False) -> tuple[str, ...]:
    """The op names of the (fused or not) specs, in contract order."""
    return tuple(op for spec in SPECS.values() if bool(spec.fused) == fused for op in spec.ops)


def spec_of(op: str) -> OpSpec:
    """The spec declaring ``op`` (``"conv2d_backward"`` -> conv2d's)."""
    for spec in SPECS.values():
        if op in spec.ops:
            return spec
    raise KeyError(f"{op!r} is not an op of the kernel contract")


def contract_table(fused: bool = False, left: int = 45, right: int = 36) -> str:
    """The rst table of the contract (the forward and backward of every spec)."""
    rule = f"{'=' * left}  {'=' * right}"

    def row(signature, text):
        lines_l = textwrap.wrap(signature, left) or [""]
        lines_r = textwrap.wrap(text, right) or [""]
        lines_l += [""] * (len(lines_r) - len(lines_l))
        lines_r += [""] * (len(lines_l) - len(lines_r))
        return [f"{a:<{left}}  {b}".rstrip() for a, b in zip(lines_l, lines_r)]

    lines = [rule]
    for spec in SPECS.values():
        if bool(spec.fused) != fused:
            continue
        lines += row(f"``{spec.forward_op}({spec.args})``", spec.returns)
        if spec.is_pair:
            lines += row(f"``{spec.backward_op}({spec.backward})``", spec.backward_returns)
    lines.append(rule)
    return "\n".join(lines)
