"""OPTIONAL: fastcnn.applications at their default input sizes against Keras, with full
weight sets (tens to hundreds of MB, written to a temporary folder, never committed).

Runs where Keras/TensorFlow is importable (in this interpreter, or the Python named by
$FASTCNN_KERAS_PYTHON, e.g. /work/tfvenv/bin/python); skips saying so elsewhere. For each
architecture Keras builds the model, sets seeded weights (tests/fixtures/keras/app_weights.py)
and writes them three ways: a list in model.get_weights() order (.npz), its own
.weights.h5 (Keras 3) and a legacy .h5 (the layout of the published ImageNet files, with
Keras 2-style automatic names ending in _1, _2, ...); models with the top compare logits
(classifier_activation=None: the softmax of a random ResNet50 saturates to one-hot). fastcnn must predict what Keras
predicts from each (float32 rounding: within 3e-4 of the output's magnitude), and the three
loads must give identical predictions.

    FASTCNN_KERAS_PYTHON=/work/tfvenv/bin/python python -m pytest tests/test_applications_full.py
"""
import fastcnn  # noqa: F401  (before numpy)

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "fixtures" / "keras" / "compare_applications.py"


def _keras_python():
    if importlib.util.find_spec("keras") and importlib.util.find_spec("tensorflow"):
        return sys.executable
    return os.environ.get("FASTCNN_KERAS_PYTHON") or None


KERAS_PYTHON = _keras_python()
pytestmark = pytest.mark.skipif(
    KERAS_PYTHON is None,
    reason="optional: TensorFlow/Keras is not importable here; set FASTCNN_KERAS_PYTHON to a "
           "Python that has them (e.g. /work/tfvenv/bin/python) to compare full-size models")


@pytest.mark.parametrize("arch, size, top", [
    ("VGG16", 224, False), ("ResNet50", 224, True), ("MobileNetV2", 224, True),
    ("InceptionV3", 299, True)])
def test_default_size_matches_keras(arch, size, top, tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import compare_applications as cmp
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = [arch, str(size), "--files", "--out", str(tmp_path)] + (["--top", "--logits"] if top else [])
    env = dict(os.environ, PYTHONPATH="")
    done = subprocess.run([KERAS_PYTHON, str(SCRIPT), "keras"] + args, capture_output=True,
                          text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = cmp.main(["fastcnn"] + args)
    (_, rel), *from_files = results
    assert rel <= 3e-4
    assert len(from_files) == 2
    for _, rel_file in from_files:
        assert rel_file == rel   # .weights.h5 and legacy .h5 load the very same numbers
