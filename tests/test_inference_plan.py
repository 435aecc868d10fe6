"""The compiled inference plan (fastcnn.inference_plan, csrc/plan.pyx): the same outputs as
the layer-by-layer forward, weight changes seen, arena never aliased, bad input refused."""
import os

import fastcnn  # noqa: F401  (before numpy: the thread-runtime defaults)
import numpy as np
import pytest

from fastcnn import _extensions
from fastcnn import inference_plan as ip
from fastcnn import layers as L

HAVE_C = ip._plan_ext is not None and fastcnn.HAVE_CYTHON
RUNNERS = ["python"] + (["c"] if HAVE_C else [])
needs_c = pytest.mark.skipif(not HAVE_C, reason="the C runner needs the compiled "
                                                "extensions (fastcnn._ext_plan)")

# The four standard models of benchmarks/_cases.py (same layers), small enough to test.
STANDARD = {
    "scratch": ((28, 28, 1), [("conv", 8, 3, "valid", None, False), ("maxpool",),
                              ("flatten",), ("dense", 10, "softmax")]),
    "lenet5": ((28, 28, 1), [("conv", 6, 5, "same", "tanh", True), ("avgpool",),
                             ("conv", 16, 5, "valid", "tanh", True), ("avgpool",),
                             ("flatten",), ("dense", 120, "tanh"), ("dense", 84, "tanh"),
                             ("dense", 10, "softmax")]),
    "fashion": ((28, 28, 1), [("conv", 64, 3, "valid", "relu", True), ("maxpool",),
                              ("conv", 64, 3, "valid", "relu", True), ("maxpool",),
                              ("flatten",), ("dense", 128, "relu"), ("dense", 10, "softmax")]),
    "catsdogs": ((150, 150, 3), [("conv", 32, 3, "valid", "relu", True), ("maxpool",),
                                 ("conv", 64, 3, "valid", "relu", True), ("maxpool",),
                                 ("conv", 128, 3, "valid", "relu", True), ("maxpool",),
                                 ("flatten",), ("dense", 128, "relu"), ("dense", 512, "relu"),
                                 ("dense", 1, "sigmoid")]),
}


def standard(name):
    shape, spec = STANDARD[name]
    fastcnn.set_random_seed(7)
    out = []
    for i, layer in enumerate(spec):
        kw = {"input_shape": shape} if i == 0 else {}
        if layer[0] == "conv":
            _, f, k, pad, act, bias = layer
            out.append(L.Conv2D(f, k, padding=pad, activation=act, use_bias=bias, **kw))
        elif layer[0] == "maxpool":
            out.append(L.MaxPooling2D(2))
        elif layer[0] == "avgpool":
            out.append(L.AveragePooling2D(2))
        elif layer[0] == "flatten":
            out.append(L.Flatten())
        else:
            out.append(L.Dense(layer[1], activation=layer[2]))
    model = fastcnn.Sequential(out, name=name)
    # non-zero biases, so that a lost bias would show
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias[...] = np.linspace(-0.3, 0.3, layer.bias.shape[0])
    return model


def layer_by_layer(model, x):
    xs = x if isinstance(x, list) else [x]
    return [np.asarray(o) for o in model._program().forward(xs, False, keep=False)[0]]


def data(model, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + tuple(model.input_shape[1:]), dtype=np.float32)


def close(a, b, dtype=np.float32):
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------- same numbers
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", sorted(STANDARD))
def test_standard_models_match_layer_by_layer(name, runner):
    model = standard(name)
    x = data(model, 2 if name == "catsdogs" else 3)
    plan = model.compile_inference(len(x), runner=runner)
    assert plan.runner == runner
    close(plan(x)[0], layer_by_layer(model, x)[0])


def test_fashion_plan_fuses_conv_pool_relu_and_removes_flatten():
    model = standard("fashion")
    plan = model.compile_inference(2)
    kinds = [s.split()[0] for s in plan.steps]
    second = "conv+pool(winograd)+relu" if HAVE_C else "conv+pool+relu"
    assert kinds == ["conv+pool+relu", second, "dense+relu", "dense+softmax"]
    if HAVE_C:
        assert plan.runner == "c"


