"""ReLU, LeakyReLU, PReLU, ELU, Softmax: Keras 3's numbers (fixtures from
tests/fixtures/keras/make_activations.py) on every CPU backend, gradient checks over the
input and PReLU's alpha (float64, random dy), the stateless contract, configs, bad
arguments, and a small model that trains, saves and loads with them."""
import json
import os

import fastcnn
import numpy as np
import pytest

from fastcnn import backends, constraints, gradcheck, regularizers
from fastcnn.layers import ELU, PReLU, ReLU, LeakyReLU, Softmax

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = np.load(os.path.join(HERE, "fixtures", "keras", "activations.npz"))
with open(os.path.join(HERE, "fixtures", "keras", "activations.json")) as _f:
    LAYERS = json.load(_f)["layers"]
CPU_BACKENDS = [b for b in backends.available() if b != "cuda"]
CLASSES = {"ReLU": ReLU, "LeakyReLU": LeakyReLU, "PReLU": PReLU, "ELU": ELU,
           "Softmax": Softmax}
F32 = dict(rtol=2e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-14)
# TensorFlow's leaky_relu takes its slope as a float32 attribute, float64 data included
# (0.3 becomes 0.300000012): float64 agrees to float32's relative rounding of the slope.
F64_LEAKY = dict(rtol=6e-8, atol=1e-15)


def tolerance64(spec):
    leaky = spec["class"] == "LeakyReLU" or (
        spec["class"] == "ReLU" and set(spec["kwargs"]) == {"negative_slope"})
    return F64_LEAKY if leaky else F64


def make(case, dtype):
    spec = LAYERS[case]
    layer = CLASSES[spec["class"]](**spec["kwargs"])
    x = FIXTURES["lx32" if dtype == "float32" else "lx64"]
    layer.build((None,) + x.shape[1:], dtype)
    if spec["class"] == "PReLU":
        layer.set_weights([FIXTURES[f"{case}__alpha"].astype(dtype)])
    return layer, x.copy()


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layers_match_keras(backend_name, case):
    spec = LAYERS[case]
    tol64 = tolerance64(spec)
    with fastcnn.use_backend(backend_name):
        layer, x = make(case, "float32")
        y, _ = layer.forward(x, training=False)
        assert y.dtype == np.float32 and y.shape == x.shape
        np.testing.assert_allclose(y, FIXTURES[f"{case}__y32"], **F32, err_msg=case)

        layer, x = make(case, "float64")
        y, ctx = layer.forward(x, training=True)
        np.testing.assert_allclose(y, FIXTURES[f"{case}__y64"], **tol64, err_msg=case)
        dy = FIXTURES["ldy64"].copy()
        dx, grads = layer.backward(dy, ctx)
    np.testing.assert_allclose(dx, FIXTURES[f"{case}__dx64"], rtol=max(tol64["rtol"], 1e-10),
                               atol=1e-13, err_msg=case)
    np.testing.assert_array_equal(dy, FIXTURES["ldy64"])  # dy untouched
    np.testing.assert_array_equal(x, FIXTURES["lx64"])    # x untouched
    if spec["class"] == "PReLU":
        assert len(grads) == 1 and grads[0].shape == layer.alpha.shape
        np.testing.assert_allclose(grads[0], FIXTURES[f"{case}__dalpha64"], rtol=1e-10,
                                   atol=1e-13)
    else:
        assert grads == ()


def test_names_and_config_keys_are_keras_s():
    for case, spec in LAYERS.items():
        layer = CLASSES[spec["class"]](**spec["kwargs"])
        keras_prefix = spec["name"].rsplit("_", 1)[0] if spec["name"][-1].isdigit() \
            else spec["name"]
        assert layer.name.startswith(keras_prefix), (layer.name, spec["name"])
        config = layer.get_config()
        # Keras 3.15's ELU has no get_config of its own (its alpha is not saved): ours is.
        for key, value in spec["config"].items():
            assert key in config, (case, key)
            if not key.endswith("_initializer"):
                assert config[key] == value, (case, key, config[key], value)


