"""The training machinery every model shares: compile, the training plan, the input checks,
the step (forward, loss, backward, optimizer update), and the loops of ``fit``,
``evaluate`` and ``predict`` (Keras's ``Trainer``).

:class:`Trainer` is a mixin of :class:`fastcnn.model.Model`; it needs from the model only
what the model module defines: ``_graph`` / ``_program`` (a graph model's compiled
executor), ``_run_call`` (a subclassed model's call), ``_leaf_layers``, ``_input_specs`` /
``_output_shapes`` / ``output_names``, ``_build_from_data``.

The training step: the forward pass (the loss fused with a last softmax/sigmoid where Keras
would fuse it: the head runs without its activation and the loss takes the logits), the
loss and its gradient per output, the backward pass, the regularizers' gradients once per
layer, one optimizer update in place, the constraints. Everything that can be checked is
checked once per call of ``fit``/``evaluate``/``predict`` on the whole arrays, before any
work, so the per-batch path does no validation and no conversion.

Data parallelism (:mod:`fastcnn.distributed`, several MPI processes) lives in a strategy
object, ``distributed.current()``, that this module calls at a few points: which share of a
global batch this process takes, the sums of the loss, the metrics' statistics and the
gradients over the processes, the start-of-fit broadcast. With one process every call is
the identity.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from . import _device, autodiff, backends, callbacks as callbacks_module, distributed
from . import executor, inference_plan, losses, metrics as metrics_module, optimizers
from . import train_plan
from .layers.base import Layer, format_shape
from .layers.kernel_layer import KernelLayer


class NonFiniteLossError(FloatingPointError, ValueError):
    """The loss became NaN or inf during training (catchable as either base class)."""


def _check_batch_size(batch_size):
    if batch_size is None:
        return 32
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _check_verbose(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


def _fits(shape, spec):
    """``shape`` matches ``spec`` (batch first; None in spec matches anything)."""
    for s, e in zip(shape[1:], spec[1:]):
        if e is not None and s != e:
            return False
    return True


def _indexable(data):
    """A Keras ``PyDataset`` / ``Sequence``: batches by index, ``len()`` of them."""
    return (hasattr(data, "__getitem__") and hasattr(data, "__len__")
            and not hasattr(data, "__next__")
            and not isinstance(data, (np.ndarray, list, tuple, dict, str, bytes))
            and not autodiff.is_tensor(data))


class _Indexed:
    """An indexable source read as an iterator: batches 0 .. len-1, then (for fit) the
    source's ``on_epoch_end()`` and again from 0, as Keras consumes a PyDataset."""

    def __init__(self, source):
        self.source, self.i = source, 0

    def __len__(self):
        return len(self.source)

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= len(self.source):
            hook = getattr(self.source, "on_epoch_end", None)
            if callable(hook):
                hook()
            self.i = 0
        batch = self.source[self.i]
        self.i += 1
        return batch


def _as_iterator(source):
    return _Indexed(source) if _indexable(source) else source


def _fresh_pass(source):
    """What ``evaluate``/``predict`` read: a finite source from its first batch each call
    (Keras). A dataset whose ``iter()`` starts a new pass gives that pass; fastcnn's image
    iterators go back to the first batch of their current epoch; a plain generator can only
    go on where it is."""
    if _indexable(source):
        return _Indexed(source)
    it = iter(source)
    if it is not source:
        return it
    state, set_state = getattr(source, "state", None), getattr(source, "set_state", None)
    if callable(state) and callable(set_state):
        current = dict(state())
        if current.get("batch_index", 0) != 0:
            current["batch_index"] = 0
            set_state(current)
    return source


def _check_sample_weight(sample_weight, n, argument="sample_weight"):
    """``sample_weight`` as a float64 (n,) array of finite weights >= 0, or None."""
    if sample_weight is None:
        return None
    w = np.asarray(autodiff.value_of(sample_weight))
    if w.dtype == object or not (np.issubdtype(w.dtype, np.number) or w.dtype == np.bool_) \
            or np.issubdtype(w.dtype, np.complexfloating):
        raise ValueError(f"{argument} must be a numeric array of per-sample weights, got "
                         f"dtype {w.dtype}")
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 1 or len(w) != n:
        raise ValueError(f"{argument} must hold one weight per sample, shape ({n},), got "
                         f"shape {w.shape}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{argument} must hold finite weights >= 0, got values in "
                         f"[{w.min()}, {w.max()}]")
    return w


def _class_weights(class_weight, y, classes, argument="class_weight"):
    """Keras's rule: each sample's weight is its class's (1.0 for a class not in the dict);
    the class is the label, the arg-max of a one-hot row, or the rounded binary target."""
    if not isinstance(class_weight, dict):
        raise ValueError(f"{argument} must be a dict {{class index: weight}}, got "
                         f"{type(class_weight).__name__}")
    for k, v in class_weight.items():
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k < classes:
            raise ValueError(f"{argument} has class {k!r}, which the data lacks: the model's "
                             f"classes are 0 .. {classes - 1}")
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v) \
                or v < 0:
            raise ValueError(f"{argument}[{k}] must be a finite weight >= 0, got {v!r}")
    y = np.asarray(y)
    if y.ndim > 1:
        y = y.argmax(axis=-1) if y.shape[-1] != 1 else y[..., 0]
    labels = np.round(y.reshape(len(y), -1)[:, 0]).astype(np.int64)
    table = np.ones(max(classes, 1), dtype=np.float64)
    for k, v in class_weight.items():
        table[int(k)] = float(v)
    return table[labels]


def _is_batch_source(data):
    """True for an iterator of batches (an ImageDataGenerator iterator, a Python generator),
    as Keras's fit accepts; arrays and lists are array-likes, never iterated."""
    return data is not None and ((hasattr(data, "__next__")
                                  and not isinstance(data, (np.ndarray, list, tuple, str, bytes)))
                                 or _indexable(data))


def _source_steps(source, steps, name):
    """Batches to draw from ``source``: ``steps``, else ``len(source)`` when it has one."""
    if steps is None:
        try:
            steps = len(source)
        except TypeError:
            raise ValueError(
                f"{name} is required when the data is an iterator without len() (a Python "
                f"generator, say): pass {name}=the number of batches to draw") from None
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{name} must be a positive int, got {steps!r}")
    return int(steps)


def _check_count(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)




def _structure(struct, what):
    """``(leaves, kind, keys)`` of one tensor, a list/tuple or a dict of tensors."""
    if isinstance(struct, dict):
        return list(struct.values()), "dict", list(struct)
    if isinstance(struct, (list, tuple)):
        return list(struct), "list", None
    return [struct], "single", None


def _restructure(values, kind, keys):
    if kind == "single":
        return values[0]
    if kind == "dict":
        return dict(zip(keys, values))
    return list(values)


class TrainingPlan:
    """What the training step of one (compile, build, trainable flags) needs, computed once.

    Owned by the model; other parts of fastcnn only read it, except :meth:`replace_arrays`
    (the device scope swaps host arrays for device arrays and back).
    """

    __slots__ = ("key", "program", "logits", "losses", "loss_weights", "train_layers",
                 "train_vars", "metrics", "optimizer_bound", "started", "regularized",
                 "constrained", "nested", "compiled_step", "other_steps", "__weakref__")

    def __init__(self, key, program, logits, losses_, loss_weights, train_layers, metrics):
        self.key = key
        self.program = program            # executor.Program, None for subclassed models
        self.logits = logits              # per output: the loss receives logits
        self.losses = losses_             # per output: Loss or None
        self.loss_weights = loss_weights  # per output: float
        #: (leaf layer, its trainable weights) in model.trainable_weights order
        self.train_layers = train_layers
        self.train_vars = [w for _, ws in train_layers for w in ws]
        #: ids of the layers with a regularizer (their gradients get its gradient added)
        self.regularized = {id(layer) for layer, _ in train_layers
                            if getattr(layer, "kernel_regularizer", None) is not None
                            or getattr(layer, "bias_regularizer", None) is not None
                            or type(layer).add_regularization_gradients not in (
                                Layer.add_regularization_gradients,
                                KernelLayer.add_regularization_gradients)}
        #: whether a step of the program is a model (its gradients split over its layers)
        self.nested = program is not None and any(
            isinstance(step.params_layer, Trainer) for step in program.steps)
        #: the trainable Variables with a constraint (applied after each update)
        self.constrained = [v for layer, _ in train_layers for v in layer._param_variables()
                            if v.constraint is not None]
        #: (output index, Metric, log name)
        self.metrics = metrics
        self.optimizer_bound = False
        self.started = False              # fastcnn.distributed: start-of-fit done
        #: fastcnn.train_plan: the compiled step (a TrainStep), or why there is none
        self.compiled_step = None
        self.other_steps = {}             # fastcnn.train_plan: by input shape

    def replace_arrays(self, mapping) -> None:
        """Replaces, by identity, the weight arrays the plan lists (the list objects are
        edited in place: the optimizer is bound to ``train_vars``)."""
        self.train_vars[:] = [mapping.get(id(v), v) for v in self.train_vars]
        self.train_layers[:] = [(layer, [mapping.get(id(w), w) for w in ws])
                                for layer, ws in self.train_layers]

    def reset_metrics(self):
        for _, m, _ in self.metrics:
            m.reset_state()

    def logs(self, loss, parts=None):
        out = {"loss": loss}
        if parts:
            out.update(parts)
        for _, m, name in self.metrics:
            out[name] = m.result()
        return out


