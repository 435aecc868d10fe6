"""Transfer learning as the tutorials do it (examples/transfer_learning.py): a frozen base
runs in inference mode and the backward stops at the first trainable layer.

* A frozen BatchNormalization normalizes with its moving statistics during ``fit`` and does
  not update them (Keras 3: ``trainable=False`` on a BatchNormalization layer means
  inference mode).
* No gradient is computed through the frozen part: no backward of a frozen layer runs (no
  backend ``conv2d_backward`` call), and the first trainable layer is told ``need_dx=False``.

Small Functional models on the reference backend (milliseconds), then InceptionV3 itself
at its smallest input (75x75) cut at 'mixed7' as the tutorial cuts it.
"""
import fastcnn
import numpy as np
import pytest

from fastcnn import backends, layers
from fastcnn.applications.inception_v3 import InceptionV3


@pytest.fixture(autouse=True)
def _reference_backend():
    with fastcnn.use_backend("reference"):
        yield


@pytest.fixture
def conv_backward_calls(monkeypatch):
    """Counts the reference backend's conv2d_backward calls (what a Conv2D's backward runs)."""
    backend = backends.get("reference")
    calls = []
    real = backend.conv2d_backward

    def counting(dy, ctx, need_dx=True):
        calls.append(need_dx)
        return real(dy, ctx, need_dx)

    monkeypatch.setattr(backend, "conv2d_backward", counting)
    return calls


