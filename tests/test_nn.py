"""fastcnn.nn: TensorFlow's tf.nn words on every CPU backend's kernels. Values and gradients
against TensorFlow fixtures (tests/fixtures/keras/make_nn.py), every backward through the
GradientTape against numerical gradients (float64), bad input, and a seed-style op-level
CNN (a dict of Variables, GradientTape, an optimizer) whose loss falls."""
import os

import fastcnn  # noqa: I001  (before NumPy)
import numpy as np
import pytest

from fastcnn import GradientTape, Tensor, Variable, backends, nn, ops, optimizers
from fastcnn.gradcheck import off_kinks
from tape_gradcheck import check_op, tape_grads

CPU_BACKENDS = [b for b in backends.available() if b != "cuda"]
FIXTURES = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "keras", "nn.npz"))
F = {k: FIXTURES[k] for k in FIXTURES.files}


@pytest.fixture(params=CPU_BACKENDS)
def on_backend(request):
    with fastcnn.use_backend(request.param):
        yield request.param


@pytest.fixture
def r():
    return np.random.default_rng(11)


def close32(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a), b, rtol=tol, atol=tol)


# ---------------------------------------------------------- TensorFlow's numbers


def test_conv2d_same_stride2_matches_tensorflow(on_backend):
    y, (dx, dw) = tape_grads(
        lambda a, b: nn.conv2d(a, b, strides=[1, 2, 2, 1], padding="SAME"),
        [F["conv_x"], F["conv_w"]], F["conv_dy"])
    close32(y, F["conv_y"])
    close32(dx, F["conv_dx"])
    close32(dw, F["conv_dw"], 5e-5)
    # the other spellings of the same strides and padding
    for strides in (2, [2, 2], [2]):
        close32(nn.conv2d(F["conv_x"], F["conv_w"], strides, "same"), F["conv_y"])


def test_conv2d_explicit_padding_matches_tensorflow(on_backend):
    pads = [[0, 0], [2, 1], [0, 1], [0, 0]]
    y, (dx, dw) = tape_grads(lambda a, b: nn.conv2d(a, b, [1, 1, 2, 1], pads),
                             [F["conv_x"], F["conv_w"]], F["conve_dy"])
    close32(y, F["conve_y"])
    close32(dx, F["conve_dx"])
    close32(dw, F["conve_dw"], 5e-5)


def test_max_pool_same_matches_tensorflow(on_backend):
    y, (dx,) = tape_grads(lambda a: nn.max_pool(a, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1],
                                                padding="SAME"), [F["pool_x"]], F["pool_dy"])
    close32(y, F["pool_y"], 1e-6)
    close32(dx, F["pool_dx"], 1e-6)
    close32(nn.max_pool2d(F["pool_x"], 3, 2, "SAME"), F["pool_y"], 1e-6)


def test_avg_pool_same_matches_tensorflow(on_backend):
    y, (dx,) = tape_grads(lambda a: nn.avg_pool2d(a, ksize=2, strides=2, padding="SAME"),
                          [F["pool_x"]], F["avg_dy"])
    close32(y, F["avg_y"], 1e-6)
    close32(dx, F["avg_dx"], 1e-6)
    close32(nn.avg_pool(F["pool_x"], [1, 2, 2, 1], [1, 2, 2, 1], "SAME"), F["avg_y"], 1e-6)


def test_cross_entropies_match_tensorflow(on_backend):
    y, (dt, dz) = tape_grads(nn.softmax_cross_entropy_with_logits,
                             [F["ce_probs"], F["ce_logits"]], F["ce_dy"])
    close32(y, F["ce_y"])
    close32(dz, F["ce_dz"])
    close32(dt, F["ce_dt"])
    z = Tensor(F["ce_logits"])
    with GradientTape() as tape:
        tape.watch(z)
        y = nn.sparse_softmax_cross_entropy_with_logits(labels=F["ce_labels"], logits=z)
    close32(y, F["sce_y"])
    close32(tape.gradient(y, z, output_gradients=F["ce_dy"]), F["sce_dz"])
    y, (dt, dz) = tape_grads(
        lambda t, x: nn.sigmoid_cross_entropy_with_logits(labels=t, logits=x),
        [F["bce_t"], F["bce_logits"]], F["bce_dy"])
    close32(y, F["bce_y"])
    close32(dz, F["bce_dz"])
    close32(dt, F["bce_dt"])


