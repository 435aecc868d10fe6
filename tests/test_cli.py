"""The `fastcnn` command line: info, train, bad options, and the README/CI quick start."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastcnn
from fastcnn import backends
from fastcnn.cli import main

REPO = Path(__file__).resolve().parents[1]
ACCURACY_LINE = re.compile(r"^test accuracy: (\d\.\d{4}) \((\d+)/355\)$", re.MULTILINE)


def _test_accuracy(output: str) -> float:
    found = ACCURACY_LINE.findall(output)
    assert len(found) == 1, f"expected one test-accuracy line in:\n{output}"
    accuracy, correct = float(found[0][0]), int(found[0][1])
    assert abs(accuracy - correct / 355) < 1e-4
    return accuracy


def test_info_lists_versions_backends_capabilities_and_threads(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fastcnn {fastcnn.__version__}" in out
    assert "numpy " in out
    assert f"active backend: {backends.get_backend()}" in out
    names = backends.available()
    assert names, "no backend is available"
    for name in names:
        assert re.search(rf"^\s+{name}\s+available\s+\S", out, re.MULTILINE), name
    for name, reason in backends.unavailable().items():
        assert re.search(rf"^\s+{name}\s+unavailable\s+\S", out, re.MULTILINE), name
    # The capability table: one row per op, one column per available backend.
    table = backends.capability_table()
    for op in backends.OPS:
        row = re.search(rf"^\s+{op}\s+(.*)$", out, re.MULTILINE)
        assert row, op
        assert row.group(1).split() == ["x" if table[n][op] else "-" for n in names]
    for setting in ("os.cpu_count()", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS"):
        assert setting in out


def test_no_command_prints_the_commands_and_fails(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "train" in err and "info" in err and "a command is required" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["train", "--epochs", "two"], "--epochs: expected a positive integer, got 'two'"),
        (["train", "--batch-size", "-8"], "--batch-size: expected a positive integer"),
        (["train", "--learning-rate", "nan"], "--learning-rate: expected a positive finite"),
        (["train", "--learning-rate", "0"], "--learning-rate: expected a positive finite"),
        (["train", "--seed", "-1"], "--seed: expected an integer >= 0"),
        (["train", "--backend", "no-such-backend"], "--backend: invalid choice"),
        (["train", "--no-such-option"], "unrecognized arguments"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_bad_options_fail_with_a_usage_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_help_exits_zero(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--epochs", "--batch-size", "--learning-rate", "--backend", "--seed"):
        assert option in out


def test_train_one_epoch_in_process(capsys):
    assert main(["train", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out
    assert "loss" in out
    assert 0.0 <= _test_accuracy(out) <= 1.0


@pytest.mark.parametrize("name", backends.available())
def test_train_runs_on_every_backend(name, capsys):
    before = backends.get_backend()
    assert main(["train", "--epochs", "1", "--backend", name]) == 0
    out = capsys.readouterr().out
    assert f"backend: {name} |" in out
    assert 0.0 <= _test_accuracy(out) <= 1.0
    assert backends.get_backend() == before  # --backend does not leak out of the run


def test_same_seed_gives_the_same_run(capsys):
    results = []
    for _ in range(2):
        assert main(["train", "--epochs", "1", "--seed", "3"]) == 0
        out = capsys.readouterr().out
        results.append(re.findall(r"^test (?:loss|accuracy): .*$", out, re.MULTILINE))
    assert len(results[0]) == 2 and results[0] == results[1]


def test_python_dash_m_fastcnn_trains_end_to_end():
    # Run the same fastcnn this test imported, whether installed or from a checkout.
    env = dict(os.environ)
    package_parent = str(Path(fastcnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "fastcnn", "train", "--epochs", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Epoch 1/1" in done.stdout
    _test_accuracy(done.stdout)


@pytest.mark.slow
def test_default_train_reaches_the_promised_accuracy(capsys):
    # The promise for `fastcnn train`: >= 0.97 test accuracy on the bundled digits.
    assert main(["train"]) == 0
    assert _test_accuracy(capsys.readouterr().out) >= 0.97


def _ci_test_command() -> str:
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    found = re.findall(r"^TEST_COMMAND='(.*)'$", script, re.MULTILINE)
    assert len(found) == 1, "expected one TEST_COMMAND='...' line in .ci/run"
    return found[0]


@pytest.mark.skipif(not (REPO / ".ci" / "run").is_file() or not (REPO / "README.md").is_file(),
                    reason="needs a source checkout (README.md and .ci/run)")
def test_readme_quick_start_matches_ci():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)\n(.*?)\n```", quick_start, re.DOTALL)
    assert len(commands) == 2, f"the quick start must show exactly two commands: {commands}"
    assert commands[0] == "pip install -e . && fastcnn train"
    assert commands[1] == _ci_test_command()
    assert os.access(REPO / ".ci" / "run", os.X_OK), ".ci/run must be executable"
