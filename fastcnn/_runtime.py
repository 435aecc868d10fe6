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

Sleeping idle threads cost a few microseconds to wake instead. Both libraries read these
variables once, when they load, so this module runs first in ``fastcnn/__init__.py``; when
the program imported NumPy before fastcnn the OpenBLAS setting comes too late, which
:data:`APPLIED_BEFORE_NUMPY` records and ``fastcnn info`` reports. A user's own setting of
either variable always wins.
"""
import os
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)

APPLIED_BEFORE_NUMPY = "numpy" not in sys.modules


def describe() -> list[str]:
    """Lines for ``fastcnn info``."""
    lines = [f"{name}={os.environ.get(name)}" for name in DEFAULTS]
    if not APPLIED_BEFORE_NUMPY:
        lines.append(
            "numpy was imported before fastcnn, so OpenBLAS may ignore "
            "OPENBLAS_THREAD_TIMEOUT: export it (e.g. 4) or import fastcnn first")
    return lines
