"""The Layer protocol shared by every layer: names, kwargs, weights, dtype, building."""
import numpy as np
import pytest

import fastcnn
from fastcnn.layers import (Activation, AveragePooling2D, Conv2D, Dense, Dropout, Flatten,
                            MaxPooling2D)


@pytest.fixture(autouse=True)
def fresh_session():
    fastcnn.utils.clear_session()
    previous = fastcnn.floatx()
    yield
    fastcnn.set_floatx(previous)


ALL_LAYERS = [
    lambda **kw: Conv2D(2, 3, **kw),
    lambda **kw: MaxPooling2D(**kw),
    lambda **kw: AveragePooling2D(**kw),
    lambda **kw: Dense(3, **kw),
    lambda **kw: Flatten(**kw),
    lambda **kw: Dropout(0.5, **kw),
    lambda **kw: Activation("relu", **kw),
]


def test_automatic_names_follow_keras():
    names = [Conv2D(1, 1).name, Conv2D(1, 1).name, MaxPooling2D().name,
             AveragePooling2D().name, Dense(1).name, Flatten().name, Dropout(0.1).name,
             Activation("tanh").name, Dense(1).name]
    assert names == ["conv2d", "conv2d_1", "max_pooling2d", "average_pooling2d", "dense",
                     "flatten", "dropout", "activation", "dense_1"]
    assert Dense(1, name="head").name == "head"
    fastcnn.utils.clear_session()
    assert Conv2D(1, 1).name == "conv2d"


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_every_layer_takes_the_common_kwargs_and_rejects_unknown_ones(make):
    layer = make(input_shape=(6, 6, 2), name="x1", dtype="float64")
    assert layer.name == "x1"
    with pytest.raises(TypeError, match="bogus_arg"):
        make(bogus_arg=1)


def test_unknown_kwarg_message_names_every_unknown_one():
    with pytest.raises(TypeError, match=r"\['groups', 'lora_rank'\]"):
        Conv2D(4, 3, lora_rank=2, groups=2)


def test_weights_order_get_and_set():
    layer = Conv2D(4, (3, 2))
    layer.build((None, 5, 6, 3))
    kernel, bias = layer.weights
    assert kernel is layer.kernel and bias is layer.bias
    assert kernel.shape == (3, 2, 3, 4) and bias.shape == (4,)
    copies = layer.get_weights()
    copies[0][...] = 0
    assert not np.all(layer.kernel == 0)  # get_weights returns copies
    new = [np.full((3, 2, 3, 4), 0.5), np.arange(4)]
    layer.set_weights(new)
    assert layer.kernel is kernel  # assigned in place: optimizers keep valid references
    np.testing.assert_array_equal(layer.kernel, 0.5)
    np.testing.assert_array_equal(layer.bias, np.arange(4))
    assert layer.kernel.dtype == np.float32 and layer.bias.dtype == np.float32


def test_set_weights_rejects_wrong_shapes_and_counts_without_assigning():
    layer = Dense(3)
    layer.build((None, 4))
    before = layer.get_weights()
    with pytest.raises(ValueError, match=r"'dense'.*weight 1 has shape \(4,\), expected \(3,\)"):
        layer.set_weights([np.zeros((4, 3)), np.zeros(4)])
    with pytest.raises(ValueError, match="expects 2 weight arrays"):
        layer.set_weights([np.zeros((4, 3))])
    for b, a in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(b, a)


def test_use_bias_false_has_only_a_kernel():
    conv = Conv2D(2, 3, use_bias=False)
    conv.build((None, 4, 4, 1))
    dense = Dense(2, use_bias=False)
    dense.build((None, 5))
    assert [w.shape for w in conv.weights] == [(3, 3, 1, 2)]
    assert [w.shape for w in dense.weights] == [(5, 2)]
    assert conv.count_params() == 18 and dense.count_params() == 10


def test_unbuilt_layer_has_no_shapes_or_param_count():
    layer = Dense(2)
    with pytest.raises(AttributeError, match="not been built"):
        layer.output_shape
    with pytest.raises(ValueError, match="not built"):
        layer.count_params()


def test_dtype_comes_from_floatx_at_build_time_or_from_the_argument():
    a = Dense(2)
    fastcnn.set_floatx("float64")
    a.build((None, 3))
    assert a.kernel.dtype == np.float64 and a.dtype == "float64"
    fastcnn.set_floatx("float32")
    b = Dense(2, dtype="float64")
    b.build((None, 3))
    assert b.kernel.dtype == np.float64
    c = Dense(2)
    c.build((None, 3))
    assert c.kernel.dtype == np.float32


