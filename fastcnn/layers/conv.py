"""Conv2D: NHWC input, HWIO kernel ``(kh, kw, C_in, filters)``, optional fused activation."""
from __future__ import annotations

from .. import activations, backends, initializers, regularizers, shapes
from .base import Layer, positive_int, serialize_initializer


def check_data_format(data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(
            f"data_format must be None or 'channels_last' (fastcnn is NHWC only), "
            f"got {data_format!r}"
        )


def check_rank4(input_shape, what):
    if len(input_shape) != 4:
        raise ValueError(
            f"{what} expects 4-D input (batch, height, width, channels), got shape "
            f"{input_shape}; add a channel axis for single-channel images (x[..., None])"
        )


class Conv2D(Layer):
    """2-D convolution, Keras's ``Conv2D`` (channels last, TensorFlow 'same' padding)."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, *, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = shapes.normalize_tuple(kernel_size, 2, "kernel_size")
        self.strides = shapes.normalize_tuple(strides, 2, "strides")
        self.padding = shapes.normalize_padding(padding)
        check_data_format(data_format)
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

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, "Conv2D")
        _, h, w, c = input_shape
        if h is None or w is None or c is None:
            raise ValueError(f"Conv2D needs known height, width and channels, got {input_shape}")
        (ho, wo), self._pad = shapes.window_output_shape(
            (h, w), self.kernel_size, self.strides, self.padding, what="kernel_size")
        kh, kw = self.kernel_size
        self.kernel = self.add_weight((kh, kw, c, self.filters), self.kernel_initializer, dtype)
        if self.use_bias:
            self.bias = self.add_weight((self.filters,), self.bias_initializer, dtype)
        return (input_shape[0], ho, wo, self.filters)

    def forward(self, x, training=False, activate=True):
        """``activate=False`` returns the pre-activation output (the model fuses the last
        layer's softmax/sigmoid into the loss)."""
        backend = backends.current()
        y, ctx = backend.conv2d_forward(x, self.kernel, self.bias, self.strides, self._pad)
        act = self.activation if activate and self.activation != "linear" else None
        act_ctx = None
        if act is not None:
            y, act_ctx = activations.forward(backend, act, y)
        if training:
            self._cache = (backend, ctx, act, act_ctx)
        return y

    def backward(self, dy, need_dx=True):
        if self._cache is None:
            raise self._no_cache()
        backend, ctx, act, act_ctx = self._cache
        self._cache = None  # frees the kernel's buffers before the next step allocates
        if act is not None:
            dy = activations.backward(backend, act, dy, act_ctx)
        dx, dw, db = backend.conv2d_backward(dy, ctx, need_dx)
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
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": serialize_initializer(self.kernel_initializer),
                "bias_initializer": serialize_initializer(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}
