"""Compiled train steps: a model's forward, loss, backward and optimizer update as one flat
list of prebound calls, for one input shape.

``fit``, ``train_on_batch`` and ``train_step`` use one automatically (:func:`step`, called by
``Trainer._train_step``) when nothing prevents it. At batch 1 the step's Python around
the kernels (the executor's slots, each layer's dispatch and checks, the gradients'
assembly, the optimizer's per-call bookkeeping) costs about twice the kernels; at batch
64 and above it is a few per cent. So the plan removes the Python, not the arithmetic.

What compiling does, once per (training plan, backend, input shape):

* **Binding.** The graph executor's program (:mod:`fastcnn.executor`: its steps, fused
  groups, slots and gradient sums) runs with each step's forward and backward replaced by
  a prebound call where one exists, everything that does not change between steps looked
  up once: for Conv2D, Dense, the pooling layers and Flatten on the ``auto`` backend the
  concrete backend's kernel functions (auto's routing table picks by shape, and the
  shapes are fixed), with the strides and padding bound; every other layer (Add,
  Concatenate, BatchNormalization, Dropout, ...) runs its own ``forward`` / ``backward``.
* **The update where the gradient is made.** Each layer's weights are updated as soon as
  the backward has completed their gradients (after its last call's backward where a
  layer is shared; the optimizer's own per-weight ``_update``, the one
  ``optimizer.apply`` runs), while they are still in cache, instead of after the whole
  backward. Safe because no backward still to run reads those weights (only the layer's
  own calls do, and they have run); the per-weight updates do not depend on each other,
  so the order changes nothing.
* **Checks once.** The loss (with the regularizers' penalties) is computed and checked for
  NaN/inf before any backward, as the general path does (no weight changes on a
  non-finite loss); the regularizers' gradients join each layer's before its update, the
  constraints apply after every update, as in the general step.

Guarantees: the same numbers as the general step, bit for bit (the same kernels are
called on the same arrays in the same order per weight; tested on chains and on a graph
with a residual Add, a Concatenate and a shared layer, with four optimizers, against
``FASTCNN_TRAIN_PLAN=0``). Weights,
optimizer slots, the learning rate (schedules included) and the metrics are read live,
so ``set_weights``, ``load_weights``, callbacks changing the learning rate or freezing
layers (a new training plan) all apply at the next step.

When the plan does not apply (the reason: :func:`why_not`), the general step runs: a
layer used both inside a nested model and outside it, a subclassed model, a user's own layer, an optimizer with global_clipnorm
(clipping by every gradient's norm needs them all first; clipnorm, clipvalue, weight decay,
loss scaling and EMA run per weight) or its own ``_apply``, several MPI processes, a
device (CUDA) backend.

Environment: ``FASTCNN_TRAIN_PLAN=0`` turns it off.
"""
from __future__ import annotations

import os

import numpy as np

from . import _device, activations, backends, distributed
from .layers.conv import Conv2D
from .layers.core import Dense, Flatten
from .layers.fusion import ReluAfterMaxPool
from .layers.pooling import _Pooling2D

__all__ = ["TrainStep", "why_not", "step"]


def _enabled() -> bool:
    return os.environ.get("FASTCNN_TRAIN_PLAN", "1") != "0"


# ---------------------------------------------------------------- eligibility
def why_not(model, plan) -> str | None:
    """Why ``model``'s training plan cannot run as a compiled step (None: it can)."""
    program = plan.program
    if program is None:
        return "a subclassed model (its call() is Python)"
    from .training import Trainer   # (training imports this module)
    owned = {}   # each trainable leaf: the step that owns it (a nested model's leaves too)
    for st in program.steps:
        if not st.collect:
            continue
        leaves = st.params_layer._leaf_layers() if isinstance(st.params_layer, Trainer) \
            else [st.params_layer]
        for leaf in leaves:
            if owned.setdefault(id(leaf), id(st.params_layer)) != id(st.params_layer):
                # its gradients come from two places: summed only at the end
                return f"layer {leaf.name!r} is used inside and outside a nested model"
    custom = [layer for layer in model._leaf_layers()
              if not type(layer).__module__.startswith("fastcnn.")]
    if custom:
        # a user's layer might read another layer's weights in its backward, after the
        # compiled step has updated them
        return f"custom layer {custom[0].name!r} ({type(custom[0]).__name__})"
    if not plan.train_vars:
        return "nothing to train"
    seen = set(owned)
    owners = {id(layer) for layer, _ in plan.train_layers}
    if owners - seen:
        return "a trainable layer outside the steps"
    return _live_reason(model, plan)


