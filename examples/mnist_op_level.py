"""MNIST at the op level, as TensorFlow's "Deep MNIST" tutorials wrote it: weights in a dict
of Variables, the network from ``fastcnn.nn`` functions, a GradientTape training loop.

    conv 5x5x32 -> ReLU -> max pool 2 -> conv 5x5x64 -> ReLU -> max pool 2
    -> fully connected 256 -> ReLU -> dropout 0.5 -> fully connected 10 (logits)

trained with Adam on the softmax cross-entropy of the logits. Every operation runs the
active backend's kernels, so this loop is about as fast as ``model.fit``.

    FASTCNN_DATA=/path/to/data python examples/mnist_op_level.py --epochs 3
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import fastcnn  # noqa: E402, I001  (fastcnn before NumPy: see fashion_mnist_cnn.py)
import numpy as np  # noqa: E402

from fastcnn import nn, ops  # noqa: E402


def weight_variable(shape, rng, name):
    # The tutorials' truncated normal (stddev 0.1), cut at two standard deviations.
    w = rng.normal(0.0, 0.1, shape)
    while (bad := np.abs(w) > 0.2).any():
        w[bad] = rng.normal(0.0, 0.1, bad.sum())
    return fastcnn.Variable(w.astype(np.float32), name=name)


def bias_variable(shape, name):
    return fastcnn.Variable(np.full(shape, 0.1, np.float32), name=name)


def init_weights(rng, hidden=256):
    return {
        "conv1_w": weight_variable((5, 5, 1, 32), rng, "conv1_w"),
        "conv1_b": bias_variable((32,), "conv1_b"),
        "conv2_w": weight_variable((5, 5, 32, 64), rng, "conv2_w"),
        "conv2_b": bias_variable((64,), "conv2_b"),
        "fc1_w": weight_variable((7 * 7 * 64, hidden), rng, "fc1_w"),
        "fc1_b": bias_variable((hidden,), "fc1_b"),
        "fc2_w": weight_variable((hidden, 10), rng, "fc2_w"),
        "fc2_b": bias_variable((10,), "fc2_b"),
    }


def network(x, w, training, seed=None):
    """The logits of a batch ``x`` (N, 28, 28, 1)."""
    h = nn.relu(nn.bias_add(nn.conv2d(x, w["conv1_w"], strides=[1, 1, 1, 1],
                                      padding="SAME"), w["conv1_b"]))
    h = nn.max_pool(h, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
    h = nn.relu(nn.bias_add(nn.conv2d(h, w["conv2_w"], strides=[1, 1, 1, 1],
                                      padding="SAME"), w["conv2_b"]))
    h = nn.max_pool(h, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
    h = ops.reshape(h, (-1, 7 * 7 * 64))
    h = nn.relu(ops.matmul(h, w["fc1_w"]) + w["fc1_b"])
    if training:
        h = nn.dropout(h, rate=0.5, seed=seed)
    return ops.matmul(h, w["fc2_w"]) + w["fc2_b"]


def accuracy(x, y, w, batch_size=500):
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = network(x[start:start + batch_size], w, training=False)
        correct += int((np.asarray(logits).argmax(axis=1) == y[start:start + batch_size]).sum())
    return correct / len(x)


def load(limit=None, test_limit=None):
    (x_train, y_train), (x_test, y_test) = fastcnn.datasets.mnist.load_data()
    x_train = (x_train[:limit, ..., None] / np.float32(255)).astype(np.float32)
    x_test = (x_test[:test_limit, ..., None] / np.float32(255)).astype(np.float32)
    return (x_train, y_train[:limit].astype(np.int64)), (x_test, y_test[:test_limit])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fastcnn.set_random_seed(args.seed)
    fastcnn.set_backend(args.backend)
    (x_train, y_train), (x_test, y_test) = load(args.limit, args.test_limit)
    rng = np.random.default_rng(args.seed)
    w = init_weights(rng, args.hidden)
    variables = list(w.values())
    optimizer = fastcnn.optimizers.Adam(args.learning_rate)
    print(f"train {x_train.shape}, test {x_test.shape}, backend={args.backend}, "
          f"{sum(v.size for v in variables):,} weights")
    start = time.perf_counter()
    steps = 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(x_train))
        total, seen = 0.0, 0
        for lo in range(0, len(order), args.batch_size):
            idx = order[lo:lo + args.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            with fastcnn.GradientTape() as tape:
                logits = network(xb, w, training=True)
                loss = ops.mean(nn.sparse_softmax_cross_entropy_with_logits(
                    labels=yb, logits=logits))
            grads = tape.gradient(loss, w)
            optimizer.apply_gradients(zip(grads.values(), w.values()))
            total += float(loss) * len(idx)
            seen += len(idx)
            steps += 1
        test_acc = accuracy(x_test, y_test, w)
        print(f"epoch {epoch + 1}/{args.epochs} - loss: {total / seen:.4f} - "
              f"test accuracy: {test_acc:.4f} - {time.perf_counter() - start:.0f} s")
    train_s = time.perf_counter() - start
    test_acc = accuracy(x_test, y_test, w)
    print(f"test accuracy: {test_acc:.4f}")
    print(f"wall time: {train_s:.1f} s ({1000 * train_s / steps:.1f} ms per step)")
    return {"test_accuracy": test_acc, "wall_s": train_s, "steps": steps}


if __name__ == "__main__":
    main()
