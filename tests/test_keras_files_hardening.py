"""Broken, truncated and crafted Keras files (issue 14 §1 and §5): each gives a clear error
naming the file and what does not fit, nothing is executed, nothing is allocated for a
size the file only claims, and nothing is assigned to the model."""
import json
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import fastcnn
import numpy as np
import pytest

from fastcnn import layers
from fastcnn.saving import ModelFileError

h5py = pytest.importorskip(
    "h5py", reason="h5py is not installed: Keras's files need `pip install fastcnn[keras]`")

D = Path(__file__).parent / "fixtures" / "keras" / "keras_files"


def seq_in_code():
    return fastcnn.Sequential([
        layers.Input((10, 10, 3)), layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(), layers.BatchNormalization(), layers.Conv2D(5, (3, 2)),
        layers.Dropout(0.3), layers.Flatten(), layers.Dense(8, activation="relu"),
        layers.Dense(3, activation="softmax")])


def members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def keras_with(tmp_path, source="seq.keras", **changes):
    """A copy of a Keras archive with members replaced (bytes) or dropped (None)."""
    entries = members(D / source)
    for key, value in changes.items():
        name = {"config": "config.json", "weights": "model.weights.h5",
                "metadata": "metadata.json"}[key]
        if value is None:
            entries.pop(name)
        else:
            entries[name] = value
    return write_zip(tmp_path / "crafted.keras", entries)


def edited_config(source, edit):
    config = json.loads(members(D / source)["config.json"])
    edit(config)
    return json.dumps(config).encode()


