"""The one place that knows whether the compiled (Cython) extensions loaded.

``setup.py`` compiles every ``csrc/<name>.pyx`` into ``fastcnn._ext_<name>``; the build is
optional, so a machine without a C compiler still installs fastcnn (the NumPy and Numba
backends need none). This module imports the extensions once and records why they are
missing, so that every caller gives the same clear answer:

* :data:`HAVE_CYTHON`: True when every extension imported and matches the sources.
* :data:`IMPORT_ERROR`: why not (None when they loaded).
* :func:`require_cython`: raises :class:`RuntimeError` with that reason.
* :func:`warn_if_missing`: one :class:`ExtensionWarning` per process (``import fastcnn``).

A missing build and a broken build are told apart with ``importlib.util.find_spec``: a
plain ``from . import _ext_conv`` inside try/except reports both as the confusing "cannot
import name ... from partially initialized module".
"""
from __future__ import annotations

import importlib
import importlib.util
import warnings

# Every csrc/<name>.pyx: the backend needs all of them.
EXTENSIONS = ("conv", "pool", "elementwise", "simd", "depthwise", "batchnorm")

# Must equal each extension's ABI_VERSION: a .so built from older sources (an in-place build
# that was not redone after a `git pull`) is refused instead of failing later with an
# AttributeError or a wrong signature.
ABI_VERSION = 6

FIX_HINT = (
    "to build it, install a C compiler (e.g. gcc, or the Xcode command line tools, or MSVC) "
    "and reinstall: pip install -e . (or run python setup.py build_ext --inplace in a "
    "source checkout)"
)


class ExtensionWarning(RuntimeWarning):
    """Issued once at ``import fastcnn`` when the compiled extensions are unavailable."""


def _probe(fullname: str):
    """``(module, None)`` when ``fullname`` imports, else ``(None, reason)``."""
    try:
        spec = importlib.util.find_spec(fullname)
    except (ImportError, ValueError) as exc:
        spec, exc_find = None, exc
    else:
        exc_find = None
    if spec is None:
        detail = f" ({exc_find})" if exc_find else ""
        return None, (
            f"extension was not built (no C compiler at install time?): "
            f"{fullname} is missing{detail}"
        )
    try:
        module = importlib.import_module(fullname)
    except ImportError as exc:  # e.g. undefined symbol, wrong Python ABI, missing libgomp
        return None, f"extension failed to load: {fullname}: {exc}"
    version = getattr(module, "ABI_VERSION", None)
    if version != ABI_VERSION:
        return None, (
            f"extension is out of date: {fullname} was built from other sources "
            f"(ABI_VERSION {version}, expected {ABI_VERSION}); rebuild it"
        )
    return module, None


def _load_all(package: str = __package__):
    """``({name: module}, None)`` or ``({}, reason)`` for the first extension that fails."""
    modules = {}
    for name in EXTENSIONS:
        module, reason = _probe(f"{package}._ext_{name}")
        if module is None:
            return {}, reason
        modules[name] = module
    return modules, None


modules, IMPORT_ERROR = _load_all()
HAVE_CYTHON = IMPORT_ERROR is None
_warned = False


def require_cython() -> None:
    """Raises RuntimeError saying why the Cython backend is unavailable (no-op when it is)."""
    if not HAVE_CYTHON:
        raise RuntimeError(
            f"the Cython backend is unavailable: {IMPORT_ERROR}; {FIX_HINT}. "
            "The NumPy and Numba backends still work."
        )


def warn_if_missing() -> None:
    """Warns (once per process) that the compiled extensions are missing, and how to fix it.

    Silence it with ``warnings.filterwarnings("ignore", category=ExtensionWarning)``.
    """
    global _warned
    if HAVE_CYTHON or _warned:
        return
    _warned = True
    warnings.warn(
        f"fastcnn: the Cython backend is unavailable: {IMPORT_ERROR}; {FIX_HINT}. "
        "The NumPy and Numba backends still work.",
        ExtensionWarning,
        stacklevel=2,
    )


def openmp_info() -> tuple[bool, int]:
    """``(built_with_openmp, max_threads)`` of the compiled kernels (needs the extension)."""
    require_cython()
    return modules["elementwise"].openmp_info()


def set_num_threads(n: int) -> None:
    """Sets the OpenMP thread count of the compiled kernels for the calling thread.

    OpenMP keeps this setting per OS thread: call it from the thread that runs the model.
    It does not change BLAS threads (OPENBLAS_NUM_THREADS) used by the GEMMs.
    """
    require_cython()
    modules["elementwise"].set_num_threads(int(n))
