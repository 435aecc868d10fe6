"""TensorFlow's ``tf.nn`` words for the op-level tutorials, on the ACTIVE backend's kernels.

::

    import fastcnn
    from fastcnn import nn, ops

    W = {"c1": fastcnn.Variable(rng.normal(0, 0.1, (5, 5, 1, 32)).astype("float32")), ...}
    with fastcnn.GradientTape() as tape:
        h = nn.relu(nn.bias_add(nn.conv2d(x, W["c1"], strides=[1, 1, 1, 1], padding="SAME"),
                                W["b1"]))
        h = nn.max_pool(h, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
        ...
        loss = ops.mean(nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = tape.gradient(loss, W)
    optimizer.apply_gradients(zip(grads.values(), W.values()))

Every operation here calls :func:`fastcnn.backends.current` at call time and runs that
backend's kernels (forward now, the matching backward kernel when the tape asks), so a
hand-written training loop runs the same kernels as ``fit`` and works on every backend,
``cuda`` included: device arrays stay on the device. Each records its node through
:func:`fastcnn.autodiff.record`.

Layout is NHWC (``data_format='NHWC'``, the default); filters are HWIO ``(kh, kw, C_in,
C_out)`` (``(kh, kw, C, channel_multiplier)`` for depthwise_conv2d, ``(kh, kw, C_out,
C_in)`` for conv2d_transpose, as TensorFlow). ``padding`` is ``'SAME'`` / ``'VALID'`` (any
case: TensorFlow's rule, computed by :mod:`fastcnn.shapes`) or explicit ``[[0, 0], [top,
bottom], [left, right], [0, 0]]``.

Dilated convolutions (``dilations`` > 1) run TensorFlow's space-to-batch around the same
kernels (:mod:`fastcnn.layers._dilation`), and conv2d_transpose the phase decomposition of
:mod:`fastcnn.layers.transpose`: that data movement is NumPy, so those two paths take host
arrays only (a device array of the 'cuda' backend is refused, not copied). ``strides`` > 1
together with ``dilations`` > 1 is refused, as TensorFlow's tf.nn.convolution and Keras do
(TensorFlow's raw depthwise op computes something else there and warns).

The cross-entropies return per-example losses, as TensorFlow does. The backends' fused
kernels return the batch MEAN and its gradient ``dlogits_mean``; the per-example gradient
for upstream gradients ``g`` is therefore ``dlogits_mean * N * g[:, None]``: when every
``g`` is ``1/N`` (``reduce_mean`` of the losses, the common case) that scale is exactly 1
and the kernel's gradient is used as it is, bit for bit what ``fit`` uses. The
per-example values themselves are computed with NumPy (a stable log-softmax); for device
logits that reads a host copy of the ``(N, K)`` logits, as the cuda backend returns every
loss value to the host anyway, and the gradient stays on the device.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _device, backends, ops, shapes, utils
from .autodiff import Tensor, record, value_of
from .layers import _dilation, transpose as _transpose
from .ops import _kernel_array, _kernel_grad, _match, _refuse_device

__all__ = [
    "conv2d", "depthwise_conv2d", "separable_conv2d", "conv2d_transpose", "bias_add",
    "relu", "relu6", "elu", "selu", "gelu", "leaky_relu", "silu",
    "softplus", "softsign",
    "sigmoid", "tanh", "softmax", "log_softmax", "max_pool2d", "max_pool", "avg_pool2d",
    "avg_pool", "dropout", "softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits", "sigmoid_cross_entropy_with_logits",
    "l2_loss", "moments",
]


# ----------------------------------------------------------------------- arguments


def _shape(a):
    return tuple(a.shape)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_data_format(data_format, op, allowed=("NHWC",)):
    if data_format is None:
        return
    if not isinstance(data_format, str) or data_format.upper() not in allowed:
        raise NotImplementedError(
            f"nn.{op}: data_format={data_format!r} is not supported; fastcnn is channels-last "
            f"(data_format='NHWC')")


def _window_arg(value, argument, op):
    """TensorFlow's forms of ``strides`` / ``ksize``: an int, ``[s]``, ``[sh, sw]`` or
    ``[1, sh, sw, 1]`` -> ``(sh, sw)``."""
    if _is_int(value):
        values = (int(value),) * 2
    else:
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"nn.{op}: {argument} must be an int or a list of 1, 2 or 4 ints, "
                            f"got {value!r}") from None
        if not items or not all(_is_int(v) for v in items) or len(items) not in (1, 2, 4):
            raise ValueError(f"nn.{op}: {argument} must be an int or a list of 1, 2 or 4 ints "
                             f"([1, h, w, 1] for NHWC), got {value!r}")
        if len(items) == 4:
            if items[0] != 1 or items[3] != 1:
                raise ValueError(
                    f"nn.{op}: {argument}={value!r} moves along the batch or channel axis; "
                    f"expected [1, h, w, 1] (NHWC)")
            items = items[1:3]
        values = tuple(int(v) for v in items) * (2 if len(items) == 1 else 1)
    if any(v < 1 for v in values):
        raise ValueError(f"nn.{op}: {argument} must be >= 1, got {value!r}")
    return values


def _padding_arg(padding, spatial, window, stride, op, what, explicit=True, fit=True):
    """``((top, bottom), (left, right))`` for 'SAME' / 'VALID' (TensorFlow's rule, from
    :mod:`fastcnn.shapes`) or an explicit NHWC list (``fit``: checks that the window fits
    the explicitly padded input)."""
    if isinstance(padding, str):
        if padding.lower() not in shapes.PADDINGS:
            raise ValueError(f"nn.{op}: padding must be 'SAME', 'VALID' or explicit "
                             f"[[0, 0], [top, bottom], [left, right], [0, 0]], got {padding!r}")
        try:
            _, pad = shapes.window_output_shape(spatial, window, stride, padding.lower(),
                                                what=what)
        except ValueError as exc:
            raise ValueError(f"nn.{op}: {exc}") from None
        return pad
    if not explicit:
        raise ValueError(f"nn.{op}: padding must be 'SAME' or 'VALID', got {padding!r}")
    try:
        pairs = [list(p) for p in padding]
    except TypeError:
        raise ValueError(f"nn.{op}: padding must be 'SAME', 'VALID' or explicit "
                         f"[[0, 0], [top, bottom], [left, right], [0, 0]], got "
                         f"{padding!r}") from None
    if (len(pairs) != 4 or any(len(p) != 2 for p in pairs)
            or not all(_is_int(v) and v >= 0 for p in pairs for v in p)):
        raise ValueError(f"nn.{op}: explicit padding must be [[0, 0], [top, bottom], "
                         f"[left, right], [0, 0]] of ints >= 0, got {padding!r}")
    if any(pairs[0]) or any(pairs[3]):
        raise ValueError(f"nn.{op}: explicit padding {padding!r} pads the batch or channel "
                         f"axis; expected [[0, 0], [top, bottom], [left, right], [0, 0]]")
    pad = ((int(pairs[1][0]), int(pairs[1][1])), (int(pairs[2][0]), int(pairs[2][1])))
    ho, wo = shapes.padded_output_shape(spatial, window, stride, pad)
    if fit and (ho < 1 or wo < 1):
        raise ValueError(f"nn.{op}: {what} {tuple(window)} does not fit the input "
                         f"{tuple(spatial)} with padding {padding!r}")
    return pad


def _rank4(a, argument, op, layout):
    if len(a.shape) != 4:
        raise ValueError(f"nn.{op}: {argument} must have rank 4 {layout}, got shape "
                         f"{_shape(a)}")


def _same_dtype(op, a, b, names):
    if a.dtype != b.dtype:
        raise TypeError(f"nn.{op}: {names[0]} ({a.dtype}) and {names[1]} ({b.dtype}) must "
                        f"have the same dtype")


def _pair(op, x, y, names):
    """Two kernel arrays of one dtype; a Python number or list takes the other's dtype."""
    a_plain = not (isinstance(x, (Tensor, np.ndarray)) or _device.is_device_array(x))
    b_plain = not (isinstance(y, (Tensor, np.ndarray)) or _device.is_device_array(y))
    a = _kernel_array(x, op, names[0])
    b = _kernel_array(y, op, names[1])
    if a_plain and not b_plain and not _device.is_device_array(a):
        a = np.ascontiguousarray(a, dtype=b.dtype)
    elif b_plain and not a_plain and not _device.is_device_array(b):
        b = np.ascontiguousarray(b, dtype=a.dtype)
    _same_dtype(op, a, b, names)
    return a, b


