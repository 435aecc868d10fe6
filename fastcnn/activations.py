"""Activations: the ONE place activation names are known (Keras 3's names and formulas).

Two faces:

* **For layers**: :func:`get` turns an identifier (a name such as ``'relu'`` or
  ``'swish'``, one of this module's functions such as ``fastcnn.activations.relu``, or
  None) into a *canonical name*, which a layer stores and saves in ``get_config``. The
  layer then calls :func:`forward` / :func:`backward` with the backend it resolved at call
  time, so the same activation runs on any backend: each name is a kernel pair
  ``<op>_forward(x) -> (y, ctx)`` / ``<op>_backward(dy, ctx) -> dx`` of the kernel
  contract (:mod:`fastcnn.backends`), implemented by every backend.
* **For arrays**: ``fastcnn.activations.relu(x, negative_slope=0.0, max_value=None,
  threshold=0.0)``, ``gelu(x, approximate=False)``, ``softmax(x, axis=-1)``, ... take an
  array (or anything NumPy turns into one) and return the values, computed on the active
  backend, as ``keras.activations.*`` do.

Names (aliases in parentheses; :data:`KNOWN` lists the canonical ones): ``relu``, ``relu6``,
``leaky_relu`` (negative_slope 0.2), ``elu`` (alpha 1), ``selu``, ``gelu`` (the exact erf
form; ``gelu_approximate`` is the tanh form, Keras's ``gelu(x, approximate=True)``),
``silu`` (``swish``), ``softplus``, ``softsign``, ``hard_sigmoid`` (Keras 3's
``relu6(x + 3) / 6``), ``hard_silu`` (``hard_swish``), ``exponential``, ``sigmoid``,
``tanh``, ``softmax`` and ``log_softmax`` (over the last axis), ``linear``.

Derivatives at kinks follow TensorFlow: relu's is 0 at 0, leaky_relu's is its slope at 0,
relu6's is 0 at 0 and at 6, hard_sigmoid's is 0 at -3 and 3.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _device, backends, config

# canonical name -> (forward op, backward op) of the kernel contract; None: identity.
_OPS = {
    "relu": ("relu_forward", "relu_backward"),
    "relu6": ("relu6_forward", "relu6_backward"),
    "leaky_relu": ("leaky_relu_forward", "leaky_relu_backward"),
    "elu": ("elu_forward", "elu_backward"),
    "selu": ("selu_forward", "selu_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "gelu_approximate": ("gelu_approximate_forward", "gelu_approximate_backward"),
    "silu": ("silu_forward", "silu_backward"),
    "softplus": ("softplus_forward", "softplus_backward"),
    "softsign": ("softsign_forward", "softsign_backward"),
    "hard_sigmoid": ("hard_sigmoid_forward", "hard_sigmoid_backward"),
    "hard_silu": ("hard_silu_forward", "hard_silu_backward"),
    "exponential": ("exponential_forward", "exponential_backward"),
    "sigmoid": ("sigmoid_forward", "sigmoid_backward"),
    "tanh": ("tanh_forward", "tanh_backward"),
    "softmax": ("softmax_forward", "softmax_backward"),
    "log_softmax": ("log_softmax_forward", "log_softmax_backward"),
    "linear": None,
}

#: The canonical names (what :func:`get` returns and layers save).
KNOWN = tuple(_OPS)

#: Other spellings Keras accepts, and the canonical name each stands for.
ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}

#: Activations computed along the last axis instead of element by element.
ROW_WISE = frozenset({"softmax", "log_softmax"})

#: The element-wise activations that are non-decreasing functions, so that they commute
#: with a maximum: ``max(f(a), f(b)) == f(max(a, b))`` (a ReLU-like step may run after a
#: max pool instead of before it, on fewer values). Gradients agree too, wherever the
#: derivative is 0 on ties (ReLU's flat part, relu6's and hard_sigmoid's saturation) or
#: the function is strictly increasing. One caveat for the strictly increasing
#: saturating ones (sigmoid, tanh, softsign, exponential, softplus, elu, selu): in floating
#: point two inputs can round to the same output (sigmoid(20) == sigmoid(30) == 1 in
#: float32), and then the two orders may send a tiny gradient to different positions.
#: leaky_relu and elu are listed with their defaults (a slope / alpha >= 0). Not listed:
#: gelu, silu, hard_silu (not monotone), softmax and log_softmax (not element-wise).
MONOTONE_NONDECREASING = frozenset({
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "softplus", "softsign",
    "sigmoid", "tanh", "hard_sigmoid", "exponential",
})


def get(identifier):
    """Canonical activation name for ``identifier``.

    Accepted: None (-> ``'linear'``), a name or alias (case-insensitive), one of this
    module's functions or of ``fastcnn.nn`` / ``fastcnn.ops`` (``fastcnn.nn.relu`` ->
    ``'relu'``), or any other callable of one tensor, returned as it is: it runs through
    a :class:`~fastcnn.autodiff.GradientTape`, so it must be written with fastcnn.ops
    operations or Tensor arithmetic (a NumPy function has no gradient: a clear error says
    so on its first use). Anything else raises ValueError listing the known names.
    """
    if identifier is None:
        return "linear"
    if isinstance(identifier, str):
        key = identifier.lower()
        key = ALIASES.get(key, key)
        if key in _OPS:
            return key
        raise ValueError(
            f"activation must be one of {sorted(KNOWN + tuple(ALIASES))}, one of "
            f"fastcnn.activations' functions or None, got {identifier!r}"
        )
    if callable(identifier):
        try:
            name = _FUNCTIONS.get(identifier)
        except TypeError:  # an unhashable callable object
            name = None
        if name is not None:
            return name
        return identifier       # a custom callable: differentiated by the tape

    raise ValueError(
        f"activation must be a name (one of {sorted(KNOWN + tuple(ALIASES))}), one of "
        f"fastcnn.activations' functions or None, got {identifier!r} "
        f"({type(identifier).__name__})"
    )


def serialize(activation, layer_name):
    """The config value of a layer's activation: its name; a custom callable cannot be
    held by a config (ValueError naming the layer and the callable)."""
    if callable(activation):
        raise ValueError(
            f"layer {layer_name!r} has the custom activation "
            f"{getattr(activation, '__name__', activation)!r}, which a config (and a model "
            f"file) cannot hold: use a named activation, or save_weights and rebuild the "
            f"model in code")
    return activation


def is_identity(name) -> bool:
    return not callable(name) and _OPS[name] is None


def _callable_forward(fn, x):
    """A custom activation on a private tape: ``(y, ctx)`` with its gradient kept."""
    from . import autodiff
    with autodiff.isolated():
        tape = autodiff.GradientTape()
        with tape:
            t = autodiff.Tensor(x)
            tape.watch(t)
            out = fn(t)
    if not isinstance(out, autodiff.Tensor):
        name = getattr(fn, "__name__", repr(fn))
        raise ValueError(
            f"activation {name!r} returned a {type(out).__name__}, not a fastcnn Tensor: its "
            f"gradient cannot be formed. Write it with fastcnn.ops operations (e.g. "
            f"fastcnn.ops.maximum(x, 0.1 * x)) or Tensor arithmetic, not NumPy functions")
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"activation {getattr(fn, '__name__', fn)!r} changed the shape "
                         f"{tuple(x.shape)} to {tuple(out.shape)}; an activation is "
                         f"element-wise")
    y = out.value
    if not _device.is_device_array(y):
        y = np.ascontiguousarray(y, dtype=x.dtype)
    return y, (tape, t, out)


def _callable_backward(dy, ctx):
    tape, t, out = ctx
    g = tape.gradient(out, t, output_gradients=dy)
    return np.zeros_like(dy) if g is None else g


def ops(name: str):
    """``(forward op, backward op)`` names of the kernel pair of ``name`` (None: linear)."""
    return _OPS[name]


def forward(backend, name: str, x, **params):
    """``(y, ctx)``; ctx is None for 'linear' (y is x itself, nothing is copied).

    ``params`` go to the kernel (``negative_slope`` for leaky_relu, ``alpha`` for elu).
    """
    if callable(name):
        return _callable_forward(name, x)
    pair = _OPS[name]
    if pair is None:
        return x, None
    if name in ROW_WISE and x.ndim not in (0, 2):  # (0-d: the kernel's own error)
        # The kernels define these on (N, K); any rank reduces to that with a free view.
        y, ctx = getattr(backend, pair[0])(x.reshape(_rows(x.shape)), **params)
        return y.reshape(x.shape), (ctx, x.shape)
    return getattr(backend, pair[0])(x, **params)


def backward(backend, name: str, dy, ctx):
    """Gradient with respect to the activation's input."""
    if callable(name):
        return _callable_backward(dy, ctx)
    pair = _OPS[name]
    if pair is None:
        return dy
    if name in ROW_WISE and dy.ndim not in (0, 2):
        inner, shape = ctx
        return getattr(backend, pair[1])(dy.reshape(_rows(shape)), inner).reshape(shape)
    return getattr(backend, pair[1])(dy, ctx)


