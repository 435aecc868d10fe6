"""depthwise_conv2d_forward/backward: every backend that implements them equals the reference.

The reference (readable loops) is itself gradient-checked here and compared with TensorFlow
(tests/fixtures/keras/depthwise.npz, written by make_depthwise.py next to it). Every other
backend implementing the op (found through ``implements``, so a new backend's kernels are
checked with no edit here) must match the reference in float32 and float64 on: strides 1
and 2 (and mixed), 'same' (odd and even inputs, so symmetric and asymmetric padding from
fastcnn.shapes) and 'valid', kernels 1x1 / 3x3 / 5x5 (and non-square), depth multiplier
1 and 2 (3 in a few), channels 1 / 3 / 17 / 32, batch 1 and 3, with and without a bias,
need_dx False; the contract's hygiene (inputs untouched, dtype kept, C-contiguous outputs
aliasing no input); and bad input names the argument.
"""
from __future__ import annotations

import itertools
import os
import zlib

from fastcnn import backends  # noqa: I001  (fastcnn before NumPy)
import numpy as np
import pytest

from fastcnn.gradcheck import check_backward
from fastcnn.shapes import window_output_shape

FWD, BWD = "depthwise_conv2d_forward", "depthwise_conv2d_backward"
REFERENCE = backends.get("reference")
# Every backend that loads here and has the op (the reference included where it is the
# subject; tests/conftest.py skips "cuda" visibly under the CUDA simulator).
IMPLEMENTING = [n for n in backends.available() if backends.get(n).implements(FWD)]
OTHERS = [n for n in IMPLEMENTING if n != "reference"]
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "keras", "depthwise.npz")


def pad_for(hw, k, s, padding):
    (ho, wo), pad = window_output_shape(hw, k, s, padding)
    return pad


def make_inputs(rng, n, hw, c, m, k, bias, dtype):
    x = rng.standard_normal((n, *hw, c))
    w = rng.standard_normal((*k, c, m)) / np.sqrt(k[0] * k[1])
    b = rng.standard_normal(c * m) if bias else None
    cast = (lambda a: None if a is None else a.astype(dtype))
    return cast(x), cast(w), cast(b)


def assert_close(actual, expected, dtype, what, case):
    __tracebackhide__ = True
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__} ({case})"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype} ({case})"
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape}, expected {expected.shape} ({case})")
    assert actual.flags.c_contiguous, f"{what} is not C-contiguous ({case})"
    # Sums of up to a few hundred products: scale the absolute tolerance by the values.
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tol = (dict(rtol=1e-4, atol=2e-5 * scale) if dtype == np.float32
           else dict(rtol=1e-10, atol=1e-12 * scale))
    np.testing.assert_allclose(actual, expected, **tol, err_msg=f"{what} differs ({case})")


# --------------------------------------------------------------------- the case matrix

