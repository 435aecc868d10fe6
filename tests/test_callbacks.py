"""Training callbacks (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, CSVLogger,
LambdaCallback, History) and the Keras-style progress bar.

Two kinds of model drive them: a tiny real ``fastcnn.Sequential`` on random data (the
callbacks see real logs and real weights), and ``ScriptedModel``, whose epoch logs are
written out in the test, for the counting rules (patience, cooldown, best-only) where an
exact script is clearer than a loss curve.
"""
import csv
import io
import json
import os
import re
import warnings

import numpy as np
import pytest

import fastcnn
from fastcnn import callbacks, optimizers
from fastcnn.callbacks import (CSVLogger, EarlyStopping, LambdaCallback, ModelCheckpoint,
                               ProgbarLogger, ReduceLROnPlateau)
from fastcnn.layers import Dense, Flatten


@pytest.fixture(autouse=True)
def fresh_session():
    fastcnn.utils.clear_session()
    fastcnn.utils.set_random_seed(0)


def tiny_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, n)


def tiny_model(lr=0.1):
    model = fastcnn.Sequential([Flatten(input_shape=(4, 4, 1)), Dense(3, activation="softmax")])
    model.compile(optimizers.SGD(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class ScriptedModel:
    """Just what callbacks touch: weights (the number of the last epoch run), an optimizer
    with a learning_rate, stop_training, and save/save_weights that record their paths."""

    def __init__(self, lr=1.0):
        self.stop_training = False
        self.optimizer = optimizers.SGD(lr)
        self._weights = [np.full(2, -1.0)]
        self.saved = []

    def get_weights(self):
        return [w.copy() for w in self._weights]

    def set_weights(self, weights):
        self._weights = [np.array(w) for w in weights]

    def save(self, path):
        self.saved.append(("save", path))

    def save_weights(self, path):
        self.saved.append(("save_weights", path))


def run_script(callback, values, key="val_loss", model=None):
    """Drives ``callback`` as fit would over one epoch per value of ``values``.
    Returns the model, the epochs run and the learning rate in force at each epoch."""
    model = model or ScriptedModel()
    cbs = callbacks.CallbackList([callback], model=model, add_history=True,
                                 params={"epochs": len(values), "steps": 1, "verbose": 0})
    model.stop_training = False
    cbs.on_train_begin()
    ran, rates, logs = [], [], {}
    for epoch, value in enumerate(values):
        cbs.on_epoch_begin(epoch)
        rates.append(model.optimizer.learning_rate)
        model._weights = [np.full(2, float(epoch))]  # "training" changes the weights
        logs = {"loss": 1.0, key: value}
        cbs.on_epoch_end(epoch, logs)
        ran.append(epoch)
        if model.stop_training:
            break
    cbs.on_train_end(logs)
    return model, ran, rates


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


# ------------------------------------------------------------------------ History
def test_history_records_every_epoch_and_a_passed_history_is_reused():
    x, y = tiny_data()
    model = tiny_model()
    mine = callbacks.History()
    h = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                  callbacks=[mine])
    assert h is mine and model.history is mine  # Keras: no second History
    assert h.epoch == [0, 1, 2]
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in h.history.values())


# ------------------------------------------------------------------------ EarlyStopping
def test_early_stopping_stops_after_patience_epochs_without_improvement():
    #                         best  +1    +2 -> stop at epoch 3 (0-based)
    stopper = EarlyStopping(patience=2)
    _, ran, _ = run_script(stopper, [1.0, 0.8, 0.9, 0.85, 0.1, 0.05])
    assert ran == [0, 1, 2, 3]
    assert stopper.stopped_epoch == 3 and stopper.best == 0.8 and stopper.best_epoch == 1


def test_early_stopping_min_delta_mode_max_and_auto():
    # improvements smaller than min_delta do not count
    _, ran, _ = run_script(EarlyStopping(patience=1, min_delta=0.1), [1.0, 0.95, 0.92, 0.5])
    assert ran == [0, 1]
    # 'auto' on an accuracy maximises: rising values never stop it
    _, ran, _ = run_script(EarlyStopping(monitor="val_accuracy"), [0.1, 0.2, 0.3, 0.4],
                           key="val_accuracy")
    assert ran == [0, 1, 2, 3]
    _, ran, _ = run_script(EarlyStopping(monitor="val_accuracy"), [0.5, 0.4, 0.9],
                           key="val_accuracy")
    assert ran == [0, 1]
    # explicit mode='max' on a loss-like name
    _, ran, _ = run_script(EarlyStopping(monitor="val_loss", mode="max"), [0.5, 0.4, 0.9])
    assert ran == [0, 1]


def test_early_stopping_baseline_and_start_from_epoch():
    # never beats the baseline 0.5: the patience counter keeps running
    _, ran, _ = run_script(EarlyStopping(patience=2, baseline=0.5), [0.9, 0.8, 0.7, 0.6, 0.4])
    assert ran == [0, 1]
    # epochs before start_from_epoch are ignored, however bad
    _, ran, _ = run_script(EarlyStopping(patience=0, start_from_epoch=3),
                           [1.0, 2.0, 3.0, 1.0, 0.9, 1.5, 0.1])
    assert ran == [0, 1, 2, 3, 4, 5]


def test_early_stopping_restores_the_best_weights_of_a_real_model(capsys):
    x, y = tiny_data()
    model = tiny_model()
    after_epoch = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: after_epoch.append(
        model.get_weights()))
    # Keras's own example: a scripted "loss" through a callback placed before the stopper
    scripted = iter([0.5, 0.3, 0.4, 0.45, 0.2])
    inject = LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(
        val_score=next(scripted)))
    stopper = EarlyStopping(monitor="val_score", patience=2, restore_best_weights=True,
                            verbose=1)
    h = model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[record, inject, stopper])
    assert h.epoch == [0, 1, 2, 3] and stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    assert h.history["val_score"] == [0.5, 0.3, 0.4, 0.45]
    assert not np.array_equal(after_epoch[3][0], after_epoch[1][0])  # training moved on
    for restored, best in zip(model.get_weights(), after_epoch[1]):
        np.testing.assert_array_equal(restored, best)
    out = capsys.readouterr().out
    assert "Epoch 4: early stopping" in out
    assert "Restoring model weights from the end of the best epoch: 2." in out


def test_early_stopping_without_restore_keeps_the_last_weights():
    model, ran, _ = run_script(EarlyStopping(patience=1), [0.5, 0.6, 0.7])
    assert ran == [0, 1] and model.get_weights()[0][0] == 1.0
    model, ran, _ = run_script(EarlyStopping(patience=1, restore_best_weights=True),
                               [0.5, 0.6, 0.7])
    assert ran == [0, 1] and model.get_weights()[0][0] == 0.0


def test_early_stopping_is_reusable_across_fits():
    stopper = EarlyStopping(patience=1)
    run_script(stopper, [0.1, 0.2, 0.3])
    _, ran, _ = run_script(stopper, [5.0, 4.0, 3.0])  # the old best 0.1 is forgotten
    assert ran == [0, 1, 2] and stopper.stopped_epoch == 0


def test_missing_monitor_warns_with_the_available_keys_and_does_not_stop():
    for cb in (EarlyStopping(monitor="val_acc"), ReduceLROnPlateau(monitor="val_acc",
                                                                   patience=0),
               ModelCheckpoint("m.fcnn", monitor="val_acc", save_best_only=True)):
        with pytest.warns(UserWarning, match=r"'val_acc'.*Available metrics are: loss, "
                                             r"val_loss"):
            model, ran, rates = run_script(cb, [1.0, 2.0, 3.0])
        assert ran == [0, 1, 2] and rates == [1.0, 1.0, 1.0] and model.saved == []


