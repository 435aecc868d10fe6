"""The ``cuda`` backend against the reference, op by op, forward AND backward.

Under the CUDA simulator (tests/conftest.py turns it on) every simulated thread costs about
half a millisecond, so the generic suites leave "cuda" out and this file covers it on tiny
shapes instead: batch 2, 5x6 images, 2-3 channels, 3x3 and non-square 2x3 / 3x2 kernels,
strides 1 and 2, 'valid' and 'same' (with the odd padding row/column), both dtypes where
cheap. Every call also checks the contract's hygiene (inputs unchanged, outputs fresh and of
the input dtype), and the array-kind rule: NumPy in -> NumPy out, any device array in ->
device arrays out.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import backends, gradcheck
from fastcnn.backends import _specs
from fastcnn.shapes import window_output_shape

pytestmark = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")

if "cuda" in backends.available():
    from fastcnn.backends import cuda as cb
    from numba import cuda as numba_cuda

REF = backends.get("reference")
TOL = {np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
       np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5)}
F32, F64 = np.float32, np.float64


@pytest.fixture(scope="module")
def cu():
    return backends.get("cuda")


def call(op, *args, **kwargs):
    """``op(*args)``, checking that no NumPy argument changed and no result aliases one."""
    __tracebackhide__ = True
    arrays = [a for a in args if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    out = op(*args, **kwargs)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b, err_msg=f"{op.__name__} modified an input")
    results = out if isinstance(out, tuple) else (out,)
    for r in results:
        if isinstance(r, np.ndarray):
            assert not any(np.shares_memory(r, a) for a in arrays), \
                f"{op.__name__} returned an array aliasing an input"
    return out


def same(actual, expected, dtype, what):
    __tracebackhide__ = True
    assert isinstance(actual, np.ndarray), f"{what}: {type(actual).__name__}, not NumPy"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == np.shape(expected), f"{what}: shape {actual.shape}"
    np.testing.assert_allclose(actual, expected, **TOL[np.dtype(dtype)], err_msg=what)


def data(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------ conv
CONV_CASES = [
    # (x shape, kernel, stride, padding, bias, dtype)
    pytest.param((2, 5, 6, 3), (3, 3), (1, 1), "valid", True, F64, id="3x3-s1-valid-f64"),
    pytest.param((2, 5, 6, 3), (3, 3), (1, 1), "valid", True, F32, id="3x3-s1-valid-f32"),
    # 'same' with stride 2 on 5x6: one padding row and one column, both at the end.
    pytest.param((2, 5, 6, 2), (2, 3), (2, 2), "same", True, F64, id="2x3-s2-same-f64"),
    pytest.param((2, 5, 6, 2), (2, 3), (2, 2), "same", False, F32, id="2x3-s2-same-nobias-f32"),
    pytest.param((2, 5, 6, 3), (3, 2), (1, 2), "same", False, F64, id="3x2-s12-same-nobias"),
    pytest.param((1, 5, 6, 2), (5, 6), (1, 1), "valid", True, F64, id="kernel-is-input"),
    pytest.param((2, 5, 6, 2), (1, 1), (2, 2), "valid", True, F64, id="1x1-s2"),
]


def matches_reference(cu, op, args, dy, dtype, bias):
    """``op``'s forward and backward on cuda equal the reference's: y, dx, dw and db (None
    without a bias)."""
    y, ctx = call(getattr(cu, op + "_forward"), *args)
    y_ref, ctx_ref = getattr(REF, op + "_forward")(*args)
    same(y, y_ref, dtype, "y")
    dx, dw, db = call(getattr(cu, op + "_backward"), dy, ctx)
    dx_ref, dw_ref, db_ref = getattr(REF, op + "_backward")(dy, ctx_ref)
    same(dx, dx_ref, dtype, "dx")
    same(dw, dw_ref, dtype, "dw")
    if bias:
        same(db, db_ref, dtype, "db")
    else:
        assert db is None


@pytest.mark.parametrize("shape, k, s, padding, bias, dtype", CONV_CASES)
def test_conv_forward_and_backward_match_the_reference(cu, rng, shape, k, s, padding, bias,
                                                       dtype):
    n, h, w, c = shape
    f = 3
    (ho, wo), pad = window_output_shape((h, w), k, s, padding)
    x, wt = data(rng, shape, dtype), data(rng, (*k, c, f), dtype)
    b = data(rng, f, dtype) if bias else None
    dy = data(rng, (n, ho, wo, f), dtype)
    matches_reference(cu, "conv2d", (x, wt, b, s, pad), dy, dtype, bias)


def test_conv_need_dx_false_skips_dx_and_keeps_the_weight_gradients(cu, rng):
    (ho, wo), pad = window_output_shape((5, 6), (2, 3), (2, 1), "same")
    x, w, b = data(rng, (2, 5, 6, 2), F64), data(rng, (2, 3, 2, 3), F64), data(rng, 3, F64)
    dy = data(rng, (2, ho, wo, 3), F64)
    _, ctx = cu.conv2d_forward(x, w, b, (2, 1), pad)
    _, ctx_ref = REF.conv2d_forward(x, w, b, (2, 1), pad)
    dx, dw, db = call(cu.conv2d_backward, dy, ctx, need_dx=False)
    _, dw_ref, db_ref = REF.conv2d_backward(dy, ctx_ref)
    assert dx is None
    same(dw, dw_ref, F64, "dw")
    same(db, db_ref, F64, "db")


def test_conv_weight_gradient_split_into_several_chunks(cu, rng, monkeypatch):
    """dW's reduction over N*Ho*Wo in fixed chunks (partials added in order): force small
    chunks so that a tiny case exercises several of them and a ragged last one."""
    monkeypatch.setattr(cb, "_DW_MIN_ROWS", 16)
    monkeypatch.setattr(cb, "_DW_TARGET_BLOCKS", 1 << 20)
    (ho, wo), pad = window_output_shape((5, 6), (3, 3), (1, 1), "same")
    assert cb._dw_splits(2 * ho * wo, 3 * 3 * 2 + 1, 3)[0] == 4  # 60 rows: 16+16+16+12
    x, w, b = data(rng, (2, 5, 6, 2), F64), data(rng, (3, 3, 2, 3), F64), data(rng, 3, F64)
    dy = data(rng, (2, ho, wo, 3), F64)
    _, ctx = cu.conv2d_forward(x, w, b, (1, 1), pad)
    _, ctx_ref = REF.conv2d_forward(x, w, b, (1, 1), pad)
    _, dw, db = cu.conv2d_backward(dy, ctx, need_dx=False)
    _, dw_ref, db_ref = REF.conv2d_backward(dy, ctx_ref)
    same(dw, dw_ref, F64, "dw")
    same(db, db_ref, F64, "db")


def test_conv_gradients_pass_gradcheck(cu, rng):
    (_, _), pad = window_output_shape((3, 4), (2, 3), (1, 2), "same")
    x, w, b = data(rng, (1, 3, 4, 2), F64), data(rng, (2, 3, 2, 2), F64), data(rng, 2, F64)
    gradcheck.check_backward(lambda x, w, b: cu.conv2d_forward(x, w, b, (1, 2), pad),
                             cu.conv2d_backward, [x, w, b], directions=2)


def test_conv_results_are_bitwise_deterministic(cu, rng):
    (ho, wo), pad = window_output_shape((5, 6), (3, 3), (2, 2), "same")
    x, w, b = data(rng, (2, 5, 6, 2), F32), data(rng, (3, 3, 2, 3), F32), data(rng, 3, F32)
    dy = data(rng, (2, ho, wo, 3), F32)
    runs = []
    for _ in range(2):
        _, ctx = cu.conv2d_forward(x, w, b, (2, 2), pad)
        runs.append(cu.conv2d_backward(dy, ctx))
    for a, b_ in zip(*runs):
        np.testing.assert_array_equal(a, b_)


# ------------------------------------------------------------------------------ pooling
POOL_CASES = [
    pytest.param((2, 2), (2, 2), "valid", id="2x2-s2-valid"),
    pytest.param((3, 2), (2, 1), "same", id="3x2-s21-same"),   # overlapping, odd padding
    pytest.param((2, 3), (1, 2), "same", id="2x3-s12-same"),
]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("kind", ["maxpool2d", "avgpool2d"])
@pytest.mark.parametrize("pool, s, padding", POOL_CASES)
def test_pool_forward_and_backward_match_the_reference(cu, rng, kind, pool, s, padding,
                                                       dtype):
    x = data(rng, (2, 5, 6, 3), dtype)
    _, pad = window_output_shape((5, 6), pool, s, padding)
    y, ctx = call(getattr(cu, kind + "_forward"), x, pool, s, pad)
    y_ref, ctx_ref = getattr(REF, kind + "_forward")(x, pool, s, pad)
    same(y, y_ref, dtype, "y")
    dy = data(rng, y.shape, dtype)
    dx = call(getattr(cu, kind + "_backward"), dy, ctx)
    same(dx, getattr(REF, kind + "_backward")(dy, ctx_ref), dtype, "dx")


@pytest.mark.parametrize("pool, s, padding", POOL_CASES)
def test_max_pool_ties_send_the_gradient_to_the_first_maximum(cu, rng, pool, s, padding):
    """All-equal and few-valued inputs: each window has ties; the FIRST maximum in
    row-major window order takes the whole gradient, exactly as in the reference."""
    _, pad = window_output_shape((5, 6), pool, s, padding)
    for x in (np.zeros((2, 5, 6, 2)), rng.integers(-1, 2, (2, 5, 6, 2)).astype(F64)):
        y, ctx = cu.maxpool2d_forward(x, pool, s, pad)
        y_ref, ctx_ref = REF.maxpool2d_forward(x, pool, s, pad)
        np.testing.assert_array_equal(y, y_ref)
        dy = rng.permutation(np.arange(1.0, y.size + 1)).reshape(y.shape)
        np.testing.assert_array_equal(cu.maxpool2d_backward(dy, ctx),
                                      REF.maxpool2d_backward(dy, ctx_ref))


def test_max_pool_nan_and_negative_infinity_follow_the_reference(cu):
    """A NaN wins its window (np.argmax's rule), and -inf inputs never lose to padding."""
    x = np.full((1, 3, 3, 2), -np.inf)
    x[0, 1, 2, 0] = np.nan
    x[0, 0, 0, 1] = 5.0
    _, pad = window_output_shape((3, 3), (2, 2), (1, 1), "same")
    y, ctx = cu.maxpool2d_forward(x, (2, 2), (1, 1), pad)
    y_ref, ctx_ref = REF.maxpool2d_forward(x, (2, 2), (1, 1), pad)
    np.testing.assert_array_equal(y, y_ref)   # NaN == NaN for assert_array_equal
    dy = np.arange(1.0, y.size + 1).reshape(y.shape)
    np.testing.assert_array_equal(cu.maxpool2d_backward(dy, ctx),
                                  REF.maxpool2d_backward(dy, ctx_ref))


# ------------------------------------------------------------------------------ dense
@pytest.mark.parametrize("dtype, bias", [(F64, True), (F32, True), (F64, False)])
def test_dense_forward_and_backward_match_the_reference(cu, rng, dtype, bias):
    # 19 features and 17 units: ragged against the 16-wide tiles on every axis.
    x, w = data(rng, (3, 19), dtype), data(rng, (19, 17), dtype)
    b = data(rng, 17, dtype) if bias else None
    dy = data(rng, (3, 17), dtype)
    matches_reference(cu, "dense", (x, w, b), dy, dtype, bias)


# ------------------------------------------------------------------------------ activations
# Every op pair of the contract that takes x alone (its other parameters defaulted): the
# activations, from their specs (fastcnn/backends/_specs.py).
ACTIVATIONS = [s.name for s in _specs.SPECS.values()
               if s.is_pair and all(p.default is not p.empty
                                    for p in list(s.signature().parameters.values())[1:])]


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations_match_the_reference(cu, rng, act, dtype):
    # A 3-D input: softmax runs over the last axis whatever the rank.
    x = data(rng, (2, 3, 4), dtype) * 3
    x[0, 0, :2] = 0.0            # relu's kink: derivative 0 at 0
    x[1, 2, 0] = 40.0             # sigmoid / softmax saturate without overflow
    x[1, 2, 1] = -40.0
    y, ctx = call(getattr(cu, act + "_forward"), x)
    y_ref, ctx_ref = getattr(REF, act + "_forward")(x)
    same(y, y_ref, dtype, "y")
    dy = data(rng, x.shape, dtype)
    dx = call(getattr(cu, act + "_backward"), dy, ctx)
    same(dx, getattr(REF, act + "_backward")(dy, ctx_ref), dtype, "dx")


@pytest.mark.parametrize("params", [(0.3, None, 0.0), (0.2, 4.0, 1.0), (0.0, None, -1.5),
                                    (0.0, 6.0, 0.0)], ids=str)
def test_relu_general_matches_the_reference(cu, rng, params):
    x = data(rng, (2, 3, 4), F64) * 4
    x[0, 0, :3] = [0.0, params[2], params[1] or 7.0]  # the kinks themselves
    x[0, 1, :2] = [np.inf, -np.inf]
    y, ctx = call(cu.relu_general_forward, x, *params)
    y_ref, ctx_ref = REF.relu_general_forward(x, *params)
    same(y, y_ref, F64, "y")
    dy = data(rng, x.shape, F64)
    same(call(cu.relu_general_backward, dy, ctx), REF.relu_general_backward(dy, ctx_ref),
         F64, "dx")


def test_relu_and_sigmoid_propagate_nan(cu):
    x = np.array([[np.nan, -1.0, 2.0]])
    for act in ("relu", "sigmoid"):
        y, _ = getattr(cu, act + "_forward")(x)
        assert np.isnan(y[0, 0]) and np.isfinite(y[0, 1:]).all(), act


# ------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("dtype", [F64, F32])
def test_fused_losses_match_the_reference(cu, rng, dtype):
    z = data(rng, (3, 4), dtype) * 3
    z[0, 0] = 500.0   # no overflow for any logit
    z[2, 3] = -500.0
    t = rng.random((3, 4)).astype(dtype)
    labels = np.array([0, 3, 1])
    for name, target in (("softmax_cross_entropy", t),
                         ("sparse_softmax_cross_entropy", labels),
                         ("sigmoid_cross_entropy", t)):
        loss, d = call(getattr(cu, name), z, target)
        loss_ref, d_ref = getattr(REF, name)(z, target)
        assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
        same(loss, loss_ref, dtype, f"{name} loss")
        same(d, d_ref, dtype, f"{name} gradient")


def test_loss_arguments_are_checked(cu):
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*got label 3"):
        cu.sparse_softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="targets must have the shape of logits"):
        cu.softmax_cross_entropy(z, np.zeros((2, 4)))
    with pytest.raises(TypeError, match="targets must be a numpy array of dtype float64"):
        cu.sigmoid_cross_entropy(z, np.zeros((2, 3), np.float32))
    # Device labels are checked by the kernel (a flag), with the same message.
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*got label -1"):
        cu.sparse_softmax_cross_entropy(numba_cuda.to_device(z), numba_cuda.to_device(
            np.array([-1, 0])))


