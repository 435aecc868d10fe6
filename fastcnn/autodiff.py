"""Eager tensors, variables and the gradient tape: reverse-mode differentiation of the code a
user writes (TensorFlow's ``GradientTape``), built on fastcnn's own backward functions.

* :class:`Tensor`: an array (NumPy, or a device array on a device backend) that fastcnn's
  operations take and return. Its operators (``+ - * / @ ** []`` ...) are
  :mod:`fastcnn.ops` operations, so whatever is written with them can be differentiated;
  ``np.asarray(t)`` and ``t.numpy()`` give the values.
* :class:`Variable`: a Tensor whose array is changed in place (optimizer steps,
  :meth:`Variable.assign`). A layer's weights are Variables bound to the layer's weight
  slots, so ``layer.kernel`` and the arrays the kernels read are the same memory.
* :class:`GradientTape`: while one is open, each operation whose inputs depend on a
  watched value (any trainable Variable it reads, and what :meth:`GradientTape.watch`
  names) appends a *node*: its inputs, its outputs and a backward function.
  :meth:`GradientTape.gradient` walks those nodes in reverse, summing the gradients of a
  value that feeds several consumers, and asks each backward only for the input
  gradients that lead to a requested source.

Operations and layers record through :func:`record`, the one entry point: the same node
format serves an elementwise op (a few NumPy lines), a layer call (the layer's
``backward(dy, ctx, need_dx)``) and a whole model used as a layer.

Values are keyed by identity: a Tensor by the Tensor object, a Variable by the array it
holds (so ``model.trainable_weights``, which lists the arrays, and
``model.trainable_variables`` name the same sources), a NumPy array passed as it is by the
array object. The tape keeps a reference to every value it recorded, so no key is reused
while it lives.
"""
from __future__ import annotations

import contextvars
import numbers

import numpy as np

from . import _device, config

__all__ = ["Tensor", "Variable", "GradientTape", "record", "value_of", "is_tensor",
           "convert_to_tensor", "stop_gradient"]


# ----------------------------------------------------------------------------- tensors


def value_of(x):
    """The array behind ``x`` (a Tensor or Variable), or ``x`` itself."""
    return x.value if isinstance(x, Tensor) else x


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)


def _key(x):
    if isinstance(x, Variable):
        return id(x.value)
    return id(x)


