"""Metrics with Keras 3's names, arguments, defaults and numbers; stateful like Keras
(``update_state(y_true, y_pred, sample_weight=None)`` / ``result()`` / ``reset_state()``).

* Accuracies: ``binary_accuracy`` (threshold 0.5), ``categorical_accuracy``,
  ``sparse_categorical_accuracy``, ``top_k_categorical_accuracy`` and
  ``sparse_top_k_categorical_accuracy`` (k=5; ties at the k-th score count as in, as
  TensorFlow's ``in_top_k``).
* ``Precision``, ``Recall`` (thresholds, top_k, class_id) and ``AUC`` (num_thresholds=200,
  curve 'ROC' or 'PR', summation 'interpolation' (Keras's interpolated PR for 'PR'),
  'minoring' or 'majoring'; thresholds bucketed exactly as Keras buckets them).
* Regression and the losses as metrics: ``MeanSquaredError``, ``MeanAbsoluteError``,
  ``RootMeanSquaredError``, ``Hinge``, ``SquaredHinge``, ``CategoricalHinge``,
  ``KLDivergence``, ``Poisson``, ``LogCoshError``, ``CosineSimilarity`` (positive, as
  Keras's metric), the three cross-entropies; ``Mean`` and ``Sum`` of values. Every loss
  name is accepted in ``metrics=[...]`` (Keras's metric names first: ``'cosine_similarity'``
  is the metric, ``'mae'`` the mean absolute error).

A weighted mean metric keeps ``total = sum(w_i * v_i)`` and ``count = sum(w_i)`` (``v_i``:
the per-sample value, the mean over the sample's other axes), as Keras's ``Mean`` does.

``'accuracy'`` (or ``'acc'``) resolves to the right form for the compiled loss:
sparse categorical crossentropy -> ``sparse_categorical_accuracy``, categorical ->
``categorical_accuracy``, binary -> ``binary_accuracy`` (threshold 0.5); for other losses
Keras's shape rule (one output unit -> binary, else categorical). The log key stays the name
the user gave ('acc' stays 'acc').

Inside ``fit`` the model calls :meth:`Metric.update_model_output` with the targets as the
loss prepared them and the tensor the loss saw: pre-activation logits when the model fused
its last softmax/sigmoid into the loss; the metric applies that activation (a stable
softmax/sigmoid) when it needs the model's output (arg-max metrics do not). When the loss
itself has ``from_logits=True`` the model's output is the logits, and metrics see them as
Keras's do (a ``BinaryAccuracy`` then thresholds logits at 0.5, as in Keras).
Distributed training sums :meth:`Metric.counts` over the processes (exact, not averages).
"""
from __future__ import annotations

import numpy as np

from . import _device, losses

_NEG_INF = -1e10     # Keras's metrics_utils.NEG_INF
_EPSILON = 1e-7


def _host(x):
    from .autodiff import value_of
    return np.asarray(_device.to_host(value_of(x)))


def _float(x, dtype=None):
    x = _host(x)
    if dtype is not None:
        return x.astype(dtype, copy=False)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def _same_rank(x1, x2, expand_rank_1=True):
    """Keras's squeeze_or_expand_to_same_rank: ranks made equal when they differ by a
    trailing axis of size 1."""
    r1, r2 = x1.ndim, x2.ndim
    if r1 == r2:
        return x1, x2
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = x2.reshape(x2.shape + (1,))
        else:
            x1 = x1.reshape(x1.shape[:-1])
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = x1.reshape(x1.shape + (1,))
        else:
            x2 = x2.reshape(x2.shape[:-1])
    return x1, x2