@needs_c
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_winograd_conv_pool_matches_the_direct_conv(padding, monkeypatch):
    fastcnn.set_random_seed(8)
    inp = fastcnn.Input((11, 13, 24))
    h = L.Conv2D(40, 3, padding=padding, activation="relu")(inp)   # 40: a ragged vector
    out = L.MaxPooling2D(2)(h)
    model = fastcnn.Model(inp, out)
    x = np.random.default_rng(3).standard_normal((7, 11, 13, 24)).astype(np.float32)
    x[0, 2, 3, 5] = np.nan                     # a NaN propagates to its windows
    want = layer_by_layer(model, x)[0]
    plan = model.compile_inference(7, runner="c")
    assert "winograd" in plan.steps[0]
    got = plan(x)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any()
    close(np.nan_to_num(got), np.nan_to_num(want))
    monkeypatch.setenv("FASTCNN_PLAN_WINOGRAD", "0")
    direct = model.compile_inference(7, runner="c")
    assert "winograd" not in direct.steps[0]
    close(np.nan_to_num(direct(x)[0]), np.nan_to_num(want))


def residual_bn_model(dtype="float32"):
    fastcnn.set_random_seed(3)
    inp = fastcnn.Input((12, 12, 3), dtype=dtype)
    a = L.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    a = L.BatchNormalization()(a)
    a = L.Activation("relu")(a)
    b = L.Conv2D(16, 3, padding="same")(a)
    b = L.BatchNormalization()(b)
    c = L.Add()([a, b])
    c = L.ReLU()(c)
    c = L.Dropout(0.5)(c)
    c = L.MaxPooling2D(2)(c)
    c = L.BatchNormalization()(c)          # not after a conv: a standalone affine step
    g = L.GlobalAveragePooling2D()(c)
    out = L.Dense(5, activation="softmax")(g)
    model = fastcnn.Model(inp, out, name="residual_bn")
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            ch = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, ch), rng.normal(0, 0.2, ch),
                               rng.normal(0, 0.3, ch), rng.uniform(0.5, 2.0, ch)])
    return model


@pytest.mark.parametrize("runner", RUNNERS)
def test_functional_residual_model_with_batchnorm(runner):
    model = residual_bn_model()
    x = data(model, 4)
    plan = model.compile_inference(4, runner=runner)
    text = " ".join(plan.steps)
    assert "+bn" in text and "dropout" not in text and "affine" in text
    assert "add+relu" in text   # the residual's ReLU applied by the Add's step
    close(plan(x)[0], layer_by_layer(model, x)[0])


def test_float64_runs_the_python_plan():
    model = residual_bn_model("float64")
    x = data(model, 3).astype(np.float64)
    plan = model.compile_inference(3)
    assert plan.runner == "python"
    out = plan(x)[0]
    assert out.dtype == np.float64
    close(out, layer_by_layer(model, x)[0], np.float64)
    if HAVE_C:
        with pytest.raises(ip.InferencePlanError, match="float32"):
            model.compile_inference(3, runner="c")


def test_float64_conv_pool_chain_and_tanh():
    fastcnn.set_random_seed(1)
    inp = fastcnn.Input((12, 12, 1), dtype="float64")
    h = L.MaxPooling2D(2)(L.Conv2D(16, 3, activation="relu")(inp))     # fused on float64
    h = L.MaxPooling2D(2)(L.Conv2D(8, 3, padding="same", activation="tanh")(h))
    model = fastcnn.Model(inp, L.Dense(3, activation="softmax")(L.Flatten()(h)))
    x = np.random.default_rng(0).random((3, 12, 12, 1))
    plan = model.compile_inference(3)
    assert plan.steps[0].startswith("conv+pool+relu")
    close(plan(x)[0], layer_by_layer(model, x)[0], np.float64)


