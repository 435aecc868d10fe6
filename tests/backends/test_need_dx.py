"""``conv2d_backward(dy, ctx, need_dx=False)``: a model's first layer skips dx, nothing else changes."""
import numpy as np
import pytest

from fastcnn import backends, shapes

CASES = [
    # (N, H, W, C, F, kernel, stride, padding): a 1-channel first layer (numba's
    # short-patch dW path), a deep layer, and a strided 'same' one.
    (3, 9, 7, 1, 16, (3, 3), (1, 1), "valid"),
    (2, 6, 5, 6, 4, (3, 2), (1, 1), "same"),
    (2, 8, 9, 3, 5, (5, 5), (2, 3), "same"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[3]}to{c[4]}-k{c[5]}-s{c[6]}-{c[7]}")
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
def test_need_dx_false_returns_no_dx_and_the_same_weight_gradients(backend_name, case, use_bias):
    n, h, w, c, f, kernel, stride, padding = case
    be = backends.get(backend_name)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = rng.standard_normal((*kernel, c, f)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32) if use_bias else None
    (ho, wo), pad = shapes.window_output_shape((h, w), kernel, stride, padding)
    dy = rng.standard_normal((n, ho, wo, f)).astype(np.float32)

    _, ctx = be.conv2d_forward(x, k, b, stride, pad)
    dx, dw, db = be.conv2d_backward(dy, ctx)
    _, ctx = be.conv2d_forward(x, k, b, stride, pad)
    no_dx, dw2, db2 = be.conv2d_backward(dy, ctx, need_dx=False)

    assert dx is not None and no_dx is None
    np.testing.assert_array_equal(dw2, dw)
    if use_bias:
        np.testing.assert_array_equal(db2, db)
    else:
        assert db2 is None
