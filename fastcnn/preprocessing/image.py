"""Keras's ``ImageDataGenerator``: batches from arrays or image folders, randomly augmented.

``ImageDataGenerator(...).flow(x, y)`` and ``.flow_from_directory(path)`` return iterators
that work like Keras's: infinite (``next()`` cycles epochs, reshuffling each one),
indexable (``it[i]`` is batch ``i`` of the current epoch), ``len(it)`` batches per epoch,
and accepted by ``Sequential.fit`` / ``evaluate`` / ``predict``.

Determinism: an iterator draws one base seed at construction (from ``seed``, else from
fastcnn's generator, so ``fastcnn.set_random_seed`` fixes it) and every epoch's order and
every batch's augmentation is a pure function of (base seed, epoch, batch index). That is
what lets a background thread load ahead without changing what the consumer sees.

Unreadable files (``flow_from_directory``): files are listed by extension; other files are
reported in one warning and ignored. A listed file that fails to decode is reported once
(:class:`BadImageWarning` naming it), its slot in the current batch is filled with another
image of the same batch (so batch shapes stay fixed), and it is left out of later epochs.
``filenames``/``classes``/``samples`` keep describing the listing; ``skipped`` names the
files dropped so far.

Sharing batches out (the state/shard protocol of :class:`Iterator`, which
:mod:`fastcnn.distributed` uses): ``batch_size`` is the GLOBAL batch, and an iterator told its
shard (``set_shard(rank, size)``) serves only its contiguous part of each batch: a folder
iterator decodes only its own files. The random augmentation of a batch is drawn for the
whole batch and each process applies its part, so the processes together see exactly the
batches one process would see. ``fit``/``evaluate``/``predict`` under MPI give every process
rank 0's state (``state()``/``set_state()``) and its shard first. With a shard, an
undecodable file stays in the order (each process still fills its slot from its own share),
so that every process keeps cutting the same batches. This module does not import
:mod:`fastcnn.distributed`.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import queue
import threading
import warnings
import weakref

import numpy as np

from .. import config, utils
from ._affine import FILL_MODES, _matrices, affine_matrix, warp_batch

__all__ = ["ImageDataGenerator", "Iterator", "NumpyArrayIterator", "DirectoryIterator",
           "BadImageWarning", "affine_matrix", "IMAGE_EXTENSIONS", "load_img", "img_to_array",
           "array_to_img", "save_img"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CLASS_MODES = ("categorical", "binary", "sparse", None)
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1), "rgba": ("RGBA", 4)}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class BadImageWarning(UserWarning):
    """A file in an image folder could not be decoded and was skipped."""


def _real(value, name, *, low=0.0, high=None):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) \
            or value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _positive_int(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _require_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "flow_from_directory needs Pillow to decode images; install the extra with "
            "pip install 'fastcnn[image]' (or pip install pillow)") from None
    return Image


def shard_bounds(count, rank, size):
    """``(lo, hi)``: the contiguous part of ``count`` samples that shard ``rank`` of ``size``
    takes; parts differ by at most one sample, the larger ones first (the same rule as
    ``fastcnn.distributed``'s arrays), so concatenating them in rank order gives the batch."""
    base, extra = divmod(int(count), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def launcher_rank():
    """This process's rank as an MPI launcher numbered it (0 without one), from the
    variables MPICH/Intel MPI (and srun's PMI), Open MPI and MVAPICH set: what decides that
    only one process of an ``mpiexec`` run prints "Found N images ..."."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return 0


# ------------------------------------------------------- Keras 2 spellings
def _keras2(name):
    warnings.warn(f"fastcnn.preprocessing.image.{name} is Keras 2's spelling; use "
                  f"fastcnn.utils.{name} (Keras 3's keras.utils.{name})",
                  DeprecationWarning, stacklevel=3)


def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest",
             keep_aspect_ratio=False):
    """Keras 2's ``keras.preprocessing.image.load_img``: :func:`fastcnn.utils.load_img`,
    with a DeprecationWarning."""
    _keras2("load_img")
    return utils.load_img(path, color_mode=color_mode, target_size=target_size,
                          interpolation=interpolation, keep_aspect_ratio=keep_aspect_ratio)


def img_to_array(img, data_format=None, dtype=None):
    """Keras 2's ``keras.preprocessing.image.img_to_array``: :func:`fastcnn.utils.img_to_array`,
    with a DeprecationWarning."""
    _keras2("img_to_array")
    return utils.img_to_array(img, data_format=data_format, dtype=dtype)


def array_to_img(x, data_format=None, scale=True, dtype=None):
    """Keras 2's ``keras.preprocessing.image.array_to_img``: :func:`fastcnn.utils.array_to_img`,
    with a DeprecationWarning."""
    _keras2("array_to_img")
    return utils.array_to_img(x, data_format=data_format, scale=scale, dtype=dtype)


def save_img(path, x, data_format=None, file_format=None, scale=True, **kwargs):
    """Keras 2's ``keras.preprocessing.image.save_img``: :func:`fastcnn.utils.save_img`,
    with a DeprecationWarning."""
    _keras2("save_img")
    return utils.save_img(path, x, data_format=data_format, file_format=file_format,
                          scale=scale, **kwargs)


class ImageDataGenerator:
    """Random augmentation and rescaling of image batches (Keras's names and semantics).

    ``width_shift_range`` / ``height_shift_range``: a fraction of the size when < 1, else
    pixels; ``zoom_range``: z gives factors in [1 - z, 1 + z] (or a pair [lower, upper]);
    ``rotation_range`` and ``shear_range`` in degrees; ``fill_mode`` one of 'nearest',
    'constant' (with ``cval``), 'reflect', 'wrap'. Augmentation is applied, then ``rescale``.
    """

    def __init__(self, rescale=None, rotation_range=0, width_shift_range=0.0,
                 height_shift_range=0.0, shear_range=0.0, zoom_range=0.0,
                 horizontal_flip=False, vertical_flip=False, fill_mode="nearest",
                 validation_split=0.0, cval=0.0):
        if rescale is not None:
            if not isinstance(rescale, numbers.Real) or isinstance(rescale, bool) \
                    or not math.isfinite(rescale):
                raise ValueError(f"rescale must be None or a finite number, got {rescale!r}")
            rescale = float(rescale)
        self.rescale = rescale or None   # Keras treats 0 as "no rescaling"
        self.rotation_range = _real(rotation_range, "rotation_range")
        self.width_shift_range = _real(width_shift_range, "width_shift_range")
        self.height_shift_range = _real(height_shift_range, "height_shift_range")
        self.shear_range = _real(shear_range, "shear_range")
        if isinstance(zoom_range, (list, tuple)) and len(zoom_range) == 2:
            lo, hi = (_real(z, "zoom_range") for z in zoom_range)
            if lo > hi:
                raise ValueError(f"zoom_range must be [lower, upper] with lower <= upper, "
                                 f"got {zoom_range!r}")
        else:
            if isinstance(zoom_range, (list, tuple)):
                raise ValueError(f"zoom_range must be a float or a pair [lower, upper], "
                                 f"got {zoom_range!r}")
            z = _real(zoom_range, "zoom_range")
            lo, hi = 1.0 - z, 1.0 + z
        if lo <= 0 and (lo, hi) != (1.0, 1.0):
            raise ValueError(f"zoom_range must give factors > 0, got {zoom_range!r}")
        self.zoom_range = (lo, hi)
        if not isinstance(horizontal_flip, bool):
            raise ValueError(f"horizontal_flip must be a bool, got {horizontal_flip!r}")
        if not isinstance(vertical_flip, bool):
            raise ValueError(f"vertical_flip must be a bool, got {vertical_flip!r}")
        self.horizontal_flip, self.vertical_flip = horizontal_flip, vertical_flip
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        self.fill_mode = fill_mode
        self.cval = _real(cval, "cval", low=-math.inf)
        self.validation_split = _real(validation_split, "validation_split", high=1.0)

    @property
    def _has_affine(self):
        return bool(self.rotation_range or self.width_shift_range or self.height_shift_range
                    or self.shear_range or self.zoom_range != (1.0, 1.0))

    def random_matrices(self, n, h, w, rng):
        """(n, 3, 3) random inverse maps for images of h x w pixels (see ``_affine``)."""
        def draw(r):
            return rng.uniform(-r, r, n) if r else np.zeros(n)
        theta = draw(self.rotation_range)
        hs, ws = self.height_shift_range, self.width_shift_range
        tx = draw(hs) * (h if hs < 1 else 1.0)
        ty = draw(ws) * (w if ws < 1 else 1.0)
        shear = draw(self.shear_range)
        if self.zoom_range == (1.0, 1.0):
            zx = zy = np.ones(n)
        else:
            zx, zy = rng.uniform(self.zoom_range[0], self.zoom_range[1], (2, n))
        return _matrices(h, w, theta, tx, ty, shear, zx, zy)

    def _transform_batch(self, x, rng, part=None):
        """Augments then rescales a float (N, H, W, C) batch the caller owns: flips and
        rescaling write into ``x`` (the iterators pass a fresh copy), the warp makes a new one.

        ``part=(lo, hi, total)``: ``x`` holds images lo..hi of a batch of ``total``; the
        random draws are made for the whole batch and this part's are applied (what makes
        the augmentation independent of the number of MPI processes).
        """
        n, h, w = x.shape[:3]
        lo, hi, total = part if part is not None else (0, n, n)
        if self._has_affine:
            matrices = self.random_matrices(total, h, w, rng)[lo:hi]
            if n:
                x = warp_batch(x, matrices, self.fill_mode, self.cval)
        if self.horizontal_flip:
            flip = (rng.random(total) < 0.5)[lo:hi]
            x[flip] = x[flip, :, ::-1]
        if self.vertical_flip:
            flip = (rng.random(total) < 0.5)[lo:hi]
            x[flip] = x[flip, ::-1]
        if self.rescale is not None:
            x *= x.dtype.type(self.rescale)
        return x

    def flow(self, x, y=None, batch_size=32, shuffle=True, seed=None, subset=None):
        """Batches ``(x, y)`` (or x alone when y is None) from arrays, augmented.

        ``subset`` 'validation' / 'training' (with ``validation_split``): Keras's split, the
        FIRST ``int(validation_split * len(x))`` samples are the validation part.
        """
        return NumpyArrayIterator(x, y, self, batch_size=batch_size, shuffle=shuffle, seed=seed,
                                  subset=subset)

    def flow_from_directory(self, directory, target_size=(256, 256), color_mode="rgb",
                            class_mode="categorical", batch_size=32, shuffle=True, seed=None,
                            subset=None, interpolation="nearest"):
        """Batches from ``directory/<class>/*.jpg|png|...`` (one sub-folder per class)."""
        return DirectoryIterator(directory, self, target_size=target_size,
                                 color_mode=color_mode, class_mode=class_mode,
                                 batch_size=batch_size, shuffle=shuffle, seed=seed,
                                 subset=subset, interpolation=interpolation)


class Iterator:
    """Infinite, indexable batches over ``n`` samples (the part Keras's iterators share).

    ``next(it)`` serves batch ``batch_index`` of epoch ``epoch`` and moves on (an epoch's
    order is a pure function of the iterator's base seed and the epoch number);
    ``it[i]`` is batch i of the current epoch; ``len(it)`` batches per epoch. Subclasses
    with ``load_ahead > 0`` compute the next batches in a background thread (``close()``
    stops it; a later ``next()`` starts a new one where it was).

    State and shard protocol (public; what :mod:`fastcnn.distributed` uses, through these
    methods only, and what a program may use to save and restore an iterator's position):

    * ``state() -> dict``: ``{"base_seed", "epoch", "batch_index", "samples",
      "batch_size", "shuffle", "content"}``, plain Python values (picklable, JSON-able);
      ``content`` is a digest of the file names a folder iterator reads (None for arrays);
    * ``set_state(state)``: goes on from ``state`` (taken from this iterator or from one
      built alike: the same ``samples``, ``batch_size`` and ``content``, else ValueError):
      the same base seed, epoch and position give the same batches. Batches loaded ahead
      are dropped; setting the state it already has changes nothing;
    * ``set_shard(rank, size)``: from then on every batch served is only part ``rank`` of
      ``size`` of the global batch (contiguous, :func:`shard_bounds`: the larger parts
      first), its random augmentation still drawn for the whole batch;
      ``set_shard(0, 1)`` (the default) serves whole batches; ``shard`` gives
      ``(rank, size)``.
    """

    load_ahead = 0   # batches a background thread computes ahead (0: computed in next())

    def __init__(self, n, batch_size, shuffle, seed):
        self._loader = None
        self.batch_size = _positive_int(batch_size, "batch_size")
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle must be a bool, got {shuffle!r}")
        self.shuffle = shuffle
        self.seed = utils.check_seed(seed, allow_none=True)
        self._base = int(utils.make_rng(self.seed).integers(2**62))
        self._active = np.arange(n)       # sample indices still served (folders drop bad files)
        self._orders = {}                 # epoch -> that epoch's frozen order (a few kept)
        self._lock = threading.Lock()
        self._shard = (0, 1)
        self._epoch = 0
        self.batch_index = 0
        self.total_batches_seen = 0

    @property
    def n(self):
        return len(self._active)

    def __len__(self):
        return -(-self.n // self.batch_size)

    # ------------------------------------------------ state/shard protocol
    @property
    def epoch(self):
        """The epoch the next batch of ``next()`` belongs to (0 first)."""
        return self._epoch

    @property
    def shard(self):
        """``(rank, size)``: which part of each global batch this iterator serves."""
        return self._shard

    def state(self):
        """Where the iterator is: see the class docstring."""
        return {"base_seed": int(self._base), "epoch": int(self._epoch),
                "batch_index": int(self.batch_index), "samples": int(self.n),
                "batch_size": int(self.batch_size), "shuffle": bool(self.shuffle),
                "content": self._content()}

    def _content(self):
        """A digest of what the samples are, where that is cheap to know (folders)."""
        return None

    def set_state(self, state):
        """Goes on from ``state`` (a dict from :meth:`state`): see the class docstring."""
        if not isinstance(state, dict):
            raise TypeError(f"set_state takes the dict state() returns, got "
                            f"{type(state).__name__}")
        missing = [k for k in ("base_seed", "epoch", "batch_index") if k not in state]
        if missing:
            raise ValueError(f"set_state: the state lacks {missing} (it must come from "
                             f"state())")
        for key, mine in (("samples", self.n), ("batch_size", self.batch_size),
                          ("content", self._content())):
            if state.get(key) is not None and mine is not None and state[key] != mine:
                raise ValueError(f"set_state: the state is of an iterator with {key}="
                                 f"{state[key]!r}, this one has {key}={mine!r}")
        base, epoch, index = (int(state[k]) for k in ("base_seed", "epoch", "batch_index"))
        if epoch < 0 or index < 0:
            raise ValueError(f"set_state: epoch and batch_index must be >= 0, got "
                             f"epoch={epoch}, batch_index={index}")
        if (base, epoch, index) == (self._base, self._epoch, self.batch_index):
            return
        self.close()
        with self._lock:
            if base != self._base:
                self._base = base
                self._orders.clear()
        self._epoch, self.batch_index = epoch, index

    def set_shard(self, rank, size):
        """Serves part ``rank`` of ``size`` of every batch from now on (class docstring)."""
        for value, name in ((rank, "rank"), (size, "size")):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"set_shard: {name} must be an int, got {value!r}")
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"set_shard: need size >= 1 and 0 <= rank < size, got "
                             f"rank={rank!r}, size={size!r}")
        if (int(rank), int(size)) != self._shard:
            self.close()
            self._shard = (int(rank), int(size))

    # ------------------------------------------------------------ batches
    def _order(self, epoch):
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = self._active
                if self.shuffle:
                    perm = np.random.default_rng([self._base, *self._epoch_key(epoch), 0]) \
                        .permutation(len(order))
                    order = order[perm]
                # Keep a few recent orders (the consumer's and the ones loaded ahead).
                while len(self._orders) >= 4:
                    del self._orders[next(iter(self._orders))]
                self._orders[epoch] = order
            return order

    def _epoch_key(self, epoch):
        """The ints that stand for ``epoch`` in the seeds of its order and augmentation."""
        return [epoch]

    def _batches_in(self, epoch):
        return -(-len(self._order(epoch)) // self.batch_size)

    def _advance(self, epoch, i):
        if i + 1 >= self._batches_in(epoch):
            return epoch + 1, 0
        return epoch, i + 1

    def _batch_at(self, epoch, i):
        idx = self._order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        rng = np.random.default_rng([self._base, *self._epoch_key(epoch), 1, i])
        rank, size = self._shard
        if size == 1:
            return self._get_batch(idx, rng)
        # A shard: only this part of the global batch is read.
        lo, hi = shard_bounds(len(idx), rank, size)
        return self._get_batch(idx[lo:hi], rng, (lo, hi, len(idx)))

    def __getitem__(self, i):
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise TypeError(f"batch index must be an int, got {i!r}")
        count = self._batches_in(self._epoch)
        if not 0 <= i < count:
            raise IndexError(f"batch index {i} out of range: this epoch has {count} batches")
        return self._batch_at(self._epoch, int(i))

    def __iter__(self):
        return self

    def __next__(self):
        if not self.load_ahead:
            epoch, i = self._epoch, self.batch_index
            batch = self._batch_at(epoch, i)
        else:
            if self._loader is None or not self._loader.alive():
                self._loader = _Loader(self, self._epoch, self.batch_index,
                                       self.load_ahead)
            try:
                epoch, i, batch = self._loader.get()
            except BaseException:
                self.close()
                raise
        self._epoch, self.batch_index = self._advance(epoch, i)
        self.total_batches_seen += 1
        return batch

    def next(self):
        return self.__next__()

    def reset(self):
        """Starts again from the first batch of the first epoch (same order, same augmentation)."""
        self.close()
        self._epoch = 0
        self.batch_index = 0

    def on_epoch_end(self):
        """Keras's hook: moves on to the next epoch (a fresh order) at its first batch."""
        self.close()
        self._epoch += 1
        self.batch_index = 0

    def close(self):
        """Stops the loading thread, if any (a later ``next()`` starts a new one where
        this one was)."""
        loader, self._loader = getattr(self, "_loader", None), None
        if loader is not None:
            loader.close()

    def __del__(self):
        self.close()

    @property
    def _thread(self):
        loader = self._loader
        return None if loader is None else loader.thread

    def _get_batch(self, idx, rng, part=None):
        """The batch of samples ``idx``; ``part=(lo, hi, total)`` when they are images lo..hi
        of a global batch of ``total`` (see ``_transform_batch``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _get_batch")


class NumpyArrayIterator(Iterator):
    """``ImageDataGenerator.flow``: batches of an (N, H, W, C) array (and targets)."""

    def __init__(self, x, y, image_data_generator, batch_size=32, shuffle=True, seed=None,
                 subset=None):
        x = np.asarray(x)
        if x.ndim != 4 or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"x must be a numeric (N, H, W, C) array of images, got shape "
                             f"{x.shape} dtype {x.dtype}")
        if len(x) == 0:
            raise ValueError("x must hold at least one image, got 0")
        if y is not None:
            y = np.asarray(y)
            if y.ndim == 0 or len(y) != len(x):
                raise ValueError(f"x and y must have the same number of samples: x has "
                                 f"{len(x)}, y has shape {y.shape}")
        if subset is not None:
            split = _check_subset(subset, image_data_generator)
            total = len(x)
            cut = int(split * total)
            part = slice(0, cut) if subset == "validation" else slice(cut, None)
            x, y = x[part], (None if y is None else y[part])
            if len(x) == 0:
                raise ValueError(f"subset={subset!r} is empty: validation_split={split} of "
                                 f"{total} samples leaves none in it")
        self.x, self.y = x, y
        self.image_data_generator = image_data_generator
        self.dtype = np.dtype(config.floatx())
        super().__init__(len(x), batch_size, shuffle, seed)

    def _get_batch(self, idx, rng, part=None):
        xb = self.image_data_generator._transform_batch(self.x[idx].astype(self.dtype), rng,
                                                        part)
        return xb if self.y is None else (xb, self.y[idx])


def _check_subset(subset, image_data_generator):
    if subset not in ("training", "validation"):
        raise ValueError(f"subset must be None, 'training' or 'validation', got {subset!r}")
    split = image_data_generator.validation_split
    if not split:
        raise ValueError(f"subset={subset!r} needs ImageDataGenerator(validation_split=...) "
                         f"> 0, got validation_split={split}")
    return split


def _list_directory(directory, split, subset):
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory!r} does not exist or is not a folder")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise ValueError(f"directory {directory!r} has no class sub-folders: put the images "
                         f"of each class in their own folder (directory/cats/*.jpg, ...)")
    filenames, labels, ignored = [], [], []
    for k, name in enumerate(classes):
        found = []
        for root, dirs, files in os.walk(os.path.join(directory, name)):
            dirs.sort()
            for f in sorted(files):
                rel = os.path.relpath(os.path.join(root, f), directory)
                (found if f.lower().endswith(IMAGE_EXTENSIONS) else ignored).append(rel)
        if subset is not None:
            # Keras's split: validation is the FIRST int(split * n) files of each class.
            cut = int(split * len(found))
            found = found[:cut] if subset == "validation" else found[cut:]
        filenames += found
        labels += [k] * len(found)
    return classes, filenames, np.array(labels, dtype=np.int64), ignored


class DirectoryIterator(Iterator):
    """``ImageDataGenerator.flow_from_directory``: decoded, resized, augmented folder images.

    ``next()`` is served by a background thread that decodes up to two batches ahead
    (decoding and resizing in Pillow release the GIL); ``close()`` stops it.
    """

    load_ahead = 2

    def __init__(self, directory, image_data_generator, target_size=(256, 256),
                 color_mode="rgb", class_mode="categorical", batch_size=32, shuffle=True,
                 seed=None, subset=None, interpolation="nearest"):
        self._loader = None
        self._image = _require_pillow()
        try:
            th, tw = target_size
        except (TypeError, ValueError):
            raise ValueError(f"target_size must be a pair (height, width), got "
                             f"{target_size!r}") from None
        for v in (th, tw):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"target_size must be two positive ints (height, width), "
                                 f"got {target_size!r}")
        if color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {list(COLOR_MODES)}, got {color_mode!r}")
        if class_mode not in CLASS_MODES:
            raise ValueError(f"class_mode must be one of {list(CLASS_MODES)}, got {class_mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got "
                             f"{interpolation!r}")
        split = _check_subset(subset, image_data_generator) if subset is not None else 0.0
        self.directory = os.fspath(directory)
        self.image_data_generator = image_data_generator
        self.target_size = (int(th), int(tw))
        self.color_mode, self.class_mode, self.subset = color_mode, class_mode, subset
        self.interpolation = interpolation
        self._pil_mode, channels = COLOR_MODES[color_mode]
        self.image_shape = self.target_size + (channels,)
        self.dtype = np.dtype(config.floatx())
        names, self.filenames, self.classes, ignored = _list_directory(
            self.directory, split, subset)
        self.class_indices = {name: k for k, name in enumerate(names)}
        self.num_classes = len(names)
        self.samples = len(self.filenames)
        if ignored:
            shown = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
            warnings.warn(f"{len(ignored)} file(s) in {self.directory!r} are not images "
                          f"(extension not in {IMAGE_EXTENSIONS}) and are ignored: {shown}",
                          BadImageWarning, stacklevel=3)
        if launcher_rank() == 0:   # under mpiexec: said once
            print(f"Found {self.samples} images belonging to {self.num_classes} classes.")
        if self.samples == 0:
            raise ValueError(f"no images found under {self.directory!r}"
                             + (f" for subset {subset!r}" if subset else "")
                             + f" (looked for {', '.join(IMAGE_EXTENSIONS)} in each class "
                             f"sub-folder)")
        if class_mode == "binary" and self.num_classes != 2:
            raise ValueError(f"class_mode='binary' needs exactly 2 class sub-folders, "
                             f"{self.directory!r} has {self.num_classes}: {names}")
        self.skipped = []
        self._bad = set()
        self._resample = getattr(self._image.Resampling, interpolation.upper())
        super().__init__(self.samples, batch_size, shuffle, seed)

    def _content(self):
        digest = hashlib.blake2b(digest_size=8)
        for name in self.filenames:
            digest.update(name.encode("utf-8", "replace") + b"\0")
        return digest.hexdigest()

    @property
    def filepaths(self):
        return [os.path.join(self.directory, f) for f in self.filenames]

    # -------------------------------------------------------------- decoding
    def _decode(self, i):
        """Image i as a uint8 (H, W, C) array, or None (warned once) when it cannot be read."""
        if i in self._bad:
            return None
        path = os.path.join(self.directory, self.filenames[i])
        try:
            with self._image.open(path) as img:
                img = img.convert(self._pil_mode)
                size = (self.target_size[1], self.target_size[0])
                if img.size != size:
                    img = img.resize(size, self._resample)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, self._image.DecompressionBombError) as err:
            with self._lock:
                if i not in self._bad:
                    self._bad.add(i)
                    self.skipped.append(self.filenames[i])
                    # With a shard, the other shards do not know this file is bad: dropping
                    # it here alone would make them cut different batches.
                    alone = self._shard[1] == 1
                    if alone:
                        self._active = self._active[self._active != i]
                    later = ("it is left out of later epochs" if alone else
                             "its slot is filled from the same batch in every epoch")
                    warnings.warn(f"skipping {path}: it cannot be decoded as an image "
                                  f"({type(err).__name__}: {err}); {later}",
                                  BadImageWarning, stacklevel=2)
            return None
        return arr if arr.ndim == 3 else arr[..., None]

    def _get_batch(self, idx, rng, part=None):
        xb = np.empty((len(idx),) + self.image_shape, dtype=self.dtype)
        labels = self.classes[idx].copy()
        missing = []
        for j, i in enumerate(idx):
            arr = self._decode(int(i))
            if arr is None:
                missing.append(j)
            else:
                xb[j] = arr
        if missing:
            good = [j for j in range(len(idx)) if j not in missing]
            if good:
                src = good[0]
            else:   # a whole batch of bad files: borrow the first readable image anywhere
                src = None
                for i in list(self._active):
                    arr = self._decode(int(i))
                    if arr is not None:
                        xb[missing[0]], labels[missing[0]] = arr, self.classes[i]
                        src = missing[0]
                        break
                if src is None:
                    raise ValueError(f"none of the images under {self.directory!r} could "
                                     f"be decoded")
            for j in missing:
                xb[j], labels[j] = xb[src], labels[src]
        xb = self.image_data_generator._transform_batch(xb, rng, part)
        if self.class_mode is None:
            return xb
        if self.class_mode == "categorical":
            y = np.zeros((len(idx), self.num_classes), dtype=self.dtype)
            y[np.arange(len(idx)), labels] = 1
        else:   # 'binary' and 'sparse': the class index as a float, as Keras gives it
            y = labels.astype(self.dtype)
        return xb, y


class _Loader:
    """A background thread computing ``it._batch_at(epoch, i)`` in consumption order, up to
    ``depth`` batches ahead (decoding and resizing in Pillow and NumPy's loops release the
    GIL, so this overlaps with training). It holds the iterator only weakly, and stops at
    the end of epoch ``last_epoch`` when one is given (a finite pass). ``get()`` returns
    ``(epoch, i, batch)``, re-raises an error of the thread, raises StopIteration at the end
    of a finite pass."""

    def __init__(self, it, epoch, i, depth, last_epoch=None):
        self.queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=_produce,
            args=(weakref.ref(it), self.queue, self.stop, epoch, i, last_epoch),
            name="fastcnn-image-prefetch", daemon=True)
        self.thread.start()

    def alive(self):
        return self.thread.is_alive() or not self.queue.empty()

    def get(self):
        while True:
            try:
                item = self.queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("the image-loading thread stopped unexpectedly") \
                        from None
        if item is None:
            raise StopIteration
        epoch, i, batch, err = item
        if err is not None:
            raise err
        return epoch, i, batch

    def close(self):
        self.stop.set()
        thread = self.thread
        if thread is threading.current_thread():
            return
        while thread.is_alive():
            try:   # unblock a producer waiting on a full queue
                self.queue.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)

    def __del__(self):
        self.stop.set()


def _produce(ref, q, stop, epoch, i, last_epoch=None):
    """The loading thread: batches in consumption order; holds the iterator only weakly."""
    while not stop.is_set():
        it = ref()
        if it is None:
            return
        if last_epoch is not None and epoch != last_epoch:
            item = None   # the end of a finite pass
        else:
            try:
                item = (epoch, i, it._batch_at(epoch, i), None)
                epoch, i = it._advance(epoch, i)
            except BaseException as err:   # re-raised in the consumer's thread
                item = (epoch, i, None, err)
        del it
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                break
            except queue.Full:
                if ref() is None:
                    return
        if item is None or item[3] is not None:
            return