def h5_copy(tmp_path, source, edit, name="crafted.weights.h5"):
    path = tmp_path / name
    shutil.copy(D / source, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def replace_dataset(f, path, **kwargs):
    del f[path]
    f.create_dataset(path, **kwargs)


def assert_untouched(model, before):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------- truncation
@pytest.mark.parametrize("file", ["seq.weights.h5", "seq_legacy.weights.h5"])
def test_truncated_weights_file(file, tmp_path):
    data = (D / file).read_bytes()
    path = tmp_path / file
    path.write_bytes(data[:len(data) // 2])
    model = seq_in_code()
    before = model.get_weights()
    with pytest.raises(ModelFileError, match=rf"{file}.*(truncated|cannot be read)"):
        model.load_weights(path)
    assert_untouched(model, before)


@pytest.mark.parametrize("file", ["seq.keras", "seq.h5"])
def test_truncated_model_file(file, tmp_path):
    data = (D / file).read_bytes()
    for cut in (len(data) // 2, len(data) - 40, 100):
        path = tmp_path / file
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=file):
            fastcnn.load_model(path)


def test_truncated_weights_member_inside_the_archive(tmp_path):
    weights = members(D / "seq.keras")["model.weights.h5"]
    path = keras_with(tmp_path, weights=weights[:len(weights) // 2])
    with pytest.raises(ModelFileError, match=r"crafted\.keras.*model\.weights\.h5"):
        fastcnn.load_model(path)


def test_a_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(ModelFileError, match=r"w\.h5.*not an HDF5 file"):
        seq_in_code().load_weights(path)


def test_an_hdf5_file_that_is_not_keras(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3, np.float32)
    with pytest.raises(ModelFileError, match="not a Keras weights file"):
        seq_in_code().load_weights(path)
    with pytest.raises(ModelFileError, match="no model_config"):
        fastcnn.load_model(path)


# --------------------------------------------------------------- shapes and dtypes
def test_dataset_of_another_shape_names_layer_variable_and_both_shapes(tmp_path):
    path = h5_copy(tmp_path, "seq.weights.h5", lambda f: replace_dataset(
        f, "layers/dense_1/vars/0", data=np.zeros((8, 4), np.float32)))
    model = seq_in_code()
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"crafted\.weights\.h5.*'dense.*\(8, 3\).*\(8, 4\)"):
        model.load_weights(path)
    assert_untouched(model, before)


def test_dataset_of_another_shape_in_a_keras_archive(tmp_path):
    def edit(f):
        replace_dataset(f, "layers/conv2d/vars/0", data=np.zeros((3, 3, 3, 2), np.float32))
    weights_path = h5_copy(tmp_path, "seq.weights.h5", edit)
    path = keras_with(tmp_path, weights=weights_path.read_bytes())
    with pytest.raises(ModelFileError,
                       match=r"crafted\.keras.*'conv2d' \(Conv2D\).*\(3, 3, 3, 4\).*"
                             r"\(3, 3, 3, 2\)"):
        fastcnn.load_model(path)


def test_dataset_of_a_non_float_dtype(tmp_path):
    path = h5_copy(tmp_path, "seq.weights.h5", lambda f: replace_dataset(
        f, "layers/dense_1/vars/1", data=np.zeros(3, np.int32)))
    with pytest.raises(ModelFileError, match=r"vars/1.*dtype int32"):
        seq_in_code().load_weights(path)


def test_bfloat16_marked_dataset_is_refused(tmp_path):
    def edit(f):
        replace_dataset(f, "layers/dense_1/vars/1", data=np.zeros(3, np.uint16))
        f["layers/dense_1/vars/1"].attrs["dtype"] = "bfloat16"
    path = h5_copy(tmp_path, "seq.weights.h5", edit)
    with pytest.raises(ModelFileError, match="bfloat16"):
        seq_in_code().load_weights(path)


def test_compressed_chunked_datasets_are_read(tmp_path):
    def edit(f):
        for name in ("layers/conv2d/vars/0", "layers/dense/vars/0"):
            data = f[name][()]
            replace_dataset(f, name, data=data, compression="gzip", shuffle=True,
                            chunks=True)
    path = h5_copy(tmp_path, "seq.weights.h5", edit)
    model = seq_in_code()
    model.load_weights(path)
    with h5py.File(D / "seq.weights.h5") as f:
        np.testing.assert_array_equal(model.layers[0].kernel, f["layers/conv2d/vars/0"][()])


def test_huge_declared_shape_is_refused_before_reading(tmp_path):
    def edit(f):
        del f["layers/dense/vars/0"]
        # 2**40 float32 elements declared (4 TiB), no data written: chunked, unallocated
        f.create_dataset("layers/dense/vars/0", shape=(2**20, 2**20), dtype="float32",
                         chunks=(1024, 1024))
    path = h5_copy(tmp_path, "seq.weights.h5", edit)
    model = seq_in_code()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"\(1048576, 1048576\)"):
            model.load_weights(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_dataset_whose_data_was_never_written(tmp_path):
    def edit(f):
        del f["layers/dense_1/vars/0"]
        f.create_dataset("layers/dense_1/vars/0", shape=(8, 3), dtype="float32",
                         chunks=(2, 3))   # no chunk written: HDF5 would return zeros
    path = h5_copy(tmp_path, "seq.weights.h5", edit)
    with pytest.raises(ModelFileError, match=r"holds 0 of its 96 bytes"):
        seq_in_code().load_weights(path)


def test_huge_chunks_are_refused(tmp_path):
    def edit(f):
        data = f["layers/dense_1/vars/1"][()]
        del f["layers/dense_1/vars/1"]
        d = f.create_dataset("layers/dense_1/vars/1", shape=(3,), maxshape=(None,),
                             dtype="float32", chunks=(2**22,))
        d[:] = data
    path = h5_copy(tmp_path, "seq.weights.h5", edit)
    with pytest.raises(ModelFileError, match="chunks"):
        seq_in_code().load_weights(path)


def test_architecture_larger_than_the_file_is_refused_before_allocating(tmp_path):
    def edit(config):
        config["config"]["layers"][-2]["config"]["units"] = 2**27   # Dense(2**27)
    path = keras_with(tmp_path, config=edited_config("seq.keras", edit))
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="more weights than the file holds"):
            fastcnn.load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_variable_count_that_differs_is_named(tmp_path):
    path = h5_copy(tmp_path, "seq.weights.h5", lambda f: f.__delitem__(
        "layers/batch_normalization/vars/3"))
    with pytest.raises(ValueError, match=r"'batch_normalization.*4 variables.*has 3"):
        seq_in_code().load_weights(path)


# ------------------------------------------------------------------ links and storage
def test_links_to_elsewhere_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros((8, 3), np.float32)

    def external(f):
        del f["layers/dense_1/vars/0"]
        f["layers/dense_1/vars/0"] = h5py.ExternalLink(str(other), "/x")
    path = h5_copy(tmp_path, "seq.weights.h5", external)
    with pytest.raises(ModelFileError, match="ExternalLink"):
        seq_in_code().load_weights(path)

    def soft(f):
        del f["layers/dense_1/vars/1"]
        f["layers/dense_1/vars/1"] = h5py.SoftLink("/layers/dense/vars/1")
    path = h5_copy(tmp_path, "seq.weights.h5", soft, name="soft.weights.h5")
    with pytest.raises(ModelFileError, match="SoftLink"):
        seq_in_code().load_weights(path)


def test_external_raw_data_is_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros(3, np.float32).tobytes())

    def edit(f):
        del f["layers/dense_1/vars/1"]
        f.create_dataset("layers/dense_1/vars/1", shape=(3,), dtype="float32",
                         external=[(str(raw), 0, 12)])
    path = h5_copy(tmp_path, "seq.weights.h5", edit)
    with pytest.raises(ModelFileError, match="external files"):
        seq_in_code().load_weights(path)


# ------------------------------------------------------------------- the archive
def test_archive_without_its_weights_member(tmp_path):
    path = keras_with(tmp_path, weights=None)
    with pytest.raises(ModelFileError, match=r"crafted\.keras.*model\.weights\.h5.*missing"):
        fastcnn.load_model(path)


def test_archive_without_config(tmp_path):
    path = keras_with(tmp_path, config=None)
    with pytest.raises(ModelFileError, match=r"crafted\.keras.*config\.json.*missing"):
        fastcnn.load_model(path)


def test_config_that_is_not_json(tmp_path):
    path = keras_with(tmp_path, config=b"{'class_name': Sequential")
    with pytest.raises(ModelFileError, match=r"crafted\.keras.*config\.json is not valid JSON"):
        fastcnn.load_model(path)


def test_a_zip_that_is_not_an_archive(tmp_path):
    path = tmp_path / "x.keras"
    path.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ModelFileError, match=r"x\.keras.*not a readable Keras archive"):
        fastcnn.load_model(path)


# ---------------------------------------------------------------- configs: no code
def lambda_config(config):
    entry = config["config"]["layers"][5]   # the Dropout -> a Lambda
    entry["class_name"] = "Lambda"
    entry["config"] = {"name": "lam", "function": {"class_name": "__lambda__",
                                                   "config": {"code": "4wEAAAAA"}}}


def test_lambda_layer_is_refused(tmp_path):
    path = keras_with(tmp_path, config=edited_config("seq.keras", lambda_config))
    with pytest.raises(ModelFileError, match=r"crafted\.keras.*'lam' \(Lambda\).*Python code"):
        fastcnn.load_model(path)


def test_custom_object_is_refused_unless_given(tmp_path):
    def custom(config):
        entry = config["config"]["layers"][5]
        entry["module"] = "my_project.layers"
        entry["class_name"] = "MyDropout"
        entry["registered_name"] = "Custom>MyDropout"
    path = keras_with(tmp_path, config=edited_config("seq.keras", custom))
    with pytest.raises(ModelFileError, match=r"custom object 'MyDropout'.*custom_objects"):
        fastcnn.load_model(path)

    class MyDropout(layers.Dropout):
        pass
    model = fastcnn.load_model(path, custom_objects={"MyDropout": MyDropout})
    assert type(model.layers[4]) is MyDropout


def test_custom_initializer_is_refused(tmp_path):
    def custom(config):
        config["config"]["layers"][1]["config"]["kernel_initializer"] = {
            "module": "evil", "class_name": "Pwn", "config": {}, "registered_name": "Pwn"}
    path = keras_with(tmp_path, config=edited_config("seq.keras", custom))
    with pytest.raises(ModelFileError, match=r"kernel_initializer.*custom object 'Pwn'"):
        fastcnn.load_model(path)


def test_keras_layer_fastcnn_lacks_names_class_and_file(tmp_path):
    def lstm(config):
        config["config"]["layers"][5]["class_name"] = "LSTM"
    path = keras_with(tmp_path, config=edited_config("seq.keras", lstm))
    with pytest.raises(ModelFileError, match=r"crafted\.keras.*'dropout' \(LSTM\).*no layer "
                                             r"'LSTM'"):
        fastcnn.load_model(path)


def test_keras_argument_fastcnn_lacks_names_layer_argument_and_file(tmp_path):
    def groups(config):
        config["config"]["layers"][1]["config"]["groups"] = 2
    path = keras_with(tmp_path, config=edited_config("seq.keras", groups))
    with pytest.raises(ModelFileError, match=r"crafted\.keras.*'conv2d' \(Conv2D\).*groups=2"):
        fastcnn.load_model(path)


def test_keras_default_arguments_fastcnn_lacks_are_dropped(tmp_path):
    def extras(config):   # Keras-only arguments at their defaults
        config["config"]["layers"][1]["config"].update(groups=1, lora_rank=None,
                                                       activity_regularizer=None)
    path = keras_with(tmp_path, config=edited_config("seq.keras", extras))
    assert type(fastcnn.load_model(path).layers[0]).__name__ == "Conv2D"


def test_mixed_precision_policy_is_refused(tmp_path):
    def mixed(config):
        config["config"]["layers"][1]["config"]["dtype"]["config"]["name"] = "mixed_float16"
    path = keras_with(tmp_path, config=edited_config("seq.keras", mixed))
    with pytest.raises(ModelFileError, match="mixed_float16"):
        fastcnn.load_model(path)


def test_subclassed_model_config_is_refused(tmp_path):
    def subclassed(config):
        config["class_name"] = "MyModel"
        config["module"] = "my_project"
        config["registered_name"] = "MyModel"
    path = keras_with(tmp_path, config=edited_config("seq.keras", subclassed))
    with pytest.raises(ModelFileError, match="Sequential or Functional"):
        fastcnn.load_model(path)


def test_nothing_is_unpickled_or_evaluated(tmp_path, monkeypatch):
    import pickle
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a))
    for file in ("seq.keras", "fun.h5", "nested.keras"):
        fastcnn.load_model(D / file)
    seq_in_code().load_weights(D / "seq_legacy.weights.h5")
    assert calls == []


