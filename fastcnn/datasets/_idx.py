"""Reader for the IDX format of the MNIST family (LeCun et al.), plain or gzip-compressed.

An IDX file is a big-endian header followed by raw row-major data:

* a 4-byte magic number ``0x00 0x00 TYPE NDIM``: two zero bytes, a type code (``0x08`` =
  unsigned byte, the only type the MNIST family uses) and the number of dimensions, so
  2051 (``0x00000803``) is a 3-d uint8 array (images) and 2049 (``0x00000801``) a 1-d one
  (labels);
* one 4-byte unsigned count per dimension;
* exactly ``prod(counts)`` data bytes, nothing after them.

Every departure from that layout raises :class:`IdxFormatError` naming the file, so a damaged
file never turns into silently misshapen arrays.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

#: Magic number of a 3-d uint8 IDX file (images: N, rows, cols).
IMAGES_MAGIC = 0x00000803  # 2051
#: Magic number of a 1-d uint8 IDX file (labels: N).
LABELS_MAGIC = 0x00000801  # 2049

_UBYTE = 0x08
# Largest payload accepted (1 GiB). A corrupted header can claim up to 2**32 items per
# dimension; allocating that before noticing the file is short would exhaust memory.
_MAX_PAYLOAD = 1 << 30


class IdxFormatError(ValueError):
    """A file is not a well-formed IDX file of the expected kind."""


def _open(path: Path):
    # The suffix decides, not content sniffing: a .gz file whose gzip header is damaged must
    # report a gzip error, not be misread as raw IDX with a "wrong magic number".
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exactly(f, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = f.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _readinto_exactly(f, buf: memoryview) -> int:
    filled = 0
    while filled < len(buf):
        n = f.readinto(buf[filled:])
        if not n:
            break
        filled += n
    return filled


def read_idx(path, magic: int) -> np.ndarray:
    """Reads the uint8 IDX file ``path`` whose magic number must be ``magic``.

    ``.gz`` files are decompressed on the fly; any other name is read as raw IDX.

    Returns:
        A fresh, writable, C-contiguous uint8 array with the shape the header declares.

    Raises:
        IdxFormatError: wrong magic number, unsupported type code, header or payload shorter
            or longer than declared, or a damaged gzip stream. The message names the file.
        OSError: the file cannot be opened.
    """
    path = Path(os.fspath(path))
    want_ndim = magic & 0xFF
    if magic >> 8 != _UBYTE or not 1 <= want_ndim <= 255:
        raise ValueError(
            f"magic must be a uint8 IDX magic number such as {IMAGES_MAGIC} or "
            f"{LABELS_MAGIC}, got {magic!r}"
        )
    try:
        with _open(path) as f:
            head = _read_exactly(f, 4)
            if len(head) < 4:
                raise IdxFormatError(
                    f"{str(path)!r}: file ends inside the IDX header ({len(head)} bytes, "
                    f"expected a 4-byte magic number {magic})"
                )
            (got_magic,) = struct.unpack(">I", head)
            if got_magic != magic:
                raise IdxFormatError(
                    f"{str(path)!r}: IDX magic number is {got_magic} (0x{got_magic:08x}), "
                    f"expected {magic} (0x{magic:08x}: uint8, {want_ndim} dimension(s))"
                )
            dims_raw = _read_exactly(f, 4 * want_ndim)
            if len(dims_raw) < 4 * want_ndim:
                raise IdxFormatError(
                    f"{str(path)!r}: file ends inside the IDX header: {want_ndim} "
                    f"dimension count(s) declared, only {len(dims_raw)} of "
                    f"{4 * want_ndim} header bytes present"
                )
            shape = struct.unpack(f">{want_ndim}I", dims_raw)
            size = math.prod(shape)
            if size > _MAX_PAYLOAD:
                raise IdxFormatError(
                    f"{str(path)!r}: IDX header declares shape {shape} ({size} bytes), "
                    f"larger than the {_MAX_PAYLOAD}-byte limit; the header is corrupted"
                )
            data = np.empty(size, dtype=np.uint8)
            got = _readinto_exactly(f, memoryview(data))
            if got < size:
                raise IdxFormatError(
                    f"{str(path)!r}: truncated IDX payload: header declares shape {shape} "
                    f"= {size} bytes, only {got} present"
                )
            # Reading past the payload also makes gzip check the stream's CRC and length.
            extra = f.read(1)
            if extra:
                raise IdxFormatError(
                    f"{str(path)!r}: extra bytes after the IDX payload: header declares "
                    f"shape {shape} = {size} bytes, the file holds more"
                )
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IdxFormatError(
            f"{str(path)!r}: damaged gzip stream ({type(exc).__name__}: {exc})"
        ) from exc
    return data.reshape(shape)


def read_image_label_pair(
    images_path, labels_path, image_shape: tuple[int, ...], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split: an images file (magic 2051) and its labels file (magic 2049).

    Checks that both hold the same number of examples, that each image has ``image_shape``
    and that every label is in ``0 .. num_classes - 1``.

    Returns:
        ``(x, y)``: uint8 arrays of shape ``(N,) + image_shape`` and ``(N,)``.
    """
    x = read_idx(images_path, IMAGES_MAGIC)
    y = read_idx(labels_path, LABELS_MAGIC)
    if x.shape[1:] != tuple(image_shape):
        raise IdxFormatError(
            f"{str(images_path)!r}: images are {x.shape[1]}x{x.shape[2]}, expected "
            f"{'x'.join(map(str, image_shape))}"
        )
    if x.shape[0] != y.shape[0]:
        raise IdxFormatError(
            f"{str(images_path)!r} holds {x.shape[0]} images but {str(labels_path)!r} "
            f"holds {y.shape[0]} labels; they must match"
        )
    if y.size and int(y.max()) >= num_classes:
        raise IdxFormatError(
            f"{str(labels_path)!r}: label {int(y.max())} outside 0..{num_classes - 1}"
        )
    return x, y
