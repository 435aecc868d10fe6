"""Merge layers (fastcnn.layers.merging): Add, Subtract, Multiply, Average, Maximum, Minimum,
Concatenate on the stateless contract.

Shapes and errors through ``_build`` (the base class's ``build`` for a list of shapes and
the call path ``Add()([a, b])`` are the lead's work on the base class), values against
NumPy and against Keras 3 fixtures (tests/fixtures/keras/make_merging.py), gradient checks
(float64, random dy) including broadcasting, the first-holder tie rule of Maximum/Minimum
against TensorFlow's gradients, need_dx, aliasing, configs, and the device path of the
element-wise merges in the CUDA simulator.
"""
import json
import os

import fastcnn  # noqa: I001  (before NumPy)
import numpy as np
import pytest

from fastcnn import _device, backends, gradcheck, layers
from fastcnn.layers import (Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract,
                            merging)

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "keras")
F64 = np.dtype("float64")
ELEMENTWISE = [Add, Subtract, Multiply, Average, Maximum, Minimum]
ALL = ELEMENTWISE + [Concatenate]

REFERENCE = {   # NumPy's answer for inputs of one rank
    Add: lambda xs: sum(xs[1:], xs[0]),
    Subtract: lambda xs: xs[0] - xs[1],
    Multiply: lambda xs: np.prod(np.broadcast_arrays(*xs), axis=0),
    Average: lambda xs: sum(xs[1:], xs[0]) / len(xs),
    Maximum: lambda xs: np.max(np.broadcast_arrays(*xs), axis=0),
    Minimum: lambda xs: np.min(np.broadcast_arrays(*xs), axis=0),
}


def op(layer):
    """The layer as a gradcheck op over its inputs."""
    def forward(*xs):
        return layer.forward(list(xs), training=True)

    def backward(dy, ctx):
        dxs, grads = layer.backward(dy, ctx)
        assert grads == ()
        return dxs
    return forward, backward


def distinct(shapes, rng):
    """Inputs of ``shapes`` whose values are all distinct and far from each other
    (off the kinks of Maximum/Minimum: no eps perturbation can flip a comparison)."""
    sizes = [int(np.prod(s)) for s in shapes]
    flat = gradcheck.off_kinks(sum(sizes), rng)
    return [a.reshape(s) for a, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes)]


def build(layer, shapes):
    return layer._build([tuple(s) for s in shapes], F64)


def shape_error(layer, shapes):
    """The ValueError's message for ``shapes`` (compute_output_shape checks as build does,
    and names the layer as Layer.build does)."""
    with pytest.raises(ValueError) as info:
        layer.compute_output_shape(shapes)
    message = str(info.value)
    assert message.startswith(f"layer {layer.name!r} ({type(layer).__name__}): ")
    return message


# ------------------------------------------------------------------------ shapes
def test_keras_output_shapes_and_errors():
    with open(os.path.join(FIXTURES, "merging_shapes.json")) as f:
        cases = json.load(f)["cases"]
    assert len(cases) >= 10
    for case in cases:
        layer = getattr(layers, case["layer"])(**case["kwargs"])
        shapes = [(None,) + tuple(s) for s in case["shapes"]]
        if case["output"] == "error":
            with pytest.raises(ValueError):
                build(layer, shapes)
        else:
            assert build(layer, shapes) == tuple(case["output"]), case


@pytest.mark.parametrize("cls", ELEMENTWISE)
def test_elementwise_shapes(cls):
    extra = [] if cls is Subtract else [(None, 4, 3)]
    assert build(cls(), [(None, 4, 3), (None, 4, 3)] + extra) == (None, 4, 3)
    assert build(cls(), [(None, 4, 1), (None, 1, 3)]) == (None, 4, 3)
    assert build(cls(), [(None, 2, 4, 3), (None, 3)]) == (None, 2, 4, 3)
    assert build(cls(), [(None, None, 3), (None, 1, 3)]) == (None, None, 3)
    assert build(cls(), [(8, 3), (None, 3)]) == (8, 3)    # the known batch size
    assert cls().compute_output_shape([(None, 5), (None, 1)]) == (None, 5)


