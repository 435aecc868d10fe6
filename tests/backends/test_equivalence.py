"""Every backend equals the reference (the oracle), forward AND backward.

Random cases come from hypothesis (batch 1..4, H and W 1..11 independently, kernels up to
5x5 and non-square, strides 1..3 per axis, 'valid' / 'same', C_in and C_out 1..5, float32
and float64); only valid cases are generated ('valid' windows fit the input). Fixed cases
pin the corners random shapes rarely hit: max-pool ties (only the FIRST maximum in
row-major window order gets the gradient, checked exactly against an independent loop),
kernel == input, 1x1 kernels, stride > kernel, 'same' with the odd padding row/column.

Every comparison also checks the contract's hygiene: inputs (dy included) are unchanged,
outputs keep the input dtype and never alias an input.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastcnn import activations, backends
from fastcnn.backends import _specs
from fastcnn.shapes import window_output_shape

REFERENCE = backends.get("reference")
TOLERANCE = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12),
    np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5),
}
DTYPES = st.sampled_from([np.float32, np.float64])
SEEDS = st.integers(0, 2**32 - 1)
MAX_SPATIAL = 11
# Sized so the file runs in seconds per NumPy backend on 2 shared cores; the cost is
# dominated by the reference's Python loops, which every example runs once.
WINDOW_EXAMPLES = settings(max_examples=200, deadline=None)
SMALL_EXAMPLES = settings(max_examples=100, deadline=None)


def op(backend, name):
    if not backend.implements(name):
        pytest.skip(f"backend {backend.name!r} does not implement {name!r}")
    return getattr(backend, name)


# ------------------------------------------------------------------------------ helpers


def assert_matches(actual, expected, dtype, what, case):
    __tracebackhide__ = True
    actual = np.asarray(actual)
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype} ({case})"
    assert actual.shape == np.shape(expected), (
        f"{what}: shape {actual.shape}, expected {np.shape(expected)} ({case})"
    )
    np.testing.assert_allclose(
        actual, expected, **TOLERANCE[np.dtype(dtype)], err_msg=f"{what} differs ({case})"
    )


def assert_untouched(arrays, pristine, case):
    __tracebackhide__ = True
    for name, a in arrays.items():
        if a is not None:
            assert np.array_equal(a, pristine[name], equal_nan=True), (
                f"the kernel modified its input {name!r} in place ({case})"
            )


def assert_no_alias(outputs, inputs, case):
    __tracebackhide__ = True
    for out_name, out in outputs.items():
        for in_name, a in inputs.items():
            if isinstance(out, np.ndarray) and isinstance(a, np.ndarray):
                assert not np.shares_memory(out, a), (
                    f"output {out_name!r} shares memory with input {in_name!r} ({case})"
                )


def run_pair(backend, fwd_name, bwd_name, inputs, args, dtype, seed, case):
    """Runs forward + backward on ``backend`` and on the reference, checks everything.

    ``inputs`` is an ordered ``{name: array or None}``; ``args`` are the trailing
    non-array arguments (stride, pad, ...). Returns the backend's (y, grads).
    """
    forward, backward = op(backend, fwd_name), op(backend, bwd_name)
    pristine = {k: None if a is None else a.copy() for k, a in inputs.items()}
    ref_inputs = {k: None if a is None else a.copy() for k, a in inputs.items()}

    y_ref, ctx_ref = getattr(REFERENCE, fwd_name)(*ref_inputs.values(), *args)
    y, ctx = forward(*inputs.values(), *args)
    assert_matches(y, y_ref, dtype, f"{fwd_name} output", case)

    dy = np.random.default_rng(seed + 1).standard_normal(y_ref.shape).astype(dtype)
    dy_pristine = dy.copy()
    grads_ref = _as_tuple(getattr(REFERENCE, bwd_name)(dy.copy(), ctx_ref))
    grads = _as_tuple(backward(dy, ctx))
    assert len(grads) == len(grads_ref), f"{bwd_name} returned {len(grads)} gradients"
    for name, g, g_ref in zip(inputs, grads, grads_ref):
        if g_ref is None:  # no bias: the contract says db is None
            assert g is None, f"{bwd_name}: d{name} should be None when {name} is None"
        else:
            assert_matches(g, g_ref, dtype, f"{bwd_name} d{name}", case)

    assert_untouched({**inputs, "dy": dy}, {**pristine, "dy": dy_pristine}, case)
    outputs = {"y": y, **{f"d{name}": g for name, g in zip(inputs, grads)}}
    assert_no_alias(outputs, {**inputs, "dy": dy}, case)
    return y, grads


def _as_tuple(result):
    return (result,) if isinstance(result, np.ndarray) else tuple(result)


def arrays_for(seed, dtype, **shapes):
    """Standard-normal arrays of ``dtype``; a name ending in ``w`` is scaled by 1/sqrt(fan-in)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if shape is None:
            out[name] = None
            continue
        a = rng.standard_normal(shape)
        if name == "w":
            a /= np.sqrt(np.prod(shape[:-1]))  # keeps outputs O(1): float32 stays accurate
        out[name] = a.astype(dtype)
    return out


