"""The GradientTape itself (fastcnn.autodiff): fan-out sums, persistence, watching,
unconnected sources, the structure of sources, Variables, and its errors."""
import fastcnn  # noqa: I001  (before NumPy)
import numpy as np
import pytest

from fastcnn import GradientTape, Tensor, Variable, ops


@pytest.fixture
def x():
    return Tensor(np.array([1.0, -2.0, 3.0]))


def test_fan_out_sums_the_gradients(x):
    with GradientTape() as tape:
        tape.watch(x)
        a = x * x            # x used twice by one op ...
        b = ops.exp(x)       # ... and by two more ops
        y = ops.sum(a + b + x)
    np.testing.assert_allclose(tape.gradient(y, x), 2 * x.numpy() + np.exp(x.numpy()) + 1)


def test_diamond_and_reused_intermediate(x):
    with GradientTape() as tape:
        tape.watch(x)
        h = ops.tanh(x)
        y = ops.sum(h * h + 3.0 * h)      # h fans out to two consumers
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(tape.gradient(y, x), (2 * t + 3) * (1 - t * t))


def test_gradient_with_respect_to_an_intermediate(x):
    with GradientTape() as tape:
        tape.watch(x)
        h = x * 2.0
        y = ops.sum(h * h)
    gh, gx = tape.gradient(y, [h, x])
    np.testing.assert_allclose(gh, 2 * h.numpy())
    np.testing.assert_allclose(gx, 8 * x.numpy())


def test_non_persistent_tape_gives_one_gradient(x):
    with GradientTape() as tape:
        tape.watch(x)
        y = ops.sum(x * x)
    tape.gradient(y, x)
    with pytest.raises(RuntimeError, match="already called.*persistent=True"):
        tape.gradient(y, x)


def test_persistent_tape_gives_several(x):
    with GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ops.sum(x * x)
        z = ops.sum(ops.square(x) * 3.0)
    np.testing.assert_allclose(tape.gradient(y, x), 2 * x.numpy())
    np.testing.assert_allclose(tape.gradient(z, x), 6 * x.numpy())
    np.testing.assert_allclose(tape.gradient(y, x), 2 * x.numpy())


def test_persistent_tape_repeats_kernel_backwards():
    """A node's backward (a backend kernel's ctx) may be run more than once."""
    rng = np.random.default_rng(0)
    xs = Tensor(rng.standard_normal((1, 5, 5, 2)))
    w = Variable(rng.standard_normal((3, 3, 2, 3)))
    with GradientTape(persistent=True) as tape:
        tape.watch(xs)
        y = ops.sum(fastcnn.nn.max_pool2d(fastcnn.nn.relu(
            fastcnn.nn.conv2d(xs, w, 1, "SAME")), 2, 2, "SAME") ** 2)
    first = tape.gradient(y, [xs, w])
    second = tape.gradient(y, [xs, w])
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_watch_is_needed_for_tensors_and_arrays(x):
    with GradientTape() as tape:
        y = ops.sum(x * x)
    assert tape.gradient(y, x) is None
    a = np.array([1.0, 2.0])
    with GradientTape() as tape:
        tape.watch(a)
        y = ops.sum(ops.square(a))
    np.testing.assert_allclose(tape.gradient(y, a), 2 * a)


def test_trainable_variables_are_watched_automatically():
    v = Variable(np.array([1.0, 2.0]))
    frozen = Variable(np.array([3.0]), trainable=False)
    with GradientTape() as tape:
        y = ops.sum(v * v) + ops.sum(frozen)
    assert tape.watched_variables() == [v]
    gv, gf = tape.gradient(y, [v, frozen])
    np.testing.assert_allclose(gv, [2.0, 4.0])
    assert gf is None
    with GradientTape(watch_accessed_variables=False) as tape:
        y = ops.sum(v * v)
    assert tape.gradient(y, v) is None
    with GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(frozen)
        y = ops.sum(frozen * 2.0)
    np.testing.assert_allclose(tape.gradient(y, frozen), [2.0])


def test_watched_variables_survive_the_gradient_call():
    v = Variable(np.array([1.0, 2.0]))
    with GradientTape() as tape:
        y = ops.sum(v * v)
    tape.gradient(y, v)
    assert tape.watched_variables() == [v]


def test_a_variable_and_its_array_are_the_same_source():
    v = Variable(np.array([1.0, 2.0]))
    with GradientTape() as tape:
        y = ops.sum(v * v)
    np.testing.assert_allclose(tape.gradient(y, v.value), [2.0, 4.0])


