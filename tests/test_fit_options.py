"""fit's and evaluate's Keras options: sample_weight, class_weight, validation_freq, 1-D x
for a one-number input, Dense on any rank, Keras PyDataset/Sequence sources, evaluate
starting from the first batch of a reused iterator, and Keras 2's generator spellings."""
import warnings

import numpy as np
import pytest

import fastcnn
from fastcnn import gradcheck
from fastcnn.layers import Conv2D, Dense, Flatten


def _classifier(dtype="float32", seed=0):
    fastcnn.set_random_seed(seed)
    model = fastcnn.Sequential([Dense(5, activation="tanh", input_shape=(4,), dtype=dtype),
                                Dense(3, activation="softmax", dtype=dtype)])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _data(n=12, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def test_sample_weight_is_keras_weighted_mean_and_its_gradient_is_exact(monkeypatch):
    model = _classifier("float64")
    x, y = _data()
    w = np.random.default_rng(2).random(len(x)) * 2
    probs = model.predict(x, verbose=0)
    per_sample = -np.log(probs[np.arange(len(y)), y])
    loss = model.evaluate(x, y, sample_weight=w, verbose=0)[0]
    assert loss == pytest.approx((w * per_sample).sum() / len(x), rel=1e-10)
    seen = []
    monkeypatch.setattr(model.optimizer, "apply",
                        lambda grads, variables: seen.append([np.array(g) for g in grads]))
    model.train_on_batch(x, y, sample_weight=w)
    gradcheck.check_scalar_gradient(
        lambda: model.test_on_batch(x, y, sample_weight=w)[0], model.trainable_weights,
        seen[0], rtol=1e-6)


def test_class_weight_equals_the_matching_sample_weights():
    x, y = _data(30)
    cw = {0: 0.5, 2: 3.0}            # class 1 is missing: weight 1.0 (Keras)
    a, b = _classifier(seed=3), _classifier(seed=3)
    ha = a.fit(x, y, class_weight=cw, epochs=2, batch_size=8, shuffle=False, verbose=0)
    hb = b.fit(x, y, sample_weight=np.array([cw.get(int(c), 1.0) for c in y]), epochs=2,
               batch_size=8, shuffle=False, verbose=0)
    assert ha.history["loss"] == hb.history["loss"]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_weight={5: 1.0}), r"class_weight has class 5, which the data lacks"),
    (dict(class_weight={0: -1.0}), r"class_weight\[0\] must be a finite weight >= 0"),
    (dict(class_weight=[1.0, 2.0]), r"class_weight must be a dict"),
    (dict(sample_weight=np.ones(5)), r"sample_weight must hold one weight per sample, "
                                     r"shape \(12,\), got shape \(5,\)"),
    (dict(sample_weight=np.ones(12), class_weight={0: 1.0}), "not both"),
    (dict(validation_freq=0), "validation_freq must be a positive int"),
])
def test_bad_weights_and_frequencies_are_refused_before_training(kwargs, match):
    model = _classifier()
    before = model.get_weights()
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, verbose=0, **kwargs)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_validation_freq_validates_every_n_epochs():
    x, y = _data(20)
    hist = _classifier().fit(x, y, epochs=5, validation_data=(x, y), validation_freq=2,
                             verbose=0)
    assert len(hist.history["loss"]) == 5 and len(hist.history["val_loss"]) == 2


def test_the_hello_world_tutorial_takes_one_dimensional_x():
    """Keras's first tutorial: Dense(units=1, input_shape=[1]) on a 1-D array of numbers."""
    fastcnn.set_random_seed(0)
    model = fastcnn.Sequential([Dense(units=1, input_shape=[1])])
    model.compile(optimizer="sgd", loss="mean_squared_error")
    xs = np.array([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0], dtype=float)
    ys = np.array([-3.0, -1.0, 1.0, 3.0, 5.0, 7.0], dtype=float)
    model.fit(xs, ys, epochs=500, verbose=0)
    with pytest.warns(DeprecationWarning, match="Python list of numbers"):
        pred = model.predict([10.0], verbose=0)
    assert pred.shape == (1, 1) and abs(pred[0, 0] - 19.0) < 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.predict(np.array([10.0]), verbose=0).shape == (1, 1)


