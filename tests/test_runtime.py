"""The thread-runtime defaults that fastcnn applies before NumPy / OpenMP load."""
import os
import subprocess
import sys

from fastcnn import _runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_after_import(extra_env, first_import="fastcnn"):
    env = {k: v for k, v in os.environ.items() if k not in _runtime.DEFAULTS}
    env.update(extra_env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = (f"import {first_import}, fastcnn, os; from fastcnn import _runtime; "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'], "
            "_runtime.APPLIED_BEFORE_NUMPY)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.split()


def test_defaults_are_applied_before_numpy_loads():
    assert _env_after_import({}) == ["PASSIVE", "4", "True"]


def test_a_users_own_setting_wins():
    got = _env_after_import({"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "20"})
    assert got == ["ACTIVE", "20", "True"]


def test_numpy_imported_first_is_reported(monkeypatch):
    assert _env_after_import({}, first_import="numpy")[2] == "False"
    monkeypatch.setattr(_runtime, "APPLIED_BEFORE_NUMPY", False)
    assert any("numpy was imported before fastcnn" in line for line in _runtime.describe())
