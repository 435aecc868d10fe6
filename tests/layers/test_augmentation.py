"""Augmentation and resizing layers (issue 17.7): RandomFlip, RandomRotation, RandomZoom,
RandomTranslation, RandomContrast, RandomBrightness, RandomCrop, Resizing, CenterCrop.

Keras's numbers: tests/fixtures/keras/augmentation.npz (make_augmentation.py, Keras 3.15 on
TensorFlow 2.21) holds Keras's outputs for FIXED transform parameters; each layer's
``apply(x, params)`` must reproduce them (the issue's "same seed semantics aside: compare the
transform given the same parameters"). Then: how parameters are drawn (ranges, one draw per
image, seeds), inference identity, exact adjoints (gradcheck, float64), dtypes, configs,
models (fit/predict/save), bad arguments.
"""
import json
import os

import fastcnn
import numpy as np
import pytest

from fastcnn import gradcheck
from fastcnn.layers import (CenterCrop, Conv2D, Dense, Flatten, GlobalAveragePooling2D,
                            RandomBrightness, RandomContrast, RandomCrop, RandomFlip,
                            RandomRotation, RandomTranslation, RandomZoom, Resizing)
from fastcnn.layers import augmentation as aug

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "keras")
with open(os.path.join(FIXTURES, "augmentation.json")) as _f:
    META = json.load(_f)
CASES = {k: v for k, v in META["cases"].items() if isinstance(v, dict)}
DATA = np.load(os.path.join(FIXTURES, "augmentation.npz"))

RANDOM_LAYERS = [
    lambda **kw: RandomFlip(**kw),
    lambda **kw: RandomRotation(0.3, **kw),
    lambda **kw: RandomZoom(0.3, **kw),
    lambda **kw: RandomTranslation(0.2, 0.3, **kw),
    lambda **kw: RandomContrast(0.5, **kw),
    lambda **kw: RandomBrightness(0.4, **kw),
    lambda **kw: RandomCrop(4, 5, **kw),
]
RANDOM_IDS = ["flip", "rotation", "zoom", "translation", "contrast", "brightness", "crop"]


def built(layer, shape, dtype="float64"):
    layer.build((None,) + tuple(shape[1:]), dtype)
    return layer


def fixture_params(case):
    params = {k: DATA[f"{case}/{k}"] for k in CASES[case]["params"] if k != "matrix"}
    if "start" in params:
        params["start"] = tuple(int(v) for v in params["start"])
    return params


