"""Device residency (fastcnn._device) with the cuda backend, in the CUDA simulator.

A model trained inside ``_device.scope`` keeps weights, optimizer state and activations on
the device and must end with the same weights as the same model trained on the reference
backend (float32 rounding apart). The tests drive the scope themselves around fit /
evaluate / predict; once model.py enters it on its own, the nested scope is a no-op and the
tests still hold.

The simulator's fake device arrays forward any NumPy attribute and operator to a hidden
ndarray, so code that only works in the simulator (``w.copy()``, ``x * mask``,
``d[...] = v``) would pass here and fail on a GPU. The ``strict`` fixture reduces them to
the API of a real numba DeviceNDArray and counts implicit host copies (``np.asarray``).
"""
from __future__ import annotations

import numpy as np
import pytest

import fastcnn
from fastcnn import _device, backends, optimizers, regularizers
from fastcnn.layers import (Conv2D, Cropping2D, Dense, Dropout, Flatten,
                            MaxPooling2D)

pytestmark = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")

if "cuda" in backends.available():
    from fastcnn.backends import cuda as cb

# What a real numba-cuda DeviceNDArray offers (class attributes and the ones its __init__
# sets); the simulator's FakeCUDAArray forwards everything else to NumPy.
REAL_DEVICE_ARRAY_API = frozenset({
    "T", "as_cuda_arg", "bind", "copy_to_device", "copy_to_host", "device_ctypes_pointer",
    "flags", "get_ipc_handle", "getitem", "is_c_contiguous", "is_f_contiguous", "nbytes",
    "ravel", "reshape", "setitem", "split", "squeeze", "transpose", "view",
    "shape", "strides", "dtype", "size", "ndim", "alloc_size", "gpu_data", "stream",
})


@pytest.fixture
def strict(monkeypatch):
    """Simulated device arrays behave like real ones; returns the list of implicit host
    copies (``np.asarray(device_array)``) made while the fixture is active."""
    if not cb.simulated():
        return []
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    forward = FakeCUDAArray.__getattr__

    def getattr_(self, name):
        if name not in REAL_DEVICE_ARRAY_API:
            raise AttributeError(
                f"a real numba DeviceNDArray has no attribute {name!r} (the simulator's "
                f"fake array would forward it to NumPy)")
        return forward(self, name)

    def no_operator(name):
        def refuse(self, *args):
            raise TypeError(f"a real numba DeviceNDArray does not support {name}")
        return refuse

    monkeypatch.setattr(FakeCUDAArray, "__getattr__", getattr_)
    for name in ("__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__", "__mod__",
                 "__pow__", "__lt__", "__le__", "__gt__", "__ge__"):
        monkeypatch.setattr(FakeCUDAArray, name, no_operator(name))
    monkeypatch.setattr(FakeCUDAArray, "__eq__", lambda self, other: self is other)
    monkeypatch.setattr(FakeCUDAArray, "__ne__", lambda self, other: self is not other)
    monkeypatch.setattr(FakeCUDAArray, "__hash__", object.__hash__)
    setitem = FakeCUDAArray.__setitem__

    def setitem_(self, key, value):
        if key is Ellipsis or (isinstance(key, tuple) and Ellipsis in key):
            raise TypeError("a real numba DeviceNDArray does not support d[...] = value")
        return setitem(self, key, value)

    monkeypatch.setattr(FakeCUDAArray, "__setitem__", setitem_)
    implicit = []

    def array(self, dtype=None, copy=None):   # DeviceNDArray.__array__: copies to the host
        implicit.append(tuple(self._ary.shape))
        return self._ary.copy() if dtype is None else self._ary.astype(dtype)

    monkeypatch.setattr(FakeCUDAArray, "__array__", array, raising=False)
    return implicit


def blobs(n=8, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.standard_normal((n, 6, 6, 2)).astype(np.float32)
    x[np.arange(n), y, y, 0] += 3.0
    return x, y


def conv_model():
    return fastcnn.Sequential([
        Conv2D(3, 3, activation="relu", input_shape=(6, 6, 2)), MaxPooling2D(2), Flatten(),
        Dropout(0.25), Dense(4, activation="softmax")])


def on_device_state(model):
    arrays = list(model.weights)
    if model.optimizer is not None:
        arrays += [s for slots in model.optimizer._slots.values() for s in slots]
    return [_device.is_device_array(a) for a in arrays]


def run_fit(model, initial, backend, optimizer, callbacks=()):
    model.set_weights(initial)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    fastcnn.utils.set_random_seed(11)   # the same shuffles and dropout masks
    x, y = blobs()
    with fastcnn.use_backend(backend):   # fit itself opens the device scope on 'cuda'
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                            callbacks=list(callbacks))
    return model.get_weights(), history.history


