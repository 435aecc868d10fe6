"""fastcnn.layers.fusion: which layer pairs a model runs as one step, and that the fused
step computes exactly what the two layers compute one after the other."""
import numpy as np
import pytest

import fastcnn
from fastcnn.layers import (Activation, AveragePooling2D, Conv2D, Dense, Flatten,
                            MaxPooling2D, fusion)


def _kinds(steps):
    return [type(s).__name__ for s in steps]


def test_relu_then_max_pool_pairs_are_found():
    layers = [Conv2D(4, 3, activation="relu"), MaxPooling2D(),       # fused
              Conv2D(4, 3, activation="tanh"), MaxPooling2D(),       # not ReLU
              Conv2D(4, 3, activation="relu"), AveragePooling2D(),   # not a max
              Conv2D(4, 3), Activation("relu"), MaxPooling2D(),      # Activation layer
              Flatten(), Dense(3, activation="relu")]                # nothing after
    steps = fusion.steps(layers)
    assert _kinds(steps) == ["ReluAfterMaxPool", "Conv2D", "MaxPooling2D", "Conv2D",
                             "AveragePooling2D", "Conv2D", "ReluAfterMaxPool", "Flatten",
                             "Dense"]
    assert steps[0].layers == (layers[0], layers[1])
    assert [layer for s in steps for layer in fusion.layers_of(s)] == layers


def _model(pool, seed=3):
    fastcnn.set_random_seed(seed)
    model = fastcnn.Sequential([
        Conv2D(3, 2, activation="relu", input_shape=(9, 8, 2)), pool,
        Conv2D(4, 2), Activation("relu"), MaxPooling2D(2, strides=1),
        Flatten(), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("pool", [
    lambda: MaxPooling2D(), lambda: MaxPooling2D(3, strides=2, padding="same"),
    lambda: MaxPooling2D((2, 3), strides=1)], ids=["2x2", "3x3-s2-same", "overlapping"])
def test_fused_steps_give_the_same_outputs_and_gradients(monkeypatch, pool):
    """Bitwise: the fused step only reorders two select operations (max, ReLU)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9, 8, 2))
    # Exact zeros: ReLU outputs tie at 0 in windows, the case the ordering argument covers.
    x[:, ::3] = 0.0
    y = np.array([0, 2, 1, 1])
    results = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(fusion, "steps", lambda layers: list(layers))
        with fastcnn.use_backend("reference"):
            model = _model(pool())  # same seed: same weights in both runs
            plan = model._prepare()
            assert ("ReluAfterMaxPool" in _kinds(plan["body"])) == fuse
            pred = model.predict(x.astype(np.float32), verbose=0)
            loss = model.train_on_batch(x.astype(np.float32), y)
            grads = [g.copy() for layer in plan["train_layers"] for g in layer.grads]
        results.append((pred, loss, grads, model.get_weights()))
    (p1, l1, g1, w1), (p2, l2, g2, w2) = results
    np.testing.assert_array_equal(p1, p2)
    assert l1 == l2
    for a, b in zip(g1 + w1, g2 + w2):
        np.testing.assert_array_equal(a, b)


def test_first_trainable_layer_inside_a_fused_step_skips_its_input_gradient(monkeypatch):
    model = _model(MaxPooling2D())
    calls = []
    conv = model.layers[0]
    original = conv.backward

    def spy(dy, need_dx=True):
        calls.append(need_dx)
        return original(dy, need_dx)

    monkeypatch.setattr(conv, "backward", spy)
    model.train_on_batch(np.ones((2, 9, 8, 2), "float32"), np.array([0, 1]))
    assert calls == [False]


@pytest.mark.parametrize("backend", ["auto", "cython"])
def test_conv_and_pool_run_as_one_kernel_with_the_same_results(monkeypatch, backend):
    """Where the backend has conv2d_maxpool2d_forward, the fused step calls it (the conv
    output is never stored) and the layers' own backwards run on its contexts."""
    if backend not in fastcnn.backends.available():
        pytest.skip(f"backend {backend!r} is not available here")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 12, 11, 2)).astype(np.float32)
    y = np.array([0, 2, 1])

    def build():
        fastcnn.set_random_seed(4)
        model = fastcnn.Sequential([
            Conv2D(16, 3, activation="relu", input_shape=(12, 11, 2)), MaxPooling2D(),
            Conv2D(32, 3, padding="same", activation="relu"), MaxPooling2D(),
            Flatten(), Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy")
        return model

    calls = []
    B = fastcnn.backends.get(backend)
    original = B.conv2d_maxpool2d_forward

    def spy(*args):
        out = original(*args)
        calls.append(out is not None)
        return out

    results = []
    for fuse in (True, False):
        with fastcnn.use_backend(backend):
            model = build()
            if fuse:
                monkeypatch.setattr(B, "conv2d_maxpool2d_forward", spy)
            else:
                monkeypatch.setattr(fusion.ReluAfterMaxPool, "_conv_pool", lambda *a: None)
            pred = model.predict(x, verbose=0)
            loss = model.train_on_batch(x, y)
            results.append((pred, loss, model.get_weights()))
    assert calls and all(calls), "the fused kernel must run (and accept these shapes)"
    (p1, l1, w1), (p2, l2, w2) = results
    np.testing.assert_array_equal(p1, p2)
    assert l1 == l2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
