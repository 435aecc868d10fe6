"""Optimizer update rules against hand-computed values (Keras's formulas)."""
import math

import numpy as np
import pytest

import fastcnn
from fastcnn import optimizers
from fastcnn.layers import Dense


def run_steps(opt, w0, grads):
    w = np.array(w0, dtype=np.float64)
    ref = w  # the optimizer must update this very array
    for g in grads:
        opt.apply([np.array(g, dtype=np.float64)], [w])
    assert w is ref
    return w


# ----------------------------------------------------------------- scalar cases by hand
def test_sgd_plain_by_hand():
    w = run_steps(optimizers.SGD(learning_rate=0.1), [1.0], [[1.0], [2.0]])
    assert w[0] == pytest.approx(1.0 - 0.1 - 0.2)


def test_sgd_momentum_by_hand():
    # m1 = -0.1, w1 = 0.9; m2 = 0.9 * -0.1 - 0.1 = -0.19, w2 = 0.71
    w = run_steps(optimizers.SGD(0.1, momentum=0.9), [1.0], [[1.0], [1.0]])
    assert w[0] == pytest.approx(0.71, abs=1e-12)


def test_sgd_nesterov_by_hand():
    # Keras: m = mu*m - lr*g; w += mu*m - lr*g
    # step 1: m = -0.1;  w = 1 + 0.9*-0.1 - 0.1 = 0.81
    # step 2: m = -0.19; w = 0.81 + 0.9*-0.19 - 0.1 = 0.539
    w = run_steps(optimizers.SGD(0.1, momentum=0.9, nesterov=True), [1.0], [[1.0], [1.0]])
    assert w[0] == pytest.approx(0.539, abs=1e-12)


def test_adam_by_hand():
    # t=1: m = 0.1, v = 0.001, alpha = 0.1 * sqrt(0.001) / 0.1 = sqrt(0.001)
    #      w = 1 - sqrt(0.001) * 0.1 / (sqrt(0.001) + 1e-7)   (epsilon outside the sqrt,
    #      applied to the UNcorrected v: Keras's "epsilon hat" form)
    w = run_steps(optimizers.Adam(learning_rate=0.1), [1.0], [[1.0]])
    s = math.sqrt(0.001)
    assert w[0] == pytest.approx(1 - s * 0.1 / (s + 1e-7), abs=1e-12)
    assert w[0] == pytest.approx(0.9000003162, abs=1e-9)


def test_rmsprop_by_hand():
    # v = 0.1; w = 1 - 0.1 * 1 / sqrt(0.1 + 1e-7)   (Keras 3: epsilon inside the sqrt)
    w = run_steps(optimizers.RMSprop(learning_rate=0.1), [1.0], [[1.0]])
    assert w[0] == pytest.approx(1 - 0.1 / math.sqrt(0.1 + 1e-7), abs=1e-12)
    assert w[0] == pytest.approx(0.6837723, abs=1e-6)


# ------------------------------------------------- arrays, several steps, independent code
def reference_updates(kind, w, grads, **hp):
    """A line-by-line float64 transcription of Keras 3's update_step for one array."""
    w = w.astype(np.float64).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    avg = np.zeros_like(w)
    vhat = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if kind == "sgd":
            lr, mu, nesterov = hp["learning_rate"], hp["momentum"], hp["nesterov"]
            if mu:
                m = m * mu - g * lr
                w = w + (m * mu - g * lr if nesterov else m)
            else:
                w = w - g * lr
        elif kind == "adam":
            lr, b1, b2, eps = hp["learning_rate"], hp["beta_1"], hp["beta_2"], hp["epsilon"]
            alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            m = m + (g - m) * (1 - b1)
            v = v + (g * g - v) * (1 - b2)
            vv = v
            if hp.get("amsgrad"):
                vhat = np.maximum(vhat, v)
                vv = vhat
            w = w - alpha * m / (np.sqrt(vv) + eps)
        elif kind == "rmsprop":
            lr, rho, eps = hp["learning_rate"], hp["rho"], hp["epsilon"]
            mu, centered = hp["momentum"], hp["centered"]
            v = rho * v + (1 - rho) * g * g
            denom = v + eps
            if centered:
                avg = rho * avg + (1 - rho) * g
                denom = denom - avg * avg
            inc = lr * g / np.sqrt(denom)
            if mu:
                m = mu * m + inc
                w = w - m
            else:
                w = w - inc
    return w


