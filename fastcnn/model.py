"""Models: Keras's ``Model`` (Functional and subclassed) and ``Sequential``.

* **Functional**: ``Model(inputs, outputs)`` over a graph of layer calls on symbolic tensors
  (:mod:`fastcnn.graph`), run by a compiled :class:`~fastcnn.executor.Program` (topological
  forward, reverse backward, gradients summed at fan-out and over a shared layer's calls).
* **Sequential** is the simplest Functional model: a chain, rebuilt as layers are added.
* **Subclassed**: ``class Net(fastcnn.Model)`` with layers as attributes and
  ``call(self, inputs, training=False)``; ``fit`` differentiates ``call`` with a
  :class:`~fastcnn.autodiff.GradientTape`; ``train_step(self, data)`` may be overridden.

A model is a :class:`~fastcnn.layers.Layer`: callable on symbolic tensors inside another
model, and on arrays (``model(x)`` returns a Tensor, recorded on an open tape). This module
holds the structure (graph, layers, weights, the Layer protocol, summary, saving); the
training machinery every model shares is :class:`fastcnn.training.Trainer`.
"""
from __future__ import annotations

import inspect

import numpy as np

from . import _device, autodiff, config, graph, utils
from .layers.base import Layer, _snake_case, format_shape, normalize_shape
from .layers.core import InputLayer
from .training import NonFiniteLossError, Trainer, _restructure, _structure

__all__ = ["Model", "Sequential", "NonFiniteLossError"]


def _keras_flat(leaves, kind, keys):
    """A structure's tensors as Keras flattens it: a dict's values by sorted key."""
    if kind == "dict":
        return [t for _, t in sorted(zip(keys, leaves), key=lambda kt: kt[0])]
    return list(leaves)


