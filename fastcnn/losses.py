"""Losses with Keras's names and semantics; each returns the batch mean and its gradient.

Keras semantics kept here:

* ``from_logits=True``: the model output is taken as logits and the backend's fused,
  numerically stable op computes loss and gradient (``softmax_cross_entropy``,
  ``sparse_softmax_cross_entropy``, ``sigmoid_cross_entropy``).
* ``from_logits=False`` with a last layer whose activation is the matching softmax/sigmoid:
  the model hands the loss the PRE-activation logits (:attr:`Loss.fused_activation`), as
  tf.keras does internally, so the gradient is exactly ``(softmax - onehot) / N``.
* otherwise the output is taken as probabilities and clipped to ``[1e-7, 1 - 1e-7]``
  (Keras's epsilon) before the log; the clip passes no gradient where it is active.
  On a device backend these probability-space forms (and mean squared error) run on a
  host copy of the model output, and the gradient goes back to the device: a few NumPy
  passes over an (N, K) array.

Targets are validated and converted once per ``fit``/``evaluate`` (:meth:`Loss.prepare_targets`),
never per batch.
"""
from __future__ import annotations

import numpy as np

from . import _device, backends

EPSILON = 1e-7


def _shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def _as_numeric(y, argument):
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"{argument} must be a numeric array, got dtype {y.dtype}")
    return y


def _check_range(y, low, high, argument, loss_name):
    if y.size == 0:
        return
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise ValueError(f"{argument} contains NaN or inf; {loss_name} needs finite targets")
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


class Loss:
    """Base class. Subclasses define ``prepare_targets`` and ``compute``."""

    #: the output activation whose fused op this loss can absorb ('softmax'/'sigmoid').
    fused_activation = None

    def __init__(self, name, from_logits=False):
        self.name = name
        self.from_logits = bool(from_logits)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        raise NotImplementedError(f"{type(self).__name__} does not define prepare_targets")

    def compute(self, backend, out, y, logits):
        """``(loss, d_out)``: batch-mean loss and its gradient with respect to ``out``.

        ``logits`` says whether ``out`` holds logits (from_logits or fused activation).
        """
        raise NotImplementedError(f"{type(self).__name__} does not define compute")

    def __call__(self, y_true, y_pred):
        """Keras-style call: the batch-mean loss of ``y_pred`` (probabilities unless
        ``from_logits``) against ``y_true``, as a Python float."""
        y_pred = np.asarray(y_pred)
        if not np.issubdtype(y_pred.dtype, np.floating):
            y_pred = y_pred.astype(np.float64)
        y_pred = np.ascontiguousarray(y_pred)
        shape = (None,) + y_pred.shape[1:]
        y = self.prepare_targets(y_true, shape, y_pred.dtype, "y_true")
        if len(y) != len(y_pred):
            raise ValueError(
                f"y_true has {len(y)} samples but y_pred has {len(y_pred)}")
        loss, _ = self.compute(backends.current(), y_pred, y, self.from_logits)
        return float(loss)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}

    def __repr__(self):
        return f"{type(self).__name__}(from_logits={self.from_logits})"


class CategoricalCrossentropy(Loss):
    """``-sum(t * log p)`` over the last axis; targets one-hot (or probability) rows."""
    fused_activation = "softmax"

    def __init__(self, from_logits=False, name="categorical_crossentropy"):
        super().__init__(name, from_logits)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _as_numeric(y, argument)
        if y.ndim == len(output_shape) - 1 or (
                y.ndim == len(output_shape) and y.shape[-1] == 1 and output_shape[-1] != 1):
            raise ValueError(
                f"{argument} has shape {y.shape}: integer class labels, but "
                f"categorical_crossentropy needs one-hot targets of shape "
                f"{_shape(output_shape)}; use loss='sparse_categorical_crossentropy' "
                f"for integer labels (or one-hot encode {argument})"
            )
        if y.shape[1:] != tuple(output_shape[1:]):
            raise ValueError(
                f"{argument} has shape {y.shape}, but categorical_crossentropy needs one-hot "
                f"targets shaped like the model output {_shape(output_shape)}"
            )
        _check_range(y, 0, 1, argument, "categorical_crossentropy")
        return np.ascontiguousarray(y, dtype=dtype)

    def compute(self, backend, out, y, logits):
        k = out.shape[out.ndim - 1]  # not shape[-1]: a simulated device shape refuses it
        if logits:
            loss, d = backend.softmax_cross_entropy(out.reshape(-1, k), y.reshape(-1, k))
            return loss, d.reshape(out.shape)
        if _device.is_device_array(out):
            return _device.on_host(self.compute, backend, out, y, logits)
        # Keras: renormalise rows, clip, then -sum(t log p).
        rows = out.size // k
        s = out.sum(axis=-1, keepdims=True)
        q = out / s
        c = np.clip(q, EPSILON, 1.0 - EPSILON)
        loss = -(y * np.log(c)).sum() / rows
        g = -y / c
        g *= (q >= EPSILON) & (q <= 1.0 - EPSILON)
        g /= rows
        # through q = p / sum(p): dL/dp_j = (g_j - sum_k g_k q_k) / s
        d = (g - (g * q).sum(axis=-1, keepdims=True)) / s
        return loss, d


