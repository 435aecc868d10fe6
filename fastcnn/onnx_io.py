"""ONNX interchange: :func:`export_onnx` (``model.export_onnx(path)``) and :func:`load_onnx`.

Optional: needs the ``onnx`` package (``pip install fastcnn[onnx]``, which also brings
onnxruntime to run the files); fastcnn itself never imports it.

**Export** writes a Sequential or Functional model (nested models included) as an ONNX
graph that ONNX Runtime runs with the same predictions (float32 rounding):

* the input stays NHWC, as fastcnn's; ONNX's Conv and pools are NCHW, so the graph
  transposes once, where the first layer that needs NCHW reads it, computes in NCHW, and
  transposes back only where NHWC order matters (Flatten and Reshape read NHWC, so a
  Dense after a Flatten keeps its weights; Dense on 4-D input; the outputs, which are
  in fastcnn's layout);
* ``'same'`` padding becomes explicit pads (TensorFlow's rule: the odd extra row/column
  at the bottom/right), average pooling excludes the padding as fastcnn does;
* the batch dimension is dynamic unless ``batch_size`` is given;
* inference semantics: Dropout and the random augmentation layers are the identity,
  BatchNormalization uses its moving statistics;
* a layer without an ONNX mapping (Resizing, CenterCrop, RandomCrop, a custom layer, a
  subclassed model) raises :class:`OnnxExportError` (a ValueError) naming the layer and
  its class, and nothing is written (the file is written to a temporary name and renamed).

**Import** (:func:`load_onnx`) turns a graph made of the operators fastcnn has into a
Functional model: Conv (+bias; group 1 -> Conv2D, group = channels -> DepthwiseConv2D;
dilations too), ConvTranspose -> Conv2DTranspose, Gemm / MatMul(+Add), Relu / Clip /
LeakyRelu / Sigmoid / Tanh / Softmax / Elu / HardSwish / Gelu / ..., MaxPool / AveragePool /
GlobalAveragePool / GlobalMaxPool, Flatten / Reshape, BatchNormalization, Add / Sub / Mul /
Div / Max / Min / Concat, Pad (zeros), Resize by whole factors -> UpSampling2D (nearest,
or half-pixel linear), Transpose (as a layout change), Dropout / Identity. NCHW models (PyTorch's) become NHWC fastcnn models:
the model takes NHWC input, kernels are transposed, and a Flatten of NCHW features
permutes the following Dense weights so that predictions match. A 4-D input that the
graph transposes from NHWC itself, or any 4-D input of fastcnn's own exports (marked in
the file's metadata), stays NHWC. Outputs keep ONNX's values; a 4-D output that the
graph computes in NCHW comes back NHWC (fastcnn's layout). A MaxPool with explicit padding
other than TensorFlow's 'same' (torchvision ResNets' stem: kernel 3, stride 2, pads 1) becomes
ZeroPadding2D + a 'valid' MaxPooling2D when it follows a ReLU (exact there: values >= 0). A graph exported for one batch
size (PyTorch's dynamo exporter, by default) writes that size into its Reshapes: such a
Reshape keeps the batch axis, and the model takes any batch size.

An operator fastcnn lacks raises :class:`OnnxImportError` (a ValueError) naming the
operator type and the node. The file is parsed as protobuf data only (no custom operator
libraries, no code from the file runs); its size is bounded (``max_bytes``, the model
file and its external data together), and every initializer's declared shape is checked
against the bytes it really holds before anything is allocated. External data (what
PyTorch's dynamo exporter writes by default: ``model.onnx`` plus ``model.onnx.data``) is
read only from regular files inside the model file's folder, named by a relative path
(no absolute path, no ``..`` out of the folder, no link leading out of it), each tensor's
bytes at its declared offset and exactly its declared length.
"""
from __future__ import annotations

import math
import os
import re
import tempfile

import numpy as np

__all__ = ["export_onnx", "load_onnx", "OnnxExportError", "OnnxImportError",
           "DEFAULT_OPSET", "MIN_OPSET"]

#: The opset written by default (ONNX Runtime >= 1.12, PyTorch's legacy exporter's range).
DEFAULT_OPSET = 17
#: Softmax over an arbitrary axis and Pad/Clip/Squeeze inputs as they are now: opset 13.
MIN_OPSET = 13

_INSTALL = "pip install fastcnn[onnx]"
#: metadata_props key of fastcnn's exports: the layout of their 4-D inputs ("NHWC").
_LAYOUT_KEY = "fastcnn.input_layout"


class OnnxExportError(ValueError):
    """A model that cannot be written as ONNX (the message names the layer)."""


class OnnxImportError(ValueError):
    """An ONNX file fastcnn cannot turn into a model (the message says why)."""


def _require_onnx():
    try:
        import onnx  # noqa: F401
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"ONNX export/import needs the optional 'onnx' package (and onnxruntime to run "
            f"the files): {_INSTALL}  ({exc})") from exc
    return onnx


# =====================================================================================
# export
# =====================================================================================
_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)
_AXIS_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}

# Random augmentation layers: the identity in inference (Keras's export does the same).
_INFERENCE_IDENTITY = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                       "RandomContrast", "RandomBrightness", "Dropout", "SpatialDropout2D",
                       "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")


class _Value:
    """An ONNX tensor standing for a fastcnn tensor: its name, rank, and whether it is
    held in NCHW (rank 4 only) or in fastcnn's own layout."""

    __slots__ = ("name", "rank", "nchw", "other")

    def __init__(self, name, rank, nchw=False):
        self.name, self.rank, self.nchw = name, rank, nchw
        self.other = None       # the same tensor in the other layout, once made


def _static_pad(layer):
    """A window layer's explicit padding, or a ValueError where it depends on the input
    size (a strided 'same' window on an input of unknown size: ONNX's pads are fixed)."""
    if layer._pad is None:
        raise ValueError(
            f"export_onnx: layer {layer.name!r} ({type(layer).__name__}) computes its padding "
            f"from the input's size (padding={layer.padding!r}, strides={layer.strides}) and "
            f"the model takes input of any size; build the model for a known input size to "
            f"export it")
    return layer._pad


