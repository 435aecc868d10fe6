"""Keras's ``image_dataset_from_directory``: batches of decoded, resized images and labels.

:func:`image_dataset_from_directory` lists the files as Keras does (class folders in
alphanumeric order, or ``class_names``'s order; files by sorted walk; ``.bmp .gif .jpeg .jpg
.png`` in any case), shuffles the list once with ``np.random.RandomState(seed)`` and takes
the validation split from its END, as Keras does, so the same seed puts the same files in
each subset, in the same order (``file_paths``), as Keras.

It returns an :class:`ImageDataset`: images float32 in [0, 255] of shape (batch, height,
width, channels); labels int32 (batch,) for ``label_mode='int'``, float32 one-hot
(batch, classes) for 'categorical', float32 (batch, 1) for 'binary'; images alone for
``label_mode=None``. Images are decoded by Pillow; 'bilinear' (the default) and 'nearest'
resize as ``tf.image.resize`` does (half-pixel centres, no antialiasing, TensorFlow's float32
arithmetic): a PNG gives Keras's pixels exactly, shrunk or enlarged; a JPEG differs by
Pillow's decoder against TensorFlow's (measured on cats-vs-dogs: 64% of the values differ, by
0.96 levels of 255 on average, 4 at most). 'bicubic', 'area' and 'lanczos3' use Pillow's
filters (BICUBIC, BOX, LANCZOS) on float32 pixels, close to TensorFlow's but not equal.

Iteration: ``for x, y in ds`` is one pass over the files (``len(ds)`` batches), a fresh pass
each time, reshuffled per pass when ``shuffle=True`` (tf.data's ``reshuffle_each_iteration``;
the order within a pass is a permutation drawn from the seed and the pass number, not
tf.data's buffered shuffle). ``next(ds)`` (what ``fit``/``evaluate``/``predict`` draw) goes on
through the passes without end, like ImageDataGenerator's iterators. Either way a background
thread decodes the next batches while the current one trains (two batches ahead).

It has the image iterators' state/shard protocol (:class:`fastcnn.preprocessing.image.Iterator`),
so under :mod:`fastcnn.distributed` each process decodes only its share of each global batch.
"""
from __future__ import annotations

import hashlib
import numbers
import os

import numpy as np

from .. import utils
from .image import Iterator, _Loader, _require_pillow, launcher_rank

__all__ = ["ImageDataset", "image_dataset_from_directory", "ALLOWLIST_FORMATS"]

ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
LABEL_MODES = ("int", "categorical", "binary", None)
COLOR_MODES = {"grayscale": ("L", 1), "rgb": ("RGB", 3), "rgba": ("RGBA", 4)}
#: Keras's names -> Pillow's filters (Keras's 'lanczos5', 'gaussian', 'mitchellcubic' have none).
INTERPOLATIONS = {"bilinear": "BILINEAR", "nearest": "NEAREST", "bicubic": "BICUBIC",
                  "area": "BOX", "lanczos3": "LANCZOS"}
_KERAS_ONLY = ("lanczos5", "gaussian", "mitchellcubic")


# ------------------------------------------------------------------ listing
def _walk_files(directory, follow_links):
    """Keras's ``iter_valid_files``: (root, name) of the image files under ``directory``,
    folders in the order of their whole path, names sorted."""
    for root, _, files in sorted(os.walk(directory, followlinks=follow_links),
                                 key=lambda entry: entry[0]):
        for name in sorted(files):
            if name.lower().endswith(ALLOWLIST_FORMATS):
                yield root, name


