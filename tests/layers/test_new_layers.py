"""BatchNormalization, GlobalAverage/MaxPooling2D, ZeroPadding2D, Reshape, Rescaling.

Gradient checks per layer (float64, random dy, every parameter), Keras semantics (batch
statistics and the momentum rule, inference mode, freezing), summary shapes and counts,
configs, bad arguments, cross-backend equivalence of models holding the layers, and a
whole-model gradient check through train_on_batch.
"""
import json

import numpy as np
import pytest

import fastcnn
from fastcnn import gradcheck, regularizers
from fastcnn.layers import (BatchNormalization, Conv2D, Dense, Flatten, GlobalAveragePooling2D,
                            GlobalMaxPooling2D, MaxPooling2D, Rescaling, Reshape, ZeroPadding2D)


@pytest.fixture
def float64():
    previous = fastcnn.floatx()
    fastcnn.set_floatx("float64")
    try:
        yield
    finally:
        fastcnn.set_floatx(previous)


def built(layer, shape, dtype="float64"):
    layer.build((None,) + tuple(shape[1:]), dtype)
    return layer


def layer_op(layer):
    """The layer as a gradcheck op (the gradient with respect to its input)."""
    def forward(x):
        return layer.forward(x, training=True)

    def backward(dy, ctx):
        dx, grads = layer.backward(dy, ctx)
        assert len(grads) == len(layer._param_slots())
        return dx

    return forward, backward


# ------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("shape", [(3, 4, 5, 3), (6, 4)])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
def test_batchnorm_training_gradients(shape, center, scale, rng):
    layer = built(BatchNormalization(center=center, scale=scale), shape)
    c = shape[-1]
    gamma = rng.uniform(0.5, 2.0, c)
    beta = rng.standard_normal(c)
    x = rng.standard_normal(shape) * 2.0 + 0.5

    def forward(x, gamma, beta):
        if scale:
            layer.gamma[...] = gamma
        if center:
            layer.beta[...] = beta
        return layer.forward(x, training=True)

    def backward(dy, ctx):
        # The checker restores gamma/beta before calling backward; forward may have seen
        # perturbed ones last, so the layer gets the current values back first.
        if scale:
            layer.gamma[...] = gamma
        if center:
            layer.beta[...] = beta
        dx, grads = layer.backward(dy, ctx)
        grads = list(grads)
        assert len(grads) == int(scale) + int(center)
        return dx, grads.pop(0) if scale else None, grads.pop(0) if center else None

    inputs = [x, gamma if scale else None, beta if center else None]
    gradcheck.check_backward(forward, backward, inputs)


def test_batchnorm_inference_mode_gradient(rng):
    layer = built(BatchNormalization(), (2, 3, 3, 4))
    layer.set_weights([rng.uniform(0.5, 2, 4), rng.standard_normal(4),
                       rng.standard_normal(4), rng.uniform(0.5, 2, 4)])
    layer.trainable = False  # Keras: a frozen BN runs in inference mode, even in training
    forward, backward = layer_op(layer)
    gradcheck.check_backward(forward, backward, [rng.standard_normal((2, 3, 3, 4))])


@pytest.mark.parametrize("make,shape", [
    (lambda: GlobalAveragePooling2D(), (2, 3, 4, 3)),
    (lambda: GlobalAveragePooling2D(keepdims=True), (2, 3, 4, 3)),
    (lambda: GlobalMaxPooling2D(), (2, 3, 4, 3)),
    (lambda: GlobalMaxPooling2D(keepdims=True), (2, 4, 3, 2)),
    (lambda: ZeroPadding2D(((1, 2), (0, 3))), (2, 3, 4, 2)),
    (lambda: ZeroPadding2D(2), (1, 2, 3, 2)),
    (lambda: Reshape((-1, 3)), (2, 4, 3, 2)),
    (lambda: Reshape((6, 4)), (2, 4, 3, 2)),
    (lambda: Rescaling(1.7, offset=-0.3), (2, 3, 2, 2)),
], ids=["gap", "gap_keepdims", "gmp", "gmp_keepdims", "pad_asym", "pad_int", "reshape_-1",
        "reshape", "rescaling"])
def test_layer_gradients(make, shape, rng):
    layer = built(make(), shape)
    forward, backward = layer_op(layer)
    # off_kinks: distinct values, so no max has a tie an eps nudge could flip
    gradcheck.check_backward(forward, backward, [gradcheck.off_kinks(shape, rng)])


