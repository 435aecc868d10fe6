"""The Functional API: graphs of layer calls, merge layers, shared layers, several inputs and
outputs, nested models, and the graph executor's gradients."""
import json

import numpy as np
import pytest

import fastcnn
from fastcnn import gradcheck, layers
from fastcnn.layers import (Activation, Add, BatchNormalization, Concatenate, Conv2D, Dense,
                            Flatten, GlobalAveragePooling2D, MaxPooling2D)


def _residual_model(dtype="float32", seed=0):
    fastcnn.set_random_seed(seed)
    inp = fastcnn.Input((8, 8, 3), dtype=dtype, name="image")
    x = Conv2D(4, 3, padding="same", activation="relu", name="stem")(inp)
    y = Conv2D(4, 3, padding="same", name="branch")(x)
    z = Activation("relu", name="join_relu")(Add(name="join")([x, y]))      # fan-out of x
    z = MaxPooling2D(name="pool")(z)
    a = Flatten(name="flat")(z)
    g = GlobalAveragePooling2D(name="gap")(x)                                # x read 3 times
    both = Concatenate(name="cat")([a, g])
    shared = Dense(6, activation="tanh", name="shared")
    h = shared(shared(Dense(6, name="pre")(both)))                          # a shared layer
    out = Dense(3, activation="softmax", name="probs")(h)
    return fastcnn.Model(inp, out, name="resnetish")


def _data(n=6, dtype="float32", seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8, 8, 3)).astype(dtype), rng.integers(0, 3, n)


def test_layers_are_in_keras_order_and_get_layer_finds_them():
    model = _residual_model()
    names = [layer.name for layer in model.layers]
    assert names[0] == "image" and isinstance(model.layers[0], layers.InputLayer)
    assert names == ["image", "stem", "branch", "join", "join_relu", "pool", "flat", "gap",
                     "cat", "pre", "shared", "probs"]
    assert model.get_layer("gap") is model.layers[7]
    assert model.get_layer(index=-1).name == "probs"
    with pytest.raises(ValueError, match="no layer named 'nope'.*'stem'"):
        model.get_layer("nope")
    assert model.input.shape == (None, 8, 8, 3) and model.output.shape == (None, 3)
    assert model.get_layer("stem").output.shape == (None, 8, 8, 4)
    with pytest.raises(AttributeError, match="called 2 times.*ambiguous"):
        model.get_layer("shared").output


def test_predict_equals_the_layers_composed_by_hand():
    model = _residual_model()
    x, _ = _data()

    def run(name, v):
        return np.asarray(model.get_layer(name)(v))

    s = run("stem", x)
    z = run("pool", run("join_relu", np.asarray(model.get_layer("join")([s, run("branch", s)]))))
    both = np.asarray(model.get_layer("cat")([run("flat", z), run("gap", s)]))
    expected = run("probs", run("shared", run("shared", run("pre", both))))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)


def _captured_grads(model, monkeypatch):
    seen = []
    monkeypatch.setattr(model.optimizer, "apply",
                        lambda grads, variables: seen.append([np.array(g) for g in grads]))
    return seen


def test_train_on_batch_gradients_of_a_graph_with_fan_out_and_shared_layers(monkeypatch):
    """float64, every trainable weight, random targets: the executor sums gradients where
    a tensor feeds several layers and where a layer runs twice."""
    model = _residual_model("float64")
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = _data(dtype="float64")
    seen = _captured_grads(model, monkeypatch)
    model.train_on_batch(x, y)
    weights = model.trainable_weights
    assert len(seen[0]) == len(weights) == 10   # 5 kernels and biases, "shared" once
    gradcheck.check_scalar_gradient(lambda: model.test_on_batch(x, y), weights, seen[0],
                                    max_elements=40, rtol=1e-5)