class _Exporter:
    def __init__(self, model, batch_size, opset):
        self.onnx = _require_onnx()
        from onnx import helper
        self.helper = helper
        self.model = model
        self.batch_size = batch_size
        self.opset = opset
        self.dtype = np.dtype(model._dtype or "float32")
        self.elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.inits, self.used = [], [], set()
        self.values = {}           # id(KerasTensor) -> _Value

    # ------------------------------------------------------------------ helpers
    def fresh(self, base):
        base = re.sub(r"[^A-Za-z0-9_./:-]+", "_", str(base)) or "t"
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, base, array, dtype=None):
        from onnx import numpy_helper
        arr = np.ascontiguousarray(np.asarray(array, dtype=dtype or self.dtype))
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def scalar(self, base, value):
        return self.const(base, np.array(value, dtype=self.dtype))

    def op(self, op_type, inputs, base, n_out=1, **attrs):
        outs = [self.fresh(f"{base}" if n_out == 1 else f"{base}_out{i}") for i in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs,
                                                name=self.fresh(f"{base}/{op_type}"), **attrs))
        return outs[0] if n_out == 1 else outs

    def nchw(self, v: _Value):
        if v.nchw:
            return v.name
        if v.rank != 4:
            raise AssertionError("NCHW view of a tensor of rank != 4")
        if v.other is None:
            v.other = self.op("Transpose", [v.name], f"{v.name}_nchw", perm=list(_NHWC_TO_NCHW))
        return v.other

    def plain(self, v: _Value):
        if not v.nchw:
            return v.name
        if v.other is None:
            v.other = self.op("Transpose", [v.name], f"{v.name}_nhwc", perm=list(_NCHW_TO_NHWC))
        return v.other

    @staticmethod
    def unsupported(layer, why=None):
        extra = f": {why}" if why else ""
        return OnnxExportError(
            f"layer {layer.name!r} ({type(layer).__name__}) has no ONNX mapping in fastcnn's "
            f"exporter{extra}; nothing was written")

    # -------------------------------------------------------------- activations
    def activation(self, name_in, act, rank, nchw, base, layer):
        """``act(x)`` for the tensor ``name_in``; returns the output name."""
        if callable(act):
            raise self.unsupported(layer, f"the custom activation "
                                          f"{getattr(act, '__name__', act)!r} has no ONNX form")
        if act == "linear":
            return name_in
        axis = 1 if (nchw and rank == 4) else -1
        x = name_in
        if act == "relu":
            return self.op("Relu", [x], base)
        if act == "relu6":
            return self.op("Clip", [x, self.scalar("zero", 0.0), self.scalar("six", 6.0)], base)
        if act == "leaky_relu":
            return self.op("LeakyRelu", [x], base, alpha=0.2)
        if act == "elu":
            return self.op("Elu", [x], base, alpha=1.0)
        if act == "selu":
            from .backends.reference import SELU_ALPHA, SELU_SCALE
            return self.op("Selu", [x], base, alpha=float(SELU_ALPHA), gamma=float(SELU_SCALE))
        if act == "sigmoid":
            return self.op("Sigmoid", [x], base)
        if act == "tanh":
            return self.op("Tanh", [x], base)
        if act == "softmax":
            return self.op("Softmax", [x], base, axis=axis)
        if act == "log_softmax":
            return self.op("LogSoftmax", [x], base, axis=axis)
        if act == "softplus":
            return self.op("Softplus", [x], base)
        if act == "softsign":
            return self.op("Softsign", [x], base)
        if act == "exponential":
            return self.op("Exp", [x], base)
        if act == "hard_sigmoid":    # Keras 3: relu6(x + 3) / 6
            return self.op("HardSigmoid", [x], base, alpha=1.0 / 6.0, beta=0.5)
        if act == "hard_silu":
            return self.op("HardSwish", [x], base)
        if act == "silu":
            s = self.op("Sigmoid", [x], f"{base}_sigmoid")
            return self.op("Mul", [x, s], base)
        if act in ("gelu", "gelu_approximate") and self.opset >= 20:
            return self.op("Gelu", [x], base,
                           approximate="tanh" if act == "gelu_approximate" else "none")
        if act == "gelu":            # x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))
            u = self.op("Div", [x, self.scalar("sqrt2", math.sqrt(2.0))], f"{base}_u")
            e = self.op("Erf", [u], f"{base}_erf")
            p = self.op("Add", [e, self.scalar("one", 1.0)], f"{base}_1p")
            h = self.op("Mul", [x, self.scalar("half", 0.5)], f"{base}_half")
            return self.op("Mul", [h, p], base)
        if act == "gelu_approximate":
            from .backends.reference import GELU_C, GELU_K
            x3 = self.op("Mul", [x, self.op("Mul", [x, x], f"{base}_x2")], f"{base}_x3")
            inner = self.op("Add", [x, self.op("Mul", [x3, self.scalar("k", GELU_K)],
                                               f"{base}_kx3")], f"{base}_in")
            t = self.op("Tanh", [self.op("Mul", [inner, self.scalar("c", GELU_C)],
                                         f"{base}_cu")], f"{base}_tanh")
            p = self.op("Add", [t, self.scalar("one", 1.0)], f"{base}_1p")
            h = self.op("Mul", [x, self.scalar("half", 0.5)], f"{base}_half")
            return self.op("Mul", [h, p], base)
        raise self.unsupported(layer, f"activation {act!r} has no ONNX form")

    def relu_general(self, x, slope, max_value, threshold, base):
        """Keras's relu(x, negative_slope, max_value, threshold), as fastcnn computes it."""
        t = self.scalar("threshold", threshold)
        y = self.op("Where", [self.op("Greater", [x, t], f"{base}_gt"), x,
                              self.scalar("zero", 0.0)], f"{base}_kept")
        if max_value is not None:
            y = self.op("Clip", [y, self.scalar("zero", 0.0), self.scalar("max", max_value)],
                        f"{base}_clip")
        elif threshold == 0.0:
            y = self.op("Relu", [y], f"{base}_relu")
        if slope != 0.0:
            below = self.op("Relu", [self.op("Sub", [t, x], f"{base}_tmx")], f"{base}_below")
            y = self.op("Sub", [y, self.op("Mul", [below, self.scalar("slope", slope)],
                                           f"{base}_sb")], base)
        return y

    # ------------------------------------------------------------------- layers
    def emit_graph(self, model, input_values):
        """Emits ``model``'s nodes given the values of its inputs; returns its outputs'."""
        nodes, ins, outs = model._graph
        for t, v in zip(ins, input_values):
            self.values[id(t)] = v
        for node in nodes:
            layer = node.layer
            vin = [self.values[id(t)] for t in node.inputs]
            if getattr(layer, "_graph", None) is not None:          # a nested model
                vout = self.emit_graph(layer, vin)
            elif hasattr(layer, "_graph") or type(layer).__name__ == "Model":
                raise self.unsupported(layer, "a subclassed model has no graph to export")
            else:
                vout = self.emit_layer(layer, vin, node)
            if not isinstance(vout, list):
                vout = [vout]
            for t, v in zip(node.outputs, vout):
                self.values[id(t)] = v
        return [self.values[id(t)] for t in outs]

    def emit_layer(self, layer, vin, node):
        from . import layers as L
        cls = type(layer).__name__
        base = layer.name
        x = vin[0] if vin else None
        out_rank = len(node.outputs[0].shape)

        if isinstance(layer, L.InputLayer):
            return x
        if cls in _INFERENCE_IDENTITY:
            return x
        if isinstance(layer, L.Conv2D):
            return self.conv(layer, x, base)
        depthwise = getattr(L, "DepthwiseConv2D", None)
        if depthwise is not None and isinstance(layer, depthwise):
            return self.depthwise(layer, x, base)
        separable = getattr(L, "SeparableConv2D", None)
        if separable is not None and isinstance(layer, separable):
            return self.separable(layer, x, base)
        transpose = getattr(L, "Conv2DTranspose", None)
        if transpose is not None and isinstance(layer, transpose):
            return self.conv_transpose(layer, x, base, node)
        if isinstance(layer, L.Dense):
            return self.dense(layer, x, base)
        if isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D)):
            (top, bottom), (left, right) = _static_pad(layer)
            attrs = dict(kernel_shape=list(layer.pool_size), strides=list(layer.strides),
                         pads=[top, left, bottom, right])
            if isinstance(layer, L.MaxPooling2D):
                y = self.op("MaxPool", [self.nchw(x)], base, **attrs)
            else:
                y = self.op("AveragePool", [self.nchw(x)], base, count_include_pad=0, **attrs)
            return _Value(y, 4, True)
        if isinstance(layer, (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D)):
            kind = ("GlobalAveragePool" if isinstance(layer, L.GlobalAveragePooling2D)
                    else "GlobalMaxPool")
            y = self.op(kind, [self.nchw(x)], f"{base}_keep" if not layer.keepdims else base)
            if layer.keepdims:
                return _Value(y, 4, True)
            return _Value(self.op("Flatten", [y], base, axis=1), 2)
        if isinstance(layer, L.Flatten):
            if x.rank == 2:
                return _Value(self.op("Identity", [x.name], base), 2)
            return _Value(self.op("Flatten", [self.plain(x)], base, axis=1), 2)
        if isinstance(layer, L.Reshape):
            shape = self.const(f"{base}_shape", [0] + list(layer._resolved), dtype=np.int64)
            return _Value(self.op("Reshape", [self.plain(x), shape], base), out_rank)
        if isinstance(layer, L.BatchNormalization):
            return self.batchnorm(layer, x, base)
        if isinstance(layer, L.Activation):
            return _Value(self.activation(x.name, layer.activation, x.rank, x.nchw, base, layer),
                          x.rank, x.nchw)
        if isinstance(layer, L.ReLU):
            op, params = layer._kernel()
            if op == "leaky_relu":
                y = self.op("LeakyRelu", [x.name], base, alpha=params["negative_slope"])
            elif op in ("relu", "relu6"):
                y = self.activation(x.name, op, x.rank, x.nchw, base, layer)
            else:
                y = self.relu_general(x.name, params["negative_slope"], params["max_value"],
                                      params["threshold"], base)
            return _Value(y, x.rank, x.nchw)
        if isinstance(layer, L.LeakyReLU):
            return _Value(self.op("LeakyRelu", [x.name], base, alpha=layer.negative_slope),
                          x.rank, x.nchw)
        if isinstance(layer, L.ELU):
            return _Value(self.op("Elu", [x.name], base, alpha=layer.alpha), x.rank, x.nchw)
        if isinstance(layer, L.PReLU):
            alpha = layer.get_weights()[0]
            if x.nchw:
                alpha = alpha.transpose(2, 0, 1)
            slope = self.const(f"{base}_alpha", alpha)
            return _Value(self.op("PRelu", [x.name, slope], base), x.rank, x.nchw)
        if isinstance(layer, L.Softmax):
            axes = layer._axes
            if len(axes) != 1:
                raise self.unsupported(layer, f"softmax over several axes {layer.axis!r}")
            axis = axes[0]
            if x.nchw:
                axis = _AXIS_NHWC_TO_NCHW[axis]
            return _Value(self.op("Softmax", [x.name], base, axis=axis), x.rank, x.nchw)
        if isinstance(layer, L.Rescaling):
            y = self.op("Mul", [x.name, self.scalar(f"{base}_scale", layer.scale)],
                        base if layer.offset == 0.0 else f"{base}_mul")
            if layer.offset != 0.0:
                y = self.op("Add", [y, self.scalar(f"{base}_offset", layer.offset)], base)
            return _Value(y, x.rank, x.nchw)
        if isinstance(layer, L.ZeroPadding2D):
            (top, bottom), (left, right) = layer.padding
            pads = self.const(f"{base}_pads", [0, 0, top, left, 0, 0, bottom, right],
                              dtype=np.int64)
            return _Value(self.op("Pad", [self.nchw(x), pads], base, mode="constant"), 4, True)
        merge = {"Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Maximum": "Max",
                 "Minimum": "Min", "Average": "Add"}
        from .layers.merging import _ElementwiseMerge
        if cls in merge and isinstance(layer, _ElementwiseMerge):
            return self.merge(layer, vin, merge[cls], base)
        if isinstance(layer, L.Concatenate):
            return self.concat(layer, vin, base)
        upsampling = getattr(L, "UpSampling2D", None)
        if upsampling is not None and isinstance(layer, upsampling):
            return self.upsampling(layer, x, base)
        cropping = getattr(L, "Cropping2D", None)
        if cropping is not None and isinstance(layer, cropping):
            return self.cropping(layer, x, base)
        raise self.unsupported(layer)

    def conv(self, layer, x, base):
        (top, bottom), (left, right) = _static_pad(layer)
        w = layer.get_weights()
        kernel = w[0].transpose(3, 2, 0, 1)                       # HWIO -> OIHW
        inputs = [self.nchw(x), self.const(f"{base}_kernel", kernel)]
        if layer.use_bias:
            inputs.append(self.const(f"{base}_bias", w[1]))
        dil = list(getattr(layer, "dilation_rate", (1, 1)))
        y = self.op("Conv", inputs, base if layer.activation == "linear" else f"{base}_conv",
                    kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
                    pads=[top, left, bottom, right], dilations=dil, group=1)
        return _Value(self.activation(y, layer.activation, 4, True, base, layer), 4, True)

    def depthwise(self, layer, x, base):
        pad = getattr(layer, "_pad", None)
        if pad is None:
            raise self.unsupported(layer, "its padding is unknown (not built?)")
        (top, bottom), (left, right) = pad
        w = layer.get_weights()
        kh, kw, c, dm = w[0].shape
        kernel = w[0].transpose(2, 3, 0, 1).reshape(c * dm, 1, kh, kw)
        inputs = [self.nchw(x), self.const(f"{base}_kernel", kernel)]
        if getattr(layer, "use_bias", False):
            inputs.append(self.const(f"{base}_bias", w[1]))
        act = getattr(layer, "activation", "linear")
        y = self.op("Conv", inputs, base if act == "linear" else f"{base}_conv",
                    kernel_shape=[kh, kw], strides=list(layer.strides),
                    pads=[top, left, bottom, right],
                    dilations=list(getattr(layer, "dilation_rate", (1, 1))), group=c)
        return _Value(self.activation(y, act, 4, True, base, layer), 4, True)

    def separable(self, layer, x, base):
        """A depthwise Conv (group = channels, no bias), then the 1x1 pointwise Conv."""
        (top, bottom), (left, right) = _static_pad(layer)
        w = layer.get_weights()
        kh, kw, c, dm = w[0].shape
        depth = w[0].transpose(2, 3, 0, 1).reshape(c * dm, 1, kh, kw)
        z = self.op("Conv", [self.nchw(x), self.const(f"{base}_depthwise_kernel", depth)],
                    f"{base}_depthwise", kernel_shape=[kh, kw], strides=list(layer.strides),
                    pads=[top, left, bottom, right], dilations=list(layer.dilation_rate),
                    group=c)
        inputs = [z, self.const(f"{base}_pointwise_kernel", w[1].transpose(3, 2, 0, 1))]
        if layer.use_bias:
            inputs.append(self.const(f"{base}_bias", w[2]))
        y = self.op("Conv", inputs, base if layer.activation == "linear" else f"{base}_conv",
                    kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], group=1)
        return _Value(self.activation(y, layer.activation, 4, True, base, layer), 4, True)

    def conv_transpose(self, layer, x, base, node):
        """ONNX's ConvTranspose is the gradient of a Conv, as Keras's: the forward conv's
        pads, and the rows/columns that conv would not reach as output_padding."""
        (top, bottom), (left, right) = _static_pad(layer)
        w = layer.get_weights()
        kh, kw, filters, c = w[0].shape
        kernel = w[0].transpose(3, 2, 0, 1)                      # (kh, kw, F, C) -> (C, F, kh, kw)
        inputs = [self.nchw(x), self.const(f"{base}_kernel", kernel)]
        if layer.use_bias:
            inputs.append(self.const(f"{base}_bias", w[1]))
        h, wd = node.inputs[0].shape[1:3]
        ho, wo = node.outputs[0].shape[1:3]
        dil = list(layer.dilation_rate)
        extra = []
        for n, o, k, s, d, (pb, pe) in ((h, ho, kh, layer.strides[0], dil[0], (top, bottom)),
                                        (wd, wo, kw, layer.strides[1], dil[1], (left, right))):
            extra.append(o - (s * (n - 1) + (k - 1) * d + 1 - pb - pe))
        if any(e < 0 for e in extra):
            raise self.unsupported(layer, f"output padding {extra} (negative)")
        y = self.op("ConvTranspose", inputs,
                    base if layer.activation == "linear" else f"{base}_convt",
                    kernel_shape=[kh, kw], strides=list(layer.strides),
                    pads=[top, left, bottom, right], dilations=dil, group=1,
                    output_padding=extra)
        return _Value(self.activation(y, layer.activation, 4, True, base, layer), 4, True)

    def dense(self, layer, x, base):
        w = layer.get_weights()
        linear = layer.activation == "linear"
        if x.rank == 2:
            inputs = [x.name, self.const(f"{base}_kernel", w[0])]
            if layer.use_bias:
                inputs.append(self.const(f"{base}_bias", w[1]))
            y = self.op("Gemm", inputs, base if linear else f"{base}_gemm")
        else:
            y = self.op("MatMul", [self.plain(x), self.const(f"{base}_kernel", w[0])],
                        base if linear and not layer.use_bias else f"{base}_matmul")
            if layer.use_bias:
                y = self.op("Add", [y, self.const(f"{base}_bias", w[1])],
                            base if linear else f"{base}_add")
        return _Value(self.activation(y, layer.activation, x.rank, False, base, layer), x.rank)

    def batchnorm(self, layer, x, base):
        mean, var = layer.moving_mean, layer.moving_variance
        c = mean.shape[0]
        gamma = layer.gamma if layer.gamma is not None else np.ones(c, self.dtype)
        beta = layer.beta if layer.beta is not None else np.zeros(c, self.dtype)
        gamma, beta, mean, var = (np.asarray(a, dtype=self.dtype) for a in
                                  (gamma, beta, mean, var))
        if x.rank == 4 or x.rank == 2:
            xin = self.nchw(x) if x.rank == 4 else x.name
            y = self.op("BatchNormalization",
                        [xin, self.const(f"{base}_gamma", gamma), self.const(f"{base}_beta", beta),
                         self.const(f"{base}_mean", mean), self.const(f"{base}_var", var)],
                        base, epsilon=layer.epsilon)
            return _Value(y, x.rank, x.rank == 4)
        # Channels last at another rank: a per-channel affine map on the last axis.
        inv = 1.0 / np.sqrt(var.astype(np.float64) + layer.epsilon)
        scale = (gamma * inv).astype(self.dtype)
        shift = (beta - mean.astype(np.float64) * gamma * inv).astype(self.dtype)
        y = self.op("Mul", [x.name, self.const(f"{base}_scale", scale)], f"{base}_mul")
        return _Value(self.op("Add", [y, self.const(f"{base}_shift", shift)], base), x.rank)

    def _common_layout(self, vin):
        ranks = {v.rank for v in vin}
        if len(ranks) != 1:
            return None
        if ranks == {4} and any(v.nchw for v in vin):
            return [self.nchw(v) for v in vin], True
        return [self.plain(v) for v in vin], False

    def merge(self, layer, vin, op_type, base):
        common = self._common_layout(vin)
        if common is None:
            raise self.unsupported(layer, "inputs of different ranks (broadcast by inserting "
                                          "axes after the batch axis) are not exported")
        names, nchw = common
        y = names[0]
        for i, other in enumerate(names[1:]):
            last = i == len(names) - 2 and type(layer).__name__ != "Average"
            y = self.op(op_type, [y, other], base if last else f"{base}_{i}")
        if type(layer).__name__ == "Average":
            y = self.op("Div", [y, self.scalar(f"{base}_n", float(len(names)))], base)
        return _Value(y, vin[0].rank, nchw)

    def concat(self, layer, vin, base):
        common = self._common_layout(vin)
        if common is None:
            raise self.unsupported(layer, "inputs of different ranks")
        names, nchw = common
        rank = vin[0].rank
        axis = layer.axis % rank
        if nchw:
            axis = _AXIS_NHWC_TO_NCHW[axis]
        return _Value(self.op("Concat", names, base, axis=axis), rank, nchw)

    def upsampling(self, layer, x, base):
        size = tuple(getattr(layer, "size", (2, 2)))
        interp = getattr(layer, "interpolation", "nearest")
        scales = self.const(f"{base}_scales", [1.0, 1.0, float(size[0]), float(size[1])],
                            dtype=np.float32)
        if interp == "nearest":
            y = self.op("Resize", [self.nchw(x), "", scales], base, mode="nearest",
                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        elif interp == "bilinear":      # TensorFlow's half-pixel centres, edges clamped
            y = self.op("Resize", [self.nchw(x), "", scales], base, mode="linear",
                        coordinate_transformation_mode="half_pixel")
        else:
            raise self.unsupported(layer, f"interpolation {interp!r}")
        return _Value(y, 4, True)

    def cropping(self, layer, x, base):
        (top, bottom), (left, right) = layer.cropping
        big = np.iinfo(np.int64).max
        starts = self.const(f"{base}_starts", [top, left], dtype=np.int64)
        ends = self.const(f"{base}_ends", [-bottom if bottom else big, -right if right else big],
                          dtype=np.int64)
        axes = self.const(f"{base}_axes", [2, 3], dtype=np.int64)
        return _Value(self.op("Slice", [self.nchw(x), starts, ends, axes], base), 4, True)

    # -------------------------------------------------------------------- model
    def build(self):
        helper = self.helper
        model = self.model
        nodes, ins, outs = model._graph
        graph_inputs, vin = [], []
        for t in ins:
            name = self.fresh(t.node.layer.name)
            batch = self.batch_size if self.batch_size is not None else "batch"
            dims = [batch] + [d if d is not None else f"{name}_dim{i + 1}"
                              for i, d in enumerate(t.shape[1:])]
            graph_inputs.append(helper.make_tensor_value_info(name, self.elem, dims))
            vin.append(_Value(name, len(t.shape), False))
        vout = self.emit_graph(model, vin)
        graph_outputs = []
        for t, v, oname in zip(outs, vout, model.output_names):
            name = self.fresh(oname)
            self.nodes.append(helper.make_node("Identity", [self.plain(v)], [name],
                                               name=self.fresh(f"{oname}/output")))
            batch = self.batch_size if self.batch_size is not None else "batch"
            dims = [batch] + [d if d is not None else f"{name}_dim{i + 1}"
                              for i, d in enumerate(t.shape[1:])]
            graph_outputs.append(helper.make_tensor_value_info(name, self.elem, dims))
        graph = helper.make_graph(self.nodes, re.sub(r"\W+", "_", model.name) or "fastcnn",
                                  graph_inputs, graph_outputs, initializer=self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        from . import __version__
        proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastcnn",
                                  producer_version=__version__,
                                  doc_string=f"fastcnn model {model.name!r} (NHWC input)")
        proto.ir_version = helper.find_min_ir_version_for(opsets)
        # load_onnx reads this: the 4-D inputs are NHWC even where no Transpose follows.
        helper.set_model_props(proto, {_LAYOUT_KEY: "NHWC"})
        return proto


def _check_model_for_export(model):
    from .model import Model
    if not isinstance(model, Model):
        raise TypeError(f"export_onnx takes a fastcnn Model, got {type(model).__name__}")
    if getattr(model, "_graph", None) is None:
        if not model.built:
            raise ValueError(
                f"model {model.name!r} is not built: build it (input_shape=..., "
                f"fastcnn.Input or build((None, ...))) before export_onnx")
        raise ValueError(
            f"model {model.name!r} is a subclassed model: export_onnx needs a Sequential or "
            f"Functional model (their graph is what ONNX holds)")


def export_onnx(model, path, batch_size=None, opset=DEFAULT_OPSET):
    """Writes ``model`` (Sequential or Functional, built) to ``path`` as ONNX.

    Args:
        model: the fastcnn model.
        path: the file to write (replaced atomically; nothing is written on an error).
        batch_size: None (default: a dynamic batch dimension) or a positive int.
        opset: the ONNX opset (default :data:`DEFAULT_OPSET`; at least :data:`MIN_OPSET`).

    The tensors have the model's dtype: a float64 model is written as DOUBLE, valid ONNX
    that load_onnx reads back, but ONNX Runtime's CPU provider has no double Conv.

    Returns the path. Raises :class:`OnnxExportError` (a ValueError) naming the first layer
    that has no ONNX mapping, ImportError (naming ``pip install fastcnn[onnx]``) without
    the onnx package.
    """
    onnx = _require_onnx()
    _check_model_for_export(model)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (dynamic) or a positive int, got "
                         f"{batch_size!r}")
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {newest} (the installed "
                         f"onnx package's newest), got {opset!r}")
    path = os.fspath(path)
    proto = _Exporter(model, batch_size, opset).build()
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastcnn-onnx-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# =====================================================================================
# import
# =====================================================================================
#: Default upper bound on the file size load_onnx reads (protobuf's own limit is 2 GiB).
DEFAULT_MAX_BYTES = 1 << 31