class SparseCategoricalCrossentropy(Loss):
    """Categorical cross-entropy with integer class labels ``0 .. K-1``."""
    fused_activation = "softmax"

    def __init__(self, from_logits=False, name="sparse_categorical_crossentropy"):
        super().__init__(name, from_logits)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _as_numeric(y, argument)
        k = output_shape[-1]
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
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(
                f"{argument} labels must be in [0, {k - 1}] (the model has {k} outputs), "
                f"got labels in [{y.min()}, {y.max()}]"
            )
        return np.ascontiguousarray(y, dtype=np.intp)

    def compute(self, backend, out, y, logits):
        k = out.shape[out.ndim - 1]  # not shape[-1]: a simulated device shape refuses it
        if logits:
            loss, d = backend.sparse_softmax_cross_entropy(out.reshape(-1, k), y.reshape(-1))
            return loss, d.reshape(out.shape)
        if _device.is_device_array(out):
            return _device.on_host(self.compute, backend, out, y, logits)
        # Keras 3: clip, take the log as logits of a softmax (i.e. renormalise the clipped
        # probabilities): loss = log(sum c) - log(c_label).
        p = out.reshape(-1, k)
        labels = y.reshape(-1)
        rows = p.shape[0]
        c = np.clip(p, EPSILON, 1.0 - EPSILON)
        sums = c.sum(axis=-1, keepdims=True)
        idx = np.arange(rows)
        loss = (np.log(sums[:, 0]) - np.log(c[idx, labels])).sum() / rows
        g = np.broadcast_to(1.0 / sums, p.shape).copy()
        g[idx, labels] -= 1.0 / c[idx, labels]
        g *= (p >= EPSILON) & (p <= 1.0 - EPSILON)
        g /= rows
        return loss, g.reshape(out.shape)


class BinaryCrossentropy(Loss):
    """``-(t log p + (1 - t) log(1 - p))``, mean over all elements."""
    fused_activation = "sigmoid"

    def __init__(self, from_logits=False, name="binary_crossentropy"):
        super().__init__(name, from_logits)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _same_shape_targets(y, output_shape, dtype, argument, "binary_crossentropy")
        _check_range(y, 0, 1, argument, "binary_crossentropy")
        return y

    def compute(self, backend, out, y, logits):
        if logits:
            if out.ndim == 2:
                return backend.sigmoid_cross_entropy(out, y)
            flat = (out.shape[0], -1)  # the kernels take (N, D); the mean is the same
            loss, d = backend.sigmoid_cross_entropy(out.reshape(flat), y.reshape(flat))
            return loss, d.reshape(out.shape)
        if _device.is_device_array(out):
            return _device.on_host(self.compute, backend, out, y, logits)
        c = np.clip(out, EPSILON, 1.0 - EPSILON)
        one_minus = 1.0 - c
        loss = -(y * np.log(c) + (1.0 - y) * np.log(one_minus)).sum() / out.size
        d = (1.0 - y) / one_minus - y / c
        d *= (out >= EPSILON) & (out <= 1.0 - EPSILON)
        d /= out.size
        return loss, d


class MeanSquaredError(Loss):
    """``mean((p - t)**2)`` over all elements."""

    def __init__(self, name="mean_squared_error"):
        super().__init__(name, False)

    def prepare_targets(self, y, output_shape, dtype, argument="y"):
        y = _same_shape_targets(y, output_shape, dtype, argument, "mean_squared_error")
        if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
            raise ValueError(f"{argument} contains NaN or inf")
        return y

    def compute(self, backend, out, y, logits):
        if _device.is_device_array(out):
            return _device.on_host(self.compute, backend, out, y, logits)
        diff = out - y
        loss = np.vdot(diff, diff) / diff.size
        diff *= 2.0 / diff.size
        return loss, diff

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return "MeanSquaredError()"


_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}
KNOWN = tuple(_BY_NAME)


def get(identifier) -> Loss:
    """A Loss from a name (case-insensitive) or a Loss instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"loss must be one of {list(KNOWN)} or a fastcnn.losses.Loss, got {identifier!r}"
    )


# Keras-style function aliases: loss(y_true, y_pred) -> float
def categorical_crossentropy(y_true, y_pred, from_logits=False):
    return CategoricalCrossentropy(from_logits)(y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    return SparseCategoricalCrossentropy(from_logits)(y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    return BinaryCrossentropy(from_logits)(y_true, y_pred)


def mean_squared_error(y_true, y_pred):
    return MeanSquaredError()(y_true, y_pred)
