"""Keras's model and weight files (issue 14 §1): files written by Keras 3.15
(tests/fixtures/keras/make_keras_files.py) load into fastcnn and predict as Keras did, and
fastcnn writes files with Keras's exact layout (Keras itself reads them: the optional test
at the end, where Keras is installed)."""
import json
import os
import zipfile
from pathlib import Path

import fastcnn
import numpy as np
import pytest

from fastcnn import layers, saving

h5py = pytest.importorskip(
    "h5py", reason="h5py is not installed: Keras's files need `pip install fastcnn[keras]`")

D = Path(__file__).parent / "fixtures" / "keras" / "keras_files"
EXPECTED = np.load(D / "expected.npz")
MODELS = ("seq", "fun", "nested", "layers14", "shared")


def inputs_of(name):
    if f"{name}_x" in EXPECTED.files:
        return EXPECTED[f"{name}_x"]
    prefix = f"{name}_x_"   # named inputs (a dict)
    return {k[len(prefix):]: EXPECTED[k] for k in EXPECTED.files if k.startswith(prefix)}


def outputs(model, name):
    ys = model.predict(inputs_of(name), verbose=0)
    if isinstance(ys, dict):
        return [ys[k] for k in sorted(ys)]
    return ys if isinstance(ys, list) else [ys]


def expected_outputs(name):
    keys = sorted(k for k in EXPECTED.files if k.startswith(f"{name}_y_"))
    if keys:   # named outputs, in the order of their sorted names
        return [EXPECTED[k] for k in keys]
    return [EXPECTED[f"{name}_y{k}"]
            for k in range(sum(1 for f in EXPECTED.files if f.startswith(f"{name}_y")))]


def assert_keras_predictions(model, name):
    ys, expected = outputs(model, name), expected_outputs(name)
    assert len(ys) == len(expected)
    for y, e in zip(ys, expected):
        np.testing.assert_allclose(y, e, rtol=1e-5, atol=2e-6)


def zeroed(model):
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    return model


def h5_paths(source):
    out = []
    with h5py.File(source, "r") as f:
        f.visititems(lambda n, o: out.append(
            (n, tuple(o.shape) if isinstance(o, h5py.Dataset) else None)))
    return sorted(out)


def keras_member_paths(path):
    import io
    with zipfile.ZipFile(path) as zf:
        return h5_paths(io.BytesIO(zf.read("model.weights.h5")))


# ------------------------------------------------------------------ fastcnn models in code
def seq_in_code(last_units=3):
    return fastcnn.Sequential([
        layers.Input((10, 10, 3)),
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.BatchNormalization(),
        layers.Conv2D(5, (3, 2)),
        layers.Dropout(0.3),
        layers.Flatten(),
        layers.Dense(8, activation="relu"),
        layers.Dense(last_units, activation="softmax"),
    ])


def fun_in_code():
    i = layers.Input((8, 8, 3))
    c1 = layers.Conv2D(4, 3, padding="same")(i)
    c2 = layers.Conv2D(4, 1, activation="relu")(i)
    b = layers.BatchNormalization(center=False)(layers.Add()([c1, c2]))
    g = layers.GlobalAveragePooling2D()(layers.Concatenate()([b, c1]))
    p = layers.Flatten()(layers.MaxPooling2D(4)(c2))
    o1 = layers.Dense(3, activation="softmax")(g)
    o2 = layers.Dense(1, activation="sigmoid")(layers.Concatenate()([g, p]))
    return fastcnn.Model(i, [o1, o2])


def nested_in_code():
    inner = fastcnn.Sequential([layers.Input((6, 6, 2)), layers.Conv2D(3, 3, padding="same"),
                                layers.BatchNormalization()])
    j = layers.Input((6, 6, 2))
    inner_fun = fastcnn.Model(j, layers.ReLU()(layers.Conv2D(3, 1)(j)))
    i = layers.Input((6, 6, 2))
    z = layers.Add()([inner(i), inner_fun(i)])
    return fastcnn.Model(i, layers.Dense(2)(layers.Flatten()(z)))


