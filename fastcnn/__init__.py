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

# First, before anything loads NumPy or an OpenMP runtime: the thread-runtime defaults.
from . import _runtime
from ._runtime import ThreadSettingWarning
from . import _extensions
from ._extensions import HAVE_CYTHON, ExtensionWarning
from . import backends, config, shapes
from .backends import available, get_backend, set_backend, use_backend
from .config import floatx, set_floatx
from . import activations, callbacks, initializers, layers, losses, metrics, optimizers, utils
from . import constraints, datasets, gradcheck, regularizers
from . import autodiff, ops, nn
from .autodiff import GradientTape, Tensor, Variable
from . import distributed, preprocessing
from .model import Model, Sequential
from .layers import Input
from . import executor, graph
from .saving import load_model
from . import keras_files   # Keras's .keras/.h5 files (h5py, optional, loaded when used)
from .onnx_io import load_onnx   # needs the optional onnx package only when called
from .utils import set_random_seed
from . import models   # after .model: models builds on Sequential
from . import applications   # Keras's ImageNet architectures (after .model)

# pip hides build warnings, so a missing compiled backend explains itself here (once).
_extensions.warn_if_missing()

__all__ = [
    "Sequential",
    "Model",
    "Input",
    "GradientTape",
    "Tensor",
    "Variable",
    "autodiff",
    "ops",
    "nn",
    "load_model",
    "load_onnx",
    "HAVE_CYTHON",
    "ExtensionWarning",
    "ThreadSettingWarning",
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
    "regularizers",
    "constraints",
    "preprocessing",
    "distributed",
    "models",
    "applications",
]
