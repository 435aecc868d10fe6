"""fastcnn.applications against Keras 3.15 (fixtures from
tests/fixtures/keras/make_applications.py, run with TensorFlow CPU 2.21):

* structure: for each architecture and several (include_top, pooling, input_shape, alpha)
  settings, built in a fresh session: the model's name, its layers' names, classes and output
  shapes in Keras's order, each layer's weight shapes, and the summary totals (total /
  trainable / non-trainable parameters);
* numbers: the same seeded weights (tests/fixtures/keras/app_weights.py, NumPy on both
  sides) set in Keras and in fastcnn give the same predictions within float32 rounding;
* Keras's refusals (input shapes, weights, classes) with Keras's messages; the ImageNet file
  download (mocked network: none, a good file, a corrupted file) and its errors;
  preprocess_input's modes and decode_predictions.
"""
import fastcnn  # noqa: F401  (before numpy)

import hashlib
import io
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastcnn import layers, utils
from fastcnn import applications
from fastcnn.applications import imagenet_utils

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
sys.path.insert(0, str(FIXTURES))
from app_weights import input_batch, model_weights  # noqa: E402

with open(FIXTURES / "applications.json") as f:
    KERAS = json.load(f)
PREDS = np.load(FIXTURES / "applications.npz")

HAVE_DEPTHWISE = hasattr(layers, "DepthwiseConv2D")
BUILDERS = {"VGG16": lambda: applications.VGG16, "ResNet50": lambda: applications.ResNet50,
            "InceptionV3": lambda: applications.InceptionV3,
            "MobileNetV2": lambda: applications.MobileNetV2}


def _kwargs(case):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in case["kwargs"].items()}


def _build(case_id):
    case = KERAS["cases"][case_id]
    if case["arch"] == "MobileNetV2" and not HAVE_DEPTHWISE:
        pytest.skip("MobileNetV2 needs layers.DepthwiseConv2D, not in this checkout yet")
    utils.clear_session()   # Keras's fixtures were built in a fresh session too
    return case, BUILDERS[case["arch"]]()(weights=None, **_kwargs(case))


def _spec(model):
    out = []
    for layer in model.layers:
        cfg = layer.get_config() if type(layer).__name__ == "BatchNormalization" else {}
        out.append((type(layer).__name__, [list(w.shape) for w in layer.weights],
                    cfg.get("scale", True), cfg.get("center", True)))
    return out


STRUCTURE_CASES = [c for c in KERAS["cases"] if c != "vgg16_max_none"]
PREDICT_CASES = [c for c in KERAS["cases"] if f"{c}/y" in PREDS.files]


@pytest.mark.parametrize("case_id", STRUCTURE_CASES)
def test_structure_matches_keras(case_id):
    case, model = _build(case_id)
    assert model.name == case["model_name"]
    names = [layer.name for layer in model.layers]
    assert names == [l["name"] for l in case["layers"]]
    assert [type(layer).__name__ for layer in model.layers] == [
        l["class"] for l in case["layers"]]
    for layer, ref in zip(model.layers, case["layers"]):
        shape = layer.output_shape if type(layer).__name__ != "InputLayer" else (
            (None,) + tuple(model.input.shape[1:]))
        assert list(shape) == ref["output_shape"], layer.name
        assert [list(w.shape) for w in layer.weights] == ref["weights"], layer.name
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert (model.count_params(), trainable, non_trainable) == (
        case["total"], case["trainable"], case["non_trainable"])
    # get_weights() follows Keras's layer order (what a list saved from Keras expects).
    expected = [tuple(s) for l in case["layers"] for s in l["weights"]]
    assert [w.shape for w in model.get_weights()] == expected


def test_summary_totals_printed():
    _, model = _build("resnet50_notop_32")
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    case = KERAS["cases"]["resnet50_notop_32"]
    for label, n in (("Total", case["total"]), ("Trainable", case["trainable"]),
                     ("Non-trainable", case["non_trainable"])):
        assert any(line.startswith(f"{label} params:") and
                   (f"{n:,}" in line or f" {n}" in line) for line in text.splitlines()), label


