"""A small writer of TensorBoard event files (no TensorFlow, no protobuf package).

An event file is a sequence of TFRecord records::

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes)
    | length bytes of data         | uint32 masked_crc32c(data)

each holding one ``tensorflow.Event`` protocol buffer, encoded here by hand with the field
numbers of tensorflow/core/util/event.proto and framework/summary.proto:

* ``Event``: wall_time (1, double), step (2, int64), file_version (3, string; the first
  record says ``brain.Event:2``), summary (5, Summary).
* ``Summary``: value (1, repeated Value). ``Value``: tag (1), simple_value (2, float),
  histo (5, HistogramProto), tensor (8, TensorProto), metadata (9, SummaryMetadata).
* ``HistogramProto``: min (1), max (2), num (3), sum (4), sum_squares (5), bucket_limit
  (6, packed doubles), bucket (7, packed doubles); bucket ``i`` counts the values up to
  ``bucket_limit[i]`` (TensorBoard takes ``min`` as the first left edge and ``max`` as the
  last right edge).

Scalars are written as ``simple_value`` and histograms as ``HistogramProto``: the classic
summaries every TensorBoard reads (its ``data_compat`` turns them into the scalars and
histograms plugins' data). The files are checked against TensorBoard 2.21's own reader
(tests/fixtures/keras/make_callbacks.py; tests/test_callbacks.py reads them back with
``EventAccumulator`` where the ``tensorboard`` package is installed).

This module needs only the standard library and NumPy; the TensorBoard application that
shows the files is the optional extra ``pip install fastcnn[tensorboard]``.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time

import numpy as np

FILE_VERSION = "brain.Event:2"

# ----------------------------------------------------------------------- CRC32C
_CRC_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1   # Castagnoli, reflected
    _CRC_TABLE.append(_c)
del _n, _c


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord frames use it (``crc32c(b'123456789') ==
    0xE3069283``)."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits, add 0xa282ead8 (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord record around ``data``."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


def read_records(raw: bytes):
    """The data of each record of ``raw`` (an event file's bytes); ValueError on a bad CRC
    or a truncated record."""
    pos, out = 0, []
    while pos < len(raw):
        if pos + 12 > len(raw):
            raise ValueError(f"truncated record header at byte {pos}")
        length_bytes = raw[pos:pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
        if length_crc != masked_crc32c(length_bytes):
            raise ValueError(f"bad length CRC at byte {pos}")
        data = raw[pos + 12:pos + 12 + length]
        if len(data) != length or pos + 16 + length > len(raw):
            raise ValueError(f"truncated record at byte {pos}")
        (data_crc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
        if data_crc != masked_crc32c(data):
            raise ValueError(f"bad data CRC at byte {pos}")
        out.append(data)
        pos += 16 + length
    return out


# ------------------------------------------------------------- protobuf encoding
def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64   # int64: two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _f_double(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", value)


def _f_float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _f_int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def _f_bytes(field: int, value) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _key(field, 2) + _varint(len(value)) + value


def _f_packed_doubles(field: int, values) -> bytes:
    return _f_bytes(field, np.asarray(values, dtype="<f8").tobytes())


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 summary_values=()) -> bytes:
    """An ``Event``; ``summary_values``: encoded ``Summary.Value`` messages."""
    out = _f_double(1, float(wall_time))
    if step:
        out += _f_int(2, step)
    if file_version is not None:
        out += _f_bytes(3, file_version)
    if summary_values:
        out += _f_bytes(5, b"".join(_f_bytes(1, v) for v in summary_values))
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """``Summary.Value`` with a ``simple_value`` (float32, as TensorBoard stores it)."""
    return _f_bytes(1, tag) + _f_float(2, float(value))


def histogram_proto(values, bins: int = 30) -> bytes:
    """``HistogramProto`` of ``values``: ``bins`` equal-width buckets between the smallest
    and largest finite value (one bucket when they are equal; NaN/inf are left out)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return _f_double(1, 0.0) + _f_double(2, 0.0) + _f_double(3, 0.0)
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        limits, counts = np.array([hi]), np.array([float(v.size)])
    else:
        counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
        limits = edges[1:]
    return (_f_double(1, lo) + _f_double(2, hi) + _f_double(3, float(v.size))
            + _f_double(4, float(v.sum())) + _f_double(5, float(np.dot(v, v)))
            + _f_packed_doubles(6, limits) + _f_packed_doubles(7, counts))


def histogram_value(tag: str, values, bins: int = 30) -> bytes:
    """``Summary.Value`` with a ``histo``."""
    return _f_bytes(1, tag) + _f_bytes(5, histogram_proto(values, bins))


def string_tensor_value(tag: str, text: str, plugin_name: str, content: bytes) -> bytes:
    """``Summary.Value`` holding a scalar string ``TensorProto`` (dtype DT_STRING = 7) with
    the ``SummaryMetadata`` of ``plugin_name`` (Keras's model-config summary uses it)."""
    tensor = _f_int(1, 7) + _f_bytes(2, b"") + _f_bytes(8, text)
    plugin_data = _f_bytes(1, plugin_name) + _f_bytes(2, content)
    metadata = _f_bytes(1, plugin_data)
    return _f_bytes(1, tag) + _f_bytes(8, tensor) + _f_bytes(9, metadata)


# ----------------------------------------------------------------------- writer
_uid = itertools.count()


class EventFileWriter:
    """Appends events to a new ``events.out.tfevents.<time>.<host>.<pid>.<n>`` file in
    ``logdir`` (created when missing), starting with the ``brain.Event:2`` version record.
    Records are buffered; :meth:`flush` writes them, :meth:`close` flushes and closes."""

    def __init__(self, logdir, filename_suffix: str = ""):
        self.logdir = os.fspath(logdir)
        os.makedirs(self.logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_uid)}{filename_suffix}")
        self.path = os.path.join(self.logdir, name)
        self._file = open(self.path, "wb")
        self._pending = []
        self.add_event(encode_event(time.time(), file_version=FILE_VERSION))
        self.flush()

    def add_event(self, event: bytes) -> None:
        if self._file is None:
            raise ValueError(f"the event file {self.path} is closed")
        self._pending.append(frame_record(event))

    def add_summary(self, values, step: int, wall_time: float | None = None) -> None:
        self.add_event(encode_event(time.time() if wall_time is None else wall_time, step,
                                    summary_values=values))

    def add_scalar(self, tag: str, value, step: int, wall_time: float | None = None) -> None:
        self.add_summary([scalar_value(tag, value)], step, wall_time)

    def add_histogram(self, tag: str, values, step: int, wall_time: float | None = None,
                      bins: int = 30) -> None:
        self.add_summary([histogram_value(tag, values, bins)], step, wall_time)

    def flush(self) -> None:
        if self._file is None:
            return
        if self._pending:
            self._file.write(b"".join(self._pending))
            self._pending = []
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
