"""Numerical gradient checks: prove that a backward is the derivative of its forward.

The design is Chainer's ``gradient_check.check_backward``. An op is a pair
``forward(*inputs) -> (y, ctx)`` and ``backward(dy, ctx) -> gradients`` (exactly the shape
of the kernel contract in :mod:`fastcnn.backends`). The checker turns the op into the
scalar ``L = sum(forward(*inputs)[0] * dy)`` for a fixed upstream gradient ``dy``; by
definition of a backward, ``backward(dy, ctx)`` must then be ``dL/d(input)`` for every
input, which central differences ``(L(x + eps) - L(x - eps)) / (2 eps)`` estimate with an
error of order ``eps**2``.

Checking a new layer or kernel
------------------------------
::

    import numpy as np
    from fastcnn import backends, gradcheck
    from fastcnn.shapes import window_output_shape

    be = backends.get("reference")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4, 3))          # float64, tiny
    w = rng.standard_normal((3, 2, 3, 4))
    b = rng.standard_normal(4)                     # check biases too
    _, pad = window_output_shape((5, 4), (3, 2), (2, 1), "same")
    gradcheck.check_backward(
        lambda x, w, b: be.conv2d_forward(x, w, b, (2, 1), pad),
        be.conv2d_backward, [x, w, b])

    # ReLU and max pooling have kinks: feed them gradcheck.off_kinks(shape, rng).
    x = gradcheck.off_kinks((2, 5, 4, 3), rng)
    gradcheck.check_backward(be.relu_forward, be.relu_backward, [x])

A failure raises :class:`GradientCheckError` (an ``AssertionError``, so pytest reports it
as a test failure) naming the input, the worst element, both values and the error. For a
scalar function of arrays changed in place, such as a model's loss as a function of its
weights, use :func:`check_scalar_gradient`.

The rules, and why
------------------
* **float64 only.** With ``eps = 1e-6`` the difference ``L(x + eps) - L(x - eps)`` is
  about ``1e-6 * |dL/dx|``; float32 stores ``L`` with a relative error near ``6e-8``, so
  the quotient would be mostly rounding noise (errors of percents) and the check would
  say nothing. Raising ``eps`` instead lets the ``eps**2`` truncation error in, and hides
  small bugs. So every checked array must be float64: run the op in float64, which every
  CPU backend supports for exactly this reason.
* **A random upstream gradient, never ones** (nor the gradient of ``mean``). With a
  uniform ``dy`` every output position weighs the same, so a backward that reads ``dy``
  at the wrong index (a transposed or flipped ``dy``, a reversed batch, the wrong
  channel) gets the same sums and passes. A random ``dy`` gives every output its own
  weight.
* **Inputs off kinks.** ReLU has no derivative at 0 and max pooling none where two
  window elements tie: a central difference across a kink averages the two one-sided
  slopes and disagrees with any backward. :func:`off_kinks` returns distinct values with
  magnitudes in ``[0.1, 1]``, which no ``eps``-sized perturbation can push across 0 or
  across one another.
* **Every element of every input**, biases included, when the inputs are small (a full
  Jacobian-vector check: ``2 * size`` forward calls). Larger inputs get ``k`` random
  unit directions ``u`` per input and the comparison ``g . u`` against
  ``(L(x + eps u) - L(x - eps u)) / (2 eps)``: a wrong gradient is caught by almost
  every random direction, at ``2 * k`` forward calls.

Agreement means ``|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)``.
The reported *relative error* is ``|analytic - numeric| / (max(|analytic|, |numeric|) +
atol / rtol)``, which is ``<= rtol`` exactly when the element agrees; ``atol`` only
matters for gradients near zero. ``atol`` is raised, when needed, to the rounding noise
of the numerical gradient itself, about ``u * sum|y * dy| / eps`` (``u`` = float64
machine epsilon): each ``L`` is rounded relative to the size of its terms, whatever
the element, so a gradient element of ``3e-4`` in a check whose terms sum to 100 can
only be resolved to about 2e-8 and would otherwise fail at random. A wrong gradient is
off by a sizeable fraction of the gradient itself, far above that floor.

The checked arrays are perturbed IN PLACE and restored exactly (the saved value is
written back, never ``x + eps - eps``), so ``forward`` may hold references to them, and
``forward`` must be deterministic (no dropout, no random augmentation).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GradientCheckError",
    "GradientCheckResult",
    "numerical_gradient",
    "check_backward",
    "check_scalar_gradient",
    "off_kinks",
]

# Above this many checked elements (all inputs together) check_backward switches from the
# full Jacobian-vector check to random directions: 2 forwards per element stops being cheap.
_FULL_CHECK_MAX_ELEMENTS = 3000
_DEFAULT_DIRECTIONS = 10

_FLOAT64_ONLY = (
    "gradient checks need float64: with eps={eps:g} a float32 loss is stored with a relative "
    "error near 6e-8, so (L(x+eps) - L(x-eps)) / (2 eps) would be mostly rounding noise; "
    "run the op in float64 (every CPU backend supports it)"
)


class GradientCheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one (or is missing / misshapen)."""


