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
    (y1, ctx1), (y2, ctx2) = plain.forward(x, training=True), reg.forward(x, training=True)
    np.testing.assert_array_equal(y1, y2)         # the forward pass is unchanged
    dy = rng.standard_normal(y1.shape)
    (dx1, grads1), (dx2, grads2) = plain.backward(dy, ctx1), reg.backward(dy, ctx2)
    np.testing.assert_array_equal(dx1, dx2)
    # backward gives the data gradients only: the model adds the regularizers' once per step
    assert len(grads1) == len(grads2) == 2
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_array_equal(g1, g2)
    kept = [g.copy() for g in grads2]
    total = reg.add_regularization_gradients(grads2)
    assert isinstance(total, tuple) and len(total) == 2
    for g1, g2, w in zip(grads1, total, reg.weights):
        np.testing.assert_allclose(g2, g1 + 0.5 * w, rtol=1e-12)
    for g, k in zip(grads2, kept):
        np.testing.assert_array_equal(g, k)       # the backward's arrays are not changed
    for g, g1 in zip(plain.add_regularization_gradients(grads1), grads1):
        np.testing.assert_array_equal(g, g1)      # no regularizer: nothing added
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


@pytest.mark.parametrize("which", ["kernel", "bias", "both"])
def test_add_regularization_gradients_covers_only_the_regularized_weights(which, rng):
    kreg = regularizers.L2(0.3) if which in ("kernel", "both") else None
    breg = regularizers.L2(0.7) if which in ("bias", "both") else None
    layer = Dense(3, kernel_regularizer=kreg, bias_regularizer=breg,
                  bias_initializer="he_uniform")
    layer.build((None, 4), "float64")
    grads = (rng.standard_normal((4, 3)), rng.standard_normal(3))
    dw, db = layer.add_regularization_gradients(grads)
    np.testing.assert_allclose(dw, grads[0] + (0.6 * layer.kernel if kreg else 0), rtol=1e-12)
    np.testing.assert_allclose(db, grads[1] + (1.4 * layer.bias if breg else 0), rtol=1e-12)
    nobias = Conv2D(2, 2, use_bias=False, kernel_regularizer=regularizers.L2(0.1))
    nobias.build((None, 3, 3, 1), "float64")
    g = rng.standard_normal((2, 2, 1, 2))
    (dk,) = nobias.add_regularization_gradients((g,))
    np.testing.assert_allclose(dk, g + 0.2 * nobias.kernel, rtol=1e-12)


def _sgd_step(model, x, y, lr):
    model.compile(optimizer=fastcnn.optimizers.SGD(learning_rate=lr), loss="mse")
    before = model.get_weights()
    loss = model.train_on_batch(x, y)
    return loss, before, model.get_weights()


def _shared_model(reg):
    x = fastcnn.Input((4,))
    d = Dense(4, kernel_regularizer=reg, bias_regularizer=reg, activation="tanh",
              bias_initializer="he_uniform")
    return fastcnn.Model(x, d(d(x))), d


def _sequential_model(reg):
    m = fastcnn.Sequential([Dense(4, kernel_regularizer=reg, bias_regularizer=reg,
                                  activation="tanh", bias_initializer="he_uniform",
                                  input_shape=(4,)),
                            Dense(4)])
    return m, m.layers[0]


@pytest.mark.parametrize("make", [_sequential_model, _shared_model],
                         ids=["sequential", "shared_layer"])
def test_train_on_batch_adds_two_l2_w_once_per_layer(make, rng):
    """SGD: w_reg' - w_plain' = -lr * 2 * l2 * w, from the same start (the data gradients
    are the same): the regularizer's gradient joins once per layer and step, also for a
    layer called twice in the graph (its data gradient sums both calls)."""
    previous = fastcnn.floatx()
    fastcnn.set_floatx("float64")
    try:
        l2, lr = 0.25, 0.1
        fastcnn.utils.set_random_seed(3)
        plain, _ = make(None)
        fastcnn.utils.set_random_seed(3)
        regd, layer = make(regularizers.L2(l2))
        regd.set_weights(plain.get_weights())
        x, y = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
        penalty = l2 * sum(float(np.sum(w.astype(np.float64) ** 2)) for w in layer.weights)
        loss_plain, start, end_plain = _sgd_step(plain, x, y, lr)
        loss_regd, start_r, end_regd = _sgd_step(regd, x, y, lr)
        assert loss_regd == pytest.approx(loss_plain + penalty, rel=1e-12)  # counted once
        regularized = {id(w) for w in layer.weights}
        for i, w in enumerate(regd.weights):
            expected = end_plain[i]
            if id(w) in regularized:
                expected = end_plain[i] - lr * 2 * l2 * start[i]
            np.testing.assert_allclose(end_regd[i], expected, rtol=1e-12, atol=1e-15,
                                       err_msg=f"weight {i}")
            if id(w) in regularized:  # and the step did move it by the data gradient
                assert np.any(end_plain[i] != start[i])
    finally:
        fastcnn.set_floatx(previous)