def layers14_in_code():
    i = layers.Input((9, 9, 3))
    x = layers.ZeroPadding2D(((1, 0), (2, 1)))(i)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = layers.ReLU(max_value=6.0)(layers.BatchNormalization()(x))
    x = layers.SeparableConv2D(5, (3, 2), strides=2, activation="relu")(x)
    y = layers.Conv2D(4, 3, dilation_rate=2, padding="same")(x)
    y = layers.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1)(y)
    y = layers.Cropping2D(((1, 0), (0, 1)))(y)
    z = layers.UpSampling2D(2, interpolation="bilinear")(layers.Conv2D(3, 1)(x))
    z = layers.Cropping2D(((1, 0), (0, 1)))(z)
    out = layers.Dense(2)(layers.GlobalAveragePooling2D()(layers.Concatenate()([y, z])))
    return fastcnn.Model(i, out)


def shared_in_code():
    a, b = layers.Input((5,), name="a"), layers.Input((5,), name="b")
    shared = layers.Dense(4, activation="relu")
    u, v = shared(a), shared(b)
    w = shared(layers.Dense(5)(layers.Add()([u, v])))
    return fastcnn.Model({"a": a, "b": b}, {"out": layers.Dense(2)(w),
                                            "aux": layers.Dense(1)(v)})


IN_CODE = {"seq": seq_in_code, "fun": fun_in_code, "nested": nested_in_code,
           "layers14": layers14_in_code, "shared": shared_in_code}


# ------------------------------------------------------------------------- load_model
@pytest.mark.parametrize("file,name", [
    ("seq.keras", "seq"), ("seq.h5", "seq"), ("fun.keras", "fun"), ("fun.h5", "fun"),
    ("nested.keras", "nested"), ("nested.h5", "nested"),
    ("layers14.keras", "layers14"), ("layers14.h5", "layers14"),
    ("shared.keras", "shared"), ("shared.h5", "shared"),
    ("keras2_seq.h5", "seq"), ("keras2_fun.h5", "fun")])
def test_load_model_reads_keras_files_and_predicts_as_keras(file, name):
    model = fastcnn.load_model(D / file)
    assert_keras_predictions(model, name)


def test_loaded_sequential_has_keras_names_layers_and_arguments():
    model = fastcnn.load_model(D / "seq.keras")
    assert isinstance(model, fastcnn.Sequential) and model.name == "seq_cnn"
    assert [type(l).__name__ for l in model.layers] == [
        "Conv2D", "MaxPooling2D", "BatchNormalization", "Conv2D", "Dropout", "Flatten",
        "Dense", "Dense"]
    assert [l.name for l in model.layers][:3] == ["conv2d", "max_pooling2d",
                                                  "batch_normalization"]
    conv, bn = model.layers[3], model.layers[2]
    assert conv.kernel.shape == (3, 2, 4, 5) and conv.kernel_size == (3, 2)
    assert type(conv.kernel_regularizer).__name__ == "L2"
    assert conv.kernel_regularizer.l2 == pytest.approx(1e-4)
    assert type(model.layers[6].kernel_initializer).__name__ == "HeNormal"
    assert model.layers[4].rate == pytest.approx(0.3)
    # BatchNormalization's four arrays in Keras's order: gamma, beta, mean, variance
    with h5py.File(D / "seq.weights.h5") as f:
        for i, w in enumerate(bn.weights):
            np.testing.assert_array_equal(w, f[f"layers/batch_normalization/vars/{i}"][()])


def test_loaded_functional_keeps_the_graph_names_and_two_outputs():
    model = fastcnn.load_model(D / "fun.keras")
    assert model.name == "two_heads" and model.output_names == ["cls", "score"]
    bn = model.get_layer("bn")
    assert not bn.center and len(bn.weights) == 3   # gamma, moving mean, moving variance
    assert type(model.get_layer("cat")).__name__ == "Concatenate"