class Metric:
    """Base class (Keras's ``keras.metrics.Metric(dtype=None, name=None)``).

    State is a float64 vector of additive sufficient statistics (:meth:`counts`): what
    ``fastcnn.distributed`` sums over the processes. A subclass sets ``_state_size``,
    defines ``_update(y_true, y_pred, sample_weight)`` (adding to ``self._state``) and
    ``result()``.
    """

    _state_size = 2
    #: whether the metric reads the model's output values (False: arg-max metrics, which
    #: pre-activation logits serve as well).
    needs_output = True

    def __init__(self, name=None, dtype=None):
        if name is None:
            name = losses._snake(type(self).__name__)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self.dtype = None if dtype is None else np.dtype(dtype).name
        self._activation = None     # set by get(..., loss): see _bind
        self._state = np.zeros(self._state_size, dtype=np.float64)

    # ------------------------------------------------------------------ Keras's API
    def reset_state(self):
        self._state = np.zeros(self._state_size, dtype=np.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: ``y_true`` and ``y_pred`` as Keras takes them (arrays or Tensors),
        ``sample_weight``: None or weights broadcastable to the samples."""
        y_pred = _float(y_pred, self.dtype)
        y_true = _host(y_true)
        w = None if sample_weight is None else _float(sample_weight, y_pred.dtype)
        self._update(y_true, y_pred, w)

    def _update(self, y_true, y_pred, sample_weight):
        raise NotImplementedError(f"{type(self).__name__} does not define _update")

    def result(self):
        raise NotImplementedError(f"{type(self).__name__} does not define result")

    def __call__(self, *args, **kwargs):
        """Keras: ``update_state(*args, **kwargs)``, then ``result()``."""
        self.update_state(*args, **kwargs)
        return self.result()

    # ------------------------------------------------------------------ the model's path
    def _bind(self, loss):
        """Records how the model's loss turns the tensor it sees into the model's output:
        the fused activation's name, or 'none' when the loss takes logits itself."""
        if loss is None:
            return
        self._activation = "none" if getattr(loss, "from_logits", False) else \
            getattr(loss, "fused_activation", None)

    def update_model_output(self, y_prepared, out, logits, sample_weight=None):
        """Adds a batch inside fit/evaluate: ``y_prepared`` as the compiled loss prepared
        the targets, ``out`` the tensor the loss saw (a device array is read on the host),
        ``logits``: whether ``out`` is pre-activation (converted here when needed).
        ``sample_weight`` (None or (N,)): for Keras's ``weighted_metrics`` (Keras does not
        weigh the plain ``metrics``)."""
        out = np.asarray(_device.to_host(out))
        if logits and self.needs_output:
            out = self._activate(out)
        out = _float(out, self.dtype)
        w = None if sample_weight is None else _float(sample_weight, out.dtype)
        self._update(_host(y_prepared), out, w)

    def _activate(self, out):
        act = self._activation
        if act == "none":
            return out
        if act is None:   # not bound to a loss: Keras's shape rule
            act = "sigmoid" if out.shape[-1] == 1 else "softmax"
        return _sigmoid(out) if act == "sigmoid" else _softmax(out)

    def counts(self) -> np.ndarray:
        """The additive sufficient statistics of :meth:`result`, a 1-D float64 array (what
        fastcnn.distributed sums over the processes)."""
        return self._state.copy()

    def set_counts(self, counts) -> None:
        """Replaces the running state by ``counts`` (e.g. sums over processes)."""
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if counts.shape != self._state.shape:
            raise ValueError(f"{self.name}: set_counts needs {self._state.size} values, got "
                             f"{counts.size}")
        self._state = counts.copy()

    def get_config(self):
        config = {"name": self.name}
        if self.dtype is not None:
            config["dtype"] = self.dtype
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def _samplewise(values, sample_weight, reduce):
    """Keras's reduce_to_samplewise_values: ``(values (N,), weights (N,) or None)``."""
    values = np.asarray(values, dtype=np.float64)
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        values, w = _same_rank(values, w)
        if values.ndim > w.ndim:
            values = reduce(values, axis=tuple(range(w.ndim, values.ndim)))
        try:
            w = np.broadcast_to(w, values.shape)
        except ValueError:
            raise ValueError(f"sample_weight of shape {np.shape(sample_weight)} does not "
                             f"broadcast to the values of shape {values.shape}") from None
        values = values * w
        if w.ndim > 1:
            w = reduce(w, axis=tuple(range(1, w.ndim)))
        sample_weight = w
    if values.ndim > 1:
        values = reduce(values, axis=tuple(range(1, values.ndim)))
    return values, sample_weight


class Mean(Metric):
    """The (weighted) mean of the values given: ``update_state(values, sample_weight)``."""

    def __init__(self, name="mean", dtype=None):
        super().__init__(name, dtype)

    def update_state(self, values, sample_weight=None):
        values = _float(values, self.dtype)
        w = None if sample_weight is None else _float(sample_weight, values.dtype)
        self._add(values, w)

    def _add(self, values, sample_weight):
        values, w = _samplewise(values, sample_weight, np.mean)
        self._state[0] += values.sum()
        if w is not None:
            self._state[1] += w.sum()
        else:
            self._state[1] += values.shape[0] if values.ndim >= 1 else 1

    def update_model_output(self, y_prepared, out, logits, sample_weight=None):
        raise ValueError(f"{type(self).__name__} averages values given to update_state; as a "
                         f"compiled metric use a metric of y_true and y_pred (e.g. 'mae')")

    def result(self):
        total, count = self._state
        return float(total / count) if count else 0.0


class Sum(Metric):
    """The (weighted) sum of the values given: ``update_state(values, sample_weight)``."""

    _state_size = 1

    def __init__(self, name="sum", dtype=None):
        super().__init__(name, dtype)

    def update_state(self, values, sample_weight=None):
        values = _float(values, self.dtype)
        w = None if sample_weight is None else _float(sample_weight, values.dtype)
        values, _ = _samplewise(values, w, np.sum)
        self._state[0] += values.sum()

    def update_model_output(self, y_prepared, out, logits, sample_weight=None):
        raise ValueError(f"{type(self).__name__} sums values given to update_state; as a "
                         f"compiled metric use a metric of y_true and y_pred")

    def result(self):
        return float(self._state[0])


class MeanMetricWrapper(Mean):
    """The weighted mean of ``fn(y_true, y_pred, **kwargs)`` (per-sample values), Keras's
    ``MeanMetricWrapper(fn, name=None, dtype=None, **kwargs)``."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {fn!r}")
        self._fn = fn
        self._fn_kwargs = kwargs
        super().__init__(name or getattr(fn, "__name__", "mean_metric_wrapper"), dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        Metric.update_state(self, y_true, y_pred, sample_weight)

    def update_model_output(self, y_prepared, out, logits, sample_weight=None):
        Metric.update_model_output(self, y_prepared, out, logits, sample_weight)

    def _update(self, y_true, y_pred, sample_weight):
        values = _host(self._fn(y_true, y_pred, **self._fn_kwargs))
        self._add(values, sample_weight)

    def get_config(self):
        return {**super().get_config(), **self._fn_kwargs}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# ---------------------------------------------------------------------------- accuracies
def binary_accuracy(y_true, y_pred, threshold=0.5):
    """Per-element ``(y_pred > threshold) == y_true`` as floats (Keras 3)."""
    y_pred = _float(y_pred)
    y_true = _host(y_true)
    y_true, y_pred = _same_rank(y_true, y_pred)
    return (y_true == (y_pred > threshold).astype(y_true.dtype)).astype(np.float32)


def categorical_accuracy(y_true, y_pred):
    """Per-sample ``argmax(y_true) == argmax(y_pred)`` as floats."""
    y_pred = _host(y_pred)
    return (_host(y_true).argmax(axis=-1) == y_pred.argmax(axis=-1)).astype(np.float32)


def sparse_categorical_accuracy(y_true, y_pred):
    """Per-sample ``y_true == argmax(y_pred)`` as floats (labels (N,) or (N, 1))."""
    y_pred = _host(y_pred)
    y_true = _host(y_true)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true.reshape(y_true.shape[:-1])
    return (y_true == y_pred.argmax(axis=-1)).astype(np.float32)


def _in_top_k(labels, scores, k):
    """TensorFlow's in_top_k: the label's score has fewer than k scores above it (ties at
    the boundary count as in); a non-finite score is never in."""
    scores = scores.reshape(-1, scores.shape[-1])
    labels = labels.reshape(-1).astype(np.int64)
    target = scores[np.arange(len(labels)), labels]
    above = (scores > target[:, None]).sum(axis=-1)
    return (above < k) & np.isfinite(target)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """Per-sample: is ``argmax(y_true)`` among the ``k`` largest ``y_pred``."""
    y_pred = _host(y_pred)
    labels = _host(y_true).argmax(axis=-1)
    return _in_top_k(labels, y_pred, k).reshape(labels.shape).astype(np.float32)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5, from_sorted_ids=False):
    """Per-sample: is the label among the ``k`` largest ``y_pred`` (``from_sorted_ids``:
    ``y_pred`` holds class ids sorted by score)."""
    y_pred = _host(y_pred)
    y_true = _host(y_true)
    if from_sorted_ids:
        ids = y_pred[..., :k]
        return (ids == y_true.reshape(y_true.shape[:ids.ndim - 1] + (1,))).any(
            axis=-1).astype(np.float32)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true.reshape(y_true.shape[:-1])
    return _in_top_k(y_true, y_pred, k).reshape(y_true.shape).astype(np.float32)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    needs_output = False

    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(sparse_categorical_accuracy, name, dtype)


class CategoricalAccuracy(MeanMetricWrapper):
    needs_output = False

    def __init__(self, name="categorical_accuracy", dtype=None):
        super().__init__(categorical_accuracy, name, dtype)


class BinaryAccuracy(MeanMetricWrapper):
    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        super().__init__(binary_accuracy, name, dtype, threshold=self.threshold)


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return int(k)


class TopKCategoricalAccuracy(MeanMetricWrapper):
    needs_output = False

    def __init__(self, k=5, name="top_k_categorical_accuracy", dtype=None):
        super().__init__(top_k_categorical_accuracy, name, dtype, k=_check_k(k))


class SparseTopKCategoricalAccuracy(MeanMetricWrapper):
    needs_output = False

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy", dtype=None,
                 from_sorted_ids=False):
        super().__init__(sparse_top_k_categorical_accuracy, name, dtype, k=_check_k(k),
                         from_sorted_ids=bool(from_sorted_ids))


# ---------------------------------------------------------------- regression and losses
def _loss_values(loss, y_true, y_pred):
    """Per-sample values of a fastcnn loss on host arrays, with Keras's broadcasting of
    targets (``(N,)`` against ``(N, K)``)."""
    y_pred = np.ascontiguousarray(y_pred)
    y_true = np.asarray(y_true)
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        y = loss.prepare_targets(y_true, (None,) + y_pred.shape[1:], y_pred.dtype, "y_true")
        if loss.ignore_class is not None:
            mask = y != loss.ignore_class
            values, _ = loss._values(y_pred, np.where(mask, y, 0), loss.from_logits)
            return np.asarray(values) * mask
    else:
        y = y_true.astype(y_pred.dtype, copy=False)
        if y.ndim == y_pred.ndim - 1:
            y = y.reshape(y.shape + (1,))
        try:
            y = np.ascontiguousarray(np.broadcast_to(y, y_pred.shape))
        except ValueError:
            raise ValueError(f"{loss.name}: y_true of shape {y_true.shape} does not match "
                             f"y_pred of shape {y_pred.shape}") from None
    values, _ = loss._values(y_pred, y, loss.from_logits)
    return np.asarray(values)


class LossMetric(MeanMetricWrapper):
    """The weighted mean of a loss's per-sample values (a loss given in ``metrics=``)."""

    def __init__(self, loss, name=None, dtype=None):
        loss = losses.get(loss)
        self.loss = loss
        super().__init__(lambda t, p: _loss_values(loss, t, p), name or loss.name, dtype)

    def get_config(self):
        return Metric.get_config(self)


def _loss_metric_class(class_name, loss_cls, default_name, extra=()):
    """A Keras metric class that averages ``loss_cls``'s per-sample values."""

    def __init__(self, name=default_name, dtype=None, **kwargs):
        for key in kwargs:
            if key not in extra:
                raise TypeError(f"{class_name}() got an unexpected keyword argument {key!r}")
        self._loss_kwargs = kwargs
        loss = loss_cls(**kwargs)
        self.loss = loss
        MeanMetricWrapper.__init__(self, lambda t, p: _loss_values(loss, t, p), name, dtype)

    def get_config(self):
        return {**Metric.get_config(self), **self._loss_kwargs}

    return type(class_name, (MeanMetricWrapper,), {
        "__init__": __init__, "get_config": get_config,
        "__doc__": f"Keras's ``{class_name}`` metric: the weighted mean of "
                   f"``{default_name}`` per sample."})


MeanSquaredError = _loss_metric_class("MeanSquaredError", losses.MeanSquaredError,
                                      "mean_squared_error")
MeanAbsoluteError = _loss_metric_class("MeanAbsoluteError", losses.MeanAbsoluteError,
                                       "mean_absolute_error")
Hinge = _loss_metric_class("Hinge", losses.Hinge, "hinge")
SquaredHinge = _loss_metric_class("SquaredHinge", losses.SquaredHinge, "squared_hinge")
CategoricalHinge = _loss_metric_class("CategoricalHinge", losses.CategoricalHinge,
                                      "categorical_hinge")
KLDivergence = _loss_metric_class("KLDivergence", losses.KLDivergence, "kl_divergence")
Poisson = _loss_metric_class("Poisson", losses.Poisson, "poisson")
LogCoshError = _loss_metric_class("LogCoshError", losses.LogCosh, "logcosh")
BinaryCrossentropy = _loss_metric_class(
    "BinaryCrossentropy", losses.BinaryCrossentropy, "binary_crossentropy",
    ("from_logits", "label_smoothing"))
CategoricalCrossentropy = _loss_metric_class(
    "CategoricalCrossentropy", losses.CategoricalCrossentropy, "categorical_crossentropy",
    ("from_logits", "label_smoothing", "axis"))
SparseCategoricalCrossentropy = _loss_metric_class(
    "SparseCategoricalCrossentropy", losses.SparseCategoricalCrossentropy,
    "sparse_categorical_crossentropy", ("from_logits", "ignore_class", "axis"))


class RootMeanSquaredError(MeanSquaredError):
    """``sqrt`` of the weighted mean squared error."""

    def __init__(self, name="root_mean_squared_error", dtype=None):
        super().__init__(name, dtype)

    def result(self):
        return float(np.sqrt(super().result()))


def cosine_similarity(y_true, y_pred, axis=-1):
    """Per-sample cosine similarity (Keras's metric function: positive)."""
    return -_loss_values(losses.CosineSimilarity(axis), _host(y_true), _float(y_pred))


class CosineSimilarity(MeanMetricWrapper):
    """The weighted mean of the per-sample cosine similarity (positive, unlike the loss)."""

    def __init__(self, name="cosine_similarity", dtype=None, axis=-1):
        losses._check_axis(axis)
        self.axis = axis
        super().__init__(cosine_similarity, name, dtype, axis=axis)


# ------------------------------------------------------------- confusion-matrix metrics
def _check_thresholds(thresholds, default):
    if thresholds is None:
        return [default]
    values = list(thresholds) if isinstance(thresholds, (list, tuple, np.ndarray)) \
        else [thresholds]
    for t in values:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"thresholds must be numbers in [0, 1], got {thresholds!r}")
    if not values:
        raise ValueError("thresholds must not be empty")
    return [float(t) for t in values]