@pytest.mark.parametrize("make, words", [
    (lambda: EarlyStopping(patience=-1), r"patience must be an int >= 0, got -1"),
    (lambda: EarlyStopping(mode="maximum"), r"mode must be 'auto', 'min' or 'max', got 'maximum'"),
    (lambda: EarlyStopping(start_from_epoch=1.5), r"start_from_epoch"),
    (lambda: EarlyStopping(monitor=""), r"monitor"),
    (lambda: EarlyStopping(baseline="low"), r"baseline"),
    (lambda: EarlyStopping(verbose=3), r"verbose must be 0, 1 or 2"),
    (lambda: ReduceLROnPlateau(factor=1.0), r"factor must be < 1.0.*got 1.0"),
    (lambda: ReduceLROnPlateau(factor=-0.5), r"factor must be a finite number >= 0.0"),
    (lambda: ReduceLROnPlateau(patience=-2), r"patience must be an int >= 0, got -2"),
    (lambda: ReduceLROnPlateau(cooldown=-1), r"cooldown"),
    (lambda: ReduceLROnPlateau(min_lr=-1e-3), r"min_lr"),
    (lambda: ReduceLROnPlateau(mode="up"), r"mode must be .* got 'up'"),
    (lambda: ModelCheckpoint("x", mode="best"), r"mode must be .* got 'best'"),
    (lambda: ModelCheckpoint("x", save_freq="batch"), r"save_freq must be 'epoch' or a "
                                                      r"positive int.*'batch'"),
    (lambda: ModelCheckpoint("x", save_freq=0), r"save_freq"),
    (lambda: ModelCheckpoint(None), r"filepath"),
    (lambda: CSVLogger("log.csv", separator=";;"), r"separator must be a single character"),
    (lambda: CSVLogger(""), r"filename"),
    (lambda: LambdaCallback(on_epoch_end=3), r"on_epoch_end must be callable"),
    (lambda: LambdaCallback(on_epoch_ending=print), r"unknown hook.*on_epoch_ending"),
])
def test_bad_arguments_raise_value_errors_naming_them(make, words):
    with pytest.raises(ValueError, match=words):
        make()


# ------------------------------------------------------------------------ ModelCheckpoint
def test_checkpoint_saves_every_epoch_with_the_formatted_name(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    saved = []
    model.save = saved.append  # records the calls whether or not Sequential.save exists
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.2f}.fcnn")
    h = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                  callbacks=[ModelCheckpoint(pattern)])
    expected = [str(tmp_path / f"ckpt-{e + 1:02d}-{v:.2f}.fcnn")
                for e, v in enumerate(h.history["val_loss"])]
    assert saved == expected


def test_checkpoint_save_best_only_saves_on_improvement(capsys):
    cb = ModelCheckpoint("best-{epoch}.fcnn", save_best_only=True, verbose=1)
    model, _, _ = run_script(cb, [0.9, 0.7, 0.8, 0.6, 0.6])
    assert model.saved == [("save", "best-1.fcnn"), ("save", "best-2.fcnn"),
                           ("save", "best-4.fcnn")]
    out = capsys.readouterr().out
    assert "Epoch 2: val_loss improved from 0.90000 to 0.70000, saving model to best-2.fcnn" \
        in out
    assert "Epoch 3: val_loss did not improve from 0.70000" in out
    # accuracies are maximised; initial_value_threshold sets the bar to beat
    cb = ModelCheckpoint("w.fcnn", monitor="val_accuracy", save_best_only=True,
                         save_weights_only=True, initial_value_threshold=0.5)
    model, _, _ = run_script(cb, [0.4, 0.6, 0.55, 0.7], key="val_accuracy")
    assert model.saved == [("save_weights", "w.fcnn")] * 2


def test_checkpoint_int_save_freq_saves_every_n_batches_with_the_batch_field(tmp_path):
    x, y = tiny_data(n=24)
    model = tiny_model()
    saved = []
    model.save_weights = saved.append
    cb = ModelCheckpoint(str(tmp_path / "sub" / "e{epoch}-b{batch}.w"), save_freq=2,
                         save_weights_only=True)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])  # 3 batches/epoch
    assert [p.rsplit("/", 1)[1] for p in saved] == ["e1-b2.w", "e2-b1.w", "e2-b3.w"]
    assert (tmp_path / "sub").is_dir()  # Keras creates the folder


def test_checkpoint_filepath_field_missing_from_logs_is_a_clear_error():
    with pytest.raises(KeyError, match=r"no value for 'val_accuracy'; available: loss, "
                                       r"val_loss, epoch"):
        run_script(ModelCheckpoint("m-{val_accuracy:.2f}.fcnn"), [1.0])


class MetricModel(ScriptedModel):
    metrics_names = ["loss", "accuracy"]


@pytest.mark.parametrize("pattern, params, field", [
    ("ck-{val_acc:.2f}.fcnn", {}, "val_acc"),               # the metric is 'accuracy'
    ("ck-{epoch}-{val_loss}.fcnn", {"do_validation": False}, "val_loss"),
    ("ck-{batch}.fcnn", {}, "batch"),                        # save_freq='epoch': no batch
    ("ck-{}.fcnn", {}, ""),
    ("ck-{loss:.{digits}f}.fcnn", {}, "digits"),
])
def test_checkpoint_placeholders_are_checked_before_the_first_epoch(pattern, params, field):
    model = MetricModel()
    cbs = callbacks.CallbackList([ModelCheckpoint(pattern)], model=model,
                                 params={"epochs": 2, "steps": 1, "verbose": 0, **params})
    with pytest.raises(ValueError) as info:
        cbs.on_train_begin()
    message = str(info.value)
    assert "{" + field + "}" in message and repr(pattern) in message, message
    assert "known names: epoch" in message and "loss, accuracy" in message, message
    assert ("val_accuracy" in message) is (params.get("do_validation") is not False)
    assert model.saved == []


@pytest.mark.parametrize("pattern, freq", [
    ("ck-{epoch:02d}-{val_accuracy:.2f}-{loss:.3f}-{accuracy}.fcnn", "epoch"),
    ("ck-{epoch}-{batch}-{val_loss}.fcnn", 2),
    ("ck-{learning_rate:g}.fcnn", "epoch"),   # ReduceLROnPlateau logs it
])
def test_checkpoint_known_placeholders_pass_the_check(pattern, freq):
    cbs = callbacks.CallbackList([ModelCheckpoint(pattern, save_freq=freq)], model=MetricModel(),
                                 params={"epochs": 1, "steps": 1, "verbose": 0})
    cbs.on_train_begin()


def test_checkpoint_unknown_placeholder_stops_fit_before_training(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    epochs = []
    with pytest.raises(ValueError, match=r"placeholder \{val_acc\}.*known names: epoch, "
                                         r"loss, accuracy, val_loss, val_accuracy"):
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, validation_split=0.25,
                  callbacks=[LambdaCallback(on_epoch_begin=lambda e, logs: epochs.append(e)),
                             ModelCheckpoint(str(tmp_path / "ck-{val_acc:.2f}.fcnn"))])
    assert epochs == [] and list(tmp_path.iterdir()) == []


def test_checkpoint_needs_the_save_method_it_will_call():
    class NoSave:
        stop_training = False

    cbs = callbacks.CallbackList([ModelCheckpoint("m.fcnn", save_weights_only=True)],
                                 model=NoSave(), params={})
    with pytest.raises(NotImplementedError, match=r"model.save_weights\(path\)"):
        cbs.on_train_begin()


