"""ImageDataGenerator: geometry of each augmentation, iterators, image folders, and fit/evaluate/
predict on iterators."""
import gc
import os
import sys
import warnings

import numpy as np
import pytest

import fastcnn
from fastcnn.layers import Dense, Flatten
from fastcnn.preprocessing.image import BadImageWarning, ImageDataGenerator, affine_matrix
from fastcnn.preprocessing._affine import warp_batch

PIL = pytest.importorskip("PIL.Image", reason="Pillow (the 'image' extra) is not installed")

COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}


def marker(h=7, w=7, r=3, c=3):
    x = np.zeros((1, h, w, 1))
    x[0, r, c, 0] = 1.0
    return x


def where(img):
    r, c = np.argwhere(img[..., 0] == 1.0)[0]
    return int(r), int(c)


# ------------------------------------------------------------------ geometry
def test_identity_matrix_is_exact():
    x = np.random.default_rng(0).random((2, 5, 6, 3))
    out = warp_batch(x, np.stack([affine_matrix(5, 6)] * 2))
    np.testing.assert_array_equal(out, x)


def test_quarter_turn_is_rot90_counter_clockwise_as_in_keras():
    x = np.random.default_rng(1).random((1, 5, 5, 2))
    out = warp_batch(x, affine_matrix(5, 5, theta=90)[None])
    # bilinear sampling: cos(90 degrees) is 6e-17, not 0, as in Keras (scipy order=1)
    np.testing.assert_allclose(out, np.rot90(x, 1, axes=(1, 2)), rtol=0, atol=1e-14)


@pytest.mark.parametrize("tx,ty", [(2, 0), (0, -3), (1, 2)])
def test_shift_moves_marker_as_keras_does(tx, ty):
    # Keras's axis swap: tx (height_shift_range) moves columns, ty rows, each by minus it
    out = warp_batch(marker(9, 9, 4, 4), affine_matrix(9, 9, tx=tx, ty=ty)[None], "constant")
    assert where(out[0]) == (4 - ty, 4 - tx)
    assert out.sum() == 1.0


def test_shear_and_zoom_matrices():
    m = affine_matrix(5, 5, shear=30)
    np.testing.assert_allclose(m[:2, :2], [[np.cos(np.pi / 6), 0], [-0.5, 1]], atol=1e-12)
    m = affine_matrix(5, 7, zx=0.5, zy=2.0)
    np.testing.assert_allclose(m[:2, :2], [[2.0, 0], [0, 0.5]])
    # Keras's fixed point on a 5 x 7 image: ((w - 1) / 2, (h - 1) / 2) = row 3, column 2
    np.testing.assert_allclose(m @ [3, 2, 1], [3, 2, 1])
    out = warp_batch(marker(5, 7, 3, 2), m[None], "constant")
    # bilinear: output column c samples input column 2 + 0.5 (c - 2), so columns 1 and 3 get
    # half the marker; output row r samples row 3 + 2 (r - 3): only r = 3 hits it
    expected = np.zeros((5, 7))
    expected[3, 1:4] = [0.5, 1.0, 0.5]
    np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-12)


# scipy's (so Keras's) 'wrap' has period size - 1: -2 and -1 land on 2 and 3, not 3 and 4
@pytest.mark.parametrize("mode,expected", [("nearest", [0, 0]), ("reflect", [1, 0]),
                                           ("wrap", [2, 3]), ("constant", [-7, -7])])
def test_fill_modes(mode, expected):
    x = np.arange(5, dtype=float).reshape(1, 5, 1, 1)
    out = warp_batch(x, affine_matrix(5, 1, ty=-2)[None], mode, cval=-7)
    np.testing.assert_array_equal(out[0, :, 0, 0], expected + [0, 1, 2])


def test_warp_does_not_modify_input():
    x = np.random.default_rng(2).random((3, 4, 4, 1))
    before = x.copy()
    ImageDataGenerator(rotation_range=40, horizontal_flip=True, rescale=2.0).flow(x, seed=0)[0]
    np.testing.assert_array_equal(x, before)


