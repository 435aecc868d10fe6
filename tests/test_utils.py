"""fastcnn.utils: to_categorical (against Keras 3.15's outputs in
tests/fixtures/keras/preprocessing_keras.npz) and the image utilities load_img, img_to_array,
array_to_img, save_img, with their Keras 2 spellings under fastcnn.preprocessing.image."""
import io
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import utils

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras"
ARRAYS = np.load(FIXTURES / "preprocessing_keras.npz")


# ---------------------------------------------------------------- to_categorical
@pytest.mark.parametrize("k", range(4))
def test_to_categorical_equals_keras(k):
    out = utils.to_categorical(ARRAYS[f"cat_in_{k}"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ARRAYS[f"cat_out_{k}"])


def test_to_categorical_shapes_and_num_classes():
    np.testing.assert_array_equal(utils.to_categorical([1, 0], num_classes=4),
                                  ARRAYS["cat_out_n"])
    assert utils.to_categorical(np.zeros((5, 1), int), 3).shape == (5, 3)   # (N, 1) -> (N, C)
    assert utils.to_categorical(np.zeros((2, 3), int), 3).shape == (2, 3, 3)
    assert utils.to_categorical(2, 4).tolist() == [0, 0, 1, 0]
    assert utils.to_categorical([1.0, 2.0]).tolist() == [[0, 1, 0], [0, 0, 1]]
    assert utils.to_categorical([1], 2, dtype="int64").dtype == np.int64
    assert fastcnn.utils is utils


@pytest.mark.parametrize("x,kw,match", [
    ([0, 3], {"num_classes": 3}, "class label 3 is out of range for num_classes=3"),
    ([-1, 0], {}, "labels must be >= 0, got -1"),
    ([0.5], {}, "integer class labels, got 0.5"),
    (["a"], {}, "integer class labels"),
    ([], {}, "num_classes cannot be inferred"),
    ([0], {"num_classes": 0}, "num_classes must be None or a positive int, got 0"),
])
def test_to_categorical_bad_input(x, kw, match):
    with pytest.raises(ValueError, match=match):
        utils.to_categorical(x, **kw)


# ---------------------------------------------------------------- images
PIL = pytest.importorskip("PIL.Image", reason="Pillow (the 'image' extra) is not installed")


@pytest.fixture
def rgb_file(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    PIL.fromarray(pixels).save(path)
    return path, pixels


def test_load_img_and_img_to_array(rgb_file):
    path, pixels = rgb_file
    img = utils.load_img(path)
    assert img.mode == "RGB" and img.size == (10, 6)
    x = utils.img_to_array(img)
    assert x.dtype == np.float32 and x.shape == (6, 10, 3)
    np.testing.assert_array_equal(x, pixels)
    assert utils.img_to_array(img, data_format="channels_first").shape == (3, 6, 10)
    grey = utils.img_to_array(utils.load_img(str(path), color_mode="grayscale"))
    assert grey.shape == (6, 10, 1)
    np.testing.assert_array_equal(grey[..., 0], np.asarray(PIL.fromarray(pixels).convert("L")))
    assert utils.load_img(path, color_mode="rgba").mode == "RGBA"
    with open(path, "rb") as f:
        assert utils.load_img(io.BytesIO(f.read())).size == (10, 6)


def test_load_img_resizes_as_keras(rgb_file):
    path, pixels = rgb_file
    img = utils.load_img(path, target_size=(3, 5))   # nearest, Keras's default
    np.testing.assert_array_equal(
        np.asarray(img), np.asarray(PIL.fromarray(pixels).resize((5, 3), PIL.NEAREST)))
    # keep_aspect_ratio: the centre 6 x 6 square (Pillow's resize box, as Keras) to 3 x 3
    img = utils.load_img(path, target_size=(3, 3), interpolation="bilinear",
                         keep_aspect_ratio=True)
    expected = PIL.fromarray(pixels).resize((3, 3), PIL.BILINEAR, box=(2, 0, 8, 6))
    np.testing.assert_array_equal(np.asarray(img), np.asarray(expected))


def test_array_to_img_and_save_img_round_trip(tmp_path, rgb_file):
    _, pixels = rgb_file
    img = utils.array_to_img(pixels.astype(np.float32), scale=False)
    np.testing.assert_array_equal(np.asarray(img), pixels)
    scaled = utils.array_to_img(np.array([[[0.0], [0.5]], [[1.0], [0.25]]]))
    assert scaled.mode == "L" and np.asarray(scaled).tolist() == [[0, 127], [255, 63]]
    assert utils.array_to_img(np.full((2, 2, 1), 1000.0), scale=False).mode == "I"
    assert utils.array_to_img(np.zeros((2, 2, 4))).mode == "RGBA"
    utils.save_img(tmp_path / "out.png", pixels, scale=False)
    np.testing.assert_array_equal(utils.img_to_array(utils.load_img(tmp_path / "out.png")),
                                  pixels)
    with pytest.warns(UserWarning, match="JPEG format does not support RGBA"):
        utils.save_img(tmp_path / "out.jpg", np.zeros((2, 2, 4)))
    assert PIL.open(tmp_path / "out.jpg").mode == "RGB"


def test_image_utilities_bad_input(rgb_file):
    path, _ = rgb_file
    with pytest.raises(ValueError, match="color_mode must be one of .* got 'cmyk'"):
        utils.load_img(path, color_mode="cmyk")
    with pytest.raises(ValueError, match="target_size must be a pair of positive ints"):
        utils.load_img(path, target_size=(0, 3))
    with pytest.raises(ValueError, match="interpolation must be one of .* got 'area'"):
        utils.load_img(path, target_size=(2, 2), interpolation="area")
    with pytest.raises(TypeError, match="path must be a file path or an io.BytesIO"):
        utils.load_img(3)
    with pytest.raises(ValueError, match="rank 3, got shape \\(2, 2\\)"):
        utils.array_to_img(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1, 3 or 4 channels, got 2"):
        utils.array_to_img(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="data_format must be"):
        utils.img_to_array(np.zeros((2, 2, 3)), data_format="NCHW")


def test_keras2_spellings_warn_and_name_keras3(rgb_file, tmp_path):
    from fastcnn.preprocessing import image

    path, pixels = rgb_file
    with pytest.warns(DeprecationWarning, match="use fastcnn.utils.load_img"):
        img = image.load_img(path, target_size=(6, 10))
    with pytest.warns(DeprecationWarning, match="use fastcnn.utils.img_to_array"):
        x = image.img_to_array(img)
    np.testing.assert_array_equal(x, pixels)
    with pytest.warns(DeprecationWarning, match="use fastcnn.utils.array_to_img"):
        assert image.array_to_img(x, scale=False).size == (10, 6)
    with pytest.warns(DeprecationWarning, match="use fastcnn.utils.save_img"):
        image.save_img(tmp_path / "k2.png", x, scale=False)
    assert (tmp_path / "k2.png").is_file()