# --------------------------------------------------------------------- convolution


def _dilation_arg(dilations, strides, stride, op):
    """``(dh, dw)`` from TensorFlow's forms of ``dilations`` (as ``strides``); None is 1.
    Refuses ``strides`` > 1 with ``dilations`` > 1 in TensorFlow's words."""
    if dilations is None:
        return (1, 1)
    dilation = _window_arg(dilations, "dilations", op)
    if dilation != (1, 1) and stride != (1, 1):
        raise ValueError(
            f"nn.{op}: `strides > 1` not supported in conjunction with `dilations > 1`: when "
            f"a dilation is greater than 1, all values of strides must be 1 (TensorFlow's "
            f"rule). Received: strides={strides!r} and dilations={dilations!r}")
    return dilation


def _host_path(op, why, arrays):
    if any(_device.is_device_array(a) for a in arrays):
        raise NotImplementedError(
            f"nn.{op}: {why} moves data with NumPy around the backend's kernels and does not "
            f"take device arrays of the 'cuda' backend (nothing is copied to the host "
            f"silently): copy them explicitly (tensor.numpy())")


def _filter_window(w, dilation):
    return _dilation.effective_kernel(_shape(w)[:2], dilation)


def _conv_node(op, kernel_op, input, filters, x, w, stride, pad, dilation):
    """Records one conv of the backend's ``<kernel_op>_forward/backward`` (dilated through
    space-to-batch when ``dilation`` > 1); the input gradient only when the tape needs it."""
    if dilation != (1, 1):
        _host_path(op, f"dilations={dilation}", (x, w))
    backend = backends.current()
    y, ctx = _dilation.conv_forward(backend, x, w, None, stride, pad, dilation, op=kernel_op)

    def backward(dys, needs):
        dx, dw, _ = _dilation.conv_backward(backend, _kernel_grad(dys[0], y), ctx,
                                            need_dx=needs[0], op=kernel_op)
        return _match(dx, input), (_match(dw, filters) if needs[1] else None)
    return record(op, (input, filters), [y], backward)[0]


