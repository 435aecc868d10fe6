"""MNIST handwritten digits (LeCun, Cortes and Burges), like ``keras.datasets.mnist``.

70,000 grey-level 28x28 images of the digits 0..9 (pixels 0..255, 0 = background):
60,000 for training, 10,000 for testing. Licence: CC BY-SA 3.0 (Yann LeCun and Corinna
Cortes hold the copyright).

The original IDX ``.gz`` files are read from ``$FASTCNN_DATA/mnist/`` when ``FASTCNN_DATA``
is set (no download, an error if they are missing), else from ``$FASTCNN_CACHE/mnist/``
(default ``~/.cache/fastcnn/mnist/``), downloaded there once when missing. Every file is
checked against its published sha256. Details: :mod:`fastcnn.datasets._files`.

    >>> from fastcnn.datasets import mnist
    >>> (x_train, y_train), (x_test, y_test) = mnist.load_data()
    >>> x_train.shape, x_train.dtype, y_test.shape
    ((60000, 28, 28), dtype('uint8'), (10000,))
"""
from __future__ import annotations

from ._files import (  # noqa: F401  (re-exported: the errors load_data raises)
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    RemoteFile,
    fetch,
)
from ._idx import IdxFormatError, read_image_label_pair  # noqa: F401

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

#: The files, their published sizes and sha256 sums, and the mirrors tried in order
#: (torchvision's, then Google's CVDF copy). ``load_data`` reads this attribute at call time.
SPEC = DatasetSpec(
    title="MNIST",
    folder="mnist",
    files={
        "train_images": RemoteFile(
            "train-images-idx3-ubyte.gz",
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        "train_labels": RemoteFile(
            "train-labels-idx1-ubyte.gz",
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        "test_images": RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        "test_labels": RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    },
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
)


def load_spec(spec: DatasetSpec):
    """``load_data`` for any dataset laid out like MNIST (four IDX files, 28x28, 10 classes)."""
    paths = fetch(spec)
    train = read_image_label_pair(
        paths["train_images"], paths["train_labels"], IMAGE_SHAPE, NUM_CLASSES
    )
    test = read_image_label_pair(
        paths["test_images"], paths["test_labels"], IMAGE_SHAPE, NUM_CLASSES
    )
    return train, test


def load_data():
    """Loads MNIST, like ``keras.datasets.mnist.load_data()``.

    Keras's optional ``path`` argument (a file name for its ``mnist.npz`` cache) has no
    counterpart here, so there is none: the location comes from ``FASTCNN_DATA`` /
    ``FASTCNN_CACHE`` (see the module docstring).

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: ``x`` uint8 arrays of shape ``(N, 28, 28)``
        with pixels 0..255, ``y`` uint8 labels 0..9 of shape ``(N,)``; N is 60,000 for train
        and 10,000 for test. Fresh arrays on every call: callers may modify them.

    Raises:
        DatasetNotFoundError: ``FASTCNN_DATA`` is set but the files are not under it.
        ChecksumError: a file's size or sha256 differs from the published one.
        DownloadError: a file is missing from the cache and no mirror delivered it.
        IdxFormatError: a file is not the IDX layout expected (cannot happen for files that
            passed the checksum, unless :data:`SPEC` was edited).
    """
    return load_spec(SPEC)
