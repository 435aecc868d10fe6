"""fastcnn.nn's convolutions of issue 14 in TensorFlow's words: conv2d(dilations=...),
depthwise_conv2d, separable_conv2d and conv2d_transpose, on every CPU backend's kernels.

Values and the tape's gradients (input and every filter) against TensorFlow 2.21 float64
fixtures (tests/fixtures/keras/make_nn14.py), every backward through the GradientTape
against numerical gradients, the ops against their definitions, and bad input (errors
name the argument, the value and TensorFlow's constraint)."""
import os

import fastcnn  # noqa: I001  (before NumPy)
import numpy as np
import pytest

from fastcnn import GradientTape, Tensor, backends, nn
from tape_gradcheck import check_op, tape_grads

CPU_BACKENDS = [b for b in backends.available() if b != "cuda"]
FIXTURES = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "keras", "nn14.npz"))
F = {k: FIXTURES[k] for k in FIXTURES.files}


@pytest.fixture(params=CPU_BACKENDS)
def on_backend(request):
    with fastcnn.use_backend(request.param):
        yield request.param


@pytest.fixture
def r():
    return np.random.default_rng(14)


# ---------------------------------------------------------- TensorFlow's numbers

TF_CASES = {
    # name: (the op as TensorFlow's test called it, the inputs' fixture names)
    "cd_same": (lambda x, w: nn.conv2d(x, w, 1, "SAME", dilations=2), "x w"),
    "cd_valid": (lambda x, w: nn.conv2d(x, w, [1, 1, 1, 1], "VALID", dilations=[2, 3]),
                 "x w"),
    "cd_explicit": (lambda x, w: nn.conv2d(x, w, 1, [[0, 0], [2, 1], [0, 3], [0, 0]],
                                           dilations=[1, 3, 2, 1]), "x w"),
    "dw_same_s2": (lambda x, w: nn.depthwise_conv2d(x, w, [1, 2, 2, 1], "SAME"), "x w"),
    "dw_valid_d2": (lambda x, w: nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "VALID",
                                                     dilations=[2, 2]), "x w"),
    "dw_explicit_s2": (lambda x, w: nn.depthwise_conv2d(
        x, w, [1, 2, 2, 1], [[0, 0], [1, 2], [0, 1], [0, 0]]), "x w"),
    "dw_explicit_d": (lambda x, w: nn.depthwise_conv2d(
        x, w, [1, 1, 1, 1], [[0, 0], [0, 2], [3, 1], [0, 0]], dilations=[1, 2]), "x w"),
    "sep_same_s2": (lambda x, d, p: nn.separable_conv2d(x, d, p, [1, 2, 2, 1], "SAME"),
                    "x dw pw"),
    "sep_valid_d2": (lambda x, d, p: nn.separable_conv2d(x, d, p, [1, 1, 1, 1], "VALID",
                                                         dilations=[2, 2]), "x dw pw"),
    "sep_explicit": (lambda x, d, p: nn.separable_conv2d(
        x, d, p, [1, 1, 1, 1], [[0, 0], [1, 0], [2, 1], [0, 0]]), "x dw pw"),
    "tr_same_s2": (lambda x, w: nn.conv2d_transpose(x, w, [2, 8, 10, 2], 2, "SAME"), "x w"),
    "tr_same_odd": (lambda x, w: nn.conv2d_transpose(x, w, [2, 7, 3, 3], [2, 1], "SAME"),
                    "x w"),
    "tr_valid_s2": (lambda x, w: nn.conv2d_transpose(x, w, (1, 10, 6, 2), [1, 2, 2, 1],
                                                     "VALID"), "x w"),
    "tr_explicit_s2": (lambda x, w: nn.conv2d_transpose(
        x, w, np.array([1, 8, 7, 2]), 2, [[0, 0], [1, 0], [0, 2], [0, 0]]), "x w"),
    "tr_explicit_big": (lambda x, w: nn.conv2d_transpose(
        x, w, [1, 3, 4, 3], 1, [[0, 0], [3, 1], [2, 0], [0, 0]]), "x w"),
    # TensorFlow's numbers from tf.nn.atrous_conv2d_transpose (its CPU conv2d_transpose
    # refuses dilations): the same op
    "tr_same_d2": (lambda x, w: nn.conv2d_transpose(x, w, [2, 5, 4, 3], 1, "SAME",
                                                    dilations=2), "x w"),
    "tr_valid_d2": (lambda x, w: nn.conv2d_transpose(x, w, [6, 7], 1, "VALID",
                                                     dilations=[2, 2]), "x w"),
}