def test_keras_ops_losses_match_keras():
    """keras.ops's probability losses (clipping active at outputs of exactly 0 and 1)."""
    y, (_, dp) = tape_grads(ops.categorical_crossentropy, [F["kcce_t"], F["kcce_p"]],
                            F["ce_dy"])
    close32(y, F["kcce_y"])
    close32(dp, F["kcce_dp"], 1e-4)
    p = Tensor(F["kcce_p"])
    with GradientTape() as tape:
        tape.watch(p)
        y = ops.sparse_categorical_crossentropy(F["ce_labels"], p)
    close32(y, F["ksce_y"])
    close32(tape.gradient(y, p, output_gradients=F["ce_dy"]), F["ksce_dp"], 1e-4)
    y, (_, dp) = tape_grads(ops.binary_crossentropy, [F["bce_t"], F["kbce_p"]], F["bce_dy"])
    close32(y, F["kbce_y"])
    close32(dp, F["kbce_dp"], 1e-4)
    close32(ops.binary_crossentropy(F["bce_t"], F["bce_logits"], from_logits=True),
            F["kbce_logits_y"])


# ------------------------------------------------------------- gradient checks


def test_conv2d_gradcheck(on_backend, r):
    x = r.standard_normal((2, 5, 6, 3))
    w = r.standard_normal((3, 2, 3, 4))
    for strides, padding in [(1, "VALID"), ([1, 2, 2, 1], "SAME"), ([2, 1], "same"),
                             (1, [[0, 0], [1, 0], [2, 1], [0, 0]])]:
        check_op(lambda a, b: nn.conv2d(a, b, strides, padding), x, w)
    # the filters alone (need_dx=False reaches the kernel)
    check_op(lambda b: nn.conv2d(x, b, 2, "SAME"), w)


def test_bias_add_and_pool_gradcheck(on_backend, r):
    x = off_kinks((2, 5, 5, 3), r)
    b = r.standard_normal(3)
    check_op(nn.bias_add, x, b)
    check_op(lambda a, c: nn.bias_add(a, c, data_format="NCHW"),
             r.standard_normal((2, 3, 4)), b)
    check_op(lambda a: nn.max_pool2d(a, 2, 2, "SAME"), x)
    check_op(lambda a: nn.max_pool(a, [1, 3, 3, 1], [1, 2, 2, 1], "VALID"), x)
    check_op(lambda a: nn.max_pool2d(a, 2, 2, [[0, 0], [1, 0], [0, 1], [0, 0]]), x)
    check_op(lambda a: nn.avg_pool2d(a, 3, 2, "SAME"), x)


def test_activations_and_losses_gradcheck(on_backend, r):
    x = off_kinks((4, 5), r) * 3
    for op in (nn.relu, nn.sigmoid, nn.tanh, nn.softmax, nn.log_softmax, nn.relu6, nn.elu,
               nn.softplus, nn.silu, lambda a: nn.leaky_relu(a, 0.1), nn.selu, nn.gelu,
               nn.softsign, lambda a: nn.gelu(a, approximate=True),
               lambda a: nn.softmax(a, axis=0), nn.l2_loss):
        check_op(op, x)
    t = r.random((4, 5))
    check_op(nn.softmax_cross_entropy_with_logits, t / t.sum(1, keepdims=True), x)
    check_op(lambda a, b: nn.softmax_cross_entropy_with_logits(a, b, axis=0), t, x)
    check_op(lambda a, b: nn.sigmoid_cross_entropy_with_logits(labels=a, logits=b), t, x)
    check_op(lambda a: nn.sigmoid_cross_entropy_with_logits(labels=t[0], logits=a), x[0])
    labels = np.array([4, 0, 1, 1])
    check_op(lambda b: nn.sparse_softmax_cross_entropy_with_logits(labels, b), x)
    x3 = r.standard_normal((2, 3, 5))
    check_op(lambda b: nn.sparse_softmax_cross_entropy_with_logits(
        np.array([[0, 1, 4], [2, 2, 3]]), b), x3)


def test_mean_of_the_cross_entropy_is_the_kernels_gradient(on_backend, r):
    """reduce_mean of the per-example losses: the kernel's gradient as it is, bitwise."""
    z = r.standard_normal((8, 10)).astype(np.float32)
    labels = r.integers(0, 10, 8)
    zt = Tensor(z)
    with GradientTape() as tape:
        tape.watch(zt)
        loss = ops.mean(nn.sparse_softmax_cross_entropy_with_logits(labels, zt))
    _, d = backends.current().sparse_softmax_cross_entropy(z, labels)
    np.testing.assert_array_equal(tape.gradient(loss, zt), d)
    assert np.asarray(loss).dtype == np.float32