# ------------------------------------------------------------ Keras's numbers
@pytest.mark.parametrize("case", sorted(CASES))
def test_transform_matches_keras_given_the_same_parameters(case):
    meta = CASES[case]
    layer = getattr(fastcnn.layers, meta["layer"])(**meta["kwargs"])
    x, expected = DATA[f"{case}/x"], DATA[f"{case}/y"]
    built(layer, x.shape, "float32")
    params = fixture_params(case)
    if "start" in params or params and meta["layer"] != "RandomCrop":
        y = layer.apply(x, params)
    else:  # Resizing, CenterCrop; RandomCrop's inference identity and its training fallback
        y, _ = layer.forward(x, training="fallback" in case)
    assert y.dtype == np.float32
    assert y.shape == expected.shape
    # float32 rounding only (TensorFlow computes the coordinates in float32).
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(y, expected, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("case", sorted(c for c in CASES if c.startswith("rotation_")))
def test_rotation_matrix_is_keras_affine_matrix(case):
    x = DATA[f"{case}/x"]
    m = aug.rotation_matrix(DATA[f"{case}/angle"], x.shape[1], x.shape[2])
    np.testing.assert_allclose(m, DATA[f"{case}/matrix"], rtol=0, atol=2e-6)


def test_fixture_cases_cover_every_fill_mode_and_interpolation():
    for kind in ("rotation", "zoom", "translation"):
        for fill in aug.FILL_MODES:
            for interp in aug.WARP_INTERPOLATIONS:
                assert f"{kind}_{fill}_{interp}" in CASES


def test_flip_horizontal_and_vertical_uses_one_draw_for_both_axes(rng):
    # Keras 3's behaviour (recorded by the fixture script): unchanged or turned by 180.
    assert META["cases"]["flip_both_axes_same_mask"] is True
    x = rng.random((40, 4, 5, 1))
    layer = built(RandomFlip(seed=1), x.shape)
    y, _ = layer.forward(x, training=True)
    turned = [np.array_equal(o, b[::-1, ::-1]) for o, b in zip(y, x)]
    same = [np.array_equal(o, b) for o, b in zip(y, x)]
    assert all(t or s for t, s in zip(turned, same))
    assert 5 < sum(turned) < 35


@pytest.mark.parametrize("mode,axes", [("horizontal", (2,)), ("vertical", (1,))])
def test_flip_modes_flip_one_axis(mode, axes, rng):
    x = rng.random((6, 3, 4, 2))
    layer = built(RandomFlip(mode), x.shape)
    flips = np.array([True, False, True, True, False, False])
    y = layer.apply(x, {"flips": flips})
    np.testing.assert_array_equal(y[flips], np.flip(x[flips], axis=axes[0]))
    np.testing.assert_array_equal(y[~flips], x[~flips])


# ------------------------------------------------------------ the warp itself
def test_integer_translation_moves_pixels_and_fills(rng):
    x = rng.random((1, 5, 6, 1))
    t = np.array([[1.0, 0.0, -2.0, 0.0, 1.0, -1.0, 0.0, 0.0]])   # content +2 cols, +1 row
    y = aug.affine_transform(x, t, "bilinear", "constant", 9.0)
    np.testing.assert_allclose(y[0, 1:, 2:, 0], x[0, :-1, :-2, 0], atol=1e-15)
    assert (y[0, 0] == 9.0).all() and (y[0, :, :2] == 9.0).all()
    y = aug.affine_transform(x, t, "nearest", "reflect")
    np.testing.assert_array_equal(y[0, 0, 2:, 0], x[0, 0, :-2, 0])       # row -1 -> row 0
    np.testing.assert_array_equal(y[0, 1:, 1, 0], x[0, :-1, 0, 0])       # col -1 -> col 0
    np.testing.assert_array_equal(y[0, 1:, 0, 0], x[0, :-1, 1, 0])       # col -2 -> col 1


def test_nearest_rounds_half_away_from_zero():
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 6, 1)
    t = np.array([[1.0, 0.0, -0.5, 0.0, 1.0, 0.0, 0.0, 0.0]])   # x - 0.5: ties everywhere
    y = aug.affine_transform(x, t, "nearest", "constant", -1.0)
    # TensorFlow's std::round: -0.5 -> -1 (fill), 0.5 -> 1, 1.5 -> 2, ...
    np.testing.assert_array_equal(y[0, 0, :, 0], [-1, 1, 2, 3, 4, 5])


def test_projective_row_with_zero_denominator_reads_fill_value():
    x = np.ones((1, 3, 3, 1))
    t = np.array([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0]])   # k = 1 - x: 0 at column 1
    y = aug.affine_transform(x, t, "bilinear", "reflect", 7.0)
    assert (y[0, :, 1, 0] == 7.0).all()


# ------------------------------------------------------------ gradients (exact adjoints)
def check_layer_gradient(layer, x, params, training=True):
    built(layer, x.shape)

    def forward(x):
        if params is None:
            return layer.forward(x, training=training)
        return layer.apply(x, params), (params, x if isinstance(
            layer, (RandomContrast, RandomBrightness)) else x.shape)

    def backward(dy, ctx):
        if params is not None:
            return layer.apply_adjoint(dy, *ctx)
        dx, grads = layer.backward(dy, ctx)
        assert grads == ()
        return dx

    gradcheck.check_backward(forward, backward, [x])


