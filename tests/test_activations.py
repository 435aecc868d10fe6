"""fastcnn.activations: names and aliases, functions on arrays, Keras 3's numbers on every
CPU backend (forward in float32 and float64, TensorFlow's gradients in float64), gradient
checks through ``activations.forward`` / ``backward``, the monotone set, bad input.

The Keras numbers come from tests/fixtures/keras/make_activations.py (TensorFlow 2.21 /
Keras 3.15, run once; TensorFlow is never imported here). The cuda backend's share is in
tests/backends/test_cuda_activations.py (the simulator runs only test_cuda* files).
"""
import json
import os

import fastcnn
import numpy as np
import pytest

from fastcnn import activations, backends, gradcheck
from fastcnn.layers import Activation, Conv2D, Dense

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = np.load(os.path.join(HERE, "fixtures", "keras", "activations.npz"))
with open(os.path.join(HERE, "fixtures", "keras", "activations.json")) as _f:
    META = json.load(_f)
FUNCTIONS = META["functions"]
CPU_BACKENDS = [b for b in backends.available() if b != "cuda"]
ELEMENTWISE = [n for n in activations.KNOWN if n not in activations.ROW_WISE]

# Float32: Keras's TensorFlow kernels and ours differ by rounding only; atol covers values
# near 0 computed by cancellation (1 + tanh(u) for very negative u, log_softmax near 0),
# where float32 rounding is relative to the inputs' scale (|x| <= 12), not the output's.
F32 = dict(rtol=2e-6, atol=1e-6)
F64 = dict(rtol=1e-12, atol=1e-15)
# TensorFlow's leaky_relu takes its slope as a float32 attribute, also for float64 data
# (0.2 becomes 0.20000000298...): our float64 uses the exact slope, so float64 agrees to
# float32's relative rounding of the slope.
F64_LEAKY = dict(rtol=6e-8, atol=1e-15)


def keras_function(case):
    spec = FUNCTIONS[case]
    fn = getattr(activations, spec["name"])
    return lambda x: fn(x, **spec["kwargs"])


# TensorFlow 2.21's float64 erfc and tanh are accurate to about 1e-7 only (its float64
# gelu(1.3) is 1.17415936508, the correctly rounded 1.17415937004): fastcnn uses libm's.
F64_GELU = dict(rtol=1e-6, atol=1e-12)


def tolerance64(case):
    if case.startswith("leaky_relu"):
        return F64_LEAKY
    return F64_GELU if case.startswith("gelu") else F64


def kernel_pair(backend, case):
    """``(forward(x) -> (y, ctx), backward(dy, ctx))`` of the kernel behind ``case``."""
    spec = FUNCTIONS[case]
    name, kwargs = spec["name"], dict(spec["kwargs"])
    if name == "relu" and kwargs:
        args = (kwargs.get("negative_slope", 0.0), kwargs.get("max_value"),
                kwargs.get("threshold", 0.0))
        return (lambda x: backend.relu_general_forward(x, *args), backend.relu_general_backward)
    if name == "gelu" and kwargs.pop("approximate", False):
        name = "gelu_approximate"
    if name == "softmax" and kwargs.get("axis", -1) == 0:
        # axis 0 of a 2-D array: the last axis of the transpose.
        def forward(x):
            y, ctx = activations.forward(backend, "softmax", np.ascontiguousarray(x.T))
            return np.ascontiguousarray(y.T), ctx

        def backward(dy, ctx):
            return np.ascontiguousarray(activations.backward(
                backend, "softmax", np.ascontiguousarray(dy.T), ctx).T)
        return forward, backward
    name = activations.get(name)
    return ((lambda x: activations.forward(backend, name, x, **kwargs)),
            (lambda dy, ctx: activations.backward(backend, name, dy, ctx)))


