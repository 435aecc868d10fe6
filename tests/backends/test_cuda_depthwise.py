"""The ``cuda`` backend's depthwise convolution against the reference, forward AND backward.

Under the CUDA simulator (tests/conftest.py turns it on) every simulated thread costs about
half a millisecond, so the shapes are tiny (batch 1-2, 4x5 images, 1-3 channels, M 1-2):
strides 1 and 2, 'valid' and 'same' (with the odd padding row/column), non-square kernels,
no bias, need_dx False, both dtypes; the array-kind rule (device in -> device out), the
chunked dW reduction with several chunks, and bitwise-repeatable results.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import backends
from fastcnn.shapes import window_output_shape

pytestmark = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")

if "cuda" in backends.available():
    from fastcnn.backends import cuda as cb

REF = backends.get("reference")
TOL = {np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
       np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5)}
F32, F64 = np.float32, np.float64

CASES = [
    # (x shape, (kh, kw, M), stride, padding, bias, dtype)
    pytest.param((2, 4, 5, 3), (3, 3, 1), (1, 1), "same", True, F64, id="3x3-M1-s1-same-f64"),
    pytest.param((2, 4, 5, 3), (3, 3, 1), (1, 1), "same", True, F32, id="3x3-M1-s1-same-f32"),
    pytest.param((1, 4, 5, 2), (3, 3, 2), (2, 2), "same", True, F64, id="3x3-M2-s2-same"),
    pytest.param((1, 5, 4, 2), (2, 3, 2), (1, 2), "valid", False, F32, id="2x3-M2-s12-valid-nobias"),
    pytest.param((2, 4, 5, 1), (3, 2, 1), (2, 1), "same", False, F64, id="3x2-C1-s21-same-nobias"),
]


def _run(be, x, w, b, stride, pad, dy, need_dx=True):
    y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
    return (y, *be.depthwise_conv2d_backward(dy, ctx, need_dx=need_dx))


@pytest.mark.parametrize("xshape, kernel, stride, padding, bias, dtype", CASES)
def test_matches_reference(xshape, kernel, stride, padding, bias, dtype):
    rng = np.random.default_rng(sum(xshape) + sum(kernel))
    kh, kw, m = kernel
    c = xshape[3]
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal((kh, kw, c, m)).astype(dtype)
    b = rng.standard_normal(c * m).astype(dtype) if bias else None
    (ho, wo), pad = window_output_shape(xshape[1:3], (kh, kw), stride, padding)
    dy = rng.standard_normal((xshape[0], ho, wo, c * m)).astype(dtype)
    inputs = [a.copy() for a in (x, w, dy) + ((b,) if bias else ())]
    got = _run(backends.get("cuda"), x, w, b, stride, pad, dy)
    want = _run(REF, x, w, b, stride, pad, dy)
    for a, before in zip((x, w, dy) + ((b,) if bias else ()), inputs):
        np.testing.assert_array_equal(a, before, err_msg="an input was modified")
    for what, g, r in zip(("y", "dx", "dw", "db"), got, want):
        if r is None:
            assert g is None, what
            continue
        assert isinstance(g, np.ndarray) and g.dtype == dtype and g.shape == r.shape, what
        np.testing.assert_allclose(g, r, **TOL[np.dtype(dtype)], err_msg=what)


def test_need_dx_false_device_arrays_and_repeatable():
    """need_dx=False gives dx None; device arrays in give device arrays out; two runs are
    bitwise equal (no float atomics)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 4, 4, 2)).astype(F32)
    w = rng.standard_normal((3, 3, 2, 2)).astype(F32)
    b = rng.standard_normal(4).astype(F32)
    dy = rng.standard_normal((1, 4, 4, 4)).astype(F32)
    pad = ((1, 1), (1, 1))
    cu = backends.get("cuda")
    y, ctx = cu.depthwise_conv2d_forward(cb.to_device(x), cb.to_device(w), cb.to_device(b),
                                         (1, 1), pad)
    assert cb.is_device_array(y)
    dx, dw, db = cu.depthwise_conv2d_backward(cb.to_device(dy), ctx, need_dx=False)
    assert dx is None and cb.is_device_array(dw) and cb.is_device_array(db)
    want = _run(REF, x, w, b, (1, 1), pad, dy)
    np.testing.assert_allclose(y.copy_to_host(), want[0], **TOL[np.dtype(F32)])
    np.testing.assert_allclose(dw.copy_to_host(), want[2], **TOL[np.dtype(F32)])
    np.testing.assert_allclose(db.copy_to_host(), want[3], **TOL[np.dtype(F32)])
    again = cu.depthwise_conv2d_backward(dy, ctx, need_dx=False)
    np.testing.assert_array_equal(again[1], dw.copy_to_host())
    np.testing.assert_array_equal(again[2], db.copy_to_host())


def test_dw_reduction_in_several_chunks(monkeypatch):
    """dW and db summed over several fixed chunks of output pixels (5 pixels in chunks of
    2, 2 and 1, forced by a small chunk size) equal the reference."""
    monkeypatch.setattr(cb, "_DEPTHWISE_DW_MIN_ROWS", 2)
    monkeypatch.setattr(cb, "_DEPTHWISE_DW_THREADS", 10_000)
    assert cb._depthwise_splits(5, 10, 1) == (3, 2)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 5, 1)).astype(F64)
    w = rng.standard_normal((3, 3, 1, 1)).astype(F64)
    b = rng.standard_normal(1).astype(F64)
    pad = ((0, 0), (1, 1))  # output 1 x 5: five pixels, chunks of 2, 2, 1
    dy = rng.standard_normal((1, 1, 5, 1)).astype(F64)
    got = _run(backends.get("cuda"), x, w, b, (1, 1), pad, dy)
    want = _run(REF, x, w, b, (1, 1), pad, dy)
    for what, g, r in zip(("y", "dx", "dw", "db"), got, want):
        np.testing.assert_allclose(g, r, **TOL[np.dtype(F64)], err_msg=what)


def test_bad_input_names_the_argument():
    cu = backends.get("cuda")
    x = np.zeros((1, 4, 4, 3), F32)
    with pytest.raises(ValueError, match=r"\bw\b.*4 input channels"):
        cu.depthwise_conv2d_forward(x, np.zeros((3, 3, 4, 1), F32), None, (1, 1),
                                    ((0, 0), (0, 0)))
    with pytest.raises(TypeError, match=r"\bw\b"):
        cu.depthwise_conv2d_forward(x, np.zeros((3, 3, 3, 1), F64), None, (1, 1),
                                    ((0, 0), (0, 0)))