class Model(Trainer, Layer):
    """A model (Keras's ``keras.Model``): ``Model(inputs, outputs, name=None)`` for the
    Functional API, or subclass it and define ``call(self, inputs, training=False)``."""

    def __init__(self, *args, **kwargs):
        inputs = kwargs.pop("inputs", args[0] if len(args) > 0 else None)
        outputs = kwargs.pop("outputs", args[1] if len(args) > 1 else None)
        if len(args) > 2:
            raise TypeError(f"Model() takes inputs and outputs, got {len(args)} positional "
                            f"arguments")
        name = kwargs.pop("name", None)
        trainable = kwargs.pop("trainable", True)
        kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"Model() got unexpected keyword argument(s) {sorted(kwargs)}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        functional = inputs is not None or outputs is not None
        if name is None:
            default = "functional" if functional or type(self) is Model else \
                _snake_case(type(self).__name__)
            name = utils.unique_name(default)
        Layer.__init__(self, name=name, trainable=trainable)
        self._init_model_state()
        if functional:
            if inputs is None or outputs is None:
                raise ValueError("a Functional model needs both inputs and outputs")
            self._init_graph(inputs, outputs)
        elif type(self) is Model:
            raise ValueError(
                "Model() needs inputs and outputs (the Functional API: "
                "Model(inputs=fastcnn.Input(...), outputs=...)), or subclass Model and "
                "define call(self, inputs, training=False)")

    def _init_model_state(self):
        self._graph = None          # (nodes, inputs, outputs) of a graph model
        self._tracked = []          # a subclassed model's layers, in assignment order
        self._input_specs = None    # [(None, ...)] once known
        self._output_shapes = None
        self._input_kind = ("single", None)
        self._output_kind = ("single", None)
        self._dtype = None
        self._programs = {}
        self._plan = None
        self.optimizer = None
        self.loss = None
        self._loss_spec = None
        self._loss_weights = None
        self._metric_specs: list = []
        self.compiled = False
        self.stop_training = False
        self.history = None

    def __setattr__(self, name, value):
        # Keras tracks the layers a subclassed model holds as attributes.
        if isinstance(value, Layer) and name not in ("_plan",) and \
                self.__dict__.get("_tracked") is not None and value is not self:
            if not any(value is t for t in self._tracked):
                self._tracked.append(value)
        elif isinstance(value, (list, tuple)) and self.__dict__.get("_tracked") is not None:
            for v in value:
                if isinstance(v, Layer) and not any(v is t for t in self._tracked):
                    self._tracked.append(v)
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------- the graph
    def _init_graph(self, inputs, outputs):
        in_leaves, in_kind, in_keys = _structure(inputs, "inputs")
        out_leaves, out_kind, out_keys = _structure(outputs, "outputs")
        for what, leaves in (("inputs", in_leaves), ("outputs", out_leaves)):
            for t in leaves:
                if not isinstance(t, graph.KerasTensor):
                    raise ValueError(
                        f"{what} of a Functional model must be symbolic tensors (from "
                        f"fastcnn.Input and layer calls), got {type(t).__name__}")
        for t in in_leaves:
            if not isinstance(t.node.layer, InputLayer):
                raise ValueError(
                    f"inputs must be tensors returned by fastcnn.Input(...), got {t!r}")
        if len({id(t) for t in in_leaves}) != len(in_leaves):
            raise ValueError("the same Input appears twice in inputs")
        nodes, _ = graph.trace(in_leaves, out_leaves)
        # Keras's layer order (its files, get_weights and summary follow it): Keras flattens
        # a dict of inputs or outputs in the order of its sorted keys.
        layers = graph.keras_layer_order(_keras_flat(in_leaves, in_kind, in_keys),
                                         _keras_flat(out_leaves, out_kind, out_keys))
        names = {}
        for layer in layers:
            if layer.name in names and names[layer.name] is not layer:
                raise ValueError(
                    f"two different layers of model {self.name!r} are named {layer.name!r}; "
                    f"layer names must be unique within a model (pass name=...)")
            names[layer.name] = layer
        self._graph = (nodes, in_leaves, out_leaves)
        self._graph_layers = layers
        self._input_kind = (in_kind, in_keys)
        self._output_kind = (out_kind, out_keys)
        self._input_specs = [t.shape for t in in_leaves]
        self._output_shapes = [t.shape for t in out_leaves]
        self._dtype = np.dtype(in_leaves[0].dtype)
        self.dtype = self._dtype.name
        self._input_shape = self._input_specs[0] if len(in_leaves) == 1 else \
            list(self._input_specs)
        self._output_shape = self._output_shapes[0] if len(out_leaves) == 1 else \
            list(self._output_shapes)
        self.built = True
        self._programs = {}
        self._plan = None

    @property
    def multiple_inputs(self):
        return self._graph is not None and len(self._graph[1]) > 1

    @property
    def layers(self) -> list:
        if self._graph is not None:
            return list(self._graph_layers)
        return list(self._tracked)

    @property
    def inputs(self):
        self._require_graph("inputs")
        return list(self._graph[1])

    @property
    def outputs(self):
        self._require_graph("outputs")
        return list(self._graph[2])

    @property
    def input(self):
        self._require_graph("input")
        return _restructure(self._graph[1], *self._input_kind)

    @property
    def output(self):
        self._require_graph("output")
        return _restructure(self._graph[2], *self._output_kind)

    @property
    def input_names(self):
        return [t.node.layer.name for t in self.inputs]

    @property
    def output_names(self):
        if self._graph is None:
            return [self.name]
        names = []
        for t in self._graph[2]:
            name = t.node.layer.name
            names.append(name if name not in names else f"{name}_{len(names)}")
        return names

    def _require_graph(self, what):
        if self._graph is None:
            raise AttributeError(
                f"model {self.name!r} is a subclassed model: it has no symbolic {what} (only "
                f"Functional and Sequential models do)")

    def get_layer(self, name=None, index=None):
        """The layer named ``name``, or at ``index`` of :attr:`layers` (Keras)."""
        layers = self.layers
        if index is not None and name is not None:
            raise ValueError("give name or index, not both")
        if index is not None:
            if not isinstance(index, int) or isinstance(index, bool):
                raise ValueError(f"index must be an int, got {index!r}")
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"index {index} is out of range: model {self.name!r} has "
                                 f"{len(layers)} layers")
            return layers[index]
        if name is None:
            raise ValueError("get_layer needs name= or index=")
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r} in model {self.name!r}; its layers: "
                         f"{[layer.name for layer in layers]}")

    # ---------------------------------------------------------- shapes, build
    @property
    def _input_spec(self):
        """The input shape of a single-input model (None until known)."""
        return None if self._input_specs is None else self._input_specs[0]

    @property
    def input_shape(self):
        self._require_built("input_shape")
        return self._input_specs[0] if len(self._input_specs) == 1 else list(self._input_specs)

    @property
    def output_shape(self):
        self._require_built("output_shape")
        return self._output_shapes[0] if len(self._output_shapes) == 1 else \
            list(self._output_shapes)

    def _require_built(self, what):
        if not self.built:
            raise ValueError(
                f"model {self.name!r} has not been built yet, so {what} is unknown: "
                + ("give the first layer input_shape=..., start with fastcnn.Input(shape), "
                   "call build((None, ...)) or call the model on data"
                   if isinstance(self, Sequential) else
                   "call it once on data (model(x) or fit) or call build((None, ...)) to "
                   "create its layers' weights"))

    def build(self, input_shape=None, dtype=None) -> None:
        """Builds a subclassed model by running ``call`` once on zeros of
        ``input_shape`` (batch first). Graph models are built when defined."""
        if self._graph is not None:
            if input_shape is not None:
                given = [tuple(s) for s in input_shape] if self.multiple_inputs else \
                    [tuple(input_shape)]
                for g, e in zip(given, self._input_specs):
                    if len(g) != len(e) or any(a is not None and b is not None and a != b
                                               for a, b in zip(g[1:], e[1:])):
                        raise ValueError(
                            f"model {self.name!r} is built for input shape(s) "
                            f"{[format_shape(e) for e in self._input_specs]}, got "
                            f"input_shape {input_shape!r}")
            return
        if input_shape is None:
            raise ValueError(f"build() of subclassed model {self.name!r} needs input_shape "
                             f"(batch first, e.g. (None, 28, 28, 1))")
        dims = tuple(input_shape)
        if len(dims) < 2:
            raise ValueError(f"input_shape must include the batch dimension, e.g. "
                             f"(None, 28, 28, 1); got {input_shape!r}")
        shape = (1,) + normalize_shape(dims[1:], "input_shape")
        dt = np.dtype(dtype or config.floatx())
        self._build_subclassed([np.zeros(shape, dtype=dt)])

    def _build_subclassed(self, xs):
        """Runs ``call`` once (inference mode, no tape) on the first sample(s)."""
        self._dtype = np.dtype(xs[0].dtype) if np.issubdtype(xs[0].dtype, np.floating) \
            else np.dtype(config.floatx())
        self.dtype = self._dtype.name
        sample = [np.ascontiguousarray(x[:1], dtype=self._dtype) for x in xs]
        with autodiff.isolated():
            arg = [autodiff.Tensor(s) for s in sample]
            out = self._run_call(arg if len(arg) > 1 else arg[0], False)
        leaves, kind, keys = _structure(out, "outputs")
        self._input_specs = [(None,) + x.shape[1:] for x in xs]
        self._output_shapes = [(None,) + tuple(np.shape(autodiff.value_of(o)))[1:]
                               for o in leaves]
        self._output_kind = (kind, keys)
        self._input_shape = self._input_specs[0]
        self._output_shape = self._output_shapes[0]
        self.built = True

    def _run_call(self, inputs, training):
        try:
            params = inspect.signature(self.call).parameters
            takes = "training" in params or any(p.kind == p.VAR_KEYWORD
                                                for p in params.values())
        except (TypeError, ValueError):
            takes = False
        return self.call(inputs, training=training) if takes else self.call(inputs)

    # ------------------------------------------------------- layers, weights
    def _unique_layers(self) -> list:
        out, seen = [], set()
        for layer in self.layers:
            if id(layer) not in seen and not isinstance(layer, InputLayer):
                seen.add(id(layer))
                out.append(layer)
        return out

    def _leaf_layers(self) -> list:
        # Cached per structure (the graph object, the tracked layers): the training step
        # asks for it on every batch.
        key = (id(self._graph), len(self._tracked), len(getattr(self, "_seq", ())))
        cached = self.__dict__.get("_leaf_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        out, seen = [], set()
        for layer in self._unique_layers():
            for leaf in layer._leaf_layers():
                if id(leaf) not in seen:
                    seen.add(id(leaf))
                    out.append(leaf)
        object.__setattr__(self, "_leaf_cache", (key, out))
        return out

    @Layer.trainable.setter
    def trainable(self, flag):
        # Keras: freezing (or unfreezing) a model does the same to every layer in it.
        self._trainable = bool(flag)
        if "_tracked" in self.__dict__:    # not while Layer.__init__ runs
            for layer in self.layers:
                layer.trainable = flag

    @property
    def _weights(self):
        return [w for layer in self._unique_layers() for w in layer._weights]

    @_weights.setter
    def _weights(self, value):
        if value:
            raise AttributeError("a model's weights are its layers'")

    @property
    def _variables(self):
        return [v for layer in self._unique_layers() for v in layer._variables]

    @_variables.setter
    def _variables(self, value):
        if value:
            raise AttributeError("a model's variables are its layers'")

    @property
    def _weight_trainable(self):
        return [t for layer in self._unique_layers() for t in layer._weight_trainable]

    @_weight_trainable.setter
    def _weight_trainable(self, value):
        if value:
            raise AttributeError("a model's weights are its layers'")

    @property
    def weights(self) -> list:
        return [w for layer in self._unique_layers() for w in layer.weights]

    @property
    def trainable_weights(self) -> list:
        if not self.trainable:
            return []
        return [w for layer in self._unique_layers() for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self) -> list:
        if not self.trainable:
            return self.weights
        return [w for layer in self._unique_layers() for w in layer.non_trainable_weights]

    @property
    def variables(self) -> list:
        return [v for layer in self._unique_layers() for v in layer.variables]

    @property
    def trainable_variables(self) -> list:
        if not self.trainable:
            return []
        return [v for layer in self._unique_layers() for v in layer.trainable_variables]

    @property
    def non_trainable_variables(self) -> list:
        if not self.trainable:
            return self.variables
        return [v for layer in self._unique_layers() for v in layer.non_trainable_variables]

    def _param_slots(self) -> list:
        return [w for layer in self._unique_layers() for w in layer._param_slots()]

    def _param_variables(self) -> list:
        return [v for layer in self._unique_layers() for v in layer._param_variables()]

    @property
    def losses(self) -> list:
        return [t for layer in self._leaf_layers() for t in layer.losses]

    def regularization_loss(self) -> float:
        return float(sum(layer.regularization_loss() for layer in self._leaf_layers()))

    def count_params(self) -> int:
        self._require_built("its number of parameters")
        return int(sum(w.size for w in self.weights))

    def get_weights(self) -> list:
        """Copies of all weights, per layer kernel then bias (Keras's order)."""
        return [w for layer in self._unique_layers() for w in layer.get_weights()]

    def _checked_weights(self, weights):
        if weights is None or isinstance(weights, (np.ndarray, str, bytes)):
            raise ValueError(f"model {self.name!r}: weights must be a list of arrays (as "
                             f"get_weights() returns), got {type(weights).__name__}")
        weights = list(weights)
        layers = self._unique_layers()
        expected = sum(len(layer.weights) for layer in layers)
        if len(weights) != expected:
            per_layer = ", ".join(f"{l.name}: {[w.shape for w in l.weights]}"
                                  for l in layers if l.weights)
            raise ValueError(
                f"model {self.name!r} expects {expected} weight arrays ({per_layer}), "
                f"got {len(weights)}")
        checked, i = [], 0
        for layer in layers:
            n = len(layer.weights)
            checked.extend(layer._checked_weights(weights[i:i + n]))
            i += n
        return checked

    def set_weights(self, weights) -> None:
        """Sets all weights (the order of :meth:`get_weights`); checks everything first."""
        self._require_built("the weights' shapes")
        checked = self._checked_weights(weights)
        for old, new in zip(self.weights, checked):  # nothing assigned before here
            _device.assign(old, new)   # also a device array (fit on 'cuda')

    # --------------------------------------------------- the Layer protocol
    def forward(self, inputs, training=False):
        """``(outputs, ctx)``: the model as one layer (inside another model, or a tape)."""
        xs = list(inputs) if self.multiple_inputs else [inputs]
        if self._graph is not None:
            program = self._program(frozenset(), True)
            outs, ctxs = program.forward(xs, training)
            return (outs[0] if len(outs) == 1 else outs), (program, ctxs, outs)
        return Layer.forward(self, inputs, training)

    def backward(self, dy, ctx, need_dx=True):
        if self._graph is None:
            return Layer.backward(self, dy, ctx, need_dx)
        program, ctxs, outs = ctx
        dys = list(dy) if len(outs) > 1 else [dy]
        dxs, by_layer = program.backward(dys, list(ctxs))
        if not self.multiple_inputs:
            dxs = dxs[0] if dxs is not None else None
        return dxs, tuple(self._param_grads(by_layer))

    def _param_grads(self, by_layer):
        """The executor's per-layer gradients in :meth:`_param_slots` order (None where a
        layer got none: frozen, or not on a path to the outputs' gradients)."""
        grads = []
        for layer in self._unique_layers():
            got = by_layer.get(id(layer))
            grads.extend(got[1] if got is not None else [None] * len(layer._param_slots()))
        return grads

    def _output_values_like(self, ctx):
        return ctx[2]

    def _symbolic_call(self, inputs):
        if self._graph is None and isinstance(self, Sequential):
            first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
            self.build((None,) + tuple(first.shape[1:]))   # a Sequential learns its input here
        if self._graph is None:
            return Layer._symbolic_call(self, inputs)
        ins = self._as_input_list(inputs, "symbolic") if self.multiple_inputs else \
            [inputs[0] if isinstance(inputs, (list, tuple)) and len(inputs) == 1 else inputs]
        for t, spec in zip(ins, self._input_specs):
            if not isinstance(t, graph.KerasTensor):
                raise ValueError(f"model {self.name!r}: cannot mix symbolic tensors and arrays")
            if len(t.shape) != len(spec) or any(
                    a is not None and b is not None and a != b
                    for a, b in zip(t.shape[1:], spec[1:])):
                raise ValueError(
                    f"model {self.name!r} expects input of shape {format_shape(spec)}, got "
                    f"{t!r}")
        outs = [graph.KerasTensor((ins[0].shape[0],) + tuple(s[1:]), self.dtype,
                                  name=self.name) for s in self._output_shapes]
        node = graph.Node(self, ins, outs, self.multiple_inputs)
        for i, o in enumerate(outs):
            o.node, o.index = node, i
        self._inbound_nodes.append(node)
        return _restructure(outs, *self._output_kind)

    def _eager_call(self, inputs, training):
        """``model(x)`` on arrays or Tensors (Layer.__call__ dispatches here): the outputs as
        Tensors, recorded on an open GradientTape as ONE node (a graph model) or op by op
        (a subclassed model's call)."""
        if self._graph is None and isinstance(self, Sequential):
            # not built yet: the data's shape builds the chain (as Keras does)
            self._check_x([autodiff.value_of(v) for v in _structure(inputs, "x")[0]][0])
        if self._graph is None:
            if not self.built:
                leaves = [autodiff.value_of(v) for v in _structure(inputs, "x")[0]]
                self._build_subclassed([self._as_array(v, "x", False) for v in leaves])
            return self._run_call(inputs, training)
        leaves = [autodiff.value_of(v) for v in _structure(inputs, "x")[0]]
        raw = _structure(inputs, "x")[0]
        xs = self._check_x(leaves if len(leaves) > 1 else leaves[0])
        if not autodiff.recording():
            with _device.scope(self):
                outs = self._infer(xs) if not training else \
                    [_device.to_host(o) for o in self._program().forward(
                        [_device.put(self, x) for x in xs], True, keep=False)[0]]
            return _restructure([autodiff.Tensor(o) for o in outs], *self._output_kind)
        # Heads whose softmax/sigmoid a loss may fuse run without it; the activation is
        # applied as an op, and the output keeps the logits (as a layer call does).
        heads = {i: self._head_activation(i) for i in range(len(self._output_shapes))}
        heads = {i: a for i, a in heads.items() if a in ("softmax", "sigmoid")}
        program = self._program(frozenset(heads), True)
        outs, ctxs = program.forward(xs, training)
        params = self._param_variables()
        n = len(xs)
        recorded = [r if isinstance(r, (autodiff.Tensor, np.ndarray)) else x
                    for r, x in zip(raw, xs)]

        def backward(dys, needs):
            dxs, by_layer = program.backward(list(dys), list(ctxs))
            return list(dxs) + self._param_grads(by_layer)
        tensors = autodiff.record(self.name, recorded + params, outs, backward)
        del n
        if heads:
            from . import ops
            for i, act in heads.items():
                logits = tensors[i]
                tensors[i] = ops.softmax(logits) if act == "softmax" else ops.sigmoid(logits)
                tensors[i]._keras_logits, tensors[i]._keras_activation = logits, act
        return _restructure(tensors, *self._output_kind)

    # --------------------------------------------------------------- summary
    def summary(self, line_length=None, positions=None, print_fn=None):
        """Prints Keras's table: Layer (type) | Output Shape | Param # (and, for a graph
        that is not a chain, Connected to), then the totals."""
        self._require_built("its summary")
        graph_like = self._graph is not None and not isinstance(self, Sequential) and \
            not self._is_chain()
        line_length = line_length or (98 if graph_like else 65)
        positions = positions or ([0.33, 0.55, 0.67, 1.0] if graph_like
                                  else [0.45, 0.85, 1.0])
        if positions[-1] <= 1:
            positions = [int(line_length * p) for p in positions]
        print_fn = print_fn or print

        def row(fields):
            line = ""
            for i, field in enumerate(fields):
                if i > 0:
                    line = line[:-1] + " "
                line += str(field)
                line = line[:positions[i]]
                line += " " * (positions[i] - len(line))
            print_fn(line)

        print_fn(f'Model: "{self.name}"')
        print_fn("_" * line_length)
        row(["Layer (type)", "Output Shape", "Param #"] + (["Connected to"] if graph_like
                                                           else []))
        print_fn("=" * line_length)
        rows = self._summary_rows(graph_like)
        for i, fields in enumerate(rows):
            if graph_like and len(fields[3]) > 1:
                row(fields[:3] + [fields[3][0]])
                for extra in fields[3][1:]:
                    row(["", "", "", extra])
            else:
                row(fields[:3] + ([fields[3][0] if fields[3] else "-"] if graph_like else []))
            print_fn(("=" if i == len(rows) - 1 else "_") * line_length)
        trainable = sum(w.size for w in self.trainable_weights)
        non_trainable = sum(w.size for w in self.non_trainable_weights)
        print_fn(f"Total params: {trainable + non_trainable:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {non_trainable:,}")
        print_fn("_" * line_length)

    def _is_chain(self):
        nodes, ins, outs = self._graph
        return len(ins) == 1 and len(outs) == 1 and all(
            len(n.inputs) == 1 for n in nodes) and len({id(n.layer) for n in nodes}) == len(
            nodes)

    def _summary_rows(self, graph_like):
        rows = []
        if self._graph is None:
            for layer in self.layers:
                shape = format_shape(layer.output_shape) if layer.built and not isinstance(
                    layer.output_shape, list) else "?"
                rows.append([f"{layer.name} ({type(layer).__name__})", shape,
                             layer.count_params() if layer.built else 0, []])
            return rows
        nodes, ins, _ = self._graph
        node_index = {}
        for layer in self.layers:
            for k, n in enumerate(layer._inbound_nodes):
                node_index[id(n)] = k
        entries = [t.node for t in ins] if not isinstance(self, Sequential) else []
        entries += list(nodes)
        for node in entries:
            layer = node.layer
            shapes = [format_shape(t.shape) for t in node.outputs]
            connected = [f"{t.node.layer.name}[{node_index.get(id(t.node), 0)}][{t.index}]"
                         for t in node.inputs]
            rows.append([f"{layer.name} ({type(layer).__name__})",
                         shapes[0] if len(shapes) == 1 else ", ".join(shapes),
                         layer.count_params(), connected])
        return rows

    def __repr__(self):
        kind = "Functional" if self._graph is not None else type(self).__name__
        return f"<{kind} name={self.name!r}, {len(self.layers)} layers>"

    # ------------------------------------------------------------ save / load
    # Thin delegations: the file format and every check live in fastcnn.saving.
    def save(self, filepath, overwrite=True):
        """Writes architecture, weights, compile config and optimizer state to ONE file at
        ``filepath`` (atomically); ``fastcnn.load_model(filepath)`` rebuilds the model."""
        from . import saving
        saving.save_model(self, filepath, overwrite=overwrite)

    def save_weights(self, filepath, overwrite=True):
        """Writes only the weights (atomically); read them back with :meth:`load_weights`."""
        from . import saving
        saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath, skip_mismatch=False, by_name=False):
        """Sets the weights from a file of :meth:`save_weights` or :meth:`save`; the
        architecture must match (ValueError naming the first layer that differs). Keras's
        files (.weights.h5, legacy .h5, .keras) are read too, with Keras's
        ``skip_mismatch`` and (legacy .h5) ``by_name``."""
        from . import saving
        saving.load_weights(self, filepath, skip_mismatch=skip_mismatch, by_name=by_name)

    def export_onnx(self, path, batch_size=None, opset=None):
        """Writes the model as ONNX (NHWC input; ONNX Runtime gives the same predictions);
        ``batch_size`` None: a dynamic batch. Needs ``pip install fastcnn[onnx]``; see
        :func:`fastcnn.onnx_io.export_onnx`."""
        from . import onnx_io
        return onnx_io.export_onnx(self, path, batch_size=batch_size,
                                   opset=onnx_io.DEFAULT_OPSET if opset is None else opset)

    def get_config(self) -> dict:
        """The architecture as a JSON-able dict (graph models)."""
        from . import saving
        return saving.model_to_config(self)["config"]

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model from :meth:`get_config`'s output (weights freshly initialised)."""
        from . import saving
        name = "Sequential" if issubclass(cls, Sequential) else "Functional"
        return saving.model_from_config({"class_name": name, "config": config},
                                        custom_objects)


