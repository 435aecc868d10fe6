"""Regularizers (L1, L2, L1L2, OrthogonalRegularizer), constraints (MaxNorm, NonNeg,
UnitNorm, MinMaxNorm) and initializers against Keras 3.15's numbers
(tests/fixtures/keras/make_optimizers.py wrote the fixtures with TensorFlow 2.21 CPU)."""
import json
import pathlib

import fastcnn
import numpy as np
import pytest

from fastcnn import constraints, initializers, regularizers
from fastcnn.layers.base import deserialize_initializer, serialize_initializer

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "keras"
KERAS = json.loads((FIXTURES / "regularizers_constraints_initializers.json").read_text())
ARRAYS = np.load(FIXTURES / "regularizers_constraints_initializers.npz")


# ------------------------------------------------------------------------ regularizers
@pytest.mark.parametrize("name", sorted(KERAS["regularizers"]))
def test_penalty_and_gradient_match_keras(name):
    entry = KERAS["regularizers"][name]
    reg = regularizers.get({"class_name": entry["class_name"], "config": entry["config"]})
    x = ARRAYS["reg_x"]
    assert isinstance(reg(x), float)
    assert reg(x) == pytest.approx(entry["penalty"], rel=2e-6, abs=1e-9)
    grad = reg.gradient(x)
    assert grad.dtype == np.float32 and grad.shape == x.shape
    np.testing.assert_allclose(grad, ARRAYS[f"reg_{name}__grad"], rtol=1e-5, atol=1e-7)
    # add_gradient joins it to a layer's gradient (a new array)
    g0 = np.ones_like(x)
    np.testing.assert_allclose(regularizers.add_gradient(reg, g0, x), 1.0 + grad, rtol=1e-6)
    np.testing.assert_array_equal(g0, 1.0)


@pytest.mark.parametrize("reg", [regularizers.OrthogonalRegularizer(0.3, "rows"),
                                 regularizers.OrthogonalRegularizer(0.3, "columns"),
                                 regularizers.L1L2(0.2, 0.1), regularizers.L1(0.5)])
def test_gradients_are_exact_by_finite_differences(reg, rng):
    x = rng.standard_normal((4, 3)) + 0.1
    grad = reg.gradient(x)
    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = (reg(xp) - reg(xm)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)


def test_regularizer_names_defaults_and_serialization():
    assert regularizers.get("l1") == regularizers.L1(0.01)
    assert regularizers.get("L1L2") == regularizers.L1L2(0.0, 0.0)      # Keras 3's class
    assert regularizers.get("l1_l2") == regularizers.L1L2(0.01, 0.01)   # Keras's docs
    assert regularizers.get("orthogonal_regularizer") == regularizers.OrthogonalRegularizer()
    assert regularizers.OrthogonalRegularizer().get_config() == {"factor": 0.01, "mode": "rows"}
    assert regularizers.l1_l2 is regularizers.L1L2 and regularizers.l1 is regularizers.L1
    for reg in (regularizers.L1(0.2), regularizers.L1L2(0.1, 0.3),
                regularizers.OrthogonalRegularizer(0.5, "columns")):
        data = json.loads(json.dumps(regularizers.serialize(reg)))
        assert regularizers.get(data) == reg
        layer = fastcnn.layers.Dense(3, kernel_regularizer=reg)
        assert layer.kernel_regularizer == reg