# ------------------------------------------------------------------------------ array kinds
def test_device_arrays_in_give_device_arrays_out(cu, rng):
    """Any device argument -> device results (weights, activations and gradients stay on
    the GPU); the values equal the NumPy path's."""
    (ho, wo), pad = window_output_shape((5, 6), (3, 3), (1, 1), "same")
    x, w, b = data(rng, (2, 5, 6, 2), F32), data(rng, (3, 3, 2, 3), F32), data(rng, 3, F32)
    dy = data(rng, (2, ho, wo, 3), F32)
    y_host, ctx_host = cu.conv2d_forward(x, w, b, (1, 1), pad)
    # Mixed: the NumPy batch with device weights (what a model on the device does).
    y_dev, ctx_dev = cu.conv2d_forward(x, numba_cuda.to_device(w), numba_cuda.to_device(b),
                                       (1, 1), pad)
    assert cb.is_device_array(y_dev)
    np.testing.assert_array_equal(y_dev.copy_to_host(), y_host)
    grads_dev = cu.conv2d_backward(numba_cuda.to_device(dy), ctx_dev)
    grads_host = cu.conv2d_backward(dy, ctx_host)
    for g_dev, g_host in zip(grads_dev, grads_host):
        assert cb.is_device_array(g_dev)
        np.testing.assert_array_equal(g_dev.copy_to_host(), g_host)

    xd = numba_cuda.to_device(x)
    for kind in ("maxpool2d", "avgpool2d"):
        yd, c = getattr(cu, kind + "_forward")(xd, (2, 2), (2, 2), ((0, 0), (0, 0)))
        assert cb.is_device_array(yd)
        assert cb.is_device_array(getattr(cu, kind + "_backward")(yd, c))
    for act in ("relu", "softmax"):
        yd, c = getattr(cu, act + "_forward")(xd)
        assert cb.is_device_array(yd)
        assert cb.is_device_array(getattr(cu, act + "_backward")(yd, c))
    zd = numba_cuda.to_device(x.reshape(2, -1)[:, :5].copy())
    loss, dz = cu.sparse_softmax_cross_entropy(zd, np.array([1, 4]))
    # The loss VALUE always comes back to the host (every caller reads it at once).
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == F32
    assert cb.is_device_array(dz)
    loss_host, _ = cu.sparse_softmax_cross_entropy(zd.copy_to_host(), np.array([1, 4]))
    assert loss == loss_host
    yd, c = cu.dense_forward(zd, numba_cuda.to_device(data(rng, (5, 2), F32)), None)
    assert cb.is_device_array(yd)
    assert all(cb.is_device_array(g) for g in cu.dense_backward(yd, c)[:2])


