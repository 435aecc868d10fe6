"""What the ImageNet applications share: Keras's input-shape rules, ``preprocess_input``,
``decode_predictions``, the published weight files and Keras's layer order.

The input-shape checks, preprocessing modes and messages follow Keras 3.15's
``keras/src/applications/imagenet_utils.py`` (Apache License 2.0, (c) the Keras authors),
so a call Keras refuses is refused here with Keras's words.

Files (published weight files, the ImageNet class index) are looked up, in order, in:

1. fastcnn's cache folder ``$FASTCNN_CACHE/models/`` (default ``~/.cache/fastcnn/models/``);
2. Keras's cache folder ``$KERAS_HOME/models/`` (default ``~/.keras/models/``), read only, so
   files a Keras installation already downloaded are reused;

and otherwise downloaded from Keras's published URL into (1): streamed into a temporary file
in that folder, its MD5 checked against the hash in Keras's source (where Keras publishes
one), then renamed into place, so the cache never holds a partial file under the final name.
Without a network the error names the file, its URL and the folder to put it in.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import numbers
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from .. import config
from ..datasets import _files

#: Sub-folder of the cache holding the model files (Keras's ``cache_subdir="models"``).
CACHE_SUBDIR = "models"
#: Seconds one network operation may block before the download counts as failed.
TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_USER_AGENT = "fastcnn-applications (Python urllib)"
#: Largest file accepted from a server (the biggest published file, VGG16 with top, is 553 MB).
_MAX_DOWNLOAD = 1 << 30

CLASS_INDEX_FILE = "imagenet_class_index.json"
CLASS_INDEX_URL = ("https://storage.googleapis.com/download.tensorflow.org/data/"
                   "imagenet_class_index.json")
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"
CLASS_INDEX = None  # the loaded index: '0'..'999' -> [wnid, name]


class WeightsFileError(OSError):
    """A published file can be neither found nor downloaded, or it is not the published one."""


# ------------------------------------------------------------------ input shapes
def obtain_input_shape(input_shape, default_size, min_size, data_format, require_flatten,
                       weights=None):
    """Keras's ``imagenet_utils.obtain_input_shape`` (channels last only): the model's input
    shape from ``input_shape``, checked against the model's default and minimum sizes."""
    if data_format not in (None, "channels_last"):
        raise ValueError(
            f"data_format must be 'channels_last' (fastcnn is channels last), got "
            f"{data_format!r}")
    if weights != "imagenet" and input_shape and len(input_shape) == 3:
        if input_shape[-1] not in {1, 3}:
            warnings.warn(
                "This model usually expects 1 or 3 input channels. However, it was passed "
                f"an input_shape with {input_shape[-1]} input channels.", stacklevel=3)
        default_shape = (default_size, default_size, input_shape[-1])
    else:
        default_shape = (default_size, default_size, 3)
    if weights == "imagenet" and require_flatten:
        if input_shape is not None:
            if tuple(input_shape) != default_shape:
                raise ValueError(
                    "When setting `include_top=True` and loading `imagenet` weights, "
                    f"`input_shape` should be {default_shape}.  "
                    f"Received: input_shape={input_shape}")
        return default_shape
    if input_shape:
        if len(input_shape) != 3:
            raise ValueError("`input_shape` must be a tuple of three integers.")
        if input_shape[-1] != 3 and weights == "imagenet":
            raise ValueError(
                f"The input must have 3 channels; Received `input_shape={input_shape}`")
        if ((input_shape[0] is not None and input_shape[0] < min_size)
                or (input_shape[1] is not None and input_shape[1] < min_size)):
            raise ValueError(
                f"Input size must be at least {min_size}x{min_size}; Received: "
                f"input_shape={input_shape}")
    else:
        input_shape = default_shape if require_flatten else (None, None, 3)
    if require_flatten and None in input_shape:
        raise ValueError(
            "If `include_top` is True, you should specify a static `input_shape`. "
            f"Received: input_shape={input_shape}")
    return input_shape


