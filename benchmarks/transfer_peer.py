"""The transfer-learning tutorial (examples/transfer_learning.py) against TensorFlow/Keras and
PyTorch on the CPU: the frozen-base train step, and feature extraction at 'mixed7'.

    python benchmarks/transfer_peer.py                     # 1 and 2 threads, everything found
    python benchmarks/transfer_peer.py --threads 1 --rounds 5 --modes features
    python benchmarks/transfer_peer.py --tf-python /work/tfvenv/bin/python -o .benchmarks/tl.md

(a) **train**: one optimizer step of the tutorial's model (InceptionV3(input_shape=(150, 150,
    3), include_top=False) with every layer frozen, 'mixed7' -> Flatten -> Dense(1024, relu)
    -> Dropout(0.2) -> Dense(1, sigmoid), RMSprop(1e-4), binary cross-entropy) at batch 20;
    per epoch = 100 steps (2,000 pictures / 20) x the median step (the JPEG decoding and
    augmentation, done by background threads in the example, are not in it).
    fastcnn: ``model.train_on_batch``. TensorFlow 2.21 / Keras 3: ``keras.applications.
    InceptionV3`` with the same head, a ``tf.function`` step (GradientTape over the
    trainable variables, ``model(x, training=True)``: frozen BatchNormalization runs in
    inference mode as in fastcnn). PyTorch: InceptionV3 up to mixed7 written out below with
    Keras's structure (conv-BN-ReLU blocks, 'same'/'valid' paddings, average pools that
    exclude the padding), the frozen part in eval mode with ``requires_grad=False``,
    channels_last, the head in train mode, ``torch.optim.RMSprop(lr=1e-4, alpha=0.9,
    eps=1e-7)`` (Keras's rho and epsilon).
(b) **features**: ``Model(base.input, base.get_layer('mixed7').output).predict(x,
    batch_size=32)`` on one batch of 32: fastcnn; Keras's ``predict`` and a ``tf.function``
    call (``training=False``); ONNX Runtime (ORT_ENABLE_ALL) on the file fastcnn's
    ``export_onnx`` writes for the same feature model; PyTorch eval under ``no_grad``.

Same weights, same numbers: a first process (fastcnn) builds the base from seed 0, saves
its weights (Keras ``.weights.h5`` for TensorFlow, an .npz for PyTorch), exports the ONNX
file and the 'mixed7' features of a fixed batch; every feature-extraction peer must give
those features (max abs difference <= 1e-5 + 1e-3 x max |features|) before its time counts,
else the row says WRONG. The train step's head starts from each library's own random
weights (its cost does not depend on them).

Each measurement runs in its own process with the thread count set before any import
(OMP/OpenBLAS/MKL/NUMBA variables, torch.set_num_threads, TensorFlow's intra-op threads
with inter-op 1, ONNX Runtime's intra_op_num_threads). Figures: median of ``--rounds``
timed calls after ``--warmup``. Ratio = peer / fastcnn (above 1: fastcnn faster).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, os.pardir))
BATCH_TRAIN = 20
BATCH_FEATURES = 32
STEPS_PER_EPOCH = 100          # 2,000 training pictures at batch 20
SIZE = (150, 150, 3)
TRAIN_SYSTEMS = ("fastcnn", "tf", "torch")
FEATURE_SYSTEMS = ("fastcnn", "tf", "tf_function", "onnxruntime", "torch")
TITLES = {"fastcnn": "fastcnn (auto)", "tf": "TF 2.21 / Keras 3",
          "tf_function": "TF 2.21, tf.function call", "onnxruntime": "ONNX Runtime",
          "torch": "PyTorch (channels_last)"}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["train", "features"],
                   choices=["train", "features"])
    p.add_argument("--systems", nargs="+", default=None,
                   help=f"subset of {sorted(set(TRAIN_SYSTEMS + FEATURE_SYSTEMS))}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tf-python", default=None,
                   help="a Python that imports tensorflow (default: /work/tfvenv/bin/python "
                        "if present, else this one)")
    p.add_argument("-o", "--output", default=None, help="also write the table here")
    # worker side (one measurement per process)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--nthreads", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def set_thread_env(n):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "FASTCNN_BENCH_THREADS"):
        os.environ[var] = str(n)


def timed(fn, rounds, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3, [round(t * 1e3, 1) for t in times]


# ------------------------------------------------------------------------------ fastcnn
def _fastcnn_base():
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.join(REPO, "examples"))
    import fastcnn  # noqa: F401  (before NumPy)
    import transfer_learning as example
    fastcnn.utils.clear_session()
    fastcnn.set_random_seed(0)
    return fastcnn, example, example.build_base(None)


def prepare(work):
    """Seed-0 weights, the ONNX file and the reference features (run with 2 threads)."""
    fastcnn, _, base = _fastcnn_base()
    import numpy as np
    base.save_weights(os.path.join(work, "base.weights.h5"))
    arrays = {}
    for layer in base.layers:
        for i, w in enumerate(layer.get_weights()):
            arrays[f"{layer.name}/{i}"] = w
    np.savez(os.path.join(work, "base.npz"), **arrays)
    feat = fastcnn.Model(base.input, base.get_layer("mixed7").output)
    feat.export_onnx(os.path.join(work, "features.onnx"))
    x = np.random.default_rng(0).random((BATCH_FEATURES,) + SIZE, dtype=np.float32)
    ref = feat.predict(x, batch_size=BATCH_FEATURES, verbose=0)
    np.savez(os.path.join(work, "ref.npz"), x=x, features=ref)
    return {"ok": True}


def _check(features, work):
    import numpy as np
    ref = np.load(os.path.join(work, "ref.npz"))["features"]
    diff = float(np.abs(np.asarray(features, dtype=np.float64) - ref).max())
    ok = features.shape == ref.shape and diff <= 1e-5 + 1e-3 * float(np.abs(ref).max())
    return ok, diff


def worker_fastcnn(mode, work, rounds, warmup):
    fastcnn, example, base = _fastcnn_base()
    import numpy as np
    out = {}
    if mode == "train":
        model = example.build_model(base)
        rng = np.random.default_rng(1)
        x = rng.random((BATCH_TRAIN,) + SIZE, dtype=np.float32)
        y = (np.arange(BATCH_TRAIN) % 2).reshape(-1, 1).astype("float32")
        out["ms"], out["times"] = timed(lambda: model.train_on_batch(x, y), rounds, warmup)
    else:
        base.load_weights(os.path.join(work, "base.weights.h5"))
        feat = fastcnn.Model(base.input, base.get_layer("mixed7").output)
        x = np.load(os.path.join(work, "ref.npz"))["x"]
        out["ok"], out["diff"] = _check(feat.predict(x, batch_size=BATCH_FEATURES,
                                                     verbose=0), work)
        out["ms"], out["times"] = timed(
            lambda: feat.predict(x, batch_size=BATCH_FEATURES, verbose=0), rounds, warmup)
    return out


# ------------------------------------------------------------------------------ TensorFlow
def worker_tf(mode, work, rounds, warmup, function_call=False):
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ["OMP_NUM_THREADS"]))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from keras import layers
    keras.utils.set_random_seed(0)
    base = keras.applications.InceptionV3(input_shape=SIZE, include_top=False, weights=None)
    for layer in base.layers:
        layer.trainable = False
    out = {}
    if mode == "train":
        x = layers.Flatten()(base.get_layer("mixed7").output)
        x = layers.Dense(1024, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
        x = layers.Dense(1, activation="sigmoid")(x)
        model = keras.Model(base.input, x)
        opt = keras.optimizers.RMSprop(learning_rate=1e-4)
        loss_fn = keras.losses.BinaryCrossentropy()
        rng = np.random.default_rng(1)
        xb = tf.constant(rng.random((BATCH_TRAIN,) + SIZE, dtype=np.float32))
        yb = tf.constant((np.arange(BATCH_TRAIN) % 2).reshape(-1, 1).astype("float32"))

        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        out["trainable"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        out["ms"], out["times"] = timed(lambda: float(step(xb, yb)), rounds, warmup)
    else:
        base.load_weights(os.path.join(work, "base.weights.h5"))
        feat = keras.Model(base.input, base.get_layer("mixed7").output)
        x = np.load(os.path.join(work, "ref.npz"))["x"]
        if function_call:
            call = tf.function(lambda t: feat(t, training=False))
            xt = tf.constant(x)

            def run():
                return call(xt).numpy()
        else:
            def run():
                return feat.predict(x, batch_size=BATCH_FEATURES, verbose=0)
        out["ok"], out["diff"] = _check(run(), work)
        out["ms"], out["times"] = timed(run, rounds, warmup)
    return out


# ------------------------------------------------------------------------------ ONNX Runtime
def worker_onnxruntime(mode, work, rounds, warmup):
    import numpy as np
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(os.environ["OMP_NUM_THREADS"])
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(work, "features.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.load(os.path.join(work, "ref.npz"))["x"]
    out = {}
    out["ok"], out["diff"] = _check(sess.run(None, {name: x})[0], work)
    out["ms"], out["times"] = timed(lambda: sess.run(None, {name: x}), rounds, warmup)
    return out


# ------------------------------------------------------------------------------ PyTorch
def _torch_inception_to_mixed7():
    """InceptionV3 up to mixed7 with Keras's structure and creation order (so the i-th conv
    and BN are Keras's 'conv2d_i' / 'batch_normalization_i')."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class ConvBN(nn.Module):
        def __init__(self, cin, cout, kh, kw, stride=1, padding="same"):
            super().__init__()
            pad = (kh // 2, kw // 2) if padding == "same" else (0, 0)
            self.conv = nn.Conv2d(cin, cout, (kh, kw), stride, pad, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)   # scale=False: gamma 1

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def avg3(x):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)   # Keras 'same' average

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList()
            self.stem = [self.cbn(3, 32, 3, 3, 2, "valid"), self.cbn(32, 32, 3, 3, 1, "valid"),
                         self.cbn(32, 64, 3, 3)]
            self.stem2 = [self.cbn(64, 80, 1, 1, 1, "valid"),
                          self.cbn(80, 192, 3, 3, 1, "valid")]
            self.m012 = []
            cin = 192
            for pool_filters in (32, 64, 64):
                blk = [self.cbn(cin, 64, 1, 1), self.cbn(cin, 48, 1, 1), self.cbn(48, 64, 5, 5),
                       self.cbn(cin, 64, 1, 1), self.cbn(64, 96, 3, 3), self.cbn(96, 96, 3, 3),
                       self.cbn(cin, pool_filters, 1, 1)]
                self.m012.append(blk)
                cin = 64 + 64 + 96 + pool_filters
            self.m3 = [self.cbn(cin, 384, 3, 3, 2, "valid"), self.cbn(cin, 64, 1, 1),
                       self.cbn(64, 96, 3, 3), self.cbn(96, 96, 3, 3, 2, "valid")]
            cin = 384 + 96 + cin
            self.m4567 = []
            for w in (128, 160, 160, 192):
                blk = [self.cbn(cin, 192, 1, 1),
                       self.cbn(cin, w, 1, 1), self.cbn(w, w, 1, 7), self.cbn(w, 192, 7, 1),
                       self.cbn(cin, w, 1, 1), self.cbn(w, w, 7, 1), self.cbn(w, w, 1, 7),
                       self.cbn(w, w, 7, 1), self.cbn(w, 192, 1, 7),
                       self.cbn(cin, 192, 1, 1)]
                self.m4567.append(blk)
                cin = 768

        def cbn(self, *args):
            m = ConvBN(*args)
            self.convs.append(m)
            return m

        def forward(self, x):
            for m in self.stem:
                x = m(x)
            x = F.max_pool2d(x, 3, 2)
            for m in self.stem2:
                x = m(x)
            x = F.max_pool2d(x, 3, 2)
            for b in self.m012:
                x = torch.cat([b[0](x), b[2](b[1](x)), b[5](b[4](b[3](x))), b[6](avg3(x))], 1)
            b = self.m3
            x = torch.cat([b[0](x), b[3](b[2](b[1](x))), F.max_pool2d(x, 3, 2)], 1)
            for b in self.m4567:
                x = torch.cat([b[0](x), b[3](b[2](b[1](x))),
                               b[8](b[7](b[6](b[5](b[4](x))))), b[9](avg3(x))], 1)
            return x

    return Net()