@pytest.mark.parametrize("runner", RUNNERS)
def test_several_outputs(runner):
    fastcnn.set_random_seed(5)
    inp = fastcnn.Input((10, 10, 2))
    h = L.Conv2D(16, 3, activation="relu")(inp)
    h = L.MaxPooling2D(2)(h)
    f = L.Flatten()(h)
    out1 = L.Dense(4, activation="softmax", name="cls")(f)
    out2 = L.Dense(1, activation="sigmoid", name="bin")(f)
    model = fastcnn.Model(inp, [out1, out2, h])   # an inner tensor as an output too
    x = data(model, 3)
    got = model.compile_inference(3, runner=runner)(x)
    want = layer_by_layer(model, x)
    assert len(got) == 3
    for g, w in zip(got, want):
        close(g, w)
    pred = model.predict(x)
    for g, w in zip(pred, want):
        close(g, w)


@pytest.mark.parametrize("runner", RUNNERS)
def test_two_inputs_and_a_residual_add(runner):
    fastcnn.set_random_seed(11)
    a, b = fastcnn.Input((6, 6, 4)), fastcnn.Input((6, 6, 4))
    s = L.Add()([a, b])                                     # reads both plan inputs
    h = L.Conv2D(16, 3, padding="same", activation="relu")(s)
    h = L.AveragePooling2D(2, padding="same")(h)
    out = L.Dense(3)(L.Flatten()(h))
    model = fastcnn.Model([a, b], out)
    xa, xb = (
        np.random.default_rng(1).random((2, 6, 6, 4), dtype=np.float32),
        np.random.default_rng(2).random((2, 6, 6, 4), dtype=np.float32))
    got = model.compile_inference(2, runner=runner)([xa, xb])[0]
    close(got, layer_by_layer(model, [xa, xb])[0])


def test_layers_run_by_their_own_forward_inside_the_python_plan():
    fastcnn.set_random_seed(4)
    inp = fastcnn.Input((8, 8, 2))
    h = L.ZeroPadding2D(1)(inp)
    h = L.Conv2D(16, 3)(h)
    h = L.LeakyReLU(0.1)(h)
    h = L.Concatenate()([h, L.Conv2D(4, 3, padding="same")(h)])
    out = L.Dense(2, activation="softmax")(L.GlobalMaxPooling2D()(h))
    model = fastcnn.Model(inp, out)
    x = data(model, 3)
    plan = model.compile_inference(3)
    assert plan.runner == "python"
    assert any(s.startswith("layer ") for s in plan.steps)
    close(plan(x)[0], layer_by_layer(model, x)[0])
    if HAVE_C:
        with pytest.raises(ip.InferencePlanError, match="the C runner"):
            model.compile_inference(3, runner="c")


@pytest.mark.parametrize("runner", RUNNERS)
def test_keepdims_pooling_dense_on_4d_and_three_way_add(runner):
    fastcnn.set_random_seed(12)
    inp = fastcnn.Input((6, 6, 3))
    a = L.Conv2D(8, 1)(inp)
    s = L.Add()([a, a, L.Conv2D(8, 3, padding="same")(inp)])   # three inputs: own forward
    g = L.GlobalAveragePooling2D(keepdims=True)(s)              # (N, 1, 1, 8)
    out = L.Dense(4)(g)                                         # Dense on a 4-D tensor
    model = fastcnn.Model(inp, out)
    x = data(model, 3)
    want = layer_by_layer(model, x)[0]
    assert want.shape == (3, 1, 1, 4)
    plan = model.compile_inference(3, runner="python" if runner == "python" else "auto")
    close(plan(x)[0], want)
    close(model.predict(x), want)


def _random_bn_stats(model):
    """Moving statistics and affine weights away from 0 and 1, so a fold that got a
    channel's scale wrong would show."""
    rng = np.random.default_rng(21)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean[...] = rng.normal(0, 0.5, c)
            layer.moving_variance[...] = rng.uniform(0.5, 2.0, c)
            layer.gamma[...] = rng.uniform(0.5, 1.5, c)
            layer.beta[...] = rng.normal(0, 0.5, c)


