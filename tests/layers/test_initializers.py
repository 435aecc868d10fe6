"""Initializers: Keras's names, fans and distributions."""
import numpy as np
import pytest

import fastcnn
from fastcnn import initializers


@pytest.mark.parametrize("shape,fans", [
    ((3, 5), (3, 5)), ((3, 2, 4, 8), (24, 48)), ((7,), (7, 7)),
])
def test_fans_follow_keras(shape, fans):
    assert initializers.compute_fans(shape) == fans


@pytest.mark.parametrize("name,scale,mode,uniform", [
    ("glorot_uniform", 1.0, "avg", True), ("glorot_normal", 1.0, "avg", False),
    ("he_uniform", 2.0, "in", True), ("he_normal", 2.0, "in", False),
])
def test_variance_and_support(name, scale, mode, uniform):
    fastcnn.utils.set_random_seed(0)
    shape = (5, 5, 20, 40)
    fan_in, fan_out = 5 * 5 * 20, 5 * 5 * 40
    fan = fan_in if mode == "in" else (fan_in + fan_out) / 2
    w = initializers.get(name)(shape, "float32")
    assert w.dtype == np.float32 and w.shape == shape
    target = scale / fan
    assert abs(w.var() / target - 1) < 0.05
    std = np.sqrt(target)
    if uniform:
        assert np.abs(w).max() <= np.sqrt(3) * std * (1 + 1e-6)
    else:  # truncated at two (rescaled) standard deviations
        assert np.abs(w).max() <= 2 * std / 0.87962566103423978 * (1 + 1e-6)


def test_zeros_ones_and_seeded_initializers():
    np.testing.assert_array_equal(initializers.get("zeros")((2, 3)), 0)
    np.testing.assert_array_equal(initializers.get("Ones")((2, 3), "float64"), 1)
    a = initializers.GlorotUniform(seed=5)((4, 4))
    b = initializers.GlorotUniform(seed=5)((4, 4))
    np.testing.assert_array_equal(a, b)


def test_unknown_initializer_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"kernel_initializer must be one of \['glorot_uniform'"):
        fastcnn.layers.Conv2D(2, 3, kernel_initializer="orthogonall")
