"""ONNX interchange (fastcnn.onnx_io): model.export_onnx and fastcnn.load_onnx.

Optional: skipped (with the reason) without the onnx and onnxruntime packages
(``pip install fastcnn[onnx]``). The PyTorch-exported fixtures come from
tests/fixtures/onnx/make_torch_cnn.py (torch is not needed to run these tests).
"""
import os
import sys

import fastcnn
import numpy as np
import pytest

from fastcnn import layers as L
from fastcnn.onnx_io import OnnxExportError, OnnxImportError

onnx = pytest.importorskip("onnx", reason="the optional onnx package is not installed "
                                          "(pip install fastcnn[onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed "
                                                "(pip install fastcnn[onnx])")

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "onnx")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_predict(path, x):
    s = _session(path)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _export_and_compare(model, tmp_path, x, *, roundtrip=True, name="m.onnx"):
    path = tmp_path / name
    assert model.export_onnx(path) == str(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    expected = model.predict(x, verbose=0)
    got = _ort_predict(path, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)
    if roundtrip:
        back = fastcnn.load_onnx(path)
        np.testing.assert_allclose(back.predict(x, verbose=0), expected, rtol=1e-5, atol=2e-6)
    return path, proto


def _x(shape, n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + tuple(shape)).astype(np.float32)


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("case", ["scratch", "lenet5", "fashion", "catsdogs"])
def test_standard_models_export_run_and_round_trip(case, tmp_path):
    from _cases import MODELS, build_fastcnn
    spec = MODELS[case]
    model = build_fastcnn(spec)
    x = _x(spec.input_shape, n=2)
    path, proto = _export_and_compare(model, tmp_path, x)
    # NHWC input, a dynamic batch: ONNX Runtime takes batch 1 and batch 5 alike.
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == list(spec.input_shape)
    x5 = _x(spec.input_shape, n=5, seed=1)
    np.testing.assert_allclose(_ort_predict(path, x5[:1]), model.predict(x5[:1], verbose=0),
                               rtol=1e-5, atol=2e-6)
    if case != "catsdogs":
        np.testing.assert_allclose(_ort_predict(path, x5), model.predict(x5, verbose=0),
                                   rtol=1e-5, atol=2e-6)
    # One Transpose into NCHW (before the first conv) and one back before Flatten.
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Transpose") == 2 and ops.index("Transpose") == 0


def _bn(layer, channels, seed):
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(0.5, 1.5, channels), rng.uniform(-0.3, 0.3, channels),
               rng.uniform(-0.5, 0.5, channels), rng.uniform(0.5, 2.0, channels)]
    layer.set_weights([w.astype(np.float32) for w in weights])


def test_functional_residual_model(tmp_path):
    fastcnn.set_random_seed(1)
    inp = fastcnn.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    bn = L.BatchNormalization()
    x = bn(x)
    y = L.Conv2D(8, 3, padding="same")(x)
    y = L.ReLU(max_value=6.0)(y)
    x = L.Add()([x, y])                                     # the residual connection
    x = L.ZeroPadding2D(((1, 0), (2, 1)))(x)
    x = L.AveragePooling2D(3, strides=2, padding="same")(x)
    z = L.Conv2D(4, 1, strides=2, padding="same", activation="elu")(x)
    x = L.Concatenate()([L.MaxPooling2D(2, padding="same")(x), z])
    g = L.GlobalAveragePooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(16, activation="tanh")(x)
    x = L.Concatenate()([x, g])
    x = L.Reshape((4, 7))(x)
    x = L.Dense(3)(x)                                       # Dense on 3-D input
    x = L.Flatten()(x)
    out = L.Dense(5, activation="softmax")(x)
    model = fastcnn.Model(inp, out)
    _bn(bn, 8, 0)
    _, proto = _export_and_compare(model, tmp_path, _x((16, 16, 3)))
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" in ops and "Pad" in ops and "Concat" in ops


