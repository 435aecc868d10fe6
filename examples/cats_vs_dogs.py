"""Cats vs dogs from 2,000 pictures: the classic small-data convnet with augmentation.

The Keras tutorial ("Deep Learning with Python", 5.2): three Conv2D + MaxPooling2D
blocks (32, 64, 128 filters), Flatten, Dropout(0.5), Dense 512 relu, Dense 1 sigmoid,
RMSprop(1e-3), binary cross-entropy, and an ImageDataGenerator that rotates, shifts,
shears, zooms and flips the training images so that 2,000 pictures go further.

    FASTCNN_DATA=/path/to/data python examples/cats_vs_dogs.py --epochs 28

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

from fastcnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D  # noqa: E402
from fastcnn.preprocessing.image import ImageDataGenerator  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def data_dir():
    """$FASTCNN_DATA, else the shared data folder next to the repository."""
    root = os.environ.get("FASTCNN_DATA") or os.path.join(REPO, os.pardir, "shared", "data")
    return os.path.join(root, "cats-vs-dogs")


def build_model(input_shape=(150, 150, 3)):
    model = fastcnn.Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=input_shape),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Conv2D(128, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dropout(0.5),
        Dense(512, activation="relu"),
        Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=fastcnn.optimizers.RMSprop(learning_rate=1e-3),
                  loss="binary_crossentropy", metrics=["accuracy"])
    return model


def lr_schedule(epoch, lr, base=1e-3, decay_from=20):
    """RMSprop at 1e-3 while the model still learns fast, then halved each epoch: at a
    fixed 1e-3 the validation accuracy jumps +-3 points from one epoch to the next."""
    return base if epoch < decay_from else base * 0.5 ** (epoch - decay_from + 1)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=28)
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--decay-from", type=int, default=20,
                   help="the first epoch (0-based) whose learning rate is halved")
    p.add_argument("--limit", type=int, default=None,
                   help="train on this many batches per epoch and validate on as many "
                        "(a quick check; default: all of them)")
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

    # Augment the training pictures only: validation measures the real images.
    train_gen = ImageDataGenerator(rescale=1.0 / 255, rotation_range=40,
                                   width_shift_range=0.2, height_shift_range=0.2,
                                   shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
    val_gen = ImageDataGenerator(rescale=1.0 / 255)
    train = train_gen.flow_from_directory(os.path.join(root, "train"), target_size=(150, 150),
                                          batch_size=args.batch_size, class_mode="binary",
                                          seed=args.seed)
    # In file order the first validation batches are all cats: a --limit run shuffles them
    # (seeded) so that its few batches hold both classes; a full pass keeps file order.
    val = val_gen.flow_from_directory(os.path.join(root, "validation"),
                                      target_size=(150, 150), batch_size=args.batch_size,
                                      class_mode="binary", shuffle=args.limit is not None,
                                      seed=args.seed)
    steps = len(train) if args.limit is None else min(args.limit, len(train))
    val_steps = len(val) if args.limit is None else min(args.limit, len(val))

    model = build_model()
    model.summary()
    print(f"backend={args.backend} epochs={args.epochs} steps_per_epoch={steps} "
          f"validation_steps={val_steps}")
    schedule = fastcnn.callbacks.LearningRateScheduler(
        lambda epoch, lr: lr_schedule(epoch, lr, decay_from=args.decay_from))
    time_limit = fastcnn.callbacks.TimeLimit(args.max_minutes,
                                             label=f"--max-minutes {args.max_minutes}")
    start = time.perf_counter()
    try:
        history = model.fit(train, steps_per_epoch=steps, epochs=args.epochs,
                            validation_data=val, validation_steps=val_steps, verbose=2,
                            callbacks=[schedule, time_limit])
    finally:
        train.close()   # stop the background decoding threads
        val.close()
    wall = time.perf_counter() - start
    val_acc = history.history["val_accuracy"]
    print(f"epochs run: {len(val_acc)}")
    print(f"final validation accuracy: {val_acc[-1]:.4f} (best {max(val_acc):.4f} at epoch "
          f"{int(np.argmax(val_acc)) + 1})")
    print(f"wall time: {wall:.1f} s")
    return {"val_accuracy": val_acc[-1], "best_val_accuracy": max(val_acc),
            "loss": history.history["loss"][-1], "epochs": len(val_acc), "wall_s": wall,
            "history": history.history}


if __name__ == "__main__":
    main()