# ---------------------------------------------------------------- gradient checks


def layer_op(layer, training=True):
    """The layer as a gradcheck op over (x, *trainable weights)."""
    def forward(x, *weights):
        for w, value in zip(layer.trainable_weights, weights):
            w[...] = value
        return layer.forward(x, training)

    def backward(dy, ctx):
        dx, grads = layer.backward(dy, ctx)
        return (dx, *grads) if grads else dx

    return forward, backward


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("layer_fn", [
    lambda: ReLU(), lambda: ReLU(max_value=6.0), lambda: ReLU(negative_slope=0.2),
    lambda: ReLU(max_value=2.0, negative_slope=0.1, threshold=0.5),
    lambda: ReLU(threshold=1.0), lambda: LeakyReLU(), lambda: ELU(), lambda: ELU(alpha=0.3),
    lambda: Softmax(), lambda: Softmax(axis=1), lambda: Softmax(axis=[1, 3]),
    lambda: PReLU(alpha_initializer="random_uniform"),
    lambda: PReLU(alpha_initializer="random_uniform", shared_axes=[1, 2]),
    lambda: PReLU(alpha_initializer="random_uniform", shared_axes=3),
], ids=["relu", "relu6", "relu_slope", "relu_all", "relu_threshold", "leaky", "elu",
        "elu_alpha", "softmax", "softmax_axis1", "softmax_axes13", "prelu", "prelu_shared",
        "prelu_shared_int"])
def test_gradients(backend_name, layer_fn, rng):
    layer = layer_fn()
    x = gradcheck.off_kinks((2, 3, 4, 3), rng) * 3
    # Off the kinks of the ReLU cases: 0, 0.5, 1, 2 and 6.
    for k in (0.5, 1.0, 2.0, 6.0):
        x[np.abs(x - k) < 0.05] += 0.1
    layer.build((None,) + x.shape[1:], "float64")
    weights = [w.copy() for w in layer.trainable_weights]
    with fastcnn.use_backend(backend_name):
        result = gradcheck.check_backward(*layer_op(layer), [x, *weights])
    assert result.mode == "full"


def test_prelu_grads_ignore_freezing_and_need_dx(rng):
    layer = PReLU(alpha_initializer="random_uniform", shared_axes=[1])
    x = rng.standard_normal((4, 5, 3))
    layer.build((None, 5, 3), "float64")
    layer.trainable = False
    y, ctx = layer.forward(x, training=True)
    dx, (dalpha,) = layer.backward(np.ones_like(y), ctx, need_dx=False)
    assert dx is None and dalpha.shape == (1, 3) == layer.alpha.shape
    np.testing.assert_allclose(dalpha[0], np.minimum(x, 0).sum(axis=(0, 1)))


# ---------------------------------------------------------------- Softmax specifics


def test_softmax_on_the_last_axis_is_a_fusable_head():
    last, other = Softmax(), Softmax(axis=1)
    last.build((None, 3, 5), "float32")
    other.build((None, 3, 5), "float32")
    assert last.activation == "softmax" and last.runs_on_device
    assert other.activation is None and not other.runs_on_device
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    y, ctx = last.forward(x, activate=False)  # the model hands the loss the logits
    assert y is x
    dx, grads = last.backward(x, ctx)
    assert dx is x and grads == ()


def test_softmax_axes_sum_to_one():
    layer = Softmax(axis=[1, 2])
    layer.build((None, 2, 3, 4), "float64")
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 4)) * 5
    y, _ = layer.forward(x)
    np.testing.assert_allclose(y.sum(axis=(1, 2)), np.ones((2, 4)), rtol=1e-12)


# ---------------------------------------------------------------- regularizer, constraint