def index_directory(directory, labels, class_names=None, shuffle=True, seed=None,
                    follow_links=False):
    """Keras's ``dataset_utils.index_directory``: ``(file_paths, labels, class_names)``,
    shuffled with ``np.random.RandomState(seed)`` when ``shuffle``."""
    if labels == "inferred":
        subdirs = [d for d in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")]
        if class_names is not None:
            if not set(class_names).issubset(subdirs):
                raise ValueError(
                    f"class_names must name sub-folders of {os.fspath(directory)!r}: expected "
                    f"a subset of {subdirs}, got class_names={list(class_names)}")
            subdirs = list(class_names)
        if not subdirs:
            loose = any(True for _ in _walk_files(directory, follow_links))
            raise ValueError(
                f"directory {os.fspath(directory)!r} has no class sub-folders: with "
                f"labels='inferred' put the images of each class in their own folder "
                f"(directory/cats/*.jpg, ...)"
                + ("; to read images without labels pass labels=None" if loose else ""))
    else:
        subdirs = [""]
    names = list(subdirs)
    filenames, found_labels = [], []
    for k, sub in enumerate(subdirs):
        base = os.path.join(directory, sub)
        for root, name in _walk_files(base, follow_links):
            rel = os.path.relpath(os.path.join(root, name), base)
            filenames.append(os.path.join(sub, rel) if sub else rel)
            found_labels.append(k)
    if labels == "inferred":
        labels = np.array(found_labels, dtype=np.int32)
    elif labels is None:
        names = None
    else:
        if len(labels) != len(filenames):
            raise ValueError(
                f"labels has {len(labels)} entries but {len(filenames)} image files were "
                f"found in {os.fspath(directory)!r}: pass one label per file, in the order of "
                f"the sorted file paths")
        names = [str(label) for label in sorted(set(labels))]
        labels = np.asarray(labels)
    file_paths = [os.path.join(directory, f) for f in filenames]
    if shuffle:
        rng = np.random.RandomState(seed)
        rng.shuffle(file_paths)
        if labels is not None:
            rng = np.random.RandomState(seed)
            rng.shuffle(labels)
    return file_paths, labels, names


def _split(paths, labels, validation_split, subset, directory):
    """Keras's ``get_training_or_validation_split``: validation is the LAST
    ``int(validation_split * n)`` files."""
    if not validation_split:
        return paths, labels
    count = int(validation_split * len(paths))
    if count == 0 or count == len(paths):
        raise ValueError(
            f"validation_split={validation_split} of the {len(paths)} files in "
            f"{os.fspath(directory)!r} leaves {'no' if count == 0 else 'every'} file for "
            f"validation: choose a split that gives each subset at least one file")
    if subset == "training":
        if launcher_rank() == 0:
            print(f"Using {len(paths) - count} files for training.")
        return paths[:-count], None if labels is None else labels[:-count]
    if launcher_rank() == 0:
        print(f"Using {count} files for validation.")
    return paths[-count:], None if labels is None else labels[-count:]


# ------------------------------------------------------------------ resizing
def _tf_axis(out, size):
    """TensorFlow's half-pixel source coordinates of ``out`` samples over ``size`` (float32,
    as its kernels compute them)."""
    scale = np.float32(size) / np.float32(out)
    return (np.arange(out, dtype=np.float32) + np.float32(0.5)) * scale


def tf_resize_bilinear(arr, th, tw):
    """``tf.image.resize(arr, (th, tw), 'bilinear')`` (half-pixel centres, no antialiasing)
    of an (H, W, C) float32 array, with TensorFlow's float32 arithmetic and order: equal to
    it on the fixtures, downscaling included."""
    h, w = arr.shape[:2]

    def axis(out, size):
        src = _tf_axis(out, size) - np.float32(0.5)
        floor = np.floor(src)
        lo = np.maximum(floor, 0).astype(np.intp)
        hi = np.minimum(np.ceil(src), size - 1).astype(np.intp)
        return lo, hi, (src - floor).astype(np.float32)

    ylo, yhi, ylerp = axis(th, h)
    xlo, xhi, xlerp = axis(tw, w)
    xlerp = xlerp[None, :, None]

    def across(rows):
        left = rows[:, xlo]
        return left + (rows[:, xhi] - left) * xlerp

    top = across(arr[ylo])
    bottom = across(arr[yhi])
    return top + (bottom - top) * ylerp[:, None, None]


def tf_resize_nearest(arr, th, tw):
    """``tf.image.resize(arr, (th, tw), 'nearest')`` (half-pixel centres) of an (H, W, C)
    array."""
    h, w = arr.shape[:2]
    rows = np.minimum(np.floor(_tf_axis(th, h)), h - 1).astype(np.intp)
    cols = np.minimum(np.floor(_tf_axis(tw, w)), w - 1).astype(np.intp)
    return arr[rows][:, cols]


# ------------------------------------------------------------------ dataset
class ImageDataset(Iterator):
    """What :func:`image_dataset_from_directory` returns (see the module docstring).

    ``class_names``, ``file_paths`` (in the order of the listing), ``len(ds)`` batches per
    pass, ``iter(ds)`` a fresh pass, ``next(ds)`` the next batch of an endless sequence of
    passes (``fit``'s way), ``ds[i]`` batch i of the current pass of ``next``; ``state()``,
    ``set_state()``, ``set_shard()`` as every image iterator. ``cache()``, ``prefetch()`` and
    ``take(n)`` accept tf.data's tutorial idioms (the first two change nothing: decoding is
    already overlapped with training).
    """

    load_ahead = 2

    def __init__(self, file_paths, labels, label_mode, class_names, color_mode, batch_size,
                 image_size, shuffle, seed, interpolation, crop_to_aspect_ratio,
                 pad_to_aspect_ratio, directory=""):
        self._loader = None
        self._image = _require_pillow()
        self.file_paths = list(file_paths)     # Keras's order (shuffled once by the seed)
        self.class_names = class_names
        self.label_mode = label_mode
        # The samples the passes permute: in sorted order when shuffling, so that the batches
        # depend on the state's seed alone, not on the seed that shuffled the listing (under
        # MPI every process then cuts the same batches from rank 0's state).
        canon = sorted(range(len(self.file_paths)), key=self.file_paths.__getitem__) \
            if shuffle else list(range(len(self.file_paths)))
        self._paths = [self.file_paths[i] for i in canon]
        self._labels = None if labels is None else np.asarray(labels)[canon]
        digest = hashlib.blake2b(digest_size=8)
        for path in self._paths:
            digest.update(os.path.relpath(path, directory).encode("utf-8", "replace") + b"\0")
        self._digest = digest.hexdigest()
        self.color_mode = color_mode
        self._pil_mode, channels = COLOR_MODES[color_mode]
        self.image_size = image_size
        self.image_shape = tuple(image_size) + (channels,)
        self.interpolation = interpolation
        self._resample = getattr(self._image.Resampling, INTERPOLATIONS[interpolation])
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        self.pad_to_aspect_ratio = pad_to_aspect_ratio
        self._passes = 0
        super().__init__(len(self.file_paths), batch_size, shuffle, seed)

    def __repr__(self):
        return (f"<ImageDataset: {len(self.file_paths)} files, {len(self)} batches of "
                f"{self.batch_size}, images {self.image_shape}, label_mode={self.label_mode!r}>")

    # ------------------------------------------------------------ decoding
    def _resize_to(self, arr, th, tw):
        """(H, W, C) float32 pixels resized to (th, tw) with the dataset's interpolation."""
        h, w = arr.shape[:2]
        if (h, w) == (th, tw):
            return arr
        if self.interpolation == "bilinear":
            return tf_resize_bilinear(arr, th, tw)
        if self.interpolation == "nearest":
            return tf_resize_nearest(arr, th, tw)
        Image = self._image
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c]), "F")
                                    .resize((tw, th), self._resample), dtype=np.float32)
                         for c in range(arr.shape[2])], axis=-1)

    def _resize(self, arr):
        """Keras's resizing of one decoded image: plain, ``crop_to_aspect_ratio``
        (``smart_resize``: the largest centred crop of the target's aspect ratio) or
        ``pad_to_aspect_ratio`` (``tf.image.resize_with_pad``: fit inside, zeros around)."""
        th, tw = self.image_size
        h, w = arr.shape[:2]
        if self.crop_to_aspect_ratio:
            crop_h = max(min(h, int(float(w * th) / tw)), 1)
            crop_w = max(min(w, int(float(h * tw) / th)), 1)
            top, left = int(float(h - crop_h) / 2), int(float(w - crop_w) / 2)
            return self._resize_to(arr[top:top + crop_h, left:left + crop_w], th, tw)
        if self.pad_to_aspect_ratio:
            ratio = max(w / tw, h / th)
            rh_float, rw_float = h / ratio, w / ratio
            rh, rw = max(int(np.floor(rh_float)), 1), max(int(np.floor(rw_float)), 1)
            top = max(0, int(np.floor((th - rh_float) / 2)))
            left = max(0, int(np.floor((tw - rw_float) / 2)))
            out = np.zeros((th, tw, arr.shape[2]), dtype=np.float32)
            out[top:top + rh, left:left + rw] = self._resize_to(arr, rh, rw)
            return out
        return self._resize_to(arr, th, tw)

    def _decode(self, path):
        try:
            with self._image.open(path) as img:
                arr = np.asarray(img.convert(self._pil_mode), dtype=np.float32)
        except (OSError, ValueError, SyntaxError, self._image.DecompressionBombError) as err:
            raise ValueError(f"cannot decode {path!r} as an image ({type(err).__name__}: "
                             f"{err}); remove it from the folder") from None
        return self._resize(arr if arr.ndim == 3 else arr[..., None])

    def _get_batch(self, idx, rng, part=None):
        xb = np.empty((len(idx),) + self.image_shape, dtype=np.float32)
        for j, i in enumerate(idx):
            xb[j] = self._decode(self._paths[int(i)])
        if self.label_mode is None:
            return xb
        labels = self._labels[idx]
        if self.label_mode == "int":
            return xb, labels.astype(np.int32)
        if self.label_mode == "binary":
            return xb, labels.astype(np.float32).reshape(-1, 1)
        y = np.zeros((len(idx), len(self.class_names)), dtype=np.float32)
        y[np.arange(len(idx)), labels] = 1
        return xb, y

    # ------------------------------------------------------------ passes
    def __iter__(self):
        """A fresh pass over the files (reshuffled each time when ``shuffle``)."""
        epoch = self._passes
        self._passes += 1
        return _Pass(self, ("pass", epoch))

    def _content(self):
        return self._digest

    def _epoch_key(self, epoch):
        # Passes of iter() are ("pass", k), numbered apart from next()'s epochs, with seeds
        # of their own.
        return [epoch[1], 2] if isinstance(epoch, tuple) else [epoch]

    def _advance(self, epoch, i):
        if isinstance(epoch, tuple):
            if i + 1 >= self._batches_in(epoch):
                return ("end", epoch[1]), 0
            return epoch, i + 1
        return super()._advance(epoch, i)

    # ------------------------------------------------- tf.data's idioms
    def cache(self, filename=""):
        """tf.data's ``cache()``: accepted, changes nothing (files are decoded per pass)."""
        return self

    def prefetch(self, buffer_size=None):
        """tf.data's ``prefetch()``: accepted, changes nothing (two batches are decoded
        ahead already)."""
        return self

    def map(self, fn):
        """tf.data's ``map``: the batches passed through ``fn`` (called as ``fn(x, y)`` on an
        (x, y) batch, ``fn(x)`` on images alone), applied as they are served, e.g.
        ``ds.map(lambda x, y: (x / 255.0, y))``. The mapped dataset has this one's
        ``len``, passes, ``next`` and state/shard protocol."""
        if not callable(fn):
            raise TypeError(f"map takes a function, got {type(fn).__name__}")
        return _Mapped(self, fn)

    def take(self, count):
        """The first ``count`` batches of a fresh pass (all of them for -1), as tf.data's
        ``take``: ``for images, labels in ds.take(1): ...``."""
        if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < -1:
            raise ValueError(f"take: count must be an int >= -1, got {count!r}")
        return _Take(self, int(count))



