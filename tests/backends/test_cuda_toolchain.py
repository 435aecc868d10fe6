"""The ``cuda`` backend's build-level promises: every kernel compiles to PTX (the simulator
accepts code a GPU rejects), kernels obey the rules the simulator cannot enforce, and the
backend explains itself when it cannot run.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from fastcnn import backends
from fastcnn.backends import auto

CUDA_DIR = pathlib.Path(backends.__file__).parent / "_cuda"
KERNEL_MODULES = sorted(p for p in CUDA_DIR.glob("*.py")
                        if p.name not in ("__init__.py", "_jit.py", "ptx_check.py"))


def run_python(code, **env):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **env)
    return subprocess.run([sys.executable, "-c", code], env=environment,
                          capture_output=True, text=True, timeout=300)


def numba_cuda_installed():
    from fastcnn.backends import cuda as cb
    return cb.cuda is not None


# ---------------------------------------------------------------------------- PTX


def test_every_kernel_compiles_to_ptx_for_both_dtypes_without_float64_in_float32():
    if not numba_cuda_installed():
        pytest.skip("numba-cuda is not installed: nothing to compile")
    done = subprocess.run(
        [sys.executable, "-m", "fastcnn.backends._cuda.ptx_check", "--json"],
        env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=os.pathsep.join(sys.path)),
        capture_output=True, text=True, timeout=600)
    if done.returncode == 3:
        pytest.skip(f"no CUDA compiler toolchain (NVRTC/NVVM) here: {done.stderr.strip()}")
    report = json.loads(done.stdout.splitlines()[0])
    assert not report["simulator"]
    from fastcnn.backends._cuda import KERNELS  # the same table the check walked

    assert set(report["kernels"]) == set(KERNELS)
    for name, results in report["kernels"].items():
        assert results == {"float32": "ok", "float64": "ok"}, (name, results)
    f64 = report["f64_ops"]
    assert {n: c["float32"] for n, c in f64.items() if c["float32"]} == {}
    # The detector itself works: float64 kernels do show float64 instructions.
    assert all(c["float64"] > 0 for c in f64.values()), f64
    assert done.returncode == 0, done.stderr


def test_ptx_check_refuses_to_run_under_the_simulator():
    if not numba_cuda_installed():
        pytest.skip("numba-cuda is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "fastcnn.backends._cuda.ptx_check"],
        env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join(sys.path)),
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "NUMBA_ENABLE_CUDASIM=0" in done.stderr


# --------------------------------------------------------------- rules of the kernel sources


def test_kernels_are_made_only_through_the_registering_decorator():
    """ptx_check walks _jit.KERNELS: a kernel made elsewhere would escape it."""
    assert KERNEL_MODULES
    for path in KERNEL_MODULES:
        source = path.read_text()
        assert "cuda.jit" not in source, f"{path.name} calls cuda.jit directly"
        factories = re.findall(r"^@kernel\(", source, re.MULTILINE)
        functions = re.findall(r"^def \w+\(T\):", source, re.MULTILINE)
        assert len(factories) == len(functions) > 0, path.name


def test_kernels_use_no_warp_intrinsics_and_no_atomics():
    """Warp intrinsics do not run in the simulator; float atomics are nondeterministic."""
    forbidden = re.compile(r"\b(shfl\w*|ballot\w*|syncwarp|atomic|activemask|lanemask)\b")
    for path in KERNEL_MODULES:
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        assert not forbidden.search(code), f"{path.name}: {forbidden.search(code).group()}"


def test_every_kernel_is_in_the_table_with_both_dtypes():
    if not numba_cuda_installed():
        pytest.skip("numba-cuda is not installed")
    from fastcnn.backends._cuda import (KERNELS, batchnorm, conv, depthwise, elementwise, losses,
                                        optim, pool)

    found = {}
    for module in (batchnorm, conv, depthwise, elementwise, losses, optim, pool):
        for name, value in vars(module).items():
            if isinstance(value, dict) and set(value) == {np.dtype(np.float32),
                                                          np.dtype(np.float64)}:
                found[name] = value
    assert set(found) == set(KERNELS)
    for name, variants in found.items():
        assert KERNELS[name][1] is variants
        assert "{t}" in KERNELS[name][0]


# ---------------------------------------------------------------------------- availability


def test_available_under_the_simulator():
    if not numba_cuda_installed():
        pytest.skip("numba-cuda is not installed")
    from fastcnn.backends import cuda as cb

    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("the CUDA simulator is off in this run")
    assert cb.simulated()
    assert cb.is_available() == (True, "")
    assert "cuda" in backends.available()


def test_without_a_gpu_the_backend_says_why_everywhere():
    """No GPU, simulator off: available() leaves cuda out, unavailable() / `fastcnn info`
    give numba's driver message and the simulator hint, set_backend raises with it."""
    if not numba_cuda_installed():
        pytest.skip("numba-cuda is not installed")
    code = (
        "from numba import cuda\n"
        "import sys\n"
        "if cuda.is_available(): print('HAS-GPU'); sys.exit(0)\n"
        "from fastcnn import backends\n"
        "from fastcnn.cli import main\n"
        "assert 'cuda' not in backends.available()\n"
        "why = backends.unavailable()['cuda']\n"
        "assert why.startswith('no usable CUDA GPU: '), why\n"
        "assert 'NUMBA_ENABLE_CUDASIM=1' in why, why\n"
        "try:\n"
        "    backends.set_backend('cuda')\n"
        "except ValueError as exc:\n"
        "    assert why in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('set_backend(\"cuda\") did not raise')\n"
        "assert backends.get_backend() == 'auto'\n"
        "main(['info'])\n"
    )
    done = run_python(code, NUMBA_ENABLE_CUDASIM="0")
    assert done.returncode == 0, done.stderr
    if "HAS-GPU" in done.stdout:
        pytest.skip("this machine has a usable GPU")
    line = next(l for l in done.stdout.splitlines() if l.strip().startswith("cuda "))
    assert "unavailable" in line and "no usable CUDA GPU" in line


def test_without_numba_the_backend_names_the_install_command():
    code = (
        "import sys; sys.modules['numba'] = None\n"   # 'import numba' raises ImportError
        "from fastcnn.backends import cuda\n"
        "ok, why = cuda.is_available()\n"
        "assert not ok and 'pip install \"fastcnn[cuda]\"' in why, why\n"
        "from fastcnn import backends\n"
        "assert 'cuda' not in backends.available()\n"
        "assert 'fastcnn[cuda]' in backends.unavailable()['cuda']\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr


def test_numba_builtin_cuda_target_is_refused_with_the_install_command(monkeypatch):
    if not numba_cuda_installed():
        pytest.skip("numba-cuda is not installed")
    from fastcnn.backends import cuda as cb

    monkeypatch.setattr(cb.cuda, "implementation", "Built-in", raising=False)
    ok, why = cb.is_available()
    assert not ok
    assert "built-in CUDA target" in why and 'pip install "fastcnn[cuda]"' in why


def test_auto_never_routes_to_cuda():
    for key, names in auto.PREFERENCES.items():
        assert "cuda" not in names, key
    assert "cuda" not in auto.choices().values()