def test_dropout(r):
    x = np.ones((200, 50), np.float32)
    y = np.asarray(nn.dropout(x, 0.25, seed=3))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_array_equal(np.asarray(nn.dropout(x, 0.25, seed=3)), y)
    t = Tensor(x)
    with GradientTape() as tape:
        tape.watch(t)
        y = nn.dropout(t, 0.5, noise_shape=[1, 50], seed=1)
    g = tape.gradient(y, t, output_gradients=np.full(x.shape, 3.0, np.float32))
    np.testing.assert_array_equal(g, 3.0 * np.asarray(y))
    assert (np.asarray(y) == np.asarray(y)[:1]).all()    # one mask row, broadcast
    assert nn.dropout(t, 0.0) is t
    with pytest.raises(ValueError, match=r"rate must be a float in \[0, 1\), got 1"):
        nn.dropout(x, 1)
    with pytest.raises(ValueError, match="noise_shape"):
        nn.dropout(x, 0.5, noise_shape=[2, 50])


def test_moments(r):
    x = r.standard_normal((4, 3, 2))
    m, v = nn.moments(x, axes=[0, 1])
    np.testing.assert_allclose(np.asarray(m), x.mean((0, 1)))
    np.testing.assert_allclose(np.asarray(v), x.var((0, 1)))
    check_op(lambda a: nn.moments(a, [0])[1], x)


# ------------------------------------------------------------------- bad input


