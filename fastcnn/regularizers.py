"""Weight regularizers with Keras 3's names, defaults and formulas: ``L1``, ``L2``,
``L1L2`` and ``OrthogonalRegularizer`` (aliases ``l1``, ``l2``, ``l1_l2``,
``orthogonal_regularizer``).

A regularizer adds ``penalty(w)`` to the model's loss. Its exact gradient goes straight into
the layer's own weight gradient in ``backward`` (``dw += 2 * l2 * w`` for L2), so the
optimizers need no change and every optimizer sees the regularized gradient, as in Keras.
L2 runs on the device where the weights are; the others compute their penalty and gradient
on a host copy of a device weight (one transfer each way per step). The loss that
``fit``/``evaluate``/``train_on_batch`` report includes the penalties (Keras does the same).

``get_config`` is plain JSON (``{"l2": 0.01}``); :func:`serialize` / :func:`get` turn a
regularizer into ``{"class_name": "L2", "config": {...}}`` and back, for saved models.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _device

__all__ = ["Regularizer", "L1", "L2", "L1L2", "OrthogonalRegularizer", "l1", "l2", "l1_l2",
           "orthogonal_regularizer", "get", "serialize"]


class Regularizer:
    """``penalty(w) -> float`` added to the loss; ``gradient(w)`` its derivative.

    ``supports_device``: whether ``__call__`` and :func:`add_gradient` work on device arrays
    (a model on a device backend refuses, at the start of fit, a regularizer that cannot).
    """

    supports_device = False

    def __call__(self, w) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def gradient(self, w) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not define gradient")

    def get_config(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


class L2(Regularizer):
    """``l2 * sum(w ** 2)`` (Keras's ``L2``; default factor 0.01, as Keras)."""

    supports_device = True

    def __init__(self, l2=0.01):
        self.l2 = _factor(0.01 if l2 is None else l2, "l2")

    def __call__(self, w) -> float:
        # A float, whatever the weights' dtype: it is added to the reported Python float loss.
        return self.l2 * _device.sum_squares(w)

    def gradient(self, w) -> np.ndarray:
        # A Python float factor keeps float32 weights float32 (NumPy 2 scalar promotion).
        return (2.0 * self.l2) * w

    def get_config(self):
        return {"l2": self.l2}


def _factor(value, name):
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(float(value)) or float(value) < 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _host(w):
    """A NumPy view (or, for a device array, a host copy) of ``w``."""
    return _device.host_copy(w) if _device.is_device_array(w) else np.asarray(w)


class L1(Regularizer):
    """``l1 * sum(|w|)`` (Keras's ``L1``; default factor 0.01). Gradient ``l1 * sign(w)``
    (0 at 0, as TensorFlow's)."""

    supports_device = True   # through a host copy of a device weight

    def __init__(self, l1=0.01):
        self.l1 = _factor(0.01 if l1 is None else l1, "l1")

    def __call__(self, w) -> float:
        return self.l1 * float(np.sum(np.abs(_host(w)), dtype=np.float64))

    def gradient(self, w):
        w = _host(w)
        return np.sign(w) * w.dtype.type(self.l1)

    def get_config(self):
        return {"l1": self.l1}


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w ** 2)`` (Keras's ``L1L2``; both factors default to 0
    in the class, as Keras 3; the name ``'l1_l2'`` gives 0.01 and 0.01, as Keras's docs)."""

    supports_device = True   # through a host copy of a device weight

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(0.0 if l1 is None else l1, "l1")
        self.l2 = _factor(0.0 if l2 is None else l2, "l2")

    def __call__(self, w) -> float:
        w = _host(w)
        total = 0.0
        if self.l1:
            total += self.l1 * float(np.sum(np.abs(w), dtype=np.float64))
        if self.l2:
            total += self.l2 * _device.sum_squares(w)
        return total

    def gradient(self, w):
        w = _host(w)
        f = w.dtype.type
        return np.sign(w) * f(self.l1) + w * f(2.0 * self.l2)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class OrthogonalRegularizer(Regularizer):
    """Keras's ``OrthogonalRegularizer``: with the rows (``mode='rows'``) or columns of a
    rank-2 weight L2-normalised, ``factor * sum_{i != j} |<n_i, n_j>| / (size * (size - 1))``
    (Keras writes it ``factor * 0.5 * sum / num_pairs``). The gradient is exact (the
    normalisation included; a zero row is scaled by ``1e7`` as Keras's ``normalize``)."""

    supports_device = True   # through a host copy of a device weight

    def __init__(self, factor=0.01, mode="rows"):
        self.factor = _factor(factor, "factor")
        if mode not in ("rows", "columns"):
            raise ValueError(f"Invalid value for argument `mode`. Expected one of "
                             f"{{'rows', 'columns'}}. Received: mode={mode!r}")
        self.mode = mode

    def _matrix(self, w):
        w = _host(w)
        if w.ndim != 2:
            raise ValueError(f"Inputs to OrthogonalRegularizer must have rank 2. Received: "
                             f"inputs.shape={w.shape}")
        m = w.astype(np.float64) if self.mode == "rows" else w.T.astype(np.float64)
        if m.shape[0] < 2:
            raise ValueError(f"OrthogonalRegularizer(mode={self.mode!r}) needs at least 2 "
                             f"{self.mode} (there are no pairs), got shape {w.shape}")
        return w, m

    @staticmethod
    def _normalize(m):
        # Keras: x * min(rsqrt(sum(x^2)), 1 / epsilon) along the rows.
        norms = np.sqrt(np.sum(m * m, axis=1, keepdims=True))
        inv = np.minimum(1.0 / np.maximum(norms, 1e-300), 1e7)
        return m * inv, norms, inv

    def __call__(self, w) -> float:
        _, m = self._matrix(w)
        n, _, _ = self._normalize(m)
        p = n @ n.T
        np.fill_diagonal(p, 0.0)
        size = m.shape[0]
        return float(self.factor * np.sum(np.abs(p)) / (size * (size - 1.0)))

    def gradient(self, w):
        w, m = self._matrix(w)
        n, norms, inv = self._normalize(m)
        size = m.shape[0]
        s = np.sign(n @ n.T)
        np.fill_diagonal(s, 0.0)
        dn = (2.0 * self.factor / (size * (size - 1.0))) * (s @ n)
        clipped = norms * 1e7 <= 1.0    # rows scaled by the constant 1e7
        radial = np.sum(dn * n, axis=1, keepdims=True) * n
        dm = np.where(clipped, dn * 1e7, (dn - radial) * inv)
        grad = dm if self.mode == "rows" else dm.T
        return grad.astype(w.dtype)

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


# Keras spells the classes both ways: keras.regularizers.l2(0.01) is L2(0.01).
l1, l2, l1_l2, orthogonal_regularizer = L1, L2, L1L2, OrthogonalRegularizer

_BY_NAME = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": lambda: L1L2(0.01, 0.01),
            "orthogonalregularizer": OrthogonalRegularizer,
            "orthogonal_regularizer": OrthogonalRegularizer}