def conv2d(input, filters, strides, padding, data_format="NHWC", dilations=None,
           name=None):
    """``tf.nn.conv2d``: 2-D cross-correlation of ``input`` (N, H, W, C_in) with
    ``filters`` (kh, kw, C_in, C_out), on the active backend's ``conv2d_forward`` /
    ``conv2d_backward`` (the input gradient is computed only when the tape needs it).

    ``dilations``: an int or a list of 1, 2 or 4 ints (``[1, dh, dw, 1]``), as ``strides``;
    above 1 the filter taps are ``d`` apart (effective size ``(k - 1) * d + 1``), computed
    exactly by TensorFlow's space-to-batch on the same kernels (host arrays), with strides
    1 only."""
    _check_data_format(data_format, "conv2d")
    x, w = _pair("conv2d", input, filters, ("input", "filters"))
    _rank4(x, "input", "conv2d", "(N, H, W, C_in)")
    _rank4(w, "filters", "conv2d", "(kh, kw, C_in, C_out)")
    if w.shape[2] != x.shape[3]:
        raise ValueError(f"nn.conv2d: filters have {w.shape[2]} input channels (shape "
                         f"{_shape(w)}) but input has {x.shape[3]} (shape {_shape(x)}); "
                         f"expected filters of shape (kh, kw, {x.shape[3]}, C_out)")
    stride = _window_arg(strides, "strides", "conv2d")
    dilation = _dilation_arg(dilations, strides, stride, "conv2d")
    pad = _padding_arg(padding, _shape(x)[1:3], _filter_window(w, dilation), stride,
                       "conv2d", "filters" if dilation == (1, 1) else "dilated filters")
    return _conv_node("conv2d", "conv2d", input, filters, x, w, stride, pad, dilation)


def _depthwise_args(op, input, filter, strides, padding, data_format, dilations,
                    filter_name="filter"):
    """Checks ``tf.nn.depthwise_conv2d``'s arguments: ``(x, w, stride, pad, dilation)``."""
    _check_data_format(data_format, op)
    x, w = _pair(op, input, filter, ("input", filter_name))
    _rank4(x, "input", op, "(N, H, W, in_channels)")
    _rank4(w, filter_name, op, "(kh, kw, in_channels, channel_multiplier)")
    if w.shape[2] != x.shape[3]:
        raise ValueError(
            f"nn.{op}: input and {filter_name} must have the same depth (TensorFlow's rule): "
            f"input has {x.shape[3]} channels (shape {_shape(x)}) but {filter_name} has "
            f"{w.shape[2]} (shape {_shape(w)}); expected {filter_name} of shape "
            f"(kh, kw, {x.shape[3]}, channel_multiplier)")
    stride = _window_arg(strides, "strides", op)
    if stride[0] != stride[1]:
        raise ValueError(
            f"nn.{op}: strides={strides!r}: TensorFlow's depthwise convolution only supports "
            f"equal strides in the row and column dimensions; expected [1, s, s, 1]")
    dilation = _dilation_arg(dilations, strides, stride, op)
    pad = _padding_arg(padding, _shape(x)[1:3], _filter_window(w, dilation), stride, op,
                       filter_name if dilation == (1, 1) else f"dilated {filter_name}")
    return x, w, stride, pad, dilation


def depthwise_conv2d(input, filter, strides, padding, data_format=None, dilations=None,
                     name=None):
    """``tf.nn.depthwise_conv2d``: each of the ``in_channels`` channels of ``input`` (N, H,
    W, in_channels) convolved with its own ``channel_multiplier`` filters of ``filter`` (kh,
    kw, in_channels, channel_multiplier); output channel ``c * channel_multiplier + m``, on
    the active backend's ``depthwise_conv2d_forward`` / ``_backward``.

    ``strides``: ``[1, s, s, 1]`` (equal row and column strides, as TensorFlow requires;
    an int or ``[s, s]`` are taken too). ``dilations``: ``[dh, dw]`` (TensorFlow's ``rate``;
    an int or ``[1, dh, dw, 1]`` too), with strides 1 only (see the module doc)."""
    x, w, stride, pad, dilation = _depthwise_args(
        "depthwise_conv2d", input, filter, strides, padding, data_format, dilations)
    return _conv_node("depthwise_conv2d", "depthwise_conv2d", input, filter, x, w, stride,
                      pad, dilation)


