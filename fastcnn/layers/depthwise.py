"""DepthwiseConv2D and SeparableConv2D (Keras 3's layers), NHWC, on the kernel ops
``depthwise_conv2d_forward/backward`` (and ``conv2d_*`` for the separable pointwise step).

Weights, in Keras 3.15's order and names: DepthwiseConv2D ``kernel`` ``(kh, kw, C, M)`` then
``bias`` ``(C*M,)`` (Keras 3 names the depthwise weight ``kernel``; ``layer.depthwise_kernel``
is an alias); SeparableConv2D ``depthwise_kernel`` ``(kh, kw, C, M)``, ``pointwise_kernel``
``(1, 1, C*M, filters)``, ``bias`` ``(filters,)``. Output channel ``c*M + m`` of the depthwise
step is input channel ``c`` convolved with ``kernel[:, :, c, m]``.

``dilation_rate`` above 1 goes through :mod:`fastcnn.layers._dilation` (space-to-batch on
the same kernel ops); unlike Conv2D, Keras allows it together with strides above 1 here (its
TensorFlow backend computes the stride-1 dilated conv and subsamples, and so does fastcnn).
"""
from __future__ import annotations

from .. import activations, constraints, initializers, regularizers, shapes
from . import _dilation
from .base import positive_int, serialize_initializer
from .conv import check_data_format, check_rank4
from .kernel_layer import KernelLayer


def check_activity_regularizer(value):
    if value is not None:
        raise NotImplementedError(
            f"activity_regularizer={value!r}: fastcnn has no activity regularizers yet "
            f"(expected None); add the penalty to the loss instead")


def _depth_multiplier(value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"Invalid value for argument `depth_multiplier`. Expected a strictly positive "
            f"value. Received depth_multiplier={value!r}.")
    return int(value)


def _known_spatial(input_shape, what):
    check_rank4(input_shape, what)
    _, h, w, c = input_shape
    if c is None:
        raise ValueError(f"{what} needs a known number of input channels, got {input_shape}")
    return h, w, c


class _DepthwiseWindow(KernelLayer):
    """What DepthwiseConv2D and SeparableConv2D share: the depthwise step's window arguments
    and Keras's ``depthwise_*`` names for what KernelLayer calls ``kernel_*``."""

    _base_class = True  # not a layer of its own: save/load's layer registry skips it

    def _set_window(self, kernel_size, strides, padding, data_format, dilation_rate,
                    depth_multiplier):
        self.depth_multiplier = _depth_multiplier(depth_multiplier)
        self.kernel_size = shapes.normalize_tuple(kernel_size, 2, "kernel_size")
        self.strides = shapes.normalize_tuple(strides, 2, "strides")
        self.padding = shapes.normalize_padding(padding)
        check_data_format(data_format)
        self.dilation_rate = shapes.normalize_tuple(dilation_rate, 2, "dilation_rate")
        if self.dilation_rate != (1, 1):
            self.runs_on_device = False  # space-to-batch is NumPy at the layer level

    depthwise_kernel = property(lambda self: self.kernel)
    depthwise_initializer = property(lambda self: self.kernel_initializer)
    depthwise_regularizer = property(lambda self: self.kernel_regularizer)
    depthwise_constraint = property(lambda self: self.kernel_constraint)


