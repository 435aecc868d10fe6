"""ImageDataGenerator iterators under ``mpiexec -n 2``: each process reads only its share of
every global batch, and together they see exactly what one process sees."""
import numpy as np
import pytest

import fastcnn
from fastcnn.preprocessing.image import ImageDataGenerator

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FILES = 13   # batches of 5, 5 and 3: shares 3+2, 3+2, 2+1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for k in range(FILES):
        sub = root / ("a" if k < 7 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(sub / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def run(mpi, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("iterators")
    result = mpi.run("iterators.py", out, folder)
    assert result.returncode == 0, mpi.describe(result)
    assert result.stdout.count(f"Found {FILES} images belonging to 2 classes.") == 1, \
        mpi.describe(result)
    assert result.stdout.count(f"Found {FILES} files belonging to 2 classes.") == 1, \
        mpi.describe(result)
    return out


def single_process_folder_fit(common, folder):
    with fastcnn.use_backend(common.BACKEND):
        fastcnn.set_random_seed(600)
        it = ImageDataGenerator(rescale=1 / 255, horizontal_flip=True).flow_from_directory(
            folder, target_size=(8, 8), color_mode="grayscale", class_mode="sparse",
            batch_size=5)
        order = it._order(0)
        model = common.small_model(units=2)
        model.fit(it, epochs=1, verbose=0)
        it.close()
    return order, common.flat_weights(model)


def test_each_process_decodes_only_its_share_of_each_batch(run, common, folder):
    order, _ = single_process_folder_fit(common, folder)
    shares = {0: [], 1: []}
    for start in range(0, FILES, 5):
        batch = list(order[start:start + 5])
        cut = (len(batch) + 1) // 2
        shares[0] += batch[:cut]
        shares[1] += batch[cut:]
    for rank in (0, 1):
        decoded = list(np.load(run / f"folder-{rank}.npz")["decoded"])
        # what the epoch needed, in order (the loading thread may have gone on beyond it)
        assert decoded[:len(shares[rank])] == shares[rank]


def test_fit_on_a_folder_equals_one_process(run, common, folder):
    _, expected = single_process_folder_fit(common, folder)
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(run / f"folder-{rank}.npz")["weights"], expected,
                                   rtol=1e-5, atol=1e-6)


def test_fit_on_image_dataset_from_directory_equals_one_process(run, common, folder):
    with fastcnn.use_backend(common.BACKEND):
        fastcnn.set_random_seed(700)   # rank 0's seed in the script
        ds = fastcnn.utils.image_dataset_from_directory(
            folder, image_size=(8, 8), color_mode="grayscale", batch_size=5, verbose=False)
        model = common.small_model(units=2)
        model.fit(ds, epochs=2, verbose=0)
        ds.close()
    expected = common.flat_weights(model)
    decoded = []
    for rank in (0, 1):
        got = np.load(run / f"dataset-{rank}.npz")
        np.testing.assert_allclose(got["weights"], expected, rtol=1e-5, atol=1e-6)
        decoded.append(list(got["decoded"]))
    # each process decoded only its share of each batch (3 + 2, 3 + 2, 2 + 1): per epoch 8
    # and 5 files that together are the 13 (the loading thread may have gone on beyond)
    for epoch in range(2):
        first = decoded[0][8 * epoch:8 * epoch + 8]
        second = decoded[1][5 * epoch:5 * epoch + 5]
        assert sorted(first + second) == sorted(f"{k}.png" for k in range(FILES))


def test_augmented_batches_are_shared_not_redrawn(run, common):
    x, _ = common.data(11)
    flow = ImageDataGenerator(rotation_range=30, width_shift_range=0.2, horizontal_flip=True,
                              vertical_flip=True).flow(x, batch_size=4, seed=3)
    parts = [np.load(run / f"flow-{rank}.npz") for rank in (0, 1)]
    for k in range(4):   # across the end of the first epoch (4, 4, 3 | 4)
        whole = next(flow)
        first, second = parts[0][f"arr_{k}"], parts[1][f"arr_{k}"]
        assert len(first) == (len(whole) + 1) // 2 and len(second) == len(whole) // 2
        np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=0, atol=1e-6)