def test_device_inputs_are_not_modified(cu, rng):
    x = data(rng, (2, 4, 4, 2), F64)
    xd = numba_cuda.to_device(x)
    y, ctx = cu.relu_forward(xd)
    cu.relu_backward(xd, ctx)
    cu.maxpool2d_forward(xd, (2, 2), (2, 2), ((0, 0), (0, 0)))
    np.testing.assert_array_equal(xd.copy_to_host(), x)


def test_bad_arguments_name_the_argument(cu, rng):
    x = data(rng, (2, 5, 6, 3), F32)
    with pytest.raises(ValueError, match="w has 2 input channels"):
        cu.conv2d_forward(x, np.zeros((3, 3, 2, 4), F32), None, (1, 1), ((0, 0), (0, 0)))
    with pytest.raises(TypeError, match="w must be a numpy array of dtype float32"):
        cu.conv2d_forward(x, numba_cuda.to_device(np.zeros((3, 3, 3, 4))), None, (1, 1),
                          ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="kernel .* does not fit the padded input"):
        cu.conv2d_forward(x, np.zeros((6, 3, 3, 4), F32), None, (1, 1), ((0, 0), (0, 0)))
    _, ctx = cu.relu_forward(x)
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape"):
        cu.relu_backward(x[:1], ctx)
    with pytest.raises(TypeError, match="x must be a float32 or float64 numpy array"):
        cu.relu_forward([1.0, 2.0])


