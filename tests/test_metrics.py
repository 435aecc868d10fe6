"""Accuracy metrics and the resolution of 'accuracy' for the compiled loss."""
import numpy as np
import pytest

import fastcnn
from fastcnn import losses, metrics
from fastcnn.layers import Dense


def test_values():
    p = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0, 0, 1])
    assert metrics.sparse_categorical_accuracy(labels, p) == 0.5
    assert metrics.categorical_accuracy(np.eye(3)[labels], p) == 0.5
    assert metrics.binary_accuracy(np.array([[1], [0], [1]]), np.array([[0.6], [0.4], [0.5]])) \
        == pytest.approx(2 / 3)


def test_state_accumulates_over_batches_by_sample_count():
    m = metrics.SparseCategoricalAccuracy()
    m.update_state(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]]))  # 1 of 2
    m.update_state(np.array([0, 0, 0, 0]), np.tile([1.0, 0.0], (4, 1)))  # 4 of 4
    assert m.result() == pytest.approx(5 / 6)
    m.reset_state()
    assert m.result() == 0.0


def test_binary_accuracy_on_logits_thresholds_at_zero():
    m = metrics.BinaryAccuracy()
    m.update_state(np.array([[1.0], [0.0]]), np.array([[0.3], [-0.2]]), logits=True)
    assert m.result() == 1.0


@pytest.mark.parametrize("loss,output,expected", [
    ("sparse_categorical_crossentropy", (None, 10), metrics.SparseCategoricalAccuracy),
    ("categorical_crossentropy", (None, 10), metrics.CategoricalAccuracy),
    ("binary_crossentropy", (None, 1), metrics.BinaryAccuracy),
    ("mse", (None, 1), metrics.BinaryAccuracy),
    ("mse", (None, 4), metrics.CategoricalAccuracy),
])
@pytest.mark.parametrize("name", ["accuracy", "acc", "Accuracy"])
def test_accuracy_resolves_for_the_loss(loss, output, expected, name):
    m = metrics.get(name, losses.get(loss), output)
    assert type(m) is expected and m.name == name


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"\['accuracy', 'acc', 'sparse_categorical_accuracy'"):
        metrics.get("f1")


@pytest.mark.parametrize("name", ["acc", "accuracy", "sparse_categorical_accuracy"])
def test_history_uses_the_metric_name_as_given(name):
    fastcnn.utils.set_random_seed(0)
    model = fastcnn.Sequential([Dense(3, activation="softmax", input_shape=(2,))])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=[name])
    x = np.random.default_rng(0).standard_normal((20, 2))
    y = np.arange(20) % 3
    h = model.fit(x, y, epochs=2, verbose=0, validation_split=0.2)
    assert set(h.history) == {"loss", name, "val_loss", "val_" + name}
    assert model.metrics_names == ["loss", name]
    loss, acc = model.evaluate(x, y, verbose=0)
    pred = model.predict(x).argmax(1)
    assert acc == pytest.approx((pred == y).mean())
