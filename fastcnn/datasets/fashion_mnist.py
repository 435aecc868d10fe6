"""Fashion-MNIST (Zalando Research), like ``keras.datasets.fashion_mnist``.

70,000 grey-level 28x28 images of clothing in 10 classes (pixels 0..255): 60,000 for
training (6,000 per class), 10,000 for testing (1,000 per class). A drop-in replacement for
MNIST: same file names, same layout. Licence: MIT, Copyright (c) 2017 Zalando SE.

Files are located, downloaded and checked exactly as for :mod:`fastcnn.datasets.mnist`,
in the sub-folder ``fashion-mnist/`` of ``$FASTCNN_DATA`` or of the cache.

    >>> from fastcnn.datasets import fashion_mnist
    >>> (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    >>> fashion_mnist.CLASS_NAMES[y_train[0]]
    'Ankle boot'
"""
from __future__ import annotations

from ._files import (  # noqa: F401  (re-exported: the errors load_data raises)
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    RemoteFile,
)
from ._idx import IdxFormatError  # noqa: F401
from .mnist import load_spec

#: Label -> class name, in the order of the Fashion-MNIST README.
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: The files, their published sizes and sha256 sums, and the mirrors tried in order
#: (Zalando's own bucket, then the copy keras.datasets downloads). ``load_data`` reads this
#: attribute at call time. The first mirror is plain http; the sha256 check is what makes
#: that safe.
SPEC = DatasetSpec(
    title="Fashion-MNIST",
    folder="fashion-mnist",
    files={
        "train_images": RemoteFile(
            "train-images-idx3-ubyte.gz",
            26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        "train_labels": RemoteFile(
            "train-labels-idx1-ubyte.gz",
            29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        "test_images": RemoteFile(
            "t10k-images-idx3-ubyte.gz",
            4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        "test_labels": RemoteFile(
            "t10k-labels-idx1-ubyte.gz",
            5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
)


def load_data():
    """Loads Fashion-MNIST, like ``keras.datasets.fashion_mnist.load_data()``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: ``x`` uint8 arrays of shape ``(N, 28, 28)``
        with pixels 0..255, ``y`` uint8 labels 0..9 (names in :data:`CLASS_NAMES`) of shape
        ``(N,)``; N is 60,000 for train and 10,000 for test. Fresh arrays on every call.

    Raises:
        The errors of :func:`fastcnn.datasets.mnist.load_data`.
    """
    return load_spec(SPEC)