def test_bad_input_names_argument_value_and_expectation():
    x = np.zeros((1, 5, 5, 3), np.float32)
    w = np.zeros((3, 3, 3, 2), np.float32)
    cases = [
        (lambda: nn.conv2d(x[0], w, 1, "SAME"), ValueError, r"input must have rank 4"),
        (lambda: nn.conv2d(x, w[0], 1, "SAME"), ValueError, r"filters must have rank 4"),
        (lambda: nn.conv2d(x, np.zeros((3, 3, 2, 2), np.float32), 1, "SAME"), ValueError,
         r"filters have 2 input channels .* input has 3"),
        (lambda: nn.conv2d(x, w, [2, 2, 2, 2], "SAME"), ValueError,
         r"strides=\[2, 2, 2, 2\] moves along the batch or channel axis"),
        (lambda: nn.conv2d(x, w, [1, 2, 3], "SAME"), ValueError, r"list of 1, 2 or 4 ints"),
        (lambda: nn.conv2d(x, w, 0, "SAME"), ValueError, r"strides must be >= 1, got 0"),
        (lambda: nn.conv2d(x, w, 1, "FULL"), ValueError, r"padding must be 'SAME'.*'FULL'"),
        (lambda: nn.conv2d(x, w, 1, [[1, 1], [0, 0], [0, 0], [0, 0]]), ValueError,
         r"pads the batch or channel axis"),
        (lambda: nn.conv2d(x, w, 1, [[0, 0], [-1, 0], [0, 0], [0, 0]]), ValueError,
         r"explicit padding must be"),
        (lambda: nn.conv2d(x, np.zeros((7, 7, 3, 2), np.float32), 1, "VALID"), ValueError,
         r"filters \(7, 7\) is larger than the input"),
        (lambda: nn.conv2d(x, w, 2, "SAME", dilations=2), ValueError,
         r"`strides > 1` not supported in conjunction with `dilations > 1`"),
        (lambda: nn.conv2d(x, w, 1, "SAME", data_format="NCHW"), NotImplementedError,
         r"data_format='NCHW'"),
        (lambda: nn.conv2d(x, w.astype(np.float64), 1, "SAME"), TypeError,
         r"input \(float32\) and filters \(float64\)"),
        (lambda: nn.bias_add(x, np.zeros(2, np.float32)), ValueError,
         r"bias has 2 values but value has 3 channels"),
        (lambda: nn.max_pool(x, [2, 2, 1, 1], 2, "SAME"), ValueError, r"ksize=\[2, 2, 1, 1\]"),
        (lambda: nn.max_pool(x[0], 2, 2, "SAME"), ValueError, r"input must have rank 4"),
        (lambda: nn.avg_pool(x, 2, 2, [[0, 0], [1, 1], [1, 1], [0, 0]]), ValueError,
         r"padding must be 'SAME' or 'VALID'"),
        (lambda: nn.sparse_softmax_cross_entropy_with_logits(np.array([0, 3]),
                                                             np.zeros((2, 3))),
         ValueError, r"labels must lie in \[0, 3\) for 3 classes, got label 3"),
        (lambda: nn.sparse_softmax_cross_entropy_with_logits(np.array([0.0, 1.0]),
                                                             np.zeros((2, 3))),
         TypeError, r"labels must be integers"),
        (lambda: nn.sparse_softmax_cross_entropy_with_logits(np.array([0, 1, 2]),
                                                             np.zeros((2, 3))),
         ValueError, r"labels must have the shape of logits without the last axis"),
        (lambda: nn.softmax_cross_entropy_with_logits(np.zeros((2, 4)), np.zeros((2, 3))),
         ValueError, r"labels.shape=\(2, 4\), logits.shape=\(2, 3\)"),
        (lambda: nn.sigmoid_cross_entropy_with_logits(np.zeros(3), np.zeros(4)), ValueError,
         r"same shape"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()


# ------------------------------------------------------------------------- seed


def test_seed_style_conv_net_learns(r):
    """The TensorFlow mechanics tutorial's shape of code: a dict of Variables, fastcnn.nn,
    a GradientTape and an optimizer's apply_gradients; the loss falls."""
    fastcnn.set_random_seed(0)
    n = 64
    x = r.standard_normal((n, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int64)
    W = {
        "c1": Variable(r.normal(0, 0.3, (3, 3, 1, 8)).astype(np.float32), name="c1"),
        "b1": Variable(np.zeros(8, np.float32), name="b1"),
        "c2": Variable(r.normal(0, 0.2, (3, 3, 8, 8)).astype(np.float32), name="c2"),
        "b2": Variable(np.zeros(8, np.float32), name="b2"),
        "fc": Variable(r.normal(0, 0.2, (2 * 2 * 8, 2)).astype(np.float32), name="fc"),
        "bf": Variable(np.zeros(2, np.float32), name="bf"),
    }

    def model(images, training):
        h = nn.relu(nn.bias_add(nn.conv2d(images, W["c1"], [1, 1, 1, 1], "SAME"), W["b1"]))
        h = nn.max_pool(h, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
        h = nn.relu(nn.bias_add(nn.conv2d(h, W["c2"], [1, 1, 1, 1], "SAME"), W["b2"]))
        h = nn.max_pool2d(h, 2, 2, "VALID")
        if training:
            h = nn.dropout(h, 0.1)
        h = ops.reshape(h, (-1, 2 * 2 * 8))
        return nn.bias_add(ops.matmul(h, W["fc"]), W["bf"])

    opt = optimizers.Adam(learning_rate=0.02)
    losses = []
    for step in range(40):
        with GradientTape() as tape:
            logits = model(x, training=True)
            loss = ops.mean(nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, W)
        assert set(grads) == set(W) and all(g.shape == W[k].shape for k, g in grads.items())
        opt.apply_gradients(zip(grads.values(), W.values()))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    accuracy = (np.asarray(ops.argmax(model(x, False), axis=1)) == y).mean()
    assert accuracy > 0.9


# ------------------------------------------------------------------- device arrays

needs_cuda = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")


# What a real numba-cuda DeviceNDArray offers (as in tests/test_cuda_device.py): the
# simulator's fake arrays forward everything else to NumPy, which a GPU would refuse.
REAL_DEVICE_ARRAY_API = frozenset({
    "T", "as_cuda_arg", "bind", "copy_to_device", "copy_to_host", "device_ctypes_pointer",
    "flags", "get_ipc_handle", "getitem", "is_c_contiguous", "is_f_contiguous", "nbytes",
    "ravel", "reshape", "setitem", "split", "squeeze", "transpose", "view",
    "shape", "strides", "dtype", "size", "ndim", "alloc_size", "gpu_data", "stream",
})


@pytest.fixture
def strict(monkeypatch):
    """Simulated device arrays limited to a real DeviceNDArray's API (no NumPy attributes,
    no operators); returns the list of implicit host copies (np.asarray) made."""
    from fastcnn.backends import cuda as cb
    if not cb.simulated():
        return []
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    forward = FakeCUDAArray.__getattr__

    def getattr_(self, name):
        if name not in REAL_DEVICE_ARRAY_API:
            raise AttributeError(f"a real numba DeviceNDArray has no attribute {name!r}")
        return forward(self, name)

    def refuse(self, *args):
        raise TypeError("a real numba DeviceNDArray has no arithmetic operators")

    monkeypatch.setattr(FakeCUDAArray, "__getattr__", getattr_)
    for name in ("__add__", "__sub__", "__mul__", "__truediv__", "__pow__", "__lt__",
                 "__le__", "__gt__", "__ge__"):
        monkeypatch.setattr(FakeCUDAArray, name, refuse)
    implicit = []

    def array(self, dtype=None, copy=None):
        implicit.append(tuple(self._ary.shape))
        return self._ary.copy() if dtype is None else self._ary.astype(dtype)

    monkeypatch.setattr(FakeCUDAArray, "__array__", array, raising=False)
    return implicit


@needs_cuda
def test_device_arrays_stay_on_the_device(r, strict):
    """On 'cuda' with device arrays (as inside a device scope) the nn ops and the
    kernel activations run the backend's kernels, gradients come back as device arrays
    for device sources (host ones for host sources), and equal the reference's."""
    from fastcnn.backends import cuda as cb

    x = off_kinks((2, 4, 4, 1), r).astype(np.float32)
    w = r.normal(0, 0.5, (3, 3, 1, 2)).astype(np.float32)
    b = r.normal(0, 0.1, 2).astype(np.float32)
    fc = r.normal(0, 0.5, (8, 3)).astype(np.float32)
    labels = np.array([2, 0])

    def run(xv, wv, bv, fcv):
        with GradientTape() as tape:
            tape.watch([xv, wv, bv, fcv])
            h = nn.relu(nn.bias_add(nn.conv2d(xv, wv, 1, "SAME"), bv))
            h = nn.max_pool(h, 2, 2, "SAME")
            h = nn.dropout(h, 0.5, seed=4)
            logits = ops.matmul(ops.reshape(h, (2, 8)), fcv)
            p = nn.softmax(logits)
            loss = ops.mean(nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return p, loss, tape.gradient(loss, [xv, wv, bv, fcv])

    with fastcnn.use_backend("reference"):
        p_ref, loss_ref, g_ref = run(*(Tensor(a) for a in (x, w, b, fc)))
    with fastcnn.use_backend("cuda"):
        dev = [Tensor(cb.to_device(a)) for a in (x, w, b)] + [Tensor(fc)]
        p, loss, grads = run(*dev)
    assert cb.is_device_array(p.value)
    np.testing.assert_allclose(p.numpy(), p_ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-5)
    for i, (g, gr) in enumerate(zip(grads, g_ref)):
        assert cb.is_device_array(g) == (i < 3), i     # fc is a host source
        np.testing.assert_allclose(_device_host(g), gr, rtol=1e-4, atol=1e-5)
    assert strict == [], f"implicit host copies of device arrays: {strict}"


def _device_host(a):
    from fastcnn import _device
    return _device.to_host(a)


@needs_cuda
def test_numpy_ops_refuse_device_arrays(strict):
    from fastcnn.backends import cuda as cb

    d = Tensor(cb.to_device(np.ones((2, 3), np.float32)))
    for fn, name in [(lambda: ops.exp(d), "exp"), (lambda: d + 1.0, "add"),
                     (lambda: ops.var(d), "var"),
                     (lambda: ops.concatenate([np.ones((2, 3)), d]), "concatenate"),
                     (lambda: ops.categorical_crossentropy(np.ones((2, 3)), d),
                      "categorical_crossentropy")]:
        with pytest.raises(NotImplementedError,
                           match=rf"fastcnn.ops.{name} .* device array of the 'cuda' backend"):
            fn()
    assert cb.is_device_array(ops.reshape(d, (3, 2)).value)
    assert cb.is_device_array(ops.zeros_like(d).value)


@needs_cuda
def test_device_losses_pools_and_activations(r, strict):
    """The other device paths: avg pool, the dense-label and sigmoid cross-entropies with
    uniform (sum) and per-example (weighted) upstream gradients, l2_loss, parameterised
    activations; equal to the reference backend's."""
    from fastcnn.backends import cuda as cb

    x = r.standard_normal((2, 4, 4, 2)).astype(np.float32)
    t = r.random((2, 8)).astype(np.float32)
    weights = np.array([0.3, 2.0], np.float32)

    def run(xv):
        with GradientTape() as tape:
            tape.watch(xv)
            h = ops.elu(nn.avg_pool2d(xv, 2, 2, "VALID"), alpha=0.5)   # (2, 2, 2, 2)
            z = ops.reshape(ops.leaky_relu(h, 0.1), (2, 8))
            loss = ops.sum(nn.softmax_cross_entropy_with_logits(t, z)) \
                + ops.sum(nn.sigmoid_cross_entropy_with_logits(labels=t, logits=z)
                          * weights[:, None]) + nn.l2_loss(z)
        return loss, tape.gradient(loss, xv)

    with fastcnn.use_backend("reference"):
        loss_ref, g_ref = run(Tensor(x))
    with fastcnn.use_backend("cuda"):
        loss, g = run(Tensor(cb.to_device(x)))
    assert cb.is_device_array(g)
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-5)
    np.testing.assert_allclose(_device_host(g), g_ref, rtol=1e-4, atol=1e-6)
    assert strict == [], f"implicit host copies of device arrays: {strict}"
