"""The issue-14 layers on the 'cuda' backend (the CUDA simulator here: tiny shapes).

DepthwiseConv2D and SeparableConv2D run on device arrays (kernel ops only): a model holding
them trains on the device as on the reference. The layers computing in NumPy at the layer
level (dilation above 1, Conv2DTranspose, Cropping2D, UpSampling2D) are refused at the
device scope's entry, naming the layer, instead of silently computing on the host.
"""
import numpy as np
import pytest

import fastcnn
from fastcnn import _device, backends, layers, optimizers

pytestmark = pytest.mark.skipif(
    "cuda" not in backends.available()
    or not backends.get("cuda").implements("depthwise_conv2d_forward"),
    reason="the cuda backend (or its depthwise_conv2d kernel) is not available here")


def model_with(*middle):
    return fastcnn.Sequential([layers.Input((4, 4, 2)), *middle, layers.Flatten(),
                               layers.Dense(2, activation="softmax")])


def fit_on(backend, model, initial):
    model.set_weights(initial)
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    x = np.linspace(-1, 1, 4 * 4 * 4 * 2, dtype=np.float32).reshape(4, 4, 4, 2)
    y = np.array([0, 1, 1, 0])
    with fastcnn.use_backend(backend):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    return model.get_weights()


def test_depthwise_and_separable_train_on_the_device_as_on_the_reference():
    fastcnn.utils.set_random_seed(3)
    model = model_with(
        layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu"),
        layers.SeparableConv2D(2, 3, strides=2, padding="same"))
    initial = model.get_weights()
    ref = fit_on("reference", model, initial)
    dev = fit_on("cuda", model, initial)
    for a, b in zip(dev, ref):
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(ref, initial))


@pytest.mark.parametrize("layer", [
    layers.DepthwiseConv2D(3, padding="same", dilation_rate=2),
    layers.Conv2D(2, 3, padding="same", dilation_rate=2),
    layers.Conv2DTranspose(2, 3, padding="same"),
    layers.Cropping2D(1),
    layers.UpSampling2D(),
], ids=lambda l: type(l).__name__)
def test_layers_computing_in_numpy_are_refused_on_the_device(layer):
    model = model_with(layer)
    with fastcnn.use_backend("cuda"):
        with pytest.raises(NotImplementedError, match=rf"\({type(layer).__name__}\) cannot "
                                                      rf"run on backend 'cuda'"):
            with _device.scope(model):
                pass  # pragma: no cover
