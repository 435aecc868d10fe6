"""Issue section 7: every bad input raises a clear error naming the argument, the value and
what was expected, before any work starts."""
import numpy as np
import pytest

import fastcnn
from fastcnn.layers import (Activation, AveragePooling2D, Conv2D, Dense, Dropout, Flatten,
                            MaxPooling2D)


@pytest.fixture(autouse=True)
def seeded():
    fastcnn.utils.clear_session()  # automatic names start again at 'conv2d', 'dense'
    fastcnn.utils.set_random_seed(0)


def small_cnn(compile=True, loss="sparse_categorical_crossentropy", metrics=("accuracy",)):
    model = fastcnn.Sequential([
        Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(2),
        Flatten(), Dense(3, activation="softmax")])
    if compile:
        model.compile("adam", loss, metrics=list(metrics))
    return model


def data(n=8):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6, 6, 1)).astype(np.float32), np.arange(n) % 3


def assert_untouched(model, before):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- input shape of a model
@pytest.mark.parametrize("method", ["fit", "evaluate", "predict", "train_on_batch"])
def test_wrong_input_rank(method):
    model = small_cnn()
    x, y = data()
    args = (x[..., 0],) if method == "predict" else (x[..., 0], y)
    with pytest.raises(ValueError, match=r"x has shape \(8, 6, 6\) \(3-D\).*4-D input of shape "
                                         r"\(None, 6, 6, 1\).*x\[\.\.\., None\]"):
        getattr(model, method)(*args, **({"verbose": 0} if method != "train_on_batch" else {}))


def test_wrong_channel_count():
    model = small_cnn()
    x, y = data()
    with pytest.raises(ValueError, match=r"x has 3 channels, the model expects 1"):
        model.fit(np.repeat(x, 3, axis=-1), y, verbose=0)


def test_wrong_spatial_size():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"x has shape \(2, 7, 6, 1\).*\(None, 6, 6, 1\)"):
        model.predict(np.zeros((2, 7, 6, 1)))


def test_empty_or_non_numeric_x():
    model = small_cnn()
    with pytest.raises(ValueError, match="at least one sample"):
        model.predict(np.zeros((0, 6, 6, 1)))
    with pytest.raises(ValueError, match="numeric"):
        model.predict(np.array([["a"]]))
    with pytest.raises(ValueError, match="x is required"):
        model.fit(None, np.zeros(3), verbose=0)


# -------------------------------------------------------------- windows and their arguments
@pytest.mark.parametrize("layer,match", [
    (lambda: Conv2D(4, 5, input_shape=(3, 4, 1)),
     r"'conv2d.*kernel_size \(5, 5\) is larger than the input's spatial size \(3, 4\) with "
     r"padding='valid'"),
    (lambda: MaxPooling2D(4, input_shape=(3, 3, 2)), r"pool_size \(4, 4\) is larger"),
    (lambda: AveragePooling2D((1, 5), input_shape=(3, 3, 2)), r"pool_size \(1, 5\) is larger"),
])
def test_window_larger_than_a_valid_input_fails_at_add(layer, match):
    with pytest.raises(ValueError, match=match):
        fastcnn.Sequential([layer()])


def test_window_larger_than_the_data_fails_when_built_from_data():
    model = fastcnn.Sequential([Conv2D(2, 5), Flatten(), Dense(2)])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"kernel_size \(5, 5\) is larger"):
        model.fit(np.zeros((2, 4, 4, 1)), np.zeros((2, 2)), verbose=0)


def test_window_too_large_later_in_the_stack_leaves_the_model_usable():
    model = fastcnn.Sequential([Conv2D(2, 3, input_shape=(5, 5, 1))])
    with pytest.raises(ValueError, match="pool_size"):
        model.add(MaxPooling2D(4))
    assert len(model.layers) == 1
    model.add(MaxPooling2D(3))
    assert model.output_shape == (None, 1, 1, 2)


