"""Global numeric settings (Keras's ``floatx``)."""
from __future__ import annotations

import numpy as np

_FLOATX = np.dtype("float32")


def floatx() -> str:
    """The default float dtype of new layers' weights and activations ('float32')."""
    return _FLOATX.name


def set_floatx(dtype) -> None:
    """Sets the default float dtype: 'float32' (default) or 'float64' (gradient checks)."""
    global _FLOATX
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.dtype("float32"), np.dtype("float64")):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    _FLOATX = dt
