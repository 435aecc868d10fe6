"""Shared by the scripts that tests/distributed launch under mpiexec AND by the tests that
compute the single-process references: the same models and data on both sides."""
import json
import os
import sys

import numpy as np

import fastcnn
from fastcnn.layers import BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D

BACKEND = "im2col"   # NumPy only: no JIT compile in the launched processes


def small_model(units=3, batchnorm=False):
    """Conv, pool, a Dense with an L2 penalty (its gradient must be averaged exactly once),
    softmax head; Adam (its state is broadcast)."""
    layers = [Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1))]
    if batchnorm:
        layers.append(BatchNormalization())
    layers += [MaxPooling2D(2), Flatten(),
               Dense(6, activation="relu", kernel_regularizer="l2"),
               Dense(units, activation="softmax")]
    model = fastcnn.Sequential(layers)
    model.compile(optimizer=fastcnn.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def graph_model():
    """A Functional model: a residual Add, a layer shared by two calls, two branches."""
    inp = fastcnn.Input((8, 8, 1))
    x = Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = Conv2D(4, 3, padding="same")(x)
    x = MaxPooling2D(2)(fastcnn.layers.Add()([x, y]))
    shared = Dense(6, activation="relu", kernel_regularizer="l2")
    h = shared(fastcnn.layers.Dense(6)(Flatten()(x)))
    out = Dense(3, activation="softmax")(shared(h))
    model = fastcnn.Model(inp, out)
    model.compile(optimizer=fastcnn.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(n, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, classes, n)
    return x, y


def flat_weights(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def start(expected):
    """init() and the check that the launcher really started ``expected`` processes (an
    mpiexec of another MPI than mpi4py's starts singletons that each think they are alone)."""
    from fastcnn import distributed
    distributed.init()
    if distributed.size() != expected:
        sys.stderr.write(f"expected {expected} processes, MPI reports {distributed.size()}: "
                         f"the mpiexec used does not belong to mpi4py's MPI library\n")
        sys.exit(3)
    fastcnn.set_backend(BACKEND)
    return distributed.rank()


def dump_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def out_path(out, name, rank):
    return os.path.join(out, f"{name}-{rank}")
