"""fastcnn.ops: values against NumPy / Keras's formulas, and every backward through the
GradientTape against numerical gradients (float64, random upstream gradients:
tests/tape_gradcheck.py)."""
import fastcnn  # noqa: I001  (before NumPy)
import numpy as np
import pytest

from fastcnn import GradientTape, Tensor, Variable, activations, backends, ops
from fastcnn.gradcheck import off_kinks
from tape_gradcheck import check_op

CPU_BACKENDS = [b for b in backends.available() if b != "cuda"]


@pytest.fixture
def r():
    return np.random.default_rng(7)


def pos(shape, r):
    return r.uniform(0.5, 2.0, shape)


# ------------------------------------------------------------------ element-wise


UNARY = {
    "square": (ops.square, np.square, "any"),
    "sqrt": (ops.sqrt, np.sqrt, "pos"),
    "exp": (ops.exp, np.exp, "any"),
    "log": (ops.log, np.log, "pos"),
    "log1p": (ops.log1p, np.log1p, "pos"),
    "abs": (ops.abs, np.abs, "kinks"),
    "negative": (ops.negative, np.negative, "any"),
    "relu": (ops.relu, lambda a: np.maximum(a, 0), "kinks"),
    "relu6": (ops.relu6, lambda a: np.clip(a, 0, 6), "kinks"),
    "sigmoid": (ops.sigmoid, lambda a: 1 / (1 + np.exp(-a)), "any"),
    "tanh": (ops.tanh, np.tanh, "any"),
    "softplus": (ops.softplus, lambda a: np.log1p(np.exp(a)), "any"),
    "softsign": (ops.softsign, lambda a: a / (1 + np.abs(a)), "kinks"),
    "silu": (ops.silu, lambda a: a / (1 + np.exp(-a)), "any"),
    "log_sigmoid": (ops.log_sigmoid, lambda a: -np.log1p(np.exp(-a)), "any"),
    "elu": (ops.elu, lambda a: np.where(a > 0, a, np.expm1(a)), "kinks"),
    "selu": (ops.selu, lambda a: 1.0507009873554805 * np.where(
        a > 0, a, 1.6732632423543772 * np.expm1(a)), "kinks"),
    "leaky_relu": (ops.leaky_relu, lambda a: np.where(a > 0, a, 0.2 * a), "kinks"),
    "leaky_relu_0.05": (lambda a: ops.leaky_relu(a, negative_slope=0.05),
                        lambda a: np.where(a > 0, a, 0.05 * a), "kinks"),
    "elu_0.5": (lambda a: ops.elu(a, alpha=0.5),
                lambda a: np.where(a > 0, a, 0.5 * np.expm1(a)), "kinks"),
    "gelu": (ops.gelu, lambda a: 0.5 * a * (1 + np.tanh(
        0.7978845608028654 * (a + 0.044715 * a ** 3))), "any"),
    "gelu_exact": (lambda a: ops.gelu(a, approximate=False), lambda a: 0.5 * a * (
        1 + np.vectorize(__import__("math").erf)(a / np.sqrt(2))), "any"),
}


def _input(kind, r, shape=(3, 4)):
    if kind == "pos":
        return pos(shape, r)
    if kind == "kinks":
        return off_kinks(shape, r) * 3
    return r.standard_normal(shape)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_values_and_gradients(name, r):
    op, ref, kind = UNARY[name]
    x = _input(kind, r)
    np.testing.assert_allclose(np.asarray(op(x)), ref(x), rtol=1e-12, atol=1e-12)
    check_op(op, x)


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("name", [n for n in activations.KNOWN if n != "linear"])
def test_kernel_activations_every_backend(backend_name, name, r):
    """Every activation fastcnn.activations knows runs its backend kernel pair through
    fastcnn.ops.<name>, on every CPU backend, in float32 and float64."""
    op = getattr(ops, name)
    x = off_kinks((3, 5), r) * 2.5      # off 0, and off hard_sigmoid's kinks at +-3
    with fastcnn.use_backend(backend_name):
        y64 = np.asarray(op(x))
        y32 = op(x.astype(np.float32))
        assert y32.dtype == np.float32
        np.testing.assert_allclose(np.asarray(y32), y64, rtol=2e-6, atol=2e-6)
        check_op(op, x)
    with fastcnn.use_backend("reference"):
        np.testing.assert_allclose(y64, np.asarray(op(x)), rtol=1e-12, atol=1e-12)