def separable_conv2d(input, depthwise_filter, pointwise_filter, strides, padding,
                     data_format=None, dilations=None, name=None):
    """``tf.nn.separable_conv2d``: :func:`depthwise_conv2d` with ``depthwise_filter`` (kh,
    kw, in_channels, channel_multiplier), ``strides``, ``padding`` and ``dilations``, then a
    1x1 conv (stride 1) with ``pointwise_filter`` (1, 1, in_channels * channel_multiplier,
    out_channels): two tape nodes on the backend's depthwise and conv kernels."""
    op = "separable_conv2d"
    x, w, stride, pad, dilation = _depthwise_args(
        op, input, depthwise_filter, strides, padding, data_format, dilations,
        "depthwise_filter")
    p = _kernel_array(pointwise_filter, op, "pointwise_filter")
    _same_dtype(op, x, p, ("input", "pointwise_filter"))
    _rank4(p, "pointwise_filter", op, "(1, 1, in_channels * channel_multiplier, out_channels)")
    c, m = w.shape[2], w.shape[3]
    if _shape(p)[:3] != (1, 1, c * m):
        raise ValueError(
            f"nn.{op}: pointwise_filter must have shape (1, 1, in_channels * "
            f"channel_multiplier, out_channels) = (1, 1, {c} * {m}, out_channels) = "
            f"(1, 1, {c * m}, out_channels) for depthwise_filter of shape {_shape(w)}, got "
            f"{_shape(p)}")
    depthwise = _conv_node("depthwise_conv2d", "depthwise_conv2d", input, depthwise_filter,
                           x, w, stride, pad, dilation)
    return _conv_node(op, "conv2d", depthwise, pointwise_filter, depthwise.value, p, (1, 1),
                      ((0, 0), (0, 0)), (1, 1))


def _output_shape_arg(output_shape, x, w, op):
    """TensorFlow's ``output_shape`` (4 values, or the 2 spatial ones) -> ``(Ho, Wo)``;
    its batch and channels must be the input's and the filters'."""
    value = value_of(output_shape)
    if _device.is_device_array(value):
        value = _device.host_copy(value)
    try:
        items = np.asarray(value)
    except (TypeError, ValueError):
        items = None
    if items is None or items.ndim != 1 or items.size not in (2, 4) or \
            items.dtype.kind not in "iu":
        raise ValueError(f"nn.{op}: output_shape must be 4 ints (N, H, W, C_out) or the 2 "
                         f"spatial ones (H, W), got {output_shape!r}")
    items = [int(v) for v in items]
    if len(items) == 4:
        if items[0] != x.shape[0]:
            raise ValueError(f"nn.{op}: output_shape {tuple(items)} has batch size {items[0]} "
                             f"but input has {x.shape[0]} (shape {_shape(x)}); they must be "
                             f"the same")
        if items[3] != w.shape[2]:
            raise ValueError(f"nn.{op}: output_shape {tuple(items)} has {items[3]} channels "
                             f"but filters give {w.shape[2]} (filters are (kh, kw, C_out, "
                             f"C_in), shape {_shape(w)}); they must be the same")
        items = items[1:3]
    if any(v < 1 for v in items):
        raise ValueError(f"nn.{op}: output_shape must be >= 1, got {output_shape!r}")
    return tuple(items)


def conv2d_transpose(input, filters, output_shape, strides, padding="SAME",
                     data_format="NHWC", dilations=None, name=None):
    """``tf.nn.conv2d_transpose``: the gradient of :func:`conv2d` with respect to its input
    ("deconvolution"): ``input`` (N, H, W, C_in), ``filters`` (kh, kw, C_out, C_in) as
    TensorFlow (the kernel of the conv from the output space back to the input), the result
    of shape ``output_shape`` (N, H', W', C_out); that conv of ``output_shape`` with
    ``strides``, ``padding`` and ``dilations`` must give exactly (H, W), as TensorFlow
    requires. On the backend's conv kernels through the phase decomposition of
    :mod:`fastcnn.layers.transpose` (host arrays); the backward is the conv itself (input
    gradient) and its filter gradient. ``dilations`` > 1 with strides 1 only (TensorFlow CPU
    refuses any dilation here; this computes what its GPU kernel does)."""
    op = "conv2d_transpose"
    _check_data_format(data_format, op)
    x, w = _pair(op, input, filters, ("input", "filters"))
    _rank4(x, "input", op, "(N, H, W, C_in)")
    _rank4(w, "filters", op, "(kh, kw, C_out, C_in)")
    if w.shape[3] != x.shape[3]:
        raise ValueError(f"nn.{op}: filters have {w.shape[3]} input channels (their last "
                         f"axis; shape {_shape(w)}) but input has {x.shape[3]} (shape "
                         f"{_shape(x)}); expected filters of shape (kh, kw, C_out, "
                         f"{x.shape[3]})")
    out_hw = _output_shape_arg(output_shape, x, w, op)
    stride = _window_arg(strides, "strides", op)
    dilation = _dilation_arg(dilations, strides, stride, op)
    window = _filter_window(w, dilation)
    # the forward conv from the output space: its padding, and its output size (the input's)
    if isinstance(padding, str) and padding.lower() in shapes.PADDINGS:
        back, pad = zip(*(shapes.conv_output_length(o, k, s, padding.lower())
                          for o, k, s in zip(out_hw, window, stride)))
    else:
        pad = _padding_arg(padding, out_hw, window, stride, op, "filters", fit=False)
        back = shapes.padded_output_shape(out_hw, window, stride, pad)
    if tuple(back) != _shape(x)[1:3]:
        raise ValueError(
            f"nn.{op}: output_shape {output_shape!r} does not fit the input: the conv with "
            f"these filters ({_shape(w)[0]}, {_shape(w)[1]}), strides={strides!r}, "
            f"padding={padding!r} and dilations={dilations!r} maps a {out_hw} output back to "
            f"{tuple(back)}, but input has spatial size {_shape(x)[1:3]}; TensorFlow refuses "
            f"this too (Conv2DBackpropInput: size of out_backprop doesn't match computed)")
    _host_path(op, "the transposed convolution", (x, w))
    backend = backends.current()
    y = _transpose.phase_forward(backend, x, w, None, stride, pad, out_hw) \
        if dilation == (1, 1) else \
        _transpose.zero_insert_forward(backend, x, w, None, stride, pad, out_hw, dilation)

    def backward(dys, needs):
        dx, dw = _transpose.transpose_backward(backend, _kernel_grad(dys[0], y), x, w, stride,
                                               pad, dilation, need_dx=needs[0])
        return dx, (dw if needs[1] else None)
    return record(op, (input, filters), [y], backward)[0]


