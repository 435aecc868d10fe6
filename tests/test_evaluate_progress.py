"""evaluate() and predict() draw Keras's live progress bar on a terminal, and take callbacks."""
import io
import sys

import numpy as np

import fastcnn
from fastcnn.callbacks import Callback
from fastcnn.layers import Dense


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _model():
    fastcnn.set_random_seed(0)
    model = fastcnn.Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_evaluate_on_a_terminal_draws_the_bar_and_ends_with_the_full_line(monkeypatch):
    model = _model()
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(fastcnn.callbacks.ProgbarLogger, "INTERVAL", 0.0)  # draw every batch
    x, y = np.ones((10, 4), "float32"), np.zeros(10, "int64")
    loss, acc = model.evaluate(x, y, batch_size=2, verbose=1)
    out = screen.getvalue()
    assert "\r" in out and "1/5" in out and "5/5" in out
    assert out.rstrip().splitlines()[-1].lstrip("\r").startswith("5/5")
    assert f"loss: {loss:.4f}" in out and "accuracy:" in out and "Epoch" not in out


def test_evaluate_and_predict_call_user_callbacks_per_batch(monkeypatch):
    model = _model()
    seen = []

    class Recorder(Callback):
        def on_test_batch_end(self, batch, logs=None):
            seen.append(("test", batch, round(logs["loss"], 6)))

        def on_predict_batch_end(self, batch, logs=None):
            seen.append(("predict", batch, logs["outputs"].shape))

    x, y = np.ones((5, 4), "float32"), np.zeros(5, "int64")
    loss = model.evaluate(x, y, batch_size=2, verbose=0, callbacks=[Recorder()])[0]
    model.predict(x, batch_size=2, callbacks=[Recorder()])
    assert [s[:2] for s in seen] == [("test", 0), ("test", 1), ("test", 2),
                                     ("predict", 0), ("predict", 1), ("predict", 2)]
    assert seen[2][2] == round(loss, 6)  # the running mean after the last batch is the loss
    assert seen[-1][2] == (1, 3)
