"""The Layer base class: naming, shapes, weights and the forward/backward protocol.

A layer is built once for an input shape ``(None, ...)`` (batch dimension first), creating
its weights. Training then calls ``forward(x, training)`` and ``backward(dy)``:

* ``forward`` resolves ``fastcnn.backends.current()`` at call time and keeps that Backend
  object with the kernel's ctx, so ``backward`` goes to the backend that made the ctx even
  if the active backend changed in between;
* ``backward`` returns the gradient with respect to the layer's input and leaves the
  gradients of ``weights`` (same order) in ``self.grads``.

A layer with an ``activation`` attribute (Conv2D, Dense, Activation) also takes
``forward(x, training, activate=False)``, which skips the activation: the model uses it to
hand the loss the logits of a softmax/sigmoid head (Keras's fused cross-entropy).

These methods do no validation: the model checks its input once, before any work.
The public ``layer(x)`` call validates and builds on first use, like Keras.

``runs_on_device``: True for layers whose forward/backward only call backend ops (or
reshape), so that on a device backend their arrays can stay on the device
(:mod:`fastcnn._device`); a layer computing in NumPy itself leaves it False, and a model
holding it refuses to train on a device backend instead of silently computing on the host.
"""
from __future__ import annotations

import re

import numpy as np

from .. import _device, config, initializers, utils

_COMMON_KWARGS = ("input_shape", "name", "dtype", "trainable")


def _snake_case(name: str) -> str:
    # Keras's rule: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d.
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def normalize_dtype(dtype, argument="dtype"):
    """None, or np.dtype float32/float64; ValueError otherwise."""
    if dtype is None:
        return None
    return config.supported_float_dtype(dtype, argument)  # an unknown string is not float64