def _evenly_distributed(thresholds):
    n = len(thresholds)
    if n < 3:
        return False
    even = np.arange(n, dtype=np.float32) / (n - 1)
    return bool(np.allclose(thresholds, even, atol=_EPSILON))


def _filter_top_k(x, k):
    """Keras: the top-k values of the last axis kept, the rest set to -1e10 (ties: the
    lower index first, as tf.math.top_k)."""
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    mask = np.zeros_like(x)
    np.put_along_axis(mask, order, 1.0, axis=-1)
    return x * mask + x.dtype.type(_NEG_INF) * (1 - mask)


def _confusion(y_true, y_pred, thresholds, evenly, sample_weight, top_k=None, class_id=None):
    """Keras's update_confusion_matrix_variables: ``(tp, fp, tn, fn)``, one per threshold
    (float64), for predictions above each threshold."""
    y_pred = np.asarray(y_pred, dtype=np.float32)
    y_true = np.asarray(y_true).astype(np.float32)
    y_pred, y_true = _same_rank(y_pred, y_true)
    w = None
    if sample_weight is not None:
        w = np.expand_dims(np.asarray(sample_weight, dtype=np.float32), -1)
        _, w = _same_rank(y_true, w, expand_rank_1=False)
    if top_k is not None:
        y_pred = _filter_top_k(y_pred, top_k)
    if class_id is not None:
        if y_pred.ndim == 1:
            raise ValueError(f"class_id needs y_pred of shape (N, num_classes), got shape "
                             f"{y_pred.shape}")
        y_true = y_true[..., class_id, None]
        y_pred = y_pred[..., class_id, None]
    if w is not None:
        try:
            w = np.broadcast_to(w, y_pred.shape).reshape(-1).astype(np.float64)
        except ValueError:
            raise ValueError(f"sample_weight of shape {np.shape(sample_weight)} does not "
                             f"broadcast to y_pred of shape {y_pred.shape}") from None
    positive = (y_true != 0).reshape(-1)
    thresholds = np.asarray(thresholds, dtype=np.float32)
    n = len(thresholds)
    weights = np.ones(positive.shape) if w is None else w
    true_w = np.where(positive, weights, 0.0)
    false_w = np.where(positive, 0.0, weights)
    if evenly:
        with_eps = thresholds[0] < 0.0 or thresholds[-1] > 1.0
        p = np.clip(y_pred.reshape(-1), 0.0, 1.0).astype(np.float32)
        bucket = np.ceil(p * np.float32(n - 1)) - np.float32(1.0)
        if with_eps:
            bucket = np.maximum(bucket, 0.0)
        bucket = bucket.astype(np.int64)
        keep = bucket >= 0     # TensorFlow's segment sum drops negative ids
        tp_b = np.bincount(bucket[keep], true_w[keep], minlength=n)[:n]
        fp_b = np.bincount(bucket[keep], false_w[keep], minlength=n)[:n]
        tp = np.cumsum(tp_b[::-1])[::-1]
        fp = np.cumsum(fp_b[::-1])[::-1]
    else:
        above = y_pred.reshape(1, -1) > thresholds.reshape(-1, 1)
        tp = (above * true_w).sum(axis=1)
        fp = (above * false_w).sum(axis=1)
    fn = true_w.sum() - tp
    tn = false_w.sum() - fp
    return tp, fp, tn, fn


