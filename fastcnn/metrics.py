"""Accuracy metrics with Keras's names; stateful like Keras (update_state / result / reset_state).

``'accuracy'`` (or ``'acc'``) resolves to the right form for the compiled loss:
sparse categorical crossentropy -> ``sparse_categorical_accuracy``, categorical ->
``categorical_accuracy``, binary -> ``binary_accuracy`` (threshold 0.5); for other losses
Keras's shape rule (one output unit -> binary, else categorical). The log key stays the name
the user gave ('acc' stays 'acc').

Inside ``fit``, metrics see the same tensor the loss sees: pre-activation logits when the
model fused its last softmax/sigmoid into the loss. Arg-max is unchanged by softmax, and
``sigmoid(z) > 0.5`` is ``z > 0``, so :meth:`Metric.update_state` takes ``logits=``.
"""
from __future__ import annotations

import numpy as np

from . import _device, losses


class Metric:
    """A running mean over the samples seen since the last ``reset_state``."""

    def __init__(self, name):
        self.name = name
        self.reset_state()

    def reset_state(self):
        self._total = 0.0
        self._count = 0

    def _correct(self, y_true, y_pred, logits) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not define _correct")

    def update_state(self, y_true, y_pred, logits=False):
        """Adds a batch; ``y_true`` as prepared by the loss (labels int, targets float).

        ``y_pred`` may be a device array (a model on a device backend): the metric reads a
        host copy of it, one (N, K) array per batch.
        """
        correct = self._correct(y_true, _device.to_host(y_pred), logits)
        self._total += float(np.count_nonzero(correct))
        self._count += correct.size

    def result(self) -> float:
        return self._total / self._count if self._count else 0.0

    def counts(self) -> tuple:
        """``(total, count)``: the sufficient statistics of :meth:`result` (what
        fastcnn.distributed sums over the processes)."""
        return self._total, self._count

    def set_counts(self, total, count) -> None:
        """Replaces the running state by ``(total, count)`` (e.g. sums over processes)."""
        self._total, self._count = float(total), int(count)

    def __call__(self, y_true, y_pred):
        """Keras-style one-shot value on probabilities."""
        correct = self._correct(np.asarray(y_true), np.asarray(y_pred), False)
        return float(np.count_nonzero(correct)) / correct.size if correct.size else 0.0

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class SparseCategoricalAccuracy(Metric):
    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)

    def _correct(self, y_true, y_pred, logits):
        if y_true.ndim == y_pred.ndim:  # (N, 1) labels
            y_true = y_true.reshape(y_true.shape[:-1])
        return y_pred.argmax(axis=-1) == y_true


class CategoricalAccuracy(Metric):
    def __init__(self, name="categorical_accuracy"):
        super().__init__(name)

    def _correct(self, y_true, y_pred, logits):
        return y_pred.argmax(axis=-1) == y_true.argmax(axis=-1)


class BinaryAccuracy(Metric):
    def __init__(self, name="binary_accuracy", threshold=0.5):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        # the same decision on logits: sigmoid(z) > t  <=>  z > log(t / (1 - t))
        self._logit_threshold = float(np.log(self.threshold / (1.0 - self.threshold)))
        super().__init__(name)

    def _correct(self, y_true, y_pred, logits):
        if y_true.ndim == y_pred.ndim - 1:
            y_true = y_true.reshape(y_true.shape + (1,))
        threshold = self._logit_threshold if logits else self.threshold
        # Keras compares the thresholded prediction with the target for equality.
        return (y_pred > threshold) == y_true

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}


_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
}
_ACCURACY = ("accuracy", "acc")
KNOWN = _ACCURACY + tuple(_BY_NAME)


def get(identifier, loss=None, output_shape=None) -> Metric:
    """A Metric from a name (``'accuracy'`` resolved for ``loss``/``output_shape``) or instance."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key in _BY_NAME:
            return _BY_NAME[key](name=identifier)
        if key in _ACCURACY:
            return _accuracy_for(loss, output_shape)(name=identifier)
    raise ValueError(
        f"metric must be one of {list(KNOWN)} or a fastcnn.metrics.Metric, got {identifier!r}"
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


def sparse_categorical_accuracy(y_true, y_pred):
    return SparseCategoricalAccuracy()(y_true, y_pred)


def categorical_accuracy(y_true, y_pred):
    return CategoricalAccuracy()(y_true, y_pred)


def binary_accuracy(y_true, y_pred, threshold=0.5):
    return BinaryAccuracy(threshold=threshold)(y_true, y_pred)
