"""Compiled train steps: a model's forward, loss, backward and optimizer update as one flat
list of prebound calls, for one input shape.

``fit``, ``train_on_batch`` and ``train_step`` use one automatically (:func:`step`, called by
``Trainer._train_step``) when nothing prevents it. At batch 1 the step's Python around
the kernels (the executor's slots, each layer's dispatch and checks, the gradients'
assembly, the optimizer's per-call bookkeeping) costs about twice the kernels; at batch
64 and above it is a few per cent. So the plan removes the Python, not the arithmetic.

What compiling does, once per (training plan, backend, input shape):

* **Binding.** The graph executor's steps (:mod:`fastcnn.executor`, fused groups
  included) must form one chain: one input, one output, each step reading the one before.
  Each step becomes a forward call and a backward call with everything that does not
  change between steps looked up once: for Conv2D, Dense, the pooling layers and Flatten
  on the ``auto`` backend the concrete backend's kernel functions (auto's routing table
  picks by shape, and the shapes are fixed), with the strides and padding bound; any
  other layer runs its own ``forward`` / ``backward`` (BatchNormalization, Dropout, ...).
* **The update where the gradient is made.** Each layer's weights are updated as soon as
  its backward has produced their gradients (the optimizer's own per-weight ``_update``,
  the one ``optimizer.apply`` runs), while they are still in cache, instead of after the
  whole backward. Safe because every weight is used by exactly one step, and that step's
  backward has already run; the per-weight updates do not depend on each other, so the
  order changes nothing.
* **Checks once.** The loss (with the regularizers' penalties) is computed and checked for
  NaN/inf before any backward, as the general path does (no weight changes on a
  non-finite loss); the regularizers' gradients join each layer's before its update, the
  constraints apply after every update, as in the general step.

Guarantees: the same numbers as the general step, bit for bit (the same kernels are
called on the same arrays in the same order per weight; tested on the standard models,
with every optimizer that runs per weight, against ``FASTCNN_TRAIN_PLAN=0``). Weights,
optimizer slots, the learning rate (schedules included) and the metrics are read live,
so ``set_weights``, ``load_weights``, callbacks changing the learning rate or freezing
layers (a new training plan) all apply at the next step.

When the plan does not apply (the reason: :func:`why_not`), the general step runs:
several inputs or outputs, a graph that is not a chain, a nested model or a subclassed
one, a user's own layer, sample or class weights, an optimizer with clipping,
weight decay, EMA, loss scaling, gradient accumulation or its own ``_apply``, several
MPI processes, a device (CUDA) backend.

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
    if plan.nested:
        return "a nested model"
    if len(program.input_slots) != 1 or len(program.output_slots) != 1:
        return "several inputs or outputs"
    if plan.losses[0] is None or plan.loss_weights[0] != 1.0:
        return "no loss, or a loss weight"
    if not plan.train_vars:
        return "nothing to train"
    prev = program.input_slots[0]
    seen = set()
    for st in program.steps:
        if st.multiple_inputs or len(st.in_slots) != 1 or len(st.out_slots) != 1 \
                or st.in_slots[0] != prev:
            return f"step {st.name!r} is not part of one chain"
        prev = st.out_slots[0]
        custom = [layer for layer in _layers_of(st)
                  if not type(layer).__module__.startswith("fastcnn.")]
        if custom:
            # a user's layer might read another layer's weights in its backward, after
            # the compiled step has updated them
            return f"custom layer {custom[0].name!r} ({type(custom[0]).__name__})"
        if st.collect:
            if id(st.params_layer) in seen:
                return f"layer {st.params_layer.name!r} runs twice (shared weights)"
            seen.add(id(st.params_layer))
    if prev != program.output_slots[0]:
        return "the output is not the last step's"
    owners = {id(layer) for layer, _ in plan.train_layers}
    if owners - seen:
        return "a trainable layer outside the steps"
    return _live_reason(model, plan)


def _layers_of(step):
    fused = getattr(step.run, "__self__", None)
    if isinstance(fused, ReluAfterMaxPool):
        return (fused.conv, fused.pool)
    return (step.layer,)


def _live_reason(model, plan) -> str | None:
    """What may change between two steps of one training plan (checked every step)."""
    opt = model.optimizer
    if not opt._plain_updates():
        return f"optimizer {type(opt).__name__} with clipping, weight decay, EMA, loss " \
               f"scaling, gradient accumulation or its own _apply"
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
    if isinstance(layer, Conv2D):
        strides, pad = layer.strides, layer._window.pad(x.shape)
        impl = _concrete(backend, "conv2d", x, layer.kernel, layer.bias, strides, pad)
        op_fwd, op_bwd = impl.conv2d_forward, impl.conv2d_backward

        def forward(x):
            y, ctx = op_fwd(x, layer.kernel, layer.bias, strides, pad)
            if act_fwd is None:
                return y, (ctx, None)
            y, act_ctx = act_fwd(y)
            return y, (ctx, act_ctx)
    else:
        impl = _concrete(backend, "dense", x, layer.kernel, layer.bias)
        op_fwd, op_bwd = impl.dense_forward, impl.dense_backward

        def forward(x):
            y, ctx = op_fwd(x, layer.kernel, layer.bias)
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

    def forward(x):
        return op_fwd(x, pool, strides, pad)

    def backward(dy, ctx, need_dx):
        return op_bwd(dy, ctx), ()
    return forward, backward


def _bind_flatten(step, backend, x):
    shape_out = (x.shape[0], int(np.prod(x.shape[1:])))
    shape_in = x.shape

    def forward(x):
        return x.reshape(shape_out), None

    def backward(dy, ctx, need_dx):
        return dy.reshape(shape_in), ()
    return forward, backward


def _bind_generic(step, backend, x):
    run, back = step.run, step.back

    def forward(x):
        return run(x, True)
    return forward, back


def _binder(step, x):
    """The binder of an executor step for its input ``x`` (shape and dtype)."""
    layer = step.layer
    if _is_fused(step):   # ReLU after max pooling: its own forward picks the fused kernel
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
    return len(_layers_of(step)) > 1


class TrainStep:
    """One model's train step bound for one input shape (see the module doc).

    Binding needs each step's input, so it happens during the first :meth:`forward`
    (each step is bound just before it first runs; nothing runs twice)."""

    def __init__(self, model, plan, x):
        self.model = model
        self.plan = plan
        self.backend = backends.current()
        self.x_shape, self.x_dtype = x.shape, x.dtype
        self.steps = plan.program.steps
        self.forwards = None
        # Where each trainable layer's weights start in plan.train_vars (the optimizer's
        # variable order), and how many it has.
        start, first = 0, {}
        for layer, ws in plan.train_layers:
            first[id(layer)] = (start, len(ws))
            start += len(ws)
        regularized = plan.regularized
        self.backwards = [(i, st.need_dx, first[id(st.params_layer)] if st.collect else None,
                           st.params_layer if id(st.params_layer) in regularized else None)
                          for i, st in enumerate(self.steps) if st.backprop][::-1]
        self.backward_fns = [None] * len(self.steps)
        self.loss = plan.losses[0]
        self.logits = plan.logits[0]
        self._updaters, self._slots_of = None, None

    def matches(self, x) -> bool:
        return x.shape == self.x_shape and x.dtype == self.x_dtype \
            and backends.current() is self.backend

    def forward(self, x, y):
        """``(loss value, output, d_output, contexts)``: the forward and the loss."""
        forwards = self.forwards
        if forwards is None:
            return self._bind_forward(x, y)
        ctxs = []
        append = ctxs.append
        for fwd in forwards:
            x, ctx = fwd(x)
            append(ctx)
        value, dy = self.loss.compute(self.backend, x, y, self.logits)
        return self._with_penalties(float(value)), x, dy, ctxs

    def _with_penalties(self, loss):
        """The loss as Keras reports it: plus the regularizers' penalties (the general
        step's sum, in its order)."""
        if self.plan.regularized:
            loss += sum(layer.regularization_loss() for layer, _ in self.plan.train_layers)
        return loss

    def _bind_forward(self, x, y):
        forwards, ctxs = [], []
        for i, st in enumerate(self.steps):
            fwd, bwd = _binder(st, x)(st, self.backend, x)
            forwards.append(fwd)
            self.backward_fns[i] = bwd
            x, ctx = fwd(x)
            ctxs.append(ctx)
        self.forwards = forwards
        value, dy = self.loss.compute(self.backend, x, y, self.logits)
        return self._with_penalties(float(value)), x, dy, ctxs

    def backward_and_update(self, dy, ctxs):
        """The backward, each layer's weights updated as soon as their gradients exist
        (the optimizer's per-weight ``_update``, as ``optimizer.apply`` runs it)."""
        opt = self.model.optimizer
        variables = self.plan.train_vars
        lr = opt.learning_rate
        t = opt.iterations + 1
        opt._before_updates(t, variables)
        if self._slots_of is not opt._slots:   # (re)built optimizer state: bind again
            self._updaters = [opt._updater(k) for k in range(len(variables))]
            self._slots_of = opt._slots
        updaters, fns = self._updaters, self.backward_fns
        for i, need_dx, slots, regularized in self.backwards:
            if dy is None:   # nothing flows back from here (as the executor: zeros below)
                dx, grads = None, ()
            else:
                dx, grads = fns[i](dy, ctxs[i], need_dx)
            ctxs[i] = None   # frees the step's buffers before the next backward allocates
            if slots is not None:
                k0, count = slots
                grads = tuple(np.zeros_like(variables[k0 + j])   # not reached: zeros, as
                              if j >= len(grads) or grads[j] is None   # the general step
                              else grads[j] for j in range(count))
                if regularized is not None:
                    grads = regularized.add_regularization_gradients(grads)
                for j in range(count):
                    updaters[k0 + j](grads[j], lr, t)
            dy = dx
        opt.iterations += 1
        for v in self.plan.constrained:   # after every update, as the general step
            v.assign(v.constraint(v.value))


def step(model, plan, x):
    """The cached :class:`TrainStep` of ``model``'s training ``plan`` for input ``x``, or
    None where one does not apply (the reason stays on the plan: ``plan.compiled_step``)."""
    cached = plan.compiled_step
    if type(cached) is str or not _enabled():   # the graph's refusal, or switched off
        return None
    opt = model.optimizer
    if opt._variables is not plan.train_vars:
        return None   # the first step binds the optimizer (the general path does that)
    if cached is not None and cached.matches(x) and opt._plain_updates() \
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
    key = (x.shape, x.dtype, id(backends.current()))
    compiled = others.get(key)
    if compiled is None or not compiled.matches(x):
        if len(others) >= 4:
            others.clear()
        compiled = others[key] = TrainStep(model, plan, x)
    plan.compiled_step = compiled
    return compiled
