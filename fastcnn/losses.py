"""Losses with Keras 3's names, arguments, defaults and numbers.

Two ways to use a loss:

* ``model.compile(loss=...)``: a name (``'mae'``, ``'huber'``, ``'kld'``, ...), a class
  (``Huber``), an instance (``Huber(delta=2.0)``) or a callable ``fn(y_true, y_pred)``
  written with :mod:`fastcnn.ops` operations (see :class:`LossFunctionWrapper`). The model
  calls :meth:`Loss.prepare_targets` once per ``fit`` and :meth:`Loss.compute` per batch:
  the reduced loss and its exact gradient with respect to the model output.
* Keras-style: ``loss_obj(y_true, y_pred, sample_weight=None)`` returns a 0-d
  :class:`fastcnn.Tensor` recorded on any open :class:`fastcnn.GradientTape`; the module
  functions (``fastcnn.losses.huber(y_true, y_pred)``) return, as Keras 3's do, the
  per-sample losses (the mean or sum over the last axis: shape ``(N,)`` for an (N, K)
  output), also as a differentiable Tensor.

Reduction (Keras's default ``'sum_over_batch_size'``): ``sum(w_i * l_i) / n`` where ``l``
are the per-sample losses (``n`` of them: N for an (N, K) output, N*H*W for an (N, H, W, K)
output) and ``w`` the sample weights (1 when not given); also ``'sum'``,
``'mean_with_sample_weight'`` (divides by the sum of the weights) and ``None``/``'none'``
(per-sample losses from a call; inside ``fit`` they are averaged).

Keras semantics kept here:

* ``from_logits=True``: the model output is taken as logits and the backend's fused,
  numerically stable op computes loss and gradient (``softmax_cross_entropy``,
  ``sparse_softmax_cross_entropy``, ``sigmoid_cross_entropy``).
* ``from_logits=False`` with a last layer whose activation is the matching softmax/sigmoid:
  the model hands the loss the PRE-activation logits (:attr:`Loss.fused_activation`), as
  tf.keras does internally, so the gradient is exactly ``(softmax - onehot) / N``.
* otherwise the output is taken as probabilities and clipped to ``[1e-7, 1 - 1e-7]``
  (Keras's epsilon) before the log; the clip passes no gradient where it is active.
  On a device backend the host forms run on a host copy of the model output, and the
  gradient goes back to the device: a few NumPy passes over an (N, K) array.
* label smoothing (``CategoricalCrossentropy``, ``BinaryCrossentropy`` and the two focal
  losses; Keras's ``SparseCategoricalCrossentropy`` has none): ``t (1 - s) + s / K``
  (categorical) or ``t (1 - s) + s / 2`` (binary), applied per batch, so the prepared
  targets the metrics see stay the user's.
* hinge losses convert targets in {0, 1} to {-1, 1} when a batch holds only 0s and 1s.

Targets are validated and converted once per ``fit``/``evaluate`` (:meth:`Loss.prepare_targets`),
never per batch.
"""
from __future__ import annotations

import re

import numpy as np

from . import _device, backends

EPSILON = 1e-7
_REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None, "none")


def _shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def _as_numeric(y, argument):
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"{argument} must be a numeric array, got dtype {y.dtype}")
    return y


def _check_finite(y, argument, loss_name):
    if np.issubdtype(y.dtype, np.floating) and y.size and not np.isfinite(y).all():
        raise ValueError(f"{argument} contains NaN or inf; {loss_name} needs finite targets")


def _check_range(y, low, high, argument, loss_name):
    if y.size == 0:
        return
    _check_finite(y, argument, loss_name)
    lo, hi = y.min(), y.max()
    if lo < low or hi > high:
        raise ValueError(
            f"{argument} values must lie in [{low}, {high}] for {loss_name}, "
            f"got values in [{lo}, {hi}]"
        )


def _same_shape_targets(y, output_shape, dtype, argument, loss_name):
    """Targets shaped like the output; (N,) is accepted for an (N, 1) output (Keras)."""
    y = _as_numeric(y, argument)
    if y.ndim == len(output_shape) - 1 and output_shape[-1] == 1:
        y = y.reshape(y.shape + (1,))
    if y.shape[1:] != tuple(output_shape[1:]):
        raise ValueError(
            f"{argument} has shape {y.shape}, but {loss_name} needs targets shaped like the "
            f"model output {_shape(output_shape)}"
        )
    return np.ascontiguousarray(y, dtype=dtype)


def _check_probability(value, argument):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{argument} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_axis(axis):
    if axis not in (-1,):
        raise ValueError(f"axis must be -1 (the last axis, where fastcnn's outputs keep their "
                         f"classes), got {axis!r}")
    return axis


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    # stable on both sides, in the dtype of z
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def _scale(d, factor):
    """``factor * d`` for a host or device ``d`` (``factor`` a 0-d array or number)."""
    factor = float(np.asarray(_device.to_host(factor)))
    if _device.is_device_array(d):
        return _device.add_scaled(_device.zeros_like(d), d, factor)
    return d * d.dtype.type(factor)