@pytest.mark.parametrize("weights_only", [False, True])
def test_checkpoint_with_the_real_save_methods(tmp_path, weights_only):
    method = "save_weights" if weights_only else "save"
    if not hasattr(fastcnn.Sequential, method):
        pytest.skip(f"fastcnn.Sequential.{method} is not implemented yet")
    x, y = tiny_data()
    model = tiny_model()
    cb = ModelCheckpoint(str(tmp_path / "ck-{epoch}-{loss:.3f}.fcnn"),
                         save_weights_only=weights_only)
    h = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    names = [f"ck-{e + 1}-{loss:.3f}.fcnn" for e, loss in enumerate(h.history["loss"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    last = str(tmp_path / names[-1])
    if weights_only:
        if not hasattr(fastcnn.Sequential, "load_weights"):
            pytest.skip("fastcnn.Sequential.load_weights is not implemented yet")
        fastcnn.utils.set_random_seed(1)
        other = tiny_model()
        other.load_weights(last)
        restored = other
    else:
        if not hasattr(fastcnn, "load_model"):
            pytest.skip("fastcnn.load_model is not implemented yet")
        restored = fastcnn.load_model(last)
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the file holds the weights after epoch 2


# ------------------------------------------------------------------------ ReduceLROnPlateau
def test_reduce_lr_after_patience_with_cooldown_and_min_lr(capsys):
    cb = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=2, min_lr=0.3, verbose=1)
    # epoch:       0    1    2    3    4    5    6    7    8    9
    values = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    _, _, rates = run_script(cb, values)
    # reduced at the end of epoch 2 (2 epochs without improvement); Keras counts the last
    # of the 2 cooldown epochs (4) towards patience: epochs 4, 5 -> reduced again
    # (clipped to min_lr), then never below it
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]
    out = capsys.readouterr().out
    assert "Epoch 3: ReduceLROnPlateau reducing learning rate to 0.5." in out
    assert out.count("reducing") == 2
    # without cooldown the second reduction comes one epoch earlier; Keras's cooldown=1
    # gives the same schedule as cooldown=0
    for cooldown in (0, 1):
        _, _, rates = run_script(ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.3,
                                                   cooldown=cooldown), values)
        assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3]
    # an improvement during cooldown still becomes the best value
    cb = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2)
    _, _, rates = run_script(cb, [1.0, 1.0, 0.5, 0.9, 0.9, 0.9])
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert cb.best == 0.5


def keras_fixture(name="callbacks.json"):
    path = os.path.join(os.path.dirname(__file__), "fixtures", "keras", name)
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("case", keras_fixture()["reduce_lr_on_plateau"],
                         ids=lambda c: c["name"])
def test_reduce_lr_schedule_equals_keras(case, capsys):
    """Keras 3.15's ReduceLROnPlateau over the same monitored values (fixtures made by
    tests/fixtures/keras/make_callbacks.py): the rate of every epoch, the logged rate and
    the messages, exactly (rates compared as Keras's float32 variable holds them)."""
    cb = ReduceLROnPlateau(monitor=case["monitor"], verbose=1, **case["kwargs"])
    model = ScriptedModel(lr=case["lr0"])
    cbs = callbacks.CallbackList([cb], model=model, params={"epochs": len(case["values"])})
    cbs.on_train_begin()
    before, logged = [], []
    for epoch, value in enumerate(case["values"]):
        before.append(model.optimizer.learning_rate)
        logs = {"loss": value} if case["monitor"] == "loss" else {"loss": 1.0,
                                                                   case["monitor"]: value}
        cbs.on_epoch_end(epoch, logs)
        logged.append(logs["learning_rate"])
    np.testing.assert_array_equal(np.float32(before), np.float32(case["before"]))
    np.testing.assert_array_equal(np.float32(logged), np.float32(case["logged"]))
    assert np.float32(model.optimizer.learning_rate) == np.float32(case["after"][-1])
    assert capsys.readouterr().out.splitlines() == case["messages"]


def test_reduce_lr_improvement_resets_patience_and_min_delta_counts():
    cb = ReduceLROnPlateau(factor=0.1, patience=2, min_delta=0.01)
    # 0.995 is not an improvement over 1.0 by more than 0.01; 0.5 is
    _, _, rates = run_script(cb, [1.0, 0.995, 0.5, 0.6, 0.6, 0.6])
    assert rates == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.1])
    cb = ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1)  # auto: max
    _, _, rates = run_script(cb, [0.1, 0.2, 0.3, 0.3], key="val_accuracy")
    assert rates == [1.0, 1.0, 1.0, 1.0]


def test_reduce_lr_changes_a_real_optimizer_and_logs_the_rate():
    x, y = tiny_data()
    model = tiny_model(lr=0.2)
    # nothing improves by 100: after the first epoch the rate halves at every epoch end
    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0)
    h = model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[cb])
    # the logged rate is the one the epoch trained with
    assert h.history["learning_rate"] == pytest.approx([0.2, 0.2, 0.1, 0.05])
    assert model.optimizer.learning_rate == pytest.approx(0.025)


# ------------------------------------------------------------------------ CSVLogger
def read_rows(path, sep=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=sep))


def test_csv_logger_writes_a_header_and_one_row_per_epoch_flushed_each_epoch(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    path = tmp_path / "log.csv"
    seen_on_disk = []
    logger = CSVLogger(path)
    peek = LambdaCallback(on_epoch_end=lambda epoch, logs: seen_on_disk.append(
        len(read_rows(path))))
    h = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                  callbacks=[logger, peek])
    rows = read_rows(path)
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    for epoch, row in enumerate(rows[1:]):
        for key, text in zip(rows[0][1:], row[1:]):
            assert float(text) == h.history[key][epoch]  # written exactly
    assert seen_on_disk == [2, 3, 4]  # each row is on disk when its epoch ends
    assert logger.csv_file is None  # closed at train end


def test_csv_logger_append_adds_rows_without_a_second_header(tmp_path):
    path = tmp_path / "log.tsv"
    run_script(CSVLogger(path, separator="\t"), [0.5, 0.25])
    run_script(CSVLogger(path, separator="\t", append=True), [0.125])
    assert read_rows(path, "\t") == [["epoch", "loss", "val_loss"], ["0", "1.0", "0.5"],
                                     ["1", "1.0", "0.25"], ["0", "1.0", "0.125"]]
    # appending to a missing (or empty) file writes the header
    fresh = tmp_path / "fresh.csv"
    run_script(CSVLogger(fresh, append=True), [2.0])
    assert read_rows(fresh) == [["epoch", "loss", "val_loss"], ["0", "1.0", "2.0"]]
    # append=False overwrites
    run_script(CSVLogger(fresh), [3.0])
    assert read_rows(fresh) == [["epoch", "loss", "val_loss"], ["0", "1.0", "3.0"]]


def test_csv_logger_writes_na_for_a_key_missing_later(tmp_path):
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    cbs = callbacks.CallbackList([logger], model=ScriptedModel(), params={})
    cbs.on_train_begin()
    cbs.on_epoch_end(0, {"loss": 0.5, "extra": 1.5, "per_class": np.array([1, 2])})
    cbs.on_epoch_end(1, {"loss": np.float32(0.25), "per_class": [3, 4]})
    cbs.on_train_end()
    assert read_rows(path) == [["epoch", "extra", "loss", "per_class"],
                               ["0", "1.5", "0.5", "[1, 2]"], ["1", "NA", "0.25", "[3, 4]"]]


# ------------------------------------------------------------------------ LambdaCallback
def test_lambda_callback_calls_its_functions_with_the_hook_arguments():
    x, y = tiny_data(n=16)
    model = tiny_model()
    calls = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: calls.append(("train_begin",)),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch)),
        on_train_batch_begin=lambda batch, logs: calls.append(("batch_begin", batch)),
        on_train_batch_end=lambda batch, logs: calls.append(("batch_end", batch,
                                                             sorted(logs))),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, sorted(logs))),
        on_train_end=lambda logs: calls.append(("train_end",)))
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    per_epoch = lambda e: [("epoch_begin", e), ("batch_begin", 0),
                           ("batch_end", 0, ["accuracy", "loss"]), ("batch_begin", 1),
                           ("batch_end", 1, ["accuracy", "loss"]),
                           ("epoch_end", e, ["accuracy", "loss"])]
    assert calls == [("train_begin",)] + per_epoch(0) + per_epoch(1) + [("train_end",)]