def _mobilenet_block(inp, stride, multiplier=1, act="relu6", pad_first=False):
    h = L.ZeroPadding2D(((0, 1), (0, 1)))(inp) if pad_first else inp
    h = L.DepthwiseConv2D(3, strides=stride, padding="valid" if pad_first else "same",
                          depth_multiplier=multiplier, use_bias=False)(h)
    h = L.BatchNormalization()(h)
    return L.ReLU(6.0)(h) if act == "relu6" else L.Activation(act)(h)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_depthwise_bn_relu6_is_one_step_with_the_same_numbers(dtype):
    """MobileNetV2's depthwise, BatchNormalization, ReLU(6) (and the ZeroPadding2D before
    a stride-2 one) lower to ONE depthwise step: BN folded into its kernel and bias per
    output channel, ReLU6 applied by the kernel as it stores, the padding as its pads."""
    fastcnn.set_random_seed(13)
    inp = fastcnn.Input((12, 12, 3), dtype=dtype)
    h = L.Conv2D(16, 1, use_bias=False)(inp)
    h = L.BatchNormalization()(h)
    h = L.ReLU(6.0)(h)
    h = _mobilenet_block(h, 1)
    h = _mobilenet_block(h, 2, pad_first=True)
    h = _mobilenet_block(h, 1, multiplier=2, act="sigmoid")
    out = L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(h))
    model = fastcnn.Model(inp, out)
    _random_bn_stats(model)
    x = data(model, 3).astype(dtype)
    plan = model.compile_inference(3)
    kinds = [s.split()[0] for s in plan.steps]
    assert kinds == ["conv+bn+relu6", "depthwise+bn+relu6", "zeropad+depthwise+bn+relu6",
                     "depthwise+bn+sigmoid", "gap", "dense+softmax"], plan.steps
    assert plan.runner == "python"
    close(plan(x)[0], layer_by_layer(model, x)[0], np.dtype(dtype).type)


@pytest.mark.parametrize("backend", ["reference", "im2col", "numba"])
def test_depthwise_steps_on_other_backends(backend):
    fastcnn.set_random_seed(14)
    inp = fastcnn.Input((9, 9, 8))
    h = _mobilenet_block(_mobilenet_block(inp, 1), 2, multiplier=2, pad_first=True)
    model = fastcnn.Model(inp, L.GlobalAveragePooling2D()(h))
    _random_bn_stats(model)
    x = data(model, 2)
    want = layer_by_layer(model, x)[0]
    with fastcnn.use_backend(backend):
        plan = model.compile_inference(2)
        assert [s.split()[0] for s in plan.steps][:2] == [
            "depthwise+bn+relu6", "zeropad+depthwise+bn+relu6"]
        close(plan(x)[0], want)


@pytest.mark.skipif(not fastcnn.HAVE_CYTHON, reason="chains run the compiled kernels only")
def test_mobilenet_blocks_run_chained_chunk_by_chunk_with_the_same_bits(monkeypatch):
    """A direct conv feeding only a depthwise (and that feeding only a direct conv: expand,
    depthwise, project) runs as one step over chunks of images, the intermediates in
    scratch: the same bits as the steps one by one (each value summed in one order)."""
    fastcnn.set_random_seed(16)
    inp = fastcnn.Input((10, 10, 8))
    h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(32, 1, use_bias=False)(inp)))
    h = _mobilenet_block(h, 1)
    p = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False)(h))
    r = L.Add()([inp, p])                                  # a chain of three
    h2 = L.Conv2D(24, 1, activation="relu")(r)
    h2 = _mobilenet_block(h2, 2, pad_first=True)           # a chain of two: h2 read twice
    out = L.Concatenate()([L.GlobalAveragePooling2D()(h2),
                           L.GlobalAveragePooling2D()(L.Conv2D(4, 1)(h2))])
    model = fastcnn.Model(inp, L.Dense(3)(out))
    _random_bn_stats(model)
    x = data(model, 3)
    whole = model.compile_inference(3)          # 10x10 images: one chunk, no chain
    monkeypatch.setattr(ip, "_CHAIN_BYTES", 1)  # one image a chunk
    chained = model.compile_inference(3)
    assert len(chained._fns) == len(whole._fns) - 3
    assert whole.chains == [] and [len(names) for names, _ in chained.chains] == [3, 2]
    assert all(images == 1 for _, images in chained.chains)
    assert chained.arena_bytes < whole.arena_bytes   # the intermediates live in scratch
    np.testing.assert_array_equal(chained(x)[0], whole(x)[0])
    close(chained(x)[0], layer_by_layer(model, x)[0])


