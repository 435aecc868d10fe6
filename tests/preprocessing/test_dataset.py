"""image_dataset_from_directory: Keras's file listing, shuffle and validation split (against
Keras 3.15's file_paths in tests/fixtures/keras/preprocessing_keras.json), batches, passes,
the state/shard protocol, decoding ahead, fit on it, and bad input."""
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import utils
from fastcnn.layers import Dense, Flatten
from fastcnn.preprocessing.dataset import ImageDataset

PIL = pytest.importorskip("PIL.Image", reason="Pillow (the 'image' extra) is not installed")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
META = json.loads((FIXTURES / "preprocessing_keras.json").read_text())
ARRAYS = np.load(FIXTURES / "preprocessing_keras.npz")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """make_preprocessing.py's folder tree; every image 5 x 6, its pixel (0, 0, 0) = its index."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for k, rel in enumerate(META["tree"]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
            continue
        pixels = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        pixels[0, 0, 0] = k
        PIL.fromarray(pixels).save(path, format="PNG")
    return root


def index_of(x):
    return [META["tree"].index(rel) for rel in x] if isinstance(x, list) else int(x[0, 0, 0])


def load(root, **kw):
    kw.setdefault("image_size", (5, 6))
    kw.setdefault("verbose", False)
    return utils.image_dataset_from_directory(root, **kw)


# ------------------------------------------------------------ Keras's listing
@pytest.mark.parametrize("case", META["datasets"], ids=lambda c: repr(c["kwargs"]))
def test_files_classes_and_split_equal_keras(tree, case):
    got = load(tree, batch_size=4, **case["kwargs"])
    parts = got if isinstance(got, list) else [got]
    assert [[os.path.relpath(p, tree) for p in d.file_paths] for d in parts] \
        == case["file_paths"]
    for d in parts:
        assert d.class_names == case["class_names"]
        assert all(p.startswith(str(tree)) for p in d.file_paths)


def test_labels_follow_the_class_folders(tree):
    ds = load(tree, seed=123, validation_split=0.25, subset="training", batch_size=32)
    x, y = next(iter(ds))
    assert y.dtype == np.int32 and len(y) == len(ds.file_paths) == 15
    # shuffle=True: the pass has its own order; pixel (0, 0, 0) says which file each image is
    for img, label in zip(x, y):
        rel = META["tree"][index_of(img)]
        assert ds.class_names[label] == rel.split("/")[0]
        assert os.path.join(str(tree), rel) in ds.file_paths


def test_found_and_using_messages(tree, capsys):
    load(tree, seed=1, validation_split=0.2, subset="both", verbose=True)
    assert capsys.readouterr().out.splitlines() == [
        "Found 19 files belonging to 3 classes.", "Using 16 files for training.",
        "Using 3 files for validation."]
    load(tree, labels=None, verbose=True)
    assert capsys.readouterr().out == "Found 21 files.\n"
    load(tree, verbose=False)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------ batches
def test_unshuffled_batches_follow_file_paths_with_keras_pixels(tree):
    ds = load(tree, shuffle=False, batch_size=4, label_mode="categorical")
    assert len(ds) == 5 and ds.image_shape == (5, 6, 3)
    batches = list(ds)
    assert [len(b[0]) for b in batches] == [4, 4, 4, 4, 3]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (19, 3)
    assert [index_of(img) for img in x] == index_of([os.path.relpath(p, tree)
                                                     for p in ds.file_paths])
    np.testing.assert_array_equal(y.argmax(1), [ds.class_names.index(
        os.path.relpath(p, tree).split(os.sep)[0]) for p in ds.file_paths])
    first = np.asarray(PIL.open(ds.file_paths[0]))
    np.testing.assert_array_equal(x[0], first)   # float32 in [0, 255], not rescaled


def test_pixels_equal_keras_decoding(tmp_path):
    for k in range(2):
        (tmp_path / "b").mkdir(exist_ok=True)
        PIL.fromarray(ARRAYS[f"pixels_{k}"]).save(tmp_path / "b" / f"{k}.png")
    same = next(iter(load(tmp_path, shuffle=False, batch_size=8)))[0]
    np.testing.assert_array_equal(same, ARRAYS["decoded_same"])
    up = next(iter(load(tmp_path, shuffle=False, batch_size=8, image_size=(9, 11))))[0]
    np.testing.assert_allclose(up, ARRAYS["decoded_up"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name,kw", [
    ("down", {}), ("down_nearest", {"interpolation": "nearest"}),
    ("crop", {"crop_to_aspect_ratio": True}),
    ("pad", {"pad_to_aspect_ratio": True, "image_size": (10, 10)})])
def test_shrunk_pixels_equal_keras(tmp_path, name, kw):
    (tmp_path / "b").mkdir()
    for k in range(2):
        PIL.fromarray(ARRAYS[f"big_{k}"]).save(tmp_path / "b" / f"{k}.png")
    kw = {"image_size": (9, 11), **kw}
    x = next(iter(load(tmp_path, shuffle=False, batch_size=8, **kw)))[0]
    # TensorFlow's resize (half-pixel centres, no antialiasing), float32 arithmetic
    np.testing.assert_allclose(x, ARRAYS[f"decoded_{name}"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode,shape,dtype", [("int", (3,), np.int32),
                                              ("binary", (3, 1), np.float32),
                                              ("categorical", (3, 2), np.float32)])
def test_label_modes(tree, mode, shape, dtype):
    ds = load(tree, class_names=["cats", "dogs"], label_mode=mode, batch_size=3, seed=0)
    x, y = next(ds)
    assert x.shape == (3, 5, 6, 3) and y.shape == shape and y.dtype == dtype
    alone = load(tree, label_mode=None, batch_size=3, seed=0)
    assert next(alone).shape == (3, 5, 6, 3)


def test_color_modes_and_resizing(tmp_path):
    (tmp_path / "a").mkdir()
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, 2:6] = 200            # the centre 4 x 4 square is bright
    PIL.fromarray(pixels).save(tmp_path / "a" / "wide.png")
    grey = next(load(tmp_path, color_mode="grayscale", image_size=(4, 8)))[0]
    assert grey.shape == (1, 4, 8, 1)
    assert next(load(tmp_path, color_mode="rgba", image_size=(4, 8)))[0].shape == (1, 4, 8, 4)
    crop = next(load(tmp_path, image_size=(4, 4), crop_to_aspect_ratio=True))[0]
    np.testing.assert_array_equal(crop[0], np.full((4, 4, 3), 200.0))
    pad = next(load(tmp_path, image_size=(8, 8), pad_to_aspect_ratio=True))[0][0]
    np.testing.assert_array_equal(pad[:2], 0)    # 4 x 8 fits at rows 2..5, zeros around
    np.testing.assert_array_equal(pad[6:], 0)
    np.testing.assert_array_equal(pad[2:6], pixels)
    assert next(load(tmp_path, image_size=3))[0].shape == (1, 3, 3, 3)
    ramp = tmp_path / "ramp"
    (ramp / "a").mkdir(parents=True)
    PIL.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 10, (4, 1))).save(ramp / "a" / "r.png")
    halved = next(load(ramp, image_size=(4, 4), interpolation="nearest"))[0][0, :, :, 0]
    # TensorFlow's half-pixel nearest: output column j takes column floor((j + 0.5) * 2)
    np.testing.assert_array_equal(halved, np.tile([10.0, 30, 50, 70], (4, 1)))


# ------------------------------------------------------------ passes
def test_each_pass_is_fresh_and_reshuffled(tree):
    ds = load(tree, batch_size=5, seed=4)
    passes = [[index_of(img) for x, _ in ds for img in x] for _ in range(3)]
    for p in passes:
        assert sorted(p) == sorted(index_of([os.path.relpath(f, tree) for f in ds.file_paths]))
    assert passes[0] != passes[1] != passes[2]
    assert [index_of(img) for x, _ in load(tree, batch_size=5, seed=4) for img in x] \
        == passes[0]   # the same seed gives the same passes
    plain = load(tree, batch_size=5, shuffle=False)
    assert [index_of(img) for x, _ in plain for img in x] \
        == [index_of(img) for x, _ in plain for img in x]
    assert len(list(ds.take(2))) == 2 and len(ds.take(-1)) == 4
    assert ds.cache() is ds and ds.prefetch(8) is ds


def test_map_applies_to_every_batch(tree):
    ds = load(tree, batch_size=8, shuffle=False)
    scaled = ds.map(lambda x, y: (x / 255.0, y + 10)).prefetch(2)
    assert len(scaled) == 3 and scaled.class_names == ds.class_names
    for (x, y), (x0, y0) in zip(scaled, load(tree, batch_size=8, shuffle=False)):
        np.testing.assert_allclose(x, x0 / 255.0)
        np.testing.assert_array_equal(y, y0 + 10)
    x, y = next(scaled)
    assert x.max() <= 1.0 and y.min() >= 10
    assert scaled.state()["batch_index"] == 1          # the protocol is the dataset's
    images = load(tree, batch_size=8, shuffle=False, label_mode=None).map(lambda x: x[:, :2])
    assert next(iter(images)).shape == (8, 2, 6, 3)
    assert len(list(scaled.take(2))) == 2
    with pytest.raises(TypeError, match="map takes a function"):
        ds.map(3)
    ds.close()


def test_next_goes_on_through_passes(tree):
    ds = load(tree, batch_size=8, seed=2)
    seen = [next(ds) for _ in range(6)]    # 3 batches a pass (8, 8, 3)
    assert [len(y) for _, y in seen] == [8, 8, 3, 8, 8, 3]
    first = [index_of(img) for x, _ in seen[:3] for img in x]
    second = [index_of(img) for x, _ in seen[3:] for img in x]
    assert sorted(first) == sorted(second) and first != second
    assert ds.state()["epoch"] == 2 and ds.state()["batch_index"] == 0
    ds.close()


def test_state_and_shards_cut_the_same_batches(tree):
    whole = load(tree, batch_size=7, seed=9)
    next(whole)
    state = whole.state()
    expected = [next(whole) for _ in range(3)]
    parts = []
    for rank in range(3):
        ds = load(tree, batch_size=7, seed=1000 + rank)   # another seed until set_state
        ds.set_state(state)
        ds.set_shard(rank, 3)
        assert ds.shard == (rank, 3)
        parts.append([next(ds) for _ in range(3)])
        ds.close()
    for b in range(3):
        np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), expected[b][0])
        np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), expected[b][1])
    # batches 1 and 2 of the epoch (7 and 5 of 19), then batch 0 of the next one (7)
    assert [[len(parts[r][b][1]) for r in range(3)] for b in range(3)] \
        == [[3, 2, 2], [2, 2, 1], [3, 2, 2]]
    with pytest.raises(ValueError, match="samples=19, this one has samples=4"):
        load(tree, batch_size=7, seed=123, validation_split=0.25,
             subset="validation").set_state(state)
    with pytest.raises(ValueError, match="rank=3, size=3"):
        whole.set_shard(3, 3)
    whole.close()


def test_decoding_runs_ahead_in_a_thread(tree, monkeypatch):
    decoded = []
    real = ImageDataset._decode

    def spy(self, path):
        decoded.append(threading.current_thread().name)
        return real(self, path)

    monkeypatch.setattr(ImageDataset, "_decode", spy)
    ds = load(tree, batch_size=2, shuffle=False)
    next(ds)
    deadline = time.monotonic() + 10
    # 1 batch served, 2 waiting in the queue, 1 more decoded by the thread that then waits
    while len(decoded) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(decoded) == 8
    assert set(decoded) == {"fastcnn-image-prefetch"}
    thread = ds._thread
    ds.close()
    assert not thread.is_alive()


def test_fit_evaluate_predict_on_a_dataset(tree):
    fastcnn.set_random_seed(0)
    train, val = load(tree, class_names=["cats", "dogs"], batch_size=4, image_size=(4, 4),
                      seed=3, validation_split=0.25, subset="both")
    model = fastcnn.Sequential([Flatten(input_shape=(4, 4, 3)), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit(train.map(lambda x, y: (x / 255.0, y)), validation_data=val, epochs=2,
                     verbose=0)
    assert len(hist.history["loss"]) == 2 and "val_accuracy" in hist.history
    assert model.predict(val, verbose=0).shape == (len(val.file_paths), 2)
    train.close()
    val.close()


# ------------------------------------------------------------ bad input
def test_folder_without_class_folders_or_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(tmp_path / "nowhere")
    PIL.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="has no class sub-folders.*labels=None"):
        load(tmp_path)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found under .* in each class sub-folder"):
        load(tmp_path)


def test_undecodable_file_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    ds = load(tmp_path)
    with pytest.raises(ValueError, match="cannot decode .*broken.png"):
        next(ds)


@pytest.mark.parametrize("kw,match", [
    ({"label_mode": "sparse"}, "label_mode must be one of .* got 'sparse'"),
    ({"color_mode": "cmyk"}, "color_mode must be one of .* got 'cmyk'"),
    ({"image_size": (4, 0)}, "image_size must be a pair of positive ints"),
    ({"interpolation": "gaussian"}, "got 'gaussian' .*Pillow has no such filter"),
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"batch_size": None}, "batch_size=None"),
    ({"validation_split": 0.2}, "subset and validation_split go together"),
    ({"subset": "training"}, "subset and validation_split go together"),
    ({"validation_split": 1.5, "subset": "training", "seed": 1}, "in \\(0, 1\\), got 1.5"),
    ({"validation_split": 0.2, "subset": "all", "seed": 1}, "subset must be None"),
    ({"validation_split": 0.2, "subset": "training"}, "needs a seed"),
    ({"validation_split": 0.01, "subset": "training", "seed": 1}, "leaves no file"),
    ({"label_mode": "binary"}, "label_mode='binary' needs exactly 2 classes, got 3"),
    ({"class_names": ["cats", "cows"]}, "class_names must name sub-folders"),
    ({"labels": [0, 1]}, "labels has 2 entries but 21 image files"),
    ({"labels": "folders"}, "labels must be 'inferred', None or a list"),
    ({"labels": None, "class_names": ["a"]}, "class_names cannot be given with labels=None"),
    ({"crop_to_aspect_ratio": True, "pad_to_aspect_ratio": True}, "only one of"),
    ({"shuffle": 1}, "shuffle must be a bool, got 1"),
])
def test_bad_arguments(tree, kw, match):
    with pytest.raises(ValueError, match=match):
        load(tree, **kw)
