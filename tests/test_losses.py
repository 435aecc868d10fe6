"""Losses: Keras's numbers (fixtures from Keras 3.15), exact gradients (gradcheck), sample
weights, label smoothing, the fused logits paths, names, callables and targets."""
import json
import os
import zlib

import fastcnn
import numpy as np
import pytest

from fastcnn import backends, gradcheck, losses, ops
from fastcnn.autodiff import Tensor
from fastcnn.layers import Dense

EPS = 1e-7
REF = backends.get("reference")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras", "losses.json")
with open(FIXTURES) as _f:
    KERAS = json.load(_f)["cases"]
FUNCTION_OF = {cls: fn for fn, cls in losses._FUNCTIONS.items()}


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def case_id(c):
    kw = ",".join(f"{k}={v}" for k, v in c["kwargs"].items())
    return f"{c['class']}({kw}){'-weighted' if c['sample_weight'] else ''}"


# ------------------------------------------------------------------------ Keras's numbers
@pytest.mark.parametrize("case", KERAS, ids=[f"{i}-{case_id(c)}" for i, c in enumerate(KERAS)])
def test_values_gradients_and_functions_match_keras(case):
    """Reduced value, gradient w.r.t. y_pred (tf.GradientTape) and per-sample function
    values, float32, as Keras computes them."""
    cls = getattr(losses, case["class"])
    loss = cls(**case["kwargs"])
    y_true = np.array(case["y_true"], np.float32)
    y_pred = np.array(case["y_pred"], np.float32)
    sw = None if case["sample_weight"] is None else np.array(case["sample_weight"], np.float32)
    with fastcnn.GradientTape() as tape:
        p = Tensor(y_pred)
        tape.watch(p)
        value = loss(y_true, p, sample_weight=sw)
        total = ops.sum(value)
    grad = tape.gradient(total, p)
    assert isinstance(value, Tensor) and value.dtype == np.float32
    np.testing.assert_allclose(np.asarray(value), case["value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), case["grad"], rtol=1e-5, atol=1e-6)
    fn = FUNCTION_OF[cls]
    kwargs = {k: v for k, v in case["kwargs"].items() if k not in ("reduction", "name")}
    per_sample = fn(y_true, y_pred, **kwargs)
    assert per_sample.shape == (len(y_true),)
    np.testing.assert_allclose(np.asarray(per_sample), case["per_sample"], rtol=1e-5,
                               atol=1e-6)


def test_fixtures_cover_every_loss_class():
    assert {c["class"] for c in KERAS} == {cls.__name__ for cls in losses._CLASSES}


# ------------------------------------------------------------------------ exact gradients
def _targets(kind, rng, shape):
    n, k = shape
    if kind == "onehot":
        return np.eye(k)[rng.integers(0, k, n)]
    if kind == "labels":
        return rng.integers(0, k, n)
    if kind == "binary":
        return rng.integers(0, 2, shape).astype(np.float64)
    if kind == "soft":
        return rng.dirichlet(np.ones(k), n)
    if kind == "counts":
        return rng.poisson(2.0, shape).astype(np.float64)
    return rng.standard_normal(shape)


def _outputs(kind, rng, shape):
    if kind == "prob":       # inside the clip range
        return rng.dirichlet(np.ones(shape[-1]), shape[0]) * 0.9 + 0.02
    if kind == "positive":
        return rng.uniform(0.2, 3.0, shape)
    return rng.standard_normal(shape) * 2.0


GRAD_CASES = [
    # (loss, target kind, output kind, logits)
    (losses.MeanSquaredError(), "normal", "normal", False),
    (losses.MeanAbsoluteError(), "normal", "normal", False),
    (losses.Huber(), "normal", "normal", False),
    (losses.Huber(delta=0.3), "normal", "normal", False),
    (losses.LogCosh(), "normal", "normal", False),
    (losses.KLDivergence(), "soft", "prob", False),
    (losses.Poisson(), "counts", "positive", False),
    (losses.Hinge(), "binary", "normal", False),
    (losses.SquaredHinge(), "normal", "normal", False),
    (losses.CategoricalHinge(), "onehot", "normal", False),
    (losses.CosineSimilarity(), "normal", "normal", False),
    (losses.CategoricalCrossentropy(), "onehot", "prob", False),
    (losses.CategoricalCrossentropy(label_smoothing=0.1), "soft", "prob", False),
    (losses.CategoricalCrossentropy(label_smoothing=0.2), "onehot", "normal", True),
    (losses.SparseCategoricalCrossentropy(), "labels", "prob", False),
    (losses.SparseCategoricalCrossentropy(), "labels", "normal", True),
    (losses.SparseCategoricalCrossentropy(ignore_class=1), "labels", "prob", False),
    (losses.BinaryCrossentropy(), "binary", "prob", False),
    (losses.BinaryCrossentropy(label_smoothing=0.1), "binary", "normal", True),
    (losses.CategoricalFocalCrossentropy(), "onehot", "prob", False),
    (losses.CategoricalFocalCrossentropy(alpha=0.5, gamma=1.5, label_smoothing=0.1),
     "onehot", "normal", True),
    (losses.BinaryFocalCrossentropy(), "binary", "prob", False),
    (losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.4, gamma=3.0,
                                    label_smoothing=0.1), "binary", "normal", True),
    (losses.MeanAbsoluteError(reduction="sum"), "normal", "normal", False),
    (losses.Huber(reduction="mean_with_sample_weight"), "normal", "normal", False),
]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss,target,output,logits", GRAD_CASES,
                         ids=[f"{i}-{c[0]!r}-{'logits' if c[3] else 'out'}"
                              for i, c in enumerate(GRAD_CASES)])