class Loss:
    """Base class (Keras's ``keras.losses.Loss(name=None, reduction=..., dtype=None)``).

    A subclass defines either :meth:`_values` (host per-sample losses and their backward,
    as the built-in losses do) or, as in Keras, ``call(y_true, y_pred)`` written with
    :mod:`fastcnn.ops` operations (its gradient is taken with :class:`fastcnn.GradientTape`).
    """

    #: the output activation whose fused op this loss can absorb ('softmax'/'sigmoid').
    fused_activation = None
    from_logits = False

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
        if name is None:
            name = _snake(type(self).__name__)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self.reduction = reduction
        self.dtype = None if dtype is None else np.dtype(dtype).name

    # ------------------------------------------------------------------ the model's path
    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        """Targets validated and converted for ``compute`` (once per fit/evaluate)."""
        y = _as_numeric(y, argument)
        if len(output_shape) and y.ndim == len(output_shape) - 1 and output_shape[-1] == 1:
            y = y.reshape(y.shape + (1,))
        _check_finite(y, argument, self.name)
        return np.ascontiguousarray(y, dtype=dtype)

    def _values(self, out, y, logits):
        """``(values, backward)`` on host arrays: the per-sample losses and
        ``backward(g) -> d_out`` for an upstream gradient ``g`` shaped like ``values``."""
        if type(self).call is Loss.call:
            raise NotImplementedError(f"{type(self).__name__} defines neither _values nor call")
        return _tape_values(self.call, self.name, out, y)

    def call(self, y_true, y_pred):
        """Keras's per-sample loss, for subclasses written with fastcnn.ops operations."""
        raise NotImplementedError

    def compute(self, backend, out, y, logits, sample_weight=None):
        """``(loss, d_out)``: the reduced loss and its gradient with respect to ``out``,
        in ``out``'s dtype.

        ``logits`` says whether ``out`` holds logits (from_logits or fused activation);
        ``sample_weight``: None or an (N,) array of per-sample weights.
        """
        if _device.is_device_array(out):
            w = None if sample_weight is None else _device.to_host(sample_weight)
            return _device.on_host(
                lambda be, o, t: self.compute(be, o, t, logits, sample_weight=w),
                backend, out, y)
        values, backward = self._values(out, y, logits)
        return self._reduce(values, backward, sample_weight, out.dtype)

    def _reduce(self, values, backward, sample_weight, dtype):
        values = np.asarray(values)
        dtype = np.dtype(dtype)
        w = _weights(sample_weight, values, dtype)
        weighted = values if w is None else values * w
        if self.reduction == "sum":
            divisor = 1.0
        elif self.reduction == "mean_with_sample_weight" and w is not None:
            divisor = float(np.broadcast_to(w, weighted.shape).sum())
        else:
            divisor = float(weighted.size)
        if divisor == 0:   # Keras's divide_no_nan
            return np.asarray(0.0, dtype=dtype), backward(np.zeros(values.shape, dtype=dtype))
        scale = dtype.type(1.0 / divisor)
        if w is None:
            g = np.full(values.shape, scale, dtype=dtype)
        elif values.ndim == 0:   # a scalar loss times (N,) weights: Keras broadcasts
            g = np.asarray(w.sum() * scale, dtype=dtype)
        else:
            g = np.ascontiguousarray(np.broadcast_to(w * scale, values.shape), dtype=dtype)
        d = backward(g)
        return np.asarray(weighted.sum() * scale, dtype=dtype), \
            (d if d.dtype == dtype else d.astype(dtype))

    # ------------------------------------------------------------------ Keras's call
    def _inputs(self, y_true, y_pred):
        from .autodiff import value_of
        out = value_of(y_pred)
        if not _device.is_device_array(out):
            out = np.asarray(out)
            if self.dtype is not None:
                out = out.astype(self.dtype)
            elif not np.issubdtype(out.dtype, np.floating):
                from . import config
                out = out.astype(config.floatx())
            out = np.ascontiguousarray(out)
        if len(out.shape) == 0:
            raise ValueError("y_pred must have a batch axis, got a scalar")
        shape = (None,) + tuple(out.shape[1:])
        y = self.prepare_targets(_device.to_host(value_of(y_true)), shape, out.dtype, "y_true")
        if len(y) != out.shape[0]:
            raise ValueError(f"y_true has {len(y)} samples but y_pred has {out.shape[0]}")
        return out, y

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Keras-style call: the reduced loss of ``y_pred`` (probabilities unless
        ``from_logits``) against ``y_true``, a 0-d :class:`fastcnn.Tensor` recorded on any
        open GradientTape (``float(...)`` gives the number). With ``reduction=None`` or
        ``'none'``: the per-sample losses (weighted), as a Tensor."""
        from .autodiff import record, value_of
        logits = self.from_logits
        keras_logits = getattr(y_pred, "_keras_logits", None)
        if (not logits and keras_logits is not None and self.reduction not in (None, "none")
                and self.fused_activation == y_pred._keras_activation):
            # Keras: a softmax/sigmoid output remembers its logits, and the matching
            # cross-entropy takes them (the fused, exact gradient), as fit does.
            y_pred, logits = keras_logits, True
        out, y = self._inputs(y_true, y_pred)
        w = None if sample_weight is None else np.asarray(value_of(sample_weight))
        if self.reduction in (None, "none"):
            values, backward = self._host_values(out, y)
            values = np.asarray(values)
            ww = _weights(w, values, values.dtype)
            if ww is not None:
                values = values * ww
                inner = backward
                backward = lambda g: inner(g * ww)  # noqa: E731
            return record(self.name, (y_true, y_pred), [values],
                          lambda dys, needs: (None, _back_like(backward, dys[0], out)))[0]
        loss, d = self.compute(backends.current(), out, y, logits, sample_weight=w)
        return record(self.name, (y_true, y_pred), [np.asarray(loss, dtype=out.dtype)],
                      lambda dys, needs: (None, _scale(d, dys[0])))[0]

    def _host_values(self, out, y):
        host = _device.to_host(out)
        values, backward = self._values(host, y, self.from_logits)
        return values, backward

    def get_config(self):
        config = {"name": self.name, "reduction": self.reduction}
        if self.dtype is not None:
            config["dtype"] = self.dtype
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = {k: v for k, v in self.get_config().items() if k not in ("name", "reduction")}
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"


def _back_like(backward, g, out):
    g = np.asarray(_device.to_host(g))
    return _device.like(out, backward(g))


def _snake(name):
    """Keras's to_snake_case: 'KLDivergence' -> 'kl_divergence', 'AUC' -> 'auc'."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weights(sample_weight, values, dtype):
    """Sample weights broadcastable against the per-sample ``values`` (or None)."""
    if sample_weight is None:
        return None
    w = np.asarray(_device.to_host(sample_weight))
    if not (np.issubdtype(w.dtype, np.number) or w.dtype == np.bool_):
        raise ValueError(f"sample_weight must be numbers, got dtype {w.dtype}")
    w = w.astype(dtype, copy=False)
    if values.ndim == 0:
        return w if w.ndim == 0 else w.reshape(-1)
    n = values.shape[0]
    if w.ndim == 0:
        return w
    # Keras's squeeze_or_expand_to_same_rank, then broadcasting
    if w.ndim == values.ndim + 1 and w.shape[-1] == 1:
        w = w.reshape(w.shape[:-1])
    if w.shape[0] != n:
        raise ValueError(f"sample_weight has {w.shape[0]} entries (shape {w.shape}), but the "
                         f"batch has {n} samples")
    if w.ndim < values.ndim:
        w = w.reshape(w.shape + (1,) * (values.ndim - w.ndim))
    try:
        np.broadcast_shapes(w.shape, values.shape)
    except ValueError:
        raise ValueError(f"sample_weight of shape {w.shape} does not broadcast to the "
                         f"per-sample losses of shape {values.shape}") from None
    return w


