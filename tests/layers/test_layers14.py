"""The layers of issue 14: DepthwiseConv2D, SeparableConv2D, Conv2D(dilation_rate),
Conv2DTranspose, Cropping2D, UpSampling2D (and ReLU's arguments, ZeroPadding2D's asymmetric
and mixed forms).

Forward AND backward against Keras 3.15 (tests/fixtures/keras/layers14.npz, float64, written
by make_layers14.py with TensorFlow's GradientTape) on every CPU backend; float64 gradient
checks over the input and every weight; weight names, shapes, order and parameter counts as
Keras's; configs through JSON and a saved model; Keras's error messages for bad arguments.
"""
import inspect
import json
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import backends, gradcheck, initializers, layers

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "keras")
with open(os.path.join(FIXTURES, "layers14.json")) as f:
    META = json.load(f)
ARRAYS = np.load(os.path.join(FIXTURES, "layers14.npz"))

CPU_BACKENDS = [b for b in backends.available() if b != "cuda"]
KERNEL_LAYERS = {"DepthwiseConv2D": "depthwise_conv2d", "SeparableConv2D": "depthwise_conv2d"}


def make(case):
    """The fastcnn layer of a fixture case (Keras's class name and kwargs)."""
    meta = META["cases"][case]
    return getattr(layers, meta["class"])(**meta["kwargs"])


def built(layer, shape, dtype="float64"):
    layer.build((None,) + tuple(shape[1:]), dtype)
    return layer


def skip_missing_op(backend_name, cls_name):
    op = KERNEL_LAYERS.get(cls_name)
    if op and not backends.get(backend_name).implements(f"{op}_forward"):
        pytest.skip(f"backend {backend_name!r} has no {op} kernel yet (another helper's work)")


# ------------------------------------------------------------- against Keras
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_forward_and_backward_equal_keras(case, backend):
    meta = META["cases"][case]
    skip_missing_op(backend, meta["class"])
    a = {k.split("/", 1)[1]: ARRAYS[k] for k in ARRAYS.files if k.startswith(case + "/")}
    layer = built(make(case), a["x"].shape)
    n_weights = len(meta["weights"])
    layer.set_weights([a[f"w{i}"] for i in range(n_weights)])
    # TensorFlow's bilinear resize computes in float32 whatever the input dtype (its
    # fixture values are float32 numbers): float32 rounding there, float64 elsewhere.
    tol = dict(rtol=2e-6, atol=1e-6) if "bilinear" in case else dict(rtol=1e-9, atol=1e-11)
    with backends.use_backend(backend):
        y, ctx = layer.forward(a["x"], training=True)
        np.testing.assert_allclose(y, a["y"], **tol)
        dx, grads = layer.backward(a["dy"].copy(), ctx)
    np.testing.assert_allclose(dx, a["dx"], **tol)
    assert len(grads) == n_weights
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, a[f"dw{i}"], err_msg=f"dw{i}", **tol)


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_weights_counts_and_shapes_equal_keras(case):
    meta = META["cases"][case]
    shape = meta["input_shape"]
    layer = built(make(case), shape)
    assert [[v.name, list(v.shape)] for v in layer.variables] == meta["weights"]
    assert layer.count_params() == meta["count_params"]
    assert list(layer.compute_output_shape((None,) + tuple(shape[1:]))) == meta["output_shape"]


@pytest.mark.parametrize("case", ["dw_same_m2", "sep_m2_same", "sep_s2_valid_nobias",
                                  "tr_s2_same", "tr_s1_valid_nobias", "conv_dil2_same"])
def test_summary_totals_equal_keras(case):
    meta = META["cases"][case]
    model = fastcnn.Sequential([layers.Input(tuple(meta["input_shape"][1:])), make(case)])
    lines = []
    model.summary(print_fn=lines.append)
    out = "\n".join(lines)
    assert f"Total params: {meta['count_params']:,}" in out, out
    assert str(tuple(meta["output_shape"])).replace("None", "None") in out, out


