"""Pictures of a model and its training (matplotlib, the optional extra ``fastcnn[plots]``).

* :func:`plot_history`: training and validation curves from ``model.fit``'s History;
* :func:`plot_filters`: the kernels of a Conv2D layer;
* :func:`plot_feature_maps`: the activations of one image through the conv/pool layers;
* :func:`plot_confusion_matrix`: true against predicted classes, counts in the cells.

Each returns a :class:`matplotlib.figure.Figure` (save it with ``fig.savefig("x.png")``,
or show it in a notebook cell). The figures are built with ``Figure`` and an Agg canvas,
never with pyplot: nothing opens a window, nothing needs a display, and no global
matplotlib state (current figure, backend) is touched, so these functions are safe on a
headless server and inside ``fastcnn train --plots DIR``.

matplotlib is imported on the first call, not with fastcnn: without it every function
raises ImportError saying how to install it.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from .layers.base import Layer, format_shape
from .layers.conv import Conv2D
from .layers.pooling import _Pooling2D

_INSTALL_HINT = 'pip install "fastcnn[plots]"'

# Confusion matrices larger than this get colour only: the numbers would not fit the cells.
_MAX_ANNOTATED_CLASSES = 30


def _new_figure(figsize):
    """A Figure on its own Agg canvas (no pyplot, so no window and no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"fastcnn.viz needs matplotlib, which is not installed ({exc}); install the "
            f"plotting extra: {_INSTALL_HINT}"
        ) from None
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ------------------------------------------------------------------ history
def _history_dict(history) -> dict:
    # A History, a model whose .history is a History, or the plain dict.
    for _ in range(3):
        if isinstance(history, Mapping):
            return dict(history)
        if not hasattr(history, "history"):
            break
        history = history.history
    raise ValueError(
        f"history must be a History (model.fit's return value) or its .history dict, "
        f"got {type(history).__name__}"
    )


