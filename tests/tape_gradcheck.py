"""``check_op``: fastcnn.gradcheck through the GradientTape (tests of fastcnn.ops / nn).

The op is a function of arrays returning a Tensor. ``forward`` runs it on the plain
arrays (no tape open: nothing is recorded); ``backward`` runs it again on Tensors watched by
a GradientTape and asks ``tape.gradient(out, inputs, output_gradients=dy)`` for the
checker's random upstream gradient ``dy``. So every checked gradient is the one a user's
training loop would get, fan-out sums and broadcasting included.
"""
import fastcnn  # noqa: F401  (before NumPy)
import numpy as np

from fastcnn import GradientTape, Tensor, gradcheck


def check_op(op, *inputs, wrt=None, **kwargs):
    """Checks the tape gradients of ``op(*inputs)`` for the float64 inputs ``wrt``
    (indices; every float input by default). Returns the gradcheck result."""
    inputs = list(inputs)
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs)
               if isinstance(a, np.ndarray) and a.dtype == np.float64]

    def forward(*xs):
        return np.array(np.asarray(op(*xs)), dtype=np.float64), None

    def backward(dy, ctx):
        tensors = [Tensor(a) if i in wrt else a for i, a in enumerate(inputs)]
        with GradientTape() as tape:
            tape.watch([tensors[i] for i in wrt])
            out = op(*tensors)
        grads = tape.gradient(out, [tensors[i] for i in wrt], output_gradients=dy,
                              unconnected_gradients="zero")
        grads = [np.asarray(g) for g in grads]
        for i, g in zip(wrt, grads):
            assert g.shape == inputs[i].shape, (i, g.shape, inputs[i].shape)
            assert g.dtype == np.float64, (i, g.dtype)
        return grads

    return gradcheck.check_backward(forward, backward, inputs, wrt=wrt, **kwargs)


def tape_grads(fn, inputs, dy):
    """``(y, [d input])`` of ``fn(*inputs)`` through a GradientTape, with upstream gradient
    ``dy`` (the TensorFlow fixtures' way of checking a gradient)."""
    ts = [Tensor(a) for a in inputs]
    with GradientTape() as tape:
        tape.watch(ts)
        y = fn(*ts)
    return np.asarray(y), [np.asarray(g) for g in tape.gradient(y, ts, output_gradients=dy)]