@pytest.mark.parametrize("cls", sorted(META["signatures"]))
def test_constructor_signature_equals_keras(cls):
    params = list(inspect.signature(getattr(layers, cls).__init__).parameters.values())
    ours = [[p.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
            for p in params[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert ours == META["signatures"][cls]


def test_keras_fans_of_the_new_kernel_shapes():
    for shape, fans in META["fans"]:
        assert list(initializers.compute_fans(tuple(shape))) == fans


def test_depthwise_glorot_uniform_limit_uses_keras_fans(rng):
    layer = built(layers.DepthwiseConv2D(3, depth_multiplier=2), (1, 16, 16, 64))
    fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 2        # Keras: receptive field x axes -2, -1
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(layer.kernel).max() <= limit
    assert np.abs(layer.kernel).max() > 0.9 * limit  # 1152 draws: reaches near the limit


# ------------------------------------------------------------ gradient checks
def layer_op(layer):
    """The layer as a gradcheck op over its input and every trainable weight."""
    slots = layer._param_slots()

    def forward(x, *ws):
        for s, w in zip(slots, ws):
            s[...] = w
        return layer.forward(x, training=True)

    def backward(dy, ctx):
        dx, grads = layer.backward(dy, ctx)
        return (dx,) + tuple(grads)
    return forward, backward, slots


GRADCHECK = {
    "conv_dil_same": (lambda: layers.Conv2D(3, (3, 2), padding="same", dilation_rate=(2, 3),
                                            activation="tanh"), (2, 7, 8, 2)),
    "conv_dil_valid": (lambda: layers.Conv2D(2, 2, dilation_rate=3), (1, 7, 6, 2)),
    "dw_m2_same_s2": (lambda: layers.DepthwiseConv2D(3, 2, "same", depth_multiplier=2),
                      (2, 7, 6, 3)),
    "dw_dil_stride": (lambda: layers.DepthwiseConv2D((3, 2), (2, 1), "same", dilation_rate=2),
                      (2, 7, 6, 2)),
    "sep_m2": (lambda: layers.SeparableConv2D(3, 3, padding="same", depth_multiplier=2,
                                              activation="sigmoid"), (2, 6, 5, 2)),
    "sep_dil_nobias": (lambda: layers.SeparableConv2D(2, 2, dilation_rate=2, use_bias=False),
                       (1, 6, 5, 3)),
    "tr_s2_same": (lambda: layers.Conv2DTranspose(3, 3, 2, "same"), (2, 3, 4, 2)),
    "tr_s23_valid_op": (lambda: layers.Conv2DTranspose(2, (2, 3), (2, 3), output_padding=1),
                        (1, 3, 3, 2)),
    "tr_dil_same": (lambda: layers.Conv2DTranspose(2, 3, padding="same", dilation_rate=2),
                    (1, 4, 5, 2)),
    "crop": (lambda: layers.Cropping2D(((1, 0), (2, 1))), (2, 4, 5, 2)),
    "up_nearest": (lambda: layers.UpSampling2D((3, 2)), (2, 3, 2, 2)),
    "up_bilinear": (lambda: layers.UpSampling2D((2, 3), interpolation="bilinear"),
                    (2, 3, 4, 2)),
}


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("name", sorted(GRADCHECK))
def test_gradcheck(name, backend, rng):
    if backend not in CPU_BACKENDS:
        pytest.skip(f"backend {backend!r} is not available here")
    make_layer, shape = GRADCHECK[name]
    layer = built(make_layer(), shape)
    skip_missing_op(backend, type(layer).__name__)
    forward, backward, slots = layer_op(layer)
    weights = [rng.standard_normal(s.shape) * 0.5 for s in slots]
    x = rng.standard_normal(shape)
    with backends.use_backend(backend):
        gradcheck.check_backward(forward, backward, [x] + weights)


def transpose_by_scatter(x, kernel, bias, strides, pad_before, dilation, out_hw):
    """Conv2DTranspose's definition: every input pixel scatters ``x[i] W[a]^T`` to output
    ``i*s + a*d - pad_before`` (the forward conv's input gradient)."""
    n, h, w, _ = x.shape
    kh, kw, f, _ = kernel.shape
    y = np.zeros((n,) + tuple(out_hw) + (f,)) + (0 if bias is None else bias)
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    t = i * strides[0] + a * dilation[0] - pad_before[0]
                    u = j * strides[1] + b * dilation[1] - pad_before[1]
                    if 0 <= t < out_hw[0] and 0 <= u < out_hw[1]:
                        y[:, t, u, :] += x[:, i, j, :] @ kernel[a, b].T
    return y


def transpose_configs():
    out = []
    for k in (1, 2, 3, 4):
        for s in (1, 2, 3):
            for padding in ("valid", "same"):
                for op in [None] + list(range(s)):
                    for n_in in (1, 2, 3):
                        out.append((k, s, padding, op, n_in))
    return out


def test_transpose_equals_its_definition_on_many_small_configs(rng):
    """Every kernel size 1-4, stride 1-3, padding, output_padding and input size 1-3 that
    Keras accepts (TensorFlow refuses sizes that do not convolve back: skipped), against the
    scatter definition; the phase forward and the zero-insertion forward agree."""
    checked = 0
    for k, s, padding, op, n_in in transpose_configs():
        layer = layers.Conv2DTranspose(2, (k, max(k - 1, 1)), strides=(s, 1), padding=padding,
                                       output_padding=None if op is None else (op, 0))
        try:
            built(layer, (1, n_in, 3, 2))
        except ValueError as exc:
            assert "does not convolve back" in str(exc) or "output would have" in str(exc)
            continue
        layer.set_weights([rng.standard_normal(w.shape) for w in layer.get_weights()])
        x = rng.standard_normal((2, n_in, 3, 2))
        y, _ = layer.forward(x)
        pads = (layer._pad[0][0], layer._pad[1][0])
        expected = transpose_by_scatter(x, layer.kernel, layer.bias, layer.strides, pads,
                                        (1, 1), y.shape[1:3])
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12,
                                   err_msg=str((k, s, padding, op, n_in)))
        np.testing.assert_allclose(layer._zero_insert_forward(backends.current(), x), y,
                                   rtol=1e-12, atol=1e-12)
        checked += 1
    assert checked > 100


def test_dilated_transpose_equals_its_definition(rng):
    checked = 0
    for k in (2, 3):
        for d in (2, 3):
            for padding in ("valid", "same"):
                for n_in in (1, 2, 4):
                    layer = layers.Conv2DTranspose(3, (k, 2), padding=padding,
                                                   dilation_rate=(d, 2))
                    try:
                        built(layer, (1, n_in, 3, 2))
                    except ValueError as exc:
                        assert "convolve back" in str(exc) or "output would have" in str(exc)
                        continue
                    layer.set_weights([rng.standard_normal(w.shape) for w in layer.get_weights()])
                    x = rng.standard_normal((2, n_in, 3, 2))
                    y, _ = layer.forward(x)
                    expected = transpose_by_scatter(x, layer.kernel, layer.bias, (1, 1),
                                                    (layer._pad[0][0], layer._pad[1][0]),
                                                    layer.dilation_rate, y.shape[1:3])
                    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
                    checked += 1
    assert checked > 10


def test_need_dx_false_gives_the_same_weight_gradients(rng):
    for make_layer, shape in (GRADCHECK["tr_s2_same"], GRADCHECK["sep_m2"],
                              GRADCHECK["conv_dil_same"], GRADCHECK["dw_dil_stride"]):
        layer = built(make_layer(), shape)
        x = rng.standard_normal(shape)
        y, ctx = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        dx, grads = layer.backward(dy, ctx)
        y, ctx = layer.forward(x)
        none, grads2 = layer.backward(dy, ctx, need_dx=False)
        assert none is None and dx is not None
        for g, g2 in zip(grads, grads2):
            np.testing.assert_array_equal(g, g2)


# ------------------------------------------------------- every CPU backend alike
@pytest.mark.parametrize("make_layer,shape", [
    GRADCHECK["dw_m2_same_s2"], GRADCHECK["sep_m2"], GRADCHECK["tr_s2_same"],
    GRADCHECK["conv_dil_same"]], ids=["depthwise", "separable", "transpose", "dilated"])
def test_every_cpu_backend_gives_the_same_float32_answer(make_layer, shape, rng):
    layer = built(make_layer(), shape, "float32")
    x = rng.standard_normal(shape).astype(np.float32)
    results = {}
    for name in CPU_BACKENDS:
        if KERNEL_LAYERS.get(type(layer).__name__) and \
                not backends.get(name).implements("depthwise_conv2d_forward"):
            continue
        with backends.use_backend(name):
            y, ctx = layer.forward(x)
            dy = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
            dx, grads = layer.backward(dy, ctx)
        assert y.dtype == dx.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
        results[name] = (y, dx) + tuple(grads)
    assert "reference" in results
    for name, got in results.items():
        for a, b in zip(got, results["reference"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


# ------------------------------------------------------------ configs, saving
EXAMPLES = {
    "DepthwiseConv2D": lambda: layers.DepthwiseConv2D(
        (3, 2), strides=2, padding="same", depth_multiplier=3, activation="relu6",
        use_bias=False, depthwise_initializer="he_uniform", depthwise_regularizer="l2",
        bias_constraint="non_neg"),
    "SeparableConv2D": lambda: layers.SeparableConv2D(
        4, 3, padding="same", dilation_rate=2, depth_multiplier=2, activation="relu",
        pointwise_initializer=initializers.GlorotNormal(seed=3), pointwise_regularizer="l1",
        depthwise_constraint="max_norm"),
    "Conv2DTranspose": lambda: layers.Conv2DTranspose(
        3, (3, 2), strides=(2, 1), padding="valid", output_padding=(1, 0),
        kernel_initializer="he_normal", bias_initializer="ones"),
    "Conv2D": lambda: layers.Conv2D(3, 3, padding="same", dilation_rate=(2, 1)),
    "Cropping2D": lambda: layers.Cropping2D(((1, 0), (2, 1))),
    "UpSampling2D": lambda: layers.UpSampling2D((2, 3), interpolation="bilinear"),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_config_round_trip(name):
    layer = EXAMPLES[name]()
    config = json.loads(json.dumps(layer.get_config()))
    again = type(layer).from_config(config)
    assert json.loads(json.dumps(again.get_config())) == config


def test_keras_config_keys():
    dw = layers.DepthwiseConv2D(3).get_config()
    assert {"depth_multiplier", "kernel_size", "strides", "padding", "data_format",
            "dilation_rate", "activation", "use_bias", "depthwise_initializer",
            "bias_initializer", "depthwise_regularizer", "bias_regularizer",
            "activity_regularizer", "depthwise_constraint", "bias_constraint"} <= set(dw)
    assert not any(k.startswith("kernel_") and k != "kernel_size" for k in dw)
    sep = layers.SeparableConv2D(2, 3).get_config()
    assert {"pointwise_initializer", "pointwise_regularizer", "pointwise_constraint",
            "depthwise_initializer", "filters"} <= set(sep)
    tr = layers.Conv2DTranspose(2, 3).get_config()
    assert tr["output_padding"] is None and tr["dilation_rate"] == (1, 1)
    assert layers.Conv2D(2, 3).get_config()["dilation_rate"] == (1, 1)


def test_model_with_the_new_layers_saves_loads_and_trains(tmp_path, rng):
    model = fastcnn.Sequential([
        layers.Input((8, 8, 3)),
        layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu"),
        layers.Cropping2D(((1, 1), (0, 2))),
        layers.SeparableConv2D(4, 3, padding="same", dilation_rate=2),
        layers.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1),
        layers.UpSampling2D(interpolation="bilinear"),
        layers.Conv2D(2, 3, dilation_rate=2, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(2),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    x = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    labels = np.array([0, 1, 1, 0])
    model.train_on_batch(x, labels)
    model.save(tmp_path / "m.fcnn")
    loaded = fastcnn.load_model(tmp_path / "m.fcnn")
    assert [type(a) for a in loaded.layers] == [type(b) for b in model.layers]
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6)


@pytest.mark.parametrize("make_layer", [
    lambda act: layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation=act),
    lambda act: layers.SeparableConv2D(4, 3, padding="same", activation=act),
    lambda act: layers.Conv2D(4, 3, padding="same", dilation_rate=2, activation=act),
    lambda act: layers.Conv2DTranspose(4, 3, strides=2, padding="same", activation=act),
], ids=["depthwise", "separable", "dilated", "transpose"])
def test_relu_then_max_pool_fusion_changes_nothing(make_layer, rng):
    """A ReLU producer feeding a MaxPooling2D is fused (fastcnn.layers.fusion); the same
    model with the ReLU as its own layer after the pool is not: one SGD step, same weights."""
    def model(fused):
        stack = [layers.Input((6, 6, 2)), make_layer("relu" if fused else None)]
        stack += [layers.MaxPooling2D()] + ([] if fused else [layers.ReLU()])
        m = fastcnn.Sequential(stack + [layers.Flatten(), layers.Dense(3)])
        m.compile(fastcnn.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        return m
    a, b = model(True), model(False)
    b.set_weights(a.get_weights())
    x = rng.standard_normal((4, 6, 6, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    a.train_on_batch(x, labels)
    b.train_on_batch(x, labels)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_layer", [
    lambda: layers.Conv2D(3, 3, padding="same", dilation_rate=2, activation="relu"),
    lambda: layers.Conv2D(3, (3, 2), dilation_rate=(2, 3)),
    lambda: layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu"),
    lambda: layers.SeparableConv2D(3, 3, padding="same", activation="relu"),
    lambda: layers.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu"),
    lambda: layers.Cropping2D(((1, 0), (0, 2))),
    lambda: layers.UpSampling2D(interpolation="bilinear"),
], ids=["dilated_same", "dilated_valid", "depthwise", "separable", "transpose", "crop",
        "bilinear"])
def test_predict_equals_the_layer_by_layer_forward(make_layer, rng):
    """predict (which may run a compiled inference plan) computes what the layers do."""
    model = fastcnn.Sequential([layers.Input((10, 10, 2)), make_layer(),
                                layers.MaxPooling2D(), layers.Flatten(), layers.Dense(2)])
    x = rng.standard_normal((4, 10, 10, 2)).astype(np.float32)
    h = x
    for layer in model.layers:
        h, _ = layer.forward(h)
    np.testing.assert_allclose(model.predict(x, verbose=0), h, rtol=1e-5, atol=1e-5)


def test_runs_on_device_flags():
    assert layers.DepthwiseConv2D(3).runs_on_device
    assert layers.SeparableConv2D(2, 3).runs_on_device
    assert layers.Conv2D(2, 3).runs_on_device
    # space-to-batch, zero insertion, cropping and resizing are NumPy at the layer level
    assert not layers.DepthwiseConv2D(3, dilation_rate=2).runs_on_device
    assert not layers.Conv2D(2, 3, dilation_rate=2).runs_on_device
    assert not layers.Conv2DTranspose(2, 3).runs_on_device
    assert not layers.Cropping2D(1).runs_on_device
    assert not layers.UpSampling2D().runs_on_device


def test_exported_from_fastcnn_layers():
    for name in ("DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Cropping2D",
                 "UpSampling2D"):
        assert name in layers.__all__ and getattr(fastcnn.layers, name).__name__ == name
    registry = fastcnn.saving.layer_registry()
    assert {"DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Cropping2D",
            "UpSampling2D"} <= set(registry)


# ---------------------------------------------------------------- bad input
def keras_message(name):
    return META["errors"][name]["keras_error"]


@pytest.mark.parametrize("name", ["conv_stride_and_dilation", "transpose_stride_and_dilation",
                                  "transpose_output_padding_ge_strides",
                                  "depthwise_multiplier_0"])
def test_keras_argument_errors(name):
    meta = META["errors"][name]
    with pytest.raises(ValueError) as info:
        getattr(layers, meta["class"])(**meta["kwargs"])
    assert str(info.value) == keras_message(name).split(": ", 1)[1]


def test_cropping_larger_than_the_input():
    meta = META["errors"]["cropping_too_large"]
    assert "Values in `cropping` argument should be smaller" in keras_message(
        "cropping_too_large")
    with pytest.raises(ValueError, match=r"Values in `cropping` argument should be smaller.*"
                                         r"input_shape=\(None, 4, 5, 1\).*\(\(2, 2\), \(0, 0\)\)"):
        built(layers.Cropping2D(**meta["kwargs"]), [1] + meta["input_shape"])


def test_transpose_output_size_that_does_not_convolve_back():
    meta = META["errors"]["transpose_k4_s2_same_op0"]
    assert keras_message("transpose_k4_s2_same_op0") is not None  # TensorFlow refuses it
    with pytest.raises(ValueError, match=r"output of spatial size \(6, 6\).*does not "
                                         r"convolve back to the input's size \(4, 4\)"):
        built(layers.Conv2DTranspose(**meta["kwargs"]), [1] + meta["input_shape"])


def test_depthwise_accepts_stride_with_dilation_as_keras():
    assert keras_message("depthwise_stride_and_dilation") is None
    layers.DepthwiseConv2D(3, strides=2, dilation_rate=2)


def test_kernel_too_large_for_valid():
    assert "zero or negative" in keras_message("separable_kernel_too_large")
    with pytest.raises(ValueError, match=r"kernel_size \(9, 9\) is larger than the input"):
        built(layers.SeparableConv2D(2, 5, dilation_rate=2), (1, 6, 6, 1))


@pytest.mark.parametrize("make_layer,pattern", [
    (lambda: layers.DepthwiseConv2D(3, depth_multiplier=-1), r"depth_multiplier=-1"),
    (lambda: layers.DepthwiseConv2D(0), r"kernel_size must be >= 1, got 0"),
    (lambda: layers.DepthwiseConv2D(3, padding="full"), r"padding must be 'valid' or 'same', "
                                                        r"got 'full'"),
    (lambda: layers.DepthwiseConv2D(3, data_format="channels_first"), r"data_format"),
    (lambda: layers.DepthwiseConv2D(3, dilation_rate=(1, 0)), r"dilation_rate must be >= 1"),
    (lambda: layers.SeparableConv2D(0, 3), r"filters must be a positive int, got 0"),
    (lambda: layers.SeparableConv2D(2, 3, pointwise_initializer="nope"), r"nope"),
    (lambda: layers.Conv2DTranspose(2, 3, output_padding=-1), r"output_padding must be >= 0"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=(1, 0)), r"strides must be >= 1"),
    (lambda: layers.Cropping2D(-1), r"cropping must not be negative.*got -1"),
    (lambda: layers.Cropping2D((1, 2, 3)), r"cropping must be an int, a tuple.*got \(1, 2, 3\)"),
    (lambda: layers.UpSampling2D(interpolation="bicubic"),
     r"interpolation must be one of \['nearest', 'bilinear'\].*'bicubic'"),
    (lambda: layers.UpSampling2D(0), r"size must be >= 1, got 0"),
    (lambda: layers.DepthwiseConv2D(3, activity_regularizer="l2"), r"activity_regularizer"),
])
def test_bad_arguments_name_the_argument_and_value(make_layer, pattern):
    with pytest.raises((ValueError, TypeError, NotImplementedError), match=pattern):
        make_layer()


@pytest.mark.parametrize("layer", [layers.DepthwiseConv2D(3), layers.SeparableConv2D(2, 3),
                                   layers.Conv2DTranspose(2, 3), layers.Cropping2D(1),
                                   layers.UpSampling2D()], ids=lambda l: type(l).__name__)
def test_wrong_rank_names_the_layer_and_shape(layer):
    with pytest.raises(ValueError, match=r"4-D input.*\(None, 5, 5\)"):
        layer.build((None, 5, 5))


def test_channel_mismatch_after_build_is_refused():
    layer = built(layers.DepthwiseConv2D(3), (1, 5, 5, 3))
    with pytest.raises(ValueError, match=r"has shape \(1, 5, 5, 4\), expected \(None, 5, 5, 3\)"):
        layer(np.zeros((1, 5, 5, 4)))


@pytest.mark.parametrize("cls", ["DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"])
def test_unknown_channels_are_refused_unknown_sizes_taken_by_the_kernel_layers(cls):
    """(Unknown height and width: tests/layers/test_unknown_size.py.)"""
    layer = getattr(layers, cls)(*([2] if cls != "DepthwiseConv2D" else []), 3)
    with pytest.raises(ValueError, match=rf"{cls} needs a known number of input channels, "
                                         rf"got \(None, 5, 5, None\)"):
        layer.build((None, 5, 5, None))
    layer = getattr(layers, cls)(*([2] if cls != "DepthwiseConv2D" else []), 3)
    layer.build((None, None, 5, 3))
    assert layer.output_shape[1] is None


def test_reshaping_layers_take_unknown_spatial_sizes():
    up = layers.UpSampling2D((2, 3))
    up.build((None, None, 4, 3))
    assert up.output_shape == (None, None, 12, 3)
    crop = layers.Cropping2D(((1, 0), (1, 2)))
    crop.build((None, 5, None, 3))
    assert crop.output_shape == (None, 4, None, 3)
