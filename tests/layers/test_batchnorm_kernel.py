"""BatchNormalization through the kernel ops (batchnorm_statistics + the batchnorm pair):
the layer gives the reference backend's numbers on every backend, updates its moving
statistics in place with Keras's rule, and trains on the 'cuda' device (simulator)."""
import fastcnn
import numpy as np
import pytest

from fastcnn import _device, backends, optimizers
from fastcnn.layers import BatchNormalization, Conv2D, Dense, Flatten

TOL = {np.dtype(np.float32): dict(rtol=2e-4, atol=2e-4),
       np.dtype(np.float64): dict(rtol=1e-9, atol=1e-10)}
HOST = [n for n in backends.available() if n != "cuda"]


def _run_layer(backend, shape, dtype, training, trainable=True, **kwargs):
    rng = np.random.default_rng(5)
    fastcnn.utils.set_random_seed(3)
    layer = BatchNormalization(momentum=0.8, **kwargs)
    layer.build((None,) + shape[1:], np.dtype(dtype).name)
    c = shape[-1]
    values = [rng.uniform(0.5, 2, c), rng.standard_normal(c)][: int(layer.scale) + int(layer.center)]
    layer.set_weights([v.astype(dtype) for v in values]
                      + [rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)])
    layer.trainable = trainable
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    with fastcnn.use_backend(backend):
        y, ctx = layer.forward(x, training=training)
        dx, grads = layer.backward(dy, ctx)
    return y, dx, grads, layer.moving_mean.copy(), layer.moving_variance.copy()


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training,trainable", [(True, True), (False, True), (True, False)],
                         ids=["train", "infer", "frozen"])
@pytest.mark.parametrize("kwargs", [{}, {"scale": False}, {"center": False, "scale": False}],
                         ids=["gb", "b", "none"])
def test_layer_matches_the_reference_backend(backend, dtype, training, trainable, kwargs):
    shape = (3, 4, 5, 6)
    got = _run_layer(backend, shape, dtype, training, trainable, **kwargs)
    want = _run_layer("reference", shape, dtype, training, trainable, **kwargs)
    y, dx, grads, mm, mv = got
    assert y.dtype == dtype and dx.dtype == dtype and len(grads) == len(want[2])
    for what, a, b in zip(("y", "dx", "moving_mean", "moving_variance"),
                          (y, dx, mm, mv), (want[0], want[1], want[3], want[4])):
        np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)], err_msg=what)
    for a, b in zip(grads, want[2]):
        np.testing.assert_allclose(a, b, **TOL[np.dtype(dtype)])
    if not (training and trainable):   # inference / frozen: moving statistics unchanged
        _, _, _, mm0, mv0 = _run_layer("reference", shape, dtype, False, True, **kwargs)
        np.testing.assert_array_equal(mm, mm0)


def test_moving_statistics_are_updated_in_place_with_keras_momentum():
    layer = BatchNormalization(momentum=0.9)
    layer.build((None, 5, 3), "float64")
    mean_array, var_array = layer.moving_mean, layer.moving_variance
    x = np.random.default_rng(1).standard_normal((4, 5, 3)) * 2 + 1
    layer.forward(x, training=True)
    assert layer.moving_mean is mean_array and layer.moving_variance is var_array
    np.testing.assert_allclose(mean_array, 0.1 * x.mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(var_array, 0.9 + 0.1 * x.var(axis=(0, 1)), rtol=1e-12)


def test_batchnorm_runs_on_device():
    assert BatchNormalization.runs_on_device


@pytest.mark.skipif("cuda" not in backends.available(),
                    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")
def test_conv_bn_model_trains_on_the_cuda_device_like_the_reference():
    """fit on 'cuda' keeps the weights (moving statistics included) on the device and
    gives the reference's weights, moving statistics and losses."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 8)
    x = rng.standard_normal((8, 5, 5, 2)).astype(np.float32)
    x[np.arange(8), y, y, 0] += 3.0
    fastcnn.utils.set_random_seed(4)
    model = fastcnn.Sequential([Conv2D(3, 3, input_shape=(5, 5, 2)), BatchNormalization(),
                                Flatten(), Dense(3, activation="softmax")])
    initial = model.get_weights()
    seen = []

    class Probe(fastcnn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(_device.is_device_array(self.model.layers[1].moving_mean))

    results = {}
    for name in ("reference", "cuda"):
        model.set_weights(initial)
        model.compile(optimizers.SGD(0.05), "sparse_categorical_crossentropy")
        with fastcnn.use_backend(name):
            history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False,
                                callbacks=[Probe()] if name == "cuda" else [])
        results[name] = (model.get_weights(), history.history["loss"])
    assert seen == [True, True]
    (cu_w, cu_loss), (ref_w, ref_loss) = results["cuda"], results["reference"]
    for a, b in zip(cu_w, ref_w):
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cu_loss, ref_loss, rtol=1e-5)
    assert not np.array_equal(cu_w[4], initial[4])   # the moving mean moved
