"""The one place where the backend's CUDA kernels are made.

Every kernel of :mod:`fastcnn.backends._cuda` is created by the :func:`kernel` decorator,
which records it in :data:`KERNELS` with its signature; every device function (a helper
that kernels call) by :func:`device_function`. The PTX check
(``python -m fastcnn.backends._cuda.ptx_check``) compiles every entry of that table for
both dtypes, so a new kernel cannot escape it; a test also checks that no module of the
package calls ``cuda.jit`` anywhere but here.

Why factories: a kernel needs its float type at compile time (shared-memory arrays are
typed, and a literal such as ``1`` or a Python float would promote float32 arithmetic to
float64). A kernel is therefore written as ``factory(T) -> python function`` and compiled
once per dtype; inside, every constant is spelled ``T(0)``, ``T(1)``.

Kernels compile lazily (on first launch, per argument types). The runtime argument types
are the ones the signatures below name: C-contiguous device arrays, Python ints (int64),
Python bools (boolean) and NumPy scalars of the array dtype ({t}).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import cuda

#: NumPy dtype -> numba float type of every kernel variant.
FLOAT_TYPES = {np.dtype(np.float32): numba.float32, np.dtype(np.float64): numba.float64}

#: Side of the square tiles of the shared-memory GEMMs (TILE x TILE threads per block).
TILE = 16
#: TILE + 1: the row length of a tile that is written transposed (the extra column keeps a
#: warp's writes in distinct shared-memory banks). A constant of its own because a shared
#: array's shape must be a compile-time constant: ``TILE + 1`` inside a kernel is not
#: folded by the device compiler (the simulator accepts it; the PTX check does not).
TILE_PAD = TILE + 1
#: Threads per block of the one-thread-per-element kernels.
BLOCK = 128
#: Threads of the single-block tree reductions (a power of two).
REDUCE_BLOCK = 128

#: name -> (signature template with ``{t}`` for the float type, {np.dtype: kernel})
KERNELS: dict = {}


def kernel(signature: str):
    """Decorator of a kernel factory ``factory(T)``: compiles it for float32 and float64.

    ``signature`` is the kernel's numba signature with ``{t}`` standing for the float type,
    e.g. ``"void({t}[::1], {t}[::1])"``. The decorated name becomes ``{np.dtype: kernel}``.
    """

    def register(factory):
        name = factory.__name__
        if name in KERNELS:
            raise RuntimeError(f"two CUDA kernels are named {name!r}")
        variants = {dt: cuda.jit(_named(factory(nbt), name))
                    for dt, nbt in FLOAT_TYPES.items()}
        KERNELS[name] = (signature, variants)
        return variants

    return register


def _named(function, name):
    # A body shared by several kernels (e.g. elementwise's one-thread-per-element map)
    # still shows its kernel's name in PTX and in profiles. Factories return a fresh
    # closure per call, so renaming it touches nothing else.
    function.__name__ = function.__qualname__ = name
    return function


def device_function(function):
    """Makes ``function`` a CUDA device function: callable from kernels only.

    It is inlined into each caller in numba's IR (``inline="always"``), so it is typed
    with the caller's argument types, compiled with every dtype variant of every kernel
    that calls it, and checked by the PTX check through them. Inlining is also what lets
    it compile without a GPU: numba-cuda asks the driver for the compute capability when
    it compiles a separate device function, but not when it inlines one.

    A device function that needs float constants takes the kernel's float type as its
    first argument, ``T``, and spells them ``T(0)``, as kernels do (a bare literal would
    promote float32 arithmetic to float64).
    """
    return cuda.jit(device=True, inline="always")(function)


def signature_for(name: str, dtype) -> str:
    return KERNELS[name][0].format(t=FLOAT_TYPES[np.dtype(dtype)].name)


def blocks(n: int, block: int = BLOCK) -> int:
    return (n + block - 1) // block


def launch_1d(variants, dtype, n: int, *args) -> None:
    """Runs ``variants[dtype]`` with one thread per element of ``range(n)``.

    Small arrays get a small block (a multiple of 32, the warp size): a GPU idles the
    rest anyway, and each idle thread costs real time under the CUDA simulator.
    """
    if n == 0:
        return
    block = min(BLOCK, (n + 31) // 32 * 32)
    variants[np.dtype(dtype)][blocks(n, block), block](*args)


def reduce_threads(n: int) -> int:
    """Threads for a single-block tree reduction of ``n`` values: a power of two."""
    threads = 1
    while threads < n and threads < REDUCE_BLOCK:
        threads *= 2
    return threads
