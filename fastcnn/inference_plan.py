"""Compiled inference plans: a model's whole forward with no Python per layer where possible.

``model.compile_inference(batch_size=None)`` returns an :class:`InferencePlan`; ``plan(x)``
returns the model's outputs as NumPy arrays (what ``predict_on_batch`` returns).
``predict``, ``predict_on_batch`` and ``model(x)`` in inference use a plan automatically
when nothing prevents it (:func:`infer`, called by ``Trainer._infer``).

What compiling does, once per model and batch size:

* **Lowering** (batch-free): the graph's nodes become *ops*. Dropout and a linear
  Activation disappear; Flatten and Reshape become views (no copy);
  BatchNormalization right after a Conv2D or Dense (that feeds only it, with a linear
  activation) is folded into that layer's weights: ``w' = w * s``, ``b' = (b - mean) * s +
  beta`` with ``s = gamma / sqrt(var + eps)``; an Activation (or a default ReLU layer)
  right after a Conv2D / Dense is merged into it (a direct conv applies ReLU and ReLU6 in
  its epilogue, before its only store of y: csrc/simd.h's FC_ACT_*), a ReLU / ReLU6 after
  a two-input Add (a residual block's) into the Add's step; a Conv2D (linear, ReLU or ReLU6) feeding
  only a 2x2, stride-2, unpadded MaxPooling2D becomes one fused conv+pool kernel, the
  activation applied on the pooled values (exact: see :mod:`fastcnn.layers.fusion`).
  A DepthwiseConv2D (dilation 1) is lowered the same way: the BatchNormalization after it
  folded into its kernel per output channel, its ReLU / ReLU6 applied by the depthwise
  kernel on each block of rows as it stores them (csrc/depthwise.h, DWC_ACT_*), and a
  ZeroPadding2D that only it reads (Keras's MobileNetV2 pads before each stride-2 one)
  taken as its pads. MobileNetV2 at 224x224, batch 8, 1 thread: those three passes were a
  fifth of its predict time.
* **Chains** (Python plan, compiled kernels): a direct conv whose output only a depthwise
  conv reads (and that one's output only a direct conv: MobileNetV2's expand, depthwise,
  project) runs as ONE step over chunks of images (one image where an image's
  intermediate takes more than ``_CHAIN_BYTES``), the intermediates in scratch buffers of
  one chunk, so they stay in cache between the kernels instead of going to memory and
  back; the same bits as the steps one by one.
* **Binding** (per batch size): every intermediate value gets a region of one *arena*
  (allocated once, regions reused once their last reader has run) and every op becomes a
  prebound kernel call on those regions (no argument checks, no allocation). Weights are
  packed in the layouts the kernels want (conv kernels as ``(kh*kw*C, F)`` with F padded
  to a multiple of 16, bias padded alike; a view when no padding is needed).
* **Winograd** (C runner): a 3x3, stride-1 conv on 8+ channels fused with a 2x2 max pool
  runs as Winograd F(2x2, 3x3) (csrc/plan_wino.h): each 2x2 output tile is one pool
  window, computed with 16 multiplies per (channel, filter) instead of 36; the kernel's
  transform is packed at compile time. Rounding differs from the direct conv in the last
  bits (tested within float32 tolerance); an infinite input can give NaN where the
  direct conv gives an infinity. ``FASTCNN_WINOGRAD=0`` (or the older
  ``FASTCNN_PLAN_WINOGRAD=0``) keeps the direct conv (fastcnn/backends/_winograd.py).
  A 3x3 stride-1 conv on 16+ channels with 16+ filters (no pool) runs by Winograd
  F(4x4, 3x3) as the training backend's forward does (the same rules:
  cython_cpu._winograd_pays and _winograd_tiles_pay), its activation after: in the Python
  plan ``simd.wino_conv`` (InceptionV3 to 'mixed7' at 150x150, batch 32, 1 thread 390 ->
  306 ms), in the C runner its FP_WINO_CONV step (VGG16's convs that no pool follows).
* **Runner**: on float32 with the compiled (Cython + C SIMD) kernels and a model whose ops
  all have a C implementation, the whole forward is ONE call into compiled code
  (``fastcnn._ext_plan``, csrc/plan.pyx + csrc/plan.h): an array of step descriptors run
  from C. Otherwise the *Python plan* runs the prebound calls in a loop (any backend,
  float32 and float64).

Guarantees:

* The outputs are fresh arrays, never views of the arena (copied out), so a later call
  does not change an earlier result.
* A plan is for one batch size. ``compile_inference(batch_size=None)`` returns a plan that
  specialises itself per batch size (and caches each); a plan compiled for a fixed size
  raises ValueError on another one (never a wrong answer).
* Weights: the plan checks, per call, that each weight array is the one it was compiled
  from (identity), and that the weights it had to copy (BatchNormalization folding,
  padding, the Winograd transform) still hold the values it copied (a byte compare of
  those arrays: about 3 us for the Fashion-MNIST CNN's second conv). Any change
  (``set_weights``, ``fit``, ``load_weights``, an optimizer step, an assignment, a write
  into a weight array) recompiles the plan before it runs; weights used in place (no
  copy) are read live. On predict's automatic path the plan waits for one call with
  unchanged weights before recompiling (layer by layer meanwhile), so predicting after
  every optimizer step does not recompile every time.
* Threads: one call of a plan at a time (a lock: the arena is shared state); predict's
  automatic path does not wait for a busy plan, it runs layer by layer. The C runner's
  results do not depend on the OpenMP thread count (bitwise, tested).
* Layers lowered: InputLayer, Conv2D, DepthwiseConv2D, Dense (on 2-D inputs), MaxPooling2D,
  AveragePooling2D, GlobalAveragePooling2D, Flatten, Reshape, Dropout, Activation, ReLU
  (default arguments or relu6), Softmax (last axis), BatchNormalization, Add (two
  inputs). Other fastcnn layers whose inference forward is a pure function (ELU,
  LeakyReLU, PReLU, Rescaling, ZeroPadding2D, Concatenate and the other merges,
  GlobalMaxPooling2D, a dilated Conv2D or DepthwiseConv2D, SeparableConv2D, Conv2DTranspose,
  UpSampling2D, Cropping2D, ...) run their own forward as one step of the Python plan.
  The C runner holds the lowered kinds but the depthwise one (an Add, a standalone
  BatchNormalization and the activations relu, relu6, sigmoid, tanh, softmax included); a
  model with a depthwise step runs the Python plan.
* A model on input of any size (``Input((None, None, C))``) has no plan (its shapes
  are known per call only): ``compile_inference`` raises InferencePlanError and predict
  runs layer by layer.
* A model with a layer the plan cannot hold (a nested model, a custom layer, the random
  augmentation layers, Resizing, CenterCrop, ...): ``compile_inference``
  raises :class:`InferencePlanError` naming the layer; ``predict`` keeps working layer by
  layer (it remembers the refusal until the model changes).
* Results equal the layer-by-layer forward within float32 rounding (BatchNormalization
  folding and the C runner's own dense kernel change the rounding, not the math).

Environment: ``FASTCNN_INFERENCE_PLAN=0`` turns the automatic use off (``predict`` then
always runs layer by layer); ``compile_inference`` still works.
"""
from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from . import activations, backends
from ._extensions import modules as _ext_modules
from .backends import _winograd

__all__ = ["InferencePlan", "InferencePlanError", "compile_inference", "infer"]

_simd = _ext_modules.get("simd")


def _load_plan_ext():
    """fastcnn._ext_plan (csrc/plan.pyx), or None: optional (the Python plan runs
    without it), and refused when built from other sources."""
    if _simd is None:
        return None
    from . import _extensions
    module, _ = _extensions._probe("fastcnn._ext_plan")
    return module


_plan_ext = _load_plan_ext()
_conv = _ext_modules.get("conv")
_pool = _ext_modules.get("pool")
_elt = _ext_modules.get("elementwise")
_dwc = _ext_modules.get("depthwise")