@pytest.mark.parametrize("make,match", [
    (lambda: Conv2D(0, 3), r"filters must be a positive int, got 0"),
    (lambda: Conv2D(-2, 3), r"filters must be a positive int, got -2"),
    (lambda: Conv2D(2, 0), r"kernel_size must be >= 1, got 0"),
    (lambda: Conv2D(2, (3, -1)), r"kernel_size must be >= 1, got \(3, -1\)"),
    (lambda: Conv2D(2, 3, strides=0), r"strides must be >= 1, got 0"),
    (lambda: Conv2D(2, (1, 2, 3)), r"kernel_size must be an int or a tuple of 2 ints"),
    (lambda: MaxPooling2D(0), r"pool_size must be >= 1, got 0"),
    (lambda: AveragePooling2D(2, strides=(0, 1)), r"strides must be >= 1, got \(0, 1\)"),
    (lambda: Dense(0), r"units must be a positive int, got 0"),
    (lambda: Conv2D(2, 3, padding="full"), r"padding must be 'valid' or 'same', got 'full'"),
    (lambda: MaxPooling2D(padding="causal"), r"padding must be 'valid' or 'same'"),
    (lambda: Conv2D(2, 3, data_format="channels_first"), r"channels_last"),
    (lambda: Dropout(1.0), r"rate must be a float in \[0, 1\), got 1.0"),
    (lambda: Dropout(-0.1), r"rate must be a float in \[0, 1\), got -0.1"),
    (lambda: Conv2D(2, 3, input_shape=(0, 3, 1)), r"input_shape must be a non-empty tuple"),
])
def test_bad_layer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_dense_on_images_applies_to_the_channels_and_the_loss_names_the_shapes():
    """Keras: Dense on a rank-4 input works on the last axis; the forgotten Flatten shows
    up as the loss's error naming the model output's shape."""
    model = fastcnn.Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), Dense(3)])
    assert model.output_shape == (None, 3, 3, 3)
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"labels of shape \(N, 3, 3\).*\(None, 3, 3, 3\)"):
        model.fit(np.zeros((2, 5, 5, 1)), np.array([0, 1]), verbose=0)
    with pytest.raises(ValueError, match=r"Dense expects input of rank >= 2"):
        fastcnn.layers.Dense(3).build((None,))


def test_conv_on_flat_input_names_the_rank():
    with pytest.raises(ValueError, match=r"Conv2D expects 4-D input"):
        fastcnn.Sequential([Dense(4, input_shape=(3,)), Conv2D(2, 1)])


# ------------------------------------------------------------------------ names
@pytest.mark.parametrize("call,match", [
    (lambda m: m.compile("adagradd", "mse"), r"optimizer must be one of \['sgd', 'adam', 'adamw', 'rmsprop'"),
    (lambda m: m.compile("sgd", "hinge_loss_of_my_own"),
     r"loss must be one of \['categorical_crossentropy', 'sparse_categorical_crossentropy', "
     r"'binary_crossentropy', 'mean_squared_error', 'mse', .*'hinge_loss_of_my_own'"),
    (lambda m: m.compile("sgd", "mse", metrics=["f1"]), r"metric must be one of \['accuracy'"),
    (lambda m: m.compile("sgd", None), r"loss is required"),
])
def test_unknown_names_in_compile(call, match):
    with pytest.raises(ValueError, match=match):
        call(small_cnn(compile=False))


@pytest.mark.parametrize("make", [lambda: Dense(2, activation="gelu_fast"),
                                  lambda: Conv2D(2, 3, activation="swishy"),
                                  lambda: Activation("elu2"),
                                  lambda: Dense(2, activation=3)])
def test_unknown_activation(make):
    with pytest.raises(ValueError, match=r"activation must be .*'relu'.*'sigmoid'"):
        make()


def test_a_numpy_callable_activation_fails_on_first_use_naming_the_gradient():
    layer = Dense(2, activation=np.tanh)
    with pytest.raises(ValueError, match="activation 'tanh' returned a ndarray.*gradient"):
        layer(np.ones((1, 3), np.float32))