# ------------------------------------------------------------------ callables, via the tape
def _tape_values(fn, name, out, y):
    """Per-sample values of ``fn(y_true, y_pred)`` and their backward through the tape."""
    from .autodiff import GradientTape, Tensor
    y_pred = Tensor(np.array(out, copy=True))
    y_true = Tensor(y)
    with GradientTape(persistent=True) as tape:
        tape.watch(y_pred)
        v = fn(y_true, y_pred)
    if not isinstance(v, Tensor):
        raise ValueError(
            f"the loss {name!r} returned {type(v).__name__}, not a fastcnn Tensor: its "
            f"gradient cannot be formed. Write it with fastcnn.ops operations or Tensor "
            f"arithmetic (NumPy functions leave the tape)")
    values = np.asarray(v.numpy())

    def backward(g):
        d = tape.gradient(v, y_pred, output_gradients=np.asarray(g, dtype=v.dtype))
        if d is None:
            raise ValueError(
                f"the loss {name!r} does not depend on y_pred through fastcnn operations: its "
                f"gradient cannot be formed. Write it with fastcnn.ops operations or Tensor "
                f"arithmetic (NumPy functions leave the tape)")
        return np.asarray(d, dtype=out.dtype).reshape(out.shape)
    return values, backward


class LossFunctionWrapper(Loss):
    """A loss from a callable ``fn(y_true, y_pred)`` (Keras's ``LossFunctionWrapper``).

    ``fn`` receives Tensors (y_true converted to the output's float dtype) and must build its
    result with :mod:`fastcnn.ops` operations or Tensor arithmetic: its gradient is taken
    with :class:`fastcnn.GradientTape`. It may return per-sample losses (as Keras's loss
    functions do) or a scalar; the reduction is then Keras's.
    """

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, **kwargs):
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {fn!r}")
        self.fn = fn
        self._fn_kwargs = kwargs
        super().__init__(name or getattr(fn, "__name__", "loss"), reduction, dtype)

    def _values(self, out, y, logits):
        kwargs = self._fn_kwargs
        fn = self.fn if not kwargs else (lambda t, p: self.fn(t, p, **kwargs))
        return _tape_values(fn, self.name, out, y)

    def get_config(self):
        return {**super().get_config(), "fn": getattr(self.fn, "__name__", repr(self.fn))}

    def __repr__(self):
        return f"LossFunctionWrapper({getattr(self.fn, '__name__', self.fn)!r})"


