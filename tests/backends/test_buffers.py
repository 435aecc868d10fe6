"""fastcnn/backends/_buffers.py: aligned arrays, and the pool of large blocks behind them."""
import os
import subprocess
import sys
import threading
import weakref

import fastcnn  # noqa: F401  (before numpy: thread settings)
import numpy as np
import pytest

from fastcnn import backends
from fastcnn.backends import _buffers

MIB = 1 << 20
BIG = (MIB // 4 + 1000,)   # float32: just over 1 MiB, pooled
SMALL = (3, 5, 7)


@pytest.fixture(autouse=True)
def fresh_pool(monkeypatch):
    """Each test starts with an empty pool at the default cap and leaves it so; arrays are
    pooled from 1 MiB (32 MiB by default: the same code, slower tests)."""
    monkeypatch.setattr(_buffers, "POOL_MIN_BYTES", MIB)
    previous = _buffers.set_limit(256 * MIB)
    _buffers.clear()
    yield
    _buffers.set_limit(previous)
    _buffers.clear()


def addr(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("shape", [SMALL, BIG, (0, 4), ()])
@pytest.mark.parametrize("dtype, offsets", [(np.float32, (0, 4, 16, 60)),
                                            (np.float64, (0, 8, 56)), (np.int32, (0, 12))])
def test_alignment_and_offset(shape, dtype, offsets):
    for offset in offsets:
        for make in (_buffers.empty, _buffers.zeros):
            a = make(shape, dtype, offset=offset)
            assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
            assert a.flags.writeable and a.flags.aligned
            assert addr(a) % 64 == offset
            if make is _buffers.zeros:
                assert not a.any()


@pytest.mark.parametrize("shape", [SMALL, BIG])
def test_page_offsets(shape):
    """align= up to a page: the offset is then from a page boundary (pooled blocks too)."""
    for offset in (0, 16, 192, 208, 4092):
        for make in (_buffers.empty, _buffers.zeros):
            a = make(shape, np.float32, offset=offset, align=_buffers.PAGE)
            assert addr(a) % _buffers.PAGE == offset and a.shape == shape
            a.fill(1)   # the whole array inside its block
    b = _buffers.empty(shape, np.float32, offset=48, align=128)
    assert addr(b) % 128 == 48


@pytest.mark.parametrize("align", [32, 96, 8192, 64.0, "4096"])
def test_bad_align(align):
    with pytest.raises(ValueError, match=r"align must be a power of two in \[64, 4096\], got"):
        _buffers.empty(SMALL, np.float32, align=align)


def test_offset_below_align():
    with pytest.raises(ValueError, match=r"offset must be an int in \[0, 4096\)"):
        _buffers.empty(SMALL, np.float32, offset=4096, align=_buffers.PAGE)


def test_int_shape():
    assert _buffers.empty(10, np.float32).shape == (10,)


def test_reuse_after_drop_and_zeros_on_a_dirty_block():
    a = _buffers.empty(BIG, np.float32)
    a.fill(7)
    p = addr(a)
    del a
    b = _buffers.empty(BIG, np.float32)
    assert addr(b) == p
    b.fill(3)
    del b
    z = _buffers.zeros(BIG, np.float32)
    assert addr(z) == p and not z.any()


def test_reuse_by_rounded_size_and_other_offsets():
    a = _buffers.empty(BIG, np.float32)
    p = addr(a) - addr(a) % 64
    del a
    b = _buffers.empty((BIG[0] + 3,), np.float32, offset=8)   # same 64 KiB-rounded block
    assert addr(b) - 8 == p


@pytest.mark.parametrize("keep", ["view", "view_of_view", "reshape", "ctx_tuple", "slice",
                                  "memoryview"])
def test_no_reuse_while_anything_uses_the_block(keep):
    a = _buffers.empty(BIG, np.float32)
    a.fill(1)
    p = addr(a)
    held = {
        "view": lambda: a.view(np.int32),
        "view_of_view": lambda: a[10:].view(np.uint8)[::2],
        "reshape": lambda: a.reshape(-1, 8),
        "ctx_tuple": lambda: (None, (a[:5], 3)),
        "slice": lambda: a[-1:],
        "memoryview": lambda: memoryview(a),
    }[keep]()
    del a
    b = _buffers.empty(BIG, np.float32)
    assert addr(b) != p
    b.fill(2)
    del held
    c = _buffers.empty(BIG, np.float32)   # now the first block is free again
    assert addr(c) == p


def test_small_arrays_are_not_pooled():
    assert _buffers.empty(SMALL, np.float32).base.nbytes < MIB
    assert _buffers.stats() == (0, 0, 0, 0)


def test_cap_and_lru_eviction():
    _buffers.set_limit(11 * MIB // 2)
    sizes = [(MIB // 4 * k,) for k in (1, 2, 3)]     # 1, 2 and 3 MiB arrays
    arrays = [_buffers.empty(s, np.float32) for s in sizes]
    blocks = [weakref.ref(a.base) for a in arrays]   # (an address may come back from malloc)
    del arrays
    # Nothing is dropped before the next take: 6+ MiB idle.
    assert _buffers.stats()[2] == 3
    # Reusing the 3 MiB block leaves 1 + 2 MiB idle: within the 5.5 MiB cap, both kept.
    c = _buffers.empty(sizes[2], np.float32)
    assert c.base is blocks[2]()
    assert _buffers.stats()[2:] == (2, sum(_bytes(s) for s in sizes[:2]))
    del c
    # A new size: 1 + 2 + 3 MiB idle is over the cap: the least recently taken (1 MiB) goes
    # (blocks are 64 KiB more than their arrays: 2 + 3 MiB are still within it).
    d = _buffers.empty((MIB,), np.float32)
    assert blocks[0]() is None and _buffers.stats()[2] == 2
    b = _buffers.empty(sizes[1], np.float32)
    assert b.base is blocks[1]()
    del b, d


def _bytes(shape):
    n = 4 * int(np.prod(shape)) + 64
    return -(-n // (64 << 10)) * (64 << 10)


def test_clear_drops_idle_blocks_only():
    a = _buffers.empty(BIG, np.float32)
    b = _buffers.empty(BIG, np.float32)
    del b
    assert _buffers.stats()[0::2] == (1, 1)
    _buffers.clear()
    assert _buffers.stats()[0::2] == (1, 0)
    del a


def test_limit_zero_disables_the_pool():
    _buffers.set_limit(0)
    a = _buffers.empty(BIG, np.float32)
    assert addr(a) % 64 == 0 and _buffers.stats() == (0, 0, 0, 0)


def test_env_zero_disables_the_pool():
    code = ("import fastcnn, numpy as np; from fastcnn.backends import _buffers as b; "
            "a = b.empty((b.POOL_MIN_BYTES,), np.float32); print(b.stats(), a.ctypes.data % 64)")
    env = dict(os.environ, FASTCNN_BUFFER_POOL_MB="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["(0,", "0,", "0,", "0)", "0"]


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTCNN_BUFFER_POOL_MB", "lots")
    with pytest.raises(ValueError, match="FASTCNN_BUFFER_POOL_MB.*'lots'"):
        _buffers._limit_from_env()


@pytest.mark.parametrize("offset", [-4, 64, 2, 4.0, "8"])
def test_bad_offset(offset):
    with pytest.raises(ValueError, match="offset must be .* got"):
        _buffers.empty(SMALL, np.float32, offset=offset)


def test_offset_must_be_a_multiple_of_the_itemsize():
    with pytest.raises(ValueError, match=r"itemsize \(8 for float64\), got 4"):
        _buffers.empty(BIG, np.float64, offset=4)


@pytest.mark.parametrize("dtype", ["not a dtype", object, [("a", "f4"), ("b", "O")]])
def test_bad_dtype(dtype):
    for _ in range(2):   # refused again once seen (the accepted ones are remembered)
        with pytest.raises(TypeError, match="dtype"):
            _buffers.empty(SMALL, dtype)


def test_unhashable_structured_dtype():
    for _ in range(2):
        a = _buffers.empty(SMALL, [("a", "f4"), ("b", "i4")], offset=16)
        assert a.dtype.names == ("a", "b") and addr(a) % 64 == 16


def test_threads_never_share_a_block():
    errors, seen = [], []
    start = threading.Barrier(4)

    def hammer(tid):
        start.wait()
        for i in range(200):
            a = _buffers.empty((MIB // 4 * (1 + i % 2),), np.int32)
            a.fill(tid)
            seen.append(addr(a))
            if i % 7 == 0:
                threading.Event().wait(0.0001)   # let another thread run with a live
            if not (a == tid).all():
                errors.append((tid, i))

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(seen)) < len(seen) // 10   # blocks were reused


def test_output_aligns_from_the_threshold_and_out_arg_too():
    n = _buffers.ALIGN_MIN_ITEMS
    for zero in (False, True):
        a = _buffers.output((n,), np.float32, zero=zero)
        assert addr(a) % 64 == 0 and a.shape == (n,) and a.dtype == np.float32
        assert not zero or not a.any()
        small = _buffers.output((3, 5), np.int32, zero=zero)
        assert small.shape == (3, 5) and small.dtype == np.int32 and small.base is None
        assert not zero or not small.any()
    assert _buffers.out_arg((n - 1,), np.float32) == {}
    big = _buffers.out_arg((2, n), np.float64)["out"]
    assert addr(big) % 64 == 0 and big.shape == (2, n) and big.dtype == np.float64


# --- the backends' outputs come from here (so the wiring cannot silently regress) ---------

@pytest.mark.parametrize("name", ["cython", "numba", "im2col"])
@pytest.mark.parametrize("n, pooled", [(2, False), (6, True)])
def test_backend_outputs_are_aligned(name, n, pooled):
    if name not in backends.available():
        pytest.skip(f"backend {name!r} is not available here: {backends.unavailable().get(name)}")
    be = backends.get(name)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 48, 48, 16), dtype=np.float32)
    w = rng.standard_normal((3, 3, 16, 32), dtype=np.float32)
    pad = ((1, 1), (1, 1))
    y, ctx = be.conv2d_forward(x, w, w[0, 0, 0], (1, 1), pad)
    # 2x48x48x32 = 147456 elements (576 KiB: aligned, not pooled), 6x: 1.7 MiB (pooled)
    assert (y.nbytes >= _buffers.POOL_MIN_BYTES) == pooled
    dx, dw, _ = be.conv2d_backward(np.ones_like(y), ctx)
    r, rctx = be.relu_forward(y)
    p, pctx = be.maxpool2d_forward(r, (2, 2), (2, 2), ((0, 0), (0, 0)))
    wd = rng.standard_normal((3, 3, 32, 1), dtype=np.float32)
    d, dctx = be.depthwise_conv2d_forward(y, wd, None, (1, 1), pad)
    outs = {"conv y": y, "conv dx": dx, "relu y": r, "relu dx": be.relu_backward(r, rctx),
            "maxpool dx": be.maxpool2d_backward(p, pctx), "depthwise y": d,
            "depthwise dx": be.depthwise_conv2d_backward(d, dctx)[0]}
    if name != "im2col":   # (im2col's maxpool y is NumPy's take_along_axis result)
        outs["maxpool y"] = p
    outs = {k: v for k, v in outs.items() if v.size >= _buffers.ALIGN_MIN_ITEMS}
    assert {"conv y", "conv dx", "relu y", "depthwise y", "depthwise dx"} <= set(outs)
    assert {k: addr(v) % 64 for k, v in outs.items()} == dict.fromkeys(outs, 0)
    if pooled:
        assert y.base is not None and y.base.nbytes >= _buffers.POOL_MIN_BYTES