class Tensor:
    """An eager value: an array plus the identity the tape records it by.

    Arithmetic and indexing are :mod:`fastcnn.ops` operations (differentiable). NumPy
    functions see the values through ``__array__`` (not differentiable: a NumPy function
    leaves the tape).
    """

    __slots__ = ("_value", "_keras_logits", "_keras_activation", "__weakref__")
    __array_priority__ = 100   # ndarray + Tensor goes to Tensor.__radd__

    def __init__(self, value):
        self._value = value
        # A softmax/sigmoid layer output made under a tape keeps its logits (Keras's
        # ``_keras_logits``), so that the matching cross-entropy takes the fused path.
        self._keras_logits = None
        self._keras_activation = None

    @property
    def value(self):
        return self._value

    # ------------------------------------------------------------ NumPy interop
    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (a copy for a device array, else the array)."""
        return _device.to_host(self.value)

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(_device.to_host(self.value))
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    @property
    def shape(self):
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return np.dtype(self.value.dtype)

    @property
    def ndim(self):
        return len(self.value.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __float__(self):
        return float(np.asarray(self).reshape(-1)[0]) if self.size == 1 else float(
            np.asarray(self))

    def __int__(self):
        return int(float(self))

    def __bool__(self):
        return bool(np.asarray(self))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        kind = type(self).__name__
        return f"<fastcnn.{kind} shape={self.shape} dtype={self.dtype.name}\n{np.asarray(self)!r}>"

    def __format__(self, spec):
        return format(np.asarray(self).item() if self.size == 1 else np.asarray(self), spec)

    __hash__ = object.__hash__   # identity, as the tape keys by it

    # ------------------------------------------------------------ operators
    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().subtract(self, other)

    def __rsub__(self, other):
        return _ops().subtract(other, self)

    def __mul__(self, other):
        return _ops().multiply(self, other)

    def __rmul__(self, other):
        return _ops().multiply(other, self)

    def __truediv__(self, other):
        return _ops().divide(self, other)

    def __rtruediv__(self, other):
        return _ops().divide(other, self)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __rmatmul__(self, other):
        return _ops().matmul(other, self)

    def __pow__(self, other):
        return _ops().power(self, other)

    def __rpow__(self, other):
        return _ops().power(other, self)

    def __neg__(self):
        return _ops().negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops().abs(self)

    def __getitem__(self, index):
        return _ops().getitem(self, index)

    # comparisons give plain boolean arrays: they have no gradient
    def __lt__(self, other):
        return np.asarray(self) < np.asarray(value_of(other))

    def __le__(self, other):
        return np.asarray(self) <= np.asarray(value_of(other))

    def __gt__(self, other):
        return np.asarray(self) > np.asarray(value_of(other))

    def __ge__(self, other):
        return np.asarray(self) >= np.asarray(value_of(other))

    # ------------------------------------------------------------ methods
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    @property
    def T(self):
        return _ops().transpose(self)

    def sum(self, axis=None, keepdims=False):
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops().max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return _ops().min(self, axis=axis, keepdims=keepdims)

    def item(self):
        return np.asarray(self).item()

    def astype(self, dtype):
        """A new constant Tensor of ``dtype`` (a cast leaves the tape, as in NumPy)."""
        return Tensor(np.asarray(self).astype(dtype))


def _ops():
    from . import ops
    return ops


def convert_to_tensor(x, dtype=None) -> Tensor:
    """``x`` as a Tensor (a Tensor passes through unchanged when the dtype matches)."""
    if isinstance(x, Tensor):
        if dtype is None or x.dtype == np.dtype(dtype):
            return x
        return Tensor(np.asarray(x).astype(dtype))
    if _device.is_device_array(x):
        return Tensor(x)
    a = np.asarray(x)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    elif not (np.issubdtype(a.dtype, np.floating)):
        if np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"complex values are not supported, got dtype {a.dtype}")
        a = a.astype(config.floatx()) if a.dtype.kind in "biu" and a.dtype != np.bool_ \
            else a
    return Tensor(a)


def stop_gradient(x) -> Tensor:
    """The same values as a new Tensor the tape does not trace through."""
    return Tensor(value_of(x))


# --------------------------------------------------------------------------- variables


class Variable(Tensor):
    """A mutable, named array (TensorFlow's ``tf.Variable``); trainable ones are watched by
    every open tape that reads them.

    ``Variable(value, trainable=True, name=None, dtype=None)``: the value is copied into a
    new C-contiguous array (float32 by default for integer and Python-number values).
    Layers' weights are Variables too (``layer.kernel``, ``model.trainable_variables``);
    updating one in place (an optimizer step, :meth:`assign`) updates the layer.
    """

    __slots__ = ("_holder", "_index", "name", "_trainable", "constraint", "_owner")

    def __init__(self, value, trainable=True, name=None, dtype=None, constraint=None):
        super().__init__(None)
        if isinstance(value, Tensor):
            value = value.numpy()
        if _device.is_device_array(value):
            raise ValueError("Variable(value): pass a NumPy array (device arrays are the "
                             "backend's business)")
        a = np.asarray(value)
        if np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"Variable value must be real numbers, got dtype {a.dtype}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise ValueError(f"Variable value must be numbers, got dtype {a.dtype}")
        if dtype is None:
            dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else config.floatx()
        self._holder = [np.array(a, dtype=dtype, order="C", copy=True)]
        self._index = 0
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str or None, got {name!r}")
        self.name = name or "Variable"
        self._trainable = bool(trainable)
        self.constraint = constraint
        self._owner = None

    @classmethod
    def _bound(cls, holder, index, name, trainable, owner=None, constraint=None):
        """A Variable reading ``holder[index]`` (a layer's weight slot): whatever array the
        slot holds (the host array, or its device copy inside a device scope)."""
        v = cls.__new__(cls)
        Tensor.__init__(v, None)
        v._holder, v._index = holder, index
        v.name, v._trainable, v.constraint = name, bool(trainable), constraint
        v._owner = owner
        return v

    @property
    def value(self):
        return self._holder[self._index]

    @property
    def trainable(self) -> bool:
        """False for a state variable, and for every weight of a frozen layer."""
        return self._trainable and (self._owner is None or self._owner.trainable)

    @property
    def path(self) -> str:
        """``'layer_name/variable_name'`` for a layer's weight (Keras 3's ``variable.path``)."""
        return self.name if self._owner is None else f"{self._owner.name}/{self.name}"

    @trainable.setter
    def trainable(self, flag):
        self._trainable = bool(flag)

    def assign(self, value):
        """Writes ``value`` into the variable's array, in place; returns the variable."""
        value = value_of(value)
        shape = tuple(self.value.shape)
        if np.shape(value) not in (shape, ()) and np.broadcast_shapes(
                np.shape(value), shape) != shape:
            raise ValueError(f"cannot assign a value of shape {np.shape(value)} to variable "
                             f"{self.name!r} of shape {shape}")
        _device.assign(self.value, value)
        return self

    def assign_add(self, delta):
        return self.assign(np.asarray(self) + np.asarray(value_of(delta)))

    def assign_sub(self, delta):
        return self.assign(np.asarray(self) - np.asarray(value_of(delta)))

    def __repr__(self):
        return (f"<fastcnn.Variable {self.name!r} shape={self.shape} "
                f"dtype={self.dtype.name}, trainable={self.trainable}>")


# ------------------------------------------------------------------------------- tape

_TAPES: contextvars.ContextVar = contextvars.ContextVar("fastcnn_tapes", default=())


class isolated:
    """A block in which the tapes open outside it do not record (a layer that runs its
    ``call`` on a private tape is recorded outside as ONE node)."""

    def __enter__(self):
        self._token = _TAPES.set(())
        return self

    def __exit__(self, *exc):
        _TAPES.reset(self._token)
        return False


def recording() -> bool:
    """True when some tape is open and recording in this context."""
    return any(t._recording for t in _TAPES.get())


class _Node:
    __slots__ = ("name", "inputs", "input_keys", "outputs", "output_keys", "backward")

    def __init__(self, name, inputs, input_keys, outputs, backward):
        self.name = name
        self.inputs = inputs              # kept alive: their ids are the keys
        self.input_keys = input_keys
        self.outputs = outputs
        self.output_keys = tuple(id(t) for t in outputs)
        self.backward = backward


def record(name, inputs, outputs, backward):
    """Wraps ``outputs`` (arrays) as Tensors and, on every open tape that watches one of
    ``inputs``, records a node.

    ``backward(dys, needs) -> grads``: ``dys`` has one gradient per output (zeros stand for
    an output nothing depends on), ``needs`` one bool per input; it returns one gradient
    per input (None where not needed or not differentiable). Returns the list of Tensors.
    """
    tensors = [Tensor(o) for o in outputs]
    tapes = _TAPES.get()
    if tapes:
        keys = None
        for tape in tapes:
            if tape._recording:
                if keys is None:
                    keys = tuple(_key(i) if i is not None else None for i in inputs)
                tape._maybe_record(name, inputs, keys, tensors, backward)
    return tensors


def _add(a, b):
    """``a + b`` as a new array (never in place: a backward may return its ``dy``)."""
    if _device.is_device_array(a) or _device.is_device_array(b):
        return _device.add_scaled(a, b, 1.0)
    return a + b


def _zeros_like(a):
    return _device.zeros_like(a)


def _flatten(structure):
    """``(leaves, rebuild)`` for a source structure: one value, a list/tuple, a dict."""
    if isinstance(structure, dict):
        keys = list(structure)
        leaves = [structure[k] for k in keys]
        return leaves, lambda values: dict(zip(keys, values))
    if isinstance(structure, (list, tuple)):
        parts = [_flatten(s) for s in structure]
        leaves = [leaf for p, _ in parts for leaf in p]

        def rebuild(values):
            out, i = [], 0
            for p, r in parts:
                out.append(r(values[i:i + len(p)]))
                i += len(p)
            return type(structure)(out) if isinstance(structure, tuple) else out
        return leaves, rebuild
    return [structure], lambda values: values[0]


class GradientTape:
    """Records operations for automatic differentiation (TensorFlow's ``tf.GradientTape``).

    ::

        with fastcnn.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    ``persistent=False``: :meth:`gradient` may be called once (the recorded nodes, and the
    layers' saved activations, are released then). ``watch_accessed_variables=True``:
    every trainable Variable an operation reads is watched.
    """

    def __init__(self, persistent=False, watch_accessed_variables=True):
        self.persistent = bool(persistent)
        self.watch_accessed_variables = bool(watch_accessed_variables)
        self._nodes: list = []
        self._tracked: set = set()
        self._keep: list = []          # watched values, kept alive for their ids
        self._recording = False
        self._entered = False
        self._used = False
        self._token = None
        self._watched = None         # watched_variables, kept when the nodes are released

    def __enter__(self):
        if self._entered:
            raise RuntimeError("this GradientTape is already open; open a new one")
        self._entered = True
        self._recording = True
        self._token = _TAPES.set(_TAPES.get() + (self,))
        return self

    def __exit__(self, *exc):
        self._recording = False
        tapes = _TAPES.get()
        _TAPES.set(tuple(t for t in tapes if t is not self))
        self._token = None
        return False

    def watch(self, tensor) -> None:
        """Watches ``tensor`` (a Tensor, Variable, NumPy array, or a list/dict of them):
        operations reading it are recorded, and it may be a source of :meth:`gradient`."""
        leaves, _ = _flatten(tensor)
        for x in leaves:
            if not (isinstance(x, Tensor) or isinstance(x, np.ndarray)
                    or _device.is_device_array(x)):
                raise ValueError(f"tape.watch expects Tensors, Variables or arrays, got "
                                 f"{type(x).__name__}")
            if isinstance(x, np.ndarray) and not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"tape.watch: only floating-point values have gradients, got "
                                 f"an array of dtype {x.dtype}")
            self._tracked.add(_key(x))
            self._keep.append(x)

    def watched_variables(self) -> list:
        """The Variables this tape watched, in the order first seen."""
        if self._watched is not None:
            return list(self._watched)
        seen, out = set(), []
        for node in self._nodes:
            for x in node.inputs:
                if isinstance(x, Variable) and id(x) not in seen and _key(x) in self._tracked:
                    seen.add(id(x))
                    out.append(x)
        return out

    def stop_recording(self):
        """A context in which operations are not recorded (TensorFlow's spelling)."""
        tape = self

        class _Pause:
            def __enter__(self_inner):
                self_inner.was = tape._recording
                tape._recording = False

            def __exit__(self_inner, *exc):
                tape._recording = self_inner.was
                return False
        return _Pause()

    def reset(self) -> None:
        """Forgets everything recorded so far."""
        self._nodes.clear()
        self._tracked.clear()
        self._keep.clear()
        self._used = False
        self._watched = None

    # ------------------------------------------------------------------ record
    def _maybe_record(self, name, inputs, keys, outputs, backward):
        tracked = self._tracked
        hit = False
        for x, k in zip(inputs, keys):
            if k is None:
                continue
            if k in tracked:
                hit = True
            elif (self.watch_accessed_variables and isinstance(x, Variable) and x.trainable
                  and np.issubdtype(x.dtype, np.floating)):
                tracked.add(k)
                hit = True
        if not hit:
            return
        node = _Node(name, tuple(inputs), keys, tuple(outputs), backward)
        self._nodes.append(node)
        tracked.update(node.output_keys)

    # ---------------------------------------------------------------- gradient
    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients="none"):
        """Gradients of ``target`` with respect to ``sources``, in the structure of
        ``sources`` (one value, a list, a tuple or a dict): arrays, or None for a source
        the target does not depend on (``unconnected_gradients='zero'``: zeros).

        ``target`` must be a scalar unless ``output_gradients`` (an array of its shape, the
        upstream gradient) is given; a list of targets sums their gradients.
        """
        if self._used and not self.persistent:
            raise RuntimeError(
                "tape.gradient was already called on this non-persistent GradientTape; its "
                "records are released after the first call. Use "
                "GradientTape(persistent=True) to take several gradients")
        if unconnected_gradients not in ("none", "zero"):
            raise ValueError(f"unconnected_gradients must be 'none' or 'zero', got "
                             f"{unconnected_gradients!r}")
        if self._recording and not self.persistent:
            # TensorFlow allows it but it is almost always a mistake: the gradient call
            # itself would be recorded. Stop recording, as leaving the block does.
            self._recording = False
        targets = target if isinstance(target, (list, tuple)) else [target]
        if output_gradients is not None and not isinstance(target, (list, tuple)):
            output_gradients = [output_gradients]
        if output_gradients is not None and len(output_gradients) != len(targets):
            raise ValueError(f"got {len(output_gradients)} output_gradients for "
                             f"{len(targets)} targets")
        flat_sources, rebuild = _flatten(sources)
        for s in flat_sources:
            if not (isinstance(s, Tensor) or isinstance(s, np.ndarray)
                    or _device.is_device_array(s)):
                raise ValueError(f"tape.gradient sources must be Variables, Tensors or arrays, "
                                 f"got {type(s).__name__}")
        grads: dict = {}
        for i, t in enumerate(targets):
            if not isinstance(t, Tensor):
                raise ValueError(
                    f"tape.gradient target must be a Tensor computed inside the tape (a "
                    f"fastcnn operation's result), got {type(t).__name__}")
            value = t.value
            if output_gradients is None:
                if t.size != 1:
                    raise ValueError(
                        f"tape.gradient target has shape {t.shape}: a non-scalar target needs "
                        f"output_gradients= (the upstream gradient, shaped like the target), "
                        f"or reduce it first (fastcnn.ops.mean / sum)")
                seed = np.ones(t.shape, dtype=t.dtype)
                seed = _device.like(value, seed)
            else:
                seed = value_of(output_gradients[i])
                if tuple(np.shape(seed)) != t.shape:
                    raise ValueError(f"output_gradients[{i}] has shape {np.shape(seed)}, the "
                                     f"target has shape {t.shape}")
                seed = _device.like(value, np.asarray(seed, dtype=t.dtype)) \
                    if not _device.is_device_array(seed) else seed
            k = _key(t)
            grads[k] = seed if k not in grads else _add(grads[k], seed)
        source_keys = [_key(s) for s in flat_sources]
        # Only gradients on a path to a source are asked for: forward reachability.
        relevant = set(source_keys)
        for node in self._nodes:
            if any(k in relevant for k in node.input_keys):
                relevant.update(node.output_keys)
        for node in reversed(self._nodes):
            dys = [grads.get(k) for k in node.output_keys]
            if all(d is None for d in dys):
                continue
            needs = [k is not None and k in relevant for k in node.input_keys]
            if not any(needs):
                continue
            dys = [_zeros_like(o.value) if d is None else d for d, o in zip(dys, node.outputs)]
            in_grads = node.backward(dys, needs)
            for k, need, g in zip(node.input_keys, needs, in_grads):
                if need and g is not None:
                    grads[k] = g if k not in grads else _add(grads[k], g)
        out = []
        for s, k in zip(flat_sources, source_keys):
            g = grads.get(k)
            if g is None and unconnected_gradients == "zero":
                g = _zeros_like(value_of(s))
            out.append(g)
        self._used = True
        if not self.persistent:
            self._watched = self.watched_variables()
            self._nodes = []
            self._keep = []
        return rebuild(out)

    def __repr__(self):
        return f"<GradientTape persistent={self.persistent}, {len(self._nodes)} nodes>"


def _is_number(x) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)
