"""Transfer learning on cats vs dogs: a frozen InceptionV3 cut at 'mixed7' plus a small head.

The classic tutorial (TensorFlow's "Transfer learning" lesson, Coursera's C2W3) with only
the imports changed: InceptionV3(input_shape=(150, 150, 3), include_top=False,
weights=None), Keras's ImageNet file loaded with ``load_weights``, every base layer frozen,
the 7x7x768 output of 'mixed7' -> Flatten -> Dense(1024, relu) -> Dropout(0.2) ->
Dense(1, sigmoid), RMSprop(1e-4), binary cross-entropy, and the augmenting
ImageDataGenerator of the cats-vs-dogs tutorial (rescale 1/255, rotation 40, shifts 0.2,
shear 0.2, zoom 0.2, horizontal flips), batch 20, 100 steps per epoch.

    FASTCNN_DATA=/path/to/data python examples/transfer_learning.py \
        --weights inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5 --epochs 20

``--weights PATH``: Keras's ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``
(https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/). WITHOUT IT THE
BASE KEEPS ITS RANDOM INITIAL WEIGHTS: the script says so, runs the same pipeline at the
same cost, and the head learns from random features (a timing run, not the tutorial's ~95%
validation accuracy, which needs the ImageNet weights).

Frozen layers run in inference mode (BatchNormalization normalizes with its moving
statistics and does not update them, as in Keras 3), and no gradient is computed through
the frozen base: the backward pass stops at the first Dense.

Data: $FASTCNN_DATA/cats-vs-dogs/{train,validation}/{cats,dogs}/*.jpg (default
../shared/data next to the repository).
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

from fastcnn import layers  # noqa: E402
from fastcnn.applications.inception_v3 import InceptionV3  # noqa: E402
from fastcnn import Model  # noqa: E402
from fastcnn.preprocessing.image import ImageDataGenerator  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
NO_WEIGHTS = ("NOTE: no --weights given: the InceptionV3 base keeps its RANDOM initial "
              "weights (not ImageNet's). The pipeline and its cost are the tutorial's; "
              "the accuracy is not. Pass --weights inception_v3_weights_tf_dim_ordering_"
              "tf_kernels_notop.h5 for the real transfer learning.")


def data_dir():
    """$FASTCNN_DATA, else the shared data folder next to the repository."""
    root = os.environ.get("FASTCNN_DATA") or os.path.join(REPO, os.pardir, "shared", "data")
    return os.path.join(root, "cats-vs-dogs")


def build_base(weights=None, input_shape=(150, 150, 3)):
    """The tutorial's pre-trained model: InceptionV3 without its top, every layer frozen."""
    pre_trained_model = InceptionV3(input_shape=input_shape, include_top=False, weights=None)
    if weights is not None:
        pre_trained_model.load_weights(weights)
    for layer in pre_trained_model.layers:
        layer.trainable = False
    return pre_trained_model


def build_model(pre_trained_model, learning_rate=1e-4):
    """The head on 'mixed7' (7x7x768 at 150x150), compiled as the tutorial does."""
    last_output = pre_trained_model.get_layer("mixed7").output
    x = layers.Flatten()(last_output)
    x = layers.Dense(1024, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(1, activation="sigmoid")(x)
    model = Model(pre_trained_model.input, x)
    model.compile(optimizer=fastcnn.optimizers.RMSprop(learning_rate=learning_rate),
                  loss="binary_crossentropy", metrics=["accuracy"])
    return model


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="Keras's InceptionV3 'notop' ImageNet weights (.h5); without it the "
                        "base runs from random weights")
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=100,
                   help="the tutorial's 100 (x batch 20 = the 2,000 training pictures)")
    p.add_argument("--validation-steps", type=int, default=50,
                   help="the tutorial's 50 (x batch 20 = the 1,000 validation pictures)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on at most this many batches per epoch and validate on as "
                        "many (a quick check)")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--summary", action="store_true", help="print the full model summary")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after the epoch during which this much time has passed")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fastcnn.set_random_seed(args.seed)
    fastcnn.set_backend(args.backend)
    root = data_dir()
    if not os.path.isdir(root):
        raise SystemExit(f"no cats-vs-dogs data at {root!r}: set FASTCNN_DATA to the folder "
                         f"holding cats-vs-dogs/")
    if args.weights is not None and not os.path.isfile(args.weights):
        raise SystemExit(f"--weights {args.weights!r}: no such file (expected Keras's "
                         f"inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5)")

    train_gen = ImageDataGenerator(rescale=1.0 / 255, rotation_range=40,
                                   width_shift_range=0.2, height_shift_range=0.2,
                                   shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    val_gen = ImageDataGenerator(rescale=1.0 / 255)
    train = train_gen.flow_from_directory(os.path.join(root, "train"), target_size=(150, 150),
                                          batch_size=args.batch_size, class_mode="binary",
                                          seed=args.seed)
    # Shuffled, as in the tutorial (flow_from_directory's default): a --limit subset of the
    # validation folder then holds both classes (unshuffled, its first batches are all cats).
    val = val_gen.flow_from_directory(os.path.join(root, "validation"),
                                      target_size=(150, 150), batch_size=args.batch_size,
                                      class_mode="binary", seed=args.seed + 1)
    try:
        steps = min(args.steps_per_epoch, len(train))
        val_steps = min(args.validation_steps, len(val))
        if args.limit is not None:
            steps, val_steps = min(args.limit, steps), min(args.limit, val_steps)

        pre_trained_model = build_base(args.weights)
        if args.weights is None:
            print(NO_WEIGHTS)
        else:
            print(f"InceptionV3 base: weights loaded from {args.weights} (frozen)")
        model = build_model(pre_trained_model, args.learning_rate)
        if args.summary:
            model.summary()
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        total = model.count_params()
        print(f"{len(model.layers)} layers, cut at 'mixed7' "
              f"{tuple(pre_trained_model.get_layer('mixed7').output.shape)}; params: "
              f"{total:,} total, {trainable:,} trainable, {total - trainable:,} frozen")
        print(f"backend={args.backend} epochs={args.epochs} batch_size={args.batch_size} "
              f"steps_per_epoch={steps} validation_steps={val_steps}")
        time_limit = fastcnn.callbacks.TimeLimit(args.max_minutes,
                                                 label=f"--max-minutes {args.max_minutes}")
        start = time.perf_counter()
        history = model.fit(train, steps_per_epoch=steps, epochs=args.epochs,
                            validation_data=val, validation_steps=val_steps, verbose=2,
                            callbacks=[time_limit])
        wall = time.perf_counter() - start
    finally:
        train.close()   # stop the background decoding threads
        val.close()
    val_acc = history.history["val_accuracy"]
    print(f"epochs run: {len(val_acc)}")
    print(f"final validation accuracy: {val_acc[-1]:.4f} (best {max(val_acc):.4f} at epoch "
          f"{int(np.argmax(val_acc)) + 1})" + ("" if args.weights else " [random base]"))
    print(f"wall time: {wall:.1f} s ({wall / len(val_acc):.1f} s per epoch, "
          f"validation included)")
    return {"val_accuracy": val_acc[-1], "best_val_accuracy": max(val_acc),
            "loss": history.history["loss"][-1], "epochs": len(val_acc), "wall_s": wall,
            "history": history.history, "pretrained": args.weights is not None,
            "model": model}


if __name__ == "__main__":
    main()