def test_compute_gradient_is_exact(loss, target, output, logits, weighted):
    rng = np.random.default_rng(zlib.crc32(f"{loss!r}{target}{weighted}".encode()))
    shape = (5, 4)
    out = _outputs(output, rng, shape)
    y = loss.prepare_targets(_targets(target, rng, shape), (None, 4), np.float64)
    w = rng.uniform(0.1, 2.0, shape[0]) if weighted else None
    value, d = loss.compute(REF, out, y, logits, sample_weight=w)
    assert d.dtype == np.float64 and d.shape == out.shape and np.asarray(value).shape == ()
    gradcheck.check_scalar_gradient(
        lambda: loss.compute(REF, out, y, logits, sample_weight=w)[0], [out], [d])


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss,target", [
    (losses.CategoricalCrossentropy(), "onehot"),
    (losses.CategoricalCrossentropy(label_smoothing=0.1), "onehot"),
    (losses.SparseCategoricalCrossentropy(), "labels"),
    (losses.BinaryCrossentropy(), "binary"),
    (losses.BinaryCrossentropy(label_smoothing=0.2), "binary"),
], ids=lambda v: repr(v) if isinstance(v, losses.Loss) else v)
def test_logits_paths_are_exact_on_every_backend(backend, loss, target, weighted):
    """The logits paths call the backend's fused ops (unweighted): checked on each."""
    rng = np.random.default_rng(3)
    out = rng.standard_normal((6, 3)) * 2
    y = loss.prepare_targets(_targets(target, rng, (6, 3)), (None, 3), np.float64)
    w = rng.uniform(0.1, 2.0, 6) if weighted else None
    value, d = loss.compute(backend, out, y, True, sample_weight=w)
    ref_value, ref_d = loss.compute(REF, out, y, True, sample_weight=w)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-12)
    np.testing.assert_allclose(d, ref_d, rtol=1e-10, atol=1e-15)
    gradcheck.check_scalar_gradient(
        lambda: loss.compute(backend, out, y, True, sample_weight=w)[0], [out], [d])