def test_model_layers_are_in_the_order_keras_wrote():
    """A Functional model's ``layers`` follow Keras's order (by depth, not the walk
    order): the order of Keras's files, get_weights() and summary()."""
    for name in ("fun", "nested", "layers14", "shared"):
        with zipfile.ZipFile(D / f"{name}.keras") as zf:
            config = json.loads(zf.read("config.json"))
        model = fastcnn.load_model(D / f"{name}.keras")
        assert [l.name for l in model.layers] == \
            [e["name"] for e in config["config"]["layers"]]


# ----------------------------------------------------------------------- load_weights
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("suffix", [".weights.h5", "_legacy.weights.h5", ".keras", ".h5"])
def test_load_weights_into_a_model_built_in_code(name, suffix):
    model = zeroed(IN_CODE[name]())
    model.load_weights(D / f"{name}{suffix}")
    assert_keras_predictions(model, name)


def test_load_weights_by_name_matches_layer_names():
    keras_model = fastcnn.load_model(D / "seq.keras")
    model = seq_in_code()
    for ours, theirs in zip(model.layers, keras_model.layers):
        ours.name = theirs.name
    # reversed names would break the by-position match, not the by-name one
    zeroed(model)
    model.load_weights(D / "seq_legacy.weights.h5", by_name=True)
    assert_keras_predictions(model, "seq")
    other = zeroed(seq_in_code())     # no name in common: nothing is loaded
    other.load_weights(D / "seq_legacy.weights.h5", by_name=True)
    assert all(not w.any() for w in other.get_weights())


@pytest.mark.parametrize("file", ["seq.weights.h5", "seq_legacy.weights.h5"])
def test_another_architecture_names_the_first_layer_and_both_shapes(file):
    model = seq_in_code(last_units=4)
    before = model.get_weights()
    with pytest.raises(ValueError) as info:
        model.load_weights(D / file)
    message = str(info.value)
    assert "seq" in message and file in message
    assert "(8, 4)" in message and "(8, 3)" in message and "dense" in message
    for a, b in zip(before, model.get_weights()):   # nothing assigned
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("file", ["seq.weights.h5", "seq_legacy.weights.h5"])
def test_skip_mismatch_skips_the_differing_layer_with_a_warning(file):
    model = seq_in_code(last_units=4)
    last = [w.copy() for w in model.layers[-1].weights]
    with pytest.warns(UserWarning, match="skipping"):
        model.load_weights(D / file, skip_mismatch=True)
    np.testing.assert_array_equal(model.layers[-1].weights[0], last[0])
    with h5py.File(D / "seq.weights.h5") as f:
        np.testing.assert_array_equal(model.layers[0].kernel, f["layers/conv2d/vars/0"][()])