def test_non_contiguous_device_array_is_refused(cu):
    xd = numba_cuda.to_device(np.zeros((4, 6), F32))
    with pytest.raises(ValueError, match="non-contiguous device array"):
        cu.relu_forward(xd[:, ::2])


def test_device_array_handed_to_a_cpu_backend_is_a_clear_error():
    xd = numba_cuda.to_device(np.zeros((2, 5, 6, 3), F32))
    w = np.zeros((3, 3, 3, 2), F32)
    for name in ("reference", "im2col"):
        with pytest.raises(TypeError, match=r"^x must be a float32 or float64 numpy array"):
            backends.get(name).conv2d_forward(xd, w, None, (1, 1), ((0, 0), (0, 0)))


# ------------------------------------------------------------------------------ memory
class FakeOutOfMemory(Exception):
    """What numba-cuda raises for a failed cuMemAlloc (a CudaAPIError with code 2)."""
    code = 2


def test_a_full_gpu_raises_memory_error_naming_batch_and_bytes(cu, monkeypatch, rng):
    def full(*args, **kwargs):
        raise FakeOutOfMemory("[CUDA_ERROR_OUT_OF_MEMORY] out of memory")

    x, w = data(rng, (8, 5, 6, 3), F32), data(rng, (3, 3, 3, 4), F32)
    monkeypatch.setattr(cb, "_allocate", full)
    with pytest.raises(MemoryError, match=r"batch of 8 samples\) needs an array of shape "
                                          r"\(8, 3, 4, 4\) float32, 1,536 bytes; use a "
                                          r"smaller batch_size"):
        cu.conv2d_forward(x, w, None, (1, 1), ((0, 0), (0, 0)))
    monkeypatch.setattr(cb, "_copy_to_device", full)
    with pytest.raises(MemoryError, match=r"memory: x \(batch of 8 samples\).* 2,880 bytes"):
        cu.conv2d_forward(x, w, None, (1, 1), ((0, 0), (0, 0)))


