"""Depthwise conv benchmarks: MobileNetV2's depthwise layers, every backend and PyTorch.

MobileNetV2 (224x224 input, batch 8) runs its 3x3 'same' depthwise convs (depth
multiplier 1) on these shapes; each is timed forward ("fwd") and forward plus backward
("fwdbwd": dx, dW and db), on every fastcnn backend that implements
``depthwise_conv2d_forward`` (the reference oracle is skipped: Python loops) and on
PyTorch (``F.conv2d(groups=C)`` on a channels_last tensor, the same weights), in one
pytest-benchmark group per (pass, shape). Before timing, every peer's forward (and, for
fwdbwd, its dx and dW) is checked equal, within float32 rounding, to the im2col backend's,
which tests/backends/test_depthwise.py holds equal to the reference and to TensorFlow.

PyTorch pads 'same' symmetrically where that gives the same output size (the same work,
what a PyTorch user writes; benchmarks/_cases.torch_conv_padding's rule), else it pays for
an F.pad; the equality check uses TensorFlow's exact padding.

Each row's extra_info gets ``gflops`` (2 FLOPs per tap per output value; fwdbwd counts 3
times the forward: dx and dW each cost one forward) and ``gbps``, the bytes a pass must
move at least: forward reads x and writes y; backward reads x and dy and writes dx (the
kernel, bias and their gradients are kilobytes and not counted). A table of ms, GFLOP/s
and GB/s per row is printed at the end of the module's run, with each row's share of its
ROOFLINE: ``max(memory time, FLOP time) / median``, where the memory time is what a NumPy
copy moving the same bytes takes on this machine at that size (best of many, measured in
this run: in cache for the small shapes, from memory for the large; fwdbwd: the forward's
bytes and the backward's, each timed at its own size) and the FLOP time the FLOPs at the
run's GEMM ceiling (conftest's ``sgemm``: the better of NumPy's SGEMM and fastcnn's own
GEMM), so 100% is the better of a pure copy and GEMM-rate arithmetic. The bound column says
which of the two the row's roofline is.

    FASTCNN_BENCH_THREADS=1 python -m pytest benchmarks/test_bench_depthwise.py \\
        --benchmark-only --benchmark-max-time=0.5

On a shared, busy machine, ``--benchmark-timer=time.process_time`` times this process's
CPU seconds instead of wall time: at 1 thread that is the op's own work, without the
time neighbours take the core (the 2026-12-06 figures of issue 14 were taken so, at a load
average of 8 on 2 cores, where wall medians came out 2-7x the CPU times).
"""
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest

from fastcnn import backends, shapes

import _cases

TORCH = _cases.torch_or_none()
FWD, BWD = "depthwise_conv2d_forward", "depthwise_conv2d_backward"
PEERS = [n for n in backends.available() if backends.get(n).implements(FWD)] + ["torch"]
PASSES = ["fwd", "fwdbwd"]
DTYPE = _cases.DTYPE
REFERENCE_SKIP = ("the 'reference' backend is the readable oracle (Python loops over "
                  "every output pixel), far too slow to time on MobileNetV2's shapes")


@dataclass(frozen=True)
class DepthwiseShape:
    id: str
    n: int
    h: int
    w: int
    c: int
    k: int = 3
    stride: int = 1
    mult: int = 1
    padding: str = "same"

    @property
    def geometry(self):
        return shapes.window_output_shape((self.h, self.w), (self.k, self.k),
                                          (self.stride, self.stride), self.padding)

    @property
    def flops_forward(self) -> int:
        (ho, wo), _ = self.geometry
        return 2 * self.k * self.k * self.n * ho * wo * self.c * self.mult

    def bytes_by_pass(self, pass_) -> list:
        """Bytes each pass must move: forward x + y; backward x, dy and dx."""
        (ho, wo), _ = self.geometry
        x = self.n * self.h * self.w * self.c
        y = self.n * ho * wo * self.c * self.mult
        elems = [x + y] if pass_ == "fwd" else [x + y, x + y + x]
        return [e * np.dtype(DTYPE).itemsize for e in elems]

    def bytes_moved(self, pass_) -> int:
        return sum(self.bytes_by_pass(pass_))

    def describe(self) -> str:
        (ho, wo), _ = self.geometry
        return (f"{self.id}: x {self.n}x{self.h}x{self.w}x{self.c} dw {self.k}x{self.k}"
                f"x{self.mult} s{self.stride} {self.padding} -> {self.n}x{ho}x{wo}x"
                f"{self.c * self.mult}")

    def arrays(self, rng):
        (ho, wo), _ = self.geometry
        x = rng.standard_normal((self.n, self.h, self.w, self.c), dtype=DTYPE)
        w = rng.standard_normal((self.k, self.k, self.c, self.mult), dtype=DTYPE)
        w *= DTYPE(1.0 / self.k)
        b = rng.standard_normal(self.c * self.mult, dtype=DTYPE)
        dy = rng.standard_normal((self.n, ho, wo, self.c * self.mult), dtype=DTYPE)
        return x, w, b, dy