def test_lambda_callback_batch_hooks_only_when_given():
    only_epoch = LambdaCallback(on_epoch_end=lambda epoch, logs: None)
    assert not callbacks.CallbackList([only_epoch]).needs_batch_hooks("train")
    batch = LambdaCallback(on_train_batch_end=lambda b, logs: None)
    assert callbacks.CallbackList([batch]).needs_batch_hooks("train")
    assert not callbacks.CallbackList([batch]).needs_batch_hooks("test")
    test_hook = LambdaCallback(on_test_batch_end=lambda b, logs: None)
    assert callbacks.CallbackList([test_hook]).needs_batch_hooks("test")


# ------------------------------------------------------------------------ progress bar
NUMBER = r"\d+\.\d{4}(e[+-]\d+)?"


def drive_bar(bar, mode, steps, logs, epochs=1):
    """Calls the bar's hooks as fit / evaluate / predict do."""
    bar.set_params({"epochs": epochs, "steps": steps, "verbose": bar.verbose})
    if mode == "train":
        bar.on_train_begin()
        for epoch in range(epochs):
            bar.on_epoch_begin(epoch)
            for b in range(steps):
                bar.on_train_batch_end(b, logs)
            bar.on_epoch_end(epoch, logs)
        bar.on_train_end()
    else:
        getattr(bar, f"on_{mode}_begin")()
        for b in range(steps):
            getattr(bar, f"on_{mode}_batch_end")(b, logs)
        getattr(bar, f"on_{mode}_end")(logs)


def test_bar_on_a_terminal_shows_eta_and_running_metrics_then_the_final_line():
    stream = FakeTerminal()
    bar = ProgbarLogger(verbose=1, stream=stream)
    bar.INTERVAL = 0.0  # draw every batch
    drive_bar(bar, "train", 844, {"loss": 0.2345, "accuracy": 0.9312})
    out = stream.getvalue()
    assert re.search(r"\r 12/844 \[\.{30}\] - ETA: \d+s - loss: 0\.2345 - accuracy: 0\.9312",
                     out)
    assert re.search(r"\r423/844 \[={14}>\.{15}\] - ETA: ", out)
    assert re.search(r"\r844/844 \[={30}\] - \d+s \d+[mu]?s/step - loss: 0\.2345 - "
                     r"accuracy: 0\.9312\n$", out)
    assert out.startswith("Epoch 1/1\n") and out.count("\n") == 2


def test_bar_without_a_terminal_writes_only_the_final_line_per_epoch():
    stream = io.StringIO()
    bar = ProgbarLogger(verbose=1, stream=stream)
    assert not bar.wants_batch_hooks("train")  # fit skips the per-batch calls entirely
    drive_bar(bar, "train", 50, {"loss": 0.5}, epochs=2)
    out = stream.getvalue()
    assert "\r" not in out and "ETA" not in out
    assert re.fullmatch(r"(Epoch [12]/2\n50/50 \[={30}\] - \d+s \d+[mu]?s/step - "
                        r"loss: 0\.5000\n){2}", out), out


def test_bar_verbose_2_and_small_numbers():
    stream = FakeTerminal()
    bar = ProgbarLogger(verbose=2, stream=stream)
    assert not bar.wants_batch_hooks("train")
    drive_bar(bar, "train", 7, {"loss": 0.00012345, "val_loss": 2.0})
    assert re.fullmatch(r"Epoch 1/1\n7/7 - \d+s - loss: 1\.2345e-04 - val_loss: 2\.0000\n",
                        stream.getvalue())


def test_bar_for_evaluate_and_predict_hooks():
    for tty in (True, False):
        stream = FakeTerminal() if tty else io.StringIO()
        bar = ProgbarLogger(verbose=1, stream=stream)
        bar.INTERVAL = 0.0
        assert bar.wants_batch_hooks("test") == tty and bar.wants_batch_hooks("predict") == tty
        drive_bar(bar, "test", 3, {"loss": 0.25, "accuracy": 0.5})
        out = stream.getvalue()
        assert "Epoch" not in out
        assert re.search(r"3/3 \[={30}\] - \d+s \d+[mu]?s/step - loss: 0\.2500 - "
                         r"accuracy: 0\.5000\n$", out)
        assert ("\r1/3 [=========>...." in out) == tty
        stream.seek(0)
        stream.truncate()
        drive_bar(bar, "predict", 4, {"outputs": np.zeros(2)})  # outputs are not shown
        out = stream.getvalue()
        assert re.search(r"4/4 \[={30}\] - \d+s \d+[mu]?s/step\n$", out) and "outputs" not in out


def test_bar_ignores_evaluate_hooks_inside_fit():
    stream = io.StringIO()
    bar = ProgbarLogger(verbose=1, stream=stream)
    bar.set_params({"epochs": 1, "steps": 2})
    bar.on_train_begin()
    bar.on_epoch_begin(0)
    bar.on_test_begin()  # validation inside fit
    bar.on_test_batch_end(0, {"loss": 9.0})
    bar.on_test_end({"loss": 9.0})
    bar.on_epoch_end(0, {"loss": 1.0, "val_loss": 9.0})
    bar.on_train_end()
    assert re.fullmatch(r"Epoch 1/1\n2/2 \[={30}\] - \d+s \d+[mu]?s/step - loss: 1\.0000 - "
                        r"val_loss: 9\.0000\n", stream.getvalue())


def test_bar_with_an_unknown_number_of_steps():
    stream = FakeTerminal()
    bar = ProgbarLogger(verbose=1, stream=stream)
    bar.INTERVAL = 0.0
    drive_bar(bar, "train", 0, {})  # sets params; now feed batches with steps unknown
    stream.seek(0)
    stream.truncate()
    bar.set_params({"epochs": 1, "steps": None})
    bar.on_epoch_begin(0)
    for b in range(5):
        bar.on_train_batch_end(b, {"loss": 0.5})
    bar.on_epoch_end(0, {"loss": 0.5})
    out = stream.getvalue()
    assert re.search(r"\r3/Unknown - \d+s \d+[mu]?s/step - loss: 0\.5000", out)
    assert re.search(r"\r5/5 \[={30}\] - \d+s \d+[mu]?s/step - loss: 0\.5000\s*\n$", out)


def test_bar_final_line_covers_a_longer_live_line():
    stream = FakeTerminal()
    bar = ProgbarLogger(verbose=1, stream=stream)
    bar.INTERVAL = 0.0
    bar.set_params({"epochs": 1, "steps": 2})
    bar.on_train_begin()
    bar.on_epoch_begin(0)
    bar.on_train_batch_end(0, {"loss": 0.5, "a_very_long_metric_name": 0.5})
    bar.on_epoch_end(0, {"loss": 0.5})
    live, final = stream.getvalue().split("\r")[1:]
    assert len(final.rstrip("\n")) >= len(live)  # blanks cover the old text


LONG_LOGS = {"loss": 0.5, "accuracy": 0.5, "categorical_accuracy": 0.5, "top_k": 0.5}


