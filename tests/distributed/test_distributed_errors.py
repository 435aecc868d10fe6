"""Bad input and failures under MPI: clear errors, on every process, and never a hang."""
import json
import re
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import distributed


@pytest.fixture
def no_mpi4py(monkeypatch):
    """Makes ``import mpi4py`` fail as it does where the package is not installed."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    monkeypatch.setattr(distributed, "_mpi", None)


@pytest.mark.parametrize("call", [
    distributed.init, distributed.rank, distributed.size, distributed.is_primary,
    distributed.local_rank, distributed.barrier, lambda: distributed.broadcast(1)])
def test_without_mpi4py_the_error_names_the_extra(no_mpi4py, call):
    with pytest.raises(ImportError, match=r'pip install "fastcnn\[distributed\]"'):
        call()
    assert not distributed.is_initialized()


def test_without_mpi4py_training_runs_on_one_process(no_mpi4py, rng):
    from fastcnn.layers import Dense
    model = fastcnn.Sequential([Dense(2, activation="softmax", input_shape=(3,))])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(rng.random((6, 3)), rng.integers(0, 2, 6), batch_size=4, verbose=0)
    assert distributed.current().size == 1


def test_rank_before_init_says_to_call_init(monkeypatch):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    monkeypatch.setattr(distributed, "_mpi", None)
    with pytest.raises(RuntimeError, match=r"init\(\) to be called first"):
        distributed.rank()


@pytest.fixture(scope="module")
def caught(mpi, tmp_path_factory):
    out = tmp_path_factory.mktemp("errors")
    result = mpi.run("errors.py", out)
    assert result.returncode == 0, mpi.describe(result)
    return [json.loads((out / f"errors-{r}.json").read_text()) for r in (0, 1)], out


@pytest.mark.parametrize("case, pattern", [
    ("fit_batch", r"ValueError: batch_size=1 is the GLOBAL batch, shared out among the 2 "
                  r"processes, so it must be at least 2"),
    ("predict_batch", r"ValueError: batch_size=1 is the GLOBAL batch"),
    ("architecture", r"ValueError: the processes disagree on the model architecture: "
                     r"process 1's layer 4 'dense_\d+' \(Dense, weights \[\(6, 4\), \(4,\)\]\) "
                     r"differs from process 0's layer 4 .*units=4 there, 3 on process 0"),
    ("data_size", r"ValueError: the processes disagree on fit's data: process 1 has "
                  r"samples=12, process 0 has samples=16; process 1 passed other x and y"),
    ("epochs", r"ValueError: the processes disagree on fit's arguments: process 1 has "
               r"epochs=2, process 0 has epochs=1"),
    ("data_content", r"ValueError: the processes disagree on fit's data: process 1 passed "
                     r"other x than process 0; every process must pass the same data"),
    ("predict_size", r"ValueError: the processes disagree on predict: process 1 has "
                     r"samples=12, process 0 has samples=16"),
])
def test_errors_every_process_detects(caught, case, pattern):
    results, _ = caught
    for rank in (0, 1):   # raised on every process, so a script may catch it
        message = results[rank][case]["error"]
        assert message is not None and re.search(pattern, message), (rank, message)


def test_processes_whose_generators_run_out_apart_stop_together(caught):
    results, out = caught
    for rank in (0, 1):
        entry = results[rank]["generator"]
        assert entry["error"] is None
        assert entry["iterations"] == 2   # both stopped where process 1 ran out
        assert any("ran out of batches" in w for w in entry["warnings"])
    # still in step after all the errors: the last fit ends with one model on both
    np.testing.assert_array_equal(np.load(out / "after-0.npy"), np.load(out / "after-1.npy"))


@pytest.mark.parametrize("mode, shown", [
    ("raise", ["RuntimeError: process 1 fails on purpose", "Traceback",
               "fastcnn.distributed: process 1 of 2 stopped on an uncaught RuntimeError; "
               "aborting all 2 processes"]),
    ("batch", ["ValueError: batch_size=1 is the GLOBAL batch"]),
    ("exit", []),   # a process that dies says nothing; the launcher ends the others
])
def test_a_failing_process_ends_every_process(mpi, mode, shown):
    result = mpi.run("failing.py", mode, timeout=60)
    assert result.returncode != 0, mpi.describe(result)
    assert "was not stopped" not in result.stdout, mpi.describe(result)
    for text in shown:
        assert text in result.stderr, mpi.describe(result)


@pytest.mark.parametrize("mode", ["sys_exit_0", "sys_exit_1", "os_exit_0", "os_exit_1"])
def test_a_process_that_leaves_fit_early_ends_the_job(mpi, mode, tmp_path):
    result = mpi.run("exiting.py", mode, tmp_path, timeout=60)
    assert "was not stopped" not in result.stdout, mpi.describe(result)
    if mode.startswith("sys_exit"):
        # The leaving process said so on its way out; the other one, stuck in a
        # collective call, aborted the job.
        assert result.returncode != 0, mpi.describe(result)
        assert ("fastcnn.distributed: process 1 of 2 left (exited) while process 0 waits "
                "for it in a collective call") in result.stderr, mpi.describe(result)
    elif mode == "os_exit_1":
        assert result.returncode != 0, mpi.describe(result)
    # os._exit(0): the launcher ends the job (MPICH reports the status 0 it was given).


def test_a_process_that_ends_first_does_not_abort_one_still_working(mpi, tmp_path):
    result = mpi.run("exiting.py", "apart", tmp_path, timeout=60)
    assert result.returncode == 0, mpi.describe(result)
    assert "process 0 finished" in result.stdout and "process 1 finished" in result.stdout
    assert "aborting" not in result.stderr, mpi.describe(result)
    assert (tmp_path / "model.fcnn").is_file()


def test_a_collective_call_after_another_process_ended_aborts(mpi, tmp_path):
    result = mpi.run("exiting.py", "late", tmp_path, timeout=60)
    assert result.returncode != 0, mpi.describe(result)
    assert "process 0 finished" not in result.stdout, mpi.describe(result)
    assert ("process 1 of 2 left (exited) while process 0 waits for it in a collective "
            "call (barrier)") in result.stderr, mpi.describe(result)
