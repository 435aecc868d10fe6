"""Runs a layer graph: the forward pass in topological order, the backward pass in reverse.

A :class:`Program` is compiled once per model and configuration (which outputs hand the
loss their logits, whether the caller needs the inputs' gradients, the trainable flags)
from the graph's nodes (:mod:`fastcnn.graph`). Values live in a flat list of *slots*, one
per tensor; each *step* reads its input slots and writes its output slots:

* forward: ``y, ctx = layer.forward(x, training)`` per step; the contexts are the only
  state of a call, returned to the caller (nothing is kept on a layer or the program, so
  several calls may be in flight);
* backward: per step in reverse, ``dx, grads = layer.backward(dy, ctx, need_dx)``; where a
  tensor feeds several consumers their gradients are summed into its slot, and where a
  layer runs several times (shared weights) its weight gradients are summed;
* only what leads to a trainable weight (or to an input whose gradient was asked for) is
  differentiated: a step with nothing trainable upstream runs no backward, and a step
  whose inputs need no gradient is told ``need_dx=False`` (for a first conv on 1-3
  channels that is about half of its backward).

Rewrites that change no result (:mod:`fastcnn.layers.fusion`) replace adjacent nodes, one
feeding only the other, by one fused step.
"""
from __future__ import annotations

from . import _device
from .layers import fusion


def add(a, b):
    """``a + b`` as a new array (gradients are never summed in place: a backward may hand
    back its own ``dy``)."""
    if a is None:
        return b
    if _device.is_device_array(a) or _device.is_device_array(b):
        return _device.add_scaled(a, b, 1.0)
    return a + b


class Step:
    """One layer call (a node) or a fused group of them, wired to slots."""

    __slots__ = ("layer", "run", "back", "in_slots", "out_slots", "multiple_inputs",
                 "activate", "params_layer", "backprop", "needs", "need_dx", "collect",
                 "free", "name")

    def __init__(self, layer, in_slots, out_slots, multiple_inputs, activate=True,
                 fused=None):
        self.layer = layer
        self.in_slots = in_slots
        self.out_slots = out_slots
        self.multiple_inputs = multiple_inputs
        self.activate = activate
        self.name = layer.name if fused is None else repr(fused)
        if fused is not None:
            self.run, self.back = fused.forward, fused.backward
            self.params_layer = fused.params_layer
        else:
            if not activate:
                self.run = lambda x, training: layer.forward(x, training, activate=False)
            else:
                self.run = layer.forward
            self.back = layer.backward
            self.params_layer = layer
        self.backprop = True
        self.needs = ()
        self.need_dx = True
        self.collect = False
        self.free = ()


def _has_trainable_params(layer) -> bool:
    return bool(layer.trainable and layer._param_slots())


