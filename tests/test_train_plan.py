"""The compiled train step (fastcnn.train_plan): the same bits as the general step, used
where it applies, refused (and the general step run) where it does not."""
import fastcnn
import numpy as np
import pytest

from fastcnn import layers, optimizers, train_plan
from fastcnn.training import NonFiniteLossError


def _scratch(opt):
    fastcnn.set_random_seed(3)
    m = fastcnn.Sequential([layers.Input((12, 12, 1)), layers.Conv2D(4, 3, use_bias=False),
                            layers.MaxPooling2D(2), layers.Flatten(),
                            layers.Dense(5, activation="softmax")])
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def _tutorial(opt):
    """ReLU + pool (the fused step), tanh and average pooling, BatchNormalization and
    Dropout (run by their own forward/backward), a sigmoid head."""
    fastcnn.set_random_seed(4)
    m = fastcnn.Sequential([
        layers.Input((14, 14, 3)),
        layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(8, 3, padding="same", activation="tanh"), layers.AveragePooling2D(2),
        layers.BatchNormalization(), layers.Flatten(), layers.Dropout(0.3),
        layers.Dense(12, activation="relu"), layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    return m


def _functional_chain(opt):
    fastcnn.set_random_seed(5)
    inp = fastcnn.Input((10, 10, 2))
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")(inp)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(3)(x)
    m = fastcnn.Model(inp, out)
    m.compile(optimizer=opt, loss=fastcnn.losses.CategoricalCrossentropy(from_logits=True))
    return m


def _regularized_constrained(opt):
    """Regularizers, a max-norm constraint, PReLU (its own regularizer hook)."""
    fastcnn.set_random_seed(6)
    m = fastcnn.Sequential([
        layers.Input((8, 8, 2)),
        layers.Conv2D(4, 3, kernel_regularizer=fastcnn.regularizers.L2(0.01),
                      kernel_constraint=fastcnn.constraints.MaxNorm(0.5)),
        layers.PReLU(shared_axes=[1, 2]), layers.GlobalAveragePooling2D(),
        layers.Dense(3, bias_regularizer=fastcnn.regularizers.L1(0.02),
                     activation="softmax")])
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    return m


def _graph(opt):
    """Not a chain: a residual Add, a Concatenate of two branches, a Dense layer called
    twice (its gradients summed before its one update)."""
    fastcnn.set_random_seed(7)
    inp = fastcnn.Input((9, 9, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    y = layers.Conv2D(6, 3, padding="same")(x)
    x = layers.Activation("relu")(layers.Add()([x, y]))
    a = layers.GlobalAveragePooling2D()(x)
    b = layers.GlobalMaxPooling2D()(layers.MaxPooling2D(2)(x))
    shared = layers.Dense(6, activation="tanh")
    z = layers.Concatenate()([shared(a), shared(b)])
    m = fastcnn.Model(inp, layers.Dense(4, activation="softmax")(z))
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    return m


MODELS = {"scratch": (_scratch, (12, 12, 1), "sparse", 5),
          "graph": (_graph, (9, 9, 3), "sparse", 4),
          "regularized": (_regularized_constrained, (8, 8, 2), "sparse", 3),
          "tutorial": (_tutorial, (14, 14, 3), "binary", 1),
          "functional": (_functional_chain, (10, 10, 2), "onehot", 3)}

OPTIMIZERS = {
    "adam": lambda: optimizers.Adam(1e-2),
    "sgd_nesterov": lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: optimizers.RMSprop(1e-2),
    "adagrad": lambda: optimizers.Adagrad(0.05),
    "adadelta": lambda: optimizers.Adadelta(1.0),
    "adamax": lambda: optimizers.Adamax(1e-2),
    "nadam": lambda: optimizers.Nadam(1e-2),
    "lion": lambda: optimizers.Lion(1e-3),
    # per-weight gradient processing: decay, clipping, loss scaling, EMA
    "adamw": lambda: optimizers.AdamW(1e-2, weight_decay=0.05),
    "sgd_clipnorm": lambda: optimizers.SGD(0.05, momentum=0.9, clipnorm=0.05),
    "adam_clipvalue_ema_scale": lambda: optimizers.Adam(
        1e-2, clipvalue=0.01, use_ema=True, ema_overwrite_frequency=2,
        loss_scale_factor=4.0),
}


def _data(shape, kind, k, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    if kind == "sparse":
        y = rng.integers(0, k, n)
    elif kind == "binary":
        y = rng.integers(0, 2, (n, 1)).astype(np.float32)
    else:
        y = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    return x, y


def _train(monkeypatch, mode, build, opt, batches):
    monkeypatch.setenv("FASTCNN_TRAIN_PLAN", mode)
    model = build(opt())
    fastcnn.set_random_seed(11)   # Dropout's draws
    logs = [model.train_on_batch(x, y, return_dict=True) for x, y in batches]
    state = [w.copy() for w in model.get_weights()]
    slots = {k: [a.copy() for a in v] for k, v in model.optimizer._slots.items()}
    return model, logs, state, slots


def _compiled_equals_general(monkeypatch, build, opt, batches):
    """Trains with the compiled step and with the general one; the same bits, and the
    compiled step was really used."""
    compiled = _train(monkeypatch, "1", build, opt, batches)
    assert isinstance(compiled[0]._plan.compiled_step, train_plan.TrainStep)
    general = _train(monkeypatch, "0", build, opt, batches)
    assert general[0]._plan.compiled_step is None
    _same(compiled, general)
    return compiled, general


def _same(a, b):
    _, logs_a, w_a, s_a = a
    _, logs_b, w_b, s_b = b
    assert logs_a == logs_b
    assert all(np.array_equal(p, q) for p, q in zip(w_a, w_b))
    assert s_a.keys() == s_b.keys()
    for k in s_a:
        assert all(np.array_equal(p, q) for p, q in zip(s_a[k], s_b[k])), k


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_compiled_step_gives_the_general_steps_bits(monkeypatch, name, opt):
    build, shape, kind, k = MODELS[name]
    batches = [_data(shape, kind, k, n, seed) for seed, n in enumerate((1, 1, 3, 3, 2))]
    compiled, general = _compiled_equals_general(monkeypatch, build, OPTIMIZERS[opt],
                                                 batches)
    assert compiled[0].optimizer.iterations == general[0].optimizer.iterations == 5


def test_known_layers_are_bound_to_their_kernels_others_run_their_own_methods(monkeypatch):
    monkeypatch.setenv("FASTCNN_TRAIN_PLAN", "1")
    model = _tutorial(optimizers.Adam())
    x, y = _data((14, 14, 3), "binary", 1, 2)
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    step = model._plan.compiled_step
    kinds = [f.__qualname__.split(".")[0] for f in step.runs]
    # conv+relu+pool fused (its own forward), conv+tanh, avgpool, BatchNormalization (own),
    # Flatten, Dropout (own), Dense, Dense (head without its sigmoid: the loss fuses it)
    assert kinds == ["ReluAfterMaxPool", "_bind_kernel_layer", "_bind_pool",
                     "BatchNormalization", "_bind_flatten", "Dropout", "_bind_kernel_layer",
                     "_bind_kernel_layer"]


def test_fit_with_a_short_last_batch_and_a_learning_rate_schedule(monkeypatch):
    x, y = _data((12, 12, 1), "sparse", 5, 11)
    histories, weights = [], []
    for mode in ("1", "0"):
        monkeypatch.setenv("FASTCNN_TRAIN_PLAN", mode)
        model = _scratch(optimizers.Adam(1e-2))
        sched = fastcnn.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
        h = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
                      validation_data=(x[:3], y[:3]), callbacks=[sched])
        histories.append(h.history)
        weights.append(model.get_weights())
        if mode == "1":   # batches of 4 and the last one of 3: one compiled step each
            assert sorted(k[0][0][0] for k in model._plan.other_steps) == [
                (3, 12, 12, 1), (4, 12, 12, 1)]
    assert histories[0] == histories[1]
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_weights_set_between_steps_and_a_frozen_layer_are_seen(monkeypatch):
    x, y = _data((12, 12, 1), "sparse", 5, 2)
    results = []
    for mode in ("1", "0"):
        monkeypatch.setenv("FASTCNN_TRAIN_PLAN", mode)
        model = _scratch(optimizers.SGD(0.1, momentum=0.5))
        model.train_on_batch(x, y)
        model.set_weights([w * 0.5 for w in model.get_weights()])
        model.train_on_batch(x, y)
        model.layers[0].trainable = False   # a new training plan: the dense layer only
        model.compile(optimizer=optimizers.SGD(0.1, momentum=0.5),
                      loss="sparse_categorical_crossentropy")
        model.train_on_batch(x, y)
        losses = model.train_on_batch(x, y)
        results.append((losses, model.get_weights()))
    assert results[0][0] == results[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_a_non_finite_loss_raises_before_any_weight_changes(monkeypatch):
    monkeypatch.setenv("FASTCNN_TRAIN_PLAN", "1")
    model = _scratch(optimizers.Adam())
    x, y = _data((12, 12, 1), "sparse", 5, 2)
    model.train_on_batch(x, y)   # (the first step binds the optimizer: the general one)
    model.train_on_batch(x, y)
    assert isinstance(model._plan.compiled_step, train_plan.TrainStep)
    before = [w.copy() for w in model.get_weights()]
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match="in train_on_batch"):
        model.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.optimizer.iterations == 2


def test_bad_labels_are_refused_before_the_step(monkeypatch):
    monkeypatch.setenv("FASTCNN_TRAIN_PLAN", "1")
    model = _scratch(optimizers.Adam())
    x, _ = _data((12, 12, 1), "sparse", 5, 2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\].*got labels in \[0, 5\]"):
        model.train_on_batch(x, np.array([0, 5]))


class Doubling(layers.Layer):
    """A user's layer with its own forward/backward (the compiled step refuses it)."""

    def _build(self, input_shape, dtype):
        return input_shape

    def forward(self, x, training=False):
        return x * 2, None

    def backward(self, dy, ctx, need_dx=True):
        return dy * 2, ()


@pytest.mark.parametrize("case, reason", [
    ("custom", "custom layer 'doubling' (Doubling)"),
    ("nested", "layer 'twice' is used inside and outside a nested model"),
])
def test_models_the_plan_refuses_train_by_the_general_step(monkeypatch, case, reason):
    monkeypatch.setenv("FASTCNN_TRAIN_PLAN", "1")
    fastcnn.set_random_seed(1)
    if case == "custom":
        model = fastcnn.Sequential([layers.Input((4,)), layers.Dense(3), Doubling(),
                                    layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        x, y = np.ones((2, 4), np.float32), np.ones((2, 1), np.float32)
    else:
        twice = layers.Dense(3, name="twice")
        inner = fastcnn.Sequential([layers.Input((3,)), twice], name="inner")
        inp = fastcnn.Input((3,))
        model = fastcnn.Model(inp, layers.Dense(1)(twice(inner(inp))))
        model.compile(optimizer="adam", loss="mse")
        x, y = np.ones((2, 3), np.float32), np.ones((2, 1), np.float32)
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    assert reason in model._plan.compiled_step
    assert train_plan.why_not(model, model._plan) == model._plan.compiled_step


def test_global_clipping_takes_the_general_step_while_it_is_set(monkeypatch):
    monkeypatch.setenv("FASTCNN_TRAIN_PLAN", "1")
    x, y = _data((12, 12, 1), "sparse", 5, 3)
    model = _scratch(optimizers.Adam(global_clipnorm=1.0))
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    assert model._plan.compiled_step is None        # refused for now, not for good
    assert "global_clipnorm" in train_plan.why_not(model, model._plan)
    model.optimizer.global_clipnorm = None
    model.train_on_batch(x, y)
    assert isinstance(model._plan.compiled_step, train_plan.TrainStep)



def test_clipping_switched_on_between_steps_applies_at_once(monkeypatch):
    x, y = _data((12, 12, 1), "sparse", 5, 3)
    out = []
    for mode in ("1", "0"):
        monkeypatch.setenv("FASTCNN_TRAIN_PLAN", mode)
        model = _scratch(optimizers.SGD(0.5, momentum=0.5))
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
        model.optimizer.clipnorm = 0.01   # per weight: the compiled step applies it too
        model.optimizer.weight_decay = 0.1
        model.train_on_batch(x, y)
        if mode == "1":
            assert isinstance(model._plan.compiled_step, train_plan.TrainStep)
        out.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*out))


def test_sample_and_class_weights(monkeypatch):
    x, y = _data((12, 12, 1), "sparse", 5, 3)
    out = []
    for mode in ("1", "0"):
        monkeypatch.setenv("FASTCNN_TRAIN_PLAN", mode)
        model = _scratch(optimizers.Adam(1e-2))
        logs = [model.train_on_batch(x, y, sample_weight=np.array([1.0, 0.0, 2.0])),
                model.train_on_batch(x, y, class_weight={0: 2.0, 1: 0.5}),
                model.train_on_batch(x, y, sample_weight=np.array([0.5, 1.0, 1.0]))]
        h = model.fit(x, y, sample_weight=np.array([1.0, 2.0, 3.0]), batch_size=2, epochs=2,
                      verbose=0, shuffle=False)
        if mode == "1":
            assert isinstance(model._plan.compiled_step, train_plan.TrainStep)
        out.append((logs, h.history, model.get_weights()))
    assert out[0][0] == out[1][0] and out[0][1] == out[1][1]
    assert all(np.array_equal(a, b) for a, b in zip(out[0][2], out[1][2]))


def _two_in_two_out(opt):
    fastcnn.set_random_seed(8)
    img, extra = fastcnn.Input((8, 8, 1), name="img"), fastcnn.Input((3,), name="extra")
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="relu")(img))
    z = layers.Concatenate()([x, layers.Dense(4, activation="relu")(extra)])
    cls = layers.Dense(3, activation="softmax", name="cls")(z)
    reg = layers.Dense(1, name="reg")(z)
    m = fastcnn.Model([img, extra], [cls, reg])
    m.compile(optimizer=opt, loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
              loss_weights={"cls": 1.0, "reg": 0.5}, metrics={"cls": ["accuracy"]})
    return m


def test_several_inputs_and_outputs_with_loss_weights_and_metrics(monkeypatch):
    rng = np.random.default_rng(4)
    batches = [([rng.standard_normal((n, 8, 8, 1)).astype(np.float32),
                 rng.standard_normal((n, 3)).astype(np.float32)],
                {"cls": rng.integers(0, 3, n), "reg": rng.standard_normal((n, 1))})
               for n in (2, 2, 3)]
    compiled, _ = _compiled_equals_general(monkeypatch, _two_in_two_out, OPTIMIZERS["adam"],
                                           batches)
    assert set(compiled[1][-1]) == {"loss", "cls_loss", "reg_loss", "cls_accuracy"}


def _frozen_base(opt):
    """Transfer learning's shape: a frozen base model nested in a new one."""
    fastcnn.set_random_seed(9)
    base = fastcnn.Sequential([layers.Input((10, 10, 3)), layers.Conv2D(8, 3, activation="relu"),
                               layers.BatchNormalization(), layers.MaxPooling2D(2)],
                              name="base")
    base.trainable = False
    m = fastcnn.Sequential([base, layers.GlobalAveragePooling2D(), layers.Dropout(0.2),
                            layers.Dense(1, activation="sigmoid")])
    m.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    return m


def test_a_frozen_nested_base_runs_as_one_step_of_the_compiled_step(monkeypatch):
    batches = [_data((10, 10, 3), "binary", 1, n, seed) for seed, n in enumerate((2, 2, 3))]
    _compiled_equals_general(monkeypatch, _frozen_base, OPTIMIZERS["rmsprop"], batches)


def _fine_tuning(opt):
    """Transfer learning's second phase: the nested base partly unfrozen."""
    m = _frozen_base(opt)
    base = m.layers[0]
    base.trainable = True
    base.layers[0].trainable = False   # the first conv stays frozen, BN and the rest train
    m.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
    return m


def test_fine_tuning_a_nested_base_updates_its_layers_in_the_compiled_step(monkeypatch):
    batches = [_data((10, 10, 3), "binary", 1, n, seed) for seed, n in enumerate((2, 3, 2))]
    _compiled_equals_general(monkeypatch, _fine_tuning, OPTIMIZERS["adam"], batches)
