"""Build script: the metadata lives in pyproject.toml; this file only compiles csrc/*.pyx.

Every ``csrc/<name>.pyx`` becomes the extension module ``fastcnn._ext_<name>``.

* Without a C compiler the install still succeeds (the extensions are optional) and
  ``import fastcnn`` explains why the Cython backend is missing.
* ``FASTCNN_REQUIRE_EXT=1`` (set by ``.ci/run``) makes a failed build fail the install,
  so CI cannot pass with the compiled backend silently absent.
* ``FASTCNN_OPENMP=0`` builds without OpenMP (``prange`` then runs serially).
* On Linux the modules are linked with ``-s`` (no debug symbols: 7.7 MB of .so files
  become 1.4 MB); ``FASTCNN_STRIP=0`` keeps the symbols for a debugger or a profiler.
"""
import glob
import os
import sys

from setuptools import setup

REQUIRE_EXT = os.environ.get("FASTCNN_REQUIRE_EXT", "0") == "1"
USE_OPENMP = os.environ.get("FASTCNN_OPENMP", "1") != "0" and sys.platform.startswith("linux")
STRIP = os.environ.get("FASTCNN_STRIP", "1") != "0" and sys.platform.startswith("linux")


def extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.pyx")))
    if not sources:
        return []
    try:
        import numpy as np
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:  # only reachable with --no-build-isolation
        if REQUIRE_EXT:
            raise
        print(f"warning: fastcnn: not building the Cython extensions ({exc})", file=sys.stderr)
        return []
    omp = ["-fopenmp"] if USE_OPENMP else []
    # The depthwise kernels' inner loops on 64-byte boundaries: without it, where they land
    # moved with unrelated edits to the same file (adding the pair steps' border pixels made
    # the untouched stride-2 forward 8-13% slower, 28x28x192 s2 0.094 -> 0.105 ms; aligned:
    # 0.095 either way; C harness built with setup.py's flags).
    LOOP_ALIGN = {"depthwise": ["-falign-loops=64"]}
    # Headers and .pxd files every module may include: an edit rebuilds them all.
    shared = sorted(glob.glob(os.path.join("csrc", "*.h")) + glob.glob(os.path.join("csrc", "*.pxd")))
    exts = [
        Extension(
            "fastcnn._ext_" + os.path.splitext(os.path.basename(src))[0],
            [src],
            depends=shared,
            include_dirs=["csrc", np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
            # -fno-math-errno: a sqrt that may set errno is never vectorised (nothing here
            # reads errno; results are unchanged). No -ffast-math: kernels round as NumPy.
            extra_compile_args=["-O3", "-fno-math-errno",
                                "-Werror=implicit-function-declaration"] + omp
            + LOOP_ALIGN.get(os.path.splitext(os.path.basename(src))[0], []),
            extra_link_args=omp + (["-s"] if STRIP else []),
        )
        for src in sources
    ]
    exts = cythonize(
        exts,
        nthreads=2,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
    for ext in exts:
        # cythonize() drops Extension(optional=True): set it again here.
        ext.optional = not REQUIRE_EXT
    return exts


setup(ext_modules=extensions())
