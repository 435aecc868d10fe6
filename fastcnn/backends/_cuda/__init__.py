"""CUDA kernels of the ``cuda`` backend (numba-cuda), one module per family.

* :mod:`._jit`: the ONE place kernels are made (:func:`._jit.kernel`), the table of every
  kernel and its signature (:data:`._jit.KERNELS`), block and tile sizes.
* :mod:`.conv`: conv forward as a tiled implicit GEMM in shared memory; dW and db as a
  split, deterministic reduction; dx as a gather; the dense dx GEMM.
* :mod:`.depthwise`: depthwise conv forward, dx gather, dW/db as split partials.
* :mod:`.batchnorm`: batch normalisation: chunked per-channel reductions, element-wise passes.
* :mod:`.pool`: max / average pooling forwards and their gather backwards.
* :mod:`.elementwise`: activations, softmax, small helpers, the single-block reduction.
* :mod:`.losses`: the fused softmax / sigmoid cross-entropies.
* :mod:`.optim`: SGD, Adam and RMSprop updates in place.
* :mod:`.ptx_check`: compiles every kernel to PTX for both dtypes (no GPU needed).

Rules every kernel follows (the CUDA simulator runs code that a GPU rejects, so they are
checked by compiling to PTX as well as by running in the simulator):

* no warp intrinsics (shfl, ballot, syncwarp): the simulator lacks them; reductions use
  shared memory and ``syncthreads``;
* no float atomics: each output is written by exactly one thread, with a summation order
  fixed by the shapes alone, so results are deterministic;
* no Python objects (lists, dicts) inside kernels;
* float32 kernels do float32 arithmetic only (every constant is cast to the kernel type).
"""
from . import batchnorm, conv, depthwise, elementwise, losses, optim, pool  # noqa: F401  (registers the kernels)
from ._jit import KERNELS  # noqa: F401
