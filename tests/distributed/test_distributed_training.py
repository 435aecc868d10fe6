"""Data-parallel fit/evaluate/predict under ``mpiexec -n 2`` against one process.

One launch of scripts/train.py runs every scenario; each test checks one property of what
the two processes wrote, against the same computation done here in one process.
"""
import csv
import json

import numpy as np
import pytest

import fastcnn

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# float32 weights after a few Adam steps: two processes sum the per-process gradients in
# another order than one process sums the samples.
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def run(mpi, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    result = mpi.run("train.py", out)
    assert result.returncode == 0, mpi.describe(result)
    return out, result


def load(out, name, rank):
    path = out / f"{name}-{rank}"
    for suffix, reader in ((".npz", np.load), (".npy", np.load),
                           (".json", lambda p: json.loads(p.read_text()))):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            return reader(candidate)
    raise FileNotFoundError(path)


def test_two_processes_equal_one_process_with_the_same_global_batch(run, common):
    out, _ = run
    with fastcnn.use_backend(common.BACKEND):
        fastcnn.set_random_seed(100)
        model = common.small_model()
        x, y = common.data(36)
        xv, yv = common.data(10, seed=1)
        history = model.fit(x, y, batch_size=7, epochs=2, shuffle=False,
                            validation_data=(xv, yv), verbose=0)
        expected = common.flat_weights(model)
        predicted = model.predict(xv, batch_size=4)
        evaluated = model.evaluate(xv, yv, batch_size=3, verbose=0)
    for rank in (0, 1):
        got = load(out, "equal", rank)
        np.testing.assert_allclose(got["after"], expected, rtol=RTOL, atol=ATOL)
        # predict: the whole result, in input order, on every process
        np.testing.assert_allclose(got["predict"], predicted, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got["evaluate"], evaluated, rtol=RTOL, atol=ATOL)
        logged = load(out, "history", rank)
        assert set(logged) == set(history.history)
        for key, values in history.history.items():
            if "accuracy" in key:   # summed counts: exactly the single-process accuracy
                assert logged[key] == values, key
            else:
                np.testing.assert_allclose(logged[key], values, rtol=RTOL)
    # the processes end with the very same weights (one Allreduce result for both)
    np.testing.assert_array_equal(load(out, "equal", 0)["after"], load(out, "equal", 1)["after"])


def test_initial_weights_are_broadcast_from_rank_0(run, common):
    out, _ = run
    first, second = load(out, "equal", 0), load(out, "equal", 1)
    # seeded differently, so they started apart ...
    assert not np.allclose(first["before"], second["before"])
    # ... and rank 0's start is the single-process start (checked in the test above), so
    # the equality there proves process 1 trained from rank 0's weights and Adam state.
    with fastcnn.use_backend(common.BACKEND):
        fastcnn.set_random_seed(100)
        np.testing.assert_array_equal(first["before"], common.flat_weights(common.small_model()))


def test_shuffled_training_uses_rank_0_permutation(run, common):
    out, _ = run
    with fastcnn.use_backend(common.BACKEND):
        fastcnn.set_random_seed(200)
        model = common.small_model()
        x, y = common.data(36)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0)
    for rank in (0, 1):
        np.testing.assert_allclose(load(out, "shuffled", rank), common.flat_weights(model),
                                   rtol=RTOL, atol=ATOL)


def test_train_on_batch_weights_each_process_by_its_batch_size(run, common):
    out, _ = run
    with fastcnn.use_backend(common.BACKEND):
        fastcnn.set_random_seed(300)
        model = common.small_model()
        xb, yb = common.data(5, seed=2)
        loss = model.train_on_batch(xb, yb)
    expected = np.concatenate([common.flat_weights(model), np.ravel(loss)])
    for rank in (0, 1):
        np.testing.assert_allclose(load(out, "on_batch", rank), expected, rtol=RTOL, atol=ATOL)


def test_batchnorm_moving_statistics_are_averaged_into_one_model(run):
    out, _ = run
    first, second = load(out, "batchnorm", 0), load(out, "batchnorm", 1)
    np.testing.assert_array_equal(first["moving"], second["moving"])
    np.testing.assert_array_equal(first["weights"], second["weights"])
    np.testing.assert_array_equal(first["predict"], second["predict"])


def test_only_rank_0_prints(run):
    _, result = run
    text = result.stdout   # both processes' output, possibly interleaved within lines
    assert "process 0 starts the verbose fit" in text
    assert "process 1 starts the verbose fit" in text   # the script's own prints pass
    for line in ("Epoch 1/2", "Epoch 2/2", "Epoch 1: saving model to"):
        assert text.count(line) == 1, (line, text)
    # evaluate(verbose=1) draws its final line once
    assert text.count("1/1 [") == 1, text


def test_files_are_written_once_by_rank_0(run):
    out, _ = run
    expected = ["ckpt-1.fcnn", "ckpt-2.fcnn", "model.fcnn", "weights.fcnn"]
    assert load(out, "writes", 0) == expected
    assert load(out, "writes", 1) == []
    for name in expected:
        assert (out / name).is_file()
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 3 and rows[0][0] == "epoch"   # header + 2 epochs: one writer
    fastcnn.load_model(str(out / "model.fcnn"))       # a whole, loadable file


def test_a_stop_on_one_process_stops_every_process(run):
    out, _ = run
    assert load(out, "stopped", 0) == load(out, "stopped", 1) == [0]


def test_a_functional_graph_trains_as_on_one_process(run, common):
    out, _ = run
    with fastcnn.use_backend(common.BACKEND):
        fastcnn.set_random_seed(700)
        model = common.graph_model()
        x, y = common.data(36)
        xv, _ = common.data(10, seed=1)
        model.fit(x, y, batch_size=7, epochs=2, shuffle=False, verbose=0)
        expected, predicted = common.flat_weights(model), model.predict(xv, batch_size=4)
    for rank in (0, 1):
        got = load(out, "graph", rank)
        np.testing.assert_allclose(got["after"], expected, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got["predict"], predicted, rtol=RTOL, atol=ATOL)
