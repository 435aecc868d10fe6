"""benchmarks/peers.py: the correctness guard and the table, without timing anything long.

The peer processes run one round each here; the benchmark itself is run by hand
(``python benchmarks/peers.py``), never by the test suite.
"""
import importlib.util
import os
import sys

import fastcnn  # noqa: F401  (before NumPy)
import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location("peers", os.path.join(BENCH, "peers.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(BENCH)


def test_same_is_the_guard_of_a_row(peers):
    assert peers.same(2.302585, 2.3025851)
    assert not peers.same(2.302585, 2.31)
    assert peers.same([[0.1, 0.9]], [[0.1, 0.9000001]])
    assert not peers.same([[0.1, 0.9]], [[0.1, 0.9], [0.2, 0.8]])   # shapes differ


def test_the_table_marks_wrong_rows_and_gives_no_ratio(peers):
    rows = [{"case": "scratch_train_b1", "threads": 1, "peer": "torch", "fastcnn_ms": 0.2,
             "peer_ms": 0.5, "status": "", "mem": [50.0, 250.0, 1.0, 2.0]},
            {"case": "scratch_train_b1", "threads": 1, "peer": "jax", "fastcnn_ms": None,
             "peer_ms": None, "status": "WRONG (differs from fastcnn before timing)",
             "mem": [0, 0, 0, 0]}]

    class Args:
        turns = 1

    table = peers.render(rows, {"tf": "tensorflow does not import"}, {}, "now", Args)
    assert "| scratch_train_b1 | 1 | PyTorch eager (NCHW) | 0.200 | 0.500 | 2.50 |" in table
    assert "| JAX jit (XLA) | - | - | WRONG" in table
    assert "Skipped TF / Keras 3: tensorflow does not import" in table
    # the fastest-peer table only holds checked rows
    assert "| scratch_train_b1 | 1 | PyTorch eager (NCHW) | 0.500 | 0.200 | 2.50 |" in table


def test_workers_compute_the_same_first_loss_from_the_shared_weights(peers, tmp_path):
    """fastcnn's worker and PyTorch's start from the same weights and batch and report the
    same loss before the first update: what every timed row is checked against."""
    case = next(c for c in peers.CASES if c[0] == "scratch_train_b1")
    job = peers.prepare(case, str(tmp_path))

    class Args:
        tf_python = None

    ours = peers.run_worker("fastcnn", job, 1, 1, Args, str(tmp_path))
    assert len(ours["times_ms"]) == 1 and ours["peak_mb"] > 0
    assert np.isfinite(ours["check"]) and ours["check"] > 0
    why = peers.missing("torch", Args)
    if why:
        pytest.skip(f"the PyTorch peer is an optional extra: {why}")
    theirs = peers.run_worker("torch", job, 1, 1, Args, str(tmp_path))
    assert peers.same(ours["check"], theirs["check"]), (ours["check"], theirs["check"])
