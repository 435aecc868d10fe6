"""What the benchmarks measure, defined once: shapes, models, FLOP counts, peers.

The op benchmarks, the train-step benchmarks and ``memory.py`` all read this module, so a
shape or a model can never differ between fastcnn and its PyTorch peer, or between the
timing and the memory figures.

Nothing here imports torch at module level: torch is an optional peer (the ``bench``
extra) and every torch helper imports it lazily.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fastcnn
from fastcnn import backends, shapes

DTYPE = np.float32
SEED = 20240601

TORCH_VERSION = "2.13.0"
TORCH_MISSING = (f"PyTorch peer skipped: torch is not installed "
                 f"(pip install torch=={TORCH_VERSION}, the 'bench' extra)")
REFERENCE_TOO_SLOW = (
    "the 'reference' backend is the readable oracle (Python loops), far too slow to time "
    "on this case; it is timed only on the small cases: conv shape A2 (shape A at batch "
    "2), the 'fashion' pool and dense shapes and the from-scratch CNN at batch 1")


# --------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class ConvShape:
    """DESIGN.md section 6: (N, C_in, H, W, C_out, k, stride, padding), run as NHWC/HWIO."""

    id: str
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    k: int
    stride: int
    padding: str
    reference_ok: bool = False  # small enough for the reference oracle

    @property
    def geometry(self):
        """``((Ho, Wo), ((top, bottom), (left, right)))`` from fastcnn.shapes (the one rule)."""
        return shapes.window_output_shape((self.h, self.w), (self.k, self.k),
                                          (self.stride, self.stride), self.padding)

    @property
    def flops_forward(self) -> int:
        (ho, wo), _ = self.geometry
        return shapes.conv_flops(self.n, ho, wo, self.k, self.k, self.c_in, self.c_out)

    def describe(self) -> str:
        (ho, wo), _ = self.geometry
        return (f"{self.id}: x {self.n}x{self.h}x{self.w}x{self.c_in} * "
                f"{self.k}x{self.k}x{self.c_in}x{self.c_out} s{self.stride} {self.padding}"
                f" -> {self.n}x{ho}x{wo}x{self.c_out}")

    def arrays(self, rng):
        """x (NHWC), w (HWIO), b and an upstream gradient dy of the output's shape."""
        (ho, wo), _ = self.geometry
        x = rng.standard_normal((self.n, self.h, self.w, self.c_in), dtype=DTYPE)
        w = rng.standard_normal((self.k, self.k, self.c_in, self.c_out), dtype=DTYPE)
        w *= DTYPE(1.0 / np.sqrt(self.k * self.k * self.c_in))
        b = rng.standard_normal(self.c_out, dtype=DTYPE)
        dy = rng.standard_normal((self.n, ho, wo, self.c_out), dtype=DTYPE)
        return x, w, b, dy


CONV_SHAPES = [
    # A2 is not a standard shape: shape A at batch 2, where even the reference oracle
    # finishes quickly, so the oracle's speed is on record next to the fast backends.
    ConvShape("A2", 2, 1, 28, 28, 64, 3, 1, "valid", reference_ok=True),
    ConvShape("A", 64, 1, 28, 28, 64, 3, 1, "valid"),
    ConvShape("B", 64, 64, 13, 13, 64, 3, 1, "valid"),
    ConvShape("C", 16, 3, 150, 150, 32, 3, 1, "valid"),
    ConvShape("D", 32, 64, 56, 56, 64, 3, 1, "same"),
    ConvShape("E", 32, 32, 32, 32, 64, 5, 2, "same"),
]


@dataclass(frozen=True)
class PoolShape:
    """A pooling case: NHWC input, square window, stride = window, 'valid'."""

    id: str
    n: int
    h: int
    w: int
    c: int
    pool: int = 2
    reference_ok: bool = False

    @property
    def geometry(self):
        return shapes.window_output_shape((self.h, self.w), (self.pool, self.pool),
                                          (self.pool, self.pool), "valid", what="pool_size")

    def describe(self) -> str:
        (ho, wo), _ = self.geometry
        return (f"{self.id}: x {self.n}x{self.h}x{self.w}x{self.c} pool {self.pool} "
                f"-> {self.n}x{ho}x{wo}x{self.c}")

    def arrays(self, rng):
        (ho, wo), _ = self.geometry
        x = rng.standard_normal((self.n, self.h, self.w, self.c), dtype=DTYPE)
        dy = rng.standard_normal((self.n, ho, wo, self.c), dtype=DTYPE)
        return x, dy


