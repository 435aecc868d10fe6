"""One system, one case, one thread count, in a process of its own: what peers.py runs.

    python benchmarks/peer_worker.py JOB.json

JOB.json (written by peers.py) names the system (``fastcnn``, ``torch``, ``torch_cl``,
``torch_compile``, ``jax``, ``tf``, ``tf_xla``, ``onnxruntime``), the model (its layers as
plain data, so that this file needs neither fastcnn nor benchmarks/_cases.py: the
TensorFlow peer runs in another Python environment), the weights file (.npz, fastcnn's
layouts: HWIO conv kernels, (in, out) dense kernels; each peer converts), the batch file,
the mode (``train``: one Adam step with Keras's defaults, ``infer``: the forward), the
thread count and the number of rounds. It prints one JSON line:

    {"check": ..., "times_ms": [...], "threads": ..., "version": ...}

``check`` is the loss of the first train step (before any update) or the inference output,
computed from the shared weights: peers.py compares it with fastcnn's before it trusts a
time. Only this system's own library is imported, after the thread variables are set, and
with its runtime defaults (fastcnn's import sets OMP_WAIT_POLICY=PASSIVE for its own
process only; PyTorch here keeps libgomp's default: issue 16, item 5).
"""
from __future__ import annotations

import json
import os
import sys
import time