#: Backends whose plan may run the compiled kernels directly ('auto' prefers them).
_COMPILED_BACKENDS = ("auto", "cython")
_ACT_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
#: Activations the C runner applies itself (plan.h's FP_ACT_*).
C_ACTS = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "relu6": 4, "softmax": 5}
_POOL_FUSABLE = ("linear", "relu", "relu6")
#: Activations the direct conv's epilogue applies itself (csrc/simd.h's FC_ACT_*).
_GATHER_ACTS = ("relu", "relu6")
#: Whether the Python plan runs 3x3 stride-1 convs by Winograd (cython_cpu's rule);
#: FASTCNN_WINOGRAD=0 turns Winograd off everywhere, this only here (benchmarks' before).
_PLAIN_WINOGRAD = True
#: Activations of the steps a chain holds (each applied inside its kernel).
_CHAIN_ACTS = ("linear", "relu", "relu6")
#: Activations the depthwise kernels apply themselves (csrc/depthwise.h's DWC_ACT_*).
_DEPTHWISE_ACTS = ("linear", "relu", "relu6")


class InferencePlanError(ValueError):
    """The model has something an inference plan cannot hold (the message names it)."""


def _enabled() -> bool:
    return os.environ.get("FASTCNN_INFERENCE_PLAN", "1") != "0"


# =========================================================================== lowering
class _Op:
    """One step of a lowered model (batch-free). ``kind`` is one of: conv, dense, maxpool,
    avgpool, gap, gmp, act, softmax, affine, add, view, layer (an opaque layer forward)."""

    __slots__ = ("kind", "ins", "out", "shape", "layer", "attrs")

    def __init__(self, kind, ins, out, shape, layer, **attrs):
        self.kind, self.ins, self.out, self.shape, self.layer = kind, ins, out, shape, layer
        self.attrs = attrs

    def __repr__(self):
        return f"_Op({self.kind}, {self.ins} -> {self.out}, {self.shape})"


def _identity_layer(layer) -> bool:
    from .layers import Activation, Dropout
    if isinstance(layer, Dropout):
        return True
    return isinstance(layer, Activation) and layer.activation == "linear"


def _relu_name(layer):
    """The activation name of a ReLU layer with default arguments ('relu'), or of its
    relu6 case; None for any other ReLU."""
    if layer.negative_slope == 0.0 and layer.threshold == 0.0:
        if layer.max_value is None:
            return "relu"
        if layer.max_value == 6.0:
            return "relu6"
    return None


#: Layers of other areas whose inference forward is a pure function of the input, run by
#: their own forward inside the Python plan (looked up by name: they may be absent).
_OPAQUE_BY_NAME = ("DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "UpSampling2D",
                   "Cropping2D")


def _lower(model):
    """``(ops, input_ids, output_ids, weight_refs)`` for ``model`` or InferencePlanError."""
    from .layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense,
                         Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, InputLayer,
                         MaxPooling2D, ReLU, Reshape, Softmax)
    from .layers import (ELU, Add, Average, Concatenate, LeakyReLU, Maximum, Minimum,
                         Multiply, PReLU, Rescaling, Subtract, ZeroPadding2D)
    from .layers import DepthwiseConv2D
    from .layers.base import Layer
    # fastcnn layers whose inference forward is a pure function of the input: where the
    # plan has no kernel of its own for a case, the layer's forward runs as one step
    from . import layers as _layers
    opaque_ok = (ELU, LeakyReLU, PReLU, Rescaling, ZeroPadding2D, Concatenate, Subtract,
                 Average, Maximum, Minimum, Multiply, Add, Activation, Dense, Conv2D,
                 MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Reshape)
    opaque_ok += tuple(getattr(_layers, name) for name in _OPAQUE_BY_NAME
                       if hasattr(_layers, name))
    graph = getattr(model, "_graph", None)
    if graph is None:
        what = "is not built" if not model.built else \
            "is a subclassed model (its call() is Python code, not a graph of layers)"
        raise InferencePlanError(f"compile_inference: model {model.name!r} {what}; an "
                                 f"inference plan needs a built Sequential or Functional model")
    nodes, ins, outs = graph
    for t in ins:
        if any(d is None for d in tuple(t.shape)[1:]):
            raise InferencePlanError(
                f"compile_inference: model {model.name!r} takes input of any size "
                f"{tuple(t.shape)}; a plan is compiled for fixed shapes (build the model with "
                f"a known input shape, e.g. Input((224, 224, 3)), to compile one; predict "
                f"runs layer by layer)")
    vid = {}

    def value(t):
        return vid.setdefault(id(t), len(vid))

    input_ids = [value(t) for t in ins]
    output_ids = [value(t) for t in outs]
    input_set = {id(t) for t in ins}
    body = [n for n in nodes if not all(id(t) in input_set for t in n.outputs)]
    ops = []
    refused = []
    for n in body:
        layer = n.layer
        if len(n.outputs) != 1:
            refused.append(f"{layer.name!r} ({type(layer).__name__}: {len(n.outputs)} outputs)")
            continue
        o = value(n.outputs[0])
        shape = tuple(n.outputs[0].shape[1:])
        i = [value(t) for t in n.inputs]
        if isinstance(layer, InputLayer) or _identity_layer(layer):
            ops.append(_Op("view", i, o, shape, layer))
        elif isinstance(layer, (Flatten, Reshape)):
            ops.append(_Op("view", i, o, shape, layer))
        elif type(layer) in (Conv2D, Dense, BatchNormalization, DepthwiseConv2D) \
                and not _plain(layer):
            # an argument the plan's kernels do not implement (a dilated conv, ...): the
            # layer's own forward, inside the Python plan
            ops.append(_Op("layer", i, o, shape, layer, multiple=False))
        elif type(layer) is DepthwiseConv2D and _plain(layer):
            ops.append(_Op("depthwise", i, o, shape, layer, w=layer.kernel, b=layer.bias,
                           act=layer.activation, strides=layer.strides, pad=layer._pad,
                           fold=None))
        elif isinstance(layer, Conv2D) and type(layer) is Conv2D:
            ops.append(_Op("conv", i, o, shape, layer, w=layer.kernel, b=layer.bias,
                           act=layer.activation, strides=layer.strides, pad=layer._pad,
                           pool=None, fold=None))
        elif isinstance(layer, Dense) and type(layer) is Dense and len(shape) == 1:
            ops.append(_Op("dense", i, o, shape, layer, w=layer.kernel, b=layer.bias,
                           act=layer.activation, fold=None))
        elif type(layer) in (MaxPooling2D, AveragePooling2D):
            kind = "maxpool" if isinstance(layer, MaxPooling2D) else "avgpool"
            ops.append(_Op(kind, i, o, shape, layer, pool=layer.pool_size,
                           strides=layer.strides, pad=layer._pad))
        elif type(layer) is GlobalAveragePooling2D:
            ops.append(_Op("gap", i, o, shape, layer))
        elif isinstance(layer, Activation) and not callable(layer.activation):
            ops.append(_Op("act", i, o, shape, layer, act=layer.activation))
        elif isinstance(layer, ReLU) and _relu_name(layer) is not None:
            ops.append(_Op("act", i, o, shape, layer, act=_relu_name(layer)))
        elif isinstance(layer, Softmax) and layer.activation == "softmax":
            ops.append(_Op("act", i, o, shape, layer, act="softmax"))
        elif isinstance(layer, BatchNormalization):
            ops.append(_Op("affine", i, o, shape, layer, bn=layer))
        elif isinstance(layer, Add) and len(i) == 2:
            ops.append(_Op("add", i, o, shape, layer, act="linear"))
        elif isinstance(layer, opaque_ok + (GlobalMaxPooling2D, Softmax, ReLU)) and \
                type(layer).__module__.startswith("fastcnn."):
            ops.append(_Op("layer", i, o, shape, layer, multiple=n.multiple_inputs))
        else:
            why = "a nested model" if hasattr(layer, "_graph") else \
                "no inference kernel in the plan" if isinstance(layer, Layer) else "unknown"
            refused.append(f"{layer.name!r} ({type(layer).__name__}: {why})")
    if refused:
        raise InferencePlanError(
            f"compile_inference: model {model.name!r} has layer(s) an inference plan cannot "
            f"hold: {', '.join(refused)}; predict runs such a model layer by layer")
    for op in ops:
        if op.kind in ("conv", "dense", "depthwise") and callable(op.attrs["act"]):
            raise InferencePlanError(
                f"compile_inference: layer {op.layer.name!r} has a Python-callable activation "
                f"({op.attrs['act']!r}); an inference plan holds named activations only")
    ops = _fuse(ops, output_ids)
    return ops, input_ids, output_ids