def test_other_allocation_errors_are_not_disguised(cu, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(cb, "_allocate", broken)
    with pytest.raises(RuntimeError, match="driver exploded"):
        cu.relu_forward(np.zeros((2, 2), F32))


# ------------------------------------------------------------------------------ optimizers
def _host_optimizer_run(make, dtype, steps, rng, update):
    """Weights after ``steps`` steps of the host optimizer and of the cuda kernels."""
    from fastcnn import optimizers  # noqa: F401  (make builds one)

    w0 = [data(rng, (3, 4), dtype), data(rng, (4,), dtype)]
    grads = [[data(rng, w.shape, dtype) for w in w0] for _ in range(steps)]
    host_w = [w.copy() for w in w0]
    opt = make()
    for g in grads:
        opt.apply(g, host_w)
    dev_w = [w.copy() for w in w0]
    shadow = make()
    shadow.build(dev_w)   # slots of the right shapes, all zero
    slots = shadow._slots
    for step, g in enumerate(grads, start=1):
        for i, (w, gi) in enumerate(zip(dev_w, g)):
            update(w, gi, {k: v[i] for k, v in slots.items()}, step)
    return host_w, dev_w


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("config", [
    dict(kind="sgd"), dict(kind="sgd", momentum=0.9), dict(kind="sgd", momentum=0.8,
                                                            nesterov=True),
    dict(kind="adam"), dict(kind="adam", amsgrad=True),
    dict(kind="rmsprop"), dict(kind="rmsprop", centered=True, momentum=0.5),
], ids=lambda c: "-".join(f"{k}={v}" if k != "kind" else v for k, v in c.items()))
def test_optimizer_kernels_match_the_host_optimizers(cu, rng, config, dtype):
    from fastcnn import optimizers

    config = dict(config)
    kind = config.pop("kind")
    lr = 0.05
    if kind == "sgd":
        make = lambda: optimizers.SGD(lr, **config)  # noqa: E731
        mu = config.get("momentum", 0.0)

        def update(w, g, slots, step):
            cb.sgd_update(w, g, slots.get("momentum"), lr, mu, config.get("nesterov", False))
    elif kind == "adam":
        make = lambda: optimizers.Adam(lr, **config)  # noqa: E731

        def update(w, g, slots, step):
            cb.adam_update(w, g, slots["m"], slots["v"], lr, 0.9, 0.999, 1e-7, step,
                           v_hat=slots.get("v_hat"))
    else:
        make = lambda: optimizers.RMSprop(lr, **config)  # noqa: E731
        mu = config.get("momentum", 0.0)

        def update(w, g, slots, step):
            cb.rmsprop_update(w, g, slots["velocity"], slots.get("average_gradient"),
                              slots.get("momentum"), lr, 0.9, mu, 1e-7)
    host_w, dev_w = _host_optimizer_run(make, dtype, 3, rng, update)
    for a, b in zip(dev_w, host_w):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == F32 else 1e-14, atol=1e-7)


