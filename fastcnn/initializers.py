"""Weight initializers with Keras 3's names, defaults and formulas: zeros, ones, constant,
identity, random_normal, random_uniform, truncated_normal, variance_scaling (modes fan_in /
fan_out / fan_avg, distributions truncated_normal (alias normal) / untruncated_normal /
uniform), glorot_*, he_*, lecun_*, orthogonal.

Fans follow Keras: a dense kernel ``(in, out)`` has ``fan_in = in``, ``fan_out = out``; a
conv kernel ``(kh, kw, c_in, c_out)`` has ``fan_in = kh*kw*c_in``, ``fan_out = kh*kw*c_out``.
Normal variants draw from a normal truncated at 2 standard deviations and rescale the
standard deviation by 0.8796... so that the truncated distribution has the intended
variance (Keras's ``VarianceScaling(distribution='truncated_normal')``).
Unseeded initializers draw from :func:`fastcnn.utils.get_rng` (see ``set_random_seed``); a
seeded one gives the same values at every call (as Keras's integer seeds). NumPy's and
TensorFlow's generators differ, so a seed gives other numbers than in Keras: the
distributions, bounds and (for orthogonal) the properties are what match.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import utils

# Standard deviation of a unit normal truncated to [-2, 2] (Keras's constant).
_TRUNCATED_STD = 0.87962566103423978


def compute_fans(shape, input_axes=None, output_axes=None):
    shape = tuple(shape)
    if input_axes is not None and output_axes is not None:
        return (math.prod(shape[a] for a in input_axes),
                math.prod(shape[a] for a in output_axes))
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


def _rng(seed):
    return utils.get_rng() if seed is None else np.random.default_rng(seed)


def _real(value, name):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


class Constant(Initializer):
    """Every value ``value`` (a number, as Keras)."""

    def __init__(self, value=0.0):
        self.value = _real(value, "value")

    def __call__(self, shape, dtype="float32"):
        return np.full(shape, self.value, dtype=dtype)

    def get_config(self):
        return {"value": self.value}


class Identity(Initializer):
    """``gain * eye(rows, cols)`` (2-D shapes only)."""

    def __init__(self, gain=1.0):
        self.gain = _real(gain, "gain")

    def __call__(self, shape, dtype="float32"):
        shape = tuple(shape)
        if len(shape) != 2:
            raise ValueError(f"Identity matrix initializer can only be used for 2D matrices. "
                             f"Received: shape={shape} of rank {len(shape)}.")
        return (self.gain * np.eye(*shape)).astype(dtype)

    def get_config(self):
        return {"gain": self.gain}


class RandomNormal(Initializer):
    """Normal samples of ``mean`` and ``stddev`` (Keras's defaults 0 and 0.05)."""

    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean = _real(mean, "mean")
        self.stddev = _real(stddev, "stddev")
        self.seed = utils.check_seed(seed, allow_none=True)

    def __call__(self, shape, dtype="float32"):
        values = _rng(self.seed).normal(self.mean, self.stddev, size=shape)
        return values.astype(dtype, copy=False)

    def get_config(self):
        return {"seed": self.seed, "mean": self.mean, "stddev": self.stddev}


class TruncatedNormal(RandomNormal):
    """Normal samples of ``mean`` and ``stddev`` (defaults 0 and 0.05), those more than
    two standard deviations from the mean drawn again (the standard deviation is not
    rescaled: Keras's ``TruncatedNormal``)."""

    def __call__(self, shape, dtype="float32"):
        values = _truncated_normal(_rng(self.seed), shape) * self.stddev + self.mean
        return values.astype(dtype, copy=False)


class RandomUniform(Initializer):
    """Uniform samples in ``[minval, maxval)`` (Keras's defaults -0.05 and 0.05)."""

    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval = _real(minval, "minval")
        self.maxval = _real(maxval, "maxval")
        if self.maxval < self.minval:
            raise ValueError(f"maxval ({maxval!r}) must be >= minval ({minval!r})")
        self.seed = utils.check_seed(seed, allow_none=True)

    def __call__(self, shape, dtype="float32"):
        values = _rng(self.seed).uniform(self.minval, self.maxval, size=shape)
        return values.astype(dtype, copy=False)

    def get_config(self):
        return {"seed": self.seed, "minval": self.minval, "maxval": self.maxval}


class VarianceScaling(Initializer):
    """Keras's VarianceScaling: variance ``scale / fan`` with fan per ``mode``; samples
    from a normal truncated at two standard deviations whose standard deviation is
    divided by 0.87962566103423978 (``'truncated_normal'``, alias ``'normal'``), a plain
    normal (``'untruncated_normal'``) or ``uniform(-sqrt(3 var), sqrt(3 var))``."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None,
                 input_axes=None, output_axes=None):
        if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
        dist = distribution.lower() if isinstance(distribution, str) else distribution
        if dist == "normal":
            dist = "truncated_normal"
        if dist not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(
                f"distribution must be 'truncated_normal' (or 'normal'), "
                f"'untruncated_normal' or 'uniform', got {distribution!r}"
            )
        self.scale = float(scale)
        self.mode = mode
        self.distribution = dist
        self.seed = utils.check_seed(seed, allow_none=True)
        self.input_axes = None if input_axes is None else [int(a) for a in input_axes]
        self.output_axes = None if output_axes is None else [int(a) for a in output_axes]

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape, self.input_axes, self.output_axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, fan)
        rng = _rng(self.seed)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            values = rng.uniform(-limit, limit, size=shape)
        elif self.distribution == "untruncated_normal":
            values = rng.standard_normal(size=shape) * math.sqrt(variance)
        else:
            std = math.sqrt(variance) / _TRUNCATED_STD
            values = _truncated_normal(rng, shape) * std
        return values.astype(dtype, copy=False)

    def get_config(self):
        config = {"scale": self.scale, "mode": self.mode,
                  "distribution": self.distribution, "seed": self.seed}
        if self.input_axes is not None or self.output_axes is not None:
            config.update(input_axes=self.input_axes, output_axes=self.output_axes)
        return config


class Orthogonal(Initializer):
    """Keras's Orthogonal: the Q of the QR decomposition of a normal matrix of shape
    ``(max(rows, cols), min(rows, cols))`` (rows = the product of all but the last
    dimension), its columns' signs set by ``diag(R)``, transposed when rows < cols, times
    ``gain``: orthonormal columns (or rows) for shapes of rank >= 2."""

    def __init__(self, gain=1.0, seed=None):
        self.gain = _real(gain, "gain")
        self.seed = utils.check_seed(seed, allow_none=True)

    def __call__(self, shape, dtype="float32"):
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"The tensor to initialize must be at least two-dimensional. "
                             f"Received: shape={shape} of rank {len(shape)}.")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = _rng(self.seed).standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return (self.gain * q.reshape(shape)).astype(dtype, copy=False)

    def get_config(self):
        return {"seed": self.seed, "gain": self.gain}


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


class LecunUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class LecunNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


_BY_NAME = {
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_uniform": HeUniform,
    "he_normal": HeNormal,
    "lecun_uniform": LecunUniform,
    "lecun_normal": LecunNormal,
    "zeros": Zeros,
    "ones": Ones,
    "constant": Constant,
    "identity": Identity,
    "random_normal": RandomNormal,
    "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "orthogonal": Orthogonal,
}
# Keras's other spellings of the same classes (class names are accepted too, any case).
_ALIASES = {"normal": RandomNormal, "uniform": RandomUniform, "zero": Zeros, "one": Ones,
            "identityinitializer": Identity, "orthogonalinitializer": Orthogonal}
_ALIASES.update({cls.__name__.lower(): cls for cls in _BY_NAME.values()})
KNOWN = tuple(_BY_NAME)


def get(identifier, *, argument="initializer") -> Initializer:
    """An Initializer from a name (case-insensitive) or an Initializer instance."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower()) or _ALIASES.get(identifier.lower())
        if cls is not None:
            return cls()
    raise ValueError(
        f"{argument} must be one of {list(KNOWN)} or a fastcnn.initializers.Initializer, "
        f"got {identifier!r}"
    )