POOL_SHAPES = [
    # after the first conv of the Fashion-MNIST CNN, and of the cats-vs-dogs CNN
    PoolShape("fashion1", 64, 26, 26, 64, reference_ok=True),
    PoolShape("catsdogs1", 32, 148, 148, 32),
]


@dataclass(frozen=True)
class DenseShape:
    id: str
    n: int
    d_in: int
    units: int
    reference_ok: bool = False

    @property
    def flops_forward(self) -> int:
        return 2 * self.n * self.d_in * self.units

    def describe(self) -> str:
        return f"{self.id}: x {self.n}x{self.d_in} * {self.d_in}x{self.units}"

    def arrays(self, rng):
        x = rng.standard_normal((self.n, self.d_in), dtype=DTYPE)
        w = rng.standard_normal((self.d_in, self.units), dtype=DTYPE)
        w *= DTYPE(1.0 / np.sqrt(self.d_in))
        b = rng.standard_normal(self.units, dtype=DTYPE)
        dy = rng.standard_normal((self.n, self.units), dtype=DTYPE)
        return x, w, b, dy


DENSE_SHAPES = [
    # the first Dense of the Fashion-MNIST CNN (batch 128) and of the cats-vs-dogs CNN
    DenseShape("fashion", 128, 5 * 5 * 64, 128, reference_ok=True),
    DenseShape("catsdogs", 32, 17 * 17 * 128, 128),
]


# --------------------------------------------------------------------------- models
# A model is a list of layer specs that both frameworks are built from, so the fastcnn
# model and its PyTorch peer cannot drift apart:
#   ("conv", filters, kernel, padding, activation, use_bias)
#   ("maxpool", size) / ("avgpool", size) / ("flatten",)
#   ("dense", units, activation)
@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    input_shape: tuple  # (H, W, C)
    layers: tuple
    loss: str           # a fastcnn / Keras loss name
    classes: int        # 1 for a sigmoid head

    @property
    def binary(self) -> bool:
        return self.loss == "binary_crossentropy"


MODELS = {
    "scratch": ModelSpec(
        "scratch", "from-scratch tutorial CNN", (28, 28, 1),
        (("conv", 8, 3, "valid", None, False), ("maxpool", 2), ("flatten",),
         ("dense", 10, "softmax")),
        "sparse_categorical_crossentropy", 10),
    # LeNet-5 as usually re-implemented today (Keras tutorials): 'same' first conv so that a
    # 28x28 MNIST digit plays the role of the original 32x32 input, tanh activations and
    # average pooling as in LeCun et al. 1998, a softmax head instead of RBF units.
    "lenet5": ModelSpec(
        "lenet5", "LeNet-5 (tanh, avg-pool, same first conv)", (28, 28, 1),
        (("conv", 6, 5, "same", "tanh", True), ("avgpool", 2),
         ("conv", 16, 5, "valid", "tanh", True), ("avgpool", 2), ("flatten",),
         ("dense", 120, "tanh"), ("dense", 84, "tanh"), ("dense", 10, "softmax")),
        "sparse_categorical_crossentropy", 10),
    "fashion": ModelSpec(
        "fashion", "Fashion-MNIST tutorial CNN", (28, 28, 1),
        (("conv", 64, 3, "valid", "relu", True), ("maxpool", 2),
         ("conv", 64, 3, "valid", "relu", True), ("maxpool", 2), ("flatten",),
         ("dense", 128, "relu"), ("dense", 10, "softmax")),
        "sparse_categorical_crossentropy", 10),
    # DESIGN.md section 6: Conv32/64/128 + pools, Dense128, Dense512, Dense1 sigmoid.
    "catsdogs": ModelSpec(
        "catsdogs", "cats-vs-dogs CNN", (150, 150, 3),
        (("conv", 32, 3, "valid", "relu", True), ("maxpool", 2),
         ("conv", 64, 3, "valid", "relu", True), ("maxpool", 2),
         ("conv", 128, 3, "valid", "relu", True), ("maxpool", 2), ("flatten",),
         ("dense", 128, "relu"), ("dense", 512, "relu"), ("dense", 1, "sigmoid")),
        "binary_crossentropy", 1),
}

# (model id, batch): issue 7's train-step cases, then the inference cases.
TRAIN_CASES = [("scratch", 1), ("scratch", 64), ("lenet5", 64), ("lenet5", 128),
               ("fashion", 64), ("fashion", 128), ("catsdogs", 32)]
INFER_CASES = [("fashion", 1), ("fashion", 128)]
REFERENCE_TRAIN_CASES = {("scratch", 1)}