def test_flips_are_exact_and_random():
    x = np.random.default_rng(3).random((64, 4, 5, 1))
    for kw, flipped in [({"horizontal_flip": True}, x[:, :, ::-1]),
                        ({"vertical_flip": True}, x[:, ::-1])]:
        out = ImageDataGenerator(**kw).flow(x, batch_size=64, shuffle=False, seed=5)[0]
        same = np.all(out == x.astype(np.float32), axis=(1, 2, 3))
        flip = np.all(out == flipped.astype(np.float32), axis=(1, 2, 3))
        assert np.all(same | flip)
        assert 10 < flip.sum() < 54


def test_random_ranges_follow_keras_semantics():
    rng = np.random.default_rng(0)
    gen = ImageDataGenerator(width_shift_range=0.25, height_shift_range=3, zoom_range=0.2)
    m = gen.random_matrices(500, 10, 8, rng)
    # pure shift + zoom: m = swap(C Shift Zoom C^-1), so the zoom is the diagonal
    assert np.all((m[:, 0, 0] >= 0.8) & (m[:, 0, 0] <= 1.2))
    assert np.all((m[:, 1, 1] >= 0.8) & (m[:, 1, 1] <= 1.2))
    tx = m[:, 1, 2] - 4.5 * (1 - m[:, 1, 1])   # Keras's axis swap: tx is the column offset
    ty = m[:, 0, 2] - 3.5 * (1 - m[:, 0, 0])
    assert np.abs(tx).max() <= 3 and np.abs(tx).max() > 2.5          # pixels
    assert np.abs(ty).max() <= 2 and np.abs(ty).max() > 1.5          # 0.25 * width 8


@pytest.mark.parametrize("kw", [{"rotation_range": -1}, {"zoom_range": 1.5},
                                {"fill_mode": "mirror"}, {"validation_split": 1.0},
                                {"horizontal_flip": 1}, {"rescale": "1/255"}])
def test_generator_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        ImageDataGenerator(**kw)


# ------------------------------------------------------------ flow (arrays)
def test_flow_epochs_cover_every_sample_and_reshuffle():
    x = np.arange(10, dtype=float).reshape(10, 1, 1, 1)
    it = ImageDataGenerator().flow(x, np.arange(10), batch_size=4, seed=1)
    assert len(it) == 3
    epochs = []
    for _ in range(2):
        batches = [next(it) for _ in range(len(it))]
        assert [len(b[0]) for b in batches] == [4, 4, 2]
        ids = np.concatenate([b[1] for b in batches])
        xs = np.concatenate([b[0][:, 0, 0, 0] for b in batches])
        np.testing.assert_array_equal(xs, ids)   # x and y stay paired
        assert sorted(ids) == list(range(10))
        epochs.append(ids)
    assert not np.array_equal(epochs[0], epochs[1])
    it2 = ImageDataGenerator().flow(x, batch_size=4, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([next(it2) for _ in range(3)]).ravel(),
                                  np.arange(10))
    with pytest.raises(IndexError, match="out of range"):
        it[3]


def test_flow_is_deterministic_under_a_seed():
    x = np.random.default_rng(4).random((12, 6, 6, 3)) * 255
    gen = ImageDataGenerator(rotation_range=30, width_shift_range=0.2, shear_range=10,
                             zoom_range=0.3, horizontal_flip=True, rescale=1 / 255)
    a, b = gen.flow(x, batch_size=5, seed=7), gen.flow(x, batch_size=5, seed=7)
    for _ in range(5):
        np.testing.assert_array_equal(next(a), next(b))
    c = gen.flow(x, batch_size=5, seed=8)
    assert not np.array_equal(gen.flow(x, batch_size=5, seed=7)[0], c[0])
    fastcnn.set_random_seed(3)
    d = gen.flow(x, batch_size=5)[1]
    fastcnn.set_random_seed(3)
    np.testing.assert_array_equal(gen.flow(x, batch_size=5)[1], d)
    # it[i] is batch i of the current epoch: the same thing next() gives
    e = gen.flow(x, batch_size=5, seed=9)
    first = e[1]
    next(e)
    np.testing.assert_array_equal(next(e), first)
    assert first.dtype == np.float32 and first.max() <= 1.0


