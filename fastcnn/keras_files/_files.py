"""Reading and writing Keras's model and weight files (see the package doc)."""
from __future__ import annotations

import datetime
import io
import json
import math
import struct
import warnings
import zipfile

import numpy as np

from .. import __version__, _device, _limits, saving
from . import _config
from ._h5 import H5Reader, Window, is_hdf5, require_h5py

CONFIG_NAME = "config.json"
METADATA_NAME = "metadata.json"
WEIGHTS_NAME = "model.weights.h5"
KERAS_VERSION = "3.15.1"   # the Keras whose layout these files follow
_MAX_CONFIG_BYTES = 64 * 2**20
_BUDGET_SLACK = 2**20
_MAX_DEFLATE_RATIO = 1032

ModelFileError = saving.ModelFileError


# ------------------------------------------------------------------ routing
def _suffix(filepath):
    try:
        return saving._fspath(filepath).lower()
    except ValueError:
        return ""


def is_keras_save_path(filepath):
    """``model.save(path)`` writes a Keras file for these suffixes."""
    return _suffix(filepath).endswith((".keras", ".h5", ".hdf5"))


def sniff(filepath):
    """``'hdf5'`` or ``'keras'`` for a file Keras's readers take, else None (fastcnn's own
    reader then takes it, and reports what is wrong with it).

    By content first (an HDF5 signature; a zip holding config.json and no fastcnn.json),
    so that a fastcnn file of any name keeps loading; a file whose content is neither
    (truncated, damaged) is Keras's by its suffix (.keras, .h5, .hdf5)."""
    try:
        path = saving._fspath(filepath)
        with saving._open_regular(path) as f:
            head = f.read(8)
            if is_hdf5(head):
                return "hdf5"
            if head.startswith(b"PK"):
                try:
                    f.seek(0)
                    with zipfile.ZipFile(f) as zf:
                        names = set(zf.namelist())
                except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                    names = set()
                if saving.META_NAME in names:
                    return None
                if CONFIG_NAME in names:
                    return "keras"
            # An HDF5 file with a user block keeps its signature at 512, 1024, ...
            size = f.seek(0, 2)
            offset = 512
            while offset + 8 <= size:
                f.seek(offset)
                if is_hdf5(f.read(8)):
                    return "hdf5"
                offset *= 2
    except Exception:   # noqa: BLE001 - a missing file, a FIFO...: fastcnn's reader says so
        return None
    lower = path.lower()
    if lower.endswith(".keras"):
        return "keras"
    if lower.endswith((".h5", ".hdf5")):
        return "hdf5"
    return None


