"""SGD, Adam and RMSprop with Keras's (3.x) update rules, applied in place.

* Updates write into the weight arrays themselves (``w -= ...``), so every reference to a
  weight (layer.kernel, model.weights) sees the new value; no float64 temporaries are made
  for float32 weights (hyper-parameters are Python floats, which NumPy treats as weak).
* State is plain arrays, one per trainable weight and slot, plus an ``iterations`` count:
  :meth:`Optimizer.get_state` / :meth:`Optimizer.set_state` and ``get_config`` are what a
  save/load needs.
* The optimizer is bound to the list of weights it first updates (the model's trainable
  weights, in ``model.trainable_weights`` order); any other list raises ValueError.
* On a device backend (``fastcnn._device.scope``) weights and slots are device arrays and
  each step runs the backend's update kernel (``sgd_update``, ``adam_update``,
  ``rmsprop_update``), which does the same arithmetic in the same order.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import _device


def _hyper(value, name, low=0.0, high=math.inf, low_open=False, high_open=False):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    bad_low = value <= low if low_open else value < low
    bad_high = value >= high if high_open else value > high
    if bad_low or bad_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
    return value


class Optimizer:
    """Base class: binds to a list of weights on the first ``apply`` and keeps their state."""

    _SLOTS: tuple = ()  # names of the per-weight state arrays

    @property
    def supports_device(self) -> bool:
        """Whether this optimizer defines :meth:`_apply_device` (a model on a device
        backend refuses, at the start of fit, an optimizer that does not)."""
        return type(self)._apply_device is not Optimizer._apply_device

    def __init__(self, learning_rate, name):
        self.learning_rate = learning_rate
        self.name = name
        self.iterations = 0
        self._variables = None     # the list object the state was built for
        self._slots: dict[str, list] = {}
        self._scratch: list = []   # one work buffer per weight (no per-step allocation)

    @property
    def learning_rate(self) -> float:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        # Settable at any time (schedules, ReduceLROnPlateau); read at every step.
        self._learning_rate = _hyper(value, "learning_rate")

    # --------------------------------------------------------------- binding
    def build(self, variables) -> None:
        """Creates the state for ``variables`` (or checks that it matches them)."""
        variables = list(variables) if not isinstance(variables, list) else variables
        if self._variables is not None:
            same = len(variables) == len(self._variables) and all(
                a is b for a, b in zip(variables, self._variables))
            if not same:
                raise ValueError(
                    f"optimizer {self.name!r} already holds state for {len(self._variables)} "
                    f"weights of another model (or of an earlier set of trainable weights); "
                    f"use a new optimizer object"
                )
            self._variables = variables
            return
        for v in variables:
            if not (isinstance(v, np.ndarray) or _device.is_device_array(v)) \
                    or not np.issubdtype(v.dtype, np.floating):
                raise ValueError(f"optimizer variables must be float arrays, got {type(v)}")
        _device.check_same_kind(variables, "optimizer variables")
        # Slots live where the weights live (the device inside a device scope).
        self._slots = {s: [_device.zeros_like(v) for v in variables]
                       for s in self._active_slots()}
        self._scratch = [np.empty(v.shape, v.dtype) for v in variables]
        self._variables = variables

    def _active_slots(self):
        return self._SLOTS

    def apply(self, grads, variables) -> None:
        """One update step: ``variables[i]`` moves along ``-grads[i]`` (in place)."""
        if variables is not self._variables:
            self.build(variables)
        if len(grads) != len(variables):
            raise ValueError(
                f"got {len(grads)} gradients for {len(variables)} variables")
        self.iterations += 1
        if _device.check_same_kind(variables, "optimizer variables"):
            self._apply_device(_device.update_kernels(), grads, variables)
        else:
            self._apply(grads, variables)

    def apply_gradients(self, grads_and_vars) -> None:
        """Keras's spelling: ``apply_gradients(zip(grads, variables))``."""
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [v for _, v in pairs])

    def _apply(self, grads, variables) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _apply")

    def _apply_device(self, kernels, grads, variables) -> None:
        """The step on device arrays, through the device backend's update ``kernels``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no device update; train on a host backend")

    # ----------------------------------------------------------------- state
    def get_state(self) -> dict:
        """``{'iterations': int, 'slots': {slot: [arrays]}}`` (copies)."""
        return {"iterations": self.iterations,
                "slots": {k: [_device.host_copy(a) for a in v]
                          for k, v in self._slots.items()}}

    def set_state(self, state) -> None:
        """Restores :meth:`get_state`'s output; the optimizer must be built (same shapes)."""
        if self._variables is None:
            raise ValueError(f"optimizer {self.name!r} is not built; build(variables) first")
        slots = state["slots"]
        if set(slots) != set(self._slots):
            raise ValueError(f"state has slots {sorted(slots)}, expected {sorted(self._slots)}")
        for name, arrays in slots.items():
            mine = self._slots[name]
            if len(arrays) != len(mine) or any(
                    np.shape(a) != b.shape for a, b in zip(arrays, mine)):
                raise ValueError(
                    f"slot {name!r}: shapes {[np.shape(a) for a in arrays]} do not match "
                    f"{[b.shape for b in mine]}")
        for name, arrays in slots.items():
            for dst, src in zip(self._slots[name], arrays):
                _device.assign(dst, src)
        self.iterations = int(state["iterations"])

    def get_config(self) -> dict:
        return {"name": self.name, "learning_rate": self.learning_rate}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("name", None)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Keras: ``m = momentum*m - lr*g``; ``w += m`` (or ``w += momentum*m - lr*g`` with
    nesterov); without momentum ``w -= lr*g``."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="SGD"):
        super().__init__(learning_rate, name)
        self.momentum = _hyper(momentum, "momentum", 0.0, 1.0)
        self.nesterov = bool(nesterov)

    def _active_slots(self):
        return ("momentum",) if self.momentum > 0 else ()

    def _apply(self, grads, variables):
        lr, mu = self.learning_rate, self.momentum
        scratch = self._scratch
        if mu == 0.0 or "momentum" not in self._slots:
            for w, g, tmp in zip(variables, grads, scratch):
                np.multiply(g, lr, out=tmp)
                w -= tmp
            return
        for w, g, m, tmp in zip(variables, grads, self._slots["momentum"], scratch):
            np.multiply(g, lr, out=tmp)
            m *= mu
            m -= tmp
            if self.nesterov:
                w -= tmp
                np.multiply(m, mu, out=tmp)
                w += tmp
            else:
                w += m

    def _apply_device(self, kernels, grads, variables):
        lr, mu = self.learning_rate, self.momentum
        slots = self._slots.get("momentum") if mu > 0 else None
        for i, (w, g) in enumerate(zip(variables, grads)):
            kernels.sgd_update(w, g, None if slots is None else slots[i], lr,
                               mu if slots is not None else 0.0, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Keras's Adam (the paper's "epsilon hat" form):

    ``m += (g - m)(1 - beta_1)``, ``v += (g^2 - v)(1 - beta_2)``,
    ``w -= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)``.
    """

    _SLOTS = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, name="adam"):
        super().__init__(learning_rate, name)
        self.beta_1 = _hyper(beta_1, "beta_1", 0.0, 1.0, high_open=True)
        self.beta_2 = _hyper(beta_2, "beta_2", 0.0, 1.0, high_open=True)
        self.epsilon = _hyper(epsilon, "epsilon")
        self.amsgrad = bool(amsgrad)

    def _active_slots(self):
        return self._SLOTS + (("v_hat",) if self.amsgrad else ())

    def _apply(self, grads, variables):
        t = self.iterations
        b1, b2, eps = self.beta_1, self.beta_2, self.epsilon
        alpha = self.learning_rate * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        ms, vs = self._slots["m"], self._slots["v"]
        v_hats = self._slots.get("v_hat")
        for i, (w, g, tmp) in enumerate(zip(variables, grads, self._scratch)):
            m, v = ms[i], vs[i]
            np.subtract(g, m, out=tmp)
            tmp *= 1.0 - b1
            m += tmp
            np.multiply(g, g, out=tmp)
            tmp -= v
            tmp *= 1.0 - b2
            v += tmp
            if v_hats is not None:
                np.maximum(v_hats[i], v, out=v_hats[i])
                v = v_hats[i]
            np.sqrt(v, out=tmp)
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= alpha
            w -= tmp

    def _apply_device(self, kernels, grads, variables):
        ms, vs = self._slots["m"], self._slots["v"]
        v_hats = self._slots.get("v_hat")
        for i, (w, g) in enumerate(zip(variables, grads)):
            kernels.adam_update(w, g, ms[i], vs[i], self.learning_rate, self.beta_1,
                                self.beta_2, self.epsilon, self.iterations,
                                v_hat=None if v_hats is None else v_hats[i])

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class RMSprop(Optimizer):
    """Keras's RMSprop: ``v = rho*v + (1 - rho)*g^2``; ``w -= lr * g / sqrt(v + epsilon)``
    (``centered`` subtracts the squared running mean of g; ``momentum`` accumulates the
    increments)."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, name="rmsprop"):
        super().__init__(learning_rate, name)
        self.rho = _hyper(rho, "rho", 0.0, 1.0, high_open=True)
        self.momentum = _hyper(momentum, "momentum", 0.0, 1.0)
        self.epsilon = _hyper(epsilon, "epsilon")
        self.centered = bool(centered)

    def _active_slots(self):
        return (("velocity",) + (("average_gradient",) if self.centered else ())
                + (("momentum",) if self.momentum > 0 else ()))

    def _apply(self, grads, variables):
        lr, rho, eps, mu = self.learning_rate, self.rho, self.epsilon, self.momentum
        slots = self._slots
        for i, (w, g, tmp) in enumerate(zip(variables, grads, self._scratch)):
            vel = slots["velocity"][i]
            vel *= rho
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - rho
            vel += tmp
            if self.centered:
                avg = slots["average_gradient"][i]
                avg *= rho
                np.multiply(g, 1.0 - rho, out=tmp)
                avg += tmp
                np.multiply(avg, avg, out=tmp)
                np.subtract(vel, tmp, out=tmp)
                tmp += eps
            else:
                np.add(vel, eps, out=tmp)
            np.sqrt(tmp, out=tmp)
            np.divide(g, tmp, out=tmp)
            tmp *= lr
            if mu > 0:
                m = slots["momentum"][i]
                m *= mu
                m += tmp
                w -= m
            else:
                w -= tmp

    def _apply_device(self, kernels, grads, variables):
        slots = self._slots
        averages = slots.get("average_gradient") if self.centered else None
        moms = slots.get("momentum") if self.momentum > 0 else None
        for i, (w, g) in enumerate(zip(variables, grads)):
            kernels.rmsprop_update(
                w, g, slots["velocity"][i], None if averages is None else averages[i],
                None if moms is None else moms[i], self.learning_rate, self.rho,
                self.momentum if moms is not None else 0.0, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


_BY_NAME = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}
KNOWN = tuple(_BY_NAME)


def get(identifier) -> Optimizer:
    """An Optimizer from a name (case-insensitive, default hyper-parameters) or instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"optimizer must be one of {list(KNOWN)} (case-insensitive) or a "
        f"fastcnn.optimizers.Optimizer, got {identifier!r}"
    )
