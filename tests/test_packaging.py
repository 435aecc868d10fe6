"""What the source distribution carries: the whole test suite, the examples and the
benchmarks (the README names them), not only the files setuptools picks by default."""
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tracked(*folders):
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", *folders],
                         capture_output=True, text=True, check=True).stdout
    return sorted(p for p in out.split("\0") if p and (REPO / p).is_file())


def test_sdist_ships_every_test_example_and_benchmark_file(tmp_path):
    wanted = _tracked("tests", "examples", "benchmarks")
    tree = tmp_path / "tree"
    for path in _tracked("."):          # a clean copy: no build outputs, no caches
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, tree / path)
    # FASTCNN_REQUIRE_EXT=0: the sdist needs no compiled extension (nor Cython).
    env = dict(os.environ, FASTCNN_REQUIRE_EXT="0")
    done = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--formats=gztar",
                           "--dist-dir", str(tmp_path / "dist")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [p for p in wanted if p not in names]
    assert not missing, f"{len(missing)} of {len(wanted)} files are not in the sdist: {missing[:10]}"
    assert "tests/conftest.py" in names and "MANIFEST.in" in names
    assert not [n for n in names if n.endswith((".pyc", ".so", ".nbi", ".nbc"))]
