"""BatchNormalization (Keras's ``keras.layers.BatchNormalization``), channels last.

The compute is two ops of the kernel contract (fastcnn/backends/_specs.py):
``batchnorm_statistics`` (the batch's per-channel mean and biased variance, in training)
and the ``batchnorm_forward`` / ``batchnorm_backward`` pair; the reference backend holds
the readable NumPy and the maths of the backward. The layer keeps only the moving-statistics
update (Keras's momentum rule), in place: in NumPy on the host, with the device backend's
kernel on a device array (so the layer runs on 'cuda' too).
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import _device, backends, initializers
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

    runs_on_device = True  # backend ops only (the moving update: the device's kernel)

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
        backend = backends.current()
        batch_mode = training and self.trainable
        if batch_mode:
            mean, var = backend.batchnorm_statistics(x)
            self._update_moving(self.moving_mean, mean)
            self._update_moving(self.moving_variance, var)
        else:
            mean, var = self.moving_mean, self.moving_variance
        y, ctx = backend.batchnorm_forward(x, self.gamma, self.beta, mean, var, self.epsilon,
                                           batch_mode)
        return y, (backend, ctx)

    def _update_moving(self, moving, batch):
        """``moving = moving * momentum + batch * (1 - momentum)``, in place: the arrays
        are the layer's weights (optimizers, saves, a device scope hold them)."""
        m = self.momentum
        if _device.is_device_array(moving):
            _device.update_kernels().batchnorm_moving_update(moving, batch, m)
            return
        moving *= m
        moving += (1.0 - m) * batch

    def backward(self, dy, ctx, need_dx=True):
        backend, op_ctx = ctx
        dx, dgamma, dbeta = backend.batchnorm_backward(dy, op_ctx, need_dx)
        grads = (() if self.gamma is None else (dgamma,)) + (
            () if self.beta is None else (dbeta,))
        return dx, grads

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                **self._init_args}