# ------------------------------------------------------------------------- cross-entropies
class CategoricalCrossentropy(Loss):
    """``-sum(t * log p)`` over the last axis; targets one-hot (or probability) rows."""
    fused_activation = "softmax"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(name, reduction, dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_probability(label_smoothing, "label_smoothing")
        self.axis = _check_axis(axis)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _as_numeric(y, argument)
        if y.ndim == len(output_shape) - 1 or (
                y.ndim == len(output_shape) and y.shape[-1] == 1 and output_shape[-1] != 1):
            raise ValueError(
                f"{argument} has shape {y.shape}: integer class labels, but "
                f"{self.name} needs one-hot targets of shape "
                f"{_shape(output_shape)}; use loss='sparse_categorical_crossentropy' "
                f"for integer labels (or one-hot encode {argument})"
            )
        if y.shape[1:] != tuple(output_shape[1:]):
            raise ValueError(
                f"{argument} has shape {y.shape}, but {self.name} needs one-hot "
                f"targets shaped like the model output {_shape(output_shape)}"
            )
        _check_range(y, 0, 1, argument, self.name)
        return np.ascontiguousarray(y, dtype=dtype)

    def _smoothed(self, y, k):
        s = self.label_smoothing
        return y * (1.0 - s) + s / k if s else y

    def compute(self, backend, out, y, logits, sample_weight=None):
        k = out.shape[out.ndim - 1]  # not shape[-1]: a simulated device shape refuses it
        if logits and sample_weight is None and self.reduction in (
                "sum_over_batch_size", "mean", "mean_with_sample_weight"):
            loss, d = backend.softmax_cross_entropy(
                out.reshape(-1, k), self._smoothed(y, k).reshape(-1, k))
            return loss, d.reshape(out.shape)
        return super().compute(backend, out, y, logits, sample_weight=sample_weight)

    def _values(self, out, y, logits):
        k = out.shape[-1]
        y = self._smoothed(y, k)
        if logits:
            m = out.max(axis=-1, keepdims=True)
            e = np.exp(out - m)
            s = e.sum(axis=-1, keepdims=True)
            lse = m + np.log(s)
            p = e / s
            ty = y.sum(axis=-1, keepdims=True)
            values = (ty * lse - (y * out).sum(axis=-1, keepdims=True))[..., 0]
            return values, lambda g: g[..., None] * (p * ty - y)
        # Keras: renormalise rows, clip, then -sum(t log p).
        s = out.sum(axis=-1, keepdims=True)
        q = out / s
        c = np.clip(q, EPSILON, 1.0 - EPSILON)
        values = -(y * np.log(c)).sum(axis=-1)

        def backward(g):
            gq = -y / c * g[..., None]
            gq *= (q >= EPSILON) & (q <= 1.0 - EPSILON)
            # through q = p / sum(p): dL/dp_j = (g_j - sum_k g_k q_k) / s
            return (gq - (gq * q).sum(axis=-1, keepdims=True)) / s
        return values, backward

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


class SparseCategoricalCrossentropy(Loss):
    """Categorical cross-entropy with integer class labels ``0 .. K-1``.

    ``ignore_class``: labels equal to it contribute zero loss and no gradient, and are left
    out of the ``'sum_over_batch_size'`` count (Keras's mask).
    """
    fused_activation = "softmax"

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 axis=-1, name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(name, reduction, dtype)
        self.from_logits = bool(from_logits)
        if ignore_class is not None and (isinstance(ignore_class, bool) or not isinstance(
                ignore_class, (int, np.integer))):
            raise ValueError(f"ignore_class must be an int or None, got {ignore_class!r}")
        self.ignore_class = None if ignore_class is None else int(ignore_class)
        self.axis = _check_axis(axis)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        k = output_shape[-1]
        if type(y) is np.ndarray and y.ndim == 1 and len(output_shape) == 2 \
                and y.dtype.kind in "iu" and y.size and self.ignore_class is None:
            # integer labels of a (N, K) output (every batch of a tutorial): the range only
            if y.min() < 0 or y.max() >= k:
                raise ValueError(
                    f"{argument} labels must be in [0, {k - 1}] (the model has {k} outputs), "
                    f"got labels in [{y.min()}, {y.max()}]")
            return y if y.dtype == np.intp and y.flags.c_contiguous else \
                np.ascontiguousarray(y, dtype=np.intp)
        y = _as_numeric(y, argument)
        label_shape = tuple(output_shape[1:-1])
        if y.ndim == len(output_shape) and y.shape[-1] == 1 and k != 1:
            y = y.reshape(y.shape[:-1])  # (N, 1) labels, as Keras accepts
        elif y.ndim == len(output_shape) and y.shape[1:] == tuple(output_shape[1:]):
            raise ValueError(
                f"{argument} has shape {y.shape}: one-hot targets, but "
                f"sparse_categorical_crossentropy needs integer class labels of shape "
                f"(N{', ' if label_shape else ''}{', '.join(map(str, label_shape))}); use "
                f"loss='categorical_crossentropy' for one-hot targets (or pass "
                f"{argument}.argmax(-1))"
            )
        if y.shape[1:] != label_shape:
            raise ValueError(
                f"{argument} has shape {y.shape}, but sparse_categorical_crossentropy needs "
                f"integer labels of shape (N{', ' if label_shape else ''}"
                f"{', '.join(map(str, label_shape))}) for the model output "
                f"{_shape(output_shape)}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
                raise ValueError(f"{argument} contains NaN or inf; labels must be integers")
            if y.size and not (y == np.round(y)).all():
                raise ValueError(
                    f"{argument} must hold integer class labels for "
                    f"sparse_categorical_crossentropy, got non-integer values")
        valid = y if self.ignore_class is None else y[y != self.ignore_class]
        if valid.size and (valid.min() < 0 or valid.max() >= k):
            raise ValueError(
                f"{argument} labels must be in [0, {k - 1}] (the model has {k} outputs), "
                f"got labels in [{valid.min()}, {valid.max()}]"
            )
        return np.ascontiguousarray(y, dtype=np.intp)

    def compute(self, backend, out, y, logits, sample_weight=None):
        k = out.shape[out.ndim - 1]  # not shape[-1]: a simulated device shape refuses it
        if logits and sample_weight is None and self.ignore_class is None and \
                self.reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
            loss, d = backend.sparse_softmax_cross_entropy(out.reshape(-1, k), y.reshape(-1))
            return loss, d.reshape(out.shape)
        if self.ignore_class is not None and not _device.is_device_array(out):
            # Keras: the ignored entries' weights are 0 and the count leaves them out
            mask = (y != self.ignore_class)
            w = mask.astype(out.dtype)
            if sample_weight is not None:
                w = w * _weights(sample_weight, w, out.dtype)
            values, backward = self._values(out, np.where(mask, y, 0), logits)
            values = np.asarray(values) * w
            count = float(mask.sum())
            if self.reduction == "sum":
                count = 1.0
            if count == 0:
                return np.asarray(0.0, dtype=out.dtype), np.zeros_like(out)
            g = (w / out.dtype.type(count)).astype(out.dtype)
            return np.asarray(values.sum() / out.dtype.type(count), dtype=out.dtype), backward(g)
        return super().compute(backend, out, y, logits, sample_weight=sample_weight)

    def _values(self, out, y, logits):
        k = out.shape[-1]
        p = out.reshape(-1, k)
        labels = y.reshape(-1)
        idx = np.arange(p.shape[0])
        if logits:
            m = p.max(axis=-1, keepdims=True)
            e = np.exp(p - m)
            s = e.sum(axis=-1, keepdims=True)
            values = (m[:, 0] + np.log(s[:, 0])) - p[idx, labels]
            soft = e / s

            def backward(g):
                d = soft.copy()
                d[idx, labels] -= 1.0
                return (d * g.reshape(-1, 1)).reshape(out.shape)
            return values.reshape(out.shape[:-1]), backward
        # Keras 3: clip, take the log as logits of a softmax (i.e. renormalise the clipped
        # probabilities): loss = log(sum c) - log(c_label).
        c = np.clip(p, EPSILON, 1.0 - EPSILON)
        sums = c.sum(axis=-1, keepdims=True)
        values = np.log(sums[:, 0]) - np.log(c[idx, labels])

        def backward(g):
            d = np.broadcast_to(1.0 / sums, p.shape).copy()
            d[idx, labels] -= 1.0 / c[idx, labels]
            d *= (p >= EPSILON) & (p <= 1.0 - EPSILON)
            d *= g.reshape(-1, 1)
            return d.reshape(out.shape)
        return values.reshape(out.shape[:-1]), backward

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "ignore_class": self.ignore_class, "axis": self.axis}


def _bce_probability(out, y):
    """Element-wise ``bce`` of probabilities (Keras's clip) and ``d bce / d out``."""
    c = np.clip(out, EPSILON, 1.0 - EPSILON)
    one_minus = 1.0 - c
    bce = -(y * np.log(c) + (1.0 - y) * np.log(one_minus))
    d = (1.0 - y) / one_minus - y / c
    d *= (out >= EPSILON) & (out <= 1.0 - EPSILON)
    return bce, d


class BinaryCrossentropy(Loss):
    """``-(t log p + (1 - t) log(1 - p))``, mean over the last axis."""
    fused_activation = "sigmoid"

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="binary_crossentropy", dtype=None):
        super().__init__(name, reduction, dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_probability(label_smoothing, "label_smoothing")
        self.axis = _check_axis(axis)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _same_shape_targets(y, output_shape, dtype, argument, self.name)
        _check_range(y, 0, 1, argument, self.name)
        return y

    def _smoothed(self, y):
        s = self.label_smoothing
        return y * (1.0 - s) + 0.5 * s if s else y

    def compute(self, backend, out, y, logits, sample_weight=None):
        if logits and sample_weight is None and self.reduction in (
                "sum_over_batch_size", "mean", "mean_with_sample_weight"):
            y = self._smoothed(y)
            if out.ndim == 2:
                return backend.sigmoid_cross_entropy(out, y)
            flat = (out.shape[0], -1)  # the kernels take (N, D); the mean is the same
            loss, d = backend.sigmoid_cross_entropy(out.reshape(flat), y.reshape(flat))
            return loss, d.reshape(out.shape)
        return super().compute(backend, out, y, logits, sample_weight=sample_weight)

    def _values(self, out, y, logits):
        y = self._smoothed(y)
        k = out.shape[-1]
        if logits:
            # max(z, 0) - z t + log(1 + exp(-|z|)), TensorFlow's stable form
            values = (np.maximum(out, 0) - out * y + np.log1p(np.exp(-np.abs(out)))).mean(-1)
            s = _sigmoid(out)
            return values, lambda g: (s - y) * (g[..., None] / out.dtype.type(k))
        bce, d = _bce_probability(out, y)
        return bce.mean(axis=-1), lambda g: d * (g[..., None] / out.dtype.type(k))

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing, "axis": self.axis}


