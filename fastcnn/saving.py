"""Saving and loading models (Sequential and Functional): ``model.save(path)`` and ``fastcnn.load_model(path)``.

One file, at exactly the path the user names (no extension added or required): a zip
archive (the layout of ``np.savez``, written with :mod:`zipfile`) holding

* ``fastcnn.json``: the format name and version, the fastcnn version, the architecture (each
  layer's class name and ``get_config()``), the compile config (loss, metrics), the
  optimizer's config and ``iterations``, and an index of the arrays below;
* ``weights/<layer>/<k>.npy``: every weight of every layer (``layer.weights`` order);
* ``optimizer/<slot>/<k>.npy``: the optimizer's slot arrays (momentum, Adam's m and v...),
  one per variable it updates.

Weights are plain NumPy arrays, so a file written under one backend loads under any other,
and a float64 model comes back as float64.

Why it is safe to load a file from elsewhere:

* nothing in the file is executed: arrays are read with ``allow_pickle=False`` (an object
  array is refused before any unpickling), layers, losses, metrics, optimizers and
  initializers are looked up by class name in allow-lists of fastcnn's own classes (plus
  the layers a user registers with :func:`register_layer` or passes as ``custom_objects``);
* everything is checked (format and version, JSON structure, array shapes and dtypes
  against the rebuilt architecture, declared sizes before reading) before the model is
  returned: a truncated, corrupted or foreign file raises :class:`ModelFileError` naming the
  file and the problem, never a half-built model;
* nothing is allocated for a size the file only claims: only a regular file is opened (a
  FIFO or a link to /dev/zero is refused, the open cannot block), two members of one name
  are refused, every member is read in bounded pieces with a cap on what it yields (a
  deflate bomb declaring a few bytes stops there), every ``.npy`` header must match its
  member's size before its array is allocated, and the architecture is built under a
  budget (:mod:`fastcnn._limits`): its weights may take no more than the weight arrays the
  file really holds, so a few kilobytes declaring ``Dense(2**27)`` are refused at once.

Why a crash mid-save cannot destroy the previous file: the archive is written to a
temporary file in the target's folder, flushed and fsync'ed, then renamed over the target
with :func:`os.replace` (atomic on POSIX and Windows); any error removes the temporary file
and names the path being saved (a full disk too). A process killed mid-save cannot remove
it: the next save of the same path removes every such leftover that no running save holds
(each holds a lock on its own), so they never accumulate.

Under :mod:`fastcnn.distributed` (several MPI processes, one model everywhere) only rank 0
writes: ``save_model``/``save_weights`` return at once on the other processes, without
touching the file system (it may not even be shared). A process that must read the file
right after it was saved waits with ``fastcnn.distributed.barrier()`` after the save.
Loading is the same on every process.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import tempfile
import threading
import zipfile
import zlib

try:
    import fcntl
except ImportError:   # Windows: no advisory locks (an open file cannot be deleted)
    fcntl = None

import numpy as np

from . import __version__, _device, distributed, losses, metrics as metrics_module, optimizers
from . import _limits
from .layers.base import Layer
from .layers.core import Input, InputLayer
from .model import Model, Sequential

FORMAT_NAME = "fastcnn"
FORMAT_VERSION = 1
META_NAME = "fastcnn.json"

# A foreign file could declare a gigantic JSON or array; nothing is read beyond these.
_MAX_META_BYTES = 64 * 2**20
_MAX_NPY_HEADER = 65536
_CHUNK = 2**20               # the most read (and decompressed) from a member at once
_MAX_DEFLATE_RATIO = 1032    # deflate cannot expand its input more than about 1032:1
_BUDGET_SLACK = 2**20        # weights load_model may build beyond the file's own arrays

__all__ = [
    "ModelFileError", "save_model", "load_model", "save_weights", "load_weights",
    "register_layer", "layer_registry", "model_to_config", "model_from_config",
]


class ModelFileError(ValueError):
    """A file that is not a (readable, consistent) fastcnn model or weights file."""


# What a constructor may raise for a config value of the wrong kind or range (a JSON list
# where a number belongs, say): all mean "this config does not describe a valid object".
_CONFIG_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError,
                  OverflowError)


# ---------------------------------------------------------------- registries
_CUSTOM_LAYERS: dict[str, type] = {}


def register_layer(cls):
    """Allows ``load_model`` to rebuild layers of class ``cls`` (usable as a decorator).

    fastcnn's own layers (every public Layer subclass defined in ``fastcnn.layers``) are
    known without this; a layer class of your own must be registered (or passed to
    ``load_model(..., custom_objects={...})``). Its ``get_config()`` must return JSON-able
    values that ``cls.from_config`` (default: ``cls(**config)``) accepts.
    """
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ValueError(f"register_layer expects a fastcnn.layers.Layer subclass, got {cls!r}")
    known = layer_registry().get(cls.__name__)
    if known is not None and known is not cls:
        raise ValueError(
            f"a different layer class is already registered as {cls.__name__!r} "
            f"({known.__module__}.{known.__qualname__}); class names must be unique")
    _CUSTOM_LAYERS[cls.__name__] = cls
    return cls


def _builtin_layers() -> dict:
    # Discovered rather than listed, so that a new layer module in fastcnn.layers needs no
    # edit here; only classes defined inside fastcnn.layers qualify (the allow-list).
    found, stack = {}, list(Layer.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        in_package = cls.__module__ == "fastcnn.layers" or \
            cls.__module__.startswith("fastcnn.layers.")
        # A base class marked _base_class (e.g. KernelLayer) is no layer of its own.
        if in_package and not cls.__name__.startswith("_") and \
                not cls.__dict__.get("_base_class", False):
            other = found.setdefault(cls.__name__, cls)
            if other is not cls and other.__qualname__ != cls.__qualname__:
                raise RuntimeError(
                    f"two fastcnn layer classes share the name {cls.__name__!r}: "
                    f"{other.__module__} and {cls.__module__}")
    return found


def layer_registry(custom_objects=None) -> dict:
    """Class name -> layer class, for every class ``load_model`` may instantiate."""
    registry = {**_builtin_layers(), **_CUSTOM_LAYERS}
    for name, cls in (custom_objects or {}).items():
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise ValueError(
                f"custom_objects[{name!r}] must be a fastcnn.layers.Layer subclass, got {cls!r}")
        registry[name] = cls
    return registry


def _classes_of(module) -> dict:
    # The classes a module's names resolve to (its public KNOWN list): an allow-list
    # that follows the module, with no private table duplicated here.
    out = {}
    for name in module.KNOWN:
        try:
            obj = module.get(name)
        except ValueError:  # e.g. a metric alias that needs a loss to resolve
            continue
        out[type(obj).__name__] = type(obj)
    return out


def _metric_classes() -> dict:
    out = _classes_of(metrics_module)
    for loss_name in losses.KNOWN:  # 'accuracy' resolves to a different class per loss
        cls = type(metrics_module.get("accuracy", losses.get(loss_name)))
        out[cls.__name__] = cls
    return out


# --------------------------------------------------------------------- config
def _jsonable(value, what):
    def default(obj):
        if isinstance(obj, (np.integer, np.bool_)):
            return obj.item()
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.dtype):
            return obj.name
        raise TypeError(f"{type(obj).__name__} {obj!r}")

    try:
        return json.loads(json.dumps(value, default=default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} cannot be saved: it holds a value JSON cannot store ({exc})") \
            from None


def _serialize_object(obj, allowed, what):
    name = type(obj).__name__
    if allowed.get(name) is not type(obj):
        raise ValueError(
            f"{what} {obj!r} cannot be saved: only fastcnn's own classes ({sorted(allowed)}) "
            f"can be rebuilt by load_model; use save_weights instead")
    return {"class_name": name, "config": _jsonable(obj.get_config(), f"{what} {name}")}


def _layer_entry(layer, i, registry):
    """``{"class_name", "config"}`` of one layer (a nested model: its own model config)."""
    if isinstance(layer, Model):
        inner = model_to_config(layer)
        return {"class_name": inner["class_name"], "config": inner["config"]}
    cls = type(layer)
    if registry.get(cls.__name__) is not cls:
        raise ValueError(
            f"layer {i} {layer.name!r} of class {cls.__module__}.{cls.__qualname__} is not "
            f"a registered layer class, so load_model could not rebuild it; register it "
            f"with fastcnn.saving.register_layer({cls.__name__})")
    config = _jsonable(layer.get_config(), f"layer {layer.name!r} ({cls.__name__}) config")
    # Fail now, not when the file is loaded: the config must rebuild the layer (an
    # unbuilt layer costs no weights; its name is given, so no automatic name is used).
    try:
        cls.from_config(_jsonable(config, "config"))
    except _CONFIG_ERRORS as exc:
        raise ValueError(
            f"layer {i} {layer.name!r} ({cls.__name__}) cannot be saved: its get_config() "
            f"does not rebuild it through from_config ({type(exc).__name__}: {exc})") from None
    return {"class_name": cls.__name__, "config": config}


def model_to_config(model) -> dict:
    """``{"class_name": "Sequential" | "Functional", "config": {...}}``: the architecture,
    JSON-able.

    A Functional config lists the layers (each once, nested models as their own configs)
    and the calls in topological order: ``nodes``, each ``{"layer": name, "inputs":
    [[layer, call, output], ...]}`` where ``call`` counts that layer's earlier calls in this
    model (a shared layer is called more than once) and ``output`` picks one of its outputs.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fastcnn.Model, got {type(model).__name__}")
    registry = layer_registry()
    if isinstance(model, Sequential):
        layers = [_layer_entry(layer, i, registry) for i, layer in enumerate(model.layers)]
        spec = model._input_spec
        return {"class_name": "Sequential",
                "config": {"name": model.name,
                           "input_shape": None if spec is None else list(spec),
                           "dtype": model.dtype,
                           "layers": layers}}
    if model._graph is None:
        raise ValueError(
            f"model {model.name!r} is a subclassed model ({type(model).__name__}): its "
            f"architecture is Python code, which a model file does not hold; save its weights "
            f"with model.save_weights(path) and rebuild the model in code before "
            f"load_weights, or build it with the Functional API")
    nodes, ins, outs = model._graph
    layers = model.layers
    entries = [dict(_layer_entry(layer, i, registry), name=layer.name)
               for i, layer in enumerate(layers)]
    calls, ref = {}, {}
    for t in ins:
        ref[id(t)] = [t.node.layer.name, 0, 0]
        calls[id(t.node.layer)] = 1
    node_entries = []
    for node in nodes:
        k = calls.get(id(node.layer), 0)
        calls[id(node.layer)] = k + 1
        node_entries.append({"layer": node.layer.name,
                             "inputs": [ref[id(t)] for t in node.inputs]})
        for j, t in enumerate(node.outputs):
            ref[id(t)] = [node.layer.name, k, j]
    in_kind, in_keys = model._input_kind
    out_kind, out_keys = model._output_kind
    return {"class_name": "Functional",
            "config": {"name": model.name, "layers": entries, "nodes": node_entries,
                       "input_layers": [ref[id(t)] for t in ins],
                       "output_layers": [ref[id(t)] for t in outs],
                       "input_structure": [in_kind, in_keys],
                       "output_structure": [out_kind, out_keys]}}


