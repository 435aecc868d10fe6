"""Backprop stops at the first layer that trains, and that layer skips its input gradient."""
import numpy as np

import fastcnn
from fastcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Rescaling


def _model(first_trainable=True):
    model = fastcnn.Sequential([
        Rescaling(1 / 255, input_shape=(6, 6, 1)), Conv2D(2, 3), MaxPooling2D(2), Flatten(),
        Dense(3, activation="softmax")])
    model.layers[1].trainable = first_trainable
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def _spy_backward(monkeypatch, layer, calls):
    original = layer.backward

    def backward(dy, ctx, need_dx=True):
        calls.append((layer.name, need_dx))
        return original(dy, ctx, need_dx)

    monkeypatch.setattr(layer, "backward", backward)


def test_layers_before_the_first_trainable_one_get_no_backward(monkeypatch):
    fastcnn.set_random_seed(0)
    model = _model()
    calls = []
    for layer in model.layers:
        _spy_backward(monkeypatch, layer, calls)
    x = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 1)).astype("float32")
    model.train_on_batch(x, np.array([0, 1, 2, 1]))
    names = [layer.name for layer in model.layers]
    # Dense, Flatten, MaxPooling2D need their dx; the conv (first trainable) does not;
    # Rescaling (nothing to learn, nothing upstream) is never asked.
    assert calls == [(names[4], True), (names[3], True), (names[2], True), (names[1], False)]


def test_a_frozen_first_conv_moves_the_stop_to_the_dense_layer(monkeypatch):
    fastcnn.set_random_seed(0)
    model = _model(first_trainable=False)
    calls = []
    for layer in model.layers:
        _spy_backward(monkeypatch, layer, calls)
    before = model.layers[1].get_weights()
    model.train_on_batch(np.ones((2, 6, 6, 1), "float32"), np.array([0, 2]))
    assert calls == [(model.layers[4].name, False)]
    for a, b in zip(before, model.layers[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_model_with_nothing_to_train_runs_no_backward(monkeypatch):
    model = fastcnn.Sequential([Rescaling(2.0, input_shape=(3,)), Dense(2)])
    model.layers[1].trainable = False
    model.compile("sgd", "mse")
    calls = []
    for layer in model.layers:
        _spy_backward(monkeypatch, layer, calls)
    loss = model.train_on_batch(np.ones((2, 3), "float32"), np.zeros((2, 2), "float32"))
    assert calls == [] and np.isfinite(loss)
