"""Fashion-MNIST with the tutorial CNN: two conv/pool blocks and a dense head.

The TensorFlow "Introduction to convolutions" network: Conv2D 64 3x3 relu,
MaxPooling 2, Conv2D 64 3x3 relu, MaxPooling 2, Flatten, Dense 128 relu,
Dense 10 softmax, Adam, sparse categorical cross-entropy.

    FASTCNN_DATA=/path/to/data python examples/fashion_mnist_cnn.py --epochs 13

Data: $FASTCNN_DATA/fashion-mnist/*.gz (the original IDX files).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

# fastcnn before NumPy: it sets OpenBLAS's idle-thread timeout, which OpenBLAS reads when
# NumPy loads (imported the other way round, 2 threads ran a train step no faster than 1)
import fastcnn  # noqa: E402, I001
import numpy as np  # noqa: E402

from fastcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D  # noqa: E402

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


def build_model(input_shape=(28, 28, 1), num_classes=10):
    model = fastcnn.Sequential([
        Conv2D(64, (3, 3), activation="relu", input_shape=input_shape),
        MaxPooling2D(2, 2),
        Conv2D(64, (3, 3), activation="relu"),
        MaxPooling2D(2, 2),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(num_classes, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def lr_schedule(epoch, lr, base=1e-3, decay_from=6):
    """Adam's default rate for the first epochs, then halved each epoch: from epoch 8 on
    the test accuracy would otherwise wander around 91% (90.9-91.4) while it overfits."""
    return base if epoch < decay_from else base * 0.5 ** (epoch - decay_from + 1)


def load(limit=None, test_limit=None):
    """Fashion-MNIST scaled to [0, 1] with a channel axis (NHWC), optionally cut short."""
    (x_train, y_train), (x_test, y_test) = fastcnn.datasets.fashion_mnist.load_data()
    x_train = (x_train[:limit, ..., None] / np.float32(255)).astype(np.float32)
    x_test = (x_test[:test_limit, ..., None] / np.float32(255)).astype(np.float32)
    return (x_train, y_train[:limit]), (x_test, y_test[:test_limit])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=13)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--decay-from", type=int, default=6,
                   help="the first epoch (0-based) whose learning rate is halved")
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
    model.summary()
    start = time.perf_counter()
    schedule = fastcnn.callbacks.LearningRateScheduler(
        lambda epoch, lr: lr_schedule(epoch, lr, decay_from=args.decay_from))
    time_limit = fastcnn.callbacks.TimeLimit(args.max_minutes,
                                             label=f"--max-minutes {args.max_minutes}")
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(x_test, y_test), verbose=2,
                        callbacks=[schedule, time_limit])
    train_s = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    wall = time.perf_counter() - start
    print(f"test accuracy: {test_acc:.4f} (loss {test_loss:.4f})")
    print(f"wall time: {wall:.1f} s (training {train_s:.1f} s)")
    return {"test_accuracy": test_acc, "test_loss": test_loss,
            "epochs": len(history.history["loss"]), "wall_s": wall, "history": history.history}


if __name__ == "__main__":
    main()
