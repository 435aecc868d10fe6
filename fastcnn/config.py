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
    _FLOATX = supported_float_dtype(dtype, "dtype")


#: The dtypes weights and activations may have.
SUPPORTED_FLOAT_DTYPES = ("float32", "float64")


def supported_float_dtype(dtype, argument="dtype"):
    """``np.dtype('float32')`` or ``np.dtype('float64')`` for ``dtype``; ValueError otherwise.

    Compares the parsed dtype, never ``None``: NumPy reads ``None`` as float64, so a string
    NumPy does not know (``'no_such_dtype'``, Keras's ``'mixed_float16'`` policy) must not
    fall back to it.
    """
    dt = None
    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except (TypeError, ValueError):
            dt = None
    if dt is None or dt.name not in SUPPORTED_FLOAT_DTYPES:
        supported = ", ".join(repr(name) for name in SUPPORTED_FLOAT_DTYPES)
        raise ValueError(
            f"{argument} must be one of the supported dtypes {supported}, got {dtype!r}"
            + (" (mixed-precision policies are not supported)"
               if isinstance(dtype, str) and dtype.startswith("mixed_") else "")
        )
    return dt
