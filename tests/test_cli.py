"""The `fastcnn` command line: info, train, bad options, and the README/CI quick start."""
import io
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
    # The capability table: one row per op (the fused ones too), one column per available
    # backend; an op a backend reuses from another (its REUSES) shows "=other".
    for op in backends.OPS + backends.FUSED_OPS:
        row = re.search(rf"^\s+{op}\s+(.*)$", out, re.MULTILINE)
        assert row, op
        cells = []
        for n in names:
            be = backends.get(n)
            reused = be.reused_from(op)
            cells.append("-" if not be.implements(op) else f"={reused}" if reused else "x")
        assert row.group(1).split() == cells
    assert re.search(r"^\s+dense_forward\s+.*=reference", out, re.MULTILINE)
    for setting in ("os.cpu_count()", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS"):
        assert setting in out
    from fastcnn import _extensions
    if _extensions.HAVE_CYTHON:  # which build of the SIMD kernels this CPU runs
        simd = _extensions.modules["simd"]
        assert f"the {simd.isa()} build runs" in out


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


def test_a_registered_backend_that_cannot_load_gives_the_registrys_reason(capsys,
                                                                         monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "gpu-ish",
                        ("fastcnn.backends.no_such_module", "a backend that cannot load"))
    monkeypatch.delitem(backends._FAILED, "gpu-ish", raising=False)
    assert main(["train", "--backend", "gpu-ish"]) == 2
    err = capsys.readouterr().err
    assert "--backend: backend 'gpu-ish' is not available on this machine: " in err, err
    assert "No module named 'fastcnn.backends.no_such_module'" in err
    assert "(available: 'reference', " in err and "invalid choice" not in err
    monkeypatch.delitem(backends._FAILED, "gpu-ish", raising=False)


def test_backend_cuda_without_a_gpu_says_why():
    """The real case: no CUDA driver here (the simulator off)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=str(REPO))
    code = ("from fastcnn import backends\n"
            "import sys\n"
            "why = backends.unavailable().get('cuda')\n"
            "if why is None: print('cuda loads here'); sys.exit(0)\n"
            "from fastcnn.cli import main\n"
            "sys.exit(main(['train', '--backend', 'cuda']))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    if done.stdout.startswith("cuda loads here"):
        pytest.skip("a CUDA GPU (or numba-cuda's driver) is usable here")
    assert done.returncode == 2, done.stderr
    assert "--backend: backend 'cuda' is not available on this machine: " in done.stderr
    assert "invalid choice" not in done.stderr


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


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_train_shows_the_live_bar_on_a_terminal_only(tty, monkeypatch):
    out = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["train", "--epochs", "1"]) == 0
    text = out.getvalue()
    assert "Epoch 1/1" in text
    # verbose=1 on a terminal: \r updates of a bar, then the bar's final line
    assert ("\r" in text) is tty
    assert bool(re.search(r"^\s*1/46 \[", text.split("\r")[1] if tty else "")) is tty
    assert bool(re.search(r"46/46 \[=+\] - \d+s \d+[mu]?s/step - loss: ", text)) is tty
    assert bool(re.search(r"^46/46 - \d+s - loss: ", text, re.MULTILINE)) is not tty
    assert all(len(line) < 80 for line in text.split("\r")[1:-1])


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


# ---------------------------------------------------------------------------------------
# fastcnn.models, the datasets and commands of issue 4 section 7, and the error paths of
# section 9 that concern the command line.
import json

import numpy as np

from fastcnn import models
from fastcnn.cli import CLASSES_SUFFIX, blas_description

DATA_ROOT = Path(os.environ.get("FASTCNN_DATA") or REPO.parent / "shared" / "data")
HAVE_MNIST = (DATA_ROOT / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
HAVE_FASHION = (DATA_ROOT / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def _layers(model):
    # Layer names count up across models in one process; the rest of the config must match.
    return [(type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"})
            for layer in model.layers]


@pytest.mark.parametrize("name, input_shape, num_classes, output_shape, params", [
    ("tutorial", (28, 28, 1), 10, (None, 10), 320 + 13 * 13 * 32 * 10 + 10),
    # LeNet-5: 28 -> 28 -> 14 -> 10 -> 5, then 400 -> 120 -> 84 -> 10.
    ("lenet", (28, 28, 1), 10, (None, 10), 156 + 2416 + 48120 + 10164 + 850),
    ("fashion", (28, 28, 1), 10, (None, 10), 640 + 36928 + 1600 * 128 + 128 + 1290),
    ("catsdogs", (150, 150, 3), 2, (None, 1),
     896 + 18496 + 73856 + 17 * 17 * 128 * 512 + 512 + 513),
    ("digits", (8, 8, 1), 10, (None, 10), 6090),
])
def test_models_build_the_documented_architectures(name, input_shape, num_classes,
                                                   output_shape, params):
    model = models.BUILDERS[name](input_shape, num_classes)
    assert isinstance(model, fastcnn.Sequential)
    assert model.input_shape == (None, *input_shape)
    assert model.output_shape == output_shape
    assert model.count_params() == params
    assert model.loss is None  # uncompiled: the caller compiles
    assert model.layers[-1].get_config()["activation"] == ("sigmoid" if name == "catsdogs"
                                                           else "softmax")


def test_import_fastcnn_loads_every_public_submodule():
    # fastcnn.models was the one left out: fastcnn.models.lenet raised AttributeError.
    code = ("import sys, pkgutil, fastcnn\n"
            "names = [m.name for m in pkgutil.iter_modules(fastcnn.__path__)\n"
            "         if not m.name.startswith('_')]  # public ones\n"
            "print(' '.join(n for n in names if 'fastcnn.' + n not in sys.modules))\n"
            "assert callable(fastcnn.models.lenet) and 'models' in fastcnn.__all__\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    # the command line and the matplotlib plots load on demand
    assert sorted(done.stdout.split()) == ["cli", "viz"], done.stdout


def test_lenet_layers_in_order():
    kinds = [kind for kind, _ in _layers(models.lenet((28, 28, 1), 10))]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten",
                     "Dense", "Dense", "Dense"]
    convs = [cfg for kind, cfg in _layers(models.lenet((28, 28, 1), 10)) if kind == "Conv2D"]
    assert [(c["filters"], c["padding"], c["activation"]) for c in convs] == [
        (6, "same", "relu"), (16, "valid", "relu")]


def test_model_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="exactly 2 classes"):
        models.catsdogs((150, 150, 3), num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        models.tutorial((28, 28, 1), 1)
    with pytest.raises(ValueError, match="input_shape must be three positive ints"):
        models.lenet((28, 28), 10)


def test_default_model_is_models_digits_cnn():
    from fastcnn.cli import build_digits_model

    assert _layers(build_digits_model()) == _layers(models.digits_cnn())
    assert models.BUILDERS["digits"] is models.digits_cnn


def test_info_shows_numpys_blas(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    line = re.search(r"^blas \(numpy's\): (.+)$", out, re.MULTILINE)
    assert line and line.group(1) == blas_description()
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    assert line.group(1).startswith(f"{blas['name']} {blas['version']}")


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err, message):
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("fastcnn: error:")]
    assert len(errors) == 1, err
    assert message in errors[0], err
    # Nothing but warnings besides the one error line.
    assert all(line.startswith(("fastcnn: warning:", "fastcnn: error:"))
               for line in err.splitlines() if line), err


def _metric_lines(out, split="test"):
    return re.findall(rf"^{split} (?:loss|accuracy): .*$", out, re.MULTILINE)


def _digit_png(path, image):
    from PIL import Image

    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)


def test_train_save_evaluate_predict_round_trip_on_digits(tmp_path, capsys):
    model_path = tmp_path / "digits.fcnn"
    code, out, _ = _run(["train", "--epochs", "2", "--limit", "400", "--save", model_path],
                        capsys)
    assert code == 0
    assert "data: bundled 8x8 digits, 400 training / 355 test images" in out
    assert f"saved the model to {model_path}" in out
    trained = _metric_lines(out)
    assert model_path.is_file()
    sidecar = json.loads(Path(str(model_path) + CLASSES_SUFFIX).read_text())
    assert sidecar == {"class_names": [str(k) for k in range(10)], "dataset": "digits"}

    # evaluate: same test split (the sidecar's dataset), same numbers as at the end of train.
    code, out, _ = _run(["evaluate", model_path], capsys)
    assert code == 0
    assert _metric_lines(out) == trained
    assert _test_accuracy(out) > 0.5  # two epochs on 400 images already learn something

    # predict: the class of three test digits written as PNG, as the loaded model sees them.
    from fastcnn.cli import load_digits_for_training

    _, (x_test, _) = load_digits_for_training()
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}.png")
        _digit_png(paths[-1], x_test[i, ..., 0])
    code, out, err = _run(["predict", model_path, *paths], capsys)
    assert code == 0 and err == ""
    model = fastcnn.load_model(str(model_path))
    probs = model.predict(np.stack([np.round(x_test[i] * 255) / 255 for i in range(3)]))
    for path, p in zip(paths, probs):
        k = int(np.argmax(p))
        assert f"{path}: {k} (class {k}), probability {p[k]:.4f}" in out


def test_predict_without_class_names_prints_indices(tmp_path, capsys):
    model_path = tmp_path / "m.fcnn"
    assert _run(["train", "--epochs", "1", "--limit", "64", "--save", model_path], capsys)[0] == 0
    Path(str(model_path) + CLASSES_SUFFIX).unlink()
    from PIL import Image

    image = tmp_path / "x.png"
    _digit_png(image, np.eye(8))
    big_rgb = tmp_path / "big.jpg"   # converted to grayscale and resized to the model's 8x8
    Image.new("RGB", (40, 30), (255, 255, 255)).save(big_rgb)
    code, out, err = _run(["predict", model_path, image, big_rgb], capsys)
    assert code == 0
    for path in (image, big_rgb):
        assert re.search(rf"^{re.escape(str(path))}: class \d, probability [01]\.\d{{4}}$",
                         out, re.MULTILINE)
    assert err.count("classes are shown as indices") == 1


def _make_folder(root, classes, per_class=5, size=(20, 24), junk=True):
    """A tiny image folder: one plain colour per class (plus noise), PNG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        colour = np.array([(200, 30, 30), (30, 30, 200), (30, 200, 30)][k])
        for i in range(per_class):
            pixels = np.clip(colour + rng.integers(-20, 20, (*size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    if junk:
        (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def _served_labels(iterator, steps):
    return np.concatenate([iterator[i][1] for i in range(steps)]).astype(int)


def test_limit_validates_on_a_class_balanced_seeded_sample(tmp_path, capsys):
    # --limit N took the first N validation files in directory order: all cats.
    from fastcnn import cli

    root = tmp_path / "pets"
    _make_folder(root / "train", ["cats", "dogs"], per_class=2, junk=False)
    _make_folder(root / "validation", ["cats", "dogs"], per_class=8, junk=False)
    served = {}
    for seed in (0, 0, 1):
        data = cli._load_folder(root, (8, 8), 3, True, batch_size=4, limit=6, seed=seed)
        assert (data.test_steps, data.test_samples) == (2, 6)
        labels = _served_labels(data.x_test, data.test_steps)
        assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1], labels
        served.setdefault(seed, []).append(list(data.x_test._order(0)))
    assert served[0][0] == served[0][1]          # the run's seed decides the sample
    assert served[0][0] != served[1][0]
    assert "6 validation images" in data.description
    capsys.readouterr()


def test_balanced_sample_spreads_over_the_classes_their_sizes_allow():
    from fastcnn.cli import balanced_sample

    labels = np.array([0] * 10 + [1] * 10 + [2] * 1)
    picked = balanced_sample(labels, 7, seed=3)
    assert np.bincount(labels[picked], minlength=3).tolist() == [3, 3, 1]
    assert list(picked) == sorted(set(picked.tolist()))          # distinct, in order
    assert len(balanced_sample(labels, 100, seed=0)) == 21
    assert np.bincount(labels[balanced_sample(labels, 5, seed=0)]).max() == 2


def test_train_on_an_image_folder_then_evaluate_and_predict(tmp_path, capsys):
    folder = _make_folder(tmp_path / "colours", ["blue", "red"])
    model_path = tmp_path / "colours.fcnn"
    code, out, err = _run(["train", "--dataset", folder, "--model", "tutorial", "--image-size",
                           "16", "--epochs", "3", "--save", model_path], capsys)
    assert code == 0, err
    assert "2 classes (blue, red), 8 training / 2 validation images resized to 16x16 rgb" in out
    assert 'Model: "tutorial"' in out and "val_accuracy" in out
    assert "fastcnn: warning: 1 file(s)" in err and err.count("notes.txt") == 1
    trained = _metric_lines(out, "validation")
    assert len(trained) == 2
    assert json.loads(Path(str(model_path) + CLASSES_SUFFIX).read_text())["class_names"] == [
        "blue", "red"]

    code, out, _ = _run(["evaluate", model_path], capsys)  # the folder recorded by train
    assert code == 0 and _metric_lines(out, "validation") == trained

    code, out, _ = _run(["predict", model_path, folder / "red" / "0.png",
                         folder / "blue" / "0.png"], capsys)
    assert code == 0
    assert re.search(r"red/0\.png: (red \(class 1\)|blue \(class 0\)), probability", out)
    assert len(re.findall(r"\.png: (?:red|blue) \(class [01]\), probability", out)) == 2


def test_image_folder_defaults_and_train_validation_layout(tmp_path, capsys):
    # Two classes in train/ and validation/ (the cats-vs-dogs layout): model catsdogs, binary.
    root = tmp_path / "pets"
    _make_folder(root / "train", ["cats", "dogs"], per_class=3, junk=False)
    _make_folder(root / "validation", ["cats", "dogs"], per_class=2, junk=False)
    code, out, err = _run(["train", "--dataset", root, "--image-size", "32", "--epochs", "1"],
                          capsys)
    assert code == 0, err
    assert "(its train/ and validation/ folders), 2 classes (cats, dogs), 6 training / 4 " \
           "validation images resized to 32x32 rgb" in out
    assert 'Model: "catsdogs"' in out and "learning rate: 0.001" in out
    assert re.search(r"^validation accuracy: \d\.\d{4} \(\d/4\)$", out, re.MULTILINE)

    # Three classes: the default is the tutorial model; catsdogs (binary) is refused.
    three = _make_folder(tmp_path / "three", ["a", "b", "c"], junk=False)
    code, out, err = _run(["train", "--dataset", three, "--image-size", "12", "--epochs", "1"],
                          capsys)
    assert code == 0, err
    assert 'Model: "tutorial"' in out and "(None, 3)" in out
    code, out, err = _run(["train", "--dataset", three, "--model", "catsdogs", "--epochs", "1"],
                          capsys)
    assert code == 1
    _one_error_line(err, "exactly 2 classes")


@pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST files not found under {DATA_ROOT}/mnist "
                    "(set FASTCNN_DATA to the folder holding mnist/)")
def test_train_and_evaluate_on_mnist(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA", str(DATA_ROOT))
    model_path = tmp_path / "lenet.fcnn"
    code, out, err = _run(["train", "--dataset", "mnist", "--epochs", "1", "--limit", "1000",
                           "--save", model_path], capsys)
    assert code == 0, err
    assert "data: MNIST, 1000 training / 1000 test images" in out
    assert 'Model: "lenet"' in out  # the default model for mnist
    assert re.search(r"^test accuracy: (\d\.\d{4}) \(\d+/1000\)$", out, re.MULTILINE)
    code, out2, err = _run(["evaluate", model_path, "--dataset", "mnist", "--limit", "1000"],
                           capsys)
    assert code == 0, err
    assert _metric_lines(out2) == _metric_lines(out)
    accuracy = float(re.search(r"^test accuracy: (\S+)", out2, re.MULTILINE).group(1))
    assert accuracy > 0.6  # one epoch on 1,000 images: far above chance (0.1)


@pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST files not found under "
                    f"{DATA_ROOT}/fashion-mnist (set FASTCNN_DATA)")
def test_fashion_mnist_uses_its_tutorial_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA", str(DATA_ROOT))
    model_path = tmp_path / "fashion.fcnn"
    code, out, err = _run(["train", "--dataset", "fashion-mnist", "--epochs", "1", "--limit",
                           "200", "--save", model_path], capsys)
    assert code == 0, err
    assert 'Model: "fashion"' in out and "data: Fashion-MNIST, 200 training" in out
    names = json.loads(Path(str(model_path) + CLASSES_SUFFIX).read_text())["class_names"]
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"


# --- --plots
def _fake_viz(calls):
    import types

    from matplotlib.figure import Figure

    def recorder(name):
        def plot(*args, **kwargs):
            calls[name] = (args, kwargs)
            fig = Figure()
            fig.add_subplot().set_title(name)
            return fig
        return plot

    module = types.ModuleType("fastcnn.viz")
    for name in ("plot_history", "plot_filters", "plot_feature_maps", "plot_confusion_matrix"):
        setattr(module, name, recorder(name))
    return module


PLOT_FILES = ["confusion_matrix.png", "feature_maps.png", "filters.png", "history.png"]


def test_plots_are_saved_with_what_viz_needs(tmp_path, capsys, monkeypatch):
    # The CLI's wiring, checked against a recording stand-in for fastcnn.viz.
    pytest.importorskip("matplotlib", reason="--plots needs matplotlib, not installed")
    calls = {}
    fake = _fake_viz(calls)
    monkeypatch.setitem(sys.modules, "fastcnn.viz", fake)
    monkeypatch.setattr(fastcnn, "viz", fake, raising=False)
    plots = tmp_path / "plots" / "run1"   # created, parents included
    code, out, err = _run(["train", "--epochs", "2", "--limit", "100", "--plots", plots], capsys)
    assert code == 0, err
    assert sorted(p.name for p in plots.iterdir()) == PLOT_FILES
    for name in PLOT_FILES:
        assert f"saved {plots / name}" in out
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (history,), _ = calls["plot_history"]
    assert len(history.history["loss"]) == 2
    (model,), _ = calls["plot_filters"]
    assert isinstance(model, fastcnn.Sequential)
    (_, image), _ = calls["plot_feature_maps"]
    assert image.shape == (8, 8, 1)
    (y_true, y_pred), kwargs = calls["plot_confusion_matrix"]
    assert y_true.shape == y_pred.shape == (100,)
    assert kwargs == {"class_names": [str(k) for k in range(10)]}


def test_plots_with_the_real_viz(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plots needs matplotlib, not installed")
    pytest.importorskip("fastcnn.viz", reason="fastcnn/viz.py is not in this checkout")
    folder = _make_folder(tmp_path / "colours", ["blue", "red"], junk=False)
    plots = tmp_path / "plots"
    code, out, err = _run(["train", "--dataset", folder, "--model", "tutorial", "--image-size",
                           "12", "--epochs", "2", "--plots", plots], capsys)
    assert code == 0, err
    assert sorted(p.name for p in plots.iterdir()) == PLOT_FILES
    for name in PLOT_FILES:
        assert (plots / name).stat().st_size > 1000


# --- user errors: one line, exit 2 (usage) or 1 (while running), never a traceback
@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "no-such-dataset"], "unknown dataset 'no-such-dataset'"),
    (["train", "--model", "resnet"], "--model: invalid choice: 'resnet'"),
    (["train", "--limit", "0"], "--limit: expected a positive integer, got 0"),
    (["train", "--image-size", "x"], "--image-size: expected a positive integer, got 'x'"),
    (["evaluate"], "the following arguments are required: FILE"),
    (["predict", "m.fcnn"], "the following arguments are required: IMAGE"),
    (["evaluate", "m.fcnn", "--dataset", "nowhere"], "unknown dataset 'nowhere'"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2
    _one_error_line(err, message)


def test_dataset_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "images.zip"
    path.write_bytes(b"PK")
    code, _, err = _run(["train", "--dataset", path], capsys)
    assert code == 2
    _one_error_line(err, "is a file, not a folder of images")


def test_runtime_errors_exit_1_with_one_line(tmp_path, capsys, monkeypatch):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    no_classes = tmp_path / "flat"
    no_classes.mkdir()
    (no_classes / "a.png").write_bytes(b"")
    no_images = tmp_path / "empty"
    (no_images / "cats").mkdir(parents=True)
    (no_images / "cats" / "readme.txt").write_text("no images here")
    model_path = tmp_path / "m.fcnn"
    assert _run(["train", "--epochs", "1", "--limit", "32", "--save", model_path], capsys)[0] == 0
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path / "no-data-here"))
    cases = [
        (["evaluate", tmp_path / "missing.fcnn"], "no such file"),
        (["evaluate", text_file], "not a fastcnn model file"),
        (["predict", text_file, text_file], "not a fastcnn model file"),
        (["predict", model_path, tmp_path / "missing.png"], "no such image file"),
        (["predict", model_path, text_file], "cannot read"),
        (["train", "--dataset", no_classes], "has no class sub-folders"),
        (["train", "--dataset", no_images], "no images found"),
        (["train", "--save", tmp_path / "no-dir" / "m.fcnn"], "does not exist"),
        (["train", "--save", tmp_path], "is a folder; name a file"),
        (["train", "--plots", text_file], "is a file, not a folder"),
        (["train", "--image-size", "8"], "--image-size applies to image folders only"),
        (["train", "--dataset", "mnist"], "FASTCNN_DATA"),
        # A digits model (8x8x1, 10 classes) against a folder of 2 classes.
        (["evaluate", model_path, "--dataset", _make_folder(tmp_path / "two", ["a", "b"])],
         "has 10 outputs but"),
        # lenet's valid 5x5 conv cannot run on 8x8 digits after one pooling (4x4).
        (["train", "--model", "lenet"], "model 'lenet' does not fit"),
    ]
    for argv, message in cases:
        code, out, err = _run(argv, capsys)
        assert code == 1, (argv, out, err)
        _one_error_line(err, message)
        assert "Epoch 1/" not in out, argv  # failed before training, not after