CASES = [
    ("sgd", optimizers.SGD, dict(learning_rate=0.05, momentum=0.0, nesterov=False)),
    ("sgd", optimizers.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=False)),
    ("sgd", optimizers.SGD, dict(learning_rate=0.05, momentum=0.8, nesterov=True)),
    ("adam", optimizers.Adam, dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-3)),
    ("adam", optimizers.Adam, dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                                   amsgrad=True)),
    ("rmsprop", optimizers.RMSprop, dict(learning_rate=0.01, rho=0.8, momentum=0.0,
                                         epsilon=1e-3, centered=False)),
    ("rmsprop", optimizers.RMSprop, dict(learning_rate=0.01, rho=0.8, momentum=0.5,
                                         epsilon=1e-3, centered=True)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind,cls,hp", CASES)
def test_update_rules_match_keras_formulas(kind, cls, hp, dtype):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((3, 4)).astype(dtype)
    b0 = rng.standard_normal(4).astype(dtype)
    gw = [rng.standard_normal((3, 4)).astype(dtype) for _ in range(4)]
    gb = [rng.standard_normal(4).astype(dtype) for _ in range(4)]
    opt = cls(**hp)
    w, b = w0.copy(), b0.copy()
    variables = [w, b]
    for g1, g2 in zip(gw, gb):
        opt.apply([g1, g2], variables)
    assert opt.iterations == 4
    # in place, dtype kept (no float64 upcast of float32 weights), state of the same dtype
    assert variables[0] is w and w.dtype == dtype and b.dtype == dtype
    for arrays in opt.get_state()["slots"].values():
        assert all(a.dtype == dtype for a in arrays)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(w, reference_updates(kind, w0, gw, **hp), **tol)
    np.testing.assert_allclose(b, reference_updates(kind, b0, gb, **hp), **tol)


def test_keras_defaults_and_names():
    assert optimizers.SGD().get_config() == {
        "name": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": False,
        "weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
        "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
        "loss_scale_factor": None, "gradient_accumulation_steps": None}
    adam = optimizers.Adam()
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    rms = optimizers.RMSprop()
    assert (rms.learning_rate, rms.rho, rms.epsilon) == (0.001, 0.9, 1e-7)
    for name, cls in [("sgd", optimizers.SGD), ("Adam", optimizers.Adam),
                      ("RMSPROP", optimizers.RMSprop), ("adamw", optimizers.AdamW),
                      ("Nadam", optimizers.Nadam), ("lion", optimizers.Lion)]:
        assert type(optimizers.get(name)) is cls
    opt = optimizers.Adam(0.5)
    assert optimizers.get(opt) is opt
    again = optimizers.Adam.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(6)]
    a = optimizers.Adam(0.1)
    wa = w0.copy()
    for g in grads:
        a.apply([g], [wa])
    b = optimizers.Adam(0.1)
    wb = w0.copy()
    for g in grads[:3]:
        b.apply([g], [wb])
    state = b.get_state()
    c = optimizers.Adam(0.1)
    wc = wb.copy()
    c.build([wc])
    c.set_state(state)
    assert c.iterations == 3
    for g in grads[3:]:
        c.apply([g], [wc])
    np.testing.assert_array_equal(wc, wa)


def test_learning_rate_can_change_between_steps():
    opt = optimizers.SGD(0.1)
    w = np.ones(2)
    opt.apply([np.ones(2)], [w])
    opt.learning_rate = 0.5
    opt.apply([np.ones(2)], [w])
    np.testing.assert_allclose(w, 1 - 0.1 - 0.5)
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = float("nan")


def test_optimizer_refuses_other_variables():
    opt = optimizers.SGD(0.1)
    opt.apply([np.ones(2)], [np.ones(2)])
    with pytest.raises(ValueError, match="already holds state"):
        opt.apply([np.ones(2)], [np.ones(2)])