def check_input_shape(input_shape, arch):
    """``input_shape`` as a tuple ``(height, width, channels)``: positive ints, height and
    width may be None (images of any size: Keras's default without the top)."""
    dims = tuple(input_shape)
    ok = len(dims) == 3 and all(
        (d is None and i < 2) or (isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                   and d >= 1)
        for i, d in enumerate(dims))
    if not ok:
        raise ValueError(
            f"{arch}: input_shape must be (height, width, channels): positive ints, height "
            f"and width may be None; got {dims}")
    return tuple(None if d is None else int(d) for d in dims)


def correct_pad(input_size, kernel_size):
    """Keras's ``imagenet_utils.correct_pad``: the ``((top, bottom), (left, right))`` zero
    padding before a stride-2 'valid' convolution (``input_size`` is (height, width))."""
    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    if input_size[0] is None:
        adjust = (1, 1)
    else:
        adjust = (1 - input_size[0] % 2, 1 - input_size[1] % 2)
    correct = (kernel_size[0] // 2, kernel_size[1] // 2)
    return ((correct[0] - adjust[0], correct[0]), (correct[1] - adjust[1], correct[1]))


def validate_activation(classifier_activation, weights):
    """Keras's rule: with pretrained weights the top layer's activation is None or softmax."""
    if weights is None:
        return
    if classifier_activation in (None, "softmax", "linear"):
        return
    from .. import activations
    try:
        name = activations.serialize(activations.get(classifier_activation))
    except Exception:  # noqa: BLE001 - a custom callable has no name
        name = None
    if name in ("softmax", "linear"):
        return
    shown = name if name is not None else classifier_activation
    raise ValueError(
        "Only `None` and `softmax` activations are allowed for the `classifier_activation` "
        "argument when using pretrained weights, with `include_top=True`; Received: "
        f"classifier_activation={shown}")


def check_weights_argument(weights, include_top, classes, inception_wording=False):
    """Keras's first two checks of every application (``weights`` and ``classes``), in its
    words (InceptionV3's source words them slightly differently)."""
    if not (weights is None or (isinstance(weights, str) and weights == "imagenet")
            or (isinstance(weights, (str, os.PathLike)) and os.path.exists(weights))):
        if inception_wording:
            raise ValueError(
                "The `weights` argument should be either `None` (random initialization), "
                "`imagenet` (pre-training on ImageNet), or the path to the weights file to "
                f"be loaded; Received: weights={weights}")
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization), "
            "'imagenet' (pre-training on ImageNet), or the path to the weights file to be "
            f"loaded.  Received: weights={weights}")
    if isinstance(weights, str) and weights == "imagenet" and include_top and classes != 1000:
        if inception_wording:
            raise ValueError(
                'If using `weights="imagenet"` with `include_top=True`, `classes` should be '
                f"1000. Received classes={classes}")
        raise ValueError(
            "If using `weights='imagenet'` with `include_top=True`, `classes` should be "
            f"1000.  Received classes={classes}")


