"""Models on images of any size (``Input((None, None, C))``, Keras's fully convolutional
models): each window layer takes its padding from each call's input, and gives exactly
what the same layer built for that size gives."""
import os

import fastcnn
import numpy as np
import pytest

from fastcnn import applications, layers as L, optimizers, train_plan
from fastcnn.inference_plan import InferencePlanError

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "keras")

LAYERS = {
    "conv_same_s2": lambda: L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
    "conv_valid_s2": lambda: L.Conv2D(4, 3, strides=2),
    "conv_dilated": lambda: L.Conv2D(4, 3, dilation_rate=2, padding="same"),
    "separable_s2": lambda: L.SeparableConv2D(4, 3, strides=2, padding="same"),
    "depthwise_s2": lambda: L.DepthwiseConv2D(3, strides=2, padding="same"),
    "transpose_same": lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"),
    "transpose_valid": lambda: L.Conv2DTranspose(4, 3, strides=2),
    "upsampling_bilinear": lambda: L.UpSampling2D(2, interpolation="bilinear"),
    "cropping": lambda: L.Cropping2D(((1, 2), (0, 1))),
    "zero_padding": lambda: L.ZeroPadding2D(((1, 0), (2, 1))),
    "maxpool_same_s2": lambda: L.MaxPooling2D(3, strides=2, padding="same"),
    "avgpool_same": lambda: L.AveragePooling2D(2, padding="same"),
    "batchnorm": lambda: L.BatchNormalization(),
    "prelu_shared": lambda: L.PReLU(shared_axes=[1, 2]),
    "rescaling": lambda: L.Rescaling(1 / 255.0),
}


def _model(make, shape, seed=1):
    fastcnn.set_random_seed(seed)
    inp = fastcnn.Input(shape)
    x = make()(inp)
    x = L.GlobalAveragePooling2D()(x)
    return fastcnn.Model(inp, L.Dense(2)(x))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_layer_built_for_any_size_equals_one_built_for_the_size(name):
    anysize = _model(LAYERS[name], (None, None, 3))
    assert anysize.input_shape == (None, None, None, 3)
    w0 = anysize.get_weights()
    rng = np.random.default_rng(0)
    for hw in ((12, 16), (9, 7)):          # even and odd: 'same' pads differ
        fixed = _model(LAYERS[name], hw + (3,))
        fixed.set_weights(w0)
        anysize.set_weights(w0)
        x = rng.random((2,) + hw + (3,), dtype=np.float32)
        np.testing.assert_array_equal(anysize.predict(x, verbose=0),
                                      fixed.predict(x, verbose=0))
        y = rng.random((2, 2), dtype=np.float32)
        for m in (anysize, fixed):
            m.compile(optimizer=optimizers.SGD(0.1), loss="mse")
        assert anysize.train_on_batch(x, y) == fixed.train_on_batch(x, y)
        for a, b in zip(anysize.get_weights(), fixed.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_fit_on_one_size_predict_on_others_with_the_compiled_train_step():
    model = _model(LAYERS["conv_same_s2"], (None, None, 3))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x, y = rng.random((6, 20, 24, 3), dtype=np.float32), np.array([0, 1] * 3)
    model.fit(x, y, batch_size=3, epochs=2, verbose=0)
    assert isinstance(model._plan.compiled_step, train_plan.TrainStep)
    model.train_on_batch(rng.random((3, 11, 15, 3), dtype=np.float32), y[:3])
    assert model.predict(rng.random((1, 33, 17, 3), dtype=np.float32), verbose=0).shape == (1, 2)


def test_an_input_too_small_for_a_valid_window_names_the_layer():
    inp = fastcnn.Input((None, None, 1))
    model = fastcnn.Model(inp, L.GlobalMaxPooling2D()(L.Conv2D(2, 5, name="wide")(inp)))
    with pytest.raises(ValueError, match=r"layer 'wide': kernel_size \(5, 5\) is larger than "
                                         r"the input's spatial size \(3, 8\)"):
        model.predict(np.zeros((1, 3, 8, 1), np.float32), verbose=0)


def test_flatten_needs_known_sizes_and_says_so():
    inp = fastcnn.Input((None, None, 3))
    with pytest.raises(ValueError, match="Flatten needs all non-batch dimensions known"):
        L.Flatten()(L.Conv2D(2, 3)(inp))


def test_the_inference_plan_refuses_and_predict_runs_layer_by_layer():
    model = _model(LAYERS["maxpool_same_s2"], (None, None, 3))
    with pytest.raises(InferencePlanError, match=r"takes input of any size \(None, None, "
                                                 r"None, 3\)"):
        model.compile_inference()
    assert model.predict(np.ones((1, 5, 6, 3), np.float32), verbose=0).shape == (1, 2)


def test_a_keras_model_on_images_of_any_size_loads_and_saves():
    pytest.importorskip("h5py", reason="Keras files need h5py (fastcnn[keras])")
    model = fastcnn.load_model(os.path.join(FIXTURES, "unknown_size.keras"))
    ref = np.load(os.path.join(FIXTURES, "unknown_size.npz"))
    assert model.input_shape == (None, None, None, 3)
    for k in "ab":   # two sizes of opposite parity: the strided 'same' pads differ
        np.testing.assert_allclose(model.predict(ref["x" + k], verbose=0), ref["y" + k],
                                   rtol=1e-5, atol=1e-6)


def test_applications_without_the_top_take_any_size_as_keras_does():
    base = applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                    pooling="avg")
    assert base.input_shape == (None, None, None, 3)
    fixed = applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                     pooling="avg", input_shape=(40, 48, 3))
    fixed.set_weights(base.get_weights())
    x = np.random.default_rng(2).random((1, 40, 48, 3), dtype=np.float32)
    np.testing.assert_allclose(base.predict(x, verbose=0), fixed.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert base.predict(x[:, :33, :37], verbose=0).shape == (1, 1280)
    with pytest.raises(ValueError, match="you should specify a static `input_shape`"):
        applications.VGG16(include_top=True, weights=None, input_shape=(None, None, 3))


def test_onnx_export_keeps_the_sizes_dynamic_or_says_why_not(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="ONNX export is checked with onnxruntime "
                                                    "(fastcnn[onnx])")
    pytest.importorskip("onnx", reason="export_onnx needs onnx (fastcnn[onnx])")
    model = _model(lambda: L.Conv2D(4, 3, padding="same", activation="relu"), (None, None, 3))
    path = model.export_onnx(str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(path)
    name = session.get_inputs()[0].name
    for hw in ((13, 9), (8, 8)):
        x = np.random.default_rng(3).random((2,) + hw + (3,), dtype=np.float32)
        np.testing.assert_allclose(session.run(None, {name: x})[0],
                                   model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    strided = _model(LAYERS["conv_same_s2"], (None, None, 3))
    with pytest.raises(ValueError, match=r"computes its padding from the input's size"):
        strided.export_onnx(str(tmp_path / "s.onnx"))
