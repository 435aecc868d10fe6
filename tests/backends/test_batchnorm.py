"""Batch normalisation kernels (batchnorm_statistics + the batchnorm pair) on every backend
that implements them, against the reference: float32/float64, training and inference,
gamma/beta None, need_dx False, any rank; the reference's gradients by finite differences;
the cython kernels bitwise equal at 1 and 2 OpenMP threads; the cuda kernels (simulator,
tiny shapes) with several reduction chunks and device arrays in -> device arrays out."""
import fastcnn  # noqa: F401  (before numpy)
import numpy as np
import pytest

from fastcnn import backends, gradcheck

REF = backends.get("reference")
TOL = {np.dtype(np.float32): dict(rtol=2e-4, atol=2e-4),
       np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10)}
SHAPES = [(4, 3, 5, 6), (7, 3), (2, 3, 4, 2, 5)]


def _bn_backends():
    out = []
    for name in backends.available():
        if name in ("reference", "cuda"):
            continue
        b = backends.get(name)
        if b.implements("batchnorm_forward") and b.implements("batchnorm_statistics"):
            out.append(name)
    return out


def _case(rng, shape, dtype, scale=True, center=True):
    c = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    gamma = rng.uniform(0.5, 2, c).astype(dtype) if scale else None
    beta = rng.standard_normal(c).astype(dtype) if center else None
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


def _run(be, x, gamma, beta, dy, training, need_dx=True, moving=None):
    if training:
        mean, var = be.batchnorm_statistics(x)
    else:
        mean, var = moving
    y, ctx = be.batchnorm_forward(x, gamma, beta, mean, var, 1e-3, training)
    return (mean, var, y, *be.batchnorm_backward(dy, ctx, need_dx))


def _same(got, want, dtype, what):
    if want is None:
        assert got is None, what
        return
    got = backends.get("cuda").module.to_host(got) if not isinstance(got, np.ndarray) else got
    assert got.dtype == dtype and got.shape == want.shape, what
    np.testing.assert_allclose(got, want, **TOL[np.dtype(dtype)], err_msg=what)


@pytest.mark.parametrize("name", _bn_backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False),
                                          (False, False)], ids=["gb", "b", "g", "none"])
def test_matches_the_reference(name, dtype, shape, training, scale, center):
    rng = np.random.default_rng(sum(shape) + 3 * scale + center)
    x, gamma, beta, dy = _case(rng, shape, dtype, scale, center)
    c = shape[-1]
    moving = (rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype))
    before = [a.copy() for a in (x, dy, *moving) + tuple(a for a in (gamma, beta) if a is not None)]
    got = _run(backends.get(name), x, gamma, beta, dy, training, moving=moving)
    want = _run(REF, x, gamma, beta, dy, training, moving=moving)
    for what, g, w in zip(("mean", "var", "y", "dx", "dgamma", "dbeta"), got, want):
        _same(g, w, dtype, what)
    after = (x, dy, *moving) + tuple(a for a in (gamma, beta) if a is not None)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")
    # need_dx=False: no dx, the same dgamma / dbeta
    no_dx = _run(backends.get(name), x, gamma, beta, dy, training, need_dx=False,
                 moving=moving)
    assert no_dx[3] is None
    for g, w in zip(no_dx[4:], got[4:]):
        if w is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", [n for n in _bn_backends()
                                  if not backends.get(n).reused_from("batchnorm_statistics")])
def test_float32_statistics_are_accumulated_accurately(name):
    """A large float32 batch with a large mean: the compiled statistics (double sums, per
    block) stay within float32 rounding of the float64 statistics (the reference's float32
    NumPy sums, Keras's numbers, are off by 6e-6 here)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 20, 20, 8)) * 0.5 + 40).astype(np.float32)
    mean, var = backends.get(name).batchnorm_statistics(x)
    mean64, var64 = REF.batchnorm_statistics(x.astype(np.float64))
    np.testing.assert_allclose(mean, mean64, rtol=2e-7)
    np.testing.assert_allclose(var, var64, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("scale,center", [(True, True), (False, False)])
def test_reference_gradients_by_finite_differences(training, scale, center):
    rng = np.random.default_rng(1)
    x, gamma, beta, _ = _case(rng, (3, 2, 2, 3), np.float64, scale, center)
    moving = (rng.standard_normal(3), rng.uniform(0.5, 2, 3))

    def forward(x, gamma, beta):
        mean, var = REF.batchnorm_statistics(x) if training else moving
        return REF.batchnorm_forward(x, gamma, beta, mean, var, 1e-3, training)

    gradcheck.check_backward(forward, REF.batchnorm_backward, [x, gamma, beta])


def test_reference_backward_explains_today_s_numbers():
    """The reference is the layer's former NumPy code: y equals the textbook formula."""
    rng = np.random.default_rng(2)
    x, gamma, beta, _ = _case(rng, (5, 4, 3), np.float64)
    mean, var = REF.batchnorm_statistics(x)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1)), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(axis=(0, 1)), rtol=1e-13)
    y, _ = REF.batchnorm_forward(x, gamma, beta, mean, var, 1e-3, True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * gamma + beta, rtol=1e-12)


