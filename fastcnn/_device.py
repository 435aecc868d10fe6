"""Device residency: on a device backend ('cuda'), a model's weights, optimizer state and
activations stay on the device for a whole fit / evaluate / predict call.

What the model does (a few lines in model.py)::

    with _device.scope(model):          # fit's training loop, evaluate, predict, *_on_batch
        x = _device.put(model, x)       # each batch, copied to the device once per step
        ...
        outputs = _device.to_host(y)    # what predict returns
        _device.assign(weight, values)  # set_weights (a device array refuses w[...] = v)

Inside a scope:

* every layer weight and optimizer slot is a device array: the scope copies them to the
  device at entry and swaps the device arrays in (layer attributes, ``layer.weights``, the
  optimizer's variables and slots, the model's cached training plan); at exit (an exception
  included) it copies the values back INTO the original host arrays and swaps those back,
  so every reference held outside (an optimizer binding, a user's ``layer.kernel``) stays
  valid and current;
* the backend's ops, given device weights, return device arrays; the optimizer runs the
  backend's update kernels; the loss value and the metrics read small host copies;
* ``get_weights`` / ``get_state`` (callbacks such as ModelCheckpoint) return host copies of
  the current values, and :func:`assign` writes into device arrays;
* a layer that cannot run on the device (the global poolings, Cropping2D, UpSampling2D, the
  dilated and transposed convolutions, ... whose NumPy code runs at the layer level), a
  regularizer or an optimizer without a device version makes the scope raise
  NotImplementedError at entry, naming it and the backend: nothing falls back to the host
  silently.

On a host backend every function here is a no-op, so model code calls them unconditionally.
"""
from __future__ import annotations

import contextlib
import sys
import threading

import numpy as np

from . import backends

_local = threading.local()

# The module that owns device arrays. Only fastcnn.backends.cuda makes them, and if it was
# never imported no fastcnn device array can exist, so nothing here imports numba.
_DEVICE_MODULE = "fastcnn.backends.cuda"


def _kernels():
    return sys.modules[_DEVICE_MODULE]


def is_device_array(a) -> bool:
    """True for a device array of a device backend (a numba CUDA array)."""
    module = sys.modules.get(_DEVICE_MODULE)
    return module is not None and module.is_device_array(a)


def to_host(a):
    """A NumPy array for a device array (a copy), anything else unchanged."""
    return a.copy_to_host() if is_device_array(a) else a


def host_copy(a) -> np.ndarray:
    """A fresh NumPy copy of a host or device array."""
    return a.copy_to_host() if is_device_array(a) else a.copy()


def assign(dst, src) -> None:
    """``dst[...] = src`` for a host or a device ``dst`` (a device array does not support
    ``[...]`` assignment: its values are replaced by a copy)."""
    if is_device_array(dst):
        src = to_host(src)
        dst.copy_to_device(np.ascontiguousarray(np.broadcast_to(src, tuple(dst.shape)),
                                                dtype=dst.dtype))
    else:
        dst[...] = src


def zeros_like(a):
    """Zeros of ``a``'s shape and dtype, on the device when ``a`` is there."""
    if is_device_array(a):
        return _kernels().zeros(tuple(a.shape), a.dtype)
    return np.zeros_like(a)


def like(reference, a):
    """``a`` (NumPy) moved to the device when ``reference`` is a device array."""
    return _kernels().to_device(a, "an array") if is_device_array(reference) else a


def multiply(a, b):
    """``a * b`` (element-wise, same shapes) on the host or on the device."""
    if is_device_array(a) or is_device_array(b):
        return _kernels().multiply(a, b)
    return a * b


def add_scaled(a, b, alpha):
    """``a + alpha * b`` as a new array, on the host or on the device."""
    if is_device_array(a) or is_device_array(b):
        return _kernels().add_scaled(a, b, alpha)
    return a + alpha * b


def sum_squares(a) -> float:
    """``sum(a ** 2)`` as a Python float (reduced on the device for a device array)."""
    if is_device_array(a):
        return _kernels().sum_squares(a)
    a = np.asarray(a)
    return float(np.vdot(a, a))


def update_kernels():
    """The device backend module whose in-place optimizer updates run on device arrays."""
    return _kernels()


def on_host(compute, backend, out, *args):
    """``compute(backend, out, *args) -> (loss, d_out)`` run on a host copy of a device
    ``out``, with ``d_out`` sent back to the device. For the probability-space losses: a few
    NumPy passes over the (N, K) model output, explicitly on the host."""
    loss, d = compute(backend, out.copy_to_host(), *args)
    return loss, _kernels().to_device(d, "a loss gradient")


def check_same_kind(arrays, what) -> bool:
    """True when every array is on the device, False when none is; else a clear error."""
    if _DEVICE_MODULE not in sys.modules:   # no device backend loaded: all on the host
        return False
    kinds = {is_device_array(a) for a in arrays}
    if len(kinds) > 1:
        raise TypeError(
            f"{what} mix device arrays and NumPy arrays; a model's arrays live either on "
            f"the device (inside a fit/evaluate/predict on a device backend) or on the host")
    return kinds == {True}


# ----------------------------------------------------------------------------- the scope


def _stack() -> list:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def put(model, x):
    """The batch ``x`` on the device while ``model`` is resident (copied once per step),
    else ``x`` as it is.

    A batch too large for the device raises MemoryError naming the batch size and the
    bytes asked for.
    """
    for residency in _stack():
        if residency.model is model:
            return residency.put(x)
    return x


