"""Dense, Flatten, Dropout, Activation and Input."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _device, activations, backends, utils
from .base import Layer, format_shape, normalize_dtype, normalize_shape, positive_int
from .kernel_layer import KernelLayer


class Dense(KernelLayer):
    """``y = activation(x @ kernel + bias)`` with kernel ``(in, units)``; x is 2-D."""

    def __init__(self, units, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, **kwargs)
        self.units = positive_int(units, "units")

    def _build(self, input_shape, dtype):
        if len(input_shape) != 2 or input_shape[1] is None:
            raise ValueError(
                f"Dense expects 2-D input (batch, features), got shape "
                f"{format_shape(input_shape)}; put a Flatten() layer before it"
            )
        self.kernel = self.add_weight((input_shape[1], self.units), self.kernel_initializer, dtype)
        if self.use_bias:
            self.bias = self.add_weight((self.units,), self.bias_initializer, dtype)
        return (input_shape[0], self.units)

    def _op_forward(self, backend, x):
        return backend.dense_forward(x, self.kernel, self.bias)

    def _op_backward(self, backend, dy, ctx, need_dx):
        return backend.dense_backward(dy, ctx)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C) in C order (NHWC), a free view of contiguous input."""

    runs_on_device = True  # a reshape, which device arrays support

    def __init__(self, *, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(
                f"data_format must be None or 'channels_last', got {data_format!r}")
        self._cache = None

    def _build(self, input_shape, dtype):
        if len(input_shape) < 2:
            raise ValueError(f"Flatten expects input of rank >= 2, got shape {input_shape}")
        if any(d is None for d in input_shape[1:]):
            raise ValueError(f"Flatten needs all non-batch dimensions known, got {input_shape}")
        return (input_shape[0], math.prod(input_shape[1:]))

    def forward(self, x, training=False):
        if training:
            self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        if self._cache is None:
            raise self._no_cache()
        shape, self._cache = self._cache, None
        return dy.reshape(shape)


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
        self._cache = None

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
            self._cache = False  # backward is the identity
            return x
        shape = x.shape if self.noise_shape is None else tuple(
            d if n is None else n for n, d in zip(self.noise_shape, x.shape))
        rng = self._rng if self._rng is not None else utils.get_rng()
        keep = rng.random(shape, dtype=x.dtype) >= self.rate
        mask = keep.astype(x.dtype)
        mask *= 1.0 / (1.0 - self.rate)
        if _device.is_device_array(x):
            # The device product takes equal shapes: broadcast noise_shape here, once.
            mask = _device.like(x, np.ascontiguousarray(np.broadcast_to(mask, tuple(x.shape))))
        self._cache = mask
        return _device.multiply(x, mask)

    def backward(self, dy, need_dx=True):
        if self._cache is None:
            raise self._no_cache()
        mask, self._cache = self._cache, None
        return dy if mask is False else _device.multiply(dy, mask)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "noise_shape": self.noise_shape,
                "seed": self.seed}


class Activation(Layer):
    """Applies an activation by name: 'relu', 'sigmoid', 'tanh', 'softmax', 'linear'."""

    runs_on_device = True  # backend ops only

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self._cache = None

    def _build(self, input_shape, dtype):
        return input_shape

    def forward(self, x, training=False, activate=True):
        act = self.activation if activate and self.activation != "linear" else None
        if act is None:
            y, ctx, backend = x, None, None
        else:
            backend = backends.current()
            y, ctx = activations.forward(backend, act, x)
        if training:
            self._cache = (backend, act, ctx)
        return y

    def backward(self, dy, need_dx=True):
        if self._cache is None:
            raise self._no_cache()
        (backend, act, ctx), self._cache = self._cache, None
        return dy if act is None else activations.backward(backend, act, dy, ctx)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class Input:
    """Declares the input shape of a Sequential model (Keras's ``keras.Input``).

    ``Sequential([Input((28, 28, 1)), Conv2D(...), ...])`` builds the model at once.
    It is not a computing layer and does not appear in ``model.layers``.
    """

    def __init__(self, shape, batch_size=None, dtype=None, name=None):
        self.shape = normalize_shape(shape, "shape")
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
        self.batch_size = batch_size
        self.dtype = normalize_dtype(dtype)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name or utils.unique_name("input_layer")

    @property
    def batch_shape(self):
        return (self.batch_size,) + self.shape

    def __repr__(self):
        return f"<Input shape={self.batch_shape}>"


InputLayer = Input