def _layer_from_entry(entry, i, registry, custom_objects):
    entry = _require_dict(entry, f"layer {i}")
    class_name = entry.get("class_name")
    if class_name in ("Sequential", "Functional"):
        return model_from_config({"class_name": class_name, "config": entry.get("config")},
                                 custom_objects)
    cls = registry.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(
            f"layer {i}: class {class_name!r} is not a known layer class (known: "
            f"{sorted(registry)}); a custom layer needs register_layer or custom_objects")
    layer_config = _require_dict(entry.get("config"), f"layer {i} ({class_name}) config")
    try:
        return cls.from_config(layer_config)
    except _CONFIG_ERRORS as exc:
        raise ValueError(f"layer {i} ({class_name}) cannot be rebuilt from its config: "
                         f"{exc}") from None


def model_from_config(config, custom_objects=None):
    """A new model (a Sequential built when the config knows its input shape, or a
    Functional model); ValueError if the config is bad."""
    config = _require_dict(config, "model config")
    class_name = config.get("class_name")
    if class_name not in ("Sequential", "Functional"):
        raise ValueError(f"model class_name must be 'Sequential' or 'Functional', got "
                         f"{class_name!r}")
    body = _require_dict(config.get("config"), "model config['config']")
    layer_entries = body.get("layers")
    if not isinstance(layer_entries, list):
        raise ValueError(f"model config has no list of layers (got {layer_entries!r})")
    name = body.get("name")
    registry = layer_registry(custom_objects)
    if class_name == "Functional":
        return _functional_from_config(body, layer_entries, registry, custom_objects)
    input_shape = body.get("input_shape")
    model = Sequential(name=name)
    if input_shape is not None:
        if not isinstance(input_shape, list) or len(input_shape) < 2 or input_shape[0] is not None:
            raise ValueError(f"input_shape must be [null, d1, ...], got {input_shape!r}")
        model.add(Input(shape=tuple(input_shape[1:]), dtype=body.get("dtype")))
    for i, entry in enumerate(layer_entries):
        layer = _layer_from_entry(entry, i, registry, custom_objects)
        try:
            model.add(layer)
        except _CONFIG_ERRORS as exc:
            raise ValueError(f"layer {i} ({type(layer).__name__}) cannot be rebuilt from its "
                             f"config: {exc}") from None
    return model