def test_sign_has_zero_gradient(r):
    x = off_kinks((4,), r)
    np.testing.assert_array_equal(np.asarray(ops.sign(x)), np.sign(x))
    t = Tensor(x)
    with GradientTape() as tape:
        tape.watch(t)
        y = ops.sum(ops.sign(t) * t)
    np.testing.assert_array_equal(tape.gradient(y, t), np.sign(x))


@pytest.mark.parametrize("name", ["add", "subtract", "multiply", "divide", "maximum",
                                  "minimum", "power"])
def test_binary_broadcasting(name, r):
    op = getattr(ops, name)
    x = off_kinks((2, 3, 4), r) + 2.0
    y = off_kinks((3, 1), r) + 2.5   # distinct from x: no ties
    expected = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply,
                "divide": np.divide, "maximum": np.maximum, "minimum": np.minimum,
                "power": np.power}[name]
    np.testing.assert_allclose(np.asarray(op(x, y)), expected(x, y), rtol=1e-13)
    check_op(op, x, y)
    check_op(op, y, x)
    check_op(lambda a: op(a, 1.5), x)


def test_maximum_minimum_ties_go_to_x():
    """TensorFlow's rule: x takes the whole gradient on ties."""
    x, y = Tensor(np.array([1.0, 2.0, 3.0])), Tensor(np.array([1.0, 5.0, 0.0]))
    for op in (ops.maximum, ops.minimum):
        with GradientTape() as tape:
            tape.watch([x, y])
            z = op(x, y)
        gx, gy = tape.gradient(z, [x, y], output_gradients=np.ones(3))
        assert gx[0] == 1 and gy[0] == 0


def test_where_and_clip(r):
    c = r.random((3, 4)) > 0.5
    x, y = r.standard_normal((3, 4)), r.standard_normal((4,))
    np.testing.assert_array_equal(np.asarray(ops.where(c, x, y)), np.where(c, x, y))
    check_op(lambda a, b: ops.where(c, a, b), x, y)
    x = off_kinks((3, 4), r)
    lo, hi = -0.5 + 0.01 * r.random(4), 0.45 + 0.01 * r.random((3, 1))
    np.testing.assert_array_equal(np.asarray(ops.clip(x, lo, hi)), np.clip(x, lo, hi))
    check_op(ops.clip, x, lo, hi)
    check_op(lambda a: ops.clip(a, -0.5, 0.5), x)


def test_clip_passes_the_gradient_at_the_bounds():
    x = Tensor(np.array([-1.0, 0.0, 1.0, 2.0]))
    with GradientTape() as tape:
        tape.watch(x)
        y = ops.clip(x, 0.0, 1.0)
    np.testing.assert_array_equal(tape.gradient(y, x, output_gradients=np.ones(4)),
                                  [0, 1, 1, 0])


def test_clip_bad_bounds():
    with pytest.raises(ValueError, match="x_min must be <= x_max"):
        ops.clip(np.ones(2), 1.0, 0.0)


# ---------------------------------------------------------------- linear algebra


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((4,), (4, 3)),
                                   ((3, 4), (4,)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4,))])
def test_matmul(sa, sb, r):
    a, b = r.standard_normal(sa), r.standard_normal(sb)
    np.testing.assert_allclose(np.asarray(ops.matmul(a, b)), a @ b, rtol=1e-12)
    check_op(ops.matmul, a, b)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 2)), ((2, 3, 4), (4,)), ((4,), (4,)),
                                   ((3,), ())])
