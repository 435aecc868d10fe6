"""The backend registry: one kernel contract, several implementations.

A *backend* is a module that implements (some of) the operations listed in :data:`OPS`.
Layers never import a backend directly: they ask :func:`current` at call time, so one
model runs on any backend, and ``with fastcnn.use_backend("reference"): ...`` switches
every layer at once.

The active backend is per thread (per :mod:`contextvars` context): ``use_backend`` changes
it for the code inside its block only, in the thread (or asyncio task) that opened it, so
two threads can run one model on two backends at once. :func:`set_backend` sets the
process-wide default, what every thread uses where no ``use_backend`` block is open.

The kernel contract
-------------------
Layout is NHWC for activations, HWIO ``(kh, kw, C_in, C_out)`` for conv kernels and
``(in, out)`` for dense kernels. Arrays handed to a kernel are C-contiguous and share one
float dtype (float32 or float64); kernels return arrays of that dtype. ``stride`` and
``pool`` are ``(rows, cols)`` int pairs; ``pad`` is ``((top, bottom), (left, right))`` as
computed by :mod:`fastcnn.shapes` (kernels never see the word 'same'). ``ctx`` is whatever
a backend keeps between a forward and its backward; it is opaque to callers and is only
ever handed back to the SAME backend's matching backward. A kernel never modifies its
inputs (``dy`` included) and never returns an array that aliases one of them.

=============================================  ====================================
``conv2d_forward(x, w, b, stride, pad)``        ``-> (y, ctx)``; ``b`` may be None
``conv2d_backward(dy, ctx, need_dx=True)``      ``-> (dx, dw, db)``; db None if b was;
                                                dx None when need_dx is False (a
                                                first layer: skip that work)
``depthwise_conv2d_forward(x, w, b, stride,     ``-> (y, ctx)``; w ``(kh, kw, C,
pad)``                                          M)`` (Keras's depthwise kernel, M the
                                                depth multiplier), y has ``C*M``
                                                channels, output channel ``c*M + m``
                                                is input channel c convolved with
                                                ``w[:, :, c, m]``; b ``(C*M,)`` or None
``depthwise_conv2d_backward(dy, ctx,            ``-> (dx, dw, db)`` as conv2d_backward
need_dx=True)``
``maxpool2d_forward(x, pool, stride, pad)``     ``-> (y, ctx)``; pads with -inf; the
                                                FIRST max in row-major window order
                                                takes the gradient
``maxpool2d_backward(dy, ctx)``                 ``-> dx``
``avgpool2d_forward(x, pool, stride, pad)``     ``-> (y, ctx)``; divides by the number
                                                of real (unpadded) elements
``avgpool2d_backward(dy, ctx)``                 ``-> dx``
``dense_forward(x, w, b)``                      ``-> (y, ctx)``; x (N, D), w (D, U)
``dense_backward(dy, ctx)``                     ``-> (dx, dw, db)``
``relu_forward(x)`` / ``relu_backward(dy, ctx)``     derivative 0 at x == 0
``sigmoid_forward`` / ``sigmoid_backward``
``tanh_forward`` / ``tanh_backward``
``softmax_forward(x)`` / ``softmax_backward``   softmax over the last axis
``relu_general_forward(x, negative_slope=0.0,   Keras's ``relu`` with its arguments:
max_value=None, threshold=0.0)``                 ``x`` above ``threshold`` (else 0),
                                                clipped to ``[0, max_value]``, minus
                                                ``negative_slope * max(threshold - x,
                                                0)``; derivative ``negative_slope`` at
                                                and below the threshold
``relu6_forward(x)``                            ``min(max(x, 0), 6)``
``leaky_relu_forward(x, negative_slope=0.2)``   ``x`` if ``x > 0`` else ``slope * x``
``elu_forward(x, alpha=1.0)``                   ``alpha * (exp(x) - 1)`` for ``x <= 0``
``selu_forward``, ``gelu_forward`` (erf form),  the Keras 3 / TensorFlow formulas
``gelu_approximate_forward`` (tanh form),       (fastcnn/backends/_activations.py lists
``silu_forward``, ``softplus_forward``,         them with their derivatives); each
``softsign_forward``, ``hard_sigmoid_forward``  ``<name>_forward(x) -> (y, ctx)`` has its
(``relu6(x + 3) / 6``), ``hard_silu_forward``,  ``<name>_backward(dy, ctx) -> dx``
``exponential_forward``
``log_softmax_forward(x)``                      ``x - logsumexp(x)`` over the last axis
``prelu_forward(x, alpha)``                     ``x`` if ``x > 0`` else ``alpha * x``;
                                                alpha is x's shape without the batch,
                                                1 along shared axes
``prelu_backward(dy, ctx)``                     ``-> (dx, dalpha)``; dalpha summed over
                                                the batch and the shared axes
``softmax_cross_entropy(logits, targets)``      ``-> (loss, dlogits)``; targets (N, K)
                                                rows of probabilities; loss is the
                                                batch mean; dlogits = (softmax*sum(t)
                                                - t) / N
``sparse_softmax_cross_entropy(logits, labels)`` same with int labels (N,)
``sigmoid_cross_entropy(logits, targets)``      ``-> (loss, dlogits)``; mean over all
                                                elements, stable for any logit
=============================================  ====================================

Losses return ``loss`` as a 0-d array (or Python float) of the input dtype.

Fused ops (:data:`FUSED_OPS`) are optional: they compute what a sequence of the ops above
computes, in fewer passes, and return ``None`` for any shape they do not fuse; a caller
then runs the ops one by one on the same backend (that is the definition, not a fallback
to another backend). ``backend.implements(op)`` tells whether a backend has one at all.

=============================================  ====================================
``conv2d_maxpool2d_forward(x, w, b, stride,     ``-> (y, conv_ctx, pool_ctx)`` or None:
pad, pool, pool_stride, pool_pad)``             ``y`` is maxpool2d_forward's output on
                                                conv2d_forward's output, bitwise; the
                                                contexts go to this backend's
                                                conv2d_backward / maxpool2d_backward
=============================================  ====================================

A backend that lacks an op raises :class:`NotImplementedError` naming the op and the
backend when the op is called: nothing ever falls back silently to another backend.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import threading

OPS = (
    "conv2d_forward",
    "conv2d_backward",
    "depthwise_conv2d_forward",
    "depthwise_conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "dense_forward",
    "dense_backward",
    "relu_forward",
    "relu_backward",
    "sigmoid_forward",
    "sigmoid_backward",
    "tanh_forward",
    "tanh_backward",
    "softmax_forward",
    "softmax_backward",
    # The other activations of fastcnn.activations (one pair per canonical name, plus
    # relu_general for Keras's relu(x, negative_slope, max_value, threshold)).
    "relu_general_forward",
    "relu_general_backward",
    "relu6_forward",
    "relu6_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
    "elu_forward",
    "elu_backward",
    "selu_forward",
    "selu_backward",
    "gelu_forward",
    "gelu_backward",
    "gelu_approximate_forward",
    "gelu_approximate_backward",
    "silu_forward",
    "silu_backward",
    "softplus_forward",
    "softplus_backward",
    "softsign_forward",
    "softsign_backward",
    "hard_sigmoid_forward",
    "hard_sigmoid_backward",
    "hard_silu_forward",
    "hard_silu_backward",
    "exponential_forward",
    "exponential_backward",
    "log_softmax_forward",
    "log_softmax_backward",
    "prelu_forward",
    "prelu_backward",
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
    "sigmoid_cross_entropy",
)


FUSED_OPS = (
    "conv2d_maxpool2d_forward",
)


def _not_fused(*args, **kwargs):
    """A fused op this backend does not have: "not fused here", the caller composes."""
    return None


def _missing(backend_name: str, op: str):
    def missing(*args, **kwargs):
        raise NotImplementedError(
            f"backend {backend_name!r} does not implement {op!r}; "
            f"choose another backend with fastcnn.set_backend(...) "
            f"(backends implementing it: {[n for n in available() if get(n).implements(op)]})"
        )

    missing.__name__ = op
    return missing


class Backend:
    """One loaded backend: its ops are plain attributes (no per-call dispatch cost)."""

    def __init__(self, name: str, module, description: str = ""):
        self.name = name
        self.module = module
        self.description = description or (module.__doc__ or "").strip().splitlines()[0]
        self._implemented = frozenset(op for op in OPS + FUSED_OPS
                                      if callable(getattr(module, op, None)))
        for op in OPS:
            setattr(self, op, getattr(module, op) if op in self._implemented else _missing(name, op))
        for op in FUSED_OPS:
            setattr(self, op, getattr(module, op) if op in self._implemented else _not_fused)

    def implements(self, op: str) -> bool:
        return op in self._implemented

    def capabilities(self) -> dict:
        return {op: op in self._implemented for op in OPS}

    def __repr__(self):
        return f"<fastcnn backend {self.name!r}>"


# name -> (module path, description); loaded lazily so that optional backends
# (numba, cython, cuda) cost nothing until asked for and may be absent.
_REGISTRY: dict[str, tuple[str, str]] = {}
_LOADED: dict[str, Backend] = {}
_FAILED: dict[str, str] = {}
_LOCK = threading.Lock()
_DEFAULT = "auto"  # per op, the fastest available backend (backends/auto.py)
_process_default = _DEFAULT   # set_backend: every thread outside a use_backend block
# use_backend: this thread's / context's own choice for the block (None: the default).
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fastcnn_backend", default=None)


def _active() -> str:
    name = _scoped.get()
    return _process_default if name is None else name


def register(name: str, module_path: str, description: str = "") -> None:
    """Registers a backend module (imported on first use). Tests pick it up automatically."""
    _REGISTRY[name] = (module_path, description)
    _LOADED.pop(name, None)
    _FAILED.pop(name, None)


def _load(name: str) -> Backend | None:
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        if name in _FAILED:
            return None
        module_path, description = _REGISTRY[name]
        try:
            module = importlib.import_module(module_path)
            check = getattr(module, "is_available", None)
            if check is not None:
                ok, why = check()
                if not ok:
                    raise ImportError(why)
        except ImportError as exc:
            _FAILED[name] = str(exc) or type(exc).__name__
            return None
        backend = Backend(name, module, description)
        _LOADED[name] = backend
        return backend


def available() -> list[str]:
    """Names of the backends that load on this machine, in registration order."""
    return [name for name in _REGISTRY if _load(name) is not None]


def unavailable() -> dict[str, str]:
    """``{name: reason}`` for registered backends that cannot load here."""
    available()
    return {name: _FAILED[name] for name in _REGISTRY if name in _FAILED}


def get(name: str | None = None) -> Backend:
    """The backend called ``name`` (the active one when None)."""
    if name is None:
        name = _active()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown backend {name!r}; available backends: {available()}"
        )
    backend = _load(name)
    if backend is None:
        raise ValueError(
            f"backend {name!r} is not available on this machine: {_FAILED[name]}; "
            f"available backends: {available()}"
        )
    return backend


def current() -> Backend:
    """The active backend (what layers call): this thread's ``use_backend`` block's, else
    the process-wide default."""
    name = _scoped.get()
    backend = _LOADED.get(_process_default if name is None else name)
    # Every layer call asks: a loaded backend is one dict lookup (no lock, no checks).
    return backend if backend is not None else get(_active())


def set_backend(name: str) -> None:
    """Makes ``name`` the active backend for every layer of every model (the process-wide
    default; a ``with fastcnn.use_backend(other):`` block overrides it in its own thread).

    Args:
        name: one of :func:`available` (``'auto'`` picks the fastest kernel per op and
            shape; ``'reference'`` is the readable NumPy oracle; ``'im2col'``, ``'numba'``,
            ``'cython'``, ``'cuda'``). An unknown name or one whose backend cannot load
            here raises ValueError with the reason (e.g. no GPU for ``'cuda'``).
    """
    global _process_default
    get(name)  # validates, loads, raises a clear ValueError
    _process_default = name
    if _scoped.get() is not None:   # inside a use_backend block: takes effect here at once
        _scoped.set(name)


def get_backend() -> str:
    """The name of the active backend (in this thread / context)."""
    return _active()


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("reference"): ...`` runs the block on that backend.

    Only the code of this thread (this :mod:`contextvars` context) inside the block: other
    threads keep theirs. On exit (an exception included) the backend active before the
    block is restored.
    """
    backend = get(name)  # validates, loads, raises a clear ValueError
    token = _scoped.set(name)
    try:
        yield backend
    finally:
        _scoped.reset(token)


def capability_table() -> dict[str, dict[str, bool]]:
    """``{backend: {op: implemented}}`` for every available backend (``fastcnn info``)."""
    return {name: get(name).capabilities() for name in available()}


register("reference", "fastcnn.backends.reference", "readable NumPy loops: the oracle")
register("im2col", "fastcnn.backends.im2col", "vectorised NumPy: strided views + one GEMM per op")
register("numba", "fastcnn.backends.numba_cpu", "Numba @njit kernels (parallel, cached)")
register("cython", "fastcnn.backends.cython_cpu", "Cython kernels compiled from csrc/ (OpenMP)")
register("cuda", "fastcnn.backends.cuda", "numba-cuda kernels on an NVIDIA GPU (or the CUDA simulator)")
register("auto", "fastcnn.backends.auto", "per op, the fastest available backend for that kind of shape")
