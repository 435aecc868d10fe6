"""Dense, Flatten, Dropout, Activation and Input."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _device, activations, backends, config, utils
from .base import Layer, format_shape, normalize_dtype, normalize_shape, positive_int
from .kernel_layer import KernelLayer


class Dense(KernelLayer):
    """A fully connected layer (Keras's ``keras.layers.Dense``):
    ``y = activation(x @ kernel + bias)`` with kernel ``(in, units)``.

    On input of rank above 2 it applies to the last axis (Keras): ``(N, ..., in)`` gives
    ``(N, ..., units)``; the kernels see the rows as one ``(N * ..., in)`` matrix.

    Args:
        units: the number of outputs (a positive int).
        activation: a name (``'relu'``, ``'softmax'``, ... see :mod:`fastcnn.activations`),
            one of ``fastcnn.activations``' / ``fastcnn.nn``'s functions, any callable
            written with ``fastcnn.ops``, or None (linear). A ``'softmax'``/``'sigmoid'``
            last layer is fused with the matching cross-entropy in training (Keras's rule).
        use_bias: whether to add a bias (default True).
        kernel_initializer, bias_initializer: names or initializer objects
            (:mod:`fastcnn.initializers`), default ``'glorot_uniform'`` and ``'zeros'``.
        kernel_regularizer, bias_regularizer: None, a name (``'l2'``) or a regularizer.
        kernel_constraint, bias_constraint: None or a constraint, applied after each step.
        input_shape, name, dtype, trainable: as every layer.
    """

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, kernel_constraint,
                         bias_constraint, **kwargs)
        self.units = positive_int(units, "units")

    def _build(self, input_shape, dtype):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"Dense expects input of rank >= 2 (batch, ..., features) with a known last "
                f"axis, got shape {format_shape(input_shape)}"
            )
        self.kernel = self.add_weight((input_shape[-1], self.units), self.kernel_initializer,
                                      dtype, name="kernel", constraint=self.kernel_constraint)
        if self.use_bias:
            self.bias = self.add_weight((self.units,), self.bias_initializer, dtype, name="bias",
                                        constraint=self.bias_constraint)
        return tuple(input_shape[:-1]) + (self.units,)

    def _op_forward(self, backend, x):
        if len(x.shape) == 2:
            return backend.dense_forward(x, self.kernel, self.bias)
        shape = tuple(x.shape)
        y, ctx = backend.dense_forward(x.reshape(-1, shape[-1]), self.kernel, self.bias)
        return y.reshape(shape[:-1] + (self.units,)), _RowsContext(ctx, shape)

    def _op_backward(self, backend, dy, ctx, need_dx):
        if not isinstance(ctx, _RowsContext):
            return backend.dense_backward(dy, ctx, need_dx)
        dx, dw, db = backend.dense_backward(dy.reshape(-1, self.units), ctx.inner, need_dx)
        return (None if dx is None else dx.reshape(ctx.shape)), dw, db

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class _RowsContext:
    """A dense kernel's ctx for input of rank above 2, seen as rows, and that input's shape."""

    __slots__ = ("inner", "shape")

    def __init__(self, inner, shape):
        self.inner, self.shape = inner, shape


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C) in C order (NHWC), a free view of contiguous input."""

    runs_on_device = True  # a reshape, which device arrays support

    def __init__(self, *, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(
                f"data_format must be None or 'channels_last', got {data_format!r}")

    def _build(self, input_shape, dtype):
        if len(input_shape) < 2:
            raise ValueError(f"Flatten expects input of rank >= 2, got shape {input_shape}")
        if any(d is None for d in input_shape[1:]):
            raise ValueError(f"Flatten needs all non-batch dimensions known, got {input_shape}")
        return (input_shape[0], math.prod(input_shape[1:]))

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1), tuple(x.shape)

    def backward(self, dy, ctx, need_dx=True):
        return dy.reshape(ctx), ()


class Dropout(Layer):
    """Inverted dropout: in training, zeroes each unit with probability ``rate`` and scales
    the kept ones by ``1 / (1 - rate)`` (expected value preserved); identity otherwise.

    ``noise_shape`` (Keras): the mask's shape, with None taken from the input, broadcast
    over the input (e.g. ``(None, 1, 1, C)`` drops whole feature maps).
    Unseeded, masks come from the package generator (``fastcnn.utils.set_random_seed``).
    On a device backend the mask is drawn on the host (the same draws as on any backend)
    and copied to the device once per step.
    """

    runs_on_device = True

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if (not isinstance(rate, numbers.Real) or isinstance(rate, bool)
                or not 0.0 <= float(rate) < 1.0):
            raise ValueError(f"rate must be a float in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = utils.check_seed(seed, allow_none=True)
        self._rng = None if self.seed is None else np.random.default_rng(self.seed)

    def _build(self, input_shape, dtype):
        if self.noise_shape is not None:
            ns = self.noise_shape
            if len(ns) != len(input_shape) or any(
                n is not None and n != 1 and n != d for n, d in zip(ns, input_shape)
            ):
                raise ValueError(
                    f"noise_shape {ns} does not broadcast to the input shape {input_shape}; "
                    f"each entry must be None, 1 or the input's size"
                )
        return input_shape

    def forward(self, x, training=False):
        if not training or self.rate == 0.0:
            return x, None  # backward is the identity
        shape = x.shape if self.noise_shape is None else tuple(
            d if n is None else n for n, d in zip(self.noise_shape, x.shape))
        rng = self._rng if self._rng is not None else utils.get_rng()
        keep = rng.random(shape, dtype=x.dtype) >= self.rate
        mask = keep.astype(x.dtype)
        mask *= 1.0 / (1.0 - self.rate)
        if _device.is_device_array(x):
            # The device product takes equal shapes: broadcast noise_shape here, once.
            mask = _device.like(x, np.ascontiguousarray(np.broadcast_to(mask, tuple(x.shape))))
        return _device.multiply(x, mask), mask

    def backward(self, dy, ctx, need_dx=True):
        return (dy if ctx is None else _device.multiply(dy, ctx)), ()

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "noise_shape": self.noise_shape,
                "seed": self.seed}


class Activation(Layer):
    """Applies an activation by name: 'relu', 'sigmoid', 'tanh', 'softmax', 'linear'."""

    runs_on_device = True  # backend ops only

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def _build(self, input_shape, dtype):
        return input_shape

    def forward(self, x, training=False, activate=True):
        act = self.activation if activate and self.activation != "linear" else None
        if act is None:
            return x, (None, None, None)
        backend = backends.current()
        y, ctx = activations.forward(backend, act, x)
        return y, (backend, act, ctx)

    @staticmethod
    def op_context(backend, ctx):
        """The ctx of ``forward(x, activate=False)`` (fastcnn.layers.fusion)."""
        return (None, None, None)

    def backward(self, dy, ctx, need_dx=True):
        backend, act, act_ctx = ctx
        return (dy if act is None else activations.backward(backend, act, dy, act_ctx)), ()

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation, self.name)}


