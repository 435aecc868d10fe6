"""Metrics: Keras's numbers (fixtures from Keras 3.15) over several update_state calls with
sample weights, the model's path (logits), exact sums of counts, names and 'accuracy'."""
import json
import os

import fastcnn
import numpy as np
import pytest

from fastcnn import losses, metrics
from fastcnn.layers import Dense

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras", "metrics.json")
with open(FIXTURES) as _f:
    KERAS = json.load(_f)["cases"]


def case_id(c):
    return c["class"] + "(" + ",".join(f"{k}={v}" for k, v in c["kwargs"].items()) + ")"


def feed(m, batch):
    sw = None if batch["sample_weight"] is None else np.array(batch["sample_weight"],
                                                              np.float32)
    if "values" in batch:
        m.update_state(np.array(batch["values"], np.float32), sample_weight=sw)
    else:
        m.update_state(np.array(batch["y_true"], np.float32),
                       np.array(batch["y_pred"], np.float32), sample_weight=sw)


@pytest.mark.parametrize("case", KERAS, ids=[f"{i}-{case_id(c)}" for i, c in enumerate(KERAS)])
def test_results_match_keras_after_each_update(case):
    m = getattr(metrics, case["class"])(**case["kwargs"])
    for batch, expected in zip(case["batches"], case["results"]):
        feed(m, batch)
        np.testing.assert_allclose(np.asarray(m.result(), dtype=np.float64), expected,
                                   rtol=1e-5, atol=1e-6)
    m.reset_state()
    assert np.all(np.asarray(m.result()) == 0)


def test_fixtures_cover_the_keras_metrics():
    covered = {c["class"] for c in KERAS}
    assert covered >= {cls.__name__ for cls in metrics._CLASSES}


@pytest.mark.parametrize("case", KERAS, ids=[f"{i}-{case_id(c)}" for i, c in enumerate(KERAS)])
def test_summed_counts_give_the_single_process_result(case):
    """What fastcnn.distributed does: each process updates its own copy, the counts are
    summed (set_counts); the result must be the one of a single metric that saw all."""
    whole = getattr(metrics, case["class"])(**case["kwargs"])
    parts = [getattr(metrics, case["class"])(**case["kwargs"]) for _ in case["batches"]]
    for batch, part in zip(case["batches"], parts):
        feed(whole, batch)
        feed(part, batch)
    counts = [p.counts() for p in parts]
    assert all(c.dtype == np.float64 and c.ndim == 1 for c in counts)
    parts[0].set_counts(sum(counts))
    np.testing.assert_allclose(np.asarray(parts[0].result()), np.asarray(whole.result()),
                               rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="set_counts needs"):
        parts[0].set_counts(np.zeros(len(counts[0]) + 1))


def test_counts_are_keras_sufficient_statistics():
    acc = metrics.BinaryAccuracy()
    acc.update_state(np.array([[1], [0], [1]]), np.array([[0.6], [0.4], [0.2]]))
    np.testing.assert_array_equal(acc.counts(), [2.0, 3.0])        # total, count
    p = metrics.Precision()
    p.update_state(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.1, 0.2]))
    np.testing.assert_array_equal(p.counts(), [1.0, 1.0])          # tp, fp
    auc = metrics.AUC(num_thresholds=5)
    auc.update_state(np.array([1, 0]), np.array([0.9, 0.3]))
    assert auc.counts().shape == (20,)                              # tp, fp, tn, fn


# ------------------------------------------------------------------------ the model path
def test_update_model_output_applies_the_fused_activation():
    logits = np.array([[2.0, -1.0, 0.5], [-0.3, 0.1, 0.0]])
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    y = np.eye(3)[[0, 2]]
    loss = losses.CategoricalCrossentropy()       # fused with a softmax head
    fused = metrics.get("mae", loss, (None, 3))
    fused.update_model_output(y, logits, True)
    direct = metrics.MeanAbsoluteError()
    direct.update_state(y, probs)
    assert fused.result() == pytest.approx(direct.result(), rel=1e-12)
    # arg-max metrics do not need the probabilities
    acc = metrics.get("accuracy", loss, (None, 3))
    acc.update_model_output(y, logits, True)
    assert acc.result() == 0.5


