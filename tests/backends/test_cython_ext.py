"""The compiled (Cython) extension itself: that it is there when it must be, that a missing
or broken build explains itself, its OpenMP status, thread-count independence, and the
guarantees the generic suites cannot see (read-only inputs, the parallel code paths, which
only run above a size threshold that the generic suites' tiny shapes never reach).

Correctness of every op on random shapes is proven by the generic suites
(test_equivalence.py, test_gradients.py), which run on 'cython' whenever it is available.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import types
import warnings

import numpy as np
import pytest

from fastcnn import _extensions, backends
from fastcnn.backends import cython_cpu
from fastcnn.shapes import window_output_shape

# Under CI (or when the build was required) a missing extension is a FAILURE, never a skip:
# a skip would let CI pass with the compiled backend silently absent.
BUILD_REQUIRED = os.environ.get("FASTCNN_REQUIRE_EXT") == "1" or os.environ.get(
    "CI", ""
).lower() not in ("", "0", "false")

needs_ext = pytest.mark.skipif(
    not _extensions.HAVE_CYTHON,
    reason=f"the Cython extension is unavailable: {_extensions.IMPORT_ERROR}",
)

DTYPES = [np.float32, np.float64]


def test_extension_imports_when_required():
    if not _extensions.HAVE_CYTHON and not BUILD_REQUIRED:
        pytest.skip(
            f"Cython extension not built here ({_extensions.IMPORT_ERROR}); "
            "set FASTCNN_REQUIRE_EXT=1 or CI to make this a failure"
        )
    assert _extensions.HAVE_CYTHON, _extensions.IMPORT_ERROR
    assert _extensions.IMPORT_ERROR is None
    assert set(_extensions.modules) == set(_extensions.EXTENSIONS)
    assert "depthwise" in _extensions.EXTENSIONS  # csrc/depthwise.pyx (issue 14)
    for module in _extensions.modules.values():
        assert module.ABI_VERSION == _extensions.ABI_VERSION
    assert "cython" in backends.available()
    assert "cython" not in backends.unavailable()
    assert all(backends.get("cython").capabilities().values()), "every op is implemented"


@needs_ext
def test_openmp_status_is_reported_and_thread_count_settable():
    openmp, max_threads = _extensions.openmp_info()
    assert isinstance(openmp, bool)
    assert isinstance(max_threads, int) and max_threads >= 1
    if not openmp:
        assert max_threads == 1
        return
    try:
        _extensions.set_num_threads(1)
        assert _extensions.openmp_info() == (True, 1)
        _extensions.set_num_threads(2)
        assert _extensions.openmp_info() == (True, 2)
    finally:
        _extensions.set_num_threads(max_threads)
    with pytest.raises(ValueError, match="n must be >= 1"):
        _extensions.set_num_threads(0)


# ------------------------------------------------------------------ a missing or broken build

MISSING = "extension was not built (no C compiler at install time?): fastcnn._ext_conv is missing"


@pytest.fixture
def without_extension(monkeypatch):
    """Makes fastcnn behave as on a machine where the extension was never built."""
    monkeypatch.setattr(_extensions, "HAVE_CYTHON", False)
    monkeypatch.setattr(_extensions, "IMPORT_ERROR", MISSING)
    monkeypatch.setattr(_extensions, "modules", {})
    monkeypatch.setattr(_extensions, "_warned", False)
    # A fresh registry cache, so 'cython' is loaded again (and refused) under the patch.
    monkeypatch.setattr(backends, "_LOADED", {})
    monkeypatch.setattr(backends, "_FAILED", {})


def test_missing_extension_require_cython_explains(without_extension):
    with pytest.raises(RuntimeError) as info:
        _extensions.require_cython()
    message = str(info.value)
    assert MISSING in message
    assert "pip install -e ." in message
    assert "The NumPy and Numba backends still work." in message
    with pytest.raises(RuntimeError, match="no C compiler"):
        _extensions.openmp_info()


def test_missing_extension_backend_is_unavailable_with_reason(without_extension):
    ok, reason = cython_cpu.is_available()
    assert ok is False
    assert MISSING in reason and "pip install -e ." in reason
    assert "cython" not in backends.available()
    assert "reference" in backends.available()
    assert MISSING in backends.unavailable()["cython"]
    with pytest.raises(ValueError, match="not available on this machine"):
        backends.get("cython")
    # Even a direct call into the backend module names the reason instead of crashing.
    with pytest.raises(RuntimeError, match="no C compiler"):
        cython_cpu._Unavailable().im2col


def test_missing_extension_warns_exactly_once(without_extension):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _extensions.warn_if_missing()
        _extensions.warn_if_missing()
    assert len(caught) == 1
    assert issubclass(caught[0].category, _extensions.ExtensionWarning)
    assert issubclass(_extensions.ExtensionWarning, RuntimeWarning)
    text = str(caught[0].message)
    assert MISSING in text and "C compiler" in text and "pip install -e ." in text


@needs_ext
def test_no_warning_when_extension_loaded(monkeypatch):
    monkeypatch.setattr(_extensions, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _extensions.warn_if_missing()
    assert caught == []


def test_probe_tells_a_missing_build():
    module, reason = _extensions._probe("fastcnn._ext_does_not_exist")
    assert module is None
    assert reason.startswith("extension was not built (no C compiler at install time?)")


def test_probe_tells_a_broken_build(monkeypatch):
    spec = importlib.machinery.ModuleSpec("fastcnn._ext_conv", loader=None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)

    def broken(name):
        raise ImportError("undefined symbol: omp_get_max_threads")

    monkeypatch.setattr(importlib, "import_module", broken)
    module, reason = _extensions._probe("fastcnn._ext_conv")
    assert module is None
    assert reason.startswith("extension failed to load: ")
    assert "undefined symbol: omp_get_max_threads" in reason


def test_probe_refuses_a_stale_build(monkeypatch):
    spec = importlib.machinery.ModuleSpec("fastcnn._ext_conv", loader=None)
    stale = types.SimpleNamespace(ABI_VERSION=_extensions.ABI_VERSION - 1)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setattr(importlib, "import_module", lambda name: stale)
    module, reason = _extensions._probe("fastcnn._ext_conv")
    assert module is None
    assert "out of date" in reason


# ----------------------------------------------------------------- the compiled kernels


def _all_ops(dtype, seed=0):
    """Runs every op of the contract (forward and backward) at shapes large enough to take
    the parallel code paths; returns every output array, in a fixed order."""
    rng = np.random.default_rng(seed)
    B = backends.get("cython")

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def distinct(*shape):  # no ties, so max-pool winners are unambiguous
        return rng.permutation(np.linspace(-1, 1, int(np.prod(shape)))).reshape(shape).astype(dtype)

    out = []
    x, w, b = r(8, 15, 12, 6), r(3, 2, 6, 5), r(5)
    for stride, padding in (((1, 1), "same"), ((2, 3), "valid")):
        _, pad = window_output_shape((15, 12), (3, 2), stride, padding)
        y, ctx = B.conv2d_forward(x, w, b, stride, pad)
        out += [y, *B.conv2d_backward(r(*y.shape), ctx)]
    xp = distinct(16, 16, 16, 32)
    for pool, stride, padding in (((2, 2), (2, 2), "valid"), ((3, 2), (1, 2), "same")):
        _, pad = window_output_shape((16, 16), pool, stride, padding)
        for fwd, bwd in (
            (B.maxpool2d_forward, B.maxpool2d_backward),
            (B.avgpool2d_forward, B.avgpool2d_backward),
        ):
            y, ctx = fwd(xp, pool, stride, pad)
            out += [y, bwd(r(*y.shape), ctx)]
    z, t = r(300, 150), rng.random((300, 150)).astype(dtype)
    for fwd, bwd in (
        (B.relu_forward, B.relu_backward),
        (B.sigmoid_forward, B.sigmoid_backward),
        (B.tanh_forward, B.tanh_backward),
        (B.softmax_forward, B.softmax_backward),
    ):
        y, ctx = fwd(z)
        out += [y, bwd(t, ctx)]
    out += list(B.softmax_cross_entropy(z, t))
    out += list(B.sparse_softmax_cross_entropy(z, rng.integers(0, 150, 300)))
    out += list(B.sigmoid_cross_entropy(z, t))
    y, ctx = B.dense_forward(z, r(150, 240), r(240))
    out += [y, *B.dense_backward(r(300, 240), ctx)]
    return out


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_results_identical_with_1_and_2_threads(dtype):
    _, max_threads = _extensions.openmp_info()
    try:
        _extensions.set_num_threads(1)
        one = _all_ops(dtype)
        _extensions.set_num_threads(2)
        two = _all_ops(dtype)
    finally:
        _extensions.set_num_threads(max_threads)
    assert len(one) == len(two)
    for i, (a, b) in enumerate(zip(one, two)):
        assert a.dtype == dtype, f"output {i} is {a.dtype}: float32 must not be upcast"
        np.testing.assert_array_equal(a, b, err_msg=f"output {i} differs between 1 and 2 threads")


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_parallel_paths_match_reference(dtype):
    """Shapes above the kernels' parallel threshold, compared with the oracle."""
    if "reference" not in backends.available():
        pytest.skip("the reference backend is not available")
    _, max_threads = _extensions.openmp_info()
    _extensions.set_num_threads(2)
    try:
        got_all = _ops_with(backends.get("cython"), dtype)
    finally:
        _extensions.set_num_threads(max_threads)
    want_all = _ops_with(backends.get("reference"), dtype)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for i, (got, want) in enumerate(zip(got_all, want_all)):
        assert got.shape == want.shape, f"output {i}"
        np.testing.assert_allclose(got, want, err_msg=f"output {i}", **tol)


