"""fastcnn.layers.fusion: which layer pairs a model runs as one step, and that the fused
step computes exactly what the two layers compute one after the other."""
import numpy as np
import pytest

import fastcnn
from fastcnn.layers import (Activation, AveragePooling2D, Conv2D, Dense, Flatten,
                            MaxPooling2D, fusion)


def _step_names(model):
    return [s.name for s in model._prepare().program.steps]


def test_relu_then_max_pool_pairs_are_found():
    layers = [Conv2D(4, 3, activation="relu", input_shape=(30, 30, 1)), MaxPooling2D(),  # fused
              Conv2D(4, 3, activation="tanh"), MaxPooling2D(),       # not ReLU
              Conv2D(4, 3, activation="relu"), AveragePooling2D(),   # not a max
              Conv2D(4, 1), Activation("relu"), MaxPooling2D(),      # Activation layer
              Flatten(), Dense(3, activation="relu")]                # nothing after
    model = fastcnn.Sequential(layers)
    model.compile("sgd", "mse")
    names = _step_names(model)
    fused = [n for n in names if n.startswith("ReluAfterMaxPool")]
    assert fused == [f"ReluAfterMaxPool({layers[0].name!r}, {layers[1].name!r})",
                     f"ReluAfterMaxPool({layers[7].name!r}, {layers[8].name!r})"]
    assert len(names) == len(layers) - 2


def test_a_relu_output_read_twice_is_not_fused():
    """The pool must be the producer's only consumer: another reader needs the ReLU'd,
    unpooled tensor."""
    x = fastcnn.Input((8, 8, 1))
    h = Conv2D(2, 3, activation="relu")(x)
    pooled = Flatten()(MaxPooling2D()(h))
    other = Flatten()(h)
    out = Dense(2)(fastcnn.layers.Concatenate()([pooled, other]))
    model = fastcnn.Model(x, out)
    model.compile("sgd", "mse")
    assert not any(n.startswith("ReluAfterMaxPool") for n in _step_names(model))
    single = fastcnn.Model(x, Dense(2)(pooled))
    single.compile("sgd", "mse")
    assert any(n.startswith("ReluAfterMaxPool") for n in _step_names(single))


def _model(pool, seed=3, activation="relu"):
    fastcnn.set_random_seed(seed)
    model = fastcnn.Sequential([
        Conv2D(3, 2, activation=activation, input_shape=(9, 8, 2)), pool,
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
            monkeypatch.setattr(fusion, "plan", lambda *args: [])
        with fastcnn.use_backend("reference"):
            model = _model(pool())  # same seed: same weights in both runs
            assert any(n.startswith("ReluAfterMaxPool") for n in _step_names(model)) == fuse
            pred = model.predict(x.astype(np.float32), verbose=0)
            seen = []
            apply = model.optimizer.apply
            monkeypatch.setattr(model.optimizer, "apply", lambda grads, variables: (
                seen.extend(g.copy() for g in grads), apply(grads, variables))[1])
            loss = model.train_on_batch(x.astype(np.float32), y)
        results.append((pred, loss, seen, model.get_weights()))
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

    def spy(dy, ctx, need_dx=True):
        calls.append(need_dx)
        return original(dy, ctx, need_dx)

    monkeypatch.setattr(conv, "backward", spy)
    model.train_on_batch(np.ones((2, 9, 8, 2), "float32"), np.array([0, 1]))
    assert calls == [False]


@pytest.mark.parametrize("backend", ["auto", "cython"])
def test_conv_and_pool_run_as_one_kernel_with_the_same_results(monkeypatch, backend):
    """Where the backend has conv2d_maxpool2d_forward, the fused step calls it (the conv
    output is never stored) and the layers' own backwards run on its contexts."""
    if backend not in fastcnn.backends.available():
        pytest.skip(f"backend {backend!r} is not available here")
    # Bitwise equality holds for the direct fused kernel; the second conv (16 -> 32, 3x3)
    # would otherwise run by Winograd, which rounds differently (compared within float32
    # tolerance in tests/backends/test_winograd.py).
    monkeypatch.setenv("FASTCNN_WINOGRAD", "0")
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
                monkeypatch.setattr(B, "conv2d_maxpool2d_forward", lambda *a: None)
            pred = model.predict(x, verbose=0)
            loss = model.train_on_batch(x, y)
            results.append((pred, loss, model.get_weights()))
    assert calls and all(calls), "the fused kernel must run (and accept these shapes)"
    (p1, l1, w1), (p2, l2, w2) = results
    np.testing.assert_array_equal(p1, p2)
    assert l1 == l2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_relu6_is_fused_too_with_bitwise_equal_results(monkeypatch):
    """ReLU6 is piecewise linear with slopes 0 and 1: the same argument as ReLU's."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 9, 8, 2)) * 8).astype(np.float32)   # some values above 6
    y = np.array([0, 2, 1, 1])
    results = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(fusion, "plan", lambda *args: [])
        with fastcnn.use_backend("reference"):
            model = _model(MaxPooling2D(), activation="relu6")
            assert any(n.startswith("ReluAfterMaxPool") for n in _step_names(model)) == fuse
            pred = model.predict(x, verbose=0)
            loss = model.train_on_batch(x, y)
        results.append((pred, loss, model.get_weights()))
    (p1, l1, w1), (p2, l2, w2) = results
    np.testing.assert_array_equal(p1, p2)
    assert l1 == l2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_leaky_relu_is_not_fused():
    """Only the model's second pair (Activation('relu') + pool) is fused."""
    fused = [n for n in _step_names(_model(MaxPooling2D(), activation="leaky_relu"))
             if n.startswith("ReluAfterMaxPool")]
    assert len(fused) == 1 and "conv2d" not in fused[0].split(",")[0]
    assert len([n for n in _step_names(_model(MaxPooling2D(), activation="relu"))
                if n.startswith("ReluAfterMaxPool")]) == 2