#: The config keys of the layers the plan lowers itself, and the values it requires where
#: it implements only one: a layer with another key (an argument added later) or value
#: runs its own forward instead.
_CONV_KEYS = {"activation", "bias_constraint", "bias_initializer", "bias_regularizer",
              "dilation_rate", "dtype", "filters", "kernel_constraint", "kernel_initializer",
              "kernel_regularizer", "kernel_size", "name", "padding", "strides", "trainable",
              "use_bias"}
_DENSE_KEYS = _CONV_KEYS - {"dilation_rate", "filters", "kernel_size", "padding",
                            "strides"} | {"units"}
_DEPTHWISE_KEYS = _CONV_KEYS - {"filters", "kernel_constraint", "kernel_initializer",
                               "kernel_regularizer"} | {
    "activity_regularizer", "data_format", "depth_multiplier", "depthwise_constraint",
    "depthwise_initializer", "depthwise_regularizer"}
_BN_KEYS = {"axis", "beta_initializer", "center", "dtype", "epsilon", "gamma_initializer",
            "momentum", "moving_mean_initializer", "moving_variance_initializer", "name",
            "scale", "trainable", "beta_regularizer", "gamma_regularizer", "beta_constraint",
            "gamma_constraint"}


def _plain(layer) -> bool:
    """Whether a Conv2D / DepthwiseConv2D / Dense / BatchNormalization has only arguments the plan implements."""
    from .layers import BatchNormalization, Conv2D, DepthwiseConv2D
    try:
        cfg = layer.get_config()
    except ValueError:   # e.g. a custom callable activation: the layer runs its own forward
        return False
    if isinstance(layer, DepthwiseConv2D):
        keys = _DEPTHWISE_KEYS
        if tuple(np.ravel(cfg.get("dilation_rate", (1, 1)))) not in ((1, 1), (1,)):
            return False
    elif isinstance(layer, Conv2D):
        keys = _CONV_KEYS
        if tuple(np.ravel(cfg.get("dilation_rate", (1, 1)))) not in ((1, 1), (1,)):
            return False
    elif isinstance(layer, BatchNormalization):
        keys = _BN_KEYS
    else:
        keys = _DENSE_KEYS
    return not set(cfg) - keys - {"input_shape"}


def _readers(ops):
    count = {}
    for op in ops:
        for v in op.ins:
            count[v] = count.get(v, 0) + 1
    return count


def _fuse(ops, output_ids):
    """Folds BatchNormalization / activations into their producers, fuses conv + pool,
    folds a ZeroPadding2D into the depthwise conv it feeds."""
    keep = set(output_ids)
    _fold_padding(ops, keep)
    changed = True
    while changed:
        changed = False
        readers = _readers(ops)
        producer = {op.out: op for op in ops}
        for k, op in enumerate(ops):
            if len(op.ins) != 1:
                continue
            src = producer.get(op.ins[0])
            if src is None or src.kind not in ("conv", "dense", "depthwise", "add") \
                    or readers[op.ins[0]] != 1 \
                    or op.ins[0] in keep:
                continue
            a = src.attrs
            merged = False
            if src.kind == "add":
                # a residual's ReLU after its Add (ResNet50): the add's own step applies it
                if op.kind == "act" and a["act"] == "linear" and op.attrs["act"] in ("relu",
                                                                                    "relu6"):
                    a["act"] = op.attrs["act"]
                    merged = True
            elif op.kind == "affine" and a["act"] == "linear" and a.get("pool") is None:
                bn = op.attrs["bn"]
                a["fold"] = (a["fold"] or []) + [bn]
                merged = True
            elif op.kind == "act" and a["act"] == "linear" and a.get("pool") is None:
                a["act"] = op.attrs["act"]
                merged = True
            elif (op.kind == "maxpool" and src.kind == "conv" and a["pool"] is None
                  and a["act"] in _POOL_FUSABLE and tuple(op.attrs["pool"]) == (2, 2)
                  and tuple(op.attrs["strides"]) == (2, 2)
                  and tuple(map(tuple, op.attrs["pad"])) == ((0, 0), (0, 0))
                  and src.shape[0] >= 2 and src.shape[1] >= 2):
                a["pool"] = op.layer
                src.shape = op.shape
                merged = True
            if merged:
                src.out = op.out
                if op.kind != "maxpool":
                    src.shape = op.shape
                del ops[k]
                changed = True
                break
    return ops


def _fold_padding(ops, keep):
    """A ZeroPadding2D whose only reader is a DepthwiseConv2D (Keras's MobileNetV2 pads
    before each stride-2 one) becomes that conv's pads: the kernel counts taps outside x
    as zeros, so the padded copy is never made. Only while each side's total pad stays
    below the kernel size (every output pixel then reads at least one real row and
    column, as with 'same' padding)."""
    from .layers import ZeroPadding2D
    readers = _readers(ops)
    producer = {op.out: op for op in ops}
    for op in list(ops):
        if op.kind != "depthwise":
            continue
        src = producer.get(op.ins[0])
        if src is None or src.kind != "layer" or type(src.layer) is not ZeroPadding2D \
                or readers[op.ins[0]] != 1 or op.ins[0] in keep:
            continue
        (t, b), (l, r) = src.layer.padding
        (pt, pb), (pl, pr) = op.attrs["pad"]
        kh, kw = op.attrs["w"].shape[:2]
        pad = ((pt + t, pb + b), (pl + l, pr + r))
        if max(pad[0]) >= kh or max(pad[1]) >= kw:
            continue
        op.attrs["pad"] = pad
        op.attrs["zero_padding"] = src.layer
        op.ins = list(src.ins)
        ops.remove(src)


# =========================================================================== weights
def _folded(op, dtype):
    """``(w, b, copied)``: the op's kernel and bias with its BatchNormalizations folded
    in; ``copied`` lists the source arrays whose values were copied (the plan re-checks
    them per call)."""
    a = op.attrs
    w, b = a["w"], a["b"]
    if not a["fold"]:
        return w, b, []
    copied = [w] + ([b] if b is not None else [])
    w = np.array(w, dtype=np.float64)
    f = w.shape[2] * w.shape[3] if op.kind == "depthwise" else w.shape[-1]   # output channels
    b = np.zeros(f) if b is None else np.array(b, dtype=np.float64)
    for bn in a["fold"]:
        mean = np.asarray(bn.moving_mean, np.float64)
        var = np.asarray(bn.moving_variance, np.float64)
        s = 1.0 / np.sqrt(var + bn.epsilon)
        if bn.gamma is not None:
            s = s * np.asarray(bn.gamma, np.float64)
        # a depthwise kernel (kh, kw, C, M) feeds output channel c*M + k from [.., c, k]
        w = w * (s.reshape(w.shape[2:]) if op.kind == "depthwise" else s)
        b = (b - mean) * s
        if bn.beta is not None:
            b = b + np.asarray(bn.beta, np.float64)
        copied += [x for x in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)
                   if x is not None]
    return np.ascontiguousarray(w, dtype), np.ascontiguousarray(b, dtype), copied


def _affine(bn, dtype):
    s = 1.0 / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    if bn.gamma is not None:
        s = s * np.asarray(bn.gamma, np.float64)
    t = -np.asarray(bn.moving_mean, np.float64) * s
    if bn.beta is not None:
        t = t + np.asarray(bn.beta, np.float64)
    copied = [x for x in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)
              if x is not None]
    return np.ascontiguousarray(s, dtype), np.ascontiguousarray(t, dtype), copied


