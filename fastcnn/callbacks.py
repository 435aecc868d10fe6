"""Callbacks with Keras's hooks: ``Callback``, ``History``, ``ProgbarLogger``, ``CallbackList``.

``fit`` calls, in order: ``on_train_begin``, then per epoch ``on_epoch_begin(epoch)``, per
batch ``on_train_batch_begin(batch)`` / ``on_train_batch_end(batch, logs)`` (logs hold the
running means of the epoch so far), ``on_epoch_end(epoch, logs)`` (the epoch's loss and
metrics, with ``val_`` entries when validating), and ``on_train_end``. A callback may set
``self.model.stop_training = True``; fit stops after the current epoch.

Under :mod:`fastcnn.distributed` (several MPI processes) every callback runs on every
process and sees the same logs (summed over the processes), so their decisions agree;
only rank 0 prints (the progress bar and callback messages) and writes files
(ModelCheckpoint, CSVLogger). A user's own callback that writes files should check
``fastcnn.distributed.is_primary()``.
The ``on_test_*`` and ``on_predict_*`` hooks are Keras's hooks for ``evaluate`` and
``predict``; :class:`ProgbarLogger` draws their bar and ignores them inside ``fit``.

Batch hooks cost a Python call per batch, so :class:`CallbackList` calls them only when
some callback overrides them (or says it wants them: ``wants_batch_hooks(mode)``).

The training callbacks users reach for (Keras's names, arguments and defaults):
:class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`ReduceLROnPlateau`, :class:`LearningRateScheduler`,
:class:`CSVLogger`, :class:`LambdaCallback`, :class:`TerminateOnNaN`, :class:`BackupAndRestore`,
:class:`TensorBoard` (event files, no dependency; ``pip install fastcnn[tensorboard]`` for
the app that shows them).
"""
from __future__ import annotations

import csv
import inspect
import io
import math
import numbers
import os
import re
import shutil
import string
import sys
import time
import warnings

import numpy as np

from . import distributed


class Callback:
    """Base class: every hook does nothing."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass
    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass


_BATCH_HOOKS = {
    "train": ("on_train_batch_begin", "on_train_batch_end"),
    "test": ("on_test_batch_begin", "on_test_batch_end"),
    "predict": ("on_predict_batch_begin", "on_predict_batch_end"),
}


def _primary() -> bool:
    """False on every MPI process but rank 0 (True without fastcnn.distributed)."""
    return distributed.current().is_primary


def _overrides(callback, hook):
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackList(Callback):
    """Fans every hook out to a list of callbacks."""

    def __init__(self, callbacks=None, model=None, params=None, add_history=False,
                 add_progbar=False, verbose=1):
        super().__init__()
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise ValueError(
                    f"callbacks must be fastcnn.callbacks.Callback instances, got {cb!r}")
        self.history = None
        # Keras: a History or ProgbarLogger the user passed is used, not doubled. Under MPI
        # only rank 0 draws a bar.
        if add_progbar and verbose and _primary() and not any(
                isinstance(cb, ProgbarLogger) for cb in callbacks):
            callbacks.insert(0, ProgbarLogger(verbose=verbose))
        if add_history:
            self.history = next((cb for cb in callbacks if isinstance(cb, History)), None)
            if self.history is None:
                self.history = History()
                callbacks.append(self.history)
        self.callbacks = callbacks
        if model is not None:
            self.set_model(model)
        if params is not None:
            self.set_params(params)

    def append(self, callback):
        self.callbacks.append(callback)

    def set_model(self, model):
        self.model = model
        for cb in self.callbacks:
            cb.set_model(model)

    def set_params(self, params):
        self.params = params
        for cb in self.callbacks:
            cb.set_params(params)

    def needs_batch_hooks(self, mode="train") -> bool:
        """Whether any callback overrides the ``mode`` batch hooks (else fit skips them)."""
        for cb in self.callbacks:
            wants = getattr(cb, "wants_batch_hooks", None)
            if wants is not None:
                if wants(mode):
                    return True
            elif any(_overrides(cb, h) for h in _BATCH_HOOKS[mode]):
                return True
        return False

    def handles_nonfinite_loss(self) -> bool:
        """Whether a callback takes charge of a NaN/inf batch loss (:class:`TerminateOnNaN`:
        its class or instance says ``handles_nonfinite_loss = True``). fit raises
        ``NonFiniteLossError`` on such a loss unless this is True; then it skips that
        batch's update, passes the loss to the batch hooks and lets the callback stop."""
        return any(getattr(cb, "handles_nonfinite_loss", False) is True
                   for cb in self.callbacks)

    def _call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_begin(self, logs=None): self._call("on_train_begin", logs)
    def on_train_end(self, logs=None): self._call("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._call("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs=None): self._call("on_epoch_end", epoch, logs)
    def on_train_batch_begin(self, batch, logs=None): self._call("on_train_batch_begin", batch, logs)
    def on_train_batch_end(self, batch, logs=None): self._call("on_train_batch_end", batch, logs)
    def on_test_begin(self, logs=None): self._call("on_test_begin", logs)
    def on_test_end(self, logs=None): self._call("on_test_end", logs)
    def on_test_batch_begin(self, batch, logs=None): self._call("on_test_batch_begin", batch, logs)
    def on_test_batch_end(self, batch, logs=None): self._call("on_test_batch_end", batch, logs)
    def on_predict_begin(self, logs=None): self._call("on_predict_begin", logs)
    def on_predict_end(self, logs=None): self._call("on_predict_end", logs)
    def on_predict_batch_begin(self, batch, logs=None): self._call("on_predict_batch_begin", batch, logs)
    def on_predict_batch_end(self, batch, logs=None): self._call("on_predict_batch_end", batch, logs)

    def __iter__(self):
        return iter(self.callbacks)