def test_dot(sa, sb, r):
    a, b = r.standard_normal(sa), r.standard_normal(sb)
    np.testing.assert_allclose(np.asarray(ops.dot(a, b)), np.dot(a, b), rtol=1e-12)
    check_op(ops.dot, a, b, wrt=[0, 1] if sb else [0])


def test_dot_of_high_rank_is_refused(r):
    with pytest.raises(NotImplementedError, match="dot"):
        ops.dot(np.ones((2, 3, 4)), np.ones((2, 4, 3)))


# -------------------------------------------------------------------- reductions


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "var", "std", "logsumexp"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (1, False), ((0, 2), True),
                                           (-1, False)])
def test_reductions(name, axis, keepdims, r):
    x = off_kinks((2, 3, 4), r)   # distinct values: no max/min ties
    op = getattr(ops, name)
    ref = (lambda a, axis, keepdims: np.log(np.sum(np.exp(a), axis=axis, keepdims=keepdims))
           ) if name == "logsumexp" else getattr(np, name)
    np.testing.assert_allclose(np.asarray(op(x, axis=axis, keepdims=keepdims)),
                               ref(x, axis=axis, keepdims=keepdims), rtol=1e-12)
    check_op(lambda a: op(a, axis=axis, keepdims=keepdims), x)


def test_max_ties_share_the_gradient():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]))
    with GradientTape() as tape:
        tape.watch(x)
        y = ops.max(x, axis=1)
    np.testing.assert_array_equal(tape.gradient(y, x, output_gradients=np.ones(2)),
                                  [[0, 0.5, 0.5], [1, 0, 0]])


def test_argmax_argmin_are_constants(r):
    x = r.standard_normal((3, 5))
    np.testing.assert_array_equal(np.asarray(ops.argmax(x, axis=1)), np.argmax(x, axis=1))
    np.testing.assert_array_equal(np.asarray(ops.argmin(x)), np.argmin(x))
    t = Tensor(x)
    with GradientTape() as tape:
        tape.watch(t)
        i = ops.argmax(t, axis=1)
    assert tape.gradient(i, t, output_gradients=np.ones(3)) is None
    assert np.asarray(i).dtype.kind == "i"
    assert np.asarray(ops.greater(x, 0)).dtype == np.bool_


# ------------------------------------------------------------------------ shapes


def test_shape_ops(r):
    x = r.standard_normal((2, 3, 4))
    cases = [
        (lambda a: ops.reshape(a, (4, -1)), lambda a: a.reshape(4, -1)),
        (lambda a: ops.transpose(a, (2, 0, 1)), lambda a: np.transpose(a, (2, 0, 1))),
        (lambda a: ops.expand_dims(a, 1), lambda a: np.expand_dims(a, 1)),
        (lambda a: ops.squeeze(ops.expand_dims(a, -1), -1), lambda a: a),
        (lambda a: ops.tile(a, (2, 1, 3)), lambda a: np.tile(a, (2, 1, 3))),
        (lambda a: ops.tile(a, (2, 1, 1, 2)), lambda a: np.tile(a, (2, 1, 1, 2))),
        (lambda a: ops.tile(a, 2), lambda a: np.tile(a, 2)),
        (lambda a: ops.pad(a, [[0, 1], [2, 0], [1, 1]]),
         lambda a: np.pad(a, [[0, 1], [2, 0], [1, 1]])),
        (lambda a: ops.pad(a, 1, constant_values=3.0),
         lambda a: np.pad(a, 1, constant_values=3.0)),
        (lambda a: a[1, ::2, [0, 0, 3]], lambda a: a[1, ::2, [0, 0, 3]]),
        (lambda a: ops.concatenate([a, a * 2, a[:, :1]], axis=1),
         lambda a: np.concatenate([a, a * 2, a[:, :1]], axis=1)),
        (lambda a: ops.stack([a, a[::-1]], axis=-1), lambda a: np.stack([a, a[::-1]], -1)),
    ]
    for op, ref in cases:
        np.testing.assert_array_equal(np.asarray(op(Tensor(x))), ref(x))
        check_op(op, x)