def _functional_from_config(body, layer_entries, registry, custom_objects):
    layers = {}
    for i, entry in enumerate(layer_entries):
        layer = _layer_from_entry(entry, i, registry, custom_objects)
        key = entry.get("name", getattr(layer, "name", None))
        if key in layers:
            raise ValueError(f"two layers are named {key!r}")
        layers[key] = layer
    tensors, calls = {}, {}

    def tensor(ref, what):
        if not (isinstance(ref, list) and len(ref) == 3 and isinstance(ref[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in ref[1:])):
            raise ValueError(f"{what} must be [layer name, call, output], got {ref!r}")
        got = tensors.get(tuple(ref))
        if got is None:
            raise ValueError(f"{what} {ref!r} names no tensor computed before it")
        return got

    for name_, layer in layers.items():
        if isinstance(layer, InputLayer):
            tensors[(name_, 0, 0)] = layer.output
            calls[name_] = 1
    nodes = body.get("nodes")
    if not isinstance(nodes, list):
        raise ValueError(f"a Functional config needs a list of nodes, got {nodes!r}")
    for i, node in enumerate(nodes):
        node = _require_dict(node, f"node {i}")
        lname = node.get("layer")
        if lname not in layers:
            raise ValueError(f"node {i} calls layer {lname!r}, which the config does not list")
        layer = layers[lname]
        refs = node.get("inputs")
        if not isinstance(refs, list) or not refs:
            raise ValueError(f"node {i} ({lname}) needs a list of inputs, got {refs!r}")
        args = [tensor(r, f"node {i} ({lname}) input") for r in refs]
        arg = args if (layer.multiple_inputs or len(args) > 1) else args[0]
        try:
            out = layer(arg)
        except _CONFIG_ERRORS as exc:
            raise ValueError(f"node {i} ({lname}) cannot be rebuilt: {exc}") from None
        k = calls.get(lname, 0)
        calls[lname] = k + 1
        leaves = list(out.values()) if isinstance(out, dict) else \
            list(out) if isinstance(out, (list, tuple)) else [out]
        for j, t in enumerate(leaves):
            tensors[(lname, k, j)] = t
    ins = [tensor(r, "input_layers entry") for r in body.get("input_layers") or []]
    outs = [tensor(r, "output_layers entry") for r in body.get("output_layers") or []]
    if not ins or not outs:
        raise ValueError("a Functional config needs input_layers and output_layers")

    def shape(leaves, structure):
        kind, keys = (structure or ["list", None]) if isinstance(structure, list) \
            else ("list", None)
        if kind == "single" and len(leaves) == 1:
            return leaves[0]
        if kind == "dict" and isinstance(keys, list) and len(keys) == len(leaves):
            return dict(zip(keys, leaves))
        return leaves

    return Model(shape(ins, body.get("input_structure")),
                 shape(outs, body.get("output_structure")), name=body.get("name"))


def _require_dict(value, what):
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _compile_config(model):
    if not model.compiled:
        return None
    metric_specs = []
    for spec in model._metric_specs:
        metric_specs.append(spec if isinstance(spec, str)
                            else _serialize_object(spec, _metric_classes(), "metric"))
    return {"loss": _serialize_object(model.loss, _classes_of(losses), "loss"),
            "metrics": metric_specs}


def _optimizer_entries(model, include_state):
    """(JSON entry, [(archive name, array)]) for the model's optimizer."""
    opt = model.optimizer
    entry = _serialize_object(opt, _classes_of(optimizers), "optimizer")
    entry["state"] = None
    arrays = []
    if include_state and opt._variables is not None:
        # The optimizer's state belongs to the exact list of arrays it updates; they are
        # recorded as indices into model.weights (frozen layers and non-trainable weights
        # are simply not in the list).
        index = {id(w): k for k, w in enumerate(model.weights)}
        try:
            variables = [index[id(v)] for v in opt._variables]
        except KeyError:
            raise ValueError(
                f"the optimizer of model {model.name!r} holds state for weights that are not "
                f"this model's; compile the model with its own optimizer before saving, or "
                f"save with include_optimizer=False") from None
        state = opt.get_state()
        slots = {}
        for slot, slot_arrays in state["slots"].items():
            names = []
            for k, arr in enumerate(slot_arrays):
                names.append(f"optimizer/{slot}/{k}.npy")
                arrays.append((names[-1], arr))
            slots[slot] = names
        entry["state"] = {"iterations": int(state["iterations"]), "variables": variables,
                          "slots": slots}
    return entry, arrays


def _weight_entries(model):
    index, arrays = [], []
    for i, layer in enumerate(model.layers):
        names = []
        for k, w in enumerate(layer.weights):
            names.append(f"weights/{i}/{k}.npy")
            arrays.append((names[-1], _device.to_host(w)))  # a device weight: a copy
        index.append({"name": layer.name, "class_name": type(layer).__name__,
                      "arrays": names})
    return index, arrays


# ---------------------------------------------------------------------- write
def save_model(model, filepath, overwrite=True, include_optimizer=True) -> None:
    """Writes ``model`` (architecture, weights, compile config, optimizer state) to one file."""
    _check_overwrite_arg(overwrite)
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fastcnn.Model, got {type(model).__name__}")
    if not distributed.current().is_primary:   # under MPI: rank 0 writes the one file
        return
    path = _check_save_path(filepath)
    from . import keras_files
    if keras_files.is_keras_save_path(path):   # .keras / .h5 / .hdf5: Keras's formats
        keras_files.save_model(model, path, overwrite=overwrite)
        return
    weights_index, arrays = _weight_entries(model)
    meta = _meta("model")
    meta["model"] = model_to_config(model)
    meta["weights"] = weights_index
    meta["compile"] = _compile_config(model)
    meta["optimizer"] = None
    if model.compiled:
        meta["optimizer"], opt_arrays = _optimizer_entries(model, bool(include_optimizer))
        arrays += opt_arrays
    _atomic_write(path, meta, arrays, overwrite)


def save_weights(model, filepath, overwrite=True) -> None:
    """Writes only the weights (with each layer's name and class, for readable errors).

    No architecture is stored, so a model with unregistered custom layers can save its
    weights too.
    """
    _check_overwrite_arg(overwrite)
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fastcnn.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built, so it has no weights to save")
    if not distributed.current().is_primary:   # under MPI: rank 0 writes the one file
        return
    path = _check_save_path(filepath)
    from . import keras_files
    if keras_files.is_keras_save_path(path):   # .weights.h5 / .h5: Keras's weight layouts
        if path.lower().endswith(".keras"):
            raise ValueError(f"cannot save weights to {path!r}: a .keras file holds a whole "
                             f"model (model.save); Keras's weights files end in .weights.h5")
        keras_files.save_weights(model, path, overwrite=overwrite)
        return
    weights_index, arrays = _weight_entries(model)
    meta = _meta("weights")
    meta["weights"] = weights_index
    _atomic_write(path, meta, arrays, overwrite)


def _meta(kind):
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "fastcnn_version": __version__, "kind": kind}


