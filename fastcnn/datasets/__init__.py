"""Datasets shaped like ``keras.datasets``: ``load_data() -> (x_train, y_train), (x_test, y_test)``.

* :mod:`fastcnn.datasets.digits`: 8x8 handwritten digits bundled in the package (no network).
* :mod:`fastcnn.datasets.mnist`, :mod:`fastcnn.datasets.fashion_mnist`: the original IDX files,
  read from ``$FASTCNN_DATA`` or downloaded once into a checksum-verified cache.
"""
import importlib

_SUBMODULES = ("digits", "mnist", "fashion_mnist")


def __getattr__(name):
    # Submodules load on first use so that ``import fastcnn`` stays cheap.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
