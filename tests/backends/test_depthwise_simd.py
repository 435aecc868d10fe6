"""The C SIMD depthwise convolution (csrc/depthwise.h, fastcnn._ext_depthwise) through the
cython backend: its edge cases, on EVERY instruction set this CPU runs, against a float64
NumPy loop written here.

The vector axis is the C*M output channels, so the cases are the channel counts around the
vector widths (1, 7, 15, 17, 33: ragged tails of 4-, 8- and 16-lane registers, and the
narrower build the dispatch picks for few channels), depth multipliers 2 and 3 (the
expanded-row path), strides 2 and mixed, asymmetric padding, a 9x9 kernel (81 taps: a row
job in two passes), float64, bias None and need_dx False. Also: 1 and 2 OpenMP threads give
bitwise-identical results (fixed dW blocks), inputs are never written, outputs never alias.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import _extensions, backends

pytestmark = pytest.mark.skipif(
    "depthwise" not in _extensions.modules,
    reason=f"the compiled depthwise extension is unavailable: {_extensions.IMPORT_ERROR}")

if "depthwise" in _extensions.modules:
    DWC = _extensions.modules["depthwise"]
    ISAS = DWC.supported_isas()
else:
    DWC, ISAS = None, ("generic",)


def reference(x, w, b, stride, pad, dy):
    """``(y, dx, dw, db)`` in float64, one tap at a time over strided views."""
    x, w, dy = (a.astype(np.float64) for a in (x, w, dy))
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    sh, sw = stride
    (pt, pb), (pl, pr) = pad
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo = (h + pt + pb - kh) // sh + 1, (wd + pl + pr - kw) // sw + 1
    y = np.zeros((n, ho, wo, c, m))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    g = dy.reshape(n, ho, wo, c, m)
    for a in range(kh):
        for bb in range(kw):
            window = (slice(None), slice(a, a + sh * (ho - 1) + 1, sh),
                      slice(bb, bb + sw * (wo - 1) + 1, sw))
            tap = xp[window]
            y += tap[..., None] * w[a, bb]
            dw[a, bb] = np.einsum("nijc,nijcm->cm", tap, g)
            dxp[window] += np.einsum("nijcm,cm->nijc", g, w[a, bb])
    y = y.reshape(n, ho, wo, c * m)
    if b is not None:
        y += b
    return y, dxp[:, pt:pt + h, pl:pl + wd], dw, dy.sum(axis=(0, 1, 2))


CASES = [
    # (N, H, W, C, (kh, kw, M), stride, pad, bias)
    (2, 6, 7, 1, (3, 3, 1), (1, 1), ((1, 1), (1, 1)), True),
    (2, 6, 7, 7, (3, 3, 1), (1, 1), ((1, 1), (1, 1)), True),
    (1, 9, 10, 15, (3, 3, 1), (2, 2), ((0, 1), (0, 1)), True),
    (1, 8, 9, 17, (3, 3, 1), (2, 2), ((1, 1), (1, 1)), False),
    (1, 6, 13, 33, (3, 3, 1), (1, 1), ((1, 1), (1, 1)), True),
    (2, 7, 8, 5, (3, 3, 2), (1, 1), ((1, 1), (1, 1)), True),
    (1, 7, 9, 7, (3, 3, 3), (2, 1), ((2, 0), (1, 3)), True),
    (1, 9, 8, 3, (5, 2, 2), (3, 2), ((1, 0), (2, 1)), False),
    (1, 8, 8, 17, (1, 1, 1), (2, 2), ((0, 0), (0, 0)), True),
    (1, 4, 6, 4, (9, 9, 1), (1, 1), ((4, 4), (4, 4)), True),   # 81 taps: two passes
    (1, 3, 20, 16, (3, 3, 1), (1, 1), ((1, 1), (1, 1)), True),  # a long interior run
]
IDS = [f"C{c[3]}-k{c[4][0]}x{c[4][1]}-M{c[4][2]}-s{c[5][0]}{c[5][1]}" for c in CASES]


@pytest.fixture
def isa_restored():
    before = DWC.isa()
    yield
    DWC.set_isa(before)


def _data(case, dtype, seed=0):
    n, h, wd, c, (kh, kw, m), stride, pad, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, wd, c)).astype(dtype)
    w = rng.standard_normal((kh, kw, c, m)).astype(dtype)
    b = rng.standard_normal(c * m).astype(dtype) if bias else None
    ho, wo = (h + sum(pad[0]) - kh) // stride[0] + 1, (wd + sum(pad[1]) - kw) // stride[1] + 1
    dy = rng.standard_normal((n, ho, wo, c * m)).astype(dtype)
    return x, w, b, stride, pad, dy


def _check(got, want, dtype, what):
    assert got.dtype == dtype, f"{what}: {got.dtype}, float32 must not be upcast"
    assert got.shape == want.shape, what
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(got, want, err_msg=what, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_isa_matches_float64_loop(case, isa, dtype, isa_restored):
    DWC.set_isa(isa)
    x, w, b, stride, pad, dy = _data(case, dtype)
    be = backends.get("cython")
    y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
    dx, dw, db = be.depthwise_conv2d_backward(dy, ctx)
    want = reference(x, w, b, stride, pad, dy)
    for what, got, ref in zip(("y", "dx", "dw"), (y, dx, dw), want):
        _check(got, ref, dtype, f"{what} ({isa})")
    if b is None:
        assert db is None
    else:
        _check(db, want[3], dtype, f"db ({isa})")


@pytest.mark.parametrize("isa", ISAS)
def test_need_dx_false_and_no_bias(isa, isa_restored):
    DWC.set_isa(isa)
    x, w, _, stride, pad, dy = _data(CASES[6], np.float32, seed=1)
    be = backends.get("cython")
    y, ctx = be.depthwise_conv2d_forward(x, w, None, stride, pad)
    dx, dw, db = be.depthwise_conv2d_backward(dy, ctx, need_dx=False)
    assert dx is None and db is None
    want = reference(x, w, None, stride, pad, dy)
    _check(y, want[0], np.float32, "y")
    _check(dw, want[2], np.float32, "dw")


def _all(dtype):
    """Every output of a forward and backward at sizes past the parallel threshold, on
    shapes that take each path (M 1 and 2, stride 2, ragged channels)."""
    be = backends.get("cython")
    out = []
    for shape, (kh, kw, m), stride, pad in (
        ((4, 20, 18, 32), (3, 3, 1), (1, 1), ((1, 1), (1, 1))),
        ((3, 17, 15, 7), (3, 3, 2), (2, 2), ((0, 1), (1, 1))),
    ):
        rng = np.random.default_rng(5)
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((kh, kw, shape[3], m)).astype(dtype)
        b = rng.standard_normal(shape[3] * m).astype(dtype)
        y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
        out += [y, *be.depthwise_conv2d_backward(rng.standard_normal(y.shape).astype(dtype), ctx)]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_results_identical_with_1_and_2_threads(dtype):
    _, max_threads = _extensions.openmp_info()
    try:
        _extensions.set_num_threads(1)
        one = _all(dtype)
        _extensions.set_num_threads(2)
        two = _all(dtype)
    finally:
        _extensions.set_num_threads(max_threads)
    for i, (a, b) in enumerate(zip(one, two)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i} differs between 1 and 2 threads")


def test_inputs_read_only_and_outputs_fresh():
    x, w, b, stride, pad, dy = _data(CASES[5], np.float32, seed=2)
    for a in (x, w, b, dy):
        a.setflags(write=False)
    be = backends.get("cython")
    y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
    outs = (y, *be.depthwise_conv2d_backward(dy, ctx))
    for o in outs:
        for a in (x, w, b, dy):
            assert not np.shares_memory(o, a), "an output aliases an input"
    want = reference(x, w, b, stride, pad, dy)
    for what, got, ref in zip(("y", "dx", "dw", "db"), outs, want):
        _check(got, ref, np.float32, what)


def test_non_contiguous_inputs_are_accepted():
    x, w, b, stride, pad, dy = _data(CASES[1], np.float64, seed=3)
    xt = np.asfortranarray(x)
    be = backends.get("cython")
    y, ctx = be.depthwise_conv2d_forward(xt, w, b, stride, pad)
    dx, dw, db = be.depthwise_conv2d_backward(dy[:, :, ::-1][:, :, ::-1], ctx)
    want = reference(x, w, b, stride, pad, dy)
    for what, got, ref in zip(("y", "dx", "dw", "db"), (y, dx, dw, db), want):
        _check(got, ref, np.float64, what)


def test_set_isa_refuses_unknown_names():
    with pytest.raises(ValueError, match="isa must be one of"):
        DWC.set_isa("sse9")
    assert DWC.isa() in DWC.supported_isas()
    assert DWC.supported_isas()[0] == "generic"


def test_cython_depthwise_outputs_start_on_a_cache_line():
    """The outputs the depthwise kernels write (y, dx) are 64-byte aligned, so their vector
    stores never straddle two cache lines and large ones can stream (csrc/depthwise.h);
    they are ordinary C-contiguous arrays otherwise."""
    cy = backends.get("cython")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 9, 7, 33)).astype(dtype)
        w = rng.standard_normal((3, 3, 33, 1)).astype(dtype)
        y, ctx = cy.depthwise_conv2d_forward(x, w, None, (1, 1), ((1, 1), (1, 1)))
        dx, dw, _ = cy.depthwise_conv2d_backward(np.ones_like(y), ctx)
        for a, shape in ((y, (2, 9, 7, 33)), (dx, x.shape)):
            assert a.ctypes.data % 64 == 0 and a.shape == shape and a.dtype == dtype
            assert a.flags.c_contiguous and a.flags.writeable
        want, _ = backends.get("im2col").depthwise_conv2d_forward(x, w, None, (1, 1),
                                                                  ((1, 1), (1, 1)))
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