class _Pass:
    """One pass over an ImageDataset: ``len(ds)`` batches, decoded ahead in a thread."""

    def __init__(self, ds, epoch):
        self._ds = ds
        self._epoch = epoch
        self._count = ds._batches_in(epoch)
        self._done = 0
        self._loader = None

    def __iter__(self):
        return self

    def __len__(self):
        return self._count - self._done

    def __next__(self):
        if self._done >= self._count:
            self.close()
            raise StopIteration
        if self._loader is None:
            self._loader = _Loader(self._ds, self._epoch, 0, self._ds.load_ahead,
                                   last_epoch=self._epoch)
        try:
            _, _, batch = self._loader.get()
        except BaseException:
            self.close()
            raise
        self._done += 1
        return batch

    def close(self):
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.close()

    def __del__(self):
        self.close()


def _apply(fn, batch):
    return fn(*batch) if isinstance(batch, tuple) else fn(batch)


class _Mapped:
    """``ImageDataset.map(fn)``: the dataset's batches through ``fn`` (delegates the rest)."""

    def __init__(self, ds, fn):
        self._ds, self._fn = ds, fn

    def __len__(self):
        return len(self._ds)

    def __iter__(self):
        for batch in iter(self._ds):
            yield _apply(self._fn, batch)

    def __next__(self):
        return _apply(self._fn, next(self._ds))

    def next(self):
        return self.__next__()

    def __getitem__(self, i):
        return _apply(self._fn, self._ds[i])

    def map(self, fn):
        if not callable(fn):
            raise TypeError(f"map takes a function, got {type(fn).__name__}")
        return _Mapped(self, fn)

    def take(self, count):
        return _Take(self, count)

    def cache(self, filename=""):
        return self

    def prefetch(self, buffer_size=None):
        return self

    def __getattr__(self, name):   # class_names, file_paths, state(), set_shard(), close() ...
        return getattr(self._ds, name)