def test_dense_applies_to_the_last_axis_of_any_rank():
    fastcnn.set_random_seed(4)
    layer = Dense(3, activation="tanh", dtype="float64")
    layer.build((None, 2, 5, 4))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 5, 4))
    y, _ = layer.forward(x)
    np.testing.assert_allclose(y, np.tanh(x @ layer.kernel + layer.bias), rtol=1e-12)
    gradcheck.check_backward(lambda x, w, b: layer.forward(x, True),
                             lambda dy, ctx: (lambda r: (r[0],) + tuple(r[1]))(
                                 layer.backward(dy, ctx)),
                             [x, layer.kernel, layer.bias])


class Batches:
    """A Keras PyDataset / Sequence: batches by index, on_epoch_end between epochs."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.epochs_ended = 0
        self.indices = []

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i):
        self.indices.append(i)
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[s], self.y[s]

    def on_epoch_end(self):
        self.epochs_ended += 1


def test_a_pydataset_is_read_by_index_and_equals_arrays():
    x, y = _data(20)
    source = Batches(x, y, 8)
    a, b = _classifier(seed=6), _classifier(seed=6)
    ha = a.fit(source, epochs=3, verbose=0)
    hb = b.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert source.indices == [0, 1, 2] * 3 and source.epochs_ended == 2
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6)
    first = a.evaluate(Batches(x, y, 8), verbose=0)
    assert first == pytest.approx(b.evaluate(x, y, batch_size=8, verbose=0), rel=1e-6)


def test_evaluate_and_predict_start_again_from_the_first_batch_of_an_image_iterator():
    x, y = _data(20)
    x = x.reshape(20, 2, 2, 1)
    fastcnn.set_random_seed(7)
    model = fastcnn.Sequential([Flatten(input_shape=(2, 2, 1)), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    it = fastcnn.preprocessing.image.ImageDataGenerator().flow(x, y, batch_size=8,
                                                                  shuffle=False)
    first = model.evaluate(it, steps=2, verbose=0)
    again = model.evaluate(it, steps=2, verbose=0)
    assert first == again
    p1, p2 = model.predict(it, steps=2, verbose=0), model.predict(it, steps=2, verbose=0)
    np.testing.assert_array_equal(p1, p2)
    assert len(p1) == 16


def test_keras2_generator_spellings_warn_and_work():
    x, y = _data(16)

    def gen():
        while True:
            for s in range(0, 16, 8):
                yield x[s:s + 8], y[s:s + 8]

    model = _classifier()
    with pytest.warns(DeprecationWarning, match=r"use model.fit\(generator"):
        hist = model.fit_generator(gen(), steps_per_epoch=2, epochs=2, verbose=0, workers=4)
    assert len(hist.history["loss"]) == 2
    with pytest.warns(DeprecationWarning, match="evaluate_generator"):
        model.evaluate_generator(gen(), steps=2)
    with pytest.warns(DeprecationWarning, match="predict_generator"):
        assert model.predict_generator(gen(), steps=2).shape == (16, 3)


def test_an_iterator_may_yield_sample_weights():
    x, y = _data(16)
    w = np.linspace(0.5, 2.0, 16)

    def gen():
        while True:
            for s in range(0, 16, 8):
                yield x[s:s + 8], y[s:s + 8], w[s:s + 8]

    a, b = _classifier(seed=8), _classifier(seed=8)
    ha = a.fit(gen(), steps_per_epoch=2, epochs=2, verbose=0)
    hb = b.fit(x, y, sample_weight=w, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-6)


def test_conv_model_with_sample_weight_runs_on_the_fast_backends():
    fastcnn.set_random_seed(9)
    model = fastcnn.Sequential([Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)),
                                Flatten(), Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(9)
    x, y = rng.random((8, 6, 6, 1)), rng.integers(0, 2, 8)
    hist = model.fit(x, y, sample_weight=np.r_[np.zeros(4), np.ones(4)], epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
