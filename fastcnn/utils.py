"""Keras's ``keras.utils``: randomness and session helpers (``set_random_seed``,
``clear_session``), ``to_categorical``, and the image utilities (``load_img``,
``img_to_array``, ``array_to_img``, ``save_img``, ``image_dataset_from_directory``; they need
Pillow, the 'image' extra).

Every random draw in fastcnn (initializers, dropout masks, shuffling in ``fit``) comes from
ONE package-wide NumPy ``Generator``, looked up at draw time through :func:`get_rng`.
After ``set_random_seed(s)`` the whole sequence of draws is therefore a function of ``s``
alone, and a run is bit-for-bit reproducible on a given backend.
"""
from __future__ import annotations

import io
import itertools
import numbers
import os
import pathlib
import random
import warnings

import numpy as np

_rng = np.random.default_rng()
_name_counters: dict[str, itertools.count] = {}


def check_seed(seed, name: str = "seed", *, allow_none: bool = False):
    """``seed`` as an int (or None when allowed); ValueError naming ``name`` otherwise."""
    if seed is None and allow_none:
        return None
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        expected = "None or a non-negative int" if allow_none else "a non-negative int"
        raise ValueError(f"{name} must be {expected}, got {seed!r}")
    return int(seed)


def set_random_seed(seed) -> None:
    """Seeds fastcnn's generator (and, as Keras does, Python's and NumPy's global ones)."""
    global _rng
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    """The package-wide generator (replaced by :func:`set_random_seed`; never cache it)."""
    return _rng


def make_rng(seed=None) -> np.random.Generator:
    """A generator of its own: seeded from ``seed`` when given, else spawned from :func:`get_rng`."""
    if seed is None:
        return _rng.spawn(1)[0]
    return np.random.default_rng(check_seed(seed))


def unique_name(prefix: str) -> str:
    """'conv2d', then 'conv2d_1', 'conv2d_2', ... (Keras's automatic layer/model names)."""
    counter = _name_counters.setdefault(prefix, itertools.count())
    n = next(counter)
    return prefix if n == 0 else f"{prefix}_{n}"


def clear_session() -> None:
    """Resets automatic names so that the next layers are 'conv2d', 'dense', ... again."""
    _name_counters.clear()


