"""Symbolic tensors and the layer graph of the Functional API.

Calling a layer on :class:`KerasTensor` objects (what :func:`Input` returns) computes
nothing: it builds the layer for the inputs' shapes and records a :class:`Node` (layer,
input tensors, output tensors). A :class:`~fastcnn.model.Model` made from inputs and
outputs walks these nodes back from its outputs (:func:`trace`) and runs them in
topological order (:mod:`fastcnn.executor`).
"""
from __future__ import annotations

import numpy as np



class KerasTensor:
    """A symbolic tensor: a shape (batch first, ``None`` where unknown), a dtype and the
    node that produces it (Keras's ``KerasTensor``). Layers called on it return new ones."""

    __slots__ = ("shape", "dtype", "node", "index", "name", "__weakref__")

    def __init__(self, shape, dtype, node=None, index=0, name=None):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype).name
        self.node = node        # the Node that outputs it
        self.index = index      # which output of that node
        self.name = name

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        from .layers.base import format_shape
        producer = "" if self.node is None else f", created by layer '{self.node.layer.name}'"
        return f"<KerasTensor shape={format_shape(self.shape)}, dtype={self.dtype}{producer}>"

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"{self!r} is symbolic (a placeholder in a Functional model being defined): it has "
            f"no values. Build a fastcnn.Model(inputs, outputs) and call it on arrays, or use "
            f"model.predict(x)")

    def __bool__(self):
        raise TypeError(f"{self!r} is symbolic: it has no truth value")

    __hash__ = object.__hash__


class Node:
    """One call of a layer in a graph: ``outputs = layer(inputs)``."""

    __slots__ = ("layer", "inputs", "outputs", "multiple_inputs")

    def __init__(self, layer, inputs, outputs, multiple_inputs):
        self.layer = layer
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.multiple_inputs = multiple_inputs

    @property
    def parents(self):
        return [t.node for t in self.inputs]

    def __repr__(self):
        return f"<Node {self.layer.name}: {len(self.inputs)} -> {len(self.outputs)}>"


def flatten(structure) -> list:
    """The KerasTensors / arrays of a tensor, list, tuple or dict (dict values in order)."""
    if isinstance(structure, dict):
        return [leaf for v in structure.values() for leaf in flatten(v)]
    if isinstance(structure, (list, tuple)):
        return [leaf for v in structure for leaf in flatten(v)]
    return [structure]


def is_symbolic(x) -> bool:
    """True for a KerasTensor or a (possibly nested) list/dict containing one."""
    if isinstance(x, KerasTensor):
        return True
    if isinstance(x, (list, tuple)):
        return any(is_symbolic(v) for v in x)
    if isinstance(x, dict):
        return any(is_symbolic(v) for v in x.values())
    return False


def trace(inputs, outputs):
    """``(nodes, tensors)``: the nodes between ``inputs`` and ``outputs`` in topological
    order (each node after the nodes producing its inputs), and every tensor they use.

    ValueError when an output depends on an Input that is not among ``inputs`` (the error
    names that Input and the tensor it reaches) or on a tensor no layer produced.
    """
    allowed = {id(t) for t in inputs}
    order, state = [], {}
    tensors = {}

    def visit(tensor, path_tensor):
        tensors[id(tensor)] = tensor
        node = tensor.node
        if node is None:
            raise ValueError(f"{tensor!r} was not produced by a layer; a Functional model's "
                             f"tensors come from fastcnn.Input and layer calls")
        if id(tensor) in allowed:
            if id(node) not in state:
                state[id(node)] = "input"
            return
        from .layers.core import InputLayer
        if isinstance(node.layer, InputLayer):
            raise ValueError(
                f"graph disconnected: output {path_tensor!r} needs the input "
                f"{tensor.name!r} (Input of shape {_fmt(tensor.shape)}), which is not among "
                f"the model's inputs {[t.name for t in inputs]}; pass it in inputs=[...]")
        mark = state.get(id(node))
        if mark == "done" or mark == "input":
            return
        if mark == "visiting":
            raise ValueError(f"the graph has a cycle through layer {node.layer.name!r}")
        state[id(node)] = "visiting"
        for parent in node.inputs:
            visit(parent, path_tensor)
        state[id(node)] = "done"
        order.append(node)

    for out in outputs:
        visit(out, out)
    return order, tensors


def keras_layer_order(inputs, outputs) -> list:
    """The layers between ``inputs`` and ``outputs`` in Keras 3's ``model.layers`` order
    (keras/src/ops/function.py ``map_graph``): by decreasing depth (the longest distance to
    an output), ties in the order a depth-first walk from the outputs first meets them.

    Keras's order is what its files, ``get_weights()`` and ``summary()`` follow, so a
    Functional model lists its layers so too. ``inputs`` and ``outputs`` are flat lists of
    tensors, a dict's values in the order of its sorted keys (as Keras flattens them).
    """
    from .layers.core import InputLayer
    finished, post_order, first_seen = set(), [], {}
    for out in outputs:
        stack = [(out.node, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in finished:
                continue
            if expanded:
                finished.add(id(node))
                post_order.append(node)
                continue
            first_seen.setdefault(id(node.layer), len(first_seen))
            stack.append((node, True))
            if not isinstance(node.layer, InputLayer):
                for t in reversed(node.inputs):   # Keras recurses into them in order
                    if id(t.node) not in finished:
                        stack.append((t.node, False))
    node_depth, layer_depth, layers = {}, {}, {}
    for node in reversed(post_order):
        depth = max(node_depth.setdefault(id(node), 0), layer_depth.get(id(node.layer), 0))
        layer_depth[id(node.layer)] = node_depth[id(node)] = depth
        layers[id(node.layer)] = node.layer
        for t in node.inputs:
            node_depth[id(t.node)] = max(depth + 1, node_depth.get(id(t.node), 0))
    for t in inputs:   # an input no output depends on
        if id(t.node.layer) not in layer_depth:
            layer_depth[id(t.node.layer)] = 0
            first_seen[id(t.node.layer)] = -1
            layers[id(t.node.layer)] = t.node.layer
    return sorted(layers.values(), key=lambda l: (-layer_depth[id(l)], first_seen[id(l)]))


def _fmt(shape):
    from .layers.base import format_shape
    return format_shape(shape)