class _Mean:
    """The running mean of the loss a custom ``train_step`` reports (Keras's loss tracker)."""

    def __init__(self, name):
        self.name = name
        self.reset_state()

    def reset_state(self):
        self._total, self._count = 0.0, 0

    def update_state(self, value, sample_weight=None):
        self._total += float(value)
        self._count += 1

    def result(self):
        return self._total / self._count if self._count else 0.0


def _forward_by_call_model(model, plan, xs, training):
    """A subclassed model's forward for fit: ``call`` on a private tape. An output whose
    softmax/sigmoid the output's loss fuses hands the loss its logits (as Keras does)."""
    with autodiff.isolated():
        tape = autodiff.GradientTape(persistent=True)
        with tape:
            ts = [autodiff.Tensor(x) for x in xs]
            out = model._run_call(ts if len(ts) > 1 else ts[0], training)
    outs = [o if isinstance(o, autodiff.Tensor) else autodiff.Tensor(np.asarray(o))
            for o in _structure(out, "outputs")[0]]
    logits = list(plan.logits)
    for i, (o, loss) in enumerate(zip(outs, plan.losses)):
        if (loss is not None and not logits[i] and o._keras_logits is not None
                and loss.fused_activation == o._keras_activation):
            outs[i], logits[i] = o._keras_logits, True
    return [o.value for o in outs], (tape, outs), logits


def _backward_by_call_model(model, dys, ctx):
    """``{id(leaf layer): grads}`` from the private tape of :func:`_forward_by_call_model`."""
    tape, outs = ctx
    pairs = [(o, d) for o, d in zip(outs, dys) if d is not None]
    leaves = [layer for layer in model._leaf_layers() if layer.trainable]
    params = [layer._param_variables() for layer in leaves]
    flat = [v for ps in params for v in ps]
    grads = tape.gradient([o for o, _ in pairs], flat, output_gradients=[d for _, d in pairs])
    out, i = {}, 0
    for layer, ps in zip(leaves, params):
        out[id(layer)] = tuple(grads[i:i + len(ps)])
        i += len(ps)
    return out


def _leaf_grads(by_layer) -> dict:
    """``{id(leaf layer): grads}`` from the executor's per-layer gradients, a nested model's
    split over its own layers (summed where a leaf appears twice)."""
    from .model import Model

    if not any(isinstance(layer, Model) for layer, _ in by_layer.values()):
        return {k: grads for k, (_, grads) in by_layer.items()}
    out = {}

    def put(layer, grads):
        if isinstance(layer, Model):
            i = 0
            for sub in layer._unique_layers():
                k = len(sub._param_slots())
                part = tuple(grads[i:i + k])
                i += k
                if any(g is not None for g in part):
                    put(sub, part)
            return
        held = out.get(id(layer))
        out[id(layer)] = tuple(grads) if held is None else tuple(
            b if a is None else a if b is None else executor.add(a, b)
            for a, b in zip(held, grads))

    for layer, grads in by_layer.values():
        put(layer, grads)
    return out


def _nonfinite_message(loss, epoch, batch):
    return (f"loss became {loss} "
            + ("in train_on_batch" if epoch is None
               else f"at epoch {epoch + 1}, batch {batch + 1}")
            + "; training stopped before this batch's update "
            "(try a lower learning rate, or check x and y for NaN/inf)")


def _apply_constraints(plan):
    for v in plan.constrained:
        v.assign(v.constraint(v.value))



def _drop_keras2_worker_args(kwargs, name):
    """Keras 2's threading arguments (max_queue_size, workers, use_multiprocessing, shuffle)
    mean nothing here: fastcnn's iterators load ahead themselves."""
    for key in ("max_queue_size", "workers", "use_multiprocessing", "shuffle"):
        kwargs.pop(key, None)
    if kwargs:
        raise TypeError(f"{name}() got unexpected keyword argument(s) {sorted(kwargs)}")