@pytest.mark.parametrize("make,match", [
    (lambda: optimizers.SGD(learning_rate=-1), "learning_rate"),
    (lambda: optimizers.SGD(momentum=1.5), "momentum"),
    (lambda: optimizers.Adam(beta_1=1.0), "beta_1"),
    (lambda: optimizers.RMSprop(rho="x"), "rho"),
    (lambda: optimizers.get("adagradd"), r"\['sgd', 'adam', 'adamw', 'rmsprop'"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_only_trainable_weights_are_updated():
    fastcnn.utils.set_random_seed(0)
    frozen = Dense(3, input_shape=(4,))
    frozen.trainable = False
    model = fastcnn.Sequential([frozen, Dense(2)])
    model.compile(optimizer=optimizers.SGD(0.5), loss="mse")
    before = model.get_weights()
    model.train_on_batch(np.ones((2, 4)), np.zeros((2, 2)))
    after = model.get_weights()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert not np.array_equal(after[2], before[2])
    assert len(model.optimizer.get_state()["slots"]) == 0  # plain SGD keeps no state
    bound = model.optimizer._variables
    assert len(bound) == 2 and all(a is b for a, b in zip(bound, model.layers[1].weights))


# ------------------------------------------------------------- against Keras's numbers
# tests/fixtures/keras/make_optimizers.py ran Keras 3.15 (TensorFlow 2.21 CPU): 10 steps of
# every optimizer on two float32 variables with a fixed gradient sequence.
import json  # noqa: E402
import pathlib  # noqa: E402
import warnings  # noqa: E402

from fastcnn import schedules  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "keras"
KERAS = json.loads((FIXTURES / "optimizers.json").read_text())
KERAS_ARRAYS = np.load(FIXTURES / "optimizers.npz")
# fastcnn computes Keras's scalars (beta powers, bias corrections, schedule values, norms)
# in the weights' dtype and in Keras's order of operations: most cases are bit-identical,
# the rest within 1-2 float32 ulps of weights of size ~1 (a cos, a pow, a summation order).
ATOL = 1e-6


def make_from_fixture(case):
    config = dict(case["config"])
    if isinstance(config.get("learning_rate"), list):
        sched = KERAS["schedules"][config["learning_rate"][1]]
        config["learning_rate"] = getattr(schedules, sched["class_name"])(**sched["config"])
    return getattr(optimizers, case["class_name"])(**config)


@pytest.mark.parametrize("name", sorted(KERAS["cases"]))
def test_ten_steps_match_keras(name):
    case = KERAS["cases"][name]
    z = KERAS_ARRAYS
    opt = make_from_fixture(case)
    w, b = z["w0"].copy(), z["b0"].copy()
    gw, gb = z["gw"], z["gb"]
    for t in range(10):
        opt.apply([gw[t], gb[t]], [w, b])
        np.testing.assert_allclose(w, z[f"{name}__w"][t], rtol=0, atol=ATOL,
                                   err_msg=f"{name}: step {t + 1}, kernel")
        np.testing.assert_allclose(b, z[f"{name}__b"][t], rtol=0, atol=ATOL,
                                   err_msg=f"{name}: step {t + 1}, bias")
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert opt.iterations == 10
    for arrays in opt.get_state()["slots"].values():
        assert all(a.dtype == np.float32 for a in arrays)
    if case["config"].get("use_ema"):
        state = opt.get_state()["slots"]["average"]
        np.testing.assert_allclose(state[0], z[f"{name}__avg_w"], atol=ATOL)
        np.testing.assert_allclose(state[1], z[f"{name}__avg_b"], atol=ATOL)
        opt.finalize_variable_values([w, b])
        np.testing.assert_allclose(w, z[f"{name}__final_w"], atol=ATOL)


@pytest.mark.parametrize("name", sorted(KERAS["cases"]))
def test_ten_steps_through_variables_and_apply_gradients(name):
    # fastcnn.Variable objects are updated in place (their arrays); same numbers.
    z = KERAS_ARRAYS
    opt = make_from_fixture(KERAS["cases"][name])
    w, b = fastcnn.Variable(z["w0"]), fastcnn.Variable(z["b0"])
    arrays = (w.value, b.value)
    for t in range(10):
        opt.apply_gradients(zip([z["gw"][t], z["gb"][t]], [w, b]))
    assert w.value is arrays[0] and b.value is arrays[1]
    np.testing.assert_allclose(w.value, z[f"{name}__w"][9], atol=ATOL)
    np.testing.assert_allclose(b.value, z[f"{name}__b"][9], atol=ATOL)


@pytest.mark.parametrize("cls", sorted(KERAS["default_configs"]))
def test_default_configs_are_keras(cls):
    expected = dict(KERAS["default_configs"][cls])
    got = getattr(optimizers, cls)().get_config()
    expected.pop("name")
    assert got.pop("name") == cls.lower()
    lr = got.pop("learning_rate")
    assert np.float32(lr) == np.float32(expected.pop("learning_rate"))
    assert got == expected


@pytest.mark.parametrize("name", sorted(KERAS["schedules"]))
def test_schedule_values_match_keras(name):
    entry = KERAS["schedules"][name]
    sched = getattr(schedules, entry["class_name"])(**entry["config"])
    got = [sched(step) for step in entry["steps"]]
    np.testing.assert_allclose(got, entry["values"], rtol=1e-6, atol=1e-8)
    assert sched.get_config() == entry["keras_config"]
    again = schedules.deserialize(schedules.serialize(sched))
    assert again == sched and again.get_config() == sched.get_config()
    # Keras's path
    assert optimizers.schedules.ExponentialDecay is schedules.ExponentialDecay


@pytest.mark.parametrize("name", sorted(KERAS["cases"]))
def test_state_and_config_round_trip_continue_exactly(name):
    """Save after 4 steps (config as JSON, state), rebuild, run 6 more: bitwise the same
    as 10 steps without interruption."""
    z = KERAS_ARRAYS
    make = lambda: make_from_fixture(KERAS["cases"][name])  # noqa: E731
    a = make()
    wa, ba = z["w0"].copy(), z["b0"].copy()
    for t in range(10):
        a.apply([z["gw"][t], z["gb"][t]], [wa, ba])
    b = make()
    wb, bb = z["w0"].copy(), z["b0"].copy()
    for t in range(4):
        b.apply([z["gw"][t], z["gb"][t]], [wb, bb])
    config = json.loads(json.dumps(optimizers.serialize(b)))
    state = b.get_state()
    c = optimizers.deserialize(config)
    assert type(c) is type(b) and c.get_config() == b.get_config()
    wc, bc = wb.copy(), bb.copy()
    c.build([wc, bc])
    c.set_state(state)
    for t in range(4, 10):
        c.apply([z["gw"][t], z["gb"][t]], [wc, bc])
    np.testing.assert_array_equal(wc, wa)
    np.testing.assert_array_equal(bc, ba)


# ---------------------------------------------------------------- the common arguments
def test_clipping_never_writes_the_callers_gradients():
    for kw in (dict(clipnorm=0.1), dict(clipvalue=0.1), dict(global_clipnorm=0.1),
               dict(loss_scale_factor=4.0)):
        g = np.full(3, 5.0, np.float32)
        w = np.zeros(3, np.float32)
        optimizers.SGD(1.0, **kw).apply([g], [w])
        np.testing.assert_array_equal(g, 5.0)
        assert w.dtype == np.float32


def test_clip_results_by_hand():
    g = np.array([3.0, 4.0])          # norm 5
    w = np.zeros(2)
    optimizers.SGD(1.0, clipnorm=1.0).apply([g], [w])
    np.testing.assert_allclose(w, [-0.6, -0.8])
    w = np.zeros(2)
    optimizers.SGD(1.0, clipvalue=3.5).apply([g], [w])
    np.testing.assert_allclose(w, [-3.0, -3.5])
    w1, w2 = np.zeros(2), np.zeros(2)   # global norm sqrt(25 + 25)
    optimizers.SGD(1.0, global_clipnorm=1.0).apply([g, g[::-1].copy()], [w1, w2])
    np.testing.assert_allclose(w1, -g / math.sqrt(50))
    w = np.zeros(2)
    optimizers.SGD(1.0, loss_scale_factor=2.0).apply([g], [w])
    np.testing.assert_allclose(w, -g / 2)


def test_weight_decay_is_keras_decoupled_form():
    # w -= w * wd * lr, then the plain SGD step
    w = np.array([2.0])
    optimizers.SGD(0.1, weight_decay=0.5).apply([np.array([1.0])], [w])
    assert w[0] == pytest.approx(2.0 - 2.0 * 0.5 * 0.1 - 0.1)
    opt = optimizers.SGD(0.1, weight_decay=0.5)
    keep, decay = fastcnn.Variable(np.array([2.0]), name="bias"), np.array([2.0])
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.apply([np.array([1.0]), np.array([1.0])], [keep, decay])
    assert keep.value[0] == pytest.approx(1.9) and decay[0] == pytest.approx(1.8)
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_weight_decay(var_names=["x"])


def test_ema_swap_and_overwrite():
    opt = optimizers.SGD(1.0, use_ema=True, ema_momentum=0.5)
    w = np.array([0.0])
    for _ in range(3):
        opt.apply([np.array([-1.0])], [w])
    # w: 1, 2, 3; average: 1 (first step copies), 1.5, 2.25
    assert w[0] == 3.0 and opt.get_state()["slots"]["average"][0][0] == 2.25
    opt.swap_ema_weights()
    assert w[0] == 2.25 and opt.get_state()["slots"]["average"][0][0] == 3.0
    opt.swap_ema_weights()
    assert w[0] == 3.0
    opt.finalize_variable_values()
    assert w[0] == 2.25
    opt = optimizers.SGD(1.0, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2)
    w = np.array([0.0])
    opt.apply([np.array([-1.0])], [w])
    assert w[0] == 1.0
    opt.apply([np.array([-1.0])], [w])
    assert w[0] == 1.5           # step 2: the weights take the average (1 * .5 + 2 * .5)
    with pytest.raises(ValueError, match="keeps no moving averages"):
        optimizers.SGD().swap_ema_weights()


def test_constraints_of_variables_run_after_the_step():
    from fastcnn import constraints

    v = fastcnn.Variable(np.array([[3.0, 0.1], [4.0, 0.1]]), constraint=constraints.MaxNorm(1.0))
    w = v.value
    optimizers.SGD(0.0).apply([np.zeros((2, 2))], [v])
    assert v.value is w
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), [1.0, math.hypot(0.1, 0.1)],
                               rtol=1e-6)
    nn = fastcnn.Variable(np.array([1.0, -1.0]), constraint=constraints.non_neg())
    optimizers.Adam(0.1).apply([np.array([1.0, 1.0])], [nn])
    assert nn.value[1] == 0.0 and nn.value[0] < 1.0


def test_schedules_and_callables_give_the_rate_of_step_iterations():
    sched = schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)
    opt = optimizers.SGD(sched)
    w = np.zeros(1)
    for _ in range(3):
        opt.apply([np.ones(1)], [w])
    assert w[0] == pytest.approx(-(1 + 0.5 + 0.25))
    assert opt.learning_rate == pytest.approx(0.125)
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.1
    opt = optimizers.SGD(lambda: 0.5)          # Keras: called with no argument
    w = np.zeros(1)
    opt.apply([np.ones(1)], [w])
    assert w[0] == -0.5
    opt = optimizers.SGD(lambda step: 1.0 / (step + 1))
    w = np.zeros(1)
    opt.apply([np.ones(1)], [w])
    opt.apply([np.ones(1)], [w])
    assert w[0] == pytest.approx(-1.5)
    with pytest.raises(ValueError, match="plain callable"):
        opt.get_config()
    with pytest.raises(ValueError, match="gave -1.0 at step 0"):
        optimizers.SGD(lambda: -1.0).apply([np.ones(1)], [np.zeros(1)])


