"""Single-op benchmarks: conv2d (shapes A-E), max/avg pooling and dense, every backend
and the PyTorch peer in one pytest-benchmark group per (op, pass, shape).

Each backend is called directly through ``fastcnn.backends.get(name)``: a backend that
lacks an op raises NotImplementedError and the case skips with that message; it is never
timed on another backend. fastcnn runs NHWC/HWIO, PyTorch its native NCHW/OIHW: each
framework in the layout it is built for, on the same sizes and FLOPs.
"""
import numpy as np
import pytest

from fastcnn import backends

import _cases

TORCH = _cases.torch_or_none()

PEERS = backends.available() + ["torch"]
PASSES = ["fwd", "fwdbwd"]


def _skip_unless_runnable(peer, reference_ok):
    if peer == "torch" and TORCH is None:
        pytest.skip(_cases.TORCH_MISSING)
    if peer == "reference" and not reference_ok:
        pytest.skip(_cases.REFERENCE_TOO_SLOW)


def _nchw(a):
    return TORCH.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _torch_pass(forward, inputs, dy, pass_):
    """``fn`` timing ``forward()`` alone, or forward plus the gradients of ``inputs``
    (torch.autograd.grad: no accumulation into .grad between rounds)."""
    if pass_ == "fwd":
        def fn():
            with TORCH.no_grad():
                return forward()
    else:
        for t in inputs:
            t.requires_grad_(True)

        def fn():
            return TORCH.autograd.grad(forward(), inputs, dy)
    return fn


# ------------------------------------------------------------------------------ conv
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", _cases.CONV_SHAPES, ids=lambda s: f"shape_{s.id}")
@pytest.mark.parametrize("pass_", PASSES)
def test_conv2d(timed, rng, pass_, shape, peer):
    _skip_unless_runnable(peer, shape.reference_ok)
    x, w, b, dy = shape.arrays(rng)
    stride = (shape.stride, shape.stride)
    (ho, wo), pad = shape.geometry
    if peer == "torch":
        F = TORCH.nn.functional
        xt, dyt = _nchw(x), _nchw(dy)
        wt = TORCH.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        bt = TORCH.from_numpy(b.copy())
        padding, explicit = _cases.torch_conv_padding(shape)

        def forward():
            xin = xt if explicit is None else F.pad(xt, explicit)
            return F.conv2d(xin, wt, bt, stride, padding)

        assert tuple(forward().shape) == (shape.n, shape.c_out, ho, wo)
        fn = _torch_pass(forward, (xt, wt, bt), dyt, pass_)
    else:
        be = backends.get(peer)
        if pass_ == "fwd":
            def fn():
                return be.conv2d_forward(x, w, b, stride, pad)
        else:
            def fn():
                _, ctx = be.conv2d_forward(x, w, b, stride, pad)
                return be.conv2d_backward(dy, ctx)
    factor = 1 if pass_ == "fwd" else 3
    timed(fn, group=f"conv2d {pass_} | {shape.describe()}", kind="op", op="conv2d",
          pass_=pass_, shape=shape.id, shape_desc=shape.describe(), backend=peer,
          flops=factor * shape.flops_forward, samples=shape.n)


# ------------------------------------------------------------------------------ pool
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", _cases.POOL_SHAPES, ids=lambda s: f"shape_{s.id}")
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("kind", ["maxpool2d", "avgpool2d"])
def test_pool2d(timed, rng, kind, pass_, shape, peer):
    _skip_unless_runnable(peer, shape.reference_ok)
    x, dy = shape.arrays(rng)
    window = (shape.pool, shape.pool)
    if peer == "torch":
        F = TORCH.nn.functional
        xt, dyt = _nchw(x), _nchw(dy)
        pool = F.max_pool2d if kind == "maxpool2d" else F.avg_pool2d

        def forward():
            return pool(xt, shape.pool)

        fn = _torch_pass(forward, (xt,), dyt, pass_)
    else:
        be = backends.get(peer)
        fwd = getattr(be, f"{kind}_forward")
        bwd = getattr(be, f"{kind}_backward")
        pad = ((0, 0), (0, 0))
        if pass_ == "fwd":
            def fn():
                return fwd(x, window, window, pad)
        else:
            def fn():
                _, ctx = fwd(x, window, window, pad)
                return bwd(dy, ctx)
    timed(fn, group=f"{kind} {pass_} | {shape.describe()}", kind="op", op=kind,
          pass_=pass_, shape=shape.id, shape_desc=shape.describe(), backend=peer,
          samples=shape.n)


# ----------------------------------------------------------------------------- dense
@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", _cases.DENSE_SHAPES, ids=lambda s: f"shape_{s.id}")
@pytest.mark.parametrize("pass_", PASSES)
def test_dense(timed, rng, pass_, shape, peer):
    _skip_unless_runnable(peer, shape.reference_ok)
    x, w, b, dy = shape.arrays(rng)
    if peer == "torch":
        F = TORCH.nn.functional
        xt, dyt = TORCH.from_numpy(x), TORCH.from_numpy(dy)
        wt = TORCH.from_numpy(np.ascontiguousarray(w.T))  # nn.Linear keeps (out, in)
        bt = TORCH.from_numpy(b.copy())

        def forward():
            return F.linear(xt, wt, bt)

        fn = _torch_pass(forward, (xt, wt, bt), dyt, pass_)
    else:
        be = backends.get(peer)
        if pass_ == "fwd":
            def fn():
                return be.dense_forward(x, w, b)
        else:
            def fn():
                _, ctx = be.dense_forward(x, w, b)
                return be.dense_backward(dy, ctx)
    factor = 1 if pass_ == "fwd" else 3
    timed(fn, group=f"dense {pass_} | {shape.describe()}", kind="op", op="dense",
          pass_=pass_, shape=shape.id, shape_desc=shape.describe(), backend=peer,
          flops=factor * shape.flops_forward, samples=shape.n)
