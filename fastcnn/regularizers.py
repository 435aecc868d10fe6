"""Weight regularizers with Keras's names: ``L2`` (alias ``l2``).

A regularizer adds ``penalty(w)`` to the model's loss. Its gradient goes straight into the
layer's own weight gradient in ``backward`` (``dw += 2 * l2 * w``), so the optimizers need
no change and every optimizer sees the regularized gradient, as in Keras. The loss that
``fit``/``evaluate``/``train_on_batch`` report includes the penalties (Keras does the same).

``get_config`` is plain JSON (``{"l2": 0.01}``); :func:`serialize` / :func:`get` turn a
regularizer into ``{"class_name": "L2", "config": {...}}`` and back, for saved models.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _device

__all__ = ["Regularizer", "L2", "l2", "get", "serialize"]


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
        if (not isinstance(l2, numbers.Real) or isinstance(l2, bool)
                or not math.isfinite(float(l2)) or float(l2) < 0):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
        self.l2 = float(l2)

    def __call__(self, w) -> float:
        # A float, whatever the weights' dtype: it is added to the reported Python float loss.
        return self.l2 * _device.sum_squares(w)

    def gradient(self, w) -> np.ndarray:
        # A Python float factor keeps float32 weights float32 (NumPy 2 scalar promotion).
        return (2.0 * self.l2) * w

    def get_config(self):
        return {"l2": self.l2}


# Keras spells the class both ways: keras.regularizers.l2(0.01) is L2(0.01).
l2 = L2

_BY_NAME = {"l2": L2}


def serialize(regularizer):
    """None, or ``{"class_name": ..., "config": {...}}`` (JSON-serialisable)."""
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def get(identifier, *, argument="kernel_regularizer"):
    """A Regularizer (or None) from None, a name ('l2'), a Regularizer or a serialized dict."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and set(identifier) >= {"class_name"}:
        name = identifier["class_name"]
        if isinstance(name, str) and name.lower() in _BY_NAME:
            config = identifier.get("config") or {}
            if not isinstance(config, dict):
                raise ValueError(f"{argument}: 'config' must be a dict, got {config!r}")
            try:
                return _BY_NAME[name.lower()](**config)
            except TypeError as exc:
                raise ValueError(f"{argument}: bad config {config!r} for {name}: {exc}") from None
    raise ValueError(
        f"{argument} must be None, one of {sorted(_BY_NAME)}, a "
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
    return grad + regularizer.gradient(w)