def drive_live_bar(stream, steps=844):
    bar = ProgbarLogger(verbose=1, stream=stream)
    bar.INTERVAL = 0.0
    bar.set_params({"epochs": 1, "steps": steps})
    bar.on_train_begin()
    bar.on_epoch_begin(0)
    for b in (0, steps // 2, steps - 2):
        bar.on_train_batch_end(b, LONG_LOGS)
    bar.on_epoch_end(0, dict(LONG_LOGS, val_loss=0.25))
    return stream


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_live_bar_fits_the_terminal_width(monkeypatch, columns):
    # An 80-column terminal wrapped every update of the 85-character line onto a new row.
    monkeypatch.setenv("COLUMNS", str(columns))
    out = drive_live_bar(FakeTerminal()).getvalue()
    *live, final = out.split("\r")[1:]
    assert len(live) == 3
    for line in live:
        assert len(line) <= columns - 1, (columns, line)
    assert re.match(r" *423/844 \[=*>\.*\] - ETA: ", live[1])
    width = len(re.search(r"\[([=>.]*)\]", live[1]).group(1))
    assert callbacks.BAR_MIN_WIDTH <= width < callbacks.BAR_WIDTH  # narrower, not gone
    # The final line keeps every value (it is not overwritten: it may wrap).
    assert final.endswith(" - val_loss: 0.2500\n") and "top_k: 0.5000" in final


def test_live_bar_keeps_its_width_on_a_wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = drive_live_bar(FakeTerminal()).getvalue()
    assert re.search(r"\r423/844 \[={14}>\.{15}\] - ETA: \S+ - loss: 0\.5000 - accuracy: "
                     r"0\.5000 - categorical_accuracy: 0\.5000 - top_k: 0\.5000", out)


def test_live_bar_reads_the_width_of_its_own_terminal(monkeypatch):
    pty = pytest.importorskip("pty", reason="needs a pseudo-terminal (POSIX)")
    import fcntl
    import struct
    import termios

    monkeypatch.delenv("COLUMNS", raising=False)
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
        with open(slave, "w", closefd=False) as tty:
            bar = ProgbarLogger(verbose=1, stream=tty)
            assert bar._columns() == 50
    finally:
        os.close(master)
        os.close(slave)


def test_bar_skips_log_entries_that_are_not_numbers():
    assert callbacks.format_logs({"loss": 0.5, "per_class": [1, 2], "note": "x",
                                  "lr": np.float32(0.25)}) == " - loss: 0.5000 - lr: 0.2500"


def test_duration_formats_like_keras():
    assert callbacks._format_duration(41.2) == "41s"
    assert callbacks._format_duration(125) == "2:05"
    assert callbacks._format_duration(3 * 3600 + 61) == "3:01:01"
    assert callbacks.progress_bar(12, 844) == " 12/844 [" + "." * 30 + "]"
    assert callbacks.progress_bar(844, 844) == "844/844 [" + "=" * 30 + "]"


def test_fit_with_a_passed_progbar_does_not_print_twice(capsys):
    x, y = tiny_data(n=16)
    model = tiny_model()
    stream = io.StringIO()
    model.fit(x, y, epochs=1, batch_size=8, verbose=1,
              callbacks=[ProgbarLogger(verbose=2, stream=stream)])
    assert capsys.readouterr().out == ""
    assert re.fullmatch(rf"Epoch 1/1\n2/2 - \d+s - loss: {NUMBER} - accuracy: {NUMBER}\n",
                        stream.getvalue())


def test_callbacks_reach_fastcnn_namespace():
    # the names tutorials use: fastcnn.callbacks.EarlyStopping(...)
    for name in ("History", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau",
                 "CSVLogger", "LambdaCallback", "ProgbarLogger", "Callback", "TerminateOnNaN",
                 "BackupAndRestore", "TensorBoard", "LearningRateScheduler"):
        assert isinstance(getattr(fastcnn.callbacks, name), type)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a key that is present never warns
        run_script(EarlyStopping(monitor="loss"), [1.0, 2.0])


def test_time_limit_stops_after_the_epoch_in_which_time_ran_out(capsys):
    import numpy as np
    import fastcnn
    from fastcnn.callbacks import TimeLimit
    from fastcnn.layers import Dense

    fastcnn.set_random_seed(0)
    model = fastcnn.Sequential([Dense(2, activation="softmax", input_shape=(3,))])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.ones((4, 3), "float32"), np.array([0, 1, 0, 1])
    history = model.fit(x, y, epochs=5, verbose=0, callbacks=[TimeLimit(0)])
    assert len(history.history["loss"]) == 1
    assert "TimeLimit of 0 minutes reached after epoch 1: stopping" in capsys.readouterr().out
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[TimeLimit(None)])
    assert len(history.history["loss"]) == 3
    with pytest.raises(ValueError, match="minutes"):
        TimeLimit(-1)


# ------------------------------------------------------------- LearningRateScheduler
def _lr_model():
    model = fastcnn.Sequential([fastcnn.layers.Dense(2, input_shape=(3,))])
    model.compile(optimizer=fastcnn.optimizers.SGD(0.1), loss="mse")
    return model


def test_learning_rate_scheduler_sets_rate_each_epoch_and_logs_it():
    model = _lr_model()
    seen = []
    cb = fastcnn.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)
    spy = fastcnn.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.append(model.optimizer.learning_rate))
    x = np.zeros((4, 3), np.float32)
    y = np.zeros((4, 2), np.float32)
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[cb, spy])
    assert seen == [0.1, 0.05, 0.025]
    assert history.history["learning_rate"] == [0.1, 0.05, 0.025]


def test_learning_rate_scheduler_one_argument_schedule_and_errors_inside_stay_visible():
    model = _lr_model()
    x, y = np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[
        fastcnn.callbacks.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))])
    assert model.optimizer.learning_rate == pytest.approx(0.02)

    def broken(epoch, lr):
        raise TypeError("bug inside the schedule")
    with pytest.raises(TypeError, match="bug inside the schedule"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[fastcnn.callbacks.LearningRateScheduler(broken)])


@pytest.mark.parametrize("bad", [float("nan"), -1.0, "0.1", None])
def test_learning_rate_scheduler_rejects_a_bad_rate(bad):
    model = _lr_model()
    with pytest.raises(ValueError, match="LearningRateScheduler: schedule"):
        model.fit(np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32), epochs=1,
                  verbose=0, callbacks=[fastcnn.callbacks.LearningRateScheduler(
                      lambda epoch, lr: bad)])


def test_learning_rate_scheduler_rejects_a_non_callable():
    with pytest.raises(ValueError, match="schedule must be callable"):
        fastcnn.callbacks.LearningRateScheduler(0.1)


# ------------------------------------------------------------------------ ProgbarLogger
def test_progbar_logger_keras_constructor_takes_fits_verbose():
    # Keras's ProgbarLogger() has no arguments: the style is the one fit was called with
    x, y = tiny_data(n=16)
    model = tiny_model()
    for verbose, expected in ((2, rf"Epoch 1/1\n2/2 - \d+s - loss: {NUMBER} - accuracy: "
                                  rf"{NUMBER}\n"), (0, "")):
        bar = ProgbarLogger()
        bar._stream = stream = io.StringIO()
        model.fit(x, y, epochs=1, batch_size=8, verbose=verbose, callbacks=[bar])
        assert bar.verbose == verbose
        assert re.fullmatch(expected, stream.getvalue()), stream.getvalue()
    assert fastcnn.callbacks.ProgbarLogger is ProgbarLogger
    with pytest.raises(ValueError, match=r"verbose must be 0, 1, 2 or None.*got 3"):
        ProgbarLogger(verbose=3)


# ------------------------------------------------------------------------ TerminateOnNaN
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"),
                                 np.float32("nan")])
def test_terminate_on_nan_stops_cleanly_on_a_non_finite_batch_loss(bad, capsys):
    model = ScriptedModel()
    cb = callbacks.TerminateOnNaN()
    cbs = callbacks.CallbackList([cb], model=model)
    assert cbs.needs_batch_hooks("train") and cbs.handles_nonfinite_loss()
    cbs.on_train_batch_end(0, {"loss": 0.5})
    cbs.on_train_batch_end(1, {})              # no loss: nothing to check
    assert not model.stop_training and capsys.readouterr().out == ""
    cbs.on_train_batch_end(2, {"loss": bad})
    assert model.stop_training
    assert capsys.readouterr().out == "Batch 2: Invalid loss, terminating training\n"


