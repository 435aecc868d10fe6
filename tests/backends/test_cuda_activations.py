"""The activations on the ``cuda`` backend (the CUDA simulator in CI: tiny shapes): Keras 3's
numbers (tests/fixtures/keras/make_activations.py), gradient checks of every kernel pair in
float64, device arrays in -> device arrays out, and the activation layers on device arrays.
"""
from __future__ import annotations

import json
import os

import fastcnn
import numpy as np
import pytest

from fastcnn import activations, backends, gradcheck
from fastcnn.layers import ELU, LeakyReLU, PReLU, ReLU, Softmax

pytestmark = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = np.load(os.path.join(HERE, "fixtures", "keras", "activations.npz"))
with open(os.path.join(HERE, "fixtures", "keras", "activations.json")) as _f:
    META = json.load(_f)
NAMES = [n for n in activations.KNOWN if n != "linear"]
KINKS = {"relu6": (0, 6), "hard_sigmoid": (-3, 3), "hard_silu": (-3, 3)}


@pytest.fixture(scope="module")
def cu():
    return backends.get("cuda")


@pytest.mark.parametrize("case", sorted(META["functions"]))
def test_values_match_keras(case):
    spec = META["functions"][case]
    fn = getattr(activations, spec["name"])
    with fastcnn.use_backend("cuda"):
        y32 = fn(FIXTURES["x32"], **spec["kwargs"])
        y64 = fn(FIXTURES["x64"], **spec["kwargs"])
    assert isinstance(y32, np.ndarray) and y32.dtype == np.float32
    np.testing.assert_allclose(y32, FIXTURES[f"{case}__y32"], rtol=2e-6, atol=1e-6,
                               err_msg=case)
    # TensorFlow's float64 leaky slope is a float32 number and its float64 erfc/tanh are
    # accurate to ~1e-7 (tests/test_activations.py): there the tolerance is theirs.
    loose = case.startswith(("leaky_relu", "gelu"))
    np.testing.assert_allclose(y64, FIXTURES[f"{case}__y64"], rtol=1e-6 if loose else 1e-12,
                               atol=1e-12 if loose else 1e-15, err_msg=case)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(cu, rng, name):
    x = 3.0 * rng.standard_normal((2, 4))
    for k in KINKS.get(name, (0,)):
        x[np.abs(x - k) < 0.05] += 0.1
    result = gradcheck.check_backward(
        lambda a: activations.forward(cu, name, a),
        lambda dy, ctx: activations.backward(cu, name, dy, ctx), [x])
    assert result.mode == "full"


@pytest.mark.parametrize("params", [(0.3, None, 0.0), (0.2, 4.0, 1.0), (0.0, None, -1.5)],
                         ids=str)
def test_gradcheck_relu_general(cu, rng, params):
    x = 3.0 * rng.standard_normal((2, 4))
    for k in (0.0, params[1] or 0.0, params[2]):
        x[np.abs(x - k) < 0.05] += 0.1
    gradcheck.check_backward(lambda a: cu.relu_general_forward(a, *params),
                             cu.relu_general_backward, [x])


@pytest.mark.parametrize("x_shape,alpha_shape", [((2, 3, 2), (3, 2)), ((2, 3, 2), (1, 2)),
                                                 ((3, 2), (2,))], ids=str)
def test_gradcheck_prelu(cu, rng, x_shape, alpha_shape):
    x, alpha = gradcheck.off_kinks(x_shape, rng), rng.standard_normal(alpha_shape)
    gradcheck.check_backward(cu.prelu_forward, cu.prelu_backward, [x, alpha])
    y, ctx = cu.prelu_forward(x, alpha)
    y_ref, ctx_ref = backends.get("reference").prelu_forward(x, alpha)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    dy = rng.standard_normal(x_shape)
    for got, want in zip(cu.prelu_backward(dy, ctx),
                         backends.get("reference").prelu_backward(dy, ctx_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_device_arrays_stay_on_the_device(cu, rng):
    from numba import cuda as numba_cuda

    x = rng.standard_normal((2, 3)).astype(np.float32)
    xd = numba_cuda.to_device(x)
    for name in ("leaky_relu", "gelu", "log_softmax", "hard_silu"):
        y, ctx = activations.forward(cu, name, xd)
        assert cu.module.is_device_array(y), name
        dx = activations.backward(cu, name, numba_cuda.to_device(np.ones_like(x)), ctx)
        assert cu.module.is_device_array(dx), name
        y_host, _ = activations.forward(backends.get("reference"), name, x)
        np.testing.assert_allclose(y.copy_to_host(), y_host, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["ReLU_all", "LeakyReLU", "ELU_alpha", "Softmax",
                                  "PReLU_shared"])
def test_layers_on_cuda_match_keras(case):
    spec = META["layers"][case]
    layer = {"ReLU": ReLU, "LeakyReLU": LeakyReLU, "ELU": ELU, "Softmax": Softmax,
             "PReLU": PReLU}[spec["class"]](**spec["kwargs"])
    x = FIXTURES["lx32"][:1, :2]  # a corner of the fixture input: few simulated threads
    layer.build((None,) + x.shape[1:], "float32")
    if spec["class"] == "PReLU":
        layer.set_weights([FIXTURES[f"{case}__alpha"]])
    assert layer.runs_on_device
    with fastcnn.use_backend("cuda"):
        y, ctx = layer.forward(x, training=True)
        dx, grads = layer.backward(np.ones_like(y), ctx)
    np.testing.assert_allclose(y, FIXTURES[f"{case}__y32"][:1, :2], rtol=2e-6, atol=1e-6)
    assert dx.shape == x.shape
    assert [g.shape for g in grads] == [w.shape for w in layer.trainable_weights]