# The product of kernel x stride x padding x multiplier; batch, channels and spatial size
# cycle through their values along it, so every value of each appears with several others.
_SPATIAL = [(7, 6), (8, 8), (5, 9), (6, 7)]
_CHANNELS = [1, 3, 17, 32]
_BATCH = [1, 3]
CASES = []
for idx, (k, s, padding, m) in enumerate(itertools.product(
        [(1, 1), (3, 3), (5, 5)], [(1, 1), (2, 2)], ["same", "valid"], [1, 2])):
    CASES.append(dict(n=_BATCH[idx % 2], hw=_SPATIAL[idx % 4], c=_CHANNELS[(idx // 2) % 4],
                      m=m, k=k, s=s, padding=padding, bias=idx % 3 != 0))
CASES += [
    # asymmetric 'same' padding: even kernels, even inputs at stride 2, mixed strides
    dict(n=2, hw=(6, 6), c=3, m=1, k=(2, 2), s=(1, 1), padding="same", bias=True),
    dict(n=1, hw=(8, 6), c=5, m=2, k=(4, 3), s=(2, 1), padding="same", bias=False),
    dict(n=2, hw=(5, 8), c=4, m=3, k=(3, 2), s=(1, 2), padding="same", bias=True),
    dict(n=1, hw=(9, 7), c=2, m=1, k=(2, 5), s=(3, 2), padding="valid", bias=True),
    # kernel as large as the input; a 1x1 input
    dict(n=2, hw=(3, 3), c=3, m=2, k=(3, 3), s=(1, 1), padding="valid", bias=True),
    dict(n=3, hw=(1, 1), c=17, m=1, k=(3, 3), s=(2, 2), padding="same", bias=True),
]


def case_id(case):
    return (f"n{case['n']}-{case['hw'][0]}x{case['hw'][1]}x{case['c']}-m{case['m']}-"
            f"k{case['k'][0]}x{case['k'][1]}-s{case['s'][0]}{case['s'][1]}-{case['padding']}"
            f"{'' if case['bias'] else '-nobias'}")


def reference_result(x, w, b, stride, pad, dy):
    """The oracle in float64 on the same values."""
    up = (lambda a: None if a is None else a.astype(np.float64))
    y, ctx = REFERENCE.depthwise_conv2d_forward(up(x), up(w), up(b), stride, pad)
    return (y, *REFERENCE.depthwise_conv2d_backward(up(dy), ctx))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("name", OTHERS)
def test_matches_reference(name, case, dtype):
    be = backends.get(name)
    rng = np.random.default_rng(zlib.crc32(case_id(case).encode()))
    x, w, b = make_inputs(rng, case["n"], case["hw"], case["c"], case["m"], case["k"],
                          case["bias"], dtype)
    stride, pad = case["s"], pad_for(case["hw"], case["k"], case["s"], case["padding"])
    inputs = dict(x=x, w=w, b=b)
    pristine = {k: (None if v is None else v.copy()) for k, v in inputs.items()}

    y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy_pristine = dy.copy()
    dx, dw, db = be.depthwise_conv2d_backward(dy, ctx)
    y_ref, dx_ref, dw_ref, db_ref = reference_result(x, w, b, stride, pad, dy)

    label = f"{name} {case_id(case)} {np.dtype(dtype)}"
    assert_close(y, y_ref, dtype, "y", label)
    assert y.shape[-1] == case["c"] * case["m"]
    assert_close(dx, dx_ref, dtype, "dx", label)
    assert_close(dw, dw_ref, dtype, "dw", label)
    if b is None:
        assert db is None, f"db must be None without a bias ({label})"
    else:
        assert_close(db, db_ref, dtype, "db", label)
    for key, value in inputs.items():
        if value is not None:
            assert np.array_equal(value, pristine[key]), f"{key} modified in place ({label})"
    assert np.array_equal(dy, dy_pristine), f"dy modified in place ({label})"
    for out_name, out in dict(y=y, dx=dx, dw=dw, db=db).items():
        for in_name, a in dict(inputs, dy=dy).items():
            if out is not None and a is not None:
                assert not np.shares_memory(out, a), f"{out_name} aliases {in_name} ({label})"


@pytest.mark.parametrize("name", IMPLEMENTING)
def test_need_dx_false(name):
    """A first layer: dx is None, dw and db are what they are with need_dx=True."""
    be = backends.get(name)
    rng = np.random.default_rng(5)
    x, w, b = make_inputs(rng, 2, (6, 5), 3, 2, (3, 3), True, np.float32)
    pad = pad_for((6, 5), (3, 3), (2, 2), "same")
    y, ctx = be.depthwise_conv2d_forward(x, w, b, (2, 2), pad)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    full = be.depthwise_conv2d_backward(dy, ctx)
    y2, ctx2 = be.depthwise_conv2d_forward(x, w, b, (2, 2), pad)
    dx, dw, db = be.depthwise_conv2d_backward(dy, ctx2, need_dx=False)
    assert dx is None
    np.testing.assert_array_equal(dw, full[1])
    np.testing.assert_array_equal(db, full[2])


@pytest.mark.parametrize("name", IMPLEMENTING)
def test_channel_order_is_c_times_m_plus_m(name):
    """Output channel c*M + m is input channel c with w[:, :, c, m] (Keras's order), seen
    on a 1x1 kernel where the answer is a product: y[..., c*M + m] = x[..., c] * w[c, m]."""
    be = backends.get(name)
    x = np.arange(1, 13, dtype=np.float64).reshape(1, 2, 2, 3)
    w = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]).reshape(1, 1, 3, 2)
    y, _ = be.depthwise_conv2d_forward(x, w, None, (1, 1), ((0, 0), (0, 0)))
    expected = (x[..., :, None] * w[0, 0]).reshape(1, 2, 2, 6)
    np.testing.assert_array_equal(y, expected)


# ------------------------------------------------------------- gradient checks (float64)

