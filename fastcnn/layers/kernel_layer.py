"""What Conv2D and Dense share: a kernel and an optional bias, an optional fused activation,
regularizers, and the forward/backward around one backend op pair."""
from __future__ import annotations

from .. import activations, backends, initializers, regularizers
from .base import Layer, serialize_initializer


class KernelLayer(Layer):
    """Base of layers computing ``activation(op(x, kernel) + bias)`` on the active backend.

    A subclass builds ``self.kernel`` / ``self.bias`` and implements :meth:`_op_forward` and
    :meth:`_op_backward` (one kernel-contract op pair); the activation, the cache for
    backward, the regularizers and their config live here once.
    """

    _base_class = True  # not a layer of its own: save/load's layer registry skips it
    runs_on_device = True  # backend ops only

    def __init__(self, activation, use_bias, kernel_initializer, bias_initializer,
                 kernel_regularizer, bias_regularizer, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, argument="kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, argument="bias_initializer")
        self.kernel_regularizer = regularizers.get(kernel_regularizer,
                                                   argument="kernel_regularizer")
        self.bias_regularizer = regularizers.get(bias_regularizer, argument="bias_regularizer")
        self.kernel = None
        self.bias = None
        self._cache = None

    def _op_forward(self, backend, x):
        raise NotImplementedError

    def _op_backward(self, backend, dy, ctx, need_dx):
        raise NotImplementedError

    def forward(self, x, training=False, activate=True):
        """``activate=False`` returns the pre-activation output (the model fuses the last
        layer's softmax/sigmoid into the loss)."""
        backend = backends.current()
        y, ctx = self._op_forward(backend, x)
        act = self.activation if activate and self.activation != "linear" else None
        act_ctx = None
        if act is not None:
            y, act_ctx = activations.forward(backend, act, y)
        if training:
            self._cache = (backend, ctx, act, act_ctx)
        return y

    def keep_for_backward(self, backend, ctx):
        """What ``forward(x, training=True, activate=False)`` keeps, when a fused kernel
        computed this layer's op (fastcnn.layers.fusion): ``backward`` then runs as usual."""
        self._cache = (backend, ctx, None, None)

    def backward(self, dy, need_dx=True):
        if self._cache is None:
            raise self._no_cache()
        backend, ctx, act, act_ctx = self._cache
        self._cache = None  # frees the kernel's buffers before the next step allocates
        if act is not None:
            dy = activations.backward(backend, act, dy, act_ctx)
        dx, dw, db = self._op_backward(backend, dy, ctx, need_dx)
        # The penalties' gradients join the weights' own (the optimizer sees the sum).
        dw = regularizers.add_gradient(self.kernel_regularizer, dw, self.kernel)
        if self.use_bias:
            db = regularizers.add_gradient(self.bias_regularizer, db, self.bias)
        self.grads = (dw, db) if self.use_bias else (dw,)
        return dx

    def regularization_loss(self):
        return regularizers.penalty(((self.kernel_regularizer, self.kernel),
                                     (self.bias_regularizer, self.bias)))

    def get_config(self):
        return {**super().get_config(), "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": serialize_initializer(self.kernel_initializer),
                "bias_initializer": serialize_initializer(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}
