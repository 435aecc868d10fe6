"""The gradient checker itself: it passes correct gradients and catches wrong ones."""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import backends, gradcheck
from fastcnn.gradcheck import (
    GradientCheckError,
    check_backward,
    check_scalar_gradient,
    numerical_gradient,
    off_kinks,
)
from fastcnn.shapes import window_output_shape

REF = backends.get("reference")
STRIDE = (1, 2)
_, PAD = window_output_shape((5, 6), (3, 3), STRIDE, "same")


def conv_forward(x, w, b):
    return REF.conv2d_forward(x, w, b, STRIDE, PAD)


@pytest.fixture
def conv_inputs(rng):
    return [
        rng.standard_normal((2, 5, 6, 2)),
        rng.standard_normal((3, 3, 2, 3)) / 4,
        rng.standard_normal(3),
    ]


def test_public_names():
    assert set(gradcheck.__all__) == {
        "GradientCheckError", "GradientCheckResult", "numerical_gradient",
        "check_backward", "check_scalar_gradient", "off_kinks",
    }
    assert issubclass(GradientCheckError, AssertionError)  # pytest reports a failure


# ---------------------------------------------------------------- numerical_gradient


def test_numerical_gradient_of_a_known_function(rng):
    x = rng.standard_normal((3, 4))
    c = rng.standard_normal((3, 4))
    g = numerical_gradient(lambda: np.sum(c * x**3), x)
    np.testing.assert_allclose(g, 3 * c * x**2, rtol=1e-7, atol=1e-9)
    assert g.shape == x.shape and g.dtype == np.float64


def test_numerical_gradient_restores_the_array_exactly():
    # Values that the usual arithmetic undo (x += eps; x -= 2 eps; x += eps) does NOT
    # bring back bit for bit: a checker restoring that way would leave them changed.
    x = np.array([1e-7, 3.3e-8, -2.2e-9, 1 / 3, -0.7, 2.0 / 7])
    eps = 1e-6
    naive = x.copy()
    naive += eps
    naive -= 2 * eps
    naive += eps
    assert np.count_nonzero(naive != x) >= 4
    saved = x.copy()
    numerical_gradient(lambda: np.sum(np.sin(x)), x, eps=eps)
    assert np.array_equal(x, saved)  # bit for bit


def test_numerical_gradient_restores_when_f_raises():
    x = np.array([0.1, 0.2, 0.3])
    saved = x.copy()
    calls = []

    def f():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return x.sum()

    with pytest.raises(RuntimeError, match="boom"):
        numerical_gradient(f, x)
    assert np.array_equal(x, saved)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64])
def test_non_float64_is_rejected_with_the_reason(dtype, conv_inputs):
    x = np.ones((2, 3), dtype=dtype)
    with pytest.raises(TypeError, match="float64") as info:
        numerical_gradient(lambda: x.sum(), x)
    assert "rounding" in str(info.value)  # says WHY, not just what
    with pytest.raises(TypeError, match="float64"):
        check_scalar_gradient(lambda: x.sum(), [x], [np.ones((2, 3))])
    x32 = [a.astype(dtype) for a in conv_inputs]
    with pytest.raises(TypeError, match=r"inputs\[0\].*float64"):
        check_backward(conv_forward, REF.conv2d_backward, x32)


# ----------------------------------------------------------------- check_backward: passes


def test_correct_conv_backward_passes_every_input(conv_inputs):
    result = check_backward(conv_forward, REF.conv2d_backward, conv_inputs)
    assert result.mode == "full"
    assert set(result.max_rel_error) == {0, 1, 2}  # the bias is checked too
    assert max(result.max_rel_error.values()) < 1e-6
    n_elements = sum(a.size for a in conv_inputs)
    assert result.evaluations == 2 * n_elements  # every element, both sides


def test_none_input_needs_none_gradient(conv_inputs):
    x, w, _ = conv_inputs
    result = check_backward(conv_forward, REF.conv2d_backward, [x, w, None])
    assert set(result.max_rel_error) == {0, 1}

    def returns_db_anyway(dy, ctx):
        dx, dw, _ = REF.conv2d_backward(dy, ctx)
        return dx, dw, np.zeros(3)

    with pytest.raises(GradientCheckError, match="input 2, which is None"):
        check_backward(conv_forward, returns_db_anyway, [x, w, None])


def test_missing_or_misshapen_gradient_is_an_error(conv_inputs):
    def no_db(dy, ctx):
        dx, dw, _ = REF.conv2d_backward(dy, ctx)
        return dx, dw, None

    with pytest.raises(GradientCheckError, match="None for input 2"):
        check_backward(conv_forward, no_db, conv_inputs)

    def flat_dw(dy, ctx):
        dx, dw, db = REF.conv2d_backward(dy, ctx)
        return dx, dw.ravel(), db

    with pytest.raises(GradientCheckError, match="gradient of input 1 has shape"):
        check_backward(conv_forward, flat_dw, conv_inputs)

    with pytest.raises(GradientCheckError, match="3 gradients for 2 inputs"):
        check_backward(lambda x, w: (x @ w, None), lambda dy, ctx: (1, 2, 3),
                       [np.ones((2, 3)), np.ones((3, 1))])