def test_terminate_on_nan_raise_error_and_bad_argument():
    model = ScriptedModel()
    cb = callbacks.TerminateOnNaN(raise_error=True)
    cb.set_model(model)
    with pytest.raises(RuntimeError, match=r"NaN or Inf loss encountered at batch 4\. Loss "
                                           r"value: nan\. Terminating training immediately"):
        cb.on_train_batch_end(4, {"loss": np.nan})
    with pytest.raises(ValueError, match=r"raise_error must be True or False, got 'yes'"):
        callbacks.TerminateOnNaN(raise_error="yes")
    # without TerminateOnNaN fit keeps raising NonFiniteLossError: no callback takes charge
    assert not callbacks.CallbackList([EarlyStopping()]).handles_nonfinite_loss()


class NaNStepModel(fastcnn.Sequential):
    """A custom train_step whose loss is NaN at the 3rd call (Keras's idiom)."""
    calls = 0

    def train_step(self, data):
        self.calls += 1
        return {"loss": float("nan") if self.calls == 3 else 1.0 / self.calls}


def test_terminate_on_nan_in_fit_with_a_custom_train_step(capsys):
    model = NaNStepModel([Flatten(input_shape=(4, 4, 1)), Dense(3)])
    model.compile(optimizers.SGD(0.1), "mse")
    x = np.zeros((16, 4, 4, 1), np.float32)
    y = np.zeros((16, 3), np.float32)
    ended = []
    h = model.fit(x, y, epochs=3, batch_size=4, verbose=0,
                  callbacks=[callbacks.TerminateOnNaN(),
                             LambdaCallback(on_train_end=lambda logs: ended.append(logs))])
    assert h.epoch == [0]                      # stopped in the first epoch, cleanly
    assert ended and "Batch 2: Invalid loss, terminating training" in capsys.readouterr().out


def nan_data():
    x, y = tiny_data(n=16)
    x[9, 0, 0, 0] = np.nan                     # batch 2 (of 4) has a NaN loss
    return x, y


def test_without_terminate_on_nan_fit_raises_before_the_update():
    x, y = nan_data()
    model = tiny_model()
    with pytest.raises(fastcnn.NonFiniteLossError if hasattr(fastcnn, "NonFiniteLossError")
                       else FloatingPointError, match="loss became nan"):
        model.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)


def test_terminate_on_nan_turns_fits_error_into_a_clean_stop(capsys):
    x, y = nan_data()
    model = tiny_model()
    model.fit(x[:8], y[:8], epochs=1, batch_size=4, shuffle=False, verbose=0)
    ended = []
    h = model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0,
                  callbacks=[callbacks.TerminateOnNaN(),
                             LambdaCallback(on_train_end=lambda logs: ended.append(1))])
    assert h.epoch == [0] and np.isnan(h.history["loss"][0]) and ended
    assert all(np.isfinite(w).all() for w in model.get_weights())  # the NaN step was skipped
    assert "Batch 2: Invalid loss, terminating training" in capsys.readouterr().out


# ---------------------------------------------------------------------- BackupAndRestore
class Interrupt(Exception):
    pass


def interrupt_after(epoch):
    def hook(e, logs):
        if e == epoch:
            raise Interrupt(f"killed after epoch {e}")
    return LambdaCallback(on_epoch_end=hook)


def adam_model(seed):
    fastcnn.utils.set_random_seed(seed)
    model = fastcnn.Sequential([Flatten(input_shape=(4, 4, 1)), Dense(5, activation="relu"),
                                Dense(3, activation="softmax")])
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def interrupted_run(tmp_path, epoch=1, **kwargs):
    """fit for 4 epochs, killed at the end of ``epoch`` (after the backup)."""
    x, y = tiny_data()
    model = adam_model(0)
    backup = callbacks.BackupAndRestore(tmp_path / "backup", **kwargs)
    with pytest.raises(Interrupt):
        model.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[backup, interrupt_after(epoch)])
    return model


def test_backup_and_restore_resumes_to_the_uninterrupted_weights(tmp_path):
    x, y = tiny_data()
    reference = adam_model(0)
    reference.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0)
    killed = interrupted_run(tmp_path)
    assert os.listdir(tmp_path / "backup") == ["latest.backup.npz"]   # no temporary left

    model = adam_model(1)           # a new process: other initial weights, a fresh Adam
    backup = callbacks.BackupAndRestore(tmp_path / "backup")
    backup.set_model(model)
    backup.on_train_begin()         # what fit does first: restores, names the next epoch
    assert model._initial_epoch == 2
    for a, b in zip(model.get_weights(), killed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == killed.optimizer.iterations == 6
    # Keras's fit starts at model._initial_epoch; until fastcnn's fit reads it (issue 17.8
    # hook) the test passes it as initial_epoch. fit calls on_train_begin again: idempotent.
    h = model.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0,
                  initial_epoch=model._initial_epoch, callbacks=[backup])
    assert h.epoch == [2, 3]
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)   # Adam's moments and step count came back
    assert not os.path.exists(tmp_path / "backup")   # delete_checkpoint (default)


def test_backup_and_restore_resumes_inside_fit(tmp_path):
    x, y = tiny_data()
    reference = adam_model(0)
    reference.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0)
    interrupted_run(tmp_path)
    model = adam_model(1)
    h = model.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[callbacks.BackupAndRestore(tmp_path / "backup")])
    assert h.epoch == [2, 3]
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the next fit of the same model starts from its own initial_epoch again
    h = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert h.epoch == [0]


def test_backup_and_restore_keeps_a_lowered_rate_and_is_kept_on_request(tmp_path):
    x, y = tiny_data()
    model = adam_model(0)
    cbs = [ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=100.0),
           callbacks.BackupAndRestore(tmp_path / "b", delete_checkpoint=False),
           interrupt_after(1)]
    with pytest.raises(Interrupt):
        model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=cbs)
    fresh = adam_model(1)
    backup = callbacks.BackupAndRestore(tmp_path / "b", delete_checkpoint=False)
    backup.set_model(fresh)
    backup.on_train_begin()
    # epoch 0 is the first value (the best), epoch 1 halves the rate (float32, Keras's)
    assert fresh.optimizer.learning_rate == model.optimizer.learning_rate
    assert np.float32(fresh.optimizer.learning_rate) == np.float32(0.005)
    assert fresh._initial_epoch == 2
    fresh.fit(x, y, epochs=3, batch_size=8, verbose=0, initial_epoch=2, callbacks=[backup])
    assert os.path.exists(tmp_path / "b" / "latest.backup.npz")     # kept, and updated
    with np.load(tmp_path / "b" / "latest.backup.npz") as data:
        assert json.loads(str(data["meta"]))["epoch"] == 3
    # a model without a backup starts at its own initial_epoch (no stale value kept)
    other = adam_model(2)
    other._initial_epoch = 7
    cb = callbacks.BackupAndRestore(tmp_path / "none")
    cb.set_model(other)
    cb.on_train_begin()
    assert other._initial_epoch is None


def test_backup_every_n_batches_records_the_epoch_to_restart(tmp_path):
    x, y = tiny_data()                # 3 batches per epoch
    saved = []
    backup = callbacks.BackupAndRestore(tmp_path / "b", save_freq=2, delete_checkpoint=False)
    original = backup._save
    backup._save = lambda batch=None: (saved.append((backup._current_epoch, batch)),
                                       original(batch))
    model = adam_model(0)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, callbacks=[backup])
    # Keras's count: every 2 batches across epoch ends (batches 1; 0, 2 of epoch 1)
    assert saved == [(0, 1), (1, 0), (1, 2)]
    with np.load(tmp_path / "b" / "latest.backup.npz") as data:
        assert json.loads(str(data["meta"]))["epoch"] == 1   # a mid-epoch backup


