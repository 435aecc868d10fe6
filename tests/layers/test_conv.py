"""Conv2D: shape inference (Keras's numbers), weights, and agreement with the kernels."""
import numpy as np
import pytest

import fastcnn
from fastcnn import backends, shapes
from fastcnn.layers import Conv2D

BACKENDS = backends.available()


@pytest.mark.parametrize("input_shape,args,kwargs,out_shape,params", [
    ((28, 28, 1), (32, 3), {}, (None, 26, 26, 32), 320),            # Keras's MNIST example
    ((28, 28, 1), (32, 3), {"padding": "same"}, (None, 28, 28, 32), 320),
    ((7, 5, 2), (4, (3, 2)), {"strides": 2, "padding": "same"}, (None, 4, 3, 4), 52),
    ((7, 5, 2), (4, (3, 2)), {"strides": (2, 1)}, (None, 3, 4, 4), 52),
    ((150, 150, 3), (32, 3), {}, (None, 148, 148, 32), 896),         # cats vs dogs
    ((5, 5, 3), (6, 5), {"use_bias": False}, (None, 1, 1, 6), 450),  # kernel == input
])
def test_shape_inference_and_params(input_shape, args, kwargs, out_shape, params):
    layer = Conv2D(*args, **kwargs)
    layer.build((None,) + input_shape)
    assert layer.output_shape == out_shape
    assert layer.count_params() == params
    kh, kw = shapes.normalize_tuple(args[1], 2, "kernel_size")
    assert layer.kernel.shape == (kh, kw, input_shape[-1], args[0])  # HWIO


def test_keras_argument_order_and_defaults():
    layer = Conv2D(8, 3)
    assert (layer.strides, layer.padding, layer.activation, layer.use_bias) == (
        (1, 1), "valid", "linear", True)
    layer = Conv2D(8, (3, 2), (2, 1), "SAME", "relu", False)
    assert (layer.kernel_size, layer.strides, layer.padding, layer.activation,
            layer.use_bias) == ((3, 2), (2, 1), "same", "relu", False)


def test_glorot_uniform_default_uses_keras_fans():
    fastcnn.utils.set_random_seed(0)
    layer = Conv2D(16, (3, 2))
    layer.build((None, 9, 9, 4))
    fan_in, fan_out = 3 * 2 * 4, 3 * 2 * 16
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(layer.kernel).max() <= limit
    assert np.abs(layer.kernel).max() > 0.9 * limit
    np.testing.assert_array_equal(layer.bias, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
def test_forward_is_the_kernel_then_the_activation(backend, activation):
    fastcnn.utils.set_random_seed(1)
    layer = Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation=activation)
    x = np.random.default_rng(0).standard_normal((2, 5, 4, 2)).astype(np.float32)
    with fastcnn.use_backend(backend):
        y = layer(x)
    ref = backends.get("reference")
    _, pad = shapes.window_output_shape((5, 4), (3, 2), (2, 1), "same")
    z, _ = ref.conv2d_forward(x, layer.kernel, layer.bias, (2, 1), pad)
    if activation is not None:
        z, _ = getattr(ref, activation + "_forward")(z.reshape(-1, 3) if activation == "softmax" else z)
        z = z.reshape(2, 3, 4, 3)
    assert y.shape == (2, 3, 4, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y, z, rtol=1e-5, atol=1e-6)


def test_backward_goes_to_the_backend_that_ran_the_forward():
    fastcnn.utils.set_random_seed(2)
    layer = Conv2D(2, 3, activation="tanh")
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 1)).astype(np.float64)
    layer.build((None, 5, 5, 1), "float64")
    dy = np.random.default_rng(2).standard_normal((2, 3, 3, 2))
    with fastcnn.use_backend("reference"):
        _, ctx = layer.forward(x, training=True)
    with fastcnn.use_backend("im2col"):
        # the ctx came from 'reference'; it must go back there whatever is active now
        dx, (dw, db) = layer.backward(dy, ctx)
    with fastcnn.use_backend("reference"):
        _, ctx_ref = layer.forward(x, training=True)
        dx_ref, (dw_ref, db_ref) = layer.backward(dy, ctx_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    np.testing.assert_array_equal(db, db_ref)
