"""Keras 3's optimizers (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax, Nadam, Lion)
with Keras's names, argument order, defaults and update rules, applied in place.

* Updates write into the weight arrays themselves (``w -= ...``), so every reference to a
  weight (layer.kernel, model.weights) sees the new value; no float64 temporaries are made
  for float32 weights (hyper-parameters are Python floats, which NumPy treats as weak).
* One step is Keras's ``apply``: the gradients are unscaled (``loss_scale_factor``) and
  clipped (``clipnorm`` per array, ``global_clipnorm`` over all, or ``clipvalue``; the
  caller's gradient arrays are never written), weight decay ``w -= w * weight_decay * lr``
  runs on every weight not excluded (:meth:`Optimizer.exclude_from_weight_decay`), then the
  optimizer's update, then the moving average of the weights (``use_ema``; overwritten into
  the weights every ``ema_overwrite_frequency`` steps), then each Variable's ``constraint``,
  and ``iterations`` goes up by one. The rate of a step is ``learning_rate`` (a number,
  a :class:`~fastcnn.schedules.LearningRateSchedule` called with ``iterations``, or a
  callable: called with no argument, as Keras does, or with ``iterations`` when it takes one).
* ``apply(grads, variables)`` / ``apply_gradients(zip(grads, variables))`` take arrays or
  :class:`fastcnn.Variable` objects (their arrays are updated in place).
* State is plain arrays, one per trainable weight and slot, plus an ``iterations`` count:
  :meth:`Optimizer.get_state` / :meth:`Optimizer.set_state` and ``get_config`` are what a
  save/load needs (Nadam's running product is recomputed from ``iterations``).
* The optimizer is bound to the list of weight arrays it first updates (the model's
  trainable weights, in ``model.trainable_weights`` order); any other list raises ValueError.
* On a device backend (``fastcnn._device.scope``) weights and slots are device arrays and
  each step runs the backend's update kernels (fastcnn.backends.cuda: ``sgd_update``,
  ``adam_update``, ... and the clipping, weight-decay and moving-average kernels), which do
  the same arithmetic in the same order.
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np

from . import _device, _extensions, schedules
from .autodiff import Tensor, value_of

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax",
           "Nadam", "Lion", "get", "serialize", "deserialize", "schedules"]


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


def _optional(value, name, **bounds):
    return None if value is None else _hyper(value, name, **bounds)


def _is_schedule_like(value):
    return isinstance(value, schedules.LearningRateSchedule) or (
        callable(value) and not isinstance(value, numbers.Real))


class Optimizer:
    """Base class: Keras's common arguments, the step (see the module doc), binding to a
    list of weights on the first ``apply`` and their state."""

    _SLOTS: tuple = ()      # names of the per-weight state arrays
    _SCRATCH: int = 1       # work buffers per weight the update needs
    _DEFAULT_LR = 0.001

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        if "lr" in kwargs:
            lr = kwargs.pop("lr")
            warnings.warn(
                f"{type(self).__name__}(lr=...) is the Keras 2 spelling; use "
                f"learning_rate=... (Keras 3)", DeprecationWarning, stacklevel=3)
            if not (isinstance(learning_rate, numbers.Real)
                    and learning_rate == self._DEFAULT_LR):
                raise ValueError(f"give learning_rate or lr (deprecated), not both: got "
                                 f"learning_rate={learning_rate!r} and lr={lr!r}")
            learning_rate = lr
        if kwargs.pop("decay", None) is not None:
            warnings.warn("Argument `decay` is no longer supported and will be ignored "
                          "(Keras 3); use a schedule from fastcnn.optimizers.schedules",
                          UserWarning, stacklevel=3)
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        if isinstance(weight_decay, str) and name is None:
            # fastcnn's earlier base signature Optimizer(learning_rate, name)
            name, weight_decay = weight_decay, None
        self.name = name if name is not None else self._default_name()
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.weight_decay = _optional(weight_decay, "weight_decay")
        self.clipnorm = _optional(clipnorm, "clipnorm", low_open=True)
        self.clipvalue = _optional(clipvalue, "clipvalue", low_open=True)
        self.global_clipnorm = _optional(global_clipnorm, "global_clipnorm", low_open=True)
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}")
        self.use_ema = bool(use_ema)
        self.ema_momentum = _hyper(ema_momentum, "ema_momentum", 0.0, 1.0)
        if ema_overwrite_frequency is not None and (
                not isinstance(ema_overwrite_frequency, numbers.Integral)
                or isinstance(ema_overwrite_frequency, bool) or ema_overwrite_frequency < 1):
            raise ValueError(f"ema_overwrite_frequency must be an integer >= 1 or None, got "
                             f"{ema_overwrite_frequency!r}")
        self.ema_overwrite_frequency = (None if ema_overwrite_frequency is None
                                        else int(ema_overwrite_frequency))
        self.loss_scale_factor = _optional(loss_scale_factor, "loss_scale_factor",
                                           low_open=True)
        if gradient_accumulation_steps is not None:
            raise ValueError(
                f"gradient_accumulation_steps={gradient_accumulation_steps!r}: fastcnn's "
                f"optimizers do not accumulate gradients (leave it None, or use a larger "
                f"batch)")
        self.gradient_accumulation_steps = None
        self._learning_rate = None
        self.learning_rate = learning_rate
        self.iterations = 0
        self._variables = None     # the list object the state was built for
        self._slots: dict[str, list] = {}
        self._scratch: list = []   # work buffers per weight (no per-step allocation)
        self._gbuf: list = []      # processed (unscaled / clipped) gradients
        self._constraints: list = []
        self._var_names: list = []
        self._exclude_ids: set = set()
        self._exclude_names: tuple = ()
        self._decay_mask = None

    @classmethod
    def _default_name(cls):
        return cls.__name__.lower()

    @property
    def supports_device(self) -> bool:
        """Whether this optimizer defines a device update (a model on a device backend
        refuses, at the start of fit, an optimizer that does not)."""
        return type(self)._update_device is not Optimizer._update_device

    # --------------------------------------------------------- learning rate
    @property
    def learning_rate(self) -> float:
        """The rate of the next step (a schedule's value at ``iterations``)."""
        return self._rate_at(self.iterations)

    @learning_rate.setter
    def learning_rate(self, value):
        # Settable at any time (ReduceLROnPlateau, LearningRateScheduler); read every step.
        if _is_schedule_like(value):
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            raise TypeError(
                "This optimizer was created with a `LearningRateSchedule` object as its "
                "`learning_rate` constructor argument, hence its learning rate is not "
                "settable. If you need the learning rate to be settable, you should "
                "instantiate the optimizer with a float `learning_rate` argument.")
        self._learning_rate = _hyper(value, "learning_rate")

    def _rate_at(self, step) -> float:
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            value = lr(step)
        elif callable(lr):
            value = lr(step) if _takes_an_argument(lr) else lr()
        else:
            return lr
        value = value_of(value)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the learning_rate callable {lr!r} returned {value!r}, not a "
                             f"number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"the learning_rate schedule {lr!r} gave {value!r} at step "
                             f"{step}; a rate must be a finite number >= 0")
        return value

    # --------------------------------------------------------------- binding
    @staticmethod
    def _unwrap(variables):
        """(list of arrays, constraints, names) of a list of arrays or Variables; a list of
        plain arrays is returned as it is (its identity is the binding)."""
        if isinstance(variables, list) and not any(isinstance(v, Tensor) for v in variables):
            return variables, None, None
        variables = list(variables)
        arrays = [value_of(v) for v in variables]
        constraints = [getattr(v, "constraint", None) for v in variables]
        names = [getattr(v, "name", None) for v in variables]
        return arrays, constraints, names

    def build(self, variables) -> None:
        """Creates the state for ``variables`` (arrays or Variables; or checks that the state
        matches them: the same arrays, by identity)."""
        arrays, constraints, names = self._unwrap(variables)
        self._bind(arrays, constraints, names)

    def _bind(self, variables, constraints, names):
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
            if constraints is not None:
                self._constraints = constraints
            return
        for v in variables:
            if not (isinstance(v, np.ndarray) or _device.is_device_array(v)) \
                    or not np.issubdtype(v.dtype, np.floating):
                raise ValueError(f"optimizer variables must be float arrays or "
                                 f"fastcnn.Variable objects, got {type(v)}")
        _device.check_same_kind(variables, "optimizer variables")
        # Slots live where the weights live (the device inside a device scope).
        self._slots = {s: [self._new_slot(s, v) for v in variables]
                       for s in self._active_slots()}
        self._scratch = [[np.empty(v.shape, v.dtype) for _ in range(self._SCRATCH)]
                         for v in variables]
        self._gbuf = [None] * len(variables)
        self._constraints = constraints if constraints is not None else [None] * len(variables)
        self._var_names = names if names is not None else [None] * len(variables)
        self._decay_mask = [id(v) not in self._exclude_ids and not (
            n is not None and any(p in n for p in self._exclude_names))
            for v, n in zip(variables, self._var_names)]
        self._variables = variables

    def _new_slot(self, name, v):
        slot = _device.zeros_like(v)
        init = self._slot_initial_value(name)
        if init:
            _device.assign(slot, init)
        return slot

    def _slot_initial_value(self, name) -> float:
        return 0.0

    def _active_slots(self):
        return self._SLOTS + (("average",) if self.use_ema else ())

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Keras's: no weight decay for the arrays (or Variables) of ``var_list``, nor for
        Variables whose name contains one of ``var_names``; before the first step only."""
        if self._variables is not None:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before "
                             "the optimizer is built.")
        self._exclude_ids = {id(value_of(v)) for v in (var_list or ())}
        self._exclude_names = tuple(var_names or ())

    # ------------------------------------------------------------------ step
    def apply(self, grads, variables=None) -> None:
        """One update step: ``variables[i]`` moves along ``-grads[i]`` (in place); without
        ``variables``, the ones the optimizer is built for (Keras's ``apply(grads)``)."""
        if variables is None:
            if self._variables is None:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be "
                    "built on a list of variables. Call `optimizer.build(trainable_variables)` "
                    "first.")
            variables = self._variables
        if variables is self._variables and self._plain_host_step(grads, variables):
            return
        arrays, constraints, names = self._unwrap(variables)
        grads = [None if g is None else value_of(g) for g in grads]
        # The lists are checked against each other before anything is bound or updated.
        if len(grads) != len(arrays):
            raise ValueError(
                f"got {len(grads)} gradients for {len(arrays)} variables; pass one gradient "
                f"per variable (tape.gradient(loss, variables) returns them in order)")
        for i, (g, w) in enumerate(zip(grads, arrays) if arrays is not self._variables
                                   else ()):   # a new list: checked before it is bound
            if g is not None and tuple(np.shape(g)) != tuple(w.shape):
                raise ValueError(
                    f"gradient {i} has shape {tuple(np.shape(g))}, but variable {i} has shape "
                    f"{tuple(w.shape)}; gradients and variables must be in the same order")
        if arrays is not self._variables:
            self._bind(arrays, constraints, names)
        elif constraints is not None:
            self._constraints = constraints
        active = [i for i, g in enumerate(grads) if g is not None]
        if not active:
            raise ValueError("No gradients provided for any variable.")
        if len(active) < len(grads):
            warnings.warn(f"Gradients do not exist for variables "
                          f"{[i for i, g in enumerate(grads) if g is None]} (by position) "
                          f"when minimizing the loss; they are not updated", stacklevel=2)
        lr = self.learning_rate
        t = self.iterations + 1
        if _device.check_same_kind(arrays, "optimizer variables"):
            self._step_device(_device.update_kernels(), grads, arrays, active, lr, t)
        else:
            self._step_host(grads, arrays, active, lr, t)
        self._apply_constraints(arrays, active)
        self.iterations += 1

    def _processes_each_grad(self) -> bool:
        """Whether a gradient is unscaled, clipped by its own norm or values, or its weight
        decayed before ``_update`` (:meth:`_process_grad`, :meth:`_decay_one`)."""
        return (self.loss_scale_factor is not None or self.clipnorm is not None
                or self.clipvalue is not None or self.weight_decay is not None)

    def _plain_updates(self) -> bool:
        """Whether a step is nothing but ``_before_updates`` and one ``_update`` per weight
        (no loss scaling, clipping, weight decay, EMA, constraints or own ``_apply``): the
        condition of the plain step below."""
        return (self._per_weight_updates() and not self._processes_each_grad()
                and not self.use_ema)

    def _per_weight_updates(self) -> bool:
        """Whether a step can run one weight at a time, each as soon as its gradient exists
        (fastcnn.train_plan): everything but global_clipnorm (it needs every gradient's
        norm first), the optimizer's own constraints and a subclass's own ``_apply``. Loss
        scaling, clipnorm, clipvalue and weight decay act per weight (:meth:`_updater`),
        EMA after the last update."""
        return (self.global_clipnorm is None and type(self)._apply is Optimizer._apply
                and all(c is None for c in self._constraints))

    def _plain_host_step(self, grads, variables):
        """The common step (a model's own bound list of host arrays, every gradient an array
        of its variable's shape; no scaling, clipping, weight decay, EMA or constraints):
        the per-weight updates without the general path's bookkeeping. False when any of
        that does not hold (the general path then runs)."""
        if (not self._plain_updates() or len(grads) != len(variables)
                or _device.check_same_kind(variables, "optimizer variables")):
            return False
        for g, w in zip(grads, variables):
            if type(g) is not np.ndarray or g.shape != w.shape:
                return False
        lr = self.learning_rate
        t = self.iterations + 1
        self._before_updates(t, variables)
        update, scratch = self._update, self._scratch
        for i, (w, g) in enumerate(zip(variables, grads)):
            update(i, w, g, lr, t, scratch[i])
        self.iterations += 1
        return True

    def apply_gradients(self, grads_and_vars):
        """Keras's spelling: ``apply_gradients(zip(grads, variables))``; returns
        ``iterations``."""
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [v for _, v in pairs])
        return self.iterations

    # host
    def _step_host(self, grads, variables, active, lr, t):
        grads = self._process_grads_host(grads, variables, active)
        if type(self)._apply is not Optimizer._apply:
            # a subclass written for the earlier hook: one call with every pair
            self._apply([grads[i] for i in active], [variables[i] for i in active])
            return
        self._before_updates(t, variables)
        if self.weight_decay is not None:
            for i in active:
                self._decay_one(i, variables[i], lr)
        for i in active:
            self._update(i, variables[i], grads[i], lr, t, self._scratch[i])
        if self.use_ema:
            self._ema_host(variables)

    def _gbuffer(self, i, w):
        if self._gbuf[i] is None:
            self._gbuf[i] = np.empty(w.shape, w.dtype)
        return self._gbuf[i]

    def _process_grads_host(self, grads, variables, active):
        for i in active:
            g = grads[i]
            if getattr(g, "shape", None) != variables[i].shape and \
                    np.shape(g) != variables[i].shape:
                raise ValueError(f"gradient {i} has shape {np.shape(g)}, its variable "
                                 f"{variables[i].shape}")
        scale = self.loss_scale_factor
        if scale is None and self.clipnorm is None and self.global_clipnorm is None \
                and self.clipvalue is None:
            return grads          # nothing to scale or clip (the usual case)
        grads = list(grads)
        if self.clipnorm is not None or self.global_clipnorm is None:
            for i in active:   # each gradient on its own
                grads[i] = self._process_grad(i, grads[i], variables[i])
            return grads
        if scale is not None:
            for i in active:
                grads[i] = np.divide(grads[i], scale, out=self._gbuffer(i, variables[i]))
        f = variables[active[0]].dtype.type
        norm = _norm(f, [_device.sum_squares(grads[i]) for i in active])
        factor = _global_scale(f, norm, self.global_clipnorm)
        for i in active:
            grads[i] = np.multiply(grads[i], factor, out=self._gbuffer(i, variables[i]))
        return grads

    def _process_grad(self, i, g, w):
        """Gradient ``i`` unscaled (loss_scale_factor) and clipped by its own norm
        (clipnorm) or values (clipvalue): what needs no other gradient (global_clipnorm
        does: :meth:`_process_grads_host`)."""
        if self.loss_scale_factor is not None:
            g = np.divide(g, self.loss_scale_factor, out=self._gbuffer(i, w))
        if self.clipnorm is not None:
            f = w.dtype.type
            c, norm = f(self.clipnorm), _norm(f, [_device.sum_squares(g)])
            out = self._gbuffer(i, w)
            np.multiply(g, c, out=out)
            out /= max(norm, c)
            return out
        if self.clipvalue is not None and self.global_clipnorm is None:
            v = self.clipvalue
            return np.clip(g, -v, v, out=self._gbuffer(i, w))
        return g

    def _decay_one(self, i, w, lr):
        """Decoupled weight decay of variable ``i`` (before its update): ``w -= lr*wd*w``."""
        if self._decay_mask[i]:
            tmp = self._scratch[i][0]
            np.multiply(w, self.weight_decay, out=tmp)
            tmp *= lr
            w -= tmp

    def _ema_host(self, variables):
        averages = self._slots["average"]
        overwrite = self._ema_overwrite_now()
        for w, avg, scratch in zip(variables, averages, self._scratch):
            f = w.dtype.type
            mom = f(self.ema_momentum if self.iterations != 0 else 0.0)
            avg *= mom
            tmp = np.multiply(w, f(1) - mom, out=scratch[0])
            avg += tmp
            if overwrite:
                w[...] = avg

    def _ema_overwrite_now(self):
        freq = self.ema_overwrite_frequency
        return bool(freq) and (self.iterations + 1) % freq == 0

    def _apply(self, grads, variables) -> None:
        """Earlier hook for a subclass's whole host step (``_update`` is the per-weight one
        of fastcnn's optimizers); used when a subclass defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define _apply")

    def _step_scalars(self, key, compute, *args):
        """``compute(*args)``, computed once per ``key`` (a step's scalars are the same for
        every weight of a dtype)."""
        cache = self.__dict__.setdefault("_scalar_cache", {})
        value = cache.get(key)
        if value is None:
            if len(cache) > 8:
                cache.clear()
            value = cache[key] = compute(*args)
        return value

    def _before_updates(self, t, variables):
        """Per-step work before the per-weight updates (Nadam's running product)."""

    def _updater(self, i):
        """``update(g, lr, t)``: :meth:`_update` of bound variable ``i`` with what stays the
        same between steps looked up once (fastcnn.train_plan calls one per weight, as
        soon as its gradient exists). Valid while ``self._slots`` is the same dict."""
        w, scratch, update = self._variables[i], self._scratch[i], self._update

        def run(g, lr, t):
            if self._processes_each_grad():
                g = self._process_grad(i, g, w)
                if self.weight_decay is not None:
                    self._decay_one(i, w, lr)
            update(i, w, g, lr, t, scratch)
        return run

    def _update(self, i, w, g, lr, t, scratch):
        raise NotImplementedError(f"{type(self).__name__} does not define _update")

    # device
    def _step_device(self, kernels, grads, variables, active, lr, t):
        grads = self._process_grads_device(kernels, grads, variables, active)
        self._before_updates(t, variables)
        if self.weight_decay is not None:
            for i in active:
                if self._decay_mask[i]:
                    kernels.weight_decay_update(variables[i], self.weight_decay, lr)
        for i in active:
            self._update_device(kernels, i, variables[i], grads[i], lr, t)
        if self.use_ema:
            overwrite = self._ema_overwrite_now()
            mom = self.ema_momentum if self.iterations != 0 else 0.0
            for w, avg in zip(variables, self._slots["average"]):
                kernels.ema_update(avg, w, mom, overwrite)

    def _process_grads_device(self, kernels, grads, variables, active):
        grads = list(grads)
        if self.loss_scale_factor is not None:
            for i in active:
                grads[i] = kernels.scale_gradient(grads[i], 1.0, self.loss_scale_factor)
        if self.clipnorm is not None:
            for i in active:
                f = variables[i].dtype.type
                c, norm = f(self.clipnorm), _norm(f, [kernels.sum_squares(grads[i])])
                grads[i] = kernels.scale_gradient(grads[i], c, max(norm, c))
        elif self.global_clipnorm is not None:
            f = variables[active[0]].dtype.type
            norm = _norm(f, [kernels.sum_squares(grads[i]) for i in active])
            factor = _global_scale(f, norm, self.global_clipnorm)
            for i in active:
                grads[i] = kernels.scale_gradient(grads[i], factor, 1.0)
        elif self.clipvalue is not None:
            for i in active:
                grads[i] = kernels.clip_gradient(grads[i], self.clipvalue)
        return grads

    def _update_device(self, kernels, i, w, g, lr, t):
        """The step of weight ``i`` on device arrays, through the device backend's update
        ``kernels``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no device update; train on a host backend")

    def _apply_constraints(self, variables, active):
        for i in active:
            c = self._constraints[i] if i < len(self._constraints) else None
            if c is None:
                continue
            w = variables[i]
            host = _device.host_copy(w) if _device.is_device_array(w) else w
            new = np.asarray(value_of(c(host)))
            if new.shape != tuple(w.shape):
                raise ValueError(f"the constraint {c!r} of variable {i} returned shape "
                                 f"{new.shape}, expected {tuple(w.shape)}")
            _device.assign(w, new.astype(w.dtype, copy=False))

    # ------------------------------------------------------------------- EMA
    def finalize_variable_values(self, var_list=None):
        """Keras's end-of-fit step: with ``use_ema``, the weights take their moving
        averages (nothing happens before the first step or without EMA)."""
        if not self.use_ema or self._variables is None or self.iterations == 0:
            return
        if var_list is not None:
            arrays = self._unwrap(var_list)[0]
            if len(arrays) != len(self._variables):
                raise ValueError(
                    f"The length of model variables ({len(arrays)}) to override does not "
                    f"match the length of model variables stored in the optimizer "
                    f"({len(self._variables)}). Please check if the optimizer was called on "
                    f"your model.")
        else:
            arrays = self._variables
        for w, avg in zip(arrays, self._slots["average"]):
            _device.assign(w, avg)

    def swap_ema_weights(self):
        """Exchanges the weights and their moving averages in place (Keras's
        ``SwapEMAWeights`` callback does this around evaluation); twice is a no-op."""
        if not self.use_ema or self._variables is None:
            raise ValueError(f"optimizer {self.name!r} keeps no moving averages (use_ema="
                             f"{self.use_ema}, built={self._variables is not None})")
        for w, avg in zip(self._variables, self._slots["average"]):
            tmp = _device.host_copy(w)
            _device.assign(w, avg)
            _device.assign(avg, tmp)

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

    @property
    def variables(self) -> list:
        """The state arrays (Keras's ``optimizer.variables``, less the iteration count)."""
        return [a for arrays in self._slots.values() for a in arrays]

    def get_config(self) -> dict:
        lr = self._learning_rate
        if isinstance(lr, schedules.LearningRateSchedule):
            lr = schedules.serialize(lr)
        elif callable(lr):
            raise ValueError(
                f"optimizer {self.name!r}: its learning_rate {lr!r} is a plain callable, which "
                f"a config cannot hold; use a schedule of fastcnn.optimizers.schedules")
        return {"name": self.name, "learning_rate": lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue,
                "use_ema": self.use_ema, "ema_momentum": self.ema_momentum,
                "ema_overwrite_frequency": self.ema_overwrite_frequency,
                "loss_scale_factor": self.loss_scale_factor,
                "gradient_accumulation_steps": self.gradient_accumulation_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)

    def __repr__(self):
        try:
            config = self.get_config()
        except ValueError:
            config = {"learning_rate": self._learning_rate}
        args = ", ".join(f"{k}={v!r}" for k, v in config.items()
                         if k != "name" and not (v is None or (k == "use_ema" and not v)
                                                 or (k == "ema_momentum"
                                                     and not self.use_ema)))
        return f"{type(self).__name__}({args})"


# Adam's and RMSprop's steps in one pass (csrc/optimizer_kernels.h via the elementwise
# extension) where the Cython extension is built; their _update's NumPy lines define them.
_fused_adam = getattr(_extensions.modules.get("elementwise"), "adam_update", None)
_fused_rmsprop = getattr(_extensions.modules.get("elementwise"), "rmsprop_update", None)


def _adam_alpha(f, lr, beta_1, beta_2, t):
    """Keras's ``lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``, in the weights' dtype ``f``
    as Keras computes it."""
    return f(lr) * np.sqrt(f(1) - f(beta_2) ** f(t)) / (f(1) - f(beta_1) ** f(t))


def _takes_an_argument(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)


def _norm(f, squared_sums):
    """``sqrt(sum(squared_sums))`` in dtype ``f``, as Keras (float32 for float32 weights)."""
    total = f(0)
    for x in squared_sums:
        total = total + f(x)
    return np.sqrt(total)


def _global_scale(f, norm, clip_norm):
    """Keras's ``clip_by_global_norm`` factor in dtype ``f`` (NaN when the norm is not
    finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = f(clip_norm) * min(f(1) / norm, f(1.0 / clip_norm))
        return scale + (norm - norm)


class SGD(Optimizer):
    """Keras: ``m = momentum*m - lr*g``; ``w += m`` (or ``w += momentum*m - lr*g`` with
    nesterov); without momentum ``w -= lr*g``."""

    _DEFAULT_LR = 0.01
    _SCRATCH = 2

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.momentum = _hyper(momentum, "momentum", 0.0, 1.0)
        self.nesterov = bool(nesterov)

    def _active_slots(self):
        return (("momentum",) if self.momentum > 0 else ()) + super()._active_slots()

    def _update(self, i, w, g, lr, t, scratch):
        tmp = scratch[0]
        np.multiply(g, lr, out=tmp)
        if self.momentum == 0.0:
            w -= tmp
            return
        mu, m = self.momentum, self._slots["momentum"][i]
        m *= mu
        m -= tmp
        if self.nesterov:
            step = np.multiply(m, mu, out=scratch[1])
            step -= tmp
            w += step
        else:
            w += m

    def _update_device(self, kernels, i, w, g, lr, t):
        mu = self.momentum
        m = self._slots["momentum"][i] if mu > 0 else None
        kernels.sgd_update(w, g, m, lr, mu, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Keras's Adam (the paper's "epsilon hat" form):

    ``m += (g - m)(1 - beta_1)``, ``v += (g^2 - v)(1 - beta_2)``,
    ``w -= lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)``.
    """

    _SLOTS = ("m", "v")
    _SCRATCH = 2

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.beta_1 = _hyper(beta_1, "beta_1", 0.0, 1.0, high_open=True)
        self.beta_2 = _hyper(beta_2, "beta_2", 0.0, 1.0, high_open=True)
        self.epsilon = _hyper(epsilon, "epsilon")
        self.amsgrad = bool(amsgrad)

    def _active_slots(self):
        return self._SLOTS + (("v_hat",) if self.amsgrad else ()) + super()._active_slots()

    def _before_updates(self, t, variables):
        # The step's alpha, once per dtype (the per-weight updates only look it up).
        lr = self.learning_rate
        self._alphas = {}
        for w in variables:
            if w.dtype not in self._alphas:
                self._alphas[w.dtype] = _adam_alpha(w.dtype.type, lr, self.beta_1, self.beta_2,
                                                    t)

    def _updater(self, i):
        general = super()._updater(i)
        w, m, v = self._variables[i], self._slots["m"][i], self._slots["v"][i]
        if _fused_adam is None or self.amsgrad or not (
                w.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
            return general
        # _update's compiled pass on flat views made once (the same call, the same bits)
        wf, mf, vf, dtype = w.reshape(-1), m.reshape(-1), v.reshape(-1), w.dtype

        def run(g, lr, t):
            if g.dtype != dtype or not g.flags.c_contiguous or self._processes_each_grad():
                return general(g, lr, t)
            _fused_adam(wf, g.reshape(-1), mf, vf, 1.0 - self.beta_1, 1.0 - self.beta_2,
                        self.epsilon, self._alphas[dtype])
        return run

    def _update(self, i, w, g, lr, t, scratch):
        b1, b2, eps = self.beta_1, self.beta_2, self.epsilon
        alpha = self._alphas[w.dtype]
        slots = self._slots
        m, v = slots["m"][i], slots["v"][i]
        if (_fused_adam is not None and not self.amsgrad and g.dtype == w.dtype
                and w.flags.c_contiguous and g.flags.c_contiguous
                and m.flags.c_contiguous and v.flags.c_contiguous):
            # The lines below in one compiled pass (bitwise equal, tested): at batch 1 the
            # ten NumPy passes cost more than the model's forward.
            _fused_adam(w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                        1.0 - b1, 1.0 - b2, eps, alpha)
            return
        tmp = scratch[0]
        np.subtract(g, m, out=tmp)
        tmp *= 1.0 - b1
        m += tmp
        np.multiply(g, g, out=tmp)
        tmp -= v
        tmp *= 1.0 - b2
        v += tmp
        if self.amsgrad:
            v_hat = self._slots["v_hat"][i]
            np.maximum(v_hat, v, out=v_hat)
            v = v_hat
        np.sqrt(v, out=tmp)
        tmp += eps
        np.divide(np.multiply(m, alpha, out=scratch[1]), tmp, out=tmp)
        w -= tmp

    def _update_device(self, kernels, i, w, g, lr, t):
        v_hat = self._slots["v_hat"][i] if self.amsgrad else None
        kernels.adam_update(w, g, self._slots["m"][i], self._slots["v"][i], lr, self.beta_1,
                            self.beta_2, self.epsilon, t, v_hat=v_hat)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Keras's AdamW: Adam with decoupled weight decay (``weight_decay=0.004``:
    ``w -= w * weight_decay * lr`` before each Adam step)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: "
                             "weight_decay=None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
                         ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)


class RMSprop(Optimizer):
    """Keras's RMSprop: ``v = rho*v + (1 - rho)*g^2``; ``w -= lr * g / sqrt(v + epsilon)``
    (``centered`` subtracts the squared running mean of g; ``momentum`` accumulates the
    increments)."""

    _SCRATCH = 2

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.rho = _hyper(rho, "rho", 0.0, 1.0, high_open=True)
        self.momentum = _hyper(momentum, "momentum", 0.0, 1.0)
        self.epsilon = _hyper(epsilon, "epsilon")
        self.centered = bool(centered)

    def _active_slots(self):
        return (("velocity",) + (("average_gradient",) if self.centered else ())
                + (("momentum",) if self.momentum > 0 else ()) + super()._active_slots())

    def _update(self, i, w, g, lr, t, scratch):
        rho, eps, mu = self.rho, self.epsilon, self.momentum
        slots = self._slots
        vel = slots["velocity"][i]
        if (_fused_rmsprop is not None and mu == 0 and not self.centered
                and type(lr) is float and g.dtype == w.dtype and w.flags.c_contiguous
                and g.flags.c_contiguous and vel.flags.c_contiguous):
            # The lines below in one compiled pass (bitwise equal, tested): on the
            # transfer-learning head's 38.5M weights, seven NumPy passes cost ~100 ms.
            _fused_rmsprop(w.reshape(-1), g.reshape(-1), vel.reshape(-1), rho, 1.0 - rho, eps,
                           lr)
            return
        tmp = scratch[0]
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
        np.divide(np.multiply(g, lr, out=scratch[1]), tmp, out=tmp)
        if mu > 0:
            m = slots["momentum"][i]
            m *= mu
            m += tmp
            w -= m
        else:
            w -= tmp

    def _update_device(self, kernels, i, w, g, lr, t):
        slots = self._slots
        avg = slots["average_gradient"][i] if self.centered else None
        mom = slots["momentum"][i] if self.momentum > 0 else None
        kernels.rmsprop_update(w, g, slots["velocity"][i], avg, mom, lr, self.rho,
                               self.momentum if mom is not None else 0.0, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Keras's Adagrad: ``acc += g^2`` (from ``initial_accumulator_value``);
    ``w -= lr * g / sqrt(acc + epsilon)``."""

    _SLOTS = ("accumulator",)
    _SCRATCH = 2

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.initial_accumulator_value = _hyper(initial_accumulator_value,
                                                "initial_accumulator_value")
        self.epsilon = _hyper(epsilon, "epsilon")

    def _slot_initial_value(self, name):
        return self.initial_accumulator_value if name == "accumulator" else 0.0

    def _update(self, i, w, g, lr, t, scratch):
        tmp = scratch[0]
        acc = self._slots["accumulator"][i]
        np.multiply(g, g, out=tmp)
        acc += tmp
        np.add(acc, self.epsilon, out=tmp)
        np.sqrt(tmp, out=tmp)
        # (lr * g) / sqrt(acc + epsilon), as Keras orders it
        np.divide(np.multiply(g, lr, out=scratch[1]), tmp, out=tmp)
        w -= tmp

    def _update_device(self, kernels, i, w, g, lr, t):
        kernels.adagrad_update(w, g, self._slots["accumulator"][i], lr, self.epsilon)

    def get_config(self):
        return {**super().get_config(),
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


class Adadelta(Optimizer):
    """Keras's Adadelta: ``Eg = rho*Eg + (1-rho)*g^2``;
    ``d = -sqrt(Ed + eps) * g / sqrt(Eg + eps)``; ``Ed = rho*Ed + (1-rho)*d^2``;
    ``w += lr * d``."""

    _SLOTS = ("accumulated_grad", "accumulated_delta_var")
    _SCRATCH = 2

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.rho = _hyper(rho, "rho", 0.0, 1.0)
        self.epsilon = _hyper(epsilon, "epsilon")

    def _update(self, i, w, g, lr, t, scratch):
        tmp, delta = scratch
        rho, eps = self.rho, self.epsilon
        eg, ed = self._slots["accumulated_grad"][i], self._slots["accumulated_delta_var"][i]
        eg *= rho
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - rho
        eg += tmp
        np.add(ed, eps, out=delta)
        np.sqrt(delta, out=delta)
        delta *= g
        np.add(eg, eps, out=tmp)
        np.sqrt(tmp, out=tmp)
        np.divide(delta, tmp, out=delta)
        np.negative(delta, out=delta)
        ed *= rho
        np.multiply(delta, delta, out=tmp)
        tmp *= 1.0 - rho
        ed += tmp
        delta *= lr
        w += delta

    def _update_device(self, kernels, i, w, g, lr, t):
        kernels.adadelta_update(w, g, self._slots["accumulated_grad"][i],
                                self._slots["accumulated_delta_var"][i], lr, self.rho,
                                self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Adamax(Optimizer):
    """Keras's Adamax: ``m += (g - m)(1 - beta_1)``; ``u = max(beta_2*u, |g|)``;
    ``w -= lr * m / ((1 - beta_1^t) * (u + epsilon))``."""

    _SLOTS = ("momentum", "norm")
    _SCRATCH = 2

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.beta_1 = _hyper(beta_1, "beta_1", 0.0, 1.0, high_open=True)
        self.beta_2 = _hyper(beta_2, "beta_2", 0.0, 1.0)
        self.epsilon = _hyper(epsilon, "epsilon")

    def _update(self, i, w, g, lr, t, scratch):
        tmp = scratch[0]
        m, u = self._slots["momentum"][i], self._slots["norm"][i]
        np.subtract(g, m, out=tmp)
        tmp *= 1.0 - self.beta_1
        m += tmp
        u *= self.beta_2
        np.abs(g, out=tmp)
        np.maximum(u, tmp, out=u)
        np.add(u, self.epsilon, out=tmp)
        f = w.dtype.type
        tmp *= self._step_scalars(("bias", w.dtype, t, self.beta_1), lambda: f(1) - f(self.beta_1) ** f(t))
        # (lr * m) / ((1 - beta_1^t) * (u + epsilon)), as Keras orders it
        np.divide(np.multiply(m, lr, out=scratch[1]), tmp, out=tmp)
        w -= tmp

    def _update_device(self, kernels, i, w, g, lr, t):
        kernels.adamax_update(w, g, self._slots["momentum"][i], self._slots["norm"][i], lr,
                              self.beta_1, self.beta_2, self.epsilon, t)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Nadam(Optimizer):
    """Keras's Nadam: Adam with Nesterov momentum and the momentum schedule
    ``u_t = beta_1 * (1 - 0.5 * 0.96^t)`` (its running product is recomputed from
    ``iterations``, so it needs no saved state)."""

    _SLOTS = ("momentum", "velocity")
    _SCRATCH = 2

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name=None,
                 **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.beta_1 = _hyper(beta_1, "beta_1", 0.0, 1.0, high_open=True)
        self.beta_2 = _hyper(beta_2, "beta_2", 0.0, 1.0, high_open=True)
        self.epsilon = _hyper(epsilon, "epsilon")
        self._u_product = (0, None)   # (t, prod_{k<=t} u_k in the weights' dtype)

    def _before_updates(self, t, variables):
        # Keras keeps the product in a variable of the first weight's dtype, updated as
        # u_product * beta_1 * (1 - 0.5 * 0.96^t); here it is recomputed from iterations.
        f = variables[0].dtype.type if variables else np.float32
        done, product = self._u_product
        if done > t or product is None or type(product) is not f:
            done, product = 0, f(1)
        for k in range(done + 1, t + 1):
            product = product * f(self.beta_1) * (f(1) - f(0.5) * f(0.96) ** f(k))
        self._u_product = (t, product)

    def _coefficients(self, f, t):
        """(u_{t+1}, 1 - prod_{t+1}, 1 - u_t, 1 - prod_t, 1 - beta_2^t) in dtype ``f``."""
        b1, decay, product = f(self.beta_1), f(0.96), f(self._u_product[1])
        u_t = b1 * (f(1) - f(0.5) * decay ** f(t))
        u_t1 = b1 * (f(1) - f(0.5) * decay ** f(t + 1))
        return (u_t1, f(1) - product * u_t1, f(1) - u_t, f(1) - product,
                f(1) - f(self.beta_2) ** f(t))

    def _update(self, i, w, g, lr, t, scratch):
        tmp, m_hat = scratch
        f = w.dtype.type
        u_t1, d1, c_g, d2, bias2 = self._step_scalars(("nadam", w.dtype, t, self.beta_1, self.beta_2),
                                                      self._coefficients, f, t)
        m, v = self._slots["momentum"][i], self._slots["velocity"][i]
        np.subtract(g, m, out=tmp)
        tmp *= f(1) - f(self.beta_1)
        m += tmp
        np.multiply(g, g, out=tmp)
        tmp -= v
        tmp *= f(1) - f(self.beta_2)
        v += tmp
        np.multiply(m, u_t1, out=m_hat)
        m_hat /= d1
        np.multiply(g, c_g, out=tmp)
        tmp /= d2
        m_hat += tmp
        m_hat *= lr
        np.divide(v, bias2, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.epsilon
        np.divide(m_hat, tmp, out=tmp)
        w -= tmp

    def _update_device(self, kernels, i, w, g, lr, t):
        kernels.nadam_update(w, g, self._slots["momentum"][i], self._slots["velocity"][i],
                             lr, self.beta_1, self.beta_2, self.epsilon,
                             *self._coefficients(w.dtype.type, t))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Lion(Optimizer):
    """Keras's Lion: ``w -= lr * sign(beta_1*m + (1-beta_1)*g)``;
    ``m = beta_2*m + (1-beta_2)*g``."""

    _SLOTS = ("momentum",)
    _SCRATCH = 2

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
                 ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
                 gradient_accumulation_steps=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                         gradient_accumulation_steps, name, **kwargs)
        self.beta_1 = _hyper(beta_1, "beta_1", 0.0, 1.0, low_open=True)
        self.beta_2 = _hyper(beta_2, "beta_2", 0.0, 1.0)

    def _update(self, i, w, g, lr, t, scratch):
        tmp, tmp2 = scratch
        m = self._slots["momentum"][i]
        f = w.dtype.type
        b1, b2 = f(self.beta_1), f(self.beta_2)   # Keras: 1 - beta in the weights' dtype
        np.multiply(m, b1, out=tmp)
        np.multiply(g, f(1) - b1, out=tmp2)
        tmp += tmp2
        np.sign(tmp, out=tmp)
        tmp *= lr
        w -= tmp
        m *= b2
        np.multiply(g, f(1) - b2, out=tmp2)
        m += tmp2

    def _update_device(self, kernels, i, w, g, lr, t):
        kernels.lion_update(w, g, self._slots["momentum"][i], lr, self.beta_1, self.beta_2)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop,
            "adagrad": Adagrad, "adadelta": Adadelta, "adamax": Adamax, "nadam": Nadam,
            "lion": Lion}
KNOWN = tuple(_BY_NAME)


def serialize(optimizer) -> dict:
    """``{"class_name": ..., "config": {...}}`` (a schedule inside is serialized too)."""
    if not isinstance(optimizer, Optimizer) or _BY_NAME.get(type(optimizer).__name__.lower()) \
            is not type(optimizer):
        raise ValueError(f"only fastcnn's own optimizers ({sorted(_BY_NAME)}) can be "
                         f"serialized, got {optimizer!r}")
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config) -> Optimizer:
    """The inverse of :func:`serialize`."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(f"an optimizer must be {{'class_name': ..., 'config': {{...}}}}, got "
                         f"{config!r}")
    name = config.get("class_name")
    cls = _BY_NAME.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer class {name!r} (known: "
                         f"{sorted(c.__name__ for c in _BY_NAME.values())})")
    return cls.from_config(config["config"])


def get(identifier) -> Optimizer:
    """An Optimizer from a name (case-insensitive, default hyper-parameters), an instance
    or a serialized dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and "class_name" in identifier:
        return deserialize(identifier)
    raise ValueError(
        f"optimizer must be one of {list(KNOWN)} (case-insensitive) or a "
        f"fastcnn.optimizers.Optimizer, got {identifier!r}"
    )
