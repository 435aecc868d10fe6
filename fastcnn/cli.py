"""The ``fastcnn`` command (also ``python -m fastcnn``).

* ``fastcnn train``: trains a CNN and prints Keras-style epoch lines and the test accuracy.
  With no options: the small :func:`fastcnn.models.digits_cnn` on the bundled 8x8 digits (no
  network needed), 20 epochs. ``--dataset`` picks mnist, fashion-mnist or an image folder,
  ``--model`` one of :data:`fastcnn.models.BUILDERS`; ``--save FILE`` writes the model (and
  ``FILE.classes.json``, its class names), ``--plots DIR`` the pictures of :mod:`fastcnn.viz`.
* ``fastcnn evaluate FILE``: loss and accuracy of a saved model on a dataset's test split.
* ``fastcnn predict FILE IMAGE...``: the class and its probability for each image file.
* ``fastcnn info``: versions, the BLAS numpy uses, backends (with the reason an unavailable one
  cannot load), which ops each backend implements, and the thread settings.

A user error (a missing file, a file that is not a fastcnn model, an unknown dataset, a folder
without images, a bad option value) prints one line ``fastcnn: error: ...`` on stderr and exits
with 2 (bad usage: options and arguments) or 1 (an error while running), never a traceback.
Set ``FASTCNN_TRACEBACK=1`` to get the traceback of a runtime error instead (for bug reports).

Under an MPI launcher (``mpiexec -n 4 fastcnn train ...``) the commands run data-parallel
(:mod:`fastcnn.distributed`): ``--batch-size`` is the global batch, only rank 0 prints and
writes files, and an error on any process ends every process with a non-zero status.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastcnn
from fastcnn import backends

# Defaults of `fastcnn train`, chosen by measurement on the im2col backend (seeds 0..39):
# with these settings models.digits_cnn() never fell below 0.9775 test accuracy (median
# 0.9859). Smaller choices left too thin a margin over the promised 0.97: the same model
# for 15 epochs (lowest 0.9718), one conv layer of 16 or 32 filters for 20 epochs (lowest
# 0.9718 and 0.9690). A larger model (Conv 32, pool, Conv 64, Dense 64) was no more
# reliable (lowest 0.9803 over 20 seeds) at 14x the parameters.
DEFAULT_EPOCHS = 20
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 0.003
DEFAULT_SEED = 0

# The other datasets are 30x (MNIST) to 100x (150x150 RGB folders) more work per epoch than
# the digits, so their defaults are fewer epochs at the usual Adam/RMSprop rate of 1e-3. They
# are starting points for a first run, not tuned results (examples/ holds the tuned ones).
OTHER_EPOCHS = {"mnist": 5, "fashion-mnist": 5, "folder": 15}
OTHER_LEARNING_RATE = 0.001

NAMED_DATASETS = ("digits", "mnist", "fashion-mnist")
# The model each dataset gets without --model. An image folder gets 'catsdogs' when it has
# two classes (the tutorial it comes from), else 'tutorial'.
DEFAULT_MODEL = {"digits": "digits", "mnist": "lenet", "fashion-mnist": "fashion"}
# Image folders are resized to the model's input: 150x150 for 'catsdogs' (its tutorial's
# size), else 64x64 (big enough to keep an object recognisable, small enough for a CPU).
CATSDOGS_IMAGE_SIZE = 150
FOLDER_IMAGE_SIZE = 64
# Keras's ImageDataGenerator(validation_split=0.2) for a folder without train/ validation/.
FOLDER_VALIDATION_SPLIT = 0.2
CLASSES_SUFFIX = ".classes.json"

THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class UserError(Exception):
    """A problem with what the user asked for, reported as one line (exit status 1)."""


def build_digits_model():
    """The default model of ``fastcnn train`` (kept for callers; see models.digits_cnn)."""
    from fastcnn import models

    return models.digits_cnn((8, 8, 1), 10)


def load_digits_for_training():
    """The bundled digits as float32 NHWC in [0, 1] (the file's pixels are 0..16)."""
    from fastcnn.datasets import digits

    (x_train, y_train), (x_test, y_test) = digits.load_data()
    scale = np.float32(digits.MAX_PIXEL)

    def prepare(x):
        return (x.astype(np.float32) / scale)[..., np.newaxis]

    return (prepare(x_train), y_train), (prepare(x_test), y_test)


def _load_idx_dataset(name):
    """MNIST or Fashion-MNIST as float32 (N, 28, 28, 1) in [0, 1], and the class names."""
    if name == "mnist":
        from fastcnn.datasets import mnist as module

        class_names = [str(k) for k in range(10)]
    else:
        from fastcnn.datasets import fashion_mnist as module

        class_names = list(module.CLASS_NAMES)
    (x_train, y_train), (x_test, y_test) = module.load_data()

    def prepare(x):
        return (x.astype(np.float32) / np.float32(255))[..., np.newaxis]

    return (prepare(x_train), y_train), (prepare(x_test), y_test), class_names


# ------------------------------------------------------------------- data
@dataclass
class Data:
    """One dataset, ready for fit/evaluate: arrays, or image-folder iterators."""

    description: str
    input_shape: tuple
    class_names: list
    test_name: str = "test"                 # 'validation' for image folders
    x_train: object = None                  # array, or an iterator of (x, y) batches
    y_train: object = None
    x_test: object = None
    y_test: object = None
    train_steps: int | None = None          # iterator batches per epoch (None for arrays)
    test_steps: int | None = None
    test_samples: int = 0

    @property
    def is_folder(self):
        return self.train_steps is not None or self.test_steps is not None


def _is_named(dataset):
    return dataset in NAMED_DATASETS


def _folder_layout(path):
    """(train folder, validation folder, split): PATH/train + PATH/validation when both exist
    (the cats-vs-dogs layout), else PATH itself split with ``validation_split``."""
    path = Path(path)
    train, val = path / "train", path / "validation"
    if train.is_dir() and val.is_dir():
        return train, val, None
    return path, path, FOLDER_VALIDATION_SPLIT


def folder_class_names(path):
    """The class names (sorted sub-folder names) of an image folder, as flow_from_directory
    sees them; UserError when there are none."""
    train, _, _ = _folder_layout(path)
    names = sorted(e.name for e in os.scandir(train) if e.is_dir())
    if not names:
        raise UserError(f"image folder {str(train)!r} has no class sub-folders: put the images "
                        f"of each class in their own folder ({train}/cats/*.jpg, ...)")
    return names


def _steps(samples, limit, batch_size):
    """(batches per pass, images they hold): all of them, or --limit rounded up to whole
    batches (an image-folder iterator serves whole batches)."""
    n = samples if limit is None else min(samples, limit)
    steps = -(-n // batch_size)
    return steps, min(samples, steps * batch_size)


def balanced_sample(labels, n, seed):
    """``n`` sample indices spread as evenly over the classes as their sizes allow (one per
    class in turn, the classes in a seeded order; a class out of samples is skipped), each
    class's samples drawn at random with ``seed``; sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = rng.permutation(len(classes))
    n = min(int(n), len(labels))
    picked, depth = [], 0
    while len(picked) < n:
        for k in order:
            if depth < len(pools[k]) and len(picked) < n:
                picked.append(pools[k][depth])
        depth += 1
    return np.sort(np.asarray(picked, dtype=np.int64))


def _serve_only(iterator, indices):
    """Makes a folder iterator serve only the samples ``indices``, in that order (the
    iterator's active-sample list, which it also shrinks itself when a file is bad)."""
    iterator.close()
    iterator._active = np.asarray(indices, dtype=np.int64)
    iterator._orders.clear()


def _load_folder(path, image_size, channels, binary, batch_size, limit, seed, need_train=True):
    from fastcnn.preprocessing.image import ImageDataGenerator

    train_dir, val_dir, split = _folder_layout(path)
    color_mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(channels)
    if color_mode is None:
        raise UserError(f"the model expects {channels} channels per pixel; image folders give "
                        f"1 (grayscale), 3 (RGB) or 4 (RGBA)")
    options = dict(target_size=image_size, color_mode=color_mode,
                   class_mode="binary" if binary else "sparse", batch_size=batch_size,
                   seed=seed)
    if split is None:
        gen = ImageDataGenerator(rescale=1 / 255)
        train = gen.flow_from_directory(train_dir, **options) if need_train else None
        val = gen.flow_from_directory(val_dir, shuffle=False, **options)
    else:
        gen = ImageDataGenerator(rescale=1 / 255, validation_split=split)
        train = (gen.flow_from_directory(train_dir, subset="training", **options)
                 if need_train else None)
        val = gen.flow_from_directory(val_dir, subset="validation", shuffle=False, **options)
    names = sorted(val.class_indices, key=val.class_indices.get)
    if train is not None and train.class_indices != val.class_indices:
        raise UserError(f"{str(train_dir)!r} and {str(val_dir)!r} hold different classes: "
                        f"{sorted(train.class_indices)} and {names}")
    if limit is not None and limit < val.samples:
        # Not the first --limit files in directory order (all of the first class): a
        # class-balanced sample drawn with the run's seed, served in directory order.
        _serve_only(val, balanced_sample(val.classes, limit, seed))
        test_steps, test_samples = -(-limit // batch_size), limit
    else:
        test_steps, test_samples = _steps(val.samples, None, batch_size)
    data = Data(
        description="",
        input_shape=tuple(val.image_shape),
        class_names=names,
        test_name="validation",
        x_train=train,
        x_test=val,
        test_steps=test_steps,
        test_samples=test_samples,
    )
    if train is not None:
        data.train_steps, train_samples = _steps(train.samples, limit, batch_size)
    else:
        train_samples = 0
    how = "its train/ and validation/ folders" if split is None else \
        f"validation_split={split}"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    data.description = (
        f"data: image folder {str(path)!r} ({how}), {len(names)} classes ({shown}), "
        + (f"{train_samples} training / " if train is not None else "")
        + f"{test_samples} validation images resized to "
        f"{image_size[0]}x{image_size[1]} {color_mode} (pixels 0..255 scaled to [0, 1])")
    return data


def load_arrays(dataset, limit):
    """digits, mnist or fashion-mnist as a Data of arrays (the first ``limit`` of each split)."""
    if dataset == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits_for_training()
        names = [str(k) for k in range(10)]
        what = "bundled 8x8 digits"
        scaled = "pixels 0..16 scaled to [0, 1]"
    else:
        (x_train, y_train), (x_test, y_test), names = _load_idx_dataset(dataset)
        what = "MNIST" if dataset == "mnist" else "Fashion-MNIST"
        scaled = "pixels 0..255 scaled to [0, 1]"
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:limit], y_test[:limit]
        scaled += f"; --limit {limit}"
    return Data(
        description=f"data: {what}, {len(x_train)} training / {len(x_test)} test images "
                    f"({scaled})",
        input_shape=tuple(x_train.shape[1:]),
        class_names=names,
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
        test_samples=len(x_test),
    )


# ------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    """argparse with ONE error line (no usage block): ``fastcnn: error: ...``."""

    def error(self, message):
        print(f"fastcnn: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        self.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _dataset(text: str) -> str:
    if text in NAMED_DATASETS:
        return text
    if os.path.isdir(text):
        return text
    expected = f"expected {', '.join(NAMED_DATASETS)} or the path of an image folder"
    if os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder of images; "
                                         f"{expected}")
    raise argparse.ArgumentTypeError(f"unknown dataset {text!r} (and no folder of that name "
                                     f"exists); {expected}")


def _backend_name(text: str) -> str:
    """A backend that loads here; a registered one that does not gets the registry's
    reason (``cuda`` without a GPU says so), not argparse's "invalid choice"."""
    names = backends.available()
    if text in names:
        return text
    choose = ", ".join(repr(n) for n in names)
    why = backends.unavailable().get(text)
    if why is not None:
        raise argparse.ArgumentTypeError(
            f"backend {text!r} is not available on this machine: {why} (available: {choose})")
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {choose})")


def _add_common(parser, *, batch_size=True):
    if batch_size:
        parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                            help=f"images per step (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--backend", type=_backend_name, default=None,
                        metavar="{" + ",".join(backends.available()) + "}",
                        help="kernel backend (default: the active one, "
                        f"{backends.get_backend()!r})")


def make_parser() -> argparse.ArgumentParser:
    from fastcnn.models import BUILDERS

    parser = _Parser(
        prog="fastcnn",
        description="fastcnn: a CNN engine written from scratch (NumPy reference kernels, "
        "fast backends, a Keras-shaped API).",
    )
    parser.add_argument("--version", action="version", version=f"fastcnn {fastcnn.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a CNN (default: a small one on the bundled 8x8 digits) and report the "
        "test accuracy",
        description="Trains a CNN (Adam; RMSprop for catsdogs) and reports the test "
        "accuracy. With no options: a "
        "small CNN on the bundled 8x8 handwritten digits (1,442 training / 355 test images, "
        "no network needed), 20 epochs.",
    )
    train.add_argument("--dataset", type=_dataset, default="digits", metavar="DATASET",
                       help="digits (bundled, the default), mnist, fashion-mnist (from "
                       "$FASTCNN_DATA, else downloaded once), or the path of an image folder "
                       "(one sub-folder per class; PATH/train and PATH/validation are used as "
                       f"the two splits when both exist, else {FOLDER_VALIDATION_SPLIT:g} of "
                       "each class is held out for validation)")
    train.add_argument("--model", choices=sorted(BUILDERS), default=None,
                       help="architecture from fastcnn.models (default: digits for digits, "
                       "lenet for mnist, fashion for fashion-mnist, catsdogs for a folder of "
                       "2 classes, else tutorial)")
    train.add_argument("--epochs", type=_positive_int, default=None,
                       help=f"passes over the training set (default {DEFAULT_EPOCHS} for "
                       f"digits, {OTHER_EPOCHS['mnist']} for mnist and fashion-mnist, "
                       f"{OTHER_EPOCHS['folder']} for an image folder)")
    train.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                       help=f"images per optimizer step (default {DEFAULT_BATCH_SIZE})")
    train.add_argument("--learning-rate", type=_positive_float, default=None,
                       help=f"the optimizer's learning rate (default {DEFAULT_LEARNING_RATE} "
                       f"for digits, else {OTHER_LEARNING_RATE}); the optimizer is Adam, "
                       "RMSprop for catsdogs (as in its tutorial)")
    _add_common(train, batch_size=False)
    train.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED,
                       help="random seed for weights and shuffling; the same seed and backend "
                       f"give the same run (default {DEFAULT_SEED})")
    train.add_argument("--image-size", type=_positive_int, default=None, metavar="N",
                       help=f"image folders: resize images to N x N (default "
                       f"{CATSDOGS_IMAGE_SIZE} for catsdogs, else {FOLDER_IMAGE_SIZE})")
    train.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                       help="quick runs: use only the first N training and N test images "
                       "(image folders: N images per epoch and N for validation, rounded up "
                       "to whole batches)")
    train.add_argument("--save", metavar="FILE", default=None,
                       help=f"save the trained model to FILE (fastcnn.load_model reads it) and "
                       f"its class names to FILE{CLASSES_SUFFIX}")
    train.add_argument("--plots", metavar="DIR", default=None,
                       help="save training curves, conv filters, feature maps and the "
                       "confusion matrix as PNG files in DIR (needs matplotlib)")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="loss and accuracy of a saved model on a dataset's test split",
        description="Loads a model saved by 'fastcnn train --save' (or model.save) and prints "
        "its loss and accuracy on the test split of a dataset (the validation split of an "
        "image folder).",
    )
    evaluate.add_argument("file", metavar="FILE", help="a fastcnn model file")
    evaluate.add_argument("--dataset", type=_dataset, default=None, metavar="DATASET",
                          help="digits, mnist, fashion-mnist or an image folder (default: the "
                          f"one recorded in FILE{CLASSES_SUFFIX} by train --save, else digits)")
    evaluate.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                          help="evaluate on the first N test images only")
    _add_common(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    predict = commands.add_parser(
        "predict",
        help="the class and its probability for each image file",
        description="Loads a saved model and prints, for each image, the predicted class (its "
        f"name when FILE{CLASSES_SUFFIX} lists them) and its probability. Images are read "
        "with Pillow, converted to grayscale or RGB and resized to the model's input, pixels "
        "scaled to [0, 1].",
    )
    predict.add_argument("file", metavar="FILE", help="a fastcnn model file")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    _add_common(predict, batch_size=False)
    predict.set_defaults(handler=run_predict)

    info = commands.add_parser(
        "info",
        help="show versions, BLAS, backends, their capabilities and thread settings",
        description="Shows versions, the BLAS numpy uses, the available backends (and why the "
        "others are not), which ops each backend implements, and the thread settings.",
    )
    info.set_defaults(handler=run_info)
    return parser


# ------------------------------------------------------------------ train
def _check_save_target(path):
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"--save {path!r} is a folder; name a file")
    if not os.path.isdir(folder):
        raise UserError(f"--save {path!r}: the folder {folder!r} does not exist (create it "
                        f"first)")