JOB = json.load(open(sys.argv[1]))
THREADS = int(JOB["threads"])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
if JOB["system"] in ("tf", "tf_xla"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(THREADS)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
if JOB["system"] == "jax":
    # XLA's CPU client: one intra-op pool of THREADS threads.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               + ("true" if THREADS > 1 else "false")).strip()
if JOB["system"] == "fastcnn":
    import fastcnn  # noqa: F401  (before NumPy: its thread-runtime defaults)

import numpy as np  # noqa: E402

LAYERS = [tuple(layer) for layer in JOB["layers"]]
INPUT_SHAPE = tuple(JOB["input_shape"])       # (H, W, C)
BINARY = JOB["loss"] == "binary_crossentropy"
MODE = JOB["mode"]
LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-7     # Keras's Adam defaults (fastcnn's)

_w = np.load(JOB["weights"])
WEIGHTS = [_w[f"w{i}"] for i in range(len(_w.files))]
_b = np.load(JOB["batch"])
X, Y = _b["x"], _b["y"]                       # NHWC float32; int labels or (N, 1) floats


def same_pad(size, k):
    """TensorFlow's 'same' at stride 1: (before, after)."""
    total = k - 1
    return total // 2, total - total // 2


def geometry():
    """Per layer: (kind, params) with the padding resolved, and the shapes through."""
    h, w, c = INPUT_SHAPE
    out = []
    for layer in LAYERS:
        kind = layer[0]
        if kind == "conv":
            _, filters, k, padding, act, bias = layer
            pads = (same_pad(h, k), same_pad(w, k)) if padding == "same" else ((0, 0), (0, 0))
            h = h + sum(pads[0]) - k + 1
            w = w + sum(pads[1]) - k + 1
            out.append(("conv", dict(filters=filters, k=k, pads=pads, act=act, bias=bias,
                                     c_in=c)))
            c = filters
        elif kind in ("maxpool", "avgpool"):
            s = layer[1]
            h, w = h // s, w // s
            out.append((kind, dict(size=s)))
        elif kind == "flatten":
            out.append(("flatten", dict(h=h, w=w, c=c)))
            c, h, w = h * w * c, 1, 1
        elif kind == "dense":
            out.append(("dense", dict(units=layer[1], act=layer[2])))
            c = layer[1]
    return out


GEOMETRY = geometry()


def timed(step, rounds, warmup):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


# --------------------------------------------------------------------------------- fastcnn
def run_fastcnn():
    import fastcnn
    from fastcnn.layers import AveragePooling2D, Conv2D, Dense, Flatten, MaxPooling2D

    layers = []
    for i, (kind, p) in enumerate(GEOMETRY):
        extra = {"input_shape": INPUT_SHAPE} if i == 0 else {}
        layer = LAYERS[i]
        if kind == "conv":
            layers.append(Conv2D(p["filters"], p["k"], padding=layer[3], activation=p["act"],
                                 use_bias=p["bias"], **extra))
        elif kind == "maxpool":
            layers.append(MaxPooling2D(p["size"], **extra))
        elif kind == "avgpool":
            layers.append(AveragePooling2D(p["size"], **extra))
        elif kind == "flatten":
            layers.append(Flatten(**extra))
        else:
            layers.append(Dense(p["units"], activation=p["act"], **extra))
    model = fastcnn.Sequential(layers)
    model.compile(optimizer=fastcnn.optimizers.Adam(learning_rate=LR), loss=JOB["loss"])
    model.set_weights(WEIGHTS)
    if MODE == "train":
        check = float(model.test_on_batch(X, Y))   # the loss the first step starts from
        step = lambda: model.train_on_batch(X, Y)  # noqa: E731
    else:
        check = model.predict_on_batch(X)
        step = lambda: model.predict_on_batch(X)   # noqa: E731
    return check, step, f"fastcnn {fastcnn.__version__} ({fastcnn.backends.get_backend()})"


# ----------------------------------------------------------------------------------- torch
def run_torch(channels_last=False, compiled=False):
    import torch
    from torch import nn

    torch.set_num_threads(THREADS)
    mods = []
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    params = iter(WEIGHTS)
    last = len(GEOMETRY) - 1
    flat = None
    for i, (kind, p) in enumerate(GEOMETRY):
        act = None
        if kind == "conv":
            (pt, pb), (pl, pr) = p["pads"]
            if pt != pb or pl != pr:
                raise SystemExit("asymmetric 'same' padding: no nn.Conv2d equivalent")
            conv = nn.Conv2d(p["c_in"], p["filters"], p["k"], padding=(pt, pl), bias=p["bias"])
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(
                next(params).transpose(3, 2, 0, 1)))                      # HWIO -> OIHW
            if p["bias"]:
                conv.bias.data = torch.from_numpy(next(params).copy())
            mods.append(conv)
            act = p["act"]
        elif kind == "maxpool":
            mods.append(nn.MaxPool2d(p["size"]))
        elif kind == "avgpool":
            mods.append(nn.AvgPool2d(p["size"]))
        elif kind == "flatten":
            mods.append(nn.Flatten())
            flat = p
        else:
            kernel = next(params)                                          # (in, out)
            if flat is not None:   # fastcnn flattens (h, w, c); torch (c, h, w)
                h, w, c = flat["h"], flat["w"], flat["c"]
                kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
                flat = None
            lin = nn.Linear(kernel.shape[0], kernel.shape[1])
            lin.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
            lin.bias.data = torch.from_numpy(next(params).copy())
            mods.append(lin)
            act = p["act"]
        if act not in (None, "linear") and i != last:
            mods.append(acts[act]())
    model = nn.Sequential(*mods)
    xt = torch.from_numpy(np.ascontiguousarray(X.transpose(0, 3, 1, 2)))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    loss_fn = nn.BCEWithLogitsLoss() if BINARY else nn.CrossEntropyLoss()
    yt = torch.from_numpy(Y) if BINARY else torch.from_numpy(Y.astype(np.int64))
    head = torch.sigmoid if BINARY else (lambda z: torch.softmax(z, dim=1))
    if MODE == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS)
        with torch.no_grad():
            check = float(loss_fn(model(xt), yt))
        fwd = torch.compile(model) if compiled else model

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(fwd(xt), yt)
            loss.backward()
            opt.step()
            return loss.item()
    else:
        model.eval()
        fwd = torch.compile(model) if compiled else model
        with torch.no_grad():
            check = head(model(xt)).numpy()

        def step():
            with torch.no_grad():
                return head(fwd(xt)).numpy()
    return check, step, f"torch {torch.__version__}"