def test_global_max_pooling_first_max_takes_the_gradient():
    layer = built(GlobalMaxPooling2D(), (1, 2, 2, 1))
    x = np.zeros((1, 2, 2, 1))  # all tied
    x[0, 1, 0, 0] = x[0, 1, 1, 0] = 1.0
    y, ctx = layer.forward(x, training=True)
    assert y[0, 0] == 1.0
    dx, grads = layer.backward(np.array([[5.0]]), ctx)
    assert grads == ()
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 0], [5, 0]])


# ------------------------------------------------------------- semantics
def test_batchnorm_training_uses_batch_statistics_and_keras_momentum(rng):
    x = rng.standard_normal((4, 3, 5, 2)) * 3 + 2
    layer = built(BatchNormalization(momentum=0.9, epsilon=1e-3), x.shape)
    gamma, beta = np.array([2.0, 0.5]), np.array([1.0, -1.0])
    layer.gamma[...], layer.beta[...] = gamma, beta
    y, _ = layer.forward(x, training=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * gamma + beta, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_variance, 0.9 + 0.1 * var, rtol=1e-12)
    # Inference: the moving statistics, not the batch's.
    y_inf, _ = layer.forward(x, training=False)
    expected = (x - layer.moving_mean) / np.sqrt(layer.moving_variance + 1e-3) * gamma + beta
    np.testing.assert_allclose(y_inf, expected, rtol=1e-12)


def test_batchnorm_2d_input_and_float32_stays_float32(rng):
    x = (rng.standard_normal((8, 5)) * 4).astype(np.float32)
    layer = built(BatchNormalization(), x.shape, "float32")
    y, ctx = layer.forward(x, training=True)
    assert y.dtype == np.float32 and layer.moving_mean.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=0), 1 / np.sqrt(1 + 1e-3 / x.var(axis=0)), rtol=1e-4)
    dx, grads = layer.backward(rng.standard_normal((8, 5)).astype(np.float32), ctx)
    assert len(grads) == 2
    assert dx.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize("layer,shape", [
    (GlobalAveragePooling2D(), (2, 3, 3, 2)), (GlobalMaxPooling2D(), (2, 3, 3, 2)),
    (ZeroPadding2D(1), (2, 3, 3, 2)), (Reshape((-1,)), (2, 3, 3, 2)),
    (Rescaling(1 / 255), (2, 3, 3, 2)),
])
def test_float32_in_float32_out(layer, shape, rng):
    built(layer, shape, "float32")
    x = rng.standard_normal(shape).astype(np.float32)
    x_copy = x.copy()
    y, ctx = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy_copy = dy.copy()
    dx, grads = layer.backward(dy, ctx)
    assert grads == ()
    assert y.dtype == np.float32 and dx.dtype == np.float32 and dx.shape == x.shape
    assert dx.flags.c_contiguous
    np.testing.assert_array_equal(x, x_copy)    # inputs untouched
    np.testing.assert_array_equal(dy, dy_copy)


def test_layer_values(rng, float64):
    x = rng.standard_normal((2, 3, 4, 2))
    np.testing.assert_allclose(GlobalAveragePooling2D()(x), x.mean(axis=(1, 2)))
    np.testing.assert_array_equal(GlobalMaxPooling2D()(x), x.max(axis=(1, 2)))
    np.testing.assert_array_equal(GlobalMaxPooling2D(keepdims=True)(x),
                                  x.max(axis=(1, 2), keepdims=True))
    np.testing.assert_array_equal(ZeroPadding2D(((1, 0), (2, 1)))(x),
                                  np.pad(x, ((0, 0), (1, 0), (2, 1), (0, 0))))
    np.testing.assert_array_equal(Reshape((4, -1))(x), x.reshape(2, 4, 6))
    np.testing.assert_allclose(Rescaling(0.5, offset=2.0)(x), x * 0.5 + 2.0)
    # Rescaling(1/255) takes raw uint8 pixels (the model converts to its dtype first)
    pixels = np.array([[[[0], [255]]]], dtype=np.uint8)
    np.testing.assert_allclose(Rescaling(1 / 255)(pixels), [[[[0.0], [1.0]]]], rtol=1e-6)


