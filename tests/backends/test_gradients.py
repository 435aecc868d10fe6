"""Every backward of every backend is the derivative of its forward (float64, random dy).

Tiny shapes get the full Jacobian-vector check (every element of every input, biases
included); a few medium shapes get the random-direction check. Shapes cover what breaks
index arithmetic: H != W, non-square kernels (3, 2) / (2, 3), strides differing per axis,
'same' padding with the odd extra row/column, C_in and C_out > 1, overlapping windows.
The values feeding ReLU and max pooling come from ``off_kinks`` (no ties, nothing at 0).
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import activations
from fastcnn.gradcheck import check_backward, check_scalar_gradient, off_kinks
from fastcnn.shapes import window_output_shape


def op(backend, name):
    if not backend.implements(name):
        pytest.skip(f"backend {backend.name!r} does not implement {name!r}")
    return getattr(backend, name)


def pad_for(spatial, window, stride, padding):
    """Explicit ((top, bottom), (left, right)) from fastcnn.shapes, the one padding rule."""
    _, pad = window_output_shape(spatial, window, stride, padding)
    return pad


def case_id(case):
    return "-".join(
        f"{k}{'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in case.items()
    )


# ------------------------------------------------------------------------------- conv2d

CONV_CASES = [
    dict(n=2, hw=(5, 4), cin=2, cout=3, k=(3, 3), s=(1, 1), pad="valid", bias=True),
    dict(n=2, hw=(5, 4), cin=2, cout=3, k=(3, 3), s=(1, 1), pad="valid", bias=False),
    dict(n=1, hw=(5, 6), cin=2, cout=2, k=(3, 2), s=(2, 1), pad="same", bias=True),
    dict(n=2, hw=(4, 7), cin=1, cout=2, k=(2, 3), s=(1, 3), pad="same", bias=False),
    dict(n=1, hw=(6, 5), cin=3, cout=2, k=(2, 3), s=(2, 1), pad="valid", bias=True),
    dict(n=2, hw=(5, 5), cin=2, cout=1, k=(3, 2), s=(1, 3), pad="valid", bias=True),
    dict(n=1, hw=(4, 6), cin=2, cout=3, k=(3, 2), s=(1, 1), pad="same", bias=True),
    dict(n=1, hw=(4, 5), cin=3, cout=2, k=(2, 3), s=(2, 1), pad="same", bias=False),
    dict(n=1, hw=(5, 4), cin=2, cout=2, k=(4, 4), s=(1, 1), pad="same", bias=True),
    dict(n=2, hw=(3, 2), cin=2, cout=2, k=(3, 2), s=(1, 1), pad="valid", bias=True),
    dict(n=1, hw=(3, 4), cin=3, cout=2, k=(1, 1), s=(2, 1), pad="same", bias=True),
]


def conv_inputs(rng, n, hw, cin, cout, k, bias):
    x = rng.standard_normal((n, *hw, cin))
    # Scaled like a real initialiser, so outputs are O(1) and rounding noise stays small.
    w = rng.standard_normal((*k, cin, cout)) / np.sqrt(k[0] * k[1] * cin)
    b = rng.standard_normal(cout) if bias else None
    return x, w, b


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv2d(backend, rng, case):
    forward, backward = op(backend, "conv2d_forward"), op(backend, "conv2d_backward")
    x, w, b = conv_inputs(rng, case["n"], case["hw"], case["cin"], case["cout"], case["k"],
                          case["bias"])
    pad = pad_for(case["hw"], case["k"], case["s"], case["pad"])
    result = check_backward(
        lambda x, w, b: forward(x, w, b, case["s"], pad), backward, [x, w, b]
    )
    assert result.mode == "full"
    assert sorted(result.max_rel_error) == ([0, 1, 2] if case["bias"] else [0, 1])


@pytest.mark.parametrize(
    "hw, k, s, padding, directions",
    [
        ((12, 11), (3, 3), (2, 1), "same", 6),  # small enough for full: forced directions
        ((16, 15), (3, 2), (1, 2), "same", None),  # > 3000 elements: directions by default
    ],
    ids=["forced", "automatic"],
)
def test_conv2d_medium_random_directions(backend, rng, hw, k, s, padding, directions):
    forward, backward = op(backend, "conv2d_forward"), op(backend, "conv2d_backward")
    x, w, b = conv_inputs(rng, 2, hw, 6, 8, k, bias=True)
    pad = pad_for(hw, k, s, padding)
    result = check_backward(
        lambda x, w, b: forward(x, w, b, s, pad), backward, [x, w, b], directions=directions
    )
    assert result.mode == "directions"


# ------------------------------------------------------------------------------ pooling

POOL_CASES = [
    dict(n=2, hw=(4, 6), c=2, p=(2, 2), s=(2, 2), pad="valid"),  # tiling, no overlap
    dict(n=1, hw=(5, 7), c=2, p=(2, 2), s=(2, 2), pad="valid"),  # leftover row/col
    dict(n=1, hw=(5, 7), c=2, p=(2, 2), s=(2, 2), pad="same"),  # odd extra bottom/right
    dict(n=2, hw=(5, 4), c=3, p=(3, 2), s=(1, 2), pad="same"),  # overlap along H only
    dict(n=1, hw=(6, 5), c=2, p=(2, 3), s=(2, 1), pad="same"),  # overlap along W only
    dict(n=1, hw=(6, 7), c=2, p=(3, 3), s=(2, 2), pad="same"),  # overlap, padding both
    dict(n=1, hw=(7, 6), c=2, p=(3, 2), s=(2, 1), pad="valid"),  # overlap, valid
    dict(n=2, hw=(7, 5), c=1, p=(2, 2), s=(3, 3), pad="valid"),  # stride > pool: gaps
    dict(n=1, hw=(5, 6), c=2, p=(4, 3), s=(1, 1), pad="same"),  # pool bigger than stride
]


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
@pytest.mark.parametrize("kind", ["maxpool2d", "avgpool2d"])
def test_pool(backend, rng, kind, case):
    forward = op(backend, f"{kind}_forward")
    backward = op(backend, f"{kind}_backward")
    shape = (case["n"], *case["hw"], case["c"])
    # off_kinks: no tie for max pooling to flip; harmless (and fine) for average pooling.
    x = off_kinks(shape, rng) if kind == "maxpool2d" else rng.standard_normal(shape)
    pad = pad_for(case["hw"], case["p"], case["s"], case["pad"])
    result = check_backward(lambda x: forward(x, case["p"], case["s"], pad), backward, [x])
    assert result.mode == "full"


@pytest.mark.parametrize("kind", ["maxpool2d", "avgpool2d"])
def test_pool_medium_random_directions(backend, rng, kind):
    forward = op(backend, f"{kind}_forward")
    backward = op(backend, f"{kind}_backward")
    shape, p, s = (3, 17, 14, 5), (3, 2), (2, 1)
    x = off_kinks(shape, rng)
    pad = pad_for(shape[1:3], p, s, "same")
    result = check_backward(lambda x: forward(x, p, s, pad), backward, [x])
    assert result.mode == "directions"


# -------------------------------------------------------------------------------- dense


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("n, d, u", [(3, 5, 4), (1, 7, 1), (4, 1, 3)])
def test_dense(backend, rng, n, d, u, bias):
    forward, backward = op(backend, "dense_forward"), op(backend, "dense_backward")
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, u)) / np.sqrt(d)
    b = rng.standard_normal(u) if bias else None
    result = check_backward(forward, backward, [x, w, b])
    assert result.mode == "full"


def test_dense_medium_random_directions(backend, rng):
    forward, backward = op(backend, "dense_forward"), op(backend, "dense_backward")
    x = rng.standard_normal((16, 120))
    w = rng.standard_normal((120, 30)) / np.sqrt(120)
    b = rng.standard_normal(30)
    assert check_backward(forward, backward, [x, w, b]).mode == "directions"


# -------------------------------------------------------------------------- activations

ACTIVATION_SHAPES = [(3, 5), (2, 3, 4, 3)]
ACTIVATIONS = [n for n in activations.KNOWN if n != "linear"]
# Where the piecewise ones have kinks (relu6: 0 and 6; hard_sigmoid / hard_silu: -3, 3).
KINKS = {"relu": (0,), "leaky_relu": (0,), "relu6": (0, 6), "hard_sigmoid": (-3, 3),
         "hard_silu": (-3, 3), "elu": (0,), "selu": (0,)}


def away_from_kinks(x, kinks, margin=0.05):
    """``x`` with every value within ``margin`` of a kink moved ``2 * margin`` up."""
    x = x.copy()
    for k in kinks:
        x[np.abs(x - k) < margin] += 2 * margin
    return x


@pytest.mark.parametrize("shape", ACTIVATION_SHAPES, ids=str)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation(backend, rng, name, shape):
    forward, backward = op(backend, f"{name}_forward"), op(backend, f"{name}_backward")
    if name == "relu":
        x = off_kinks(shape, rng)
    else:
        # Spread over the saturating range too (|x| up to ~6, and relu6's flat top), where
        # a sloppy derivative formula or an unstable forward goes wrong first.
        x = away_from_kinks(3.0 * rng.standard_normal(shape), KINKS.get(name, ()))
    result = check_backward(forward, backward, [x])
    assert result.mode == "full"


@pytest.mark.parametrize("params", [(0.3, None, 0.0), (0.2, 4.0, 1.0), (0.0, 3.0, -1.0),
                                    (0.1, None, -1.5)], ids=str)
def test_relu_general(backend, rng, params):
    slope, top, t = params
    forward, backward = op(backend, "relu_general_forward"), op(backend, "relu_general_backward")
    x = away_from_kinks(3.0 * rng.standard_normal((4, 6)), (0, t) + ((top,) if top else ()))
    assert check_backward(lambda a: forward(a, *params), backward, [x]).mode == "full"


@pytest.mark.parametrize("x_shape,alpha_shape", [((2, 3, 4, 2), (3, 4, 2)),
                                                 ((2, 3, 4, 2), (1, 1, 2)), ((3, 4), (4,))],
                         ids=str)
def test_prelu(backend, rng, x_shape, alpha_shape):
    forward, backward = op(backend, "prelu_forward"), op(backend, "prelu_backward")
    x, alpha = off_kinks(x_shape, rng), rng.standard_normal(alpha_shape)
    assert check_backward(forward, backward, [x, alpha]).mode == "full"


def test_activations_medium_random_directions(backend, rng):
    for name in ("relu", "sigmoid", "tanh", "softmax"):
        forward, backward = op(backend, f"{name}_forward"), op(backend, f"{name}_backward")
        x = off_kinks((8, 25, 20), rng)
        assert check_backward(forward, backward, [x]).mode == "directions"


# ------------------------------------------------------------------------------- losses


def check_loss(loss_fn, logits, targets):
    """dlogits returned by a fused loss == the numerical gradient of the returned loss."""
    _, dlogits = loss_fn(logits, targets)
    return check_scalar_gradient(lambda: loss_fn(logits, targets)[0], [logits], [dlogits])


@pytest.mark.parametrize("n, k", [(4, 5), (1, 3), (6, 2)])
def test_softmax_cross_entropy(backend, rng, n, k):
    loss_fn = op(backend, "softmax_cross_entropy")
    logits = 2.0 * rng.standard_normal((n, k))
    probabilities = rng.dirichlet(np.ones(k), size=n)
    one_hot = np.eye(k)[rng.integers(0, k, n)]
    for targets in (probabilities, one_hot):
        check_loss(loss_fn, logits, targets)
    # Rows that do not sum to 1: the contract's gradient (softmax * sum(t) - t) / N is the
    # true derivative for ANY targets; the common shortcut (softmax - t) / N is not.
    check_loss(loss_fn, logits, rng.random((n, k)))


@pytest.mark.parametrize("n, k", [(4, 5), (1, 3), (7, 2)])
def test_sparse_softmax_cross_entropy(backend, rng, n, k):
    loss_fn = op(backend, "sparse_softmax_cross_entropy")
    logits = 2.0 * rng.standard_normal((n, k))
    labels = rng.integers(0, k, n)
    check_loss(loss_fn, logits, labels)
    check_loss(loss_fn, logits, labels.astype(np.int32))


@pytest.mark.parametrize("shape", [(4, 1), (3, 5), (2, 3, 2)], ids=str)
def test_sigmoid_cross_entropy(backend, rng, shape):
    loss_fn = op(backend, "sigmoid_cross_entropy")
    logits = 3.0 * rng.standard_normal(shape)
    check_loss(loss_fn, logits, rng.random(shape))  # soft targets in [0, 1]
    check_loss(loss_fn, logits, rng.integers(0, 2, shape).astype(np.float64))


def test_losses_large_logits(backend, rng):
    # Stable formulations keep both the loss and its gradient finite and right far from 0;
    # a naive log(softmax) or log(sigmoid) overflows or loses all digits here.
    logits = np.array([[40.0, -35.0, 2.0], [-50.0, 45.0, 44.5]])
    targets = np.array([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    check_loss(op(backend, "softmax_cross_entropy"), logits, targets)
    check_loss(op(backend, "sparse_softmax_cross_entropy"), logits, np.array([1, 2]))
    check_loss(op(backend, "sigmoid_cross_entropy"), logits, targets)