def _curve(values, key):
    try:
        curve = np.asarray(
            [np.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        curve = None
    if curve is None or curve.ndim != 1:
        raise ValueError(
            f"history[{key!r}] must be a list of numbers (one per epoch), got {values!r}")
    return curve


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def plot_history(history, metrics=None):
    """Training and validation curves, one subplot per metric, against the epoch (1-based).

    ``history`` is what ``model.fit`` returns (or its ``.history`` dict). ``metrics`` picks
    the subplots (a name or a list, e.g. ``["loss", "accuracy"]``); by default every
    metric that has a training curve, loss first. A metric's ``val_`` curve, when the
    history holds one, is drawn on the same axes (as in the Keras tutorials).
    """
    logs = _history_dict(history)
    curves = {key: _curve(values, key) for key, values in logs.items()
              if not isinstance(values, (str, bytes))}
    curves = {key: c for key, c in curves.items() if c.size}
    if not curves:
        raise ValueError(
            f"history is empty (no epoch recorded; keys: {sorted(logs)}); train the model "
            f"with fit() first")
    if metrics is None:
        names = [k for k in curves if not k.startswith("val_")]
        # A metric recorded only for validation still gets its subplot.
        names += [k[4:] for k in curves if k.startswith("val_") and k[4:] not in curves]
        names.sort(key=lambda k: k != "loss")  # stable: loss first, the rest in fit's order
    else:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        if not names:
            raise ValueError("metrics must name at least one metric, got an empty list")
        for name in names:
            if not isinstance(name, str) or (name not in curves and f"val_{name}" not in curves):
                raise ValueError(
                    f"metrics: {name!r} is not in the history; it holds {sorted(curves)}")

    n = len(names)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = _new_figure((5.0 * ncols, 3.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes, names):
        drawn = []
        for key, label, style in ((name, "training", "o-"),
                                  (f"val_{name}", "validation", "s--")):
            if key in curves:
                y = curves[key]
                ax.plot(np.arange(1, y.size + 1), y, style, label=label, markersize=4)
                drawn.append(label)
        ax.set_title(f"{' and '.join(drawn).capitalize()} {_pretty(name)}")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(_pretty(name))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()
    return fig


# ------------------------------------------------------------------ filters
def _model_layers(model, argument):
    layers = getattr(model, "layers", None)
    if not isinstance(layers, list):
        raise ValueError(
            f"{argument} must be a fastcnn model (Sequential) or layer, got "
            f"{type(model).__name__}")
    return layers


def _find_layer(layers, spec, argument, model_name):
    if isinstance(spec, Layer):
        if any(spec is layer for layer in layers):
            return spec
        raise ValueError(f"{argument}: layer {spec.name!r} is not in model {model_name!r}")
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        if -len(layers) <= spec < len(layers):
            return layers[int(spec)]
        raise ValueError(
            f"{argument}: index {spec} is out of range; model {model_name!r} has "
            f"{len(layers)} layers")
    if isinstance(spec, str):
        for layer in layers:
            if layer.name == spec:
                return layer
        raise ValueError(
            f"{argument}: no layer named {spec!r} in model {model_name!r}; its layers are "
            f"{[layer.name for layer in layers]}")
    raise ValueError(
        f"{argument} must be a layer index, a layer name or a layer, got {spec!r}")


def _unit_range(a):
    """``a`` scaled to [0, 1] (a constant array becomes 0.5: nothing to contrast)."""
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 0.0 or not math.isfinite(hi - lo):
        return np.full(a.shape, 0.5)
    return (a.astype(np.float64) - lo) / (hi - lo)


def _check_positive(value, argument):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


def plot_filters(model_or_layer, layer=None, max_filters=64):
    """The kernels of a Conv2D layer, one small image per filter, in a grid.

    ``model_or_layer`` is a model (the first Conv2D by default; ``layer`` picks another by
    index, name or the layer itself) or a Conv2D layer. A filter over 1 or 3 input
    channels is shown as it is (grey or RGB); over any other number, as the mean over the
    input channels in grey. Each filter is scaled to its own min..max (light = large
    weights), so the images show the pattern each filter looks for, not their magnitudes.
    """
    max_filters = _check_positive(max_filters, "max_filters")
    from .model import Model
    if isinstance(model_or_layer, Layer) and not isinstance(model_or_layer, Model):
        if layer is not None and layer is not model_or_layer:
            raise ValueError(
                "layer must be None when model_or_layer is already a layer, got "
                f"layer={layer!r}")
        conv = model_or_layer
    else:
        layers = _model_layers(model_or_layer, "model_or_layer")
        name = getattr(model_or_layer, "name", "model")
        if layer is None:
            conv = next((lay for lay in layers if isinstance(lay, Conv2D)), None)
            if conv is None:
                raise ValueError(
                    f"model_or_layer: model {name!r} has no Conv2D layer (its layers: "
                    f"{[type(lay).__name__ for lay in layers]})")
        else:
            conv = _find_layer(layers, layer, "layer", name)
    if not isinstance(conv, Conv2D):
        raise ValueError(
            f"layer {conv.name!r} is a {type(conv).__name__}; plot_filters needs a Conv2D "
            f"layer")
    if conv.kernel is None:
        raise ValueError(
            f"layer {conv.name!r} is not built yet, so it has no kernel; build or train the "
            f"model first")

    kernel = np.asarray(conv.kernel)  # (kh, kw, C_in, filters)
    kh, kw, c_in, filters = kernel.shape
    n = min(filters, max_filters)
    ncols = min(n, 8)
    nrows = math.ceil(n / ncols)
    cell = 1.1
    fig = _new_figure((max(cell * ncols, 4.0), cell * nrows + 0.7))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    for f, ax in enumerate(axes[:n]):
        w = kernel[:, :, :, f]
        if c_in == 3:
            ax.imshow(_unit_range(w), interpolation="nearest")
        else:
            grey = w[:, :, 0] if c_in == 1 else w.mean(axis=2)
            ax.imshow(_unit_range(grey), cmap="gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(f), fontsize=8, pad=2)
    shown = f"all {filters}" if n == filters else f"first {n} of {filters}"
    how = {1: "", 3: ", RGB"}.get(c_in, f", mean over {c_in} input channels")
    fig.suptitle(f"Filters of {conv.name!r}: {shown}, {kh}x{kw}{how} "
                 f"(each scaled to its own range)", fontsize=10)
    return fig


# ------------------------------------------------------------- feature maps
def _check_image(image, input_shape):
    """``image`` as a batch of one matching ``input_shape`` (batch first), or ValueError."""
    x = np.asarray(image)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"image must be a numeric array, got dtype {x.dtype}")
    expected = tuple(input_shape[1:])
    if len(expected) == 3 and x.ndim == 2 and expected[2] == 1:
        x = x[:, :, np.newaxis]  # a grey (H, W) image for a one-channel model
    if x.ndim == len(expected):
        x = x[np.newaxis]
    if x.ndim != len(expected) + 1 or x.shape[0] != 1 or x.shape[1:] != expected:
        raise ValueError(
            f"image has shape {np.shape(image)}; the model expects one image of shape "
            f"{expected} (or {(1,) + expected})")
    return x


def plot_feature_maps(model, image, layers=None, max_maps=16):
    """The activations of one image through the model, a row per layer.

    The first row is the input image; then one row per layer in ``layers`` (indices,
    names or layers; by default every Conv2D and pooling layer), showing its first
    ``max_maps`` channels. The model runs in inference mode (Dropout off,
    BatchNormalization on its moving statistics). Each map is coloured by its own range
    (viridis: yellow = strongest); a map that is constant (a ReLU that never fires) is flat.
    """
    max_maps = _check_positive(max_maps, "max_maps")
    all_layers = _model_layers(model, "model")
    name = getattr(model, "name", "model")
    if not getattr(model, "built", False):
        raise ValueError(
            f"model {name!r} is not built yet; build or train it before plotting its "
            f"feature maps")
    x = _check_image(image, model.input_shape)
    x = np.ascontiguousarray(x, dtype=np.dtype(model.dtype))

    if layers is None:
        chosen = [lay for lay in all_layers if isinstance(lay, (Conv2D, _Pooling2D))]
        if not chosen:
            raise ValueError(
                f"model: model {name!r} has no Conv2D or pooling layer; pass layers=[...] "
                f"to pick layers with image-shaped outputs")
    else:
        specs = [layers] if isinstance(layers, (str, Layer, numbers.Integral)) else list(layers)
        if not specs:
            raise ValueError("layers must name at least one layer, got an empty list")
        chosen = [_find_layer(all_layers, spec, "layers", name) for spec in specs]
    for lay in chosen:
        if len(lay.output_shape) != 4:
            raise ValueError(
                f"layers: layer {lay.name!r} ({type(lay).__name__}) has output shape "
                f"{format_shape(lay.output_shape)}, not (batch, height, width, channels); "
                f"only image-shaped activations can be drawn")

    # The Keras tutorial's way: a model from the input to the chosen layers' outputs.
    from .model import Model
    probe = Model(model.input, [lay.output for lay in chosen])
    values = probe.predict(x, verbose=0)
    outputs = {id(lay): v[0] for lay, v in zip(chosen, values)}

    ncols = min(max_maps, max(lay.output_shape[-1] for lay in chosen))
    nrows = len(chosen) + 1
    cell = min(1.0, 14.0 / ncols)
    fig = _new_figure((max(cell * ncols + 1.2, 4.0), cell * nrows + 0.8))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    img = np.asarray(image, dtype=np.float64).reshape(model.input_shape[1:])
    ax = grid[0, 0]
    if img.ndim == 3 and img.shape[-1] == 3:
        ax.imshow(_unit_range(img), interpolation="nearest")
        ax.set_ylabel("input", rotation=0, ha="right", va="center", fontsize=8)
    elif img.ndim == 3:
        ax.imshow(img.mean(axis=-1), cmap="gray", interpolation="nearest")
        ax.set_ylabel("input", rotation=0, ha="right", va="center", fontsize=8)
    else:
        ax.remove()  # not an image (a Reshape layer makes it one later): nothing to draw
    for ax in grid[0, 1:]:
        ax.remove()
    titled = set()
    for row, lay in enumerate(chosen, start=1):
        maps = outputs[id(lay)]
        k = min(maps.shape[-1], max_maps)
        for c in range(k):
            ax = grid[row, c]
            ax.imshow(maps[:, :, c], cmap="viridis", interpolation="nearest")
            if c not in titled:  # channel numbers, once per column
                titled.add(c)
                ax.set_title(str(c), fontsize=7, pad=2)
        for ax in grid[row, k:]:
            ax.remove()
        h, w, channels = maps.shape
        grid[row, 0].set_ylabel(f"{lay.name}\n{h}x{w}x{channels}", rotation=0, ha="right",
                                va="center", fontsize=8)
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Feature maps of one image through {name!r} "
                 f"(first {ncols} channels per layer, each map scaled to its own range)",
                 fontsize=10)
    return fig


# --------------------------------------------------------- confusion matrix
def _as_labels(y, argument, threshold_1d):
    """Integer class labels from labels, one-hot rows or probabilities (argmax/threshold)."""
    a = np.asarray(y)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{argument} must be numeric labels or probabilities, got dtype "
                         f"{a.dtype}")
    if a.ndim == 2 and a.shape[1] == 1:
        if np.issubdtype(a.dtype, np.floating) and not np.all(a == np.round(a)):
            return (a[:, 0] > 0.5).astype(np.int64)  # one sigmoid column
        a = a[:, 0]
    elif a.ndim == 2:
        return np.argmax(a, axis=1)
    if a.ndim != 1:
        raise ValueError(
            f"{argument} must be labels (N,) or probabilities (N, classes), got shape "
            f"{a.shape}")
    if np.issubdtype(a.dtype, np.floating) and not np.all(a == np.round(a)):
        if threshold_1d and np.all((a >= 0.0) & (a <= 1.0)):
            return (a > 0.5).astype(np.int64)  # sigmoid outputs, flattened
        raise ValueError(f"{argument} must hold integer class labels, got non-integer "
                         f"values such as {a[a != np.round(a)][0]!r}")
    if a.size and a.min() < 0:
        raise ValueError(f"{argument} must hold class labels >= 0, got {a.min()!r}")
    return a.astype(np.int64)


def _confusion_counts(y_true, y_pred, num_classes):
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def plot_confusion_matrix(y_true, y_pred, class_names=None, normalize=False):
    """True classes (rows) against predicted classes (columns), each cell annotated.

    ``y_true``: labels (N,) or one-hot rows (N, classes). ``y_pred``: labels, or
    ``model.predict`` output: probabilities (N, classes) take the argmax; one sigmoid
    column (N, 1), or (N,) probabilities, is thresholded at 0.5 (> 0.5 is class 1).
    ``normalize``: False (counts), True or 'true' (each row sums to 1: the fraction of
    each true class), 'pred' (columns sum to 1) or 'all'.
    """
    if normalize is True:
        normalize = "true"
    if normalize not in (False, None, "true", "pred", "all"):
        raise ValueError(
            f"normalize must be False, True, 'true', 'pred' or 'all', got {normalize!r}")
    t = _as_labels(y_true, "y_true", threshold_1d=False)
    p = _as_labels(y_pred, "y_pred", threshold_1d=True)
    if len(t) != len(p):
        raise ValueError(
            f"y_true and y_pred must have the same number of samples: y_true has {len(t)}, "
            f"y_pred has {len(p)}")
    if len(t) == 0:
        raise ValueError("y_true and y_pred are empty: nothing to count")
    width = np.asarray(y_pred).shape[1] if np.ndim(y_pred) == 2 else 0
    num_classes = max(int(t.max()) + 1, int(p.max()) + 1, width if width > 1 else 0)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) < num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names, but the labels reach class "
                f"{num_classes - 1} (expected at least {num_classes} names)")
        num_classes = len(class_names)
    else:
        class_names = [str(c) for c in range(num_classes)]

    counts = _confusion_counts(t, p, num_classes)
    if normalize:
        axis = {"true": 1, "pred": 0, "all": None}[normalize]
        totals = counts.sum(axis=axis, keepdims=axis is not None)
        # An empty row/column (a class never seen) stays 0 rather than 0/0 = nan.
        values = np.divide(counts, totals, out=np.zeros(counts.shape),
                           where=np.asarray(totals) > 0)
    else:
        values = counts

    side = min(max(4.5, 0.55 * num_classes + 2.0), 16.0)
    fig = _new_figure((side + 1.0, side))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", interpolation="nearest",
                      vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if num_classes <= _MAX_ANNOTATED_CLASSES:
        top = float(values.max()) or 1.0
        size = 9 if num_classes <= 12 else 7
        for i in range(num_classes):
            for j in range(num_classes):
                v = values[i, j]
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if v > top / 2 else "black")
    ticks = np.arange(num_classes)
    # Tilt the column names only where they would run into each other.
    long_names = max(len(c) for c in class_names) * num_classes > 6.0 * side
    ax.set_xticks(ticks, class_names, rotation=45 if long_names else 0,
                  ha="right" if long_names else "center",
                  rotation_mode="anchor")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    correct = int(np.trace(counts))
    how = {"true": " (rows sum to 1)", "pred": " (columns sum to 1)",
           "all": " (fractions of all samples)"}.get(normalize or "", "")
    ax.set_title(f"Confusion matrix{how}\naccuracy {correct / len(t):.4f} "
                 f"({correct}/{len(t)})")
    return fig