@pytest.mark.parametrize("make,match", [
    (lambda: regularizers.L1(-1), "l1 must be"),
    (lambda: regularizers.L1L2(l2=float("nan")), "l2 must be"),
    (lambda: regularizers.OrthogonalRegularizer(mode="diagonal"), "mode"),
    (lambda: regularizers.OrthogonalRegularizer()(np.ones((2, 2, 2))), "rank 2"),
    (lambda: regularizers.OrthogonalRegularizer(mode="columns")(np.ones((3, 1))), "at least 2"),
    (lambda: regularizers.get("l4"), r"\['l1', 'l2', 'l1_l2', 'orthogonal_regularizer'\]"),
])
def test_bad_regularizers(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("name", sorted(KERAS["constraints"]))
def test_constraints_match_keras(name):
    entry = KERAS["constraints"][name]
    c = constraints.get({"class_name": entry["class_name"], "config": entry["config"]})
    assert c.get_config() == entry["config"]
    x = ARRAYS["con_m"] if entry["input"] == "m" else ARRAYS["con_k"]
    out = c(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, ARRAYS[f"con_{name}"], rtol=1e-6, atol=1e-7)


def test_constraint_names_and_serialization():
    assert constraints.MaxNorm().get_config() == {"max_value": 2, "axis": 0}
    assert constraints.MinMaxNorm().get_config() == {"min_value": 0.0, "max_value": 1.0,
                                                     "rate": 1.0, "axis": 0}
    for name, cls in [("max_norm", constraints.MaxNorm), ("non_neg", constraints.NonNeg),
                      ("unit_norm", constraints.UnitNorm),
                      ("min_max_norm", constraints.MinMaxNorm)]:
        assert type(constraints.get(name)) is cls
        assert getattr(constraints, name) is cls
    c = constraints.MaxNorm(1.5, axis=[0, 1, 2])
    assert constraints.get(json.loads(json.dumps(constraints.serialize(c)))) == c
    assert constraints.get(None) is None and constraints.serialize(None) is None
    f = lambda w: w  # noqa: E731  (any callable of one array)
    assert constraints.get(f) is f
    with pytest.raises(ValueError, match=r"bias_constraint must be None, one of \['max_norm'"):
        constraints.get("max_nrm", argument="bias_constraint")
    with pytest.raises(ValueError, match="max_value"):
        constraints.MaxNorm(-1)
    with pytest.raises(ValueError, match="axis"):
        constraints.UnitNorm(axis="rows")


# ------------------------------------------------------------------------ initializers
@pytest.mark.parametrize("name", ["constant", "identity", "zeros", "ones"])
def test_deterministic_initializers_are_keras(name):
    entry = KERAS["initializers"][name]
    init = initializers.get(name)
    # Keras's Identity.get_config() drops its gain: the script made it with gain=2.0
    config = {"gain": 2.0} if name == "identity" else entry["config"]
    init = type(init)(**config)
    np.testing.assert_array_equal(init((3, 5), "float32"), ARRAYS[f"init_{name}"])


RANDOM = sorted(k for k in KERAS["initializers"] if k not in
                ("constant", "identity", "zeros", "ones", "__names__"))


def _make(entry):
    cls = {"RandomNormal": initializers.RandomNormal, "RandomUniform": initializers.RandomUniform,
           "TruncatedNormal": initializers.TruncatedNormal,
           "VarianceScaling": initializers.VarianceScaling,
           "Orthogonal": initializers.Orthogonal}.get(entry["class_name"])
    config = {k: v for k, v in entry["config"].items() if v is not None}
    if cls is None:   # glorot / he / lecun: only a seed
        cls = getattr(initializers, entry["class_name"])
        config = {"seed": config.get("seed")}
    return cls(**config)


@pytest.mark.parametrize("name", RANDOM)
def test_random_initializers_have_keras_distributions(name):
    """NumPy's and TensorFlow's generators differ: the same seed gives other numbers, so
    the sample statistics of a 40x60 draw are compared (mean, std within sampling noise;
    the bounds of bounded distributions)."""
    entry = KERAS["initializers"][name]
    init = _make(entry)
    shape = tuple(entry["shape"])
    w = init(shape, "float32")
    assert w.dtype == np.float32 and w.shape == shape
    np.testing.assert_array_equal(w, init(shape, "float32"))       # seeded: reproducible
    std = entry["std"]
    assert abs(w.std() - std) < 0.06 * std, (w.std(), std)
    assert abs(w.mean() - entry["mean"]) < 0.1 * std
    config = entry["config"]
    dist = config.get("distribution", "")
    bounded = (name.endswith("uniform") or "truncated" in name or dist == "truncated_normal"
               or name in ("he_normal", "lecun_normal", "glorot_normal"))
    if bounded:
        # the sample reaches close to Keras's sample extremes and never beyond the bound
        spread = entry["max"] - entry["min"]
        assert abs(w.max() - entry["max"]) < 0.06 * spread
        assert abs(w.min() - entry["min"]) < 0.06 * spread


def test_variance_scaling_modes_and_distributions():
    shape = (3, 3, 16, 32)
    fan_in, fan_out = 3 * 3 * 16, 3 * 3 * 32
    for mode, fan in [("fan_in", fan_in), ("fan_out", fan_out),
                      ("fan_avg", (fan_in + fan_out) / 2)]:
        for dist in ("truncated_normal", "normal", "untruncated_normal", "uniform"):
            init = initializers.VarianceScaling(2.0, mode, dist, seed=3)
            w = init(shape)
            target = 2.0 / fan
            assert abs(w.var() / target - 1) < 0.06, (mode, dist)
            if dist == "uniform":
                assert np.abs(w).max() <= np.sqrt(3 * target) * (1 + 1e-6)
            elif dist != "untruncated_normal":
                # Keras's constant: the std of a unit normal truncated to [-2, 2]
                assert np.abs(w).max() <= 2 * np.sqrt(target) / 0.87962566103423978 * (1 + 1e-6)
            else:
                assert np.abs(w).max() > 2 * np.sqrt(target) / 0.87962566103423978
    assert initializers.VarianceScaling(distribution="normal").distribution == "truncated_normal"
    w = initializers.VarianceScaling(1.0, "fan_in", seed=1, input_axes=[0],
                                     output_axes=[1, 2])((50, 4, 5))
    assert abs(w.var() * 50 - 1) < 0.15
    with pytest.raises(ValueError, match="distribution"):
        initializers.VarianceScaling(distribution="cauchy")


def test_truncated_normal_is_not_rescaled_and_bounded():
    w = initializers.TruncatedNormal(mean=1.0, stddev=0.1, seed=0)((200, 100))
    assert w.min() >= 0.8 - 1e-6 and w.max() <= 1.2 + 1e-6
    assert abs(w.std() - 0.1 * 0.87962566103423978) < 0.003


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 3, 4, 5), (5, 5)])
def test_orthogonal_is_orthogonal(shape):
    w = initializers.Orthogonal(gain=1.5, seed=2)(shape, "float64")
    assert w.shape == shape
    m = w.reshape(-1, shape[-1])
    small = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(small, 1.5 ** 2 * np.eye(len(small)), atol=1e-12)
    with pytest.raises(ValueError, match="at least two-dimensional"):
        initializers.Orthogonal()((5,))