def test_lr_is_the_deprecated_spelling():
    with pytest.warns(DeprecationWarning, match="learning_rate="):
        opt = optimizers.Adam(lr=0.01)
    assert opt.learning_rate == 0.01
    for cls in (optimizers.SGD, optimizers.RMSprop, optimizers.Adagrad, optimizers.Lion):
        with pytest.warns(DeprecationWarning, match="learning_rate="):
            assert cls(lr=0.3).learning_rate == 0.3
    with pytest.raises(ValueError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizers.SGD(learning_rate=0.2, lr=0.1)
    with pytest.raises(ValueError, match="not recognized"):
        optimizers.SGD(momentun=0.9)


@pytest.mark.parametrize("make,match", [
    (lambda: optimizers.SGD(clipnorm=0), "clipnorm"),
    (lambda: optimizers.SGD(clipvalue=-1), "clipvalue"),
    (lambda: optimizers.Adam(global_clipnorm=0.0), "global_clipnorm"),
    (lambda: optimizers.SGD(clipnorm=1, clipvalue=1), "Only one of"),
    (lambda: optimizers.AdamW(weight_decay=None), "weight_decay"),
    (lambda: optimizers.SGD(weight_decay=-0.1), "weight_decay"),
    (lambda: optimizers.SGD(use_ema=True, ema_momentum=1.5), "ema_momentum"),
    (lambda: optimizers.SGD(ema_overwrite_frequency=0), "ema_overwrite_frequency"),
    (lambda: optimizers.Lion(beta_1=0.0), "beta_1"),
    (lambda: optimizers.Adagrad(initial_accumulator_value=-1), "initial_accumulator_value"),
    (lambda: schedules.ExponentialDecay(0.1, decay_steps=0, decay_rate=0.5), "decay_steps"),
    (lambda: schedules.CosineDecay(0.1, decay_steps=-3), "decay_steps"),
    (lambda: schedules.PolynomialDecay(-0.1, decay_steps=3), "initial_learning_rate"),
    (lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1]), "1 less than"),
    (lambda: schedules.deserialize({"class_name": "Nope", "config": {}}), "unknown schedule"),
])
def test_bad_common_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_apply_without_variables_uses_the_built_ones():
    w = np.ones(2)
    opt = optimizers.SGD(0.5)
    with pytest.raises(ValueError, match="must already be built"):
        opt.apply([np.ones(2)])
    opt.build([w])
    opt.apply([np.ones(2)])
    np.testing.assert_array_equal(w, 0.5)


