"""The cython backend's SIMD kernels (csrc/simd.pyx, simd.h): the direct convolution
(conv_kernels.h) and float32 max pooling (pool_kernels.h).

The generic suites (test_equivalence.py, test_gradients.py) run the cython backend on
random shapes, but mostly on 1-5 channels and float64, where the im2col path runs. Here:
the kernels on the shapes that exercise their blocking (channel counts around the 16-float
quantum and the 6-pixel blocks, strides, 'same' borders, channel tails of the vectors), on
EVERY instruction set this CPU supports (the dispatcher otherwise runs only the best one),
against the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import _extensions, backends
from fastcnn.shapes import window_output_shape

pytestmark = pytest.mark.skipif(
    not _extensions.HAVE_CYTHON,
    reason=f"the Cython extension is unavailable: {_extensions.IMPORT_ERROR}",
)

simd = _extensions.modules.get("simd")
ISAS = simd.supported_isas() if simd is not None else ()


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs a test once per instruction set, restoring the default afterwards."""
    before = simd.isa()
    simd.set_isa(request.param)
    try:
        yield request.param
    finally:
        simd.set_isa(before)


# (n, h, w, c, f, (kh, kw), (sh, sw), padding): channel counts below, at and above the
# 16-float quantum and the 64-channel block, odd sizes, non-square kernels and strides.
CASES = [
    (2, 7, 9, 5, 3, (3, 3), (1, 1), "valid"),
    (2, 8, 7, 6, 16, (3, 2), (1, 1), "same"),
    (1, 9, 9, 17, 17, (3, 3), (2, 2), "same"),
    (2, 6, 11, 8, 40, (1, 3), (1, 2), "valid"),
    (1, 10, 8, 33, 64, (3, 3), (1, 1), "same"),
    (1, 7, 7, 16, 80, (2, 2), (3, 1), "same"),
    (1, 6, 6, 64, 130, (3, 3), (1, 1), "valid"),
    (3, 5, 5, 7, 48, (5, 5), (1, 1), "same"),
    (1, 12, 10, 9, 24, (4, 3), (2, 3), "same"),
    (2, 8, 9, 3, 20, (3, 3), (2, 1), "same"),  # few channels, many filters: dx by col2im
    (2, 14, 14, 6, 16, (5, 5), (1, 1), "valid"),  # LeNet-5's 2nd conv: 5x5 on 5-8, col2im
    (1, 9, 8, 12, 16, (5, 5), (1, 1), "same"),    # 5x5 from 9 channels: the gather again
]


def _run(case, seed=0):
    n, h, w, c, f, k, s, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    wk = rng.standard_normal((*k, c, f)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    _, pad = window_output_shape((h, w), k, s, padding)
    out = {}
    for name in ("cython", "reference"):
        B = backends.get(name)
        dtype = np.float32 if name == "cython" else np.float64
        y, ctx = B.conv2d_forward(x.astype(dtype), wk.astype(dtype), b.astype(dtype), s, pad)
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
        out[name] = (y, *B.conv2d_backward(dy, ctx))
        if name == "cython":
            assert type(ctx).__name__ == "_DirectCtx", "the direct path must run on this case"
    return out


def _conv_id(c):
    return "x".join(map(str, c[:5])) + f"-k{c[5]}-s{c[6]}-{c[7]}"


@pytest.mark.parametrize("case", CASES, ids=_conv_id)
def test_direct_conv_matches_reference(isa, case, monkeypatch):
    # The direct kernels (a 3x3 stride-1 conv's dx would otherwise run by Winograd:
    # tests/backends/test_winograd.py).
    monkeypatch.setenv("FASTCNN_WINOGRAD", "0")
    out = _run(case)
    for name, got, want in zip(("y", "dx", "dw", "db"), out["cython"], out["reference"]):
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4, err_msg=f"{isa}: {name}")


