"""BatchNormalization (Keras's ``keras.layers.BatchNormalization``), channels last.

Written in NumPy at the layer level, not as a kernel of the backend contract: batch
normalisation is a few passes of elementwise arithmetic and per-channel sums, bound by
memory traffic rather than arithmetic, so a JIT or compiled kernel would gain little. The
layer therefore runs unchanged, with identical results, on every backend.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import initializers
from .base import Layer, format_shape, serialize_initializer


class BatchNormalization(Layer):
    """Normalises each channel (the last axis) to zero mean and unit variance.

    Training (``forward(x, training=True)`` on a trainable layer) uses the statistics of
    the batch over every axis but the channel axis (N for (N, D) input, N, H, W for NHWC)
    and updates the moving statistics with Keras's rule
    ``moving = moving * momentum + batch * (1 - momentum)`` (the batch variance is the
    biased one, as Keras 3). Inference uses the moving statistics.

    ``layer.trainable = False`` makes the layer run in inference mode even when the model
    trains (Keras >= 2.1's rule, what fine-tuning tutorials rely on): the moving statistics
    stay frozen along with gamma and beta.

    Weights, in Keras's order: gamma (if ``scale``), beta (if ``center``), moving_mean,
    moving_variance; the last two are non-trainable weights (saved, counted in
    ``summary()`` as non-trainable, never touched by the optimizer).
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise ValueError(
                f"axis must be -1 (the channel axis; fastcnn is channels last), got {axis!r}")
        self.axis = int(axis)
        if (not isinstance(momentum, numbers.Real) or isinstance(momentum, bool)
                or not 0.0 <= float(momentum) < 1.0):
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        if (not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool)
                or not float(epsilon) > 0.0 or not np.isfinite(float(epsilon))):
            raise ValueError(f"epsilon must be a finite float > 0, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self._init_args = {}
        for arg, value in (("beta_initializer", beta_initializer),
                           ("gamma_initializer", gamma_initializer),
                           ("moving_mean_initializer", moving_mean_initializer),
                           ("moving_variance_initializer", moving_variance_initializer)):
            init = initializers.get(value, argument=arg)
            setattr(self, arg, init)
            self._init_args[arg] = serialize_initializer(init)
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def _build(self, input_shape, dtype):
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(
                f"BatchNormalization expects input of rank >= 2 (batch, ..., channels), got "
                f"shape {format_shape(input_shape)}")
        if self.axis not in (-1, rank - 1):
            raise ValueError(
                f"axis must be -1 or {rank - 1} (the last, channel axis; fastcnn is channels "
                f"last), got {self.axis} for input of shape {format_shape(input_shape)}")
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"BatchNormalization needs a known channel axis, got {format_shape(input_shape)}")
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(shape, self.gamma_initializer, dtype, name="gamma")
        if self.center:
            self.beta = self.add_weight(shape, self.beta_initializer, dtype, name="beta")
        self.moving_mean = self.add_weight(shape, self.moving_mean_initializer, dtype,
                                           trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(shape, self.moving_variance_initializer, dtype,
                                               trainable=False, name="moving_variance")
        return input_shape

    def forward(self, x, training=False):
        channels = x.shape[-1]
        flat = x.reshape(-1, channels)  # a view of contiguous input: rows = every position
        batch_mode = training and self.trainable
        if batch_mode:
            mean = flat.mean(axis=0)
            centered = flat - mean
            var = np.einsum("ij,ij->j", centered, centered) / flat.shape[0]
            inv_std = 1.0 / np.sqrt(var + self.epsilon)
            x_hat = centered
            x_hat *= inv_std
            # In place: the arrays are the layer's weights (optimizers, saves hold them).
            m = self.momentum
            self.moving_mean *= m
            self.moving_mean += (1.0 - m) * mean
            self.moving_variance *= m
            self.moving_variance += (1.0 - m) * var
        else:
            inv_std = 1.0 / np.sqrt(self.moving_variance + self.epsilon)
            x_hat = (flat - self.moving_mean) * inv_std
        # x_hat is kept for backward: y is a new array unless the layer has no gamma/beta.
        if self.gamma is not None:
            y = x_hat * self.gamma
            if self.beta is not None:
                y += self.beta
        else:
            y = x_hat if self.beta is None else x_hat + self.beta
        return y.reshape(x.shape), (batch_mode, x_hat, inv_std, x.shape)

    def backward(self, dy, ctx, need_dx=True):
        batch_mode, x_hat, inv_std, shape = ctx
        dy = dy.reshape(-1, shape[-1])
        grads = []
        dbeta = dy.sum(axis=0)
        dgamma = np.einsum("ij,ij->j", dy, x_hat)
        if self.gamma is not None:
            grads.append(dgamma)
        if self.beta is not None:
            grads.append(dbeta)
        grads = tuple(grads)
        if not need_dx:
            return None, grads
        scale = inv_std if self.gamma is None else self.gamma * inv_std
        if not batch_mode:
            # The moving statistics are constants: an affine map per channel.
            return (dy * scale).reshape(shape), grads
        # The exact batch-norm gradient (the batch mean and variance depend on x):
        # dx = gamma / sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat)).
        n = dy.shape[0]
        dx = x_hat * (dgamma / n)
        np.subtract(dy, dx, out=dx)
        dx -= dbeta / n
        dx *= scale
        return dx.reshape(shape), grads

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                **self._init_args}