# MobileNetV2 at 224x224, batch 8: one shape per distinct (size, channels, stride) family;
# then one of MobileNet (V1)'s.
SHAPES = [
    DepthwiseShape("mnv2_112x32_s1", 8, 112, 112, 32),
    DepthwiseShape("mnv2_112x96_s2", 8, 112, 112, 96, stride=2),
    DepthwiseShape("mnv2_56x144_s1", 8, 56, 56, 144),
    DepthwiseShape("mnv2_28x192_s1", 8, 28, 28, 192),
    DepthwiseShape("mnv2_14x384_s1", 8, 14, 14, 384),
    DepthwiseShape("mnv2_14x576_s2", 8, 14, 14, 576, stride=2),
    DepthwiseShape("mnv2_7x960_s1", 8, 7, 7, 960),
    # MobileNet (V1)'s 14x14x512 (five of its layers): a 2048-byte pixel, where the bands'
    # lines crowd two L1 sets and the kernels run row by row (depthwise.h's few-sets rule).
    DepthwiseShape("mnv1_14x512_s1", 8, 14, 14, 512),
]

_EXPECTED = {}   # shape id -> (y, dx, dw, db) from im2col, computed once
_ROWS = []       # (group, peer, median ms, GFLOP/s, GB/s, % of roofline, bound) for the table
_COPY_S = {}     # bytes moved -> best seconds of a NumPy copy moving them