def test_backup_double_checkpoint_falls_back_to_the_previous_backup(tmp_path):
    interrupted_run(tmp_path, epoch=2, double_checkpoint=True)
    folder = tmp_path / "backup"
    assert sorted(os.listdir(folder)) == ["latest.backup.npz", "latest.backup.npz.bkp"]
    (folder / "latest.backup.npz").write_bytes(b"torn write")
    model = adam_model(1)
    backup = callbacks.BackupAndRestore(folder, double_checkpoint=True)
    backup.set_model(model)
    backup.on_train_begin()
    assert model._initial_epoch == 2           # the previous backup, of epoch 2
    # without double_checkpoint a damaged backup is an error naming it
    backup = callbacks.BackupAndRestore(folder)
    backup.set_model(model)
    with pytest.raises(ValueError, match=r"cannot read its backup.*latest\.backup\.npz.*"
                                         r"remove it"):
        backup.on_train_begin()


def test_backup_of_another_architecture_and_bad_arguments(tmp_path):
    interrupted_run(tmp_path)
    other = tiny_model()
    backup = callbacks.BackupAndRestore(tmp_path / "backup")
    backup.set_model(other)
    with pytest.raises(ValueError, match=r"written by a model with weight shapes .*this "
                                         r"model has"):
        backup.on_train_begin()
    with pytest.raises(ValueError, match=r"backup_dir must be a non-empty path.*got ''"):
        callbacks.BackupAndRestore("")
    with pytest.raises(ValueError, match=r"save_freq must be 'epoch' or a positive int.*"
                                         r"got 0"):
        callbacks.BackupAndRestore(tmp_path, save_freq=0)


def test_backup_removes_only_its_own_files(tmp_path):
    x, y = tiny_data()
    (tmp_path / "keep.txt").write_text("mine")
    model = adam_model(0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0,
              callbacks=[callbacks.BackupAndRestore(tmp_path)])
    assert os.listdir(tmp_path) == ["keep.txt"]


# ---------------------------------------------------------------------------- TensorBoard
from fastcnn import _tensorboard as tbw  # noqa: E402


def _varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def parse_proto(buf):
    """{field: [raw values]} of a protobuf message (varints as ints, fixed64/32 as bytes,
    length-delimited as bytes): a reader independent of the writer's encoders."""
    fields, pos = {}, 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.setdefault(field, []).append(value)
    return fields


def decode_events(raw):
    """[(wall_time, step, file_version, [(tag, kind, payload)])] of an event file."""
    import struct
    events = []
    for record in tbw.read_records(raw):
        ev = parse_proto(record)
        wall = struct.unpack("<d", ev[1][0])[0]
        step = ev.get(2, [0])[0]
        version = ev[3][0].decode() if 3 in ev else None
        values = []
        for summary in ev.get(5, []):
            for v in parse_proto(summary).get(1, []):
                v = parse_proto(v)
                tag = v[1][0].decode()
                if 2 in v:
                    values.append((tag, "scalar", struct.unpack("<f", v[2][0])[0]))
                elif 5 in v:
                    h = parse_proto(v[5][0])
                    d = {k: struct.unpack("<d", h[i][0])[0] for i, k in
                         enumerate(("min", "max", "num", "sum", "sum_squares"), 1) if i in h}
                    d["bucket_limit"] = list(np.frombuffer(h[6][0], "<f8")) if 6 in h else []
                    d["bucket"] = list(np.frombuffer(h[7][0], "<f8")) if 7 in h else []
                    values.append((tag, "histogram", d))
                elif 8 in v:
                    t = parse_proto(v[8][0])
                    plugin = parse_proto(parse_proto(v[9][0])[1][0])[1][0].decode()
                    values.append((tag, plugin, t[8][0].decode()))
        events.append((wall, step, version, values))
    return events


def run_layout(folder):
    """{tag: {"kind": ..., "steps": [...]}} of every event file of a run folder."""
    tags = {}
    for name in sorted(os.listdir(folder)):
        assert name.startswith("events.out.tfevents.")
        with open(os.path.join(folder, name), "rb") as f:
            events = decode_events(f.read())
        assert events[0][2] == "brain.Event:2"          # the first record of every file
        for _, step, _, values in events[1:]:
            for tag, kind, _ in values:
                entry = tags.setdefault(tag, {"kind": kind, "steps": []})
                entry["steps"].append(step)
    return tags


def test_crc32c_and_framing_against_known_vectors():
    import base64
    assert tbw.crc32c(b"123456789") == 0xE3069283      # the CRC-32C check value
    assert tbw.crc32c(b"") == 0
    assert tbw.crc32c(bytes(32)) == 0x8A9136AA          # RFC 3720 B.4
    assert tbw.crc32c(b"\xff" * 32) == 0x62A8AB43
    # every record of a file tf.summary wrote: its masked CRCs are the ones computed here
    raw = base64.b64decode(keras_fixture("tensorboard.json")["tf_file"])
    records = tbw.read_records(raw)
    assert len(records) == 3 and b"brain.Event:2" in records[0]
    assert b"".join(tbw.frame_record(r) for r in records) == raw
    damaged = bytearray(raw)
    damaged[30] ^= 1
    with pytest.raises(ValueError, match="bad .*CRC"):
        tbw.read_records(bytes(damaged))
    with pytest.raises(ValueError, match="truncated"):
        tbw.read_records(raw[:-1])


def fixture_records():
    """The records of tests/fixtures/keras/make_callbacks.py's fastcnn_records()."""
    import json as _json
    config = _json.dumps({"class_name": "Sequential", "config": {
        "name": "sequential", "input_shape": [None, 4, 4, 1], "dtype": "float32", "layers": [
            {"class_name": "Flatten", "config": {"name": "flatten", "trainable": True,
                                                 "dtype": "float32", "input_shape": [4, 4, 1]}},
            {"class_name": "Dense", "config": {"name": "dense", "trainable": True,
                                               "dtype": "float32", "activation": "linear",
                                               "units": 3}}]}})
    records = [
        tbw.encode_event(1.5e9, file_version=tbw.FILE_VERSION),
        tbw.encode_event(1.5e9 + 1, 0, summary_values=[tbw.scalar_value("epoch_loss", 0.75),
                                                       tbw.scalar_value("epoch_accuracy", 0.5)]),
        tbw.encode_event(1.5e9 + 2, 1, summary_values=[tbw.scalar_value("epoch_loss", -1e-3)]),
        tbw.encode_event(1.5e9 + 3, 2 ** 40, summary_values=[tbw.scalar_value("big", 3.0)]),
        tbw.encode_event(1.5e9 + 4, 7, summary_values=[
            tbw.histogram_value("dense/kernel/histogram", np.linspace(-1.0, 2.0, 50) ** 3),
            tbw.histogram_value("dense/bias/histogram", np.zeros(4))]),
        tbw.encode_event(1.5e9 + 5, 0, summary_values=[
            tbw.string_tensor_value("keras", config, "graph_keras_model", b"1")]),
    ]
    return b"".join(tbw.frame_record(r) for r in records)


def test_event_writer_makes_the_bytes_tensorboard_read():
    """TensorBoard 2.21's EventAccumulator read these very bytes (the fixture holds what it
    read); the writer must still make them, and this test's own decoder agrees."""
    import hashlib
    expected = keras_fixture("tensorboard.json")["fastcnn_file"]
    raw = fixture_records()
    assert hashlib.sha256(raw).hexdigest() == expected["sha256"]
    events = decode_events(raw)
    assert events[0][2] == "brain.Event:2" and expected["file_version"] == 2.0
    scalars, histograms, tensors = {}, {}, {}
    for wall, step, _, values in events[1:]:
        for tag, kind, payload in values:
            if kind == "scalar":
                scalars.setdefault(tag, []).append([step, payload, wall])
            elif kind == "histogram":
                histograms.setdefault(tag, []).append(dict(payload, step=step))
            else:
                tensors.setdefault(tag, []).append({"step": step, "plugin": kind,
                                                    "text": payload})
    assert scalars == expected["scalars"]
    assert tensors == expected["tensors"] and expected["keras_graph_nodes"] == 2
    assert histograms.keys() == expected["histograms"].keys()
    for tag, [mine] in histograms.items():
        [theirs] = expected["histograms"][tag]
        assert mine == theirs                      # doubles: exactly what it read
        assert sum(mine["bucket"]) == mine["num"]


