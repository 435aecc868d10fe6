"""Losses: Keras's values, clipping, fused logits paths, gradients, target handling."""
import numpy as np
import pytest

import fastcnn
from fastcnn import backends, losses
from fastcnn.layers import Dense

EPS = 1e-7
REF = backends.get("reference")


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numeric_grad(f, p, h=1e-6):
    g = np.zeros_like(p)
    for i in np.ndindex(p.shape):
        old = p[i]
        p[i] = old + h
        up = f(p)
        p[i] = old - h
        down = f(p)
        p[i] = old
        g[i] = (up - down) / (2 * h)
    return g


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    return logits, labels, np.eye(4)[labels]


def test_names_and_aliases():
    assert isinstance(losses.get("mse"), losses.MeanSquaredError)
    assert isinstance(losses.get("Mean_Squared_Error"), losses.MeanSquaredError)
    assert isinstance(losses.get("sparse_categorical_crossentropy"),
                      losses.SparseCategoricalCrossentropy)
    loss = losses.BinaryCrossentropy(from_logits=True)
    assert losses.get(loss) is loss
    with pytest.raises(ValueError, match=r"\['categorical_crossentropy', "):
        losses.get("hinge")


def test_keras_style_call_on_probabilities(data):
    logits, labels, onehot = data
    p = softmax(logits)
    expected = -np.log(p[np.arange(5), labels]).mean()
    assert losses.SparseCategoricalCrossentropy()(labels, p) == pytest.approx(expected, rel=1e-6)
    assert losses.CategoricalCrossentropy()(onehot, p) == pytest.approx(expected, rel=1e-6)
    assert losses.categorical_crossentropy(onehot, logits, from_logits=True) == pytest.approx(
        expected, rel=1e-6)
    assert losses.sparse_categorical_crossentropy(labels, logits, from_logits=True) == \
        pytest.approx(expected, rel=1e-6)
    t = (logits > 0).astype(float)
    s = 1 / (1 + np.exp(-logits))
    bce = -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean()
    assert losses.binary_crossentropy(t, s) == pytest.approx(bce, rel=1e-6)
    assert losses.BinaryCrossentropy(from_logits=True)(t, logits) == pytest.approx(bce, rel=1e-6)
    assert losses.mean_squared_error(t, s) == pytest.approx(((t - s) ** 2).mean(), rel=1e-12)


def test_probability_losses_clip_like_keras():
    p = np.array([[0.0, 1.0], [1.0, 0.0]])
    y = np.array([0, 0])
    # the true class has probability 0 in row 0: Keras clips to 1e-7
    expected = (-np.log(EPS) + np.log(1 + EPS) + -np.log(1 - EPS) + np.log(1 + EPS)) / 2
    assert losses.SparseCategoricalCrossentropy()(y, p) == pytest.approx(expected, rel=1e-6)
    onehot = np.eye(2)[y]
    assert losses.CategoricalCrossentropy()(onehot, p) == pytest.approx(
        (-np.log(EPS) - np.log(1 - EPS)) / 2, rel=1e-6)
    t = np.array([[1.0], [0.0]])
    pb = np.array([[0.0], [1.0]])
    assert losses.BinaryCrossentropy()(t, pb) == pytest.approx(-np.log(EPS), rel=1e-6)


@pytest.mark.parametrize("loss,targets", [
    (losses.CategoricalCrossentropy(), "onehot"),
    (losses.SparseCategoricalCrossentropy(), "labels"),
    (losses.BinaryCrossentropy(), "binary"),
    (losses.MeanSquaredError(), "binary"),
])
def test_probability_path_gradients_are_numerically_right(loss, targets, data):
    logits, labels, onehot = data
    p = np.ascontiguousarray(softmax(logits) * 0.9 + 0.02)  # inside the clip range
    y = {"onehot": onehot, "labels": labels, "binary": (logits > 0).astype(float)}[targets]
    y = loss.prepare_targets(y, (None, 4), np.float64)
    value, grad = loss.compute(REF, p, y, logits=False)
    numeric = numeric_grad(lambda q: loss.compute(REF, q, y, logits=False)[0], p.copy())
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_clipped_entries_get_no_gradient():
    loss = losses.BinaryCrossentropy()
    p = np.array([[0.0, 0.5, 1.0]])
    y = loss.prepare_targets(np.array([[1.0, 1.0, 0.0]]), (None, 3), np.float64)
    _, grad = loss.compute(REF, p, y, logits=False)
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[0, 1] != 0