_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64,
           9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
# The repeated field each data type uses when raw_data is empty.
_FIELDS = {1: "float_data", 2: "int32_data", 3: "int32_data", 5: "int32_data",
           6: "int32_data", 7: "int64_data", 9: "int32_data", 10: "int32_data",
           11: "double_data", 12: "uint64_data", 13: "uint64_data"}


class _Val:
    """A fastcnn tensor seen by the ONNX graph: ONNX's tensor is
    ``kt.transpose(perm)``; ``cols``: for a flattened value, ONNX's column j is fastcnn's
    column ``cols[j]`` (a Flatten of NCHW features); ``producer``: the Conv2D/Dense layer
    that made it (an activation or bias may fold into it)."""

    __slots__ = ("kt", "perm", "cols", "producer", "trail")

    def __init__(self, kt, perm=None, cols=None, producer=None, trail=0):
        self.kt = kt
        self.perm = tuple(range(len(kt.shape))) if perm is None else tuple(perm)
        self.cols = cols
        self.producer = producer
        self.trail = trail      # ONNX's shape has this many trailing 1s that kt lacks

    @property
    def rank(self):
        return len(self.kt.shape)

    @property
    def onnx_shape(self):
        return tuple(self.kt.shape[p] for p in self.perm) + (1,) * self.trail

    @property
    def identity(self):
        return self.perm == tuple(range(len(self.perm))) and self.cols is None

    @property
    def nchw(self):
        return self.rank == 4 and self.perm == _NHWC_TO_NCHW


