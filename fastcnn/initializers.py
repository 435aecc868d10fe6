"""Weight initializers with Keras's names and formulas.

Fans follow Keras: a dense kernel ``(in, out)`` has ``fan_in = in``, ``fan_out = out``; a
conv kernel ``(kh, kw, c_in, c_out)`` has ``fan_in = kh*kw*c_in``, ``fan_out = kh*kw*c_out``.
Normal variants draw from a normal truncated at 2 standard deviations and rescale the
standard deviation by 0.8796... so that the truncated distribution has the intended
variance (Keras's ``VarianceScaling(distribution='truncated_normal')``).
Unseeded initializers draw from :func:`fastcnn.utils.get_rng` (see ``set_random_seed``).
"""
from __future__ import annotations

import math

import numpy as np

from . import utils

# Standard deviation of a unit normal truncated to [-2, 2] (Keras's constant).
_TRUNCATED_STD = 0.87962566103423978


def compute_fans(shape):
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """``init(shape, dtype) -> ndarray``."""

    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def get_config(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)


class Ones(Initializer):
    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)


class VarianceScaling(Initializer):
    """Keras's VarianceScaling: variance ``scale / fan`` with fan per ``mode``."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
        if distribution not in ("truncated_normal", "uniform"):
            raise ValueError(
                f"distribution must be 'truncated_normal' or 'uniform', got {distribution!r}"
            )
        self.scale = float(scale)
        self.mode = mode
        self.distribution = distribution
        self.seed = utils.check_seed(seed, allow_none=True)

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, fan)
        rng = utils.get_rng() if self.seed is None else np.random.default_rng(self.seed)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            values = rng.uniform(-limit, limit, size=shape)
        else:
            std = math.sqrt(variance) / _TRUNCATED_STD
            values = _truncated_normal(rng, shape) * std
        return values.astype(dtype, copy=False)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode,
                "distribution": self.distribution, "seed": self.seed}


def _truncated_normal(rng, shape):
    """Unit normal samples, those beyond 2 standard deviations drawn again."""
    values = rng.standard_normal(size=shape)
    bad = np.abs(values) > 2.0
    while bad.any():
        values[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(values) > 2.0
    return values


class GlorotUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class GlorotNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


_BY_NAME = {
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_uniform": HeUniform,
    "he_normal": HeNormal,
    "zeros": Zeros,
    "ones": Ones,
}
KNOWN = tuple(_BY_NAME)


def get(identifier, *, argument="initializer") -> Initializer:
    """An Initializer from a name (case-insensitive) or an Initializer instance."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"{argument} must be one of {list(KNOWN)} or a fastcnn.initializers.Initializer, "
        f"got {identifier!r}"
    )