@pytest.mark.parametrize("fill_mode", aug.FILL_MODES)
@pytest.mark.parametrize("interpolation", aug.WARP_INTERPOLATIONS)
@pytest.mark.parametrize("kind", ["rotation", "zoom", "translation"])
def test_warp_backward_is_the_exact_adjoint(kind, fill_mode, interpolation, rng):
    x = rng.standard_normal((2, 5, 6, 2))
    kw = {"fill_mode": fill_mode, "interpolation": interpolation, "fill_value": 0.3}
    if kind == "rotation":
        layer, params = RandomRotation(0.5, **kw), {"angle": np.array([37.3, -121.9])}
    elif kind == "zoom":
        layer = RandomZoom(0.5, 0.4, **kw)
        params = {"height_zoom": np.array([0.63, 1.41]), "width_zoom": np.array([1.27, 0.71])}
    else:
        layer = RandomTranslation(0.9, 0.9, **kw)
        params = {"translations": np.array([[2.37, -3.61], [-7.2, 4.45]])}
    check_layer_gradient(layer, x, params)


def test_flip_contrast_brightness_gradients(rng):
    x = rng.standard_normal((3, 4, 5, 2))
    check_layer_gradient(RandomFlip(), x, {"flips": np.array([True, False, True])})
    check_layer_gradient(RandomFlip("vertical"), x, {"flips": np.array([True, True, False])})
    # Contrast/brightness clip to value_range: values away from the bounds (both sides).
    x = rng.uniform(0.1, 0.9, (3, 4, 5, 2))
    x[0, 0, 0, 0], x[1, 2, 3, 1] = 0.02, 0.98
    check_layer_gradient(RandomContrast(0.9, value_range=(0, 1)), x,
                         {"contrast_factor": np.array([1.3, 0.6, 1.9])})
    check_layer_gradient(RandomBrightness(0.3, value_range=(0, 1)), x,
                         {"rgb_delta": np.array([0.05, -0.07, 0.2])})


def test_clipped_values_get_no_gradient():
    x = np.array([0.1, 0.5, 0.95]).reshape(1, 1, 3, 1)
    layer = built(RandomBrightness(0.2, value_range=(0, 1)), x.shape)
    dx = layer.apply_adjoint(np.ones_like(x), {"rgb_delta": np.array([0.1])}, x)
    np.testing.assert_array_equal(dx.ravel(), [1.0, 1.0, 0.0])


@pytest.mark.parametrize("kwargs", [
    {"height": 3, "width": 4}, {"height": 9, "width": 11},
    {"height": 4, "width": 4, "interpolation": "nearest"},
    {"height": 9, "width": 3, "interpolation": "nearest"},
    {"height": 3, "width": 5, "crop_to_aspect_ratio": True},
    {"height": 6, "width": 4, "pad_to_aspect_ratio": True, "fill_value": 2.0},
    {"height": 2, "width": 9, "pad_to_aspect_ratio": True},
    {"height": 3, "width": 9, "interpolation": "bicubic"},
    {"height": 4, "width": 4, "interpolation": "area"},
    {"height": 7, "width": 3, "interpolation": "lanczos3"},
    {"height": 3, "width": 8, "interpolation": "lanczos5", "antialias": True},
    {"height": 2, "width": 3, "antialias": True},
    {"height": 3, "width": 4, "interpolation": "bicubic", "antialias": True,
     "crop_to_aspect_ratio": True},
])
def test_resizing_gradients(kwargs, rng):
    check_layer_gradient(Resizing(**kwargs), rng.standard_normal((2, 5, 7, 2)), None,
                         training=False)


@pytest.mark.parametrize("size", [(3, 4), (7, 9), (6, 3)])
def test_crop_gradients(size, rng):
    x = rng.standard_normal((2, 5, 7, 2))
    check_layer_gradient(CenterCrop(*size), x, None, training=False)
    check_layer_gradient(RandomCrop(*size), x, None, training=False)   # identity
    check_layer_gradient(RandomCrop(*size), x, {"start": (1, 2)} if size == (3, 4) else None,
                         training=True)