# ------------------------------------------------------------- Keras's numbers


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(FUNCTIONS))
def test_values_match_keras(backend_name, case):
    fn = keras_function(case)
    with fastcnn.use_backend(backend_name):
        y32 = fn(FIXTURES["x32"])
        y64 = fn(FIXTURES["x64"])
    assert isinstance(y32, np.ndarray) and y32.dtype == np.float32, type(y32)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y32, FIXTURES[f"{case}__y32"], **F32, err_msg=case)
    np.testing.assert_allclose(y64, FIXTURES[f"{case}__y64"], **tolerance64(case),
                               err_msg=case)


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(c for c in FUNCTIONS if c != "linear"))
def test_kernel_gradients_match_tensorflow(backend_name, case):
    """The backward kernels against tf.GradientTape's gradients (float64, off the kinks)."""
    forward, backward = kernel_pair(backends.get(backend_name), case)
    x, dy = FIXTURES["xg64"].copy(), FIXTURES["dy64"].copy()
    y, ctx = forward(x)
    np.testing.assert_allclose(y, FIXTURES[f"{case}__gy64"], **tolerance64(case), err_msg=case)
    dx = backward(dy, ctx)
    tol = tolerance64(case)
    np.testing.assert_allclose(dx, FIXTURES[f"{case}__dx64"], rtol=max(tol["rtol"], 1e-10),
                               atol=max(tol["atol"], 1e-13), err_msg=case)
    np.testing.assert_array_equal(dy, FIXTURES["dy64"])  # dy untouched


# ------------------------------------------------------------- gradient checks


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("name", [n for n in activations.KNOWN if n != "linear"])
def test_gradcheck_through_the_module(backend_name, name, rng):
    """activations.forward / backward on a 4-D input (row-wise ones reshape it to rows)."""
    backend = backends.get(backend_name)
    x = gradcheck.off_kinks((2, 3, 2, 4), rng) * 2.5  # |x| in [0.25, 2.5]: no kink there
    result = gradcheck.check_backward(
        lambda a: activations.forward(backend, name, a),
        lambda dy, ctx: activations.backward(backend, name, dy, ctx), [x])
    assert result.mode == "full"


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("name,params", [("leaky_relu", {"negative_slope": 0.05}),
                                         ("leaky_relu", {"negative_slope": -0.5}),
                                         ("elu", {"alpha": 0.3}), ("elu", {"alpha": -0.5})])
def test_gradcheck_with_parameters(backend_name, name, params, rng):
    backend = backends.get(backend_name)
    x = gradcheck.off_kinks((3, 7), rng) * 4
    gradcheck.check_backward(lambda a: activations.forward(backend, name, a, **params),
                             lambda dy, ctx: activations.backward(backend, name, dy, ctx),
                             [x])


def test_linear_is_the_identity_without_a_copy():
    x = np.arange(6.0).reshape(2, 3)
    y, ctx = activations.forward(backends.get("reference"), "linear", x)
    assert y is x and ctx is None
    assert activations.backward(backends.get("reference"), "linear", x, ctx) is x
    assert activations.linear(x) is x


# ------------------------------------------------------------- special values


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("name", [n for n in ELEMENTWISE if n != "linear"])
def test_nan_propagates_and_extremes_stay_finite(backend_name, name):
    backend = backends.get(backend_name)
    x = np.array([np.nan, -80.0, -3.0, 0.0, 3.0, 6.0, 80.0], np.float32)
    y, _ = activations.forward(backend, name, x)
    assert np.isnan(y[0]), f"{name}({np.nan}) = {y[0]}"
    finite = y[1:] if name != "exponential" else y[1:-1]  # exp(80) overflows float32
    assert np.isfinite(finite).all(), f"{name}: {y}"


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_derivatives_at_the_kinks_follow_tensorflow(backend_name):
    """relu'(0) = 0, leaky_relu'(0) = slope, relu6' = 0 at 0 and 6, hard_sigmoid' = 0 at
    +-3, hard_silu' = 0 at -3 and 1 at 3 (TensorFlow's conventions, which its autodiff of
    x * relu6(x + 3) / 6 gives; a central difference is meaningless there)."""
    backend = backends.get(backend_name)
    x = np.array([0.0, 6.0, -3.0, 3.0])
    dy = np.ones(4)
    expected = {"relu": [0, 1, 0, 1], "leaky_relu": [0.2, 1, 0.2, 1], "relu6": [0, 0, 0, 1],
                "hard_sigmoid": [1 / 6, 0, 0, 0], "hard_silu": [0.5, 1, 0, 1]}
    for name, want in expected.items():
        y, ctx = activations.forward(backend, name, x)
        np.testing.assert_allclose(activations.backward(backend, name, dy, ctx), want,
                                   err_msg=name)