@dataclass(frozen=True)
class GradientCheckResult:
    """What a passed check measured.

    ``max_rel_error[i]`` / ``max_abs_error[i]``: the worst error over the checked
    elements (or directions) of input ``i``; inputs that were not checked are absent.
    ``mode`` is ``"full"`` (every element), ``"directions"`` (random directions) or
    ``"subset"`` (:func:`check_scalar_gradient` with ``max_elements``); ``evaluations``
    counts the calls of the scalar function; ``noise_floor`` is the estimated rounding
    noise of the numerical gradient (the smallest absolute tolerance used).
    """

    max_rel_error: dict
    max_abs_error: dict
    mode: str
    evaluations: int
    noise_floor: float


def off_kinks(shape, rng, dtype=np.float64):
    """Values safe for ReLU / max-pool gradient checks, of the given ``shape``.

    A shuffled linspace of magnitudes in ``[0.1, 1]`` with random signs: no value is
    within 0.1 of ReLU's kink at 0, and all values are distinct (the magnitudes are) and
    at least ``0.9 / (size - 1)`` apart, so no max-pool window has a tie that an ``eps``
    perturbation could flip.
    """
    shape = (int(shape),) if isinstance(shape, numbers.Integral) else tuple(shape)
    size = int(np.prod(shape))
    magnitudes = np.linspace(0.1, 1.0, size) if size > 1 else np.full(size, 0.55)
    signs = rng.choice(np.array([-1.0, 1.0]), size=size)
    values = rng.permutation(magnitudes) * signs
    return values.reshape(shape).astype(dtype)