# ------------------------------------------------------------------ labels
def to_categorical(x, num_classes=None, dtype="float32"):
    """One-hot encoding of integer class labels (Keras's ``keras.utils.to_categorical``).

    ``x`` of shape S gives shape S + (num_classes,); a trailing axis of 1 is dropped first
    ((N, 1) gives (N, num_classes)). ``num_classes`` defaults to ``max(x) + 1``. float32
    (``dtype``, Keras 2's argument, may change that).
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.floating)
                                   or arr.dtype == np.bool_):
        raise ValueError(f"to_categorical: x must hold integer class labels, got an array of "
                         f"dtype {arr.dtype}")
    if arr.size and np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = arr[~np.isfinite(arr) | (arr != np.round(arr))].ravel()[0]
            raise ValueError(f"to_categorical: x must hold integer class labels, got "
                             f"{float(bad)!r}")
    labels = arr.astype(np.int64)
    shape = labels.shape
    if len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    labels = labels.reshape(-1)
    if num_classes is not None:
        if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) \
                or num_classes < 1:
            raise ValueError(f"to_categorical: num_classes must be None or a positive int, "
                             f"got {num_classes!r}")
        num_classes = int(num_classes)
    if labels.size and labels.min() < 0:
        raise ValueError(f"to_categorical: class labels must be >= 0, got {int(labels.min())}")
    if num_classes is None:
        if not labels.size:
            raise ValueError("to_categorical: x is empty, so num_classes cannot be inferred; "
                             "pass num_classes")
        num_classes = int(labels.max()) + 1
    elif labels.size and labels.max() >= num_classes:
        raise ValueError(f"to_categorical: class label {int(labels.max())} is out of range for "
                         f"num_classes={num_classes} (labels must be < num_classes)")
    out = np.zeros((labels.size, num_classes), dtype=dtype)
    out[np.arange(labels.size), labels] = 1
    return out.reshape(shape + (num_classes,))


# ------------------------------------------------------------------ images
#: load_img's interpolations (Pillow's resampling filters), as Keras names them.
PIL_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")
_COLOR_MODES = ("grayscale", "rgb", "rgba")


def _pil(what):
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"{what} needs Pillow; install the extra with "
                          f"pip install 'fastcnn[image]' (or pip install pillow)") from None
    return Image


def _data_format(data_format):
    if data_format is None:
        return "channels_last"
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be None, 'channels_last' or 'channels_first', "
                         f"got {data_format!r}")
    return data_format


def _target_size(target_size, name="target_size"):
    try:
        h, w = target_size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of positive ints (height, width), got "
                         f"{target_size!r}") from None
    for v in (h, w):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a pair of positive ints (height, width), got "
                             f"{target_size!r}")
    return int(h), int(w)


def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest",
             keep_aspect_ratio=False):
    """Loads an image file into a PIL image (Keras's ``keras.utils.load_img``).

    ``color_mode`` 'rgb', 'rgba' or 'grayscale' (8-, 16- and 32-bit grey images stay as
    they are); ``target_size`` (height, width) resizes with ``interpolation`` (one of
    :data:`PIL_INTERPOLATIONS`); ``keep_aspect_ratio`` first crops the centre to the target
    aspect ratio. ``path``: a path (str, bytes, pathlib.Path) or an ``io.BytesIO``.
    """
    Image = _pil("load_img")
    if color_mode not in _COLOR_MODES:
        raise ValueError(f"color_mode must be one of {_COLOR_MODES}, got {color_mode!r}")
    if target_size is not None:
        target_size = _target_size(target_size)
    if interpolation not in PIL_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {PIL_INTERPOLATIONS}, got "
                         f"{interpolation!r}")
    if not isinstance(keep_aspect_ratio, bool):
        raise ValueError(f"keep_aspect_ratio must be a bool, got {keep_aspect_ratio!r}")
    if isinstance(path, io.BytesIO):
        img = Image.open(path)
    elif isinstance(path, (str, bytes, os.PathLike)):
        with open(path, "rb") as f:   # the file is closed at once (Keras reads it whole)
            img = Image.open(io.BytesIO(f.read()))
    else:
        raise TypeError(f"path must be a file path or an io.BytesIO, got "
                        f"{type(path).__name__}")
    if color_mode == "grayscale":
        if img.mode not in ("L", "I;16", "I"):
            img = img.convert("L")
    elif img.mode != color_mode.upper():
        img = img.convert(color_mode.upper())
    if target_size is not None:
        size = (target_size[1], target_size[0])
        if img.size != size:
            resample = getattr(Image.Resampling, interpolation.upper())
            if keep_aspect_ratio:
                width, height = img.size
                crop_h = min(height, (width * size[1]) // size[0])
                crop_w = min(width, (height * size[0]) // size[1])
                top, left = (height - crop_h) // 2, (width - crop_w) // 2
                img = img.resize(size, resample, box=(left, top, left + crop_w, top + crop_h))
            else:
                img = img.resize(size, resample)
    return img


def img_to_array(img, data_format=None, dtype=None):
    """A PIL image as a (H, W, C) array (Keras's ``keras.utils.img_to_array``); values as
    stored (0..255 for 8-bit images), ``dtype`` default ``fastcnn.config.floatx()``."""
    from . import config

    data_format = _data_format(data_format)
    x = np.asarray(img, dtype=dtype or config.floatx())
    if x.ndim == 2:
        x = x[None] if data_format == "channels_first" else x[..., None]
    elif x.ndim == 3:
        if data_format == "channels_first":
            x = x.transpose(2, 0, 1)
    else:
        raise ValueError(f"img_to_array: unsupported image shape {x.shape} (expected a 2-D "
                         f"or 3-D image)")
    return x


def array_to_img(x, data_format=None, scale=True, dtype=None):
    """A (H, W, C) array as a PIL image (Keras's ``keras.utils.array_to_img``): C of 1 ('L',
    or 'I' above 255), 3 ('RGB') or 4 ('RGBA'); ``scale`` stretches the values to 0..255."""
    from . import config

    Image = _pil("array_to_img")
    data_format = _data_format(data_format)
    x = np.array(x, dtype=dtype or config.floatx())
    if x.ndim != 3:
        raise ValueError(f"array_to_img: x must be one image of rank 3, got shape {x.shape}")
    if data_format == "channels_first":
        x = x.transpose(1, 2, 0)
    if scale:
        x = x - np.min(x)
        top = np.max(x)
        if top != 0:
            x /= top
        x *= 255
    channels = x.shape[2]
    if channels == 4:
        return Image.fromarray(x.astype("uint8"), "RGBA")
    if channels == 3:
        return Image.fromarray(x.astype("uint8"), "RGB")
    if channels == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"), "I")
        return Image.fromarray(x[:, :, 0].astype("uint8"), "L")
    raise ValueError(f"array_to_img: x must have 1, 3 or 4 channels, got {channels} "
                     f"(shape {x.shape})")


def save_img(path, x, data_format=None, file_format=None, scale=True, **kwargs):
    """Saves a (H, W, C) array as an image file (Keras's ``keras.utils.save_img``); the
    format comes from the file name unless ``file_format`` is given; ``kwargs`` go to
    ``PIL.Image.save``."""
    if file_format is None and isinstance(path, (str, pathlib.Path)):
        file_format = pathlib.Path(path).suffix[1:].lower() or None
    if file_format and file_format.lower() == "jpg":
        file_format = "jpeg"
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and file_format == "jpeg":
        warnings.warn("The JPEG format does not support RGBA images, converting to RGB.",
                      stacklevel=2)
        img = img.convert("RGB")
    img.save(path, format=file_format, **kwargs)


def image_dataset_from_directory(directory, labels="inferred", label_mode="int",
                                 class_names=None, color_mode="rgb", batch_size=32,
                                 image_size=(256, 256), shuffle=True, seed=None,
                                 validation_split=None, subset=None, interpolation="bilinear",
                                 follow_links=False, crop_to_aspect_ratio=False,
                                 pad_to_aspect_ratio=False, verbose=True):
    """Batches of images from ``directory/<class>/...`` (Keras's
    ``keras.utils.image_dataset_from_directory``); see
    :func:`fastcnn.preprocessing.dataset.image_dataset_from_directory`."""
    from .preprocessing import dataset

    return dataset.image_dataset_from_directory(
        directory, labels=labels, label_mode=label_mode, class_names=class_names,
        color_mode=color_mode, batch_size=batch_size, image_size=image_size, shuffle=shuffle,
        seed=seed, validation_split=validation_split, subset=subset,
        interpolation=interpolation, follow_links=follow_links,
        crop_to_aspect_ratio=crop_to_aspect_ratio, pad_to_aspect_ratio=pad_to_aspect_ratio,
        verbose=verbose)