def test_two_outputs_with_loss_weights_and_per_output_logs(monkeypatch):
    fastcnn.set_random_seed(2)
    inp = fastcnn.Input((5,), dtype="float64")
    h = Dense(4, activation="tanh", name="trunk")(inp)
    cls = Dense(3, activation="softmax", name="cls")(h)
    reg = Dense(2, name="reg")(h)
    model = fastcnn.Model(inp, [cls, reg])
    model.compile("sgd", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5}, metrics={"cls": ["accuracy"]})
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 5))
    y = {"cls": rng.integers(0, 3, 7), "reg": rng.standard_normal((7, 2))}
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "cls_loss", "reg_loss", "cls_accuracy"]
    assert logs["loss"] == pytest.approx(logs["cls_loss"] + 0.5 * logs["reg_loss"])
    p_cls, p_reg = model.predict(x, verbose=0)
    assert logs["reg_loss"] == pytest.approx(np.mean((p_reg - y["reg"]) ** 2))
    seen = _captured_grads(model, monkeypatch)
    model.train_on_batch(x, [y["cls"], y["reg"]])
    gradcheck.check_scalar_gradient(
        lambda: model.test_on_batch(x, y, return_dict=True)["loss"], model.trainable_weights,
        seen[0], rtol=1e-5)
    assert model.metrics_names == ["loss", "cls_loss", "reg_loss", "cls_accuracy"]


def test_two_inputs_by_list_and_by_name():
    a, b = fastcnn.Input((3,), name="a"), fastcnn.Input((2,), name="b")
    out = Dense(1)(Concatenate()([a, Dense(3)(b)]))
    model = fastcnn.Model([a, b], out)
    xa, xb = np.ones((4, 3), "float32"), np.ones((4, 2), "float32")
    np.testing.assert_array_equal(model.predict([xa, xb], verbose=0),
                                  model.predict({"b": xb, "a": xa}, verbose=0))
    model.compile("adam", "mse")
    model.fit([xa, xb], np.zeros((4, 1)), epochs=2, verbose=0)
    with pytest.raises(ValueError, match="has 1 arrays, model .* has 2 inputs"):
        model.predict([xa], verbose=0)


def test_the_visualise_the_convolutions_tutorial():
    """Model(inputs=model.input, outputs=[layer.output for layer in model.layers]) on a
    Sequential model, as the Fashion-MNIST tutorial writes it."""
    model = fastcnn.Sequential([
        Conv2D(4, 3, activation="relu", input_shape=(10, 10, 1)), MaxPooling2D(2),
        Flatten(), Dense(3, activation="softmax")])
    probe = fastcnn.Model(inputs=model.input,
                          outputs=[layer.output for layer in model.layers])
    x = np.random.default_rng(0).random((2, 10, 10, 1)).astype("float32")
    outs = probe.predict(x, verbose=0)
    assert [o.shape for o in outs] == [(2, 8, 8, 4), (2, 4, 4, 4), (2, 64), (2, 3)]
    np.testing.assert_allclose(outs[-1], model.predict(x, verbose=0), rtol=1e-6)


def test_a_model_is_a_layer_inside_another_model(monkeypatch):
    fastcnn.set_random_seed(4)
    inner_in = fastcnn.Input((4,), dtype="float64")
    inner = fastcnn.Model(inner_in, Dense(3, activation="relu")(Dense(5)(inner_in)),
                          name="inner")
    outer_in = fastcnn.Input((4,), dtype="float64")
    h = inner(outer_in)
    out = Dense(2)(Concatenate()([h, inner(outer_in)]))    # the nested model, twice
    model = fastcnn.Model(outer_in, out)
    assert model.count_params() == inner.count_params() + 6 * 2 + 2
    model.compile("sgd", "mse")
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 2))
    seen = _captured_grads(model, monkeypatch)
    model.train_on_batch(x, y)
    gradcheck.check_scalar_gradient(lambda: model.test_on_batch(x, y),
                                    model.trainable_weights, seen[0], rtol=1e-5)


def test_graph_errors_name_what_is_wrong():
    a, b = fastcnn.Input((4,), name="a_in"), fastcnn.Input((4,), name="b_in")
    out = Add()([Dense(4)(a), Dense(4)(b)])
    with pytest.raises(ValueError, match="disconnected.*'b_in'"):
        fastcnn.Model(a, out)
    with pytest.raises(ValueError, match="named 'dup'"):
        x = fastcnn.Input((3,))
        fastcnn.Model(x, Dense(2, name="dup")(Dense(3, name="dup")(x)))
    conv = Conv2D(2, 3)
    conv(fastcnn.Input((8, 8, 1)))
    with pytest.raises(ValueError, match=r"layer '.*' \(Conv2D\) has shape \(None, 8, 8, 3\), "
                                         r"expected \(None, 8, 8, 1\)"):
        conv(fastcnn.Input((8, 8, 3)))
    with pytest.raises(ValueError, match=r"\(None, 4\).*\(None, 5\)"):
        Add()([fastcnn.Input((4,)), fastcnn.Input((5,))])
    with pytest.raises(ValueError, match="needs inputs and outputs"):
        fastcnn.Model()