def _predict_with_seeded_weights(case_id):
    case, model = _build(case_id)
    spec = _spec(model)
    assert spec == [(l["class"], l["weights"], l["scale"], l["center"]) for l in case["layers"]]
    dtype = np.dtype(model.dtype)
    for layer, ws in zip(model.layers, model_weights(case["seed"], spec)):
        if ws:
            layer.set_weights([w.astype(dtype) for w in ws])
    x = input_batch(case["seed"], model.input.shape[1:]).astype(dtype)
    return model.predict(x)


@pytest.mark.parametrize("case_id", PREDICT_CASES)
def test_same_weights_same_predictions(case_id):
    y = _predict_with_seeded_weights(case_id)
    ref = PREDS[f"{case_id}/y"]
    assert y.shape == ref.shape and y.dtype == np.float32
    scale = float(np.abs(ref).max())
    assert scale > 0
    # float32: two correct implementations differ by rounding, amplified through 16..94
    # layers of random weights (MobileNetV2's largest: ~1e-4 of the output's magnitude);
    # the float64 test below shows nothing else differs.
    assert float(np.abs(y - ref).max()) <= 3e-4 * scale, (float(np.abs(y - ref).max()), scale)


F64_CASES = [c for c in KERAS["cases"] if f"{c}/y64" in PREDS.files]


@pytest.mark.parametrize("case_id", F64_CASES)
def test_same_weights_same_predictions_float64(case_id):
    previous = fastcnn.floatx()
    fastcnn.set_floatx("float64")
    try:
        y = _predict_with_seeded_weights(case_id)
    finally:
        fastcnn.set_floatx(previous)
    ref = PREDS[f"{case_id}/y64"]
    assert y.shape == ref.shape and y.dtype == np.float64
    scale = float(np.abs(ref).max())
    assert scale > 0 and float(np.abs(y - ref).max()) <= 1e-10 * scale, (
        float(np.abs(y - ref).max()), scale)


def test_get_layer_mixed7_and_tutorial_head():
    utils.clear_session()
    base = applications.InceptionV3(input_shape=(75, 75, 3), include_top=False, weights=None)
    for layer in base.layers:
        layer.trainable = False
    last = base.get_layer("mixed7")
    assert tuple(last.output.shape) == (None, 3, 3, 768)
    x = layers.Flatten()(last.output)
    x = layers.Dense(8, activation="relu")(x)
    x = layers.Dense(1, activation="sigmoid")(x)
    model = fastcnn.Model(base.input, x)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 3 * 3 * 768 * 8 + 8 + 9
    out = model.predict(np.zeros((2, 75, 75, 3), np.float32))
    assert out.shape == (2, 1)


def test_input_tensor_argument():
    utils.clear_session()
    inp = fastcnn.Input((40, 40, 3))
    model = applications.VGG16(include_top=False, weights=None, input_tensor=inp,
                               pooling="avg")
    assert model.input is inp and model.output_shape == (None, 512)
    with pytest.raises(ValueError, match="input_tensor must be a symbolic tensor"):
        applications.ResNet50(include_top=False, weights=None,
                              input_tensor=np.zeros((1, 32, 32, 3)))


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("case_id", sorted(KERAS["errors"]))
def test_keras_refusals_with_keras_messages(case_id, tmp_path, monkeypatch):
    err = KERAS["errors"][case_id]
    if err["arch"] == "MobileNetV2" and not HAVE_DEPTHWISE:
        pytest.skip("MobileNetV2 needs layers.DepthwiseConv2D, not in this checkout yet")
    monkeypatch.setenv("FASTCNN_CACHE", str(tmp_path))   # nothing downloaded or found
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in err["kwargs"].items()}
    with pytest.raises(ValueError) as info:
        BUILDERS[err["arch"]]()(**kwargs)
    message = str(info.value)
    if case_id == "vgg16_top_imagenet_activation":
        # Keras prints the function object; fastcnn its name.
        assert message == err["message"].split("<function")[0] + "relu"
    else:
        assert message == err["message"]