def _same_pads(size, k, s, d=1):
    """TensorFlow's 'same' padding (before, after) for one spatial axis."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class _Importer:
    def __init__(self, proto, path):
        self.onnx = _require_onnx()
        self.proto = proto
        self.path = path
        self.graph = proto.graph
        self.opset = 1
        for imp in proto.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        self.consts = {}
        self.vals = {}
        self.dtype = np.dtype(np.float32)
        self.file_size = proto.ByteSize()
        self.nhwc_inputs = any(p.key == _LAYOUT_KEY and p.value == "NHWC"
                               for p in proto.metadata_props)
        self.layer_names = set()
        self.uses = {}
        self.static_batch = None   # the inputs' batch size when the graph fixes one

    def error(self, msg):
        return OnnxImportError(f"{self.path}: {msg}")

    def unsupported(self, node, why=None):
        what = f"operator {node.op_type!r} (node {node.name or '<unnamed>'!r})"
        if why:
            return self.error(f"{what}: {why}")
        if node.domain not in ("", "ai.onnx"):
            what = f"operator {node.op_type!r} of domain {node.domain!r} (node " \
                   f"{node.name or '<unnamed>'!r})"
        return self.error(f"{what} has no fastcnn equivalent; fastcnn imports "
                          f"{', '.join(sorted(_IMPORTERS))}")

    # ------------------------------------------------------------ constants
    def tensor(self, t, where):
        """An initializer / Constant as a NumPy array, its size checked first."""
        from onnx import numpy_helper
        if t.data_location == 1 or len(t.external_data):
            raise self.error(f"tensor {t.name!r} ({where}) keeps its data in an external file; "
                             f"load_onnx reads self-contained files only")
        if t.data_type not in _DTYPES:
            raise self.error(f"tensor {t.name!r} ({where}) has ONNX data type {t.data_type}, "
                             f"which fastcnn does not read")
        dims = list(t.dims)
        if any(d < 0 for d in dims):
            raise self.error(f"tensor {t.name!r} ({where}) has negative dimensions {dims}")
        count = math.prod(dims)
        itemsize = np.dtype(_DTYPES[t.data_type]).itemsize
        if t.raw_data:
            if len(t.raw_data) != count * itemsize:
                raise self.error(
                    f"tensor {t.name!r} ({where}) declares shape {dims} ({count * itemsize} "
                    f"bytes) but holds {len(t.raw_data)} bytes (corrupt or truncated file)")
        else:
            have = len(getattr(t, _FIELDS[t.data_type]))
            if have != count:
                raise self.error(
                    f"tensor {t.name!r} ({where}) declares shape {dims} ({count} values) but "
                    f"holds {have} (corrupt or truncated file)")
        return numpy_helper.to_array(t)

    def const(self, name):
        return self.consts.get(name)

    # --------------------------------------------------------------- layers
    def layer_name(self, node, suffix=""):
        op = _text(node.op_type).lower() or "node"
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", _text(node.name) or op).strip("_")
        base = (base or op) + suffix
        name, k = base, 1
        while name in self.layer_names:
            k += 1
            name = f"{base}_{k}"
        self.layer_names.add(name)
        return name

    def call(self, layer, inputs, weights=None):
        kt = layer(inputs)
        if weights is not None:
            layer.set_weights([np.asarray(w, dtype=self.dtype) for w in weights])
        return kt

    def val(self, node, i):
        name = node.input[i] if i < len(node.input) else ""
        if name == "":
            raise self.unsupported(node, f"input {i} is missing")
        v = self.vals.get(name)
        if v is None:
            if name in self.consts:
                raise self.unsupported(node, f"input {name!r} is a constant where fastcnn "
                                             f"needs a computed tensor")
            raise self.error(f"node {node.name!r} ({node.op_type}) reads {name!r}, which no "
                             f"earlier node produces (a corrupt or truncated file?)")
        return v

    def need_const(self, node, i, what):
        name = node.input[i] if i < len(node.input) else ""
        if name == "":
            return None
        c = self.consts.get(name)
        if c is None:
            raise self.unsupported(node, f"its {what} ({name!r}) must be a constant "
                                         f"(an initializer) for fastcnn")
        return c

    def need_nchw(self, node, v):
        if not v.nchw:
            raise self.unsupported(
                node, f"it reads a 4-D NCHW tensor, but its input {node.input[0]!r} (ONNX shape "
                      f"{_fmt(v.onnx_shape)}) is not laid out as NCHW of a fastcnn NHWC tensor")

    def sole_use(self, name):
        return self.uses.get(name, 0) == 1

    def bias_follows(self, name):
        """True when ``name``'s only reader is an Add of a constant (a bias that
        _fold_bias puts into the producing layer, which must then have a bias weight)."""
        readers = self.readers.get(name, [])
        if not self.sole_use(name) or len(readers) != 1 or readers[0].op_type != "Add":
            return False
        other = [n for n in readers[0].input if n != name]
        return len(other) == 1 and other[0] in self.consts

    def attrs(self, node):
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # ---------------------------------------------------------------- model
    def precheck(self):
        """Every operator known and every initializer's size consistent, before anything
        else reads the file's tensors."""
        g = self.graph
        for node in g.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in _IMPORTERS:
                raise self.unsupported(node)
        for t in g.initializer:
            self.consts[t.name] = self.tensor(t, "initializer")

    def build(self):
        from .layers import Input
        from .model import Model
        g = self.graph
        self.readers = {}
        for node in g.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
                self.readers.setdefault(name, []).append(node)
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        inputs = []
        for vi in g.input:
            if vi.name in self.consts:
                continue       # an initializer listed as an input (old exporters)
            tt = vi.type.tensor_type
            if tt.elem_type not in (1, 11):
                raise self.error(f"input {vi.name!r} has ONNX data type {tt.elem_type}; fastcnn "
                                 f"models take float32 or float64")
            self.dtype = np.dtype(_DTYPES[tt.elem_type])
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in tt.shape.dim]
            if len(dims) < 2 or any(d is None for d in dims[1:]):
                raise self.error(f"input {vi.name!r} has shape {_fmt(dims)}: fastcnn needs a "
                                 f"batch axis and known sizes for the others")
            # A graph exported for one batch size (PyTorch's dynamo exporter by default)
            # writes that size into its reshapes: remembered, such a reshape keeps the
            # batch axis (the fastcnn model takes any batch size).
            self.static_batch = dims[0] if len(self.vals) == 0 or \
                self.static_batch == dims[0] else None
            base = re.sub(r"[^A-Za-z0-9_.-]+", "_", _text(vi.name)).strip("_") or "input"
            name, k = base, 1
            while name in self.layer_names:
                k += 1
                name = f"{base}_{k}"
            self.layer_names.add(name)
            if len(dims) == 4:
                consumers = [n for n in g.node if vi.name in n.input]
                nhwc = self.nhwc_inputs or (consumers and all(
                    n.op_type == "Transpose" and list(self.attrs(n).get("perm", [])) ==
                    list(_NHWC_TO_NCHW) for n in consumers))
                if nhwc:
                    kt = Input(shape=tuple(dims[1:]), name=name, dtype=self.dtype)
                    v = _Val(kt)
                else:            # NCHW: the fastcnn model takes NHWC
                    kt = Input(shape=(dims[2], dims[3], dims[1]), name=name, dtype=self.dtype)
                    v = _Val(kt, _NHWC_TO_NCHW)
            else:
                kt = Input(shape=tuple(dims[1:]), name=name, dtype=self.dtype)
                v = _Val(kt)
            self.vals[vi.name] = v
            inputs.append(kt)
        if not inputs:
            raise self.error("the graph has no input")
        for node in g.node:
            handler = _IMPORTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                raise self.unsupported(node)
            handler(self, node)
        outputs = []
        for o in g.output:
            v = self.vals.get(o.name)
            if v is None:
                if o.name in self.consts:
                    raise self.error(f"output {o.name!r} is a constant; fastcnn models compute "
                                     f"their outputs")
                raise self.error(f"output {o.name!r} is produced by no node (a corrupt or "
                                 f"truncated file?)")
            if v.cols is not None:
                raise self.error(f"output {o.name!r} is a Flatten of NCHW features; fastcnn "
                                 f"would return them in NHWC order")
            outputs.append(v.kt)
        if len({id(k) for k in outputs}) != len(outputs):
            raise self.error("two outputs are the same tensor")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", _text(g.name)).strip("_") or None
        return Model(inputs if len(inputs) > 1 else inputs[0],
                     outputs if len(outputs) > 1 else outputs[0], name=name)


