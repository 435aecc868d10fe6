"""fastcnn.distributed's functions, with and without a launcher, and the CLI under mpiexec."""
import warnings

import pytest

import fastcnn
from fastcnn import distributed
from fastcnn.distributed import shard_bounds

@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [0, 1, 2, 4, 7, 12])
def test_shards_are_contiguous_balanced_and_in_order(count, size):
    bounds = [shard_bounds(count, r, size) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    for (_, hi), (lo, _) in zip(bounds, bounds[1:]):
        assert hi == lo                                   # rank order is sample order
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_the_default_strategy_is_one_process():
    strategy = distributed.current()
    assert (strategy.size, strategy.rank, strategy.is_primary) == (1, 0, True)
    assert strategy.shard(3, 9) == (3, 9)


def test_api_on_two_processes(mpi):
    result = mpi.run("api.py", 2)
    assert result.returncode == 0, mpi.describe(result)
    for rank in (0, 1):
        assert f"api ok on process {rank} of 2" in result.stdout
        assert f"local ok on process {rank}" in result.stdout


def test_api_without_a_launcher_is_one_process(mpi):
    result = mpi.run_alone("api.py", 1)
    assert result.returncode == 0, mpi.describe(result)
    assert "api ok on process 0 of 1" in result.stdout


def test_cli_train_under_mpiexec_prints_and_saves_once(mpi, tmp_path):
    result = mpi.run_module("fastcnn", "train", "--epochs", "2", "--limit", "300",
                            "--backend", "im2col", "--save", tmp_path / "digits.fcnn",
                            cwd=tmp_path)
    assert result.returncode == 0, mpi.describe(result)
    for text in ("Epoch 1/2", "Epoch 2/2", "test accuracy", "saved the model"):
        assert result.stdout.count(text) == 1, mpi.describe(result)
    assert (tmp_path / "digits.fcnn").is_file()
    assert (tmp_path / "digits.fcnn.classes.json").is_file()


def test_cli_error_under_mpiexec_ends_every_process(mpi, tmp_path):
    # found after fastcnn.distributed.init(): each process reports it, then all end
    result = mpi.run_module("fastcnn", "train", "--save", tmp_path / "missing" / "m.fcnn",
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 1, mpi.describe(result)
    for rank in (0, 1):
        assert f"fastcnn: error (process {rank} of 2): --save" in result.stderr, \
            mpi.describe(result)
    assert "Traceback" not in result.stderr, mpi.describe(result)


def test_a_launched_process_without_init_is_warned(monkeypatch, rng):
    from fastcnn.distributed._strategy import SingleProcess
    from fastcnn.layers import Dense
    monkeypatch.setenv("PMI_SIZE", "2")            # what MPICH's mpiexec sets
    monkeypatch.setattr(SingleProcess, "_warned", False)
    monkeypatch.setattr(distributed, "_mpi", None)
    model = fastcnn.Sequential([Dense(2, activation="softmax", input_shape=(3,))])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.warns(RuntimeWarning, match=r"one of 2 started by an MPI launcher, but "
                                            r"fastcnn.distributed.init\(\) was not called"):
        model.fit(rng.random((4, 3)), rng.integers(0, 2, 4), verbose=0)
    with distributed.local():   # working alone on purpose: no warning
        SingleProcess._warned = False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.fit(rng.random((4, 3)), rng.integers(0, 2, 4), verbose=0)


def test_the_cuda_backend_gives_each_local_process_a_gpu(mpi):
    from fastcnn import backends
    if "cuda" not in backends.available():
        pytest.skip("the cuda backend does not load here (no GPU, no CUDA simulator)")
    result = mpi.run("gpu.py")   # NUMBA_ENABLE_CUDASIM comes from tests/conftest.py's env
    assert result.returncode == 0, mpi.describe(result)
    count = int(result.stdout.split(" of ")[1].split(",")[0])
    for rank in (0, 1):   # one GPU each, or (said once per machine) a warning to share
        line = (f"process {rank} on GPU {rank % count} of {count}, shared warning "
                f"{count < 2 and rank == 0}")
        assert line in result.stdout, mpi.describe(result)