def test_none_gradients_skip_their_variable():
    w, b = np.ones(2), np.ones(2)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        optimizers.SGD(0.5).apply([np.ones(2), None], [w, b])
    np.testing.assert_array_equal(b, 1.0)
    np.testing.assert_array_equal(w, 0.5)
    with pytest.raises(ValueError, match="No gradients"):
        optimizers.SGD(0.5).apply([None], [np.ones(2)])


# ------------------------------------------------------------------------- device updates
# Under the CUDA simulator (tests/conftest.py) every thread costs ~0.5 ms: 3 steps of each
# fixture case on the 16 weights, through Optimizer.apply with device arrays (the path a
# model inside fastcnn._device.scope takes), against the host run of the same case.
from fastcnn import backends  # noqa: E402

needs_cuda = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")
DEVICE_CASES = ["sgd_nesterov_wd", "adam_amsgrad_clipnorm", "adamw_wd",
                "rmsprop_centered_momentum", "adagrad_wd", "adadelta_rho", "adamax_wd",
                "nadam_clip", "lion_wd", "sgd_ema", "adam_ema_overwrite", "sgd_poly_cycle",
                "adam_cosine_warm_wd"]


@needs_cuda
@pytest.mark.parametrize("name", DEVICE_CASES)
def test_device_updates_match_the_host(name):
    from numba import cuda as numba_cuda

    z = KERAS_ARRAYS
    case = KERAS["cases"][name]
    host, dev = make_from_fixture(case), make_from_fixture(case)
    assert dev.supports_device
    hw, hb = z["w0"].copy(), z["b0"].copy()
    dw, db = numba_cuda.to_device(z["w0"]), numba_cuda.to_device(z["b0"])
    for t in range(3):
        host.apply([z["gw"][t], z["gb"][t]], [hw, hb])
        dev.apply([numba_cuda.to_device(z["gw"][t]), numba_cuda.to_device(z["gb"][t])],
                  [dw, db])
    np.testing.assert_allclose(dw.copy_to_host(), hw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db.copy_to_host(), hb, rtol=1e-6, atol=1e-7)
    for slot, arrays in dev.get_state()["slots"].items():
        for a, b in zip(arrays, host.get_state()["slots"][slot]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=slot)


