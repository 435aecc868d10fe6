"""The README's Python snippets that are marked for testing run as written.

A fenced ```python block right after a line ``<!-- test -->`` is run as a script, in a
fresh process, in an empty folder (snippets may write files there);
``<!-- test: needs MOD1 MOD2 -->`` marks one that needs optional modules (the ``keras``
and ``onnx`` extras): it is skipped, saying which module is missing, where one is not
installed. Unmarked blocks (fragments that continue an earlier block, or need data sets)
are not run.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARK = re.compile(r"^<!-- test(?::\s*needs\s+(?P<needs>[^>]*?))?\s*-->\s*$")
# Hang guard only (a snippet takes seconds); never a timing assertion.
TIMEOUT_S = 300


def marked_snippets(text):
    """``[(line number, needed modules, code)]`` for every marked block of ``text``."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = MARK.match(line.strip())
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or lines[j].strip() != "```python":
            raise AssertionError(f"README.md line {i + 1}: {line.strip()!r} is not followed "
                                 f"by a ```python block")
        end = j + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end >= len(lines):
            raise AssertionError(f"README.md line {j + 1}: the ```python block never ends")
        needs = tuple((m.group("needs") or "").split())
        found.append((j + 1, needs, "\n".join(lines[j + 1:end]) + "\n"))
    return found


def _snippets():
    if not README.is_file():
        return []
    return marked_snippets(README.read_text(encoding="utf-8"))


SNIPPETS = _snippets()


@pytest.mark.skipif(not README.is_file(), reason="needs a source checkout (README.md)")
def test_the_readme_has_marked_snippets():
    # The sections on the layers, transfer learning, Keras files, the inference plan and
    # ONNX each show one: losing the markers would silently stop testing them.
    assert len(SNIPPETS) >= 5, [line for line, _, _ in SNIPPETS]


def test_marker_parsing_finds_blocks_and_refuses_a_dangling_marker():
    text = ("a\n<!-- test -->\n```python\nprint(1)\n```\n"
            "<!-- test: needs h5py onnx -->\n\n```python\nx = 2\n```\n```python\nno\n```\n")
    assert marked_snippets(text) == [(3, (), "print(1)\n"), (8, ("h5py", "onnx"), "x = 2\n")]
    with pytest.raises(AssertionError, match="not followed by a"):
        marked_snippets("<!-- test -->\n```bash\nls\n```\n")


@pytest.mark.parametrize("line, needs, code", SNIPPETS,
                         ids=[f"README.md:{line}" for line, _, _ in SNIPPETS])
def test_readme_snippet_runs(line, needs, code, tmp_path):
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the snippet at README.md:{line} needs {module!r}, not installed here "
                        f"(an optional extra)")
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("FASTCNN_CACHE", str(tmp_path / "cache"))   # nothing written to ~
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"README.md:{line} failed (exit {proc.returncode}):\n{code}\n--- stderr:\n"
        f"{proc.stderr[-4000:]}")
