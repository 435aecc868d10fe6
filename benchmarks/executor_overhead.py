"""The Python cost of the graph executor, per step, at batch 1.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python benchmarks/executor_overhead.py [--repeat 2000]

Three numbers, medians of ``--repeat`` calls after a warm-up:

* **executor per step**: a chain of identity layers (``Activation('linear')``, whose
  forward returns its input) run by ``executor.Program.forward``, divided by the number of
  steps: the slot bookkeeping and the call of a step, nothing else;
* **inference, batch 1** of the Fashion-MNIST tutorial CNN: ``model.predict_on_batch``
  (checks, executor, kernels) against the same layers' ``forward`` called in a plain Python
  loop on the same arrays (kernels only, what a hand-written loop costs): the difference is
  what the model and the executor add;
* **train step, batch 1**, likewise: ``train_on_batch`` against a hand loop of the layers'
  forwards, the fused loss, the backwards and the optimizer step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import fastcnn  # noqa: E402, I001
import numpy as np  # noqa: E402

from fastcnn import backends, executor, models  # noqa: E402
from fastcnn.layers import Activation  # noqa: E402


def median_us(fn, repeat):
    for _ in range(max(10, repeat // 10)):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def identity_chain(steps):
    inp = fastcnn.Input((4,))
    x = inp
    for _ in range(steps):
        x = Activation("linear")(x)
    model = fastcnn.Model(inp, x)
    nodes, ins, outs = model._graph
    return executor.Program(nodes, ins, outs, fuse=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=2000)
    args = p.parse_args(argv)
    x1 = np.zeros((1, 4), np.float32)
    rows = []
    chain = identity_chain(50)
    per_step = median_us(lambda: chain.forward([x1], False, keep=False), args.repeat) / 50
    per_step_train = median_us(lambda: chain.forward([x1], True), args.repeat) / 50
    rows.append(("executor, per step (identity layers)", per_step, per_step_train))

    fastcnn.set_random_seed(0)
    model = models.fashion()
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((1, 28, 28, 1)).astype(np.float32)
    y = np.array([3])
    layers = model.layers

    def hand_inference():
        h = x
        for layer in layers:
            h, _ = layer.forward(h, False)
        return h

    loss = model._per_output_losses()[0]

    def hand_train():
        h, ctxs = x, []
        for layer in layers[:-1]:
            h, ctx = layer.forward(h, True)
            ctxs.append(ctx)
        h, ctx = layers[-1].forward(h, True, activate=False)
        ctxs.append(ctx)
        _, d = loss.compute(backends.current(), h, y, True)
        grads = []
        for layer, ctx in zip(reversed(layers), reversed(ctxs)):
            d, g = layer.backward(d, ctx, layer is not layers[0])
            grads = list(g) + grads
        model.optimizer.apply(grads, plan.train_vars)

    plan = model._prepare_training()
    infer = median_us(lambda: model.predict_on_batch(x), args.repeat)
    infer_hand = median_us(hand_inference, args.repeat)
    train = median_us(lambda: model.train_on_batch(x, y), args.repeat // 2)
    train_hand = median_us(hand_train, args.repeat // 2)
    print(f"backend {backends.get_backend()}, threads: "
          f"OMP {os.environ.get('OMP_NUM_THREADS', '-')}, "
          f"NUMBA {os.environ.get('NUMBA_NUM_THREADS', '-')}\n")
    print("| what | model call (us) | hand-written loop (us) | added by model + executor (us) |")
    print("|---|---|---|---|")
    print(f"| executor, per step (identity layers; inference / training) | {rows[0][1]:.2f} "
          f"| {rows[0][2]:.2f} | - |")
    print(f"| Fashion-MNIST CNN, predict_on_batch, batch 1 | {infer:.0f} | {infer_hand:.0f} "
          f"| {infer - infer_hand:.0f} |")
    print(f"| Fashion-MNIST CNN, train_on_batch, batch 1 | {train:.0f} | {train_hand:.0f} "
          f"| {train - train_hand:.0f} |")



if __name__ == "__main__":
    main()