class Sequential(Model):
    """A linear stack of layers (Keras's ``keras.Sequential``): the simplest Functional model.

    ``Sequential(layers=None, name=None)``; the input shape comes from ``input_shape=`` on
    the first layer, a leading ``fastcnn.Input(shape)``, ``build(input_shape)``, or the first
    data the model sees. Once known, the model is a graph (a chain): ``model.input``,
    ``model.output`` and each ``layer.output`` exist, so ``Model(model.input,
    [layer.output for layer in model.layers])`` works as in Keras.
    """

    def __init__(self, layers=None, name=None, trainable=True):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        Layer.__init__(self, name=name or utils.unique_name("sequential"),
                       trainable=trainable)
        self._init_model_state()
        self._seq = []
        self._seq_ids = set()
        self._input_layer = None
        self._seq_nodes = []
        if layers is not None:
            if isinstance(layers, (Layer, graph.KerasTensor)) or not isinstance(
                    layers, (list, tuple)):
                raise ValueError(
                    f"layers must be a list of layers, got {type(layers).__name__}")
            for layer in layers:
                self.add(layer)

    @property
    def layers(self) -> list:
        return list(self._seq)

    def _unique_layers(self) -> list:
        return list(self._seq)

    def add(self, layer) -> None:
        """Appends a layer (built at once when the input shape is known)."""
        if isinstance(layer, graph.KerasTensor):
            if layer.node is None or not isinstance(layer.node.layer, InputLayer):
                raise ValueError("Sequential.add takes layers, or fastcnn.Input(...) first")
            layer = layer.node.layer
        if isinstance(layer, InputLayer):
            if self._seq or self._input_layer is not None:
                raise ValueError(
                    "an Input may only be the first entry of a Sequential model")
            self._input_layer = layer
            return
        if not isinstance(layer, Layer):
            raise ValueError(
                f"Sequential.add expects a fastcnn.layers.Layer, got {type(layer).__name__}")
        if id(layer) in self._seq_ids:
            raise ValueError(f"layer {layer.name!r} is already in model {self.name!r}")
        if not self._seq and self._input_layer is None and layer._batch_input_shape:
            self._input_layer = InputLayer(shape=layer._batch_input_shape[1:],
                                           dtype=layer._dtype_arg)
        self._seq.append(layer)
        self._seq_ids.add(id(layer))
        self._plan = None
        if self._input_layer is not None:
            try:
                self._extend(len(self._seq) - 1)
            except Exception:
                self._seq.pop()
                self._seq_ids.discard(id(layer))
                raise

    def pop(self):
        """Removes the last layer (Keras)."""
        if not self._seq:
            raise ValueError(f"model {self.name!r} has no layers to pop")
        layer = self._seq.pop()
        self._seq_ids.discard(id(layer))
        if self._input_layer is not None:
            self._extend(0)
        return layer

    def _model_dtype(self):
        first = self._seq[0]._dtype_arg if self._seq else None
        return first or self._input_layer._dtype_arg or np.dtype(config.floatx())

    def _extend(self, start):
        """Calls layers ``start:`` on the chain's tensors (from scratch when start is 0)."""
        if start == 0:
            for node in self._seq_nodes:
                owner = node.layer._inbound_nodes
                if any(node is n for n in owner):
                    owner.remove(node)
            self._seq_nodes = []
            x = self._input_layer.output
            dtype = self._model_dtype()
            if np.dtype(x.dtype) != dtype:
                self._input_layer = InputLayer(shape=self._input_layer.shape_arg,
                                               dtype=dtype, name=self._input_layer.name)
                x = self._input_layer.output
        else:
            x = self._seq_nodes[start - 1].outputs[0]
        dtype = np.dtype(x.dtype)
        for layer in self._seq[start:]:
            if layer._dtype_arg is not None and layer._dtype_arg != dtype:
                raise ValueError(
                    f"layer {layer.name!r} has dtype {layer._dtype_arg.name} but model "
                    f"{self.name!r} computes in {dtype.name}; fastcnn models use one "
                    f"dtype (leave dtype=None or set the same dtype everywhere)"
                )
            before = len(layer._inbound_nodes)
            x = layer(x)
            if isinstance(x, (list, tuple)) or len(layer._inbound_nodes) != before + 1:
                raise ValueError(f"layer {layer.name!r} must have one output in a Sequential "
                                 f"model")
            self._seq_nodes.append(layer._inbound_nodes[-1])
        self._init_graph(self._input_layer.output, x)

    def build(self, input_shape=None, dtype=None) -> None:
        """Builds every layer for ``input_shape`` (batch dimension first; may be None)."""
        if input_shape is None:
            if self._input_layer is None:
                raise ValueError(
                    "build() needs input_shape (batch first, e.g. (None, 28, 28, 1)) for a "
                    "model whose first layer has no input_shape")
        else:
            try:
                dims = tuple(input_shape)
            except TypeError:
                raise ValueError(
                    f"input_shape must be a tuple like (None, 28, 28, 1), got {input_shape!r}"
                ) from None
            if len(dims) < 2:
                raise ValueError(
                    f"input_shape must include the batch dimension, e.g. (None, 28, 28, 1); "
                    f"got {input_shape!r}")
            spec = normalize_shape(dims[1:], "input_shape", allow_unknown=True)
            if self._input_layer is not None and self.built and \
                    (None,) + spec != (None,) + self._input_layer.shape_arg:
                raise ValueError(
                    f"model {self.name!r} is built for input shape "
                    f"{format_shape((None,) + self._input_layer.shape_arg)}, got input_shape "
                    f"{input_shape!r}")
            if self._input_layer is None or self._input_layer.shape_arg != spec:
                self._input_layer = InputLayer(shape=spec, dtype=dtype or (
                    self._seq[0]._dtype_arg if self._seq else None))
        if not self._seq:
            raise ValueError(f"model {self.name!r} has no layers to build")
        self._extend(0)
        self._plan = None

    def _build_from_data(self, arrays):
        if not self._seq:
            raise ValueError(f"model {self.name!r} has no layers")
        self.build((None,) + arrays[0].shape[1:])

    def __repr__(self):
        return f"<Sequential name={self.name!r}, {len(self._seq)} layers>"
