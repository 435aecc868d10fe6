"""The standard architectures of the tutorials, as functions returning an UNCOMPILED Sequential.

Each function builds fresh layers (fresh weights drawn from fastcnn's generator, so
``fastcnn.set_random_seed`` makes them reproducible). The caller compiles::

    from fastcnn import models
    model = models.lenet((28, 28, 1), 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

* :func:`tutorial`: the smallest useful CNN (one conv layer), the README/Keras example.
* :func:`lenet`: LeNet-5 in its modern form (ReLU and max pooling, see the function).
* :func:`fashion`: the Fashion-MNIST tutorial CNN (two conv blocks of 64 filters).
* :func:`catsdogs`: the cats-vs-dogs tutorial CNN (150x150 RGB, one sigmoid output).
* :func:`digits_cnn`: the default model of ``fastcnn train`` (8x8 digits).

``BUILDERS`` maps the names ``fastcnn train --model`` accepts to these functions.
"""
from __future__ import annotations

from .layers import Conv2D, Dense, Flatten, MaxPooling2D
from .model import Sequential

__all__ = ["tutorial", "lenet", "fashion", "catsdogs", "digits_cnn", "BUILDERS"]


def _check(input_shape, num_classes, name):
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: input_shape must be (height, width, channels), got "
                         f"{input_shape!r}") from None
    if len(shape) != 3 or min(shape) <= 0 or shape != tuple(input_shape):
        raise ValueError(f"{name}: input_shape must be three positive ints (height, width, "
                         f"channels), got {input_shape!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, int) or num_classes < 2):
        raise ValueError(f"{name}: num_classes must be an int >= 2, got {num_classes!r}")
    return shape


def tutorial(input_shape=(28, 28, 1), num_classes=10) -> Sequential:
    """Conv2D(32, 3, relu), MaxPooling2D(2), Flatten, Dense(num_classes, softmax)."""
    input_shape = _check(input_shape, num_classes, "tutorial")
    return Sequential([
        Conv2D(32, 3, activation="relu", input_shape=input_shape),
        MaxPooling2D(2),
        Flatten(),
        Dense(num_classes, activation="softmax"),
    ], name="tutorial")


def lenet(input_shape=(28, 28, 1), num_classes=10) -> Sequential:
    """LeNet-5 as modern tutorials write it.

    Conv 6 5x5 'same' relu, MaxPool 2, Conv 16 5x5 'valid' relu, MaxPool 2, Flatten,
    Dense 120 relu, Dense 84 relu, Dense num_classes softmax. LeCun et al. (1998) used tanh-like
    squashing, trainable average ("subsampling") pooling and an RBF output layer; ReLU, max
    pooling and softmax train faster and are what the Keras/PyTorch LeNet tutorials use. The
    first conv is 'same' so that 28x28 MNIST plays the role of the paper's padded 32x32 input
    (28 -> 28 -> 14 -> 10 -> 5, the paper's 5x5x16 before the dense layers).
    """
    input_shape = _check(input_shape, num_classes, "lenet")
    return Sequential([
        Conv2D(6, 5, padding="same", activation="relu", input_shape=input_shape),
        MaxPooling2D(2),
        Conv2D(16, 5, padding="valid", activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dense(120, activation="relu"),
        Dense(84, activation="relu"),
        Dense(num_classes, activation="softmax"),
    ], name="lenet")


def fashion(input_shape=(28, 28, 1), num_classes=10) -> Sequential:
    """Conv2D 64 3x3 relu, MaxPool 2, Conv2D 64 3x3 relu, MaxPool 2, Flatten, Dense 128 relu,
    Dense num_classes softmax (the TensorFlow Fashion-MNIST tutorial's CNN)."""
    input_shape = _check(input_shape, num_classes, "fashion")
    return Sequential([
        Conv2D(64, 3, activation="relu", input_shape=input_shape),
        MaxPooling2D(2),
        Conv2D(64, 3, activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(num_classes, activation="softmax"),
    ], name="fashion")


def catsdogs(input_shape=(150, 150, 3), num_classes=2) -> Sequential:
    """Conv2D 32/64/128 3x3 relu, each followed by MaxPool 2, Flatten, Dense 512 relu,
    Dense 1 sigmoid (the cats-vs-dogs tutorial; train with binary cross-entropy).

    Binary only: ``num_classes`` exists so that every builder takes the same arguments, and
    must be 2 (the one sigmoid output is the probability of class 1).
    """
    input_shape = _check(input_shape, num_classes, "catsdogs")
    if num_classes != 2:
        raise ValueError(f"catsdogs: the model has one sigmoid output and needs exactly 2 "
                         f"classes, got num_classes={num_classes!r}")
    return Sequential([
        Conv2D(32, 3, activation="relu", input_shape=input_shape),
        MaxPooling2D(2),
        Conv2D(64, 3, activation="relu"),
        MaxPooling2D(2),
        Conv2D(128, 3, activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dense(512, activation="relu"),
        Dense(1, activation="sigmoid"),
    ], name="catsdogs")


def digits_cnn(input_shape=(8, 8, 1), num_classes=10) -> Sequential:
    """The default model of ``fastcnn train`` (chosen for the bundled 8x8 digits): Conv 16 3x3
    'same' relu, MaxPool 2, Conv 32 3x3 'same' relu, MaxPool 2, Flatten, Dense num_classes
    softmax. Why this size: see the comment on the defaults in :mod:`fastcnn.cli`."""
    input_shape = _check(input_shape, num_classes, "digits_cnn")
    return Sequential([
        Conv2D(16, 3, padding="same", activation="relu", input_shape=input_shape),
        MaxPooling2D(2),
        Conv2D(32, 3, padding="same", activation="relu"),
        MaxPooling2D(2),
        Flatten(),
        Dense(num_classes, activation="softmax"),
    ], name="digits_cnn")


#: ``fastcnn train --model NAME`` -> builder(input_shape, num_classes).
BUILDERS = {
    "tutorial": tutorial,
    "lenet": lenet,
    "fashion": fashion,
    "catsdogs": catsdogs,
    "digits": digits_cnn,
}