class History(Callback):
    """Records the epoch logs: ``history.history['loss']`` is the list of epoch losses."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self


def format_logs(logs) -> str:
    """`` - loss: 0.2345 - accuracy: 0.9312`` (Keras's number format)."""
    parts = []
    for key, value in logs.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue  # a list or text a user callback put in the logs: not a number to show
        parts.append(f" - {key}: {value:.4f}" if abs(value) > 1e-3 else f" - {key}: {value:.4e}")
    return "".join(parts)


def _format_duration(seconds) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


def _format_per_step(seconds) -> str:
    if seconds >= 1:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


#: The bar's width in characters (Keras 2's); narrower down to BAR_MIN_WIDTH when the
#: live line would not fit the terminal.
BAR_WIDTH = 30
BAR_MIN_WIDTH = 10


def progress_bar(seen, steps, width=BAR_WIDTH) -> str:
    """``  12/100 [==>...........]`` (Keras's bar)."""
    steps = steps or seen
    digits = len(str(steps))
    done = int(width * seen / steps) if steps else width
    bar = ("=" * (done - 1) + (">" if seen < steps else "=")) if done else ""
    return f"{seen:{digits}d}/{steps} [{bar}{'.' * (width - len(bar))}]"


def final_line(steps, elapsed, logs, verbose) -> str:
    """The last line of an epoch (or of evaluate): bar and time (verbose=1) or counts
    and time (verbose=2), then the logs."""
    if verbose == 1:
        per_step = elapsed / steps if steps else 0.0
        head = f"{progress_bar(steps, steps)} - {_format_duration(elapsed)} {_format_per_step(per_step)}"
    else:
        head = f"{steps}/{steps} - {_format_duration(elapsed)}"
    return head + format_logs(logs or {})


class ProgbarLogger(Callback):
    """Keras-style progress output (added by ``fit`` when ``verbose`` is 1 or 2).

    verbose=2: ``Epoch 1/3`` then ``1688/1688 - 3s - loss: ... - val_accuracy: ...``.
    verbose=1: an in-place bar (``\\r`` updates, at most every 0.1 s, always the final one)
    ``  12/844 [>.....] - ETA: 41s - loss: 0.2345`` ending in
    ``844/844 [=====] - 9s 11ms/step - loss: ...``; without a terminal (CI logs) only the
    final line of each epoch is written, as Keras does.
    ``evaluate`` and ``predict`` get the same bar through the ``on_test_*`` /
    ``on_predict_*`` hooks (no ``Epoch`` header); inside ``fit`` those hooks are ignored so
    that validation draws nothing of its own.
    """

    INTERVAL = 0.1  # seconds between bar refreshes

    def __init__(self, verbose=None, stream=None):
        """``ProgbarLogger()`` is Keras's constructor: the bar takes fit's (evaluate's,
        predict's) ``verbose`` from the params it is given, as Keras's does. fastcnn's
        extras: ``verbose=1|2`` fixes the style whatever fit's verbose, and ``stream``
        (default: ``sys.stdout`` at each write)."""
        super().__init__()
        if verbose is not None and (verbose not in (0, 1, 2) or isinstance(verbose, bool)):
            raise ValueError(f"ProgbarLogger verbose must be 0, 1, 2 or None (fit's), got "
                             f"{verbose!r}")
        self._verbose_arg = verbose
        self.verbose = 1 if verbose is None else verbose
        self._stream = stream
        self._in_fit = False
        self._is_dynamic = False

    def set_params(self, params):
        super().set_params(params)
        if self._verbose_arg is None:   # Keras: the verbose of the fit/evaluate/predict call
            verbose = (params or {}).get("verbose", 1)
            self.verbose = 1 if verbose == "auto" else int(verbose)

    @property
    def stream(self):
        # sys.stdout looked up at each write: pytest's capsys and redirections swap it
        return self._stream if self._stream is not None else sys.stdout

    @property
    def _shown(self) -> bool:
        # Under MPI the bar is rank 0's alone (its logs are already the global ones).
        return bool(self.verbose) and _primary()

    def _dynamic(self):
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def wants_batch_hooks(self, mode) -> bool:
        # Only the live bar needs per-batch calls; verbose=2 and logs to files do not.
        return mode in _BATCH_HOOKS and self.verbose == 1 and _primary() and self._dynamic()

    # ------------------------------------------------------------ the bar
    def _start_bar(self):
        self._is_dynamic = self.verbose == 1 and _primary() and self._dynamic()
        self._steps = self.params.get("steps")
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._last_len = 0
        self._seen = 0

    def _columns(self):
        """The width of the terminal the bar is drawn on, or None when unknown.

        The stream's own terminal when it has one (``os.get_terminal_size``), else
        ``$COLUMNS`` as ``shutil.get_terminal_size`` reads it; a stream that only says it
        is a terminal (a notebook, a test double) gets no limit.
        """
        try:
            fd = self.stream.fileno()
            if os.isatty(fd):
                return os.get_terminal_size(fd).columns or None
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        columns = shutil.get_terminal_size(fallback=(0, 0)).columns
        return columns if os.environ.get("COLUMNS") and columns > 0 else None

    def _fit_line(self, bar_at, tail, cut):
        """``progress_bar(*bar_at)`` + ``tail``, narrowed to the terminal: a line that
        wraps makes every ``\r`` update start a new row. The bar narrows first (down to
        BAR_MIN_WIDTH); a live line (``cut``) is then cut at the terminal's last column."""
        columns = self._columns() if self._is_dynamic else None
        line = progress_bar(*bar_at) + tail
        if columns is None or len(line) < columns:
            return line
        width = max(BAR_WIDTH - (len(line) - (columns - 1)), BAR_MIN_WIDTH)
        line = progress_bar(*bar_at, width=width) + tail
        return line[:columns - 1] if cut else line

    def _update(self, batch, logs):
        self._seen = batch + 1
        if not self._is_dynamic:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.INTERVAL:
            return
        self._last_draw = now
        elapsed = now - self._start
        if self._steps:
            remaining = max(self._steps - self._seen, 0)
            line = self._fit_line(
                (self._seen, self._steps), " - ETA: "
                + _format_duration(elapsed / self._seen * remaining) + format_logs(logs or {}),
                cut=True)
        else:  # an iterator of unknown length: no bar, no ETA (Keras's "Unknown")
            line = (f"{self._seen}/Unknown - {_format_duration(elapsed)} "
                    f"{_format_per_step(elapsed / self._seen)}" + format_logs(logs or {}))
            columns = self._columns()
            if columns is not None:
                line = line[:columns - 1]
        self._write_over(line)

    def _write_over(self, line):
        # pad with blanks so that a shorter line fully covers the previous one
        self.stream.write("\r" + line.ljust(self._last_len))
        self._last_len = len(line)
        self.stream.flush()

    def _finish(self, logs):
        elapsed = time.perf_counter() - self._start
        steps = self._steps or self._seen
        line = final_line(steps, elapsed, logs, self.verbose)
        if self._is_dynamic and self.verbose == 1:
            # the bar narrowed as the live line did; the logs are all kept (it may wrap)
            tail = line[len(progress_bar(steps, steps)):]
            line = self._fit_line((steps, steps), tail, cut=False)
        if self._is_dynamic:
            self._write_over(line)
            self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    # -------------------------------------------------------------- fit
    def on_train_begin(self, logs=None):
        self._in_fit = True
        self._is_dynamic = self.verbose == 1 and _primary() and self._dynamic()

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._start_bar()
        if self._shown:
            self.stream.write(f"Epoch {epoch + 1}/{self.params.get('epochs')}\n")
            self.stream.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._update(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self._shown:
            self._finish(logs)

    # ---------------------------------------------------- evaluate / predict
    def on_test_begin(self, logs=None):
        if not self._in_fit:
            self._start_bar()

    def on_test_batch_end(self, batch, logs=None):
        if not self._in_fit:
            self._update(batch, logs)

    def on_test_end(self, logs=None):
        if not self._in_fit and self._shown:
            self._finish(logs)

    def on_predict_begin(self, logs=None):
        self._start_bar()

    def on_predict_batch_end(self, batch, logs=None):
        # predict's batch logs hold the outputs, not numbers to show
        self._update(batch, None)

    def on_predict_end(self, logs=None):
        if self._shown:
            self._finish(None)


# ------------------------------------------------------------------ argument checks
def _check_int(value, name, who, low=0):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"{who}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_real(value, name, who, allow_none=False, low=-math.inf):
    if value is None and allow_none:
        return None
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(value) or value < low):
        bound = "" if low == -math.inf else f" >= {low}"
        raise ValueError(
            f"{who}: {name} must be a finite number{bound}"
            f"{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def _check_verbose(value, who):
    if value not in (0, 1, 2) or isinstance(value, bool):
        raise ValueError(f"{who}: verbose must be 0, 1 or 2, got {value!r}")
    return int(value)


def _format_fields(template):
    """The names the ``str.format`` fields of ``template`` look up (``'{val_loss:.2f}'`` ->
    ``val_loss``; ``'{}'`` -> ``''``), nested format specs included. ValueError on a
    malformed template."""
    names = []
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None:
            continue
        names.append(re.split(r"[.\[]", field, maxsplit=1)[0])
        if spec and "{" in spec:
            names.extend(_format_fields(spec))
    return names


def _check_monitor(monitor, who):
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"{who}: monitor must be a metric name like 'val_loss', got {monitor!r}")
    return monitor


def _resolve_mode(mode, monitor, who):
    """'min' or 'max'. 'auto' is Keras's rule: accuracies go up, everything else down."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _monitor_value(logs, monitor, who):
    """The monitored number, or None with Keras's warning when the logs lack it."""
    logs = logs or {}
    value = logs.get(monitor)
    if value is None:
        warnings.warn(
            f"{who} is conditioned on metric '{monitor}' which is not available. "
            f"Available metrics are: {', '.join(logs) or '(none)'}", stacklevel=3)
        return None
    return float(value)


def _print_msg(message):
    if not _primary():   # under MPI: said once, by rank 0
        return
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


# -------------------------------------------------------------------- EarlyStopping
class EarlyStopping(Callback):
    """Stops training when ``monitor`` has stopped improving (Keras's EarlyStopping).

    An epoch improves when it beats the best so far by more than ``min_delta``; after
    ``patience`` epochs without improvement training stops (never after the first epoch).
    Epochs before ``start_from_epoch`` are not considered. With a ``baseline``, the
    patience counter restarts only on epochs that also beat the baseline, so training
    stops when the baseline is not beaten within ``patience`` epochs.
    ``restore_best_weights=True`` puts back the weights of the best epoch when training
    ends (Keras 3 behaviour: also when it ran all its epochs). ``stopped_epoch`` and
    ``best_epoch`` are 0-based, as in Keras.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        who = "EarlyStopping"
        self.monitor = _check_monitor(monitor, who)
        self.min_delta = abs(_check_real(min_delta, "min_delta", who))
        self.patience = _check_int(patience, "patience", who)
        self.verbose = _check_verbose(verbose, who)
        self.mode = _resolve_mode(mode, self.monitor, who)
        self.baseline = _check_real(baseline, "baseline", who, allow_none=True)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = _check_int(start_from_epoch, "start_from_epoch", who)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        if reference is None:
            return True
        # Keras: the value must beat the reference by more than min_delta
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_train_begin(self, logs=None):
        self._reset()  # an instance may be reused for several fits

    def on_epoch_end(self, epoch, logs=None):
        value = _monitor_value(logs, self.monitor, "Early stopping")
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(value, self.best):
            self.best = value
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(value, self.baseline):
                self.wait = 0
                return
            # Better than before but still short of the baseline: the patience keeps
            # running (Keras's documented rule: stop when the baseline is not beaten).
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            _print_msg(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                _print_msg("Restoring model weights from the end of the best epoch: "
                           f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


# ------------------------------------------------------------------ ModelCheckpoint
class ModelCheckpoint(Callback):
    """Saves the model (``model.save``) or its weights (``model.save_weights``) during training.

    ``filepath`` may hold ``str.format`` fields filled from ``epoch`` (1-based, as Keras),
    ``batch`` (1-based, with an int ``save_freq``) and the logs, e.g.
    ``'ckpt-{epoch:02d}-{val_loss:.2f}.fcnn'``; a missing folder is created (Keras does).
    ``save_freq='epoch'`` saves at each epoch end, an int every that many batches.
    ``save_best_only`` saves only when ``monitor`` beats the best so far (starting from
    ``initial_value_threshold`` when given).
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__()
        who = "ModelCheckpoint"
        if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath):
            raise ValueError(f"{who}: filepath must be a non-empty path, got {filepath!r}")
        self.filepath = os.fspath(filepath)
        self.monitor = _check_monitor(monitor, who)
        self.verbose = _check_verbose(verbose, who)
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.mode = _resolve_mode(mode, self.monitor, who)
        if save_freq != "epoch" and (not isinstance(save_freq, numbers.Integral)
                                     or isinstance(save_freq, bool) or save_freq < 1):
            raise ValueError(
                f"{who}: save_freq must be 'epoch' or a positive int (batches), got {save_freq!r}")
        self.save_freq = save_freq
        self.initial_value_threshold = _check_real(
            initial_value_threshold, "initial_value_threshold", who, allow_none=True)
        self._reset()

    def _reset(self):
        if self.initial_value_threshold is not None:
            self.best = self.initial_value_threshold
        else:
            self.best = math.inf if self.mode == "min" else -math.inf
        self._current_epoch = 0
        self._batches_since_save = 0

    def wants_batch_hooks(self, mode) -> bool:
        # per-epoch saving needs no per-batch Python call
        return mode == "train" and self.save_freq != "epoch"

    def on_train_begin(self, logs=None):
        method = "save_weights" if self.save_weights_only else "save"
        if not callable(getattr(self.model, method, None)):
            raise NotImplementedError(
                f"ModelCheckpoint(save_weights_only={self.save_weights_only}) needs "
                f"model.{method}(path), which {type(self.model).__name__} does not have")
        self._current_epoch = 0
        self._batches_since_save = 0
        self._check_placeholders()

    def _check_placeholders(self):
        """Before the first epoch: every ``{name}`` of filepath is a value fit will log.

        Known: ``epoch``, ``batch`` (int save_freq), ``model.metrics_names``, their
        ``val_`` forms (unless fit said there is no validation data: ``do_validation``
        False in ``params``) and ``learning_rate`` (logged by ReduceLROnPlateau and
        LearningRateScheduler). A model without ``metrics_names`` is not checked.
        """
        names = getattr(self.model, "metrics_names", None)
        if names is None:
            return
        names = [str(n) for n in names]
        known = ["epoch"] + (["batch"] if self.save_freq != "epoch" else []) + names
        if self.params.get("do_validation", True) is not False:
            known += ["val_" + n for n in names]
        known.append("learning_rate")
        try:
            fields = _format_fields(self.filepath)
        except ValueError as e:
            raise ValueError(
                f"ModelCheckpoint: filepath {self.filepath!r} is not a valid format string: "
                f"{e}") from None
        for field in fields:
            if field not in known:
                raise ValueError(
                    f"ModelCheckpoint: filepath {self.filepath!r} has the placeholder "
                    f"{{{field}}}, which is not a value fit logs; known names: "
                    f"{', '.join(known)}")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _file_path(self, epoch, batch, logs):
        fields = dict(logs)
        fields["epoch"] = epoch + 1
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as e:
            raise KeyError(
                f"ModelCheckpoint cannot format filepath {self.filepath!r}: no value for "
                f"{e.args[0]!r}; available: {', '.join(fields)}") from None
        except (ValueError, IndexError) as e:
            raise ValueError(
                f"ModelCheckpoint cannot format filepath {self.filepath!r}: {e}") from None

    def _save(self, epoch, batch, logs):
        logs = logs or {}
        # mid-epoch (int save_freq) a live progress bar holds the line: start a new one
        lead = "\n" if batch is not None else ""
        if self.save_best_only:
            value = _monitor_value(logs, self.monitor, "ModelCheckpoint (save_best_only)")
            if value is None:
                return
            improved = value < self.best if self.mode == "min" else value > self.best
            if not improved:
                if self.verbose:
                    _print_msg(f"{lead}Epoch {epoch + 1}: {self.monitor} did not improve "
                               f"from {self.best:.5f}")
                return
            path = self._file_path(epoch, batch, logs)
            if self.verbose:
                _print_msg(f"{lead}Epoch {epoch + 1}: {self.monitor} improved from "
                           f"{self.best:.5f} to {value:.5f}, saving model to {path}")
            self.best = value
        else:
            path = self._file_path(epoch, batch, logs)
            if self.verbose:
                _print_msg(f"{lead}Epoch {epoch + 1}: saving model to {path}")
        if not _primary():   # under MPI: one file, written by rank 0
            return
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