def _ops_with(B, dtype):
    """Every op once, on one backend, at sizes past the parallel threshold (the reference
    loops over output positions, so the spatial sizes stay small)."""
    rng = np.random.default_rng(7)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    out = []
    x, w, b = r(16, 9, 8, 8), r(3, 2, 8, 6), r(6)
    _, pad = window_output_shape((9, 8), (3, 2), (1, 1), "same")
    y, ctx = B.conv2d_forward(x, w, b, (1, 1), pad)
    out += [y, *B.conv2d_backward(r(*y.shape), ctx)]
    xp = rng.permutation(np.linspace(-1, 1, 16 * 16 * 16 * 32)).reshape(16, 16, 16, 32).astype(dtype)
    for pool, stride in (((2, 2), (2, 2)), ((3, 3), (1, 1))):
        for fwd, bwd in (
            (B.maxpool2d_forward, B.maxpool2d_backward),
            (B.avgpool2d_forward, B.avgpool2d_backward),
        ):
            y, ctx = fwd(xp, pool, stride, ((0, 0), (0, 0)))
            out += [y, bwd(r(*y.shape), ctx)]
    z, t = r(200, 200), rng.random((200, 200)).astype(dtype)
    out += list(B.softmax_cross_entropy(z, t)) + list(B.sigmoid_cross_entropy(z, t))
    y, ctx = B.softmax_forward(z)
    out += [y, B.softmax_backward(t, ctx)]
    y, ctx = B.dense_forward(z, r(200, 200), r(200))
    out += [y, *B.dense_backward(r(200, 200), ctx)]
    return [np.asarray(o) for o in out]


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_inputs_not_modified_and_outputs_not_aliased(dtype):
    """Every input is handed over READ-ONLY: a kernel that wrote to one would raise; the
    values are also compared with copies, and no output may share memory with an input."""
    B = backends.get("cython")
    rng = np.random.default_rng(1)
    seen = []

    def frozen(a):
        a = np.ascontiguousarray(a)
        seen.append((a, a.copy()))
        a.setflags(write=False)
        return a

    def r(*shape):
        return frozen(rng.standard_normal(shape).astype(dtype))

    def check_outputs(*outputs):
        for o in outputs:
            if o is None:
                continue
            assert o.dtype == dtype
            for a, _ in seen:
                assert not np.shares_memory(o, a), "an output aliases an input"

    # 1x1/stride-1 and whole-input kernels take the reshape shortcuts (cols is x itself).
    for shape, wshape, stride, pad in (
        ((2, 7, 6, 3), (3, 2, 3, 4), (2, 1), ((1, 1), (0, 1))),
        ((2, 7, 6, 3), (1, 1, 3, 4), (1, 1), ((0, 0), (0, 0))),
        ((2, 7, 6, 3), (7, 6, 3, 4), (1, 1), ((0, 0), (0, 0))),
    ):
        x, w, b = r(*shape), r(*wshape), r(wshape[3])
        y, ctx = B.conv2d_forward(x, w, b, stride, pad)
        check_outputs(y, *B.conv2d_backward(r(*y.shape), ctx))
    x = r(2, 7, 6, 3)
    for fwd, bwd in (
        (B.maxpool2d_forward, B.maxpool2d_backward),
        (B.avgpool2d_forward, B.avgpool2d_backward),
    ):
        y, ctx = fwd(x, (2, 3), (2, 2), ((0, 1), (1, 1)))
        check_outputs(y, bwd(r(*y.shape), ctx))
    z, t = r(5, 4), frozen(rng.random((5, 4)).astype(dtype))
    for fwd, bwd in (
        (B.relu_forward, B.relu_backward),
        (B.sigmoid_forward, B.sigmoid_backward),
        (B.tanh_forward, B.tanh_backward),
        (B.softmax_forward, B.softmax_backward),
    ):
        y, ctx = fwd(z)
        check_outputs(y, bwd(r(5, 4), ctx))
    y, ctx = B.dense_forward(z, r(4, 3), r(3))
    check_outputs(y, *B.dense_backward(r(5, 3), ctx))
    labels = frozen(np.array([0, 3, 1, 1, 2]))
    for loss, grad in (
        B.softmax_cross_entropy(z, t),
        B.sparse_softmax_cross_entropy(z, labels),
        B.sigmoid_cross_entropy(z, t),
    ):
        assert loss.shape == () and loss.dtype == dtype
        check_outputs(grad)
    for a, copy in seen:
        np.testing.assert_array_equal(a, copy)


