"""Sequential: Keras's model API over fastcnn layers.

The training step is a plain loop: each layer's ``forward``, the loss (fused with the last
softmax/sigmoid when Keras would fuse it), each layer's ``backward`` in reverse, one
optimizer update in place. (Where :mod:`fastcnn.layers.fusion` finds a pair of layers that
runs cheaper together with the same result, such as a ReLU before a max pool, the loop runs
that pair as one step.) Everything that can be checked is checked once per call of
``fit``/``evaluate``/``predict`` on the whole arrays, before any work, so the per-batch path
does no validation and no conversion.

Data parallelism (:mod:`fastcnn.distributed`, several MPI processes) lives in a strategy
object, ``distributed.current()``, that this module calls at a few points: which share of a
global batch this process takes, the sums of the loss, the metrics' counts and the gradients
over the processes, the start-of-fit broadcast. With one process every call is the identity.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from . import _device, backends, callbacks as callbacks_module, config, distributed, losses
from . import metrics as metrics_module, optimizers, utils
from .layers import fusion
from .layers.base import Layer, format_shape, normalize_shape
from .layers.core import Input


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


def _is_batch_source(data):
    """True for an iterator of batches (an ImageDataGenerator iterator, a Python generator),
    as Keras's fit accepts; arrays and lists are array-likes, never iterated."""
    return (data is not None and hasattr(data, "__next__")
            and not isinstance(data, (np.ndarray, list, tuple, str, bytes)))


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


