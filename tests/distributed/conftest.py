"""Launching scripts under ``mpiexec -n N`` for the distributed tests.

Every launch: the Python running the tests (``sys.executable``), one thread per process
(the machine may have fewer cores than processes), this checkout first on PYTHONPATH, a
timeout after which the whole process group is killed (a hang fails the test, it never
blocks the suite). mpiexec is looked up next to the Python first (where the ``mpich``
wheel of ``fastcnn[distributed]`` puts it), then on PATH; Open MPI's needs
``--oversubscribe`` to start more processes than cores, MPICH's does not.
"""
import importlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
ROOT = HERE.parents[1]
TIMEOUT = 120   # seconds; a normal launch here takes 1 to 5


def find_mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def _is_open_mpi(mpiexec):
    try:
        text = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in text or "OpenRTE" in text or "open-mpi" in text


def pinned_env():
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                 "MKL_NUM_THREADS"):
        env[name] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("FASTCNN_TRACEBACK", None)
    return env


def run_with_timeout(cmd, env, timeout, cwd=None):
    """CompletedProcess of ``cmd``; on timeout kills its whole process group (mpiexec and
    the processes it started) and fails the test with what they printed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} did not finish within {timeout} s (a hang)\n"
                    f"--- stdout\n{out}\n--- stderr\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class Launcher:
    def __init__(self, mpiexec):
        self.mpiexec = mpiexec
        self.open_mpi = _is_open_mpi(mpiexec)

    def command(self, n, argv):
        cmd = [self.mpiexec, "-n", str(n)]
        if self.open_mpi:
            cmd.append("--oversubscribe")
        return cmd + list(argv)

    def env(self):
        env = pinned_env()
        # the launcher's helpers (hydra_pmi_proxy, orted) sit beside it, maybe off PATH
        env["PATH"] = os.pathsep.join([os.path.dirname(self.mpiexec), env.get("PATH", "")])
        if self.open_mpi and hasattr(os, "geteuid") and os.geteuid() == 0:
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")   # CI containers run as root
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        return env

    def run(self, script, *args, n=2, timeout=TIMEOUT, cwd=None):
        """``mpiexec -n n python scripts/<script> args...``."""
        argv = [sys.executable, str(SCRIPTS / script), *map(str, args)]
        return run_with_timeout(self.command(n, argv), self.env(), timeout, cwd)

    def run_alone(self, script, *args, timeout=TIMEOUT, cwd=None):
        """``python scripts/<script> args...`` without a launcher (one MPI process)."""
        argv = [sys.executable, str(SCRIPTS / script), *map(str, args)]
        return run_with_timeout(argv, self.env(), timeout, cwd)

    @staticmethod
    def describe(result):
        """For assertion messages: the status and everything the processes printed."""
        return (f"exit status {result.returncode}\n--- stdout\n{result.stdout}\n"
                f"--- stderr\n{result.stderr}")

    def run_module(self, *args, n=2, timeout=TIMEOUT, cwd=None):
        """``mpiexec -n n python -m args...``."""
        return run_with_timeout(self.command(n, [sys.executable, "-m", *map(str, args)]),
                                self.env(), timeout, cwd)


@pytest.fixture(scope="session")
def mpi():
    """A :class:`Launcher`, or a skip saying what is missing."""
    try:
        importlib.import_module("mpi4py")   # the package alone: MPI is not started here
    except ImportError:
        pytest.skip('mpi4py is not installed (pip install "fastcnn[distributed]")')
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec next to the Python executable or on PATH (the mpich wheel "
                    'that pip install "fastcnn[distributed]" installs provides one)')
    return Launcher(mpiexec)


@pytest.fixture(scope="session")
def common():
    """tests/distributed/scripts/common.py, the models and data the scripts use."""
    spec = importlib.util.spec_from_file_location("fastcnn_mpi_common", SCRIPTS / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
