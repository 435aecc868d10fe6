"""Activation layers with Keras 3's names, arguments and defaults: ReLU, LeakyReLU, PReLU,
ELU, Softmax.

Stateless layer contract (``forward(x, training) -> (y, ctx)``, ``backward(dy, ctx,
need_dx) -> (dx, grads)``). ReLU, LeakyReLU, ELU, Softmax (along the last axis) and PReLU run
the backend's kernels (fastcnn.backends, resolved at call time and kept in ctx), so they
run on every backend, device arrays included.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .. import activations, backends, constraints, initializers, regularizers
from .base import Layer, serialize_initializer


def _real(value, argument, *, minimum=None, allow_none=False, layer="layer"):
    """``value`` as a float (or None), or ValueError naming the argument and the value."""
    if value is None and allow_none:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value))):
        expected = "a finite number" + (" or None" if allow_none else "")
        raise ValueError(f"{argument} of a {layer} layer must be {expected}, got {value!r}")
    if minimum is not None and float(value) < minimum:
        raise ValueError(f"{argument} of a {layer} layer must be >= {minimum}, got {value!r}")
    return float(value)


class _KernelActivation(Layer):
    """An element-wise activation computed by one backend kernel pair ``op``."""

    _base_class = True  # not a layer of its own: save/load's registry skips it
    runs_on_device = True  # backend ops only

    def _kernel(self):
        """``(op, params)``: the kernel pair's name and its keyword arguments."""
        raise NotImplementedError

    def _build(self, input_shape, dtype):
        return input_shape

    def forward(self, x, training=False):
        backend = backends.current()
        op, params = self._kernel()
        y, ctx = getattr(backend, f"{op}_forward")(x, **params)
        return y, (backend, op, ctx)

    def backward(self, dy, ctx, need_dx=True):
        backend, op, inner = ctx
        return getattr(backend, f"{op}_backward")(dy, inner), ()


