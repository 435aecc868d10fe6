"""Small fixed cases with values computed by hand, run on every available backend.

These pin the contract's conventions (kernel orientation, TensorFlow 'same' padding, the
first-max tie rule, -inf padding, the avg-pool divisor, the fused-loss gradients) with
numbers a reader can check on paper; the random cross-backend and gradient suites cover
everything else. ``backend`` (every backend that loads here) comes from tests/conftest.py.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fastcnn.shapes import window_output_shape

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


def op(backend, name):
    if not backend.implements(name):
        pytest.skip(f"backend {backend.name!r} does not implement {name!r}")
    return getattr(backend, name)


def nhwc(a, dtype):
    """A 2-D single-channel image -> (1, H, W, 1)."""
    return np.asarray(a, dtype=dtype)[None, :, :, None]


def assert_close(actual, expected, dtype):
    actual = np.asarray(actual)
    assert actual.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------- conv


def test_conv_3x3_on_4x4_by_hand(backend, dtype):
    # x[r, c] = 4r + c. The kernel is asymmetric (taps at (0, 1) and (2, 2)), so a flipped
    # (true convolution) or transposed kernel gives different numbers:
    # y[i, j] = x[i, j+1] + 2 x[i+2, j+2] + 0.5
    x = nhwc(np.arange(16).reshape(4, 4), dtype)
    w = np.zeros((3, 3, 1, 1), dtype)
    w[0, 1, 0, 0], w[2, 2, 0, 0] = 1, 2
    b = np.array([0.5], dtype)
    x0, w0 = x.copy(), w.copy()
    y, ctx = op(backend, "conv2d_forward")(x, w, b, (1, 1), ((0, 0), (0, 0)))
    assert_close(y[0, :, :, 0], [[21.5, 24.5], [33.5, 36.5]], dtype)

    dy = nhwc([[1, 2], [3, 4]], dtype)
    dy0 = dy.copy()
    dx, dw, db = op(backend, "conv2d_backward")(dy, ctx)
    # dx[i, j+1] += dy[i, j] and dx[i+2, j+2] += 2 dy[i, j]
    assert_close(
        dx[0, :, :, 0],
        [[0, 1, 2, 0], [0, 3, 4, 0], [0, 0, 2, 4], [0, 0, 6, 8]],
        dtype,
    )
    # dw[a, b] = sum_ij dy[i, j] x[i+a, j+b] = 10 (4a + b) + (2*1 + 3*4 + 4*5) = 40a + 10b + 34
    a, bb = np.mgrid[0:3, 0:3]
    assert_close(dw[:, :, 0, 0], 40 * a + 10 * bb + 34, dtype)
    assert_close(db, [10], dtype)
    # Inputs untouched.
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(dy, dy0)


def test_conv_nonsquare_same_puts_odd_padding_right(backend, dtype):
    # A 1x2 kernel with 'same' needs one padded column: TensorFlow puts it on the RIGHT,
    # so y[i, j] = x[i, j] + 10 x[i, j+1], with x[i, 3] = 0.
    (ho, wo), pad = window_output_shape((3, 3), (1, 2), (1, 1), "same")
    assert (ho, wo) == (3, 3) and pad == ((0, 0), (0, 1))
    x = nhwc(np.arange(9).reshape(3, 3), dtype)
    w = np.array([1, 10], dtype).reshape(1, 2, 1, 1)
    y, ctx = op(backend, "conv2d_forward")(x, w, None, (1, 1), pad)
    assert_close(y[0, :, :, 0], [[10, 21, 2], [43, 54, 5], [76, 87, 8]], dtype)
    dx, dw, db = op(backend, "conv2d_backward")(np.ones_like(y), ctx)
    assert db is None
    # Every pixel is hit by tap 0 once (weight 1) and by tap 1 once unless in column 0.
    assert_close(dx[0, :, :, 0], [[1, 11, 11]] * 3, dtype)
    # dw[0, 0] = sum of x = 36; dw[0, 1] = sum of x without column 0 = 36 - 9 = 27
    assert_close(dw.ravel(), [36, 27], dtype)


def test_conv_1x1_is_a_per_pixel_matrix_product(backend, dtype):
    # Channels: pixel [1, 2] @ [[1, 0, 1], [0, 1, 1]] = [1, 2, 3]; the stride 2 keeps
    # pixels (0, 0) and (0, 2) of a 1x3 image.
    x = np.array([[[[1, 2], [7, 7], [3, -1]]]], dtype)  # (1, 1, 3, 2)
    w = np.array([[1, 0, 1], [0, 1, 1]], dtype).reshape(1, 1, 2, 3)
    y, _ = op(backend, "conv2d_forward")(x, w, None, (1, 2), ((0, 0), (0, 0)))
    assert_close(y[0, 0], [[1, 2, 3], [3, -1, 2]], dtype)


# ---------------------------------------------------------------------------- max pool


def test_maxpool_ties_send_gradient_to_first_max(backend, dtype):
    # Window 1 is all zeros (gradient to its top-left); window 2 has its max 3 twice, at
    # (0, 1) and (1, 0) of the window: the first in row-major order, (0, 1), wins.
    x = nhwc([[0, 0, 1, 3], [0, 0, 3, 0]], dtype)
    y, ctx = op(backend, "maxpool2d_forward")(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert_close(y[0, :, :, 0], [[0, 3]], dtype)
    dx = op(backend, "maxpool2d_backward")(nhwc([[5, 7]], dtype), ctx)
    assert_close(dx[0, :, :, 0], [[5, 0, 0, 7], [0, 0, 0, 0]], dtype)


def test_maxpool_overlapping_ties_accumulate(backend, dtype):
    # Windows [5, 5] (cols 0-1) and [5, 5] (cols 1-2): each sends its gradient to its own
    # first element, so column 1 receives the second window's gradient only.
    x = nhwc([[5, 5, 5]], dtype)
    y, ctx = op(backend, "maxpool2d_forward")(x, (1, 2), (1, 1), ((0, 0), (0, 0)))
    dx = op(backend, "maxpool2d_backward")(nhwc([[1, 10]], dtype), ctx)
    assert_close(dx[0, :, :, 0], [[1, 10, 0]], dtype)
    # Overlap with distinct maxima: the 9 is the max of both windows and gets both.
    x = nhwc([[1, 9, 2]], dtype)
    y, ctx = op(backend, "maxpool2d_forward")(x, (1, 2), (1, 1), ((0, 0), (0, 0)))
    assert_close(y[0, :, :, 0], [[9, 9]], dtype)
    dx = op(backend, "maxpool2d_backward")(nhwc([[1, 10]], dtype), ctx)
    assert_close(dx[0, :, :, 0], [[0, 11, 0]], dtype)


def test_maxpool_same_pads_with_minus_infinity(backend, dtype):
    # All inputs negative: zero padding would make the border outputs 0.
    (ho, wo), pad = window_output_shape((2, 2), (2, 2), (1, 1), "same")
    assert pad == ((0, 1), (0, 1))
    x = nhwc([[-1, -2], [-3, -4]], dtype)
    y, ctx = op(backend, "maxpool2d_forward")(x, (2, 2), (1, 1), pad)
    assert_close(y[0, :, :, 0], [[-1, -2], [-3, -4]], dtype)
    dx = op(backend, "maxpool2d_backward")(nhwc([[1, 2], [3, 4]], dtype), ctx)
    # (0,0) wins window (0,0) only; every other pixel wins only its own corner window.
    assert_close(dx[0, :, :, 0], [[1, 2], [3, 4]], dtype)


# ---------------------------------------------------------------------------- avg pool


def test_avgpool_same_divides_by_real_elements_bottom_right(backend, dtype):
    # 3x3, pool 2, stride 2, 'same': one padded row/column at the bottom/right.
    (ho, wo), pad = window_output_shape((3, 3), (2, 2), (2, 2), "same")
    assert (ho, wo) == (2, 2) and pad == ((0, 1), (0, 1))
    x = nhwc(np.arange(9).reshape(3, 3), dtype)
    y, ctx = op(backend, "avgpool2d_forward")(x, (2, 2), (2, 2), pad)
    # (0+1+3+4)/4, (2+5)/2, (6+7)/2, 8/1
    assert_close(y[0, :, :, 0], [[2, 3.5], [6.5, 8]], dtype)
    dx = op(backend, "avgpool2d_backward")(np.ones_like(y), ctx)
    assert_close(dx[0, :, :, 0], [[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [0.5, 0.5, 1]], dtype)


def test_avgpool_same_divides_by_real_elements_all_borders(backend, dtype):
    # 3x3, pool 3, stride 1, 'same': one padded row/column on every side, so corner
    # windows hold 4 real pixels, edge windows 6 and the centre 9.
    _, pad = window_output_shape((3, 3), (3, 3), (1, 1), "same")
    assert pad == ((1, 1), (1, 1))
    x = nhwc(np.arange(9).reshape(3, 3), dtype)  # [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    y, ctx = op(backend, "avgpool2d_forward")(x, (3, 3), (1, 1), pad)
    # e.g. window (1, 0) covers rows 0-2, columns 0-1: (0+1+3+4+6+7) / 6
    assert_close(
        y[0, :, :, 0],
        [[8 / 4, 15 / 6, 12 / 4], [21 / 6, 36 / 9, 27 / 6], [20 / 4, 33 / 6, 24 / 4]],
        dtype,
    )
    dx = op(backend, "avgpool2d_backward")(np.ones_like(y), ctx)
    # Pixel (0, 0) is in windows (0,0), (0,1), (1,0), (1,1): 1/4 + 1/6 + 1/6 + 1/9.
    assert_close(dx[0, 0, 0, 0], 1 / 4 + 1 / 6 + 1 / 6 + 1 / 9, dtype)
    # Gradient is conserved: every window hands out exactly its dy.
    assert_close(dx.sum(), 9, dtype)


# ---------------------------------------------------------------------------- dense


def test_dense_by_hand(backend, dtype):
    x = np.array([[1, 2]], dtype)
    w = np.array([[1, 0, 2], [0, 1, 3]], dtype)
    b = np.array([1, 1, 1], dtype)
    y, ctx = op(backend, "dense_forward")(x, w, b)
    assert_close(y, [[2, 3, 9]], dtype)
    dx, dw, db = op(backend, "dense_backward")(np.array([[1, 0, 2]], dtype), ctx)
    assert_close(dx, [[5, 6]], dtype)
    assert_close(dw, [[1, 0, 2], [2, 0, 4]], dtype)
    assert_close(db, [1, 0, 2], dtype)


# ---------------------------------------------------------------------------- activations


def test_relu_derivative_is_zero_at_zero_and_dy_untouched(backend, dtype):
    x = np.array([[-1, 0, 2]], dtype)
    y, ctx = op(backend, "relu_forward")(x)
    assert_close(y, [[0, 0, 2]], dtype)
    dy = np.array([[5, 6, 7]], dtype)
    dx = op(backend, "relu_backward")(dy, ctx)
    assert_close(dx, [[0, 0, 7]], dtype)
    assert_close(dy, [[5, 6, 7]], dtype)
    assert not np.shares_memory(dx, dy)


def test_sigmoid_and_tanh_by_hand(backend, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning for huge |x|
        y, ctx = op(backend, "sigmoid_forward")(np.array([[-1000, 0, 1000]], dtype))
    assert_close(y, [[0, 0.5, 1]], dtype)
    assert_close(op(backend, "sigmoid_backward")(np.ones_like(y), ctx), [[0, 0.25, 0]], dtype)
    y, ctx = op(backend, "tanh_forward")(np.array([[0, math.log(3)]], dtype))
    # tanh(log 3) = (9 - 1) / (9 + 1) = 0.8, derivative 1 - 0.64 = 0.36
    assert_close(y, [[0, 0.8]], dtype)
    assert_close(op(backend, "tanh_backward")(np.ones_like(y), ctx), [[1, 0.36]], dtype)


def test_softmax_by_hand(backend, dtype):
    # Huge logits are fine (the row max is subtracted first).
    x = np.array([[math.log(1), math.log(2), math.log(1)], [1000, 1000, 1000]], dtype)
    y, ctx = op(backend, "softmax_forward")(x)
    assert_close(y, [[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]], dtype)
    # y * (dy - sum(dy * y)) with dy = e_0: row 0 -> [.25 * .75, -.5 * .25, -.25 * .25]
    dy = np.array([[1, 0, 0], [0, 0, 0]], dtype)
    dx = op(backend, "softmax_backward")(dy, ctx)
    assert_close(dx, [[0.1875, -0.125, -0.0625], [0, 0, 0]], dtype)


# ---------------------------------------------------------------------------- losses


def test_softmax_cross_entropy_by_hand(backend, dtype):
    logits = np.array([np.log([1, 2, 1]), [0, 0, 0]], dtype)
    targets = np.array([[0, 1, 0], [0.5, 0.5, 0]], dtype)
    loss, d = op(backend, "softmax_cross_entropy")(logits, targets)
    # row 0: -log(1/2); row 1: -(0.5 log 1/3 + 0.5 log 1/3) = log 3; mean of the two.
    assert_close(loss, (math.log(2) + math.log(3)) / 2, dtype)
    third = 1 / 3
    assert_close(
        d, np.array([[0.25, -0.5, 0.25], [third - 0.5, third - 0.5, third]]) / 2, dtype
    )


def test_softmax_cross_entropy_scales_by_target_sum(backend, dtype):
    # Targets summing to 2: loss -2 log(1/3), gradient softmax * 2 - t.
    logits = np.zeros((1, 3), dtype)
    loss, d = op(backend, "softmax_cross_entropy")(logits, np.array([[2, 0, 0]], dtype))
    assert_close(loss, 2 * math.log(3), dtype)
    assert_close(d, [[2 / 3 - 2, 2 / 3, 2 / 3]], dtype)


def test_sparse_softmax_cross_entropy_by_hand(backend, dtype):
    logits = np.array([np.log([1, 2, 1]), [0, 0, 0]], dtype)
    loss, d = op(backend, "sparse_softmax_cross_entropy")(logits, np.array([1, 0]))
    assert_close(loss, (math.log(2) + math.log(3)) / 2, dtype)
    third = 1 / 3
    assert_close(d, np.array([[0.25, -0.5, 0.25], [third - 1, third, third]]) / 2, dtype)


def test_sparse_softmax_cross_entropy_rejects_bad_labels(backend):
    f = op(backend, "sparse_softmax_cross_entropy")
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="labels"):
        f(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        f(logits, np.array([0, -1]))


def test_sigmoid_cross_entropy_by_hand_and_stable(backend, dtype):
    logits = np.array([[0, 1000], [-1000, 0]], dtype)
    targets = np.array([[1, 1], [1, 0]], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, d = op(backend, "sigmoid_cross_entropy")(logits, targets)
    # elements: log 2, 0, 1000, log 2 ; mean over all 4
    assert_close(loss, (1000 + 2 * math.log(2)) / 4, dtype)
    assert_close(d, np.array([[-0.5, 0], [-1, 0.5]]) / 4, dtype)


# ---------------------------------------------------------------------------- errors


def test_conv_rejects_channel_mismatch(backend):
    f = op(backend, "conv2d_forward")
    with pytest.raises(ValueError, match="channels"):
        f(np.zeros((1, 4, 4, 3)), np.zeros((3, 3, 2, 1)), None, (1, 1), ((0, 0), (0, 0)))