@pytest.mark.skipif(not fastcnn.HAVE_CYTHON, reason="Winograd runs the compiled kernels only")
@pytest.mark.parametrize("winograd", ["1", "0"])
def test_python_plan_runs_3x3_convs_by_winograd_as_the_backend_does(winograd, monkeypatch):
    """In the Python plan (here: a Concatenate keeps the C runner out) a 3x3 stride-1 conv
    on 16+ channels with 16+ filters runs by Winograd, as the training backend's forward
    does (rounding within float32 tolerance); FASTCNN_WINOGRAD=0 keeps the direct conv."""
    monkeypatch.setenv("FASTCNN_WINOGRAD", winograd)
    fastcnn.set_random_seed(17)
    inp = fastcnn.Input((9, 9, 16))
    a = L.Conv2D(32, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(24, 3, activation="relu6")(a)                 # 'valid': 7x7
    c = L.Conv2D(16, 3, strides=2, padding="same")(a)          # stride 2: direct
    out = L.Concatenate()([L.GlobalAveragePooling2D()(t) for t in (b, c)])
    model = fastcnn.Model(inp, out)
    x = data(model, 3)
    plan = model.compile_inference(3)
    kinds = [s.split()[0] for s in plan.steps if s.startswith("conv")]
    if winograd == "1":
        assert kinds == ["conv(winograd)+relu", "conv(winograd)+relu6", "conv"], plan.steps
    else:
        assert kinds == ["conv+relu", "conv+relu6", "conv"], plan.steps
    close(plan(x)[0], layer_by_layer(model, x)[0])


@needs_c
@pytest.mark.parametrize("size", [9, 5], ids=["F4x4", "F2x2"])
def test_c_runner_runs_3x3_convs_by_winograd(size):
    """The C runner's FP_WINO_CONV: a 3x3 stride-1 conv that no pool follows, F(4x4, 3x3)
    (F(2x2) under 6 output pixels a side), its ReLU after; within float32 tolerance of
    layer by layer, on 1 and 2 threads alike."""
    fastcnn.set_random_seed(18)
    model = fastcnn.Sequential([
        L.Conv2D(16, 3, padding="same", activation="relu", input_shape=(size, size, 16)),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(3)])
    x = data(model, 5)
    plan = model.compile_inference(5, runner="c")
    assert plan.runner == "c"
    assert plan.steps[0].startswith("conv(winograd)+relu"), plan.steps
    want = layer_by_layer(model, x)[0]
    close(plan(x)[0], want)
    _, max_threads = _extensions.openmp_info()
    try:
        _extensions.set_num_threads(1)
        one = plan(x)[0]
    finally:
        _extensions.set_num_threads(max_threads)
    np.testing.assert_array_equal(one, plan(x)[0])


def test_padding_the_depthwise_cannot_take_stays_a_layer():
    """A ZeroPadding2D of 3 before a 3x3 depthwise (pads past the kernel) or one that
    another layer reads too stays a step of its own; a dilated depthwise runs its own
    forward."""
    fastcnn.set_random_seed(15)
    inp = fastcnn.Input((8, 8, 4))
    a = L.ZeroPadding2D(3)(inp)
    b = L.DepthwiseConv2D(3)(a)
    c = L.ZeroPadding2D(1)(inp)
    d = L.DepthwiseConv2D(3)(c)
    e = L.Conv2D(4, 3)(c)   # a second reader of c
    f = L.DepthwiseConv2D(3, dilation_rate=2, padding="same")(inp)
    out = L.Concatenate()([L.GlobalAveragePooling2D()(t) for t in (b, d, e, f)])
    model = fastcnn.Model(inp, out)
    x = data(model, 2)
    plan = model.compile_inference(2)
    kinds = [s.split()[0] for s in plan.steps]
    assert "zeropad+depthwise" not in kinds and kinds.count("depthwise") == 2
    assert sum(s.startswith("layer ") and "zero_padding" in s for s in plan.steps) == 2
    assert any(s.startswith("layer ") and "depthwise" in s for s in plan.steps)   # dilated
    close(plan(x)[0], layer_by_layer(model, x)[0])


def test_a_dilated_conv_runs_its_own_forward():
    fastcnn.set_random_seed(6)
    model = fastcnn.Sequential([L.Conv2D(16, 3, dilation_rate=2, activation="relu",
                                         input_shape=(12, 12, 3)),
                                L.MaxPooling2D(2), L.Flatten(), L.Dense(3)])
    x = data(model, 2)
    plan = model.compile_inference(2)
    assert plan.steps[0].startswith("layer ") and plan.runner == "python"
    close(plan(x)[0], layer_by_layer(model, x)[0])
    close(model.predict(x), layer_by_layer(model, x)[0])


def test_other_backends_run_prebound_ops():
    model = standard("scratch")
    x = data(model, 2)
    want = layer_by_layer(model, x)[0]
    with fastcnn.use_backend("im2col"):
        plan = model.compile_inference(2)
        assert plan.runner == "python" and plan.arena_bytes == 0
        close(plan(x)[0], want)
        close(model.predict_on_batch(x), want)


# ------------------------------------------------------------------ automatic use
def test_predict_uses_the_plan_per_batch_size(monkeypatch):
    model = standard("fashion")
    x = data(model, 10)
    want = layer_by_layer(model, x)[0]
    calls = []
    real = ip.InferencePlan._run
    monkeypatch.setattr(ip.InferencePlan, "_run", lambda self, xs, blocking=True: calls.append(
        self.batch_size) or real(self, xs, blocking))
    close(model.predict(x, batch_size=4), want)
    assert calls == [4, 4, 2]
    close(model.predict_on_batch(x[:1]), want[:1])
    close(np.asarray(model(x[:3])), want[:3])
    assert calls[-2:] == [1, 3]
    monkeypatch.setenv("FASTCNN_INFERENCE_PLAN", "0")
    calls.clear()
    close(model.predict_on_batch(x[:2]), want[:2])
    assert calls == []


def test_a_busy_plan_lets_predict_run_layer_by_layer():
    model = standard("scratch")
    x = data(model, 2)
    want = layer_by_layer(model, x)[0]
    close(model.predict_on_batch(x), want)
    plan = ip._cache[id(model)][3]._by_size[2]
    with plan._lock:    # as if another thread were running it
        assert plan.__call__(x, False) is None
        close(model.predict_on_batch(x), want)


@needs_c
def test_every_instruction_set_of_the_c_runner():
    ext = ip._plan_ext
    model = residual_bn_model()                     # conv+bn, add, affine, gap, dense
    fashion = standard("fashion")                   # conv+pool, Winograd, GEMV
    x, xf = data(model, 3), data(fashion, 7)
    want, wantf = layer_by_layer(model, x)[0], layer_by_layer(fashion, xf)[0]
    start = ext.isa()
    tried = []
    try:
        for name in ext.ISAS:
            try:
                ext.set_isa(name)
            except ValueError:
                continue
            tried.append(name)
            close(model.compile_inference(3, runner="c")(x)[0], want)
            close(fashion.compile_inference(7, runner="c")(xf)[0], wantf)
            close(fashion.compile_inference(1, runner="c")(xf[:1])[0], wantf[:1])
    finally:
        ext.set_isa(start)
    assert "generic" in tried


@needs_c
def test_c_runner_gives_the_same_bits_on_one_and_two_threads():
    from fastcnn import _extensions
    model = standard("fashion")
    x = data(model, 48)
    plan = model.compile_inference(48, runner="c")
    before = _extensions.openmp_info()[1]
    try:
        _extensions.set_num_threads(1)
        one = plan(x)[0]
        _extensions.set_num_threads(2)
        two = plan(x)[0]
    finally:
        _extensions.set_num_threads(before)
    np.testing.assert_array_equal(one, two)
    close(one, layer_by_layer(model, x)[0])


@needs_c
@pytest.mark.parametrize("batch", [1, 3])
def test_c_runner_splits_small_batches_over_threads_with_the_same_bits(batch):
    """Below 6 rows a dense layer is a row-vector product whose columns the threads share
    (here 40 columns: 3 blocks of 16, split 1 / 2, the last one partly padding), and the
    batch-1 conv steps split their few tiles: the same bits on 1 and 2 threads."""
    from fastcnn import _extensions
    from fastcnn.layers import Dense, Flatten
    wide = fastcnn.Sequential([fastcnn.Input((8, 8, 64)), Flatten(),
                               Dense(40, activation="relu"), Dense(3)])
    fashion = standard("fashion")
    before = _extensions.openmp_info()[1]
    for model in (wide, fashion):
        x = data(model, batch)
        plan = model.compile_inference(batch, runner="c")
        try:
            _extensions.set_num_threads(1)
            one = plan(x)[0]
            _extensions.set_num_threads(2)
            two = plan(x)[0]
        finally:
            _extensions.set_num_threads(before)
        np.testing.assert_array_equal(one, two)
        close(one, layer_by_layer(model, x)[0])


def test_outputs_never_alias_the_arena():
    model = standard("fashion")
    plan = model.compile_inference(2)
    x1, x2 = data(model, 2, 1), data(model, 2, 2)
    y1 = plan(x1)[0]
    keep = y1.copy()
    y2 = plan(x2)[0]
    np.testing.assert_array_equal(y1, keep)
    assert not np.shares_memory(y1, y2)
    assert plan.arena is None or not np.shares_memory(y1, plan.arena)


# ------------------------------------------------------------------ weight changes
@pytest.mark.parametrize("runner", RUNNERS)
def test_weight_changes_invalidate_the_plan(runner, tmp_path):
    model = residual_bn_model()
    x = data(model, 2)
    plan = model.compile_inference(2, runner=runner)
    before = plan(x)[0]
    # set_weights (in place)
    rng = np.random.default_rng(9)
    model.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    after = plan(x)[0]
    assert not np.allclose(after, before)
    close(after, layer_by_layer(model, x)[0])
    # a BatchNormalization statistic changed in place (a folded, copied weight)
    bn = model.layers[2]
    bn.moving_mean[...] += 0.5
    close(plan(x)[0], layer_by_layer(model, x)[0])
    # fit: optimizer steps and the moving statistics
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1]), epochs=2, verbose=0)
    close(plan(x)[0], layer_by_layer(model, x)[0])
    close(model.predict(x), layer_by_layer(model, x)[0])
    # load_weights
    path = str(tmp_path / "w.weights.npz")
    saved = layer_by_layer(model, x)[0]
    model.save_weights(path)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    close(plan(x)[0], layer_by_layer(model, x)[0])
    model.load_weights(path)
    close(plan(x)[0], saved)