# ----------------------------------------- under a 1 GiB address-space limit (POSIX)
_CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
import fastcnn
from fastcnn import layers
results = []
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "model":
            fastcnn.load_model(path)
        else:
            model = fastcnn.Sequential([
                layers.Input((10, 10, 3)), layers.Conv2D(4, 3, padding="same"),
                layers.MaxPooling2D(), layers.BatchNormalization(), layers.Conv2D(5, (3, 2)),
                layers.Dropout(0.3), layers.Flatten(), layers.Dense(8), layers.Dense(3)])
            model.load_weights(path)
        results.append(["loaded", ""])
    except BaseException as exc:
        results.append([type(exc).__name__, str(exc)])
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_AS"),
                    reason="needs resource.RLIMIT_AS (POSIX)")
def test_crafted_sizes_fail_cleanly_under_a_memory_limit(tmp_path):
    import os
    import subprocess
    import sys

    def dense_units(config):
        config["config"]["layers"][-2]["config"]["units"] = 2**28
    big_config = keras_with(tmp_path, config=edited_config("seq.keras", dense_units))

    def legacy_filters(f):
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["config"]["filters"] = 2**26
        f.attrs["model_config"] = json.dumps(config).encode()
    big_legacy = h5_copy(tmp_path, "seq.h5", legacy_filters, name="big.h5")

    def huge_dataset(f):
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=(2**24, 2**24), dtype="float64",
                         chunks=(4096, 4096), compression="gzip")
    huge = h5_copy(tmp_path, "seq.weights.h5", huge_dataset, name="huge.weights.h5")

    def bomb(f):   # 2**26 zeros gzip to a few kB: a chunk far larger than the dataset
        del f["layers/dense_1/vars/1"]
        d = f.create_dataset("layers/dense_1/vars/1", shape=(3,), maxshape=(None,),
                             dtype="float32", chunks=(2**26,), compression="gzip")
        d[:] = 0
    bombed = h5_copy(tmp_path, "seq.weights.h5", bomb, name="bomb.weights.h5")
    jobs = [["model", str(big_config)], ["model", str(big_legacy)],
            ["weights", str(huge)], ["weights", str(bombed)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] +
        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(jobs)],
                          capture_output=True, text=True, env=env, timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, f"the child failed:\n{done.stdout}\n{done.stderr}"
    results = json.loads(lines[0][len("RESULTS "):])
    assert results[0][0] == "ModelFileError" and "more weights than the file holds" in \
        results[0][1]
    assert results[1][0] == "ModelFileError" and "more weights than the file holds" in \
        results[1][1]
    assert results[2][0] == "ValueError" and "(16777216, 16777216)" in results[2][1]
    assert results[3][0] == "ModelFileError" and "chunks" in results[3][1]
