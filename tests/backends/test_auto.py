"""The 'auto' backend: which row of its table each kind of conv takes, and that it only
ever routes to backends that load here."""
import numpy as np
import pytest

from fastcnn import backends
from fastcnn.backends import auto

NO_PAD = ((0, 0), (0, 0))


@pytest.mark.parametrize("x_shape, w_shape, pad, kind", [
    ((64, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)), "few_channels"),   # LeNet conv1
    ((1, 28, 28, 1), (3, 3, 1, 8), NO_PAD, "few_channels"),              # from-scratch conv
    ((32, 150, 150, 3), (3, 3, 3, 32), NO_PAD, "deep"),                  # cats-vs-dogs conv1
    ((64, 28, 28, 1), (3, 3, 1, 64), NO_PAD, "deep"),                    # shape A: 389k
    ((64, 14, 14, 6), (5, 5, 6, 16), NO_PAD, "small"),                   # LeNet conv2: 240k
    ((1, 4, 4, 16), (3, 3, 16, 32), ((1, 1), (1, 1)), "small"),         # digits conv2: 74k
    ((64, 13, 13, 64), (3, 3, 64, 64), NO_PAD, "deep"),                  # Fashion conv2: 4.4M
    ((64, 28, 28, 8), (3, 3, 8, 8), ((1, 1), (1, 1)), "deep"),          # 451k
])
def test_conv_kind(x_shape, w_shape, pad, kind):
    assert auto.conv_kind(x_shape, w_shape, (1, 1), pad) == kind


def test_the_small_threshold_counts_per_image_forward_work():
    # The batch does not matter: the rule is about the shape of one image's work.
    assert auto.conv_kind((1, 14, 14, 6), (5, 5, 6, 16), (1, 1), NO_PAD) == \
        auto.conv_kind((512, 14, 14, 6), (5, 5, 6, 16), (1, 1), NO_PAD) == "small"
    # Stride shrinks the output, so the work: 13x13 -> 7x7 outputs.
    assert auto.conv_kind((8, 13, 13, 64), (3, 3, 64, 64), (2, 2), NO_PAD) == "deep"
    assert auto.conv_kind((8, 13, 13, 8), (3, 3, 8, 16), (2, 2), NO_PAD) == "small"


def test_every_row_resolves_to_an_available_backend_and_never_to_cuda():
    names = backends.available()
    for key, name in auto.choices().items():
        assert name in names and name not in ("cuda", "auto", "reference"), (key, name)


def test_a_small_conv_runs_on_its_rows_backend_and_matches_the_reference(rng):
    x = rng.standard_normal((2, 6, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
    y, (backend, _) = auto.conv2d_forward(x, w, None, (1, 1), NO_PAD)
    assert backend is auto._pick("conv2d", "small")
    ref, _ = backends.get("reference").conv2d_forward(x, w, None, (1, 1), NO_PAD)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