def test_legacy_layer_count_mismatch_is_an_error_naming_the_first_difference():
    model = fastcnn.Sequential([layers.Input((10, 10, 3)), layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="layers with weights"):
        model.load_weights(D / "seq_legacy.weights.h5")


def test_by_name_is_for_legacy_files_and_fastcnn_files_refuse_keras_options(tmp_path):
    model = seq_in_code()
    with pytest.raises(ValueError, match="by_name"):
        model.load_weights(D / "seq.weights.h5", by_name=True)
    model.save_weights(tmp_path / "w.fcnn")
    with pytest.raises(ValueError, match="skip_mismatch"):
        model.load_weights(tmp_path / "w.fcnn", skip_mismatch=True)


# ------------------------------------------------------------------------------ writing
@pytest.mark.parametrize("name", MODELS)
def test_saved_keras_archive_has_keras_structure_and_reloads(name, tmp_path):
    model = fastcnn.load_model(D / f"{name}.keras")
    path = tmp_path / f"{name}.keras"
    model.save(path)
    with zipfile.ZipFile(path) as ours, zipfile.ZipFile(D / f"{name}.keras") as theirs:
        assert ours.namelist() == theirs.namelist() == \
            ["metadata.json", "config.json", "model.weights.h5"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in ours.infolist())
        c_ours = json.loads(ours.read("config.json"))
        c_theirs = json.loads(theirs.read("config.json"))
    assert c_ours["class_name"] == c_theirs["class_name"]
    assert c_ours["module"] == c_theirs["module"]

    def layer_classes(config):
        # (a Sequential's InputLayer name is fastcnn's own: it is no layer of the model)
        return [(e["class_name"], e.get("module"), e.get("name", e["config"].get("name"))
                 if e["class_name"] != "InputLayer" or "inbound_nodes" in e else None)
                for e in config["config"]["layers"]]
    assert layer_classes(c_ours) == layer_classes(c_theirs)
    # every Keras argument fastcnn writes is one Keras wrote, with the same value
    for e_ours, e_theirs in zip(c_ours["config"]["layers"], c_theirs["config"]["layers"]):
        if e_ours["class_name"] in ("Sequential", "Functional"):
            continue
        for key, value in e_ours["config"].items():
            assert key in e_theirs["config"], (e_ours["class_name"], key)
            if key not in ("dtype",) and not key.endswith("_initializer") and \
                    e_ours["class_name"] != "InputLayer":
                assert json.dumps(value) == json.dumps(e_theirs["config"][key]), key
        if "inbound_nodes" in e_theirs:
            assert json.dumps(e_ours["inbound_nodes"]) == json.dumps(e_theirs["inbound_nodes"])
    if "input_layers" in c_theirs["config"]:
        for key in ("input_layers", "output_layers"):
            assert c_ours["config"][key] == c_theirs["config"][key]
    assert keras_member_paths(path) == keras_member_paths(D / f"{name}.keras")
    assert_keras_predictions(fastcnn.load_model(path), name)


@pytest.mark.parametrize("name", MODELS)
def test_saved_weights_have_keras_group_paths(name, tmp_path):
    model = fastcnn.load_model(D / f"{name}.keras")
    model.save_weights(tmp_path / "w.weights.h5")
    assert h5_paths(tmp_path / "w.weights.h5") == h5_paths(D / f"{name}.weights.h5")
    model.save_weights(tmp_path / "w.h5")      # Keras's legacy layout
    with h5py.File(tmp_path / "w.h5") as ours, \
            h5py.File(D / f"{name}_legacy.weights.h5") as theirs:
        names = list(ours.attrs["layer_names"])
        assert names == list(theirs.attrs["layer_names"])
        for n in names:
            assert len(ours[n].attrs["weight_names"]) == len(theirs[n].attrs["weight_names"])
    for file in ("w.weights.h5", "w.h5"):
        other = zeroed(IN_CODE[name]())
        other.load_weights(tmp_path / file)
        assert_keras_predictions(other, name)


def test_saved_legacy_h5_model_reloads(tmp_path):
    model = fastcnn.load_model(D / "fun.keras")
    model.save(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5") as f:
        assert json.loads(f.attrs["model_config"])["class_name"] == "Functional"
        assert "model_weights" in f
    assert_keras_predictions(fastcnn.load_model(tmp_path / "m.h5"), "fun")


def test_a_model_built_in_fastcnn_round_trips_through_keras_files(tmp_path):
    fastcnn.utils.set_random_seed(5)
    model = seq_in_code()
    x = np.random.default_rng(1).standard_normal((2, 10, 10, 3)).astype(np.float32)
    y = model.predict(x, verbose=0)
    for file in ("m.keras", "m.h5"):
        model.save(tmp_path / file)
        again = fastcnn.load_model(tmp_path / file)
        assert [type(l).__name__ for l in again.layers] == \
            [type(l).__name__ for l in model.layers]
        np.testing.assert_array_equal(again.predict(x, verbose=0), y)


def test_native_format_stays_the_default_for_other_paths(tmp_path):
    model = seq_in_code()
    model.save(tmp_path / "m.fcnn")
    with zipfile.ZipFile(tmp_path / "m.fcnn") as zf:
        assert saving.META_NAME in zf.namelist() and "config.json" not in zf.namelist()
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        assert "config.json" in zf.namelist() and saving.META_NAME not in zf.namelist()
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        model.save_weights(tmp_path / "w.keras")


def test_a_layer_keras_cannot_represent_is_named_and_nothing_is_written(tmp_path):
    model = fastcnn.Sequential([layers.Input((4,)), layers.Dense(3, name="odd",
                                                                 activation="gelu_approximate")])
    for file in ("m.keras", "m.h5"):
        with pytest.raises(ValueError, match=r"'odd'.*gelu_approximate"):
            model.save(tmp_path / file)
    assert os.listdir(tmp_path) == []


def test_a_custom_layer_class_is_named_and_nothing_is_written(tmp_path):
    class Twice(layers.Layer):
        def call(self, x):
            return x * 2.0

    model = fastcnn.Sequential([layers.Input((4,)), Twice(name="twice"), layers.Dense(2)])
    with pytest.raises(ValueError, match=r"'twice' \(Twice\).*Keras has no layer class"):
        model.save(tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []


def test_save_replaces_an_existing_file_atomically(tmp_path):
    model = seq_in_code()
    path = tmp_path / "m.keras"
    path.write_bytes(b"old")
    model.save(path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(FileExistsError):
        model.save(path, overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]


def test_without_h5py_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    from fastcnn.keras_files import _h5
    monkeypatch.setattr(_h5, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install fastcnn\[keras\]"):
        fastcnn.load_model(D / "seq.keras")
    model = seq_in_code()
    with pytest.raises(ImportError, match=r"pip install fastcnn\[keras\]"):
        model.load_weights(D / "seq.weights.h5")
    with pytest.raises(ImportError, match=r"pip install fastcnn\[keras\]"):
        model.save(tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------- Keras itself (optional peer check)
def test_keras_reads_what_fastcnn_writes(tmp_path):
    keras = pytest.importorskip(
        "keras", reason="Keras is not installed here (an optional cross-check; "
                        "tests/fixtures/keras/make_keras_files.py's Keras runs it)")
    for name in MODELS:
        model = fastcnn.load_model(D / f"{name}.keras")
        model.save(tmp_path / f"{name}.keras")
        model.save_weights(tmp_path / f"{name}.weights.h5")
        k = keras.saving.load_model(tmp_path / f"{name}.keras", compile=False)
        ys = k.predict(inputs_of(name), verbose=0)
        ys = [ys[key] for key in sorted(ys)] if isinstance(ys, dict) else \
            ys if isinstance(ys, list) else [ys]
        for y, e in zip(ys, outputs(model, name)):
            np.testing.assert_allclose(y, e, rtol=1e-5, atol=2e-6)
        k.load_weights(tmp_path / f"{name}.weights.h5")


# ------------------------------------------------------------------- compile configs
@pytest.mark.parametrize("file", ["seq_compiled.keras", "seq_compiled.h5"])
def test_keras_compile_config_is_restored(file):
    model = fastcnn.load_model(D / file)
    assert_keras_predictions(model, "seq_compiled")
    assert model.compiled and type(model.optimizer).__name__ == "SGD"
    config = model.optimizer.get_config()
    assert config["learning_rate"] == pytest.approx(0.05)
    assert config["momentum"] == pytest.approx(0.9)
    assert type(model.loss).__name__ == "CategoricalCrossentropy"
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    x = EXPECTED["seq_x"]
    y = np.eye(3, dtype=np.float32)[[0, 2]]
    history = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    assert not fastcnn.load_model(D / file, compile=False).compiled


def test_augmentation_front_and_activation_layers_load_compiled():
    model = fastcnn.load_model(D / "aug.keras")
    assert [type(l).__name__ for l in model.layers][:3] == ["Rescaling", "RandomFlip",
                                                            "RandomRotation"]
    assert_keras_predictions(model, "aug")   # inference: the random layers are identities
    assert type(model.optimizer).__name__ == "Adam"
    assert model.optimizer.get_config()["learning_rate"] == pytest.approx(2e-3)


def test_a_compile_config_fastcnn_cannot_rebuild_warns_and_loads_uncompiled(tmp_path):
    with zipfile.ZipFile(D / "seq_compiled.keras") as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(entries["config.json"])
    config["compile_config"]["loss"] = {"module": "my_losses", "class_name": "Mine",
                                        "config": {}, "registered_name": "Mine"}
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    with pytest.warns(UserWarning, match="compile config was not restored.*Mine"):
        model = fastcnn.load_model(tmp_path / "m.keras")
    assert not model.compiled
    assert_keras_predictions(model, "seq_compiled")


def test_a_compiled_fastcnn_model_writes_keras_compile_config(tmp_path):
    from fastcnn import losses, metrics, optimizers, schedules
    model = seq_in_code()
    model.compile(optimizer=optimizers.SGD(schedules.ExponentialDecay(0.1, 100, 0.9),
                                           momentum=0.9),
                  loss=losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=["accuracy", metrics.CategoricalAccuracy(name="cat_acc")])
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        compile_config = json.loads(zf.read("config.json"))["compile_config"]
    assert compile_config["optimizer"]["module"] == "keras.optimizers"
    assert compile_config["optimizer"]["class_name"] == "SGD"
    assert compile_config["optimizer"]["config"]["learning_rate"]["module"] == \
        "keras.optimizers.schedules"
    assert compile_config["loss"]["class_name"] == "CategoricalCrossentropy"
    assert compile_config["metrics"][0] == "accuracy"
    assert compile_config["metrics"][1]["class_name"] == "CategoricalAccuracy"
    again = fastcnn.load_model(tmp_path / "m.keras")
    assert again.compiled and again.loss.get_config()["label_smoothing"] == 0.1
    assert again.optimizer.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"
    model.compile(optimizer="adam", loss=lambda y, p: ((y - p) ** 2).mean())
    with pytest.warns(UserWarning, match="compile config is not written"):
        model.save(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "plain.keras") as zf:
        assert json.loads(zf.read("config.json"))["compile_config"] is None


def test_tf_keras_2_13_group_names_are_read(tmp_path):
    # tf.keras 2.13 wrote .weights.h5 groups under "_layer_checkpoint_dependencies"
    path = tmp_path / "old.weights.h5"
    with h5py.File(D / "seq.weights.h5") as src, h5py.File(path, "w") as dst:
        src.copy(src["layers"], dst, name="_layer_checkpoint_dependencies")
        src.copy(src["vars"], dst, name="vars")
    model = zeroed(seq_in_code())
    model.load_weights(path)
    assert_keras_predictions(model, "seq")


def test_by_name_with_skip_mismatch_skips_a_layer_whose_weight_count_differs():
    # the file's first Conv2D has a bias; this model's layer of that name has none
    odd = fastcnn.Sequential([layers.Input((10, 10, 3)),
                              layers.Conv2D(4, 3, use_bias=False, name="conv2d")])
    with pytest.raises(ValueError, match=r"'conv2d'.*1 weights.*has 2"):
        odd.load_weights(D / "seq_legacy.weights.h5", by_name=True)
    with pytest.warns(UserWarning, match="skipping"):
        odd.load_weights(D / "seq_legacy.weights.h5", by_name=True, skip_mismatch=True)


def test_subclassed_and_unbuilt_models_cannot_be_written(tmp_path):
    class Mine(fastcnn.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Mine()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="subclassed"):
        model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match="not built"):
        fastcnn.Sequential([layers.Dense(2)]).save(tmp_path / "n.keras")
    assert os.listdir(tmp_path) == []


def test_activation_serialized_as_a_keras_function_is_read(tmp_path):
    with zipfile.ZipFile(D / "seq.keras") as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(entries["config.json"])
    config["config"]["layers"][1]["config"]["activation"] = {
        "module": "keras.activations", "class_name": "function", "config": "relu",
        "registered_name": "relu"}
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    model = fastcnn.load_model(tmp_path / "m.keras")
    assert model.layers[0].activation == "relu"
    assert_keras_predictions(model, "seq")