def _text(value):
    """A name from the file as str (protobuf hands back bytes for invalid UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _fmt(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


# ------------------------------------------------------------------- operators
def _imp_identity(im, node):
    if node.input[0] in im.consts:
        im.consts[node.output[0]] = im.consts[node.input[0]]
        return
    v = im.val(node, 0)
    im.vals[node.output[0]] = _Val(v.kt, v.perm, v.cols)


def _imp_constant(im, node):
    for a in node.attribute:
        if a.name == "value":
            im.consts[node.output[0]] = im.tensor(a.t, f"Constant node {node.name!r}")
            return
        if a.name in ("value_float", "value_int"):
            im.consts[node.output[0]] = np.array(a.f if a.name == "value_float" else a.i)
            return
        if a.name in ("value_floats", "value_ints"):
            im.consts[node.output[0]] = np.array(list(a.floats) if a.name == "value_floats"
                                                 else list(a.ints))
            return
    raise im.unsupported(node, "only value / value_float(s) / value_int(s) constants are read")


def _imp_transpose(im, node):
    if node.input[0] in im.consts:
        a = im.attrs(node)
        im.consts[node.output[0]] = np.transpose(im.consts[node.input[0]], a.get("perm"))
        return
    v = im.val(node, 0)
    perm = list(im.attrs(node).get("perm", reversed(range(v.rank))))
    if v.cols is not None or sorted(perm) != list(range(v.rank)) or perm[0] != 0:
        raise im.unsupported(node, f"only a layout change keeping the batch axis first is "
                                   f"supported, got perm {perm}")
    im.vals[node.output[0]] = _Val(v.kt, [v.perm[p] for p in perm])


def _pads_choice(im, node, v, kernel, strides, dilations, pads, auto_pad):
    """'same' / 'valid' / explicit ((t, b), (l, r)) for a window op on NCHW input."""
    _, _, h, w = v.onnx_shape
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode("ascii", "replace")
    if auto_pad == "SAME_UPPER":
        return "same", None
    if auto_pad == "VALID":
        return "valid", None
    if auto_pad == "SAME_LOWER":
        ph = _same_pads(h, kernel[0], strides[0], dilations[0])
        pw = _same_pads(w, kernel[1], strides[1], dilations[1])
        return "explicit", ((ph[1], ph[0]), (pw[1], pw[0]))
    if auto_pad not in ("NOTSET", ""):
        raise im.unsupported(node, f"auto_pad {auto_pad!r}")
    pads = list(pads or [0, 0, 0, 0])
    if len(pads) != 4 or any(p < 0 for p in pads):
        raise im.unsupported(node, f"pads {pads} (expected 4 non-negative values)")
    explicit = ((pads[0], pads[2]), (pads[1], pads[3]))
    if not any(pads):
        return "valid", None
    same = (_same_pads(h, kernel[0], strides[0], dilations[0]),
            _same_pads(w, kernel[1], strides[1], dilations[1]))
    if explicit == same:
        return "same", None
    return "explicit", explicit


def _zero_pad(im, node, v, pads):
    from .layers import ZeroPadding2D
    layer = ZeroPadding2D(pads, name=im.layer_name(node, "_pad"))
    return _Val(im.call(layer, v.kt), _NHWC_TO_NCHW)


def _imp_conv(im, node):
    from . import layers as L
    v = im.val(node, 0)
    im.need_nchw(node, v)
    wt = im.need_const(node, 1, "weight")
    bias = im.need_const(node, 2, "bias")
    a = im.attrs(node)
    if wt.ndim != 4:
        raise im.unsupported(node, f"only 2-D convolutions (a 4-D weight) are supported, "
                                   f"got a weight of shape {wt.shape}")
    o, i_per_group, kh, kw = wt.shape
    kernel = list(a.get("kernel_shape", [kh, kw]))
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    group = int(a.get("group", 1))
    c_in = v.onnx_shape[1]
    mode, pads = _pads_choice(im, node, v, kernel, strides, dil,
                              a.get("pads"), a.get("auto_pad", "NOTSET"))
    if mode == "explicit":
        v = _zero_pad(im, node, v, pads)
        mode = "valid"
    kwargs = {}
    if dil != [1, 1]:
        import inspect
        if "dilation_rate" not in inspect.signature(L.Conv2D.__init__).parameters:
            raise im.unsupported(node, f"dilations {dil}: this fastcnn's Conv2D has no "
                                       f"dilation_rate")
        kwargs["dilation_rate"] = tuple(dil)
    name = im.layer_name(node)
    if bias is None and im.bias_follows(node.output[0]):
        bias = np.zeros(o, dtype=wt.dtype)        # the following Add folds into it
    if group == 1:
        if i_per_group != c_in:
            raise im.unsupported(node, f"weight {wt.shape} does not match {c_in} input channels")
        layer = L.Conv2D(o, (kh, kw), strides=tuple(strides), padding=mode,
                         use_bias=bias is not None, name=name, **kwargs)
        weights = [wt.transpose(2, 3, 1, 0)] + ([bias] if bias is not None else [])
    elif group == c_in and i_per_group == 1 and o % c_in == 0:
        depthwise = getattr(L, "DepthwiseConv2D", None)
        if depthwise is None:
            raise im.unsupported(node, "a depthwise convolution (group = channels), and this "
                                       "fastcnn has no DepthwiseConv2D layer")
        dm = o // c_in
        layer = depthwise((kh, kw), strides=tuple(strides), padding=mode, depth_multiplier=dm,
                          use_bias=bias is not None, name=name, **kwargs)
        weights = [wt.reshape(c_in, dm, kh, kw).transpose(2, 3, 0, 1)] + (
            [bias] if bias is not None else [])
    else:
        raise im.unsupported(node, f"group={group} (fastcnn has group 1 and depthwise "
                                   f"convolutions)")
    kt = im.call(layer, v.kt, weights)
    im.vals[node.output[0]] = _Val(kt, _NHWC_TO_NCHW, producer=layer)


def _imp_conv_transpose(im, node):
    """ConvTranspose -> Conv2DTranspose: the 'valid'/'same' padding and output_padding
    whose forward conv has ONNX's pads (Keras's layer is the gradient of that conv, as
    ONNX's operator is)."""
    from . import layers as L
    from .layers import _dilation
    from .layers.transpose import deconv_output_length
    cls = getattr(L, "Conv2DTranspose", None)
    if cls is None:
        raise im.unsupported(node, "this fastcnn has no Conv2DTranspose layer")
    v = im.val(node, 0)
    im.need_nchw(node, v)
    wt = im.need_const(node, 1, "weight")
    bias = im.need_const(node, 2, "bias")
    a = im.attrs(node)
    if wt.ndim != 4 or int(a.get("group", 1)) != 1:
        raise im.unsupported(node, f"weight {wt.shape}, group {a.get('group', 1)} (2-D, "
                                   f"group 1 only)")
    c_in, filters, kh, kw = wt.shape
    _, c, h, w = v.onnx_shape
    if c_in != c:
        raise im.unsupported(node, f"weight {wt.shape} does not match {c} input channels")
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    out_pad = list(a.get("output_padding", [0, 0]))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if a.get("output_shape") is not None or auto_pad not in ("NOTSET", ""):
        raise im.unsupported(node, "output_shape / auto_pad (give explicit pads)")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    sizes = (h, w)
    want_pads = ((pads[0], pads[2]), (pads[1], pads[3]))
    want_out = tuple(s_ * (n - 1) + op + (k - 1) * d + 1 - pb - pe for n, k, s_, d, op, (pb, pe)
                     in zip(sizes, (kh, kw), strides, dil, out_pad, want_pads))
    choice = None
    for padding in ("same", "valid"):
        ops = []
        for n, k, s_, d, o in zip(sizes, (kh, kw), strides, dil, want_out):
            fits = [op for op in [None] + list(range(max(s_, d)))
                    if deconv_output_length(n, k, s_, padding, op, d) == o]
            ops.append(fits[0] if fits else "none")
        if "none" in ops:
            continue
        back, fwd_pads = _dilation.output_shape_and_pad(want_out, (kh, kw), tuple(strides),
                                                        padding, tuple(dil))
        if tuple(back) == sizes and tuple(map(tuple, fwd_pads)) == want_pads:
            choice = (padding, None if ops == [None, None] else tuple(
                op if op is not None else max(k, s_) - k if padding == "valid" else 0
                for op, k, s_ in zip(ops, (kh, kw), strides)))
            break
    if choice is None:
        raise im.unsupported(node, f"pads {pads} with strides {strides} and output_padding "
                                   f"{out_pad}: neither 'valid' nor 'same' (TensorFlow's rule) "
                                   f"gives them")
    padding, output_padding = choice
    kwargs = {"output_padding": output_padding} if output_padding is not None else {}
    layer = cls(filters, (kh, kw), strides=tuple(strides), padding=padding,
                dilation_rate=tuple(dil), use_bias=bias is not None,
                name=im.layer_name(node), **kwargs)
    weights = [wt.transpose(2, 3, 1, 0)] + ([bias] if bias is not None else [])
    kt = im.call(layer, v.kt, weights)
    if tuple(kt.shape[1:3]) != want_out:
        raise im.unsupported(node, f"fastcnn's layer gives spatial size {kt.shape[1:3]}, "
                                   f"ONNX {want_out}")
    im.vals[node.output[0]] = _Val(kt, _NHWC_TO_NCHW, producer=layer)


def _imp_resize(im, node):
    """Resize by integer factors of H and W -> UpSampling2D (nearest: ONNX's asymmetric /
    floor or half-pixel rounding, which repeat each pixel; linear: half-pixel, TensorFlow's
    bilinear)."""
    from . import layers as L
    v = im.val(node, 0)
    im.need_nchw(node, v)
    a = im.attrs(node)
    dec = (lambda x: x.decode() if isinstance(x, bytes) else x)
    mode = dec(a.get("mode", "nearest"))
    ctm = dec(a.get("coordinate_transformation_mode", "half_pixel"))
    nearest = dec(a.get("nearest_mode", "round_prefer_floor"))
    scales = im.need_const(node, 2, "scales") if len(node.input) > 2 and node.input[2] else None
    sizes = im.need_const(node, 3, "sizes") if len(node.input) > 3 and node.input[3] else None
    _, _, h, w = v.onnx_shape
    if scales is not None and np.asarray(scales).size == 4:
        factors = [float(x) for x in np.asarray(scales).reshape(-1)]
    elif sizes is not None and np.asarray(sizes).size == 4:
        sz = [int(x) for x in np.asarray(sizes).reshape(-1)]
        factors = [1.0, 1.0, sz[2] / h, sz[3] / w]
    else:
        raise im.unsupported(node, "scales or sizes for the 4 axes are needed")
    if factors[:2] != [1.0, 1.0] or any(f < 1 or f != int(f) for f in factors[2:]) or \
            a.get("antialias", 0) or a.get("axes") is not None:
        raise im.unsupported(node, f"scales {factors}: fastcnn upsamples H and W by whole "
                                   f"factors (UpSampling2D)")
    if mode == "nearest" and ((ctm == "asymmetric" and nearest == "floor") or (
            ctm in ("half_pixel", "pytorch_half_pixel") and nearest.startswith("round"))):
        interpolation = "nearest"
    elif mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel"):
        interpolation = "bilinear"
    else:
        raise im.unsupported(node, f"mode {mode!r} with coordinate_transformation_mode {ctm!r} "
                                   f"(nearest_mode {nearest!r})")
    layer = L.UpSampling2D((int(factors[2]), int(factors[3])), interpolation=interpolation,
                           name=im.layer_name(node))
    im.vals[node.output[0]] = _Val(im.call(layer, v.kt), _NHWC_TO_NCHW)