def test_concatenate_shapes():
    assert build(Concatenate(), [(None, 4, 3), (None, 4, 5), (None, 4, 1)]) == (None, 4, 9)
    assert build(Concatenate(axis=1), [(None, 2, 3), (None, 4, 3)]) == (None, 6, 3)
    assert build(Concatenate(axis=-2), [(None, 2, 3), (None, 4, 3)]) == (None, 6, 3)
    assert build(Concatenate(axis=1), [(None, None, 3), (None, 4, 3)]) == (None, None, 3)
    # A None dimension takes the known one of another input.
    assert build(Concatenate(), [(None, None, 3), (None, 4, 3)]) == (None, 4, 6)
    assert Concatenate().compute_output_shape([(None, 2), (None, 3)]) == (None, 5)


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize("cls", ALL)
def test_one_input_is_refused(cls):
    message = shape_error(cls(), [(None, 3)])
    assert "exactly 2 inputs" in message if cls is Subtract else \
        f"A merge layer (`{cls.__name__}`) should be called on a list of at least 2 inputs. " \
        f"Received 1: input_shape=[(None, 3)]" in message


@pytest.mark.parametrize("cls", ALL)
def test_not_a_list_of_shapes(cls):
    with pytest.raises(ValueError, match=r"list of inputs.*not a list of shapes"):
        cls()._build((None, 3), F64)
    with pytest.raises(ValueError, match=r"positive ints or None"):
        build(cls(), [(None, 3), (None, 0)])
    with pytest.raises(ValueError, match=r"positive ints or None"):
        build(cls(), [(None, 3), (None, "3")])


def test_build_names_the_layer_once():
    layer = Add(name="residual")
    with pytest.raises(ValueError) as info:
        layer.build([(None, 4, 3), (None, 4, 2)])
    message = str(info.value)
    assert message.startswith("layer 'residual' (Add): Inputs have incompatible shapes")
    assert message.count("Add") == 1 and "[(None, 4, 3), (None, 4, 2)]" in message
    assert not layer.built


def test_subtract_needs_exactly_two():
    with pytest.raises(ValueError, match=r"`Subtract` layer should be called on exactly 2 "
                                         r"inputs. Received 3: input_shape=\[\(None, 3\), "
                                         r"\(None, 3\), \(None, 3\)\]"):
        build(Subtract(), [(None, 3)] * 3)


@pytest.mark.parametrize("cls", ELEMENTWISE)
def test_mismatched_shapes_name_the_layer_and_every_shape(cls):
    shapes = [(None, 4, 3), (None, 4, 2)] if cls is Subtract else \
        [(None, 4, 3), (None, 4, 3), (None, 4, 2)]
    message = shape_error(cls(), shapes)
    assert "incompatible shapes" in message
    assert "(4, 3) and (4, 2)" in message
    assert "[" + ", ".join(f"(None, 4, {s[-1]})" for s in shapes) + "]" in message


@pytest.mark.parametrize("cls", ALL)
def test_different_known_batch_sizes(cls):
    assert "Cannot merge tensors with different batch sizes. Received tensors with shapes " \
        "[(4, 3), (8, 3)]" in shape_error(cls(), [(4, 3), (8, 3)])


def test_concatenate_errors():
    with pytest.raises(ValueError, match=r"`Concatenate` layer requires inputs with matching "
                                         r"shapes except for the concatenation axis \(axis=-1\)"
                                         r": dimension 1 differs \(3, 4, 3\).*input_shape=\["
                                         r"\(None, 3, 2\), \(None, 4, 5\), \(None, 3, 1\)\]"):
        build(Concatenate(), [(None, 3, 2), (None, 4, 5), (None, 3, 1)])
    with pytest.raises(ValueError, match=r"different ranks.*\[\(None, 3\), \(None, 3, 1\)\]"):
        build(Concatenate(), [(None, 3), (None, 3, 1)])
    with pytest.raises(ValueError, match=r"axis=3 is out of range for inputs of rank 3"):
        build(Concatenate(axis=3), [(None, 3, 2), (None, 3, 2)])
    with pytest.raises(ValueError, match=r"axis must be an int, got 'channels'"):
        Concatenate(axis="channels")