class CategoricalFocalCrossentropy(CategoricalCrossentropy):
    """``sum(alpha (1 - p)^gamma * (-t log p))`` over the last axis (Lin et al.), with
    Keras's renormalisation and clip of ``p``; ``from_logits``: ``p = softmax(z)``."""
    fused_activation = None

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_focal_crossentropy",
                 dtype=None):
        super().__init__(from_logits, label_smoothing, axis, reduction, name, dtype)
        self.alpha = float(alpha)
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or gamma < 0:
            raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def compute(self, backend, out, y, logits, sample_weight=None):
        return Loss.compute(self, backend, out, y, logits, sample_weight=sample_weight)

    def _values(self, out, y, logits):
        k = out.shape[-1]
        y = self._smoothed(y, k)
        p = _softmax(out) if logits else out
        s = p.sum(axis=-1, keepdims=True)
        q = p / s
        c = np.clip(q, EPSILON, 1.0 - EPSILON)
        one_minus = 1.0 - c
        a, gamma = out.dtype.type(self.alpha), self.gamma
        log_c = np.log(c)
        mod = one_minus ** gamma
        values = (a * mod * (-y * log_c)).sum(axis=-1)

        def backward(g):
            dmod = gamma * one_minus ** (gamma - 1.0) if gamma else np.zeros_like(c)
            gq = a * (dmod * y * log_c - mod * y / c) * g[..., None]
            gq *= (q >= EPSILON) & (q <= 1.0 - EPSILON)
            gp = (gq - (gq * q).sum(axis=-1, keepdims=True)) / s
            if logits:
                return p * (gp - (gp * p).sum(axis=-1, keepdims=True))
            return gp
        return values, backward

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