# --------------------------------------------------------------------------- strategies


@st.composite
def window_cases(draw, max_window):
    """A valid (spatial, window, stride, padding) with its explicit pad from fastcnn.shapes."""
    padding = draw(st.sampled_from(["valid", "same"]))
    window = (draw(st.integers(1, max_window)), draw(st.integers(1, max_window)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    lowest = window if padding == "valid" else (1, 1)  # a 'valid' window must fit
    spatial = (
        draw(st.integers(lowest[0], max(lowest[0], MAX_SPATIAL))),
        draw(st.integers(lowest[1], max(lowest[1], MAX_SPATIAL))),
    )
    _, pad = window_output_shape(spatial, window, stride, padding)
    return dict(spatial=spatial, window=window, stride=stride, padding=padding, pad=pad)


# ------------------------------------------------------------------------ random: conv


@WINDOW_EXAMPLES
@given(
    geometry=window_cases(max_window=5),
    n=st.integers(1, 4),
    c_in=st.integers(1, 5),
    c_out=st.integers(1, 5),
    bias=st.booleans(),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_conv2d_matches_reference(backend, geometry, n, c_in, c_out, bias, dtype, seed):
    g = geometry
    inputs = arrays_for(
        seed, dtype, x=(n, *g["spatial"], c_in), w=(*g["window"], c_in, c_out),
        b=(c_out,) if bias else None,
    )
    case = dict(n=n, c_in=c_in, c_out=c_out, bias=bias, dtype=np.dtype(dtype).name, **g)
    run_pair(backend, "conv2d_forward", "conv2d_backward", inputs,
             (g["stride"], g["pad"]), dtype, seed, case)


# ---------------------------------------------------------------------- random: pooling


@WINDOW_EXAMPLES
@given(
    geometry=window_cases(max_window=4),
    kind=st.sampled_from(["maxpool2d", "avgpool2d"]),
    n=st.integers(1, 4),
    c=st.integers(1, 5),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_pool_matches_reference(backend, geometry, kind, n, c, dtype, seed):
    g = geometry
    inputs = arrays_for(seed, dtype, x=(n, *g["spatial"], c))
    case = dict(kind=kind, n=n, c=c, dtype=np.dtype(dtype).name, **g)
    run_pair(backend, f"{kind}_forward", f"{kind}_backward", inputs,
             (g["window"], g["stride"], g["pad"]), dtype, seed, case)


# ------------------------------------------------------------------------ random: dense


@SMALL_EXAMPLES
@given(
    n=st.integers(1, 4),
    d=st.integers(1, 12),
    u=st.integers(1, 6),
    bias=st.booleans(),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_dense_matches_reference(backend, n, d, u, bias, dtype, seed):
    inputs = arrays_for(seed, dtype, x=(n, d), w=(d, u), b=(u,) if bias else None)
    case = dict(n=n, d=d, u=u, bias=bias, dtype=np.dtype(dtype).name)
    run_pair(backend, "dense_forward", "dense_backward", inputs, (), dtype, seed, case)


# ------------------------------------------------------------------ random: activations


@SMALL_EXAMPLES
@given(
    name=st.sampled_from([n for n in activations.KNOWN if n != "linear"]),
    shape=st.one_of(
        st.tuples(st.integers(1, 4), st.integers(1, 7)),
        st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4)),
    ),
    scale=st.sampled_from([1.0, 10.0]),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_activation_matches_reference(backend, name, shape, scale, dtype, seed):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal(shape)
    x[rng.random(shape) < 0.2] = 0.0  # exact zeros: ReLU's derivative there is 0
    x = x.astype(dtype)
    case = dict(name=name, shape=shape, scale=scale, dtype=np.dtype(dtype).name)
    run_pair(backend, f"{name}_forward", f"{name}_backward", {"x": x}, (), dtype, seed, case)


@SMALL_EXAMPLES
@given(
    params=st.sampled_from([(0.0, None, 0.0), (0.3, None, 0.0), (0.0, 6.0, 0.0),
                            (0.2, 4.0, 1.0), (0.0, None, 2.0), (0.1, None, -1.5),
                            (0.0, 3.0, -1.0)]),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4)),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_relu_general_matches_reference(backend, params, shape, dtype, seed):
    """Keras's relu(x, negative_slope, max_value, threshold), kinks included: exact zeros,
    values at the threshold and at max_value."""
    rng = np.random.default_rng(seed)
    x = 4.0 * rng.standard_normal(shape)
    x[rng.random(shape) < 0.1] = 0.0
    x[rng.random(shape) < 0.1] = params[2]
    if params[1] is not None:
        x[rng.random(shape) < 0.1] = params[1]
    x = x.astype(dtype)
    case = dict(params=params, shape=shape, dtype=np.dtype(dtype).name)
    run_pair(backend, "relu_general_forward", "relu_general_backward", {"x": x}, params,
             dtype, seed, case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,alpha_shape", [
    ((3, 4, 5, 2), (4, 5, 2)), ((3, 4, 5, 2), (1, 1, 2)), ((3, 4, 5, 2), (4, 1, 1)),
    ((2, 6), (6,)), ((2, 1, 3), (1, 1)), ((0, 3), (3,)),
], ids=str)
def test_prelu_matches_reference(backend, x_shape, alpha_shape, dtype):
    inputs = arrays_for(7, dtype, x=x_shape, alpha=alpha_shape)
    inputs["x"][..., 0] = 0.0  # the kink: derivative 0, alpha's share 0
    case = dict(x=x_shape, alpha=alpha_shape, dtype=np.dtype(dtype).name)
    run_pair(backend, "prelu_forward", "prelu_backward", inputs, (), dtype, 7, case)


# ----------------------------------------------------------------------- random: losses


def run_loss(backend, name, logits, targets, dtype, case):
    loss_fn = op(backend, name)
    pristine = (logits.copy(), targets.copy())
    loss_ref, dlogits_ref = getattr(REFERENCE, name)(logits.copy(), targets.copy())
    loss, dlogits = loss_fn(logits, targets)
    if not isinstance(loss, float):  # the contract allows a Python float or a 0-d array
        loss = np.asarray(loss)
        assert loss.shape == () and loss.dtype == dtype, (
            f"{name}: loss must be a 0-d array of dtype {np.dtype(dtype)}, got shape "
            f"{loss.shape} dtype {loss.dtype} ({case})"
        )
    assert_matches(np.asarray(loss, dtype=dtype), loss_ref, dtype, f"{name} loss", case)
    assert_matches(dlogits, dlogits_ref, dtype, f"{name} dlogits", case)
    assert_untouched({"logits": logits, "targets": targets},
                     {"logits": pristine[0], "targets": pristine[1]}, case)
    assert_no_alias({"dlogits": dlogits}, {"logits": logits, "targets": targets}, case)


@SMALL_EXAMPLES
@given(
    n=st.integers(1, 4),
    k=st.integers(1, 6),
    scale=st.sampled_from([1.0, 30.0]),
    target_kind=st.sampled_from(["one_hot", "probabilities", "unnormalised"]),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_losses_match_reference(backend, n, k, scale, target_kind, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((n, k))).astype(dtype)
    labels = rng.integers(0, k, n)
    targets = {
        "one_hot": np.eye(k)[labels],
        "probabilities": rng.dirichlet(np.ones(k), size=n),
        "unnormalised": rng.random((n, k)),
    }[target_kind].astype(dtype)
    case = dict(n=n, k=k, scale=scale, targets=target_kind, dtype=np.dtype(dtype).name)
    run_loss(backend, "softmax_cross_entropy", logits, targets, dtype, case)
    run_loss(backend, "sparse_softmax_cross_entropy", logits, labels, dtype, case)
    sigmoid_targets = targets if target_kind != "unnormalised" else targets.clip(0, 1)
    run_loss(backend, "sigmoid_cross_entropy", logits, sigmoid_targets, dtype, case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_losses_stable_for_extreme_logits(backend, dtype):
    # "Stable for any logit": exp(1000) overflows in both dtypes, so a formulation that
    # ever exponentiates a positive number warns (raised here) or returns inf/NaN.
    logits = np.array([[1000.0, -1000.0, 0.0], [-800.0, -790.0, 900.0]], dtype)
    targets = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]], dtype)
    labels = np.array([1, 2])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for name, t in [("softmax_cross_entropy", targets),
                        ("sparse_softmax_cross_entropy", labels),
                        ("sigmoid_cross_entropy", targets)]:
            loss, dlogits = op(backend, name)(logits, t)
            assert np.isfinite(loss) and np.isfinite(dlogits).all(), name
            run_loss(backend, name, logits, t, dtype, dict(extreme=True))


# ------------------------------------------------- independent oracles (for fixed cases)


def window_taps(x, window, stride, pad, fill):
    """Yields ``(k, view)`` per window tap in row-major order, ``k = a*kw + b``.

    ``view[n, i, j, ch] = x_padded[n, i*sh + a, j*sw + b, ch]``: the tap-(a, b) element of
    every window at once (independent of every backend's own indexing).
    """
    (kh, kw), (sh, sw) = window, stride
    xp = np.pad(x, ((0, 0), *pad, (0, 0)), constant_values=fill)
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    for a in range(kh):
        for b in range(kw):
            yield a * kw + b, xp[:, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw]


def naive_conv(x, w, b, stride, pad):
    """Independent conv oracle in float64: one matrix product per kernel tap."""
    kh, kw = w.shape[:2]
    y = sum(view @ w[k // kw, k % kw].astype(np.float64)
            for k, view in window_taps(x.astype(np.float64), (kh, kw), stride, pad, 0.0))
    return y if b is None else y + b


def naive_avgpool(x, pool, stride, pad):
    """Mean over the real elements: padded zeros add nothing, a padded mask counts them."""
    total = sum(view for _, view in window_taps(x.astype(np.float64), pool, stride, pad, 0.0))
    real = sum(view for _, view in window_taps(np.ones_like(x, np.float64), pool, stride, pad, 0.0))
    return total / real


def first_max_pool(x, pool, stride, pad):
    """Max pooling where the FIRST max in row-major tap order wins; padding never wins.

    Returns ``(y, winner)``, ``winner[n, i, j, ch]`` = the winning tap ``k = a*pw + b``.
    """
    y, winner = None, None
    for k, view in window_taps(x, pool, stride, pad, -np.inf):
        if y is None:
            y, winner = view.copy(), np.zeros(view.shape, int)
        else:
            better = view > y  # strictly greater: a tie keeps the earlier tap
            y[better], winner[better] = view[better], k
    return y, winner


def first_max_pool_grad(x_shape, winner, dy, pool, stride, pad):
    """Each dy goes to its window's winning tap; overlapping windows accumulate."""
    (_, pw), (sh, sw), ((top, bottom), (left, right)) = pool, stride, pad
    n_b, h, w, c = x_shape
    dxp = np.zeros((n_b, h + top + bottom, w + left + right, c), dy.dtype)
    for n, i, j, ch in np.ndindex(*dy.shape):
        k = winner[n, i, j, ch]  # tap k = a*pw + b sits at padded (i*sh + a, j*sw + b)
        dxp[n, i * sh + k // pw, j * sw + k % pw, ch] += dy[n, i, j, ch]
    return dxp[:, top : top + h, left : left + w]


@settings(max_examples=100, deadline=None)
@given(
    geometry=window_cases(max_window=5),
    n=st.integers(1, 3),
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    seed=SEEDS,
)
def test_reference_forward_matches_independent_oracles(geometry, n, c_in, c_out, seed):
    """The oracle itself, checked once (not per backend): its forwards against the
    formulas above; its backwards are checked against these forwards by test_gradients."""
    g = geometry
    args = (g["stride"], g["pad"])
    inputs = arrays_for(seed, np.float64, x=(n, *g["spatial"], c_in),
                        w=(*g["window"], c_in, c_out), b=(c_out,))
    y, _ = REFERENCE.conv2d_forward(*inputs.values(), *args)
    np.testing.assert_allclose(y, naive_conv(*inputs.values(), *args), rtol=1e-10, atol=1e-12)
    x = inputs["x"]
    if max(g["window"]) <= 4:
        args = (g["window"], *args)
        y, _ = REFERENCE.avgpool2d_forward(x, *args)
        np.testing.assert_allclose(y, naive_avgpool(x, *args), rtol=1e-10, atol=1e-12)
        y, _ = REFERENCE.maxpool2d_forward(x, *args)
        np.testing.assert_array_equal(y, first_max_pool(x, *args)[0])


# ------------------------------------------------------------ fixed: max-pool tie rule

TIE_CASES = [
    # (spatial, pool, stride, padding)
    ((4, 6), (2, 2), (2, 2), "valid"),  # tiling windows
    ((5, 7), (3, 3), (1, 1), "valid"),  # heavy overlap
    ((5, 6), (3, 2), (2, 1), "same"),  # overlap + padding on both sides
    ((6, 5), (2, 3), (1, 2), "same"),
    ((7, 7), (2, 2), (3, 3), "valid"),  # stride > pool: some inputs in no window
    ((3, 4), (4, 4), (1, 1), "same"),  # windows mostly padding
]


@pytest.mark.parametrize("spatial, pool, stride, padding", TIE_CASES)
@pytest.mark.parametrize("values", ["all_zero", "repeated_maxima", "all_negative"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_maxpool_ties_first_max_takes_gradient(backend, spatial, pool, stride, padding,
                                               values, dtype):
    forward = op(backend, "maxpool2d_forward")
    backward = op(backend, "maxpool2d_backward")
    rng = np.random.default_rng(7)
    shape = (2, *spatial, 3)
    x = {
        "all_zero": np.zeros(shape),
        "repeated_maxima": rng.integers(0, 3, shape).astype(float),  # ties everywhere
        "all_negative": rng.integers(-3, 0, shape).astype(float),  # -inf padding matters
    }[values].astype(dtype)
    _, pad = window_output_shape(spatial, pool, stride, padding)
    y_expected, winner = first_max_pool(x, pool, stride, pad)
    y, ctx = forward(x, pool, stride, pad)
    np.testing.assert_array_equal(y, y_expected)
    # Small integer dy: every accumulation is exact in float32 too, so dx must be EXACT.
    dy = rng.integers(1, 10, y.shape).astype(dtype)
    dx = backward(dy, ctx)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, first_max_pool_grad(x.shape, winner, dy, pool, stride, pad))


# --------------------------------------------------------------- fixed: conv corners


CONV_CORNERS = {
    # name: (spatial, kernel, stride, padding)
    "kernel_equals_input": ((4, 3), (4, 3), (1, 1), "valid"),
    "kernel_equals_input_strided": ((5, 2), (5, 2), (2, 3), "valid"),
    "1x1": ((3, 5), (1, 1), (1, 1), "valid"),
    "1x1_strided_same": ((5, 4), (1, 1), (2, 3), "same"),
    "stride_larger_than_kernel": ((8, 7), (2, 1), (3, 3), "valid"),
    "stride_larger_than_kernel_same": ((7, 8), (2, 2), (3, 3), "same"),
    "same_odd_padding_h": ((5, 6), (4, 3), (1, 1), "same"),  # pad H (1, 2), W (1, 1)
    "same_odd_padding_w": ((6, 5), (1, 2), (1, 1), "same"),  # pad W (0, 1)
    "same_odd_padding_strided": ((6, 7), (3, 4), (2, 2), "same"),
    "kernel_larger_than_input_same": ((2, 3), (5, 4), (1, 1), "same"),
}


@pytest.mark.parametrize("name", list(CONV_CORNERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_conv2d_corner_cases(backend, name, dtype):
    spatial, kernel, stride, padding = CONV_CORNERS[name]
    (ho, wo), pad = window_output_shape(spatial, kernel, stride, padding)
    if name.startswith("same_odd_padding"):
        # The point of these cases: the odd extra row/column goes bottom/right.
        assert any(after == before + 1 for before, after in pad), pad
    inputs = arrays_for(3, dtype, x=(2, *spatial, 3), w=(*kernel, 3, 2), b=(2,))
    y, _ = run_pair(backend, "conv2d_forward", "conv2d_backward", inputs, (stride, pad),
                    dtype, 3, dict(name=name, dtype=np.dtype(dtype).name))
    assert y.shape == (2, ho, wo, 2)
    np.testing.assert_allclose(y, naive_conv(*inputs.values(), stride, pad),
                               **TOLERANCE[np.dtype(dtype)])


POOL_CORNERS = {
    "pool_equals_input": ((3, 4), (3, 4), (1, 1), "valid"),
    "1x1": ((3, 5), (1, 1), (2, 1), "valid"),
    "stride_larger_than_pool": ((8, 7), (2, 2), (3, 3), "valid"),
    "same_odd_padding": ((5, 6), (4, 3), (1, 1), "same"),
    "pool_larger_than_input_same": ((2, 3), (4, 4), (1, 2), "same"),
}


@pytest.mark.parametrize("name", list(POOL_CORNERS))
@pytest.mark.parametrize("kind", ["maxpool2d", "avgpool2d"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_pool_corner_cases(backend, name, kind, dtype):
    spatial, pool, stride, padding = POOL_CORNERS[name]
    (ho, wo), pad = window_output_shape(spatial, pool, stride, padding)
    inputs = arrays_for(5, dtype, x=(2, *spatial, 3))
    y, _ = run_pair(backend, f"{kind}_forward", f"{kind}_backward", inputs,
                    (pool, stride, pad), dtype, 5, dict(name=name, kind=kind))
    assert y.shape == (2, ho, wo, 3)
    x = inputs["x"]
    if kind == "maxpool2d":
        np.testing.assert_array_equal(y, first_max_pool(x, pool, stride, pad)[0])
    else:
        np.testing.assert_allclose(y, naive_avgpool(x, pool, stride, pad),
                                   **TOLERANCE[np.dtype(dtype)])


# ----------------------------------------------------------- fixed: read-only inputs


@pytest.mark.parametrize("spec", list(_specs.SPECS.values()), ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_accept_read_only_inputs(backend, spec, dtype):
    """A kernel that never writes its inputs works on read-only arrays (np.load(mmap_mode='r'),
    np.broadcast_to...): the strongest form of the no-modification rule. Every op of the
    contract (its spec's example arguments), forward and backward."""

    def frozen(*arrays):
        out = []
        for a in arrays:
            if isinstance(a, np.ndarray):
                a = a.copy()
                a.flags.writeable = False
            out.append(a)
        return out

    for name in spec.ops:
        op(backend, name)   # skips where the backend lacks it
    args = frozen(*spec.example(np.random.default_rng(11), dtype))
    out = getattr(backend, spec.forward_op)(*args)
    if spec.fused:   # (y, ctx per fused pair), backwards in reverse order
        if out is None:
            return   # not fused on this backend: nothing ran
        grad = out[0]
        for part, ctx in reversed(list(zip(spec.fused, out[1:]))):
            grad = _as_tuple(getattr(backend, f"{part}_backward")(*frozen(np.ones_like(grad)),
                                                                  ctx))[0]
    elif spec.is_pair:
        y, ctx = out
        getattr(backend, spec.backward_op)(*frozen(np.ones_like(y)), ctx)
