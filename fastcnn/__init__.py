"""fastcnn: a convolutional-neural-network engine written from scratch.

One readable NumPy reference implementation of every operation (the oracle), fast
implementations of the same kernel contract behind a registry, and a Keras-shaped API::

    import fastcnn
    from fastcnn.layers import Conv2D, MaxPooling2D, Flatten, Dense
    model = fastcnn.Sequential([
        Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)), MaxPooling2D(2),
        Flatten(), Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
"""
__version__ = "0.1.0"

import os as _os

# Must run before any OpenMP runtime loads (the Cython extensions, Numba's omp layer).
# By default idle OpenMP threads spin for a while after every parallel region; NumPy's
# OpenBLAS has its own thread pool, so between a compiled kernel and the GEMM that follows
# it the two pools fight for the same cores. Measured on 2 cores: a small conv layer went
# from 0.06 ms to 4 ms per call, and `fastcnn train` on cython from 0.6 s to 120 s.
# Sleeping idle threads cost a few microseconds per region instead. A user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _extensions
from ._extensions import HAVE_CYTHON, ExtensionWarning
from . import backends, config, shapes
from .backends import available, get_backend, set_backend, use_backend
from .config import floatx, set_floatx
from . import activations, callbacks, initializers, layers, losses, metrics, optimizers, utils
from . import datasets, gradcheck
from .model import Sequential
from .utils import set_random_seed

# pip hides build warnings, so a missing compiled backend explains itself here (once).
_extensions.warn_if_missing()

__all__ = [
    "Sequential",
    "HAVE_CYTHON",
    "ExtensionWarning",
    "available",
    "get_backend",
    "set_backend",
    "use_backend",
    "floatx",
    "set_floatx",
    "set_random_seed",
    "backends",
    "config",
    "shapes",
    "activations",
    "layers",
    "optimizers",
    "losses",
    "metrics",
    "initializers",
    "callbacks",
    "utils",
    "datasets",
    "gradcheck",
]
