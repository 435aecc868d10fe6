"""Sequential: building, summary, compile/fit/evaluate/predict, callbacks, reproducibility,
backends, dropout, learning."""
import io
import re
import time

import numpy as np
import pytest

import fastcnn
from fastcnn import backends, callbacks, optimizers
from fastcnn.layers import (AveragePooling2D, Conv2D, Dense, Dropout, Flatten, Input,
                            MaxPooling2D)

# "cuda" under the CUDA simulator costs about a minute here: tests/test_cuda_device.py trains
# models on it; on a real GPU (NUMBA_ENABLE_CUDASIM=0) it joins these tests.
BACKENDS = [n for n in backends.available()
            if not (n == "cuda" and backends.get("cuda").module.simulated())]


@pytest.fixture(autouse=True)
def fresh_session():
    fastcnn.utils.clear_session()
    fastcnn.utils.set_random_seed(0)


def issue_model(input_shape=(28, 28, 1), classes=10, filters=32):
    """The model of the issue's example."""
    return fastcnn.Sequential([
        Conv2D(filters, 3, activation="relu", input_shape=input_shape), MaxPooling2D(2),
        Flatten(), Dense(classes, activation="softmax")])


def blobs(n, seed=0, size=8, classes=4):
    """A separable image problem: the class is the quadrant holding a bright 3x3 blob."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0.0, 0.3, (n, size, size, 1)).astype(np.float32)
    half = size // 2
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        r0 = r * half + rng.integers(0, half - 2)
        c0 = c * half + rng.integers(0, half - 2)
        x[i, r0:r0 + 3, c0:c0 + 3, 0] += 2.0
    return x, y


# ------------------------------------------------------------------- building and summary
KERAS_SUMMARY = """\
Model: "sequential"
_________________________________________________________________
Layer (type)                 Output Shape              Param #   
=================================================================
conv2d (Conv2D)              (None, 26, 26, 32)        320       
_________________________________________________________________
max_pooling2d (MaxPooling2D) (None, 13, 13, 32)        0         
_________________________________________________________________
flatten (Flatten)            (None, 5408)              0         
_________________________________________________________________
dense (Dense)                (None, 10)                54090     
=================================================================
Total params: 54,410
Trainable params: 54,410
Non-trainable params: 0
_________________________________________________________________
"""


def test_summary_matches_keras_for_the_issue_example(capsys):
    model = issue_model()
    model.summary()
    assert capsys.readouterr().out == KERAS_SUMMARY
    lines = []
    model.summary(print_fn=lines.append)
    assert "\n".join(lines) + "\n" == KERAS_SUMMARY
    assert model.count_params() == 54410
    assert [layer.output_shape for layer in model.layers] == [
        (None, 26, 26, 32), (None, 13, 13, 32), (None, 5408), (None, 10)]


def test_summary_counts_non_trainable_params():
    model = issue_model()
    model.layers[0].trainable = False
    lines = []
    model.summary(print_fn=lines.append)
    assert lines[-4:-1] == ["Total params: 54,410", "Trainable params: 54,090",
                            "Non-trainable params: 320"]


@pytest.mark.parametrize("how", ["input_shape", "Input", "build", "add"])
def test_ways_to_give_the_input_shape(how):
    first = {"input_shape": (6, 6, 2)} if how == "input_shape" else {}
    layers = [Conv2D(4, 3, padding="same", **first), AveragePooling2D(), Flatten(), Dense(3)]
    if how == "input_shape":
        model = fastcnn.Sequential(layers)
    elif how == "Input":
        model = fastcnn.Sequential([Input((6, 6, 2))] + layers)
    elif how == "build":
        model = fastcnn.Sequential(layers)
        assert not model.built
        model.build((None, 6, 6, 2))
    else:
        model = fastcnn.Sequential()
        model.add(Input(shape=(6, 6, 2)))
        for layer in layers:
            model.add(layer)
    assert model.built and model.input_shape == (None, 6, 6, 2)
    assert model.output_shape == (None, 3)
    assert [l.name for l in model.layers] == ["conv2d", "average_pooling2d", "flatten", "dense"]
    assert model.count_params() == 2 * 9 * 4 + 4 + 36 * 3 + 3


def test_lazy_build_from_the_first_data():
    model = fastcnn.Sequential([Conv2D(2, 3), Flatten(), Dense(2, activation="softmax")])
    assert not model.built
    p = model.predict(np.zeros((3, 5, 4, 1), dtype=np.uint8))
    assert model.built and model.input_shape == (None, 5, 4, 1)
    assert p.shape == (3, 2) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)


def test_model_names_and_weights_order():
    a, b = fastcnn.Sequential(), fastcnn.Sequential(name="mine")
    assert (a.name, b.name, fastcnn.Sequential().name) == ("sequential", "mine", "sequential_1")
    model = issue_model()
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 3, 1, 32), (32,), (5408, 10), (10,)]  # per layer kernel then bias
    assert all(w is v for w, v in zip(model.weights, model.layers[0].weights + model.layers[3].weights))


def test_get_and_set_weights_round_trip():
    model = issue_model(input_shape=(6, 6, 1))
    new = [np.full(w.shape, i, dtype=np.float64) for i, w in enumerate(model.get_weights())]
    refs = model.weights
    model.set_weights(new)
    for i, (w, ref) in enumerate(zip(model.get_weights(), refs)):
        np.testing.assert_array_equal(w, i)
        assert w.dtype == np.float32
    assert all(a is b for a, b in zip(model.weights, refs))  # in place


# ------------------------------------------------------------------------ fit and friends
def test_fit_returns_history_with_keras_keys_and_trains():
    x, y = blobs(160)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=8)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0)
    assert isinstance(history, callbacks.History) and model.history is history
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_validation_split_takes_the_last_fraction_before_shuffling():
    x, y = blobs(40)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["acc"])
    history = model.fit(x, y, epochs=1, batch_size=8, validation_split=0.3, verbose=0)
    # the validation metrics come from the final weights on x[28:]
    loss, acc = model.evaluate(x[28:], y[28:], verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(loss, rel=1e-6)
    assert history.history["val_acc"][0] == pytest.approx(acc)


def test_validation_data_overrides_the_split():
    x, y = blobs(30)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    h = model.fit(x, y, validation_data=(x[:5], y[:5]), validation_split=0.5, verbose=0)
    assert h.history["val_loss"][0] == pytest.approx(model.evaluate(x[:5], y[:5], verbose=0),
                                                      rel=1e-6)


def test_epoch_loss_is_the_sample_weighted_mean_over_batches():
    x, y = blobs(10)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    # learning rate 0: the weights stay put, so the epoch means must equal evaluate's;
    # batches of 4, 4 and 2 make a plain mean of the batch losses differ
    h = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    loss, acc = model.evaluate(x, y, batch_size=10, verbose=0)
    batch_losses = [model.test_on_batch(x[s:s + 4], y[s:s + 4]) for s in (0, 4, 8)]
    assert not np.isclose(np.mean(batch_losses), loss)
    assert h.history["loss"][0] == pytest.approx(loss, rel=1e-6)
    assert h.history["accuracy"][0] == pytest.approx(acc)


def test_evaluate_predict_and_the_batch_methods():
    x, y = blobs(20)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("rmsprop", "sparse_categorical_crossentropy")
    assert isinstance(model.evaluate(x, y, verbose=0), float)  # no metrics: a scalar
    model.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["accuracy"])
    result = model.evaluate(x, y, verbose=0)
    assert isinstance(result, list) and len(result) == 2
    p = model.predict(x)
    assert p.shape == (20, 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(model.predict(x, batch_size=3), p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict_on_batch(x), p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model(x), p, rtol=1e-6, atol=1e-7)
    assert result[1] == pytest.approx((p.argmax(1) == y).mean())
    test = model.test_on_batch(x, y)
    assert test[0] == pytest.approx(result[0], rel=1e-6)
    before = model.get_weights()
    loss, acc = model.train_on_batch(x, y)
    assert loss == pytest.approx(result[0], rel=1e-6)  # the loss BEFORE the update
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_uint8_and_int_inputs_are_cast_to_the_model_dtype():
    x = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 1)).astype(np.uint8)
    model = issue_model(input_shape=(8, 8, 1), classes=3, filters=2)
    model.compile("sgd", "sparse_categorical_crossentropy")
    np.testing.assert_array_equal(model.predict(x), model.predict(x.astype(np.float32)))
    model.fit(x, np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8), verbose=0)
    model.fit(x.astype(np.int64), [0, 1, 2, 0, 1, 2], verbose=0)  # lists work too


def test_categorical_and_binary_models_train():
    x, y = blobs(64)
    cat = issue_model(input_shape=(8, 8, 1), classes=4, filters=4)
    cat.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    h = cat.fit(x, np.eye(4)[y], epochs=2, verbose=0)
    assert h.history["loss"][1] < h.history["loss"][0]
    binary = fastcnn.Sequential([Flatten(input_shape=(8, 8, 1)), Dense(1, activation="sigmoid")])
    binary.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    h = binary.fit(x, (y < 2).astype(int), epochs=2, verbose=0)
    assert h.history["loss"][1] < h.history["loss"][0]
    assert binary.predict(x).shape == (64, 1)


def test_fit_again_continues_with_the_same_optimizer_state():
    x, y = blobs(32)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert model.optimizer.iterations == 8


def test_changing_trainable_after_compile_is_refused_until_recompile():
    x, y = blobs(8)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.train_on_batch(x, y)
    model.layers[0].trainable = False
    model.evaluate(x, y, verbose=0)  # evaluating needs no optimizer: still fine
    with pytest.raises(ValueError, match="compile"):
        model.train_on_batch(x, y)
    model.compile("adam", "sparse_categorical_crossentropy")
    frozen = model.layers[0].get_weights()
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], frozen[0])


# ------------------------------------------------------------------------ verbose output
def test_verbose_2_prints_one_keras_line_per_epoch(capsys):
    x, y = blobs(40)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=10, validation_split=0.25, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    number = r"\d+\.\d{4}(e[+-]\d+)?"
    line = (rf"^3/3 - \d+s - loss: {number} - accuracy: {number} - val_loss: {number} - "
            rf"val_accuracy: {number}$")
    assert len(lines) == 4
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2"
    assert re.match(line, lines[1]) and re.match(line, lines[3]), lines


def test_verbose_1_without_a_terminal_prints_the_final_bar(capsys):
    x, y = blobs(20)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=10, verbose=1)
    out = capsys.readouterr().out
    assert "\r" not in out
    assert re.match(r"^Epoch 1/1\n2/2 \[={30}\] - \d+s \d+[mu]?s/step - loss: \S+ - "
                    r"accuracy: \S+\n$", out), out
    model.evaluate(x, y, verbose=1)
    assert re.match(r"^1/1 \[={30}\] - .* - loss: \S+ - accuracy: \S+\n$",
                    capsys.readouterr().out)


def test_verbose_0_is_silent(capsys):
    x, y = blobs(20)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.2)
    model.evaluate(x, y, verbose=0)
    model.predict(x)
    assert capsys.readouterr().out == ""


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_updates_in_place_and_is_rate_limited():
    stream = FakeTerminal()
    bar = callbacks.ProgbarLogger(verbose=1, stream=stream)
    bar.set_params({"epochs": 1, "steps": 1000})
    bar.on_train_begin()
    bar.on_epoch_begin(0)
    for batch in range(1000):  # far faster than 10 per second
        bar.on_train_batch_end(batch, {"loss": 0.5})
    bar.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.25})
    out = stream.getvalue()
    assert out.startswith("Epoch 1/1\n")
    assert 2 <= out.count("\r") <= 5  # the first update, maybe a few, and the final line
    final = out.rsplit("\r", 1)[1]
    assert re.match(r"^1000/1000 \[={30}\] - \d+s \d+[mu]?s/step - loss: 0\.5000 - "
                    r"val_loss: 0\.2500\s*\n$", final), final
    assert re.search(r"\r   1/1000 \[\.{30}\] - ETA: \d+s - loss: 0\.5000", out)


def test_fit_verbose_1_on_a_terminal_draws_the_bar_in_place(monkeypatch):
    x, y = blobs(20)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    model.fit(x, y, epochs=2, batch_size=5, verbose=1)
    out = terminal.getvalue()
    assert out.count("Epoch ") == 2 and out.count("\n") == 4
    assert re.search(r"\r1/4 \[={6}>\.{23}\] - ETA: \d+s - loss: \S+ - accuracy: \S+", out)
    assert re.search(r"\r4/4 \[={30}\] - \d+s \d+[mu]?s/step - loss: \S+ - accuracy: \S+\s*\n", out)


# ------------------------------------------------------------------------ callbacks
class Recorder(callbacks.Callback):
    def __init__(self, stop_after=None):
        super().__init__()
        self.events = []
        self.stop_after = stop_after

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.events.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(("batch_end", batch, dict(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, dict(logs)))
        if self.stop_after is not None and epoch + 1 >= self.stop_after:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))


def test_callback_hooks_order_logs_and_stop_training():
    x, y = blobs(12)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rec = Recorder(stop_after=2)
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[rec])
    kinds = [e[0] for e in rec.events]
    assert kinds == ["train_begin"] + 2 * ["epoch_begin", "batch_begin", "batch_end",
                                           "batch_begin", "batch_end", "epoch_end"] + ["train_end"]
    assert rec.model is model and rec.params["epochs"] == 5 and rec.params["steps"] == 2
    assert set(rec.events[3][2]) == {"loss", "accuracy"}  # running means after each batch
    assert rec.events[6][2]["loss"] == pytest.approx(history.history["loss"][0])
    assert len(history.history["loss"]) == 2  # stopped after the second epoch


def test_callbacks_must_be_callbacks():
    x, y = blobs(4)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="Callback instances"):
        model.fit(x, y, verbose=0, callbacks=[print])


def test_initial_epoch():
    x, y = blobs(8)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    h = model.fit(x, y, epochs=3, initial_epoch=1, verbose=0)
    assert h.epoch == [1, 2]


# ------------------------------------------------------------------------ reproducibility
def train_once(seed, backend="im2col", dropout=True):
    fastcnn.utils.set_random_seed(seed)
    x, y = blobs(48, seed=1)
    layers = [Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)), MaxPooling2D(2),
              Flatten()]
    if dropout:
        layers.append(Dropout(0.3))
    model = fastcnn.Sequential(layers + [Dense(4, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    with fastcnn.use_backend(backend):
        h = model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=True)
    return model.get_weights(), h.history


def test_same_seed_gives_identical_weights_and_history():
    w1, h1 = train_once(5)
    w2, h2 = train_once(5)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert h1 == h2
    w3, _ = train_once(6)
    assert not np.array_equal(w1[0], w3[0])


def test_shuffle_false_visits_batches_in_order():
    x, y = blobs(16)
    seen = []

    class Spy(callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(batch)

    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    start = model.get_weights()
    model.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[Spy()])
    end_a = model.get_weights()
    model.set_weights(start)
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    for s in range(0, 16, 4):
        model.train_on_batch(x[s:s + 4], y[s:s + 4])
    for a, b in zip(end_a, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert seen == [0, 1, 2, 3]


# ------------------------------------------------------------------------ backends
def test_same_model_same_predictions_on_every_backend():
    x, y = blobs(12)
    model = fastcnn.Sequential([
        Conv2D(4, (3, 2), strides=(1, 2), padding="same", activation="relu",
               input_shape=(8, 8, 1)),
        MaxPooling2D(2, padding="same"), Conv2D(3, 2, padding="same", activation="tanh"),
        AveragePooling2D(2),
        Flatten(), Dense(5, activation="sigmoid"), Dense(4, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    results = {}
    for name in BACKENDS:
        with fastcnn.use_backend(name):
            results[name] = (model.predict(x), model.evaluate(x, y, verbose=0))
    ref_p, ref_loss = results["reference"]
    for name, (p, loss) in results.items():
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, ref_p, rtol=1e-4, atol=1e-6, err_msg=name)
        assert loss == pytest.approx(ref_loss, rel=1e-4), name


def test_training_on_each_backend_agrees_with_the_reference():
    histories = {name: train_once(3, backend=name, dropout=False) for name in BACKENDS}
    ref_w, ref_h = histories["reference"]
    for name, (w, h) in histories.items():
        for a, b in zip(w, ref_w):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(h["loss"], ref_h["loss"], rtol=1e-4, err_msg=name)


def test_switching_backend_between_batches():
    x, y = blobs(8)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=2)
    model.compile("adam", "sparse_categorical_crossentropy")
    for name in BACKENDS:
        with fastcnn.use_backend(name):
            assert np.isfinite(model.train_on_batch(x, y))


# ------------------------------------------------------------------------ dropout in a model
def dropout_model(rate=0.5):
    model = fastcnn.Sequential([Flatten(input_shape=(8, 8, 1)), Dense(16, activation="relu"),
                                Dropout(rate), Dense(4, activation="softmax")])
    model.compile(optimizers.SGD(learning_rate=0.0), "sparse_categorical_crossentropy")
    return model


def test_dropout_is_inactive_in_predict_and_evaluate():
    x, y = blobs(16)
    model = dropout_model()
    np.testing.assert_array_equal(model.predict(x), model.predict(x))
    assert model.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    without = fastcnn.Sequential([Flatten(input_shape=(8, 8, 1)),
                                  Dense(16, activation="relu"), Dense(4, activation="softmax")])
    without.set_weights(model.get_weights())
    np.testing.assert_allclose(model.predict(x), without.predict(x), rtol=1e-6)


def test_dropout_is_active_in_fit():
    x, y = blobs(16)
    model = dropout_model()
    test_loss = model.test_on_batch(x, y)
    train_losses = {model.train_on_batch(x, y) for _ in range(3)}  # lr 0: weights fixed
    assert len(train_losses) == 3 and test_loss not in train_losses


# ------------------------------------------------------------------------ learning
def test_learns_a_separable_image_problem():
    fastcnn.utils.set_random_seed(1)
    x, y = blobs(400, seed=2)
    x_test, y_test = blobs(200, seed=3)
    model = issue_model(input_shape=(8, 8, 1), classes=4, filters=8)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    elapsed = time.perf_counter() - start
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    assert acc > 0.95, (loss, acc)
    assert elapsed < 30  # a few seconds even on a busy 2-core machine


def test_learns_digits():
    digits = pytest.importorskip("fastcnn.datasets.digits",
                                 reason="the bundled digits dataset is not available")
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    x_train = x_train[..., None] / digits.MAX_PIXEL
    x_test = x_test[..., None] / digits.MAX_PIXEL
    fastcnn.utils.set_random_seed(0)
    model = issue_model(input_shape=(8, 8, 1))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=10, batch_size=32, validation_split=0.1,
                        verbose=0)
    elapsed = time.perf_counter() - start
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.85
    assert acc > 0.93, (loss, acc)
    assert elapsed < 60