def test_split(r):
    x = r.standard_normal((3, 6))
    parts = ops.split(x, [1, 4], axis=1)
    assert [p.shape for p in parts] == [(3, 1), (3, 3), (3, 2)]
    w = [r.standard_normal(p.shape) for p in parts]

    def op(a):
        a, _, c = ops.split(a, [1, 4], axis=1)   # the middle part is unused
        return ops.concatenate([a * w[0], c * w[2]], axis=1)
    check_op(op, x)
    with pytest.raises(ValueError, match="split"):
        ops.split(x, 4, axis=1)


def test_shape_errors(r):
    with pytest.raises(ValueError, match="concatenate along axis 0"):
        ops.concatenate([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="same shape"):
        ops.stack([np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match="not of length 1"):
        ops.squeeze(np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="pad_width"):
        ops.pad(np.ones((2, 3)), [[1, -1], [0, 0]])
    with pytest.raises(NotImplementedError, match="mode='constant'"):
        ops.pad(np.ones(3), 1, mode="reflect")


# ------------------------------------------------------------- tensors and dtypes


def test_creation_and_cast(r):
    assert ops.zeros((2, 3)).dtype == np.float32 and ops.ones(4).shape == (4,)
    x = r.standard_normal((2, 2))
    assert ops.zeros_like(x).dtype == np.float64
    np.testing.assert_array_equal(np.asarray(ops.ones_like(x, dtype="float32")),
                                  np.ones((2, 2), np.float32))
    assert ops.convert_to_tensor([1, 2]).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(ops.one_hot(np.array([2, 0]), 3)),
                                  [[0, 0, 1], [1, 0, 0]])
    t = Tensor(x)
    with GradientTape() as tape:
        tape.watch(t)
        y = ops.sum(ops.cast(t, "float32") * 2.0)
        z = ops.cast(t, "int32")
        s = ops.sum(ops.stop_gradient(t) * t)
    assert y.dtype == np.float32 and z.dtype == np.int32
    g = tape.gradient([y, s], t)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, 2.0 + x)


# ------------------------------------------------------------------ softmax family


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_log_softmax(axis, r):
    x = r.standard_normal((3, 4, 5)) * 3
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    sm = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(np.asarray(ops.softmax(x, axis=axis)), sm, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ops.log_softmax(x, axis=axis)), np.log(sm),
                               rtol=1e-12, atol=1e-12)
    check_op(lambda a: ops.softmax(a, axis=axis), x)
    check_op(lambda a: ops.log_softmax(a, axis=axis), x)


def test_log_softmax_is_stable():
    y = np.asarray(ops.log_softmax(np.array([[1000.0, 0.0, -1000.0]])))
    np.testing.assert_allclose(y, [[0.0, -1000.0, -2000.0]])


# ------------------------------------------------------------------------ losses


def test_categorical_crossentropy(r):
    t = r.random((4, 5))
    t /= t.sum(1, keepdims=True)
    p = r.uniform(0.05, 1.0, (4, 5))
    expected = -np.sum(t * np.log(p / p.sum(1, keepdims=True)), axis=1)
    np.testing.assert_allclose(np.asarray(ops.categorical_crossentropy(t, p)), expected,
                               rtol=1e-12)
    check_op(ops.categorical_crossentropy, t, p)
    z = r.standard_normal((4, 5)) * 3
    ls = z - np.log(np.exp(z).sum(1, keepdims=True))
    np.testing.assert_allclose(np.asarray(ops.categorical_crossentropy(t, z, from_logits=True)),
                               -np.sum(t * ls, 1), rtol=1e-12)
    check_op(lambda a, b: ops.categorical_crossentropy(a, b, from_logits=True), t, z)
    # another axis
    check_op(lambda a, b: ops.categorical_crossentropy(a, b, axis=0), t, p)
    check_op(lambda a, b: ops.categorical_crossentropy(a, b, from_logits=True, axis=0), t, z)