def _imp_pool(im, node):
    from . import layers as L
    v = im.val(node, 0)
    im.need_nchw(node, v)
    a = im.attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise im.unsupported(node, "the Indices output of MaxPool")
    kernel = list(a["kernel_shape"])
    if len(kernel) != 2:
        raise im.unsupported(node, f"kernel_shape {kernel} (2-D pooling only)")
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    if dil != [1, 1]:
        raise im.unsupported(node, f"dilations {dil}")
    mode, pads = _pads_choice(im, node, v, kernel, strides, dil, a.get("pads"),
                              a.get("auto_pad", "NOTSET"))
    _, _, h, w = v.onnx_shape
    if a.get("ceil_mode", 0):
        p = pads or ((0, 0), (0, 0))
        if mode == "same":
            p = (_same_pads(h, kernel[0], strides[0]), _same_pads(w, kernel[1], strides[1]))
        for size, k, s, (b, e) in ((h, kernel[0], strides[0], p[0]),
                                   (w, kernel[1], strides[1], p[1])):
            if (size + b + e - k) % s:
                raise im.unsupported(node, "ceil_mode=1 where it changes the output size")
    is_max = node.op_type == "MaxPool"
    include_pad = bool(a.get("count_include_pad", 0))
    if mode == "explicit" or (mode == "same" and include_pad and not is_max):
        if is_max and not _nonnegative(v):
            raise im.unsupported(node, f"max pooling with padding {pads} other than "
                                       f"TensorFlow's 'same' rule (fastcnn pads a max pool "
                                       f"with zeros only after a ReLU-like layer, where "
                                       f"that is exact)")
        if is_max:
            # After a ReLU every value is >= 0: a zero pad never beats a real value, and
            # where it ties with a real 0 that 0 had no gradient anyway (ReLU's slope at 0
            # is 0). torchvision's ResNet stem (conv, bn, relu, max pool k3 s2 p1) so.
            v = _zero_pad(im, node, v, pads)
            mode = "valid"
            cls = L.MaxPooling2D
            layer = cls(tuple(kernel), strides=tuple(strides), padding=mode,
                        name=im.layer_name(node))
            im.vals[node.output[0]] = _Val(im.call(layer, v.kt), _NHWC_TO_NCHW)
            return
        if not include_pad:
            raise im.unsupported(node, f"average pooling with padding {pads} (not 'same') "
                                       f"that excludes the padding from the mean")
        if mode == "same":
            pads = (_same_pads(h, kernel[0], strides[0]), _same_pads(w, kernel[1], strides[1]))
        v = _zero_pad(im, node, v, pads)
        mode = "valid"
    cls = L.MaxPooling2D if is_max else L.AveragePooling2D
    layer = cls(tuple(kernel), strides=tuple(strides), padding=mode, name=im.layer_name(node))
    im.vals[node.output[0]] = _Val(im.call(layer, v.kt), _NHWC_TO_NCHW)


def _nonnegative(v) -> bool:
    """Whether the layer that made ``v`` ends in an activation whose outputs are >= 0
    with slope 0 at 0 (relu, relu6, a ReLU layer without a negative slope)."""
    from . import layers as L
    node = getattr(v.kt, "node", None)
    layer = getattr(node, "layer", None)
    if isinstance(layer, L.ReLU):
        return layer.negative_slope == 0.0 and layer.threshold >= 0.0
    return getattr(layer, "activation", None) in ("relu", "relu6")


def _imp_global_pool(im, node, keepdims=True):
    from . import layers as L
    v = im.val(node, 0)
    im.need_nchw(node, v)
    cls = L.GlobalMaxPooling2D if node.op_type in ("GlobalMaxPool", "ReduceMax") \
        else L.GlobalAveragePooling2D
    out = node.output[0]
    trail = 0
    if keepdims:
        # (N, C, 1, 1) read only to be flattened (PyTorch's adaptive pool + flatten): the
        # fastcnn layer drops the two axes itself, and the flatten becomes nothing.
        readers = im.readers.get(out, [])
        data = [n for n in readers if n.op_type != "Shape"]
        if im.uses.get(out, 0) == len(readers) and len(data) == 1 and (
                (data[0].op_type == "Flatten" and im.attrs(data[0]).get("axis", 1) == 1)
                or data[0].op_type in ("Reshape", "Squeeze")):
            keepdims, trail = False, 2
    layer = cls(keepdims=keepdims, name=im.layer_name(node))
    kt = im.call(layer, v.kt)
    im.vals[out] = _Val(kt, _NHWC_TO_NCHW) if keepdims else _Val(kt, trail=trail)


def _imp_reduce(im, node):
    v = im.val(node, 0)
    a = im.attrs(node)
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = im.need_const(node, 1, "axes").tolist()
    axes = sorted(int(x) % max(v.rank, 1) for x in (axes or []))
    if not v.nchw or axes != [2, 3]:
        raise im.unsupported(node, f"only a mean/max over the spatial axes (2, 3) of NCHW "
                                   f"features is supported, got axes {axes}")
    _imp_global_pool(im, node, keepdims=bool(a.get("keepdims", 1)))