# ------------------------------------------------------------------------ compile order
@pytest.mark.parametrize("method", ["fit", "evaluate", "train_on_batch", "test_on_batch"])
def test_training_or_evaluating_before_compile(method):
    model = small_cnn(compile=False)
    x, y = data()
    with pytest.raises(RuntimeError, match=rf"must be compiled before {method}\(\)"):
        getattr(model, method)(x, y)


def test_summary_and_count_params_before_build():
    model = fastcnn.Sequential([Dense(2)])
    with pytest.raises(ValueError, match="has not been built yet"):
        model.summary()
    with pytest.raises(ValueError, match="has not been built yet"):
        model.count_params()


# ------------------------------------------------------------------------ labels and y
def test_labels_out_of_range_before_any_work(capsys):
    model = small_cnn()
    x, y = data()
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"y labels must be in \[0, 2\] \(the model has 3 "
                                         r"outputs\), got labels in \[0, 3\]"):
        model.fit(x, np.where(y == 2, 3, y), epochs=1)
    assert_untouched(model, before)
    assert capsys.readouterr().out == ""  # not even an 'Epoch 1/1' line
    with pytest.raises(ValueError, match=r"got labels in \[-1, 2\]"):
        model.evaluate(x, y - 1 + (y > 0), verbose=0)


def test_non_integer_labels_for_sparse():
    model = small_cnn()
    x, y = data()
    with pytest.raises(ValueError, match="integer class labels"):
        model.fit(x, y + 0.5, verbose=0)


def test_one_hot_given_to_sparse_names_the_loss_to_use():
    model = small_cnn()
    x, y = data()
    with pytest.raises(ValueError, match=r"one-hot targets.*use loss='categorical_crossentropy'"):
        model.fit(x, np.eye(3)[y], verbose=0)


def test_int_labels_given_to_categorical_names_the_loss_to_use():
    model = small_cnn(loss="categorical_crossentropy")
    x, y = data()
    with pytest.raises(ValueError, match=r"integer class labels.*"
                                         r"use loss='sparse_categorical_crossentropy'"):
        model.fit(x, y, verbose=0)


def test_wrong_number_of_classes_for_categorical():
    model = small_cnn(loss="categorical_crossentropy")
    x, y = data()
    with pytest.raises(ValueError, match=r"y has shape \(8, 4\).*\(None, 3\)"):
        model.train_on_batch(x, np.eye(4)[y])


def test_binary_targets_out_of_range_and_mse_shape():
    model = fastcnn.Sequential([Dense(1, activation="sigmoid", input_shape=(2,))])
    model.compile("sgd", "binary_crossentropy")
    with pytest.raises(ValueError, match=r"y values must lie in \[0, 1\] for binary_crossentropy, "
                                         r"got values in \[0(\.0)?, 2(\.0)?\]"):
        model.fit(np.zeros((3, 2)), np.array([0, 1, 2]), verbose=0)
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"y has shape \(3, 2\).*\(None, 1\)"):
        model.fit(np.zeros((3, 2)), np.zeros((3, 2)), verbose=0)


def test_x_and_y_of_different_lengths():
    model = small_cnn()
    x, y = data()
    with pytest.raises(ValueError, match=r"x and y must have the same number of samples: "
                                         r"x has 8, y has 7"):
        model.fit(x, y[:7], verbose=0)
    with pytest.raises(ValueError, match=r"validation_data\[0\] and validation_data\[1\].*"
                                         r"has 8, validation_data\[1\] has 5"):
        model.fit(x, y, validation_data=(x, y[:5]), verbose=0)


# ------------------------------------------------------------------------ fit arguments
@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, r"batch_size must be a positive int, got 0"),
    ({"batch_size": -3}, r"batch_size must be a positive int, got -3"),
    ({"batch_size": 2.5}, r"batch_size must be a positive int, got 2.5"),
    ({"validation_split": 1.0}, r"validation_split must be a float in \[0, 1\), got 1.0"),
    ({"validation_split": -0.2}, r"validation_split must be a float in \[0, 1\), got -0.2"),
    ({"validation_split": 0.9}, r"validation_split=0.9 leaves no training samples out of 8"),
    ({"epochs": -1}, r"epochs must be a non-negative int, got -1"),
    ({"verbose": 3}, r"verbose must be 0, 1, 2 or 'auto', got 3"),
    ({"validation_data": ([1],)}, r"validation_data must be a tuple \(x_val, y_val\)"),
])
def test_bad_fit_arguments(kwargs, match):
    model = small_cnn()
    x, y = data()
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, **{"verbose": 0, **kwargs})
    assert_untouched(model, before)