def _rows(shape):
    """``(rows, K)`` for a row-wise activation over the last axis of ``shape`` (explicit,
    not ``(-1, K)``: an empty array has no -1; and shape[len - 1], not shape[-1]: the
    CUDA simulator's array shapes refuse negative indices)."""
    k = shape[len(shape) - 1]
    return (math.prod(shape[:len(shape) - 1]), k)


# ------------------------------------------------------------- functions on arrays


def _as_array(x):
    """A C-contiguous float array: float32/float64 arrays keep their dtype, anything else
    (lists, numbers, integer arrays) becomes floatx; cuda device arrays pass as they are."""
    if hasattr(x, "copy_to_host"):
        return x
    if not isinstance(x, np.ndarray):  # a list or a number: floatx, as Keras converts them
        return np.asarray(x, dtype=config.floatx())
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(config.floatx())
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def _number(value, argument, *, allow_none=False):
    if value is None and allow_none:
        return None
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or math.isnan(float(value))):
        expected = "a number or None" if allow_none else "a number"
        raise ValueError(f"{argument} must be {expected}, got {value!r}")
    return float(value)


def _apply(name, x, **params):
    x = _as_array(x)
    y, _ = forward(backends.current(), name, x, **params)
    return y


def _along(name, x, axis):
    """A row-wise activation along ``axis`` (moved last and back for another axis)."""
    x = _as_array(x)
    ndim = len(x.shape)
    if ndim == 0:
        raise ValueError(f"{name} needs an array with at least one axis, got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) \
            or not -ndim <= axis < ndim:
        raise ValueError(f"axis must be an int in [{-ndim}, {ndim}) for an array of rank "
                         f"{ndim}, got {axis!r}")
    axis = int(axis) % ndim
    if axis == ndim - 1:
        return _apply(name, x)
    if hasattr(x, "copy_to_host"):
        raise ValueError(f"{name} along axis {axis} of a device array is not supported: only "
                         f"along the last axis (axis=-1)")
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    return np.ascontiguousarray(np.moveaxis(_apply(name, moved), -1, axis))


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's ``relu``: ``max(x, 0)`` by default; with ``threshold`` values at or below it
    become 0 (or ``negative_slope * (x - threshold)``); ``max_value`` clips from above."""
    slope = _number(negative_slope, "negative_slope")
    top = _number(max_value, "max_value", allow_none=True)
    t = _number(threshold, "threshold")
    if t == 0.0 and top is None:
        if slope == 0.0:
            return _apply("relu", x)
        return _apply("leaky_relu", x, negative_slope=slope)
    if t == 0.0 and slope == 0.0 and top == 6.0:
        return _apply("relu6", x)
    x = _as_array(x)
    y, _ = backends.current().relu_general_forward(x, slope, top, t)
    return y


def relu6(x):
    """``min(max(x, 0), 6)``."""
    return _apply("relu6", x)


def leaky_relu(x, negative_slope=0.2):
    """``x`` if ``x > 0`` else ``negative_slope * x``."""
    return _apply("leaky_relu", x, negative_slope=_number(negative_slope, "negative_slope"))


def elu(x, alpha=1.0):
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""
    return _apply("elu", x, alpha=_number(alpha, "alpha"))


def selu(x):
    """``scale * elu(x, alpha)`` with ``alpha = 1.67326324...``, ``scale = 1.05070098...``."""
    return _apply("selu", x)


def gelu(x, approximate=False):
    """``x * Phi(x)`` (Phi the standard normal CDF); ``approximate=True``: the tanh form
    ``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``."""
    return _apply("gelu_approximate" if approximate else "gelu", x)


def silu(x):
    """``x * sigmoid(x)`` (also called swish)."""
    return _apply("silu", x)


swish = silu


def softplus(x):
    """``log(exp(x) + 1)``, computed without overflow."""
    return _apply("softplus", x)


def softsign(x):
    """``x / (abs(x) + 1)``."""
    return _apply("softsign", x)


def hard_sigmoid(x):
    """Keras 3's ``relu6(x + 3) / 6``."""
    return _apply("hard_sigmoid", x)


def hard_silu(x):
    """``x * hard_sigmoid(x)`` (also called hard_swish)."""
    return _apply("hard_silu", x)


hard_swish = hard_silu


def exponential(x):
    """``exp(x)``."""
    return _apply("exponential", x)


def sigmoid(x):
    """``1 / (1 + exp(-x))``."""
    return _apply("sigmoid", x)


def tanh(x):
    return _apply("tanh", x)


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis``."""
    return _along("softmax", x, axis)


def log_softmax(x, axis=-1):
    """``x - logsumexp(x)`` along ``axis``."""
    return _along("log_softmax", x, axis)


def linear(x):
    """The identity (``x`` itself, as Keras returns it)."""
    return x


#: Each function of this module that :func:`get` accepts -> its canonical name.
_FUNCTIONS = {
    relu: "relu", relu6: "relu6", leaky_relu: "leaky_relu", elu: "elu", selu: "selu",
    gelu: "gelu", silu: "silu", softplus: "softplus", softsign: "softsign",
    hard_sigmoid: "hard_sigmoid", hard_silu: "hard_silu", exponential: "exponential",
    sigmoid: "sigmoid", tanh: "tanh", softmax: "softmax", log_softmax: "log_softmax",
    linear: "linear",
}


def register_function(function, name: str) -> None:
    """Lets :func:`get` accept ``function`` as the activation ``name`` (a canonical name or
    alias), e.g. ``fastcnn.nn.relu`` for ``'relu'``."""
    canonical = get(name)
    _FUNCTIONS[function] = canonical