def test_bad_arguments_name_the_argument():
    x = np.zeros((2, 3), np.float32)
    c = np.ones(3, np.float32)
    for name in ["reference"] + _bn_backends():
        be = backends.get(name)
        with pytest.raises(TypeError, match="^x must be a float32 or float64"):
            be.batchnorm_statistics(x.astype(np.float16))
        with pytest.raises(ValueError, match="^x must have rank >= 2"):
            be.batchnorm_statistics(np.zeros(3, np.float32))
        with pytest.raises(ValueError, match=r"^gamma must have shape \(3,\)"):
            be.batchnorm_forward(x, np.ones(4, np.float32), c, c, c, 1e-3, True)
        with pytest.raises(TypeError, match="^var must be a numpy array of dtype float32"):
            be.batchnorm_forward(x, c, c, c, c.astype(np.float64), 1e-3, False)


# ------------------------------------------------------------------ cython: threads


def _set_threads(name, n):
    if name == "cython":
        from fastcnn import _extensions
        _extensions.set_num_threads(n)
    else:
        import numba
        numba.set_num_threads(n)


def _threaded():
    out = []
    for name in ("cython", "numba"):
        if name in _bn_backends() and not backends.get(name).reused_from("batchnorm_forward"):
            out.append(name)
    return out


@pytest.mark.parametrize("name", _threaded())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_compiled_kernels_are_bitwise_equal_at_1_and_2_threads(name, dtype):
    if name == "numba":
        import numba
        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("numba's thread pool has one thread here (NUMBA_NUM_THREADS)")
        before = numba.get_num_threads()
    else:
        from fastcnn import _extensions
        before = _extensions.openmp_info()[1]
    be = backends.get(name)
    rng = np.random.default_rng(7)
    # 6400 rows of 16 channels: 25 reduction blocks of 256 rows, several per thread.
    x, gamma, beta, dy = _case(rng, (16, 20, 20, 16), dtype)
    results = []
    try:
        for threads in (1, 2):
            _set_threads(name, threads)
            results.append(_run(be, x, gamma, beta, dy, True))
    finally:
        _set_threads(name, before)
    for what, a, b in zip(("mean", "var", "y", "dx", "dgamma", "dbeta"), *results):
        np.testing.assert_array_equal(a, b, err_msg=what)


# ------------------------------------------------------------------ cuda (simulator)

cuda_only = pytest.mark.skipif("cuda" not in backends.available(),
                               reason=f"cuda backend unavailable: "
                                      f"{backends.unavailable().get('cuda')}")


@cuda_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("scale,center", [(True, True), (False, False)], ids=["gb", "none"])
def test_cuda_matches_the_reference(dtype, training, scale, center):
    rng = np.random.default_rng(11)
    x, gamma, beta, dy = _case(rng, (2, 3, 2, 3), dtype, scale, center)
    moving = (rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype))
    got = _run(backends.get("cuda"), x, gamma, beta, dy, training, moving=moving)
    want = _run(REF, x, gamma, beta, dy, training, moving=moving)
    for what, g, w in zip(("mean", "var", "y", "dx", "dgamma", "dbeta"), got, want):
        _same(g, w, dtype, what)
    no_dx = _run(backends.get("cuda"), x, gamma, beta, dy, training, need_dx=False,
                 moving=moving)
    assert no_dx[3] is None


@cuda_only
def test_cuda_reductions_in_several_chunks_device_arrays_and_repeatable(monkeypatch):
    """7 rows in chunks of 2, 2, 2, 1 (forced small): statistics and gradients equal the
    reference; device arrays in give device arrays out; two runs are bitwise equal."""
    from fastcnn.backends import cuda as cb
    monkeypatch.setattr(cb, "_BN_MIN_ROWS", 2)
    monkeypatch.setattr(cb, "_BN_THREADS", 8)
    assert cb._bn_splits(7, 2) == (4, 2)
    rng = np.random.default_rng(12)
    x, gamma, beta, dy = _case(rng, (7, 2), np.float64)
    cu = backends.get("cuda")
    d = [cb.to_device(a) for a in (x, gamma, beta, dy)]
    got = _run(cu, *d, True)
    assert all(cb.is_device_array(a) for a in got)
    want = _run(REF, x, gamma, beta, dy, True)
    for what, g, w in zip(("mean", "var", "y", "dx", "dgamma", "dbeta"), got, want):
        _same(g.copy_to_host(), w, np.float64, what)
    again = _run(cu, x, gamma, beta, dy, True)
    for a, b in zip(again, got):
        np.testing.assert_array_equal(a, b.copy_to_host())
    # the moving-statistics update, in place on the device (Keras's rule)
    moving = cb.to_device(np.array([1.0, -2.0]))
    cb.batchnorm_moving_update(moving, got[0], 0.9)
    np.testing.assert_allclose(moving.copy_to_host(),
                               np.array([1.0, -2.0]) * 0.9 + 0.1 * want[0], rtol=1e-14)