def test_prelu_regularizer_and_constraint():
    layer = PReLU(alpha_initializer="ones", alpha_regularizer=regularizers.L2(0.5),
                  alpha_constraint="non_neg", shared_axes=[1, 2])
    layer.build((None, 4, 4, 2), "float64")
    assert layer.regularization_loss() == pytest.approx(0.5 * 2)
    (g,) = layer.add_regularization_gradients((np.zeros((1, 1, 2)),))
    np.testing.assert_allclose(g, np.full((1, 1, 2), 1.0))  # 2 * 0.5 * alpha
    assert isinstance(layer.alpha_constraint, constraints.NonNeg)
    config = layer.get_config()
    assert config["alpha_regularizer"]["class_name"] == "L2"
    assert config["alpha_constraint"]["class_name"] == "NonNeg"
    clone = PReLU.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == {**config, "name": clone.name}


@pytest.mark.parametrize("layer", [
    ReLU(max_value=6.0, negative_slope=0.1, threshold=0.5), LeakyReLU(0.01), ELU(0.5),
    Softmax(axis=[1, 2]), PReLU(shared_axes=[1, 2]),
], ids=lambda layer: type(layer).__name__)
def test_config_round_trip(layer):
    config = json.loads(json.dumps(layer.get_config()))
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_leaky_relu_takes_keras_2_s_alpha_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="negative_slope"):
        layer = LeakyReLU(alpha=0.1)
    assert layer.negative_slope == 0.1
    assert "alpha" not in layer.get_config()


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("make_layer,message", [
    (lambda: ReLU(max_value=-1.0), "max_value of a ReLU layer must be >= 0"),
    (lambda: ReLU(negative_slope=-0.1), "negative_slope of a ReLU layer must be >= 0"),
    (lambda: ReLU(threshold=None), "threshold of a ReLU layer must be a finite number"),
    (lambda: ReLU(max_value="6"), "max_value .* got '6'"),
    (lambda: LeakyReLU(negative_slope=-1), "negative_slope of a LeakyReLU layer must be >= 0"),
    (lambda: LeakyReLU(negative_slope=None), "negative_slope of a LeakyReLU layer"),
    (lambda: ELU(alpha=float("inf")), "alpha of a ELU layer must be a finite number"),
    (lambda: Softmax(axis="last"), "axis of a Softmax layer must be an int"),
    (lambda: Softmax(axis=[]), "non-empty list"),
    (lambda: PReLU(shared_axes=[0]), "shared_axes .* >= 1"),
    (lambda: PReLU(alpha_initializer="nope"), "alpha_initializer"),
    (lambda: PReLU(alpha_regularizer="nope"), "alpha_regularizer"),
    (lambda: PReLU(alpha_constraint="nope"), "alpha_constraint"),
])
def test_bad_arguments(make_layer, message):
    with pytest.raises(ValueError, match=message):
        make_layer()


@pytest.mark.parametrize("layer,shape,message", [
    (Softmax(axis=3), (None, 4, 5), "axis 3 is out of range for an input of rank 3"),
    (Softmax(axis=[1, -2]), (None, 4, 5), "names an axis twice"),
    (PReLU(shared_axes=[3]), (None, 4, 5), "shared_axes \\[3\\] name axis 3"),
    (PReLU(), (None, None, 5), "known size"),
])
def test_bad_shapes_at_build(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer.build(shape, "float32")


# ---------------------------------------------------------------- in a model


def test_a_model_with_every_activation_layer_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    model = fastcnn.Sequential([
        fastcnn.layers.Input((6,)), fastcnn.layers.Dense(16), LeakyReLU(),
        fastcnn.layers.Dense(16), PReLU(alpha_initializer="constant"), ELU(),
        ReLU(max_value=6.0), fastcnn.layers.Dense(3), Softmax()])
    model.compile(optimizer=fastcnn.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]
    path = tmp_path / "model.fcnn"
    model.save(path)
    loaded = fastcnn.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers] == \
        [type(layer).__name__ for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