# ------------------------------------------------------------- the monotone set


def test_monotone_set_is_exactly_the_nondecreasing_elementwise_ones():
    """Each listed activation is non-decreasing on a fine grid (and so commutes with max);
    each element-wise one left out decreases somewhere."""
    backend = backends.get("reference")
    grid = np.linspace(-10, 10, 20001)
    for name in ELEMENTWISE:
        y, _ = activations.forward(backend, name, grid)
        nondecreasing = bool(np.all(np.diff(y) >= 0))
        assert nondecreasing == (name in activations.MONOTONE_NONDECREASING), name
        if nondecreasing:  # commutes with a max, forward
            a = grid.reshape(-1, 3)
            fa, _ = activations.forward(backend, name, a)
            fm, _ = activations.forward(backend, name, a.max(axis=1))
            np.testing.assert_array_equal(fa.max(axis=1), fm, err_msg=name)
    assert activations.MONOTONE_NONDECREASING <= set(ELEMENTWISE)


# ------------------------------------------------------------- names


@pytest.mark.parametrize("identifier,name", [
    (None, "linear"), ("relu", "relu"), ("ReLU", "relu"), ("swish", "silu"),
    ("silu", "silu"), ("hard_swish", "hard_silu"), ("gelu", "gelu"),
    ("log_softmax", "log_softmax"), ("leaky_relu", "leaky_relu"),
    (activations.relu, "relu"), (activations.swish, "silu"), (activations.silu, "silu"),
    (activations.hard_swish, "hard_silu"), (activations.gelu, "gelu"),
    (activations.softmax, "softmax"), (activations.linear, "linear"),
    (fastcnn.activations.leaky_relu, "leaky_relu"),
])
def test_get(identifier, name):
    assert activations.get(identifier) == name
    assert name in activations.KNOWN


def test_every_canonical_name_has_a_kernel_pair_on_every_backend():
    for backend_name in backends.available():
        backend = backends.get(backend_name)
        for name in activations.KNOWN:
            pair = activations.ops(name)
            if pair is not None:
                assert backend.implements(pair[0]) and backend.implements(pair[1]), \
                    (backend_name, name)
        assert backend.implements("relu_general_forward")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="'relu'.*got 'rleu'"):
        activations.get("rleu")
    with pytest.raises(ValueError, match="swish"):
        activations.get("mish")
    with pytest.raises(ValueError, match="got 3 \\(int\\)"):
        activations.get(3)


def test_a_custom_callable_is_kept_as_it_is():
    """The tape differentiates it (tests below); activations.get does not refuse it."""
    def double(x):
        return x * 2

    assert activations.get(double) is double


def test_register_function_makes_a_callable_a_name():
    def my_relu(x):
        return np.maximum(x, 0)

    activations.register_function(my_relu, "relu")
    try:
        assert activations.get(my_relu) == "relu"
        with pytest.raises(ValueError, match="must be one of"):
            activations.register_function(my_relu, "nope")
    finally:
        activations._FUNCTIONS.pop(my_relu, None)


def test_layers_take_functions_and_aliases_and_save_the_canonical_name():
    dense = Dense(128, activation=fastcnn.activations.relu)
    assert dense.activation == "relu" and dense.get_config()["activation"] == "relu"
    conv = Conv2D(4, 3, activation="swish")
    assert conv.get_config()["activation"] == "silu"
    assert Activation(activations.gelu).activation == "gelu"
    assert Activation("hard_swish").get_config()["activation"] == "hard_silu"
    assert Dense(2, activation="leaky_relu").activation == "leaky_relu"


# ------------------------------------------------------------- functions on arrays


def test_functions_take_lists_and_ints_like_keras():
    # Keras's docstring example for relu.
    x = [-10, -5, 0.0, 5, 10]
    np.testing.assert_array_equal(activations.relu(x), [0, 0, 0, 5, 10])
    np.testing.assert_array_equal(activations.relu(x, negative_slope=0.5),
                                  [-5, -2.5, 0, 5, 10])
    np.testing.assert_array_equal(activations.relu(x, max_value=5.0), [0, 0, 0, 5, 5])
    np.testing.assert_array_equal(activations.relu(x, threshold=5.0), [0, 0, 0, 0, 10])
    assert activations.relu(x).dtype == np.dtype(fastcnn.floatx())
    assert activations.sigmoid(np.arange(3)).dtype == np.dtype(fastcnn.floatx())
    y = activations.relu6(np.array([-1.0, 3.0, 9.0]))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [0, 3, 6])


