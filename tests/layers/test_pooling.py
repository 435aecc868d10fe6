"""MaxPooling2D / AveragePooling2D: Keras defaults, shapes, values."""
import numpy as np
import pytest

import fastcnn
from fastcnn import backends
from fastcnn.layers import AveragePooling2D, MaxPooling2D

POOLS = [MaxPooling2D, AveragePooling2D]


@pytest.mark.parametrize("cls", POOLS)
def test_strides_default_to_the_pool_size(cls):
    layer = cls()
    assert layer.pool_size == (2, 2) and layer.strides == (2, 2) and layer.padding == "valid"
    layer = cls((3, 2))
    assert layer.strides == (3, 2)
    layer = cls(3, 1, "same")
    assert layer.strides == (1, 1) and layer.padding == "same"


@pytest.mark.parametrize("cls", POOLS)
@pytest.mark.parametrize("input_shape,args,kwargs,out_shape", [
    ((26, 26, 32), (2,), {}, (None, 13, 13, 32)),
    ((7, 5, 3), (2,), {}, (None, 3, 2, 3)),
    ((7, 5, 3), (2,), {"padding": "same"}, (None, 4, 3, 3)),
    ((7, 5, 3), ((3, 2),), {"strides": 1}, (None, 5, 4, 3)),
])
def test_shapes(cls, input_shape, args, kwargs, out_shape):
    layer = cls(*args, **kwargs)
    layer.build((None,) + input_shape)
    assert layer.output_shape == out_shape
    assert layer.count_params() == 0 and layer.weights == []


@pytest.mark.parametrize("backend", backends.available())
def test_values_on_a_known_input(backend):
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    with fastcnn.use_backend(backend):
        mx = MaxPooling2D()(x)
        av = AveragePooling2D()(x)
    np.testing.assert_array_equal(mx[0, :, :, 0], [[5, 7], [13, 15]])
    np.testing.assert_allclose(av[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


@pytest.mark.parametrize("backend", backends.available())
def test_max_pool_backward_routes_to_the_max(backend):
    x = np.array([[1, 4], [3, 2]], dtype=np.float32).reshape(1, 2, 2, 1)
    layer = MaxPooling2D()
    layer.build((None, 2, 2, 1))
    with fastcnn.use_backend(backend):
        _, ctx = layer.forward(x, training=True)
        dx, grads = layer.backward(np.full((1, 1, 1, 1), 7, dtype=np.float32), ctx)
    assert grads == ()
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 7], [0, 0]])