def test_flow_bad_input():
    gen = ImageDataGenerator()
    with pytest.raises(ValueError, match="N, H, W, C"):
        gen.flow(np.zeros((4, 5, 5)))
    with pytest.raises(ValueError, match="same number of samples"):
        gen.flow(np.zeros((4, 5, 5, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="batch_size"):
        gen.flow(np.zeros((4, 5, 5, 1)), batch_size=0)


# --------------------------------------------------------------- folders
def write(path, colour, size=(6, 5), fmt=None, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.new(mode, size, colour).save(path, fmt)


@pytest.fixture
def folder(tmp_path):
    for name, n, ext in [("a", 3, "png"), ("b", 2, "jpg"), ("c", 2, "png")]:
        for i in range(n):
            write(str(tmp_path / name / f"{i}.{ext}"), COLOURS[name])
    write(str(tmp_path / "c" / "sub" / "deep.bmp"), COLOURS["c"])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return tmp_path


def test_folder_listing(folder, capsys):
    with pytest.warns(BadImageWarning, match="notes.txt"):
        it = ImageDataGenerator().flow_from_directory(folder, target_size=(4, 3))
    assert "Found 9 images belonging to 3 classes." in capsys.readouterr().out
    assert it.class_indices == {"a": 0, "b": 1, "c": 2}
    assert it.filenames == [os.path.join("a", f"{i}.png") for i in range(3)] + [
        os.path.join("b", f) for f in ("0.jpg", "1.jpg", "corrupt.jpg")] + [
        os.path.join("c", f) for f in ("0.png", "1.png", os.path.join("sub", "deep.bmp"))]
    np.testing.assert_array_equal(it.classes, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert it.samples == 9 and len(it) == 1 and it.num_classes == 3


def test_folder_batches_and_corrupt_file(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
            folder, target_size=(4, 3), batch_size=4, shuffle=False)
    with pytest.warns(BadImageWarning) as record:
        batches = [next(it) for _ in range(len(it))]
    bad = [w for w in record if "corrupt.jpg" in str(w.message)]
    assert len(bad) == 1 and "left out of later epochs" in str(bad[0].message)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.shape == (9, 4, 3, 3) and x.dtype == np.float32 and y.dtype == np.float32
    assert y.shape == (9, 3) and np.all(y.sum(axis=1) == 1)
    # every image (the substitute for the corrupt one included) matches its label's colour
    np.testing.assert_array_equal(x.mean(axis=(1, 2)).argmax(axis=1), y.argmax(axis=1))
    assert x.max() <= 1.0 and x.max() > 0.9
    assert it.skipped == [os.path.join("b", "corrupt.jpg")]
    assert len(it) == 2 and it.n == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # reported once only
        nxt = [next(it) for _ in range(len(it))]
    assert sum(len(b[0]) for b in nxt) == 8
    it.close()


@pytest.mark.parametrize("mode,shape_y", [("binary", (4,)), ("sparse", (4,)), (None, None)])
def test_class_modes(tmp_path, mode, shape_y):
    for name in ("a", "b"):
        for i in range(2):
            write(str(tmp_path / name / f"{i}.png"), COLOURS[name])
    it = ImageDataGenerator().flow_from_directory(tmp_path, target_size=(3, 3),
                                                  class_mode=mode, batch_size=4, shuffle=False)
    batch = next(it)
    if mode is None:
        assert batch.shape == (4, 3, 3, 3)
    else:
        np.testing.assert_array_equal(batch[1], [0, 0, 1, 1])
        assert batch[1].dtype == np.float32


@pytest.mark.parametrize("color_mode,channels", [("grayscale", 1), ("rgba", 4), ("rgb", 3)])
def test_color_modes_and_resize(tmp_path, color_mode, channels):
    write(str(tmp_path / "k" / "big.png"), (10, 200, 30), size=(40, 20))
    write(str(tmp_path / "k" / "gray.png"), 90, size=(3, 3), mode="L")
    it = ImageDataGenerator().flow_from_directory(tmp_path, target_size=(5, 7),
                                                  color_mode=color_mode, batch_size=2,
                                                  shuffle=False, interpolation="bilinear")
    x, y = it[0]
    assert x.shape == (2, 5, 7, channels) and y.shape == (2, 1)
    if color_mode == "rgb":
        np.testing.assert_array_equal(x[0, 0, 0], [10, 200, 30])
        np.testing.assert_array_equal(x[1, 0, 0], [90, 90, 90])


def test_validation_split_takes_first_files_of_each_class(tmp_path):
    for name in ("a", "b"):
        for i in range(4):
            write(str(tmp_path / name / f"{i}.png"), COLOURS[name])
    gen = ImageDataGenerator(validation_split=0.25)
    val = gen.flow_from_directory(tmp_path, target_size=(2, 2), subset="validation")
    train = gen.flow_from_directory(tmp_path, target_size=(2, 2), subset="training")
    assert val.filenames == [os.path.join("a", "0.png"), os.path.join("b", "0.png")]
    assert train.samples == 6 and not set(train.filenames) & set(val.filenames)
    with pytest.raises(ValueError, match="validation_split"):
        ImageDataGenerator().flow_from_directory(tmp_path, subset="training")


def test_prefetch_matches_indexing_and_shuts_down(folder):
    gen = ImageDataGenerator(rotation_range=20, horizontal_flip=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        it = gen.flow_from_directory(folder, target_size=(4, 4), batch_size=3, seed=11)
        same = gen.flow_from_directory(folder, target_size=(4, 4), batch_size=3, seed=11)
        expected = [it[i] for i in range(3)]
        for i in range(3):
            got = next(it)
            np.testing.assert_array_equal(got[0], expected[i][0])
            np.testing.assert_array_equal(got[0], next(same)[0])
    thread = it._thread
    assert thread is not None and thread.is_alive()
    it.close()
    assert not thread.is_alive()
    thread = same._thread
    del same
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_loader_errors_are_raised_in_the_consumer(folder, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        it = ImageDataGenerator().flow_from_directory(folder, target_size=(4, 4))

    def broken(idx, rng):
        raise KeyError("disk went away")
    monkeypatch.setattr(it, "_get_batch", broken)
    with pytest.raises(KeyError, match="disk went away"):
        next(it)
    assert it._thread is None


def test_folder_bad_input(tmp_path):
    gen = ImageDataGenerator()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        gen.flow_from_directory(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class sub-folders"):
        gen.flow_from_directory(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        gen.flow_from_directory(tmp_path)
    for name in "xyz":
        write(str(tmp_path / name / "0.png"), (1, 2, 3))
    for kw, word in [({"target_size": (0, 5)}, "target_size"),
                     ({"target_size": 5}, "target_size"),
                     ({"class_mode": "onehot"}, "class_mode"),
                     ({"color_mode": "cmyk"}, "color_mode"),
                     ({"interpolation": "cubic"}, "interpolation"),
                     ({"subset": "test"}, "subset"),
                     ({"class_mode": "binary"}, "exactly 2")]:
        with pytest.raises(ValueError, match=word):
            gen.flow_from_directory(tmp_path, **kw)


def test_missing_pillow_names_the_extra(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"fastcnn\[image\]"):
        ImageDataGenerator().flow_from_directory(folder)


def test_cats_vs_dogs_folder():
    root = os.environ.get("FASTCNN_DATA")
    path = os.path.join(root, "cats-vs-dogs", "train") if root else None
    if not path or not os.path.isdir(path):
        pytest.skip("cats-vs-dogs folder not found: set FASTCNN_DATA")
    counts = {c: len([f for f in os.listdir(os.path.join(path, c))
                      if f.lower().endswith((".jpg", ".jpeg", ".png"))])
              for c in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, c))}
    it = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        path, target_size=(150, 150), class_mode="binary", batch_size=8, seed=0)
    assert it.class_indices == {"cats": 0, "dogs": 1}
    assert it.samples == sum(counts.values())
    assert np.bincount(it.classes).tolist() == [counts["cats"], counts["dogs"]]
    x, y = next(it)
    it.close()
    assert x.shape == (8, 150, 150, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
    assert set(np.unique(y)) <= {0.0, 1.0} and y.dtype == np.float32


# ------------------------------------------------- the model on iterators
def bright_dark(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.random((n, 4, 4, 1)) * 0.5 + y[:, None, None, None] * 0.5
    return x.astype(np.float32), y


def small_model():
    fastcnn.set_random_seed(0)
    model = fastcnn.Sequential([Flatten(input_shape=(4, 4, 1)), Dense(2, activation="softmax")])
    model.compile(optimizer=fastcnn.optimizers.Adam(learning_rate=0.05),
                  loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_fit_evaluate_predict_on_flow():
    x, y = bright_dark(128, 0)
    xv, yv = bright_dark(64, 1)
    gen = ImageDataGenerator(horizontal_flip=True, vertical_flip=True)
    model = small_model()
    hist = model.fit(gen.flow(x, y, batch_size=16, seed=0), epochs=8, verbose=0,
                     validation_data=ImageDataGenerator().flow(xv, yv, batch_size=16))
    assert len(hist.history["loss"]) == 8 and "val_accuracy" in hist.history
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert hist.history["val_accuracy"][-1] > 0.9
    loss, acc = model.evaluate(ImageDataGenerator().flow(xv, yv, batch_size=10), verbose=0)
    assert acc > 0.9
    ref_loss, ref_acc = model.evaluate(xv, yv, verbose=0)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and acc == pytest.approx(ref_acc)
    for source in (ImageDataGenerator().flow(xv, batch_size=10, shuffle=False),
                   ImageDataGenerator().flow(xv, yv, batch_size=10, shuffle=False)):
        np.testing.assert_allclose(model.predict(source), model.predict(xv), rtol=1e-6)
    # array validation data with an iterator, and an iterator as validation of arrays
    model.fit(gen.flow(x, y, batch_size=32), epochs=1, verbose=0, validation_data=(xv, yv))
    h = model.fit(x, y, epochs=1, verbose=0, validation_steps=2,
                  validation_data=ImageDataGenerator().flow(xv, yv, batch_size=8))
    assert "val_loss" in h.history


def test_fit_on_a_python_generator_needs_steps():
    x, y = bright_dark(64, 2)

    def batches():
        while True:
            for i in range(0, 64, 16):
                yield x[i:i + 16], y[i:i + 16]
    model = small_model()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(batches(), epochs=1, verbose=0)
    hist = model.fit(batches(), steps_per_epoch=4, epochs=2, verbose=0)
    assert len(hist.history["loss"]) == 2
    with pytest.raises(ValueError, match="steps"):
        model.evaluate(batches(), verbose=0)
    assert len(model.predict((b for b in [x[:5], x[5:9]]), steps=2)) == 9
    finite = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 32, 16))
    with pytest.warns(RuntimeWarning, match="ran out of batches"):
        model.fit(finite, steps_per_epoch=2, epochs=3, verbose=0)


def test_iterator_bad_combinations():
    x, y = bright_dark(16, 3)
    model = small_model()
    it = ImageDataGenerator().flow(x, y, batch_size=8)
    with pytest.raises(ValueError, match="y must be None"):
        model.fit(it, y, verbose=0)
    with pytest.raises(ValueError, match="y must be None"):
        model.evaluate(it, y, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(it, validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive int"):
        model.fit(it, steps_per_epoch=0, verbose=0)
    with pytest.raises(ValueError, match="targets are needed"):
        model.fit(ImageDataGenerator().flow(x, batch_size=8), verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch applies"):
        model.fit(x, y, steps_per_epoch=2, verbose=0)


def test_flow_subset_and_float64():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    gen = ImageDataGenerator(validation_split=0.3)
    val = gen.flow(x, np.arange(10), batch_size=10, shuffle=False, subset="validation")
    train = gen.flow(x, np.arange(10), batch_size=10, shuffle=False, subset="training")
    np.testing.assert_array_equal(val[0][1], [0, 1, 2])
    np.testing.assert_array_equal(train[0][1], np.arange(3, 10))
    with pytest.raises(ValueError, match="empty"):
        ImageDataGenerator(validation_split=0.05).flow(x, subset="validation")
    with pytest.raises(ValueError, match="validation_split"):
        ImageDataGenerator().flow(x, subset="training")
    fastcnn.set_floatx("float64")
    try:
        batch = ImageDataGenerator(rotation_range=10, rescale=0.5).flow(x, seed=0)[0]
    finally:
        fastcnn.set_floatx("float32")
    assert batch.dtype == np.float64