def test_sample_weight_is_keras_sum_over_batch_size():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    w = np.array([0.0, 1.0, 2.0, 0.5])
    per = ((p - t) ** 2).mean(-1)
    loss = losses.MeanSquaredError()
    assert float(loss(t, p, sample_weight=w)) == pytest.approx((w * per).sum() / 4)
    assert float(loss(t, p, sample_weight=w[:, None])) == pytest.approx((w * per).sum() / 4)
    value, d = loss.compute(REF, p, t, False, sample_weight=w)
    np.testing.assert_allclose(d, 2 * (p - t) * w[:, None] / 12)
    with pytest.raises(ValueError, match="sample_weight has 3 entries.*4 samples"):
        loss.compute(REF, p, t, False, sample_weight=w[:3])
    # reduction='none' gives the weighted per-sample losses; 'sum' their sum
    none = losses.MeanSquaredError(reduction="none")(t, p, sample_weight=w)
    np.testing.assert_allclose(np.asarray(none), w * per)
    assert float(losses.MeanSquaredError(reduction="sum")(t, p, sample_weight=w)) == \
        pytest.approx((w * per).sum())


def test_label_smoothing_is_applied_per_batch_and_leaves_targets_alone():
    loss = losses.CategoricalCrossentropy(label_smoothing=0.3)
    y = loss.prepare_targets(np.eye(3)[[0, 1]], (None, 3), np.float64)
    p = softmax(np.array([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]]))
    value, _ = loss.compute(REF, p, y, False)
    smooth = y * 0.7 + 0.1
    assert float(value) == pytest.approx(-(smooth * np.log(p)).sum(-1).mean(), rel=1e-12)
    np.testing.assert_array_equal(y, np.eye(3)[[0, 1]])   # the metrics see the user's
    b = losses.BinaryCrossentropy(label_smoothing=0.2)
    t = np.array([[1.0], [0.0]])
    s = 1 / (1 + np.exp(-np.array([[0.3], [-1.2]])))
    ts = t * 0.8 + 0.1
    assert float(b(t, s)) == pytest.approx(
        -(ts * np.log(s) + (1 - ts) * np.log(1 - s)).mean(), rel=1e-6)


def test_probability_losses_clip_like_keras():
    p = np.array([[0.0, 1.0], [1.0, 0.0]])
    y = np.array([0, 0])
    # the true class has probability 0 in row 0: Keras clips to 1e-7
    expected = (-np.log(EPS) + np.log(1 + EPS) + -np.log(1 - EPS) + np.log(1 + EPS)) / 2
    assert float(losses.SparseCategoricalCrossentropy()(y, p)) == pytest.approx(
        expected, rel=1e-6)
    onehot = np.eye(2)[y]
    assert float(losses.CategoricalCrossentropy()(onehot, p)) == pytest.approx(
        (-np.log(EPS) - np.log(1 - EPS)) / 2, rel=1e-6)
    t = np.array([[1.0], [0.0]])
    pb = np.array([[0.0], [1.0]])
    assert float(losses.BinaryCrossentropy()(t, pb)) == pytest.approx(-np.log(EPS), rel=1e-6)


def test_clipped_entries_get_no_gradient():
    loss = losses.BinaryCrossentropy()
    p = np.array([[0.0, 0.5, 1.0]])
    y = loss.prepare_targets(np.array([[1.0, 1.0, 0.0]]), (None, 3), np.float64)
    _, grad = loss.compute(REF, p, y, logits=False)
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[0, 1] != 0


def test_float32_stays_float32():
    rng = np.random.default_rng(1)
    p = softmax(rng.standard_normal((5, 4))).astype(np.float32)
    onehot = np.eye(4)[[0, 3, 1, 1, 2]]
    w = np.ones(5, np.float32)
    for cls in losses._CLASSES:
        loss = cls()
        y = np.array([0, 3, 1, 1, 2]) if cls is losses.SparseCategoricalCrossentropy else onehot
        yy = loss.prepare_targets(y, (None, 4), np.float32)
        for logit_path in (False, True):
            for sw in (None, w):
                value, grad = loss.compute(REF, p, yy, logit_path, sample_weight=sw)
                assert grad.dtype == np.float32, (loss, logit_path, sw)
                assert np.asarray(value).dtype == np.float32, (loss, logit_path, sw)