def bias_add(value, bias, data_format=None, name=None):
    """``tf.nn.bias_add``: adds the 1-D ``bias`` along the channel axis (the last one;
    axis 1 with ``data_format='NCHW'`` / 'NC...', on host arrays).

    On device arrays it runs the backend's dense kernels with an identity matrix
    (``x @ I + b``; the backward gives ``dy`` and ``sum(dy)``): the contract has no bias
    kernel of its own, and this keeps everything on the device."""
    channels_first = False
    if data_format is not None:
        f = data_format.upper() if isinstance(data_format, str) else ""
        channels_first = len(f) > 2 and f.startswith("NC")
        if not f.startswith("N") or not (channels_first or f.endswith("C")):
            raise ValueError(f"nn.bias_add: data_format must be None, 'N...C' (channels "
                             f"last) or 'NC...' (channels first), got {data_format!r}")
    x, b = _pair("bias_add", value, bias, ("value", "bias"))
    if len(b.shape) != 1:
        raise ValueError(f"nn.bias_add: bias must be 1-D, got shape {_shape(b)}")
    if len(x.shape) < 2:
        raise ValueError(f"nn.bias_add: value must have rank >= 2, got shape {_shape(x)}")
    axis = 1 if channels_first else len(x.shape) - 1
    if x.shape[axis] != b.shape[0]:
        raise ValueError(f"nn.bias_add: bias has {b.shape[0]} values but value has "
                         f"{x.shape[axis]} channels along axis {axis} (shape {_shape(x)})")
    if _device.is_device_array(x) or _device.is_device_array(b):
        if channels_first:
            raise NotImplementedError("nn.bias_add on device arrays (the 'cuda' backend) "
                                      "takes channels-last values only")
        return _bias_add_kernels(value, bias, x, b)
    shape = [1] * x.ndim
    shape[axis] = b.shape[0]
    out = x + b.reshape(shape)
    others = tuple(i for i in range(x.ndim) if i != axis)

    def backward(dys, needs):
        g = dys[0]
        return (g if needs[0] else None,
                np.sum(g, axis=others) if needs[1] else None)
    return record("bias_add", (value, bias), [out], backward)[0]


def _bias_add_kernels(value, bias, x, b):
    backend = backends.current()
    c = b.shape[0]
    eye = _device.like(x if _device.is_device_array(x) else b, np.eye(c, dtype=x.dtype))
    shape = _shape(x)
    y2, ctx = backend.dense_forward(x.reshape(-1, c), eye, b)

    def backward(dys, needs):
        dx, _, db = backend.dense_backward(_kernel_grad(dys[0], y2).reshape(-1, c), ctx)
        return (_match(dx.reshape(shape), value) if needs[0] else None), \
            (_match(db, bias) if needs[1] else None)
    return record("bias_add", (value, bias), [y2.reshape(shape)], backward)[0]


# --------------------------------------------------------------------- activations


def relu(features, name=None):
    """``tf.nn.relu`` (the backend's relu kernels)."""
    return ops.relu(features)


def relu6(features, name=None):
    """``tf.nn.relu6``: ``min(max(x, 0), 6)``."""
    return ops.relu6(features)


def elu(features, name=None):
    """``tf.nn.elu`` (alpha 1)."""
    return ops.elu(features)


def leaky_relu(features, alpha=0.2, name=None):
    """``tf.nn.leaky_relu``: ``x`` for ``x > 0``, else ``alpha * x``."""
    return ops.leaky_relu(features, negative_slope=alpha)


def silu(features, beta=1.0, name=None):
    """``tf.nn.silu`` (swish) with ``beta=1``."""
    if beta != 1.0:
        raise NotImplementedError(f"nn.silu: beta={beta!r} is not implemented; only 1.0")
    return ops.silu(features)


def selu(features, name=None):
    """``tf.nn.selu``: ``scale * elu(x, alpha)`` with the SELU constants."""
    return ops.selu(features)


