"""Weight constraints with Keras 3's names, arguments and formulas (``keras.constraints``).

A constraint is a callable ``constraint(w) -> array`` of ``w``'s shape and dtype; the
optimizers apply a Variable's ``constraint`` after each update (``w[...] = constraint(w)``,
as Keras's ``variable.assign(variable.constraint(variable))``). Norms are taken over
``axis`` (an int or a list of ints: ``[0, 1, 2]`` for the filters of a ``Conv2D`` kernel)
and Keras's fuzz factor ``1e-7`` keeps a zero column finite.

``get_config`` is plain JSON; :func:`serialize` / :func:`get` turn a constraint into
``{"class_name": ..., "config": {...}}`` and back.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .autodiff import value_of

__all__ = ["Constraint", "MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm", "max_norm",
           "non_neg", "unit_norm", "min_max_norm", "get", "serialize"]

_EPSILON = 1e-7   # keras.backend.epsilon()


def _axis(axis):
    if isinstance(axis, numbers.Integral) and not isinstance(axis, bool):
        return int(axis)
    if isinstance(axis, (list, tuple)) and axis and all(
            isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axis):
        return [int(a) for a in axis]
    raise ValueError(f"axis must be an int or a non-empty list of ints, got {axis!r}")


def _value(value, name, low=0.0):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) \
            or not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return value


def _norms(w, axis):
    ax = tuple(axis) if isinstance(axis, list) else axis
    return np.sqrt(np.sum(np.square(w), axis=ax, keepdims=True))


def _as_array(w):
    w = np.asarray(value_of(w))
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float32)
    return w


class Constraint:
    """``constraint(w) -> array`` (a new array of ``w``'s shape and dtype)."""

    def __call__(self, w):
        return w

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


class MaxNorm(Constraint):
    """Columns (norms over ``axis``) longer than ``max_value`` are scaled down to it:
    ``w * clip(norm, 0, max_value) / (epsilon + norm)``."""

    def __init__(self, max_value=2, axis=0):
        self.max_value = _value(max_value, "max_value")
        self.axis = _axis(axis)

    def __call__(self, w):
        w = _as_array(w)
        norms = _norms(w, self.axis)
        desired = np.clip(norms, 0, self.max_value)
        return (w * (desired / (_EPSILON + norms))).astype(w.dtype, copy=False)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """``max(w, 0)``."""

    def __call__(self, w):
        w = _as_array(w)
        return np.maximum(w, 0).astype(w.dtype, copy=False)


class UnitNorm(Constraint):
    """``w / (epsilon + norm)``: every column (norm over ``axis``) of unit length."""

    def __init__(self, axis=0):
        self.axis = _axis(axis)

    def __call__(self, w):
        w = _as_array(w)
        return (w / (_EPSILON + _norms(w, self.axis))).astype(w.dtype, copy=False)

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Norms moved towards ``[min_value, max_value]``:
    ``desired = rate * clip(norm, min, max) + (1 - rate) * norm``;
    ``w * desired / (epsilon + norm)``."""

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value = _value(min_value, "min_value")
        self.max_value = _value(max_value, "max_value")
        if self.max_value < self.min_value:
            raise ValueError(f"max_value ({max_value!r}) must be >= min_value "
                             f"({min_value!r})")
        self.rate = _value(rate, "rate")
        self.axis = _axis(axis)

    def __call__(self, w):
        w = _as_array(w)
        norms = _norms(w, self.axis)
        desired = (self.rate * np.clip(norms, self.min_value, self.max_value)
                   + (1 - self.rate) * norms)
        return (w * (desired / (_EPSILON + norms))).astype(w.dtype, copy=False)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


# Keras's lower-case spellings are the classes themselves.
max_norm, non_neg, unit_norm, min_max_norm = MaxNorm, NonNeg, UnitNorm, MinMaxNorm

_CLASSES = {cls.__name__: cls for cls in (MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}
_BY_NAME = {"max_norm": MaxNorm, "maxnorm": MaxNorm, "non_neg": NonNeg, "nonneg": NonNeg,
            "unit_norm": UnitNorm, "unitnorm": UnitNorm, "min_max_norm": MinMaxNorm,
            "minmaxnorm": MinMaxNorm}
KNOWN = ("max_norm", "non_neg", "unit_norm", "min_max_norm")


def serialize(constraint):
    """None, or ``{"class_name": ..., "config": {...}}`` (JSON-serialisable)."""
    if constraint is None:
        return None
    if _CLASSES.get(type(constraint).__name__) is not type(constraint):
        raise ValueError(f"only fastcnn's own constraints ({sorted(_CLASSES)}) can be "
                         f"serialized, got {constraint!r}")
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}


def get(identifier, *, argument="kernel_constraint"):
    """A constraint (or None) from None, a name ('max_norm'), a Constraint, a serialized
    dict or any callable of one array."""
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and "class_name" in identifier:
        cls = _CLASSES.get(identifier["class_name"]) or _BY_NAME.get(
            str(identifier["class_name"]).lower())
        config = identifier.get("config") or {}
        if cls is not None and isinstance(config, dict):
            try:
                return cls.from_config(config)
            except TypeError as exc:
                raise ValueError(f"{argument}: bad config {config!r} for "
                                 f"{identifier['class_name']}: {exc}") from None
    elif callable(identifier) and not isinstance(identifier, type):
        return identifier
    raise ValueError(
        f"{argument} must be None, one of {list(KNOWN)}, a fastcnn.constraints.Constraint, "
        f"a callable of one array or a serialized one "
        f"({{'class_name': 'MaxNorm', 'config': {{'max_value': 2, 'axis': 0}}}}), got "
        f"{identifier!r}")