@pytest.mark.parametrize("method", ["evaluate", "predict"])
def test_bad_batch_size_elsewhere(method):
    model = small_cnn()
    x, y = data()
    args = (x,) if method == "predict" else (x, y)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        getattr(model, method)(*args, batch_size=0)


# ------------------------------------------------------------------------ set_weights
def test_set_weights_wrong_shape_names_layer_and_assigns_nothing():
    model = small_cnn()
    before = model.get_weights()
    new = [w + 1 for w in before]
    new[2] = np.zeros((10, 3))  # dense kernel should be (8, 3)
    with pytest.raises(ValueError, match=r"layer 'dense' \(Dense\): weight 0 has shape "
                                         r"\(10, 3\), expected \(8, 3\)"):
        model.set_weights(new)
    assert_untouched(model, before)  # the conv weights before it were not assigned either


def test_set_weights_wrong_count():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"expects 4 weight arrays .*conv2d: \[\(3, 3, 1, 2\), "
                                         r"\(2,\)\].*got 3"):
        model.set_weights(model.get_weights()[:3])


# ------------------------------------------------------------------------ non-finite loss
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/inf inside the kernels
def test_nan_loss_stops_fit_naming_epoch_and_batch():
    model = small_cnn()
    x, y = data(12)
    x[9, 0, 0, 0] = np.nan  # third batch of four
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 1, batch 3"):
        model.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())  # no NaN update applied


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/inf inside the kernels
def test_inf_loss_in_a_later_epoch():
    model = fastcnn.Sequential([Dense(1, input_shape=(1,))])
    model.set_weights([np.zeros((1, 1)), np.zeros(1)])
    # epoch 1: loss 1, then w = b = 2e19; epoch 2: (4e19 - 1)**2 overflows float32
    model.compile(fastcnn.optimizers.SGD(learning_rate=1e19), "mse")
    x = np.ones((4, 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"loss became (inf|nan) at epoch 2, batch 1"):
        model.fit(x, x, batch_size=4, epochs=3, verbose=0)  # also catchable as ValueError


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/inf inside the kernels
def test_non_finite_loss_in_train_on_batch():
    model = small_cnn()
    x, y = data()
    x[0, 0, 0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="in train_on_batch"):
        model.train_on_batch(x, y)


# ------------------------------------------------------------------------ model structure
def test_input_only_first_and_layers_only_once():
    model = fastcnn.Sequential([Dense(2, input_shape=(3,))])
    with pytest.raises(ValueError, match="Input may only be the first"):
        model.add(fastcnn.layers.Input((3,)))
    layer = model.layers[0]
    with pytest.raises(ValueError, match="already in model"):
        model.add(layer)
    with pytest.raises(ValueError, match="expects a fastcnn.layers.Layer"):
        model.add("dense")
    with pytest.raises(ValueError, match="layers must be a list"):
        fastcnn.Sequential(Dense(2))


def test_mixed_dtypes_are_refused():
    with pytest.raises(ValueError, match="has dtype float64 but model"):
        fastcnn.Sequential([Dense(2, input_shape=(3,)), Dense(2, dtype="float64")])


@pytest.mark.parametrize("make", [lambda: Conv2D(2**40, 3, input_shape=(8, 8, 1)),
                                  lambda: Dense(2**40, input_shape=(8,))])
def test_a_weight_larger_than_memory_names_the_layer(make):
    with pytest.raises(ValueError, match=r"weight 'kernel' of shape .* needs .* GiB, which is "
                                         r"more than this machine's"):
        fastcnn.Sequential([make()])
