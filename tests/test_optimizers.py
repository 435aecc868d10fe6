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
        "name": "SGD", "learning_rate": 0.01, "momentum": 0.0, "nesterov": False}
    adam = optimizers.Adam()
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    rms = optimizers.RMSprop()
    assert (rms.learning_rate, rms.rho, rms.epsilon) == (0.001, 0.9, 1e-7)
    for name, cls in [("sgd", optimizers.SGD), ("Adam", optimizers.Adam),
                      ("RMSPROP", optimizers.RMSprop)]:
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
    (lambda: optimizers.get("adagrad"), r"\['sgd', 'adam', 'rmsprop'\]"),
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