class InputLayer(Layer):
    """The layer behind :func:`fastcnn.Input` (Keras's ``InputLayer``): the entry of a
    graph, with a fixed shape and dtype and no computation.

    ``InputLayer(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None)``;
    ``Sequential([InputLayer((28, 28, 1)), ...])`` works as ``Input`` does.
    """

    runs_on_device = True

    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, batch_shape=None,
                 **kwargs):
        if name is None:
            name = utils.unique_name("input_layer")
        super().__init__(name=name, **kwargs)
        if batch_shape is not None:
            if shape is not None:
                raise ValueError("give shape or batch_shape, not both")
            batch_shape = tuple(batch_shape)
            if not batch_shape:
                raise ValueError(f"batch_shape must include the batch dimension, got "
                                 f"{batch_shape!r}")
            batch_size, shape = batch_shape[0], batch_shape[1:]
        if shape is None:
            raise ValueError("Input needs shape=(...) (the shape of one sample, without the "
                             "batch dimension)")
        self.shape_arg = normalize_shape(shape, "shape", allow_unknown=True)
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
        self.batch_size = batch_size
        dt = normalize_dtype(dtype) or np.dtype(config.floatx())
        self._dtype_arg = dt
        self.build((None,) + self.shape_arg, dt)
        from ..graph import KerasTensor, Node
        tensor = KerasTensor(self.batch_shape, dt, name=self.name)
        node = Node(self, [], [tensor], False)
        tensor.node = node
        self._inbound_nodes.append(node)
        self._tensor = tensor

    @property
    def batch_shape(self):
        return (self.batch_size,) + self.shape_arg

    def _build(self, input_shape, dtype):
        return input_shape

    def forward(self, x, training=False):
        return x, None

    def backward(self, dy, ctx, need_dx=True):
        return dy, ()

    def get_config(self):
        return {"name": self.name, "batch_shape": list(self.batch_shape),
                "dtype": self.dtype}

    @classmethod
    def from_config(cls, config_):
        config_ = dict(config_)
        if "batch_input_shape" in config_:      # Keras 2 spelling
            config_["batch_shape"] = config_.pop("batch_input_shape")
        config_.pop("sparse", None)
        config_.pop("ragged", None)
        return cls(**config_)

    def __repr__(self):
        return f"<InputLayer name={self.name!r} shape={format_shape((None,) + self.shape_arg)}>"


def Input(shape=None, batch_size=None, dtype=None, name=None, batch_shape=None):  # noqa: N802
    """A symbolic input tensor (Keras's ``keras.Input``), shape ``(None,) + shape``: the
    start of a Functional model, or the first entry of a Sequential model."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name,
                      batch_shape=batch_shape)._tensor
