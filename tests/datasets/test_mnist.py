"""MNIST and Fashion-MNIST from the real, published files (skipped where they are absent).

The folder comes from FASTCNN_DATA when it is set (CI sets it; a wrong setting then fails
loudly), else ../shared/data beside the checkout when it exists. Each 60k set is loaded once
per module. Download, cache and error paths are tested on synthetic files in test_files.py.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from fastcnn.datasets import _files, fashion_mnist, mnist

_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SKIP_REASON = (
    "MNIST files not found: set FASTCNN_DATA to the folder holding mnist/ and fashion-mnist/"
)


def data_root():
    if os.environ.get("FASTCNN_DATA"):
        return os.environ["FASTCNN_DATA"]
    if _SHARED.is_dir():
        return str(_SHARED)
    pytest.skip(SKIP_REASON)


def load(module):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTCNN_DATA", data_root())
        return module.load_data()


@pytest.fixture(scope="module")
def mnist_data():
    return load(mnist)


@pytest.fixture(scope="module")
def fashion_data():
    return load(fashion_mnist)


def check_layout(data):
    (x_train, y_train), (x_test, y_test) = data
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    for a in (x_train, y_train, x_test, y_test):
        assert a.dtype == np.uint8 and a.flags.c_contiguous and a.flags.writeable
    for x in (x_train, x_test):
        assert x.min() == 0 and x.max() == 255


def test_mnist_layout(mnist_data):
    check_layout(mnist_data)


def test_mnist_label_histograms(mnist_data):
    (_, y_train), (_, y_test) = mnist_data
    np.testing.assert_array_equal(
        np.bincount(y_train, minlength=10),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    )
    np.testing.assert_array_equal(
        np.bincount(y_test, minlength=10), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )


def test_mnist_original_order(mnist_data):
    # The well-known first training labels, and a digit's ink where a digit should be.
    (x_train, y_train), (x_test, y_test) = mnist_data
    np.testing.assert_array_equal(y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(y_test[:5], [7, 2, 1, 0, 4])
    assert x_train[0, :4].max() == 0 and x_train[0, 10:18, 10:18].max() > 200


def test_fashion_layout(fashion_data):
    check_layout(fashion_data)


def test_fashion_classes_are_balanced(fashion_data):
    (_, y_train), (_, y_test) = fashion_data
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [1000] * 10)
    assert fashion_mnist.CLASS_NAMES[y_train[0]] == "Ankle boot"
    assert len(fashion_mnist.CLASS_NAMES) == 10


def test_datasets_differ(mnist_data, fashion_data):
    # Same file names in both folders: make sure each loader read its own.
    assert not np.array_equal(mnist_data[1][1], fashion_data[1][1])


def test_checksums_are_remembered(mnist_data):
    # The fixture's load verified the four files; a second lookup must not hash again.
    root = Path(data_root()) / "mnist"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTCNN_DATA", str(root.parent))
        mp.setattr(_files, "sha256_file", lambda p: pytest.fail(f"{p} hashed again"))
        paths = _files.fetch(mnist.SPEC)
    assert paths["train_images"] == root / "train-images-idx3-ubyte.gz"


def test_truncated_copy_of_a_real_file(tmp_path, monkeypatch):
    # The published test labels, cut short: rejected by size before anything is parsed.
    source = Path(data_root()) / "mnist" / "t10k-labels-idx1-ubyte.gz"
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in mnist.SPEC.files.values():
        (folder / f.name).write_bytes(b"")
    (folder / source.name).write_bytes(source.read_bytes()[:-100])
    monkeypatch.setattr(
        mnist,
        "SPEC",
        _files.DatasetSpec("MNIST", "mnist", {"test_labels": mnist.SPEC.files["test_labels"]}, ()),
    )
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    with pytest.raises(mnist.ChecksumError) as info:
        mnist.load_data()
    msg = str(info.value)
    assert str(folder / source.name) in msg
    assert "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6" in msg
    assert "4442 bytes, expected 4542" in msg


@pytest.mark.parametrize("module", [mnist, fashion_mnist], ids=["mnist", "fashion_mnist"])
def test_wrong_files_under_fastcnn_data_are_rejected(module, tmp_path, monkeypatch):
    # No real data needed: junk under the published names fails the size check, naming the
    # first file and its published sha256.
    folder = tmp_path / module.SPEC.folder
    folder.mkdir()
    for f in module.SPEC.files.values():
        (folder / f.name).write_bytes(b"\x1f\x8b junk")
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    monkeypatch.setattr(_files, "_verified", {})
    first = module.SPEC.files["train_images"]
    with pytest.raises(module.ChecksumError) as info:
        module.load_data()
    assert str(folder / first.name) in str(info.value) and first.sha256 in str(info.value)