# ------------------------------------------------------------------------ values
@pytest.mark.parametrize("cls", ELEMENTWISE)
@pytest.mark.parametrize("shapes", [[(3, 4, 5)] * 3, [(3, 4, 1), (3, 1, 5), (3, 4, 5)],
                                    [(1, 4, 5), (3, 4, 5)]],
                         ids=["equal", "broadcast", "batch1"])
def test_values_against_numpy(cls, shapes, rng):
    shapes = shapes[:2] if cls is Subtract else shapes
    xs = [rng.standard_normal(s) for s in shapes]
    y, _ = cls().forward(xs)
    np.testing.assert_allclose(y, REFERENCE[cls](xs), rtol=1e-14, atol=1e-15)


def test_lower_rank_inputs_align_on_the_last_dimension(rng):
    # Keras inserts the missing dimensions right after the batch: (N, 5) acts as (N, 1, 5).
    a, b = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 5))
    y, ctx = Add().forward([a, b])
    np.testing.assert_array_equal(y, a + b[:, None, :])
    dy = rng.standard_normal(y.shape)
    (da, db), _ = Add().backward(dy, ctx)
    assert da.shape == a.shape and db.shape == b.shape
    np.testing.assert_allclose(db, dy.sum(axis=1))


def test_concatenate_values(rng):
    xs = [rng.standard_normal((2, 3, k)) for k in (2, 4, 1)]
    y, ctx = Concatenate().forward(xs)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=-1))
    dy = rng.standard_normal(y.shape)
    dxs, grads = Concatenate().backward(dy, ctx)
    assert grads == ()
    for dx, part in zip(dxs, np.split(dy, [2, 6], axis=-1)):
        np.testing.assert_array_equal(dx, part)
        assert dx.flags.c_contiguous and not np.shares_memory(dx, dy)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls", ALL)
def test_output_keeps_the_dtype(cls, dtype, rng):
    xs = [rng.standard_normal((2, 3)).astype(dtype) for _ in range(2)]
    y, ctx = cls().forward(xs)
    assert y.dtype == dtype
    dxs, _ = cls().backward(np.ones_like(y), ctx)
    assert all(dx.dtype == dtype for dx in dxs)