class DepthwiseConv2D(_DepthwiseWindow):
    """Depthwise 2-D convolution (``keras.layers.DepthwiseConv2D``): each input channel is
    convolved with its own ``depth_multiplier`` filters; ``activation(depthwise(x) + bias)``.

    Input ``(batch, height, width, C)``, output ``(batch, new_height, new_width,
    C * depth_multiplier)``; the kernel is ``(kh, kw, C, depth_multiplier)``.

    Args:
        kernel_size: an int or ``(kh, kw)``.
        strides: an int or ``(sh, sw)``, default 1.
        padding: ``'valid'`` or ``'same'`` (TensorFlow's rule, as Conv2D).
        depth_multiplier: output channels per input channel (default 1).
        data_format: None or ``'channels_last'`` (fastcnn is NHWC only).
        dilation_rate: an int or ``(dh, dw)``, default 1 (with strides too, as Keras); above 1
            the layer computes in NumPy around the kernel op (no device backend).
        activation, use_bias: as Conv2D.
        depthwise_initializer, bias_initializer, depthwise_regularizer, bias_regularizer,
        depthwise_constraint, bias_constraint: as Conv2D's kernel_* / bias_*.
        activity_regularizer: only None (fastcnn has no activity regularizers).
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        check_activity_regularizer(activity_regularizer)
        super().__init__(activation, use_bias, depthwise_initializer, bias_initializer,
                         depthwise_regularizer, bias_regularizer, depthwise_constraint,
                         bias_constraint, **kwargs)
        self._set_window(kernel_size, strides, padding, data_format, dilation_rate,
                         depth_multiplier)

    def _build(self, input_shape, dtype):
        h, w, c = _known_spatial(input_shape, "DepthwiseConv2D")
        self._window = _dilation.window((h, w), self.kernel_size, self.strides, self.padding,
                                        self.dilation_rate, self.name)
        (ho, wo), self._pad = self._window.output, self._window.static_pad
        kh, kw = self.kernel_size
        m = self.depth_multiplier
        self.kernel = self.add_weight((kh, kw, c, m), self.kernel_initializer, dtype,
                                      name="kernel", constraint=self.kernel_constraint)
        if self.use_bias:
            self.bias = self.add_weight((c * m,), self.bias_initializer, dtype, name="bias",
                                        constraint=self.bias_constraint)
        return (input_shape[0], ho, wo, c * m)

    def _op_forward(self, backend, x):
        return _dilation.conv_forward(backend, x, self.kernel, self.bias, self.strides,
                                      self._window.pad(x.shape), self.dilation_rate,
                                      op="depthwise_conv2d")

    def _op_backward(self, backend, dy, ctx, need_dx):
        return _dilation.conv_backward(backend, dy, ctx, need_dx, op="depthwise_conv2d")

    def get_config(self):
        config_ = super().get_config()
        for what in ("initializer", "regularizer", "constraint"):
            config_[f"depthwise_{what}"] = config_.pop(f"kernel_{what}")
        return {**config_, "depth_multiplier": self.depth_multiplier,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "data_format": "channels_last",
                "dilation_rate": self.dilation_rate, "activity_regularizer": None}


class SeparableConv2D(_DepthwiseWindow):
    """Depthwise separable 2-D convolution (``keras.layers.SeparableConv2D``): a depthwise
    conv (``depth_multiplier`` filters per channel) then a 1x1 conv to ``filters`` channels,
    plus bias and activation. Both steps are kernel ops; backward goes through both.

    Args:
        filters: output channels. kernel_size, strides, padding, data_format, dilation_rate,
            depth_multiplier: of the depthwise step, as :class:`DepthwiseConv2D`.
        activation, use_bias: as Conv2D.
        depthwise_initializer, pointwise_initializer, bias_initializer (and *_regularizer,
            *_constraint): per weight, as Conv2D's.
        activity_regularizer: only None.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, **kwargs):
        check_activity_regularizer(activity_regularizer)
        super().__init__(activation, use_bias, depthwise_initializer, bias_initializer,
                         depthwise_regularizer, bias_regularizer, depthwise_constraint,
                         bias_constraint, **kwargs)
        self.filters = positive_int(filters, "filters")
        self._set_window(kernel_size, strides, padding, data_format, dilation_rate,
                         depth_multiplier)
        self.pointwise_initializer = initializers.get(pointwise_initializer,
                                                      argument="pointwise_initializer")
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer,
                                                      argument="pointwise_regularizer")
        self.pointwise_constraint = constraints.get(pointwise_constraint,
                                                    argument="pointwise_constraint")
        self.pointwise_kernel = None

    def _build(self, input_shape, dtype):
        h, w, c = _known_spatial(input_shape, "SeparableConv2D")
        self._window = _dilation.window((h, w), self.kernel_size, self.strides, self.padding,
                                        self.dilation_rate, self.name)
        (ho, wo), self._pad = self._window.output, self._window.static_pad
        kh, kw = self.kernel_size
        m = self.depth_multiplier
        self.kernel = self.add_weight((kh, kw, c, m), self.kernel_initializer, dtype,
                                      name="depthwise_kernel", constraint=self.kernel_constraint)
        self.pointwise_kernel = self.add_weight(
            (1, 1, c * m, self.filters), self.pointwise_initializer, dtype,
            name="pointwise_kernel", constraint=self.pointwise_constraint)
        if self.use_bias:
            self.bias = self.add_weight((self.filters,), self.bias_initializer, dtype,
                                        name="bias", constraint=self.bias_constraint)
        return (input_shape[0], ho, wo, self.filters)

    def _op_forward(self, backend, x):
        z, depth_ctx = _dilation.conv_forward(backend, x, self.kernel, None, self.strides,
                                              self._window.pad(x.shape), self.dilation_rate,
                                              op="depthwise_conv2d")
        y, point_ctx = backend.conv2d_forward(z, self.pointwise_kernel, self.bias, (1, 1),
                                              ((0, 0), (0, 0)))
        return y, (depth_ctx, point_ctx)

    def backward(self, dy, ctx, need_dx=True):
        backend, (depth_ctx, point_ctx), act, act_ctx = ctx
        if act is not None:
            dy = activations.backward(backend, act, dy, act_ctx)
        dz, dpoint, db = backend.conv2d_backward(dy, point_ctx, True)
        dx, ddepth, _ = _dilation.conv_backward(backend, dz, depth_ctx, need_dx,
                                                op="depthwise_conv2d")
        return dx, ((ddepth, dpoint, db) if self.use_bias else (ddepth, dpoint))

    def add_regularization_gradients(self, grads):
        if (self.kernel_regularizer is None and self.pointwise_regularizer is None
                and self.bias_regularizer is None):
            return grads
        out = [regularizers.add_gradient(self.kernel_regularizer, grads[0], self.kernel),
               regularizers.add_gradient(self.pointwise_regularizer, grads[1],
                                         self.pointwise_kernel)]
        if self.use_bias:
            out.append(regularizers.add_gradient(self.bias_regularizer, grads[2], self.bias))
        return tuple(out)

    def regularization_loss(self):
        return regularizers.penalty(((self.kernel_regularizer, self.kernel),
                                     (self.pointwise_regularizer, self.pointwise_kernel),
                                     (self.bias_regularizer, self.bias)))

    def get_config(self):
        config_ = super().get_config()
        for what in ("initializer", "regularizer", "constraint"):
            config_[f"depthwise_{what}"] = config_.pop(f"kernel_{what}")
        return {**config_, "filters": self.filters, "depth_multiplier": self.depth_multiplier,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "data_format": "channels_last",
                "dilation_rate": self.dilation_rate,
                "pointwise_initializer": serialize_initializer(self.pointwise_initializer),
                "pointwise_regularizer": regularizers.serialize(self.pointwise_regularizer),
                "pointwise_constraint": constraints.serialize(self.pointwise_constraint),
                "activity_regularizer": None}