def _live_reason(model, plan) -> str | None:
    """What may change between two steps of one training plan (checked every step)."""
    opt = model.optimizer
    if not opt._per_weight_updates():
        return f"optimizer {type(opt).__name__} with global_clipnorm (every gradient's " \
               f"norm first), constraints of its own or its own _apply"
    if distributed.current().size != 1:
        return "several MPI processes"
    if getattr(backends.current().module, "DEVICE_RESIDENT", False):
        return "a device backend"
    if _device.check_same_kind(plan.train_vars, "weights"):
        return "weights on a device"
    return None


# ---------------------------------------------------------------- binding
def _concrete(backend, op, *args):
    """The backend whose kernels ``backend``'s op runs on these arguments: auto's routing
    resolved once for fixed shapes (auto's ctx would otherwise carry it every call)."""
    route = getattr(backend.module, "backend_for", None)
    return backend if route is None else route(op, *args)


def _bind_kernel_layer(step, backend, x):
    """Conv2D (no dilation) / Dense (2-D input) with their activation: the backend's op
    pair and the activation's, as ``KernelLayer.forward`` / ``backward`` run them."""
    layer = step.layer
    act = layer.activation if step.activate and layer.activation != "linear" else None
    act_fwd, act_bwd = _activation_pair(backend, act)
    # the op's arguments after (x, kernel, bias): a conv's strides and padding, none for
    # a dense layer
    op, extra = ("conv2d", (layer.strides, layer._window.pad(x.shape))) \
        if isinstance(layer, Conv2D) else ("dense", ())
    impl = _concrete(backend, op, x, layer.kernel, layer.bias, *extra)
    op_fwd, op_bwd = getattr(impl, op + "_forward"), getattr(impl, op + "_backward")

    def forward(x, training):
        y, ctx = op_fwd(x, layer.kernel, layer.bias, *extra)
        if act_fwd is None:
            return y, (ctx, None)
        y, act_ctx = act_fwd(y)
        return y, (ctx, act_ctx)

    with_bias = layer.use_bias

    def backward(dy, ctx, need_dx):
        op_ctx, act_ctx = ctx
        if act_bwd is not None:
            dy = act_bwd(dy, act_ctx)
        dx, dw, db = op_bwd(dy, op_ctx, need_dx)
        return dx, ((dw, db) if with_bias else (dw,))
    return forward, backward


def _activation_pair(backend, act):
    """``(forward(y) -> (y, ctx), backward(dy, ctx) -> dx)`` of a named activation on
    ``backend`` (fastcnn.activations' own functions), or ``(None, None)``."""
    if act is None:
        return None, None

    def forward(y):
        return activations.forward(backend, act, y)

    def backward(dy, ctx):
        return activations.backward(backend, act, dy, ctx)
    return forward, backward


def _bind_pool(step, backend, x):
    layer = step.layer
    pool, strides, pad = layer.pool_size, layer.strides, layer._window.pad(x.shape)
    impl = _concrete(backend, layer._OP, x, pool, strides, pad)
    op_fwd, op_bwd = getattr(impl, layer._forward_op), getattr(impl, layer._backward_op)

    def forward(x, training):
        return op_fwd(x, pool, strides, pad)

    def backward(dy, ctx, need_dx):
        return op_bwd(dy, ctx), ()
    return forward, backward


def _bind_flatten(step, backend, x):
    shape_out = (x.shape[0], int(np.prod(x.shape[1:])))
    shape_in = x.shape

    def forward(x, training):
        return x.reshape(shape_out), None

    def backward(dy, ctx, need_dx):
        return dy.reshape(shape_in), ()
    return forward, backward


def _bind_generic(step, backend, x):
    """The step's own forward and backward (the executor's)."""
    return step.run, step.back


def _binder(step, x):
    """The binder of an executor step for its input ``x`` (shape and dtype)."""
    layer = step.layer
    if step.multiple_inputs or _is_fused(step):
        return _bind_generic
    if type(layer) is Conv2D and layer.dilation_rate == (1, 1):
        return _bind_kernel_layer
    if type(layer) is Dense and x.ndim == 2:
        return _bind_kernel_layer
    if isinstance(layer, _Pooling2D) and type(layer).forward is _Pooling2D.forward \
            and type(layer).backward is _Pooling2D.backward:
        return _bind_pool
    if type(layer) is Flatten and x.flags.c_contiguous:
        return _bind_flatten
    return _bind_generic


def _is_fused(step) -> bool:
    """A ReLU-after-max-pool group (fastcnn.layers.fusion): its own forward picks the
    fused kernel."""
    return isinstance(getattr(step.run, "__self__", None), ReluAfterMaxPool)