_CLASSES = {cls.__name__: cls for cls in (L1, L2, L1L2, OrthogonalRegularizer)}
KNOWN = ("l1", "l2", "l1_l2", "orthogonal_regularizer")


def serialize(regularizer):
    """None, or ``{"class_name": ..., "config": {...}}`` (JSON-serialisable)."""
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def get(identifier, *, argument="kernel_regularizer"):
    """A Regularizer (or None) from None, a name ('l2', 'l1', 'l1_l2',
    'orthogonal_regularizer'), a Regularizer or a serialized dict."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and set(identifier) >= {"class_name"}:
        name = identifier["class_name"]
        cls = _CLASSES.get(name) if isinstance(name, str) else None
        if cls is None and isinstance(name, str) and isinstance(
                _BY_NAME.get(name.lower()), type):
            cls = _BY_NAME[name.lower()]
        if cls is not None:
            config = identifier.get("config") or {}
            if not isinstance(config, dict):
                raise ValueError(f"{argument}: 'config' must be a dict, got {config!r}")
            try:
                return cls(**config)
            except TypeError as exc:
                raise ValueError(f"{argument}: bad config {config!r} for {name}: {exc}") from None
    raise ValueError(
        f"{argument} must be None, one of {list(KNOWN)}, a "
        f"fastcnn.regularizers.Regularizer or a serialized one "
        f"({{'class_name': 'L2', 'config': {{'l2': 0.01}}}}), got {identifier!r}"
    )


def penalty(pairs) -> float:
    """Sum of ``regularizer(w)`` over ``(regularizer, w)`` pairs, skipping None."""
    return sum((r(w) for r, w in pairs if r is not None and w is not None), 0.0)


def add_gradient(regularizer, grad, w):
    """``grad + d penalty / dw`` as a new array (``grad`` may belong to a backend buffer)."""
    if regularizer is None:
        return grad
    if type(regularizer) is L2:  # a subclass may redefine gradient()
        # grad + 2*l2*w in one pass, on the host or on the device where the arrays live.
        return _device.add_scaled(grad, w, 2.0 * regularizer.l2)
    if _device.is_device_array(w) or _device.is_device_array(grad):
        # computed on a host copy, joined on the device
        return _device.add_scaled(grad, _device.like(grad, regularizer.gradient(w)), 1.0)
    return grad + regularizer.gradient(w)
