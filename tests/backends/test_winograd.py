"""Winograd F(2x2, 3x3) and F(4x4, 3x3) conv + 2x2 max pool and plain conv (csrc/wino.h,
simd.pyx ``wino_maxpool`` / ``wino_conv``) and the cython backend's use of them in
``conv2d_maxpool2d_forward`` and a 3x3 stride-1 conv's dx (float32, enough channels and
filters; ``FASTCNN_WINOGRAD=0`` turns it off, ``=2`` keeps F(2x2)).

Winograd rounds differently from the direct kernel, so outputs are compared within float32
tolerance (F(4x4)'s errors are about 8x F(2x2)'s); F(2x2) on small integers is exact
(every transform is a sum of multiples of 1/4), so there the argmax must equal the direct
kernel's bitwise, ties included. Every kernel test runs on every instruction set this CPU
supports, with both tile sizes.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastcnn
from fastcnn import _extensions, backends
from fastcnn.backends import _winograd
from fastcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

pytestmark = pytest.mark.skipif(
    not _extensions.HAVE_CYTHON,
    reason=f"the Cython extension is unavailable: {_extensions.IMPORT_ERROR}",
)

simd = _extensions.modules.get("simd")
ISAS = simd.supported_isas() if simd is not None else ()
NO_PAD = ((0, 0), (0, 0))


@pytest.fixture(autouse=True)
def _default_switch(monkeypatch):
    """The tests set the switch themselves: none inherited from the environment."""
    monkeypatch.delenv("FASTCNN_WINOGRAD", raising=False)
    monkeypatch.delenv("FASTCNN_PLAN_WINOGRAD", raising=False)


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs a test once per instruction set, restoring the default afterwards."""
    before = simd.isa()
    simd.set_isa(request.param)
    try:
        yield request.param
    finally:
        simd.set_isa(before)