def _small_base(seed=0):
    """conv-BN-relu twice (InceptionV3's conv2d_bn), with moving statistics far from any
    batch's, so that batch mode and inference mode give different outputs."""
    fastcnn.set_random_seed(seed)
    inp = fastcnn.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp)
    x = layers.BatchNormalization(scale=False, name="bn1")(x)
    x = layers.Activation("relu", name="r1")(x)
    x = layers.Conv2D(6, 3, use_bias=False, name="c2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.Activation("relu", name="cut")(x)
    base = fastcnn.Model(inp, x)
    rng = np.random.default_rng(seed)
    for name in ("bn1", "bn2"):
        bn = base.get_layer(name)
        bn.moving_mean[...] = rng.uniform(-0.5, 0.5, bn.moving_mean.shape)
        bn.moving_variance[...] = rng.uniform(2.0, 4.0, bn.moving_variance.shape)
    return base


def _head(base, cut="cut", dropout=None):
    x = layers.Flatten()(base.get_layer(cut).output)
    x = layers.Dense(8, activation="relu", name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(1, activation="sigmoid", name="fc2")(x)
    model = fastcnn.Model(base.input, x)
    model.compile(optimizer=fastcnn.optimizers.RMSprop(learning_rate=1e-3),
                  loss="binary_crossentropy")
    return model


def _freeze(base):
    for layer in base.layers:
        layer.trainable = False


def _data(n=6, shape=(8, 8, 3), seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, (n,) + shape).astype("float32")
    y = (np.arange(n) % 2).reshape(-1, 1).astype("float32")
    return x, y


def _bce(y, p):
    p = np.clip(p.astype("float64"), 1e-7, 1 - 1e-7)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def _base_weights(base):
    return {f"{layer.name}/{i}": np.array(w, copy=True)
            for layer in base.layers for i, w in enumerate(layer.get_weights())}


def _same(before, base):
    after = _base_weights(base)
    return [k for k in before if not np.array_equal(before[k], after[k])]


def test_frozen_batchnorm_trains_in_inference_mode():
    base = _small_base()
    _freeze(base)
    model = _head(base)
    x, y = _data()
    before = _base_weights(base)
    expected = _bce(y, model.predict(x, verbose=0))   # inference mode: moving statistics
    loss = float(model.train_on_batch(x, y))          # the loss before the update
    assert loss == pytest.approx(expected, rel=1e-5)
    assert _same(before, base) == [], "a frozen weight or moving statistic changed"


def test_unfrozen_batchnorm_trains_in_batch_mode():
    """The control: the same model, not frozen, normalizes with the batch's statistics (the
    loss differs from the inference-mode one) and moves its moving statistics."""
    base = _small_base()
    model = _head(base)
    x, y = _data()
    expected = _bce(y, model.predict(x, verbose=0))
    mean_before = base.get_layer("bn2").moving_mean.copy()
    loss = float(model.train_on_batch(x, y))
    assert abs(loss - expected) > 1e-3 * max(1.0, expected)
    assert not np.array_equal(mean_before, base.get_layer("bn2").moving_mean)


def test_frozen_base_weights_do_not_move_and_the_head_does():
    base = _small_base()
    _freeze(base)
    model = _head(base, dropout=0.2)
    x, y = _data()
    before = _base_weights(base)
    head_before = [w.copy() for w in model.get_layer("fc1").get_weights()]
    model.fit(x, y, epochs=2, batch_size=3, verbose=0)
    assert _same(before, base) == []
    assert any(not np.array_equal(a, b)
               for a, b in zip(head_before, model.get_layer("fc1").get_weights()))


def _record_backwards(model):
    """Wraps each leaf layer's backward (before the program is built: its steps capture the
    bound method) to record need_dx per layer name."""
    seen = {}
    for layer in model._leaf_layers():
        real = layer.backward

        def wrapper(dy, ctx, need_dx=True, _real=real, _name=layer.name):
            seen.setdefault(_name, []).append(need_dx)
            return _real(dy, ctx, need_dx)

        layer.backward = wrapper
    return seen


def test_backward_stops_at_the_first_trainable_layer(conv_backward_calls):
    base = _small_base()
    _freeze(base)
    model = _head(base, dropout=0.2)
    seen = _record_backwards(model)
    x, y = _data()
    model.train_on_batch(x, y)
    assert conv_backward_calls == []
    assert seen.get("fc1") == [False], seen       # the first trainable layer: no dx
    assert seen.get("fc2") == [True], seen
    frozen = {layer.name for layer in base.layers}
    assert frozen & set(seen) == set(), seen      # no frozen layer's backward ran
    # The compiled program says the same: no step before fc1 runs a backward.
    steps = model._plan.program.steps
    names = [s.name for s in steps]
    first = names.index("fc1")
    assert not any(s.backprop for s in steps[:first]), [(s.name, s.backprop) for s in steps]
    assert steps[first].need_dx is False


def test_unfrozen_base_runs_its_backward(conv_backward_calls):
    """The control: nothing frozen, both convs run their backward (the first without dx:
    nothing upstream needs it)."""
    base = _small_base()
    model = _head(base)
    x, y = _data()
    model.train_on_batch(x, y)
    assert sorted(conv_backward_calls) == [False, True]


def test_partly_frozen_base_backward_stops_at_its_first_trainable_layer(conv_backward_calls):
    """The tutorial's fine-tuning variant: the layers after a cut point trainable."""
    base = _small_base()
    _freeze(base)
    for name in ("c2", "bn2"):
        base.get_layer(name).trainable = True
    model = _head(base)
    seen = _record_backwards(model)
    model.train_on_batch(*_data())
    assert conv_backward_calls == [False]          # c2's weights, no dx into the frozen c1
    assert "c1" not in seen and "bn1" not in seen and "r1" not in seen, seen


def test_unfreezing_after_training_rebuilds_the_backward(conv_backward_calls):
    base = _small_base()
    _freeze(base)
    model = _head(base)
    x, y = _data()
    model.train_on_batch(x, y)
    assert conv_backward_calls == []
    for layer in base.layers:
        layer.trainable = True
    model.compile(optimizer=fastcnn.optimizers.RMSprop(learning_rate=1e-3),
                  loss="binary_crossentropy")
    kernel = base.get_layer("c1").kernel.copy()
    model.train_on_batch(x, y)
    assert sorted(conv_backward_calls) == [False, True]
    assert not np.array_equal(kernel, base.get_layer("c1").kernel)


def test_freezing_after_training_stops_the_backward(conv_backward_calls):
    base = _small_base()
    model = _head(base)
    x, y = _data()
    model.train_on_batch(x, y)
    assert len(conv_backward_calls) == 2
    _freeze(base)
    model.compile(optimizer=fastcnn.optimizers.RMSprop(learning_rate=1e-3),
                  loss="binary_crossentropy")
    del conv_backward_calls[:]
    before = _base_weights(base)
    model.train_on_batch(x, y)
    assert _same(before, base) == []
    assert conv_backward_calls == []


def test_inception_v3_frozen_at_mixed7_the_tutorial_model(conv_backward_calls):
    """The tutorial's model at InceptionV3's smallest input: frozen base, head on 'mixed7'.
    One step: no conv backward anywhere in the base (94 convs), its weights and moving
    statistics unchanged, the loss equal to the inference-mode one (no Dropout here)."""
    fastcnn.utils.clear_session()
    fastcnn.set_random_seed(0)
    base = InceptionV3(input_shape=(75, 75, 3), include_top=False, weights=None)
    _freeze(base)
    model = _head(base, cut="mixed7")
    assert base.get_layer("mixed7").output.shape == (None, 3, 3, 768)
    seen = _record_backwards(model)
    x, y = _data(n=2, shape=(75, 75, 3))
    before = _base_weights(base)
    expected = _bce(y, model.predict(x, verbose=0))
    loss = float(model.train_on_batch(x, y))
    assert loss == pytest.approx(expected, rel=1e-4)
    assert conv_backward_calls == []
    assert sorted(seen) == ["fc1", "fc2"] and seen["fc1"] == [False], seen
    assert _same(before, base) == []