def gelu(features, approximate=False, name=None):
    """``tf.nn.gelu``: the exact erf form by default (TensorFlow's default; keras.ops's
    is ``approximate=True``)."""
    return ops.gelu(features, approximate=approximate)


def softsign(features, name=None):
    """``tf.nn.softsign``: ``x / (1 + |x|)``."""
    return ops.softsign(features)


def softplus(features, name=None):
    """``tf.nn.softplus``: ``log(1 + exp(x))``."""
    return ops.softplus(features)


def sigmoid(x, name=None):
    """``tf.nn.sigmoid`` (the backend's sigmoid kernels)."""
    return ops.sigmoid(x)


def tanh(x, name=None):
    """``tf.nn.tanh`` (the backend's tanh kernels)."""
    return ops.tanh(x)


def softmax(logits, axis=None, name=None):
    """``tf.nn.softmax`` along ``axis`` (the last by default; the backend's kernels)."""
    return ops.softmax(logits, axis=-1 if axis is None else axis)


def log_softmax(logits, axis=None, name=None):
    """``tf.nn.log_softmax`` along ``axis`` (the last by default)."""
    return ops.log_softmax(logits, axis=-1 if axis is None else axis)


# ------------------------------------------------------------------------- pooling


def _pool(kind, input, ksize, strides, padding, data_format, op):
    _check_data_format(data_format, op)
    x = _kernel_array(input, op, "input")
    if len(x.shape) != 4:
        raise ValueError(f"nn.{op}: input must have rank 4 (N, H, W, C), got shape "
                         f"{_shape(x)} (only 2-D pooling is implemented)")
    pool = _window_arg(ksize, "ksize", op)
    stride = _window_arg(strides, "strides", op)
    pad = _padding_arg(padding, _shape(x)[1:3], pool, stride, op, "ksize",
                       explicit=(kind == "max"))
    backend = backends.current()
    forward = backend.maxpool2d_forward if kind == "max" else backend.avgpool2d_forward
    backward_kernel = backend.maxpool2d_backward if kind == "max" else \
        backend.avgpool2d_backward
    y, ctx = forward(x, pool, stride, pad)

    def backward(dys, needs):
        return (backward_kernel(_kernel_grad(dys[0], y), ctx),)
    return record(op, (input,), [y], backward)[0]


def max_pool2d(input, ksize, strides, padding, data_format="NHWC", name=None):
    """``tf.nn.max_pool2d``: the max of each window (padding never wins; the first max in
    row-major window order takes the gradient), on the backend's max-pool kernels."""
    return _pool("max", input, ksize, strides, padding, data_format, "max_pool2d")


def max_pool(input, ksize, strides, padding, data_format=None, name=None):
    """``tf.nn.max_pool`` for 4-D (NHWC) inputs: :func:`max_pool2d`."""
    return _pool("max", input, ksize, strides, padding, data_format, "max_pool")


def avg_pool2d(input, ksize, strides, padding, data_format="NHWC", name=None):
    """``tf.nn.avg_pool2d``: the mean of each window over its real (unpadded) elements,
    as TensorFlow's 'SAME' does, on the backend's average-pool kernels."""
    return _pool("avg", input, ksize, strides, padding, data_format, "avg_pool2d")


def avg_pool(input, ksize, strides, padding, data_format=None, name=None):
    """``tf.nn.avg_pool`` for 4-D (NHWC) inputs: :func:`avg_pool2d`."""
    return _pool("avg", input, ksize, strides, padding, data_format, "avg_pool")


# ------------------------------------------------------------------------- dropout


def dropout(x, rate, noise_shape=None, seed=None, name=None):
    """``tf.nn.dropout``: zeroes each element with probability ``rate`` and scales the
    others by ``1 / (1 - rate)`` (inverted dropout: the expected value is kept).

    ``noise_shape``: the mask's shape (None entries take the input's), broadcast over the
    input. Masks come from ``seed`` when given, else from the package generator
    (``fastcnn.utils.set_random_seed``); they are drawn on the host, and copied once to the
    device for a device array."""
    if (not isinstance(rate, numbers.Real) or isinstance(rate, bool)
            or not 0.0 <= float(rate) < 1.0):
        raise ValueError(f"nn.dropout: rate must be a float in [0, 1), got {rate!r}")
    v = _kernel_array(x, "dropout")
    shape = _shape(v)
    if noise_shape is None:
        mask_shape = shape
    else:
        ns = tuple(noise_shape)
        if len(ns) != len(shape) or any(
                n is not None and n != 1 and n != d for n, d in zip(ns, shape)):
            raise ValueError(f"nn.dropout: noise_shape {ns} does not broadcast to the input "
                             f"shape {shape}; each entry must be None, 1 or the input's size")
        mask_shape = tuple(d if n is None else int(n) for n, d in zip(ns, shape))
    if float(rate) == 0.0:
        return x if isinstance(x, Tensor) else Tensor(v)
    rng = utils.make_rng(seed) if seed is not None else utils.get_rng()
    keep = rng.random(mask_shape, dtype=v.dtype) >= rate
    mask = keep.astype(v.dtype)
    mask *= 1.0 / (1.0 - float(rate))
    mask = np.ascontiguousarray(np.broadcast_to(mask, shape))
    if _device.is_device_array(v):
        mask = _device.like(v, mask)
    out = _device.multiply(v, mask)

    def backward(dys, needs):
        return (_device.multiply(_kernel_grad(dys[0], out), mask),)
    return record("dropout", (x,), [out], backward)[0]