def test_predict_waits_for_stable_weights_before_recompiling(monkeypatch):
    model = residual_bn_model()
    x = data(model, 2)
    model.predict_on_batch(x)
    compiles = []
    real = ip.InferencePlan._compile
    monkeypatch.setattr(ip.InferencePlan, "_compile",
                        lambda self: compiles.append(1) or real(self))
    conv = model.layers[1]
    for step in range(3):      # a change before every predict: layer by layer, no compile
        conv.kernel[...] *= 1.01
        close(model.predict_on_batch(x), layer_by_layer(model, x)[0])
    assert compiles == []
    close(model.predict_on_batch(x), layer_by_layer(model, x)[0])   # stable: compiles
    assert compiles == [1]
    close(model.predict_on_batch(x), layer_by_layer(model, x)[0])
    assert compiles == [1]


def test_a_replaced_weight_array_is_seen():
    model = standard("fashion")
    x = data(model, 2)
    plan = model.compile_inference(2)
    plan(x)
    dense = model.layers[-1]
    dense._weights[0] = dense._weights[0] * 2.0     # a new array object in the slot
    close(plan(x)[0], layer_by_layer(model, x)[0])


def test_adding_a_layer_recompiles():
    model = standard("scratch")
    x = data(model, 2)
    model.predict(x)
    model.pop()
    model.add(L.Dense(3, activation="softmax"))
    got = model.predict(x)
    assert got.shape == (2, 3)
    close(got, layer_by_layer(model, x)[0])