def test_frozen_batchnorm_runs_in_inference_mode_and_fit_changes_nothing(rng):
    model = fastcnn.Sequential([
        Conv2D(4, 3, input_shape=(6, 6, 2)), BatchNormalization(),
        GlobalAveragePooling2D(), Dense(3, activation="softmax")])
    bn = model.layers[1]
    bn.set_weights([np.full(4, 1.5), np.full(4, 0.2), np.full(4, 0.3), np.full(4, 2.0)])
    bn.trainable = False
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((8, 6, 6, 2)), np.arange(8) % 3
    frozen = bn.get_weights()
    conv_before = model.layers[0].get_weights()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    for a, b in zip(frozen, bn.get_weights()):
        np.testing.assert_array_equal(a, b)          # gamma, beta AND moving statistics
    assert any(np.any(a != b) for a, b in zip(conv_before, model.layers[0].get_weights()))
    h = np.asarray(model.layers[0](x.astype(np.float32)))
    np.testing.assert_array_equal(bn.forward(h, training=True)[0],
                                  bn.forward(h, training=False)[0])
    lines = []
    model.summary(print_fn=lines.append)
    assert "Non-trainable params: 16" in lines  # all four BN arrays of 4 channels


def test_trainable_batchnorm_in_fit_trains_gamma_beta_and_updates_moving_stats(rng):
    model = fastcnn.Sequential([
        Conv2D(4, 3, input_shape=(6, 6, 2)), BatchNormalization(momentum=0.5),
        GlobalAveragePooling2D(), Dense(3, activation="softmax")])
    bn = model.layers[1]
    # The optimizer sees gamma and beta only, in the order of bn.backward's grads.
    assert [w is v for w, v in zip(bn.trainable_weights, [bn.gamma, bn.beta])] == [True, True]
    assert len(model.trainable_weights) == 6 and len(model.non_trainable_weights) == 2
    assert len(model.get_weights()) == 8
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = rng.standard_normal((8, 6, 6, 2)), np.arange(8) % 3
    before = bn.get_weights()
    h = np.asarray(model.layers[0](x.astype(np.float32)))  # what BN sees in the step below
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    after = bn.get_weights()
    assert all(np.any(a != b) for a, b in zip(before, after))
    # The moving statistics follow the batch (momentum rule), not the optimizer.
    np.testing.assert_allclose(after[2], 0.5 * before[2] + 0.5 * h.mean(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)


def summary_rows(model):
    lines = []
    model.summary(print_fn=lines.append)
    rows = []
    for line in lines:
        if line.startswith(tuple(layer.name + " " for layer in model.layers)):
            # Keras's default columns: type at 0, output shape at 29, params at 55
            rows.append((line[29:55].strip(), int(line[55:])))
    return rows, lines


def test_summary_shapes_and_param_counts_match_keras():
    model = fastcnn.Sequential([
        Rescaling(1 / 255, input_shape=(28, 28, 1)),
        ZeroPadding2D(((1, 2), (3, 4))),
        Conv2D(32, 3),
        BatchNormalization(),
        MaxPooling2D(2),
        Reshape((-1, 32)),
        Reshape((14, 16, 32)),
        GlobalMaxPooling2D(),
        Reshape((4, 8)),
        Flatten(),
        BatchNormalization(center=False),
        Dense(10)])
    rows, lines = summary_rows(model)
    assert rows == [
        ("(None, 28, 28, 1)", 0), ("(None, 31, 35, 1)", 0), ("(None, 29, 33, 32)", 320),
        ("(None, 29, 33, 32)", 128), ("(None, 14, 16, 32)", 0), ("(None, 224, 32)", 0),
        ("(None, 14, 16, 32)", 0), ("(None, 32)", 0), ("(None, 4, 8)", 0), ("(None, 32)", 0),
        ("(None, 32)", 96), ("(None, 10)", 330)]
    # BN on 32 channels: 128 params of which 64 (moving mean and variance) non-trainable;
    # the center=False one has gamma (32) trainable and 64 non-trainable.
    assert "Total params: 874" in lines
    assert "Non-trainable params: 128" in lines
    assert "Trainable params: 746" in lines
    gap = fastcnn.Sequential([GlobalAveragePooling2D(keepdims=True, input_shape=(5, 4, 3))])
    assert summary_rows(gap)[0] == [("(None, 1, 1, 3)", 0)]


# ---------------------------------------------------------- bad arguments
@pytest.mark.parametrize("make,match", [
    (lambda: ZeroPadding2D(-1), "padding"),
    (lambda: ZeroPadding2D((1, -2)), "padding"),
    (lambda: ZeroPadding2D(((0, 1), (2, -1))), "padding"),
    (lambda: ZeroPadding2D((1, 2, 3)), "padding"),
    (lambda: ZeroPadding2D(1.5), "padding"),
    (lambda: Reshape((2, -1, -1)), "target_shape"),
    (lambda: Reshape((0, 3)), "target_shape"),
    (lambda: Reshape(()), "target_shape"),
    (lambda: BatchNormalization(axis=1.0), "axis"),
    (lambda: BatchNormalization(epsilon=0), "epsilon"),
    (lambda: BatchNormalization(epsilon=-1e-3), "epsilon"),
    (lambda: BatchNormalization(momentum=1.0), "momentum"),
    (lambda: BatchNormalization(momentum=-0.1), "momentum"),
    (lambda: BatchNormalization(gamma_initializer="twos"), "gamma_initializer"),
    (lambda: Rescaling("1/255"), "scale"),
    (lambda: Rescaling(1.0, offset=float("nan")), "offset"),
    (lambda: GlobalMaxPooling2D(data_format="channels_first"), "data_format"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make,shape,match", [
    (lambda: BatchNormalization(axis=1), (None, 4, 4, 3), "axis must be -1 or 3"),
    (lambda: BatchNormalization(axis=-2), (None, 5), "axis must be -1 or 1"),
    (lambda: Reshape((5, 5)), (None, 4, 3, 2), "target_shape .* holds 25 values .* 24"),
    (lambda: Reshape((5, -1)), (None, 4, 3, 2), "target_shape .* not a multiple of 5"),
    (lambda: GlobalAveragePooling2D(), (None, 4, 3), "4-D input"),
    (lambda: ZeroPadding2D(1), (None, 4, 3), "4-D input"),
])
def test_bad_input_shapes_at_build(make, shape, match):
    layer = make()
    with pytest.raises(ValueError, match=match):
        layer.build(shape)


def test_axis_as_last_index_is_accepted():
    layer = BatchNormalization(axis=3)
    layer.build((None, 2, 2, 5))
    assert layer.count_params() == 20


def test_reshape_mismatch_in_a_model_names_the_layer():
    with pytest.raises(ValueError, match="reshape.*target_shape"):
        fastcnn.Sequential([Flatten(input_shape=(4, 4, 2)), Reshape((3, 10))])


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("layer", [
    BatchNormalization(momentum=0.9, epsilon=1e-5, center=False, gamma_initializer="Ones"),
    BatchNormalization(moving_variance_initializer=fastcnn.initializers.Ones()),
    GlobalAveragePooling2D(keepdims=True), GlobalMaxPooling2D(),
    ZeroPadding2D(((1, 2), (0, 3))), ZeroPadding2D(2), Reshape((-1, 3)),
    Rescaling(1 / 255, offset=-1.0, input_shape=(4, 4, 3)),
    Conv2D(4, 3, kernel_regularizer=regularizers.L2(0.02), bias_regularizer="l2"),
    Dense(3, kernel_regularizer=regularizers.l2(1e-4)),
], ids=lambda layer: type(layer).__name__)
def test_get_config_is_json_and_rebuilds_the_layer(layer):
    config = layer.get_config()
    text = json.dumps(config)  # plain names and numbers only
    config = json.loads(text)
    config["name"] = layer.name + "_copy"
    clone = type(layer).from_config(config)
    expected = {**layer.get_config(), "name": layer.name + "_copy"}
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(expected))


def test_batchnorm_config_holds_initializer_names():
    ones = fastcnn.initializers.Ones()
    config = BatchNormalization(moving_variance_initializer=ones).get_config()
    assert config["moving_variance_initializer"] == "ones"
    assert config["gamma_initializer"] == "ones" and config["beta_initializer"] == "zeros"


# ------------------------------------------------------ across the backends
def pooling_models(pool):
    return fastcnn.Sequential([
        Rescaling(0.5, offset=0.1, input_shape=(7, 6, 2)),
        ZeroPadding2D(((1, 0), (0, 2))),
        Conv2D(3, (3, 2), activation="relu", bias_initializer="he_uniform"),
        BatchNormalization(),
        MaxPooling2D(2, padding="same"),
        Conv2D(4, 2, padding="same", activation="tanh", kernel_regularizer="l2"),
        pool,
        Reshape((2, -1)),
        Flatten(),
        BatchNormalization(center=False),
        Dense(3, activation="softmax"),
    ])


def run_model(model, x, dy, check_model_call=True):
    model_out = None
    if check_model_call:
        start = model.get_weights()
        model_out = np.asarray(model(x, training=True))
        model.set_weights(start)  # its BN moving statistics moved: back to the start
    h, ctxs = x, []
    for layer in model.layers:
        h, ctx = layer.forward(h, training=True)
        ctxs.append(ctx)
    grads, g = [], dy
    for layer, ctx in zip(reversed(model.layers), reversed(ctxs)):
        g, own = layer.backward(g, ctx)
        assert len(own) == len(layer._param_slots())
        grads = list(own) + grads
    if model_out is not None:
        # The model's own training-mode call agrees with the layers run one by one.
        np.testing.assert_allclose(model_out, h, rtol=1e-12, atol=1e-14)
    return [h, g] + grads + model.get_weights()


@pytest.mark.parametrize("pool", ["average", "max"])
def test_models_with_new_layers_agree_on_every_backend(pool, float64, rng):
    fastcnn.utils.set_random_seed(5)
    layer = GlobalAveragePooling2D() if pool == "average" else GlobalMaxPooling2D()
    model = pooling_models(layer)
    x = gradcheck.off_kinks((3, 7, 6, 2), rng)
    dy = rng.standard_normal((3, 3))
    initial = model.get_weights()
    results = {}
    for name in fastcnn.backends.available():
        model.set_weights(initial)  # the moving statistics too: each run starts equal
        with fastcnn.use_backend(name):
            # A model holding NumPy layers (Rescaling, BatchNormalization) refuses to run on
            # a device backend (fastcnn._device); its layers, called one by one, do not.
            results[name] = run_model(model, x, dy, check_model_call=name != "cuda")
    reference = results["reference"]
    for name, result in results.items():
        assert len(result) == len(reference)
        for i, (a, b) in enumerate(zip(result, reference)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12,
                                       err_msg=f"backend {name}, array {i}")


# ----------------------------------------------------------- whole model
@pytest.mark.parametrize("backend", fastcnn.backends.available())
def test_train_on_batch_gradients_with_new_layers_and_l2(backend, float64):
    """SGD(1.0) in float64 moves each trainable weight by minus its gradient; that must be
    the numerical gradient of the TRAINING-mode loss (batch statistics) plus the L2 terms."""
    fastcnn.utils.set_random_seed(7)
    rng = np.random.default_rng(9)
    with fastcnn.use_backend(backend):
        model = fastcnn.Sequential([
            Rescaling(0.5, offset=0.1, input_shape=(6, 5, 2)),
            ZeroPadding2D(((1, 0), (0, 2))),                                     # 7 x 7
            Conv2D(3, (3, 2), activation="tanh", bias_initializer="he_uniform",
                   kernel_regularizer=regularizers.L2(0.05),
                   bias_regularizer=regularizers.L2(0.02)),                      # 5 x 6
            BatchNormalization(momentum=0.8),
            Conv2D(4, 2, strides=2, padding="same", activation="sigmoid"),      # 3 x 3
            BatchNormalization(),
            GlobalAveragePooling2D(),
            Reshape((2, 2)),
            Flatten(),
            Dense(5, activation="tanh", kernel_regularizer="l2"),
            BatchNormalization(scale=False),
            Dense(3, activation="softmax", bias_initializer="he_uniform",
                  kernel_regularizer=regularizers.l2(0.03)),
        ])
        bns = [layer for layer in model.layers if isinstance(layer, BatchNormalization)]
        for bn, c in zip(bns, (3, 4, 5)):  # non-trivial gamma/beta: their gradients matter
            if bn.scale:
                bn.gamma[...] = rng.uniform(0.5, 1.5, c)
            bn.beta[...] = rng.standard_normal(c) * 0.3
        model.compile(optimizer=fastcnn.optimizers.SGD(learning_rate=1.0),
                      loss="sparse_categorical_crossentropy")
        x = gradcheck.off_kinks((4, 6, 5, 2), rng)
        y = np.array([0, 2, 1, 2])

        def training_loss():
            # Training mode: batch statistics, as train_on_batch uses them.
            out = model(x, training=True)
            penalty = sum(layer.regularization_loss() for layer in model.layers)
            return float(np.asarray(model.loss(y, out))) + penalty

        all_weights = model.weights
        trainable = model.trainable_weights
        is_trainable = [any(w is t for t in trainable) for w in all_weights]
        assert sum(is_trainable) == len(all_weights) - 6  # 3 BNs x 2 moving statistics
        before = model.get_weights()
        expected_loss = training_loss()
        model.set_weights(before)
        loss = model.train_on_batch(x, y)
        assert loss == pytest.approx(expected_loss, rel=1e-12)  # L2 terms included
        after = model.get_weights()
        grads = [b - a for b, a, t in zip(before, after, is_trainable) if t]
        assert all(np.any(g != 0) for g in grads), "a weight got no gradient at all"
        model.set_weights(before)
        gradcheck.check_scalar_gradient(training_loss, trainable, grads, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("make", [
    BatchNormalization, GlobalAveragePooling2D, GlobalMaxPooling2D, ZeroPadding2D,
    lambda: Reshape((-1,)), lambda: Rescaling(2.0)])
def test_need_dx_false_skips_dx_but_keeps_weight_grads(make, rng):
    layer = built(make(), (2, 3, 3, 2))
    x = rng.standard_normal((2, 3, 3, 2))
    attributes = dict(vars(layer))
    y, ctx = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx, grads = layer.backward(dy, ctx, need_dx=False)
    assert dx is None or isinstance(layer, Reshape)  # a free view is fine too
    # Nothing of the call is kept on the layer (no cache to consume): the layer holds the
    # same attributes, bound to the same objects, as before the call.
    assert vars(layer).keys() == attributes.keys()
    assert all(vars(layer)[k] is v for k, v in attributes.items())
    # ctx is not consumed: the same ctx gives the full gradient, the same weight grads.
    dx_full, grads_full = layer.backward(dy, ctx)
    assert dx_full is not None and dx_full.shape == x.shape
    assert len(grads) == len(grads_full) == len(layer._param_slots())
    for a, b in zip(grads, grads_full):
        np.testing.assert_array_equal(a, b)
    if isinstance(layer, BatchNormalization):
        assert len(grads) == 2
        _, ctx = layer.forward(x, training=True)
        _, grads = layer.backward(dy, ctx)
        _, ctx = layer.forward(x, training=True)
        _, grads_no_dx = layer.backward(dy, ctx, need_dx=False)
        for a, b in zip(grads, grads_no_dx):
            np.testing.assert_array_equal(a, b)


def test_batchnorm_on_32_channels_has_128_params_64_non_trainable():
    model = fastcnn.Sequential([Conv2D(32, 3, input_shape=(8, 8, 3)), BatchNormalization()])
    rows, lines = summary_rows(model)
    assert rows == [("(None, 6, 6, 32)", 896), ("(None, 6, 6, 32)", 128)]
    assert lines[-4:-1] == ["Total params: 1,024", "Trainable params: 960",
                            "Non-trainable params: 64"]
    assert [w.shape for w in model.layers[1].weights] == [(32,)] * 4


def test_save_and_load_keep_new_layers_moving_statistics_and_regularizers(tmp_path, rng):
    if not hasattr(fastcnn.Sequential, "save") or not hasattr(fastcnn, "load_model"):
        pytest.skip("fastcnn.Sequential.save / fastcnn.load_model are not implemented yet")
    model = fastcnn.Sequential([
        Rescaling(1 / 255, input_shape=(6, 6, 2)), ZeroPadding2D(((1, 0), (2, 1))),
        Conv2D(3, 3, kernel_regularizer=regularizers.L2(0.02)), BatchNormalization(momentum=0.9),
        GlobalMaxPooling2D(), Reshape((3, -1)), Flatten(), BatchNormalization(center=False),
        Dense(3, activation="softmax", kernel_regularizer="l2")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = rng.random((8, 6, 6, 2)) * 255, np.arange(8) % 3
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "model.fcnn"
    model.save(str(path))
    loaded = fastcnn.load_model(str(path))
    np.testing.assert_array_equal(model.predict(x), loaded.predict(x))  # moving stats too
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)  # L2 included
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