class BinaryFocalCrossentropy(BinaryCrossentropy):
    """``(1 - p_t)^gamma * bce``, mean over the last axis; ``apply_class_balancing``
    weighs it by ``alpha`` for positives and ``1 - alpha`` for negatives (Keras)."""
    fused_activation = None

    def __init__(self, apply_class_balancing=False, alpha=0.25, gamma=2.0, from_logits=False,
                 label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name="binary_focal_crossentropy", dtype=None):
        super().__init__(from_logits, label_smoothing, axis, reduction, name, dtype)
        self.apply_class_balancing = bool(apply_class_balancing)
        self.alpha = float(alpha)
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or gamma < 0:
            raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def compute(self, backend, out, y, logits, sample_weight=None):
        return Loss.compute(self, backend, out, y, logits, sample_weight=sample_weight)

    def _values(self, out, y, logits):
        y = self._smoothed(y)
        k = out.shape[-1]
        p = _sigmoid(out) if logits else out
        bce, dbce = _bce_probability(p, y)
        p_t = y * p + (1.0 - y) * (1.0 - p)
        base = 1.0 - p_t
        gamma = self.gamma
        focal = base ** gamma
        weight = 1.0
        if self.apply_class_balancing:
            a = out.dtype.type(self.alpha)
            weight = y * a + (1.0 - y) * (1.0 - a)
        values = (weight * focal * bce).mean(axis=-1)

        def backward(g):
            if gamma:
                with np.errstate(divide="ignore", invalid="ignore"):
                    dfocal = np.where(base > 0, gamma * base ** (gamma - 1.0), 0.0)
            else:
                dfocal = 0.0
            # d p_t / d p = 2 t - 1
            dp = weight * (-dfocal * (2.0 * y - 1.0) * bce + focal * dbce)
            dp = dp * (g[..., None] / out.dtype.type(k))
            if logits:
                dp = dp * p * (1.0 - p)
            return dp.astype(out.dtype, copy=False)
        return values, backward

    def get_config(self):
        return {**super().get_config(), "apply_class_balancing": self.apply_class_balancing,
                "alpha": self.alpha, "gamma": self.gamma}


# ------------------------------------------------------------------------ regression & co
class _Elementwise(Loss):
    """Losses of the form ``mean(f(p, t))`` over the last axis."""

    def __init__(self, name, reduction="sum_over_batch_size", dtype=None):
        super().__init__(name, reduction, dtype)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _same_shape_targets(y, output_shape, dtype, argument, self.name)
        _check_finite(y, argument, self.name)
        return y

    def _elementwise(self, out, y):
        raise NotImplementedError

    def _values(self, out, y, logits):
        f, df = self._elementwise(out, y)
        k = out.dtype.type(out.shape[-1])
        return f.mean(axis=-1), lambda g: df * (g[..., None] / k)


class MeanSquaredError(_Elementwise):
    """``mean((p - t)**2)`` over the last axis."""

    def __init__(self, reduction="sum_over_batch_size", name="mean_squared_error", dtype=None):
        super().__init__(name, reduction, dtype)

    def compute(self, backend, out, y, logits, sample_weight=None):
        if sample_weight is None and self.reduction in ("sum_over_batch_size", "mean") \
                and not _device.is_device_array(out):
            diff = out - y   # the fast path: one pass, one array
            loss = np.vdot(diff, diff) / diff.size
            diff *= diff.dtype.type(2.0 / diff.size)
            return np.asarray(loss, dtype=out.dtype), diff
        return super().compute(backend, out, y, logits, sample_weight=sample_weight)

    def _elementwise(self, out, y):
        diff = out - y
        return diff * diff, 2.0 * diff


class MeanAbsoluteError(_Elementwise):
    """``mean(|p - t|)`` over the last axis."""

    def __init__(self, reduction="sum_over_batch_size", name="mean_absolute_error", dtype=None):
        super().__init__(name, reduction, dtype)

    def _elementwise(self, out, y):
        diff = out - y
        return np.abs(diff), np.sign(diff)


class Huber(_Elementwise):
    """``0.5 e**2`` where ``|e| <= delta``, else ``delta |e| - 0.5 delta**2``; mean over the
    last axis (``e = p - t``)."""

    def __init__(self, delta=1.0, reduction="sum_over_batch_size", name="huber_loss",
                 dtype=None):
        super().__init__(name, reduction, dtype)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta < 0:
            raise ValueError(f"delta must be a number >= 0, got {delta!r}")
        self.delta = float(delta)

    def _elementwise(self, out, y):
        e = out - y
        a = np.abs(e)
        d = out.dtype.type(self.delta)
        small = a <= d
        f = np.where(small, 0.5 * e * e, d * a - 0.5 * d * d)
        df = np.where(small, e, d * np.sign(e))
        return f, df

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class LogCosh(_Elementwise):
    """``log(cosh(p - t))`` (as ``x + softplus(-2x) - log 2``), mean over the last axis."""

    def __init__(self, reduction="sum_over_batch_size", name="log_cosh", dtype=None):
        super().__init__(name, reduction, dtype)

    def _elementwise(self, out, y):
        x = out - y
        f = x + np.logaddexp(0.0, -2.0 * x).astype(out.dtype, copy=False) - \
            out.dtype.type(np.log(2.0))
        return f, np.tanh(x)