class TrainStep:
    """One model's train step bound for one input shape (see the module doc): the graph
    executor's program run with prebound steps, each layer's weights updated as soon as
    the program's backward has completed their gradients.

    Binding needs each step's input, so it happens during the first :meth:`forward`
    (each step is bound just before it first runs; nothing runs twice)."""

    def __init__(self, model, plan, xs):
        self.model = model
        self.plan = plan
        self.backend = backends.current()
        self.key = _key(xs)
        self.program = program = plan.program
        self.runs = [self._binding(i, st) for i, st in enumerate(program.steps)]
        self.backs = [None] * len(program.steps)
        # Per trainable layer: where its weights start in plan.train_vars (the optimizer's
        # variable order), how many, and the layer where it adds regularizer gradients.
        start, self.slots = 0, {}
        for layer, ws in plan.train_layers:
            self.slots[id(layer)] = (start, len(ws),
                                     layer if id(layer) in plan.regularized else None)
            start += len(ws)
        self._updaters, self._slots_of = None, None
        self._lr = self._t = None
        self._updated = set()

    def _binding(self, i, st):
        def bind_and_run(x, training):
            fwd, bwd = _binder(st, x)(st, self.backend, x)
            self.runs[i] = fwd
            self.backs[i] = None if bwd is st.back else bwd
            return fwd(x, training)
        return bind_and_run

    def forward(self, xs, ys, sw=None):
        """``(loss, outputs, d_outputs, contexts, per-output losses)``: the forward and the
        loss (``sw``: per-sample weights), by the general step's own loss code."""
        plan = self.plan
        outs, ctxs = self.program.forward(xs, True, runs=self.runs)
        loss, dys, parts = self.model._compute_loss(plan, outs, ys, plan.logits, sw)
        if plan.regularized:   # the loss as Keras reports it, in the general order
            loss += sum(layer.regularization_loss() for layer, _ in plan.train_layers)
        return loss, outs, dys, ctxs, parts

    def backward_and_update(self, dys, ctxs):
        """The backward, each layer's weights updated as soon as their gradients are
        complete (the optimizer's per-weight ``_update``, as ``optimizer.apply`` runs it)."""
        opt = self.model.optimizer
        plan = self.plan
        self._lr = opt.learning_rate
        self._t = t = opt.iterations + 1
        opt._before_updates(t, plan.train_vars)
        if self._slots_of is not opt._slots:   # (re)built optimizer state: bind again
            self._updaters = [opt._updater(k) for k in range(len(plan.train_vars))]
            self._slots_of = opt._slots
        updated = self._updated
        updated.clear()
        _, left = self.program.backward(dys, ctxs, backs=self.backs, done=self._update)
        for layer, grads in left.values():
            self._update(layer, grads)
        if len(updated) < len(self.slots):   # not reached: zero gradients, as the general
            for layer, _ in plan.train_layers:   # step gives them
                if id(layer) not in updated:
                    self._update(layer, ())
        if opt.use_ema:   # after every update, as the general step
            opt._ema_host(plan.train_vars)
        opt.iterations += 1
        for v in plan.constrained:   # after every update, as the general step
            v.assign(v.constraint(v.value))

    def _update(self, layer, grads):
        slot = self.slots.get(id(layer))
        if slot is None:   # a nested model: its gradients split over its layers
            i = 0
            for sub in layer._unique_layers():
                k = len(sub._param_slots())
                part = tuple(grads[i:i + k])
                i += k
                if any(g is not None for g in part) and (
                        id(sub) in self.slots or hasattr(sub, "_unique_layers")):
                    self._update(sub, part)
            return
        k0, count, regularized = slot
        variables = self.plan.train_vars
        grads = tuple(np.zeros_like(variables[k0 + j])
                      if j >= len(grads) or grads[j] is None else grads[j]
                      for j in range(count))
        if regularized is not None:
            grads = regularized.add_regularization_gradients(grads)
        updaters, lr, t = self._updaters, self._lr, self._t
        for j in range(count):
            updaters[k0 + j](grads[j], lr, t)
        self._updated.add(id(layer))


def _key(xs):
    return tuple((x.shape, x.dtype) for x in xs), id(backends.current())


def step(model, plan, xs):
    """The cached :class:`TrainStep` of ``model``'s training ``plan`` for inputs ``xs``,
    or None where one does not apply (the reason stays on the plan:
    ``plan.compiled_step``)."""
    cached = plan.compiled_step
    if type(cached) is str or not _enabled():   # the graph's refusal, or switched off
        return None
    opt = model.optimizer
    if opt._variables is not plan.train_vars:
        return None   # the first step binds the optimizer (the general path does that)
    key = _key(xs)
    if cached is not None and cached.key == key and opt._per_weight_updates() \
            and distributed.current().size == 1:
        return cached
    reason = why_not(model, plan)
    if reason is not None:
        if _live_reason(model, plan) is None:   # the graph's: for good
            plan.compiled_step = reason
        return None
    # One per input shape, a few kept: fit's short last batch and the next epoch's full
    # ones take turns.
    others = plan.other_steps
    compiled = others.get(key)
    if compiled is None:
        if len(others) >= 4:
            others.clear()
        compiled = others[key] = TrainStep(model, plan, xs)
    plan.compiled_step = compiled
    return compiled