class _Take:
    def __init__(self, ds, count):
        self._ds, self._count = ds, count

    def __iter__(self):
        it = iter(self._ds)
        for _ in range(len(self)):
            yield next(it)
        it.close()

    def __len__(self):
        return len(self._ds) if self._count < 0 else min(self._count, len(self._ds))


# ------------------------------------------------------------------ the function
def _check_bool(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def image_dataset_from_directory(directory, labels="inferred", label_mode="int",
                                 class_names=None, color_mode="rgb", batch_size=32,
                                 image_size=(256, 256), shuffle=True, seed=None,
                                 validation_split=None, subset=None, interpolation="bilinear",
                                 follow_links=False, crop_to_aspect_ratio=False,
                                 pad_to_aspect_ratio=False, verbose=True):
    """Keras's ``keras.utils.image_dataset_from_directory`` (its arguments, defaults, file
    order and validation split; see the module docstring). Returns an
    :class:`ImageDataset`, or ``[train, validation]`` for ``subset='both'``."""
    if labels != "inferred" and labels is not None:
        if not isinstance(labels, (list, tuple)):
            raise ValueError(f"labels must be 'inferred', None or a list/tuple of integer "
                             f"labels (one per image file), got {labels!r}")
        if class_names:
            raise ValueError(f"class_names can only be given with labels='inferred', got "
                             f"labels={labels!r} and class_names={class_names!r}")
    if labels is None and class_names is not None:
        raise ValueError(f"class_names cannot be given with labels=None (no labels), got "
                         f"class_names={class_names!r}")
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if labels is None or label_mode is None:
        labels = label_mode = None
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {tuple(COLOR_MODES)}, got "
                         f"{color_mode!r}")
    if batch_size is None:
        raise ValueError("batch_size=None (unbatched samples) is not supported: fastcnn's "
                         "dataset yields batches; pass a positive int")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    image_size = utils._target_size(image_size, "image_size")
    if not isinstance(interpolation, str) or interpolation.lower() not in INTERPOLATIONS:
        extra = (f" ({interpolation!r} is Keras's, but Pillow has no such filter)"
                 if isinstance(interpolation, str) and interpolation.lower() in _KERAS_ONLY
                 else "")
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got "
                         f"{interpolation!r}{extra}")
    interpolation = interpolation.lower()
    for value, name in ((shuffle, "shuffle"), (follow_links, "follow_links"),
                        (crop_to_aspect_ratio, "crop_to_aspect_ratio"),
                        (pad_to_aspect_ratio, "pad_to_aspect_ratio"), (verbose, "verbose")):
        _check_bool(value, name)
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ValueError("only one of crop_to_aspect_ratio and pad_to_aspect_ratio can be "
                         "True")
    seed = utils.check_seed(seed, allow_none=True)
    if validation_split is not None:
        if not isinstance(validation_split, numbers.Real) or isinstance(validation_split, bool):
            raise ValueError(f"validation_split must be None or a float in (0, 1), got "
                             f"{validation_split!r}")
        if validation_split and not 0 < validation_split < 1:
            raise ValueError(f"validation_split must be a float in (0, 1), got "
                             f"{validation_split!r}")
    if subset not in ("training", "validation", "both", None):
        raise ValueError(f"subset must be None, 'training', 'validation' or 'both', got "
                         f"{subset!r}")
    if bool(validation_split) != bool(subset):
        raise ValueError(f"subset and validation_split go together: got subset={subset!r}, "
                         f"validation_split={validation_split!r}")
    if validation_split and shuffle and seed is None:
        raise ValueError("validation_split with shuffle=True needs a seed (the same one for "
                         "the training and the validation call), so that the two subsets "
                         "do not overlap")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {os.fspath(directory)!r} does not exist or is not "
                                f"a folder")
    _require_pillow()
    if seed is None:
        seed = int(utils.get_rng().integers(10**6))
    paths, found, names = index_directory(directory, labels, class_names=class_names,
                                          shuffle=shuffle, seed=seed,
                                          follow_links=follow_links)
    if verbose and launcher_rank() == 0:   # under mpiexec: said once
        if found is None:
            print(f"Found {len(paths)} files.")
        else:
            print(f"Found {len(paths)} files belonging to {len(names)} classes.")
    if not paths:
        raise ValueError(f"no images found under {os.fspath(directory)!r} (looked for "
                         f"{', '.join(ALLOWLIST_FORMATS)}"
                         + (" in each class sub-folder)" if labels == "inferred" else ")"))
    if label_mode == "binary" and len(names) != 2:
        raise ValueError(f"label_mode='binary' needs exactly 2 classes, got {len(names)}: "
                         f"{names}")
    if label_mode == "categorical" and found is not None and found.size \
            and (found.min() < 0 or found.max() >= len(names)):
        raise ValueError(f"label_mode='categorical' needs labels in 0..{len(names) - 1}, got "
                         f"labels from {found.min()} to {found.max()}")

    def make(part_paths, part_labels, part_shuffle):
        return ImageDataset(part_paths, part_labels, label_mode, names, color_mode,
                            batch_size, image_size, part_shuffle, seed, interpolation,
                            crop_to_aspect_ratio, pad_to_aspect_ratio, directory)

    if subset == "both":
        train = _split(paths, found, validation_split, "training", directory)
        val = _split(paths, found, validation_split, "validation", directory)
        return [make(*train, shuffle), make(*val, False)]
    return make(*_split(paths, found, validation_split, subset, directory), shuffle)