def _prepare_plots(directory):
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"--plots {directory!r} is a file, not a folder")
    try:
        from fastcnn import viz
    except ImportError as exc:
        raise UserError(f"--plots needs fastcnn.viz and matplotlib "
                        f"(pip install 'fastcnn[plots]' or pip install matplotlib): {exc}") \
            from None
    os.makedirs(directory, exist_ok=True)
    return viz


def _compile(model, model_name, learning_rate):
    from fastcnn.optimizers import Adam, RMSprop

    binary = model.output_shape[-1] == 1
    optimizer = (RMSprop if model_name == "catsdogs" else Adam)(learning_rate=learning_rate)
    model.compile(optimizer=optimizer,
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _evaluate(model, data, batch_size):
    if data.is_folder:
        data.x_test.reset()
        result = model.evaluate(data.x_test, steps=data.test_steps, verbose=0)
    else:
        result = model.evaluate(data.x_test, data.y_test, batch_size=batch_size, verbose=0)
    if not isinstance(result, (list, tuple)) or len(result) < 2:
        raise UserError("the model was compiled without the 'accuracy' metric; fastcnn "
                        "evaluate needs it")
    return float(result[0]), float(result[1])


def _predicted_classes(model, data, batch_size):
    """(true labels, predicted labels) on the test split (for the confusion matrix)."""
    if data.is_folder:
        data.x_test.reset()
        probs = model.predict(data.x_test, steps=data.test_steps)
        y_true = data.x_test.classes[:len(probs)]
    else:
        probs = model.predict(data.x_test, batch_size=batch_size)
        y_true = np.asarray(data.y_test)
    if probs.shape[-1] == 1:
        y_pred = (probs[:, 0] >= 0.5).astype(np.int64)
    else:
        y_pred = probs.argmax(axis=-1)
    return y_true, y_pred


def _first_test_image(data):
    if data.is_folder:
        data.x_test.reset()
        return data.x_test[0][0][0]
    return data.x_test[0]


def _save_plots(viz, directory, model, history, data, batch_size):
    import matplotlib.pyplot as plt

    # predict is collective under MPI: every process takes part, rank 0 draws and writes.
    y_true, y_pred = _predicted_classes(model, data, batch_size)
    if not fastcnn.distributed.current().is_primary:
        return []
    figures = {
        "history": lambda: viz.plot_history(history),
        "filters": lambda: viz.plot_filters(model),
        "feature_maps": lambda: viz.plot_feature_maps(model, _first_test_image(data)),
        "confusion_matrix": lambda: viz.plot_confusion_matrix(
            y_true, y_pred, class_names=data.class_names),
    }
    written = []
    for name, make in figures.items():
        fig = make()
        path = os.path.join(directory, f"{name}.png")
        try:
            fig.savefig(path)
        finally:
            plt.close(fig)
        written.append(path)
    return written


def _classes_path(model_path):
    return os.fspath(model_path) + CLASSES_SUFFIX


def _write_classes(model_path, class_names, dataset):
    # The model file's format belongs to fastcnn.saving; what the CLI knows about the data
    # (class names, where it came from) lives next to it in a small JSON file.
    record = {"class_names": list(class_names),
              "dataset": dataset if _is_named(dataset) else os.path.abspath(dataset)}
    path = _classes_path(model_path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _read_classes(model_path):
    """The sidecar record ({'class_names': [...], 'dataset': ...}), or None when absent."""
    path = _classes_path(model_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path!r}: {exc}") from None
    names = record.get("class_names") if isinstance(record, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path!r} is not a class-names file (expected a JSON object with a "
                        f"'class_names' list of strings)")
    return record


def _fit_verbose() -> int:
    """Keras's live progress bar (verbose=1) on a terminal; one line per epoch (verbose=2)
    in a log file or a pipe, where ``\r`` updates would only add noise."""
    isatty = getattr(sys.stdout, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


def run_train(args) -> int:
    from fastcnn.models import BUILDERS
    from fastcnn.utils import clear_session, set_random_seed

    backend = args.backend or backends.get_backend()
    dataset = args.dataset
    if args.save:
        _check_save_target(args.save)
    viz = _prepare_plots(args.plots) if args.plots else None

    if _is_named(dataset):
        if args.image_size is not None:
            raise UserError("--image-size applies to image folders only; "
                            f"{dataset} images have a fixed size")
        data = load_arrays(dataset, args.limit)
        model_name = args.model or DEFAULT_MODEL[dataset]
        input_shape, num_classes = data.input_shape, len(data.class_names)
    else:
        names = folder_class_names(dataset)
        model_name = args.model or ("catsdogs" if len(names) == 2 else "tutorial")
        if model_name == "catsdogs" and len(names) != 2:
            raise UserError(f"model 'catsdogs' has one sigmoid output and needs exactly 2 "
                            f"classes; {dataset!r} has {len(names)}: {', '.join(names)}")
        size = args.image_size or (CATSDOGS_IMAGE_SIZE if model_name == "catsdogs"
                                   else FOLDER_IMAGE_SIZE)
        data = _load_folder(dataset, (size, size), 3, model_name == "catsdogs",
                            args.batch_size, args.limit, args.seed)
        input_shape, num_classes = data.input_shape, len(data.class_names)
    first = dataset if _is_named(dataset) else "folder"
    epochs = args.epochs or (DEFAULT_EPOCHS if first == "digits" else OTHER_EPOCHS[first])
    learning_rate = args.learning_rate or (DEFAULT_LEARNING_RATE if first == "digits"
                                           else OTHER_LEARNING_RATE)
    print(data.description)
    print(
        f"backend: {backend} | epochs: {epochs} | batch size: {args.batch_size}"
        f"{_processes_note()} | "
        f"learning rate: {learning_rate:g} | seed: {args.seed}"
    )
    with fastcnn.use_backend(backend):
        clear_session()  # layer names start at 'conv2d' again for every run in one process
        set_random_seed(args.seed)
        try:
            model = BUILDERS[model_name](input_shape, num_classes)
        except ValueError as exc:
            raise UserError(f"model {model_name!r} does not fit {num_classes} classes of "
                            f"inputs of shape {input_shape}: {exc}") from None
        _compile(model, model_name, learning_rate)
        model.summary()
        start = time.perf_counter()
        verbose = _fit_verbose()
        if data.is_folder:
            history = model.fit(data.x_train, epochs=epochs, steps_per_epoch=data.train_steps,
                                validation_data=data.x_test, validation_steps=data.test_steps,
                                verbose=verbose)
        else:
            history = model.fit(data.x_train, data.y_train, batch_size=args.batch_size,
                                epochs=epochs, verbose=verbose)
        seconds = time.perf_counter() - start
        test_loss, test_accuracy = _evaluate(model, data, args.batch_size)
    n = data.test_samples
    correct = int(round(test_accuracy * n))
    print(f"training took {seconds:.1f} s")
    print(f"{data.test_name} loss: {test_loss:.4f}")
    print(f"{data.test_name} accuracy: {test_accuracy:.4f} ({correct}/{n})")
    if args.save:  # before the plots: a plotting failure must not lose the trained model
        model.save(args.save)   # under MPI: rank 0 writes, the others return at once
        sidecar = (_write_classes(args.save, data.class_names, dataset)
                   if fastcnn.distributed.current().is_primary else None)
        print(f"saved the model to {args.save} and its class names to {sidecar}")
    if viz is not None:
        with fastcnn.use_backend(backend):
            written = _save_plots(viz, args.plots, model, history, data, args.batch_size)
        for path in written:
            print(f"saved {path}")
    return 0


# ------------------------------------------------------- evaluate / predict
def _load(path):
    from fastcnn.saving import load_model

    if not os.path.exists(path):
        raise UserError(f"no such file: {path!r}")
    return load_model(path)


def _check_input_shape(model, data, path, dataset):
    expected = tuple(model.input_shape[1:])
    if tuple(data.input_shape) != expected:
        raise UserError(f"the model in {path!r} takes inputs of shape {expected}, but "
                        f"{dataset!r} gives {tuple(data.input_shape)}")


def run_evaluate(args) -> int:
    record = _read_classes(args.file)
    model = _load(args.file)
    dataset = args.dataset
    if dataset is None:
        dataset = record["dataset"] if record and record.get("dataset") else "digits"
        dataset = _dataset_or_error(dataset)
    if _is_named(dataset):
        data = load_arrays(dataset, args.limit)
    else:
        h, w, c = model.input_shape[1:]
        data = _load_folder(dataset, (h, w), c, model.output_shape[-1] == 1, args.batch_size,
                            args.limit, seed=0, need_train=False)
    _check_input_shape(model, data, args.file, dataset)
    if model.output_shape[-1] not in (1, len(data.class_names)):
        raise UserError(f"the model in {args.file!r} has {model.output_shape[-1]} outputs but "
                        f"{dataset!r} has {len(data.class_names)} classes")
    if getattr(model, "loss", None) is None:
        _compile(model, "", OTHER_LEARNING_RATE)
    print(data.description)
    backend = args.backend or backends.get_backend()
    with fastcnn.use_backend(backend):
        loss, accuracy = _evaluate(model, data, args.batch_size)
    correct = int(round(accuracy * data.test_samples))
    print(f"{data.test_name} loss: {loss:.4f}")
    print(f"{data.test_name} accuracy: {accuracy:.4f} ({correct}/{data.test_samples})")
    return 0


def _dataset_or_error(text):
    try:
        return _dataset(text)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"the dataset recorded next to the model: {exc}") from None


def load_image(path, height, width, channels):
    """One image file as a float32 (height, width, channels) array in [0, 1] (Pillow)."""
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise UserError(f"the model expects {channels} channels per pixel; images give 1, 3 "
                        f"or 4")
    if not os.path.exists(path):
        raise UserError(f"no such image file: {path!r}")
    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / np.float32(255)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read {path!r} as an image: {exc}") from None
    return arr.reshape(height, width, channels)


def run_predict(args) -> int:
    record = _read_classes(args.file)
    model = _load(args.file)
    h, w, c = model.input_shape[1:]
    x = np.stack([load_image(p, h, w, c) for p in args.images]).astype(model.dtype, copy=False)
    backend = args.backend or backends.get_backend()
    with fastcnn.use_backend(backend):
        probs = model.predict(x)
    names = record["class_names"] if record else None
    if names is None:
        print(f"note: {_classes_path(args.file)!r} not found, so classes are shown as "
              f"indices (train --save writes it)", file=sys.stderr)
    for path, p in zip(args.images, probs):
        if p.shape[-1] == 1:   # one sigmoid output: the probability of class 1
            k = int(p[0] >= 0.5)
            prob = float(p[0]) if k else 1.0 - float(p[0])
        else:
            k = int(np.argmax(p))
            prob = float(p[k])
        label = f"{names[k]} (class {k})" if names and k < len(names) else f"class {k}"
        print(f"{path}: {label}, probability {prob:.4f}")
    return 0


# ------------------------------------------------------------------- info
def _table(rows, header) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), *(fmt.format(*map(str, r)).rstrip() for r in rows)]