def test_wrt_checks_only_the_listed_inputs(conv_inputs):
    result = check_backward(conv_forward, REF.conv2d_backward, conv_inputs, wrt=[1])
    assert set(result.max_rel_error) == {1}
    # A backward may also return only the gradients listed in wrt.
    only_dw = lambda dy, ctx: (REF.conv2d_backward(dy, ctx)[1],)  # noqa: E731
    result = check_backward(conv_forward, only_dw, conv_inputs, wrt=[1])
    assert set(result.max_rel_error) == {1}


def test_single_input_ops_may_return_a_bare_array(rng):
    x = off_kinks((3, 4), rng)
    result = check_backward(REF.relu_forward, REF.relu_backward, [x])
    assert set(result.max_rel_error) == {0}


def test_random_directions_mode(conv_inputs):
    result = check_backward(conv_forward, REF.conv2d_backward, conv_inputs, directions=4)
    assert result.mode == "directions"
    assert result.evaluations == 2 * 4 * 3


def test_large_inputs_switch_to_random_directions(rng):
    x = rng.standard_normal((40, 80))  # 3200 + 80 + 1 elements > 3000
    w = rng.standard_normal((80, 1)) / 9
    b = rng.standard_normal(1)
    result = check_backward(REF.dense_forward, REF.dense_backward, [x, w, b])
    assert result.mode == "directions"


def test_inputs_are_restored_exactly(conv_inputs):
    saved = [a.copy() for a in conv_inputs]
    check_backward(conv_forward, REF.conv2d_backward, conv_inputs)
    check_backward(conv_forward, REF.conv2d_backward, conv_inputs, directions=3)
    for a, s in zip(conv_inputs, saved):
        assert np.array_equal(a, s)


# ------------------------------------------------------------- check_backward: catches


def buggy_conv_backward(bug):
    def backward(dy, ctx):
        dx, dw, db = REF.conv2d_backward(dy, ctx)
        if bug == "transposed_kernel":
            dw = dw.transpose(1, 0, 2, 3)  # (kh, kw) swapped: same shape for 3x3
        elif bug == "flipped_kernel":
            dw = dw[::-1, ::-1]  # true convolution instead of cross-correlation
        elif bug == "bias_off_by_one":
            db = dy[:, :-1].sum(axis=(0, 1, 2))  # loop stops one output row early
        elif bug == "bias_shifted":
            db = np.roll(db, 1)
        elif bug == "dx_scaled_by_2":
            dx = 2 * dx
        elif bug == "one_element":
            dw = dw.copy()
            dw[2, 1, 0, 1] += 1e-3
        return dx, dw, db

    return backward


BUGS = [  # (bug, index of the input whose gradient it breaks)
    ("transposed_kernel", 1),
    ("flipped_kernel", 1),
    ("bias_off_by_one", 2),
    ("bias_shifted", 2),
    ("dx_scaled_by_2", 0),
    ("one_element", 1),  # 1e-3 off in ONE of 54 elements
]


@pytest.mark.parametrize("directions", [None, 5], ids=["full", "directions"])
@pytest.mark.parametrize("bug, index", BUGS, ids=[bug for bug, _ in BUGS])
def test_wrong_backward_is_caught(conv_inputs, bug, index, directions):
    with pytest.raises(GradientCheckError) as info:
        check_backward(conv_forward, buggy_conv_backward(bug), conv_inputs,
                       directions=directions)
    message = str(info.value)
    assert f"input {index}" in message
    for word in ("analytic", "numeric", "relative error"):
        assert word in message
    if directions is None:
        assert "element (" in message  # names the worst element
    if bug == "one_element" and directions is None:
        assert "element (2, 1, 0, 1)" in message


def test_failure_message_reports_the_values():
    x = np.array([1.0, 2.0])

    def forward(x):
        return x**2, x

    with pytest.raises(GradientCheckError) as info:
        check_backward(forward, lambda dy, x: dy * 3 * x, [x], dy=np.array([1.0, 1.0]))
    message = str(info.value)
    # Worst element: analytic 6 vs numeric 4 at index 1.
    assert "element (1,)" in message and "analytic 6" in message and "numeric 4" in message


def test_uniform_dy_hides_a_bug_that_random_dy_catches(rng):
    # A dense backward that reverses the batch of dy: with dy = ones every row is the
    # same, so the bug is invisible. This is why dy defaults to random values.
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(2)

    def reversed_batch(dy, ctx):
        return REF.dense_backward(dy[::-1], ctx)

    check_backward(REF.dense_forward, reversed_batch, [x, w, b], dy=np.ones((3, 2)))
    with pytest.raises(GradientCheckError, match="input 0"):
        check_backward(REF.dense_forward, reversed_batch, [x, w, b])