def normalize_shape(shape, argument="input_shape"):
    """A tuple of positive ints (no batch dimension); ValueError otherwise."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{argument} must be a tuple of positive ints, got {shape!r}") from None
    if not dims or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims
    ):
        raise ValueError(
            f"{argument} must be a non-empty tuple of positive ints (without the batch "
            f"dimension), got {shape!r}"
        )
    return tuple(int(d) for d in dims)


def positive_int(value, argument):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


def format_shape(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def serialize_initializer(init):
    """A JSON-able description of an initializer that :func:`deserialize_initializer` rebuilds.

    Keras's short name ('glorot_uniform') when ``init`` is a named initializer with its
    default settings, else ``{"class_name": ..., "config": {...}}`` (a seeded one, say).
    """
    init = initializers.get(init)
    for name in initializers.KNOWN:
        default = initializers.get(name)
        if type(default) is type(init) and default.get_config() == init.get_config():
            return name
    return {"class_name": type(init).__name__, "config": init.get_config()}


def _initializer_classes() -> dict:
    # An allow-list: only fastcnn's own initializer classes can come out of a config.
    classes = {type(initializers.get(name)) for name in initializers.KNOWN}
    classes.add(initializers.VarianceScaling)
    return {cls.__name__: cls for cls in classes}


def deserialize_initializer(value, argument="initializer"):
    """The inverse of :func:`serialize_initializer` (a name or an Initializer passes through)."""
    if isinstance(value, dict):
        if set(value) != {"class_name", "config"} or not isinstance(value["config"], dict):
            raise ValueError(
                f"{argument} must be a name or a dict with keys 'class_name' and 'config', "
                f"got {value!r}")
        cls = _initializer_classes().get(value["class_name"])
        if cls is None:
            raise ValueError(
                f"{argument}: unknown initializer class {value['class_name']!r}; known: "
                f"{sorted(_initializer_classes())}")
        try:
            return cls(**value["config"])
        except TypeError as exc:
            raise ValueError(f"{argument}: bad config for {value['class_name']}: {exc}") from None
    return initializers.get(value, argument=argument)


class Layer:
    """Base class of every fastcnn layer (Keras's ``keras.layers.Layer``)."""

    runs_on_device = False  # see the module doc

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(_COMMON_KWARGS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) {unknown}; "
                f"every layer also accepts {list(_COMMON_KWARGS)}"
            )
        name = kwargs.get("name")
        if name is None:
            name = utils.unique_name(_snake_case(type(self).__name__))
        elif not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        input_shape = kwargs.get("input_shape")
        self._batch_input_shape = (
            None if input_shape is None else (None,) + normalize_shape(input_shape)
        )
        self._dtype_arg = normalize_dtype(kwargs.get("dtype"))
        self.trainable = bool(kwargs.get("trainable", True))
        self.built = False
        self.dtype = None if self._dtype_arg is None else self._dtype_arg.name
        self._weights: list[np.ndarray] = []
        # Per weight: does the optimizer update it? (BatchNormalization's moving statistics
        # are weights that are saved and counted, but never trained.)
        self._weight_trainable: list[bool] = []
        self.grads: tuple = ()
        self._input_shape = None
        self._output_shape = None

    # ----------------------------------------------------------------- shapes
    def build(self, input_shape, dtype=None) -> None:
        """Creates the weights for ``input_shape`` (batch dimension first, may be None).

        ``dtype`` is the model's dtype, used when the layer was not given one
        (default: ``fastcnn.floatx()``).
        """
        input_shape = tuple(None if d is None else int(d) for d in input_shape)
        if self.built:
            # Weights exist already: building again may only confirm the shape.
            self._check_input_shape(input_shape, argument="input_shape")
            return
        dt = self._dtype_arg or normalize_dtype(dtype) or np.dtype(config.floatx())
        try:
            output_shape = self._build(input_shape, dt)
        except ValueError as exc:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}): {exc}") from None
        self._dtype = dt
        self.dtype = dt.name
        self._input_shape = input_shape
        self._output_shape = tuple(output_shape)
        self.built = True

    def _build(self, input_shape, dtype) -> tuple:
        """Subclasses: check ``input_shape``, create weights, return the output shape."""
        raise NotImplementedError(f"{type(self).__name__} does not define _build")

    def compute_output_shape(self, input_shape) -> tuple:
        """Output shape for ``input_shape`` (the layer must be built for that shape)."""
        input_shape = tuple(input_shape)
        if not self.built:
            raise ValueError(f"layer {self.name!r} is not built; call build(input_shape) first")
        self._check_input_shape(input_shape, argument="input_shape")
        return (input_shape[0],) + self._output_shape[1:]

    @property
    def input_shape(self):
        if not self.built:
            raise AttributeError(f"layer {self.name!r} has not been built: no input shape yet")
        return self._input_shape

    @property
    def output_shape(self):
        if not self.built:
            raise AttributeError(f"layer {self.name!r} has not been built: no output shape yet")
        return self._output_shape

    def _check_input_shape(self, shape, argument="x") -> None:
        expected = self._input_shape
        if len(shape) != len(expected) or any(
            e is not None and s != e for s, e in zip(shape[1:], expected[1:])
        ):
            raise ValueError(
                f"{argument} of layer {self.name!r} has shape {format_shape(shape)}, expected "
                f"{format_shape(expected)} (batch first, the layer was built for that shape)"
            )

    # ---------------------------------------------------------------- weights
    def add_weight(self, shape, initializer, dtype, trainable=True) -> np.ndarray:
        """``trainable=False``: a state array (moving statistics) that ``grads`` never covers."""
        from .._limits import charge  # load_model's allocation budget (a no-op otherwise)
        charge(shape, dtype, f"layer {self.name!r} weight {len(self._weights)}")
        value = initializer(tuple(shape), dtype)
        # Kernels want C-contiguous arrays of exactly this dtype; updates happen in place.
        value = np.ascontiguousarray(value, dtype=dtype)
        self._weights.append(value)
        self._weight_trainable.append(bool(trainable))
        return value

    @property
    def weights(self) -> list:
        """The weight arrays themselves (kernel, then bias), not copies."""
        return list(self._weights)

    @property
    def trainable_weights(self) -> list:
        """The weights ``grads`` covers, in the same order (empty when frozen)."""
        if not self.trainable:
            return []
        return [w for w, t in zip(self._weights, self._weight_trainable) if t]

    @property
    def non_trainable_weights(self) -> list:
        if not self.trainable:
            return list(self._weights)
        return [w for w, t in zip(self._weights, self._weight_trainable) if not t]

    def regularization_loss(self) -> float:
        """The penalty this layer's regularizers add to the loss (0.0 without any)."""
        return 0.0

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(
                f"layer {self.name!r} is not built yet, so its number of weights is unknown; "
                f"build it (or the model) first"
            )
        return int(sum(w.size for w in self._weights))

    def get_weights(self) -> list:
        """Copies of the weights (kernel, then bias), NumPy arrays even while they live on a
        device (a model on a device backend, during fit)."""
        return [_device.host_copy(w) for w in self._weights]

    def _checked_weights(self, weights) -> list:
        """``weights`` as arrays of the right dtype, or ValueError; assigns nothing."""
        weights = list(weights)
        if len(weights) != len(self._weights):
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) expects {len(self._weights)} "
                f"weight arrays with shapes {[w.shape for w in self._weights]}, "
                f"got {len(weights)}"
            )
        checked = []
        for i, (new, old) in enumerate(zip(weights, self._weights)):
            new = np.asarray(new)
            if new.shape != old.shape:
                raise ValueError(
                    f"layer {self.name!r} ({type(self).__name__}): weight {i} has shape "
                    f"{new.shape}, expected {old.shape}"
                )
            if not (np.issubdtype(new.dtype, np.number) or new.dtype == np.bool_):
                raise ValueError(
                    f"layer {self.name!r}: weight {i} has dtype {new.dtype}, expected numbers"
                )
            checked.append(new)
        return checked

    def set_weights(self, weights) -> None:
        """Assigns in place (references held by optimizers stay valid); all-or-nothing."""
        if not self.built:
            raise ValueError(f"layer {self.name!r} is not built yet; build it before set_weights")
        for old, new in zip(self._weights, self._checked_weights(weights)):
            _device.assign(old, new)

    # --------------------------------------------------------------- compute
    def forward(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, dy, need_dx=True):
        """Gradient with respect to the input; stores the weights' gradients in ``grads``.

        ``need_dx=False`` tells the model's first layer that nothing consumes its input
        gradient: a layer may then skip computing it and return None.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def __call__(self, x, training=False):
        """Eager call on an array: builds on first use, validates the shape, returns y."""
        x = np.asarray(x)
        if not self.built:
            self.build((None,) + x.shape[1:])
        self._check_input_shape(x.shape)
        x = np.ascontiguousarray(x, dtype=self._dtype)
        return self.forward(x, training=bool(training))

    def get_config(self) -> dict:
        config_ = {"name": self.name, "trainable": self.trainable, "dtype": self.dtype}
        if self._batch_input_shape is not None:
            config_["input_shape"] = self._batch_input_shape[1:]
        return config_

    @classmethod
    def from_config(cls, config_: dict):
        """A new, unbuilt layer from :meth:`get_config`'s output (JSON round trip included).

        Keys ending in ``_initializer`` may hold :func:`serialize_initializer`'s dicts.
        Subclasses whose ``__init__`` does not take their config as keyword arguments
        override this.
        """
        kwargs = dict(config_)
        for key, value in kwargs.items():
            if key.endswith("_initializer"):
                kwargs[key] = deserialize_initializer(value, argument=key)
        return cls(**kwargs)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"

    def _no_cache(self):
        return RuntimeError(
            f"layer {self.name!r}: backward() needs a forward(x, training=True) first"
        )