def test_binary_metrics_on_a_fused_sigmoid_threshold_at_zero_logits():
    loss = losses.BinaryCrossentropy()
    m = metrics.get("accuracy", loss, (None, 1))
    m.update_model_output(np.array([[1.0], [0.0]]), np.array([[0.3], [-0.2]]), True)
    assert m.result() == 1.0
    auc = metrics.get("auc", loss, (None, 1))
    auc.update_model_output(np.array([[1.0], [0.0], [1.0]]), np.array([[3.0], [-2.0], [0.5]]),
                            True)
    assert auc.result() == pytest.approx(1.0)


def test_a_from_logits_loss_shows_metrics_the_logits_as_keras_does():
    """Keras's metrics see the model's output: with from_logits=True that is the logits,
    so BinaryAccuracy thresholds them at 0.5 (Keras's known behaviour)."""
    loss = losses.BinaryCrossentropy(from_logits=True)
    m = metrics.get("accuracy", loss, (None, 1))
    m.update_model_output(np.array([[1.0], [1.0]]), np.array([[0.3], [0.7]]), True)
    assert m.result() == 0.5


def test_sparse_labels_feed_precision_recall_and_auc_as_one_hot():
    loss = losses.SparseCategoricalCrossentropy()
    y = loss.prepare_targets(np.array([0, 2, 1]), (None, 3), np.float32)
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]], np.float32)
    m = metrics.get("precision", loss, (None, 3))
    m.update_model_output(y, p, False)
    ref = metrics.Precision()
    ref.update_state(np.eye(3)[[0, 2, 1]], p)
    assert m.result() == ref.result() == pytest.approx(2 / 3)


def test_keras_call_is_update_then_result():
    m = metrics.SparseCategoricalAccuracy()
    assert m(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]])) == 0.5
    assert m(np.array([0, 0]), np.array([[1.0, 0.0], [1.0, 0.0]])) == 0.75   # stateful
    m.reset_state()
    assert m.result() == 0.0


def test_functions_return_per_sample_values_like_keras():
    p = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0, 0, 1])
    np.testing.assert_array_equal(metrics.sparse_categorical_accuracy(labels, p), [1, 1, 0, 0])
    np.testing.assert_array_equal(metrics.categorical_accuracy(np.eye(3)[labels], p),
                                  [1, 1, 0, 0])
    np.testing.assert_array_equal(
        metrics.binary_accuracy(np.array([[1], [0], [1]]), np.array([[0.6], [0.4], [0.5]])),
        [[1], [1], [0]])
    np.testing.assert_array_equal(metrics.top_k_categorical_accuracy(
        np.eye(3)[labels], p, k=1), [1, 1, 0, 0])
    # k=2: rows 2 and 3 tie for second place: in, as TensorFlow's in_top_k counts them
    np.testing.assert_array_equal(metrics.sparse_top_k_categorical_accuracy(labels, p, k=2),
                                  [1, 1, 1, 1])


# ------------------------------------------------------------------------------ names
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


@pytest.mark.parametrize("name,cls", [
    ("mae", metrics.MeanAbsoluteError), ("mse", metrics.MeanSquaredError),
    ("root_mean_squared_error", metrics.RootMeanSquaredError), ("auc", metrics.AUC),
    ("AUC", metrics.AUC), ("Precision", metrics.Precision), ("recall", metrics.Recall),
    ("top_k_categorical_accuracy", metrics.TopKCategoricalAccuracy),
    ("sparse_top_k_categorical_accuracy", metrics.SparseTopKCategoricalAccuracy),
    ("cosine_similarity", metrics.CosineSimilarity), ("kl_divergence", metrics.KLDivergence),
    ("log_cosh_error", metrics.LogCoshError), ("bce", metrics.BinaryCrossentropy),
    ("huber", metrics.LossMetric), ("kld", metrics.LossMetric),
    ("binary_focal_crossentropy", metrics.LossMetric),
])
def test_keras_metric_names_and_loss_names_resolve(name, cls):
    m = metrics.get(name)
    assert type(m) is cls and m.name == name