@pytest.mark.parametrize("case", sorted(TF_CASES))
def test_matches_tensorflow(on_backend, case):
    fn, names = TF_CASES[case]
    names = names.split()
    y, grads = tape_grads(fn, [F[f"{case}_{n}"] for n in names], F[f"{case}_dy"])
    np.testing.assert_allclose(y, F[f"{case}_y"], rtol=1e-10, atol=1e-11)
    for n, g in zip(names, grads):
        np.testing.assert_allclose(g, F[f"{case}_d{n}"], rtol=1e-10, atol=1e-11,
                                   err_msg=f"d{n}")


def test_float32_stays_float32(on_backend):
    for case in ("cd_same", "dw_same_s2", "sep_same_s2", "tr_same_s2"):
        fn, names = TF_CASES[case]
        inputs = [F[f"{case}_{n}"].astype(np.float32) for n in names.split()]
        y, grads = tape_grads(fn, inputs, F[f"{case}_dy"].astype(np.float32))
        assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads), case
        np.testing.assert_allclose(y, F[f"{case}_y"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grads[0], F[f"{case}_dx"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- gradient checks


def test_dilated_conv2d_gradcheck(on_backend, r):
    x = r.standard_normal((2, 5, 6, 2))
    w = r.standard_normal((2, 3, 2, 3))
    for padding, d in [("SAME", 2), ("VALID", [2, 1]), ([[0, 0], [1, 2], [0, 1], [0, 0]], 3)]:
        check_op(lambda a, b: nn.conv2d(a, b, 1, padding, dilations=d), x, w)
    check_op(lambda b: nn.conv2d(x, b, 1, "SAME", dilations=2), w)       # filters only


def test_depthwise_and_separable_gradcheck(on_backend, r):
    x = r.standard_normal((2, 5, 6, 2))
    w = r.standard_normal((3, 2, 2, 2))
    p = r.standard_normal((1, 1, 4, 3))
    for strides, padding, d in [(1, "SAME", None), ([1, 2, 2, 1], "VALID", None),
                                ([1, 3, 3, 1], "SAME", None), (1, "VALID", [2, 2]),
                                (1, [[0, 0], [2, 0], [1, 1], [0, 0]], [1, 2])]:
        check_op(lambda a, b: nn.depthwise_conv2d(a, b, strides, padding, dilations=d), x, w)
        check_op(lambda a, b, c: nn.separable_conv2d(a, b, c, strides, padding, dilations=d),
                 x, w, p)
    check_op(lambda b: nn.depthwise_conv2d(x, b, [1, 2, 2, 1], "SAME"), w)
    check_op(lambda c: nn.separable_conv2d(x, w, c, 1, "SAME"), p)


def test_conv2d_transpose_gradcheck(on_backend, r):
    x = r.standard_normal((2, 3, 4, 2))
    w = r.standard_normal((3, 2, 3, 2))
    for output_shape, strides, padding, d in [
            ([2, 6, 8, 3], 2, "SAME", None),
            ([2, 7, 9, 3], 2, "VALID", None),
            ([2, 11, 9, 3], [3, 2], "VALID", None),      # 2 rows past the last tap: 0
            ([5, 5], 1, "VALID", None),
            ([2, 3, 4, 3], 1, "SAME", 2),
            ([7, 6], 1, "VALID", [2, 2]),
            ([2, 6, 7, 3], 2, [[0, 0], [1, 0], [0, 1], [0, 0]], None),
            ([2, 1, 2, 3], 1, [[0, 0], [2, 2], [1, 2], [0, 0]], None),   # pads > kernel - 1
            ([2, 3, 3, 3], 1, [[0, 0], [1, 1], [3, 0], [0, 0]], [1, 2])]:   # 3 > 2
        check_op(lambda a, b: nn.conv2d_transpose(a, b, output_shape, strides, padding,
                                                  dilations=d), x, w)
    # strides larger than the kernel: output rows no tap reaches are 0
    w1 = r.standard_normal((1, 2, 3, 2))
    check_op(lambda a, b: nn.conv2d_transpose(a, b, [2, 9, 8, 3], [3, 2], "VALID"), x, w1)
    check_op(lambda b: nn.conv2d_transpose(x, b, [2, 6, 8, 3], 2, "SAME"), w)


# ---------------------------------------------------------- the definitions


def dilate_filters(w, dh, dw):
    kh, kw = w.shape[:2]
    out = np.zeros(((kh - 1) * dh + 1, (kw - 1) * dw + 1) + w.shape[2:], w.dtype)
    out[::dh, ::dw] = w
    return out


def test_dilation_is_the_conv_with_a_zero_dilated_filter(on_backend, r):
    x = r.standard_normal((2, 7, 6, 3))
    w = r.standard_normal((2, 3, 3, 2))      # conv2d (kh, kw, 3, 2); depthwise: M = 2
    for padding in ("SAME", "VALID", [[0, 0], [3, 0], [1, 2], [0, 0]]):
        for op in (nn.conv2d, nn.depthwise_conv2d):
            np.testing.assert_allclose(
                np.asarray(op(x, w, 1, padding, dilations=[3, 2])),
                np.asarray(op(x, dilate_filters(w, 3, 2), 1, padding)), atol=1e-12,
                err_msg=f"{op.__name__} {padding}")


def test_conv2d_transpose_is_the_input_gradient_of_conv2d(on_backend, r):
    """tf.nn.conv2d_transpose(y, w, x.shape, ...) == d(conv2d(x, w, ...) . y) / dx."""
    w = r.standard_normal((3, 2, 3, 4))
    for x_shape, strides, padding, d in [((2, 7, 8, 3), 2, "SAME", None),
                                         ((1, 8, 7, 3), [3, 2], "VALID", None),
                                         ((1, 6, 6, 3), 1, "SAME", [2, 3]),
                                         ((2, 5, 6, 3), [1, 2], [[0, 0], [2, 1], [1, 0], [0, 0]],
                                          None)]:
        x = r.standard_normal(x_shape)
        y = np.asarray(nn.conv2d(x, w, strides, padding, dilations=d))
        g = r.standard_normal(y.shape)
        _, (dx, _) = tape_grads(lambda a, b: nn.conv2d(a, b, strides, padding, dilations=d),
                                [x, w], g)
        np.testing.assert_allclose(
            np.asarray(nn.conv2d_transpose(g, w, x_shape, strides, padding, dilations=d)), dx,
            atol=1e-12)


def transpose_by_scatter(x, w, strides, pads, dilation, out_hw):
    """The definition: input pixel (i, j) adds ``x[i, j] @ w[a, b].T`` to output
    ``(i*sh + a*dh - top, j*sw + b*dw - left)`` when that lies inside the output."""
    n, h, wd, _ = x.shape
    kh, kw, c_out, _ = w.shape
    y = np.zeros((n,) + tuple(out_hw) + (c_out,))
    for i in range(h):
        for j in range(wd):
            for a in range(kh):
                for b in range(kw):
                    t = i * strides[0] + a * dilation[0] - pads[0]
                    u = j * strides[1] + b * dilation[1] - pads[1]
                    if 0 <= t < out_hw[0] and 0 <= u < out_hw[1]:
                        y[:, t, u, :] += x[:, i, j, :] @ w[a, b].T
    return y


def test_conv2d_transpose_with_explicit_padding_is_its_definition(r):
    """Every explicit padding 0-4 before / 0-2 after (larger than the kernel too: a phase
    no input reaches, a negative zero-insertion pad) that TensorFlow accepts, kernel 1-3,
    stride 1-3 (dilation 1-2 at stride 1), against the scatter definition."""
    checked = 0
    x = r.standard_normal((1, 2, 2, 2))
    for k in (1, 2, 3):
        for s, d in ((1, 1), (2, 1), (3, 1), (1, 2)):
            w = r.standard_normal((k, 2, 3, 2))
            keff = (k - 1) * d + 1
            for pb in range(5):
                for pa in range(3):
                    outs = [o for o in range(1, 12) if o + pb + pa >= keff
                            and (o + pb + pa - keff) // s + 1 == 2]
                    for o in outs[:2]:
                        padding = [[0, 0], [pb, pa], [0, 1], [0, 0]]
                        y = nn.conv2d_transpose(x, w, [1, o, 2, 3], [s, 1], padding,
                                                dilations=[d, 1])
                        expected = transpose_by_scatter(x, w, (s, 1), (pb, 0), (d, 1), (o, 2))
                        np.testing.assert_allclose(np.asarray(y), expected, atol=1e-12,
                                                   err_msg=str((k, s, d, pb, pa, o)))
                        checked += 1
    assert checked > 100, checked


def test_separable_is_depthwise_then_pointwise(on_backend, r):
    x = r.standard_normal((1, 6, 6, 2))
    dw = r.standard_normal((3, 3, 2, 3))
    pw = r.standard_normal((1, 1, 6, 4))
    z = nn.depthwise_conv2d(x, dw, [1, 2, 2, 1], "SAME")
    np.testing.assert_array_equal(np.asarray(nn.separable_conv2d(x, dw, pw, [1, 2, 2, 1],
                                                                 "SAME")),
                                  np.asarray(nn.conv2d(z, pw, 1, "VALID")))


def test_undilated_conv2d_is_unchanged(on_backend, r):
    """dilations=1 in every spelling is the plain kernel call, bit for bit."""
    x = r.standard_normal((1, 5, 5, 2)).astype(np.float32)
    w = r.standard_normal((3, 3, 2, 2)).astype(np.float32)
    plain, _ = backends.current().conv2d_forward(x, w, None, (2, 2), ((1, 1), (1, 1)))
    for d in (None, 1, [1], [1, 1], [1, 1, 1, 1]):
        np.testing.assert_array_equal(np.asarray(nn.conv2d(x, w, 2, "SAME", dilations=d)),
                                      plain)


# ------------------------------------------------------------------- bad input


def test_bad_input_names_argument_value_and_tensorflows_constraint():
    x = np.zeros((1, 6, 6, 3))
    w = np.zeros((3, 3, 3, 2))
    dw = np.zeros((3, 3, 3, 2))
    pw = np.zeros((1, 1, 6, 4))
    tw = np.zeros((3, 3, 2, 3))              # conv2d_transpose: (kh, kw, out, in)
    cases = [
        (lambda: nn.conv2d(x, w, 2, "SAME", dilations=2), ValueError,
         r"nn.conv2d: `strides > 1` not supported in conjunction with `dilations > 1`.*"
         r"strides=2 and dilations=2"),
        (lambda: nn.conv2d(x, w, 1, "SAME", dilations=[1, 2, 2, 2]), ValueError,
         r"dilations=\[1, 2, 2, 2\] moves along the batch or channel axis"),
        (lambda: nn.conv2d(x, w, 1, "SAME", dilations=0), ValueError,
         r"dilations must be >= 1, got 0"),
        (lambda: nn.conv2d(x, w, 1, "VALID", dilations=3), ValueError,
         r"dilated filters \(7, 7\) is larger than the input"),
        (lambda: nn.depthwise_conv2d(x, dw, [1, 2, 1, 1], "SAME"), ValueError,
         r"strides=\[1, 2, 1, 1\]: .*only supports equal strides in the row and column"),
        (lambda: nn.depthwise_conv2d(x, dw, [1, 2, 2, 1], "SAME", dilations=[2, 2]),
         ValueError, r"depthwise_conv2d: `strides > 1` not supported .*all values of "
                     r"strides must be 1"),
        (lambda: nn.depthwise_conv2d(x, np.zeros((3, 3, 2, 2)), 1, "SAME"), ValueError,
         r"input and filter must have the same depth .*input has 3 channels .* filter has 2"),
        (lambda: nn.depthwise_conv2d(x, dw[0], 1, "SAME"), ValueError,
         r"filter must have rank 4 \(kh, kw, in_channels, channel_multiplier\)"),
        (lambda: nn.depthwise_conv2d(x[0], dw, 1, "SAME"), ValueError,
         r"depthwise_conv2d: input must have rank 4"),
        (lambda: nn.depthwise_conv2d(x, dw, 1, "SAME", data_format="NCHW"),
         NotImplementedError, r"data_format='NCHW'"),
        (lambda: nn.depthwise_conv2d(x, dw.astype(np.float32), 1, "SAME"), TypeError,
         r"input \(float64\) and filter \(float32\)"),
        (lambda: nn.depthwise_conv2d(x, dw, 1, [[0, 0], [1, 1], [1, 1], [1, 0]]), ValueError,
         r"pads the batch or channel axis"),
        (lambda: nn.separable_conv2d(x, dw, np.zeros((2, 2, 6, 4)), 1, "SAME"), ValueError,
         r"pointwise_filter must have shape \(1, 1, in_channels \* channel_multiplier, "
         r"out_channels\) = \(1, 1, 3 \* 2, out_channels\) .*got \(2, 2, 6, 4\)"),
        (lambda: nn.separable_conv2d(x, dw, np.zeros((1, 1, 5, 4)), 1, "SAME"), ValueError,
         r"\(1, 1, 6, out_channels\) for depthwise_filter of shape \(3, 3, 3, 2\)"),
        (lambda: nn.separable_conv2d(x, np.zeros((3, 3, 2, 2)), pw, 1, "SAME"), ValueError,
         r"input and depthwise_filter must have the same depth"),
        (lambda: nn.separable_conv2d(x, dw, pw.astype(np.float32), 1, "SAME"), TypeError,
         r"input \(float64\) and pointwise_filter \(float32\)"),
        (lambda: nn.separable_conv2d(x, dw, pw, [2, 3], "SAME"), ValueError,
         r"separable_conv2d: strides=\[2, 3\]: .*equal strides"),
        (lambda: nn.conv2d_transpose(x, tw, [1, 13, 13, 2], 2, "SAME"), ValueError,
         r"output_shape \[1, 13, 13, 2\] does not fit the input: .* maps a \(13, 13\) output "
         r"back to \(7, 7\), but input has spatial size \(6, 6\)"),
        (lambda: nn.conv2d_transpose(x, tw, [2, 12, 12, 2], 2, "SAME"), ValueError,
         r"output_shape \(2, 12, 12, 2\) has batch size 2 but input has 1"),
        (lambda: nn.conv2d_transpose(x, tw, [1, 12, 12, 3], 2, "SAME"), ValueError,
         r"output_shape \(1, 12, 12, 3\) has 3 channels but filters give 2"),
        (lambda: nn.conv2d_transpose(x, w, [1, 12, 12, 3], 2, "SAME"), ValueError,
         r"filters have 2 input channels \(their last axis.* input has 3"),
        (lambda: nn.conv2d_transpose(x, tw, [12, 12, 2], 2, "SAME"), ValueError,
         r"output_shape must be 4 ints \(N, H, W, C_out\) or the 2 spatial ones"),
        (lambda: nn.conv2d_transpose(x, tw, [1, 12.0, 12, 2], 2, "SAME"), ValueError,
         r"output_shape must be 4 ints"),
        (lambda: nn.conv2d_transpose(x, tw, [1, 12, 12, 2], 2, "SAME", dilations=2),
         ValueError, r"conv2d_transpose: `strides > 1` not supported"),
        (lambda: nn.conv2d_transpose(x, tw, [1, 12, 12, 2], [1, 2, 2, 2], "SAME"), ValueError,
         r"strides=\[1, 2, 2, 2\] moves along the batch or channel axis"),
        (lambda: nn.conv2d_transpose(x, tw, [1, 12, 12, 2], 2, "FULL"), ValueError,
         r"padding must be 'SAME'.*'FULL'"),
        (lambda: nn.conv2d_transpose(x, tw, [1, 12, 12, 2], 2, data_format="NCHW"),
         NotImplementedError, r"data_format='NCHW'"),
    ]
    for fn, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            fn()


# ------------------------------------------------------------------ device arrays

needs_cuda = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")


@needs_cuda
def test_device_arrays(r):
    """On 'cuda' with device arrays, depthwise_conv2d and separable_conv2d (no dilation)
    run the device kernels and give device gradients equal to the reference's; the paths
    that move data with NumPy (dilations, conv2d_transpose) refuse device arrays."""
    from fastcnn import _device
    from fastcnn.backends import cuda as cb

    x = r.standard_normal((1, 4, 4, 2)).astype(np.float32)
    dw = r.standard_normal((3, 3, 2, 2)).astype(np.float32)
    pw = r.standard_normal((1, 1, 4, 3)).astype(np.float32)
    dy = r.standard_normal((1, 2, 2, 3)).astype(np.float32)

    def run(*vs):
        return tape_grads(lambda a, b, c: nn.separable_conv2d(a, b, c, [1, 2, 2, 1], "SAME"),
                          vs, dy)

    with fastcnn.use_backend("reference"):
        y_ref, g_ref = run(x, dw, pw)
    with fastcnn.use_backend("cuda"):
        ts = [Tensor(cb.to_device(a)) for a in (x, dw, pw)]
        with GradientTape() as tape:
            tape.watch(ts)
            y = nn.separable_conv2d(*ts, [1, 2, 2, 1], "SAME")
        grads = tape.gradient(y, ts, output_gradients=cb.to_device(dy))
        assert cb.is_device_array(y.value)
        np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-4, atol=1e-5)
        for g, gr in zip(grads, g_ref):
            assert cb.is_device_array(g)
            np.testing.assert_allclose(_device.to_host(g), gr, rtol=1e-4, atol=1e-5)
        d = cb.to_device(x)
        for fn in (lambda: nn.conv2d(d, cb.to_device(dw[:, :, :, :1].repeat(2, 3)), 1,
                                     "SAME", dilations=2),
                   lambda: nn.depthwise_conv2d(d, cb.to_device(dw), 1, "SAME", dilations=2),
                   lambda: nn.conv2d_transpose(d, cb.to_device(dw), [1, 8, 8, 2], 2)):
            with pytest.raises(NotImplementedError, match=r"does not take device arrays"):
                fn()