def _pad16(a):
    k16 = -(-a.shape[-1] // 16) * 16
    out = np.zeros(a.shape[:-1] + (k16,), np.float32)
    out[..., :a.shape[-1]] = a
    return out


def _both(x, w, b, pad, m=2):
    """(y, argmax) of the direct fused kernel and of the Winograd F(m x m) one."""
    n, h, wd, c = x.shape
    f = w.shape[3]
    hc, wc = (h + 2 * pad - 2) // 2 * 2, (wd + 2 * pad - 2) // 2 * 2
    bias = None if b is None else _pad16(b)
    out = []
    for wino in (False, True):
        y = np.full((n, hc // 2, wc // 2, f), -7.0, np.float32)
        arg = np.full(y.shape, -1, np.int32)
        if wino:
            simd.wino_maxpool(x, _winograd.transform_kernel(w, m), bias, y, arg, -pad, -pad, m)
        else:
            simd.gather_maxpool(x, _pad16(w.reshape(-1, f)), bias, y, arg, 3, 3, -pad, 1,
                                -pad, 1, hc, wc)
        out.append((y, arg))
    return out


def _conv_full(x, w, b, pad):
    """The conv output (float64 reference), for checking argmax positions."""
    R = backends.get("reference")
    y, _ = R.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                            None if b is None else b.astype(np.float64), (1, 1),
                            ((pad, pad), (pad, pad)))
    return y


# (n, h, w, c, f, pad): odd sizes (a conv row/column no window covers), 'same' borders
# (tiles reading zeros past the image), channel and filter counts off the 16-float
# quantum, batch 1 and several, tile counts that leave partial register blocks.
CASES = [
    (1, 4, 4, 1, 1, 0),
    (2, 9, 11, 5, 7, 1),
    (1, 13, 13, 64, 64, 0),
    (3, 8, 10, 16, 33, 0),
    (2, 7, 10, 3, 20, 1),
    (1, 12, 9, 9, 48, 1),
    (2, 6, 15, 17, 130, 0),
    (1, 11, 11, 40, 16, 1),
]


def _case_id(c):
    return "x".join(map(str, c[:5])) + ("-same" if c[5] else "-valid")


# Tolerance relative to the outputs' scale (sqrt(9*C) for unit inputs and weights).
TOL = {2: 1e-5, 4: 1e-4}


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_the_direct_kernel_and_argmax_points_at_the_max(isa, case, m):
    n, h, wd, c, f, pad = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    w = rng.standard_normal((3, 3, c, f)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32) if f % 2 else None
    (yd, _), (yw, aw) = _both(x, w, b, pad, m)
    scale = np.sqrt(9 * c) * TOL[m] / 1e-5
    np.testing.assert_allclose(yw, yd, rtol=TOL[m], atol=1e-5 * scale, err_msg=isa)
    # The winner's position is in the covered conv image (2*Hp x 2*Wp), inside its window,
    # and the conv value there is the window's maximum.
    full = _conv_full(x, w, b, pad)
    hp, wp = yw.shape[1:3]
    cy, cx = np.divmod(aw, 2 * wp)
    ii, jj = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")
    assert ((cy // 2 == ii[None, :, :, None]) & (cx // 2 == jj[None, :, :, None])).all()
    nn_, ff = np.arange(n)[:, None, None, None], np.arange(f)[None, None, None, :]
    at = full[nn_, cy, cx, ff]
    np.testing.assert_allclose(at, yw, rtol=TOL[m], atol=1e-5 * scale)
    window_max = full[:, :2 * hp, :2 * wp].reshape(n, hp, 2, wp, 2, f).max(axis=(2, 4))
    np.testing.assert_allclose(at, window_max, rtol=TOL[m], atol=1e-5 * scale)


@pytest.mark.parametrize("case", CASES[1:4], ids=_case_id)
def test_exact_on_small_integers_with_the_same_winners(isa, case):
    """Ties everywhere: the first maximum wins, in the direct kernel's order."""
    n, h, wd, c, f, pad = case
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (n, h, wd, c)).astype(np.float32)
    w = rng.integers(-1, 2, (3, 3, c, f)).astype(np.float32)
    b = rng.integers(-1, 2, f).astype(np.float32)
    (yd, ad), (yw, aw) = _both(x, w, b, pad)
    np.testing.assert_array_equal(yw, yd)
    np.testing.assert_array_equal(aw, ad)


def test_nan_reaches_the_same_windows(isa):
    """F(2x2): a tile's 4x4 input is the union of its window's four 3x3 receptive fields, so
    a NaN makes exactly the pooled values NaN that the direct kernel makes NaN. F(4x4): a
    tile's four windows share its 6x6 input, so the NaN windows are a superset within the
    NaN's tiles."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 10, 9, 12)).astype(np.float32)
    x[0, 4, 3, 5] = np.nan
    w = rng.standard_normal((3, 3, 12, 20)).astype(np.float32)
    for pad in (0, 1):
        (yd, _), (yw, _) = _both(x, w, None, pad)
        np.testing.assert_array_equal(np.isnan(yw), np.isnan(yd))
        assert np.isnan(yw[0]).any() and not np.isnan(yw[1]).any()
        _, (y4, _) = _both(x, w, None, pad, 4)
        assert np.isnan(y4[np.isnan(yd)]).all() and not np.isnan(y4[1]).any()


def test_without_argmax_the_same_values():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 9, 9, 8)).astype(np.float32)
    u = _winograd.transform_kernel(rng.standard_normal((3, 3, 8, 24)).astype(np.float32))
    y1, y2 = np.empty((2, 3, 3, 24), np.float32), np.empty((2, 3, 3, 24), np.float32)
    simd.wino_maxpool(x, u, None, y1, np.empty(y1.shape, np.int32), 0, 0)
    simd.wino_maxpool(x, u, None, y2, None, 0, 0)
    np.testing.assert_array_equal(y1, y2)


# (n, h, w, c, f, by0, bx0) of wino_conv: out (n, h, w, f) from src (n, h + 2 + 2*by0,
# w + 2 + 2*bx0, c), i.e. src padded by -by0, -bx0 on each side (-2: a 'valid' conv's dx,
# -1: 'same', 0: a valid conv).
CONV_CASES = [
    (1, 5, 5, 1, 1, -2, -2),
    (2, 9, 11, 5, 7, -1, -1),
    (1, 13, 13, 64, 64, -2, -2),
    (3, 8, 7, 17, 33, 0, 0),
    (2, 6, 10, 16, 130, -2, -1),
    (1, 11, 11, 40, 16, -1, -2),
    (2, 1, 3, 16, 32, -1, -1),
]


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv_without_pool_matches_the_reference(isa, case, m):
    """Every output pixel written (odd sizes: the last tile's extra row/column dropped),
    zeros read outside src, the bias added."""
    n, h, wd, c, f, by0, bx0 = case
    rng = np.random.default_rng(sum(case) + 100)
    hs, ws = h + 2 + 2 * by0, wd + 2 + 2 * bx0
    x = rng.standard_normal((n, hs, ws, c)).astype(np.float32)
    w = rng.standard_normal((3, 3, c, f)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    out = np.full((n, h, wd, f), np.nan, np.float32)
    simd.wino_conv(x, _winograd.transform_kernel(w, m), _pad16(b), out, by0, bx0, m)
    R = backends.get("reference")
    want, _ = R.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                               b.astype(np.float64), (1, 1), ((-by0, -by0), (-bx0, -bx0)))
    assert want.shape == out.shape
    np.testing.assert_allclose(out, want, rtol=TOL[m], atol=TOL[m] * np.sqrt(9 * c),
                               err_msg=isa)


def test_kernel_arguments_are_checked():
    x = np.zeros((1, 6, 6, 8), np.float32)
    y = np.empty((1, 2, 2, 16), np.float32)
    u = np.zeros((16, 8, 16), np.float32)
    with pytest.raises(ValueError, match="u has shape"):
        simd.wino_maxpool(x, np.zeros((16, 4, 16), np.float32), None, y, None, 0, 0)
    with pytest.raises(ValueError, match="multiple of 16"):
        simd.wino_maxpool(x, np.zeros((16, 8, 8), np.float32), None,
                          np.empty((1, 2, 2, 8), np.float32), None, 0, 0)
    with pytest.raises(ValueError, match="bias has 8 values"):
        simd.wino_maxpool(x, u, np.zeros(8, np.float32), y, None, 0, 0)
    with pytest.raises(ValueError, match="argmax"):
        simd.wino_maxpool(x, u, None, y, np.empty((1, 2, 3, 16), np.int32), 0, 0)
    with pytest.raises(ValueError, match="images"):
        simd.wino_maxpool(x, u, None, np.empty((2, 2, 2, 16), np.float32), None, 0, 0)
    with pytest.raises(ValueError, match="expected \\(36, 8, co_pad\\)"):
        simd.wino_maxpool(x, u, None, y, None, 0, 0, 4)
    with pytest.raises(ValueError, match="must be 2 or 4, got 3"):
        simd.wino_conv(x, u, None, y, 0, 0, 3)


def test_transform_is_g_g_gt_padded():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 5, 20)).astype(np.float32)
    u = _winograd.transform_kernel(w)
    assert u.shape == (16, 5, 32) and u.dtype == np.float32
    G = _winograd.G
    want = np.einsum("ai,ijcf,bj->abcf", G, w.astype(np.float64), G).reshape(16, 5, 20)
    np.testing.assert_allclose(u[:, :, :20], want, rtol=1e-6, atol=1e-6)
    assert not u[:, :, 20:].any()
    with pytest.raises(ValueError, match="3, 3, C, F"):
        _winograd.transform_kernel(np.zeros((5, 5, 2, 2), np.float32))
    u4 = _winograd.transform_kernel(w, 4)
    G4 = _winograd.G4
    want4 = np.einsum("ai,ijcf,bj->abcf", G4, w.astype(np.float64), G4).reshape(36, 5, 20)
    assert u4.shape == (36, 5, 32)
    np.testing.assert_allclose(u4[:, :, :20], want4, rtol=1e-6, atol=1e-6)


# --- the cython backend ---------------------------------------------------------------------


class _Spy:
    """Stands in for cython_cpu._simd, counting the fused kernels' calls."""

    def __init__(self, module):
        self._m, self.calls = module, []

    def __getattr__(self, name):
        fn = getattr(self._m, name)
        if name in ("wino_maxpool", "gather_maxpool", "wino_conv"):
            def spy(*a, **k):
                self.calls.append(name)
                return fn(*a, **k)
            return spy
        return fn


@pytest.fixture
def spy(monkeypatch):
    from fastcnn.backends import cython_cpu
    s = _Spy(cython_cpu._simd)
    monkeypatch.setattr(cython_cpu, "_simd", s)
    return s


# (n, h, w, c, f, padding) where the backend takes Winograd (c >= 16, f >= 16).
BACKEND_CASES = [
    (2, 13, 13, 64, 64, "valid"),
    (1, 10, 9, 16, 33, "same"),
    (3, 11, 12, 20, 40, "same"),
    (2, 9, 12, 32, 40, "same"),
]


def _fused(x, w, b, padding):
    B = backends.get("cython")
    p = 1 if padding == "same" else 0
    return B.conv2d_maxpool2d_forward(x, w, b, (1, 1), ((p, p), (p, p)), (2, 2), (2, 2),
                                      NO_PAD)


@pytest.mark.parametrize("case", BACKEND_CASES, ids=lambda c: "x".join(map(str, c[:5])) + c[5])
def test_backend_forward_and_gradients(spy, case):
    """The Winograd forward feeds the unchanged backwards: dx, dw, db equal the float64
    reference conv's backward of the gradient the argmax scatters."""
    n, h, wd, c, f, padding = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    w = (rng.standard_normal((3, 3, c, f)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    y, conv_ctx, pool_ctx = _fused(x, w, b, padding)
    assert spy.calls == ["wino_maxpool"]
    spy.calls.clear()
    p = 1 if padding == "same" else 0
    full = _conv_full(x, w, b, p)
    hp, wp = y.shape[1:3]
    want = full[:, :2 * hp, :2 * wp].reshape(n, hp, 2, wp, 2, f).max(axis=(2, 4))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    B, R = backends.get("cython"), backends.get("reference")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dconv = B.maxpool2d_backward(dy, pool_ctx)
    assert dconv.shape == (n, 2 * hp, 2 * wp, f)
    got = B.conv2d_backward(dconv, conv_ctx)
    # The reference: the whole conv's backward, dy zero on the rows/columns no window covers.
    dfull = np.zeros(full.shape)
    dfull[:, :2 * hp, :2 * wp] = dconv
    _, rctx = R.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                               b.astype(np.float64), (1, 1), ((p, p), (p, p)))
    want_grads = R.conv2d_backward(dfull, rctx)
    # dx by Winograd too (dy has 16+ channels and x 16+).
    assert spy.calls == ["wino_conv"]
    for name, g_, w_ in zip(("dx", "dw", "db"), got, want_grads):
        np.testing.assert_allclose(g_, w_, rtol=1e-4, atol=1e-4, err_msg=name)
    # Each pooled gradient lands on the conv pixel the argmax names.
    assert np.count_nonzero(dconv) == np.count_nonzero(dy)


def test_backend_thresholds_and_float64(spy):
    rng = np.random.default_rng(1)
    for c, f, k, s, want in ((16, 32, 3, 1, "wino_maxpool"), (15, 32, 3, 1, "gather_maxpool"),
                             (16, 15, 3, 1, "gather_maxpool"), (16, 32, 2, 1, "gather_maxpool"),
                             (16, 32, 3, 2, "gather_maxpool")):
        spy.calls.clear()
        x = rng.standard_normal((1, 12, 12, c)).astype(np.float32)
        w = rng.standard_normal((k, k, c, f)).astype(np.float32)
        B = backends.get("cython")
        assert B.conv2d_maxpool2d_forward(x, w, None, (s, s), NO_PAD, (2, 2), (2, 2),
                                          NO_PAD) is not None
        assert spy.calls == [want], (c, f, k, s)
    spy.calls.clear()
    x64 = rng.standard_normal((1, 12, 12, 8))
    assert backends.get("cython").conv2d_maxpool2d_forward(
        x64, rng.standard_normal((3, 3, 8, 32)), None, (1, 1), NO_PAD, (2, 2), (2, 2),
        NO_PAD) is None
    assert spy.calls == []


@pytest.mark.parametrize("var", ["FASTCNN_WINOGRAD", "FASTCNN_PLAN_WINOGRAD"])
def test_env_switch_turns_it_off_in_training_and_the_plan(monkeypatch, spy, var):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 10, 10, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    y_on, ctx_on, _ = _fused(x, w, None, "valid")
    B = backends.get("cython")
    dy = np.ones((2, 8, 8, 32), np.float32)
    B.conv2d_backward(dy, ctx_on)
    monkeypatch.setenv(var, "0")
    y_off, ctx_off, _ = _fused(x, w, None, "valid")
    B.conv2d_backward(dy, ctx_off)
    assert spy.calls == ["wino_maxpool", "wino_conv", "gather_maxpool"]
    assert not np.array_equal(y_on, y_off)  # random floats: the roundings differ somewhere
    np.testing.assert_allclose(y_on, y_off, rtol=1e-4, atol=1e-3)
    assert not _winograd.enabled()
    fastcnn.set_random_seed(1)
    model = fastcnn.Sequential([fastcnn.Input((10, 10, 16)), Conv2D(32, 3), MaxPooling2D(2)])
    plan = model.compile_inference(2)
    assert not any("winograd" in s for s in plan.steps)
    monkeypatch.setenv(var, "1")
    assert _winograd.enabled()


def test_identical_results_with_1_and_2_threads():
    """Ranges of tiles on different threads; every tile computed alone, in a fixed order."""
    _, max_threads = _extensions.openmp_info()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 18, 17, 24)).astype(np.float32)  # 6*64 tiles, 10M MACs
    w = rng.standard_normal((3, 3, 24, 40)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    try:
        _extensions.set_num_threads(1)
        one = _fused(x, w, b, "same")
        _extensions.set_num_threads(2)
        two = _fused(x, w, b, "same")
    finally:
        _extensions.set_num_threads(max_threads)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[2][0], two[2][0])
    # dx by Winograd (dy has 32 channels, x 40).
    wb = rng.standard_normal((3, 3, 40, 32)).astype(np.float32)
    xb = rng.standard_normal((6, 18, 17, 40)).astype(np.float32)
    B = backends.get("cython")
    grads = []
    try:
        for nt in (1, 2):
            _extensions.set_num_threads(nt)
            y, ctx = B.conv2d_forward(xb, wb, None, (1, 1), ((1, 1), (1, 1)))
            grads.append(B.conv2d_backward(np.ones_like(y) * 0.5 - y * 0.1, ctx))
    finally:
        _extensions.set_num_threads(max_threads)
    for name, a, b_ in zip(("dx", "dw"), grads[0], grads[1]):
        np.testing.assert_array_equal(a, b_, err_msg=name)


def test_model_trains_the_same_within_rounding(monkeypatch):
    """A model whose fused conv + pool runs by Winograd trains as with the direct kernel,
    within float32 rounding (plain SGD: Adam's first step divides a gradient by its own
    magnitude and would turn a rounding difference of a near-zero gradient into lr)."""
    if "cython" not in fastcnn.backends.available():
        pytest.skip("the cython backend is not available here")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 14, 13, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 2])
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv("FASTCNN_WINOGRAD", switch)
        with fastcnn.use_backend("cython"):
            fastcnn.set_random_seed(4)
            model = fastcnn.Sequential([
                Conv2D(16, 3, activation="relu", input_shape=(14, 13, 3)), MaxPooling2D(),
                Conv2D(32, 3, padding="same", activation="relu"), MaxPooling2D(),
                Flatten(), Dense(3, activation="softmax")])
            model.compile("sgd", "sparse_categorical_crossentropy")
            pred = model.predict(x, verbose=0)
            loss = model.train_on_batch(x, y)
            results.append((pred, loss, model.get_weights()))
    (p1, l1, w1), (p2, l2, w2) = results
    np.testing.assert_allclose(p1, p2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_switch_2_keeps_the_2x2_tiles(monkeypatch, spy):
    """FASTCNN_WINOGRAD=2: F(2x2, 3x3) (the plan's); the default F(4x4, 3x3), but F(2x2)
    on pooled grids under 3x3 (dx: images under 6x6)."""
    calls = []
    real = spy._m

    class Tiles:
        def __getattr__(self, name):
            fn = getattr(real, name)
            if name.startswith("wino_"):
                return lambda *a: (calls.append((name, a[-1])), fn(*a))[1]
            return fn

    from fastcnn.backends import cython_cpu
    monkeypatch.setattr(cython_cpu, "_simd", Tiles())
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    B = backends.get("cython")
    for size, switch, want in ((10, "1", (4, 4)), (10, "2", (2, 2)), (7, "1", (2, 4)),
                               (5, "1", (2, 2))):
        monkeypatch.setenv("FASTCNN_WINOGRAD", switch)
        x = rng.standard_normal((1, size, size, 32)).astype(np.float32)
        calls.clear()
        y, ctx, pctx = _fused(x, w, None, "valid")
        B.conv2d_backward(B.maxpool2d_backward(np.ones_like(y), pctx), ctx)
        assert calls == [("wino_maxpool", want[0]), ("wino_conv", want[1])], (size, switch)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_backend_nan_and_inf_as_the_direct_kernel(monkeypatch, bad):
    """A non-finite result is recomputed by the direct kernels: NaN and inf reach exactly
    the outputs (and gradients) they reach without Winograd."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 14, 13, 32)).astype(np.float32)
    x[0, 5, 6, 3] = bad
    w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    B = backends.get("cython")
    out = []
    for switch in ("1", "0"):
        monkeypatch.setenv("FASTCNN_WINOGRAD", switch)
        y, ctx, pctx = _fused(x, w, None, "same")
        dy = np.ones(y.shape, np.float32)
        dy[1, 2, 3, 4] = bad
        dx = B.conv2d_backward(B.maxpool2d_backward(dy, pctx), ctx)[0]
        out.append((y, pctx[0], dx))
    for name, a, b in zip(("y", "argmax", "dx"), *out):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.isfinite(out[0][0]).all() and not np.isfinite(out[0][2]).all()


@pytest.mark.parametrize("case", [(2, 13, 13, 64, 64, "valid"), (1, 9, 12, 16, 20, "same"),
                                  (3, 5, 7, 24, 33, "same")],
                         ids=lambda c: "x".join(map(str, c[:5])) + c[5])
def test_backend_conv_forward(spy, case):
    """A plain 3x3 stride-1 conv (no pool) runs by Winograd too: the reference's values, and
    the direct backward on its ctx."""
    n, h, wd, c, f, padding = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    w = (rng.standard_normal((3, 3, c, f)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    p = 1 if padding == "same" else 0
    B = backends.get("cython")
    y, ctx = B.conv2d_forward(x, w, b, (1, 1), ((p, p), (p, p)))
    assert spy.calls == ["wino_conv"]
    np.testing.assert_allclose(y, _conv_full(x, w, b, p), rtol=1e-4, atol=1e-4)
    dx, dw, db = B.conv2d_backward(np.ones_like(y), ctx)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (f,)


@pytest.mark.parametrize("shape, pays", [
    ((8, 7, 7, 512, 512, 4), False),     # 32 tiles, a 37.7 MB kernel: the direct conv
    ((8, 8, 8, 384, 384, 4), False),
    ((8, 14, 14, 256, 256, 4), True),    # 128 tiles
    ((8, 10, 10, 256, 256, 4), True),    # 72 tiles
    ((8, 7, 7, 160, 192, 4), True),      # a 4.4 MB kernel
    ((32, 7, 7, 512, 512, 4), True),     # 128 tiles
])
def test_winograd_needs_tiles_for_a_large_kernel(shape, pays):
    from fastcnn.backends import cython_cpu
    assert cython_cpu._winograd_tiles_pay(*shape) is pays