class Probe(fastcnn.callbacks.Callback):
    """Looks at the model in the middle of training, as ModelCheckpoint would."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        layer = self.model.layers[0]
        weights = self.model.get_weights()
        self.seen.append((_device.is_device_array(layer.kernel),
                          all(isinstance(w, np.ndarray) for w in weights), weights))


# ------------------------------------------------------------------------ training
def test_conv_model_trained_on_the_device_matches_the_reference(strict):
    fastcnn.utils.set_random_seed(5)
    model = conv_model()
    initial = model.get_weights()
    kernel = model.layers[0].kernel
    ref_w, ref_h = run_fit(model, initial, "reference", optimizers.Adam(0.01))
    probe = Probe()
    cu_w, cu_h = run_fit(model, initial, "cuda", optimizers.Adam(0.01), [probe])

    for a, b in zip(cu_w, ref_w):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cu_h["loss"], ref_h["loss"], rtol=1e-5)
    assert cu_h["accuracy"] == ref_h["accuracy"]
    # During training the weights were device arrays; get_weights gave current host copies.
    assert [on_dev for on_dev, _, _ in probe.seen] == [True, True]
    assert all(host for _, host, _ in probe.seen)
    for a, b in zip(probe.seen[-1][2], cu_w):
        np.testing.assert_array_equal(a, b)
    # Afterwards everything is back on the host, in the very same arrays.
    assert not any(on_device_state(model))
    assert model.layers[0].kernel is kernel
    assert model.optimizer.get_state()["iterations"] == 2
    assert strict == [], f"implicit host copies during fit: {strict}"


@pytest.mark.parametrize("optimizer, loss, head", [
    (lambda: optimizers.SGD(0.1, momentum=0.9, nesterov=True), "binary_crossentropy",
     "sigmoid"),
    (lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True),
     "categorical_crossentropy", "softmax"),
    (lambda: optimizers.Adam(0.01, amsgrad=True), "mse", "tanh"),
], ids=["sgd-nesterov-bce", "rmsprop-centered-cce", "adam-amsgrad-mse"])
def test_dense_models_with_l2_match_the_reference(strict, optimizer, loss, head):
    """Every optimizer kernel inside a model, an L2 penalty (loss and gradient on the
    device), fused sigmoid/softmax heads and a probability-space loss (mse on a host copy)."""
    fastcnn.utils.set_random_seed(2)
    units = 1 if head == "sigmoid" else 3
    model = fastcnn.Sequential([
        Flatten(input_shape=(3, 2)),
        Dense(5, activation="relu", kernel_regularizer=regularizers.L2(0.01)),
        Dense(units, activation=head, bias_regularizer="l2")])
    initial = model.get_weights()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 2)).astype(np.float32)
    if loss == "binary_crossentropy":
        y = rng.integers(0, 2, (6, 1)).astype(np.float32)
    elif loss == "categorical_crossentropy":
        y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)]
    else:
        y = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
    results = {}
    for backend in ("reference", "cuda"):
        model.set_weights(initial)
        model.compile(optimizer(), loss)
        with fastcnn.use_backend(backend):   # each call opens the device scope on 'cuda'
            losses = [model.train_on_batch(x, y) for _ in range(2)]
            losses.append(model.evaluate(x, y, verbose=0))
        results[backend] = (model.get_weights(), losses, model.optimizer.get_state())
    (w_cu, l_cu, s_cu), (w_ref, l_ref, s_ref) = results["cuda"], results["reference"]
    for a, b in zip(w_cu, w_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l_cu, l_ref, rtol=1e-5)
    for slot in s_ref["slots"]:
        for a, b in zip(s_cu["slots"][slot], s_ref["slots"][slot]):
            assert isinstance(a, np.ndarray)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not any(on_device_state(model))
    assert strict == [], f"implicit host copies: {strict}"


def test_predict_and_evaluate_return_host_values(strict):
    fastcnn.utils.set_random_seed(5)
    model = conv_model()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = blobs(5)
    expected = (model.predict(x, batch_size=3), model.evaluate(x, y, verbose=0))
    with fastcnn.use_backend("cuda"):   # predict and evaluate open the device scope
        p = model.predict(x, batch_size=3)
        result = model.evaluate(x, y, verbose=0)
    with fastcnn.use_backend("cuda"), _device.scope(model):   # and inside an open one
        assert _device.is_device_array(model.layers[-1].kernel)
        np.testing.assert_array_equal(model.predict(x, batch_size=3), p)
    assert isinstance(p, np.ndarray) and p.dtype == np.float32
    np.testing.assert_allclose(p, expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result, expected[1], rtol=1e-5)
    assert strict == [], f"implicit host copies: {strict}"


def test_save_during_training_writes_the_current_weights(strict, tmp_path):
    fastcnn.utils.set_random_seed(5)
    model = conv_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = blobs(4)
    with fastcnn.use_backend("cuda"), _device.scope(model):
        model.train_on_batch(x, y)
        model.save(tmp_path / "mid")
        mid = model.get_weights()
        model.train_on_batch(x, y)
    loaded = fastcnn.load_model(tmp_path / "mid")
    for a, b in zip(loaded.get_weights(), mid):
        np.testing.assert_array_equal(a, b)
    assert loaded.optimizer.get_state()["iterations"] == 1


def test_set_weights_inside_the_scope_reaches_the_device(strict):
    fastcnn.utils.set_random_seed(5)
    model = conv_model()
    model.compile("sgd", "sparse_categorical_crossentropy")
    new = [np.full(w.shape, 0.5, w.dtype) for w in model.get_weights()]
    with fastcnn.use_backend("cuda"), _device.scope(model):
        for layer, values in zip(model.layers, [new[:2], [], [], [], new[2:]]):
            if values:
                layer.set_weights(values)   # EarlyStopping's restore does the same
        seen = model.get_weights()
    for a, b, c in zip(seen, model.get_weights(), new):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def test_model_set_weights_inside_the_scope_reaches_the_device(strict):
    fastcnn.utils.set_random_seed(5)
    model = conv_model()
    model.compile("sgd", "sparse_categorical_crossentropy")
    new = [np.full(w.shape, 0.25, w.dtype) for w in model.get_weights()]
    with fastcnn.use_backend("cuda"), _device.scope(model):
        model.set_weights(new)
    for a, b in zip(model.get_weights(), new):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ the scope itself
def test_scope_is_a_no_op_on_a_host_backend():
    model = conv_model()
    kernel = model.layers[0].kernel
    with fastcnn.use_backend("reference"), _device.scope(model):
        assert model.layers[0].kernel is kernel
        assert not _device.resident(model)
        x = np.zeros(3)
        assert _device.put(model, x) is x


def test_nested_scopes_of_one_model_make_one_residency():
    model = conv_model()
    with fastcnn.use_backend("cuda"), _device.scope(model):
        kernel = model.layers[0].kernel
        with _device.scope(model):
            assert model.layers[0].kernel is kernel
        assert _device.is_device_array(model.layers[0].kernel)   # still resident
    assert not any(on_device_state(model))


def test_an_exception_inside_the_scope_still_brings_the_state_home(strict):
    fastcnn.utils.set_random_seed(5)
    model = conv_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = blobs(4)
    before = model.get_weights()
    with pytest.raises(KeyError, match="interrupted"):
        with fastcnn.use_backend("cuda"), _device.scope(model):
            model.train_on_batch(x, y)
            after_step = model.get_weights()
            raise KeyError("interrupted")
    assert not any(on_device_state(model))
    now = model.get_weights()
    for a, b, c in zip(now, after_step, before):
        np.testing.assert_array_equal(a, b)       # the step's values were copied back
    assert any(not np.array_equal(a, c) for a, c in zip(now, before))


# ------------------------------------------------------------------------ bad input
def test_a_layer_without_device_kernels_is_refused_at_entry():
    # (BatchNormalization runs on the device since it became kernel ops: Cropping2D still
    # slices in NumPy at the layer level.)
    model = fastcnn.Sequential([Cropping2D(1, input_shape=(4, 4, 2)), Flatten(), Dense(2)])
    kernel = model.layers[2].kernel
    with fastcnn.use_backend("cuda"):
        with pytest.raises(NotImplementedError,
                           match=r"layer 'cropping2d.*' \(Cropping2D\) "
                                 r"cannot run on backend 'cuda'"):
            with _device.scope(model):
                pass  # pragma: no cover
    assert model.layers[2].kernel is kernel and not any(on_device_state(model))


def test_a_regularizer_without_a_device_version_is_refused_at_entry():
    class Odd(regularizers.Regularizer):
        def __call__(self, w):
            return float(np.abs(w).sum())

    model = fastcnn.Sequential([Flatten(input_shape=(4, 2)), Dense(2, kernel_regularizer=Odd())])
    with fastcnn.use_backend("cuda"):
        with pytest.raises(NotImplementedError, match="kernel_regularizer .* has no device"):
            with _device.scope(model):
                pass  # pragma: no cover


def test_an_optimizer_without_a_device_update_is_refused_at_entry():
    class HostOnly(optimizers.Optimizer):
        def __init__(self):
            super().__init__(0.1, "host_only")

        def _apply(self, grads, variables):
            for w, g in zip(variables, grads):
                w -= 0.1 * g

    model = conv_model()
    model.compile(HostOnly(), "sparse_categorical_crossentropy")
    assert optimizers.Adam().supports_device and not model.optimizer.supports_device
    with fastcnn.use_backend("cuda"):
        with pytest.raises(NotImplementedError,
                           match=r"optimizer .* has no device update on backend 'cuda'"):
            with _device.scope(model):
                pass  # pragma: no cover


def test_scope_and_put_ignore_an_unbuilt_or_other_model():
    unbuilt = fastcnn.Sequential([Flatten(), Dense(2)])
    resident = conv_model()
    x = np.zeros((2, 6, 6, 2), np.float32)
    with fastcnn.use_backend("cuda"), _device.scope(unbuilt), _device.scope(resident):
        assert not _device.resident(unbuilt) and _device.resident(resident)
        assert _device.put(unbuilt, x) is x                 # not its residency
        assert _device.is_device_array(_device.put(resident, x))


class FakeOutOfMemory(Exception):
    code = 2   # CUDA_ERROR_OUT_OF_MEMORY, as numba-cuda's CudaAPIError carries it


def test_a_batch_too_large_for_the_device_raises_memory_error(monkeypatch):
    fastcnn.utils.set_random_seed(5)
    model = conv_model()
    model.compile("sgd", "sparse_categorical_crossentropy")
    before = model.get_weights()
    x, y = blobs(8)
    copy = cb._copy_to_device

    def full_for_batches(a):
        if a.ndim == 4 and a.shape[0] == 8:
            raise FakeOutOfMemory("[CUDA_ERROR_OUT_OF_MEMORY] out of memory")
        return copy(a)

    monkeypatch.setattr(cb, "_copy_to_device", full_for_batches)
    message = r"batch of 8 samples\) needs an array of shape \(8, 6, 6, 2\) float32, 2,304 bytes"
    with fastcnn.use_backend("cuda"):
        with _device.scope(model):
            with pytest.raises(MemoryError, match=r"the input batch \(" + message[:-1]):
                _device.put(model, x)
        with pytest.raises(MemoryError, match=message):
            with _device.scope(model):
                model.fit(x, y, batch_size=8, verbose=0, shuffle=False)
    assert not any(on_device_state(model))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_switching_backend_inside_the_scope_is_a_clear_error():
    model = conv_model()
    with fastcnn.use_backend("cuda"), _device.scope(model):
        with fastcnn.use_backend("reference"):
            with pytest.raises(RuntimeError, match="changed from 'cuda' to 'reference'"):
                _device.put(model, np.zeros((2, 6, 6, 2), np.float32))
            # A host kernel handed the device weights says which argument is wrong.
            dense = model.layers[-1]
            with pytest.raises(TypeError, match="w must be a numpy array of dtype float32"):
                backends.get("reference").dense_forward(
                    np.zeros((2, 12), np.float32), dense.kernel, dense.bias)


def test_optimizer_refuses_a_mix_of_device_and_host_weights():
    w_host = np.zeros(3, np.float32)
    w_dev = cb.to_device(np.zeros(3, np.float32))
    g = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="mix device arrays and NumPy arrays"):
        optimizers.SGD(0.1).apply([g, g], [w_host, w_dev])


def graph_model():
    """A Functional model with a residual Add (device kernels: add_scaled) and a shared
    Dense layer, all layers device-capable."""
    inp = fastcnn.Input((6, 6, 2))
    x = Conv2D(3, 3, padding="same", activation="relu")(inp)
    y = Conv2D(3, 3, padding="same")(x)
    x = MaxPooling2D(2)(fastcnn.layers.Add()([x, y]))
    shared = Dense(4, activation="relu")
    h = shared(Dense(4)(Flatten()(x)))
    return fastcnn.Model(inp, Dense(4, activation="softmax")(shared(h)))


def test_a_functional_graph_trained_on_the_device_matches_the_reference(strict):
    fastcnn.utils.set_random_seed(6)
    model = graph_model()
    initial = model.get_weights()
    x, y = blobs()
    results = []
    for backend in ("reference", "cuda"):
        model.set_weights(initial)
        model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy")
        fastcnn.utils.set_random_seed(11)
        with fastcnn.use_backend(backend):
            model.fit(x, y, batch_size=4, epochs=1, verbose=0)
            results.append((model.get_weights(), model.predict(x, verbose=0)))
    for a, b in zip(results[1][0], results[0][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5, atol=1e-6)
    assert not any(on_device_state(model))
    assert strict == [], f"implicit host copies during fit: {strict}"