# -------------------------------------------------------------------------- losses


def _rows_scale(d, g, count, shape2d):
    """``d * count * g`` per row/element: the per-example gradient from a kernel's
    gradient of the MEAN (``count`` values averaged), ``g`` the upstream gradient (a host
    array, one value per row of ``shape2d`` or per element)."""
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    scale = g * count
    if scale.size and np.all(scale == scale[0]):
        s = float(np.asarray(scale[0], dtype=np.dtype(d.dtype)))
        if s == 1.0:
            return d
        if _device.is_device_array(d):
            return _device.add_scaled(d, d, s - 1.0)
        return d * d.dtype.type(s)
    per_element = scale.size == shape2d[0] * shape2d[1]
    full = np.ascontiguousarray(
        scale.reshape(shape2d) if per_element
        else np.broadcast_to(scale.reshape(-1, 1), shape2d), dtype=d.dtype)
    if _device.is_device_array(d):
        return _device.multiply(d, _device.like(d, full))
    return d * full


def _host_logits(z, op):
    """The logits on the host, for the per-example loss VALUES only (see the module doc)."""
    return _device.host_copy(z) if _device.is_device_array(z) else z


def softmax_cross_entropy_with_logits(labels, logits, axis=-1, name=None):
    """``tf.nn.softmax_cross_entropy_with_logits``: per example ``-sum(labels *
    log_softmax(logits))`` along ``axis`` (shape of ``logits`` without ``axis``); labels
    are probability rows. Gradient for the logits from the backend's
    ``softmax_cross_entropy`` kernel; the labels get ``-log_softmax * g`` (host)."""
    z = _kernel_array(logits, "softmax_cross_entropy_with_logits", "logits")
    t = value_of(labels)
    t = t if _device.is_device_array(t) else np.ascontiguousarray(
        np.asarray(t), dtype=np.dtype(z.dtype))
    if _shape(t) != _shape(z):
        raise ValueError(f"nn.softmax_cross_entropy_with_logits: labels and logits must have "
                         f"the same shape, got labels.shape={_shape(t)}, "
                         f"logits.shape={_shape(z)}")
    ndim = len(z.shape)
    if ndim == 0:
        raise ValueError("nn.softmax_cross_entropy_with_logits: logits must have rank >= 1, "
                         "got a scalar")
    ax = int(axis) % ndim
    if ax != ndim - 1:
        _refuse_device("softmax_cross_entropy_with_logits", (z, t))
        z = np.ascontiguousarray(np.moveaxis(z, ax, -1))
        t = np.ascontiguousarray(np.moveaxis(t, ax, -1))
    moved_shape = _shape(z)
    k = moved_shape[-1]
    z2, t2 = z.reshape(-1, k), t.reshape(-1, k)
    n = z2.shape[0]
    backend = backends.current()
    _, d = backend.softmax_cross_entropy(z2, t2)
    log_s = ops._log_softmax_np(_host_logits(z2, "softmax_cross_entropy_with_logits"), -1)
    t_host = _host_logits(t2, "")
    out = -np.sum(t_host * log_s, axis=-1).reshape(moved_shape[:-1]).astype(log_s.dtype)

    def back(g2d):
        return g2d.reshape(moved_shape) if ax == ndim - 1 else \
            np.moveaxis(g2d.reshape(moved_shape), -1, ax)

    def backward(dys, needs):
        g = np.asarray(dys[0]).reshape(-1)
        dl = dz = None
        if needs[0]:
            if _device.is_device_array(value_of(labels)):
                raise NotImplementedError(
                    "nn.softmax_cross_entropy_with_logits: the gradient for device labels "
                    "is not implemented (labels are usually constants)")
            dl = back(-log_s * g[:, None])
        if needs[1]:
            dz = back(_rows_scale(d, g, n, (n, k)))
        return dl, dz
    return record("softmax_cross_entropy_with_logits", (labels, logits), [out], backward)[0]


