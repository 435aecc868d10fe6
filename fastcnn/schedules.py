"""Learning-rate schedules with Keras 3's names, arguments, defaults and formulas
(``keras.optimizers.schedules``; also reachable as ``fastcnn.optimizers.schedules``).

A schedule is a callable ``schedule(step) -> float``; an optimizer given one as its
``learning_rate`` uses ``schedule(optimizer.iterations)`` at each step (the step count
before the update, 0 at the first step, as Keras). Values are Python floats (Keras computes
them in float32 and so does this module, in Keras's order of operations: the values are
Keras's float32 numbers, returned as Python floats).

``get_config`` is plain JSON; :func:`serialize` / :func:`deserialize` turn a schedule into
``{"class_name": ..., "config": {...}}`` and back (only the classes of this module).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

F = np.float32   # Keras computes a schedule in the dtype of initial_learning_rate: float32

__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay",
           "PolynomialDecay", "InverseTimeDecay", "CosineDecay", "serialize", "deserialize"]


def _number(value, name, *, low=None, low_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) \
            or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    return value


def _step(step):
    try:
        step = float(step)
    except (TypeError, ValueError):
        raise ValueError(f"step must be a number, got {step!r}") from None
    if not math.isfinite(step) or step < 0:
        raise ValueError(f"step must be a finite number >= 0, got {step!r}")
    return step


class LearningRateSchedule:
    """Base class: ``__call__(step) -> float``, ``get_config``, ``from_config``."""

    def __call__(self, step) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def get_config(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not define get_config")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (the exponent floored
    with ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate",
                                             low=0)
        self.decay_steps = _number(decay_steps, "decay_steps", low=0, low_open=True)
        self.decay_rate = _number(decay_rate, "decay_rate", low=0)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = F(_step(step)) / F(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return float(F(self.initial_learning_rate) * np.power(F(self.decay_rate), p))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                f"The length of boundaries should be 1 less than the length of values. "
                f"Received: boundaries={boundaries} of length {len(boundaries)}, and "
                f"values={values} of length {len(values)}.")
        for i, b in enumerate(boundaries):
            _number(b, f"boundaries[{i}]")
        if any(b2 < b1 for b1, b2 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be increasing, got {boundaries}")
        for i, v in enumerate(values):
            _number(v, f"values[{i}]", low=0)
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step):
        step = _step(step)
        for b, v in zip(self.boundaries, self.values):
            if step <= b:
                return float(F(v))
        return float(F(self.values[-1]))

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values),
                "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """``(initial - end) * (1 - step / decay_steps) ** power + end``, the step held at
    ``decay_steps`` (or, with ``cycle``, ``decay_steps`` multiplied by
    ``ceil(step / decay_steps)``)."""

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001,
                 power=1.0, cycle=False, name="PolynomialDecay"):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate",
                                             low=0)
        self.decay_steps = _number(decay_steps, "decay_steps", low=0, low_open=True)
        self.end_learning_rate = _number(end_learning_rate, "end_learning_rate", low=0)
        self.power = _number(power, "power")
        self.cycle = bool(cycle)
        self.name = name

    def __call__(self, step):
        step = F(_step(step))
        decay_steps = F(self.decay_steps)
        if self.cycle:
            multiplier = F(1) if step == 0 else np.ceil(step / F(self.decay_steps))
            decay_steps = decay_steps * multiplier
        else:
            step = min(step, decay_steps)
        p = step / decay_steps
        end = F(self.end_learning_rate)
        return float((F(self.initial_learning_rate) - end) * np.power(F(1) - p, F(self.power))
                     + end)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "end_learning_rate": self.end_learning_rate,
                "power": self.power, "cycle": self.cycle, "name": self.name}


class InverseTimeDecay(LearningRateSchedule):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)`` (the ratio floored
    with ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="InverseTimeDecay"):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate",
                                             low=0)
        self.decay_steps = _number(decay_steps, "decay_steps", low=0, low_open=True)
        self.decay_rate = _number(decay_rate, "decay_rate", low=0)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = F(_step(step)) / F(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return float(F(self.initial_learning_rate) / (F(1) + F(self.decay_rate) * p))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay from ``initial_learning_rate`` (or, with ``warmup_target``, a linear
    warm-up from it to ``warmup_target`` over ``warmup_steps``, then the decay from
    ``warmup_target``) to ``alpha`` times that rate over ``decay_steps``; held after."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate",
                                             low=0)
        self.decay_steps = _number(decay_steps, "decay_steps", low=0, low_open=True)
        self.alpha = _number(alpha, "alpha")
        self.name = name
        self.warmup_target = _number(warmup_target, "warmup_target", low=0, allow_none=True)
        self.warmup_steps = _number(warmup_steps, "warmup_steps", low=0)

    def _decay(self, step, decay_from):
        completed = step / F(self.decay_steps)
        cosine = F(0.5) * (F(1) + np.cos(F(math.pi) * completed))
        return decay_from * (F(1 - self.alpha) * cosine + F(self.alpha))

    def __call__(self, step):
        step = F(_step(step))
        initial, decay_steps = F(self.initial_learning_rate), F(self.decay_steps)
        if self.warmup_target is None:
            return float(self._decay(min(step, decay_steps), initial))
        target, warmup_steps = F(self.warmup_target), F(self.warmup_steps)
        step = min(step, decay_steps + warmup_steps)
        if step < warmup_steps:
            return float((target - initial) * (step / warmup_steps) + initial)
        return float(self._decay(step - warmup_steps, target))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay,
                                         PolynomialDecay, InverseTimeDecay, CosineDecay)}


def serialize(schedule) -> dict:
    """``{"class_name": ..., "config": {...}}`` (JSON-able; Keras's layout less ``module``)."""
    if type(schedule).__name__ not in _CLASSES or _CLASSES[type(schedule).__name__] \
            is not type(schedule):
        raise ValueError(
            f"only fastcnn's own schedules ({sorted(_CLASSES)}) can be serialized, got "
            f"{schedule!r}")
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config) -> LearningRateSchedule:
    """The inverse of :func:`serialize` (Keras's dicts with 'module' / 'registered_name'
    keys are accepted too)."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(f"a schedule must be {{'class_name': ..., 'config': {{...}}}}, got "
                         f"{config!r}")
    cls = _CLASSES.get(config.get("class_name"))
    if cls is None:
        raise ValueError(f"unknown schedule class {config.get('class_name')!r} (known: "
                         f"{sorted(_CLASSES)})")
    try:
        return cls.from_config(dict(config["config"]))
    except TypeError as exc:
        raise ValueError(f"schedule {config['class_name']}: bad config "
                         f"{config['config']!r}: {exc}") from None