# ----------------------------------------------------------------------- bad input
class Doubler(fastcnn.layers.Layer):
    def call(self, inputs, training=False):
        return inputs * 2.0


def test_a_layer_the_plan_cannot_hold_is_named_and_predict_still_works():
    fastcnn.set_random_seed(2)
    model = fastcnn.Sequential([L.Conv2D(4, 3, input_shape=(8, 8, 1)), Doubler(name="twice"),
                                L.Flatten(), L.Dense(2)])
    x = data(model, 2)
    with pytest.raises(ip.InferencePlanError, match="'twice' \\(Doubler"):
        model.compile_inference()
    close(model.predict(x), layer_by_layer(model, x)[0])
    assert isinstance(ip._cache[id(model)][3], ip.InferencePlanError)


def test_nested_model_is_refused_by_name():
    inner = fastcnn.Sequential([L.Dense(3, input_shape=(4,))], name="inner_net")
    inp = fastcnn.Input((4,))
    model = fastcnn.Model(inp, inner(inp))
    with pytest.raises(ip.InferencePlanError, match="inner_net"):
        model.compile_inference()
    x = np.ones((2, 4), np.float32)
    close(model.predict(x), layer_by_layer(model, x)[0])


def test_subclassed_model_is_refused():
    class Net(fastcnn.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, inputs, training=False):
            return self.d(inputs)
    net = Net()
    net(np.ones((1, 3), np.float32))
    with pytest.raises(ip.InferencePlanError, match="subclassed"):
        net.compile_inference()


