"""The shared argument checks of the CPU backends name what went wrong."""
import numpy as np
import pytest

from fastcnn import backends


def test_a_cuda_device_array_handed_to_a_cpu_op_is_named_as_such():
    if "cuda" not in backends.available():
        pytest.skip(f"cuda unavailable here: {backends.unavailable().get('cuda')}")
    from numba import cuda
    x = cuda.to_device(np.zeros((1, 4, 4, 1), np.float32))
    w = np.zeros((3, 3, 1, 2), np.float32)
    for name in ("im2col", "numba", "cython"):
        if name not in backends.available():
            continue
        with pytest.raises(TypeError, match=r"x must be .* got a CUDA device array .*"
                                            r"copy_to_host\(\)"):
            backends.get(name).conv2d_forward(x, w, None, (1, 1), ((0, 0), (0, 0)))


def test_a_list_is_named_by_its_type():
    with pytest.raises(TypeError, match="x must be a float32 or float64 numpy array, got list"):
        backends.get("im2col").relu_forward([1.0, 2.0])
