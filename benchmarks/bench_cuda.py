"""Milliseconds per train step of the four standard models (fastcnn.models) on the cuda
backend, against the best CPU backend and against PyTorch on the same GPU.

    NUMBA_ENABLE_CUDASIM=0 python benchmarks/bench_cuda.py [--models tutorial,lenet]
        [--steps 20] [--cpu-steps 3] [--cpu-backends auto,numba,cython,im2col]
        [--no-cpu] [--json results.json]

For a real GPU only: without one (or with the CUDA simulator on, whose timings mean
nothing) it prints ``SKIPPED: <reason>`` and exits with status 0, so a benchmark run on a
CPU machine is not a failure.

What a step is, on every side: forward, loss, backward, one Adam update, and the loss read
back as a Python float (``train_on_batch``; PyTorch: zero_grad, forward, loss, backward,
step, ``.item()``), which also synchronises the GPU. On cuda the steps run inside one
``fastcnn._device.scope`` (weights and Adam state stay on the device, as in ``fit``); the
first steps compile the kernels and are not timed. Each figure is the median of the timed
steps. The PyTorch model is built from the same layer list (NCHW, the softmax/sigmoid head
fused into its loss as fastcnn fuses it); its parameter count is checked to be the same.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import fastcnn  # noqa: E402
from fastcnn import _device, backends, models  # noqa: E402

# (builder name, batch, loss): the batches of the CPU benchmark suite (benchmarks/_cases.py).
CASES = {
    "tutorial": (64, "sparse_categorical_crossentropy"),
    "lenet": (128, "sparse_categorical_crossentropy"),
    "fashion": (128, "sparse_categorical_crossentropy"),
    "catsdogs": (32, "binary_crossentropy"),
}
INPUT_SHAPES = {"tutorial": (28, 28, 1), "lenet": (28, 28, 1), "fashion": (28, 28, 1),
                "catsdogs": (150, 150, 3)}
CPU_BACKENDS = ("auto", "numba", "cython", "im2col")
WARMUP_STEPS = 2


def skip_reason():
    """None when a real GPU runs the cuda backend, else why this benchmark cannot run."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return ("NUMBA_ENABLE_CUDASIM is on: the CUDA simulator runs kernels as Python "
                "threads, so its timings mean nothing; run with NUMBA_ENABLE_CUDASIM=0 on a "
                "GPU machine")
    if "cuda" not in backends.available():
        return f"the cuda backend is unavailable: {backends.unavailable().get('cuda')}"
    from fastcnn.backends import cuda as cb

    if cb.simulated():
        return "the cuda backend runs in the CUDA simulator: no real GPU to time"
    return None


def data(name, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch,) + INPUT_SHAPES[name], dtype=np.float32)
    if CASES[name][1] == "binary_crossentropy":
        return x, rng.integers(0, 2, (batch, 1)).astype(np.float32)
    return x, rng.integers(0, 10, batch)


def build(name):
    fastcnn.utils.set_random_seed(0)
    model = models.BUILDERS[name](INPUT_SHAPES[name], 2 if name == "catsdogs" else 10)
    model.compile("adam", CASES[name][1])
    return model


def time_steps(step, steps, sync=lambda: None):
    for _ in range(WARMUP_STEPS):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_fastcnn(name, backend, steps):
    model = build(name)
    x, y = data(name, CASES[name][0])
    with backends.use_backend(backend), _device.scope(model):
        return time_steps(lambda: model.train_on_batch(x, y), steps)


# ------------------------------------------------------------------------------ PyTorch
def torch_cuda():
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device (a CPU-only build?)"
    return torch, ""


