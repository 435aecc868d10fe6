"""Model subclassing (Keras 3's ``class Net(keras.Model)`` with ``call``), custom layers
written with ``call``, GradientTape training loops, and ``train_step`` overrides."""
import numpy as np
import pytest

import fastcnn
from fastcnn import gradcheck, ops
from fastcnn.layers import (Activation, Add, BatchNormalization, Concatenate, Conv2D, Dense,
                            GlobalAveragePooling2D, MaxPooling2D)


# --------------------------------------------------------------- the same blocks twice
def _resnet_layers():
    return dict(stem=Conv2D(6, 3, padding="same", use_bias=False, name="stem"),
                bn=BatchNormalization(name="bn"),
                c1=Conv2D(6, 3, padding="same", activation="relu", name="c1"),
                c2=Conv2D(6, 3, padding="same", name="c2"),
                gap=GlobalAveragePooling2D(name="gap"),
                head=Dense(4, activation="softmax", name="head"))


def _resnet_functional(seed):
    fastcnn.set_random_seed(seed)
    L = _resnet_layers()
    inp = fastcnn.Input((8, 8, 2))
    x = Activation("relu")(L["bn"](L["stem"](inp)))
    y = L["c2"](L["c1"](x))
    x = Activation("relu")(Add()([x, y]))
    return fastcnn.Model(inp, L["head"](L["gap"](x)))


class ResNet(fastcnn.Model):
    def __init__(self, seed, **kwargs):
        super().__init__(**kwargs)
        fastcnn.set_random_seed(seed)
        L = _resnet_layers()
        self.stem, self.bn, self.c1, self.c2 = L["stem"], L["bn"], L["c1"], L["c2"]
        self.gap, self.head = L["gap"], L["head"]
        self.add = Add()

    def call(self, inputs, training=False):
        x = ops.relu(self.bn(self.stem(inputs), training=training))
        y = self.c2(self.c1(x))
        x = ops.relu(self.add([x, y]))
        return self.head(self.gap(x))


def _inception_functional(seed):
    fastcnn.set_random_seed(seed)
    inp = fastcnn.Input((8, 8, 3))
    a = Conv2D(3, 1, activation="relu", name="a")(inp)
    b = Conv2D(4, 3, padding="same", activation="relu", name="b")(inp)
    c = MaxPooling2D(3, strides=1, padding="same", name="c")(inp)
    x = Concatenate(name="cat")([a, b, c])
    return fastcnn.Model(inp, Dense(3, activation="softmax", name="out")(
        GlobalAveragePooling2D()(x)))


class Inception(fastcnn.Model):
    def __init__(self, seed):
        super().__init__()
        fastcnn.set_random_seed(seed)
        self.a = Conv2D(3, 1, activation="relu", name="a")
        self.b = Conv2D(4, 3, padding="same", activation="relu", name="b")
        self.c = MaxPooling2D(3, strides=1, padding="same", name="c")
        self.cat = Concatenate(name="cat")
        self.gap = GlobalAveragePooling2D()
        self.out = Dense(3, activation="softmax", name="out")

    def call(self, x):
        return self.out(self.gap(self.cat([self.a(x), self.b(x), self.c(x)])))


@pytest.mark.parametrize("pair", [(_resnet_functional, ResNet),
                                  (_inception_functional, Inception)],
                         ids=["resnet", "inception"])