def blas_description() -> str:
    """The BLAS numpy was built with: name and version (from numpy's build config)."""
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
    except Exception as exc:  # noqa: BLE001  - numpy's config layout is not a stable API
        return f"unknown ({type(exc).__name__}: {exc})"
    name = blas.get("name", "unknown")
    version = blas.get("version", "unknown version")
    detail = blas.get("openblas configuration")
    return f"{name} {version}" + (f" ({' '.join(detail.split())})" if detail else "")


def capability_rows(names) -> list[tuple]:
    """``fastcnn info``'s capability table: one row per op (the fused ones last), one cell
    per backend: ``x``, ``=other`` (a reused kernel) or ``-``."""
    loaded = [backends.get(name) for name in names]

    def cell(backend, op):
        if not backend.implements(op):
            return "-"
        provider = backend.reused_from(op)
        return "x" if provider is None else f"={provider}"

    return [(op, *(cell(b, op) for b in loaded)) for op in backends.OPS + backends.FUSED_OPS]


def run_info(args) -> int:
    lines = [
        f"fastcnn {fastcnn.__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"numpy {np.__version__}",
        f"blas (numpy's): {blas_description()}",
        f"active backend: {backends.get_backend()}",
        "",
        "backends:",
    ]
    names = backends.available()
    missing = backends.unavailable()
    rows = [(name, "available", backends.get(name).description) for name in names]
    rows += [(name, "unavailable", reason) for name, reason in missing.items()]
    lines += ["  " + line for line in _table(rows, ("name", "status", "description / reason"))]

    lines += ["", "capabilities (x = implemented, =NAME = NAME's kernel, reused (the backend's "
              "REUSES), - = missing; a fused op marked - is not fused there: its ops run "
              "one by one):"]
    lines += ["  " + line for line in _table(capability_rows(names), ("op", *names))]

    if "auto" in names:
        from .backends import auto

        lines += ["", "'auto' runs each kind of op on (the first backend of its row, ranked by benchmarks/, "
                  "that is available here and implements the op):"]
        lines += ["  " + line for line in _table(sorted(auto.choices().items()), ("op/shape", "backend"))]

    from . import _extensions

    lines += ["", "compiled extensions (cython):"]
    if _extensions.HAVE_CYTHON:
        openmp, max_threads = _extensions.openmp_info()
        simd = _extensions.modules["simd"]
        lines += [f"  loaded; OpenMP {'on' if openmp else 'off'}, max threads {max_threads}",
                  f"  SIMD kernels (direct conv, max pool): the {simd.isa()} build runs "
                  f"(this CPU supports: {', '.join(simd.supported_isas())})"]
    else:
        lines += [f"  missing: {_extensions.IMPORT_ERROR}"]

    lines += ["", "threads:"]
    rows = [("os.cpu_count()", os.cpu_count())]
    rows += [(var, os.environ.get(var, "(unset)")) for var in THREAD_VARIABLES]
    lines += ["  " + line for line in _table(rows, ("setting", "value"))]
    from . import _runtime

    lines += ["  runtime defaults (fastcnn/_runtime.py): " + "; ".join(_runtime.describe())]
    print("\n".join(lines))
    return 0