def _torch_load(net, work):
    """fastcnn's seed-0 weights (Keras names, creation order) into the PyTorch net."""
    import numpy as np
    import torch
    w = np.load(os.path.join(work, "base.npz"))
    for i, m in enumerate(net.convs):
        sfx = "" if i == 0 else f"_{i}"
        m.conv.weight.data = torch.from_numpy(
            np.ascontiguousarray(w[f"conv2d{sfx}/0"].transpose(3, 2, 0, 1)))
        beta, mean, var = (w[f"batch_normalization{sfx}/{k}"] for k in range(3))
        m.bn.bias.data = torch.from_numpy(beta.copy())
        m.bn.running_mean.data = torch.from_numpy(mean.copy())
        m.bn.running_var.data = torch.from_numpy(var.copy())


def worker_torch(mode, work, rounds, warmup):
    import numpy as np
    import torch
    from torch import nn
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    base = _torch_inception_to_mixed7()
    for p in base.parameters():
        p.requires_grad_(False)
    base.eval()
    base = base.to(memory_format=torch.channels_last)
    out = {}
    if mode == "train":
        head = nn.Sequential(nn.Flatten(), nn.Linear(768 * 7 * 7, 1024), nn.ReLU(),
                             nn.Dropout(0.2), nn.Linear(1024, 1))
        head.train()
        opt = torch.optim.RMSprop(head.parameters(), lr=1e-4, alpha=0.9, eps=1e-7)
        loss_fn = nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(1)
        x = torch.from_numpy(rng.random((BATCH_TRAIN,) + SIZE, dtype=np.float32)).permute(
            0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy((np.arange(BATCH_TRAIN) % 2).reshape(-1, 1).astype("float32"))

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(head(base(x)), y)
            loss.backward()
            opt.step()
            return float(loss)

        out["ms"], out["times"] = timed(step, rounds, warmup)
    else:
        _torch_load(base, work)
        x = torch.from_numpy(np.load(os.path.join(work, "ref.npz"))["x"]).permute(
            0, 3, 1, 2).contiguous(memory_format=torch.channels_last)

        def run():
            with torch.no_grad():
                return base(x).permute(0, 2, 3, 1).numpy()

        out["ok"], out["diff"] = _check(run(), work)
        out["ms"], out["times"] = timed(run, rounds, warmup)
    return out


def worker_main(args):
    set_thread_env(args.nthreads)
    mode, work = args.mode, args.work
    if args.worker == "prepare":
        result = prepare(work)
    elif args.worker == "fastcnn":
        result = worker_fastcnn(mode, work, args.rounds, args.warmup)
    elif args.worker in ("tf", "tf_function"):
        result = worker_tf(mode, work, args.rounds, args.warmup,
                           function_call=args.worker == "tf_function")
    elif args.worker == "onnxruntime":
        result = worker_onnxruntime(mode, work, args.rounds, args.warmup)
    elif args.worker == "torch":
        result = worker_torch(mode, work, args.rounds, args.warmup)
    else:
        raise SystemExit(f"unknown worker {args.worker!r}")
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------ driver
def run_worker(python, system, mode, threads, work, args):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cmd = [python, os.path.abspath(__file__), "--worker", system, "--mode", mode or "none",
           "--work", work, "--nthreads", str(threads), "--rounds", str(args.rounds),
           "--warmup", str(args.warmup)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            result["wall_s"] = round(wall, 1)
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " / ".join(tail) or f"exit {proc.returncode}"}


def available(python, module):
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        return worker_main(args)
    tf_python = args.tf_python or ("/work/tfvenv/bin/python"
                                   if os.path.exists("/work/tfvenv/bin/python")
                                   else sys.executable)
    pythons = {"fastcnn": sys.executable, "tf": tf_python, "tf_function": tf_python,
               "onnxruntime": sys.executable, "torch": sys.executable}
    imports = {"fastcnn": "fastcnn", "tf": "tensorflow", "tf_function": "tensorflow",
               "onnxruntime": "onnxruntime", "torch": "torch"}
    missing = {s: f"{imports[s]} does not import in {pythons[s]}" for s in pythons
               if not available(pythons[s], imports[s])}
    lines = []

    def emit(text=""):
        print(text, flush=True)
        lines.append(text)

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    emit(f"### Transfer learning (InceptionV3 150x150 cut at mixed7), {stamp}")
    emit(f"machine: {os.cpu_count()} CPUs (nproc), load average at start "
         f"{os.getloadavg()[0]:.1f}; rounds {args.rounds} after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory(prefix="fastcnn_tl_") as work:
        prep = run_worker(sys.executable, "prepare", None, 2, work, args)
        if "error" in prep:
            raise SystemExit(f"preparing the shared weights failed: {prep['error']}")
        for mode in args.modes:
            systems = TRAIN_SYSTEMS if mode == "train" else FEATURE_SYSTEMS
            if args.systems:
                systems = [s for s in systems if s in args.systems]
            emit("")
            if mode == "train":
                emit(f"(a) frozen-base train step, batch {BATCH_TRAIN}; per epoch = "
                     f"{STEPS_PER_EPOCH} steps x median step")
                emit("")
                emit("| system | threads | ms/step (median) | s/epoch | vs fastcnn | rounds (ms) |")
                emit("|---|---|---|---|---|---|")
            else:
                emit(f"(b) feature extraction at 'mixed7', one batch of {BATCH_FEATURES}")
                emit("")
                emit("| system | threads | ms/batch (median) | images/s | vs fastcnn | "
                     "max abs diff vs fastcnn | rounds (ms) |")
                emit("|---|---|---|---|---|---|---|")
            for threads in args.threads:
                base_ms = None
                for system in systems:
                    if system in missing:
                        emit(f"| {TITLES[system]} | {threads} | skipped: {missing[system]} "
                             f"| | | | |")
                        continue
                    r = run_worker(pythons[system], system, mode, threads, work, args)
                    if "error" in r:
                        emit(f"| {TITLES[system]} | {threads} | failed: {r['error'][:200]} "
                             f"| | | | |")
                        continue
                    ms = r["ms"]
                    if system == "fastcnn":
                        base_ms = ms
                    ratio = "" if base_ms is None or system == "fastcnn" else \
                        f"{ms / base_ms:.2f}"
                    if mode == "train":
                        emit(f"| {TITLES[system]} | {threads} | {ms:.0f} | "
                             f"{ms * STEPS_PER_EPOCH / 1e3:.0f} | {ratio} | {r['times']} |")
                    else:
                        wrong = "" if r.get("ok") else " WRONG"
                        if wrong:
                            ratio = ""
                        emit(f"| {TITLES[system]} | {threads} | {ms:.0f}{wrong} | "
                             f"{BATCH_FEATURES / ms * 1e3:.1f} | {ratio} | "
                             f"{r.get('diff', float('nan')):.1e} | {r['times']} |")
    emit("")
    emit(f"load average at end {os.getloadavg()[0]:.1f}; ratio = system / fastcnn "
         f"(above 1: fastcnn faster)")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
