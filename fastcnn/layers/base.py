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

import os
import re

import numpy as np

from .. import _device, autodiff, config, initializers, utils

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


def normalize_shape(shape, argument="input_shape", allow_unknown=False):
    """A tuple of positive ints (no batch dimension); ValueError otherwise.
    ``allow_unknown``: None stands for a size known only per call (Keras's
    ``Input((None, None, 3))``: images of any height and width)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{argument} must be a tuple of positive ints, got {shape!r}") from None
    if not dims or not all(
        (d is None and allow_unknown)
        or (isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0)
        for d in dims
    ):
        what = "positive ints or None" if allow_unknown else "positive ints"
        raise ValueError(
            f"{argument} must be a non-empty tuple of {what} (without the batch "
            f"dimension), got {shape!r}"
        )
    return tuple(None if d is None else int(d) for d in dims)


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
    """Base class of every fastcnn layer (Keras's ``keras.layers.Layer``).

    The stateless contract (the module doc): ``forward(inputs, training) -> (y, ctx)`` and
    ``backward(dy, ctx, need_dx) -> (dx, grads)``; nothing of a call is kept on the layer,
    so one layer may take part in several calls at once (a shared layer, a tape).

    A layer written in the Keras way, with ``call(self, inputs, training=False)`` built from
    :mod:`fastcnn.ops` and other layers, needs no backward: the inherited ``forward`` runs
    ``call`` on a private :class:`~fastcnn.autodiff.GradientTape` and ``backward`` asks it.
    """

    runs_on_device = False  # see the module doc
    #: True for layers taking a list of inputs (Add, Concatenate, ...).
    multiple_inputs = False

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
            None if input_shape is None
            else (None,) + normalize_shape(input_shape, allow_unknown=True)
        )
        self._dtype_arg = normalize_dtype(kwargs.get("dtype"))
        self._trainable = bool(kwargs.get("trainable", True))
        self.built = False
        self.dtype = None if self._dtype_arg is None else self._dtype_arg.name
        self._weights: list[np.ndarray] = []
        # Per weight: does the optimizer update it? (BatchNormalization's moving statistics
        # are weights that are saved and counted, but never trained.)
        self._weight_trainable: list[bool] = []
        self._variables: list = []        # one Variable per weight, bound to its slot
        self._input_shape = None
        self._output_shape = None
        self._inbound_nodes: list = []    # graph nodes of the calls on symbolic tensors

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, flag):
        self._trainable = bool(flag)

    # ----------------------------------------------------------------- shapes
    def build(self, input_shape, dtype=None) -> None:
        """Creates the weights for ``input_shape`` (batch dimension first, may be None; a
        list of shapes for a layer with ``multiple_inputs``).

        ``dtype`` is the model's dtype, used when the layer was not given one
        (default: ``fastcnn.floatx()``).
        """
        input_shape = _canonical_shape(input_shape, self.multiple_inputs, self.name)
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

    def _maybe_build(self, input_shape, dtype=None) -> None:
        """What the framework calls: :meth:`build`, or for a layer that overrides
        ``build(self, input_shape)`` the Keras way, that hook (which creates the weights
        with ``add_weight``) and then one traced call for the output shape."""
        if type(self).build is Layer.build:
            self.build(input_shape, dtype)
            return
        input_shape = _canonical_shape(input_shape, self.multiple_inputs, self.name)
        if self.built:
            self._check_input_shape(input_shape, argument="input_shape")
            return
        dt = self._dtype_arg or normalize_dtype(dtype) or np.dtype(config.floatx())
        self._dtype = dt
        self.dtype = dt.name
        try:
            self.build(input_shape)
            output_shape = _shape_by_tracing(self, input_shape, dt, hook=False)
        except ValueError as exc:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}): {exc}") from None
        self._input_shape = input_shape
        self._output_shape = tuple(output_shape)
        self.built = True

    def _build(self, input_shape, dtype) -> tuple:
        """Subclasses: check ``input_shape``, create weights, return the output shape.

        A layer defined by ``call`` (no ``_build`` of its own) builds by running ``call``
        once on zeros of the input shape (batch 1), after its ``build`` hook, if any,
        created its weights.
        """
        if type(self).call is Layer.call:
            raise NotImplementedError(f"{type(self).__name__} defines neither _build nor call")
        return _shape_by_tracing(self, input_shape, dtype)

    def compute_output_shape(self, input_shape) -> tuple:
        """Output shape for ``input_shape`` (the layer must be built for that shape)."""
        input_shape = _canonical_shape(input_shape, self.multiple_inputs, self.name)
        if not self.built:
            raise ValueError(f"layer {self.name!r} is not built; call build(input_shape) first")
        self._check_input_shape(input_shape, argument="input_shape")
        batch = input_shape[0][0] if self.multiple_inputs else input_shape[0]
        return (batch,) + self._output_shape[1:]

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
        if self.multiple_inputs:
            if len(shape) != len(expected) or any(
                    not _shape_matches(s, e) for s, e in zip(shape, expected)):
                raise ValueError(
                    f"{argument} of layer {self.name!r} ({type(self).__name__}) has shapes "
                    f"{[format_shape(s) for s in shape]}, expected "
                    f"{[format_shape(e) for e in expected]} (the layer was built for those)")
            return
        if not _shape_matches(shape, expected):
            raise ValueError(
                f"{argument} of layer {self.name!r} ({type(self).__name__}) has shape "
                f"{format_shape(shape)}, expected {format_shape(expected)} (batch first, the "
                f"layer was built for that shape)"
            )

    # ------------------------------------------------------------ graph links
    @property
    def input(self):
        """The input tensor of the layer's only call in a graph (Keras's ``layer.input``)."""
        return self._only_node("input").inputs[0] if not self.multiple_inputs else \
            list(self._only_node("input").inputs)

    @property
    def output(self):
        """The output tensor of the layer's only call in a graph (Keras's ``layer.output``)."""
        outs = self._only_node("output").outputs
        return outs[0] if len(outs) == 1 else list(outs)

    def _only_node(self, what):
        if not self._inbound_nodes:
            raise AttributeError(
                f"layer {self.name!r} has never been called on a symbolic tensor, so it has no "
                f"{what}; call it on fastcnn.Input(...) or a model's tensors (or put it in a "
                f"built Sequential model)")
        if len(self._inbound_nodes) > 1:
            raise AttributeError(
                f"layer {self.name!r} has been called {len(self._inbound_nodes)} times (a "
                f"shared layer), so its {what} is ambiguous; use the tensors each call returned")
        return self._inbound_nodes[0]

    # ---------------------------------------------------------------- weights
    def add_weight(self, shape=None, initializer="glorot_uniform", dtype=None,
                   trainable=True, name=None, constraint=None) -> np.ndarray:
        """Creates a weight (Keras's ``add_weight``); ``trainable=False``: a state array
        (moving statistics) that no gradient covers.

        Returns the array the kernels read for layers with their own forward/backward
        (fastcnn's built-in layers), and its :class:`~fastcnn.autodiff.Variable` for a
        layer defined by ``call`` (so that operations on it are differentiated);
        ``layer.variables`` holds the Variables either way.
        """
        if shape is None:
            raise ValueError(f"layer {self.name!r}: add_weight needs a shape")
        shape = tuple(int(d) for d in shape)
        initializer = initializers.get(initializer, argument="initializer")
        if dtype is None:
            dtype = getattr(self, "_dtype", None) or np.dtype(config.floatx())
        dtype = np.dtype(dtype)
        from .._limits import charge  # load_model's allocation budget (a no-op otherwise)
        charge(shape, dtype, f"layer {self.name!r} weight {len(self._weights)}")
        _check_weight_size(self, name or f"variable_{len(self._weights)}", shape, dtype)
        try:
            value = initializer(tuple(shape), dtype)
        except MemoryError:
            raise ValueError(_too_large(self, name, shape, dtype, "could not be allocated")) \
                from None
        # Kernels want C-contiguous arrays of exactly this dtype; updates happen in place.
        value = np.ascontiguousarray(value, dtype=dtype)
        index = len(self._weights)
        self._weights.append(value)
        self._weight_trainable.append(bool(trainable))
        variable = autodiff.Variable._bound(
            self._weights, index, name or f"variable_{index}", trainable, owner=self,
            constraint=constraint)
        self._variables.append(variable)
        if type(self).call is not Layer.call and not _overrides_forward(self):
            return variable
        return value

    @property
    def weights(self) -> list:
        """The weight arrays themselves (kernel, then bias), not copies."""
        return list(self._weights)

    @property
    def trainable_weights(self) -> list:
        """The weights a gradient covers, in order (empty when frozen)."""
        if not self.trainable:
            return []
        return [w for w, t in zip(self._weights, self._weight_trainable) if t]

    @property
    def non_trainable_weights(self) -> list:
        if not self.trainable:
            return list(self._weights)
        return [w for w, t in zip(self._weights, self._weight_trainable) if not t]

    @property
    def variables(self) -> list:
        """The weights as :class:`~fastcnn.autodiff.Variable` objects (Keras 3's
        ``layer.weights``): what ``tape.gradient`` and ``apply_gradients`` take."""
        return list(self._variables)

    @property
    def trainable_variables(self) -> list:
        if not self.trainable:
            return []
        return [v for v, t in zip(self._variables, self._weight_trainable) if t]

    @property
    def non_trainable_variables(self) -> list:
        if not self.trainable:
            return list(self._variables)
        return [v for v, t in zip(self._variables, self._weight_trainable) if not t]

    def _param_slots(self) -> list:
        """The weights ``backward``'s grads are aligned with (created trainable), whether
        or not the layer is frozen now."""
        return [w for w, t in zip(self._weights, self._weight_trainable) if t]

    def _param_variables(self) -> list:
        return [v for v, t in zip(self._variables, self._weight_trainable) if t]

    def _leaf_layers(self) -> list:
        """The layers holding weights of their own (a model lists its layers, recursively)."""
        return [self]

    def regularization_loss(self) -> float:
        """The penalty this layer's regularizers add to the loss (0.0 without any)."""
        return 0.0

    def add_regularization_gradients(self, grads) -> tuple:
        """``grads`` (aligned with the trainable weights) plus the regularizers' gradients;
        the model adds them once per layer and step (a shared layer is penalised once)."""
        return grads

    @property
    def losses(self) -> list:
        """The regularization penalties as differentiable scalars (Keras's ``layer.losses``):
        add ``sum(model.losses)`` to the loss in a custom training loop."""
        value = self.regularization_loss()
        if not value:
            return []
        params = self._param_variables()

        def backward(dys, needs):
            zero = [np.zeros_like(w) for w in self._param_slots()]
            grads = self.add_regularization_gradients(tuple(zero))
            return [dys[0] * g if n else None for g, n in zip(grads, needs)]
        dtype = self._weights[0].dtype if self._weights else np.float64
        return [autodiff.record(f"{self.name}/regularization", params,
                                [np.asarray(value, dtype=dtype)], backward)[0]]

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
        if weights is None or isinstance(weights, (np.ndarray, str, bytes)):
            raise ValueError(
                f"layer {self.name!r}: weights must be a list of arrays (as get_weights() "
                f"returns), got {type(weights).__name__}")
        weights = list(weights)
        if len(weights) != len(self._weights):
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) expects {len(self._weights)} "
                f"weight arrays with shapes {[w.shape for w in self._weights]}, "
                f"got {len(weights)}"
            )
        checked = []
        for i, (new, old) in enumerate(zip(weights, self._weights)):
            new = np.asarray(autodiff.value_of(new))
            if new.shape != old.shape:
                raise ValueError(
                    f"layer {self.name!r} ({type(self).__name__}): weight {i} has shape "
                    f"{new.shape}, expected {old.shape}"
                )
            if np.issubdtype(new.dtype, np.complexfloating) or not (
                    np.issubdtype(new.dtype, np.number) or new.dtype == np.bool_):
                raise ValueError(
                    f"layer {self.name!r}: weight {i} has dtype {new.dtype}, expected real "
                    f"numbers"
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
    def call(self, inputs, training=False):
        """Keras's way to define a layer: compute the output from ``inputs`` with
        :mod:`fastcnn.ops` operations and other layers (differentiated automatically)."""
        raise NotImplementedError(f"{type(self).__name__} does not define call")

    def forward(self, inputs, training=False):
        """``(y, ctx)``; nothing is kept on the layer. The default runs :meth:`call` on a
        private tape (for layers defined the Keras way)."""
        if type(self).call is Layer.call:
            raise NotImplementedError(
                f"{type(self).__name__} defines neither forward/backward nor call")
        return _forward_by_call(self, inputs, training)

    def backward(self, dy, ctx, need_dx=True):
        """``(dx, grads)``: the input gradient (None allowed when ``need_dx`` is False; a
        list for ``multiple_inputs``) and the gradients of the trainable weights, in the
        order of :meth:`_param_slots`."""
        if type(self).call is Layer.call:
            raise NotImplementedError(
                f"{type(self).__name__} defines neither forward/backward nor call")
        return _backward_by_call(self, dy, ctx, need_dx)

    def __call__(self, *args, **kwargs):
        """``layer(x)``: on symbolic tensors (fastcnn.Input) it adds a node to the graph and
        returns a symbolic tensor; on arrays or Tensors it computes at once (building the
        layer on first use) and returns a :class:`~fastcnn.autodiff.Tensor`, recorded on any
        open GradientTape."""
        if args:
            inputs, args = args[0], args[1:]
        elif "inputs" in kwargs:
            inputs = kwargs.pop("inputs")
        else:
            raise TypeError(f"{self.name}() missing the inputs argument")
        training = kwargs.pop("training", args[0] if args else False)
        kwargs.pop("mask", None)
        if kwargs:
            raise TypeError(f"layer {self.name!r} got unexpected call arguments "
                            f"{sorted(kwargs)}")
        from .. import graph
        if graph.is_symbolic(inputs):
            return self._symbolic_call(inputs)
        return self._eager_call(inputs, bool(training) if training is not None else False)

    # --------------------------------------------------------- call plumbing
    def _as_input_list(self, inputs, what):
        if self.multiple_inputs:
            if isinstance(inputs, dict):
                inputs = list(inputs.values())
            if not isinstance(inputs, (list, tuple)):
                raise ValueError(
                    f"layer {self.name!r} ({type(self).__name__}) takes a list of inputs, got "
                    f"{type(inputs).__name__}")
            return list(inputs)
        if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
            inputs = inputs[0]
        if isinstance(inputs, (list, tuple, dict)) and what == "symbolic":
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) takes one input, got a "
                f"{type(inputs).__name__} of {len(inputs)}")
        return [inputs]

    def _symbolic_call(self, inputs):
        from .. import graph
        ins = self._as_input_list(inputs, "symbolic")
        for t in ins:
            if not isinstance(t, graph.KerasTensor):
                raise ValueError(
                    f"layer {self.name!r}: cannot mix symbolic tensors and arrays in one call, "
                    f"got {type(t).__name__}")
        shapes = [t.shape for t in ins]
        shape_arg = shapes if self.multiple_inputs else shapes[0]
        if not self.built:
            self._maybe_build(shape_arg, ins[0].dtype)
        out_shape = self.compute_output_shape(shape_arg)
        out = graph.KerasTensor(out_shape, self.dtype, name=self.name)
        node = graph.Node(self, ins, [out], self.multiple_inputs)
        out.node = node
        self._inbound_nodes.append(node)
        return out

    def _prepare_eager(self, inputs):
        """The input arrays of an eager call, built for and checked against their shapes."""
        raw = self._as_input_list(inputs, "eager")
        vals = []
        for x in raw:
            v = autodiff.value_of(x)
            if not _device.is_device_array(v):
                v = np.asarray(v)
                if np.issubdtype(v.dtype, np.complexfloating) or not (
                        np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_):
                    raise ValueError(f"layer {self.name!r}: input must be real numbers, got "
                                     f"dtype {v.dtype}")
            vals.append(v)
        shapes = [(None,) + tuple(v.shape[1:]) for v in vals]
        shape_arg = shapes if self.multiple_inputs else shapes[0]
        if not self.built:
            first = vals[0].dtype if np.issubdtype(np.dtype(vals[0].dtype), np.floating) \
                else None
            self._maybe_build(shape_arg, first)
        self._check_input_shape(
            [tuple(v.shape) for v in vals] if self.multiple_inputs else tuple(vals[0].shape))
        vals = [v if _device.is_device_array(v) else np.ascontiguousarray(v, dtype=self._dtype)
                for v in vals]
        return raw, vals

    def _eager_call(self, inputs, training):
        raw, vals = self._prepare_eager(inputs)
        if type(self).call is not Layer.call and not _overrides_forward(self):
            # A layer defined by call: run it directly; its operations record themselves.
            arg = [autodiff.Tensor(v) if not isinstance(r, autodiff.Tensor) else r
                   for r, v in zip(raw, vals)]
            return _run_call(self, arg if self.multiple_inputs else arg[0], training)
        if not autodiff.recording():
            y, _ = self.forward(vals if self.multiple_inputs else vals[0], training=training)
            return autodiff.Tensor(y)
        act = getattr(self, "activation", None)
        if act in ("softmax", "sigmoid") and not self.multiple_inputs:
            # The logits as their own node, then the activation as an op: a loss that
            # fuses this activation finds the logits on the output (as in Keras and fit).
            y, ctx = self.forward(vals[0], training=training, activate=False)
            logits = self._record_eager(raw, vals, y, ctx)
            from .. import ops
            out = ops.softmax(logits) if act == "softmax" else ops.sigmoid(logits)
            out._keras_logits, out._keras_activation = logits, act
            return out
        y, ctx = self.forward(vals if self.multiple_inputs else vals[0], training=training)
        return self._record_eager(raw, vals, y, ctx)

    def _record_eager(self, raw, vals, y, ctx):
        params = self._param_variables()
        n = len(raw)
        # The recorded inputs are what the caller passed (their identity is the tape key),
        # then the weights.
        recorded = [r if isinstance(r, (autodiff.Tensor, np.ndarray)) or
                    _device.is_device_array(r) else v for r, v in zip(raw, vals)]

        def backward(dys, needs):
            dx, grads = self.backward(dys[0], ctx, any(needs[:n]))
            dxs = list(dx) if self.multiple_inputs else [dx]
            grads = list(grads) + [None] * (len(params) - len(grads))
            return dxs + grads
        return autodiff.record(self.name, recorded + params, [y], backward)[0]

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