def test_save_load_and_config_round_trip_of_a_graph(tmp_path):
    model = _residual_model()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "graph.fcnn")
    loaded = fastcnn.load_model(tmp_path / "graph.fcnn")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    # training resumes identically (optimizer state restored)
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    config = json.loads(json.dumps(model.get_config()))
    again = fastcnn.Model.from_config(config)
    assert again.count_params() == model.count_params()
    assert [l.name for l in again.layers] == [l.name for l in model.layers]


def test_summary_has_the_connected_to_column():
    lines = []
    _residual_model().summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Connected to" in text
    assert "join (Add)" in text and "stem[0][0]" in text and "branch[0][0]" in text
    assert "shared[0][0]" in text     # the shared layer's first call feeds its second


def test_batchnorm_in_a_graph_trains_and_freezes():
    fastcnn.set_random_seed(6)
    inp = fastcnn.Input((4, 4, 2))
    x = BatchNormalization()(Conv2D(3, 3, padding="same")(inp))
    out = Dense(2, activation="softmax")(Flatten()(x))
    model = fastcnn.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    xs, ys = np.random.default_rng(0).random((8, 4, 4, 2)), np.arange(8) % 2
    model.fit(xs, ys, epochs=2, verbose=0)
    model.trainable = False
    assert model.trainable_weights == [] and all(not l.trainable for l in model.layers)
    before = model.get_weights()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(xs, ys, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tape_gradients_of_a_graph_with_two_outputs_and_a_shared_layer():
    """Through the GradientTape: the whole model as one node, random upstream gradients on
    both outputs (float64), checked against central differences."""
    fastcnn.set_random_seed(8)
    inp = fastcnn.Input((6,), dtype="float64")
    shared = Dense(5, activation="tanh")
    h = shared(Dense(5)(inp))
    a = Dense(3)(shared(h))
    b = Dense(2)(layers.Add()([h, shared(h)]))
    model = fastcnn.Model(inp, [a, b])
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 6))
    da, db = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    xt = fastcnn.Variable(x, dtype="float64")
    with fastcnn.GradientTape() as tape:
        out_a, out_b = model(xt, training=True)
        total = fastcnn.ops.sum(out_a * da) + fastcnn.ops.sum(out_b * db)
    grads = tape.gradient(total, [xt] + model.trainable_variables)

    def scalar():
        pa, pb = model.predict(np.asarray(xt), verbose=0)
        return float((pa * da).sum() + (pb * db).sum())

    gradcheck.check_scalar_gradient(scalar, [xt.value] + model.trainable_weights, grads,
                                    rtol=1e-6)


def test_unbuilt_sequential_models_build_from_data_also_nested():
    inner = fastcnn.Sequential([Dense(3)])
    outer = fastcnn.Sequential([inner, Dense(2)])
    out = outer(np.ones((2, 4), "float32"))
    assert np.asarray(out).shape == (2, 2) and inner.input_shape == (None, 4)
    alone = fastcnn.Sequential([Dense(3), Dense(2)])
    assert np.asarray(alone(np.ones((5, 7), "float32"))).shape == (5, 2)


def test_layers_follow_keras_depth_order_and_round_trip_through_fcnn(tmp_path):
    """Keras lists a Functional model's layers by decreasing depth (ties: first met walking
    from the outputs), not in walk order: a short branch read first comes after the long
    branch's first layer. get_weights() follows; .fcnn files round-trip (weights matched
    by name, so files written in an older order load too)."""
    inp = fastcnn.Input((4,), name="x")
    short = Dense(3, name="short")(inp)
    long_ = Dense(3, name="long_b")(Dense(5, name="long_a")(inp))
    out = Concatenate(name="cat")([short, long_])
    model = fastcnn.Model(inp, out)
    assert [l.name for l in model.layers] == ["x", "long_a", "short", "long_b", "cat"]
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(4, 5), (5,), (4, 3), (3,), (5, 3), (3,)]
    x = np.random.default_rng(0).random((2, 4)).astype(np.float32)
    model.save(tmp_path / "m.fcnn")
    again = fastcnn.load_model(tmp_path / "m.fcnn")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