@needs_ext
def test_bad_arguments_raise_clear_errors():
    B = backends.get("cython")
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(TypeError, match="w has dtype float64"):
        B.conv2d_forward(x, np.zeros((3, 3, 2, 1)), None, (1, 1), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="w has 3 input channels"):
        B.conv2d_forward(x, np.zeros((3, 3, 3, 1), np.float32), None, (1, 1), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="does not fit"):
        B.conv2d_forward(x, np.zeros((5, 3, 2, 1), np.float32), None, (1, 1), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="lie entirely in the padding"):
        B.maxpool2d_forward(x, (2, 2), (2, 2), ((2, 0), (0, 0)))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got 3"):
        B.sparse_softmax_cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 3]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        B.sparse_softmax_cross_entropy(np.zeros((2, 3), np.float32), np.array([0.0, 1.0]))


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bias_activation_epilogue(dtype):
    """bias_act is the GEMM epilogue (conv/dense + bias + activation in one pass); every
    activation code against NumPy, on a size that takes the parallel path."""
    elt = _extensions.modules["elementwise"]
    rng = np.random.default_rng(2)
    y0 = (3 * rng.standard_normal((300, 130))).astype(dtype)
    b = rng.standard_normal(130).astype(dtype)
    z = y0.astype(np.float64) + b.astype(np.float64)
    expected = {
        elt.ACT_NONE: z,
        elt.ACT_RELU: np.maximum(z, 0),
        elt.ACT_SIGMOID: 1 / (1 + np.exp(-z)),
        elt.ACT_TANH: np.tanh(z),
    }
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    for code, want in expected.items():
        y = y0.copy()
        elt.bias_act(y, b, code)
        np.testing.assert_allclose(y, want, err_msg=f"activation code {code}", **tol)
    with pytest.raises(ValueError, match="unknown activation code 7"):
        elt.bias_act(y0.copy(), b, 7)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_add_act_is_a_residual_sum_and_its_relu_in_one_pass(dtype):
    """add_act (an inference plan's Add + ReLU): a + b, then relu_forward's bits (a NaN
    kept), relu6 capped at 6; on a size that takes the parallel path, out in place of a."""
    elt = _extensions.modules["elementwise"]
    rng = np.random.default_rng(5)
    a = (4 * rng.standard_normal(200_003)).astype(dtype)
    b = (4 * rng.standard_normal(200_003)).astype(dtype)
    a[7] = np.nan
    s = a + b
    relu = np.empty_like(s)
    elt.relu_forward(s, relu)
    for act, want in (("linear", s), ("relu", relu), ("relu6", np.minimum(relu, 6))):
        out = np.full_like(a, 99)
        elt.add_act(a, b, out, act)
        np.testing.assert_array_equal(out, want, err_msg=act)
    inplace = a.copy()
    elt.add_act(inplace, b, inplace, "relu")
    np.testing.assert_array_equal(inplace, relu)
    with pytest.raises(ValueError, match="activation must be .* got 'tanh'"):
        elt.add_act(a, b, a.copy(), "tanh")


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_tanh_backward_is_bitwise_numpys_on_any_thread_count(dtype):
    """auto routes tanh to cython because its backward is im2col's NumPy formula, bitwise
    (csrc/activation_kernels.h), only vectorised and threaded: checked across the chunk
    boundaries (16384 elements) on 1 and 2 threads, with values near 0, 1 and beyond."""
    from fastcnn.backends import im2col
    rng = np.random.default_rng(3)
    n = 2 * 16384 + 37
    y, _ = im2col.tanh_forward((rng.standard_normal(n) * 4).astype(dtype))
    dy = rng.standard_normal(n).astype(dtype)
    want = im2col.tanh_backward(dy, y)
    before = _extensions.openmp_info()[1]
    try:
        for threads in (1, 2):
            _extensions.set_num_threads(threads)
            np.testing.assert_array_equal(cython_cpu.tanh_backward(dy, y), want)
    finally:
        _extensions.set_num_threads(before)