def test_every_optimizer_has_a_device_update():
    for name in optimizers.KNOWN:
        assert optimizers.get(name).supports_device, name


# ---------------------------------------------------------------- save / load of a model
SAVE_CASES = [
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.01), "exp_stair"),
    ("Adam", dict(amsgrad=True, clipnorm=1.0), "piecewise"),
    ("AdamW", dict(weight_decay=0.1, use_ema=True, ema_overwrite_frequency=3), "cosine_warm"),
    ("RMSprop", dict(centered=True, momentum=0.5, clipvalue=0.5), "inverse"),
    ("Adagrad", dict(global_clipnorm=0.5), "poly_cycle"),
    ("Adadelta", dict(rho=0.9), "cosine"),
    ("Adamax", dict(use_ema=True), "poly"),
    ("Nadam", dict(weight_decay=0.02), "exp"),
    ("Lion", dict(beta_2=0.9), "inverse_stair"),
]


@pytest.mark.parametrize("cls,kwargs,sched", SAVE_CASES, ids=[c[0] for c in SAVE_CASES])
def test_saved_model_resumes_training_exactly(cls, kwargs, sched, tmp_path):
    entry = KERAS["schedules"][sched]
    schedule = getattr(schedules, entry["class_name"])(**entry["config"])

    def model():
        fastcnn.utils.set_random_seed(3)
        m = fastcnn.Sequential()
        m.add(Dense(3, input_shape=(4,), activation="tanh"))
        m.add(Dense(2))
        m.compile(optimizer=getattr(optimizers, cls)(schedule, **kwargs), loss="mse")
        return m

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    m = model()
    m.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    m.save(tmp_path / "m.fcnn")
    m2 = fastcnn.load_model(tmp_path / "m.fcnn")
    assert type(m2.optimizer) is type(m.optimizer)
    assert m2.optimizer.get_config() == m.optimizer.get_config()
    assert m2.optimizer.iterations == m.optimizer.iterations == 4
    for k, arrays in m.optimizer.get_state()["slots"].items():
        for a, b in zip(arrays, m2.optimizer.get_state()["slots"][k]):
            np.testing.assert_array_equal(a, b)
    m.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    m2.fit(x, y, epochs=2, batch_size=4, verbose=0, shuffle=False)
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_plain_callable_rate_cannot_be_saved(tmp_path):
    m = fastcnn.Sequential()
    m.add(Dense(2, input_shape=(3,)))
    m.compile(optimizer=optimizers.SGD(lambda: 0.1), loss="mse")
    with pytest.raises(ValueError, match="plain callable"):
        m.save(tmp_path / "m.fcnn")