def _check_overwrite_arg(overwrite):
    if not isinstance(overwrite, (bool, np.bool_)):
        raise ValueError(f"overwrite must be True or False, got {overwrite!r}")


def _fspath(filepath, argument="filepath"):
    try:
        path = os.fspath(filepath)
    except TypeError:
        raise ValueError(f"{argument} must be a str or os.PathLike, got {filepath!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{argument} must not be empty")
    return path


def _check_save_path(filepath):
    path = _fspath(filepath)
    if os.path.islink(path):
        # Save through the link (what open(path, 'w') would do): the rename must replace
        # the file the link points to, not the link itself.
        path = os.path.realpath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a folder; name a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"cannot save to {path!r}: the folder {folder!r} does not exist (create it first)")
    return path


_UMASK_LOCK = threading.Lock()


def _new_file_mode(path):
    # mkstemp creates 0600; the final file gets the mode an ordinary open() would give it
    # (or keeps the mode of the file it replaces).
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    with _UMASK_LOCK:
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def _write_array(zf, name, array) -> None:
    """One ``.npy`` member (a module-level function so tests can make it fail half-way)."""
    array = np.asarray(array)
    # ZIP64 must be requested up front for members over 2 GiB (the size is not known yet).
    with zf.open(name, "w", force_zip64=array.nbytes > 2**31 - 2**20) as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


# A save writes ".<name>.<8 random characters>.fcnn-tmp" beside its target and holds an
# exclusive lock on it (POSIX) until the rename. A save killed half-way leaves that file;
# the next save of the same path removes every such file no process holds (and those of
# the ".tmp" form older versions left), so leftovers cannot accumulate.
_TMP_SUFFIX = ".fcnn-tmp"


def _leftover_pattern(base):
    return re.compile(r"\." + re.escape(base) + r"\.[A-Za-z0-9_]{8}(\.fcnn-tmp|\.tmp)\Z")