class Poisson(_Elementwise):
    """``mean(p - t log(p + 1e-7))`` over the last axis."""

    def __init__(self, reduction="sum_over_batch_size", name="poisson", dtype=None):
        super().__init__(name, reduction, dtype)

    def _elementwise(self, out, y):
        shifted = out + out.dtype.type(EPSILON)
        return out - y * np.log(shifted), 1.0 - y / shifted


class KLDivergence(Loss):
    """``sum(t log(t / p))`` over the last axis, both clipped to ``[1e-7, 1]``."""

    def __init__(self, reduction="sum_over_batch_size", name="kl_divergence", dtype=None):
        super().__init__(name, reduction, dtype)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _same_shape_targets(y, output_shape, dtype, argument, self.name)
        _check_finite(y, argument, self.name)
        return y

    def _values(self, out, y, logits):
        t = np.clip(y, EPSILON, 1.0)
        c = np.clip(out, EPSILON, 1.0)
        values = (t * np.log(t / c)).sum(axis=-1)

        def backward(g):
            d = -t / c * g[..., None]
            d *= (out >= EPSILON) & (out <= 1.0)
            return d
        return values, backward


def _hinge_targets(y):
    """Keras: targets all in {0, 1} become {-1, 1} (decided per batch)."""
    if y.size and np.all((y == 0) | (y == 1)):
        return 2.0 * y - 1.0
    return y


class Hinge(_Elementwise):
    """``mean(max(1 - t p, 0))`` over the last axis; targets -1/1 (0/1 converted)."""

    def __init__(self, reduction="sum_over_batch_size", name="hinge", dtype=None):
        super().__init__(name, reduction, dtype)

    def _elementwise(self, out, y):
        t = _hinge_targets(y)
        m = 1.0 - t * out
        return np.maximum(m, 0.0), -t * (m > 0)


class SquaredHinge(_Elementwise):
    """``mean(max(1 - t p, 0)**2)`` over the last axis; targets -1/1 (0/1 converted)."""

    def __init__(self, reduction="sum_over_batch_size", name="squared_hinge", dtype=None):
        super().__init__(name, reduction, dtype)

    def _elementwise(self, out, y):
        t = _hinge_targets(y)
        m = np.maximum(1.0 - t * out, 0.0)
        return m * m, -2.0 * m * t


class CategoricalHinge(Loss):
    """``max(max((1 - t) p) - sum(t p) + 1, 0)`` per sample; targets one-hot."""

    def __init__(self, reduction="sum_over_batch_size", name="categorical_hinge", dtype=None):
        super().__init__(name, reduction, dtype)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _same_shape_targets(y, output_shape, dtype, argument, self.name)
        _check_finite(y, argument, self.name)
        return y

    def _values(self, out, y, logits):
        pos = (y * out).sum(axis=-1)
        other = (1.0 - y) * out
        neg = other.max(axis=-1)
        margin = neg - pos + 1.0
        values = np.maximum(margin, 0.0)

        def backward(g):
            at_max = (other == neg[..., None])
            # TensorFlow splits the gradient of a max between equal maxima
            share = (at_max / at_max.sum(axis=-1, keepdims=True)).astype(out.dtype)
            d = share * (1.0 - y) - y
            return d * (g * (margin > 0))[..., None]
        return values, backward


class CosineSimilarity(Loss):
    """``-sum(l2_normalize(t) * l2_normalize(p))`` over the last axis (Keras's normalize:
    ``x * min(1 / ||x||, 1 / 1e-7)``)."""

    def __init__(self, axis=-1, reduction="sum_over_batch_size", name="cosine_similarity",
                 dtype=None):
        super().__init__(name, reduction, dtype)
        self.axis = _check_axis(axis)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _same_shape_targets(y, output_shape, dtype, argument, self.name)
        _check_finite(y, argument, self.name)
        return y

    def _values(self, out, y, logits):
        tn = y * _inv_norm(y)[0]
        inv, clipped = _inv_norm(out)
        pn = out * inv
        values = -(tn * pn).sum(axis=-1)

        def backward(g):
            u = -tn * g[..., None]
            # d(x * inv)/dx: inv (u - pn <u, pn>) where inv = 1/||x||; u * inv where clipped
            d = inv * (u - pn * (u * pn).sum(axis=-1, keepdims=True))
            return np.where(clipped, u * inv, d)
        return values, backward

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


def _inv_norm(x):
    sq = (x * x).sum(axis=-1, keepdims=True)
    limit = x.dtype.type(1.0 / EPSILON)
    with np.errstate(divide="ignore"):
        raw = 1.0 / np.sqrt(sq)
    clipped = ~(raw < limit)
    return np.where(clipped, limit, raw).astype(x.dtype, copy=False), clipped


# ------------------------------------------------------------------------------- names
_CLASSES = (
    CategoricalCrossentropy, SparseCategoricalCrossentropy, BinaryCrossentropy,
    MeanSquaredError, MeanAbsoluteError, Huber, LogCosh, KLDivergence, Poisson, Hinge,
    SquaredHinge, CategoricalHinge, CosineSimilarity, CategoricalFocalCrossentropy,
    BinaryFocalCrossentropy,
)
_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "huber": Huber,
    "log_cosh": LogCosh,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "poisson": Poisson,
    "hinge": Hinge,
    "squared_hinge": SquaredHinge,
    "categorical_hinge": CategoricalHinge,
    "cosine_similarity": CosineSimilarity,
    "categorical_focal_crossentropy": CategoricalFocalCrossentropy,
    "binary_focal_crossentropy": BinaryFocalCrossentropy,
    "bce": BinaryCrossentropy,
}
# Keras also accepts the class names in compile(loss=...): 'Huber', 'KLDivergence', ...
_BY_CLASS_NAME = {cls.__name__.lower(): cls for cls in _CLASSES}
KNOWN = tuple(_BY_NAME)