# ---------------------------------------------------------------- ReduceLROnPlateau
class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` has stopped improving.

    Keras 3's schedule, exactly (tests compare it with Keras's over fixed sequences): an
    epoch improves when it beats the best value so far by more than ``min_delta``; after
    ``patience`` epochs without improvement the rate becomes ``max(lr * factor, min_lr)``
    and the cooldown counter is set to ``cooldown``. At each later epoch end the counter
    first goes down by one, and an epoch that is not an improvement counts towards
    patience once the counter is 0, so the LAST cooldown epoch already counts (with
    ``cooldown=1`` the schedule is the one of ``cooldown=0``; each further cooldown epoch
    delays the next reduction by one). An improvement becomes the best value and resets
    the patience counter, in cooldown or not.

    Keras keeps the rate in a float32 variable: the rate is read as float32 here too, a
    reduction happens while that float32 value is above ``float32(min_lr)`` (so a rate
    just above ``min_lr`` after rounding gets one last reduction onto ``min_lr``), and the
    new rate is ``float32_rate * factor``. Each epoch's logs get a ``learning_rate`` entry
    (the rate the epoch trained with, Keras 3), so History and CSVLogger placed after this
    callback record it.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, **kwargs):
        super().__init__()
        who = "ReduceLROnPlateau"
        if kwargs:
            # Keras 3 accepts and ignores Keras 2's leftovers (epsilon= was min_delta)
            if "epsilon" in kwargs:
                warnings.warn("ReduceLROnPlateau: `epsilon` is deprecated (Keras 2); use "
                              "`min_delta`", DeprecationWarning, stacklevel=2)
                min_delta = kwargs.pop("epsilon")
            if kwargs:
                raise TypeError(f"{who}: unexpected keyword argument(s) {sorted(kwargs)}")
        self.monitor = _check_monitor(monitor, who)
        factor = _check_real(factor, "factor", who, low=0.0)
        if factor >= 1.0:
            raise ValueError(f"{who}: factor must be < 1.0 (it multiplies the learning "
                             f"rate to reduce it), got {factor!r}")
        self.factor = factor
        self.patience = _check_int(patience, "patience", who)
        self.verbose = _check_verbose(verbose, who)
        self.mode = _resolve_mode(mode, self.monitor, who)
        self.min_delta = abs(_check_real(min_delta, "min_delta", who))
        self.cooldown = _check_int(cooldown, "cooldown", who)
        self.min_lr = _check_real(min_lr, "min_lr", who, low=0.0)
        self._reset()

    def _reset(self):
        self.best = None          # Keras: the first monitored value is an improvement
        self.cooldown_counter = 0
        self.wait = 0

    def _is_improvement(self, value):
        if self.best is None:
            return True
        # Keras's ops.less/greater on Python floats compare float32 tensors
        if self.mode == "min":
            return np.float32(value + self.min_delta) < np.float32(self.best)
        return np.float32(value - self.min_delta) > np.float32(self.best)

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        if getattr(getattr(self.model, "optimizer", None), "learning_rate", None) is None:
            raise ValueError("ReduceLROnPlateau needs a compiled model whose optimizer has a "
                             "learning_rate; call model.compile(optimizer=...) first")
        self._reset()

    def _reduce(self, epoch):
        """Keras's ``_reduce_optimizer_lr``: True when the rate was lowered."""
        optimizer = self.model.optimizer
        old_lr = float(np.float32(optimizer.learning_rate))   # Keras's float32 variable
        if not old_lr > np.float32(self.min_lr):
            return False
        new_lr = max(old_lr * self.factor, self.min_lr)
        optimizer.learning_rate = new_lr
        if self.verbose:
            _print_msg(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                       f"{new_lr}.")
        return True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
        value = _monitor_value(logs, self.monitor, "Learning rate reduction")
        if value is None:
            return
        # Keras 3.15's order: cooldown tick, then improvement, then patience (only once
        # the cooldown is over, this very epoch included).
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(value):
            self.best = value
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter = self.cooldown
                self.wait = 0


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of each epoch: ``schedule(epoch, lr) -> new lr``.

    Keras's callback: ``epoch`` is 0-based, ``lr`` the current rate (a schedule may also
    take ``epoch`` alone). Each epoch's logs get a ``learning_rate`` entry, as Keras 3 does.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"LearningRateScheduler: schedule must be callable "
                             f"(epoch, lr) -> lr, got {schedule!r}")
        self.schedule = schedule
        try:
            params = inspect.signature(schedule).parameters.values()
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]
            self._two_args = len(positional) >= 2 or any(
                p.kind == p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):  # builtins without a signature
            self._two_args = True
        self.verbose = _check_verbose(verbose, "LearningRateScheduler")

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if getattr(optimizer, "learning_rate", None) is None:
            raise ValueError("LearningRateScheduler needs a compiled model whose optimizer "
                             "has a learning_rate; call model.compile(optimizer=...) first")
        lr = float(optimizer.learning_rate)
        # Keras accepts one-argument schedules too; asking the signature (not catching a
        # TypeError) keeps a TypeError raised inside the schedule visible.
        new_lr = self.schedule(epoch, lr) if self._two_args else self.schedule(epoch)
        if (not isinstance(new_lr, numbers.Real) or isinstance(new_lr, bool)
                or not math.isfinite(new_lr) or new_lr < 0):
            raise ValueError(f"LearningRateScheduler: schedule({epoch}, {lr}) returned "
                             f"{new_lr!r}; expected a finite float >= 0")
        optimizer.learning_rate = float(new_lr)
        if self.verbose:
            _print_msg(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                       f"{float(new_lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


# ------------------------------------------------------------------------ CSVLogger
class CSVLogger(Callback):
    """Writes one CSV row per epoch: ``epoch`` (0-based, as Keras) then the logs' keys, sorted.

    The columns come from the first epoch's logs; a later epoch lacking one writes ``NA``.
    The file is flushed after every row and closed when training ends. ``append=True``
    adds to an existing file, without a second header when it already has one.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise ValueError(f"CSVLogger: filename must be a non-empty path, got {filename!r}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(
                f"CSVLogger: separator must be a single character, got {separator!r}")
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = bool(append)
        self.keys = None
        self.writer = None
        self.csv_file = None
        self.append_header = True

    def on_train_begin(self, logs=None):
        self.keys = None
        self.writer = None
        self.append_header = True
        self.csv_file = None
        if not _primary():   # under MPI: one file, written by rank 0
            return
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                self.append_header = not f.readline()
        self.csv_file = open(self.filename, "a" if self.append else "w", newline="")

    def on_epoch_end(self, epoch, logs=None):
        if self.csv_file is None:   # not rank 0 under MPI
            return
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if self.writer is None:
            self.writer = csv.writer(self.csv_file, delimiter=self.sep, lineterminator="\n")
            if self.append_header:
                self.writer.writerow(["epoch"] + self.keys)
        self.writer.writerow([epoch] + [_csv_value(logs.get(k, "NA")) for k in self.keys])
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
        self.csv_file = None
        self.writer = None


def _csv_value(value):
    if isinstance(value, str):
        return value
    if hasattr(value, "__iter__") and getattr(value, "ndim", 1) != 0:
        return f"[{', '.join(map(str, value))}]"
    return value  # csv writes str(value): the shortest repr that reads back exactly


# -------------------------------------------------------------------- LambdaCallback
_LAMBDA_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_begin", "on_train_end",
                 "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
                 "on_test_batch_begin", "on_test_batch_end", "on_predict_begin",
                 "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end")


class TimeLimit(Callback):
    """Stops training after the epoch during which ``minutes`` ran out (None: no limit).

    The wall time of an epoch is not known in advance (a shared machine, a first epoch
    that compiles kernels); this lets a run end on time and still report what it reached.
    """

    def __init__(self, minutes, label=None):
        super().__init__()
        if minutes is not None and (not isinstance(minutes, numbers.Real)
                                    or isinstance(minutes, bool) or minutes < 0):
            raise ValueError(f"TimeLimit: minutes must be a number >= 0 or None, got {minutes!r}")
        self.minutes = minutes
        # what the stop message calls the limit (a script names its own option)
        self.label = label or f"TimeLimit of {minutes} minutes"

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.minutes is not None and time.perf_counter() - self.start > 60 * self.minutes:
            # Under MPI the clocks differ: fit stops every process when any one stops.
            _print_msg(f"{self.label} reached after epoch {epoch + 1}: stopping")
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback made of plain functions, called with the hook's arguments:
    ``on_epoch_begin/on_epoch_end(epoch, logs)``, ``on_train_begin/on_train_end(logs)``,
    ``on_train_batch_begin/on_train_batch_end(batch, logs)``; the other hooks
    (``on_test_batch_end=...`` etc.) may be given by keyword too.
    """

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - set(_LAMBDA_HOOKS))
        if unknown:
            raise ValueError(f"LambdaCallback: unknown hook(s) {unknown}; known: "
                             f"{list(_LAMBDA_HOOKS)}")
        given = dict(kwargs, on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end)
        self._given = set()
        for hook, function in given.items():
            if function is None:
                continue
            if not callable(function):
                raise ValueError(f"LambdaCallback: {hook} must be callable, got {function!r}")
            setattr(self, hook, function)  # instance attribute shadows the no-op method
            self._given.add(hook)

    def wants_batch_hooks(self, mode) -> bool:
        # the functions live on the instance, so CallbackList cannot see them on the class
        return any(hook in self._given for hook in _BATCH_HOOKS[mode])


# -------------------------------------------------------------------- TerminateOnNaN
def _loss_number(value):
    """A batch log's loss as a float (a number, a 0-d array or a Tensor of a custom
    train_step), or None when it is not one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        from .autodiff import value_of
        return float(np.asarray(value_of(value)))
    except Exception:  # noqa: BLE001 - not a number: nothing to check
        return None


class TerminateOnNaN(Callback):
    """Stops training when a batch's loss is NaN or inf (Keras's TerminateOnNaN).

    By default the stop is clean, as Keras's: it prints ``Batch {batch}: Invalid loss,
    terminating training`` and sets ``model.stop_training``; the epoch ends at once, its
    ``on_epoch_end`` and every callback's ``on_train_end`` still run and ``fit`` returns its
    History (the last loss logged is the non-finite one). ``raise_error=True`` raises a
    RuntimeError at once instead (Keras's: ``on_train_end`` is not called, so a
    :class:`BackupAndRestore` keeps its backup).

    fastcnn's rule: without this callback ``fit`` raises ``NonFiniteLossError`` on a
    non-finite loss, before that batch's update. With it, ``fit`` (which asks
    ``CallbackList.handles_nonfinite_loss()``) skips the update of that batch, so the
    weights stay those of the last finite step (Keras applies the NaN update), gives the
    loss to this callback's batch hook and stops as above.
    """

    handles_nonfinite_loss = True

    def __init__(self, raise_error=False):
        super().__init__()
        if not isinstance(raise_error, (bool, np.bool_)):
            raise ValueError(f"TerminateOnNaN: raise_error must be True or False, got "
                             f"{raise_error!r}")
        self.raise_error = bool(raise_error)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_batch_end(self, batch, logs=None):
        """Keras's hook (its ``on_train_batch_end`` calls it)."""
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = _loss_number(loss)
        if loss is None or math.isfinite(loss):
            return
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: "
                               f"{loss}. Terminating training immediately.")
        _print_msg(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True


# ------------------------------------------------------------------ BackupAndRestore
class BackupAndRestore(Callback):
    """Backs training up so that a fit that was interrupted goes on where it stopped
    (Keras's BackupAndRestore: same arguments and defaults).

    At each epoch end (``save_freq='epoch'``) or every ``save_freq`` batches, ONE file,
    ``backup_dir/latest.backup.npz``, is written atomically (a temporary file, fsync,
    rename): every weight (``model.get_weights()``), the optimizer's state (its slots,
    ``iterations`` and a float learning rate, so a rate ReduceLROnPlateau lowered is kept)
    and the epoch to resume at. A kill at any moment leaves the previous backup or the
    new one, never a mix (Keras writes weights and epoch in two files).
    ``double_checkpoint=True`` also keeps the previous backup as ``latest.backup.npz.bkp``,
    used when the latest cannot be read.

    When ``fit`` starts (``on_train_begin``) with a backup in ``backup_dir``, the weights
    and optimizer state are restored and ``model._initial_epoch`` is set to the epoch after
    the backup (Keras's attribute, which its fit reads after ``on_train_begin``; a backup
    made mid-epoch restarts that epoch with the weights of the backup). Training that ends
    normally (all epochs, or a stop by a callback) removes the backup with
    ``delete_checkpoint=True`` (the default): the file, and ``backup_dir`` when nothing else
    is left in it (Keras removes the whole folder). An exception leaves it for the next run.

    With an int ``save_freq`` the batches are counted as Keras counts them (across epoch
    ends); the epoch recorded is the one running (Keras's stays at the last finished epoch
    + 1 until an epoch of the resumed fit ends, which a mid-epoch backup of the first
    resumed epoch would get wrong).

    The model must have the same architecture as the one that wrote the backup (a
    mismatch is a ValueError naming the file). Data order is not restored: with
    ``shuffle=True`` the resumed epochs see other orders than an uninterrupted run would.
    Under fastcnn.distributed rank 0 writes and every process reads: ``backup_dir`` must be
    on a file system all processes see.
    """

    FILE_NAME = "latest.backup.npz"

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False,
                 delete_checkpoint=True):
        super().__init__()
        who = "BackupAndRestore"
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise ValueError(f"{who}: backup_dir must be a non-empty path (a folder), got "
                             f"{backup_dir!r}")
        if save_freq != "epoch" and (not isinstance(save_freq, numbers.Integral)
                                     or isinstance(save_freq, bool) or save_freq < 1):
            raise ValueError(f"{who}: save_freq must be 'epoch' or a positive int (batches), "
                             f"got {save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.double_checkpoint = bool(double_checkpoint)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._path = os.path.join(self.backup_dir, self.FILE_NAME)
        self._prev_path = self._path + ".bkp"
        self._current_epoch = 0
        self._last_batch_seen = 0
        self._batches_seen_since_last_saving = 0

    def wants_batch_hooks(self, mode) -> bool:
        return mode == "train" and self.save_freq != "epoch"

    # ------------------------------------------------------------------ restore
    def on_train_begin(self, logs=None):
        self._last_batch_seen = 0
        self._batches_seen_since_last_saving = 0
        if not getattr(self.model, "built", True):
            raise ValueError("To use the BackupAndRestore callback, the model must be built "
                             "before fit() starts (give the first layer an input_shape, or "
                             "call model.build(...))")
        paths = [p for p in (self._path, self._prev_path) if os.path.exists(p)]
        if not self.double_checkpoint:
            paths = paths[:1] if paths and paths[0] == self._path else []
        if not paths:
            self.model._initial_epoch = None   # no stale value from an earlier fit
            self._current_epoch = 0
            return
        errors = []
        for path in paths:
            try:
                backup = self._read(path)
            except (OSError, ValueError, KeyError, EOFError) as e:
                errors.append(f"{path}: {e}")
                continue
            self._restore(backup, path)
            return
        raise ValueError("BackupAndRestore cannot read its backup (" + "; ".join(errors)
                         + "); remove it to start training from the beginning")

    def _read(self, path):
        import json
        import zipfile
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except zipfile.BadZipFile as e:
            raise ValueError(f"not a backup file ({e})") from None
        if meta.get("format") != "fastcnn-backup" or meta.get("version") != 1:
            raise ValueError(f"not a fastcnn backup (format {meta.get('format')!r}, "
                             f"version {meta.get('version')!r})")
        return meta, arrays

    def _restore(self, backup, path):
        meta, arrays = backup
        model = self.model
        current = model.get_weights()
        weights = [arrays[f"weights/{k}"] for k in range(meta["n_weights"])]
        if len(weights) != len(current) or any(
                np.shape(a) != np.shape(b) for a, b in zip(weights, current)):
            raise ValueError(
                f"BackupAndRestore: the backup {path} was written by a model with weight "
                f"shapes {[tuple(np.shape(a)) for a in weights]}; this model has "
                f"{[tuple(np.shape(b)) for b in current]}. Use another backup_dir, or remove "
                f"this one to start from the beginning")
        model.set_weights(weights)
        opt_meta = meta.get("optimizer")
        optimizer = getattr(model, "optimizer", None)
        if opt_meta is not None and optimizer is not None and hasattr(optimizer, "set_state"):
            all_weights = model.weights
            variables = [all_weights[i] for i in opt_meta["variables"]]
            if optimizer._variables is None:
                optimizer.build(variables)
            slots = {name: [arrays[f"optimizer/{name}/{k}"] for k in range(len(variables))]
                     for name in opt_meta["slots"]}
            try:
                optimizer.set_state({"iterations": opt_meta["iterations"], "slots": slots})
            except ValueError as e:
                raise ValueError(f"BackupAndRestore: the optimizer state in {path} does not "
                                 f"fit this model's optimizer ({type(optimizer).__name__}): "
                                 f"{e}") from None
            if opt_meta.get("learning_rate") is not None:
                optimizer.learning_rate = opt_meta["learning_rate"]
        self._current_epoch = int(meta["epoch"])
        model._initial_epoch = int(meta["epoch"])   # Keras: fit starts at this epoch

    # --------------------------------------------------------------------- save
    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        if self.save_freq == "epoch":
            self._save()

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save(batch)

    def _should_save_on_batch(self, batch):
        """Keras's count of the batches since the last save."""
        if self.save_freq == "epoch":
            return False
        if batch <= self._last_batch_seen:  # a new epoch
            add_batches = batch + 1
        else:
            add_batches = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add_batches
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _optimizer_state(self, arrays):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or not hasattr(optimizer, "get_state") \
                or getattr(optimizer, "_variables", None) is None:
            return None   # no step taken yet: nothing to keep
        index = {id(w): k for k, w in enumerate(self.model.weights)}
        try:
            variables = [index[id(v)] for v in optimizer._variables]
        except KeyError:
            raise ValueError("BackupAndRestore: the optimizer holds state for weights that "
                             "are not this model's; compile the model with its own "
                             "optimizer") from None
        state = optimizer.get_state()
        for name, slot_arrays in state["slots"].items():
            for k, a in enumerate(slot_arrays):
                arrays[f"optimizer/{name}/{k}"] = np.asarray(a)
        lr = getattr(optimizer, "_learning_rate", None)
        return {"variables": variables, "iterations": int(state["iterations"]),
                "slots": sorted(state["slots"]),
                "learning_rate": float(lr) if isinstance(lr, numbers.Real) else None}

    def _save(self, batch=None):
        import json
        arrays = {}
        weights = self.model.get_weights()
        for k, w in enumerate(weights):
            arrays[f"weights/{k}"] = np.asarray(w)
        meta = {"format": "fastcnn-backup", "version": 1, "epoch": self._current_epoch,
                "batch": self._last_batch_seen if batch is not None else 0,
                "n_weights": len(weights), "optimizer": self._optimizer_state(arrays)}
        if not _primary():   # under MPI: rank 0 writes the one file
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = os.path.join(self.backup_dir, f".{self.FILE_NAME}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
                f.flush()
                os.fsync(f.fileno())
            if self.double_checkpoint and os.path.exists(self._path):
                prev_tmp = self._prev_path + f".{os.getpid()}.tmp"
                shutil.copyfile(self._path, prev_tmp)
                os.replace(prev_tmp, self._prev_path)
            os.replace(tmp, self._path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _fsync_folder(self.backup_dir)

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint or not _primary():
            return
        for path in (self._path, self._prev_path):
            if os.path.exists(path):
                os.remove(path)
        try:
            os.rmdir(self.backup_dir)   # only when nothing else is left in it
        except OSError:
            pass


def _fsync_folder(folder):
    """Makes a rename in ``folder`` durable: saving's rule, in one place."""
    from .saving import _fsync_folder as fsync_folder   # saving imports the model: lazily
    fsync_folder(folder)


# ------------------------------------------------------------------------ TensorBoard
class TensorBoard(Callback):
    """Writes TensorBoard event files (Keras's TensorBoard callback: names, arguments,
    defaults and layout), with fastcnn's own small writer (:mod:`fastcnn._tensorboard`):
    no TensorFlow needed. View them with ``tensorboard --logdir logs``
    (``pip install fastcnn[tensorboard]``).

    In ``log_dir/train``: ``epoch_<name>`` for each training log and ``epoch_learning_rate``
    at step ``epoch`` (0-based); with ``update_freq`` an int (or ``'batch'``, i.e. 1), also
    ``batch_<name>`` (the running means of the epoch, as the progress bar shows them) every
    ``update_freq`` batches, at the step of the batch counted from the start of fit (1, 2,
    ...); with ``histogram_freq`` > 0, a histogram ``<layer>/<weight>/histogram`` of every
    weight (``sequential/<layer>/<weight>/histogram`` in a Sequential model, as Keras names
    them) at the epochs divisible by it; with ``write_graph``, the model's architecture
    (its config, shown by the Graphs dashboard as Keras's "keras" summary); with
    ``write_steps_per_second``, ``epoch_steps_per_second`` and ``batch_steps_per_second``.
    In ``log_dir/validation``: ``epoch_<name>`` of the ``val_`` logs and
    ``evaluation_<name>_vs_iterations`` at the optimizer's step count (also written by
    ``model.evaluate(callbacks=[tb])``).

    ``write_images``, ``embeddings_freq`` and ``profile_batch`` are Keras's arguments for
    features fastcnn does not have: anything but their defaults is a ValueError (Keras
    refuses ``profile_batch`` on its numpy and torch backends the same way). Under
    fastcnn.distributed only rank 0 writes.
    """

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0,
                 embeddings_freq=0, embeddings_metadata=None):
        super().__init__()
        who = "TensorBoard"
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(f"{who}: log_dir must be a non-empty path, got {log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = _check_int(histogram_freq, "histogram_freq", who)
        self.write_graph = bool(write_graph)
        self.write_steps_per_second = bool(write_steps_per_second)
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (not isinstance(update_freq, numbers.Integral)
                                       or isinstance(update_freq, bool) or update_freq < 1):
            raise ValueError(f"{who}: update_freq must be 'epoch', 'batch' or a positive int "
                             f"(batches), got {update_freq!r}")
        self.update_freq = update_freq if update_freq == "epoch" else int(update_freq)
        for name, value, default in (("write_images", write_images, False),
                                     ("profile_batch", profile_batch, 0),
                                     ("embeddings_freq", embeddings_freq, 0),
                                     ("embeddings_metadata", embeddings_metadata, None)):
            if value != default and not (value is None and default == 0):
                raise ValueError(f"{who}: {name}={value!r} is not supported by fastcnn "
                                 f"(weight images, profiling and embeddings are TensorFlow "
                                 f"features); leave it at its default {default!r}")
        self.write_images = False
        self.profile_batch = 0
        self.embeddings_freq = 0
        self.embeddings_metadata = None
        self._writers = {}
        self._in_fit = False
        self._graph_written = False
        self._global_train_batch = 0
        self._batch_start = 0.0
        self._epoch_start = 0.0
        self._epoch_iterations = 0

    # ---------------------------------------------------------------- writers
    @property
    def _train_dir(self):
        return os.path.join(self.log_dir, "train")

    @property
    def _val_dir(self):
        return os.path.join(self.log_dir, "validation")

    def _writer(self, run):
        """The event file writer of ``run`` ('train' or 'validation'), opened lazily (so a
        run with nothing to write has no file, as Keras's); None off rank 0."""
        if not _primary():
            return None
        writer = self._writers.get(run)
        if writer is None:
            from ._tensorboard import EventFileWriter
            writer = EventFileWriter(self._train_dir if run == "train" else self._val_dir)
            self._writers[run] = writer
        return writer

    def _scalars(self, run, values, step):
        writer = self._writer(run)
        if writer is None:
            return
        from ._tensorboard import scalar_value
        entries = []
        for tag, value in values.items():
            number = _loss_number(value)
            if number is not None:   # lists or text a user callback logged: not scalars
                entries.append(scalar_value(tag, number))
        if entries:
            writer.add_summary(entries, step)

    def _flush(self):
        for writer in self._writers.values():
            writer.flush()

    def _close_writers(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def wants_batch_hooks(self, mode) -> bool:
        return mode == "train" and self.update_freq != "epoch"

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self, logs=None):
        self._in_fit = True
        self._global_train_batch = 0
        if self.write_graph and not self._graph_written:
            self._write_model_config()

    def on_train_end(self, logs=None):
        self._in_fit = False
        self._close_writers()

    def _write_model_config(self):
        """Keras's ``keras`` summary: the architecture as JSON (the Graphs dashboard draws
        it); a model whose config cannot be written is skipped with a warning, as Keras."""
        import json
        self._graph_written = True
        try:
            from . import saving
            config = json.dumps(_keras_graph_config(saving.model_to_config(self.model)))
        except Exception as e:  # noqa: BLE001 - subclassed models, custom layers
            warnings.warn(f"TensorBoard: the model's config cannot be written ({e}); "
                          f"no graph is logged", stacklevel=3)
            return
        writer = self._writer("train")
        if writer is not None:
            from ._tensorboard import string_tensor_value
            writer.add_summary([string_tensor_value("keras", config, "graph_keras_model",
                                                    b"1")], 0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_iterations = self._iterations()

    def _iterations(self):
        return int(getattr(getattr(self.model, "optimizer", None), "iterations", 0) or 0)

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # Keras records batch summaries only with an int update_freq, at its multiples
        if self.update_freq == "epoch" or self._global_train_batch % self.update_freq:
            return
        values = {}
        if self.write_steps_per_second:
            elapsed = time.perf_counter() - self._batch_start
            if elapsed > 0:
                values["batch_steps_per_second"] = 1.0 / elapsed
        values.update({f"batch_{k}": v for k, v in (logs or {}).items()})
        self._scalars("train", values, self._global_train_batch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        optimizer = getattr(self.model, "optimizer", None)
        if getattr(optimizer, "learning_rate", None) is not None:
            train["learning_rate"] = float(optimizer.learning_rate)
        if self.write_steps_per_second:
            elapsed = time.perf_counter() - self._epoch_start
            if elapsed > 0:
                train["steps_per_second"] = (self._iterations() - self._epoch_iterations) \
                    / elapsed
        if train:
            self._scalars("train", {f"epoch_{k}": v for k, v in train.items()}, epoch)
        if val:
            self._scalars("validation", {f"epoch_{k}": v for k, v in val.items()}, epoch)
            if optimizer is not None:
                self._scalars("validation", {f"evaluation_{k}_vs_iterations": v
                                             for k, v in val.items()}, self._iterations())
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)
        self._flush()

    def _log_weights(self, epoch):
        writer = self._writer("train")
        if writer is None:
            return
        from ._tensorboard import histogram_value
        entries = []
        # Keras builds a Sequential's layers inside the model's name scope, so its tags
        # read 'sequential/dense/kernel/histogram'; other models' 'dense/kernel/histogram'
        prefix = (f"{self.model.name}/" if type(self.model).__name__ == "Sequential"
                  and getattr(self.model, "name", None) else "")
        for layer in self.model.layers:
            variables = list(getattr(layer, "variables", None) or [])
            arrays = layer.get_weights() if hasattr(layer, "get_weights") else \
                [np.asarray(w) for w in layer.weights]
            for k, w in enumerate(arrays):
                path = getattr(variables[k], "path", None) if k < len(variables) else None
                name = prefix + (path or f"{layer.name}/weight_{k}").replace(":", "_")
                entries.append(histogram_value(f"{name}/histogram", w))
        if entries:
            writer.add_summary(entries, epoch)

    def on_test_end(self, logs=None):
        # model.evaluate(callbacks=[tb]) outside fit; inside fit the val_ logs are written
        # at the epoch's end
        if self._in_fit or not logs:
            return
        self._scalars("validation", {f"evaluation_{k}_vs_iterations": v
                                     for k, v in logs.items()}, self._iterations())
        self._flush()


def _keras_graph_config(config):
    """fastcnn's model config in the form TensorBoard's Graphs dashboard reads (Keras 3's
    ``to_json``): a Functional model's ``nodes`` list becomes each layer's
    ``inbound_nodes`` (``{"args": [[{"config": {"keras_history": [layer, node, tensor]}}]]}``
    per call); a Sequential config is already in that form."""
    body = config.get("config") or {}
    nodes = body.get("nodes")
    if not isinstance(nodes, list):
        return config
    inbound = {}
    for node in nodes:
        history = [{"config": {"keras_history": list(ref[:3])}}
                   for ref in node.get("inputs", [])]
        inbound.setdefault(node.get("layer"), []).append({"args": [history], "kwargs": {}})
    layers = []
    for entry in body.get("layers", []):
        name = entry.get("name") or (entry.get("config") or {}).get("name")
        layers.append(dict(entry, inbound_nodes=inbound.get(name, [])))
    return dict(config, config=dict(body, layers=layers))