# ----------------------------------------------------------------- Keras-style calls
def test_call_returns_a_differentiable_scalar_tensor():
    rng = np.random.default_rng(2)
    t, p = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    loss = losses.Huber(delta=0.5)
    with fastcnn.GradientTape() as tape:
        pt = Tensor(p)
        tape.watch(pt)
        value = loss(t, pt)
    g = tape.gradient(value, pt)
    assert isinstance(value, Tensor) and value.shape == ()
    np.testing.assert_allclose(g, loss.compute(REF, p, t, False)[1])
    # outside a tape: a plain value that float() reads
    assert float(loss(t, p)) == pytest.approx(float(np.asarray(value)))


def test_functions_return_per_sample_losses_like_keras():
    rng = np.random.default_rng(3)
    t, p = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(losses.mean_absolute_error(t, p), np.abs(p - t).mean(-1))
    np.testing.assert_allclose(losses.mae(t, p), np.abs(p - t).mean(-1))
    assert losses.mse(t, p).shape == (4,)
    with fastcnn.GradientTape() as tape:
        pt = Tensor(p)
        tape.watch(pt)
        total = ops.mean(losses.log_cosh(t, pt))
    np.testing.assert_allclose(tape.gradient(total, pt), np.tanh(p - t) / 12)


def test_sparse_ignore_class_masks_entries_like_keras():
    p = softmax(np.array([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1], [0.0, 1.0, 0.0]]))
    y = np.array([0, 1, 2])
    loss = losses.SparseCategoricalCrossentropy(ignore_class=1)
    per = -np.log(p[[0, 2], [0, 2]])
    assert float(loss(y, p)) == pytest.approx(per.mean(), rel=1e-6)
    values = losses.sparse_categorical_crossentropy(y, p, ignore_class=1)
    np.testing.assert_allclose(values, [per[0], 0.0, per[1]], rtol=1e-6)


# ------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name", list(losses.KNOWN) + [
    "MAE", "KLD", "BCE", "Huber", "KLDivergence", "LogCosh", "CategoricalFocalCrossentropy",
    "BinaryFocalCrossentropy", "CosineSimilarity", "SquaredHinge"])
def test_every_keras_name_resolves(name):
    loss = losses.get(name)
    assert isinstance(loss, losses.Loss)
    assert type(loss) in losses._CLASSES


def test_get_accepts_instances_classes_and_functions():
    assert isinstance(losses.get("mse"), losses.MeanSquaredError)
    assert isinstance(losses.get("Mean_Squared_Error"), losses.MeanSquaredError)
    assert isinstance(losses.get("kld"), losses.KLDivergence)
    loss = losses.BinaryCrossentropy(from_logits=True)
    assert losses.get(loss) is loss
    assert isinstance(losses.get(losses.Huber), losses.Huber)
    assert isinstance(losses.get(losses.huber), losses.Huber)
    assert isinstance(losses.get(losses.mae), losses.MeanAbsoluteError)
    with pytest.raises(ValueError, match=r"\['categorical_crossentropy', .*'huber'"):
        losses.get("no_such_loss")
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.get(3)


def test_a_callable_is_differentiated_with_the_tape():
    def my_mse(y_true, y_pred):
        return ops.mean((y_pred - y_true) ** 2, axis=-1)

    loss = losses.get(my_mse)
    assert isinstance(loss, losses.LossFunctionWrapper) and loss.name == "my_mse"
    rng = np.random.default_rng(4)
    out, t = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    w = rng.uniform(0.5, 1.5, 5)
    y = loss.prepare_targets(t, (None, 3), np.float64)
    for sw in (None, w):
        value, d = loss.compute(REF, out, y, False, sample_weight=sw)
        ref_value, ref_d = losses.MeanSquaredError().compute(REF, out, y, False,
                                                             sample_weight=sw)
        assert float(value) == pytest.approx(float(ref_value), rel=1e-12)
        np.testing.assert_allclose(d, ref_d, rtol=1e-12)
    assert float(loss(t, out)) == pytest.approx(((out - t) ** 2).mean())


