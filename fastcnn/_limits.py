"""An allocation budget for building a model from an untrusted file.

A model file names its architecture; building it allocates every weight
(``Layer.add_weight``) before the file's arrays are read. A crafted file of a few
kilobytes could declare ``Dense(2**27)`` and take gigabytes (or fail with a bare
MemoryError) before anything notices that the file holds no such arrays. While
``load_model`` builds the architecture it opens a budget, the total bytes of the weight
arrays the file really holds (their headers checked against the archive's sizes)::

    with _limits.budget(max_bytes, archive.error):   # the loader's ModelFileError factory
        model = model_from_config(...)                # each add_weight calls charge()

and :func:`charge`, called by ``add_weight`` before the initializer runs, raises the
loader's error (naming the file, the layer and weight, and the reason) as soon as the
weights asked for exceed it. Outside a budget :func:`charge` does nothing.

The budget lives in a :class:`contextvars.ContextVar`: a model built by another thread
(or asyncio task) at the same time is not charged to it.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

__all__ = ["budget", "charge", "format_bytes"]


class _Budget:
    __slots__ = ("max_bytes", "used", "describe", "error")

    def __init__(self, max_bytes, describe):
        self.max_bytes = int(max_bytes)
        self.used = 0
        self.describe = describe
        self.error = None   # the exception charge() raised, if it did


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "fastcnn_allocation_budget", default=None)


def format_bytes(n) -> str:
    """``1234567890`` -> ``'1234567890 bytes (1.1 GiB)'``."""
    n = int(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n} bytes ({n / size:.1f} {unit})"
    return f"{n} bytes"


@contextlib.contextmanager
def budget(max_bytes, describe):
    """Within the block, weights may take at most ``max_bytes`` in all.

    ``describe(message)`` returns the exception to raise when they would take more (the
    loader passes the factory of its ModelFileError, which names the file). Budgets do not
    nest: an inner one replaces the outer one for its block. Yields the budget, whose
    ``error`` is the exception :func:`charge` raised (a caller that wraps the errors of the
    block can re-raise it as it was).
    """
    if not callable(describe):
        raise TypeError(f"describe must be a callable returning an exception, got {describe!r}")
    state = _Budget(max_bytes, describe)
    token = _BUDGET.set(state)
    try:
        yield state
    finally:
        _BUDGET.reset(token)


def charge(shape, dtype, what) -> None:
    """Counts an array of ``shape`` and ``dtype`` (``what``: e.g. "layer 'dense' weight
    'kernel'") against the open budget, before it is allocated; raises the budget's error
    if it does not fit. A no-op outside :func:`budget`."""
    current = _BUDGET.get()
    if current is None:
        return
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    current.used += nbytes
    if current.used > current.max_bytes:
        current.error = current.describe(
            f"the architecture asks for more weights than the file holds: {what} of shape "
            f"{tuple(int(d) for d in shape)} ({np.dtype(dtype).name}) needs "
            f"{format_bytes(nbytes)}, which brings the weights built so far to "
            f"{format_bytes(current.used)}, over the limit of "
            f"{format_bytes(current.max_bytes)} that the weight arrays in the file set; "
            f"refused before allocating")
        raise current.error