_NO_SCOPE = contextlib.nullcontext()


def scope(model):
    """Keeps ``model``'s weights and optimizer state on the device for the block when the
    active backend is a device backend; a no-op otherwise (and when already inside a scope
    of the same model: fit's callbacks may call evaluate or predict). An unbuilt model has
    no weights to move: the model enters the scope after its data has built it."""
    backend = backends.current()
    if not getattr(backend.module, "DEVICE_RESIDENT", False) or not model.built or any(
            r.model is model for r in _stack()):
        return _NO_SCOPE   # (a generator's context costs ~3 us a batch-1 step)
    return _device_scope(model, backend)


@contextlib.contextmanager
def _device_scope(model, backend):
    residency = _Residency(model, backend)
    residency.enter()
    _stack().append(residency)
    try:
        yield
    finally:
        _stack().remove(residency)
        residency.exit()


def resident(model) -> bool:
    """True while ``model`` is inside a scope that keeps it on the device."""
    return any(r.model is model for r in _stack())


class _Residency:
    def __init__(self, model, backend):
        self.model = model
        self.backend = backend
        self.pairs: list = []   # (host array, its device copy)

    # ------------------------------------------------------------------ entry
    def enter(self):
        model = self.model
        self._check_model()
        hosts = [w for layer in model._leaf_layers() for w in layer.weights]
        if any(is_device_array(w) for w in hosts):
            raise RuntimeError(
                f"model {model.name!r} already has weights on the device outside a scope "
                f"(left there by an interrupted call?); this is a bug in fastcnn")
        opt = getattr(model, "optimizer", None)
        known = {id(w) for w in hosts}
        if opt is not None and opt._variables is not None and all(
                id(v) in known for v in opt._variables):
            hosts += [s for slots in opt._slots.values() for s in slots]
        module = self.backend.module
        # Every copy first: a full device raises here, before anything is swapped.
        devices = [module.to_device(h, f"weight of shape {h.shape}") for h in hosts]
        self.pairs = list(zip(hosts, devices))
        _swap(model, {id(h): d for h, d in self.pairs})

    def _check_model(self):
        """Everything that would have to compute on the host is refused here, at entry."""
        name = self.backend.name
        opt = getattr(self.model, "optimizer", None)
        if opt is not None and not getattr(opt, "supports_device", False):
            raise NotImplementedError(
                f"optimizer {opt!r} has no device update on backend {name!r}; use "
                f"fastcnn.optimizers.SGD, Adam or RMSprop, or a host backend")
        for layer in self.model._leaf_layers():
            if not getattr(layer, "runs_on_device", False):
                raise NotImplementedError(
                    f"layer {layer.name!r} ({type(layer).__name__}) cannot run on backend "
                    f"{name!r}: its computation is NumPy code at the layer level, with no "
                    f"device kernels; train this model on a host backend "
                    f"(fastcnn.set_backend('auto'))")
            for attr in ("kernel_regularizer", "bias_regularizer"):
                reg = getattr(layer, attr, None)
                if reg is not None and not getattr(reg, "supports_device", False):
                    raise NotImplementedError(
                        f"layer {layer.name!r}: the {attr} {reg!r} has no device "
                        f"implementation on backend {name!r}; use fastcnn.regularizers.L2 "
                        f"or a host backend")

    # ------------------------------------------------------------------ steps
    def put(self, x):
        active = backends.get_backend()
        if backends.current() is not self.backend:
            raise RuntimeError(
                f"the active backend changed from {self.backend.name!r} to {active!r} "
                f"while model {self.model.name!r} keeps its weights on the "
                f"{self.backend.name!r} device; switch backends between fit/evaluate/"
                f"predict calls, not inside one")
        return self.backend.module.to_device(x, "the input batch", batch=len(x))

    # ------------------------------------------------------------------- exit
    def exit(self):
        try:
            for host, device in self.pairs:
                device.copy_to_host(host)
        finally:
            reverse = {id(d): h for h, d in self.pairs}
            _swap(self.model, reverse)
            self._bring_home_the_rest()

    def _bring_home_the_rest(self):
        """Arrays the block created on the device that outlive it: the slots of an
        optimizer first built inside the scope."""
        opt = getattr(self.model, "optimizer", None)
        if opt is not None:
            for slots in opt._slots.values():
                slots[:] = [host_copy(s) if is_device_array(s) else s for s in slots]


def _swap(model, mapping) -> None:
    """Replaces, by identity, every array of ``mapping``'s keys with its value wherever the
    model keeps weights: layer attributes and weight lists, the cached training plan, the
    optimizer's variables and slots (lists are edited in place: they are shared)."""
    def sub(values):
        values[:] = [mapping.get(id(v), v) for v in values]

    for layer in model._leaf_layers():
        sub(layer._weights)
        for attr, value in list(vars(layer).items()):
            if id(value) in mapping:
                setattr(layer, attr, mapping[id(value)])
    plan = getattr(model, "_plan", None)
    if plan is not None:
        plan.replace_arrays(mapping)
    opt = getattr(model, "optimizer", None)
    if opt is not None:
        if opt._variables is not None:
            sub(opt._variables)
        for slots in opt._slots.values():
            sub(slots)
