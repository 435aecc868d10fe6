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

{contract}

Losses return ``loss`` as a 0-d array (or Python float) of the input dtype.

Fused ops (:data:`FUSED_OPS`) are optional: they compute what a sequence of the ops above
computes, in fewer passes, and return ``None`` for any shape they do not fuse; a caller
then runs the ops one by one on the same backend (that is the definition, not a fallback
to another backend). ``backend.implements(op)`` tells whether a backend has one at all.

{fused}

A backend that lacks an op raises :class:`NotImplementedError` naming the op and the
backend when the op is called: nothing ever falls back silently to another backend.

The ops are declared once, as specs in :mod:`fastcnn.backends._specs` (signature, argument
check, ``auto``'s routing family); the tables above, :data:`OPS`, :data:`FUSED_OPS`, the
capability table and ``auto``'s routing are derived from them.

Reusing another backend's kernels
---------------------------------
A backend module may declare that an op of the contract is another backend's, e.g.
``REUSES = {"dense": "reference"}`` (keys: spec names, so a forward and its backward
always come from one backend): the registry binds that backend's functions themselves
(the same objects). Such an op counts as implemented and ``fastcnn info`` shows it as
``= reference``; a module that both defines and reuses an op, or names an unknown op or
backend, does not load (:func:`unavailable` says why). Where the other backend cannot
load here, the op is missing, and calling it says so.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import threading

from . import _specs

__doc__ = (__doc__.replace("{contract}", _specs.contract_table())
           .replace("{fused}", _specs.contract_table(fused=True)))

#: Every op of the kernel contract, in contract order (derived from the specs).
OPS: tuple[str, ...] = _specs.ops()
#: The optional fused ops (derived from the specs).
FUSED_OPS: tuple[str, ...] = _specs.ops(fused=True)


def _not_fused(*args, **kwargs):
    """A fused op this backend does not have: "not fused here", the caller composes."""
    return None


def _missing(backend_name: str, op: str, why: str = ""):
    def missing(*args, **kwargs):
        raise NotImplementedError(
            f"backend {backend_name!r} does not implement {op!r}{why}; "
            f"choose another backend with fastcnn.set_backend(...) "
            f"(backends implementing it: {[n for n in available() if get(n).implements(op)]})"
        )

    missing.__name__ = op
    return missing


class ReuseError(ValueError):
    """A backend module's ``REUSES`` declaration is wrong: the backend does not load, and
    :func:`unavailable` gives this message."""


class Backend:
    """One loaded backend: its ops are plain attributes (no per-call dispatch cost), the
    module's functions themselves, or for an op the module declares in ``REUSES`` the
    other backend's functions themselves."""

    def __init__(self, name: str, module, description: str = ""):
        self.name = name
        self.module = module
        self.description = description or (module.__doc__ or "").strip().splitlines()[0]
        self._bind()

    def _reuses(self) -> dict:
        """``{spec name: backend name}`` as the module declares it (validated)."""
        reuses = getattr(self.module, "REUSES", None) or {}
        if not isinstance(reuses, dict):
            raise ReuseError(f"REUSES must be a dict {{op: backend}}, got {reuses!r}")
        for op, provider in reuses.items():
            if op not in _specs.SPECS:
                raise ReuseError(f"REUSES names {op!r}, which is not an op of the kernel "
                                 f"contract (one of {list(_specs.SPECS)})")
            if provider == self.name or provider not in _REGISTRY:
                raise ReuseError(f"REUSES[{op!r}] = {provider!r} is not another registered "
                                 f"backend (registered: {list(_REGISTRY)})")
            defined = [o for o in _specs.SPECS[op].ops if getattr(self.module, o, None)]
            if defined:
                raise ReuseError(f"the module both defines {defined} and declares "
                                 f"REUSES[{op!r}] = {provider!r}: keep one")
        return reuses

    def _resolve(self, op: str):
        """``(function or None, the backend it is reused from or None, why it is missing)``."""
        provider = self._reuses().get(_specs.spec_of(op).name)
        if provider is None:
            fn = getattr(self.module, op, None)
            return (fn if callable(fn) else None), None, ""
        other = _load(provider)
        if other is None:
            return None, provider, (f" (it declares REUSES from {provider!r}, which cannot "
                                    f"load here: {_FAILED.get(provider)})")
        fn = other._resolve(op)[0]
        if fn is None:
            return None, provider, (f" (it declares REUSES from {provider!r}, which does "
                                    f"not implement it either)")
        return fn, provider, ""

    def _bind(self):
        """(Re)binds every op of the contract as a plain attribute."""
        self._reuses()   # a bad declaration fails the load, whatever the ops
        implemented, reused = set(), {}
        for op in OPS + FUSED_OPS:
            fn, provider, why = self._resolve(op)
            if provider is not None:
                reused[op] = provider
            if fn is not None:
                implemented.add(op)
            elif op in FUSED_OPS:
                fn = _not_fused
            else:
                fn = _missing(self.name, op, why)
            setattr(self, op, fn)
        for op in getattr(self, "_bound", ()):   # an op remove_op took back
            if op not in OPS and op not in FUSED_OPS:
                delattr(self, op)
        self._bound = OPS + FUSED_OPS
        self._implemented = frozenset(implemented)
        self._reused = reused

    def implements(self, op: str) -> bool:
        return op in self._implemented

    def reused_from(self, op: str) -> str | None:
        """The backend whose kernel this op is (declared in the module's ``REUSES``), or None
        for the backend's own kernel (or a missing one)."""
        return self._reused.get(op)

    def capabilities(self) -> dict:
        return {op: op in self._implemented for op in OPS}

    def __repr__(self):
        return f"<fastcnn backend {self.name!r}>"


# name -> (module path, description); loaded lazily so that optional backends
# (numba, cython, cuda) cost nothing until asked for and may be absent.
_REGISTRY: dict[str, tuple[str, str]] = {}
_LOADED: dict[str, Backend] = {}
_FAILED: dict[str, str] = {}
_LOCK = threading.RLock()   # re-entered: a backend's REUSES loads its provider
_LOADING: set[str] = set()
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
        if name in _LOADING:
            raise ReuseError(f"backend {name!r}: circular REUSES declarations ({sorted(_LOADING)})")
        module_path, description = _REGISTRY[name]
        _LOADING.add(name)
        try:
            module = importlib.import_module(module_path)
            check = getattr(module, "is_available", None)
            if check is not None:
                ok, why = check()
                if not ok:
                    raise ImportError(why)
            backend = Backend(name, module, description)
        except (ImportError, ReuseError) as exc:
            _FAILED[name] = str(exc) or type(exc).__name__
            return None
        finally:
            _LOADING.discard(name)
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
    """``{backend: {op: implemented}}`` for every available backend (``fastcnn info``); an
    op a backend reuses from another (its ``REUSES``) is implemented."""
    return {name: get(name).capabilities() for name in available()}


def _derive() -> None:
    """Re-derives everything the specs determine, after :func:`add_op` / :func:`remove_op`."""
    global OPS, FUSED_OPS
    OPS, FUSED_OPS = _specs.ops(), _specs.ops(fused=True)
    import sys

    auto = sys.modules.get(__name__ + ".auto")
    if auto is not None:
        auto._install()
        auto._resolved.clear()
    with _LOCK:
        for backend in list(_LOADED.values()):
            backend._bind()


def add_op(spec: "_specs.OpSpec") -> None:
    """Adds an op to the contract at run time (its spec): OPS or FUSED_OPS, every loaded
    backend's attributes, the capability table and ``auto``'s routing follow. The ops
    fastcnn ships are declared in :mod:`fastcnn.backends._specs`; this is for extensions
    and tests."""
    if spec.name in _specs.SPECS:
        raise ValueError(f"op {spec.name!r} is already declared")
    _specs.SPECS[spec.name] = spec
    _derive()


def remove_op(name: str) -> None:
    """Takes back an op :func:`add_op` added."""
    del _specs.SPECS[name]
    _derive()


register("reference", "fastcnn.backends.reference", "readable NumPy loops: the oracle")
register("im2col", "fastcnn.backends.im2col", "vectorised NumPy: strided views + one GEMM per op")
register("numba", "fastcnn.backends.numba_cpu", "Numba @njit kernels (parallel, cached)")
register("cython", "fastcnn.backends.cython_cpu", "Cython kernels compiled from csrc/ (OpenMP)")
register("cuda", "fastcnn.backends.cuda", "numba-cuda kernels on an NVIDIA GPU (or the CUDA simulator)")
register("auto", "fastcnn.backends.auto", "per op, the fastest available backend for that kind of shape")