def get(identifier) -> Loss:
    """A Loss from a name (Keras's function names, class names and aliases mse, mae, kld,
    bce; case-insensitive), a Loss instance or class, or a callable ``fn(y_true, y_pred)``
    (wrapped in :class:`LossFunctionWrapper`, differentiated with the tape)."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        cls = _BY_NAME.get(key) or _BY_CLASS_NAME.get(key)
        if cls is not None:
            return cls()
    elif isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    elif callable(identifier):
        builtin = _FUNCTIONS.get(identifier)
        if builtin is not None:   # fastcnn.losses.huber etc.: the class, exact and fast
            return builtin()
        return LossFunctionWrapper(identifier)
    raise ValueError(
        f"loss must be one of {list(KNOWN)} (or a Keras class name such as 'Huber'), a "
        f"fastcnn.losses.Loss, or a callable loss(y_true, y_pred), got {identifier!r}"
    )


# ------------------------------------------------------- Keras's functions: per-sample losses
def _per_sample(loss, y_true, y_pred):
    """The per-sample losses of ``loss`` (reduction 'none'), a differentiable Tensor."""
    loss.reduction = None
    return loss(y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    """Per-sample ``mean((y_pred - y_true)**2, axis=-1)`` (Keras 3: shape (N,) for (N, K))."""
    return _per_sample(MeanSquaredError(), y_true, y_pred)


def mean_absolute_error(y_true, y_pred):
    """Per-sample ``mean(|y_pred - y_true|, axis=-1)``."""
    return _per_sample(MeanAbsoluteError(), y_true, y_pred)


def huber(y_true, y_pred, delta=1.0):
    """Per-sample Huber loss (mean over the last axis)."""
    return _per_sample(Huber(delta), y_true, y_pred)


def log_cosh(y_true, y_pred):
    """Per-sample ``mean(log(cosh(y_pred - y_true)), axis=-1)``."""
    return _per_sample(LogCosh(), y_true, y_pred)


def kl_divergence(y_true, y_pred):
    """Per-sample Kullback-Leibler divergence (sum over the last axis)."""
    return _per_sample(KLDivergence(), y_true, y_pred)


def poisson(y_true, y_pred):
    """Per-sample ``mean(y_pred - y_true * log(y_pred + 1e-7), axis=-1)``."""
    return _per_sample(Poisson(), y_true, y_pred)


def hinge(y_true, y_pred):
    """Per-sample ``mean(max(1 - y_true * y_pred, 0), axis=-1)``."""
    return _per_sample(Hinge(), y_true, y_pred)


def squared_hinge(y_true, y_pred):
    """Per-sample ``mean(max(1 - y_true * y_pred, 0)**2, axis=-1)``."""
    return _per_sample(SquaredHinge(), y_true, y_pred)


def categorical_hinge(y_true, y_pred):
    """Per-sample categorical hinge loss."""
    return _per_sample(CategoricalHinge(), y_true, y_pred)


def cosine_similarity(y_true, y_pred, axis=-1):
    """Per-sample negative cosine similarity (-1 for identical directions)."""
    return _per_sample(CosineSimilarity(axis), y_true, y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Per-sample categorical cross-entropy."""
    return _per_sample(CategoricalCrossentropy(from_logits, label_smoothing, axis),
                       y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None,
                                    axis=-1):
    """Per-sample sparse categorical cross-entropy (0 where the label is ``ignore_class``)."""
    loss = SparseCategoricalCrossentropy(from_logits, ignore_class, axis=axis)
    if ignore_class is None:
        return _per_sample(loss, y_true, y_pred)
    from .autodiff import record
    out, y = loss._inputs(y_true, y_pred)
    host = _device.to_host(out)
    mask = (y != ignore_class)
    values, backward = loss._values(host, np.where(mask, y, 0), from_logits)
    values = np.asarray(values) * mask
    return record(loss.name, (y_true, y_pred), [values],
                  lambda dys, needs: (None, _back_like(
                      backward, np.asarray(_device.to_host(dys[0])) * mask, out)))[0]


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Per-sample binary cross-entropy (mean over the last axis)."""
    return _per_sample(BinaryCrossentropy(from_logits, label_smoothing, axis), y_true, y_pred)


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1):
    """Per-sample categorical focal cross-entropy."""
    return _per_sample(CategoricalFocalCrossentropy(alpha, gamma, from_logits,
                                                    label_smoothing, axis), y_true, y_pred)


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25,
                              gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1):
    """Per-sample binary focal cross-entropy (mean over the last axis)."""
    return _per_sample(BinaryFocalCrossentropy(apply_class_balancing, alpha, gamma,
                                               from_logits, label_smoothing, axis),
                       y_true, y_pred)


# Keras's short names for the functions
mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error
kld = KLD = kl_divergence
bce = BCE = binary_crossentropy

_FUNCTIONS = {
    mean_squared_error: MeanSquaredError, mean_absolute_error: MeanAbsoluteError,
    huber: Huber, log_cosh: LogCosh, kl_divergence: KLDivergence, poisson: Poisson,
    hinge: Hinge, squared_hinge: SquaredHinge, categorical_hinge: CategoricalHinge,
    cosine_similarity: CosineSimilarity, categorical_crossentropy: CategoricalCrossentropy,
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
    binary_crossentropy: BinaryCrossentropy,
    categorical_focal_crossentropy: CategoricalFocalCrossentropy,
    binary_focal_crossentropy: BinaryFocalCrossentropy,
}