def test_optimizer_kernels_update_device_arrays_in_place(cu, rng):
    w, g = data(rng, (5,), F32), data(rng, (5,), F32)
    wd, md = numba_cuda.to_device(w), numba_cuda.to_device(np.zeros(5, F32))
    cb.sgd_update(wd, numba_cuda.to_device(g), md, 0.1, 0.9, False)
    expected_m = -np.float32(0.1) * g
    np.testing.assert_allclose(md.copy_to_host(), expected_m, rtol=1e-6)
    np.testing.assert_allclose(wd.copy_to_host(), w + expected_m, rtol=1e-6)


def test_optimizer_kernels_check_their_arguments(cu):
    w = np.zeros(3, F32)
    with pytest.raises(ValueError, match="velocity must be given exactly when momentum > 0"):
        cb.sgd_update(w, w.copy(), None, 0.1, 0.9, False)
    with pytest.raises(ValueError, match=r"g must be an array of dtype float32 and shape "
                                         r"\(3,\)"):
        cb.sgd_update(w, np.zeros(4, F32), None, 0.1, 0.0, False)
    with pytest.raises(ValueError, match="iteration must be >= 1"):
        cb.adam_update(w, w.copy(), w.copy(), w.copy(), 0.1, 0.9, 0.999, 1e-7, 0)