def test_training_crop_gradient_puts_dy_back_in_the_window(rng):
    x = rng.standard_normal((2, 6, 7, 1))
    layer = built(RandomCrop(3, 4, seed=5), x.shape)
    y, ctx = layer.forward(x, training=True)
    dx, _ = layer.backward(np.ones_like(y), ctx)
    rows, cols = np.nonzero(dx[0, :, :, 0])
    assert dx.sum() == 2 * 12 and np.ptp(rows) == 2 and np.ptp(cols) == 3
    np.testing.assert_array_equal(dx[0], dx[1])   # one window for the batch (Keras)
    top, left = rows.min(), cols.min()
    np.testing.assert_array_equal(y, x[:, top:top + 3, left:left + 4])


# ------------------------------------------------------------ training vs inference
@pytest.mark.parametrize("make", RANDOM_LAYERS, ids=RANDOM_IDS)
def test_random_layers_are_the_identity_in_inference(make, rng):
    x = rng.random((3, 6, 7, 2)) * 200
    layer = built(make(seed=3), x.shape)
    y, ctx = layer.forward(x, training=False)
    assert y is x
    dy = rng.standard_normal(x.shape)
    dx, grads = layer.backward(dy, ctx)
    assert dx is dy and grads == ()
    assert layer.backward(dy, ctx, need_dx=False) == (None, ())
    y, ctx = layer.forward(x, training=True)
    assert not np.array_equal(y, x)          # seed 3 draws a visible change for each


@pytest.mark.parametrize("make", RANDOM_LAYERS, ids=RANDOM_IDS)
def test_seed_gives_the_same_sequence_and_unseeded_follows_set_random_seed(make, rng):
    x = rng.random((4, 6, 7, 2)) * 200
    a, b = built(make(seed=11), x.shape), built(make(seed=11), x.shape)
    ya = [a.forward(x, training=True)[0] for _ in range(3)]
    yb = [b.forward(x, training=True)[0] for _ in range(3)]
    for p, q in zip(ya, yb):
        np.testing.assert_array_equal(p, q)
    assert not all(np.array_equal(ya[0], y) for y in ya[1:])   # the sequence moves on
    c = built(make(), x.shape)
    fastcnn.set_random_seed(4)
    y1 = [c.forward(x, training=True)[0] for _ in range(2)]
    fastcnn.set_random_seed(4)
    y2 = [c.forward(x, training=True)[0] for _ in range(2)]
    for p, q in zip(y1, y2):
        np.testing.assert_array_equal(p, q)


def test_parameters_are_drawn_per_image_in_keras_ranges():
    n, shape = 4000, (4000, 6, 8, 3)
    angle = RandomRotation((-0.1, 0.25), seed=0).draw_parameters(shape)["angle"]
    assert angle.shape == (n,) and -36 <= angle.min() < -34 and 88 < angle.max() <= 90
    z = RandomZoom(0.2, seed=0).draw_parameters(shape)
    assert z["height_zoom"] is z["width_zoom"]                  # width_factor None
    assert 0.8 <= z["height_zoom"].min() < 0.81 and 1.19 < z["height_zoom"].max() <= 1.2
    z = RandomZoom((-0.5, -0.2), (0.1, 0.3), seed=0).draw_parameters(shape)
    assert 0.5 <= z["height_zoom"].min() and z["height_zoom"].max() <= 0.8
    assert 1.1 <= z["width_zoom"].min() and z["width_zoom"].max() <= 1.3
    t = RandomTranslation((0.0, 0.5), 0.25, seed=0).draw_parameters(shape)["translations"]
    assert t.shape == (n, 2)
    assert -2 <= t[:, 0].min() < -1.9 and 1.9 < t[:, 0].max() <= 2          # width px: 8 * .25
    assert 0 <= t[:, 1].min() < 0.1 and 2.9 < t[:, 1].max() <= 3            # height px: 6 * .5
    c = RandomContrast(0.4, seed=0).draw_parameters(shape)["contrast_factor"]
    assert 1.0 <= c.min() < 1.01 and 1.39 < c.max() <= 1.4       # Keras 3.15: [1, 1 + f]
    c = RandomContrast((0.3, 0.2), seed=0).draw_parameters(shape)["contrast_factor"]
    assert 0.8 <= c.min() < 0.81 and 1.29 < c.max() <= 1.3       # sorted: 1 - 0.2, 1 + 0.3
    d = RandomBrightness(0.1, value_range=(-1, 1), seed=0).draw_parameters(shape)["rgb_delta"]
    assert -0.2 <= d.min() < -0.19 and 0.19 < d.max() <= 0.2
    f = RandomFlip(seed=0).draw_parameters(shape)["flips"]
    assert f.dtype == bool and 0.45 < f.mean() < 0.55
    starts = {RandomCrop(4, 5, seed=s).draw_parameters((2, 6, 8, 1))["start"]
              for s in range(200)}
    assert starts == {(i, j) for i in range(3) for j in range(4)}


