"""The classic architectures' inference (``fastcnn.applications``: MobileNetV2 by default,
ResNet50, VGG16, InceptionV3; 224x224 (InceptionV3 299x299), ImageNet head) against ONNX
Runtime on the file fastcnn's ``export_onnx`` writes for the same model.

    OMP_NUM_THREADS=1 FASTCNN_NUM_THREADS=1 python benchmarks/applications_predict.py --threads 1
    python benchmarks/applications_predict.py --threads 2 --batch 8 --rounds 20 --model resnet50

Both in ONE process, calls alternating (fastcnn's ``predict_on_batch``, which runs its
compiled inference plan, then ONNX Runtime's ``InferenceSession.run`` with
ORT_ENABLE_ALL, ``intra_op_num_threads`` = --threads, one inter-op thread, its threads not
spinning between runs), after a check
that both give the same probabilities (max abs difference <= 1e-5 + 1e-3 x max). Random
weights from seed 0, the BatchNormalization statistics moved off 0 and 1 so that folding
them shows. ``--before`` also times the plan as it was before 2026-12-07's night: the
depthwise steps left to the layers' own forward (depthwise, BatchNormalization, ReLU6 and
the ZeroPadding2D as separate passes), the convs' ReLU6 a pass of its own, no chains of
steps over chunks of images, the Python plan's 3x3 convs direct (not Winograd); the
direct conv's whole-row blocks, a kernel change, stay in. Prints medians and ratios (ORT / fastcnn: above 1, fastcnn is
faster). Set the thread variables before Python starts, as above.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))

import fastcnn  # noqa: E402  (before NumPy: thread settings)
import numpy as np  # noqa: E402


#: --model: (the fastcnn.applications name, the input size)
MODELS = {"mobilenet_v2": ("MobileNetV2", 224), "resnet50": ("ResNet50", 224),
          "vgg16": ("VGG16", 224), "inception_v3": ("InceptionV3", 299)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenet_v2", choices=sorted(MODELS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--before", action="store_true",
                   help="also time the plan without the depthwise lowering, the convs' "
                        "activation epilogue and the chains")
    args = p.parse_args(argv)
    import onnxruntime as ort
    from fastcnn import inference_plan
    from fastcnn import applications

    fastcnn.set_random_seed(0)
    name, size = MODELS[args.model]
    model = getattr(applications, name)(weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            c = layer.moving_mean.shape[0]
            layer.moving_mean[...] = rng.normal(0, 0.2, c)
            layer.moving_variance[...] = rng.uniform(0.5, 2.0, c)
    x = rng.standard_normal((args.batch, size, size, 3)).astype(np.float32)

    runs = {"fastcnn": lambda: model.predict_on_batch(x)}
    if args.before:
        plain, acts = inference_plan._plain, inference_plan._GATHER_ACTS
        inference_plan._plain = (lambda layer: False if type(layer).__name__ ==
                                 "DepthwiseConv2D" else plain(layer))
        inference_plan._GATHER_ACTS = ()
        inference_plan._PLAIN_WINOGRAD = False
        try:
            before = model.compile_inference(args.batch)
        finally:
            inference_plan._plain, inference_plan._GATHER_ACTS = plain, acts
            inference_plan._PLAIN_WINOGRAD = True
        runs["fastcnn, the plan before"] = lambda: before(x)[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, args.model + ".onnx")
        model.export_onnx(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        # its pool's threads would spin after each run, taking the cores from fastcnn's
        # next call in this process
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    runs["ONNX Runtime"] = lambda: session.run(None, {feed: x})[0]

    want = runs["fastcnn"]()
    for label, fn in runs.items():
        got = np.asarray(fn())
        err = float(np.abs(got - want).max())
        if err > 1e-5 + 1e-3 * float(np.abs(want).max()):
            sys.exit(f"{label} differs from fastcnn's probabilities by {err:.3g}: not timed")
    times = {label: [] for label in runs}
    for i in range(args.rounds):
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        for label in order:
            t0 = time.perf_counter()
            runs[label]()
            times[label].append(time.perf_counter() - t0)
    base = np.median(times["fastcnn"])
    print(f"{name} {size}x{size} predict, batch {args.batch}, {args.threads} thread(s), "
          f"{args.rounds} rounds alternating; the same probabilities checked first")
    for label, ts in times.items():
        med = np.median(ts)
        print(f"  {label:28s} {med * 1e3:8.1f} ms  ({args.batch / med:6.1f} images/s)  "
              f"ratio to fastcnn {med / base:.2f}")


if __name__ == "__main__":
    main()