def torch_model(torch, model):
    """nn.Sequential with the fastcnn model's layers (NCHW), logits out."""
    from torch import nn

    from fastcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    mods = []
    for i, layer in enumerate(model.layers):
        head = i == len(model.layers) - 1
        if isinstance(layer, Conv2D):
            (top, bottom), (left, right) = layer._pad
            if (top, left) != (bottom, right):
                mods.append(nn.ZeroPad2d((left, right, top, bottom)))
                top = left = 0
            mods.append(nn.Conv2d(layer.kernel.shape[2], layer.filters, layer.kernel_size,
                                  layer.strides, (top, left), bias=layer.use_bias))
        elif isinstance(layer, MaxPooling2D):
            if layer._pad != ((0, 0), (0, 0)):
                raise NotImplementedError("padded max pooling in the torch peer")
            mods.append(nn.MaxPool2d(layer.pool_size, layer.strides))
        elif isinstance(layer, Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, Dense):
            mods.append(nn.Linear(layer.kernel.shape[0], layer.units, bias=layer.use_bias))
        else:
            raise NotImplementedError(f"{type(layer).__name__} in the torch peer")
        act = getattr(layer, "activation", "linear")
        if act in acts and not head:
            mods.append(acts[act]())
    net = nn.Sequential(*mods)
    n_torch = sum(p.numel() for p in net.parameters())
    if n_torch != model.count_params():
        raise AssertionError(f"torch peer has {n_torch} parameters, fastcnn "
                             f"{model.count_params()}")
    return net


def time_torch(torch, name, steps):
    model = build(name)
    net = torch_model(torch, model).cuda()
    x, y = data(name, CASES[name][0])
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).cuda()
    if CASES[name][1] == "binary_crossentropy":
        yt, loss_fn = torch.from_numpy(y).cuda(), torch.nn.BCEWithLogitsLoss()
    else:
        yt, loss_fn = torch.from_numpy(y.astype(np.int64)).cuda(), torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return time_steps(step, steps, torch.cuda.synchronize)


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES),
                        help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--steps", type=int, default=20, help="timed GPU steps per model")
    parser.add_argument("--cpu-steps", type=int, default=3, help="timed CPU steps per model")
    parser.add_argument("--cpu-backends", default=",".join(CPU_BACKENDS),
                        help="CPU backends to time; the fastest is 'best CPU'")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU backends")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(CASES)}")

    reason = skip_reason()
    if reason:
        print(f"SKIPPED: {reason}")
        return 0
    from numba import cuda

    torch, torch_why = torch_cuda()
    device = cuda.get_current_device().name
    device = device.decode() if isinstance(device, bytes) else device
    print(f"GPU: {device}; fastcnn {fastcnn.__version__}; torch peer: "
          f"{torch.__version__ if torch else 'skipped (' + torch_why + ')'}")
    cpu = [] if args.no_cpu else [b for b in args.cpu_backends.split(",")
                                  if b in backends.available()]
    rows = []
    for name in names:
        batch = CASES[name][0]
        row = {"model": name, "batch": batch,
               "cuda_ms": time_fastcnn(name, "cuda", args.steps)}
        cpu_ms = {b: time_fastcnn(name, b, args.cpu_steps) for b in cpu}
        if cpu_ms:
            best = min(cpu_ms, key=cpu_ms.get)
            row.update(cpu_ms=cpu_ms, best_cpu=best, best_cpu_ms=cpu_ms[best])
        if torch is not None:
            row["torch_cuda_ms"] = time_torch(torch, name, args.steps)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| model | batch | cuda ms/step | best CPU ms/step | CPU / cuda | torch CUDA "
          "ms/step | cuda / torch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cpu_cell = (f"{r['best_cpu_ms']:.2f} ({r['best_cpu']})" if "best_cpu" in r else "-")
        ratio = f"{r['best_cpu_ms'] / r['cuda_ms']:.1f}x" if "best_cpu" in r else "-"
        t_cell = f"{r['torch_cuda_ms']:.2f}" if "torch_cuda_ms" in r else "-"
        t_ratio = f"{r['cuda_ms'] / r['torch_cuda_ms']:.1f}x" if "torch_cuda_ms" in r else "-"
        print(f"| {r['model']} | {r['batch']} | {r['cuda_ms']:.2f} | {cpu_cell} | {ratio} | "
              f"{t_cell} | {t_ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": device, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