def model_flops(spec: ModelSpec, batch: int) -> int:
    """Conv + dense forward FLOPs of one batch (pools and activations not counted)."""
    h, w, c = spec.input_shape
    total = 0
    for layer in spec.layers:
        kind = layer[0]
        if kind == "conv":
            _, filters, k, padding, _, _ = layer
            (h, w), _ = shapes.window_output_shape((h, w), (k, k), (1, 1), padding)
            total += shapes.conv_flops(batch, h, w, k, k, c, filters)
            c = filters
        elif kind in ("maxpool", "avgpool"):
            (h, w), _ = shapes.window_output_shape((h, w), (layer[1],) * 2, (layer[1],) * 2,
                                                   "valid", what="pool_size")
        elif kind == "flatten":
            c, h, w = h * w * c, 1, 1
        elif kind == "dense":
            total += 2 * batch * c * layer[1]
            c = layer[1]
    return total


def model_data(spec: ModelSpec, batch: int, seed: int = SEED):
    """Fixed random inputs (NHWC float32) and labels (int classes, or (N, 1) 0/1 floats)."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch,) + spec.input_shape, dtype=DTYPE)
    if spec.binary:
        y = rng.integers(0, 2, size=(batch, 1)).astype(DTYPE)
    else:
        y = rng.integers(0, spec.classes, size=batch)
    return x, y


def build_fastcnn(spec: ModelSpec, seed: int = SEED):
    """The compiled fastcnn.Sequential (Adam, Keras defaults; no metrics, as the peer)."""
    from fastcnn.layers import AveragePooling2D, Conv2D, Dense, Flatten, MaxPooling2D

    fastcnn.set_random_seed(seed)
    layers = []
    for i, layer in enumerate(spec.layers):
        extra = {"input_shape": spec.input_shape} if i == 0 else {}
        kind = layer[0]
        if kind == "conv":
            _, filters, k, padding, act, bias = layer
            layers.append(Conv2D(filters, k, padding=padding, activation=act, use_bias=bias,
                                 **extra))
        elif kind == "maxpool":
            layers.append(MaxPooling2D(layer[1], **extra))
        elif kind == "avgpool":
            layers.append(AveragePooling2D(layer[1], **extra))
        elif kind == "flatten":
            layers.append(Flatten(**extra))
        elif kind == "dense":
            layers.append(Dense(layer[1], activation=layer[2], **extra))
        else:
            raise ValueError(f"unknown layer kind {kind!r} in model {spec.id!r}")
    model = fastcnn.Sequential(layers, name=spec.id)
    model.compile(optimizer=fastcnn.optimizers.Adam(learning_rate=1e-3), loss=spec.loss)
    return model


def model_backends() -> list:
    """Backends a whole model is timed on: every available one, plus 'auto' when the
    registry accepts it as a name without listing it (issue 5's default backend)."""
    names = list(backends.available())
    if "auto" not in names:
        try:
            with backends.use_backend("auto"):
                pass
        except ValueError:
            pass
        else:
            names.append("auto")
    return names


# --------------------------------------------------------------------------- ceiling
# fastcnn's own GEMM, the FLOP side of the rooflines beside NumPy's: a 1x1 conv of
# MobileNetV2's 14x14 stage (8 images, 384 -> 64 channels: a 1568 x 384 by 384 x 64
# product) on the cython backend. NumPy's BLAS alone can understate what the machine does:
# on a Zen 5 (AVX-512, 2026-12-07) whose environment sets OPENBLAS_CORETYPE=Haswell, NumPy's
# OpenBLAS ran its AVX2 kernels, 102-116 GFLOP/s at 2048^3, while this conv ran at 195-228
# GFLOP/s, so every compute-bound share came out near 200%.
FASTCNN_GEMM_CASE = (8, 14, 384, 64)


def fastcnn_gemm_gflops(rounds: int = 30) -> float | None:
    """Best GFLOP/s of FASTCNN_GEMM_CASE on the cython backend (None where it is missing)."""
    import time

    if "cython" not in backends.available():
        return None
    be = backends.get("cython")
    n, h, c, k = FASTCNN_GEMM_CASE
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, h, h, c), dtype=DTYPE)
    w = (rng.standard_normal((1, 1, c, k), dtype=DTYPE) * 0.05).astype(DTYPE)
    b = np.zeros(k, DTYPE)
    be.conv2d_forward(x, w, b, (1, 1), ((0, 0), (0, 0)))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        be.conv2d_forward(x, w, b, (1, 1), ((0, 0), (0, 0)))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n * h * h * c * k / best / 1e9