def numerical_gradient(f, x, eps=1e-6):
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``x`` is perturbed in place, one element at a time, and each element is restored to
    its exact saved value (also when ``f`` raises). Returns a new float64 array shaped
    like ``x``.
    """
    _require_float64("x", x, eps)
    _check_eps(eps)
    grad = np.empty(x.shape, dtype=np.float64)
    for index in np.ndindex(*x.shape):
        grad[index] = _central_difference(f, x, index, eps)
    return grad


def check_backward(
    forward,
    backward,
    inputs,
    dy=None,
    *,
    eps=1e-6,
    rtol=1e-6,
    atol=1e-9,
    seed=0,
    directions=None,
    wrt=None,
):
    """Checks ``backward`` against central differences of ``forward`` (see the module doc).

    ``forward(*inputs) -> (y, ctx)``; ``backward(dy, ctx)`` returns one gradient per input
    (a bare array for a one-input op), or one per input listed in ``wrt``. An input may be
    None (e.g. no bias); its gradient must then be None. ``wrt`` (indices into ``inputs``)
    limits the check to those inputs; the others may be anything ``forward`` accepts
    (integer labels, say). ``dy`` defaults to a standard-normal array drawn with ``seed``.
    ``directions=k`` forces the random-direction check with ``k`` directions per input;
    by default every element is checked when the checked inputs hold at most 3000
    elements, else 10 directions per input.

    Also fails when forward or backward changes an input or ``dy`` in place, or when
    ``forward`` is not deterministic. Raises :class:`GradientCheckError` on disagreement,
    TypeError for non-float64 arrays. Returns a :class:`GradientCheckResult`.
    """
    _check_eps(eps)
    _check_tolerances(rtol, atol)
    inputs = list(inputs)
    checked = _checked_indices(inputs, wrt)
    for i in checked:
        _require_float64(f"inputs[{i}]", inputs[i], eps)
    rng = np.random.default_rng(seed)

    before = {i: inputs[i].copy() for i in checked}
    y, ctx = forward(*inputs)
    y = np.asarray(y)
    if dy is None:
        dy = rng.standard_normal(y.shape)
    else:
        dy = np.asarray(dy)
        _require_float64("dy", dy, eps)
        if dy.shape != y.shape:
            raise ValueError(f"dy must have the output's shape {y.shape}, got {dy.shape}")
    dy_before = dy.copy()
    grads = _normalise_grads(backward(dy, ctx), inputs, checked, wrt)
    changed = [f"inputs[{i}]" for i in checked if not _same(inputs[i], before[i])]
    changed += ["dy"] if not _same(dy, dy_before) else []
    if changed:
        raise GradientCheckError(
            f"forward or backward modified {', '.join(changed)} in place; an op must never "
            f"change its inputs (nor the upstream gradient)"
        )

    def loss():
        return _fsum(np.asarray(forward(*inputs)[0]) * dy)

    _check_deterministic(loss)
    # Each L is rounded relative to the size of its terms y*dy, so the difference quotient
    # carries an absolute noise of about u * sum|y*dy| / eps whatever the element; below
    # that no numerical gradient can resolve anything, so atol never goes below it.
    tol = _Tolerance(rtol, atol, _EPS64 * _fsum(np.abs(y * dy)) / eps)
    total = sum(inputs[i].size for i in checked)
    if directions is None and total > _FULL_CHECK_MAX_ELEMENTS:
        directions = _DEFAULT_DIRECTIONS
    if directions is not None:
        return _check_directions(loss, inputs, grads, checked, directions, eps, tol, rng)
    return _check_elements(loss, inputs, grads, checked, None, eps, tol, rng)


def check_scalar_gradient(
    f, arrays, grads, *, eps=1e-6, rtol=1e-6, atol=1e-9, max_elements=None, seed=0
):
    """Checks ``grads[i] == d f() / d arrays[i]`` for a scalar ``f()`` of arrays changed in place.

    Meant for whole models: ``arrays`` are the weights (float64), ``f`` recomputes the loss
    from them, ``grads`` are the analytic gradients computed at the current weights. Every
    element is checked, or, with ``max_elements``, a random subset of that many elements
    per array (drawn with ``seed``). Arrays are restored exactly. Raises
    :class:`GradientCheckError`; returns a :class:`GradientCheckResult`.
    """
    _check_eps(eps)
    _check_tolerances(rtol, atol)
    arrays, grads = list(arrays), list(grads)
    if len(arrays) != len(grads):
        raise ValueError(f"got {len(arrays)} arrays but {len(grads)} gradients")
    if max_elements is not None and (
        not isinstance(max_elements, numbers.Integral) or max_elements < 1
    ):
        raise ValueError(f"max_elements must be a positive int or None, got {max_elements!r}")
    for i, a in enumerate(arrays):
        _require_float64(f"arrays[{i}]", a, eps)
    checked = list(range(len(arrays)))
    grads = {i: _as_gradient(grads[i], arrays[i], i) for i in checked}

    def loss():
        return float(f())

    _check_deterministic(loss)
    # Only the rounding of the value itself is known here (a lower bound of the noise).
    tol = _Tolerance(rtol, atol, _EPS64 * abs(loss()) / eps)
    rng = np.random.default_rng(seed)
    return _check_elements(loss, arrays, grads, checked, max_elements, eps, tol, rng)


# ----------------------------------------------------------------------------------------
# The two checking strategies
# ----------------------------------------------------------------------------------------

_EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class _Tolerance:
    rtol: float
    atol: float
    noise_floor: float

    @property
    def effective_atol(self):
        return max(self.atol, self.noise_floor)


def _check_elements(loss, arrays, grads, checked, max_elements, eps, tol, rng):
    rel_errors, abs_errors, evaluations, subset = {}, {}, 0, False
    for i in checked:
        x, g = arrays[i], grads[i]
        flat = np.arange(x.size)
        if max_elements is not None and x.size > max_elements:
            flat = np.sort(rng.choice(x.size, size=max_elements, replace=False))
            subset = True
        indices = [np.unravel_index(k, x.shape) for k in flat]
        analytic = np.array([g[index] for index in indices], dtype=np.float64)
        numeric = np.array([_central_difference(loss, x, index, eps) for index in indices])
        evaluations += 2 * len(indices)
        rel_errors[i], abs_errors[i] = _compare(
            analytic, numeric, tol, i, x.shape,
            lambda k: f"element {tuple(int(v) for v in indices[k])}",
            f"{len(indices)} of {x.size} elements" if subset else f"all {x.size} elements",
        )
    mode = "subset" if subset else "full"
    return GradientCheckResult(rel_errors, abs_errors, mode, evaluations, tol.noise_floor)


def _check_directions(loss, arrays, grads, checked, k, eps, tol, rng):
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"directions must be a positive int or None, got {k!r}")
    rel_errors, abs_errors = {}, {}
    for i in checked:
        x, g = arrays[i], grads[i]
        saved = x.copy()
        analytic, numeric = np.empty(k), np.empty(k)
        for d in range(k):
            u = rng.standard_normal(x.shape)
            u /= np.linalg.norm(u) if u.size else 1.0
            analytic[d] = _fsum(g * u)
            try:
                np.add(saved, eps * u, out=x)
                up = loss()
                np.subtract(saved, eps * u, out=x)
                down = loss()
            finally:
                np.copyto(x, saved)  # exact restore: x + eps*u - eps*u need not be x
            numeric[d] = (up - down) / (2 * eps)
        rel_errors[i], abs_errors[i] = _compare(
            analytic, numeric, tol, i, x.shape,
            lambda d: f"random unit direction #{d} (gradient . direction)",
            f"{k} random directions",
        )
    return GradientCheckResult(
        rel_errors, abs_errors, "directions", 2 * k * len(checked), tol.noise_floor
    )


def _compare(analytic, numeric, tol, i, shape, describe, what):
    """Max (relative, absolute) error; raises GradientCheckError naming the worst entry."""
    diff = np.abs(analytic - numeric)
    scale = np.maximum(np.abs(analytic), np.abs(numeric))
    rel = diff / (scale + tol.effective_atol / tol.rtol)
    # NaN must fail, never pass: NaN > rtol is False, so test "not <=" instead.
    bad = ~(rel <= tol.rtol)
    if not bad.any():
        return float(rel.max(initial=0.0)), float(diff.max(initial=0.0))
    worst = int(np.argmax(np.where(np.isnan(rel), np.inf, rel)))
    raise GradientCheckError(
        f"gradient check failed for input {i} (shape {tuple(shape)}): "
        f"{int(bad.sum())} of {len(rel)} checked ({what}) disagree. Worst: {describe(worst)}: "
        f"analytic {analytic[worst]:.10g}, numeric {numeric[worst]:.10g}, "
        f"abs error {diff[worst]:.3g}, relative error {rel[worst]:.3g} > rtol {tol.rtol:g} "
        f"(atol {tol.atol:g}, rounding-noise floor {tol.noise_floor:.2g})"
    )


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _central_difference(f, x, index, eps):
    original = x[index]
    try:
        x[index] = original + eps
        up = float(f())
        x[index] = original - eps
        down = float(f())
    finally:
        x[index] = original  # the saved value, bit for bit
    return (up - down) / (2 * eps)


def _fsum(a):
    # An exactly rounded sum: the reduction adds no rounding noise of its own to L, so
    # the differences L(x + eps) - L(x - eps) see only the forward's own rounding.
    return math.fsum(np.asarray(a, dtype=np.float64).ravel().tolist())


def _same(a, b):
    return np.array_equal(a, b, equal_nan=True)


def _check_deterministic(loss):
    first, second = loss(), loss()
    if not (first == second or (np.isnan(first) and np.isnan(second))):
        raise GradientCheckError(
            f"the function is not deterministic: two calls at the same point gave {first!r} "
            f"and {second!r}; remove randomness (dropout, augmentation) before checking"
        )


def _checked_indices(inputs, wrt):
    if wrt is None:
        return [i for i, a in enumerate(inputs) if a is not None]
    wrt = list(wrt)
    for i in wrt:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(inputs):
            raise ValueError(f"wrt must list indices into inputs (0..{len(inputs) - 1}), got {i!r}")
        if inputs[i] is None:
            raise ValueError(f"wrt lists input {i}, which is None")
    if len(set(wrt)) != len(wrt):
        raise ValueError(f"wrt lists an input twice: {wrt}")
    return [int(i) for i in wrt]


def _normalise_grads(result, inputs, checked, wrt):
    """``{input index: gradient array}`` for the checked inputs, after shape checks."""
    if isinstance(result, np.ndarray):
        result = (result,)
    result = tuple(result)
    if len(result) == len(inputs):
        by_input = dict(enumerate(result))
    elif wrt is not None and len(result) == len(checked):
        by_input = dict(zip(checked, result))
    else:
        raise GradientCheckError(
            f"backward returned {len(result)} gradients for {len(inputs)} inputs"
            + (f" ({len(checked)} listed in wrt)" if wrt is not None else "")
        )
    for i, g in by_input.items():
        if inputs[i] is None and g is not None:
            raise GradientCheckError(
                f"backward returned a gradient for input {i}, which is None (expected None)"
            )
    return {i: _as_gradient(by_input[i], inputs[i], i) for i in checked}


def _as_gradient(g, x, i):
    if g is None:
        raise GradientCheckError(
            f"backward returned None for input {i} (shape {x.shape}); every input that is "
            f"not None needs a gradient"
        )
    g = np.asarray(g)
    if g.shape != x.shape:
        raise GradientCheckError(
            f"gradient of input {i} has shape {g.shape}, expected the input's shape {x.shape}"
        )
    return g


def _require_float64(name, a, eps):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a float64 numpy array, got {type(a).__name__}")
    if a.dtype != np.float64:
        raise TypeError(f"{name} has dtype {a.dtype}; " + _FLOAT64_ONLY.format(eps=eps))


def _check_eps(eps):
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"eps must be a small positive float, got {eps!r}")


def _check_tolerances(rtol, atol):
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol!r}")
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol!r}")