def test_one_call_draws_different_parameters_for_each_image(rng):
    x = np.repeat(rng.random((1, 6, 7, 1)), 5, axis=0)
    for layer in (RandomRotation(0.4, seed=2), RandomZoom(0.4, seed=2),
                  RandomTranslation(0.3, 0.3, seed=2), RandomContrast(0.8, seed=2),
                  RandomBrightness(0.5, seed=2)):
        y, _ = built(layer, x.shape).forward(x * 100, training=True)
        assert len({y[i].tobytes() for i in range(5)}) == 5, layer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outputs_keep_the_layer_dtype(dtype, rng):
    x = rng.random((2, 6, 7, 3)).astype(dtype) * 255
    layers = [make(seed=1) for make in RANDOM_LAYERS] + [
        Resizing(3, 4), Resizing(8, 9, crop_to_aspect_ratio=True), CenterCrop(4, 4)]
    for layer in layers:
        built(layer, x.shape, dtype)
        y, ctx = layer.forward(x, training=True)
        assert y.dtype == np.dtype(dtype), layer
        dx, _ = layer.backward(np.ones_like(y), ctx)
        assert dx.dtype == np.dtype(dtype) and dx.shape == x.shape, layer


def test_output_shapes():
    assert built(Resizing(5, 9), (None, 7, 7, 3)).output_shape == (None, 5, 9, 3)
    assert built(CenterCrop(2, 3), (None, 7, 7, 3)).output_shape == (None, 2, 3, 3)
    assert built(RandomCrop(2, 3), (None, 7, 7, 3)).output_shape == (None, 2, 3, 3)
    assert built(RandomZoom(0.1), (None, 7, 8, 3)).output_shape == (None, 7, 8, 3)
    with pytest.raises(ValueError, match="4-D input"):
        built(RandomFlip(), (None, 7, 3))


# ------------------------------------------------------------ configs and models
CONFIG_LAYERS = [
    RandomFlip("vertical", seed=3), RandomRotation((-0.2, 0.1), "constant", "nearest", 4, 0.5),
    RandomZoom(0.2, (-0.1, 0.3), "wrap", seed=1), RandomTranslation(0.1, (0.0, 0.2), "nearest"),
    RandomContrast(0.3, value_range=(0, 1), seed=2), RandomBrightness((-0.2, 0.4), (-1, 1)),
    RandomCrop(3, 4, seed=9), CenterCrop(5, 2),
    Resizing(4, 6, "nearest", pad_to_aspect_ratio=True, fill_value=1.5),
    Resizing(4, 6, "lanczos3", crop_to_aspect_ratio=True, antialias=True),
]


