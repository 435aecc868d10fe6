"""Memory for the fast backends' outputs and workspaces: 64-byte aligned, large ones reused.

Two costs of plain ``np.empty`` that the compiled kernels pay on every call:

* Alignment. NumPy's large arrays start 16 (or 48) bytes past a 64-byte cache line, so
  every 64-byte vector load or store of a kernel straddles two lines (the depthwise
  forward ran 10-30% slower on misaligned inputs; 112x112x32 at batch 8: 1.8 -> 1.3-1.5 ms
  aligned). Since one layer's output is the next layer's input, aligning every output
  aligns the next kernel's input too. ``offset=`` (with ``align=``, up to a page) places
  an array elsewhere: cython's depthwise puts its outputs where ``depthwise.output_offset``
  says, three lines past their source's lines in the page (the kernels walk one channel
  vector of both, whose lines a large pixel pitch crowds into a few L1 sets: 28x28x256
  forward 0.53 -> 0.33 ms) and at the source's offset in the line where the kernels
  realign the two (a short channel chunk, at column stride 1 wrapped into the last one:
  forward 28x28x192 0.236 -> 0.214 ms on a source 16 bytes past a line, within 3% of a
  line-aligned one).
* Page faults. glibc serves allocations above its mmap threshold (dynamic, at most
  32 MiB; fastcnn/_runtime.py sets 32) with a fresh mmap, unmapped again when freed: such
  an array is then faulted in and zeroed by the kernel on first touch, every call (a
  38.5 MB gradient filled: 7-12 ms fresh, 1.8 ms into a reused buffer).

So arrays of at least :data:`POOL_MIN_BYTES` are carved from raw uint8 blocks that this
module keeps and hands out again. (Smaller ones malloc recycles itself, without page
faults; pooling them as well only fragmented memory: cats-vs-dogs' train step at batch 32
peaked at 365 MiB above its baseline with a pool from 1 MiB, 316 from 32 MiB, 276 without
a pool, at the same 277 ms and 0 page faults a step either way; 1 thread, 2026-12-07.)
A block is free when no array uses it any more, which is read from its reference count:
every array made here (and every view, reshape or slice of one, however deep) holds the
block as its ``.base``, so a block whose only references are the pool's own is unused.
Nothing else can point into a block (NumPy arrays carry their base; a C kernel only sees
the memory while its caller holds the array). Blocks are reused by exact (rounded) size,
most recently used first; the unused blocks the pool keeps are capped
(``FASTCNN_BUFFER_POOL_MB``, default 256; 0 turns the pool off), the least recently used
dropped first, when a block is taken. :func:`clear` drops them all.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading

import numpy as np

ALIGN = 64                 # a cache line, and an AVX-512 vector
PAGE = 4096                # empty()'s largest align
POOL_MIN_BYTES = 32 << 20  # glibc's largest mmap threshold: malloc recycles smaller blocks
ALIGN_MIN_ITEMS = 1 << 16  # output(): smaller arrays are plain np.empty (see there)
_QUANTUM = 64 << 10        # block sizes are rounded up to this: near sizes share blocks
_ENV = "FASTCNN_BUFFER_POOL_MB"
_DEFAULT_MB = 256


def empty(shape, dtype, *, offset=0, align=ALIGN):
    """``np.empty(shape, dtype)`` (C order) whose data starts ``offset`` bytes past a
    multiple of ``align`` (a power of two from 64, a cache line, to :data:`PAGE`: an
    output placed relative to its source's page offset keeps off the L1 sets the source's
    lines use); from the pool when it has at least :data:`POOL_MIN_BYTES`."""
    # The common arguments pass a look-up and a few comparisons (1.9 -> 1.4 us a call,
    # which every fast-backend output from 64K elements pays); anything else is checked
    # in full.
    try:
        dtype = _DTYPES[dtype]
    except (KeyError, TypeError):   # not seen yet, or unhashable
        dtype = _checked_dtype(dtype)
    if type(align) is not int or (align != ALIGN and align != PAGE):
        _check_align(align)
    if offset and (type(offset) is not int or not 0 <= offset < align
                   or offset % dtype.itemsize):
        _check_offset(offset, dtype, align)
    if type(shape) is not tuple:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = dtype.itemsize * math.prod(shape)
    if nbytes >= POOL_MIN_BYTES and _POOL.limit:
        raw = _POOL.take(-(-(nbytes + align) // _QUANTUM) * _QUANTUM)
    else:
        raw = np.empty(nbytes + align, np.uint8)
    # The address through ctypes.from_buffer: 0.3 us, where raw.ctypes.data takes 1 us
    # (this function takes about 1.4 us for a small array, against 0.25 for np.empty).
    start = (offset - ctypes.addressof(_CHAR.from_buffer(raw))) % align
    return np.ndarray(shape, dtype, raw, start)  # a view: its .base is raw


def zeros(shape, dtype, *, offset=0, align=ALIGN):
    """As :func:`empty`, filled with zeros (a reused block is dirty)."""
    a = empty(shape, dtype, offset=offset, align=align)
    a.fill(0)
    return a


def output(shape, dtype, *, zero=False):
    """An op's output or workspace as the fast backends make them: :func:`empty` (or
    :func:`zeros`) from :data:`ALIGN_MIN_ITEMS` elements up (256 KiB of float32), plain
    ``np.empty`` (``np.zeros``) below. Aligning costs about 1 us a call, more than a kernel
    gains on an array that small (it sits in L1/L2): with every output aligned, the
    from-scratch CNN's batch-1 train step took 0.115 ms instead of 0.095 and LeNet-5's
    0.32 instead of 0.27 (1 thread, 2026-12-07). (Elements, not bytes: no dtype look-up
    on this path, which costs 0.2 us more than np.empty.)"""
    if math.prod(shape) < ALIGN_MIN_ITEMS:
        return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
    return zeros(shape, dtype) if zero else empty(shape, dtype)


def out_arg(shape, dtype):
    """``{"out": empty(shape, dtype)}`` to pass to a NumPy call from :data:`ALIGN_MIN_ITEMS`
    elements up, else ``{}`` (NumPy allocates): ``out=`` itself costs 0.3-2 us on a small
    array (np.dot's overlap check, a ufunc's keyword handling)."""
    return _NO_ARGS if math.prod(shape) < ALIGN_MIN_ITEMS else {"out": empty(shape, dtype)}


_NO_ARGS = {}


_CHAR = ctypes.c_char


def _checked_dtype(dtype):
    """``np.dtype(dtype)``, refused if it holds Python objects; remembered for the next
    call when ``dtype`` is hashable."""
    try:
        checked = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy dtype, got {dtype!r}") from None
    if checked.hasobject:
        raise TypeError(f"dtype must hold no Python objects (memory here is uninitialised), "
                        f"got {checked}")
    try:
        _DTYPES[dtype] = checked
    except TypeError:   # unhashable (a list of fields): checked again next time
        pass
    return checked


_DTYPES = {}


def _check_align(align):
    if (not isinstance(align, (int, np.integer)) or isinstance(align, bool)
            or not ALIGN <= align <= PAGE
            or align & (align - 1)):
        raise ValueError(f"align must be a power of two in [{ALIGN}, {PAGE}], got {align!r}")


def _check_offset(offset, dtype, align):
    if (not isinstance(offset, (int, np.integer)) or not 0 <= offset < align
            or offset % dtype.itemsize):
        raise ValueError(
            f"offset must be an int in [0, {align}) and a multiple of the itemsize "
            f"({dtype.itemsize} for {dtype}), got {offset!r}"
        )


class _Pool:
    """Raw uint8 blocks, each either in use (some array's base) or idle. Thread-safe: one
    lock around the search, so that two threads never take the same idle block (the
    taker's own reference marks it busy before the lock is released)."""

    def __init__(self, limit):
        self.limit = limit      # bytes of idle blocks kept at most; 0: no pool
        self._blocks = {}       # id -> block, least recently taken first
        self._lock = threading.Lock()
        self._idle_refs = 0
        self._idle_refs = self._calibrate()

    def _refcounts(self):
        # A block's references seen here: the dict's, the loop variable's and getrefcount's
        # argument; measured once on a probe (_calibrate) rather than assumed, as the
        # interpreter's own count may differ between Python versions.
        return [sys.getrefcount(b) for b in self._blocks.values()]

    def _calibrate(self):
        self._blocks[0] = np.empty(1, np.uint8)
        (refs,) = self._refcounts()
        self._blocks.clear()
        return refs

    def _idle(self):
        """The idle blocks, least recently taken first."""
        return [b for b, r in zip(self._blocks.values(), self._refcounts())
                if r <= self._idle_refs]

    def take(self, nbytes):
        """An idle block of ``nbytes`` (the most recently taken one), else a new one."""
        with self._lock:
            idle = self._idle()
            block = next((b for b in reversed(idle) if b.nbytes == nbytes), None)
            if block is None:
                block = np.empty(nbytes, np.uint8)
            else:
                idle = [b for b in idle if b is not block]
                del self._blocks[id(block)]   # re-inserted below: now the most recent
            self._blocks[id(block)] = block
            self._trim(idle)
            del idle   # (its references would make those blocks look busy to another thread)
            return block   # our reference keeps it busy until the caller's array holds it

    def _trim(self, idle):
        excess = sum(b.nbytes for b in idle) - self.limit
        for b in idle:
            if excess <= 0:
                break
            del self._blocks[id(b)]
            excess -= b.nbytes

    def clear(self, forget_all=False):
        # Forgetting a block in use is safe too: it is then freed with its last array.
        with self._lock:
            for b in list(self._blocks.values()) if forget_all else self._idle():
                del self._blocks[id(b)]

    def stats(self):
        """``(blocks in use, bytes in use, idle blocks, idle bytes)``."""
        with self._lock:
            idle = self._idle()
            idle_bytes = sum(b.nbytes for b in idle)
            total = sum(b.nbytes for b in self._blocks.values())
            return len(self._blocks) - len(idle), total - idle_bytes, len(idle), idle_bytes


def _limit_from_env():
    value = os.environ.get(_ENV, "").strip()
    if not value:
        return _DEFAULT_MB << 20
    try:
        mb = float(value)
    except ValueError:
        mb = -1
    if not mb >= 0:
        raise ValueError(f"{_ENV} must be a number of MiB >= 0 (0 turns the buffer pool "
                         f"off), got {value!r}")
    return int(mb * (1 << 20))


_POOL = _Pool(_limit_from_env())


def clear():
    """Drops the idle blocks (the memory goes back to the system; arrays in use keep theirs)."""
    _POOL.clear()


def set_limit(nbytes=None):
    """Caps the idle blocks kept at ``nbytes`` (0: no pool; None: from the environment,
    ``FASTCNN_BUFFER_POOL_MB``); returns the previous cap. Idle blocks over it are dropped."""
    previous = _POOL.limit
    _POOL.limit = _limit_from_env() if nbytes is None else int(nbytes)
    if _POOL.limit:
        with _POOL._lock:
            _POOL._trim(_POOL._idle())
    else:   # the pool is not consulted any more: let every block go with its arrays
        _POOL.clear(forget_all=True)
    return previous


def stats():
    """``(blocks in use, bytes in use, idle blocks, idle bytes)`` of the pool."""
    return _POOL.stats()