@pytest.mark.parametrize("backend", backends.available())
def test_logits_paths_use_the_fused_ops(backend, data):
    logits, labels, onehot = data
    be = backends.get(backend)
    n = len(labels)
    for loss, y in [(losses.SparseCategoricalCrossentropy(), labels),
                    (losses.CategoricalCrossentropy(), onehot)]:
        value, grad = loss.compute(be, logits, loss.prepare_targets(y, (None, 4), np.float64),
                                   logits=True)
        assert float(value) == pytest.approx(
            -np.log(softmax(logits)[np.arange(n), labels]).mean(), rel=1e-10)
        np.testing.assert_allclose(grad, (softmax(logits) - onehot) / n, rtol=1e-10, atol=1e-14)


def test_float32_stays_float32(data):
    logits, labels, onehot = data
    p = softmax(logits).astype(np.float32)
    for loss, y in [(losses.SparseCategoricalCrossentropy(), labels),
                    (losses.CategoricalCrossentropy(), onehot),
                    (losses.BinaryCrossentropy(), onehot), (losses.MeanSquaredError(), onehot)]:
        yy = loss.prepare_targets(y, (None, 4), np.float32)
        for logit_path in (False, True):
            value, grad = loss.compute(REF, p, yy, logits=logit_path)
            assert grad.dtype == np.float32, (loss, logit_path)
            assert np.asarray(value).dtype == np.float32, (loss, logit_path)


def test_target_shapes_accepted_like_keras():
    sparse = losses.SparseCategoricalCrossentropy()
    assert sparse.prepare_targets(np.array([[1], [2]]), (None, 3), np.float32).shape == (2,)
    assert sparse.prepare_targets(np.array([1.0, 2.0]), (None, 3), np.float32).dtype == np.intp
    binary = losses.BinaryCrossentropy()
    assert binary.prepare_targets(np.array([0, 1]), (None, 1), np.float32).shape == (2, 1)


def model_with_head(activation, loss):
    fastcnn.utils.set_random_seed(0)
    model = fastcnn.Sequential([Dense(3, activation=activation, input_shape=(2,))])
    model.compile("sgd", loss)
    # huge logits: only a loss computed from the logits stays exact
    model.set_weights([np.array([[40.0, -40.0, 0.0], [0.0, 0.0, 0.0]]), np.zeros(3)])
    return model


def test_softmax_head_with_crossentropy_is_fused_like_keras():
    x = np.array([[1.0, 0.0]])
    y = np.array([1])  # logit 40 for class 0, -40 for class 1: true loss is about 80
    fused = model_with_head("softmax", "sparse_categorical_crossentropy")
    assert fused._prepare()["fused"]
    assert fused.evaluate(x, y, verbose=0) == pytest.approx(80.0, rel=1e-5)
    from_logits = model_with_head(None, losses.SparseCategoricalCrossentropy(from_logits=True))
    assert from_logits.evaluate(x, y, verbose=0) == pytest.approx(80.0, rel=1e-5)
    # a non-softmax head is taken as probabilities: clipped at 1e-7 as Keras does
    relu = model_with_head("relu", "sparse_categorical_crossentropy")
    assert not relu._prepare()["fused"]
    # relu output (40, 0, 0) clips to (1 - 1e-7, 1e-7, 1e-7); Keras 3 then renormalises
    assert relu.evaluate(x, y, verbose=0) == pytest.approx(
        np.log(1 + EPS) - np.log(EPS), rel=1e-5)
    # predict still returns probabilities
    np.testing.assert_allclose(fused.predict(x).sum(), 1.0, rtol=1e-6)


def test_an_activation_layer_head_is_fused_too():
    model = fastcnn.Sequential([Dense(3, input_shape=(2,)), fastcnn.layers.Activation("softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.set_weights([np.array([[40.0, -40.0, 0.0], [0.0, 0.0, 0.0]]), np.zeros(3)])
    assert model._prepare()["fused"]
    assert model.evaluate(np.array([[1.0, 0.0]]), np.array([1]), verbose=0) == pytest.approx(
        80.0, rel=1e-5)
    assert np.isfinite(model.train_on_batch(np.array([[1.0, 0.0]]), np.array([1])))


def test_sigmoid_head_with_binary_crossentropy_is_fused():
    fastcnn.utils.set_random_seed(0)
    model = fastcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(1,))])
    model.compile("sgd", "binary_crossentropy")
    model.set_weights([np.array([[50.0]]), np.zeros(1)])
    assert model._prepare()["fused"]
    assert model.evaluate(np.array([[1.0]]), np.array([0]), verbose=0) == pytest.approx(
        50.0, rel=1e-5)
    mse = fastcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(1,))])
    mse.compile("sgd", "mse")
    assert not mse._prepare()["fused"]