def test_functional_and_subclassed_agree_after_five_steps(pair):
    make_functional, make_subclassed = pair
    rng = np.random.default_rng(0)
    channels = 2 if make_subclassed is ResNet else 3
    x = rng.standard_normal((6, 8, 8, channels)).astype("float32")
    y = rng.integers(0, 4 if make_subclassed is ResNet else 3, 6)
    models = [make_functional(7), make_subclassed(7)]
    models[1].build((None, 8, 8, channels))
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(a, b)   # same seed, same creation order
    for m in models:
        m.compile(fastcnn.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    np.testing.assert_allclose(models[0].predict(x, verbose=0), models[1].predict(x, verbose=0),
                               rtol=1e-6, atol=1e-7)
    for _ in range(5):
        la = models[0].train_on_batch(x, y)
        lb = models[1].train_on_batch(x, y)
        np.testing.assert_allclose(la, lb, rtol=1e-5)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(models[0].predict(x, verbose=0), models[1].predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    # fit runs on a subclassed model too
    hist = models[1].fit(x, y, epochs=2, batch_size=3, verbose=0)
    assert len(hist.history["loss"]) == 2 and "accuracy" in hist.history


@pytest.mark.parametrize("functional", [True, False], ids=["functional", "subclassed"])
def test_a_gradient_tape_loop_equals_fits_step_to_the_last_bit(functional):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 8, 8, 2)).astype("float32")
    y = rng.integers(0, 4, 5)
    def make():
        model = _resnet_functional(3) if functional else ResNet(3)
        model.build((None, 8, 8, 2))   # a subclassed model draws its weights here
        return model
    a, b = make(), make()
    a.compile(fastcnn.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    a.fit(x, y, batch_size=5, epochs=1, shuffle=False, verbose=0)
    loss_fn = fastcnn.losses.SparseCategoricalCrossentropy()
    optimizer = fastcnn.optimizers.SGD(0.1)
    with fastcnn.GradientTape() as tape:
        probs = b(x, training=True)
        loss = loss_fn(y, probs)
    grads = tape.gradient(loss, b.trainable_variables)
    optimizer.apply_gradients(zip(grads, b.trainable_variables))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_train_step_override_runs_inside_fit():
    class Custom(fastcnn.Model):
        def __init__(self):
            super().__init__()
            self.d1 = Dense(8, activation="relu")
            self.d2 = Dense(1)
            self.steps_seen = 0

        def call(self, x, training=False):
            return self.d2(self.d1(x))

        def train_step(self, data):
            x, y = data
            with fastcnn.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(y=y, y_pred=y_pred)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            self.steps_seen += 1
            return self.compute_metrics(x, y, y_pred)

    fastcnn.set_random_seed(2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5], "float32"))[:, None]
    model = Custom()
    model.compile(fastcnn.optimizers.Adam(0.02), "mse", metrics=["mae"])
    hist = model.fit(x, y, batch_size=16, epochs=15, verbose=0)
    assert model.steps_seen == 4 * 15
    assert set(hist.history) == {"loss", "mae"}
    assert hist.history["loss"][-1] < 0.2 * hist.history["loss"][0]


class Scale(fastcnn.layers.Layer):
    """A custom layer the Keras way: weights in build, the computation in call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")
        self.b = self.add_weight(shape=(1,), initializer="zeros", name="b")

    def call(self, inputs):
        return ops.tanh(inputs * self.w) + self.b


def test_a_custom_layer_with_call_is_differentiated_and_fits_in_a_graph(monkeypatch):
    fastcnn.set_random_seed(3)
    inp = fastcnn.Input((4,), dtype="float64")
    custom = Scale()
    out = Dense(2)(custom(Dense(4)(inp)))
    model = fastcnn.Model(inp, out)
    assert custom.count_params() == 5 and [v.name for v in custom.variables] == ["w", "b"]
    model.compile("sgd", "mse")
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    seen = []
    monkeypatch.setattr(model.optimizer, "apply",
                        lambda grads, variables: seen.append([np.array(g) for g in grads]))
    model.train_on_batch(x, y)
    assert len(seen[0]) == 6
    gradcheck.check_scalar_gradient(lambda: model.test_on_batch(x, y),
                                    model.trainable_weights, seen[0], rtol=1e-5)


def test_a_subclassed_model_used_before_it_saw_data_says_what_is_unknown():
    model = ResNet(0)
    with pytest.raises(ValueError, match="has not been built yet, so its summary is unknown"):
        model.summary()
    with pytest.raises(ValueError, match="its number of parameters is unknown"):
        model.count_params()
    with pytest.raises(AttributeError, match="subclassed model: it has no symbolic inputs"):
        model.inputs
    model(np.zeros((1, 8, 8, 2), "float32"))
    assert model.count_params() > 0
    lines = []
    model.summary(print_fn=lines.append)
    assert any("stem (Conv2D)" in line for line in lines)


def test_model_weights_save_and_load_for_a_subclassed_model(tmp_path):
    a, b = ResNet(1), ResNet(2)
    for m in (a, b):
        m.build((None, 8, 8, 2))
    a.save_weights(tmp_path / "w.fcnn")
    b.load_weights(tmp_path / "w.fcnn")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    with pytest.raises(ValueError, match="subclassed model.*save_weights"):
        a.save(tmp_path / "m.fcnn")