def sparse_softmax_cross_entropy_with_logits(labels, logits, name=None):
    """``tf.nn.sparse_softmax_cross_entropy_with_logits``: per example
    ``-log_softmax(logits)[label]``; ``labels`` are integers in ``[0, K)`` shaped like the
    logits without the last axis. Gradient from the backend's
    ``sparse_softmax_cross_entropy`` kernel; the labels have none."""
    op = "sparse_softmax_cross_entropy_with_logits"
    z = _kernel_array(logits, op, "logits")
    ndim = len(z.shape)
    if ndim == 0:
        raise ValueError(f"nn.{op}: logits must have rank >= 1, got a scalar")
    lv = value_of(labels)
    if _device.is_device_array(lv):
        raise NotImplementedError(f"nn.{op}: labels must be a host (NumPy) array")
    lab = np.asarray(lv)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"nn.{op}: labels must be integers (class indices), got dtype "
                        f"{lab.dtype}")
    if lab.shape != _shape(z)[:-1]:
        raise ValueError(f"nn.{op}: labels must have the shape of logits without the last "
                         f"axis, {_shape(z)[:-1]}, got labels.shape={lab.shape}")
    k = z.shape[ndim - 1]
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        bad = lab[(lab < 0) | (lab >= k)].reshape(-1)[0]
        raise ValueError(f"nn.{op}: labels must lie in [0, {k}) for {k} classes, got label "
                         f"{bad}")
    z2 = z.reshape(-1, k)
    l1 = np.ascontiguousarray(lab.reshape(-1), dtype=np.intp)
    n = z2.shape[0]
    backend = backends.current()
    _, d = backend.sparse_softmax_cross_entropy(z2, l1)
    log_s = ops._log_softmax_np(_host_logits(z2, op), -1)
    out = (-log_s[np.arange(n), l1]).reshape(lab.shape).astype(log_s.dtype)
    shape = _shape(z)

    def backward(dys, needs):
        return None, _rows_scale(d, dys[0], n, (n, k)).reshape(shape)
    return record(op, (labels, logits), [out], backward)[0]


def sigmoid_cross_entropy_with_logits(labels=None, logits=None, name=None):
    """``tf.nn.sigmoid_cross_entropy_with_logits``: element-wise ``max(x, 0) - x * z +
    log(1 + exp(-|x|))`` (stable for any logit). Gradient for the logits from the
    backend's ``sigmoid_cross_entropy`` kernel; the labels get ``-x * g`` (host)."""
    op = "sigmoid_cross_entropy_with_logits"
    if labels is None or logits is None:
        raise ValueError(f"nn.{op}: both labels and logits must be given")
    x = _kernel_array(logits, op, "logits")
    t = value_of(labels)
    t = t if _device.is_device_array(t) else np.ascontiguousarray(
        np.asarray(t), dtype=np.dtype(x.dtype))
    if _shape(t) != _shape(x):
        raise ValueError(f"nn.{op}: labels and logits must have the same shape, got "
                         f"labels.shape={_shape(t)}, logits.shape={_shape(x)}")
    shape = _shape(x)
    size = int(np.prod(shape, dtype=np.int64))
    shape2d = (1, size) if len(shape) < 2 else (size // shape[-1] if shape[-1] else 0,
                                                shape[-1])
    backend = backends.current()
    _, d = backend.sigmoid_cross_entropy(x.reshape(shape2d), t.reshape(shape2d))
    xh, th = _host_logits(x, op), _host_logits(t, op)
    out = (np.maximum(xh, 0) - xh * th + np.log1p(np.exp(-np.abs(xh)))).astype(xh.dtype)

    def backward(dys, needs):
        g = dys[0]
        dl = dz = None
        if needs[0]:
            if _device.is_device_array(value_of(labels)):
                raise NotImplementedError(f"nn.{op}: the gradient for device labels is not "
                                          f"implemented (labels are usually constants)")
            dl = -xh * np.asarray(g)
        if needs[1]:
            dz = _rows_scale(d, np.asarray(g).reshape(-1), size, shape2d).reshape(shape)
        return dl, dz
    return record(op, (labels, logits), [np.asarray(out)], backward)[0]


def l2_loss(t, name=None):
    """``tf.nn.l2_loss``: ``sum(t ** 2) / 2`` (a scalar); gradient ``t * g``. On a device
    array the sum is reduced on the device and the gradient stays there."""
    v = _kernel_array(t, "l2_loss", "t")
    if _device.is_device_array(v):
        out = np.asarray(_device.sum_squares(v) / 2, dtype=v.dtype)

        def backward(dys, needs):
            return (_device.add_scaled(v, v, float(np.asarray(dys[0])) - 1.0),)
    else:
        out = np.asarray(np.vdot(v, v) / 2, dtype=v.dtype)

        def backward(dys, needs):
            return (v * np.asarray(dys[0], dtype=v.dtype),)
    return record("l2_loss", (t,), [out], backward)[0]


def moments(x, axes, shift=None, keepdims=False, name=None):
    """``tf.nn.moments``: ``(mean, variance)`` over ``axes`` (host arrays)."""
    axes = tuple(axes) if not np.isscalar(axes) else (axes,)
    return ops.mean(x, axis=axes, keepdims=keepdims), ops.var(x, axis=axes, keepdims=keepdims)


def _register_activation_functions():
    """``Dense(128, activation=fastcnn.nn.relu)`` stores the name 'relu' (a saved model
    holds names, not functions)."""
    from . import activations
    names = {"gelu": 'gelu'}
    for name in ("relu", "relu6", "sigmoid", "tanh", "softmax", "log_softmax", "elu", "selu",
                 "gelu", "softplus", "softsign", "silu", "swish", "leaky_relu",
                 "hard_sigmoid", "hard_silu", "hard_swish", "exponential"):
        function = globals().get(name)
        if callable(function):
            activations.register_function(function, names.get(name, name))


_register_activation_functions()
