"""Keras's model configs (config.json, an .h5 file's model_config) <-> fastcnn's.

fastcnn's layers take Keras's class names and argument names, so a layer's config mostly
passes through; what is translated is data, in the tables below:

* ``keras_layers.json`` (generated from Keras 3.15 by tests/fixtures/keras/
  make_keras_files.py): every Keras layer class with its arguments and their defaults,
  and Keras's activation names. Reading, a Keras argument fastcnn's class does not take
  is dropped when it holds Keras's default (``groups=1``, ``lora_rank=None``...) and is
  an error naming the layer, the argument and the file otherwise. Writing, a fastcnn
  layer Keras has no class for, or an argument Keras's class does not take, is an error
  naming the layer.
* ``_NEUTRAL``: values of those arguments that mean the default although they differ from
  the signature's (a config writes ``sparse=False`` where the signature says None).
* ``_RENAMES`` / ``_VALUE_FIXES``: Keras 2 spellings (``LeakyReLU(alpha)``, a
  BatchNormalization ``axis`` of ``[3]``).

Nothing in a config is executed: layer classes come from fastcnn's registry (plus the
caller's ``custom_objects``), initializers, regularizers and constraints from fastcnn's
own allow-lists; a ``Lambda`` layer (Python bytecode) or an object of a module outside
Keras (a custom class) is refused.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import re

from .. import constraints as constraints_module
from .. import initializers as initializers_module
from .. import regularizers as regularizers_module
from ..layers import base as layer_base
from ..layers.core import InputLayer

_TABLE_PATH = os.path.join(os.path.dirname(__file__), "keras_layers.json")

# Values of Keras-only arguments that mean "Keras's default" (beyond the signature's).
_NEUTRAL = {
    "sparse": (None, False), "ragged": (None, False), "optional": (False,),
    "autocast": (True,), "activity_regularizer": (None,), "groups": (1,),
    "dilation_rate": (1, [1, 1], [1]), "lora_rank": (None,), "lora_alpha": (None,),
    "quantization_config": (None,), "synchronized": (False,), "renorm": (False,),
    "renorm_clipping": (None,), "renorm_momentum": (0.99,), "input_tensor": (None,),
    "noise_shape": (None,), "seed": (None,), "data_format": (None, "channels_last"),
    "batch_size": (None,), "gamma_regularizer": (None,), "beta_regularizer": (None,),
    "gamma_constraint": (None,), "beta_constraint": (None,), "build_input_shape": (None,),
}
# Keras 2 spellings -> Keras 3 argument names, per class.
_RENAMES = {("LeakyReLU", "alpha"): "negative_slope",
            ("InputLayer", "batch_input_shape"): "batch_shape"}
# Keras 2 values fastcnn's (Keras 3) argument does not take as they are.
_VALUE_FIXES = {
    ("BatchNormalization", "axis"):
        lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v,
}
# Keras modules whose objects are Keras's own (anything else is a custom object).
_KERAS_MODULE = re.compile(r"\A(keras|tf_keras|tensorflow\.python\.keras)(\.|\Z)")
_CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")
_MODEL_CLASSES = ("Sequential", "Functional", "Model")


@functools.lru_cache(maxsize=1)
def keras_table():
    with open(_TABLE_PATH, encoding="utf-8") as f:
        return json.load(f)


def snake_case(name):
    """Keras's ``naming.to_snake_case`` (the group names of a .weights.h5 file)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def accepted_arguments(cls):
    """The keyword arguments a fastcnn layer class takes (its own and its bases' until
    one has no ``**kwargs``), plus every layer's common ones."""
    names = set(layer_base._COMMON_KWARGS)
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names.update(p.name for p in params
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _same(value, default):
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == len(default) and all(_same(a, b) for a, b in zip(value, default))
    if isinstance(value, (list, tuple)) and isinstance(default, (int, float)):
        return all(_same(a, default) for a in value)   # dilation_rate [1, 1] vs 1
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    return value == default


def is_default(class_name, key, value):
    """Does a Keras argument hold Keras's default value (so dropping it changes nothing)?"""
    if key in _NEUTRAL and any(_same(value, n) for n in _NEUTRAL[key]):
        return True
    sig = keras_table()["layers"].get(class_name, {})
    if key in sig and not (isinstance(sig[key], dict) and sig[key].get("required")):
        return _same(value, sig[key])
    return False


# ---------------------------------------------------------------- reading
class Reader:
    """Translates one file's Keras config; ``fail(message)`` makes the error (naming the
    file) for a config fastcnn cannot rebuild."""

    def __init__(self, registry, custom_objects, fail):
        self.registry = registry
        self.custom = dict(custom_objects or {})
        self.fail = fail

    # ------------------------------------------------------------ objects
    def _check_origin(self, entry, what):
        """Refuses a serialized object that is not Keras's own (a custom class, a Lambda)."""
        class_name = entry.get("class_name")
        module = entry.get("module")
        registered = entry.get("registered_name")
        if class_name in _CODE_LAYERS:
            raise self.fail(
                f"{what} is a {class_name} layer: it holds Python code, which fastcnn never "
                f"runs from a file; rebuild that part of the model in code, or replace the "
                f"layer")
        if class_name in self.custom or registered in self.custom:
            return
        # (Nothing is imported by these names: a class comes from fastcnn's allow-lists
        # or not at all; they only tell a custom object from Keras's own, to say so.)
        if module is not None:
            custom = not (isinstance(module, str) and _KERAS_MODULE.match(module))
        else:
            custom = isinstance(registered, str) and registered != class_name
        if custom:
            raise self.fail(
                f"{what} is the custom object {class_name!r} (module {module!r}, "
                f"registered_name {registered!r}): fastcnn runs no code from a file; pass "
                f"custom_objects={{{class_name!r}: <a fastcnn Layer class>}} to rebuild it")

    def dtype(self, value, what):
        if value is None or isinstance(value, str):
            policy = value
        elif isinstance(value, dict) and value.get("class_name") in (
                "DTypePolicy", "FloatDTypePolicy", "Policy") and \
                isinstance(value.get("config"), dict):
            policy = value["config"].get("name")
        else:
            raise self.fail(f"{what}: dtype {value!r} is not a dtype or a Keras DTypePolicy")
        if isinstance(policy, str) and policy.startswith("mixed_"):
            raise self.fail(f"{what}: the mixed-precision dtype policy {policy!r} is not "
                            f"supported (fastcnn computes in float32 or float64)")
        return policy

    def _object(self, value, what, classes):
        """A serialized initializer/regularizer/constraint -> ``{"class_name", "config"}``
        with the config keys fastcnn's class takes (None-valued Keras extras dropped)."""
        if not isinstance(value, dict):
            return value
        if not isinstance(value.get("class_name"), str):
            raise self.fail(f"{what}: {value!r} is not a serialized Keras object")
        self._check_origin(value, what)
        config = value.get("config") or {}
        if not isinstance(config, dict):
            raise self.fail(f"{what}: config {config!r} is not a JSON object")
        cls = classes.get(value["class_name"])
        if cls is not None:
            takes = set(list(inspect.signature(cls.__init__).parameters)[1:])
            extra = {k: v for k, v in config.items() if k not in takes}
            bad = {k: v for k, v in extra.items() if v is not None}
            if bad:
                raise self.fail(f"{what}: Keras's {value['class_name']} argument(s) {bad} "
                                f"have no counterpart in fastcnn's {cls.__name__}")
            config = {k: v for k, v in config.items() if k in takes}
        return {"class_name": value["class_name"], "config": config}

    def activation(self, value, what):
        if isinstance(value, dict):
            self._check_origin(value, what)
            if value.get("class_name") == "function" and isinstance(value.get("config"), str):
                return value["config"]
            raise self.fail(f"{what}: activation {value!r} is not one of Keras's named "
                            f"activations")
        return value

    # ------------------------------------------------------------- layers
    def layer(self, entry, what):
        """A Keras layer entry -> fastcnn's ``{"class_name", "config"}`` (a nested model:
        fastcnn's model config)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            raise self.fail(f"{what}: not a layer entry ({str(entry)[:200]})")
        class_name = entry["class_name"]
        config = entry.get("config")
        if not isinstance(config, dict):
            raise self.fail(f"{what} ({class_name}): its config is not a JSON object")
        name = config.get("name", entry.get("name"))
        what = f"layer {name!r} ({class_name})" if name is not None else what
        self._check_origin(entry, what)
        if class_name in _MODEL_CLASSES:
            return self.model(entry, what)
        cls = self.custom.get(class_name) or self.registry.get(class_name)
        if cls is None:
            raise self.fail(
                f"{what}: fastcnn has no layer {class_name!r} (it has: "
                f"{', '.join(sorted(self.registry))})")
        out = {}
        takes = accepted_arguments(cls) if class_name not in self.custom else None
        for key, value in config.items():
            key = _RENAMES.get((class_name, key), key)
            fix = _VALUE_FIXES.get((class_name, key))
            if fix is not None:
                value = fix(value)
            if key == "dtype":
                value = self.dtype(value, what)
            elif key == "batch_input_shape" and class_name != "InputLayer":
                continue   # Keras 2's input shape on a first layer: read by the model
            elif key.endswith("_initializer"):
                value = self._object(value, f"{what} argument {key}",
                                     layer_base._initializer_classes())
            elif key.endswith("_regularizer"):
                value = self._object(value, f"{what} argument {key}",
                                     regularizers_module._CLASSES)
            elif key.endswith("_constraint"):
                value = self._object(value, f"{what} argument {key}",
                                     constraints_module._CLASSES)
            elif key == "activation":
                value = self.activation(value, what)
            elif isinstance(value, dict) and "class_name" in value:
                raise self.fail(f"{what}: argument {key} holds the serialized object "
                                f"{value.get('class_name')!r}, which fastcnn does not read")
            if takes is not None and key not in takes:
                if is_default(class_name, key, value):
                    continue
                raise self.fail(
                    f"{what}: Keras's argument {key}={value!r} has no counterpart in "
                    f"fastcnn's {class_name} (fastcnn takes: {', '.join(sorted(takes))})")
            out[key] = value
        return {"class_name": class_name, "config": out}

    # ------------------------------------------------------------- models
    def model(self, entry, what="the model"):
        class_name = entry.get("class_name")
        body = entry.get("config")
        if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
            raise self.fail(f"{what}: a {class_name} config needs a list of layers")
        if class_name == "Sequential":
            return self._sequential(body, what)
        return self._functional(body, what)

    def _sequential(self, body, what):
        entries = list(body["layers"])
        input_shape, dtype = None, None
        if entries and isinstance(entries[0], dict) and entries[0].get("class_name") == \
                "InputLayer":
            cfg = entries.pop(0).get("config") or {}
            input_shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
            dtype = self.dtype(cfg.get("dtype"), f"{what} InputLayer")
        elif entries and isinstance(entries[0], dict) and \
                isinstance(entries[0].get("config"), dict) and \
                "batch_input_shape" in entries[0]["config"]:
            input_shape = entries[0]["config"]["batch_input_shape"]
            dtype = self.dtype(entries[0]["config"].get("dtype"), what)
        elif body.get("build_input_shape") is not None:
            input_shape = body["build_input_shape"]
        if input_shape is not None:
            if not isinstance(input_shape, list) or len(input_shape) < 2:
                raise self.fail(f"{what}: input shape {input_shape!r} is not [batch, ...]")
            input_shape = [None] + list(input_shape[1:])
        layers = [self.layer(e, f"{what} layer {i}") for i, e in enumerate(entries)]
        if dtype is None and body.get("dtype") is not None:
            dtype = self.dtype(body.get("dtype"), what)
        return {"class_name": "Sequential",
                "config": {"name": body.get("name"), "input_shape": input_shape,
                           "dtype": dtype, "layers": layers}}

    def _functional(self, body, what):
        layers, pending, names = [], [], set()
        for i, entry in enumerate(body["layers"]):
            if not isinstance(entry, dict):
                raise self.fail(f"{what} layer {i}: not a layer entry")
            cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
            name = entry.get("name", cfg.get("name"))
            if not isinstance(name, str) or name in names:
                raise self.fail(f"{what} layer {i}: missing or repeated name {name!r}")
            names.add(name)
            translated = self.layer(entry, f"{what} layer {i}")
            layers.append(dict(translated, name=name))
            nodes = entry.get("inbound_nodes") or []
            if not isinstance(nodes, list):
                raise self.fail(f"layer {name!r}: inbound_nodes is not a list")
            for k, node in enumerate(nodes):
                pending.append((name, k, self._node_inputs(node, name)))
        # fastcnn rebuilds the calls in the order listed: a topological order, each
        # layer's calls in their own order (a shared layer may be called after a layer
        # listed later).
        done, ordered = set(), []
        available = {(e["name"], 0) for e in layers if e["class_name"] == "InputLayer"}
        while pending:
            progress = False
            for item in list(pending):
                name, k, refs = item
                if (k == 0 or (name, k - 1) in done) and \
                        all((r[0], r[1]) in available for r in refs):
                    ordered.append({"layer": name, "inputs": refs})
                    done.add((name, k))
                    available.add((name, k))
                    pending.remove(item)
                    progress = True
            if not progress:
                name, k, refs = pending[0]
                raise self.fail(f"{what}: call {k} of layer {name!r} needs {refs}, which no "
                                f"earlier call computes (a disconnected or cyclic graph)")
        ins, in_structure = self._endpoints(body.get("input_layers"), what, "input_layers")
        outs, out_structure = self._endpoints(body.get("output_layers"), what, "output_layers")
        return {"class_name": "Functional",
                "config": {"name": body.get("name"), "layers": layers, "nodes": ordered,
                           "input_layers": ins, "output_layers": outs,
                           "input_structure": in_structure,
                           "output_structure": out_structure}}

    def _ref(self, value, what):
        if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and \
                all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:3]):
            return [value[0], value[1], value[2]]
        raise self.fail(f"{what}: {str(value)[:200]} is not a [layer, node, tensor] reference")

    def _node_inputs(self, node, name):
        what = f"layer {name!r} inbound node"
        refs = []
        if isinstance(node, dict):   # Keras 3: {"args": [...], "kwargs": {...}}
            kwargs = node.get("kwargs") or {}
            bad = {k: v for k, v in kwargs.items()
                   if v is not None and k not in ("training", "mask")}
            if bad:
                raise self.fail(f"{what}: call arguments {sorted(bad)} are not supported")

            def walk(value):
                if isinstance(value, dict):
                    if value.get("class_name") == "__keras_tensor__":
                        cfg = value.get("config") or {}
                        refs.append(self._ref(cfg.get("keras_history"), what))
                        return
                    for v in value.values():
                        walk(v)
                elif isinstance(value, list):
                    for v in value:
                        walk(v)
            walk(node.get("args") or [])
        elif isinstance(node, list):  # Keras 2: [[layer, node, tensor, kwargs], ...]
            for item in node:
                if isinstance(item, list) and len(item) == 4 and isinstance(item[3], dict):
                    bad = {k: v for k, v in item[3].items()
                           if v is not None and k not in ("training", "mask")}
                    if bad:
                        raise self.fail(f"{what}: call arguments {sorted(bad)} are not "
                                        f"supported")
                refs.append(self._ref(item, what))
        else:
            raise self.fail(f"{what}: {str(node)[:200]} is not a node")
        if not refs:
            raise self.fail(f"{what} has no input tensors")
        return refs

    def _endpoints(self, value, what, key):
        if isinstance(value, dict):
            keys = list(value)
            return [self._ref(value[k], f"{what} {key}") for k in keys], ["dict", keys]
        if isinstance(value, list) and value and isinstance(value[0], str):
            return [self._ref(value, f"{what} {key}")], ["single", None]
        if isinstance(value, list) and value:
            refs = [self._ref(v, f"{what} {key}") for v in value]
            return refs, (["single", None] if len(refs) == 1 else ["list", None])
        raise self.fail(f"{what}: {key} {value!r} names no tensors")


# ---------------------------------------------------------------- writing
def _policy(dtype):
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype},
            "registered_name": None}


def _keras_object(value, module, getter):
    """fastcnn's serialized initializer/regularizer/constraint -> Keras 3's dict form."""
    if value is None:
        return None
    if isinstance(value, str):
        obj = getter(value)
        value = {"class_name": type(obj).__name__, "config": obj.get_config()}
    return {"module": module, "class_name": value["class_name"],
            "config": dict(value.get("config") or {}), "registered_name": None}


def _shape(shape):
    return [None if d is None else int(d) for d in shape]


def keras_layer_config(layer, config):
    """fastcnn ``layer``'s config (``get_config()``) -> Keras 3's ``config`` dict; a layer
    Keras has no class or argument for raises ValueError naming it."""
    class_name = type(layer).__name__
    table = keras_table()
    sig = table["layers"].get(class_name)
    if sig is None:
        raise ValueError(
            f"layer {layer.name!r} ({class_name}) cannot be written to a Keras file: Keras "
            f"has no layer class {class_name!r}; save in fastcnn's format instead "
            f"(a path not ending in .keras / .h5)")
    out = {}
    for key, value in config.items():
        if key == "input_shape":
            continue   # the model's InputLayer holds it
        if key == "dtype":
            out[key] = _policy(value or "float32")
            continue
        if key.endswith("_initializer"):
            value = _keras_object(value, "keras.initializers", initializers_module.get)
        elif key.endswith("_regularizer"):
            value = _keras_object(value, "keras.regularizers", regularizers_module.get)
        elif key.endswith("_constraint"):
            value = _keras_object(value, "keras.constraints", constraints_module.get)
        elif key == "activation" and value not in table["activations"]:
            raise ValueError(
                f"layer {layer.name!r} ({class_name}) cannot be written to a Keras file: "
                f"Keras has no activation {value!r}")
        if key not in sig:
            raise ValueError(
                f"layer {layer.name!r} ({class_name}) cannot be written to a Keras file: "
                f"Keras's {class_name} has no argument {key!r} (value {value!r})")
        out[key] = json.loads(json.dumps(value))   # tuples -> lists, as Keras writes
    return out


def _keras_class_name(layer):
    from ..model import Model, Sequential
    if isinstance(layer, Sequential):
        return "Sequential"
    return "Functional" if isinstance(layer, Model) else type(layer).__name__


def _tensor_entry(t, ref):
    return {"class_name": "__keras_tensor__",
            "config": {"shape": _shape(t.shape), "dtype": t.dtype, "keras_history": ref}}


def keras_model_config(model, layer_entry):
    """fastcnn ``model`` -> Keras 3's serialized model (config.json's content);
    ``layer_entry(layer)`` serializes one layer (a nested model: this function again)."""
    from ..model import Sequential
    if isinstance(model, Sequential):
        if model._input_spec is None:
            raise ValueError(f"model {model.name!r} is not built, so its input shape is "
                             f"unknown; build it before saving a Keras file")
        batch_shape = _shape(model._input_spec)
        input_entry = {"module": "keras.layers", "class_name": "InputLayer",
                       "config": {"batch_shape": batch_shape, "dtype": model.dtype,
                                  "sparse": False, "ragged": False,
                                  "name": getattr(model._input_layer, "name", None)
                                  or "input_layer", "optional": False},
                       "registered_name": None}
        layers = [input_entry] + [layer_entry(layer) for layer in model.layers]
        return {"module": "keras", "class_name": "Sequential",
                "config": {"name": model.name, "trainable": model.trainable,
                           "dtype": _policy(model.dtype), "layers": layers,
                           "build_input_shape": batch_shape},
                "registered_name": None, "build_config": {"input_shape": batch_shape}}
    if model._graph is None:
        raise ValueError(f"model {model.name!r} is a subclassed model: a Keras file holds "
                         f"Sequential and Functional models only")
    nodes, ins, outs = model._graph
    calls, ref = {}, {}
    for t in ins:
        ref[id(t)] = [t.node.layer.name, 0, 0]
    inbound = {}
    for node in nodes:
        k = calls.get(id(node.layer), 0)
        calls[id(node.layer)] = k + 1
        tensors = [_tensor_entry(t, ref[id(t)]) for t in node.inputs]
        args = [tensors] if (node.multiple_inputs or len(tensors) > 1) else tensors
        kwargs = {"mask": None} if _keras_class_name(node.layer) in \
            keras_table().get("call_mask", ()) else {}
        inbound.setdefault(id(node.layer), []).append({"args": args, "kwargs": kwargs})
        for j, t in enumerate(node.outputs):
            ref[id(t)] = [node.layer.name, k, j]
    entries = []
    for layer in model.layers:
        if isinstance(layer, InputLayer):
            entry = {"module": "keras.layers", "class_name": "InputLayer",
                     "config": {"batch_shape": _shape(layer.batch_shape),
                                "dtype": layer.dtype, "sparse": False, "ragged": False,
                                "name": layer.name, "optional": False},
                     "registered_name": None}
        else:
            entry = layer_entry(layer)
        entry["name"] = layer.name
        entry["inbound_nodes"] = inbound.get(id(layer), [])
        entries.append(entry)

    def endpoints(tensors, kind, keys):
        refs = [ref[id(t)] for t in tensors]
        if kind == "dict":
            return dict(zip(keys, refs))
        return refs[0] if kind == "single" and len(refs) == 1 else refs

    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": model.name, "trainable": model.trainable,
                       "layers": entries,
                       "input_layers": endpoints(ins, *model._input_kind),
                       "output_layers": endpoints(outs, *model._output_kind)},
            "registered_name": "Functional",
            "build_config": {"input_shape": None}}


__all__ = ["Reader", "keras_layer_config", "keras_model_config",
           "snake_case", "keras_table", "accepted_arguments", "is_default"]