def test_without_the_top_the_default_input_is_any_size():
    utils.clear_session()
    model = applications.VGG16(include_top=False, weights=None, pooling="max")
    assert model.input_shape == (None, None, None, 3)
    with pytest.raises(ValueError, match=r"VGG16: input_shape must be \(height, width, "
                                         r"channels\)"):
        applications.VGG16(include_top=False, weights=None, input_shape=(32.5, 40, 3))


def test_bad_pooling_is_named():
    with pytest.raises(ValueError, match="pooling must be None, 'avg' or 'max', got 'average'"):
        applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3),
                           pooling="average")


# ------------------------------------------------------------------ imagenet weights files
@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network: every urlopen fails as a machine without internet access does."""
    calls = []

    def refuse(request, timeout=None):
        calls.append(request.full_url)
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("FASTCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return calls


@pytest.mark.parametrize("arch, include_top, fname", [
    ("VGG16", False, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("ResNet50", False, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("InceptionV3", False, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("MobileNetV2", False, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"),
])
def test_imagenet_without_network_says_where_to_put_the_file(arch, include_top, fname,
                                                              offline, tmp_path):
    if arch == "MobileNetV2" and not HAVE_DEPTHWISE:
        pytest.skip("MobileNetV2 needs layers.DepthwiseConv2D, not in this checkout yet")
    utils.clear_session()
    size = {"InceptionV3": 75, "MobileNetV2": 96}.get(arch, 32)
    with pytest.raises(imagenet_utils.WeightsFileError) as info:
        BUILDERS[arch]()(include_top=include_top, weights="imagenet",
                         input_shape=(size, size, 3))
    message = str(info.value)
    folder = str(tmp_path / "cache" / "models")
    assert fname in message and folder in message and "copy the file" in message
    assert offline and offline[0].endswith("/" + fname)
    assert not list((tmp_path / "cache" / "models").iterdir())   # nothing half-written


def test_mobilenetv2_imagenet_other_size_falls_back_to_224_file(offline):
    if not HAVE_DEPTHWISE:
        pytest.skip("MobileNetV2 needs layers.DepthwiseConv2D, not in this checkout yet")
    utils.clear_session()
    with pytest.warns(UserWarning, match=r"Weights for input shape \(224, 224\)"), \
            pytest.raises(imagenet_utils.WeightsFileError,
                          match="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"):
        applications.MobileNetV2(input_shape=(100, 100, 3), alpha=0.35, weights="imagenet",
                                 include_top=False)


def test_download_into_cache_checks_md5(offline, tmp_path, monkeypatch):
    payload = b"published bytes" * 1000
    good = hashlib.md5(payload).hexdigest()
    urls = []

    def serve(request, timeout=None):
        urls.append(request.full_url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    path = imagenet_utils.get_file("x.h5", "https://example.invalid/x.h5", good)
    assert path == tmp_path / "cache" / "models" / "x.h5" and path.read_bytes() == payload
    # Found in the cache the next time: no second download.
    assert imagenet_utils.get_file("x.h5", "https://example.invalid/x.h5", good) == path
    assert urls == ["https://example.invalid/x.h5"]
    # A server sending other bytes: refused, nothing left behind.
    with pytest.raises(imagenet_utils.WeightsFileError, match="expected 0{32}"):
        imagenet_utils.get_file("y.h5", "https://example.invalid/y.h5", "0" * 32)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.h5"]
    # A corrupted cached file is named, not silently replaced.
    path.write_bytes(b"truncated")
    with pytest.raises(imagenet_utils.WeightsFileError, match="has MD5 .* expected " + good):
        imagenet_utils.get_file("x.h5", "https://example.invalid/x.h5", good)


def test_keras_cache_is_reused(offline, tmp_path):
    keras_models = tmp_path / "keras" / "models"
    keras_models.mkdir(parents=True)
    (keras_models / "z.h5").write_bytes(b"abc")
    md5 = hashlib.md5(b"abc").hexdigest()
    assert imagenet_utils.get_file("z.h5", "https://example.invalid/z.h5", md5) == \
        keras_models / "z.h5"
    assert offline == []


def test_weights_path_calls_load_weights(tmp_path):
    utils.clear_session()
    a = applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg.fcnn"
    a.save_weights(str(path))
    utils.clear_session()
    b = applications.VGG16(include_top=False, weights=str(path), input_shape=(32, 32, 3))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("suffix", [".fcnn", ".weights.h5"])
def test_weights_file_of_another_architecture_is_named(suffix, tmp_path):
    if suffix.endswith(".h5"):
        pytest.importorskip("h5py", reason="Keras's .h5 files need the optional h5py")
    if not HAVE_DEPTHWISE:
        pytest.skip("MobileNetV2 needs layers.DepthwiseConv2D, not in this checkout yet")
    utils.clear_session()
    other = applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3),
                                     alpha=0.35)
    path = tmp_path / f"mobilenet{suffix}"
    other.save_weights(str(path))
    utils.clear_session()
    with pytest.raises(ValueError) as info:
        applications.VGG16(include_top=False, weights=str(path), input_shape=(32, 32, 3))
    message = str(info.value)
    assert str(path) in message and "block1_conv1" in message


# ------------------------------------------------------------------ preprocess / decode
def test_preprocess_input_modes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 4, 5, 3)).astype(np.uint8)
    f = img.astype(np.float32)
    caffe = f[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    tf_mode = f / 127.5 - 1.0
    for module, expected in ((applications.vgg16, caffe), (applications.resnet50, caffe),
                             (applications.inception_v3, tf_mode)):
        out = module.preprocess_input(img)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)
        g = f.copy()
        np.testing.assert_allclose(module.preprocess_input(g), expected, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(g, f)   # the caller's array is left alone
    assert applications.vgg16.preprocess_input(f.astype(np.float64)).dtype == np.float64
    with pytest.raises(ValueError, match="3 channels"):
        applications.vgg16.preprocess_input(np.zeros((2, 4, 4, 1)))


def _fake_index():
    return {str(i): [f"n{i:08d}", f"class_{i}"] for i in range(1000)}


def test_decode_predictions(tmp_path, offline):
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [5, 7, 9]] = [0.2, 0.5, 0.3]
    preds[1, 999] = 1.0
    out = applications.vgg16.decode_predictions(preds, top=2, class_index=_fake_index())
    assert [r[:2] for r in out[0]] == [("n00000007", "class_7"), ("n00000009", "class_9")]
    assert out[1][0][:2] == ("n00000999", "class_999") and out[1][0][2] == 1.0
    # From the cache folder (where the error below says to put it).
    with pytest.raises(imagenet_utils.WeightsFileError) as info:
        applications.resnet50.decode_predictions(preds)
    message = str(info.value)
    assert "imagenet_class_index.json" in message and str(tmp_path / "cache" / "models") in message
    assert "class_index='/path/to/imagenet_class_index.json'" in message
    with pytest.raises(ValueError, match=r"shape \(samples, 1000\)"):
        applications.vgg16.decode_predictions(np.zeros((2, 10)))


def test_decode_predictions_reads_the_cached_index(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX_MD5", None)
    folder = tmp_path / "cache" / "models"
    folder.mkdir(parents=True)
    (folder / "imagenet_class_index.json").write_text(json.dumps(_fake_index()))
    preds = np.zeros((1, 1000), np.float32)
    preds[0, 3] = 1
    assert applications.inception_v3.decode_predictions(preds, top=1)[0][0][1] == "class_3"


def test_inception_v3_round_trips_through_fastcnns_own_file(tmp_path):
    """A branched architecture saved as .fcnn loads with every weight in its layer (its
    layers are in Keras's depth order, not the walk order: matched by name)."""
    utils.clear_session()
    model = applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    x = np.random.default_rng(0).random((1, 75, 75, 3)).astype(np.float32)
    model.save(tmp_path / "inception.fcnn")
    again = fastcnn.load_model(tmp_path / "inception.fcnn")
    assert [l.name for l in again.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