def test_apply_gradients_with_mismatched_lists_says_so_before_binding():
    import fastcnn as _f
    v = [_f.Variable(np.ones(3)), _f.Variable(np.ones(2))]
    opt = _f.optimizers.SGD()
    with pytest.raises(ValueError, match="got 1 gradients for 2 variables"):
        opt.apply([np.ones(3)], v)
    with pytest.raises(ValueError, match=r"gradient 1 has shape \(3,\), but variable 1 has "
                                         r"shape \(2,\)"):
        opt.apply([np.ones(3), np.ones(3)], v)
    assert opt.iterations == 0 and opt._variables is None
    opt.apply([np.ones(3), np.ones(2)], v)
    np.testing.assert_allclose(np.asarray(v[1]), 0.99)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_adam_step_is_bitwise_the_numpy_definition(dtype, monkeypatch):
    """Adam's host step runs one compiled pass (csrc/optimizer_kernels.h) where the Cython
    extension is built; the NumPy lines of Adam._update define it: same bits, over many
    steps, gradients spanning seven orders of magnitude, odd sizes (vector tails)."""
    from fastcnn import _extensions
    if "elementwise" not in _extensions.modules:
        pytest.skip(f"the Cython extensions are not built: {_extensions.IMPORT_ERROR}")
    assert optimizers._fused_adam is not None   # built: the compiled step must be there
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(dtype) for s in [(3, 3, 1, 8), (1352, 10), (7,),
                                                            (40000,)]]
    results = []
    for fused in (optimizers._fused_adam, None):
        monkeypatch.setattr(optimizers, "_fused_adam", fused)
        ws = [a.copy() for a in start]
        opt = optimizers.Adam(learning_rate=1e-2)
        grads_rng = np.random.default_rng(1)
        for _ in range(12):
            grads = [(grads_rng.standard_normal(a.shape)
                      * 10.0 ** int(grads_rng.integers(-4, 3))).astype(dtype) for a in ws]
            opt.apply(grads, ws)
        results.append(ws)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_rmsprop_step_is_bitwise_the_numpy_definition(dtype, monkeypatch):
    """RMSprop's plain step (Keras's defaults: no momentum, not centered) runs one compiled
    pass where the extension is built: the same bits as RMSprop._update's NumPy lines."""
    from fastcnn import _extensions
    if "elementwise" not in _extensions.modules:
        pytest.skip(f"the Cython extensions are not built: {_extensions.IMPORT_ERROR}")
    assert optimizers._fused_rmsprop is not None
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(dtype) for s in [(3, 3, 2, 8), (7,), (40000,)]]
    results = []
    for fused in (optimizers._fused_rmsprop, None):
        monkeypatch.setattr(optimizers, "_fused_rmsprop", fused)
        ws = [a.copy() for a in start]
        opt = optimizers.RMSprop(learning_rate=1e-3)
        grads_rng = np.random.default_rng(1)
        for _ in range(12):
            grads = [(grads_rng.standard_normal(a.shape)
                      * 10.0 ** int(grads_rng.integers(-4, 3))).astype(dtype) for a in ws]
            opt.apply(grads, ws)
        results.append(ws)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