def test_layouts_two_outputs_and_nested_model(tmp_path):
    """4-D outputs come back NHWC; Dense and Softmax on 4-D NHWC tensors; a nested
    Sequential; GlobalMaxPooling2D(keepdims); Average/Maximum/Subtract/Multiply merges."""
    fastcnn.set_random_seed(2)
    inp = fastcnn.Input((9, 9, 2))
    block = fastcnn.Sequential([L.Conv2D(6, 3, padding="same", activation="relu"),
                                L.BatchNormalization()])
    a = block(inp)
    _bn(block.layers[1], 6, 3)
    b = L.Conv2D(6, 3, strides=2, padding="same")(inp)
    b = L.UpSampling2D(2)(b) if hasattr(L, "UpSampling2D") else L.Conv2D(6, 1)(a)
    b = L.Cropping2D(((0, 1), (0, 1)))(b) if hasattr(L, "Cropping2D") and b.shape[1] == 10 \
        else b
    m = L.Average()([a, b])
    m = L.Maximum()([m, L.Subtract()([a, b])])
    m = L.Multiply()([m, L.Activation("sigmoid")(a)])
    d = L.Dense(4)(m)                                        # per position, NHWC
    s = L.Softmax(axis=-1)(d)
    gm = L.GlobalMaxPooling2D(keepdims=True)(m)
    model = fastcnn.Model(inp, [s, gm])
    x = _x((9, 9, 2))
    path = tmp_path / "two.onnx"
    model.export_onnx(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = _session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    want = model.predict(x, verbose=0)
    assert [g.shape for g in got] == [(3, 9, 9, 4), (3, 1, 1, 6)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6)


ACTIVATIONS = ["relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "gelu_approximate",
               "silu", "softplus", "softsign", "hard_sigmoid", "hard_silu", "exponential",
               "sigmoid", "tanh", "softmax", "log_softmax", "linear"]


def test_activations_export(tmp_path):
    fastcnn.set_random_seed(3)
    inp = fastcnn.Input((6,))
    outs = [L.Dense(4, activation=a, name=f"d_{a}")(inp) for a in ACTIVATIONS]
    conv_in = L.Reshape((2, 3, 1))(inp)
    c = L.Conv2D(3, 2, padding="same", activation="softmax")(conv_in)   # channel softmax
    outs.append(c)
    h = L.Dense(5)(inp)
    outs += [L.ReLU()(h), L.ReLU(max_value=6)(h), L.ReLU(negative_slope=0.1)(h),
             L.ReLU(max_value=2.5, negative_slope=0.1, threshold=0.3)(h),
             L.LeakyReLU(0.3)(h), L.ELU(0.5)(h), L.Softmax()(h),
             L.Rescaling(0.5, offset=-1.0)(h)]
    p = L.PReLU()
    outs.append(p(h))
    pc = L.PReLU(shared_axes=[1, 2])
    outs.append(pc(c))
    model = fastcnn.Model(inp, outs)
    p.set_weights([np.linspace(-0.5, 0.5, 5, dtype=np.float32)])
    pc.set_weights([np.full((1, 1, 3), 0.25, np.float32)])
    x = _x((6,), n=4) * 3
    path = tmp_path / "acts.onnx"
    model.export_onnx(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = _session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    want = model.predict(x, verbose=0)
    for name, g, w in zip([o.name for o in sess.get_outputs()], got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=name)


def _issue14_layers():
    """The issue-14 layers that this fastcnn has (name, layer factory)."""
    cases = [
        ("depthwise_same_s2", "DepthwiseConv2D", dict(kernel_size=3, strides=2, padding="same",
                                                      depth_multiplier=2, activation="relu")),
        ("depthwise_dilated", "DepthwiseConv2D", dict(kernel_size=3, padding="same",
                                                      dilation_rate=2)),
        ("separable", "SeparableConv2D", dict(filters=5, kernel_size=3, strides=2,
                                              padding="same", depth_multiplier=2,
                                              activation="relu6")),
        ("conv_dilated", "Conv2D", dict(filters=4, kernel_size=3, padding="same",
                                        dilation_rate=(2, 3))),
        ("transpose_same_s2", "Conv2DTranspose", dict(filters=4, kernel_size=3, strides=2,
                                                      padding="same")),
        ("transpose_valid_s2", "Conv2DTranspose", dict(filters=4, kernel_size=3, strides=2,
                                                       padding="valid", activation="relu")),
        ("transpose_output_padding", "Conv2DTranspose", dict(filters=4, kernel_size=4,
                                                             strides=3, padding="same",
                                                             output_padding=1)),
        ("upsampling_nearest", "UpSampling2D", dict(size=(2, 3))),
        ("upsampling_bilinear", "UpSampling2D", dict(size=2, interpolation="bilinear")),
        ("cropping", "Cropping2D", dict(cropping=((1, 2), (0, 3)))),
    ]
    return [pytest.param(cls, kw, id=name) for name, cls, kw in cases]


@pytest.mark.parametrize("cls,kwargs", _issue14_layers())
def test_issue14_layers_export(cls, kwargs, tmp_path):
    if not hasattr(L, cls):
        pytest.skip(f"this fastcnn has no layers.{cls}")
    try:
        layer = getattr(L, cls)(**kwargs)
    except TypeError as exc:
        pytest.skip(f"layers.{cls} lacks an argument of this case: {exc}")
    fastcnn.set_random_seed(5)
    model = fastcnn.Sequential([fastcnn.Input((11, 10, 3)), layer, L.Conv2D(2, 1)])
    roundtrip = cls in ("DepthwiseConv2D", "SeparableConv2D", "Conv2D")
    _export_and_compare(model, tmp_path, _x((11, 10, 3), n=2), roundtrip=roundtrip)


def test_activation_layers_round_trip_at_opset_20(tmp_path):
    """PReLU (shared axes), LeakyReLU, ELU, Softmax, gelu (ONNX's Gelu from opset 20),
    selu, hard_sigmoid: export -> load_onnx -> the same numbers; ONNX Runtime agrees."""
    fastcnn.set_random_seed(1)
    inp = fastcnn.Input((5, 4, 3))
    prelu = L.PReLU(shared_axes=[1, 2])
    y = prelu(L.Conv2D(3, 3, padding="same")(inp))
    y = L.Softmax(axis=-1)(L.ELU(0.5)(L.LeakyReLU(0.3)(y)))
    y = L.Activation("gelu")(L.Conv2D(2, 1)(y))
    d = L.Activation("hard_sigmoid")(L.Dense(3, activation="selu")(L.Flatten()(y)))
    e = L.Dense(3, activation="gelu_approximate")(L.Flatten()(y))
    model = fastcnn.Model(inp, [d, y, e])
    prelu.set_weights([np.array([[[0.1, -0.2, 0.3]]], np.float32)])
    path = tmp_path / "acts20.onnx"
    model.export_onnx(path, opset=20)
    assert "Gelu" in [n.op_type for n in onnx.load(str(path)).graph.node]
    x = _x((5, 4, 3), n=2)
    want = model.predict(x, verbose=0)
    sess = _session(path)
    back = fastcnn.load_onnx(path)
    for w, o, b in zip(want, sess.run(None, {sess.get_inputs()[0].name: x}),
                       back.predict(x, verbose=0)):
        np.testing.assert_allclose(o, w, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(b, w, rtol=1e-6, atol=1e-7)


def test_fixed_batch_and_opset(tmp_path):
    from _cases import MODELS, build_fastcnn
    model = build_fastcnn(MODELS["scratch"])
    path = tmp_path / "b2.onnx"
    model.export_onnx(path, batch_size=2, opset=13)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 13
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    x = _x((28, 28, 1), n=2)
    np.testing.assert_allclose(_ort_predict(path, x), model.predict(x, verbose=0),
                               rtol=1e-5, atol=2e-6)
    with pytest.raises(ValueError, match="batch_size"):
        model.export_onnx(tmp_path / "bad.onnx", batch_size=0)
    with pytest.raises(ValueError, match="opset"):
        model.export_onnx(tmp_path / "bad.onnx", opset=9)
    assert not (tmp_path / "bad.onnx").exists()


# ------------------------------------------------------------------ import
@pytest.mark.parametrize("case", ["cnn", "resnet", "decoder"])
def test_pytorch_exported_nchw_models(case):
    """torch.onnx.export'ed NCHW CNNs (fixtures) become NHWC fastcnn models with
    PyTorch's predictions: BatchNorm, explicit (non-'same') pads, a counted-padding
    average pool, a Flatten of NCHW features before Linear (permuted Dense rows), the
    residual Add, Clip (ReLU6), LeakyReLU, Concat, x.view(x.size(0), -1), ConvTranspose
    and nearest/bilinear Resize."""
    data = np.load(os.path.join(FIXTURES, "torch_cases.npz"))
    model = fastcnn.load_onnx(os.path.join(FIXTURES, f"torch_{case}.onnx"))
    x_nchw = data[f"{case}_x"]
    assert model.input_shape == (None,) + x_nchw.shape[2:] + x_nchw.shape[1:2]
    got = model.predict(np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)), verbose=0)
    want = data[f"{case}_y"]
    if want.ndim == 4:                    # a 4-D NCHW output comes back NHWC
        want = want.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pytorch_dynamo_export_with_external_data_and_a_fixed_batch():
    """What torch.onnx.export writes by default (the dynamo exporter): weights in a
    ``.data`` file beside the model and the batch size fixed in its reshape
    (make_torch_dynamo.py). fastcnn reads both and takes any batch size."""
    path = os.path.join(FIXTURES, "torch_dynamo.onnx")
    ref = np.load(os.path.join(FIXTURES, "torch_dynamo.npz"))
    x = np.ascontiguousarray(ref["x"].transpose(0, 2, 3, 1))
    model = fastcnn.load_onnx(path)
    np.testing.assert_allclose(model.predict(x, verbose=0), ref["y"], rtol=1e-5, atol=1e-6)
    three = np.concatenate([x, x[:1]])
    np.testing.assert_allclose(model.predict(three, verbose=0)[2], ref["y"][0],
                               rtol=1e-5, atol=1e-6)


def test_pytorch_model_round_trips_through_fastcnn_export(tmp_path):
    """NCHW file -> fastcnn (NHWC) -> exported again -> ONNX Runtime: the same numbers."""
    data = np.load(os.path.join(FIXTURES, "torch_cases.npz"))
    model = fastcnn.load_onnx(os.path.join(FIXTURES, "torch_cnn.onnx"))
    path = tmp_path / "again.onnx"
    model.export_onnx(path)
    x = np.ascontiguousarray(data["cnn_x"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(_ort_predict(path, x), data["cnn_y"], rtol=1e-5, atol=1e-6)


def test_hand_written_graph_operators_match_onnxruntime(tmp_path):
    """Operators PyTorch's small CNNs do not use: auto_pad SAME_UPPER, Pad, a scalar Mul
    (Rescaling), Clip(0, 6), a bias-free Conv + Add(bias) folded, ReduceMean over H, W,
    MatMul + Add (Dense), Gemm with transB/alpha/beta, Concat of NCHW features, HardSwish."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5,
                                       name)

    inits = [init("w1", 4, 3, 3, 3), init("w2", 4, 4, 3, 3), init("b2", 1, 4, 1, 1),
             init("w3", 8, 6), init("b3", 6), init("w4", 5, 6), init("b4", 5),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 0, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [
        helper.make_node("Mul", ["x", "half"], ["s"], name="scale"),
        helper.make_node("Conv", ["s", "w1"], ["c1"], name="conv_same", auto_pad="SAME_UPPER",
                         strides=[2, 2]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
        helper.make_node("Pad", ["r1", "pads"], ["p1"], name="pad"),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv_nobias"),
        helper.make_node("Add", ["c2", "b2"], ["c2b"], name="bias"),
        helper.make_node("HardSwish", ["c2b"], ["h2"], name="hswish"),
        helper.make_node("Concat", ["h2", "c2b"], ["cat"], name="cat", axis=1),
        helper.make_node("ReduceMean", ["cat", "axes"], ["gap"], name="gap", keepdims=0),
        helper.make_node("MatMul", ["gap", "w3"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b3"], ["fc"], name="fc_bias"),
        helper.make_node("Tanh", ["fc"], ["t"], name="tanh"),
        helper.make_node("Gemm", ["t", "w4", "b4"], ["y"], name="gemm", transB=1, alpha=0.7,
                         beta=1.5),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    proto = helper.make_model(helper.make_graph(nodes, "hand", [x_info], [y_info], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "hand.onnx"
    path.write_bytes(proto.SerializeToString())
    x = _x((3, 9, 8), n=3)
    want = _ort_predict(path, x)
    model = fastcnn.load_onnx(path)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 2 and "Rescaling" in kinds and "ZeroPadding2D" in kinds
    got = model.predict(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_round_trip_keeps_layers_and_weights(tmp_path):
    from _cases import MODELS, build_fastcnn
    model = build_fastcnn(MODELS["lenet5"])
    path = tmp_path / "lenet.onnx"
    model.export_onnx(path)
    back = fastcnn.load_onnx(path)
    kinds = [type(layer).__name__ for layer in back.layers]
    assert kinds == ["InputLayer"] + [type(layer).__name__ for layer in model.layers]
    assert back.input_shape == model.input_shape
    for a, b in zip(model.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = _x((28, 28, 1), n=2)
    # The same layers and weights; predict may take another kernel path for another model
    # object (the inference plan), so equal within float32 rounding.
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-7)


def test_two_inputs_and_a_flatten_first_model_round_trip(tmp_path):
    """Two inputs; a 4-D input read by Flatten first (no Transpose follows it in the file:
    the file's metadata says fastcnn's inputs are NHWC, so it comes back NHWC)."""
    fastcnn.set_random_seed(4)
    img = fastcnn.Input((6, 5, 2), name="img")
    vec = fastcnn.Input((7,), name="vec")
    a = L.Dense(4, activation="relu")(L.Flatten()(img))
    b = L.Dense(4, activation="sigmoid")(vec)
    model = fastcnn.Model([img, vec], L.Dense(3)(L.Concatenate()([a, b])))
    path = tmp_path / "two_in.onnx"
    model.export_onnx(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    xi, xv = _x((6, 5, 2), n=4), _x((7,), n=4, seed=2)
    want = model.predict([xi, xv], verbose=0)
    sess = _session(path)
    got = sess.run(None, {"img": xi, "vec": xv})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    back = fastcnn.load_onnx(path)
    assert back.input_shape == [(None, 6, 5, 2), (None, 7)]
    np.testing.assert_allclose(back.predict([xi, xv], verbose=0), want, rtol=1e-5, atol=2e-6)


# --------------------------------------------------------------- bad input
def _graph_file(tmp_path, nodes, inits=(), name="g.onnx", shape=(None, 3, 4, 4)):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                      ["N" if d is None else d for d in shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def test_padded_max_pool_after_a_relu_as_torchvision_resnets_stem(tmp_path):
    """MaxPool(k3, s2, pads 1) is not TensorFlow's 'same'; after a ReLU (values >= 0) it is a
    zero pad and a 'valid' pool, exactly (ONNX Runtime's numbers); before any other layer it
    is refused, naming the node."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")
    stem = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[3, 3],
                             strides=[2, 2], pads=[1, 1, 1, 1])]
    path = _graph_file(tmp_path, stem, [w, b], name="stem.onnx", shape=(None, 3, 9, 10))
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    want = _ort_predict(path, x).transpose(0, 2, 3, 1)    # a 4-D output comes back NHWC
    model = fastcnn.load_onnx(path)
    got = model.predict(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), verbose=0)
    assert got.shape == want.shape == (2, 5, 5, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    no_relu = [stem[0], helper.make_node("MaxPool", ["c"], ["y"], name="pool_raw",
                                         kernel_shape=[3, 3], strides=[2, 2],
                                         pads=[1, 1, 1, 1])]
    path = _graph_file(tmp_path, no_relu, [w, b], name="raw.onnx", shape=(None, 3, 9, 10))
    with pytest.raises(OnnxImportError, match=r"'MaxPool'.*'pool_raw'.*ReLU-like"):
        fastcnn.load_onnx(path)


def test_unknown_operator_names_type_and_node(tmp_path):
    from onnx import helper
    path = _graph_file(tmp_path, [
        helper.make_node("Relu", ["x"], ["r"], name="first_relu"),
        helper.make_node("LRN", ["r"], ["y"], name="my_lrn_node", size=3)])
    with pytest.raises(OnnxImportError, match=r"'LRN'.*'my_lrn_node'"):
        fastcnn.load_onnx(path)


def test_unsupported_attribute_names_node(tmp_path):
    from onnx import helper, numpy_helper
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    path = _graph_file(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], name="grouped",
                                                   group=3, kernel_shape=[3, 3])], [w],
                       shape=(None, 3, 5, 5))
    with pytest.raises(OnnxImportError, match=r"'Conv'.*'grouped'.*group"):
        fastcnn.load_onnx(path)
    path = _graph_file(tmp_path, [helper.make_node("MaxPool", ["x"], ["y"], name="mp",
                                                   kernel_shape=[3, 3], strides=[2, 2],
                                                   pads=[1, 1, 1, 1])], name="mp.onnx",
                       shape=(None, 3, 8, 8))
    with pytest.raises(OnnxImportError, match=r"'MaxPool'.*'mp'.*padding"):
        fastcnn.load_onnx(path)