def test_relu_function_picks_the_kernel_for_its_arguments(monkeypatch):
    calls = []
    backend = backends.get("reference")
    for op in ("relu_forward", "relu6_forward", "leaky_relu_forward", "relu_general_forward"):
        original = getattr(backend, op)
        monkeypatch.setattr(backend, op,
                            lambda *a, _op=op, _f=original, **k: calls.append(_op) or _f(*a, **k))
    x = np.linspace(-8, 8, 9)
    with fastcnn.use_backend("reference"):
        activations.relu(x)
        activations.relu(x, max_value=6)
        activations.relu(x, negative_slope=0.1)
        activations.relu(x, negative_slope=0.1, threshold=1.0)
    assert calls == ["relu_forward", "relu6_forward", "leaky_relu_forward",
                     "relu_general_forward"]


def test_softmax_and_log_softmax_along_an_axis(rng):
    x = rng.standard_normal((2, 3, 4))
    for axis in (0, 1, -2, 2, -1):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        expected = e / e.sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(activations.softmax(x, axis=axis), expected, rtol=1e-12)
        np.testing.assert_allclose(activations.log_softmax(x, axis=axis), np.log(expected),
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="axis must be an int in \\[-3, 3\\).*got 3"):
        activations.softmax(x, axis=3)
    with pytest.raises(ValueError, match="at least one axis"):
        activations.log_softmax(2.0)


@pytest.mark.parametrize("call,message", [
    (lambda: activations.relu([1.0], negative_slope="a"), "negative_slope must be a number"),
    (lambda: activations.relu([1.0], max_value=float("nan")), "max_value must be a number"),
    (lambda: activations.leaky_relu([1.0], negative_slope=None), "negative_slope"),
    (lambda: activations.elu([1.0], alpha=True), "alpha must be a number"),
    (lambda: activations.softmax([1.0], axis=1.5), "axis must be an int"),
])
def test_bad_arguments_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------- callables (the tape)
def test_tf_nn_style_functions_are_stored_by_name():
    import fastcnn as _f
    assert _f.layers.Dense(3, activation=_f.nn.relu).activation == "relu"
    assert _f.layers.Dense(3, activation=_f.nn.sigmoid).activation == "sigmoid"
    assert _f.layers.Dense(3, activation=_f.ops.gelu).activation == "gelu_approximate"
    assert _f.layers.Dense(3, activation=_f.nn.gelu).activation == "gelu"


def test_a_custom_callable_activation_is_differentiated_by_the_tape(monkeypatch):
    import fastcnn as _f
    from fastcnn import gradcheck as _g

    def my_leaky(x):
        return _f.ops.maximum(x, 0.1 * x)

    _f.set_random_seed(0)
    model = _f.Sequential([_f.layers.Dense(5, activation=my_leaky, input_shape=(3,),
                                           dtype="float64"),
                           _f.layers.Dense(2, dtype="float64")])
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    h = x @ model.layers[0].kernel + model.layers[0].bias
    expected = np.maximum(h, 0.1 * h) @ model.layers[1].kernel + model.layers[1].bias
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-12)
    seen = []
    monkeypatch.setattr(model.optimizer, "apply",
                        lambda grads, variables: seen.append([np.array(g) for g in grads]))
    model.train_on_batch(x, y)
    _g.check_scalar_gradient(lambda: model.test_on_batch(x, y), model.trainable_weights,
                             seen[0], rtol=1e-6)
    with pytest.raises(ValueError, match="custom activation 'my_leaky'.*cannot hold"):
        model.get_config()


def test_a_numpy_activation_says_its_gradient_cannot_be_formed():
    import fastcnn as _f
    layer = _f.layers.Dense(2, activation=lambda x: np.tanh(np.asarray(x)))
    with pytest.raises(ValueError, match="not a fastcnn Tensor: its gradient cannot be formed"):
        layer(np.ones((1, 3), np.float32))