# ------------------------------------------------------------------------------------- jax
def run_jax():
    import jax
    import jax.numpy as jnp

    params = [jnp.asarray(w) for w in WEIGHTS]
    acts = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}

    def forward(params, x):
        it = iter(params)
        last = len(GEOMETRY) - 1
        for i, (kind, p) in enumerate(GEOMETRY):
            act = None
            if kind == "conv":
                x = jax.lax.conv_general_dilated(x, next(it), (1, 1), p["pads"],
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                if p["bias"]:
                    x = x + next(it)
                act = p["act"]
            elif kind == "maxpool":
                s = p["size"]
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, s, s, 1), (1, s, s, 1),
                                          "VALID")
            elif kind == "avgpool":
                s = p["size"]
                x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, s, s, 1),
                                          "VALID") / (s * s)
            elif kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            else:
                x = x @ next(it) + next(it)
                act = p["act"]
            if act not in (None, "linear") and i != last:
                x = acts[act](x)
        return x   # logits

    def loss_fn(params, x, y):
        z = forward(params, x)
        if BINARY:
            return jnp.mean(jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z))))
        logp = jax.nn.log_softmax(z)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    x, y = jnp.asarray(X), jnp.asarray(Y if BINARY else Y.astype(np.int32))
    if MODE == "train":
        @jax.jit
        def train(params, m, v, t, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            t = t + 1
            alpha = LR * jnp.sqrt(1 - B2 ** t) / (1 - B1 ** t)
            m = [mi + (g - mi) * (1 - B1) for mi, g in zip(m, grads)]
            v = [vi + (g * g - vi) * (1 - B2) for vi, g in zip(v, grads)]
            params = [p - alpha * mi / (jnp.sqrt(vi) + EPS) for p, mi, vi in zip(params, m, v)]
            return params, m, v, t, loss

        check = float(jax.jit(loss_fn)(params, x, y))
        state = [params, [jnp.zeros_like(p) for p in params],
                 [jnp.zeros_like(p) for p in params], jnp.float32(0)]

        def step():
            p, m, v, t, loss = train(*state, x, y)
            state[:] = [p, m, v, t]
            return float(loss)
    else:
        head = jax.nn.sigmoid if BINARY else jax.nn.softmax
        infer = jax.jit(lambda params, x: head(forward(params, x)))
        check = np.asarray(infer(params, x))

        def step():
            return np.asarray(infer(params, x))   # waits for the result, as numpy() does
    return check, step, f"jax {jax.__version__}"


# -------------------------------------------------------------------------------------- tf
def run_tf(jit):
    import tensorflow as tf
    import keras

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    layers = [keras.Input(INPUT_SHAPE, batch_size=None)]
    for kind, p in GEOMETRY:
        if kind == "conv":
            pad = "same" if p["pads"] != ((0, 0), (0, 0)) else "valid"
            layers.append(keras.layers.Conv2D(p["filters"], p["k"], padding=pad,
                                              activation=p["act"], use_bias=p["bias"]))
        elif kind == "maxpool":
            layers.append(keras.layers.MaxPooling2D(p["size"]))
        elif kind == "avgpool":
            layers.append(keras.layers.AveragePooling2D(p["size"]))
        elif kind == "flatten":
            layers.append(keras.layers.Flatten())
        else:
            layers.append(keras.layers.Dense(p["units"], activation=p["act"]))
    model = keras.Sequential(layers)
    opt = keras.optimizers.Adam(learning_rate=LR, epsilon=EPS)
    model.compile(optimizer=opt, loss=JOB["loss"], jit_compile=jit)
    model.set_weights(WEIGHTS)
    if MODE == "train":
        check = float(model.test_on_batch(X, Y))
        # The strongest form of a step: one tf.function (XLA with jit_compile) around the
        # tape and the update; Keras 3's train_on_batch adds milliseconds of data adaptation
        # per call at these sizes.
        loss_obj = keras.losses.get(JOB["loss"])
        xt, yt = tf.constant(X), tf.constant(Y)

        @tf.function(jit_compile=jit, reduce_retracing=True)
        def train(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_obj(y, model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        step = lambda: float(train(xt, yt))   # noqa: E731
    else:
        check = model.predict_on_batch(X)
        # predict_on_batch builds a new function per call in Keras 3: the compiled call
        # is what a deployment runs (model(x) under tf.function / XLA).
        infer = tf.function(lambda x: model(x, training=False), jit_compile=jit,
                            reduce_retracing=True)
        xt = tf.constant(X)
        step = lambda: infer(xt).numpy()   # noqa: E731
    return check, step, f"tensorflow {tf.__version__} keras {keras.__version__}"


# ---------------------------------------------------------------------------- onnxruntime
def run_onnxruntime():
    """The model as an ONNX graph (NCHW, as exported from any framework), with ONNX
    Runtime's full graph optimisation; the input is NCHW, made once outside the timing."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if MODE != "infer":
        raise SystemExit("onnxruntime: inference only")
    nodes, inits = [], []
    name, params = "x", iter(WEIGHTS)
    last = len(GEOMETRY) - 1
    flat = None

    def add(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def init(array):
        n = f"p{len(inits)}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), n))
        return n

    for i, (kind, p) in enumerate(GEOMETRY):
        act = None
        if kind == "conv":
            (pt, pb), (pl, pr) = p["pads"]
            ins = [name, init(next(params).transpose(3, 2, 0, 1))]
            if p["bias"]:
                ins.append(init(next(params)))
            name = add("Conv", ins, kernel_shape=[p["k"]] * 2, pads=[pt, pl, pb, pr])
            act = p["act"]
        elif kind in ("maxpool", "avgpool"):
            s = p["size"]
            name = add("MaxPool" if kind == "maxpool" else "AveragePool", [name],
                       kernel_shape=[s, s], strides=[s, s])
        elif kind == "flatten":
            name = add("Flatten", [name], axis=1)
            flat = p
        else:
            kernel = next(params)
            if flat is not None:
                h, w, c = flat["h"], flat["w"], flat["c"]
                kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
                flat = None
            name = add("Gemm", [name, init(kernel), init(next(params))])
            act = p["act"]
        if act not in (None, "linear"):
            if i == last:
                name = add("Sigmoid" if BINARY else "Softmax", [name], **(
                    {} if BINARY else {"axis": -1}))
            else:
                name = add({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[act], [name])
    h, w, c = INPUT_SHAPE
    graph = helper.make_graph(
        nodes, "peer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, h, w])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", LAYERS[-1][1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    xn = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    check = sess.run(None, {"x": xn})[0]
    step = lambda: sess.run(None, {"x": xn})[0]   # noqa: E731
    return check, step, f"onnxruntime {ort.__version__}"


RUNNERS = {
    "fastcnn": run_fastcnn,
    "torch": lambda: run_torch(),
    "torch_cl": lambda: run_torch(channels_last=True),
    "torch_compile": lambda: run_torch(channels_last=True, compiled=True),
    "jax": run_jax,
    "tf": lambda: run_tf(False),
    "tf_xla": lambda: run_tf(True),
    "onnxruntime": run_onnxruntime,
}


def rss_mb():
    """This process's resident memory now (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """The process's peak resident memory (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak():
    """Linux: the peak (VmHWM) restarts from the current RSS (clear_refs value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    check, step, version = RUNNERS[JOB["system"]]()
    peak = peak_rss_mb()   # imports, model building, the check's first run
    before = rss_mb()      # library, model, weights and batch in memory
    reset_peak()
    times = timed(step, int(JOB["rounds"]), int(JOB.get("warmup", 3)))
    steps_peak = peak_rss_mb()
    if isinstance(check, np.ndarray):
        check = np.asarray(check, np.float64).tolist()
    print(json.dumps({"check": check, "times_ms": times, "threads": THREADS,
                      "version": version, "peak_mb": max(peak, steps_peak),
                      "step_mb": max(0.0, steps_peak - before)}))


if __name__ == "__main__":
    main()