class Sequential:
    """A linear stack of layers (Keras's ``keras.Sequential``).

    ``Sequential(layers=None, name=None)``; the input shape comes from ``input_shape=`` on
    the first layer, a leading ``Input(shape)``, ``build(input_shape)``, or the first data
    the model sees.
    """

    def __init__(self, layers=None, name=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name or utils.unique_name("sequential")
        self._layers: list[Layer] = []
        self._input_spec = None       # (None, ...) once known
        self._input_dtype = None
        self.built = False
        self._dtype = None
        self.optimizer = None
        self.loss = None
        self._metric_specs: list = []
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._prepared = None
        if layers is not None:
            if isinstance(layers, (Layer, Input)) or not isinstance(layers, (list, tuple)):
                raise ValueError(
                    f"layers must be a list of layers, got {type(layers).__name__}")
            for layer in layers:
                self.add(layer)

    # ------------------------------------------------------------- structure
    def add(self, layer) -> None:
        """Appends a layer (built at once when the input shape is known)."""
        if isinstance(layer, Input):
            if self._layers or self._input_spec is not None:
                raise ValueError(
                    "an Input may only be the first entry of a Sequential model")
            self._input_spec = (None,) + layer.shape
            self._input_dtype = layer.dtype
            return
        if not isinstance(layer, Layer):
            raise ValueError(
                f"Sequential.add expects a fastcnn.layers.Layer, got {type(layer).__name__}")
        if any(layer is other for other in self._layers):
            raise ValueError(f"layer {layer.name!r} is already in model {self.name!r}")
        if not self._layers and self._input_spec is None and layer._batch_input_shape:
            self._input_spec = layer._batch_input_shape
        self._layers.append(layer)
        self._prepared = None
        if self._input_spec is not None:
            try:
                self._build_from(len(self._layers) - 1)
            except Exception:
                self._layers.pop()
                raise

    def _build_from(self, start: int) -> None:
        if start == 0:
            shape = self._input_spec
            self._dtype = self._resolve_dtype()
        else:
            shape = self._layers[start - 1].output_shape
        for layer in self._layers[start:]:
            if layer._dtype_arg is not None and layer._dtype_arg != self._dtype:
                raise ValueError(
                    f"layer {layer.name!r} has dtype {layer._dtype_arg.name} but model "
                    f"{self.name!r} computes in {self._dtype.name}; fastcnn models use one "
                    f"dtype (leave dtype=None or set the same dtype everywhere)"
                )
            layer.build(shape, self._dtype)
            shape = layer.output_shape
        self.built = bool(self._layers)

    def _resolve_dtype(self):
        first = self._layers[0]._dtype_arg if self._layers else None
        return first or self._input_dtype or np.dtype(config.floatx())

    def build(self, input_shape=None) -> None:
        """Builds every layer for ``input_shape`` (batch dimension first; may be None)."""
        if input_shape is None:
            if self._input_spec is None:
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
            spec = (None,) + normalize_shape(dims[1:], "input_shape")
            if self._input_spec is not None and self.built and spec != self._input_spec:
                raise ValueError(
                    f"model {self.name!r} is built for input shape "
                    f"{format_shape(self._input_spec)}, got input_shape {input_shape!r}")
            self._input_spec = spec
        if not self._layers:
            raise ValueError(f"model {self.name!r} has no layers to build")
        self._build_from(0)
        self._prepared = None

    @property
    def layers(self) -> list:
        return list(self._layers)

    @property
    def input_shape(self):
        self._require_built("input_shape")
        return self._input_spec

    @property
    def output_shape(self):
        self._require_built("output_shape")
        return self._layers[-1].output_shape

    @property
    def dtype(self):
        return None if self._dtype is None else self._dtype.name

    @property
    def weights(self) -> list:
        return [w for layer in self._layers for w in layer.weights]

    @property
    def trainable_weights(self) -> list:
        return [w for layer in self._layers for w in layer.trainable_weights]

    @property
    def non_trainable_weights(self) -> list:
        return [w for layer in self._layers for w in layer.non_trainable_weights]

    def _require_built(self, what):
        if not self.built:
            raise ValueError(
                f"model {self.name!r} has not been built yet, so {what} is unknown: give "
                f"the first layer input_shape=..., start with fastcnn.layers.Input(shape), "
                f"call build((None, ...)) or call the model on data")

    # --------------------------------------------------------------- weights
    def count_params(self) -> int:
        self._require_built("its number of parameters")
        return sum(layer.count_params() for layer in self._layers)

    def get_weights(self) -> list:
        """Copies of all weights, per layer kernel then bias (Keras's order)."""
        return [w for layer in self._layers for w in layer.get_weights()]

    def set_weights(self, weights) -> None:
        """Sets all weights (the order of :meth:`get_weights`); checks everything first."""
        self._require_built("the weights' shapes")
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self._layers)
        if len(weights) != expected:
            per_layer = ", ".join(f"{l.name}: {[w.shape for w in l.weights]}"
                                  for l in self._layers if l.weights)
            raise ValueError(
                f"model {self.name!r} expects {expected} weight arrays ({per_layer}), "
                f"got {len(weights)}")
        checked, i = [], 0
        for layer in self._layers:
            n = len(layer.weights)
            checked.append(layer._checked_weights(weights[i:i + n]))
            i += n
        for layer, values in zip(self._layers, checked):  # nothing assigned before here
            for old, new in zip(layer._weights, values):
                _device.assign(old, new)   # also a device array (fit on 'cuda')

    # --------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None) -> None:
        """Sets the optimizer, the loss and the metrics (Keras's names or objects)."""
        optimizer = optimizers.get(optimizer)
        if loss is None:
            raise ValueError(f"loss is required: one of {list(losses.KNOWN)} or a Loss")
        loss = losses.get(loss)
        if metrics is None:
            metrics = []
        elif isinstance(metrics, (str, metrics_module.Metric)):
            metrics = [metrics]
        elif not isinstance(metrics, (list, tuple)):
            raise ValueError(f"metrics must be a list of metric names, got {metrics!r}")
        for m in metrics:
            metrics_module.get(m, loss)  # unknown names fail here, at compile time
        names = [m.name if isinstance(m, metrics_module.Metric) else m for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics must have distinct names, got {names}")
        self.optimizer = optimizer
        self.loss = loss
        self._metric_specs = list(metrics)
        self.compiled = True
        self._prepared = None

    @property
    def metrics_names(self) -> list:
        return ["loss"] + [m.name if isinstance(m, metrics_module.Metric) else m
                           for m in self._metric_specs]

    def _require_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(
                f"model {self.name!r} must be compiled before {what}(): call "
                f"model.compile(optimizer=..., loss=..., metrics=...) first")

    def _prepare(self):
        """Per-(compile, build, trainable flags) plan of the training step."""
        flags = tuple(layer.trainable for layer in self._layers)
        plan = self._prepared
        if plan is not None and plan["flags"] == flags:
            return plan
        head = self._layers[-1]
        # Keras's fusion: a softmax/sigmoid head feeding the matching cross-entropy is
        # replaced by the backend's fused op on the logits (exact, stable gradient).
        fused = (not self.loss.from_logits and self.loss.fused_activation is not None
                 and getattr(head, "activation", None) == self.loss.fused_activation)
        # trainable_weights, not weights: the order of layer.grads, without state arrays
        # such as BatchNormalization's moving statistics (updated in forward, never trained).
        train_layers = [layer for layer in self._layers if layer.trainable_weights]
        train_vars = [w for layer in train_layers for w in layer.trainable_weights]
        # Backprop stops at the first layer that trains: nothing upstream of it has anything
        # to learn, so no input gradient is needed there (for a first conv on 1-3 channels
        # that is about half of its backward).
        first = train_layers[0] if train_layers else None
        steps = fusion.steps(self._layers[:-1]) + [head]
        stop = (next(i for i, step in enumerate(steps) if first in fusion.layers_of(step))
                if first is not None else len(steps) - 1)
        plan = {
            "flags": flags,
            "fused": fused,
            "logits": fused or self.loss.from_logits,
            "body": steps[:-1],
            "head": head,
            "backward_layers": steps[:stop:-1],
            "first_trainable": steps[stop] if first is not None else None,
            "train_layers": train_layers,
            "train_vars": train_vars,
            "metrics": [metrics_module.get(m, self.loss, head.output_shape)
                        for m in self._metric_specs],
            "optimizer_bound": False,
        }
        self._prepared = plan
        return plan

    def _prepare_training(self):
        """The plan, with the optimizer checked against the weights it will update."""
        plan = self._prepare()
        if not plan["optimizer_bound"]:
            if self.optimizer._variables is not None:
                # An optimizer keeps per-weight state: it may only go on with the same arrays.
                try:
                    self.optimizer.build(plan["train_vars"])
                except ValueError:
                    raise ValueError(
                        f"the optimizer holds state for other weights (the trainable flags "
                        f"of model {self.name!r} changed, or the optimizer belongs to another "
                        f"model); call model.compile(...) again with a new optimizer"
                    ) from None
            plan["optimizer_bound"] = True
        return plan

    # ---------------------------------------------------------- input checks
    def _check_x(self, x, argument="x", allow_empty=False):
        if x is None:
            raise ValueError(f"{argument} is required (an array of inputs), got None")
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"{argument} must be a numeric array, got dtype {x.dtype}")
        if x.ndim == 0 or (len(x) == 0 and not allow_empty):
            raise ValueError(f"{argument} must hold at least one sample, got shape {x.shape}")
        if not self.built:
            if not self._layers:
                raise ValueError(f"model {self.name!r} has no layers")
            self.build((None,) + x.shape[1:])
        expected = self._input_spec
        if x.ndim != len(expected):
            hint = ""
            if x.ndim == len(expected) - 1 and len(expected) == 4:
                hint = "; for single-channel images add a channel axis: x[..., None]"
            raise ValueError(
                f"{argument} has shape {x.shape} ({x.ndim}-D), but model {self.name!r} "
                f"expects {len(expected)}-D input of shape {format_shape(expected)}{hint}")
        if x.shape[1:] != expected[1:]:
            if len(expected) == 4 and x.shape[1:3] == expected[1:3]:
                detail = (f"{argument} has {x.shape[-1]} channels, the model expects "
                          f"{expected[-1]}")
            else:
                detail = f"{argument} has shape {x.shape}"
            raise ValueError(
                f"{detail}; model {self.name!r} expects input of shape "
                f"{format_shape(expected)} (batch first, channels last)")
        # uint8 images and other numbers become the model dtype here, once, not per batch
        return np.ascontiguousarray(x, dtype=self._dtype)

    def _check_xy(self, x, y, x_name="x", y_name="y"):
        if y is None:
            raise ValueError(f"{y_name} is required (targets for the loss), got None")
        y_arr = np.asarray(y)
        x_len = len(x) if hasattr(x, "__len__") else None
        if y_arr.ndim == 0:
            raise ValueError(f"{y_name} must be an array of targets, got a scalar")
        if x_len is not None and x_len != len(y_arr):
            raise ValueError(
                f"{x_name} and {y_name} must have the same number of samples: "
                f"{x_name} has {x_len}, {y_name} has {len(y_arr)}")
        x = self._check_x(x, x_name)
        y_arr = self.loss.prepare_targets(y_arr, self.output_shape, self._dtype, y_name)
        return x, y_arr

    # -------------------------------------------------------------- the step
    def _forward(self, plan, x, training, logits_head):
        x = _device.put(self, x)   # on a device backend: the batch, copied once
        for layer in plan["body"]:
            x = layer.forward(x, training)
        if logits_head:
            return plan["head"].forward(x, training, activate=False)
        return plan["head"].forward(x, training)

    def _train_step(self, plan, x, y, epoch=None, batch=None):
        """One optimizer step; ``(mean loss, samples)`` of the batch.

        Under fastcnn.distributed, ``x`` is this process's share of the global batch (empty
        for some processes in a short last batch) and the strategy sums the loss, the
        metrics' counts and the gradients over the processes: the returned values are the
        global batch's, the same on every process.
        """
        dist = distributed.current()
        n = len(x)
        out = dy = None
        loss = 0.0
        if n:
            out = self._forward(plan, x, True, plan["fused"])
            loss, dy = self.loss.compute(backends.current(), out, y, plan["logits"])
            # Regularizers' penalties (Keras reports them in the loss); their gradients are
            # added by each layer's backward.
            loss = float(loss) + sum(layer.regularization_loss() for layer in self._layers)
        # Updates the metrics; under MPI sums over the processes, so that all of them raise
        # below together (none is left waiting in the gradient Allreduce).
        loss, total = dist.reduce_batch(plan, loss, n, y, out)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss} "
                + ("in train_on_batch" if epoch is None
                   else f"at epoch {epoch + 1}, batch {batch + 1}")
                + "; training stopped before this batch's update "
                "(try a lower learning rate, or check x and y for NaN/inf)")
        grads = None
        if n:
            for layer in plan["backward_layers"]:
                dy = layer.backward(dy)
            if plan["first_trainable"] is not None:
                plan["first_trainable"].backward(dy, need_dx=False)
            grads = [g for layer in plan["train_layers"] for g in layer.grads]
        grads = dist.average_gradients(plan, grads, n, total)
        self.optimizer.apply(grads, plan["train_vars"])
        return loss, total

    def _test_step(self, plan, x, y):
        """``(mean loss, samples)`` of the batch in inference mode (global under MPI)."""
        n = len(x)
        out, loss = None, 0.0
        if n:
            out = self._forward(plan, x, False, plan["fused"])
            loss, _ = self.loss.compute(backends.current(), out, y, plan["logits"])
            loss = float(loss) + sum(layer.regularization_loss() for layer in self._layers)
        return distributed.current().reduce_batch(plan, loss, n, y, out)

    def _evaluate_arrays(self, plan, x, y, batch_size, cbs=None):
        dist = distributed.current()
        dist.agree("evaluate/validation", samples=len(x), batch_size=batch_size, x=x, y=y)
        for m in plan["metrics"]:
            m.reset_state()
        hooks = cbs is not None and cbs.needs_batch_hooks("test")
        n, total = len(x), 0.0
        for batch, start in enumerate(range(0, n, batch_size)):
            lo, hi = dist.shard(start, min(start + batch_size, n))
            loss, count = self._test_step(plan, x[lo:hi], y[lo:hi])
            total += loss * count
            if hooks:
                cbs.on_test_batch_end(batch, self._running_logs(
                    plan, total / min(start + batch_size, n)))
        return self._running_logs(plan, total / n)

    @staticmethod
    def _running_logs(plan, loss):
        return {"loss": loss, **{m.name: m.result() for m in plan["metrics"]}}

    def _progress(self, callbacks, steps, verbose):
        """Callbacks of evaluate/predict: the user's plus Keras's progress bar."""
        return callbacks_module.CallbackList(
            callbacks, model=self, add_progbar=True, verbose=verbose,
            params={"epochs": 1, "steps": steps, "verbose": verbose})

    # ------------------------------------------------------------------- fit
    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None):
        """Trains for ``epochs`` epochs; returns a History (``history.history['loss']``...).

        ``x`` may be an iterator of ``(x, y)`` batches (``ImageDataGenerator.flow...``, a
        Python generator) with ``y=None``: ``steps_per_epoch`` batches per epoch (default
        ``len(x)``); ``validation_data`` may be such an iterator too (``validation_steps``).
        """
        self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size)
        dist = distributed.current()
        epochs = _check_count(epochs, "epochs")
        initial_epoch = _check_count(initial_epoch, "initial_epoch")
        verbose = _check_verbose(verbose)
        if (not isinstance(validation_split, numbers.Real) or isinstance(validation_split, bool)
                or not 0.0 <= validation_split < 1.0):
            raise ValueError(f"validation_split must be a float in [0, 1), got {validation_split!r}")
        if _is_batch_source(x):
            return self._fit_batches(x, y, epochs, verbose, callbacks, validation_split,
                                     validation_data, initial_epoch, steps_per_epoch,
                                     validation_steps)
        if steps_per_epoch is not None:
            raise ValueError(
                f"steps_per_epoch applies when x is an iterator of batches; with arrays use "
                f"batch_size (got steps_per_epoch={steps_per_epoch!r})")
        dist.check_batch_size(batch_size)
        x, y = self._check_xy(x, y)
        x_val = y_val = val_source = None
        if _is_batch_source(validation_data):
            val_source = validation_data
            dist.prepare_source(val_source, "validation_data")
            validation_steps = _source_steps(validation_data, validation_steps,
                                             "validation_steps")
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(
                    "validation_data must be a tuple (x_val, y_val), got "
                    f"{type(validation_data).__name__}"
                    + (f" of length {len(validation_data)}"
                       if isinstance(validation_data, (tuple, list)) else ""))
            x_val, y_val = self._check_xy(validation_data[0], validation_data[1],
                                          "validation_data[0]", "validation_data[1]")
        elif validation_split > 0:
            # Keras: the LAST fraction of the data, taken before any shuffling.
            split_at = int(math.floor(len(x) * (1.0 - validation_split)))
            if split_at == 0 or split_at == len(x):
                raise ValueError(
                    f"validation_split={validation_split} leaves "
                    f"{'no training' if split_at == 0 else 'no validation'} samples out of "
                    f"{len(x)}; use a fraction that leaves samples on both sides")
            x, x_val, y, y_val = x[:split_at], x[split_at:], y[:split_at], y[split_at:]
        plan = self._prepare_training()

        n = len(x)
        steps = -(-n // batch_size)
        # Under MPI: every process shares out the same data, in rank 0's order or none.
        dist.agree("fit's data", samples=n, shuffle=bool(shuffle), x=x, y=y)

        def epoch_batches(epoch):
            # Under MPI: rank 0's order, and this process's share of each global batch.
            order = dist.permutation(n) if shuffle else None
            for start in range(0, n, batch_size):
                lo, hi = dist.shard(start, min(start + batch_size, n))
                if order is None:
                    yield x[lo:hi], y[lo:hi]
                else:
                    idx = order[lo:hi]
                    yield x[idx], y[idx]

        with _device.scope(self):   # on 'cuda': weights, optimizer state stay on the device
            return self._train_epochs(
                plan, callbacks, verbose, epochs, initial_epoch, epoch_batches,
                self._validation(x_val, y_val, val_source, validation_steps, batch_size),
                {"epochs": epochs, "steps": steps, "verbose": verbose,
                 "batch_size": batch_size, "samples": n})

    def _validation(self, x_val, y_val, val_source, validation_steps, batch_size):
        """``validate(plan) -> {name: value}`` for the end of each epoch ({} without data)."""
        def validate(plan):
            if x_val is not None:
                return self._evaluate_arrays(plan, x_val, y_val, batch_size)
            if val_source is not None:
                return self._evaluate_batches(val_source, validation_steps,
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
        if plan is not None:   # None: no epoch to run (epochs <= initial_epoch)
            # Under MPI: same model and data sizes everywhere, then rank 0's weights for all.
            dist.start_fit(self, plan, dict(params, initial_epoch=initial_epoch))
        self.stop_training = False
        cbs.on_train_begin()
        logs = {}
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            for m in plan["metrics"]:
                m.reset_state()
            loss_sum, seen = 0.0, 0
            for batch, (xb, yb) in enumerate(epoch_batches(epoch)):
                if batch_hooks:
                    cbs.on_train_batch_begin(batch)
                loss, count = self._train_step(plan, xb, yb, epoch, batch)
                loss_sum += loss * count
                seen += count
                if batch_hooks:
                    cbs.on_train_batch_end(batch, self._running_logs(plan, loss_sum / seen))
            if seen == 0:  # an iterator that ran out before this epoch's first batch
                break
            dist.end_epoch(self)   # under MPI: one set of BatchNormalization statistics
            logs = self._running_logs(plan, loss_sum / seen)
            logs.update({"val_" + k: v for k, v in validate(plan).items()})
            cbs.on_epoch_end(epoch, logs)
            # Under MPI all processes stop together (a callback may decide on one alone).
            self.stop_training = dist.any(self.stop_training)
            if self.stop_training:
                break
        cbs.on_train_end(logs)
        self.history = cbs.history
        return cbs.history

    # ------------------------------------------------- iterators of batches
    def _next_xy(self, source, name, need_y=True):
        """The next batch of ``source``, checked like arrays; None once it is exhausted."""
        try:
            batch = next(source)
        except StopIteration:
            return None
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise ValueError(
                    f"{name} must yield x or (x, y) batches, got a {type(batch).__name__} of "
                    f"length {len(batch)}" + (" (sample weights are not supported)"
                                              if len(batch) == 3 else ""))
            xb, yb = batch
        elif need_y:
            raise ValueError(
                f"{name} yields inputs only, but targets are needed: yield (x, y) batches "
                f"(flow_from_directory: a class_mode other than None)")
        else:
            xb, yb = batch, None
        if distributed.current().size > 1 and len(xb) == 0:
            # this process's empty share of a short last batch: nothing to check in y
            return self._check_x(xb, f"{name} batch x", allow_empty=True), yb
        if not need_y:
            return self._check_x(xb, f"{name} batch x"), None
        return self._check_xy(xb, yb, f"{name} batch x", f"{name} batch y")

    def _ran_out(self, name, done, steps):
        warnings.warn(
            f"{name} ran out of batches after {done} of {steps} steps; pass a smaller "
            f"steps value or an iterator that repeats (ImageDataGenerator's do)",
            RuntimeWarning, stacklevel=3)

    def _evaluate_batches(self, source, steps, name, plan=None, cbs=None):
        hooks = cbs is not None and cbs.needs_batch_hooks("test")
        dist = distributed.current()
        dist.agree(f"the number of batches of {name}", steps=steps)
        total, seen = 0.0, 0
        for step in range(steps):
            got = self._next_xy(source, name)
            if not dist.all(got is not None):   # under MPI: stop together
                self._ran_out(name, step, steps)
                break
            if step == 0:
                plan = plan or self._prepare()   # the first batch may have built the model
                for m in plan["metrics"]:
                    m.reset_state()
            xb, yb = got
            loss, count = self._test_step(plan, xb, yb)
            total += loss * count
            seen += count
            if hooks:
                cbs.on_test_batch_end(step, self._running_logs(plan, total / seen))
        if seen == 0:
            raise ValueError(f"{name} yielded no batches")
        return {"loss": total / seen, **{m.name: m.result() for m in plan["metrics"]}}

    def _fit_batches(self, source, y, epochs, verbose, callbacks, validation_split,
                     validation_data, initial_epoch, steps_per_epoch, validation_steps):
        """fit() on an iterator of (x, y) batches; each batch is checked as it arrives."""
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
        val_source = x_val = y_val = None
        if _is_batch_source(validation_data):
            val_source = validation_data
            dist.prepare_source(val_source, "validation_data")
            validation_steps = _source_steps(validation_data, validation_steps,
                                             "validation_steps")
        elif validation_data is not None and (
                not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2):
            raise ValueError(
                "validation_data must be a tuple (x_val, y_val) or an iterator of batches, "
                f"got {type(validation_data).__name__}")
        pending = self._next_xy(source, "x") if epochs > initial_epoch else None
        if epochs > initial_epoch and not dist.all(pending is not None):
            raise ValueError("x yielded no batches"
                             + (" on at least one process" if dist.size > 1 else ""))
        if validation_data is not None and val_source is None:
            x_val, y_val = self._check_xy(validation_data[0], validation_data[1],
                                          "validation_data[0]", "validation_data[1]")
        plan = self._prepare_training() if self.built else None

        def epoch_batches(epoch):
            nonlocal pending
            for batch in range(steps):
                got, pending = (pending, None) if pending is not None \
                    else (self._next_xy(source, "x"), None)
                if not dist.all(got is not None):   # under MPI: stop together
                    self._ran_out("x", epoch * steps + batch, epochs * steps)
                    self.stop_training = True
                    return
                yield got

        with _device.scope(self):   # on 'cuda': weights, optimizer state stay on the device
            return self._train_epochs(
                plan, callbacks, verbose, epochs, initial_epoch, epoch_batches,
                self._validation(x_val, y_val, val_source, validation_steps, 32),
                {"epochs": epochs, "steps": steps, "verbose": verbose,
                 "batch_size": None, "samples": None})

    # -------------------------------------------------------------- evaluate
    def evaluate(self, x=None, y=None, batch_size=32, verbose=1, steps=None, callbacks=None):
        """Loss, or ``[loss, metric...]`` when metrics were compiled (Keras).

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
            steps = _source_steps(x, steps, "steps")
            distributed.current().prepare_source(x, "x")
            cbs = self._progress(callbacks, steps, verbose)
            cbs.on_test_begin()
            with _device.scope(self):
                logs = self._evaluate_batches(x, steps, "x", cbs=cbs)
            cbs.on_test_end(logs)
            return self._result(logs)
        if steps is not None:
            raise ValueError(f"steps applies when x is an iterator of batches; with arrays "
                             f"use batch_size (got steps={steps!r})")
        distributed.current().check_batch_size(batch_size)
        x, y = self._check_xy(x, y)
        plan = self._prepare()
        cbs = self._progress(callbacks, -(-len(x) // batch_size), verbose)
        cbs.on_test_begin()
        with _device.scope(self):
            logs = self._evaluate_arrays(plan, x, y, batch_size, cbs)
        cbs.on_test_end(logs)
        return self._result(logs)

    def _result(self, logs):
        if len(logs) == 1:
            return logs["loss"]
        return list(logs.values())

    def predict(self, x, batch_size=32, verbose=0, steps=None, callbacks=None):
        """Model outputs as a NumPy array (probabilities for a softmax model).

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
                return self._predict_batches(x, steps,
                                             self._progress(callbacks, steps, verbose))
        if steps is not None:
            raise ValueError(f"steps applies when x is an iterator of batches; with arrays "
                             f"use batch_size (got steps={steps!r})")
        dist.check_batch_size(batch_size)
        x = self._check_x(x)
        n = len(x)
        dist.agree("predict", samples=n, batch_size=batch_size, x=x)
        cbs = self._progress(callbacks, -(-n // batch_size), verbose)
        hooks = cbs.needs_batch_hooks("predict")
        cbs.on_predict_begin()
        out = None
        with _device.scope(self):
            for batch, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                # Under MPI: this process's share, then every share on every process.
                lo, hi = dist.shard(start, stop)
                yb = dist.gather(self._infer_part(x[lo:hi]))
                if out is None:
                    out = np.empty((n,) + yb.shape[1:], dtype=yb.dtype)
                out[start:stop] = yb
                if hooks:
                    cbs.on_predict_batch_end(batch, {"outputs": yb})
        cbs.on_predict_end()
        return out

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
            outs.append(dist.gather(self._infer_part(got[0])))
            if hooks:
                cbs.on_predict_batch_end(step, {"outputs": outs[-1]})
        if not outs:
            raise ValueError("x yielded no batches")
        cbs.on_predict_end()
        return np.concatenate(outs)

    def _infer(self, x):
        x = _device.put(self, x)
        for step in self._inference_steps():
            x = step.forward(x, False)
        return _device.to_host(x)   # outputs are NumPy arrays on every backend

    def _inference_steps(self):
        key = tuple(map(id, self._layers))
        cached = getattr(self, "_steps_cache", None)
        if cached is None or cached[0] != key:
            cached = self._steps_cache = (key, fusion.steps(self._layers))
        return cached[1]

    def _infer_part(self, x):
        """``_infer``, also for a process's empty share of a batch (under MPI)."""
        if len(x) == 0:
            return np.empty((0,) + self.output_shape[1:], dtype=self._dtype)
        return self._infer(x)

    def __call__(self, x, training=False):
        """Eager forward pass on an array (Keras's ``model(x)``)."""
        x = self._check_x(x)
        for layer in self._layers:
            x = layer.forward(x, bool(training))
        return x

    # ------------------------------------------------------------ on a batch
    def train_on_batch(self, x, y):
        """One optimizer step on this batch; the loss (or [loss, metrics...]) before it."""
        self._require_compiled("train_on_batch")
        x, y = self._check_xy(x, y)
        plan = self._prepare_training()
        distributed.current().start_batch(self, plan)   # under MPI: rank 0's weights, once
        for m in plan["metrics"]:
            m.reset_state()
        with _device.scope(self):
            loss, _ = self._train_step(plan, x, y)
        return self._result({"loss": loss, **{m.name: m.result() for m in plan["metrics"]}})

    def test_on_batch(self, x, y):
        """Loss (or [loss, metrics...]) on this batch, in inference mode."""
        self._require_compiled("test_on_batch")
        x, y = self._check_xy(x, y)
        plan = self._prepare()
        for m in plan["metrics"]:
            m.reset_state()
        with _device.scope(self):
            loss, _ = self._test_step(plan, x, y)
        return self._result({"loss": loss, **{m.name: m.result() for m in plan["metrics"]}})

    def predict_on_batch(self, x):
        x = self._check_x(x)
        with _device.scope(self):
            return self._infer(x)

    # --------------------------------------------------------------- summary
    def summary(self, line_length=None, positions=None, print_fn=None):
        """Prints Keras's table: Layer (type) | Output Shape | Param #, then the totals."""
        self._require_built("its summary")
        line_length = line_length or 65
        positions = positions or [0.45, 0.85, 1.0]
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
        row(["Layer (type)", "Output Shape", "Param #"])
        print_fn("=" * line_length)
        for i, layer in enumerate(self._layers):
            row([f"{layer.name} ({type(layer).__name__})", format_shape(layer.output_shape),
                 layer.count_params()])
            print_fn(("=" if i == len(self._layers) - 1 else "_") * line_length)
        trainable = sum(w.size for w in self.trainable_weights)
        non_trainable = sum(w.size for w in self.non_trainable_weights)
        print_fn(f"Total params: {trainable + non_trainable:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {non_trainable:,}")
        print_fn("_" * line_length)

    def __repr__(self):
        return f"<Sequential name={self.name!r}, {len(self._layers)} layers>"

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

    def load_weights(self, filepath):
        """Sets the weights from a file of :meth:`save_weights` or :meth:`save`; the
        architecture must match (ValueError naming the first layer that differs)."""
        from . import saving
        saving.load_weights(self, filepath)

    def get_config(self) -> dict:
        """The architecture as a JSON-able dict (name, input shape, dtype, layer configs)."""
        from . import saving
        return saving.model_to_config(self)["config"]

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model from :meth:`get_config`'s output (weights freshly initialised)."""
        from . import saving
        return saving.model_from_config({"class_name": cls.__name__, "config": config},
                                        custom_objects)