# ------------------------------------------------------------------ opening
class _Source:
    """A Keras file opened for reading: a .keras archive (its config and its weights'
    HDF5 member) or an HDF5 file."""

    def __init__(self, path):
        require_h5py(f"reading the Keras file {path!r}")
        self.path = path
        self.archive = None
        self.config = None
        self.h5 = None
        self._file = None
        self._member = None

    def error(self, message):
        return ModelFileError(f"{self.path!r}: {message}")

    @classmethod
    def open(cls, path):
        self = cls(path)
        try:
            kind = sniff(path)
            if kind == "keras":
                self._open_archive()
            else:
                self._file = saving._open_regular(path)
                size = self._file.seek(0, 2)
                self.h5 = H5Reader(self._file, size, self.error, "the file")
        except BaseException:
            self.close()
            raise
        return self

    def _open_archive(self):
        try:
            self.archive = saving._Archive(self.path)
        except ModelFileError as exc:
            detail = str(exc).split(": ", 1)[-1]
            if "not a readable zip archive: " in detail:
                detail = detail.split("not a readable zip archive: ", 1)[1].rstrip(")")
            raise self.error(f"is not a readable Keras archive (a .keras file is a zip "
                             f"archive; here: {detail})") from None
        raw = self._read_member(CONFIG_NAME, _MAX_CONFIG_BYTES)
        try:
            self.config = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self.error(f"{CONFIG_NAME} is not valid JSON ({exc})") from None
        if not isinstance(self.config, dict):
            raise self.error(f"{CONFIG_NAME} is not a JSON object")
        info = self.archive._info(WEIGHTS_NAME, f"{WEIGHTS_NAME} (the weights)")
        if info.flag_bits & 0x1:
            raise self.error(f"{WEIGHTS_NAME} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            f = self.archive.file
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise self.error(f"{WEIGHTS_NAME}: its local zip header is damaged")
            n, m = struct.unpack("<HH", header[26:30])
            start = info.header_offset + 30 + n + m
            if start + info.compress_size > self.archive.size:
                raise self.error(f"{WEIGHTS_NAME} runs past the end of the archive "
                                 f"(truncated file?)")
            self._member = Window(f, start, info.file_size)
        else:
            try:
                self._member = self.archive.zf.open(info)
            except saving._READ_ERRORS as exc:
                raise self.error(f"{WEIGHTS_NAME} cannot be read ({exc})") from None
        self.h5 = H5Reader(self._member, info.file_size, self.error,
                           f"{WEIGHTS_NAME} in the archive")

    def _read_member(self, name, cap):
        info = self.archive._info(name, name)
        if info.file_size > cap:
            raise self.error(f"{name} declares {info.file_size} bytes, over the limit of {cap}")
        with self.archive._member(info, min(info.file_size, cap), name) as f:
            return f.read()

    def close(self):
        for closer in (self.h5, self._member, self.archive, self._file):
            if closer is not None:
                try:
                    closer.close()
                except Exception:   # noqa: BLE001 - closing what may be half open
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _held_bytes(h5):
    """What the file's float datasets can really hold (a dataset's declared size, but no
    more than its stored bytes allow), so that building the architecture is bounded by
    the file and not by what its config claims."""
    h5py = require_h5py("reading Keras's HDF5 files")
    total, stack, seen = 0, [h5.file], 0
    while stack:
        group = stack.pop()
        for name in h5.keys(group, "the weights"):
            seen += 1
            if seen > 1_000_000:
                raise h5.error("the weights file holds over 1,000,000 objects")
            try:
                link = group.get(name, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    continue
                node = group[name]
                if isinstance(node, h5py.Group):
                    stack.append(node)
                    continue
                if not isinstance(node, h5py.Dataset) or node.dtype.kind != "f":
                    continue
                declared = math.prod(node.shape or ()) * node.dtype.itemsize
                stored = node.id.get_storage_size()
                ratio = _MAX_DEFLATE_RATIO if node.compression else 1
            except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
                raise h5.error(f"the weights cannot be listed ({exc})") from None
            total += min(declared, stored * ratio)
    return total


# ------------------------------------------------------------- weight plans
def _keras_class(layer):
    from ..model import Model, Sequential
    if isinstance(layer, Sequential):
        return "Sequential"
    if isinstance(layer, Model):
        if layer._graph is None:
            raise ValueError(f"layer {layer.name!r} is a subclassed model "
                             f"({type(layer).__name__}); Keras's files hold Sequential and "
                             f"Functional models only")
        return "Functional"
    return type(layer).__name__


def _is_model(layer):
    from ..model import Model
    return isinstance(layer, Model)


def _keras3_vars(layer):
    """A layer's weights in Keras 3's saved order: the trainable-at-creation ones, then the
    others (``_trainable_variables + _non_trainable_variables``)."""
    ws, ts = layer._weights, layer._weight_trainable
    return [w for w, t in zip(ws, ts) if t] + [w for w, t in zip(ws, ts) if not t]


def _keras3_var_names(layer):
    vs, ts = layer._variables, layer._weight_trainable
    return [v.name for v, t in zip(vs, ts) if t] + [v.name for v, t in zip(vs, ts) if not t]


def _legacy_vars(layer):
    """Keras 2's order of an .h5 file: trainable weights, then the others (a frozen
    layer's are all 'others'); a nested model's, over all its layers."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _config_orders(model, config, orders=None):
    """``{id(model): [layers in the order of the file's config]}`` for ``model`` and its
    nested models (the order Keras gave their weight groups when it wrote the file)."""
    orders = {} if orders is None else orders
    entries = config.get("config", {}).get("layers", []) if isinstance(config, dict) else []
    by_name = {layer.name: layer for layer in model.layers}
    if _is_sequential(model):
        by_name.pop(None, None)
    order = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        layer = by_name.get(entry.get("name", cfg.get("name")))
        if layer is None:
            continue   # a Sequential's InputLayer
        order.append(layer)
        if _is_model(layer):
            _config_orders(layer, entry, orders)
    if len(order) == len(model.layers):
        orders[id(model)] = order
    return orders


def _keras3_layer_paths(model, prefix="", orders=None):
    """``[(layer, 'layers/<snake>[_k]'), ...]`` for every leaf layer, nested models
    recursed into (Keras's ``_save_container_state`` naming)."""
    out, used = [], {}
    orders = orders or {}
    layers = orders.get(id(model)) or list(model.layers)
    for layer in layers:
        base = _config.snake_case(_keras_class(layer))
        if base in used:
            used[base] += 1
            key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            key = base
        path = f"{prefix}layers/{key}"
        if _is_model(layer):
            out.append((layer, path))
            out.extend(_keras3_layer_paths(layer, path + "/", orders))
        else:
            out.append((layer, path))
    return out


class _Plan:
    """Weights to assign: every dataset checked (shape, dtype) before any is read, every
    array read before any is assigned."""

    def __init__(self, source, model):
        self.source, self.model = source, model
        self.items = []   # (weight array, dataset, what)

    def add(self, weight, dset, what):
        self.items.append((weight, dset, what))

    def run(self):
        values = [self.source.h5.read(d, w.shape, w.dtype, what) for w, d, what in self.items]
        for (w, _, _), v in zip(self.items, values):
            _device.assign(w, v)


def _mismatch(source, model, message, skip_mismatch, what="layer"):
    text = (f"cannot load weights from {source.path!r} into model {model.name!r}: "
            f"{message}")
    if skip_mismatch:
        warnings.warn(f"skipping {what} ({text})", stacklevel=4)
        return None
    return ValueError(text)


def _plan_keras3(source, model, skip_mismatch, strict=False, orders=None):
    h5 = source.h5
    plan = _Plan(source, model)
    legacy_213 = h5.group(None, "_layer_checkpoint_dependencies", "the weights") is not None
    for layer, path in _keras3_layer_paths(model, orders=orders):
        if _is_model(layer):
            continue
        expected = _keras3_vars(layer)
        names = _keras3_var_names(layer)
        label = f"layer {layer.name!r} ({type(layer).__name__})"
        group = h5.group(None, path + "/vars", f"{label} at {path}/vars")
        if group is None and legacy_213:
            # tf.keras 2.13's .keras files: Keras 3 reads "layers" as this (H5IOStore.get)
            path = path.replace("layers", "_layer_checkpoint_dependencies")
            group = h5.group(None, path + "/vars", f"{label} at {path}/vars")
        keys = h5.keys(group, f"{path}/vars") if group is not None else []
        if sorted(keys, key=lambda k: (len(k), k)) != [str(i) for i in range(len(keys))]:
            raise source.error(f"{path}/vars holds {sorted(keys)}; Keras names a layer's "
                               f"variables 0, 1, ...")
        if len(keys) != len(expected):
            err = _mismatch(source, model, f"{label} has {len(expected)} variables "
                            f"({', '.join(names) or 'none'}), the file has {len(keys)} at "
                            f"{path}/vars" + ("" if group is not None else
                                              " (the group is missing)"), skip_mismatch)
            if err is None:
                continue
            raise (source.error(str(err)) if strict else err)
        checked = []
        for i, w in enumerate(expected):
            what = f"{label} variable {names[i]!r} ({path}/vars/{i})"
            dset = h5.dataset(group, str(i), what)
            if tuple(dset.shape) != tuple(w.shape):
                err = _mismatch(source, model, f"{what} has shape {tuple(w.shape)} in the "
                                f"model but {tuple(dset.shape)} in the file", skip_mismatch)
                if err is None:
                    checked = None
                    break
                raise (source.error(str(err)) if strict else err)
            checked.append((w, dset, what))
        for item in checked or []:
            plan.add(*item)
    return plan


def _legacy_root(source):
    h5 = source.h5
    root = h5.file
    names = h5.attr_names(root, "layer_names", "the file")
    if names is None:
        group = h5.group(None, "model_weights", "model_weights")
        if group is not None:
            root = group
            names = h5.attr_names(root, "layer_names", "model_weights")
    if names is None:
        raise source.error("is not a Keras weights file: it has neither Keras 3's layers/ "
                           "groups nor a legacy layer_names attribute")
    return root, names


def _legacy_file_layers(source, root, names):
    h5 = source.h5
    out = []
    for name in names:
        group = h5.group(root, name, f"layer group {name!r}")
        if group is None:
            raise source.error(f"layer_names lists {name!r}, but the file has no such group")
        weight_names = h5.attr_names(group, "weight_names", f"layer group {name!r}") or []
        out.append((name, group, weight_names))
    return out


def _legacy_add(source, model, plan, layer, group, weight_names, file_name, skip_mismatch,
                strict):
    h5 = source.h5
    expected = _legacy_vars(layer)
    label = f"layer {layer.name!r} ({type(layer).__name__})"
    if len(weight_names) != len(expected):
        err = _mismatch(source, model, f"{label} has {len(expected)} weights, layer "
                        f"{file_name!r} in the file has {len(weight_names)} "
                        f"({weight_names})", skip_mismatch and not strict)
        if err is None:
            return
        raise (source.error(str(err)) if strict else err)
    for w, wname in zip(expected, weight_names):
        what = f"{label} weight {wname!r} (file layer {file_name!r})"
        dset = h5.dataset(group, wname, what)
        if dset is None:
            raise source.error(f"{what}: weight_names lists it, but no such dataset exists")
        if tuple(dset.shape) != tuple(w.shape):
            err = _mismatch(source, model, f"{what} has shape {tuple(w.shape)} in the model "
                            f"but {tuple(dset.shape)} in the file", skip_mismatch and not strict,
                            what="weight")
            if err is None:
                continue
            raise (source.error(str(err)) if strict else err)
        plan.add(w, dset, what)


def _plan_legacy(source, model, by_name, skip_mismatch, strict=False):
    root, names = _legacy_root(source)
    file_layers = _legacy_file_layers(source, root, names)
    plan = _Plan(source, model)
    model_layers = list(model.layers)
    if by_name:
        index = {}
        for layer in model_layers:
            index.setdefault(layer.name, []).append(layer)
        found = set()
        for file_name, group, weight_names in file_layers:
            for layer in index.get(file_name, []):
                found.add(id(layer))
                _legacy_add(source, model, plan, layer, group, weight_names, file_name,
                            skip_mismatch, strict)
        if strict:
            missing = [l.name for l in model_layers if _legacy_vars(l) and id(l) not in found]
            if missing:
                raise source.error(f"the weights of layer(s) {missing} are missing")
        return plan
    with_weights = [(n, g, w) for n, g, w in file_layers if w]
    layers = [l for l in model_layers if _legacy_vars(l)]
    if len(with_weights) != len(layers):
        n = min(len(with_weights), len(layers))
        first = (f"model layer {layers[n].name!r} ({type(layers[n]).__name__}) has no "
                 f"counterpart in the file" if len(layers) > n else
                 f"file layer {with_weights[n][0]!r} has no counterpart in the model")
        raise ValueError(
            f"cannot load weights from {source.path!r} into model {model.name!r}: the file "
            f"has {len(with_weights)} layers with weights, the model {len(layers)} (Keras "
            f"matches them in order; by_name=True matches names); first difference: {first}")
    for layer, (file_name, group, weight_names) in zip(layers, with_weights):
        _legacy_add(source, model, plan, layer, group, weight_names, file_name,
                    skip_mismatch, strict)
    return plan


# --------------------------------------------------------------------- load
def _build(source, model_config, custom_objects):
    registry = saving.layer_registry(custom_objects)
    reader = _config.Reader(registry, custom_objects, source.error)
    if not isinstance(model_config, dict) or model_config.get("class_name") not in (
            "Sequential", "Functional", "Model"):
        raise source.error(f"the model config is not a Sequential or Functional model "
                           f"(class_name {model_config.get('class_name') if isinstance(model_config, dict) else model_config!r}); "
                           f"fastcnn reads those two kinds")
    fast_config = reader.model(model_config)
    held = _held_bytes(source.h5)
    with _limits.budget(held + _BUDGET_SLACK, source.error) as limit:
        try:
            return saving.model_from_config(fast_config, custom_objects)
        except ValueError as exc:
            if limit.error is not None:
                raise limit.error from None
            if isinstance(exc, ModelFileError):
                raise
            raise source.error(f"the architecture cannot be rebuilt: {exc}") from None


def _plain(value, what):
    """A serialized Keras object -> ``{"class_name", "config"}`` (Keras's own only)."""
    if isinstance(value, dict) and "class_name" in value:
        module = value.get("module")
        if module is not None and not _config._KERAS_MODULE.match(str(module)):
            raise ValueError(f"{what} {value.get('class_name')!r} is a custom object "
                             f"(module {module!r})")
        return {"class_name": value["class_name"], "config": value.get("config") or {}}
    return value


def _restore_compile(model, compile_config, path):
    """Keras's compile config (optimizer, loss, metrics, loss_weights) -> model.compile.
    What fastcnn cannot rebuild leaves the model uncompiled, with a warning (as Keras
    does); the optimizer's state (Keras's optimizer/vars) is not read."""
    from .. import losses, optimizers
    try:
        if not isinstance(compile_config, dict):
            raise ValueError(f"the compile config is not a JSON object ({compile_config!r})")
        opt = compile_config.get("optimizer", compile_config.get("optimizer_config"))
        if opt is None:
            return
        optimizer = optimizers.get(_plain(opt, "optimizer"))

        def loss_of(value):
            value = _plain(value, "loss")
            if isinstance(value, dict) and "class_name" in value:
                return saving._deserialize_object(value, saving._classes_of(losses), "loss")
            if isinstance(value, dict):
                return {k: loss_of(v) for k, v in value.items()}
            if isinstance(value, list):
                return [loss_of(v) for v in value]
            return value

        def metric_of(value):
            value = _plain(value, "metric")
            if isinstance(value, dict) and "class_name" in value:
                return saving._deserialize_object(value, saving._metric_classes(), "metric")
            if isinstance(value, dict):
                return {k: metric_of(v) for k, v in value.items()}
            if isinstance(value, list):
                return [metric_of(v) for v in value]
            return value

        kwargs = {}
        if compile_config.get("loss_weights") is not None:
            kwargs["loss_weights"] = compile_config["loss_weights"]
        model.compile(optimizer=optimizer, loss=loss_of(compile_config.get("loss")),
                      metrics=metric_of(compile_config.get("metrics")), **kwargs)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        warnings.warn(f"{path!r}: Keras's compile config was not restored ({exc}); the "
                      f"model is returned uncompiled: call model.compile(...) before fit",
                      stacklevel=3)


def load_model(filepath, compile=True, custom_objects=None):
    """A fastcnn model from a Keras 3 ``.keras`` archive or a legacy full-model ``.h5``
    file, weights included; with ``compile`` Keras's compile config (optimizer, loss,
    metrics) is restored where fastcnn has them (else a warning); the optimizer's state
    is not read."""
    saving.layer_registry(custom_objects)
    path = saving._fspath(filepath)
    with _Source.open(path) as source:
        if source.config is not None:
            model = _build(source, source.config, custom_objects)
            _plan_keras3(source, model, skip_mismatch=False, strict=True,
                         orders=_config_orders(model, source.config)).run()
            if compile and source.config.get("compile_config"):
                _restore_compile(model, source.config["compile_config"], path)
            return model
        text = source.h5.attr_text(source.h5.file, "model_config", "the file")
        if text is None:
            raise source.error("holds no model_config attribute: it is a weights file "
                               "(build the model and call model.load_weights on it)")
        try:
            model_config = json.loads(text)
        except ValueError as exc:
            raise source.error(f"model_config is not valid JSON ({exc})") from None
        model = _build(source, model_config, custom_objects)
        _plan_legacy(source, model, by_name=True, skip_mismatch=False, strict=True).run()
        training = source.h5.attr_text(source.h5.file, "training_config", "the file") \
            if compile else None
        if training:
            try:
                training = json.loads(training)
            except ValueError as exc:
                raise source.error(f"training_config is not valid JSON ({exc})") from None
            _restore_compile(model, training, path)
        return model


def load_weights(model, filepath, skip_mismatch=False, by_name=False):
    """Sets ``model``'s weights from a Keras ``.weights.h5``, legacy ``.h5`` or ``.keras``
    file (Keras's matching: see the package doc); nothing is assigned on error."""
    path = saving._fspath(filepath)
    with _Source.open(path) as source:
        if source.config is not None or source.h5.group(None, "layers", "layers") is not None \
                or source.h5.group(None, "_layer_checkpoint_dependencies", "layers") is not None \
                or (source.h5.group(None, "vars", "vars") is not None
                    and source.h5.attr_names(source.h5.file, "layer_names", "the file") is None):
            if by_name:
                raise ValueError(f"by_name=True applies to Keras's legacy .h5 weight files; "
                                 f"{path!r} is a Keras 3 weights file (matched by position "
                                 f"as Keras does)")
            plan = _plan_keras3(source, model, skip_mismatch)
        else:
            plan = _plan_legacy(source, model, by_name, skip_mismatch)
        plan.run()


# -------------------------------------------------------------------- write
def _input_shape_of(layer):
    shape = layer._input_shape
    if shape is None:
        return None
    if layer.multiple_inputs:
        return [_config._shape(s) for s in shape]
    return _config._shape(shape)


def _layer_entry(layer):
    kind = _keras_class(layer)
    if kind in ("Sequential", "Functional"):
        entry = _config.keras_model_config(layer, _layer_entry)
        entry["compile_config"] = None
        return entry
    config = _config.keras_layer_config(layer, layer.get_config())
    entry = {"module": "keras.layers", "class_name": kind, "config": config,
             "registered_name": None}
    shape = _input_shape_of(layer)
    if shape is not None and layer.weights:
        entry["build_config"] = {"input_shape": shape}
    return entry


def keras_config(model):
    """config.json's content for ``model`` (ValueError naming a layer Keras cannot hold)."""
    _check_model(model)
    config = _config.keras_model_config(model, _layer_entry)
    config["compile_config"] = _keras_compile_config(model)
    return config


def _keras_object(obj, module):
    config = saving._jsonable(obj.get_config(), f"{type(obj).__name__} config")
    lr = config.get("learning_rate") if isinstance(config, dict) else None
    if isinstance(lr, dict) and "class_name" in lr:   # a learning-rate schedule
        config["learning_rate"] = {"module": "keras.optimizers.schedules",
                                   "class_name": lr["class_name"],
                                   "config": lr.get("config") or {}, "registered_name": None}
    return {"module": module, "class_name": type(obj).__name__, "config": config,
            "registered_name": None}


def _keras_compile_config(model):
    """Keras's compile_config for a compiled fastcnn model (its optimizer, loss and
    metrics; Keras rebuilds them when it loads the file), None if not compiled. What
    Keras could not rebuild (a plain Python loss function) is left out with a warning."""
    if not getattr(model, "compiled", False):
        return None
    from .. import losses

    def loss_of(value):
        if value is None or isinstance(value, str):
            return value
        if saving._classes_of(losses).get(type(value).__name__) is type(value):
            return _keras_object(value, "keras.losses")
        if isinstance(value, dict):
            return {k: loss_of(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [loss_of(v) for v in value]
        raise ValueError(f"the loss {value!r} is not one of Keras's")

    def metric_of(value):
        if value is None or isinstance(value, str):
            return value
        if saving._metric_classes().get(type(value).__name__) is type(value):
            return _keras_object(value, "keras.metrics")
        if isinstance(value, dict):
            return {k: metric_of(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [metric_of(v) for v in value]
        raise ValueError(f"the metric {value!r} is not one of Keras's")

    try:
        return {"optimizer": _keras_object(model.optimizer, "keras.optimizers"),
                "loss": loss_of(model.loss),
                "loss_weights": saving._jsonable(model._loss_weights, "loss_weights"),
                "metrics": metric_of(model._metric_specs) or None,
                "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1,
                "jit_compile": False}
    except (ValueError, TypeError, AttributeError) as exc:
        warnings.warn(f"model {model.name!r}: its compile config is not written to the Keras "
                      f"file ({exc}); Keras will load the model uncompiled", stacklevel=4)
        return None


def _check_model(model):
    from ..model import Model
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fastcnn.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built, so it has no weights to save")
    _keras_class(model)


def _h5_bytes(fill):
    h5py = require_h5py("writing Keras's HDF5 files")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def _fill_keras3(f, model):
    f.create_group("vars").attrs["name"] = model.name
    for layer, path in _keras3_layer_paths(model):
        group = f.create_group(path).create_group("vars")
        group.attrs["name"] = layer.name
        if _is_model(layer):
            continue
        for i, w in enumerate(_keras3_vars(layer)):
            group[str(i)] = np.asarray(_device.to_host(w))


def _fill_legacy_weights(group, model):
    layers = list(model.layers)
    group.attrs["layer_names"] = [layer.name.encode("utf8") for layer in layers]
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = KERAS_VERSION.encode("utf8")
    for layer in sorted(layers, key=lambda l: l.name):
        layer_group = group.create_group(layer.name)
        names = _legacy_weight_names(layer)
        layer_group.attrs["weight_names"] = [n.encode("utf8") for n in names] \
            if names else np.array([], dtype=np.float64)
        for name, w in zip(names, _legacy_vars(layer)):
            layer_group.create_dataset(name, data=np.asarray(_device.to_host(w)))
    top = group.create_group("top_level_model_weights")
    top.attrs["weight_names"] = np.array([], dtype=np.float64)


def _is_sequential(model):
    from ..model import Sequential
    return isinstance(model, Sequential)


def _legacy_weight_names(layer, prefix=None):
    """Unique dataset paths for a layer's legacy-ordered weights (``<layer>/<name>``)."""
    if _is_model(layer):
        names_by_id = {}
        for inner in layer._unique_layers():
            for name, w in zip(_legacy_weight_names(inner, layer.name), _legacy_vars(inner)):
                names_by_id[id(w)] = name
        return [names_by_id[id(w)] for w in _legacy_vars(layer)]
    by_id = {id(w): v.name for w, v in zip(layer._weights, layer._variables)}
    out, used = [], set()
    for w in _legacy_vars(layer):
        base = "/".join(p for p in (prefix, layer.name, by_id.get(id(w), "variable")) if p)
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        out.append(name)
    return out


def _write(path, overwrite, write):
    saving._atomic_write_with(path, write, overwrite)


def save_model(model, path, overwrite=True):
    """Writes ``model`` as a Keras 3 ``.keras`` archive or, for ``.h5``/``.hdf5``, a legacy
    full-model HDF5 file (architecture and weights; no compile config). Everything is
    checked and built in memory first: a layer Keras cannot represent raises ValueError
    naming it, and nothing is written."""
    _check_model(model)
    config = keras_config(model)
    config_bytes = json.dumps(config).encode("utf-8")
    if _suffix(path).endswith(".keras"):
        weights = _h5_bytes(lambda f: _fill_keras3(f, model))
        metadata = json.dumps({"keras_version": KERAS_VERSION,
                               "date_saved": datetime.datetime.now().strftime(
                                   "%Y-%m-%d@%H:%M:%S"),
                               "fastcnn_version": __version__}).encode("utf-8")

        def write(f):
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(METADATA_NAME, metadata)
                zf.writestr(CONFIG_NAME, config_bytes)
                zf.writestr(WEIGHTS_NAME, weights)
    else:
        def fill(f):
            f.attrs["backend"] = "tensorflow"
            f.attrs["keras_version"] = KERAS_VERSION
            f.attrs["model_config"] = config_bytes
            _fill_legacy_weights(f.create_group("model_weights"), model)
        data = _h5_bytes(fill)

        def write(f):
            f.write(data)
    _write(path, overwrite, write)


def save_weights(model, path, overwrite=True):
    """Writes ``model``'s weights as Keras 3's ``.weights.h5`` or, for another ``.h5`` /
    ``.hdf5`` name, Keras's legacy weights layout (``layer_names``/``weight_names``)."""
    _check_model(model)
    if _suffix(path).endswith(".weights.h5"):
        for layer, _ in _keras3_layer_paths(model):   # a layer Keras cannot name: say so
            _keras_class(layer)
        data = _h5_bytes(lambda f: _fill_keras3(f, model))
    else:
        data = _h5_bytes(lambda f: _fill_legacy_weights(f, model))

    def write(f):
        f.write(data)
    _write(path, overwrite, write)


__all__ = ["load_model", "load_weights", "save_model", "save_weights", "keras_config",
           "sniff", "is_keras_save_path"]