def _ratio(a, b):
    """Keras's divide_no_nan, element-wise."""
    b = np.asarray(b, dtype=np.float64)
    return np.where(b == 0, 0.0, np.asarray(a, np.float64) / np.where(b == 0, 1.0, b))


class _ConfusionMetric(Metric):
    """Precision and Recall: two statistics per threshold."""

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        if top_k is not None:
            top_k = _check_k(top_k)
        if class_id is not None and (isinstance(class_id, bool) or not isinstance(
                class_id, (int, np.integer)) or class_id < 0):
            raise ValueError(f"class_id must be a non-negative int or None, got {class_id!r}")
        self.init_thresholds = thresholds
        self.top_k = top_k
        self.class_id = None if class_id is None else int(class_id)
        default = 0.5 if top_k is None else _NEG_INF
        self.thresholds = _check_thresholds(thresholds, default) if thresholds is not None \
            else [default]
        self._evenly = _evenly_distributed(self.thresholds)
        self._state_size = 2 * len(self.thresholds)
        super().__init__(name, dtype)

    def _update(self, y_true, y_pred, sample_weight):
        if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] > 1 and \
                np.issubdtype(y_true.dtype, np.integer):
            # integer labels for a K-class output (a sparse loss's targets): one-hot
            y_true = np.eye(y_pred.shape[-1], dtype=np.float32)[y_true]
        tp, fp, tn, fn = _confusion(y_true, y_pred, self.thresholds, self._evenly,
                                    sample_weight, self.top_k, self.class_id)
        n = len(self.thresholds)
        self._state[:n] += tp
        self._state[n:] += self._second(fp, fn)

    def result(self):
        n = len(self.thresholds)
        tp, other = self._state[:n], self._state[n:]
        r = _ratio(tp, tp + other)
        return float(r[0]) if n == 1 else [float(v) for v in r]

    def get_config(self):
        return {**super().get_config(), "thresholds": self.init_thresholds,
                "top_k": self.top_k, "class_id": self.class_id}