def test_sparse_categorical_crossentropy(r):
    labels = np.array([0, 4, 2, 2])
    p = r.uniform(0.05, 1.0, (4, 5))
    c = p.sum(1)
    expected = np.log(c) - np.log(p[np.arange(4), labels])
    np.testing.assert_allclose(np.asarray(ops.sparse_categorical_crossentropy(labels, p)),
                               expected, rtol=1e-12)
    check_op(ops.sparse_categorical_crossentropy, labels, p, wrt=[1])
    z = r.standard_normal((4, 5)) * 3
    check_op(lambda a, b: ops.sparse_categorical_crossentropy(a, b, from_logits=True),
             labels, z, wrt=[1])
    # (N, 1) labels are squeezed, as Keras does; rank-3 outputs
    np.testing.assert_allclose(np.asarray(ops.sparse_categorical_crossentropy(
        labels[:, None], p)), expected, rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(ops.sparse_categorical_crossentropy(labels[:, None].astype(float), z,
                                                       from_logits=True)),
        np.asarray(ops.sparse_categorical_crossentropy(labels, z, from_logits=True)))
    z3 = r.standard_normal((2, 3, 5))
    l3 = r.integers(0, 5, (2, 3))
    check_op(lambda b: ops.sparse_categorical_crossentropy(l3, b, from_logits=True), z3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*got label 5"):
        ops.sparse_categorical_crossentropy(np.array([0, 5, 1, 1]), p)
    with pytest.raises(ValueError, match="target must have the shape"):
        ops.sparse_categorical_crossentropy(np.array([0, 1]), p)
    with pytest.raises(ValueError, match="only axis=-1"):
        ops.sparse_categorical_crossentropy(labels, p, axis=0)


def test_binary_crossentropy(r):
    t = r.random((3, 4))
    p = r.uniform(0.05, 0.95, (3, 4))
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(np.asarray(ops.binary_crossentropy(t, p)), expected,
                               rtol=1e-12)
    check_op(ops.binary_crossentropy, t, p)
    z = r.standard_normal((3, 4)) * 3
    check_op(lambda a, b: ops.binary_crossentropy(a, b, from_logits=True), t, z)
    big = np.array([[100.0, -100.0]])
    y = np.asarray(ops.binary_crossentropy(np.array([[0.0, 1.0]]), big, from_logits=True))
    np.testing.assert_allclose(y, [[100.0, 100.0]])   # stable: not the 1e-7 clip's 16.1
    with pytest.raises(ValueError, match="same shape"):
        ops.binary_crossentropy(np.ones(3), np.ones(4))


def test_probability_losses_clip_like_keras():
    """An output of exactly 0 or 1 is clipped to [1e-7, 1 - 1e-7]; no gradient there."""
    p = Tensor(np.array([[0.0, 1.0]]))
    with GradientTape() as tape:
        tape.watch(p)
        y = ops.binary_crossentropy(np.array([[1.0, 0.0]]), p)
        total = ops.sum(y)
    np.testing.assert_allclose(np.asarray(y), -np.log(1e-7) * np.ones((1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(tape.gradient(total, p), [[0.0, 0.0]])


# --------------------------------------------------------------------- operators


def test_tensor_operators_record(r):
    x = r.standard_normal((3, 3))
    check_op(lambda a: (2.0 - a) * a / (a * a + 1.0) + a @ a.T - (-a) ** 2
             + abs(a) + a[0], x)
    v = Variable(x)
    with GradientTape() as tape:
        y = (v * v).sum()
    np.testing.assert_allclose(tape.gradient(y, v), 2 * x)


# ------------------------------------------------------------------- bad input


def test_errors_name_the_op():
    with pytest.raises(TypeError, match="log.*dtype"):
        ops.log(np.array(["a"]))
    with pytest.raises(ValueError, match="softmax needs an array of rank >= 1"):
        ops.softmax(3.0)