def test_trainable_flag_moves_weights_to_non_trainable():
    layer = Dense(2)
    layer.build((None, 3))
    assert len(layer.trainable_weights) == 2 and layer.non_trainable_weights == []
    layer.trainable = False
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 2


def test_eager_call_builds_and_validates():
    layer = Dense(2)
    y = layer(np.ones((4, 3), dtype=np.uint8))
    assert isinstance(y, fastcnn.Tensor)
    assert y.shape == (4, 2) and y.dtype == np.float32
    assert np.asarray(y).shape == (4, 2) and np.asarray(y).dtype == np.float32
    with pytest.raises(ValueError, match=r"shape \(4, 5\), expected \(None, 3\)"):
        layer(np.ones((4, 5)))


def test_building_twice_only_checks_the_shape():
    layer = Dense(2)
    layer.build((None, 3))
    kernel = layer.kernel
    layer.build((None, 3))
    assert layer.kernel is kernel and len(layer.weights) == 2
    with pytest.raises(ValueError, match="expected"):
        layer.build((None, 4))


def _state(layer):
    """What a layer object holds: its attributes, and the contents of its containers."""
    state = {}
    for key, value in vars(layer).items():
        if isinstance(value, (list, tuple)):
            value = ("seq", type(value), tuple(id(v) for v in value))
        elif isinstance(value, dict):
            value = ("dict", tuple((k, id(v)) for k, v in value.items()))
        else:
            value = ("obj", id(value))
        state[key] = value
    return state


@pytest.mark.parametrize("make", ALL_LAYERS)
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_backward_keep_nothing_on_the_layer(make, training):
    # The stateless contract: everything backward needs travels in ctx; a layer call adds
    # no attribute (no _cache, no grads) and rebinds none.
    layer = make()
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 2))
    if isinstance(layer, Dense):  # Dense takes 2-D input (Keras would need a Flatten)
        x = x.reshape(2, -1)
    layer.build((None,) + x.shape[1:], "float64")
    weights = [w.copy() for w in layer.weights]
    before = _state(layer)
    y, ctx = layer.forward(x, training=training)
    assert _state(layer) == before
    dy = np.random.default_rng(1).standard_normal(np.shape(y))
    dx, grads = layer.backward(dy, ctx)
    assert _state(layer) == before
    assert not hasattr(layer, "_cache") and not hasattr(layer, "grads")
    assert np.shape(dx) == x.shape
    assert isinstance(grads, tuple) and len(grads) == len(layer._param_slots())
    for g, w in zip(grads, layer._param_slots()):
        assert g.shape == w.shape
    for a, b in zip(weights, layer.weights):
        np.testing.assert_array_equal(a, b)  # a call changes no weight


def test_two_calls_in_flight_do_not_disturb_each_other():
    # With the old cache a second forward overwrote the first one's; ctx makes a shared
    # layer (two calls before either backward) exact.
    rng = np.random.default_rng(2)
    layer = Conv2D(2, 3, activation="tanh")
    layer.build((None, 5, 5, 1), "float64")
    x1, x2 = rng.standard_normal((2, 2, 5, 5, 1))
    dy1, dy2 = rng.standard_normal((2, 2, 3, 3, 2))
    y1, ctx1 = layer.forward(x1, training=True)
    alone = layer.backward(dy1, ctx1)
    y1b, ctx1 = layer.forward(x1, training=True)
    y2, ctx2 = layer.forward(x2, training=True)
    dx2, g2 = layer.backward(dy2, ctx2)
    dx1, g1 = layer.backward(dy1, ctx1)
    np.testing.assert_array_equal(y1, y1b)
    np.testing.assert_array_equal(dx1, alone[0])
    for a, b in zip(g1, alone[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(dx1, dx2)
    # The ctx can be used more than once: backward does not consume it.
    again = layer.backward(dy1, ctx1)
    np.testing.assert_array_equal(again[0], dx1)


def test_eager_call_returns_a_tensor_and_records_nothing_on_the_layer():
    layer = Dense(2)
    layer(np.ones((1, 3)))
    before = _state(layer)
    y = layer(np.ones((1, 3)), training=True)
    assert isinstance(y, fastcnn.Tensor)
    assert _state(layer) == before
