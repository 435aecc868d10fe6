"""The 3x3, depth-multiplier-1 kernels of csrc/depthwise_kernels.h (the k3_* functions that
MobileNet's depthwise layers run), on EVERY instruction set this CPU runs, float32 and
float64, against test_depthwise_simd.py's float64 NumPy loop.

Which code each case reaches (depthwise_kernels.h):

* forward of stride 1 with pads of 1 and 'same' sizes on rows of <= 24 pixels: STREAMED
  rows (float32 AVX-512, k3_forward_stream: strips of <= 7 columns walking down the image with
  three output rows in registers; not for pixels of a multiple of 4096 bytes nor where
  dwc_k3_few_sets sends rows to the blocks), and so the stride-1 dx of such a conv;
* other forwards, by BANDS of rows (AVX-512, unless a pixel's channels take > 576 bytes, float32
  C > 144, float64 C > 72, and an output row has <= 8 pixels, or a pixel takes 2048 bytes
  and a row 12-20 pixels or 4096 and 9-14) or ROW BY ROW in pixel blocks (those, and every
  shape on AVX2 and generic); both for column stride 1 and 2, any row
  stride; in bands, two rows at once (k3_fpair) when every kernel row of both is inside
  the image (row stride 1 and 2), else one row per kernel-row mask;
* dx of stride (1, 1): the same forward over dy with the kernel flipped and pads 2 - pad
  (a pad of 3 makes that -1); of stride (2, 2): k3_dx2, blocks of 8 and 2 pixels (an odd
  left pad: a single pixel first; an odd remainder: one last); other strides keep the
  general gather;
* dW and db (column stride 1 or 2): per band, the 9 sums in registers.

Edges: channel counts with ragged vector tails (1, 33, 161, 193), rows cut into pixel
blocks (those at a border skip the taps outside, a last block past the row stores only its
pixels in the row), the longest row of one block (W 8) and the shortest in bands (W 9) for
pixels of > 576 bytes, the pair step's border pixels taken from its window ('same' pads of
1 at column stride 1, down to W 3) or by the border loop (other pads), rows with no
interior (W 1 and 2), short rows (W 7), H 1 (one kernel row inside), pads 0, 2 and 3 (rows
with no kernel row inside: bias only), asymmetric pads, no bias. Also: 1 and 2 OpenMP
threads give bitwise-identical results on these paths.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastcnn import _extensions, backends

from test_depthwise_simd import _check, reference

pytestmark = pytest.mark.skipif(
    "depthwise" not in _extensions.modules,
    reason=f"the compiled depthwise extension is unavailable: {_extensions.IMPORT_ERROR}")

if "depthwise" in _extensions.modules:
    DWC = _extensions.modules["depthwise"]
    ISAS = DWC.supported_isas()
else:
    DWC, ISAS = None, ("generic",)

CASES = [
    # (N, H, W, C, stride, pad, bias)
    (2, 9, 21, 33, (1, 1), ((1, 1), (1, 1)), True),     # bands, pairs, across images
    (2, 6, 3, 33, (1, 1), ((1, 1), (1, 1)), True),      # W 3: a pair's one inner pixel
    (2, 6, 5, 16, (1, 1), ((1, 1), (1, 0)), True),      # right pad 0: no border peeling
    (2, 7, 15, 161, (1, 1), ((1, 1), (1, 1)), True),    # bands; AVX2: blocks of 4
    (2, 10, 15, 40, (2, 2), ((0, 1), (1, 1)), True),    # stride 2: pairs of row stride 2
    (2, 10, 15, 161, (2, 2), ((0, 1), (1, 1)), False),  # stride 2, row by row
    (1, 9, 12, 24, (2, 1), ((1, 1), (1, 1)), True),     # row stride 2, column stride 1
    (1, 8, 13, 20, (1, 2), ((1, 1), (0, 1)), True),     # column stride 2, dx: the gather
    (1, 11, 9, 17, (3, 1), ((1, 1), (1, 1)), True),     # row stride 3: no pairs
    (2, 6, 10, 72, (1, 1), ((0, 0), (0, 0)), True),     # 'valid': dx pads 2
    (1, 5, 6, 80, (1, 1), ((2, 2), (2, 2)), True),      # pads 2: dx pads 0
    (1, 5, 7, 33, (1, 1), ((3, 0), (3, 1)), False),     # pad 3: bias-only rows, dx pad -1
    (2, 1, 9, 16, (1, 1), ((1, 1), (1, 1)), True),      # H 1: one kernel row inside
    (2, 4, 1, 33, (1, 1), ((1, 1), (1, 1)), True),      # W 1: no interior column
    (1, 3, 2, 161, (2, 2), ((1, 1), (0, 1)), True),     # W 2, stride 2
    (1, 6, 19, 24, (2, 2), ((1, 1), (0, 1)), True),     # dx (2, 2): 8 + 8 + 2 + 1 pixels
    (1, 7, 11, 33, (2, 2), ((2, 2), (2, 2)), True),     # dx (2, 2): dy columns off both ends
    (1, 5, 19, 1, (1, 1), ((1, 1), (1, 1)), True),      # one channel
    # pixels of > 576 bytes: row by row in blocks (AVX-512: rows of <= 8 pixels; AVX2 and
    # generic: every row, blocks of 4), those at a border skipping taps; AVX-512 runs the
    # longer rows in bands:
    (2, 7, 7, 161, (1, 1), ((1, 1), (1, 1)), True),     # a short row: one block
    (1, 4, 14, 161, (2, 2), ((0, 1), (0, 1)), True),    # short row (7 outputs), stride 2
    (2, 5, 28, 161, (1, 1), ((1, 1), (1, 1)), True),    # bands; blocks of 4: border 4 .. 4
    (1, 5, 7, 161, (1, 1), ((3, 0), (3, 1)), False),    # pad 3: bias-only rows
    (2, 4, 1, 161, (1, 1), ((1, 1), (1, 1)), True),     # W 1
    (2, 5, 14, 161, (1, 1), ((1, 1), (1, 1)), True),    # W 14: bands (AVX-512)
    (1, 6, 28, 193, (2, 2), ((0, 1), (0, 1)), True),    # 14 outputs of stride 2: bands
    (2, 4, 14, 208, (1, 1), ((1, 1), (1, 1)), False),   # W 14, 13 whole vectors, no bias
    (2, 5, 8, 208, (1, 1), ((1, 1), (1, 1)), True),     # W 8: the longest row in one block
    (2, 5, 9, 208, (1, 1), ((1, 1), (1, 1)), True),     # W 9: bands (AVX-512)
    # pixels of 2048 / 4096 bytes (float32 512 / 1024 channels, float64 256 / 512): row
    # by row in blocks where a band's lines would crowd L1 (dwc_k3_few_sets):
    (1, 5, 12, 512, (1, 1), ((1, 1), (1, 1)), True),    # W 12: rows; float64 rows
    (1, 4, 10, 512, (1, 1), ((1, 1), (1, 1)), False),   # W 10: bands; float64 rows
]
IDS = [f"{c[0]}x{c[1]}x{c[2]}x{c[3]}-s{c[4][0]}{c[4][1]}-p{c[5][0][0]}{c[5][0][1]}"
       f"{c[5][1][0]}{c[5][1][1]}" for c in CASES]


@pytest.fixture
def isa_restored():
    before = DWC.isa()
    yield
    DWC.set_isa(before)


def _data(case, dtype, seed=0):
    n, h, wd, c, stride, pad, bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, wd, c)).astype(dtype)
    w = rng.standard_normal((3, 3, c, 1)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype) if bias else None
    ho, wo = (h + sum(pad[0]) - 3) // stride[0] + 1, (wd + sum(pad[1]) - 3) // stride[1] + 1
    dy = rng.standard_normal((n, ho, wo, c)).astype(dtype)
    return x, w, b, stride, pad, dy


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_3x3_matches_float64_loop(case, isa, dtype, isa_restored):
    DWC.set_isa(isa)
    x, w, b, stride, pad, dy = _data(case, dtype)
    be = backends.get("cython")
    y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
    dx, dw, db = be.depthwise_conv2d_backward(dy, ctx)
    want = reference(x, w, b, stride, pad, dy)
    for what, got, ref in zip(("y", "dx", "dw"), (y, dx, dw), want):
        _check(got, ref, dtype, f"{what} ({isa})")
    if b is None:
        assert db is None
    else:
        _check(db, want[3], dtype, f"db ({isa})")


SAME, RIGHT0 = ((1, 1), (1, 1)), ((1, 1), (1, 0))


@pytest.mark.parametrize("w_px, wide_c, narrow_c, pad, schemes", [
    (7, 145, 144, RIGHT0, ("rows", "bands")),      # 6 outputs of > 576-byte pixels: rows
    (14, 512, 496, RIGHT0, ("rows", "bands")),     # 2048-byte pixels: dwc_k3_few_sets
    (7, 1024, 1008, SAME, ("rows", "stream")),     # 4096-byte pixels are not streamed
    (14, 512, 496, SAME, ("rows", "stream")),
    (16, 1024, 1008, SAME, ("bands", "stream")),
], ids=["W7-145-rows-144-bands", "W14-512-rows-496-bands", "W7-1024-rows-1008-stream",
        "W14-512-rows-496-stream", "W16-1024-bands-1008-stream"])
def test_3x3_forward_schemes_agree_bitwise(w_px, wide_c, narrow_c, pad, schemes):
    """The three forward schedules add the taps in the same order (AVX-512): the channel
    count alone sends the wider and the narrower array to different ones (named by
    depthwise.h's rule, spelled out in _scheme), and the shared channels come out the same
    bits; the stride-1 dx (the forward over dy) too."""
    ho, wo = 9, w_px - (pad[1][1] == 0)
    assert tuple(_scheme(c * 4, 4, (9, w_px), (ho, wo), (1, 1), (1, 1))
                 for c in (wide_c, narrow_c)) == schemes
    be = backends.get("cython")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 9, w_px, wide_c)).astype(np.float32)
    w = rng.standard_normal((3, 3, wide_c, 1)).astype(np.float32)
    b = rng.standard_normal(wide_c).astype(np.float32)
    dy = rng.standard_normal((2, ho, wo, wide_c)).astype(np.float32)
    wide, ctx = be.depthwise_conv2d_forward(x, w, b, (1, 1), pad)
    wide_dx = be.depthwise_conv2d_backward(dy, ctx)[0]
    narrow_dx = be.depthwise_conv2d_backward(
        np.ascontiguousarray(dy[..., :narrow_c]),
        be.depthwise_conv2d_forward(np.ascontiguousarray(x[..., :narrow_c]),
                                    np.ascontiguousarray(w[:, :, :narrow_c]), b[:narrow_c],
                                    (1, 1), pad)[1])[0]
    np.testing.assert_array_equal(wide_dx[..., :narrow_c], narrow_dx)
    narrow, _ = be.depthwise_conv2d_forward(np.ascontiguousarray(x[..., :narrow_c]),
                                            np.ascontiguousarray(w[:, :, :narrow_c]),
                                            b[:narrow_c], (1, 1), pad)
    np.testing.assert_array_equal(wide[..., :narrow_c], narrow)


def _all(dtype):
    be = backends.get("cython")
    out = []
    for shape, stride, pad in (
        ((3, 21, 19, 161), (2, 2), ((0, 1), (1, 1))),
        ((4, 22, 17, 48), (1, 1), ((1, 1), (1, 1))),
        ((3, 14, 14, 512), (1, 1), ((1, 1), (1, 1))),   # 2048 / 4096-byte pixels: y, dx rows
        ((3, 7, 7, 160), (1, 1), ((1, 1), (1, 1))),     # streamed rows, split mid-image
        ((5, 13, 12, 40), (1, 1), ((1, 1), (1, 1))),    # streamed rows, strips 6 + 6
    ):
        rng = np.random.default_rng(5)
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal((3, 3, shape[3], 1)).astype(dtype)
        b = rng.standard_normal(shape[3]).astype(dtype)
        y, ctx = be.depthwise_conv2d_forward(x, w, b, stride, pad)
        out += [y, *be.depthwise_conv2d_backward(rng.standard_normal(y.shape).astype(dtype), ctx)]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_3x3_results_identical_with_1_and_2_threads(dtype):
    _, max_threads = _extensions.openmp_info()
    try:
        _extensions.set_num_threads(1)
        one = _all(dtype)
        _extensions.set_num_threads(2)
        two = _all(dtype)
    finally:
        _extensions.set_num_threads(max_threads)
    for i, (a, b) in enumerate(zip(one, two)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i} differs between 1 and 2 threads")


def _at_offset(a, offset_bytes):
    """A copy of ``a`` whose data starts ``offset_bytes`` past a 64-byte line."""
    buf = np.empty(a.size + 64 // a.itemsize * 2, dtype=a.dtype)
    start = (-buf.ctypes.data % 64 + offset_bytes) // a.itemsize
    out = buf[start:start + a.size].reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == offset_bytes
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("offsets", [(16, 16), (32, 32), (48, 48), (0, 0), (16, 48)],
                         ids=lambda o: f"x{o[0]}-y{o[1]}")
@pytest.mark.parametrize("stride", [(1, 1), (2, 2)], ids=["s11", "s22"])
def test_3x3_arrays_off_a_cache_line(stride, offsets, dtype, isa_restored):
    """208 channels (13 float32 / 26 float64 vectors, 832 / 1664 bytes a pixel): when x and
    y (dy and dx; x and dy) sit at the same offset from a 64-byte line, the channels start
    with a short chunk so the others are line-aligned (k3_head); called on the module with
    arrays placed at each offset, every ISA."""
    n, h, wd, c = 2, 6, 11, 208
    pad = ((1, 1), (1, 1)) if stride == (1, 1) else ((0, 1), (1, 1))
    x, w, b, _, _, dy = _data((n, h, wd, c, stride, pad, True), dtype, seed=11)
    want = reference(x, w, b, stride, pad, dy)
    (pt, _), (pl, _) = pad
    wt = np.ascontiguousarray(w.reshape(9, c))
    for isa in ISAS:
        DWC.set_isa(isa)
        xo, dyo = _at_offset(x, offsets[0]), _at_offset(dy, offsets[0])
        y = _at_offset(np.zeros(dy.shape, dtype), offsets[1])
        DWC.forward(xo, wt, b, y, 3, 3, *stride, pt, pl, 1)
        _check(y, want[0], dtype, f"y ({isa}, offsets {offsets})")
        dx = _at_offset(np.zeros(x.shape, dtype), offsets[1])
        DWC.dx(dyo, wt, dx, 3, 3, *stride, pt, pl, 1)
        _check(dx, want[1], dtype, f"dx ({isa}, offsets {offsets})")
        xo2 = _at_offset(x, offsets[1])
        part = DWC.dw_partials(xo2, dyo, 3, 3, *stride, pt, pl, 1, True)
        total = np.add.reduce(part, axis=0)
        _check(total[:9].reshape(w.shape), want[2], dtype, f"dw ({isa}, offsets {offsets})")
        _check(total[9], want[3], dtype, f"db ({isa}, offsets {offsets})")


@pytest.mark.parametrize("offset", [16, 0], ids=["off16", "off0"])
@pytest.mark.parametrize("shape, stride, pad", [
    ((4, 64, 64, 144), (1, 1), ((1, 1), (1, 1))),   # y and dx 9.4 MB: bands
    ((2, 96, 96, 128), (2, 2), ((0, 1), (0, 1))),   # dx 9.4 MB: k3_dx2
    ((40, 16, 16, 256), (1, 1), ((1, 1), (1, 1))),  # y and dx 10.5 MB: streamed rows
], ids=["s11", "s22", "s11-stream"])
def test_3x3_large_outputs_streamed(shape, stride, pad, offset):
    """An output of >= 8 MiB is written with streaming stores (AVX-512: the forward and
    stride-1 dx in bands, the stride-2 dx in k3_dx2), a 16-byte offset first realigned by
    a short channel chunk: against the float64 loop, arrays placed at the offset."""
    x, w, b, _, _, dy = _data((*shape, stride, pad, True), np.float32, seed=13)
    want = reference(x, w, b, stride, pad, dy)
    wt = np.ascontiguousarray(w.reshape(9, shape[3]))
    (pt, _), (pl, _) = pad
    y = _at_offset(np.zeros(dy.shape, np.float32), offset)
    DWC.forward(_at_offset(x, offset), wt, b, y, 3, 3, *stride, pt, pl, 1)
    _check(y, want[0], np.float32, f"y (offset {offset})")
    dx = _at_offset(np.zeros(x.shape, np.float32), offset)
    DWC.dx(_at_offset(dy, offset), wt, dx, 3, 3, *stride, pt, pl, 1)
    _check(dx, want[1], np.float32, f"dx (offset {offset})")


def _scheme(pixel_bytes, item, src_hw, out_hw, stride, pads):
    """depthwise.h's dwc_k3_scheme: 'stream', 'bands' or 'rows' (pads: top and left; item:
    the element size, streamed rows being float32's)."""
    wo = out_hw[1]
    few = (pixel_bytes == 2048 and 12 <= wo <= 20) or (pixel_bytes == 4096 and 9 <= wo <= 14)
    if (item == 4 and stride == (1, 1) and pads == (1, 1) and tuple(src_hw) == tuple(out_hw) and wo <= 24
            and pixel_bytes % 4096 and not few):
        return "stream"
    return "bands" if (pixel_bytes <= 576 or wo > 8) and not few else "rows"


def _expected_offset(src, out_shape, stride, for_dx, isa, pads=(1, 1)):
    """depthwise.h's dwc_output_offset, spelled out: three lines past src's lines in the
    page; at src's line offset where the kernels realign the two (AVX-512, whole vectors a
    pixel: from 2 in the bands of column stride 1, their wrapped chunk; from 4 in streamed
    rows, a head and a tail chunk; else from 12, or 8 where the bands stream the output;
    dx only of stride 1), except a streamed banded output of column stride 2; else on a
    line. (pads: the forward's top and left; dx's scheme is its stride-1 forward's, pads
    2 - pad. Streamed stores: an output of >= 8 MiB.)"""
    at, item, c = src.ctypes.data % 4096, src.itemsize, src.shape[3]
    out_bytes = int(np.prod(out_shape)) * item
    scheme = _scheme(c * item, item, src.shape[1:3], out_shape[1:3], stride,
                     (2 - pads[0], 2 - pads[1]) if for_dx else tuple(pads))
    bands, streamed = scheme == "bands", out_bytes >= 8 << 20
    vectors = (2 if bands and stride[1] == 1 else 4 if scheme == "stream"
               else 8 if bands and streamed else 12)
    realign = (isa == "avx512" and c * item % 64 == 0 and c >= vectors * 64 // item
               and not (for_dx and stride != (1, 1))
               and not (bands and streamed and stride[1] != 1))
    return (at - at % 64 + 192 + (at % 64 if realign else 0)) % 4096


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("c, stride, wd", [(208, (1, 1), 14), (208, (2, 2), 14),
                                           (208, (1, 1), 8), (384, (1, 1), 14),
                                           (32, (1, 1), 14), (144, (1, 1), 14)],
                         ids=["bands208", "rows208-s22", "rows208", "bands384", "bands32",
                              "bands144"])
def test_3x3_output_offset_rule_and_results_independent_of_placement(c, stride, wd, dtype,
                                                                    isa_restored):
    """DWC.output_offset, in bytes past a page boundary: the output's lines three lines past
    the source's; within its line the source's offset where the kernels realign a source
    and an output that share it, else 0. Wherever x, dy, y and dx sit, y, dx and dW are the
    same bits (the placement is a speed choice only: realigned at column stride 1, the
    last channels of a pixel and the first of the next are one wrapped vector, each lane
    given its own pixel's taps)."""
    n, h = 2, 9
    pad = ((1, 1), (1, 1)) if stride == (1, 1) else ((0, 1), (0, 1))
    x, w, b, _, _, dy = _data((n, h, wd, c, stride, pad, True), dtype, seed=5)
    (pt, _), (pl, _) = pad
    wt = np.ascontiguousarray(w.reshape(9, c))
    for isa in ISAS:
        DWC.set_isa(isa)
        results = {}
        for off in (0, 16, 48):
            xo, dyo = _at_offset(x, off), _at_offset(dy, off)
            assert (DWC.output_offset(xo, dy.shape, 1, 3, 3, *stride, pt, pl, False)
                    == _expected_offset(xo, dy.shape, stride, False, isa, (pt, pl))), (isa, off)
            assert (DWC.output_offset(dyo, x.shape, 1, 3, 3, *stride, pt, pl, True)
                    == _expected_offset(dyo, x.shape, stride, True, isa, (pt, pl))), (isa, off)
            for out_off in (0, 16, 48):
                y = _at_offset(np.zeros(dy.shape, dtype), out_off)
                DWC.forward(xo, wt, b, y, 3, 3, *stride, pt, pl, 1)
                dx = _at_offset(np.zeros(x.shape, dtype), out_off)
                DWC.dx(dyo, wt, dx, 3, 3, *stride, pt, pl, 1)
                results[off, out_off] = (y.copy(), dx.copy())
        first = results[0, 0]
        for key, (y, dx) in results.items():
            np.testing.assert_array_equal(y, first[0], err_msg=f"y ({isa}, offsets {key})")
            np.testing.assert_array_equal(dx, first[1], err_msg=f"dx ({isa}, offsets {key})")
        # dW's first channel chunk aligns x's loads wherever x and dy sit: the same bits.
        parts = {(xo, do): DWC.dw_partials(_at_offset(x, xo), _at_offset(dy, do), 3, 3,
                                           *stride, pt, pl, 1, True)
                 for xo in (0, 16, 48) for do in (0, 16, 48)}
        for key, part in parts.items():
            np.testing.assert_array_equal(part, parts[0, 0], err_msg=f"dW ({isa}, {key})")
        xo = _at_offset(x, 16)   # M 2: no realigning, three lines past
        assert DWC.output_offset(xo, dy.shape, 2, 3, 3, *stride, pt, pl, False) == (
            xo.ctypes.data % 4096 - 16 + 192) % 4096


def test_3x3_output_offset_of_streamed_outputs(isa_restored):
    """An output the bands stream (>= 8 MiB) at column stride 1 goes at its source's line
    offset (the wrapped chunk realigns the two), at stride 2 on a line (the aligned
    streaming stores; a head and a tail chunk would each take a pass); one the row-by-row
    kernels write (rows of <= 8 pixels of > 576 bytes) at its source's line offset however
    large; all three lines past the source's lines."""
    if "avx512" not in ISAS:
        pytest.skip("the realigning kernels are AVX-512's; this CPU lacks AVX-512")
    DWC.set_isa("avx512")
    for shape, stride, realigned in (
            ((12, 28, 28, 256), 1, True),    # 9.6 MB in bands, stride 1: realigned
            ((12, 28, 28, 128), 1, True),    # 4.8 MB of 512-byte pixels (8 vectors)
            ((12, 28, 28, 32), 1, True),     # 2 vectors: the fewest the bands realign
            ((12, 28, 28, 16), 1, False),    # 1 vector: on a line
            ((48, 28, 28, 256), 2, False),   # 9.6 MB output in bands, stride 2: on a line
            ((12, 28, 28, 256), 2, True),    # 2.4 MB, stride 2: realigned from 12 vectors
            ((12, 28, 28, 176), 2, False),   # 11 vectors, stride 2: on a line
            ((48, 7, 7, 1024), 1, True),     # 9.6 MB row by row (4096-byte pixels): realigned
            ((48, 7, 7, 960), 1, True),      # 9.0 MB in streamed rows: realigned
            ((12, 14, 14, 64), 1, True),     # 4 vectors: the fewest streamed rows realign
            ((12, 14, 14, 48), 1, False)):   # 3 vectors: on a line
        x = _at_offset(np.zeros(shape, np.float32), 16)
        n, h, w, c = shape
        out = (n, -(-h // stride), -(-w // stride), c)
        pads = (1, 1) if stride == 1 else (0, 0)
        want = (x.ctypes.data % 4096 - 16 + 192 + (16 if realigned else 0)) % 4096
        assert DWC.output_offset(x, out, 1, 3, 3, stride, stride, *pads, False) == want, shape
        assert want == _expected_offset(x, out, (stride, stride), False, "avx512", pads), shape


def test_3x3_output_offset_bad_shape():
    x = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match="out_shape must have 4 dimensions"):
        DWC.output_offset(x, (4, 4, 8), 1, 3, 3, 1, 1, 1, 1, False)


def test_3x3_backend_places_outputs_by_the_rule():
    """The cython backend allocates y (dx) where DWC.output_offset says for x (dy)."""
    be = backends.get("cython")
    dtype = np.float32
    for c, stride in ((208, (1, 1)), (32, (1, 1)), (208, (2, 2))):
        pad = ((1, 1), (1, 1)) if stride == (1, 1) else ((0, 1), (0, 1))
        x, w, b, _, _, dy = _data((2, 9, 14, c, stride, pad, True), dtype, seed=6)
        for off in (0, 16, 48):
            xo, dyo = _at_offset(x, off), _at_offset(dy, off)
            y, ctx = be.depthwise_conv2d_forward(xo, w, b, stride, pad)
            (pt, _), (pl, _) = pad
            assert y.ctypes.data % 4096 == DWC.output_offset(xo, y.shape, 1, 3, 3, *stride,
                                                             pt, pl, False)
            dx, _, _ = be.depthwise_conv2d_backward(dyo, ctx)
            assert dx.ctypes.data % 4096 == DWC.output_offset(dyo, x.shape, 1, 3, 3, *stride,
                                                              pt, pl, True)


# --- the fused backward (DWC.backward: dW's partials and dx in one pass over dy) ------------

def _separate_and_fused(x, w, dy, stride, pad, m=1, with_db=True, kh=3, kw=3):
    (pt, _), (pl, _) = pad
    wt = np.ascontiguousarray(w.reshape(kh * kw, -1))
    part = DWC.dw_partials(x, dy, kh, kw, *stride, pt, pl, m, with_db)
    dx = np.full(x.shape, np.nan, x.dtype)
    DWC.dx(dy, wt, dx, kh, kw, *stride, pt, pl, m)
    fused_dx = np.full(x.shape, np.nan, x.dtype)
    fused_part = DWC.backward(x, dy, wt, fused_dx, kh, kw, *stride, pt, pl, m, with_db)
    return (part, dx), (fused_part, fused_dx)


# f64, 64 x 130 pixels: bands of 2 dy rows inside blocks of 3 (a block's second band is
# one row), stride 1 and 2.
BAND_CASES = [
    (1, 66, 64, 130, (1, 1), ((1, 1), (1, 1)), True),
    (1, 131, 64, 130, (2, 2), ((0, 1), (0, 1)), False),
]


@pytest.mark.parametrize("with_db", [True, False], ids=["db", "nodb"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES + BAND_CASES,
                         ids=IDS + ["bands-in-blocks-s11", "bands-in-blocks-s22"])
def test_fused_backward_bitwise_equal_to_the_two_passes(case, dtype, with_db, isa_restored):
    """The fused backward runs dW band by band and, after each band, the dx rows whose last
    dy row is in it: the partials and dx are the bits of dw_partials and dx, every dx
    element written (NaN-filled before), on every ISA; with and without db."""
    x, w, _, stride, pad, dy = _data(case, dtype)
    for isa in ISAS:
        DWC.set_isa(isa)
        (part, dx), (fpart, fdx) = _separate_and_fused(x, w, dy, stride, pad, with_db=with_db)
        np.testing.assert_array_equal(fpart, part, err_msg=f"dW partials ({isa})")
        np.testing.assert_array_equal(fdx, dx, err_msg=f"dx ({isa})")
        assert not np.isnan(fdx).any()


@pytest.mark.parametrize("kh, kw, stride, m", [
    (3, 3, (1, 1), 2),   # M 2
    (5, 5, (1, 1), 1),   # 5x5
    (3, 3, (1, 3), 1),   # column stride 3
], ids=["m2", "k5", "sw3"])
def test_fused_backward_other_cases_keep_the_two_passes(kh, kw, stride, m):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 11, 5)).astype(np.float32)
    w = rng.standard_normal((kh, kw, 5, m)).astype(np.float32)
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    ho = (9 + 2 * (kh // 2) - kh) // stride[0] + 1
    wo = (11 + 2 * (kw // 2) - kw) // stride[1] + 1
    dy = rng.standard_normal((2, ho, wo, 5 * m)).astype(np.float32)
    (part, dx), (fpart, fdx) = _separate_and_fused(x, w, dy, stride, pad, m, kh=kh, kw=kw)
    np.testing.assert_array_equal(fpart, part)
    np.testing.assert_array_equal(fdx, dx)


def test_fused_backward_empty_dy_and_bad_dx_shape():
    """No dy pixel (an output of size 0): dx is zeros, the partials one zero block; a dx of
    the wrong shape is refused, naming it."""
    x = np.ones((2, 2, 2, 4), np.float32)
    dy = np.ones((2, 0, 0, 4), np.float32)
    dx = np.full(x.shape, np.nan, np.float32)
    part = DWC.backward(x, dy, np.ones((9, 4), np.float32), dx, 3, 3, 1, 1, 0, 0, 1, True)
    assert part.shape == (1, 10, 4) and not part.any()
    np.testing.assert_array_equal(dx, 0)
    with pytest.raises(ValueError, match="dx has shape"):
        DWC.backward(x, np.ones((2, 2, 2, 4), np.float32), np.ones((9, 4), np.float32),
                     np.empty((2, 2, 3, 4), np.float32), 3, 3, 1, 1, 1, 1, 1, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_fused_backward_identical_with_1_and_2_threads(dtype):
    """Bands inside blocks (BAND_CASES), the blocks split over 2 threads: the same bits."""
    _, max_threads = _extensions.openmp_info()
    out = {}
    try:
        for nt in (1, 2):
            _extensions.set_num_threads(nt)
            out[nt] = []
            for case in BAND_CASES:
                x, w, _, stride, pad, dy = _data(case, dtype)
                out[nt] += list(_separate_and_fused(x, w, dy, stride, pad)[1])
    finally:
        _extensions.set_num_threads(max_threads)
    for i, (a, b) in enumerate(zip(out[1], out[2])):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i} differs between 1 and 2 threads")


@pytest.mark.parametrize("shape, stride, pad", [
    ((4, 64, 64, 144), (1, 1), ((1, 1), (1, 1))),   # dx 9.4 MB: streamed, bands
    ((2, 96, 96, 128), (2, 2), ((0, 1), (0, 1))),   # dx 9.4 MB: streamed, k3_dx2
    ((40, 16, 16, 256), (1, 1), ((1, 1), (1, 1))),  # dx 10.5 MB: streamed rows
], ids=["s11", "s22", "s11-stream"])
def test_fused_backward_large_dx_streamed(shape, stride, pad):
    """A dx of >= 8 MiB (streaming stores, the 16-byte offset realigned) from the fused
    backward: the bits of the two passes."""
    x, w, _, _, _, dy = _data((*shape, stride, pad, True), np.float32, seed=13)
    (part, dx), (fpart, fdx) = _separate_and_fused(_at_offset(x, 16), w, _at_offset(dy, 16),
                                                   stride, pad)
    np.testing.assert_array_equal(fpart, part)
    np.testing.assert_array_equal(fdx, dx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2)], ids=["s11", "s22"])
def test_results_do_not_depend_on_where_the_arrays_sit(stride, dtype):
    """Every pass (forward, dx, dW, the fused backward) gives the same bits whatever the
    arrays' offsets from a cache line (NumPy places them 0-48 bytes past one). The
    stride-2 dx once realigned its channel chunks by those offsets and rounded some sums
    differently (0.4% of a 9.4 MB dx)."""
    pad = ((1, 1), (1, 1)) if stride == (1, 1) else ((0, 1), (0, 1))
    shapes = [(2, 20, 24, 208), (2, 9, 14, 208)] + ([(2, 96, 96, 128)] if dtype == np.float32
                                                    else [])
    for shape in shapes:
        x, w, b, _, _, dy = _data((*shape, stride, pad, True), dtype, seed=3)
        (pt, _), (pl, _) = pad
        wt = np.ascontiguousarray(w.reshape(9, -1))
        runs = []
        for src, out in ((0, 0), (16, 16), (32, 0), (16, 48)):
            xa, dya = _at_offset(x, src), _at_offset(dy, src)
            y = _at_offset(np.zeros(dy.shape, dtype), out)
            DWC.forward(xa, wt, b, y, 3, 3, *stride, pt, pl, 1)
            dx = _at_offset(np.zeros(x.shape, dtype), out)
            DWC.dx(dya, wt, dx, 3, 3, *stride, pt, pl, 1)
            fdx = _at_offset(np.zeros(x.shape, dtype), out)
            fpart = DWC.backward(xa, dya, wt, fdx, 3, 3, *stride, pt, pl, 1, True)
            part = DWC.dw_partials(xa, dya, 3, 3, *stride, pt, pl, 1, True)
            runs.append((y.copy(), dx.copy(), fdx.copy(), np.array(part), np.array(fpart)))
        for run in runs[1:]:
            for name, a, want in zip(("y", "dx", "fused dx", "dW", "fused dW"), run, runs[0]):
                np.testing.assert_array_equal(a, want, err_msg=f"{shape} {name}")


# ------------------------------------------------------------ the forward's activation
def _activated(y, act):
    """What forward(..., activation=act) must store: the linear forward's values with
    v <= 0 -> 0 (a NaN stays NaN), then for relu6 v > 6 -> 6."""
    with np.errstate(invalid="ignore"):
        y = np.where(y <= 0, 0, y) if act in ("relu", "relu6") else y
        return np.where(y > 6, 6, y).astype(y.dtype) if act == "relu6" else y


def _forward_with(x, w, b, stride, pad, m, act, out_shape):
    kh, kw, c, _ = w.shape
    wt = np.ascontiguousarray(w.reshape(kh * kw, c * m))
    y = np.full(out_shape, np.nan, x.dtype)
    DWC.forward(x, wt, b, y, kh, kw, *stride, pad[0][0], pad[1][0], m, act)
    return y


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_3x3_forward_applies_its_activation_in_place_of_a_pass(case, isa, dtype, act,
                                                               isa_restored):
    """forward(..., activation) clamps each band (row block) of y as it is stored, on every
    path of the 3x3 kernels: the same bits as the linear forward through np.maximum /
    np.minimum (values spread past 6 by a scaled x)."""
    DWC.set_isa(isa)
    x, w, b, stride, pad, dy = _data(case, dtype)
    x = x * 4
    linear = _forward_with(x, w, b, stride, pad, 1, "linear", dy.shape)
    got = _forward_with(x, w, b, stride, pad, 1, act, dy.shape)
    assert (linear > 6).any() and (linear < 0).any()
    np.testing.assert_array_equal(got, _activated(linear, act))


@pytest.mark.parametrize("act", ["relu", "relu6"])
@pytest.mark.parametrize("kernel, m", [((5, 3), 1), ((3, 3), 2)], ids=["5x3", "m2"])
def test_general_forward_applies_its_activation(kernel, m, act):
    """The general row kernels (any kernel size, depth multiplier > 1) too."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 11, 24)).astype(np.float32) * 4
    w = rng.standard_normal((*kernel, 24, m)).astype(np.float32)
    b = rng.standard_normal(24 * m).astype(np.float32)
    shape = (2, 9 - kernel[0] + 3, 11 - kernel[1] + 3, 24 * m)
    pad = ((1, 1), (1, 1))
    linear = _forward_with(x, w, b, (1, 1), pad, m, "linear", shape)
    np.testing.assert_array_equal(_forward_with(x, w, b, (1, 1), pad, m, act, shape),
                                  _activated(linear, act))


@pytest.mark.parametrize("shape", [(4, 64, 64, 144), (40, 16, 16, 256)],
                         ids=["bands", "stream"])
def test_activation_keeps_nan_and_a_large_output_is_not_streamed(shape):
    """An output of >= 8 MiB (streamed when linear) is clamped band by band (strip by
    strip) too; a NaN in x stays NaN through ReLU6, as through np.maximum / np.minimum."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32) * 4
    x[1, 10, 12, 5] = np.nan
    w = rng.standard_normal((3, 3, shape[3], 1)).astype(np.float32)
    pad = ((1, 1), (1, 1))
    linear = _forward_with(x, w, None, (1, 1), pad, 1, "linear", x.shape)
    got = _forward_with(x, w, None, (1, 1), pad, 1, "relu6", x.shape)
    assert np.isnan(got[1, 9:12, 11:14, 5]).all()
    np.testing.assert_array_equal(got, _activated(linear, "relu6"))


def test_forward_refuses_an_unknown_activation():
    x = np.zeros((1, 4, 4, 8), np.float32)
    wt = np.zeros((9, 8), np.float32)
    y = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match=r"activation must be one of .*'relu6'.*got 'gelu'"):
        DWC.forward(x, wt, None, y, 3, 3, 1, 1, 1, 1, 1, "gelu")


# ------------------------------------------------------------ streamed rows, every strip
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("wd", list(range(1, 25)))
def test_3x3_streamed_rows_every_strip_width(wd, dtype):
    """Rows of 1 to 24 pixels (stride 1, 'same'): one strip of 1-7 columns, or two to four
    of 4-7 (with the row's left edge, its right edge, both or neither), images of 1, 2, 3
    and 5 rows (the walk's three-row rotation ending at each phase), 20 channels (a ragged
    last vector) and 48 at a 16-byte offset (a short head chunk realigning the rest): y
    with and without bias, ReLU6 and the stride-1 dx (the forward over dy) against the
    float64 loop; two threads (rows split inside an image) give the same bits as one.
    (float64 runs the bands and rows on the same shapes.)"""
    be = backends.get("cython")
    pad = ((1, 1), (1, 1))
    for c, h, bias, offset in ((20, 1, True, 0), (48, 2, False, 16), (20, 3, True, 16),
                               (48, 5, True, 0)):
        x, w, b, stride, _, dy = _data((3, h, wd, c, (1, 1), pad, bias), dtype, seed=wd)
        x, dy = _at_offset(x, offset), _at_offset(dy, offset)
        want = reference(x, w, b, (1, 1), pad, dy)
        runs = []
        _, max_threads = _extensions.openmp_info()
        try:
            for nt in (1, 2):
                _extensions.set_num_threads(nt)
                y, ctx = be.depthwise_conv2d_forward(x, w, b, (1, 1), pad)
                dx = be.depthwise_conv2d_backward(dy, ctx)[0]
                y6 = _forward_with(x * 4, w, b, (1, 1), pad, 1, "relu6", y.shape)
                runs.append((y, dx, y6))
        finally:
            _extensions.set_num_threads(max_threads)
        label = f"3x{h}x{wd}x{c}"
        _check(runs[0][0], want[0], dtype, f"y {label}")
        _check(runs[0][1], want[1], dtype, f"dx {label}")
        linear = _forward_with(x * 4, w, b, (1, 1), pad, 1, "linear", y.shape)
        np.testing.assert_array_equal(runs[0][2], _activated(linear, "relu6"), err_msg=label)
        for a, b2, name in zip(runs[0], runs[1], ("y", "dx", "relu6 y")):
            np.testing.assert_array_equal(a, b2, err_msg=f"{name} {label}: 1 and 2 threads")