@pytest.mark.parametrize("layer", CONFIG_LAYERS, ids=lambda l: type(l).__name__)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == json.loads(json.dumps(config))
    if hasattr(layer, "draw_parameters") and layer.seed is not None:
        shape = (3, 8, 9, 2)
        a, b = type(layer).from_config(config), type(layer).from_config(config)
        for _ in range(2):
            pa, pb = a.draw_parameters(shape), b.draw_parameters(shape)
            for k in pa:
                np.testing.assert_array_equal(pa[k], pb[k])


def test_sequential_with_flip_trains_and_predicts_deterministically(rng):
    fastcnn.set_random_seed(0)
    model = fastcnn.Sequential([
        RandomFlip("horizontal", input_shape=(6, 6, 1)), RandomTranslation(0.1, 0.1, seed=1),
        Conv2D(4, 3, activation="relu"), Flatten(), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = rng.random((16, 6, 6, 1))
    y = (x[:, :, :3].mean(axis=(1, 2, 3)) > x[:, :, 3:].mean(axis=(1, 2, 3))).astype(int)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert all(np.isfinite(v) for v in history.history["loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    p1, p2 = model.predict(x, verbose=0), model.predict(x, verbose=0)
    np.testing.assert_array_equal(p1, p2)
    # predict is inference: the augmentation layers are the identity there. The plain
    # model's predict runs the compiled inference plan (other kernels than the layer by
    # layer forward of the augmented one): equal within float32 rounding.
    plain = fastcnn.Sequential([Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)),
                                Flatten(), Dense(2, activation="softmax")])
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(p1, plain.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_fit_passes_training_to_the_augmentation_layers(rng):
    # fit calls forward with training=True, predict with training=False.
    calls = []

    class Spy(RandomFlip):
        def forward(self, x, training=False):
            calls.append(bool(training))
            return super().forward(x, training)

    model = fastcnn.Sequential([Spy(input_shape=(4, 4, 1)), Flatten(), Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = rng.random((4, 4, 4, 1))
    model.fit(x, np.zeros(4), epochs=1, batch_size=4, verbose=0)
    assert True in calls
    del calls[:]
    model.predict(x, verbose=0)
    assert calls and True not in calls


def test_functional_model_with_resizing_rotation_and_center_crop(rng):
    inp = fastcnn.Input((9, 11, 3))
    h = Resizing(8, 8)(inp)
    h = RandomRotation(0.1, seed=2)(h)
    h = CenterCrop(6, 6)(h)
    h = Conv2D(2, 3)(h)
    out = Dense(1)(Flatten()(h))
    model = fastcnn.Model(inp, out)
    model.compile(optimizer="sgd", loss="mse")
    x = rng.random((6, 9, 11, 3))
    model.fit(x, rng.random((6, 1)), epochs=2, batch_size=3, verbose=0)
    assert model.predict(x, verbose=0).shape == (6, 1)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))


def test_random_crop_model_sees_the_crop_in_training_and_the_whole_image_in_inference(rng):
    # Keras 3: RandomCrop is the identity in inference; global pooling accepts both sizes.
    model = fastcnn.Sequential([RandomCrop(4, 4, seed=0, input_shape=(6, 6, 1)),
                                GlobalAveragePooling2D(), Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = rng.random((4, 6, 6, 1))
    model.fit(x, np.zeros((4, 1)), epochs=1, verbose=0)
    w, b = model.layers[-1].get_weights()
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               x.mean(axis=(1, 2)) @ w + b, rtol=1e-6)


def test_save_and_load_a_model_with_augmentation_layers(tmp_path, rng):
    model = fastcnn.Sequential([
        Resizing(6, 6, input_shape=(8, 7, 1)), RandomFlip(seed=1), RandomZoom(0.1, seed=2),
        RandomContrast(0.2, value_range=(0, 1)), Conv2D(2, 3), Flatten(), Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = rng.random((4, 8, 7, 1))
    model.fit(x, np.zeros((4, 1)), epochs=1, verbose=0)
    path = tmp_path / "aug.fcnn"
    model.save(str(path))
    loaded = fastcnn.load_model(str(path))
    assert [type(layer).__name__ for layer in loaded.layers] == \
        [type(layer).__name__ for layer in model.layers]
    assert loaded.layers[2].get_config() == model.layers[2].get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# ------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("make,match", [
    (lambda: RandomRotation(1.5), r"factor must be a number or a pair of numbers in \[-1"),
    (lambda: RandomRotation((0.1, 2.0)), r"factor .* got \(0.1, 2.0\)"),
    (lambda: RandomRotation((0.1, 0.2, 0.3)), "factor"),
    (lambda: RandomRotation("big"), "factor .* got 'big'"),
    (lambda: RandomZoom(-1.0), r"height_factor .* in \(-1.0, 1.0\], got -1.0"),
    (lambda: RandomZoom(0.1, 1.2), "width_factor .* got 1.2"),
    (lambda: RandomTranslation(0.1, -1.5), "width_factor .* got -1.5"),
    (lambda: RandomContrast(1.5), r"factor .* in \[0.0, 1.0\], got 1.5"),
    (lambda: RandomContrast(-0.2), r"factor .* got -0.2"),
    (lambda: RandomBrightness(-1.2), "factor .* got -1.2"),
    (lambda: RandomBrightness(0.1, value_range=(0, 1, 2)), "value_range"),
    (lambda: RandomRotation(0.1, fill_mode="mirror"),
     r"fill_mode must be one of \['reflect', 'wrap', 'constant', 'nearest'\], got 'mirror'"),
    (lambda: RandomZoom(0.1, interpolation="bicubic"),
     r"interpolation must be one of \['nearest', 'bilinear'\], got 'bicubic'"),
    (lambda: RandomFlip("diagonal"), "mode must be one of .*got 'diagonal'"),
    (lambda: RandomCrop(-2, 3), "height must be a positive int, got -2"),
    (lambda: CenterCrop(2, 0), "width must be a positive int, got 0"),
    (lambda: Resizing(3, 2.5), "width must be a positive int, got 2.5"),
    (lambda: Resizing(3, 3, interpolation="cubic"),
     r"interpolation must be one of \['bilinear', 'nearest', 'lanczos3', 'lanczos5', "
     r"'bicubic', 'area'\], got 'cubic'"),
    (lambda: Resizing(3, 3, fill_mode="reflect"), r"fill_mode must be one of \['constant'\]"),
    (lambda: Resizing(3, 3, crop_to_aspect_ratio=True, pad_to_aspect_ratio=True), "only one"),
    (lambda: RandomFlip(seed=-1), "seed must be None or a non-negative int, got -1"),
    (lambda: RandomZoom(0.1, data_format="channels_first"),
     "data_format must be None or 'channels_last'"),
    (lambda: RandomRotation(0.1, fill_value=float("nan")), "fill_value must be a finite"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_keras_data_format_channels_last_is_accepted():
    for layer in (RandomFlip(data_format="channels_last"), CenterCrop(2, 2, data_format=None),
                  Resizing(2, 3, data_format="channels_last")):
        assert "data_format" not in layer.get_config()


def test_tensorflow_tutorial_data_augmentation_block(rng):
    # TensorFlow's image classification tutorial: a Sequential of augmentation layers used
    # directly (training=True) and as the first block of the model.
    data_augmentation = fastcnn.Sequential([
        RandomFlip("horizontal", input_shape=(10, 10, 3)), RandomRotation(0.1),
        RandomZoom(0.1)])
    x = rng.random((6, 10, 10, 3)) * 255
    shown = np.asarray(data_augmentation(x, training=True).value)
    assert shown.shape == x.shape and not np.allclose(shown, x)
    np.testing.assert_array_equal(np.asarray(data_augmentation(x).value),  # inference
                                  x.astype(np.float32))
    model = fastcnn.Sequential([
        data_augmentation, fastcnn.layers.Rescaling(1.0 / 255),
        Conv2D(4, 3, padding="same", activation="relu"), Flatten(), Dense(2)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, np.arange(6) % 2, epochs=2, batch_size=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