class Precision(_ConfusionMetric):
    """``tp / (tp + fp)`` of predictions above each threshold (0.5 by default; with
    ``top_k``, the top k predictions of each sample); ``class_id``: one class's column.
    ``counts()``: ``[tp..., fp...]``."""

    def _second(self, fp, fn):
        return fp


class Recall(_ConfusionMetric):
    """``tp / (tp + fn)``; arguments as :class:`Precision`. ``counts()``: ``[tp..., fn...]``."""

    def _second(self, fp, fn):
        return fn


class AUC(Metric):
    """Area under the ROC or PR curve from per-threshold histograms (Keras's ``AUC``).

    ``num_thresholds=200`` evenly spaced thresholds (plus -1e-7 and 1 + 1e-7) or the given
    ``thresholds``; ``curve`` 'ROC' or 'PR'; ``summation_method`` 'interpolation' (for PR,
    Keras's interpolation of Davis & Goadrich), 'minoring' or 'majoring'; ``from_logits``:
    a sigmoid first. ``counts()``: the tp, fp, tn, fn histograms, concatenated.
    Multi-label AUC (``multi_label=True``) is not implemented.
    """

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation",
                 name=None, dtype=None, thresholds=None, multi_label=False, num_labels=None,
                 label_weights=None, from_logits=False):
        curve = str(curve).upper()
        if curve not in ("ROC", "PR"):
            raise ValueError(f"curve must be 'ROC' or 'PR', got {curve!r}")
        summation_method = str(summation_method).lower()
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise ValueError(f"summation_method must be 'interpolation', 'minoring' or "
                             f"'majoring', got {summation_method!r}")
        if multi_label or num_labels is not None or label_weights is not None:
            raise NotImplementedError("AUC(multi_label=True), num_labels and label_weights "
                                      "are not implemented in fastcnn")
        self._init_from_thresholds = thresholds is not None
        if thresholds is not None:
            inner = sorted(_check_thresholds(thresholds, 0.5))
            self.num_thresholds = len(inner) + 2
            self._evenly = _evenly_distributed(np.array([0.0] + inner + [1.0]))
        else:
            if isinstance(num_thresholds, bool) or not isinstance(
                    num_thresholds, (int, np.integer)) or num_thresholds <= 1:
                raise ValueError(f"num_thresholds must be an int > 1, got {num_thresholds!r}")
            self.num_thresholds = int(num_thresholds)
            inner = [(i + 1) * 1.0 / (self.num_thresholds - 1)
                     for i in range(self.num_thresholds - 2)]
            self._evenly = True
        self._thresholds = np.array([0.0 - _EPSILON] + inner + [1.0 + _EPSILON])
        self.curve = curve
        self.summation_method = summation_method
        self.multi_label = False
        self._from_logits = bool(from_logits)
        self._state_size = 4 * self.num_thresholds
        super().__init__(name, dtype)

    @property
    def thresholds(self):
        return list(self._thresholds)

    def _update(self, y_true, y_pred, sample_weight):
        if self._from_logits:
            y_pred = _sigmoid(y_pred)
        if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] > 1 and \
                np.issubdtype(y_true.dtype, np.integer):
            y_true = np.eye(y_pred.shape[-1], dtype=np.float32)[y_true]
        tp, fp, tn, fn = _confusion(y_true, y_pred, self._thresholds, self._evenly,
                                    sample_weight)
        t = self.num_thresholds
        self._state[:t] += tp
        self._state[t:2 * t] += fp
        self._state[2 * t:3 * t] += tn
        self._state[3 * t:] += fn

    def _histograms(self):
        t = self.num_thresholds
        s = self._state
        return s[:t], s[t:2 * t], s[2 * t:3 * t], s[3 * t:]

    def _interpolate_pr_auc(self):
        tp, fp, tn, fn = self._histograms()
        dtp = tp[:-1] - tp[1:]
        p = tp + fp
        dp = p[:-1] - p[1:]
        slope = _ratio(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * p[1:]
        both = (p[:-1] > 0) & (p[1:] > 0)
        safe_ratio = np.where(both, _ratio(p[:-1], np.maximum(p[1:], 0)), 1.0)
        increment = _ratio(slope * (dtp + intercept * np.log(safe_ratio)),
                           np.maximum(tp[1:] + fn[1:], 0))
        return float(increment.sum())

    def result(self):
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self._interpolate_pr_auc()
        tp, fp, tn, fn = self._histograms()
        recall = _ratio(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _ratio(fp, fp + tn), recall
        else:
            x, y = recall, _ratio(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        return float(((x[:-1] - x[1:]) * heights).sum())

    def get_config(self):
        config = {**super().get_config(), "num_thresholds": self.num_thresholds,
                  "curve": self.curve, "summation_method": self.summation_method,
                  "from_logits": self._from_logits}
        if self._init_from_thresholds:
            config["thresholds"] = [float(t) for t in self._thresholds[1:-1]]
        return config


# ------------------------------------------------------------------------------- names
_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "precision": Precision,
    "recall": Recall,
    "auc": AUC,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "root_mean_squared_error": RootMeanSquaredError,
    "hinge": Hinge,
    "squared_hinge": SquaredHinge,
    "categorical_hinge": CategoricalHinge,
    "kl_divergence": KLDivergence,
    "poisson": Poisson,
    "log_cosh_error": LogCoshError,
    "cosine_similarity": CosineSimilarity,
    "binary_crossentropy": BinaryCrossentropy,
    "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}
_CLASSES = (SparseCategoricalAccuracy, CategoricalAccuracy, BinaryAccuracy,
            TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, Precision, Recall, AUC,
            MeanSquaredError, MeanAbsoluteError, RootMeanSquaredError, Hinge, SquaredHinge,
            CategoricalHinge, KLDivergence, Poisson, LogCoshError, CosineSimilarity,
            BinaryCrossentropy, CategoricalCrossentropy, SparseCategoricalCrossentropy,
            Mean, Sum)
_BY_CLASS_NAME = {cls.__name__.lower(): cls for cls in _CLASSES}
_ACCURACY = ("accuracy", "acc")
KNOWN = _ACCURACY + tuple(_BY_NAME)


def get(identifier, loss=None, output_shape=None) -> Metric:
    """A Metric from a name (``'accuracy'`` resolved for ``loss``/``output_shape``; Keras's
    metric names and class names, and any loss name: the mean of that loss), a Metric
    instance or class, or a callable ``fn(y_true, y_pred)`` returning per-sample values
    (averaged). With ``loss``, the metric learns how the model's output relates to the
    tensor the loss sees (see :meth:`Metric.update_model_output`)."""
    metric = _resolve(identifier, loss, output_shape)
    metric._bind(loss)
    return metric


def _resolve(identifier, loss, output_shape):
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _ACCURACY:
            return _accuracy_for(loss, output_shape)(name=identifier)
        cls = _BY_NAME.get(key) or _BY_CLASS_NAME.get(key)
        if cls is not None:
            return cls(name=identifier)
        try:
            loss_obj = losses.get(identifier)
        except ValueError:
            pass
        else:
            return LossMetric(loss_obj, name=identifier)
    elif isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    elif isinstance(identifier, losses.Loss):
        return LossMetric(identifier)
    elif callable(identifier) and not isinstance(identifier, type):
        builtin = _FUNCTIONS.get(identifier)
        if builtin is not None:
            return builtin()
        return MeanMetricWrapper(identifier)
    raise ValueError(
        f"metric must be one of {list(KNOWN)} (or a loss name, or a Keras class name such "
        f"as 'AUC'), a fastcnn.metrics.Metric, or a callable metric(y_true, y_pred), got "
        f"{identifier!r}"
    )


def _accuracy_for(loss, output_shape):
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        return SparseCategoricalAccuracy
    if isinstance(loss, losses.CategoricalCrossentropy):
        return CategoricalAccuracy
    if isinstance(loss, losses.BinaryCrossentropy):
        return BinaryAccuracy
    if output_shape is not None and output_shape[-1] == 1:
        return BinaryAccuracy
    return CategoricalAccuracy


# Keras's metric functions (per-sample values) and aliases
mean_squared_error = mse = losses.mean_squared_error
mean_absolute_error = mae = losses.mean_absolute_error
hinge = losses.hinge
squared_hinge = losses.squared_hinge
categorical_hinge = losses.categorical_hinge
kl_divergence = losses.kl_divergence
poisson = losses.poisson
binary_crossentropy = losses.binary_crossentropy
categorical_crossentropy = losses.categorical_crossentropy
sparse_categorical_crossentropy = losses.sparse_categorical_crossentropy

_FUNCTIONS = {
    binary_accuracy: BinaryAccuracy, categorical_accuracy: CategoricalAccuracy,
    sparse_categorical_accuracy: SparseCategoricalAccuracy,
    top_k_categorical_accuracy: TopKCategoricalAccuracy,
    sparse_top_k_categorical_accuracy: SparseTopKCategoricalAccuracy,
    cosine_similarity: CosineSimilarity,
    mean_squared_error: MeanSquaredError, mean_absolute_error: MeanAbsoluteError,
    hinge: Hinge, squared_hinge: SquaredHinge, categorical_hinge: CategoricalHinge,
    kl_divergence: KLDivergence, poisson: Poisson, binary_crossentropy: BinaryCrossentropy,
    categorical_crossentropy: CategoricalCrossentropy,
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
}