# ------------------------------------------------------------------- main
# What a user's mistake raises while a command runs (a missing or foreign file, a dataset that
# cannot be found or trusted, a folder without images, data that does not fit the model,
# training that diverged): reported as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, OSError, ValueError, ImportError, MemoryError)


def _one_line(exc) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return f"out of memory ({text}); try a smaller --batch-size or --limit"
    return text


def _warning_printer():
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        # Library warnings (a skipped image, say) as one line each, without source lines, and
        # once per run (the training and validation subsets list the same folder).
        text = f"fastcnn: warning: {' '.join(str(message).split())}"
        if text not in shown:
            shown.add(text)
            print(text, file=sys.stderr)

    return show


def _start_distributed(command):
    """Under an MPI launcher with several processes: fastcnn.distributed.init(), and
    only rank 0 keeps its standard output (errors stay visible on every process)."""
    from fastcnn.distributed._strategy import _launched_processes

    if command == "info" or _launched_processes() <= 1:
        return
    fastcnn.distributed.init()
    if not fastcnn.distributed.is_primary():
        sys.stdout.flush()
        sys.stdout = open(os.devnull, "w")


def _processes_note() -> str:
    size = fastcnn.distributed.current().size
    return "" if size == 1 else f" (global, shared by {size} processes)"


def _process_label() -> str:
    dist = fastcnn.distributed.current()
    return "" if dist.size == 1 else f" (process {dist.rank} of {dist.size})"


def main(argv=None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    status = _main(argv)
    dist = fastcnn.distributed.current()
    if status and dist.size > 1:
        # An error on one process alone would leave the others waiting in their next
        # collective call forever: end them all, with this status.
        dist.abort(status)
    return status


def _main(argv):
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad options (2)
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        print("\nfastcnn: error: a command is required (train, evaluate, predict or info)",
              file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer()
        try:
            _start_distributed(args.command)
            return args.handler(args)
        except USER_ERRORS as exc:
            if os.environ.get("FASTCNN_TRACEBACK"):
                raise
            sys.stdout.flush()
            print(f"fastcnn: error{_process_label()}: {_one_line(exc)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nfastcnn: interrupted", file=sys.stderr)
            return 130