def test_get_accepts_instances_classes_losses_and_callables():
    auc = metrics.AUC(curve="PR")
    assert metrics.get(auc) is auc
    assert isinstance(metrics.get(metrics.Recall), metrics.Recall)
    assert isinstance(metrics.get(metrics.binary_accuracy), metrics.BinaryAccuracy)
    m = metrics.get(losses.Huber(delta=0.5))
    assert isinstance(m, metrics.LossMetric) and m.name == "huber_loss"

    def diff(y_true, y_pred):
        return np.abs(np.asarray(y_true) - np.asarray(y_pred)).max(axis=-1)

    w = metrics.get(diff)
    w.update_state(np.zeros((2, 2)), np.array([[1.0, 3.0], [0.0, 1.0]]))
    assert w.name == "diff" and w.result() == 2.0


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"\['accuracy', 'acc', 'sparse_categorical_accuracy'"):
        metrics.get("f1")


@pytest.mark.parametrize("make,match", [
    (lambda: metrics.Precision(thresholds=1.5), "thresholds"),
    (lambda: metrics.Recall(top_k=0), "k must be a positive int"),
    (lambda: metrics.Recall(class_id=-1), "class_id"),
    (lambda: metrics.AUC(curve="ROCK"), "curve"),
    (lambda: metrics.AUC(summation_method="trapezoid"), "summation_method"),
    (lambda: metrics.AUC(num_thresholds=1), "num_thresholds"),
    (lambda: metrics.BinaryAccuracy(threshold=1.0), "threshold"),
    (lambda: metrics.TopKCategoricalAccuracy(k=0), "k must be"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mean_metrics_refuse_the_model_path():
    with pytest.raises(ValueError, match="update_state"):
        metrics.Mean().update_model_output(np.zeros(2), np.zeros((2, 1)), False)


def test_configs_round_trip():
    for m in [metrics.BinaryAccuracy(threshold=0.3), metrics.TopKCategoricalAccuracy(k=3),
              metrics.Precision(thresholds=[0.2, 0.7], class_id=1), metrics.Recall(top_k=2),
              metrics.AUC(num_thresholds=50, curve="PR"), metrics.AUC(thresholds=[0.1, 0.5]),
              metrics.BinaryCrossentropy(from_logits=True, label_smoothing=0.1),
              metrics.RootMeanSquaredError(), metrics.CosineSimilarity()]:
        again = type(m).from_config(m.get_config())
        assert again.get_config() == m.get_config()


# --------------------------------------------------------------------------- the model
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


def test_compiled_metrics_match_the_metric_on_predictions():
    """metrics=['mae', 'auc', Precision()] on a fused sigmoid model: evaluate's values are
    the metrics of predict's output (the probabilities, not the logits)."""
    fastcnn.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.standard_normal(40) > 0).astype(np.float32)
    model = fastcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(3,))])
    model.compile("sgd", "binary_crossentropy",
                  metrics=["mae", "auc", metrics.Precision(name="p")])
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    logs = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    for name, m in [("mae", metrics.MeanAbsoluteError()), ("auc", metrics.AUC()),
                    ("p", metrics.Precision())]:
        m.update_state(y, pred)
        assert logs[name] == pytest.approx(m.result(), rel=1e-5, abs=1e-6), name


def test_update_model_output_reads_a_device_output_on_the_host():
    from fastcnn import backends
    if "cuda" not in backends.available():
        pytest.skip("the cuda backend (or Numba's CUDA simulator) is not available here")
    from fastcnn import _device
    backends.get("cuda")
    logits = np.array([[2.0], [-1.0], [0.5]], np.float32)
    y = np.array([[1.0], [0.0], [0.0]], np.float32)
    on_device = metrics.get("auc", losses.BinaryCrossentropy(), (None, 1))
    on_device.update_model_output(y, _device._kernels().to_device(logits, "a test"), True)
    on_host = metrics.get("auc", losses.BinaryCrossentropy(), (None, 1))
    on_host.update_model_output(y, logits, True)
    np.testing.assert_array_equal(on_device.counts(), on_host.counts())
    assert on_device.result() == pytest.approx(1.0)


def test_update_model_output_takes_sample_weights_for_weighted_metrics():
    m = metrics.get("mae", losses.MeanSquaredError(), (None, 1))
    m.update_model_output(np.array([[0.0], [0.0]]), np.array([[1.0], [3.0]]), False,
                          sample_weight=np.array([3.0, 1.0]))
    assert m.result() == pytest.approx((3 * 1 + 1 * 3) / 4)
