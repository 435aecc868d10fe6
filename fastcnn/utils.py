"""Randomness and session helpers (Keras's ``keras.utils.set_random_seed`` / ``clear_session``).

Every random draw in fastcnn (initializers, dropout masks, shuffling in ``fit``) comes from
ONE package-wide NumPy ``Generator``, looked up at draw time through :func:`get_rng`.
After ``set_random_seed(s)`` the whole sequence of draws is therefore a function of ``s``
alone, and a run is bit-for-bit reproducible on a given backend.
"""
from __future__ import annotations

import itertools
import numbers
import random

import numpy as np

_rng = np.random.default_rng()
_name_counters: dict[str, itertools.count] = {}


def check_seed(seed, name: str = "seed", *, allow_none: bool = False):
    """``seed`` as an int (or None when allowed); ValueError naming ``name`` otherwise."""
    if seed is None and allow_none:
        return None
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        expected = "None or a non-negative int" if allow_none else "a non-negative int"
        raise ValueError(f"{name} must be {expected}, got {seed!r}")
    return int(seed)


def set_random_seed(seed) -> None:
    """Seeds fastcnn's generator (and, as Keras does, Python's and NumPy's global ones)."""
    global _rng
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    """The package-wide generator (replaced by :func:`set_random_seed`; never cache it)."""
    return _rng


def make_rng(seed=None) -> np.random.Generator:
    """A generator of its own: seeded from ``seed`` when given, else spawned from :func:`get_rng`."""
    if seed is None:
        return _rng.spawn(1)[0]
    return np.random.default_rng(check_seed(seed))


def unique_name(prefix: str) -> str:
    """'conv2d', then 'conv2d_1', 'conv2d_2', ... (Keras's automatic layer/model names)."""
    counter = _name_counters.setdefault(prefix, itertools.count())
    n = next(counter)
    return prefix if n == 0 else f"{prefix}_{n}"


def clear_session() -> None:
    """Resets automatic names so that the next layers are 'conv2d', 'dense', ... again."""
    _name_counters.clear()