def tb_fit(log_dir, **kwargs):
    """The fit of make_callbacks.py's keras_layout: 40 samples, 20% validation, batches of
    8 (4 per epoch), 3 epochs, then evaluate with the same callback."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = tiny_model()
    tb = callbacks.TensorBoard(log_dir, **kwargs)
    model.fit(x, y, batch_size=8, epochs=3, validation_split=0.2, verbose=0, callbacks=[tb])
    model.evaluate(x, y, verbose=0, callbacks=[tb])
    return model


def test_tensorboard_writes_keras_runs_tags_and_steps(tmp_path):
    tb_fit(tmp_path, histogram_freq=1, update_freq=2)
    keras_layout = keras_fixture("tensorboard.json")["keras_layout"]
    assert sorted(os.listdir(tmp_path)) == ["train", "validation"]
    kinds = {"scalars": "scalar", "histograms": "histogram",
             "graph_keras_model": "graph_keras_model"}
    for run in ("train", "validation"):
        mine = run_layout(tmp_path / run)
        assert sorted(mine) == sorted(keras_layout[run])
        for tag, theirs in keras_layout[run].items():
            assert mine[tag]["kind"] == kinds[theirs["plugin"]], tag
            if tag == "keras":         # Keras writes it again at each set_model
                assert mine[tag]["steps"] == [0]
            elif tag.startswith("evaluation_"):
                # at the optimizer's step count after each validation and after evaluate
                # (Keras 3.15 drops all but one of them under update_freq=2)
                assert mine[tag]["steps"] == [4, 8, 12, 12]
                assert set(theirs["steps"]) <= set(mine[tag]["steps"])
            else:
                assert mine[tag]["steps"] == theirs["steps"], tag


def test_tensorboard_values_are_the_logs_and_the_weights(tmp_path):
    model = tb_fit(tmp_path, histogram_freq=2, write_graph=False)
    history = model.history.history
    train = {}
    for name in os.listdir(tmp_path / "train"):
        with open(tmp_path / "train" / name, "rb") as f:
            for _, step, _, values in decode_events(f.read())[1:]:
                for tag, kind, payload in values:
                    train.setdefault(tag, []).append((step, payload))
    assert "keras" not in train and not any(t.startswith("batch_") for t in train)
    assert [v for _, v in train["epoch_loss"]] == list(np.float32(history["loss"]))
    assert [v for _, v in train["epoch_learning_rate"]] == [np.float32(0.1)] * 3
    assert [s for s, _ in train["sequential/dense/kernel/histogram"]] == [0, 2]
    kernel = model.layers[1].get_weights()[0]
    last = train["sequential/dense/kernel/histogram"][-1][1]    # after the last epoch
    assert last["num"] == kernel.size and sum(last["bucket"]) == kernel.size
    assert (last["min"], last["max"]) == (kernel.min(), kernel.max())
    assert len(last["bucket"]) == 30 and last["bucket_limit"][-1] == kernel.max()
    assert last["sum"] == pytest.approx(float(kernel.astype(np.float64).sum()))


def test_tensorboard_events_read_by_tensorboard(tmp_path):
    ea_module = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package (extra fastcnn[tensorboard]) is not installed; the "
               "format is still checked against its reader through the fixture "
               "tensorboard.json")
    model = tb_fit(tmp_path, histogram_freq=1, update_freq="batch",
                   write_steps_per_second=True)
    ea = ea_module.EventAccumulator(str(tmp_path / "train"),
                                    size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "batch_loss",
            "batch_accuracy", "epoch_steps_per_second", "batch_steps_per_second"} \
        <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("batch_loss")] == list(range(1, 13))
    assert [e.value for e in ea.Scalars("epoch_loss")] == pytest.approx(
        model.history.history["loss"], rel=1e-6)
    h = ea.Histograms("sequential/dense/bias/histogram")[-1].histogram_value
    assert h.num == 3 and h.max == pytest.approx(model.layers[1].get_weights()[1].max())
    assert tags["tensors"] == ["keras"]
    assert b'"class_name": "Sequential"' in ea.Tensors("keras")[0].tensor_proto.string_val[0]
    val = ea_module.EventAccumulator(str(tmp_path / "validation"))
    val.Reload()
    assert [e.step for e in val.Scalars("epoch_loss")] == [0, 1, 2]


@pytest.mark.parametrize("kwargs, words", [
    (dict(update_freq=0), r"update_freq must be 'epoch', 'batch' or a positive int.*got 0"),
    (dict(histogram_freq=-1), r"histogram_freq must be an int >= 0, got -1"),
    (dict(write_images=True), r"write_images=True is not supported"),
    (dict(profile_batch=(2, 4)), r"profile_batch=\(2, 4\) is not supported"),
    (dict(embeddings_freq=1), r"embeddings_freq=1 is not supported"),
    (dict(log_dir=""), r"log_dir must be a non-empty path"),
])
def test_tensorboard_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        callbacks.TensorBoard(**kwargs)


def test_tensorboard_writes_nothing_before_training_and_closes_its_files(tmp_path):
    tb = callbacks.TensorBoard(tmp_path / "logs")
    assert not os.path.exists(tmp_path / "logs")          # lazily, as Keras
    x, y = tiny_data(n=8)
    tiny_model().fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[tb])
    assert tb._writers == {} and os.listdir(tmp_path / "logs") == ["train"]


def test_tensorboard_graph_of_a_functional_model_has_its_edges(tmp_path):
    from fastcnn import layers
    inputs = fastcnn.Input((4,))
    left, right = Dense(3, name="left")(inputs), Dense(3, name="right")(inputs)
    model = fastcnn.Model(inputs, layers.Add(name="join")([left, right]))
    model.compile(optimizers.SGD(0.1), "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 4)), rng.normal(size=(8, 3)), epochs=1, verbose=0,
              callbacks=[callbacks.TensorBoard(tmp_path)])
    (name,) = os.listdir(tmp_path / "train")
    with open(tmp_path / "train" / name, "rb") as f:
        (config,) = [payload for _, _, _, values in decode_events(f.read())
                     for tag, _, payload in values if tag == "keras"]
    config = json.loads(config)
    # Keras 3's to_json form: each layer lists the layers its calls take
    inbound = {e["config"]["name"]: [a["config"]["keras_history"][0]
                                     for node in e["inbound_nodes"] for a in node["args"][0]]
               for e in config["config"]["layers"]}
    assert inbound["left"] == inbound["right"] == [inputs_name(config)]
    assert inbound["join"] == ["left", "right"]
    keras_util = pytest.importorskip(
        "tensorboard.plugins.graph.keras_util",
        reason="the tensorboard package (extra fastcnn[tensorboard]) is not installed: "
               "its Graphs dashboard's reading of the config is not checked here")
    graph = keras_util.keras_model_to_graph_def(config)
    edges = {n.name.split("/")[-1]: [i.split("/")[-1] for i in n.input] for n in graph.node}
    assert edges["join"] == ["left", "right"] and edges["right"] == [inputs_name(config)]


def inputs_name(config):
    return config["config"]["input_layers"][0][0]


def test_checkpoint_placeholder_for_validation_needs_validation_data(tmp_path):
    """fit tells the callbacks whether it validates (do_validation): {val_loss} without
    validation data is refused before the first epoch, not at the first save."""
    import fastcnn as _f
    model = _f.Sequential([_f.layers.Dense(2, input_shape=(3,))])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    ck = _f.callbacks.ModelCheckpoint(str(tmp_path / "m-{val_loss:.2f}.fcnn"))
    with pytest.raises(ValueError, match="val_loss"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ck])
    model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y), callbacks=[ck])