def test_wrong_batch_size_is_a_clear_error():
    model = standard("scratch")
    plan = model.compile_inference(4)
    with pytest.raises(ValueError, match="batch_size=4, got a batch of 3"):
        plan(data(model, 3))
    with pytest.raises(ValueError, match=r"\(batch,\) \+ \(28, 28, 1\)"):
        plan(np.zeros((4, 28, 28, 2), np.float32))


def test_unbuilt_model_and_bad_arguments():
    model = fastcnn.Sequential([L.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        model.compile_inference()
    built = standard("scratch")
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            built.compile_inference(bad)
    with pytest.raises(ValueError, match="runner must be"):
        built.compile_inference(runner="gpu")


@needs_c
def test_same_bytes():
    a = np.arange(6, dtype=np.float32)
    assert ip._plan_ext.same_bytes(a, a.copy())
    b = a.copy()
    b[3] = np.nextafter(b[3], 10)
    assert not ip._plan_ext.same_bytes(a, b)
    assert not ip._plan_ext.same_bytes(a, a[:5].copy())


def test_c_runner_is_built_where_the_extensions_are_required():
    # CI builds with FASTCNN_REQUIRE_EXT=1: the C runner must not be silently absent there.
    if os.environ.get("FASTCNN_REQUIRE_EXT") != "1":
        pytest.skip("FASTCNN_REQUIRE_EXT is not 1: the compiled extensions are optional here")
    assert ip._plan_ext is not None and ip._plan_ext.ABI_VERSION == _extensions.ABI_VERSION
