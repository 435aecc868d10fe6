"""fastcnn.viz: each plot is a Figure with the expected axes, titles and labels, saves as a
PNG, and rejects bad input by naming the argument; the confusion counts match a hand count."""
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import viz
from fastcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

try:
    from matplotlib.figure import Figure
except ImportError:
    Figure = None

# Every test but the last draws; the last checks the message a user without matplotlib gets.
needs_matplotlib = pytest.mark.skipif(
    Figure is None, reason='matplotlib is not installed: fastcnn.viz is the optional extra '
                           'fastcnn[plots] (pip install "fastcnn[plots]")')


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained two epochs on 240 real 8x8 digits, with its History."""
    from fastcnn.datasets import digits

    fastcnn.utils.clear_session()
    fastcnn.set_random_seed(3)
    (x, y), (x_test, y_test) = digits.load_data()
    x = (x[:240].astype(np.float32) / digits.MAX_PIXEL)[..., None]
    y = y[:240]
    model = fastcnn.Sequential([
        Conv2D(6, 3, padding="same", activation="relu", input_shape=(8, 8, 1)),
        MaxPooling2D(2),
        Conv2D(20, 3, padding="same", activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dense(10, activation="softmax"),
    ], name="tiny")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, validation_split=0.25)
    return model, history, x, y


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def _saves_png(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# ------------------------------------------------------------------ history
@needs_matplotlib
def test_plot_history_train_and_validation_curves(trained, tmp_path):
    model, history, _, _ = trained
    fig = viz.plot_history(history)
    assert isinstance(fig, Figure)
    assert _titles(fig) == ["Training and validation loss", "Training and validation accuracy"]
    for ax, key in zip(fig.axes, ("loss", "accuracy")):
        assert ax.get_xlabel() == "Epoch" and ax.get_ylabel() == key
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["training", "validation"]
        # epochs are 1-based, the values are the History's own
        np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2])
        np.testing.assert_allclose(lines[0].get_ydata(), history.history[key])
        np.testing.assert_allclose(lines[1].get_ydata(), history.history["val_" + key])
        assert ax.get_legend() is not None
    _saves_png(fig, tmp_path, "history")


@needs_matplotlib
def test_plot_history_accepts_dict_model_and_metric_choice():
    logs = {"accuracy": [0.5, 0.7, 0.8], "loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7],
            "val_auc": [0.6, 0.7, 0.9]}
    fig = viz.plot_history(logs)
    # loss first, then fit's order; a validation-only metric still gets its subplot
    assert _titles(fig) == ["Training and validation loss", "Training accuracy",
                            "Validation auc"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 1, 1]
    fig = viz.plot_history(logs, metrics="accuracy")
    assert _titles(fig) == ["Training accuracy"]

    class FakeModel:  # model.history is a History, whose .history is the dict
        class history:
            history = logs

    assert len(viz.plot_history(FakeModel).axes) == 3


@needs_matplotlib
@pytest.mark.parametrize("bad, match", [
    ({}, "history is empty"),
    ({"loss": []}, "history is empty"),
    ({"loss": ["a", "b"]}, r"history\['loss'\]"),
    (42, "history must be a History"),
])
def test_plot_history_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        viz.plot_history(bad)


@needs_matplotlib
def test_plot_history_unknown_metric():
    with pytest.raises(ValueError, match="metrics: 'auc' is not in the history"):
        viz.plot_history({"loss": [1.0]}, metrics=["auc"])


# ------------------------------------------------------------------ filters
@needs_matplotlib
def test_plot_filters_first_conv_by_default(trained, tmp_path):
    model, _, _, _ = trained
    fig = viz.plot_filters(model)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6
    assert _titles(fig) == [str(i) for i in range(6)]
    assert "conv2d" in fig.get_suptitle() and "3x3" in fig.get_suptitle()
    # one input channel: the kernel itself in grey, scaled to [0, 1] per filter
    kernel = model.layers[0].kernel[:, :, 0, 4]
    shown = fig.axes[4].images[0].get_array()
    np.testing.assert_allclose(shown, (kernel - kernel.min()) / (kernel.max() - kernel.min()),
                               rtol=1e-6)
    _saves_png(fig, tmp_path, "filters")


@needs_matplotlib
def test_plot_filters_layer_by_index_name_or_object(trained):
    model, _, _, _ = trained
    second = model.layers[2]
    for spec in (2, second.name, second):
        fig = viz.plot_filters(model, layer=spec, max_filters=12)
        assert len(fig.axes) == 12  # 20 filters, capped at max_filters
        assert "first 12 of 20" in fig.get_suptitle()
        assert "mean over 6 input channels" in fig.get_suptitle()
    # 6 input channels: the mean over them
    mean = second.kernel[:, :, :, 0].mean(axis=2)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(),
                               (mean - mean.min()) / (mean.max() - mean.min()), rtol=1e-5)
    assert len(viz.plot_filters(second).axes) == 20  # a layer on its own


@needs_matplotlib
def test_plot_filters_rgb_kernels():
    layer = Conv2D(5, 2)
    layer.build((None, 6, 6, 3))
    fig = viz.plot_filters(layer)
    assert len(fig.axes) == 5
    rgb = fig.axes[0].images[0].get_array()
    assert rgb.shape == (2, 2, 3) and rgb.min() == 0.0 and rgb.max() == 1.0


@needs_matplotlib
def test_plot_filters_bad_input(trained):
    model, _, _, _ = trained
    no_conv = fastcnn.Sequential([Flatten(input_shape=(4, 4, 1)), Dense(2)], name="flat")
    with pytest.raises(ValueError, match="model 'flat' has no Conv2D layer"):
        viz.plot_filters(no_conv)
    with pytest.raises(ValueError, match="is a MaxPooling2D; plot_filters needs a Conv2D"):
        viz.plot_filters(model, layer=1)
    with pytest.raises(ValueError, match="index 9 is out of range"):
        viz.plot_filters(model, layer=9)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        viz.plot_filters(model, layer="nope")
    with pytest.raises(ValueError, match="max_filters must be a positive int"):
        viz.plot_filters(model, max_filters=0)
    with pytest.raises(ValueError, match="not built yet"):
        viz.plot_filters(Conv2D(2, 3))
    with pytest.raises(ValueError, match="model_or_layer must be a fastcnn model"):
        viz.plot_filters("model")


# ------------------------------------------------------------- feature maps
@needs_matplotlib
def test_plot_feature_maps_row_per_conv_and_pool_layer(trained, tmp_path):
    model, _, x, _ = trained
    image = x[7]
    before = image.copy()
    fig = viz.plot_feature_maps(model, image, max_maps=8)
    assert isinstance(fig, Figure)
    # the input, then 4 layers (conv 6 maps, pool 6, conv 20 -> 8, pool 20 -> 8)
    assert len(fig.axes) == 1 + 6 + 6 + 8 + 8
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["input", "conv2d\n8x8x6", "max_pooling2d\n4x4x6",
                      "conv2d_1\n4x4x20", "max_pooling2d_1\n2x2x20"]
    # the drawn maps are the layers' inference outputs (predict's compiled plan: equal
    # within float32 rounding)
    conv_out = model.layers[0].forward(image[None], training=False)[0][0]
    np.testing.assert_allclose(fig.axes[1 + 3].images[0].get_array(), conv_out[:, :, 3],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(image, before)  # the caller's image is untouched
    _saves_png(fig, tmp_path, "features")


@needs_matplotlib
def test_plot_feature_maps_image_shapes_and_layer_choice(trained):
    model, _, x, _ = trained
    for image in (x[0], x[:1], x[0, :, :, 0]):  # (H, W, C), (1, H, W, C), grey (H, W)
        fig = viz.plot_feature_maps(model, image, layers=["conv2d_1"], max_maps=4)
        assert len(fig.axes) == 1 + 4
    fig = viz.plot_feature_maps(model, x[0], layers=0)
    assert len(fig.axes) == 1 + 6


@needs_matplotlib
def test_plot_feature_maps_bad_input(trained):
    model, _, x, _ = trained
    with pytest.raises(ValueError, match=r"image has shape \(2, 8, 8, 1\)"):
        viz.plot_feature_maps(model, x[:2])
    with pytest.raises(ValueError, match=r"image has shape \(9, 8, 1\)"):
        viz.plot_feature_maps(model, np.zeros((9, 8, 1)))
    with pytest.raises(ValueError, match="image must be a numeric array"):
        viz.plot_feature_maps(model, np.full((8, 8, 1), "a"))
    with pytest.raises(ValueError, match="layers: layer 'flatten'.*not \\(batch, height"):
        viz.plot_feature_maps(model, x[0], layers=[model.layers[4].name])
    no_conv = fastcnn.Sequential([Flatten(input_shape=(4, 4, 1)), Dense(2)], name="flat")
    with pytest.raises(ValueError, match="model 'flat' has no Conv2D or pooling layer"):
        viz.plot_feature_maps(no_conv, np.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="max_maps must be a positive int"):
        viz.plot_feature_maps(model, x[0], max_maps=-1)


# --------------------------------------------------------- confusion matrix
Y_TRUE = np.array([0, 0, 1, 2, 2, 2, 1, 0])
Y_PRED = np.array([0, 1, 1, 2, 0, 2, 1, 0])
# by hand: row = true class, column = predicted class
HAND = np.array([[2, 1, 0],
                 [0, 2, 0],
                 [1, 0, 2]])


def _cell_texts(ax):
    return [t.get_text() for t in ax.texts]


@needs_matplotlib
def test_plot_confusion_matrix_counts_match_hand_count(tmp_path):
    fig = viz.plot_confusion_matrix(Y_TRUE, Y_PRED, class_names=["cat", "dog", "bird"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # the matrix and its colour bar
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), HAND)
    assert _cell_texts(ax) == [str(v) for v in HAND.ravel()]
    assert ax.get_xlabel() == "Predicted label" and ax.get_ylabel() == "True label"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert ax.get_title().startswith("Confusion matrix")
    assert "6/8" in ax.get_title()
    _saves_png(fig, tmp_path, "confusion")


@needs_matplotlib
def test_plot_confusion_matrix_from_probabilities_and_normalized():
    probs = np.eye(3)[Y_PRED] * 0.6 + 0.1  # argmax is Y_PRED
    fig = viz.plot_confusion_matrix(np.eye(3)[Y_TRUE], probs, normalize=True)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, HAND / HAND.sum(axis=1, keepdims=True))
    assert _cell_texts(fig.axes[0])[:3] == ["0.67", "0.33", "0.00"]


@needs_matplotlib
def test_plot_confusion_matrix_sigmoid_column_threshold():
    y_true = np.array([0, 1, 1, 0, 1])
    sigmoid = np.array([[0.2], [0.7], [0.4], [0.51], [0.9]])
    expected = np.array([[1, 1], [1, 2]])
    for y_pred in (sigmoid, sigmoid.ravel()):
        fig = viz.plot_confusion_matrix(y_true, y_pred)
        np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), expected)


@needs_matplotlib
def test_plot_confusion_matrix_on_model_predictions(trained):
    model, _, x, y = trained
    probs = model.predict(x[:60], verbose=0)
    fig = viz.plot_confusion_matrix(y[:60], probs)
    counts = fig.axes[0].images[0].get_array()
    assert counts.shape == (10, 10) and counts.sum() == 60
    assert np.trace(counts) == np.sum(np.argmax(probs, axis=1) == y[:60])


@needs_matplotlib
@pytest.mark.parametrize("y_true, y_pred, kwargs, match", [
    ([0, 1, 1], [0, 1], {}, "y_true has 3, y_pred has 2"),
    ([], [], {}, "empty"),
    ([0, 1.5], [0, 1], {}, "y_true must hold integer class labels"),
    ([0, -1], [0, 1], {}, "y_true must hold class labels >= 0"),
    ([0, 3], [0, 1], {"class_names": ["a", "b"]}, "class_names has 2 names"),
    ([0, 1], [0, 1], {"normalize": "rows"}, "normalize must be"),
    ([0, 1], np.zeros((2, 2, 2)), {}, r"y_pred must be labels \(N,\)"),
])
def test_plot_confusion_matrix_bad_input(y_true, y_pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        viz.plot_confusion_matrix(y_true, y_pred, **kwargs)


# ------------------------------------------------------------ no matplotlib
def test_missing_matplotlib_names_the_extra(monkeypatch):
    # None in sys.modules makes `import matplotlib...` raise ImportError, as if absent.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install "fastcnn\[plots\]"'):
        viz.plot_history({"loss": [1.0]})
