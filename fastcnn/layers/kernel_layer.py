"""What Conv2D and Dense share: a kernel and an optional bias, an optional fused activation,
regularizers, and the forward/backward around one backend op pair."""
from __future__ import annotations

from .. import activations, backends, constraints, initializers, regularizers
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
                 kernel_regularizer, bias_regularizer, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        # Applied to the weights after each optimizer step (fit, or apply_gradients on
        # the layer's Variables), as Keras does.
        self.kernel_constraint = constraints.get(kernel_constraint, argument="kernel_constraint")
        self.bias_constraint = constraints.get(bias_constraint, argument="bias_constraint")
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, argument="kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, argument="bias_initializer")
        self.kernel_regularizer = regularizers.get(kernel_regularizer,
                                                   argument="kernel_regularizer")
        self.bias_regularizer = regularizers.get(bias_regularizer, argument="bias_regularizer")
        self.kernel = None
        self.bias = None

    def _op_forward(self, backend, x):
        raise NotImplementedError

    def _op_backward(self, backend, dy, ctx, need_dx):
        raise NotImplementedError

    def forward(self, x, training=False, activate=True):
        """``(y, ctx)``. ``activate=False`` returns the pre-activation output (the model
        fuses the last layer's softmax/sigmoid into the loss)."""
        backend = backends.current()
        y, ctx = self._op_forward(backend, x)
        act = self.activation if activate and self.activation != "linear" else None
        act_ctx = None
        if act is not None:
            y, act_ctx = activations.forward(backend, act, y)
        return y, (backend, ctx, act, act_ctx)

    @staticmethod
    def op_context(backend, ctx):
        """The ctx of ``forward(x, activate=False)`` when a fused kernel computed this
        layer's op (fastcnn.layers.fusion): ``backward`` takes it as usual."""
        return (backend, ctx, None, None)

    def backward(self, dy, ctx, need_dx=True):
        backend, op_ctx, act, act_ctx = ctx
        if act is not None:
            dy = activations.backward(backend, act, dy, act_ctx)
        dx, dw, db = self._op_backward(backend, dy, op_ctx, need_dx)
        return dx, ((dw, db) if self.use_bias else (dw,))

    def add_regularization_gradients(self, grads):
        if self.kernel_regularizer is None and self.bias_regularizer is None:
            return grads
        # The penalties' gradients join the weights' own (the optimizer sees the sum).
        dw = regularizers.add_gradient(self.kernel_regularizer, grads[0], self.kernel)
        if not self.use_bias:
            return (dw,)
        return (dw, regularizers.add_gradient(self.bias_regularizer, grads[1], self.bias))

    def regularization_loss(self):
        return regularizers.penalty(((self.kernel_regularizer, self.kernel),
                                     (self.bias_regularizer, self.bias)))

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation, self.name),
                "use_bias": self.use_bias,
                "kernel_initializer": serialize_initializer(self.kernel_initializer),
                "bias_initializer": serialize_initializer(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": constraints.serialize(self.kernel_constraint),
                "bias_constraint": constraints.serialize(self.bias_constraint)}
