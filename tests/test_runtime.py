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
            "_runtime.APPLIED_BEFORE_NUMPY, os.environ.get('GOMP_SPINCOUNT', '-'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.split()


def test_defaults_are_applied_before_numpy_loads():
    assert _env_after_import({}) == ["PASSIVE", "4", "True", "10000"]


def test_a_users_own_setting_wins():
    got = _env_after_import({"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "20"})
    # ACTIVE means spin for ever: a GOMP_SPINCOUNT would cut that short, so none is set
    assert got == ["ACTIVE", "20", "True", "-"]
    assert _env_after_import({"GOMP_SPINCOUNT": "5"}) == ["PASSIVE", "4", "True", "5"]


def test_numpy_imported_first_is_reported(monkeypatch):
    assert _env_after_import({}, first_import="numpy")[2] == "False"
    monkeypatch.setattr(_runtime, "APPLIED_BEFORE_NUMPY", False)
    assert any("numpy was imported before fastcnn" in line for line in _runtime.describe())


def _malloc_state(extra_env):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTCNN_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    env.update(extra_env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    code = "from fastcnn import _runtime; print(_runtime.MALLOC_TUNING)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True, timeout=120).stdout.strip()


def _glibc():
    import platform
    return platform.libc_ver()[0] == "glibc"


def test_malloc_tuning_applies_on_glibc_and_says_so():
    state = _malloc_state({})
    if _glibc():
        assert state.startswith("mmap threshold 32 MiB, trim threshold 256 MiB"), state
    else:
        assert state == "not glibc: left as is"


def test_malloc_tuning_can_be_turned_off_and_respects_the_users_settings():
    assert _malloc_state({"FASTCNN_MALLOC_TUNING": "0"}) == "off (FASTCNN_MALLOC_TUNING=0)"
    if _glibc():
        assert _malloc_state({"MALLOC_TRIM_THRESHOLD_": "1000000"}) == \
            "the user's MALLOC_*_ settings kept"


def test_malloc_tuning_is_reported_by_describe():
    assert any(line.startswith("malloc: ") for line in _runtime.describe())


def test_freed_step_arrays_are_reused_instead_of_faulting_in_again():
    """The point of the tuning: a train step keeps a few MiB of arrays alive at once, then
    frees them all. With glibc's defaults the freed top of the heap goes back to the OS and
    the next step faults every page in again; with the tuning the pages stay."""
    if not _glibc():
        import pytest
        pytest.skip("malloc tuning applies to glibc only")
    code = ("import fastcnn, numpy as np, resource\n"
            "def step():\n"
            "    alive = [np.ones(1 << 18, np.float32) for _ in range(20)]  # 20 x 1 MiB\n"
            "    del alive\n"
            "for _ in range(3): step()\n"
            "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(20): step()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    faults = {}
    for setting in ("1", "0"):
        env["FASTCNN_MALLOC_TUNING"] = setting
        faults[setting] = int(subprocess.run([sys.executable, "-c", code], env=env,
                                             capture_output=True, text=True, check=True,
                                             timeout=120).stdout)
    # 20 steps x 20 MiB = 102,400 pages faulted in again without the tuning (measured)
    assert faults["1"] < 1000 < 50000 < faults["0"], faults


def _import_warnings(code, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in _runtime.DEFAULTS}
    env.update(extra_env or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True, timeout=120).stderr


def _run(code, extra_env=None):
    env = {k: v for k, v in os.environ.items()
           if k not in _runtime.DEFAULTS and k != "FASTCNN_OPENBLAS_RESTART"}
    env.update(extra_env or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True, timeout=120)


def _needs_openblas_pool():
    import pytest
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: extra threads cannot help anyway, so fastcnn does not warn")
    if not _runtime._loaded_openblas():
        pytest.skip("NumPy here does not use OpenBLAS (or this is not Linux)")


RESTART_CHECK = (
    "import numpy as np\n"
    "import fastcnn\n"
    "from fastcnn import _runtime\n"
    "rng = np.random.default_rng(0)\n"
    "a, b = rng.random((300, 200)), rng.random((200, 300))\n"
    "exact = np.einsum('ik,kj->ij', a, b)  # no BLAS\n"
    "assert np.allclose(a @ b, exact) and np.allclose(a.T @ a, np.einsum('ki,kj->ij', a, a))\n"
    "print(_runtime.OPENBLAS_RESTART)\n")


def test_numpy_imported_first_restarts_openblas_instead_of_warning():
    """NumPy first: OpenBLAS read its spinning default before fastcnn could set it; the
    pool is restarted with OPENBLAS_THREAD_TIMEOUT=4 (benchmarks/README.md, import order),
    and a 2-thread GEMM still computes the right product afterwards."""
    _needs_openblas_pool()
    done = _run(RESTART_CHECK, {"OPENBLAS_NUM_THREADS": "2"})
    assert "ThreadSettingWarning" not in done.stderr, done.stderr
    assert done.stdout.startswith("restarted ") and "timeout 2**4 cycles" in done.stdout, \
        done.stdout


def test_the_restart_can_be_turned_off_and_then_fastcnn_warns():
    _needs_openblas_pool()
    err = _run("import numpy\nimport fastcnn\n", {"FASTCNN_OPENBLAS_RESTART": "0"}).stderr
    assert "ThreadSettingWarning: numpy was imported before fastcnn" in err
    assert "<string>:2" in err  # points at the user's import line
    assert "OPENBLAS_THREAD_TIMEOUT=4" in err and "FASTCNN_OPENBLAS_RESTART=0" in err


def test_no_restart_while_other_threads_may_be_in_blas():
    _needs_openblas_pool()
    code = ("import numpy, threading\n"
            "gate = threading.Event()\n"
            "t = threading.Thread(target=gate.wait); t.start()\n"
            "import fastcnn\n"
            "gate.set(); t.join()\n"
            "print(fastcnn._runtime.OPENBLAS_RESTART)\n")
    done = _run(code)
    assert done.stdout.strip() == "not restarted: other Python threads are running"
    assert "ThreadSettingWarning" in done.stderr and "other Python threads" in done.stderr


def test_no_warning_in_the_right_order_or_with_the_variable_exported():
    assert "ThreadSettingWarning" not in _import_warnings("import fastcnn\nimport numpy\n")
    assert "ThreadSettingWarning" not in _import_warnings(
        "import numpy\nimport fastcnn\n", {"OPENBLAS_THREAD_TIMEOUT": "4"})