class Program:
    """The compiled forward and backward of a graph (see the module doc).

    ``nodes`` in topological order; ``inputs``/``outputs`` the graph's KerasTensors;
    ``logits``: indices of outputs whose layer runs without its activation (the loss fuses
    it); ``need_input_grad``: whether :meth:`backward` returns the inputs' gradients.
    """

    def __init__(self, nodes, inputs, outputs, logits=frozenset(), need_input_grad=False,
                 fuse=True):
        slot = {}

        def slot_of(t):
            if id(t) not in slot:
                slot[id(t)] = len(slot)
            return slot[id(t)]

        self.input_slots = [slot_of(t) for t in inputs]
        self.output_slots = [slot_of(t) for t in outputs]
        output_ids = {id(t) for t in outputs}
        logit_nodes = {id(outputs[i].node) for i in logits}
        input_ids = {id(t) for t in inputs}
        body = [n for n in nodes if not all(id(t) in input_ids for t in n.outputs)]
        consumers = {}
        for n in body:
            for t in n.inputs:
                consumers[id(t)] = consumers.get(id(t), 0) + 1
        groups = fusion.plan(body, consumers, output_ids | logit_nodes) if fuse else []
        producers = {id(g.producer) for g in groups}
        by_consumer = {id(g.consumer): g for g in groups}
        steps = []
        for n in body:
            if id(n) in producers:
                continue   # runs inside the fused step, where its only consumer runs
            g = by_consumer.get(id(n))
            if g is not None:
                steps.append(Step(g.producer.layer, [slot_of(t) for t in g.producer.inputs],
                                  [slot_of(t) for t in n.outputs], False, fused=g))
                continue
            steps.append(Step(n.layer, [slot_of(t) for t in n.inputs],
                              [slot_of(t) for t in n.outputs], n.multiple_inputs,
                              activate=id(n) not in logit_nodes))
        self.steps = steps
        self.n_slots = len(slot)
        self.need_input_grad = need_input_grad
        # Which slots carry a gradient anyone needs (forward reachability from trainable
        # weights and, when asked for, the inputs).
        needs_grad = [False] * self.n_slots
        for s in self.input_slots:
            needs_grad[s] = need_input_grad
        for step in steps:
            own = _has_trainable_params(step.params_layer)
            step.needs = [needs_grad[s] for s in step.in_slots]
            step.need_dx = any(step.needs)
            step.backprop = own or step.need_dx
            step.collect = own
            for s in step.out_slots:
                needs_grad[s] = step.backprop
        # Each value is released after its last use.
        last = {}
        for i, step in enumerate(steps):
            for s in step.in_slots:
                last[s] = i
        keep = set(self.output_slots)
        frees = [[] for _ in steps]
        for s, i in last.items():
            if s not in keep:
                frees[i].append(s)
        for step, f in zip(steps, frees):
            step.free = tuple(f)
        self._compile_loops()

    # ------------------------------------------------------------------ forward
    def _compile_loops(self):
        """Each step's wiring as a flat tuple: the loops below run once per layer per batch,
        so they read locals rather than attributes (batch-1 steps are Python-bound)."""
        self._fwd = [(step.run,
                      None if step.multiple_inputs else step.in_slots[0], step.in_slots,
                      step.out_slots[0] if len(step.out_slots) == 1 else None,
                      step.out_slots, step.free) for step in self.steps]
        self._bwd = [(i, step, step.back,
                      step.out_slots[0] if len(step.out_slots) == 1 else None,
                      None if step.multiple_inputs else step.in_slots[0],
                      step.need_dx, id(step.params_layer) if step.collect else None)
                     for i, step in reversed(list(enumerate(self.steps))) if step.backprop]
        # The backward step after which a layer's gradients are complete (its last in
        # backward order: a shared layer's calls sum into one): where `done` fires.
        seen = set()
        self._final = [False] * len(self.steps)
        for i, _, _, _, _, _, key in reversed(self._bwd):
            if key is not None and key not in seen:
                seen.add(key)
                self._final[i] = True

    def forward(self, xs, training, keep=True, runs=None):
        """``(outputs, ctxs)``; ``keep=False`` (inference): no contexts are kept. Each value
        is released after its last use either way. ``runs``: per step, a function to run
        instead of the step's own (same protocol; fastcnn.train_plan's prebound calls), or
        None."""
        vals = [None] * self.n_slots
        for s, x in zip(self.input_slots, xs):
            vals[s] = x
        ctxs = [None] * len(self._fwd) if keep else None
        i = 0
        for run, in0, ins, out0, outs, free in self._fwd:
            if runs is not None and runs[i] is not None:
                run = runs[i]
            y, ctx = run(vals[in0] if in0 is not None else [vals[s] for s in ins], training)
            if out0 is not None:
                vals[out0] = y
            else:
                for s, v in zip(outs, y):
                    vals[s] = v
            if keep:
                ctxs[i] = ctx
            # A value nobody reads any more goes (a context keeps what its backward needs).
            for s in free:
                vals[s] = None
            i += 1
        return [vals[s] for s in self.output_slots], ctxs

    # ----------------------------------------------------------------- backward
    def backward(self, dys, ctxs, backs=None, done=None):
        """``(dxs, grads)``: the inputs' gradients (None unless ``need_input_grad``) and
        ``{id(layer): (layer, grads)}`` for every layer whose trainable weights got a
        gradient (summed over the layer's calls). ``dys[i]`` may be None for an output no
        loss reads.

        ``backs``: per step, a backward to run instead of the step's own, or None.
        ``done(layer, grads)``: called as soon as a layer's gradients are complete (after
        its last call's backward; fastcnn.train_plan updates the weights there); such
        layers are left out of the returned dict."""
        grads = [None] * self.n_slots
        for s, d in zip(self.output_slots, dys):
            if d is not None:
                grads[s] = d if grads[s] is None else add(grads[s], d)
        by_layer = {}
        for i, step, back, out0, in0, need_dx, key in self._bwd:
            if out0 is not None:
                dy = grads[out0]
                if dy is None:
                    continue
                grads[out0] = None
            else:
                dy = [grads[s] for s in step.out_slots]
                if all(d is None for d in dy):
                    continue
                dy = [_device.zeros_like(c) if d is None else d
                      for d, c in zip(dy, _output_likes(step, ctxs[i]))]
                for s in step.out_slots:
                    grads[s] = None
            if backs is not None and backs[i] is not None:
                back = backs[i]
            dx, layer_grads = back(dy, ctxs[i], need_dx)
            ctxs[i] = None   # frees the step's buffers before the next backward allocates
            if key is not None:
                held = by_layer.get(key)
                if held is None:
                    by_layer[key] = (step.params_layer, layer_grads)
                else:
                    by_layer[key] = (step.params_layer, tuple(
                        b if a is None else add(a, b) if b is not None else a
                        for a, b in zip(held[1], layer_grads)))
                if done is not None and self._final[i]:
                    done(*by_layer.pop(key))
            if need_dx:
                if in0 is not None:
                    grads[in0] = dx if grads[in0] is None else add(grads[in0], dx)
                else:
                    for s, need, d in zip(step.in_slots, step.needs, dx):
                        if need and d is not None:
                            grads[s] = d if grads[s] is None else add(grads[s], d)
        dxs = [grads[s] for s in self.input_slots] if self.need_input_grad else None
        return dxs, by_layer


def _output_likes(step, ctx):
    """Arrays shaped like a multi-output step's outputs (a nested model: its ctx knows)."""
    return step.layer._output_values_like(ctx)
