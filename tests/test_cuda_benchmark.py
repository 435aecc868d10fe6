"""benchmarks/bench_cuda.py: it refuses to time the simulator or a missing GPU (skipping
with the reason), and its PyTorch peer holds the same parameters as each fastcnn model."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_cuda.py"


def run(**env):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **env)
    return subprocess.run([sys.executable, str(SCRIPT), "--models", "tutorial"],
                          env=environment, capture_output=True, text=True, timeout=300)


def test_skips_under_the_simulator():
    done = run(NUMBA_ENABLE_CUDASIM="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SKIPPED: NUMBA_ENABLE_CUDASIM is on"), done.stdout


def test_skips_without_a_gpu_saying_why():
    done = run(NUMBA_ENABLE_CUDASIM="0")
    assert done.returncode == 0, done.stderr
    if not done.stdout.startswith("SKIPPED"):
        pytest.skip("this machine has a GPU: the benchmark ran")
    assert done.stdout.startswith("SKIPPED: the cuda backend is unavailable: "), done.stdout


@pytest.mark.parametrize("name", ["tutorial", "lenet", "fashion", "catsdogs"])
def test_torch_peer_has_the_same_parameters(name):
    torch = pytest.importorskip("torch", reason="torch is not installed (optional peer)")
    spec = importlib.util.spec_from_file_location("bench_cuda", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = bench.build(name)
    net = bench.torch_model(torch, model)   # raises if the counts differ
    x, _ = bench.data(name, 2)
    out = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert tuple(out.shape) == (2,) + model.output_shape[1:]
