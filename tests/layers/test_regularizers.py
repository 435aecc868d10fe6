"""fastcnn.regularizers (Keras's L2 / l2) and kernel_regularizer / bias_regularizer."""
import json

import numpy as np
import pytest

import fastcnn
from fastcnn import regularizers
from fastcnn.layers import Conv2D, Dense, Flatten


def test_l2_value_gradient_and_keras_names():
    w = np.array([[1.0, -2.0], [3.0, 0.5]])
    reg = regularizers.L2(0.1)
    assert reg(w) == pytest.approx(0.1 * (1 + 4 + 9 + 0.25))
    np.testing.assert_allclose(reg.gradient(w), 0.2 * w)
    assert regularizers.l2 is regularizers.L2           # keras.regularizers.l2(0.01)
    assert regularizers.L2().l2 == 0.01                 # Keras's default factor
    assert regularizers.L2(0).l2 == 0.0
    assert regularizers.L2(0.1).get_config() == {"l2": 0.1}


def test_l2_gradient_keeps_float32():
    w = np.ones((3, 2), dtype=np.float32)
    assert regularizers.L2(0.5).gradient(w).dtype == np.float32
    assert isinstance(regularizers.L2(0.5)(w), float)


def test_get_accepts_none_names_instances_and_serialized_dicts():
    assert regularizers.get(None) is None
    reg = regularizers.L2(0.3)
    assert regularizers.get(reg) is reg
    assert regularizers.get("l2") == regularizers.L2(0.01)
    assert regularizers.get("L2") == regularizers.L2(0.01)
    assert regularizers.get(regularizers.serialize(reg)) == reg
    assert json.loads(json.dumps(regularizers.serialize(reg))) == {
        "class_name": "L2", "config": {"l2": 0.3}}
    assert regularizers.serialize(None) is None


@pytest.mark.parametrize("bad", ["l3", 0.01, {"class_name": "L3"}, {"class_name": "L2",
                                                                    "config": {"l1": 1}}])
def test_get_rejects_unknown_identifiers_naming_the_argument(bad):
    with pytest.raises(ValueError, match="bias_regularizer"):
        regularizers.get(bad, argument="bias_regularizer")
    with pytest.raises(ValueError, match="kernel_regularizer"):
        Dense(2, kernel_regularizer=bad)


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf"), "0.1", True])
def test_l2_rejects_bad_factors(bad):
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        regularizers.L2(bad)


@pytest.mark.parametrize("make,shape", [
    (lambda reg: Dense(3, kernel_regularizer=reg, bias_regularizer=reg,
                       bias_initializer="he_uniform"), (4, 5)),
    (lambda reg: Conv2D(2, (2, 3), kernel_regularizer=reg, bias_regularizer=reg,
                        bias_initializer="he_uniform"), (2, 4, 5, 3)),
])
def test_layer_grads_get_two_l2_w_and_the_penalty_is_reported(make, shape, rng):
    fastcnn.utils.set_random_seed(1)
    plain = make(None)
    plain.build((None,) + shape[1:], "float64")
    fastcnn.utils.set_random_seed(1)
    reg = make(regularizers.L2(0.25))
    reg.build((None,) + shape[1:], "float64")
    for a, b in zip(plain.weights, reg.weights):
        np.testing.assert_array_equal(a, b)
    x = rng.standard_normal(shape)
    y1, y2 = plain.forward(x, training=True), reg.forward(x, training=True)
    np.testing.assert_array_equal(y1, y2)         # the forward pass is unchanged
    dy = rng.standard_normal(y1.shape)
    dx1, dx2 = plain.backward(dy), reg.backward(dy)
    np.testing.assert_array_equal(dx1, dx2)
    for g1, g2, w in zip(plain.grads, reg.grads, reg.weights):
        np.testing.assert_allclose(g2, g1 + 0.5 * w, rtol=1e-12)
    assert plain.regularization_loss() == 0.0
    assert reg.regularization_loss() == pytest.approx(
        0.25 * sum(float(np.sum(w ** 2)) for w in reg.weights))


def test_model_loss_includes_the_penalty_in_train_test_and_evaluate(rng):
    def model(reg):
        fastcnn.utils.set_random_seed(4)
        m = fastcnn.Sequential([Flatten(input_shape=(3, 3, 1)),
                                Dense(4, kernel_regularizer=reg, activation="tanh"),
                                Dense(2, activation="softmax")])
        m.compile(optimizer=fastcnn.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        return m
    x, y = rng.standard_normal((6, 3, 3, 1)).astype(np.float32), np.arange(6) % 2
    plain, regd = model(None), model(regularizers.L2(0.5))
    penalty = 0.5 * float(np.sum(regd.layers[1].kernel.astype(np.float64) ** 2))
    assert regd.test_on_batch(x, y) == pytest.approx(plain.test_on_batch(x, y) + penalty,
                                                     rel=1e-6)
    assert regd.evaluate(x, y, verbose=0) == pytest.approx(
        plain.evaluate(x, y, verbose=0) + penalty, rel=1e-6)
    assert regd.train_on_batch(x, y) == pytest.approx(plain.train_on_batch(x, y) + penalty,
                                                      rel=1e-6)
    # and the update shrinks the kernel by 2 * l2 * lr * w beyond the data gradient
    assert np.sum(regd.layers[1].kernel ** 2) < np.sum(plain.layers[1].kernel ** 2)


def test_frozen_regularized_layer_is_not_updated(rng):
    m = fastcnn.Sequential([Flatten(input_shape=(2, 2, 1)),
                            Dense(3, kernel_regularizer=regularizers.L2(1.0)),
                            Dense(2, activation="softmax")])
    m.layers[1].trainable = False
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = m.layers[1].get_weights()
    m.fit(rng.standard_normal((4, 2, 2, 1)), np.array([0, 1, 1, 0]), epochs=2, verbose=0)
    for a, b in zip(before, m.layers[1].get_weights()):
        np.testing.assert_array_equal(a, b)
