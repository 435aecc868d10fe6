"""Reading HDF5 files from elsewhere without trusting them (h5py, an optional extra).

What is checked before anything is read or allocated:

* the file is a regular file (saving's ``_open_regular``: no FIFO, no device) that starts
  with the HDF5 signature, and h5py opens it from that one file object (an HDF5 "family"
  or "split" file, which names other files, cannot be opened this way);
* every group and dataset is reached through hard links only: a soft or external link
  (which could point into another file) is refused;
* a dataset is read only after its dtype (a float; bfloat16 and every non-float type are
  refused), its shape (exactly the shape the layer expects), its storage (no external
  raw-data files, no virtual dataset mapping other files) and its filters (deflate, lzf,
  shuffle, fletcher32 only) are checked; its chunks may hold no more elements than the
  dataset (or 2**20), so decompressing one chunk is bounded by what the layer expects;
* attributes (``layer_names``, ``weight_names``, ``model_config``) are read after their
  shape and type are checked, with caps on their number and length.

Reading the HDF5 structures themselves is libhdf5's work; a file it cannot parse raises
an error that is reported, naming the file.
"""
from __future__ import annotations

import io
import os

import numpy as np

# h5py, the optional extra (pip install fastcnn[keras]), is imported on first use, so that
# `import fastcnn` does not pay for it: None once it is known to be missing.
_UNLOADED = object()
h5py = _UNLOADED

__all__ = ["load_h5py", "require_h5py", "H5Reader", "HDF5_SIGNATURE", "is_hdf5"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_NAMES = 1_000_000          # names in one layer_names / weight_names attribute
_MAX_TEXT = 64 * 2**20          # bytes of one text attribute (model_config)
_ALLOWED_FILTERS = {"gzip", "lzf", "shuffle", "fletcher32"}
_CHUNK_FLOOR = 2**20            # a chunk may always hold this many elements

# What h5py raises for a broken, truncated or crafted file.
_H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError, IndexError,
              OverflowError, MemoryError, AttributeError, UnicodeDecodeError)


def load_h5py():
    """The h5py module, or None if it is not installed."""
    global h5py
    if h5py is _UNLOADED:
        try:
            import h5py as module
        except ImportError:
            module = None
        h5py = module
    return h5py


def require_h5py(what):
    """h5py; ImportError naming ``what`` and the extra to install when it is missing."""
    if load_h5py() is None:
        raise ImportError(
            f"{what} needs h5py, which is not installed: it is an optional dependency of "
            f"fastcnn, installed with `pip install fastcnn[keras]` (or `pip install h5py`)")
    return h5py


def is_hdf5(head: bytes) -> bool:
    return head.startswith(HDF5_SIGNATURE)


def _signature_offset(f, size):
    # The superblock is at 0 or after a user block of 512, 1024, 2048, ... bytes.
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size:
        f.seek(offset)
        if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