class Trainer:
    """compile / fit / evaluate / predict and the training step (a mixin of Model)."""

    # --------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                **kwargs) -> None:
        """Configures the model for training (Keras's ``Model.compile``).

        Args:
            optimizer: a name (``'sgd'``, ``'adam'``, ``'rmsprop'``, ``'adamw'``, ...) or an
                optimizer object (:mod:`fastcnn.optimizers`), default ``'rmsprop'``.
            loss: a name (``'sparse_categorical_crossentropy'``, ``'mse'``, ...), a Loss
                object (:mod:`fastcnn.losses`) or a callable ``loss(y_true, y_pred)``
                written with ``fastcnn.ops``; required. Several outputs: one for all, a
                list (one per output, None for an output without loss) or a dict by output
                name.
            metrics: a list of names (``'accuracy'`` resolves for the loss, as Keras) or
                Metric objects (:mod:`fastcnn.metrics`); several outputs: a list (for every
                output), a list of lists or a dict by output name.
            loss_weights: several outputs: a list or dict of floats; the total loss is the
                weighted sum.
            run_eagerly, jit_compile, steps_per_execution: Keras's execution options,
                accepted and ignored (fastcnn has one way to run).
        """
        for key in ("run_eagerly", "jit_compile", "steps_per_execution", "auto_scale_loss"):
            kwargs.pop(key, None)    # Keras's execution options: fastcnn has one way to run
        if kwargs:
            raise TypeError(f"compile() got unexpected keyword argument(s) {sorted(kwargs)}")
        optimizer = optimizers.get(optimizer)
        if loss is None:
            raise ValueError(f"loss is required: one of {list(losses.KNOWN)} or a Loss")
        if isinstance(loss, (list, tuple, dict)):
            items = list(loss.values()) if isinstance(loss, dict) else list(loss)
            for item in items:
                if item is not None:
                    losses.get(item)
            self.loss = loss
        else:
            self.loss = losses.get(loss)
        if metrics is None:
            metrics = []
        elif isinstance(metrics, (str, metrics_module.Metric)):
            metrics = [metrics]
        elif not isinstance(metrics, (list, tuple, dict)):
            raise ValueError(f"metrics must be a list of metric names, got {metrics!r}")
        flat = list(metrics.values()) if isinstance(metrics, dict) else list(metrics)
        flat = [m for entry in flat for m in (entry if isinstance(entry, (list, tuple))
                                              else [entry])]
        single = self.loss if isinstance(self.loss, losses.Loss) else None
        for m in flat:
            metrics_module.get(m, single)  # unknown names fail here, at compile time
        if not isinstance(metrics, dict) and not any(isinstance(m, (list, tuple))
                                                     for m in metrics):
            names = [m.name if isinstance(m, metrics_module.Metric) else m for m in metrics]
            if len(set(names)) != len(names):
                raise ValueError(f"metrics must have distinct names, got {names}")
        if loss_weights is not None and not isinstance(loss_weights, (list, tuple, dict)) \
                and not isinstance(loss_weights, numbers.Real):
            raise ValueError(f"loss_weights must be a list or dict of floats, got "
                             f"{loss_weights!r}")
        self.optimizer = optimizer
        self._loss_weights = loss_weights
        self._metric_specs = list(metrics) if not isinstance(metrics, dict) else metrics
        self.compiled = True
        self._plan = None

    @property
    def metrics_names(self) -> list:
        names = ["loss"]
        if self.built and len(self._output_shapes or ()) > 1:
            names += [f"{o}_loss" for o, l in zip(self.output_names, self._per_output_losses())
                      if l is not None]
        for out_name, specs in self._per_output_metric_specs():
            for spec in specs:
                base = spec.name if isinstance(spec, metrics_module.Metric) else spec
                names.append(base if out_name is None else f"{out_name}_{base}")
        return names

    @property
    def metrics(self) -> list:
        """The compiled metric objects (after the first fit/evaluate step)."""
        plan = self._plan
        return [] if plan is None else [m for _, m, _ in plan.metrics]

    def _require_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(
                f"model {self.name!r} must be compiled before {what}(): call "
                f"model.compile(optimizer=..., loss=..., metrics=...) first")

    def _per_output(self, spec, what, default=None):
        """``spec`` (one value, a list or a dict by output name) as one value per output."""
        n = len(self._output_shapes)
        names = self.output_names
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(names))
            if unknown:
                raise ValueError(f"{what} names outputs {unknown} that model {self.name!r} "
                                 f"does not have; its outputs: {names}")
            return [spec.get(name, default) for name in names]
        if isinstance(spec, (list, tuple)) and (n > 1 or what == "loss_weights"):
            if len(spec) != n:
                raise ValueError(f"{what} has {len(spec)} entries, model {self.name!r} has "
                                 f"{n} outputs {names}")
            return list(spec)
        return [spec] * n

    def _per_output_losses(self):
        return [None if l is None else losses.get(l)
                for l in self._per_output(self.loss, "loss")]

    def _per_output_metric_specs(self):
        specs = self._metric_specs
        n = len(self._output_shapes) if self.built and self._output_shapes else 1
        if n == 1:
            flat = specs if not isinstance(specs, dict) else \
                [m for v in specs.values() for m in (v if isinstance(v, (list, tuple))
                                                     else [v])]
            return [(None, list(flat))]
        names = self.output_names
        if isinstance(specs, dict):
            per = self._per_output(specs, "metrics", [])
        elif specs and all(isinstance(s, (list, tuple)) for s in specs):
            per = self._per_output(list(specs), "metrics")
        else:
            per = [list(specs)] * n
        return [(name, [m for m in (p if isinstance(p, (list, tuple)) else [p])])
                for name, p in zip(names, per)]

    # ------------------------------------------------------------------ plan
    def _head_activation(self, index):
        """The activation of the layer producing output ``index`` when the graph may run
        that layer without it (a one-output node whose tensor nothing else reads)."""
        if self._graph is None:
            return None
        nodes, _, outs = self._graph
        t = outs[index]
        node = t.node
        if node is None or len(node.outputs) != 1 or isinstance(node.layer, Trainer):
            return None
        if sum(1 for o in outs if o is t) > 1 or any(
                any(i is t for i in n.inputs) for n in nodes):
            return None
        return getattr(node.layer, "activation", None)

    def _prepare(self):
        """The training plan of the current (compile, build, trainable flags)."""
        leaves = self._leaf_layers()
        key = (tuple(layer.trainable for layer in leaves), self.trainable, len(leaves))
        plan = self._plan
        if plan is not None and plan.key == key:
            return plan
        losses_ = self._per_output_losses()
        weights = [float(w) if w is not None else 1.0
                   for w in self._per_output(self._loss_weights, "loss_weights", 1.0)] \
            if self._loss_weights is not None else [1.0] * len(losses_)
        # Keras's fusion: a softmax/sigmoid head feeding the matching cross-entropy is
        # replaced by the backend's fused op on the logits (exact, stable gradient).
        fused = [l is not None and not l.from_logits and l.fused_activation is not None
                 and self._head_activation(i) == l.fused_activation
                 for i, l in enumerate(losses_)]
        logits = [f or (l is not None and l.from_logits) for f, l in zip(fused, losses_)]
        program = None
        if self._graph is not None:
            program = self._program(frozenset(i for i, f in enumerate(fused) if f), False)
        train_layers = [(layer, layer.trainable_weights) for layer in leaves
                        if layer.trainable_weights] if self.trainable else []
        metrics = []
        for i, (out_name, specs) in enumerate(self._per_output_metric_specs()):
            for spec in specs:
                m = metrics_module.get(spec, losses_[i] if i < len(losses_) else None,
                                       self._output_shapes[i])
                log = m.name if out_name is None else f"{out_name}_{m.name}"
                metrics.append((i, m, log))
        plan = TrainingPlan(key, program, logits, losses_, weights, train_layers, metrics)
        self._plan = plan
        return plan

    def _program(self, logits=frozenset(), need_input_grad=False):
        # A Program fixes which steps run a backward from the trainable flags: freezing or
        # unfreezing (the tutorials' fine-tuning) needs another one.
        key = (logits, need_input_grad, self.trainable,
               tuple(layer.trainable for layer in self._leaf_layers()))
        program = self._programs.get(key)
        if program is None:
            nodes, ins, outs = self._graph
            program = executor.Program(nodes, ins, outs, logits, need_input_grad)
            self._programs[key] = program
        return program

    def _prepare_training(self):
        """The plan, with the optimizer checked against the weights it will update."""
        plan = self._prepare()
        if not plan.optimizer_bound:
            if self.optimizer._variables is not None:
                # An optimizer keeps per-weight state: it may only go on with the same arrays.
                try:
                    self.optimizer.build(plan.train_vars)
                except ValueError:
                    raise ValueError(
                        f"the optimizer holds state for other weights (the trainable flags "
                        f"of model {self.name!r} changed, or the optimizer belongs to another "
                        f"model); call model.compile(...) again with a new optimizer"
                    ) from None
            plan.optimizer_bound = True
        return plan

    # ---------------------------------------------------------- input checks
    def _check_x(self, x, argument="x", allow_empty=False):
        """``x`` as a list of contiguous arrays of the model dtype, one per input."""
        specs = self._input_specs
        if (type(x) is np.ndarray and specs is not None and len(specs) == 1
                and x.dtype == self._dtype and x.flags.c_contiguous and len(x)
                and x.ndim == len(specs[0]) and _fits(x.shape, specs[0])):
            return [x]   # the common case, checked in a few comparisons (batch 1 steps)
        if x is None:
            raise ValueError(f"{argument} is required (an array of inputs), got None")
        n_inputs = len(self._input_specs) if self._input_specs is not None else 1
        if isinstance(x, dict):
            if self._graph is None:
                raise ValueError(f"{argument} is a dict, but model {self.name!r} takes one "
                                 f"array")
            names = self.input_names
            unknown = sorted(set(x) - set(names))
            missing = [n for n in names if n not in x]
            if unknown or missing:
                raise ValueError(f"{argument} keys {sorted(x)} do not match the model's inputs "
                                 f"{names}")
            parts = [x[name] for name in names]
        elif isinstance(x, (list, tuple)) and n_inputs > 1:
            if len(x) != n_inputs:
                raise ValueError(f"{argument} has {len(x)} arrays, model {self.name!r} has "
                                 f"{n_inputs} inputs {self.input_names}")
            parts = list(x)
        else:
            parts = [x]
        arrays = []
        for k, part in enumerate(parts):
            name = argument if len(parts) == 1 else f"{argument}[{k}]"
            a = self._as_array(part, name, allow_empty)
            spec = self._input_specs[k] if self._input_specs is not None and \
                k < len(self._input_specs) else None
            if a.ndim == 1 and spec is not None and tuple(spec[1:]) == (1,):
                # One number per sample for a model whose input is one number (Keras).
                if isinstance(part, list):
                    warnings.warn(
                        f"{name} is a Python list of numbers: Keras 3 wants an array, e.g. "
                        f"np.array({part!r}[:, None]) of shape (samples, 1); taken as "
                        f"{len(a)} samples of one number (Keras 2's reading)",
                        DeprecationWarning, stacklevel=4)
                a = a.reshape(-1, 1)
            arrays.append(a)
        if len({len(a) for a in arrays}) > 1:
            raise ValueError(f"the arrays of {argument} have different numbers of samples: "
                             f"{[len(a) for a in arrays]}")
        if not self.built:
            self._build_from_data(arrays)
        for k, (a, expected) in enumerate(zip(arrays, self._input_specs)):
            name = argument if len(arrays) == 1 else f"{argument}[{k}]"
            self._check_shape(a, expected, name)
        # uint8 images and other numbers become the model dtype here, once, not per batch
        return [np.ascontiguousarray(a, dtype=self._dtype) for a in arrays]

    @staticmethod
    def _as_array(x, argument, allow_empty):
        x = autodiff.value_of(x)
        if isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except ValueError:
                raise ValueError(f"{argument} is a ragged list (its rows have different "
                                 f"lengths); pass a NumPy array of one shape") from None
        x = np.asarray(x)
        if x.dtype == object:
            raise ValueError(f"{argument} must be a numeric array, got dtype object (a ragged "
                             f"list, or mixed values?)")
        if np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"{argument} must be real numbers, got complex dtype {x.dtype}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"{argument} must be a numeric array, got dtype {x.dtype}")
        if x.ndim == 0 or (len(x) == 0 and not allow_empty):
            raise ValueError(f"{argument} must hold at least one sample, got shape {x.shape}")
        return x

    def _build_from_data(self, arrays):
        self._build_subclassed(arrays)

    def _check_shape(self, x, expected, argument):
        if x.ndim != len(expected):
            hint = ""
            if x.ndim == len(expected) - 1 and len(expected) == 4:
                if x.shape == tuple(expected[1:]):
                    hint = ("; this looks like ONE sample without the batch axis: add it "
                            "with x[None] (or np.expand_dims(x, 0))")
                else:
                    hint = "; for single-channel images add a channel axis: x[..., None]"
            elif x.ndim == len(expected) - 1 and x.shape == tuple(expected[1:]):
                hint = "; this looks like ONE sample without the batch axis: add it with x[None]"
            raise ValueError(
                f"{argument} has shape {x.shape} ({x.ndim}-D), but model {self.name!r} "
                f"expects {len(expected)}-D input of shape {format_shape(expected)}{hint}")
        if any(e is not None and s != e for s, e in zip(x.shape[1:], expected[1:])):
            if len(expected) == 4 and x.shape[1:3] == tuple(expected[1:3]):
                detail = (f"{argument} has {x.shape[-1]} channels, the model expects "
                          f"{expected[-1]}")
            else:
                detail = f"{argument} has shape {x.shape}"
            raise ValueError(
                f"{detail}; model {self.name!r} expects input of shape "
                f"{format_shape(expected)} (batch first, channels last)")

    def _check_xy(self, x, y, x_name="x", y_name="y"):
        if y is None:
            raise ValueError(f"{y_name} is required (targets for the loss), got None")
        xs = self._check_x(x, x_name)
        n = len(xs[0])
        losses_ = self._plan.losses if self._plan is not None else self._per_output_losses()
        n_out = len(losses_)
        if n_out == 1 and type(y) is np.ndarray and y.ndim and len(y) == n \
                and y.dtype != object and losses_[0] is not None:
            # one output: straight to the loss's own checks (batch 1 steps)
            return xs, [losses_[0].prepare_targets(y, self._output_shapes[0], self._dtype,
                                                   y_name)]
        if isinstance(y, dict):
            names = self.output_names
            unknown = sorted(set(y) - set(names))
            if unknown:
                raise ValueError(f"{y_name} names outputs {unknown}; the model's outputs are "
                                 f"{names}")
            parts = [y.get(name) for name in names]
        elif isinstance(y, (list, tuple)) and n_out > 1:
            if len(y) != n_out:
                raise ValueError(f"{y_name} has {len(y)} entries, model {self.name!r} has "
                                 f"{n_out} outputs {self.output_names}")
            parts = list(y)
        else:
            parts = [y] + [None] * (n_out - 1) if n_out == 1 else [y] * n_out
        ys = []
        for k, (part, loss) in enumerate(zip(parts, losses_)):
            name = y_name if n_out == 1 else f"{y_name}[{self.output_names[k]!r}]"
            if loss is None:
                ys.append(None)
                continue
            if part is None:
                raise ValueError(f"{name} is required: output {self.output_names[k]!r} has a "
                                 f"loss")
            arr = np.asarray(autodiff.value_of(part))
            if arr.ndim == 0:
                raise ValueError(f"{name} must be an array of targets, got a scalar")
            if arr.dtype == object:
                raise ValueError(f"{name} must be a numeric array, got dtype object (a ragged "
                                 f"list?)")
            if np.issubdtype(arr.dtype, np.complexfloating):
                raise ValueError(f"{name} must be real numbers, got complex dtype {arr.dtype}")
            if len(arr) != n:
                raise ValueError(
                    f"{x_name} and {name} must have the same number of samples: "
                    f"{x_name} has {n}, {name} has {len(arr)}")
            ys.append(loss.prepare_targets(arr, self._output_shapes[k], self._dtype, name))
        return xs, ys

    # -------------------------------------------------------------- the step
    def _forward(self, plan, xs, training):
        """``(outputs, ctx, logits)`` of a step: a list of output arrays (logits where the
        head's activation is fused into the loss), what the backward needs, and per output
        whether it holds logits."""
        xs = [_device.put(self, x) for x in xs]   # on a device backend: copied once
        if plan.program is not None:
            outs, ctx = plan.program.forward(xs, training)
            return outs, ctx, plan.logits
        return _forward_by_call_model(self, plan, xs, training)

    def _backward(self, plan, dys, ctx):
        """The gradients of ``plan.train_vars`` (with the regularizers'), in order."""
        if plan.program is not None:
            _, by_layer = plan.program.backward(dys, ctx)
            if plan.nested:
                by_leaf = _leaf_grads(by_layer)
            else:   # the executor's entries are the leaves: (layer, grads) by id
                by_leaf = by_layer
        else:
            by_leaf = _backward_by_call_model(self, dys, ctx)
        grads = []
        regularized = plan.regularized
        pairs = plan.program is not None and not plan.nested   # values are (layer, grads)
        for layer, ws in plan.train_layers:
            got = by_leaf.get(id(layer))
            if got is not None and pairs:
                got = got[1]
            if got is None or any(g is None for g in got):   # not reached: zeros
                got = tuple(_device.zeros_like(w) if got is None or got[i] is None
                            else got[i] for i, w in enumerate(ws))
            if id(layer) in regularized:
                got = layer.add_regularization_gradients(tuple(got))
            grads.extend(got)
        return grads

    def _compute_loss(self, plan, outs, ys, logits, sw=None):
        """``(total loss, [d_out], {output_loss: value})`` (under one backend); ``sw``:
        per-sample weights (Keras's reduction: sum of weighted losses over the batch size)."""
        backend = backends.current()
        if len(outs) == 1 and plan.loss_weights[0] == 1.0 and plan.losses[0] is not None:
            # one output (the usual case): no per-output bookkeeping
            if sw is None:
                value, d = plan.losses[0].compute(backend, outs[0], ys[0], logits[0])
            else:
                value, d = plan.losses[0].compute(backend, outs[0], ys[0], logits[0],
                                                  sample_weight=sw)
            return float(value), [d], {}
        total, dys, parts = 0.0, [], {}
        several = len(outs) > 1
        for i, (out, y, loss, w) in enumerate(zip(outs, ys, plan.losses, plan.loss_weights)):
            if loss is None:
                dys.append(None)
                continue
            if sw is None:
                value, d = loss.compute(backend, out, y, logits[i])
            else:
                value, d = loss.compute(backend, out, y, logits[i], sample_weight=sw)
            value = float(value)
            if w != 1.0:
                d = d * w
            total += w * value
            dys.append(d)
            if several:
                parts[f"{self.output_names[i]}_loss"] = value
        return total, dys, parts

    def _update_metrics(self, plan, ys, outs, n, dist, logits):
        """Updates the metrics with this process's batch; under MPI sums the counts of
        the processes, and the loss and sample count with them."""
        if dist.size == 1:
            for i, m, _ in plan.metrics:
                if n:
                    m.update_model_output(ys[i], outs[i], logits[i])
            return None
        before = [m.counts() for _, m, _ in plan.metrics]
        for i, m, _ in plan.metrics:
            if n:
                m.update_model_output(ys[i], outs[i], logits[i])
        return before

    def _train_step(self, plan, xs, ys, epoch=None, batch=None, sw=None,
                    skip_nonfinite=False):
        """One optimizer step; ``(mean loss, samples, per-output losses)`` of the batch.

        Under fastcnn.distributed, ``xs`` is this process's share of the global batch (empty
        for some processes in a short last batch) and the strategy sums the loss, the
        metrics' counts and the gradients over the processes: the returned values are the
        global batch's, the same on every process.
        """
        dist = distributed.current()
        n = len(xs[0])
        compiled = train_plan.step(self, plan, xs) if n else None
        if compiled is not None:   # the same step, prebound (fastcnn.train_plan)
            loss, outs, dys, ctx, parts = compiled.forward(xs, ys, sw)
            self._update_metrics(plan, ys, outs, n, dist, plan.logits)
            if not math.isfinite(loss):
                if skip_nonfinite:
                    return loss, n, parts
                raise NonFiniteLossError(_nonfinite_message(loss, epoch, batch))
            compiled.backward_and_update(dys, ctx)
            return loss, n, parts
        # Under MPI the loss and counts are summed over the processes, so that all of them
        # raise below together (none is left waiting in the gradient Allreduce).
        ctx, dys, loss, total, parts = self._measure(plan, dist, xs, ys, sw, True)
        if not math.isfinite(loss):
            if skip_nonfinite:   # a callback (TerminateOnNaN) takes charge: no update
                return loss, total, parts
            raise NonFiniteLossError(_nonfinite_message(loss, epoch, batch))
        grads = self._backward(plan, dys, ctx) if n else None
        if plan.train_vars:   # a model with nothing to train takes no optimizer step
            grads = dist.average_gradients(plan, grads, n, total)
            self.optimizer.apply(grads, plan.train_vars)
            _apply_constraints(plan)
        return loss, total, parts

    def _reduce(self, plan, dist, loss, n, before):
        """``(global mean loss, global samples)``; the metrics hold the global counts."""
        if dist.size == 1:
            return loss, n
        metrics = [m for _, m, _ in plan.metrics]
        deltas = [m.counts() - b for m, b in zip(metrics, before)]
        stats = np.concatenate([[n, loss * n if n else 0.0]] + deltas)
        stats = dist.sum_stats(stats)
        k = 2
        for m, b, d in zip(metrics, before, deltas):
            m.set_counts(b + stats[k:k + len(d)])
            k += len(d)
        samples = int(round(stats[0]))
        return float(stats[1]) / samples, samples

    def _test_step(self, plan, xs, ys, sw=None):
        """``(mean loss, samples, per-output losses)`` in inference mode (global under MPI)."""
        _, _, loss, total, parts = self._measure(plan, distributed.current(), xs, ys, sw,
                                                 False)
        return loss, total, parts

    def _measure(self, plan, dist, xs, ys, sw, training):
        """The forward pass, the loss (with the regularizers' penalties, as Keras reports
        it) and the metrics of a batch: ``(ctx, d_outputs, global mean loss, global samples,
        per-output losses)``."""
        n = len(xs[0])
        outs = ctx = dys = None
        loss, parts, logits = 0.0, {}, plan.logits
        if n:
            outs, ctx, logits = self._forward(plan, xs, training)
            loss, dys, parts = self._compute_loss(plan, outs, ys, logits, sw)
            # their gradients are added once per layer by _backward
            loss += sum(layer.regularization_loss() for layer, _ in plan.train_layers)
        before = self._update_metrics(plan, ys, outs, n, dist, logits)
        loss, total = self._reduce(plan, dist, loss, n, before)
        return ctx, dys, loss, total, parts

    def _infer(self, xs):
        """The outputs (a list of NumPy arrays) of the model on ``xs``, inference mode."""
        if self._graph is not None:   # the compiled inference plan, where it applies
            outs = inference_plan.infer(self, xs)
            if outs is not None:
                return outs
        xs = [_device.put(self, x) for x in xs]
        if self._graph is not None:
            outs, _ = self._program().forward(xs, False, keep=False)
        else:
            with autodiff.isolated():
                arg = [autodiff.Tensor(x) for x in xs]
                out = self._run_call(arg if len(arg) > 1 else arg[0], False)
            outs = [autodiff.value_of(o) for o in _structure(out, "outputs")[0]]
        return [_device.to_host(o) for o in outs]   # outputs are NumPy arrays everywhere

    def _infer_part(self, xs):
        """``_infer``, also for a process's empty share of a batch (under MPI)."""
        if len(xs[0]) == 0:
            return [np.empty((0,) + tuple(s[1:]), dtype=self._dtype)
                    for s in self._output_shapes]
        return self._infer(xs)

    # ------------------------------------------------------------- the loops
    @staticmethod
    def _take(arrays, lo, hi):
        return [None if a is None else a[lo:hi] for a in arrays]

    @staticmethod
    def _pick(arrays, idx):
        return [None if a is None else a[idx] for a in arrays]

    def _custom_step(self):
        return type(self).train_step is not Trainer.train_step

    def train_step(self, data):
        """One training step on ``data = (x, y)``; returns the logs (Keras 3). Override it
        for a custom step inside ``fit`` (use ``self(x, training=True)`` in a
        GradientTape, :meth:`compute_loss`, ``self.optimizer.apply_gradients`` and
        :meth:`compute_metrics`)."""
        x, y = data[0], data[1]
        plan = self._prepare_training()
        xs, ys = self._check_xy(x, y)
        loss, _, parts = self._train_step(plan, xs, ys)
        return plan.logs(loss, parts)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss of ``y_pred`` against ``y`` plus the regularization losses, as
        a differentiable scalar (Keras 3): what a custom ``train_step`` minimises."""
        self._require_compiled("compute_loss")
        preds = _structure(y_pred, "y_pred")[0]
        targets = _structure(y, "y")[0] if len(preds) > 1 else [y]
        plan = self._prepare()
        total = None
        for i, (p, t) in enumerate(zip(preds, targets)):
            loss = plan.losses[i]
            if loss is None:
                continue
            value = loss(t, p) if sample_weight is None else loss(t, p, sample_weight)
            if plan.loss_weights[i] != 1.0:
                value = value * plan.loss_weights[i]
            total = value if total is None else total + value
        for extra in self.losses:
            total = extra if total is None else total + extra
        tracker = self._loss_tracker()
        tracker.update_state(float(np.asarray(total)))
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates the compiled metrics with ``y_pred`` (what the model outputs) and returns
        the logs: ``{'loss': ..., metric: value}`` (Keras 3)."""
        plan = self._prepare()
        preds = [np.asarray(autodiff.value_of(p)) for p in _structure(y_pred, "y_pred")[0]]
        targets = _structure(y, "y")[0] if len(preds) > 1 else [y]
        for i, m, _ in plan.metrics:
            loss = plan.losses[i]
            t = np.asarray(autodiff.value_of(targets[i]))
            if loss is not None:
                t = loss.prepare_targets(t, self._output_shapes[i], self._dtype, "y")
            m.update_model_output(t, preds[i], False)
        return self.get_metrics_result()

    def get_metrics_result(self):
        plan = self._prepare()
        logs = {"loss": self._loss_tracker().result()}
        for _, m, name in plan.metrics:
            logs[name] = m.result()
        return logs

    def _loss_tracker(self):
        tracker = self.__dict__.get("_tracker")
        if tracker is None:
            tracker = _Mean("loss")
            object.__setattr__(self, "_tracker", tracker)
        return tracker

    @property
    def compiled_loss(self):
        """Keras 2's ``self.compiled_loss(y, y_pred)`` (use :meth:`compute_loss`)."""
        return lambda y, y_pred, sample_weight=None, regularization_losses=None: \
            self.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)

    # ------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Trains for ``epochs`` epochs (Keras's ``Model.fit``); returns a History
        (``history.history['loss']``, ``['val_accuracy']``, ...).

        Args (Keras's): ``x``/``y`` the data and targets; ``batch_size`` (default 32);
        ``epochs``; ``verbose`` (0 silent, 1 progress bar, 2 one line per epoch, ``'auto'``);
        ``callbacks`` (a list of :mod:`fastcnn.callbacks`); ``validation_split`` (the last
        fraction of the arrays, before shuffling); ``validation_data`` (``(x, y)``,
        ``(x, y, sample_weight)`` or an iterator); ``shuffle`` (each epoch, default True);
        ``class_weight``, ``sample_weight``; ``initial_epoch`` (to resume); 
        ``steps_per_epoch``, ``validation_steps`` (for iterators);
        ``validation_batch_size``; ``validation_freq``.

        ``x`` may be an iterator of ``(x, y)`` or ``(x, y, sample_weight)`` batches
        (``ImageDataGenerator.flow...``, a Python generator, a Keras ``PyDataset`` /
        ``Sequence``, ``image_dataset_from_directory``) with ``y=None``:
        ``steps_per_epoch`` batches per epoch (default ``len(x)``); ``validation_data`` may be
        such an iterator too (``validation_steps``). Several inputs/outputs: lists (or dicts
        by name) of arrays for ``x`` and ``y``.

        ``sample_weight``: one weight per sample, ``class_weight``: ``{class: weight}`` (a
        class missing from the dict weighs 1.0); the loss is then Keras's weighted mean
        ``sum(w * loss) / batch size``. ``validation_freq``: validate every N epochs.
        """
        self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size)
        dist = distributed.current()
        epochs = _check_count(epochs, "epochs")
        initial_epoch = _check_count(initial_epoch, "initial_epoch")
        verbose = _check_verbose(verbose)
        if (not isinstance(validation_freq, numbers.Integral) or isinstance(validation_freq, bool)
                or validation_freq < 1):
            raise ValueError(f"validation_freq must be a positive int (validate every N "
                             f"epochs), got {validation_freq!r}")
        val_batch_size = batch_size if validation_batch_size is None else \
            _check_batch_size(validation_batch_size)
        if (not isinstance(validation_split, numbers.Real) or isinstance(validation_split, bool)
                or not 0.0 <= validation_split < 1.0):
            raise ValueError(f"validation_split must be a float in [0, 1), got {validation_split!r}")
        if class_weight is not None and sample_weight is not None:
            raise ValueError("pass class_weight or sample_weight, not both (Keras)")
        if _is_batch_source(x):
            if sample_weight is not None:
                raise ValueError("sample_weight applies to arrays; an iterator yields "
                                 "(x, y, sample_weight) batches instead")
            return self._fit_batches(x, y, epochs, verbose, callbacks, validation_split,
                                     validation_data, initial_epoch, steps_per_epoch,
                                     validation_steps, class_weight, validation_freq)
        if steps_per_epoch is not None:
            raise ValueError(
                f"steps_per_epoch applies when x is an iterator of batches; with arrays use "
                f"batch_size (got steps_per_epoch={steps_per_epoch!r})")
        dist.check_batch_size(batch_size)
        xs, ys = self._check_xy(x, y)
        sw = _check_sample_weight(sample_weight, len(xs[0]))
        if class_weight is not None:
            sw = self._class_sample_weights(class_weight, ys)
        x_val = y_val = sw_val = val_source = None
        if _is_batch_source(validation_data):
            val_source = validation_data
            dist.prepare_source(val_source, "validation_data")
            validation_steps = _source_steps(validation_data, validation_steps,
                                             "validation_steps")
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError(
                    "validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                    f"val_sample_weight), got {type(validation_data).__name__}"
                    + (f" of length {len(validation_data)}"
                       if isinstance(validation_data, (tuple, list)) else ""))
            x_val, y_val = self._check_xy(validation_data[0], validation_data[1],
                                          "validation_data[0]", "validation_data[1]")
            if len(validation_data) == 3:
                sw_val = _check_sample_weight(validation_data[2], len(x_val[0]),
                                              "validation_data[2]")
        elif validation_split > 0:
            # Keras: the LAST fraction of the data, taken before any shuffling.
            n_all = len(xs[0])
            split_at = int(math.floor(n_all * (1.0 - validation_split)))
            if split_at == 0 or split_at == n_all:
                raise ValueError(
                    f"validation_split={validation_split} leaves "
                    f"{'no training' if split_at == 0 else 'no validation'} samples out of "
                    f"{n_all}; use a fraction that leaves samples on both sides")
            x_val, y_val = self._take(xs, split_at, n_all), self._take(ys, split_at, n_all)
            xs, ys = self._take(xs, 0, split_at), self._take(ys, 0, split_at)
            if sw is not None:
                sw_val, sw = sw[split_at:], sw[:split_at]
        plan = self._prepare_training()

        n = len(xs[0])
        steps = -(-n // batch_size)
        # Under MPI: every process shares out the same data, in rank 0's order or none.
        dist.agree("fit's data", samples=n, shuffle=bool(shuffle), x=xs[0],
                   y=next((a for a in ys if a is not None), None))

        def epoch_batches(epoch):
            # Under MPI: rank 0's order, and this process's share of each global batch.
            order = dist.permutation(n) if shuffle else None
            for start in range(0, n, batch_size):
                lo, hi = dist.shard(start, min(start + batch_size, n))
                if order is None:
                    yield (self._take(xs, lo, hi), self._take(ys, lo, hi),
                           None if sw is None else sw[lo:hi])
                else:
                    idx = order[lo:hi]
                    yield (self._pick(xs, idx), self._pick(ys, idx),
                           None if sw is None else sw[idx])

        with _device.scope(self):   # on 'cuda': weights, optimizer state stay on the device
            return self._train_epochs(
                plan, callbacks, verbose, epochs, initial_epoch, epoch_batches,
                self._validation(x_val, y_val, sw_val, val_source, validation_steps,
                                 val_batch_size, validation_freq),
                {"epochs": epochs, "steps": steps, "verbose": verbose,
                 "batch_size": batch_size, "samples": n,
                 "do_validation": x_val is not None or val_source is not None})

    def _class_sample_weights(self, class_weight, ys):
        """Per-sample weights from ``class_weight`` (Keras: single-output models only)."""
        if len(ys) != 1:
            raise ValueError("class_weight applies to models with one output; pass "
                             "sample_weight for several")
        classes = self._output_shapes[0][-1]
        return _class_weights(class_weight, ys[0], 2 if classes == 1 else classes)

    def _validation(self, x_val, y_val, sw_val, val_source, validation_steps, batch_size,
                    validation_freq=1):
        """``validate(plan, epoch) -> {name: value}`` for the end of each epoch ({} without
        data, or on an epoch that ``validation_freq`` skips)."""
        def validate(plan, epoch):
            if (epoch + 1) % validation_freq:
                return {}
            if x_val is not None:
                return self._evaluate_arrays(plan, x_val, y_val, batch_size, sw=sw_val)
            if val_source is not None:
                return self._evaluate_batches(_fresh_pass(val_source), validation_steps,
                                              "validation_data", plan)
            return {}
        return validate

    def _train_epochs(self, plan, callbacks, verbose, epochs, initial_epoch, epoch_batches,
                      validate, params):
        """The one training loop of fit(): ``epoch_batches(epoch)`` yields (x, y) batches."""
        cbs = callbacks_module.CallbackList(
            callbacks, model=self, add_history=True, add_progbar=True, verbose=verbose,
            params=params)
        batch_hooks = cbs.needs_batch_hooks("train")
        dist = distributed.current()
        custom = self._custom_step()
        if plan is not None:   # None: no epoch to run (epochs <= initial_epoch)
            # Under MPI: same model and data sizes everywhere, then rank 0's weights for all.
            dist.start_fit(self, plan, dict(params, initial_epoch=initial_epoch))
        self.stop_training = False
        cbs.on_train_begin()
        # BackupAndRestore (Keras's attribute): the epoch after the restored backup
        initial_epoch = self.__dict__.pop("_initial_epoch", None) or initial_epoch
        skip_nonfinite = cbs.handles_nonfinite_loss()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            plan = plan or self._prepare_training()
            plan.reset_metrics()
            self._loss_tracker().reset_state()
            loss_sum, seen, parts_sum = 0.0, 0, {}
            step_logs = {}
            for batch, (xb, yb, swb) in enumerate(epoch_batches(epoch)):
                if batch_hooks:
                    cbs.on_train_batch_begin(batch)
                if custom:
                    step_logs = self._run_custom_step(xb, yb)
                    seen += len(xb[0])
                    if batch_hooks:
                        cbs.on_train_batch_end(batch, dict(step_logs))
                    if batch_hooks and dist.any(self.stop_training):
                        break
                    continue
                loss, count, parts = self._train_step(plan, xb, yb, epoch, batch, swb,
                                                      skip_nonfinite=skip_nonfinite)
                loss_sum += loss * count
                seen += count
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v * count
                if batch_hooks:
                    cbs.on_train_batch_end(batch, plan.logs(
                        loss_sum / seen, {k: v / seen for k, v in parts_sum.items()}))
                # Keras: a batch hook's stop ends the epoch now (under MPI: all together)
                if batch_hooks and dist.any(self.stop_training):
                    break
            if seen == 0:  # an iterator that ran out before this epoch's first batch
                break
            dist.end_epoch(self)   # under MPI: one set of BatchNormalization statistics
            if custom:
                logs = {k: float(np.asarray(autodiff.value_of(v))) for k, v in step_logs.items()}
            else:
                logs = plan.logs(loss_sum / seen, {k: v / seen for k, v in parts_sum.items()})
            logs.update({"val_" + k: v for k, v in validate(plan, epoch).items()})
            cbs.on_epoch_end(epoch, logs)
            # Under MPI all processes stop together (a callback may decide on one alone).
            self.stop_training = dist.any(self.stop_training)
            if self.stop_training:
                break
        if plan is not None and plan.train_vars and hasattr(self.optimizer,
                                                            "finalize_variable_values"):
            # Keras: with use_ema the weights end on their moving averages.
            self.optimizer.finalize_variable_values(plan.train_vars)
        cbs.on_train_end(logs)
        self.history = cbs.history
        return cbs.history

    def _run_custom_step(self, xb, yb):
        x = xb[0] if len(xb) == 1 else xb
        y = yb[0] if len(yb) == 1 else yb
        out = self.train_step((x, y))
        if not isinstance(out, dict):
            raise ValueError(f"train_step must return a dict of logs (metric name -> value), "
                             f"got {type(out).__name__}")
        return out

    # ------------------------------------------------- iterators of batches
    def _next_xy(self, source, name, need_y=True, class_weight=None):
        """The next batch of ``source`` as ``(xs, ys, sample weights or None)``, checked
        like arrays; None once it is exhausted."""
        try:
            batch = next(source)
        except StopIteration:
            return None
        swb = None
        if isinstance(batch, tuple) or (isinstance(batch, list) and len(batch) in (2, 3)
                                         and need_y):
            if len(batch) not in (2, 3):
                raise ValueError(
                    f"{name} must yield x, (x, y) or (x, y, sample_weight) batches, got a "
                    f"{type(batch).__name__} of length {len(batch)}")
            xb, yb = batch[0], batch[1]
            swb = batch[2] if len(batch) == 3 else None
        elif need_y:
            raise ValueError(
                f"{name} yields inputs only, but targets are needed: yield (x, y) batches "
                f"(flow_from_directory: a class_mode other than None)")
        else:
            xb, yb = batch, None
        if distributed.current().size > 1 and len(_structure(xb, "x")[0][0]) == 0:
            # this process's empty share of a short last batch: nothing to check in y
            return self._check_x(xb, f"{name} batch x", allow_empty=True), \
                [None if y is None else np.asarray(y) for y in
                 (_structure(yb, "y")[0] if yb is not None else [None])], None
        if not need_y:
            return self._check_x(xb, f"{name} batch x"), None, None
        xs, ys = self._check_xy(xb, yb, f"{name} batch x", f"{name} batch y")
        swb = _check_sample_weight(swb, len(xs[0]), f"{name} batch sample_weight")
        if class_weight is not None:
            swb = self._class_sample_weights(class_weight, ys)
        return xs, ys, swb

    def _ran_out(self, name, done, steps):
        warnings.warn(
            f"{name} ran out of batches after {done} of {steps} steps; pass a smaller "
            f"steps value or an iterator that repeats (ImageDataGenerator's do)",
            RuntimeWarning, stacklevel=3)

    def _evaluate_batches(self, source, steps, name, plan=None, cbs=None):
        hooks = cbs is not None and cbs.needs_batch_hooks("test")
        dist = distributed.current()
        dist.agree(f"the number of batches of {name}", steps=steps)
        total, seen, parts_sum = 0.0, 0, {}
        for step in range(steps):
            got = self._next_xy(source, name)
            if not dist.all(got is not None):   # under MPI: stop together
                self._ran_out(name, step, steps)
                break
            if step == 0:
                plan = plan or self._prepare()   # the first batch may have built the model
                plan.reset_metrics()
            xb, yb, swb = got
            loss, count, parts = self._test_step(plan, xb, yb, swb)
            total += loss * count
            seen += count
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * count
            if hooks:
                cbs.on_test_batch_end(step, plan.logs(total / seen))
        if seen == 0:
            raise ValueError(f"{name} yielded no batches")
        return plan.logs(total / seen, {k: v / seen for k, v in parts_sum.items()})

    def _fit_batches(self, source, y, epochs, verbose, callbacks, validation_split,
                     validation_data, initial_epoch, steps_per_epoch, validation_steps,
                     class_weight=None, validation_freq=1):
        """fit() on an iterator of (x, y) batches; each batch is checked as it arrives."""
        source = _as_iterator(source)
        if y is not None:
            raise ValueError(
                f"y must be None when x is an iterator of (x, y) batches (the targets come "
                f"from it), got {type(y).__name__}")
        if validation_split:
            raise ValueError(
                f"validation_split={validation_split} needs arrays; with an iterator pass "
                f"validation_data=(x_val, y_val) or a validation iterator")
        steps = _source_steps(source, steps_per_epoch, "steps_per_epoch")
        dist = distributed.current()
        dist.prepare_source(source, "x")
        val_source = x_val = y_val = sw_val = None
        if _is_batch_source(validation_data):
            val_source = validation_data
            dist.prepare_source(val_source, "validation_data")
            validation_steps = _source_steps(validation_data, validation_steps,
                                             "validation_steps")
        elif validation_data is not None and (
                not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3)):
            raise ValueError(
                "validation_data must be a tuple (x_val, y_val) or an iterator of batches, "
                f"got {type(validation_data).__name__}")
        pending = self._next_xy(source, "x", class_weight=class_weight) \
            if epochs > initial_epoch else None
        if epochs > initial_epoch and not dist.all(pending is not None):
            raise ValueError("x yielded no batches"
                             + (" on at least one process" if dist.size > 1 else ""))
        if validation_data is not None and val_source is None:
            x_val, y_val = self._check_xy(validation_data[0], validation_data[1],
                                          "validation_data[0]", "validation_data[1]")
            if len(validation_data) == 3:
                sw_val = _check_sample_weight(validation_data[2], len(x_val[0]),
                                              "validation_data[2]")
        plan = self._prepare_training() if self.built else None

        def epoch_batches(epoch):
            nonlocal pending
            for batch in range(steps):
                got, pending = (pending, None) if pending is not None \
                    else (self._next_xy(source, "x", class_weight=class_weight), None)
                if not dist.all(got is not None):   # under MPI: stop together
                    self._ran_out("x", epoch * steps + batch, epochs * steps)
                    self.stop_training = True
                    return
                yield got

        with _device.scope(self):   # on 'cuda': weights, optimizer state stay on the device
            return self._train_epochs(
                plan, callbacks, verbose, epochs, initial_epoch, epoch_batches,
                self._validation(x_val, y_val, sw_val, val_source, validation_steps, 32,
                                 validation_freq),
                {"epochs": epochs, "steps": steps, "verbose": verbose,
                 "batch_size": None, "samples": None,
                 "do_validation": x_val is not None or val_source is not None})

    # -------------------------------------------------------------- evaluate
    def evaluate(self, x=None, y=None, batch_size=32, verbose=1, sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Loss, or ``[loss, metric...]`` when metrics were compiled (Keras);
        ``return_dict=True``: ``{name: value}``.

        ``x`` may be an iterator of ``(x, y)`` batches (``y=None``): ``steps`` batches,
        default ``len(x)``.
        """
        self._require_compiled("evaluate")
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        if _is_batch_source(x):
            if y is not None:
                raise ValueError(
                    f"y must be None when x is an iterator of (x, y) batches (the targets "
                    f"come from it), got {type(y).__name__}")
            if sample_weight is not None:
                raise ValueError("sample_weight applies to arrays; an iterator yields "
                                 "(x, y, sample_weight) batches instead")
            steps = _source_steps(x, steps, "steps")
            distributed.current().prepare_source(x, "x")
            cbs = self._progress(callbacks, steps, verbose)
            cbs.on_test_begin()
            with _device.scope(self):
                logs = self._evaluate_batches(_fresh_pass(x), steps, "x", cbs=cbs)
            cbs.on_test_end(logs)
            return self._result(logs, return_dict)
        if steps is not None:
            raise ValueError(f"steps applies when x is an iterator of batches; with arrays "
                             f"use batch_size (got steps={steps!r})")
        distributed.current().check_batch_size(batch_size)
        xs, ys = self._check_xy(x, y)
        sw = _check_sample_weight(sample_weight, len(xs[0]))
        plan = self._prepare()
        cbs = self._progress(callbacks, -(-len(xs[0]) // batch_size), verbose)
        cbs.on_test_begin()
        with _device.scope(self):
            logs = self._evaluate_arrays(plan, xs, ys, batch_size, cbs, sw=sw)
        cbs.on_test_end(logs)
        return self._result(logs, return_dict)

    def _result(self, logs, return_dict=False):
        if return_dict:
            return dict(logs)
        if len(logs) == 1:
            return logs["loss"]
        return list(logs.values())

    def _evaluate_arrays(self, plan, xs, ys, batch_size, cbs=None, sw=None):
        dist = distributed.current()
        dist.agree("evaluate/validation", samples=len(xs[0]), batch_size=batch_size, x=xs[0],
                   y=next((a for a in ys if a is not None), None))
        plan.reset_metrics()
        hooks = cbs is not None and cbs.needs_batch_hooks("test")
        n, total, parts_sum = len(xs[0]), 0.0, {}
        for batch, start in enumerate(range(0, n, batch_size)):
            lo, hi = dist.shard(start, min(start + batch_size, n))
            loss, count, parts = self._test_step(plan, self._take(xs, lo, hi),
                                                 self._take(ys, lo, hi),
                                                 None if sw is None else sw[lo:hi])
            total += loss * count
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v * count
            if hooks:
                cbs.on_test_batch_end(batch, plan.logs(total / min(start + batch_size, n)))
        return plan.logs(total / n, {k: v / n for k, v in parts_sum.items()})

    def _progress(self, callbacks, steps, verbose):
        """Callbacks of evaluate/predict: the user's plus Keras's progress bar."""
        return callbacks_module.CallbackList(
            callbacks, model=self, add_progbar=True, verbose=verbose,
            params={"epochs": 1, "steps": steps, "verbose": verbose})

    # --------------------------------------------------------------- predict
    def predict(self, x, batch_size=32, verbose=0, steps=None, callbacks=None):
        """Model outputs as NumPy arrays (probabilities for a softmax model; a list or dict
        for several outputs).

        ``x`` may be an iterator yielding x or (x, y) batches: ``steps`` batches, default
        ``len(x)`` (use ``shuffle=False`` to keep the outputs in file order).
        """
        batch_size = _check_batch_size(batch_size)
        verbose = _check_verbose(verbose)
        dist = distributed.current()
        if _is_batch_source(x):
            steps = _source_steps(x, steps, "steps")
            dist.prepare_source(x, "x")
            with _device.scope(self):
                outs = self._predict_batches(_fresh_pass(x), steps,
                                             self._progress(callbacks, steps, verbose))
            return _restructure(outs, *self._output_kind)
        if steps is not None:
            raise ValueError(f"steps applies when x is an iterator of batches; with arrays "
                             f"use batch_size (got steps={steps!r})")
        dist.check_batch_size(batch_size)
        xs = self._check_x(x)
        n = len(xs[0])
        dist.agree("predict", samples=n, batch_size=batch_size, x=xs[0])
        cbs = self._progress(callbacks, -(-n // batch_size), verbose)
        hooks = cbs.needs_batch_hooks("predict")
        cbs.on_predict_begin()
        outs = None
        with _device.scope(self):
            for batch, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                # Under MPI: this process's share, then every share on every process.
                lo, hi = dist.shard(start, stop)
                ybs = [dist.gather(o) for o in self._infer_part(self._take(xs, lo, hi))]
                if outs is None:
                    outs = [np.empty((n,) + yb.shape[1:], dtype=yb.dtype) for yb in ybs]
                for o, yb in zip(outs, ybs):
                    o[start:stop] = yb
                if hooks:
                    cbs.on_predict_batch_end(batch, {"outputs": _restructure(
                        ybs, *self._output_kind)})
        cbs.on_predict_end()
        return _restructure(outs, *self._output_kind)

    def _predict_batches(self, source, steps, cbs):
        hooks = cbs.needs_batch_hooks("predict")
        dist = distributed.current()
        dist.agree("the number of batches of x", steps=steps)
        cbs.on_predict_begin()
        outs = []
        for step in range(steps):
            got = self._next_xy(source, "x", need_y=False)
            if not dist.all(got is not None):   # under MPI: stop together
                self._ran_out("x", step, steps)
                break
            outs.append([dist.gather(o) for o in self._infer_part(got[0])])
            if hooks:
                cbs.on_predict_batch_end(step, {"outputs": _restructure(
                    outs[-1], *self._output_kind)})
        if not outs:
            raise ValueError("x yielded no batches")
        cbs.on_predict_end()
        return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]

    # ------------------------------------------------ Keras 2's spellings
    def fit_generator(self, generator, steps_per_epoch=None, epochs=1, verbose=1,
                      callbacks=None, validation_data=None, validation_steps=None,
                      class_weight=None, initial_epoch=0, **kwargs):
        """Keras 2's name: use ``fit(generator, ...)`` (a DeprecationWarning says so)."""
        warnings.warn("fit_generator is deprecated (removed in Keras 3): use "
                      "model.fit(generator, ...), which takes generators", DeprecationWarning,
                      stacklevel=2)
        _drop_keras2_worker_args(kwargs, "fit_generator")
        return self.fit(generator, steps_per_epoch=steps_per_epoch, epochs=epochs,
                        verbose=verbose, callbacks=callbacks, validation_data=validation_data,
                        validation_steps=validation_steps, class_weight=class_weight,
                        initial_epoch=initial_epoch)

    def evaluate_generator(self, generator, steps=None, callbacks=None, verbose=0, **kwargs):
        """Keras 2's name: use ``evaluate(generator, ...)``."""
        warnings.warn("evaluate_generator is deprecated (removed in Keras 3): use "
                      "model.evaluate(generator, ...)", DeprecationWarning, stacklevel=2)
        _drop_keras2_worker_args(kwargs, "evaluate_generator")
        return self.evaluate(generator, steps=steps, callbacks=callbacks, verbose=verbose)

    def predict_generator(self, generator, steps=None, callbacks=None, verbose=0, **kwargs):
        """Keras 2's name: use ``predict(generator, ...)``."""
        warnings.warn("predict_generator is deprecated (removed in Keras 3): use "
                      "model.predict(generator, ...)", DeprecationWarning, stacklevel=2)
        _drop_keras2_worker_args(kwargs, "predict_generator")
        return self.predict(generator, steps=steps, callbacks=callbacks, verbose=verbose)

    # ------------------------------------------------------------ on a batch
    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One optimizer step on this batch; the loss (or [loss, metrics...]) before it."""
        self._require_compiled("train_on_batch")
        if class_weight is not None and sample_weight is not None:
            raise ValueError("pass class_weight or sample_weight, not both (Keras)")
        xs, ys = self._check_xy(x, y)
        sw = _check_sample_weight(sample_weight, len(xs[0]))
        if class_weight is not None:
            sw = self._class_sample_weights(class_weight, ys)
        plan = self._prepare_training()
        distributed.current().start_batch(self, plan)   # under MPI: rank 0's weights, once
        plan.reset_metrics()
        with _device.scope(self):
            loss, _, parts = self._train_step(plan, xs, ys, sw=sw)
        return self._result(plan.logs(loss, parts), return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """Loss (or [loss, metrics...]) on this batch, in inference mode."""
        self._require_compiled("test_on_batch")
        xs, ys = self._check_xy(x, y)
        sw = _check_sample_weight(sample_weight, len(xs[0]))
        plan = self._prepare()
        plan.reset_metrics()
        with _device.scope(self):
            loss, _, parts = self._test_step(plan, xs, ys, sw)
        return self._result(plan.logs(loss, parts), return_dict)

    def compile_inference(self, batch_size=None, runner="auto"):
        """A compiled inference plan of this model (fastcnn.inference_plan): ``plan(x)``
        returns the outputs as a list of arrays. predict uses one automatically."""
        return inference_plan.compile_inference(self, batch_size, runner)

    def predict_on_batch(self, x):
        xs = self._check_x(x)
        with _device.scope(self):
            return _restructure(self._infer(xs), *self._output_kind)

