"""Dense, Flatten, Dropout, Activation, Input."""
import numpy as np
import pytest

import fastcnn
from fastcnn import backends
from fastcnn.layers import Activation, Dense, Dropout, Flatten, Input, InputLayer


@pytest.fixture(autouse=True)
def seeded():
    fastcnn.utils.set_random_seed(123)


def test_dense_shapes_and_keras_params():
    layer = Dense(10, activation="softmax")
    layer.build((None, 5408))
    assert layer.output_shape == (None, 10)
    assert layer.kernel.shape == (5408, 10) and layer.count_params() == 54090


@pytest.mark.parametrize("backend", backends.available())
def test_dense_forward_is_x_at_kernel_plus_bias(backend):
    layer = Dense(3, activation="tanh", bias_initializer="ones")
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    with fastcnn.use_backend(backend):
        y = layer(x)
    np.testing.assert_allclose(y, np.tanh(x @ layer.kernel + 1), rtol=1e-5, atol=1e-6)


def test_flatten_is_nhwc_c_order_and_backward_restores_the_shape():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    layer = Flatten()
    layer.build((None, 3, 4, 5))
    assert layer.output_shape == (None, 60)
    y, ctx = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, x.reshape(2, -1))
    assert y[0, 1] == x[0, 0, 0, 1]  # channels vary fastest (NHWC in C order)
    assert np.shares_memory(y, x)    # a view: no copy between layers
    dy = np.random.default_rng(0).standard_normal((2, 60)).astype(np.float32)
    dx, grads = layer.backward(dy, ctx)
    assert grads == ()
    np.testing.assert_array_equal(dx, dy.reshape(2, 3, 4, 5))


def test_dropout_is_the_identity_outside_training():
    layer = Dropout(0.5)
    x = np.ones((8, 10), dtype=np.float32)
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_dropout_in_training_is_inverted_and_unbiased():
    rate = 0.3
    layer = Dropout(rate)
    x = np.ones((200, 500), dtype=np.float32)
    layer.build((None, 500))
    y, ctx = layer.forward(x, training=True)
    kept = y != 0
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)  # survivors scaled up
    assert abs(kept.mean() - (1 - rate)) < 0.01
    assert abs(y.mean() - 1.0) < 0.02                                # expected value kept
    dy = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    dx, grads = layer.backward(dy, ctx)
    assert grads == ()
    np.testing.assert_allclose(dx, dy * y, rtol=1e-6)                # same mask and scale


def test_dropout_masks_differ_between_calls_but_follow_the_seed():
    def masks():
        fastcnn.utils.set_random_seed(7)
        layer = Dropout(0.5)
        layer.build((None, 50))
        x = np.ones((4, 50), dtype=np.float32)
        return layer.forward(x, training=True)[0], layer.forward(x, training=True)[0]

    a1, a2 = masks()
    b1, b2 = masks()
    assert not np.array_equal(a1, a2)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    seeded = [Dropout(0.5, seed=3), Dropout(0.5, seed=3)]
    outs = [d(np.ones((3, 20)), training=True) for d in seeded]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_dropout_noise_shape_drops_whole_feature_maps():
    layer = Dropout(0.5, noise_shape=(None, 1, 1, 6))
    x = np.ones((3, 4, 4, 6), dtype=np.float32)
    y = np.asarray(layer(x, training=True))
    per_map = y.reshape(3, 16, 6)
    assert (per_map == per_map[:, :1, :]).all()


def test_dropout_rate_zero_is_the_identity_in_training():
    layer = Dropout(0.0)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(layer(x, training=True), x)


@pytest.mark.parametrize("backend", backends.available())
def test_activation_layer(backend):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with fastcnn.use_backend(backend):
        np.testing.assert_allclose(Activation("relu")(x), np.maximum(x, 0))
        s = Activation("softmax")(x)
        np.testing.assert_allclose(s.sum(axis=1), 1, rtol=1e-6)
        np.testing.assert_array_equal(Activation("linear")(x), x)
        np.testing.assert_array_equal(Activation(None)(x), x)


def test_activation_softmax_on_4d_input_is_over_channels():
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    layer = Activation("softmax")
    y, ctx = layer.forward(x, training=True)
    np.testing.assert_allclose(y.sum(axis=-1), 1, rtol=1e-6)
    dx, grads = layer.backward(np.ones_like(x), ctx)
    assert grads == ()
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, 0, atol=1e-6)  # softmax sums to 1: constant dy -> 0


def test_input_declares_the_shape():
    # Keras 3: a symbolic tensor whose shape holds the batch dimension, made by InputLayer
    inp = Input((28, 28, 1))
    assert isinstance(inp, fastcnn.graph.KerasTensor)
    assert inp.shape == (None, 28, 28, 1)
    layer = inp.node.layer
    assert isinstance(layer, InputLayer) and layer.batch_shape == (None, 28, 28, 1)
    assert Input(shape=5).shape == (None, 5)
