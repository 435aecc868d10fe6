"""Thread pinning for the benchmarks, usable before NumPy is imported.

BLAS and OpenMP runtimes read their thread count from the environment once, when their
library loads, so :func:`pin_environment` must run before the first ``import numpy``
(and numba, torch). :func:`pin_runtime` then sets what can be set after loading (numba,
torch, OpenBLAS through its own C API) and :func:`describe` reads back what each runtime
actually uses, so a report never claims a pinning that did not happen.

This module must not import numpy at module level.
"""
from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "FASTCNN_BENCH_THREADS"
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS")

# OpenBLAS builds prefix and suffix their API differently (numpy/scipy wheels ship
# "scipy_openblas64_" builds); try the known spellings.
_OPENBLAS_GET = ("openblas_get_num_threads", "openblas_get_num_threads64_",
                 "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads")
_OPENBLAS_SET = ("openblas_set_num_threads", "openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")


def parse_threads(value, source: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"{source} must be a positive integer thread count, got {value!r}")
    return n


def threads_from_argv(argv) -> int | None:
    """``--threads N`` / ``--threads=N`` from a command line, or None."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return parse_threads(argv[i + 1], "--threads")
        if arg.startswith("--threads="):
            return parse_threads(arg.split("=", 1)[1], "--threads")
    return None


def pin_environment(threads: int) -> list:
    """Sets every runtime's thread variable to ``threads``; returns the modules that were
    already imported (for them the variables come too late and pin_runtime must act)."""
    late = [m for m in ("numpy", "numba", "torch", "scipy") if m in sys.modules]
    os.environ[ENV_VAR] = str(threads)
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    # fastcnn's thread-runtime defaults (idle OpenMP/OpenBLAS threads sleep) must also be in
    # place before NumPy loads; importing the package applies them first thing.
    import fastcnn  # noqa: F401
    return late


def _loaded_openblas() -> list:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:  # not Linux: nothing to probe, describe() says "unknown"
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _openblas_call(names, *args):
    """``{library basename: result}`` of the first symbol in ``names`` each library has."""
    results = {}
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                results[os.path.basename(path)] = fn(*args)
                break
    return results


def pin_runtime(threads: int) -> None:
    """Sets the thread count of every runtime already loaded (numba, torch, OpenBLAS)."""
    _openblas_call(_OPENBLAS_SET, ctypes.c_int(threads))
    if "numba" in sys.modules or _importable("numba"):
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def describe() -> dict:
    """What each loaded runtime reports as its thread count right now."""
    info = {var: os.environ.get(var) for var in (ENV_VAR,) + THREAD_VARS}
    blas = _openblas_call(_OPENBLAS_GET)
    info["openblas_runtime"] = blas or "no OpenBLAS loaded"
    if "numba" in sys.modules:
        import numba

        info["numba_runtime"] = numba.get_num_threads()
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_runtime"] = torch.get_num_threads()
    return info