def check_pooling(pooling):
    """None, 'avg' or 'max' (Keras ignores anything else silently; fastcnn names it)."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")


# ------------------------------------------------------------------ preprocessing
def preprocess_input(x, data_format=None, mode="caffe"):
    """Keras's ``imagenet_utils.preprocess_input`` for NumPy arrays (channels last).

    ``mode``: 'caffe' (RGB -> BGR, then the ImageNet mean pixel subtracted, no scaling),
    'tf' (scaled to [-1, 1]: ``x / 127.5 - 1``) or 'torch' (``x / 255`` then each channel
    normalised with ImageNet's mean and std). Integer input becomes ``floatx()``; float
    input keeps its dtype. Unlike Keras, a float array passed in is not modified in place
    (the result is a new array; Keras's returned values are the same).
    """
    if mode not in {"caffe", "tf", "torch"}:
        raise ValueError(
            "Expected mode to be one of `caffe`, `tf` or `torch`. "
            f"Received: mode={mode}")
    if data_format is None:
        data_format = "channels_last"
    if data_format != "channels_last":
        raise ValueError(
            "Expected data_format to be 'channels_last' (fastcnn is channels last). "
            f"Received: data_format={data_format}")
    from .. import autodiff
    if isinstance(x, autodiff.Tensor):
        x = x.numpy()
    x = np.asarray(x)
    if not issubclass(x.dtype.type, np.floating):
        x = x.astype(config.floatx())
    else:
        x = x.copy()
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(
            f"preprocess_input expects images with 3 channels on the last axis (RGB), got "
            f"an array of shape {x.shape}")
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        mean = [0.485, 0.456, 0.406]
        std = [0.229, 0.224, 0.225]
    else:
        x = np.ascontiguousarray(x[..., ::-1])  # 'RGB' -> 'BGR'
        mean = [103.939, 116.779, 123.68]
        std = None
    x[..., 0] -= mean[0]
    x[..., 1] -= mean[1]
    x[..., 2] -= mean[2]
    if std is not None:
        x[..., 0] /= std[0]
        x[..., 1] /= std[1]
        x[..., 2] /= std[2]
    return x


# ------------------------------------------------------------------ files
def cache_dir() -> Path:
    """``$FASTCNN_CACHE/models`` (default ``~/.cache/fastcnn/models``): where downloads go."""
    root = _files._env_path(_files.CACHE_ENV) or _files.DEFAULT_CACHE.expanduser()
    return root / CACHE_SUBDIR


def keras_cache_dir() -> Path:
    """Keras's own cache, ``$KERAS_HOME/models`` (default ``~/.keras/models``), read only."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / CACHE_SUBDIR


def md5_file(path) -> str:
    h = hashlib.md5()  # noqa: S324 - Keras publishes MD5 checksums for these files
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, md5: str | None, name: str) -> None:
    if md5 is None:
        return
    digest = md5_file(path)
    if digest != md5:
        raise WeightsFileError(
            f"{str(path)!r} has MD5 {digest}, expected {md5} (corrupted, truncated, or not "
            f"the published {name}). Delete it; the next call downloads it again (or copy "
            f"the published file there).")


def get_file(fname: str, origin: str, md5: str | None = None, what: str = "weights file",
             pass_path: str | None = None) -> Path:
    """The path of the published file ``fname``: from fastcnn's or Keras's cache, else
    downloaded from ``origin`` into fastcnn's cache (MD5-checked when ``md5`` is given).

    Raises :class:`WeightsFileError` when the file cannot be found or fetched (the message
    names the file, its URL and the folder to put it in) or its MD5 differs. ``pass_path``:
    how else the caller accepts the file (default: ``weights='/path/to/<fname>'``).
    """
    if pass_path is None:
        pass_path = f"pass its path as weights='/path/to/{fname}'"
    folder = cache_dir()
    for candidate in (folder / fname, keras_cache_dir() / fname):
        if candidate.is_file():
            _verify(candidate, md5, fname)
            return candidate
    dest = folder / fname
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsFileError(
            f"cannot create the cache folder {str(folder)!r} for {fname} ({exc}); set "
            f"{_files.CACHE_ENV} to a writable folder, or download {origin} yourself and "
            f"pass its path as weights=...") from exc
    try:
        _download(origin, dest, md5)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise WeightsFileError(
            f"the {what} {fname!r} is not in fastcnn's cache ({str(folder)!r}) nor in Keras's "
            f"({str(keras_cache_dir())!r}), and it could not be downloaded from {origin} "
            f"({_files._describe(exc)}). Without internet access, copy the file "
            f"{fname} (from {origin}) into {str(folder)}{os.sep} (or set "
            f"{_files.CACHE_ENV}=DIR and put it in DIR{os.sep}{CACHE_SUBDIR}{os.sep}), or "
            f"{pass_path}.") from exc
    return dest


def _download(url: str, dest: Path, md5: str | None) -> None:
    print(f"fastcnn: downloading {url}", file=sys.stderr)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()  # noqa: S324
        received = 0
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                request, timeout=TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > _MAX_DOWNLOAD:
                    raise ValueError(f"server sent more than {_MAX_DOWNLOAD} bytes")
                h.update(chunk)
                out.write(chunk)
        if md5 is not None and h.hexdigest() != md5:
            raise ValueError(f"downloaded file has MD5 {h.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ decode_predictions
def _load_class_index(class_index):
    global CLASS_INDEX
    if isinstance(class_index, dict):
        index = class_index
    elif class_index is not None:
        with open(class_index, encoding="utf-8") as f:
            index = json.load(f)
    else:
        if CLASS_INDEX is not None:
            return CLASS_INDEX
        path = get_file(CLASS_INDEX_FILE, CLASS_INDEX_URL, CLASS_INDEX_MD5,
                        what="ImageNet class index",
                        pass_path=f"pass its path as decode_predictions(preds, "
                                  f"class_index='/path/to/{CLASS_INDEX_FILE}')")
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    if (not isinstance(index, dict) or len(index) != 1000
            or any(str(i) not in index for i in range(1000))):
        raise ValueError(
            "the ImageNet class index must map '0'..'999' to [wordnet_id, class_name] (the "
            f"published {CLASS_INDEX_FILE}), got {type(index).__name__} with "
            f"{len(index) if hasattr(index, '__len__') else '?'} entries")
    if class_index is None:
        CLASS_INDEX = index
    return index


def decode_predictions(preds, top=5, class_index=None):
    """Keras's ``decode_predictions``: for each row of ``preds`` (shape (samples, 1000)), the
    ``top`` classes as ``(wordnet_id, class_name, score)``, best first.

    The class index is Keras's published ``imagenet_class_index.json``. It is not shipped
    with fastcnn (it comes from Google's download server with no licence stated). It is read
    from ``class_index`` (a path or the loaded dict) when given, else from fastcnn's cache
    (``$FASTCNN_CACHE/models/``, default ``~/.cache/fastcnn/models/``) or Keras's
    (``~/.keras/models/``), else downloaded into fastcnn's cache (MD5-checked); without a
    network the error says where to put the file.
    """
    from .. import autodiff
    if isinstance(preds, autodiff.Tensor):
        preds = preds.numpy()
    preds = np.asarray(preds)
    if len(preds.shape) != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions (i.e. a 2D array of shape "
            f"(samples, 1000)). Received array with shape: {preds.shape}")
    if not isinstance(top, numbers.Integral) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    index = _load_class_index(class_index)
    results = []
    for pred in preds:
        top_indices = pred.argsort()[-top:][::-1]
        result = [tuple(index[str(i)]) + (pred[i],) for i in top_indices]
        result.sort(key=lambda r: r[2], reverse=True)
        results.append(result)
    return results


# ------------------------------------------------------------------ models
def source_inputs(tensor):
    """The Input tensors ``tensor`` depends on (Keras's ``get_source_inputs``)."""
    out, seen = [], set()

    def visit(t):
        node = t.node
        if not node.inputs:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
            return
        for parent in node.inputs:
            visit(parent)

    visit(tensor)
    return out


def input_tensor_or_new(input_tensor, input_shape):
    """Keras's ``img_input``: a new Input of ``input_shape``, or ``input_tensor`` (a symbolic
    tensor from fastcnn.Input or a layer call)."""
    from .. import graph
    from ..layers import Input
    if input_tensor is None:
        return Input(shape=input_shape)
    if not isinstance(input_tensor, graph.KerasTensor):
        raise ValueError(
            "input_tensor must be a symbolic tensor (from fastcnn.Input(...) or a layer call), "
            f"got {type(input_tensor).__name__}")
    return input_tensor


def build_model(img_input, input_tensor, x, name):
    """``Functional(inputs, x, name=name)``; its ``layers`` are in Keras's order (see
    :func:`fastcnn.graph.keras_layer_order`), so ``get_weights()``, ``summary()`` and
    Keras's weight files list them as Keras does."""
    from ..model import Model
    inputs = source_inputs(input_tensor) if input_tensor is not None else [img_input]
    return Model(inputs[0] if len(inputs) == 1 else inputs, x, name=name)


def load_weights(model, weights, fname, origin, md5):
    """``weights='imagenet'``: the published file (fetched as :func:`get_file` does) loaded
    with ``model.load_weights``; a path: ``model.load_weights(path)``."""
    if weights == "imagenet":
        path = get_file(fname, origin, md5)
        model.load_weights(str(path))
    elif weights is not None:
        model.load_weights(os.fspath(weights))
    return model