GRAD_CASES = [
    dict(n=2, hw=(5, 4), c=3, m=2, k=(3, 3), s=(1, 1), padding="same", bias=True),
    dict(n=1, hw=(6, 6), c=2, m=1, k=(3, 3), s=(2, 2), padding="same", bias=False),
    dict(n=1, hw=(6, 5), c=2, m=3, k=(2, 3), s=(2, 1), padding="same", bias=True),
    dict(n=2, hw=(5, 5), c=2, m=2, k=(3, 2), s=(1, 2), padding="valid", bias=True),
    dict(n=1, hw=(7, 6), c=1, m=1, k=(5, 5), s=(1, 1), padding="same", bias=True),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
@pytest.mark.parametrize("name", IMPLEMENTING)
def test_gradcheck(name, case):
    be = backends.get(name)
    rng = np.random.default_rng(3)
    x, w, b = make_inputs(rng, case["n"], case["hw"], case["c"], case["m"], case["k"],
                          case["bias"], np.float64)
    stride, pad = case["s"], pad_for(case["hw"], case["k"], case["s"], case["padding"])
    check_backward(lambda x, w, b: be.depthwise_conv2d_forward(x, w, b, stride, pad),
                   be.depthwise_conv2d_backward, [x, w, b])


# ------------------------------------------------------------------ TensorFlow's numbers

_TF = np.load(FIXTURE)
TF_CASES = sorted({key.split("/")[0] for key in _TF.files})


@pytest.mark.parametrize("case", TF_CASES)
@pytest.mark.parametrize("name", IMPLEMENTING)
def test_matches_tensorflow(name, case):
    be = backends.get(name)
    f = {key: _TF[f"{case}/{key}"] for key in ("x", "w", "b", "stride", "padding", "dy", "y",
                                                "dx", "dw", "db")}
    x, w, b, dy = f["x"], f["w"], f["b"], f["dy"]
    stride = tuple(int(v) for v in f["stride"])
    (ho, wo), pad = window_output_shape(x.shape[1:3], w.shape[:2], stride, str(f["padding"]))
    y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
    dx, dw, db = be.depthwise_conv2d_backward(dy, ctx)
    for what, got in dict(y=y, dx=dx, dw=dw, db=db).items():
        assert_close(got, f[what], np.float32, what, f"{name} {case} vs TensorFlow")


# --------------------------------------------------------------------------- bad input

def _good():
    x = np.zeros((2, 5, 5, 3), np.float32)
    w = np.zeros((3, 3, 3, 2), np.float32)
    b = np.zeros(6, np.float32)
    return x, w, b


BAD = {
    "x rank 3": (lambda x, w, b: (x[0], w, b), ValueError, r"\bx\b.*(rank 4|4-D)"),
    "w rank 3": (lambda x, w, b: (x, w[0], b), ValueError, r"\bw\b.*(rank 4|4-D)"),
    "mismatched channels": (lambda x, w, b: (x, np.zeros((3, 3, 4, 2), np.float32), b),
                            ValueError, r"\bw\b.*4 input channels.*x has 3"),
    "b shape": (lambda x, w, b: (x, w, np.zeros(3, np.float32)), ValueError,
                r"\bb\b.*\(6,\)"),
    "w dtype": (lambda x, w, b: (x, w.astype(np.float64), b), TypeError, r"\bw\b.*float32"),
    "b dtype": (lambda x, w, b: (x, w, b.astype(np.float64)), TypeError, r"\bb\b.*float32"),
    "x int": (lambda x, w, b: (x.astype(np.int32), w, b), TypeError, r"\bx\b.*float"),
    "x list": (lambda x, w, b: (x.tolist(), w, b), TypeError, r"\bx\b.*list"),
    "kernel larger than input": (lambda x, w, b: (x, np.zeros((7, 7, 3, 2), np.float32), b),
                                 ValueError, r"kernel"),
}


@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("name", IMPLEMENTING)
def test_bad_input_names_the_argument(name, bad):
    be = backends.get(name)
    make, error, pattern = BAD[bad]
    x, w, b = make(*_good())
    with pytest.raises(error, match=pattern):
        be.depthwise_conv2d_forward(x, w, b, (1, 1), ((0, 0), (0, 0)))


def test_every_cpu_backend_here_implements_it():
    """The NumPy and Numba backends carry the op (cython/cuda join when their kernels land)."""
    for name in ("reference", "im2col", "numba"):
        if name in backends.available():
            assert backends.get(name).implements(FWD) and backends.get(name).implements(BWD)


# ------------------------------------------------------------------- numba's threads

@pytest.mark.skipif("numba" not in backends.available(), reason="numba is not installed here")
@pytest.mark.parametrize("mult", [1, 2])
def test_numba_one_and_two_threads_agree_bitwise(mult):
    """No race and no thread-dependent sum: the forward and dx are written by one thread
    per value, dW/db partials belong to FIXED chunks of rows summed in chunk order. Run
    several times at 2 threads (a shared '+=' in a prange shows up as a varying result)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with 1 thread (NUMBA_NUM_THREADS=1)")
    be = backends.get("numba")
    rng = np.random.default_rng(7)
    x, w, b = make_inputs(rng, 3, (17, 15), 8, mult, (3, 3), True, np.float32)
    pad = pad_for((17, 15), (3, 3), (2, 2), "same")
    dy = rng.standard_normal((3, 9, 8, 8 * mult)).astype(np.float32)

    def run():
        y, ctx = be.depthwise_conv2d_forward(x, w, b, (2, 2), pad)
        return (y, *be.depthwise_conv2d_backward(dy, ctx))

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(2)
        for _ in range(3):
            for name, a, c in zip(("y", "dx", "dw", "db"), one, run()):
                np.testing.assert_array_equal(a, c, err_msg=name)
    finally:
        numba.set_num_threads(before)
