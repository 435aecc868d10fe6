"""Every op of the contract on every backend, from its spec alone (fastcnn/backends/_specs.py):
a new op's spec puts it in these matrices with no edit here. The op-specific suites
(test_equivalence, test_gradients, ...) test each op's corners; these check that every
kernel a backend has agrees with the reference on a small example, forward and backward,
in both dtypes, and that what it returns has the input's dtype."""
import numpy as np
import pytest

from fastcnn import backends
from fastcnn.backends import _specs

REFERENCE = backends.get("reference")
TOLERANCE = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-9, atol=1e-10)}
SPECS = list(_specs.SPECS.values())


def _as_tuple(result):
    return (result,) if not isinstance(result, tuple) else result


def _same(actual, expected, dtype, what):
    if expected is None:
        assert actual is None, what
        return
    actual = np.asarray(actual)
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}"
    np.testing.assert_allclose(actual, expected, **TOLERANCE[dtype], err_msg=what)


def _need(backend, spec):
    missing = [op for op in spec.requires + spec.ops if not backend.implements(op)]
    if missing:
        pytest.skip(f"backend {backend.name!r} does not implement {missing}")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_op_matches_the_reference_on_its_example(backend, spec, dtype):
    _need(backend, spec)
    args = spec.example(np.random.default_rng(3), dtype)
    out = getattr(backend, spec.forward_op)(*args)
    if spec.fused:
        if out is None:
            return   # not fused here (allowed): the caller runs the parts one by one
        # The parts on the reference, one by one.
        y_ref, ref_ctxs, inputs = args[0], [], args
        for part in spec.fused:
            n = len(_specs.SPECS[part].signature().parameters)
            y_ref, ctx = getattr(REFERENCE, f"{part}_forward")(y_ref, *inputs[1:n])
            inputs = (None, *inputs[n:])
            ref_ctxs.append(ctx)
        _same(out[0], y_ref, dtype, f"{spec.name} y")
        grad, grad_ref = np.ones_like(y_ref), np.ones_like(y_ref)
        for part, ctx, ref_ctx in reversed(list(zip(spec.fused, out[1:], ref_ctxs))):
            grad = _as_tuple(getattr(backend, f"{part}_backward")(grad, ctx))[0]
            grad_ref = _as_tuple(getattr(REFERENCE, f"{part}_backward")(grad_ref, ref_ctx))[0]
        _same(grad, grad_ref, dtype, f"{spec.name} dx through {spec.fused}")
        return
    ref = getattr(REFERENCE, spec.forward_op)(*args)
    if not spec.is_pair:   # a loss: (loss, dlogits)
        for got, want, what in zip(out, ref, ("loss", "dlogits")):
            _same(got, want, dtype, f"{spec.name} {what}")
        return
    (y, ctx), (y_ref, ctx_ref) = out, ref
    _same(y, y_ref, dtype, f"{spec.forward_op} y")
    dy = np.random.default_rng(4).standard_normal(y_ref.shape).astype(dtype)
    grads = _as_tuple(getattr(backend, spec.backward_op)(dy, ctx))
    grads_ref = _as_tuple(getattr(REFERENCE, spec.backward_op)(dy, ctx_ref))
    assert len(grads) == len(grads_ref)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        _same(g, g_ref, dtype, f"{spec.backward_op} output {i}")
    if spec.need_dx:   # need_dx=False: no dx, the same other gradients
        _, ctx = getattr(backend, spec.forward_op)(*args)
        no_dx = _as_tuple(getattr(backend, spec.backward_op)(dy, ctx, need_dx=False))
        assert no_dx[0] is None
        for g, g_ref in zip(no_dx[1:], grads[1:]):
            _same(g, g_ref, dtype, f"{spec.backward_op}(need_dx=False)")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_op_checks_its_first_argument_as_its_spec_does(backend, spec):
    """A float16 first argument: the spec's check (the one place the message lives) and
    every backend's kernel refuse it with a TypeError naming that argument."""
    _need(backend, spec)
    args = list(spec.example(np.random.default_rng(5), np.float32))
    args[0] = args[0].astype(np.float16)
    first = next(iter(spec.signature().parameters))
    with pytest.raises(TypeError, match=f"^{first} must be a float32 or float64"):
        spec.check(*args)
    try:
        out = getattr(backend, spec.forward_op)(*args)
    except TypeError as exc:
        assert str(exc).startswith(f"{first} must be a float32 or float64"), str(exc)
    else:   # only a fused op may answer "not fused here" instead (its parts then check)
        assert spec.fused and out is None, f"{backend.name}.{spec.forward_op} accepted float16"