def _lock(fd) -> bool:
    """Takes an exclusive lock on ``fd`` without waiting; False if another process holds
    one (no locking on this platform: True)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _remove_leftovers(folder, base):
    """Removes the temporary files of earlier saves of ``folder/base`` that were killed
    before their rename (a file a running save holds locked is left alone)."""
    pattern = _leftover_pattern(base)
    try:
        entries = [e for e in os.scandir(folder) if pattern.match(e.name)]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                         | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and _lock(fd) and \
                    os.path.samestat(os.fstat(fd), os.lstat(entry.path)):
                os.unlink(entry.path)   # Windows refuses while another process has it open
        except OSError:
            pass
        finally:
            os.close(fd)


def _new_temp(folder, base):
    """``(fd, path)`` of a new temporary file beside the target, locked by this process."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix="." + base + ".", suffix=_TMP_SUFFIX, dir=folder)
        # Another save's clean-up could have taken the file between its creation and the
        # lock: then it is gone from the folder, and a new one is made.
        if _lock(fd) and os.path.samestat(os.fstat(fd), os.lstat(tmp)):
            return fd, tmp
        os.close(fd)


def _atomic_write(path, meta, arrays, overwrite):
    meta_bytes = json.dumps(meta, indent=1, allow_nan=False).encode("utf-8")

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(META_NAME, meta_bytes)
            for name, array in arrays:
                _write_array(zf, name, array)

    _atomic_write_with(path, write, overwrite)


def _atomic_write_with(path, write, overwrite):
    """``write(f)`` fills a temporary file beside ``path``, which is then renamed over
    ``path`` (fastcnn.keras_files writes Keras's files through this too)."""
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path!r} exists and overwrite=False; not overwritten")
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    mode = _new_file_mode(path)
    _remove_leftovers(folder, base)
    fd, tmp = _new_temp(folder, base)
    f = os.fdopen(fd, "wb")   # open (and locked) until after the rename
    try:
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, mode)
        except OSError as exc:
            if exc.filename is not None or exc.errno is None:
                raise
            # A full disk (ENOSPC), a quota (EDQUOT), an I/O error: say which save failed.
            raise type(exc)(exc.errno, f"{exc.strerror} (while writing {path!r}; its "
                                       f"temporary file was removed and {path!r} is "
                                       f"unchanged)", path) from exc
        if fcntl is None:
            f.close()   # Windows renames no open file
        if not overwrite and os.path.lexists(path):  # created while we were writing
            raise FileExistsError(f"{path!r} exists and overwrite=False; not overwritten")
        os.replace(tmp, path)
    except BaseException:
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    f.close()
    _fsync_folder(folder)


def _fsync_folder(folder):
    # Makes the rename itself durable (POSIX); Windows cannot open a folder this way.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------- read
# What reading untrusted bytes with zipfile / json / np.lib.format can raise.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
                ValueError, OverflowError, NotImplementedError, RuntimeError, KeyError,
                TypeError, IndexError)


class _Capped:
    """A member being read, that refuses to yield more than ``cap`` bytes: the cap holds
    whatever the archive declares (a deflate stream of gigabytes declaring a few bytes is
    stopped after ``cap``), and every read is bounded (zipfile's ``read()`` with no size
    decompresses up to 2 GiB at once)."""

    def __init__(self, f, cap, fail):
        self._f, self._left, self._fail, self.position = f, cap, fail, 0

    def read(self, n=-1):
        if n is None or n < 0:
            parts = []
            while True:
                part = self.read(_CHUNK)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        data = self._f.read(min(n, _CHUNK, self._left + 1))
        if len(data) > self._left:
            raise self._fail()
        self._left -= len(data)
        self.position += len(data)
        return data


