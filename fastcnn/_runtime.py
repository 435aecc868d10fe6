"""Thread-runtime defaults, applied before NumPy or an OpenMP runtime loads.

fastcnn's compiled kernels run on their own thread pool (Numba's, or OpenMP in the Cython
extensions) and hand the GEMMs to NumPy's OpenBLAS, which has a second pool. By default
the idle threads of BOTH pools busy-wait after their work, so between a kernel and the
GEMM after it the two pools fight for the same cores. Measured on 2 cores:

* OpenMP spinning (``OMP_WAIT_POLICY``): one small conv layer on ``cython`` went from
  0.06 ms to 4 ms per call, and ``fastcnn train --backend cython`` from 0.6 s to 120 s.
* OpenBLAS spinning (``OPENBLAS_THREAD_TIMEOUT``, 2**N cycles before an idle thread
  sleeps): a Numba conv after a GEMM ran at one thread's speed; the Fashion-MNIST train
  step at batch 128 and 2 threads took 60 ms instead of 38 ms.

Sleeping idle threads cost time to wake instead: a few microseconds on bare metal, but
about 50 us on a virtual machine whose idle vCPU halted (measured 2026-12-07 on the 2-core
VM: an empty 2-thread OpenMP region after 20 us of serial work took 53 us with
OMP_WAIT_POLICY=PASSIVE, 1.5 us with a short spin). A train step runs 20-40 parallel
regions, so at 2 threads that was a LeNet-5 step's whole gain from the second core.
Hence ``GOMP_SPINCOUNT``: an idle OpenMP thread spins for a bounded while (10,000 spins,
about 0.1 ms on bare metal, 0.26 ms here) before it sleeps, long enough to bridge the
Python between two kernels of one step and short enough not to fight OpenBLAS's GEMM
for long. (With OMP_WAIT_POLICY=PASSIVE libgomp spins 0 times, unless GOMP_SPINCOUNT is
set; then it spins that many. Where more OpenMP threads exist than cores, it spins 0
times whatever this says.) It is set only when the user set neither variable.

Both libraries read these variables once, when they load, so this module runs first in
``fastcnn/__init__.py``. When
the program imported NumPy before fastcnn (what most scripts do), OpenBLAS has already read
its timeout (its default: 2**28 cycles of spinning, about 0.1 s); :func:`restart_openblas`
then makes it read the variable again and restarts its thread pool, the same shutdown and
lazy re-initialisation OpenBLAS's own fork handler runs (``blas_thread_shutdown_``, then
``blas_thread_init``), so both import orders get the same, sleeping pool
(:data:`APPLIED_BEFORE_NUMPY` and :data:`OPENBLAS_RESTART` record what happened, ``fastcnn
info`` reports it). Only where that cannot be done (not Linux, other Python threads already
running, an OpenBLAS without those entry points, or ``FASTCNN_OPENBLAS_RESTART=0``) does
``import fastcnn`` warn (:class:`ThreadSettingWarning`). A user's own setting of either
variable always wins.

The heap (glibc's malloc): a train step allocates and frees the same few-MiB activation
and gradient arrays every step. With glibc's defaults the arrays above its dynamic mmap
threshold are mmapped and unmapped, and the top of the heap is trimmed back to the OS,
so every step faults its pages in again: about 930 minor page faults per LeNet-5 step at
batch 64 in a fresh process, 5.97 ms per step against 4.8 ms without them (measured on
2026-11-25, 1 thread). :func:`tune_malloc` raises the mmap threshold to 32 MiB and the trim
threshold to 256 MiB (``mallopt``), so freed blocks are reused: 2 faults per step. The
cost: up to 256 MiB of freed memory may stay with the process between steps. Skipped
outside glibc, when the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
themselves, or with ``FASTCNN_MALLOC_TUNING=0``.
"""
import ctypes
import os
import platform
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000",
            "OPENBLAS_THREAD_TIMEOUT": "4"}

USER_SET = {name for name in DEFAULTS if name in os.environ}
for _name, _value in DEFAULTS.items():
    if _name == "GOMP_SPINCOUNT" and "OMP_WAIT_POLICY" in USER_SET:
        continue   # the user's own policy (e.g. ACTIVE: spin for ever) is not cut short
    os.environ.setdefault(_name, _value)

APPLIED_BEFORE_NUMPY = "numpy" not in sys.modules


class ThreadSettingWarning(RuntimeWarning):
    """A thread-runtime setting came too late to take effect (see fastcnn/_runtime.py)."""


_OPENBLAS_PARALLEL = ("openblas_get_parallel", "openblas_get_parallel64_",
                      "scipy_openblas_get_parallel64_", "scipy_openblas_get_parallel")


