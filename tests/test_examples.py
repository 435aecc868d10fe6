"""Short versions of the tutorials in examples/: each must still show learning.

The full runs and their accuracies are recorded in examples/README.md; these cut the
data so the file stays well under a minute on 2 cores, while keeping the models, the
optimizers and the data pipelines the scripts use. They need the real data sets:
$FASTCNN_DATA, else ../shared/data next to the repository (what .ci/run provides).
"""
import importlib.util
import math
import os
import re

import pytest

import fastcnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


def _data_root():
    env = os.environ.get("FASTCNN_DATA")
    if env:
        return env
    return os.path.normpath(os.path.join(REPO, os.pardir, "shared", "data"))


DATA = _data_root()


def _need(sub):
    path = os.path.join(DATA, sub)
    if not os.path.isdir(path):
        pytest.skip(f"{sub} data not found at {path!r}: set FASTCNN_DATA to the folder "
                    f"holding mnist/, fashion-mnist/ and cats-vs-dogs/ to run the examples")


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _data_env_and_backend(monkeypatch):
    """Points the scripts at the data; restores the global backend they set."""
    monkeypatch.setenv("FASTCNN_DATA", DATA)
    before = fastcnn.get_backend()
    yield
    fastcnn.set_backend(before)


EPOCH_LINE = re.compile(r"^\d+/\d+ - .* - loss: [\d.]+ - accuracy: [\d.]+ - "
                        r"val_loss: [\d.]+ - val_accuracy: [\d.]+$", re.M)


def test_mnist_lenet_learns_from_3000_images(capsys):
    _need("mnist")
    result = _load_example("mnist_lenet").main(
        ["--epochs", "2", "--limit", "3000", "--test-limit", "1000", "--batch-size", "16",
         "--seed", "0"])
    out = capsys.readouterr().out
    assert len(EPOCH_LINE.findall(out)) == 2, out      # verbose=2: one line per epoch
    assert "test accuracy:" in out and "wall time:" in out
    assert result["epochs"] == 2
    # Chance is 10%; LeNet-5 reaches ~93% here (seed 0) and >99% on the full run.
    assert result["test_accuracy"] > 0.90, result


def test_fashion_cnn_learns_from_3000_images(capsys):
    _need("fashion-mnist")
    result = _load_example("fashion_mnist_cnn").main(
        ["--epochs", "2", "--limit", "3000", "--test-limit", "1000", "--seed", "0"])
    out = capsys.readouterr().out
    assert len(EPOCH_LINE.findall(out)) == 2, out
    assert "test accuracy:" in out and "wall time:" in out
    # Chance is 10%; ~79% here (seed 0).
    assert result["test_accuracy"] > 0.70, result
    history = result["history"]
    assert history["loss"][1] < history["loss"][0], history


def test_cats_vs_dogs_runs_one_short_epoch(capsys):
    """No accuracy promise for 3 batches of a 19M-parameter model: it runs, end to end,
    through the augmenting directory iterator, and the loss stays finite."""
    _need("cats-vs-dogs")
    result = _load_example("cats_vs_dogs").main(
        ["--epochs", "1", "--limit", "3", "--seed", "0"])
    out = capsys.readouterr().out
    assert "Found 2000 images belonging to 2 classes." in out, out
    assert "Found 1000 images belonging to 2 classes." in out, out
    assert len(EPOCH_LINE.findall(out)) == 1, out
    assert result["epochs"] == 1
    assert math.isfinite(result["loss"]), result
    assert 0.0 <= result["val_accuracy"] <= 1.0


def test_time_limit_stops_after_the_epoch_it_runs_out(capsys):
    _need("mnist")
    result = _load_example("mnist_lenet").main(
        ["--epochs", "5", "--limit", "256", "--test-limit", "64", "--max-minutes", "0"])
    out = capsys.readouterr().out
    assert result["epochs"] == 1, result
    assert "--max-minutes 0.0 reached after epoch 1: stopping" in out, out


def test_op_level_mnist_learns_from_2000_images(capsys):
    """fastcnn.nn + a dict of Variables + GradientTape, as TensorFlow's Deep MNIST."""
    _need("mnist")
    result = _load_example("mnist_op_level").main(
        ["--epochs", "1", "--limit", "2000", "--test-limit", "500", "--seed", "0"])
    out = capsys.readouterr().out
    assert "epoch 1/1 - loss:" in out and "test accuracy:" in out, out
    # Chance is 10%; about 73% after these 32 steps (seed 0), 99.07% on the full run.
    assert result["test_accuracy"] > 0.5, result


def test_fashion_resnet_learns_from_2048_images(capsys):
    """The Functional ResNet (residual Adds, BatchNormalization, global pooling) trains."""
    _need("fashion-mnist")
    result = _load_example("fashion_mnist_resnet").main(
        ["--epochs", "2", "--limit", "2048", "--test-limit", "500", "--seed", "0",
         "--batch-size", "64"])
    out = capsys.readouterr().out
    assert len(EPOCH_LINE.findall(out)) == 2, out
    history = result["history"]
    assert history["loss"][1] < history["loss"][0], history
    assert history["accuracy"][1] > 0.4, history


def test_transfer_learning_runs_from_random_weights_and_says_so(capsys):
    """The InceptionV3 tutorial (frozen base cut at 'mixed7'), 2 batches of 4: without
    --weights it says the base is random; the parameter counts are the tutorial's."""
    _need("cats-vs-dogs")
    module = _load_example("transfer_learning")
    result = module.main(["--epochs", "1", "--limit", "2", "--batch-size", "4", "--seed", "0"])
    out = capsys.readouterr().out
    assert "RANDOM initial weights" in out and "[random base]" in out, out
    assert "47,512,481 total, 38,537,217 trainable, 8,975,264 frozen" in out, out
    assert re.search(r"^2/2 - .* - loss: [\d.]+ - accuracy: [\d.e+-]+ - "
                     r"val_loss: [\d.]+ - val_accuracy: [\d.e+-]+$", out, re.M), out
    assert result["epochs"] == 1 and not result["pretrained"]
    assert math.isfinite(result["loss"]), result
    with pytest.raises(SystemExit, match="no such file"):
        module.main(["--weights", os.path.join(DATA, "no_such_weights.h5")])