def test_truncated_empty_and_foreign_files(tmp_path):
    from _cases import MODELS, build_fastcnn
    good = tmp_path / "good.onnx"
    build_fastcnn(MODELS["scratch"]).export_onnx(good)
    data = good.read_bytes()
    for i, cut in enumerate((len(data) // 2, len(data) - 7, 40)):
        bad = tmp_path / f"cut{i}.onnx"
        bad.write_bytes(data[:cut])
        with pytest.raises(OnnxImportError, match="truncated|corrupt"):
            fastcnn.load_onnx(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(OnnxImportError, match="empty"):
        fastcnn.load_onnx(empty)
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(OnnxImportError):
        fastcnn.load_onnx(foreign)
    with pytest.raises(OnnxImportError, match="max_bytes"):
        fastcnn.load_onnx(good, max_bytes=100)
    with pytest.raises(FileNotFoundError):
        fastcnn.load_onnx(tmp_path / "missing.onnx")


def test_damaged_files_raise_onnx_import_error_only(tmp_path):
    """Every prefix of a small exported file and random byte changes: a model or an
    OnnxImportError, never another exception (found by fuzzing: names that are not UTF-8
    came back from protobuf as bytes)."""
    fastcnn.set_random_seed(0)
    model = fastcnn.Sequential([fastcnn.Input((6, 6, 1)), L.Conv2D(2, 3, activation="relu"),
                                L.MaxPooling2D(2), L.Flatten(), L.Dense(3)])
    good = tmp_path / "small.onnx"
    model.export_onnx(good)
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    cases = [data[:k] for k in range(1, len(data), 23)]
    for _ in range(120):
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        cases.append(bytes(b))
    bad = tmp_path / "bad.onnx"
    loaded = 0
    for case in cases:
        bad.write_bytes(case)
        try:
            fastcnn.load_onnx(bad)
            loaded += 1
        except OnnxImportError:
            pass
    assert 0 < loaded < len(cases)


def test_initializer_sizes_are_checked(tmp_path):
    """A tensor declaring more values than it holds is refused before any allocation."""
    from onnx import TensorProto, helper
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4096, 4096],
                    raw_data=b"\0" * 16)
    path = _graph_file(tmp_path, [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
                       [w], shape=(None, 4096))
    with pytest.raises(OnnxImportError, match=r"'w'.*\[4096, 4096\].*holds 16 bytes"):
        fastcnn.load_onnx(path)
    ext = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 2],
                      data_location=TensorProto.EXTERNAL)
    ext.external_data.add(key="location", value="../../etc/passwd")
    path = _graph_file(tmp_path, [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")],
                       [ext], name="ext.onnx", shape=(None, 4))
    with pytest.raises(OnnxImportError, match="external"):
        fastcnn.load_onnx(path)
    # A declared input shape cannot make the loader allocate what the file does not hold:
    # a Flatten of 3 x 8192 x 8192 NCHW features (the Dense row order) is refused.
    path = _graph_file(tmp_path, [helper.make_node("Flatten", ["x"], ["y"], name="flat")],
                       name="huge.onnx", shape=(None, 3, 8192, 8192))
    with pytest.raises(OnnxImportError, match=r"'Flatten'.*'flat'.*201326592 NCHW features"):
        fastcnn.load_onnx(path)


def _external_copy(tmp_path, name="ext.onnx"):
    """A small exported model saved again with its weights in one external file, as
    PyTorch's dynamo exporter writes them (``name`` + ``name.data``)."""
    fastcnn.set_random_seed(1)
    model = fastcnn.Sequential([fastcnn.Input((8, 8, 2)), L.Conv2D(4, 3, activation="relu"),
                                L.MaxPooling2D(2), L.Flatten(), L.Dense(5)])
    plain = tmp_path / "plain.onnx"
    model.export_onnx(plain)
    proto = onnx.load(str(plain))
    folder = tmp_path / "ext"
    folder.mkdir(exist_ok=True)
    path = folder / name
    onnx.save_model(proto, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=name + ".data", size_threshold=0)
    return model, path


def test_external_data_is_read_from_the_models_folder(tmp_path):
    model, path = _external_copy(tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    x = _x((8, 8, 2))
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(fastcnn.load_onnx(path).predict(x, verbose=0), want,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_ort_predict(path, x), want, rtol=1e-5, atol=2e-6)
    total = path.stat().st_size + (path.parent / "ext.onnx.data").stat().st_size
    with pytest.raises(OnnxImportError, match="external data hold more than max_bytes"):
        fastcnn.load_onnx(path, max_bytes=total - 1)
    fastcnn.load_onnx(path, max_bytes=total)


def _relocated(path, tmp_path, tag, **changes):
    """``path``'s model with its first external tensor's reference changed."""
    proto = onnx.load(str(path), load_external_data=False)
    t = next(t for t in proto.graph.initializer
             if t.data_location == onnx.TensorProto.EXTERNAL)
    info = {e.key: e.value for e in t.external_data}
    info.update({k: str(v) for k, v in changes.items()})
    del t.external_data[:]
    for k, v in info.items():
        t.external_data.add(key=k, value=v)
    out = path.parent / f"{tag}.onnx"
    onnx.save_model(proto, str(out))
    return out, t.name


def test_external_data_outside_the_folder_or_out_of_bounds_is_refused(tmp_path):
    _, path = _external_copy(tmp_path)
    data = path.parent / "ext.onnx.data"
    outside = tmp_path / "outside.data"
    outside.write_bytes(data.read_bytes())
    (path.parent / "link.data").symlink_to(outside)
    (path.parent / "sub").mkdir()
    cases = {
        "absolute": (dict(location=str(outside)), "absolute path"),
        "dotdot": (dict(location="../outside.data"), "leads out of the model's folder"),
        "link": (dict(location="link.data"), "leads out of the model's folder"),
        "folder": (dict(location="sub"), "not a regular file"),
        "missing": (dict(location="nothing.data"), "cannot be read"),
        "length": (dict(length=3), "3 bytes, but its shape"),
        "offset": (dict(offset=data.stat().st_size), "truncated"),
        "nonint": (dict(offset="x"), "not an integer"),
    }
    if hasattr(os, "mkfifo"):
        os.mkfifo(path.parent / "fifo.data")
        cases["fifo"] = (dict(location="fifo.data"), "not a regular file")
    for tag, (changes, message) in cases.items():
        bad, tensor = _relocated(path, tmp_path, tag, **changes)
        with pytest.raises(OnnxImportError, match=message) as info:
            fastcnn.load_onnx(bad)
        assert repr(tensor) in str(info.value), (tag, str(info.value))


def test_unsupported_layer_on_export_writes_nothing(tmp_path):
    inp = fastcnn.Input((8, 8, 3))
    x = L.Conv2D(4, 3)(inp)
    x = L.Resizing(4, 4, name="shrink")(x)
    model = fastcnn.Model(inp, L.Flatten()(x))
    path = tmp_path / "model.onnx"
    with pytest.raises(OnnxExportError, match=r"'shrink' \(Resizing\)"):
        model.export_onnx(path)
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"old")                         # an existing file stays as it was
    with pytest.raises(OnnxExportError):
        model.export_onnx(path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]

    custom = fastcnn.Sequential([L.Dense(3, activation=lambda t: t * 2.0, name="cust",
                                         input_shape=(4,))])
    with pytest.raises(OnnxExportError, match=r"'cust' \(Dense\).*custom activation"):
        custom.export_onnx(tmp_path / "c.onnx")
    assert not (tmp_path / "c.onnx").exists()


def test_subclassed_and_unbuilt_models_are_refused(tmp_path):
    class Net(fastcnn.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net.build((None, 3))
    with pytest.raises(ValueError, match="subclassed"):
        net.export_onnx(tmp_path / "n.onnx")
    with pytest.raises(ValueError, match="not built"):
        fastcnn.Sequential([L.Dense(2)]).export_onnx(tmp_path / "n.onnx")
    assert os.listdir(tmp_path) == []


def test_missing_onnx_package_names_the_extra(monkeypatch, tmp_path):
    from _cases import MODELS, build_fastcnn
    model = build_fastcnn(MODELS["scratch"])
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install fastcnn\[onnx\]"):
        model.export_onnx(tmp_path / "m.onnx")
    with pytest.raises(ImportError, match=r"pip install fastcnn\[onnx\]"):
        fastcnn.load_onnx(tmp_path / "m.onnx")