def test_kink_inputs_break_the_check_and_off_kinks_avoids_them():
    # ReLU exactly at 0: the central difference gives 0.5 * dy, the backward 0.
    x = np.array([[0.0, 0.5, -0.5]])
    with pytest.raises(GradientCheckError):
        check_backward(REF.relu_forward, REF.relu_backward, [x])
    x = off_kinks((1, 3), np.random.default_rng(0))
    check_backward(REF.relu_forward, REF.relu_backward, [x])


def test_in_place_modification_is_caught(rng):
    x = rng.standard_normal((2, 3))

    def edits_dy(dy, ctx):
        dy *= 2  # the classic 'dx = dy; dx[...] = ...' bug
        return dy

    with pytest.raises(GradientCheckError, match="modified dy in place"):
        check_backward(lambda x: (x.copy(), None), edits_dy, [x])

    def edits_x(x):
        x[0, 0] += 1.0
        return x.copy(), None

    with pytest.raises(GradientCheckError, match=r"modified inputs\[0\] in place"):
        check_backward(edits_x, lambda dy, ctx: dy, [x.copy()])


def test_nondeterministic_forward_is_caught(rng):
    x = rng.standard_normal(4)
    noise = np.random.default_rng(1)

    def dropout_like(x):
        return x * (noise.random(x.shape) > 0.5), None

    with pytest.raises(GradientCheckError, match="not deterministic"):
        check_backward(dropout_like, lambda dy, ctx: dy, [x])


def test_nan_gradient_fails():
    x = np.array([0.3, 0.4])
    with pytest.raises(GradientCheckError):
        check_backward(lambda x: (x * 2, None), lambda dy, ctx: dy * np.nan, [x])


def test_bad_arguments():
    x = np.ones(2)
    forward, backward = (lambda x: (x * 2, None)), (lambda dy, ctx: 2 * dy)
    with pytest.raises(ValueError, match="dy must have the output's shape"):
        check_backward(forward, backward, [x], dy=np.ones(3))
    with pytest.raises(ValueError, match="wrt"):
        check_backward(forward, backward, [x], wrt=[1])
    with pytest.raises(ValueError, match="eps"):
        check_backward(forward, backward, [x], eps=0)
    with pytest.raises(ValueError, match="directions"):
        check_backward(forward, backward, [x], directions=0)


# ----------------------------------------------------------------- check_scalar_gradient


def test_check_scalar_gradient_passes_and_catches(rng):
    # A two-layer model's loss as a function of its weights, gradients by hand.
    x = rng.standard_normal((5, 4))
    labels = rng.integers(0, 3, 5)
    w1, w2 = rng.standard_normal((4, 6)) / 2, rng.standard_normal((6, 3)) / 2

    def loss():
        h = np.tanh(x @ w1)
        return REF.sparse_softmax_cross_entropy(h @ w2, labels)[0]

    h = np.tanh(x @ w1)
    _, dz = REF.sparse_softmax_cross_entropy(h @ w2, labels)
    dw2 = h.T @ dz
    dw1 = x.T @ ((dz @ w2.T) * (1 - h**2))
    result = check_scalar_gradient(loss, [w1, w2], [dw1, dw2])
    assert result.mode == "full" and set(result.max_rel_error) == {0, 1}

    result = check_scalar_gradient(loss, [w1, w2], [dw1, dw2], max_elements=5)
    assert result.mode == "subset" and result.evaluations == 2 * 10

    with pytest.raises(GradientCheckError, match="input 0"):
        check_scalar_gradient(loss, [w1, w2], [dw1.T.reshape(dw1.shape), dw2])
    with pytest.raises(GradientCheckError, match="input 1"):
        check_scalar_gradient(loss, [w1, w2], [dw1, 2 * dw2], max_elements=3)
    with pytest.raises(ValueError, match="2 arrays but 1 gradients"):
        check_scalar_gradient(loss, [w1, w2], [dw1])


# ---------------------------------------------------------------------------- off_kinks


def test_off_kinks_values(rng):
    a = off_kinks((4, 5, 6), rng)
    assert a.shape == (4, 5, 6) and a.dtype == np.float64
    magnitudes = np.abs(a).ravel()
    assert magnitudes.min() >= 0.1 - 1e-12 and magnitudes.max() <= 1.0 + 1e-12
    assert len(np.unique(a)) == a.size  # no ties anywhere
    gaps = np.diff(np.sort(magnitudes))
    assert gaps.min() > 1e-3  # far more than any eps-sized perturbation
    assert (a > 0).any() and (a < 0).any()
    assert off_kinks(7, rng, np.float32).dtype == np.float32
    assert off_kinks((1,), rng).shape == (1,)
    np.testing.assert_array_equal(
        off_kinks((3, 3), np.random.default_rng(5)), off_kinks((3, 3), np.random.default_rng(5))
    )
