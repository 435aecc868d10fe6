"""The IDX reader on synthetic files: layout checks, clear errors, no shared data needed."""
import gzip
import struct

import numpy as np
import pytest

from fastcnn.datasets._idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    IdxFormatError,
    read_idx,
    read_image_label_pair,
)


def idx_bytes(magic, dims, payload):
    return struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(payload)


def write(path, data):
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)


@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_reads_images_gz_and_raw(tmp_path, images, name):
    path = write(tmp_path / name, idx_bytes(IMAGES_MAGIC, images.shape, images.tobytes()))
    x = read_idx(path, IMAGES_MAGIC)
    np.testing.assert_array_equal(x, images)
    assert x.dtype == np.uint8 and x.flags.writeable and x.flags.c_contiguous


def test_reads_labels(tmp_path):
    labels = np.array([3, 0, 9, 9, 1], np.uint8)
    path = write(tmp_path / "y.gz", idx_bytes(LABELS_MAGIC, [5], labels.tobytes()))
    np.testing.assert_array_equal(read_idx(str(path), LABELS_MAGIC), labels)


def test_empty_dataset_is_valid(tmp_path):
    path = write(tmp_path / "x.gz", idx_bytes(IMAGES_MAGIC, [0, 28, 28], b""))
    assert read_idx(path, IMAGES_MAGIC).shape == (0, 28, 28)


@pytest.mark.parametrize(
    "magic, words",
    [
        (LABELS_MAGIC, "magic number is 2049"),  # a labels file where images are expected
        (0x00000D03, "magic number is 3331"),  # float32 type code
        (0x1F8B0803, "magic number"),  # non-zero leading bytes
        (0x00000802, "magic number is 2050"),  # wrong dimension count
    ],
)
def test_wrong_magic(tmp_path, magic, words):
    path = write(tmp_path / "bad.gz", idx_bytes(magic, [1, 2, 2], b"\0" * 4))
    with pytest.raises(IdxFormatError, match=words) as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value) and "expected 2051" in str(info.value)


def test_truncated_payload(tmp_path, images):
    data = idx_bytes(IMAGES_MAGIC, images.shape, images.tobytes())[:-7]
    path = write(tmp_path / "short.gz", data)
    with pytest.raises(IdxFormatError, match=r"truncated IDX payload.*60 bytes, only 53") as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_extra_bytes(tmp_path, images):
    path = write(tmp_path / "long", idx_bytes(IMAGES_MAGIC, images.shape, images.tobytes()) + b"x")
    with pytest.raises(IdxFormatError, match="extra bytes after the IDX payload") as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [0, 2, 4, 9])
def test_truncated_header(tmp_path, cut):
    path = write(tmp_path / "h.gz", idx_bytes(IMAGES_MAGIC, [1, 1, 1], b"\0")[:cut])
    with pytest.raises(IdxFormatError, match="ends inside the IDX header") as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_absurd_header_fails_before_allocating(tmp_path):
    # 2**32-1 cubed bytes: must be refused from the header alone, not by a MemoryError.
    path = write(tmp_path / "huge", idx_bytes(IMAGES_MAGIC, [2**32 - 1] * 3, b""))
    with pytest.raises(IdxFormatError, match="header is corrupted"):
        read_idx(path, IMAGES_MAGIC)


def test_truncated_gzip_stream(tmp_path, images):
    packed = gzip.compress(idx_bytes(IMAGES_MAGIC, images.shape, images.tobytes()))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) - 10])  # loses the CRC/size trailer
    with pytest.raises(IdxFormatError, match="damaged gzip stream") as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_gzip_crc_mismatch(tmp_path, images):
    packed = bytearray(gzip.compress(idx_bytes(IMAGES_MAGIC, images.shape, images.tobytes())))
    packed[-8] ^= 0xFF  # first byte of the CRC32 in the gzip trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(IdxFormatError, match="damaged gzip stream"):
        read_idx(path, IMAGES_MAGIC)


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(idx_bytes(LABELS_MAGIC, [1], b"\1"))
    with pytest.raises(IdxFormatError, match="damaged gzip stream"):
        read_idx(path, LABELS_MAGIC)


def test_rejects_invalid_magic_argument(tmp_path):
    with pytest.raises(ValueError, match="magic must be a uint8 IDX magic number"):
        read_idx(tmp_path / "unused", 0x00000D01)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.gz", LABELS_MAGIC)


# read_image_label_pair: the checks across the two files of one split.


def write_pair(tmp_path, image_dims, n_labels, label_value=1):
    x = write(
        tmp_path / "x.gz", idx_bytes(IMAGES_MAGIC, image_dims, b"\7" * int(np.prod(image_dims)))
    )
    y = write(tmp_path / "y.gz", idx_bytes(LABELS_MAGIC, [n_labels], [label_value] * n_labels))
    return x, y


def test_pair_good(tmp_path):
    x, y = read_image_label_pair(*write_pair(tmp_path, [3, 28, 28], 3), (28, 28), 10)
    assert x.shape == (3, 28, 28) and y.shape == (3,)
    assert (x == 7).all() and (y == 1).all()


def test_pair_wrong_image_size(tmp_path):
    paths = write_pair(tmp_path, [3, 27, 28], 3)
    with pytest.raises(IdxFormatError, match="images are 27x28, expected 28x28") as info:
        read_image_label_pair(*paths, (28, 28), 10)
    assert str(paths[0]) in str(info.value)


def test_pair_count_mismatch(tmp_path):
    paths = write_pair(tmp_path, [3, 28, 28], 4)
    with pytest.raises(IdxFormatError, match="3 images but .* 4 labels"):
        read_image_label_pair(*paths, (28, 28), 10)


def test_pair_label_out_of_range(tmp_path):
    paths = write_pair(tmp_path, [2, 28, 28], 2, label_value=10)
    with pytest.raises(IdxFormatError, match=r"label 10 outside 0\.\.9") as info:
        read_image_label_pair(*paths, (28, 28), 10)
    assert str(paths[1]) in str(info.value)