def test_identity_and_constant():
    np.testing.assert_array_equal(initializers.Identity(3.0)((2, 3)), 3.0 * np.eye(2, 3))
    with pytest.raises(ValueError, match="2D"):
        initializers.Identity()((2, 2, 2))
    assert initializers.Constant(2)((2,), "float64").tolist() == [2.0, 2.0]


def test_initializer_names_cover_keras():
    keras_names = {n for n in KERAS["initializers"]["__names__"] if n.islower()
                   and n not in ("deserialize", "get", "serialize", "stft")}
    for name in keras_names:
        initializers.get(name)
    for alias, cls in [("normal", initializers.RandomNormal), ("uniform", initializers.RandomUniform),
                       ("LecunNormal", initializers.LecunNormal), ("one", initializers.Ones)]:
        assert type(initializers.get(alias)) is cls


@pytest.mark.parametrize("init", [initializers.Orthogonal(gain=2.0, seed=4),
                                  initializers.RandomNormal(0.1, 0.2, seed=1),
                                  initializers.TruncatedNormal(seed=3),
                                  initializers.Constant(0.5), initializers.LecunUniform(seed=9),
                                  initializers.VarianceScaling(0.5, "fan_out", "uniform", 2)])
def test_layer_config_round_trip_of_initializers(init):
    data = json.loads(json.dumps(serialize_initializer(init)))
    again = deserialize_initializer(data)
    assert type(again) is type(init) and again.get_config() == init.get_config()
    np.testing.assert_array_equal(again((4, 3)), init((4, 3)))


# --------------------------------------------------------------- on the device backend
from fastcnn import backends, optimizers, schedules  # noqa: E402


@pytest.mark.skipif("cuda" not in backends.available(),
                    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")
def test_device_fit_with_new_regularizers_and_optimizer_equals_the_host():
    """A model on the (simulated) cuda backend: L1 and orthogonal regularizers (host copies
    of the device weights), Lion with a schedule, EMA, clipnorm and weight decay (device
    kernels); the same weights and state as on the reference backend."""
    def run(backend):
        fastcnn.utils.set_random_seed(3)
        m = fastcnn.Sequential()
        m.add(fastcnn.layers.Dense(3, input_shape=(4,), activation="tanh",
                                   kernel_regularizer=regularizers.L1(0.01)))
        m.add(fastcnn.layers.Dense(2, kernel_regularizer=regularizers.OrthogonalRegularizer(
            0.1, "rows"), bias_regularizer="l1_l2"))
        m.compile(optimizer=optimizers.Lion(schedules.ExponentialDecay(0.01, 2, 0.5),
                                            use_ema=True, clipnorm=0.5, weight_decay=0.1),
                  loss="mse")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 4)).astype(np.float32)
        y = rng.standard_normal((8, 2)).astype(np.float32)
        with fastcnn.use_backend(backend):
            history = m.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
        return m.get_weights(), m.optimizer.get_state(), history.history["loss"]

    host_w, host_s, host_loss = run("reference")
    dev_w, dev_s, dev_loss = run("cuda")
    for a, b in zip(dev_w, host_w):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for k in host_s["slots"]:
        for a, b in zip(dev_s["slots"][k], host_s["slots"][k]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(dev_loss, host_loss, rtol=1e-5)