class Window(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of ``f`` from ``start`` (a stored zip
    member read in place, without a copy)."""

    def __init__(self, f, start, size):
        super().__init__()
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=os.SEEK_SET):
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


class H5Reader:
    """An HDF5 file opened for reading; ``error(message)`` makes the exception to raise
    (saving's ModelFileError naming the file)."""

    def __init__(self, fileobj, size, error, what="the file"):
        require_h5py("reading Keras's HDF5 files")
        self.error = error
        self.what = what
        try:
            offset = _signature_offset(fileobj, size)
            fileobj.seek(0)
        except _H5_ERRORS as exc:
            raise error(f"{what} cannot be read ({exc})") from None
        if offset is None:
            raise error(f"{what} is not an HDF5 file (no HDF5 signature); Keras's .h5, "
                        f".weights.h5 and .keras weight files are HDF5")
        try:
            self.file = h5py.File(fileobj, "r")
        except _H5_ERRORS as exc:
            raise error(f"{what} is not a readable HDF5 file (truncated or damaged?): "
                        f"{exc}") from None

    def close(self):
        try:
            self.file.close()
        except _H5_ERRORS:
            pass

    # ------------------------------------------------------------ structure
    def _link(self, parent, name, what):
        try:
            link = parent.get(name, getlink=True)
        except _H5_ERRORS as exc:
            raise self.error(f"{what} cannot be read ({exc})") from None
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise self.error(f"{what} is a {type(link).__name__} (a link to elsewhere, "
                             f"perhaps another file); only plain groups and datasets are "
                             f"read")
        try:
            return parent[name]
        except _H5_ERRORS as exc:
            raise self.error(f"{what} cannot be read ({exc})") from None

    def group(self, parent, path, what):
        """The group at ``path`` (``a/b/c``) under ``parent`` (the file if None), or None
        if absent; a dataset where a group belongs is an error."""
        node = self.file if parent is None else parent
        for part in [p for p in path.split("/") if p]:
            node = self._link(node, part, what)
            if node is None:
                return None
            if not isinstance(node, h5py.Group):
                raise self.error(f"{what}: {node.name!r} is not an HDF5 group")
        return node

    def keys(self, group, what):
        try:
            names = list(group.keys())
        except _H5_ERRORS as exc:
            raise self.error(f"{what} cannot be listed ({exc})") from None
        if len(names) > _MAX_NAMES:
            raise self.error(f"{what} holds {len(names)} entries, more than {_MAX_NAMES}")
        return names

    # ------------------------------------------------------------ attributes
    def _attr_id(self, obj, name, what):
        try:
            if name not in obj.attrs:
                return None
            return obj.attrs.get_id(name)
        except _H5_ERRORS as exc:
            raise self.error(f"{what}: attribute {name!r} cannot be read ({exc})") from None

    def _read_attr(self, obj, name, what):
        try:
            return obj.attrs[name]
        except _H5_ERRORS as exc:
            raise self.error(f"{what}: attribute {name!r} cannot be read ({exc})") from None

    def attr_text(self, obj, name, what):
        """A text attribute (``model_config``), or None if absent."""
        aid = self._attr_id(obj, name, what)
        if aid is None:
            return None
        if aid.shape not in ((), None) or aid.get_storage_size() > _MAX_TEXT:
            raise self.error(f"{what}: attribute {name!r} is not one string (shape "
                             f"{aid.shape}, {aid.get_storage_size()} bytes)")
        value = self._read_attr(obj, name, what)
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value[()]
        if isinstance(value, bytes):
            if len(value) > _MAX_TEXT:
                raise self.error(f"{what}: attribute {name!r} is over {_MAX_TEXT} bytes")
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.error(f"{what}: attribute {name!r} is not UTF-8 ({exc})") from None
        if not isinstance(value, str):
            raise self.error(f"{what}: attribute {name!r} is not a string (got "
                             f"{type(value).__name__})")
        if len(value) > _MAX_TEXT:
            raise self.error(f"{what}: attribute {name!r} is over {_MAX_TEXT} characters")
        return value

    def attr_names(self, obj, name, what):
        """A list-of-names attribute (``layer_names``, ``weight_names``; Keras splits a long
        one into ``name0``, ``name1``, ...), or None if absent."""
        parts = []
        if self._attr_id(obj, name, what) is not None:
            parts = [name]
        else:
            k = 0
            while self._attr_id(obj, f"{name}{k}", what) is not None:
                parts.append(f"{name}{k}")
                k += 1
                if k > _MAX_NAMES:
                    break
            if not parts:
                return None
        names = []
        for part in parts:
            aid = self._attr_id(obj, part, what)
            shape = aid.shape or ()
            count = int(np.prod(shape)) if shape else 1
            if len(shape) > 1 or count + len(names) > _MAX_NAMES:
                raise self.error(f"{what}: attribute {part!r} has shape {shape}; expected a "
                                 f"list of at most {_MAX_NAMES} names")
            value = self._read_attr(obj, part, what)
            for v in np.atleast_1d(np.asarray(value, dtype=object)).tolist():
                if isinstance(v, bytes):
                    try:
                        v = v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise self.error(f"{what}: attribute {part!r} holds a name that is "
                                         f"not UTF-8") from None
                if not isinstance(v, str):
                    raise self.error(f"{what}: attribute {part!r} holds {v!r}, not a name")
                names.append(v)
        return names

    # -------------------------------------------------------------- datasets
    def dataset(self, group, name, what):
        """The dataset ``name`` of ``group``, checked to be an ordinary float dataset
        stored in this file (not yet read); None if absent."""
        node = group
        for part in [p for p in name.split("/") if p]:
            if not isinstance(node, h5py.Group):
                raise self.error(f"{what}: {node.name!r} is not an HDF5 group")
            node = self._link(node, part, what)
            if node is None:
                return None
        if not isinstance(node, h5py.Dataset):
            raise self.error(f"{what}: {node.name!r} is not a dataset")
        dset = node
        try:
            dtype, shape = dset.dtype, tuple(int(d) for d in dset.shape)
            external, virtual = dset.external, dset.is_virtual
            filters = dict(dset._filters)
            chunks = dset.chunks
            dtype_attr = dset.attrs.get("dtype") if "dtype" in dset.attrs else None
        except _H5_ERRORS as exc:
            raise self.error(f"{what} cannot be read ({exc})") from None
        if dtype_attr is not None:
            dtype_attr = dtype_attr.decode() if isinstance(dtype_attr, bytes) else dtype_attr
            raise self.error(f"{what} is stored as {dtype_attr!r} (Keras's dtype attribute); "
                             f"fastcnn reads float16, float32 and float64 weights only")
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise self.error(f"{what} has dtype {dtype}; fastcnn reads float16, float32 and "
                             f"float64 weights only")
        if external:
            raise self.error(f"{what} keeps its data in external files ({external!r}); "
                             f"only data stored inside the file is read")
        if virtual:
            raise self.error(f"{what} is a virtual dataset (it maps other datasets or "
                             f"files); only data stored inside the file is read")
        unknown = sorted(set(filters) - _ALLOWED_FILTERS)
        if unknown:
            raise self.error(f"{what} is stored with the HDF5 filters {unknown}; fastcnn "
                             f"reads {sorted(_ALLOWED_FILTERS)} only")
        if chunks is not None:
            limit = max(int(np.prod(shape)) if shape else 1, _CHUNK_FLOOR)
            if int(np.prod(chunks)) > limit:
                raise self.error(f"{what} declares chunks {chunks} of {int(np.prod(chunks))} "
                                 f"elements for a dataset of shape {shape}; refused (over "
                                 f"{limit})")
        return dset

    def read(self, dset, shape, dtype, what):
        """The array of ``dset`` (checked by :meth:`dataset`), which must have ``shape``,
        read into a new array of exactly that size and cast to ``dtype``."""
        shape = tuple(int(d) for d in shape)
        if tuple(dset.shape) != shape:
            raise self.error(f"{what} has shape {tuple(dset.shape)}, expected {shape}")
        try:
            stored = dset.id.get_storage_size()
            filtered = bool(dset._filters)
        except _H5_ERRORS as exc:
            raise self.error(f"{what} cannot be read ({exc})") from None
        nbytes = int(np.prod(shape)) * dset.dtype.itemsize if shape else dset.dtype.itemsize
        if not filtered and stored < nbytes:
            # Uncompressed data takes its full size; less means never written (HDF5
            # would hand back its fill value) or cut off.
            raise self.error(f"{what} holds {stored} of its {nbytes} bytes (never written "
                             f"or truncated)")
        out = np.empty(shape, dtype=dset.dtype.newbyteorder("="))
        try:
            if out.size:
                dset.read_direct(out)
        except _H5_ERRORS as exc:
            raise self.error(f"{what} cannot be read (truncated or damaged data?): "
                             f"{exc}") from None
        return out.astype(dtype, copy=False)