def test_unconnected_sources(x):
    other = Variable(np.ones((2, 2)))
    with GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ops.sum(x * 2.0)
        i = ops.argmax(x)               # no gradient: not a path
        z = ops.sum(ops.stop_gradient(x) * x)
    assert tape.gradient(y, other) is None
    np.testing.assert_array_equal(
        tape.gradient(y, other, unconnected_gradients="zero"), np.zeros((2, 2)))
    assert tape.gradient(i, x, output_gradients=np.ones(())) is None
    np.testing.assert_allclose(tape.gradient(z, x), x.numpy())   # only the second factor
    with pytest.raises(ValueError, match="unconnected_gradients must be 'none' or 'zero'"):
        tape.gradient(y, x, unconnected_gradients="zeros")


def test_nested_and_dict_sources(x):
    v1, v2, v3 = (Variable(np.full(2, float(k))) for k in (1, 2, 3))
    with GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = ops.sum(v1 * v2 * v3) + ops.sum(x)
    g = tape.gradient(y, [v1, (v2, [v3, x])])
    assert isinstance(g, list) and isinstance(g[1], tuple) and isinstance(g[1][1], list)
    np.testing.assert_allclose(g[0], [6, 6])
    np.testing.assert_allclose(g[1][0], [3, 3])
    np.testing.assert_allclose(g[1][1][0], [2, 2])
    np.testing.assert_allclose(g[1][1][1], [1, 1, 1])
    d = tape.gradient(y, {"b": v2, "a": v1, "z": Variable(np.zeros(1))})
    assert list(d) == ["b", "a", "z"] and d["z"] is None
    np.testing.assert_allclose(d["a"], [6, 6])


def test_several_targets_sum_and_output_gradients(x):
    with GradientTape() as tape:
        tape.watch(x)
        y1 = x * 3.0
        y2 = ops.sum(x * x)
    g = tape.gradient([y1, y2], x, output_gradients=[np.array([1.0, 0.0, 2.0]), 1.0])
    np.testing.assert_allclose(g, np.array([3.0, 0.0, 6.0]) + 2 * x.numpy())


def test_multi_output_node_with_an_unused_output():
    t = Tensor(np.arange(6.0).reshape(2, 3))
    with GradientTape() as tape:
        tape.watch(t)
        a, b = ops.split(t, 2, axis=0)
        y = ops.sum(b * 5.0)            # a is never used: its gradient is zeros
    np.testing.assert_array_equal(tape.gradient(y, t), [[0, 0, 0], [5, 5, 5]])


def test_stop_recording_and_reset(x):
    with GradientTape(persistent=True) as tape:
        tape.watch(x)
        with tape.stop_recording():
            y = ops.sum(x * x)
        z = ops.sum(x * 4.0)
    assert tape.gradient(y, x) is None
    np.testing.assert_allclose(tape.gradient(z, x), [4.0, 4.0, 4.0])
    tape.reset()
    assert tape.gradient(z, x) is None


def test_nested_tapes_record_independently(x):
    with GradientTape() as outer:
        outer.watch(x)
        y = x * 2.0
        with GradientTape() as inner:
            inner.watch(y)
            z = ops.sum(y * y)
        gy = inner.gradient(z, y)
        w = ops.sum(y)
    np.testing.assert_allclose(gy, 2 * y.numpy())
    np.testing.assert_allclose(outer.gradient(w, x), [2.0, 2.0, 2.0])


def test_gradient_dtypes_follow_the_values():
    v = Variable(np.array([1.0, 2.0], np.float32))
    with GradientTape() as tape:
        y = ops.mean(ops.square(v) * 0.5)
    g = tape.gradient(y, v)
    assert g.dtype == np.float32


# ------------------------------------------------------------------------- errors


def test_errors(x):
    with GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(ValueError, match=r"target has shape \(3,\).*output_gradients="):
        tape.gradient(y, x)
    with GradientTape() as tape:
        tape.watch(x)
        y = x * 2.0
    with pytest.raises(ValueError, match=r"output_gradients\[0\] has shape \(2,\)"):
        tape.gradient(y, x, output_gradients=np.ones(2))
    with GradientTape() as tape:
        tape.watch(x)
        y = ops.sum(x)
    with pytest.raises(ValueError, match="sources must be Variables, Tensors or arrays"):
        tape.gradient(y, [x, "w"])
    with pytest.raises(ValueError, match="target must be a Tensor"):
        tape.gradient(3.0, x)
    with pytest.raises(ValueError, match="got 2 output_gradients for 1 targets"):
        tape.gradient([y], x, output_gradients=[1.0, 1.0])
    with pytest.raises(ValueError, match="only floating-point values have gradients"):
        GradientTape().watch(np.array([1, 2]))
    with pytest.raises(ValueError, match="tape.watch expects"):
        GradientTape().watch("x")
    tape = GradientTape()
    with tape:
        pass
    with pytest.raises(RuntimeError, match="already open"):
        with tape:
            pass
