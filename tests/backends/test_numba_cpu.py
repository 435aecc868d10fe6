"""numba-specific checks of the ``numba`` backend.

The generic suites (test_equivalence.py, test_gradients.py, test_kernels_smoke.py) already
run this backend against the reference. This file checks what only a Numba backend can get
wrong: fastmath flags that would break NaN / -inf, races between threads, results that
depend on the thread count, float64 arithmetic sneaking into the float32 machine code,
the on-disk cache, and the optional-dependency behaviour.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

numba = pytest.importorskip(
    "numba", reason="numba is not installed (pip install 'fastcnn[numba]')"
)

from fastcnn import backends  # noqa: E402
from fastcnn.backends import numba_cpu  # noqa: E402
from fastcnn.backends._numba import kernels  # noqa: E402
from fastcnn.shapes import window_output_shape  # noqa: E402

REF = backends.get("reference")
NB = backends.get("numba")
TWO_THREADS = numba.config.NUMBA_NUM_THREADS >= 2
needs_two_threads = pytest.mark.skipif(
    not TWO_THREADS, reason="needs NUMBA_NUM_THREADS >= 2 to run kernels on 2 threads"
)


def dispatchers():
    """Every compiled kernel of the backend (module-level numba dispatchers)."""
    return {
        name: obj
        for name, obj in vars(kernels).items()
        if isinstance(obj, numba.core.registry.CPUDispatcher)
    }


def conv_case(rng, dtype, n=4, hw=(9, 8), c=5, f=6, k=(3, 2), s=(1, 1), padding="same"):
    (ho, wo), pad = window_output_shape(hw, k, s, padding)
    x = rng.standard_normal((n, *hw, c)).astype(dtype)
    w = rng.standard_normal((*k, c, f)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    dy = rng.standard_normal((n, ho, wo, f)).astype(dtype)
    return x, w, b, dy, s, pad


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


# ------------------------------------------------------------------------- flags, cache


def test_fastmath_flags_exclude_nnan_and_ninf():
    assert not {"nnan", "ninf", "fast"} & set(numba_cpu.FASTMATH)
    assert numba_cpu.FASTMATH is kernels.FASTMATH


def test_every_kernel_uses_the_central_flags_and_the_disk_cache():
    found = dispatchers()
    assert {"conv_gather_dot", "conv_dw", "maxpool_forward", "softmax_cross_entropy"} <= set(found)
    # Softmax rows keep their evaluation order (no reassoc): see kernels.ROW_FASTMATH.
    rows = {"_row_max_logsum", "softmax_rows", "softmax_cross_entropy",
            "sparse_softmax_cross_entropy"}
    assert rows <= set(found)
    assert kernels.ROW_FASTMATH == numba_cpu.FASTMATH - {"reassoc"}
    for name, disp in found.items():
        flags = kernels.ROW_FASTMATH if name in rows else numba_cpu.FASTMATH
        assert disp.targetoptions["fastmath"] == set(flags), name
        if disp.targetoptions.get("inline") == "always":
            continue  # helpers are inlined into (and cached with) the kernels
        assert type(disp._cache).__name__ == "FunctionCache", f"{name} is not cache=True"


def test_cache_index_is_written_for_a_used_kernel():
    NB.relu_forward(np.ones((2, 3), np.float32))
    cache = kernels.unary_forward_range._cache
    index = cache._cache_file._index_path
    assert os.path.exists(index), f"no numba cache index at {index}"


COMPILE_TWO_KERNELS = (
    "import fastcnn\n"
    "import numpy as np\n"
    "from fastcnn import backends\n"
    "b = backends.get('numba')\n"
    "b.softmax_forward(np.ones((2, 3), np.float32))\n"
    "b.softmax_backward(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))\n")


def test_a_cold_cache_compile_is_announced_once_and_a_warm_one_not(tmp_path):
    """About a minute of compiling on first use used to pass without a word."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))   # an empty (cold) disk cache
    env.pop("FASTCNN_COMPILE_MESSAGE", None)
    runs = [subprocess.run([sys.executable, "-c", COMPILE_TWO_KERNELS], env=env,
                           capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    cold, warm = (r.stderr for r in runs)
    assert cold.count(numba_cpu.COMPILE_NOTICE.MESSAGE) == 1, cold   # once, for 2 kernels
    assert "fastcnn: compiling" not in warm, warm   # loaded from the cache: nothing to say


class _Event:
    is_start, is_end = True, False

    def __init__(self, func):
        self.data = {"dispatcher": func}


def test_the_compile_message_can_be_silenced_and_ignores_other_numba_code(monkeypatch,
                                                                          capsys):
    notice = type(numba_cpu.COMPILE_NOTICE)()
    notice.notify(_Event(numba.njit(lambda v: v)))   # the user's own numba function
    assert capsys.readouterr().err == "" and not notice.shown
    monkeypatch.setenv("FASTCNN_COMPILE_MESSAGE", "0")
    notice.notify(_Event(kernels.softmax_rows))
    assert capsys.readouterr().err == "" and notice.shown
    monkeypatch.delenv("FASTCNN_COMPILE_MESSAGE")
    fresh = type(numba_cpu.COMPILE_NOTICE)()
    fresh.notify(_Event(kernels.softmax_rows))
    fresh.notify(_Event(kernels.softmax_backward_rows))
    assert capsys.readouterr().err == numba_cpu.COMPILE_NOTICE.MESSAGE + "\n"


def test_threads_helper_reports_numba_threads():
    assert numba_cpu.threads() == numba.get_num_threads()


def test_is_available():
    assert numba_cpu.is_available() == (True, "")
    assert "numba" in backends.available()


def test_module_imports_and_explains_itself_without_numba():
    """The registry imports the module and then asks is_available(): both must work."""
    code = (
        "import sys; sys.modules['numba'] = None\n"  # makes 'import numba' raise ImportError
        "from fastcnn.backends import numba_cpu\n"
        "ok, why = numba_cpu.is_available()\n"
        "assert not ok and \"pip install 'fastcnn[numba]'\" in why, why\n"
        "from fastcnn import backends\n"
        "assert 'numba' not in backends.available()\n"
        "assert 'pip install' in backends.unavailable()['numba']\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------- NaN and -inf semantics


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_through_conv_and_max_pool(dtype):
    rng = np.random.default_rng(0)
    x, w, b, dy, s, pad = conv_case(rng, dtype, n=2, c=16, f=8)
    x[1, 4, 3, 7] = np.nan
    y, _ = NB.conv2d_forward(x, w, b, s, pad)
    y_ref, _ = REF.conv2d_forward(x, w, b, s, pad)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    assert np.isnan(y).any() and not np.isnan(y[0]).any()

    (ho, wo), ppad = window_output_shape(x.shape[1:3], (3, 3), (2, 2), "same")
    m, ctx = NB.maxpool2d_forward(x, (3, 3), (2, 2), ppad)
    m_ref, _ = REF.maxpool2d_forward(x, (3, 3), (2, 2), ppad)
    np.testing.assert_array_equal(np.isnan(m), np.isnan(m_ref))
    assert np.isnan(m[1, :, :, 7]).any()
    # The NaN's window routes its gradient to the NaN, as np.argmax (the reference) does.
    g = rng.standard_normal(m.shape).astype(dtype)
    np.testing.assert_allclose(NB.maxpool2d_backward(g, ctx),
                               REF.maxpool2d_backward(g, _), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_of_all_minus_inf_and_nan_activations(dtype):
    x = np.full((1, 4, 4, 2), -np.inf, dtype=dtype)
    x[0, 3, 3, 1] = 5
    (ho, wo), pad = window_output_shape((4, 4), (3, 3), (2, 2), "same")
    y, ctx = NB.maxpool2d_forward(x, (3, 3), (2, 2), pad)
    assert y[0, 0, 0, 0] == -np.inf and not np.isnan(y).any()  # -inf is not NaN
    assert y[0, 1, 1, 1] == 5
    dx = NB.maxpool2d_backward(np.ones_like(y), ctx)
    assert dx.sum() == y.size  # every window routed its gradient somewhere real
    r, _ = NB.relu_forward(np.array([np.nan, -1, 2], dtype=dtype))
    assert np.isnan(r[0]) and r[1] == 0 and r[2] == 2


# ------------------------------------------------------------- threads: races, determinism


def conv_and_pool_results(x, w, b, dy, s, pad):
    y, ctx = NB.conv2d_forward(x, w, b, s, pad)
    dx, dw, db = NB.conv2d_backward(dy, ctx)
    m, mctx = NB.maxpool2d_forward(x, (2, 2), (1, 1), ((0, 1), (0, 1)))
    dm = NB.maxpool2d_backward(np.ones_like(m), mctx)
    a, actx = NB.avgpool2d_forward(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    da = NB.avgpool2d_backward(np.ones_like(a), actx)
    return dict(y=y, dx=dx, dw=dw, db=db, m=m, dm=dm, a=a, da=da)


# Geometries: long patches (the general dW path, strided phases for dx), a 1x1 conv on
# 6 channels (the short-patch dW path with per-chunk partials), and first layers on 1-4
# channels (the few-channel kernels: per-image dW partials; F and K not multiples of 4,
# so the leftover channels and the zero taps run too; strided, with stride phases).
THREAD_CASES = [
    dict(n=16, hw=(12, 11), c=20, f=12, k=(3, 3), s=(1, 1), padding="valid"),
    dict(n=16, hw=(12, 11), c=20, f=12, k=(5, 4), s=(2, 3), padding="same"),
    dict(n=16, hw=(12, 11), c=6, f=16, k=(1, 1), s=(1, 1), padding="valid"),
    dict(n=16, hw=(12, 11), c=1, f=16, k=(3, 3), s=(1, 1), padding="same"),
    dict(n=16, hw=(12, 11), c=3, f=6, k=(5, 5), s=(1, 1), padding="same"),
    dict(n=9, hw=(13, 12), c=2, f=9, k=(3, 2), s=(2, 3), padding="same"),
]
THREAD_IDS = ["long", "strided", "short-patch", "one-channel", "few-channel",
              "few-strided"]


@needs_two_threads
@pytest.mark.parametrize("case", THREAD_CASES, ids=THREAD_IDS)
def test_two_threads_match_the_reference_repeatedly(case, restore_threads):
    """A race (a shared '+=' in a prange) shows up as a wrong or varying result."""
    rng = np.random.default_rng(1)
    x, w, b, dy, s, pad = conv_case(rng, np.float64, **case)
    _, ctx = REF.conv2d_forward(x, w, b, s, pad)
    dx_ref, dw_ref, db_ref = REF.conv2d_backward(dy, ctx)
    numba.set_num_threads(2)
    for _ in range(3):
        y, nctx = NB.conv2d_forward(x, w, b, s, pad)
        dx, dw, db = NB.conv2d_backward(dy, nctx)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-12)


@needs_two_threads
@pytest.mark.parametrize("case", THREAD_CASES, ids=THREAD_IDS)
def test_one_and_two_threads_agree_bitwise(case, restore_threads):
    """Bitwise, not just close: no reduction is split across threads (dW rows belong to
    one thread, short-patch partials are per FIXED chunk, pools scatter per image), so
    the floating-point summation order does not depend on the thread count."""
    rng = np.random.default_rng(2)
    args = conv_case(rng, np.float32, **case)
    numba.set_num_threads(1)
    one = conv_and_pool_results(*args)
    numba.set_num_threads(2)
    for _ in range(2):
        two = conv_and_pool_results(*args)
        for name in one:
            np.testing.assert_array_equal(one[name], two[name], err_msg=name)


@needs_two_threads
def test_parallel_elementwise_path_matches_serial(restore_threads):
    x = np.random.default_rng(3).standard_normal(numba_cpu._PARALLEL_MIN_SIZE + 1000)
    x = x.astype(np.float32)
    numba.set_num_threads(1)
    serial = [NB.sigmoid_forward(x)[0], NB.relu_backward(x, NB.relu_forward(x)[1])]
    numba.set_num_threads(2)
    parallel = [NB.sigmoid_forward(x)[0], NB.relu_backward(x, NB.relu_forward(x)[1])]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ ownership of memory


def test_inputs_unchanged_and_outputs_not_reused_between_calls():
    """Scratch buffers are reused across calls: what a caller gets must never be one."""
    rng = np.random.default_rng(4)
    for case in THREAD_CASES:
        x, w, b, dy, s, pad = conv_case(rng, np.float32, **case)
        pristine = [a.copy() for a in (x, w, b, dy)]
        y1, ctx1 = NB.conv2d_forward(x, w, b, s, pad)
        grads1 = NB.conv2d_backward(dy, ctx1)
        kept = [a.copy() for a in (y1, *grads1)]
        # Same shapes again with other values: reuses every scratch buffer.
        y2, ctx2 = NB.conv2d_forward(x * 2, w, b, s, pad)
        NB.conv2d_backward(dy * 3, ctx2)
        for a, before in zip((y1, *grads1), kept):
            np.testing.assert_array_equal(a, before)
        for a, before in zip((x, w, b, dy), pristine):
            np.testing.assert_array_equal(a, before)


# --------------------------------------------------------- few input channels (a first layer)


def test_few_channel_conv_keeps_only_x_and_w_for_the_backward():
    """No column matrix and no copy of x outlives the forward: ctx holds the caller's x
    itself and the kernel, and nothing else of any size."""
    rng = np.random.default_rng(6)
    x, w, b, dy, s, pad = conv_case(rng, np.float32, n=4, hw=(28, 28), c=1, f=6, k=(5, 5))
    _, ctx = NB.conv2d_forward(x, w, b, s, pad)
    arrays = [a for a in ctx if isinstance(a, np.ndarray)]
    assert any(a is x for a in arrays)
    assert sum(a.nbytes for a in arrays) <= x.nbytes + w.nbytes


def test_two_few_channel_layers_of_one_shape_do_not_share_their_inputs():
    """The backward rebuilds its channel-major tiles from the x in ctx: a second layer's
    forward of the same shape in between must not leak into the first's dW."""
    rng = np.random.default_rng(7)
    x1, w, b, dy, s, pad = conv_case(rng, np.float64, n=3, hw=(9, 8), c=3, f=5, k=(3, 3))
    x2 = rng.standard_normal(x1.shape)
    _, ctx1 = NB.conv2d_forward(x1, w, b, s, pad)
    NB.conv2d_forward(x2, w, b, s, pad)
    _, dw, db = NB.conv2d_backward(dy, ctx1, need_dx=False)
    _, rctx = REF.conv2d_forward(x1, w, b, s, pad)
    _, dw_ref, db_ref = REF.conv2d_backward(dy, rctx)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_few_channel_serial_and_parallel_paths_agree_bitwise(dtype, monkeypatch):
    """Small few-channel convs skip the parallel launch; both paths run the same per-unit
    code in the same order, so they must agree bit for bit (and with the reference)."""
    rng = np.random.default_rng(9)
    x, w, b, dy, s, pad = conv_case(rng, dtype, n=5, hw=(11, 10), c=3, f=7, k=(5, 3),
                                    s=(2, 1))
    results = []
    for threshold in (0, 1 << 60):  # always parallel, always serial
        monkeypatch.setattr(numba_cpu, "_FEW_PARALLEL_MIN_MACS", threshold)
        y, ctx = NB.conv2d_forward(x, w, b, s, pad)
        results.append((y, *NB.conv2d_backward(dy, ctx, need_dx=False)[1:]))
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)
    y_ref, rctx = REF.conv2d_forward(x, w, b, s, pad)
    _, dw_ref, db_ref = REF.conv2d_backward(dy, rctx)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, r in zip(results[0], (y_ref, dw_ref, db_ref)):
        np.testing.assert_allclose(a, r, **tol)


@pytest.mark.parametrize("c", [1, 4, 5], ids=["1ch", "4ch", "5ch"])
def test_few_channel_path_is_chosen_by_input_channels(c, monkeypatch):
    """Up to _FEW_CHANNELS input channels the few-channel kernels run, above it the
    gather kernel (both must give the reference's result; this checks the routing)."""
    calls = []
    for name in ("conv_few_forward", "conv_few_forward_part", "conv_gather_dot"):
        real = getattr(kernels, name)
        monkeypatch.setattr(numba_cpu._k, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    rng = np.random.default_rng(8)
    x, w, b, dy, s, pad = conv_case(rng, np.float32, n=2, c=c, f=4)
    NB.conv2d_forward(x, w, b, s, pad)
    few = c <= numba_cpu._FEW_CHANNELS
    assert len(calls) == 1 and calls[0].startswith("conv_few_forward") == few, calls


def test_release_scratch_frees_the_workspaces_and_they_come_back():
    rng = np.random.default_rng(10)
    x, w, b, dy, s, pad = conv_case(rng, np.float32, **THREAD_CASES[0])
    _, ctx = NB.conv2d_forward(x, w, b, s, pad)
    first = NB.conv2d_backward(dy, ctx)
    assert numba_cpu._scratch_local.cache  # the deep dW path keeps its copies of x and dy
    numba_cpu.release_scratch()
    assert not numba_cpu._scratch_local.cache
    for a, again in zip(first, NB.conv2d_backward(dy, ctx)):
        np.testing.assert_array_equal(a, again)


# ---------------------------------------------------- no float64 in the float32 machine code

# Kernels whose bodies hold floating constants or math calls, i.e. where a Python float
# literal or an int-times-float32 would silently promote to float64.
F32 = np.float32
UPCAST_CASES = {
    "unary_forward_range": (np.zeros(8, F32), np.zeros(8, F32), 1, 0, 8),
    "unary_backward_range": (np.zeros(8, F32), np.zeros(8, F32), np.zeros(8, F32), 1, 0, 8),
    "sigmoid_cross_entropy": (np.zeros(8, F32), np.zeros(8, F32), np.zeros(8, F32)),
    "softmax_cross_entropy": (np.zeros((2, 3), F32), np.zeros((2, 3), F32),
                              np.zeros((2, 3), F32)),
    "avgpool_forward": (np.zeros((1, 4, 4, 2), F32), np.zeros((1, 2, 2, 2), F32),
                        2, 2, 2, 2, 0, 0),
    "conv_gather_dot": (np.zeros((1, 4, 4, 2), F32), np.zeros((2, 32), F32),
                        np.zeros(2, F32), np.zeros((1, 2, 2, 2), F32),
                        3, 3, 2, 2, 0, 1, 0, 1, 0, 1, 0, 1, 4, 1),
    # A 3x3 conv on 1 channel, 6 filters (K = 9 taps padded to 12), 4x4 'valid' input.
    "conv_few_forward_part": (np.zeros((1, 4, 4, 1), F32), np.zeros((12, 6), F32),
                              np.zeros(6, F32), np.zeros((1, 2, 2, 6), F32),
                              9, 3, 1, 1, 0, 0, 1, 1, 2, 0, 1),
    "conv_few_dw_part": (np.zeros((1, 4, 4, 1), F32), np.zeros((1, 2, 2, 6), F32),
                         np.zeros((1, 12, 8), F32), np.zeros((1, 8), F32),
                         9, 3, 1, 1, 0, 0, 1, 1, 2, 0, 1),
}


def kernel_ir_functions(ir):
    """The LLVM IR of the kernel itself, without numba's CPython boxing wrappers."""
    bodies, keep = [], False
    for line in ir.splitlines():
        if line.startswith("define "):
            keep = not re.search(r"@(_ZN7cpython|cfunc\.)", line)
        if keep:
            bodies.append(line)
        if line.startswith("}"):
            keep = False
    return "\n".join(bodies)


@pytest.mark.parametrize("name", sorted(UPCAST_CASES))
def test_float32_kernels_do_no_float64_arithmetic(name):
    disp = getattr(kernels, name)
    # Cached machine code cannot be inspected: compile a private, uncached, serial copy
    # of the same Python source with the same flags.
    options = {k: v for k, v in disp.targetoptions.items() if k not in ("parallel", "nopython")}
    fresh = numba.njit(cache=False, **options)(disp.py_func)
    fresh(*UPCAST_CASES[name])
    ir = kernel_ir_functions(next(iter(fresh.inspect_llvm().values())))
    upcasts = [line.strip() for line in ir.splitlines()
               if re.search(r"\bfpext\b|\b(fadd|fsub|fmul|fdiv|call)\b.*\bdouble\b", line)]
    assert not upcasts, f"{name} computes in float64 on float32 data: {upcasts[:3]}"


def test_upcast_check_catches_a_float64_literal():
    """The check above must be able to fail: a Python float literal does promote."""

    def scale(x, y):
        for i in range(x.size):
            y[i] = np.exp(x[i] * 0.1)

    fresh = numba.njit(cache=False, fastmath=set(numba_cpu.FASTMATH))(scale)
    fresh(np.zeros(4, F32), np.zeros(4, F32))
    ir = kernel_ir_functions(next(iter(fresh.inspect_llvm().values())))
    assert re.search(r"\bfpext\b", ir)


def test_losses_return_input_dtype_scalars():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 3)).astype(np.float32)
    t = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    for loss, _ in (NB.softmax_cross_entropy(z, t), NB.sigmoid_cross_entropy(z, t),
                    NB.sparse_softmax_cross_entropy(z, np.array([0, 1, 2, 0]))):
        assert loss.shape == () and loss.dtype == np.float32
