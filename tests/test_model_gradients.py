"""Whole-model gradient check through train_on_batch (issue section 3).

In float64, ``train_on_batch`` with ``SGD(learning_rate=1.0)`` moves every weight by
exactly minus its gradient, so ``w_before - w_after`` IS the gradient the model computed:
layers' backwards, the (fused) loss gradient, the gradient gathering and the optimizer
all included. It must equal the central-difference gradient of the loss that
``test_on_batch`` reports at the original weights, for every weight (kernels and biases).
"""
import numpy as np
import pytest

import fastcnn
from fastcnn import gradcheck, losses
from fastcnn.layers import AveragePooling2D, Conv2D, Dense, Flatten, MaxPooling2D

N, INPUT = 3, (11, 10, 2)

# (loss, head units, head activation, target kind)
CASES = {
    "sparse_ce_softmax": ("sparse_categorical_crossentropy", 3, "softmax", "labels"),
    "categorical_ce_softmax": ("categorical_crossentropy", 3, "softmax", "onehot"),
    "binary_ce_sigmoid": ("binary_crossentropy", 2, "sigmoid", "binary"),
    "mse_softmax": ("mse", 3, "softmax", "real"),
    # not fused: the probability-space losses (Keras's clipping path) through a sigmoid
    "categorical_ce_probabilities": ("categorical_crossentropy", 3, "sigmoid", "onehot"),
    "sparse_ce_probabilities": ("sparse_categorical_crossentropy", 3, "sigmoid", "labels"),
    "ce_from_logits": (losses.CategoricalCrossentropy(from_logits=True), 3, None, "onehot"),
}


@pytest.fixture
def float64():
    previous = fastcnn.floatx()
    fastcnn.set_floatx("float64")
    try:
        yield
    finally:
        fastcnn.set_floatx(previous)


def build(units, activation):
    return fastcnn.Sequential([
        Conv2D(3, (3, 2), padding="same", activation="relu", bias_initializer="he_uniform",
               input_shape=INPUT),
        MaxPooling2D(2),                                                     # 5 x 5 x 3
        Conv2D(4, (2, 3), strides=2, padding="same", activation="sigmoid",
               bias_initializer="he_uniform"),                               # 3 x 3 x 4
        AveragePooling2D(2, padding="same"),     # 2 x 2 x 4, partial windows at the edge
        Flatten(),
        Dense(5, activation="tanh", bias_initializer="he_uniform"),
        Dense(units, activation=activation, bias_initializer="he_uniform"),
    ])


def targets(kind, units, rng):
    if kind == "labels":
        return np.array([0, 2, 1])
    if kind == "onehot":
        return np.eye(units)[[1, 0, 2]]
    if kind == "binary":
        return rng.integers(0, 2, (N, units)).astype(float)
    return rng.random((N, units))


@pytest.mark.parametrize("backend", fastcnn.backends.available())
@pytest.mark.parametrize("case", list(CASES))
def test_train_on_batch_gradients_match_numerical_gradients(case, backend, float64):
    loss, units, activation, kind = CASES[case]
    fastcnn.utils.set_random_seed(11)
    rng = np.random.default_rng(3)
    with fastcnn.use_backend(backend):
        model = build(units, activation)
        model.compile(optimizer=fastcnn.optimizers.SGD(learning_rate=1.0), loss=loss)
        x = gradcheck.off_kinks((N,) + INPUT, rng)
        y = targets(kind, units, rng)
        weights = model.weights
        assert len(weights) == 8 and all(w.dtype == np.float64 for w in weights)

        before = model.get_weights()
        loss_before = model.train_on_batch(x, y)
        grads = [b - a for b, a in zip(before, model.get_weights())]
        model.set_weights(before)
        assert model.test_on_batch(x, y) == pytest.approx(loss_before, rel=1e-12)
        assert all(np.any(g != 0) for g in grads), "a weight got no gradient at all"

        gradcheck.check_scalar_gradient(lambda: model.test_on_batch(x, y), weights, grads,
                                        rtol=1e-6, atol=1e-9)
