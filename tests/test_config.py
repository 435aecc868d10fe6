"""fastcnn.set_floatx and the layers' dtype argument: only the supported dtypes pass."""
import fastcnn  # noqa: I001  (fastcnn before NumPy)
import numpy as np
import pytest

from fastcnn.layers import Conv2D, Dense


@pytest.fixture(autouse=True)
def _restore_floatx():
    previous = fastcnn.floatx()
    yield
    fastcnn.set_floatx(previous)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.dtype("float64")])
def test_set_floatx_accepts_the_supported_dtypes(dtype):
    fastcnn.set_floatx(dtype)
    assert fastcnn.floatx() == np.dtype(dtype).name


# NumPy reads None as float64, and an unknown string used to fall back to that None.
@pytest.mark.parametrize("dtype", ["no_such_dtype", "mixed_float16", "float16", "int32",
                                   None, "", 3])
def test_set_floatx_refuses_anything_else(dtype):
    fastcnn.set_floatx("float32")
    with pytest.raises(ValueError) as info:
        fastcnn.set_floatx(dtype)
    message = str(info.value)
    assert repr(dtype) in message and "'float32', 'float64'" in message, message
    assert fastcnn.floatx() == "float32"  # unchanged


@pytest.mark.parametrize("dtype", ["no_such_dtype", "mixed_float16", "float16", "bfloat16"])
@pytest.mark.parametrize("layer", [lambda d: Conv2D(2, 3, dtype=d), lambda d: Dense(2, dtype=d)],
                         ids=["Conv2D", "Dense"])
def test_layers_refuse_unknown_dtype_strings(layer, dtype):
    with pytest.raises(ValueError) as info:
        layer(dtype)
    message = str(info.value)
    assert "dtype" in message and repr(dtype) in message and "'float32', 'float64'" in message
    if dtype.startswith("mixed_"):
        assert "mixed-precision" in message


def test_layers_accept_supported_dtypes_and_none():
    assert Conv2D(2, 3, dtype="float64").dtype in ("float64", np.dtype("float64"))
    Dense(2, dtype=None)
