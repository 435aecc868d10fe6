"""Conv2D: NHWC input, HWIO kernel ``(kh, kw, C_in, filters)``, optional fused activation."""
from __future__ import annotations

from .. import shapes
from . import _dilation
from .base import positive_int
from .kernel_layer import KernelLayer


def check_data_format(data_format):
    if data_format not in (None, "channels_last"):
        raise ValueError(
            f"data_format must be None or 'channels_last' (fastcnn is NHWC only), "
            f"got {data_format!r}"
        )


def check_strides_dilation(strides, dilation_rate):
    """Keras's Conv2D / Conv2DTranspose refuse both a stride and a dilation above 1."""
    if max(strides) > 1 and max(dilation_rate) > 1:
        raise ValueError(
            f"`strides > 1` not supported in conjunction with `dilation_rate > 1`. "
            f"Received: strides={tuple(strides)} and dilation_rate={tuple(dilation_rate)}")


def check_rank4(input_shape, what):
    if len(input_shape) != 4:
        raise ValueError(
            f"{what} expects 4-D input (batch, height, width, channels), got shape "
            f"{input_shape}; add a channel axis for single-channel images (x[..., None])"
        )


class Conv2D(KernelLayer):
    """2-D convolution (Keras's ``keras.layers.Conv2D``): ``activation(conv(x, kernel) + bias)``.

    Input ``(batch, height, width, channels)`` (channels last), output
    ``(batch, new_height, new_width, filters)``; the kernel is ``(kh, kw, channels, filters)``.

    Args:
        filters: the number of output channels (a positive int).
        kernel_size: an int or ``(kh, kw)``: the window's height and width.
        strides: an int or ``(sh, sw)``, default 1: the step between windows.
        padding: ``'valid'`` (no padding: ``out = (in - k) // s + 1``) or ``'same'``
            (``out = ceil(in / s)``, zeros added as TensorFlow does: the odd extra row or
            column at the bottom/right).
        activation: a name (``'relu'``, ``'sigmoid'``, ... see :mod:`fastcnn.activations`),
            one of ``fastcnn.activations``' / ``fastcnn.nn``'s functions, any callable
            written with ``fastcnn.ops``, or None (linear).
        use_bias: whether to add a bias per filter (default True).
        kernel_initializer, bias_initializer: names (``'glorot_uniform'``, ``'he_normal'``,
            ``'zeros'``, ...) or initializer objects (:mod:`fastcnn.initializers`).
        kernel_regularizer, bias_regularizer: None, a name (``'l2'``) or a regularizer
            (:mod:`fastcnn.regularizers`); its penalty joins the loss.
        data_format: None or ``'channels_last'`` (fastcnn is NHWC only).
        dilation_rate: an int or ``(dh, dw)``, default 1: the spacing between kernel taps
            (atrous convolution); not with strides > 1 (Keras refuses that too). A dilation
            above 1 runs the backend's ordinary conv kernel on TensorFlow's space-to-batch
            rearrangement (:mod:`fastcnn.layers._dilation`), in NumPy at the layer level, so
            such a layer does not run on a device backend.
        kernel_constraint, bias_constraint: None or a constraint (:mod:`fastcnn.constraints`),
            applied after each optimizer step.
        input_shape, name, dtype, trainable: as every layer (``input_shape`` without the batch
            dimension, on a model's first layer).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, *, data_format=None,
                 kernel_constraint=None, bias_constraint=None, dilation_rate=(1, 1), **kwargs):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, kernel_constraint,
                         bias_constraint, **kwargs)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = shapes.normalize_tuple(kernel_size, 2, "kernel_size")
        self.strides = shapes.normalize_tuple(strides, 2, "strides")
        self.padding = shapes.normalize_padding(padding)
        check_data_format(data_format)
        self.dilation_rate = shapes.normalize_tuple(dilation_rate, 2, "dilation_rate")
        check_strides_dilation(self.strides, self.dilation_rate)
        if self.dilation_rate != (1, 1):
            self.runs_on_device = False  # space-to-batch is NumPy at the layer level

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, "Conv2D")
        _, h, w, c = input_shape
        if c is None:
            raise ValueError(f"Conv2D needs a known number of input channels, got "
                             f"{input_shape}")
        self._window = _dilation.window((h, w), self.kernel_size, self.strides, self.padding,
                                        self.dilation_rate, self.name)
        (ho, wo), self._pad = self._window.output, self._window.static_pad
        kh, kw = self.kernel_size
        self.kernel = self.add_weight((kh, kw, c, self.filters), self.kernel_initializer, dtype,
                                      name="kernel", constraint=self.kernel_constraint)
        if self.use_bias:
            self.bias = self.add_weight((self.filters,), self.bias_initializer, dtype, name="bias",
                                        constraint=self.bias_constraint)
        return (input_shape[0], ho, wo, self.filters)

    def _op_forward(self, backend, x):
        if self.dilation_rate != (1, 1):
            return _dilation.conv_forward(backend, x, self.kernel, self.bias, self.strides,
                                          self._window.pad(x.shape), self.dilation_rate)
        return backend.conv2d_forward(x, self.kernel, self.bias, self.strides,
                                      self._window.pad(x.shape))

    def _op_backward(self, backend, dy, ctx, need_dx):
        if self.dilation_rate != (1, 1):
            return _dilation.conv_backward(backend, dy, ctx, need_dx)
        return backend.conv2d_backward(dy, ctx, need_dx)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate}