"""The bundled 8x8 digits: format, fixed split, integrity check."""
import hashlib
import shutil

import numpy as np
import pytest

from fastcnn.datasets import digits


@pytest.fixture(scope="module")
def data():
    return digits.load_data()


def test_shapes_and_dtypes(data):
    (x_train, y_train), (x_test, y_test) = data
    assert x_train.shape == (1442, 8, 8) and y_train.shape == (1442,)
    assert x_test.shape == (355, 8, 8) and y_test.shape == (355,)
    for a in (x_train, y_train, x_test, y_test):
        assert a.dtype == np.uint8


def test_pixel_values_use_the_original_0_to_16_scale(data):
    (x_train, _), (x_test, _) = data
    for x in (x_train, x_test):
        assert x.min() == 0 and x.max() == digits.MAX_PIXEL == 16


def test_every_digit_is_in_both_splits(data):
    (_, y_train), (_, y_test) = data
    train_counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(y_test, minlength=10)
    assert len(train_counts) == len(test_counts) == 10  # labels are 0..9 only
    # Stratified: every fifth image of each digit is a test image.
    np.testing.assert_array_equal(test_counts, [35, 36, 35, 36, 36, 36, 36, 35, 34, 36])
    np.testing.assert_array_equal(train_counts + test_counts,
                                  [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def test_split_is_pinned(data):
    # Golden digests of the split: a change of rule, file or parsing shows up here, on
    # any machine and NumPy version (the split uses no RNG).
    (x_train, y_train), (x_test, y_test) = data
    assert hashlib.sha256(x_train.tobytes() + y_train.tobytes()).hexdigest() == (
        "d5517839a928f2d0aebc063963464d2eaf573b1e32a2a1a29581cc93bb7fb97b")
    assert hashlib.sha256(x_test.tobytes() + y_test.tobytes()).hexdigest() == (
        "dffb3bbc3bee43a253e1a27dcd91eed7938a7aa43dbb1099812cb3e7392d9b1c")


def test_split_rule_and_sizes(data):
    (x_train, y_train), (x_test, y_test) = data
    assert len(x_train) + len(x_test) == digits.NUM_IMAGES
    labels = [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1]
    # digit 0 sits at rows 0,2,3,4,5,7,8,9,10 -> its 5th image (row 5) is a test image;
    # digit 1 at rows 1,6,11,12,13 -> its 5th (row 13).
    np.testing.assert_array_equal(np.flatnonzero(digits.split_mask(labels)), [5, 13])


def test_each_call_returns_the_same_split_in_fresh_arrays(data):
    (x_train, y_train), (x_test, y_test) = data
    (x_train2, y_train2), (x_test2, y_test2) = digits.load_data()
    for a, b in ((x_train, x_train2), (y_train, y_train2), (x_test, x_test2), (y_test, y_test2)):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)


def _copy_data_file(tmp_path, monkeypatch):
    path = tmp_path / "digits.csv.gz"
    shutil.copyfile(digits.DATA_FILE, path)
    monkeypatch.setattr(digits, "DATA_FILE", path)
    return path


def test_intact_copy_loads(tmp_path, monkeypatch):
    _copy_data_file(tmp_path, monkeypatch)
    (x_train, _), _ = digits.load_data()
    assert x_train.shape == (1442, 8, 8)


def test_corrupted_file_raises_a_clear_error(tmp_path, monkeypatch):
    path = _copy_data_file(tmp_path, monkeypatch)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(raw))
    with pytest.raises(digits.ChecksumError, match="corrupted.*sha256.*reinstall"):
        digits.load_data()


def test_truncated_file_raises_a_clear_error(tmp_path, monkeypatch):
    path = _copy_data_file(tmp_path, monkeypatch)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(digits.ChecksumError, match="corrupted"):
        digits.load_data()


def test_missing_file_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(digits, "DATA_FILE", tmp_path / "nowhere.csv.gz")
    with pytest.raises(digits.DatasetNotFoundError, match="not found.*reinstall"):
        digits.load_data()


def test_the_data_file_is_credited():
    readme = (digits.DATA_FILE.parent / "README.md").read_text(encoding="utf-8")
    for needed in ("CC BY 4.0", "UCI", "Alpaydin", "Kaynak", digits.SHA256):
        assert needed in readme
