"""The 8x8 handwritten digits, bundled with fastcnn (no network needed).

The UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin and C. Kaynak,
1998; CC BY 4.0): 1,797 grey-level images of the digits 0..9, 8x8 pixels each. A pixel is the
number of "on" pixels in a 4x4 block of the original 32x32 bitmap, so **pixel values are
integers 0..16, not 0..255**: divide by 16 (:data:`MAX_PIXEL`) to scale to [0, 1].
Source, licence and checksum: ``fastcnn/datasets/data/README.md``.

The split is fixed and uses no random numbers, so it is the same on every machine and NumPy
version: counting each digit's images in file order from 0, every fifth one (index 4, 9,
14, ...) is a test image. That gives 1,442 training and 355 test images, stratified by digit
(34 to 36 test images per digit).

    >>> from fastcnn.datasets import digits
    >>> (x_train, y_train), (x_test, y_test) = digits.load_data()
    >>> x_train.shape, x_train.dtype, y_test.shape
    ((1442, 8, 8), dtype('uint8'), (355,))
"""
from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import numpy as np

# The errors every fastcnn dataset raises (all are DatasetError, an OSError).
from ._files import ChecksumError, DatasetError, DatasetNotFoundError

#: The bundled file; ``load_data`` reads this module attribute at call time.
DATA_FILE = Path(__file__).resolve().parent / "data" / "digits.csv.gz"
#: sha256 of :data:`DATA_FILE` (the byte-identical copy shipped in scikit-learn 1.9.1).
SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"

NUM_IMAGES = 1797
IMAGE_SHAPE = (8, 8)
NUM_CLASSES = 10
#: Largest pixel value: pixels are counts of "on" pixels in a 4x4 block, 0..16.
MAX_PIXEL = 16
#: Every ``TEST_EVERY``-th image of each digit (in file order) is a test image.
TEST_EVERY = 5


def _read_verified(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"bundled digits file not found at {str(path)!r}; the fastcnn installation is "
            f"incomplete (package data missing): reinstall fastcnn"
        ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        raise ChecksumError(
            f"bundled digits file {str(path)!r} is corrupted: sha256 {digest}, expected "
            f"{SHA256} ({len(raw)} bytes read); reinstall fastcnn to restore it"
        )
    return raw


def _parse(raw: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    # The checksum already vouches for the content; these checks guard against a future
    # edit of SHA256/DATA_FILE that points at a file of another layout.
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64, ndmin=2)
    n_pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if table.shape != (NUM_IMAGES, n_pixels + 1):
        raise DatasetError(
            f"{str(path)!r}: expected a table of shape {(NUM_IMAGES, n_pixels + 1)}, "
            f"got {table.shape}"
        )
    pixels, labels = table[:, :n_pixels], table[:, n_pixels]
    if pixels.min() < 0 or pixels.max() > MAX_PIXEL:
        raise DatasetError(f"{str(path)!r}: pixel values outside 0..{MAX_PIXEL}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DatasetError(f"{str(path)!r}: labels outside 0..{NUM_CLASSES - 1}")
    x = pixels.astype(np.uint8).reshape((NUM_IMAGES,) + IMAGE_SHAPE)
    y = labels.astype(np.uint8)
    return x, y


def split_mask(y: np.ndarray) -> np.ndarray:
    """The fixed split as a boolean mask over the file's rows (True = test image).

    The ``j``-th image of each digit (counting from 0 in file order) is a test image when
    ``j % TEST_EVERY == TEST_EVERY - 1``. Pure integer arithmetic: no RNG is involved.
    """
    y = np.asarray(y)
    mask = np.zeros(y.shape[0], dtype=bool)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)  # ascending file order
        mask[rows[TEST_EVERY - 1 :: TEST_EVERY]] = True
    return mask


def load_data():
    """Loads the bundled digits, like ``keras.datasets.mnist.load_data()``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: ``x`` uint8 arrays of shape ``(N, 8, 8)``
        with pixel values 0..16 (not 0..255; divide by 16 for [0, 1]); ``y`` uint8 labels
        0..9 of shape ``(N,)``. N is 1,442 for train and 355 for test (fixed split, see the
        module docstring). Fresh arrays on every call: callers may modify them.

    Raises:
        DatasetNotFoundError: the bundled file is missing (a broken installation).
        ChecksumError: the bundled file fails its sha256 check.
    """
    path = Path(DATA_FILE)
    x, y = _parse(_read_verified(path), path)
    test = split_mask(y)
    return (x[~test], y[~test]), (x[test], y[test])
