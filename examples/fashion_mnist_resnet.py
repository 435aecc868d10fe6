"""Fashion-MNIST with a small ResNet, written with the Functional API.

Three stages of two residual blocks (16, 32, 64 filters; the first block of stages 2 and 3
halves the resolution with a strided conv and a 1x1 projection shortcut), each block
conv-BN-ReLU-conv-BN plus the shortcut, then ReLU; global average pooling and a softmax.
Adam with a cosine-decayed rate, random horizontal flips and 2-pixel shifts.

    FASTCNN_DATA=/path/to/data python examples/fashion_mnist_resnet.py --epochs 15

Data: $FASTCNN_DATA/fashion-mnist/*.gz (the original IDX files).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import fastcnn  # noqa: E402, I001  (fastcnn before NumPy: see fashion_mnist_cnn.py)
import numpy as np  # noqa: E402

from fastcnn.layers import (Activation, Add, BatchNormalization, Conv2D, Dense,  # noqa: E402
                            GlobalAveragePooling2D)


def conv_bn(x, filters, strides=1, relu=True, name=None):
    x = Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
               name=f"{name}_conv")(x)
    x = BatchNormalization(name=f"{name}_bn")(x)
    return Activation("relu", name=f"{name}_relu")(x) if relu else x


def residual_block(x, filters, strides, name):
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = Conv2D(filters, 1, strides=strides, use_bias=False,
                          name=f"{name}_proj")(x)
        shortcut = BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = conv_bn(x, filters, strides, name=f"{name}_a")
    y = conv_bn(y, filters, relu=False, name=f"{name}_b")
    return Activation("relu", name=f"{name}_out")(Add(name=f"{name}_add")([shortcut, y]))


def build_model(input_shape=(28, 28, 1), num_classes=10, widths=(16, 32, 64), blocks=2):
    inputs = fastcnn.Input(input_shape, name="image")
    x = conv_bn(inputs, widths[0], name="stem")
    for stage, filters in enumerate(widths):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = residual_block(x, filters, strides, name=f"s{stage + 1}b{block + 1}")
    x = GlobalAveragePooling2D(name="gap")(x)
    outputs = Dense(num_classes, activation="softmax", name="probs")(x)
    return fastcnn.Model(inputs, outputs, name="resnet_fashion")


def augmented_batches(x, y, batch_size, rng, shift=2):
    """Endless shuffled batches with random horizontal flips and shifts of up to
    ``shift`` pixels (zero padding), vectorised per batch."""
    n = len(x)
    padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    h, w = x.shape[1:3]
    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            dy, dx = rng.integers(0, 2 * shift + 1, 2)
            batch = padded[idx, dy:dy + h, dx:dx + w]
            flip = rng.random(len(idx)) < 0.5
            batch[flip] = batch[flip, :, ::-1]
            yield np.ascontiguousarray(batch), y[idx]


def load(limit=None, test_limit=None):
    (x_train, y_train), (x_test, y_test) = fastcnn.datasets.fashion_mnist.load_data()
    x_train = (x_train[:limit, ..., None] / np.float32(255)).astype(np.float32)
    x_test = (x_test[:test_limit, ..., None] / np.float32(255)).astype(np.float32)
    return (x_train, y_train[:limit]), (x_test, y_test[:test_limit])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first N training images (default: all 60,000)")
    p.add_argument("--test-limit", type=int, default=None,
                   help="evaluate on the first N test images (default: all 10,000)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after the epoch during which this much time has passed")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fastcnn.set_random_seed(args.seed)
    fastcnn.set_backend(args.backend)
    (x_train, y_train), (x_test, y_test) = load(args.limit, args.test_limit)
    print(f"train {x_train.shape}, test {x_test.shape}, backend={args.backend}")
    model = build_model()
    steps = -(-len(x_train) // args.batch_size)
    schedule = fastcnn.optimizers.schedules.CosineDecay(args.learning_rate,
                                                        decay_steps=steps * args.epochs)
    model.compile(optimizer=fastcnn.optimizers.Adam(schedule),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"{model.count_params():,} parameters, {len(model.layers)} layers")
    rng = np.random.default_rng(args.seed)
    time_limit = fastcnn.callbacks.TimeLimit(args.max_minutes,
                                             label=f"--max-minutes {args.max_minutes}")
    start = time.perf_counter()
    history = model.fit(augmented_batches(x_train, y_train, args.batch_size, rng),
                        steps_per_epoch=steps, epochs=args.epochs,
                        validation_data=(x_test, y_test), verbose=2, callbacks=[time_limit])
    train_s = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    wall = time.perf_counter() - start
    print(f"test accuracy: {test_acc:.4f} (loss {test_loss:.4f})")
    print(f"wall time: {wall:.1f} s (training {train_s:.1f} s, "
          f"{1000 * train_s / (steps * len(history.history['loss'])):.1f} ms per step)")
    return {"test_accuracy": test_acc, "test_loss": test_loss,
            "epochs": len(history.history["loss"]), "wall_s": wall, "history": history.history}


if __name__ == "__main__":
    main()