def keras_cases():
    path = os.path.join(FIXTURES, "merging.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    names = sorted({k.split("/")[0] for k in arrays})
    return arrays, names


KERAS_ARRAYS, KERAS_NAMES = keras_cases()
KERAS_LAYERS = {"add": Add, "subtract": Subtract, "multiply": Multiply, "average": Average,
                "maximum": Maximum, "minimum": Minimum, "concatenate": Concatenate}


@pytest.mark.parametrize("case", KERAS_NAMES)
def test_against_keras(case):
    get = KERAS_ARRAYS.get
    cls = KERAS_LAYERS[case.split("_")[0].rstrip("0123456789")]
    layer = cls(axis=1) if case == "concatenate_axis1" else cls()
    xs = [get(f"{case}/x{i}") for i in range(4) if get(f"{case}/x{i}") is not None]
    assert build(layer, [(None,) + x.shape[1:] for x in xs]) == (None,) + \
        get(f"{case}/y").shape[1:]
    y, ctx = layer.forward(xs)
    dxs, _ = layer.backward(get(f"{case}/dy"), ctx)
    # float32: the same operations in the same order as TensorFlow; only the reductions of
    # broadcast gradients may sum in another order.
    np.testing.assert_allclose(y, get(f"{case}/y"), rtol=1e-6, atol=1e-7)
    assert len(dxs) == len(xs)
    for i, dx in enumerate(dxs):
        assert dx.shape == xs[i].shape and dx.dtype == np.float32
        np.testing.assert_allclose(dx, get(f"{case}/dx{i}"), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{case}: gradient of input {i}")
    if "ties" in case:   # the fixture really has ties: the tie rule is what is compared
        stacked = np.broadcast_arrays(*[x.reshape(x.shape[:1] + (1,) * (y.ndim - x.ndim)
                                                  + x.shape[1:]) for x in xs])
        assert ((np.stack(stacked) == y).sum(axis=0) > 1).sum() >= 4


# ------------------------------------------------------------------- gradients
GRAD_SHAPES = {
    "equal3": [(2, 3, 4)] * 3,
    "broadcast": [(2, 3, 1), (2, 1, 4), (2, 3, 4)],
    "lower_rank": [(2, 3, 4), (2, 4)],
    "batch1": [(1, 3, 4), (2, 3, 1)],
}


@pytest.mark.parametrize("shapes", GRAD_SHAPES.values(), ids=GRAD_SHAPES.keys())
@pytest.mark.parametrize("cls", ELEMENTWISE)
def test_gradcheck(cls, shapes, rng):
    shapes = shapes[:2] if cls is Subtract else shapes
    xs = distinct(shapes, rng)
    forward, backward = op(cls())
    result = gradcheck.check_backward(forward, backward, xs, seed=3)
    assert result.mode == "full" and set(result.max_rel_error) == set(range(len(xs)))


@pytest.mark.parametrize("cls", [Add, Multiply, Average, Maximum, Minimum])
def test_gradcheck_many_inputs(cls, rng):
    xs = distinct([(2, 3)] * 5, rng)
    gradcheck.check_backward(*op(cls()), xs, seed=4)


def test_multiply_gradient_with_exact_zeros(rng):
    xs = [rng.standard_normal((2, 5)) for _ in range(3)]
    xs[0][0, :2] = 0.0
    xs[1][0, 1:3] = 0.0    # element (0, 1) is zero in two inputs
    gradcheck.check_backward(*op(Multiply()), xs, seed=5)


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_gradcheck_concatenate(axis, rng):
    shapes = [(2, 3, 2), (2, 3, 4)] if axis != 1 else [(2, 1, 4), (2, 3, 4)]
    if axis == 2:
        shapes.append((2, 3, 1))
    xs = [rng.standard_normal(s) for s in shapes]
    gradcheck.check_backward(*op(Concatenate(axis=axis)), xs, seed=6)


# ------------------------------------------------------------------------- ties
@pytest.mark.parametrize("cls", [Maximum, Minimum])
def test_ties_go_to_the_first_input_holding_the_extreme(cls):
    sign = 1.0 if cls is Maximum else -1.0
    a = sign * np.array([[1.0, 2.0, 3.0, 0.0]])
    b = sign * np.array([[1.0, 5.0, 3.0, 0.0]])
    c = sign * np.array([[1.0, 5.0, 0.0, 0.0]])
    y, ctx = cls().forward([a, b, c])
    np.testing.assert_array_equal(y, sign * np.array([[1.0, 5.0, 3.0, 0.0]]))
    dy = np.array([[10.0, 20.0, 30.0, 40.0]])
    (da, db, dc), _ = cls().backward(dy, ctx)
    # TensorFlow, Keras's chain of tf.maximum/minimum: [1,0,1,1] [0,1,0,0] [0,0,0,0].
    np.testing.assert_array_equal(da, [[10.0, 0.0, 30.0, 40.0]])
    np.testing.assert_array_equal(db, [[0.0, 20.0, 0.0, 0.0]])
    np.testing.assert_array_equal(dc, [[0.0, 0.0, 0.0, 0.0]])


def test_tie_with_a_broadcast_input():
    # Each of b's elements ties with a and receives nothing; c's single element wins once.
    a = np.array([[[2.0], [1.0]]])            # (1, 2, 1)
    b = np.array([[[2.0, 2.0, 2.0]]])         # (1, 1, 3)
    c = np.array([[7.0, 0.0, 0.0]])           # (1, 3): as (1, 1, 3)
    y, ctx = Maximum().forward([a, b, c])
    np.testing.assert_array_equal(y, [[[7.0, 2.0, 2.0], [7.0, 2.0, 2.0]]])
    (da, db, dc), _ = Maximum().backward(np.ones_like(y), ctx)
    np.testing.assert_array_equal(da, [[[2.0], [0.0]]])
    np.testing.assert_array_equal(db, [[[0.0, 1.0, 1.0]]])
    np.testing.assert_array_equal(dc, [[2.0, 0.0, 0.0]])


# ---------------------------------------------------------- the contract itself
@pytest.mark.parametrize("cls", ALL)
def test_need_dx(cls, rng):
    xs = distinct([(2, 3), (2, 3)], rng)
    layer = cls()
    y, ctx = layer.forward(xs)
    dy = rng.standard_normal(y.shape)
    assert layer.backward(dy, ctx, need_dx=False) == ([None, None], ())
    full, _ = layer.backward(dy, ctx)
    first_only, _ = layer.backward(dy, ctx, need_dx=[True, False])
    second_only, _ = layer.backward(dy, ctx, need_dx=[False, True])
    assert first_only[1] is None and second_only[0] is None
    np.testing.assert_array_equal(first_only[0], full[0])
    np.testing.assert_array_equal(second_only[1], full[1])
    with pytest.raises(ValueError, match="need_dx lists 3 flags for 2 inputs"):
        layer.backward(dy, ctx, need_dx=[True, True, True])


@pytest.mark.parametrize("cls", ALL)
def test_nothing_is_kept_on_the_layer_and_dy_is_not_written(cls, rng):
    layer = cls()
    build(layer, [(None, 3), (None, 3)])
    before = dict(vars(layer))
    xs = distinct([(2, 3), (2, 3)], rng)
    y, ctx = layer.forward(xs, training=True)
    dy = rng.standard_normal(y.shape)
    dy_copy = dy.copy()
    dxs, _ = layer.backward(dy, ctx)
    assert vars(layer) == before and layer.weights == []
    np.testing.assert_array_equal(dy, dy_copy)
    # Only the identity may hand back dy itself: Add (both inputs), Subtract (the first).
    identity = {Add: [0, 1], Subtract: [0]}.get(cls, [])
    for i, dx in enumerate(dxs):
        if i in identity:
            assert dx is dy
        else:
            assert not np.shares_memory(dx, dy), f"{cls.__name__}: dx{i} aliases dy"
    if cls is Average:
        assert dxs[0] is dxs[1]    # documented: one array for every input


def test_broadcast_add_gradient_is_a_new_array(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 1))
    y, ctx = Add().forward([a, b])
    dy = rng.standard_normal(y.shape)
    (da, db), _ = Add().backward(dy, ctx)
    assert da is dy and db.shape == (2, 1) and not np.shares_memory(db, dy)


def test_forward_does_not_write_into_inputs(rng):
    for cls in ALL:
        xs = [rng.standard_normal((2, 3)) for _ in range(2 if cls is Subtract else 3)]
        copies = [x.copy() for x in xs]
        cls().forward(xs)
        for x, c in zip(xs, copies):
            np.testing.assert_array_equal(x, c)


# ----------------------------------------------------------------------- config
@pytest.mark.parametrize("cls", ALL)
def test_config_round_trip(cls):
    layer = cls(name=f"my_{cls.__name__.lower()}", axis=1) if cls is Concatenate else \
        cls(name=f"my_{cls.__name__.lower()}")
    config = layer.get_config()
    assert config["name"] == layer.name and cls.multiple_inputs is True
    if cls is Concatenate:
        assert config["axis"] == 1 and Concatenate().get_config()["axis"] == -1
    else:
        assert set(config) == {"name", "trainable", "dtype"}
    clone = cls.from_config(json.loads(json.dumps(config)))
    assert type(clone) is cls and clone.get_config() == config


def test_exported_and_registered():
    from fastcnn import saving
    registry = saving.layer_registry()
    for cls in ALL:
        assert getattr(layers, cls.__name__) is cls and cls.__name__ in layers.__all__
        assert registry[cls.__name__] is cls
    assert "_Merge" not in registry and "_ElementwiseMerge" not in registry


@pytest.mark.parametrize("function, cls", [
    ("add", Add), ("subtract", Subtract), ("multiply", Multiply), ("average", Average),
    ("maximum", Maximum), ("minimum", Minimum), ("concatenate", Concatenate)])
def test_functional_forms_call_the_layer_on_the_list(function, cls, monkeypatch):
    # The call itself (Layer.__call__ on a list) is the base class's; only the wiring here.
    calls = []
    monkeypatch.setattr(cls, "__call__", lambda self, inputs: calls.append((self, inputs)))
    inputs = [object(), object()]
    kwargs = {"axis": 1} if cls is Concatenate else {}
    getattr(layers, function)(inputs, name=f"f_{function}", **kwargs)
    ((layer, got),) = calls
    assert type(layer) is cls and got is inputs and layer.name == f"f_{function}"
    if cls is Concatenate:
        assert layer.axis == 1
    assert function in layers.__all__


# ----------------------------------------------------------------------- device
def test_runs_on_device_only_without_broadcasting():
    for cls in (Add, Subtract, Multiply, Average):
        layer = cls()
        assert layer.runs_on_device is False        # unknown until built
        build(layer, [(None, 4, 3), (None, 4, 3)])
        assert layer.runs_on_device is True
        for shapes in ([(None, 4, 3), (None, 1, 3)], [(None, None, 3), (None, None, 3)]):
            layer = cls()
            build(layer, shapes)
            assert layer.runs_on_device is False
    for cls in (Maximum, Minimum, Concatenate):
        layer = cls()
        build(layer, [(None, 4, 3), (None, 4, 3)])
        assert layer.runs_on_device is False


needs_cuda = pytest.mark.skipif(
    "cuda" not in backends.available(),
    reason=f"cuda backend unavailable: {backends.unavailable().get('cuda')}")


# What a real numba-cuda DeviceNDArray offers (as tests/test_cuda_device.py's ``strict``).
REAL_DEVICE_ARRAY_API = frozenset({
    "T", "as_cuda_arg", "bind", "copy_to_device", "copy_to_host", "device_ctypes_pointer",
    "flags", "get_ipc_handle", "getitem", "is_c_contiguous", "is_f_contiguous", "nbytes",
    "ravel", "reshape", "setitem", "split", "squeeze", "transpose", "view",
    "shape", "strides", "dtype", "size", "ndim", "alloc_size", "gpu_data", "stream",
})


@pytest.fixture
def strict_device_arrays(monkeypatch):
    """In the simulator, device arrays refuse what a real one lacks (NumPy attributes,
    arithmetic operators, implicit host copies), so host-only code cannot pass here."""
    from fastcnn.backends import cuda as cb
    if not cb.simulated():
        return
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    forward = FakeCUDAArray.__getattr__

    def getattr_(self, name):
        if name not in REAL_DEVICE_ARRAY_API:
            raise AttributeError(f"a real numba DeviceNDArray has no attribute {name!r}")
        return forward(self, name)

    def refuse(self, *args):
        raise TypeError("a real numba DeviceNDArray has no arithmetic operators")

    monkeypatch.setattr(FakeCUDAArray, "__getattr__", getattr_)
    for name in ("__add__", "__sub__", "__mul__", "__truediv__", "__neg__", "__gt__", "__lt__"):
        monkeypatch.setattr(FakeCUDAArray, name, refuse, raising=False)
    monkeypatch.setattr(FakeCUDAArray, "__array__", lambda self, *a, **k: refuse(self),
                        raising=False)


@needs_cuda
@pytest.mark.parametrize("cls", [Add, Subtract, Multiply, Average])
def test_device_path_matches_the_host(cls, rng, strict_device_arrays):
    from fastcnn.backends import cuda as cb
    n = 2 if cls is Subtract else 3
    xs = [rng.standard_normal((2, 5)).astype(np.float32) for _ in range(n)]
    dy = rng.standard_normal((2, 5)).astype(np.float32)
    layer = cls()
    build(layer, [(None, 5)] * n)
    y_host, ctx_host = layer.forward(xs)
    dxs_host, _ = layer.backward(dy, ctx_host)
    y_dev, ctx = layer.forward([cb.to_device(x) for x in xs])
    assert _device.is_device_array(y_dev)
    dxs_dev, grads = layer.backward(cb.to_device(dy), ctx)
    assert grads == () and all(_device.is_device_array(d) for d in dxs_dev)
    # Average: the device multiplies by 1/n where the host divides (one rounding apart).
    np.testing.assert_allclose(y_dev.copy_to_host(), y_host, rtol=1e-6, atol=0)
    for d, h in zip(dxs_dev, dxs_host):
        np.testing.assert_allclose(d.copy_to_host(), h, rtol=1e-6, atol=0)
    partial, _ = layer.backward(cb.to_device(dy), ctx, need_dx=[False] + [True] * (n - 1))
    assert partial[0] is None and all(_device.is_device_array(d) for d in partial[1:])
    with pytest.raises(TypeError, match="mix device arrays and NumPy arrays"):
        layer.forward([cb.to_device(xs[0])] + xs[1:])