def test_a_callable_without_a_gradient_gets_a_clear_error():
    def numpy_loss(y_true, y_pred):
        return np.mean((np.asarray(y_pred) - np.asarray(y_true)) ** 2)

    loss = losses.get(numpy_loss)
    y = np.zeros((2, 1))
    with pytest.raises(ValueError, match="'numpy_loss'.*gradient cannot be formed"):
        loss.compute(REF, np.ones((2, 1)), y, False)

    def constant(y_true, y_pred):
        return ops.sum(y_true)

    with pytest.raises(ValueError, match="'constant' does not depend on y_pred"):
        losses.get(constant).compute(REF, np.ones((2, 1)), y, False)


def test_a_loss_subclass_with_call_works_as_in_keras():
    class Scaled(losses.Loss):
        def call(self, y_true, y_pred):
            return ops.mean(ops.abs(y_pred - y_true), axis=-1) * 3.0

    loss = Scaled()
    assert loss.name == "scaled"
    t, p = np.array([[1.0, 2.0]]), np.array([[2.0, 0.0]])
    assert float(loss(t, p)) == pytest.approx(4.5)
    _, d = loss.compute(REF, p, t, False)
    np.testing.assert_allclose(d, [[1.5, -1.5]])


@pytest.mark.parametrize("make,match", [
    (lambda: losses.CategoricalCrossentropy(label_smoothing=1.5), "label_smoothing"),
    (lambda: losses.BinaryCrossentropy(label_smoothing=-0.1), "label_smoothing"),
    (lambda: losses.Huber(delta=-1.0), "delta"),
    (lambda: losses.MeanAbsoluteError(reduction="avg"), "reduction"),
    (lambda: losses.BinaryFocalCrossentropy(gamma=-1), "gamma"),
    (lambda: losses.CategoricalCrossentropy(axis=1), "axis"),
    (lambda: losses.SparseCategoricalCrossentropy(ignore_class=1.5), "ignore_class"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_round_trip():
    for cls in losses._CLASSES:
        loss = cls()
        again = cls.from_config(loss.get_config())
        assert again.get_config() == loss.get_config() and repr(again) == repr(loss)
    loss = losses.BinaryFocalCrossentropy(True, 0.3, 1.0, label_smoothing=0.1)
    assert losses.BinaryFocalCrossentropy.from_config(loss.get_config()).get_config() == \
        loss.get_config()


# ------------------------------------------------------------------------------ targets
def test_target_shapes_accepted_like_keras():
    sparse = losses.SparseCategoricalCrossentropy()
    assert sparse.prepare_targets(np.array([[1], [2]]), (None, 3), np.float32).shape == (2,)
    assert sparse.prepare_targets(np.array([1.0, 2.0]), (None, 3), np.float32).dtype == np.intp
    binary = losses.BinaryCrossentropy()
    assert binary.prepare_targets(np.array([0, 1]), (None, 1), np.float32).shape == (2, 1)
    assert losses.Huber().prepare_targets(np.array([0.5, 1]), (None, 1), np.float32).shape \
        == (2, 1)
    with pytest.raises(ValueError, match="huber_loss needs targets shaped like"):
        losses.Huber().prepare_targets(np.zeros((2, 3)), (None, 2), np.float32)
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.LogCosh().prepare_targets(np.array([[np.nan]]), (None, 1), np.float32)


# --------------------------------------------------------------------------- the model
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
    assert fused._prepare().logits[0]
    assert fused.evaluate(x, y, verbose=0) == pytest.approx(80.0, rel=1e-5)
    from_logits = model_with_head(None, losses.SparseCategoricalCrossentropy(from_logits=True))
    assert from_logits.evaluate(x, y, verbose=0) == pytest.approx(80.0, rel=1e-5)
    # a non-softmax head is taken as probabilities: clipped at 1e-7 as Keras does
    relu = model_with_head("relu", "sparse_categorical_crossentropy")
    assert not relu._prepare().logits[0]
    # relu output (40, 0, 0) clips to (1 - 1e-7, 1e-7, 1e-7); Keras 3 then renormalises
    assert relu.evaluate(x, y, verbose=0) == pytest.approx(
        np.log(1 + EPS) - np.log(EPS), rel=1e-5)
    # predict still returns probabilities
    np.testing.assert_allclose(fused.predict(x).sum(), 1.0, rtol=1e-6)


def test_sigmoid_head_with_binary_crossentropy_is_fused():
    fastcnn.utils.set_random_seed(0)
    model = fastcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(1,))])
    model.compile("sgd", "binary_crossentropy")
    model.set_weights([np.array([[50.0]]), np.zeros(1)])
    assert model._prepare().logits[0]
    assert model.evaluate(np.array([[1.0]]), np.array([0]), verbose=0) == pytest.approx(
        50.0, rel=1e-5)
    mse = fastcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(1,))])
    mse.compile("sgd", "mse")
    assert not mse._prepare().logits[0]