# ------------------------------------------------------------------ helpers


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):   # not on this platform
        return None


def _too_large(layer, name, shape, dtype, why):
    nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    return (f"layer {layer.name!r} ({type(layer).__name__}): its weight {name!r} of shape "
            f"{tuple(shape)} ({np.dtype(dtype).name}) needs {nbytes / 2**30:,.1f} GiB, which "
            f"{why}; check the layer's sizes (filters, units, kernel_size)")


def _check_weight_size(layer, name, shape, dtype):
    """A weight larger than the machine's memory is a mistake in the layer's arguments:
    say so, before NumPy tries (and fails with a bare MemoryError)."""
    memory = _physical_memory()
    nbytes = float(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    if memory is not None and nbytes > memory:
        raise ValueError(_too_large(layer, name, shape, dtype,
                                    f"is more than this machine's {memory / 2**30:,.1f} GiB "
                                    f"of memory"))


def _canonical_shape(input_shape, multiple, name):
    def one(shape):
        return tuple(None if d is None else int(d) for d in shape)
    if multiple:
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not all(
                isinstance(s, (list, tuple)) for s in input_shape):
            raise ValueError(f"layer {name!r} takes a list of input shapes, got {input_shape!r}")
        return [one(s) for s in input_shape]
    return one(input_shape)


def _shape_matches(shape, expected) -> bool:
    return len(shape) == len(expected) and all(
        e is None or s is None or s == e for s, e in zip(shape[1:], expected[1:]))


def _overrides_forward(layer) -> bool:
    return type(layer).forward is not Layer.forward


def _accepts_training(layer) -> bool:
    import inspect
    cached = getattr(type(layer), "_call_takes_training", None)
    if cached is None:
        try:
            params = inspect.signature(layer.call).parameters
            cached = "training" in params or any(
                p.kind == p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            cached = False
        type(layer)._call_takes_training = cached
    return cached


def _run_call(layer, inputs, training):
    if _accepts_training(layer):
        return layer.call(inputs, training=training)
    return layer.call(inputs)


def _forward_by_call(layer, inputs, training):
    """Runs ``call`` on a private, persistent tape (outer tapes do not see its operations:
    the caller records the layer as one node)."""
    xs = list(inputs) if layer.multiple_inputs else [inputs]
    with autodiff.isolated():
        tape = autodiff.GradientTape(persistent=True)
        with tape:
            ts = [autodiff.Tensor(x) for x in xs]
            tape.watch(ts)
            out = _run_call(layer, ts if layer.multiple_inputs else ts[0], training)
    outs = out if isinstance(out, (list, tuple)) else [out]
    outs = [o if isinstance(o, autodiff.Tensor) else autodiff.Tensor(np.asarray(o))
            for o in outs]
    values = [o.value for o in outs]
    y = values if isinstance(out, (list, tuple)) else values[0]
    return y, (tape, ts, outs, isinstance(out, (list, tuple)))


def _backward_by_call(layer, dy, ctx, need_dx):
    tape, ts, outs, several = ctx
    dys = list(dy) if several else [dy]
    params = layer._param_variables()
    sources = (ts if need_dx else []) + params
    grads = tape.gradient(outs, sources, output_gradients=dys)
    dxs = grads[:len(ts)] if need_dx else [None] * len(ts)
    dxs = [np.zeros_like(t.value) if (g is None and need_dx) else g for g, t in zip(dxs, ts)]
    wgrads = tuple(grads[len(ts):] if need_dx else grads)
    return (dxs if layer.multiple_inputs else dxs[0]), wgrads


def _shape_by_tracing(layer, input_shape, dtype, hook=True):
    """The output shape of a call-defined layer: one call on zeros (batch 1), no tape."""
    shapes = input_shape if layer.multiple_inputs else [input_shape]
    layer._dtype = dtype
    xs = [autodiff.Tensor(np.zeros((1,) + tuple(1 if d is None else d for d in s[1:]),
                                   dtype=dtype)) for s in shapes]
    with autodiff.isolated():
        out = _run_call(layer, xs if layer.multiple_inputs else xs[0], False)
    if isinstance(out, (list, tuple)):
        raise ValueError("a layer's call must return one tensor (use a Model for several)")
    return (None,) + tuple(np.shape(autodiff.value_of(out))[1:])