def test_float64_and_few_channels_take_the_im2col_path():
    B = backends.get("cython")
    for dtype, c in ((np.float64, 8), (np.float32, 3)):
        x, w = np.ones((1, 5, 5, c), dtype), np.ones((3, 3, c, 4), dtype)
        _, ctx = B.conv2d_forward(x, w, None, (1, 1), ((0, 0), (0, 0)))
        assert type(ctx).__name__ != "_DirectCtx"


def test_identical_results_with_1_and_2_threads():
    """Above the parallel threshold (1M multiply-adds): ranges of pixels (forward, dx) and
    of dW blocks run on different threads; every value is still computed by one thread in
    a fixed order."""
    _, max_threads = _extensions.openmp_info()
    case = (8, 14, 13, 20, 40, (3, 3), (1, 1), "same")  # 8*14*13*9*20*40 = 10.5M MACs
    try:
        _extensions.set_num_threads(1)
        one = _run(case)["cython"]
        _extensions.set_num_threads(2)
        two = _run(case)["cython"]
    finally:
        _extensions.set_num_threads(max_threads)
    for name, a, b in zip(("y", "dx", "dw", "db"), one, two):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_nan_propagates():
    """A NaN input reaches every output pixel whose window holds it, and no other."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 5, 6)).astype(np.float32)
    x[0, 2, 2, 0] = np.nan
    w = rng.standard_normal((3, 3, 6, 16)).astype(np.float32)
    y = np.empty((2, 3, 3, 16), np.float32)
    simd.gather(x, w.reshape(-1, 16), None, y, 3, 3, 3, 3, 0, 1, 0, 1, 0, 1, 0, 1)
    assert np.isnan(y[0]).all() and not np.isnan(y[1]).any()


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("case", CASES, ids=_conv_id)
def test_gather_applies_its_activation_in_the_epilogue(isa, case, act):
    """gather(..., activation) clamps in registers before its only store: the bits of the
    linear gather with v <= 0 -> 0 (a NaN kept, -0.0 -> 0.0, as elementwise.pyx's relu)
    and for relu6 v > 6 -> 6; on every instruction set, channel tails included."""
    n, h, w, c, f, k, s, padding = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32) * 3
    x[0, 0, 0, 0] = np.nan
    f_pad = -(-f // 16) * 16
    wk = np.zeros((k[0] * k[1] * c, f_pad), np.float32)
    wk[:, :f] = rng.standard_normal((k[0] * k[1] * c, f))
    b = np.zeros(f_pad, np.float32)
    b[:f] = rng.standard_normal(f)
    (ho, wo), ((pt, _), (pl, _)) = window_output_shape((h, w), k, s, padding)
    args = (*k, ho, wo, -pt, s[0], -pl, s[1], 0, 1, 0, 1)
    linear = np.empty((n, ho, wo, f), np.float32)
    simd.gather(x, wk, b, linear, *args)
    got = np.full_like(linear, 7.0)
    simd.gather(x, wk, b, got, *args, act)
    with np.errstate(invalid="ignore"):
        want = np.where(linear <= 0, np.float32(0), linear)
        if act == "relu6":
            want = np.where(want > 6, np.float32(6), want)
    assert (linear > 6).any() and np.isnan(linear).any()
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got[got == 0]).any()   # -0.0 -> 0.0


def test_gather_refuses_an_unknown_activation():
    x = np.zeros((1, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'tanh'"):
        simd.gather(x, np.zeros((4, 16), np.float32), None, np.zeros((1, 3, 3, 16), np.float32),
                    1, 1, 3, 3, 0, 1, 0, 1, 0, 1, 0, 1, "tanh")


@pytest.mark.parametrize("c, stride", [(3, 1), (3, 2), (5, 2), (16, 1)])
def test_blocks_inside_the_columns_take_whole_kernel_rows_with_the_same_bits(isa, c, stride):
    """A 'same' conv's windows cross the image's sides, but a block whose own windows lie
    inside its columns reduces whole kernel rows (conv_kernels.h): the same bits as the
    conv on an explicitly zero-padded image, whose every window lies inside."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 9, 14, c)).astype(np.float32)
    w = rng.standard_normal((3 * 3 * c, 32)).astype(np.float32)
    (ho, wo), ((pt, pb), (pl, pr)) = window_output_shape((9, 14), (3, 3), (stride,) * 2, "same")
    got = np.empty((2, ho, wo, 32), np.float32)
    simd.gather(x, w, None, got, 3, 3, ho, wo, -pt, stride, -pl, stride, 0, 1, 0, 1)
    padded = np.zeros((2, 9 + pt + pb, 14 + pl + pr, c), np.float32)
    padded[:, pt:pt + 9, pl:pl + 14] = x
    want = np.empty_like(got)
    simd.gather(padded, w, None, want, 3, 3, ho, wo, 0, stride, 0, stride, 0, 1, 0, 1)
    np.testing.assert_array_equal(got, want)


def test_isa_selection():
    assert "generic" in ISAS
    assert simd.isa() == ISAS[-1], "the best supported instruction set is the default"
    with pytest.raises(ValueError, match="isa must be one of"):
        simd.set_isa("sse9")
    unsupported = [name for name in simd.ISAS if name not in ISAS]
    for name in unsupported:
        with pytest.raises(ValueError, match="not supported by this CPU"):
            simd.set_isa(name)


def test_kernel_arguments_are_checked():
    x = np.zeros((1, 5, 5, 6), np.float32)
    y = np.zeros((1, 3, 3, 16), np.float32)
    w = np.zeros((54, 16), np.float32)
    with pytest.raises(ValueError, match="w has 54 rows, expected 2\\*3\\*6"):
        simd.gather(x, w, None, y, 2, 3, 3, 3, 0, 1, 0, 1, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        simd.gather(x, np.zeros((54, 8), np.float32), None, np.zeros((1, 3, 3, 8), np.float32),
                      3, 3, 3, 3, 0, 1, 0, 1, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="the grid writes outside out"):
        simd.gather(x, w, None, y, 3, 3, 4, 3, 0, 1, 0, 1, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="bias has 3 values, expected 16"):
        simd.gather(x, w, np.zeros(3, np.float32), y, 3, 3, 3, 3, 0, 1, 0, 1, 0, 1, 0, 1)
    with pytest.raises(ValueError, match=r"dw has shape \(54, 8\), expected \(54, 16\)"):
        simd.dw(x, y, np.zeros((54, 8), np.float32), 3, 3, 1, 1, 0, 0)


def test_empty_batch_gives_zero_gradients():
    B = backends.get("cython")
    x, w = np.zeros((0, 6, 6, 8), np.float32), np.ones((3, 3, 8, 16), np.float32)
    y, ctx = B.conv2d_forward(x, w, np.ones(16, np.float32), (1, 1), ((1, 1), (1, 1)))
    assert y.shape == (0, 6, 6, 16)
    dx, dw, db = B.conv2d_backward(y, ctx)
    assert dx.shape == x.shape and not dw.any() and not db.any()


# (n, h, w, c, pool, stride, padding): vector and scalar channel tails, clipped windows,
# gaps between windows (stride > pool), overlapping windows (the pool.pyx backward).
POOL_CASES = [
    (2, 6, 7, 16, (2, 2), (2, 2), "valid"),
    # the unrolled 2x2 path (whole vectors of channels), then the general one for the
    # clipped last row and column of 'same'
    (2, 7, 9, 8, (2, 2), (2, 2), "valid"),
    (1, 9, 7, 32, (2, 2), (2, 2), "same"),
    (1, 7, 5, 21, (2, 2), (2, 2), "same"),
    (2, 9, 8, 5, (3, 2), (3, 2), "same"),
    (1, 8, 9, 33, (2, 2), (3, 3), "valid"),
    (1, 6, 6, 17, (3, 3), (1, 2), "same"),
]


@pytest.mark.parametrize("case", POOL_CASES,
                         ids=lambda c: "x".join(map(str, c[:4])) + f"-p{c[4]}-s{c[5]}-{c[6]}")
def test_max_pool_matches_reference(isa, case):
    n, h, w, c, pool, stride, padding = case
    rng = np.random.default_rng(5)
    # Ties (repeated values) and a NaN: the first maximum wins, NaN propagates.
    x = rng.integers(-3, 4, (n, h, w, c)).astype(np.float32)
    x[0, 1, 1, 2] = np.nan
    _, pad = window_output_shape((h, w), pool, stride, padding, what="pool_size")
    got, want = [], []
    for name, out in (("cython", got), ("reference", want)):
        B = backends.get(name)
        y, ctx = B.maxpool2d_forward(x, pool, stride, pad)
        dy = np.random.default_rng(6).standard_normal(y.shape).astype(np.float32)
        out += [y, B.maxpool2d_backward(dy, ctx), ctx, dy]
    for name, a, b in zip(("y", "dx"), got, want):
        np.testing.assert_array_equal(a, b, err_msg=f"{isa}: {name}")
    if stride[0] >= pool[0] and stride[1] >= pool[1]:
        # The non-overlapping kernel writes EVERY element of the rows its windows cover
        # (no zero fill first): on a NaN-filled dx only rows outside all windows stay NaN.
        dx = np.full(x.shape, np.nan, np.float32)
        simd.maxpool_backward(got[3], got[2][0], dx, *pool, *stride, pad[0][0], pad[1][0])
        untouched = np.isnan(dx).all(axis=(0, 2, 3))
        assert (np.isnan(dx).any(axis=(0, 2, 3)) == untouched).all()
        np.testing.assert_array_equal(dx[:, ~untouched], want[1][:, ~untouched])
        assert not want[1][:, untouched].any()


@pytest.mark.parametrize("case", POOL_CASES + [(2, 28, 28, 6, (2, 2), (2, 2), "valid"),
                                          (1, 7, 9, 48, (3, 3), (2, 2), "same")],
                         ids=lambda c: "x".join(map(str, c[:4])) + f"-p{c[4]}-s{c[5]}-{c[6]}")
def test_average_pool_is_pool_pyx_bitwise(isa, case):
    """float32 average pooling (csrc/pool_kernels.h) sums each window's real taps in
    pool.pyx's order and divides by their count: bitwise pool.pyx's loops (which float64
    keeps), forward and backward, and the reference within rounding."""
    pool_pyx = _extensions.modules["pool"]
    n, h, w, c, pool, stride, padding = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    _, pad = window_output_shape((h, w), pool, stride, padding, what="pool_size")
    pt, pl = pad[0][0], pad[1][0]
    B = backends.get("cython")
    y, ctx = B.avgpool2d_forward(x, pool, stride, pad)
    want_y = np.empty_like(y)
    pool_pyx.avgpool_forward(x, want_y, *pool, *stride, pt, pl)
    np.testing.assert_array_equal(y, want_y, err_msg=f"{isa}: y")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = B.avgpool2d_backward(dy, ctx)
    want_dx = np.zeros_like(x)
    pool_pyx.avgpool_backward(dy, want_dx, *pool, *stride, pt, pl)
    np.testing.assert_array_equal(dx, want_dx, err_msg=f"{isa}: dx")
    R = backends.get("reference")
    ry, rctx = R.avgpool2d_forward(x, pool, stride, pad)
    np.testing.assert_allclose(y, ry, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, R.avgpool2d_backward(dy, rctx), rtol=1e-6, atol=1e-6)
    if stride[0] >= pool[0] and stride[1] >= pool[1]:
        # as for max pooling: every element of the covered rows is written, no zero fill
        nan_dx = np.full(x.shape, np.nan, np.float32)
        simd.avgpool_backward(dy, nan_dx, *pool, *stride, pt, pl)
        untouched = np.isnan(nan_dx).all(axis=(0, 2, 3))
        assert (np.isnan(nan_dx).any(axis=(0, 2, 3)) == untouched).all()
        np.testing.assert_array_equal(nan_dx[:, ~untouched], want_dx[:, ~untouched])


# (n, h, w, c, f, kernel, stride, padding) of the conv before a 2x2 max pool: odd conv
# outputs (a row and a column no window covers), conv strides and padding, channel tails.
FUSED_CASES = [
    (2, 13, 13, 64, 64, (3, 3), (1, 1), "valid"),
    (1, 9, 12, 6, 17, (3, 2), (1, 1), "same"),
    (2, 12, 11, 1, 32, (3, 3), (2, 1), "same"),
    (1, 10, 10, 20, 80, (2, 2), (1, 1), "valid"),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=_conv_id)
def test_conv_maxpool_fused_equals_conv_then_pool(isa, case, monkeypatch):
    """Bitwise: the fused kernel adds the bias and compares in the same order as the
    conv's epilogue and the pool's scan; its contexts drive the same backwards (which skip
    the conv pixels no window covers: they would only add exact zeros). The direct kernel:
    Winograd (3x3, stride 1, 64 -> 64 here) is tested in test_winograd.py."""
    monkeypatch.setenv("FASTCNN_WINOGRAD", "0")
    n, h, w, c, f, k, s, padding = case
    rng = np.random.default_rng(8)
    x = rng.integers(-2, 3, (n, h, w, c)).astype(np.float32)  # many ties in the windows
    wk = rng.integers(-1, 2, (*k, c, f)).astype(np.float32)
    b = rng.integers(-1, 2, f).astype(np.float32)
    _, pad = window_output_shape((h, w), k, s, padding)
    B = backends.get("cython")
    no_pad = ((0, 0), (0, 0))
    y, conv_ctx = B.conv2d_forward(x, wk, b, s, pad)
    yp, pool_ctx = B.maxpool2d_forward(y, (2, 2), (2, 2), no_pad)
    yf, conv_ctx_f, pool_ctx_f = B.conv2d_maxpool2d_forward(x, wk, b, s, pad, (2, 2), (2, 2),
                                                            no_pad)
    np.testing.assert_array_equal(yf, yp)
    # The same winners; the fused op numbers positions in the part of the conv output that
    # its windows cover (2*Hp x 2*Wp), the separate pool in the whole output.
    wo, wc = y.shape[2], 2 * yp.shape[2]
    np.testing.assert_array_equal(np.divmod(pool_ctx_f[0], wc), np.divmod(pool_ctx[0], wo))
    dy = rng.standard_normal(yp.shape).astype(np.float32)
    separate = B.conv2d_backward(B.maxpool2d_backward(dy, pool_ctx), conv_ctx)
    fused = B.conv2d_backward(B.maxpool2d_backward(dy, pool_ctx_f), conv_ctx_f)
    for name, a, b_ in zip(("dx", "dw", "db"), fused, separate):
        np.testing.assert_array_equal(a, b_, err_msg=name)


def test_conv_maxpool_declines_what_it_does_not_fuse():
    B = backends.get("cython")
    x, w = np.ones((1, 8, 8, 8), np.float32), np.ones((3, 3, 8, 16), np.float32)
    no_pad = ((0, 0), (0, 0))
    assert B.conv2d_maxpool2d_forward(x, w, None, (1, 1), no_pad, (2, 2), (2, 2),
                                      no_pad) is not None
    for args in (((3, 3), (3, 3), no_pad),            # another pool size
                 ((2, 2), (1, 1), no_pad),            # overlapping windows
                 ((2, 2), (2, 2), ((0, 1), (0, 1))),  # a padded pool
                 ):
        assert B.conv2d_maxpool2d_forward(x, w, None, (1, 1), no_pad, *args) is None
    assert B.conv2d_maxpool2d_forward(x.astype(np.float64), w.astype(np.float64), None,
                                      (1, 1), no_pad, (2, 2), (2, 2), no_pad) is None
    few = np.ones((3, 3, 1, 8), np.float32)  # the im2col path's first layer
    assert B.conv2d_maxpool2d_forward(np.ones((1, 8, 8, 1), np.float32), few, None, (1, 1),
                                      no_pad, (2, 2), (2, 2), no_pad) is None
