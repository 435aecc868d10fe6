"""MaxPooling2D and AveragePooling2D (NHWC; strides default to the pool size, as Keras)."""
from __future__ import annotations

from .. import backends, shapes
from .base import Layer
from .conv import check_data_format, check_rank4


class _Pooling2D(Layer):
    _OP = None  # kernel name prefix: 'maxpool2d' or 'avgpool2d'
    runs_on_device = True  # backend ops only

    def __init__(self, pool_size=2, strides=None, padding="valid", *, data_format=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.pool_size = shapes.normalize_tuple(pool_size, 2, "pool_size")
        self.strides = (self.pool_size if strides is None
                        else shapes.normalize_tuple(strides, 2, "strides"))
        self.padding = shapes.normalize_padding(padding)
        check_data_format(data_format)
        self._forward_op = self._OP + "_forward"
        self._backward_op = self._OP + "_backward"

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, type(self).__name__)
        _, h, w, c = input_shape
        self._window = shapes.Window((h, w), self.pool_size, self.strides, self.padding,
                                     "pool_size", self.name)
        (ho, wo), self._pad = self._window.output, self._window.static_pad
        return (input_shape[0], ho, wo, c)

    def forward(self, x, training=False):
        backend = backends.current()
        y, ctx = getattr(backend, self._forward_op)(x, self.pool_size, self.strides,
                                                    self._window.pad(x.shape))
        return y, (backend, ctx)

    @staticmethod
    def op_context(backend, ctx):
        """The ctx of ``forward`` when a fused kernel computed this pool
        (fastcnn.layers.fusion): ``backward`` takes it as usual."""
        return (backend, ctx)

    def backward(self, dy, ctx, need_dx=True):
        backend, op_ctx = ctx
        return getattr(backend, self._backward_op)(dy, op_ctx), ()

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size,
                "strides": self.strides, "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    """Max pooling; the FIRST maximum of a window (row-major) takes the gradient."""
    _OP = "maxpool2d"


class AveragePooling2D(_Pooling2D):
    """Average pooling; with 'same' padding it divides by the number of real elements."""
    _OP = "avgpool2d"