def _loaded_openblas() -> list | None:
    """Paths of the OpenBLAS libraries loaded in this process; None where that cannot be
    known (no /proc/self/maps: not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    return sorted(p for p in paths if p.startswith("/") and ".so" in p)


def restart_openblas() -> str:
    """Applies ``OPENBLAS_THREAD_TIMEOUT`` to an OpenBLAS that loaded before fastcnn.

    OpenBLAS reads the variable once (``openblas_read_env``, at load) and its thread pool
    copies it when the pool starts (``blas_thread_init``). Re-reading the environment, then
    stopping the pool (``blas_thread_shutdown_``, which OpenBLAS's fork handler calls) and
    starting it again applies it. Stopping the pool while another thread runs a BLAS call
    could hang that call, so this is done only while this is the only Python thread (the
    usual ``import`` at the top of a script). Returns what happened, for ``fastcnn info``.
    """
    import threading

    if os.environ.get("FASTCNN_OPENBLAS_RESTART", "1") == "0":
        return "not restarted (FASTCNN_OPENBLAS_RESTART=0)"
    if threading.active_count() > 1:
        return "not restarted: other Python threads are running"
    paths = _loaded_openblas()
    if paths is None:
        return "not restarted: its library cannot be found here (no /proc/self/maps)"
    if not paths:
        return "nothing to restart (no OpenBLAS loaded: NumPy uses another BLAS)"
    done = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            read_env, shutdown, init = (lib.openblas_read_env, lib.blas_thread_shutdown_,
                                        lib.blas_thread_init)
            timeout = lib.openblas_thread_timeout
        except (OSError, AttributeError):
            return f"not restarted: {os.path.basename(path)} lacks the thread-pool entry points"
        parallel = next((getattr(lib, n) for n in _OPENBLAS_PARALLEL if hasattr(lib, n)), None)
        if parallel is None or parallel() != 1:
            # 0: a serial build (no pool); 2: an OpenMP build (OMP_WAIT_POLICY governs it)
            continue
        timeout.restype = ctypes.c_uint
        read_env()
        shutdown()
        init()
        done.append(f"{os.path.basename(path)} (timeout 2**{timeout()} cycles)")
    return "restarted " + ", ".join(done) if done else "nothing to restart (no pthreads pool)"


#: What :func:`restart_openblas` did, or None when it was not needed.
OPENBLAS_RESTART = None


def _warn_if_too_late():
    # Measured 2026-11-25 (2 cores, Fashion-MNIST CNN, batch 128): with NumPy imported
    # first, a train step took 49 ms at 2 threads and 48 ms at 1; fastcnn first, 27 ms.
    # Now the pool is restarted instead (benchmarks/README.md, "Import order").
    global OPENBLAS_RESTART
    if APPLIED_BEFORE_NUMPY or "OPENBLAS_THREAD_TIMEOUT" in USER_SET:
        return
    OPENBLAS_RESTART = restart_openblas()
    if OPENBLAS_RESTART.startswith(("restarted", "nothing")) or (os.cpu_count() or 1) < 2:
        return
    import warnings

    warnings.warn(
        "numpy was imported before fastcnn, so OpenBLAS's idle threads keep spinning and "
        f"take the cores fastcnn's kernels need (its thread pool was {OPENBLAS_RESTART}): "
        "with 2+ threads a train step can run no faster than with 1. Import fastcnn before "
        "numpy, or export OPENBLAS_THREAD_TIMEOUT=4 before starting Python.",
        ThreadSettingWarning, stacklevel=4)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MALLOC_SETTINGS = {"MMAP_THRESHOLD": 32 << 20, "TRIM_THRESHOLD": 256 << 20}


def tune_malloc() -> str:
    """Applies :data:`MALLOC_SETTINGS` through glibc's ``mallopt``; says what happened."""
    if os.environ.get("FASTCNN_MALLOC_TUNING", "1") == "0":
        return "off (FASTCNN_MALLOC_TUNING=0)"
    if platform.libc_ver()[0] != "glibc":
        return "not glibc: left as is"
    if any(f"MALLOC_{name}_" in os.environ for name in MALLOC_SETTINGS):
        return "the user's MALLOC_*_ settings kept"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "mallopt not found: left as is"
    ok = (mallopt(_M_MMAP_THRESHOLD, MALLOC_SETTINGS["MMAP_THRESHOLD"]) == 1
          and mallopt(_M_TRIM_THRESHOLD, MALLOC_SETTINGS["TRIM_THRESHOLD"]) == 1)
    if not ok:
        return "mallopt refused the settings: left as is"
    return "mmap threshold 32 MiB, trim threshold 256 MiB (FASTCNN_MALLOC_TUNING=0 turns it off)"


MALLOC_TUNING = tune_malloc()
_warn_if_too_late()


def describe() -> list[str]:
    """Lines for ``fastcnn info``."""
    lines = [f"{name}={os.environ.get(name)}" for name in DEFAULTS]
    if not APPLIED_BEFORE_NUMPY:
        if OPENBLAS_RESTART is not None and OPENBLAS_RESTART.startswith("restarted"):
            lines.append("numpy was imported before fastcnn, so OpenBLAS's thread pool was "
                         "restarted to apply OPENBLAS_THREAD_TIMEOUT: " + OPENBLAS_RESTART)
        else:
            lines.append(
                "numpy was imported before fastcnn, so OpenBLAS may ignore "
                "OPENBLAS_THREAD_TIMEOUT: export it (e.g. 4) or import fastcnn first"
                + (f" (its pool was {OPENBLAS_RESTART})" if OPENBLAS_RESTART else ""))
    lines.append(f"malloc: {MALLOC_TUNING}")
    return lines