@pytest.mark.parametrize("loss", ["mae", "huber", "log_cosh", "poisson", "hinge",
                                  "squared_hinge", "binary_focal_crossentropy",
                                  lambda t, p: ops.mean((p - t) ** 2, axis=-1)],
                         ids=lambda v: v if isinstance(v, str) else "callable")
def test_compiled_losses_train(loss):
    fastcnn.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    model = fastcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(3,))])
    model.compile("sgd", loss)
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert np.isfinite(after) and after < before


def test_device_outputs_run_on_the_host_and_return_device_gradients():
    """On a device backend (the CUDA simulator here): probability-space losses, weighted
    losses and callables read a host copy of the output; the gradient goes back to the
    device; the unweighted logits paths run the backend's fused kernels."""
    if "cuda" not in backends.available():
        pytest.skip("the cuda backend (or Numba's CUDA simulator) is not available here")
    from fastcnn import _device
    cuda = backends.get("cuda")
    rng = np.random.default_rng(5)
    out = rng.standard_normal((4, 3)).astype(np.float32)
    prob = softmax(out).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    cases = [(losses.MeanSquaredError(), np.eye(3)[[0, 1, 2, 0]], out, False),
             (losses.Huber(), np.eye(3)[[0, 1, 2, 0]], out, False),
             (losses.CategoricalFocalCrossentropy(), np.eye(3)[[0, 1, 2, 0]], prob, False),
             (losses.CategoricalCrossentropy(label_smoothing=0.1), np.eye(3)[[0, 1, 2, 0]],
              out, True),
             (losses.SparseCategoricalCrossentropy(), np.array([0, 1, 2, 0]), out, True),
             (losses.BinaryCrossentropy(), np.eye(3)[[0, 1, 2, 0]], out, True),
             (losses.get(lambda t, p: ops.mean(ops.abs(p - t), axis=-1)),
              np.eye(3)[[0, 1, 2, 0]], out, False)]
    for loss, y, o, logits in cases:
        y = loss.prepare_targets(y, (None, 3), np.float32)
        device_out = _device._kernels().to_device(o, "a test output")
        for sw in (None, w):
            value, d = loss.compute(cuda, device_out, y, logits, sample_weight=sw)
            ref_value, ref_d = loss.compute(REF, o, y, logits, sample_weight=sw)
            assert _device.is_device_array(d), (loss, sw)
            assert float(value) == pytest.approx(float(ref_value), rel=1e-5), (loss, sw)
            np.testing.assert_allclose(d.copy_to_host(), ref_d, rtol=1e-5, atol=1e-7)
