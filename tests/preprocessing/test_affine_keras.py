"""ImageDataGenerator's warp against Keras's ``apply_affine_transform`` (scipy's bilinear
affine_transform, order=1), from tests/fixtures/keras/preprocessing_keras.npz (made by
make_preprocessing.py with TensorFlow 2.21 / Keras 3.15 / scipy 1.17)."""
import json
from pathlib import Path

import numpy as np
import pytest

import fastcnn  # noqa: F401  (before NumPy's first use, as the project asks)
from fastcnn.preprocessing._affine import warp_batch
from fastcnn.preprocessing.image import ImageDataGenerator, affine_matrix

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
ARRAYS = np.load(FIXTURES / "preprocessing_keras.npz")
META = json.loads((FIXTURES / "preprocessing_keras.json").read_text())


@pytest.mark.parametrize("k", range(len(META["affine_modes"])))
def test_warp_equals_keras_apply_affine_transform(k):
    img = ARRAYS["affine_image"]
    theta, tx, ty, shear, zx, zy = ARRAYS["affine_params"][k]
    mode, cval = META["affine_modes"][k]
    h, w = img.shape[:2]
    m = affine_matrix(h, w, theta, tx, ty, shear, zx, zy)
    out = warp_batch(img[None], m[None], mode, cval)[0]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ARRAYS["affine_out"][k], rtol=0, atol=2e-6)


def test_generator_batch_warp_is_the_per_image_warp():
    """The batch path (one matrix per image, all at once) equals warping one at a time."""
    img = ARRAYS["affine_image"]
    gen = ImageDataGenerator(rotation_range=40, zoom_range=0.3, shear_range=10,
                             width_shift_range=0.2, fill_mode="reflect")
    rng = np.random.default_rng(0)
    mats = gen.random_matrices(3, *img.shape[:2], rng)
    batch = np.stack([img, img[::-1], img[:, ::-1]])
    together = warp_batch(batch, mats, "reflect")
    for i in range(3):
        np.testing.assert_array_equal(together[i], warp_batch(batch[i:i + 1], mats[i:i + 1],
                                                              "reflect")[0])