_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def _file_kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character "
                       "device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _open_regular(path):
    """A binary file object for ``path``, which must be a regular file (a symbolic link is
    followed): a FIFO would block the open or the read forever, a device such as /dev/zero
    never ends. O_NONBLOCK makes the open itself return even if a FIFO was swapped in after
    the check; fstat then checks the very file opened."""
    def refuse(mode):
        return ModelFileError(f"{path!r}: is {_file_kind(mode)}, not a regular file; a "
                              f"fastcnn model file must be a regular file")

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path!r}") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path!r} is a folder, not a fastcnn model file")
    if not stat.S_ISREG(mode):
        raise refuse(mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(mode)
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Archive:
    """A model file opened for reading; every failure becomes a ModelFileError naming it."""

    def __init__(self, path):
        self.path = path
        self.file = _open_regular(path)
        try:
            self.size = os.fstat(self.file.fileno()).st_size
            try:
                self.zf = zipfile.ZipFile(self.file, "r")
            except _READ_ERRORS as exc:
                raise self.error(f"not a fastcnn model file (not a readable zip archive: "
                                 f"{exc})") from None
            seen = set()
            for info in self.zf.infolist():
                if info.filename in seen:
                    self.zf.close()
                    raise self.error(f"the archive holds two members named "
                                     f"{info.filename!r}; a model file names each member "
                                     f"once (which one is meant?)")
                seen.add(info.filename)
        except BaseException:
            self.file.close()
            raise

    def error(self, message):
        return ModelFileError(f"{self.path!r}: {message}")

    def close(self):
        try:
            self.zf.close()
        finally:
            self.file.close()

    def _info(self, name, what):
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise self.error(f"{what} is missing from the archive") from None
        if info.compress_type not in _COMPRESSIONS:
            raise self.error(f"{what} is compressed with method {info.compress_type}; fastcnn "
                             f"reads stored or deflated members only")
        if info.compress_size > self.size:
            raise self.error(f"{what} declares {info.compress_size} compressed bytes, more "
                             f"than the whole file ({self.size})")
        # What the member's bytes can really expand to: stored is 1:1, deflate at most
        # about 1032:1. A member declaring more is a lie, refused before anything is read.
        most = info.compress_size if info.compress_type == zipfile.ZIP_STORED \
            else info.compress_size * _MAX_DEFLATE_RATIO + 1024
        if info.file_size > most:
            raise self.error(f"{what} declares {info.file_size} bytes, but its "
                             f"{info.compress_size} {_COMPRESSIONS[info.compress_type]} bytes "
                             f"cannot hold more than {most}")
        return info

    @contextlib.contextmanager
    def _member(self, info, cap, what):
        """The member ``info`` as a file that yields at most ``cap`` bytes."""
        def too_long():
            return self.error(f"{what} holds more than {cap} bytes (stopped reading there)")

        try:
            with self.zf.open(info) as f:
                yield _Capped(f, cap, too_long)
        except ModelFileError:
            raise
        except _READ_ERRORS as exc:
            raise self.error(f"{what} cannot be read ({exc})") from None

    def read_meta(self):
        if META_NAME not in self.zf.NameToInfo:
            raise self.error(f"not a fastcnn model file (the archive has no {META_NAME})")
        info = self._info(META_NAME, META_NAME)
        if info.file_size > _MAX_META_BYTES:
            raise self.error(f"{META_NAME} declares {info.file_size} bytes, too large")
        try:
            with self._member(info, min(info.file_size, _MAX_META_BYTES), META_NAME) as f:
                raw = f.read()
            meta = json.loads(raw.decode("utf-8"))
        except ModelFileError as exc:
            raise self.error(f"{META_NAME} cannot be read or parsed: "
                             f"{str(exc).split(': ', 1)[-1]}") from None
        except _READ_ERRORS as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise self.error(f"{META_NAME} cannot be read or parsed: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise self.error(f"not a fastcnn model file ({META_NAME} does not name the "
                             f"format {FORMAT_NAME!r})")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise self.error(
                f"format version {version!r} is not supported: this fastcnn ({__version__}) "
                f"reads version {FORMAT_VERSION} (the file was written by fastcnn "
                f"{meta.get('fastcnn_version')!r})")
        if meta.get("kind") not in ("model", "weights"):
            raise self.error(f"unknown file kind {meta.get('kind')!r} (expected 'model' or "
                             f"'weights')")
        return meta

    def npy_header(self, name, what):
        """``(info, shape, fortran_order, dtype, header_bytes)`` of the ``.npy`` member
        ``name``, read (at most ``_MAX_NPY_HEADER`` bytes of it) and checked against the
        archive: the member must be exactly the header plus ``shape`` x ``dtype`` bytes,
        so nothing is ever allocated for a size the file does not hold."""
        if not isinstance(name, str):
            raise self.error(f"{what}: bad array name {name!r} in {META_NAME}")
        label = f"{what}: array {name!r}"
        info = self._info(name, label)
        with self._member(info, _MAX_NPY_HEADER, label) as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f, max_header_size=_MAX_NPY_HEADER)
            except ModelFileError:
                raise self.error(f"{label} cannot be read (its .npy header is longer than "
                                 f"{_MAX_NPY_HEADER} bytes)") from None
            header_bytes = f.position
        if dtype.hasobject:
            raise self.error(f"{label} cannot be read (it holds Python objects, which would "
                             f"need unpickling; fastcnn never unpickles)")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header_bytes + nbytes:
            raise self.error(
                f"{label} declares {info.file_size} bytes, but its header (shape "
                f"{tuple(shape)}, dtype {dtype}) makes it {header_bytes + nbytes} bytes")
        return info, tuple(shape), fortran, dtype, header_bytes

    def read_array(self, name, shape, dtype, what, cast_ok=False):
        """The array ``name``, checked to have ``shape`` and ``dtype`` (or, with
        ``cast_ok``, any float dtype) before anything is allocated, and read with a cap of
        exactly its size."""
        info, file_shape, fortran, file_dtype, header_bytes = self.npy_header(name, what)
        if file_shape != tuple(shape):
            raise self.error(f"{what}: array {name!r} has shape {file_shape}, expected "
                             f"{tuple(shape)}")
        ok = (file_dtype.kind == "f" and file_dtype.itemsize in (4, 8)) if cast_ok \
            else file_dtype == dtype
        if not ok:
            raise self.error(f"{what}: array {name!r} has dtype {file_dtype}, expected "
                             f"{np.dtype(dtype).name}")
        array = np.empty(file_shape[::-1] if fortran else file_shape, dtype=file_dtype)
        label = f"{what}: array {name!r}"
        with self._member(info, info.file_size, label) as f:
            f.read(header_bytes)
            buffer, done = memoryview(array.reshape(-1).view(np.uint8)), 0
            while done < array.nbytes:
                part = f.read(array.nbytes - done)
                if not part:
                    raise self.error(f"{label} cannot be read (it ends after {done} of its "
                                     f"{array.nbytes} data bytes)")
                buffer[done:done + len(part)] = part
                done += len(part)
            f.read(1)   # the end of the member: zipfile checks its CRC there
        return array.T if fortran else array


@contextlib.contextmanager
def _open(filepath):
    archive = _Archive(_fspath(filepath))
    try:
        yield archive
    finally:
        archive.close()


def _weights_index(archive, meta):
    index = meta.get("weights")
    if not isinstance(index, list) or not all(
            isinstance(e, dict) and isinstance(e.get("arrays"), list) for e in index):
        raise archive.error(f"{META_NAME} has no valid 'weights' index")
    return index


def _weight_bytes(archive, index):
    """The bytes of the weight arrays the file holds, each ``.npy`` header checked against
    its member's size (so the total is what the archive really holds, never a claim)."""
    total, seen = 0, set()
    for entry in index:
        for k, name in enumerate(entry["arrays"]):
            what = f"layer {entry.get('name')!r} ({entry.get('class_name')}) weight {k}"
            _, shape, _, dtype, _ = archive.npy_header(name, what)
            if name in seen:
                raise archive.error(f"{what}: array {name!r} is listed twice in the weights "
                                    f"index; each weight has its own array")
            seen.add(name)
            total += math.prod(shape) * dtype.itemsize
    return total


def load_model(filepath, compile=True, custom_objects=None):
    """The model saved by ``model.save(filepath)``: same architecture, weights, compile
    config and optimizer state (training resumes where it stopped).

    ``compile=False`` skips the loss/metrics/optimizer. ``custom_objects``: ``{class name:
    Layer subclass}`` for layer classes of your own (see :func:`register_layer`).
    Raises :class:`ModelFileError` for a file that is not a valid fastcnn model.
    """
    layer_registry(custom_objects)  # a bad custom_objects is the caller's error, not the file's
    if _keras_kind(filepath):   # a Keras file (.keras archive, .h5): fastcnn.keras_files
        from . import keras_files
        return keras_files.load_model(filepath, compile=compile, custom_objects=custom_objects)
    with _open(filepath) as archive:
        meta = archive.read_meta()
        if meta["kind"] != "model":
            raise archive.error("holds weights only (written by save_weights); build the "
                                "model and call model.load_weights on it instead")
        # Building the architecture allocates its weights: at most what the file's own
        # arrays hold (plus a little), so that a few kilobytes declaring Dense(2**27)
        # are refused before the gigabytes are taken.
        held = _weight_bytes(archive, _weights_index(archive, meta))
        with _limits.budget(held + _BUDGET_SLACK, archive.error) as limit:
            try:
                model = model_from_config(meta.get("model"), custom_objects)
            except ValueError as exc:
                if limit.error is not None:
                    raise limit.error from None
                raise archive.error(f"the architecture cannot be rebuilt: {exc}") from None
        _load_weights_into(archive, meta, model, strict=True)
        if compile and meta.get("compile") is not None:
            _compile_from(archive, meta, model)
    return model


def _keras_kind(filepath):
    """'keras' / 'hdf5' for a file Keras wrote (by its content), else None."""
    from . import keras_files
    return keras_files.sniff(filepath)


def load_weights(model, filepath, skip_mismatch=False, by_name=False) -> None:
    """Sets ``model``'s weights from a file of :func:`save_weights` or :func:`save_model`.

    The model must be built with the same architecture: the layers that hold weights must
    match in number, class and weight shapes (names may differ); a mismatch raises
    ValueError naming the first layer that differs, and nothing is assigned. Float weights
    are cast to the model's dtype.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a fastcnn.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(
            f"model {model.name!r} is not built yet; build it (input_shape=..., Input(...) or "
            f"model.build((None, ...))) before load_weights")
    if _keras_kind(filepath):   # Keras's .weights.h5 / legacy .h5 / .keras
        from . import keras_files
        keras_files.load_weights(model, filepath, skip_mismatch=skip_mismatch, by_name=by_name)
        return
    if skip_mismatch or by_name:
        raise ValueError("skip_mismatch and by_name apply to Keras's weight files (.h5, "
                         ".weights.h5, .keras); a fastcnn file's layers must all match")
    with _open(filepath) as archive:
        meta = archive.read_meta()
        _load_weights_into(archive, meta, model, strict=False)


def _load_weights_into(archive, meta, model, strict):
    """Reads and checks every array, then assigns them all (nothing assigned on error).

    ``strict`` (load_model): the model was rebuilt from this very file, so every layer
    must match one to one, dtypes included. Otherwise (load_weights): the layers holding
    weights are matched in order, as Keras does, and floats are cast.
    """
    index = _weights_index(archive, meta)
    if strict:
        if len(index) != len(model.layers):
            raise archive.error(f"the weights index lists {len(index)} layers, the "
                                f"architecture has {len(model.layers)}")
        # By name (unique within a model): a file keeps its layers in the order of the
        # fastcnn that wrote it, which for graphs may differ from today's (Keras's) order.
        by_name = {layer.name: layer for layer in model.layers}
        if len(by_name) == len(model.layers) and all(
                isinstance(e, dict) and e.get("name") in by_name for e in index):
            pairs = [(e, by_name[e["name"]]) for e in index]
        else:
            pairs = list(zip(index, model.layers))
    else:
        file_layers = [e for e in index if e["arrays"]]
        model_layers = [layer for layer in model.layers if layer.weights]
        for i, (entry, layer) in enumerate(zip(file_layers, model_layers)):
            shapes = [tuple(w.shape) for w in layer.weights]
            if entry.get("class_name") != type(layer).__name__ or \
                    len(entry["arrays"]) != len(shapes):
                raise ValueError(
                    f"cannot load weights from {archive.path!r} into model {model.name!r}: "
                    f"layer with weights #{i} is {layer.name!r} ({type(layer).__name__}, "
                    f"{len(shapes)} arrays) in the model but {entry.get('name')!r} "
                    f"({entry.get('class_name')}, {len(entry['arrays'])} arrays) in the file")
            for k, (name, w) in enumerate(zip(entry["arrays"], layer.weights)):
                _check_shape_for_load_weights(archive, entry, name, w, k, layer, model)
        if len(file_layers) != len(model_layers):
            n = min(len(file_layers), len(model_layers))
            if len(model_layers) > n:
                extra = (f"model layer {model_layers[n].name!r} "
                         f"({type(model_layers[n]).__name__}) has no counterpart in the file")
            else:
                extra = (f"file layer {file_layers[n].get('name')!r} "
                         f"({file_layers[n].get('class_name')}) has no counterpart in the model")
            raise ValueError(
                f"cannot load weights from {archive.path!r} into model {model.name!r}: the "
                f"file has {len(file_layers)} layers with weights, the model "
                f"{len(model_layers)}; the first difference: {extra}")
        pairs = list(zip(file_layers, model_layers))
    values = []
    for entry, layer in pairs:
        if strict and entry.get("class_name") != type(layer).__name__:
            raise archive.error(f"weights index entry for layer {layer.name!r} names class "
                                f"{entry.get('class_name')!r}, expected {type(layer).__name__}")
        if len(entry["arrays"]) != len(layer.weights):
            raise archive.error(f"layer {layer.name!r} ({type(layer).__name__}) has "
                                f"{len(layer.weights)} weights, the file lists "
                                f"{len(entry['arrays'])}")
        layer_values = []
        for k, (name, w) in enumerate(zip(entry["arrays"], layer.weights)):
            what = f"layer {layer.name!r} ({type(layer).__name__}) weight {k}"
            layer_values.append(archive.read_array(name, w.shape, w.dtype, what,
                                                   cast_ok=not strict))
        values.append(layer_values)
    for (_, layer), layer_values in zip(pairs, values):  # everything checked: assign
        for w, v in zip(layer.weights, layer_values):
            _device.assign(w, v)   # also a device weight (inside fit on 'cuda')


def _check_shape_for_load_weights(archive, entry, name, w, k, layer, model):
    # A weight of another shape is an architecture mismatch (a user error, plain
    # ValueError), not a broken file: say so before reading it.
    try:
        file_shape = archive.npy_header(name, "weight")[1]
    except ModelFileError:
        return  # read_array reports the broken array
    if file_shape != tuple(w.shape):
        raise ValueError(
            f"cannot load weights from {archive.path!r} into model {model.name!r}: weight {k} "
            f"of layer {layer.name!r} ({type(layer).__name__}) has shape {tuple(w.shape)} in "
            f"the model but {file_shape} in the file (layer {entry.get('name')!r} there)")


def _compile_from(archive, meta, model):
    compile_config = _require_meta_dict(archive, meta.get("compile"), "compile")
    opt_entry = _require_meta_dict(archive, meta.get("optimizer"), "optimizer")
    try:
        loss = _deserialize_object(compile_config.get("loss"), _classes_of(losses), "loss")
        metric_specs = compile_config.get("metrics")
        if not isinstance(metric_specs, list):
            raise ValueError(f"metrics must be a list, got {metric_specs!r}")
        metric_objs = [m if isinstance(m, str)
                       else _deserialize_object(m, _metric_classes(), "metric")
                       for m in metric_specs]
        optimizer = _deserialize_object(opt_entry, _classes_of(optimizers), "optimizer")
        model.compile(optimizer=optimizer, loss=loss, metrics=metric_objs)
    except ValueError as exc:
        raise archive.error(f"the compile config cannot be restored: {exc}") from None
    state = opt_entry.get("state")
    if state is None:
        return
    state = _require_meta_dict(archive, state, "optimizer state")
    iterations, var_index, slot_names = (state.get("iterations"), state.get("variables"),
                                         state.get("slots"))
    weights = model.weights
    if not (isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 0):
        raise archive.error(f"optimizer iterations must be a non-negative int, got {iterations!r}")
    if not (isinstance(var_index, list) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(weights)
            for i in var_index) and len(set(var_index)) == len(var_index)):
        raise archive.error(f"optimizer variables must be distinct indices into the model's "
                            f"{len(weights)} weights, got {var_index!r}")
    variables = [weights[i] for i in var_index]
    optimizer.build(variables)
    expected_slots = optimizer.get_state()["slots"]
    if not isinstance(slot_names, dict) or set(slot_names) != set(expected_slots):
        raise archive.error(
            f"optimizer {type(optimizer).__name__} with this config keeps slots "
            f"{sorted(expected_slots)}, the file has "
            f"{sorted(slot_names) if isinstance(slot_names, dict) else slot_names!r}")
    slots = {}
    for slot, names in slot_names.items():
        if not isinstance(names, list) or len(names) != len(variables):
            raise archive.error(f"optimizer slot {slot!r} must list {len(variables)} arrays")
        slots[slot] = [archive.read_array(name, v.shape, v.dtype,
                                          f"optimizer slot {slot!r} array {k}")
                       for k, (name, v) in enumerate(zip(names, variables))]
    optimizer.set_state({"iterations": iterations, "slots": slots})


def _require_meta_dict(archive, value, what):
    if not isinstance(value, dict):
        raise archive.error(f"{META_NAME}: {what} must be a JSON object, got {value!r}")
    return value


def _deserialize_object(entry, allowed, what):
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise ValueError(f"{what} must be {{'class_name': ..., 'config': {{...}}}}, got {entry!r}")
    cls = allowed.get(entry.get("class_name"))
    if cls is None:
        raise ValueError(f"unknown {what} class {entry.get('class_name')!r} (known: "
                         f"{sorted(allowed)})")
    config = dict(entry["config"])
    try:
        if hasattr(cls, "from_config"):
            return cls.from_config(config)
        return cls(**config)
    except _CONFIG_ERRORS as exc:
        raise ValueError(f"{what} {entry['class_name']}: bad config {config!r}: {exc}") from None