def _pad16(a2d):
    """``a2d`` (rows, k) with its columns zero-padded to a multiple of 16 (a view when
    they already are)."""
    k = a2d.shape[1]
    k16 = -(-k // 16) * 16
    if k16 == k:
        return np.ascontiguousarray(a2d)
    out = np.zeros((a2d.shape[0], k16), dtype=a2d.dtype)
    out[:, :k] = a2d
    return out


class _WeightGuard:
    """Detects a weight change since compiling: every weight array of the model must be
    the same object, and the weights whose values were copied (folded, transformed,
    padded) must hold the same bytes as when they were copied."""

    def __init__(self, model):
        self.slots = [(layer._weights, i, w) for layer in model._leaf_layers()
                      for i, w in enumerate(layer._weights)]
        self.copies = []   # (holder, index, snapshot)

    def copied(self, arrays):
        for a in arrays:
            for holder, i, w in self.slots:
                if w is a:
                    if not any(h is holder and j == i for h, j, _ in self.copies):
                        self.copies.append((holder, i, np.array(a, copy=True)))
                    break
            else:   # not a layer weight slot (never happens for the layers lowered)
                self.copies.append(([a], 0, np.array(a, copy=True)))

    def fresh(self) -> bool:
        for holder, i, w in self.slots:
            if holder[i] is not w:
                return False
        same = _plan_ext.same_bytes if _plan_ext is not None else _same_numpy
        for holder, i, snap in self.copies:
            if not same(holder[i], snap):
                return False
        return True

    def resnap(self):
        """Takes the current weights as the reference (the plan itself is then stale:
        the caller recompiles before running it)."""
        self.slots = [(holder, i, holder[i]) for holder, i, _ in self.slots]
        self.copies = [(holder, i, np.array(holder[i], copy=True))
                       for holder, i, _ in self.copies]


def _same_numpy(a, b):
    return a.shape == b.shape and a.tobytes() == b.tobytes()


# =========================================================================== arena
class _Arena:
    """Regions of one float buffer for the values, reused after their last reader."""

    ALIGN = 16  # floats: every region starts on a 64-byte boundary

    def __init__(self):
        self.size = 0
        self.free = []   # (offset, size)

    def alloc(self, n):
        n = max(-(-n // self.ALIGN) * self.ALIGN, self.ALIGN)
        best = None
        for k, (off, size) in enumerate(self.free):
            if size >= n and (best is None or size < self.free[best][1]):
                best = k
        if best is not None:
            off, size = self.free.pop(best)
            if size > n:
                self.free.append((off + n, size - n))
            return off
        off = self.size
        self.size += n
        return off

    def release(self, off, n):
        n = max(-(-n // self.ALIGN) * self.ALIGN, self.ALIGN)
        self.free.append((off, n))


# =========================================================================== binding
class _Bound:
    """One op bound to a batch size: its buffers (arena offsets) and packed weights."""

    __slots__ = ("op", "kind", "ins", "out", "in_shapes", "out_shape", "w", "b", "extra",
                 "fn")

    def __init__(self, op):
        self.op, self.kind = op, op.kind
        self.extra = {}
        self.fn = None


class InferencePlan:
    """A model's forward for one batch size (or, compiled with ``batch_size=None``, a
    dispatcher that builds and caches one per batch size). Call it on an array (a list
    for several inputs): ``plan(x)`` returns the outputs, a list of fresh NumPy arrays.

    Attributes: ``batch_size`` (None for the dispatcher), ``runner`` ('c' or 'python'),
    ``steps`` (a description of the bound steps), ``chains`` (the Python plan's runs of
    steps computed chunk of images by chunk: (layer names, images a chunk)),
    ``arena_bytes``.
    """

    def __init__(self, model, batch_size, backend, runner="auto", weak=False):
        # The automatic plans (infer's cache, keyed weakly by the model) hold the model
        # weakly, or the cache would keep every model alive; a user's plan holds it.
        self._model_ref = weakref.ref(model)
        self._model_strong = None if weak else model
        self._weak = weak
        self._lock = threading.Lock()   # one call at a time: the arena is shared state
        self._pending = False           # weights changed: recompile before the next run
        self.batch_size = batch_size
        self.backend = backend
        self._want = runner
        self._graph = model._graph
        self._by_size = {}
        self._compile()

    @property
    def model(self):
        """The model the plan was compiled from."""
        model = self._model_ref()
        if model is None:
            raise ReferenceError("the model of this inference plan no longer exists")
        return model

    # -------------------------------------------------------------- compiling
    def _compile(self):
        model = self.model
        self.dtype = np.dtype(model._dtype)
        ops, self.input_ids, self.output_ids = _lower(model)
        self.ops = ops
        self.guard = _WeightGuard(model)
        self.runner = None
        self.steps = []
        self.chains = []
        self.arena_bytes = 0
        if self.batch_size is not None:
            self._bind(self.batch_size)

    def _compiled_kernels(self) -> bool:
        return (self.backend.name in _COMPILED_BACKENDS and _simd is not None
                and _elt is not None and self.dtype in (np.float32, np.float64))

    def _bind(self, n):
        dtype = self.dtype
        compiled = self._compiled_kernels()
        use_c = (self._want in ("auto", "c") and compiled and dtype == np.float32
                 and _plan_ext is not None and all(_c_ok(op) for op in self.ops))
        if self._want == "c" and not use_c:
            raise InferencePlanError(
                "compile_inference(runner='c'): the C runner needs float32, the compiled "
                "kernels (cython or auto backend) and ops it implements: "
                + ", ".join(sorted({op.kind for op in self.ops if not _c_ok(op)}) or ["-"]))
        shapes = {}
        model = self.model
        for v, spec in zip(self.input_ids, model._input_specs):
            shapes[v] = (n,) + tuple(spec[1:])
        alias = {}     # value -> the value whose buffer it views (its root)
        for op in self.ops:
            if op.kind == "view":
                alias[op.out] = alias.get(op.ins[0], op.ins[0])
        last = {}      # root value -> index of the last op reading it
        for k, op in enumerate(self.ops):
            for v in op.ins:
                last[alias.get(v, v)] = k
        for v in self.output_ids:
            last[alias.get(v, v)] = len(self.ops)   # outputs live to the end
        int_scratch = float_scratch = 0
        bound = []
        for op in self.ops:
            b = _Bound(op)
            b.ins = list(op.ins)
            b.in_shapes = [shapes[v] for v in op.ins]
            b.out_shape = (n,) + tuple(op.shape)
            shapes[op.out] = b.out_shape
            size = int(np.prod(b.out_shape))
            b.out = op.out
            if op.kind in ("conv", "dense"):
                self._pack(b, compiled, use_c)
                if op.kind == "conv" and compiled and not b.extra.get("direct"):
                    kh, kw = op.attrs["w"].shape[:2]
                    ho, wo = b.extra["conv_hw"]
                    float_scratch = max(float_scratch,
                                        n * ho * wo * kh * kw * b.in_shapes[0][3])
                if op.attrs.get("pool") is not None:
                    int_scratch = max(int_scratch, size)
            elif op.kind == "depthwise":
                w, bias, copied = _folded(op, dtype)
                self.guard.copied(copied)
                b.w, b.b = w, bias
            elif op.kind == "maxpool":
                int_scratch = max(int_scratch, size)
            elif op.kind == "affine":
                s, t, copied = _affine(op.attrs["bn"], dtype)
                self.guard.copied(copied)
                b.w, b.b = s, t
            bound.append(b)
        # Chains (Python plan): their intermediates live in scratch of one chunk, never in
        # the arena (MobileNetV2 at batch 8: 64 -> 11 MB).
        self.n = n
        kinds = {op.out: op.kind for op in self.ops}
        placeable = compiled and not use_c
        # the steps that run: all but the views of a buffer the arena will hold (the
        # template holds those views)
        steps = [b for b in bound if not (compiled and b.kind == "view" and kinds.get(
            alias.get(b.out)) not in (None, "view", "layer"))]
        chains = _chains(self, steps) if placeable else {}
        in_scratch = {b.out for k, (length, _) in chains.items() for b in steps[k:k + length - 1]}
        arena = _Arena()
        placed = {}    # value -> arena offset (every value ever placed)
        live = {}      # root value -> (offset, size) while in use
        for k, (op, b) in enumerate(zip(self.ops, bound)):
            if op.kind not in ("view", "layer") and compiled and op.out not in in_scratch:
                size = int(np.prod(b.out_shape))
                off = arena.alloc(size)
                placed[op.out] = off
                live[op.out] = (off, size)
            for v in set(op.ins) | {op.out}:
                r = alias.get(v, v)
                if r in live and last.get(r, -1) <= k:
                    arena.release(*live.pop(r))
        self._placed = placed
        self.arena = np.empty(max(arena.size, 16), dtype=dtype) if compiled else None
        self.iscratch = np.empty(max(int_scratch, 1), dtype=np.int32)
        self.fscratch = np.empty(max(float_scratch, 1), dtype=dtype)
        self.arena_bytes = 0 if self.arena is None else self.arena.nbytes
        self._shapes, self._alias = shapes, alias
        self._bound = bound
        self._run_bound, self._chain_plan = steps, chains   # chains index into steps
        self.runner = "c" if use_c else "python"
        self.steps = [_describe_step(b, placed, alias) for b in bound
                      if not (b.kind == "view" and alias.get(b.out) in placed)]
        if use_c:
            self._placed_for_c = placed
            self._c = _c_plan(self)
        else:
            self._c = None
            self._fns = _python_steps(self, compiled)

    def _pack(self, b, compiled, use_c):
        op, a = b.op, b.op.attrs
        w, bias, copied = _folded(op, self.dtype)
        self.guard.copied(copied)
        f = w.shape[-1]
        b.extra["f"] = f
        if op.kind == "dense":
            if use_c:   # the C kernels read whole vectors of 16 columns
                w = _pad16(w)
                if w.base is None and w is not b.op.attrs["w"]:
                    self.guard.copied([b.op.attrs["w"]])
                if bias is not None:
                    bias = _pad16(bias.reshape(1, f))[0]
                    if bias.base is None and bias is not b.op.attrs["b"]:
                        self.guard.copied([b.op.attrs["b"]])
            b.w, b.b = w, bias
            return
        from .backends import cython_cpu
        x_shape = b.in_shapes[0]
        kh, kw, sh, sw, pt, pl, ho, wo = cython_cpu._geometry(
            x_shape, w.shape[:2], a["strides"], a["pad"], "kernel size") if compiled else \
            (None,) * 8
        b.extra["geom"] = (kh, kw, sh, sw, pt, pl, ho, wo)
        b.extra["conv_hw"] = (ho, wo)
        direct = compiled and (use_c or cython_cpu._direct(self.dtype, x_shape[3], f))
        b.extra["direct"] = direct
        if a["pool"] is not None and not direct:
            a_pool = a["pool"]
            b.extra["unfused_pool"] = a_pool
        if use_c and _winograd_ok(op, x_shape, w):
            # U = G g G^T per (channel, filter), laid out (16, C, F padded to 16): a copy
            self.guard.copied([a["w"]])
            b.extra["wino"] = True
            b.w = _winograd.transform_kernel(w)
            b.b = None if bias is None else _pad16(bias.reshape(1, f))[0]
            return
        m = _winograd.tile_for(ho, wo) if compiled else 2
        if (_PLAIN_WINOGRAD and direct and a["pool"] is None and self.dtype == np.float32
                and cython_cpu._winograd_pays(kh, kw, sh, sw, x_shape[3], f)
                and cython_cpu._winograd_tiles_pay(x_shape[0], ho, wo, x_shape[3], f, m)):
            # a 3x3 stride-1 conv by Winograd F(m x m, 3x3) (the Python plan's simd.wino_conv,
            # the C runner's FP_WINO_CONV), by the training backend's forward's rule
            # (cython_cpu._direct_forward): U = G g G^T, a copy
            self.guard.copied([a["w"]])
            b.extra["wino_conv"] = m
            b.w = _winograd.transform_kernel(w, m)
            b.b = None if bias is None else _pad16(bias.reshape(1, f))[0]
            return
        if direct:
            w2d = _pad16(w.reshape(-1, f))
            if w2d.base is None and w2d is not w:   # a padded copy
                self.guard.copied([a["w"]])
            b.w = w2d
            b.b = None if bias is None else _pad16(bias.reshape(1, f))[0]
        else:
            b.w, b.b = w, bias


def _winograd_ok(op, x_shape, w) -> bool:
    """Whether the C runner computes this conv + 2x2 pool by Winograd F(2x2, 3x3)
    (csrc/plan_wino.h): a 3x3 kernel, stride 1, on 8+ channels (fewer: the transforms
    cost more than the multiplies they save). FASTCNN_WINOGRAD=0 (or the older
    FASTCNN_PLAN_WINOGRAD=0) turns it off, here and in the training backend."""
    a = op.attrs
    return (_winograd.enabled() and a["pool"] is not None
            and tuple(w.shape[:2]) == (3, 3) and tuple(a["strides"]) == (1, 1)
            and x_shape[3] >= 8)


def _describe_step(b, placed, alias):
    a = b.op.attrs
    text = b.kind + ("(winograd)" if b.extra.get("wino_conv") else "")
    if a.get("fold"):
        text += "+bn"
    if a.get("zero_padding") is not None:
        text = "zeropad+" + text
    if b.kind == "conv" and a.get("pool") is not None:
        text += "+pool(winograd)" if b.extra.get("wino") else "+pool"
    if a.get("act") not in (None, "linear") and b.kind != "act":
        text += "+" + a["act"]
    elif b.kind == "act":
        text += ":" + a["act"]
    return f"{text} {b.op.layer.name} -> {b.out_shape}"


def _c_ok(op) -> bool:
    a = op.attrs
    if op.kind in ("conv", "dense"):
        return a["act"] in C_ACTS and (op.kind == "dense" or a["act"] != "softmax")
    if op.kind == "act":
        return a["act"] in C_ACTS
    if op.kind in ("maxpool", "avgpool"):
        return True
    return op.kind in ("view", "add", "affine", "gap")


# =========================================================================== C runner
def _c_plan(plan):
    """The C runner (fastcnn._ext_plan.CPlan) of a bound float32 plan."""
    input_index = {v: k for k, v in enumerate(plan.input_ids)}

    def off(v):
        r = plan._alias.get(v, v)
        if r in input_index:
            return -1 - input_index[r]
        return plan._placed[r]

    descs = []
    zeros = 16
    for b in plan._bound:
        op, a = b.op, b.op.attrs
        if op.kind == "view":
            continue
        rows = int(np.prod(b.out_shape[:-1]))
        cols = int(b.out_shape[-1])
        d = {"in0": off(b.ins[0]), "out": off(b.out), "rows": rows, "cols": cols,
             "act": C_ACTS.get(a.get("act") or "linear", 0)}
        if op.kind == "conv":
            n, hs, ws, cs = b.in_shapes[0]
            kh, kw, sh, sw, pt, pl, ho, wo = b.extra["geom"]
            pooled = a["pool"] is not None
            gu, gv = b.out_shape[1], b.out_shape[2]
            last_x = -pl + ((2 * gv - 1) if pooled else (gv - 1)) * sw
            run = kw * cs if (-pl >= 0 and last_x + kw <= ws) else cs
            zeros = max(zeros, kw * cs)   # blocks inside the columns take whole rows
            f = b.extra["f"]
            if b.extra.get("wino"):
                zeros = max(zeros, cs)
                d.update(op="wino_pool", w=b.w, b=b.b, units=n * gu * gv,
                         work=n * gu * gv * 16 * cs * f,
                         g=dict(n_img=n, hs=hs, ws=ws, cs=cs, run=cs, nth=3, ntw=3, co=f,
                                co_pad=b.w.shape[2], ho=gu, wo=gv, grid_u=gu, grid_v=gv,
                                by0=-pt, bsy=1, bx0=-pl, bsx=1))
                descs.append(d)
                continue
            if b.extra.get("wino_conv"):
                m = b.extra["wino_conv"]
                zeros = max(zeros, cs)
                tu, tv = -(-ho // m), -(-wo // m)
                d.update(op="wino_conv", m=m, w=b.w, b=b.b, units=n * tu * tv,
                         work=n * tu * tv * (m + 2) ** 2 * cs * f,
                         g=dict(n_img=n, hs=hs, ws=ws, cs=cs, run=cs, nth=3, ntw=3, co=f,
                                co_pad=b.w.shape[2], ho=ho, wo=wo, grid_u=tu, grid_v=tv,
                                by0=-pt, bsy=1, bx0=-pl, bsx=1))
                descs.append(d)
                continue
            d.update(op="conv_pool" if pooled else "conv", w=b.w, b=b.b,
                     units=n * gu * gv, work=n * gu * gv * (4 if pooled else 1) * kh * kw * cs * f,
                     g=dict(n_img=n, hs=hs, ws=ws, cs=cs, run=run, nth=kh, ntw=kw, co=f,
                            co_pad=b.w.shape[1], ho=gu, wo=gv, grid_u=gu, grid_v=gv,
                            by0=-pt, bsy=sh, bx0=-pl, bsx=sw, conv_wo=(wo // 2 * 2)))
        elif op.kind == "dense":
            n, k = b.in_shapes[0]
            f, f_pad = b.extra["f"], b.w.shape[1]
            zeros = max(zeros, k)
            d.update(op="dense", w=b.w, b=b.b, k=k, f=f, f_pad=f_pad, units=n,
                     work=n * k * f,
                     g=dict(n_img=n, hs=1, ws=1, cs=k, run=k, nth=1, ntw=1, co=f, co_pad=f_pad,
                            ho=1, wo=1, grid_u=1, grid_v=1, by0=0, bsy=1, bx0=0, bsx=1))
        elif op.kind in ("maxpool", "avgpool"):
            n, h, w, c = b.in_shapes[0]
            ho, wo = b.out_shape[1:3]
            (pt, _), (pl, _) = a["pad"]
            d.update(op=op.kind, units=n * ho, work=n * ho * wo * c * a["pool"][0] * a["pool"][1],
                     p=dict(n_img=n, h=h, w=w, c=c, ho=ho, wo=wo, ph=a["pool"][0],
                            pw=a["pool"][1], sh=a["strides"][0], sw=a["strides"][1], pt=pt, pl=pl))
        elif op.kind == "act":
            d.update(op="act")
        elif op.kind == "add":
            d.update(op="add", in1=off(b.ins[1]))
        elif op.kind == "affine":
            d.update(op="affine", w=b.w, b=b.b)
        elif op.kind == "gap":
            n, h, w, c = b.in_shapes[0]
            d.update(op="gap", rows=n, cols=c, hw=h * w)
        else:
            raise AssertionError(op.kind)
        descs.append(d)
    outputs = [(off(v), plan._shapes[v]) for v in plan.output_ids]
    sizes = [int(np.prod(plan._shapes[v])) for v in plan.input_ids]
    return _plan_ext.CPlan(descs, plan.arena, plan.iscratch, zeros, outputs, sizes)


# =========================================================================== Python runner
def _python_steps(plan, compiled):
    """The prebound step functions: ``fn(vals)`` reads and writes the slot list."""
    fns = []
    # the steps that run (views of a placed buffer are the template's): _bind's list, which
    # the chains' indices refer to
    bound, chains = plan._run_bound, plan._chain_plan
    plan.chains = [(tuple(b.op.layer.name for b in bound[k:k + length]), images)
                   for k, (length, images) in sorted(chains.items())]
    k = 0
    while k < len(bound):
        if k in chains:
            length, images = chains[k]
            fns.append(_bind_chain(plan, bound[k:k + length], images))
            k += length
            continue
        b = bound[k]
        fns.append(_bind_compiled(plan, b) if compiled else _bind_generic(plan, b))
        k += 1
    return fns


#: Bytes of one image's intermediate above which a chain runs image by image (or a few
#: at a time): a conv's output that the next step alone reads then stays in L2/L3
#: between the two kernels instead of going to memory and back. 8 images, 1 thread,
#: expand 1x1 + ReLU6 -> depthwise 3x3 + ReLU6, whole batch / per chunk: 112x112x16 -> 96
#: stride 2 10.1 / 7.2 ms, 56x56x24 -> 144 3.8 / 3.0, the same stride 2 2.3 / 2.0,
#: 28x28x32 -> 192 0.95 / 0.81 (4 images a chunk); 2 threads 0.77-0.85 alike.
_CHAIN_BYTES = 5 << 19


def _chainable_conv(b):
    return (b.kind == "conv" and b.extra.get("direct") and not b.extra.get("wino_conv")
            and b.op.attrs["pool"] is None and b.op.attrs["act"] in _CHAIN_ACTS)


def _chains(plan, bound):
    """``{index: (length, images)}``: runs of bound steps computed chunk of images by
    chunk: a direct conv whose output only the next step, a depthwise conv, reads, and
    when the depthwise's output only a following direct conv reads, that conv too (a
    MobileNetV2 block: expand, depthwise, project); ``images`` per chunk from the largest
    intermediate (_CHAIN_BYTES). Results are the same bits: each output value is summed
    in the same order whichever images a call holds."""
    readers = _readers(plan.ops)
    outputs = set(plan.output_ids)
    chains = {}
    k = 0
    while k + 1 < len(bound):
        a, d = bound[k], bound[k + 1]
        if not (_chainable_conv(a) and d.kind == "depthwise" and d.ins[0] == a.out
                and readers.get(a.out) == 1 and a.out not in outputs
                and d.op.attrs["act"] in _CHAIN_ACTS):
            k += 1
            continue
        steps = [a, d]
        if k + 2 < len(bound):
            c = bound[k + 2]
            if (_chainable_conv(c) and c.ins[0] == d.out and readers.get(d.out) == 1
                    and d.out not in outputs):
                steps.append(c)
        per_image = max(int(np.prod(s.out_shape[1:])) for s in steps[:-1]) * plan.dtype.itemsize
        images = max(1, min(plan.n, _CHAIN_BYTES // per_image))
        if images < plan.n:
            chains[k] = (len(steps), images)
        k += len(steps)
    return chains


def _chunk_kernel(plan, b):
    """``kernel(x, out)``: the bound conv (direct or Winograd, no pool) or depthwise step on
    any leading slice of images, its activation included (ReLU / ReLU6 in the direct
    conv's epilogue and the depthwise kernel, without a pass of their own)."""
    if b.kind == "depthwise":
        return _depthwise_kernel(plan, b)
    a = b.op.attrs
    act, backend = a["act"], plan.backend
    kh, kw, sh, sw, pt, pl, ho, wo = b.extra["geom"]
    w2d, bias = b.w, b.b
    if b.extra.get("wino_conv"):
        m, wc = b.extra["wino_conv"], _simd.wino_conv

        def kernel(x, out):
            wc(x, w2d, bias, out, -pt, -pl, m)
            _apply_act_inplace(out, act, backend)
        return kernel
    g = _simd.gather
    inside = act if act in _GATHER_ACTS else "linear"

    def kernel(x, out):
        g(x, w2d, bias, out, kh, kw, ho, wo, -pt, sh, -pl, sw, 0, 1, 0, 1, inside)
        if inside != act:
            _apply_act_inplace(out, act, backend)
    return kernel


def _bind_chain(plan, steps, images):
    """One step running ``steps`` (conv, depthwise[, conv]) over chunks of ``images``
    images, the intermediates in scratch buffers of one chunk."""
    kernels = [_chunk_kernel(plan, b) for b in steps]
    scratch = [np.empty((images,) + tuple(b.out_shape[1:]), dtype=plan.dtype)
               for b in steps[:-1]]
    final = plan._buffer(steps[-1].out)
    i0, n = steps[0].ins[0], plan.n
    last = steps[-1].out

    def run(vals):
        x = vals[i0]
        for lo in range(0, n, images):
            hi = min(lo + images, n)
            src = x[lo:hi]
            for kernel, buf in zip(kernels[:-1], scratch):
                kernel(src, buf[:hi - lo])
                src = buf[:hi - lo]
            kernels[-1](src, final[lo:hi])
        vals[last] = final
    return run


def _apply_act_inplace(y, act, backend):
    """Applies ``act`` to ``y`` in place (compiled kernels)."""
    if act in (None, "linear"):
        return
    flat = y.reshape(-1)
    if act == "relu":
        _elt.relu_forward(flat, flat)
    elif act == "softmax":
        rows = y.reshape(-1, y.shape[-1])
        _elt.softmax_forward(rows, rows)
    else:
        out, _ = activations.forward(backend, act, y)
        np.copyto(y, out)


def _depthwise_kernel(plan, b):
    """``kernel(x, out)``: the bound depthwise step (folded weights) on any leading slice
    of images; ReLU and ReLU6 applied by the kernel on each block of rows as it stores
    them, another activation after."""
    from .backends import cython_cpu
    a = b.op.attrs
    act, backend = a["act"], plan.backend
    kh, kw, c, m = b.w.shape
    wt = np.ascontiguousarray(b.w.reshape(kh * kw, c * m))
    bias = b.b
    _, _, sh, sw, pt, pl, _, _ = cython_cpu._geometry(b.in_shapes[0], (kh, kw),
                                                     a["strides"], a["pad"], "kernel size")
    inside = act if act in _DEPTHWISE_ACTS else "linear"
    fwd = _dwc.forward

    def kernel(x, out):
        fwd(x, wt, bias, out, kh, kw, sh, sw, pt, pl, m, inside)
        if inside != act:
            _apply_act_inplace(out, act, backend)
    return kernel


def _bind_compiled(plan, b):
    """A step on the compiled kernels (cython_cpu's, called directly) into the arena."""
    op, a = b.op, b.op.attrs
    backend = plan.backend
    f32 = plan.dtype == np.float32
    i0 = b.ins[0]
    o = b.out
    kind = op.kind
    if kind == "view":
        shape = b.out_shape

        def run(vals):
            vals[o] = vals[i0].reshape(shape)
        return run
    if kind == "layer":
        layer = op.layer
        ins = b.ins
        if a.get("multiple"):
            def run(vals):
                vals[o] = np.ascontiguousarray(layer.forward([vals[i] for i in ins], False)[0])
        else:
            def run(vals):
                vals[o] = np.ascontiguousarray(layer.forward(vals[i0], False)[0])
        return run
    out = plan._buffer(o)
    act = a.get("act")
    if kind == "conv":
        kh, kw, sh, sw, pt, pl, ho, wo = b.extra["geom"]
        w2d, bias = b.w, b.b
        if b.extra["direct"] and a["pool"] is None:   # direct or Winograd, into the arena
            kernel = _chunk_kernel(plan, b)

            def run(vals):
                kernel(vals[i0], out)
            return run
        if b.extra["direct"]:
            arg = plan.iscratch[:out.size].reshape(out.shape)
            hc, wc = ho // 2 * 2, wo // 2 * 2
            gm = _simd.gather_maxpool
            if act in ("relu",) and f32:
                flat = out.reshape(-1)
                relu = _elt.relu_forward

                def run(vals):
                    gm(vals[i0], w2d, bias, out, arg, kh, kw, -pt, sh, -pl, sw, hc, wc)
                    relu(flat, flat)
            else:
                def run(vals):
                    gm(vals[i0], w2d, bias, out, arg, kh, kw, -pt, sh, -pl, sw, hc, wc)
                    _apply_act_inplace(out, act, backend)
            return run
        conv_out = out
        pool = b.extra.get("unfused_pool")
        if pool is not None:   # conv, then pool, through a temporary (rare: im2col convs)
            conv_out = np.empty((plan.n, ho, wo, b.extra["f"]), dtype=plan.dtype)
        # im2col + GEMM (the direct and Winograd convs returned above)
        n, f = plan.n, b.extra["f"]
        k = kh * kw * b.in_shapes[0][3]
        cols = plan.fscratch[:n * ho * wo * k].reshape(n * ho * wo, k)
        w2 = np.ascontiguousarray(w2d.reshape(k, f))
        y2 = conv_out.reshape(-1, f)
        im2col = _conv.im2col

        def conv(x):
            im2col(x, cols, kh, kw, sh, sw, pt, pl, ho, wo)
            np.matmul(cols, w2, out=y2)
            if bias is not None:
                _elt.bias_act(y2, bias, 0)
        if pool is None:
            def run(vals):
                conv(vals[i0])
                _apply_act_inplace(out, act, backend)
            return run
        arg = plan.iscratch[:out.size].reshape(out.shape)
        ph, pw = pool.pool_size
        psh, psw = pool.strides
        (ppt, _), (ppl, _) = pool._pad
        mp = _simd.maxpool_forward if f32 else _pool.maxpool_forward

        def run(vals):
            conv(vals[i0])
            mp(conv_out, out, arg, ph, pw, psh, psw, ppt, ppl)
            _apply_act_inplace(out, act, backend)
        return run
    if kind == "depthwise":
        kernel = _depthwise_kernel(plan, b)

        def run(vals):
            kernel(vals[i0], out)
        return run
    if kind == "dense":
        w, bias = b.w, b.b
        code = _ACT_CODES.get(act)
        mm, ba = np.matmul, _elt.bias_act
        if bias is not None and code is not None:
            def run(vals):
                mm(vals[i0], w, out=out)
                ba(out, bias, code)
        else:
            def run(vals):
                mm(vals[i0], w, out=out)
                if bias is not None:
                    ba(out, bias, 0)
                _apply_act_inplace(out, act, backend)
        return run
    if kind == "maxpool":
        ph, pw = a["pool"]
        sh, sw = a["strides"]
        (pt, _), (pl, _) = a["pad"]
        arg = plan.iscratch[:out.size].reshape(out.shape)
        mp = _simd.maxpool_forward if f32 else _pool.maxpool_forward

        def run(vals):
            mp(vals[i0], out, arg, ph, pw, sh, sw, pt, pl)
        return run
    if kind == "avgpool":
        ph, pw = a["pool"]
        sh, sw = a["strides"]
        (pt, _), (pl, _) = a["pad"]
        ap = _pool.avgpool_forward

        def run(vals):
            ap(vals[i0], out, ph, pw, sh, sw, pt, pl)
        return run
    if kind == "gap":
        rows = out.reshape(out.shape[0], -1)   # (N, C), also under keepdims

        def run(vals):
            np.mean(vals[i0], axis=(1, 2), out=rows)
        return run
    if kind == "act":
        if act == "softmax" and len(b.out_shape) >= 2:
            rows_out = out.reshape(-1, out.shape[-1])
            sm = _elt.softmax_forward

            def run(vals):
                sm(vals[i0].reshape(rows_out.shape), rows_out)
            return run

        if act == "relu":   # one pass, no temporary
            flat, relu = out.reshape(-1), _elt.relu_forward

            def run(vals):
                relu(vals[i0].reshape(-1), flat)
            return run

        def run(vals):
            y, _ = activations.forward(backend, act, vals[i0])
            np.copyto(out, y)
        return run
    if kind == "affine":
        s, t = b.w, b.b

        def run(vals):
            np.multiply(vals[i0], s, out=out)
            np.add(out, t, out=out)
        return run
    if kind == "add":
        i1 = b.ins[1]
        if act in ("linear", "relu", "relu6"):   # one parallel pass, the ReLU included
            flat, add_act = out.reshape(-1), _elt.add_act

            def run(vals):
                add_act(vals[i0].reshape(-1), vals[i1].reshape(-1), flat, act)
            return run

        def run(vals):
            np.add(vals[i0], vals[i1], out=out)
            _apply_act_inplace(out, act, backend)
        return run
    raise AssertionError(kind)


def _bind_generic(plan, b):
    """A step on the active backend's ops (any backend): prebound, allocating."""
    op, a = b.op, b.op.attrs
    backend = plan.backend
    i0, o, kind = b.ins[0], b.out, op.kind
    if kind == "view":
        shape = b.out_shape

        def run(vals):
            vals[o] = vals[i0].reshape(shape)
        return run
    if kind == "layer":
        layer, ins = op.layer, b.ins
        if a.get("multiple"):
            def run(vals):
                vals[o] = layer.forward([vals[i] for i in ins], False)[0]
        else:
            def run(vals):
                vals[o] = layer.forward(vals[i0], False)[0]
        return run
    act = a.get("act")

    def activate(y):
        return y if act in (None, "linear") else activations.forward(backend, act, y)[0]
    if kind == "conv":
        w, bias, strides, pad = b.w, b.b, a["strides"], a["pad"]
        pool = a["pool"]
        if pool is not None:
            fused = getattr(backend.module, "conv2d_maxpool2d_forward", None)

            def run(vals):
                got = fused(vals[i0], w, bias, strides, pad, pool.pool_size, pool.strides,
                            pool._pad) if fused is not None else None
                if got is None:
                    y = backend.conv2d_forward(vals[i0], w, bias, strides, pad)[0]
                    y = backend.maxpool2d_forward(y, pool.pool_size, pool.strides, pool._pad)[0]
                else:
                    y = got[0]
                vals[o] = activate(y)
            return run

        def run(vals):
            vals[o] = activate(backend.conv2d_forward(vals[i0], w, bias, strides, pad)[0])
        return run
    if kind == "dense":
        w, bias = b.w, b.b

        def run(vals):
            vals[o] = activate(backend.dense_forward(vals[i0], w, bias)[0])
        return run
    if kind == "depthwise":
        w, bias, strides, pad = b.w, b.b, a["strides"], a["pad"]

        def run(vals):
            vals[o] = activate(backend.depthwise_conv2d_forward(vals[i0], w, bias, strides,
                                                                pad)[0])
        return run
    if kind in ("maxpool", "avgpool"):
        fwd = getattr(backend, "maxpool2d_forward" if kind == "maxpool" else "avgpool2d_forward")
        pool, strides, pad = a["pool"], a["strides"], a["pad"]

        def run(vals):
            vals[o] = fwd(vals[i0], pool, strides, pad)[0]
        return run
    if kind == "gap":
        shape = b.out_shape

        def run(vals):
            vals[o] = vals[i0].mean(axis=(1, 2)).reshape(shape)
        return run
    if kind == "act":
        def run(vals):
            vals[o] = activate(vals[i0])
        return run
    if kind == "affine":
        s, t = b.w, b.b

        def run(vals):
            vals[o] = vals[i0] * s + t
        return run
    if kind == "add":
        i1 = b.ins[1]

        def run(vals):
            vals[o] = activate(vals[i0] + vals[i1])
        return run
    raise AssertionError(kind)


def _plan_buffer(self, v):
    """The arena view holding value ``v`` (its final offset)."""
    off = self._placed[v]
    shape = self._shapes[v]
    size = int(np.prod(shape))
    return self.arena[off:off + size].reshape(shape)


InferencePlan._buffer = _plan_buffer


# =========================================================================== running
def _as_inputs(x, n_inputs, dtype):
    if type(x) is np.ndarray and n_inputs == 1 and x.dtype == dtype and x.flags.c_contiguous:
        return [x]   # the common case, without a copy or a conversion
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(xs) != n_inputs:
        raise ValueError(f"the plan takes {n_inputs} input array(s), got {len(xs)}")
    out = []
    for a in xs:
        a = np.asarray(a)
        if a.dtype != dtype or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a, dtype=dtype)
        out.append(a)
    return out


def _call(self, x, _blocking=True):
    """The outputs (a list of fresh NumPy arrays) on ``x`` (an array, or a list of
    arrays for several inputs). Calls from several threads run one at a time (the
    automatic path of predict does not wait: it runs layer by layer meanwhile)."""
    specs = self.model._input_specs
    xs = _as_inputs(x, len(specs), self.dtype)
    n = len(xs[0])
    for a, spec in zip(xs, specs):
        if a.shape[1:] != tuple(spec[1:]) or len(a) != n:
            raise ValueError(f"the plan of model {self.model.name!r} takes inputs of shape "
                             f"(batch,) + {tuple(spec[1:])}, got {a.shape}")
    if self.batch_size is None:
        plan = self._by_size.get(n)
        if plan is None:
            if len(self._by_size) >= _MAX_SIZES:
                self._by_size.pop(next(iter(self._by_size)))
            plan = self._by_size[n] = InferencePlan(self.model, n, self.backend, self._want,
                                                         self._weak)
        return plan._run(xs, _blocking)
    if n != self.batch_size:
        raise ValueError(f"this inference plan of model {self.model.name!r} was compiled for "
                         f"batch_size={self.batch_size}, got a batch of {n}; compile another "
                         f"(model.compile_inference(batch_size={n})) or use "
                         f"compile_inference(batch_size=None), which plans per batch size")
    return self._run(xs, _blocking)


def _run(self, xs, blocking=True):
    if not self._lock.acquire(blocking):
        return None
    try:
        return _run_locked(self, xs, not blocking)
    finally:
        self._lock.release()


def _run_locked(self, xs, auto):
    if self.model._graph is not self._graph:
        self._graph = self.model._graph
        self._compile()
        self._pending = False
    elif not self.guard.fresh():
        if auto:
            # The weights changed since the last call. On predict's automatic path the
            # plan waits until they stay the same for one call before recompiling (a
            # callback predicting after every optimizer step would otherwise recompile
            # each time): meanwhile the model runs layer by layer.
            self.guard.resnap()
            self._pending = True
            return None
        self._compile()
        self._pending = False
    elif self._pending:
        self._compile()
        self._pending = False
    if self._c is not None:
        return self._c.run(xs)
    vals = list(self._template)
    for v, a in zip(self.input_ids, xs):
        vals[v] = a
    for fn in self._fns:
        fn(vals)
    return [np.array(vals[v], copy=True) for v in self.output_ids]


def _template(self):
    n_vals = 1 + max([v for op in self.ops for v in op.ins + [op.out]]
                     + list(self.input_ids) + list(self.output_ids))
    vals = [None] * n_vals
    for v in self._placed:
        vals[v] = self._buffer(v)
    for v, r in self._alias.items():
        if r in self._placed:
            vals[v] = vals[r].reshape(self._shapes[v])
    return vals


_MAX_SIZES = 4   # per-size plans kept per model (each packs its own weights)
InferencePlan.__call__ = _call
InferencePlan._run = _run
_orig_bind = InferencePlan._bind


def _bind_and_template(self, n):
    self._placed = {}
    _orig_bind(self, n)
    self._template = _template(self)


InferencePlan._bind = _bind_and_template


def _describe(self):
    if self.batch_size is None:
        return (f"<InferencePlan of {self.model.name!r}, per batch size "
                f"(compiled: {sorted(self._by_size)})>")
    return (f"<InferencePlan of {self.model.name!r}, batch {self.batch_size}, runner "
            f"{self.runner!r}, {len(self.steps)} steps, arena {self.arena_bytes} bytes>")


InferencePlan.__repr__ = _describe


# =========================================================================== entry points
def compile_inference(model, batch_size=None, runner="auto", _weak=False) -> InferencePlan:
    """The inference plan of ``model`` (see the module doc) on the active backend.

    ``batch_size``: a positive int (the plan then takes only that batch size) or None (the
    plan specialises per batch size). ``runner``: 'auto' (the C runner where it applies,
    else the Python plan), 'c' (InferencePlanError where it does not apply) or 'python'.
    Raises InferencePlanError (a ValueError) naming what the plan cannot hold, ValueError
    for a bad argument or an unbuilt model.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"compile_inference: batch_size must be a positive int or None, "
                         f"got {batch_size!r}")
    if runner not in ("auto", "c", "python"):
        raise ValueError(f"compile_inference: runner must be 'auto', 'c' or 'python', got "
                         f"{runner!r}")
    if not model.built:
        raise ValueError(f"compile_inference: model {model.name!r} is not built yet; build it "
                         f"(model.build(input_shape), or call it on data) first")
    backend = backends.current()
    if getattr(backend.module, "DEVICE_RESIDENT", False):
        raise InferencePlanError(
            f"compile_inference: the {backend.name!r} backend keeps arrays on a device; the "
            f"inference plan runs on the CPU backends (predict runs layer by layer there)")
    return InferencePlan(model, None if batch_size is None else int(batch_size), backend,
                         runner, _weak)


_cache = {}   # id(model) -> (weakref to the model, graph, backend name, plan or refusal)


def _forget(ref, key, cache=_cache):
    # Only this model's entry: a new model may already reuse the dead one's id.
    entry = cache.get(key)
    if entry is not None and entry[0] is ref:
        del cache[key]


def infer(model, xs):
    """``model``'s outputs on ``xs`` (the list of input arrays predict checked) through its
    cached plan (a list of NumPy arrays), or None when a plan does not apply (the caller
    then runs layer by layer): the automatic path of predict / predict_on_batch /
    model(x). A refusal is remembered until the model's graph or the backend changes;
    the cache holds models weakly."""
    if not _enabled():
        return None
    graph = model._graph
    if graph is None:
        return None
    backend = backends.current()
    key = id(model)
    entry = _cache.get(key)
    if entry is None or entry[0]() is not model or entry[1] is not graph \
            or entry[2] != backend.name:
        if getattr(backend.module, "DEVICE_RESIDENT", False):
            return None
        try:
            plan = compile_inference(model, _weak=True)
        except InferencePlanError as exc:
            plan = exc
        entry = _cache[key] = (weakref.ref(model, lambda r, k=key: _forget(r, k)), graph,
                               backend.name, plan)
    plan = entry[3]
    if isinstance(plan, Exception):
        return None
    x0 = xs[0]
    if len(xs) == 1 and type(x0) is np.ndarray and x0.dtype == plan.dtype \
            and x0.flags.c_contiguous:
        sub = plan._by_size.get(len(x0))
        if sub is not None:   # the steady state: no conversion, no dispatch
            return sub._run(xs, False)
    return plan.__call__(xs, False)