def _copy_seconds(nbytes):
    """Best time of ``np.copyto`` reading nbytes/2 and writing nbytes/2 (the memory side of
    the roofline for a pass that moves nbytes), at that size, measured once per run."""
    if nbytes not in _COPY_S:
        src = np.ones(max(1, nbytes // 2 // 4), dtype=np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # page faults of dst
        best = float("inf")
        for _ in range(max(10, min(300, int(3e9 // max(nbytes, 1))))):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t0)
        _COPY_S[nbytes] = best
    return _COPY_S[nbytes]


def _roofline(shape, pass_, flops, sgemm_gflops):
    """(roofline seconds, copy GB/s of its memory side, 'mem' or 'flop')."""
    moved = shape.bytes_by_pass(pass_)
    mem = sum(_copy_seconds(b) for b in moved)
    flop = flops / (sgemm_gflops * 1e9)
    return max(mem, flop), sum(moved) / mem / 1e9, "mem" if mem >= flop else "flop"


def _expected(shape, x, w, b, dy):
    if shape.id not in _EXPECTED:
        be = backends.get("im2col")
        (_, pad), stride = shape.geometry, (shape.stride, shape.stride)
        y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
        _EXPECTED[shape.id] = (y, *be.depthwise_conv2d_backward(dy, ctx))
    return _EXPECTED[shape.id]


def _assert_equal(got, expected, what, peer, shape):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=f"{peer} {what} differs from im2col's on {shape.id}")


@pytest.fixture(scope="module", autouse=True)
def _table(request):
    yield
    if not _ROWS:
        return
    plugins = request.config.pluginmanager
    tr, capman = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if tr is None:
        return
    # Module teardown runs under output capture: lift it to print (pytest's own hook for
    # the end of a run belongs to benchmarks/conftest.py).
    lifted = capman.global_and_fixture_disabled() if capman is not None else None
    if lifted is not None:
        lifted.__enter__()
    try:
        tr.write_line("")
        tr.write_line(f"depthwise conv, float32, MobileNetV2's shapes (batch 8): median ms, "
                      f"GFLOP/s, GB/s, % of roofline and its bound (threads "
                      f"{os.environ.get('FASTCNN_BENCH_THREADS', '?')}; roofline: the better "
                      f"of a NumPy copy of the same bytes and the GEMM ceiling)")
        for group, peer, ms, gflops, gbps, eff, bound in _ROWS:
            tr.write_line(f"  {group:<84} {peer:<7} {ms:9.3f} ms {gflops:6.2f} GFLOP/s "
                          f"{gbps:6.2f} GB/s {100 * eff:5.1f}% {bound}")
    finally:
        if lifted is not None:
            lifted.__exit__(None, None, None)


def _torch_case(shape, x, w, b, dy, pass_):
    F = TORCH.nn.functional
    cl = TORCH.channels_last
    (ho, wo), ((pt, pb), (pl, pr)) = shape.geometry
    c, m, k, s = shape.c, shape.mult, shape.k, shape.stride
    # NHWC data viewed as NCHW in channels_last memory format: no copy, same bytes.
    xt = TORCH.from_numpy(x).permute(0, 3, 1, 2)
    dyt = TORCH.from_numpy(dy).permute(0, 3, 1, 2)
    assert xt.is_contiguous(memory_format=cl)
    # Output channel c*M + m of group c: weight [c*M + m, 0, a, b] = w[a, b, c, m].
    wt = TORCH.from_numpy(np.ascontiguousarray(
        w.transpose(2, 3, 0, 1).reshape(c * m, 1, k, k))).contiguous(memory_format=cl)
    bt = TORCH.from_numpy(b.copy())

    def exact():   # TensorFlow's padding, for the equality check
        return F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, bt, s, 0, 1, c)

    padding, explicit = (0, 0), (pl, pr, pt, pb)
    for ph, pw in ((pt, pl), (pb, pr)):
        if ((shape.h + 2 * ph - k) // s + 1, (shape.w + 2 * pw - k) // s + 1) == (ho, wo):
            padding, explicit = (ph, pw), None
            break

    def forward():
        xin = xt if explicit is None else F.pad(xt, explicit)
        return F.conv2d(xin, wt, bt, s, padding, 1, c)

    y_exp, dx_exp, dw_exp, _ = _expected(shape, x, w, b, dy)
    xt.requires_grad_(True)
    wt.requires_grad_(True)
    y = exact()
    _assert_equal(y.detach().permute(0, 2, 3, 1).numpy(), y_exp, "y", "torch", shape)
    gx, gw = TORCH.autograd.grad(y, (xt, wt), dyt)
    _assert_equal(gx.permute(0, 2, 3, 1).numpy(), dx_exp, "dx", "torch", shape)
    _assert_equal(gw.detach().reshape(c, m, k, k).permute(2, 3, 0, 1).numpy(), dw_exp, "dw",
                  "torch", shape)
    assert tuple(forward().shape) == (shape.n, c * m, ho, wo)
    if pass_ == "fwd":
        xt.requires_grad_(False)
        wt.requires_grad_(False)

        def fn():
            with TORCH.no_grad():
                return forward()
    else:
        bt.requires_grad_(True)

        def fn():
            return TORCH.autograd.grad(forward(), (xt, wt, bt), dyt)
    return fn


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
@pytest.mark.parametrize("pass_", PASSES)
def test_depthwise_conv2d(timed, benchmark, rng, pass_, shape, peer):
    if peer == "torch" and TORCH is None:
        pytest.skip(_cases.TORCH_MISSING)
    if peer == "reference":
        pytest.skip(REFERENCE_SKIP)
    x, w, b, dy = shape.arrays(rng)
    stride = (shape.stride, shape.stride)
    _, pad = shape.geometry
    if peer == "torch":
        fn = _torch_case(shape, x, w, b, dy, pass_)
    else:
        be = backends.get(peer)
        y_exp, dx_exp, dw_exp, db_exp = _expected(shape, x, w, b, dy)
        y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
        _assert_equal(y, y_exp, "y", peer, shape)
        dx, dw, db = be.depthwise_conv2d_backward(dy, ctx)
        for what, got, exp in (("dx", dx, dx_exp), ("dw", dw, dw_exp), ("db", db, db_exp)):
            _assert_equal(got, exp, what, peer, shape)
        if pass_ == "fwd":
            def fn():
                return be.depthwise_conv2d_forward(x, w, b, stride, pad)
        else:
            def fn():
                _, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
                return be.depthwise_conv2d_backward(dy, ctx)
    factor = 1 if pass_ == "fwd" else 3
    group = f"depthwise_conv2d {pass_} | {shape.describe()}"
    timed(fn, group=group, kind="op", op="depthwise_conv2d", pass_=pass_, shape=shape.id,
          shape_desc=shape.describe(), backend=peer, flops=factor * shape.flops_forward,
          samples=shape.n)
    extra = benchmark.extra_info
    if "median_ms" in extra:
        moved = shape.bytes_moved(pass_)
        extra["bytes_moved"] = moved
        extra["gbps"] = moved / (extra["median_ms"] / 1e3) / 1e9
        roof_s, copy_gbps, bound = _roofline(shape, pass_, factor * shape.flops_forward,
                                             extra["sgemm_gflops"])
        extra.update(roofline_ms=roof_s * 1e3, copy_gbps=copy_gbps, roofline_bound=bound,
                     roofline_frac=roof_s * 1e3 / extra["median_ms"])
        _ROWS.append((group, peer, extra["median_ms"], extra.get("gflops", 0.0),
                      extra["gbps"], extra["roofline_frac"], bound))