def _flatten_val(im, node, v):
    """``v`` flattened to (N, -1) in ONNX's order: a fastcnn Flatten, plus the column
    order when ONNX's order is not NHWC's."""
    from .layers import Flatten
    if v.perm[0] != 0:
        raise im.unsupported(node, "a flatten that moves the batch axis")
    if v.rank == 2 and v.identity:
        return _Val(v.kt, producer=v.producer)
    if v.cols is not None:
        raise im.unsupported(node, "a flatten of a permuted flattened tensor")
    shape = v.kt.shape[1:]
    count = math.prod(shape)
    moved = [d for p, d in zip(v.perm[1:], v.onnx_shape[1:]) if d != 1]
    if moved != [d for d in shape if d != 1] and count > max(im.file_size // 4, 1 << 16):
        # The column order costs 8 bytes per feature, and a Dense reading them needs 4
        # bytes of weights per feature in the file: a declared input shape cannot make
        # this allocate more than the file justifies.
        raise im.unsupported(node, f"a flatten of {count} NCHW features, more than the "
                                   f"{im.file_size}-byte file holds weights for")
    kt = im.call(Flatten(name=im.layer_name(node)), v.kt)
    idx = np.arange(count).reshape(shape)
    order = idx.transpose([p - 1 for p in v.perm[1:]]).ravel()
    cols = None if np.array_equal(order, np.arange(order.size)) else order
    return _Val(kt, cols=cols)


def _imp_flatten(im, node):
    v = im.val(node, 0)
    axis = int(im.attrs(node).get("axis", 1))
    if axis % max(v.rank, 1) != 1:
        raise im.unsupported(node, f"axis {axis} (fastcnn flattens everything but the batch "
                                   f"axis: axis 1)")
    im.vals[node.output[0]] = _flatten_val(im, node, v)


def _imp_reshape(im, node):
    from .layers import Reshape
    if node.input[0] in im.consts:
        shape = im.need_const(node, 1, "shape")
        im.consts[node.output[0]] = np.reshape(im.consts[node.input[0]], shape.tolist())
        return
    v = im.val(node, 0)
    shape = [int(s) for s in im.need_const(node, 1, "shape").tolist()]
    allowzero = int(im.attrs(node).get("allowzero", 0))
    src = v.onnx_shape
    if not shape or shape[0] not in (0, -1) or allowzero:
        batch = src[0] if len(src) and src[0] is not None else im.static_batch
        if not (shape and batch is not None and shape[0] == batch):
            raise im.unsupported(node, f"target shape {shape}: fastcnn keeps the batch axis "
                                       f"(its first entry must be 0 or -1, or the graph's "
                                       f"fixed batch size)")
    rest = [src[i] if s == 0 and i < len(src) else s for i, s in enumerate(shape)][1:]
    total = math.prod(src[1:])
    if rest.count(-1) > 1 or (shape[0] == -1 and -1 in rest):
        raise im.unsupported(node, f"target shape {shape} has more than one unknown size")
    if -1 in rest:
        known = math.prod(r for r in rest if r != -1)
        rest = [total // known if r == -1 else r for r in rest]
    if math.prod(rest) != total:
        raise im.unsupported(node, f"target shape {shape} does not hold the {total} values of "
                                   f"ONNX shape {_fmt(src)} per sample")
    if len(rest) == 1:
        im.vals[node.output[0]] = _flatten_val(im, node, v)
        return
    if not v.identity:
        raise im.unsupported(node, f"a reshape of a tensor fastcnn holds in another layout "
                                   f"(ONNX shape {_fmt(src)}, NHWC in fastcnn) to {shape}")
    kt = im.call(Reshape(tuple(rest), name=im.layer_name(node)), v.kt)
    im.vals[node.output[0]] = _Val(kt)


def _dense(im, node, v, w, bias):
    from .layers import Dense
    if v.rank < 2 or v.perm != tuple(range(v.rank)) or (v.rank > 2 and v.cols is not None):
        raise im.unsupported(node, f"a matrix product of a tensor of ONNX shape "
                                   f"{_fmt(v.onnx_shape)} that fastcnn holds in another "
                                   f"layout (its Dense multiplies the last axis)")
    if w.ndim != 2 or w.shape[0] != v.kt.shape[-1]:
        raise im.unsupported(node, f"weight of shape {w.shape} for {v.kt.shape[-1]} inputs")
    if v.cols is not None:             # Flatten of NCHW features: permute the rows
        permuted = np.empty_like(w)
        permuted[v.cols] = w
        w = permuted
    units = w.shape[1]
    b = np.zeros(units, dtype=w.dtype) if bias is None else \
        np.broadcast_to(np.asarray(bias, dtype=w.dtype), (units,)).copy()
    layer = Dense(units, name=im.layer_name(node))
    kt = im.call(layer, v.kt, [w, b])
    return _Val(kt, producer=layer)


def _imp_gemm(im, node):
    v = im.val(node, 0)
    a = im.attrs(node)
    if a.get("transA", 0):
        raise im.unsupported(node, "transA=1")
    w = im.need_const(node, 1, "B (weight)")
    c = im.need_const(node, 2, "C (bias)")
    if w.ndim != 2:
        raise im.unsupported(node, f"B of shape {w.shape}")
    w = w.T if a.get("transB", 0) else w
    w = w * np.asarray(a.get("alpha", 1.0), dtype=w.dtype)
    if c is not None:
        c = np.asarray(c, dtype=w.dtype) * np.asarray(a.get("beta", 1.0), dtype=w.dtype)
        if c.size not in (1, w.shape[1]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise im.unsupported(node, f"C of shape {c.shape} (a bias per output is expected)")
        c = c.reshape(-1)
    im.vals[node.output[0]] = _dense(im, node, v, w, c)


def _imp_matmul(im, node):
    v = im.val(node, 0)
    w = im.need_const(node, 1, "second operand (weight)")
    im.vals[node.output[0]] = _dense(im, node, v, w, None)


def _fold_bias(im, node, v, c):
    """Add(conv/dense output, constant bias) folded into the layer's bias, when possible."""
    from . import layers as L
    layer = v.producer
    if layer is None or not im.sole_use(node.input[0]) or layer.activation != "linear":
        return False
    if not getattr(layer, "use_bias", False):
        return False
    units = layer.bias.shape[0]
    c = np.asarray(c)
    if isinstance(layer, L.Dense):
        if c.size not in (1, units) or (c.ndim >= 1 and c.shape[-1] not in (1, units)):
            return False
    else:                                # NCHW conv output: (C,), (C, 1, 1) or (1, C, 1, 1)
        squeezed = c.reshape(-1) if c.size in (1, units) else None
        if squeezed is None or (c.ndim >= 3 and c.shape[-3] != c.size) or \
                (c.ndim == 1 and c.size != 1):
            return False
    w = layer.get_weights()
    w[1] = w[1] + np.broadcast_to(c.reshape(-1).astype(w[1].dtype), (units,))
    layer.set_weights(w)
    im.vals[node.output[0]] = _Val(v.kt, v.perm, v.cols, producer=layer)
    return True


def _imp_binary(im, node):
    from . import layers as L
    a_name, b_name = node.input[0], node.input[1]
    ca, cb = im.consts.get(a_name), im.consts.get(b_name)
    op = node.op_type
    if ca is not None and cb is not None:
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
              "Max": np.maximum, "Min": np.minimum}.get(op)
        if fn is None:
            raise im.unsupported(node, "on two constants")
        im.consts[node.output[0]] = fn(ca, cb)
        return
    if ca is not None or cb is not None:
        c = ca if ca is not None else cb
        v = im.val(node, 1 if ca is not None else 0)
        if op == "Add" and _fold_bias(im, node, v, c):
            return
        if np.asarray(c).size == 1 and op in ("Add", "Mul") or (
                np.asarray(c).size == 1 and op in ("Sub", "Div") and cb is not None):
            s = float(np.asarray(c).reshape(()))
            scale, offset = {"Add": (1.0, s), "Sub": (1.0, -s), "Mul": (s, 0.0),
                             "Div": (1.0 / s if s else float("inf"), 0.0)}[op]
            if not math.isfinite(scale):
                raise im.unsupported(node, "division by zero")
            layer = L.Rescaling(scale, offset, name=im.layer_name(node))
            im.vals[node.output[0]] = _Val(im.call(layer, v.kt), v.perm)
            return
        raise im.unsupported(node, f"{op} of a tensor and a constant of shape "
                                   f"{np.shape(c)} (fastcnn folds a bias into the preceding "
                                   f"Conv/Gemm, and takes scalar constants)")
    _merge(im, node, {"Add": L.Add, "Sub": L.Subtract, "Mul": L.Multiply, "Max": L.Maximum,
                      "Min": L.Minimum, "Sum": L.Add, "Mean": L.Average}.get(op))


def _merge(im, node, cls):
    if cls is None:
        raise im.unsupported(node)
    vs = [im.val(node, i) for i in range(len(node.input))]
    if len(vs) == 1:
        im.vals[node.output[0]] = vs[0]
        return
    perms = {v.perm for v in vs}
    if len(perms) != 1 or any(v.cols is not None for v in vs) or \
            len({v.rank for v in vs}) != 1:
        raise im.unsupported(node, "inputs held in different layouts or ranks")
    layer = cls(name=im.layer_name(node))
    im.vals[node.output[0]] = _Val(im.call(layer, [v.kt for v in vs]), vs[0].perm)


def _imp_variadic(im, node):
    from . import layers as L
    _merge(im, node, {"Sum": L.Add, "Mean": L.Average, "Max": L.Maximum,
                      "Min": L.Minimum}[node.op_type])


def _imp_concat(im, node):
    from . import layers as L
    if all(n in im.consts for n in node.input):
        im.consts[node.output[0]] = np.concatenate(
            [np.atleast_1d(im.consts[n]) for n in node.input], axis=int(im.attrs(node)["axis"]))
        return
    vs = [im.val(node, i) for i in range(len(node.input))]
    perms = {v.perm for v in vs}
    if len(perms) != 1 or any(v.cols is not None for v in vs):
        raise im.unsupported(node, "inputs held in different layouts")
    axis = int(im.attrs(node)["axis"]) % vs[0].rank
    layer = L.Concatenate(axis=vs[0].perm[axis], name=im.layer_name(node))
    im.vals[node.output[0]] = _Val(im.call(layer, [v.kt for v in vs]), vs[0].perm)


def _activation(im, node, name, layer_factory=None):
    """An activation: folded into the producing Conv2D/Dense when it is that output's only
    reader and the layer has none yet; else an Activation layer (or ``layer_factory``)."""
    from . import layers as L
    v = im.val(node, 0)
    producer = v.producer
    if (name is not None and producer is not None and producer.activation == "linear"
            and im.sole_use(node.input[0])):
        producer.activation = name
        im.vals[node.output[0]] = _Val(v.kt, v.perm, v.cols)
        return
    if v.cols is not None:
        raise im.unsupported(node, "an activation of a Flatten of NCHW features (fastcnn "
                                   "would permute the columns)")
    layer = layer_factory(im.layer_name(node)) if layer_factory is not None else \
        L.Activation(name, name=im.layer_name(node))
    im.vals[node.output[0]] = _Val(im.call(layer, v.kt), v.perm)


def _imp_simple_activation(im, node):
    name = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus",
            "Softsign": "softsign", "Exp": "exponential", "HardSwish": "hard_silu"}[node.op_type]
    _activation(im, node, name)


def _imp_leaky(im, node):
    from . import layers as L
    alpha = float(im.attrs(node).get("alpha", 0.01))
    name = "leaky_relu" if np.float32(alpha) == np.float32(0.2) else None
    _activation(im, node, name, lambda n: L.LeakyReLU(negative_slope=alpha, name=n))


def _imp_elu(im, node):
    from . import layers as L
    alpha = float(im.attrs(node).get("alpha", 1.0))
    name = "elu" if alpha == 1.0 else None
    _activation(im, node, name, lambda n: L.ELU(alpha=alpha, name=n))


def _imp_selu(im, node):
    from .backends.reference import SELU_ALPHA, SELU_SCALE
    a = im.attrs(node)
    if not (np.isclose(a.get("alpha", 1.67326319), SELU_ALPHA, rtol=1e-6) and
            np.isclose(a.get("gamma", 1.05070102), SELU_SCALE, rtol=1e-6)):
        raise im.unsupported(node, "alpha/gamma other than SELU's constants")
    _activation(im, node, "selu")


def _imp_hard_sigmoid(im, node):
    a = im.attrs(node)
    if not (np.isclose(a.get("alpha", 0.2), 1 / 6, rtol=1e-6) and
            np.isclose(a.get("beta", 0.5), 0.5)):
        raise im.unsupported(node, "alpha/beta other than Keras 3's hard_sigmoid (1/6, 0.5)")
    _activation(im, node, "hard_sigmoid")


def _imp_gelu(im, node):
    approx = im.attrs(node).get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    _activation(im, node, "gelu_approximate" if approx == "tanh" else "gelu")


def _imp_clip(im, node):
    from . import layers as L
    a = im.attrs(node)
    lo = a.get("min")
    hi = a.get("max")
    if len(node.input) > 1 and node.input[1]:
        lo = im.need_const(node, 1, "min")
    if len(node.input) > 2 and node.input[2]:
        hi = im.need_const(node, 2, "max")
    lo = None if lo is None else float(np.asarray(lo).reshape(()))
    hi = None if hi is None else float(np.asarray(hi).reshape(()))
    if lo != 0.0:
        raise im.unsupported(node, f"Clip(min={lo}, max={hi}): fastcnn has ReLU(max_value) "
                                   f"(min 0)")
    if hi is None:
        _activation(im, node, "relu")
    elif hi == 6.0:
        _activation(im, node, "relu6")
    else:
        _activation(im, node, None, lambda n: L.ReLU(max_value=hi, name=n))


def _imp_prelu(im, node):
    from . import layers as L
    v = im.val(node, 0)
    slope = im.need_const(node, 1, "slope")
    shape = v.onnx_shape[1:]
    s = np.asarray(slope)
    # ONNX broadcasts the slope to the ONNX shape without the batch (trailing alignment).
    full = np.broadcast_to(s.reshape((1,) * (len(shape) - s.ndim) + s.shape) if s.ndim <=
                           len(shape) else s, shape)
    inv = [v.perm.index(i + 1) - 1 for i in range(len(shape))]   # ONNX axes -> fastcnn
    alpha = np.ascontiguousarray(full.transpose(inv))
    layer = L.PReLU(name=im.layer_name(node))
    kt = im.call(layer, v.kt, [alpha])
    im.vals[node.output[0]] = _Val(kt, v.perm)


def _imp_softmax(im, node, log=False):
    from . import layers as L
    v = im.val(node, 0)
    default = -1 if im.opset >= 13 else 1
    axis = int(im.attrs(node).get("axis", default)) % v.rank
    if im.opset < 13 and axis != v.rank - 1:
        raise im.unsupported(node, f"opset {im.opset} Softmax with axis {axis} (it flattens "
                                   f"the axes from {axis} on)")
    f_axis = v.perm[axis]
    name = "log_softmax" if log else "softmax"
    if f_axis == v.rank - 1:
        _activation(im, node, name)
        return
    if log:
        raise im.unsupported(node, f"LogSoftmax over axis {axis}, not fastcnn's last axis")
    _activation(im, node, None, lambda n: L.Softmax(axis=f_axis, name=n))


def _imp_batchnorm(im, node):
    from . import layers as L
    v = im.val(node, 0)
    if len([o for o in node.output if o]) > 1:
        raise im.unsupported(node, "training-mode outputs (running mean/var)")
    if not (v.nchw or (v.rank == 2 and v.identity)):
        raise im.unsupported(node, f"input of ONNX shape {_fmt(v.onnx_shape)} (NCHW features "
                                   f"or (batch, channels) are supported)")
    gamma, beta, mean, var = (im.need_const(node, i, what) for i, what in
                              ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    eps = float(im.attrs(node).get("epsilon", 1e-5))
    if not eps > 0:
        raise im.unsupported(node, f"epsilon {eps} (must be > 0)")
    layer = L.BatchNormalization(epsilon=eps, name=im.layer_name(node))
    kt = im.call(layer, v.kt, [gamma, beta, mean, var])
    im.vals[node.output[0]] = _Val(kt, v.perm)


def _imp_pad(im, node):
    v = im.val(node, 0)
    a = im.attrs(node)
    mode = a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = a.get("pads")
    if pads is None:
        pads = im.need_const(node, 1, "pads")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(np.asarray(im.need_const(node, 2, "constant_value")).reshape(()))
    if len(node.input) > 3 and node.input[3]:
        raise im.unsupported(node, "the axes input")
    im.need_nchw(node, v)
    if mode != "constant" or value != 0.0 or len(pads) != 8 or any(
            pads[i] for i in (0, 1, 4, 5)) or any(p < 0 for p in pads):
        raise im.unsupported(node, f"mode {mode!r}, value {value}, pads {pads}: fastcnn has "
                                   f"zero padding of the spatial axes (ZeroPadding2D)")
    out = _zero_pad(im, node, v, ((pads[2], pads[6]), (pads[3], pads[7])))
    im.vals[node.output[0]] = out


def _imp_dropout(im, node):
    if len(node.output) > 1 and node.output[1] and im.uses.get(node.output[1]):
        raise im.unsupported(node, "its mask output is used")
    _imp_identity(im, node)


def _imp_cast(im, node):
    if node.input[0] in im.consts:
        to = int(im.attrs(node)["to"])
        if to not in _DTYPES:
            raise im.unsupported(node, f"cast to ONNX type {to}")
        im.consts[node.output[0]] = im.consts[node.input[0]].astype(_DTYPES[to])
        return
    to = int(im.attrs(node)["to"])
    if _DTYPES.get(to) is None or np.dtype(_DTYPES[to]) != im.dtype:
        raise im.unsupported(node, f"a cast of a computed tensor to ONNX type {to}")
    _imp_identity(im, node)


def _imp_shape(im, node):
    v = im.val(node, 0)
    a = im.attrs(node)
    shape = [0 if d is None else d for d in v.onnx_shape]  # 0: 'copy' for Reshape's batch
    start, end = a.get("start", 0), a.get("end", len(shape))
    im.consts[node.output[0]] = np.array(shape[start:end], dtype=np.int64)


def _imp_gather(im, node):
    data = im.need_const(node, 0, "data")
    idx = im.need_const(node, 1, "indices")
    im.consts[node.output[0]] = np.take(data, idx, axis=int(im.attrs(node).get("axis", 0)))


def _imp_unsqueeze(im, node):
    data = im.need_const(node, 0, "data")
    axes = im.attrs(node).get("axes")
    if axes is None:
        axes = im.need_const(node, 1, "axes").tolist()
    out = data
    for ax in sorted(int(a) % (data.ndim + len(axes)) for a in axes):
        out = np.expand_dims(out, ax)
    im.consts[node.output[0]] = out


def _imp_squeeze(im, node):
    if node.input[0] not in im.consts:
        v = im.val(node, 0)
        if (v.nchw and v.kt.shape[1:3] == (1, 1)) or v.trail == 2:   # (N, C, 1, 1) -> (N, C)
            axes = im.attrs(node).get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = im.need_const(node, 1, "axes").tolist()
            if axes is None or sorted(int(a) % 4 for a in axes) == [2, 3]:
                im.vals[node.output[0]] = _flatten_val(im, node, v)
                return
        raise im.unsupported(node, "a squeeze of a computed tensor other than (N, C, 1, 1)")
    data = im.consts[node.input[0]]
    axes = im.attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = im.need_const(node, 1, "axes").tolist()
    im.consts[node.output[0]] = np.squeeze(data, axis=None if axes is None else tuple(axes))


_IMPORTERS = {
    "Identity": _imp_identity, "Dropout": _imp_dropout, "Constant": _imp_constant,
    "Transpose": _imp_transpose, "Conv": _imp_conv, "MaxPool": _imp_pool,
    "AveragePool": _imp_pool, "GlobalAveragePool": _imp_global_pool,
    "GlobalMaxPool": _imp_global_pool, "ReduceMean": _imp_reduce, "ReduceMax": _imp_reduce,
    "Flatten": _imp_flatten, "Reshape": _imp_reshape, "Gemm": _imp_gemm,
    "MatMul": _imp_matmul, "Add": _imp_binary, "Sub": _imp_binary, "Mul": _imp_binary,
    "Div": _imp_binary, "Max": _imp_variadic, "Min": _imp_variadic, "Sum": _imp_variadic,
    "Mean": _imp_variadic, "Concat": _imp_concat, "Relu": _imp_simple_activation,
    "Sigmoid": _imp_simple_activation, "Tanh": _imp_simple_activation,
    "Softplus": _imp_simple_activation, "Softsign": _imp_simple_activation,
    "Exp": _imp_simple_activation, "HardSwish": _imp_simple_activation,
    "LeakyRelu": _imp_leaky, "Elu": _imp_elu, "Selu": _imp_selu,
    "HardSigmoid": _imp_hard_sigmoid, "Gelu": _imp_gelu, "Clip": _imp_clip,
    "PRelu": _imp_prelu, "Softmax": _imp_softmax,
    "LogSoftmax": lambda im, node: _imp_softmax(im, node, log=True),
    "BatchNormalization": _imp_batchnorm, "Pad": _imp_pad, "Cast": _imp_cast,
    "Shape": _imp_shape, "Gather": _imp_gather, "Unsqueeze": _imp_unsqueeze,
    "Squeeze": _imp_squeeze, "ConvTranspose": _imp_conv_transpose, "Resize": _imp_resize,
}


def _read_external_data(proto, path, budget):
    """Moves the external data of ``proto``'s initializers into the tensors themselves
    (``raw_data``), checking each reference first (see the module doc); at most ``budget``
    bytes are read in all. Tensors elsewhere (Constant attributes) stay refused by
    ``_Importer.tensor``."""
    from onnx import TensorProto
    import stat
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for t in proto.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        where = f"{path}: tensor {t.name!r} (initializer) keeps its data in an external file"
        location = info.get("location", "")
        if not location:
            raise OnnxImportError(f"{where} but names none (no 'location')")
        if "\0" in location:
            raise OnnxImportError(f"{where}, {location!r}, which is not a file name")
        if os.path.isabs(location) or os.path.splitdrive(location)[0]:
            raise OnnxImportError(f"{where}, {location!r}: an absolute path; load_onnx "
                                  f"reads external data only from the model's folder")
        full = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([folder, full]) != folder:
            raise OnnxImportError(f"{where}, {location!r}, which leads out of the model's "
                                  f"folder {folder!r}; load_onnx reads external data only "
                                  f"from there")
        try:
            st = os.stat(full)
        except OSError as exc:
            raise OnnxImportError(f"{where}, {location!r}, which cannot be read: "
                                  f"{exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise OnnxImportError(f"{where}, {location!r}, which is not a regular file")
        if t.data_type not in _DTYPES:
            raise OnnxImportError(f"{path}: tensor {t.name!r} (initializer) has ONNX data "
                                  f"type {t.data_type}, which fastcnn does not read")
        dims = list(t.dims)
        if any(d < 0 for d in dims):
            raise OnnxImportError(f"{path}: tensor {t.name!r} (initializer) has negative "
                                  f"dimensions {dims}")
        need = math.prod(dims) * np.dtype(_DTYPES[t.data_type]).itemsize
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", need))
        except ValueError:
            raise OnnxImportError(f"{where}, {location!r}, at an offset or length that is "
                                  f"not an integer: {info}") from None
        if length != need:
            raise OnnxImportError(f"{where}, {location!r}: {length} bytes, but its shape "
                                  f"{dims} needs {need}")
        if offset < 0 or offset + need > st.st_size:
            raise OnnxImportError(f"{where}, {location!r}: bytes {offset}..{offset + need} "
                                  f"of a {st.st_size}-byte file (truncated?)")
        budget -= need
        if budget < 0:
            raise OnnxImportError(f"{path}: the model and its external data hold more than "
                                  f"max_bytes bytes (at tensor {t.name!r})")
        with open(full, "rb") as f:
            f.seek(offset)
            data = f.read(need)
        if len(data) != need:
            raise OnnxImportError(f"{where}, {location!r}: it ended before the tensor's "
                                  f"{need} bytes (truncated while reading?)")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT


def load_onnx(path, max_bytes=DEFAULT_MAX_BYTES):
    """A fastcnn Functional model from the ONNX file at ``path`` (see the module doc for
    the operators). NCHW graphs become NHWC models: feed the model NHWC input.

    ``max_bytes``: the most bytes read, the file and its external data together
    (default 2 GiB). Raises :class:`OnnxImportError` (a ValueError) for a file that is not
    ONNX, is truncated or corrupt, refers to external data outside its folder or that
    does not fit, or uses an operator fastcnn lacks (naming the operator type and the
    node).
    """
    onnx = _require_onnx()
    from google.protobuf.message import DecodeError
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise FileNotFoundError(f"cannot read ONNX file {path!r}: {exc}") from None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    if size > max_bytes:
        raise OnnxImportError(f"{path}: the file has {size} bytes, more than max_bytes="
                              f"{max_bytes}")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if not data:
        raise OnnxImportError(f"{path}: the file is empty, not an ONNX model")
    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxImportError(f"{path}: not a valid ONNX file (truncated or corrupt): "
                              f"{exc}") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise OnnxImportError(f"{path}: not a valid ONNX file (no graph; truncated or "
                              f"corrupt?)")
    _read_external_data(proto, path, max_bytes - size)
    importer = _Importer(proto, path)
    importer.precheck()       # operators and tensor sizes first: the clearest messages
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # ValidationError, or the C++ side's ValueError/RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxImportError(f"{path}: the ONNX checker rejects the file (truncated or "
                              f"corrupt?): {first}") from None
    try:
        return importer.build()
    except OnnxImportError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # A file the checker accepts but whose values fastcnn's layers refuse (a shape
        # that does not fit, an attribute of the wrong kind): one error type for callers.
        raise OnnxImportError(f"{path}: fastcnn cannot build a model from this file: "
                              f"{type(exc).__name__}: {exc}") from exc