def flop_ceiling(numpy_gflops: float) -> tuple:
    """The rooflines' FLOP ceiling from NumPy's SGEMM rate: ``(ceiling, fastcnn_gflops,
    which)``, the better of that rate and fastcnn's own GEMM (None where cython is missing),
    ``which`` naming it ("numpy" or "fastcnn")."""
    own = fastcnn_gemm_gflops()
    ceiling = max(numpy_gflops, own or 0.0)
    return ceiling, own, "fastcnn" if ceiling > numpy_gflops else "numpy"


# --------------------------------------------------------------------------- torch
def torch_or_none():
    """The torch module, or None when the optional peer is not installed.

    Import it only after benchmarks/conftest.py pinned the thread variables (the test
    modules and memory.py do), so its OpenMP/MKL pools start with the pinned count.
    """
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_conv_padding(shape: ConvShape):
    """PyTorch padding for a fastcnn conv case, with the same output size and FLOPs.

    TensorFlow's 'same' may pad one more row at the bottom/right than at the top; torch
    pads symmetrically. A symmetric pad that gives the same output size does exactly the
    same work (only which border rows are zeros differs), which is what a PyTorch user
    would write, so that is the peer. Returns ``(padding, explicit)``: ``explicit`` is an
    F.pad tuple when no symmetric pad matches (then the peer pays for the copy too).
    """
    (ho, wo), ((pt, pb), (pl, pr)) = shape.geometry
    for ph, pw in ((pt, pl), (pb, pr)):
        if ((shape.h + 2 * ph - shape.k) // shape.stride + 1,
                (shape.w + 2 * pw - shape.k) // shape.stride + 1) == (ho, wo):
            return (ph, pw), None
    return (0, 0), (pl, pr, pt, pb)


def build_torch(spec: ModelSpec, seed: int = SEED):
    """``(model, loss_fn)``: nn.Sequential from the same spec, with logits out.

    The softmax/sigmoid head is left to the loss (CrossEntropyLoss / BCEWithLogitsLoss),
    the idiomatic PyTorch form and the same fusion fastcnn's compile() makes.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    h, w, c = spec.input_shape
    mods = []
    last = len(spec.layers) - 1
    for i, layer in enumerate(spec.layers):
        kind, act = layer[0], None
        if kind == "conv":
            _, filters, k, padding, act, bias = layer
            (h2, w2), ((pt, pb), (pl, pr)) = shapes.window_output_shape(
                (h, w), (k, k), (1, 1), padding)
            if pt != pb or pl != pr:
                raise ValueError(f"model {spec.id!r}: asymmetric 'same' padding has no "
                                 f"nn.Conv2d equivalent")
            mods.append(nn.Conv2d(c, filters, k, padding=(pt, pl), bias=bias))
            h, w, c = h2, w2, filters
        elif kind in ("maxpool", "avgpool"):
            size = layer[1]
            (h, w), _ = shapes.window_output_shape((h, w), (size, size), (size, size),
                                                   "valid", what="pool_size")
            mods.append(nn.MaxPool2d(size) if kind == "maxpool" else nn.AvgPool2d(size))
        elif kind == "flatten":
            mods.append(nn.Flatten())
            c, h, w = h * w * c, 1, 1
        elif kind == "dense":
            mods.append(nn.Linear(c, layer[1]))
            c, act = layer[1], layer[2]
        else:
            raise ValueError(f"unknown layer kind {kind!r} in model {spec.id!r}")
        if act not in (None, "linear") and i != last:
            mods.append(acts[act]())
    model = nn.Sequential(*mods)
    loss_fn = nn.BCEWithLogitsLoss() if spec.binary else nn.CrossEntropyLoss()
    return model, loss_fn


def torch_model_data(spec: ModelSpec, batch: int, seed: int = SEED):
    """The same samples as :func:`model_data`, NCHW float32 / int64 or float labels."""
    import torch

    x, y = model_data(spec, batch, seed)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y) if spec.binary else torch.from_numpy(y.astype(np.int64))
    return xt, yt


def torch_train_step(model, loss_fn, optimizer, xt, yt):
    """One step as a PyTorch user writes it; ``.item()`` as train_on_batch returns a float."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(xt), yt)
    loss.backward()
    optimizer.step()
    return loss.item()


def torch_adam(model):
    """Adam with Keras's defaults (fastcnn's), PyTorch's default CPU implementation."""
    import torch

    return torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
