"""Callbacks with Keras's hooks: ``Callback``, ``History``, ``ProgbarLogger``, ``CallbackList``.

``fit`` calls, in order: ``on_train_begin``, then per epoch ``on_epoch_begin(epoch)``, per
batch ``on_train_batch_begin(batch)`` / ``on_train_batch_end(batch, logs)`` (logs hold the
running means of the epoch so far), ``on_epoch_end(epoch, logs)`` (the epoch's loss and
metrics, with ``val_`` entries when validating), and ``on_train_end``. A callback may set
``self.model.stop_training = True``; fit stops after the current epoch.
``evaluate`` calls the ``on_test_*`` hooks and ``predict`` the ``on_predict_*`` hooks.

Batch hooks cost a Python call per batch, so :class:`CallbackList` calls them only when
some callback overrides them.
"""
from __future__ import annotations

import sys
import time


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
        if add_progbar and verbose:
            callbacks.insert(0, ProgbarLogger(verbose=verbose))
        if add_history:
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
        value = float(value)
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


def progress_bar(seen, steps, width=30) -> str:
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
    """Keras-style epoch output (added by ``fit`` when ``verbose`` is 1 or 2).

    verbose=2: ``Epoch 1/3`` then ``1688/1688 - 3s - loss: ... - val_accuracy: ...``.
    verbose=1: an in-place bar (``\\r`` updates, at most every 0.1 s) ending in the same
    fields; without a terminal only the final line of each epoch is written.
    """

    INTERVAL = 0.1  # seconds between bar refreshes

    def __init__(self, verbose=1, stream=None):
        super().__init__()
        self.verbose = verbose
        self._stream = stream

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def _dynamic(self):
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def wants_batch_hooks(self, mode) -> bool:
        # Only the live bar needs per-batch calls; verbose=2 and logs to files do not.
        return mode == "train" and self.verbose == 1 and self._dynamic()

    def on_train_begin(self, logs=None):
        self._is_dynamic = self.wants_batch_hooks("train")

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = self.params.get("steps")
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._last_len = 0
        self._seen = 0
        self.stream.write(f"Epoch {epoch + 1}/{self.params.get('epochs')}\n")
        self.stream.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._seen = batch + 1
        if not self._is_dynamic:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.INTERVAL:
            return
        self._last_draw = now
        elapsed = now - self._start
        remaining = max((self._steps or self._seen) - self._seen, 0)
        line = (progress_bar(self._seen, self._steps) + " - ETA: "
                + _format_duration(elapsed / self._seen * remaining) + format_logs(logs or {}))
        self._write_over(line)

    def _write_over(self, line):
        # pad with blanks so that a shorter line fully covers the previous one
        self.stream.write("\r" + line.ljust(self._last_len))
        self._last_len = len(line)
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._start
        line = final_line(self._steps or self._seen, elapsed, logs, self.verbose)
        if self._is_dynamic:
            self._write_over(line)
            self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