class ReLU(_KernelActivation):
    """Keras's ``ReLU(max_value=None, negative_slope=0.0, threshold=0.0)``:
    ``activations.relu(x, negative_slope, max_value, threshold)``."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_value = _real(max_value, "max_value", minimum=0.0, allow_none=True,
                               layer="ReLU")
        self.negative_slope = _real(negative_slope, "negative_slope", minimum=0.0,
                                    layer="ReLU")
        self.threshold = _real(threshold, "threshold", minimum=0.0, layer="ReLU")

    def _kernel(self):
        m, s, t = self.max_value, self.negative_slope, self.threshold
        if t == 0.0 and s == 0.0 and m is None:
            return "relu", {}
        if t == 0.0 and s == 0.0 and m == 6.0:
            return "relu6", {}
        if t == 0.0 and m is None:
            return "leaky_relu", {"negative_slope": s}
        return "relu_general", {"negative_slope": s, "max_value": m, "threshold": t}

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value,
                "negative_slope": self.negative_slope, "threshold": self.threshold}


class LeakyReLU(_KernelActivation):
    """Keras's ``LeakyReLU(negative_slope=0.3)``: ``x`` if ``x > 0`` else
    ``negative_slope * x``."""

    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:  # Keras 2's spelling, which the tutorials use
            negative_slope = kwargs.pop("alpha")
            warnings.warn("LeakyReLU(alpha=...) is Keras 2's spelling; Keras 3 calls it "
                          "LeakyReLU(negative_slope=...)", DeprecationWarning, stacklevel=2)
        super().__init__(**kwargs)
        self.negative_slope = _real(negative_slope, "negative_slope", minimum=0.0,
                                    layer="LeakyReLU")

    def _kernel(self):
        return "leaky_relu", {"negative_slope": self.negative_slope}

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class ELU(_KernelActivation):
    """Keras's ``ELU(alpha=1.0)``: ``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _real(alpha, "alpha", layer="ELU")

    def _kernel(self):
        return "elu", {"alpha": self.alpha}

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class Softmax(Layer):
    """Keras's ``Softmax(axis=-1)``: ``exp(x) / sum(exp(x))`` along ``axis`` (an int or a
    list of ints; several axes are normalised together).

    Along the last axis alone it runs the backend's softmax kernels (device arrays
    included), and a model may hand the loss its logits (``activation`` is then
    ``'softmax'``, as for ``Dense(..., activation='softmax')``); another axis is moved
    last on the host.
    """

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            if not axis:
                raise ValueError("axis of a Softmax layer must be an int or a non-empty list "
                                 "of ints, got []")
            axes = list(axis)
        else:
            axes = [axis]
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, numbers.Integral):
                raise ValueError(f"axis of a Softmax layer must be an int or a list of ints, "
                                 f"got {axis!r}")
        self.axis = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else int(axis)
        self._axes = None  # the axes as non-negative ints, once built
        self.activation = None
        self.runs_on_device = False

    def _build(self, input_shape, dtype):
        ndim = len(input_shape)
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        for a in axes:
            if not -ndim <= a < ndim:
                raise ValueError(f"axis {self.axis!r} is out of range for an input of rank "
                                 f"{ndim} (shape {input_shape}, batch first)")
        self._axes = tuple(sorted({a % ndim for a in axes}))
        if len(self._axes) != len(axes):
            raise ValueError(f"axis of a Softmax layer names an axis twice: {self.axis!r}")
        if self._axes == (ndim - 1,):
            self.activation = "softmax"  # the model may fuse it with a cross-entropy
            self.runs_on_device = True
        return input_shape

    def forward(self, x, training=False, activate=True):
        """``activate=False`` returns x itself (the model's fused cross-entropy head)."""
        if not activate:
            return x, None
        backend = backends.current()
        if self.activation == "softmax":
            y, ctx = activations.forward(backend, "softmax", x)
            return y, (backend, ctx, None)
        # Move the axes last and flatten them into one: softmax over the rows of that.
        ndim = x.ndim
        rest = [a for a in range(ndim) if a not in self._axes]
        order = rest + list(self._axes)
        moved = np.ascontiguousarray(np.transpose(x, order))
        rows = moved.reshape(moved.shape[:len(rest)] + (-1,))
        y, ctx = activations.forward(backend, "softmax", rows)
        y = np.ascontiguousarray(np.transpose(y.reshape(moved.shape), np.argsort(order)))
        return y, (backend, ctx, (order, moved.shape, rows.shape))

    def backward(self, dy, ctx, need_dx=True):
        if ctx is None:  # forward(activate=False): the identity
            return dy, ()
        backend, inner, layout = ctx
        if layout is None:
            return activations.backward(backend, "softmax", dy, inner), ()
        order, moved_shape, rows_shape = layout
        moved = np.ascontiguousarray(np.transpose(dy, order)).reshape(rows_shape)
        dx = activations.backward(backend, "softmax", moved, inner)
        return np.ascontiguousarray(np.transpose(dx.reshape(moved_shape), np.argsort(order))), ()

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class PReLU(Layer):
    """Keras's ``PReLU(alpha_initializer='zeros', alpha_regularizer=None,
    alpha_constraint=None, shared_axes=None)``: ``x`` if ``x > 0`` else ``alpha * x`` with
    a learned ``alpha`` of the input's shape (batch excluded), size 1 along
    ``shared_axes`` (e.g. ``shared_axes=[1, 2]``: one slope per channel of an image).
    Runs the backend's prelu kernel pair."""

    runs_on_device = True  # backend ops only

    def __init__(self, alpha_initializer="zeros", alpha_regularizer=None,
                 alpha_constraint=None, shared_axes=None, **kwargs):
        super().__init__(**kwargs)
        self.alpha_initializer = initializers.get(alpha_initializer,
                                                  argument="alpha_initializer")
        self.alpha_regularizer = regularizers.get(alpha_regularizer,
                                                  argument="alpha_regularizer")
        self.alpha_constraint = constraints.get(alpha_constraint, argument="alpha_constraint")
        if shared_axes is None:
            self.shared_axes = None
        else:
            axes = list(shared_axes) if isinstance(shared_axes, (list, tuple)) else [shared_axes]
            for a in axes:
                if isinstance(a, bool) or not isinstance(a, numbers.Integral) or a < 1:
                    raise ValueError(f"shared_axes of a PReLU layer must be axis indices >= 1 "
                                     f"(axis 0 is the batch), got {shared_axes!r}")
            self.shared_axes = [int(a) for a in axes]
        self.alpha = None

    def _build(self, input_shape, dtype):
        ndim = len(input_shape)
        shape = list(input_shape[1:])
        for a in self.shared_axes or ():
            if a >= ndim:
                raise ValueError(f"shared_axes {self.shared_axes} name axis {a}, but the input "
                                 f"has rank {ndim} (shape {input_shape}, batch first)")
            shape[a - 1] = 1
        if any(d is None for d in shape):
            raise ValueError(f"PReLU needs every non-shared axis of its input to have a known "
                             f"size, got input shape {input_shape}; give the unknown axes in "
                             f"shared_axes")
        kwargs = {} if self.alpha_constraint is None else {"constraint": self.alpha_constraint}
        self.alpha = self.add_weight(tuple(shape), self.alpha_initializer, dtype,
                                     trainable=True, **kwargs)
        return input_shape

    def forward(self, x, training=False):
        # The backend's prelu kernels: max(x, 0) + alpha * min(x, 0), Keras's
        # relu(x) - alpha * relu(-x) (the same numbers: each product rounds once).
        backend = backends.current()
        y, ctx = backend.prelu_forward(x, self.alpha)
        return y, (backend, ctx)

    def backward(self, dy, ctx, need_dx=True):
        backend, inner = ctx
        dx, dalpha = backend.prelu_backward(dy, inner)
        return (dx if need_dx else None), (dalpha,)

    def regularization_loss(self):
        return regularizers.penalty(((self.alpha_regularizer, self.alpha),))

    def add_regularization_gradients(self, grads):
        if self.alpha_regularizer is None:
            return grads
        return (regularizers.add_gradient(self.alpha_regularizer, grads[0], self.alpha),)

    def get_config(self):
        return {**super().get_config(),
                "alpha_initializer": serialize_initializer(self.alpha_initializer),
                "alpha_regularizer": regularizers.serialize(self.alpha_regularizer),
                "alpha_constraint": constraints.serialize(self.alpha_constraint),
                "shared_axes": self.shared_axes}
